"""The annotated vectors against both parsers: the reference model and the Rust engine's binding."""

from __future__ import annotations

import pytest

from tests.vectors.captures import CAPTURED, CAPTURED_SPLITS, CaptureSplit, CaptureVector
from tests.conftest import require
from tests.vectors.pcap import PCAPS, frame_payload, tcp_segments
from tests.vectors.requests import (
    EXCEPTION_RESPONSES,
    FRAMING_FAULTS,
    REQUESTS,
    SPLITS,
    Bad,
    ExceptionVector,
    FramingFault,
    Ok,
    SplitVector,
)
from zonegate import _engine
from zonegate import reference_model as model
from zonegate.engine import MALFORMED, REASONS, TABLES, VERDICTS, exception_response

STATUS = {"complete": 0, "incomplete": 1, "invalid": 2}
ALL = [(v.name, v.adu, v.expect) for v in REQUESTS] + [
    (f"{c.capture}#{c.frame}", c.adu, c.expect) for c in CAPTURED
]


def _expected(expect: Ok | Bad, adu: bytes) -> dict[str, object]:
    header = {"transaction_id": adu[0] << 8 | adu[1], "unit": expect.unit, "function": expect.function}
    if isinstance(expect, Bad):
        return {**header, "malformed": MALFORMED.index(expect.kind)}
    return {
        **header,
        "malformed": 0,
        "known_function": expect.known,
        "sub": expect.sub,
        "quantity": expect.quantity,
        "ranges": [(TABLES.index(t), s, e, a == "write") for t, s, e, a in expect.ranges],
        "values": [(TABLES.index(t), a, v) for t, a, v in expect.values],
    }


def _from_model(adu: bytes) -> dict[str, object]:
    parsed = model.parse_request(adu)
    header = {"transaction_id": parsed.transaction_id, "unit": parsed.unit, "function": parsed.function}
    if isinstance(parsed, model.Malformed):
        return {**header, "malformed": parsed.kind}
    return {
        **header,
        "malformed": 0,
        "known_function": parsed.known_function,
        "sub": parsed.sub,
        "quantity": parsed.quantity,
        "ranges": [(r.table, r.start, r.end, r.write) for r in parsed.ranges],
        "values": list(parsed.values),
    }


def _from_rust(adu: bytes) -> dict[str, object]:
    parsed = _engine.parse_request(adu)
    header = {"transaction_id": parsed.transaction_id, "unit": parsed.unit, "function": parsed.function}
    if parsed.malformed:
        return {**header, "malformed": parsed.malformed}
    return {
        **header,
        "malformed": 0,
        "known_function": parsed.known_function,
        "sub": parsed.sub,
        "quantity": parsed.quantity,
        "ranges": [tuple(r) for r in parsed.ranges],
        "values": [tuple(v) for v in parsed.values],
    }


def test_every_public_function_has_a_valid_and_a_malformed_vector() -> None:
    valid = {v.expect.function for v in REQUESTS if isinstance(v.expect, Ok) and v.expect.known}
    invalid = {v.expect.function for v in REQUESTS if isinstance(v.expect, Bad)}
    assert valid == model.PUBLIC_FUNCTIONS
    # FC 11 and 17 share FC 7's structure (no data); one malformed no-data vector covers them
    assert model.PUBLIC_FUNCTIONS - invalid <= {11, 17}
    kinds = {v.expect.kind for v in REQUESTS if isinstance(v.expect, Bad)}
    assert kinds == set(MALFORMED[1:])


def test_vector_headers_match_their_lengths() -> None:
    """A vector's MBAP length counts its own bytes, so a typo in a vector cannot pass as a framing fault."""
    for name, adu, _ in ALL:
        assert model.split(adu) == (model.COMPLETE, len(adu)), name


@pytest.mark.parametrize(("name", "adu", "expect"), ALL, ids=[a[0] for a in ALL])
def test_reference_model_decodes_vector(name: str, adu: bytes, expect: Ok | Bad) -> None:
    assert _from_model(adu) == _expected(expect, adu)


@pytest.mark.parametrize(("name", "adu", "expect"), ALL, ids=[a[0] for a in ALL])
def test_engine_decodes_vector(name: str, adu: bytes, expect: Ok | Bad) -> None:
    assert _from_rust(adu) == _expected(expect, adu)


@pytest.mark.parametrize("vector", SPLITS, ids=[s.name for s in SPLITS])
def test_split_vector(vector: SplitVector) -> None:
    want = (STATUS[vector.status], vector.n)
    assert model.split(vector.buf) == want
    assert _engine.split(vector.buf) == want


@pytest.mark.parametrize("vector", CAPTURED, ids=[f"{c.capture}#{c.frame}" for c in CAPTURED])
def test_captured_vector_is_the_capture(vector: CaptureVector) -> None:
    require((PCAPS / vector.capture).exists(), f"shared capture {vector.capture} is missing")
    payload = frame_payload(vector.capture, vector.frame)
    assert payload[vector.offset : vector.offset + len(vector.adu)] == vector.adu


@pytest.mark.parametrize("vector", CAPTURED_SPLITS, ids=[f"{c.capture}#{c.frame}" for c in CAPTURED_SPLITS])
def test_captured_split(vector: CaptureSplit) -> None:
    require((PCAPS / vector.capture).exists(), f"shared capture {vector.capture} is missing")
    payload = frame_payload(vector.capture, vector.frame)
    want = (STATUS[vector.status], vector.n)
    assert model.split(payload) == want
    assert _engine.split(payload) == want


def test_vector_names_are_unique() -> None:
    names = [v.name for v in REQUESTS] + [s.name for s in SPLITS]
    assert len(names) == len(set(names))


@pytest.mark.parametrize("vector", EXCEPTION_RESPONSES, ids=[v.name for v in EXCEPTION_RESPONSES])
def test_exception_response_vector(vector: ExceptionVector) -> None:
    response = exception_response(vector.request, vector.code)
    assert response == vector.response
    # the conduit checks replies against requests; a refusal it builds itself must pass that check
    assert _engine.response_matches(vector.request, response)


@pytest.mark.parametrize("adu", [b"", b"\x00\x01\x00\x00\x00\x02\x01"])
def test_exception_response_needs_a_function_code(adu: bytes) -> None:
    with pytest.raises(ValueError, match="at least 8 bytes"):
        exception_response(adu, 1)


def test_name_tables_follow_the_engine_codes() -> None:
    assert VERDICTS[model.ALLOW] == "allow" and VERDICTS[model.WOULD_DENY] == "would_deny"
    assert REASONS[model.RATE_EXCEEDED] == "rate_exceeded" and len(REASONS) == 10
    assert MALFORMED[model.BAD_DEVICE_ID_CODE] == "bad_device_id_code" and len(MALFORMED) == 12
    assert TABLES == model.TABLE_NAMES


MODBUS_CAPTURES = sorted({c.capture for c in CAPTURED} | {"zeek/modbusBig.pcap"})


@pytest.mark.parametrize("capture", MODBUS_CAPTURES)
def test_every_captured_request_parses_alike(capture: str) -> None:
    """Every ADU sent to port 502 in a capture decodes the same in the engine and in the model."""
    path = PCAPS / capture
    require(path.exists(), f"shared capture {path} is missing")
    adus = 0
    for segment in tcp_segments(path):
        if segment.dst_port != 502:
            continue
        buf = segment.payload
        while True:
            status, n = model.split(buf)
            assert _engine.split(buf) == (status, n), (segment.frame, buf.hex())
            if status != model.COMPLETE:
                break
            assert _from_rust(buf[:n]) == _from_model(buf[:n]), (segment.frame, buf[:n].hex())
            adus += 1
            buf = buf[n:]
    assert adus > 0


@pytest.mark.parametrize("fault", FRAMING_FAULTS, ids=[f.name for f in FRAMING_FAULTS])
def test_framing_fault_is_malformed_in_both_parsers(fault: FramingFault) -> None:
    want = MALFORMED.index(fault.kind)
    parsed = model.parse_request(fault.adu)
    assert isinstance(parsed, model.Malformed) and parsed.kind == want
    assert _engine.parse_request(fault.adu).malformed == want
