//! Framing and parsing stage for EtherNet/IP and CIP: encapsulation bytes in, plain request data out.
//!
//! ```text
//!  encap (24-byte header + data)          encap.rs      split a TCP stream, read the header
//!    -> SendRRData / SendUnitData data    cpf.rs        interface handle, timeout, CPF items
//!      -> CIP message router request      cip.rs        service, EPATH, request data
//!        -> EPATH                         epath.rs      class / instance / attribute / member, tag, route
//!        -> containers                    containers.rs Unconnected Send, Multiple Service Packet
//!      -> connected messages              connections.rs Forward Open / Close, connection table
//!  replies checked against requests       reply.rs      session, sender context, connection, sequence
//! ```
//!
//! Nothing here knows about policy or I/O, and nothing panics on any input: every length read from
//! the wire is checked against what is left before it is used. Parsed requests carry their meaning
//! precomputed (service name in its object context, logical address, tag name, access kind, anomaly
//! flags) so the decision stage matches on plain data. Class 0/1 (UDP) I/O is out of scope.

pub mod cip;
pub mod connections;
pub mod containers;
pub mod cpf;
pub mod encap;
pub mod epath;
pub mod reply;

pub use cip::{parse_request, parse_response, Access, Anomalies, CipError, Request, Response, Service};
pub use connections::{
    parse_forward_close, parse_forward_open, parse_forward_open_reply, Connection, ConnectionTable, ForwardClose,
    ForwardOpen, ForwardOpenReply, TableError, Triad,
};
pub use containers::{flatten, parse_multiple_service, parse_unconnected_send, Leaf, Leaves, MAX_DEPTH, MAX_LEAVES};
pub use cpf::{parse_cpf, parse_send_data, Address, Cpf, CpfError, Item, ItemType, Payload, SendData};
pub use encap::{
    parse_frame, split, split_with_limit, Body, Command, EncapError, Frame, Frames, Header, Split, SplitInvalid,
};
pub use epath::{
    parse_path, tag_text, ElectronicKey, InlineVec, Path, PathError, PathErrorKind, Port, Symbol, TagName, TagPart,
    TagParts,
};
pub use reply::{reply_matches, Mismatch};

/// Bytes of the encapsulation header.
pub const HEADER_LEN: usize = 24;
/// Largest encapsulated data length the specification allows (Vol. 2, 2-3.1): 65535 - 24.
pub const MAX_DATA_LEN: usize = 65511;

#[inline(always)]
pub(crate) fn le16(b: &[u8], i: usize) -> u16 {
    u16::from_le_bytes([b[i], b[i + 1]])
}

#[inline(always)]
pub(crate) fn le32(b: &[u8], i: usize) -> u32 {
    u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]])
}
