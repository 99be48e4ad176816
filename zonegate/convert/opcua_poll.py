"""OPC UA converter, polling stage: device values read on each scan class, decided, then published.

Tags of one device, unit, table and scan period are coalesced into as few reads as the function code
limits allow (125 registers for FC 3/4, 2000 bits for FC 1/2). Each read is an ordinary Modbus request:
the engine decides it for the policy's poll principal (the gateway's own reads are declared, never
implied) and the same upstream pool as the Modbus conduit carries it. Each read has a slot of its own
in its scan period (`spread`), so a class's values never arrive all at once. A read that fails, is refused
or times out turns its tags Bad at once, with the time it happened; the next good read turns them
Good again. Blocks of CIP tags (table "cip") are read by name through `Poller.cip` (opcua_cip).

```
 read request ADU (FC 1-4)                 reply (FC 1-4)
 +-----+------+------+-----+----+-------+-----+   +-------+----+-----+----------------+
 | tid | 0000 | 0006 |unit | fc | start | qty |   | MBAP  | fc | n   | n data bytes   |
 +-----+------+------+-----+----+-------+-----+   +-------+----+-----+----------------+
```
"""

from __future__ import annotations

import asyncio
import bisect
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final, Protocol

from zonegate.convert.opcua_tags import BIT_TABLES, Tag, decode
from zonegate.engine import CompiledPolicy

log = logging.getLogger(__name__)

MAX_REGISTERS: Final = 125
MAX_BITS: Final = 2000
READ_FUNCTION: Final[Mapping[str, int]] = {
    "coils": 1, "discrete_inputs": 2, "holding_registers": 3, "input_registers": 4,
}

# OPC UA status codes (Part 6, StatusCode.csv) used for polled values.
GOOD: Final = 0x00000000
BAD_COMMUNICATION_ERROR: Final = 0x80050000
BAD_NO_COMMUNICATION: Final = 0x80310000
BAD_USER_ACCESS_DENIED: Final = 0x801F0000
BAD_OUT_OF_RANGE: Final = 0x803C0000
BAD_NOT_SUPPORTED: Final = 0x803D0000
BAD_DEVICE_FAILURE: Final = 0x808B0000
BAD_RESOURCE_UNAVAILABLE: Final = 0x80040000
BAD_DATA_ENCODING_INVALID: Final = 0x80380000
BAD_TIMEOUT: Final = 0x800A0000
BAD_INTERNAL_ERROR: Final = 0x80020000

# Modbus exception code -> the OPC UA status its values (or a write) get.
EXCEPTION_STATUS: Final[Mapping[int, int]] = {
    0x01: BAD_NOT_SUPPORTED,  # illegal function
    0x02: BAD_OUT_OF_RANGE,  # illegal data address
    0x03: BAD_OUT_OF_RANGE,  # illegal data value
    0x04: BAD_DEVICE_FAILURE,  # server device failure
    0x06: BAD_RESOURCE_UNAVAILABLE,  # server device busy
    0x0A: BAD_NO_COMMUNICATION,  # gateway path unavailable: the device cannot be reached
    0x0B: BAD_COMMUNICATION_ERROR,  # gateway target failed to respond
}


def exception_status(code: int) -> int:
    return EXCEPTION_STATUS.get(code, BAD_COMMUNICATION_ERROR)


@dataclass(frozen=True, slots=True)
class ReadBlock:
    """One coalesced read: a contiguous span of one table that covers every tag in `tags`."""

    device: str
    unit: int
    table: str
    start: int
    count: int
    scan: float
    tags: tuple[Tag, ...]

    @property
    def function(self) -> int:
        return READ_FUNCTION[self.table]

    def adu(self, transaction_id: int) -> bytes:
        pdu = bytes((self.function,)) + self.start.to_bytes(2, "big") + self.count.to_bytes(2, "big")
        return (
            (transaction_id & 0xFFFF).to_bytes(2, "big") + b"\x00\x00"
            + (len(pdu) + 1).to_bytes(2, "big") + bytes((self.unit,)) + pdu
        )

    def values(self, reply: bytes) -> list[int]:
        """The block's registers (or bits) from a normal reply; ValueError when it does not fit."""
        if len(reply) < 9 or reply[7] != self.function:
            raise ValueError("not a normal reply to this read")
        byte_count = reply[8]
        data = reply[9:]
        if self.table in BIT_TABLES:
            if byte_count != (self.count + 7) // 8 or len(data) != byte_count:
                raise ValueError("byte count does not match the bits asked for")
            return [(data[i // 8] >> (i % 8)) & 1 for i in range(self.count)]
        if byte_count != 2 * self.count or len(data) != byte_count:
            raise ValueError("byte count does not match the registers asked for")
        return [int.from_bytes(data[i : i + 2], "big") for i in range(0, byte_count, 2)]


def plan_reads(tags: Iterable[Tag]) -> list[ReadBlock]:
    """Coalesce tags into reads: per device, unit, scan period and table, neighbours (gaps included)
    share one read while the span stays within the function code's limit."""
    groups: dict[tuple[str, int, float, str], list[Tag]] = {}
    for tag in tags:
        if tag.cip_tag is not None:
            continue  # read by name over EtherNet/IP (opcua_cip.plan_cip_reads)
        groups.setdefault((tag.device, tag.modbus_unit, tag.scan, tag.table), []).append(tag)
    blocks: list[ReadBlock] = []
    for (device, unit, scan, table), members in sorted(groups.items()):
        limit = MAX_BITS if table in BIT_TABLES else MAX_REGISTERS
        members.sort(key=lambda t: t.address)
        current: list[Tag] = []
        start = end = 0
        for tag in members:
            if current and tag.end - start + 1 <= limit:
                current.append(tag)
                end = max(end, tag.end)
                continue
            if current:
                blocks.append(ReadBlock(device, unit, table, start, end - start + 1, scan, tuple(current)))
            current, start, end = [tag], tag.address, tag.end
        if current:
            blocks.append(ReadBlock(device, unit, table, start, end - start + 1, scan, tuple(current)))
    return blocks


class DeviceLink(Protocol):
    """Carries one request ADU to a device and returns its reply (or a 0x0A/0x0B exception reply)."""

    async def exchange(self, device: str, adu: bytes, timeout: float) -> bytes: ...


class CipBlockReader(Protocol):
    """Reads the CIP tags of one block by name (opcua_cip.CipReader)."""

    async def read(self, poller: Poller, block: ReadBlock) -> None: ...


Publish = Callable[[Tag, object, int, float], Awaitable[None]]  # tag, value (None when Bad), status, source time


# Values published between yields to the event loop: a large block's values (and asyncua's per-subscriber
# work for each) never hold up another scan class's poll or a subscription's publish for long.
PUBLISH_CHUNK: Final = 64

# Upper bounds (seconds) of the poll cycle duration histogram: from a fast loopback read to a timeout.
CYCLE_BUCKETS: Final = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class CycleStats:
    """Poll cycles of one (device, scan period): how many, and how long each took, as histogram buckets."""

    __slots__ = ("count", "total", "buckets", "last")

    def __init__(self) -> None:
        self.count = 0
        self.total = 0.0
        self.buckets = [0] * (len(CYCLE_BUCKETS) + 1)  # per bucket, not cumulative; the last is +Inf
        self.last = 0.0

    def observe(self, seconds: float) -> None:
        self.count += 1
        self.total += seconds
        self.last = seconds
        self.buckets[bisect.bisect_left(CYCLE_BUCKETS, seconds)] += 1


class PollStats:
    """Counters the metrics endpoint and the benchmark read."""

    __slots__ = ("reads", "denied", "failed", "cycles", "last_cycle_seconds", "by_group")

    def __init__(self) -> None:
        self.reads = 0
        self.denied = 0
        self.failed = 0
        self.cycles = 0
        self.last_cycle_seconds = 0.0
        self.by_group: dict[tuple[str, float], CycleStats] = {}


def spread(groups: Mapping[tuple[str, float], Sequence[ReadBlock]]) -> dict[tuple[str, float], tuple[float, float]]:
    """Per (device, scan period): the phase of its first read and the spacing of its reads, in seconds.

    Every block of one scan period gets a slot of its own, evenly over the period, one device's blocks
    after another's. Reads in step would bring every value of the class in at one instant: one burst of
    address-space writes and one large PublishResponse (encoded, encrypted and decoded while the other
    classes' changes queue behind it). Spread, each publishing interval carries a like share of the
    changes. Each tag is still read once per period, so a change still waits at most one period."""
    total: dict[float, int] = {}
    for (_, scan), blocks in groups.items():
        total[scan] = total.get(scan, 0) + len(blocks)
    seen: dict[float, int] = {}
    out = {}
    for (device, scan), blocks in groups.items():
        index = seen.get(scan, 0)
        seen[scan] = index + len(blocks)
        out[(device, scan)] = (scan * index / total[scan], scan / total[scan])
    return out


class Poller:
    """One task per (device, scan period): read every block of that group at its slot, then wait for the
    next period."""

    def __init__(
        self,
        blocks: Sequence[ReadBlock],
        policy: CompiledPolicy,
        poll_principal: str,
        link: DeviceLink,
        publish: Publish,
        timeout: float,
    ) -> None:
        self.policy = policy
        self.principal = poll_principal
        self.link = link
        self.publish = publish
        self.timeout = timeout
        self.stats = PollStats()
        self.groups: dict[tuple[str, float], list[ReadBlock]] = {}
        for block in blocks:
            self.groups.setdefault((block.device, block.scan), []).append(block)
        self.tasks: list[asyncio.Task[None]] = []
        self._tid = 0
        self.cip: CipBlockReader | None = None  # reads the blocks of CIP tags (table "cip")

    def start(self) -> None:
        """Reads start at the slots `spread` gives them over their period."""
        slots = spread(self.groups)
        for (device, scan), blocks in self.groups.items():
            self.stats.by_group[(device, scan)] = CycleStats()
            phase, spacing = slots[(device, scan)]
            task = asyncio.get_running_loop().create_task(self._run(device, scan, blocks, phase, spacing),
                                                          name=f"opcua-poll-{device}-{scan}")
            self.tasks.append(task)

    async def stop(self) -> None:
        for task in self.tasks:
            task.cancel()
        for task in self.tasks:
            try:
                await asyncio.wait_for(task, timeout=self.timeout + 1.0)
            except (asyncio.CancelledError, asyncio.TimeoutError):
                pass
        self.tasks.clear()

    async def _run(self, device: str, scan: float, blocks: list[ReadBlock], phase: float = 0.0,
                   spacing: float = 0.0) -> None:
        loop = asyncio.get_running_loop()
        group = self.stats.by_group[(device, scan)]
        next_tick = loop.time() + phase
        if phase > 0:
            await asyncio.sleep(phase)

        async def at(offset: float, block: ReadBlock, started: float) -> float:
            """A block read at its slot; how long after the slot its values were in."""
            if offset > 0:
                await asyncio.sleep(started + offset - loop.time())
            await self._read_or_fail(block)
            return loop.time() - (started + offset)

        # The last read of a cycle starts late in the period: the next cycle starts at its own tick, and
        # waits for the previous one only if that one is still reading then (its reads never overlap
        # the same blocks' next reads). Waiting for it before sleeping would move every later tick
        # back by the last read's round trip, so the group would be polled less often than its period.
        def observe(done: asyncio.Future[list[float]]) -> None:
            """A cycle's duration is its slowest read, each from its own slot: reads that back up show as
            they did when a device's blocks were read all at once."""
            if done.cancelled() or done.exception() is not None:
                return
            elapsed = max(done.result())
            self.stats.cycles += 1
            self.stats.last_cycle_seconds = elapsed
            group.observe(elapsed)

        cycle: asyncio.Future[list[float]] | None = None
        try:
            while True:
                if cycle is not None:
                    await cycle
                started = loop.time()
                cycle = asyncio.gather(*(at(k * spacing, block, started) for k, block in enumerate(blocks)))
                cycle.add_done_callback(observe)
                next_tick += scan
                now = loop.time()
                if next_tick < now:  # a cycle longer than the period: skip the missed ticks, never burst
                    next_tick = now
                await asyncio.sleep(next_tick - now)
        finally:
            if cycle is not None:
                cycle.cancel()

    async def _read_or_fail(self, block: ReadBlock) -> None:
        """A fault in zonegate itself turns the block Bad (never a stale Good) and polling goes on."""
        try:
            await self.read(block)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("opcua: internal error polling %s %s %d+%d", block.device, block.table, block.start,
                          block.count)
            self.stats.failed += 1
            try:
                await self._fail(block, BAD_INTERNAL_ERROR)
            except Exception:
                log.exception("opcua: cannot mark %s Bad", block.device)

    async def read(self, block: ReadBlock) -> None:
        """Read one block and publish its tags: values when Good, the fault's status otherwise."""
        if block.table == "cip":
            if self.cip is None:
                raise RuntimeError("a CIP block without a CIP reader")
            await self.cip.read(self, block)
            return
        self._tid = (self._tid + 1) & 0xFFFF
        adu = block.adu(self._tid)
        decision = self.policy.decide(self.principal, block.device, adu)
        if not decision.forward:
            self.stats.denied += 1
            await self._fail(block, BAD_USER_ACCESS_DENIED)
            return
        self.stats.reads += 1
        try:
            reply = await self.link.exchange(block.device, adu, self.timeout)
        except (asyncio.TimeoutError, OSError, ConnectionError):
            self.stats.failed += 1
            await self._fail(block, BAD_COMMUNICATION_ERROR)
            return
        if len(reply) >= 9 and reply[7] & 0x80:
            self.stats.failed += 1
            await self._fail(block, exception_status(reply[8]))
            return
        try:
            values = block.values(reply)
        except ValueError:
            self.stats.failed += 1
            await self._fail(block, BAD_DATA_ENCODING_INVALID)
            return
        when = time.time()
        for n, tag in enumerate(block.tags, 1):
            if n % PUBLISH_CHUNK == 0:
                await asyncio.sleep(0)
            first = tag.address - block.start
            try:
                value = decode(tag, values[first : first + tag.words])
            except ValueError:
                await self.publish(tag, None, BAD_DATA_ENCODING_INVALID, when)
                continue
            await self.publish(tag, value, GOOD, when)

    async def _fail(self, block: ReadBlock, status: int) -> None:
        when = time.time()
        for n, tag in enumerate(block.tags, 1):
            if n % PUBLISH_CHUNK == 0:
                await asyncio.sleep(0)
            await self.publish(tag, None, status, when)
