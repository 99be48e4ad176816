"""Modbus/TCP Security through the box across namespaces: `zonegate run` in gw puts its table in force,
a level-3 client reaches the PLC only through the TLS listener, and a denied write never reaches the PLC.
"""

from __future__ import annotations

import asyncio
import shutil
import ssl
from pathlib import Path

import pytest

from tests.conftest import require
from tests.netns import netns_topology as topo
from tests.netns.netns_topology import L3_GW, PLC, SCADA, Topology
from tests.netns.test_transparent_conduit_netns import Service, _nft_usable

pytestmark = pytest.mark.netns

_POLICY = """\
version: 1
pki_dir: {pki}
zones:
  cell-a: {{interface: {cell_if}, subnet: 192.168.10.0/24}}
  level3: {{interface: {l3_if}, subnet: 10.3.0.0/24}}
devices:
  press-plc:
    zone: cell-a
    modbus: {{host: {plc}, port: 502, units: [1]}}
principals:
  operator: {{tls_role: Operator}}
listeners:
  - name: l3-modbus-security
    protocol: modbus_tls
    bind: {gw}:802
    devices: [press-plc]
    allow_from: [{scada}/32]
    tls: {{cert: server.crt, key: server.key, ca: ca.crt, crl: ca.crl}}
metrics: {{bind: 127.0.0.1:9802}}
audit: {{path: {audit}}}
rules:
  - id: operator-read
    principal: operator
    device: press-plc
    allow:
      - functions: [read_holding_registers]
        holding: 0-99
"""


async def _exchange(context: ssl.SSLContext, adus: list[bytes]) -> list[bytes]:
    """Send each ADU over one mutual-TLS connection from SCADA to the box; the replies, in order."""
    reader, writer = await asyncio.wait_for(asyncio.open_connection(
        L3_GW, 802, ssl=context, server_hostname=L3_GW, local_addr=(SCADA, 0)), 5)
    replies = []
    try:
        for adu in adus:
            writer.write(adu)
            header = await asyncio.wait_for(reader.readexactly(6), 5)
            replies.append(header + await asyncio.wait_for(
                reader.readexactly(int.from_bytes(header[4:6], "big")), 5))
    finally:
        writer.close()
    return replies


def test_modbus_security_through_the_box_reaches_the_plc_and_denied_writes_do_not(tmp_path: Path) -> None:
    require(topo.netns_available(), "network namespace tests need root and iproute2")
    require(shutil.which("nft") is not None and _nft_usable(), "needs libnftables and python3-nftables")
    from zonegate.controlplane.pki import generate
    from zonegate.demo.stack import client_ssl_context

    pki = generate(tmp_path / "pki", server_hosts=(L3_GW,))
    net = Topology()
    service: Service | None = None
    try:
        net.build()
        policy = tmp_path / "policy.yaml"
        policy.write_text(_POLICY.format(pki=pki.directory, cell_if=net.gw_cell_if, l3_if=net.gw_l3_if,
                                         plc=PLC, gw=L3_GW, scada=SCADA, audit=tmp_path / "audit.jsonl"))
        net.plc = net.cell.run(topo.start_plc(PLC, 502))
        service = Service(net.gw_ns, policy)
        service.wait_for("ready")
        plc = net.plc

        # No way around the box: plain Modbus from level 3 to the PLC does not even connect.
        assert net.l3.run(topo.connects(PLC, 502, SCADA)) is False
        assert plc.requests == []

        context = client_ssl_context(pki, "operator")
        read = bytes.fromhex("0001 0000 0006 01 03 000a 0003")   # read holding 10-12
        write = bytes.fromhex("0002 0000 0006 01 06 0005 04d2")  # write holding 5 = 1234: not allowed
        replies = net.l3.run(_exchange(context, [read, write, read]))
        assert replies[0] == bytes.fromhex("0001 0000 0009 01 03 06 000a 000b 000c")
        assert replies[1] == bytes.fromhex("0002 0000 0003 01 86 01")  # exception 01 from the box
        assert replies[2] == replies[0]
        assert plc.requests == [3, 3]  # the write never reached the PLC
    finally:
        if service is not None:
            service.stop()
        net.close()
