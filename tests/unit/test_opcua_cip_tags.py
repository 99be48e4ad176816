"""CIP tags of the OPC UA converter: the Logix value codec, Read/Write Tag and Multiple Service Packet
bytes, packet planning, CIP status -> OPC UA status, and the policy's cip_tag errors and warnings."""

from __future__ import annotations

import math
import struct
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from test_policy_support import issues_of, load_text


from zonegate import _engine
from zonegate.convert.opcua_cip import MAX_PER_PACKET, MAX_REPLY_BYTES, cip_writers_of, plan_cip_reads
from zonegate.convert.opcua_cip_codec import (
    INTEGER_LIMITS,
    REPLY_BYTES,
    STRING_HANDLE,
    STRUCTURE,
    TYPE_CODES,
    TypeMismatch,
    decode_value,
    encode_value,
    multiple,
    parse_reply,
    read_request,
    split_multiple,
    status_of,
    symbol_path,
    write_request,
)
from zonegate.convert.opcua_poll import BAD_NO_COMMUNICATION, BAD_USER_ACCESS_DENIED
from zonegate.convert.opcua_tags import CodecError, Tag, TagError, settings_from_policy, tags_from_mapping
from zonegate.engine import CompiledPolicy


def cip(type_: str, *, name: str = "T", cip_tag: str = "Line1.Speed", **kw: object) -> Tag:
    return Tag(name=name, device="logix", table="cip", address=0, type=type_, cip_tag=cip_tag, **kw)  # type: ignore[arg-type]


def reply_data(type_: str, raw: bytes) -> bytes:
    return struct.pack("<H", TYPE_CODES[type_]) + raw


# -- codec ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("type_", ["sint", "int", "dint", "lint"])
@given(data=st.data())
def test_integers_round_trip_over_their_whole_range(type_: str, data: st.DataObject) -> None:
    lo, hi = INTEGER_LIMITS[type_]
    value = data.draw(st.integers(lo, hi))
    tag = cip(type_)
    raw = encode_value(tag, value)
    assert decode_value(tag, reply_data(type_, raw)) == value
    with pytest.raises(CodecError):
        encode_value(tag, data.draw(st.one_of(st.integers(max_value=lo - 1), st.integers(min_value=hi + 1))))


@pytest.mark.parametrize("type_", ["real", "lreal"])
@given(value=st.floats(allow_nan=False, width=32))
def test_floats_round_trip(type_: str, value: float) -> None:
    tag = cip(type_)
    assert decode_value(tag, reply_data(type_, encode_value(tag, value))) == value


@given(raw=st.integers(-(2**31), 2**31 - 1), scale=st.sampled_from([0.1, 0.5, 2.0]), offset=st.sampled_from([0.0, -10.0]))
def test_scale_and_offset_apply_both_ways(raw: int, scale: float, offset: float) -> None:
    tag = cip("dint", scale=scale, offset=offset)
    value = decode_value(tag, reply_data("dint", struct.pack("<i", raw)))
    assert isinstance(value, float) and math.isclose(value, raw * scale + offset)
    assert struct.unpack("<i", encode_value(tag, value))[0] == raw


def test_bool_is_any_nonzero_byte_and_writes_ff_or_00() -> None:
    tag = cip("bool")
    assert decode_value(tag, reply_data("bool", b"\x01")) is True
    assert decode_value(tag, reply_data("bool", b"\xff")) is True
    assert decode_value(tag, reply_data("bool", b"\x00")) is False
    assert (encode_value(tag, True), encode_value(tag, False)) == (b"\xff", b"\x00")
    with pytest.raises(CodecError):
        encode_value(tag, 2)


def test_values_of_the_wrong_kind_or_size_are_refused() -> None:
    with pytest.raises(CodecError):
        encode_value(cip("dint"), "12")
    with pytest.raises(CodecError):
        encode_value(cip("dint"), 1.5)
    with pytest.raises(CodecError):
        encode_value(cip("real"), 1e39)
    with pytest.raises(CodecError):
        encode_value(cip("string"), "x")
    with pytest.raises(TypeMismatch):
        decode_value(cip("dint"), reply_data("int", b"\x01\x00"))
    with pytest.raises(CodecError):
        decode_value(cip("dint"), reply_data("dint", b"\x01\x00"))
    with pytest.raises(CodecError):
        decode_value(cip("dint"), b"\xc4")


def test_strings_decode_from_the_logix_structure_and_cip_strings() -> None:
    tag = cip("string")
    logix = struct.pack("<HHi", STRUCTURE, STRING_HANDLE, 5) + b"hello".ljust(82, b"\x00") + b"\x00\x00"
    assert decode_value(tag, logix) == "hello"
    assert decode_value(tag, struct.pack("<H", 0xD0) + struct.pack("<H", 5) + b"hello\x00") == "hello"
    assert decode_value(tag, struct.pack("<H", 0xD0) + struct.pack("<H", 2) + b"ok") == "ok"
    assert decode_value(tag, struct.pack("<HB", 0xDA, 3) + b"abc") == "abc"
    with pytest.raises(CodecError):  # a length past the 82 characters
        decode_value(tag, struct.pack("<HHi", STRUCTURE, STRING_HANDLE, 83) + bytes(84))
    with pytest.raises(TypeMismatch):  # another structure
        decode_value(tag, struct.pack("<HHi", STRUCTURE, 0x1234, 1) + bytes(82))
    with pytest.raises(CodecError):
        decode_value(tag, struct.pack("<HH", 0xD0, 9) + b"short")


# -- requests and replies -----------------------------------------------------------------------------------


def test_paths_name_each_part_and_its_indices() -> None:
    assert symbol_path("Speed") == b"\x91\x05Speed\x00"
    assert symbol_path("Line1.Speed") == b"\x91\x05Line1\x00\x91\x05Speed\x00"
    assert symbol_path("Recipe[3]") == b"\x91\x06Recipe\x28\x03"
    assert symbol_path("Grid[1,300]") == b"\x91\x04Grid\x28\x01\x29\x00\x2c\x01"
    assert symbol_path("A[70000]") == b"\x91\x01A\x00\x2a\x00" + struct.pack("<I", 70000)
    assert symbol_path("Program:Main.X") == b"\x91\x0cProgram:Main\x91\x01X\x00"


def test_read_and_write_tag_requests_are_what_the_engine_decides() -> None:
    tag = cip("int", cip_tag="Line1.Speed")
    assert read_request(tag) == b"\x4c\x08\x91\x05Line1\x00\x91\x05Speed\x00\x01\x00"
    assert write_request(tag, -2) == b"\x4d\x08\x91\x05Line1\x00\x91\x05Speed\x00\xc3\x00\x01\x00\xfe\xff"
    leaves = _engine.cip_flatten(multiple([read_request(tag), read_request(cip("dint", cip_tag="Count"))]))
    assert [(leaf[0], leaf[3], leaf[7]) for leaf in leaves] == [
        ("read_tag", "Line1.Speed", 1), ("read_tag", "Count", 1)]


def test_multiple_service_replies_split_per_request() -> None:
    items = [b"\xcc\x00\x00\x00\xc3\x00\x05\x00", b"\xcc\x00\x05\x00"]
    body = struct.pack("<HHH", 2, 6, 6 + len(items[0])) + b"".join(items)
    status, data = parse_reply(b"\x8a\x00\x1e\x00" + body, 0x0A)
    assert status == 0x1E
    assert split_multiple(data, 2) == items
    assert parse_reply(items[1], 0x4C) == (0x05, b"")
    with pytest.raises(CodecError):
        split_multiple(data, 3)
    with pytest.raises(CodecError):
        split_multiple(struct.pack("<HHH", 2, 6, 2) + b"".join(items), 2)  # offset into the table
    with pytest.raises(CodecError):
        parse_reply(b"\xcd\x00\x00\x00", 0x4C)


def test_cip_statuses_map_to_opcua_statuses() -> None:
    assert status_of(0x01) == BAD_NO_COMMUNICATION  # zonegate's answer for a device down
    assert status_of(0x05) == 0x803E0000  # BadNotFound: no such tag
    assert status_of(0x0F) == BAD_USER_ACCESS_DENIED
    assert status_of(0x08) == 0x803D0000
    assert status_of(0xFF) == 0x808B0000


def test_packets_hold_at_most_20_reads_and_500_reply_bytes() -> None:
    tags = [cip("dint", name=f"D{i}", cip_tag=f"D{i}", scan=1.0) for i in range(45)]
    tags += [cip("string", name=f"S{i}", cip_tag=f"S{i}", scan=0.5) for i in range(7)]
    blocks = plan_cip_reads(tags)
    assert [(b.scan, len(b.tags)) for b in blocks] == [(0.5, 5), (0.5, 2), (1.0, 20), (1.0, 20), (1.0, 5)]
    for block in blocks:
        assert len(block.tags) <= MAX_PER_PACKET
        assert sum(REPLY_BYTES[t.type] + 2 for t in block.tags) <= MAX_REPLY_BYTES
        assert block.table == "cip"


# -- the policy ---------------------------------------------------------------------------------------------

BASE = """\
version: 1
zones:
  cell-a: {subnet: 192.168.10.0/24}
devices:
  logix:
    zone: cell-a
    enip: {host: 127.0.0.1, port: 44818}
  plc:
    zone: cell-a
    modbus: {host: 127.0.0.1, port: 5020}
principals:
  poller: {gateway: true}
  scada: {opcua_user: scada}
rules:
  - id: poll
    principal: poller
    device: logix
    cip:
      - {services: [read_tag], tags: ["Line1.*", Count]}
  - id: scada-write
    principal: scada
    device: logix
    cip:
      - {services: [write_tag], tags: [Line1.Speed, "Recipe[0..9]"]}
opcua:
  poll_principal: poller
  tls: {cert: opcua.crt, key: opcua.key, ca: ca.crt}
tags:
"""


def policy_with(tags: str) -> str:
    return BASE + tags


def test_cip_tags_load_with_their_types_and_no_warnings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    text = policy_with(
        "  logix:\n"
        "    - {name: Speed, cip_tag: Line1.Speed, type: real, writable: true, min: 0, max: 3000, unit: rpm}\n"
        "    - {name: Count, cip_tag: Count, type: dint, scale: 0.5}\n"
        "    - {name: Label, cip_tag: Line1.Label, type: string}\n"
    )
    policy = load_text(tmp_path, text, monkeypatch)
    assert policy.warnings == ()
    speed = policy.tags["logix"][0]
    assert (speed.cip_tag, speed.type, speed.table, speed.address, speed.writable) == (
        "Line1.Speed", "real", None, None, True)
    settings = settings_from_policy(policy)
    assert [(t.name, t.cip_tag, t.table, t.type, t.scaled) for t in settings.tags] == [
        ("Speed", "Line1.Speed", "cip", "real", False), ("Count", "Count", "cip", "dint", True),
        ("Label", "Line1.Label", "cip", "string", False)]


@pytest.mark.parametrize(("tag", "expected"), [
    ("  plc:\n    - {name: X, cip_tag: Count, type: dint}\n",
     "x.yaml:30:17: tags.plc[0].cip_tag: device 'plc' has no enip section: CIP tags are read and written over EtherNet/IP"),
    ("  logix:\n    - {name: X, table: holding, address: 0, type: int16}\n",
     "x.yaml:30:17: tags.logix[0].table: device 'logix' has no modbus section: table/address tags are Modbus values; "
     "name a Logix tag with cip_tag instead"),
    ("  logix:\n    - {name: X, cip_tag: Count, type: dint, address: 4}\n",
     "x.yaml:30:45: tags.logix[0].address: address is for Modbus tags; a cip_tag tag is read and written by name"),
    ("  logix:\n    - {name: X, cip_tag: Count, type: dint, word_order: little}\n",
     "x.yaml:30:45: tags.logix[0].word_order: word_order is for Modbus tags; a cip_tag tag is read and written by name"),
    ("  logix:\n    - {name: X, cip_tag: 1Count, type: dint}\n",
     "x.yaml:30:17: tags.logix[0].cip_tag: bad CIP tag name '1Count': dotted Logix names (letters, digits, '_', not "
     "starting with a digit), each with optional [i] or [i,j] indices, optionally after Program:NAME."),
    ("  logix:\n    - {name: X, cip_tag: Count, type: uint16}\n",
     "x.yaml:30:33: tags.logix[0].type: uint16 is a Modbus type; a CIP tag is bool, sint, int, dint, lint, real, "
     "lreal, string"),
    ("  logix:\n    - {name: X, cip_tag: Line1.Label, type: string, writable: true}\n",
     "x.yaml:30:53: tags.logix[0].writable: CIP string tags are read-only: writable must be false"),
    ("  plc:\n    - {name: X, table: holding, address: 0, type: dint}\n",
     "x.yaml:30:45: tags.plc[0].type: dint is a Logix type, for cip_tag tags; Modbus tags are int16, uint16, int32, "
     "uint32, int64, uint64, float32, float64, bool or string"),
    ("  logix:\n    - {name: X, cip_tag: Count, type: sint, max: 200}\n",
     "x.yaml:30:45: tags.logix[0].max: max 200 is outside what a sint with scale 1 and offset 0 can hold (-128 to 127)"),
])
def test_cip_tag_errors_name_file_line_and_field(tag: str, expected: str, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    assert issues_of(tmp_path, policy_with(tag), monkeypatch) == [expected]


def test_cip_tags_no_rule_reads_or_writes_are_warnings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    text = policy_with(
        "  logix:\n"
        "    - {name: Speed, cip_tag: Line1.Speed, type: real, writable: true}\n"
        "    - {name: Recipe, cip_tag: 'Recipe[12]', type: dint, writable: true}\n"
    )
    warnings = [str(w) for w in load_text(tmp_path, text, monkeypatch).warnings]
    assert warnings == [
        "x.yaml:31:7: tags.logix[1]: warning: no rule lets the poll principal read_tag 'Recipe[12]' of 'logix': "
        "tag 'Recipe' will always be Bad",
        "x.yaml:31:57: tags.logix[1].writable: warning: no rule lets any opcua_user principal write_tag 'Recipe[12]' "
        "of 'logix': writes to 'Recipe' are always denied",
    ]


def test_user_access_follows_the_cip_write_rules(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    text = policy_with(
        "  logix:\n"
        "    - {name: Speed, cip_tag: line1.speed, type: real, writable: true}\n"
        "    - {name: R3, cip_tag: 'Recipe[3]', type: dint, writable: true}\n"
        "    - {name: R12, cip_tag: 'Recipe[12]', type: dint, writable: true}\n"
    )
    policy = load_text(tmp_path, text, monkeypatch)
    ir = CompiledPolicy(policy.ir()).ir
    tags = {t.name: t for t in settings_from_policy(policy).tags}
    assert cip_writers_of(ir, tags["Speed"]) == {"scada"}  # names compare case-insensitively
    assert cip_writers_of(ir, tags["R3"]) == {"scada"}
    assert cip_writers_of(ir, tags["R12"]) == frozenset()


def test_the_converter_reads_cip_tags_from_mappings_too() -> None:
    (tag,) = tags_from_mapping({"logix": [{"name": "S", "cip_tag": "Line1.Speed", "type": "lreal", "writable": True}]})
    assert (tag.cip_tag, tag.table, tag.type, tag.words) == ("Line1.Speed", "cip", "lreal", 1)
    with pytest.raises(TagError, match="address is for Modbus tags"):
        tags_from_mapping({"logix": [{"name": "S", "cip_tag": "X", "type": "dint", "address": 3}]})
    with pytest.raises(TagError, match="not a Logix type"):
        tags_from_mapping({"logix": [{"name": "S", "cip_tag": "X", "type": "uint16"}]})
    with pytest.raises(TagError, match="not a Logix tag name"):
        tags_from_mapping({"logix": [{"name": "S", "cip_tag": "X Y", "type": "dint"}]})


# -- the poll of one packet, per tag ------------------------------------------------------------------------


class ScriptedDevice:
    """Answers the one packet it is sent with replies made here: a CIP error status for one tag of a
    packet is what no simulator in reach produces (cpppo drops the connection on an unknown tag)."""

    def __init__(self, reply: bytes) -> None:
        self.reply = reply
        self.sent: list[bytes] = []

    async def exchange(self, device: str, message: bytes, timeout: float) -> bytes:
        self.sent.append(message)
        return self.reply


def test_a_packet_reply_sets_each_tag_on_its_own(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import asyncio

    from zonegate.convert.opcua_cip import CipReader
    from zonegate.convert.opcua_poll import Poller

    text = policy_with(
        "  logix:\n"
        "    - {name: Speed, cip_tag: Line1.Speed, type: real}\n"
        "    - {name: Gone, cip_tag: Line1.Gone, type: dint}\n"
        "    - {name: Other, cip_tag: Line1.Other, type: dint}\n"
        "    - {name: Secret, cip_tag: Secret, type: dint}\n"
    )
    policy = load_text(tmp_path, text, monkeypatch)
    settings = settings_from_policy(policy)
    items = [b"\xcc\x00\x00\x00" + reply_data("real", struct.pack("<f", 2.5)), b"\xcc\x00\x05\x00",
             b"\xcc\x00\x00\x00" + reply_data("int", b"\x01\x00")]
    offsets, at = [], 2 + 2 * len(items)
    for item in items:
        offsets.append(at)
        at += len(item)
    body = struct.pack("<H", len(items)) + b"".join(struct.pack("<H", o) for o in offsets) + b"".join(items)
    device = ScriptedDevice(b"\x8a\x00\x1e\x00" + body)
    published: dict[str, tuple[object, int]] = {}

    async def publish(tag: Tag, value: object, status: int, when: float) -> None:
        published[tag.name] = (value, status)

    (block,) = plan_cip_reads(settings.tags)
    poller = Poller([block], CompiledPolicy(policy.ir()), "poller", device, publish, 1.0)  # type: ignore[arg-type]
    poller.cip = CipReader(device)  # type: ignore[arg-type]
    asyncio.run(poller.read(block))
    assert published == {
        "Speed": (2.5, 0),
        "Gone": (None, 0x803E0000),  # BadNotFound
        "Other": (None, 0x80740000),  # BadTypeMismatch: an INT for a DINT tag
        "Secret": (None, BAD_USER_ACCESS_DENIED),  # the poller's rule does not list it: never sent
    }
    (sent,) = device.sent
    assert [leaf[3] for leaf in _engine.cip_flatten(sent)] == ["Line1.Speed", "Line1.Gone", "Line1.Other"]
