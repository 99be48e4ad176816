"""Data plane settings: what the listeners, upstream pools, metrics and audit of one policy need.

The loaded policy (zonegate.controlplane.policy) is the only source; `from_policy` copies the parts the
running conduit reads into frozen dataclasses, so the data plane never reaches into the policy model
and a reload swaps one `RuntimeSettings` for another.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Final, Literal

from zonegate.dataplane.enip_config import ENIP_PROTOCOLS, EnipSettings, enip_settings

DEFAULT_MODBUS_PORT: Final = 502
DEFAULT_METRICS_BIND: Final = ("127.0.0.1", 9802)

UnitRanges = tuple[tuple[int, int], ...] | None  # inclusive ranges; None means any unit


@dataclass(frozen=True, slots=True)
class TlsFiles:
    cert: Path
    key: Path
    ca: Path
    crl: Path | None = None


@dataclass(frozen=True, slots=True)
class DeviceSettings:
    """One upstream device: where it is, which units it holds, how hard it may be driven."""

    name: str
    host: str
    port: int = DEFAULT_MODBUS_PORT
    units: UnitRanges = None
    max_connections: int = 1
    pipelining: bool = False
    pipeline_depth: int = 16  # in flight per connection when pipelining
    timeout: float = 2.0
    tls: TlsFiles | None = None  # set for a level-3 Modbus/TCP Security server (outbound conduit)

    def holds_unit(self, unit: int) -> bool:
        return self.units is None or any(lo <= unit <= hi for lo, hi in self.units)


@dataclass(frozen=True, slots=True)
class ListenerSettings:
    """One listener: `modbus_tls` (north, principals from certificates) or `modbus` (zone, by address)."""

    name: str
    protocol: Literal["modbus_tls", "modbus", "enip_tls", "enip"]
    host: str
    port: int
    devices: tuple[str, ...]
    tls: TlsFiles | None = None
    max_outstanding: int = 10
    idle_timeout: float = 300.0
    request_timeout: float = 5.0
    transparent: bool = False  # takes over connections to its devices' own addresses (nftables tproxy)


@dataclass(frozen=True)
class RuntimeSettings:
    mode: str
    ir: Mapping[str, Any]
    source_hash: str
    listeners: tuple[ListenerSettings, ...]
    devices: Mapping[str, DeviceSettings]
    principal_for_certificate: Callable[[str | None, str], str | None]
    principal_for_source: Callable[[str], str | None]
    metrics_bind: tuple[str, int] = DEFAULT_METRICS_BIND
    audit_path: str = "-"
    audit_max_per_second: int = 100
    principal_names: tuple[str, ...] = field(default=())
    enip_listeners: tuple[ListenerSettings, ...] = ()  # served by zonegate.dataplane.enip_conduit
    enip: EnipSettings = field(default_factory=EnipSettings.empty)

    def listener(self, name: str) -> ListenerSettings:
        for listener in self.listeners:
            if listener.name == name:
                return listener
        raise KeyError(name)


def _tls_files(tls: Any) -> TlsFiles | None:
    if tls is None:
        return None
    crl = getattr(tls, "crl", None)
    return TlsFiles(cert=Path(tls.cert), key=Path(tls.key), ca=Path(tls.ca), crl=Path(crl) if crl else None)


def _units(value: Any) -> UnitRanges:
    if value is None:
        return None
    return tuple((int(lo), int(hi)) for lo, hi in value)


def _endpoint(section: Any) -> tuple[str, int]:
    """(host, port) of a section's `bind` (an Endpoint), or of the section itself."""
    bind = getattr(section, "bind", None) or section
    return str(bind.host), int(bind.port)


def from_policy(policy: Any) -> RuntimeSettings:
    """Copy what the data plane needs out of a loaded `zonegate.controlplane.policy.Policy`."""
    ir = policy.ir()
    ir_devices = {d["name"]: d for d in ir["devices"]}
    devices: dict[str, DeviceSettings] = {}
    for name, device in policy.devices.items():
        modbus = getattr(device, "modbus", None)
        if modbus is None:
            continue  # not a Modbus device: no Modbus conduit reaches it
        compiled = ir_devices.get(name, {})
        devices[name] = DeviceSettings(
            name=name,
            host=str(modbus.host),
            port=int(modbus.port),
            units=_units(compiled.get("units")),
            max_connections=int(modbus.max_connections),
            pipelining=bool(modbus.pipelining),
            pipeline_depth=int(modbus.pipeline_depth),
            timeout=float(modbus.timeout),
            tls=_tls_files(getattr(modbus, "tls", None)),
        )
    every = tuple(
        ListenerSettings(
            name=str(listener.name),
            protocol=listener.protocol,
            host=str(_endpoint(listener)[0]),
            port=_endpoint(listener)[1],
            devices=tuple(str(d) for d in listener.devices),
            tls=_tls_files(getattr(listener, "tls", None)),
            max_outstanding=int(listener.max_outstanding),
            idle_timeout=float(listener.idle_timeout),
            request_timeout=float(listener.request_timeout),
            transparent=bool(getattr(listener, "transparent", False)),
        )
        for listener in policy.listeners
    )
    listeners = tuple(x for x in every if x.protocol in ("modbus_tls", "modbus"))
    metrics = getattr(policy, "metrics", None)
    audit = getattr(policy, "audit", None)
    return RuntimeSettings(
        mode=str(ir["mode"]),
        ir=ir,
        source_hash=str(policy.source_hash),
        listeners=listeners,
        devices=MappingProxyType(devices),
        principal_for_certificate=policy.principal_for_certificate,
        principal_for_source=policy.principal_for_source,
        metrics_bind=_endpoint(metrics) if metrics is not None else DEFAULT_METRICS_BIND,
        audit_path=str(audit.path) if audit is not None else "-",
        audit_max_per_second=int(audit.max_per_second) if audit is not None else 100,
        principal_names=tuple(p["name"] for p in ir["principals"]),
        enip_listeners=tuple(x for x in every if x.protocol in ENIP_PROTOCOLS),
        enip=enip_settings(policy),
    )
