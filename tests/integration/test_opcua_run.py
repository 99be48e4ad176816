"""The OPC UA converter inside `zonegate run` (a child process) in front of a simulated PLC: an asyncua
client over SignAndEncrypt reads, an allowed write arrives, a refused one does not; SIGHUP swaps in new
rules but refuses tag changes; the metrics endpoint exports the converter; SIGTERM stops it."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path
from typing import Any

import pytest
from asyncua import Client, ua
from asyncua.crypto.security_policies import SecurityPolicyBasic256Sha256
from asyncua.crypto.uacrypto import CertProperties

from tests.integration.test_conduit import run
from tests.integration.test_conduit_run import Service, sample, scrape, until_metric
from zonegate.controlplane.pki import OPCUA_CLIENT_URI, DevPki, generate
from zonegate.convert.opcua_users import hash_password
from zonegate.demo.plc import SimulatedPlc
from zonegate.demo.stack import free_port

PASSWORD = "tank-farm-historian"

POLICY = """\
version: 1
zones:
  cell-a: {{subnet: 192.168.10.0/24}}
devices:
  plc:
    zone: cell-a
    modbus: {{host: 127.0.0.1, port: {plc_port}, units: [1], timeout: 1s}}
principals:
  poller: {{gateway: true}}
  historian: {{opcua_user: historian}}
rules:
  - id: poll
    principal: poller
    device: plc
    allow:
      - {{functions: [read_holding_registers], holding: 0-199}}
  - id: historian-setpoint
    principal: historian
    device: plc
    allow:
      - {{functions: [write_single_register], holding: {{range: 100-100, min: 0, max: 1000}}}}
opcua:
  bind: 127.0.0.1:{opcua_port}
  poll_principal: poller
  scan_classes: {{fast: 100ms}}
  tls: {{cert: opcua-server.crt, key: opcua-server.key, ca: ca.crt, crl: ca.crl}}
  users: opcua-users
tags:
  plc:
    - {{name: Level, table: holding, address: 0, type: uint16}}
    - {{name: Setpoint, table: holding, address: 100, type: uint16, writable: true}}
    - {{name: Spare, table: holding, address: 120, type: uint16, writable: true}}
metrics: {{bind: 127.0.0.1:{metrics_port}}}
audit: {{path: "-"}}
"""


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> DevPki:
    pki = generate(tmp_path_factory.mktemp("pki"))
    users = pki.directory / "opcua-users"
    users.touch(mode=0o600)
    users.write_text(f"historian:{hash_password(PASSWORD, log2_n=10)}\n")
    return pki


async def client_for(url: str, pki: DevPki) -> Client:
    client = Client(url, timeout=5)
    client.application_uri = OPCUA_CLIENT_URI
    await client.set_security(SecurityPolicyBasic256Sha256, CertProperties(str(pki.cert("opcua-client")), "pem"),
                              CertProperties(str(pki.key("opcua-client")), "pem"))
    client.set_user("historian")
    client.set_password(PASSWORD)
    return client


async def good_value(node: Any, expected: Any, timeout: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        dv = await node.read_data_value(raise_on_bad_status=False)
        if dv.StatusCode.is_good() and dv.Value.Value == expected:
            return
        assert asyncio.get_running_loop().time() < deadline, f"never Good {expected!r}: {dv.StatusCode} {dv.Value}"
        await asyncio.sleep(0.05)


async def write_status(node: Any, value: int) -> int:
    try:
        await node.write_value(ua.DataValue(ua.Variant(value, ua.VariantType.UInt16)))
    except ua.UaStatusCodeError as exc:
        return int(exc.code)
    return 0


def test_run_serves_opcua_reloads_rules_refuses_tag_changes_and_stops(tmp_path: Path, pki: DevPki) -> None:
    plc_port, opcua_port, metrics_port = free_port(), free_port(), free_port()
    text = POLICY.format(plc_port=plc_port, opcua_port=opcua_port, metrics_port=metrics_port)
    policy = tmp_path / "policy.yaml"
    policy.write_text(text)
    service = Service(policy, pki.directory, tmp_path / "zonegate.pid")

    async def body() -> None:
        plc = SimulatedPlc(plc_port, initial={0: 425, 100: 10})
        await plc.start()
        try:
            await asyncio.to_thread(service.wait_for, "ready")
            assert any(f"opcua on opc.tcp://127.0.0.1:{opcua_port}" in line for line in service.lines)
            async with await client_for(f"opc.tcp://127.0.0.1:{opcua_port}", pki) as client:
                ns = await client.get_namespace_index("urn:zonegate:devices")
                level = client.get_node(ua.NodeId("plc/Level", ns))
                setpoint = client.get_node(ua.NodeId("plc/Setpoint", ns))
                spare = client.get_node(ua.NodeId("plc/Spare", ns))
                await good_value(level, 425)

                assert await write_status(setpoint, 700) == 0
                assert await plc_read(plc_port, 100) == 700
                writes = plc.seen[6]
                assert await write_status(spare, 5) == ua.StatusCodes.BadUserAccessDenied
                assert await write_status(setpoint, 1001) == ua.StatusCodes.BadOutOfRange  # the rule's bound
                assert plc.seen[6] == writes and await plc_read(plc_port, 120) == 0

                page = await asyncio.to_thread(scrape, metrics_port)
                assert sample(page, "zonegate_requests_total", conduit="opcua", principal="historian",
                              function="write_single_register", verdict="allow", reason="allowed") == 1
                assert sample(page, "zonegate_requests_total", conduit="opcua", verdict="deny",
                              reason="address_out_of_range") == 1
                assert sample(page, "zonegate_requests_total", conduit="opcua", verdict="deny",
                              reason="value_out_of_bounds") == 1
                assert sample(page, "zonegate_opcua_sessions") == 1
                assert sample(page, "zonegate_opcua_bad_variables", device="plc") == 0
                assert sample(page, "zonegate_opcua_poll_cycle_seconds_count", device="plc", scan="fast") > 0

                intruder = await client_for(f"opc.tcp://127.0.0.1:{opcua_port}", pki)
                intruder.set_password("guess")
                with pytest.raises(ua.UaStatusCodeError):
                    await intruder.connect()
                intruder.disconnect_socket()
                await until_metric(metrics_port, "zonegate_opcua_refused_total", 1, reason="bad_credentials")

                # New rules: the setpoint rule is gone; the running session is refused at once.
                policy.write_text(text.replace("holding: {range: 100-100, min: 0, max: 1000}", "holding: 110"))
                os.kill(service.process.pid, signal.SIGHUP)
                await until_metric(metrics_port, "zonegate_policy_reloads_total", 1, result="ok")
                assert await write_status(setpoint, 300) == ua.StatusCodes.BadUserAccessDenied
                assert await plc_read(plc_port, 100) == 700

                # A tag change needs a restart: the reload is refused whole, and says why.
                policy.write_text(text.replace("address: 120", "address: 121"))
                os.kill(service.process.pid, signal.SIGHUP)
                await until_metric(metrics_port, "zonegate_policy_reloads_total", 1, result="failed")
                assert any("tags" in line and "restart" in line for line in service.lines), "".join(service.lines)
                assert await write_status(setpoint, 300) == ua.StatusCodes.BadUserAccessDenied  # rules kept
        finally:
            code = await asyncio.to_thread(service.stop)
            await plc.stop()
        assert code == 0, "".join(service.lines)
        assert any("stopping the OPC UA converter" in line for line in service.lines)

    run(body(), timeout=90)


async def plc_read(port: int, address: int) -> int:
    from pymodbus.client import AsyncModbusTcpClient

    client = AsyncModbusTcpClient("127.0.0.1", port=port, timeout=2)
    await client.connect()
    try:
        reply = await client.read_holding_registers(address, count=1, device_id=1)
        return int(reply.registers[0])
    finally:
        client.close()


def test_run_refuses_to_start_when_the_converter_cannot(tmp_path: Path, pki: DevPki) -> None:
    """A converter that cannot start (its key readable by others) stops `zonegate run` with a message."""
    import shutil
    import subprocess
    import sys

    from tests.integration.test_conduit_run import ROOT

    copy = tmp_path / "pki"
    shutil.copytree(pki.directory, copy)
    (copy / "opcua-server.key").chmod(0o644)
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY.format(plc_port=free_port(), opcua_port=free_port(), metrics_port=free_port()))
    result = subprocess.run([sys.executable, "-m", "zonegate.cli", "run", "-c", str(policy), "--pki", str(copy),
                             "--no-firewall"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 1, result.stderr
    assert "mode 0600" in result.stderr and "Traceback" not in result.stderr
