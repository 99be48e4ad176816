"""EtherNet/IP conduit settings: the devices and listeners of one policy, copied out of the loaded model.

`zonegate.dataplane.config.from_policy` calls `enip_settings` so one `RuntimeSettings` carries both
conduits and a reload swaps them together.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Final

DEFAULT_ENIP_PORT: Final = 44818
DEFAULT_ENIP_TLS_PORT: Final = 2221
ENIP_PROTOCOLS: Final = ("enip_tls", "enip")


@dataclass(frozen=True, slots=True)
class EnipDeviceSettings:
    """One EtherNet/IP device: where it is and how many sessions zonegate may hold with it."""

    name: str
    host: str
    port: int = DEFAULT_ENIP_PORT
    timeout: float = 2.0
    max_connections: int = 1  # one per client connection relayed, at most this many at once


@dataclass(frozen=True, slots=True)
class EnipSettings:
    devices: Mapping[str, EnipDeviceSettings]

    @classmethod
    def empty(cls) -> EnipSettings:
        return cls(MappingProxyType({}))


def enip_settings(policy: Any) -> EnipSettings:
    """The `enip` sections of a loaded policy's devices (a policy without any gives none)."""
    devices: dict[str, EnipDeviceSettings] = {}
    for name, device in getattr(policy, "devices", {}).items():
        enip = getattr(device, "enip", None)
        if enip is None:
            continue
        devices[name] = EnipDeviceSettings(
            name=name,
            host=str(enip.host),
            port=int(getattr(enip, "port", DEFAULT_ENIP_PORT) or DEFAULT_ENIP_PORT),
            timeout=float(getattr(enip, "timeout", 2.0)),
            max_connections=int(getattr(enip, "max_connections", 1)),
        )
    return EnipSettings(MappingProxyType(devices))
