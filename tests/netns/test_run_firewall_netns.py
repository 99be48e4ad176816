"""`zonegate run` puts the policy's nftables table in force at start and on reload, together with the
engine: a reload whose ruleset cannot be built changes neither the table nor the engine; a good reload
changes both.
"""

from __future__ import annotations

import shutil
import signal
from pathlib import Path

import pytest

from tests.conftest import require
from tests.netns import netns_topology as topo
from tests.netns.netns_topology import PLC, SCADA, SCRAPER, Topology
from tests.netns.test_transparent_conduit_netns import (
    _POLICY, LISTENER_PORT, METRICS_PORT, Service, _nft_usable, _zonegate,
)

pytestmark = pytest.mark.netns


def _policy_lines(net: Topology) -> list[str]:
    """The box's `zonegate_policy_loaded` and reload counter lines, scraped inside its namespace."""
    import urllib.request

    def scrape() -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{METRICS_PORT}/metrics", timeout=2) as reply:
            return str(reply.read().decode())
    return sorted(line for line in net.gw.call(scrape).splitlines()
                  if line.startswith(("zonegate_policy_loaded{", "zonegate_policy_reloads_total{")))


def _diff(net: Topology, policy: Path) -> int:
    return _zonegate(net.gw_ns, "nft", "diff", "-c", str(policy)).returncode


def test_run_applies_the_table_and_reloads_it_with_the_engine_or_not_at_all(tmp_path: Path) -> None:
    require(topo.netns_available(), "network namespace tests need root and iproute2")
    require(shutil.which("nft") is not None and _nft_usable(), "needs libnftables and python3-nftables")
    net = Topology()
    service: Service | None = None
    try:
        net.build()
        fields = dict(cell_if=net.gw_cell_if, l3_if=net.gw_l3_if, plc=PLC, scada=SCADA, port=LISTENER_PORT,
                      metrics=METRICS_PORT, audit=tmp_path / "audit.jsonl")
        first = tmp_path / "first.yaml"
        first.write_text(_POLICY.format(**fields))
        live = tmp_path / "policy.yaml"
        live.write_text(first.read_text())
        assert _diff(net, first) == 1  # no table before zonegate starts

        service = Service(net.gw_ns, live)
        service.wait_for("ready")
        assert _diff(net, first) == 0  # run put exactly the policy's table in force
        before = _policy_lines(net)
        loaded = [line for line in before if "policy_loaded" in line]
        assert len(loaded) == 1 and loaded[0].endswith(" 1.0")

        # A policy the loader accepts (with a warning) but whose table cannot be rendered: the device has
        # a DNS name. Its rules differ too, so an engine swap would show in the policy hash.
        broken = first.read_text().replace(f"host: {PLC}", "host: plc.cell.invalid").replace(
            "read_holding_registers]", "read_holding_registers, write_single_register]")
        live.write_text(broken)
        service.process.send_signal(signal.SIGHUP)
        service.wait_for("reload failed")
        assert _diff(net, first) == 0
        after_failure = _policy_lines(net)
        assert [line for line in after_failure if "policy_loaded" in line] == loaded
        assert any('result="failed"} 1.0' in line for line in after_failure)

        # A good policy that opens the listener to one more source: table and engine change together.
        second = first.read_text().replace(f"allow_from: [{SCADA}/32]", f"allow_from: [{SCADA}/32, {SCRAPER}/32]")
        live.write_text(second)
        service.process.send_signal(signal.SIGHUP)
        service.wait_for("reloaded:")
        assert _diff(net, live) == 0
        assert _diff(net, first) == 1
        hashes = [line for line in _policy_lines(net) if "policy_loaded" in line]
        assert len(hashes) == 1 and hashes != loaded
    finally:
        if service is not None:
            service.stop()
        net.close()
