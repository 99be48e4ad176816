//! Parsing stage: containers unwrapped, so that every request inside is decided on its own.
//!
//! ```text
//!  Unconnected Send (0x52 to class 0x06, instance 1), request data:
//!   | priority/tick u8 | timeout ticks u8 | message size u16 | message | pad if size odd |
//!   | route path size u8 (words) | reserved u8 | route path (port segments) |
//!
//!  Multiple Service Packet (0x0A to class 0x02, instance 1), request data:
//!   | count u16 | offset u16 * count | request 1 | request 2 | ... |
//!   offsets count from the start of the count field; request i ends where request i+1 starts
//! ```
//!
//! Containers nest (a Multiple Service Packet inside an Unconnected Send is what most clients send to a
//! controller behind a backplane). Nesting is bounded by [`MAX_DEPTH`] and the number of requests by
//! [`MAX_LEAVES`]; past either the message is refused, never partly decided. Each leaf keeps the route
//! the Unconnected Sends around it add, outermost hop first.

use super::cip::{read_request, CipError, Request, Service};
use super::epath::{parse_path, Port};
use super::le16;

/// Most containers around one request (the outermost message counts as depth 0).
pub const MAX_DEPTH: u8 = 4;
/// Most requests one message may carry, all containers included.
pub const MAX_LEAVES: usize = 256;

/// One request that is not a container, and where it sat.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Leaf<'a> {
    pub request: Request<'a>,
    /// How many containers are around it.
    pub depth: u8,
    /// Route added by the Unconnected Sends around it, outermost first.
    pub route: Vec<Port>,
}

/// The leaves of one message, in wire order.
pub type Leaves<'a> = Vec<Leaf<'a>>;

/// An Unconnected Send's fields.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnconnectedSend<'a> {
    pub priority_tick: u8,
    pub timeout_ticks: u8,
    /// The embedded message router request.
    pub message: &'a [u8],
    pub route: Vec<Port>,
}

/// Reads an Unconnected Send's request data.
pub fn parse_unconnected_send(data: &[u8]) -> Result<UnconnectedSend<'_>, CipError> {
    if data.len() < 4 {
        return Err(CipError::DataTruncated);
    }
    let size = le16(data, 2) as usize;
    let padded = size + (size % 2);
    // Message, its pad, then route size and reserved.
    if data.len() - 4 < padded + 2 {
        return Err(CipError::DataTruncated);
    }
    let message = &data[4..4 + size];
    let r = 4 + padded;
    let route_len = 2 * data[r] as usize;
    let route_bytes = &data[r + 2..];
    if route_bytes.len() < route_len {
        return Err(CipError::DataTruncated);
    }
    if route_bytes.len() > route_len {
        return Err(CipError::DataTrailing);
    }
    let path = parse_path(route_bytes).map_err(CipError::Path)?;
    if path.route.is_empty() || path.has_target() || path.member.is_some() || path.key.is_some() {
        return Err(CipError::BadRoute);
    }
    Ok(UnconnectedSend { priority_tick: data[0], timeout_ticks: data[1], message, route: path.route })
}

/// Reads a Multiple Service Packet's request data: the inner requests' bytes, in order.
pub fn parse_multiple_service(data: &[u8]) -> Result<Vec<&[u8]>, CipError> {
    let count = check_multiple_service(data)?;
    Ok((0..count).map(|i| inner_request(data, count, i)).collect())
}

/// Checks a Multiple Service Packet's count and offset table: the number of requests it carries. Every
/// offset is checked before any request is read, so a bad table refuses the packet whatever is inside.
fn check_multiple_service(data: &[u8]) -> Result<usize, CipError> {
    if data.len() < 2 {
        return Err(CipError::DataTruncated);
    }
    let count = le16(data, 0) as usize;
    if count == 0 {
        return Err(CipError::BadOffsets);
    }
    if count > MAX_LEAVES {
        return Err(CipError::TooManyRequests);
    }
    let table_end = 2 + 2 * count;
    if data.len() < table_end {
        return Err(CipError::DataTruncated);
    }
    for i in 0..count {
        let start = le16(data, 2 + 2 * i) as usize;
        let end = if i + 1 < count { le16(data, 4 + 2 * i) as usize } else { data.len() };
        // Each request needs at least its service and path size bytes.
        if start < table_end || end > data.len() || end < start + 2 {
            return Err(CipError::BadOffsets);
        }
    }
    Ok(count)
}

/// Request `i` of a packet [`check_multiple_service`] accepted.
fn inner_request(data: &[u8], count: usize, i: usize) -> &[u8] {
    let start = le16(data, 2 + 2 * i) as usize;
    let end = if i + 1 < count { le16(data, 4 + 2 * i) as usize } else { data.len() };
    &data[start..end]
}

/// Unwraps every container in one message router request; the leaves are what gets decided.
pub fn flatten(msg: &[u8]) -> Result<Leaves<'_>, CipError> {
    // Most messages are one request; a container reserves what it holds.
    let mut out = Vec::with_capacity(1);
    walk(msg, 0, &[], &mut out)?;
    Ok(out)
}

fn walk<'a>(msg: &'a [u8], depth: u8, route: &[Port], out: &mut Leaves<'a>) -> Result<(), CipError> {
    // The request is read into its place in `out` (a leaf is a few hundred bytes, and moving it out of
    // the parser costs more than reading it); a container's slot is given back once it is read.
    let slot = out.len();
    out.push(Leaf { request: Request::blank(), depth, route: Vec::new() });
    read_request(msg, &mut out[slot].request)?;
    let (service, data) = (out[slot].request.service, out[slot].request.data);
    match service {
        Service::MultipleServicePacket | Service::UnconnectedSend if depth >= MAX_DEPTH => Err(CipError::TooDeep),
        Service::MultipleServicePacket => {
            out.truncate(slot);
            let count = check_multiple_service(data)?;
            // Reserved once, so the list does not move its leaves again and again as it grows.
            out.reserve(count.min(MAX_LEAVES - slot.min(MAX_LEAVES)));
            for i in 0..count {
                walk(inner_request(data, count, i), depth + 1, route, out)?;
            }
            Ok(())
        }
        Service::UnconnectedSend => {
            out.truncate(slot);
            let us = parse_unconnected_send(data)?;
            let mut hops = route.to_vec();
            hops.extend(us.route);
            walk(us.message, depth + 1, &hops, out)
        }
        _ => {
            if slot >= MAX_LEAVES {
                return Err(CipError::TooManyRequests);
            }
            out[slot].route = route.to_vec();
            Ok(())
        }
    }
}
