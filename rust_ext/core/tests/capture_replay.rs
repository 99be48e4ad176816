//! Replay end to end: capture bytes -> reassembly -> MBAP split -> the real engine -> counters.
//! Every capture here is written by the test (or is a shared third-party capture), and every count is exact.

mod capture_support;

use capture_support::*;
use std::collections::BTreeMap;
use zonegate_core::capture::replay::{replay_capture, Report, StreamInvalid, Targets, UNKNOWN};
use zonegate_core::policy::{Engine, Ir, Reason, Verdict};

/// operator: 10.0.0.0/24; hmi: 10.0.0.50/32 (more specific); plc: 10.0.0.3:502; pump: 10.0.0.4:5020.
const IR: &str = r#"{
  "version": 1, "mode": "enforce",
  "principals": [
    {"name": "operator", "tls_roles": [], "subjects": [], "opcua_users": [], "sources": ["10.0.0.0/24"]},
    {"name": "hmi", "tls_roles": [], "subjects": [], "opcua_users": [], "sources": ["10.0.0.50/32"]}
  ],
  "devices": [
    {"name": "plc", "zone": "cell", "host": "10.0.0.3", "port": 502, "units": null},
    {"name": "pump", "zone": "cell", "host": "10.0.0.4", "port": 5020, "units": null}
  ],
  "rules": [
    {"id": "operator-read", "principals": [0], "devices": [0, 1], "units": null, "allow": [
      {"functions": [[3, null]], "max_quantity": null, "rate": null,
       "ranges": {"holding_registers": [{"start": 0, "end": 99, "min": null, "max": null, "signed": false}],
                  "coils": [], "discrete_inputs": [], "input_registers": [], "file_records": []}}]},
    {"id": "hmi-setpoint", "principals": [1], "devices": [0], "units": null, "allow": [
      {"functions": [[6, null]], "max_quantity": null, "rate": null,
       "ranges": {"holding_registers": [{"start": 0, "end": 9, "min": 0, "max": 100, "signed": false}],
                  "coils": [], "discrete_inputs": [], "input_registers": [], "file_records": []}}]}
  ]
}"#;

/// No rules at all: every request is denied and listed, which makes the denial list a full trace.
const DENY_ALL: &str = r#"{"version": 1, "mode": "enforce", "principals": [{"name": "anyone"}],
  "devices": [{"name": "any", "host": "", "port": 502, "units": null}], "rules": []}"#;

const OPERATOR: Ep = Ep([10, 0, 0, 9], 3082);
const HMI: Ep = Ep([10, 0, 0, 50], 4001);
const PLC: Ep = Ep([10, 0, 0, 3], 502);

fn replay_with(ir_json: &str, capture: &[u8], principal: Option<u32>) -> Report {
    let ir: Ir = serde_json::from_str(ir_json).unwrap();
    let mut engine = Engine::compile(&ir).unwrap();
    let mut targets = Targets::from_ir(&ir);
    if let Some(p) = principal {
        targets = targets.with_principal(p);
    }
    replay_capture(capture, &mut engine, targets, ir.rules.len(), 1_000_000, |_, _| {}).unwrap()
}

fn replay(capture: &[u8]) -> Report {
    replay_with(IR, capture, None)
}

fn reasons(r: &Report) -> BTreeMap<&'static str, u64> {
    let all = [
        Reason::Allowed,
        Reason::UnknownPrincipal,
        Reason::Malformed,
        Reason::NoMatchingRule,
        Reason::UnitNotAllowed,
        Reason::FunctionNotAllowed,
        Reason::AddressOutOfRange,
        Reason::QuantityExceeded,
        Reason::ValueOutOfBounds,
        Reason::RateExceeded,
    ];
    all.iter().filter(|x| r.by_reason[**x as usize] > 0).map(|x| (x.name(), r.by_reason[*x as usize])).collect()
}

fn reads(n: u16) -> Vec<u8> {
    (0..n).flat_map(|i| read_holding(i + 1, 1, 10 * i, 10)).collect()
}

#[test]
fn several_adus_per_segment_and_one_adu_over_several_segments() {
    let mut c = Conn::new(OPERATOR, PLC, 1000, 9000);
    let stream = reads(5); // 5 x 12 bytes
    let mut frames = c.handshake();
    frames.push(c.c2s(&stream[..30])); // two ADUs and half of the third
    frames.push(c.c2s(&stream[30..31])); // one byte
    frames.push(c.c2s(&stream[31..])); // the rest: ends on an ADU boundary
    frames.push(c.s2c(&[holding_reply(1, 1, 10), holding_reply(2, 1, 10)].concat()));
    frames.extend(c.close());
    let r = replay(&pcap(&timed(frames)));
    assert_eq!((r.requests, r.allowed, r.denied, r.replies), (5, 5, 0, 2));
    assert_eq!((r.by_rule.clone(), r.by_rule_denied.clone()), (vec![5, 0], vec![0, 0]));
    assert_eq!(r.by_function[3], 5);
    assert_eq!(r.flows, 1);
    assert_eq!(r.invalid_streams, 0);
}

#[test]
fn server_reply_first_is_still_a_reply() {
    // The capture starts mid-connection with the server talking: requests are still the
    // client-to-port-502 direction.
    let mut c = Conn::new(OPERATOR, PLC, 50_000, 70_000);
    let frames = vec![
        c.s2c(&holding_reply(7, 1, 10)),
        c.c2s(&read_holding(8, 1, 0, 10)),
        c.s2c(&holding_reply(8, 1, 10)),
        c.c2s(&read_holding(9, 1, 200, 10)), // outside 0..=99
    ];
    let r = replay(&pcap(&timed(frames)));
    assert_eq!((r.requests, r.allowed, r.denied, r.replies), (2, 1, 1, 2));
    assert_eq!(r.anomalies.midstream_flows, 1);
    assert_eq!(reasons(&r), BTreeMap::from([("allowed", 1), ("address_out_of_range", 1)]));
    assert_eq!(r.denials[0].frame, 4);
    assert_eq!(r.denials[0].outcome.rule, Some(0));
    assert_eq!((r.by_rule.clone(), r.by_rule_denied.clone()), (vec![1, 0], vec![1, 0]));
}

#[test]
fn out_of_order_and_retransmitted_segments_count_once() {
    let mut c = Conn::new(OPERATOR, PLC, 1000, 9000);
    let mut frames = c.handshake();
    let a = read_holding(1, 1, 0, 1);
    let b = read_holding(2, 1, 1, 1);
    let d = read_holding(3, 1, 2, 1);
    let first = c.cseq;
    frames.push(c.c2s_at(first + 12, &b)); // second request first
    frames.push(c.c2s_at(first, &a)); // the hole fills
    frames.push(c.c2s_at(first, &a)); // retransmission
    frames.push(c.c2s_at(first + 6, &[a[6..].to_vec(), b[..6].to_vec()].concat())); // overlap, nothing new
    frames.push(c.c2s_at(first + 24, &d));
    frames.push(c.c2s_at(first + 24, &d)); // retransmission
    let r = replay(&pcap(&timed(frames)));
    assert_eq!((r.requests, r.allowed), (3, 3));
    assert_eq!(r.anomalies.out_of_order, 1);
    assert_eq!(r.anomalies.retransmitted, 3);
}

#[test]
fn principal_is_the_most_specific_source_network() {
    let mut hmi = Conn::new(HMI, PLC, 1, 1);
    let mut op = Conn::new(OPERATOR, PLC, 1, 1);
    let mut stranger = Conn::new(Ep([192, 168, 1, 1], 5555), PLC, 1, 1);
    let mut frames = hmi.handshake();
    frames.extend(op.handshake());
    frames.extend(stranger.handshake());
    frames.push(hmi.c2s(&write_register(1, 1, 5, 50))); // allowed by hmi-setpoint
    frames.push(hmi.c2s(&write_register(2, 1, 5, 500))); // value out of bounds
    frames.push(op.c2s(&write_register(1, 1, 5, 50))); // operator may only read
    frames.push(stranger.c2s(&read_holding(1, 1, 0, 1))); // no principal
    let r = replay(&pcap(&timed(frames)));
    assert_eq!((r.requests, r.allowed, r.denied), (4, 1, 3));
    assert_eq!(
        reasons(&r),
        BTreeMap::from([
            ("allowed", 1),
            ("value_out_of_bounds", 1),
            ("function_not_allowed", 1),
            ("unknown_principal", 1)
        ])
    );
    let who: Vec<(u32, u64, Option<u32>)> = r.denials.iter().map(|d| (d.principal, d.frame, d.outcome.rule)).collect();
    assert_eq!(who, vec![(1, 11, Some(1)), (0, 12, Some(0)), (UNKNOWN, 13, None)]);
}

#[test]
fn principal_override_applies_to_every_flow() {
    let mut s = Conn::new(Ep([192, 168, 1, 1], 5555), PLC, 1, 1);
    let mut frames = s.handshake();
    frames.push(s.c2s(&read_holding(1, 1, 0, 1)));
    let r = replay_with(IR, &pcap(&timed(frames)), Some(0));
    assert_eq!((r.requests, r.allowed), (1, 1));
}

#[test]
fn non_modbus_stream_is_counted_and_skipped() {
    let mut web = Conn::new(Ep([10, 0, 0, 7], 40000), PLC, 1, 1);
    let mut op = Conn::new(OPERATOR, PLC, 1, 1);
    let mut frames = web.handshake();
    frames.extend(op.handshake());
    frames.push(web.c2s(b"GET / HTTP/1.1\r\nHost: plc\r\n\r\n"));
    frames.push(web.c2s(&read_holding(1, 1, 0, 1))); // after the stream went bad: never decided
    frames.push(op.c2s(&read_holding(1, 1, 0, 1)));
    frames.push(web.s2c(b"HTTP/1.1 400 Bad Request\r\n\r\n"));
    let r = replay(&pcap(&timed(frames)));
    assert_eq!((r.requests, r.allowed), (1, 1));
    assert_eq!(r.invalid_streams, 2);
    let got: Vec<(bool, StreamInvalid)> = r.invalid_list.iter().map(|s| (s.requests, s.reason)).collect();
    assert_eq!(got, vec![(true, StreamInvalid::ProtocolId), (false, StreamInvalid::ProtocolId)]);
}

#[test]
fn bad_length_field_makes_the_stream_invalid() {
    let mut c = Conn::new(OPERATOR, PLC, 1, 1);
    let mut frames = c.handshake();
    frames.push(c.c2s(&[0, 1, 0, 0, 0x01, 0x00, 1, 3])); // length 256 > 254
    let r = replay(&pcap(&timed(frames)));
    assert_eq!(r.requests, 0);
    assert_eq!(r.invalid_list[0].reason, StreamInvalid::Length);
}

#[test]
fn midstream_capture_realigns_on_a_segment_start() {
    // Capture starts inside a request: the first segment is its tail, the next starts a new ADU.
    let mut c = Conn::new(OPERATOR, PLC, 1, 1);
    let whole = read_holding(1, 1, 0, 1);
    let frames = vec![c.c2s(&whole[5..]), c.c2s(&read_holding(2, 1, 0, 2)), c.c2s(&read_holding(3, 1, 0, 3))];
    let r = replay(&pcap(&timed(frames)));
    assert_eq!((r.requests, r.allowed), (2, 2));
    assert_eq!(r.anomalies.resync_dropped_bytes, 7);
    assert_eq!(r.invalid_streams, 0);
}

#[test]
fn lost_segment_drops_only_the_cut_adu() {
    let mut c = Conn::new(OPERATOR, PLC, 1, 1);
    let mut frames = c.handshake();
    let x = read_holding(1, 1, 0, 1);
    frames.push(c.c2s(&x[..8]));
    let _lost = c.c2s(&x[8..]); // never captured
    frames.push(c.c2s(&read_holding(2, 1, 0, 2)));
    frames.push(c.c2s(&read_holding(3, 1, 0, 3)));
    frames.extend(c.close());
    let r = replay(&pcap(&timed(frames)));
    assert_eq!(r.requests, 2);
    assert_eq!(r.anomalies.gaps, 1);
    assert_eq!(r.anomalies.gap_bytes, 4);
    assert_eq!(r.anomalies.partial_adu_bytes, 8);
}

#[test]
fn device_port_named_by_the_policy_is_a_server_port() {
    let pump = Ep([10, 0, 0, 4], 5020);
    let mut c = Conn::new(OPERATOR, pump, 1, 1);
    let mut frames = c.handshake();
    frames.push(c.s2c(&holding_reply(9, 1, 1))); // the server speaks first
    frames.push(c.c2s(&read_holding(1, 1, 0, 1)));
    let r = replay(&pcap(&timed(frames.clone())));
    assert_eq!((r.requests, r.allowed, r.replies), (1, 1, 1));
    // With no device on 5020, the same traffic is not Modbus to replay.
    let r = replay_with(DENY_ALL, &pcap(&timed(frames)), None);
    assert_eq!((r.requests, r.flows), (0, 0));
    assert_eq!(r.anomalies.other_tcp_segments, 5);
}

#[test]
fn pcapng_and_pcap_give_the_same_report() {
    let mut c = Conn::new(OPERATOR, PLC, 1, 1);
    let mut frames = c.handshake();
    frames.push(c.c2s(&reads(3)));
    frames.push(c.c2s(&read_holding(4, 1, 500, 1)));
    let list = timed(frames);
    let ng: Vec<(u32, u64, Vec<u8>)> = list.iter().map(|(t, f)| (0, *t / 1000, f.clone())).collect();
    let a = replay(&pcap(&list));
    let b = replay(&pcapng(&[(1, None)], &ng));
    assert_eq!((a.requests, a.allowed, a.denied), (4, 3, 1));
    assert_eq!((b.requests, b.allowed, b.denied), (4, 3, 1));
    assert_eq!(a.denials, b.denials);
}

#[test]
fn ipv6_flows_replay() {
    let client = ([0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 9], 3000);
    let server = ([0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 3], 502);
    let frames =
        vec![tcp6_frame(client, server, 10, SYN, b""), tcp6_frame(client, server, 11, ACK, &read_holding(1, 1, 0, 1))];
    let r = replay_with(DENY_ALL, &pcap(&timed(frames)), Some(0));
    assert_eq!((r.requests, r.denied), (1, 1));
}

#[test]
fn data_after_reset_is_not_replayed() {
    let mut c = Conn::new(OPERATOR, PLC, 1, 1);
    let mut frames = c.handshake();
    frames.push(c.c2s(&read_holding(1, 1, 0, 1)));
    frames.push(tcp_frame(OPERATOR, PLC, c.cseq, RST, b""));
    frames.push(c.c2s(&read_holding(2, 1, 0, 1)));
    // A new connection on the same ports starts with a new SYN.
    let mut again = Conn::new(OPERATOR, PLC, 777, 888);
    frames.extend(again.handshake());
    frames.push(again.c2s(&read_holding(3, 1, 0, 1)));
    let r = replay(&pcap(&timed(frames)));
    assert_eq!((r.requests, r.flows), (2, 2));
    assert_eq!(r.anomalies.data_after_close, 1);
}

#[test]
fn malformed_requests_are_counted_as_malformed() {
    let mut c = Conn::new(OPERATOR, PLC, 1, 1);
    let mut frames = c.handshake();
    frames.push(c.c2s(&read_holding(1, 1, 0, 0))); // quantity 0
    let r = replay(&pcap(&timed(frames)));
    assert_eq!((r.requests, r.denied, r.malformed), (1, 1, 1));
    assert_eq!(r.denials[0].outcome.malformed, 3, "bad_quantity");
    assert_eq!(r.denials[0].outcome.verdict, Verdict::Deny as u8);
}

#[test]
fn random_damage_never_panics() {
    let mut c = Conn::new(OPERATOR, PLC, 1, 1);
    let mut frames = c.handshake();
    for i in 0..20u16 {
        frames.push(c.c2s(&read_holding(i, 1, i, 3)));
        frames.push(c.s2c(&holding_reply(i, 1, 3)));
    }
    let clean = pcap(&timed(frames));
    // Deterministic xorshift: flip bytes all over the capture, including headers.
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    for _ in 0..400 {
        let mut buf = clean.clone();
        for _ in 0..8 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let at = 24 + (x as usize) % (buf.len() - 24);
            buf[at] ^= (x >> 32) as u8 | 1;
        }
        let ir: Ir = serde_json::from_str(IR).unwrap();
        let mut engine = Engine::compile(&ir).unwrap();
        let _ = replay_capture(&buf, &mut engine, Targets::from_ir(&ir), 2, 10, |_, _| {});
    }
}

/// Requests by (function, unit), from a deny-all replay's full denial list.
/// Requests counted by (function code, unit id).
type ByFunctionAndUnit = BTreeMap<(u8, u8), u64>;
/// A capture's name and what tshark counts in it.
type Expected<'a> = &'a [(&'a str, &'a [((u8, u8), u64)])];

fn requests_by_function_and_unit(name: &str) -> Option<(Report, ByFunctionAndUnit)> {
    let dir = shared_pcaps()?;
    let buf = std::fs::read(dir.join(name)).unwrap();
    let r = replay_with(DENY_ALL, &buf, Some(0));
    let mut by = BTreeMap::new();
    for d in &r.denials {
        *by.entry((d.function, d.unit)).or_insert(0) += 1;
    }
    assert_eq!(r.denials.len() as u64, r.requests);
    Some((r, by))
}

#[test]
fn shared_captures_give_tsharks_requests() {
    // Requests per (function code, unit) as tshark 4.0 counts them (Modbus/TCP towards port 502).
    let expected: Expected<'_> = &[
        (
            "suricata-verify/modbus/modbus.pcap",
            &[((1, 10), 2), ((3, 10), 1), ((5, 10), 2), ((6, 10), 1), ((8, 10), 8), ((17, 10), 2), ((43, 10), 2)],
        ),
        (
            "icsnpp-modbus/modbus_example.pcap",
            &[
                ((1, 4), 1),
                ((1, 5), 1),
                ((2, 4), 1),
                ((2, 5), 1),
                ((3, 0), 1),
                ((3, 4), 1),
                ((3, 5), 1),
                ((4, 4), 1),
                ((4, 5), 1),
                ((5, 6), 1),
                ((6, 7), 1),
                ((7, 2), 1),
                ((8, 2), 1),
                ((15, 7), 1),
                ((16, 7), 1),
                ((17, 2), 1),
                ((20, 8), 1),
                ((21, 8), 1),
                ((22, 4), 2),
                ((23, 6), 2),
                ((24, 10), 1),
                ((43, 1), 1),
            ],
        ),
        ("zeek/modbusBig.pcap", &[((1, 255), 1387), ((5, 255), 1387)]),
        ("zeek/modbusSmall.pcap", &[((1, 1), 8), ((15, 1), 8)]),
        ("zeek/modbus-eit.pcap", &[((43, 0), 1), ((43, 255), 1)]),
        ("zeek/4SICS-GeekLounge-151022-min.pcap", &[((23, 1), 1)]),
        ("zeek/fuzz-1011.pcap", &[((4, 255), 2)]),
        ("zeek/modbus-and-non-modbus-p502.pcap", &[((1, 10), 2), ((3, 10), 1), ((5, 10), 2), ((6, 10), 1)]),
    ];
    for (name, want) in expected {
        let Some((r, got)) = requests_by_function_and_unit(name) else { return };
        let want: BTreeMap<(u8, u8), u64> = want.iter().copied().collect();
        assert_eq!(got, want, "{name}");
        assert!(r.capture_error.is_none(), "{name}");
    }
}

#[test]
fn non_modbus_on_port_502_is_five_invalid_streams() {
    // Zeek's baseline: five connections to port 502 whose first bytes are not MBAP (protocol id).
    let Some((r, _)) = requests_by_function_and_unit("zeek/modbus-and-non-modbus-p502.pcap") else { return };
    let client_side: Vec<_> = r.invalid_list.iter().filter(|s| s.requests).map(|s| s.client_port).collect();
    assert_eq!(client_side, vec![38129, 60175, 58380, 33752, 7488]);
    assert!(r.invalid_list.iter().filter(|s| s.requests).all(|s| s.reason == StreamInvalid::ProtocolId));
}

#[test]
fn fuzzed_captures_flag_anomalies_without_panic() {
    let Some((r, _)) = requests_by_function_and_unit("zeek/fuzz-72.pcap") else { return };
    let a = r.anomalies;
    assert!(a.undecodable_frames > 0, "frames with IP lengths beyond the capture");
    assert!(a.retransmitted + a.out_of_order + a.gaps > 0);
    let Some((r, _)) = requests_by_function_and_unit("zeek/fuzz-1011.pcap") else { return };
    // Frame 1 asks FC 4 for 147 input registers (more than 125): malformed; frame 5 is well formed.
    assert_eq!((r.requests, r.malformed), (2, 1));
    assert_eq!(r.denials[0].outcome.malformed, 3, "bad_quantity");
    assert_eq!(r.denials[0].frame, 1);
    assert!(r.anomalies.gaps > 0 && r.anomalies.undecodable_frames == 1, "a bogus IP version, sequence jumps");
}

#[test]
fn streamed_and_in_memory_replays_agree() {
    use zonegate_core::capture::replay::replay_stream;
    let Some(dir) = shared_pcaps() else { return };
    for name in ["suricata-verify/modbus/modbus.pcap", "zeek/modbusBig.pcap", "zeek/fuzz-72.pcap"] {
        let buf = std::fs::read(dir.join(name)).unwrap();
        let ir: Ir = serde_json::from_str(IR).unwrap();
        let mut a_engine = Engine::compile(&ir).unwrap();
        let mut b_engine = Engine::compile(&ir).unwrap();
        let a =
            replay_capture(&buf, &mut a_engine, Targets::from_ir(&ir).with_principal(0), 2, 100, |_, _| {}).unwrap();
        let b = replay_stream(
            &buf[..],
            buf.len(),
            &mut b_engine,
            Targets::from_ir(&ir).with_principal(0),
            2,
            100,
            |_, _| {},
        )
        .unwrap();
        assert_eq!((a.requests, a.allowed, a.replies, a.by_reason), (b.requests, b.allowed, b.replies, b.by_reason));
        assert_eq!(a.denials, b.denials, "{name}");
        assert_eq!(a.anomalies, b.anomalies, "{name}");
    }
    let ir: Ir = serde_json::from_str(IR).unwrap();
    let mut engine = Engine::compile(&ir).unwrap();
    let err = replay_stream(&b"not a capture"[..], 13, &mut engine, Targets::from_ir(&ir), 2, 1, |_, _| {}).err();
    assert_eq!(err, Some(zonegate_core::capture::pcap::CaptureError::NotACapture));
}

#[test]
fn device_matching_rule() {
    use std::net::IpAddr;
    use zonegate_core::capture::replay::{Cidr, DeviceAddr};
    let ip = |s: &str| s.parse::<IpAddr>().unwrap();
    let plc = DeviceAddr { host: Some(ip("10.0.0.3")), port: 502 };
    let pump = DeviceAddr { host: Some(ip("10.0.0.4")), port: 5020 };
    let named = DeviceAddr { host: None, port: 502 }; // a host name cannot match an address
    let t = Targets::new(&[], vec![plc.clone(), pump.clone(), named]);
    assert_eq!(t.device(ip("10.0.0.3"), 502), 0, "host and port");
    assert_eq!(t.device(ip("10.9.9.9"), 5020), 1, "the only device on that port");
    assert_eq!(t.device(ip("10.9.9.9"), 502), UNKNOWN, "two devices on 502, neither at this address");
    let one = Targets::new(&[], vec![pump]);
    assert_eq!(one.device(ip("10.9.9.9"), 502), 0, "the policy's only device");
    assert_eq!(one.with_device(7).device(ip("10.0.0.4"), 5020), 7, "--device wins");

    let nets = [vec![Cidr::parse("10.0.0.0/8").unwrap()], vec![Cidr::parse("10.1.0.0/16").unwrap()]];
    let t = Targets::new(&nets, vec![plc]);
    assert_eq!(t.principal(ip("10.1.2.3")), 1, "longest prefix");
    assert_eq!(t.principal(ip("10.2.2.3")), 0);
    assert_eq!(t.principal(ip("fd00::1")), UNKNOWN);
    assert_eq!(Cidr::parse("fd00::/8").map(|c| c.contains(ip("fd00::1"))), Some(true));
    assert_eq!(Cidr::parse("10.0.0.1"), Some(Cidr { addr: ip("10.0.0.1"), prefix: 32 }));
    assert_eq!(Cidr::parse("10.0.0.0/33"), None);
    assert_eq!(Cidr::parse("0.0.0.0/0").map(|c| c.contains(ip("192.168.1.1"))), Some(true));
}
