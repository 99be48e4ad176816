"""A cpppo EtherNet/IP controller simulator for the conduit tests, and the raw messages tests send it.

Run as a script it is `python -m cpppo.server.enip` with two additions: each block the server reads from
a client is appended (peer, hex) to a record file before the server acts on it, so a test can tell
exactly which messages reached the device; and `delay` holds each SendRRData (or only those holding the
bytes `slow`) that long before acting on it (a slow device whose sessions still register at once). cpppo is GPL: it is a test peer only, started as its own
process, never imported by zonegate.

`EnipSimulator` starts it on a free loopback port (bounded wait for its "running on" line) and reads the
record back as whole encapsulation messages per client connection.

The builders below write CIP requests byte by byte (no client library in the way), so a test can hide a
request inside a Multiple Service Packet or an Unconnected Send exactly as it wants.
"""

from __future__ import annotations

import json
import os
import selectors
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Final

_ROOT = Path(__file__).resolve().parents[2]


def _serve(record: str, argv: list[str]) -> int:
    from cpppo.server import network
    from cpppo.server.enip.main import main

    original = network.recv
    delay = float(os.environ.get("ENIP_SIM_DELAY", "0"))  # before acting on a SendRRData (a slow device)
    slow = bytes.fromhex(os.environ.get("ENIP_SIM_SLOW", ""))  # only those holding these bytes, if given

    def recv(conn: socket.socket, timeout: float | None = None) -> Any:
        msg = original(conn, timeout=timeout)
        if msg:
            try:
                peer = "%s:%d" % conn.getpeername()[:2]
            except OSError:
                peer = "?"
            with open(record, "a", encoding="ascii") as out:
                out.write(json.dumps({"peer": peer, "data": bytes(msg).hex()}) + "\n")
            if delay and bytes(msg[:2]) == b"\x6f\x00" and slow in bytes(msg):
                time.sleep(delay)
        return msg

    network.recv = recv
    return int(main(argv=argv) or 0)


class EnipSimulator:
    """A cpppo Logix simulator with `tags` (e.g. `Line1_Speed=INT[10]`) on a loopback port."""

    def __init__(self, tmp: Path, tags: list[str], *, route_path: str | None = None, delay: float = 0.0,
                 slow: bytes = b"") -> None:
        from zonegate.demo.stack import free_port  # here: run as a script, this module imports no zonegate

        self.port = free_port()
        self.record = tmp / f"enip-sim-{self.port}.jsonl"
        self.tags = tags
        self.route_path = route_path
        self.delay = delay
        self.slow = slow  # with `delay`: only SendRRData messages holding these bytes are held
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 20.0) -> EnipSimulator:
        argv = ["--no-config", "-a", f"127.0.0.1:{self.port}", "-A", "-U"]
        if self.route_path is not None:
            argv += ["--route-path", self.route_path]
        env = dict(os.environ, PYTHONPATH=str(_ROOT), ENIP_SIM_DELAY=str(self.delay),
                   ENIP_SIM_SLOW=self.slow.hex())
        self.process = subprocess.Popen(
            [sys.executable, __file__, str(self.record), *argv, *self.tags],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env,
        )
        assert self.process.stdout is not None
        deadline = time.monotonic() + timeout
        selector = selectors.DefaultSelector()
        selector.register(self.process.stdout, selectors.EVENT_READ)
        seen = b""
        try:
            while b"Server address" not in seen and b"running on" not in seen:
                left = deadline - time.monotonic()
                if left <= 0 or self.process.poll() is not None:
                    raise RuntimeError(f"cpppo simulator did not start: {seen!r}")
                if selector.select(left):
                    chunk = os.read(self.process.stdout.fileno(), 4096)
                    if not chunk:
                        raise RuntimeError(f"cpppo simulator exited: {seen!r}")
                    seen += chunk
        finally:
            selector.close()
        self._wait_listening(deadline)
        return self

    def _wait_listening(self, deadline: float) -> None:
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        if self.process is not None and self.process.stdout is not None:
            self.process.stdout.close()

    def __enter__(self) -> EnipSimulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- what reached it ----------------------------------------------------------------------------------

    def connections(self) -> list[list[bytes]]:
        """The encapsulation messages received on each client connection, in order, connections in order."""
        if not self.record.exists():
            return []
        streams: dict[str, bytes] = {}
        for line in self.record.read_text(encoding="ascii").splitlines():
            entry = json.loads(line)
            streams[entry["peer"]] = streams.get(entry["peer"], b"") + bytes.fromhex(entry["data"])
        out: list[list[bytes]] = []
        for stream in streams.values():
            messages = []
            while len(stream) >= 24:
                n = 24 + int.from_bytes(stream[2:4], "little")
                messages.append(stream[:n])
                stream = stream[n:]
            out.append(messages)
        return out

    def messages(self) -> list[bytes]:
        """Every encapsulation message received, per client connection in order, connections in order."""
        return [m for connection in self.connections() for m in connection]

    def commands(self) -> list[int]:
        return [int.from_bytes(m[0:2], "little") for m in self.messages()]

    def saw(self, needle: bytes) -> bool:
        """Whether any message that reached the device holds `needle` (a tag name, say)."""
        return any(needle in m for m in self.messages())


# -- CIP requests, built on the wire ---------------------------------------------------------------------

INT: Final = 0x00C3
CONNECTION_MANAGER: Final = b"\x20\x06\x24\x01"
MESSAGE_ROUTER: Final = b"\x20\x02\x24\x01"
IDENTITY: Final = b"\x20\x01\x24\x01"


def symbol(name: str, *elements: int) -> bytes:
    """A tag path: one ANSI extended symbol per dotted part, then the array elements."""
    out = b""
    for part in name.split("."):
        raw = part.encode("ascii")
        out += bytes((0x91, len(raw))) + raw + (b"\x00" if len(raw) % 2 else b"")
    for element in elements:
        out += bytes((0x28, element)) if element < 0x100 else b"\x29\x00" + struct.pack("<H", element)
    return out


def request(service: int, path: bytes, data: bytes = b"") -> bytes:
    return bytes((service, len(path) // 2)) + path + data


def read_tag(name: str, *elements: int, count: int = 1) -> bytes:
    return request(0x4C, symbol(name, *elements), struct.pack("<H", count))


def write_tag(name: str, *elements: int, values: tuple[int, ...] = (1,)) -> bytes:
    data = struct.pack("<HH", INT, len(values)) + b"".join(struct.pack("<h", v) for v in values)
    return request(0x4D, symbol(name, *elements), data)


def unconnected_send(message: bytes, route: bytes = b"\x01\x00") -> bytes:
    """Unconnected Send to the Connection Manager, routed (default backplane port 1, slot 0)."""
    body = struct.pack("<BBH", 0x0A, 0x05, len(message)) + message + (b"\x00" if len(message) % 2 else b"")
    body += bytes((len(route) // 2, 0)) + route
    return request(0x52, CONNECTION_MANAGER, body)


def multiple(*messages: bytes) -> bytes:
    """Multiple Service Packet to the Message Router; offsets count from the count field."""
    offsets, at = [], 2 + 2 * len(messages)
    for message in messages:
        offsets.append(at)
        at += len(message)
    body = struct.pack("<H", len(messages)) + b"".join(struct.pack("<H", o) for o in offsets) + b"".join(messages)
    return request(0x0A, MESSAGE_ROUTER, body)


def header(command: int, data: bytes, session: int, context: bytes = b"zonegate") -> bytes:
    return struct.pack("<HHII8sI", command, len(data), session, 0, context, 0) + data


def send_rr_data(cip: bytes, session: int, context: bytes = b"zonegate") -> bytes:
    cpf = struct.pack("<IHH", 0, 0, 2) + struct.pack("<HH", 0, 0) + struct.pack("<HH", 0xB2, len(cip)) + cip
    return header(0x6F, cpf, session, context)


def send_unit_data(cip: bytes, session: int, connection: int, sequence: int) -> bytes:
    data = struct.pack("<H", sequence) + cip
    cpf = (struct.pack("<IHH", 0, 0, 2) + struct.pack("<HHI", 0xA1, 4, connection)
           + struct.pack("<HH", 0xB1, len(data)) + data)
    return header(0x70, cpf, session, bytes(8))


def register_session() -> bytes:
    return header(0x65, struct.pack("<HH", 1, 0), 0, bytes(8))


def forward_open(serial: int, o_t: int = 0, t_o: int = 0x1234_5678) -> bytes:
    """A class 3 Forward Open to the Message Router through backplane slot 0."""
    path = b"\x01\x00" + MESSAGE_ROUTER
    params = 0x43F4  # point to point, low priority, variable, 500 bytes
    data = struct.pack("<BBIIHHIBxxxIHIHB", 0x0A, 0x05, o_t, t_o, serial, 0x1337, 0x4242, 3,
                       2_000_000, params, 2_000_000, params, 0xA3)
    return request(0x54, CONNECTION_MANAGER, data + bytes((len(path) // 2,)) + path)


class Reply:
    """A SendRRData / SendUnitData reply read back: encapsulation status, then the CIP reply."""

    def __init__(self, frame: bytes) -> None:
        self.frame = frame
        self.command, _length, self.session, self.status, self.context, _options = struct.unpack_from(
            "<HHII8sI", frame)
        self.cip = b""
        data = frame[24:]
        if len(data) >= 8:
            count, offset = struct.unpack_from("<H", data, 6)[0], 8
            for _ in range(count):
                kind, length = struct.unpack_from("<HH", data, offset)
                body = data[offset + 4 : offset + 4 + length]
                offset += 4 + length
                if kind == 0xB2:
                    self.cip = body
                elif kind == 0xB1:
                    self.cip = body[2:]

    @property
    def service(self) -> int:
        return self.cip[0]

    @property
    def general_status(self) -> int:
        return self.cip[2]

    @property
    def extended(self) -> tuple[int, ...]:
        words = self.cip[3]
        return struct.unpack_from(f"<{words}H", self.cip, 4)

    @property
    def data(self) -> bytes:
        return self.cip[4 + 2 * self.cip[3] :]


if __name__ == "__main__":
    sys.exit(_serve(sys.argv[1], sys.argv[2:]))
