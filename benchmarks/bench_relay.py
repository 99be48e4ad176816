"""Relay benchmark: zonegate (mutual TLS + decision + relay) against direct TCP, stunnel4 and haproxy.

Every system sits between the same load generator and the same fast target on loopback, in the same run,
so the figures compare as ratios on this machine. Two halves, each with a target of its own: Modbus/TCP
(read holding register 0) and EtherNet/IP (SendRRData carrying a CIP Read Tag, after RegisterSession on
each connection; zonegate through an `enip_tls` listener). Closed-loop clients (1, 16, 64
connections, one request in flight each) give throughput and latency; a fixed-rate run at 2,000
requests/s over 16 connections gives latency under a steady load (measured from the scheduled send
time, so queueing counts); 1,000 idle mutual-TLS connections give zonegate's resident memory (Modbus half).

    python benchmarks/bench_relay.py            # table
    python benchmarks/bench_relay.py --json     # one JSON object (zonegate_rps_64, haproxy_p99_2k_us, ...)
    python benchmarks/bench_relay.py --quick    # seconds, not minutes: checks the harness, not speed
    python benchmarks/bench_relay.py --enip-only   # or --modbus-only: one half

TLS is 1.3 with ECDSA P-256 certificates from a development PKI made for the run. stunnel4 and haproxy
come from Debian (`make bench` installs them); a missing one is reported and skipped. zonegate starts as
`zonegate run` does for a user (its launcher sets the malloc tunables), without the nftables table
(`--no-firewall`: the other relays run without one, and the host's firewall is not the benchmark's), and
multiplexes the clients over one device connection with up to 64 requests in flight: as many as the
one-connection-per-client relays put on the target with 64 clients. Its EtherNet/IP conduit carries the
clients' unconnected messages (all this benchmark sends) over one shared device session, a sender context
of its own per message (docs/relay.md, "Shared session"); the other relays, and `zonegate-python`, give
every client connection a device connection and session of its own.

`zonegate` runs its Modbus and EtherNet/IP conduits in the Rust relay (docs/relay.md), as `zonegate run` does
by default; `zonegate-python` is zonegate again with `--relay python` (the reference relay, docs/dataplane.md
and docs/enip-conduit.md), measured in the same run, in both halves; its keys start `zonegate_python_`
(`zonegate_python_rps_64`, `zonegate_python_p99_2k_us`, `zonegate_python_idle1000_rss_mb`,
`zonegate_python_cpu_us_per_request_64`, `zonegate_python_enip_rps_64`). A build of zonegate without the Rust
relay cannot run `zonegate`.

EtherNet/IP keys carry `_enip` after the system (`zonegate_enip_rps_64`, `haproxy_enip_p99_2k_us`,
`zonegate_python_enip_cpu_us`, ...); `*_enip_cpu_us` is the relay's CPU per request with 64 clients.

Besides each relay's CPU per request, the report gives the load generator's and the target's
(`*_loadgen_cpu_us_per_request_*`, `*_target_cpu_us_per_request_*`): on a 2-core machine all three share
the cores, so a dear generator flattens the differences between relays.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import shutil
import signal
import socket
import ssl
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from zonegate.controlplane.pki import DevPki, generate  # noqa: E402
from zonegate.demo.stack import free_port  # noqa: E402

REQUEST_TAIL = bytes.fromhex("0000 0006 01 03 0000 0001")  # after the tid: read holding register 0
REPLY_LENGTH = 11
TARGET_VALUE = 0x4242

# EtherNet/IP: a SendRRData (null address item, unconnected data item) carrying Read Tag "Bench", 1 element
ENIP_HEADER = 24
ENIP_READ_TAG = bytes((0x4C, 4)) + b"\x91\x05Bench\x00" + b"\x01\x00"
ENIP_REQUEST_CPF = (struct.pack("<IHH", 0, 0, 2) + struct.pack("<HH", 0, 0)
                    + struct.pack("<HH", 0xB2, len(ENIP_READ_TAG)) + ENIP_READ_TAG)
# its reply: Read Tag success, INT 0x4242
ENIP_REPLY_CIP = bytes((0xCC, 0, 0, 0)) + struct.pack("<HH", 0x00C3, TARGET_VALUE)
ENIP_REPLY_CPF = (struct.pack("<IHH", 0, 0, 2) + struct.pack("<HH", 0, 0)
                  + struct.pack("<HH", 0xB2, len(ENIP_REPLY_CIP)) + ENIP_REPLY_CIP)
ENIP_REPLY_LENGTH = ENIP_HEADER + len(ENIP_REPLY_CPF)
ENIP_TARGET_SESSION = 0x5EC0_0001

POLICY = """\
version: 1
zones:
  cell-a: {{subnet: 127.0.0.0/8}}
devices:
  target:
    zone: cell-a
    modbus: {{host: 127.0.0.1, port: {target}, units: [1], max_connections: 1, pipelining: true, pipeline_depth: 64, timeout: 5s}}
principals:
  operator: {{tls_role: Operator}}
rules:
  - id: operator-read
    principal: operator
    device: target
    allow:
      - {{functions: [read_holding_registers], holding: 0-99}}
listeners:
  - name: bench
    protocol: modbus_tls
    bind: 127.0.0.1:{port}
    devices: [target]
    tls: {{cert: server.crt, key: server.key, ca: ca.crt}}
    max_outstanding: 100
metrics: {{bind: 127.0.0.1:{metrics}}}
audit: {{path: "-", max_per_second: 10}}
"""

ENIP_POLICY = """\
version: 1
zones:
  cell-a: {{subnet: 127.0.0.0/8}}
devices:
  target:
    zone: cell-a
    enip: {{host: 127.0.0.1, port: {target}, timeout: 5s, max_connections: 64}}
principals:
  operator: {{tls_role: Operator}}
rules:
  - id: operator-read
    principal: operator
    device: target
    cip:
      - services: [read_tag]
        tags: ["Bench"]
listeners:
  - name: bench
    protocol: enip_tls
    bind: 127.0.0.1:{port}
    devices: [target]
    tls: {{cert: server.crt, key: server.key, ca: ca.crt}}
    max_outstanding: 100
metrics: {{bind: 127.0.0.1:{metrics}}}
audit: {{path: "-", max_per_second: 10}}
"""


# -- the target: a fast Modbus/TCP server (its own process) ---------------------------------------------


class _TargetProtocol(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: Any = transport
        self.buffer = b""

    def data_received(self, data: bytes) -> None:
        buf = self.buffer + data if self.buffer else data
        out = []
        offset = 0
        while len(buf) - offset >= 6:
            end = offset + 6 + int.from_bytes(buf[offset + 4 : offset + 6], "big")
            if end > len(buf):
                break
            out.append(buf[offset : offset + 2] + b"\x00\x00\x00\x05" + buf[offset + 6 : offset + 8] + b"\x02\x42\x42")
            offset = end
        self.buffer = buf[offset:]
        if out:
            self.transport.write(b"".join(out))


class _EnipTargetProtocol(asyncio.Protocol):
    """RegisterSession gets a fixed handle, every SendRRData the same Read Tag reply, UnRegisterSession a close.

    The reply echoes the request's session handle and sender context (what a relay matches replies by);
    other commands are not answered: the benchmark sends none.
    """

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: Any = transport
        self.buffer = b""

    def data_received(self, data: bytes) -> None:
        buf = self.buffer + data if self.buffer else data
        out = []
        offset = 0
        while len(buf) - offset >= ENIP_HEADER:
            end = offset + ENIP_HEADER + int.from_bytes(buf[offset + 2 : offset + 4], "little")
            if end > len(buf):
                break
            command = buf[offset]
            if command == 0x6F:
                out.append(b"\x6f\x00" + len(ENIP_REPLY_CPF).to_bytes(2, "little") + buf[offset + 4 : offset + 8]
                           + b"\x00\x00\x00\x00" + buf[offset + 12 : offset + 24] + ENIP_REPLY_CPF)
            elif command == 0x65:
                out.append(buf[offset : offset + 4] + ENIP_TARGET_SESSION.to_bytes(4, "little")
                           + buf[offset + 8 : end])
            elif command == 0x66:
                self.transport.close()
                return
            offset = end
        self.buffer = buf[offset:]
        if out:
            self.transport.write(b"".join(out))


def serve_target(port: int, protocol: str = "modbus") -> None:
    import uvloop

    factory = _EnipTargetProtocol if protocol == "enip" else _TargetProtocol

    async def main() -> None:
        server = await asyncio.get_running_loop().create_server(factory, "127.0.0.1", port)
        async with server:
            await server.serve_forever()

    uvloop.run(main())


# -- the load generator ------------------------------------------------------------------------------


@dataclass
class Result:
    requests: int = 0
    seconds: float = 0.0
    latencies_us: list[float] = field(default_factory=list)
    errors: int = 0

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    def percentile(self, p: float) -> float:
        if not self.latencies_us:
            return 0.0
        ordered = sorted(self.latencies_us)
        return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


class _Client(asyncio.Protocol):
    """One connection; closed loop (send on reply) or open loop (sends scheduled by the driver)."""

    def __init__(self, run: _Run, closed_loop: bool) -> None:
        self.run = run
        self.closed_loop = closed_loop
        self.buffer = b""
        self.sent: dict[int, float] = {}
        self.tid = 0
        self.ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.transport: Any = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        if not self.ready.done():
            self.ready.set_result(None)

    def send(self, at: float | None = None) -> None:
        self.tid = (self.tid + 1) & 0xFFFF
        self.sent[self.tid] = at if at is not None else time.perf_counter()
        self.transport.write(self.tid.to_bytes(2, "big") + REQUEST_TAIL)

    def data_received(self, data: bytes) -> None:
        buf = self.buffer + data if self.buffer else data
        now = time.perf_counter()
        offset = 0
        while len(buf) - offset >= REPLY_LENGTH:
            tid = int.from_bytes(buf[offset : offset + 2], "big")
            ok = buf[offset + 7] == 3 and buf[offset + 9 : offset + 11] == b"\x42\x42"
            offset += REPLY_LENGTH
            started = self.sent.pop(tid, None)
            if started is None or not ok:
                self.run.result.errors += 1
                continue
            self.run.record(now - started)
            if self.closed_loop and not self.run.stopped:
                self.send()
        self.buffer = buf[offset:]

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.run.stopped:
            self.run.result.errors += 1
        if not self.ready.done():
            self.ready.set_exception(ConnectionError("closed before it was ready"))


class _EnipClient(_Client):
    """An EtherNet/IP connection: RegisterSession first (ready on its reply), then SendRRData Read Tags.

    Requests are told apart by their sender context (the transaction counter); anything but the target's
    Read Tag reply to one in flight (a relay's refusal or gateway answer, say) counts as an error.
    """

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self.head = b""
        register = struct.pack("<HHII8sI", 0x65, 4, 0, 0, bytes(8), 0) + struct.pack("<HH", 1, 0)  # version 1
        self.transport.write(register)

    def send(self, at: float | None = None) -> None:
        self.tid = (self.tid + 1) & 0xFFFF
        self.sent[self.tid] = at if at is not None else time.perf_counter()
        self.transport.write(self.head + self.tid.to_bytes(8, "little") + self.tail)

    def data_received(self, data: bytes) -> None:
        buf = self.buffer + data if self.buffer else data
        now = time.perf_counter()
        offset = 0
        while len(buf) - offset >= ENIP_HEADER:
            end = offset + ENIP_HEADER + int.from_bytes(buf[offset + 2 : offset + 4], "little")
            if end > len(buf):
                break
            command = buf[offset]
            if command == 0x65 and not self.ready.done():
                if buf[offset + 8 : offset + 12] != b"\x00\x00\x00\x00":
                    self.ready.set_exception(ConnectionError("RegisterSession refused"))
                else:
                    session = buf[offset + 4 : offset + 8]
                    self.head = b"\x6f\x00" + len(ENIP_REQUEST_CPF).to_bytes(2, "little") + session + bytes(4)
                    self.tail = bytes(4) + ENIP_REQUEST_CPF
                    self.ready.set_result(None)
                offset = end
                continue
            tid = int.from_bytes(buf[offset + 12 : offset + 20], "little")
            ok = (command == 0x6F and end - offset == ENIP_REPLY_LENGTH
                  and buf[offset + 8 : offset + 12] == b"\x00\x00\x00\x00"
                  and buf[end - len(ENIP_REPLY_CIP) : end] == ENIP_REPLY_CIP)
            offset = end
            started = self.sent.pop(tid, None)
            if started is None or not ok:
                self.run.result.errors += 1
                continue
            self.run.record(now - started)
            if self.closed_loop and not self.run.stopped:
                self.send()
        self.buffer = buf[offset:]


class _Run:
    def __init__(self) -> None:
        self.result = Result()
        self.measuring = False
        self.stopped = False

    def record(self, seconds: float) -> None:
        if self.measuring:
            self.result.requests += 1
            self.result.latencies_us.append(seconds * 1e6)


CLIENTS: dict[str, type[_Client]] = {"modbus": _Client, "enip": _EnipClient}


async def _connect(port: int, context: ssl.SSLContext | None, run: _Run, closed_loop: bool,
                   protocol: str = "modbus") -> _Client:
    loop = asyncio.get_running_loop()
    kind = CLIENTS[protocol]
    _, client = await loop.create_connection(
        lambda: kind(run, closed_loop), "127.0.0.1", port, ssl=context,
        server_hostname="127.0.0.1" if context else None,
    )
    await asyncio.wait_for(client.ready, 10)
    return client


async def closed_loop(port: int, context: ssl.SSLContext | None, clients: int, warmup: float,
                      duration: float, protocol: str = "modbus") -> Result:
    run = _Run()
    conns = [await _connect(port, context, run, True, protocol) for _ in range(clients)]
    for conn in conns:
        conn.send()
    await asyncio.sleep(warmup)
    run.measuring = True
    start = time.perf_counter()
    await asyncio.sleep(duration)
    run.measuring = False
    run.result.seconds = time.perf_counter() - start
    run.stopped = True
    for conn in conns:
        conn.transport.close()
    return run.result


async def fixed_rate(port: int, context: ssl.SSLContext | None, clients: int, rate: float, warmup: float,
                     duration: float, protocol: str = "modbus") -> Result:
    run = _Run()
    conns = [await _connect(port, context, run, False, protocol) for _ in range(clients)]
    interval = clients / rate
    start = time.perf_counter() + 0.01
    end = start + warmup + duration
    n = 0
    measure_from = start + warmup
    while True:
        for i, conn in enumerate(conns):
            due = start + n * interval + i * interval / clients
            if due >= end:
                break
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            run.measuring = due >= measure_from
            conn.send(at=due)
        else:
            n += 1
            continue
        break
    await asyncio.sleep(0.2)  # let the last replies land before counting
    run.result.seconds = duration
    run.stopped = True
    for conn in conns:
        conn.transport.close()
    return run.result


# -- the systems under test ---------------------------------------------------------------------------


def _cpu_seconds(pid: int) -> float:
    """User + system CPU of a process and its threads, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _own_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _wait_port(port: int, process: subprocess.Popen[bytes] | None, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"process exited with {process.returncode} before listening on {port}")
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listening on {port} after {timeout} s")


@contextmanager
def _process(argv: list[str], port: int, env: dict[str, str] | None = None) -> Iterator[subprocess.Popen[bytes]]:
    process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env, cwd=ROOT)
    try:
        _wait_port(port, process)
        yield process
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)


@contextmanager
def relay(system: str, work: Path, pki: DevPki, target: int,
          protocol: str = "modbus") -> Iterator[tuple[int, int | None]]:
    """Start `system` in front of the target; yields (port to connect to, relay pid or None)."""
    if system == "direct":
        yield target, None
        return
    port = free_port()
    if system in ("zonegate", "zonegate-python"):
        policy = work / f"bench-policy-{system}-{protocol}.yaml"
        template = ENIP_POLICY if protocol == "enip" else POLICY
        policy.write_text(template.format(target=target, port=port, metrics=free_port()))
        # As a user starts it (the launcher sets its own malloc tunables), but without the boundary table:
        # the other relays run without one, and the host's own firewall is not the benchmark's to change.
        argv = [sys.executable, "-m", "zonegate.cli", "run", "-c", str(policy), "--pki", str(pki.directory),
                "--log-level", "warning", "--no-firewall",
                "--relay", "python" if system == "zonegate-python" else "rust"]
        with _process(argv, port) as process:
            yield port, process.pid
        return
    if system == "stunnel":
        config = work / "stunnel.conf"
        config.write_text(
            f"foreground = yes\npid =\nsyslog = no\ndebug = 0\n[modbus]\naccept = 127.0.0.1:{port}\n"
            f"connect = 127.0.0.1:{target}\ncert = {pki.cert('server')}\nkey = {pki.key('server')}\n"
            f"CAfile = {pki.ca}\nverifyChain = yes\nrequireCert = yes\nsslVersionMin = TLSv1.2\n"
        )
        with _process([str(shutil.which("stunnel4") or shutil.which("stunnel")), str(config)], port) as process:
            yield port, process.pid
        return
    if system == "haproxy":
        pem = work / "haproxy-server.pem"
        pem.write_bytes(pki.cert("server").read_bytes() + pki.key("server").read_bytes())
        pem.chmod(0o600)
        config = work / "haproxy.cfg"
        config.write_text(
            "global\n  nbthread 2\n  maxconn 4000\n  tune.ssl.default-dh-param 2048\n"
            "defaults\n  mode tcp\n  timeout connect 5s\n  timeout client 300s\n  timeout server 300s\n"
            f"frontend modbus\n  bind 127.0.0.1:{port} ssl crt {pem} ca-file {pki.ca} verify required "
            "ssl-min-ver TLSv1.2\n  default_backend target\n"
            f"backend target\n  server t 127.0.0.1:{target}\n"
        )
        with _process([str(shutil.which("haproxy")), "-db", "-f", str(config)], port) as process:
            yield port, process.pid
        return
    raise ValueError(system)


def available(system: str) -> bool:
    if system == "zonegate":
        from zonegate import _engine

        return hasattr(_engine, "Relay")
    if system == "stunnel":
        return bool(shutil.which("stunnel4") or shutil.which("stunnel"))
    if system == "haproxy":
        return bool(shutil.which("haproxy"))
    return True


def client_context(pki: DevPki) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.load_verify_locations(cafile=str(pki.ca))
    context.load_cert_chain(str(pki.cert("operator")), str(pki.key("operator")))
    return context


async def idle_connections(port: int, context: ssl.SSLContext, count: int) -> list[Any]:
    loop = asyncio.get_running_loop()
    run = _Run()
    transports = []
    for _ in range(count):
        transport, _ = await loop.create_connection(lambda: _Client(run, False), "127.0.0.1", port, ssl=context,
                                                    server_hostname="127.0.0.1")
        transports.append(transport)
    return transports


async def measure(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    pki = generate(work / "pki")
    context = client_context(pki)
    out: dict[str, Any] = {"machine": f"{os.cpu_count()} cores, {os.uname().release}", "tls": "1.3, ECDSA P-256"}
    for protocol in args.protocols:
        await measure_protocol(args, work, pki, context, protocol, out)
    return out


async def measure_protocol(args: argparse.Namespace, work: Path, pki: DevPki, context: ssl.SSLContext,
                           protocol: str, out: dict[str, Any]) -> None:
    """One half of the benchmark (its own target process); keys are `{system}[_enip]_...`."""
    target_port = free_port()
    warmup, duration = (0.2, 0.5) if args.quick else (1.0, args.duration)
    rate_duration = 0.5 if args.quick else args.duration
    argv = [sys.executable, __file__, "--serve-target", str(target_port), "--target-protocol", protocol]
    with _process(argv, target_port) as target:
        for system_name in args.systems:
            if not available(system_name):
                print(f"# {system_name}: not installed, skipped", file=sys.stderr)
                continue
            key = system_name.replace("-", "_")
            system = key if protocol == "modbus" else f"{key}_{protocol}"
            with relay(system_name, work, pki, target_port, protocol) as (port, pid):
                tls = None if system_name == "direct" else context
                for clients in args.clients:
                    cpu_before = _cpu_seconds(pid) if pid else 0.0
                    load_before, target_before = _own_cpu_seconds(), _cpu_seconds(target.pid)
                    result = await closed_loop(port, tls, clients, warmup, duration, protocol)
                    cpu = (_cpu_seconds(pid) - cpu_before) if pid else 0.0
                    load_cpu, target_cpu = _own_cpu_seconds() - load_before, _cpu_seconds(target.pid) - target_before
                    out[f"{system}_rps_{clients}"] = round(result.rps)
                    out[f"{system}_p50_{clients}_us"] = round(result.percentile(50), 1)
                    out[f"{system}_p99_{clients}_us"] = round(result.percentile(99), 1)
                    out[f"{system}_p999_{clients}_us"] = round(result.percentile(99.9), 1)
                    if pid and result.requests:
                        # CPU over warm-up and measurement, per request measured (an upper bound)
                        total = result.requests * (warmup + duration) / duration
                        out[f"{system}_cpu_us_per_request_{clients}"] = round(cpu / total * 1e6, 1)
                        if protocol != "modbus" and clients == 64:
                            out[f"{system}_cpu_us"] = out[f"{system}_cpu_us_per_request_{clients}"]
                    if result.requests:
                        total = result.requests * (warmup + duration) / duration
                        out[f"{system}_loadgen_cpu_us_per_request_{clients}"] = round(load_cpu / total * 1e6, 1)
                        out[f"{system}_target_cpu_us_per_request_{clients}"] = round(target_cpu / total * 1e6, 1)
                    if result.errors:
                        out[f"{system}_errors_{clients}"] = result.errors
                fixed = await fixed_rate(port, tls, 16, 2000.0, warmup, rate_duration, protocol)
                out[f"{system}_rps_2k"] = round(fixed.rps)
                out[f"{system}_p50_2k_us"] = round(fixed.percentile(50), 1)
                out[f"{system}_p99_2k_us"] = round(fixed.percentile(99), 1)
                out[f"{system}_p999_2k_us"] = round(fixed.percentile(99.9), 1)
                if fixed.errors:
                    out[f"{system}_errors_2k"] = fixed.errors
                if pid and protocol == "modbus" and system_name in args.idle:
                    count = 100 if args.quick else 1000
                    transports = await idle_connections(port, context, count)
                    await asyncio.sleep(0.5)
                    out[f"{system}_idle{count}_rss_mb"] = round(_rss_mb(pid), 1)
                    for transport in transports:
                        transport.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--quick", action="store_true", help="short runs: check the harness, not the speed")
    parser.add_argument("--duration", type=float, default=5.0, help="seconds measured per closed-loop run")
    parser.add_argument("--systems", default="direct,stunnel,haproxy,zonegate,zonegate-python")
    parser.add_argument("--clients", default="1,16,64")
    parser.add_argument("--idle", default="zonegate,zonegate-python,haproxy,stunnel",
                        help="systems whose idle RSS is measured")
    half = parser.add_mutually_exclusive_group()
    half.add_argument("--modbus-only", action="store_true", help="only the Modbus/TCP half")
    half.add_argument("--enip-only", action="store_true", help="only the EtherNet/IP half")
    parser.add_argument("--serve-target", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--target-protocol", choices=("modbus", "enip"), default="modbus", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_target is not None:
        serve_target(args.serve_target, args.target_protocol)
        return 0
    args.protocols = ["enip"] if args.enip_only else ["modbus"] if args.modbus_only else ["modbus", "enip"]
    args.systems = [s for s in args.systems.split(",") if s]
    args.clients = [int(c) for c in args.clients.split(",") if c]
    args.idle = [s for s in args.idle.split(",") if s]
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 8192)), hard))
    import uvloop

    with tempfile.TemporaryDirectory(prefix="zonegate-bench-") as work:
        out = uvloop.run(measure(args, Path(work)))
    if args.json:
        print(json.dumps(out))
        return 0
    for key, value in out.items():
        print(f"{key:40} {value}")
    for name in ("zonegate", "zonegate_python"):
        if f"{name}_rps_64" not in out:
            continue
        for base, ratio in (("haproxy_rps_64", 1.2), ("stunnel_rps_64", 1.5)):
            wanted = f"{name}_rps_64"
            if out.get(base):
                print(f"{wanted} / {base} = {out.get(wanted, 0) / out[base]:.2f} (target >= {ratio})")
        if out.get("haproxy_p99_2k_us"):
            ratio = out.get(f"{name}_p99_2k_us", 0) / out["haproxy_p99_2k_us"]
            print(f"{name}_p99_2k_us / haproxy_p99_2k_us = {ratio:.2f} (target <= 1.5)")
        if out.get("haproxy_cpu_us_per_request_64"):
            ratio = out.get(f"{name}_cpu_us_per_request_64", 0) / out["haproxy_cpu_us_per_request_64"]
            print(f"{name}_cpu_us_per_request_64 / haproxy_cpu_us_per_request_64 = {ratio:.2f} (target <= 1.0)")
    for name in ("zonegate_enip", "zonegate_python_enip"):
        if f"{name}_rps_64" not in out:
            continue
        for base, ratio in (("haproxy_enip_rps_64", 1.2), ("stunnel_enip_rps_64", 1.5)):
            wanted = f"{name}_rps_64"
            if out.get(base):
                print(f"{wanted} / {base} = {out.get(wanted, 0) / out[base]:.2f} (target >= {ratio})")
        for wanted, base in ((f"{name}_p99_2k_us", "haproxy_enip_p99_2k_us"),
                             (f"{name}_cpu_us", "haproxy_enip_cpu_us")):
            target = "<= 1.5" if "p99" in wanted else "<= 1.0"
            if out.get(base):
                print(f"{wanted} / {base} = {out.get(wanted, 0) / out[base]:.2f} (target {target})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
