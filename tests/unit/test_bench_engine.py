"""The engine benchmark runs as a test with timing off, so it cannot rot between benchmark runs."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.conftest import ROOT

BENCH = ROOT / "benchmarks" / "bench_engine.py"


def test_bench_engine_runs_and_reports_its_keys() -> None:
    done = subprocess.run(
        [sys.executable, str(BENCH), "--json", "--iterations", "1", "--compile-rules", "50", "--min-seconds", "0"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    for key in ("per_frame_per_s", "batch_per_s", "reference_per_s", "batch_vs_reference", "compile_s", "compile_rss_mb"):
        assert isinstance(result[key], float), key
        assert result[key] >= 0, key
    # the benchmark decided real frames from the captures and the synthetic mix, and they agreed
    assert result["capture_frames"] > 0
    assert result["frames"] == result["capture_frames"] + result["synthetic_frames"]
    assert sum(result["verdicts"].values()) == result["frames"]
    assert result["verdicts"]["allow"] > 0 and result["verdicts"]["deny"] > 0
    # CIP in the same run: messages from the capture and Multiple Service Packets, all agreeing
    for key in ("cip_per_frame_per_s", "cip_reference_per_s", "cip_per_frame_vs_reference"):
        assert isinstance(result[key], float) and result[key] >= 0, key
    assert result["cip_capture_messages"] > 0 and result["cip_multiple_service_packets"] > 0
    assert sum(result["cip_verdicts"].values()) == result["cip_messages"]


def test_bench_engine_refuses_nonsense_arguments() -> None:
    done = subprocess.run(
        [sys.executable, str(BENCH), "--iterations", "0"], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 2
    assert "--iterations" in done.stderr
