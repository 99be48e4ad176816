"""Policy compile: the IR of docs/engine.md section 3 for representative policies, compared whole."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_policy_support import load_text

from zonegate import _engine
from zonegate.controlplane.policy import load
from zonegate.controlplane.policy.functions import DIAGNOSTICS, READ_ONLY, READ_WRITE

ROOT = Path(__file__).resolve().parents[2]

NO_RANGES: dict[str, list[dict[str, object]]] = {"coils": [], "discrete_inputs": [], "input_registers": [], "holding_registers": [], "file_records": []}


def ranges(**tables: list[dict[str, object]]) -> dict[str, list[dict[str, object]]]:
    return {**NO_RANGES, **tables}


def span(start: int, end: int, low: int | None = None, high: int | None = None, signed: bool = False) -> dict[str, object]:
    return {"start": start, "end": end, "min": low, "max": high, "signed": signed}


REPRESENTATIVE = """\
version: 1
mode: monitor
zones:
  cell-a: {interface: veth-cell, subnet: 192.168.10.0/24}
devices:
  press-plc:
    zone: cell-a
    modbus: {host: 192.168.10.11, units: [1, 3-4, 2]}
  gateway:
    zone: cell-a
    modbus: {host: plc-gw.cell-a.example, port: 1502}
principals:
  operator: {tls_role: [Operator, Shift-Lead]}
  auditor: {tls_subject: "CN=auditor-1,O=Plant"}
  historian: {opcua_user: historian}
  line-hmi: {source: [192.168.10.50, 192.168.10.64/26]}
rules:
  - id: operator-setpoint
    principal: operator
    device: press-plc
    allow:
      - functions: [write_single_register, 16, 8/0, read_device_identification]
        holding: {range: 100-109, min: 0, max: 1500}
        rate: 5/s
  - id: hmi-everything
    principals: [line-hmi, auditor]
    devices: [gateway, press-plc]
    units: [7, 1-2]
    allow:
      - functions: [read_coils, 5, read_file_record, write_file_record]
        coils: [64-127, 0-63]
        file_records: [{file: 2, records: 10-19}, {file: 1, records: 0, min: -100, max: 100, signed: true}]
        max_quantity: 64
      - functions: [read_write_multiple_registers]
        holding: [[200, 209], {range: 300-301, min: -5, signed: true}, 150]
        rate: 30/min
        burst: 2
"""

EXPECTED = {
    "version": 1,
    "mode": "monitor",
    "principals": [
        {"name": "operator", "tls_roles": ["Operator", "Shift-Lead"], "subjects": [], "opcua_users": [], "sources": []},
        {"name": "auditor", "tls_roles": [], "subjects": ["CN=auditor-1,O=Plant"], "opcua_users": [], "sources": []},
        {"name": "historian", "tls_roles": [], "subjects": [], "opcua_users": ["historian"], "sources": []},
        {"name": "line-hmi", "tls_roles": [], "subjects": [], "opcua_users": [],
         "sources": ["192.168.10.50/32", "192.168.10.64/26"]},
    ],
    "devices": [
        {"name": "press-plc", "zone": "cell-a", "host": "192.168.10.11", "port": 502, "units": [[1, 4]], "enip": None},
        {"name": "gateway", "zone": "cell-a", "host": "plc-gw.cell-a.example", "port": 1502, "units": None, "enip": None},
    ],
    "rules": [
        {
            "id": "operator-setpoint",
            "principals": [0],
            "devices": [0],
            "units": None,
            "allow": [
                {
                    "functions": [[6, None], [8, 0], [16, None], [43, 14]],
                    "ranges": ranges(holding_registers=[span(100, 109, 0, 1500)]),
                    "max_quantity": None,
                    "rate": {"count": 5, "period_ns": 1_000_000_000, "burst": 5},
                }
            ],
            "cip": [],
        },
        {
            "id": "hmi-everything",
            "principals": [3, 1],
            "devices": [1, 0],
            "units": [[1, 2], [7, 7]],
            "allow": [
                {
                    "functions": [[1, None], [5, None], [20, None], [21, None]],
                    "ranges": ranges(
                        coils=[span(0, 63), span(64, 127)],
                        file_records=[span(1 << 16, 1 << 16, -100, 100, True), span(2 << 16 | 10, 2 << 16 | 19)],
                    ),
                    "max_quantity": 64,
                    "rate": None,
                },
                {
                    "functions": [[23, None]],
                    "ranges": ranges(
                        holding_registers=[span(150, 150), span(200, 209), span(300, 301, -5, 32767, True)]
                    ),
                    "max_quantity": None,
                    "rate": {"count": 30, "period_ns": 60_000_000_000, "burst": 2},
                },
            ],
            "cip": [],
        },
    ],
}


def test_representative_policy_ir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    policy = load_text(tmp_path, REPRESENTATIVE, monkeypatch)
    assert policy.ir() == EXPECTED
    assert json.loads(policy.ir_json()) == EXPECTED


def keys(pairs: list[list[object]]) -> set[tuple[object, object]]:
    return {(fc, sub) for fc, sub in pairs}


def test_presets_expand_in_the_ir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    text = REPRESENTATIVE.replace(
        "functions: [write_single_register, 16, 8/0, read_device_identification]",
        "functions: [read_write, diagnostics, 3]",
    )
    ir = load_text(tmp_path, text, monkeypatch).ir()
    functions = ir["rules"][0]["allow"][0]["functions"]
    assert keys(functions) == set(READ_WRITE | DIAGNOSTICS)
    assert functions == sorted(functions, key=lambda k: (k[0], -1 if k[1] is None else k[1]))
    assert len(functions) == len(keys(functions))


def test_demo_ir(tmp_path: Path) -> None:
    ir = load([ROOT / "policies" / "demo.yaml"], pki_dir=tmp_path).ir()
    assert [p["name"] for p in ir["principals"]] == ["operator", "engineer", "viewer", "line-hmi", "historian", "opcua-poller"]
    assert ir["principals"][3]["sources"] == ["127.0.0.1/32"]
    assert ir["principals"][0]["opcua_users"] == ["operator"]
    assert ir["principals"][5] == {"name": "opcua-poller", "tls_roles": [], "subjects": [], "opcua_users": [], "sources": []}
    assert ir["devices"] == [
        {"name": "tank-plc", "zone": "cell-a", "host": "127.0.0.1", "port": 5020, "units": [[1, 1]], "enip": None},
        {"name": "press-plc", "zone": "cell-a", "host": "127.0.0.1", "port": 44818, "units": None,
         "enip": {"host": "127.0.0.1", "port": 44818}},
        {"name": "l3-historian", "zone": "level3", "host": "127.0.0.1", "port": 8803, "units": [[1, 1]], "enip": None},
    ]
    rules = {rule["id"]: rule for rule in ir["rules"]}
    assert list(rules) == ["operator-read", "operator-setpoints", "engineer-maintenance", "viewer-read", "opcua-poll",
                           "historian-read", "operator-press", "hmi-push-historian"]
    assert rules["opcua-poll"]["principals"] == [5]
    assert rules["opcua-poll"]["allow"] == [
        {"functions": [[3, None]], "ranges": ranges(holding_registers=[span(0, 109)]), "max_quantity": None, "rate": None}
    ]
    assert rules["operator-read"]["allow"] == [
        {"functions": [[3, None]], "ranges": ranges(holding_registers=[span(0, 109)]), "max_quantity": 110, "rate": None}
    ]
    assert rules["operator-setpoints"]["allow"] == [
        {
            "functions": [[6, None], [16, None]],
            "ranges": ranges(holding_registers=[span(100, 109, 0, 1500)]),
            "max_quantity": None,
            "rate": {"count": 5, "period_ns": 1_000_000_000, "burst": 5},
        }
    ]
    engineer = rules["engineer-maintenance"]["allow"][0]
    assert keys(engineer["functions"]) == set(READ_WRITE | DIAGNOSTICS)
    assert not {(8, 1), (8, 4)} & keys(engineer["functions"])
    assert keys(rules["viewer-read"]["allow"][0]["functions"]) == set(READ_ONLY)
    assert rules["hmi-push-historian"]["principals"] == [3] and rules["hmi-push-historian"]["devices"] == [2]
    assert rules["hmi-push-historian"]["allow"][0]["rate"] == {"count": 20, "period_ns": 1_000_000_000, "burst": 40}


def _spelled(start: int, end: int, form: int) -> object:
    """One range in one of the written forms."""
    if form == 0:
        return f"{start}-{end}"
    if form == 1:
        return [start, end]
    if form == 2:
        return {"range": f"{start}-{end}", "min": 0, "max": 1000}
    return start if start == end else f"{start} - {end}"


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    cuts=st.lists(st.integers(0, 65535), min_size=2, max_size=12, unique=True),
    forms=st.lists(st.integers(0, 3), min_size=12, max_size=12),
    order=st.randoms(use_true_random=False),
)
def test_ranges_in_any_form_and_order_compile_sorted(
    cuts: list[int], forms: list[int], order: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bounds = sorted(cuts)
    spans = [(bounds[i], bounds[i + 1] - 1) for i in range(0, len(bounds) - 1, 2) if bounds[i + 1] - 1 >= bounds[i]]
    if not spans:
        return
    written = [_spelled(s, e, forms[n]) for n, (s, e) in enumerate(spans)]
    order.shuffle(written)
    if len(written) == 2 and all(isinstance(w, int) for w in written):
        written = [str(w) for w in written]  # two bare numbers would read as one [start, end] range
    doc = yaml.safe_load(REPRESENTATIVE)
    doc["rules"][0]["allow"][0]["holding"] = written if len(written) > 1 else [written[0]]
    ir = load_text(tmp_path, yaml.safe_dump(doc), monkeypatch).ir()
    got = ir["rules"][0]["allow"][0]["ranges"]["holding_registers"]
    assert [(r["start"], r["end"]) for r in got] == spans
    _engine.Engine(json.dumps(ir))
