//! Test support for the EtherNet/IP tests: the shared third-party captures cut into encapsulation
//! messages per TCP direction, with the capture module's own reader, decoder and reassembler.
#![allow(dead_code)]

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::PathBuf;
use zonegate_core::capture::pcap::CaptureReader;
use zonegate_core::capture::reassembly::{Chunk, Direction, Tag};
use zonegate_core::capture::segment::{decode, Decoded};
use zonegate_core::enip::{split, Split};

/// The EtherNet/IP TCP port.
pub const ENIP_PORT: u16 = 44818;

/// The shared third-party captures, when this checkout has them beside it (a hard failure under
/// ZONEGATE_STRICT=1, where CI promises them).
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

/// Every encapsulation message of a capture on port 44818, in stream order per direction.
#[derive(Debug, Default)]
pub struct Messages {
    /// Client to device.
    pub requests: Vec<Vec<u8>>,
    /// Device to client.
    pub replies: Vec<Vec<u8>>,
    /// Directions whose bytes did not frame (should stay 0 for these captures).
    pub invalid_streams: usize,
    /// Bytes left over at the end of a direction (an unfinished message).
    pub leftover: usize,
}

type Key = (IpAddr, u16, IpAddr, u16);

#[derive(Default)]
struct Stream {
    dir: Direction,
    buf: Vec<u8>,
    invalid: bool,
}

fn cut(stream: &mut Stream, out: &mut Vec<Vec<u8>>, invalid: &mut usize) {
    loop {
        if stream.invalid {
            stream.buf.clear();
            return;
        }
        match split(&stream.buf) {
            Split::Complete { used } => {
                out.push(stream.buf[..used].to_vec());
                stream.buf.drain(..used);
            }
            Split::Incomplete { .. } => return,
            Split::Invalid(_) => {
                stream.invalid = true;
                *invalid += 1;
            }
        }
    }
}

/// Reads a capture and cuts both directions of every port-44818 TCP flow into messages.
pub fn messages(bytes: &[u8]) -> Messages {
    let mut flows: HashMap<Key, Stream> = HashMap::new();
    let mut m = Messages::default();
    let mut reader = CaptureReader::new(bytes).expect("a capture");
    while let Some(frame) = reader.next_frame() {
        let frame = frame.expect("a readable record");
        let Decoded::Tcp(seg) = decode(frame.linktype, frame.data) else { continue };
        if seg.src_port != ENIP_PORT && seg.dst_port != ENIP_PORT {
            continue;
        }
        let key = (seg.src, seg.src_port, seg.dst, seg.dst_port);
        let to_server = seg.dst_port == ENIP_PORT;
        let stream = flows.entry(key).or_default();
        if seg.flags.syn {
            stream.dir.syn(seg.seq);
        }
        let tag = Tag { frame: frame.number, ts_ns: frame.ts_ns };
        let mut chunks: Vec<Option<Vec<u8>>> = Vec::new();
        stream.dir.segment(seg.seq, seg.payload, tag, &mut |c| match c {
            Chunk::Data(d, _) => chunks.push(Some(d.to_vec())),
            Chunk::Gap => chunks.push(None),
        });
        for c in chunks {
            match c {
                Some(d) => stream.buf.extend_from_slice(&d),
                None => stream.buf.clear(),
            }
        }
        let out = if to_server { &mut m.requests } else { &mut m.replies };
        cut(stream, out, &mut m.invalid_streams);
    }
    m.leftover = flows.values().map(|s| s.buf.len()).sum();
    m
}

/// Reads a shared capture by its path under the pcaps folder.
pub fn shared(rel: &str) -> Option<Vec<u8>> {
    let dir = shared_pcaps()?;
    Some(std::fs::read(dir.join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}")))
}

/// Decodes a hex string with spaces and newlines.
pub fn hex(s: &str) -> Vec<u8> {
    let digits: Vec<u8> = s.bytes().filter(|b| b.is_ascii_hexdigit()).collect();
    digits.chunks(2).map(|p| u8::from_str_radix(std::str::from_utf8(p).unwrap(), 16).unwrap()).collect()
}

/// An encapsulation message: header fields as given, `data` after it.
pub fn encap(command: u16, session: u32, context: &[u8; 8], data: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(24 + data.len());
    v.extend_from_slice(&command.to_le_bytes());
    v.extend_from_slice(&(data.len() as u16).to_le_bytes());
    v.extend_from_slice(&session.to_le_bytes());
    v.extend_from_slice(&0u32.to_le_bytes()); // status
    v.extend_from_slice(context);
    v.extend_from_slice(&0u32.to_le_bytes()); // options
    v.extend_from_slice(data);
    v
}

/// SendRRData carrying one unconnected CIP request: interface 0, timeout 5 s, null address item,
/// unconnected data item.
pub fn send_rr(cip: &[u8]) -> Vec<u8> {
    let mut d = vec![0, 0, 0, 0, 5, 0, 2, 0, 0, 0, 0, 0, 0xB2, 0];
    d.extend_from_slice(&(cip.len() as u16).to_le_bytes());
    d.extend_from_slice(cip);
    encap(0x6F, 0x0102_0304, b"zonegate", &d)
}

/// SendUnitData carrying one connected CIP request on `conn` with sequence count `seq`.
pub fn send_unit(conn: u32, seq: u16, cip: &[u8]) -> Vec<u8> {
    let mut d = vec![0, 0, 0, 0, 0, 0, 2, 0, 0xA1, 0, 4, 0];
    d.extend_from_slice(&conn.to_le_bytes());
    d.extend_from_slice(&[0xB1, 0]);
    d.extend_from_slice(&(cip.len() as u16 + 2).to_le_bytes());
    d.extend_from_slice(&seq.to_le_bytes());
    d.extend_from_slice(cip);
    encap(0x70, 0x0102_0304, b"zonegate", &d)
}

/// A Multiple Service Packet to the Message Router (class 2, instance 1) around `inner` requests.
pub fn msp(inner: &[&[u8]]) -> Vec<u8> {
    let mut v = vec![0x0A, 0x02, 0x20, 0x02, 0x24, 0x01];
    v.extend_from_slice(&(inner.len() as u16).to_le_bytes());
    let mut off = 2 + 2 * inner.len();
    for i in inner {
        v.extend_from_slice(&(off as u16).to_le_bytes());
        off += i.len();
    }
    for i in inner {
        v.extend_from_slice(i);
    }
    v
}

/// An Unconnected Send to the Connection Manager (class 6, instance 1) carrying `inner` along
/// `route` (padded port segments).
pub fn unconnected_send(inner: &[u8], route: &[u8]) -> Vec<u8> {
    let mut v = vec![0x52, 0x02, 0x20, 0x06, 0x24, 0x01, 0x0A, 0xF0];
    v.extend_from_slice(&(inner.len() as u16).to_le_bytes());
    v.extend_from_slice(inner);
    if inner.len() % 2 == 1 {
        v.push(0);
    }
    v.push((route.len() / 2) as u8);
    v.push(0);
    v.extend_from_slice(route);
    v
}

/// Named CIP request vectors, one per segment form, service family and container shape.
pub fn cip_vectors() -> Vec<(&'static str, Vec<u8>)> {
    vec![
        (
            "read_tag_program_scoped_element_member",
            vec![
                0x4C, // service: Read Tag
                0x10, // path size: 16 words
                0x91, 0x0C, b'P', b'r', b'o', b'g', b'r', b'a', b'm', b':', b'M', b'a', b'i',
                b'n', // symbol, 12 chars
                0x91, 0x05, b'L', b'i', b'n', b'e', b'1', 0x00, // symbol, 5 chars, pad
                0x28, 0x03, // member (array element), 8-bit: 3
                0x91, 0x05, b'S', b'p', b'e', b'e', b'd', 0x00, // symbol, 5 chars, pad
                0x01, 0x00, // request data: element count 1
            ],
        ),
        (
            "write_tag_two_dimensional_16_and_32_bit_elements",
            vec![
                0x4D, // service: Write Tag
                0x08, // path size: 8 words
                0x91, 0x04, b'G', b'r', b'i', b'd', // symbol, 4 chars
                0x29, 0x00, 0x01, 0x01, // member, 16-bit (pad, u16 LE): 257
                0x2A, 0x00, 0x00, 0x00, 0x01, 0x00, // member, 32-bit (pad, u32 LE): 65536
                0xC4, 0x00, // data type: DINT
                0x01, 0x00, // element count 1
                0x2A, 0x00, 0x00, 0x00, // value 42
            ],
        ),
        (
            "get_attribute_single_8_bit_logical",
            vec![
                0x0E, // service: Get Attribute Single
                0x03, // path size: 3 words
                0x20, 0x01, // class, 8-bit: Identity
                0x24, 0x01, // instance, 8-bit: 1
                0x30, 0x07, // attribute, 8-bit: 7 (product name)
            ],
        ),
        (
            "set_attribute_single_16_and_32_bit_logical",
            vec![
                0x10, // service: Set Attribute Single
                0x07, // path size: 7 words
                0x21, 0x00, 0x34, 0x12, // class, 16-bit: 0x1234
                0x26, 0x00, 0x78, 0x56, 0x34, 0x12, // instance, 32-bit: 0x12345678
                0x31, 0x00, 0x00, 0x01, // attribute, 16-bit: 0x0100
                0x2A, 0x00, // data: 42
            ],
        ),
        (
            "stop_to_identity",
            vec![
                0x07, // service: Stop
                0x02, // path size: 2 words
                0x20, 0x01, // class: Identity
                0x24, 0x01, // instance 1
            ],
        ),
        (
            "unconnected_send_read_tag_to_slot_0",
            unconnected_send(
                &[
                    0x4C, // service: Read Tag
                    0x03, // path size: 3 words
                    0x91, 0x03, b'T', b'a', b'g', 0x00, // symbol "Tag", pad
                    0x01, 0x00, // element count 1
                ],
                &[
                    0x01, 0x00, // port 1 (backplane), link 0 (slot 0)
                ],
            ),
        ),
        (
            "unconnected_send_over_ethernet_extended_link",
            unconnected_send(
                &[
                    0x05, // service: Reset
                    0x02, // path size: 2 words
                    0x20, 0x01, 0x24, 0x01, // class 1, instance 1
                ],
                &[
                    0x12, 0x0B, // port 2, extended link address of 11 bytes
                    b'1', b'0', b'.', b'0', b'.', b'0', b'.', b'1', b'2', b'3', b'4', 0x00, // "10.0.0.1234", pad
                    0x01, 0x01, // port 1, slot 1
                ],
            ),
        ),
        (
            "multiple_service_packet_read_and_write",
            msp(&[
                &[
                    0x4C, 0x03, // Read Tag, 3 words
                    0x91, 0x03, b'A', b'_', b'1', 0x00, // symbol "A_1", pad
                    0x01, 0x00, // one element
                ],
                &[
                    0x4D, 0x02, // Write Tag, 2 words
                    0x91, 0x02, b'S', b'P', // symbol "SP"
                    0xC3, 0x00, 0x01, 0x00, 0x05, 0x00, // INT, one element, 5
                ],
            ]),
        ),
        (
            "multiple_service_packet_inside_unconnected_send",
            unconnected_send(
                &msp(&[
                    &[0x0E, 0x03, 0x20, 0x01, 0x24, 0x01, 0x30, 0x01], // Get Attribute Single 1/1/1
                    &[0x05, 0x02, 0x20, 0x01, 0x24, 0x01],             // Reset 1/1
                ]),
                &[0x01, 0x02], // port 1, slot 2
            ),
        ),
    ]
}

/// A Forward Open (class 3, to the Message Router behind slot 0), as its request data.
pub fn forward_open_data(large: bool, serial: u16) -> Vec<u8> {
    let mut v = vec![
        0x0A, // priority / time tick
        0x0E, // timeout ticks
        0x00, 0x00, 0x00, 0x00, // O->T connection id: 0, the target picks it
        0x01, 0x00, 0x02, 0x00, // T->O connection id: 0x00020001
    ];
    v.extend_from_slice(&serial.to_le_bytes()); // connection serial
    v.extend_from_slice(&[
        0x4D, 0x00, // originator vendor: 0x4D
        0x78, 0x56, 0x34, 0x12, // originator serial
        0x03, // timeout multiplier
        0x00, 0x00, 0x00, // reserved
        0x40, 0x4B, 0x4C, 0x00, // O->T RPI: 5,000,000 us
    ]);
    if large {
        v.extend_from_slice(&[0xF8, 0x0F, 0x00, 0x42]); // O->T params, 32-bit: 4088 bytes, point to point
    } else {
        v.extend_from_slice(&[0xF8, 0x43]); // O->T params, 16-bit: 504 bytes, point to point
    }
    v.extend_from_slice(&[0x40, 0x4B, 0x4C, 0x00]); // T->O RPI
    if large {
        v.extend_from_slice(&[0xF8, 0x0F, 0x00, 0x42]);
    } else {
        v.extend_from_slice(&[0xF8, 0x43]);
    }
    v.extend_from_slice(&[
        0xA3, // transport: server, application trigger, class 3
        0x07, // connection path size: 7 words
        0x34, 0x04, 0x01, 0x00, 0x0E, 0x00, 0x36, 0x00, 0x14,
        0x0B, // electronic key: vendor 1, type 14, product 54, rev 20.11
        0x01, 0x00, // port 1, slot 0
        0x20, 0x02, // class: Message Router
    ]);
    v
}

/// A Forward Open request: service 0x54 (0x5B when large) to class 6 instance 1.
pub fn forward_open(large: bool, serial: u16) -> Vec<u8> {
    let mut v = vec![if large { 0x5B } else { 0x54 }, 0x02, 0x20, 0x06, 0x24, 0x01];
    v.extend_from_slice(&forward_open_data(large, serial));
    v
}

/// Every vector as a whole encapsulation message.
pub fn message_vectors() -> Vec<(&'static str, Vec<u8>)> {
    let mut out: Vec<(&'static str, Vec<u8>)> = cip_vectors().into_iter().map(|(n, c)| (n, send_rr(&c))).collect();
    out.push(("connected_read_tag", send_unit(0x1122_3344, 7, &cip_vectors()[0].1)));
    out.push(("forward_open", send_rr(&forward_open(false, 1))));
    out.push(("large_forward_open", send_rr(&forward_open(true, 2))));
    out.push(("register_session", encap(0x65, 0, &[0; 8], &[1, 0, 0, 0])));
    out.push(("list_identity", encap(0x63, 0, &[0; 8], &[])));
    out
}
