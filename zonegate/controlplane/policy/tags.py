"""Policy loading: the OPC UA address space's vocabulary and checks (tags on device tables and CIP tags).

A tag names one value in a device's Modbus table: its type fixes how many addresses it spans and which
tables it may live in. A CIP tag (`cip_tag:`) names a Logix tag of a device with an `enip` section
instead, read with Read Tag and written with Write Tag. The model (model.py) parses tags with these facts; the checks here relate tags
to each other and to the rules: overlaps within one table, scan classes that must exist, the poll
principal, and writable tags no rule could ever let an OPC UA user write.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, Final

from . import functions as fn
from .errors import FieldError, Issue
from .positions import SourceMap

if TYPE_CHECKING:
    from .model import AllowEntry, Policy, Tag

TAG_TABLES: Final = ("coils", "discrete_inputs", "input_registers", "holding_registers")
TABLE_ALIASES: Final = {"holding": "holding_registers"}
BIT_TABLES: Final = frozenset({"coils", "discrete_inputs"})
WRITABLE_TABLES: Final = frozenset({"coils", "holding_registers"})

# Registers (or bits, for bool) one value of each type spans; a string spans `length` registers.
TYPE_WIDTH: Final[dict[str, int]] = {
    "bool": 1, "int16": 1, "uint16": 1, "int32": 2, "uint32": 2, "float32": 2, "float64": 4, "int64": 4,
    "uint64": 4,
}
TAG_TYPES: Final = (*TYPE_WIDTH, "string")
# Raw limits of the integer types, before scale and offset.
INTEGER_LIMITS: Final[dict[str, tuple[int, int]]] = {
    "int16": (-(2**15), 2**15 - 1), "uint16": (0, 2**16 - 1), "int32": (-(2**31), 2**31 - 1),
    "uint32": (0, 2**32 - 1), "int64": (-(2**63), 2**63 - 1), "uint64": (0, 2**64 - 1),
}
# Logix atomic types a CIP tag may have (and string: a Logix STRING, read-only).
CIP_TAG_TYPES: Final = ("bool", "sint", "int", "dint", "lint", "real", "lreal", "string")
CIP_ONLY_TYPES: Final = frozenset({"sint", "int", "dint", "lint", "real", "lreal"})
INTEGER_LIMITS.update({
    "sint": (-(2**7), 2**7 - 1), "int": (-(2**15), 2**15 - 1), "dint": (-(2**31), 2**31 - 1),
    "lint": (-(2**63), 2**63 - 1),
})
MODBUS_ONLY_KEYS: Final = ("table", "address", "length", "word_order", "byte_order", "modbus_unit")
# A Logix tag: optional Program:Name. scope, dotted members, each with up to three array indices.
_CIP_PART: Final = r"[A-Za-z_][A-Za-z0-9_]{0,39}(?:\[\d{1,10}(?:,\d{1,10}){0,2}\])?"
CIP_TAG_NAME: Final = re.compile(rf"^(?:Program:[A-Za-z_][A-Za-z0-9_]{{0,39}}\.)?{_CIP_PART}(?:\.{_CIP_PART})*$")
MAX_CIP_TAG_LENGTH: Final = 255
MAX_STRING_REGISTERS: Final = 123  # one write_multiple_registers request (reads allow 125)

# Function codes an OPC UA read or write of a tag becomes, per table.
READ_FUNCTION: Final = {"coils": 1, "discrete_inputs": 2, "holding_registers": 3, "input_registers": 4}
WRITE_SINGLE: Final = {"coils": 5, "holding_registers": 6}
WRITE_MULTIPLE: Final = {"coils": 15, "holding_registers": 16}


def parse_table(value: object) -> str:
    """`coils`, `discrete_inputs`, `input_registers`, `holding` or `holding_registers`."""
    if isinstance(value, str):
        name = TABLE_ALIASES.get(value, value)
        if name in TAG_TABLES:
            return name
    raise FieldError(f"unknown table {value!r}: coils, discrete_inputs, input_registers or holding")


def fit_problem(table: str, type_: str) -> str | None:
    """Why a value of `type_` cannot live in `table`, or None when it can."""
    if table in BIT_TABLES and type_ != "bool":
        return f"{table} hold single bits: a {table} tag is type bool, not {type_}"
    if table not in BIT_TABLES and type_ == "bool":
        return f"bool is for coils and discrete_inputs; {table} hold 16-bit registers"
    return None


def engineering_limits(type_: str, scale: float, offset: float) -> tuple[float, float] | None:
    """The engineering values an integer type can hold after scale and offset; None for float and text.

    Unscaled limits stay exact integers: 2**64 - 1 is not a float, and a uint64 max of 2**64 - 1 must fit.
    """
    raw = INTEGER_LIMITS.get(type_)
    if raw is None:
        return None
    if scale == 1 and offset == 0:
        return raw
    ends = sorted((raw[0] * scale + offset, raw[1] * scale + offset))
    return ends[0], ends[1]


def parse_cip_tag(value: object) -> str:
    """A Logix tag name: `Line1.Speed`, `Recipe[3]`, `Program:Main.Count`, `Grid[1,2].X`."""
    if not isinstance(value, str) or len(value) > MAX_CIP_TAG_LENGTH or not CIP_TAG_NAME.match(value):
        raise FieldError(
            f"bad CIP tag name {value!r}: dotted Logix names (letters, digits, '_', not starting with a digit), "
            "each with optional [i] or [i,j] indices, optionally after Program:NAME."
        )
    return value


def cip_tag_parts(text: str) -> tuple[tuple[str, tuple[int, ...]], ...]:
    """A valid CIP tag name -> its parts: (name as written, indices). `Program:Main.X` is one part
    `Program:Main` then `X`, as on the wire (one symbolic segment each)."""
    out: list[tuple[str, tuple[int, ...]]] = []
    for part in text.split("."):
        name, _, rest = part.partition("[")
        indices = tuple(int(i) for i in rest.rstrip("]").split(",")) if rest else ()
        out.append((name, indices))
    return tuple(out)


def cip_pattern_admits(pattern: Sequence[tuple[str, Sequence[tuple[int, int]] | None]],
                       parts: Sequence[tuple[str, tuple[int, ...]]]) -> bool:
    """Whether a tag pattern (lower-cased names or `*`, element ranges or None) admits a one-element
    request of the tag `parts` (docs/cip-engine.md section 3)."""
    if not pattern:
        return False
    trailing_star = pattern[-1][0] == "*"
    fixed = pattern[:-1] if trailing_star else pattern
    if (trailing_star and len(parts) < len(pattern)) or len(parts) < len(fixed):
        return False
    for (want, ranges), (name, indices) in zip(fixed, parts, strict=False):
        if want != "*" and want != name.lower():
            return False
        if want == "*" or ranges is None:
            continue
        if len(indices) != len(ranges) or not all(lo <= i <= hi for i, (lo, hi) in zip(indices, ranges, strict=True)):
            return False
    return True


def finite_number(value: object) -> float:
    """A YAML int or float that is a real number (booleans, NaN and infinities refused)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise FieldError(f"expected a number, not {value!r}")
    return float(value)


def exact_number(value: object) -> int | float:
    """A real number kept as written: YAML integers stay exact (write limits of 64-bit tags), floats finite."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise FieldError(f"expected a number, not {value!r}")
    if isinstance(value, int):
        return value
    return finite_number(value)


def _covers(entry: AllowEntry, table: str, start: int, end: int) -> bool:
    """Every address start..end lies in one of the entry's ranges of `table` (ranges never overlap)."""
    ranges = sorted(entry.table(table), key=lambda r: r.start)
    need = start
    for r in ranges:
        if r.start <= need <= r.end:
            need = r.end + 1
            if need > end:
                return True
    return False


def _allows(policy: Policy, principals: set[str], device: str, tag: Tag, functions: set[int]) -> bool:
    """Some rule for one of `principals` on `device` and the tag's unit has an entry with one of `functions`
    over every address of the tag."""
    unit = modbus_unit(policy, device, tag)
    for rule in policy.rules:
        if device not in rule.devices or not principals.intersection(rule.principals):
            continue
        if rule.units is not None and not any(lo <= unit <= hi for lo, hi in rule.units):
            continue
        for entry in rule.allow:
            fcs = {fc for fc, _ in entry.function_keys}
            if fcs & functions and _covers(entry, _table(tag), tag.address or 0, tag.end):
                return True
    return False


def write_functions(tag: Tag) -> set[int]:
    """The function codes a write of `tag` may become (a one-register or one-bit tag: either form)."""
    multiple = WRITE_MULTIPLE[_table(tag)]
    return {WRITE_SINGLE[_table(tag)], multiple} if tag.registers == 1 else {multiple}


def _table(tag: Tag) -> str:
    """The table of a Modbus tag (the model makes sure it has one)."""
    assert tag.table is not None, "a CIP tag has no table"
    return tag.table


def issues(policy: Policy, smap: SourceMap) -> list[Issue]:
    """Errors relating tags to each other and to the rest of the policy (the tags are valid one by one)."""
    out: list[Issue] = []
    if policy.tags and policy.opcua is None:
        out.append(smap.issue(("tags",), "tags are served by the OPC UA converter: add an opcua section"))
    scan_classes = policy.opcua.scan_classes if policy.opcua is not None else {}
    names: dict[str, tuple[str, int]] = {}
    for device, tags in policy.tags.items():
        known = policy.devices.get(device)
        placed: dict[tuple[str, int], list[Tag]] = {}
        for n, tag in enumerate(tags):
            here = ("tags", device, n)
            if tag.name in names:
                first = smap.locate(("tags", *names[tag.name], "name"))
                out.append(smap.issue((*here, "name"), (
                    f"duplicate tag name {tag.name!r} (first at {first.file}:{first.line}): tag names are unique "
                    "across all devices"
                )))
            else:
                names[tag.name] = (device, n)
            if policy.opcua is not None and not tag.scan_defaulted and tag.scan not in scan_classes:
                out.append(smap.issue((*here, "scan"), _unknown_scan(tag.scan, scan_classes)))
            if tag.cip_tag is not None:
                if known is not None and known.enip is None:
                    out.append(smap.issue((*here, "cip_tag"), (
                        f"device {device!r} has no enip section: CIP tags are read and written over EtherNet/IP"
                    )))
                continue
            if known is not None and known.modbus is None:
                out.append(smap.issue((*here, "table"), (
                    f"device {device!r} has no modbus section: table/address tags are Modbus values; name a Logix "
                    "tag with cip_tag instead"
                )))
                continue
            unit = modbus_unit(policy, device, tag)
            if tag.modbus_unit is not None and not _unit_of(policy, device, tag.modbus_unit):
                out.append(smap.issue((*here, "modbus_unit"), f"unit {tag.modbus_unit} is not a unit of device {device!r}"))
            for other in placed.get((_table(tag), unit), []):
                if (tag.address or 0) <= other.end and (other.address or 0) <= tag.end:
                    out.append(smap.issue((*here, "address"), (
                        f"{tag.name!r} ({tag.table} {_span(tag)}) overlaps tag {other.name!r} ({_span(other)})"
                    )))
                    break
            placed.setdefault((_table(tag), unit), []).append(tag)
    opcua = policy.opcua
    if opcua is not None:
        if opcua.default_scan not in scan_classes:
            out.append(smap.issue(("opcua", "default_scan"), _unknown_scan(opcua.default_scan, scan_classes)))
        poller = policy.principals.get(opcua.poll_principal)
        if poller is not None and not poller.gateway:
            out.append(smap.issue(("opcua", "poll_principal"), (
                f"principal {opcua.poll_principal!r} is not the gateway's own: declare it with gateway: true"
            )))
    return out


def warnings(policy: Policy, smap: SourceMap) -> list[Issue]:
    """Tags that load but cannot do what they seem to say: unreadable by the poller, unwritable by anyone."""
    out: list[Issue] = []
    gateways = {name for name, p in policy.principals.items() if p.gateway}
    for n, rule in enumerate(policy.rules):
        if not gateways.intersection(rule.principals):
            continue
        for e, entry in enumerate(rule.allow):
            if any(fc in fn.WRITE_TABLES for fc, _ in entry.function_keys):
                out.append(smap.issue(("rules", n, "allow", e, "functions"), (
                    "allows a gateway principal to write: the converter's polls only read, and OPC UA writes are "
                    "decided for the writing user's principal"
                ), severity="warning"))
    opcua_users = {name for name, p in policy.principals.items() if p.opcua_user}
    poller = {policy.opcua.poll_principal} if policy.opcua is not None else set()
    poller &= set(policy.principals)  # an unknown poll principal is an error of its own
    for device, tags in policy.tags.items():
        if device not in policy.devices:
            continue  # an error of its own
        for n, tag in enumerate(tags):
            here = ("tags", device, n)
            if tag.cip_tag is not None:
                if policy.devices[device].enip is not None:
                    out.extend(_cip_warnings(policy, smap, here, device, tag, poller, opcua_users))
                continue
            if policy.devices[device].modbus is None:
                continue  # an error of its own
            if poller and not _allows(policy, poller, device, tag, {READ_FUNCTION[_table(tag)]}):
                out.append(smap.issue(here, (
                    f"no rule lets the poll principal read {tag.table} {_span(tag)} of {device!r}: "
                    f"tag {tag.name!r} will always be Bad"
                ), severity="warning"))
            if tag.writable and not _allows(policy, opcua_users, device, tag, write_functions(tag)):
                out.append(smap.issue((*here, "writable"), (
                    f"no rule lets any opcua_user principal write {tag.table} {_span(tag)} of {device!r}: "
                    f"writes to {tag.name!r} are always denied"
                ), severity="warning"))
    return out


def _cip_warnings(policy: Policy, smap: SourceMap, here: tuple[str | int, ...], device: str, tag: Tag,
                  poller: set[str], writers: set[str]) -> list[Issue]:
    out: list[Issue] = []
    assert tag.cip_tag is not None
    if poller and not cip_allows(policy, poller, device, tag.cip_tag, "read_tag"):
        out.append(smap.issue(here, (
            f"no rule lets the poll principal read_tag {tag.cip_tag!r} of {device!r}: tag {tag.name!r} will always be Bad"
        ), severity="warning"))
    if tag.writable and not cip_allows(policy, writers, device, tag.cip_tag, "write_tag"):
        out.append(smap.issue((*here, "writable"), (
            f"no rule lets any opcua_user principal write_tag {tag.cip_tag!r} of {device!r}: "
            f"writes to {tag.name!r} are always denied"
        ), severity="warning"))
    return out


def cip_allows(policy: Policy, principals: set[str], device: str, cip_tag: str, service: str) -> bool:
    """Some cip entry of a rule for one of `principals` on `device` lists `service` on a pattern that admits
    the tag, by the empty route (the converter talks to the device itself)."""
    parts = cip_tag_parts(cip_tag)
    for rule in policy.rules:
        if device not in rule.devices or not principals.intersection(rule.principals):
            continue
        for entry in rule.cip:
            if service not in entry.services.names or entry.tags is None:
                continue
            if entry.routes is not None and not any(len(route) == 0 for route in entry.routes):
                continue
            if any(cip_pattern_admits([(p.name, p.elements) for p in pattern.parts], parts) for pattern in entry.tags):
                return True
    return False


def modbus_unit(policy: Policy, device: str, tag: Tag) -> int:
    """The unit id a tag is polled and written at: its own, or its device's first unit (1 for any unit)."""
    if tag.modbus_unit is not None:
        return int(tag.modbus_unit)
    known = policy.devices.get(device)
    units = known.modbus.units if known is not None and known.modbus is not None else None
    return units[0][0] if units else 1


def _unit_of(policy: Policy, device: str, unit: int) -> bool:
    known = policy.devices.get(device)
    if known is None or known.modbus is None or known.modbus.units is None:
        return True
    return any(lo <= unit <= hi for lo, hi in known.modbus.units)


def _span(tag: Tag) -> str:
    return str(tag.address) if tag.end == tag.address else f"{tag.address}-{tag.end}"


def _unknown_scan(name: str | None, known: dict[str, float]) -> str:
    return f"unknown scan class {name!r}; the opcua section defines {', '.join(known) or 'none'}"
