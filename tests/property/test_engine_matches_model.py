"""The Rust engine against the reference model: same framing, same parse, same decisions.

Random compiled policies x random frames x explicit clock readings. The model is docs/engine.md written
out plainly; when the two disagree that page says which one is wrong. Regressions are pinned as
`@example`s with what they caught.
"""

from __future__ import annotations

import json
import os
from typing import Any

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from tests.property.strategies import frames, policies, steps
from zonegate import _engine
from zonegate import reference_model as model
from zonegate.engine import CompiledPolicy

# Bounded so the whole property suite stays well under a minute on two shared cores; a longer hunt
# for disagreements multiplies the counts: ZONEGATE_PROPERTY_SCALE=20 pytest tests/property
SCALE = max(1, int(os.environ.get("ZONEGATE_PROPERTY_SCALE", "1")))
PARSE = settings(max_examples=500 * SCALE, deadline=None, suppress_health_check=[HealthCheck.too_slow])
DECIDE = settings(max_examples=120 * SCALE, deadline=None, suppress_health_check=[HealthCheck.too_slow])
BATCH = settings(max_examples=80 * SCALE, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _model_parse(frame: bytes) -> dict[str, Any]:
    parsed = model.parse_request(frame)
    if isinstance(parsed, model.Malformed):
        return {"malformed": parsed.kind, "function": parsed.function, "unit": parsed.unit, "sub": parsed.sub,
                "transaction_id": parsed.transaction_id}
    return {
        "malformed": 0,
        "function": parsed.function,
        "unit": parsed.unit,
        "transaction_id": parsed.transaction_id,
        "known_function": parsed.known_function,
        "sub": parsed.sub,
        "quantity": parsed.quantity,
        "ranges": [(r.table, r.start, r.end, r.write) for r in parsed.ranges],
        "values": list(parsed.values),
    }


def _rust_parse(frame: bytes) -> dict[str, Any]:
    parsed = _engine.parse_request(frame)
    if parsed.malformed:
        return {"malformed": parsed.malformed, "function": parsed.function, "unit": parsed.unit, "sub": parsed.sub,
                "transaction_id": parsed.transaction_id}
    return {
        "malformed": 0,
        "function": parsed.function,
        "unit": parsed.unit,
        "transaction_id": parsed.transaction_id,
        "known_function": parsed.known_function,
        "sub": parsed.sub,
        "quantity": parsed.quantity,
        "ranges": [tuple(r) for r in parsed.ranges],
        "values": [tuple(v) for v in parsed.values],
    }


@PARSE
@given(st.binary(max_size=24) | frames())
@example(b"")  # nothing at all
@example(b"\x00\x01\x00\x00\x00\x06\x01\x03\x00\x00")  # shorter than its length field says
@example(b"\x00\x01\x00\x00\xff\xff")  # length field far beyond the 254 limit
def test_split_matches_model(buf: bytes) -> None:
    assert _engine.split(buf) == model.split(buf)


@PARSE
@given(frames())
# A header declaring length 0 in an 8-byte frame: the model once called it truncated (no room for a
# function code); both now compare declared and actual size and call it trailing bytes.
@example(b"\x00\x00\x00\x00\x00\x00\x00\x00")
# Protocol id 5 in an otherwise whole frame: truncated in both (the model once said trailing bytes).
@example(b"\x00\x01\x00\x05\x00\x02\x01\x07")
def test_parse_matches_model(frame: bytes) -> None:
    assert _rust_parse(frame) == _model_parse(frame)


def _fields(d: Any) -> tuple[Any, ...]:
    return (d.verdict, d.reason, d.malformed, d.rule_id, d.exception_code, d.function, d.sub, d.unit)


@DECIDE
@given(st.data())
def test_decide_matches_model(data: st.DataObject) -> None:
    ir = data.draw(policies(), label="ir")
    engine = _engine.Engine(json.dumps(ir))
    reference = model.ReferenceModel(ir)
    for principal, device, frame, now in data.draw(steps(ir), label="steps"):
        want = reference.decide(principal, device, frame, now)
        got = engine.decide(principal, device, frame, now)
        assert _fields(got) == _fields(want), (principal, device, frame.hex(), now)
        assert got.forward == want.forward


def _model_batch(reference: model.ReferenceModel, principal: int, device: int, buf: bytes, now: int) -> tuple[int, bytes]:
    """What a batch call should return: bytes consumed and one verdict << 4 | reason byte per ADU."""
    consumed, verdicts = 0, bytearray()
    while True:
        status, n = model.split(buf[consumed:])
        if status != model.COMPLETE:
            return consumed, bytes(verdicts)
        d = reference.decide(principal, device, buf[consumed : consumed + n], now)
        verdicts.append(d.verdict << 4 | d.reason)
        consumed += n


@BATCH
@given(st.data())
def test_batch_matches_model(data: st.DataObject) -> None:
    ir = data.draw(policies(), label="ir")
    engine = _engine.Engine(json.dumps(ir))
    reference = model.ReferenceModel(ir)
    requests = data.draw(steps(ir), label="steps")
    principal, device, _, now = requests[0]
    # a stream of framed requests, sometimes ending in a partial ADU or a foreign header
    buf = b"".join(frame for _, _, frame, _ in requests if model.split(frame) == (model.COMPLETE, len(frame)))
    buf += data.draw(st.sampled_from([b"", b"\x00\x01\x00", b"\x00\x01\x00\x07\x00\x02\x01\x03"]), label="tail")
    consumed, verdicts = _model_batch(reference, principal, device, buf, now)
    summary = engine.decide_batch(principal, device, buf, now)
    assert (summary.consumed, summary.verdicts) == (consumed, verdicts)
    assert summary.frames == len(verdicts)
    assert summary.allowed == sum(1 for v in verdicts if v >> 4 == model.ALLOW)
    assert summary.denied == sum(1 for v in verdicts if v >> 4 == model.DENY)
    assert summary.would_deny == sum(1 for v in verdicts if v >> 4 == model.WOULD_DENY)


EMPTY_POLICY = {
    "version": 1,
    "mode": "enforce",
    "principals": [{"name": "principal-0", "tls_roles": [], "subjects": [], "opcua_users": [], "sources": []}],
    "devices": [{"name": "device-0", "zone": "cell-a", "host": "192.168.10.11", "port": 502, "units": None}],
    "rules": [],
}


@settings(max_examples=30 * SCALE, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(policies(), frames())
# An unknown principal is refused before parsing: the model once reported the MEI type read from the
# frame as `sub` where the engine (rightly: nothing was parsed) reports None.
@example(EMPTY_POLICY, b"\x00\x00\x00\x00\x00\x03\x00\x2b\x00")
# A frame longer than its header declares is malformed before its PDU is read: the model once took
# the FC 8 sub-function from the bytes anyway; the engine reports None.
@example(EMPTY_POLICY, b"\x00\x01\x00\x00\x00\x04\x01\x08\x00\x05\x00")
def test_compiled_policy_decides_by_name(ir: dict[str, Any], frame: bytes) -> None:
    policy = CompiledPolicy(ir)
    reference = model.ReferenceModel(ir)
    for name, index in list(policy.principals.items())[:2] + [("nobody", -1)]:
        got = policy.decide(name, "device-0", frame, 5)
        want = reference.decide(index, 0, frame, 5)
        assert _fields(got) == _fields(want)
