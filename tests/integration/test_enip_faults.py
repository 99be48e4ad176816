"""EtherNet/IP conduit faults: a dead device, a slow one, one that answers what was not asked, one with no
session to spare, and clients whose framing cannot be followed. Each gets a specific answer, is counted,
and never lets anything else through or stalls the other clients. Each runs against both relays (Python and
Rust: the `relay` fixture)."""

from __future__ import annotations

import asyncio
import struct
from pathlib import Path

import pytest

from tests.integration import enip_sim as wire
from tests.integration.test_enip_conduit import Session, Stack, ints, run
from zonegate.controlplane.pki import DevPki, generate
from zonegate.demo.stack import client_ssl_context

GATEWAY_UNREACHABLE = (0x01, (0x0204,))  # connection failure, unconnected request timed out


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> DevPki:
    return generate(tmp_path_factory.mktemp("pki"))


def test_dead_device_answers_connection_failure_0204(tmp_path: Path, pki: DevPki, relay: str) -> None:
    stack = Stack(tmp_path, pki, relay=relay)

    async def body(stack: Stack) -> None:
        session = await Session.open(stack.tls_port, client_ssl_context(pki, "operator"))
        try:
            for n in range(2):  # the connect failure, then the backoff answering at once
                reply = await session.rr(wire.unconnected_send(wire.read_tag("Line1_Speed", n)))
                assert reply.service == 0xD2 and (reply.general_status, reply.extended) == GATEWAY_UNREACHABLE
            identity = await session.exchange(wire.header(0x63, b"", 0))
            assert identity.status == 0 and identity.frame[24:] == b"\x00\x00"  # nothing learned, no item
        finally:
            await session.close()
        assert stack.sample("zonegate_upstream_faults_total", device="press-plc", kind="connect_failed") == 1
        assert stack.sample("zonegate_upstream_up", device="press-plc") == 0

    run(stack.run(body, device=False))


def test_slow_device_times_out_and_the_late_reply_is_dropped(tmp_path: Path, pki: DevPki, relay: str) -> None:
    stack = Stack(tmp_path, pki, relay=relay, device_timeout="300ms", delay=0.8)

    async def body(stack: Stack) -> None:
        session = await Session.open(stack.tls_port, client_ssl_context(pki, "operator"))
        try:
            late = await session.rr(wire.read_tag("Line1_Speed", 0), context=b"slow-one")
            assert (late.general_status, late.extended) == GATEWAY_UNREACHABLE and late.service == 0xCC
            # the device's late answer to it matches nothing in flight any more: dropped, counted
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 10
            while stack.sample("zonegate_upstream_faults_total", device="press-plc", kind="unmatched_reply") < 1:
                assert loop.time() < deadline, "the late reply never came"
                await asyncio.sleep(0.02)
        finally:
            await session.close()
        assert stack.sample("zonegate_upstream_faults_total", device="press-plc", kind="timeout") == 1

    run(stack.run(body))


def test_a_late_reply_is_never_taken_for_a_later_message_under_the_same_context(
    tmp_path: Path, pki: DevPki, relay: str
) -> None:
    # Reads of Line1_Speed[7] keep the device busy past its timeout; other messages do not. One device session
    # (max_connections 1): the client's own link, on either relay.
    stack = Stack(tmp_path, pki, relay=relay, device_timeout="600ms", delay=0.9,
                  slow=wire.symbol("Line1_Speed", 7), max_connections=1)

    async def body(stack: Stack) -> None:
        session = await Session.open(stack.tls_port, client_ssl_context(pki, "operator"))
        try:
            assert (await session.rr(wire.write_tag("Line1_Speed", 1, values=(4321,)))).general_status == 0
            late = await session.rr(wire.read_tag("Line1_Speed", 7), context=b"same-ctx")
            assert (late.general_status, late.extended) == GATEWAY_UNREACHABLE
            # Sent under the same context while the device still works on the first read: the device's late
            # reply to that one (Line1_Speed[7]: 0) comes first and answers nothing; this read gets its own.
            again = await session.rr(wire.read_tag("Line1_Speed", 1), context=b"same-ctx")
            assert ints(again) == [4321]
        finally:
            await session.close()
        assert stack.sample("zonegate_upstream_faults_total", device="press-plc", kind="unmatched_reply") == 1

    run(stack.run(body))


class MisbehavingDevice:
    """A device that registers sessions, then answers every request with a stranger's sender context."""

    def __init__(self) -> None:
        self.server: asyncio.Server | None = None
        self.requests = 0

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return int(self.server.sockets[0].getsockname()[1])

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readexactly(24)
                body = await reader.readexactly(int.from_bytes(head[2:4], "little"))
                command = int.from_bytes(head[0:2], "little")
                if command == 0x65:
                    writer.write(head[:4] + struct.pack("<I", 0xD00D) + head[8:] + body)
                elif command == 0x6F:
                    self.requests += 1
                    reply = wire.send_rr_data(bytes((0xCC, 0, 0, 0)) + struct.pack("<Hh", wire.INT, 1), 0xD00D,
                                              b"stranger")
                    writer.write(reply)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()


def test_replies_that_answer_nothing_are_dropped(tmp_path: Path, pki: DevPki, relay: str) -> None:
    device = MisbehavingDevice()

    async def body(stack: Stack) -> None:
        session = await Session.open(stack.tls_port, client_ssl_context(pki, "operator"))
        try:
            reply = await session.rr(wire.read_tag("Line1_Speed", 0), context=b"mine!!!!")
            assert (reply.general_status, reply.extended) == GATEWAY_UNREACHABLE  # never the stranger's answer
        finally:
            await session.close()
        assert device.requests == 1
        assert stack.sample("zonegate_upstream_faults_total", device="press-plc", kind="unmatched_reply") == 1

    async def main() -> None:
        port = await device.start()
        stack = Stack(tmp_path, pki, relay=relay, device_timeout="300ms", device_port=port)
        try:
            await stack.run(body, device=False)
        finally:
            await device.stop()

    run(main())


def test_a_device_with_no_session_to_spare_answers_resource_unavailable(tmp_path: Path, pki: DevPki,
                                                                        relay: str) -> None:
    stack = Stack(tmp_path, pki, relay=relay, max_connections=1)

    async def body(stack: Stack) -> None:
        first = await Session.open(stack.tls_port, client_ssl_context(pki, "operator"))
        second = await Session.open(stack.tls_port, client_ssl_context(pki, "operator"))
        try:
            assert ints(await first.rr(wire.read_tag("Line1_Speed", 0))) == [0]
            busy = await second.rr(wire.read_tag("Line1_Speed", 0))
            assert busy.general_status == 0x02
            # A Forward Open zonegate could not send opened nothing: the client may try the same one again.
            busy = await second.rr(wire.forward_open(serial=0x51))
            assert busy.general_status == 0x02
        finally:
            await first.close()
        # the first client's session is closed with it: the second gets its own now, and its retried Forward
        # Open is no duplicate
        try:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 10
            while True:
                reply = await second.rr(wire.forward_open(serial=0x51))
                if reply.general_status == 0:
                    break
                assert reply.general_status == 0x02, reply.cip.hex()
                assert loop.time() < deadline
                await asyncio.sleep(0.02)
            assert ints(await second.rr(wire.read_tag("Line1_Speed", 0))) == [0]
        finally:
            await second.close()

    run(stack.run(body))


def test_framing_one_message_in_pieces_and_many_in_one_write(tmp_path: Path, pki: DevPki, relay: str) -> None:
    stack = Stack(tmp_path, pki, relay=relay)

    async def body(stack: Stack) -> None:
        session = await Session.open(stack.tls_port, client_ssl_context(pki, "operator"))
        try:
            frame = wire.send_rr_data(wire.read_tag("Line1_Speed", 0), session.handle, b"pieces!!")
            for i in range(0, len(frame), 7):
                await session.send(frame[i : i + 7])
            assert ints(await session.read()) == [0]
            batch = b"".join(wire.send_rr_data(wire.read_tag("Line1_Speed", n), session.handle, b"batch--%d" % n)
                             for n in range(3))
            await session.send(batch)
            contexts = sorted([(await session.read()).context for _ in range(3)])
            assert contexts == [b"batch--0", b"batch--1", b"batch--2"]
            # one near the largest message EtherNet/IP frames is read whole and decided (too many elements)
            big = await session.rr(wire.write_tag("Line1_Speed", 0, values=tuple(range(30000))), context=b"big-one!")
            assert big.general_status == 0x0F
            # a length beyond what EtherNet/IP frames cannot be followed: the connection is closed
            await session.send(struct.pack("<HH", 0x6F, 0xFFFF) + bytes(20))
            with pytest.raises((asyncio.IncompleteReadError, ConnectionError)):
                await session.read()
        finally:
            await session.close()
        assert stack.sample("zonegate_framing_errors_total", conduit="l3-enip", reason="length") == 1

    run(stack.run(body))
