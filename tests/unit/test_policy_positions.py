"""Policy loading, first stage: positions are the same with libyaml and with the pure-Python parser."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from test_policy_errors import CASES, DEVICE_CASES
from test_policy_support import issues_of

from zonegate.controlplane.policy import positions

ROOT = Path(__file__).resolve().parents[2]
POLICIES = sorted((ROOT / "policies").glob("*.yaml"))


def test_libyaml_is_used_when_present() -> None:
    assert positions._FAST_LOADER is getattr(yaml, "CSafeLoader", None)


@pytest.mark.parametrize("path", POLICIES, ids=lambda p: p.name)
def test_both_parsers_agree_on_data_and_marks(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    text = path.read_text()
    fast = positions.read_text(text, "p.yaml")
    monkeypatch.setattr(positions, "_FAST_LOADER", None)
    slow = positions.read_text(text, "p.yaml")
    assert fast[0] == slow[0]
    assert fast[1].values == slow[1].values and fast[1].keys == slow[1].keys
    assert fast[2] == slow[2] == []


@pytest.mark.parametrize("case", ["reversed pair", "unknown function with hint", "duplicate YAML key", "bad CIDR"])
def test_issues_are_the_same_without_libyaml(case: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    text, expected = {**CASES, **DEVICE_CASES}[case]
    monkeypatch.setattr(positions, "_FAST_LOADER", None)
    assert issues_of(tmp_path, text, monkeypatch) == expected


def test_syntax_error_is_worded_by_the_python_parser(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    text = "version: 1\nzones: {cell-a: [\n"
    with_libyaml = issues_of(tmp_path, text, monkeypatch)
    monkeypatch.setattr(positions, "_FAST_LOADER", None)
    assert issues_of(tmp_path, text, monkeypatch) == with_libyaml
