"""OPC UA converter benchmark: `zonegate run` polling simulated devices and serving their tags to a
subscribing client, against asyncua alone serving the same tags, in the same run.

Load: 5,000 tags (uint16 holding registers) on five devices at a 1 s scan and 1,000 tags on one device at
100 ms. Every register changes once per its tag's scan period, at a phase of its own (scattered over the
addresses), and holds the time of its last change (milliseconds, modulo 65536); so every poll finds a new
value (15,000 changes/s on offer) and the client turns each notification into a device-change-to-client
latency. The devices run in a process of their own (a minimal Modbus/TCP server, FC 3), zonegate in
another, the client here.

Reported: value changes/s delivered to the client, the poll cycle time per scan class against the scan
period (from zonegate's metrics), latency p50/p99 per scan class, zonegate's resident memory, and the CPU
seconds per second the server and the client used while measured (on a shared machine, what they got). The
comparison is an asyncua server (same security, same namespace and node ids) whose own loop writes each
value at its change time: no polling, so its latency is asyncua's publish path alone.

The client is asyncua's, with one subscription (publishing interval `--publish-ms`, 20 ms) over
Basic256Sha256 SignAndEncrypt, set up as the latency target assumes (docs/opcua.md, "Speed"): three
PublishRequests queued and its collector tuned as zonegate tunes its own (a stock client's full
collections, up to 0.2 s each a dozen times per 10 s here, would be measured as the server's latency).
`--publish-requests 1 --client-gc stock` runs asyncua's client as shipped. Both servers are always
measured with the same client.

`--stages` times every value at each stage on its way (poll reply, address space, PublishResponse built
and sent, decoded by the client, handler) with probes in both servers and the client, plus their event-loop
lag and garbage-collector pauses; the probes cost some CPU, so compare stage runs with stage runs.

    python benchmarks/bench_opcua.py            # table
    python benchmarks/bench_opcua.py --json     # one JSON object
    python benchmarks/bench_opcua.py --quick    # a few seconds and fewer tags: checks the harness
    python benchmarks/bench_opcua.py --stages   # where the time goes
    python benchmarks/bench_opcua.py --publish-requests 1 --client-gc stock   # asyncua's client as shipped

Targets on the development machine: 10,000 changes/s delivered, p99 under one scan period + 50 ms, RSS
under 300 MB.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from zonegate.controlplane.pki import OPCUA_CLIENT_URI, DevPki, generate  # noqa: E402
from zonegate.convert.opcua_server import node_id  # noqa: E402
from zonegate.demo.stack import free_port  # noqa: E402

NAMESPACE = "urn:zonegate:devices"
# The client's youngest-generation threshold with --client-gc tuned: zonegate's own (opcua_server's
# YOUNG_COLLECTION_THRESHOLD), written out so the benchmark also runs against trees without it.
CLIENT_YOUNG_THRESHOLD = 10_000
PHASE_STRIDE = 7919  # a prime: coprime with any register count below it, so phases stay a permutation
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

    def phase_ms(self, index: int) -> int:
        """Where in the period register `index` changes. Phases cover the period evenly but are scattered
        over the addresses (a prime stride), as a process's values do not change in address order: were
        they in address order, any schedule of reads by address range would see waits that depend on
        how its reads happen to line up with the phases, not a wait spread over the whole period."""
        return (index * PHASE_STRIDE) % self.count * self.period_ms // self.count

    def change_ms(self, index: int, now_ms: int) -> int:
        """When register `index` last changed: once per period, at its phase."""
        return now_ms - (now_ms - self.phase_ms(index)) % self.period_ms


def tag_name(device: str, index: int) -> str:
    """Tag names are unique across devices; the node id is `<device>/<tag name>`."""
    return f"{device}_{index:05d}"


def groups_for(slow_tags: int, fast_tags: int) -> list[Group]:
    per_device = 1000
    out = [Group(f"slow{i}", min(per_device, slow_tags - i * per_device), 1000)
           for i in range((slow_tags + per_device - 1) // per_device)]
    return out + [Group("fast0", fast_tags, 100)]


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


# -- stage probes (--stages) --------------------------------------------------------------------------------


# Where a value is on its way from the device to the client, as milliseconds since the device changed it.
SERVER_STAGES = ("read", "written", "publish", "sent")
CLIENT_STAGES = ("decoded", "handler")
STAGE_HELP = {
    "read": "poll reply in zonegate (the device stamps its answer)",
    "written": "written into the address space (monitored item queued)",
    "publish": "PublishResponse built (publishing interval tick, a PublishRequest at hand)",
    "sent": "PublishResponse encoded, signed, encrypted and handed to the transport",
    "decoded": "client: PublishResponse decrypted and decoded, subscription callback entered",
    "handler": "client: datachange_notification called (the benchmark's latency)",
}


class Probes:
    """Benchmark-only probes: per value, the time it reached each stage since its device change, by scan
    class; per process, event-loop lag and garbage-collector pauses. Nothing is recorded outside the
    measurement window, which the benchmark opens and closes with SIGUSR2 and SIGUSR1 (the second also
    writes the samples to `path`)."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = path
        self.recording = False
        self.fast_handles: set[int] = set()  # server side: client handles of the 100 ms tags' items
        self._gc_started = 0.0
        self._clear()

    def _clear(self) -> None:
        self.latency: dict[str, dict[str, list[int]]] = {}
        self.loop_lag_ms: list[float] = []
        self.gc_ms: dict[str, list[float]] = {}
        self.send_ms: list[float] = []
        self.items_per_response: list[int] = []
        self.waited_for_request = 0

    def add(self, stage: str, scan: str, change_ms: int, now_ms: int | None = None) -> None:
        if now_ms is None:
            now_ms = int(time.time() * 1000)
        self.latency.setdefault(stage, {"fast": [], "slow": []})[scan].append((now_ms - change_ms) & 0xFFFF)

    def _on_gc(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._gc_started = time.perf_counter()
        elif self.recording:
            paused = 1000 * (time.perf_counter() - self._gc_started)
            self.gc_ms.setdefault(f"gen{info['generation']}", []).append(paused)

    async def _lag(self) -> None:
        """How late a 5 ms timer fires: the longest stretch the loop spends on one callback shows here."""
        loop = asyncio.get_running_loop()
        while True:
            started = loop.time()
            await asyncio.sleep(0.005)
            if self.recording:
                self.loop_lag_ms.append(1000 * (loop.time() - started - 0.005))

    def start_in_loop(self, window_signals: bool = True) -> None:
        """Loop lag and GC pauses (and, in a server, the window signals); call from the running loop."""
        loop = asyncio.get_running_loop()
        self._lag_task = loop.create_task(self._lag())
        if self._on_gc not in gc.callbacks:
            gc.callbacks.append(self._on_gc)
        if window_signals:
            loop.add_signal_handler(signal.SIGUSR2, self.open_window)
            loop.add_signal_handler(signal.SIGUSR1, self.close_window)

    def open_window(self) -> None:
        self._clear()
        self.recording = True

    def close_window(self) -> None:
        self.recording = False
        if self.path is not None:
            tmp = self.path.with_suffix(".tmp")
            tmp.write_text(json.dumps(self.result()))
            tmp.replace(self.path)

    def result(self) -> dict[str, Any]:
        return {"latency": self.latency, "loop_lag_ms": self.loop_lag_ms, "gc_ms": self.gc_ms,
                "send_ms": self.send_ms, "items_per_response": self.items_per_response,
                "waited_for_request": self.waited_for_request}

    def install_server(self) -> None:
        """Probes in asyncua's server: values written into the address space, publish responses built and sent."""
        from asyncua.server.internal_server import InternalServer
        from asyncua.server.monitored_item_service import MonitoredItemService
        from asyncua.server.uaprocessor import UaProcessor

        probes = self
        write = InternalServer.write_attribute_value

        async def write_attribute_value(self: Any, nodeid: Any, datavalue: Any, *args: Any) -> Any:
            value = datavalue.Value.Value if datavalue.Value is not None else None
            if probes.recording and isinstance(value, int) and isinstance(nodeid.Identifier, str):
                probes.add("written", "fast" if nodeid.Identifier.startswith("fast") else "slow", value)
            return await write(self, nodeid, datavalue, *args)

        common = MonitoredItemService._make_monitored_item_common

        def make_monitored_item(self: Any, params: Any) -> Any:
            identifier = params.ItemToMonitor.NodeId.Identifier
            if isinstance(identifier, str) and identifier.startswith("fast"):
                probes.fast_handles.add(params.RequestedParameters.ClientHandle)
            return common(self, params)

        forward = UaProcessor.forward_publish_response

        async def forward_publish_response(self: Any, result: Any, requestdata: Any) -> Any:
            if not probes.recording:
                return await forward(self, result, requestdata)
            now_ms = int(time.time() * 1000)
            items = probes.notified(result.NotificationMessage.NotificationData)
            for handle, value in items:
                probes.add("publish", "fast" if handle in probes.fast_handles else "slow", value, now_ms)
            started = time.perf_counter()
            out = await forward(self, result, requestdata)
            probes.send_ms.append(1000 * (time.perf_counter() - started))
            probes.items_per_response.append(len(items))
            now_ms = int(time.time() * 1000)
            for handle, value in items:
                probes.add("sent", "fast" if handle in probes.fast_handles else "slow", value, now_ms)
            return out

        get_request = UaProcessor.get_publish_request

        def get_publish_request(self: Any, subscription_id: Any) -> Any:
            request = get_request(self, subscription_id)
            if request is None and probes.recording:
                probes.waited_for_request += 1
            return request

        InternalServer.write_attribute_value = write_attribute_value  # type: ignore[method-assign,assignment]
        MonitoredItemService._make_monitored_item_common = make_monitored_item  # type: ignore[method-assign]
        UaProcessor.forward_publish_response = forward_publish_response  # type: ignore[method-assign]
        UaProcessor.get_publish_request = get_publish_request  # type: ignore[method-assign]

    @staticmethod
    def notified(data: Any) -> list[tuple[int, int]]:
        """(client handle, value) of every data change notification carrying a benchmark value."""
        from asyncua import ua

        out = []
        for notification in data or ():
            if isinstance(notification, ua.DataChangeNotification):
                for item in notification.MonitoredItems:
                    variant = item.Value.Value if item.Value is not None else None
                    if variant is not None and isinstance(variant.Value, int):
                        out.append((item.ClientHandle, variant.Value))
        return out

    def install_converter(self) -> None:
        """Probes in zonegate's converter: the poll reply (its time is the value's `when`); and the loop probes
        once the converter runs."""
        from zonegate.convert.opcua_server import OpcuaConverter

        probes = self
        publish = OpcuaConverter._publish
        start = OpcuaConverter.start

        async def _publish(self: Any, tag: Any, value: object, status: int, when: float) -> None:
            if probes.recording and isinstance(value, int):
                probes.add("read", "fast" if tag.device.startswith("fast") else "slow", value, int(when * 1000))
            await publish(self, tag, value, status, when)

        async def started(self: Any) -> None:
            await start(self)
            probes.start_in_loop()

        OpcuaConverter._publish = _publish  # type: ignore[method-assign]
        OpcuaConverter.start = started  # type: ignore[method-assign]

    def install_client(self) -> None:
        """The client's probe: a PublishResponse decoded and handed to the subscription."""
        from asyncua.common.subscription import Subscription

        probes = self
        callback = Subscription.publish_callback

        async def publish_callback(self: Any, publish_result: Any) -> None:
            if probes.recording:
                now_ms = int(time.time() * 1000)
                for handle, value in probes.notified(publish_result.NotificationMessage.NotificationData):
                    data = self._monitored_items.get(handle)
                    fast = data is not None and str(data.node.nodeid.Identifier).startswith("fast")
                    probes.add("decoded", "fast" if fast else "slow", value, now_ms)
            await callback(self, publish_result)

        Subscription.publish_callback = publish_callback  # type: ignore[method-assign]


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


async def serve_plain(port: int, pki_dir: Path, spec: list[tuple[str, int, int, int]],
                      probes: Probes | None = None) -> None:
    """asyncua serving the same node ids, each value written by its own loop at its change time."""
    from asyncua import Server, ua

    if probes is not None:
        probes.install_server()
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
        if probes is not None:
            probes.start_in_loop()
        print("plain ready", flush=True)
        # Per group: registers in the order they change, the next one due, and the start of its period.
        order = {g.device: sorted(range(g.count), key=g.phase_ms) for g in groups}
        state = {g.device: [0, (int(time.time() * 1000) // g.period_ms) * g.period_ms] for g in groups}
        while True:
            now_ms = int(time.time() * 1000)
            written = 0
            for group in groups:
                cursor = state[group.device]
                while True:
                    position, cycle = cursor
                    index = order[group.device][position]
                    due = cycle + group.phase_ms(index)
                    if due > now_ms:
                        break
                    if now_ms - due <= group.period_ms:  # a change more than a period late is skipped
                        await server.write_attribute_value(ids[group.device][index], ua.DataValue(
                            ua.Variant(due & 0xFFFF, ua.VariantType.UInt16)))
                        written += 1
                        if written % 500 == 0:
                            await asyncio.sleep(0)  # let the server answer its clients while catching up
                    cursor[0] = position + 1
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


def percentile(values: Sequence[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return float(ordered[min(len(ordered) - 1, int(q * len(ordered)))])


@dataclass(frozen=True)
class ClientSettings:
    """What the subscriber asks for and how it runs; the same for zonegate and asyncua alone."""

    publish_ms: int  # the subscription's publishing interval
    publish_requests: int  # PublishRequests kept outstanding
    tune_gc: bool  # the client's collector tuned as zonegate tunes its own (see --client-gc)


async def subscribe_and_measure(url: str, pki: DevPki, groups: list[Group], warmup: float, seconds: float,
                                settings: ClientSettings, server_pid: int, probes: Probes | None = None,
                                server_probes: Path | None = None) -> dict[str, Any]:
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
            ua.CreateSubscriptionParameters(RequestedPublishingInterval=settings.publish_ms,
                                            RequestedLifetimeCount=10000,
                                            RequestedMaxKeepAliveCount=100, MaxNotificationsPerPublish=0),
            counter)
        nodes = [client.get_node(node_id(f"{g.device}/{tag_name(g.device, i)}", ns))
                 for g in groups for i in range(g.count)]
        for start in range(0, len(nodes), 500):
            await subscription.subscribe_data_change(nodes[start : start + 500], sampling_interval=cast(Any, 0.0),
                                                      queuesize=1)
        # asyncua's client keeps one PublishRequest outstanding; the server then holds every change made
        # while a response travels and is decoded until the next request arrives. OPC UA clients keep
        # several queued (Part 4, 5.13.5) so the server always has one at hand.
        session = client.uaclient.session
        extra = [asyncio.create_task(session._publish_loop()) for _ in range(settings.publish_requests - 1)]
        deadline = time.monotonic() + max(warmup, 60.0)
        while counter.initial < total and time.monotonic() < deadline:  # every item has reported once
            await asyncio.sleep(0.1)
        if settings.tune_gc:  # as OpcuaConverter._tune_collector, once the client's nodes and items exist
            thresholds = gc.get_threshold()
            gc.freeze()
            gc.set_threshold(CLIENT_YOUNG_THRESHOLD, *thresholds[1:])
        await asyncio.sleep(warmup)
        if probes is not None:
            probes.start_in_loop(window_signals=False)
            os.kill(server_pid, signal.SIGUSR2)
            probes.open_window()
        counter.measuring = True
        started = time.monotonic()
        server_cpu, client_cpu = cpu_seconds(server_pid), cpu_seconds(os.getpid())
        await asyncio.sleep(seconds)
        counter.measuring = False
        elapsed = time.monotonic() - started
        if probes is not None:
            probes.close_window()
            os.kill(server_pid, signal.SIGUSR1)
        server_cpu = (cpu_seconds(server_pid) - server_cpu) / elapsed
        client_cpu = (cpu_seconds(os.getpid()) - client_cpu) / elapsed
        await subscription.delete()
        for task in extra:
            task.cancel()
        await asyncio.gather(*extra, return_exceptions=True)
    if settings.tune_gc:
        gc.unfreeze()
        gc.set_threshold(*thresholds)
    out: dict[str, Any] = {"updates_per_s": round(counter.count / elapsed), "items": total,
                           "server_cpu_per_s": round(server_cpu, 2), "client_cpu_per_s": round(client_cpu, 2)}
    for scan, values in counter.latency.items():
        out[f"{scan}_p50_ms"] = percentile(values, 0.50)
        out[f"{scan}_p99_ms"] = percentile(values, 0.99)
    if probes is not None and server_probes is not None:
        deadline = time.monotonic() + 30
        while not server_probes.exists() and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        server = json.loads(server_probes.read_text()) if server_probes.exists() else {}
        out["stages"] = stage_summary(server, probes.result(), counter.latency)
    return out


def distribution(values: Sequence[float]) -> dict[str, Any]:
    return {"n": len(values), "p50": percentile(values, 0.5), "p99": percentile(values, 0.99),
            "max": max(values) if values else None}


def stage_summary(server: dict[str, Any], client: dict[str, Any], handler: dict[str, list[int]]) -> dict[str, Any]:
    """Per stage and scan class, p50/p99 of the time since the device change; then what may stall a stage."""
    latency = {**server.get("latency", {}), **client.get("latency", {}), "handler": handler}
    stages = {}
    for stage in (*SERVER_STAGES, *CLIENT_STAGES):
        if stage in latency:
            stages[stage] = {f"{scan}_{q}": percentile(latency[stage][scan], p)
                             for scan in ("fast", "slow") for q, p in (("p50", 0.5), ("p99", 0.99))}
    out: dict[str, Any] = {"since_change_ms": stages}
    for side, probes in (("server", server), ("client", client)):
        out[side] = {"loop_lag_ms": distribution(probes.get("loop_lag_ms", [])),
                     "gc_ms": {gen: {"n": len(v), "total": round(sum(v), 1), "max": round(max(v), 1)}
                               for gen, v in sorted(probes.get("gc_ms", {}).items())}}
    items = server.get("items_per_response", [])
    out["server"].update({
        "responses": len(items), "items_per_response": distribution(items),
        "send_ms": distribution(server.get("send_ms", [])),
        "waited_for_request": server.get("waited_for_request", 0)})
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
    client = ClientSettings(args.publish_ms, args.publish_requests, args.client_gc == "tuned")
    result: dict[str, Any] = {
        "tags": {"slow_1s": args.slow_tags, "fast_100ms": args.fast_tags},
        "client": {"publish_ms": client.publish_ms, "publish_requests": client.publish_requests,
                   "gc": args.client_gc},
        "offered_changes_per_s": round(sum(g.count * 1000 / g.period_ms for g in groups)),
        "load_average": os.getloadavg(), "cpus": os.cpu_count(), "seconds": args.seconds,
    }
    devices = Child([sys.executable, __file__, "--serve-devices", spec])
    try:
        devices.wait_for("devices ready")
        run = ["run", "-c", str(policy), "--pki", str(pki.directory), "--no-firewall", "--log-level", "warning"]
        probes = Probes() if args.stages else None
        if probes is not None:
            probes.install_client()
        zonegate_probes = work / "zonegate-probes.json"
        zonegate = Child([sys.executable, __file__, "--zonegate-probes", str(zonegate_probes), *run] if args.stages
                         else [sys.executable, "-m", "zonegate.cli", *run])
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
                                                         args.warmup, args.seconds, client,
                                                         zonegate.process.pid, probes, zonegate_probes))
            rss, peak = rss_kib(zonegate.process.pid)
            result["zonegate"] = {**measured, "rss_mb": round(rss / 1024, 1), "peak_rss_mb": round(peak / 1024, 1),
                                  "poll_cycles": poll_cycles(metrics_port)}
        finally:
            zonegate.stop()
        plain_probes = work / "plain-probes.json"
        plain = Child([sys.executable, __file__, "--serve-plain", str(plain_port), str(pki.directory), spec,
                       *(["--probes", str(plain_probes)] if args.stages else [])])
        try:
            plain.wait_for("plain ready")
            measured = asyncio.run(subscribe_and_measure(f"opc.tcp://127.0.0.1:{plain_port}", pki, groups,
                                                         args.warmup, args.seconds, client,
                                                         plain.process.pid, probes, plain_probes))
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
    client = result["client"]
    print(f"client (both servers): publishing interval {client['publish_ms']} ms, {client['publish_requests']} "
          f"PublishRequests outstanding, collector {client['gc']}")
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
    for name in ("zonegate", "asyncua_alone"):
        stages = result.get(name, {}).get("stages")
        if stages:
            print_stages(name, stages)


def print_stages(name: str, stages: dict[str, Any]) -> None:
    def ms(value: float | None) -> str:
        return "-" if value is None else f"{value:.0f}"

    print(f"\n{name}: ms since the device change, by stage")
    print(f"  {'stage':10}{'fast p50':>10}{'fast p99':>10}{'slow p50':>10}{'slow p99':>10}  where")
    for stage, q in stages["since_change_ms"].items():
        print(f"  {stage:10}{ms(q['fast_p50']):>10}{ms(q['fast_p99']):>10}{ms(q['slow_p50']):>10}"
              f"{ms(q['slow_p99']):>10}  {STAGE_HELP[stage]}")
    for side in ("server", "client"):
        info = stages[side]
        lag = info["loop_lag_ms"]
        gcs = ", ".join(f"{gen} {g['n']}x total {g['total']} max {g['max']} ms" for gen, g in info["gc_ms"].items())
        print(f"  {side}: loop lag p50 {ms(lag['p50'])} p99 {ms(lag['p99'])} max {ms(lag['max'])} ms; "
              f"GC {gcs or 'none'}")
    server = stages["server"]
    send = {q: server["send_ms"][q] or 0.0 for q in ("p50", "p99", "max")}
    print(f"  server: {server['responses']} publish responses, items per response p50 "
          f"{ms(server['items_per_response']['p50'])} max {ms(server['items_per_response']['max'])}; "
          f"send (encode, sign, encrypt) p50 {send['p50']:.1f} p99 {send['p99']:.1f} max {send['max']:.1f} ms; "
          f"{server['waited_for_request']} ticks waited for a PublishRequest")


def main() -> int:
    if sys.argv[1:2] == ["--zonegate-probes"]:  # `zonegate run` with the stage probes in its process
        from zonegate.commands.run import GLIBC_TUNABLES

        if "GLIBC_TUNABLES" not in os.environ:  # as `zonegate run` does: malloc reads them at process start
            os.execve(sys.executable, [sys.executable, *sys.argv], dict(os.environ, GLIBC_TUNABLES=GLIBC_TUNABLES))
        probes = Probes(Path(sys.argv[2]))
        probes.install_server()
        probes.install_converter()
        from zonegate.cli import main as zonegate_main

        return zonegate_main(sys.argv[3:])
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--quick", action="store_true", help="500 + 100 tags, 3 s: checks the harness, not speed")
    parser.add_argument("--seconds", type=float, default=15.0, help="measurement window per system")
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds after the first value of every item")
    parser.add_argument("--slow-tags", type=int, default=5000)
    parser.add_argument("--fast-tags", type=int, default=1000)
    parser.add_argument("--publish-ms", type=int, default=20, help="the subscription's publishing interval")
    parser.add_argument("--publish-requests", type=int, default=3,
                        help="PublishRequests the client keeps outstanding (asyncua's client alone keeps 1)")
    parser.add_argument("--client-gc", choices=("stock", "tuned"), default="tuned",
                        help="tuned: once subscribed, the client freezes its heap and collects its youngest "
                             "generation every 10,000 net allocations, as zonegate does")
    parser.add_argument("--stages", action="store_true",
                        help="probe each stage from device change to client notification (costs some CPU)")
    parser.add_argument("--serve-devices", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--probes", type=Path, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--serve-plain", nargs=3, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_devices is not None:
        asyncio.run(serve_devices(json.loads(args.serve_devices)))
        return 0
    if args.serve_plain is not None:
        port, pki_dir, spec = args.serve_plain
        asyncio.run(serve_plain(int(port), Path(pki_dir), json.loads(spec),
                                Probes(args.probes) if args.probes else None))
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
