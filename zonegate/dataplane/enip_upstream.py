"""EtherNet/IP conduit, upstream stage: zonegate's own sessions with a device, one per relayed client.

A CIP device ties what a client opens (its session, its Forward Open connections) to the TCP connection
it came on, so every client connection of the box gets its own `EnipLink`: a TCP connection on which
zonegate registered its own session. The client never learns the device's session handle, nor the device
the client's: each forwarded message gets the link's handle, each reply the client's back. Each message also
goes under a sender context of the link's own (the reply gets the client's back): a client may reuse its
contexts, and a device's late reply to a message the gateway already answered for must match nothing in
flight rather than a later message sent under the same context. A device holds
at most `max_connections` links at once; a client past that is answered "resource unavailable" (0x02).

Replies are matched to what is in flight on the link by the client session's `observe_reply` (sender
context for unconnected messages, connection and sequence count for connected ones; docs/enip.md section 8),
which also keeps the session's connection table in step with the device. A reply that answers nothing is
dropped and counted. A device that does not answer in time, refuses the connection or loses it answers
the client as a gateway does: CIP general status 0x01 (connection failure) with extended status 0x0204
(unconnected request timed out). Connect failures back off per device (0.1 s doubling to 5 s); during the
backoff requests are answered at once.

ListIdentity is asked of the device once, on a short connection of its own, and the answer kept for the
device's life in this policy generation.

Everything on the request path is a Protocol callback; one timer per busy link sweeps deadlines.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Coroutine
from typing import Any, Final, Protocol, cast

from zonegate.dataplane import enip_frames as frames
from zonegate.dataplane.enip_config import EnipDeviceSettings
from zonegate.dataplane.end_of_pass import EndOfPass
from zonegate.dataplane.upstream import BACKOFF_FIRST, BACKOFF_MAX, PoolObserver

log = logging.getLogger(__name__)

MAX_REPLY_BUFFER: Final = 128 * 1024
CIP_RESOURCE_UNAVAILABLE: Final = 0x02


class LinkOwner(Protocol):
    """The client connection a link relays for."""

    def deliver(self, frame: bytes, pending: EnipPending) -> None: ...

    def accept_reply(self, request: bytes, reply: bytes) -> bytes | None: ...

    def link_lost(self, link: EnipLink) -> None: ...


class EnipPending:
    """One forwarded message, from the client's write to the device's reply (or the gateway's answer)."""

    __slots__ = ("frame", "service", "t_o", "started", "deadline", "sent", "upstream_seconds", "wire", "opens",
                 "unanswered")

    def __init__(self, frame: bytes, service: int, started: float, deadline: float, t_o: int | None = None) -> None:
        self.frame = frame  # as the client sent it (its own session handle)
        self.service = service  # the outer CIP service: the gateway answers a reply to it
        self.t_o = t_o
        self.started = started
        self.deadline = deadline
        self.sent = 0.0
        self.upstream_seconds = 0.0
        self.wire = b""  # as sent to the device (the link's session handle)
        # whether the message may hold a Forward Open, whose reply names a connection the client may use:
        # only then is the reply read for it (unknown: assume so)
        self.opens = True
        self.unanswered = False  # the gateway answered for the device

    def fault(self) -> bytes:
        self.unanswered = True
        return frames.unreachable(self.frame, self.service, self.t_o)


class EnipDevice:
    """One EtherNet/IP device of the policy in force: its links, backoff and learned identity."""

    def __init__(self, settings: EnipDeviceSettings, observer: PoolObserver, loop: asyncio.AbstractEventLoop) -> None:
        self.settings = settings
        self.observer = observer
        self.loop = loop
        self.links: set[EnipLink] = set()
        self.backoff = 0.0
        self.down_until = 0.0
        self.up: bool | None = None
        self.retired = False
        self.identity: bytes | None = None
        self.identity_waiters: list[Callable[[bytes | None], None]] = []
        self.tasks: set[asyncio.Task[None]] = set()
        self.requests: EndOfPass[EnipLink] = EndOfPass(self.loop, self._write_failed)

    # -- links --------------------------------------------------------------------------------------------

    def open_link(self, owner: LinkOwner) -> EnipLink | None:
        """A new link for `owner`, or None when the device is backing off or has no session to spare."""
        if self.retired or time.monotonic() < self.down_until:
            self.observer.upstream_fault(self.settings.name, "unavailable")
            return None
        if len(self.links) >= self.settings.max_connections:
            self.observer.upstream_fault(self.settings.name, "queue_full")
            return None
        link = EnipLink(self, owner)
        self.links.add(link)
        self._spawn(link.connect())
        return link

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = self.loop.create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def connected(self) -> None:
        self.backoff = 0.0
        self.down_until = 0.0
        self._set_up(True)

    def connect_failed(self, exc: BaseException | None) -> None:
        log.warning("device %s at %s:%d unreachable: %s", self.settings.name, self.settings.host,
                    self.settings.port, exc or "no session")
        self.observer.upstream_fault(self.settings.name, "connect_failed")
        self.backoff = BACKOFF_FIRST if self.backoff == 0 else min(BACKOFF_MAX, self.backoff * 2)
        self.down_until = time.monotonic() + self.backoff
        self._set_up(False)

    def _set_up(self, up: bool) -> None:
        if self.up is not up:
            self.up = up
            self.observer.upstream_state(self.settings.name, up)

    def link_closed(self, link: EnipLink) -> None:
        self.links.discard(link)

    def write_later(self, link: EnipLink) -> None:
        """Write `link`'s messages at the end of this loop pass, with every other link's: one callback.

        Each link is a socket of its own, so this saves no system call; it keeps the device's wake-ups
        from preempting the loop in the middle of a pass, so a pass decides more clients' requests.
        """
        self.requests.add(link)

    def _write_failed(self, link: EnipLink) -> None:
        log.exception("device %s: internal error writing a request", self.settings.name)
        link.out.clear()
        link._abort("internal_error")

    # -- identity -----------------------------------------------------------------------------------------

    def with_identity(self, answer: Callable[[bytes | None], None]) -> None:
        """Call `answer` with the device's identity item: learned once, then from the cache."""
        if self.identity is not None:
            answer(self.identity)
            return
        self.identity_waiters.append(answer)
        if len(self.identity_waiters) == 1:
            self._spawn(self._learn_identity())

    async def _learn_identity(self) -> None:
        identity: bytes | None = None
        writer = None
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(self.settings.host, self.settings.port), self.settings.timeout)
            writer.write(frames.list_identity_request())
            header = await asyncio.wait_for(reader.readexactly(frames.HEADER_SIZE), self.settings.timeout)
            length = int.from_bytes(header[2:4], "little")
            body = await asyncio.wait_for(reader.readexactly(length), self.settings.timeout)
            identity = frames.identity_item(header + body)
        except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError) as exc:
            log.info("device %s: no identity learned: %s", self.settings.name, exc or type(exc).__name__)
        finally:
            if writer is not None:
                writer.close()
        if identity is not None:
            self.identity = identity
        waiters, self.identity_waiters = self.identity_waiters, []
        for answer in waiters:
            answer(identity)

    # -- lifecycle ----------------------------------------------------------------------------------------

    def retire(self) -> None:
        """A reload replaced this device: links finish what is in flight, then close."""
        self.retired = True
        for link in list(self.links):
            link.close_when_idle()

    def close(self) -> None:
        self.retired = True
        for task in list(self.tasks):
            task.cancel()
        for link in list(self.links):
            link.close()


class EnipLink(asyncio.Protocol):
    """zonegate's session with the device on behalf of one client connection."""

    def __init__(self, device: EnipDevice, owner: LinkOwner) -> None:
        self.device = device
        self.owner = owner
        self.transport: asyncio.Transport | None = None
        self.session = 0  # the device's handle, once registered
        self.ready = False
        self.closed = False
        self.closing = False  # close once nothing is in flight
        self.waiting: deque[EnipPending] = deque()  # until the session is registered
        self.inflight: list[EnipPending] = []
        self.contexts = 0  # the last sender context the link gave a message
        self.buffer = b""
        self.out: list[bytes] = []  # sent at the end of this loop pass (EnipDevice.write_later)
        self.flush_scheduled = False
        self.register_deadline = 0.0
        self.sweep_handle: asyncio.TimerHandle | None = None
        self.tick = max(0.01, min(0.1, device.settings.timeout / 5))

    @property
    def name(self) -> str:
        return self.device.settings.name

    # -- connection ---------------------------------------------------------------------------------------

    async def connect(self) -> None:
        settings = self.device.settings
        try:
            await asyncio.wait_for(
                self.device.loop.create_connection(lambda: self, settings.host, settings.port), settings.timeout)
        except (OSError, asyncio.TimeoutError) as exc:
            self.device.connect_failed(exc)
            self._fail_all()
            return

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports do not subclass asyncio's
        if self.closed:
            self.transport.close()
            return
        self.register_deadline = time.monotonic() + self.device.settings.timeout
        self.transport.write(frames.register_request())
        self._arm()

    def data_received(self, data: bytes) -> None:
        buf = self.buffer + data if self.buffer else data
        offset = 0
        while not self.closed and offset < len(buf):
            complete, n = frames.split(buf[offset:] if offset else buf)
            if complete is None:
                self.buffer = b""
                self._abort("bad_reply")
                return
            if not complete:
                break
            reply = buf[offset : offset + n]
            offset += n
            try:
                self._reply(reply)
            except Exception:  # an internal fault: drop the link (what is in flight gets the gateway's answer)
                log.exception("device %s: internal error on a reply", self.name)
                self.buffer = b""
                self._abort("internal_error")
                return
        self.buffer = buf[offset:] if offset else buf
        if len(self.buffer) > MAX_REPLY_BUFFER:
            self._abort("bad_reply")

    def _reply(self, reply: bytes) -> None:
        if not self.ready:
            header = frames.Header.read(reply)
            if header.command == frames.REGISTER_SESSION and header.status == 0 and header.session != 0:
                self.session = header.session
                self.ready = True
                self.device.connected()
                self._send_waiting()
            else:
                self.device.connect_failed(None)
                self._abort("bad_reply")
            return
        for index, pending in enumerate(self.inflight):
            accepted = self.owner.accept_reply(pending.wire, reply)
            if accepted is not None:
                del self.inflight[index]
                now = time.monotonic()
                pending.upstream_seconds = now - pending.sent
                self.device.observer.upstream_latency(self.name, pending.upstream_seconds)
                self.owner.deliver(frames.as_answer_to(accepted, pending.frame), pending)
                if self.closing and not self.inflight:
                    self.close()
                return
        self.device.observer.upstream_fault(self.name, "unmatched_reply")
        if log.isEnabledFor(logging.DEBUG):
            log.debug("device %s: reply %s answers nothing in flight (%s)", self.name, reply.hex(),
                      [p.wire.hex() for p in self.inflight])

    def _abort(self, kind: str) -> None:
        self.device.observer.upstream_fault(self.name, kind)
        if self.transport is not None:
            self.transport.abort()
        else:
            self._lost()

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost()

    def _lost(self) -> None:
        was_closed = self.closed
        self.closed = True
        self.ready = False
        if self.sweep_handle is not None:
            self.sweep_handle.cancel()
            self.sweep_handle = None
        if self.inflight and not was_closed:
            self.device.observer.upstream_fault(self.name, "connection_lost")
        self._fail_all()
        self.device.link_closed(self)
        if not was_closed:
            self.owner.link_lost(self)

    def _fail_all(self) -> None:
        lost = [*self.inflight, *self.waiting]
        self.inflight.clear()
        self.waiting.clear()
        for pending in lost:
            self.owner.deliver(pending.fault(), pending)
        if not self.closed:
            self.closed = True
            self.device.link_closed(self)
            self.owner.link_lost(self)

    # -- requests -----------------------------------------------------------------------------------------

    def submit(self, pending: EnipPending) -> None:
        """Forward a message; its owner gets exactly one answer for it: the reply or the gateway's."""
        if self.closed:
            self.owner.deliver(pending.fault(), pending)
            return
        timeout_at = pending.started + self.device.settings.timeout
        if timeout_at < pending.deadline:
            pending.deadline = timeout_at
        if self.ready:
            self._send(pending, time.monotonic())
        else:
            self.waiting.append(pending)
        self._arm()

    def _send(self, pending: EnipPending, now: float) -> None:
        self.contexts = (self.contexts + 1) & 0xFFFF_FFFF_FFFF_FFFF
        pending.wire = frames.on_link(pending.frame, self.session, self.contexts)
        pending.sent = now
        deadline = now + self.device.settings.timeout
        if deadline < pending.deadline:
            pending.deadline = deadline
        self.inflight.append(pending)
        self.out.append(pending.wire)
        if not self.flush_scheduled:
            self.flush_scheduled = True
            self.device.write_later(self)

    def flush(self) -> None:
        self.flush_scheduled = False
        out = self.out
        if out and self.transport is not None and not self.closed and not self.transport.is_closing():
            data = out[0] if len(out) == 1 else b"".join(out)
            out.clear()
            self.transport.write(data)
        else:
            out.clear()

    def _send_waiting(self) -> None:
        now = time.monotonic()
        while self.waiting and not self.closed:
            self._send(self.waiting.popleft(), now)

    # -- deadlines ----------------------------------------------------------------------------------------

    def _arm(self) -> None:
        if self.sweep_handle is None and not self.closed and (self.inflight or self.waiting or not self.ready):
            self.sweep_handle = self.device.loop.call_later(self.tick, self._sweep)

    def _sweep(self) -> None:
        self.sweep_handle = None
        if self.closed:
            return
        now = time.monotonic()
        if not self.ready and self.transport is not None and now >= self.register_deadline:
            self.device.connect_failed(None)
            self._abort("timeout")
            return
        expired = [p for p in self.inflight if p.deadline <= now] + [p for p in self.waiting if p.deadline <= now]
        if expired:
            self.inflight = [p for p in self.inflight if p.deadline > now]
            self.waiting = deque(p for p in self.waiting if p.deadline > now)
            for pending in expired:
                self.device.observer.upstream_fault(self.name, "timeout")
                self.owner.deliver(pending.fault(), pending)
        self._arm()

    # -- lifecycle ----------------------------------------------------------------------------------------

    @property
    def busy(self) -> bool:
        return bool(self.inflight or self.waiting)

    def close_when_idle(self) -> None:
        self.closing = True
        if not self.busy:
            self.close()

    def close(self) -> None:
        """End zonegate's session with the device (which drops the connections opened on it)."""
        if self.closed:
            return
        if self.transport is not None and not self.transport.is_closing():
            if self.ready:
                self.flush()  # what is in flight goes first: the device answers it before the session ends
                self.transport.write(frames.unregister_request(self.session))
            self.transport.close()
        else:
            self._lost()
