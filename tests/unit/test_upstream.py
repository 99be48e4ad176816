"""Upstream pools against real device sockets: transaction-id remapping, one request at a time unless the
device allows pipelining, at most max_connections, and fault answers instead of stalls."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

from zonegate.dataplane.config import DeviceSettings
from zonegate.dataplane.upstream import DevicePool, Pending, PoolObserver
from zonegate.demo.stack import free_port

T = TypeVar("T")


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(asyncio.wait_for(coro, 20))


def request(tid: int, address: int, unit: int = 1) -> bytes:
    """Read one holding register: tid, protocol 0, length 6, unit, fc 3, start, quantity 1."""
    header = tid.to_bytes(2, "big") + bytes.fromhex("0000 0006") + bytes((unit, 3))
    return header + address.to_bytes(2, "big") + b"\x00\x01"


class Sink:
    """A client stand-in that records what the pool delivers to it."""

    def __init__(self, expected: int) -> None:
        self.replies: list[bytes] = []
        self.expected = expected
        self.done = asyncio.Event()

    def deliver(self, adu: bytes, pending: Pending) -> None:
        self.replies.append(adu)
        if len(self.replies) >= self.expected:
            self.done.set()


class Device:
    """A real TCP device that answers every register read with value = address."""

    def __init__(self, batch: int = 1) -> None:
        self.batch = batch  # answer only once this many requests are waiting
        self.connections = 0
        self.max_waiting = 0
        self.seen_tids: list[int] = []
        self.server: asyncio.Server | None = None

    async def start(self) -> int:
        self.server = await asyncio.start_server(self.serve, "127.0.0.1", 0)
        return int(self.server.sockets[0].getsockname()[1])

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        waiting: list[bytes] = []
        try:
            while True:
                header = await reader.readexactly(6)
                adu = header + await reader.readexactly(int.from_bytes(header[4:6], "big"))
                self.seen_tids.append(int.from_bytes(adu[0:2], "big"))
                waiting.append(adu)
                self.max_waiting = max(self.max_waiting, len(waiting))
                if len(waiting) >= self.batch:
                    for item in waiting:
                        writer.write(item[0:2] + b"\x00\x00\x00\x05" + item[6:8] + b"\x02" + item[8:10])
                    waiting.clear()
                    await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


def settings(port: int, **overrides: Any) -> DeviceSettings:
    values: dict[str, Any] = {"name": "plc", "host": "127.0.0.1", "port": port, "units": ((1, 1),), "timeout": 2.0}
    values.update(overrides)
    return DeviceSettings(**values)


async def submit_all(pool: DevicePool, adus: list[bytes]) -> Sink:
    sink = Sink(len(adus))
    for adu in adus:
        pool.submit(Pending(adu, sink, time.monotonic(), time.monotonic() + 5))
    await asyncio.wait_for(sink.done.wait(), 10)
    return sink


def with_device(device: Device, body: Callable[[int], Awaitable[None]]) -> None:
    async def main() -> None:
        port = await device.start()
        try:
            await body(port)
        finally:
            assert device.server is not None
            device.server.close()

    run(main())


def test_colliding_client_tids_are_remapped_and_restored() -> None:
    device = Device()

    async def body(port: int) -> None:
        pool = DevicePool(settings(port))
        sink = await submit_all(pool, [request(7, address) for address in range(20)])
        # every reply carries the client's tid 7 again, and its own value
        assert sorted(sink.replies) == sorted(
            bytes.fromhex("0007 0000 0005 01 03 02") + a.to_bytes(2, "big") for a in range(20)
        )
        assert len(set(device.seen_tids)) == 20  # the device saw 20 distinct transaction ids
        pool.close()

    with_device(device, body)


def test_without_pipelining_one_request_at_a_time() -> None:
    device = Device()

    async def body(port: int) -> None:
        pool = DevicePool(settings(port, pipelining=False))
        await submit_all(pool, [request(i, i) for i in range(30)])
        assert device.max_waiting == 1
        pool.close()

    with_device(device, body)


def test_pipelining_device_gets_requests_in_parallel() -> None:
    device = Device(batch=4)  # answers only when four requests are waiting

    async def body(port: int) -> None:
        pool = DevicePool(settings(port, pipelining=True))
        sink = await submit_all(pool, [request(i, i) for i in range(16)])
        assert len(sink.replies) == 16 and device.max_waiting == 4
        pool.close()

    with_device(device, body)


def test_pipeline_depth_bounds_the_requests_in_flight() -> None:
    device = Device(batch=5)  # answers only when five requests are waiting: more in flight would show

    async def body(port: int) -> None:
        pool = DevicePool(settings(port, pipelining=True, pipeline_depth=5))
        sink = await submit_all(pool, [request(i, i) for i in range(25)])
        assert len(sink.replies) == 25 and device.max_waiting == 5
        pool.close()

    with_device(device, body)


def test_a_device_that_needs_pipelining_times_out_without_it() -> None:
    device = Device(batch=2)

    async def body(port: int) -> None:
        pool = DevicePool(settings(port, pipelining=False, timeout=0.2))
        sink = await submit_all(pool, [request(1, 1)])
        assert sink.replies == [bytes.fromhex("0001 0000 0003 01 83 0b")]
        pool.close()

    with_device(device, body)


def test_at_most_max_connections() -> None:
    device = Device()

    async def body(port: int) -> None:
        pool = DevicePool(settings(port, max_connections=2))
        sink = await submit_all(pool, [request(i, i) for i in range(50)])
        assert len(sink.replies) == 50
        assert device.connections == 2 and len(pool.connections) == 2
        pool.close()

    with_device(device, body)


def test_unreachable_device_backs_off_and_answers_0a_at_once() -> None:
    class Faults(PoolObserver):
        def __init__(self) -> None:
            self.kinds: list[str] = []

        def upstream_fault(self, device: str, kind: str) -> None:
            self.kinds.append(kind)

    async def main() -> None:
        port = free_port()  # nothing listens there
        faults = Faults()
        pool = DevicePool(settings(port), observer=faults)
        first = await submit_all(pool, [request(1, 0)])
        assert first.replies == [bytes.fromhex("0001 0000 0003 01 83 0a")]
        second = await submit_all(pool, [request(2, 0)])  # within the backoff: answered without a connect
        assert second.replies == [bytes.fromhex("0002 0000 0003 01 83 0a")]
        # "unavailable" unless this machine took longer than the 0.1 s backoff to get here
        assert faults.kinds[0] == "connect_failed" and faults.kinds[1] in ("unavailable", "connect_failed")
        assert pool.up is False
        pool.close()

    run(main())


def test_close_answers_what_is_queued() -> None:
    async def main() -> None:
        sink = Sink(1)
        pool = DevicePool(settings(1))
        pool.queue.append(Pending(request(3, 0), sink, 0.0, 1e12))
        pool.close()
        assert sink.replies == [bytes.fromhex("0003 0000 0003 01 83 0a")]
        pool.submit(Pending(request(4, 0), sink, 0.0, 1e12))
        assert sink.replies[-1] == bytes.fromhex("0004 0000 0003 01 83 0a")

    run(main())
