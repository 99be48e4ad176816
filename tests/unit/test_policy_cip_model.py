"""The CIP reference model on its own: tag patterns with element counts, the order of checks, the first
denied leaf, malformed leaves, rates and monitor mode (docs/cip-engine.md sections 3 and 5), on leaves
written out by hand, and the same decisions from a policy file through the Rust engine."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from test_policy_support import load_text

from zonegate import reference_model_cip as model
from zonegate.controlplane.policy import cip
from zonegate.reference_model import ALLOW, ALLOWED, DENY, MALFORMED, NO_MATCHING_RULE, RATE_EXCEEDED
from zonegate.reference_model import UNKNOWN_PRINCIPAL, WOULD_DENY

Parts = tuple[tuple[str, tuple[int, ...]], ...]


def compiled(text: str) -> tuple[model._PatternPart, ...]:
    """A written pattern as the loader compiles it and the model reads it."""
    return tuple(model._PatternPart(p.name, p.elements) for p in cip.parse_tag_pattern(text).parts)


def tag(text: str) -> Parts:
    """`Line1.Motor[2].Speed` -> the leaf's parts, names as on the wire."""
    out = []
    for part in text.split("."):
        name, _, rest = part.partition("[")
        out.append((name, tuple(int(i) for i in rest.rstrip("]").split(",")) if rest else ()))
    return tuple(out)


@pytest.mark.parametrize(
    ("pattern", "name", "count", "admits"),
    [
        ("Line1.*", "Line1.Speed", None, True),
        ("Line1.*", "LINE1.Motor[2].Amps", None, True),
        ("Line1.*", "Line1", None, False),  # a trailing * needs one more part
        ("Recipe", "Recipe[7]", 100, True),  # an array allowed whole: any element, any count
        ("Motor", "Motor.Speed", None, True),  # a structure allowed whole
        ("Motor.Speed.Raw", "Motor.Speed", None, False),  # more parts than the tag
        ("Press_SP[0..9]", "press_sp[3]", 7, True),  # touches 3..9
        ("Press_SP[0..9]", "press_sp[3]", 8, False),  # touches 3..10
        ("Press_SP[0..9]", "press_sp[3]", 0, True),  # a count of 0 touches the start only
        ("Press_SP[0..9]", "press_sp", 1, False),  # brackets: exactly one dimension
        ("Press_SP[0..9]", "press_sp[3,1]", 1, False),
        ("Grid[0..3,0..7]", "Grid[2,7]", 1, True),
        ("Grid[0..3,0..7]", "Grid[2,7]", 2, False),  # n > 1 on a multi-dimension element
        ("Grid[0..3,0..7]", "Grid[2,8]", 1, False),
        ("A[0..1].B", "A[1].B[5]", 50, True),  # the count runs from B, which matched no brackets
        ("A[0..1].B[0..5]", "A[1].B[5]", 2, False),
        ("A[0..9].B", "A[9].B", 3, False),  # the last part with elements is A: 9..11
        ("*.Speed", "Motor[4].Speed", 9, True),
        ("X", "Y", None, False),
    ],
)
def test_tag_patterns(pattern: str, name: str, count: int | None, admits: bool) -> None:
    assert model.pattern_matches(compiled(pattern), tag(name), count) is admits


def leaf(**fields: Any) -> model.Leaf:
    base = model.Leaf(service="read_tag", code=0x4C, route_text="", tag_text="Press_SP[3]", class_=None,
                      instance=None, attribute=None, elements=1, anomalies=0, hops=(), tag_parts=tag("Press_SP[3]"),
                      depth=0, transport_class=None, data_error=None)
    return replace(base, **fields)


def identity(attribute: int | None = 1, service: str | None = "get_attribute_single", code: int = 0x0E) -> model.Leaf:
    return leaf(service=service, code=code, tag_text=None, tag_parts=None, class_=1, instance=1, attribute=attribute,
                elements=None)


def entry(**fields: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"services": ["read_tag"], "service_codes": [], "tags": None, "classes": None,
                            "instances": None, "attributes": None, "routes": None, "rate": None}
    base.update(fields)
    return base


SP = [{"parts": [{"name": "press_sp", "elements": [[0, 9]]}]}]


def ir(*rules: list[dict[str, Any]], mode: str = "enforce") -> dict[str, Any]:
    return {"version": 1, "mode": mode, "principals": [{"name": "a"}, {"name": "b"}],
            "devices": [{"name": "plc", "zone": "z", "host": "h", "port": 1, "units": None}],
            "rules": [{"id": f"r{n}", "principals": [0], "devices": [0], "units": None, "allow": [], "cip": entries}
                      for n, entries in enumerate(rules)]}


def decide(policy: dict[str, Any], leaves: list[model.Leaf] | str, now: int = 0, principal: int = 0,
           reference: model.CipReferenceModel | None = None) -> model.CipDecision:
    return (reference or model.CipReferenceModel(policy)).decide(principal, 0, 0x4C, leaves, now)


def test_allowed_message_names_the_first_leafs_rule_and_target() -> None:
    got = decide(ir([entry(tags=SP)]), [leaf(), leaf(tag_text="x")])
    assert (got.verdict, got.reason, got.rule_id, got.leaves, got.denied_leaf, got.target) == \
        (ALLOW, ALLOWED, "r0", 2, None, "Press_SP[3]")
    assert got.general_status is None and got.forward


def test_deepest_failure_wins_and_ties_go_to_the_first() -> None:
    routed = entry(tags=SP, routes=[[[1, [0]]]])  # fails at the route, depth 1
    wrong_service = entry(services=["write_tag"], tags=SP)  # depth 2
    wrong_tag = entry(tags=[{"parts": [{"name": "other", "elements": None}]}])  # depth 3
    got = decide(ir([routed, wrong_service], [wrong_tag, wrong_tag]), [leaf()])
    assert (got.verdict, got.reason, got.rule_id, got.general_status) == \
        (DENY, model.TARGET_NOT_ALLOWED, "r1", model.PRIVILEGE_VIOLATION)
    got = decide(ir([routed], [wrong_service]), [leaf()])
    assert (got.reason, got.rule_id) == (model.SERVICE_NOT_ALLOWED, "r1")
    got = decide(ir([routed]), [leaf()])
    assert (got.reason, got.rule_id, got.route) == (model.ROUTE_NOT_ALLOWED, "r0", "")


def test_first_denied_leaf_decides_and_later_leaves_are_not_charged() -> None:
    rated = entry(tags=SP, rate={"count": 1, "period_ns": 1_000_000_000, "burst": 1})
    policy = ir([rated])
    reference = model.CipReferenceModel(policy)
    got = decide(policy, [leaf(tag_text="a", tag_parts=tag("Other")), leaf()], reference=reference)
    assert (got.reason, got.denied_leaf, got.leaves, got.target) == (model.TARGET_NOT_ALLOWED, 0, 1, "a")
    # the second leaf was never decided, so the bucket still holds its token
    assert decide(policy, [leaf()], reference=reference).verdict == ALLOW
    got = decide(policy, [leaf()], reference=reference)
    assert (got.verdict, got.reason, got.general_status) == (DENY, RATE_EXCEEDED, model.RESOURCE_UNAVAILABLE)
    assert decide(policy, [leaf()], now=1_000_000_000, reference=reference).verdict == ALLOW


def test_logical_entries() -> None:
    logical = entry(services=["get_attribute_single"], classes=[[1, 1]], instances=[[1, 1]], attributes=[[1, 7]])
    policy = ir([logical])
    assert decide(policy, [identity(7)]).verdict == ALLOW
    assert decide(policy, [identity(8)]).reason == model.TARGET_NOT_ALLOWED
    assert decide(policy, [identity(None)]).reason == model.TARGET_NOT_ALLOWED  # no attribute: fails
    assert decide(policy, [identity(7)]).target == "class 0x01 instance 1 attribute 7"
    # a number allows the code only where it does not resolve to a name
    numbered = entry(services=[], service_codes=[0x4C], classes=[[1, 1]])
    assert decide(ir([numbered]), [identity(service=None, code=0x4C)]).verdict == ALLOW
    assert decide(ir([numbered]), [leaf()]).reason == model.SERVICE_NOT_ALLOWED


def test_routes_compare_hops_exactly_with_the_connection_prefix() -> None:
    policy = ir([entry(tags=SP, routes=[[[1, [0]]], [[2, list(b"10.0.0.5")], [1, [3]]]])])
    reference = model.CipReferenceModel(policy)
    assert reference.decide(0, 0, 0x52, [leaf(hops=((1, b"\x00"),))], 0).route == "1,0"
    got = reference.decide(0, 0, 0x4C, [leaf(hops=((1, b"\x03"),))], 0, prefix=((2, b"10.0.0.5"),))
    assert (got.verdict, got.route) == (ALLOW, "2,10.0.0.5/1,3")
    assert reference.decide(0, 0, 0x4C, [leaf(hops=((1, b"0"),))], 0).reason == model.ROUTE_NOT_ALLOWED


@pytest.mark.parametrize(
    ("changes", "kind", "status"),
    [
        ({"anomalies": model.NONZERO_PAD}, "bad_path", 0x04),
        ({"anomalies": model.MIXED_ADDRESSING}, "bad_path", 0x04),
        ({"anomalies": model.SHORT_DATA, "elements": None}, "short_data", 0x13),
        ({"service": "forward_open", "code": 0x54, "tag_parts": None, "tag_text": None, "transport_class": 1},
         "io_connection", 0x08),
        ({"service": "forward_close", "code": 0x4E, "tag_parts": None, "tag_text": None,
          "data_error": "data_truncated"}, "data_truncated", 0x13),
    ],
)
def test_malformed_leaves_deny_in_both_modes(changes: dict[str, Any], kind: str, status: int) -> None:
    for mode in ("enforce", "monitor"):
        got = decide(ir([entry(tags=SP)], mode=mode), [leaf(), leaf(**changes)])
        assert (got.verdict, got.reason, got.malformed, got.general_status, got.denied_leaf, got.leaves) == \
            (DENY, MALFORMED, kind, status, 1, 0)


def test_short_data_outside_tag_services_is_the_devices_business() -> None:
    short = identity(service="set_attribute_single", code=0x10)
    policy = ir([entry(services=["set_attribute_single"], classes=[[1, 1]])])
    assert decide(policy, [replace(short, anomalies=model.SHORT_DATA)]).verdict == ALLOW


def test_flatten_errors_unknown_principals_and_no_rules() -> None:
    policy = ir([entry(tags=SP)], mode="monitor")
    got = decide(policy, "too_deep")
    assert (got.verdict, got.malformed, got.general_status, got.leaves) == (DENY, "too_deep", 0x20, 0)
    assert decide(policy, "path_bad_symbol").general_status == 0x04
    assert (decide(policy, [leaf()], principal=7).verdict, decide(policy, [leaf()], principal=7).reason) == \
        (DENY, UNKNOWN_PRINCIPAL)
    got = decide(policy, [leaf()], principal=1)
    assert (got.verdict, got.reason, got.rule_id, got.general_status) == (WOULD_DENY, NO_MATCHING_RULE, "", None)


PRESS = """\
version: 1
zones: {cell: {subnet: 192.168.10.0/24}}
devices:
  press: {zone: cell, enip: {host: 192.168.10.12}}
principals:
  operator: {tls_role: Operator}
rules:
  - id: operator-press
    principal: operator
    device: press
    cip:
      - services: [read_only]
        tags: ["Line1.*", "Press_SP[0..9]"]
        routes: ["1,0"]
      - services: write_tag
        tags: ["Press_SP[0..9]"]
        routes: ["1,0"]
        rate: 2/s
"""


def test_a_policy_file_decides_the_same_in_the_engine_and_the_model(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    from zonegate import _engine

    policy = load_text(tmp_path, PRESS, monkeypatch)
    engine = _engine.Engine(policy.ir_json())
    reference = model.CipReferenceModel(policy.ir())
    sp = bytes([0x91, 8]) + b"Press_SP" + bytes([0x28, 3])
    write = bytes([0x4D, len(sp) // 2]) + sp + bytes([0xC3, 0, 2, 0, 1, 0, 2, 0])
    route = bytes([0x01, 0x00])  # backplane port 1, slot 0
    speed = bytes([0x91, 5]) + b"LINE1" + b"\x00" + bytes([0x91, 5]) + b"Speed" + b"\x00"
    read = bytes([0x4C, len(speed) // 2]) + speed + bytes([1, 0])
    reasons = []
    for message, now in [(write, 0), (write, 0), (write, 0), (write, 10**9), (read, 0), (write[:5], 0)]:
        got = engine.decide_cip(0, 0, message, now, route)
        leaves: list[model.Leaf] | str
        try:
            leaves = [model.Leaf.from_binding(t) for t in _engine.cip_flatten(message)]
        except ValueError as exc:
            leaves = str(exc)
        want = reference.decide(0, 0, message[0], leaves, now, prefix=((1, b"\x00"),))
        assert (got.verdict, got.reason, got.rule_id, got.target, got.route) == \
            (want.verdict, want.reason, want.rule_id, want.target, want.route)
        reasons.append(got.reason)
    assert reasons == [ALLOWED, ALLOWED, RATE_EXCEEDED, ALLOWED, ALLOWED, MALFORMED]
    assert engine.decide_cip(0, 0, read, 0, route).target == "LINE1.Speed"
    assert engine.decide_cip(0, 0, read, 0).reason == model.ROUTE_NOT_ALLOWED
