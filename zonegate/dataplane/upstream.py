"""Data plane, upstream stage: a small pool of Modbus/TCP connections per device, shared by all clients.

PLCs have few connection slots, so every client of a device shares at most `max_connections`
connections. Each forwarded request gets a fresh transaction id on the connection it is sent on; the
reply is matched by that id, and must also be a well-formed response carrying the request's unit and
function (or function | 0x80), checked by the engine's `response_matches`, before the client's own
transaction id is put back and it is handed over. A reply that matches nothing
(late, duplicated, wrong id, wrong unit or function) is dropped and counted.

Faults answer the client instead of stalling it: a device that refuses or cannot be reached answers
exception 0x0A (gateway path unavailable) and is retried with exponential backoff, during which its
requests are answered 0x0A at once; a request with no reply in time answers 0x0B (gateway target
failed to respond). A device that comes back is used again on the next request after its backoff.

Everything runs in protocol callbacks: there is no task per request, and one timer per pool sweeps
expired requests.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from bisect import bisect_left
from collections import deque
from time import monotonic
from typing import Final, Protocol, cast

from zonegate import _engine
from zonegate._engine import response_matches, split
from zonegate.dataplane.config import DeviceSettings
from zonegate.engine import exception_response

log = logging.getLogger(__name__)

GATEWAY_PATH_UNAVAILABLE: Final = 0x0A
GATEWAY_TARGET_NO_RESPONSE: Final = 0x0B
SERVER_BUSY: Final = 0x06
MAX_QUEUED: Final = 1024  # waiting for a connection, per device
BACKOFF_FIRST: Final = 0.1
BACKOFF_MAX: Final = 5.0
MAX_REPLY_BUFFER: Final = 4096
# The bounds of the latency histograms (zonegate.controlplane.metrics.LATENCY_BUCKETS is this): a series
# from `PoolObserver.upstream_latency_series` is updated in place with them.
LATENCY_BOUNDS: Final = (
    0.00005, 0.0001, 0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0,
)
_COMPLETE: Final = _engine.COMPLETE
_INCOMPLETE: Final = _engine.INCOMPLETE


class ReplySink(Protocol):
    """Where a reply goes: the client connection that asked."""

    def deliver(self, adu: bytes, pending: Pending) -> None: ...


class PoolObserver:
    """Hooks for metrics; the default does nothing."""

    def upstream_state(self, device: str, up: bool) -> None:
        pass

    def upstream_fault(self, device: str, kind: str) -> None:
        pass

    def upstream_latency(self, device: str, seconds: float) -> None:
        pass

    def upstream_latency_series(self, device: str) -> list[float] | None:
        """A live histogram series (counts per LATENCY_BOUNDS bucket, +Inf, then the sum) the pool
        updates in place instead of calling `upstream_latency`; None to be called instead."""
        return None


class Pending:
    """One forwarded request, from the client's write to the reply (or its fault answer)."""

    __slots__ = ("adu", "sink", "started", "deadline", "sent", "upstream_seconds", "answered", "tag")

    def __init__(self, adu: bytes, sink: ReplySink, started: float, deadline: float, tag: object = None) -> None:
        self.adu = adu
        self.sink = sink
        self.started = started
        self.deadline = deadline
        self.sent = 0.0
        self.upstream_seconds = 0.0
        self.answered = 0.0  # when the reply (or fault answer) was handed to the sink
        self.tag = tag  # the client's own bookkeeping, carried back in deliver()


class _Connection(asyncio.Protocol):
    """One TCP (or TLS) connection to the device; transaction ids are private to it."""

    def __init__(self, pool: DevicePool) -> None:
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self.inflight: dict[int, Pending] = {}
        self.next_tid = 1
        self.buffer = b""
        self.out: list[bytes] = []
        self.flush_scheduled = False
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports do not subclass asyncio's

    def send(self, pending: Pending, now: float) -> None:
        tid = self.next_tid
        while tid in self.inflight:
            tid = (tid + 1) & 0xFFFF
        self.next_tid = (tid + 1) & 0xFFFF
        self.inflight[tid] = pending
        self.pool.inflight += 1
        pending.sent = now
        timeout_at = now + self.pool.settings.timeout
        if timeout_at < pending.deadline:
            pending.deadline = timeout_at
        self.out.append(tid.to_bytes(2, "big") + pending.adu[2:])
        if not self.flush_scheduled:
            self.flush_scheduled = True
            self.pool.loop.call_soon(self.flush)

    def flush(self) -> None:
        self.flush_scheduled = False
        if self.out and self.transport is not None and not self.closed:
            data = self.out[0] if len(self.out) == 1 else b"".join(self.out)
            self.out.clear()
            self.transport.write(data)

    def data_received(self, data: bytes) -> None:
        buf = self.buffer + data if self.buffer else data
        end = len(buf)
        offset = 0
        pool = self.pool
        now = monotonic()
        try:
            while offset < end:
                # Slicing a bytes object whole returns it uncopied: one reply per read costs no copy.
                status, n = split(buf[offset:] if offset else buf)
                if status == _COMPLETE:
                    self._reply(buf[offset : offset + n], now)
                    offset += n
                elif status == _INCOMPLETE:
                    break
                else:
                    self.buffer = b""
                    self._abort("bad_reply")
                    return
        except Exception:  # an internal fault: drop this connection (its requests answer 0x0B)
            log.exception("device %s: internal error on a reply", pool.settings.name)
            self.buffer = b""
            self._abort("internal_error")
            return
        self.buffer = buf[offset:] if offset else buf
        if len(self.buffer) > MAX_REPLY_BUFFER:
            self._abort("bad_reply")
            return
        pool.dispatch()  # once per read: the room these replies made goes to the queue together

    def _reply(self, adu: bytes, now: float) -> None:
        tid = int.from_bytes(adu[0:2], "big")
        pending = self.inflight.get(tid)
        if pending is None or len(adu) < 8:
            self.pool.observer.upstream_fault(self.pool.settings.name, "unmatched_reply")
            return
        request = pending.adu
        reply = request[0:2] + adu[2:]  # the client's transaction id back in place
        if not response_matches(request, reply):  # well formed, same unit, fc or fc | 0x80
            self.pool.observer.upstream_fault(self.pool.settings.name, "unmatched_reply")
            return
        del self.inflight[tid]
        pool = self.pool
        pool.inflight -= 1
        seconds = pending.upstream_seconds = now - pending.sent
        pending.answered = now
        series = pool.latency_series
        if series is not None:
            series[bisect_left(LATENCY_BOUNDS, seconds)] += 1
            series[-1] += seconds
        else:
            pool.observer.upstream_latency(pool.settings.name, seconds)
        pending.sink.deliver(reply, pending)

    def _abort(self, kind: str) -> None:
        self.pool.observer.upstream_fault(self.pool.settings.name, kind)
        if self.transport is not None:
            self.transport.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.pool.connection_lost(self)


class DevicePool:
    """The connections to one device and the requests waiting for them."""

    def __init__(
        self,
        settings: DeviceSettings,
        *,
        ssl_context: ssl.SSLContext | None = None,
        observer: PoolObserver | None = None,
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        self.settings = settings
        self.ssl_context = ssl_context
        self.observer = observer or PoolObserver()
        self.loop = loop or asyncio.get_running_loop()
        self.connections: list[_Connection] = []
        self.connecting = 0
        self.queue: deque[Pending] = deque()
        self.backoff = 0.0
        self.down_until = 0.0
        self.up: bool | None = None
        self.closed = False
        self.retiring = False
        self.depth = settings.pipeline_depth if settings.pipelining else 1
        self.tick = max(0.01, min(0.1, settings.timeout / 5))
        self.sweep_handle: asyncio.TimerHandle | None = None
        self.inflight = 0  # sent and not yet answered, over all connections
        self.latency_series = self.observer.upstream_latency_series(settings.name)
        self.connect_tasks: set[asyncio.Task[None]] = set()

    # -- requests --------------------------------------------------------------------------------------

    def submit(self, pending: Pending) -> None:
        """Forward a request; its sink gets exactly one answer: the reply or a fault exception."""
        if self.closed:
            self._answer(pending, GATEWAY_PATH_UNAVAILABLE)
            return
        if not self.queue:
            # The common case: a connection has room; send now, without queueing.
            for connection in self.connections:
                if len(connection.inflight) < self.depth:
                    connection.send(pending, pending.started)
                    if self.sweep_handle is None:
                        self.sweep_handle = self.loop.call_later(self.tick, self._sweep)
                    return
        if not self.connections and monotonic() < self.down_until:
            self.observer.upstream_fault(self.settings.name, "unavailable")
            self._answer(pending, GATEWAY_PATH_UNAVAILABLE)
            return
        if len(self.queue) >= MAX_QUEUED:
            self.observer.upstream_fault(self.settings.name, "queue_full")
            self._answer(pending, SERVER_BUSY)
            return
        self.queue.append(pending)
        self.dispatch()

    def dispatch(self) -> None:
        queue = self.queue
        if queue:
            now = monotonic()
            for connection in self.connections:
                while queue and len(connection.inflight) < self.depth:
                    connection.send(queue.popleft(), now)
                if not queue:
                    break
            if queue and len(self.connections) + self.connecting < self.settings.max_connections:
                if now >= self.down_until and not self.closed:
                    self._start_connect()
        if self.sweep_handle is None and (queue or self.inflight):
            self.sweep_handle = self.loop.call_later(self.tick, self._sweep)
        if self.retiring and not queue and not self.inflight:
            self.close()

    def _answer(self, pending: Pending, code: int) -> None:
        pending.answered = monotonic()
        pending.sink.deliver(exception_response(pending.adu, code), pending)

    # -- connections ------------------------------------------------------------------------------------

    def _start_connect(self) -> None:
        self.connecting += 1
        task = self.loop.create_task(self._connect())
        self.connect_tasks.add(task)
        task.add_done_callback(self.connect_tasks.discard)

    async def _connect(self) -> None:
        settings = self.settings
        try:
            _, connection = await asyncio.wait_for(
                self.loop.create_connection(
                    lambda: _Connection(self),
                    settings.host,
                    settings.port,
                    ssl=self.ssl_context,
                    server_hostname=settings.host if self.ssl_context is not None else None,
                ),
                timeout=settings.timeout,
            )
        except (OSError, asyncio.TimeoutError, ssl.SSLError) as exc:
            self.connecting -= 1
            self._connect_failed(exc)
            return
        except asyncio.CancelledError:
            self.connecting -= 1
            raise
        self.connecting -= 1
        if self.closed:
            if connection.transport is not None:
                connection.transport.close()
            return
        self.connections.append(connection)
        self.backoff = 0.0
        self.down_until = 0.0
        self._set_up(True)
        self.dispatch()

    def _connect_failed(self, exc: BaseException) -> None:
        log.warning("device %s at %s:%d unreachable: %s", self.settings.name, self.settings.host,
                    self.settings.port, exc or type(exc).__name__)
        self.observer.upstream_fault(self.settings.name, "connect_failed")
        self.backoff = BACKOFF_FIRST if self.backoff == 0 else min(BACKOFF_MAX, self.backoff * 2)
        self.down_until = monotonic() + self.backoff
        self._set_up(False)
        if not self.connections:
            while self.queue:
                self._answer(self.queue.popleft(), GATEWAY_PATH_UNAVAILABLE)

    def _set_up(self, up: bool) -> None:
        if self.up is not up:
            self.up = up
            self.observer.upstream_state(self.settings.name, up)

    def connection_lost(self, connection: _Connection) -> None:
        if connection in self.connections:
            self.connections.remove(connection)
        lost = list(connection.inflight.values())
        connection.inflight.clear()
        self.inflight -= len(lost)
        if lost:
            self.observer.upstream_fault(self.settings.name, "connection_lost")
        for pending in lost:
            self._answer(pending, GATEWAY_TARGET_NO_RESPONSE)
        if not self.connections and not self.closed:
            self._set_up(False)
        self.dispatch()

    # -- deadlines --------------------------------------------------------------------------------------

    def _sweep(self) -> None:
        self.sweep_handle = None
        now = monotonic()
        expired: list[Pending] = []
        for connection in self.connections:
            late = [tid for tid, p in connection.inflight.items() if p.deadline <= now]
            for tid in late:
                expired.append(connection.inflight.pop(tid))
                self.inflight -= 1
        if self.queue and any(p.deadline <= now for p in self.queue):
            keep = deque(p for p in self.queue if p.deadline > now)
            expired.extend(p for p in self.queue if p.deadline <= now)
            self.queue = keep
        for pending in expired:
            self.observer.upstream_fault(self.settings.name, "timeout")
            self._answer(pending, GATEWAY_TARGET_NO_RESPONSE)
        self.dispatch()

    # -- lifecycle --------------------------------------------------------------------------------------

    @property
    def busy(self) -> bool:
        return bool(self.queue) or self.inflight > 0

    def retire(self) -> None:
        """Stop taking requests once those in flight are answered (a reload replaced this pool)."""
        self.retiring = True
        self.dispatch()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self.sweep_handle is not None:
            self.sweep_handle.cancel()
            self.sweep_handle = None
        for task in list(self.connect_tasks):
            task.cancel()
        while self.queue:
            self._answer(self.queue.popleft(), GATEWAY_PATH_UNAVAILABLE)
        for connection in list(self.connections):
            if connection.transport is not None:
                connection.transport.close()

