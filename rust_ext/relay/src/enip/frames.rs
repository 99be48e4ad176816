//! The EtherNet/IP messages zonegate writes itself, sans I/O: a port of zonegate/dataplane/enip_frames.py,
//! byte for byte (that module's docstring draws the layouts). The core parses and decides what clients send;
//! this reads only the few header and Common Packet Format fields the relay needs to answer.

use std::collections::HashMap;
use std::net::SocketAddr;

pub const HEADER_LEN: usize = 24;

// Encapsulation commands (docs/enip.md section 2).
pub const NOP: u16 = 0x0000;
pub const LIST_SERVICES: u16 = 0x0004;
pub const LIST_IDENTITY: u16 = 0x0063;
pub const LIST_INTERFACES: u16 = 0x0064;
pub const REGISTER_SESSION: u16 = 0x0065;
pub const UNREGISTER_SESSION: u16 = 0x0066;
pub const SEND_RR_DATA: u16 = 0x006F;
pub const SEND_UNIT_DATA: u16 = 0x0070;

// Encapsulation status words.
pub const STATUS_INVALID_COMMAND: u32 = 0x0001;
pub const STATUS_INCORRECT_DATA: u32 = 0x0003;
pub const STATUS_INVALID_SESSION: u32 = 0x0064;
pub const STATUS_UNSUPPORTED_PROTOCOL: u32 = 0x0069;

pub const PROTOCOL_VERSION: u16 = 1;
/// CIP general status for a client that would need one more link than the device may hold.
pub const CIP_RESOURCE_UNAVAILABLE: u8 = 0x02;

/// The encapsulation header of a message `split` cut (so at least 24 bytes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    pub command: u16,
    pub length: u16,
    pub session: u32,
    pub status: u32,
    pub context: [u8; 8],
    pub options: u32,
}

impl Header {
    /// Panics if `frame` is shorter than 24 bytes (callers pass what the splitter cut).
    pub fn read(frame: &[u8]) -> Header {
        todo!()
    }
}

/// `nop`, `list_services`, ... as `COMMAND_NAMES`; None for any other command.
pub fn command_name(command: u16) -> Option<&'static str> {
    todo!()
}

/// The first address item and the first data item of a SendRRData / SendUnitData message (`Items`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Items<'a> {
    pub address_type: u16,
    pub address: &'a [u8],
    pub data_type: u16,
    pub data: &'a [u8],
}

impl<'a> Items<'a> {
    pub fn connection_id(&self) -> Option<u32> {
        todo!()
    }

    /// The CIP message: an unconnected data item whole, a connected one after its sequence count.
    pub fn cip(&self) -> Option<&'a [u8]> {
        todo!()
    }

    /// A connected data item's sequence count bytes; empty otherwise.
    pub fn sequence(&self) -> &'a [u8] {
        todo!()
    }
}

/// `items(frame)`.
pub fn items(frame: &[u8]) -> Option<Items<'_>> {
    todo!()
}

/// Appends `cip_error(frame, service, general_status, extended, t_o_connection)`.
pub fn push_cip_error(
    out: &mut Vec<u8>,
    frame: &[u8],
    service: u8,
    general_status: u8,
    extended: &[u16],
    t_o: Option<u32>,
) {
    todo!()
}

/// Appends `unreachable(frame, service, t_o)`: general status 0x01, extended status 0x0204.
pub fn push_unreachable(out: &mut Vec<u8>, frame: &[u8], service: u8, t_o: Option<u32>) {
    todo!()
}

/// Appends `encap_error(frame, status)`.
pub fn push_encap_error(out: &mut Vec<u8>, frame: &[u8], status: u32) {
    todo!()
}

/// Appends `register_reply(frame, session)`.
pub fn push_register_reply(out: &mut Vec<u8>, frame: &[u8], session: u32) {
    todo!()
}

/// `register_request()` (sender context all zero).
pub fn register_request() -> Vec<u8> {
    todo!()
}

/// `unregister_request(session)`.
pub fn unregister_request(session: u32) -> Vec<u8> {
    todo!()
}

/// `list_identity_request()`.
pub fn list_identity_request() -> Vec<u8> {
    todo!()
}

/// Appends `list_services_reply(frame)`.
pub fn push_list_services_reply(out: &mut Vec<u8>, frame: &[u8]) {
    todo!()
}

/// Appends `list_interfaces_reply(frame)`.
pub fn push_list_interfaces_reply(out: &mut Vec<u8>, frame: &[u8]) {
    todo!()
}

/// `identity_item(reply)`: the identity item body of a device's ListIdentity reply.
pub fn identity_item(reply: &[u8]) -> Option<Vec<u8>> {
    todo!()
}

/// Appends `list_identity_reply(frame, identity, local)`: the socket address replaced by `local` when it is
/// IPv4, as the Python conduit does.
pub fn push_list_identity_reply(out: &mut Vec<u8>, frame: &[u8], identity: Option<&[u8]>, local: Option<SocketAddr>) {
    todo!()
}

/// `forward_open_ids(reply_cip)`: (O->T id, T->O id) of a successful (Large) Forward Open reply.
pub fn forward_open_ids(reply_cip: &[u8]) -> Option<(u32, u32)> {
    todo!()
}

/// `as_answered(frame, reply)`: the request a routed Unconnected Send's reply answers; None when that is
/// `frame` itself.
pub fn as_answered(frame: &[u8], reply: &[u8]) -> Option<Vec<u8>> {
    todo!()
}

/// `on_t_o(request, reply, t_o)`: a connected reply that came back on the request's O->T id, moved to the
/// T->O id the Forward Open reply named (`t_o`: O->T id -> T->O id).
pub fn on_t_o(request: &[u8], reply: &[u8], t_o: &HashMap<u32, u32>) -> Option<Vec<u8>> {
    todo!()
}

/// `with_session`, in place: the message under another session handle.
pub fn set_session(frame: &mut [u8], session: u32) {
    frame[4..8].copy_from_slice(&session.to_le_bytes());
}
