"""Data plane, the conduit: listener -> engine -> upstream, and back.

Every complete request ADU from a listener is routed to the listed device whose units hold its unit id
(on a transparent listener: to the device whose address the client dialled),
decided by the engine in force, then either answered with the engine's exception (deny), or forwarded
to that device's pool (allow, and would_deny in monitor mode). Denials and allowed writes are audited;
every decision is counted. A reload builds the new engine, TLS contexts and pools first and swaps them
in only when all of them built: open connections keep working and their next request meets the new
engine.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from bisect import bisect_left
from dataclasses import replace
from pathlib import Path
from time import monotonic
from typing import Any, Final, NamedTuple

from zonegate import _engine
from zonegate.controlplane.audit import AuditLog, utc_now
from zonegate.controlplane.metrics import Metrics, function_name
from zonegate.controlplane.tls import client_context, server_context
from zonegate.dataplane.config import DeviceSettings, ListenerSettings, RuntimeSettings
from zonegate.dataplane.end_of_pass import EndOfPass
from zonegate.dataplane.identity import Identity
from zonegate.dataplane.listener import ClientConnection, Listener
from zonegate.dataplane.transparent import DeviceMap
from zonegate.dataplane.upstream import GATEWAY_PATH_UNAVAILABLE, LATENCY_BOUNDS, DevicePool, Pending
from zonegate.engine import MALFORMED, REASONS, TABLES, UNKNOWN_INDEX, VERDICTS, CompiledPolicy, exception_response

log = logging.getLogger(__name__)

VERDICT_DENY: Final = 1
VERDICT_WOULD_DENY: Final = 2
WRITE_FUNCTIONS: Final = frozenset((5, 6, 15, 16, 21, 22, 23))
UNKNOWN: Final = "unknown"


def certificate_files(settings: RuntimeSettings) -> list[tuple[str, str, Path]]:
    """(owner, certificate, path) of every certificate the Modbus conduits use, for the expiry gauge."""
    files: list[tuple[str, str, Path]] = []
    for listener in settings.listeners:
        if listener.tls is not None:
            files += [(listener.name, "server", listener.tls.cert), (listener.name, "ca", listener.tls.ca)]
    for device in settings.devices.values():
        if device.tls is not None:
            files += [(device.name, "client", device.tls.cert), (device.name, "ca", device.tls.ca)]
    return files


class Route(NamedTuple):
    """Where one client's requests for one unit go under one policy generation (cached per client)."""

    device: str | None
    device_index: int
    pool: DevicePool | None
    principal_label: str
    device_label: str
    request_timeout: float


class _Generation:
    """One policy in force: the engine, settings, routes and TLS contexts built from it."""

    __slots__ = ("number", "policy", "engine", "settings", "routes", "ssl_contexts", "device_indices")

    def __init__(self, number: int, settings: RuntimeSettings) -> None:
        self.number = number
        self.settings = settings
        self.policy = CompiledPolicy(dict(settings.ir))
        self.engine = self.policy.engine
        # (listener, unit) -> device name; filled lazily
        self.routes: dict[tuple[str, int], str | None] = {}
        self.device_indices = {name: self.policy.device_index(name) for name in settings.devices}
        self.ssl_contexts: dict[str, ssl.SSLContext] = {}
        for listener in settings.listeners:
            if listener.protocol == "modbus_tls":
                if listener.tls is None:
                    raise ValueError(f"listener {listener.name}: modbus_tls needs tls cert, key and ca")
                tls = listener.tls
                self.ssl_contexts[listener.name] = server_context(tls.cert, tls.key, tls.ca, tls.crl)

    def route(self, listener: str, unit: int) -> str | None:
        key = (listener, unit)
        try:
            return self.routes[key]
        except KeyError:
            pass
        device: str | None = None
        for name in self.settings.listener(listener).devices:
            settings = self.settings.devices.get(name)
            if settings is not None and settings.holds_unit(unit):
                device = name
                break
        self.routes[key] = device
        return device


class Conduit:
    """The running data plane of one zonegate process."""

    def __init__(self, settings: RuntimeSettings, metrics: Metrics, audit: AuditLog,
                 loop: asyncio.AbstractEventLoop | None = None) -> None:
        self.loop = loop or asyncio.get_running_loop()
        self.metrics = metrics
        self.audit = audit
        self.generation = _Generation(1, settings)
        self.pools: dict[str, DevicePool] = {}
        self.listeners: list[Listener] = []
        self.request_counts = metrics.request_counts()
        self.gateway_series: dict[str, list[float]] = {}
        self.replies: EndOfPass[ClientConnection] = EndOfPass(self.loop, self._flush_failed)
        self._build_pools(settings)
        self.metrics.policy_loaded(settings.source_hash)
        self._watch_certificates(settings)

    # -- settings ---------------------------------------------------------------------------------------

    @property
    def settings(self) -> RuntimeSettings:
        return self.generation.settings

    @property
    def ssl_contexts(self) -> dict[str, ssl.SSLContext]:
        return self.generation.ssl_contexts

    def _pool_for(self, settings: DeviceSettings) -> DevicePool:
        context = None
        if settings.tls is not None:
            tls = settings.tls
            context = client_context(tls.cert, tls.key, tls.ca, tls.crl)
        return DevicePool(settings, ssl_context=context, observer=self.metrics, loop=self.loop)

    def _build_pools(self, settings: RuntimeSettings) -> None:
        for name, device in settings.devices.items():
            self.pools[name] = self._pool_for(device)

    def _watch_certificates(self, settings: RuntimeSettings) -> None:
        self.metrics.expiry.set_files(certificate_files(settings))

    async def start(self) -> None:
        for listener_settings in self.settings.listeners:
            listener = Listener(self, listener_settings)
            await listener.start()
            self.listeners.append(listener)

    def listener(self, name: str) -> Listener:
        for listener in self.listeners:
            if listener.settings.name == name:
                return listener
        raise KeyError(name)

    def reload(self, settings: RuntimeSettings) -> None:
        """Swap in a new policy; raises (keeping the old one) if its engine or TLS contexts do not build."""
        generation = _Generation(self.generation.number + 1, settings)
        new_pools: dict[str, DevicePool] = {}
        for name, device in settings.devices.items():
            old = self.pools.get(name)
            new_pools[name] = old if old is not None and old.settings == device else self._pool_for(device)
        bound = {(x.settings.name, x.settings.protocol, x.settings.host, x.settings.port, x.settings.transparent)
                 for x in self.listeners}
        wanted = {(x.name, x.protocol, x.host, x.port, x.transparent) for x in settings.listeners}
        if bound != wanted:
            log.warning("listener addresses changed in the policy; they take effect at the next restart")
        # Built before the swap: a device address a diverted connection cannot be matched to fails the reload.
        device_maps: dict[str, tuple[ListenerSettings, DeviceMap]] = {}
        for listener in self.listeners:
            try:
                wanted_settings = settings.listener(listener.settings.name)
            except KeyError:
                continue
            # The socket keeps the mode it was bound with until the next restart.
            wanted_settings = replace(wanted_settings, transparent=listener.settings.transparent)
            device_maps[listener.settings.name] = (wanted_settings, Listener.device_map(settings, wanted_settings))
        retired = [pool for name, pool in self.pools.items() if new_pools.get(name) is not pool]
        self.generation = generation
        self.pools = new_pools
        for listener in self.listeners:
            if listener.settings.name in device_maps:
                listener.settings, listener.devices = device_maps[listener.settings.name]
        for pool in retired:
            pool.retire()
        self.metrics.policy_loaded(settings.source_hash)
        self._watch_certificates(settings)

    # -- per request --------------------------------------------------------------------------------------

    def handle(self, client: ClientConnection, adu: bytes, now: float) -> None:
        """Decide one complete request ADU from `client` (read at `now`) and answer or forward it."""
        generation = self.generation
        if client.principal_generation != generation.number:  # first request, or a reload since the last
            self._resolve(client, generation)
        route = client.routes.get(adu[6])
        if route is None:
            route = self._route(client, generation, adu[6])
        decision = generation.engine.decide(client.principal_index, route.device_index, adu)
        verdict = decision.verdict
        function = decision.function
        counts = self.request_counts
        key = (client.name, route.principal_label, route.device_label, function, verdict, decision.reason)
        counts[key] = counts.get(key, 0) + 1
        if verdict == VERDICT_DENY:
            self._audit(client, route.device, adu, decision)
            client.answer(exception_response(adu, decision.exception_code or 0x01))
            return
        if verdict == VERDICT_WOULD_DENY or function in WRITE_FUNCTIONS:
            self._audit(client, route.device, adu, decision)
        pool = route.pool
        if pool is None:
            client.answer(exception_response(adu, GATEWAY_PATH_UNAVAILABLE))
            return
        client.outstanding += 1
        pool.submit(Pending(adu, client, now, now + route.request_timeout))

    def _resolve(self, client: ClientConnection, generation: _Generation) -> None:
        client.principal = client.resolve_principal(generation.settings)
        client.principal_generation = generation.number
        client.principal_index = (
            generation.policy.principal_index(client.principal) if client.principal else UNKNOWN_INDEX
        )
        client.routes = {}

    def _route(self, client: ClientConnection, generation: _Generation, unit: int) -> Route:
        if client.device is not None:  # a diverted client dialled its device; a reload may have dropped it
            device = client.device if client.device in client.listener.settings.devices else None
        else:
            device = generation.route(client.name, unit)
        route = Route(
            device=device,
            device_index=generation.device_indices.get(device, UNKNOWN_INDEX) if device else UNKNOWN_INDEX,
            pool=self.pools.get(device) if device else None,
            principal_label=client.principal or UNKNOWN,
            device_label=device or UNKNOWN,
            request_timeout=client.listener.settings.request_timeout,
        )
        client.routes[unit] = route
        return route

    def forwarded_reply(self, client: ClientConnection, pending: Pending) -> None:
        seconds = (pending.answered or monotonic()) - pending.started - pending.upstream_seconds
        if seconds < 0.0:
            seconds = 0.0
        series = self.gateway_series.get(client.name)
        if series is None:
            series = self.gateway_series[client.name] = self.metrics.gateway_latency_series(client.name)
        series[bisect_left(LATENCY_BOUNDS, seconds)] += 1
        series[-1] += seconds

    def flush_later(self, client: ClientConnection) -> None:
        """Write `client`'s replies at the end of this loop pass, with every other client's: one callback."""
        self.replies.add(client)

    def _flush_failed(self, client: ClientConnection) -> None:
        log.exception("%s: internal error writing to %s", client.name, client.identity.peer)
        client.close()

    # -- audit ----------------------------------------------------------------------------------------------

    def _audit(self, client: ClientConnection, device: str | None, adu: bytes, decision: Any) -> None:
        self.audit.write(audit_record(
            client.name, client.principal, client.identity, device, adu,
            unit=decision.unit, function=decision.function, sub=decision.sub, rule=decision.rule_id or None,
            reason=decision.reason, verdict=decision.verdict,
            exception=decision.exception_code, malformed=decision.malformed,
        ))

    # -- shutdown -----------------------------------------------------------------------------------------

    @property
    def outstanding(self) -> int:
        return sum(listener.outstanding for listener in self.listeners)

    async def drain(self, timeout: float) -> None:
        """Stop accepting, wait (bounded) for forwarded requests to be answered, then close everything."""
        for listener in self.listeners:
            listener.stop_accepting()
        deadline = self.loop.time() + timeout
        while self.outstanding and self.loop.time() < deadline:
            await asyncio.sleep(0.02)
        for listener in self.listeners:
            listener.close_all()
        for pool in self.pools.values():
            pool.close()
        for listener in self.listeners:
            if listener.server is not None:
                await listener.server.wait_closed()



def audit_record(
    conduit: str,
    principal: str | None,
    identity: Identity,
    device: str | None,
    adu: bytes,
    *,
    unit: int,
    function: int,
    sub: int | None,
    rule: str | None,
    reason: int,
    verdict: int,
    exception: int | None,
    malformed: int,
    time: str | None = None,
) -> dict[str, Any]:
    """The audit record of one decided request; both relays (Python and Rust) write exactly this."""
    request = _engine.parse_request(adu)
    ranges = [
        {"table": TABLES[t], "start": s, "end": e, "access": "write" if w else "read"}
        for t, s, e, w in request.ranges
    ]
    record: dict[str, Any] = {
        "time": time or utc_now(),
        "conduit": conduit,
        "principal": identity.audit(principal),
        "device": device,
        "unit": unit,
        "function": function_name(function),
        "function_code": function,
        "table": ranges[0]["table"] if ranges else None,
        "ranges": ranges,
        "values": [v for _t, _a, v in request.values],
        "rule": rule,
        "reason": REASONS[reason],
        "verdict": VERDICTS[verdict],
    }
    if sub is not None:
        record["sub"] = sub
    if malformed:
        record["malformed"] = MALFORMED[malformed]
    if exception is not None and verdict == VERDICT_DENY:
        record["exception"] = exception
    return record
