"""The demo stack: a zonegate conduit (with its EtherNet/IP listeners and its OPC UA converter) run inside
the current event loop, and TLS contexts for its clients.

`zonegate demo` and the integration tests drive the same pieces `zonegate run` does (policy load,
conduit, OPC UA converter on the conduit's device pools, metrics, audit), in one process, so a narrated
tour or a test can talk to them over real loopback sockets and then read their counters.
"""

from __future__ import annotations

import os
import random
import socket
import ssl
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from zonegate.controlplane.audit import AuditLog
from zonegate.controlplane.metrics import Metrics
from zonegate.controlplane.pki import DevPki
from zonegate.controlplane.supervisor import load_settings
from zonegate.controlplane.tls import TLS12_CIPHERS
from zonegate.dataplane.conduit import Conduit
from zonegate.dataplane.enip_conduit import EnipConduit, start_enip


_PICK = random.SystemRandom()  # not the `random` module's state, which property tests seed
_given: set[int] = set()


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999  # Linux's default


def free_port() -> int:
    """A loopback TCP port, free now, that this process has not handed out before.

    It lies outside the kernel's ephemeral range, so between this check and the bind of whatever it is for,
    no outgoing connection (of this process or another) can be given it as its local port.
    """
    low, high = _ephemeral_range()
    ports = [*range(20000, low), *range(high + 1, 65536)]
    for _ in range(256):
        port = _PICK.choice(ports) if ports else 0
        if port in _given:
            continue
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            port = int(sock.getsockname()[1])
        _given.add(port)
        return port
    raise OSError("no free loopback port outside the ephemeral range")


def client_ssl_context(
    pki: DevPki,
    name: str | None,
    *,
    maximum: ssl.TLSVersion | None = None,
    minimum: ssl.TLSVersion = ssl.TLSVersion.TLSv1_2,
    ciphers: str = TLS12_CIPHERS,
) -> ssl.SSLContext:
    """A level-3 client's context: the certificate `name` from the development PKI (None: no certificate)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = minimum
    if maximum is not None:
        context.maximum_version = maximum
    context.set_ciphers(ciphers)
    context.load_verify_locations(cafile=os.fspath(pki.ca))
    if name is not None:
        context.load_cert_chain(os.fspath(pki.cert(name)), os.fspath(pki.key(name)))
    return context


@asynccontextmanager
async def running_conduit(
    policy: Sequence[Path], pki_dir: Path | None, audit_path: str = "-", *, serve_metrics: bool = False
) -> AsyncIterator[Conduit]:
    """A started conduit for `policy`; stopped (drained) on exit."""
    settings = load_settings(policy, pki_dir)
    metrics = Metrics()
    audit = AuditLog(audit_path, settings.audit_max_per_second, on_suppressed=metrics.audit_suppressed.inc)
    conduit = Conduit(settings, metrics, audit)
    await conduit.start()
    if serve_metrics:
        host, port = settings.metrics_bind
        metrics.serve(host, port)
    try:
        yield conduit
    finally:
        await conduit.drain(1.0)
        metrics.stop()
        audit.close()


@asynccontextmanager
async def running_enip(conduit: Conduit) -> AsyncIterator[EnipConduit | None]:
    """The policy's EtherNet/IP listeners beside `conduit` (None without any); drained on exit.

    They share the conduit's engine, metrics and audit, as under `zonegate run`, so a reload of the conduit
    (the tour's monitor-mode step) decides their requests too.
    """
    enip = await start_enip(conduit, conduit.settings)
    try:
        yield enip
    finally:
        if enip is not None:
            await enip.drain(1.0)


@asynccontextmanager
async def running_converter(policy: Sequence[Path], pki_dir: Path | None, conduit: Conduit) -> AsyncIterator[Any]:
    """The policy's OPC UA converter on `conduit`'s device pools, audit and metrics (None without an
    `opcua:` section); stopped on exit."""
    from zonegate.controlplane.policy import load
    from zonegate.convert.opcua_server import start_opcua

    loaded = load(list(policy), pki_dir=pki_dir)
    if loaded.opcua is None:
        yield None
        return
    converter = await start_opcua(loaded, conduit.generation.policy, pools=lambda: conduit.pools,
                                  audit=conduit.audit, metrics=conduit.metrics)
    try:
        yield converter
    finally:
        await converter.stop()
