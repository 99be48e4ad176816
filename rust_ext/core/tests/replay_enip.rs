//! Replay of EtherNet/IP: captures (written here, or the shared third-party ones) through reassembly,
//! `enip::split`, a per-flow `EnipSession` and the real engine's `decide_enip`; every count exact.

mod capture_support;
mod enip_support;

use capture_support::{pcap, timed, Conn, Ep};
use serde_json::json;
use std::borrow::Cow;
use zonegate_core::capture::replay::{replay_capture, Report, Targets};
use zonegate_core::policy::{CipReason, Engine, Ir, Verdict};

/// 192.168.10.0/24 is engineering; the capture's controller is `plc` at 192.168.10.120, its
/// discovery peer `adapter` at 10.1.1.164. Engineering may read attribute lists of the Identity
/// (0x01), Message Router (0x02) and vendor class 0x8B, and any Connection Manager request to `plc`;
/// `scanner` (10.1.1.0/24) has no rule at all.
fn ir(mode: &str) -> String {
    json!({
        "version": 1, "mode": mode,
        "principals": [
            {"name": "engineering", "tls_roles": [], "subjects": [], "opcua_users": [], "sources": ["192.168.10.0/24"]},
            {"name": "scanner", "tls_roles": [], "subjects": [], "opcua_users": [], "sources": ["10.1.1.0/24"]}
        ],
        "devices": [
            {"name": "plc", "zone": "cell", "host": "192.168.10.120", "port": 44818, "units": null,
             "enip": {"host": "192.168.10.120", "port": 44818}},
            {"name": "adapter", "zone": "cell", "host": "10.1.1.164", "port": 44818, "units": null,
             "enip": {"host": "10.1.1.164", "port": 44818}},
            {"name": "pump", "zone": "cell", "host": "192.168.10.9", "port": 502, "units": null, "enip": null}
        ],
        "rules": [
            {"id": "engineering-lists", "principals": [0], "devices": [0], "units": null, "allow": [], "cip": [
                {"services": ["get_attribute_list"], "classes": [[1, 2], [0x8B, 0x8B]]},
                {"services": ["forward_open", "forward_close"]},
                {"services": ["read_tag"], "tags": [{"parts": [{"name": "recipe", "elements": null}]}],
                 "routes": [[[1, [0]]]]}
            ]}
        ]
    })
    .to_string()
}

fn replay_ir(ir_json: &str, capture: &[u8]) -> Report {
    let ir: Ir = serde_json::from_str(ir_json).unwrap();
    let mut engine = Engine::compile(&ir).unwrap();
    replay_capture(capture, &mut engine, Targets::from_ir(&ir), ir.rules.len(), 1000, |_, _| {}).unwrap()
}

fn count(map: &std::collections::BTreeMap<Cow<'static, str>, u64>, key: &str) -> u64 {
    map.get(key).copied().unwrap_or(0)
}

#[test]
fn enip_cip_example_counts_match_suricatas_expected_results() {
    let Some(capture) = enip_support::shared("suricata-verify/enip-keywords/enip_cip_example.pcap") else {
        return;
    };
    let r = replay_ir(&ir("enforce"), &capture);
    let c = &r.cip;
    // suricata-verify enip-keywords: cip_service:10 -> 41, enip_command:112 -> 267, enip_command:99 -> 2
    // (the command counts take requests and replies together).
    assert_eq!(count(&c.by_service, "multiple_service_packet"), 41);
    assert_eq!(count(&c.by_command, "send_unit_data") + count(&c.replies_by_command, "send_unit_data"), 267);
    assert_eq!(count(&c.by_command, "list_identity") + count(&c.replies_by_command, "list_identity"), 2);
    assert_eq!((count(&c.by_command, "send_unit_data"), count(&c.replies_by_command, "send_unit_data")), (134, 133));
    assert_eq!(c.requests, 135);
    assert_eq!(c.replies, 134);
    assert_eq!(c.flows, 3, "3033 (mid-connection), 5262 (ListIdentity), 37997 (SYN only)");
    // Every SendUnitData rides a connection opened before the capture began.
    assert_eq!(c.unseen_connection_requests, 134);
    assert_eq!(c.unmatched_replies, 0);
    // 41 packets of 11 Get Attribute List each, 92 + 1 single requests.
    assert_eq!(c.leaves, 41 * 11 + 93);
    assert_eq!(count(&c.by_leaf_service, "get_attribute_list"), 41 * 11 + 92);
    assert_eq!(count(&c.by_leaf_service, "set_attribute_list"), 1);
    assert_eq!(r.requests, 0, "no Modbus in this capture");
    assert_eq!(r.invalid_streams, 0);
    // Every Multiple Service Packet's second request reads class 0x69, 20 single requests class 0x73:
    // neither is allowed; one Set Attribute List is a service the rule does not grant. The ListIdentity
    // from 10.1.1.167 is allowed without a rule (the conduit answers it itself).
    let reasons: Vec<(u8, u64)> = c.by_reason.iter().map(|(k, v)| (*k, *v)).collect();
    let expected = [
        (CipReason::Allowed as u8, 73),
        (CipReason::ServiceNotAllowed as u8, 1),
        (CipReason::TargetNotAllowed as u8, 41 + 20),
    ];
    assert_eq!(reasons, expected);
    assert_eq!((c.allowed, c.denied, c.malformed), (73, 62, 0));
    assert_eq!(c.by_rule, vec![72]);
    assert_eq!(c.by_rule_denied, vec![62]);
    let first: Vec<(u64, Option<u32>, String)> = r
        .cip_denials
        .iter()
        .take(3)
        .map(|d| (d.frame, d.decision.denied_leaf, d.decision.target.to_lowercase()))
        .collect();
    assert_eq!(
        first,
        [
            (2, Some(1), "class 0x69 instance 0".to_string()),
            (7, Some(1), "class 0x69 instance 0".to_string()),
            (16, Some(0), "class 0x73 instance 1".to_string()),
        ]
    );
    let set = r.cip_denials.iter().find(|d| d.decision.reason == CipReason::ServiceNotAllowed).unwrap();
    assert_eq!((set.frame, set.leaf_service.as_deref()), (138, Some("set_attribute_list")));
    assert_eq!(set.decision.route, "");
    for d in &r.cip_denials {
        assert_eq!(d.decision.verdict, Verdict::Deny);
        assert_eq!(d.decision.command, 0x70);
        assert_eq!(d.server_port, 44818);
        assert_eq!(d.principal, 0);
        assert_eq!(d.device, 0);
    }
}

#[test]
fn monitor_mode_forwards_what_enforce_refuses() {
    let Some(capture) = enip_support::shared("suricata-verify/enip-keywords/enip_cip_example.pcap") else {
        return;
    };
    let enforce = replay_ir(&ir("enforce"), &capture);
    let monitor = replay_ir(&ir("monitor"), &capture);
    assert_eq!(monitor.cip.would_deny, enforce.cip.denied - enforce.cip.malformed);
    assert_eq!(monitor.cip.allowed, enforce.cip.allowed);
    assert!(monitor
        .cip_denials
        .iter()
        .all(|d| d.decision.verdict == Verdict::WouldDeny || d.decision.reason == CipReason::Malformed));
}

#[test]
fn list_identity_capture() {
    let Some(capture) = enip_support::shared("suricata-verify/enip-alert/enip_test1.pcap") else {
        return;
    };
    let r = replay_ir(&ir("enforce"), &capture);
    assert_eq!(count(&r.cip.by_command, "list_identity"), 1);
    assert_eq!(count(&r.cip.replies_by_command, "list_identity"), 1);
    assert_eq!(r.cip.unmatched_replies, 0, "the reply answers the request");
    // 172.25.23.1 is no principal's: even ListIdentity is refused to an unknown principal.
    assert_eq!(r.cip.denied, 1);
    assert_eq!(r.cip.by_reason.get(&(CipReason::UnknownPrincipal as u8)), Some(&1));
}

const ENGINEER: Ep = Ep([192, 168, 10, 105], 50123);
const PLC: Ep = Ep([192, 168, 10, 120], 44818);

fn read_tag(tag: &str) -> Vec<u8> {
    let mut path = vec![0x91, tag.len() as u8];
    path.extend_from_slice(tag.as_bytes());
    if tag.len() % 2 == 1 {
        path.push(0);
    }
    [vec![0x4C, (path.len() / 2) as u8], path, vec![1, 0]].concat()
}

/// The device's successful Forward Open reply for enip_support's triad with `serial`, O->T id `ot`.
fn forward_open_reply(serial: u16, ot: u32) -> Vec<u8> {
    let mut v = vec![0xD4, 0x00, 0x00, 0x00];
    v.extend_from_slice(&ot.to_le_bytes());
    v.extend_from_slice(&0x0002_0001u32.to_le_bytes());
    v.extend_from_slice(&serial.to_le_bytes());
    v.extend_from_slice(&[0x4D, 0x00, 0x78, 0x56, 0x34, 0x12]);
    v.extend_from_slice(&5_000_000u32.to_le_bytes());
    v.extend_from_slice(&5_000_000u32.to_le_bytes());
    v.extend_from_slice(&[0x00, 0x00]);
    v
}

/// A captured class 3 session: Forward Open (to slot 0) answered, then connected Read Tags: one the
/// rule allows through slot 0, one of a tag it does not name, one on an id no Forward Open gave.
fn connected_session(split_last: bool) -> Vec<u8> {
    let mut c = Conn::new(ENGINEER, PLC, 1000, 9000);
    let mut frames = c.handshake();
    let fo = enip_support::send_rr(&enip_support::forward_open(false, 7));
    frames.push(c.c2s(&fo));
    frames.push(c.s2c(&enip_support::send_rr(&forward_open_reply(7, 0xAB00_0001))));
    frames.push(c.c2s(&enip_support::send_unit(0xAB00_0001, 1, &read_tag("Recipe"))));
    frames.push(c.s2c(&enip_support::send_unit(0x0002_0001, 1, &[0xCC, 0, 0, 0, 0xC4, 0, 1, 0, 0, 0])));
    let denied = enip_support::send_unit(0xAB00_0001, 2, &read_tag("Speed"));
    if split_last {
        // One message over two segments, the second also carrying the next message.
        let unknown = enip_support::send_unit(0x0BAD_0001, 3, &read_tag("Recipe"));
        frames.push(c.c2s(&denied[..30]));
        frames.push(c.c2s(&[&denied[30..], &unknown[..]].concat()));
    } else {
        frames.push(c.c2s(&denied));
    }
    frames.extend(c.close());
    pcap(&timed(frames))
}

#[test]
fn connected_requests_take_the_route_their_forward_open_named() {
    let r = replay_ir(&ir("enforce"), &connected_session(true));
    let c = &r.cip;
    assert_eq!(c.requests, 4);
    assert_eq!(c.allowed, 2, "Forward Open, Read Tag Recipe through slot 0");
    assert_eq!(c.denied, 2);
    assert_eq!(c.unseen_connection_requests, 0, "the flow's start was captured");
    assert_eq!(c.unmatched_replies, 0);
    assert_eq!(c.by_rule, vec![2]);
    assert_eq!(c.by_rule_denied, vec![1]);
    assert_eq!(count(&c.by_service, "forward_open"), 1);
    assert_eq!(count(&c.by_service, "read_tag"), 3);
    let [speed, unknown] = &r.cip_denials[..] else { panic!("{:?}", r.cip_denials) };
    assert_eq!(speed.decision.reason, CipReason::TargetNotAllowed);
    assert_eq!(speed.decision.target, "Speed");
    assert_eq!(speed.decision.route, "1,0");
    assert_eq!(speed.leaf_service.as_deref(), Some("read_tag"));
    assert_eq!(speed.decision.rule, Some(0));
    assert_eq!(speed.frame, 9, "reported at the frame holding the message's last byte");
    assert_eq!(unknown.decision.reason, CipReason::Malformed);
    assert_eq!(unknown.decision.malformed, Some("unknown_connection"));
    assert_eq!(unknown.frame, 9);
}

#[test]
fn modbus_and_enip_flows_share_a_capture_and_tls_is_skipped() {
    let pump = Ep([192, 168, 10, 9], 502);
    let mut modbus = Conn::new(Ep([192, 168, 10, 105], 40000), pump, 10, 20);
    let mut enip = Conn::new(ENGINEER, PLC, 1000, 9000);
    let mut tls = Conn::new(Ep([192, 168, 10, 105], 40001), Ep([192, 168, 10, 120], 2221), 30, 40);
    let mut frames = modbus.handshake();
    frames.extend(enip.handshake());
    frames.extend(tls.handshake());
    frames.push(modbus.c2s(&capture_support::read_holding(1, 1, 0, 2)));
    frames.push(enip.c2s(&enip_support::encap(0x63, 0, b"discover", &[])));
    frames.push(tls.c2s(&[0x16, 0x03, 0x01, 0x00, 0x05, 1, 2, 3, 4, 5]));
    frames.push(enip.c2s(&enip_support::encap(0x72, 0, b"indicate", &[])));
    let r = replay_ir(&ir("enforce"), &pcap(&timed(frames)));
    assert_eq!((r.requests, r.cip.requests), (1, 2));
    assert_eq!(r.denials.len(), 1, "no Modbus rule for engineering on pump");
    assert_eq!(r.denials[0].device, 2);
    assert_eq!(r.cip.allowed, 1, "ListIdentity");
    let refused = &r.cip_denials[0].decision;
    assert_eq!((refused.reason, refused.encap_status), (CipReason::CommandNotAllowed, Some(1)));
    assert_eq!(r.cip.flows, 1, "the 44818 flow and nothing else");
    assert_eq!(r.flows, 2);
    assert_eq!(r.anomalies.other_tcp_segments, 4, "EtherNet/IP over TLS is not read");
    assert_eq!(r.invalid_streams, 0);
}

#[test]
fn a_flow_joined_mid_message_realigns_on_a_message_start() {
    let mut c = Conn::new(ENGINEER, PLC, 1000, 9000);
    let first = enip_support::send_rr(&read_tag("Recipe"));
    let second = enip_support::send_rr(&read_tag("Speed"));
    // The capture starts with the tail of a message, then a whole one: the tail is dropped.
    let tail = c.c2s(&first[10..]);
    let frames = vec![tail, c.c2s(&second)];
    let r = replay_ir(&ir("enforce"), &pcap(&timed(frames)));
    assert_eq!(r.cip.requests, 1);
    assert_eq!(r.anomalies.resync_dropped_bytes, (first.len() - 10) as u64);
    assert_eq!(r.anomalies.midstream_flows, 1);
    assert_eq!(r.cip_denials[0].decision.target, "Speed");
    assert_eq!(r.cip_denials[0].decision.reason, CipReason::ServiceNotAllowed, "read_tag needs the route 1,0");

    // With the start captured, bytes that do not frame make the direction invalid, as the conduit
    // would close the connection.
    let mut c = Conn::new(ENGINEER, PLC, 1000, 9000);
    let mut frames = c.handshake();
    let mut huge = enip_support::encap(0x6F, 0, b"oversize", &[]);
    huge[2..4].copy_from_slice(&65535u16.to_le_bytes());
    frames.push(c.c2s(&huge));
    let r = replay_ir(&ir("enforce"), &pcap(&timed(frames)));
    assert_eq!((r.cip.requests, r.invalid_streams), (0, 1));
    assert_eq!(r.invalid_list[0].reason.name(), "length");
}

#[test]
fn damaged_enip_captures_are_counted_never_crash() {
    // A connected session with its Forward Open, then bytes flipped all over it (headers included).
    let clean = connected_session(true);
    let ir_json = ir("enforce");
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    for _ in 0..400 {
        let mut buf = clean.clone();
        for _ in 0..6 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let at = 24 + (x as usize) % (buf.len() - 24);
            buf[at] ^= (x >> 32) as u8 | 1;
        }
        let ir: Ir = serde_json::from_str(&ir_json).unwrap();
        let mut engine = Engine::compile(&ir).unwrap();
        if let Ok(r) = replay_capture(&buf, &mut engine, Targets::from_ir(&ir), 1, 10, |_, _| {}) {
            let c = &r.cip;
            assert_eq!(c.allowed + c.denied + c.would_deny, c.requests);
            assert!(c.malformed <= c.denied);
            assert!(c.allowed <= 2, "no damage makes more of this session allowed: {c:?}");
        }
    }
}
