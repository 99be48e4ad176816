//! Replay driver (replay stage 4): capture frames in, per-request decisions and counters out.
//!
//! ```text
//!  frame --decode--> TCP segment --role by server port--> flow (client, server)
//!        --reassembly per direction--> bytes --MBAP split--> ADU --engine decide--> counters
//! ```
//!
//! Requests and replies are told apart by the server side of the flow, never by who spoke first: a
//! flow whose first captured segment is a reply still has its requests decided as requests. The server
//! side is the port 502 or 44818 or any device port the policy names (see [`Targets::role`]). The server
//! port says the protocol: 44818 and the devices' `enip` ports carry EtherNet/IP, whose messages are cut
//! with `enip::split` and decided with `decide_enip` through a per-flow session (`enip_flow`); every
//! other server port carries Modbus/TCP. EtherNet/IP over TLS (2221) cannot be read and is not a server
//! port.
//!
//! A direction whose bytes do not frame (as MBAP, or as encapsulation messages) is counted as an invalid
//! stream and skipped; when the capture starts mid-connection, or after bytes were lost, the splitter
//! first re-aligns on a segment start (see [`AduStream`]).

use super::enip_flow::{self, CipCounts, DecideEnip, EnipFlow};
use super::pcap::{CaptureError, CaptureReader, Format, Frame, StreamReader};
use super::reassembly::{Chunk, Direction, DirectionStats, Syn, Tag};
use super::segment::{decode, Decoded, Segment};
use crate::enip::encap::{split as enip_split, Command, Header, Split as EnipSplit};
use crate::modbus::frame::{split, Split, SplitInvalid};
use crate::policy::CipDecision;
use std::borrow::Cow;
use std::collections::HashMap;
use std::net::IpAddr;

/// Index meaning "no principal / no device": the engine treats it as unknown.
pub const UNKNOWN: u32 = u32::MAX;
/// The registered Modbus/TCP port: always a server port.
pub const MODBUS_PORT: u16 = 502;
/// The registered EtherNet/IP port: always a server port.
pub const ENIP_PORT: u16 = 44818;

/// What the engine said about one request, reduced to what replay counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    /// `allow`(0), `deny`(1), `would_deny`(2) (docs/engine.md section 5).
    pub verdict: u8,
    /// Reason code (docs/engine.md section 5).
    pub reason: u8,
    /// Malformed kind code, 0 when well formed.
    pub malformed: u8,
    /// Index of the deciding rule in the IR, if any.
    pub rule: Option<u32>,
}

pub const VERDICT_ALLOW: u8 = 0;
pub const VERDICT_DENY: u8 = 1;
pub const VERDICT_WOULD_DENY: u8 = 2;
/// Reason code of a malformed request.
pub const REASON_MALFORMED: u8 = 2;
/// Reason codes fit below this bound.
pub const REASONS: usize = 16;

/// The decision the replay asks for every request: the engine, behind a seam so the driver does not
/// depend on how the engine keeps its rate state.
pub trait Decide: DecideEnip {
    fn decide(&mut self, principal: u32, device: u32, adu: &[u8], now_ns: u64) -> Outcome;
}

/// An IP network in CIDR form.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    pub addr: IpAddr,
    pub prefix: u8,
}

impl Cidr {
    /// Parses `a.b.c.d/n`, `x::y/n` or a bare address (a host).
    pub fn parse(text: &str) -> Option<Cidr> {
        let (addr, prefix) = match text.split_once('/') {
            Some((a, p)) => (a.trim().parse::<IpAddr>().ok()?, Some(p.trim().parse::<u8>().ok()?)),
            None => (text.trim().parse::<IpAddr>().ok()?, None),
        };
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = prefix.unwrap_or(max);
        (prefix <= max).then_some(Cidr { addr, prefix })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = if self.prefix == 0 { 0 } else { u32::MAX << (32 - self.prefix as u32) };
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = if self.prefix == 0 { 0 } else { u128::MAX << (128 - self.prefix as u32) };
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

/// Where a device listens, as the policy names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceAddr {
    /// `None` when the policy's host is not an IP address (a name cannot be matched in a capture).
    pub host: Option<IpAddr>,
    pub port: u16,
}

/// What a flow speaks, by its server port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Modbus,
    Enip,
}

fn set_port(bits: &mut [u64], port: u16) {
    bits[port as usize / 64] |= 1 << (port % 64);
}

fn has_port(bits: &[u64], port: u16) -> bool {
    bits[port as usize / 64] & (1 << (port % 64)) != 0
}

/// The device an address stands for among `list` (device index -> its address for one protocol, `None`
/// when the device does not speak it): the device with this host and port; else the only one with this
/// port; else the only one speaking the protocol at all; else none.
fn pick(list: &[Option<DeviceAddr>], server: IpAddr, port: u16) -> u32 {
    if let Some(i) = list.iter().position(|d| d.as_ref().is_some_and(|d| d.host == Some(server) && d.port == port)) {
        return i as u32;
    }
    let mut same_port = list.iter().enumerate().filter(|(_, d)| d.as_ref().is_some_and(|d| d.port == port));
    if let (Some((i, _)), None) = (same_port.next(), same_port.next()) {
        return i as u32;
    }
    let mut speaking = list.iter().enumerate().filter(|(_, d)| d.is_some());
    if let (Some((i, _)), None) = (speaking.next(), speaking.next()) {
        return i as u32;
    }
    UNKNOWN
}

/// How flows are mapped to the policy's principals and devices.
#[derive(Debug, Clone)]
pub struct Targets {
    /// (network, principal index), most specific first; ties keep policy order.
    sources: Vec<(Cidr, u32)>,
    /// Device index -> its Modbus/TCP address (`None`: it speaks only EtherNet/IP).
    devices: Vec<Option<DeviceAddr>>,
    /// Device index -> its EtherNet/IP address.
    enip_devices: Vec<Option<DeviceAddr>>,
    /// Bitset over all 65536 ports.
    server_ports: Vec<u64>,
    /// The server ports that carry EtherNet/IP.
    enip_ports: Vec<u64>,
    principal_override: Option<u32>,
    device_override: Option<u32>,
}

impl Targets {
    /// `sources[i]` are principal i's source networks; `devices[i]` is device i's address.
    pub fn new(sources: &[Vec<Cidr>], devices: Vec<DeviceAddr>) -> Targets {
        let mut by_prefix: Vec<(Cidr, u32)> =
            sources.iter().enumerate().flat_map(|(i, nets)| nets.iter().map(move |c| (*c, i as u32))).collect();
        // Stable: equal prefixes keep the policy's order, so the first principal listed wins a tie.
        by_prefix.sort_by_key(|(net, _)| std::cmp::Reverse(net.prefix));
        let mut server_ports = vec![0u64; 1024];
        for port in [MODBUS_PORT, ENIP_PORT].into_iter().chain(devices.iter().map(|d| d.port)) {
            set_port(&mut server_ports, port);
        }
        let mut enip_ports = vec![0u64; 1024];
        set_port(&mut enip_ports, ENIP_PORT);
        let count = devices.len();
        Targets {
            sources: by_prefix,
            devices: devices.into_iter().map(Some).collect(),
            enip_devices: vec![None; count],
            server_ports,
            enip_ports,
            principal_override: None,
            device_override: None,
        }
    }

    /// Which devices speak which protocol where: `modbus[i]` / `enip[i]` are device i's Modbus/TCP and
    /// EtherNet/IP addresses (`None` when it does not speak that protocol).
    pub fn with_protocols(mut self, modbus: Vec<Option<DeviceAddr>>, enip: Vec<Option<DeviceAddr>>) -> Targets {
        let mut server_ports = vec![0u64; 1024];
        let mut enip_ports = vec![0u64; 1024];
        set_port(&mut server_ports, MODBUS_PORT);
        set_port(&mut server_ports, ENIP_PORT);
        set_port(&mut enip_ports, ENIP_PORT);
        for d in modbus.iter().flatten() {
            set_port(&mut server_ports, d.port);
        }
        for d in enip.iter().flatten() {
            set_port(&mut server_ports, d.port);
            set_port(&mut enip_ports, d.port);
        }
        self.devices = modbus;
        self.enip_devices = enip;
        self.server_ports = server_ports;
        self.enip_ports = enip_ports;
        self
    }

    /// Every flow is decided as this principal (the `--principal` option).
    pub fn with_principal(mut self, principal: u32) -> Targets {
        self.principal_override = Some(principal);
        self
    }

    /// Every flow is decided against this device (the `--device` option).
    pub fn with_device(mut self, device: u32) -> Targets {
        self.device_override = Some(device);
        self
    }

    pub fn is_server_port(&self, port: u16) -> bool {
        has_port(&self.server_ports, port)
    }

    /// What a flow to `server`:`port` speaks: EtherNet/IP when a device's `enip` names that address, or
    /// the port is 44818 or a device's EtherNet/IP port and no device's Modbus/TCP address is this one.
    pub fn protocol(&self, server: IpAddr, port: u16) -> Protocol {
        let names =
            |list: &[Option<DeviceAddr>]| list.iter().flatten().any(|d| d.host == Some(server) && d.port == port);
        if names(&self.enip_devices) {
            return Protocol::Enip;
        }
        if has_port(&self.enip_ports, port) && !names(&self.devices) {
            return Protocol::Enip;
        }
        Protocol::Modbus
    }

    /// The principal of a client address: the most specific source network holding it.
    pub fn principal(&self, client: IpAddr) -> u32 {
        if let Some(p) = self.principal_override {
            return p;
        }
        self.sources.iter().find(|(net, _)| net.contains(client)).map_or(UNKNOWN, |(_, i)| *i)
    }

    /// The Modbus/TCP device a server address stands for, in this order: the device with this host and
    /// port; else the only device with this port; else the policy's only Modbus/TCP device; else none
    /// (unknown).
    pub fn device(&self, server: IpAddr, port: u16) -> u32 {
        self.device_for(Protocol::Modbus, server, port)
    }

    /// As [`Targets::device`], among the devices speaking `protocol` (their `enip` host and port for
    /// EtherNet/IP).
    pub fn device_for(&self, protocol: Protocol, server: IpAddr, port: u16) -> u32 {
        if let Some(d) = self.device_override {
            return d;
        }
        match protocol {
            Protocol::Modbus => pick(&self.devices, server, port),
            Protocol::Enip => pick(&self.enip_devices, server, port),
        }
    }

    /// Whether a segment travels client to server (`Some(true)`), server to client (`Some(false)`),
    /// or belongs to no Modbus flow (`None`). The server side is the one on a server port; when both
    /// ports are server ports, the side whose address and port a device names; then the receiver of
    /// a bare SYN; else the destination.
    pub fn role(&self, seg: &Segment<'_>) -> Option<bool> {
        let dst_server = self.is_server_port(seg.dst_port);
        let src_server = self.is_server_port(seg.src_port);
        match (src_server, dst_server) {
            (false, false) => None,
            (false, true) => Some(true),
            (true, false) => Some(false),
            (true, true) => {
                let named = |ip: IpAddr, port: u16| {
                    self.devices
                        .iter()
                        .chain(&self.enip_devices)
                        .flatten()
                        .any(|d| d.host == Some(ip) && d.port == port)
                };
                match (named(seg.src, seg.src_port), named(seg.dst, seg.dst_port)) {
                    (false, true) => Some(true),
                    (true, false) => Some(false),
                    _ if seg.flags.syn && seg.flags.ack => Some(false),
                    _ => Some(true),
                }
            }
        }
    }
}

/// Why a direction's bytes are not Modbus/TCP (or, on an EtherNet/IP port, not EtherNet/IP).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamInvalid {
    /// MBAP protocol identifier not 0.
    ProtocolId,
    /// MBAP length outside 2..=254; encapsulation length beyond 65511.
    Length,
    /// The direction carried bytes, none of which ever framed as an ADU.
    NeverFramed,
}

impl StreamInvalid {
    pub const fn name(self) -> &'static str {
        match self {
            StreamInvalid::ProtocolId => "protocol_id",
            StreamInvalid::Length => "length",
            StreamInvalid::NeverFramed => "never_framed",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Alignment {
    /// The stream's start (SYN) was seen, or the framing has been confirmed: ADU boundaries are known.
    Known,
    /// Started mid-connection or just after lost bytes: the next segment start is tried as an ADU start.
    Guess,
}

/// Splits one direction's byte stream into ADUs (Modbus/TCP) or encapsulation messages (EtherNet/IP).
///
/// With the stream's start known, the first bytes that do not frame make the whole direction invalid:
/// a Modbus/TCP peer cannot resynchronise either. When the start is a guess (capture started
/// mid-connection, or bytes were lost), a segment that does not start with an MBAP header is dropped
/// and the next segment start is tried; the framing counts as confirmed once a segment ends exactly on
/// an ADU boundary. An EtherNet/IP length field says little, so a guessed start must also read as a
/// plausible header (a known command, options 0).
#[derive(Debug)]
pub struct AduStream {
    framing: Protocol,
    carry: Vec<u8>,
    alignment: Alignment,
    invalid: Option<StreamInvalid>,
    /// ADUs split from this direction.
    pub adus: u64,
    /// Bytes thrown away while re-aligning after a guess.
    pub resync_dropped: u64,
    /// Bytes of ADUs cut short by a hole.
    pub partial_lost: u64,
    /// Bytes skipped after the direction was found invalid.
    pub skipped: u64,
}

impl AduStream {
    /// `synced`: the stream's first byte is known to start an ADU (its SYN was seen).
    pub fn new(synced: bool) -> AduStream {
        AduStream::framing(Protocol::Modbus, synced)
    }

    /// As [`AduStream::new`], for a stream of `framing`'s messages.
    pub fn framing(framing: Protocol, synced: bool) -> AduStream {
        AduStream {
            framing,
            carry: Vec::new(),
            alignment: if synced { Alignment::Known } else { Alignment::Guess },
            invalid: None,
            adus: 0,
            resync_dropped: 0,
            partial_lost: 0,
            skipped: 0,
        }
    }

    /// Why the direction is not Modbus, once known.
    pub fn invalid(&self) -> Option<StreamInvalid> {
        self.invalid
    }

    /// Bytes held for an ADU not yet complete.
    pub fn carried(&self) -> usize {
        self.carry.len()
    }

    /// Feeds one chunk of the stream; every complete ADU goes to `on_adu`. Returns the reason when
    /// this chunk made the direction invalid.
    pub fn feed<F: FnMut(&[u8])>(&mut self, chunk: Chunk<'_>, on_adu: &mut F) -> Option<StreamInvalid> {
        let data = match chunk {
            Chunk::Gap => {
                self.partial_lost += self.carry.len() as u64;
                self.carry.clear();
                if self.invalid.is_none() {
                    self.alignment = Alignment::Guess;
                }
                return None;
            }
            Chunk::Data(data, _) => data,
        };
        if self.invalid.is_some() {
            self.skipped += data.len() as u64;
            return None;
        }
        if self.carry.is_empty() {
            let (found, used) = self.split_all(data, on_adu);
            self.carry.extend_from_slice(&data[used..]);
            return found;
        }
        // An ADU was cut by a segment boundary: join the held head with the new bytes.
        let mut joined = std::mem::take(&mut self.carry);
        joined.extend_from_slice(data);
        let (found, used) = self.split_all(&joined, on_adu);
        joined.drain(..used);
        self.carry = joined;
        found
    }

    /// Splits off every complete ADU; returns what made the direction invalid (if anything) and how
    /// many bytes are done with (the rest is the head of an incomplete ADU).
    fn split_all<F: FnMut(&[u8])>(&mut self, input: &[u8], on_adu: &mut F) -> (Option<StreamInvalid>, usize) {
        let mut used = 0;
        loop {
            let rest = &input[used..];
            match self.cut(rest) {
                Split::Complete { used: n } => {
                    self.adus += 1;
                    on_adu(&rest[..n]);
                    used += n;
                    if used == input.len() {
                        // Ends on an ADU boundary: the framing is confirmed.
                        self.alignment = Alignment::Known;
                        return (None, used);
                    }
                }
                Split::Incomplete { .. } => return (None, used),
                Split::Invalid(why) => {
                    if self.alignment == Alignment::Guess {
                        self.resync_dropped += rest.len() as u64;
                        return (None, input.len());
                    }
                    let reason = match why {
                        SplitInvalid::ProtocolId => StreamInvalid::ProtocolId,
                        SplitInvalid::Length => StreamInvalid::Length,
                    };
                    self.skipped += rest.len() as u64;
                    self.invalid = Some(reason);
                    return (Some(reason), input.len());
                }
            }
        }
    }

    /// The first message of `rest`, in the Modbus splitter's terms.
    fn cut(&self, rest: &[u8]) -> Split {
        if self.framing == Protocol::Modbus {
            return split(rest);
        }
        if self.alignment == Alignment::Guess {
            if let Some(h) = Header::read(rest) {
                if h.options != 0 || Command::from_u16(h.command).is_none() {
                    // Only the fact counts while guessing: the bytes are dropped, not reported.
                    return Split::Invalid(SplitInvalid::ProtocolId);
                }
            }
        }
        match enip_split(rest) {
            EnipSplit::Complete { used } => Split::Complete { used },
            EnipSplit::Incomplete { needed } => Split::Incomplete { needed },
            EnipSplit::Invalid(_) => Split::Invalid(SplitInvalid::Length),
        }
    }

    /// At the end of the direction: a direction that carried bytes but never framed one ADU is not Modbus.
    pub fn finish(&mut self) -> Option<StreamInvalid> {
        if self.invalid.is_none() && self.adus == 0 && (self.resync_dropped > 0 || !self.carry.is_empty()) {
            self.invalid = Some(StreamInvalid::NeverFramed);
            return self.invalid;
        }
        None
    }
}

/// Anomalies seen while reading, decoding and reassembling.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Anomalies {
    /// Frames cut short by the capture's snap length.
    pub truncated_frames: u64,
    /// Frames whose headers could not be decoded (lengths beyond the captured bytes, bad header length).
    pub undecodable_frames: u64,
    /// IP fragments (not reassembled).
    pub ip_fragments: u64,
    /// Frames of a link type replay does not decode.
    pub unsupported_link: u64,
    /// TCP segments on no server port (not Modbus).
    pub other_tcp_segments: u64,
    /// Segments that arrived ahead of the expected sequence number.
    pub out_of_order: u64,
    /// Segments that brought nothing new.
    pub retransmitted: u64,
    /// Segments that partly overlapped data already seen.
    pub overlapping: u64,
    /// Holes in a direction that never filled.
    pub gaps: u64,
    /// Bytes lost in those holes.
    pub gap_bytes: u64,
    /// Bytes thrown away while re-aligning a stream that started mid-connection or after a hole.
    pub resync_dropped_bytes: u64,
    /// Bytes of ADUs cut short by a hole.
    pub partial_adu_bytes: u64,
    /// Bytes left over, not a whole ADU, when a direction ended.
    pub trailing_bytes: u64,
    /// Segments with payload on a connection already closed by RST or FIN.
    pub data_after_close: u64,
    /// Flows that started without a SYN (capture started mid-connection).
    pub midstream_flows: u64,
}

/// One denied request, as the report lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denial {
    /// Frame that completed the request (Wireshark's numbering, from 1).
    pub frame: u64,
    pub ts_ns: u64,
    pub client: IpAddr,
    pub client_port: u16,
    pub server: IpAddr,
    pub server_port: u16,
    pub principal: u32,
    pub device: u32,
    pub unit: u8,
    pub function: u8,
    pub outcome: Outcome,
}

/// One direction found not to be Modbus/TCP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidStream {
    /// Frame at which it was found (for a never-framed direction: its last frame).
    pub frame: u64,
    pub client: IpAddr,
    pub client_port: u16,
    pub server: IpAddr,
    pub server_port: u16,
    /// True for the client-to-server direction.
    pub requests: bool,
    pub reason: StreamInvalid,
}

/// Everything replay counts.
#[derive(Debug, Clone)]
pub struct Report {
    pub frames: u64,
    pub tcp_segments: u64,
    /// Connections (a new SYN on the same addresses and ports starts another).
    pub flows: u64,
    pub requests: u64,
    pub allowed: u64,
    pub denied: u64,
    pub would_deny: u64,
    /// Requests denied as malformed.
    pub malformed: u64,
    pub replies: u64,
    /// Replies with the exception bit set.
    pub exception_replies: u64,
    pub by_reason: [u64; REASONS],
    pub by_function: [u64; 256],
    /// Requests each rule allowed, by IR index (a rule that allowed nothing was not needed here).
    pub by_rule: Vec<u64>,
    /// Requests denied (or, in monitor mode, would be) with each rule named as the closest match.
    pub by_rule_denied: Vec<u64>,
    /// Request counts by unit id.
    pub by_unit: [u64; 256],
    /// Directions found not to be Modbus/TCP (all of them counted, the first `max_listed` listed).
    pub invalid_streams: u64,
    pub invalid_list: Vec<InvalidStream>,
    /// The first denials, in capture order.
    pub denials: Vec<Denial>,
    pub anomalies: Anomalies,
    /// The capture's container format.
    pub format: Option<Format>,
    /// Capture bytes walked.
    pub bytes_read: u64,
    /// Why the capture could not be read to its end, if it could not.
    pub capture_error: Option<CaptureError>,
    /// The EtherNet/IP half: requests, replies and decisions on EtherNet/IP flows.
    pub cip: CipCounts,
    /// The first EtherNet/IP denials, in capture order.
    pub cip_denials: Vec<CipDenial>,
}

/// One refused EtherNet/IP message, as the report lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CipDenial {
    /// Frame that completed the message.
    pub frame: u64,
    pub ts_ns: u64,
    pub client: IpAddr,
    pub client_port: u16,
    pub server: IpAddr,
    pub server_port: u16,
    pub principal: u32,
    pub device: u32,
    /// Service of the denied leaf, when the message carried CIP that flattened.
    pub leaf_service: Option<Cow<'static, str>>,
    /// Everything the engine said (reason, rule, kind, target, route, leaf index).
    pub decision: CipDecision,
}

impl Report {
    fn new(rules: usize) -> Report {
        Report {
            frames: 0,
            tcp_segments: 0,
            flows: 0,
            requests: 0,
            allowed: 0,
            denied: 0,
            would_deny: 0,
            malformed: 0,
            replies: 0,
            exception_replies: 0,
            by_reason: [0; REASONS],
            by_function: [0; 256],
            by_rule: vec![0; rules],
            by_rule_denied: vec![0; rules],
            by_unit: [0; 256],
            invalid_streams: 0,
            invalid_list: Vec::new(),
            denials: Vec::new(),
            anomalies: Anomalies::default(),
            format: None,
            bytes_read: 0,
            capture_error: None,
            cip: CipCounts::new(rules),
            cip_denials: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FlowKey {
    client: IpAddr,
    client_port: u16,
    server: IpAddr,
    server_port: u16,
}

fn octets(ip: IpAddr) -> [u8; 16] {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => v6.octets(),
    }
}

impl std::hash::Hash for FlowKey {
    /// One write of the packed four-tuple: the per-segment flow lookup is a hot path, and the keyed
    /// (DoS-resistant) hasher costs per call, not per byte.
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        let mut packed = [0u8; 36];
        packed[..16].copy_from_slice(&octets(self.client));
        packed[16..32].copy_from_slice(&octets(self.server));
        packed[32..34].copy_from_slice(&self.client_port.to_be_bytes());
        packed[34..].copy_from_slice(&self.server_port.to_be_bytes());
        state.write(&packed);
    }
}

struct Half {
    tcp: Direction,
    adus: AduStream,
    fin: bool,
}

impl Half {
    fn new(protocol: Protocol) -> Half {
        Half { tcp: Direction::new(), adus: AduStream::framing(protocol, false), fin: false }
    }
}

struct Flow {
    principal: u32,
    device: u32,
    /// [client to server, server to client]
    halves: [Half; 2],
    /// Session state of an EtherNet/IP flow; `None` for Modbus/TCP (boxed: flows are kept to the end of
    /// the capture, and a Modbus flow should not carry a session's room).
    enip: Option<Box<EnipFlow>>,
    closed: bool,
}

/// Per-request context handed to the ADU sink.
struct Context<'a, D: Decide> {
    decider: &'a mut D,
    report: &'a mut Report,
    key: FlowKey,
    principal: u32,
    device: u32,
    frame: u64,
    ts_ns: u64,
    max_listed: usize,
}

impl<D: Decide> Context<'_, D> {
    fn request(&mut self, adu: &[u8]) {
        let outcome = self.decider.decide(self.principal, self.device, adu, self.ts_ns);
        let r = &mut *self.report;
        r.requests += 1;
        let unit = adu.get(6).copied().unwrap_or(0);
        let function = adu.get(7).copied().unwrap_or(0);
        r.by_function[function as usize] += 1;
        r.by_unit[unit as usize] += 1;
        r.by_reason[(outcome.reason as usize).min(REASONS - 1)] += 1;
        if let Some(rule) = outcome.rule {
            let counts = if outcome.verdict == VERDICT_ALLOW { &mut r.by_rule } else { &mut r.by_rule_denied };
            if let Some(n) = counts.get_mut(rule as usize) {
                *n += 1;
            }
        }
        if outcome.reason == REASON_MALFORMED {
            r.malformed += 1;
        }
        match outcome.verdict {
            VERDICT_ALLOW => r.allowed += 1,
            VERDICT_WOULD_DENY => r.would_deny += 1,
            _ => r.denied += 1,
        }
        if outcome.verdict != VERDICT_ALLOW && r.denials.len() < self.max_listed {
            r.denials.push(Denial {
                frame: self.frame,
                ts_ns: self.ts_ns,
                client: self.key.client,
                client_port: self.key.client_port,
                server: self.key.server,
                server_port: self.key.server_port,
                principal: self.principal,
                device: self.device,
                unit,
                function,
                outcome,
            });
        }
    }

    fn enip_request(&mut self, flow: &mut EnipFlow, frame: &[u8]) {
        let d = enip_flow::request(
            &mut *self.decider,
            flow,
            &mut self.report.cip,
            self.principal,
            self.device,
            frame,
            self.ts_ns,
        );
        let r = &mut *self.report;
        if d.decision.verdict != crate::policy::Verdict::Allow && r.cip_denials.len() < self.max_listed {
            r.cip_denials.push(CipDenial {
                frame: self.frame,
                ts_ns: self.ts_ns,
                client: self.key.client,
                client_port: self.key.client_port,
                server: self.key.server,
                server_port: self.key.server_port,
                principal: self.principal,
                device: self.device,
                leaf_service: d.leaf_service,
                decision: d.decision,
            });
        }
    }

    fn enip_reply(&mut self, flow: &mut EnipFlow, frame: &[u8]) {
        enip_flow::reply(flow, &mut self.report.cip, frame);
    }

    fn reply(&mut self, adu: &[u8]) {
        self.report.replies += 1;
        if adu.get(7).is_some_and(|fc| fc & 0x80 != 0) {
            self.report.exception_replies += 1;
        }
    }

    fn invalid(&mut self, requests: bool, reason: StreamInvalid) {
        let r = &mut *self.report;
        r.invalid_streams += 1;
        if r.invalid_list.len() < self.max_listed {
            r.invalid_list.push(InvalidStream {
                frame: self.frame,
                client: self.key.client,
                client_port: self.key.client_port,
                server: self.key.server,
                server_port: self.key.server_port,
                requests,
                reason,
            });
        }
    }
}

fn add_stats(a: &mut Anomalies, s: &DirectionStats) {
    a.out_of_order += s.out_of_order;
    a.retransmitted += s.retransmitted;
    a.overlapping += s.overlapping;
    a.gaps += s.gaps;
    a.gap_bytes += s.gap_bytes;
}

/// Replays frames through reassembly, splitting and the engine.
pub struct Replay<'d, D: Decide> {
    decider: &'d mut D,
    targets: Targets,
    flows: HashMap<FlowKey, Flow>,
    /// Creation order, so the end-of-capture flush is deterministic.
    order: Vec<FlowKey>,
    report: Report,
    max_listed: usize,
}

impl<'d, D: Decide> Replay<'d, D> {
    /// `rules`: how many rules the policy has (for the per-rule counters); `max_listed`: how many
    /// denials and invalid streams the report lists (all are counted).
    pub fn new(decider: &'d mut D, targets: Targets, rules: usize, max_listed: usize) -> Self {
        Replay { decider, targets, flows: HashMap::new(), order: Vec::new(), report: Report::new(rules), max_listed }
    }

    /// The counters so far.
    pub fn report(&self) -> &Report {
        &self.report
    }

    /// One captured frame.
    pub fn frame(&mut self, frame: &Frame<'_>) {
        self.report.frames += 1;
        if frame.truncated {
            self.report.anomalies.truncated_frames += 1;
        }
        let seg = match decode(frame.linktype, frame.data) {
            Decoded::Tcp(seg) => seg,
            Decoded::NotTcp => return,
            Decoded::Fragment => {
                self.report.anomalies.ip_fragments += 1;
                return;
            }
            Decoded::UnsupportedLink => {
                self.report.anomalies.unsupported_link += 1;
                return;
            }
            Decoded::Undecodable => {
                self.report.anomalies.undecodable_frames += 1;
                return;
            }
        };
        self.report.tcp_segments += 1;
        let Some(to_server) = self.targets.role(&seg) else {
            self.report.anomalies.other_tcp_segments += 1;
            return;
        };
        self.segment(frame, &seg, to_server);
    }

    fn segment(&mut self, frame: &Frame<'_>, seg: &Segment<'_>, to_server: bool) {
        let key = if to_server {
            FlowKey { client: seg.src, client_port: seg.src_port, server: seg.dst, server_port: seg.dst_port }
        } else {
            FlowKey { client: seg.dst, client_port: seg.dst_port, server: seg.src, server_port: seg.src_port }
        };
        let side = if to_server { 0 } else { 1 };
        let Replay { decider, targets, flows, order, report, max_listed } = self;
        let mut ctx = Context {
            decider: &mut **decider,
            report,
            key,
            principal: UNKNOWN,
            device: UNKNOWN,
            frame: frame.number,
            ts_ns: frame.ts_ns,
            max_listed: *max_listed,
        };

        // A SYN with another ISN on a known flow starts a new connection: the old one ends here.
        if seg.flags.syn {
            if let Some(flow) = flows.get_mut(&key) {
                let tcp = &mut flow.halves[side].tcp;
                let renewed = flow.closed || (tcp.started() && tcp.syn(seg.seq) == Syn::NewConnection);
                if renewed {
                    if !flow.closed {
                        ctx.principal = flow.principal;
                        ctx.device = flow.device;
                        close(flow, &mut ctx);
                    }
                    flows.remove(&key);
                }
            }
        }
        let flow = match flows.get_mut(&key) {
            Some(flow) => flow,
            None => {
                if !seg.flags.syn && seg.payload.is_empty() {
                    return; // a bare ACK, FIN or RST of a connection not seen: nothing to replay
                }
                ctx.report.flows += 1;
                if !seg.flags.syn {
                    ctx.report.anomalies.midstream_flows += 1;
                }
                order.push(key);
                let protocol = targets.protocol(key.server, key.server_port);
                let enip = (protocol == Protocol::Enip).then(|| {
                    ctx.report.cip.flows += 1;
                    Box::new(EnipFlow::new(!seg.flags.syn))
                });
                flows.entry(key).or_insert(Flow {
                    principal: targets.principal(key.client),
                    device: targets.device_for(protocol, key.server, key.server_port),
                    halves: [Half::new(protocol), Half::new(protocol)],
                    enip,
                    closed: false,
                })
            }
        };
        ctx.principal = flow.principal;
        ctx.device = flow.device;
        if flow.closed {
            if !seg.payload.is_empty() {
                ctx.report.anomalies.data_after_close += 1;
            }
            return;
        }
        let Flow { halves, enip, .. } = flow;
        let half = &mut halves[side];
        let mut data_seq = seg.seq;
        if seg.flags.syn {
            if half.tcp.syn(seg.seq) == Syn::Started {
                half.adus = AduStream::framing(half.adus.framing, true);
            }
            data_seq = seg.seq.wrapping_add(1);
        }
        if !seg.payload.is_empty() {
            let Half { tcp, adus, .. } = half;
            let tag = Tag { frame: frame.number, ts_ns: frame.ts_ns };
            tcp.segment(data_seq, seg.payload, tag, &mut |chunk| {
                deliver(adus, enip, chunk, side == 0, &mut ctx);
            });
        }
        if seg.flags.fin {
            half.fin = true;
        }
        if seg.flags.rst || (flow.halves[0].fin && flow.halves[1].fin) {
            close(flow, &mut ctx);
        }
    }

    /// Ends every open flow (the capture is over) and returns the counters.
    pub fn finish(mut self) -> Report {
        let Replay { decider, flows, order, report, max_listed, .. } = &mut self;
        let last_frame = report.frames;
        for key in order.iter() {
            let Some(flow) = flows.get_mut(key) else {
                continue;
            };
            if flow.closed {
                continue;
            }
            let mut ctx = Context {
                decider: &mut **decider,
                report: &mut *report,
                key: *key,
                principal: flow.principal,
                device: flow.device,
                frame: last_frame,
                ts_ns: 0,
                max_listed: *max_listed,
            };
            close(flow, &mut ctx);
        }
        std::mem::replace(&mut self.report, Report::new(0))
    }
}

fn deliver<D: Decide>(
    adus: &mut AduStream,
    enip: &mut Option<Box<EnipFlow>>,
    chunk: Chunk<'_>,
    requests: bool,
    ctx: &mut Context<'_, D>,
) {
    // An ADU is reported at the frame (and decided at the time) of the segment holding its last byte.
    if let Chunk::Data(_, tag) = chunk {
        ctx.frame = tag.frame;
        ctx.ts_ns = tag.ts_ns;
    }
    let found = adus.feed(chunk, &mut |adu| match (enip.as_mut(), requests) {
        (Some(flow), true) => ctx.enip_request(flow, adu),
        (Some(flow), false) => ctx.enip_reply(flow, adu),
        (None, true) => ctx.request(adu),
        (None, false) => ctx.reply(adu),
    });
    if let Some(reason) = found {
        ctx.invalid(requests, reason);
    }
}

/// Flushes both directions of a flow (holes are skipped) and closes it.
fn close<D: Decide>(flow: &mut Flow, ctx: &mut Context<'_, D>) {
    let Flow { halves, enip, .. } = flow;
    for (side, half) in halves.iter_mut().enumerate() {
        let requests = side == 0;
        let Half { tcp, adus, .. } = half;
        tcp.flush(&mut |chunk| deliver(adus, enip, chunk, requests, ctx));
        if let Some(reason) = adus.finish() {
            ctx.invalid(requests, reason);
        }
        let a = &mut ctx.report.anomalies;
        add_stats(a, &tcp.stats);
        a.resync_dropped_bytes += adus.resync_dropped;
        a.partial_adu_bytes += adus.partial_lost;
        if adus.invalid().is_none() {
            a.trailing_bytes += adus.carried() as u64;
        }
    }
    flow.closed = true;
}

/// Progress is reported every this many bytes of capture.
const PROGRESS_STEP: usize = 4 << 20;

/// Replays a capture held in memory. `progress(done, total)` is called every few megabytes.
pub fn replay_capture<D: Decide, P: FnMut(usize, usize)>(
    capture: &[u8],
    decider: &mut D,
    targets: Targets,
    rules: usize,
    max_listed: usize,
    mut progress: P,
) -> Result<Report, CaptureError> {
    let mut reader = CaptureReader::new(capture)?;
    let mut replay = Replay::new(decider, targets, rules, max_listed);
    let mut next_progress = PROGRESS_STEP;
    let mut error = None;
    while let Some(item) = reader.next_frame() {
        match item {
            Ok(frame) => replay.frame(&frame),
            Err(e) => {
                error = Some(e);
                break;
            }
        }
        if reader.position() >= next_progress {
            next_progress = reader.position() + PROGRESS_STEP;
            progress(reader.position(), capture.len());
        }
    }
    let mut report = replay.finish();
    report.format = Some(reader.format());
    report.bytes_read = reader.position() as u64;
    report.capture_error = error;
    progress(reader.position(), capture.len());
    Ok(report)
}

/// Replays a capture read from `input` (a file, usually) in bounded memory; `total` is its size in
/// bytes, for progress only. A capture whose header is unreadable is an error; damage after the
/// header ends the walk and is reported in [`Report::capture_error`].
pub fn replay_stream<R: std::io::Read, D: Decide, P: FnMut(usize, usize)>(
    input: R,
    total: usize,
    decider: &mut D,
    targets: Targets,
    rules: usize,
    max_listed: usize,
    mut progress: P,
) -> Result<Report, CaptureError> {
    let mut reader = StreamReader::new(input);
    let mut replay = Replay::new(decider, targets, rules, max_listed);
    let mut next_progress = PROGRESS_STEP;
    let mut error = None;
    loop {
        match reader.next_frame() {
            Some(Ok(frame)) => replay.frame(&frame),
            Some(Err(e)) => {
                error = Some(e);
                break;
            }
            None => break,
        }
        if reader.position() >= next_progress {
            next_progress = reader.position() + PROGRESS_STEP;
            progress(reader.position(), total);
        }
    }
    let Some(format) = reader.format() else {
        return Err(error.unwrap_or(CaptureError::NotACapture));
    };
    let mut report = replay.finish();
    report.format = Some(format);
    report.bytes_read = reader.position() as u64;
    report.capture_error = error;
    progress(reader.position(), total.max(reader.position()));
    Ok(report)
}

impl Decide for crate::policy::Engine {
    #[inline]
    fn decide(&mut self, principal: u32, device: u32, adu: &[u8], now_ns: u64) -> Outcome {
        let d = crate::policy::Engine::decide(&*self, principal, device, adu, now_ns);
        Outcome {
            verdict: d.verdict as u8,
            reason: d.reason as u8,
            malformed: d.malformed.map_or(0, |m| m as u8),
            rule: d.rule,
        }
    }
}

impl Targets {
    /// Principal source networks and device addresses as a policy IR names them. A source that is not
    /// a CIDR or address is ignored here (the policy loader rejects it before); a device port outside
    /// 1..=65535 counts as 502 (the loader rejects it before).
    pub fn from_ir(ir: &crate::policy::Ir) -> Targets {
        let sources: Vec<Vec<Cidr>> =
            ir.principals.iter().map(|p| p.sources.iter().filter_map(|s| Cidr::parse(s)).collect()).collect();
        let addr = |host: &str, port: i64, default: u16| DeviceAddr {
            host: host.parse::<IpAddr>().ok(),
            port: u16::try_from(port).ok().filter(|p| *p != 0).unwrap_or(default),
        };
        // An IR device that speaks only EtherNet/IP repeats its enip address as host and port.
        let modbus = ir
            .devices
            .iter()
            .map(|d| {
                let only_enip = d.enip.as_ref().is_some_and(|e| e.host == d.host && e.port == d.port);
                (!only_enip).then(|| addr(&d.host, d.port, MODBUS_PORT))
            })
            .collect();
        let enip = ir.devices.iter().map(|d| d.enip.as_ref().map(|e| addr(&e.host, e.port, ENIP_PORT))).collect();
        Targets::new(&sources, Vec::new()).with_protocols(modbus, enip)
    }
}

/// Parses a policy IR and compiles its engine: replay needs both, the IR for addresses and names.
pub fn compile_ir(ir_json: &str) -> Result<(crate::policy::Ir, crate::policy::Engine), crate::policy::IrError> {
    let ir: crate::policy::Ir =
        serde_json::from_str(ir_json).map_err(|e| crate::policy::IrError::Syntax(e.to_string()))?;
    let engine = crate::policy::Engine::compile(&ir)?;
    Ok((ir, engine))
}
