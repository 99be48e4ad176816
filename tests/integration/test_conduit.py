"""Inbound conduit end to end: pymodbus TLS clients -> zonegate -> a simulated PLC, over real sockets, through
each relay (Python and Rust)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

import pytest
from pymodbus.client import AsyncModbusTlsClient

from tests.integration.relays import running
from zonegate.controlplane.pki import DevPki, generate
from zonegate.demo.plc import SimulatedPlc
from zonegate.demo.stack import client_ssl_context, free_port

T = TypeVar("T")
TEST_TIMEOUT = 30.0

POLICY = """\
version: 1
mode: {mode}
zones:
  cell-a: {{subnet: 192.168.10.0/24}}
devices:
  tank-plc:
    zone: cell-a
    modbus: {{host: 127.0.0.1, port: {plc_port}, units: [1], max_connections: 1, timeout: {device_timeout}}}
principals:
  operator: {{tls_role: Operator}}
  viewer: {{tls_role: Viewer}}
  auditor: {{tls_subject: "CN=norole-1,O=Plant"}}
rules:
  - id: operator-read
    principal: operator
    device: tank-plc
    allow:
      - {{functions: [read_holding_registers], holding: 0-199}}
  - id: operator-setpoints
    principal: operator
    device: tank-plc
    allow:
      - {{functions: [write_single_register, write_multiple_registers], holding: {{range: 100-109, min: 0, max: 1500}}}}
  - id: viewer-read
    principal: viewer
    device: tank-plc
    allow:
      - {{functions: [read_holding_registers], holding: 0-9}}
listeners:
  - name: l3-modbus-security
    protocol: modbus_tls
    bind: 127.0.0.1:{listen_port}
    devices: [tank-plc]
    tls: {{cert: server.crt, key: server.key, ca: ca.crt, crl: ca.crl}}
    max_outstanding: 10
    request_timeout: 5s
audit: {{path: {audit}, max_per_second: 1000}}
"""


def run(coro: Coroutine[Any, Any, T], timeout: float = TEST_TIMEOUT) -> T:
    return asyncio.run(asyncio.wait_for(coro, timeout))


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> DevPki:
    return generate(tmp_path_factory.mktemp("pki"))


class Stack:
    def __init__(self, tmp: Path, pki: DevPki, mode: str = "enforce", device_timeout: str = "2s", *,
                 relay: str = "python") -> None:
        self.pki = pki
        self.relay = relay
        self.plc_port = free_port()
        self.listen_port = free_port()
        self.audit = tmp / "audit.jsonl"
        self.policy = tmp / "policy.yaml"
        self.policy.write_text(POLICY.format(mode=mode, plc_port=self.plc_port, listen_port=self.listen_port,
                                             audit=json.dumps(str(self.audit)), device_timeout=device_timeout))

    def audit_records(self) -> list[dict[str, Any]]:
        if not self.audit.exists():
            return []
        return [json.loads(line) for line in self.audit.read_text().splitlines()]

    def client(self, name: str | None) -> AsyncModbusTlsClient:
        return AsyncModbusTlsClient("127.0.0.1", port=self.listen_port, sslctx=client_ssl_context(self.pki, name),
                                    timeout=3, retries=0, reconnect_delay=0)

    async def run(self, body: Callable[[SimulatedPlc, Any], Awaitable[T]], *, plc: bool = True) -> T:
        device = SimulatedPlc(self.plc_port, initial={0: 321, 5: 55, 150: 9})
        if plc:
            await device.start()
        try:
            async with running(self.relay, [self.policy], self.pki.directory, str(self.audit)) as conduit:
                return await body(device, conduit)
        finally:
            if plc:
                await device.stop()


def test_operator_reads_and_writes_reach_the_plc(tmp_path: Path, pki: DevPki, relay: str) -> None:
    stack = Stack(tmp_path, pki, relay=relay)

    async def body(plc: SimulatedPlc, conduit: Any) -> None:
        client = stack.client("operator")
        assert await client.connect()
        try:
            read = await client.read_holding_registers(0, count=6, device_id=1)
            assert not read.isError()
            assert read.registers == [321, 0, 0, 0, 0, 55]
            wrote = await client.write_register(101, 1200, device_id=1)
            assert not wrote.isError()
            again = await client.read_holding_registers(101, count=1, device_id=1)
            assert again.registers == [1200]
        finally:
            client.close()
        assert plc.seen[3] == 2 and plc.seen[6] == 1

    run(stack.run(body))
    (write,) = [r for r in stack.audit_records() if r["verdict"] == "allow"]
    assert write["function"] == "write_single_register" and write["values"] == [1200]
    assert write["principal"]["role"] == "Operator" and write["rule"] == "operator-setpoints"


def test_denied_requests_answer_01_and_never_reach_the_plc(
    tmp_path: Path, pki: DevPki, relay: str
) -> None:
    stack = Stack(tmp_path, pki, relay=relay)

    async def body(plc: SimulatedPlc, conduit: Any) -> None:
        client = stack.client("operator")
        assert await client.connect()
        try:
            out_of_range = await client.write_register(101, 2000, device_id=1)
            assert out_of_range.isError() and out_of_range.exception_code == 0x01
            wrong_address = await client.write_register(5, 1, device_id=1)
            assert wrong_address.isError() and wrong_address.exception_code == 0x01
            coils = await client.read_coils(0, count=8, device_id=1)
            assert coils.isError() and coils.exception_code == 0x01
        finally:
            client.close()
        assert plc.requests_seen == 0

    run(stack.run(body))
    reasons = [r["reason"] for r in stack.audit_records()]
    assert reasons == ["value_out_of_bounds", "address_out_of_range", "function_not_allowed"]


def test_monitor_mode_forwards_would_deny_but_never_malformed(
    tmp_path: Path, pki: DevPki, relay: str
) -> None:
    stack = Stack(tmp_path, pki, mode="monitor", relay=relay)

    async def body(plc: SimulatedPlc, conduit: Any) -> None:
        client = stack.client("operator")
        assert await client.connect()
        try:
            forwarded = await client.write_register(101, 2000, device_id=1)
            assert not forwarded.isError()  # enforce would refuse it; monitor forwards and records
            assert (await client.read_holding_registers(101, count=1, device_id=1)).registers == [2000]
        finally:
            client.close()
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", stack.listen_port, ssl=client_ssl_context(pki, "operator"), server_hostname="127.0.0.1"
        )
        # read holding registers with quantity 0: malformed (bad_quantity), exception 03 in both modes
        writer.write(bytes.fromhex("0042 0000 0006 01 03 0000 0000"))
        header = await asyncio.wait_for(reader.readexactly(9), 5)
        writer.close()
        assert header == bytes.fromhex("0042 0000 0003 01 83 03")
        assert plc.seen[6] == 1 and plc.seen[3] == 1

    run(stack.run(body))
    records = stack.audit_records()
    assert [(r["verdict"], r["reason"]) for r in records] == [
        ("would_deny", "value_out_of_bounds"), ("deny", "malformed")]
    assert records[1]["malformed"] == "bad_quantity" and records[1]["exception"] == 3


def test_unit_no_device_holds_is_refused(tmp_path: Path, pki: DevPki, relay: str) -> None:
    stack = Stack(tmp_path, pki, relay=relay)

    async def body(plc: SimulatedPlc, conduit: Any) -> None:
        client = stack.client("operator")
        assert await client.connect()
        try:
            reply = await client.read_holding_registers(0, count=1, device_id=9)
            assert reply.isError() and reply.exception_code == 0x01
        finally:
            client.close()
        assert plc.requests_seen == 0

    run(stack.run(body))
    (record,) = stack.audit_records()
    assert record["device"] is None and record["reason"] == "no_matching_rule"


def test_viewer_role_is_limited_to_its_rule(tmp_path: Path, pki: DevPki, relay: str) -> None:
    stack = Stack(tmp_path, pki, relay=relay)

    async def body(plc: SimulatedPlc, conduit: Any) -> None:
        client = stack.client("viewer")
        assert await client.connect()
        try:
            assert (await client.read_holding_registers(5, count=1, device_id=1)).registers == [55]
            beyond = await client.read_holding_registers(5, count=10, device_id=1)  # 5..14, rule allows 0-9
            assert beyond.isError() and beyond.exception_code == 0x01
        finally:
            client.close()
        assert plc.seen[3] == 1

    run(stack.run(body))


def test_reload_resolves_open_connections_again(tmp_path: Path, pki: DevPki, relay: str) -> None:
    """After a reload an open connection's next request is decided under the new policy's principals."""
    from zonegate.controlplane.supervisor import load_settings

    stack = Stack(tmp_path, pki, relay=relay)
    moved = tmp_path / "moved.yaml"
    moved.write_text(stack.policy.read_text().replace("operator: {tls_role: Operator}",
                                                      "operator: {tls_role: [Operator, Viewer]}")
                     .replace("viewer: {tls_role: Viewer}", "viewer: {tls_role: Nobody}"))

    async def body(plc: SimulatedPlc, conduit: Any) -> None:
        client = stack.client("viewer")
        assert await client.connect()
        try:
            refused = await client.write_register(101, 7, device_id=1)
            assert refused.isError() and refused.exception_code == 0x01
            conduit.reload(load_settings([moved], pki.directory))
            allowed = await client.write_register(101, 7, device_id=1)  # same connection, now operator
            assert not allowed.isError()
        finally:
            client.close()
        assert plc.seen[6] == 1

    run(stack.run(body))
    assert [r["principal"]["name"] for r in stack.audit_records()] == ["viewer", "operator"]


def test_reload_that_does_not_build_keeps_the_old_policy(tmp_path: Path, pki: DevPki, relay: str) -> None:
    """A new policy whose listener key anyone may read is refused whole: old rules, old certificates."""
    from zonegate.controlplane.supervisor import load_settings
    from zonegate.controlplane.tls import TlsConfigError

    stack = Stack(tmp_path, pki, relay=relay)
    loose = tmp_path / "loose.key"
    loose.write_bytes(pki.key("server").read_bytes())
    loose.chmod(0o644)
    bad = tmp_path / "bad.yaml"
    bad.write_text(stack.policy.read_text().replace("key: server.key", f"key: {loose}")
                   .replace("write_single_register, write_multiple_registers", "mask_write_register"))

    async def body(plc: SimulatedPlc, conduit: Any) -> None:
        client = stack.client("operator")
        assert await client.connect()
        try:
            assert not (await client.write_register(101, 7, device_id=1)).isError()
            with pytest.raises(TlsConfigError, match="private key mode is 0644"):
                conduit.reload(load_settings([bad], pki.directory))
            assert not (await client.write_register(101, 8, device_id=1)).isError()  # the old rules still
        finally:
            client.close()
        fresh = stack.client("operator")  # and a new connection still gets the old listener's TLS
        assert await fresh.connect()
        try:
            assert (await fresh.read_holding_registers(101, count=1, device_id=1)).registers == [8]
        finally:
            fresh.close()
        assert plc.seen[6] == 2

    run(stack.run(body))
