"""EtherNet/IP conduit, frame stage: the encapsulation messages zonegate writes itself, sans I/O.

The Rust core parses and decides what clients send (docs/enip.md, docs/cip-engine.md); this module only
reads the few header and Common Packet Format fields the conduit needs to answer, and builds the answers
zonegate gives without the device: RegisterSession, ListServices, ListInterfaces, ListIdentity from the
learned identity, refusals (a CIP error reply to the outer service, or an encapsulation status), and the
gateway's answer when the device cannot be reached.

```
 encapsulation header (24 bytes, little-endian)
 0        2        4           8          12                20        24
 +--------+--------+-----------+----------+-----------------+---------+---------
 |command | length | session   | status   | sender context  | options | data ...
 +--------+--------+-----------+----------+-----------------+---------+---------

 SendRRData / SendUnitData data
 | interface handle u32 | timeout u16 | item count u16 | (type u16, length u16, data) * count |

 CIP reply (in an unconnected data item 0xB2, or after the sequence count of a connected one 0xB1)
 | service | 0x80 | reserved 0 | general status | extended status size (words) | extended status ... |
```
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Final

HEADER: Final = struct.Struct("<HHII8sI")
HEADER_SIZE: Final = 24
MAX_LENGTH: Final = 65511  # the largest length field docs/enip.md section 1 frames

# Encapsulation commands (docs/enip.md section 2).
NOP: Final = 0x0000
LIST_SERVICES: Final = 0x0004
LIST_IDENTITY: Final = 0x0063
LIST_INTERFACES: Final = 0x0064
REGISTER_SESSION: Final = 0x0065
UNREGISTER_SESSION: Final = 0x0066
SEND_RR_DATA: Final = 0x006F
SEND_UNIT_DATA: Final = 0x0070

COMMAND_NAMES: Final = {
    NOP: "nop",
    LIST_SERVICES: "list_services",
    LIST_IDENTITY: "list_identity",
    LIST_INTERFACES: "list_interfaces",
    REGISTER_SESSION: "register_session",
    UNREGISTER_SESSION: "unregister_session",
    SEND_RR_DATA: "send_rr_data",
    SEND_UNIT_DATA: "send_unit_data",
}

# Encapsulation status words.
STATUS_INVALID_COMMAND: Final = 0x0001
STATUS_INCORRECT_DATA: Final = 0x0003
STATUS_INVALID_SESSION: Final = 0x0064
STATUS_UNSUPPORTED_PROTOCOL: Final = 0x0069

# CPF item types.
ITEM_NULL_ADDRESS: Final = 0x0000
ITEM_IDENTITY: Final = 0x000C
ITEM_CONNECTED_ADDRESS: Final = 0x00A1
ITEM_CONNECTED_DATA: Final = 0x00B1
ITEM_UNCONNECTED_DATA: Final = 0x00B2
ITEM_SERVICES: Final = 0x0100

# CIP general status a gateway answers for a target it cannot reach: connection failure, with the
# Connection Manager's extended status "unconnected request timed out" (Vol. 1, table 3-5.29).
CIP_CONNECTION_FAILURE: Final = 0x01
CIP_EXT_UNCONNECTED_TIMEOUT: Final = 0x0204

FORWARD_OPEN_REPLY: Final = 0xD4
LARGE_FORWARD_OPEN_REPLY: Final = 0xDB

PROTOCOL_VERSION: Final = 1
# ListServices: "Communications", version 1, CIP encapsulation over TCP (bit 5) only; the conduit relays
# no class 0/1 UDP I/O (bit 8 clear).
_SERVICES_ITEM: Final = struct.pack("<HH", 1, 0x0020) + b"Communications\x00\x00"


@dataclass(frozen=True, slots=True)
class Header:
    command: int
    length: int
    session: int
    status: int
    context: bytes
    options: int

    @classmethod
    def read(cls, frame: bytes) -> Header:
        """The header of a message the splitter cut (so at least 24 bytes)."""
        return cls(*HEADER.unpack_from(frame, 0))


def split(buf: bytes) -> tuple[bool | None, int]:
    """(True, used) for a complete message, (False, needed) for more bytes, (None, 0) for an invalid stream.

    The same three outcomes as the engine's `enip_split` (docs/enip.md section 1), for the conduit's
    device side and for a build whose engine lacks it.
    """
    if len(buf) >= 4 and int.from_bytes(buf[2:4], "little") > MAX_LENGTH:
        return None, 0
    if len(buf) < HEADER_SIZE:
        return False, HEADER_SIZE - len(buf)
    used = HEADER_SIZE + int.from_bytes(buf[2:4], "little")
    return (True, used) if len(buf) >= used else (False, used - len(buf))


def message(command: int, session: int, context: bytes, data: bytes = b"", status: int = 0) -> bytes:
    return HEADER.pack(command, len(data), session, status, context, 0) + data


def on_link(frame: bytes, session: int, context: int) -> bytes:
    """The message as a link sends it: under the link's session handle and a sender context of the link's."""
    return frame[:4] + session.to_bytes(4, "little") + frame[8:12] + context.to_bytes(8, "little") + frame[20:]


def as_answer_to(reply: bytes, request: bytes) -> bytes:
    """A device's reply under the session handle and sender context of `request` (the client's)."""
    return reply[:4] + request[4:8] + reply[8:12] + request[12:20] + reply[20:]


# -- Common Packet Format ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Items:
    """The first address item and the first data item of a SendRRData / SendUnitData message."""

    address_type: int
    address: bytes
    data_type: int
    data: bytes

    @property
    def connection_id(self) -> int | None:
        if self.address_type == ITEM_CONNECTED_ADDRESS and len(self.address) == 4:
            return int.from_bytes(self.address, "little")
        return None

    @property
    def cip(self) -> bytes | None:
        """The CIP message: an unconnected data item whole, a connected one after its sequence count."""
        if self.data_type == ITEM_UNCONNECTED_DATA:
            return self.data
        if self.data_type == ITEM_CONNECTED_DATA and len(self.data) >= 2:
            return self.data[2:]
        return None

    @property
    def sequence(self) -> bytes:
        return self.data[:2] if self.data_type == ITEM_CONNECTED_DATA else b""


_MAX_ITEMS: Final = 8
# item count 2, null address item (type 0, length 0), unconnected data item type: the common layout
_PLAIN_UNCONNECTED: Final = struct.pack("<HHHH", 2, ITEM_NULL_ADDRESS, 0, ITEM_UNCONNECTED_DATA)


def items(frame: bytes) -> Items | None:
    """The address and data items of a SendRRData / SendUnitData message, or None if they are not there."""
    if frame[HEADER_SIZE + 6 : HEADER_SIZE + 14] == _PLAIN_UNCONNECTED:
        # what nearly every SendRRData is: a null address item, then the unconnected data item
        length = int.from_bytes(frame[HEADER_SIZE + 14 : HEADER_SIZE + 16], "little")
        if HEADER_SIZE + 16 + length <= len(frame):
            return Items(ITEM_NULL_ADDRESS, b"", ITEM_UNCONNECTED_DATA,
                         frame[HEADER_SIZE + 16 : HEADER_SIZE + 16 + length])
    data = frame[HEADER_SIZE:]
    if len(data) < 8:
        return None
    count = int.from_bytes(data[6:8], "little")
    if count > _MAX_ITEMS:
        return None
    offset = 8
    address: tuple[int, bytes] | None = None
    payload: tuple[int, bytes] | None = None
    for _ in range(count):
        if offset + 4 > len(data):
            return None
        kind, length = struct.unpack_from("<HH", data, offset)
        body = data[offset + 4 : offset + 4 + length]
        if len(body) != length:
            return None
        offset += 4 + length
        if kind in (ITEM_NULL_ADDRESS, ITEM_CONNECTED_ADDRESS, 0x8002) and address is None:
            address = (kind, body)
        elif kind in (ITEM_CONNECTED_DATA, ITEM_UNCONNECTED_DATA) and payload is None:
            payload = (kind, body)
    if address is None or payload is None:
        return None
    return Items(address[0], address[1], payload[0], payload[1])


def _cpf(*pairs: tuple[int, bytes]) -> bytes:
    out = [struct.pack("<H", len(pairs))]
    for kind, body in pairs:
        out.append(struct.pack("<HH", kind, len(body)) + body)
    return b"".join(out)


# -- answers zonegate gives itself --------------------------------------------------------------------------


def cip_reply(service: int, general_status: int, extended: tuple[int, ...] = ()) -> bytes:
    """A CIP reply carrying only a status: the reply bit on `service`, no data."""
    status = struct.pack("<BBBB", (service | 0x80) & 0xFF, 0, general_status & 0xFF, len(extended))
    return status + b"".join(struct.pack("<H", word) for word in extended)


def cip_error(frame: bytes, service: int, general_status: int, extended: tuple[int, ...] = (),
              t_o_connection: int | None = None) -> bytes:
    """The answer to SendRRData / SendUnitData `frame` refused with a CIP status (never sent on).

    SendRRData: an unconnected data item with the reply. SendUnitData: the connected address item with the
    T->O connection id (the originator's own, when known) and the request's sequence count.
    """
    header = Header.read(frame)
    reply = cip_reply(service, general_status, extended)
    parsed = items(frame)
    if header.command == SEND_UNIT_DATA and parsed is not None and parsed.connection_id is not None:
        connection = parsed.connection_id if t_o_connection is None else t_o_connection
        body = _cpf((ITEM_CONNECTED_ADDRESS, struct.pack("<I", connection)),
                    (ITEM_CONNECTED_DATA, parsed.sequence + reply))
    else:
        body = _cpf((ITEM_NULL_ADDRESS, b""), (ITEM_UNCONNECTED_DATA, reply))
    return message(header.command, header.session, header.context, struct.pack("<IH", 0, 0) + body)


def unreachable(frame: bytes, service: int, t_o_connection: int | None = None) -> bytes:
    """The gateway's answer when the device did not answer in time or cannot be reached."""
    return cip_error(frame, service, CIP_CONNECTION_FAILURE, (CIP_EXT_UNCONNECTED_TIMEOUT,), t_o_connection)


def encap_error(frame: bytes, status: int) -> bytes:
    """The request's header echoed with an encapsulation status and no data."""
    header = Header.read(frame)
    return message(header.command, header.session, header.context, status=status)


def register_reply(frame: bytes, session: int) -> bytes:
    header = Header.read(frame)
    return message(REGISTER_SESSION, session, header.context, frame[HEADER_SIZE : HEADER_SIZE + 4])


def register_request(context: bytes = bytes(8)) -> bytes:
    return message(REGISTER_SESSION, 0, context, struct.pack("<HH", PROTOCOL_VERSION, 0))


def unregister_request(session: int) -> bytes:
    return message(UNREGISTER_SESSION, session, bytes(8))


def list_identity_request() -> bytes:
    return message(LIST_IDENTITY, 0, bytes(8))


def list_services_reply(frame: bytes) -> bytes:
    header = Header.read(frame)
    return message(LIST_SERVICES, header.session, header.context, _cpf((ITEM_SERVICES, _SERVICES_ITEM)))


def list_interfaces_reply(frame: bytes) -> bytes:
    header = Header.read(frame)
    return message(LIST_INTERFACES, header.session, header.context, _cpf())


def identity_item(reply: bytes) -> bytes | None:
    """The identity item body of a device's ListIdentity reply, or None if it holds none."""
    if len(reply) < HEADER_SIZE + 2 or Header.read(reply).command != LIST_IDENTITY:
        return None
    data = reply[HEADER_SIZE:]
    count = int.from_bytes(data[0:2], "little")
    offset = 2
    for _ in range(min(count, _MAX_ITEMS)):
        if offset + 4 > len(data):
            return None
        kind, length = struct.unpack_from("<HH", data, offset)
        body = data[offset + 4 : offset + 4 + length]
        if len(body) != length:
            return None
        if kind == ITEM_IDENTITY and length >= 33:  # version, sockaddr, ids, revision, status, serial, name
            return bytes(body)
        offset += 4 + length
    return None


def list_identity_reply(frame: bytes, identity: bytes | None, address: tuple[str, int] | None) -> bytes:
    """ListIdentity answered with the learned identity, its socket address replaced by the box's own.

    The device's own address stays inside the zone: a client learns only the address it already dialled.
    With no identity learned, the reply lists no item.
    """
    header = Header.read(frame)
    if identity is None:
        return message(LIST_IDENTITY, header.session, header.context, _cpf())
    body = bytearray(identity)
    if address is not None:
        host, port = address
        try:
            packed = bytes(int(part) for part in host.split("."))
        except ValueError:
            packed = b""
        if len(packed) == 4:
            body[2:18] = struct.pack(">HH4s8s", 2, port, packed, bytes(8))
    return message(LIST_IDENTITY, header.session, header.context, _cpf((ITEM_IDENTITY, bytes(body))))


def forward_open_ids(reply_cip: bytes) -> tuple[int, int] | None:
    """(O->T id, T->O id) of a successful (Large) Forward Open reply, else None."""
    if len(reply_cip) < 12 or reply_cip[0] not in (FORWARD_OPEN_REPLY, LARGE_FORWARD_OPEN_REPLY):
        return None
    if reply_cip[2] != 0:
        return None
    offset = 4 + 2 * reply_cip[3]
    if len(reply_cip) < offset + 8:
        return None
    o_t, t_o = struct.unpack_from("<II", reply_cip, offset)
    return o_t, t_o


UNCONNECTED_SEND: Final = 0x52
_CONNECTION_MANAGER_PATH: Final = (b"\x20\x06\x24\x01", b"\x20\x06\x25\x00\x01\x00")
_MAX_ROUTED: Final = 4  # nested Unconnected Sends, as the engine's MAX_DEPTH


def embedded(message: bytes) -> bytes | None:
    """The request an Unconnected Send to the Connection Manager carries, or None if `message` is not one."""
    if len(message) < 2 or message[0] != UNCONNECTED_SEND:
        return None
    path_end = 2 + 2 * message[1]
    if message[2:path_end] not in _CONNECTION_MANAGER_PATH or len(message) < path_end + 4:
        return None
    size = int.from_bytes(message[path_end + 2 : path_end + 4], "little")
    inner = message[path_end + 4 : path_end + 4 + size]
    return inner if len(inner) == size and size >= 2 else None


def as_answered(frame: bytes, reply: bytes) -> bytes:
    """The request `reply` answers: a routed Unconnected Send is answered by the target's reply to the
    request it carries (its own reply, 0xD2, comes only from a router refusing it), so the carried request
    is put in its place, as many levels down as the reply's service says. Anything else is `frame`.
    """
    got = items(reply)
    answer = got.cip if got is not None and got.data_type == ITEM_UNCONNECTED_DATA else None
    parsed = items(frame)
    message = parsed.cip if parsed is not None and parsed.data_type == ITEM_UNCONNECTED_DATA else None
    if not answer or message is None or parsed is None:
        return frame
    unwrapped = False
    for _ in range(_MAX_ROUTED):
        if answer[0] == (message[0] | 0x80):
            break
        inner = embedded(message)
        if inner is None:
            break
        message, unwrapped = inner, True
    if not unwrapped:
        return frame
    header = Header.read(frame)
    body = frame[HEADER_SIZE : HEADER_SIZE + 6] + _cpf((parsed.address_type, parsed.address),
                                                       (ITEM_UNCONNECTED_DATA, message))
    return message_of(header, body)


def message_of(header: Header, data: bytes) -> bytes:
    return HEADER.pack(header.command, len(data), header.session, header.status, header.context, header.options) + data


def on_t_o(request: bytes, reply: bytes, t_o: dict[int, int]) -> bytes | None:
    """A connected `reply` that came back on the request's own (O->T) connection id, moved to the T->O id
    the Forward Open reply named; None when it is not such a reply or that id is not known."""
    if Header.read(reply).command != SEND_UNIT_DATA or Header.read(request).command != SEND_UNIT_DATA:
        return None
    asked, got = items(request), items(reply)
    if asked is None or got is None or asked.connection_id is None or got.connection_id != asked.connection_id:
        return None
    back = t_o.get(asked.connection_id)
    if back is None or back == asked.connection_id:
        return None
    header = Header.read(reply)
    body = reply[HEADER_SIZE : HEADER_SIZE + 6] + _cpf((ITEM_CONNECTED_ADDRESS, struct.pack("<I", back)),
                                                       (got.data_type, got.data))
    return message_of(header, body)

