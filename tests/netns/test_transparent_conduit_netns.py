"""Transparent mode through the real conduit: `zonegate nft apply` installs the diversion, `zonegate run`
runs on the box, and a level-3 client that speaks plain Modbus to its PLC's own address is decided by the
engine and relayed to the PLC; a denied write is answered by the box and never reaches the PLC.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import ROOT, require
from tests.netns import netns_topology as topo
from tests.netns.netns_topology import PLC, SCADA, SCRAPER, Topology

pytestmark = pytest.mark.netns

LISTENER_PORT, METRICS_PORT = 8503, 9802

_POLICY = """\
version: 1
zones:
  cell-a: {{interface: {cell_if}, subnet: 192.168.10.0/24}}
  level3: {{interface: {l3_if}, subnet: 10.3.0.0/24}}
devices:
  press-plc:
    zone: cell-a
    modbus: {{host: {plc}, port: 502, units: [1]}}
principals:
  legacy-scada: {{source: {scada}}}
listeners:
  - name: legacy
    protocol: modbus
    transparent: true
    bind: 0.0.0.0:{port}
    devices: [press-plc]
    allow_from: [{scada}/32]
metrics: {{bind: 127.0.0.1:{metrics}}}
audit: {{path: {audit}}}
rules:
  - id: legacy-read
    principal: legacy-scada
    device: press-plc
    allow:
      - functions: [read_holding_registers]
        holding: 0-99
"""


def _nft_usable() -> bool:
    try:
        import nftables  # type: ignore[import-untyped,unused-ignore]

        nftables.Nftables()
    except (ImportError, OSError):
        return False
    return True


class Service:
    """`zonegate run` in the gw namespace, and the lines it logs."""

    def __init__(self, netns: str, policy: Path) -> None:
        self.process = subprocess.Popen(
            ["ip", "netns", "exec", netns, sys.executable, "-m", "zonegate.cli", "run", "-c", str(policy)],
            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
        self.lines: list[str] = []
        self.changed = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            with self.changed:
                self.lines.append(line)
                self.changed.notify_all()
        with self.changed:
            self.changed.notify_all()

    def wait_for(self, text: str, timeout: float = 30.0) -> None:
        with self.changed:
            self.changed.wait_for(lambda: any(text in line for line in self.lines) or
                                  self.process.poll() is not None, timeout)
            assert any(text in line for line in self.lines), f"no {text!r} in time; log: {''.join(self.lines)}"

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=5)


@dataclass
class Rig:
    net: Topology
    service: Service
    audit: Path


def _zonegate(netns: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", "netns", "exec", netns, sys.executable, "-m", "zonegate.cli", *args],
                          cwd=ROOT, capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    require(topo.netns_available(), "network namespace tests need root and iproute2")
    require(shutil.which("nft") is not None and _nft_usable(), "needs libnftables and python3-nftables")
    directory = tmp_path_factory.mktemp("transparent-conduit")
    net = Topology()
    service: Service | None = None
    try:
        net.build()
        policy = directory / "policy.yaml"
        audit = directory / "audit.jsonl"
        policy.write_text(_POLICY.format(cell_if=net.gw_cell_if, l3_if=net.gw_l3_if, plc=PLC, scada=SCADA,
                                         port=LISTENER_PORT, metrics=METRICS_PORT, audit=audit))
        net.plc = net.cell.run(topo.start_plc(PLC, 502))
        applied = _zonegate(net.gw_ns, "nft", "apply", "-c", str(policy))
        assert applied.returncode == 0, applied.stderr
        service = Service(net.gw_ns, policy)
        service.wait_for("ready")
        yield Rig(net, service, audit)
    finally:
        if service is not None:
            service.stop()
        net.close()


async def _write_register(host: str, port: int, source: str, address: int, value: int) -> int | None:
    """One Modbus write; the exception code of the answer, or None if it succeeded."""
    from pymodbus.client import AsyncModbusTcpClient

    client = AsyncModbusTcpClient(host, port=port, source_address=(source, 0), timeout=2, retries=0)
    try:
        if not await client.connect():
            raise ConnectionError(f"no connection to {host}:{port} from {source}")
        reply = await client.write_register(address, value, device_id=1)
        return int(reply.exception_code) if reply.isError() else None
    finally:
        client.close()


async def _refused_without_answer(host: str, port: int) -> bool:
    """Connect and send a read; True if the box closes the connection without answering."""
    reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), 2)
    try:
        writer.write(bytes.fromhex("000100000006010300000001"))
        try:
            return await asyncio.wait_for(reader.read(), 2) == b""
        except ConnectionResetError:  # closed with the unread request still queued: the kernel resets
            return True
    finally:
        writer.close()


def _metric(netns_loop: topo.NetnsLoop, name: str, **labels: str) -> float:
    """One sample scraped from the box's metrics port (0 while the labelled series does not exist yet)."""
    def scrape() -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{METRICS_PORT}/metrics", timeout=2) as reply:
            return str(reply.read().decode())
    for line in netns_loop.call(scrape).splitlines():
        if line.startswith(f"{name}{{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_allowed_read_to_the_plc_address_is_relayed_by_the_conduit(rig: Rig) -> None:
    plc = rig.net.plc
    assert plc is not None
    before = len(plc.requests)
    assert rig.net.l3.run(topo.read_holding(PLC, 502, SCADA, 10, 3)) == [10, 11, 12]
    assert plc.requests[before:] == [3]


def test_denied_write_answers_exception_01_and_never_reaches_the_plc(rig: Rig) -> None:
    plc = rig.net.plc
    assert plc is not None
    before = len(plc.requests)
    assert rig.net.l3.run(_write_register(PLC, 502, SCADA, 5, 1234)) == 0x01
    assert rig.net.l3.run(topo.read_holding(PLC, 502, SCADA, 5, 1)) == [5]
    assert plc.requests[before:] == [3]
    denied = [r for r in topo.audit_records(rig.audit, until=lambda records: any(
        r["verdict"] == "deny" for r in records)) if r["verdict"] == "deny"]
    assert [(r["conduit"], r["device"], r["function_code"], r["principal"]["name"]) for r in denied] == [
        ("legacy", "press-plc", 6, "legacy-scada")]


def test_other_sources_are_not_diverted(rig: Rig) -> None:
    plc = rig.net.plc
    assert plc is not None
    before = len(plc.requests)
    assert rig.net.l3.run(topo.connects(PLC, 502, SCRAPER, greeting=False)) is False
    assert plc.requests[before:] == []


def test_connection_to_an_address_that_names_no_device_is_refused_and_counted(rig: Rig) -> None:
    """The listener's own address is no device's: the box closes without answering and counts it."""
    plc = rig.net.plc
    assert plc is not None
    before = len(plc.requests)
    labels = {"conduit": "legacy", "reason": "unknown_destination"}
    counted = _metric(rig.net.gw, "zonegate_framing_errors_total", **labels)
    assert rig.net.gw.run(_refused_without_answer("127.0.0.1", LISTENER_PORT)) is True
    assert _metric(rig.net.gw, "zonegate_framing_errors_total", **labels) == counted + 1
    assert plc.requests[before:] == []
