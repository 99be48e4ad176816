"""The Rust engine's CIP decisions against the reference model (docs/cip-engine.md sections 3-5 and 8).

Random CIP policies (IR) x random message router requests: services with and without element counts,
logical and symbolic paths with elements, routes, Forward Open / Close of every transport class,
Unconnected Send and Multiple Service Packet nesting, then truncations and bit flips; explicit clock
readings drive the rate buckets. The model decides over the leaves `cip_flatten` returns, so the two
agree on parsing by construction and every disagreement is one about the decision. Disagreements are
pinned as `@example`s with the side the contract says was wrong.
"""

from __future__ import annotations

import json
import os
import struct
from typing import Any

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from zonegate import _engine
from zonegate import reference_model_cip as model

SCALE = max(1, int(os.environ.get("ZONEGATE_PROPERTY_SCALE", "1")))
DECIDE = settings(max_examples=150 * SCALE, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Small vocabularies shared by policies and messages, so that entries match often and fail at every depth.
NAMES = ("Line1", "Motor", "Speed", "SP", "Press_SP", "Grid", "Recipe", "Program:Main", "x")
CLASSES = (0x01, 0x02, 0x06, 0x6B, 0x6C, 0xF5, 0x1234)
HOPS: tuple[tuple[int, bytes], ...] = ((1, b"\x00"), (1, b"\x03"), (2, b"10.0.0.5"), (18, b"\x01"), (3, b"5"))
ROUTES: tuple[tuple[tuple[int, bytes], ...], ...] = (
    (), ((1, b"\x00"),), ((1, b"\x03"),), ((2, b"10.0.0.5"), (1, b"\x00")), ((18, b"\x01"),), ((3, b"5"),),
)
SERVICE_NAMES = tuple(_engine.cip_service_names())
OPEN_SERVICES = {0x54: "forward_open", 0x5B: "large_forward_open"}


# --- messages -----------------------------------------------------------------------------------------

def port_segment(port: int, link: bytes) -> bytes:
    """`000e pppp [link size] [port u16 if pppp = 15] link [pad]`."""
    extended = len(link) > 1
    head = bytes([(0x10 if extended else 0) | (port if port < 15 else 15)])
    if extended:
        head += bytes([len(link)])
    if port >= 15:
        head += struct.pack("<H", port)
    out = head + link
    return out + b"\x00" if len(out) % 2 else out


def logical(kind: int, value: int) -> bytes:
    """kind: 0 class, 1 instance, 2 member (element), 4 attribute; the narrowest format that holds it."""
    base = 0x20 | kind << 2
    if value <= 0xFF:
        return bytes([base, value])
    if value <= 0xFFFF:
        return bytes([base | 1, 0]) + struct.pack("<H", value)
    return bytes([base | 2, 0]) + struct.pack("<I", value)


def symbol(name: str) -> bytes:
    raw = name.encode("ascii")
    out = bytes([0x91, len(raw)]) + raw
    return out + b"\x00" if len(out) % 2 else out


def request(service: int, path: bytes, data: bytes = b"") -> bytes:
    assert len(path) % 2 == 0
    return bytes([service, len(path) // 2]) + path + data


def route_path(hops: tuple[tuple[int, bytes], ...]) -> bytes:
    return b"".join(port_segment(p, link) for p, link in hops)


CONNECTION_MANAGER = logical(0, 0x06) + logical(1, 1)
MESSAGE_ROUTER = logical(0, 0x02) + logical(1, 1)


def unconnected_send(inner: bytes, hops: tuple[tuple[int, bytes], ...]) -> bytes:
    route = route_path(hops)
    data = bytes([0x0A, 0xF0]) + struct.pack("<H", len(inner)) + inner + (b"\x00" if len(inner) % 2 else b"")
    data += bytes([len(route) // 2, 0]) + route
    return request(0x52, CONNECTION_MANAGER, data)


def multiple_service(inner: list[bytes]) -> bytes:
    offsets, at = [], 2 + 2 * len(inner)
    for one in inner:
        offsets.append(at)
        at += len(one)
    data = struct.pack("<H", len(inner)) + b"".join(struct.pack("<H", o) for o in offsets) + b"".join(inner)
    return request(0x0A, MESSAGE_ROUTER, data)


TRIAD = (7, 0x1337, 42)  # connection serial, originator vendor, originator serial


def forward_open(large: bool, transport: int, path: bytes, triad: tuple[int, int, int] = TRIAD) -> bytes:
    params = (lambda v: struct.pack("<I", v)) if large else (lambda v: struct.pack("<H", v))
    data = bytes([0x0A, 0xF0]) + struct.pack("<II", 0, 0x1234) + struct.pack("<HHI", *triad)
    data += bytes([1, 0, 0, 0]) + struct.pack("<I", 100_000) + params(0x43F4)
    data += struct.pack("<I", 100_000) + params(0x43F4) + bytes([transport, len(path) // 2]) + path
    return request(0x5B if large else 0x54, CONNECTION_MANAGER, data)


def forward_close(path: bytes, triad: tuple[int, int, int] = TRIAD) -> bytes:
    data = bytes([0x0A, 0xF0]) + struct.pack("<HHI", *triad) + bytes([len(path) // 2, 0]) + path
    return request(0x4E, CONNECTION_MANAGER, data)


@st.composite
def tags(draw: st.DrawFn) -> bytes:
    """A symbolic path: dotted parts, some with one or more element segments."""
    out = b""
    for _ in range(draw(st.integers(1, 3))):
        name = draw(st.sampled_from(NAMES))
        if draw(st.booleans()):
            name = name.upper() if draw(st.booleans()) else name.lower()
        out += symbol(name)
        for _ in range(draw(st.sampled_from([0, 0, 1, 1, 2]))):
            out += logical(2, draw(st.sampled_from([0, 1, 3, 9, 10, 255, 256, 70000])))
    return out


@st.composite
def logical_path(draw: st.DrawFn) -> bytes:
    out = logical(0, draw(st.sampled_from(CLASSES)))
    if draw(st.booleans()):
        out += logical(1, draw(st.sampled_from([0, 1, 2, 7, 300])))
        if draw(st.booleans()):
            out += logical(4, draw(st.sampled_from([1, 3, 7, 8])))
    return out


@st.composite
def leaf_request(draw: st.DrawFn) -> bytes:
    kind = draw(st.sampled_from(["tag", "tag", "logical", "open", "close", "raw"]))
    prefix = route_path(draw(st.sampled_from(ROUTES))) if draw(st.integers(0, 4)) == 0 else b""
    count = struct.pack("<H", draw(st.sampled_from([0, 1, 2, 5, 10, 65535])))
    if kind == "tag":
        service = draw(st.sampled_from([0x4C, 0x4C, 0x4D, 0x4E, 0x52, 0x53, 0x0E, 0x10, 0x03, 0x55, 0x4B]))
        path = prefix + draw(tags())
        if service in (0x4C,):
            data = count
        elif service == 0x52:
            data = count + struct.pack("<I", 0)
        elif service in (0x4D, 0x53):
            data = draw(st.sampled_from([b"\xc3\x00", b"\xa0\x02\x12\x34"])) + count + b"\x01\x00"
        elif service == 0x4E:
            data = struct.pack("<H", 1) + b"\xff\x00"
        else:
            data = b"\x01\x00"
        if draw(st.integers(0, 12)) == 0:
            data = data[: draw(st.integers(0, len(data)))]  # short data
        return request(service, path, data)
    if kind == "logical":
        service = draw(st.sampled_from([0x01, 0x0E, 0x10, 0x03, 0x05, 0x4C, 0x55, 0x17, 0x4B, 0x0B]))
        return request(service, prefix + draw(logical_path()), b"\x01\x00" if service == 0x10 else b"")
    if kind == "open":
        path = route_path(draw(st.sampled_from(ROUTES))) + logical(0, 0x02) + logical(1, 1)
        return forward_open(draw(st.booleans()), draw(st.sampled_from([0x83, 0xA3, 0x83, 0x82, 0x01, 0x00])), path)
    if kind == "close":
        return forward_close(route_path(draw(st.sampled_from(ROUTES))) + logical(0, 0x02) + logical(1, 1))
    return request(draw(st.sampled_from([0x17, 0x4B, 0x56, 0x5A])), prefix + CONNECTION_MANAGER)


def messages() -> st.SearchStrategy[bytes]:
    def wrap(children: st.SearchStrategy[bytes]) -> st.SearchStrategy[bytes]:
        return st.one_of(
            st.builds(unconnected_send, children, st.sampled_from([r for r in ROUTES if r])),
            st.builds(multiple_service, st.lists(children, min_size=1, max_size=4)),
        )

    return st.recursive(leaf_request(), wrap, max_leaves=8)


@st.composite
def damaged(draw: st.DrawFn, good: bytes) -> bytes:
    how = draw(st.sampled_from(["none", "none", "none", "none", "none", "cut", "flip", "append"]))
    if how == "cut" and good:
        return good[: draw(st.integers(0, len(good) - 1))]
    if how == "flip" and good:
        at = draw(st.integers(0, len(good) - 1))
        return good[:at] + bytes([good[at] ^ 1 << draw(st.integers(0, 7))]) + good[at + 1:]
    if how == "append":
        return good + draw(st.binary(min_size=1, max_size=3))
    return good


# --- policies -----------------------------------------------------------------------------------------

@st.composite
def pattern(draw: st.DrawFn) -> dict[str, Any]:
    parts = []
    for n in range(draw(st.integers(1, 3))):
        name = draw(st.sampled_from([*NAMES, "*", "*", "*"]))
        elements = None
        if name != "*" and draw(st.booleans()):
            dims = draw(st.integers(1, 2))
            elements = [sorted(draw(st.tuples(st.sampled_from([0, 1, 3, 9, 10, 255, 70000]),
                                              st.sampled_from([0, 1, 3, 9, 10, 255, 70000])))) for _ in range(dims)]
        parts.append({"name": name.lower(), "elements": elements})
    return {"parts": parts}


def spans(values: tuple[int, ...]) -> st.SearchStrategy[list[list[int]] | None]:
    one = st.tuples(st.sampled_from(values), st.sampled_from(values)).map(lambda t: sorted(t))
    return st.none() | st.lists(one, min_size=1, max_size=2).map(sorted)


@st.composite
def cip_entry(draw: st.DrawFn) -> dict[str, Any]:
    services = draw(st.lists(st.sampled_from(SERVICE_NAMES), min_size=0, max_size=6, unique=True)
                    | st.sampled_from([list(SERVICE_NAMES), ["read_tag", "read_tag_fragmented", "write_tag"]]))
    codes = draw(st.lists(st.sampled_from([0x0B, 0x4B, 0x4C, 0x55, 0x17, 0x0A]), max_size=2, unique=True))
    if not services and not codes:
        services = ["read_tag"]
    target = draw(st.sampled_from(["tags", "tags", "logical", "any"]))
    entry: dict[str, Any] = {"services": sorted(services), "service_codes": sorted(codes), "tags": None,
                             "classes": None, "instances": None, "attributes": None}
    if target == "any":
        # only valid when every service names no target
        entry["services"] = sorted(set(services) & {"no_operation", "forward_open", "large_forward_open",
                                                    "forward_close", "get_connection_data"}) or ["forward_open"]
        entry["service_codes"] = []
    elif target == "tags":
        entry["tags"] = draw(st.lists(pattern(), min_size=1, max_size=3))
    else:
        entry["classes"] = draw(spans(CLASSES))
        entry["instances"] = draw(spans((0, 1, 2, 7, 300)))
        entry["attributes"] = draw(spans((1, 3, 7, 8)))
        if entry["classes"] is None and entry["instances"] is None and entry["attributes"] is None:
            entry["classes"] = [[1, 1]]
    entry["routes"] = draw(st.none() | st.none() | st.lists(st.sampled_from(ROUTES), min_size=1, max_size=3).map(
        lambda rs: [[[p, list(link)] for p, link in r] for r in rs]))
    entry["rate"] = draw(st.none() | st.builds(
        lambda c, p, b: {"count": c, "period_ns": p, "burst": b},
        st.integers(1, 3), st.sampled_from([1_000, 1_000_000_000]), st.integers(1, 3)))
    return entry


PERMISSIVE: list[dict[str, Any]] = [
    {"services": list(SERVICE_NAMES), "service_codes": [0x0B, 0x4B], "tags": [{"parts": [{"name": "*", "elements": None}]}],
     "classes": None, "instances": None, "attributes": None, "routes": None,
     "rate": {"count": 1, "period_ns": 1_000_000_000, "burst": 4}},
    {"services": list(SERVICE_NAMES), "service_codes": [0x0B, 0x4B, 0x4C], "tags": None,
     "classes": [[0, 0xFFFF_FFFF]], "instances": None, "attributes": None, "routes": None, "rate": None},
]


@st.composite
def cip_policies(draw: st.DrawFn) -> dict[str, Any]:
    rules: list[dict[str, Any]] = []
    for n in range(draw(st.integers(1, 4))):
        rules.append({
            "id": f"r{n}",
            "principals": draw(st.lists(st.integers(0, 1), min_size=1, max_size=2)),
            "devices": draw(st.lists(st.integers(0, 1), min_size=1, max_size=2)),
            "units": None,
            "allow": [],
            "cip": draw(st.lists(cip_entry(), min_size=0 if n else 1, max_size=4)),
        })
        if draw(st.integers(0, 2)) == 0:
            rules[-1]["cip"] += PERMISSIVE  # so that whole containers are allowed, and buckets run dry
    return {
        "version": 1,
        "mode": draw(st.sampled_from(["enforce", "enforce", "monitor"])),
        "principals": [{"name": "a"}, {"name": "b"}],
        "devices": [{"name": "plc", "zone": "z", "host": "10.0.0.1", "port": 44818, "units": None,
                     "enip": {"host": "10.0.0.1", "port": 44818}},
                    {"name": "other", "zone": "z", "host": "10.0.0.2", "port": 502, "units": None, "enip": None}],
        "rules": rules,
    }


# --- the comparison -----------------------------------------------------------------------------------

def fields(d: Any) -> tuple[Any, ...]:
    return (d.verdict, d.reason, d.rule_id, d.malformed, d.general_status, d.service, d.leaves, d.denied_leaf,
            d.target, d.route)


def model_decide(reference: model.CipReferenceModel, principal: int, device: int, message: bytes, now: int,
                 prefix: tuple[tuple[int, bytes], ...] = ()) -> model.CipDecision:
    try:
        flattened: list[model.Leaf] | str = [model.Leaf.from_binding(t) for t in _engine.cip_flatten(message)]
    except ValueError as exc:
        flattened = str(exc)
    return reference.decide(principal, device, message[0] if message else 0, flattened, now, prefix)


def check(ir: dict[str, Any], steps: list[tuple[int, int, bytes, int, tuple[tuple[int, bytes], ...]]]) -> None:
    engine = _engine.Engine(json.dumps(ir))
    reference = model.CipReferenceModel(ir)
    for principal, device, message, now, prefix in steps:
        want = model_decide(reference, principal, device, message, now, prefix)
        got = engine.decide_cip(principal, device, message, now, route_path(prefix) if prefix else None)
        assert fields(got) == fields(want), (principal, device, message.hex(), now, prefix)
        assert got.forward == want.forward and got.command == 0 and got.encap_status is None


@st.composite
def steps(draw: st.DrawFn) -> list[tuple[int, int, bytes, int, tuple[tuple[int, bytes], ...]]]:
    out = []
    now = draw(st.integers(0, 10**12))
    for _ in range(draw(st.integers(1, 6))):
        message = draw(damaged(draw(messages())))
        prefix = draw(st.sampled_from(ROUTES)) if draw(st.integers(0, 5)) == 0 else ()
        principal, device = draw(st.sampled_from([0, 0, 0, 1, 2])), draw(st.sampled_from([0, 0, 0, 1, 5]))
        for _ in range(draw(st.sampled_from([1, 1, 2, 5]))):  # repeats run buckets dry
            now += draw(st.sampled_from([0, 0, 0, 1, 500, 10**9, -5]))
            out.append((principal, device, message, max(now, 0), prefix))
    return out


@DECIDE
@given(ir=cip_policies(), steps=steps())
def test_decide_cip_matches_model(ir: dict[str, Any], steps: list[Any]) -> None:
    check(ir, steps)


READ_SP = request(0x4C, symbol("Press_SP") + logical(2, 3), struct.pack("<H", 7))


def test_fixed_cases_agree() -> None:
    """Hand-picked shapes the random search reaches only rarely."""
    entry = {"services": ["read_tag"], "service_codes": [], "classes": None, "instances": None, "attributes": None,
             "routes": [[[1, [0]]]], "rate": None,
             "tags": [{"parts": [{"name": "press_sp", "elements": [[0, 9]]}]}]}
    ir = {"version": 1, "mode": "enforce", "principals": [{"name": "a"}],
          "devices": [{"name": "plc", "zone": "z", "host": "h", "port": 1, "units": None}],
          "rules": [{"id": "r", "principals": [0], "devices": [0], "units": None, "allow": [], "cip": [entry]}]}
    routed = unconnected_send(READ_SP, ((1, b"\x00"),))
    cases = [
        (0, 0, routed, 0, ()),  # 3..9: allowed
        (0, 0, READ_SP, 0, ((1, b"\x00"),)),  # the same route as a connection prefix
        (0, 0, READ_SP, 0, ()),  # no route: route_not_allowed
        (0, 0, unconnected_send(request(0x4C, symbol("press_sp") + logical(2, 3), struct.pack("<H", 8)),
                                ((1, b"\x00"),)), 0, ()),  # 3..10: past the range
        (0, 0, multiple_service([routed, READ_SP]), 0, ()),  # a container of a container
        (0, 0, unconnected_send(multiple_service([READ_SP, READ_SP]), ((1, b"\x00"),)), 0, ()),
        (1, 0, routed, 0, ()),  # unknown principal
        (0, 0, routed[:-1], 0, ()),  # cut short
    ]
    check(ir, cases)


def test_monitor_mode_stops_at_the_first_would_deny() -> None:
    """The second leaf runs the bucket dry: would_deny at leaf 1, and the third leaf's bucket is not charged
    (a fourth message a second later is allowed again)."""
    entry = {**PERMISSIVE[0], "rate": {"count": 1, "period_ns": 1_000_000_000, "burst": 1}}
    ir = {"version": 1, "mode": "monitor", "principals": [{"name": "a"}],
          "devices": [{"name": "plc", "zone": "z", "host": "h", "port": 1, "units": None}],
          "rules": [{"id": "r0", "principals": [0], "devices": [0], "units": None, "allow": [], "cip": [entry]}]}
    three = multiple_service([READ_SP, READ_SP, READ_SP])
    check(ir, [(0, 0, three, 0, ()), (0, 0, READ_SP, 10**9, ()), (0, 0, READ_SP, 10**9, ())])
