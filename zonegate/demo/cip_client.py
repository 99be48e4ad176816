"""A minimal EtherNet/IP explicit-messaging client for the demo: Read Tag, Write Tag and object services in
Unconnected Sends, over TLS (the operator's certificate, port 2221) or plain TCP (the zone side).

Client libraries that speak Logix (pycomm3, pylogix) have no TLS transport, so the demo writes the few
messages it sends byte by byte; the encapsulation header comes from `zonegate.dataplane.enip_frames`.
"""

from __future__ import annotations

import asyncio
import ssl
import struct
from dataclasses import dataclass
from typing import Final

from zonegate.dataplane import enip_frames as frames

# Logix atomic types: code -> (name, struct format)
TYPES: Final = {0xC2: ("SINT", "<b"), 0xC3: ("INT", "<h"), 0xC4: ("DINT", "<i"), 0xCA: ("REAL", "<f")}
TYPE_CODES: Final = {name: code for code, (name, _fmt) in TYPES.items()}
READ_TAG: Final = 0x4C
WRITE_TAG: Final = 0x4D
STOP: Final = 0x07
CONNECTION_MANAGER: Final = b"\x20\x06\x24\x01"
IDENTITY: Final = b"\x20\x01\x24\x01"
BACKPLANE_SLOT_0: Final = b"\x01\x00"
STATUS_NAMES: Final = {0x00: "success", 0x01: "connection failure", 0x02: "resource unavailable",
                       0x04: "path segment error", 0x05: "path destination unknown",
                       0x08: "service not supported", 0x0F: "privilege violation"}


def symbol(name: str) -> bytes:
    """A tag path: one ANSI extended symbol segment per dotted part, padded to a word."""
    out = b""
    for part in name.split("."):
        raw = part.encode("ascii")
        out += bytes((0x91, len(raw))) + raw + (b"\x00" if len(raw) % 2 else b"")
    return out


def request(service: int, path: bytes, data: bytes = b"") -> bytes:
    return bytes((service, len(path) // 2)) + path + data


def read_tag(name: str) -> bytes:
    return request(READ_TAG, symbol(name), struct.pack("<H", 1))


def write_tag(name: str, type_name: str, value: float) -> bytes:
    code = TYPE_CODES[type_name]
    return request(WRITE_TAG, symbol(name), struct.pack("<HH", code, 1) + struct.pack(TYPES[code][1], value))


def stop() -> bytes:
    """Stop (0x07) to the Identity object: what a programming tool sends to halt the controller."""
    return request(STOP, IDENTITY)


def routed(message: bytes, route: bytes = BACKPLANE_SLOT_0) -> bytes:
    """An Unconnected Send to the Connection Manager carrying `message` to the controller in slot 0."""
    body = struct.pack("<BBH", 0x0A, 0x05, len(message)) + message + (b"\x00" if len(message) % 2 else b"")
    return request(0x52, CONNECTION_MANAGER, body + bytes((len(route) // 2, 0)) + route)


@dataclass(frozen=True)
class CipReply:
    service: int
    general_status: int
    data: bytes

    @property
    def ok(self) -> bool:
        return self.general_status == 0

    @property
    def status_text(self) -> str:
        name = STATUS_NAMES.get(self.general_status, "error")
        return f"0x{self.general_status:02X} ({name})"

    def value(self) -> float | int:
        """The one element of a Read Tag reply."""
        if not self.ok or len(self.data) < 2:
            raise ValueError(f"no value in a reply with status {self.status_text}")
        code = struct.unpack_from("<H", self.data)[0]
        if code not in TYPES:
            raise ValueError(f"tag type 0x{code:04X} is not one the demo reads")
        value: float | int = struct.unpack_from(TYPES[code][1], self.data, 2)[0]
        return value


class CipClient:
    """One registered session on one connection; every read bounded by `timeout`."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, timeout: float) -> None:
        self.reader = reader
        self.writer = writer
        self.timeout = timeout
        self.session = 0

    @classmethod
    async def connect(cls, host: str, port: int, context: ssl.SSLContext | None = None,
                      timeout: float = 5.0) -> CipClient:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(
            host, port, ssl=context, server_hostname=host if context is not None else None), timeout)
        client = cls(reader, writer, timeout)
        try:
            header, _data = await client._exchange(frames.register_request())
            if header.command != frames.REGISTER_SESSION or header.status != 0 or header.session == 0:
                raise ConnectionError(f"RegisterSession refused (encapsulation status 0x{header.status:04X})")
            client.session = header.session
        except BaseException:
            await client.close()
            raise
        return client

    async def _exchange(self, frame: bytes) -> tuple[frames.Header, bytes]:
        self.writer.write(frame)
        await self.writer.drain()
        head = await asyncio.wait_for(self.reader.readexactly(frames.HEADER_SIZE), self.timeout)
        header = frames.Header.read(head)
        body = await asyncio.wait_for(self.reader.readexactly(header.length), self.timeout)
        return header, head + body

    async def send(self, cip: bytes) -> CipReply:
        """One CIP request in a SendRRData; its reply."""
        cpf = struct.pack("<IHHHHHH", 0, 0, 2, frames.ITEM_NULL_ADDRESS, 0, frames.ITEM_UNCONNECTED_DATA, len(cip))
        header, frame = await self._exchange(frames.message(frames.SEND_RR_DATA, self.session, b"demo-cip", cpf + cip))
        if header.status != 0:
            raise ConnectionError(f"SendRRData refused (encapsulation status 0x{header.status:04X})")
        found = frames.items(frame)
        reply = found.cip if found is not None else None
        if reply is None or len(reply) < 4 or len(reply) < 4 + 2 * reply[3]:
            raise ConnectionError(f"unreadable CIP reply: {frame.hex()}")
        return CipReply(reply[0], reply[2], reply[4 + 2 * reply[3]:])

    async def read(self, tag: str) -> CipReply:
        return await self.send(routed(read_tag(tag)))

    async def write(self, tag: str, type_name: str, value: float) -> CipReply:
        return await self.send(routed(write_tag(tag, type_name, value)))

    async def close(self) -> None:
        if self.session:
            try:
                self.writer.write(frames.unregister_request(self.session))
            except (ConnectionError, RuntimeError):
                pass
        self.writer.close()
        try:
            await asyncio.wait_for(self.writer.wait_closed(), self.timeout)
        except (ConnectionError, ssl.SSLError, asyncio.TimeoutError):
            pass
