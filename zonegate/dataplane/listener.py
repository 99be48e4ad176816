"""Data plane, listener stage: accept client connections, frame their ADUs, hand each to the conduit.

One `ClientConnection` (an asyncio Protocol, no task per request) per client. A Modbus/TCP Security
listener runs the TLS handshake itself with `loop.start_tls`, so a refused handshake is seen, sorted by
reason and counted, and the principal is resolved once from the verified certificate. A plain listener
resolves it from the source address. A transparent listener (nftables tproxy) accepts connections
addressed to a device's own address and port: that address names the one device the connection may
reach, and a connection to any address the listener does not relay to is refused and counted.

Framing is the engine's splitter: several ADUs in one read and one ADU over many reads both work; an
invalid stream closes the connection (it cannot be resynchronised). At most `max_outstanding` requests
per connection are in flight: past that, reading pauses until replies come back, so a fast client
cannot grow any buffer without bound. Idle connections are closed by one sweep per listener.
"""

from __future__ import annotations

import asyncio
import logging
from time import monotonic
from typing import TYPE_CHECKING, Final, cast

from zonegate import _engine
from zonegate._engine import split
from zonegate.controlplane.tls import HANDSHAKE_TIMEOUT, failure_reason
from zonegate.dataplane.config import ListenerSettings, RuntimeSettings
from zonegate.dataplane.identity import Identity, tls_identity
from zonegate.dataplane.transparent import DeviceMap, original_destination, transparent_socket
from zonegate.dataplane.upstream import Pending
from zonegate.engine import SPLIT_INVALID_REASONS

if TYPE_CHECKING:
    from zonegate.dataplane.conduit import Conduit, Route

log = logging.getLogger(__name__)

MAX_CLIENT_BUFFER: Final = 64 * 1024
_COMPLETE: Final = _engine.COMPLETE
_INCOMPLETE: Final = _engine.INCOMPLETE


class ClientConnection(asyncio.Protocol):
    """One client of one listener."""

    # A thousand idle clients are a thousand of these: no per-instance dict.
    __slots__ = (
        "listener", "conduit", "name", "transport", "identity", "principal", "principal_generation",
        "principal_index", "routes", "buffer", "outstanding", "paused", "closed", "ready", "last_activity",
        "out", "flush_scheduled", "draining", "raw_phase", "early", "transport_raw", "peer_host", "device",
    )

    def __init__(self, listener: Listener) -> None:
        self.listener = listener
        self.conduit = listener.conduit
        self.name = listener.settings.name
        self.transport: asyncio.Transport | None = None
        self.identity = Identity(peer="")
        self.principal: str | None = None  # resolved at the first request under each policy generation
        self.principal_generation = -1
        self.principal_index = 0
        self.routes: dict[int, Route] = {}  # unit -> route under principal_generation
        self.buffer = b""
        self.outstanding = 0
        self.paused = False
        self.closed = False
        self.ready = False
        self.last_activity = monotonic()
        self.out: list[bytes] = []
        self.flush_scheduled = False
        self.draining = False  # framing failed: answer what is in flight, read nothing more
        self.raw_phase = False
        self.early: list[bytes] = []
        self.transport_raw: asyncio.Transport | None = None
        self.peer_host: str | None = None
        self.device: str | None = None  # set on a transparent listener: the device the client dialled

    # -- connection lifecycle --------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, transport)  # uvloop's transports do not subclass asyncio's
        peer = transport.get_extra_info("peername")
        peer_text = f"{peer[0]}:{peer[1]}" if peer else ""
        self.listener.connections.add(self)
        self.conduit.metrics.connections.labels(self.name).inc()
        if self.listener.settings.protocol == "modbus_tls":
            # The ClientHello should wait in the kernel until start_tls reads it. uvloop starts reading
            # right after connection_made anyway, so whatever arrives first is kept in `early` and
            # handed to the TLS protocol once it is in place.
            self.raw_phase = True
            self.transport_raw = transport
            transport.pause_reading()
            self.identity = Identity(peer=peer_text)
            task = self.conduit.loop.create_task(self._handshake(transport))
            self.listener.handshakes.add(task)
            task.add_done_callback(self.listener.handshakes.discard)
        else:
            self.transport = transport
            self.identity = Identity(peer=peer_text)
            self.peer_host = str(peer[0]) if peer else None
            if self.listener.settings.transparent and not self._divert(transport):
                return
            self.ready = True

    def _divert(self, transport: asyncio.Transport) -> bool:
        """Pin a diverted connection to the device it dialled; refuse one that dialled anything else."""
        try:
            destination = original_destination(transport)
        except (ValueError, TypeError) as exc:
            where = f"an unreadable address ({exc})"
        else:
            where = str(destination)
            self.device = self.listener.devices.device_for(destination)
        if self.device is not None:
            return True
        self.conduit.metrics.framing_errors.labels(self.name, "unknown_destination").inc()
        log.info("%s: connection from %s to %s refused: no device of this listener is there",
                 self.name, self.identity.peer, where)
        self.draining = True
        transport.close()
        return False

    async def _handshake(self, raw: asyncio.Transport) -> None:
        context = self.conduit.ssl_contexts[self.name]
        self.raw_phase = False  # start_tls swaps the transport's protocol before its first await
        if self.early:
            self.conduit.loop.call_soon(self._feed_early, raw)
        try:
            transport = await self.conduit.loop.start_tls(
                raw, self, context, server_side=True, ssl_handshake_timeout=HANDSHAKE_TIMEOUT
            )
        except asyncio.CancelledError:
            raw.abort()
            self._gone()
            raise
        except Exception as exc:  # whatever ended the handshake, the client is refused and counted
            reason = failure_reason(exc)
            self.conduit.metrics.handshake_failures.labels(self.name, reason).inc()
            log.info("%s: TLS handshake from %s refused: %s", self.name, self.identity.peer, reason)
            raw.abort()
            self._gone()
            return
        if transport is None or transport.is_closing():
            self._gone()
            return
        self.transport = transport
        ssl_object = transport.get_extra_info("ssl_object")
        der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
        self.identity = tls_identity(der, self.identity.peer)
        self.ready = True
        self.last_activity = monotonic()
        if self.buffer:
            self._process(self.last_activity)

    def resolve_principal(self, settings: RuntimeSettings) -> str | None:
        """The principal this connection is under `settings`: by certificate (TLS) or source address."""
        if self.listener.settings.protocol == "modbus_tls":
            if self.identity.subject is None:
                return None
            return settings.principal_for_certificate(self.identity.role, self.identity.subject)
        return settings.principal_for_source(self.peer_host) if self.peer_host else None

    def _feed_early(self, raw: asyncio.Transport) -> None:
        """Give the TLS protocol the bytes that reached this protocol before it took over."""
        data, self.early = b"".join(self.early), []
        protocol = raw.get_protocol()
        view = memoryview(data)
        while view and not raw.is_closing():
            buffer = protocol.get_buffer(len(view))  # type: ignore[attr-defined]
            n = min(len(buffer), len(view))
            buffer[:n] = view[:n]
            protocol.buffer_updated(n)  # type: ignore[attr-defined]
            view = view[n:]

    def connection_lost(self, exc: Exception | None) -> None:
        self._gone()

    def _gone(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self in self.listener.connections:
            self.listener.connections.discard(self)
            self.conduit.metrics.connections.labels(self.name).dec()

    def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.flush()
            self.transport.close()

    # -- requests ---------------------------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        if self.raw_phase:
            self.early.append(data)  # TLS records that arrived before the handshake started
            if self.transport_raw is not None:
                self.transport_raw.pause_reading()
            return
        if self.draining:
            return
        self.last_activity = now = monotonic()
        if self.buffer:
            self.buffer += data
            if len(self.buffer) > MAX_CLIENT_BUFFER:
                self._fail("overflow")
                return
        elif len(data) > MAX_CLIENT_BUFFER:
            self._fail("overflow")
            return
        else:
            self.buffer = data
        if self.ready and not self.paused:
            self._process(now)

    def _process(self, now: float) -> None:
        """Frame and hand over every complete ADU buffered, within `max_outstanding`."""
        buf = self.buffer
        end = len(buf)
        offset = 0
        handle = self.conduit.handle
        max_outstanding = self.listener.settings.max_outstanding
        while offset < end and not self.closed and not self.draining:
            if self.outstanding >= max_outstanding:
                if not self.paused and self.transport is not None:
                    self.paused = True
                    self.transport.pause_reading()
                break
            # Slicing a bytes object whole returns it uncopied: one ADU per read costs no copy.
            status, n = split(buf[offset:] if offset else buf)
            if status == _COMPLETE:
                adu = buf[offset : offset + n]
                offset += n
                try:
                    handle(self, adu, now)
                except Exception:  # an internal fault: fail closed for this client, keep serving others
                    log.exception("%s: internal error on a request from %s", self.name, self.identity.peer)
                    self._fail("internal_error")
                    return
            elif status == _INCOMPLETE:
                break
            else:
                self._fail(SPLIT_INVALID_REASONS[n] if 0 <= n < len(SPLIT_INVALID_REASONS) else "invalid")
                return
        self.buffer = buf[offset:] if offset else buf

    def _fail(self, reason: str) -> None:
        """Stop reading a stream that cannot be framed; close once the requests before it are answered."""
        self.conduit.metrics.framing_errors.labels(self.name, reason).inc()
        log.info("%s: closing %s: %s", self.name, self.identity.peer, reason)
        self.buffer = b""
        self.draining = True
        if self.outstanding == 0 or self.transport is None:
            self._close_now()
        else:
            self.transport.pause_reading()

    def _close_now(self) -> None:
        if self.transport is not None:
            self.flush()
            self.transport.close()
        self.closed = True
        self._gone()

    def answer(self, adu: bytes) -> None:
        """Send a reply (in order of answering; Modbus clients match by transaction id).

        Replies are written once per loop pass, together: one TLS record and one system call for all
        the replies a client gets in that pass.
        """
        if self.closed or self.transport is None:
            return
        self.out.append(adu)
        if not self.flush_scheduled:
            self.flush_scheduled = True
            self.conduit.flush_later(self)

    def flush(self) -> None:
        self.flush_scheduled = False
        out = self.out
        if out and self.transport is not None and not self.transport.is_closing():
            data = out[0] if len(out) == 1 else b"".join(out)
            out.clear()
            self.transport.write(data)

    def deliver(self, adu: bytes, pending: Pending) -> None:
        """A forwarded request's reply (or fault answer) from the upstream pool."""
        self.outstanding -= 1
        self.conduit.forwarded_reply(self, pending)
        if not self.closed and self.transport is not None:
            self.out.append(adu)
            if not self.flush_scheduled:
                self.flush_scheduled = True
                self.conduit.flush_later(self)
        if self.draining:
            if self.outstanding == 0:
                self._close_now()
            return
        if self.paused and self.outstanding < self.listener.settings.max_outstanding and not self.closed:
            self.paused = False
            if self.transport is not None:
                self.transport.resume_reading()
            if self.buffer:
                self._process(monotonic())


class Listener:
    """One listening socket of the policy, with the connections it accepted."""

    def __init__(self, conduit: Conduit, settings: ListenerSettings) -> None:
        self.conduit = conduit
        self.settings = settings
        self.connections: set[ClientConnection] = set()
        self.handshakes: set[asyncio.Task[None]] = set()
        self.server: asyncio.Server | None = None
        self.sweep_handle: asyncio.TimerHandle | None = None
        self.devices = self.device_map(conduit.settings, settings)

    @staticmethod
    def device_map(runtime: RuntimeSettings, settings: ListenerSettings) -> DeviceMap:
        """Original destination -> device for a transparent listener (empty for any other)."""
        if not settings.transparent:
            return DeviceMap({})
        return DeviceMap.of([(name, d.host, d.port) for name, d in runtime.devices.items()], names=settings.devices)

    @property
    def port(self) -> int:
        assert self.server is not None
        return int(self.server.sockets[0].getsockname()[1])

    async def start(self) -> None:
        if self.settings.transparent:
            # Diverted connections reach only a socket with IP_TRANSPARENT (needs CAP_NET_ADMIN).
            sock = transparent_socket(self.settings.host, self.settings.port)
            self.server = await self.conduit.loop.create_server(lambda: ClientConnection(self), sock=sock)
        else:
            self.server = await self.conduit.loop.create_server(
                lambda: ClientConnection(self), self.settings.host, self.settings.port, reuse_address=True
            )
        self._arm_sweep()

    def _arm_sweep(self) -> None:
        interval = max(0.05, min(1.0, self.settings.idle_timeout / 4))
        self.sweep_handle = self.conduit.loop.call_later(interval, self._sweep)

    def _sweep(self) -> None:
        cutoff = monotonic() - self.settings.idle_timeout
        for connection in list(self.connections):
            # A handshake in progress is bounded by its own timeout.
            if connection.ready and connection.last_activity < cutoff and connection.outstanding == 0:
                connection.conduit.metrics.framing_errors.labels(self.settings.name, "idle").inc()
                connection.close()
        self._arm_sweep()

    def stop_accepting(self) -> None:
        if self.server is not None:
            self.server.close()
        if self.sweep_handle is not None:
            self.sweep_handle.cancel()
            self.sweep_handle = None
        for task in list(self.handshakes):
            task.cancel()

    @property
    def outstanding(self) -> int:
        return sum(c.outstanding for c in self.connections)

    def close_all(self) -> None:
        for connection in list(self.connections):
            connection.close()
