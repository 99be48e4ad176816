"""Policy loading: the small textual forms a policy author writes (durations, rates, addresses, CIDRs,
unit ids) parsed into typed values. Each parser raises FieldError naming what was wrong."""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import Final

from .errors import FieldError

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|min|h)?\s*$")
_DURATION_UNITS: Final[dict[str, float]] = {"ms": 0.001, "s": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0}
_RATE = re.compile(r"^\s*(\d+)\s*/\s*(s|sec|second|min|minute|h|hour)\s*$")
_RATE_PERIODS: Final[dict[str, tuple[str, int]]] = {
    "s": ("second", 1_000_000_000),
    "sec": ("second", 1_000_000_000),
    "second": ("second", 1_000_000_000),
    "min": ("minute", 60_000_000_000),
    "minute": ("minute", 60_000_000_000),
    "h": ("hour", 3_600_000_000_000),
    "hour": ("hour", 3_600_000_000_000),
}
MAX_RATE_COUNT: Final = 1_000_000
_SPAN = re.compile(r"^\s*(\d+)\s*(?:-\s*(\d+)\s*)?$")


def is_int(value: object) -> bool:
    """YAML integers only: booleans are not numbers here."""
    return isinstance(value, int) and not isinstance(value, bool)


def parse_duration(value: object) -> float:
    """`300ms`, `5s`, `2m`, `1h` or a plain number of seconds -> seconds (> 0)."""
    if is_int(value) or isinstance(value, float):
        seconds = float(value)  # type: ignore[arg-type]
    elif isinstance(value, str) and (match := _DURATION.match(value)):
        seconds = float(match.group(1)) * _DURATION_UNITS[match.group(2) or "s"]
    else:
        raise FieldError(f"bad duration {value!r}: write 300ms, 5s, 2m, 1h or a number of seconds")
    if not 0 < seconds <= 86400:
        raise FieldError(f"duration {value!r} must be more than 0 and at most 24h")
    return seconds


@dataclass(frozen=True)
class RateSpec:
    count: int
    unit: str  # second | minute | hour
    period_ns: int


def parse_rate(value: object) -> RateSpec:
    """`5/s`, `30/min`, `100/h` -> count per period."""
    match = _RATE.match(value) if isinstance(value, str) else None
    if match is None:
        raise FieldError(f"bad rate {value!r}: write COUNT/s, COUNT/min or COUNT/h, e.g. 5/s")
    count = int(match.group(1))
    if not 1 <= count <= MAX_RATE_COUNT:
        raise FieldError(f"rate count {count} is out of range 1-{MAX_RATE_COUNT}")
    unit, period_ns = _RATE_PERIODS[match.group(2)]
    return RateSpec(count, unit, period_ns)


def parse_ip(value: object) -> str:
    """An IPv4 or IPv6 address literal, normalised."""
    if not isinstance(value, str):
        raise FieldError(f"{value!r} is not an IP address")
    try:
        return str(ipaddress.ip_address(value.strip()))
    except ValueError:
        raise FieldError(f"{value!r} is not an IP address") from None


def parse_endpoint(value: object) -> tuple[str, int]:
    """`127.0.0.1:8802` or `[::1]:8802` -> (host, port)."""
    if not isinstance(value, str):
        raise FieldError(f"bad address {value!r}: write HOST:PORT, e.g. 127.0.0.1:8802")
    text = value.strip()
    if text.startswith("["):
        host, sep, port = text[1:].partition("]:")
    else:
        host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise FieldError(f"bad address {value!r}: write HOST:PORT, e.g. 127.0.0.1:8802")
    return parse_ip(host), parse_port(int(port))


def parse_port(value: object) -> int:
    if not is_int(value):
        raise FieldError(f"a port is a number 1-65535, not {value!r}")
    if not 1 <= value <= 65535:  # type: ignore[operator]
        raise FieldError(f"port {value} is out of range 1-65535")
    return value  # type: ignore[return-value]


def parse_network(value: object) -> str:
    """An address (a host) or a CIDR -> the normalised CIDR. Host bits set are an error."""
    if not isinstance(value, str):
        raise FieldError(f"{value!r} is not an address or CIDR")
    text = value.strip()
    try:
        return str(ipaddress.ip_network(text, strict=True))
    except ValueError as exc:
        if "has host bits set" in str(exc):
            wide = ipaddress.ip_network(text, strict=False)
            raise FieldError(f"bad CIDR {value!r}: host bits are set (the network is {wide})") from None
        raise FieldError(f"bad CIDR {value!r}: {exc}") from None


def parse_networks(value: object) -> list[str]:
    """One address/CIDR or a list of them."""
    items = value if isinstance(value, list) else [value]
    if not items:
        raise FieldError("list at least one address or CIDR")
    out = []
    for n, item in enumerate(items):
        try:
            out.append(parse_network(item))
        except FieldError as exc:
            raise FieldError(exc.message, (n,) if isinstance(value, list) else ()) from None
    return out


def parse_span(value: object, low: int, high: int, what: str) -> tuple[int, int]:
    """`100-109`, `100` or `[100, 109]` -> inclusive (start, end) within low..high."""
    if is_int(value):
        start = end = value
    elif isinstance(value, str) and (match := _SPAN.match(value)):
        start = int(match.group(1))
        end = int(match.group(2)) if match.group(2) is not None else start
    elif isinstance(value, list) and len(value) == 2 and all(is_int(v) for v in value):
        start, end = value
    else:
        raise FieldError(f"bad {what} range {value!r}: write 100-109, 100 or [100, 109]")
    for number in (start, end):
        if not low <= number <= high:  # type: ignore[operator]
            raise FieldError(f"{what} {number} is out of range {low}-{high}")
    if start > end:  # type: ignore[operator]
        raise FieldError(f"range {start}-{end} is reversed")
    return start, end  # type: ignore[return-value]


def parse_units(value: object) -> list[tuple[int, int]]:
    """Unit ids: `1`, `[1, 2]`, `[1, 5-7]` -> sorted, merged inclusive ranges within 0-255."""
    items = value if isinstance(value, list) else [value]
    if not items:
        raise FieldError("list at least one unit id")
    spans = []
    for n, item in enumerate(items):
        if isinstance(item, list):
            raise FieldError("write unit ids as numbers or ranges like 5-7", (n,))
        try:
            spans.append(parse_span(item, 0, 255, "unit id"))
        except FieldError as exc:
            raise FieldError(exc.message, (n,) if isinstance(value, list) else ()) from None
    return merge_spans(spans)


def merge_spans(spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Sort and join overlapping or adjacent inclusive ranges."""
    out: list[tuple[int, int]] = []
    for start, end in sorted(spans):
        if out and start <= out[-1][1] + 1:
            out[-1] = (out[-1][0], max(out[-1][1], end))
        else:
            out.append((start, end))
    return out
