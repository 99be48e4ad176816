"""The narrated demo: a live tank PLC, a development PKI, and zonegate between level 3 and the PLC.

An operator (Modbus/TCP Security client with role Operator) reads the tank, writes an allowed setpoint,
is refused a setpoint outside the process limits (exception 01, and the audit line that records it),
sees the same request forwarded but recorded in monitor mode, and the tour ends with the metrics that
counted it all. Everything runs on loopback in this process, over real sockets.
"""

from __future__ import annotations

import asyncio
import signal
import tempfile
import urllib.request
from pathlib import Path
from typing import Final

from pymodbus.client import AsyncModbusTlsClient

from zonegate.controlplane.pki import generate
from zonegate.controlplane.supervisor import load_settings
from zonegate.dataplane.conduit import Conduit
from zonegate.demo.plc import SETPOINT, SimulatedPlc
from zonegate.demo.stack import client_ssl_context, running_conduit

DEFAULT_POLICY: Final = Path(__file__).resolve().parents[2] / "policies" / "demo.yaml"
SHOWN_METRICS: Final = ("zonegate_requests_total", "zonegate_upstream_up", "zonegate_active_connections",
                        "zonegate_policy_reloads_total")


def say(text: str) -> None:
    print(f"\n== {text}", flush=True)


async def tour(policy: Path, serve: bool, work: Path) -> int:
    pki = generate(work / "pki")
    say(f"development PKI in {pki.directory} (CA, server, operator/engineer/viewer, refusal cases)")
    settings = load_settings([policy], pki.directory)
    device = settings.devices.get("tank-plc") or next(iter(settings.devices.values()))
    plc = SimulatedPlc(device.port, live=True, initial={SETPOINT: 500})
    await plc.start()
    say(f"tank PLC simulator on {device.host}:{device.port} (unit 1; level in holding 0, setpoint in 100)")
    try:
        async with running_conduit([policy], pki.directory, serve_metrics=True) as conduit:
            listener = next(x for x in conduit.listeners if x.settings.protocol == "modbus_tls")
            host, port = listener.settings.host, listener.port
            say(f"zonegate: Modbus/TCP Security on {host}:{port}, metrics on "
                f"http://{settings.metrics_bind[0]}:{settings.metrics_bind[1]}/metrics, mode {settings.mode}")
            if serve:
                print_connect_help(host, port, pki.directory, settings.metrics_bind)
                await _until_signalled()
                say("stopping")
                return 0
            await narrate(conduit, policy, pki.directory, host, port, settings.metrics_bind, work)
    finally:
        await plc.stop()
    return 0


async def narrate(conduit: Conduit, policy: Path, pki_dir: Path, host: str, port: int,
                  metrics_bind: tuple[str, int], work: Path) -> None:
    from zonegate.controlplane.pki import DevPki

    pki = DevPki(pki_dir)
    client = AsyncModbusTlsClient(host, port=port, sslctx=client_ssl_context(pki, "operator"), timeout=3, retries=0)
    if not await client.connect():
        raise RuntimeError(f"cannot connect to zonegate on {host}:{port}")
    try:
        say("operator (role Operator) reads holding registers 0-1 (level, ticks) and setpoint 100")
        read = await client.read_holding_registers(0, count=2, device_id=1)
        setpoint = await client.read_holding_registers(SETPOINT, count=1, device_id=1)
        print(f"   level {read.registers[0]}, ticks {read.registers[1]}, setpoint {setpoint.registers[0]}")

        say("operator writes setpoint 100 = 800 (allowed: rule operator-setpoints, 0..1500)")
        wrote = await client.write_register(SETPOINT, 800, device_id=1)
        print(f"   {'refused' if wrote.isError() else 'written'}; the audit line above records the write")

        say("operator writes setpoint 100 = 5000 (outside 0..1500)")
        refused = await client.write_register(SETPOINT, 5000, device_id=1)
        code = getattr(refused, "exception_code", None)
        print(f"   refused with Modbus exception {code:02X} (illegal function); the PLC never saw it"
              if refused.isError() else "   unexpectedly written")

        say("the same write in monitor mode: forwarded, and recorded as would_deny")
        monitor = work / "demo-monitor.yaml"
        monitor.write_text(policy.read_text().replace("mode: enforce", "mode: monitor"))
        conduit.reload(load_settings([monitor], pki_dir))
        forwarded = await client.write_register(SETPOINT, 5000, device_id=1)
        print(f"   {'refused' if forwarded.isError() else 'forwarded and written'} (mode monitor)")
        conduit.reload(load_settings([policy], pki_dir))
        await client.write_register(SETPOINT, 800, device_id=1)
    finally:
        client.close()

    say("metrics (excerpt)")
    url = f"http://{metrics_bind[0]}:{metrics_bind[1]}/metrics"
    page = await asyncio.to_thread(lambda: urllib.request.urlopen(url, timeout=5).read().decode())
    for line in page.splitlines():
        if line.startswith(SHOWN_METRICS):
            print(f"   {line}")
    say("done; `zonegate demo --serve` keeps everything running")


async def _until_signalled() -> None:
    """Wait for SIGINT or SIGTERM (a background demo does not get SIGINT from a terminal)."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    try:
        await stop.wait()
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)


def print_connect_help(host: str, port: int, pki_dir: Path, metrics_bind: tuple[str, int]) -> None:
    print(f"""
Serving until Ctrl-C (or SIGTERM). Connect as the operator, for example with pymodbus:

    from pymodbus.client import ModbusTlsClient
    import ssl
    ctx = ssl.create_default_context(cafile="{pki_dir}/ca.crt")
    ctx.load_cert_chain("{pki_dir}/operator.crt", "{pki_dir}/operator.key")
    client = ModbusTlsClient("{host}", port={port}, sslctx=ctx); client.connect()
    print(client.read_holding_registers(0, count=2, device_id=1).registers)

or look at the handshake: openssl s_client -connect {host}:{port} -CAfile {pki_dir}/ca.crt \\
    -cert {pki_dir}/operator.crt -key {pki_dir}/operator.key
Metrics: curl http://{metrics_bind[0]}:{metrics_bind[1]}/metrics
""", flush=True)


def main(policy: Path | None, serve: bool) -> int:
    with tempfile.TemporaryDirectory(prefix="zonegate-demo-") as work:
        from zonegate.commands.run import run_on_event_loop

        try:
            return run_on_event_loop(tour(policy or DEFAULT_POLICY, serve, Path(work)))
        except KeyboardInterrupt:
            return 0
