"""benchmarks/bench_relay.py runs as a test with timing off: the harness, the target, zonegate as a relay
and the report keep working, so the benchmark cannot rot. Speed is judged only by running it for real."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.integration.relays import require_relay

ROOT = Path(__file__).resolve().parents[2]


def test_bench_relay_quick_run_reports_every_figure() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench_relay.py"), "--quick", "--json",
         "--systems", "direct,zonegate", "--clients", "1,16", "--idle", "zonegate"],
        cwd=ROOT, capture_output=True, text=True, timeout=180,
    )
    assert result.returncode == 0, result.stderr
    figures = json.loads(result.stdout)
    for key in ("direct_rps_16", "zonegate_rps_1", "zonegate_rps_16", "zonegate_p99_2k_us",
                "zonegate_cpu_us_per_request_16", "zonegate_idle100_rss_mb"):
        assert figures.get(key, 0) > 0, key
    assert not [key for key in figures if "errors" in key], figures
    assert figures["zonegate_rps_2k"] > 0  # the fixed-rate run got replies (its rate is judged only for real)


def test_bench_relay_quick_run_measures_the_python_relay_beside_the_rust_one() -> None:
    require_relay("rust")
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench_relay.py"), "--quick", "--json", "--modbus-only",
         "--systems", "zonegate,zonegate-python", "--clients", "1,64", "--idle", "zonegate-python"],
        cwd=ROOT, capture_output=True, text=True, timeout=180,
    )
    assert result.returncode == 0, result.stderr
    figures = json.loads(result.stdout)
    for key in ("zonegate_rps_64", "zonegate_python_rps_1", "zonegate_python_rps_64", "zonegate_python_p99_2k_us",
                "zonegate_python_cpu_us_per_request_64", "zonegate_python_idle100_rss_mb"):
        assert figures.get(key, 0) > 0, key
    assert not [key for key in figures if "errors" in key], figures
