"""`zonegate replay` against captures nobody on this project wrote (../shared/pcaps) and the demo capture.

Second opinions: tshark's dissection (every request, frame by frame), the counts in SOURCES.md,
Suricata's expected alert counts and Zeek's logs. The demo capture is also recorded afresh here, from a
real pymodbus client and server, and must replay to the same counts as the committed one.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import PCAPS, ROOT, require
from zonegate import _engine
from zonegate.cli import main
from zonegate.demo import record_capture

# No rules: every request is denied and listed, so the denial list is a full trace of the requests.
DENY_ALL = json.dumps({
    "version": 1, "mode": "enforce",
    "principals": [{"name": "anyone", "tls_roles": [], "subjects": [], "opcua_users": [], "sources": []}],
    "devices": [{"name": "any", "zone": "", "host": "", "port": 502, "units": None}],
    "rules": [],
})

MODBUS_CAPTURES = [
    "suricata-verify/modbus/modbus.pcap",
    "icsnpp-modbus/modbus_example.pcap",
    "zeek/modbusBig.pcap",
    "zeek/modbusSmall.pcap",
    "zeek/modbus-eit.pcap",
    "zeek/4SICS-GeekLounge-151022-min.pcap",
    "zeek/modbus-and-non-modbus-p502.pcap",
    "zeek/fuzz-1011.pcap",
]
FUZZED = ["zeek/fuzz-72.pcap", "zeek/fuzz-1011.pcap"]
NOT_MODBUS = [
    "icsnpp-enip/enip_cip_example.pcap",
    "icsnpp-enip/multiple_service_packet_cip.pcapng",
    "icsnpp-enip/set_attribute_single_service_cip.pcapng",
    "suricata-verify/enip-alert/enip_test1.pcap",
]
DEMO_CAPTURE = ROOT / "zonegate" / "demo" / "demo_session.pcap"
DEMO_POLICY = ROOT / "policies" / "demo.yaml"


def shared(name: str) -> Path:
    path = PCAPS / name
    require(path.is_file(), f"shared capture {path} is missing")
    return path


def trace(path: Path) -> Counter[tuple[int, int, int]]:
    """(frame, function, unit) of every request replay decides."""
    report = _engine.replay_capture(DENY_ALL, str(path), principal="anyone", max_listed=10**7)
    assert len(report.denials) == report.requests
    return Counter((d.frame, d.function, d.unit) for d in report.denials)


def tshark_trace(path: Path) -> Counter[tuple[int, int, int]]:
    """(frame, function, unit) of every Modbus/TCP request tshark dissects (towards port 502)."""
    out = subprocess.run(
        ["tshark", "-r", str(path), "-Y", "mbtcp && tcp.dstport == 502",
         "-T", "fields", "-e", "frame.number", "-e", "mbtcp.unit_id", "-e", "modbus.func_code"],
        capture_output=True, text=True, timeout=120, check=True,
    ).stdout
    found: Counter[tuple[int, int, int]] = Counter()
    for line in out.splitlines():
        frame, units, functions = (line.split("\t") + ["", ""])[:3]
        for unit, fc in zip(units.split(","), functions.split(","), strict=True):
            found[(int(frame), int(fc), int(unit))] += 1
    return found


@pytest.mark.parametrize("name", MODBUS_CAPTURES)
def test_every_request_tshark_dissects_is_decided_with_its_function_and_unit(name: str) -> None:
    path = shared(name)
    require(shutil.which("tshark") is not None, "tshark is not installed (apt-get install tshark)")
    assert trace(path) == tshark_trace(path)


def test_suricata_verify_modbus_counts() -> None:
    # test.rules / test.yaml: function 1 -> 2 alerts, function 8 -> 8, unit 10 -> 18, access write -> 3,
    # access read -> 3, public assigned -> 18; SOURCES.md: 39 PDUs in all.
    report = _engine.replay_capture(DENY_ALL, str(shared("suricata-verify/modbus/modbus.pcap")), principal="anyone")
    assert report.requests == 18
    assert report.by_unit == {10: 18}
    assert report.by_function[1] == 2 and report.by_function[8] == 8
    assert report.by_function[5] + report.by_function[6] == 3, "access write"
    assert report.by_function[1] + report.by_function[3] == 3, "access read"
    assert report.requests + report.replies == 39
    # The flow from 10.0.0.57:2585 opens with an MBAP length of 0x8804: not Modbus, skipped.
    assert report.invalid_list == [(76, "10.0.0.57", 2585, "10.0.0.8", 502, "requests", "length")]


def test_zeek_and_icsnpp_counts() -> None:
    big = _engine.replay_capture(DENY_ALL, str(shared("zeek/modbusBig.pcap")), principal="anyone")
    # SOURCES.md counts 5,548 PDUs (tshark). Replay finds one reply more: frame 3150 carries the only copy
    # of the reply to transaction 50382, which tshark marks a spurious retransmission and skips; frame 1
    # is a reply to a request from before the capture started.
    assert (big.requests, big.replies) == (2774, 2775)
    assert big.by_function == {1: 1387, 5: 1387}
    example = _engine.replay_capture(DENY_ALL, str(shared("icsnpp-modbus/modbus_example.pcap")), principal="anyone")
    assert example.requests + example.replies == 48  # 48 PDUs over 17 function codes
    assert len(example.by_function) == 17
    assert {20, 21, 22, 23, 24} <= set(example.by_function)
    # Requests use units 1, 2, 4-8 and 10 (the "1-10" of SOURCES.md), and 0 on the second flow.
    assert set(example.by_unit) == {0, 1, 2, 4, 5, 6, 7, 8, 10}


def test_non_modbus_on_port_502_is_five_invalid_streams_as_zeek_says(capsys: pytest.CaptureFixture[str]) -> None:
    path = shared("zeek/modbus-and-non-modbus-p502.pcap")
    assert main(["replay", "--policy", str(DEMO_POLICY), "--pcap", str(path), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    requests = [s for s in report["invalid"] if s["direction"] == "requests"]
    # Zeek's analyzer log: a protocol violation (pid) on each of these five connections.
    assert [s["client"] for s in requests] == [
        "87.236.176.106:38129", "87.236.176.96:60175", "66.175.213.4:58380", "159.203.208.13:33752",
        "62.122.184.123:7488",
    ]
    assert {s["reason"] for s in requests} == {"protocol_id"}
    assert report["requests"] == 6
    assert report["anomalies"]["data_after_close"] == 1, "the HTTP request sent after the RST"


@pytest.mark.parametrize("name", FUZZED)
def test_fuzzed_captures_flag_anomalies_and_never_crash(capsys: pytest.CaptureFixture[str], name: str) -> None:
    path = shared(name)
    assert main(["replay", "--policy", str(DEMO_POLICY), "--pcap", str(path), "--json"]) == 0
    report: dict[str, Any] = json.loads(capsys.readouterr().out)
    anomalies = report["anomalies"]
    assert anomalies["undecodable_frames"] >= 1
    assert anomalies["gaps"] + anomalies["out_of_order"] + anomalies["retransmitted"] >= 1
    assert report["capture"]["complete"] is True


def test_fuzz_1011_bad_quantity_is_malformed() -> None:
    report = _engine.replay_capture(DENY_ALL, str(shared("zeek/fuzz-1011.pcap")), principal="anyone")
    assert (report.requests, report.malformed) == (2, 1)
    assert report.denials[0].malformed == "bad_quantity" and report.denials[0].frame == 1


@pytest.mark.parametrize("name", NOT_MODBUS)
def test_ethernet_ip_captures_hold_no_modbus(capsys: pytest.CaptureFixture[str], name: str) -> None:
    path = shared(name)
    assert main(["replay", "--policy", str(DEMO_POLICY), "--pcap", str(path), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert (report["requests"], report["invalid_streams"]) == (0, 0)
    assert report["capture"]["frames"] > 0
    assert report["flows"] == report["cip"]["flows"] > 0, "every flow here is EtherNet/IP (test_replay_enip.py)"



# What the demo session holds (zonegate/demo/record_capture.py): ten reads of holding 0-9, a setpoint
# write of 750, a read of the setpoints, a setpoint write of 2000 (above 1500) and a coil write.
DEMO_EXPECTED = {
    "requests": 14,
    "allowed": 12,
    "denied": 2,
    "malformed": 0,
    "by_reason": {"allowed": 12, "value_out_of_bounds": 1, "function_not_allowed": 1},
    "by_function": {"3": 11, "5": 1, "6": 2},
}


def demo_report(capsys: pytest.CaptureFixture[str], capture: Path) -> tuple[int, dict[str, Any]]:
    code = main([
        "replay", "--policy", str(DEMO_POLICY), "--pcap", str(capture), "--json", "--principal", "operator",
    ])
    report: dict[str, Any] = json.loads(capsys.readouterr().out)
    # Every rule of the demo policy is listed; only the operator's two allowed anything here.
    used = {rule: n for rule, n in report["by_rule"].items() if n}
    assert used == {"operator-read": 11, "operator-setpoints": 1}
    assert {"operator-read", "operator-setpoints"} < set(report["by_rule"])
    return code, report


def test_demo_capture_replays_to_the_expected_counts(capsys: pytest.CaptureFixture[str]) -> None:
    code, report = demo_report(capsys, DEMO_CAPTURE)
    assert code == 0
    assert {key: report[key] for key in DEMO_EXPECTED} == DEMO_EXPECTED
    denials = [(d["function"], d["reason"], d["rule"], d["device"]) for d in report["first_denials"]]
    assert denials == [
        (6, "value_out_of_bounds", "operator-setpoints", "tank-plc"),
        (5, "function_not_allowed", "operator-read", "tank-plc"),
    ]
    assert main([
        "replay", "--policy", str(DEMO_POLICY), "--pcap", str(DEMO_CAPTURE), "--principal", "operator",
        "--fail-on-deny",
    ]) == 1
    capsys.readouterr()


def test_demo_capture_is_reproducible_from_a_real_session(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    recording = asyncio.run(asyncio.wait_for(record_capture.record(), 60))
    fresh = tmp_path / "session.pcap"
    record_capture.write_pcap(fresh, record_capture.conversation(recording).frames)
    code, report = demo_report(capsys, fresh)
    assert code == 0
    assert {key: report[key] for key in DEMO_EXPECTED} == DEMO_EXPECTED
    assert report["replies"] == 14 and report["anomalies"]["retransmitted"] == 0


def test_demo_capture_dissects_in_tshark_as_modbus(tmp_path: Path) -> None:
    require(shutil.which("tshark") is not None, "tshark is not installed (apt-get install tshark)")
    out = subprocess.run(
        ["tshark", "-r", str(DEMO_CAPTURE), "-d", "tcp.port==5020,mbtcp", "-o", "tcp.check_checksum:TRUE",
         "-T", "fields", "-e", "modbus.func_code", "-e", "tcp.checksum.status", "-e", "ip.checksum.status",
         "-Y", "tcp.srcport != 5020 && mbtcp"],
        capture_output=True, text=True, timeout=120, check=True,
    ).stdout.split("\n")
    rows = [line.split("\t") for line in out if line]
    assert Counter(row[0] for row in rows) == Counter({"3": 11, "6": 2, "5": 1})
    assert all(row[1] == "1" for row in rows), "TCP checksums verify"
