"""OPC UA converter, write stage: an OPC UA write -> the Modbus write it causes -> engine -> device.

A write to a tag is encoded into exactly the request a Modbus client would send for it, and decided
by the engine for the session user's principal, so one policy governs both protocols:

```
 bool tag, coil       FC 5  write_single_coil         value 0xFF00 / 0x0000
 one register         FC 6  write_single_register     value
 several registers    FC 16 write_multiple_registers  start, qty, byte count, values
```

Refusals answer per item: BadOutOfRange for a value outside the tag's limits (or the policy's value
bounds), BadUserAccessDenied for anything else the policy refuses; each is audited. An allowed write is
sent through the device pool and the device's answer is what the client gets: Good, or the status its
Modbus exception maps to. Allowed writes are audited too. A CIP tag's write is a Write Tag instead,
decided with decide_cip (opcua_cip.CipWriter) after the same writable, kind and limit checks.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from typing import Any, Final

from zonegate import _engine
from zonegate.controlplane.audit import AuditLog, utc_now
from zonegate.convert.opcua_poll import (
    BAD_COMMUNICATION_ERROR,
    BAD_OUT_OF_RANGE,
    BAD_USER_ACCESS_DENIED,
    GOOD,
    DeviceLink,
    exception_status,
)
from zonegate.convert.opcua_cip import CipWriter, cip_writers_of
from zonegate.convert.opcua_tags import CodecError, Tag, accepts, encode, within_limits
from zonegate.engine import REASONS, VERDICTS, CompiledPolicy

log = logging.getLogger(__name__)

BAD_TYPE_MISMATCH: Final = 0x80740000
BAD_NOT_WRITABLE: Final = 0x803B0000
REASON_VALUE_OUT_OF_BOUNDS: Final = REASONS.index("value_out_of_bounds")
WRITE_SINGLE_COIL: Final = 5
WRITE_SINGLE_REGISTER: Final = 6
WRITE_MULTIPLE_COILS: Final = 15
WRITE_MULTIPLE_REGISTERS: Final = 16

# principal, device, function code, verdict, reason: one call per decided write (the metrics' request counter).
OnDecision = Callable[[str, str, int, str, str], None]


def write_adu(tag: Tag, raw: list[int], transaction_id: int) -> bytes:
    """The Modbus request ADU that writes `raw` (registers or bits, from `encode`) at the tag."""
    address = tag.address.to_bytes(2, "big")
    if tag.table == "coils":
        if len(raw) == 1:
            pdu = bytes((WRITE_SINGLE_COIL,)) + address + (b"\xff\x00" if raw[0] else b"\x00\x00")
        else:
            packed = bytearray((len(raw) + 7) // 8)
            for i, bit in enumerate(raw):
                if bit:
                    packed[i // 8] |= 1 << (i % 8)
            pdu = bytes((WRITE_MULTIPLE_COILS,)) + address + len(raw).to_bytes(2, "big") + bytes((len(packed),)) + packed
    elif tag.table == "holding_registers":
        if len(raw) == 1:
            pdu = bytes((WRITE_SINGLE_REGISTER,)) + address + raw[0].to_bytes(2, "big")
        else:
            data = b"".join(word.to_bytes(2, "big") for word in raw)
            pdu = bytes((WRITE_MULTIPLE_REGISTERS,)) + address + len(raw).to_bytes(2, "big") + bytes((len(data),)) + data
    else:
        raise CodecError(f"tag {tag.name!r}: table {tag.table} cannot be written")
    return (transaction_id & 0xFFFF).to_bytes(2, "big") + b"\x00\x00" + (len(pdu) + 1).to_bytes(2, "big") \
        + bytes((tag.modbus_unit,)) + pdu


class TagWriter:
    """Decides and carries out client writes to tags; one instance per running converter."""

    def __init__(
        self,
        policy: CompiledPolicy,
        link: DeviceLink,
        audit: AuditLog | None,
        timeout: float,
    ) -> None:
        self.policy = policy
        self.link = link
        self.audit = audit
        self.timeout = timeout
        self._tid = 0
        self.counts: dict[str, int] = {}
        self.on_decision: OnDecision | None = None
        self.cip: CipWriter | None = None  # Write Tag for CIP tags

    def _count(self, outcome: str) -> None:
        self.counts[outcome] = self.counts.get(outcome, 0) + 1

    def _decided(self, principal: str, tag: Tag, verdict: str, reason: str, fc: int | None = None) -> None:
        if self.on_decision is not None:
            self.on_decision(principal, tag.device, fc if fc is not None else _function_of(tag), verdict, reason)

    async def write(self, principal: str, user: str | None, tag: Tag, value: object) -> int:
        """Write `value` to the tag as `principal`; the OPC UA status code for the client."""
        if not tag.writable:
            self._count("not_writable")
            self._decided(principal, tag, "deny", "not_writable")
            return BAD_NOT_WRITABLE
        if not accepts(tag, value):
            self._count("bad_value")
            self._decided(principal, tag, "deny", "type_mismatch")
            self._audit(principal, user, tag, value, None, "type_mismatch", "deny", None)
            return BAD_TYPE_MISMATCH
        if not within_limits(tag, value):
            self._count("out_of_limits")
            self._decided(principal, tag, "deny", "tag_limits")
            self._audit(principal, user, tag, value, None, "tag_limits", "deny", None)
            return BAD_OUT_OF_RANGE
        if tag.cip_tag is not None:
            if self.cip is None:
                self._count("device_failed")
                return BAD_COMMUNICATION_ERROR
            return await self.cip.write(
                self.policy, principal, user, tag, value,
                lambda verdict, reason, fc: self._decided(principal, tag, verdict, reason, fc), self._count)
        try:
            raw = encode(tag, value)
        except CodecError as exc:  # the right kind, but it does not fit the raw type
            self._count("bad_value")
            self._decided(principal, tag, "deny", "bad_value")
            self._audit(principal, user, tag, value, None, "bad_value", "deny", str(exc))
            return BAD_OUT_OF_RANGE
        self._tid = (self._tid + 1) & 0xFFFF
        adu = write_adu(tag, raw, self._tid)
        decision = self.policy.decide(principal, tag.device, adu)
        self._decided(principal, tag, VERDICTS[decision.verdict], REASONS[decision.reason], adu[7])
        if not decision.forward:
            self._count("denied")
            self._audit(principal, user, tag, value, adu, REASONS[decision.reason], VERDICTS[decision.verdict],
                        None, decision)
            return BAD_OUT_OF_RANGE if decision.reason == REASON_VALUE_OUT_OF_BOUNDS else BAD_USER_ACCESS_DENIED
        try:
            reply = await self.link.exchange(tag.device, adu, self.timeout)
        except (asyncio.TimeoutError, OSError):
            self._count("device_failed")
            return BAD_COMMUNICATION_ERROR
        self._audit(principal, user, tag, value, adu, REASONS[decision.reason], VERDICTS[decision.verdict],
                    None, decision, reply)
        if len(reply) >= 9 and reply[7] & 0x80:
            self._count("device_refused")
            return exception_status(reply[8])
        if not _engine.response_matches(adu, reply):
            self._count("device_failed")
            return BAD_COMMUNICATION_ERROR
        self._count("written")
        return GOOD

    def _audit(
        self,
        principal: str,
        user: str | None,
        tag: Tag,
        value: object,
        adu: bytes | None,
        reason: str,
        verdict: str,
        detail: str | None,
        decision: Any = None,
        reply: bytes | None = None,
    ) -> None:
        if self.audit is None:
            return
        record: dict[str, Any] = {
            "time": utc_now(),
            "conduit": "opcua",
            "principal": {"name": principal, "opcua_user": user},
            "device": tag.device,
            "tag": tag.name,
            "unit": tag.modbus_unit,
            "table": tag.table,
            "ranges": [{"table": tag.table, "start": tag.address, "end": tag.end, "access": "write"}],
            "value": value if isinstance(value, (bool, int, float, str)) else repr(value),
            "reason": reason,
            "verdict": verdict,
        }
        if adu is not None:
            record["function_code"] = adu[7]
        if decision is not None:
            record["rule"] = decision.rule_id or None
            if decision.exception_code is not None and verdict == "deny":
                record["exception"] = decision.exception_code
        if reply is not None and len(reply) >= 9 and reply[7] & 0x80:
            record["device_exception"] = reply[8]
        if detail:
            record["detail"] = detail
        self.audit.write(record)


def _covered(ranges: list[dict[str, int]], start: int, end: int) -> bool:
    """Every address start..end lies in the union of `ranges` (inclusive, adjacent ranges join)."""
    reach = start
    for r in sorted(ranges, key=lambda r: r["start"]):
        if r["start"] > reach:
            break
        reach = max(reach, r["end"] + 1)
        if reach > end:
            return True
    return reach > end


def _function_of(tag: Tag) -> int:
    """The function code a write of the tag is sent as (0 for a read-only table)."""
    if tag.table == "coils":
        return WRITE_SINGLE_COIL if tag.words == 1 else WRITE_MULTIPLE_COILS
    if tag.table == "holding_registers":
        return WRITE_SINGLE_REGISTER if tag.words == 1 else WRITE_MULTIPLE_REGISTERS
    return 0


def write_functions(tag: Tag) -> frozenset[int]:
    """The function codes a write of this tag can be sent as."""
    if tag.table == "coils":
        return frozenset({WRITE_SINGLE_COIL, WRITE_MULTIPLE_COILS} if tag.words > 1 else {WRITE_SINGLE_COIL})
    return frozenset({WRITE_SINGLE_REGISTER} if tag.words == 1 else {WRITE_MULTIPLE_REGISTERS})


def writers_of(ir: Mapping[str, Any], tag: Tag) -> frozenset[str]:
    """Principals some rule could let write the tag: the tag's unit, the right function over all its
    addresses (value bounds and rates aside; the engine still decides each write). Feeds UserAccessLevel."""
    if tag.cip_tag is not None:
        return cip_writers_of(ir, tag)
    devices = [d["name"] for d in ir["devices"]]
    device_units = next((d.get("units") for d in ir["devices"] if d["name"] == tag.device), None)
    principals = [p["name"] for p in ir["principals"]]
    functions = write_functions(tag)
    out: set[str] = set()
    for rule in ir["rules"]:
        if not any(devices[i] == tag.device for i in rule["devices"] if 0 <= i < len(devices)):
            continue
        # As the engine: the rule's units if it names any, else the device's; None is every unit.
        units = rule.get("units") if rule.get("units") is not None else device_units
        if units is not None and not any(lo <= tag.modbus_unit <= hi for lo, hi in units):
            continue
        for entry in rule["allow"]:
            listed = {fc for fc, _sub in entry["functions"]}
            if functions & listed and _covered(entry["ranges"].get(tag.table, []), tag.address, tag.end):
                out.update(principals[i] for i in rule["principals"] if 0 <= i < len(principals))
    return frozenset(out)
