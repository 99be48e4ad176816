"""The replay benchmark runs as a test on a small input with timing off, so it cannot rot."""

from __future__ import annotations

import json
import shutil
import struct
import subprocess
import sys
from pathlib import Path

from tests.conftest import PCAPS, ROOT, require

BENCH = ROOT / "benchmarks" / "bench_replay.py"
sys.path.insert(0, str(ROOT))

from benchmarks.bench_replay import _adjust_checksum, _checksum_of, build_capture  # noqa: E402


def test_bench_replay_smoke_reports_both_tools_or_says_why_not() -> None:
    require((PCAPS / "zeek" / "modbusBig.pcap").is_file(), "shared captures are missing")
    done = subprocess.run(
        [sys.executable, str(BENCH), "--smoke", "--json"],
        capture_output=True, text=True, timeout=300, check=False, cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["timed"] is False and result["copies"] == 2
    # Two copies of modbusBig: 2774 requests and 2775 replies each, every FC 5 denied by the policy.
    assert result["pdus"] == 2 * (2774 + 2775)
    assert (result["zonegate"]["denied"], result["zonegate"]["flows"]) == (2 * 1387, 2)
    if shutil.which("suricata"):
        assert result["suricata_alerts"] == result["zonegate_denied"], "the rule sets are equivalent"
    else:
        assert result["suricata"] is None and result["suricata_missing"]


def test_copies_are_new_connections_with_valid_checksums(tmp_path: Path) -> None:
    require((PCAPS / "zeek" / "modbusSmall.pcap").is_file(), "shared captures are missing")
    out = tmp_path / "three.pcap"
    build_capture(PCAPS / "zeek" / "modbusSmall.pcap", out, 3)
    data = out.read_bytes()
    pos, ports, times, valid = 24, set(), [], []
    while pos < len(data):
        sec, frac, caplen, _ = struct.unpack_from("<IIII", data, pos)
        frame = data[pos + 16:pos + 16 + caplen]
        pos += 16 + caplen
        times.append((sec, frac))
        if frame[12:14] == b"\x08\x00" and frame[23] == 6:
            tcp = 14 + (frame[14] & 0x0F) * 4
            ports.add(struct.unpack_from(">H", frame, tcp)[0])
            valid.append(_checksum_of(frame) == 0)
    assert times == sorted(times), "copies follow each other in time"
    assert len(ports) == 3 * 16 + 1, "16 client ports per copy, moved per copy, and 502"
    # The source was captured on the sending host (checksum offload): some of its checksums are wrong.
    # Moving ports keeps every checksum exactly as right or wrong as the original's.
    per_copy = len(valid) // 3
    assert valid[:per_copy] == valid[per_copy:2 * per_copy] == valid[2 * per_copy:]


def test_incremental_checksum_update_matches_a_recomputation() -> None:
    words = [0x4500, 0x0073, 0x0000, 0x4000, 0x4011, 0xC0A8, 0x0001, 0xC0A8, 0x00C7]
    def full(ws: list[int]) -> int:
        total = sum(ws)
        while total >> 16:
            total = (total & 0xFFFF) + (total >> 16)
        return ~total & 0xFFFF
    before = full(words)
    changed = list(words)
    changed[3] = 0xBEEF
    assert _adjust_checksum(before, words[3], 0xBEEF) == full(changed)
