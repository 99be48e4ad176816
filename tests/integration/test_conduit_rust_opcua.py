"""The OPC UA converter on the Rust relay's device pools: `zonegate run --relay rust` polls and writes the PLC
through `Relay.submit`, so the converter shares the device's connections with Modbus clients as it does on
the Python relay; a write the rules refuse never reaches the PLC."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from asyncua import ua

from tests.integration.relays import require_relay
from tests.integration.test_conduit import run
from tests.integration.test_conduit_run import Service
from tests.integration.test_opcua_run import POLICY, client_for, good_value, plc_read, write_status
from tests.integration.test_opcua_run import pki as pki  # noqa: F401 - the module's PKI fixture, with its users
from zonegate.controlplane.pki import DevPki
from zonegate.demo.plc import SimulatedPlc
from zonegate.demo.stack import free_port


def test_converter_reads_and_writes_through_the_rust_relay(tmp_path: Path, pki: DevPki) -> None:  # noqa: F811
    require_relay("rust")
    plc_port, opcua_port, metrics_port = free_port(), free_port(), free_port()
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY.format(plc_port=plc_port, opcua_port=opcua_port, metrics_port=metrics_port))
    service = Service(policy, pki.directory, tmp_path / "zonegate.pid", "rust")

    async def body() -> None:
        plc = SimulatedPlc(plc_port, initial={0: 425, 100: 10})
        await plc.start()
        try:
            await asyncio.to_thread(service.wait_for, "ready")
            async with await client_for(f"opc.tcp://127.0.0.1:{opcua_port}", pki) as client:
                ns = await client.get_namespace_index("urn:zonegate:devices")
                await good_value(client.get_node(ua.NodeId("plc/Level", ns)), 425)
                setpoint = client.get_node(ua.NodeId("plc/Setpoint", ns))
                assert await write_status(setpoint, 700) == 0
                assert await plc_read(plc_port, 100) == 700
                writes = plc.seen[6]
                assert await write_status(setpoint, 1001) == ua.StatusCodes.BadOutOfRange
                assert plc.seen[6] == writes
        finally:
            code = await asyncio.to_thread(service.stop)
            await plc.stop()
        assert code == 0, "".join(service.lines)

    run(body(), timeout=90)
