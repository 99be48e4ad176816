"""The reference model's decisions, case by case against docs/engine.md sections 4 and 5."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from zonegate import reference_model as m

SECOND = 1_000_000_000


def adu(pdu: bytes, unit: int = 1, tid: int = 7) -> bytes:
    return tid.to_bytes(2, "big") + b"\x00\x00" + (len(pdu) + 1).to_bytes(2, "big") + bytes([unit]) + pdu


def read_holding(start: int, qty: int, unit: int = 1) -> bytes:
    return adu(bytes([3]) + start.to_bytes(2, "big") + qty.to_bytes(2, "big"), unit)


def write_register(address: int, value: int, unit: int = 1) -> bytes:
    return adu(bytes([6]) + address.to_bytes(2, "big") + value.to_bytes(2, "big"), unit)


def write_registers(start: int, values: list[int]) -> bytes:
    body = b"".join(v.to_bytes(2, "big") for v in values)
    return adu(bytes([16]) + start.to_bytes(2, "big") + len(values).to_bytes(2, "big") + bytes([len(body)]) + body)


def no_ranges() -> dict[str, list[dict[str, Any]]]:
    return {t: [] for t in m.TABLE_NAMES}


def vrange(start: int, end: int, lo: int | None = None, hi: int | None = None, signed: bool = False) -> dict[str, Any]:
    return {"start": start, "end": end, "min": lo, "max": hi, "signed": signed}


def entry(functions: list[list[int | None]], holding: list[dict[str, Any]] | None = None, **extra: Any) -> dict[str, Any]:
    ranges = no_ranges()
    ranges["holding_registers"] = holding or []
    return {"functions": functions, "ranges": ranges, "max_quantity": None, "rate": None} | extra


def policy(rules: list[dict[str, Any]], mode: str = "enforce", device_units: list[list[int]] | None = None) -> dict[str, Any]:
    return {
        "version": 1,
        "mode": mode,
        "principals": [
            {"name": "operator", "tls_roles": ["Operator"], "subjects": [], "opcua_users": [], "sources": []},
            {"name": "historian", "tls_roles": [], "subjects": [], "opcua_users": ["historian"], "sources": []},
        ],
        "devices": [
            {"name": "press-plc", "zone": "cell-a", "host": "192.168.10.11", "port": 502, "units": device_units},
            {"name": "oven-plc", "zone": "cell-a", "host": "192.168.10.12", "port": 502, "units": None},
        ],
        "rules": rules,
    }


def rule(rule_id: str, allow: list[dict[str, Any]], principals: list[int] | None = None,
         devices: list[int] | None = None, units: list[list[int]] | None = None) -> dict[str, Any]:
    return {"id": rule_id, "principals": principals or [0], "devices": devices or [0], "units": units, "allow": allow}


READ = entry([[3, None]], [vrange(0, 99)])
SETPOINT = entry([[6, None], [16, None]], [vrange(100, 109, 0, 1500)])


def decide(ir: dict[str, Any], frame: bytes, principal: int = 0, device: int = 0, now: int = 0) -> m.Decision:
    return m.ReferenceModel(ir).decide(principal, device, frame, now)


def test_allowed_read_carries_rule_and_request() -> None:
    d = decide(policy([rule("operator-read", [READ])]), read_holding(10, 5, unit=1))
    assert d == m.Decision(m.ALLOW, m.ALLOWED, 0, "operator-read", None, 3, None, 1)
    assert d.forward


def test_unknown_principal_is_checked_before_parsing() -> None:
    d = decide(policy([rule("r", [READ])]), b"\x00\x01\x00\x00\x00\x06\x01\x01\x00\x00\x00\x00", principal=2)
    assert (d.verdict, d.reason, d.rule_id, d.exception_code) == (m.DENY, m.UNKNOWN_PRINCIPAL, "", 1)
    diag = decide(policy([rule("r", [READ])]), adu(b"\x08\x00\x05\x00\x00"), principal=-1)
    assert (diag.reason, diag.function, diag.sub, diag.unit) == (m.UNKNOWN_PRINCIPAL, 8, None, 1)


def test_malformed_answers_03_in_both_modes() -> None:
    bad = adu(b"\x01\x00\x00\x00\x00")  # FC 1 quantity 0
    for mode in ("enforce", "monitor"):
        d = decide(policy([rule("r", [READ])], mode=mode), bad)
        assert (d.verdict, d.reason, d.malformed, d.exception_code) == (m.DENY, m.MALFORMED, m.BAD_QUANTITY, 3)
        assert not d.forward


def test_non_public_function_denied_without_a_rule() -> None:
    d = decide(policy([rule("r", [entry([[90, None]])])]), adu(b"\x5a\x00"))
    assert (d.reason, d.rule_id, d.exception_code, d.function) == (m.FUNCTION_NOT_ALLOWED, "", 1, 90)


def test_no_rule_for_this_principal_and_device() -> None:
    ir = policy([rule("r", [READ], principals=[1]), rule("s", [READ], devices=[1])])
    d = decide(ir, read_holding(0, 1))
    assert (d.reason, d.rule_id) == (m.NO_MATCHING_RULE, "")


def test_deepest_failure_wins_across_rules() -> None:
    ir = policy([
        rule("wrong-function", [entry([[4, None]], [vrange(0, 99)])]),
        rule("wrong-address", [entry([[3, None]], [vrange(200, 299)])]),
    ])
    d = decide(ir, read_holding(10, 1))
    assert (d.reason, d.rule_id, d.exception_code) == (m.ADDRESS_OUT_OF_RANGE, "wrong-address", 1)


def test_tie_goes_to_the_first_rule() -> None:
    ir = policy([rule("first", [entry([[4, None]])]), rule("second", [entry([[1, None]])])])
    d = decide(ir, read_holding(10, 1))
    assert (d.reason, d.rule_id) == (m.FUNCTION_NOT_ALLOWED, "first")


def test_unit_checked_against_the_device_when_the_rule_says_null() -> None:
    ir = policy([rule("r", [READ])], device_units=[[1, 1]])
    assert decide(ir, read_holding(0, 1, unit=1)).reason == m.ALLOWED
    assert decide(ir, read_holding(0, 1, unit=2)).reason == m.UNIT_NOT_ALLOWED
    any_unit = policy([rule("r", [READ])])
    assert decide(any_unit, read_holding(0, 1, unit=200)).reason == m.ALLOWED
    rule_units = policy([rule("r", [READ], units=[[5, 9]])], device_units=[[1, 1]])
    assert decide(rule_units, read_holding(0, 1, unit=7)).reason == m.ALLOWED
    assert decide(rule_units, read_holding(0, 1, unit=1)).reason == m.UNIT_NOT_ALLOWED


def test_adjacent_ranges_join() -> None:
    ir = policy([rule("r", [entry([[3, None]], [vrange(0, 9), vrange(10, 19)])])])
    assert decide(ir, read_holding(5, 10)).reason == m.ALLOWED
    gap = policy([rule("r", [entry([[3, None]], [vrange(0, 9), vrange(11, 19)])])])
    assert decide(gap, read_holding(5, 10)).reason == m.ADDRESS_OUT_OF_RANGE


def test_quantity_limit() -> None:
    ir = policy([rule("r", [entry([[3, None]], [vrange(0, 99)], max_quantity=10)])])
    assert decide(ir, read_holding(0, 10)).reason == m.ALLOWED
    assert decide(ir, read_holding(0, 11)).reason == m.QUANTITY_EXCEEDED


def test_value_bounds_unsigned_and_signed() -> None:
    ir = policy([rule("r", [SETPOINT])])
    assert decide(ir, write_register(100, 1500)).reason == m.ALLOWED
    assert decide(ir, write_register(100, 1501)).reason == m.VALUE_OUT_OF_BOUNDS
    assert decide(ir, write_registers(100, [0, 1501])).reason == m.VALUE_OUT_OF_BOUNDS
    signed = policy([rule("r", [entry([[6, None]], [vrange(0, 9, -100, 100, signed=True)])])])
    assert decide(signed, write_register(0, 0xFF9C)).reason == m.ALLOWED  # -100
    assert decide(signed, write_register(0, 0xFF9B)).reason == m.VALUE_OUT_OF_BOUNDS  # -101
    unsigned = policy([rule("r", [entry([[6, None]], [vrange(0, 9, 0, 100)])])])
    assert decide(unsigned, write_register(0, 0xFF9C)).reason == m.VALUE_OUT_OF_BOUNDS  # 65436


def test_mask_write_fails_bounded_ranges_only() -> None:
    mask = adu(b"\x16\x00\x64\x00\xf2\x00\x25")  # FC 22 on register 100
    bounded = policy([rule("r", [entry([[22, None]], [vrange(100, 109, 0, 1500)])])])
    assert decide(bounded, mask).reason == m.VALUE_OUT_OF_BOUNDS
    unbounded = policy([rule("r", [entry([[22, None]], [vrange(100, 109)])])])
    assert decide(unbounded, mask).reason == m.ALLOWED


def test_function_key_includes_the_subfunction() -> None:
    ir = policy([rule("r", [entry([[8, 0], [43, 14]])])])
    echo = adu(b"\x08\x00\x00\x12\x34")
    restart = adu(b"\x08\x00\x01\xff\x00")
    identify = adu(b"\x2b\x0e\x01\x00")
    assert decide(ir, echo).reason == m.ALLOWED
    assert decide(ir, identify).reason == m.ALLOWED
    d = decide(ir, restart)
    assert (d.reason, d.sub) == (m.FUNCTION_NOT_ALLOWED, 1)


def test_monitor_mode_forwards_policy_denials() -> None:
    ir = policy([rule("r", [READ])], mode="monitor")
    d = decide(ir, read_holding(500, 1))
    assert (d.verdict, d.reason, d.rule_id, d.exception_code) == (m.WOULD_DENY, m.ADDRESS_OUT_OF_RANGE, "r", None)
    assert d.forward


def test_rate_bucket_refills_with_time() -> None:
    limited = entry([[3, None]], [vrange(0, 99)], rate={"count": 2, "period_ns": SECOND, "burst": 2})
    model = m.ReferenceModel(policy([rule("r", [limited])]))
    frame = read_holding(0, 1)
    assert [model.decide(0, 0, frame, 0).reason for _ in range(3)] == [m.ALLOWED, m.ALLOWED, m.RATE_EXCEEDED]
    denied = model.decide(0, 0, frame, 0)
    assert (denied.verdict, denied.rule_id, denied.exception_code) == (m.DENY, "r", 6)
    # half a second at 2 per second buys one request back
    assert model.decide(0, 0, frame, SECOND // 2).reason == m.ALLOWED
    assert model.decide(0, 0, frame, SECOND // 2).reason == m.RATE_EXCEEDED
    # a clock that goes back adds nothing
    assert model.decide(0, 0, frame, 0).reason == m.RATE_EXCEEDED


def test_rate_buckets_are_per_principal() -> None:
    limited = entry([[3, None]], [vrange(0, 99)], rate={"count": 1, "period_ns": SECOND, "burst": 1})
    model = m.ReferenceModel(policy([rule("r", [limited], principals=[0, 1])]))
    frame = read_holding(0, 1)
    assert model.decide(0, 0, frame, 0).reason == m.ALLOWED
    assert model.decide(0, 0, frame, 0).reason == m.RATE_EXCEEDED
    assert model.decide(1, 0, frame, 0).reason == m.ALLOWED


def test_rate_limited_entry_stops_the_search() -> None:
    limited = entry([[3, None]], [vrange(0, 99)], rate={"count": 1, "period_ns": SECOND, "burst": 1})
    model = m.ReferenceModel(policy([rule("limited", [limited]), rule("open", [READ])]))
    frame = read_holding(0, 1)
    assert model.decide(0, 0, frame, 0).rule_id == "limited"
    d = model.decide(0, 0, frame, 0)
    assert (d.reason, d.rule_id) == (m.RATE_EXCEEDED, "limited")


def test_rule_without_entries_matches_nothing() -> None:
    d = decide(policy([rule("empty", [])]), read_holding(0, 1))
    assert (d.verdict, d.reason, d.rule_id) == (m.DENY, m.NO_MATCHING_RULE, "")


def test_file_records_use_32_bit_addresses() -> None:
    ranges = no_ranges()
    ranges["file_records"] = [vrange(4 << 16, 4 << 16 | 9999)]
    ir = policy([rule("r", [{"functions": [[20, None]], "ranges": ranges, "max_quantity": 3, "rate": None}])])
    inside = adu(b"\x14\x07\x06\x00\x04\x00\x01\x00\x03")  # file 4, records 1..3
    other_file = adu(b"\x14\x07\x06\x00\x05\x00\x01\x00\x03")  # file 5
    too_many = adu(b"\x14\x07\x06\x00\x04\x00\x01\x00\x04")  # 4 records
    assert decide(ir, inside).reason == m.ALLOWED
    assert decide(ir, other_file).reason == m.ADDRESS_OUT_OF_RANGE
    assert decide(ir, too_many).reason == m.QUANTITY_EXCEEDED


@pytest.mark.parametrize(
    ("frame", "kind"),
    [
        (b"", m.TRUNCATED),
        (b"\x00\x01\x00\x00\x00\x06\x01", m.TRUNCATED),  # header and unit, no function code
        (b"\x00\x01\x00\x00\x00\x06\x01\x03\x00\x00", m.TRUNCATED),  # shorter than its length says
        (b"\x00\x01\x00\x00\x00\x02\x01\x07\x00", m.TRAILING_BYTES),  # longer than its length says
        (b"\x00\x01\x00\x05\x00\x02\x01\x07", m.TRUNCATED),  # protocol id 5
        (b"\x00\x01\x00\x00\x00\x01\x01\x07", m.TRAILING_BYTES),  # length 1 declares 7 bytes, 8 came
        (b"\x00\x01\x00\x00\x00\xff\x01\x11" + bytes(253), m.TRAILING_BYTES),  # length 255: beyond 260 bytes
    ],
)
def test_frames_the_splitter_would_not_produce_are_malformed(frame: bytes, kind: int) -> None:
    for mode in ("enforce", "monitor"):
        d = decide(policy([rule("r", [entry([[7, None]])])], mode=mode), frame)
        assert (d.verdict, d.reason, d.malformed, d.exception_code) == (m.DENY, m.MALFORMED, kind, 3)


def test_model_does_not_mutate_its_policy() -> None:
    ir = policy([rule("r", [SETPOINT])])
    before = copy.deepcopy(ir)
    m.ReferenceModel(ir).decide(0, 0, write_register(100, 5), 0)
    assert ir == before


def test_monitor_mode_still_refuses_unknown_principals() -> None:
    """Monitor mode tries a policy out on the principals it names; it never opens the conduit to others."""
    model = m.ReferenceModel(policy([rule("r", [READ])], mode="monitor"))
    d = model.decide(7, 0, read_holding(0, 1), 0)
    assert (d.verdict, d.reason, d.rule_id, d.exception_code) == (m.DENY, m.UNKNOWN_PRINCIPAL, "", 1)
    assert not d.forward
