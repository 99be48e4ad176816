"""Policy loading: the CIP (EtherNet/IP) half of a rule, parsed into what docs/cip-engine.md section 2 compiles.

A `cip` entry names services (names, presets or numbers), and what they may reach: tag-name patterns
(`Line1.*`, `Press_SP[0..9]`) or logical addresses (class, instance, attribute ranges), and the routes
a request may take beyond the device (`"1,0"`: backplane port 1, slot 0). Every form is parsed here into
plain values; each parser raises FieldError naming what was wrong and where inside the value.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from difflib import get_close_matches
from typing import Final

from .errors import FieldError
from .scalars import is_int, merge_spans

U32_MAX: Final = 0xFFFF_FFFF

# Codes that mean the same for every object (enip.md section 4), by the parser's names.
COMMON_SERVICES: Final[dict[str, int]] = {
    "get_attribute_all": 0x01,
    "set_attribute_all": 0x02,
    "get_attribute_list": 0x03,
    "set_attribute_list": 0x04,
    "reset": 0x05,
    "start": 0x06,
    "stop": 0x07,
    "create": 0x08,
    "delete": 0x09,
    "apply_attributes": 0x0D,
    "get_attribute_single": 0x0E,
    "set_attribute_single": 0x10,
    "find_next_object_instance": 0x11,
    "restore": 0x15,
    "save": 0x16,
    "no_operation": 0x17,
    "get_member": 0x18,
    "set_member": 0x19,
    "insert_member": 0x1A,
    "remove_member": 0x1B,
    "group_sync": 0x1C,
}
# Object-specific codes, resolved by the parser only with their object: a number never means these.
OBJECT_SERVICES: Final[dict[str, int]] = {
    "read_tag": 0x4C,
    "write_tag": 0x4D,
    "read_modify_write_tag": 0x4E,
    "read_tag_fragmented": 0x52,
    "write_tag_fragmented": 0x53,
    "get_instance_attribute_list": 0x55,
    "forward_close": 0x4E,
    "forward_open": 0x54,
    "large_forward_open": 0x5B,
    "get_connection_data": 0x56,
    "search_connection_data": 0x57,
    "get_connection_owner": 0x5A,
}
SERVICES: Final[dict[str, int]] = {**COMMON_SERVICES, **OBJECT_SERVICES}
CONTAINERS: Final = frozenset({"unconnected_send", "multiple_service_packet"})
COMMON_BY_CODE: Final[dict[int, str]] = {code: name for name, code in COMMON_SERVICES.items()}

# Services that address no object instance a policy could name: connection management and the no-op.
NO_TARGET_SERVICES: Final = frozenset({
    "no_operation", "forward_open", "large_forward_open", "forward_close",
    "get_connection_data", "search_connection_data", "get_connection_owner",
})
# Services whose request data carries an element count (and whose short data is refused up front).
TAG_SERVICES: Final = frozenset({
    "read_tag", "read_tag_fragmented", "write_tag", "write_tag_fragmented", "read_modify_write_tag",
})

_READ_ONLY: Final = frozenset({
    "get_attribute_all", "get_attribute_list", "get_attribute_single", "find_next_object_instance",
    "get_member", "no_operation", "read_tag", "read_tag_fragmented", "get_instance_attribute_list",
    "forward_open", "large_forward_open", "forward_close",
})
_READ_WRITE: Final = _READ_ONLY | frozenset({
    "set_attribute_single", "set_attribute_list", "write_tag", "write_tag_fragmented",
    "read_modify_write_tag", "set_member",
})
_PROGRAMMING: Final = _READ_WRITE | frozenset({
    "set_attribute_all", "create", "delete", "apply_attributes", "restore", "save", "insert_member",
    "remove_member", "reset", "start", "stop", "group_sync", "get_connection_data",
    "search_connection_data", "get_connection_owner",
})
PRESETS: Final[dict[str, frozenset[str]]] = {
    "read_only": _READ_ONLY, "read_write": _READ_WRITE, "programming": _PROGRAMMING,
}


@dataclass(frozen=True)
class ServiceSet:
    """What one `services` item allows: resolved names, and raw codes matched only as `Other(code)`."""

    names: frozenset[str] = frozenset()
    codes: frozenset[int] = frozenset()


def all_service_spellings() -> list[str]:
    return sorted([*SERVICES, *PRESETS])


def parse_service(value: object) -> ServiceSet:
    """A service name, a preset, or a code 0x00-0x7F (a YAML int, or text such as `0x4B`)."""
    code: int | None = None
    if is_int(value):
        code = value  # type: ignore[assignment]
    elif isinstance(value, str) and re.fullmatch(r"\s*(0[xX][0-9A-Fa-f]+|\d+)\s*", value):
        code = int(value.strip(), 0)
    if code is not None:
        if not 0 <= code <= 0x7F:
            raise FieldError(f"service code {code:#04x} is out of range 0x00-0x7f (0x80 is the reply bit)")
        if code in COMMON_BY_CODE:
            return ServiceSet(names=frozenset({COMMON_BY_CODE[code]}))
        return ServiceSet(codes=frozenset({code}))
    if not isinstance(value, str):
        raise FieldError(f"expected a service name, preset or code, not {value!r}")
    name = value.strip()
    if name in PRESETS:
        return ServiceSet(names=PRESETS[name])
    if name in SERVICES:
        return ServiceSet(names=frozenset({name}))
    if name in CONTAINERS:
        raise FieldError(
            f"{name} is a container: it is never decided itself, the requests inside it are; "
            "name those services"
        )
    near = get_close_matches(name, all_service_spellings(), n=1, cutoff=0.6)
    raise FieldError(f"unknown CIP service {name!r}", (), near[0] if near else None)


def parse_services(value: object) -> ServiceSet:
    """One item or a list of them, merged."""
    items = value if isinstance(value, list) else [value]
    if not items:
        raise FieldError("list at least one service")
    names: set[str] = set()
    codes: set[int] = set()
    for n, item in enumerate(items):
        try:
            one = parse_service(item)
        except FieldError as exc:
            raise FieldError(exc.message, (n,) if isinstance(value, list) else (), exc.suggestion) from None
        names |= one.names
        codes |= one.codes
    return ServiceSet(frozenset(names), frozenset(codes))


# --- logical addresses ------------------------------------------------------------------------------

_NUMBER = r"\s*(0[xX][0-9A-Fa-f]+|\d+)\s*"
_LOGICAL_SPAN = re.compile(rf"^{_NUMBER}(?:-{_NUMBER})?$")


def _logical_span(value: object, what: str) -> tuple[int, int]:
    if is_int(value):
        lo = hi = value  # type: ignore[assignment]
    elif isinstance(value, str) and (match := _LOGICAL_SPAN.match(value)):
        lo = int(match.group(1), 0)
        hi = int(match.group(2), 0) if match.group(2) is not None else lo
    else:
        raise FieldError(f"bad {what} {value!r}: write 1, 0x6B, \"1-7\" or a list of these")
    for number in (lo, hi):
        if not 0 <= number <= U32_MAX:  # type: ignore[operator]
            raise FieldError(f"{what} {number} is out of range 0-{U32_MAX}")
    if lo > hi:  # type: ignore[operator]
        raise FieldError(f"{what} range {lo}-{hi} is reversed")
    return lo, hi  # type: ignore[return-value]


def parse_logical(value: object, what: str) -> tuple[tuple[int, int], ...]:
    """`class`/`instance`/`attribute`: one value, `"A-B"`, or a list of both -> sorted, merged ranges."""
    items = value if isinstance(value, list) else [value]
    if not items:
        raise FieldError(f"list at least one {what}")
    spans = []
    for n, item in enumerate(items):
        try:
            spans.append(_logical_span(item, what))
        except FieldError as exc:
            raise FieldError(exc.message, (n,) if isinstance(value, list) else ()) from None
    return tuple(merge_spans(spans))


# --- tag patterns (section 3) -----------------------------------------------------------------------

_TAG_NAME = re.compile(r"^[A-Za-z0-9_:]+$")
_INDEX = re.compile(r"^\s*(\d+)\s*(?:\.\.\s*(\d+)\s*)?$")


@dataclass(frozen=True)
class TagPart:
    """One dotted part: a lower-cased name (or `*`) and, when bracketed, one inclusive range per dimension."""

    name: str
    elements: tuple[tuple[int, int], ...] | None = None


@dataclass(frozen=True)
class TagPattern:
    text: str
    parts: tuple[TagPart, ...]


def _split_parts(text: str) -> list[str]:
    """Split on dots outside brackets (a range `0..9` has dots of its own)."""
    parts, depth, current = [], 0, ""
    for char in text:
        if char == "[":
            depth += 1
        elif char == "]":
            depth -= 1
        if char == "." and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += char
    parts.append(current)
    return parts


def _tag_part(text: str, pattern: str) -> TagPart:
    name, bracket, rest = text.partition("[")
    if not name:
        raise FieldError(f"bad tag pattern {pattern!r}: a part has no name (write Name or Name[0..9])")
    if name != "*" and not _TAG_NAME.match(name):
        bad = next(c for c in name if not (c.isascii() and (c.isalnum() or c in "_:")))
        raise FieldError(
            f"bad tag pattern {pattern!r}: {bad!r} is not allowed in a tag name (letters, digits, '_', ':')"
        )
    if not bracket:
        return TagPart(name.lower())
    if name == "*":
        raise FieldError(f"bad tag pattern {pattern!r}: '*' matches any part with any elements; it takes no [...]")
    if not rest.endswith("]") or "[" in rest or "]" in rest[:-1]:
        raise FieldError(f"bad tag pattern {pattern!r}: write elements as Name[0..9] or Name[0..3,0..7]")
    dimensions = []
    for dimension in rest[:-1].split(","):
        match = _INDEX.match(dimension)
        if match is None:
            raise FieldError(f"bad tag pattern {pattern!r}: bad element range {dimension.strip()!r} (write 3 or 0..9)")
        lo = int(match.group(1))
        hi = int(match.group(2)) if match.group(2) is not None else lo
        if hi > U32_MAX:
            raise FieldError(f"bad tag pattern {pattern!r}: element {hi} is out of range 0-{U32_MAX}")
        if lo > hi:
            raise FieldError(f"bad tag pattern {pattern!r}: element range {lo}..{hi} is reversed")
        dimensions.append((lo, hi))
    return TagPart(name.lower(), tuple(dimensions))


def parse_tag_pattern(value: object) -> TagPattern:
    if not isinstance(value, str) or not value.strip():
        raise FieldError(f"expected a tag pattern such as Line1.* or Press_SP[0..9], not {value!r}")
    text = value.strip()
    parts = tuple(_tag_part(part, text) for part in _split_parts(text))
    return TagPattern(text, parts)


def parse_tag_patterns(value: object) -> tuple[TagPattern, ...]:
    items = value if isinstance(value, list) else [value]
    if not items:
        raise FieldError("list at least one tag pattern")
    out = []
    for n, item in enumerate(items):
        try:
            out.append(parse_tag_pattern(item))
        except FieldError as exc:
            raise FieldError(exc.message, (n,) if isinstance(value, list) else ()) from None
    return tuple(out)


# --- routes (section 4) -----------------------------------------------------------------------------

Hop = tuple[int, tuple[int, ...]]
Route = tuple[Hop, ...]
_HOP = re.compile(r"^\s*(\d+)\s*,\s*([^\s,/]+)\s*$")


def _hop(text: str, route: str) -> Hop:
    match = _HOP.match(text)
    if match is None:
        raise FieldError(f"bad route {route!r}: write PORT,LINK hops joined by '/', e.g. \"1,0\" or \"2,10.0.0.5/1,3\"")
    port = int(match.group(1))
    if not 1 <= port <= 0xFFFF:
        raise FieldError(f"bad route {route!r}: port {port} is out of range 1-65535 (port 0 is reserved)")
    link = match.group(2)
    if link.isdigit():
        slot = int(link)
        if slot > 255:
            raise FieldError(f"bad route {route!r}: link {slot} is not a slot or node number 0-255 (an address is text)")
        return port, (slot,)
    try:
        ipaddress.ip_address(link)
    except ValueError:
        raise FieldError(f"bad route {route!r}: link {link!r} is neither a slot number nor an IP address") from None
    return port, tuple(link.encode("ascii"))


def parse_route(value: object) -> Route:
    if not isinstance(value, str):
        raise FieldError(
            f"bad route {value!r}: write it as quoted text, PORT,LINK hops joined by '/', e.g. \"1,0\" "
            "(\"\" is the device itself)"
        )
    if not value.strip():
        return ()
    return tuple(_hop(hop, value) for hop in value.split("/"))


def parse_routes(value: object) -> tuple[Route, ...]:
    items = value if isinstance(value, list) else [value]
    if not items:
        raise FieldError("list at least one route (\"\" is the device itself)")
    out = []
    for n, item in enumerate(items):
        try:
            out.append(parse_route(item))
        except FieldError as exc:
            raise FieldError(exc.message, (n,) if isinstance(value, list) else ()) from None
    return tuple(out)


def route_text(route: Route) -> str:
    """The written form of a route: `1,0`, `2,10.0.0.5/1,3`, or `` for the device itself."""
    hops = []
    for port, link in route:
        shown = str(link[0]) if len(link) == 1 else bytes(link).decode("ascii", "replace")
        hops.append(f"{port},{shown}")
    return "/".join(hops)
