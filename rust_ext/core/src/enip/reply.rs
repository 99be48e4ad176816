//! Response path: checks that a reply from the device answers the request it is taken for, before the
//! conduit hands it back (a device, or whoever sits on the zone wire, must not slip an unrelated reply in).
//!
//! Unconnected (SendRRData, list commands, RegisterSession): same command, same session (RegisterSession:
//! the reply brings it), same sender context, and a CIP reply to the same service code (for an
//! Unconnected Send: to its own code, when a router could not deliver it, or to the request inside).
//! Connected (SendUnitData): the reply comes on the connection's T->O id with the request's sequence
//! count, and answers the same service code.

use super::connections::ConnectionTable;
use super::containers::{parse_unconnected_send, MAX_DEPTH};
use super::cpf::{Address, Payload};
use super::encap::{parse_frame, Body, Command, Frame};
use super::{cip, EncapError};

/// Why a reply does not answer a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mismatch {
    /// The request or the reply is not a well-formed message.
    Malformed(EncapError),
    Command,
    Session,
    SenderContext,
    /// The reply carries no CIP reply, or one to another service code.
    Service,
    /// SendUnitData: not on the connection's T->O id, or the request's connection is not open.
    Connection,
    /// SendUnitData: another sequence count.
    Sequence,
}

fn payload<'a>(f: &Frame<'a>) -> Option<Payload<'a>> {
    match f.body {
        Body::SendData(sd) => sd.cpf.payload(),
        _ => None,
    }
}

fn address(f: &Frame<'_>) -> Option<Address> {
    match f.body {
        Body::SendData(sd) => sd.cpf.address(),
        _ => None,
    }
}

/// The service code a reply to `req` may carry besides Unconnected Send's own: a target answers an
/// Unconnected Send with the reply to the request inside it (the routers on the way strip the
/// wrapper), and only a router that cannot deliver it answers with 0x52 | 0x80.
fn delivered_code(req: &[u8]) -> Option<u8> {
    let mut msg = req;
    for _ in 0..=MAX_DEPTH {
        let r = cip::parse_request(msg).ok()?;
        if r.service != cip::Service::UnconnectedSend {
            return Some(r.code);
        }
        msg = parse_unconnected_send(r.data).ok()?.message;
    }
    None
}

fn same_service(req: &[u8], rep: &[u8]) -> Result<(), Mismatch> {
    let r = cip::parse_response(rep).map_err(|_| Mismatch::Service)?;
    if req.first() == Some(&r.code) || delivered_code(req) == Some(r.code) {
        return Ok(());
    }
    Err(Mismatch::Service)
}

/// Says whether `reply` answers `request` (both whole encapsulation messages). `table` attributes
/// connected requests; it is only read.
pub fn reply_matches(request: &[u8], reply: &[u8], table: &ConnectionTable) -> Result<(), Mismatch> {
    let q = parse_frame(request).map_err(Mismatch::Malformed)?;
    let a = parse_frame(reply).map_err(Mismatch::Malformed)?;
    if q.header.command != a.header.command {
        return Err(Mismatch::Command);
    }
    if q.command != Some(Command::RegisterSession) && q.header.session != a.header.session {
        return Err(Mismatch::Session);
    }
    match q.command {
        Some(Command::SendUnitData) => {
            let (Some(Address::Connected { connection_id }), Some(Address::Connected { connection_id: back })) =
                (address(&q), address(&a))
            else {
                return Err(Mismatch::Connection);
            };
            let c = table.get(connection_id).ok_or(Mismatch::Connection)?;
            if back != c.to_connection_id {
                return Err(Mismatch::Connection);
            }
            let (
                Some(Payload::Connected { sequence: s1, message: m1 }),
                Some(Payload::Connected { sequence: s2, message: m2 }),
            ) = (payload(&q), payload(&a))
            else {
                return Err(Mismatch::Service);
            };
            if s1 != s2 {
                return Err(Mismatch::Sequence);
            }
            same_service(m1, m2)
        }
        _ => {
            if q.header.sender_context != a.header.sender_context {
                return Err(Mismatch::SenderContext);
            }
            if q.command == Some(Command::SendRrData) {
                let (Some(Payload::Unconnected(m1)), Some(Payload::Unconnected(m2))) = (payload(&q), payload(&a))
                else {
                    return Err(Mismatch::Service);
                };
                return same_service(m1, m2);
            }
            Ok(())
        }
    }
}
