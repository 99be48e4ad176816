//! Capture reading (replay stage 1): pcap and pcapng bytes in, link-layer frames out, from a buffer in
//! memory ([`CaptureReader`]) or any `std::io::Read` the caller opens ([`StreamReader`], bounded memory).
//!
//! Parsing of the container formats is left to `pcap-parser`; this module only walks the records, keeps
//! the pcapng interface table (link type, timestamp resolution and offset per interface) and turns every
//! timestamp into nanoseconds, so the replay's rate limits see the capture's own clock.
//!
//! ```text
//!  pcap:    | file header 24 | rec hdr 16 | frame | rec hdr 16 | frame | ...
//!  pcapng:  | SHB | IDB ... | EPB/SPB ... | (SHB | IDB ... | EPB ...)*      interfaces reset per section
//! ```

use pcap_parser::nom;
use pcap_parser::pcap::{parse_pcap_frame, parse_pcap_frame_be, parse_pcap_frame_modified};
use pcap_parser::pcapng::{parse_block_be, parse_block_le, parse_sectionheaderblock, Block};
use pcap_parser::{parse_pcap_header, PcapError};
use std::fmt;

/// Link-layer header types this reader hands on (tcpdump.org link type values).
pub mod linktype {
    /// BSD loopback: 4-byte address family in host order, then IP.
    pub const NULL: i32 = 0;
    /// Ethernet II, with or without 802.1Q tags.
    pub const ETHERNET: i32 = 1;
    /// Raw IP (v4 or v6 from the version nibble).
    pub const RAW: i32 = 101;
    /// OpenBSD loopback: 4-byte address family in network order, then IP.
    pub const LOOP: i32 = 108;
    /// Linux "cooked" capture v1 (`tcpdump -i any`).
    pub const LINUX_SLL: i32 = 113;
    /// Raw IPv4.
    pub const IPV4: i32 = 228;
    /// Raw IPv6.
    pub const IPV6: i32 = 229;
    /// Linux "cooked" capture v2.
    pub const LINUX_SLL2: i32 = 276;
}

/// One captured frame, borrowed from the capture buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frame<'a> {
    /// 1-based position in the capture, as Wireshark numbers frames.
    pub number: u64,
    /// Capture timestamp, nanoseconds since the Unix epoch (0 if before it).
    pub ts_ns: u64,
    /// Link-layer type of the interface that captured it.
    pub linktype: i32,
    /// The captured bytes (may be shorter than the frame on the wire).
    pub data: &'a [u8],
    /// The capture was cut short by the snap length.
    pub truncated: bool,
}

/// The container format, detected from the first bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Pcap,
    PcapNg,
}

/// Why a capture could not be read (further).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CaptureError {
    /// The first bytes are neither a pcap nor a pcapng header.
    NotACapture,
    /// The file ends inside a record or block header or body, at this byte offset.
    Truncated { offset: usize },
    /// A record or block is structurally wrong at this byte offset.
    Corrupt { offset: usize, what: &'static str },
    /// A pcapng packet names an interface no IDB described in its section.
    UnknownInterface { offset: usize, interface: u32 },
    /// Reading the input failed (not a damaged capture: a directory, a device error, ...).
    Read { offset: usize, kind: std::io::ErrorKind },
}

impl fmt::Display for CaptureError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CaptureError::NotACapture => write!(f, "not a pcap or pcapng capture"),
            CaptureError::Truncated { offset } => write!(f, "capture truncated at byte {offset}"),
            CaptureError::Corrupt { offset, what } => write!(f, "corrupt {what} at byte {offset}"),
            CaptureError::UnknownInterface { offset, interface } => {
                write!(f, "packet at byte {offset} names undeclared interface {interface}")
            }
            CaptureError::Read { offset, kind } => write!(f, "cannot read the capture at byte {offset}: {kind}"),
        }
    }
}

impl std::error::Error for CaptureError {}

#[derive(Debug, Clone, Copy)]
struct Interface {
    linktype: i32,
    /// Timestamp units per second.
    units_per_s: u64,
    /// Seconds added to every timestamp (pcapng `if_tsoffset`).
    offset_s: i64,
}

#[derive(Debug, Clone, Copy)]
enum PcapFlavour {
    Le,
    Be,
    Modified,
}

enum State {
    Pcap { flavour: PcapFlavour, linktype: i32, ns_per_unit: u64 },
    PcapNg { big_endian: bool, interfaces: Vec<Interface> },
}

/// The format state of a capture walk, independent of where its bytes are held: it reads one record
/// from the start of a window and says how many bytes it used, or that it needs more.
pub struct Walker {
    number: u64,
    state: State,
}

/// One step of a walk over a window of the capture.
#[derive(Debug)]
pub enum Step<'b> {
    /// A frame, and the bytes of the window its record used.
    Frame(Frame<'b>, usize),
    /// A record that carries no frame (pcapng section, interface, statistics blocks), and its size.
    Skip(usize),
    /// The window ends inside a record: more bytes are needed (or, at the end of the input, it is cut).
    NeedMore,
}

const PCAPNG_SHB_MAGIC: [u8; 4] = [0x0A, 0x0D, 0x0D, 0x0A];
/// Largest record accepted (a pcapng block length is a u32: never buffer 4 GiB for one).
pub const MAX_RECORD: usize = 16 << 20;

fn units_to_ns(ts: u64, units_per_s: u64, offset_s: i64) -> u64 {
    let units_per_s = units_per_s.max(1);
    let secs = (ts / units_per_s) as i128 + offset_s as i128;
    let frac = (ts % units_per_s) as u128 * 1_000_000_000 / units_per_s as u128;
    let ns = secs * 1_000_000_000 + frac as i128;
    ns.clamp(0, u64::MAX as i128) as u64
}

fn step_error<'b>(e: nom::Err<PcapError<&[u8]>>, offset: usize, what: &'static str) -> Result<Step<'b>, CaptureError> {
    match e {
        nom::Err::Incomplete(_) => Ok(Step::NeedMore),
        _ => Err(CaptureError::Corrupt { offset, what }),
    }
}

impl Walker {
    /// Reads the file header (pcap) or recognises the first section header (pcapng, read again as the
    /// first record). Returns the walker and the bytes of the file header; `Ok(None)` when `head` is too
    /// short to tell.
    pub fn start(head: &[u8]) -> Result<Option<(Walker, usize)>, CaptureError> {
        if head.len() >= 4 && head[..4] == PCAPNG_SHB_MAGIC {
            let shb = match parse_sectionheaderblock(head) {
                Ok((_, shb)) => shb,
                Err(nom::Err::Incomplete(_)) => return Ok(None),
                Err(_) => return Err(CaptureError::NotACapture),
            };
            let state = State::PcapNg { big_endian: shb.big_endian(), interfaces: Vec::new() };
            return Ok(Some((Walker { number: 0, state }, 0)));
        }
        let (rest, header) = match parse_pcap_header(head) {
            Ok(v) => v,
            Err(nom::Err::Incomplete(_)) if head.len() < 4 => return Ok(None),
            Err(nom::Err::Incomplete(_)) => {
                // The magic is known once 4 bytes are in: anything else is not a capture.
                let magic = u32::from_le_bytes([head[0], head[1], head[2], head[3]]);
                let known = [0xa1b2_c3d4, 0xa1b2_3c4d, 0xa1b2_cd34, 0xd4c3_b2a1, 0x4d3c_b2a1];
                return if known.contains(&magic) { Ok(None) } else { Err(CaptureError::NotACapture) };
            }
            Err(_) => return Err(CaptureError::NotACapture),
        };
        let flavour = if header.is_modified_format() {
            PcapFlavour::Modified
        } else if header.is_bigendian() {
            PcapFlavour::Be
        } else {
            PcapFlavour::Le
        };
        // Legacy pcap ticks are microseconds or nanoseconds: a multiplication per frame, no division.
        let ns_per_unit = if header.is_nanosecond_precision() { 1 } else { 1_000 };
        let state = State::Pcap { flavour, linktype: header.network.0, ns_per_unit };
        Ok(Some((Walker { number: 0, state }, head.len() - rest.len())))
    }

    /// The container format.
    pub fn format(&self) -> Format {
        match self.state {
            State::Pcap { .. } => Format::Pcap,
            State::PcapNg { .. } => Format::PcapNg,
        }
    }

    /// Size of the record at the start of `window`, from its header alone; `None` when the header is
    /// not all there yet.
    pub fn record_len(&self, window: &[u8]) -> Option<usize> {
        let u32_at = |i: usize, big: bool| -> Option<usize> {
            let b: [u8; 4] = window.get(i..i + 4)?.try_into().ok()?;
            Some(if big { u32::from_be_bytes(b) } else { u32::from_le_bytes(b) } as usize)
        };
        match &self.state {
            State::Pcap { flavour, .. } => {
                let (header, big) = match flavour {
                    PcapFlavour::Le => (16, false),
                    PcapFlavour::Be => (16, true),
                    PcapFlavour::Modified => (24, false),
                };
                Some(header + u32_at(8, big)?)
            }
            State::PcapNg { big_endian, .. } => {
                if window.len() >= 4 && window[..4] == PCAPNG_SHB_MAGIC {
                    // A section header's length is in the byte order its own byte-order magic gives.
                    let bom = u32_at(8, false)?;
                    return u32_at(4, bom != 0x1A2B_3C4D);
                }
                u32_at(4, *big_endian)
            }
        }
    }

    /// Whether the (complete) record at the start of `window` holds a frame.
    pub fn is_frame_record(&self, window: &[u8]) -> bool {
        match &self.state {
            State::Pcap { .. } => true,
            State::PcapNg { big_endian, .. } => {
                let Some(b) = window.get(..4).and_then(|b| <[u8; 4]>::try_from(b).ok()) else { return false };
                let block_type = if *big_endian { u32::from_be_bytes(b) } else { u32::from_le_bytes(b) };
                // Enhanced packet block (6), simple packet block (3).
                block_type == 6 || block_type == 3
            }
        }
    }

    /// Reads the record at the start of `window`; `offset` is the window's position in the capture
    /// (for error messages).
    pub fn step<'b>(&mut self, window: &'b [u8], offset: usize) -> Result<Step<'b>, CaptureError> {
        match self.state {
            State::Pcap { flavour, linktype, ns_per_unit } => {
                let parsed = match flavour {
                    PcapFlavour::Le => parse_pcap_frame(window),
                    PcapFlavour::Be => parse_pcap_frame_be(window),
                    PcapFlavour::Modified => parse_pcap_frame_modified(window),
                };
                let (rest, block) = match parsed {
                    Ok(v) => v,
                    Err(e) => return step_error(e, offset, "pcap record"),
                };
                self.number += 1;
                let ts_ns = block.ts_sec as u64 * 1_000_000_000 + block.ts_usec as u64 * ns_per_unit;
                let frame = Frame {
                    number: self.number,
                    ts_ns,
                    linktype,
                    data: block.data,
                    truncated: block.origlen > block.caplen,
                };
                Ok(Step::Frame(frame, window.len() - rest.len()))
            }
            State::PcapNg { .. } => self.step_pcapng(window, offset),
        }
    }

    fn step_pcapng<'b>(&mut self, window: &'b [u8], offset: usize) -> Result<Step<'b>, CaptureError> {
        // A section header carries its own byte order; every other block uses the section's.
        let parsed = if window.len() >= 4 && window[..4] == PCAPNG_SHB_MAGIC {
            parse_sectionheaderblock(window).map(|(rest, shb)| (rest, Block::SectionHeader(shb)))
        } else {
            let State::PcapNg { big_endian, .. } = self.state else { return Ok(Step::Skip(window.len())) };
            if big_endian {
                parse_block_be(window)
            } else {
                parse_block_le(window)
            }
        };
        let (rest, block) = match parsed {
            Ok(v) => v,
            Err(e) => return step_error(e, offset, "pcapng block"),
        };
        let used = window.len() - rest.len();
        let State::PcapNg { big_endian, interfaces } = &mut self.state else { return Ok(Step::Skip(used)) };
        match block {
            Block::SectionHeader(shb) => {
                *big_endian = shb.big_endian();
                interfaces.clear();
            }
            Block::InterfaceDescription(idb) => {
                let units_per_s =
                    idb.ts_resolution().ok_or(CaptureError::Corrupt { offset, what: "pcapng if_tsresol" })?;
                interfaces.push(Interface { linktype: idb.linktype.0, units_per_s, offset_s: idb.ts_offset() });
            }
            Block::EnhancedPacket(epb) => {
                let iface = *interfaces
                    .get(epb.if_id as usize)
                    .ok_or(CaptureError::UnknownInterface { offset, interface: epb.if_id })?;
                let ts = (epb.ts_high as u64) << 32 | epb.ts_low as u64;
                let data = &epb.data[..(epb.caplen as usize).min(epb.data.len())];
                self.number += 1;
                let frame = Frame {
                    number: self.number,
                    ts_ns: units_to_ns(ts, iface.units_per_s, iface.offset_s),
                    linktype: iface.linktype,
                    data,
                    truncated: epb.origlen > epb.caplen,
                };
                return Ok(Step::Frame(frame, used));
            }
            Block::SimplePacket(spb) => {
                // SPBs belong to interface 0 and carry no timestamp.
                let iface = *interfaces.first().ok_or(CaptureError::UnknownInterface { offset, interface: 0 })?;
                self.number += 1;
                let frame = Frame {
                    number: self.number,
                    ts_ns: 0,
                    linktype: iface.linktype,
                    data: spb.data,
                    truncated: spb.origlen as usize > spb.data.len(),
                };
                return Ok(Step::Frame(frame, used));
            }
            _ => {}
        }
        Ok(Step::Skip(used))
    }
}

/// Walks a capture held in memory, frame by frame, without copying packet data.
pub struct CaptureReader<'a> {
    buf: &'a [u8],
    pos: usize,
    walker: Walker,
    failed: bool,
}

impl<'a> CaptureReader<'a> {
    /// Reads the file header (pcap) or first section header (pcapng).
    pub fn new(buf: &'a [u8]) -> Result<Self, CaptureError> {
        match Walker::start(buf)? {
            Some((walker, pos)) => Ok(CaptureReader { buf, pos, walker, failed: false }),
            None if buf.len() < 4 => Err(CaptureError::NotACapture),
            None => Err(CaptureError::Truncated { offset: buf.len() }),
        }
    }

    /// The container format.
    pub fn format(&self) -> Format {
        self.walker.format()
    }

    /// Bytes of the capture walked so far (for progress).
    pub fn position(&self) -> usize {
        self.pos
    }

    /// The next frame, `None` at the end, or the error that stops the walk (returned once).
    pub fn next_frame(&mut self) -> Option<Result<Frame<'a>, CaptureError>> {
        while !self.failed && self.pos < self.buf.len() {
            let offset = self.pos;
            match self.walker.step(&self.buf[offset..], offset) {
                Ok(Step::Frame(frame, used)) => {
                    self.pos += used;
                    return Some(Ok(frame));
                }
                Ok(Step::Skip(used)) => self.pos += used,
                Ok(Step::NeedMore) => {
                    self.failed = true;
                    return Some(Err(CaptureError::Truncated { offset }));
                }
                Err(e) => {
                    self.failed = true;
                    return Some(Err(e));
                }
            }
        }
        None
    }
}

/// Walks a capture read from any `std::io::Read`, holding only a window of it (a few megabytes, or
/// one record when a record is larger), so a capture of any size replays in bounded memory.
pub struct StreamReader<R: std::io::Read> {
    input: R,
    buf: Vec<u8>,
    /// Start of unread bytes in `buf`.
    start: usize,
    /// End of valid bytes in `buf`.
    end: usize,
    /// Capture offset of `buf[0]`.
    base: usize,
    eof: bool,
    walker: Option<Walker>,
    failed: bool,
}

/// Bytes read from the input at a time.
pub const STREAM_WINDOW: usize = 4 << 20;

impl<R: std::io::Read> StreamReader<R> {
    pub fn new(input: R) -> Self {
        StreamReader {
            input,
            buf: vec![0; STREAM_WINDOW],
            start: 0,
            end: 0,
            base: 0,
            eof: false,
            walker: None,
            failed: false,
        }
    }

    /// Bytes of the capture walked so far (for progress).
    pub fn position(&self) -> usize {
        self.base + self.start
    }

    /// The container format, once the header has been read.
    pub fn format(&self) -> Option<Format> {
        self.walker.as_ref().map(Walker::format)
    }

    /// Moves unread bytes to the front and reads more; grows the window for a record larger than it.
    fn refill(&mut self) -> Result<(), CaptureError> {
        if self.start > 0 {
            self.buf.copy_within(self.start..self.end, 0);
            self.base += self.start;
            self.end -= self.start;
            self.start = 0;
        }
        if self.end == self.buf.len() {
            if self.buf.len() >= MAX_RECORD {
                return Err(CaptureError::Corrupt { offset: self.base, what: "record larger than 16 MiB" });
            }
            self.buf.resize((self.buf.len() * 2).min(MAX_RECORD), 0);
        }
        loop {
            match self.input.read(&mut self.buf[self.end..]) {
                Ok(0) => {
                    self.eof = true;
                    return Ok(());
                }
                Ok(n) => {
                    self.end += n;
                    return Ok(());
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(CaptureError::Read { offset: self.base + self.end, kind: e.kind() }),
            }
        }
    }

    /// The next frame, `None` at the end, or the error that stops the walk (returned once).
    pub fn next_frame(&mut self) -> Option<Result<Frame<'_>, CaptureError>> {
        if self.failed {
            return None;
        }
        match self.fill_frame_record() {
            Ok(true) => {}
            Ok(false) => return None,
            Err(e) => {
                self.failed = true;
                return Some(Err(e));
            }
        }
        let offset = self.base + self.start;
        let walker = self.walker.as_mut()?;
        match walker.step(&self.buf[self.start..self.end], offset) {
            Ok(Step::Frame(frame, used)) => {
                self.start += used;
                Some(Ok(frame))
            }
            Ok(_) => {
                self.failed = true;
                Some(Err(CaptureError::Corrupt { offset, what: "record length" }))
            }
            Err(e) => {
                self.failed = true;
                Some(Err(e))
            }
        }
    }

    /// Reads until a whole frame record sits at `start`, walking past records without frames.
    /// Returns false at the clean end of the input.
    fn fill_frame_record(&mut self) -> Result<bool, CaptureError> {
        loop {
            let offset = self.base + self.start;
            let window = &self.buf[self.start..self.end];
            let Some(walker) = self.walker.as_mut() else {
                match Walker::start(window)? {
                    Some((walker, header)) => {
                        self.walker = Some(walker);
                        self.start += header;
                    }
                    None if self.eof && window.len() < 4 => return Err(CaptureError::NotACapture),
                    None if self.eof => return Err(CaptureError::Truncated { offset: self.base + self.end }),
                    None => self.refill()?,
                }
                continue;
            };
            if window.is_empty() && self.eof {
                return Ok(false);
            }
            match walker.record_len(window) {
                Some(len) if len > MAX_RECORD => {
                    return Err(CaptureError::Corrupt { offset, what: "record larger than 16 MiB" })
                }
                Some(len) if len <= window.len() => {
                    if walker.is_frame_record(window) {
                        return Ok(true);
                    }
                    match walker.step(&window[..len], offset)? {
                        Step::Skip(used) | Step::Frame(_, used) => self.start += used,
                        Step::NeedMore => return Err(CaptureError::Corrupt { offset, what: "record length" }),
                    }
                }
                _ if self.eof => return Err(CaptureError::Truncated { offset }),
                _ => self.refill()?,
            }
        }
    }
}

impl<'a> Iterator for CaptureReader<'a> {
    type Item = Result<Frame<'a>, CaptureError>;

    fn next(&mut self) -> Option<Self::Item> {
        self.next_frame()
    }
}
