"""`zonegate replay` from the command line: synthetic captures written by the test, exact counts."""

from __future__ import annotations

import json
import os
import pty
import select
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from zonegate.cli import main
from zonegate.demo.record_capture import ACK, PSH, SYN, PcapWriter, TcpConversation, tcp_frame, write_pcap

ROOT = Path(__file__).resolve().parents[2]

POLICY = """\
version: 1
mode: {mode}
zones:
  cell: {{interface: veth-cell, subnet: 10.0.0.0/24}}
devices:
  plc: {{zone: cell, modbus: {{host: 10.0.0.3, port: 502, units: [1]}}}}
  pump: {{zone: cell, modbus: {{host: 10.0.0.4, port: 5020}}}}
principals:
  operator: {{source: 10.0.0.0/24}}
  hmi: {{source: 10.0.0.50}}
rules:
  - id: operator-read
    principal: operator
    device: [plc, pump]
    allow:
      - {{functions: [read_holding_registers], holding: 0-99}}
  - id: hmi-setpoint
    principal: hmi
    device: plc
    allow:
      - {{functions: [write_single_register], holding: {{range: 0-9, min: 0, max: 100}}}}
"""

OPERATOR = ("10.0.0.9", 3082)
HMI = ("10.0.0.50", 4001)
PLC = ("10.0.0.3", 502)
T0 = 1_700_000_000_000_000_000


def read_holding(tid: int, start: int, qty: int, unit: int = 1) -> bytes:
    # transaction id, protocol id 0, length 6, unit, FC 3, start, quantity
    return struct.pack(">HHHBBHH", tid, 0, 6, unit, 3, start, qty)


def write_register(tid: int, addr: int, value: int, unit: int = 1) -> bytes:
    # transaction id, protocol id 0, length 6, unit, FC 6, address, value
    return struct.pack(">HHHBBHH", tid, 0, 6, unit, 6, addr, value)


def holding_reply(tid: int, qty: int, unit: int = 1) -> bytes:
    # transaction id, protocol id 0, length, unit, FC 3, byte count, registers
    return struct.pack(">HHHBBB", tid, 0, 3 + 2 * qty, unit, 3, 2 * qty) + bytes(2 * qty)


@pytest.fixture
def policy(tmp_path: Path) -> Path:
    path = tmp_path / "policy.yaml"
    path.write_text(POLICY.format(mode="enforce"))
    return path


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["replay", *args])
    out, err = capsys.readouterr()
    return code, out, err


def run_json(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, dict[str, Any]]:
    code, out, _ = run(capsys, *args, "--json")
    return code, json.loads(out)


def timed(frames: list[bytes]) -> list[tuple[int, bytes]]:
    return [(T0 + i * 1_000_000, f) for i, f in enumerate(frames)]


def session(tmp_path: Path) -> Path:
    """Operator reads (two ADUs in one segment, one ADU over two segments), an out-of-bounds HMI write."""
    op = TcpConversation(client=OPERATOR, server=PLC)
    op.handshake(T0)
    stream = read_holding(1, 0, 10) + read_holding(2, 10, 10) + read_holding(3, 200, 1)
    op.data(T0 + 1, True, stream[:24])  # two whole requests
    op.data(T0 + 2, True, stream[24:30])  # half of the third
    op.data(T0 + 3, True, stream[30:])  # its other half
    op.data(T0 + 4, False, holding_reply(1, 10) + holding_reply(2, 10))
    hmi = TcpConversation(client=HMI, server=PLC)
    hmi.handshake(T0 + 5)
    hmi.data(T0 + 6, True, write_register(1, 5, 50))
    hmi.data(T0 + 7, True, write_register(2, 5, 500))
    path = tmp_path / "session.pcap"
    write_pcap(path, op.frames + hmi.frames)
    return path


def test_json_report_has_the_documented_keys_and_exact_counts(
    capsys: pytest.CaptureFixture[str], policy: Path, tmp_path: Path
) -> None:
    code, report = run_json(capsys, "--policy", str(policy), "--pcap", str(session(tmp_path)))
    assert code == 0
    assert {k: report[k] for k in ("requests", "allowed", "denied", "malformed")} == {
        "requests": 5, "allowed": 3, "denied": 2, "malformed": 0,
    }
    assert report["by_rule"] == {"operator-read": 2, "hmi-setpoint": 1}
    assert report["by_rule_denied"] == {"operator-read": 1, "hmi-setpoint": 1}
    assert report["by_reason"] == {"allowed": 3, "address_out_of_range": 1, "value_out_of_bounds": 1}
    assert report["by_function"] == {"3": 3, "6": 2}
    assert report["replies"] == 2
    assert [(d["frame"], d["principal"], d["device"], d["reason"], d["rule"]) for d in report["first_denials"]] == [
        (6, "operator", "plc", "address_out_of_range", "operator-read"),
        (12, "hmi", "plc", "value_out_of_bounds", "hmi-setpoint"),
    ]
    assert report["capture"]["complete"] is True


def test_text_report_names_rules_reasons_functions_and_denials(
    capsys: pytest.CaptureFixture[str], policy: Path, tmp_path: Path
) -> None:
    code, out, err = run(capsys, "--policy", str(policy), "--pcap", str(session(tmp_path)))
    assert code == 0
    assert "requests 5: allowed 3, denied 2" in out
    assert "operator-read" in out and "hmi-setpoint" in out
    assert "value_out_of_bounds" in out and "write_single_register" in out
    assert "frame 12: 10.0.0.50:4001 -> 10.0.0.3:502" in out
    assert err == "", "no progress bar when stderr is not a terminal"


def test_fail_on_deny_exits_1_only_when_something_is_denied(
    capsys: pytest.CaptureFixture[str], policy: Path, tmp_path: Path
) -> None:
    assert run(capsys, "--policy", str(policy), "--pcap", str(session(tmp_path)), "--fail-on-deny")[0] == 1
    clean = TcpConversation(client=OPERATOR, server=PLC)
    clean.handshake(T0)
    clean.data(T0 + 1, True, read_holding(1, 0, 1))
    path = tmp_path / "clean.pcap"
    write_pcap(path, clean.frames)
    assert run(capsys, "--policy", str(policy), "--pcap", str(path), "--fail-on-deny")[0] == 0


def test_monitor_mode_counts_would_deny_and_still_fails_on_deny(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    monitor = tmp_path / "monitor.yaml"
    monitor.write_text(POLICY.format(mode="monitor"))
    code, report = run_json(capsys, "--policy", str(monitor), "--pcap", str(session(tmp_path)), "--fail-on-deny")
    assert code == 1
    assert (report["allowed"], report["denied"], report["would_deny"]) == (3, 0, 2)
    assert report["mode"] == "monitor"


def test_principal_override_and_unknown_names(
    capsys: pytest.CaptureFixture[str], policy: Path, tmp_path: Path
) -> None:
    pcap = str(session(tmp_path))
    code, report = run_json(capsys, "--policy", str(policy), "--pcap", pcap, "--principal", "hmi")
    assert code == 0
    # As hmi, the reads have no rule for plc (hmi-setpoint only allows FC 6): function_not_allowed.
    assert report["by_reason"] == {"function_not_allowed": 3, "allowed": 1, "value_out_of_bounds": 1}
    code, out, err = run(capsys, "--policy", str(policy), "--pcap", pcap, "--principal", "nobody")
    assert code == 2 and out == ""
    assert 'no principal named "nobody"' in err
    code, _, err = run(capsys, "--policy", str(policy), "--pcap", pcap, "--device", "nothing")
    assert code == 2 and 'no device named "nothing"' in err


def test_unknown_source_address_is_unknown_principal(
    capsys: pytest.CaptureFixture[str], policy: Path, tmp_path: Path
) -> None:
    conv = TcpConversation(client=("192.168.1.1", 5555), server=PLC)
    conv.handshake(T0)
    conv.data(T0 + 1, True, read_holding(1, 0, 1))
    path = tmp_path / "stranger.pcap"
    write_pcap(path, conv.frames)
    _, report = run_json(capsys, "--policy", str(policy), "--pcap", str(path))
    assert report["by_reason"] == {"unknown_principal": 1}
    assert report["first_denials"][0]["principal"] is None


def test_out_of_order_retransmitted_and_server_first_segments(
    capsys: pytest.CaptureFixture[str], policy: Path, tmp_path: Path
) -> None:
    a, b, c = read_holding(1, 0, 1), read_holding(2, 1, 1), read_holding(3, 2, 1)
    seq = 5000  # the capture starts mid-connection, with the server's reply to an earlier request
    frames = [
        tcp_frame(PLC, OPERATOR, 9000, seq, PSH | ACK, holding_reply(9, 1)),
        tcp_frame(OPERATOR, PLC, seq, 9011, PSH | ACK, a),
        tcp_frame(OPERATOR, PLC, seq + 24, 9011, PSH | ACK, c),  # ahead of a hole
        tcp_frame(OPERATOR, PLC, seq + 12, 9011, PSH | ACK, b),  # fills it
        tcp_frame(OPERATOR, PLC, seq, 9011, PSH | ACK, a),  # retransmission
    ]
    path = tmp_path / "disorder.pcap"
    write_pcap(path, timed(frames))
    _, report = run_json(capsys, "--policy", str(policy), "--pcap", str(path))
    assert (report["requests"], report["allowed"], report["replies"]) == (3, 3, 1)
    anomalies = report["anomalies"]
    assert (anomalies["out_of_order"], anomalies["retransmitted"], anomalies["midstream_flows"]) == (1, 1, 1)


def pcapng(frames: list[tuple[int, bytes]]) -> bytes:
    """One section, one Ethernet interface with nanosecond timestamps, one EPB per frame."""
    out = struct.pack("<IIIHHqI", 0x0A0D0D0A, 28, 0x1A2B3C4D, 1, 0, -1, 28)  # SHB
    idb = struct.pack("<HHI", 1, 0, 65535) + struct.pack("<HHB3x", 9, 1, 9) + struct.pack("<HH", 0, 0)
    out += struct.pack("<II", 1, 12 + len(idb)) + idb + struct.pack("<I", 12 + len(idb))  # IDB, if_tsresol 9
    for ts, data in frames:
        body = struct.pack("<IIIII", 0, ts >> 32, ts & 0xFFFFFFFF, len(data), len(data)) + data
        body += bytes(-len(body) % 4)
        out += struct.pack("<II", 6, 12 + len(body)) + body + struct.pack("<I", 12 + len(body))  # EPB
    return out


def test_pcapng_gives_the_same_report_as_pcap(
    capsys: pytest.CaptureFixture[str], policy: Path, tmp_path: Path
) -> None:
    legacy = session(tmp_path)
    op = TcpConversation(client=OPERATOR, server=PLC)
    op.handshake(T0)
    stream = read_holding(1, 0, 10) + read_holding(2, 10, 10) + read_holding(3, 200, 1)
    op.data(T0 + 1, True, stream[:24])
    op.data(T0 + 2, True, stream[24:30])
    op.data(T0 + 3, True, stream[30:])
    op.data(T0 + 4, False, holding_reply(1, 10) + holding_reply(2, 10))
    hmi = TcpConversation(client=HMI, server=PLC)
    hmi.handshake(T0 + 5)
    hmi.data(T0 + 6, True, write_register(1, 5, 50))
    hmi.data(T0 + 7, True, write_register(2, 5, 500))
    ng = tmp_path / "session.pcapng"
    ng.write_bytes(pcapng(op.frames + hmi.frames))
    _, a = run_json(capsys, "--policy", str(policy), "--pcap", str(legacy))
    _, b = run_json(capsys, "--policy", str(policy), "--pcap", str(ng))
    assert b["capture"]["format"] == "pcapng"
    for key in ("requests", "allowed", "denied", "by_rule", "by_reason", "by_function", "first_denials"):
        assert a[key] == b[key], key


def test_non_modbus_stream_is_counted_and_skipped(
    capsys: pytest.CaptureFixture[str], policy: Path, tmp_path: Path
) -> None:
    web = TcpConversation(client=("10.0.0.7", 40000), server=PLC)
    web.handshake(T0)
    web.data(T0 + 1, True, b"GET / HTTP/1.1\r\nHost: plc\r\n\r\n")
    web.data(T0 + 2, True, read_holding(1, 0, 1))
    path = tmp_path / "web.pcap"
    write_pcap(path, web.frames)
    code, report = run_json(capsys, "--policy", str(policy), "--pcap", str(path))
    assert code == 0
    assert report["requests"] == 0
    assert report["invalid_streams"] == 1
    assert report["invalid"][0]["reason"] == "protocol_id"
    assert report["invalid"][0]["direction"] == "requests"


def test_bad_inputs_exit_2_with_a_message(capsys: pytest.CaptureFixture[str], policy: Path, tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.pcap"
    garbage.write_bytes(b"this is not a capture at all")
    code, out, err = run(capsys, "--policy", str(policy), "--pcap", str(garbage))
    assert (code, out) == (2, "") and "not a pcap or pcapng capture" in err
    code, _, err = run(capsys, "--policy", str(policy), "--pcap", str(tmp_path / "missing.pcap"))
    assert code == 2 and "missing.pcap" in err
    code, _, err = run(capsys, "--policy", str(policy), "--pcap", str(tmp_path))
    assert code == 2 and "cannot read the capture" in err and "directory" in err
    bad_policy = tmp_path / "bad.yaml"
    bad_policy.write_text(POLICY.format(mode="enforce").replace("holding: 0-99", "holding: 99-0"))
    code, _, err = run(capsys, "--policy", str(bad_policy), "--pcap", str(garbage))
    assert code == 2 and f"{bad_policy}:" in err and "holding" in err
    code, _, err = run(capsys, "--policy", str(policy), "--pcap", str(garbage), "--max-denials", "-1")
    assert code == 2


def test_damaged_capture_reports_what_it_read_and_exits_2(
    capsys: pytest.CaptureFixture[str], policy: Path, tmp_path: Path
) -> None:
    whole = session(tmp_path).read_bytes()
    cut = tmp_path / "cut.pcap"
    cut.write_bytes(whole[:-5])  # the last record loses its tail
    code, out, err = run(capsys, "--policy", str(policy), "--pcap", str(cut), "--json")
    report = json.loads(out)
    assert code == 2 and "truncated" in err
    assert report["capture"]["complete"] is False
    assert report["requests"] == 4, "everything before the damage is decided"


def test_listed_denials_are_bounded_but_all_counted(
    capsys: pytest.CaptureFixture[str], policy: Path, tmp_path: Path
) -> None:
    conv = TcpConversation(client=OPERATOR, server=PLC)
    conv.handshake(T0)
    for i in range(30):
        conv.data(T0 + i + 1, True, read_holding(i, 500, 1))
    path = tmp_path / "many.pcap"
    write_pcap(path, conv.frames)
    _, report = run_json(capsys, "--policy", str(policy), "--pcap", str(path), "--max-denials", "5")
    assert report["denied"] == 30
    assert [d["frame"] for d in report["first_denials"]] == [4, 5, 6, 7, 8]


def test_progress_bar_only_on_a_terminal(policy: Path, tmp_path: Path) -> None:
    pcap = str(session(tmp_path))
    cmd = [sys.executable, "-m", "zonegate.cli", "replay", "--policy", str(policy), "--pcap", pcap]
    piped = subprocess.run(cmd, capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert piped.returncode == 0 and piped.stderr == ""
    # The same command with stderr on a pseudo-terminal draws the bar (then clears it).
    main_fd, child_fd = pty.openpty()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=child_fd, cwd=ROOT)
    os.close(child_fd)
    seen = b""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        ready, _, _ = select.select([main_fd], [], [], max(0.0, deadline - time.monotonic()))
        if not ready:
            break
        try:
            chunk = os.read(main_fd, 4096)
        except OSError:  # EIO: the child closed its end
            break
        if not chunk:
            break
        seen += chunk
    os.close(main_fd)
    assert proc.wait(timeout=60) == 0
    assert b"100%" in seen


def test_writer_frames_carry_valid_tcp_sequence_numbers() -> None:
    conv = TcpConversation(client=OPERATOR, server=PLC, client_isn=100, server_isn=900)
    conv.handshake(T0)
    conv.data(T0, True, b"x" * 12)
    conv.data(T0, False, b"y" * 11)
    seqs = [struct.unpack(">I", f[38:42])[0] for _, f in conv.frames]
    acks = [struct.unpack(">I", f[42:46])[0] for _, f in conv.frames]
    flags = [f[47] for _, f in conv.frames]
    assert seqs == [100, 900, 101, 101, 901]
    assert acks == [0, 101, 901, 901, 113]
    assert flags[0] == SYN and flags[1] == SYN | ACK


def test_pcap_writer_header() -> None:
    import io

    buf = io.BytesIO()
    PcapWriter(buf).frame(T0 + 5, b"abc")
    magic, major, minor, _, _, snaplen, link = struct.unpack("<IHHiIII", buf.getvalue()[:24])
    assert (magic, major, minor, snaplen, link) == (0xA1B23C4D, 2, 4, 65535, 1)
    assert struct.unpack("<IIII", buf.getvalue()[24:40]) == (T0 // 10**9, 5, 3, 3)
