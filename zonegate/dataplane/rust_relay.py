"""Data plane on the Rust relay: the Modbus and EtherNet/IP conduits run in `zonegate._engine.Relay` (docs/relay.md).

Everything per request (accept, TLS, framing, decision, forwarding, reply matching, timeouts, counters)
happens in the relay's own threads; this module is what stays in Python, per connection or rarer:

- binding the listening sockets (the Python relay's bind code, so the errors are the same) and handing
  their file descriptors to the relay;
- the relay's events, taken on the event loop when its eventfd is readable: `identify` resolves a
  connection's principal (identity.py and the policy) and tells the relay, `audit` and `enip_audit` write
  the same JSON records the Python relay writes, `log` logs, `closed` forgets the connection, `reply`
  answers a request the OPC UA converter submitted;
- reloads: the new engine, TLS material and device list are built first and swapped in only when the
  relay accepted all of them, so a reload that fails keeps the old policy exactly as the Python relay does;
- the metrics, read from the relay's snapshot at scrape time (zonegate.controlplane.metrics).

`RustConduit` offers what the supervisor and the OPC UA converter use of `zonegate.dataplane.conduit.Conduit`;
under it the supervisor runs no Python EtherNet/IP conduit (`enip_conduit.EnipConduit`): the relay serves the
`enip_tls` and `enip` listeners too.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from time import monotonic
from typing import Any, Final

from zonegate import _engine
from zonegate.controlplane.audit import AuditLog
from zonegate.controlplane.metrics import Metrics
from zonegate.controlplane.tls import TlsConfigError, check_key_file, client_context
from zonegate.dataplane.conduit import _Generation, audit_record, certificate_files
from zonegate.dataplane.config import DeviceSettings, ListenerSettings, RuntimeSettings, TlsFiles
from zonegate.dataplane.enip_config import ENIP_PROTOCOLS, EnipDeviceSettings
from zonegate.dataplane.enip_conduit import CIP_REASONS, _Message, enip_certificate_files
from zonegate.dataplane.enip_conduit import audit_record as enip_audit_record
from zonegate.dataplane.enip_frames import Header
from zonegate.dataplane.identity import Identity, resolve_tls, tls_identity
from zonegate.dataplane.upstream import GATEWAY_PATH_UNAVAILABLE, LATENCY_BOUNDS, Pending
from zonegate.engine import MALFORMED, REASONS, VERDICTS, exception_response

log = logging.getLogger(__name__)

# One runtime thread: on the 2-core benchmark machine a second one cost more in cross-thread wake-ups than it
# gave (benchmarks/RESULTS.md, "Rust relay": 10.6 us of CPU per request with one, 15.8 with two).
RELAY_THREADS: Final = 1
LISTEN_BACKLOG: Final = 100  # asyncio's, which the Python relay's listeners use
_LOG_LEVELS: Final = {"info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}
_TLS_KINDS: Final = ("modbus_tls", "enip_tls")
_DENY: Final = VERDICTS.index("deny")


class RelayConfigError(ValueError):
    """A policy (or a build of zonegate) the Rust relay cannot run; the message says why and what to do."""


def check_relay_settings(settings: RuntimeSettings) -> None:
    """Raise `RelayConfigError` when `settings` needs what only the Python relay has."""
    for listener in (*settings.listeners, *settings.enip_listeners):
        if listener.transparent:
            raise RelayConfigError(
                f"listener {listener.name}: transparent listeners (nftables tproxy) run only in the Python "
                "relay; run with --relay python or make the listener non-transparent"
            )
    if not hasattr(_engine, "Relay"):
        raise RelayConfigError("this build of zonegate has no Rust relay (zonegate._engine.Relay); "
                               "run with --relay python")


# -- the relay's configuration ------------------------------------------------------------------------------


def _pem(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise TlsConfigError(f"{path}: cannot read {what}: {exc.strerror}") from exc


def tls_material(tls: TlsFiles) -> dict[str, bytes | None]:
    """The PEM bytes the relay builds its rustls configuration from; the key only if it is 0600."""
    check_key_file(tls.key)
    return {
        "cert": _pem(tls.cert, "certificate"),
        "key": _pem(tls.key, "private key"),
        "ca": _pem(tls.ca, "CA bundle"),
        "crl": _pem(tls.crl, "CRL") if tls.crl is not None else None,
    }


def _device_config(device: DeviceSettings) -> dict[str, Any]:
    if device.tls is not None:
        tls = device.tls
        # OpenSSL loads it first: a file it refuses fails with the Python relay's message.
        client_context(tls.cert, tls.key, tls.ca, tls.crl)
    return {
        "name": device.name,
        "host": device.host,
        "port": device.port,
        "units": [(lo, hi) for lo, hi in device.units] if device.units is not None else None,
        "max_connections": device.max_connections,
        "pipelining": device.pipelining,
        "pipeline_depth": device.pipeline_depth,
        "timeout": device.timeout,
        "tls": tls_material(device.tls) if device.tls is not None else None,
    }


def _enip_device_config(device: EnipDeviceSettings) -> dict[str, Any]:
    return {"name": device.name, "host": device.host, "port": device.port, "timeout": device.timeout,
            "max_connections": device.max_connections}


def _listener_config(listener: ListenerSettings, index: Mapping[str, int]) -> dict[str, Any]:
    tls = None
    if listener.protocol in _TLS_KINDS:
        if listener.tls is None:
            raise TlsConfigError(f"listener {listener.name}: {listener.protocol} needs tls cert, key and ca")
        tls = tls_material(listener.tls)
    return {
        "name": listener.name,
        "kind": listener.protocol,
        "tls": tls,
        # An EtherNet/IP listener's first device is the one it relays to (names without `enip:` left out).
        "devices": [index[d] for d in listener.devices if d in index],
        "max_outstanding": listener.max_outstanding,
        "idle_timeout": listener.idle_timeout,
        "request_timeout": listener.request_timeout,
    }


def relay_config(settings: RuntimeSettings, listeners: Sequence[ListenerSettings]) -> dict[str, Any]:
    """The `config` of `Relay(...)` / `Relay.reload(...)`: `listeners` in the order of the bound sockets.

    Modbus listeners' `devices` index `devices`, EtherNet/IP listeners' index `enip_devices`.
    """
    names = list(settings.devices)
    index = {name: i for i, name in enumerate(names)}
    enip_names = list(settings.enip.devices)
    enip_index = {name: i for i, name in enumerate(enip_names)}
    return {
        "listeners": [
            _listener_config(listener, enip_index if listener.protocol in ENIP_PROTOCOLS else index)
            for listener in listeners
        ],
        "devices": [_device_config(settings.devices[name]) for name in names],
        "enip_devices": [_enip_device_config(settings.enip.devices[name]) for name in enip_names],
        "latency_bounds": list(LATENCY_BOUNDS),
    }


def served_listeners(settings: RuntimeSettings) -> tuple[ListenerSettings, ...]:
    """Every listener the relay serves, in the order their sockets are bound: Modbus, then EtherNet/IP."""
    return (*settings.listeners, *settings.enip_listeners)


def _listener_settings(settings: RuntimeSettings, name: str) -> ListenerSettings:
    for listener in served_listeners(settings):
        if listener.name == name:
            return listener
    raise KeyError(name)


# -- what the supervisor and the converter see ------------------------------------------------------------


@dataclass(slots=True)
class RelayListener:
    """One listener whose socket Python bound and the relay serves."""

    settings: ListenerSettings
    port: int


class RelayPool:
    """A device as the OPC UA converter sees a `DevicePool`: `submit(Pending)`, answered through its sink.

    Requests go to the relay's own pool for the device (`Relay.submit`), so the converter's polls and
    writes share the device's connections with the Modbus clients, as under the Python relay.
    """

    __slots__ = ("conduit", "settings", "closed")

    def __init__(self, conduit: RustConduit, settings: DeviceSettings) -> None:
        self.conduit = conduit
        self.settings = settings
        self.closed = False

    def submit(self, pending: Pending) -> None:
        """Forward a request; its sink gets exactly one answer: the reply or a fault exception."""
        self.conduit.submit(self, pending)


class _Client:
    """What Python keeps of one relay connection: who it is, for its audit records."""

    __slots__ = ("listener", "tls", "identity", "host", "principal")

    def __init__(self, listener: str, tls: bool, identity: Identity, host: str | None) -> None:
        self.listener = listener
        self.tls = tls
        self.identity = identity
        self.host = host
        self.principal: str | None = None


def _peer(peer: Any) -> tuple[str, str | None]:
    """(the peer as the Python relay writes it, `host:port`; its host) from the relay's peer."""
    if isinstance(peer, (tuple, list)) and len(peer) >= 2:
        host, port = str(peer[0]), peer[1]
    else:
        text = str(peer or "")
        host, sep, port = text.rpartition(":")
        if not sep:
            return text, text or None
        host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    return f"{host}:{port}", host or None


def _utc(time_ns: int | None) -> str | None:
    """RFC 3339 with microseconds, as `zonegate.controlplane.audit.utc_now` writes it."""
    if time_ns is None:
        return None
    seconds, rest = divmod(int(time_ns), 1_000_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{rest // 1000:06d}Z"


def _code(value: Any, names: Sequence[str]) -> int:
    """An engine code, from the relay's integer or name."""
    if isinstance(value, str):
        return names.index(value)
    return int(value or 0)


class RustConduit:
    """The running data plane of one zonegate process, on the Rust relay."""

    def __init__(self, settings: RuntimeSettings, metrics: Metrics, audit: AuditLog,
                 loop: asyncio.AbstractEventLoop | None = None, *, threads: int = RELAY_THREADS) -> None:
        check_relay_settings(settings)
        self.loop = loop or asyncio.get_running_loop()
        self.metrics = metrics
        self.audit = audit
        self.threads = threads
        self.generation = _Generation(1, settings)
        self.pools: dict[str, RelayPool] = {name: RelayPool(self, d) for name, d in settings.devices.items()}
        self.listeners: list[RelayListener] = []
        self.relay: Any = None
        self.event_fd: int | None = None
        self.clients: dict[int, _Client] = {}
        self.submitted: dict[int, Pending] = {}
        self.last_snapshot: Mapping[str, Any] | None = None
        self.metrics.policy_loaded(settings.source_hash)
        self._watch_certificates(settings)

    # -- settings ---------------------------------------------------------------------------------------

    @property
    def settings(self) -> RuntimeSettings:
        return self.generation.settings

    def _watch_certificates(self, settings: RuntimeSettings) -> None:
        self.metrics.expiry.set_files(certificate_files(settings) + enip_certificate_files(settings))

    def listener(self, name: str) -> RelayListener:
        for listener in self.listeners:
            if listener.settings.name == name:
                return listener
        raise KeyError(name)

    # -- start --------------------------------------------------------------------------------------------

    async def _bind(self, settings: ListenerSettings) -> tuple[int, int]:
        """(a listening socket's fd for the relay, its port), bound as the Python relay binds it."""
        server = await self.loop.create_server(
            asyncio.Protocol, settings.host, settings.port, reuse_address=True, start_serving=False
        )
        try:
            sockets = list(server.sockets)
            if len(sockets) > 1:
                log.warning("%s: %s resolves to %d addresses; the Rust relay listens on the first, %s",
                            settings.name, settings.host, len(sockets), sockets[0].getsockname()[0])
            port = int(sockets[0].getsockname()[1])
            # A copy the relay owns (the server closes its own); not serving, the server never listened.
            sock = socket.socket(fileno=os.dup(sockets[0].fileno()))
        finally:
            server.close()
        try:
            sock.listen(LISTEN_BACKLOG)
            sock.setblocking(False)
        except OSError:
            sock.close()
            raise
        return sock.detach(), port

    async def start(self) -> None:
        settings = self.settings
        served = served_listeners(settings)
        config = relay_config(settings, served)
        fds: list[int] = []
        bound: list[RelayListener] = []
        try:
            for listener_settings in served:
                fd, port = await self._bind(listener_settings)
                fds.append(fd)
                bound.append(RelayListener(listener_settings, port))
            try:
                self.relay = _engine.Relay(self.generation.engine, config, fds, self.threads)
            except ValueError as exc:
                raise TlsConfigError(str(exc)) from exc
        except BaseException:
            if self.relay is None:
                for fd in fds:
                    os.close(fd)
            raise
        self.listeners = bound
        self.event_fd = self.relay.event_fd()
        self.loop.add_reader(self.event_fd, self._wake)
        self.metrics.watch_relay(self._snapshot)

    def _snapshot(self) -> Mapping[str, Any]:
        relay = self.relay
        if relay is None:
            if self.last_snapshot is None:
                raise RuntimeError("the relay is not running")
            return self.last_snapshot
        return relay.snapshot()  # type: ignore[no-any-return]

    # -- reload -------------------------------------------------------------------------------------------

    def reload(self, settings: RuntimeSettings) -> None:
        """Swap in a new policy; raises (keeping the old one) if its engine, TLS material or devices do not
        build, here or in the relay."""
        check_relay_settings(settings)
        generation = _Generation(self.generation.number + 1, settings)
        bound = {(x.settings.name, x.settings.protocol, x.settings.host, x.settings.port, x.settings.transparent)
                 for x in self.listeners}
        wanted = {(x.name, x.protocol, x.host, x.port, x.transparent) for x in served_listeners(settings)}
        if bound != wanted:
            log.warning("listener addresses changed in the policy; they take effect at the next restart")
        # The sockets stay those bound at start; each keeps its place, with the new settings of its name.
        listeners = []
        for listener in self.listeners:
            try:
                listeners.append(RelayListener(_listener_settings(settings, listener.settings.name), listener.port))
            except KeyError:
                listeners.append(listener)
        config = relay_config(settings, [x.settings for x in listeners])
        if self.relay is not None:
            self.relay.reload(generation.engine, config)
        self.generation = generation
        self.listeners = listeners
        pools: dict[str, RelayPool] = {}
        for name, device in settings.devices.items():
            old = self.pools.get(name)
            pools[name] = old if old is not None and old.settings == device else RelayPool(self, device)
        for name, pool in self.pools.items():
            if pools.get(name) is not pool:
                pool.closed = True
        self.pools = pools
        self.metrics.policy_loaded(settings.source_hash)
        self._watch_certificates(settings)

    # -- the relay's events -------------------------------------------------------------------------------

    def _wake(self) -> None:
        fd = self.event_fd
        if fd is None:
            return
        try:
            os.read(fd, 8)  # the eventfd's count: how many pushes woke it does not matter
        except (BlockingIOError, InterruptedError):
            pass
        self.take_events()

    def take_events(self) -> None:
        relay = self.relay
        if relay is None:
            return
        for event in relay.events():
            try:
                self._event(event)
            except Exception:  # one bad event must not stop the others (or the loop)
                log.exception("relay event %r failed", event[0] if event else event)
                if event and event[0] == "identify":
                    self._identify_safely(event[1], None)

    def _event(self, event: tuple[Any, ...]) -> None:
        kind = event[0]
        if kind == "identify":
            _, conn_id, listener, peer, der = event[:5]
            self._identify(conn_id, listener, peer, der)
        elif kind == "audit":
            self._audit(*event[1:])
        elif kind == "enip_audit":
            self._enip_audit(*event[1:])
        elif kind == "reply":
            _, token, adu, exception = event[:4]
            self._reply(token, adu, exception)
        elif kind == "closed":
            self.clients.pop(event[1], None)
        elif kind == "log":
            _, level, message = event[:3]
            log.log(_LOG_LEVELS.get(str(level), logging.INFO), "%s", message)
        elif kind == "dropped":
            _, audits, logs = event[:3]
            # The relay's queue was full: what it dropped counts as suppressed, like the audit log's own.
            self.metrics.audit_suppressed.inc(int(audits))
            log.error("%d audit records and %d log lines dropped: the control plane did not take the relay's "
                      "events in time", audits, logs)
        else:
            log.warning("relay event of unknown kind %r ignored", kind)

    def _identify(self, conn_id: int, listener: str, peer: Any, der: bytes | None) -> None:
        client = self.clients.get(conn_id)
        if client is None:
            text, host = _peer(peer)
            try:
                tls = _listener_settings(self.settings, listener).protocol in _TLS_KINDS
            except KeyError:  # a listener a reload removed: its connections still say what they presented
                tls = der is not None
            identity = tls_identity(der, text) if tls else Identity(peer=text)
            client = self.clients[conn_id] = _Client(listener, tls, identity, host)
        # Resolved under the policy in force: the relay asks again at the first request after a reload.
        settings = self.settings
        if client.tls:
            client.principal = resolve_tls(client.identity, settings.principal_for_certificate)
        else:
            client.principal = settings.principal_for_source(client.host) if client.host else None
        self._identify_safely(conn_id, client.principal)

    def _identify_safely(self, conn_id: int, principal: str | None) -> None:
        relay = self.relay
        if relay is None:
            return
        try:
            relay.identify(conn_id, principal)
        except Exception:  # the connection is gone already
            log.debug("identify %d: connection gone", conn_id)

    def _audit(self, conn_id: int, listener: str, device: str | None, adu: bytes, verdict: Any, reason: Any,
               rule: str | None, exception: int | None, malformed: Any, time_ns: int | None = None,
               *_more: Any) -> None:
        client = self.clients.get(conn_id)
        identity = client.identity if client is not None else Identity(peer="")
        request = _engine.parse_request(adu)
        self.audit.write(audit_record(
            listener, client.principal if client is not None else None, identity, device, adu,
            unit=request.unit, function=request.function, sub=request.sub, rule=rule or None,
            reason=_code(reason, REASONS), verdict=_code(verdict, VERDICTS),
            exception=exception, malformed=_code(malformed, MALFORMED), time=_utc(time_ns),
        ))

    def _enip_audit(self, conn_id: int, listener: str, device: str | None, frame: bytes, verdict: Any, reason: Any,
                    rule: str | None, service: int, target: str, route: str, leaves: int, denied_leaf: int | None,
                    malformed: str | None, general_status: int | None, encap_status: int | None,
                    time_ns: int | None = None, *_more: Any) -> None:
        client = self.clients.get(conn_id)
        identity = client.identity if client is not None else Identity(peer="")
        message = _Message(frame, Header.read(frame))
        verdict_code = _code(verdict, VERDICTS)
        self.audit.write(enip_audit_record(
            listener, client.principal if client is not None else None, identity, device, message,
            verdict=verdict_code, reason=_code(reason, CIP_REASONS), rule=rule or None, service=int(service or 0),
            target=target, route=route, leaves=int(leaves), denied_leaf=denied_leaf, malformed=malformed or None,
            general_status=general_status, encap_status=encap_status,
            # As the Python conduit: an allowed (or would-deny) message lists the writes it holds.
            writes=message.writes() if verdict_code != _DENY else None, time=_utc(time_ns),
        ))

    # -- requests the converter submits --------------------------------------------------------------------

    def submit(self, pool: RelayPool, pending: Pending) -> None:
        relay = self.relay
        if relay is None or pool.closed:
            self._answer(pending, exception_response(pending.adu, GATEWAY_PATH_UNAVAILABLE))
            return
        try:
            token = relay.submit(pool.settings.name, pending.adu)
        except Exception as exc:  # a device the relay does not know (any more): the path is unavailable
            log.warning("device %s: request not submitted: %s", pool.settings.name, exc)
            self._answer(pending, exception_response(pending.adu, GATEWAY_PATH_UNAVAILABLE))
            return
        self.submitted[token] = pending

    def _reply(self, token: int, adu: bytes | None, exception: int | None) -> None:
        pending = self.submitted.pop(token, None)
        if pending is None:
            return
        if adu is None:
            adu = exception_response(pending.adu, exception if exception is not None else GATEWAY_PATH_UNAVAILABLE)
        self._answer(pending, adu)

    @staticmethod
    def _answer(pending: Pending, adu: bytes) -> None:
        pending.answered = monotonic()
        pending.sink.deliver(adu, pending)

    # -- shutdown -----------------------------------------------------------------------------------------

    async def drain(self, timeout: float) -> None:
        """Stop accepting, wait (bounded) for forwarded requests to be answered, then close everything."""
        relay = self.relay
        if relay is None:
            return
        # In a thread: the loop keeps taking the events (audit, replies) the relay pushes while it drains.
        await asyncio.to_thread(relay.stop, timeout)
        self.take_events()
        try:
            self.last_snapshot = relay.snapshot()
        except Exception:
            self.last_snapshot = None
        if self.event_fd is not None:
            self.loop.remove_reader(self.event_fd)
            self.event_fd = None
        self.relay = None
        for pool in self.pools.values():
            pool.closed = True
        submitted, self.submitted = self.submitted, {}
        for pending in submitted.values():
            self._answer(pending, exception_response(pending.adu, GATEWAY_PATH_UNAVAILABLE))
        self.clients.clear()


def make_conduit(relay: str, settings: RuntimeSettings, metrics: Metrics, audit: AuditLog) -> Any:
    """The conduit `zonegate run --relay {python,rust}` runs."""
    if relay == "rust":
        return RustConduit(settings, metrics, audit)
    from zonegate.dataplane.conduit import Conduit

    return Conduit(settings, metrics, audit)


__all__ = ["RelayConfigError", "RelayListener", "RelayPool", "RustConduit", "check_relay_settings",
           "make_conduit", "relay_config", "served_listeners", "tls_material"]
