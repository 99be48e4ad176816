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
import time
from dataclasses import replace
from typing import Any, Final

from zonegate import _engine
from zonegate.controlplane.audit import AuditLog, utc_now
from zonegate.controlplane.metrics import Metrics, function_name
from zonegate.controlplane.tls import client_context, server_context
from zonegate.dataplane.config import DeviceSettings, ListenerSettings, RuntimeSettings
from zonegate.dataplane.listener import ClientConnection, Listener
from zonegate.dataplane.transparent import DeviceMap
from zonegate.dataplane.upstream import GATEWAY_PATH_UNAVAILABLE, DevicePool, Pending
from zonegate.engine import MALFORMED, REASONS, TABLES, UNKNOWN_INDEX, VERDICTS, CompiledPolicy, exception_response

log = logging.getLogger(__name__)

VERDICT_DENY: Final = 1
VERDICT_WOULD_DENY: Final = 2
WRITE_FUNCTIONS: Final = frozenset((5, 6, 15, 16, 21, 22, 23))
UNKNOWN: Final = "unknown"


class _Generation:
    """One policy in force: the engine, settings, routes and TLS contexts built from it."""

    __slots__ = ("number", "policy", "settings", "routes", "ssl_contexts", "device_indices")

    def __init__(self, number: int, settings: RuntimeSettings) -> None:
        self.number = number
        self.settings = settings
        self.policy = CompiledPolicy(dict(settings.ir))
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
        files = []
        for listener in settings.listeners:
            if listener.tls is not None:
                files += [(listener.name, "server", listener.tls.cert), (listener.name, "ca", listener.tls.ca)]
        for device in settings.devices.values():
            if device.tls is not None:
                files += [(device.name, "client", device.tls.cert), (device.name, "ca", device.tls.ca)]
        self.metrics.expiry.set_files(files)

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

    def handle(self, client: ClientConnection, adu: bytes) -> None:
        """Decide one complete request ADU from `client` and answer or forward it."""
        generation = self.generation
        if client.principal_generation != generation.number:  # first request, or a reload since the last
            client.principal = client.resolve_principal(generation.settings)
            client.principal_generation = generation.number
            client.principal_index = (
                generation.policy.principal_index(client.principal) if client.principal else UNKNOWN_INDEX
            )
        unit = adu[6]
        if client.device is not None:  # a diverted client dialled its device; a reload may have dropped it
            device = client.device if client.device in client.listener.settings.devices else None
        else:
            device = generation.route(client.name, unit)
        device_index = generation.device_indices.get(device, UNKNOWN_INDEX) if device else UNKNOWN_INDEX
        decision = generation.policy.engine.decide(client.principal_index, device_index, adu)
        verdict = decision.verdict
        principal_label = client.principal or UNKNOWN
        device_label = device or UNKNOWN
        self.metrics.count_request(client.name, principal_label, device_label, decision.function, verdict,
                                   decision.reason)
        if verdict == VERDICT_DENY:
            self._audit(client, device, adu, decision)
            client.answer(exception_response(adu, decision.exception_code or 0x01))
            return
        if verdict == VERDICT_WOULD_DENY or decision.function in WRITE_FUNCTIONS:
            self._audit(client, device, adu, decision)
        pool = self.pools.get(device) if device else None
        if pool is None:
            client.answer(exception_response(adu, GATEWAY_PATH_UNAVAILABLE))
            return
        now = time.monotonic()
        client.outstanding += 1
        pool.submit(Pending(adu, client, now, now + client.listener.settings.request_timeout))

    def forwarded_reply(self, client: ClientConnection, adu: bytes, pending: Pending) -> None:
        total = time.monotonic() - pending.started
        self.metrics.gateway_latency_observe(client.name, max(0.0, total - pending.upstream_seconds))

    # -- audit ----------------------------------------------------------------------------------------------

    def _audit(self, client: ClientConnection, device: str | None, adu: bytes, decision: Any) -> None:
        request = _engine.parse_request(adu)
        ranges = [
            {"table": TABLES[t], "start": s, "end": e, "access": "write" if w else "read"}
            for t, s, e, w in request.ranges
        ]
        record: dict[str, Any] = {
            "time": utc_now(),
            "conduit": client.name,
            "principal": {
                "name": client.principal,
                "role": client.identity.role,
                "subject": client.identity.subject,
                "peer": client.identity.peer,
            },
            "device": device,
            "unit": decision.unit,
            "function": function_name(decision.function),
            "function_code": decision.function,
            "table": ranges[0]["table"] if ranges else None,
            "ranges": ranges,
            "values": [v for _t, _a, v in request.values],
            "rule": decision.rule_id or None,
            "reason": REASONS[decision.reason],
            "verdict": VERDICTS[decision.verdict],
        }
        if decision.sub is not None:
            record["sub"] = decision.sub
        if decision.malformed:
            record["malformed"] = MALFORMED[decision.malformed]
        if decision.exception_code is not None and decision.verdict == VERDICT_DENY:
            record["exception"] = decision.exception_code
        self.audit.write(record)

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

