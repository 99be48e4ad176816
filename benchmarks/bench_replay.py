"""Benchmark of the replay stage: Modbus PDUs per second, `zonegate replay` against Suricata, same capture.

The capture is a shared Modbus capture (zeek/modbusBig.pcap: one SCADA poller, FC 1 and FC 5, plus S7
traffic on port 102) repeated to about 100 MB. Each copy is shifted in time past the previous one and
its client ports are moved (checksums fixed), so every copy is a new TCP connection to both tools rather
than a retransmission of the first. Both tools get equivalent allow-list rules: a zonegate policy, and
Suricata alert rules for everything that policy would deny (`suricata -r FILE -S RULES -k none
--runmode single`, modbus app-layer enabled, `stream.reassembly.depth: 0`).

Startup is excluded the same way for both: each tool also runs on a single copy, and the rate is
(PDUs(big) - PDUs(one)) / (time(big) - time(one)). PDUs are requests plus replies, as replay counts
them. Suricata comes from Debian bookworm-backports; when it is missing and this runs as root, it is
installed with the backports source added for that install only. Without Suricata the benchmark says
so and still reports zonegate's own figure.

    .venv/bin/python benchmarks/bench_replay.py [--json] [--size-mb 100] [--no-install]

Target (issue 2): zonegate replay >= 1.0x Suricata with rules.
`--smoke` runs the whole pipeline on a small input with timing off (what the test suite runs).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from zonegate import _engine  # noqa: E402
from zonegate.controlplane.policy import load  # noqa: E402
from zonegate.demo.record_capture import ACK, SYN, tcp_frame  # noqa: E402

SOURCE = ROOT.parent / "shared" / "pcaps" / "zeek" / "modbusBig.pcap"
TARGET_RATIO = 1.0
# Each copy starts this long after the previous one ended.
COPY_GAP_NS = 1_000_000_000
# Ports below this are servers (502 Modbus, 102 S7) and stay; client ports move per copy.
FIRST_CLIENT_PORT = 1024
BACKPORTS_LIST = Path("/etc/apt/sources.list.d/zonegate-bookworm-backports.list")
SURICATA_TIMEOUT_S = 600

# The capture's poller (10.235.149.240) reads coils with FC 1 and writes them with FC 5, unit 255, on
# the PLC at 10.235.149.243:502. The policy allows reads of coils 0-999 and writes of coils 2-99, so
# every FC 5 (to coil 1) is denied: Suricata must raise exactly as many alerts as replay counts denials.
POLICY = """\
version: 1
mode: enforce
zones:
  cell: {interface: veth-cell, subnet: 10.235.149.0/24}
devices:
  plc: {zone: cell, modbus: {host: 10.235.149.243, port: 502, units: [255]}}
principals:
  scada: {source: 10.235.149.240}
rules:
  - id: scada-read-coils
    principal: scada
    device: plc
    allow:
      - {functions: [read_coils], coils: 0-999}
  - id: scada-write-coils
    principal: scada
    device: plc
    allow:
      - {functions: [write_single_coil], coils: 2-99}
"""

# What the policy denies, as Suricata 7 rules (Suricata numbers addresses from 1).
PUBLIC_FUNCTIONS = (2, 3, 4, 6, 7, 8, 11, 12, 15, 16, 17, 20, 21, 22, 23, 24, 43)


def suricata_rules() -> str:
    rules = [
        'alert tcp !10.235.149.240 any -> any 502 (msg:"unknown principal"; flow:to_server; '
        'app-layer-protocol:modbus; sid:1000001; rev:1;)',
        'alert modbus any any -> any 502 (msg:"unit not allowed"; modbus: unit <255; sid:1000002; rev:1;)',
        'alert modbus any any -> any 502 (msg:"coil read out of range"; '
        "modbus: access read coils, address >1000; sid:1000003; rev:1;)",
        'alert modbus any any -> any 502 (msg:"coil write below range"; '
        "modbus: access write coils, address <3; sid:1000004; rev:1;)",
        'alert modbus any any -> any 502 (msg:"coil write above range"; '
        "modbus: access write coils, address >100; sid:1000012; rev:1;)",
        'alert modbus any any -> any 502 (msg:"holding write"; modbus: access write holding; sid:1000005; rev:1;)',
        'alert modbus any any -> any 502 (msg:"input read"; modbus: access read input; sid:1000006; rev:1;)',
        'alert modbus any any -> any 502 (msg:"discrete read"; modbus: access read discretes; sid:1000007; rev:1;)',
        'alert modbus any any -> any 502 (msg:"holding read"; modbus: access read holding; sid:1000008; rev:1;)',
        'alert modbus any any -> any 502 (msg:"reserved function"; modbus: function reserved; sid:1000009; rev:1;)',
        'alert modbus any any -> any 502 (msg:"user function"; modbus: function user; sid:1000010; rev:1;)',
        'alert modbus any any -> any 502 (msg:"undefined function"; modbus: function !assigned; sid:1000011; rev:1;)',
    ]
    for n, fc in enumerate(PUBLIC_FUNCTIONS):
        rules.append(
            f'alert modbus any any -> any 502 (msg:"function {fc} not allowed"; modbus: function {fc}; '
            f"sid:{1000100 + n}; rev:1;)"
        )
    return "\n".join(rules) + "\n"


# --- the large capture ------------------------------------------------------------------------------


def _fold(total: int) -> int:
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return total


def _adjust_checksum(checksum: int, old: int, new: int) -> int:
    """RFC 1624 incremental update of a ones' complement checksum for one 16-bit word."""
    return ~_fold((~checksum & 0xFFFF) + (~old & 0xFFFF) + new) & 0xFFFF


def _checksum_of(frame: bytes) -> int:
    """Ones' complement sum over the TCP pseudo-header and segment of an Ethernet/IPv4 frame: 0 when its
    checksum is right."""
    ihl = (frame[14] & 0x0F) * 4
    total_len = struct.unpack_from(">H", frame, 16)[0]
    segment = frame[14 + ihl:14 + total_len]
    data = frame[26:34] + struct.pack(">BBH", 0, 6, len(segment)) + segment
    if len(data) % 2:
        data += b"\0"
    return ~_fold(sum(struct.unpack(f">{len(data) // 2}H", data))) & 0xFFFF


def _move_port(port: int, copy: int) -> int:
    if port < FIRST_CLIENT_PORT:
        return port
    return FIRST_CLIENT_PORT + (port - FIRST_CLIENT_PORT + copy * 7919) % (65536 - FIRST_CLIENT_PORT)


def _records(data: bytes) -> tuple[bytes, list[tuple[int, int, bytes]]]:
    """Header and (ts_sec, ts_frac, frame) of a little-endian Ethernet pcap."""
    magic, *_rest, linktype = struct.unpack_from("<IHHiIII", data)
    if magic not in (0xA1B2C3D4, 0xA1B23C4D) or linktype != 1:
        raise ValueError("the source must be a little-endian Ethernet pcap")
    out = []
    pos = 24
    while pos + 16 <= len(data):
        sec, frac, caplen, _ = struct.unpack_from("<IIII", data, pos)
        out.append((sec, frac, data[pos + 16:pos + 16 + caplen]))
        pos += 16 + caplen
    return data[:24], out


def _with_ports(frame: bytes, copy: int) -> bytes:
    """The frame with its TCP client port moved for this copy (IPv4 over Ethernet only)."""
    if copy == 0 or len(frame) < 34 or frame[12:14] != b"\x08\x00" or frame[23] != 6:
        return frame
    ihl = (frame[14] & 0x0F) * 4
    tcp = 14 + ihl
    if len(frame) < tcp + 18:
        return frame
    buf = bytearray(frame)
    sport, dport = struct.unpack_from(">HH", buf, tcp)
    checksum = struct.unpack_from(">H", buf, tcp + 16)[0]
    for offset, old in ((0, sport), (2, dport)):
        new = _move_port(old, copy)
        if new != old:
            struct.pack_into(">H", buf, tcp + offset, new)
            checksum = _adjust_checksum(checksum, old, new)
    struct.pack_into(">H", buf, tcp + 16, checksum)
    return bytes(buf)


def _handshakes(records: list[tuple[int, int, bytes]]) -> list[bytes]:
    """A SYN, SYN+ACK, ACK for every TCP connection the capture joins mid-stream, with the initial
    sequence numbers that lead to the first segment of each side, so both tools see whole connections
    (Suricata does not pick up a mid-stream flow that starts with the server talking)."""
    first: dict[tuple[tuple[str, int], tuple[str, int]], int] = {}
    syn_seen: set[frozenset[tuple[str, int]]] = set()
    order: list[frozenset[tuple[str, int]]] = []
    for _, _, frame in records:
        if len(frame) < 54 or frame[12:14] != b"\x08\x00" or frame[23] != 6:
            continue
        tcp = 14 + (frame[14] & 0x0F) * 4
        src = (".".join(map(str, frame[26:30])), struct.unpack_from(">H", frame, tcp)[0])
        dst = (".".join(map(str, frame[30:34])), struct.unpack_from(">H", frame, tcp + 2)[0])
        pair = frozenset((src, dst))
        if pair not in order:
            order.append(pair)
        if frame[tcp + 13] & SYN:
            syn_seen.add(pair)
        first.setdefault((src, dst), struct.unpack_from(">I", frame, tcp + 4)[0])
    frames = []
    for pair in order:
        if pair in syn_seen or len(pair) != 2:
            continue
        a, b = sorted(pair, key=lambda ep: ep[1])  # the server has the lower (well-known) port
        server, client = a, b
        if (client, server) not in first or (server, client) not in first:
            continue
        cisn, sisn = first[(client, server)] - 1, first[(server, client)] - 1
        frames.append(tcp_frame(client, server, cisn, 0, SYN, b""))
        frames.append(tcp_frame(server, client, sisn, cisn + 1, SYN | ACK, b""))
        frames.append(tcp_frame(client, server, cisn + 1, sisn + 1, ACK, b""))
    return frames


def build_capture(source: Path, out: Path, copies: int) -> None:
    """`copies` back-to-back copies of `source`, each later in time and on other client ports, each
    opened by the handshakes its mid-stream connections lack."""
    header, records = _records(source.read_bytes())
    handshakes = _handshakes(records)
    nanos = struct.unpack_from("<I", header)[0] == 0xA1B23C4D
    unit = 1 if nanos else 1000
    first = records[0][0] * 1_000_000_000 + records[0][1] * unit
    last = records[-1][0] * 1_000_000_000 + records[-1][1] * unit
    span = last - first + COPY_GAP_NS
    with out.open("wb") as f:
        f.write(header)
        for copy in range(copies):
            shift = copy * span
            s, ns = divmod(first + shift, 1_000_000_000)
            for frame in handshakes:
                data = _with_ports(frame, copy)
                f.write(struct.pack("<IIII", s, ns // unit, len(data), len(data)))
                f.write(data)
            for sec, frac, frame in records:
                ts = sec * 1_000_000_000 + frac * unit + shift
                s, ns = divmod(ts, 1_000_000_000)
                data = _with_ports(frame, copy)
                f.write(struct.pack("<IIII", s, ns // unit, len(data), len(data)))
                f.write(data)


# --- the two tools ----------------------------------------------------------------------------------


def time_zonegate(ir_json: str, capture: Path) -> tuple[float, int, dict[str, Any]]:
    """Seconds, PDUs and the report of one in-process replay (policy already loaded)."""
    start = time.perf_counter()
    report = _engine.replay_capture(ir_json, str(capture), principal=None, max_listed=0)
    elapsed = time.perf_counter() - start
    summary = {
        "requests": report.requests, "replies": report.replies, "allowed": report.allowed,
        "denied": report.denied, "by_function": dict(report.by_function), "flows": report.flows,
    }
    return elapsed, report.requests + report.replies, summary


def install_suricata() -> str | None:
    """Installs Suricata from bookworm-backports (root only); returns why not when it cannot."""
    if shutil.which("suricata"):
        return None
    if os.geteuid() != 0:
        return "suricata is not installed and this is not root (apt-get install -t bookworm-backports suricata)"
    try:
        BACKPORTS_LIST.write_text("deb http://deb.debian.org/debian bookworm-backports main\n")
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        for cmd in (
            ["apt-get", "update", "-qq"],
            ["apt-get", "install", "-y", "-qq", "-t", "bookworm-backports", "suricata"],
        ):
            done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
            if done.returncode != 0:
                return f"{' '.join(cmd)} failed: {done.stderr.strip()[-300:]}"
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"cannot install suricata: {exc}"
    finally:
        BACKPORTS_LIST.unlink(missing_ok=True)
        subprocess.run(["apt-get", "update", "-qq"], capture_output=True, timeout=900, check=False)
    return None if shutil.which("suricata") else "suricata is still not on PATH after the install"


def suricata_version() -> str:
    out = subprocess.run(["suricata", "-V"], capture_output=True, text=True, timeout=60).stdout
    return out.strip()


def time_suricata(capture: Path, rules: Path, workdir: Path) -> tuple[float, int]:
    """Seconds for one Suricata run over the capture, and the alerts it raised."""
    logdir = Path(tempfile.mkdtemp(prefix=f"suricata-{capture.stem}-", dir=workdir))
    cmd = [
        "suricata", "-r", str(capture), "-S", str(rules), "-k", "none", "--runmode", "single",
        "-l", str(logdir),
        "--set", "app-layer.protocols.modbus.enabled=yes",
        "--set", "stream.reassembly.depth=0",
        "--set", "stream.midstream=true",
        # Alerts go to fast.log only: no per-transaction JSON logging to slow Suricata down.
        "--set", "outputs.1.eve-log.enabled=no",
    ]
    start = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=SURICATA_TIMEOUT_S)
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"suricata failed ({done.returncode}): {done.stderr.strip()[-500:]}")
    fast = logdir / "fast.log"
    alerts = sum(1 for _ in fast.open()) if fast.exists() else 0
    return elapsed, alerts


# --- driver -----------------------------------------------------------------------------------------


def steady_rate(pdus_big: int, t_big: float, pdus_one: int, t_one: float) -> float:
    """PDUs per second with the fixed start-up cost (the single-copy run) taken out."""
    if t_big <= t_one:
        return pdus_big / t_big
    return (pdus_big - pdus_one) / (t_big - t_one)


def best_of(repeat: int, fn: Any, *args: Any) -> Any:
    """The fastest of `repeat` runs (the machine is shared: the minimum is the least disturbed)."""
    return min((fn(*args) for _ in range(max(1, repeat))), key=lambda r: r[0])


def run(size_mb: float, install: bool, smoke: bool, source: Path, repeat: int = 2) -> dict[str, Any]:
    if not source.is_file():
        raise FileNotFoundError(f"source capture {source} is missing")
    copies = 2 if smoke else max(2, math.ceil(size_mb * 1_000_000 / source.stat().st_size))
    result: dict[str, Any] = {"source": str(source), "copies": copies, "timed": not smoke}
    with tempfile.TemporaryDirectory(prefix="zonegate-bench-replay-") as tmp:
        work = Path(tmp)
        policy_path = work / "policy.yaml"
        policy_path.write_text(POLICY)
        ir_json = load([policy_path]).ir_json()
        one, big = work / "one.pcap", work / "big.pcap"
        build_capture(source, one, 1)
        build_capture(source, big, copies)
        result["capture_bytes"] = big.stat().st_size

        t_one, pdus_one, _ = best_of(repeat, time_zonegate, ir_json, one)
        t_big, pdus_big, summary = best_of(repeat, time_zonegate, ir_json, big)
        if summary["flows"] < copies or pdus_big != copies * pdus_one:
            raise AssertionError(f"each copy must replay alike: {pdus_one} PDUs x {copies} != {pdus_big}")
        result["pdus"] = pdus_big
        result["zonegate"] = summary
        if not smoke:
            result["zonegate_seconds"] = round(t_big, 3)
            result["zonegate_pdus_per_s"] = round(steady_rate(pdus_big, t_big, pdus_one, t_one))

        why_not = install_suricata() if install else (None if shutil.which("suricata") else "not installed")
        if why_not is not None:
            result["suricata"] = None
            result["suricata_pdus_per_s"] = None
            result["suricata_missing"] = why_not
            return result
        rules = work / "zonegate-equivalent.rules"
        rules.write_text(suricata_rules())
        result["suricata"] = suricata_version()
        result["suricata_rules"] = len(rules.read_text().splitlines())
        s_one, alerts_one = best_of(repeat, time_suricata, one, rules, work)
        s_big, alerts_big = best_of(repeat, time_suricata, big, rules, work)
        result["suricata_alerts"] = alerts_big
        result["zonegate_denied"] = summary["denied"]
        if alerts_big != summary["denied"]:
            result["rules_disagree"] = f"suricata raised {alerts_big} alerts, replay denied {summary['denied']}"
        if not smoke:
            result["suricata_seconds"] = round(s_big, 3)
            result["suricata_pdus_per_s"] = round(steady_rate(pdus_big, s_big, pdus_one, s_one))
            result["ratio"] = round(result["zonegate_pdus_per_s"] / max(1, result["suricata_pdus_per_s"]), 2)
        else:
            result["suricata_pdus_per_s"] = None
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--size-mb", type=float, default=100.0, help="size of the repeated capture (default 100)")
    parser.add_argument("--no-install", action="store_true", help="never install Suricata")
    parser.add_argument("--smoke", action="store_true", help="small input, timing off (for the test suite)")
    parser.add_argument("--source", type=Path, default=SOURCE, help="capture to repeat")
    parser.add_argument("--repeat", type=int, default=2, help="runs per measurement, fastest kept (default 2)")
    args = parser.parse_args(argv)
    result = run(args.size_mb, not args.no_install and not args.smoke, args.smoke, args.source, args.repeat)
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"capture: {args.source.name} x {result['copies']} = {result['capture_bytes'] / 1e6:.1f} MB, "
          f"{result['pdus']} Modbus PDUs")
    if not result["timed"]:
        print("smoke run: timing off")
    else:
        print(f"zonegate replay: {result['zonegate_pdus_per_s']:>12,} PDUs/s ({result['zonegate_seconds']} s)")
    if result["suricata"] is None:
        print(f"suricata: not measured ({result['suricata_missing']})")
    elif result["timed"]:
        print(f"suricata:        {result['suricata_pdus_per_s']:>12,} PDUs/s ({result['suricata_seconds']} s, "
              f"{result['suricata']}, {result['suricata_rules']} rules)")
        verdict = "meets" if result["ratio"] >= TARGET_RATIO else "misses"
        print(f"ratio zonegate / suricata: {result['ratio']}x ({verdict} the {TARGET_RATIO}x target)")
    if result.get("rules_disagree"):
        print(f"warning: {result['rules_disagree']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
