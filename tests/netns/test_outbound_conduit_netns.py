"""The outbound conduit across namespaces: an in-zone master in `cell` speaks plain Modbus to the box's
zone-side listener, `zonegate run` in `gw` decides it and re-emits it as Modbus/TCP Security to a level-3
server in `l3`, presenting its own certificate. The master has no other way out of the zone: its plain
Modbus to the level-3 server does not connect, and a denied write never reaches that server.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import require
from tests.netns import netns_topology as topo
from tests.netns.netns_topology import CELL_GW, L3_GW, MASTER, SCADA, Topology
from tests.netns.test_transparent_conduit_netns import Service, _nft_usable

pytestmark = pytest.mark.netns

L3_SERVER = SCADA  # the level-3 historian runs on the SCADA host

_POLICY = """\
version: 1
pki_dir: {pki}
zones:
  cell-a: {{interface: {cell_if}, subnet: 192.168.10.0/24}}
  level3: {{interface: {l3_if}, subnet: 10.3.0.0/24}}
devices:
  l3-historian:
    zone: level3
    modbus:
      host: {server}
      port: 802
      units: [1]
      tls: {{cert: gateway-client.crt, key: gateway-client.key, ca: ca.crt}}
principals:
  line-hmi: {{source: {master}}}
listeners:
  - name: zone-modbus
    protocol: modbus
    bind: {cell_gw}:502
    devices: [l3-historian]
metrics: {{bind: 127.0.0.1:9802}}
audit: {{path: {audit}}}
rules:
  - id: hmi-push-historian
    principal: line-hmi
    device: l3-historian
    allow:
      - functions: [read_holding_registers, write_multiple_registers]
        holding: 0-99
"""


@dataclass
class Historian:
    """A pymodbus Modbus/TCP Security server; `requests` lists the function codes it was sent."""

    server: Any
    requests: list[int]


async def _start_historian(pki: Any) -> Historian:
    from pymodbus.datastore import ModbusDeviceContext, ModbusSequentialDataBlock, ModbusServerContext
    from pymodbus.server import ModbusTlsServer

    from zonegate.controlplane.tls import server_context

    requests: list[int] = []

    def trace(sending: bool, pdu: Any) -> Any:
        if not sending:
            requests.append(int(pdu.function_code))
        return pdu

    registers = ModbusSequentialDataBlock(1, [0] * 100)  # type: ignore[no-untyped-call,unused-ignore]
    context = ModbusServerContext(devices=ModbusDeviceContext(hr=registers), single=True)
    server = ModbusTlsServer(
        context, address=(L3_SERVER, 802), trace_pdu=trace,
        sslctx=server_context(pki.cert("l3-server"), pki.key("l3-server"), pki.ca),
    )
    await server.serve_forever(background=True)
    return Historian(server, requests)


async def _master_session() -> tuple[bool, bool, list[int], int | None]:
    """From the in-zone master, through the box: an allowed write, its read-back, a denied write."""
    from pymodbus.client import AsyncModbusTcpClient

    client = AsyncModbusTcpClient(CELL_GW, port=502, source_address=(MASTER, 0), timeout=5, retries=0)
    try:
        if not await client.connect():
            raise ConnectionError("the zone-side listener did not answer the master")
        wrote = await client.write_registers(10, [11, 22, 33], device_id=1)
        read = await client.read_holding_registers(10, count=3, device_id=1)
        refused = await client.write_registers(99, [1, 2], device_id=1)  # 100 lies outside 0-99
        return (not wrote.isError(), not read.isError(), list(read.registers),
                refused.exception_code if refused.isError() else None)
    finally:
        client.close()


async def _historian_peers(historian: Historian) -> list[str]:
    """Addresses of the clients connected to the historian right now, as its kernel sees them."""
    server = historian.server
    return sorted(str(connection.transport.get_extra_info("peername")[0])
                  for connection in getattr(server, "active_connections", {}).values())


def test_zone_master_reaches_the_level3_server_only_through_the_box(tmp_path: Path) -> None:
    require(topo.netns_available(), "network namespace tests need root and iproute2")
    require(shutil.which("nft") is not None and _nft_usable(), "needs libnftables and python3-nftables")
    from zonegate.controlplane.pki import generate

    pki = generate(tmp_path / "pki", server_hosts=(L3_GW, L3_SERVER, CELL_GW))
    net = Topology()
    service: Service | None = None
    try:
        net.build()
        audit = tmp_path / "audit.jsonl"
        policy = tmp_path / "policy.yaml"
        policy.write_text(_POLICY.format(pki=pki.directory, cell_if=net.gw_cell_if, l3_if=net.gw_l3_if,
                                         server=L3_SERVER, master=MASTER, cell_gw=CELL_GW, audit=audit))
        historian = net.l3.run(_start_historian(pki))
        service = Service(net.gw_ns, policy)
        service.wait_for("ready")

        # No way around the box: the master's plain Modbus to the level-3 server does not connect, on the
        # Modbus/TCP Security port or the plain one, and level 3 cannot reach the zone-side listener.
        assert net.cell.run(topo.connects(L3_SERVER, 802, MASTER)) is False
        assert net.cell.run(topo.connects(L3_SERVER, 502, MASTER)) is False
        assert net.l3.run(topo.connects(CELL_GW, 502, SCADA)) is False
        assert historian.requests == []

        wrote, read_ok, registers, refused = net.cell.run(_master_session(), timeout=20)
        assert wrote and read_ok and registers == [11, 22, 33]
        assert refused == 0x01  # answered by the box
        assert historian.requests == [16, 3]  # the denied write never left the box

        # The historian saw the box's level-3 address, over TLS, never the master's.
        peers = net.l3.run(_historian_peers(historian))
        assert peers == [L3_GW]  # one pooled connection (max_connections 1), from the box

        records = topo.audit_records(audit, until=lambda records: len(records) >= 2)
        assert [(r["verdict"], r["values"]) for r in records] == [("allow", [11, 22, 33]), ("deny", [1, 2])]
        assert records[1]["principal"]["peer"].startswith(f"{MASTER}:")
    finally:
        if service is not None:
            service.stop()
        net.close()
