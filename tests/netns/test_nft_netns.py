"""The `inet zonegate` table in a real kernel, proven with packets across three network namespaces."""

from __future__ import annotations

import asyncio
import ipaddress
import json
import os
import pickle
import select
import shutil
import signal
import subprocess
import sys
from collections.abc import Awaitable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ROOT, require
from tests.netns import netns_topology as topo
from tests.netns.netns_topology import CELL_GW, FLOODER, L3_GW, MASTER, PLC, SCADA, SCRAPER, Topology
from zonegate.controlplane.nftables.model import (
    FirewallSpec, Flow, Listener, Metrics, Rate, Upstream, Zone, networks)

pytestmark = pytest.mark.netns

PLC_OTHER_PORTS = (22, 80, 102, 123, 443, 4840, 5020, 44818)
CONDUIT, ZONE_LISTENER, METRICS, UNLISTED = 8802, 8502, 9802, 2222


def _nft_usable() -> bool:
    try:
        import nftables  # type: ignore[import-untyped,unused-ignore]

        nftables.Nftables()
    except (ImportError, OSError):
        return False
    return True


@pytest.fixture(scope="module")
def net() -> Iterator[Topology]:
    require(topo.netns_available(), "network namespace tests need root and iproute2")
    require(shutil.which("nft") is not None and _nft_usable(), "needs libnftables and python3-nftables")
    net = Topology()
    try:
        net.build()
        net.cell.run(_start_cell())
        net.gw.run(_start_gw())
        net.plc = net.cell.run(topo.start_plc(PLC, 502))
        yield net
    finally:
        net.close()


async def _start_cell() -> None:
    for port in PLC_OTHER_PORTS:
        await topo.greeter(PLC, port)
    await topo.greeter(MASTER, 80)
    await topo.udp_echo(PLC, 123)


async def _start_gw() -> None:
    """The box's ports, on both of its addresses (inside its own namespace): the table decides who gets in."""
    for address in (L3_GW, CELL_GW):
        await topo.relay(address, CONDUIT, (PLC, 502))
        for port in (ZONE_LISTENER, METRICS, UNLISTED):
            await topo.greeter(address, port)


def _spec(net: Topology, **changes: Any) -> FirewallSpec:
    fields: dict[str, Any] = dict(
        zones=(Zone("cell-a", net.gw_cell_if, ipaddress.ip_network("192.168.10.0/24")),
               Zone("level3", net.gw_l3_if, ipaddress.ip_network("10.3.0.0/24"))),
        listeners=(Listener("l3-modbus-security", CONDUIT, networks("10.3.0.0/24"), "modbus_tls"),
                   Listener("zone-modbus", ZONE_LISTENER, networks("192.168.10.0/24"))),
        upstreams=(Upstream("press-plc", ipaddress.ip_network(PLC), 502),),
        flows=(Flow("ntp", networks(SCADA), networks(PLC), "udp", 123),),
        metrics=Metrics(METRICS, networks(SCRAPER)),
        connection_rate=Rate(20),
    )
    fields.update(changes)
    return FirewallSpec(**fields)


def _metrics_for(*sources: str) -> Metrics:
    return Metrics(METRICS, networks(list(sources)))


@pytest.fixture
def applied(net: Topology) -> Iterator[Any]:
    from zonegate.controlplane.nftables import apply, remove, render

    ruleset = render(_spec(net))
    handle = net.gw.call(apply, ruleset)
    try:
        yield handle
    finally:
        net.gw.call(remove)


async def _gather(*probes: Awaitable[bool]) -> list[bool]:
    return list(await asyncio.gather(*probes))


def _all(net: Topology, probes: dict[str, Awaitable[bool]]) -> dict[str, bool]:
    """Run named probes ("side:what") on each side's namespace, concurrently within a side; each probe
    ends within its own timeout."""
    async def gather(items: list[tuple[str, Awaitable[bool]]]) -> dict[str, bool]:
        results = await asyncio.gather(*(c for _, c in items))
        return {name: bool(r) for (name, _), r in zip(items, results)}
    by_side: dict[str, list[tuple[str, Awaitable[bool]]]] = {}
    for name, probe in probes.items():
        by_side.setdefault(name.split(":")[0], []).append((name, probe))
    out: dict[str, bool] = {}
    for side, items in by_side.items():
        out.update(getattr(net, side).run(gather(items)))
    return out


def test_without_the_table_the_box_forwards_everything(net: Topology) -> None:
    """The control: with no ruleset the namespaces route l3 straight to the PLC, so a closed path below
    is the table's doing."""
    from zonegate.controlplane.nftables import current_text

    assert net.gw.call(current_text) is None
    seen = _all(net, {
        "l3:plc502": topo.connects(PLC, 502, SCADA, greeting=False),
        "l3:plc80": topo.connects(PLC, 80, SCADA),
        "l3:metrics": topo.connects(L3_GW, METRICS, SCADA),
    })
    assert seen == {"l3:plc502": True, "l3:plc80": True, "l3:metrics": True}


def test_no_direct_path_from_level3_to_the_plc_on_any_port(net: Topology, applied: Any) -> None:
    from zonegate.controlplane.nftables.apply import drop_counts

    probes: dict[str, Awaitable[bool]] = {"l3:plc502": topo.connects(PLC, 502, SCADA, greeting=False)}
    for port in PLC_OTHER_PORTS:
        if port != 123:
            probes[f"l3:plc{port}"] = topo.connects(PLC, port, SCADA)
    probes["l3:tcp123"] = topo.connects(PLC, 123, SCADA)
    probes["cell:up-to-l3"] = topo.connects(SCADA, 80, MASTER)
    assert not any(_all(net, probes).values())
    counts = net.gw.call(drop_counts)
    assert counts["drop_zone_level3_to_cell_a"] >= len(PLC_OTHER_PORTS)


def test_declared_flow_passes_and_nothing_beside_it(net: Topology, applied: Any) -> None:
    seen = net.l3.run(_gather(
        topo.udp_answers(PLC, 123, SCADA),
        topo.udp_answers(PLC, 123, SCRAPER),
    ))
    assert seen == [True, False]


def test_conduit_on_the_box_reaches_the_plc(net: Topology, applied: Any) -> None:
    plc = net.plc
    assert plc is not None
    before = len(plc.requests)
    values = net.l3.run(topo.read_holding(L3_GW, CONDUIT, SCADA, 10, 3))
    assert values == [10, 11, 12]
    assert plc.requests[before:] == [3]


def test_listener_ports_open_only_to_the_sources_the_policy_names(net: Topology, applied: Any) -> None:
    seen = _all(net, {
        "l3:conduit": topo.connects(L3_GW, CONDUIT, SCADA, greeting=False),
        "l3:zone-listener": topo.connects(L3_GW, ZONE_LISTENER, SCADA),
        "l3:unlisted": topo.connects(L3_GW, UNLISTED, SCADA),
        "cell:zone-listener": topo.connects(CELL_GW, ZONE_LISTENER, MASTER),
        "cell:conduit": topo.connects(CELL_GW, CONDUIT, MASTER, greeting=False),
        "cell:conduit-via-l3-address": topo.connects(L3_GW, CONDUIT, MASTER, greeting=False),
        "cell:unlisted": topo.connects(CELL_GW, UNLISTED, MASTER),
    })
    assert seen == {
        "l3:conduit": True, "l3:zone-listener": False, "l3:unlisted": False,
        "cell:zone-listener": True, "cell:conduit": False, "cell:conduit-via-l3-address": False,
        "cell:unlisted": False,
    }


def test_metrics_port_answers_the_scraper_and_nobody_else(net: Topology, applied: Any) -> None:
    seen = _all(net, {
        "l3:scraper": topo.connects(L3_GW, METRICS, SCRAPER),
        "l3:scada": topo.connects(L3_GW, METRICS, SCADA),
        "cell:master": topo.connects(CELL_GW, METRICS, MASTER),
    })
    assert seen == {"l3:scraper": True, "l3:scada": False, "cell:master": False}


def test_box_dials_only_its_upstreams_on_their_ports(net: Topology, applied: Any) -> None:
    seen = net.gw.run(_gather(
        topo.connects(PLC, 502, greeting=False),
        topo.connects(PLC, 80),
        topo.connects(MASTER, 80),
    ))
    assert seen == [True, False, False]


def test_connection_flood_is_shed_per_source(net: Topology, applied: Any) -> None:
    """200 SYNs at once from one l3 address: about the meter's burst (20) get through, plus 20 a second;
    a second l3 client keeps connecting meanwhile."""
    from zonegate.controlplane.nftables.apply import drop_counts

    async def scene() -> tuple[list[bool], list[bool]]:
        flood = asyncio.gather(*(topo.connects(L3_GW, CONDUIT, FLOODER, greeting=False) for _ in range(200)))
        polls = []
        for _ in range(5):
            polls.append(await topo.connects(L3_GW, CONDUIT, SCADA, greeting=False))
        return list(await flood), polls

    flood, polls = net.l3.run(scene(), timeout=15)
    assert polls == [True] * 5
    assert 1 <= sum(flood) <= 100, sum(flood)
    assert net.gw.call(drop_counts)["drop_flood_l3_modbus_security"] >= 200 - sum(flood)


def test_kernel_lists_exactly_the_rendered_text(net: Topology, applied: Any) -> None:
    from zonegate.controlplane.nftables import current_text, render

    assert net.gw.call(current_text) == render(_spec(net)).text


def test_apply_and_remove_touch_no_other_table(net: Topology) -> None:
    from zonegate.controlplane.nftables import apply, remove, render
    from zonegate.controlplane.nftables.apply import _run_text

    others = "table ip keepme {\n\tchain c {\n\t\ttcp dport 1 counter accept\n\t}\n}\ntable inet other {\n}\n"
    net.gw.call(_run_text, others, "test setup")
    try:
        for _ in range(2):
            net.gw.call(apply, render(_spec(net)))
        assert net.gw.call(remove) is True
        assert net.gw.call(remove) is False
        listed = net.gw.call(_run_text, "list ruleset", "test")
        assert "table ip keepme" in listed and "tcp dport 1" in listed and "table inet other" in listed
        assert "zonegate" not in listed
    finally:
        net.gw.call(_run_text, "delete table ip keepme\ndelete table inet other\n", "test teardown")


def test_refused_ruleset_leaves_the_previous_table_in_force(net: Topology, applied: Any) -> None:
    from zonegate.controlplane.nftables import NftError, Ruleset, apply, current_text, render
    from zonegate.controlplane.nftables.render import FAMILY, TABLE

    good = render(_spec(net))
    wider = render(_spec(net, metrics=_metrics_for(SCRAPER, SCADA)))
    broken_rule = {"rule": {"family": FAMILY, "table": TABLE, "chain": "input",
                            "expr": [{"jump": {"target": "no_such_chain"}}]}}
    broken = Ruleset(wider.text, (*wider.objects, broken_rule))
    with pytest.raises(NftError) as refused:
        net.gw.call(apply, broken)
    assert refused.value.stage == "apply"
    assert net.gw.call(current_text) == good.text
    assert net.l3.run(topo.connects(L3_GW, METRICS, SCADA)) is False


def test_rollback_restores_the_table_that_was_in_force(net: Topology, applied: Any) -> None:
    from zonegate.controlplane.nftables import apply, current_text, render

    first = render(_spec(net))
    second = net.gw.call(apply, render(_spec(net, metrics=_metrics_for(SCRAPER, SCADA))))
    assert net.l3.run(topo.connects(L3_GW, METRICS, SCADA)) is True
    net.gw.call(second.rollback)
    assert net.gw.call(current_text) == first.text
    assert net.l3.run(topo.connects(L3_GW, METRICS, SCADA)) is False


def test_rollback_of_a_first_apply_removes_the_table(net: Topology) -> None:
    from zonegate.controlplane.nftables import apply, current_text, render

    handle = net.gw.call(apply, render(_spec(net)))
    assert handle.previous is None
    net.gw.call(handle.rollback)
    assert net.gw.call(current_text) is None


def test_check_is_a_dry_run(net: Topology) -> None:
    from zonegate.controlplane.nftables import NftError, Ruleset, check, current_text, render

    good = render(_spec(net))
    net.gw.call(check, good)
    assert net.gw.call(current_text) is None
    bad = Ruleset(good.text, (*good.objects, {"rule": {"family": "inet", "table": "zonegate", "chain": "nope",
                                                      "expr": [{"accept": None}]}}))
    with pytest.raises(NftError) as refused:
        net.gw.call(check, bad)
    assert refused.value.stage == "check"


_HOLDER = """
import pickle, sys
from zonegate.controlplane.nftables import apply, render
apply(render(pickle.load(open(sys.argv[1], "rb"))))
print("applied", flush=True)
sys.stdin.read()
"""


def test_kill_9_leaves_the_forward_path_closed(net: Topology, tmp_path: Path) -> None:
    """A process that applied the table and dies by SIGKILL takes nothing with it."""
    from zonegate.controlplane.nftables import current_text, remove, render

    spec = _spec(net)
    (tmp_path / "spec.pickle").write_bytes(pickle.dumps(spec))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    holder = subprocess.Popen(["ip", "netns", "exec", net.gw_ns, sys.executable, "-c", _HOLDER,
                               str(tmp_path / "spec.pickle")],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    try:
        assert holder.stdout is not None
        ready, _, _ = select.select([holder.stdout], [], [], 20)
        assert ready, "the holder did not apply the table within 20 s"
        assert holder.stdout.readline() == b"applied\n", holder.stderr.read() if holder.stderr else b""
        holder.send_signal(signal.SIGKILL)
        assert holder.wait(10) == -signal.SIGKILL
        assert net.gw.call(current_text) == render(spec).text
        seen = _all(net, {"l3:plc502": topo.connects(PLC, 502, SCADA, greeting=False),
                          "l3:plc80": topo.connects(PLC, 80, SCADA)})
        assert seen == {"l3:plc502": False, "l3:plc80": False}
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait(10)
        net.gw.call(remove)


_POLICY = """\
version: 1
zones:
  cell-a: {{interface: {cell_if}, subnet: 192.168.10.0/24}}
  level3: {{interface: {l3_if}, subnet: 10.3.0.0/24}}
devices:
  press-plc:
    zone: cell-a
    modbus: {{host: {plc}, port: 502, units: [1]}}
principals:
  operator: {{tls_role: Operator}}
rules:
  - id: operator-read
    principal: operator
    device: press-plc
    allow:
      - functions: [read_holding_registers]
        holding: 0-99
listeners:
  - name: l3-modbus-security
    protocol: modbus_tls
    bind: {l3_gw}:{conduit}
    devices: [press-plc]
    tls: {{cert: server.crt, key: server.key, ca: ca.crt}}
metrics: {{bind: {l3_gw}:{metrics}, allow_from: [{scraper}/32]}}
"""


def _zonegate(net: Topology, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", "netns", "exec", net.gw_ns, sys.executable, "-m", "zonegate.cli", "nft", *args],
                          capture_output=True, text=True, timeout=60, env={**os.environ, "PYTHONPATH": str(ROOT)})


def test_nft_commands_drive_the_kernel_from_a_policy_file(net: Topology, tmp_path: Path) -> None:
    from zonegate.controlplane.nftables import current_text

    policy = tmp_path / "policy.yaml"
    policy.write_text(_POLICY.format(l3_gw=L3_GW, cell_if=net.gw_cell_if, l3_if=net.gw_l3_if, plc=PLC,
                                     conduit=CONDUIT, metrics=METRICS, scraper=SCRAPER))
    try:
        rendered = _zonegate(net, "render", "-c", str(policy))
        assert rendered.returncode == 0, rendered.stderr
        as_json = _zonegate(net, "render", "--json", "-c", str(policy))
        assert json.loads(as_json.stdout)["nftables"][1] == {"table": {"family": "inet", "name": "zonegate"}}

        checked = _zonegate(net, "check", "-c", str(policy))
        assert checked.returncode == 0, checked.stderr
        assert net.gw.call(current_text) is None

        before = _zonegate(net, "diff", "-c", str(policy))
        assert before.returncode == 1 and before.stdout.startswith("--- kernel: (none)")

        done = _zonegate(net, "apply", "-c", str(policy))
        assert done.returncode == 0, done.stderr
        assert net.gw.call(current_text) == rendered.stdout
        after = _zonegate(net, "diff", "-c", str(policy))
        assert (after.returncode, after.stdout) == (0, "")
        seen = _all(net, {"l3:plc502": topo.connects(PLC, 502, SCADA, greeting=False),
                          "l3:conduit": topo.connects(L3_GW, CONDUIT, SCADA, greeting=False),
                          "l3:metrics-scraper": topo.connects(L3_GW, METRICS, SCRAPER),
                          "l3:metrics-scada": topo.connects(L3_GW, METRICS, SCADA)})
        assert seen == {"l3:plc502": False, "l3:conduit": True, "l3:metrics-scraper": True,
                        "l3:metrics-scada": False}

        broken = tmp_path / "broken.yaml"
        broken.write_text(policy.read_text().replace("port: 502", "port: 0"))
        refused = _zonegate(net, "apply", "-c", str(broken))
        assert refused.returncode == 2 and "broken.yaml" in refused.stderr
        assert net.gw.call(current_text) == rendered.stdout

        removed = _zonegate(net, "remove")
        assert removed.returncode == 0, removed.stderr
        assert net.gw.call(current_text) is None
    finally:
        from zonegate.controlplane.nftables import remove

        net.gw.call(remove)


def test_drops_are_logged_to_nflog_with_the_rule_in_the_prefix_and_rate_limited(net: Topology) -> None:
    """30 SYNs to the PLC from l3 are all counted; the log sees at most the burst plus the rate."""
    from zonegate.controlplane.nftables import apply, remove, render
    from zonegate.controlplane.nftables.apply import drop_counts

    log = net.gw.call(topo.NflogGroup, 5)
    try:
        net.gw.call(apply, render(_spec(net, log_group=5, log_rate=Rate(2))))
        probes: dict[str, Awaitable[bool]] = {f"l3:plc{i}": topo.connects(PLC, 1000 + i, SCADA) for i in range(30)}
        assert not any(_all(net, probes).values())
        prefixes = log.prefixes()
        assert net.gw.call(drop_counts)["drop_zone_level3_to_cell_a"] == 30
        assert all(p.startswith("zonegate drop ") for p in prefixes)
        ours = [p for p in prefixes if p == "zonegate drop level3->cell-a: "]
        assert 1 <= len(ours) <= 5 + 2 * 2, prefixes  # burst 5, then 2/s over the probes' < 2 s
    finally:
        log.close()
        net.gw.call(remove)


def _nft_in(netns: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", "netns", "exec", netns, "nft", *args], capture_output=True, text=True,
                          timeout=topo.STEP_TIMEOUT)


def test_saved_script_checks_and_loads_at_boot_into_the_table_apply_makes(net: Topology, applied: Any,
                                                                          tmp_path: Path) -> None:
    """What the boot unit runs (`nft -f` on the saved script), in a namespace as fresh as a booting box,
    gives the very table `apply` put in `gw`; loading it again over itself replaces it whole."""
    from zonegate.controlplane.nftables import current_text, render

    script = tmp_path / "nftables.nft"
    script.write_text(render(_spec(net)).script("test policy"))
    fresh = f"zg-boot-{net.suffix}"
    subprocess.run(["ip", "netns", "add", fresh], check=True, capture_output=True, timeout=topo.STEP_TIMEOUT)
    try:
        checked = _nft_in(fresh, "-c", "-f", str(script))
        assert checked.returncode == 0, checked.stderr
        assert "zonegate" not in _nft_in(fresh, "list", "tables").stdout
        for _ in range(2):
            loaded = _nft_in(fresh, "-f", str(script))
            assert loaded.returncode == 0, loaded.stderr
        listed = _nft_in(fresh, "-s", "list", "table", "inet", "zonegate")
        assert listed.stdout == net.gw.call(current_text)
    finally:
        subprocess.run(["ip", "netns", "del", fresh], capture_output=True, timeout=topo.STEP_TIMEOUT)


def test_nft_save_command_writes_what_the_boot_unit_loads(net: Topology, tmp_path: Path) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text(_POLICY.format(l3_gw=L3_GW, cell_if=net.gw_cell_if, l3_if=net.gw_l3_if, plc=PLC,
                                     conduit=CONDUIT, metrics=METRICS, scraper=SCRAPER))
    out = tmp_path / "nftables.nft"
    saved = _zonegate(net, "save", "-c", str(policy), "-o", str(out))
    assert saved.returncode == 0, saved.stderr
    rendered = _zonegate(net, "render", "-c", str(policy))
    checked = _nft_in(net.gw_ns, "-c", "-f", str(out))
    assert checked.returncode == 0, checked.stderr
    assert out.read_text().endswith(rendered.stdout)
