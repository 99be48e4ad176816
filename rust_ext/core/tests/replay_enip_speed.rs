//! How long EtherNet/IP decisions take without Python around them, for benchmarks/RESULTS.md: decide_cip
//! on single requests and on Multiple Service Packets, and a replay of a capture of such sessions.
//! Timing only, so ignored by default:
//! `cargo test --release -p zonegate-core --test replay_enip_speed -- --ignored --nocapture`.

mod capture_support;
mod enip_support;

use capture_support::{pcap, timed, Conn, Ep};
use serde_json::json;
use std::time::Instant;
use zonegate_core::capture::replay::{replay_capture, Targets};
use zonegate_core::policy::{Engine, Ir};

fn read_tag(tag: &str) -> Vec<u8> {
    let mut path = Vec::new();
    for part in tag.split('.') {
        path.extend_from_slice(&[0x91, part.len() as u8]);
        path.extend_from_slice(part.as_bytes());
        if part.len() % 2 == 1 {
            path.push(0);
        }
    }
    [vec![0x4C, (path.len() / 2) as u8], path, vec![1, 0]].concat()
}

fn ir() -> Ir {
    let rules: Vec<_> = (0..10)
        .map(|k| {
            json!({"id": format!("cip-{k}"), "principals": [0], "devices": [0], "units": null, "allow": [], "cip": [
                {"services": ["read_tag"], "tags": [{"parts": [{"name": format!("line{k}"), "elements": null},
                                                              {"name": "*", "elements": null}]}]},
                {"services": ["get_attribute_single"], "classes": [[1, 1]], "instances": [[1, 1]], "attributes": [[1, 7]]}
            ]})
        })
        .collect();
    serde_json::from_value(json!({
        "version": 1, "mode": "enforce",
        "principals": [{"name": "engineering", "tls_roles": [], "subjects": [], "opcua_users": [], "sources": ["10.0.0.0/8"]}],
        "devices": [{"name": "plc", "zone": "cell", "host": "10.0.0.3", "port": 44818, "units": null,
                     "enip": {"host": "10.0.0.3", "port": 44818}}],
        "rules": rules
    }))
    .unwrap()
}

fn rate(n: usize, f: impl Fn()) -> f64 {
    let start = Instant::now();
    let mut done = 0;
    while start.elapsed().as_secs_f64() < 1.0 {
        f();
        done += n;
    }
    done as f64 / start.elapsed().as_secs_f64()
}

#[test]
#[ignore]
fn enip_decision_speed() {
    let engine = Engine::compile(&ir()).unwrap();
    let single = read_tag("Line9.Motor");
    let inner: Vec<Vec<u8>> = (0..30).map(|i| read_tag(&format!("Line{}.Speed", i % 10))).collect();
    let packet = enip_support::msp(&inner.iter().map(|v| v.as_slice()).collect::<Vec<_>>());
    assert!(engine.decide_cip(0, 0, &single, &[], 0).forward());
    assert!(engine.decide_cip(0, 0, &packet, &[], 0).forward());
    let single_rate = rate(10_000, || {
        for _ in 0..10_000 {
            std::hint::black_box(engine.decide_cip(0, 0, std::hint::black_box(&single), &[], 0));
        }
    });
    let packet_rate = rate(1_000, || {
        for _ in 0..1_000 {
            std::hint::black_box(engine.decide_cip(0, 0, std::hint::black_box(&packet), &[], 0));
        }
    });
    let flatten_rate = rate(1_000, || {
        for _ in 0..1_000 {
            std::hint::black_box(zonegate_core::enip::flatten(std::hint::black_box(&packet)).unwrap());
        }
    });
    eprintln!("decide_cip, one Read Tag:                      {single_rate:>12.0} /s");
    eprintln!(
        "decide_cip, Multiple Service Packet of 30, allowed: {packet_rate:>7.0} /s ({:.0} requests/s)",
        packet_rate * 30.0
    );
    eprintln!("flatten, the same packet:                      {flatten_rate:>12.0} /s");

    let mut c = Conn::new(Ep([10, 0, 0, 9], 40000), Ep([10, 0, 0, 3], 44818), 1, 1);
    let mut frames = c.handshake();
    for i in 0..20_000 {
        let m = if i % 5 == 0 { &packet } else { &single };
        frames.push(c.c2s(&enip_support::send_rr(m)));
    }
    let capture = pcap(&timed(frames));
    let ir = ir();
    let replay_rate = rate(20_000, || {
        let mut engine = Engine::compile(&ir).unwrap();
        let r = replay_capture(&capture, &mut engine, Targets::from_ir(&ir), 10, 0, |_, _| {}).unwrap();
        assert_eq!(r.cip.allowed, 20_000);
    });
    eprintln!("replay, 20,000 SendRRData (1 in 5 a packet of 30): {replay_rate:>8.0} messages/s");
}
