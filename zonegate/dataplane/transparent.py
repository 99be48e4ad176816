"""Data plane, listener stage for transparent conduits: the socket nftables `tproxy` diverts to, and the
device each diverted connection was meant for.

A legacy client that cannot be re-pointed at the box still dials its PLC's own address. The table
(`zonegate.controlplane.nftables`, a listener with `transparent: true`) diverts that connection to a
local listener without rewriting it, so the accepted socket's local address *is* the address and port
the client dialled: `getsockname()` recovers it, with no conntrack lookup. The kernel only hands such
connections to a socket that set `IP_TRANSPARENT` (`IPV6_TRANSPARENT`), which needs CAP_NET_ADMIN.

The conduit then decides each request with the engine as usual, for the device that address names,
and relays to that device from the box's own address: the client sees its PLC, the PLC sees zonegate.
An original destination that names no device of the listener is refused (fail closed), never relayed
somewhere the policy did not write.
"""

from __future__ import annotations

import errno
import ipaddress
import socket
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol, Union

# Linux's values (include/uapi/linux/in.h, in6.h); older Pythons lack the names.
IP_TRANSPARENT = getattr(socket, "IP_TRANSPARENT", 19)
IPV6_TRANSPARENT = getattr(socket, "IPV6_TRANSPARENT", 75)
DEFAULT_BACKLOG = 128

Address = Union[ipaddress.IPv4Address, ipaddress.IPv6Address]


class TransparentError(OSError):
    """The transparent listening socket cannot be made (most often: no CAP_NET_ADMIN)."""


class _Endpoint(Protocol):
    host: str
    port: int


@dataclass(frozen=True)
class Destination:
    """Where a diverted client meant to go: the device address and port it dialled."""

    address: Address
    port: int

    @classmethod
    def from_sockname(cls, sockname: Any) -> Destination:
        """From `getsockname()` (IPv4 pair or IPv6 quadruple); an IPv4-mapped IPv6 address reads as IPv4."""
        if not isinstance(sockname, tuple) or len(sockname) < 2:
            raise ValueError(f"not an IP socket address: {sockname!r}")
        address = ipaddress.ip_address(str(sockname[0]).split("%", 1)[0])
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        return cls(address, int(sockname[1]))

    def __str__(self) -> str:
        host = f"[{self.address}]" if self.address.version == 6 else str(self.address)
        return f"{host}:{self.port}"


def transparent_socket(host: str, port: int, backlog: int = DEFAULT_BACKLOG, *,
                       v6_only: bool | None = None) -> socket.socket:
    """A non-blocking TCP listening socket that accepts connections tproxy diverts to `port`.

    Bind it to the address of the interface the diverted clients arrive on, or to the wildcard
    (`0.0.0.0`, `::`): tproxy's `to :PORT` looks for a listener on that interface's primary address.
    `v6_only` sets IPV6_V6ONLY on an IPv6 socket (True: a separate IPv4 socket may share the port;
    None: the system default, usually dual-stack). Hand the socket to
    `loop.create_server(factory, sock=...)` or `asyncio.start_server(handler, sock=...)`.
    """
    family = socket.AF_INET6 if ipaddress.ip_address(host).version == 6 else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6 and v6_only is not None:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, int(v6_only))
        try:
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, IPV6_TRANSPARENT, 1)
            else:
                sock.setsockopt(socket.SOL_IP, IP_TRANSPARENT, 1)
        except PermissionError as exc:
            raise TransparentError(errno.EPERM, "a transparent listener needs CAP_NET_ADMIN") from exc
        sock.bind((host, port))
        sock.listen(backlog)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def original_destination(connection: Any) -> Destination:
    """The address and port a diverted client dialled: the accepted socket's own local address.

    `connection` is an accepted socket, or an asyncio transport / stream writer (its `sockname`).
    """
    if isinstance(connection, socket.socket):
        return Destination.from_sockname(connection.getsockname())
    return Destination.from_sockname(connection.get_extra_info("sockname"))


class DeviceMap:
    """Original destination -> the policy device a transparent listener relays to; None: refuse."""

    def __init__(self, devices: Mapping[Destination, str]) -> None:
        self._devices = dict(devices)

    @classmethod
    def of(cls, devices: Mapping[str, _Endpoint] | Iterable[tuple[str, str, int]],
           names: Iterable[str] | None = None) -> DeviceMap:
        """From device settings by name (anything with `host` and `port`, e.g. `DeviceSettings`) or
        `(name, host, port)` triples; `names` keeps only a listener's devices.

        A device must be pinned by IP address: a DNS name cannot be matched against a diverted
        connection, so it is refused here rather than guessed at later.
        """
        triples = ([(n, d.host, d.port) for n, d in devices.items()] if isinstance(devices, Mapping)
                   else list(devices))
        keep = None if names is None else set(names)
        table: dict[Destination, str] = {}
        for name, host, port in triples:
            if keep is not None and name not in keep:
                continue
            try:
                where = Destination(ipaddress.ip_address(host), int(port))
            except ValueError as exc:
                raise ValueError(f"device {name}: host {host!r} must be an IP address to be diverted") from exc
            if where in table and table[where] != name:
                raise ValueError(f"devices {table[where]} and {name} are both {where}")
            table[where] = name
        return cls(table)

    def device_for(self, destination: Destination) -> str | None:
        return self._devices.get(destination)

    def __len__(self) -> int:
        return len(self._devices)
