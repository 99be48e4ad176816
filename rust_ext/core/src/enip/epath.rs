//! Parsing stage: CIP EPATHs (padded form, Vol. 1 appendix C) into the address a policy matches on.
//!
//! ```text
//!  port      000e pppp [link size if e] [port u16 if pppp=15] link address... [pad to even]
//!  logical   001t ttff  ff: 0 = u8 value | 1 = pad + u16 LE | 2 = pad + u32 LE
//!            ttt: 0 class, 1 instance, 2 member (array element after a symbol), 3 connection point,
//!                 4 attribute, 5 electronic key (0x34, format 4, 8 bytes)
//!  network   010x xxxx  one data byte, or (0x5X) a word count and that many words
//!  data      1000 0000  simple data: word count, words (Forward Open application data)
//!            1001 0001  ANSI extended symbol: length, characters, pad to even (a Logix tag name part)
//! ```
//!
//! A path is read once into plain data: the route (port segments), the logical address, and the tag
//! name with its array elements and members (`Program:Main.Line1[3].Speed`). Anything that would let a
//! device read a path differently from the policy (a segment repeated, logical segments out of order,
//! characters that could be confused with the tag name syntax) is an error, answered with general
//! status 0x04 (path segment error).

use super::cip::Anomalies;
use super::{le16, le32};

/// Kinds of malformed path, with the byte offset of the offending segment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PathErrorKind {
    /// A segment runs past the end of the path.
    Truncated,
    /// A segment type or format the specification reserves (logical format 3, segment type 111, ...).
    Reserved,
    /// A segment zonegate does not accept in a request path (symbolic 0x6X, service id, extended logical).
    Unsupported,
    /// A symbol that is empty or holds a character outside `[A-Za-z0-9_:]`.
    BadSymbol,
    /// The same logical segment (class, instance, attribute, connection point) twice.
    Duplicate,
    /// Logical segments out of order (instance before class, port after an address segment, ...).
    OutOfOrder,
    /// Port 0 (reserved) or an empty link address.
    BadPort,
    /// An electronic key whose format is not 4, or a second key.
    BadKey,
}

/// A path that cannot be read, and where.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PathError {
    pub kind: PathErrorKind,
    /// Offset of the segment in the path.
    pub offset: usize,
}

impl PathError {
    pub const fn name(self) -> &'static str {
        match self.kind {
            PathErrorKind::Truncated => "path_truncated",
            PathErrorKind::Reserved => "path_reserved_segment",
            PathErrorKind::Unsupported => "path_unsupported_segment",
            PathErrorKind::BadSymbol => "path_bad_symbol",
            PathErrorKind::Duplicate => "path_duplicate_segment",
            PathErrorKind::OutOfOrder => "path_out_of_order",
            PathErrorKind::BadPort => "path_bad_port",
            PathErrorKind::BadKey => "path_bad_key",
        }
    }

    /// CIP general status a device answers: 0x04, path segment error.
    pub const fn general_status(self) -> u8 {
        0x04
    }
}

/// One hop of a route: leave by `port`, to the node at `link`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Port {
    pub port: u16,
    /// Link address: one byte (a slot or node number) or an extended address (e.g. an IP as text).
    pub link: Vec<u8>,
}

/// One dot-separated part of a tag name and the array elements that follow it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TagPart {
    pub name: String,
    pub elements: Vec<u32>,
}

/// A Logix tag name, e.g. `Program:Main.Line1[3,4].Speed`.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct TagName {
    pub parts: Vec<TagPart>,
}

impl TagName {
    /// The canonical text: parts joined by `.`, elements as `[i]` or `[i,j]` after their part.
    pub fn text(&self) -> String {
        let mut s = String::new();
        for (i, p) in self.parts.iter().enumerate() {
            if i > 0 {
                s.push('.');
            }
            s.push_str(&p.name);
            if !p.elements.is_empty() {
                s.push('[');
                for (j, e) in p.elements.iter().enumerate() {
                    if j > 0 {
                        s.push(',');
                    }
                    s.push_str(&e.to_string());
                }
                s.push(']');
            }
        }
        s
    }
}

/// Electronic key (logical special segment, format 4), as carried by Forward Open.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ElectronicKey {
    pub vendor: u16,
    pub device_type: u16,
    pub product_code: u16,
    /// Major revision; bit 7 is the compatibility bit.
    pub major: u8,
    pub minor: u8,
}

/// A parsed path.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Path {
    /// Port segments in order (routes through bridges and backplanes).
    pub route: Vec<Port>,
    pub class: Option<u32>,
    pub instance: Option<u32>,
    pub attribute: Option<u32>,
    /// Member id after a logical address (not an array element: those belong to the tag).
    pub member: Option<u32>,
    pub connection_point: Option<u32>,
    pub tag: Option<TagName>,
    pub key: Option<ElectronicKey>,
    pub anomalies: Anomalies,
}

impl Path {
    /// True when the path names neither a class nor a tag (only a route, or nothing).
    pub fn has_target(&self) -> bool {
        self.class.is_some() || self.tag.is_some()
    }
}

fn symbol_ok(s: &[u8]) -> bool {
    !s.is_empty() && s.iter().all(|&c| c.is_ascii_alphanumeric() || c == b'_' || c == b':')
}

/// Where the walk is, so ordering rules can be checked.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Stage {
    Route,
    Address,
}

/// Parses a padded EPATH occupying all of `buf` (the caller cut it by the path size in words).
pub fn parse_path(buf: &[u8]) -> Result<Path, PathError> {
    let mut p = Path::default();
    let mut i = 0usize;
    let mut stage = Stage::Route;
    // Rank of the last class/instance/attribute segment seen: logical addresses go class, instance,
    // attribute (connection point and member may follow the instance).
    let mut rank = 0u8;
    while i < buf.len() {
        let at = i;
        let err = |kind| PathError { kind, offset: at };
        let b = buf[i];
        let need = |n: usize| if buf.len() - at < n { Err(err(PathErrorKind::Truncated)) } else { Ok(()) };
        match b >> 5 {
            0b000 => {
                // Port segment.
                if stage != Stage::Route {
                    return Err(err(PathErrorKind::OutOfOrder));
                }
                let extended = b & 0x10 != 0;
                let mut j = at + 1;
                let mut link_len = 1usize;
                if extended {
                    need(2)?;
                    link_len = buf[j] as usize;
                    j += 1;
                }
                let mut port = (b & 0x0F) as u16;
                if port == 15 {
                    if buf.len() < j + 2 {
                        return Err(err(PathErrorKind::Truncated));
                    }
                    port = le16(buf, j);
                    j += 2;
                }
                if port == 0 || link_len == 0 {
                    return Err(err(PathErrorKind::BadPort));
                }
                if buf.len() < j + link_len {
                    return Err(err(PathErrorKind::Truncated));
                }
                let link = buf[j..j + link_len].to_vec();
                j += link_len;
                if (j - at) % 2 == 1 {
                    if j >= buf.len() {
                        return Err(err(PathErrorKind::Truncated));
                    }
                    if buf[j] != 0 {
                        p.anomalies |= Anomalies::NONZERO_PAD;
                    }
                    j += 1;
                }
                p.route.push(Port { port, link });
                i = j;
            }
            0b001 => {
                // Logical segment.
                let ty = (b >> 2) & 0x07;
                let fmt = b & 0x03;
                if ty == 5 {
                    // Electronic key: checks the node it is addressed to, so it may sit before or after
                    // the hop that reaches it; it is not an address and does not end the route.
                    if fmt != 0 {
                        return Err(err(PathErrorKind::Reserved));
                    }
                    need(2)?;
                    if buf[at + 1] != 4 {
                        return Err(err(PathErrorKind::BadKey));
                    }
                    need(10)?;
                    if p.key.is_some() {
                        return Err(err(PathErrorKind::BadKey));
                    }
                    let k = &buf[at + 2..at + 10];
                    p.key = Some(ElectronicKey {
                        vendor: le16(k, 0),
                        device_type: le16(k, 2),
                        product_code: le16(k, 4),
                        major: k[6],
                        minor: k[7],
                    });
                    i = at + 10;
                    continue;
                }
                if ty == 6 || ty == 7 {
                    return Err(err(PathErrorKind::Unsupported));
                }
                stage = Stage::Address;
                let (value, len) = match fmt {
                    0 => {
                        need(2)?;
                        (buf[at + 1] as u32, 2)
                    }
                    1 => {
                        need(4)?;
                        if buf[at + 1] != 0 {
                            p.anomalies |= Anomalies::NONZERO_PAD;
                        }
                        (le16(buf, at + 2) as u32, 4)
                    }
                    2 => {
                        need(6)?;
                        if buf[at + 1] != 0 {
                            p.anomalies |= Anomalies::NONZERO_PAD;
                        }
                        (le32(buf, at + 2), 6)
                    }
                    _ => return Err(err(PathErrorKind::Reserved)),
                };
                i = at + len;
                match ty {
                    0 | 1 | 4 => {
                        let orphan = p.tag.is_some() && p.class.is_none();
                        let after_member = p.member.is_some();
                        let (slot, r) = match ty {
                            0 => (&mut p.class, 1),
                            1 => (&mut p.instance, 2),
                            _ => (&mut p.attribute, 3),
                        };
                        if slot.is_some() {
                            return Err(err(PathErrorKind::Duplicate));
                        }
                        if r <= rank || (r > 1 && orphan) || after_member {
                            return Err(err(PathErrorKind::OutOfOrder));
                        }
                        *slot = Some(value);
                        rank = r;
                    }
                    3 => {
                        if p.connection_point.is_some() {
                            return Err(err(PathErrorKind::Duplicate));
                        }
                        p.connection_point = Some(value);
                    }
                    _ => {
                        // Member: an array element right after a symbol, else a member id.
                        if let Some(last) = p.tag.as_mut().and_then(|t| t.parts.last_mut()) {
                            if p.member.is_none() && rank == 0 {
                                last.elements.push(value);
                                continue;
                            }
                        }
                        if p.member.is_some() {
                            return Err(err(PathErrorKind::Duplicate));
                        }
                        p.member = Some(value);
                    }
                }
            }
            0b010 => {
                // Network segment: carried by Forward Open, never an address.
                p.anomalies |= Anomalies::NETWORK_SEGMENT;
                if b & 0x10 == 0 {
                    need(2)?;
                    i = at + 2;
                } else {
                    need(2)?;
                    let words = buf[at + 1] as usize;
                    need(2 + 2 * words)?;
                    i = at + 2 + 2 * words;
                }
            }
            0b100 => match b {
                0x80 => {
                    // Simple data segment.
                    need(2)?;
                    let words = buf[at + 1] as usize;
                    need(2 + 2 * words)?;
                    p.anomalies |= Anomalies::DATA_SEGMENT;
                    i = at + 2 + 2 * words;
                }
                0x91 => {
                    // ANSI extended symbol: a tag name part.
                    stage = Stage::Address;
                    need(2)?;
                    let n = buf[at + 1] as usize;
                    let padded = 2 + n + (n % 2);
                    need(padded)?;
                    let s = &buf[at + 2..at + 2 + n];
                    if !symbol_ok(s) {
                        return Err(err(PathErrorKind::BadSymbol));
                    }
                    if n % 2 == 1 && buf[at + 2 + n] != 0 {
                        p.anomalies |= Anomalies::NONZERO_PAD;
                    }
                    if rank > 0 || p.member.is_some() {
                        // A symbol after a logical address: instance addressing mixed with names.
                        p.anomalies |= Anomalies::MIXED_ADDRESSING;
                    }
                    // Only ASCII was accepted above, so this conversion cannot fail.
                    let name = s.iter().map(|&c| c as char).collect();
                    p.tag.get_or_insert_with(TagName::default).parts.push(TagPart { name, elements: Vec::new() });
                    i = at + padded;
                }
                _ => return Err(err(PathErrorKind::Unsupported)),
            },
            0b011 => return Err(err(PathErrorKind::Unsupported)),
            _ => return Err(err(PathErrorKind::Reserved)),
        }
    }
    if p.tag.is_some() && p.class.is_some() {
        p.anomalies |= Anomalies::MIXED_ADDRESSING;
    }
    Ok(p)
}
