"""OPC UA converter, CIP tags: polls and writes of Logix tags over zonegate's own EtherNet/IP upstream.

Every poll and every write is a CIP request the engine decides (`decide_cip`, docs/cip-engine.md), for
the poll principal or the writing user's principal, exactly as a client's request through the
EtherNet/IP conduit would be:

```
 poll  (device, scan)  Read Tag per tag -> decide_cip each -> allowed ones in Multiple Service Packets
                       (at most 20 and ~500 reply bytes each) -> SendRRData -> per-tag value or status
 write                 Write Tag (Logix type code, 1 element) -> decide_cip -> SendRRData -> status
```

Each read is decided on its own before the allowed ones are packed: a Multiple Service Packet is a
container the engine never decides (its leaves are), and one denied tag must not turn its neighbours
Bad. The converter holds one session of its own per device (an `EnipDevice` of enip_upstream with its
own backoff), so a device down shows as Bad within one scan period plus the device timeout.
"""

from __future__ import annotations

import asyncio
import logging
import struct
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from zonegate.controlplane.audit import AuditLog, utc_now
from zonegate.controlplane.policy.tags import cip_pattern_admits, cip_tag_parts
from zonegate.convert.opcua_cip_codec import (
    MULTIPLE_SERVICE,
    READ_TAG,
    REPLY_BYTES,
    TypeMismatch,
    decode_value,
    multiple,
    parse_reply,
    read_request,
    split_multiple,
    status_of,
    write_request,
)
from zonegate.convert.opcua_cip_codec import BAD_TYPE_MISMATCH as BAD_REPLY_TYPE
from zonegate.convert.opcua_poll import (
    BAD_COMMUNICATION_ERROR,
    BAD_DATA_ENCODING_INVALID,
    BAD_OUT_OF_RANGE,
    BAD_USER_ACCESS_DENIED,
    GOOD,
    Poller,
    ReadBlock,
)
from zonegate.convert.opcua_tags import CodecError, Tag
from zonegate.dataplane import enip_frames as frames
from zonegate.dataplane.enip_conduit import reason_name
from zonegate.dataplane.enip_config import EnipDeviceSettings
from zonegate.dataplane.enip_upstream import EnipDevice, EnipLink, EnipPending
from zonegate.dataplane.upstream import PoolObserver
from zonegate.engine import VERDICTS, CompiledPolicy

log = logging.getLogger(__name__)

MAX_PER_PACKET: Final = 20
MAX_REPLY_BYTES: Final = 500
MAX_REQUEST_BYTES: Final = 500
WRITE_TAG_FUNCTION: Final = 0x4D  # the metrics' function label of a CIP write


# -- the device side ---------------------------------------------------------------------------------------


def send_rr_data(message: bytes, context: bytes) -> bytes:
    """An unconnected SendRRData carrying one CIP message (the link puts its own session handle in)."""
    cpf = (struct.pack("<IHH", 0, 0, 2) + struct.pack("<HH", frames.ITEM_NULL_ADDRESS, 0)
           + struct.pack("<HH", frames.ITEM_UNCONNECTED_DATA, len(message)) + message)
    return frames.message(frames.SEND_RR_DATA, 0, context, cpf)


class _Owner:
    """The converter's side of its link with one device: replies matched by sender context."""

    def __init__(self) -> None:
        self.link: EnipLink | None = None
        self.waiting: dict[int, asyncio.Future[bytes]] = {}

    def deliver(self, frame: bytes, pending: EnipPending) -> None:
        future = self.waiting.pop(id(pending), None)
        if future is not None and not future.done():
            future.set_result(frame)

    def accept_reply(self, request: bytes, reply: bytes) -> bytes | None:
        same = reply[0:2] == request[0:2] and reply[12:20] == request[12:20]
        return reply if same else None

    def link_lost(self, link: EnipLink) -> None:
        if self.link is link:
            self.link = None


class CipLink:
    """CIP request/reply with the policy's EtherNet/IP devices, one session of the converter's own each."""

    def __init__(self, devices: Mapping[str, EnipDeviceSettings], observer: PoolObserver | None = None) -> None:
        self.settings = dict(devices)
        self.observer = observer or PoolObserver()
        self.devices: dict[str, EnipDevice] = {}
        self.owners: dict[str, _Owner] = {}
        self._context = 0

    def _device(self, name: str) -> EnipDevice | None:
        device = self.devices.get(name)
        if device is None and name in self.settings:
            device = self.devices[name] = EnipDevice(self.settings[name], self.observer, asyncio.get_running_loop())
            self.owners[name] = _Owner()
        return device

    async def exchange(self, device: str, message: bytes, timeout: float) -> bytes:
        """The device's CIP reply to `message`; zonegate's own connection-failure reply (0x01/0x0204) when
        the device cannot be reached or does not answer in time."""
        unreachable = frames.cip_reply(message[0], frames.CIP_CONNECTION_FAILURE, (frames.CIP_EXT_UNCONNECTED_TIMEOUT,))
        known = self._device(device)
        if known is None:
            return unreachable
        owner = self.owners[device]
        if owner.link is None or owner.link.closed:
            owner.link = known.open_link(owner)
            if owner.link is None:
                return unreachable
        self._context = (self._context + 1) & 0xFFFF_FFFF_FFFF_FFFF
        frame = send_rr_data(message, struct.pack("<Q", self._context))
        now = time.monotonic()
        pending = EnipPending(frame, message[0], now, now + timeout)
        future: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        owner.waiting[id(pending)] = future
        owner.link.submit(pending)
        try:
            reply = await asyncio.wait_for(future, timeout + 1.0)  # the link answers at its deadline
        finally:
            owner.waiting.pop(id(pending), None)
        header = frames.Header.read(reply)
        parsed = frames.items(reply)
        if header.status != 0 or parsed is None or parsed.cip is None:
            raise CodecError(f"device {device}: encapsulation status {header.status:#x} or no CIP reply")
        return parsed.cip

    def close(self) -> None:
        for device in self.devices.values():
            device.close()
        self.devices.clear()
        self.owners.clear()


# -- polling -----------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CipBlock(ReadBlock):
    """The CIP tags of one device and scan period read in one Multiple Service Packet (table "cip")."""


def plan_cip_reads(tags: Iterable[Tag]) -> list[CipBlock]:
    """Per device and scan period, tags in packets of at most MAX_PER_PACKET reads whose replies (and
    requests) stay under ~500 bytes."""
    groups: dict[tuple[str, float], list[Tag]] = {}
    for tag in tags:
        if tag.cip_tag is not None:
            groups.setdefault((tag.device, tag.scan), []).append(tag)
    blocks: list[CipBlock] = []
    for (device, scan), members in sorted(groups.items()):
        current: list[Tag] = []
        reply = request = 0
        for tag in members:
            size, ask = REPLY_BYTES[tag.type] + 2, len(read_request(tag)) + 2
            if current and (len(current) >= MAX_PER_PACKET or reply + size > MAX_REPLY_BYTES
                            or request + ask > MAX_REQUEST_BYTES):
                blocks.append(CipBlock(device, 0, "cip", 0, len(current), scan, tuple(current)))
                current, reply, request = [], 0, 0
            current.append(tag)
            reply += size
            request += ask
        if current:
            blocks.append(CipBlock(device, 0, "cip", 0, len(current), scan, tuple(current)))
    return blocks


class CipReader:
    """Reads a `CipBlock` for a `Poller` (the poller's policy, principal, stats and publish)."""

    def __init__(self, link: CipLink) -> None:
        self.link = link

    async def read(self, poller: Poller, block: ReadBlock) -> None:
        policy = poller.policy
        principal = policy.principal_index(poller.principal)
        device = policy.device_index(block.device)
        allowed: list[tuple[Tag, bytes]] = []
        when = time.time()
        for tag in block.tags:
            message = read_request(tag)
            if policy.engine.decide_cip(principal, device, message).forward:
                allowed.append((tag, message))
            else:
                poller.stats.denied += 1
                await poller.publish(tag, None, BAD_USER_ACCESS_DENIED, when)
        if not allowed:
            return
        poller.stats.reads += 1
        single = len(allowed) == 1
        request = allowed[0][1] if single else multiple([m for _, m in allowed])
        try:
            reply = await self.link.exchange(block.device, request, poller.timeout)
            general, data = parse_reply(reply, READ_TAG if single else MULTIPLE_SERVICE)
            if single:
                replies = [reply]  # its status is the tag's
            elif general in (0, 0x1E):  # 0x1E: some of the embedded services failed, each says which
                replies = split_multiple(data, len(allowed))
            else:
                replies = []
        except (asyncio.TimeoutError, OSError, ConnectionError):
            poller.stats.failed += 1
            await _fail(poller, allowed, BAD_COMMUNICATION_ERROR)
            return
        except CodecError:
            poller.stats.failed += 1
            await _fail(poller, allowed, BAD_DATA_ENCODING_INVALID)
            return
        if not replies:
            poller.stats.failed += 1
            await _fail(poller, allowed, status_of(general))
            return
        when = time.time()
        for (tag, _), item in zip(allowed, replies, strict=True):
            value: object = None
            try:
                status, data = parse_reply(item, READ_TAG)
                if status == 0:
                    value, code = decode_value(tag, data), GOOD
                else:
                    code = status_of(status)
            except TypeMismatch:
                code = BAD_REPLY_TYPE
            except CodecError:
                code = BAD_DATA_ENCODING_INVALID
            await poller.publish(tag, value, code, when)


async def _fail(poller: Poller, allowed: list[tuple[Tag, bytes]], status: int) -> None:
    when = time.time()
    for tag, _ in allowed:
        await poller.publish(tag, None, status, when)


# -- writes ------------------------------------------------------------------------------------------------

Decided = Callable[[str, str, int], None]  # verdict, reason, function label
Count = Callable[[str], None]


class CipWriter:
    """Write Tag for a client write to a CIP tag (the tag writer checked writable, kind and limits)."""

    def __init__(self, link: CipLink, audit: AuditLog | None, timeout: float) -> None:
        self.link = link
        self.audit = audit
        self.timeout = timeout

    async def write(self, policy: CompiledPolicy, principal: str, user: str | None, tag: Tag, value: object,
                    decided: Decided, count: Count) -> int:
        try:
            message = write_request(tag, value)
        except CodecError as exc:
            count("bad_value")
            decided("deny", "bad_value", WRITE_TAG_FUNCTION)
            self._audit(principal, user, tag, value, "bad_value", "deny", None, detail=str(exc))
            return BAD_OUT_OF_RANGE
        decision = policy.engine.decide_cip(policy.principal_index(principal), policy.device_index(tag.device),
                                            message)
        verdict, reason = VERDICTS[decision.verdict], reason_name(decision.reason)
        decided(verdict, reason, WRITE_TAG_FUNCTION)
        if not decision.forward:
            count("denied")
            self._audit(principal, user, tag, value, reason, verdict, decision)
            return BAD_USER_ACCESS_DENIED
        try:
            reply = await self.link.exchange(tag.device, message, self.timeout)
            general, _ = parse_reply(reply, message[0])
        except (asyncio.TimeoutError, OSError, ConnectionError, CodecError):
            count("device_failed")
            self._audit(principal, user, tag, value, reason, verdict, decision, detail="no valid reply")
            return BAD_COMMUNICATION_ERROR
        self._audit(principal, user, tag, value, reason, verdict, decision, general=general)
        if general != 0:
            count("device_refused")
            return status_of(general)
        count("written")
        return GOOD

    def _audit(self, principal: str, user: str | None, tag: Tag, value: object, reason: str, verdict: str,
               decision: Any, *, detail: str | None = None, general: int | None = None) -> None:
        if self.audit is None:
            return
        record: dict[str, Any] = {
            "time": utc_now(),
            "conduit": "opcua",
            "principal": {"name": principal, "opcua_user": user},
            "device": tag.device,
            "tag": tag.name,
            "cip_tag": tag.cip_tag,
            "service": "write_tag",
            "value": value if isinstance(value, (bool, int, float, str)) else repr(value),
            "reason": reason,
            "verdict": verdict,
        }
        if decision is not None:
            record["rule"] = decision.rule_id or None
            if verdict == "deny" and decision.general_status is not None:
                record["general_status"] = decision.general_status
        if general:
            record["device_status"] = general
        if detail:
            record["detail"] = detail
        self.audit.write(record)


def cip_writers_of(ir: Mapping[str, Any], tag: Tag) -> frozenset[str]:
    """Principals some cip entry could let write the tag (write_tag on a pattern admitting it, by the empty
    route; rates aside, the engine still decides each write). Feeds UserAccessLevel."""
    if tag.cip_tag is None:
        return frozenset()
    parts = cip_tag_parts(tag.cip_tag)
    devices = [d["name"] for d in ir["devices"]]
    principals = [p["name"] for p in ir["principals"]]
    out: set[str] = set()
    for rule in ir["rules"]:
        if not any(devices[i] == tag.device for i in rule["devices"] if 0 <= i < len(devices)):
            continue
        for entry in rule.get("cip", []):
            if "write_tag" not in entry["services"] or entry.get("tags") is None:
                continue
            if entry.get("routes") is not None and [] not in entry["routes"]:
                continue
            if any(cip_pattern_admits([(p["name"], p["elements"]) for p in pattern["parts"]], parts)
                   for pattern in entry["tags"]):
                out.update(principals[i] for i in rule["principals"] if 0 <= i < len(principals))
    return frozenset(out)
