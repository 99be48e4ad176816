"""The OPC UA benchmark's harness, run small with its stage probes: it must not rot between measurements.
Nothing here judges speed (that is benchmarks/RESULTS.md's business), only that every stage is timed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_opcua import CLIENT_STAGES, SERVER_STAGES, Group  # noqa: E402


def test_register_phases_cover_the_period_once_each_and_scatter_over_addresses() -> None:
    for count, period in ((1000, 1000), (1000, 100), (500, 1000), (7, 100)):
        group = Group("d", count, period)
        phases = [group.phase_ms(i) for i in range(count)]
        assert sorted(phases) == [i * period // count for i in range(count)]
        # not in address order, so no read of an address range lines up with the changes
        assert phases != sorted(phases)


def test_quick_run_times_every_stage_for_both_servers_with_the_same_client() -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench_opcua.py"), "--quick", "--stages", "--json",
         "--publish-requests", "3", "--client-gc", "tuned"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout)
    assert result["client"] == {"publish_ms": 20, "publish_requests": 3, "gc": "tuned"}
    for name, stages in (("zonegate", (*SERVER_STAGES, *CLIENT_STAGES)), ("asyncua_alone", ("written", "publish",
                                                                                            "sent", *CLIENT_STAGES))):
        measured = result[name]
        assert measured["updates_per_s"] > 0
        timed = measured["stages"]["since_change_ms"]
        assert list(timed) == list(stages)
        for stage in stages:
            assert all(timed[stage][f"{scan}_p99"] is not None for scan in ("fast", "slow")), (name, stage)
        assert measured["stages"]["server"]["responses"] > 0
        assert measured["stages"]["server"]["loop_lag_ms"]["n"] > 0


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
