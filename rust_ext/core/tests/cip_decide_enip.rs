//! Encapsulation messages through the engine (docs/cip-engine.md sections 6 and 8): session commands,
//! refused commands, connected messaging through an `EnipSession` with real Forward Open bytes (the
//! vectors of enip_support), replies applied to the table, and the shared captures.

mod enip_support;

use enip_support::*;
use serde_json::{json, Value};
use zonegate_core::enip::Command;
use zonegate_core::policy::{CipDecision, CipReason, Engine, EnipSession, Verdict};

const OPERATOR: u32 = 0;
const PLC: u32 = 0;
/// The O->T connection id the simulated device picks.
const OT_ID: u32 = 0xC0FF_EE00;
/// The T->O connection id [`forward_open_data`] asks for.
const TO_ID: u32 = 0x0002_0001;

fn pattern(name: &str) -> Value {
    json!({"parts": [{"name": name, "elements": null}]})
}

/// Operator: Forward Open/Close, Read Tag of `Recipe` only behind backplane slot 0 (the route of the
/// vectors' connection path), Get Attribute List/All on any class.
fn engine(mode: &str, connect: bool) -> Engine {
    let mut cip = vec![
        json!({"services": ["read_tag"], "tags": [pattern("recipe")], "routes": [[[1, [0]]]]}),
        json!({"services": ["get_attribute_list", "get_attribute_all"], "classes": [[0, 4294967295u32]]}),
    ];
    if connect {
        cip.insert(0, json!({"services": ["forward_open", "large_forward_open", "forward_close"]}));
    }
    let ir = json!({
        "version": 1,
        "mode": mode,
        "principals": [{"name": "operator", "tls_roles": ["Operator"], "subjects": [], "opcua_users": [], "sources": []}],
        "devices": [{"name": "press-plc", "zone": "cell-a", "host": "192.168.10.12", "port": 502, "units": null,
                     "enip": {"host": "192.168.10.12", "port": 44818}}],
        "rules": [{"id": "operator-press", "principals": [0], "devices": [0], "units": null, "allow": [], "cip": cip}],
    });
    Engine::from_json(&ir.to_string()).expect("valid IR")
}

fn sym(name: &str) -> Vec<u8> {
    let mut v = vec![0x91, name.len() as u8];
    v.extend_from_slice(name.as_bytes());
    if name.len() % 2 == 1 {
        v.push(0);
    }
    v
}

/// Read Tag of one element of `tag` (a single symbol).
fn read_tag(tag: &str) -> Vec<u8> {
    let path = sym(tag);
    [vec![0x4C, (path.len() / 2) as u8], path, vec![1, 0]].concat()
}

/// A successful Forward Open reply (CIP) for the vectors' triad with connection `serial`.
fn forward_open_reply(serial: u16, ot_id: u32) -> Vec<u8> {
    let mut v = vec![0xD4, 0x00, 0x00, 0x00]; // reply to 0x54, reserved, status 0, no extended status
    v.extend_from_slice(&ot_id.to_le_bytes()); // O->T connection id, picked by the device
    v.extend_from_slice(&TO_ID.to_le_bytes()); // T->O connection id, as asked
    v.extend_from_slice(&serial.to_le_bytes()); // connection serial
    v.extend_from_slice(&[0x4D, 0x00]); // originator vendor
    v.extend_from_slice(&[0x78, 0x56, 0x34, 0x12]); // originator serial
    v.extend_from_slice(&5_000_000u32.to_le_bytes()); // O->T actual packet interval
    v.extend_from_slice(&5_000_000u32.to_le_bytes()); // T->O actual packet interval
    v.extend_from_slice(&[0x00, 0x00]); // application reply size 0, reserved
    v
}

/// A Forward Close (0x4E to class 6 instance 1) for the vectors' triad with connection `serial`.
fn forward_close(serial: u16) -> Vec<u8> {
    let mut v = vec![0x4E, 0x02, 0x20, 0x06, 0x24, 0x01]; // service, path: class 6, instance 1
    v.extend_from_slice(&[0x0A, 0x0E]); // priority / tick, timeout ticks
    v.extend_from_slice(&serial.to_le_bytes()); // connection serial
    v.extend_from_slice(&[0x4D, 0x00, 0x78, 0x56, 0x34, 0x12]); // vendor, originator serial
    v.extend_from_slice(&[0x02, 0x00, 0x01, 0x00, 0x20, 0x02]); // path size 2 words, reserved, port 1 slot 0, class 2
    v
}

/// Opens connection `serial` on `OT_ID`-based ids: Forward Open decided, then its reply observed.
fn open(e: &Engine, s: &mut EnipSession, serial: u16, ot_id: u32) -> CipDecision {
    let fo = send_rr(&forward_open(false, serial));
    let d = e.decide_enip(OPERATOR, PLC, s, &fo, 0);
    if d.forward() {
        assert!(s.observe_reply(&fo, &send_rr(&forward_open_reply(serial, ot_id))));
    }
    d
}

#[test]
fn session_commands_are_allowed_without_a_rule() {
    let e = engine("enforce", true);
    let mut s = EnipSession::new();
    for (cmd, data) in [
        (Command::Nop, vec![1, 2, 3]),
        (Command::RegisterSession, vec![1, 0, 0, 0]),
        (Command::UnRegisterSession, vec![]),
        (Command::ListIdentity, vec![]),
        (Command::ListServices, vec![]),
        (Command::ListInterfaces, vec![]),
    ] {
        let d = e.decide_enip(OPERATOR, PLC, &mut s, &encap(cmd as u16, 0, &[0; 8], &data), 0);
        assert_eq!((d.verdict, d.reason, d.rule, d.command), (Verdict::Allow, CipReason::Allowed, None, cmd as u16));
    }
}

#[test]
fn other_commands_are_refused_in_both_modes() {
    for mode in ["enforce", "monitor"] {
        let e = engine(mode, true);
        let mut s = EnipSession::new();
        for cmd in [0x0072u16, 0x0073, 0x0001, 0x0099, 0xFFFF] {
            let d = e.decide_enip(OPERATOR, PLC, &mut s, &encap(cmd, 1, &[0; 8], &[0, 0]), 0);
            assert_eq!(
                (d.verdict, d.reason, d.encap_status, d.general_status),
                (Verdict::Deny, CipReason::CommandNotAllowed, Some(1), None),
                "{mode} {cmd:#x}"
            );
            assert_eq!(d.command, cmd);
        }
    }
}

#[test]
fn malformed_encapsulation_is_refused_in_both_modes() {
    let e = engine("monitor", true);
    let mut s = EnipSession::new();
    let mut options = send_rr(&read_tag("Recipe"));
    options[20] = 1;
    let trailing = [send_rr(&read_tag("Recipe")), vec![0]].concat();
    let mut cpf_short = send_rr(&read_tag("Recipe"));
    cpf_short.truncate(cpf_short.len() - 1);
    cpf_short[2] -= 1;
    let cases = [
        (options, "non_zero_options"),
        (trailing, "trailing_bytes"),
        (encap(0x65, 0, &[0; 8], &[1, 0]), "bad_command_length"),
        (cpf_short, "cpf_truncated"),
        (vec![0x6F, 0x00], "truncated"),
    ];
    for (msg, kind) in cases {
        let d = e.decide_enip(OPERATOR, PLC, &mut s, &msg, 0);
        assert_eq!(
            (d.verdict, d.reason, d.malformed, d.encap_status),
            (Verdict::Deny, CipReason::Malformed, Some(kind), Some(3)),
            "{kind}"
        );
    }
    let d = e.decide_enip(7, PLC, &mut s, &encap(0x63, 0, &[0; 8], &[]), 0);
    assert_eq!((d.verdict, d.reason), (Verdict::Deny, CipReason::UnknownPrincipal));
}

#[test]
fn items_must_be_the_ones_the_command_carries() {
    let e = engine("enforce", true);
    let mut s = EnipSession::new();
    let cip = read_tag("Recipe");
    let mut rr_connected = send_unit(1, 1, &cip);
    rr_connected[0] = 0x6F; // SendRRData carrying connected items
    let mut unit_unconnected = send_rr(&cip);
    unit_unconnected[0] = 0x70; // SendUnitData carrying unconnected items
                                // SendRRData with a third item (an O->T socket address, 16 bytes) after the data item.
    let mut three = send_rr(&cip);
    three[30] = 3; // item count
    three.extend_from_slice(&[0x00, 0x80, 0x10, 0x00]);
    three.extend_from_slice(&[0; 16]);
    let len = (three.len() - 24) as u16;
    three[2..4].copy_from_slice(&len.to_le_bytes());
    for (msg, what) in [(rr_connected, "rr connected"), (unit_unconnected, "unit unconnected"), (three, "three items")]
    {
        let d = e.decide_enip(OPERATOR, PLC, &mut s, &msg, 0);
        assert_eq!((d.verdict, d.malformed, d.encap_status), (Verdict::Deny, Some("cpf_bad_items"), Some(3)), "{what}");
    }
    // Sequenced address: class 0/1 I/O.
    let mut io = send_unit(1, 1, &cip);
    let at = 24 + 8; // first item: type id
    io[at..at + 2].copy_from_slice(&[0x02, 0x80]);
    io[at + 2] = 8;
    io.splice(at + 8..at + 8, [0, 0, 0, 0]);
    let len = (io.len() - 24) as u16;
    io[2..4].copy_from_slice(&len.to_le_bytes());
    let d = e.decide_enip(OPERATOR, PLC, &mut s, &io, 0);
    assert_eq!(d.malformed, Some("io_connection"));
}

#[test]
fn unconnected_requests_are_decided_like_decide_cip() {
    let e = engine("enforce", true);
    let mut s = EnipSession::new();
    let behind_slot0 = unconnected_send(&read_tag("Recipe"), &[0x01, 0x00]);
    let d = e.decide_enip(OPERATOR, PLC, &mut s, &send_rr(&behind_slot0), 0);
    assert_eq!((d.verdict, d.command, d.service, d.route.as_str()), (Verdict::Allow, 0x6F, 0x52, "1,0"));
    // Direct, the Read Tag fails the Recipe entry at its route (depth 1) but the other entries at
    // their services (depth 2): the deepest failure decides.
    let d = e.decide_enip(OPERATOR, PLC, &mut s, &send_rr(&read_tag("Recipe")), 0);
    assert_eq!(
        (d.verdict, d.reason, d.general_status, d.encap_status),
        (Verdict::Deny, CipReason::ServiceNotAllowed, Some(0x0F), None)
    );
    assert_eq!(d.rule, Some(0));
}

#[test]
fn a_connected_request_takes_the_route_its_forward_open_named() {
    let e = engine("enforce", true);
    let mut s = EnipSession::new();
    let fo = send_rr(&forward_open(false, 1));
    let d = e.decide_enip(OPERATOR, PLC, &mut s, &fo, 0);
    assert_eq!((d.verdict, d.service, d.target.as_str()), (Verdict::Allow, 0x54, "class 0x06 instance 1"));
    assert_eq!(s.connections(), 1, "pending until the device answers");
    assert!(s.observe_reply(&fo, &send_rr(&forward_open_reply(1, OT_ID))));
    assert_eq!(s.connections(), 1);
    // The connection path goes through backplane slot 0: Read Tag of Recipe on it is allowed.
    let read = send_unit(OT_ID, 1, &read_tag("Recipe"));
    let d = e.decide_enip(OPERATOR, PLC, &mut s, &read, 0);
    assert_eq!((d.verdict, d.command, d.route.as_str(), d.target.as_str()), (Verdict::Allow, 0x70, "1,0", "Recipe"));
    assert!(s.observe_reply(&read, &send_unit(TO_ID, 1, &[0xCC, 0, 0, 0, 0xC4, 0, 1, 0, 0, 0])));
    assert!(!s.observe_reply(&read, &send_unit(TO_ID, 2, &[0xCC, 0, 0, 0])), "another sequence count");
    assert!(!s.observe_reply(&read, &send_unit(OT_ID, 1, &[0xCC, 0, 0, 0])), "not on the T->O id");
    // The same Read Tag of another tag is refused, with the connection's route in the decision.
    let d = e.decide_enip(OPERATOR, PLC, &mut s, &send_unit(OT_ID, 2, &read_tag("Other")), 0);
    assert_eq!((d.verdict, d.reason, d.route.as_str()), (Verdict::Deny, CipReason::TargetNotAllowed, "1,0"));
    // An id nobody opened.
    let d = e.decide_enip(OPERATOR, PLC, &mut s, &send_unit(OT_ID + 1, 1, &read_tag("Recipe")), 0);
    assert_eq!(
        (d.verdict, d.reason, d.malformed, d.general_status),
        (Verdict::Deny, CipReason::Malformed, Some("unknown_connection"), Some(0x01))
    );
    assert_eq!(d.service, 0x4C);
}

#[test]
fn a_large_forward_open_opens_a_connection_too() {
    let e = engine("enforce", true);
    let mut s = EnipSession::new();
    let fo = send_rr(&forward_open(true, 2));
    assert!(e.decide_enip(OPERATOR, PLC, &mut s, &fo, 0).forward());
    let mut reply = forward_open_reply(2, OT_ID);
    reply[0] = 0xDB;
    assert!(s.observe_reply(&fo, &send_rr(&reply)));
    assert!(e.decide_enip(OPERATOR, PLC, &mut s, &send_unit(OT_ID, 1, &read_tag("Recipe")), 0).forward());
}

#[test]
fn forward_close_closes_the_connection() {
    let e = engine("enforce", true);
    let mut s = EnipSession::new();
    open(&e, &mut s, 1, OT_ID);
    let fc = send_rr(&forward_close(1));
    let d = e.decide_enip(OPERATOR, PLC, &mut s, &fc, 0);
    assert_eq!(d.verdict, Verdict::Allow);
    assert_eq!(s.connections(), 1, "closed only when the device agrees");
    assert!(s.observe_reply(&fc, &send_rr(&[0xCE, 0x00, 0x01, 0x00])), "a refused close is still an answer");
    assert_eq!(s.connections(), 1);
    assert!(s.observe_reply(&fc, &send_rr(&[0xCE, 0x00, 0x00, 0x00, 1, 0, 0x4D, 0, 0x78, 0x56, 0x34, 0x12, 0, 0])));
    assert_eq!(s.connections(), 0);
    let d = e.decide_enip(OPERATOR, PLC, &mut s, &send_unit(OT_ID, 1, &read_tag("Recipe")), 0);
    assert_eq!(d.malformed, Some("unknown_connection"));
}

#[test]
fn refused_or_unreadable_forward_open_replies_open_nothing() {
    let e = engine("enforce", true);
    let mut s = EnipSession::new();
    let fo = send_rr(&forward_open(false, 3));
    e.decide_enip(OPERATOR, PLC, &mut s, &fo, 0);
    // General status 0x01, extended status 0x0100 (connection in use).
    assert!(s.observe_reply(&fo, &send_rr(&[0xD4, 0x00, 0x01, 0x01, 0x00, 0x01])));
    assert_eq!(s.connections(), 0);
    // A success that names another triad, or whose data does not read, answers nothing we asked.
    e.decide_enip(OPERATOR, PLC, &mut s, &fo, 0);
    assert!(!s.observe_reply(&fo, &send_rr(&forward_open_reply(4, OT_ID))));
    assert_eq!(s.connections(), 0);
    e.decide_enip(OPERATOR, PLC, &mut s, &fo, 0);
    assert!(!s.observe_reply(&fo, &send_rr(&forward_open_reply(3, OT_ID)[..20])));
    assert_eq!(s.connections(), 0);
    // A reply to another request (its sender context differs).
    e.decide_enip(OPERATOR, PLC, &mut s, &fo, 0);
    let mut other = send_rr(&forward_open_reply(3, OT_ID));
    other[12] ^= 1;
    assert!(!s.observe_reply(&fo, &other));
    assert_eq!(s.connections(), 1, "still pending");
}

#[test]
fn a_forward_open_the_gateway_answered_for_frees_its_triad() {
    let e = engine("enforce", true);
    let mut s = EnipSession::new();
    // Direct and through an Unconnected Send: no device reply came (unreachable, no session to spare, too slow).
    for fo in [send_rr(&forward_open(false, 3)), send_rr(&unconnected_send(&forward_open(true, 3), &[0x01, 0x02]))] {
        assert!(e.decide_enip(OPERATOR, PLC, &mut s, &fo, 0).forward());
        assert_eq!(s.connections(), 1);
        s.unanswered(&fo);
        assert_eq!(s.connections(), 0);
    }
    // The client's retry of the same triad is no duplicate; it opens when the device answers.
    assert!(open(&e, &mut s, 3, OT_ID).forward());
    assert_eq!(s.connections(), 1);
    // Anything else unanswered changes nothing, an open connection included.
    s.unanswered(&send_rr(&read_tag("Recipe")));
    s.unanswered(&send_unit(OT_ID, 1, &read_tag("Recipe")));
    s.unanswered(b"not a message");
    assert_eq!(s.connections(), 1);
}

#[test]
fn io_forward_opens_are_refused_and_not_recorded() {
    let e = engine("monitor", true);
    let mut s = EnipSession::new();
    let mut fo = forward_open(false, 5);
    let at = fo.len() - 16;
    fo[at] = 0x01; // transport: class 1
    let d = e.decide_enip(OPERATOR, PLC, &mut s, &send_rr(&fo), 0);
    assert_eq!((d.verdict, d.malformed, d.general_status), (Verdict::Deny, Some("io_connection"), Some(0x08)));
    assert_eq!(s.connections(), 0);
}

#[test]
fn duplicate_triads_and_a_full_table_are_refused() {
    let e = engine("enforce", true);
    let mut s = EnipSession::new();
    open(&e, &mut s, 1, OT_ID);
    let d = e.decide_enip(OPERATOR, PLC, &mut s, &send_rr(&forward_open(false, 1)), 0);
    assert_eq!((d.verdict, d.malformed, d.general_status), (Verdict::Deny, Some("duplicate_connection"), Some(0x01)));
    for serial in 2..=128 {
        assert!(e.decide_enip(OPERATOR, PLC, &mut s, &send_rr(&forward_open(false, serial)), 0).forward());
    }
    assert_eq!(s.connections(), 128);
    let d = e.decide_enip(OPERATOR, PLC, &mut s, &send_rr(&forward_open(false, 500)), 0);
    assert_eq!((d.verdict, d.malformed), (Verdict::Deny, Some("too_many_connections")));
}

#[test]
fn a_denied_forward_open_is_not_recorded_unless_monitor_mode_forwards_it() {
    let e = engine("enforce", false);
    let mut s = EnipSession::new();
    let d = e.decide_enip(OPERATOR, PLC, &mut s, &send_rr(&forward_open(false, 1)), 0);
    assert_eq!((d.verdict, d.reason), (Verdict::Deny, CipReason::ServiceNotAllowed));
    assert_eq!(s.connections(), 0);
    let e = engine("monitor", false);
    let d = open(&e, &mut s, 1, OT_ID);
    assert_eq!(d.verdict, Verdict::WouldDeny);
    assert_eq!(s.connections(), 1, "forwarded, so the connection it opens is attributed");
    assert!(e.decide_enip(OPERATOR, PLC, &mut s, &send_unit(OT_ID, 1, &read_tag("Recipe")), 0).forward());
}

#[test]
fn a_forward_open_through_unconnected_sends_carries_their_route() {
    let e = engine("enforce", true);
    let mut s = EnipSession::new();
    // Through backplane slot 2 (a bridge), whose Connection Manager opens the connection path 1,0.
    let fo = send_rr(&unconnected_send(&forward_open(false, 1), &[0x01, 0x02]));
    let d = e.decide_enip(OPERATOR, PLC, &mut s, &fo, 0);
    assert_eq!((d.verdict, d.route.as_str()), (Verdict::Allow, "1,2"));
    assert_eq!(s.connections(), 1);
    // The target's own Forward Open reply answers it.
    assert!(s.observe_reply(&fo, &send_rr(&forward_open_reply(1, OT_ID))));
    // Recipe is readable behind slot 0 only: the Recipe entry fails at the route (the other entries
    // fail deeper, at the service, and name the refusal).
    let d = e.decide_enip(OPERATOR, PLC, &mut s, &send_unit(OT_ID, 1, &read_tag("Recipe")), 0);
    assert_eq!((d.verdict, d.reason, d.route.as_str()), (Verdict::Deny, CipReason::ServiceNotAllowed, "1,2/1,0"));
    // A router that cannot deliver it answers for the Unconnected Send: nothing opens.
    let fo = send_rr(&unconnected_send(&unconnected_send(&forward_open(true, 2), &[0x01, 0x02]), &[0x01, 0x03]));
    assert_eq!(e.decide_enip(OPERATOR, PLC, &mut s, &fo, 0).route, "1,3/1,2");
    assert_eq!(s.connections(), 2);
    assert!(s.observe_reply(&fo, &send_rr(&[0xD2, 0x00, 0x01, 0x01, 0x04, 0x03])));
    assert_eq!(s.connections(), 1);
    // A Forward Close delivered the same way closes it.
    let fc = send_rr(&unconnected_send(&forward_close(1), &[0x01, 0x02]));
    assert!(e.decide_enip(OPERATOR, PLC, &mut s, &fc, 0).forward());
    assert!(s.observe_reply(&fc, &send_rr(&[0xCE, 0x00, 0x00, 0x00, 1, 0, 0x4D, 0, 0x78, 0x56, 0x34, 0x12, 0, 0])));
    assert_eq!(s.connections(), 0);
}

#[test]
fn a_forward_open_inside_a_multiple_service_packet_is_decided_but_not_recorded() {
    let e = engine("enforce", true);
    let mut s = EnipSession::new();
    let d = e.decide_enip(OPERATOR, PLC, &mut s, &send_rr(&msp(&[&forward_open(false, 1)])), 0);
    assert_eq!(d.verdict, Verdict::Allow);
    assert_eq!(s.connections(), 0);
}

/// The CIP message of a captured SendUnitData request.
fn connected_cip(msg: &[u8]) -> Option<Vec<u8>> {
    use zonegate_core::enip::{parse_frame, Body, Payload};
    let Ok(f) = parse_frame(msg) else { return None };
    let Body::SendData(sd) = f.body else { return None };
    match sd.cpf.payload()? {
        Payload::Connected { message, .. } => Some(message.to_vec()),
        Payload::Unconnected(_) => None,
    }
}

#[test]
fn captured_sessions_are_decided_message_by_message() {
    use zonegate_core::enip::{flatten, Service};
    let Some(cap) = shared("icsnpp-enip/enip_cip_example.pcap") else { return };
    let m = messages(&cap);
    let e = engine("enforce", true);
    let mut s = EnipSession::new();
    let mut by_command = std::collections::BTreeMap::new();
    for msg in &m.requests {
        let d = e.decide_enip(OPERATOR, PLC, &mut s, msg, 0);
        let command = u16::from_le_bytes([msg[0], msg[1]]);
        if command == Command::SendUnitData as u16 {
            // The capture starts after its connection was opened: no connected request is attributed.
            assert_eq!(d.malformed, Some("unknown_connection"));
        } else {
            assert_eq!(d.verdict, Verdict::Allow, "{d:?}");
        }
        *by_command.entry(command).or_insert(0) += 1;
    }
    assert_eq!(by_command, [(0x63, 1), (0x70, 134)].into_iter().collect());
    // The connected messages themselves, decided as if on a connection to the device: allowed exactly
    // when no leaf is a Set Attribute List (the policy reads, it does not write).
    let (mut allowed, mut refused, mut packets) = (0, 0, 0);
    for cip in m.requests.iter().filter_map(|r| connected_cip(r)) {
        let leaves = flatten(&cip).unwrap();
        let first_set = leaves.iter().position(|l| l.request.service == Service::SetAttributeList);
        let d = e.decide_cip(OPERATOR, PLC, &cip, &[], 0);
        match first_set {
            None => {
                assert_eq!((d.verdict, d.leaves as usize), (Verdict::Allow, leaves.len()));
                allowed += 1;
            }
            Some(i) => {
                assert_eq!(
                    (d.verdict, d.reason, d.denied_leaf),
                    (Verdict::Deny, CipReason::ServiceNotAllowed, Some(i as u32))
                );
                refused += 1;
            }
        }
        packets += (d.service == 0x0A) as usize;
    }
    assert_eq!((allowed + refused, packets), (134, 41));
    assert!(allowed > 0 && refused > 0, "{allowed} {refused}");
}
