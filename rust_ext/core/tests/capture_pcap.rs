//! Capture reading: pcap flavours, pcapng interfaces and timestamps, damaged files.

mod capture_support;

use capture_support::*;
use zonegate_core::capture::pcap::{CaptureError, CaptureReader, Format, StreamReader, MAX_RECORD};

fn frames(buf: &[u8]) -> Vec<(u64, u64, usize)> {
    CaptureReader::new(buf).unwrap().map(|f| f.unwrap()).map(|f| (f.number, f.ts_ns, f.data.len())).collect()
}

#[test]
fn reads_little_endian_microsecond_pcap() {
    let buf = pcap(&[(1_500_000_123_456_000, vec![1; 60]), (1_500_000_124_000_000, vec![2; 70])]);
    assert_eq!(frames(&buf), vec![(1, 1_500_000_123_456_000, 60), (2, 1_500_000_124_000_000, 70)]);
    assert_eq!(CaptureReader::new(&buf).unwrap().format(), Format::Pcap);
}

#[test]
fn reads_big_endian_and_nanosecond_pcap() {
    let list = [(1_500_000_000_000_000_123u64, vec![7; 64])];
    assert_eq!(frames(&pcap_with(&list, true, true)), vec![(1, 1_500_000_000_000_000_123, 64)]);
    assert_eq!(frames(&pcap_with(&list, true, false)), vec![(1, 1_500_000_000_000_000_000, 64)]);
    assert_eq!(frames(&pcap_with(&list, false, true)), vec![(1, 1_500_000_000_000_000_123, 64)]);
}

#[test]
fn reads_pcapng_with_per_interface_resolution() {
    // Interface 0: default microseconds; interface 1: nanoseconds (if_tsresol 9).
    let buf = pcapng(
        &[(1, None), (1, Some(9))],
        &[(0, 1_600_000_000_000_001, vec![1; 60]), (1, 1_600_000_000_000_000_002, vec![2; 61])],
    );
    assert_eq!(CaptureReader::new(&buf).unwrap().format(), Format::PcapNg);
    assert_eq!(frames(&buf), vec![(1, 1_600_000_000_000_001_000, 60), (2, 1_600_000_000_000_000_002, 61)]);
}

#[test]
fn pcapng_packet_on_undeclared_interface_is_an_error() {
    let buf = pcapng(&[(1, None)], &[(0, 1, vec![1; 60]), (3, 2, vec![2; 60])]);
    let mut reader = CaptureReader::new(&buf).unwrap();
    assert!(reader.next_frame().unwrap().is_ok());
    assert!(matches!(reader.next_frame(), Some(Err(CaptureError::UnknownInterface { interface: 3, .. }))));
    assert!(reader.next_frame().is_none(), "the walk stops after an error");
}

#[test]
fn garbage_is_not_a_capture() {
    assert_eq!(CaptureReader::new(b"GET / HTTP/1.1\r\n\r\n").err(), Some(CaptureError::NotACapture));
    assert_eq!(CaptureReader::new(b"").err(), Some(CaptureError::NotACapture));
}

#[test]
fn truncated_record_stops_with_its_offset() {
    let buf = pcap(&[(1, vec![1; 60]), (2, vec![2; 60])]);
    let cut = &buf[..buf.len() - 10];
    let mut reader = CaptureReader::new(cut).unwrap();
    assert!(reader.next_frame().unwrap().is_ok());
    let second_record = 24 + 16 + 60;
    assert_eq!(reader.next_frame(), Some(Err(CaptureError::Truncated { offset: second_record })));
    assert_eq!(reader.next_frame(), None);
}

#[test]
fn every_prefix_of_a_capture_reads_without_panic() {
    let mut conn = Conn::new(Ep([10, 0, 0, 9], 3082), Ep([10, 0, 0, 3], 502), 1000, 5000);
    let mut list = conn.handshake();
    list.push(conn.c2s(&read_holding(1, 1, 0, 10)));
    let legacy = pcap(&timed(list.clone()));
    let ng = pcapng(&[(1, None)], &timed(list).into_iter().map(|(t, f)| (0, t / 1000, f)).collect::<Vec<_>>());
    for buf in [legacy, ng] {
        for n in 0..buf.len() {
            if let Ok(reader) = CaptureReader::new(&buf[..n]) {
                for item in reader {
                    let _ = item;
                }
            }
        }
    }
}

#[test]
fn shared_captures_read_to_the_end_with_wireshark_frame_counts() {
    let Some(dir) = shared_pcaps() else { return };
    // Frame counts and first/last timestamps as tshark 4.0 reports them.
    let expected: &[(&str, u64, u64, u64)] = &[
        ("icsnpp-modbus/modbus_example.pcap", 100, 1_595_660_608_237_857_000, 1_595_890_833_407_055_000),
        ("suricata-verify/modbus/modbus.pcap", 99, 1_093_521_678_945_447_000, 1_093_523_139_878_395_000),
        ("zeek/modbusBig.pcap", 13622, 1_381_967_744_641_998_000, 1_381_967_802_468_566_000),
        ("zeek/fuzz-72.pcap", 36, 1_153_491_909_414_066_000, 1_153_491_933_406_960_000),
        ("icsnpp-enip/multiple_service_packet_cip.pcapng", 1, 1_224_804_549_022_338_000, 1_224_804_549_022_338_000),
        (
            "icsnpp-enip/set_attribute_single_service_cip.pcapng",
            1,
            1_738_823_410_493_630_309,
            1_738_823_410_493_630_309,
        ),
    ];
    for (name, count, first, last) in expected {
        let buf = std::fs::read(dir.join(name)).unwrap();
        let got: Vec<_> = CaptureReader::new(&buf).unwrap().map(|f| f.unwrap().ts_ns).collect();
        assert_eq!(got.len() as u64, *count, "{name}");
        assert_eq!((got[0], *got.last().unwrap()), (*first, *last), "{name}");
    }
}

/// A reader that hands out at most `step` bytes per call, as a slow pipe would.
struct Trickle<'a> {
    data: &'a [u8],
    pos: usize,
    step: usize,
}

impl std::io::Read for Trickle<'_> {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        let n = self.step.min(out.len()).min(self.data.len() - self.pos);
        out[..n].copy_from_slice(&self.data[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// (frame number, timestamp, bytes) of every frame read, and the error that stopped the walk.
type Walk = (Vec<(u64, u64, Vec<u8>)>, Option<CaptureError>);

fn streamed(buf: &[u8], step: usize) -> Walk {
    let mut reader = StreamReader::new(Trickle { data: buf, pos: 0, step });
    let mut out = Vec::new();
    while let Some(item) = reader.next_frame() {
        match item {
            Ok(f) => out.push((f.number, f.ts_ns, f.data.to_vec())),
            Err(e) => return (out, Some(e)),
        }
    }
    (out, None)
}

fn in_memory(buf: &[u8]) -> Walk {
    let mut out = Vec::new();
    let mut reader = match CaptureReader::new(buf) {
        Ok(r) => r,
        Err(e) => return (out, Some(e)),
    };
    while let Some(item) = reader.next_frame() {
        match item {
            Ok(f) => out.push((f.number, f.ts_ns, f.data.to_vec())),
            Err(e) => return (out, Some(e)),
        }
    }
    (out, None)
}

#[test]
fn streaming_reads_the_same_frames_whatever_the_read_sizes() {
    let mut conn = Conn::new(Ep([10, 0, 0, 9], 3082), Ep([10, 0, 0, 3], 502), 1000, 5000);
    let mut list = conn.handshake();
    for i in 0..5 {
        list.push(conn.c2s(&read_holding(i, 1, 0, 10)));
    }
    let legacy = pcap(&timed(list.clone()));
    let ng = pcapng(&[(1, None)], &timed(list).into_iter().map(|(t, f)| (0, t / 1000, f)).collect::<Vec<_>>());
    for buf in [&legacy, &ng] {
        let whole = in_memory(buf);
        assert_eq!(whole.0.len(), 8);
        for step in [1, 2, 3, 7, 16, 100, 1 << 20] {
            assert_eq!(streamed(buf, step), whole, "read size {step}");
        }
        // Cut anywhere: the stream and the in-memory walk agree on frames and error kind.
        for cut in (0..buf.len()).step_by(5) {
            let (a, ea) = streamed(&buf[..cut], 13);
            let (b, eb) = in_memory(&buf[..cut]);
            assert_eq!(a, b, "cut at {cut}");
            assert_eq!(ea.is_some(), eb.is_some(), "cut at {cut}: {ea:?} / {eb:?}");
        }
    }
}

#[test]
fn streaming_refuses_a_record_larger_than_the_bound() {
    let mut buf = pcapng(&[(1, None)], &[]);
    buf.extend_from_slice(&6u32.to_le_bytes()); // EPB
    buf.extend_from_slice(&((MAX_RECORD as u32) + 64).to_le_bytes()); // block length past the bound
    buf.extend_from_slice(&[0; 64]);
    let (frames, err) = streamed(&buf, 1 << 20);
    assert!(frames.is_empty());
    assert!(matches!(err, Some(CaptureError::Corrupt { .. })), "{err:?}");
}

#[test]
fn streaming_reads_shared_captures_like_memory() {
    let Some(dir) = shared_pcaps() else { return };
    for name in ["zeek/modbusBig.pcap", "icsnpp-enip/multiple_service_packet_cip.pcapng", "zeek/fuzz-72.pcap"] {
        let buf = std::fs::read(dir.join(name)).unwrap();
        assert_eq!(streamed(&buf, 4096), in_memory(&buf), "{name}");
    }
}
