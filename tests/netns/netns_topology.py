"""Test rig for the nftables stage: three network namespaces wired as a zone boundary.

```
  l3 (10.3.0.0/24)                 gw (the box)                      cell (192.168.10.0/24)
  10.3.0.10 scada       zl<id> ==== zgl<id> 10.3.0.1                  192.168.10.11 PLC
  10.3.0.11 scraper                 zgc<id> 192.168.10.1 ==== zc<id>  192.168.10.50 in-zone master
  10.3.0.12 flooder                 ip_forward=1
```

With `ipv6=True` every host also gets an address in fd03::/64 (l3) or fd10::/64 (cell), the box
fd03::1 and fd10::1, and IPv6 forwarding; the veths skip duplicate address detection so every address,
link-local ones included, is usable at once.

Every name carries a random suffix so concurrent runs never meet, and `Topology.close()` deletes the
namespaces (which takes their veths with them) whatever state setup reached. Each namespace gets one
thread that has entered it and runs an asyncio loop: sockets made on that thread live in that
namespace, so clients, servers and libnftables calls run in-process against a real kernel.
"""

from __future__ import annotations

import asyncio
import ctypes
import json
import os
import secrets
import shutil
import subprocess
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")
CLONE_NEWNET = 0x40000000
STEP_TIMEOUT = 10.0

L3_GW, SCADA, SCRAPER, FLOODER = "10.3.0.1", "10.3.0.10", "10.3.0.11", "10.3.0.12"
CELL_GW, PLC, MASTER = "192.168.10.1", "192.168.10.11", "192.168.10.50"
L3_GW6, SCADA6, SCRAPER6, FLOODER6 = "fd03::1", "fd03::10", "fd03::11", "fd03::12"
CELL_GW6, PLC6, MASTER6 = "fd10::1", "fd10::11", "fd10::50"


def audit_records(path: Path, until: Callable[[list[dict[str, Any]]], bool],
                  timeout: float = STEP_TIMEOUT) -> list[dict[str, Any]]:
    """The audit log's records once `until` holds of them, or as they stand at the deadline (the caller's
    assert then shows what was missing). The box writes a record after it has answered the client (the Rust
    relay hands it to the control plane), so a test that reads right after its answer must wait for it."""
    deadline = time.monotonic() + timeout
    while True:
        records = [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
        if until(records) or time.monotonic() > deadline:
            return records
        time.sleep(0.01)


def netns_available() -> bool:
    """Root, `ip`, and a kernel that lets us make a namespace."""
    return os.geteuid() == 0 and shutil.which("ip") is not None and os.path.isdir("/proc/self/ns")


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=STEP_TIMEOUT)


class NetnsLoop:
    """An asyncio loop on a thread that lives in one network namespace."""

    def __init__(self, netns: str) -> None:
        self.netns = netns
        self.loop = asyncio.new_event_loop()
        self._entered = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._main, name=f"netns-{netns}", daemon=True)
        self._thread.start()
        if not self._entered.wait(STEP_TIMEOUT):
            raise TimeoutError(f"thread for {netns} did not start")
        if self._error is not None:
            raise self._error

    def _main(self) -> None:
        try:
            enter_netns(self.netns)
        except BaseException as exc:  # reported to the constructor, which raises it
            self._error = exc
            self._entered.set()
            return
        self._entered.set()
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()
        pending = asyncio.all_tasks(self.loop)
        for task in pending:
            task.cancel()
        self.loop.run_until_complete(asyncio.wait_for(asyncio.gather(*pending, return_exceptions=True), 5))
        self.loop.close()

    def run(self, coro: Awaitable[T], timeout: float = STEP_TIMEOUT) -> T:
        """Run `coro` in the namespace and wait for it, at most `timeout` seconds."""
        return asyncio.run_coroutine_threadsafe(_bounded(coro, timeout), self.loop).result(timeout + 1)

    def call(self, fn: Callable[..., T], *args: Any) -> T:
        """Call a blocking function (libnftables) on the namespace's thread."""
        async def call() -> T:
            return fn(*args)
        return self.run(call())

    def close(self) -> None:
        """Stop the loop; its thread cancels what is still running and closes every socket it made."""
        if self._thread.is_alive():
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(STEP_TIMEOUT)


async def _bounded(coro: Awaitable[T], timeout: float) -> T:
    return await asyncio.wait_for(coro, timeout)


def enter_netns(name: str) -> None:
    """Move the calling thread (only it) into network namespace `name`."""
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(f"/run/netns/{name}", os.O_RDONLY)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns({name}): {os.strerror(err)}")
    finally:
        os.close(fd)


@dataclass
class Topology:
    suffix: str = field(default_factory=lambda: secrets.token_hex(3))
    made: list[str] = field(default_factory=list)
    loops: dict[str, NetnsLoop] = field(default_factory=dict)
    plc: Plc | None = None
    ipv6: bool = False

    @property
    def l3_ns(self) -> str:
        return f"zg-l3-{self.suffix}"

    @property
    def gw_ns(self) -> str:
        return f"zg-gw-{self.suffix}"

    @property
    def cell_ns(self) -> str:
        return f"zg-cell-{self.suffix}"

    @property
    def gw_l3_if(self) -> str:
        return f"zgl{self.suffix}"

    @property
    def gw_cell_if(self) -> str:
        return f"zgc{self.suffix}"

    def build(self) -> None:
        s = self.suffix
        for ns in (self.l3_ns, self.gw_ns, self.cell_ns):
            _ip("netns", "add", ns)
            self.made.append(ns)
            _ip("-n", ns, "link", "set", "lo", "up")
        _ip("link", "add", f"zl{s}", "netns", self.l3_ns, "type", "veth", "peer", "name", self.gw_l3_if,
            "netns", self.gw_ns)
        _ip("link", "add", f"zc{s}", "netns", self.cell_ns, "type", "veth", "peer", "name", self.gw_cell_if,
            "netns", self.gw_ns)
        if self.ipv6:
            # link-local addresses too: a tentative one holds up neighbour discovery for about a second
            for ns, dev in ((self.l3_ns, f"zl{s}"), (self.gw_ns, self.gw_l3_if), (self.gw_ns, self.gw_cell_if),
                            (self.cell_ns, f"zc{s}")):
                subprocess.run(["ip", "netns", "exec", ns, "sysctl", "-qw", f"net.ipv6.conf.{dev}.accept_dad=0"],
                               check=True, capture_output=True, timeout=STEP_TIMEOUT)
        for ns, dev, addrs in (
            (self.l3_ns, f"zl{s}", (SCADA, SCRAPER, FLOODER)),
            (self.gw_ns, self.gw_l3_if, (L3_GW,)),
            (self.gw_ns, self.gw_cell_if, (CELL_GW,)),
            (self.cell_ns, f"zc{s}", (PLC, MASTER)),
        ):
            for addr in addrs:
                _ip("-n", ns, "addr", "add", f"{addr}/24", "dev", dev)
            _ip("-n", ns, "link", "set", dev, "up")
        _ip("-n", self.l3_ns, "route", "add", "default", "via", L3_GW)
        _ip("-n", self.cell_ns, "route", "add", "default", "via", CELL_GW)
        sysctls = ["net.ipv4.ip_forward=1"]
        if self.ipv6:
            for ns, dev, addrs in (
                (self.l3_ns, f"zl{s}", (SCADA6, SCRAPER6, FLOODER6)),
                (self.gw_ns, self.gw_l3_if, (L3_GW6,)),
                (self.gw_ns, self.gw_cell_if, (CELL_GW6,)),
                (self.cell_ns, f"zc{s}", (PLC6, MASTER6)),
            ):
                for addr in addrs:
                    _ip("-n", ns, "-6", "addr", "add", f"{addr}/64", "dev", dev, "nodad")
            _ip("-n", self.l3_ns, "-6", "route", "add", "default", "via", L3_GW6)
            _ip("-n", self.cell_ns, "-6", "route", "add", "default", "via", CELL_GW6)
            sysctls.append("net.ipv6.conf.all.forwarding=1")
        subprocess.run(["ip", "netns", "exec", self.gw_ns, "sysctl", "-qw", *sysctls],
                       check=True, capture_output=True, timeout=STEP_TIMEOUT)
        for ns in (self.l3_ns, self.gw_ns, self.cell_ns):
            self.loops[ns] = NetnsLoop(ns)

    @property
    def l3(self) -> NetnsLoop:
        return self.loops[self.l3_ns]

    @property
    def gw(self) -> NetnsLoop:
        return self.loops[self.gw_ns]

    @property
    def cell(self) -> NetnsLoop:
        return self.loops[self.cell_ns]

    def close(self) -> None:
        try:
            for loop in self.loops.values():
                loop.close()
        finally:
            self._delete_namespaces()

    def _delete_namespaces(self) -> None:
        for ns in reversed(self.made):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=STEP_TIMEOUT)
        self.made.clear()


# --- peers ------------------------------------------------------------------------------------------


async def connects(host: str, port: int, source: str | None = None, timeout: float = 0.8,
                   greeting: bool = True) -> bool:
    """Whether a TCP connection to host:port opens (and, with `greeting`, its server says hello).

    A dropped SYN times out; the first SYN retransmission comes after 1 s, so 0.8 s sees one attempt.
    """
    try:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(host, port, local_addr=(source, 0) if source else None), timeout)
    except (OSError, asyncio.TimeoutError):
        return False
    try:
        return not greeting or await asyncio.wait_for(reader.readline(), timeout) == b"hello\n"
    except (OSError, asyncio.TimeoutError):
        return False
    finally:
        writer.close()


async def greeter(host: str, port: int) -> asyncio.Server:
    """A TCP server that says hello and hangs up: proof that a connection reached it."""
    async def greet(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"hello\n")
        await writer.drain()
        writer.close()
    return await asyncio.start_server(greet, host, port, backlog=512, reuse_address=True)


async def relay(host: str, port: int, upstream: tuple[str, int]) -> asyncio.Server:
    """A byte relay from host:port to `upstream`: stands in for a conduit crossing the box."""
    async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        try:
            while data := await src.read(4096):
                dst.write(data)
                await dst.drain()
        finally:
            dst.close()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.wait_for(asyncio.open_connection(*upstream), 2)
        except (OSError, asyncio.TimeoutError):
            writer.close()
            return
        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer), return_exceptions=True)

    return await asyncio.start_server(handle, host, port, backlog=512, reuse_address=True)


async def udp_echo(host: str, port: int) -> asyncio.DatagramTransport:
    class Echo(asyncio.DatagramProtocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.transport = transport

        def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
            self.transport.sendto(data, addr)  # type: ignore[attr-defined]

    transport, _ = await asyncio.get_running_loop().create_datagram_endpoint(Echo, local_addr=(host, port))
    return transport


async def udp_answers(host: str, port: int, source: str, timeout: float = 0.8) -> bool:
    loop = asyncio.get_running_loop()
    answered: asyncio.Future[bytes] = loop.create_future()

    class Ask(asyncio.DatagramProtocol):
        def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
            if not answered.done():
                answered.set_result(data)

    transport, _ = await loop.create_datagram_endpoint(Ask, local_addr=(source, 0), remote_addr=(host, port))
    try:
        transport.sendto(b"time?")
        return await asyncio.wait_for(answered, timeout) == b"time?"
    except asyncio.TimeoutError:
        return False
    finally:
        transport.close()


@dataclass
class Plc:
    """A pymodbus server standing in for the PLC; `requests` lists the function codes it was sent."""

    server: Any
    requests: list[int]


async def start_plc(host: str, port: int) -> Plc:
    from pymodbus.datastore import ModbusDeviceContext, ModbusSequentialDataBlock, ModbusServerContext
    from pymodbus.server import ModbusTcpServer

    requests: list[int] = []

    def trace(sending: bool, pdu: Any) -> Any:
        if not sending:
            requests.append(int(pdu.function_code))
        return pdu

    # pymodbus's device context reads holding register N from block address N + 1.
    registers = ModbusSequentialDataBlock(1, list(range(200)))  # type: ignore[no-untyped-call,unused-ignore]
    context = ModbusServerContext(devices=ModbusDeviceContext(hr=registers), single=True)
    server = ModbusTcpServer(context, address=(host, port), trace_pdu=trace)
    await server.serve_forever(background=True)
    return Plc(server, requests)


async def read_holding(host: str, port: int, source: str, address: int, count: int) -> list[int]:
    """One Modbus read from `source`, through whatever sits at host:port."""
    from pymodbus.client import AsyncModbusTcpClient

    client = AsyncModbusTcpClient(host, port=port, source_address=(source, 0), timeout=2, retries=0)
    try:
        if not await client.connect():
            raise ConnectionError(f"no connection to {host}:{port} from {source}")
        reply = await client.read_holding_registers(address, count=count, device_id=1)
        return list(reply.registers)
    finally:
        client.close()


# --- NFLOG -------------------------------------------------------------------------------------------
#
# nfnetlink_log over a raw netlink socket: bind one log group, read the prefix of every packet logged.
#   config request:  nlmsghdr | nfgenmsg(family=0, version=0, res_id=group, big-endian) | NFULA_CFG_CMD(BIND)
#   logged packet:   nlmsghdr(type=ULOG<<8|PACKET) | nfgenmsg | attributes..., NFULA_PREFIX = "...\0"

NETLINK_NETFILTER = 12
NFNL_SUBSYS_ULOG = 4
NFULNL_MSG_PACKET, NFULNL_MSG_CONFIG = 0, 1
NFULA_CFG_CMD, NFULNL_CFG_CMD_BIND = 1, 1
NFULA_PREFIX = 10
NLM_F_REQUEST, NLM_F_ACK = 0x1, 0x4
NLMSG_ERROR = 2


class NflogGroup:
    """Reads the prefixes of packets logged to one NFLOG group in the namespace it was opened in."""

    def __init__(self, group: int) -> None:
        import socket
        import struct

        self._struct = struct
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
        self.sock.bind((0, 0))
        attr = struct.pack("=HHB3x", 5, NFULA_CFG_CMD, NFULNL_CFG_CMD_BIND)
        body = struct.pack("=BBH", 0, 0, socket.htons(group)) + attr
        header = struct.pack("=IHHII", 16 + len(body), (NFNL_SUBSYS_ULOG << 8) | NFULNL_MSG_CONFIG,
                             NLM_F_REQUEST | NLM_F_ACK, 1, 0)
        self.sock.sendall(header + body)
        self.sock.settimeout(STEP_TIMEOUT)
        reply = self.sock.recv(65536)
        kind = struct.unpack_from("=H", reply, 4)[0]
        error = struct.unpack_from("=i", reply, 16)[0] if kind == NLMSG_ERROR else 0
        if error != 0:
            self.sock.close()
            raise OSError(-error, f"cannot bind NFLOG group {group}: {os.strerror(-error)}")

    def prefixes(self, quiet: float = 0.5, limit: int = 10_000) -> list[str]:
        """Prefixes logged until the group has been quiet for `quiet` seconds (at most `limit` packets)."""
        out: list[str] = []
        self.sock.settimeout(quiet)
        while len(out) < limit:
            try:
                data = self.sock.recv(262144)
            except TimeoutError:
                break
            out += self._parse(data)
        return out

    def _parse(self, data: bytes) -> list[str]:
        unpack = self._struct.unpack_from
        found: list[str] = []
        offset = 0
        while offset + 16 <= len(data):
            length, kind = unpack("=IH", data, offset)
            if length < 16:
                break
            if kind == (NFNL_SUBSYS_ULOG << 8) | NFULNL_MSG_PACKET:
                at, end = offset + 20, offset + length
                while at + 4 <= end:
                    alen, atype = unpack("=HH", data, at)
                    if alen < 4:
                        break
                    if atype & 0x3FFF == NFULA_PREFIX:
                        found.append(data[at + 4: at + alen].rstrip(b"\0").decode(errors="replace"))
                    at += (alen + 3) & ~3
            offset += (length + 3) & ~3
        return found

    def close(self) -> None:
        self.sock.close()
