"""OPC UA converter, CIP codec: Logix tag values, Read Tag / Write Tag requests, and their replies.

Pure bytes in, values out (and back for writes); no sockets. A CIP tag's value travels as the Logix
type code (UINT) and the value little-endian; a Logix STRING is a structure (type 0x02A0, handle
0x0FCE) holding a DINT length and 82 SINT characters:

```
 Read Tag  request   4C | path words | path (0x91 symbol segments, 0x28/0x29/0x2A elements) | elements=1
           reply     CC | 00 | status | ext words | ext... | type (UINT) [handle (UINT)] | value
 Write Tag request   4D | path words | path | type (UINT) | elements=1 | value
 Multiple Service    0A | 02 | 20 02 24 01 | count | offsets (from count) | requests...
           reply     8A | 00 | status | 00 | count | offsets | replies...
```
"""

from __future__ import annotations

import math
import struct
from collections.abc import Mapping, Sequence
from typing import Final

from zonegate.controlplane.policy.tags import cip_tag_parts
from zonegate.convert.opcua_poll import (
    BAD_COMMUNICATION_ERROR,
    BAD_DATA_ENCODING_INVALID,
    BAD_DEVICE_FAILURE,
    BAD_NO_COMMUNICATION,
    BAD_NOT_SUPPORTED,
    BAD_OUT_OF_RANGE,
    BAD_RESOURCE_UNAVAILABLE,
    BAD_USER_ACCESS_DENIED,
)
from zonegate.convert.opcua_tags import CodecError, Tag

READ_TAG: Final = 0x4C
WRITE_TAG: Final = 0x4D
MULTIPLE_SERVICE: Final = 0x0A
MESSAGE_ROUTER: Final = b"\x20\x02\x24\x01"

# Logix atomic types: type code and little-endian struct format.
TYPE_CODES: Final[Mapping[str, int]] = {
    "bool": 0xC1, "sint": 0xC2, "int": 0xC3, "dint": 0xC4, "lint": 0xC5, "real": 0xCA, "lreal": 0xCB,
}
_FORMATS: Final[Mapping[str, str]] = {
    "bool": "<B", "sint": "<b", "int": "<h", "dint": "<i", "lint": "<q", "real": "<f", "lreal": "<d",
}
INTEGER_LIMITS: Final[Mapping[str, tuple[int, int]]] = {
    "sint": (-(2**7), 2**7 - 1), "int": (-(2**15), 2**15 - 1), "dint": (-(2**31), 2**31 - 1),
    "lint": (-(2**63), 2**63 - 1),
}
STRUCTURE: Final = 0x02A0
STRING_HANDLE: Final = 0x0FCE  # the Logix STRING structure: LEN DINT + DATA SINT[82]
STRING_DATA: Final = 82
CIP_STRING: Final = 0xD0  # UINT length + characters (what some devices and simulators answer instead)
CIP_SSTRING: Final = 0xDA  # USINT length + characters

# Bytes one value's reply item takes (status 4, type 2, value; a string at most handle 2 + 4 + 82 + 2).
REPLY_BYTES: Final[Mapping[str, int]] = {
    "bool": 7, "sint": 7, "int": 8, "dint": 10, "lint": 14, "real": 10, "lreal": 14, "string": 96,
}

# CIP general status of a reply -> the OPC UA status of its tag (polls) or write.
BAD_NOT_FOUND: Final = 0x803E0000
BAD_INVALID_STATE: Final = 0x80AF0000
BAD_TYPE_MISMATCH: Final = 0x80740000
GENERAL_STATUS: Final[Mapping[int, int]] = {
    0x01: BAD_NO_COMMUNICATION,  # connection failure: zonegate's answer when the device is unreachable
    0x02: BAD_RESOURCE_UNAVAILABLE,
    0x03: BAD_OUT_OF_RANGE,  # invalid parameter value
    0x04: BAD_NOT_FOUND,  # path segment error: no such tag
    0x05: BAD_NOT_FOUND,  # path destination unknown
    0x06: BAD_DATA_ENCODING_INVALID,  # partial transfer
    0x08: BAD_NOT_SUPPORTED,  # service not supported
    0x09: BAD_OUT_OF_RANGE,  # invalid attribute value
    0x0C: BAD_INVALID_STATE,  # object state conflict
    0x0F: BAD_USER_ACCESS_DENIED,  # privilege violation
    0x10: BAD_INVALID_STATE,  # device state conflict
    0x13: BAD_DATA_ENCODING_INVALID,  # not enough data
    0x15: BAD_DATA_ENCODING_INVALID,  # too much data
    0x1F: BAD_DEVICE_FAILURE,  # vendor specific
    0x20: BAD_OUT_OF_RANGE,  # invalid parameter
}


def status_of(general: int) -> int:
    """The OPC UA status for a CIP general status (0 is Good's business, not this table's)."""
    return GENERAL_STATUS.get(general, BAD_DEVICE_FAILURE if general else BAD_COMMUNICATION_ERROR)


class TypeMismatch(CodecError):
    """The device answered a type other than the tag's."""


# -- requests ----------------------------------------------------------------------------------------------


def symbol_path(cip_tag: str) -> bytes:
    """The request path of a tag: one ANSI extended symbol segment per dotted part, then its elements."""
    out = bytearray()
    for name, indices in cip_tag_parts(cip_tag):
        raw = name.encode("ascii")
        out += bytes((0x91, len(raw))) + raw + (b"\x00" if len(raw) % 2 else b"")
        for index in indices:
            if index < 0x100:
                out += bytes((0x28, index))
            elif index < 0x10000:
                out += b"\x29\x00" + struct.pack("<H", index)
            else:
                out += b"\x2a\x00" + struct.pack("<I", index)
    return bytes(out)


def _request(service: int, path: bytes, data: bytes) -> bytes:
    return bytes((service, len(path) // 2)) + path + data


def read_request(tag: Tag) -> bytes:
    """Read Tag of one element of the tag."""
    assert tag.cip_tag is not None
    return _request(READ_TAG, symbol_path(tag.cip_tag), b"\x01\x00")


def write_request(tag: Tag, value: object) -> bytes:
    """Write Tag of one element: the tag's Logix type code and the raw value `encode_value` makes."""
    assert tag.cip_tag is not None
    return _request(WRITE_TAG, symbol_path(tag.cip_tag), struct.pack("<HH", TYPE_CODES[tag.type], 1)
                    + encode_value(tag, value))


def multiple(messages: Sequence[bytes]) -> bytes:
    """A Multiple Service Packet to the Message Router; offsets count from the count field."""
    offsets, at = [], 2 + 2 * len(messages)
    for message in messages:
        offsets.append(at)
        at += len(message)
    body = struct.pack("<H", len(messages)) + b"".join(struct.pack("<H", o) for o in offsets) + b"".join(messages)
    return _request(MULTIPLE_SERVICE, MESSAGE_ROUTER, body)


# -- replies -----------------------------------------------------------------------------------------------


def parse_reply(reply: bytes, service: int) -> tuple[int, bytes]:
    """(general status, data after the status) of a reply to `service`; CodecError when it is not one."""
    if len(reply) < 4 or reply[0] != (service | 0x80):
        raise CodecError(f"not a reply to service {service:#04x}")
    end = 4 + 2 * reply[3]
    if len(reply) < end:
        raise CodecError("extended status runs past the reply")
    return reply[2], reply[end:]


def split_multiple(data: bytes, count: int) -> list[bytes]:
    """The `count` replies inside a Multiple Service Packet reply's data."""
    if len(data) < 2 + 2 * count or struct.unpack_from("<H", data)[0] != count:
        raise CodecError(f"a multiple service reply must hold {count} replies")
    offsets = [struct.unpack_from("<H", data, 2 + 2 * i)[0] for i in range(count)] + [len(data)]
    out = []
    for start, end in zip(offsets, offsets[1:]):
        if not 2 + 2 * count <= start <= end <= len(data):
            raise CodecError("multiple service reply offsets out of order")
        out.append(data[start:end])
    return out


def decode_value(tag: Tag, data: bytes) -> bool | int | float | str:
    """A Read Tag reply's data (type code, value) -> the engineering value the variable shows."""
    if len(data) < 2:
        raise CodecError("no type code in the reply")
    code = struct.unpack_from("<H", data)[0]
    if tag.type == "string":
        return _decode_string(code, data[2:])
    if code != TYPE_CODES[tag.type]:
        raise TypeMismatch(f"tag {tag.name!r} is {tag.type}, the device answered type {code:#06x}")
    fmt = _FORMATS[tag.type]
    if len(data) != 2 + struct.calcsize(fmt):
        raise CodecError(f"a {tag.type} value is {struct.calcsize(fmt)} bytes, not {len(data) - 2}")
    (raw,) = struct.unpack_from(fmt, data, 2)
    if tag.type == "bool":
        return raw != 0
    if tag.scaled:
        return float(raw) * tag.scale + tag.offset
    return raw  # type: ignore[no-any-return]


def _decode_string(code: int, body: bytes) -> str:
    if code == STRUCTURE:
        if len(body) < 6 or struct.unpack_from("<H", body)[0] != STRING_HANDLE:
            raise TypeMismatch("a structure other than a Logix STRING")
        length = struct.unpack_from("<i", body, 2)[0]
        chars = body[6:]
        if not STRING_DATA <= len(chars) <= STRING_DATA + 2 or not 0 <= length <= STRING_DATA:
            raise CodecError("a Logix STRING is a DINT length 0..82 and 82 characters")
        text = chars[:length]
    elif code == CIP_STRING:
        if len(body) < 2:
            raise CodecError("a STRING needs its UINT length")
        length = struct.unpack_from("<H", body)[0]
        text = body[2 : 2 + length]
        if len(text) != length or len(body) - 2 - length > 1:
            raise CodecError("a STRING's length does not match its characters")
    elif code == CIP_SSTRING:
        if not body or len(body) - 1 < body[0] or len(body) - 1 - body[0] > 1:
            raise CodecError("a SHORT_STRING's length does not match its characters")
        text = body[1 : 1 + body[0]]
    else:
        raise TypeMismatch(f"a string tag, the device answered type {code:#06x}")
    return text.decode("utf-8", errors="replace")


def encode_value(tag: Tag, value: object) -> bytes:
    """A written engineering value -> the tag's raw little-endian value; CodecError when it does not fit."""
    if tag.type == "string":
        raise CodecError(f"tag {tag.name!r}: CIP string tags are read-only")
    if tag.type == "bool":
        if not isinstance(value, (bool, int)) or isinstance(value, int) and value not in (0, 1):
            raise CodecError(f"tag {tag.name!r} takes a boolean")
        return b"\xff" if value else b"\x00"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise CodecError(f"tag {tag.name!r} takes a number")
    limits = INTEGER_LIMITS.get(tag.type)
    if not math.isfinite(value) and (limits is not None or tag.scaled):
        raise CodecError(f"tag {tag.name!r} takes a finite number")
    raw: int | float = (value - tag.offset) / tag.scale if tag.scaled else value
    if limits is not None:
        if isinstance(raw, float):
            if not raw.is_integer() and not tag.scaled:
                raise CodecError(f"tag {tag.name!r} takes an integer")
            raw = round(raw)
        if not limits[0] <= raw <= limits[1]:
            raise CodecError(f"tag {tag.name!r}: raw value {raw} does not fit {tag.type}")
        return struct.pack(_FORMATS[tag.type], int(raw))
    try:
        return struct.pack(_FORMATS[tag.type], float(raw))
    except OverflowError as exc:
        raise CodecError(f"tag {tag.name!r}: {value} does not fit {tag.type}") from exc
