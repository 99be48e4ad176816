"""EtherNet/IP conduit: listener -> engine (`decide_enip`) -> the client's link to the device, and back.

Every complete encapsulation message is decided by the engine in force (the Modbus conduit's generation:
one engine, one reload). A denial never reaches the device: SendRRData / SendUnitData are answered with a
CIP reply to the outer service carrying the decision's general status (0x0F policy, 0x04 path, 0x02 rate,
...), anything refused at the encapsulation level with its status (0x0001 for a command the conduit does
not relay). What the engine allows is answered by zonegate itself (RegisterSession with a handle of its
own, ListIdentity from the identity learned from the device, ListServices, ListInterfaces; NOP gets no
reply) or forwarded on the client's link (SendRRData, SendUnitData). Requests on a session the client was
not given are answered 0x0064 and counted (`zonegate_framing_errors_total{reason="invalid_session"}`).

Metrics use the Modbus conduit's families, with `function` the service name of the deciding request
(`other` for codes without a name, the command name for what carries no CIP request). Every denial,
would-deny and allowed write (a request of access kind write anywhere in the message) is audited.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import ssl
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from zonegate import _engine
from zonegate.controlplane.audit import utc_now
from zonegate.controlplane.tls import server_context
from zonegate.dataplane import enip_frames as frames
from zonegate.dataplane.config import RuntimeSettings
from zonegate.dataplane.enip_config import EnipDeviceSettings
from zonegate.dataplane.enip_listener import EnipClient, EnipListener
from zonegate.dataplane.enip_upstream import EnipDevice, EnipPending
from zonegate.dataplane.identity import Identity
from zonegate.engine import REASONS, VERDICTS, UNKNOWN_INDEX

if TYPE_CHECKING:
    from zonegate.dataplane.conduit import Conduit
    from zonegate.dataplane.listener import ClientConnection

log = logging.getLogger(__name__)

VERDICT_DENY: Final = 1
VERDICT_WOULD_DENY: Final = 2
UNKNOWN: Final = "unknown"
CIP_REASONS: Final = (*REASONS, "route_not_allowed", "service_not_allowed", "target_not_allowed",
                      "command_not_allowed")
# Access kind `write` (docs/enip.md section 4): an allowed message holding any of these is audited.
WRITE_SERVICES: Final = frozenset((
    "set_attribute_all", "set_attribute_list", "set_attribute_single", "write_tag", "write_tag_fragmented",
    "read_modify_write_tag", "create", "delete", "apply_attributes", "restore", "save", "set_member",
    "insert_member", "remove_member",
))
CIP_RESOURCE_UNAVAILABLE: Final = 0x02
REASON_UNKNOWN_PRINCIPAL: Final = 1
_RELAYED: Final = (frames.SEND_RR_DATA, frames.SEND_UNIT_DATA)
_SESSION_BOUND: Final = (*_RELAYED, frames.UNREGISTER_SESSION)
_FORWARD_OPENS: Final = (0x54, 0x5B)  # Forward Open, Large Forward Open
_SEND_RR_DATA_BYTES: Final = frames.SEND_RR_DATA.to_bytes(2, "little")


def reason_name(reason: int) -> str:
    return CIP_REASONS[reason] if 0 <= reason < len(CIP_REASONS) else f"reason_{reason}"


@dataclass(frozen=True, slots=True)
class _Prepared:
    """What a reload builds before anything is swapped."""

    settings: RuntimeSettings
    ssl_contexts: dict[str, ssl.SSLContext]


def _contexts(settings: RuntimeSettings) -> dict[str, ssl.SSLContext]:
    contexts: dict[str, ssl.SSLContext] = {}
    for listener in settings.enip_listeners:
        if listener.protocol == "enip_tls":
            if listener.tls is None:
                raise ValueError(f"listener {listener.name}: enip_tls needs tls cert, key and ca")
            tls = listener.tls
            contexts[listener.name] = server_context(tls.cert, tls.key, tls.ca, tls.crl)
    return contexts


class _Message:
    """The parts of one decided message the answer, metrics and audit need (read once)."""

    __slots__ = ("header", "items", "leaves")

    def __init__(self, frame: bytes, header: frames.Header) -> None:
        self.header = header
        self.items = frames.items(frame) if self.header.command in _RELAYED else None
        self.leaves: list[tuple[Any, ...]] | None = None
        cip = self.items.cip if self.items is not None else None
        if cip is not None:
            try:
                self.leaves = list(_engine.cip_flatten(cip))
            except ValueError:
                self.leaves = None

    def service(self, decision: _engine.CipDecision) -> int:
        """The outer service a refusal answers: the decision's, or (refused before parsing) the request's."""
        if decision.service:
            return int(decision.service)
        cip = self.items.cip if self.items is not None else None
        return cip[0] if cip else 0

    def function(self, decision: _engine.CipDecision) -> str:
        return self.function_at(decision.denied_leaf)

    def function_at(self, denied_leaf: int | None) -> str:
        """The `function` label: the denied leaf's service name (else the first leaf's), or the command's."""
        if self.header.command not in _RELAYED:
            return frames.COMMAND_NAMES.get(self.header.command, "other")
        if not self.leaves:
            return "other"
        index = denied_leaf if denied_leaf is not None else 0
        leaf = self.leaves[index] if 0 <= index < len(self.leaves) else self.leaves[0]
        return str(leaf[0]) if leaf[0] else "other"

    def writes(self) -> list[str]:
        return [leaf_text(leaf) for leaf in self.leaves or () if leaf[0] in WRITE_SERVICES]


def leaf_text(leaf: tuple[Any, ...]) -> str:
    """`write_tag Line1_Speed` / `set_attribute_single class 0x01 instance 1 attribute 7`."""
    name = leaf[0] or f"0x{leaf[1]:02x}"
    if leaf[3]:
        return f"{name} {leaf[3]}"
    parts = [f"{label} {value:#04x}" if label == "class" else f"{label} {value}"
             for label, value in (("class", leaf[4]), ("instance", leaf[5]), ("attribute", leaf[6]))
             if value is not None]
    return " ".join([name, *parts])


def audit_record(
    conduit: str,
    principal: str | None,
    identity: Identity,
    device: str | None,
    message: _Message,
    *,
    verdict: int,
    reason: int,
    rule: str | None,
    service: int,
    target: str,
    route: str,
    leaves: int,
    denied_leaf: int | None,
    malformed: str | None,
    general_status: int | None,
    encap_status: int | None,
    writes: list[str] | None = None,
    time: str | None = None,
) -> dict[str, Any]:
    """The audit record of one decided EtherNet/IP message; both relays (Python and Rust) write exactly this."""
    command = message.header.command
    record: dict[str, Any] = {
        "time": time or utc_now(),
        "conduit": conduit,
        "principal": identity.audit(principal),
        "device": device,
        "command": frames.COMMAND_NAMES.get(command, f"0x{command:04x}"),
        "function": message.function_at(denied_leaf),
        "service_code": service,
        "target": target,
        "route": route,
        "leaves": leaves,
        "rule": rule,
        "reason": reason_name(reason),
        "verdict": VERDICTS[verdict],
    }
    if writes:
        record["writes"] = writes
    if denied_leaf is not None:
        record["denied_leaf"] = denied_leaf
    if malformed:
        record["malformed"] = malformed
    if verdict == VERDICT_DENY:
        if general_status is not None:
            record["general_status"] = general_status
        if encap_status is not None:
            record["encap_status"] = encap_status
    return record


def enip_certificate_files(settings: RuntimeSettings) -> list[tuple[str, str, Path]]:
    """(owner, certificate, path) of the `enip_tls` listeners' certificates, for the expiry gauge."""
    files: list[tuple[str, str, Path]] = []
    for listener in settings.enip_listeners:
        if listener.tls is not None:
            files += [(listener.name, "server", listener.tls.cert), (listener.name, "ca", listener.tls.ca)]
    return files


class EnipConduit:
    """The EtherNet/IP listeners and device links of one zonegate process, beside its Modbus conduit."""

    def __init__(self, core: Conduit, settings: RuntimeSettings) -> None:
        self.core = core
        self.loop = core.loop
        self.metrics = core.metrics
        self.audit = core.audit
        self.ssl_contexts = _contexts(settings)
        self.devices: dict[str, EnipDevice] = {
            name: EnipDevice(device, self.metrics, self.loop) for name, device in settings.enip.devices.items()
        }
        self.listeners: list[EnipListener] = []
        self._watch_certificates(settings)

    @property
    def settings(self) -> RuntimeSettings:
        return self.core.settings

    def flush_later(self, client: ClientConnection) -> None:
        """Write `client`'s replies in the Modbus conduit's end-of-pass flush: one callback for all clients."""
        self.core.flush_later(client)

    async def start(self) -> None:
        for listener_settings in self.settings.enip_listeners:
            listener = EnipListener(self, listener_settings)  # type: ignore[arg-type]
            await listener.start()
            self.listeners.append(listener)

    def listener(self, name: str) -> EnipListener:
        for listener in self.listeners:
            if listener.settings.name == name:
                return listener
        raise KeyError(name)

    def _watch_certificates(self, settings: RuntimeSettings) -> None:
        # The Modbus conduit registers its own files first; add ours beside them.
        files = [(owner, role, path) for (owner, role), path in self.metrics.expiry.files.items()]
        self.metrics.expiry.set_files(files + enip_certificate_files(settings))

    # -- reload -------------------------------------------------------------------------------------------

    def prepare(self, settings: RuntimeSettings) -> _Prepared:
        """Build what a reload needs (raises, changing nothing, if a TLS context does not build)."""
        return _Prepared(settings, _contexts(settings))

    def commit(self, prepared: _Prepared) -> None:
        """Swap in a prepared reload, after the Modbus conduit swapped in the same policy's engine."""
        settings = prepared.settings
        self.ssl_contexts = prepared.ssl_contexts
        devices: dict[str, EnipDevice] = {}
        for name, device_settings in settings.enip.devices.items():
            old = self.devices.get(name)
            devices[name] = old if old is not None and old.settings == device_settings else \
                EnipDevice(device_settings, self.metrics, self.loop)
        retired = [device for name, device in self.devices.items() if devices.get(name) is not device]
        self.devices = devices
        for listener in self.listeners:
            for wanted in settings.enip_listeners:
                if wanted.name == listener.settings.name:
                    listener.settings = wanted
        for device in retired:
            device.retire()
        self._watch_certificates(settings)

    # -- per message --------------------------------------------------------------------------------------

    def device_for(self, client: EnipClient) -> str | None:
        """The listener's EtherNet/IP device (one per listener: the first it names that has `enip`)."""
        for name in client.listener.settings.devices:
            if name in self.devices:
                return name
        return None

    def handle(self, client: EnipClient, frame: bytes) -> None:
        """Decide one complete encapsulation message from `client`, then answer or forward it."""
        generation = self.core.generation
        if client.principal_generation != generation.number:
            client.principal = client.resolve_principal(generation.settings)
            client.principal_generation = generation.number
            client.principal_index = (
                generation.policy.principal_index(client.principal) if client.principal else UNKNOWN_INDEX
            )
            client.device = self.device_for(client)
            client.device_index = generation.policy.device_index(client.device) if client.device else UNKNOWN_INDEX
        header = frames.Header.read(frame)
        if header.command in _SESSION_BOUND and (
            client.registered is None or header.session != client.registered
        ):
            self.metrics.framing_errors.labels(client.name, "invalid_session").inc()
            log.info("%s: %s sent command 0x%04x on session %#x, not the one it was given", client.name,
                     client.identity.peer, header.command, header.session)
            client.answer(frames.encap_error(frame, frames.STATUS_INVALID_SESSION))
            return
        device = client.device  # both looked up once per policy generation, with the principal
        decision = generation.policy.engine.decide_enip(client.principal_index, client.device_index, client.session,
                                                        frame)
        message = _Message(frame, header)
        verdict = decision.verdict
        self.metrics.count_request(client.name, client.principal or UNKNOWN, device or UNKNOWN,
                                   message.function(decision), verdict, reason_name(decision.reason))
        if verdict == VERDICT_DENY:
            self._audit(client, device, message, decision)
            if header.command == frames.REGISTER_SESSION and decision.reason == REASON_UNKNOWN_PRINCIPAL:
                # As Modbus/TCP Security's R-31 asks: the session is zonegate's own (nothing reaches the
                # device), and every request on it is then answered 0x0F, which tells the client why.
                self._register(client, frame)
                return
            self._refuse(client, frame, message, decision)
            return
        writes = message.writes()
        if verdict == VERDICT_WOULD_DENY or writes:
            self._audit(client, device, message, decision, writes)
        command = header.command
        if command in _RELAYED:
            self._forward(client, device, frame, message, decision)
        elif command == frames.REGISTER_SESSION:
            self._register(client, frame)
        elif command == frames.UNREGISTER_SESSION:
            client.close()  # no reply; the client's link unregisters zonegate's session with the device
        elif command == frames.LIST_IDENTITY:
            self._list_identity(client, device, frame)
        elif command == frames.LIST_SERVICES:
            client.answer(frames.list_services_reply(frame))
        elif command == frames.LIST_INTERFACES:
            client.answer(frames.list_interfaces_reply(frame))
        elif command != frames.NOP:  # the engine allows nothing else; should it, zonegate still does not relay it
            client.answer(frames.encap_error(frame, frames.STATUS_INVALID_COMMAND))

    def _refuse(self, client: EnipClient, frame: bytes, message: _Message, decision: _engine.CipDecision) -> None:
        if message.header.command == frames.NOP:
            return  # NOP is never answered, refused or not
        if decision.general_status is not None and message.header.command in _RELAYED:
            client.answer(frames.cip_error(frame, message.service(decision), decision.general_status,
                                           t_o_connection=self._t_o(client, message)))
        else:
            client.answer(frames.encap_error(frame, decision.encap_status or frames.STATUS_INVALID_COMMAND))

    @staticmethod
    def _t_o(client: EnipClient, message: _Message) -> int | None:
        connection = message.items.connection_id if message.items is not None else None
        return client.t_o.get(connection) if connection is not None else None

    def _register(self, client: EnipClient, frame: bytes) -> None:
        version = int.from_bytes(frame[frames.HEADER_SIZE : frames.HEADER_SIZE + 2], "little")
        if client.registered is not None:
            client.answer(frames.encap_error(frame, frames.STATUS_INVALID_COMMAND))
        elif version != frames.PROTOCOL_VERSION:
            client.answer(frames.encap_error(frame, frames.STATUS_UNSUPPORTED_PROTOCOL))
        else:
            client.registered = secrets.randbits(32) or 1
            client.answer(frames.register_reply(frame, client.registered))

    def _list_identity(self, client: EnipClient, device_name: str | None, frame: bytes) -> None:
        device = self.devices.get(device_name) if device_name else None
        if device is None:
            client.answer(frames.list_identity_reply(frame, None, None))
            return
        client.outstanding += 1

        def answer(identity: bytes | None) -> None:
            client.deliver(frames.list_identity_reply(frame, identity, client.local), None)

        device.with_identity(answer)

    def _forward(self, client: EnipClient, device_name: str | None, frame: bytes, message: _Message,
                 decision: _engine.CipDecision) -> None:
        t_o = self._t_o(client, message)
        device = self.devices.get(device_name) if device_name else None
        link = client.link
        if link is None and device is not None:
            if device.retired or time.monotonic() < device.down_until:
                self.metrics.upstream_fault(device.settings.name, "unavailable")
            elif len(device.links) >= device.settings.max_connections:
                self.metrics.upstream_fault(device.settings.name, "queue_full")
                client.session.unanswered(frame)
                client.answer(frames.cip_error(frame, message.service(decision), CIP_RESOURCE_UNAVAILABLE,
                                               t_o_connection=t_o))
                return
            else:
                link = client.link = device.open_link(client)
        now = time.monotonic()
        deadline = now + client.listener.settings.request_timeout
        pending = EnipPending(frame, message.service(decision), now, deadline, t_o)
        if message.leaves is not None:
            pending.opens = any(leaf[1] in _FORWARD_OPENS for leaf in message.leaves)
        if link is None:
            client.answer(pending.fault())
            client.session.unanswered(frame)
            return
        client.outstanding += 1
        link.submit(pending)

    def forwarded_reply(self, client: EnipClient, frame: bytes, pending: EnipPending) -> None:
        total = time.monotonic() - pending.started
        self.metrics.gateway_latency_observe(client.name, max(0.0, total - pending.upstream_seconds))
        if pending.unanswered:
            # The gateway answered: a Forward Open in it made no connection the client knows of (its retry is
            # no duplicate).
            if pending.opens:
                client.session.unanswered(pending.frame)
            return
        if pending.opens and frame[0:2] == _SEND_RR_DATA_BYTES:
            parsed = frames.items(frame)
            ids = frames.forward_open_ids(parsed.cip) if parsed is not None and parsed.cip else None
            if ids is not None:
                client.t_o[ids[0]] = ids[1]

    # -- audit --------------------------------------------------------------------------------------------

    def _audit(self, client: EnipClient, device: str | None, message: _Message, decision: _engine.CipDecision,
               writes: list[str] | None = None) -> None:
        self.audit.write(audit_record(
            client.name, client.principal, client.identity, device, message, verdict=decision.verdict,
            reason=decision.reason, rule=decision.rule_id or None, service=decision.service, target=decision.target,
            route=decision.route, leaves=decision.leaves, denied_leaf=decision.denied_leaf,
            malformed=decision.malformed, general_status=decision.general_status,
            encap_status=decision.encap_status, writes=writes,
        ))

    # -- shutdown -----------------------------------------------------------------------------------------

    @property
    def outstanding(self) -> int:
        return sum(listener.outstanding for listener in self.listeners)

    def stop_accepting(self) -> None:
        for listener in self.listeners:
            listener.stop_accepting()

    async def drain(self, timeout: float) -> None:
        """Stop accepting, wait (bounded) for forwarded messages to be answered, then close everything."""
        self.stop_accepting()
        deadline = self.loop.time() + timeout
        while self.outstanding and self.loop.time() < deadline:
            await asyncio.sleep(0.02)
        for listener in self.listeners:
            listener.close_all()
        for device in self.devices.values():
            device.close()
        for listener in self.listeners:
            if listener.server is not None:
                await listener.server.wait_closed()


async def start_enip(core: Conduit, settings: RuntimeSettings) -> EnipConduit | None:
    """The EtherNet/IP conduit of a policy with EtherNet/IP listeners, started; None when it has none."""
    if not settings.enip_listeners:
        return None
    conduit = EnipConduit(core, settings)
    await conduit.start()
    return conduit


__all__ = ["EnipConduit", "EnipDeviceSettings", "audit_record", "enip_certificate_files", "start_enip"]
