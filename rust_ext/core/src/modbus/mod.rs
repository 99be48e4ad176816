//! Framing and parsing stage: Modbus/TCP bytes in, plain request and response data out.
//!
//! `frame` splits an MBAP stream into ADUs, `request` turns one ADU into a [`request::Request`]
//! (what it touches, what it writes) or a [`functions::Malformed`] kind, `response` parses replies
//! so the conduit can check them against the request. Nothing here knows about policy or I/O.
//! Addresses are zero-based, as on the wire.

pub mod frame;
pub mod functions;
pub mod request;
pub mod response;

pub use frame::{split, Split, SplitInvalid};
pub use functions::{ExceptionCode, FunctionCode, Malformed, Table};
pub use request::{parse_request, Request, RequestError};
pub use response::{matches, parse_response, Response};

/// Bytes of the MBAP header: transaction id, protocol id, length, unit id.
pub const MBAP_LEN: usize = 7;
/// Largest value the MBAP length field may carry (unit id + a 253-byte PDU).
pub const MAX_LENGTH_FIELD: usize = 254;
/// Largest ADU on the wire.
pub const MAX_ADU_LEN: usize = 6 + MAX_LENGTH_FIELD;
