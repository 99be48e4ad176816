//! Decision throughput of the core alone (no Python). Runs as a plain test with a few passes so it
//! cannot rot; `ZONEGATE_BENCH_PASSES=3000 cargo test --release --test throughput -- --nocapture`
//! prints a meaningful frames-per-second figure.

use serde_json::json;
use zonegate_core::policy::Engine;

fn adu(tid: u16, unit: u8, pdu: &[u8]) -> Vec<u8> {
    let mut v = tid.to_be_bytes().to_vec();
    v.extend_from_slice(&[0x00, 0x00]);
    v.extend_from_slice(&((pdu.len() + 1) as u16).to_be_bytes());
    v.push(unit);
    v.extend_from_slice(pdu);
    v
}

#[test]
fn batch_throughput() {
    let range = |s: u32, e: u32| json!({"start": s, "end": e, "min": null, "max": null, "signed": false});
    let rules: Vec<_> = (0..50)
        .map(|i| {
            let fns = match i % 3 {
                0 => json!([[3, null], [4, null]]),
                1 => json!([[6, null], [16, null]]),
                _ => json!([[1, null], [5, null]]),
            };
            json!({"id": format!("r{i}"), "principals": [0, i % 10], "devices": [0, i % 5], "units": null,
                   "allow": [{"functions": fns, "ranges": {"holding_registers": [range(0, 199)], "coils": [range(0, 63)],
                              "discrete_inputs": [], "input_registers": [], "file_records": []},
                              "max_quantity": null, "rate": null}]})
        })
        .collect();
    let principals: Vec<_> = (0..10).map(|i| json!({"name": format!("p{i}")})).collect();
    let devices: Vec<_> = (0..5).map(|i| json!({"name": format!("d{i}"), "units": [[1, 1]]})).collect();
    let ir = json!({"version": 1, "mode": "enforce", "principals": principals, "devices": devices, "rules": rules});
    let e = Engine::from_json(&ir.to_string()).unwrap();
    let mut buf = Vec::new();
    for i in 0..1000u16 {
        let f = match i % 10 {
            0..=5 => adu(i, 1, &[0x03, 0x00, (i % 250) as u8, 0x00, 0x0A]),
            6 | 7 => adu(i, 1, &[0x10, 0x00, 0x64, 0x00, 0x02, 0x04, 0x00, 0x01, 0x00, 0x02]),
            8 => adu(i, 1, &[0x06, 0x00, 0x64, 0x00, 0x05]),
            _ => adu(i, 1, &[0x01, 0x00, 0x00, 0x00, 0x08]),
        };
        buf.extend(f);
    }
    let passes: u64 = std::env::var("ZONEGATE_BENCH_PASSES").ok().and_then(|v| v.parse().ok()).unwrap_or(3);
    let mut frames = 0u64;
    let t = std::time::Instant::now();
    for _ in 0..passes {
        let s = e.decide_batch(0, 0, &buf, 0);
        assert_eq!(
            (s.frames, s.consumed, s.stop),
            (1000, buf.len(), Some(zonegate_core::modbus::Split::Incomplete { needed: 6 }))
        );
        frames += s.frames;
    }
    let dt = t.elapsed().as_secs_f64();
    println!("core batch: {:.0} frames/s", frames as f64 / dt);
}
