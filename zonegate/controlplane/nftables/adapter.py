"""Control plane, nftables stage: the one place that reads a loaded policy for the firewall.

It turns the policy's zones, devices, principals, listeners, metrics, flows and firewall settings into a
`FirewallSpec`, resolving the defaults the policy leaves open:
- a listener without `allow_from` is open to the zones on the far side of the box from its devices when
  it authenticates by certificate (modbus_tls, opcua, enip_tls: clients at level 3 reach devices in a
  cell), and to the zones holding the addresses of source-identified principals when it is plain;
- the metrics port is open to `metrics.allow_from` only (nobody, if absent);
- the box may dial each device a listener relays to, on that device's port, and nothing else;
- a listener with `transparent: true` takes over its sources' connections to its devices' own
  addresses and ports (nftables tproxy), and is not opened at its own port;
- a zone's `subnet` may be one prefix or a list (a dual-stack zone: one IPv4, one IPv6 prefix).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from typing import Any

from zonegate.controlplane.nftables.model import (
    DIVERT_MARK,
    DIVERT_TABLE,
    FirewallSpec,
    FirewallSpecError,
    Flow,
    Listener,
    Metrics,
    Network,
    Rate,
    Upstream,
    Zone,
    networks,
)

TLS_PROTOCOLS = frozenset({"modbus_tls", "opcua", "enip_tls"})


def _get(obj: Any, name: str, default: Any = None) -> Any:
    if isinstance(obj, Mapping):
        return obj.get(name, default)
    return getattr(obj, name, default)


def _items(obj: Any) -> Iterable[tuple[str, Any]]:
    if obj is None:
        return ()
    if isinstance(obj, Mapping):
        return obj.items()
    return ((_get(item, "name"), item) for item in obj)


def spec_from_policy(policy: Any) -> FirewallSpec:
    """The firewall's view of a loaded policy (`zonegate.controlplane.policy.load`)."""
    zones = tuple(_zone(name, z) for name, z in _items(_get(policy, "zones")))
    zone_by_name = {z.name: z for z in zones}
    devices = dict(_items(_get(policy, "devices")))

    def device_zone(name: str) -> Zone | None:
        zone = _get(devices.get(name), "zone")
        return zone_by_name.get(zone) if zone is not None else None

    source_zones = _zones_of_sources(policy, zones)
    listeners: list[Listener] = []
    upstreams: dict[tuple[str, str], Upstream] = {}
    for lst in _get(policy, "listeners") or ():
        name = str(_get(lst, "name"))
        protocol = str(_get(lst, "protocol", "modbus"))
        listed = _get(lst, "devices") or ()
        allow = _get(lst, "allow_from")
        if allow is not None:
            sources = networks(list(allow))
        elif protocol in TLS_PROTOCOLS:
            near = {z.name for z in (device_zone(d) for d in listed) if z is not None}
            sources = tuple(n for z in zones if z.name not in near for n in z.subnets)
        else:
            sources = tuple(n for z in source_zones for n in z.subnets)
        section = "enip" if protocol.startswith("enip") else "modbus"
        for dev in listed:
            if (dev, section) not in upstreams and dev in devices:
                upstreams[(dev, section)] = _upstream(dev, devices[dev], section, upstreams)
        transparent = bool(_get(lst, "transparent", False))
        divert = tuple(upstreams[(d, section)] for d in listed if (d, section) in upstreams) if transparent else ()
        listeners.append(Listener(name, _port(lst, 0), sources, protocol, transparent, divert))

    metrics = _get(policy, "metrics")
    firewall = _get(policy, "firewall")
    return FirewallSpec(
        zones=zones,
        listeners=tuple(listeners),
        upstreams=tuple(upstreams.values()),
        flows=tuple(_flow(f) for f in _get(policy, "flows") or ()),
        metrics=None if metrics is None else Metrics(_port(metrics, 9802),
                                                    networks(list(_get(metrics, "allow_from") or []))),
        log_group=int(_get(firewall, "log_group", 1)),
        log_rate=Rate.parse(_get(firewall, "log_rate", None) or "10/s"),
        connection_rate=Rate.parse(_get(firewall, "connection_rate", None) or "20/s"),
        divert_mark=int(_get(firewall, "divert_mark", None) or DIVERT_MARK),
        divert_table=int(_get(firewall, "divert_table", None) or DIVERT_TABLE),
    )


def _zone(name: str, zone: Any) -> Zone:
    """A zone with its prefixes: `subnet` (one, or a list) and `subnets`, IPv4 and IPv6 alike."""
    nets: list[Network] = []
    for key in ("subnet", "subnets"):
        value = _get(zone, key)
        if value:
            nets += networks(list(value) if isinstance(value, (list, tuple)) else value)
    return Zone(name, _get(zone, "interface"), nets[0] if nets else None, tuple(nets[1:]))


def _port(section: Any, default: int) -> int:
    """`port`, or `bind.port` for sections that name an endpoint to bind."""
    port = _get(section, "port")
    if port is None:
        port = _get(_get(section, "bind"), "port", default)
    return int(port)


def _upstream(name: str, device: Any, section: str, known: dict[tuple[str, str], Upstream]) -> Upstream:
    """The device as its listener's protocol reaches it; a device reached both ways has two upstreams."""
    reach = _get(device, section)
    host = str(_get(reach, "host"))
    try:
        address = ipaddress.ip_address(host)
    except ValueError as exc:
        raise FirewallSpecError(f"device {name}: host {host!r} must be an IP address for the ruleset") from exc
    label = f"{name}-{section}" if any(n == name for n, _ in known) else name
    return Upstream(label, ipaddress.ip_network(address), int(_get(reach, "port", 44818 if section == "enip" else 502)))


def _zones_of_sources(policy: Any, zones: tuple[Zone, ...]) -> tuple[Zone, ...]:
    addresses: list[Network] = []
    for _name, principal in _items(_get(policy, "principals")):
        source = _get(principal, "source")
        if source:
            addresses += networks(source)
    return tuple(z for z in zones if any(
        a.version == n.version and a.subnet_of(n) for a in addresses for n in z.subnets))  # type: ignore[arg-type]


def _flow(flow: Any) -> Flow:
    source = _get(flow, "from_") or _get(flow, "from") or _get(flow, "source")
    return Flow(
        id=str(_get(flow, "id")),
        sources=networks(source),
        destinations=networks(_get(flow, "to")),
        protocol=str(_get(flow, "proto", "tcp")),  # type: ignore[arg-type]
        port=int(_get(flow, "port")),
    )
