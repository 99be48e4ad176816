"""Policy compile -> engine: the IR the loader emits compiles in the Rust engine and decides as written."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from zonegate import _engine
from zonegate.controlplane.policy import load

ROOT = Path(__file__).resolve().parents[2]
POLICIES = sorted((ROOT / "policies").glob("*.yaml"))

# docs/engine.md section 5
ALLOW, DENY, WOULD_DENY = 0, 1, 2
ALLOWED, NO_MATCHING_RULE, FUNCTION_NOT_ALLOWED, ADDRESS_OUT_OF_RANGE = 0, 3, 5, 6
QUANTITY_EXCEEDED, VALUE_OUT_OF_BOUNDS, RATE_EXCEEDED = 7, 8, 9


def adu(unit: int, pdu: bytes, tid: int = 1) -> bytes:
    """MBAP: transaction id, protocol 0, length (unit + PDU), unit, then the PDU."""
    return struct.pack(">HHHB", tid, 0, len(pdu) + 1, unit) + pdu


def read_holding(address: int, quantity: int, unit: int = 1) -> bytes:
    return adu(unit, struct.pack(">BHH", 3, address, quantity))  # fc 3, start, quantity


def write_register(address: int, value: int, unit: int = 1) -> bytes:
    return adu(unit, struct.pack(">BHH", 6, address, value))  # fc 6, address, value


@pytest.mark.parametrize("path", POLICIES, ids=lambda p: p.name)
def test_shipped_policy_compiles_in_the_engine(path: Path, tmp_path: Path) -> None:
    policy = load([path], pki_dir=tmp_path)
    engine = _engine.Engine(policy.ir_json())
    assert engine.mode == policy.mode
    for n, name in enumerate(policy.principals):
        assert engine.principal_index(name) == n
    for n, name in enumerate(policy.devices):
        assert engine.device_index(name) == n


@pytest.fixture(scope="module")
def demo() -> tuple[object, int, int, int, int]:
    policy = load([ROOT / "policies" / "demo.yaml"])
    engine = _engine.Engine(policy.ir_json())
    return (
        engine,
        engine.principal_index("operator"),
        engine.principal_index("viewer"),
        engine.principal_index("engineer"),
        engine.device_index("tank-plc"),
    )


@pytest.mark.parametrize(
    ("who", "frame", "verdict", "reason", "rule"),
    [
        ("operator", read_holding(0, 110), ALLOW, ALLOWED, "operator-read"),
        ("operator", read_holding(100, 11), DENY, ADDRESS_OUT_OF_RANGE, "operator-read"),
        ("operator", write_register(100, 1500), ALLOW, ALLOWED, "operator-setpoints"),
        ("operator", write_register(109, 0), ALLOW, ALLOWED, "operator-setpoints"),
        ("operator", write_register(105, 1501), DENY, VALUE_OUT_OF_BOUNDS, "operator-setpoints"),
        ("operator", write_register(5, 10), DENY, ADDRESS_OUT_OF_RANGE, "operator-setpoints"),
        ("viewer", write_register(100, 10), DENY, FUNCTION_NOT_ALLOWED, "viewer-read"),
        ("viewer", read_holding(0, 110), ALLOW, ALLOWED, "viewer-read"),
        ("engineer", write_register(5, 65535), ALLOW, ALLOWED, "engineer-maintenance"),
        ("engineer", adu(1, struct.pack(">BHH", 8, 4, 0)), DENY, FUNCTION_NOT_ALLOWED, "engineer-maintenance"),
        ("engineer", adu(1, struct.pack(">BHH", 8, 0, 0xA537)), ALLOW, ALLOWED, "engineer-maintenance"),
    ],
)
def test_demo_decisions(demo, who: str, frame: bytes, verdict: int, reason: int, rule: str) -> None:  # type: ignore[no-untyped-def]
    engine, operator, viewer, engineer, plc = demo
    principal = {"operator": operator, "viewer": viewer, "engineer": engineer}[who]
    decision = engine.decide(principal, plc, frame, 0)
    assert (decision.verdict, decision.reason, decision.rule_id) == (verdict, reason, rule)


def test_demo_setpoint_rate_is_five_a_second() -> None:
    policy = load([ROOT / "policies" / "demo.yaml"])
    engine = _engine.Engine(policy.ir_json())
    operator, plc = engine.principal_index("operator"), engine.device_index("tank-plc")
    decisions = [engine.decide(operator, plc, write_register(100, 7), 1_000) for _ in range(6)]
    assert [d.reason for d in decisions] == [ALLOWED] * 5 + [RATE_EXCEEDED]
    assert decisions[-1].exception_code == 6
    later = engine.decide(operator, plc, write_register(100, 7), 1_000 + 200_000_000)
    assert later.reason == ALLOWED


def test_monitor_mode_reaches_the_engine(tmp_path: Path) -> None:
    policy = load([ROOT / "policies" / "packaging-line-monitor.yaml"], pki_dir=tmp_path)
    engine = _engine.Engine(policy.ir_json())
    mes, filler = engine.principal_index("mes"), engine.device_index("filler-plc")
    decision = engine.decide(mes, filler, write_register(0, 1), 0)
    assert (decision.verdict, decision.reason, decision.forward) == (WOULD_DENY, FUNCTION_NOT_ALLOWED, True)


def test_file_record_addresses_reach_the_engine(tmp_path: Path) -> None:
    policy = load([ROOT / "policies" / "pump-station.yaml"], pki_dir=tmp_path)
    engine = _engine.Engine(policy.ir_json())
    report, gateway = engine.principal_index("energy-report"), engine.device_index("pump-gateway")

    def read_record(file: int, record: int, length: int) -> bytes:
        # fc 20, byte count 7, then one sub-request: ref type 6, file, record, record length
        return adu(10, struct.pack(">BBBHHH", 20, 7, 6, file, record, length))

    assert engine.decide(report, gateway, read_record(1, 1430, 10), 0).reason == ALLOWED
    assert engine.decide(report, gateway, read_record(1, 1431, 10), 0).reason == ADDRESS_OUT_OF_RANGE
    assert engine.decide(report, gateway, read_record(2, 0, 1), 0).reason == ADDRESS_OUT_OF_RANGE
