//! Framing stage: splits a Modbus/TCP byte stream into ADUs.
//!
//! ```text
//!  0      2      4      6     7         6+len
//!  +------+------+------+-----+----------+
//!  | tid  | pid  | len  |unit | PDU ...  |      all big-endian; len counts unit + PDU
//!  +------+------+------+-----+----------+
//! ```
//!
//! `split` looks only at the start of the buffer and never trusts the length field beyond its
//! bound (2..=254), so a hostile peer cannot make the conduit wait for, or buffer, more than one
//! maximal ADU. An invalid stream cannot be resynchronised: the caller closes the connection.

use super::MAX_LENGTH_FIELD;

/// Why the start of a stream is not an MBAP header; values are the binding's reason codes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum SplitInvalid {
    /// Protocol identifier is not 0 (not Modbus).
    ProtocolId = 1,
    /// Length field outside 2..=254.
    Length = 2,
}

impl SplitInvalid {
    pub const fn name(self) -> &'static str {
        match self {
            Self::ProtocolId => "protocol_id",
            Self::Length => "length",
        }
    }
}

/// The three outcomes of looking at the start of a stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Split {
    /// `buf[..used]` is one ADU.
    Complete { used: usize },
    /// At least `needed` more bytes are required before anything can be said.
    Incomplete { needed: usize },
    /// The stream is not Modbus/TCP.
    Invalid(SplitInvalid),
}

/// Looks at the start of `buf` and says whether it holds a complete ADU.
#[inline]
pub fn split(buf: &[u8]) -> Split {
    if buf.len() < 6 {
        return Split::Incomplete { needed: 6 - buf.len() };
    }
    if buf[2] != 0 || buf[3] != 0 {
        return Split::Invalid(SplitInvalid::ProtocolId);
    }
    let len = u16::from_be_bytes([buf[4], buf[5]]) as usize;
    if !(2..=MAX_LENGTH_FIELD).contains(&len) {
        return Split::Invalid(SplitInvalid::Length);
    }
    let total = 6 + len;
    if buf.len() < total {
        Split::Incomplete { needed: total - buf.len() }
    } else {
        Split::Complete { used: total }
    }
}

/// Iterates over the complete ADUs at the start of a buffer; stops at the first incomplete or
/// invalid one, which [`Frames::stop`] then reports along with the bytes consumed.
pub struct Frames<'a> {
    buf: &'a [u8],
    consumed: usize,
    stop: Option<Split>,
}

impl<'a> Frames<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Frames { buf, consumed: 0, stop: None }
    }

    /// Bytes covered by the ADUs yielded so far.
    pub fn consumed(&self) -> usize {
        self.consumed
    }

    /// Why iteration ended (`Incomplete` or `Invalid`), once it has.
    pub fn stop(&self) -> Option<Split> {
        self.stop
    }
}

impl<'a> Iterator for Frames<'a> {
    type Item = &'a [u8];

    #[inline]
    fn next(&mut self) -> Option<&'a [u8]> {
        if self.stop.is_some() {
            return None;
        }
        let rest = &self.buf[self.consumed..];
        match split(rest) {
            Split::Complete { used } => {
                self.consumed += used;
                Some(&rest[..used])
            }
            other => {
                self.stop = Some(other);
                None
            }
        }
    }
}
