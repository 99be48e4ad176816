//! Damaged input through the CIP decision stage: every vector cut at every length and with every bit
//! flipped, through `decide_cip`, `decide_enip` and `observe_reply`. Nothing panics, and nothing that
//! does not parse is ever forwarded.

mod enip_support;

use enip_support::*;
use serde_json::json;
use zonegate_core::enip::{flatten, parse_frame};
use zonegate_core::policy::{CipReason, Engine, EnipSession, Verdict};

/// A policy that admits everything it can name, in monitor mode: whatever is refused here is refused
/// because it is malformed (or a command the conduit never forwards), not by the policy.
fn permissive() -> Engine {
    let all: Vec<&str> = zonegate_core::policy::cip::NAMED_SERVICES.iter().filter_map(|s| s.name()).collect();
    let codes: Vec<u8> = (0..0x80).collect();
    let ir = json!({
        "version": 1, "mode": "monitor",
        "principals": [{"name": "operator"}],
        "devices": [{"name": "plc", "units": null}],
        "rules": [{"id": "all", "principals": [0], "devices": [0], "units": null, "allow": [], "cip": [
            {"services": all, "service_codes": codes, "tags": [{"parts": [{"name": "*", "elements": null}]}]},
            {"services": all, "service_codes": codes, "classes": [[0, 4294967295u32]]},
            {"services": ["no_operation", "forward_open", "large_forward_open", "forward_close"]},
        ]}],
    });
    Engine::from_json(&ir.to_string()).unwrap()
}

fn damaged(v: &[u8]) -> Vec<Vec<u8>> {
    let mut out: Vec<Vec<u8>> = (0..v.len()).map(|n| v[..n].to_vec()).collect();
    for i in 0..v.len() * 8 {
        let mut w = v.to_vec();
        w[i / 8] ^= 1 << (i % 8);
        out.push(w);
    }
    out.push([v, &[0u8][..]].concat());
    out
}

#[test]
fn damaged_cip_messages_are_never_forwarded_unparsed() {
    let e = permissive();
    let mut seen_malformed = 0;
    for (name, v) in cip_vectors().into_iter().chain([("forward_open", forward_open(false, 1))]) {
        for msg in damaged(&v) {
            let d = e.decide_cip(0, 0, &msg, &[], 0);
            let parses = flatten(&msg).is_ok();
            if !parses {
                assert_eq!((d.verdict, d.reason), (Verdict::Deny, CipReason::Malformed), "{name}: {msg:02x?}");
                seen_malformed += 1;
            }
            if d.forward() {
                assert!(parses, "{name}: {msg:02x?}");
                assert!(d.malformed.is_none());
            }
            if d.reason == CipReason::Malformed {
                assert!(d.general_status.is_some() && d.rule.is_none(), "{name}: {d:?}");
            }
        }
    }
    assert!(seen_malformed > 100);
}

#[test]
fn damaged_encapsulation_messages_are_never_forwarded_unparsed() {
    let e = permissive();
    let mut s = EnipSession::new();
    for (name, v) in message_vectors() {
        for msg in damaged(&v) {
            let d = e.decide_enip(0, 0, &mut s, &msg, 0);
            if d.forward() {
                assert!(parse_frame(&msg).is_ok(), "{name}: {msg:02x?}");
                assert!(d.malformed.is_none() && d.encap_status.is_none());
            } else {
                assert!(
                    d.general_status.is_some() != d.encap_status.is_some(),
                    "a refusal answers at one level: {name}: {d:?}"
                );
            }
        }
    }
    assert!(s.connections() <= zonegate_core::enip::connections::MAX_CONNECTIONS);
}

#[test]
fn damaged_replies_never_open_a_connection_nobody_asked_for() {
    let e = permissive();
    let fo = send_rr(&forward_open(false, 1));
    let mut reply = vec![0xD4, 0x00, 0x00, 0x00];
    reply.extend_from_slice(&7u32.to_le_bytes());
    reply.extend_from_slice(&0x0002_0001u32.to_le_bytes());
    reply.extend_from_slice(&[1, 0, 0x4D, 0, 0x78, 0x56, 0x34, 0x12]);
    reply.extend_from_slice(&[0; 10]);
    let reply = send_rr(&reply);
    for bad in damaged(&reply) {
        let mut s = EnipSession::new();
        assert!(e.decide_enip(0, 0, &mut s, &fo, 0).forward());
        s.observe_reply(&fo, &bad);
        assert!(s.connections() <= 1);
        // Whatever the reply did, a connected request is only forwarded on an id the table knows.
        let d = e.decide_enip(0, 0, &mut s, &send_unit(7, 1, &cip_vectors()[0].1), 0);
        assert_eq!(d.forward(), s.table().get(7).is_some());
    }
    let mut s = EnipSession::new();
    s.observe_reply(&fo, &reply);
    assert_eq!(s.connections(), 0, "a reply to a Forward Open the session never recorded opens nothing");
}
