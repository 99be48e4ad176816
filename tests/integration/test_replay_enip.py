"""`zonegate replay` over EtherNet/IP captures nobody on this project wrote (../shared/pcaps).

Second opinions: Suricata's expected alert counts (suricata-verify enip-keywords: cip_service 10 -> 41,
enip_command 112 -> 267, enip_command 99 -> 2, requests and replies together) and tshark's dissection,
message by message. The policy is a real YAML file through the real loader.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import PCAPS, require
from zonegate import _engine
from zonegate.cli import main

CIP_EXAMPLE = "suricata-verify/enip-keywords/enip_cip_example.pcap"
ENIP_CAPTURES = [
    CIP_EXAMPLE,
    "icsnpp-enip/enip_cip_example.pcap",
    "icsnpp-enip/multiple_service_packet_cip.pcapng",
    "icsnpp-enip/set_attribute_single_service_cip.pcapng",
    "suricata-verify/enip-alert/enip_test1.pcap",
]

# Engineering (192.168.10.0/24) may read attribute lists of the Identity, Message Router and vendor
# class 0x8B objects of the controller the capture talks to; nothing else.
POLICY = """\
version: 1
mode: {mode}
zones:
  cell: {{interface: eth1, subnet: 192.168.10.0/24}}
devices:
  plc:
    zone: cell
    enip: {{host: 192.168.10.120}}
  pump:
    zone: cell
    modbus: {{host: 192.168.10.9}}
principals:
  engineering: {{source: 192.168.10.0/24}}
rules:
  - id: engineering-lists
    principal: engineering
    device: plc
    cip:
      - services: [get_attribute_list]
        class: [1, 2, 0x8B]
listeners:
  - name: cell-enip
    protocol: enip
    bind: 192.168.10.1:44818
    devices: [plc]
"""

# No principal has a source: every message of every flow is refused (unknown_principal) and listed,
# which makes the denial list a full trace of the client messages.
DENY_ALL = json.dumps({
    "version": 1, "mode": "enforce",
    "principals": [{"name": "nobody", "tls_roles": ["Nobody"], "subjects": [], "opcua_users": [], "sources": []}],
    "devices": [{"name": "any", "zone": "", "host": "", "port": 44818, "units": None,
                 "enip": {"host": "", "port": 44818}}],
    "rules": [],
})


def shared(name: str) -> Path:
    path = PCAPS / name
    require(path.is_file(), f"shared capture {path} is missing")
    return path


def policy(tmp_path: Path, mode: str = "enforce") -> Path:
    path = tmp_path / f"cip-{mode}.yaml"
    path.write_text(POLICY.format(mode=mode))
    return path


def replay_json(capsys: pytest.CaptureFixture[str], *args: str, expect: int = 0) -> dict[str, Any]:
    assert main(["replay", *args, "--json"]) == expect
    report: dict[str, Any] = json.loads(capsys.readouterr().out)
    return report


def test_enip_cip_example_counts_match_suricatas_expected_results(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    report = replay_json(capsys, "--policy", str(policy(tmp_path)), "--pcap", str(shared(CIP_EXAMPLE)))
    cip = report["cip"]
    assert cip["by_service"]["multiple_service_packet"] == 41
    assert cip["by_command"]["send_unit_data"] + cip["replies_by_command"]["send_unit_data"] == 267
    assert cip["by_command"]["list_identity"] + cip["replies_by_command"]["list_identity"] == 2
    assert (cip["flows"], cip["requests"], cip["replies"], cip["leaves"]) == (3, 135, 134, 41 * 11 + 93)
    assert cip["by_leaf_service"] == {"get_attribute_list": 41 * 11 + 92, "set_attribute_list": 1}
    # Modbus keys are untouched by an EtherNet/IP capture.
    assert (report["requests"], report["replies"], report["invalid_streams"]) == (0, 0, 0)
    # The 10.1.1.167 ListIdentity comes from no principal's address.
    assert cip["by_reason"] == {
        "allowed": 72, "unknown_principal": 1, "service_not_allowed": 1, "target_not_allowed": 41 + 20,
    }
    assert (cip["allowed"], cip["denied"], cip["would_deny"], cip["malformed"]) == (72, 63, 0, 0)
    assert cip["by_rule"] == {"engineering-lists": 72}
    assert cip["by_rule_denied"] == {"engineering-lists": 62}
    # The capture joins the controller's connection after its Forward Open: those requests are decided
    # to the device itself, and counted.
    assert cip["anomalies"] == {"unseen_connection_requests": 134, "unmatched_replies": 0}


def test_specific_denials_name_frame_request_target_and_rule(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    report = replay_json(
        capsys, "--policy", str(policy(tmp_path)), "--pcap", str(shared(CIP_EXAMPLE)), "--max-denials", "1000"
    )
    denials = {d["frame"]: d for d in report["cip"]["first_denials"]}
    assert len(denials) == 63
    # Frame 2: a Multiple Service Packet whose second request reads class 0x69.
    msp = denials[2]
    assert (msp["command"], msp["service"], msp["leaf"], msp["target"].lower(), msp["route"]) == (
        "send_unit_data", "get_attribute_list", 1, "class 0x69 instance 0", ""
    )
    assert (msp["verdict"], msp["reason"], msp["rule"], msp["general_status"]) == (
        "deny", "target_not_allowed", "engineering-lists", 0x0F
    )
    assert (msp["client"], msp["server"], msp["principal"], msp["device"]) == (
        "192.168.10.105:3033", "192.168.10.120:44818", "engineering", "plc"
    )
    assert denials[16]["target"].lower() == "class 0x73 instance 1" and denials[16]["leaf"] == 0
    assert (denials[138]["service"], denials[138]["reason"]) == ("set_attribute_list", "service_not_allowed")
    discovery = next(d for d in denials.values() if d["command"] == "list_identity")
    assert (discovery["client"], discovery["reason"], discovery["principal"]) == (
        "10.1.1.167:5262", "unknown_principal", None
    )


def test_monitor_mode_would_deny_and_fail_on_deny(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    args = ["--policy", str(policy(tmp_path, "monitor")), "--pcap", str(shared(CIP_EXAMPLE))]
    cip = replay_json(capsys, *args)["cip"]
    # unknown_principal stays a denial in monitor mode; the policy's refusals become would_deny.
    assert (cip["allowed"], cip["denied"], cip["would_deny"]) == (72, 1, 62)
    assert main(["replay", *args, "--fail-on-deny"]) == 1
    text = capsys.readouterr().out
    assert "EtherNet/IP messages 135" in text
    assert "send_unit_data  134 / 133" in text
    assert "frame 2: 192.168.10.105:3033 -> 192.168.10.120:44818 principal engineering device plc" in text
    assert "would_deny target_not_allowed rule engineering-lists" in text
    assert "unseen_connection_requests 134" in text


def test_one_frame_captures(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    base = ["--policy", str(policy(tmp_path)), "--principal", "engineering"]
    msp = replay_json(capsys, *base, "--pcap", str(shared("icsnpp-enip/multiple_service_packet_cip.pcapng")))["cip"]
    assert (msp["requests"], msp["leaves"], msp["by_service"]) == (1, 11, {"multiple_service_packet": 1})
    assert msp["first_denials"][0]["leaf"] == 1
    single = shared("icsnpp-enip/set_attribute_single_service_cip.pcapng")
    sas = replay_json(capsys, *base, "--pcap", str(single))["cip"]
    assert sas["by_leaf_service"] == {"set_attribute_single": 1}
    # 10.100.40.11 is not the policy's address for plc, but plc is its only EtherNet/IP device.
    assert [(d["device"], d["reason"]) for d in sas["first_denials"]] == [("plc", "service_not_allowed")]


def test_list_identity_is_answered_and_matched(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    path = shared("suricata-verify/enip-alert/enip_test1.pcap")
    cip = replay_json(capsys, "--policy", str(policy(tmp_path)), "--principal", "engineering", "--pcap", str(path))[
        "cip"
    ]
    # suricata-verify enip-alert: enip_command 99 -> 2 alerts (the request and its reply).
    assert (cip["by_command"], cip["replies_by_command"]) == ({"list_identity": 1}, {"list_identity": 1})
    assert (cip["allowed"], cip["anomalies"]["unmatched_replies"]) == (1, 0)


def trace(path: Path) -> Counter[tuple[int, int]]:
    """(frame, command) of every client message replay decides."""
    report = _engine.replay_capture(DENY_ALL, str(path), max_listed=10**7)
    assert len(report.cip_denials) == report.cip_requests
    assert all(d.reason == "unknown_principal" for d in report.cip_denials)
    names = {"list_identity": 0x63, "send_rr_data": 0x6F, "send_unit_data": 0x70, "register_session": 0x65}
    return Counter((d.frame, names[d.command]) for d in report.cip_denials)


def tshark(path: Path, *fields: str, direction: str = "tcp.dstport == 44818") -> list[list[str]]:
    out = subprocess.run(
        ["tshark", "-r", str(path), "-Y", f"enip && {direction}", "-T", "fields",
         *(x for f in fields for x in ("-e", f))],
        capture_output=True, text=True, timeout=120, check=True,
    ).stdout
    return [line.split("\t") for line in out.splitlines()]


@pytest.mark.parametrize("name", ENIP_CAPTURES)
def test_every_message_tshark_dissects_is_decided(name: str) -> None:
    path = shared(name)
    require(shutil.which("tshark") is not None, "tshark is not installed (apt-get install tshark)")
    dissected = tshark(path, "frame.number", "enip.command")
    expected = Counter((int(frame), int(command, 16)) for frame, command in dissected)
    assert trace(path) == expected


def test_outer_services_match_tshark() -> None:
    path = shared(CIP_EXAMPLE)
    require(shutil.which("tshark") is not None, "tshark is not installed (apt-get install tshark)")
    outer = Counter(int(services.split(",")[0], 16) for (services,) in tshark(path, "cip.service") if services)
    report = _engine.replay_capture(DENY_ALL, str(path))
    codes = {"multiple_service_packet": 0x0A, "get_attribute_list": 0x03, "set_attribute_list": 0x04}
    assert {codes[name]: n for name, n in report.cip_by_service.items()} == dict(outer)


@pytest.mark.parametrize("name", ENIP_CAPTURES)
def test_replies_per_command_match_tshark(name: str) -> None:
    path = shared(name)
    require(shutil.which("tshark") is not None, "tshark is not installed (apt-get install tshark)")
    names = {0x63: "list_identity", 0x6F: "send_rr_data", 0x70: "send_unit_data", 0x65: "register_session"}
    dissected = tshark(path, "enip.command", direction="tcp.srcport == 44818")
    expected = Counter(names[int(command, 16)] for (command,) in dissected)
    assert _engine.replay_capture(DENY_ALL, str(path)).cip_replies_by_command == dict(expected)
