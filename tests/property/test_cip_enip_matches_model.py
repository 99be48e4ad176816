"""The Rust engine's encapsulation decisions against the reference model (docs/cip-engine.md sections 6 and 8).

Scripted client sessions: session commands, commands never forwarded, SendRRData with random CIP
messages and Forward Opens of every transport class, the device's Forward Open and Forward Close
replies (through `EnipSession.observe_reply`), and SendUnitData on open, pending, closed and unknown
connections, with CPF item lists right and wrong. The model sees each message as the test built it and
keeps its own connection table; the engine sees only the bytes.
"""

from __future__ import annotations

import json
import os
import struct
from typing import Any

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from tests.property.test_cip_engine_matches_model import (
    CONNECTION_MANAGER,
    ROUTES,
    cip_policies,
    fields,
    forward_close,
    forward_open,
    logical,
    messages,
    multiple_service,
    route_path,
    unconnected_send,
)
from zonegate import _engine
from zonegate import reference_model_cip as model

SCALE = max(1, int(os.environ.get("ZONEGATE_PROPERTY_SCALE", "1")))
SESSIONS = settings(max_examples=100 * SCALE, deadline=None, suppress_health_check=[HealthCheck.too_slow])

SESSION_HANDLE = 0x1122_3344
TRIADS = ((7, 0x1337, 42), (8, 0x1337, 42), (7, 0x0001, 1))
CONNECTION_IDS = (0x1000, 0x2000, 0x3000)
TARGET = logical(0, 0x02) + logical(1, 1)


def encap(command: int, data: bytes, context: bytes = b"ctx00001") -> bytes:
    """| command | length | session | status | sender context | options | data |"""
    return struct.pack("<HHII8sI", command, len(data), SESSION_HANDLE, 0, context, 0) + data


def send_data(command: int, items: tuple[tuple[int, bytes], ...], context: bytes = b"ctx00001") -> bytes:
    """| interface handle u32 | timeout u16 | item count | (type, length, data) ... |"""
    cpf = struct.pack("<H", len(items)) + b"".join(struct.pack("<HH", t, len(d)) + d for t, d in items)
    return encap(command, struct.pack("<IH", 0, 10 if command == model.SEND_RR_DATA else 0) + cpf, context)


def unconnected(cip: bytes) -> tuple[tuple[int, bytes], ...]:
    return ((model.NULL_ADDRESS, b""), (model.UNCONNECTED_DATA, cip))


def connected(connection_id: int, sequence: int, cip: bytes) -> tuple[tuple[int, bytes], ...]:
    return ((model.CONNECTED_ADDRESS, struct.pack("<I", connection_id)),
            (model.CONNECTED_DATA, struct.pack("<H", sequence) + cip))


def reply(service: int, status: int, data: bytes = b"") -> bytes:
    return bytes([service | 0x80, 0, status, 0]) + data


def open_reply(triad: tuple[int, int, int], ot_id: int) -> bytes:
    """ot id, to id, triad, O->T and T->O actual packet intervals, application reply size, reserved."""
    return struct.pack("<II", ot_id, ot_id + 1) + struct.pack("<HHI", *triad) + struct.pack("<II", 100_000, 100_000) \
        + bytes([0, 0])


@st.composite
def sessions(draw: st.DrawFn) -> list[tuple[str, Any]]:
    script: list[tuple[str, Any]] = []
    for _ in range(draw(st.integers(1, 10))):
        kind = draw(st.sampled_from(["open", "open", "reply", "unit", "unit", "close", "rr", "command", "items",
                                     "conversation", "conversation"]))
        triad = draw(st.sampled_from(TRIADS))
        hops = draw(st.sampled_from(ROUTES))
        if kind == "open":
            large = draw(st.booleans())
            transport = draw(st.sampled_from([0x83, 0xA3, 0x83, 0x01]))
            script.append(("open", (forward_open(large, transport, route_path(hops) + TARGET, triad), triad, hops)))
        elif kind == "conversation":
            ot_id = draw(st.sampled_from(CONNECTION_IDS))
            cip = forward_open(draw(st.booleans()), 0xA3, route_path(hops) + TARGET, triad)
            chain = draw(st.sampled_from([(), (), ((1, b"\x00"),), ((2, b"10.0.0.5"), (1, b"\x03"))]))
            if chain:
                cip = unconnected_send(cip, chain)  # to a controller behind a backplane
            script.append(("open", (cip, triad, chain + hops)))
            script.append(("reply", (triad, ot_id, 0)))
            for sequence in range(draw(st.integers(1, 3))):
                script.append(("unit", (ot_id, sequence, draw(messages()))))
        elif kind == "reply":
            script.append(("reply", (triad, draw(st.sampled_from(CONNECTION_IDS)), draw(st.sampled_from([0, 0, 1])))))
        elif kind == "unit":
            script.append(("unit", (draw(st.sampled_from(CONNECTION_IDS)), draw(st.integers(0, 3)), draw(messages()))))
        elif kind == "close":
            script.append(("close", (forward_close(route_path(hops) + TARGET, triad), triad, draw(st.booleans()))))
        elif kind == "rr":
            script.append(("rr", draw(messages())))
        elif kind == "command":
            command = draw(st.sampled_from([model.NOP, model.LIST_IDENTITY, model.LIST_SERVICES,
                                            model.LIST_INTERFACES, 0x72, 0x73, 0x01, 0x6E]))
            script.append(("command", command))
        else:
            cip = draw(messages())
            items = draw(st.sampled_from([
                ((model.UNCONNECTED_DATA, cip), (model.NULL_ADDRESS, b"")),  # swapped: still one of each
                ((model.NULL_ADDRESS, b""),),
                ((model.NULL_ADDRESS, b""), (model.UNCONNECTED_DATA, cip), (model.UNCONNECTED_DATA, cip)),
                ((model.SEQUENCED_ADDRESS, struct.pack("<II", 0x1000, 1)), (model.CONNECTED_DATA, b"\x01\x00" + cip)),
                ((model.CONNECTED_ADDRESS, struct.pack("<I", 0x1000)), (model.UNCONNECTED_DATA, cip)),
            ]))
            script.append(("items", (draw(st.sampled_from([model.SEND_RR_DATA, model.SEND_UNIT_DATA])), items)))
    return script


def flatten(cip: bytes) -> list[model.Leaf] | str:
    try:
        return [model.Leaf.from_binding(t) for t in _engine.cip_flatten(cip)]
    except ValueError as exc:
        return str(exc)


def ports(path: bytes) -> tuple[model.Hop, ...]:
    """The port segments of an EPATH, read back through the parser as a request path."""
    leaves = flatten(bytes([0x0E, len(path) // 2]) + path)
    assert not isinstance(leaves, str)
    return leaves[0].hops


def delivered(cip: bytes) -> tuple[bytes, tuple[model.Hop, ...]]:
    """The request a chain of Unconnected Sends delivers, and the chain's hops (outermost first)."""
    chain: tuple[model.Hop, ...] = ()
    while cip[:1] == b"\x52" and cip[2:2 + len(CONNECTION_MANAGER)] == CONNECTION_MANAGER:
        data = cip[2 + 2 * cip[1]:]
        size = struct.unpack_from("<H", data, 2)[0]
        route_at = 4 + size + size % 2
        chain += ports(data[route_at + 2:])
        cip = data[4:4 + size]
    return cip, chain


def opening(cip: bytes) -> tuple[model.Triad, tuple[model.Hop, ...]] | None:
    """What the sender of `cip` knows: when the message is, or a chain of Unconnected Sends delivers, a
    (Large) Forward Open whose data reads, its triad and the route its connection takes (section 8)."""
    leaves = flatten(cip)
    if isinstance(leaves, str) or len(leaves) != 1 or leaves[0].data_error is not None \
            or leaves[0].service not in ("forward_open", "large_forward_open"):
        return None
    inner, chain = delivered(cip)
    if inner[0] not in (0x54, 0x5B):
        return None  # inside a Multiple Service Packet: decided, not recorded
    data = inner[2 + 2 * inner[1]:]
    p = 4 if inner[0] == 0x5B else 2
    triad = struct.unpack_from("<HHI", data, 10)
    fixed = 26 + p + 4 + p + 2  # up to the connection path size (enip.md section 7)
    return (triad[0], triad[1], triad[2]), chain + ports(data[fixed:])


def run(ir: dict[str, Any], principal: int, script: list[tuple[str, Any]]) -> list[tuple[int, str | None]]:
    """Plays the script against both; the engine's (reason, malformed kind) per decided message."""
    engine = _engine.Engine(json.dumps(ir))
    reference = model.CipReferenceModel(ir)
    session, mirror = _engine.EnipSession(), model.ModelSession()
    now = 0
    sent_opens: dict[tuple[int, int, int], bytes] = {}
    decided: list[tuple[int, str | None]] = []
    for n, (kind, arg) in enumerate(script):
        now += 250_000_000
        context = struct.pack("<Q", n)
        if kind == "open":
            cip, triad, hops = arg
            frame = send_data(model.SEND_RR_DATA, unconnected(cip), context)
            message = model.EnipMessage(model.SEND_RR_DATA, unconnected(cip), opening(cip))
            assert message.forward_open == (triad, hops)
            sent_opens[triad] = frame
        elif kind == "reply":
            triad, ot_id, status = arg
            request = sent_opens.get(triad)
            if request is None:
                continue
            # the target answers with the Forward Open's own reply, through any Unconnected Sends
            service = delivered(request[24 + 6 + 2 + 4 + 4:])[0][0]
            answer = reply(service, status, open_reply(triad, ot_id) if status == 0 else b"")
            back = send_data(model.SEND_RR_DATA, unconnected(answer), request[12:20])
            assert session.observe_reply(request, back)
            if status == 0:
                mirror.replied(triad, ot_id)
            else:
                mirror.refused(triad)
            assert session.connections == len(mirror)
            continue
        elif kind == "unit":
            connection_id, sequence, cip = arg
            frame = send_data(model.SEND_UNIT_DATA, connected(connection_id, sequence, cip), context)
            message = model.EnipMessage(model.SEND_UNIT_DATA, connected(connection_id, sequence, cip))
        elif kind == "close":
            cip, triad, succeeds = arg
            frame = send_data(model.SEND_RR_DATA, unconnected(cip), context)
            message = model.EnipMessage(model.SEND_RR_DATA, unconnected(cip))
        elif kind == "rr":
            frame = send_data(model.SEND_RR_DATA, unconnected(arg), context)
            message = model.EnipMessage(model.SEND_RR_DATA, unconnected(arg), opening(arg))
        elif kind == "command":
            frame = encap(arg, struct.pack("<HH", 1, 0) if arg == model.REGISTER_SESSION else b"", context)
            message = model.EnipMessage(arg)
        else:
            command, items = arg
            frame = send_data(command, items, context)
            payload = next((d for t, d in items if t in (model.UNCONNECTED_DATA, model.CONNECTED_DATA)), None)
            carried = opening(payload) if command == model.SEND_RR_DATA and payload is not None else None
            message = model.EnipMessage(command, items, carried)
        want = model.decide_enip(reference, principal, 0, mirror, message, flatten, now)
        got = engine.decide_enip(principal, 0, session, frame, now)
        assert (*fields(got), got.command, got.encap_status) == (*fields(want), want.command, want.encap_status), \
            (n, kind, frame.hex())
        assert session.connections == len(mirror), (n, kind)
        decided.append((got.reason, got.malformed))
        if kind == "close" and succeeds and got.forward:
            assert session.observe_reply(frame, send_data(model.SEND_RR_DATA, unconnected(reply(0x4E, 0)), context))
            mirror.closed(arg[1])
            assert session.connections == len(mirror)
    return decided


ALL_SERVICES = list(_engine.cip_service_names())


@SESSIONS
@given(ir=cip_policies(), principal=st.sampled_from([0, 0, 0, 1, 2]), script=sessions())
# Found when the engine and the model disagreed on whether a connection was open: pinned.
@example(
    ir={'version': 1,
     'mode': 'enforce',
     'principals': [{'name': 'a'}, {'name': 'b'}],
     'devices': [{'name': 'plc',
       'zone': 'z',
       'host': '10.0.0.1',
       'port': 44818,
       'units': None,
       'enip': {'host': '10.0.0.1', 'port': 44818}},
      {'name': 'other',
       'zone': 'z',
       'host': '10.0.0.2',
       'port': 502,
       'units': None,
       'enip': None}],
     'rules': [{'id': 'r0',
       'principals': [0],
       'devices': [0],
       'units': None,
       'allow': [],
       'cip': [{'services': ['read_tag'],
         'service_codes': [],
         'tags': [{'parts': [{'name': 'line1', 'elements': None}]}],
         'classes': None,
         'instances': None,
         'attributes': None,
         'routes': None,
         'rate': None},
        {'services': ALL_SERVICES,
         'service_codes': [11, 75],
         'tags': [{'parts': [{'name': '*', 'elements': None}]}],
         'classes': None,
         'instances': None,
         'attributes': None,
         'routes': None,
         'rate': {'count': 1, 'period_ns': 1_000_000_000, 'burst': 4}},
        {'services': ALL_SERVICES,
         'service_codes': [11, 75, 76],
         'tags': None,
         'classes': [[0, 4_294_967_295]],
         'instances': None,
         'attributes': None,
         'routes': None,
         'rate': None}]}]},
    principal=0,
    script=[('rr', unconnected_send(
          b'T\x02 \x06$\x01\n\xf0\x00\x00\x00\x004\x12\x00\x00\x07\x007\x13*\x00\x00\x00\x01\x00\x00\x00\xa0\x86\x01\x00\xf4C\xa0\x86\x01\x00\xf4C\x83\x02 \x02$\x01',
          ((1, b'\x00'),),  # or any other generated value
      ))],
).via('discovered failure')
def test_decide_enip_matches_model(ir: dict[str, Any], principal: int, script: list[tuple[str, Any]]) -> None:
    run(ir, principal, script)


OPEN_ALL = {"services": ["forward_open", "large_forward_open", "forward_close"], "service_codes": [], "tags": None,
            "classes": None, "instances": None, "attributes": None, "routes": None, "rate": None}
READ_ANY = {"services": ["read_tag"], "service_codes": [], "tags": [{"parts": [{"name": "*", "elements": None}]}],
            "classes": None, "instances": None, "attributes": None, "routes": [[[1, [0]]]], "rate": None}


def test_a_connection_opens_carries_its_route_and_closes() -> None:
    """Open on 1,0; a read on the connection is decided with that route; after the close it is unknown."""
    ir = {"version": 1, "mode": "enforce", "principals": [{"name": "a"}],
          "devices": [{"name": "plc", "zone": "z", "host": "h", "port": 1, "units": None}],
          "rules": [{"id": "r", "principals": [0], "devices": [0], "units": None, "allow": [],
                     "cip": [OPEN_ALL, READ_ANY]}]}
    read = bytes([0x4C, 3, 0x91, 2]) + b"SP" + bytes([0x28, 1, 1, 0])
    hops = ((1, b"\x00"),)
    script: list[tuple[str, Any]] = [
        ("open", (forward_open(False, 0xA3, route_path(hops) + TARGET, TRIADS[0]), TRIADS[0], hops)),
        ("unit", (0x1000, 1, read)),  # still pending: unknown_connection
        ("reply", (TRIADS[0], 0x1000, 0)),
        ("unit", (0x1000, 2, read)),  # allowed on route 1,0
        ("open", (forward_open(False, 0xA3, route_path(hops) + TARGET, TRIADS[0]), TRIADS[0], hops)),  # duplicate
        ("close", (forward_close(route_path(hops) + TARGET, TRIADS[0]), TRIADS[0], True)),
        ("unit", (0x1000, 3, read)),  # closed
        ("command", 0x72),
        ("open", (forward_open(True, 0x01, TARGET, TRIADS[1]), TRIADS[1], ())),  # class 1 I/O
    ]
    assert run(ir, 0, script) == [
        (model.ALLOWED, None), (model.MALFORMED, "unknown_connection"), (model.ALLOWED, None),
        (model.MALFORMED, "duplicate_connection"), (model.ALLOWED, None), (model.MALFORMED, "unknown_connection"),
        (model.COMMAND_NOT_ALLOWED, None), (model.MALFORMED, "io_connection"),
    ]


def test_a_connection_opened_through_a_backplane_carries_the_whole_route() -> None:
    """A Forward Open inside an Unconnected Send to 2,10.0.0.5: the connection's route is that hop, then
    the connection path's 1,0; a Forward Open inside a Multiple Service Packet opens nothing."""
    read_routed = {**READ_ANY, "routes": [[[2, list(b"10.0.0.5")], [1, [0]]]]}
    ir = {"version": 1, "mode": "enforce", "principals": [{"name": "a"}],
          "devices": [{"name": "plc", "zone": "z", "host": "h", "port": 1, "units": None}],
          "rules": [{"id": "r", "principals": [0], "devices": [0], "units": None, "allow": [],
                     "cip": [OPEN_ALL, read_routed]}]}
    read = bytes([0x4C, 3, 0x91, 2]) + b"SP" + bytes([0x28, 1, 1, 0])
    fo = forward_open(True, 0xA3, route_path(((1, b"\x00"),)) + TARGET, TRIADS[2])
    routed = unconnected_send(fo, ((2, b"10.0.0.5"),))
    script: list[tuple[str, Any]] = [
        ("open", (routed, TRIADS[2], ((2, b"10.0.0.5"), (1, b"\x00")))),
        ("reply", (TRIADS[2], 0x2000, 0)),
        ("unit", (0x2000, 1, read)),
        ("rr", multiple_service([forward_open(False, 0xA3, TARGET, TRIADS[1])])),
        ("reply", (TRIADS[1], 0x3000, 0)),
        ("unit", (0x3000, 1, read)),
    ]
    assert run(ir, 0, script) == [(model.ALLOWED, None), (model.ALLOWED, None), (model.ALLOWED, None),
                                  (model.MALFORMED, "unknown_connection")]
