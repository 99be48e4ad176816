"""Policy loading fails closed: any mangled policy gives a Policy or a PolicyError with positioned issues."""

from __future__ import annotations

import copy
import tempfile
from pathlib import Path
from typing import Any

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from zonegate.controlplane.policy import Policy, PolicyError, load

ROOT = Path(__file__).resolve().parents[2]
DEMO: dict[str, Any] = yaml.safe_load((ROOT / "policies" / "demo.yaml").read_text())

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**40), 2**40), st.floats(allow_nan=True),
    st.text(max_size=12), st.sampled_from(["0-9", "9-0", "8/4", "5/s", "1.2.3.4/33", "x:1", "-", "2m", "[", "*"]),
)
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3), max_leaves=6)


def paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix]
    if isinstance(node, dict):
        for key, value in node.items():
            out += paths(value, (*prefix, key))
    elif isinstance(node, list):
        for n, value in enumerate(node):
            out += paths(value, (*prefix, n))
    return out


ALL_PATHS = [p for p in paths(DEMO) if p]


@st.composite
def mangled(draw: st.DrawFn) -> dict[str, Any]:
    doc = copy.deepcopy(DEMO)
    for _ in range(draw(st.integers(1, 4))):
        path = draw(st.sampled_from(ALL_PATHS))
        parent: Any = doc
        try:
            for part in path[:-1]:
                parent = parent[part]
            if draw(st.booleans()) and isinstance(parent, dict):
                parent.pop(path[-1], None)
            else:
                parent[path[-1]] = draw(values)
        except (KeyError, IndexError, TypeError):
            continue
    return doc


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mangled())
def test_mangled_policy_loads_or_fails_with_positions(doc: dict[str, Any]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "p.yaml"
        path.write_text(yaml.safe_dump(doc))
        try:
            policy = load([path])
        except PolicyError as exc:
            assert exc.issues and any(i.severity == "error" for i in exc.issues)
            lines = len(path.read_text().splitlines()) + 1
            for issue in exc.issues:
                assert issue.file == str(path)
                assert 1 <= issue.line <= lines and issue.column >= 1
                assert issue.message
        else:
            assert isinstance(policy, Policy)
            policy.ir_json()


@settings(max_examples=150, deadline=None)
@given(st.binary(max_size=300))
def test_arbitrary_bytes_never_crash_the_loader(data: bytes) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "p.yaml"
        path.write_bytes(data)
        try:
            load([path])
        except PolicyError as exc:
            assert all(i.line >= 1 for i in exc.issues)
