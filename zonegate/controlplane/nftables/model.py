"""Control plane, nftables stage: the firewall's view of a policy, before rendering.

The renderer reads only these frozen dataclasses, never the policy model itself, so the ruleset can be
reasoned about (and tested) from the few facts it depends on: which zones sit on which interfaces, which
ports the box listens on and for whom, which upstreams it dials, and which direct flows the policy allows.
`zonegate.controlplane.nftables.adapter` builds a `FirewallSpec` from a loaded policy.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from typing import Literal, Union

Network = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]
Address = Union[ipaddress.IPv4Address, ipaddress.IPv6Address]
Protocol = Literal["tcp", "udp"]

# Units nftables accepts in `limit rate N/UNIT`, keyed by every spelling a policy may use.
_RATE_UNITS = {
    "s": "second", "sec": "second", "second": "second",
    "m": "minute", "min": "minute", "minute": "minute",
    "h": "hour", "hour": "hour",
    "d": "day", "day": "day",
    "w": "week", "week": "week",
}
_RATE = re.compile(r"^\s*(\d+)\s*/\s*([a-z]+)\s*$")
# Interface names the kernel accepts (IFNAMSIZ 16 including the terminator), without quoting hazards.
_INTERFACE = re.compile(r"^[A-Za-z0-9_.:@-]{1,15}$")


# Packets diverted to a transparent listener carry this firewall mark; a policy-routing rule sends
# marked packets to this routing table, whose only route delivers everything locally (see routing.py).
DIVERT_MARK = 0x5A47
DIVERT_TABLE = 0x5A47
_RESERVED_TABLES = frozenset({253, 254, 255})


class FirewallSpecError(ValueError):
    """The policy asks for something the ruleset cannot express; nothing is rendered."""


@dataclass(frozen=True)
class Rate:
    """A packet rate for `limit`: `count` per `unit` (second, minute, hour, day, week)."""

    count: int
    unit: str = "second"

    def __post_init__(self) -> None:
        if not 1 <= self.count <= 1_000_000:
            raise FirewallSpecError(f"rate count must be 1..1000000, got {self.count}")
        if self.unit not in _RATE_UNITS.values():
            raise FirewallSpecError(f"rate unit must be one of second, minute, hour, day, week, got {self.unit!r}")

    @classmethod
    def parse(cls, text: object) -> Rate:
        """Read `10/s`, `20/second`, `100/min` and the like, or anything with `count` and `unit`."""
        if isinstance(text, Rate):
            return text
        count, unit = getattr(text, "count", None), getattr(text, "unit", None)
        if isinstance(count, int) and isinstance(unit, str):
            return cls(count, _RATE_UNITS.get(unit, unit))
        match = _RATE.match(str(text).lower())
        if match is None or match.group(2) not in _RATE_UNITS:
            raise FirewallSpecError(f"rate must look like 10/s or 100/minute, got {text!r}")
        return cls(int(match.group(1)), _RATE_UNITS[match.group(2)])

    def __str__(self) -> str:
        return f"{self.count}/{self.unit}"


def _check_port(what: str, port: int) -> None:
    if not 1 <= port <= 65535:
        raise FirewallSpecError(f"{what}: port must be 1..65535, got {port}")


def _check_name(what: str, name: str) -> None:
    if not name or any(ord(c) < 0x20 or c in '"\\' for c in name):
        raise FirewallSpecError(f"{what}: name {name!r} is empty or holds quotes or control characters")


def networks(values: object) -> tuple[Network, ...]:
    """Addresses and CIDRs (one or a list) as networks; a bare address is a /32 or /128."""
    items = values if isinstance(values, (list, tuple, set, frozenset)) else [values]
    out: list[Network] = []
    for item in items:
        try:
            out.append(ipaddress.ip_network(str(item), strict=False))
        except ValueError as exc:
            raise FirewallSpecError(f"not an address or CIDR: {item!r}") from exc
    return tuple(out)


@dataclass(frozen=True)
class Zone:
    """A zone: the interface that faces it and the subnet behind that interface."""

    name: str
    interface: str | None  # None: the zone's traffic is not told apart by interface
    subnet: Network | None  # None: the zone gives no default sources
    more_subnets: tuple[Network, ...] = ()  # a dual-stack zone: its other family's prefix, and any more

    def __post_init__(self) -> None:
        _check_name("zone", self.name)
        if self.interface is not None and not _INTERFACE.match(self.interface):
            raise FirewallSpecError(f"zone {self.name}: interface {self.interface!r} is not a valid interface name")

    @property
    def subnets(self) -> tuple[Network, ...]:
        """Every prefix behind the zone's interface, IPv4 and IPv6."""
        return ((self.subnet,) if self.subnet is not None else ()) + self.more_subnets


@dataclass(frozen=True)
class Upstream:
    """An endpoint the box itself connects to: a zone device or a level-3 server of an outbound conduit."""

    name: str
    address: Network
    port: int
    protocol: Protocol = "tcp"

    def __post_init__(self) -> None:
        _check_name("upstream", self.name)
        _check_port(f"upstream {self.name}", self.port)


@dataclass(frozen=True)
class Listener:
    """A port the box accepts connections on, and the sources allowed to open them.

    A transparent listener is not opened to its sources at its own port: connections those sources
    address to the devices in `divert` (the device's own address and port) are diverted to it by
    nftables `tproxy`, and only those.
    """

    name: str
    port: int
    sources: tuple[Network, ...]
    protocol: str = "modbus"
    transparent: bool = False
    divert: tuple[Upstream, ...] = ()

    def __post_init__(self) -> None:
        _check_name("listener", self.name)
        _check_port(f"listener {self.name}", self.port)
        if self.transparent and not self.divert:
            raise FirewallSpecError(f"listener {self.name}: transparent, but names no device to divert")
        if not self.transparent and self.divert:
            raise FirewallSpecError(f"listener {self.name}: only a transparent listener diverts traffic")
        for up in self.divert:
            if up.protocol != "tcp":
                raise FirewallSpecError(f"listener {self.name}: tproxy diverts tcp only, not {up.name}'s "
                                        f"{up.protocol}")


@dataclass(frozen=True)
class Flow:
    """A direct flow forwarded across the box without a conduit (rare: NTP from a time server)."""

    id: str
    sources: tuple[Network, ...]
    destinations: tuple[Network, ...]
    protocol: Protocol
    port: int

    def __post_init__(self) -> None:
        _check_name("flow", self.id)
        _check_port(f"flow {self.id}", self.port)
        if self.protocol not in ("tcp", "udp"):
            raise FirewallSpecError(f"flow {self.id}: protocol must be tcp or udp, got {self.protocol!r}")
        if not self.sources or not self.destinations:
            raise FirewallSpecError(f"flow {self.id}: needs at least one source and one destination")
        families = {n.version for n in self.sources} & {n.version for n in self.destinations}
        if not families:
            raise FirewallSpecError(f"flow {self.id}: sources and destinations share no address family")


@dataclass(frozen=True)
class Metrics:
    """The Prometheus endpoint: its port and the scrapers allowed to reach it (none: closed)."""

    port: int
    sources: tuple[Network, ...] = ()

    def __post_init__(self) -> None:
        _check_port("metrics", self.port)


@dataclass(frozen=True)
class FirewallSpec:
    """Everything the `inet zonegate` table is rendered from."""

    zones: tuple[Zone, ...] = ()
    listeners: tuple[Listener, ...] = ()
    upstreams: tuple[Upstream, ...] = ()
    flows: tuple[Flow, ...] = ()
    metrics: Metrics | None = None
    log_group: int = 1
    log_rate: Rate = field(default_factory=lambda: Rate(10))
    connection_rate: Rate = field(default_factory=lambda: Rate(20))
    divert_mark: int = DIVERT_MARK
    divert_table: int = DIVERT_TABLE

    def __post_init__(self) -> None:
        if not 0 <= self.log_group <= 65535:
            raise FirewallSpecError(f"firewall.log_group must be 0..65535, got {self.log_group}")
        if not 1 <= self.divert_mark <= 0xFFFFFFFF:
            raise FirewallSpecError(f"firewall.divert_mark must be 1..0xffffffff, got {self.divert_mark}")
        if not 1 <= self.divert_table <= 0x7FFFFFFF or self.divert_table in _RESERVED_TABLES:
            raise FirewallSpecError(f"firewall.divert_table must be 1..2147483647 and not 253, 254 or 255 "
                                    f"(default, main, local), got {self.divert_table}")
        names = [z.name for z in self.zones]
        if len(set(names)) != len(names):
            raise FirewallSpecError("zone names must be unique")
        interfaces = [z.interface for z in self.zones if z.interface is not None]
        if len(set(interfaces)) != len(interfaces):
            raise FirewallSpecError("each zone needs its own interface")
