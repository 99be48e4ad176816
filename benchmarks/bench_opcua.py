"""OPC UA converter benchmark: `zonegate run` polling simulated devices and serving their tags to a
subscribing client, against asyncua alone serving the same tags, in the same run.

Load: 5,000 tags (uint16 holding registers) on five devices at a 1 s scan and 1,000 tags on one device at
100 ms. Every register changes once per its tag's scan period, at a phase of its own, and holds the time
of its last change (milliseconds, modulo 65536); so every poll finds a new value (15,000 changes/s on
offer) and the client turns each notification into a device-change-to-client latency. The devices run in
a process of their own (a minimal Modbus/TCP server, FC 3), zonegate in another, the client here.

Reported: value changes/s delivered to the client, the poll cycle time per scan class against the scan
period (from zonegate's metrics), latency p50/p99 per scan class, zonegate's resident memory, and the CPU
seconds per second the server and the client used while measured (on a shared machine, what they got). The
comparison is an asyncua server (same security, same namespace and node ids) whose own loop writes each
value at its change time: no polling, so its latency is asyncua's publish path alone.

    python benchmarks/bench_opcua.py            # table
    python benchmarks/bench_opcua.py --json     # one JSON object
    python benchmarks/bench_opcua.py --quick    # a few seconds and fewer tags: checks the harness

Targets on the development machine: 10,000 changes/s delivered, p99 under one scan period + 50 ms, RSS
under 300 MB.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from zonegate.controlplane.pki import OPCUA_CLIENT_URI, DevPki, generate  # noqa: E402
from zonegate.convert.opcua_server import node_id  # noqa: E402

NAMESPACE = "urn:zonegate:devices"
PASSWORD = "bench-client-password"


@dataclass(frozen=True)
class Group:
    """Tags of one device: `count` registers from 0, all at one scan period."""

    device: str
    count: int
    period_ms: int

    @property
    def scan(self) -> str:
        return "fast" if self.period_ms < 1000 else "slow"

    def change_ms(self, index: int, now_ms: int) -> int:
        """When register `index` last changed: once per period, at a phase spread over the period."""
        phase = index * self.period_ms // self.count
        return now_ms - (now_ms - phase) % self.period_ms


def tag_name(device: str, index: int) -> str:
    """Tag names are unique across devices; the node id is `<device>/<tag name>`."""
    return f"{device}_{index:05d}"


def groups_for(slow_tags: int, fast_tags: int) -> list[Group]:
    per_device = 1000
    out = [Group(f"slow{i}", min(per_device, slow_tags - i * per_device), 1000)
           for i in range((slow_tags + per_device - 1) // per_device)]
    return out + [Group("fast0", fast_tags, 100)]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_kib(pid: int) -> tuple[int, int]:
    """VmRSS and VmHWM (peak) of a process, KiB."""
    values = {}
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith(("VmRSS:", "VmHWM:")):
                key, value = line.split(":", 1)
                values[key] = int(value.split()[0])
    return values.get("VmRSS", 0), values.get("VmHWM", 0)


# -- the devices (a process of their own) ------------------------------------------------------------------


async def serve_devices(spec: list[tuple[str, int, int, int]]) -> None:
    """One FC 3 Modbus/TCP server per (device, count, period_ms, port); other requests get exception 01."""

    class Device(asyncio.Protocol):
        def __init__(self, group: Group) -> None:
            self.group = group
            self.buffer = b""

        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.transport = transport  # type: ignore[assignment]

        def data_received(self, data: bytes) -> None:
            self.buffer += data
            while len(self.buffer) >= 7:
                length = int.from_bytes(self.buffer[4:6], "big")
                if len(self.buffer) < 6 + length:
                    return
                adu, self.buffer = self.buffer[: 6 + length], self.buffer[6 + length :]
                self.transport.write(self.answer(adu))  # type: ignore[attr-defined]

        def answer(self, adu: bytes) -> bytes:
            head, fc = adu[:7], adu[7]
            if fc != 3 or len(adu) != 12:
                return head[:4] + b"\x00\x03" + head[6:7] + bytes((fc | 0x80, 1))
            start, qty = int.from_bytes(adu[8:10], "big"), int.from_bytes(adu[10:12], "big")
            if start + qty > self.group.count:
                return head[:4] + b"\x00\x03" + head[6:7] + b"\x83\x02"
            now_ms = int(time.time() * 1000)
            change = self.group.change_ms
            data = b"".join((change(i, now_ms) & 0xFFFF).to_bytes(2, "big") for i in range(start, start + qty))
            return head[:4] + (3 + len(data)).to_bytes(2, "big") + head[6:7] + bytes((3, len(data))) + data

    loop = asyncio.get_running_loop()
    for device, count, period_ms, port in spec:
        group = Group(device, count, period_ms)
        await loop.create_server(lambda g=group: Device(g), "127.0.0.1", port)  # type: ignore[misc]
    print("devices ready", flush=True)
    await asyncio.Event().wait()


# -- asyncua alone (a process of its own) ------------------------------------------------------------------


async def serve_plain(port: int, pki_dir: Path, spec: list[tuple[str, int, int, int]]) -> None:
    """asyncua serving the same node ids, each value written by its own loop at its change time."""
    from asyncua import Server, ua

    pki = DevPki(pki_dir)
    server = Server()
    await server.init()
    server.set_endpoint(f"opc.tcp://127.0.0.1:{port}")
    await server.set_application_uri("urn:zonegate:opcua")
    await server.load_certificate(str(pki.cert("opcua-server")), format="pem")
    await server.load_private_key(str(pki.key("opcua-server")), format="pem")
    server.set_security_policy([ua.SecurityPolicyType.Basic256Sha256_SignAndEncrypt])
    ns = await server.register_namespace(NAMESPACE)
    groups = [Group(device, count, period) for device, count, period, _ in spec]
    ids: dict[str, list[ua.NodeId]] = {}
    for group in groups:
        folder = await server.nodes.objects.add_folder(node_id(group.device, ns), ua.QualifiedName(group.device, ns))
        ids[group.device] = []
        for i in range(group.count):
            name = tag_name(group.device, i)
            node = await folder.add_variable(node_id(f"{group.device}/{name}", ns), ua.QualifiedName(name, ns),
                                             0, varianttype=ua.VariantType.UInt16)
            ids[group.device].append(node.nodeid)
    async with server:
        print("plain ready", flush=True)
        # Per group: the next register due, and the start of the period it is due in.
        state = {g.device: [0, (int(time.time() * 1000) // g.period_ms) * g.period_ms] for g in groups}
        while True:
            now_ms = int(time.time() * 1000)
            written = 0
            for group in groups:
                cursor = state[group.device]
                while True:
                    index, cycle = cursor
                    due = cycle + index * group.period_ms // group.count
                    if due > now_ms:
                        break
                    if now_ms - due <= group.period_ms:  # a change more than a period late is skipped
                        await server.write_attribute_value(ids[group.device][index], ua.DataValue(
                            ua.Variant(due & 0xFFFF, ua.VariantType.UInt16)))
                        written += 1
                        if written % 500 == 0:
                            await asyncio.sleep(0)  # let the server answer its clients while catching up
                    cursor[0] = index + 1
                    if cursor[0] == group.count:
                        cursor[0], cursor[1] = 0, cycle + group.period_ms
            await asyncio.sleep(0.005)


# -- the subscribing client (this process) -----------------------------------------------------------------


class Counter:
    """Notifications in the measurement window, and their latencies per scan class."""

    def __init__(self) -> None:
        self.measuring = False
        self.count = 0
        self.latency: dict[str, list[int]] = {"fast": [], "slow": []}
        self.initial = 0

    def status_change_notification(self, status: Any) -> None:
        """The subscription's end (the client deletes it): nothing to count."""

    def datachange_notification(self, node: Any, value: Any, data: Any) -> None:
        now_ms = int(time.time() * 1000)
        if not isinstance(value, int):
            return
        if not self.measuring:
            self.initial += 1
            return
        self.count += 1
        scan = "fast" if str(node.nodeid.Identifier).startswith("fast") else "slow"
        self.latency[scan].append((now_ms - value) & 0xFFFF)


def percentile(values: list[int], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return float(ordered[min(len(ordered) - 1, int(q * len(ordered)))])


async def subscribe_and_measure(url: str, pki: DevPki, groups: list[Group], warmup: float, seconds: float,
                                publish_ms: int, server_pid: int) -> dict[str, Any]:
    from asyncua import Client, ua
    from asyncua.crypto.security_policies import SecurityPolicyBasic256Sha256
    from asyncua.crypto.uacrypto import CertProperties

    client = Client(url, timeout=30)
    client.application_uri = OPCUA_CLIENT_URI
    await client.set_security(SecurityPolicyBasic256Sha256, CertProperties(str(pki.cert("opcua-client")), "pem"),
                              CertProperties(str(pki.key("opcua-client")), "pem"))
    client.set_user("bench")
    client.set_password(PASSWORD)
    counter = Counter()
    total = sum(g.count for g in groups)
    async with client:
        ns = await client.get_namespace_index(NAMESPACE)
        subscription = await client.create_subscription(
            ua.CreateSubscriptionParameters(RequestedPublishingInterval=publish_ms, RequestedLifetimeCount=10000,
                                            RequestedMaxKeepAliveCount=100, MaxNotificationsPerPublish=0),
            counter)
        nodes = [client.get_node(node_id(f"{g.device}/{tag_name(g.device, i)}", ns))
                 for g in groups for i in range(g.count)]
        for start in range(0, len(nodes), 500):
            await subscription.subscribe_data_change(nodes[start : start + 500], sampling_interval=cast(Any, 0.0),
                                                      queuesize=1)
        deadline = time.monotonic() + max(warmup, 60.0)
        while counter.initial < total and time.monotonic() < deadline:  # every item has reported once
            await asyncio.sleep(0.1)
        await asyncio.sleep(warmup)
        counter.measuring = True
        started = time.monotonic()
        server_cpu, client_cpu = cpu_seconds(server_pid), cpu_seconds(os.getpid())
        await asyncio.sleep(seconds)
        counter.measuring = False
        elapsed = time.monotonic() - started
        server_cpu = (cpu_seconds(server_pid) - server_cpu) / elapsed
        client_cpu = (cpu_seconds(os.getpid()) - client_cpu) / elapsed
        await subscription.delete()
    out: dict[str, Any] = {"updates_per_s": round(counter.count / elapsed), "items": total,
                           "server_cpu_per_s": round(server_cpu, 2), "client_cpu_per_s": round(client_cpu, 2)}
    for scan, values in counter.latency.items():
        out[f"{scan}_p50_ms"] = percentile(values, 0.50)
        out[f"{scan}_p99_ms"] = percentile(values, 0.99)
    return out


# -- the run ------------------------------------------------------------------------------------------------


def policy_text(groups: list[Group], ports: dict[str, int], opcua_port: int, metrics_port: int) -> str:
    lines = ["version: 1", "zones:", "  cell-a: {subnet: 127.0.0.0/8}", "devices:"]
    for g in groups:
        lines.append(f"  {g.device}: {{zone: cell-a, modbus: {{host: 127.0.0.1, port: {ports[g.device]}, units: [1], "
                     "max_connections: 1, pipelining: true, timeout: 2s}}")
    lines += ["principals:", "  poller: {gateway: true}", "  client: {opcua_user: bench}", "rules:"]
    for g in groups:
        lines += [f"  - {{id: poll-{g.device}, principal: poller, device: {g.device}, "
                  f"allow: [{{functions: [read_holding_registers], holding: 0-{g.count - 1}}}]}}"]
    lines += [
        "opcua:",
        f"  bind: 127.0.0.1:{opcua_port}",
        "  poll_principal: poller",
        "  scan_classes: {fast: 100ms, slow: 1s}",
        "  default_scan: slow",
        "  security: [Basic256Sha256]",
        "  tls: {cert: opcua-server.crt, key: opcua-server.key, ca: ca.crt, crl: ca.crl}",
        "  users: opcua-users",
        f"metrics: {{bind: 127.0.0.1:{metrics_port}}}",
        "audit: {path: '-'}",
        "tags:",
    ]
    for g in groups:
        lines.append(f"  {g.device}:")
        lines += [f"    - {{name: {tag_name(g.device, i)}, table: holding, address: {i}, type: uint16, scan: {g.scan}}}"
                  for i in range(g.count)]
    return "\n".join(lines) + "\n"


class Child:
    """A child process; `wait_for` a line on its stdout or stderr (bounded)."""

    def __init__(self, argv: list[str]) -> None:
        self.process = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.lines: list[str] = []
        self.changed = threading.Condition()
        for stream in (self.process.stdout, self.process.stderr):
            threading.Thread(target=self._read, args=(stream,), daemon=True).start()

    def _read(self, stream: Any) -> None:
        for line in stream:
            with self.changed:
                self.lines.append(line)
                self.changed.notify_all()

    def wait_for(self, text: str, timeout: float = 120.0) -> None:
        with self.changed:
            ok = self.changed.wait_for(lambda: any(text in line for line in self.lines) or
                                       self.process.poll() is not None, timeout)
        if not ok or not any(text in line for line in self.lines):
            raise RuntimeError(f"no {text!r} from {self.process.args!r}: {''.join(self.lines[-20:])}")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)


def poll_cycles(metrics_port: int) -> dict[str, dict[str, float]]:
    """Mean and largest-bucket poll cycle time per scan class, from zonegate's metrics endpoint."""
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10) as response:
        page = response.read().decode()
    sums: dict[str, float] = {}
    counts: dict[str, float] = {}
    for line in page.splitlines():
        if not line.startswith("zonegate_opcua_poll_cycle_seconds_"):
            continue
        head, _, value = line.rpartition(" ")
        scan = head.split('scan="', 1)[1].split('"', 1)[0]
        if head.startswith("zonegate_opcua_poll_cycle_seconds_sum"):
            sums[scan] = sums.get(scan, 0.0) + float(value)
        elif head.startswith("zonegate_opcua_poll_cycle_seconds_count"):
            counts[scan] = counts.get(scan, 0.0) + float(value)
    return {scan: {"cycles": counts[scan], "mean_ms": 1000 * sums[scan] / counts[scan]} for scan in counts if counts[scan]}


def run_bench(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    from zonegate.convert.opcua_users import hash_password

    groups = groups_for(args.slow_tags, args.fast_tags)
    pki = generate(work / "pki")
    users = pki.directory / "opcua-users"
    users.touch(mode=0o600)
    users.write_text(f"bench:{hash_password(PASSWORD, log2_n=10)}\n")
    ports = {g.device: free_port() for g in groups}
    spec = json.dumps([(g.device, g.count, g.period_ms, ports[g.device]) for g in groups])
    opcua_port, metrics_port, plain_port = free_port(), free_port(), free_port()
    policy = work / "policy.yaml"
    policy.write_text(policy_text(groups, ports, opcua_port, metrics_port))
    result: dict[str, Any] = {
        "tags": {"slow_1s": args.slow_tags, "fast_100ms": args.fast_tags},
        "offered_changes_per_s": round(sum(g.count * 1000 / g.period_ms for g in groups)),
        "load_average": os.getloadavg(), "cpus": os.cpu_count(), "seconds": args.seconds,
    }
    devices = Child([sys.executable, __file__, "--serve-devices", spec])
    try:
        devices.wait_for("devices ready")
        zonegate = Child([sys.executable, "-m", "zonegate.cli", "run", "-c", str(policy), "--pki", str(pki.directory),
                          "--no-firewall", "--log-level", "warning"])
        try:
            deadline = time.monotonic() + 120
            while True:  # ready once the OPC UA port answers (warning level logs no "ready")
                try:
                    socket.create_connection(("127.0.0.1", opcua_port), timeout=1).close()
                    break
                except OSError:
                    if zonegate.process.poll() is not None or time.monotonic() > deadline:
                        raise RuntimeError("zonegate did not start: " + "".join(zonegate.lines[-20:])) from None
                    time.sleep(0.2)
            measured = asyncio.run(subscribe_and_measure(f"opc.tcp://127.0.0.1:{opcua_port}", pki, groups,
                                                         args.warmup, args.seconds, args.publish_ms,
                                                         zonegate.process.pid))
            rss, peak = rss_kib(zonegate.process.pid)
            result["zonegate"] = {**measured, "rss_mb": round(rss / 1024, 1), "peak_rss_mb": round(peak / 1024, 1),
                                  "poll_cycles": poll_cycles(metrics_port)}
        finally:
            zonegate.stop()
        plain = Child([sys.executable, __file__, "--serve-plain", str(plain_port), str(pki.directory), spec])
        try:
            plain.wait_for("plain ready")
            measured = asyncio.run(subscribe_and_measure(f"opc.tcp://127.0.0.1:{plain_port}", pki, groups,
                                                         args.warmup, args.seconds, args.publish_ms,
                                                         plain.process.pid))
            rss, peak = rss_kib(plain.process.pid)
            result["asyncua_alone"] = {**measured, "rss_mb": round(rss / 1024, 1), "peak_rss_mb": round(peak / 1024, 1)}
        finally:
            plain.stop()
    finally:
        devices.stop()
    result["load_average_after"] = os.getloadavg()
    return result


def print_table(result: dict[str, Any]) -> None:
    print(f"tags: {result['tags']['slow_1s']} at 1 s, {result['tags']['fast_100ms']} at 100 ms; "
          f"{result['offered_changes_per_s']} value changes/s offered; {result['seconds']} s measured; "
          f"load average {result['load_average'][0]:.2f} on {result['cpus']} CPUs")
    print(f"{'':16}{'updates/s':>10}{'fast p50':>10}{'fast p99':>10}{'slow p50':>10}{'slow p99':>10}{'RSS MB':>8}"
          f"{'CPU srv':>9}{'CPU cli':>9}")
    for name in ("zonegate", "asyncua_alone"):
        r = result.get(name)
        if r is None:
            continue

        def ms(value: float | None) -> str:
            return "-" if value is None else f"{value:.0f}"

        print(f"{name:16}{r['updates_per_s']:>10}{ms(r['fast_p50_ms']):>10}{ms(r['fast_p99_ms']):>10}"
              f"{ms(r['slow_p50_ms']):>10}{ms(r['slow_p99_ms']):>10}{r['rss_mb']:>8}"
              f"{r['server_cpu_per_s']:>9}{r['client_cpu_per_s']:>9}")
    for scan, cycle in sorted(result.get("zonegate", {}).get("poll_cycles", {}).items()):
        period = 100 if scan == "fast" else 1000
        print(f"zonegate poll cycle, scan {scan} ({period} ms): mean {cycle['mean_ms']:.1f} ms "
              f"({100 * cycle['mean_ms'] / period:.0f}% of the period) over {cycle['cycles']:.0f} cycles")
    z = result.get("zonegate", {})
    verdicts = {
        "10,000 changes/s": z.get("updates_per_s", 0) >= 10000,
        "fast p99 < 150 ms": (z.get("fast_p99_ms") or 1e9) < 150,
        "slow p99 < 1050 ms": (z.get("slow_p99_ms") or 1e9) < 1050,
        "RSS < 300 MB": z.get("rss_mb", 1e9) < 300,
    }
    print("targets: " + ", ".join(f"{k} {'met' if v else 'MISSED'}" for k, v in verdicts.items()))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--quick", action="store_true", help="500 + 100 tags, 3 s: checks the harness, not speed")
    parser.add_argument("--seconds", type=float, default=15.0, help="measurement window per system")
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds after the first value of every item")
    parser.add_argument("--slow-tags", type=int, default=5000)
    parser.add_argument("--fast-tags", type=int, default=1000)
    parser.add_argument("--publish-ms", type=int, default=20, help="the subscription's publishing interval")
    parser.add_argument("--serve-devices", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--serve-plain", nargs=3, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_devices is not None:
        asyncio.run(serve_devices(json.loads(args.serve_devices)))
        return 0
    if args.serve_plain is not None:
        port, pki_dir, spec = args.serve_plain
        asyncio.run(serve_plain(int(port), Path(pki_dir), json.loads(spec)))
        return 0
    import logging

    logging.basicConfig(level=logging.ERROR)  # asyncua's client warns about the run's development certificates
    logging.getLogger("asyncua").setLevel(logging.CRITICAL)
    if args.quick:
        args.slow_tags, args.fast_tags, args.seconds, args.warmup = 500, 100, 3.0, 1.0
    with tempfile.TemporaryDirectory(prefix="zonegate-bench-opcua-") as work:
        result = run_bench(args, Path(work))
    if args.json:
        print(json.dumps(result))
    else:
        print_table(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
