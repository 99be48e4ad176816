//! Framing stage for EtherNet/IP: splits a TCP stream into encapsulation messages and reads their header.
//!
//! ```text
//!  0        2        4           8          12                20        24        24+length
//!  +--------+--------+-----------+----------+-----------------+---------+----------+
//!  |command | length | session   | status   | sender context  | options | data ... |
//!  +--------+--------+-----------+----------+-----------------+---------+----------+
//!    u16 LE   u16 LE   u32 LE      u32 LE     8 bytes, echoed   u32 LE
//! ```
//!
//! `split` looks only at the start of the buffer and never trusts the length field beyond its bound, so a
//! hostile peer cannot make the conduit wait for, or buffer, more than one maximal message. An invalid
//! stream cannot be resynchronised: the caller closes the connection.

use super::cpf::{parse_send_data, CpfError, SendData};
use super::{le16, le32, HEADER_LEN, MAX_DATA_LEN};

/// Encapsulation commands (Vol. 2, table 2-3.2), with their wire values.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u16)]
pub enum Command {
    /// 0x0000: no operation, no reply.
    Nop = 0x0000,
    /// 0x0004: which encapsulation services the target supports.
    ListServices = 0x0004,
    /// 0x0063: identity of the target (discovery).
    ListIdentity = 0x0063,
    /// 0x0064: non-CIP interfaces of the target.
    ListInterfaces = 0x0064,
    /// 0x0065: opens a session; the reply carries the session handle.
    RegisterSession = 0x0065,
    /// 0x0066: closes the session, no reply.
    UnRegisterSession = 0x0066,
    /// 0x006F: unconnected (UCMM) request/reply carrying a CIP message.
    SendRrData = 0x006F,
    /// 0x0070: connected (class 3) message over a connection opened by Forward Open.
    SendUnitData = 0x0070,
    /// 0x0072: status indication (no CIP payload zonegate forwards).
    IndicateStatus = 0x0072,
    /// 0x0073: cancel (no CIP payload zonegate forwards).
    Cancel = 0x0073,
}

impl Command {
    pub const fn from_u16(v: u16) -> Option<Self> {
        Some(match v {
            0x0000 => Self::Nop,
            0x0004 => Self::ListServices,
            0x0063 => Self::ListIdentity,
            0x0064 => Self::ListInterfaces,
            0x0065 => Self::RegisterSession,
            0x0066 => Self::UnRegisterSession,
            0x006F => Self::SendRrData,
            0x0070 => Self::SendUnitData,
            0x0072 => Self::IndicateStatus,
            0x0073 => Self::Cancel,
            _ => return None,
        })
    }

    /// Stable snake_case name, as logs, metrics and policies spell it.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Nop => "nop",
            Self::ListServices => "list_services",
            Self::ListIdentity => "list_identity",
            Self::ListInterfaces => "list_interfaces",
            Self::RegisterSession => "register_session",
            Self::UnRegisterSession => "unregister_session",
            Self::SendRrData => "send_rr_data",
            Self::SendUnitData => "send_unit_data",
            Self::IndicateStatus => "indicate_status",
            Self::Cancel => "cancel",
        }
    }
}

/// Why the start of a stream is not an encapsulation header; values are stable reason codes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum SplitInvalid {
    /// Length field beyond the bound (65511 by the specification, or the caller's smaller limit).
    Length = 1,
}

impl SplitInvalid {
    pub const fn name(self) -> &'static str {
        match self {
            Self::Length => "length",
        }
    }
}

/// The three outcomes of looking at the start of a stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Split {
    /// `buf[..used]` is one encapsulation message.
    Complete { used: usize },
    /// At least `needed` more bytes are required before anything can be said.
    Incomplete { needed: usize },
    /// The stream is not EtherNet/IP (or exceeds the bound).
    Invalid(SplitInvalid),
}

/// Looks at the start of `buf` and says whether it holds a complete encapsulation message.
#[inline]
pub fn split(buf: &[u8]) -> Split {
    split_with_limit(buf, MAX_DATA_LEN)
}

/// As [`split`], with a data length bound below the specification's (a conduit that never forwards
/// large messages refuses them before buffering them). `max_data` above 65511 is treated as 65511.
#[inline]
pub fn split_with_limit(buf: &[u8], max_data: usize) -> Split {
    if buf.len() < HEADER_LEN {
        // The length field sits at 2..4: refuse an oversized message as soon as it is readable.
        if buf.len() >= 4 && le16(buf, 2) as usize > max_data.min(MAX_DATA_LEN) {
            return Split::Invalid(SplitInvalid::Length);
        }
        return Split::Incomplete { needed: HEADER_LEN - buf.len() };
    }
    let len = le16(buf, 2) as usize;
    if len > max_data.min(MAX_DATA_LEN) {
        return Split::Invalid(SplitInvalid::Length);
    }
    let total = HEADER_LEN + len;
    if buf.len() < total {
        Split::Incomplete { needed: total - buf.len() }
    } else {
        Split::Complete { used: total }
    }
}

/// The encapsulation header, as read from the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    /// The raw command word.
    pub command: u16,
    /// Bytes of data after the header.
    pub length: u16,
    pub session: u32,
    pub status: u32,
    /// Echoed by the target in its reply: what replies are matched on.
    pub sender_context: [u8; 8],
    /// Must be 0; a receiver discards the message otherwise (Vol. 2, 2-3.6).
    pub options: u32,
}

impl Header {
    /// Reads the header from the first 24 bytes, or `None` when fewer are present.
    pub fn read(buf: &[u8]) -> Option<Header> {
        if buf.len() < HEADER_LEN {
            return None;
        }
        let mut ctx = [0u8; 8];
        ctx.copy_from_slice(&buf[12..20]);
        Some(Header {
            command: le16(buf, 0),
            length: le16(buf, 2),
            session: le32(buf, 4),
            status: le32(buf, 8),
            sender_context: ctx,
            options: le32(buf, 20),
        })
    }

    pub fn known_command(&self) -> Option<Command> {
        Command::from_u16(self.command)
    }
}

/// A framed message that is not well formed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EncapError {
    /// Fewer bytes than the header, or than its length field declares.
    Truncated,
    /// More bytes than the length field declares.
    TrailingBytes,
    /// Options field not 0.
    NonZeroOptions,
    /// The command's fixed data has the wrong size (RegisterSession: 4 bytes; list commands: 0 in a request).
    BadCommandLength { command: u16, length: u16 },
    /// SendRRData / SendUnitData data that is not a valid Common Packet Format.
    Cpf(CpfError),
}

impl EncapError {
    pub const fn name(self) -> &'static str {
        match self {
            Self::Truncated => "truncated",
            Self::TrailingBytes => "trailing_bytes",
            Self::NonZeroOptions => "non_zero_options",
            Self::BadCommandLength { .. } => "bad_command_length",
            Self::Cpf(e) => e.name(),
        }
    }
}

/// What the data of a message holds, by command.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Body<'a> {
    /// No data (NOP carries ignored bytes; list requests carry none).
    Empty,
    /// RegisterSession: protocol version (1) and option flags (0).
    RegisterSession { version: u16, flags: u16 },
    /// SendRRData / SendUnitData: interface handle, timeout and CPF items.
    SendData(SendData<'a>),
    /// A command zonegate does not parse (unknown, or a reply body such as ListIdentity's); raw data.
    Raw(&'a [u8]),
}

/// One encapsulation message, parsed as far as its command defines.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Frame<'a> {
    pub header: Header,
    /// `None` for a command zonegate does not know (never forwarded by a conduit).
    pub command: Option<Command>,
    pub body: Body<'a>,
}

/// Parses one message exactly as the splitter cut it. Requests and replies share the layout; a reply's
/// list data comes back as [`Body::Raw`].
pub fn parse_frame(frame: &[u8]) -> Result<Frame<'_>, EncapError> {
    let header = Header::read(frame).ok_or(EncapError::Truncated)?;
    let total = HEADER_LEN + header.length as usize;
    if frame.len() < total {
        return Err(EncapError::Truncated);
    }
    if frame.len() > total {
        return Err(EncapError::TrailingBytes);
    }
    if header.options != 0 {
        return Err(EncapError::NonZeroOptions);
    }
    let data = &frame[HEADER_LEN..];
    let command = header.known_command();
    let bad_len = EncapError::BadCommandLength { command: header.command, length: header.length };
    let body = match command {
        Some(Command::Nop) => Body::Empty,
        Some(Command::RegisterSession) => {
            if data.len() != 4 {
                return Err(bad_len);
            }
            Body::RegisterSession { version: le16(data, 0), flags: le16(data, 2) }
        }
        Some(Command::UnRegisterSession) => {
            if !data.is_empty() {
                return Err(bad_len);
            }
            Body::Empty
        }
        Some(Command::ListIdentity | Command::ListServices | Command::ListInterfaces) => {
            if data.is_empty() {
                Body::Empty
            } else {
                Body::Raw(data)
            }
        }
        Some(Command::SendRrData | Command::SendUnitData) => {
            Body::SendData(parse_send_data(data).map_err(EncapError::Cpf)?)
        }
        Some(Command::IndicateStatus | Command::Cancel) | None => Body::Raw(data),
    };
    Ok(Frame { header, command, body })
}

/// Iterates over the complete messages at the start of a buffer; stops at the first incomplete or
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

    /// Bytes covered by the messages yielded so far.
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
