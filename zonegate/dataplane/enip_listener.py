"""EtherNet/IP conduit, listener stage: clients over TLS (CIP Security, TCP 2221) or plain (zone side).

An `EnipClient` is the Modbus listener's `ClientConnection` with EtherNet/IP framing: the same TLS
handshake (run by zonegate, refusals counted by reason), idle sweep, bounded buffer and back-pressure,
with the engine's `enip_split` cutting encapsulation messages. An `enip_tls` client is known by its
certificate (role extension, then subject), an `enip` client by its source address.

Each client holds what EtherNet/IP ties to one TCP connection: the session handle zonegate gave it, the
engine's `EnipSession` (its Forward Open connection table), and its link to the device (zonegate's own
session there, see enip_upstream.py).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Final, cast

from zonegate import _engine
from zonegate.dataplane import enip_frames as frames
from zonegate.dataplane.config import RuntimeSettings
from zonegate.dataplane.identity import Identity
from zonegate.dataplane.listener import ClientConnection, Listener
from zonegate.dataplane.enip_upstream import EnipLink, EnipPending

if TYPE_CHECKING:
    from zonegate.dataplane.enip_conduit import EnipConduit

log = logging.getLogger(__name__)

MAX_ENIP_BUFFER: Final = 2 * (frames.HEADER_SIZE + frames.MAX_LENGTH)

def split(buf: bytes) -> tuple[bool | None, int]:
    """The engine's splitter (docs/enip.md section 1) in the conduit's three outcomes."""
    status, n = _engine.enip_split(buf)
    if status == _engine.COMPLETE:
        return True, n
    if status == _engine.INCOMPLETE:
        return False, n
    return None, n


class EnipClient(ClientConnection):
    """One EtherNet/IP client of one listener."""

    def __init__(self, listener: Listener) -> None:
        super().__init__(listener)
        self.enip = cast("EnipConduit", listener.conduit)
        self.session = _engine.EnipSession()
        self.registered: int | None = None  # the session handle zonegate gave this client
        self.link: EnipLink | None = None
        self.t_o: dict[int, int] = {}  # O->T connection id -> T->O, from the Forward Open replies seen
        self.local: tuple[str, int] | None = None
        self.device: str | None = None  # the listener's device and its engine index, per policy generation
        self.device_index = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, transport)
        sockname = transport.get_extra_info("sockname")
        self.local = (str(sockname[0]), int(sockname[1])) if sockname else None
        if self.listener.settings.protocol != "enip_tls":
            super().connection_made(transport)
            return
        # As for modbus_tls (listener.py): bytes that arrive before start_tls takes over are kept.
        peer = transport.get_extra_info("peername")
        self.listener.connections.add(self)
        self.conduit.metrics.connections.labels(self.name).inc()
        self.raw_phase = True
        self.transport_raw = transport
        transport.pause_reading()
        self.identity = Identity(peer=f"{peer[0]}:{peer[1]}" if peer else "")
        task = self.conduit.loop.create_task(self._handshake(transport))
        self.listener.handshakes.add(task)
        task.add_done_callback(self.listener.handshakes.discard)

    def resolve_principal(self, settings: RuntimeSettings) -> str | None:
        if self.listener.settings.protocol == "enip_tls":
            if self.identity.subject is None:
                return None
            return settings.principal_for_certificate(self.identity.role, self.identity.subject)
        return settings.principal_for_source(self.peer_host) if self.peer_host else None

    def data_received(self, data: bytes) -> None:
        # As the Modbus listener, with room for the largest message EtherNet/IP frames and the start of
        # the next one (a Modbus ADU is at most 260 bytes; an encapsulation message up to 64 KiB).
        if self.raw_phase or self.draining:
            super().data_received(data)
            return
        self.last_activity = time.monotonic()
        self.buffer = self.buffer + data if self.buffer else data
        if len(self.buffer) > MAX_ENIP_BUFFER:
            self._fail("overflow")
            return
        if self.ready and not self.paused:
            self._process()

    def _process(self, now: float | None = None) -> None:
        # `now` as the Modbus listener's: its handshake ends by calling this with bytes that came during it
        buf = self.buffer
        offset = 0
        max_outstanding = self.listener.settings.max_outstanding
        while not self.closed and not self.draining and offset < len(buf):
            if self.outstanding >= max_outstanding:
                if not self.paused and self.transport is not None:
                    self.paused = True
                    self.transport.pause_reading()
                break
            complete, n = split(buf[offset:] if offset else buf)
            if complete is None:
                self._fail("length")
                return
            if not complete:
                break
            frame = buf[offset : offset + n]
            offset += n
            try:
                self.enip.handle(self, frame)
            except Exception:  # an internal fault: fail closed for this client, keep serving others
                log.exception("%s: internal error on a message from %s", self.name, self.identity.peer)
                self._fail("internal_error")
                return
        self.buffer = buf[offset:] if offset else buf

    # -- the link's owner ---------------------------------------------------------------------------------

    def accept_reply(self, request: bytes, reply: bytes) -> bytes | None:
        """The reply to hand back if the device's `reply` answers `request` (see enip_upstream.py), else None.

        Two device habits are taken as the answers they are: a routed Unconnected Send answered with the
        target's reply to the request it carried, and a connected reply on the O->T connection id the
        request used instead of the T->O id (cpppo's simulator does this); the client gets it on its T->O id.
        """
        observe = self.session.observe_reply
        if observe(request, reply):
            return reply
        answered = frames.as_answered(request, reply)
        if answered is not request and observe(answered, reply):
            return reply
        fixed = frames.on_t_o(request, reply, self.t_o)
        if fixed is not None and observe(request, fixed):
            return fixed
        return None

    def deliver(self, frame: bytes, pending: EnipPending | None) -> None:  # type: ignore[override]
        """A forwarded message's reply (or the gateway's answer), or an answer zonegate looked up."""
        self.outstanding -= 1
        if pending is not None:
            self.enip.forwarded_reply(self, frame, pending)
        self.answer(frame)
        if self.draining:
            if self.outstanding == 0:
                self._close_now()
            return
        if self.paused and self.outstanding < self.listener.settings.max_outstanding and not self.closed:
            self.paused = False
            if self.transport is not None:
                self.transport.resume_reading()
            if self.buffer:
                self._process()

    def link_lost(self, link: EnipLink) -> None:
        """The device's side of this client's session is gone, and with it every connection opened there."""
        if self.link is not link:
            return
        self.link = None
        if self.t_o or self.session.connections:
            self.session = _engine.EnipSession()  # connected requests on the lost connections are now refused
            self.t_o.clear()

    def _gone(self) -> None:
        super()._gone()
        link, self.link = self.link, None
        if link is not None:
            link.close()


class EnipListener(Listener):
    """One EtherNet/IP listening socket of the policy."""

    async def start(self) -> None:
        self.server = await self.conduit.loop.create_server(
            lambda: EnipClient(self), self.settings.host, self.settings.port, reuse_address=True
        )
        self._arm_sweep()
