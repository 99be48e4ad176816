"""The `inet zonegate` table over IPv6, proven with packets: dual-stack zones render into the ip6 sets and
the box closes the IPv6 paths exactly as it closes the IPv4 ones."""

from __future__ import annotations

import asyncio
import ipaddress
import shutil
import subprocess
from collections.abc import Awaitable, Iterator
from typing import Any

import pytest

from tests.conftest import require
from tests.netns import netns_topology as topo
from tests.netns.netns_topology import (
    CELL_GW6, L3_GW6, MASTER6, PLC6, SCADA6, SCRAPER6, STEP_TIMEOUT, Topology)
from zonegate.controlplane.nftables.model import FirewallSpec, Flow, Listener, Metrics, Upstream, Zone, networks

pytestmark = pytest.mark.netns

CONDUIT, ZONE_LISTENER, METRICS, UNLISTED = 8802, 8502, 9802, 2222


def _nft_usable() -> bool:
    try:
        import nftables  # type: ignore[import-untyped,unused-ignore]

        nftables.Nftables()
    except (ImportError, OSError):
        return False
    return True


def _spec(net: Topology) -> FirewallSpec:
    cell = Zone("cell-a", net.gw_cell_if, ipaddress.ip_network("192.168.10.0/24"),
                (ipaddress.ip_network("fd10::/64"),))
    level3 = Zone("level3", net.gw_l3_if, ipaddress.ip_network("10.3.0.0/24"), (ipaddress.ip_network("fd03::/64"),))
    return FirewallSpec(
        zones=(cell, level3),
        listeners=(Listener("l3-modbus-security", CONDUIT, level3.subnets, "modbus_tls"),
                   Listener("zone-modbus", ZONE_LISTENER, cell.subnets)),
        upstreams=(Upstream("press-plc", ipaddress.ip_network(PLC6), 502),),
        flows=(Flow("ntp", networks(SCADA6), networks(PLC6), "udp", 123),),
        metrics=Metrics(METRICS, networks(SCRAPER6)),
    )


@pytest.fixture(scope="module")
def net() -> Iterator[Topology]:
    require(topo.netns_available(), "network namespace tests need root and iproute2")
    require(shutil.which("nft") is not None and _nft_usable(), "needs libnftables and python3-nftables")
    net = Topology(ipv6=True)
    try:
        net.build()
        net.cell.run(_start_cell())
        net.gw.run(_start_gw())
        net.plc = net.cell.run(topo.start_plc(PLC6, 502))
        yield net
    finally:
        net.close()


async def _start_cell() -> None:
    for port in (80, 102, 4840):
        await topo.greeter(PLC6, port)
    await topo.greeter(MASTER6, 80)
    await topo.udp_echo(PLC6, 123)


async def _start_gw() -> None:
    for address in (L3_GW6, CELL_GW6):
        await topo.relay(address, CONDUIT, (PLC6, 502))
        for port in (ZONE_LISTENER, METRICS, UNLISTED):
            await topo.greeter(address, port)


@pytest.fixture
def applied(net: Topology) -> Iterator[Any]:
    from zonegate.controlplane.nftables import apply, remove, render

    handle = net.gw.call(apply, render(_spec(net)))
    try:
        yield handle
    finally:
        net.gw.call(remove)


def _all(net: Topology, probes: dict[str, Awaitable[bool]]) -> dict[str, bool]:
    """Named probes ("side:what"), run concurrently on each side's namespace; each ends within its timeout."""
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


def test_without_the_table_the_box_forwards_ipv6(net: Topology) -> None:
    """The control: a closed IPv6 path below is the table's doing, not the rig's."""
    from zonegate.controlplane.nftables import current_text

    assert net.gw.call(current_text) is None
    seen = _all(net, {"l3:plc502": topo.connects(PLC6, 502, SCADA6, greeting=False),
                      "l3:plc80": topo.connects(PLC6, 80, SCADA6)})
    assert seen == {"l3:plc502": True, "l3:plc80": True}


def test_ipv6_sources_render_into_ip6_sets(net: Topology, applied: Any) -> None:
    text = applied.ruleset.text
    for name in ("listener_l3_modbus_security_v6", "listener_zone_modbus_v6", "metrics_scrapers_v6",
                 "upstream_press_plc_v6", "flow_ntp_from_v6", "meter_l3_modbus_security_v6"):
        assert f"set {name} {{\n\t\ttype ipv6_addr" in text, name
    assert "ip6 saddr @listener_l3_modbus_security_v6 ct state new accept" in text


def test_forward_drops_ipv6_between_zones_on_every_port(net: Topology, applied: Any) -> None:
    from zonegate.controlplane.nftables.apply import drop_counts

    seen = _all(net, {
        "l3:plc502": topo.connects(PLC6, 502, SCADA6, greeting=False),
        "l3:plc80": topo.connects(PLC6, 80, SCADA6),
        "l3:plc102": topo.connects(PLC6, 102, SCADA6),
        "l3:plc4840": topo.connects(PLC6, 4840, SCADA6),
        "cell:up-to-l3": topo.connects(SCADA6, 80, MASTER6),
    })
    assert not any(seen.values()), seen
    assert net.gw.call(drop_counts)["drop_zone_level3_to_cell_a"] >= 4


def test_declared_ipv6_flow_passes_and_nothing_beside_it(net: Topology, applied: Any) -> None:
    async def both() -> list[bool]:
        return list(await asyncio.gather(topo.udp_answers(PLC6, 123, SCADA6), topo.udp_answers(PLC6, 123, SCRAPER6)))
    assert net.l3.run(both()) == [True, False]


def test_ipv6_listeners_open_only_to_the_sources_the_policy_names(net: Topology, applied: Any) -> None:
    seen = _all(net, {
        "l3:conduit": topo.connects(L3_GW6, CONDUIT, SCADA6, greeting=False),
        "l3:zone-listener": topo.connects(L3_GW6, ZONE_LISTENER, SCADA6),
        "l3:unlisted": topo.connects(L3_GW6, UNLISTED, SCADA6),
        "l3:metrics-scraper": topo.connects(L3_GW6, METRICS, SCRAPER6),
        "l3:metrics-scada": topo.connects(L3_GW6, METRICS, SCADA6),
        "cell:zone-listener": topo.connects(CELL_GW6, ZONE_LISTENER, MASTER6),
        "cell:conduit": topo.connects(CELL_GW6, CONDUIT, MASTER6, greeting=False),
        "cell:metrics": topo.connects(CELL_GW6, METRICS, MASTER6),
    })
    assert seen == {
        "l3:conduit": True, "l3:zone-listener": False, "l3:unlisted": False,
        "l3:metrics-scraper": True, "l3:metrics-scada": False,
        "cell:zone-listener": True, "cell:conduit": False, "cell:metrics": False,
    }


def test_ipv6_conduit_reaches_the_plc_after_neighbours_are_forgotten(net: Topology, applied: Any) -> None:
    """Neighbour discovery must pass the table: with every neighbour cache flushed, the conduit still
    crosses the box to the PLC and back."""
    for ns in (net.l3_ns, net.gw_ns, net.cell_ns):
        subprocess.run(["ip", "-n", ns, "-6", "neigh", "flush", "all"], check=True, capture_output=True,
                       timeout=STEP_TIMEOUT)
    plc = net.plc
    assert plc is not None
    before = len(plc.requests)
    assert net.l3.run(topo.read_holding(L3_GW6, CONDUIT, SCADA6, 20, 2)) == [20, 21]
    assert plc.requests[before:] == [3]


def test_box_dials_only_its_ipv6_upstream_on_its_port(net: Topology, applied: Any) -> None:
    async def probes() -> list[bool]:
        return list(await asyncio.gather(topo.connects(PLC6, 502, greeting=False), topo.connects(PLC6, 80),
                                         topo.connects(MASTER6, 80)))
    assert net.gw.run(probes()) == [True, False, False]
