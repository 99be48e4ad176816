//! Decisions (docs/engine.md section 4): every reason, depth and ties, monitor mode, rate buckets
//! with explicit clocks, and the batch call.

use serde_json::{json, Value};
use zonegate_core::modbus::frame::{Split, SplitInvalid};
use zonegate_core::modbus::functions::Malformed;
use zonegate_core::policy::{Decision, Engine, Reason, Verdict};

const SEC: u64 = 1_000_000_000;

/// An entry with the given function keys and holding-register ranges, no limits.
fn entry(functions: Value, holding: Value) -> Value {
    json!({
        "functions": functions,
        "ranges": {"holding_registers": holding, "coils": [], "discrete_inputs": [],
                   "input_registers": [], "file_records": []},
        "max_quantity": null,
        "rate": null,
    })
}

fn range(start: u32, end: u32) -> Value {
    json!({"start": start, "end": end, "min": null, "max": null, "signed": false})
}

fn bounded(start: u32, end: u32, min: i64, max: i64, signed: bool) -> Value {
    json!({"start": start, "end": end, "min": min, "max": max, "signed": signed})
}

fn rule(id: &str, principals: Value, devices: Value, units: Value, allow: Value) -> Value {
    json!({"id": id, "principals": principals, "devices": devices, "units": units, "allow": allow})
}

/// Two principals (operator, engineer), two devices (plc unit 1, any-unit gateway).
fn engine(mode: &str, rules: Value) -> Engine {
    let ir = json!({
        "version": 1,
        "mode": mode,
        "principals": [
            {"name": "operator", "tls_roles": ["Operator"], "subjects": [], "opcua_users": [], "sources": []},
            {"name": "engineer", "tls_roles": ["Engineer"], "subjects": [], "opcua_users": [], "sources": []},
        ],
        "devices": [
            {"name": "plc", "zone": "cell-a", "host": "192.168.10.11", "port": 502, "units": [[1, 1]]},
            {"name": "gateway", "zone": "cell-a", "host": "192.168.10.12", "port": 502, "units": null},
        ],
        "rules": rules,
    });
    Engine::from_json(&ir.to_string()).expect("valid IR")
}

fn adu(unit: u8, pdu: &[u8]) -> Vec<u8> {
    let mut v = vec![0x00, 0x07, 0x00, 0x00];
    v.extend_from_slice(&((pdu.len() + 1) as u16).to_be_bytes());
    v.push(unit);
    v.extend_from_slice(pdu);
    v
}

/// fc 3, start, quantity.
fn read_holding(unit: u8, start: u16, qty: u16) -> Vec<u8> {
    let [s0, s1] = start.to_be_bytes();
    let [q0, q1] = qty.to_be_bytes();
    adu(unit, &[0x03, s0, s1, q0, q1])
}

/// fc 6, address, value.
fn write_single(unit: u8, address: u16, value: u16) -> Vec<u8> {
    let [a0, a1] = address.to_be_bytes();
    let [v0, v1] = value.to_be_bytes();
    adu(unit, &[0x06, a0, a1, v0, v1])
}

/// fc 16 writing `values` from `start`.
fn write_multiple(unit: u8, start: u16, values: &[u16]) -> Vec<u8> {
    let mut pdu = vec![0x10];
    pdu.extend_from_slice(&start.to_be_bytes());
    pdu.extend_from_slice(&(values.len() as u16).to_be_bytes());
    pdu.push(2 * values.len() as u8);
    for v in values {
        pdu.extend_from_slice(&v.to_be_bytes());
    }
    adu(unit, &pdu)
}

fn why(e: &Engine, d: &Decision) -> (Verdict, Reason, String, Option<u8>) {
    (d.verdict, d.reason, d.rule.map_or(String::new(), |i| e.rule_id(i).to_owned()), d.exception)
}

fn deny(reason: Reason, rule: &str, exception: u8) -> (Verdict, Reason, String, Option<u8>) {
    (Verdict::Deny, reason, rule.to_owned(), Some(exception))
}

fn allow(rule: &str) -> (Verdict, Reason, String, Option<u8>) {
    (Verdict::Allow, Reason::Allowed, rule.to_owned(), None)
}

fn reads() -> Engine {
    engine(
        "enforce",
        json!([rule(
            "read",
            json!([0]),
            json!([0, 1]),
            json!(null),
            json!([entry(json!([[3, null]]), json!([range(0, 99)]))])
        )]),
    )
}

#[test]
fn allowed_request_names_its_rule() {
    let e = reads();
    let d = e.decide(0, 0, &read_holding(1, 10, 5), 0);
    assert_eq!(why(&e, &d), allow("read"));
    assert_eq!((d.function, d.sub, d.unit, d.malformed), (3, None, 1, None));
    assert!(d.forward());
}

#[test]
fn unknown_principal_is_denied_first() {
    let e = reads();
    for p in [2, 99, u32::MAX] {
        let d = e.decide(p, 0, &read_holding(1, 10, 5), 0);
        assert_eq!(why(&e, &d), deny(Reason::UnknownPrincipal, "", 1));
    }
    // Even a malformed frame: the principal is checked before parsing.
    let d = e.decide(7, 0, &read_holding(1, 10, 0), 0);
    assert_eq!(why(&e, &d), deny(Reason::UnknownPrincipal, "", 1));
    assert_eq!(d.malformed, None);
}

#[test]
fn malformed_is_denied_with_exception_3_in_both_modes() {
    for mode in ["enforce", "monitor"] {
        let e = engine(mode, json!([]));
        let d = e.decide(0, 0, &read_holding(1, 0, 0), 0);
        assert_eq!(why(&e, &d), deny(Reason::Malformed, "", 3), "{mode}");
        assert_eq!(d.malformed, Some(Malformed::BadQuantity));
        assert!(!d.forward());
        assert_eq!((d.function, d.unit), (3, 1));
        let d = e.decide(0, 0, &[0x00, 0x01, 0x00], 0);
        assert_eq!((d.reason, d.malformed, d.function), (Reason::Malformed, Some(Malformed::Truncated), 0));
    }
}

#[test]
fn non_public_code_is_function_not_allowed_without_a_rule() {
    let e = reads();
    for fc in [0u8, 9, 0x41, 0x5A, 0x83, 0xFF] {
        let d = e.decide(0, 0, &adu(1, &[fc, 0x00, 0x01]), 0);
        assert_eq!(why(&e, &d), deny(Reason::FunctionNotAllowed, "", 1), "fc {fc}");
        assert_eq!(d.function, fc);
    }
    // Even when no rule applies to the pair at all.
    let d = e.decide(1, 0, &adu(1, &[0x41]), 0);
    assert_eq!(why(&e, &d), deny(Reason::FunctionNotAllowed, "", 1));
}

#[test]
fn no_rule_for_the_pair() {
    let e = reads();
    assert_eq!(why(&e, &e.decide(1, 0, &read_holding(1, 0, 1), 0)), deny(Reason::NoMatchingRule, "", 1));
    assert_eq!(why(&e, &e.decide(0, 2, &read_holding(1, 0, 1), 0)), deny(Reason::NoMatchingRule, "", 1));
    assert_eq!(why(&e, &e.decide(0, u32::MAX, &read_holding(1, 0, 1), 0)), deny(Reason::NoMatchingRule, "", 1));
}

#[test]
fn rule_without_entries_matches_nothing() {
    let e = engine("enforce", json!([rule("empty", json!([0]), json!([0]), json!(null), json!([]))]));
    assert_eq!(why(&e, &e.decide(0, 0, &read_holding(1, 0, 1), 0)), deny(Reason::NoMatchingRule, "", 1));
}

#[test]
fn units_come_from_the_rule_then_the_device() {
    let e = reads();
    // Rule says null, device plc says [1, 1].
    assert_eq!(why(&e, &e.decide(0, 0, &read_holding(2, 0, 1), 0)), deny(Reason::UnitNotAllowed, "read", 1));
    // Rule null, device gateway null: any unit.
    assert_eq!(why(&e, &e.decide(0, 1, &read_holding(200, 0, 1), 0)), allow("read"));
    let e = engine(
        "enforce",
        json!([rule(
            "u",
            json!([0]),
            json!([0, 1]),
            json!([[5, 9], [255, 255]]),
            json!([entry(json!([[3, null]]), json!([range(0, 9)]))])
        )]),
    );
    // The rule's units replace the device's.
    assert_eq!(why(&e, &e.decide(0, 0, &read_holding(1, 0, 1), 0)), deny(Reason::UnitNotAllowed, "u", 1));
    for unit in [5, 7, 9, 255] {
        assert_eq!(why(&e, &e.decide(0, 0, &read_holding(unit, 0, 1), 0)), allow("u"), "unit {unit}");
    }
    assert_eq!(why(&e, &e.decide(0, 1, &read_holding(10, 0, 1), 0)), deny(Reason::UnitNotAllowed, "u", 1));
}

#[test]
fn function_not_in_the_entry() {
    let e = reads();
    assert_eq!(why(&e, &e.decide(0, 0, &write_single(1, 0, 0), 0)), deny(Reason::FunctionNotAllowed, "read", 1));
}

#[test]
fn function_keys_include_the_sub_function() {
    let e = engine(
        "enforce",
        json!([rule(
            "diag",
            json!([0]),
            json!([0]),
            json!(null),
            json!([entry(json!([[8, 0], [43, 14], [8, null]]), json!([]))])
        )]),
    );
    let echo = adu(1, &[0x08, 0x00, 0x00, 0x12, 0x34]); // diagnostics sub 0 return query data
    assert_eq!(why(&e, &e.decide(0, 0, &echo, 0)), allow("diag"));
    let restart = adu(1, &[0x08, 0x00, 0x01, 0x00, 0x00]); // sub 1 restart communications
    assert_eq!(why(&e, &e.decide(0, 0, &restart, 0)), deny(Reason::FunctionNotAllowed, "diag", 1));
    let ident = adu(1, &[0x2B, 0x0E, 0x01, 0x00]); // MEI 14 read device identification
    assert_eq!(why(&e, &e.decide(0, 0, &ident, 0)), allow("diag"));
    let canopen = adu(1, &[0x2B, 0x0D]); // MEI 13
    assert_eq!(why(&e, &e.decide(0, 0, &canopen, 0)), deny(Reason::FunctionNotAllowed, "diag", 1));
    let d = e.decide(0, 0, &echo, 0);
    assert_eq!((d.function, d.sub), (8, Some(0)));
}

#[test]
fn addresses_must_lie_in_the_union_of_ranges() {
    let e = engine(
        "enforce",
        json!([rule(
            "r",
            json!([0]),
            json!([0]),
            json!(null),
            json!([entry(json!([[3, null]]), json!([range(0, 9), range(10, 19), range(30, 39)]))])
        )]),
    );
    // 5..=14 spans two adjacent ranges: they join.
    assert_eq!(why(&e, &e.decide(0, 0, &read_holding(1, 5, 10), 0)), allow("r"));
    // 15..=34 crosses the gap 20..=29.
    assert_eq!(why(&e, &e.decide(0, 0, &read_holding(1, 15, 20), 0)), deny(Reason::AddressOutOfRange, "r", 1));
    assert_eq!(why(&e, &e.decide(0, 0, &read_holding(1, 39, 1), 0)), allow("r"));
    assert_eq!(why(&e, &e.decide(0, 0, &read_holding(1, 39, 2), 0)), deny(Reason::AddressOutOfRange, "r", 1));
    assert_eq!(why(&e, &e.decide(0, 0, &read_holding(1, 25, 1), 0)), deny(Reason::AddressOutOfRange, "r", 1));
    // A read of another table has no ranges there.
    let coils = adu(1, &[0x01, 0x00, 0x00, 0x00, 0x01]);
    let e2 = engine(
        "enforce",
        json!([rule(
            "r",
            json!([0]),
            json!([0]),
            json!(null),
            json!([entry(json!([[1, null]]), json!([range(0, 9)]))])
        )]),
    );
    assert_eq!(why(&e2, &e2.decide(0, 0, &coils, 0)), deny(Reason::AddressOutOfRange, "r", 1));
}

#[test]
fn read_write_needs_both_ranges_covered() {
    let e = engine(
        "enforce",
        json!([rule(
            "rw",
            json!([0]),
            json!([0]),
            json!(null),
            json!([entry(json!([[23, null]]), json!([range(0, 9)]))])
        )]),
    );
    let rw =
        |rs: u16, ws: u16| adu(1, &[0x17, 0x00, rs as u8, 0x00, 0x02, 0x00, ws as u8, 0x00, 0x01, 0x02, 0x00, 0x05]);
    assert_eq!(why(&e, &e.decide(0, 0, &rw(0, 9), 0)), allow("rw"));
    assert_eq!(why(&e, &e.decide(0, 0, &rw(9, 0), 0)), deny(Reason::AddressOutOfRange, "rw", 1)); // read 9..=10
    assert_eq!(why(&e, &e.decide(0, 0, &rw(0, 10), 0)), deny(Reason::AddressOutOfRange, "rw", 1));
    // write 10
}

#[test]
fn quantity_limit() {
    let mut en = entry(json!([[3, null], [7, null]]), json!([range(0, 199)]));
    en["max_quantity"] = json!(10);
    let e = engine("enforce", json!([rule("q", json!([0]), json!([0]), json!(null), json!([en]))]));
    assert_eq!(why(&e, &e.decide(0, 0, &read_holding(1, 0, 10), 0)), allow("q"));
    assert_eq!(why(&e, &e.decide(0, 0, &read_holding(1, 0, 11), 0)), deny(Reason::QuantityExceeded, "q", 1));
    // A function that touches nothing has quantity 0.
    assert_eq!(why(&e, &e.decide(0, 0, &adu(1, &[0x07]), 0)), allow("q"));
}

#[test]
fn unsigned_value_bounds() {
    let e = engine(
        "enforce",
        json!([rule(
            "sp",
            json!([0]),
            json!([0]),
            json!(null),
            json!([entry(json!([[6, null], [16, null]]), json!([range(0, 99), bounded(100, 109, 0, 1500, false)]))])
        )]),
    );
    assert_eq!(why(&e, &e.decide(0, 0, &write_single(1, 100, 1500), 0)), allow("sp"));
    assert_eq!(why(&e, &e.decide(0, 0, &write_single(1, 100, 1501), 0)), deny(Reason::ValueOutOfBounds, "sp", 1));
    // Range 0..=99 has no bounds.
    assert_eq!(why(&e, &e.decide(0, 0, &write_single(1, 5, 65535), 0)), allow("sp"));
    // A multiple write spanning both: only the bounded part is checked.
    assert_eq!(why(&e, &e.decide(0, 0, &write_multiple(1, 98, &[60000, 60000, 7, 8]), 0)), allow("sp"));
    assert_eq!(
        why(&e, &e.decide(0, 0, &write_multiple(1, 98, &[0, 0, 7, 1501]), 0)),
        deny(Reason::ValueOutOfBounds, "sp", 1)
    );
}

#[test]
fn signed_value_bounds_read_twos_complement() {
    let e = engine(
        "enforce",
        json!([rule(
            "s",
            json!([0]),
            json!([0]),
            json!(null),
            json!([entry(json!([[6, null]]), json!([bounded(0, 9, -10, 10, true)]))])
        )]),
    );
    assert_eq!(why(&e, &e.decide(0, 0, &write_single(1, 0, 0xFFF6), 0)), allow("s")); // -10
    assert_eq!(why(&e, &e.decide(0, 0, &write_single(1, 0, 0xFFF5), 0)), deny(Reason::ValueOutOfBounds, "s", 1)); // -11
    assert_eq!(why(&e, &e.decide(0, 0, &write_single(1, 0, 10), 0)), allow("s"));
    assert_eq!(why(&e, &e.decide(0, 0, &write_single(1, 0, 0x8000), 0)), deny(Reason::ValueOutOfBounds, "s", 1));
    // -32768
}

#[test]
fn mask_write_fails_bounded_ranges_only() {
    let e = engine(
        "enforce",
        json!([rule(
            "m",
            json!([0]),
            json!([0]),
            json!(null),
            json!([entry(json!([[22, null]]), json!([range(0, 9), bounded(10, 19, 0, 100, false)]))])
        )]),
    );
    let mask = |a: u8| adu(1, &[0x16, 0x00, a, 0x00, 0xF2, 0x00, 0x25]);
    assert_eq!(why(&e, &e.decide(0, 0, &mask(4), 0)), allow("m"));
    assert_eq!(why(&e, &e.decide(0, 0, &mask(14), 0)), deny(Reason::ValueOutOfBounds, "m", 1));
}

#[test]
fn coil_and_file_record_values() {
    let mut en = entry(json!([[5, null], [15, null], [21, null]]), json!([]));
    en["ranges"]["coils"] = json!([bounded(0, 7, 0, 0, false)]); // coils that may only be switched off
    en["ranges"]["file_records"] = json!([bounded(1 << 16, (1 << 16) + 99, 0, 9, false)]);
    let e = engine("enforce", json!([rule("c", json!([0]), json!([0]), json!(null), json!([en]))]));
    let coil = |v: u8| adu(1, &[0x05, 0x00, 0x03, v, 0x00]);
    assert_eq!(why(&e, &e.decide(0, 0, &coil(0x00), 0)), allow("c"));
    assert_eq!(why(&e, &e.decide(0, 0, &coil(0xFF), 0)), deny(Reason::ValueOutOfBounds, "c", 1));
    let coils = adu(1, &[0x0F, 0x00, 0x00, 0x00, 0x08, 0x01, 0x00]);
    assert_eq!(why(&e, &e.decide(0, 0, &coils, 0)), allow("c"));
    let coils = adu(1, &[0x0F, 0x00, 0x00, 0x00, 0x08, 0x01, 0x80]);
    assert_eq!(why(&e, &e.decide(0, 0, &coils, 0)), deny(Reason::ValueOutOfBounds, "c", 1));
    let file = |v: u8| adu(1, &[0x15, 0x09, 0x06, 0x00, 0x01, 0x00, 0x05, 0x00, 0x01, 0x00, v]);
    assert_eq!(why(&e, &e.decide(0, 0, &file(9), 0)), allow("c"));
    assert_eq!(why(&e, &e.decide(0, 0, &file(10), 0)), deny(Reason::ValueOutOfBounds, "c", 1));
}

#[test]
fn deepest_failure_wins_and_ties_go_to_the_first() {
    let e = engine(
        "enforce",
        json!([
            rule(
                "units",
                json!([0]),
                json!([0]),
                json!([[9, 9]]),
                json!([entry(json!([[3, null]]), json!([range(0, 9)]))])
            ),
            rule("fn-a", json!([0]), json!([0]), json!(null), json!([entry(json!([[4, null]]), json!([range(0, 9)]))])),
            rule(
                "addr",
                json!([0]),
                json!([0]),
                json!(null),
                json!([
                    entry(json!([[1, null]]), json!([range(0, 9)])),
                    entry(json!([[3, null]]), json!([range(50, 59)])),
                ])
            ),
            rule("fn-b", json!([0]), json!([0]), json!(null), json!([entry(json!([[2, null]]), json!([range(0, 9)]))])),
            rule(
                "addr-b",
                json!([0]),
                json!([0]),
                json!(null),
                json!([entry(json!([[3, null]]), json!([range(60, 69)]))])
            ),
        ]),
    );
    let d = e.decide(0, 0, &read_holding(1, 0, 1), 0);
    assert_eq!(why(&e, &d), deny(Reason::AddressOutOfRange, "addr", 1));
    // Function failures only: the first rule failing at depth 2 names it.
    let d = e.decide(0, 0, &write_single(1, 0, 0), 0);
    assert_eq!(why(&e, &d), deny(Reason::FunctionNotAllowed, "fn-a", 1));
    // Unit 9 passes "units" and fails later everywhere else.
    let d = e.decide(0, 0, &read_holding(9, 0, 1), 0);
    assert_eq!(why(&e, &d), allow("units"));
    let d = e.decide(0, 0, &read_holding(2, 0, 1), 0);
    assert_eq!(why(&e, &d), deny(Reason::UnitNotAllowed, "units", 1));
}

#[test]
fn first_matching_entry_decides_and_later_ones_are_not_consulted() {
    let mut limited = entry(json!([[3, null]]), json!([range(0, 9)]));
    limited["rate"] = json!({"count": 1, "period_ns": SEC, "burst": 1});
    let e = engine(
        "enforce",
        json!([
            rule("first", json!([0]), json!([0]), json!(null), json!([limited])),
            rule(
                "second",
                json!([0]),
                json!([0]),
                json!(null),
                json!([entry(json!([[3, null]]), json!([range(0, 9)]))])
            ),
        ]),
    );
    assert_eq!(why(&e, &e.decide(0, 0, &read_holding(1, 0, 1), 0)), allow("first"));
    // The bucket is empty: denied by the first rule, the second is never tried.
    assert_eq!(why(&e, &e.decide(0, 0, &read_holding(1, 0, 1), 1)), deny(Reason::RateExceeded, "first", 6));
}

#[test]
fn monitor_mode_forwards_would_be_denials() {
    let e = engine(
        "monitor",
        json!([rule(
            "read",
            json!([0]),
            json!([0]),
            json!(null),
            json!([entry(json!([[3, null]]), json!([range(0, 9)]))])
        )]),
    );
    let would = |reason: Reason, rule: &str| (Verdict::WouldDeny, reason, rule.to_owned(), None);
    assert_eq!(why(&e, &e.decide(0, 0, &read_holding(1, 0, 1), 0)), allow("read"));
    assert_eq!(why(&e, &e.decide(0, 0, &read_holding(1, 50, 1), 0)), would(Reason::AddressOutOfRange, "read"));
    assert_eq!(why(&e, &e.decide(0, 0, &read_holding(2, 0, 1), 0)), would(Reason::UnitNotAllowed, "read"));
    // Nobody named this principal: refused even in monitor mode.
    assert_eq!(why(&e, &e.decide(5, 0, &read_holding(1, 0, 1), 0)), deny(Reason::UnknownPrincipal, "", 1));
    assert_eq!(why(&e, &e.decide(1, 0, &read_holding(1, 0, 1), 0)), would(Reason::NoMatchingRule, ""));
    assert_eq!(why(&e, &e.decide(0, 0, &adu(1, &[0x41]), 0)), would(Reason::FunctionNotAllowed, ""));
    assert!(e.decide(0, 0, &read_holding(1, 50, 1), 0).forward());
}

fn rated(mode: &str, count: u64, period_ns: u64, burst: u64) -> Engine {
    let mut en = entry(json!([[3, null]]), json!([range(0, 9)]));
    en["rate"] = json!({"count": count, "period_ns": period_ns, "burst": burst});
    let plain = entry(json!([[4, null]]), json!([]));
    engine(mode, json!([rule("rate", json!([0, 1]), json!([0, 1]), json!(null), json!([plain, en]))]))
}

#[test]
fn rate_bucket_allows_a_burst_then_refills() {
    let e = rated("enforce", 5, SEC, 5);
    let f = read_holding(1, 0, 1);
    for _ in 0..5 {
        assert_eq!(why(&e, &e.decide(0, 0, &f, 100)), allow("rate"));
    }
    assert_eq!(why(&e, &e.decide(0, 0, &f, 100)), deny(Reason::RateExceeded, "rate", 6));
    // 5 per second: one token every 200 ms.
    assert_eq!(e.decide(0, 0, &f, 100 + SEC / 5 - 1).reason, Reason::RateExceeded);
    assert_eq!(e.decide(0, 0, &f, 100 + SEC / 5).reason, Reason::Allowed);
    assert_eq!(e.decide(0, 0, &f, 100 + SEC / 5).reason, Reason::RateExceeded);
    // A long pause refills only up to the burst.
    let later = 100 + 100 * SEC;
    for _ in 0..5 {
        assert_eq!(e.decide(0, 0, &f, later).reason, Reason::Allowed);
    }
    assert_eq!(e.decide(0, 0, &f, later).reason, Reason::RateExceeded);
}

#[test]
fn rate_clock_going_back_adds_nothing() {
    let e = rated("enforce", 1, SEC, 1);
    let f = read_holding(1, 0, 1);
    assert_eq!(e.decide(0, 0, &f, 10 * SEC).reason, Reason::Allowed);
    assert_eq!(e.decide(0, 0, &f, 0).reason, Reason::RateExceeded);
    // `last` stayed at 10 s: 10.5 s has refilled half a token only.
    assert_eq!(e.decide(0, 0, &f, 10 * SEC + SEC / 2).reason, Reason::RateExceeded);
    assert_eq!(e.decide(0, 0, &f, 11 * SEC).reason, Reason::Allowed);
}

#[test]
fn rate_buckets_are_per_principal_and_shared_across_devices() {
    let e = rated("enforce", 1, SEC, 1);
    let f = read_holding(1, 0, 1);
    assert_eq!(e.decide(0, 0, &f, 0).reason, Reason::Allowed);
    assert_eq!(e.decide(1, 0, &f, 0).reason, Reason::Allowed); // engineer has its own bucket
    assert_eq!(e.decide(0, 1, &f, 0).reason, Reason::RateExceeded); // same (rule, entry, principal)
    assert_eq!(e.decide(1, 1, &f, 0).reason, Reason::RateExceeded);
}

#[test]
fn monitor_mode_charges_buckets_too() {
    let e = rated("monitor", 1, SEC, 2);
    let f = read_holding(1, 0, 1);
    assert_eq!(e.decide(0, 0, &f, 0).verdict, Verdict::Allow);
    assert_eq!(e.decide(0, 0, &f, 0).verdict, Verdict::Allow);
    let d = e.decide(0, 0, &f, 0);
    assert_eq!(why(&e, &d), (Verdict::WouldDeny, Reason::RateExceeded, "rate".to_owned(), None));
}

#[test]
fn huge_rate_parameters_do_not_overflow() {
    let e = rated("enforce", u64::MAX, u64::MAX, u64::MAX);
    let f = read_holding(1, 0, 1);
    for t in [0, 1, u64::MAX] {
        assert_eq!(e.decide(0, 0, &f, t).reason, Reason::Allowed);
    }
}

#[test]
fn engine_is_shared_across_threads() {
    let e = rated("enforce", 1, SEC, 1000);
    let f = read_holding(1, 0, 1);
    let allowed: usize = std::thread::scope(|s| {
        let hs: Vec<_> = (0..4)
            .map(|_| s.spawn(|| (0..500).filter(|_| e.decide(0, 0, &f, 0).reason == Reason::Allowed).count()))
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).sum()
    });
    assert_eq!(allowed, 1000);
}

#[test]
fn batch_decides_every_complete_frame() {
    let e = reads();
    let mut buf = Vec::new();
    buf.extend(read_holding(1, 0, 1)); // allow
    buf.extend(read_holding(1, 200, 1)); // deny address
    buf.extend(read_holding(1, 0, 0)); // deny malformed
    buf.extend(read_holding(1, 0, 1)); // allow
    let whole = buf.len();
    buf.extend(&read_holding(1, 0, 1)[..7]); // incomplete tail
    let s = e.decide_batch(0, 0, &buf, 0);
    assert_eq!((s.frames, s.allowed, s.denied, s.would_deny, s.consumed), (4, 2, 2, 0, whole));
    assert_eq!(s.verdicts, vec![0x00, 0x16, 0x12, 0x00]);
    assert_eq!(s.stop, Some(Split::Incomplete { needed: 5 }));
    let mut bad = read_holding(1, 0, 1);
    bad.extend([0x00, 0x01, 0x00, 0x09, 0x00, 0x06]);
    let s = e.decide_batch(0, 0, &bad, 0);
    assert_eq!((s.frames, s.consumed, s.stop), (1, 12, Some(Split::Invalid(SplitInvalid::ProtocolId))));
    let s = e.decide_batch(0, 0, &[], 0);
    assert_eq!((s.frames, s.consumed, s.stop), (0, 0, Some(Split::Incomplete { needed: 6 })));
}

#[test]
fn lookups_by_name() {
    let e = reads();
    assert_eq!(e.principal_index("engineer"), Some(1));
    assert_eq!(e.device_index("gateway"), Some(1));
    assert_eq!(e.principal_index("nobody"), None);
    assert_eq!((e.rule_count(), e.rule_id(0), e.rule_id(9)), (1, "read", ""));
}

/// The key-indexed decision path agrees with a plain walk of every entry of every candidate rule,
/// on random policies and random frames (two engines from one IR, so buckets evolve alike).
#[test]
fn indexed_decisions_match_the_plain_walk() {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut rnd = move |n: u64| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x % n
    };
    let fcs = [1u64, 2, 3, 4, 5, 6, 15, 16, 22, 23, 7, 8, 43];
    for round in 0..200 {
        let mut rules = Vec::new();
        for r in 0..(1 + rnd(6)) {
            let mut allow = Vec::new();
            for _ in 0..rnd(4) {
                let functions: Vec<Value> = (0..1 + rnd(4))
                    .map(|_| {
                        let fc = fcs[rnd(fcs.len() as u64) as usize];
                        match fc {
                            8 => json!([8, rnd(3)]),
                            43 => json!([43, 13 + rnd(2)]),
                            _ => json!([fc, null]),
                        }
                    })
                    .collect();
                let mut holding = Vec::new();
                let mut at = rnd(20);
                for _ in 0..rnd(3) {
                    let end = at + rnd(30);
                    if rnd(2) == 0 {
                        holding.push(range(at as u32, end as u32));
                    } else {
                        holding.push(bounded(
                            at as u32,
                            end as u32,
                            rnd(50) as i64 - 10,
                            60 + rnd(40) as i64,
                            rnd(2) == 0,
                        ));
                    }
                    at = end + 1 + rnd(3);
                }
                let mut en = entry(json!(functions), json!(holding));
                en["ranges"]["coils"] = json!([range(0, rnd(64) as u32)]);
                if rnd(3) == 0 {
                    en["max_quantity"] = json!(1 + rnd(10));
                }
                if rnd(3) == 0 {
                    en["rate"] = json!({"count": 1 + rnd(3), "period_ns": 100, "burst": 1 + rnd(3)});
                }
                allow.push(en);
            }
            // Repeat an earlier rule's entries (same checks, maybe another rate): the index drops
            // such repeats, which must never change a decision.
            if r > 0 && rnd(3) == 0 {
                let prev: &Value = &rules[rnd(r) as usize];
                allow = prev["allow"].as_array().unwrap().clone();
                if let Some(first) = allow.first_mut() {
                    first["rate"] = json!({"count": 1, "period_ns": 100, "burst": 1 + rnd(2)});
                }
            }
            let units = if rnd(3) == 0 { json!([[1, 1 + rnd(3)]]) } else { json!(null) };
            rules.push(rule(&format!("r{r}"), json!([rnd(2)]), json!([rnd(2)]), units, json!(allow)));
        }
        let mode = if round % 4 == 0 { "monitor" } else { "enforce" };
        let a = engine(mode, json!(rules.clone()));
        let b = engine(mode, json!(rules));
        for t in 0..300u64 {
            let unit = 1 + rnd(3) as u8;
            let start = rnd(120) as u16;
            let frame = match rnd(8) {
                0 => read_holding(unit, start, 1 + rnd(20) as u16),
                1 => write_single(unit, start, rnd(120) as u16),
                2 => write_multiple(unit, start, &[rnd(100) as u16, 0xFFF0 + rnd(16) as u16]),
                3 => adu(unit, &[0x01, 0x00, rnd(70) as u8, 0x00, 1 + rnd(8) as u8]),
                4 => adu(unit, &[0x08, 0x00, rnd(3) as u8, 0x00, 0x00]),
                5 => adu(unit, &[0x2B, 13 + rnd(2) as u8, 0x01, 0x00]),
                6 => adu(unit, &[0x16, 0x00, start as u8, 0xFF, 0x00, 0x00, 0x01]),
                _ => adu(
                    unit,
                    &[0x17, 0x00, start as u8, 0x00, 0x02, 0x00, rnd(100) as u8, 0x00, 0x01, 0x02, 0x00, 0x05],
                ),
            };
            let (p, d) = (rnd(3) as u32, rnd(3) as u32);
            let da = a.decide(p, d, &frame, t * 37);
            let db = b.decide_scan(p, d, &frame, t * 37);
            assert_eq!(da, db, "round {round} frame {frame:02x?} p {p} d {d}");
        }
    }
}

/// Whatever the bytes, a decision comes back, and a malformed one is never forwarded.
#[test]
fn arbitrary_frames_always_get_a_decision() {
    let mut en = entry(
        json!([[3, null], [16, null], [8, 0], [43, 14], [21, null], [22, null]]),
        json!([bounded(0, 99, -5, 5, true)]),
    );
    en["ranges"]["file_records"] = json!([bounded(0x10000, 0x1FFFF, 0, 9, false)]);
    en["rate"] = json!({"count": 1, "period_ns": 10, "burst": 3});
    let e = engine("enforce", json!([rule("any", json!([0, 1]), json!([0, 1]), json!(null), json!([en]))]));
    let mut x: u32 = 0x5EED_1234;
    let mut rnd = || {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        x
    };
    for i in 0..200_000u64 {
        let fc = [3u8, 16, 8, 43, 21, 22, 20, 23, 15, (rnd() >> 24) as u8][(rnd() % 10) as usize];
        let len = (rnd() % 40) as usize;
        let mut pdu = vec![fc];
        pdu.extend((0..len).map(|_| (rnd() >> 24) as u8));
        let mut frame = adu((rnd() % 3) as u8, &pdu);
        match rnd() % 8 {
            0 => frame.truncate((rnd() as usize) % (frame.len() + 1)),
            1 => frame.push((rnd() >> 24) as u8),
            2 => {
                let at = (rnd() as usize) % frame.len();
                frame[at] ^= 1 << (rnd() % 8);
            }
            _ => {}
        }
        let d = e.decide(rnd() % 3, rnd() % 3, &frame, i);
        if d.reason == Reason::Malformed {
            assert!(!d.forward() && d.exception == Some(3) && d.malformed.is_some());
        }
        assert_eq!(d.malformed.is_some(), d.reason == Reason::Malformed);
        assert_eq!(d.verdict == Verdict::Allow, d.reason == Reason::Allowed);
    }
}
