"""A minimal classic-pcap reader for the test vectors: Ethernet, IPv4, TCP payloads with frame numbers.

It exists so the vectors cut from the shared captures can be checked against those captures byte for
byte. It reassembles nothing: each TCP segment's payload comes back as is, numbered like Wireshark
numbers frames (from 1).
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

PCAPS = Path(__file__).resolve().parents[3] / "shared" / "pcaps"

_ETHERTYPE_IPV4 = 0x0800
_ETHERTYPE_VLAN = 0x8100
_IP_PROTO_TCP = 6
_LINKTYPE_ETHERNET = 1
_MAX_RECORD = 1 << 18  # a captured frame larger than this means a corrupt file


@dataclass(frozen=True)
class Segment:
    frame: int
    src_port: int
    dst_port: int
    payload: bytes


def tcp_segments(path: Path) -> Iterator[Segment]:
    """Every TCP segment with a payload in a little- or big-endian classic pcap of Ethernet frames."""
    data = path.read_bytes()
    magic = data[:4]
    if magic in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1"):
        endian = "<"
    elif magic in (b"\xa1\xb2\xc3\xd4", b"\xa1\xb2\x3c\x4d"):
        endian = ">"
    else:
        raise ValueError(f"{path}: not a classic pcap file")
    (linktype,) = struct.unpack(endian + "I", data[20:24])
    if linktype != _LINKTYPE_ETHERNET:
        raise ValueError(f"{path}: link type {linktype} is not Ethernet")
    offset, frame = 24, 0
    while offset + 16 <= len(data):
        _, _, caplen, _ = struct.unpack(endian + "IIII", data[offset : offset + 16])
        if caplen > _MAX_RECORD:
            raise ValueError(f"{path}: record at {offset} claims {caplen} bytes")
        record = data[offset + 16 : offset + 16 + caplen]
        offset += 16 + caplen
        frame += 1
        segment = _tcp(record, frame)
        if segment is not None:
            yield segment


def _tcp(record: bytes, frame: int) -> Segment | None:
    if len(record) < 14:
        return None
    ethertype = struct.unpack("!H", record[12:14])[0]
    ip = 14
    while ethertype == _ETHERTYPE_VLAN and len(record) >= ip + 4:
        ethertype = struct.unpack("!H", record[ip + 2 : ip + 4])[0]
        ip += 4
    if ethertype != _ETHERTYPE_IPV4 or len(record) < ip + 20:
        return None
    ihl = (record[ip] & 0x0F) * 4
    total_length = struct.unpack("!H", record[ip + 2 : ip + 4])[0]
    if record[ip + 9] != _IP_PROTO_TCP:
        return None
    tcp = ip + ihl
    if len(record) < tcp + 20:
        return None
    src_port, dst_port = struct.unpack("!HH", record[tcp : tcp + 4])
    data_offset = (record[tcp + 12] >> 4) * 4
    end = min(len(record), ip + total_length)
    payload = record[tcp + data_offset : end]
    if not payload:
        return None
    return Segment(frame, src_port, dst_port, bytes(payload))


def frame_payload(capture: str, frame: int) -> bytes:
    """The TCP payload of one frame of a shared capture (path relative to the pcaps folder)."""
    for segment in tcp_segments(PCAPS / capture):
        if segment.frame == frame:
            return segment.payload
    raise LookupError(f"{capture}: frame {frame} has no TCP payload")
