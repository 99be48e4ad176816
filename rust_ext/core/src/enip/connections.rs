//! Session state for connected messaging: Forward Open / Large Forward Open / Forward Close parsed, and
//! a bounded table that maps a connection id on SendUnitData back to the path the connection was opened
//! to (its route and target object), so a class 3 request is attributed like an unconnected one.
//!
//! ```text
//!  Forward Open (0x54) / Large Forward Open (0x5B) request data, all LE:
//!   0 prio/tick u8 | 1 timeout ticks u8 | 2 O->T conn id u32 | 6 T->O conn id u32 | 10 conn serial u16 |
//!  12 vendor u16 | 14 originator serial u32 | 18 timeout multiplier u8 | 19 reserved 3 | 22 O->T RPI u32 |
//!  26 O->T params u16 (large: u32) | T->O RPI u32 | T->O params u16 (large: u32) | transport u8 |
//!  path size u8 (words) | connection path
//!  Forward Open reply data: O->T id u32 | T->O id u32 | serial u16 | vendor u16 | orig serial u32 |
//!   O->T API u32 | T->O API u32 | app reply size u8 (words) | reserved u8 | app reply
//!  Forward Close (0x4E) request data: prio u8 | ticks u8 | serial u16 | vendor u16 | orig serial u32 |
//!   path size u8 (words) | reserved u8 | connection path
//! ```
//!
//! A connection is known by its triad (connection serial, originator vendor, originator serial) until
//! the reply names its ids; the originator then sends on the O->T id, which the table is keyed by.

use super::cip::CipError;
use super::epath::{parse_path, Path};
use super::{le16, le32};
use std::collections::HashMap;

/// Most connections (pending and open) one table tracks; a device has fewer slots than this.
pub const MAX_CONNECTIONS: usize = 128;

/// What identifies a connection before its ids are known.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Triad {
    pub connection_serial: u16,
    pub vendor: u16,
    pub originator_serial: u32,
}

fn triad(d: &[u8], at: usize) -> Triad {
    Triad { connection_serial: le16(d, at), vendor: le16(d, at + 2), originator_serial: le32(d, at + 4) }
}

/// A Forward Open or Large Forward Open request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ForwardOpen {
    pub large: bool,
    pub priority_tick: u8,
    pub timeout_ticks: u8,
    pub ot_connection_id: u32,
    pub to_connection_id: u32,
    pub triad: Triad,
    pub timeout_multiplier: u8,
    pub ot_rpi: u32,
    /// Network connection parameters (16-bit in Forward Open, 32-bit in Large Forward Open).
    pub ot_params: u32,
    pub to_rpi: u32,
    pub to_params: u32,
    /// Transport class and trigger; the class is the low nibble (3 = explicit messaging).
    pub transport: u8,
    pub path: Path,
}

impl ForwardOpen {
    pub fn transport_class(&self) -> u8 {
        self.transport & 0x0F
    }
}

/// Reads a Forward Open (`large == false`) or Large Forward Open request's data.
pub fn parse_forward_open(data: &[u8], large: bool) -> Result<ForwardOpen, CipError> {
    let p = if large { 4 } else { 2 };
    let fixed = 26 + p + 4 + p + 2;
    if data.len() < fixed {
        return Err(CipError::DataTruncated);
    }
    let param = |at: usize| if large { le32(data, at) } else { le16(data, at) as u32 };
    let to_rpi_at = 26 + p;
    let to_params_at = to_rpi_at + 4;
    let transport_at = to_params_at + p;
    let path_len = 2 * data[transport_at + 1] as usize;
    let path_bytes = &data[fixed..];
    if path_bytes.len() < path_len {
        return Err(CipError::DataTruncated);
    }
    if path_bytes.len() > path_len {
        return Err(CipError::DataTrailing);
    }
    Ok(ForwardOpen {
        large,
        priority_tick: data[0],
        timeout_ticks: data[1],
        ot_connection_id: le32(data, 2),
        to_connection_id: le32(data, 6),
        triad: triad(data, 10),
        timeout_multiplier: data[18],
        ot_rpi: le32(data, 22),
        ot_params: param(26),
        to_rpi: le32(data, to_rpi_at),
        to_params: param(to_params_at),
        transport: data[transport_at],
        path: parse_path(path_bytes).map_err(CipError::Path)?,
    })
}

/// A Forward Close request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ForwardClose {
    pub priority_tick: u8,
    pub timeout_ticks: u8,
    pub triad: Triad,
    pub path: Path,
}

/// Reads a Forward Close request's data.
pub fn parse_forward_close(data: &[u8]) -> Result<ForwardClose, CipError> {
    if data.len() < 12 {
        return Err(CipError::DataTruncated);
    }
    let path_len = 2 * data[10] as usize;
    let path_bytes = &data[12..];
    if path_bytes.len() < path_len {
        return Err(CipError::DataTruncated);
    }
    if path_bytes.len() > path_len {
        return Err(CipError::DataTrailing);
    }
    Ok(ForwardClose {
        priority_tick: data[0],
        timeout_ticks: data[1],
        triad: triad(data, 2),
        path: parse_path(path_bytes).map_err(CipError::Path)?,
    })
}

/// A successful Forward Open (or Large Forward Open) reply.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ForwardOpenReply {
    pub ot_connection_id: u32,
    pub to_connection_id: u32,
    pub triad: Triad,
    pub ot_api: u32,
    pub to_api: u32,
}

/// Reads a successful Forward Open reply's data (general status 0).
pub fn parse_forward_open_reply(data: &[u8]) -> Result<ForwardOpenReply, CipError> {
    if data.len() < 26 {
        return Err(CipError::DataTruncated);
    }
    let app = 2 * data[24] as usize;
    if data.len() - 26 < app {
        return Err(CipError::DataTruncated);
    }
    if data.len() - 26 > app {
        return Err(CipError::DataTrailing);
    }
    Ok(ForwardOpenReply {
        ot_connection_id: le32(data, 0),
        to_connection_id: le32(data, 4),
        triad: triad(data, 8),
        ot_api: le32(data, 16),
        to_api: le32(data, 20),
    })
}

/// An open connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Connection {
    pub triad: Triad,
    /// The id the originator sends on (SendUnitData connected address, requests).
    pub ot_connection_id: u32,
    /// The id the target replies on.
    pub to_connection_id: u32,
    pub transport_class: u8,
    /// The connection path: route and target object every message on it goes to.
    pub path: Path,
    /// Sequence count of the last request seen on it.
    pub last_sequence: Option<u16>,
}

/// Why the table refused something.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TableError {
    /// [`MAX_CONNECTIONS`] reached.
    Full,
    /// A Forward Open with a triad already pending or open (the device would refuse it: 0x0100).
    DuplicateTriad,
    /// A connected message on an id no open connection has.
    UnknownConnection { connection_id: u32 },
}

/// What a connected request on a known connection turned out to be.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attributed<'t> {
    pub connection: &'t Connection,
    /// The same sequence count as the previous request: a class 3 retransmission.
    pub repeated: bool,
}

/// Connections of one client session, pending and open, bounded.
#[derive(Debug, Default)]
pub struct ConnectionTable {
    pending: HashMap<Triad, (u8, Path)>,
    open: HashMap<u32, Connection>,
}

impl ConnectionTable {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn len(&self) -> usize {
        self.pending.len() + self.open.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A Forward Open went to the device: remember where it leads until the reply names its ids.
    pub fn open_requested(&mut self, fo: &ForwardOpen) -> Result<(), TableError> {
        if self.pending.contains_key(&fo.triad) || self.open.values().any(|c| c.triad == fo.triad) {
            return Err(TableError::DuplicateTriad);
        }
        if self.len() >= MAX_CONNECTIONS {
            return Err(TableError::Full);
        }
        self.pending.insert(fo.triad, (fo.transport_class(), fo.path.clone()));
        Ok(())
    }

    /// The device accepted a Forward Open: the connection is open on the reply's ids. `None` when no
    /// Forward Open with that triad is pending (a reply nobody asked for is ignored).
    pub fn open_replied(&mut self, reply: &ForwardOpenReply) -> Option<&Connection> {
        let (transport_class, path) = self.pending.remove(&reply.triad)?;
        let id = reply.ot_connection_id;
        self.open.insert(
            id,
            Connection {
                triad: reply.triad,
                ot_connection_id: id,
                to_connection_id: reply.to_connection_id,
                transport_class,
                path,
                last_sequence: None,
            },
        );
        self.open.get(&id)
    }

    /// The device refused a Forward Open: forget it.
    pub fn open_refused(&mut self, triad: &Triad) {
        self.pending.remove(triad);
    }

    /// A Forward Close: the connection with that triad is gone (returned when it was open).
    pub fn close(&mut self, triad: &Triad) -> Option<Connection> {
        self.pending.remove(triad);
        let id = self.open.iter().find(|(_, c)| c.triad == *triad).map(|(id, _)| *id)?;
        self.open.remove(&id)
    }

    pub fn get(&self, ot_connection_id: u32) -> Option<&Connection> {
        self.open.get(&ot_connection_id)
    }

    /// A connected request (SendUnitData) on `connection_id` with `sequence`: which connection it
    /// belongs to, and whether it repeats the previous sequence count.
    pub fn connected_request(&mut self, connection_id: u32, sequence: u16) -> Result<Attributed<'_>, TableError> {
        let c = self.open.get_mut(&connection_id).ok_or(TableError::UnknownConnection { connection_id })?;
        let repeated = c.last_sequence == Some(sequence);
        c.last_sequence = Some(sequence);
        Ok(Attributed { connection: c, repeated })
    }
}
