"""Outbound conduit end to end: a plain in-zone Modbus/TCP master -> zonegate -> a level-3 Modbus/TCP
Security server (pymodbus, mutual TLS), with zonegate presenting its own certificate and role; through each
relay (Python and Rust)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from pymodbus.client import AsyncModbusTcpClient
from pymodbus.server import ModbusTlsServer
from pymodbus.simulator import DataType, SimData, SimDevice

from tests.integration.relays import running
from tests.integration.test_conduit import run
from zonegate.controlplane.pki import DevPki, generate
from zonegate.controlplane.tls import server_context
from zonegate.demo.stack import free_port

POLICY = """\
version: 1
zones:
  cell-a: {{subnet: 127.0.0.0/8}}
  level3: {{subnet: 10.3.0.0/24}}
devices:
  l3-historian:
    zone: level3
    modbus:
      host: 127.0.0.1
      port: {l3_port}
      units: [1]
      tls: {{cert: gateway-client.crt, key: gateway-client.key, ca: ca.crt}}
principals:
  line-hmi: {{source: 127.0.0.1}}
rules:
  - id: hmi-push-historian
    principal: line-hmi
    device: l3-historian
    allow:
      - {{functions: [read_holding_registers, write_multiple_registers], holding: 0-99}}
listeners:
  - name: zone-modbus
    protocol: modbus
    bind: 127.0.0.1:{listen_port}
    devices: [l3-historian]
audit: {{path: {audit}}}
"""


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> DevPki:
    return generate(tmp_path_factory.mktemp("pki"))


def test_zone_master_writes_reach_the_level3_server_over_mutual_tls(tmp_path: Path, pki: DevPki, relay: str) -> None:
    l3_port, listen_port = free_port(), free_port()
    audit = tmp_path / "audit.jsonl"
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY.format(l3_port=l3_port, listen_port=listen_port, audit=json.dumps(str(audit))))
    peers: list[str] = []

    async def body() -> None:
        context = server_context(pki.cert("l3-server"), pki.key("l3-server"), pki.ca)
        historian = ModbusTlsServer(
            SimDevice(id=1, simdata=[SimData(address=0, count=100, values=0, datatype=DataType.REGISTERS)]),
            address=("127.0.0.1", l3_port), sslctx=context,
            trace_connect=lambda connected: peers.append("connected" if connected else "gone"),
        )
        await historian.serve_forever(background=True)
        try:
            async with running(relay, [policy], pki.directory, str(audit)) as conduit:
                client = AsyncModbusTcpClient("127.0.0.1", port=listen_port, timeout=3, retries=0)
                assert await client.connect()
                try:
                    wrote = await client.write_registers(10, [11, 22, 33], device_id=1)
                    assert not wrote.isError()
                    read = await client.read_holding_registers(10, count=3, device_id=1)
                    assert read.registers == [11, 22, 33]
                    refused = await client.write_registers(99, [1, 2], device_id=1)  # 100 is outside 0-99
                    assert refused.isError() and refused.exception_code == 0x01
                finally:
                    client.close()
                if relay == "python":  # the Python relay's own pool shows the TLS version it negotiated
                    pool = conduit.pools["l3-historian"]
                    (connection,) = pool.connections
                    ssl_object: Any = connection.transport.get_extra_info("ssl_object")
                    assert ssl_object.version() in ("TLSv1.2", "TLSv1.3")
        finally:
            await historian.shutdown()

    run(body())
    assert "connected" in peers
    records = [json.loads(line) for line in audit.read_text().splitlines()]
    assert [(r["verdict"], r["values"]) for r in records] == [("allow", [11, 22, 33]), ("deny", [1, 2])]
    assert records[0]["principal"]["name"] == "line-hmi" and records[0]["principal"]["peer"].startswith("127.0.0.1:")


def test_level3_server_that_rejects_zonegate_answers_0a(tmp_path: Path, pki: DevPki, relay: str) -> None:
    """A level-3 server whose CA does not trust zonegate's certificate: the path is unavailable (0x0A)."""
    l3_port, listen_port = free_port(), free_port()
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY.format(l3_port=l3_port, listen_port=listen_port, audit='"-"'))

    async def body() -> None:
        context = server_context(pki.cert("l3-server"), pki.key("l3-server"), pki.directory / "rogue-ca.crt")
        historian = ModbusTlsServer(
            SimDevice(id=1, simdata=[SimData(address=0, count=100, values=0, datatype=DataType.REGISTERS)]),
            address=("127.0.0.1", l3_port), sslctx=context,
        )
        await historian.serve_forever(background=True)
        try:
            async with running(relay, [policy], pki.directory, "-"):
                client = AsyncModbusTcpClient("127.0.0.1", port=listen_port, timeout=3, retries=0)
                assert await client.connect()
                try:
                    reply = await client.read_holding_registers(0, count=1, device_id=1)
                    assert reply.isError() and reply.exception_code in (0x0A, 0x0B)
                finally:
                    client.close()
        finally:
            await historian.shutdown()

    run(body())
