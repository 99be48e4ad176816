//! The EtherNet/IP messages zonegate writes itself, sans I/O: a port of zonegate/dataplane/enip_frames.py,
//! byte for byte (that module's docstring draws the layouts). The core parses and decides what clients send;
//! this reads only the few header and Common Packet Format fields the relay needs to answer.
//!
//! Nothing here panics on any input but `header` on fewer than 24 bytes. The `push_*` answers read
//! a shorter frame as if padded with zeros (the relay only answers messages the splitter cut, so this never
//! happens; it keeps a caller's mistake from becoming a crash).

use std::collections::HashMap;
use std::net::SocketAddr;

pub use zonegate_core::enip::Header;

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

// Common Packet Format item types.
pub const ITEM_NULL_ADDRESS: u16 = 0x0000;
pub const ITEM_IDENTITY: u16 = 0x000C;
pub const ITEM_CONNECTED_ADDRESS: u16 = 0x00A1;
pub const ITEM_CONNECTED_DATA: u16 = 0x00B1;
pub const ITEM_UNCONNECTED_DATA: u16 = 0x00B2;
pub const ITEM_SERVICES: u16 = 0x0100;
/// Sequenced address item: taken as the address item, as the Python conduit does.
const ITEM_SEQUENCED_ADDRESS: u16 = 0x8002;

pub const PROTOCOL_VERSION: u16 = 1;
/// CIP general status for a client that would need one more link than the device may hold.
pub const CIP_RESOURCE_UNAVAILABLE: u8 = 0x02;
/// CIP general status a gateway answers for a target it cannot reach: connection failure, with the
/// Connection Manager's extended status "unconnected request timed out" (Vol. 1, table 3-5.29).
pub const CIP_CONNECTION_FAILURE: u8 = 0x01;
pub const CIP_EXT_UNCONNECTED_TIMEOUT: u16 = 0x0204;

const FORWARD_OPEN_REPLY: u8 = 0xD4;
const LARGE_FORWARD_OPEN_REPLY: u8 = 0xDB;
const UNCONNECTED_SEND: u8 = 0x52;
/// The Connection Manager (class 6, instance 1), with 8-bit and 16-bit instance segments.
const CONNECTION_MANAGER_PATHS: [&[u8]; 2] = [b"\x20\x06\x24\x01", b"\x20\x06\x25\x00\x01\x00"];
/// Nested Unconnected Sends unwrapped at most, as the engine's MAX_DEPTH.
const MAX_ROUTED: usize = 4;
/// Items read at most: more than any SendRRData / SendUnitData / ListIdentity needs.
const MAX_ITEMS: u16 = 8;
/// Item count 2, null address item (type 0, length 0), unconnected data item type: the common layout.
const PLAIN_UNCONNECTED: [u8; 8] = [2, 0, 0, 0, 0, 0, 0xB2, 0];
/// ListServices: "Communications", version 1, CIP encapsulation over TCP (bit 5) only; the conduit relays
/// no class 0/1 UDP I/O (bit 8 clear).
const SERVICES_ITEM: &[u8] = b"\x01\x00\x20\x00Communications\x00\x00";

/// The header of a message `split` cut. Panics if `frame` is shorter than 24 bytes; `Header::read` (the
/// core's reader) does not.
pub fn header(frame: &[u8]) -> Header {
    Header::read(frame).expect("a framed message holds a 24-byte header")
}

/// The header of `frame`, missing bytes read as zero.
fn padded(frame: &[u8]) -> Header {
    let mut h = [0u8; HEADER_LEN];
    let n = frame.len().min(HEADER_LEN);
    h[..n].copy_from_slice(&frame[..n]);
    header(&h)
}

/// `nop`, `list_services`, ... as `COMMAND_NAMES`; None for any other command.
pub fn command_name(command: u16) -> Option<&'static str> {
    Some(match command {
        NOP => "nop",
        LIST_SERVICES => "list_services",
        LIST_IDENTITY => "list_identity",
        LIST_INTERFACES => "list_interfaces",
        REGISTER_SESSION => "register_session",
        UNREGISTER_SESSION => "unregister_session",
        SEND_RR_DATA => "send_rr_data",
        SEND_UNIT_DATA => "send_unit_data",
        _ => return None,
    })
}

fn u16_at(bytes: &[u8], at: usize) -> Option<u16> {
    let b = bytes.get(at..at.checked_add(2)?)?;
    Some(u16::from_le_bytes([b[0], b[1]]))
}

fn u32_at(bytes: &[u8], at: usize) -> Option<u32> {
    let b = bytes.get(at..at.checked_add(4)?)?;
    Some(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
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
        if self.address_type == ITEM_CONNECTED_ADDRESS && self.address.len() == 4 {
            u32_at(self.address, 0)
        } else {
            None
        }
    }

    /// The CIP message: an unconnected data item whole, a connected one after its sequence count.
    pub fn cip(&self) -> Option<&'a [u8]> {
        match self.data_type {
            ITEM_UNCONNECTED_DATA => Some(self.data),
            ITEM_CONNECTED_DATA if self.data.len() >= 2 => Some(&self.data[2..]),
            _ => None,
        }
    }

    /// A connected data item's sequence count bytes; empty otherwise.
    pub fn sequence(&self) -> &'a [u8] {
        if self.data_type == ITEM_CONNECTED_DATA {
            &self.data[..self.data.len().min(2)]
        } else {
            &[]
        }
    }
}

/// `items(frame)`.
pub fn items(frame: &[u8]) -> Option<Items<'_>> {
    // What nearly every SendRRData is: a null address item, then the unconnected data item.
    if frame.get(HEADER_LEN + 6..HEADER_LEN + 14) == Some(&PLAIN_UNCONNECTED[..]) {
        if let Some(length) = u16_at(frame, HEADER_LEN + 14) {
            if let Some(data) = frame.get(HEADER_LEN + 16..HEADER_LEN + 16 + length as usize) {
                return Some(Items {
                    address_type: ITEM_NULL_ADDRESS,
                    address: &[],
                    data_type: ITEM_UNCONNECTED_DATA,
                    data,
                });
            }
        }
    }
    let data = frame.get(HEADER_LEN..)?;
    if data.len() < 8 {
        return None;
    }
    let count = u16_at(data, 6)?;
    if count > MAX_ITEMS {
        return None;
    }
    let mut offset = 8;
    let mut address: Option<(u16, &[u8])> = None;
    let mut payload: Option<(u16, &[u8])> = None;
    for _ in 0..count {
        let kind = u16_at(data, offset)?;
        let length = u16_at(data, offset + 2)? as usize;
        let body = data.get(offset + 4..offset + 4 + length)?;
        offset += 4 + length;
        match kind {
            ITEM_NULL_ADDRESS | ITEM_CONNECTED_ADDRESS | ITEM_SEQUENCED_ADDRESS if address.is_none() => {
                address = Some((kind, body))
            }
            ITEM_CONNECTED_DATA | ITEM_UNCONNECTED_DATA if payload.is_none() => payload = Some((kind, body)),
            _ => {}
        }
    }
    let ((address_type, address), (data_type, data)) = (address?, payload?);
    Some(Items { address_type, address, data_type, data })
}

/// Starts a message (`message` / `message_of`) in `out`; `finish` writes its length.
fn begin(out: &mut Vec<u8>, command: u16, session: u32, status: u32, context: &[u8; 8], options: u32) -> usize {
    let start = out.len();
    out.extend_from_slice(&command.to_le_bytes());
    out.extend_from_slice(&[0, 0]);
    out.extend_from_slice(&session.to_le_bytes());
    out.extend_from_slice(&status.to_le_bytes());
    out.extend_from_slice(context);
    out.extend_from_slice(&options.to_le_bytes());
    start
}

fn finish(out: &mut [u8], start: usize) {
    // Every message written here is at most as long as one the splitter cut, so this never saturates.
    let length = u16::try_from(out.len() - start - HEADER_LEN).unwrap_or(u16::MAX);
    out[start + 2..start + 4].copy_from_slice(&length.to_le_bytes());
}

/// One Common Packet Format item.
fn push_item(out: &mut Vec<u8>, kind: u16, parts: &[&[u8]]) {
    let length: usize = parts.iter().map(|p| p.len()).sum();
    out.extend_from_slice(&kind.to_le_bytes());
    out.extend_from_slice(&(length as u16).to_le_bytes());
    for part in parts {
        out.extend_from_slice(part);
    }
}

/// `cip_reply`: a CIP reply carrying only a status, the reply bit on `service`, no data.
fn cip_reply(service: u8, general_status: u8, extended: &[u16]) -> Vec<u8> {
    let mut reply = vec![service | 0x80, 0, general_status, extended.len() as u8];
    for word in extended {
        reply.extend_from_slice(&word.to_le_bytes());
    }
    reply
}

/// Appends `cip_error(frame, service, general_status, extended, t_o_connection)`.
///
/// SendRRData: an unconnected data item with the reply. SendUnitData: the connected address item with the
/// T->O connection id (`t_o`, the originator's own, when known) and the request's sequence count.
pub fn push_cip_error(
    out: &mut Vec<u8>,
    frame: &[u8],
    service: u8,
    general_status: u8,
    extended: &[u16],
    t_o: Option<u32>,
) {
    let header = padded(frame);
    let reply = cip_reply(service, general_status, extended);
    let connected =
        items(frame).filter(|_| header.command == SEND_UNIT_DATA).and_then(|i| Some((i, i.connection_id()?)));
    let start = begin(out, header.command, header.session, 0, &header.sender_context, 0);
    out.extend_from_slice(&[0; 6]); // interface handle, timeout
    out.extend_from_slice(&2u16.to_le_bytes());
    match connected {
        Some((parsed, id)) => {
            push_item(out, ITEM_CONNECTED_ADDRESS, &[&t_o.unwrap_or(id).to_le_bytes()]);
            push_item(out, ITEM_CONNECTED_DATA, &[parsed.sequence(), &reply]);
        }
        None => {
            push_item(out, ITEM_NULL_ADDRESS, &[]);
            push_item(out, ITEM_UNCONNECTED_DATA, &[&reply]);
        }
    }
    finish(out, start);
}

/// Appends `unreachable(frame, service, t_o)`: general status 0x01, extended status 0x0204.
pub fn push_unreachable(out: &mut Vec<u8>, frame: &[u8], service: u8, t_o: Option<u32>) {
    push_cip_error(out, frame, service, CIP_CONNECTION_FAILURE, &[CIP_EXT_UNCONNECTED_TIMEOUT], t_o);
}

/// Appends `encap_error(frame, status)`.
pub fn push_encap_error(out: &mut Vec<u8>, frame: &[u8], status: u32) {
    let header = padded(frame);
    let start = begin(out, header.command, header.session, status, &header.sender_context, 0);
    finish(out, start);
}

/// Appends `register_reply(frame, session)`.
pub fn push_register_reply(out: &mut Vec<u8>, frame: &[u8], session: u32) {
    let header = padded(frame);
    let start = begin(out, REGISTER_SESSION, session, 0, &header.sender_context, 0);
    out.extend_from_slice(frame.get(HEADER_LEN..frame.len().min(HEADER_LEN + 4)).unwrap_or(&[]));
    finish(out, start);
}

/// `register_request()` (sender context all zero).
pub fn register_request() -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + 4);
    let start = begin(&mut out, REGISTER_SESSION, 0, 0, &[0; 8], 0);
    out.extend_from_slice(&PROTOCOL_VERSION.to_le_bytes());
    out.extend_from_slice(&[0, 0]); // options
    finish(&mut out, start);
    out
}

/// `unregister_request(session)`.
pub fn unregister_request(session: u32) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN);
    begin(&mut out, UNREGISTER_SESSION, session, 0, &[0; 8], 0);
    out
}

/// `list_identity_request()`.
pub fn list_identity_request() -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN);
    begin(&mut out, LIST_IDENTITY, 0, 0, &[0; 8], 0);
    out
}

/// Appends `list_services_reply(frame)`.
pub fn push_list_services_reply(out: &mut Vec<u8>, frame: &[u8]) {
    let header = padded(frame);
    let start = begin(out, LIST_SERVICES, header.session, 0, &header.sender_context, 0);
    out.extend_from_slice(&1u16.to_le_bytes());
    push_item(out, ITEM_SERVICES, &[SERVICES_ITEM]);
    finish(out, start);
}

/// Appends `list_interfaces_reply(frame)`.
pub fn push_list_interfaces_reply(out: &mut Vec<u8>, frame: &[u8]) {
    let header = padded(frame);
    let start = begin(out, LIST_INTERFACES, header.session, 0, &header.sender_context, 0);
    out.extend_from_slice(&0u16.to_le_bytes());
    finish(out, start);
}

/// `identity_item(reply)`: the identity item body of a device's ListIdentity reply.
pub fn identity_item(reply: &[u8]) -> Option<Vec<u8>> {
    if reply.len() < HEADER_LEN + 2 || header(reply).command != LIST_IDENTITY {
        return None;
    }
    let data = &reply[HEADER_LEN..];
    let count = u16_at(data, 0)?;
    let mut offset = 2;
    for _ in 0..count.min(MAX_ITEMS) {
        let kind = u16_at(data, offset)?;
        let length = u16_at(data, offset + 2)? as usize;
        let body = data.get(offset + 4..offset + 4 + length)?;
        // version, socket address, ids, revision, status, serial number, product name: 33 bytes at least
        if kind == ITEM_IDENTITY && length >= 33 {
            return Some(body.to_vec());
        }
        offset += 4 + length;
    }
    None
}

/// Appends `list_identity_reply(frame, identity, local)`: the socket address replaced by `local` when it is
/// IPv4, as the Python conduit does.
///
/// The device's own address stays inside the zone: a client learns only the address it already dialled.
/// With no identity learned, the reply lists no item.
pub fn push_list_identity_reply(out: &mut Vec<u8>, frame: &[u8], identity: Option<&[u8]>, local: Option<SocketAddr>) {
    let header = padded(frame);
    let start = begin(out, LIST_IDENTITY, header.session, 0, &header.sender_context, 0);
    match identity {
        None => out.extend_from_slice(&0u16.to_le_bytes()),
        Some(identity) => {
            let mut body = identity.to_vec();
            if let Some(SocketAddr::V4(local)) = local {
                // sin_family, sin_port, sin_addr big-endian, then sin_zero: where the identity keeps them
                let mut sockaddr = [0u8; 16];
                sockaddr[0..2].copy_from_slice(&2u16.to_be_bytes());
                sockaddr[2..4].copy_from_slice(&local.port().to_be_bytes());
                sockaddr[4..8].copy_from_slice(&local.ip().octets());
                // As Python's `body[2:18] = ...`, also on an identity too short to hold it.
                let (from, to) = (body.len().min(2), body.len().min(18));
                body.splice(from..to, sockaddr);
            }
            out.extend_from_slice(&1u16.to_le_bytes());
            push_item(out, ITEM_IDENTITY, &[&body]);
        }
    }
    finish(out, start);
}

/// `forward_open_ids(reply_cip)`: (O->T id, T->O id) of a successful (Large) Forward Open reply.
pub fn forward_open_ids(reply_cip: &[u8]) -> Option<(u32, u32)> {
    if reply_cip.len() < 12 || !matches!(reply_cip[0], FORWARD_OPEN_REPLY | LARGE_FORWARD_OPEN_REPLY) {
        return None;
    }
    if reply_cip[2] != 0 {
        return None;
    }
    let offset = 4 + 2 * reply_cip[3] as usize;
    Some((u32_at(reply_cip, offset)?, u32_at(reply_cip, offset + 4)?))
}

/// `embedded(message)`: the request an Unconnected Send to the Connection Manager carries.
fn embedded(message: &[u8]) -> Option<&[u8]> {
    if message.len() < 2 || message[0] != UNCONNECTED_SEND {
        return None;
    }
    let path_end = 2 + 2 * message[1] as usize;
    let path = message.get(2..path_end)?;
    if !CONNECTION_MANAGER_PATHS.contains(&path) || message.len() < path_end + 4 {
        return None;
    }
    let size = u16_at(message, path_end + 2)? as usize;
    let inner = message.get(path_end + 4..path_end + 4 + size)?;
    (size >= 2).then_some(inner)
}

/// `as_answered(frame, reply)`: the request a routed Unconnected Send's reply answers; None when that is
/// `frame` itself.
///
/// A routed Unconnected Send is answered by the target's reply to the request it carries (its own reply,
/// 0xD2, comes only from a router refusing it), so the carried request is put in its place, as many levels
/// down as the reply's service says.
pub fn as_answered(frame: &[u8], reply: &[u8]) -> Option<Vec<u8>> {
    fn unconnected(i: Items<'_>) -> Option<&[u8]> {
        (i.data_type == ITEM_UNCONNECTED_DATA).then_some(i.data)
    }
    let answer = items(reply).and_then(unconnected).filter(|a| !a.is_empty())?;
    let parsed = items(frame)?;
    let mut message = unconnected(parsed)?;
    let mut unwrapped = false;
    for _ in 0..MAX_ROUTED {
        // An empty message answers nothing and carries nothing (the Python conduit never forwards one).
        if message.first().map(|&s| s | 0x80) == Some(answer[0]) {
            break;
        }
        match embedded(message) {
            Some(inner) => (message, unwrapped) = (inner, true),
            None => break,
        }
    }
    if !unwrapped {
        return None;
    }
    let header = header(frame);
    let mut out = Vec::with_capacity(frame.len());
    let start = begin(&mut out, header.command, header.session, header.status, &header.sender_context, header.options);
    out.extend_from_slice(&frame[HEADER_LEN..HEADER_LEN + 6]); // interface handle, timeout
    out.extend_from_slice(&2u16.to_le_bytes());
    push_item(&mut out, parsed.address_type, &[parsed.address]);
    push_item(&mut out, ITEM_UNCONNECTED_DATA, &[message]);
    finish(&mut out, start);
    Some(out)
}

/// `on_t_o(request, reply, t_o)`: a connected reply that came back on the request's O->T id, moved to the
/// T->O id the Forward Open reply named (`t_o`: O->T id -> T->O id).
pub fn on_t_o(request: &[u8], reply: &[u8], t_o: &HashMap<u32, u32>) -> Option<Vec<u8>> {
    let header = Header::read(reply)?;
    if header.command != SEND_UNIT_DATA || Header::read(request)?.command != SEND_UNIT_DATA {
        return None;
    }
    let (asked, got) = (items(request)?, items(reply)?);
    let id = asked.connection_id()?;
    if got.connection_id() != Some(id) {
        return None;
    }
    let back = *t_o.get(&id)?;
    if back == id {
        return None;
    }
    let mut out = Vec::with_capacity(reply.len());
    let start = begin(&mut out, header.command, header.session, header.status, &header.sender_context, header.options);
    out.extend_from_slice(&reply[HEADER_LEN..HEADER_LEN + 6]); // interface handle, timeout
    out.extend_from_slice(&2u16.to_le_bytes());
    push_item(&mut out, ITEM_CONNECTED_ADDRESS, &[&back.to_le_bytes()]);
    push_item(&mut out, got.data_type, &[got.data]);
    finish(&mut out, start);
    Some(out)
}

/// The message under another session handle, in place (bytes too few to hold one are left as they are).
pub fn set_session(frame: &mut [u8], session: u32) {
    if let Some(handle) = frame.get_mut(4..8) {
        handle.copy_from_slice(&session.to_le_bytes());
    }
}

/// The message under another sender context, in place (bytes too few to hold one are left as they are).
pub fn set_context(frame: &mut [u8], context: &[u8; 8]) {
    if let Some(field) = frame.get_mut(12..20) {
        field.copy_from_slice(context);
    }
}

#[cfg(test)]
mod tests {
    //! Expected bytes are what zonegate/dataplane/enip_frames.py writes for the same inputs (pasted as hex).

    use super::*;

    fn bytes(hex: &str) -> Vec<u8> {
        let digits: Vec<u8> = hex.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
        digits.chunks(2).map(|d| u8::from_str_radix(std::str::from_utf8(d).unwrap(), 16).unwrap()).collect()
    }

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// What `push` appends after bytes already in the buffer (which it must leave alone).
    fn appended(push: impl FnOnce(&mut Vec<u8>)) -> String {
        let mut out = vec![0xEE, 0xEE];
        push(&mut out);
        assert_eq!(&out[..2], &[0xEE, 0xEE]);
        hex(&out[2..])
    }

    // Inputs (each field commented).
    /// SendRRData, plain layout: Read Tag "abc", 1 element.
    const RR_READ: &str = concat!(
        "6f00 ",                 // command SendRRData
        "1a00 ",                 // length 26
        "44332211 ",             // session 0x11223344
        "00000000 ",             // status
        "6374782d30303031 ",     // sender context "ctx-0001"
        "00000000 ",             // options
        "00000000 ",             // interface handle
        "0000 ",                 // timeout
        "0200 ",                 // item count 2
        "00000000 ",             // null address item, length 0
        "b2000a00 ",             // unconnected data item, length 10
        "4c039103616263000100 ", // CIP request
    );
    /// SendUnitData on connection 0xAABBCCDD, sequence 7: Read Tag "abc".
    const UD_READ: &str = concat!(
        "7000 ",                 // command SendUnitData
        "2000 ",                 // length 32
        "44332211 ",             // session 0x11223344
        "00000000 ",             // status
        "6374782d30303031 ",     // sender context "ctx-0001"
        "00000000 ",             // options
        "00000000 ",             // interface handle
        "0000 ",                 // timeout
        "0200 ",                 // item count 2
        "a1000400 ",             // connected address item, length 4
        "ddccbbaa ",             // connection id 0xaabbccdd
        "b1000c00 ",             // connected data item, length 12
        "0700 ",                 // sequence count 7
        "4c039103616263000100 ", // CIP message
    );
    /// SendRRData, general layout: a sequenced address item, an unknown item, the data item.
    const RR_GENERAL: &str = concat!(
        "6f00 ",                 // command SendRRData
        "2800 ",                 // length 40
        "44332211 ",             // session 0x11223344
        "00000000 ",             // status
        "6374782d30303031 ",     // sender context "ctx-0001"
        "00000000 ",             // options
        "00000000 ",             // interface handle
        "0500 ",                 // timeout 5
        "0300 ",                 // item count 3
        "02800800 ",             // sequenced address item, length 8
        "0100000002000000 ",     // connection id 1, sequence 2
        "34120200 ",             // an item zonegate does not read, length 2
        "abcd ",                 // its data
        "b2000a00 ",             // unconnected data item, length 10
        "4c039103616263000100 ", // CIP request
    );
    /// SendRRData with nine items.
    const RR_TOO_MANY: &str = concat!(
        "6f00 ",             // command SendRRData
        "2c00 ",             // length 44
        "44332211 ",         // session 0x11223344
        "00000000 ",         // status
        "6374782d30303031 ", // sender context "ctx-0001"
        "00000000 ",         // options
        "00000000 ",         // interface handle
        "0000 ",             // timeout
        "0900 ",             // item count 9: more than zonegate reads
        "00000000 ",         // null address item
        "00000000 ",         // null address item
        "00000000 ",         // null address item
        "00000000 ",         // null address item
        "00000000 ",         // null address item
        "00000000 ",         // null address item
        "00000000 ",         // null address item
        "00000000 ",         // null address item
        "00000000 ",         // null address item
    );
    /// RegisterSession, protocol version 1, options 0.
    const REGISTER: &str = concat!(
        "6500 ",             // command RegisterSession
        "0400 ",             // length 4
        "00000000 ",         // session 0x00000000
        "00000000 ",         // status
        "7265676374783031 ", // sender context "regctx01"
        "00000000 ",         // options
        "0100 ",             // protocol version 1
        "0000 ",             // options
    );
    /// ListIdentity from a client.
    const LIST_IDENTITY: &str = concat!(
        "6300 ",             // command ListIdentity
        "0000 ",             // length 0
        "00000000 ",         // session 0x00000000
        "00000000 ",         // status
        "6c692d6374783031 ", // sender context "li-ctx01"
        "00000000 ",         // options
    );
    /// ListServices from a client.
    const LIST_SERVICES: &str = concat!(
        "0400 ",             // command ListServices
        "0000 ",             // length 0
        "00000000 ",         // session 0x00000000
        "00000000 ",         // status
        "6c732d6374783031 ", // sender context "ls-ctx01"
        "00000000 ",         // options
    );
    /// ListInterfaces from a client.
    const LIST_INTERFACES: &str = concat!(
        "6400 ",             // command ListInterfaces
        "0000 ",             // length 0
        "00000000 ",         // session 0x00000000
        "00000000 ",         // status
        "69662d6374783031 ", // sender context "if-ctx01"
        "00000000 ",         // options
    );
    /// A device's ListIdentity reply: an item of another type, then the identity item.
    const LIST_IDENTITY_REPLY: &str = concat!(
        "6300 ",                             // command ListIdentity
        "3500 ",                             // length 53
        "00000000 ",                         // session 0x00000000
        "00000000 ",                         // status
        "0000000000000000 ",                 // sender context "\x00\x00\x00\x00\x00\x00\x00\x00"
        "00000000 ",                         // options
        "0200 ",                             // item count 2
        "86000200 ",                         // an item zonegate does not read, length 2
        "0000 ",                             // its data
        "0c002900 ",                         // identity item, length 41
        "0100 ",                             // encapsulation protocol version 1
        "0002af12c0a80a0c0000000000000000 ", // sockaddr: AF_INET, port 44818, 192.168.10.12 (big-endian), zero
        "0100 ",                             // vendor 1
        "0e00 ",                             // device type 0x0E
        "5a00 ",                             // product code 0x5A
        "0b02 ",                             // revision 11.2
        "3000 ",                             // status
        "78563412 ",                         // serial number
        "07504c432d352f31 ",                 // product name "PLC-5/1"
        "03 ",                               // state
    );
    /// A ListIdentity reply whose identity item is too short.
    const LIST_IDENTITY_REPLY_SHORT: &str = concat!(
        "6300 ",             // command ListIdentity
        "0a00 ",             // length 10
        "00000000 ",         // session 0x00000000
        "00000000 ",         // status
        "0000000000000000 ", // sender context "\x00\x00\x00\x00\x00\x00\x00\x00"
        "00000000 ",         // options
        "0100 ",             // item count 1
        "0c000400 ",         // identity item, length 4: too short to be one
        "01000200 ",         // its data
    );
    /// A Forward Open reply (CIP only).
    const FORWARD_OPEN_REPLY: &str = concat!(
        "d4 ",       // Forward Open reply
        "00 ",       // reserved
        "00 ",       // general status 0
        "00 ",       // extended status size 0
        "11111111 ", // O->T connection id
        "22222222 ", // T->O connection id
        "0100 ",     // connection serial
    );
    /// A Large Forward Open reply with one word of extended status.
    const LARGE_FORWARD_OPEN_REPLY: &str = concat!(
        "db ",       // Large Forward Open reply
        "00 ",       // reserved
        "00 ",       // general status 0
        "01 ",       // extended status size 1 word
        "0000 ",     // extended status
        "33333333 ", // O->T connection id
        "44444444 ", // T->O connection id
    );
    /// SendRRData: an Unconnected Send (8-bit CM path) carrying a Write Tag.
    const RR_ROUTED_ONE: &str = concat!(
        "6f00 ",                                                         // command SendRRData
        "2e00 ",                                                         // length 46
        "44332211 ",                                                     // session 0x11223344
        "00000000 ",                                                     // status
        "6374782d30303031 ",                                             // sender context "ctx-0001"
        "00000000 ",                                                     // options
        "00000000 ",                                                     // interface handle
        "0000 ",                                                         // timeout
        "0200 ",                                                         // item count 2
        "00000000 ",                                                     // null address item, length 0
        "b2001e00 ",                                                     // unconnected data item, length 30
        "520220062401059910004d03910361626300c40001002a00000001000102 ", // CIP request
    );
    /// SendRRData: an Unconnected Send (16-bit CM path) carrying an Unconnected Send carrying a Write Tag.
    const RR_ROUTED_TWO: &str = concat!(
        "6f00 ",             // command SendRRData
        "3e00 ",             // length 62
        "44332211 ",         // session 0x11223344
        "00000000 ",         // status
        "6374782d30303031 ", // sender context "ctx-0001"
        "00000000 ",         // options
        "00000000 ",         // interface handle
        "0000 ",             // timeout
        "0200 ",             // item count 2
        "00000000 ",         // null address item, length 0
        "b2002e00 ",         // unconnected data item, length 46
        "520320062500010005991e00520220062401059910004d03910361626300c40001002a0000000100010201000102 ", // CIP request
    );
    /// The device's SendRRData reply: Write Tag reply, status 0.
    const RR_WRITE_REPLY: &str = concat!(
        "6f00 ",             // command SendRRData
        "1400 ",             // length 20
        "44332211 ",         // session 0x11223344
        "00000000 ",         // status
        "6374782d30303031 ", // sender context "ctx-0001"
        "00000000 ",         // options
        "00000000 ",         // interface handle
        "0000 ",             // timeout
        "0200 ",             // item count 2
        "00000000 ",         // null address item, length 0
        "b2000400 ",         // unconnected data item, length 4
        "cd000000 ",         // CIP reply: Write Tag, status 0
    );
    /// The device's SendRRData reply: Unconnected Send reply, status 0x01.
    const RR_ROUTER_REFUSAL: &str = concat!(
        "6f00 ",             // command SendRRData
        "1400 ",             // length 20
        "44332211 ",         // session 0x11223344
        "00000000 ",         // status
        "6374782d30303031 ", // sender context "ctx-0001"
        "00000000 ",         // options
        "00000000 ",         // interface handle
        "0000 ",             // timeout
        "0200 ",             // item count 2
        "00000000 ",         // null address item, length 0
        "b2000400 ",         // unconnected data item, length 4
        "d2000100 ",         // CIP reply: Unconnected Send, status 0x01
    );
    /// A connected reply on the request's O->T id 0xAABBCCDD, sequence 7: Read Tag reply.
    const UD_REPLY_ON_O_T: &str = concat!(
        "7000 ",             // command SendUnitData
        "1e00 ",             // length 30
        "44332211 ",         // session 0x11223344
        "00000000 ",         // status
        "6374782d30303031 ", // sender context "ctx-0001"
        "00000000 ",         // options
        "00000000 ",         // interface handle
        "0000 ",             // timeout
        "0200 ",             // item count 2
        "a1000400 ",         // connected address item, length 4
        "ddccbbaa ",         // connection id 0xaabbccdd
        "b1000a00 ",         // connected data item, length 10
        "0700 ",             // sequence count 7
        "cc000000c3002a00 ", // CIP message
    );

    // What zonegate/dataplane/enip_frames.py writes for them.
    const CIP_ERROR_RR: &str =
        "6f00140044332211000000006374782d3030303100000000000000000000020000000000b2000400cc000f00";
    const CIP_ERROR_RR_EXTENDED: &str =
        "6f00180044332211000000006374782d3030303100000000000000000000020000000000b2000800d200010205010100";
    const CIP_ERROR_UD: &str =
        "70001a0044332211000000006374782d30303031000000000000000000000200a1000400ddccbbaab10006000700cc000f00";
    const CIP_ERROR_UD_T_O: &str =
        "70001a0044332211000000006374782d30303031000000000000000000000200a100040004030201b10006000700cc000f00";
    const UNREACHABLE_RR: &str =
        "6f00160044332211000000006374782d3030303100000000000000000000020000000000b2000600cc0001010402";
    const UNREACHABLE_UD_T_O: &str =
        "70001c0044332211000000006374782d30303031000000000000000000000200a100040004030201b10008000700cc0001010402";
    const ENCAP_ERROR: &str = "6f00000044332211640000006374782d3030303100000000";
    const REGISTER_REPLY: &str = "65000400bebafeca0000000072656763747830310000000001000000";
    const REGISTER_REQUEST: &str = "65000400000000000000000000000000000000000000000001000000";
    const UNREGISTER_REQUEST: &str = "660000007856341200000000000000000000000000000000";
    const LIST_IDENTITY_REQUEST: &str = "630000000000000000000000000000000000000000000000";
    const LIST_IDENTITY_ANSWER: &str = "63002f0000000000000000006c692d63747830310000000001000c0029000100000208ad0a010203000000000000000001000e005a000b0230007856341207504c432d352f3103";
    const LIST_IDENTITY_ANSWER_AS_LEARNED: &str = "63002f0000000000000000006c692d63747830310000000001000c00290001000002af12c0a80a0c000000000000000001000e005a000b0230007856341207504c432d352f3103";
    const LIST_IDENTITY_ANSWER_NONE: &str = "6300020000000000000000006c692d6374783031000000000000";
    const LIST_SERVICES_ANSWER: &str =
        "04001a0000000000000000006c732d63747830310000000001000001140001002000436f6d6d756e69636174696f6e730000";
    const LIST_INTERFACES_ANSWER: &str = "64000200000000000000000069662d6374783031000000000000";
    const ANSWERED_ONE: &str = "6f00200044332211000000006374782d3030303100000000000000000000020000000000b20010004d03910361626300c40001002a000000";
    const ANSWERED_TWO: &str = "6f00200044332211000000006374782d3030303100000000000000000000020000000000b20010004d03910361626300c40001002a000000";
    const ON_T_O: &str =
        "70001e0044332211000000006374782d30303031000000000000000000000200a100040004030201b1000a000700cc000000c3002a00";
    const IDENTITY: &str = "01000002af12c0a80a0c000000000000000001000e005a000b0230007856341207504c432d352f3103";

    #[test]
    fn header_read_takes_every_field() {
        let h = header(&bytes(RR_READ));
        assert_eq!((h.command, h.length, h.session, h.status, h.options), (SEND_RR_DATA, 26, 0x11223344, 0, 0));
        assert_eq!(&h.sender_context, b"ctx-0001");
        assert_eq!(Header::read(&bytes(RR_READ)[..23]), None);
        assert_eq!(command_name(SEND_UNIT_DATA), Some("send_unit_data"));
        assert_eq!(command_name(NOP), Some("nop"));
        assert_eq!(command_name(0x0065), Some("register_session"));
        assert_eq!(command_name(0x0072), None);
    }

    #[test]
    fn items_reads_the_plain_unconnected_layout() {
        let frame = bytes(RR_READ);
        let items = items(&frame).unwrap();
        assert_eq!(
            (items.address_type, items.address, items.data_type),
            (ITEM_NULL_ADDRESS, &[][..], ITEM_UNCONNECTED_DATA)
        );
        assert_eq!(items.cip(), Some(&bytes("4c039103616263000100")[..]));
        assert_eq!((items.connection_id(), items.sequence()), (None, &[][..]));
    }

    #[test]
    fn items_reads_the_general_layout() {
        let frame = bytes(RR_GENERAL);
        let items = items(&frame).unwrap();
        assert_eq!((items.address_type, items.address), (0x8002, &bytes("0100000002000000")[..]));
        assert_eq!(items.cip(), Some(&bytes("4c039103616263000100")[..]));
        assert_eq!(items.connection_id(), None);
    }

    #[test]
    fn items_reads_a_connected_message() {
        let frame = bytes(UD_READ);
        let items = items(&frame).unwrap();
        assert_eq!(items.connection_id(), Some(0xAABBCCDD));
        assert_eq!(items.sequence(), &[7, 0]);
        assert_eq!(items.cip(), Some(&bytes("4c039103616263000100")[..]));
    }

    #[test]
    fn items_refuses_truncated_messages_and_too_many_items() {
        for frame in [bytes(RR_READ), bytes(RR_GENERAL), bytes(UD_READ)] {
            for n in 0..frame.len() {
                assert_eq!(items(&frame[..n]), None, "{} cut at {n}", hex(&frame));
            }
        }
        assert_eq!(items(&bytes(RR_TOO_MANY)), None);
    }

    #[test]
    fn cip_error_answers_send_rr_data_in_an_unconnected_item() {
        assert_eq!(appended(|o| push_cip_error(o, &bytes(RR_READ), 0x4C, 0x0F, &[], None)), CIP_ERROR_RR);
        // t_o means nothing to an unconnected message
        assert_eq!(appended(|o| push_cip_error(o, &bytes(RR_READ), 0x4C, 0x0F, &[], Some(9))), CIP_ERROR_RR);
        let extended = appended(|o| push_cip_error(o, &bytes(RR_READ), 0x52, 0x01, &[0x0105, 0x0001], None));
        assert_eq!(extended, CIP_ERROR_RR_EXTENDED);
    }

    #[test]
    fn cip_error_answers_send_unit_data_on_the_connection() {
        assert_eq!(appended(|o| push_cip_error(o, &bytes(UD_READ), 0x4C, 0x0F, &[], None)), CIP_ERROR_UD);
        let on_t_o = appended(|o| push_cip_error(o, &bytes(UD_READ), 0x4C, 0x0F, &[], Some(0x01020304)));
        assert_eq!(on_t_o, CIP_ERROR_UD_T_O);
    }

    #[test]
    fn unreachable_is_connection_failure_0204() {
        assert_eq!(appended(|o| push_unreachable(o, &bytes(RR_READ), 0x4C, None)), UNREACHABLE_RR);
        assert_eq!(appended(|o| push_unreachable(o, &bytes(UD_READ), 0x4C, Some(0x01020304))), UNREACHABLE_UD_T_O);
    }

    #[test]
    fn encap_error_echoes_the_header_with_the_status() {
        assert_eq!(appended(|o| push_encap_error(o, &bytes(RR_READ), STATUS_INVALID_SESSION)), ENCAP_ERROR);
    }

    #[test]
    fn session_messages() {
        assert_eq!(appended(|o| push_register_reply(o, &bytes(REGISTER), 0xCAFEBABE)), REGISTER_REPLY);
        assert_eq!(hex(&register_request()), REGISTER_REQUEST);
        assert_eq!(hex(&unregister_request(0x12345678)), UNREGISTER_REQUEST);
        let mut frame = bytes(RR_READ);
        set_session(&mut frame, 0x01020304);
        assert_eq!(header(&frame).session, 0x01020304);
    }

    #[test]
    fn list_answers() {
        assert_eq!(hex(&list_identity_request()), LIST_IDENTITY_REQUEST);
        assert_eq!(appended(|o| push_list_services_reply(o, &bytes(LIST_SERVICES))), LIST_SERVICES_ANSWER);
        assert_eq!(appended(|o| push_list_interfaces_reply(o, &bytes(LIST_INTERFACES))), LIST_INTERFACES_ANSWER);
    }

    #[test]
    fn list_identity_answer_carries_the_box_address() {
        let (frame, identity) = (bytes(LIST_IDENTITY), bytes(IDENTITY));
        let local: SocketAddr = "10.1.2.3:2221".parse().unwrap();
        let answer = appended(|o| push_list_identity_reply(o, &frame, Some(&identity), Some(local)));
        assert_eq!(answer, LIST_IDENTITY_ANSWER);
        // The Python conduit replaces only an IPv4 address.
        let v6: SocketAddr = "[::1]:2221".parse().unwrap();
        let answer = appended(|o| push_list_identity_reply(o, &frame, Some(&identity), Some(v6)));
        assert_eq!(answer, LIST_IDENTITY_ANSWER_AS_LEARNED);
        assert_eq!(
            appended(|o| push_list_identity_reply(o, &frame, Some(&identity), None)),
            LIST_IDENTITY_ANSWER_AS_LEARNED
        );
        assert_eq!(appended(|o| push_list_identity_reply(o, &frame, None, Some(local))), LIST_IDENTITY_ANSWER_NONE);
    }

    #[test]
    fn identity_item_finds_the_identity() {
        assert_eq!(identity_item(&bytes(LIST_IDENTITY_REPLY)), Some(bytes(IDENTITY)));
        assert_eq!(identity_item(&bytes(LIST_IDENTITY_REPLY_SHORT)), None);
        let reply = bytes(LIST_IDENTITY_REPLY);
        for n in 0..reply.len() {
            assert_eq!(identity_item(&reply[..n]), None, "cut at {n}");
        }
        let mut other = reply.clone();
        other[0] = 0x64; // ListInterfaces
        assert_eq!(identity_item(&other), None);
    }

    #[test]
    fn forward_open_ids_of_a_successful_reply() {
        assert_eq!(forward_open_ids(&bytes(FORWARD_OPEN_REPLY)), Some((0x11111111, 0x22222222)));
        assert_eq!(forward_open_ids(&bytes(LARGE_FORWARD_OPEN_REPLY)), Some((0x33333333, 0x44444444)));
        let mut failed = bytes(FORWARD_OPEN_REPLY);
        failed[2] = 0x01;
        assert_eq!(forward_open_ids(&failed), None);
        let reply = bytes(LARGE_FORWARD_OPEN_REPLY);
        assert_eq!(forward_open_ids(&reply[..13]), None); // the extended status pushes the ids past the end
        assert_eq!(forward_open_ids(&bytes("cc000000c3002a00000000000000")), None);
        // not a Forward Open
    }

    #[test]
    fn as_answered_unwraps_routed_unconnected_sends() {
        let reply = bytes(RR_WRITE_REPLY);
        assert_eq!(as_answered(&bytes(RR_ROUTED_ONE), &reply).map(|f| hex(&f)).as_deref(), Some(ANSWERED_ONE));
        assert_eq!(as_answered(&bytes(RR_ROUTED_TWO), &reply).map(|f| hex(&f)).as_deref(), Some(ANSWERED_TWO));
        // the router's own refusal answers the Unconnected Send itself
        assert_eq!(as_answered(&bytes(RR_ROUTED_ONE), &bytes(RR_ROUTER_REFUSAL)), None);
        // not routed
        assert_eq!(as_answered(&bytes(RR_READ), &reply), None);
        assert_eq!(as_answered(&bytes(UD_READ), &bytes(UD_REPLY_ON_O_T)), None);
    }

    #[test]
    fn on_t_o_moves_a_reply_to_the_t_o_id() {
        let (request, reply) = (bytes(UD_READ), bytes(UD_REPLY_ON_O_T));
        let t_o = HashMap::from([(0xAABBCCDD, 0x01020304)]);
        assert_eq!(on_t_o(&request, &reply, &t_o).map(|f| hex(&f)).as_deref(), Some(ON_T_O));
        assert_eq!(on_t_o(&request, &reply, &HashMap::new()), None);
        assert_eq!(on_t_o(&request, &reply, &HashMap::from([(0xAABBCCDD, 0xAABBCCDD)])), None);
        // already on the T->O id
        let moved = on_t_o(&request, &reply, &t_o).unwrap();
        assert_eq!(on_t_o(&request, &moved, &t_o), None);
        assert_eq!(on_t_o(&bytes(RR_READ), &reply, &t_o), None);
        assert_eq!(on_t_o(&request, &reply[..20], &t_o), None);
    }

    /// xorshift64: reproducible bytes with no dependency.
    struct Noise(u64);

    impl Noise {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }

        fn bytes(&mut self, n: usize) -> Vec<u8> {
            (0..n).map(|_| self.next() as u8).collect()
        }
    }

    /// Readers of device and client bytes meet whatever a peer sends: good messages cut anywhere, with noise
    /// appended or written over them, never make them panic.
    #[test]
    fn readers_never_panic() {
        let goods: Vec<Vec<u8>> = [
            RR_READ,
            UD_READ,
            RR_GENERAL,
            RR_TOO_MANY,
            LIST_IDENTITY_REPLY,
            LIST_IDENTITY_REPLY_SHORT,
            RR_ROUTED_ONE,
            RR_ROUTED_TWO,
            RR_WRITE_REPLY,
            UD_REPLY_ON_O_T,
            FORWARD_OPEN_REPLY,
            LARGE_FORWARD_OPEN_REPLY,
        ]
        .iter()
        .map(|h| bytes(h))
        .collect();
        let t_o = HashMap::from([(0xAABBCCDD, 0x01020304)]);
        let mut noise = Noise(0x9E37_79B9_7F4A_7C15);
        let mut cases = Vec::new();
        for good in &goods {
            for n in 0..=good.len() {
                cases.push(good[..n].to_vec());
                let mut more = good[..n].to_vec();
                let extra = (noise.next() % 64) as usize;
                more.extend(noise.bytes(extra));
                cases.push(more);
            }
            for _ in 0..200 {
                let mut bent = good.clone();
                for _ in 0..1 + noise.next() % 4 {
                    let at = (noise.next() as usize) % bent.len();
                    bent[at] = noise.next() as u8;
                }
                cases.push(bent);
            }
        }
        for _ in 0..500 {
            let n = (noise.next() % 96) as usize;
            cases.push(noise.bytes(n));
        }
        let mut out = Vec::new();
        for (i, case) in cases.iter().enumerate() {
            let other = &cases[(i * 7919) % cases.len()];
            let _ = items(case).map(|i| (i.cip(), i.sequence(), i.connection_id()));
            let _ = identity_item(case);
            let _ = forward_open_ids(case);
            let _ = as_answered(case, other);
            let _ = as_answered(other, case);
            let _ = on_t_o(case, other, &t_o);
            let _ = on_t_o(other, case, &t_o);
            set_session(&mut case.clone(), 1);
            out.clear();
            push_cip_error(&mut out, case, 0x4C, 0x0F, &[1], Some(1));
            push_unreachable(&mut out, case, 0x4C, None);
            push_encap_error(&mut out, case, STATUS_INCORRECT_DATA);
            push_register_reply(&mut out, case, 1);
            push_list_identity_reply(&mut out, case, Some(case), "10.0.0.1:1".parse().ok());
            push_list_services_reply(&mut out, case);
            push_list_interfaces_reply(&mut out, case);
        }
    }
}
