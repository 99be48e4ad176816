"""OPC UA converter, listener stage: the zone's devices as a secure OPC UA server toward level 3.

```
 level-3 OPC UA client
   | Hello / OpenSecureChannel (Basic256Sha256, Aes128_Sha256_RsaOaep, Aes256_Sha256_RsaPss)
   v
 GuardedProcessor -- channel not in a required mode: only discovery, everything else BadSecurityModeRejected
   | CreateSession: client certificate against the trust list (BadCertificateUntrusted)
   | ActivateSession: user name + password, or X.509 user certificate -> policy principal (opcua_users)
   | Read / Browse / Subscribe: the address space, fed by the poller (opcua_poll)
   | Write: TagWriter (opcua_writes) -> engine -> device pool -> the device's answer per item
```

asyncua opens a SecurityPolicy#None channel whenever a client asks for one (it needs it for
discovery), even when no None endpoint is configured, and then serves sessions and reads over it.
`GuardedProcessor` closes that hole: on a channel whose mode is not one the policy requires, only
Hello, OpenSecureChannel, CloseSecureChannel, GetEndpoints and FindServers are answered.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import gc
import logging
import os
import stat
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Final, cast

from asyncua import Server, ua
from cryptography import x509
from asyncua.common.connection import TransportLimits
from asyncua.common.utils import ServiceError
from asyncua.crypto import uacrypto
from asyncua.crypto.security_policies import SecurityPolicyNone
from asyncua.server.binary_server_asyncio import BinaryServer, OPCUAProtocol
from asyncua.server.internal_server import InternalServer
from asyncua.server.uaprocessor import UaProcessor
from asyncua.ua.ua_binary import struct_from_binary

from zonegate.controlplane.audit import AuditLog
from zonegate.convert.errors import ConverterError
from zonegate.convert.opcua_cip import CipLink, CipReader, CipWriter, plan_cip_reads
from zonegate.convert.opcua_link import PoolLink, PoolSource
from zonegate.convert.opcua_pki import TrustList, first_der_certificate
from zonegate.convert.opcua_poll import CYCLE_BUCKETS, GOOD, DeviceLink, Poller, plan_reads
from zonegate.convert.opcua_tags import OpcuaSettings, Tag, TagError, settings_from_policy
from zonegate.convert.opcua_users import (
    PasswordFile,
    PasswordFileError,
    PrincipalUserManager,
    UserCertificate,
    principals_by_user,
)
from zonegate.convert.opcua_writes import TagWriter, writers_of
from zonegate.dataplane.config import DeviceSettings
from zonegate.dataplane.enip_config import enip_settings
from zonegate.engine import CompiledPolicy

log = logging.getLogger(__name__)


def node_id(identifier: str | int, namespace: int = 0) -> ua.NodeId:
    return ua.NodeId(cast(ua.String, identifier), cast(ua.Int16, namespace))


def ua_status(code: int) -> ua.StatusCode:
    return ua.StatusCode(cast(ua.UInt32, code))


def ua_time(moment: dt.datetime) -> ua.DateTime:
    return cast(ua.DateTime, moment)


# Services answered on a channel that is not in a required mode: discovery and channel upkeep only.
DISCOVERY_SERVICES: Final = frozenset(
    node_id(i)
    for i in (
        ua.ObjectIds.GetEndpointsRequest_Encoding_DefaultBinary,
        ua.ObjectIds.FindServersRequest_Encoding_DefaultBinary,
        ua.ObjectIds.CloseSecureChannelRequest_Encoding_DefaultBinary,
    )
)
CREATE_SESSION: Final = node_id(ua.ObjectIds.CreateSessionRequest_Encoding_DefaultBinary)
READ: Final = node_id(ua.ObjectIds.ReadRequest_Encoding_DefaultBinary)
WRITE: Final = node_id(ua.ObjectIds.WriteRequest_Encoding_DefaultBinary)

POLICY_TYPES: Final[Mapping[tuple[str, str], ua.SecurityPolicyType]] = {
    ("Basic256Sha256", "SignAndEncrypt"): ua.SecurityPolicyType.Basic256Sha256_SignAndEncrypt,
    ("Basic256Sha256", "Sign"): ua.SecurityPolicyType.Basic256Sha256_Sign,
    ("Aes128_Sha256_RsaOaep", "SignAndEncrypt"): ua.SecurityPolicyType.Aes128Sha256RsaOaep_SignAndEncrypt,
    ("Aes128_Sha256_RsaOaep", "Sign"): ua.SecurityPolicyType.Aes128Sha256RsaOaep_Sign,
    ("Aes256_Sha256_RsaPss", "SignAndEncrypt"): ua.SecurityPolicyType.Aes256Sha256RsaPss_SignAndEncrypt,
    ("Aes256_Sha256_RsaPss", "Sign"): ua.SecurityPolicyType.Aes256Sha256RsaPss_Sign,
}
MODES: Final[Mapping[str, ua.MessageSecurityMode]] = {
    "Sign": ua.MessageSecurityMode.Sign,
    "SignAndEncrypt": ua.MessageSecurityMode.SignAndEncrypt,
}
VARIANT_TYPES: Final[Mapping[str, ua.VariantType]] = {
    "bool": ua.VariantType.Boolean, "int16": ua.VariantType.Int16, "uint16": ua.VariantType.UInt16,
    "int32": ua.VariantType.Int32, "uint32": ua.VariantType.UInt32, "int64": ua.VariantType.Int64,
    "uint64": ua.VariantType.UInt64, "float32": ua.VariantType.Float, "float64": ua.VariantType.Double,
    "string": ua.VariantType.String,
    # Logix types of CIP tags
    "sint": ua.VariantType.SByte, "int": ua.VariantType.Int16, "dint": ua.VariantType.Int32,
    "lint": ua.VariantType.Int64, "real": ua.VariantType.Float, "lreal": ua.VariantType.Double,
}
CERTIFICATE_STATUS: Final[Mapping[str, int]] = {
    "untrusted": ua.StatusCodes.BadCertificateUntrusted,
    "revoked": ua.StatusCodes.BadCertificateRevoked,
    "expired": ua.StatusCodes.BadCertificateTimeInvalid,
}
UNIT_NAMESPACE: Final = "http://www.opcfoundation.org/UA/units/un/cefact"
# Net allocations of tracked objects between two collections of the youngest generation (see _tune_collector).
YOUNG_COLLECTION_THRESHOLD: Final = 10_000


class PublishedValue(ua.DataValue):
    """A polled value as the converter publishes it: never changed once made (the next poll makes a new
    one), so asyncua's deep copy per monitored item, most of the cost of a change, can be the value itself."""

    __slots__ = ()

    def __deepcopy__(self, memo: dict[int, Any]) -> PublishedValue:
        return self


@dataclass
class ChannelStats:
    """Refusals at the listener: insecure channels and client certificates, and each by kind."""

    refused_insecure: int = 0
    refused_certificate: int = 0
    by_kind: dict[str, int] = field(default_factory=dict)

    def count(self, kind: str) -> None:
        self.by_kind[kind] = self.by_kind.get(kind, 0) + 1


def variant_type(tag: Tag) -> ua.VariantType:
    return ua.VariantType.Double if tag.scaled else VARIANT_TYPES[tag.type]


def _check_key_file(path: Path) -> None:
    try:
        mode = os.stat(path).st_mode
    except OSError as exc:
        raise ConverterError(f"{path}: cannot read the server key: {exc.strerror}") from None
    if not stat.S_ISREG(mode) or mode & 0o077:
        raise ConverterError(f"{path}: the server key must be a regular file with mode 0600")


def _certificate_uris(cert: x509.Certificate) -> list[str]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return list(san.get_values_for_type(x509.UniformResourceIdentifier))


def _check_application_uri(cert: x509.Certificate | None, uri: str, path: Path) -> None:
    """Clients check that the server's certificate names the server's application URI; so does zonegate,
    before it serves anything."""
    if cert is None or uri not in _certificate_uris(cert):
        raise ConverterError(f"{path}: the server certificate must carry the application URI {uri} as a URI "
                             "subject alternative name")


def _format(path: Path) -> str:
    """`pem` or `der` by content: certificate files are named .crt/.key here, not by encoding."""
    with open(path, "rb") as handle:
        return "pem" if handle.read(11) == b"-----BEGIN " else "der"


def _check_asyncua_hooks() -> None:
    """Refuse to serve when asyncua no longer has the methods the guard replaces (a silent bypass)."""
    hooks = (
        (UaProcessor, "_process_message"), (OPCUAProtocol, "connection_made"), (BinaryServer, "_make_protocol"),
        (Server, "_setup_server_nodes"), (Server, "_get_bind_socket_info"),
        (InternalServer, "verify_x509_token"),
    )
    missing = [f"{cls.__name__}.{name}" for cls, name in hooks if not callable(getattr(cls, name, None))]
    if missing:
        raise ConverterError(f"opcua: this asyncua lacks {', '.join(missing)}; the channel guard cannot be installed")


class GuardedProcessor(UaProcessor):
    """asyncua's per-connection processor, refusing what the channel's security does not allow and
    routing tag writes through the engine."""

    converter: OpcuaConverter

    def _channel_secure(self) -> bool:
        policy = self._connection.security_policy
        return not isinstance(policy, SecurityPolicyNone) and policy.Mode in self.converter.modes

    async def _process_message(self, typeid: Any, requesthdr: Any, seqhdr: Any, body: Any) -> Any:
        stats = self.converter.channel_stats
        if not self._channel_secure() and typeid not in DISCOVERY_SERVICES:
            stats.refused_insecure += 1
            stats.count("insecure_channel")
            log.warning("opcua: refused service %s from %s on a channel without the required security",
                        typeid.Identifier, self.name)
            raise ServiceError(ua.StatusCodes.BadSecurityModeRejected)
        if typeid == CREATE_SESSION:
            self._check_peer_certificate()
        elif typeid in (READ, WRITE) and self.session is not None and self.session.is_activated():
            permissions = self._connection.security_policy.permissions  # asyncua's role check, kept
            if permissions is not None and permissions.check_validity(self.session.user, typeid, body) is False:
                raise ua.uaerrors.BadUserAccessDenied
            await (self._read if typeid == READ else self._write)(requesthdr, seqhdr, body)
            return True
        return await super()._process_message(typeid, requesthdr, seqhdr, body)

    def _touch(self) -> None:
        assert self.session is not None
        self.session_last_activity = time.monotonic()  # asyncua's session watchdog clock
        self.session.touch()

    async def _read(self, requesthdr: Any, seqhdr: Any, body: Any) -> None:
        """asyncua's Read, with tags' UserAccessLevel as this session's principal sees it."""
        assert self.session is not None
        self._touch()
        params = struct_from_binary(ua.ReadParameters, body)
        results = await self.session.read(params)
        self.converter.user_access(self.session.user, params, results)
        response = ua.ReadResponse()
        response.Results = results
        self.send_response(requesthdr.RequestHandle, seqhdr, response)

    async def _write(self, requesthdr: Any, seqhdr: Any, body: Any) -> None:
        """Every client write goes through the converter (engine, device), never asyncua's own."""
        assert self.session is not None
        self._touch()
        params = struct_from_binary(ua.WriteParameters, body)
        response = ua.WriteResponse()
        response.Results = await self.converter.write(self.session.user, params)
        self.send_response(requesthdr.RequestHandle, seqhdr, response)

    def _check_peer_certificate(self) -> None:
        stats = self.converter.channel_stats
        der = self._connection.security_policy.peer_certificate
        verdict = "untrusted"
        if der:
            try:
                verdict = self.converter.trust.check(first_der_certificate(bytes(der))) or ""
            except ValueError:
                verdict = "untrusted"
        if verdict:
            stats.refused_certificate += 1
            stats.count(f"certificate_{verdict}")
            log.warning("opcua: refused a session from %s: client certificate %s", self.name, verdict)
            raise ServiceError(CERTIFICATE_STATUS[verdict])


class _GuardedProtocol(OPCUAProtocol):
    converter: OpcuaConverter

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        if self.processor is not None:  # None when refused at max_connections
            processor = GuardedProcessor(self.iserver, self.transport, self.limits)
            processor.converter = self.converter
            processor.set_policies(self.policies)
            self.processor = processor


class _GuardedBinaryServer(BinaryServer):
    def __init__(self, iserver: InternalServer, host: str | None, port: int | None, limits: TransportLimits,
                 converter: OpcuaConverter) -> None:
        super().__init__(iserver, host, port, limits)  # type: ignore[arg-type]
        self.converter = converter

    def _make_protocol(self) -> OPCUAProtocol:
        protocol = _GuardedProtocol(
            iserver=self.iserver, policies=self._policies, clients=self.clients,
            closing_tasks=self.closing_tasks, limits=self.limits,
        )
        protocol.converter = self.converter
        return protocol


class _ZoneServer(Server):
    """asyncua's Server with the guarded listener in place of its own."""

    converter: OpcuaConverter

    async def start(self) -> None:
        if self.iserver.certificate is not None:
            uacrypto.check_certificate(self.iserver.certificate, self._application_uri, "localhost")
        await self._setup_server_nodes()
        await self.iserver.start()
        host, port = self._get_bind_socket_info()
        bserver = _GuardedBinaryServer(self.iserver, host, port, self.limits, self.converter)
        bserver.set_policies(self._policies)
        try:
            await bserver.start()
        except Exception:
            await self.iserver.stop()
            raise
        self.bserver = bserver


class OpcuaConverter:
    """The running converter: server, address space, poller and writer of one policy."""

    def __init__(self, settings: OpcuaSettings, policy: CompiledPolicy, link: DeviceLink,
                 users: PrincipalUserManager, trust: TrustList, audit: AuditLog | None,
                 cip_link: CipLink | None = None) -> None:
        self.settings = settings
        self.policy = policy
        self.link = link
        self.cip_link = cip_link
        self.users = users
        self.trust = trust
        self.channel_stats = ChannelStats()
        self.metrics: Any = None  # zonegate.controlplane.metrics.Metrics, when exported
        self.modes = frozenset(MODES[m] for m in settings.modes)
        self.writer = TagWriter(policy, link, audit, settings.timeout)
        self.poller = Poller([*plan_reads(settings.tags), *plan_cip_reads(settings.tags)], policy,
                             settings.poll_principal, link, self._publish, settings.timeout)
        if cip_link is not None:
            self.poller.cip = CipReader(cip_link)
            self.writer.cip = CipWriter(cip_link, audit, settings.timeout)
        self.writers = {tag.name: writers_of(policy.ir, tag) for tag in settings.tags}
        self.nodes: dict[ua.NodeId, Tag] = {}
        self.node_of: dict[str, ua.NodeId] = {}
        self._last: dict[str, tuple[object, int]] = {}
        self._stamp: tuple[float, ua.DateTime] = (0.0, ua_time(dt.datetime.fromtimestamp(0, dt.timezone.utc)))
        self.server = _ZoneServer(user_manager=users)  # type: ignore[arg-type]
        self.server.converter = self
        self.namespace = 0
        self._collector: tuple[int, ...] | None = None  # the thresholds before `_tune_collector`
        self.scan_names = {period: name for name, period in reversed(list(settings.scan_classes.items()))}

    @property
    def endpoint(self) -> str:
        return f"opc.tcp://{self.settings.host}:{self.port}"

    @property
    def port(self) -> int:
        bserver = getattr(self.server, "bserver", None)
        return int(bserver.port) if bserver is not None and bserver.port else self.settings.port

    # -- lifecycle --------------------------------------------------------------------------------------

    async def start(self) -> None:
        settings = self.settings
        server = self.server
        await server.init()
        self._mark_user_certificates(server.iserver)
        server.set_endpoint(f"opc.tcp://{settings.host}:{settings.port}")
        server.set_server_name("zonegate")
        await server.set_application_uri(settings.application_uri)
        _check_key_file(settings.cert.key)
        await server.load_certificate(str(settings.cert.cert), format=_format(settings.cert.cert))
        await server.load_private_key(str(settings.cert.key), format=_format(settings.cert.key))
        _check_application_uri(server.iserver.certificate, settings.application_uri, settings.cert.cert)
        policies = []
        for name in settings.security:
            for mode in settings.modes:
                kind = POLICY_TYPES.get((name, mode))
                if kind is None:
                    raise ConverterError(f"opcua: unknown security policy {name!r} with mode {mode!r}")
                policies.append(kind)
        server.set_security_policy(policies)
        server.set_identity_tokens([ua.UserNameIdentityToken, ua.X509IdentityToken])  # anonymous is off
        server.set_certificate_validator(self._check_application_uri)
        self.namespace = await server.register_namespace(settings.namespace)
        await self._build_address_space()
        await server.start()
        self._tune_collector()
        self.poller.start()
        log.info("opcua: serving %d tags at %s", len(settings.tags), self.endpoint)

    def _tune_collector(self) -> None:
        """Keep the cyclic garbage collector from stalling polls and publishes (the process's event loop).

        asyncua's standard address space and the tags' nodes are several hundred thousand objects that live
        as long as the server; every full collection walked them all (0.4-0.65 s with 6,000 tags on the
        development machine). Frozen, collections walk only what came later. And every value change makes
        a few objects that live until the next publish or poll: at 700 (Python's default) the youngest
        generation was collected 20-30 times a second, each time promoting the values in flight, and the
        older generation's collections then took up to 60 ms. At 10,000 a steady stream of changes
        rarely reaches it: one collection in a 10 s run at 15,000 changes/s. Memory held in reference
        cycles is still reclaimed, only later. Process-wide, as the collector is; `stop` restores it."""
        self._collector = gc.get_threshold()
        gc.freeze()
        gc.set_threshold(max(self._collector[0], YOUNG_COLLECTION_THRESHOLD), *self._collector[1:])

    @staticmethod
    def _mark_user_certificates(iserver: InternalServer) -> None:
        """Mark the certificates of verified X.509 user tokens: asyncua passes the user manager the channel's
        application certificate for every other token, and that must never count as a user's."""
        verify = iserver.verify_x509_token

        def verified(isession: Any, token: ua.X509IdentityToken, signature: ua.SignatureData) -> bytes:
            return UserCertificate(verify(isession, token, signature))

        iserver.verify_x509_token = verified  # type: ignore[method-assign]

    async def _check_application_uri(self, cert: x509.Certificate, description: ua.ApplicationDescription) -> None:
        """CreateSession: the client's certificate names the application it claims to be (trust was
        checked on the channel's certificate just before)."""
        if description.ApplicationUri not in _certificate_uris(cert):
            self.channel_stats.refused_certificate += 1
            self.channel_stats.count("certificate_uri_mismatch")
            raise ServiceError(ua.StatusCodes.BadCertificateUriInvalid)

    def user_access(self, user: Any, params: ua.ReadParameters, results: list[ua.DataValue]) -> None:
        """UserAccessLevel of tags as this session's principal sees it: CurrentWrite only when the tag is
        writable and some rule could let the principal write it."""
        principal = getattr(user, "name", None)
        for i, item in enumerate(params.NodesToRead):
            if item.AttributeId != ua.AttributeIds.UserAccessLevel or i >= len(results):
                continue
            tag = self.nodes.get(item.NodeId)
            code = results[i].StatusCode
            if tag is None or code is None or not code.is_good():
                continue
            access = ua.AccessLevel.CurrentRead.mask
            if tag.writable and principal in self.writers.get(tag.name, ()):
                access |= ua.AccessLevel.CurrentWrite.mask
            results[i] = ua.DataValue(ua.Variant(access, ua.VariantType.Byte))

    def use_policy(self, policy: CompiledPolicy) -> None:
        """Decide from now on with a reloaded policy's engine and its principals' OPC UA users (tags,
        endpoints, certificates and the password file change on restart only: `reload_problem`)."""
        if self.settings.poll_principal not in policy.principals:
            raise ConverterError(f"opcua: poll_principal {self.settings.poll_principal!r} is not in the new policy")
        writers = {tag.name: writers_of(policy.ir, tag) for tag in self.settings.tags}
        principals = principals_by_user(policy.ir)
        self.policy = policy
        self.poller.policy = policy
        self.writer.policy = policy
        self.writers = writers
        self.users.principals = principals

    def snapshot(self) -> dict[str, Any]:
        """The converter's state for the metrics endpoint (read from its scrape thread; see metrics.py)."""
        sessions = sum(1 for session in list(self.server.iserver._external_sessions.values())
                       if session.is_activated())
        refused = dict(self.channel_stats.by_kind)
        for reason, count in list(self.users.refused_by.items()):
            refused[reason] = refused.get(reason, 0) + count
        cycles = {}
        for (device, scan), stats in list(self.poller.stats.by_group.items()):
            cycles[(device, self.scan_names.get(scan, f"{scan:g}s"))] = (stats.count, stats.total, list(stats.buckets))
        bad: dict[str, int] = {}
        for tag in self.settings.tags:
            last = self._last.get(tag.name)
            bad[tag.device] = bad.get(tag.device, 0) + (last is None or last[1] != GOOD)
        return {"sessions": sessions, "refused": refused, "cycles": cycles, "bad": bad, "buckets": CYCLE_BUCKETS}

    async def stop(self) -> None:
        if self.metrics is not None:
            self.metrics.watch_opcua(None)
        await self.poller.stop()
        if getattr(self.server, "bserver", None) is not None:  # absent when start failed before listening
            await self.server.stop()
        if self._collector is not None:  # what this converter leaves behind is collectable again
            gc.unfreeze()
            gc.set_threshold(*self._collector)
            self._collector = None
        if isinstance(self.link, PoolLink):
            self.link.close()
        if self.cip_link is not None:
            self.cip_link.close()

    # -- address space ----------------------------------------------------------------------------------

    async def _build_address_space(self) -> None:
        ns = self.namespace
        objects = self.server.nodes.objects
        zones = {d["name"]: d.get("zone", "zone") for d in self.policy.ir["devices"]}
        zone_folders: dict[str, Any] = {}
        device_folders: dict[str, Any] = {}
        for tag in self.settings.tags:
            if tag.device not in zones:
                raise ConverterError(f"opcua: tag {tag.name!r} names unknown device {tag.device!r}")
            zone = str(zones[tag.device])
            if zone not in zone_folders:
                zone_folders[zone] = await objects.add_folder(node_id(zone, ns), ua.QualifiedName(zone, ns))
            if tag.device not in device_folders:
                device_folders[tag.device] = await zone_folders[zone].add_folder(
                    node_id(f"{zone}/{tag.device}", ns), ua.QualifiedName(tag.device, ns))
            nodeid = node_id(f"{tag.device}/{tag.name}", ns)
            vtype = variant_type(tag)
            node = await device_folders[tag.device].add_variable(
                nodeid, ua.QualifiedName(tag.name, ns), ua.get_default_value(vtype), varianttype=vtype,
                datatype=node_id(vtype.value, 0))  # built-in types' DataType ids equal their variant ids
            access = ua.AccessLevel.CurrentRead.mask | (ua.AccessLevel.CurrentWrite.mask if tag.writable else 0)
            for attr in (ua.AttributeIds.AccessLevel, ua.AttributeIds.UserAccessLevel):
                await node.write_attribute(attr, ua.DataValue(ua.Variant(access, ua.VariantType.Byte)))
            if tag.description:
                await node.write_attribute(ua.AttributeIds.Description,
                                           ua.DataValue(ua.Variant(ua.LocalizedText(tag.description))))
            if tag.min is not None and tag.max is not None:
                await node.add_property(node_id(f"{tag.device}/{tag.name}/EURange", ns), ua.QualifiedName("EURange", 0),
                                        ua.Range(Low=tag.min, High=tag.max), datatype=ua.ObjectIds.Range)
            if tag.unit:
                info = ua.EUInformation(NamespaceUri=UNIT_NAMESPACE, UnitId=-1,
                                        DisplayName=ua.LocalizedText(tag.unit), Description=ua.LocalizedText(tag.unit))
                await node.add_property(node_id(f"{tag.device}/{tag.name}/EngineeringUnits", ns),
                                        ua.QualifiedName("EngineeringUnits", 0), info,
                                        datatype=ua.ObjectIds.EUInformation)
            await self.server.write_attribute_value(nodeid, ua.DataValue(
                StatusCode=ua_status(ua.StatusCodes.BadWaitingForInitialData),
                SourceTimestamp=ua_time(dt.datetime.now(dt.timezone.utc))))
            self.nodes[nodeid] = tag
            self.node_of[tag.name] = nodeid

    def published(self, name: str) -> tuple[object, int] | None:
        """The last value and status code published for a tag (None before its first poll)."""
        return self._last.get(name)

    async def _publish(self, tag: Tag, value: object, status: int, when: float) -> None:
        """A polled value (or fault) into the address space, when it differs from what is there."""
        last = self._last.get(tag.name)
        if last is not None and last == (value, status):
            return
        self._last[tag.name] = (value, status)
        if self._stamp[0] != when:  # a block's values share one poll time: one datetime for all of them
            self._stamp = (when, ua_time(dt.datetime.fromtimestamp(when, dt.timezone.utc)))
        stamp = self._stamp[1]
        # The poll saw the value just now: its source time is also the server's.
        if status == GOOD:
            dv = PublishedValue(ua.Variant(value, variant_type(tag)), SourceTimestamp=stamp, ServerTimestamp=stamp)
        else:
            dv = PublishedValue(StatusCode=ua_status(status), SourceTimestamp=stamp, ServerTimestamp=stamp)
        await self.server.write_attribute_value(self.node_of[tag.name], dv)

    # -- writes -----------------------------------------------------------------------------------------

    async def write(self, user: Any, params: ua.WriteParameters) -> list[ua.StatusCode]:
        """Per-item results of a client Write: tags go through the engine; nothing else is writable."""
        principal = getattr(user, "name", None)
        results: list[ua.StatusCode] = []
        for item in params.NodesToWrite:
            tag = self.nodes.get(item.NodeId)
            if tag is None or item.AttributeId != ua.AttributeIds.Value or principal is None:
                results.append(ua_status(ua.StatusCodes.BadUserAccessDenied if tag is None or principal is None
                                             else ua.StatusCodes.BadNotWritable))
                continue
            if item.IndexRange:
                results.append(ua_status(ua.StatusCodes.BadIndexRangeInvalid))
                continue
            variant = item.Value.Value if item.Value is not None else None
            value = variant.Value if variant is not None else None
            status = await self.writer.write(str(principal), getattr(user, "opcua_user", None), tag, value)
            results.append(ua_status(status))
        return results


async def start_opcua(
    policy: Any,
    engine: CompiledPolicy,
    *,
    settings: OpcuaSettings | None = None,
    pools: PoolSource | None = None,
    devices: Mapping[str, DeviceSettings] | None = None,
    link: DeviceLink | None = None,
    audit: AuditLog | None = None,
    metrics: Any = None,
    cip_link: CipLink | None = None,
) -> OpcuaConverter:
    """Start the OPC UA converter for a loaded policy and its compiled engine; `await stop()` ends it.

    `settings` defaults to the policy's `opcua:`/`tags:` sections. Device traffic goes through `link`,
    else the conduit's `pools` (a mapping, or a callable returning the current one), else pools of its
    own built from `devices` (default: the policy's). With `metrics` (a `Metrics`), writes are counted in
    `zonegate_requests_total{conduit="opcua"}` and sessions, refusals, poll cycles and Bad variables exported.
    CIP tags go through `cip_link`, by default a `CipLink` with a session of its own per EtherNet/IP device.
    """
    _check_asyncua_hooks()
    try:
        settings = settings or settings_from_policy(policy)
    except TagError as exc:
        raise ConverterError(f"opcua: {exc}") from None
    if settings.poll_principal not in engine.principals:
        raise ConverterError(f"opcua: poll_principal {settings.poll_principal!r} is not a principal of the policy")
    if link is None:
        if devices is None:
            from zonegate.dataplane.config import from_policy

            devices = from_policy(policy).devices
        link = PoolLink(pools, devices)
    try:
        passwords = PasswordFile({}) if settings.users_file is None else PasswordFile.load(settings.users_file)
    except PasswordFileError as exc:
        raise ConverterError(f"opcua: {exc}") from None
    try:
        trust = TrustList.load(settings.cert.ca, settings.cert.crl)
    except (OSError, ValueError) as exc:
        raise ConverterError(f"opcua: trust list {settings.cert.ca}: {exc}") from None
    users = PrincipalUserManager(passwords, principals_by_user(engine.ir), trust)
    if cip_link is None and any(tag.cip_tag is not None for tag in settings.tags):
        cip_link = CipLink(enip_settings(policy).devices)  # the converter's own session with each device
    converter = OpcuaConverter(settings, engine, link, users, trust, audit, cip_link)
    if metrics is not None:
        converter.metrics = metrics
        converter.writer.on_decision = lambda principal, device, fc, verdict, reason: metrics.count_named_request(
            "opcua", principal, device, fc, verdict, reason)
        metrics.watch_opcua(converter.snapshot)
    try:
        await converter.start()
    except BaseException:
        try:
            await converter.stop()
        except Exception:
            log.exception("opcua: cleaning up after a failed start")
        raise
    return converter


def reload_problem(converter: OpcuaConverter | None, policy: Any) -> str | None:
    """Why a reloaded policy cannot be swapped into the running converter (None: it can).

    The address space, endpoint, certificates and password file are built at start; a reload changes
    the engine and the principals' OPC UA users only, so any other change to `opcua:`/`tags:` is refused
    (the whole reload keeps the old policy) and named, to take effect at the next restart.
    """
    has_section = getattr(policy, "opcua", None) is not None
    if converter is None:
        return ("opcua: the reloaded policy adds an opcua section; the converter starts at the next restart"
                if has_section else None)
    if not has_section:
        return "opcua: the reloaded policy removes the opcua section; the converter stops at the next restart"
    try:
        new = settings_from_policy(policy)
    except TagError as exc:
        return f"opcua: {exc}"
    changed = [f.name for f in fields(OpcuaSettings) if getattr(new, f.name) != getattr(converter.settings, f.name)]
    if changed:
        return (f"opcua: {', '.join(changed)} changed; tags, endpoint, certificates and users file change only "
                "at a restart")
    if new.poll_principal not in getattr(policy, "principals", {}):
        return f"opcua: poll_principal {new.poll_principal!r} is not in the new policy"
    return None
