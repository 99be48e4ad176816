//! Parsing stage: the data of SendRRData / SendUnitData, Common Packet Format items (Vol. 2, 2-6).
//!
//! ```text
//!  | interface handle u32 | timeout u16 | item count u16 | item ... |
//!  item: | type id u16 | length u16 | data (length bytes) |
//!  SendRRData:   [null address 0x0000, len 0]      [unconnected data 0x00B2: CIP request]
//!  SendUnitData: [connected address 0x00A1: conn id] [connected data 0x00B1: seq u16 + CIP request]
//! ```
//!
//! All little-endian. Item lengths are checked against what is left and against the size their type
//! fixes, so an item can never point outside the message.

use super::{le16, le32};

/// Most items one message may carry; the specification's messages carry 2 to 4.
pub const MAX_ITEMS: usize = 8;

/// CPF item type ids (Vol. 2, table 2-6.3), with their wire values.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u16)]
pub enum ItemType {
    /// 0x0000: null address (unconnected messages), length 0.
    NullAddress = 0x0000,
    /// 0x000C: ListIdentity reply item.
    ListIdentity = 0x000C,
    /// 0x00A1: connected address, the 32-bit connection id.
    ConnectedAddress = 0x00A1,
    /// 0x00B1: connected data, a 16-bit sequence count then the CIP message.
    ConnectedData = 0x00B1,
    /// 0x00B2: unconnected data, the CIP message.
    UnconnectedData = 0x00B2,
    /// 0x0100: ListServices reply item.
    ListServices = 0x0100,
    /// 0x8000: socket address, originator to target (Forward Open for class 0/1).
    SockaddrOtoT = 0x8000,
    /// 0x8001: socket address, target to originator.
    SockaddrTtoO = 0x8001,
    /// 0x8002: sequenced address, connection id and sequence number (class 0/1 I/O).
    SequencedAddress = 0x8002,
}

impl ItemType {
    pub const fn from_u16(v: u16) -> Option<Self> {
        Some(match v {
            0x0000 => Self::NullAddress,
            0x000C => Self::ListIdentity,
            0x00A1 => Self::ConnectedAddress,
            0x00B1 => Self::ConnectedData,
            0x00B2 => Self::UnconnectedData,
            0x0100 => Self::ListServices,
            0x8000 => Self::SockaddrOtoT,
            0x8001 => Self::SockaddrTtoO,
            0x8002 => Self::SequencedAddress,
            _ => return None,
        })
    }

    /// The length the type fixes, when it fixes one.
    pub const fn fixed_len(self) -> Option<usize> {
        match self {
            Self::NullAddress => Some(0),
            Self::ConnectedAddress => Some(4),
            Self::SequencedAddress => Some(8),
            Self::SockaddrOtoT | Self::SockaddrTtoO => Some(16),
            _ => None,
        }
    }
}

/// Why a CPF is not well formed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CpfError {
    /// Fewer bytes than the interface handle, timeout and item headers, or than an item's length says.
    Truncated,
    /// Bytes left after the last item.
    TrailingBytes,
    /// More items than [`MAX_ITEMS`].
    TooManyItems { count: u16 },
    /// An item whose length disagrees with its type (connected address not 4 bytes, connected data
    /// shorter than its sequence count, ...).
    BadItemLength { type_id: u16, length: u16 },
}

impl CpfError {
    pub const fn name(self) -> &'static str {
        match self {
            Self::Truncated => "cpf_truncated",
            Self::TrailingBytes => "cpf_trailing_bytes",
            Self::TooManyItems { .. } => "cpf_too_many_items",
            Self::BadItemLength { .. } => "cpf_bad_item_length",
        }
    }
}

/// One item, its data borrowed from the message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Item<'a> {
    pub type_id: u16,
    /// `None` for a type id the specification does not define.
    pub kind: Option<ItemType>,
    pub data: &'a [u8],
}

impl Item<'_> {
    const NONE: Item<'static> = Item { type_id: 0, kind: None, data: &[] };
}

/// The items of one message, in wire order, without allocation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cpf<'a> {
    items: [Item<'a>; MAX_ITEMS],
    count: u8,
}

/// Where a message is addressed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Address {
    Null,
    Connected { connection_id: u32 },
    Sequenced { connection_id: u32, sequence: u32 },
}

/// The message a CPF carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Payload<'a> {
    /// An unconnected (UCMM) CIP message.
    Unconnected(&'a [u8]),
    /// A connected (class 3) CIP message and its connection sequence count.
    Connected { sequence: u16, message: &'a [u8] },
}

impl<'a> Cpf<'a> {
    pub fn items(&self) -> &[Item<'a>] {
        &self.items[..self.count as usize]
    }

    /// The first address item, if any.
    pub fn address(&self) -> Option<Address> {
        self.items().iter().find_map(|it| match it.kind? {
            ItemType::NullAddress => Some(Address::Null),
            ItemType::ConnectedAddress => Some(Address::Connected { connection_id: le32(it.data, 0) }),
            ItemType::SequencedAddress => {
                Some(Address::Sequenced { connection_id: le32(it.data, 0), sequence: le32(it.data, 4) })
            }
            _ => None,
        })
    }

    /// The first data item, if any.
    pub fn payload(&self) -> Option<Payload<'a>> {
        self.items().iter().find_map(|it| match it.kind? {
            ItemType::UnconnectedData => Some(Payload::Unconnected(it.data)),
            ItemType::ConnectedData => Some(Payload::Connected { sequence: le16(it.data, 0), message: &it.data[2..] }),
            _ => None,
        })
    }
}

/// SendRRData / SendUnitData data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SendData<'a> {
    /// Interface handle: 0 for CIP.
    pub interface: u32,
    /// Seconds (SendRRData); 0 for SendUnitData.
    pub timeout: u16,
    pub cpf: Cpf<'a>,
}

/// Parses the data of a SendRRData or SendUnitData message.
pub fn parse_send_data(data: &[u8]) -> Result<SendData<'_>, CpfError> {
    if data.len() < 6 {
        return Err(CpfError::Truncated);
    }
    Ok(SendData { interface: le32(data, 0), timeout: le16(data, 4), cpf: parse_cpf(&data[6..])? })
}

/// Parses a Common Packet Format (item count, then the items), exactly filling `buf`.
pub fn parse_cpf(buf: &[u8]) -> Result<Cpf<'_>, CpfError> {
    if buf.len() < 2 {
        return Err(CpfError::Truncated);
    }
    let count = le16(buf, 0);
    if count as usize > MAX_ITEMS {
        return Err(CpfError::TooManyItems { count });
    }
    let mut cpf = Cpf { items: [Item::NONE; MAX_ITEMS], count: 0 };
    let mut rest = &buf[2..];
    for _ in 0..count {
        if rest.len() < 4 {
            return Err(CpfError::Truncated);
        }
        let type_id = le16(rest, 0);
        let length = le16(rest, 2);
        let n = length as usize;
        if rest.len() - 4 < n {
            return Err(CpfError::Truncated);
        }
        let kind = ItemType::from_u16(type_id);
        let bad = CpfError::BadItemLength { type_id, length };
        match kind {
            Some(k) if k.fixed_len().is_some_and(|f| f != n) => return Err(bad),
            Some(ItemType::ConnectedData) if n < 2 => return Err(bad),
            _ => {}
        }
        cpf.items[cpf.count as usize] = Item { type_id, kind, data: &rest[4..4 + n] };
        cpf.count += 1;
        rest = &rest[4 + n..];
    }
    if !rest.is_empty() {
        return Err(CpfError::TrailingBytes);
    }
    Ok(cpf)
}
