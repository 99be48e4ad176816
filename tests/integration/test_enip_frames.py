"""The messages the EtherNet/IP conduit writes itself (zonegate/dataplane/enip_frames.py), read back field
by field, and the device-side splitter against the engine's."""

from __future__ import annotations

import struct

from hypothesis import given
from hypothesis import strategies as st

from tests.integration import enip_sim as wire
from tests.integration.enip_sim import Reply
from zonegate import _engine
from zonegate.dataplane import enip_frames as frames

SESSION = 0x1122_3344


def test_refusal_of_send_rr_data_is_a_cip_reply_to_the_outer_service() -> None:
    request = wire.send_rr_data(wire.unconnected_send(wire.write_tag("Secret", 0)), SESSION, b"ctx-0001")
    answer = frames.cip_error(request, 0x52, 0x0F)
    assert answer[:24] == struct.pack("<HHII8sI", 0x6F, len(answer) - 24, SESSION, 0, b"ctx-0001", 0)
    assert answer[24:] == bytes.fromhex(
        "00000000 0000"  # interface handle, timeout
        "0200"  # two items
        "0000 0000"  # null address
        "b200 0400"  # unconnected data, 4 bytes
        "d2 00 0f 00"  # Unconnected Send reply, reserved, privilege violation, no extended status
    )


def test_refusal_of_send_unit_data_answers_on_the_t_o_id_with_the_sequence() -> None:
    request = wire.send_unit_data(wire.write_tag("Secret", 0), SESSION, connection=0xAAAA_0001, sequence=7)
    reply = Reply(frames.cip_error(request, 0x4D, 0x0F, t_o_connection=0xBBBB_0002))
    assert reply.command == 0x70 and reply.session == SESSION
    assert struct.unpack_from("<HHI", reply.frame, 24 + 8) == (0xA1, 4, 0xBBBB_0002)
    assert reply.frame[-6:] == bytes.fromhex("0700 cd 00 0f 00")


def test_unreachable_is_connection_failure_with_extended_status_0204() -> None:
    reply = Reply(frames.unreachable(wire.send_rr_data(wire.read_tag("A"), SESSION), 0x4C))
    assert (reply.service, reply.general_status, reply.extended) == (0xCC, 0x01, (0x0204,))


def test_encapsulation_refusal_echoes_the_header() -> None:
    request = wire.header(0x72, b"\x01\x02", SESSION, b"indicate")
    assert frames.encap_error(request, 1) == struct.pack("<HHII8sI", 0x72, 0, SESSION, 1, b"indicate", 0)


def test_list_identity_takes_the_box_address() -> None:
    item = (struct.pack("<H", 1) + struct.pack(">HH4s8s", 2, 44818, bytes((192, 168, 10, 12)), bytes(8))
            + struct.pack("<HHHBBHI", 1, 0x0E, 0x36, 20, 11, 0x3060, 0x006C061A) + b"\x05PRESS" + b"\x03")
    device_reply = frames.message(0x63, 0, bytes(8), struct.pack("<HHH", 1, 0x0C, len(item)) + item)
    learned = frames.identity_item(device_reply)
    assert learned == item
    answer = frames.list_identity_reply(wire.header(0x63, b"", 0, b"discover"), learned, ("10.3.0.1", 2221))
    body = answer[24 + 6 :]
    assert struct.unpack_from(">HH4s", body, 2) == (2, 2221, bytes((10, 3, 0, 1)))
    assert body[18:] == item[18:] and answer[12:20] == b"discover"
    assert frames.list_identity_reply(wire.header(0x63, b"", 0), None, None)[24:] == b"\x00\x00"


def test_a_routed_request_is_answered_by_the_reply_to_what_it_carries() -> None:
    inner = wire.read_tag("Line1_Speed")
    request = wire.send_rr_data(wire.unconnected_send(wire.unconnected_send(inner)), SESSION)
    target_reply = wire.send_rr_data(bytes((0xCC, 0, 0, 0)) + struct.pack("<Hh", 0xC3, 5), SESSION)
    answered = frames.as_answered(request, target_reply)
    parsed = frames.items(answered)
    assert parsed is not None and parsed.cip == inner and answered[:4] == request[:2] + struct.pack(
        "<H", len(answered) - 24)
    router_refusal = wire.send_rr_data(bytes((0xD2, 0, 1, 1, 4, 2)), SESSION)
    assert frames.as_answered(request, router_refusal) is request


def test_a_connected_reply_on_the_o_t_id_is_moved_to_the_t_o_id() -> None:
    request = wire.send_unit_data(wire.read_tag("A"), SESSION, connection=0x10, sequence=3)
    reply = wire.send_unit_data(bytes((0xCC, 0, 0, 0)), SESSION, connection=0x10, sequence=3)
    moved = frames.on_t_o(request, reply, {0x10: 0x20})
    assert moved is not None and frames.items(moved).connection_id == 0x20  # type: ignore[union-attr]
    assert frames.on_t_o(request, reply, {}) is None


@given(st.binary(max_size=64), st.integers(0, 0xFFFF))
def test_device_side_splitter_agrees_with_the_engine(tail: bytes, length: int) -> None:
    buf = struct.pack("<HH", 0x6F, length) + tail
    for cut in (buf, buf[:3], buf[: 24 + length]):
        complete, n = frames.split(cut)
        status, m = _engine.enip_split(cut)
        expected = {_engine.COMPLETE: True, _engine.INCOMPLETE: False, _engine.INVALID: None}[status]
        assert complete is expected
        if complete is not None:
            assert n == m
