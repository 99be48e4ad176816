//! CIP decisions (docs/cip-engine.md sections 2-5 and 8): compile errors, each check and its depth,
//! tag patterns bullet by bullet, containers with a denied inner leaf, rate buckets with explicit
//! clocks, monitor mode and the malformed pass.

mod enip_support;

use enip_support::{msp, unconnected_send};
use serde_json::{json, Value};
use zonegate_core::enip::Port;
use zonegate_core::policy::{CipDecision, CipReason, Engine, IrError, Reason, Verdict};

const SEC: u64 = 1_000_000_000;
const OPERATOR: u32 = 0;
const ENGINEER: u32 = 1;
const PLC: u32 = 0;

// ---- request builders -------------------------------------------------------------------------

/// ANSI extended symbol segment: 0x91, length, characters, pad to even.
fn sym(name: &str) -> Vec<u8> {
    let mut v = vec![0x91, name.len() as u8];
    v.extend_from_slice(name.as_bytes());
    if name.len() % 2 == 1 {
        v.push(0);
    }
    v
}

/// Member (array element) segment in the narrowest form that holds `i`.
fn element(i: u32) -> Vec<u8> {
    match i {
        0..=0xFF => vec![0x28, i as u8],
        0x100..=0xFFFF => [vec![0x29, 0], (i as u16).to_le_bytes().to_vec()].concat(),
        _ => [vec![0x2A, 0], i.to_le_bytes().to_vec()].concat(),
    }
}

/// The request path of a tag written `A.B[1,2].C`.
fn tag_path(tag: &str) -> Vec<u8> {
    let mut v = Vec::new();
    for part in tag.split('.') {
        let (name, elements) = match part.split_once('[') {
            Some((n, rest)) => (n, rest.trim_end_matches(']').split(',').map(|e| e.parse().unwrap()).collect()),
            None => (part, Vec::new()),
        };
        v.extend(sym(name));
        for e in elements {
            v.extend(element(e));
        }
    }
    v
}

/// A message router request: service, path size in words, path, data.
fn req(service: u8, path: &[u8], data: &[u8]) -> Vec<u8> {
    assert_eq!(path.len() % 2, 0);
    [vec![service, (path.len() / 2) as u8], path.to_vec(), data.to_vec()].concat()
}

/// Read Tag (0x4C) of `count` elements.
fn read_tag(tag: &str, count: u16) -> Vec<u8> {
    req(0x4C, &tag_path(tag), &count.to_le_bytes())
}

/// Write Tag (0x4D): DINT (0xC4), `count` elements, their values.
fn write_tag(tag: &str, count: u16) -> Vec<u8> {
    let mut data = vec![0xC4, 0x00];
    data.extend_from_slice(&count.to_le_bytes());
    data.extend(vec![0u8; 4 * count as usize]);
    req(0x4D, &tag_path(tag), &data)
}

/// Logical path: class, then instance and attribute when given (8-bit forms).
fn logical(class: u8, instance: Option<u8>, attribute: Option<u8>) -> Vec<u8> {
    let mut v = vec![0x20, class];
    if let Some(i) = instance {
        v.extend([0x24, i]);
    }
    if let Some(a) = attribute {
        v.extend([0x30, a]);
    }
    v
}

/// Get Attribute Single (0x0E).
fn get_single(class: u8, instance: Option<u8>, attribute: Option<u8>) -> Vec<u8> {
    req(0x0E, &logical(class, instance, attribute), &[])
}

// ---- policy builders --------------------------------------------------------------------------

/// An IR tag pattern from its written form, `Line1.Motor[0..3,2..5].*`.
fn pat(text: &str) -> Value {
    let text = text.replace("..", "~");
    let parts: Vec<Value> = text
        .split('.')
        .map(|part| match part.split_once('[') {
            Some((name, rest)) => {
                let dims: Vec<Value> = rest
                    .trim_end_matches(']')
                    .split(',')
                    .map(|d| {
                        let (lo, hi) = d.split_once('~').unwrap_or((d, d));
                        json!([lo.parse::<u32>().unwrap(), hi.parse::<u32>().unwrap()])
                    })
                    .collect();
                json!({"name": name.to_ascii_lowercase(), "elements": dims})
            }
            None => json!({"name": part.to_ascii_lowercase(), "elements": null}),
        })
        .collect();
    json!({ "parts": parts })
}

fn tags(services: &[&str], patterns: &[&str]) -> Value {
    json!({"services": services, "tags": patterns.iter().map(|p| pat(p)).collect::<Vec<_>>()})
}

fn classes(services: &[&str], classes: Value, instances: Value, attributes: Value) -> Value {
    json!({"services": services, "classes": classes, "instances": instances, "attributes": attributes})
}

fn cip_rule(id: &str, principals: Value, cip: Value) -> Value {
    json!({"id": id, "principals": principals, "devices": [0], "units": null, "allow": [], "cip": cip})
}

fn ir(mode: &str, rules: Value) -> Value {
    json!({
        "version": 1,
        "mode": mode,
        "principals": [
            {"name": "operator", "tls_roles": ["Operator"], "subjects": [], "opcua_users": [], "sources": []},
            {"name": "engineer", "tls_roles": ["Engineer"], "subjects": [], "opcua_users": [], "sources": []},
        ],
        "devices": [
            {"name": "press-plc", "zone": "cell-a", "host": "192.168.10.12", "port": 502, "units": null,
             "enip": {"host": "192.168.10.12", "port": 44818}},
        ],
        "rules": rules,
    })
}

fn engine(mode: &str, rules: Value) -> Engine {
    Engine::from_json(&ir(mode, rules).to_string()).expect("valid IR")
}

fn compile_error(rules: Value) -> (String, String) {
    match Engine::from_json(&ir("enforce", rules).to_string()) {
        Err(IrError::Invalid { path, message }) => (path, message),
        other => panic!("expected an invalid IR, got {other:?}"),
    }
}

/// One engine with a single rule for the operator holding `entries`.
fn with(entries: Value) -> Engine {
    engine("enforce", json!([cip_rule("r", json!([0]), entries)]))
}

fn decide(e: &Engine, msg: &[u8]) -> CipDecision {
    e.decide_cip(OPERATOR, PLC, msg, &[], 0)
}

fn allowed(e: &Engine, msg: &[u8]) -> bool {
    let d = decide(e, msg);
    assert_ne!(d.reason, CipReason::Malformed, "{d:?}");
    d.verdict == Verdict::Allow
}

// ---- compile ----------------------------------------------------------------------------------

#[test]
fn an_ir_without_cip_compiles_and_a_cip_only_rule_matches_no_modbus_request() {
    let e = with(json!([tags(&["read_tag"], &["Recipe"])]));
    // A rule with an empty `allow` is no candidate for Modbus: fc 3 finds no matching rule.
    let adu = [0, 1, 0, 0, 0, 6, 1, 3, 0, 0, 0, 1];
    assert_eq!(e.decide(OPERATOR, PLC, &adu, 0).reason, Reason::NoMatchingRule);
}

#[test]
fn compile_errors_name_the_field() {
    let cases: Vec<(Value, &str, &str)> = vec![
        (json!([tags(&["read_tags"], &["A"])]), "rules[0].cip[0].services[0]", "unknown CIP service \"read_tags\""),
        (json!([tags(&["unconnected_send"], &["A"])]), "rules[0].cip[0].services[0]", "container"),
        (json!([tags(&["multiple_service_packet"], &["A"])]), "rules[0].cip[0].services[0]", "container"),
        (json!([{"services": ["read_tag"]}]), "rules[0].cip[0].tags", "name the tags or the class"),
        (json!([{"services": [], "service_codes": []}]), "rules[0].cip[0].services", "names no service"),
        (
            json!([{"services": ["forward_open"], "service_codes": [0x4B]}]),
            "rules[0].cip[0].tags",
            "name the tags or the class",
        ),
        (
            json!([{"services": ["read_tag"], "tags": [pat("A")], "classes": [[1, 1]]}]),
            "rules[0].cip[0].tags",
            "cannot be combined",
        ),
        (
            json!([{"services": ["get_attribute_all"], "service_codes": [0x80], "classes": [[1, 1]]}]),
            "rules[0].cip[0].service_codes[0]",
            "outside 0..=0x7F",
        ),
        (json!([{"services": ["get_attribute_all"], "classes": [[7, 1]]}]), "rules[0].cip[0].classes[0]", "reversed"),
        (
            json!([{"services": ["get_attribute_all"], "instances": [[0, 4294967296i64]]}]),
            "rules[0].cip[0].instances[0]",
            "outside",
        ),
        (
            json!([{"services": ["read_tag"], "tags": [{"parts": [{"name": "press-sp", "elements": null}]}]}]),
            "rules[0].cip[0].tags[0].parts[0].name",
            "not a tag name part",
        ),
        (
            json!([{"services": ["read_tag"], "tags": [{"parts": [{"name": "*", "elements": [[0, 1]]}]}]}]),
            "rules[0].cip[0].tags[0].parts[0]",
            "takes no elements",
        ),
        (
            json!([{"services": ["read_tag"], "tags": [{"parts": [{"name": "a", "elements": []}]}]}]),
            "rules[0].cip[0].tags[0].parts[0].elements",
            "at least one range",
        ),
        (
            json!([{"services": ["read_tag"], "tags": [{"parts": [{"name": "a", "elements": [[5, 2]]}]}]}]),
            "rules[0].cip[0].tags[0].parts[0].elements[0]",
            "reversed",
        ),
        (
            json!([{"services": ["read_tag"], "tags": [{"parts": []}]}]),
            "rules[0].cip[0].tags[0].parts",
            "at least one part",
        ),
        (
            json!([{"services": ["read_tag"], "tags": [pat("A")], "routes": [[[0, [1]]]]}]),
            "rules[0].cip[0].routes[0][0]",
            "port 0",
        ),
        (
            json!([{"services": ["read_tag"], "tags": [pat("A")], "routes": [[[1, []]]]}]),
            "rules[0].cip[0].routes[0][0]",
            "1 to 255 bytes",
        ),
        (
            json!([{"services": ["read_tag"], "tags": [pat("A")], "routes": [[[1, [256]]]]}]),
            "rules[0].cip[0].routes[0][0]",
            "link byte 256",
        ),
        (
            json!([{"services": ["read_tag"], "tags": [pat("A")], "rate": {"count": 0, "period_ns": 1, "burst": 1}}]),
            "rules[0].cip[0].rate.count",
            ">= 1",
        ),
    ];
    for (entries, path, message) in cases {
        let (p, m) = compile_error(json!([cip_rule("r", json!([0]), entries.clone())]));
        assert_eq!(p, path, "{entries}");
        assert!(m.contains(message), "{m:?} lacks {message:?} for {entries}");
    }
    let unknown_field = json!([cip_rule("r", json!([0]), json!([{"services": ["read_tag"], "tag": [pat("A")]}]))]);
    assert!(matches!(Engine::from_json(&ir("enforce", unknown_field).to_string()), Err(IrError::Syntax(_))));
}

#[test]
fn an_entry_of_no_target_services_alone_admits_any_target() {
    let e = with(json!([{"services": ["no_operation", "forward_close"]}]));
    assert!(allowed(&e, &req(0x17, &logical(0x01, Some(1), None), &[])));
}

// ---- services ---------------------------------------------------------------------------------

#[test]
fn service_names_and_unresolved_codes() {
    let e = with(json!([
        {"services": ["get_attribute_single"], "service_codes": [0x4B, 0x4C], "classes": [[0x64, 0x64]],
         "instances": null, "attributes": null},
    ]));
    assert!(allowed(&e, &get_single(0x64, Some(1), Some(1))));
    // 0x4B and 0x4C to a class that is neither a tag nor the Connection Manager: Other(code).
    assert!(allowed(&e, &req(0x4B, &logical(0x64, Some(1), None), &[])));
    assert!(allowed(&e, &req(0x4C, &logical(0x64, Some(1), None), &[])));
    let d = decide(&e, &req(0x4D, &logical(0x64, Some(1), None), &[]));
    assert_eq!((d.reason, d.general_status), (CipReason::ServiceNotAllowed, Some(0x0F)));
    // A code names only Other(code): 0x4C to a tag is read_tag, not code 0x4C.
    let e = with(json!([{"services": [], "service_codes": [0x4C], "tags": [pat("A")]}]));
    assert_eq!(decide(&e, &read_tag("A", 1)).reason, CipReason::ServiceNotAllowed);
}

// ---- logical targets --------------------------------------------------------------------------

#[test]
fn logical_targets_check_class_instance_and_attribute() {
    let e = with(json!([classes(&["get_attribute_single"], json!([[0x01, 0x01]]), json!([[1, 1]]), json!([[1, 7]]))]));
    assert!(allowed(&e, &get_single(0x01, Some(1), Some(7))));
    for (msg, why) in [
        (get_single(0x01, Some(1), Some(8)), "attribute out of range"),
        (get_single(0x01, Some(2), Some(1)), "instance out of range"),
        (get_single(0x02, Some(1), Some(1)), "class out of range"),
        (get_single(0x01, None, Some(1)), "no instance"),
        (get_single(0x01, Some(1), None), "no attribute"),
        (req(0x0E, &tag_path("Identity"), &[]), "a tag, not a class"),
    ] {
        let d = decide(&e, &msg);
        assert_eq!((d.verdict, d.reason), (Verdict::Deny, CipReason::TargetNotAllowed), "{why}");
        assert_eq!(d.rule, Some(0), "{why}");
    }
    let any_instance = with(json!([classes(&["get_attribute_all"], json!([[1, 1]]), Value::Null, Value::Null)]));
    assert!(allowed(&any_instance, &req(0x01, &logical(0x01, Some(9), None), &[])));
    assert!(allowed(&any_instance, &req(0x01, &logical(0x01, None, None), &[])));
    let d = decide(&any_instance, &req(0x01, &logical(0x01, Some(1), None), &[]));
    assert_eq!(d.target, "class 0x01 instance 1");
    let d = decide(&e, &get_single(0x01, Some(1), Some(7)));
    assert_eq!(d.target, "class 0x01 instance 1 attribute 7");
}

// ---- tag patterns (section 3, bullet by bullet) -----------------------------------------------

#[test]
fn names_compare_ascii_case_insensitively() {
    let e = with(json!([tags(&["read_tag"], &["Program:Main.Press_SP"])]));
    for tag in ["Program:Main.Press_SP", "PROGRAM:MAIN.PRESS_SP", "program:main.press_sp"] {
        assert!(allowed(&e, &read_tag(tag, 1)), "{tag}");
    }
    assert!(!allowed(&e, &read_tag("Program:Main.Press_SQ", 1)));
    // The loader lower-cases pattern names; the engine does too, for an IR written by hand.
    let upper =
        with(json!([{"services": ["read_tag"], "tags": [{"parts": [{"name": "Press_SP", "elements": null}]}]}]));
    assert!(allowed(&upper, &read_tag("press_sp", 1)));
}

#[test]
fn a_star_part_matches_any_one_part_with_any_elements() {
    let e = with(json!([tags(&["read_tag"], &["Line1.*.Speed"])]));
    assert!(allowed(&e, &read_tag("Line1.Motor.Speed", 1)));
    assert!(allowed(&e, &read_tag("Line1.Motor[2].Speed", 1)));
    assert!(allowed(&e, &read_tag("Line1.Pump[1,2].Speed", 1)));
    assert!(!allowed(&e, &read_tag("Line1.Speed", 1)), "`*` is one part, not none");
    assert!(!allowed(&e, &read_tag("Line1.Motor.Amps", 1)));
    assert!(!allowed(&e, &read_tag("Line2.Motor.Speed", 1)));
}

#[test]
fn a_trailing_star_matches_one_or_more_remaining_parts() {
    let e = with(json!([tags(&["read_tag"], &["Line1.*"])]));
    assert!(allowed(&e, &read_tag("Line1.Speed", 1)));
    assert!(allowed(&e, &read_tag("Line1.Motor[2].Amps", 1)));
    assert!(!allowed(&e, &read_tag("Line1", 1)), "not Line1 itself");
    assert!(!allowed(&e, &read_tag("Line1[3]", 1)), "not an element of Line1 either");
    let everything = with(json!([tags(&["read_tag"], &["*"])]));
    assert!(allowed(&everything, &read_tag("Anything[4].At.All", 1)));
}

#[test]
fn a_part_without_brackets_admits_any_elements_or_none() {
    let e = with(json!([tags(&["read_tag"], &["Recipe"])]));
    assert!(allowed(&e, &read_tag("Recipe", 1)));
    assert!(allowed(&e, &read_tag("Recipe[7]", 1)));
    assert!(allowed(&e, &read_tag("Recipe[1,2,3]", 1)));
    assert!(!allowed(&e, &read_tag("Recipes", 1)));
}

#[test]
fn a_part_with_brackets_admits_exactly_its_dimensions_in_range() {
    let e = with(json!([tags(&["read_tag"], &["Press_SP[0..9]", "Grid[0..3,0..7]"])]));
    assert!(allowed(&e, &read_tag("Press_SP[0]", 1)));
    assert!(allowed(&e, &read_tag("Press_SP[9]", 1)));
    assert!(!allowed(&e, &read_tag("Press_SP[10]", 1)));
    assert!(!allowed(&e, &read_tag("Press_SP", 1)), "no elements: not the bracketed pattern");
    assert!(!allowed(&e, &read_tag("Press_SP[1,2]", 1)), "two dimensions against one");
    assert!(allowed(&e, &read_tag("Grid[3,7]", 1)));
    assert!(!allowed(&e, &read_tag("Grid[4,0]", 1)));
    assert!(!allowed(&e, &read_tag("Grid[0,8]", 1)));
    assert!(!allowed(&e, &read_tag("Grid[1]", 1)));
    // 16- and 32-bit element segments read the same as 8-bit ones.
    let wide = with(json!([tags(&["read_tag"], &["Log[256..70000]"])]));
    assert!(allowed(&wide, &read_tag("Log[256]", 1)));
    assert!(allowed(&wide, &read_tag("Log[70000]", 1)));
    assert!(!allowed(&wide, &read_tag("Log[255]", 1)));
    assert!(!allowed(&wide, &read_tag("Log[70001]", 1)));
}

#[test]
fn fewer_parts_admit_members_and_more_parts_do_not_match() {
    let e = with(json!([tags(&["read_tag"], &["Motor"])]));
    assert!(allowed(&e, &read_tag("Motor.Speed", 1)));
    assert!(allowed(&e, &read_tag("Motor[1].Speed.Raw", 1)));
    let e = with(json!([tags(&["read_tag"], &["Motor.Speed"])]));
    assert!(!allowed(&e, &read_tag("Motor", 1)));
    assert!(allowed(&e, &read_tag("Motor.Speed", 1)));
}

#[test]
fn the_element_count_must_stay_in_a_one_dimension_range() {
    let e = with(json!([tags(&["read_tag", "write_tag"], &["Press_SP[0..9]"])]));
    assert!(allowed(&e, &read_tag("Press_SP[0]", 10)));
    assert!(allowed(&e, &read_tag("Press_SP[8]", 2)));
    assert!(!allowed(&e, &read_tag("Press_SP[8]", 3)));
    assert!(!allowed(&e, &read_tag("Press_SP[1]", 10)));
    assert!(allowed(&e, &read_tag("Press_SP[9]", 0)), "a count of 0 touches the start index only");
    assert!(allowed(&e, &write_tag("Press_SP[5]", 5)));
    assert!(!allowed(&e, &write_tag("Press_SP[5]", 6)));
    // A count beyond u32 arithmetic: 0xFFFFFFFF + 0xFFFF - 1 must not wrap into range.
    let top = with(json!([tags(&["read_tag"], &["Big[4294967295..4294967295]"])]));
    assert!(allowed(&top, &read_tag("Big[4294967295]", 1)));
    assert!(!allowed(&top, &read_tag("Big[4294967295]", 0xFFFF)));
}

#[test]
fn the_element_count_of_a_structure_write_is_read_after_its_handle() {
    let e = with(json!([tags(&["write_tag"], &["Recipes[0..3]"])]));
    // type 0x02A0 (structure), handle 0x1234, count, data
    let write = |count: u16| {
        let mut data = vec![0xA0, 0x02, 0x34, 0x12];
        data.extend_from_slice(&count.to_le_bytes());
        data.extend([0u8; 8]);
        req(0x4D, &tag_path("Recipes[2]"), &data)
    };
    assert!(allowed(&e, &write(2)));
    assert!(!allowed(&e, &write(3)));
}

#[test]
fn a_count_over_one_on_a_multi_dimension_element_does_not_match_brackets() {
    let e = with(json!([tags(&["read_tag"], &["Grid[0..3,0..7]"])]));
    assert!(allowed(&e, &read_tag("Grid[1,1]", 1)));
    assert!(!allowed(&e, &read_tag("Grid[1,1]", 2)));
    let whole = with(json!([tags(&["read_tag"], &["Grid"])]));
    assert!(allowed(&whole, &read_tag("Grid[1,1]", 32)));
}

#[test]
fn the_count_applies_to_the_last_part_with_elements_in_the_request() {
    // Line1[2].Motor: the last part with elements is Line1, bracketed [0..3] in the pattern.
    let e = with(json!([tags(&["read_tag"], &["Line1[0..3].Motor"])]));
    assert!(allowed(&e, &read_tag("Line1[2].Motor", 2)));
    assert!(!allowed(&e, &read_tag("Line1[2].Motor", 3)));
    // The last part with elements matched a part without brackets, `*`, or sits beyond the pattern
    // as a member: any count.
    let e = with(json!([tags(&["read_tag"], &["Line1[0..3].Arr", "Cell.*", "Motor"])]));
    assert!(allowed(&e, &read_tag("Line1[3].Arr[5]", 100)));
    assert!(allowed(&e, &read_tag("Cell.Arr[5]", 100)));
    assert!(allowed(&e, &read_tag("Motor.Speeds[3]", 50)));
    // A tag with no elements at all: no count can leave a range.
    let e = with(json!([tags(&["read_tag"], &["Recipe"])]));
    assert!(allowed(&e, &read_tag("Recipe", 500)));
}

#[test]
fn a_missing_count_is_malformed_short_data() {
    let e = with(json!([tags(&["read_tag", "write_tag", "read_modify_write_tag"], &["*"])]));
    for (msg, what) in [
        (req(0x4C, &tag_path("Press_SP[1]"), &[]), "read_tag without a count"),
        (req(0x4C, &tag_path("Press_SP[1]"), &[1]), "read_tag with half a count"),
        (req(0x4D, &tag_path("Press_SP[1]"), &[0xC4, 0x00]), "write_tag without a count"),
        (req(0x4E, &tag_path("Press_SP"), &[4, 0, 0xFF]), "read_modify_write_tag short of its masks"),
    ] {
        let d = decide(&e, &msg);
        assert_eq!(
            (d.verdict, d.reason, d.malformed, d.general_status),
            (Verdict::Deny, CipReason::Malformed, Some("short_data"), Some(0x13)),
            "{what}"
        );
    }
}

#[test]
fn a_tag_entry_needs_a_tag_and_a_logical_entry_a_class() {
    let e = with(json!([tags(&["read_tag"], &["*"])]));
    // Read Tag to a Symbol instance (class 0x6B): no tag name, so no tag entry admits it.
    let d = decide(&e, &req(0x4C, &logical(0x6B, Some(5), None), &[1, 0]));
    assert_eq!(d.reason, CipReason::TargetNotAllowed);
}

// ---- routes -----------------------------------------------------------------------------------

/// Port 2 (Ethernet) to 10.0.0.5: extended link address, 8 characters.
fn to_ip() -> Vec<u8> {
    [vec![0x12, 0x08], b"10.0.0.5".to_vec()].concat()
}

#[test]
fn routes_admit_exactly_the_listed_routes() {
    let e = with(json!([{"services": ["read_tag"], "tags": [pat("Recipe")], "routes": [[[1, [0]]], []]}]));
    let read = read_tag("Recipe", 1);
    assert!(allowed(&e, &read), "the empty route: the device itself");
    let d = decide(&e, &unconnected_send(&read, &[0x01, 0x00]));
    assert_eq!((d.verdict, d.route.as_str()), (Verdict::Allow, "1,0"));
    let d = decide(&e, &unconnected_send(&read, &[0x01, 0x03]));
    assert_eq!((d.verdict, d.reason, d.route.as_str()), (Verdict::Deny, CipReason::RouteNotAllowed, "1,3"));
    // Nested Unconnected Sends: outermost hop first.
    let nested = unconnected_send(&unconnected_send(&read, &[0x01, 0x03]), &to_ip());
    let d = decide(&e, &nested);
    assert_eq!((d.reason, d.route.as_str()), (CipReason::RouteNotAllowed, "2,10.0.0.5/1,3"));
    let ip = with(json!([{"services": ["read_tag"], "tags": [pat("Recipe")],
                          "routes": [[[2, b"10.0.0.5".to_vec()], [1, [3]]]]}]));
    assert!(allowed(&ip, &nested));
    assert!(!allowed(&ip, &unconnected_send(&unconnected_send(&read, &to_ip()), &[0x01, 0x03])), "order matters");
    // The request's own port segments extend the route.
    let own = req(0x4C, &[vec![0x01, 0x00], tag_path("Recipe")].concat(), &[1, 0]);
    assert!(allowed(&e, &own));
    // A connected request's connection route comes first.
    let prefix = [Port { port: 1, link: vec![0] }];
    assert_eq!(e.decide_cip(OPERATOR, PLC, &read, &prefix, 0).verdict, Verdict::Allow);
    assert_eq!(
        e.decide_cip(OPERATOR, PLC, &unconnected_send(&read, &[0x01, 0x00]), &prefix, 0).reason,
        CipReason::RouteNotAllowed
    );
}

// ---- depth and ties ---------------------------------------------------------------------------

#[test]
fn the_deepest_failure_decides_and_ties_go_to_the_first_entry() {
    let e = engine(
        "enforce",
        json!([
            cip_rule(
                "route-only",
                json!([0]),
                json!([{"services": ["read_tag"], "tags": [pat("A")], "routes": [[[1, [9]]]]}])
            ),
            cip_rule("service", json!([0]), json!([tags(&["write_tag"], &["A"])])),
            cip_rule("target", json!([0]), json!([tags(&["read_tag"], &["B"])])),
            cip_rule("target-2", json!([0]), json!([tags(&["read_tag"], &["C"])])),
        ]),
    );
    let d = decide(&e, &read_tag("Z", 1));
    assert_eq!((d.reason, d.rule), (CipReason::TargetNotAllowed, Some(2)));
    let d = decide(&e, &req(0x4E, &tag_path("Z"), &[0, 0]));
    assert_eq!((d.reason, d.rule), (CipReason::ServiceNotAllowed, Some(1)));
    let only_routes = engine(
        "enforce",
        json!([cip_rule("r0", json!([0]), json!([{"services": ["read_tag"], "tags": [pat("A")], "routes": [[]]}]))]),
    );
    let d = decide(&only_routes, &unconnected_send(&read_tag("A", 1), &[0x01, 0x00]));
    assert_eq!((d.reason, d.rule, d.general_status), (CipReason::RouteNotAllowed, Some(0), Some(0x0F)));
}

#[test]
fn a_leaf_tries_the_entries_its_first_name_can_match_and_the_walk_order_still_decides() {
    let e = engine(
        "enforce",
        json!([
            cip_rule("motor", json!([0]), json!([tags(&["read_tag"], &["Motor.Speed"])])),
            cip_rule(
                "identity",
                json!([0]),
                json!([{"services": ["get_attribute_single"], "classes": [[1, 1]], "instances": null, "attributes": null}])
            ),
            cip_rule("amps", json!([0]), json!([tags(&["read_tag"], &["*.Amps"])])),
            cip_rule("open", json!([0]), json!([{"services": ["forward_open"]}])),
        ]),
    );
    let d = decide(&e, &read_tag("MOTOR.Speed", 1));
    assert_eq!((d.verdict, d.rule), (Verdict::Allow, Some(0)), "first names compare in any case");
    let d = decide(&e, &read_tag("Pump.Amps", 1));
    assert_eq!((d.verdict, d.rule), (Verdict::Allow, Some(2)), "a `*` first part admits names no pattern names");
    let d = decide(&e, &read_tag("Motor.Amps", 1));
    assert_eq!((d.verdict, d.rule), (Verdict::Allow, Some(2)), "and names other patterns name");
    let d = decide(&e, &read_tag("Pump.Speed", 1));
    assert_eq!((d.reason, d.rule), (CipReason::TargetNotAllowed, Some(0)));
    // A tag sent to Get Attribute Single: the logical entry passes route and service, so it is the
    // deepest failure although it is not among the entries a tagged leaf can match.
    let d = decide(&e, &req(0x0E, &tag_path("Motor"), &[]));
    assert_eq!((d.reason, d.rule), (CipReason::TargetNotAllowed, Some(1)));
    let d = decide(&e, &get_single(1, Some(1), Some(1)));
    assert_eq!((d.verdict, d.rule, d.target.as_str()), (Verdict::Allow, Some(1), "class 0x01 instance 1 attribute 1"));
}

#[test]
fn no_candidate_rule_is_no_matching_rule_and_an_unknown_principal_is_refused() {
    let e = engine("monitor", json!([cip_rule("r", json!([0]), json!([tags(&["read_tag"], &["A"])]))]));
    let d = e.decide_cip(ENGINEER, PLC, &read_tag("A", 1), &[], 0);
    assert_eq!((d.verdict, d.reason, d.rule), (Verdict::WouldDeny, CipReason::NoMatchingRule, None));
    let d = e.decide_cip(OPERATOR, 7, &read_tag("A", 1), &[], 0);
    assert_eq!(d.reason, CipReason::NoMatchingRule, "an unknown device has no rules");
    let d = e.decide_cip(9, PLC, &read_tag("A", 1), &[], 0);
    assert_eq!((d.verdict, d.reason, d.general_status), (Verdict::Deny, CipReason::UnknownPrincipal, Some(0x0F)));
}

// ---- containers -------------------------------------------------------------------------------

#[test]
fn a_denied_leaf_in_a_multiple_service_packet_denies_the_message() {
    let e =
        with(json!([tags(&["read_tag"], &["Line1.*"]), {"services": ["write_tag"], "tags": [pat("Press_SP[0..9]")]}]));
    let ok = msp(&[&read_tag("Line1.Speed", 1), &write_tag("Press_SP[2]", 1)]);
    let d = decide(&e, &ok);
    assert_eq!((d.verdict, d.leaves, d.denied_leaf, d.service), (Verdict::Allow, 2, None, 0x0A));
    assert_eq!((d.rule, d.target.as_str()), (Some(0), "Line1.Speed"));
    let bad = msp(&[&read_tag("Line1.Speed", 1), &write_tag("Line1.Speed", 1), &read_tag("Line1.Amps", 1)]);
    let d = decide(&e, &bad);
    assert_eq!((d.verdict, d.reason), (Verdict::Deny, CipReason::TargetNotAllowed));
    assert_eq!((d.leaves, d.denied_leaf, d.target.as_str()), (2, Some(1), "Line1.Speed"));
}

#[test]
fn a_denied_leaf_nested_in_unconnected_send_and_multiple_service_packets_denies_the_message() {
    let e = with(json!([{"services": ["read_tag", "get_attribute_all"], "tags": [pat("*")], "routes": [[[1, [0]]]]}]));
    let inner = msp(&[&read_tag("A", 1), &msp(&[&read_tag("B", 1), &read_tag("C", 1)])]);
    let d = decide(&e, &unconnected_send(&inner, &[0x01, 0x00]));
    assert_eq!((d.verdict, d.leaves, d.service), (Verdict::Allow, 3, 0x52));
    let inner = msp(&[&read_tag("A", 1), &msp(&[&read_tag("B", 1), &write_tag("C", 1)])]);
    let d = decide(&e, &unconnected_send(&inner, &[0x01, 0x00]));
    assert_eq!(
        (d.reason, d.denied_leaf, d.target.as_str(), d.route.as_str()),
        (CipReason::ServiceNotAllowed, Some(2), "C", "1,0")
    );
}

#[test]
fn leaves_after_the_first_denial_charge_no_bucket() {
    let e = with(json!([
        {"services": ["read_tag"], "tags": [pat("A")], "rate": {"count": 1, "period_ns": SEC, "burst": 1}},
    ]));
    let d = decide(&e, &msp(&[&read_tag("Z", 1), &read_tag("A", 1)]));
    assert_eq!(d.denied_leaf, Some(0));
    assert!(allowed(&e, &read_tag("A", 1)), "the bucket still holds its token");
}

// ---- rate -------------------------------------------------------------------------------------

#[test]
fn rate_buckets_per_rule_entry_and_principal() {
    let rated = json!({"services": ["write_tag"], "tags": [pat("Press_SP[0..9]")],
                       "rate": {"count": 1, "period_ns": SEC, "burst": 2}});
    let e = engine("enforce", json!([cip_rule("sp", json!([0, 1]), json!([rated]))]));
    let w = write_tag("Press_SP[1]", 1);
    for t in [0, 1] {
        assert_eq!(e.decide_cip(OPERATOR, PLC, &w, &[], t).verdict, Verdict::Allow);
    }
    let d = e.decide_cip(OPERATOR, PLC, &w, &[], 2);
    assert_eq!(
        (d.verdict, d.reason, d.rule, d.general_status),
        (Verdict::Deny, CipReason::RateExceeded, Some(0), Some(0x02))
    );
    assert_eq!(e.decide_cip(ENGINEER, PLC, &w, &[], 2).verdict, Verdict::Allow, "another principal, another bucket");
    assert_eq!(e.decide_cip(OPERATOR, PLC, &w, &[], SEC + 2).verdict, Verdict::Allow, "a second refills one token");
    // Two leaves charge two tokens: a bucket of one refuses the second leaf.
    let one = json!({"services": ["read_tag"], "tags": [pat("A")], "rate": {"count": 1, "period_ns": SEC, "burst": 1}});
    let e = with(json!([one]));
    let d = e.decide_cip(OPERATOR, PLC, &msp(&[&read_tag("A", 1), &read_tag("A", 1)]), &[], 0);
    assert_eq!((d.reason, d.denied_leaf), (CipReason::RateExceeded, Some(1)));
}

#[test]
fn cip_buckets_are_not_the_modbus_buckets() {
    let mut rule = cip_rule(
        "both",
        json!([0]),
        json!([{"services": ["read_tag"], "tags": [pat("A")],
                                                        "rate": {"count": 1, "period_ns": SEC, "burst": 1}}]),
    );
    rule["allow"] = json!([{
        "functions": [[3, null]],
        "ranges": {"holding_registers": [{"start": 0, "end": 9, "min": null, "max": null, "signed": false}],
                   "coils": [], "discrete_inputs": [], "input_registers": [], "file_records": []},
        "max_quantity": null, "rate": {"count": 1, "period_ns": SEC, "burst": 1},
    }]);
    let e = engine("enforce", json!([rule]));
    let adu = [0, 1, 0, 0, 0, 6, 1, 3, 0, 0, 0, 1];
    assert!(e.decide(OPERATOR, PLC, &adu, 0).forward());
    assert!(allowed(&e, &read_tag("A", 1)));
    assert!(!e.decide(OPERATOR, PLC, &adu, 0).forward());
    assert_eq!(decide(&e, &read_tag("A", 1)).reason, CipReason::RateExceeded);
}

// ---- monitor mode -----------------------------------------------------------------------------

#[test]
fn monitor_mode_forwards_policy_denials_but_never_malformed_messages() {
    let e = engine("monitor", json!([cip_rule("r", json!([0]), json!([tags(&["read_tag"], &["A"])]))]));
    let d = decide(&e, &read_tag("B", 1));
    assert_eq!(
        (d.verdict, d.reason, d.general_status, d.rule),
        (Verdict::WouldDeny, CipReason::TargetNotAllowed, None, Some(0))
    );
    assert!(d.forward());
    // A malformed leaf behind a would-be denial still refuses the whole message.
    let bad_pad = req(0x4C, &[0x91, 0x01, b'A', 0x55], &[1, 0]);
    let d = decide(&e, &msp(&[&read_tag("B", 1), &bad_pad]));
    assert_eq!(
        (d.verdict, d.reason, d.malformed, d.denied_leaf, d.leaves),
        (Verdict::Deny, CipReason::Malformed, Some("bad_path"), Some(1), 0)
    );
    let d = e.decide_cip(5, PLC, &read_tag("A", 1), &[], 0);
    assert_eq!(d.verdict, Verdict::Deny, "unknown principals are refused in monitor mode too");
}

#[test]
fn monitor_mode_charges_buckets_the_same_way() {
    let e = engine(
        "monitor",
        json!([cip_rule(
            "r",
            json!([0]),
            json!([{"services": ["read_tag"], "tags": [pat("A")],
        "rate": {"count": 1, "period_ns": SEC, "burst": 1}}])
        )]),
    );
    assert_eq!(decide(&e, &read_tag("A", 1)).verdict, Verdict::Allow);
    let d = decide(&e, &read_tag("A", 1));
    assert_eq!((d.verdict, d.reason), (Verdict::WouldDeny, CipReason::RateExceeded));
}

// ---- malformed --------------------------------------------------------------------------------

#[test]
fn malformed_messages_and_leaves_name_their_kind_and_status() {
    let e = with(
        json!([{"services": ["read_tag", "forward_open", "large_forward_open", "forward_close"], "tags": [pat("*")]},
                        {"services": ["forward_open", "large_forward_open", "forward_close"]}]),
    );
    let fo = enip_support::forward_open(false, 1);
    let mut class1 = fo.clone();
    let transport_at = class1.len() - 16; // transport byte: before path size and the 14-byte path
    assert_eq!(class1[transport_at], 0xA3);
    class1[transport_at] = 0x01;
    let mut class0 = fo.clone();
    class0[transport_at] = 0x80;
    let cases: Vec<(Vec<u8>, &str, u8)> = vec![
        (vec![0x4C], "truncated", 0x04),
        (vec![0xCC, 0x00], "reply_in_request", 0x08),
        (vec![0x4C, 0x05, 0x91, 0x01], "path_size", 0x04),
        (req(0x4C, &[0x91, 0x02, b'A', b'-'], &[1, 0]), "path_bad_symbol", 0x04),
        (vec![0x0A, 0x02, 0x20, 0x02, 0x24, 0x01, 0x00, 0x00], "bad_offsets", 0x20),
        (req(0x4C, &[0x91, 0x01, b'A', 0x55], &[1, 0]), "bad_path", 0x04),
        (req(0x4C, &[tag_path("A"), vec![0x20, 0x01]].concat(), &[1, 0]), "bad_path", 0x04),
        (req(0x0E, &[0x80, 0x01, 0x00, 0x00, 0x20, 0x01, 0x24, 0x01, 0x30, 0x01], &[]), "bad_path", 0x04),
        (req(0x0E, &[0x41, 0x05, 0x20, 0x01, 0x24, 0x01, 0x30, 0x01], &[]), "bad_path", 0x04),
        (class1, "io_connection", 0x08),
        (class0, "io_connection", 0x08),
        (fo[..fo.len() - 1].to_vec(), "data_truncated", 0x13),
        ([fo.clone(), vec![0, 0]].concat(), "data_trailing", 0x15),
        (req(0x4E, &logical(0x06, Some(1), None), &[0; 11]), "data_truncated", 0x13),
    ];
    for (msg, kind, status) in cases {
        let d = decide(&e, &msg);
        assert_eq!(
            (d.verdict, d.reason, d.malformed, d.general_status, d.rule),
            (Verdict::Deny, CipReason::Malformed, Some(kind), Some(status), None),
            "{kind}: {msg:02x?}"
        );
    }
    assert!(allowed(&e, &fo), "a class 3 Forward Open is decided by the policy");
}

#[test]
fn a_forward_open_to_a_remote_connection_manager_is_decided_like_any_leaf() {
    let e = with(json!([{"services": ["forward_open"], "routes": [[[1, [0]]]]}]));
    let fo = enip_support::forward_open(false, 1);
    assert!(allowed(&e, &unconnected_send(&fo, &[0x01, 0x00])));
    assert_eq!(decide(&e, &fo).reason, CipReason::RouteNotAllowed);
}
