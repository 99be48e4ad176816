"""OPC UA converter, upstream stage: request/reply over the Modbus conduit's device pools.

The converter shares the conduit's `DevicePool` per device (PLCs have few connection slots), so its
polls and writes queue beside Modbus clients' requests. The pool answers through a sink callback;
`PoolLink` turns that into an awaitable reply, bounded by the caller's timeout. Faults come back as
Modbus exception replies (0x0A device unreachable, 0x0B no answer), never as a hang.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping

from zonegate.dataplane.config import DeviceSettings
from zonegate.dataplane.upstream import GATEWAY_PATH_UNAVAILABLE, DevicePool, Pending
from zonegate.engine import exception_response


class _FutureSink:
    """Resolves one future with the pool's answer."""

    __slots__ = ("future",)

    def __init__(self, future: asyncio.Future[bytes]) -> None:
        self.future = future

    def deliver(self, adu: bytes, pending: Pending) -> None:
        if not self.future.done():
            self.future.set_result(adu)


PoolSource = Mapping[str, DevicePool] | Callable[[], Mapping[str, DevicePool]]


class PoolLink:
    """A `DeviceLink` over device pools: the conduit's when given, else pools of its own.

    `pools` may be a callable returning the conduit's current pools: a reload replaces them, and the
    converter follows without being told.
    """

    def __init__(self, pools: PoolSource | None = None, devices: Mapping[str, DeviceSettings] | None = None) -> None:
        self.source = pools
        self.devices = dict(devices or {})
        self.own: dict[str, DevicePool] = {}

    def shared(self) -> Mapping[str, DevicePool]:
        if self.source is None:
            return {}
        return self.source() if callable(self.source) else self.source

    def pool(self, device: str) -> DevicePool | None:
        pool = self.shared().get(device) or self.own.get(device)
        if pool is None and device in self.devices:
            pool = self.own[device] = DevicePool(self.devices[device])
        return pool

    async def exchange(self, device: str, adu: bytes, timeout: float) -> bytes:
        pool = self.pool(device)
        if pool is None or pool.closed:
            return exception_response(adu, GATEWAY_PATH_UNAVAILABLE)
        future: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        now = time.monotonic()
        pool.submit(Pending(adu, _FutureSink(future), now, now + timeout))
        # The pool answers 0x0B at its deadline; the wait is bounded a little beyond it all the same.
        return await asyncio.wait_for(future, timeout + 1.0)

    def close(self) -> None:
        for pool in self.own.values():
            pool.close()
        self.own.clear()
