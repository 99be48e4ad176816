"""Transparent mode in a real kernel: a level-3 client that dials the PLC's own address is diverted by
nftables tproxy to a listener on the box, decided by the engine, and relayed to the real PLC.

The relay on the box is a small one built from `zonegate.dataplane.transparent` (socket, original
destination, device map) and the engine; the Modbus conduit uses the same pieces.
"""

from __future__ import annotations

import asyncio
import ipaddress
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import require
from tests.netns import netns_topology as topo
from tests.netns.netns_topology import (
    CELL_GW, L3_GW, L3_GW6, PLC, PLC6, SCADA, SCADA6, SCRAPER, SCRAPER6, Topology)
from zonegate.controlplane.nftables.model import (
    DIVERT_MARK, DIVERT_TABLE, FirewallSpec, Listener, Upstream, Zone, networks)

pytestmark = pytest.mark.netns

RELAY_PORT, ECHO_PORT = 8503, 1502

_POLICY = """\
version: 1
zones:
  cell-a: {interface: veth-cell, subnet: 192.168.10.0/24}
devices:
  press-plc:
    zone: cell-a
    modbus: {host: 192.168.10.11, port: 502, units: [1]}
  press-plc6:
    zone: cell-a
    modbus: {host: "fd10::11", port: 502, units: [1]}
principals:
  legacy-scada: {source: [10.3.0.10, "fd03::10"]}
rules:
  - id: legacy-read
    principal: legacy-scada
    devices: [press-plc, press-plc6]
    allow:
      - functions: [read_holding_registers]
        holding: 0-99
"""


def _nft_usable() -> bool:
    try:
        import nftables  # type: ignore[import-untyped,unused-ignore]

        nftables.Nftables()
    except (ImportError, OSError):
        return False
    return True


def _spec(net: Topology) -> FirewallSpec:
    plc = Upstream("press-plc", ipaddress.ip_network(PLC), 502)
    plc6 = Upstream("press-plc6", ipaddress.ip_network(PLC6), 502)
    echo = Upstream("echo-plc", ipaddress.ip_network(PLC), ECHO_PORT)
    return FirewallSpec(
        zones=(Zone("cell-a", net.gw_cell_if, ipaddress.ip_network("192.168.10.0/24")),
               Zone("level3", net.gw_l3_if, ipaddress.ip_network("10.3.0.0/24"))),
        listeners=(Listener("legacy-transparent", RELAY_PORT, networks([SCADA, SCADA6]), "modbus",
                            transparent=True, divert=(plc, plc6, echo)),),
        upstreams=(plc, plc6, echo),
    )


@dataclass
class Relay:
    """What the box's relay saw: (client address, original destination, device or None) per connection."""

    seen: list[tuple[str, str, str | None]] = field(default_factory=list)
    server: Any = None
    server6: Any = None
    plc6: Any = None  # the IPv6 PLC's request log


async def _read_adu(reader: asyncio.StreamReader) -> bytes:
    header = await reader.readexactly(6)
    return header + await reader.readexactly(int.from_bytes(header[4:6], "big"))


async def _start_relay(policy_path: Path) -> Relay:
    """Listen where tproxy delivers; per connection: original destination -> device; per request:
    decide with the engine, answer a denial with its Modbus exception, relay the rest to the device."""
    from zonegate import _engine
    from zonegate.controlplane.policy import load
    from zonegate.dataplane.transparent import DeviceMap, original_destination, transparent_socket
    from zonegate.engine import CompiledPolicy, exception_response

    compiled = CompiledPolicy(load([policy_path]).ir())
    devices = DeviceMap.of([("press-plc", PLC, 502), ("press-plc6", PLC6, 502), ("echo-plc", PLC, ECHO_PORT)])
    principals = {SCADA: "legacy-scada", SCADA6: "legacy-scada"}
    relay = Relay()

    async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        try:
            while data := await src.read(4096):
                dst.write(data)
                await dst.drain()
        finally:
            dst.close()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        destination = original_destination(writer)
        device = devices.device_for(destination)
        client = writer.get_extra_info("peername")[0]
        relay.seen.append((client, str(destination), device))
        if device is None:
            writer.close()
            return
        up_reader, up_writer = await asyncio.wait_for(
            asyncio.open_connection(str(destination.address), destination.port), 2)
        try:
            if device not in compiled.devices:  # not Modbus: relayed as bytes
                await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer), return_exceptions=True)
                return
            buf = b""
            while data := await reader.read(4096):
                buf += data
                while True:
                    status, n = _engine.split(buf)
                    if status == _engine.INCOMPLETE:
                        break
                    if status == _engine.INVALID:
                        return
                    adu, buf = buf[:n], buf[n:]
                    decision = compiled.decide(principals.get(client, ""), device, adu)
                    if decision.forward:
                        up_writer.write(adu)
                        writer.write(await asyncio.wait_for(_read_adu(up_reader), 2))
                    else:
                        writer.write(exception_response(adu, decision.exception_code or 1))
                    await writer.drain()
        finally:
            up_writer.close()
            writer.close()

    relay.server = await asyncio.start_server(serve, sock=transparent_socket(L3_GW, RELAY_PORT))
    relay.server6 = await asyncio.start_server(serve, sock=transparent_socket(L3_GW6, RELAY_PORT))
    return relay


async def _peer_echo(host: str, port: int) -> asyncio.Server:
    """A device that tells each client the address it sees it connect from."""
    async def tell(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(f"{writer.get_extra_info('peername')[0]}\n".encode())
        await writer.drain()
        writer.close()
    return await asyncio.start_server(tell, host, port, reuse_address=True)


async def _ask_peer(host: str, port: int, source: str) -> tuple[str, tuple[str, int]]:
    reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port, local_addr=(source, 0)), 2)
    try:
        return (await asyncio.wait_for(reader.readline(), 2)).decode().strip(), writer.get_extra_info("peername")
    finally:
        writer.close()


async def _write_register(host: str, port: int, source: str, address: int, value: int) -> bool:
    """One Modbus write; True if the answer is an exception."""
    from pymodbus.client import AsyncModbusTcpClient

    client = AsyncModbusTcpClient(host, port=port, source_address=(source, 0), timeout=2, retries=0)
    try:
        if not await client.connect():
            raise ConnectionError(f"no connection to {host}:{port} from {source}")
        reply = await client.write_register(address, value, device_id=1)
        return bool(reply.isError())
    finally:
        client.close()


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Topology, Relay]]:
    require(topo.netns_available(), "network namespace tests need root and iproute2")
    require(shutil.which("nft") is not None and _nft_usable(), "needs libnftables and python3-nftables")
    from zonegate.controlplane.nftables import apply, render

    policy = tmp_path_factory.mktemp("transparent") / "policy.yaml"
    policy.write_text(_POLICY)
    net = Topology(ipv6=True)
    try:
        net.build()
        net.plc = net.cell.run(topo.start_plc(PLC, 502))
        plc6 = net.cell.run(topo.start_plc(PLC6, 502))
        net.cell.run(_peer_echo(PLC, ECHO_PORT))
        net.cell.run(topo.greeter(PLC, 80))
        relay = net.gw.run(_start_relay(policy))
        relay.plc6 = plc6
        net.gw.call(apply, render(_spec(net)))
        yield net, relay
    finally:
        net.close()


def test_client_dialling_the_plc_is_diverted_decided_and_relayed(net: tuple[Topology, Relay]) -> None:
    topology, relay = net
    plc = topology.plc
    assert plc is not None
    before, seen_before = len(plc.requests), len(relay.seen)
    assert topology.l3.run(topo.read_holding(PLC, 502, SCADA, 10, 3)) == [10, 11, 12]
    assert plc.requests[before:] == [3]
    assert relay.seen[seen_before:] == [(SCADA, f"{PLC}:502", "press-plc")]


def test_ipv6_client_dialling_the_plc_is_diverted_decided_and_relayed(net: tuple[Topology, Relay]) -> None:
    topology, relay = net
    plc6 = relay.plc6
    before, seen_before = len(plc6.requests), len(relay.seen)
    assert topology.l3.run(topo.read_holding(PLC6, 502, SCADA6, 30, 2)) == [30, 31]
    assert topology.l3.run(_write_register(PLC6, 502, SCADA6, 30, 7)) is True
    assert plc6.requests[before:] == [3]
    assert relay.seen[seen_before:] == [(SCADA6, f"[{PLC6}]:502", "press-plc6")] * 2
    assert topology.l3.run(topo.connects(PLC6, 502, SCRAPER6, greeting=False)) is False


def test_denied_write_is_refused_by_the_box_and_never_reaches_the_plc(net: tuple[Topology, Relay]) -> None:
    topology, _relay = net
    plc = topology.plc
    assert plc is not None
    before = len(plc.requests)
    assert topology.l3.run(_write_register(PLC, 502, SCADA, 5, 1234)) is True
    assert topology.l3.run(topo.read_holding(PLC, 502, SCADA, 5, 1)) == [5]
    assert plc.requests[before:] == [3]


def test_client_sees_its_plc_and_the_plc_sees_the_box(net: tuple[Topology, Relay]) -> None:
    topology, relay = net
    seen_by_plc, peer_of_client = topology.l3.run(_ask_peer(PLC, ECHO_PORT, SCADA))
    assert peer_of_client == (PLC, ECHO_PORT)
    assert seen_by_plc == CELL_GW
    assert relay.seen[-1] == (SCADA, f"{PLC}:{ECHO_PORT}", "echo-plc")


def test_only_the_named_source_and_device_ports_are_diverted(net: tuple[Topology, Relay]) -> None:
    """The scraper is not a source of the listener, port 80 is no device port, and the listener's own
    port is not open: all three meet the table's drops, and the relay sees none of them."""
    topology, relay = net
    seen_before = len(relay.seen)

    async def probes() -> list[bool]:
        return list(await asyncio.gather(
            topo.connects(PLC, 502, SCRAPER, greeting=False),
            topo.connects(PLC, 80, SCADA),
            topo.connects(L3_GW, RELAY_PORT, SCADA, greeting=False),
        ))
    assert topology.l3.run(probes()) == [False, False, False]
    assert relay.seen[seen_before:] == []


def test_kernel_holds_the_rendered_table_and_the_policy_routing(net: tuple[Topology, Relay]) -> None:
    from zonegate.controlplane.nftables import current_text, render
    from zonegate.controlplane.nftables import routing

    topology, _relay = net
    assert topology.gw.call(current_text) == render(_spec(topology)).text
    assert topology.gw.call(routing.installed, 4) is True
    assert topology.gw.call(routing.installed, 6) is True


def test_policy_routing_is_idempotent_and_without_it_diversion_fails_closed(net: tuple[Topology, Relay]) -> None:
    """Without the local route a diverted packet is forwarded, and the forward chain drops it."""
    from zonegate.controlplane.nftables import routing

    topology, relay = net
    topology.gw.call(routing.install, (4,))
    rules = topology.gw.call(routing._rules, 4, DIVERT_MARK, DIVERT_TABLE)
    assert rules == 1
    topology.gw.call(routing.remove, (4,))
    topology.gw.call(routing.remove, (4,))
    try:
        assert topology.gw.call(routing.installed, 4) is False
        seen_before = len(relay.seen)
        assert topology.l3.run(topo.connects(PLC, 502, SCADA, greeting=False)) is False
        assert relay.seen[seen_before:] == []
    finally:
        topology.gw.call(routing.install, (4,))
    assert topology.l3.run(topo.read_holding(PLC, 502, SCADA, 0, 1)) == [0]


def test_saved_script_with_diversion_loads_at_boot_as_apply_made_it(net: tuple[Topology, Relay],
                                                                     tmp_path: Path) -> None:
    import subprocess

    from zonegate.controlplane.nftables import current_text, render

    topology, _relay = net
    script = tmp_path / "nftables.nft"
    script.write_text(render(_spec(topology)).script())
    fresh = f"zg-boot-{topology.suffix}"
    subprocess.run(["ip", "netns", "add", fresh], check=True, capture_output=True, timeout=topo.STEP_TIMEOUT)
    try:
        for args in (["-c", "-f", str(script)], ["-f", str(script)]):
            done = subprocess.run(["ip", "netns", "exec", fresh, "nft", *args], capture_output=True, text=True,
                                  timeout=topo.STEP_TIMEOUT)
            assert done.returncode == 0, done.stderr
        listed = subprocess.run(["ip", "netns", "exec", fresh, "nft", "-s", "list", "table", "inet", "zonegate"],
                                capture_output=True, text=True, timeout=topo.STEP_TIMEOUT)
        assert listed.stdout == topology.gw.call(current_text)
    finally:
        subprocess.run(["ip", "netns", "del", fresh], capture_output=True, timeout=topo.STEP_TIMEOUT)


def test_nft_remove_takes_the_policy_routing_away_with_the_table(net: tuple[Topology, Relay]) -> None:
    """In a namespace of its own: install the rule and route as apply does, then `zonegate nft remove`."""
    import os
    import subprocess
    import sys

    from tests.conftest import ROOT

    topology, _relay = net
    fresh = f"zg-rm-{topology.suffix}"

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["ip", "netns", "exec", fresh, *args], capture_output=True, text=True, timeout=60,
                              env={**os.environ, "PYTHONPATH": str(ROOT)})

    subprocess.run(["ip", "netns", "add", fresh], check=True, capture_output=True, timeout=topo.STEP_TIMEOUT)
    try:
        assert run("ip", "link", "set", "lo", "up").returncode == 0  # IPv6 routes only via a device that is up
        installed = run(sys.executable, "-c", "from zonegate.controlplane.nftables import routing; "
                                              "routing.install((4, 6)); routing.install((4, 6))")
        assert installed.returncode == 0, installed.stderr
        assert run("ip", "-4", "rule", "show").stdout.count("fwmark 0x5a47") == 1
        removed = run(sys.executable, "-m", "zonegate.cli", "nft", "remove")
        assert removed.returncode == 0, removed.stderr
        for family in ("-4", "-6"):
            assert "fwmark" not in run("ip", family, "rule", "show").stdout
            assert run("ip", family, "route", "show", "table", str(DIVERT_TABLE)).stdout == ""
    finally:
        subprocess.run(["ip", "netns", "del", fresh], capture_output=True, timeout=topo.STEP_TIMEOUT)
