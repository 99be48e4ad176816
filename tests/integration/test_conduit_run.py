"""`zonegate run` as a process: serves, reloads on SIGHUP (keeping the old policy when the new one is
bad), keeps open connections working across a reload under load, exposes metrics, and drains on SIGTERM;
with each relay (`--relay python`, `--relay rust`)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import urllib.request
from pathlib import Path

import pytest

from tests.integration.test_conduit import POLICY, run
from tests.integration.test_conduit_faults import read_adu, read_request
from zonegate.controlplane.pki import DevPki, generate
from zonegate.demo.plc import SimulatedPlc
from zonegate.demo.stack import client_ssl_context, free_port

ROOT = Path(__file__).resolve().parents[2]
WRITE_101 = bytes.fromhex("0011 0000 0006 01 06 0065 0005")  # tid 0x11, write register 101 = 5


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> DevPki:
    return generate(tmp_path_factory.mktemp("pki"))


class Service:
    """A `zonegate run` child process and the lines it logs."""

    def __init__(self, policy: Path, pki_dir: Path, pid_file: Path, relay: str = "python") -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "zonegate.cli", "run", "-c", str(policy), "--pki", str(pki_dir),
             "--pid-file", str(pid_file), "--no-firewall", "--relay", relay],
            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
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

    def wait_for(self, text: str, timeout: float = 20.0) -> None:
        with self.changed:
            if not self.changed.wait_for(lambda: any(text in line for line in self.lines) or
                                         self.process.poll() is not None, timeout):
                raise AssertionError(f"no {text!r} in time; log: {''.join(self.lines)}")
        assert any(text in line for line in self.lines), "".join(self.lines)

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=5)
            raise


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        return response.read().decode()


def sample(text: str, name: str, **labels: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            head, _, value = line.rpartition(" ")
            if all(f'{k}="{v}"' in head for k, v in labels.items()):
                return float(value)
    return 0.0


async def until_metric(port: int, name: str, value: float, timeout: float = 10.0, **labels: str) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while sample(await asyncio.to_thread(scrape, port), name, **labels) != value:
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"{name}{labels} never reached {value}")
        await asyncio.sleep(0.05)


def test_run_reload_and_sigterm(tmp_path: Path, pki: DevPki, relay: str) -> None:
    plc_port, listen_port, metrics_port = free_port(), free_port(), free_port()
    policy = tmp_path / "policy.yaml"
    text = POLICY.format(mode="enforce", plc_port=plc_port, listen_port=listen_port, audit='"-"',
                         device_timeout="2s") + f"metrics: {{bind: 127.0.0.1:{metrics_port}}}\n"
    policy.write_text(text)
    service = Service(policy, pki.directory, tmp_path / "zonegate.pid", relay)

    async def body() -> None:
        plc = SimulatedPlc(plc_port, initial={0: 321})
        await plc.start()
        try:
            await asyncio.to_thread(service.wait_for, "ready")
            context = client_ssl_context(pki, "operator")
            reader, writer = await asyncio.open_connection("127.0.0.1", listen_port, ssl=context,
                                                           server_hostname="127.0.0.1")
            writer.write(WRITE_101)
            assert await read_adu(reader) == WRITE_101  # the echo of an allowed write

            # Load on a second connection throughout the reloads: every request gets its read reply.
            stop = asyncio.Event()
            replies: list[bytes] = []

            async def load() -> None:
                r, w = await asyncio.open_connection("127.0.0.1", listen_port, ssl=context,
                                                     server_hostname="127.0.0.1")
                tid = 0
                while not stop.is_set() and tid < 20000:
                    tid += 1
                    w.write(read_request(tid & 0xFFFF, 0))
                    replies.append(await read_adu(r))
                w.close()

            loader = asyncio.create_task(load())
            # Reload with the setpoint rule removed: the same open connection is now refused.
            policy.write_text(text.replace("write_single_register, write_multiple_registers", "mask_write_register"))
            os.kill(service.process.pid, signal.SIGHUP)
            await until_metric(metrics_port, "zonegate_policy_reloads_total", 1, result="ok")
            writer.write(WRITE_101)
            assert await read_adu(reader) == bytes.fromhex("0011 0000 0003 01 86 01")

            # An invalid policy is refused, reported, and the previous one stays in force.
            policy.write_text(text.replace("holding: 0-199", "holding: 0-70000"))
            check = subprocess.run(
                [sys.executable, "-m", "zonegate.cli", "reload", "-c", str(policy), "--pki", str(pki.directory),
                 "--pid-file", str(tmp_path / "zonegate.pid")],
                cwd=ROOT, capture_output=True, text=True, timeout=30,
            )
            assert check.returncode == 2 and "policy.yaml:" in check.stderr
            os.kill(service.process.pid, signal.SIGHUP)
            await until_metric(metrics_port, "zonegate_policy_reloads_total", 1, result="failed")
            writer.write(WRITE_101)
            assert await read_adu(reader) == bytes.fromhex("0011 0000 0003 01 86 01")
            stop.set()
            await asyncio.wait_for(loader, 10)
            assert replies and all(r[2:] == bytes.fromhex("0000 0005 01 03 02 0141") for r in replies)
            page = await asyncio.to_thread(scrape, metrics_port)
            assert sample(page, "zonegate_requests_total", principal="operator", verdict="deny",
                          reason="function_not_allowed") == 2
            # the loader closed its connection; zonegate sees that a moment later
            await until_metric(metrics_port, "zonegate_active_connections", 1, conduit="l3-modbus-security")
            writer.close()
        finally:
            code = await asyncio.to_thread(service.stop)
            await plc.stop()
        assert code == 0, "".join(service.lines)
        assert any("stopped" in line for line in service.lines)

    run(body(), timeout=90)


def test_rust_relay_refuses_a_transparent_listener(tmp_path: Path, pki: DevPki) -> None:
    """The Rust relay has no transparent listeners: `--relay rust` says so and exits before serving."""
    listen_port = free_port()
    policy = tmp_path / "policy.yaml"
    policy.write_text(
        "version: 1\n"
        "zones:\n  cell-a: {subnet: 127.0.0.0/8}\n"
        "devices:\n  plc: {zone: cell-a, modbus: {host: 127.0.0.1, port: 502, units: [1]}}\n"
        "principals:\n  hmi: {source: 127.0.0.1}\n"
        "rules:\n  - {id: hmi-read, principal: hmi, device: plc, allow: [{functions: [read_holding_registers]}]}\n"
        "listeners:\n"
        f"  - {{name: legacy, protocol: modbus, bind: 127.0.0.1:{listen_port}, devices: [plc], transparent: true}}\n"
    )
    result = subprocess.run(
        [sys.executable, "-m", "zonegate.cli", "run", "-c", str(policy), "--pki", str(pki.directory),
         "--no-firewall", "--relay", "rust"],
        cwd=ROOT, capture_output=True, text=True, timeout=30,
    )
    assert result.returncode == 2, result.stderr
    assert "--relay rust: listener legacy: transparent listeners" in result.stderr
    assert "--relay python" in result.stderr
