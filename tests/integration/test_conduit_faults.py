"""Faults on both sides of the inbound conduit: dead, silent, resetting and confused devices; clients that
send garbage, absurd lengths or one byte at a time; and many clients sharing one device connection. Each
runs through both relays (Python and Rust)."""

from __future__ import annotations

import asyncio
import json
import ssl
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from tests.integration.relays import running
from tests.integration.test_conduit import run
from tests.integration.test_conduit_tls import exchange, until
from zonegate.controlplane.pki import DevPki, generate
from zonegate.demo.plc import SimulatedPlc
from zonegate.demo.stack import client_ssl_context, free_port

POLICY = """\
version: 1
zones:
  cell-a: {{subnet: 192.168.10.0/24}}
devices:
  plc-a:
    zone: cell-a
    modbus: {{host: 127.0.0.1, port: {port_a}, units: [1], timeout: {timeout_a}}}
  plc-b:
    zone: cell-a
    modbus: {{host: 127.0.0.1, port: {port_b}, units: [2], timeout: 2s}}
principals:
  operator: {{tls_role: Operator}}
rules:
  - id: operator-read
    principal: operator
    devices: [plc-a, plc-b]
    allow:
      - {{functions: [read_holding_registers], holding: 0-199}}
listeners:
  - name: l3-modbus-security
    protocol: modbus_tls
    bind: 127.0.0.1:{listen_port}
    devices: [plc-a, plc-b]
    tls: {{cert: server.crt, key: server.key, ca: ca.crt}}
    max_outstanding: {max_outstanding}
    idle_timeout: {idle_timeout}
audit: {{path: {audit}}}
"""


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> DevPki:
    return generate(tmp_path_factory.mktemp("pki"))


def read_request(tid: int, address: int, unit: int = 1, count: int = 1) -> bytes:
    """Read holding registers: tid, protocol 0, length 6, unit, fc 3, start, quantity."""
    header = tid.to_bytes(2, "big") + b"\x00\x00\x00\x06" + bytes((unit, 3))
    return header + address.to_bytes(2, "big") + count.to_bytes(2, "big")


def exception_reply(tid: int, unit: int, code: int) -> bytes:
    return tid.to_bytes(2, "big") + b"\x00\x00\x00\x03" + bytes((unit, 0x83, code))


class Rig:
    """A conduit in front of two device ports (units 1 and 2), with peers the test chooses."""

    def __init__(self, tmp: Path, pki: DevPki, *, max_outstanding: int = 10, idle_timeout: str = "300s",
                 timeout_a: str = "2s", relay: str = "python") -> None:
        self.pki = pki
        self.relay = relay
        self.port_a, self.port_b, self.listen_port = free_port(), free_port(), free_port()
        self.policy = tmp / "policy.yaml"
        self.policy.write_text(POLICY.format(port_a=self.port_a, port_b=self.port_b, listen_port=self.listen_port,
                                             max_outstanding=max_outstanding, idle_timeout=idle_timeout,
                                             timeout_a=timeout_a,
                                             audit=json.dumps(str(tmp / "audit.jsonl"))))

    def context(self) -> ssl.SSLContext:
        return client_ssl_context(self.pki, "operator")

    async def run(self, body: Callable[[Any], Awaitable[None]]) -> None:
        audit = str(self.policy.parent / "audit.jsonl")
        async with running(self.relay, [self.policy], self.pki.directory, audit) as c:
            await body(c)

    async def connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await asyncio.wait_for(
            asyncio.open_connection("127.0.0.1", self.listen_port, ssl=self.context(), server_hostname="127.0.0.1"), 5
        )


async def read_adu(reader: asyncio.StreamReader) -> bytes:
    header = await asyncio.wait_for(reader.readexactly(6), 5)
    return header + await asyncio.wait_for(reader.readexactly(int.from_bytes(header[4:6], "big")), 5)


async def raw_device(port: int, handler: Callable[[bytes, asyncio.StreamWriter], Awaitable[None]],
                     connections: set[asyncio.StreamWriter] | None = None) -> asyncio.Server:
    """A misbehaving device: `handler` gets each request ADU it receives; `connections` (if given) holds the
    connections it has open."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if connections is not None:
            connections.add(writer)
        try:
            while True:
                header = await reader.readexactly(6)
                adu = header + await reader.readexactly(int.from_bytes(header[4:6], "big"))
                await handler(adu, writer)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            if connections is not None:
                connections.discard(writer)
            writer.close()

    return await asyncio.start_server(serve, "127.0.0.1", port)


def faults(conduit: Any, device: str, kind: str) -> float:
    return conduit.metrics.registry.get_sample_value(
        "zonegate_upstream_faults_total", {"device": device, "kind": kind}
    ) or 0.0


def upstream_up(conduit: Any, device: str) -> float | None:
    return conduit.metrics.registry.get_sample_value("zonegate_upstream_up", {"device": device})


def test_device_down_answers_0a_and_is_used_again_when_it_comes_back(tmp_path: Path, pki: DevPki, relay: str) -> None:
    rig = Rig(tmp_path, pki, relay=relay)

    async def body(conduit: Any) -> None:
        reply = await exchange(rig.listen_port, rig.context(), read_request(9, 0))
        assert reply == exception_reply(9, 1, 0x0A)
        assert conduit.metrics.registry.get_sample_value("zonegate_upstream_up", {"device": "plc-a"}) == 0
        plc = SimulatedPlc(rig.port_a, initial={0: 77})
        await plc.start()
        try:
            deadline = asyncio.get_running_loop().time() + 10
            while True:  # the device is retried once its backoff has passed
                reply = await exchange(rig.listen_port, rig.context(), read_request(9, 0))
                if reply != exception_reply(9, 1, 0x0A) or asyncio.get_running_loop().time() > deadline:
                    break
            assert reply == bytes.fromhex("0009 0000 0005 01 03 02 004d")
            assert conduit.metrics.registry.get_sample_value("zonegate_upstream_up", {"device": "plc-a"}) == 1
        finally:
            await plc.stop()

    run(rig.run(body))


def test_silent_device_answers_0b_without_stalling_the_other_device(tmp_path: Path, pki: DevPki, relay: str) -> None:
    rig = Rig(tmp_path, pki, relay=relay, timeout_a="1500ms")

    async def silent(adu: bytes, writer: asyncio.StreamWriter) -> None:
        return None

    async def body(conduit: Any) -> None:
        server = await raw_device(rig.port_a, silent)
        plc_b = SimulatedPlc(rig.port_b, units=(2,), initial={3: 33})
        await plc_b.start()
        try:
            reader, writer = await rig.connect()
            writer.write(read_request(1, 0, unit=1) + read_request(2, 3, unit=2))
            first = await read_adu(reader)
            second = await read_adu(reader)
            # plc-b answers at once, not held up behind plc-a, whose request times out after 1.5 s with 0x0B
            assert first == bytes.fromhex("0002 0000 0005 02 03 02 0021")
            assert second == exception_reply(1, 1, 0x0B)
            writer.close()
            assert faults(conduit, "plc-a", "timeout") == 1
        finally:
            server.close()
            await plc_b.stop()

    run(rig.run(body))


def test_device_reset_mid_reply_answers_0b(tmp_path: Path, pki: DevPki, relay: str) -> None:
    rig = Rig(tmp_path, pki, relay=relay)

    async def half_then_reset(adu: bytes, writer: asyncio.StreamWriter) -> None:
        writer.write(adu[0:2] + b"\x00\x00\x00\x05\x01")  # the start of a reply, then a reset
        await writer.drain()
        writer.transport.abort()

    async def body(conduit: Any) -> None:
        server = await raw_device(rig.port_a, half_then_reset)
        try:
            reply = await exchange(rig.listen_port, rig.context(), read_request(4, 0))
            assert reply == exception_reply(4, 1, 0x0B)
            assert faults(conduit, "plc-a", "connection_lost") == 1
        finally:
            server.close()

    run(rig.run(body))


def test_reply_with_wrong_tid_function_or_byte_count_is_dropped_and_counted(
    tmp_path: Path, pki: DevPki, relay: str
) -> None:
    rig = Rig(tmp_path, pki, relay=relay, timeout_a="300ms")

    async def wrong_tid(adu: bytes, writer: asyncio.StreamWriter) -> None:
        tid = (int.from_bytes(adu[0:2], "big") + 1) & 0xFFFF
        writer.write(tid.to_bytes(2, "big") + b"\x00\x00\x00\x05\x01\x03\x02\x00\x01")

    async def wrong_function(adu: bytes, writer: asyncio.StreamWriter) -> None:
        writer.write(adu[0:2] + b"\x00\x00\x00\x05\x01\x04\x02\x00\x01")

    async def bad_byte_count(adu: bytes, writer: asyncio.StreamWriter) -> None:
        writer.write(adu[0:2] + b"\x00\x00\x00\x05\x01\x03\x05\x00\x01")  # says 5 bytes, 2 follow

    async def body(conduit: Any) -> None:
        for handler in (wrong_tid, wrong_function, bad_byte_count):
            connections: set[asyncio.StreamWriter] = set()
            server = await raw_device(rig.port_a, handler, connections)
            try:
                reply = await exchange(rig.listen_port, rig.context(), read_request(5, 0))
                assert reply == exception_reply(5, 1, 0x0B)
            finally:
                server.close()
                # The next handler listens on the same port afresh: the device drops zonegate's connection
                # and zonegate reconnects at the next request.
                for writer in list(connections):
                    writer.transport.abort()
                await server.wait_closed()
            await until(lambda: upstream_up(conduit, "plc-a") == 0)
        assert faults(conduit, "plc-a", "unmatched_reply") == 3

    run(rig.run(body))


def test_fifty_clients_with_colliding_transaction_ids_get_their_own_replies(
    tmp_path: Path, pki: DevPki, relay: str
) -> None:
    rig = Rig(tmp_path, pki, relay=relay)
    values = {i: 1000 + 7 * i for i in range(200)}

    async def client(n: int) -> None:
        reader, writer = await rig.connect()
        try:
            for i in range(10):
                address = (n * 10 + i) % 200
                writer.write(read_request(1, address))  # every client uses transaction id 1
                reply = await read_adu(reader)
                assert reply == bytes.fromhex("0001 0000 0005 01 03 02") + values[address].to_bytes(2, "big")
        finally:
            writer.close()

    async def body(conduit: Any) -> None:
        plc = SimulatedPlc(rig.port_a, initial=values)
        await plc.start()
        try:
            await asyncio.gather(*(client(n) for n in range(50)))
            assert plc.seen[3] == 500
            assert plc.server is not None and len(plc.server.active_connections) == 1  # all on one connection
        finally:
            await plc.stop()

    run(rig.run(body))


def test_pipelined_client_beyond_max_outstanding_gets_every_reply(tmp_path: Path, pki: DevPki, relay: str) -> None:
    rig = Rig(tmp_path, pki, relay=relay, max_outstanding=3)

    async def body(conduit: Any) -> None:
        plc = SimulatedPlc(rig.port_a, initial={i: i * 3 for i in range(200)})
        await plc.start()
        try:
            reader, writer = await rig.connect()
            writer.write(b"".join(read_request(100 + i, i) for i in range(40)))
            replies = {(await read_adu(reader))[0:2] for _ in range(40)}
            assert replies == {(100 + i).to_bytes(2, "big") for i in range(40)}
            writer.close()
        finally:
            await plc.stop()

    run(rig.run(body))


def test_garbage_after_a_valid_adu_answers_it_then_closes(tmp_path: Path, pki: DevPki, relay: str) -> None:
    rig = Rig(tmp_path, pki, relay=relay)

    async def body(conduit: Any) -> None:
        plc = SimulatedPlc(rig.port_a, initial={0: 5})
        await plc.start()
        try:
            reader, writer = await rig.connect()
            writer.write(read_request(3, 0) + b"\x00\x01\xde\xad\x00\x06\x01\x03\x00\x00\x00\x01")
            assert await read_adu(reader) == bytes.fromhex("0003 0000 0005 01 03 02 0005")
            assert await asyncio.wait_for(reader.read(), 5) == b""  # closed: a bad stream cannot resync
            writer.close()
            await until(lambda: (conduit.metrics.registry.get_sample_value(
                "zonegate_framing_errors_total", {"conduit": "l3-modbus-security", "reason": "protocol_id"}) or 0) == 1)
            assert plc.seen[3] == 1
        finally:
            await plc.stop()

    run(rig.run(body))


def test_length_65535_closes_the_connection(tmp_path: Path, pki: DevPki, relay: str) -> None:
    rig = Rig(tmp_path, pki, relay=relay)

    async def body(conduit: Any) -> None:
        reader, writer = await rig.connect()
        writer.write(b"\x00\x01\x00\x00\xff\xff\x01\x03")
        assert await asyncio.wait_for(reader.read(), 5) == b""
        writer.close()
        await until(lambda: (conduit.metrics.registry.get_sample_value(
            "zonegate_framing_errors_total", {"conduit": "l3-modbus-security", "reason": "length"}) or 0) == 1)

    run(rig.run(body))


def test_one_byte_at_a_time_is_reassembled_and_a_stalled_client_times_out(
    tmp_path: Path, pki: DevPki, relay: str
) -> None:
    rig = Rig(tmp_path, pki, relay=relay, idle_timeout="1s")

    async def body(conduit: Any) -> None:
        plc = SimulatedPlc(rig.port_a, initial={2: 222})
        await plc.start()
        try:
            reader, writer = await rig.connect()
            for byte in read_request(6, 2):
                writer.write(bytes((byte,)))
                await writer.drain()
                await asyncio.sleep(0.02)  # pacing the sender, not waiting for the server
            assert await read_adu(reader) == bytes.fromhex("0006 0000 0005 01 03 02 00de")
            writer.write(read_request(7, 2)[:5])  # half a header, then nothing more
            assert await asyncio.wait_for(reader.read(), 5) == b""  # closed by the idle sweep
            writer.close()
        finally:
            await plc.stop()

    run(rig.run(body))
