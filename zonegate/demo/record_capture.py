"""Records the demo capture (`demo_session.pcap`) that `zonegate replay` and `make demo` use.

An operator session runs against the demo plant (the simulated tank PLC, a real pymodbus server) with a
real pymodbus client, through a small relay on loopback that records every read it makes in each
direction. The recording is then written as a pcap: each read becomes one TCP segment in synthesised
Ethernet/IPv4/TCP headers (correct sequence and acknowledgement numbers and checksums), with a
three-way handshake before and a FIN exchange after. The PLC is shown at the demo policy's address for
it (127.0.0.1:5020) whatever port it really had, so a replay matches it to `tank-plc`.

The session: ten reads of holding registers 0-9, a setpoint write within bounds, a read of the
setpoints, a setpoint write above the policy's maximum, and a coil write the operator may not make.

Run: python -m zonegate.demo.record_capture [OUT.pcap]
"""

from __future__ import annotations

import asyncio
import struct
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from pymodbus.client import AsyncModbusTcpClient

from zonegate.demo.plc import SimulatedPlc

DEFAULT_OUT = Path(__file__).with_name("demo_session.pcap")
# Where the demo policy (policies/demo.yaml) says the tank PLC listens.
PLC_ADDRESS = ("127.0.0.1", 5020)
UNIT = 1
# Every wait in the session is bounded.
STEP_TIMEOUT_S = 5.0

CLIENT_MAC = bytes.fromhex("020000000001")
SERVER_MAC = bytes.fromhex("020000000002")

FIN, SYN, RST, PSH, ACK = 0x01, 0x02, 0x04, 0x08, 0x10

# pcap file header: magic, version 2.4, thiszone 0, sigfigs 0, snaplen, link type 1 (Ethernet),
# nanosecond timestamps (magic 0xa1b23c4d).
PCAP_NS_MAGIC = 0xA1B23C4D
LINKTYPE_ETHERNET = 1


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = int(sum(struct.unpack(f"!{len(data) // 2}H", data)))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def _ip(text: str) -> bytes:
    return bytes(int(part) for part in text.split("."))


def tcp_frame(src: tuple[str, int], dst: tuple[str, int], seq: int, ack: int, flags: int, payload: bytes) -> bytes:
    """One Ethernet II / IPv4 / TCP frame with valid checksums.

    ```
    | dst mac 6 | src mac 6 | type 0x0800 | IPv4 header 20 | TCP header 20 | payload |
    ```
    """
    src_ip, dst_ip = _ip(src[0]), _ip(dst[0])
    tcp_len = 20 + len(payload)
    tcp = struct.pack(
        "!HHIIBBHHH",
        src[1], dst[1],  # ports
        seq & 0xFFFFFFFF, ack & 0xFFFFFFFF if flags & ACK else 0,  # sequence, acknowledgement
        5 << 4, flags,  # data offset (5 words), flags
        65535, 0, 0,  # window, checksum (filled below), urgent pointer
    )
    pseudo = src_ip + dst_ip + struct.pack("!BBH", 0, 6, tcp_len)
    csum = _checksum(pseudo + tcp + payload)
    tcp = tcp[:16] + struct.pack("!H", csum) + tcp[18:]
    ip = struct.pack(
        "!BBHHHBBH4s4s",
        0x45, 0, 20 + tcp_len,  # version 4 / IHL 5, DSCP, total length
        0, 0x4000,  # identification, flags: don't fragment
        64, 6, 0,  # TTL, protocol TCP, checksum (filled below)
        src_ip, dst_ip,
    )
    ip = ip[:10] + struct.pack("!H", _checksum(ip)) + ip[12:]
    return SERVER_MAC + CLIENT_MAC + b"\x08\x00" + ip + tcp + payload


class PcapWriter:
    """Legacy pcap with nanosecond timestamps, Ethernet link type."""

    def __init__(self, out: BinaryIO) -> None:
        self.out = out
        out.write(struct.pack("<IHHiIII", PCAP_NS_MAGIC, 2, 4, 0, 0, 65535, LINKTYPE_ETHERNET))

    def frame(self, ts_ns: int, data: bytes) -> None:
        sec, nsec = divmod(ts_ns, 1_000_000_000)
        self.out.write(struct.pack("<IIII", sec, nsec, len(data), len(data)))
        self.out.write(data)


@dataclass
class TcpConversation:
    """Frames of one TCP connection, sequence numbers kept per side."""

    client: tuple[str, int]
    server: tuple[str, int]
    client_isn: int = 0x1000_0000
    server_isn: int = 0x7000_0000
    frames: list[tuple[int, bytes]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.cseq = self.client_isn
        self.sseq = self.server_isn

    def handshake(self, ts_ns: int) -> None:
        self.frames.append((ts_ns, tcp_frame(self.client, self.server, self.cseq, 0, SYN, b"")))
        self.cseq += 1
        self.frames.append((ts_ns, tcp_frame(self.server, self.client, self.sseq, self.cseq, SYN | ACK, b"")))
        self.sseq += 1
        self.frames.append((ts_ns, tcp_frame(self.client, self.server, self.cseq, self.sseq, ACK, b"")))

    def data(self, ts_ns: int, from_client: bool, payload: bytes) -> None:
        if from_client:
            frame = tcp_frame(self.client, self.server, self.cseq, self.sseq, PSH | ACK, payload)
            self.cseq += len(payload)
        else:
            frame = tcp_frame(self.server, self.client, self.sseq, self.cseq, PSH | ACK, payload)
            self.sseq += len(payload)
        self.frames.append((ts_ns, frame))

    def close(self, ts_ns: int) -> None:
        self.frames.append((ts_ns, tcp_frame(self.client, self.server, self.cseq, self.sseq, FIN | ACK, b"")))
        self.cseq += 1
        self.frames.append((ts_ns, tcp_frame(self.server, self.client, self.sseq, self.cseq, FIN | ACK, b"")))
        self.sseq += 1
        self.frames.append((ts_ns, tcp_frame(self.client, self.server, self.cseq, self.sseq, ACK, b"")))

    def write(self, out: BinaryIO) -> None:
        writer = PcapWriter(out)
        for ts_ns, frame in self.frames:
            writer.frame(ts_ns, frame)


@dataclass
class Recording:
    """What the relay saw: (time, from_client, bytes) per read, in order."""

    client_port: int = 0
    chunks: list[tuple[int, bool, bytes]] = field(default_factory=list)
    opened_ns: int = 0
    closed_ns: int = 0


class RecordingRelay:
    """A loopback TCP relay (one connection) that records every read in both directions."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self.recording = Recording()
        self.done = asyncio.Event()
        self.server: asyncio.base_events.Server | None = None

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return int(self.server.sockets[0].getsockname()[1])

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, from_client: bool) -> None:
        while data := await reader.read(65536):
            self.recording.chunks.append((time.time_ns(), from_client, data))
            writer.write(data)
            await writer.drain()
        writer.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.recording.client_port = int(writer.get_extra_info("peername")[1])
        self.recording.opened_ns = time.time_ns()
        up_reader, up_writer = await asyncio.wait_for(asyncio.open_connection(*self.upstream), STEP_TIMEOUT_S)
        try:
            await asyncio.gather(self._pump(reader, up_writer, True), self._pump(up_reader, writer, False))
        finally:
            self.recording.closed_ns = time.time_ns()
            self.done.set()

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()


async def operator_session(port: int) -> None:
    """The operator's requests, through the relay at 127.0.0.1:`port`."""
    client = AsyncModbusTcpClient("127.0.0.1", port=port, timeout=STEP_TIMEOUT_S, retries=0)
    if not await asyncio.wait_for(client.connect(), STEP_TIMEOUT_S):
        raise ConnectionError(f"cannot reach the relay on 127.0.0.1:{port}")
    try:
        for _ in range(10):
            await client.read_holding_registers(0, count=10, device_id=UNIT)
        await client.write_register(100, 750, device_id=UNIT)  # inflow setpoint, within 0..1500
        await client.read_holding_registers(100, count=10, device_id=UNIT)
        await client.write_register(101, 2000, device_id=UNIT)  # above the policy's maximum of 1500
        await client.write_coil(0, True, device_id=UNIT)  # operators have no coil writes
    finally:
        client.close()


async def record() -> Recording:
    plc = SimulatedPlc(0, initial={100: 500})
    plc_port = await plc.start()
    relay = RecordingRelay(("127.0.0.1", plc_port))
    relay_port = await relay.start()
    try:
        await asyncio.wait_for(operator_session(relay_port), 10 * STEP_TIMEOUT_S)
        await asyncio.wait_for(relay.done.wait(), STEP_TIMEOUT_S)
    finally:
        await relay.stop()
        await plc.stop()
    return relay.recording


def conversation(recording: Recording) -> TcpConversation:
    conv = TcpConversation(client=("127.0.0.1", recording.client_port), server=PLC_ADDRESS)
    conv.handshake(recording.opened_ns)
    for ts_ns, from_client, data in recording.chunks:
        conv.data(ts_ns, from_client, data)
    conv.close(recording.closed_ns)
    return conv


def write_pcap(path: Path, frames: Iterable[tuple[int, bytes]]) -> None:
    with path.open("wb") as out:
        writer = PcapWriter(out)
        for ts_ns, frame in frames:
            writer.frame(ts_ns, frame)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    out = Path(args[0]) if args else DEFAULT_OUT
    recording = asyncio.run(record())
    write_pcap(out, conversation(recording).frames)
    sent = sum(1 for _, from_client, _ in recording.chunks if from_client)
    print(f"{out}: {sent} client reads, {len(recording.chunks) - sent} server reads recorded")
    return 0


if __name__ == "__main__":
    sys.exit(main())
