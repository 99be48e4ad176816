//! Response path: parses replies from a device so the conduit can check them before they go back
//! to the client (docs/engine.md section 2, last paragraph).
//!
//! ```text
//!  exception:   | MBAP | fc|0x80 | code:1 |
//!  fc 1-4, 23:  | MBAP | fc | byte_count:1 | byte_count bytes |
//!  fc 5/6:      | MBAP | fc | address:2 | value:2 |            (echo of the request)
//!  fc 15/16:    | MBAP | fc | start:2 | quantity:2 |
//! ```
//! Replies to other function codes are framed but not looked into.

use super::functions::Malformed;
use super::request::Request;
use super::{MAX_ADU_LEN, MBAP_LEN};

/// One reply ADU as plain data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Response {
    pub transaction_id: u16,
    pub unit: u8,
    /// The raw function code byte (with the high bit set for an exception).
    pub function: u8,
    /// The exception code of an exception response.
    pub exception: Option<u8>,
    /// Set when the reply is not well formed.
    pub malformed: Option<Malformed>,
}

#[inline(always)]
fn be16(b: &[u8], i: usize) -> u16 {
    u16::from_be_bytes([b[i], b[i + 1]])
}

fn exact(data: &[u8], n: usize) -> Result<(), Malformed> {
    match data.len().cmp(&n) {
        std::cmp::Ordering::Less => Err(Malformed::Truncated),
        std::cmp::Ordering::Greater => Err(Malformed::TrailingBytes),
        std::cmp::Ordering::Equal => Ok(()),
    }
}

fn check_pdu(function: u8, data: &[u8]) -> Result<Option<u8>, Malformed> {
    if function & 0x80 != 0 {
        exact(data, 1)?;
        return Ok(Some(data[0]));
    }
    match function {
        1..=4 | 23 => {
            if data.is_empty() {
                return Err(Malformed::Truncated);
            }
            let bc = data[0] as usize;
            let registers = function >= 3;
            if bc == 0 || (registers && !bc.is_multiple_of(2)) {
                return Err(Malformed::BadByteCount);
            }
            exact(data, 1 + bc)?;
        }
        5 => {
            exact(data, 4)?;
            if !matches!(be16(data, 2), 0x0000 | 0xFF00) {
                return Err(Malformed::BadCoilValue);
            }
        }
        6 => exact(data, 4)?,
        15 | 16 => {
            exact(data, 4)?;
            let qty = be16(data, 2);
            let max = if function == 15 { 1968 } else { 123 };
            if qty == 0 || qty > max {
                return Err(Malformed::BadQuantity);
            }
        }
        _ => {}
    }
    Ok(None)
}

/// Parses one reply ADU. Header problems are reported as for requests
/// ([`super::request::parse_request`]).
pub fn parse_response(frame: &[u8]) -> Response {
    let mut resp = Response {
        transaction_id: if frame.len() >= 2 { be16(frame, 0) } else { 0 },
        unit: if frame.len() >= MBAP_LEN { frame[6] } else { 0 },
        function: if frame.len() > MBAP_LEN { frame[7] } else { 0 },
        exception: None,
        malformed: None,
    };
    if frame.len() <= MBAP_LEN || frame[2] != 0 || frame[3] != 0 {
        resp.malformed = Some(Malformed::Truncated);
        return resp;
    }
    let declared = 6 + be16(frame, 4) as usize;
    if declared > frame.len() {
        resp.malformed = Some(Malformed::Truncated);
        return resp;
    }
    if declared < frame.len() || declared > MAX_ADU_LEN {
        resp.malformed = Some(Malformed::TrailingBytes);
        return resp;
    }
    match check_pdu(resp.function, &frame[MBAP_LEN + 1..]) {
        Ok(exc) => resp.exception = exc,
        Err(kind) => resp.malformed = Some(kind),
    }
    resp
}

/// True when `response` answers `request`: same transaction, same unit, and the same function
/// code or its exception form (`fc | 0x80`).
#[inline]
pub fn matches(request: &Request<'_>, response: &Response) -> bool {
    request.transaction_id == response.transaction_id
        && request.unit == response.unit
        && (response.function == request.function || response.function == request.function | 0x80)
}
