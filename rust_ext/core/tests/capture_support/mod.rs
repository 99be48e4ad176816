//! Test support for the capture tests: writes real pcap / pcapng files around TCP conversations, so
//! each test states its traffic byte for byte and the reader under test parses what tcpdump would write.
#![allow(dead_code)]

use etherparse::PacketBuilder;
use std::path::PathBuf;

pub const CLIENT_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
pub const SERVER_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];

/// One endpoint: IPv4 address and port.
#[derive(Clone, Copy, Debug)]
pub struct Ep(pub [u8; 4], pub u16);

/// TCP flags for a hand-made segment.
#[derive(Clone, Copy, Debug, Default)]
pub struct Flags {
    pub syn: bool,
    pub ack: bool,
    pub fin: bool,
    pub rst: bool,
}

pub const SYN: Flags = Flags { syn: true, ack: false, fin: false, rst: false };
pub const SYN_ACK: Flags = Flags { syn: true, ack: true, fin: false, rst: false };
pub const ACK: Flags = Flags { syn: false, ack: true, fin: false, rst: false };
pub const FIN: Flags = Flags { syn: false, ack: true, fin: true, rst: false };
pub const RST: Flags = Flags { syn: false, ack: false, fin: false, rst: true };

/// An Ethernet II / IPv4 / TCP frame.
pub fn tcp_frame(src: Ep, dst: Ep, seq: u32, flags: Flags, payload: &[u8]) -> Vec<u8> {
    let mut b = PacketBuilder::ethernet2(CLIENT_MAC, SERVER_MAC).ipv4(src.0, dst.0, 64).tcp(src.1, dst.1, seq, 65535);
    if flags.syn {
        b = b.syn();
    }
    if flags.ack {
        b = b.ack(1);
    }
    if flags.fin {
        b = b.fin();
    }
    if flags.rst {
        b = b.rst();
    }
    if !payload.is_empty() {
        b = b.psh();
    }
    let mut out = Vec::new();
    b.write(&mut out, payload).expect("frame");
    out
}

/// An Ethernet II / IPv6 / TCP frame.
pub fn tcp6_frame(src: ([u8; 16], u16), dst: ([u8; 16], u16), seq: u32, flags: Flags, payload: &[u8]) -> Vec<u8> {
    let mut b = PacketBuilder::ethernet2(CLIENT_MAC, SERVER_MAC).ipv6(src.0, dst.0, 64).tcp(src.1, dst.1, seq, 65535);
    if flags.syn {
        b = b.syn();
    }
    if flags.ack {
        b = b.ack(1);
    }
    if !payload.is_empty() {
        b = b.psh();
    }
    let mut out = Vec::new();
    b.write(&mut out, payload).expect("frame");
    out
}

/// A TCP connection whose sequence numbers the helper keeps, one frame per call.
pub struct Conn {
    pub client: Ep,
    pub server: Ep,
    /// Next sequence number of each side.
    pub cseq: u32,
    pub sseq: u32,
}

impl Conn {
    pub fn new(client: Ep, server: Ep, cisn: u32, sisn: u32) -> Conn {
        Conn { client, server, cseq: cisn, sseq: sisn }
    }

    /// SYN, SYN+ACK, ACK.
    pub fn handshake(&mut self) -> Vec<Vec<u8>> {
        let f = vec![
            tcp_frame(self.client, self.server, self.cseq, SYN, b""),
            tcp_frame(self.server, self.client, self.sseq, SYN_ACK, b""),
            tcp_frame(self.client, self.server, self.cseq.wrapping_add(1), ACK, b""),
        ];
        self.cseq = self.cseq.wrapping_add(1);
        self.sseq = self.sseq.wrapping_add(1);
        f
    }

    pub fn c2s(&mut self, payload: &[u8]) -> Vec<u8> {
        let f = tcp_frame(self.client, self.server, self.cseq, ACK, payload);
        self.cseq = self.cseq.wrapping_add(payload.len() as u32);
        f
    }

    pub fn s2c(&mut self, payload: &[u8]) -> Vec<u8> {
        let f = tcp_frame(self.server, self.client, self.sseq, ACK, payload);
        self.sseq = self.sseq.wrapping_add(payload.len() as u32);
        f
    }

    /// A client segment at `seq`, without moving the helper's sequence number.
    pub fn c2s_at(&self, seq: u32, payload: &[u8]) -> Vec<u8> {
        tcp_frame(self.client, self.server, seq, ACK, payload)
    }

    pub fn close(&mut self) -> Vec<Vec<u8>> {
        let f = vec![
            tcp_frame(self.client, self.server, self.cseq, FIN, b""),
            tcp_frame(self.server, self.client, self.sseq, FIN, b""),
            tcp_frame(self.client, self.server, self.cseq.wrapping_add(1), ACK, b""),
        ];
        self.cseq = self.cseq.wrapping_add(1);
        self.sseq = self.sseq.wrapping_add(1);
        f
    }
}

/// Read holding registers (FC 3) request ADU.
pub fn read_holding(tid: u16, unit: u8, start: u16, qty: u16) -> Vec<u8> {
    let mut v = Vec::new();
    v.extend_from_slice(&tid.to_be_bytes()); // transaction id
    v.extend_from_slice(&[0, 0]); // protocol id
    v.extend_from_slice(&6u16.to_be_bytes()); // length: unit + 5 PDU bytes
    v.push(unit); // unit id
    v.push(3); // function code
    v.extend_from_slice(&start.to_be_bytes()); // starting address
    v.extend_from_slice(&qty.to_be_bytes()); // quantity of registers
    v
}

/// Write single register (FC 6) request ADU.
pub fn write_register(tid: u16, unit: u8, addr: u16, value: u16) -> Vec<u8> {
    let mut v = Vec::new();
    v.extend_from_slice(&tid.to_be_bytes()); // transaction id
    v.extend_from_slice(&[0, 0]); // protocol id
    v.extend_from_slice(&6u16.to_be_bytes()); // length
    v.push(unit); // unit id
    v.push(6); // function code
    v.extend_from_slice(&addr.to_be_bytes()); // register address
    v.extend_from_slice(&value.to_be_bytes()); // value
    v
}

/// FC 3 reply ADU with `qty` zero registers.
pub fn holding_reply(tid: u16, unit: u8, qty: u8) -> Vec<u8> {
    let mut v = Vec::new();
    v.extend_from_slice(&tid.to_be_bytes()); // transaction id
    v.extend_from_slice(&[0, 0]); // protocol id
    v.extend_from_slice(&(3 + 2 * qty as u16).to_be_bytes()); // length
    v.push(unit); // unit id
    v.push(3); // function code
    v.push(2 * qty); // byte count
    v.extend(std::iter::repeat_n(0, 2 * qty as usize)); // register values
    v
}

/// Legacy pcap, little-endian, microsecond timestamps, Ethernet.
pub fn pcap(frames: &[(u64, Vec<u8>)]) -> Vec<u8> {
    pcap_with(frames, false, false)
}

/// Legacy pcap with a choice of byte order and nanosecond timestamps.
pub fn pcap_with(frames: &[(u64, Vec<u8>)], big_endian: bool, nanos: bool) -> Vec<u8> {
    let w32 =
        |out: &mut Vec<u8>, v: u32| out.extend_from_slice(&if big_endian { v.to_be_bytes() } else { v.to_le_bytes() });
    let w16 =
        |out: &mut Vec<u8>, v: u16| out.extend_from_slice(&if big_endian { v.to_be_bytes() } else { v.to_le_bytes() });
    let mut out = Vec::new();
    w32(&mut out, if nanos { 0xa1b2_3c4d } else { 0xa1b2_c3d4 }); // magic
    w16(&mut out, 2); // version major
    w16(&mut out, 4); // version minor
    w32(&mut out, 0); // thiszone
    w32(&mut out, 0); // sigfigs
    w32(&mut out, 65535); // snaplen
    w32(&mut out, 1); // link type: Ethernet
    for (ts_ns, data) in frames {
        let (sec, frac) = (ts_ns / 1_000_000_000, ts_ns % 1_000_000_000);
        w32(&mut out, sec as u32); // ts_sec
        w32(&mut out, if nanos { frac as u32 } else { (frac / 1000) as u32 }); // ts_usec / ts_nsec
        w32(&mut out, data.len() as u32); // caplen
        w32(&mut out, data.len() as u32); // origlen
        out.extend_from_slice(data);
    }
    out
}

fn pad4(out: &mut Vec<u8>) {
    while !out.len().is_multiple_of(4) {
        out.push(0);
    }
}

/// pcapng (little-endian): one section, the given interfaces (link type, if_tsresol option or
/// `None` for the default microseconds), then enhanced packet blocks (interface, timestamp in that
/// interface's units, data).
pub fn pcapng(interfaces: &[(u16, Option<u8>)], packets: &[(u32, u64, Vec<u8>)]) -> Vec<u8> {
    let mut out = Vec::new();
    // Section header block: type, length, byte-order magic, version 1.0, section length -1, length.
    out.extend_from_slice(&0x0A0D_0D0Au32.to_le_bytes());
    out.extend_from_slice(&28u32.to_le_bytes());
    out.extend_from_slice(&0x1A2B_3C4Du32.to_le_bytes());
    out.extend_from_slice(&1u16.to_le_bytes());
    out.extend_from_slice(&0u16.to_le_bytes());
    out.extend_from_slice(&(-1i64).to_le_bytes());
    out.extend_from_slice(&28u32.to_le_bytes());
    for (linktype, tsresol) in interfaces {
        let mut body = Vec::new();
        body.extend_from_slice(&linktype.to_le_bytes()); // link type
        body.extend_from_slice(&0u16.to_le_bytes()); // reserved
        body.extend_from_slice(&65535u32.to_le_bytes()); // snaplen
        if let Some(r) = tsresol {
            body.extend_from_slice(&9u16.to_le_bytes()); // option if_tsresol
            body.extend_from_slice(&1u16.to_le_bytes()); // option length
            body.extend_from_slice(&[*r, 0, 0, 0]); // value, padded
            body.extend_from_slice(&[0, 0, 0, 0]); // opt_endofopt
        }
        let len = 12 + body.len() as u32;
        out.extend_from_slice(&1u32.to_le_bytes()); // block type: IDB
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&body);
        out.extend_from_slice(&len.to_le_bytes());
    }
    for (iface, ts, data) in packets {
        let mut body = Vec::new();
        body.extend_from_slice(&iface.to_le_bytes()); // interface id
        body.extend_from_slice(&((ts >> 32) as u32).to_le_bytes()); // timestamp high
        body.extend_from_slice(&(*ts as u32).to_le_bytes()); // timestamp low
        body.extend_from_slice(&(data.len() as u32).to_le_bytes()); // captured length
        body.extend_from_slice(&(data.len() as u32).to_le_bytes()); // original length
        body.extend_from_slice(data);
        pad4(&mut body);
        let len = 12 + body.len() as u32;
        out.extend_from_slice(&6u32.to_le_bytes()); // block type: EPB
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&body);
        out.extend_from_slice(&len.to_le_bytes());
    }
    out
}

/// Frames with timestamps one millisecond apart.
pub fn timed(frames: Vec<Vec<u8>>) -> Vec<(u64, Vec<u8>)> {
    frames.into_iter().enumerate().map(|(i, f)| (1_700_000_000_000_000_000 + i as u64 * 1_000_000, f)).collect()
}

/// The shared third-party captures, when this checkout has them beside it.
pub fn shared_pcaps() -> Option<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/pcaps");
    if dir.is_dir() {
        return Some(dir);
    }
    assert!(
        std::env::var("ZONEGATE_STRICT").as_deref() != Ok("1"),
        "ZONEGATE_STRICT=1 and the shared captures are missing at {}",
        dir.display()
    );
    eprintln!("skipped: shared captures missing at {}", dir.display());
    None
}
