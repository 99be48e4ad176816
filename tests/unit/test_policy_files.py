"""Every policy shipped in policies/ loads cleanly, and the committed JSON Schema is the generated one."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema  # type: ignore[import-untyped]
import pytest
import yaml

from zonegate.controlplane.policy import json_schema, load

ROOT = Path(__file__).resolve().parents[2]
POLICIES = sorted((ROOT / "policies").glob("*.yaml"))
SCHEMA_FILE = ROOT / "policies" / "policy.schema.json"


def test_there_are_policies() -> None:
    assert ROOT / "policies" / "demo.yaml" in POLICIES and len(POLICIES) >= 3


@pytest.mark.parametrize("path", POLICIES, ids=lambda p: p.name)
def test_shipped_policy_is_valid_without_warnings(path: Path, tmp_path: Path) -> None:
    policy = load([path], pki_dir=tmp_path)
    assert policy.warnings == ()
    assert policy.rules and policy.ir()["rules"]


@pytest.mark.parametrize("path", POLICIES, ids=lambda p: p.name)
def test_shipped_policy_gives_the_firewall_addresses(path: Path, tmp_path: Path) -> None:
    from zonegate.controlplane.nftables.adapter import spec_from_policy
    from zonegate.controlplane.nftables.render import render

    policy = load([path], pki_dir=tmp_path)
    spec = spec_from_policy(policy)
    assert {u.name for u in spec.upstreams} <= set(policy.devices)
    assert "table inet zonegate" in render(spec).text


@pytest.mark.parametrize("path", POLICIES, ids=lambda p: p.name)
def test_shipped_policy_passes_the_json_schema(path: Path) -> None:
    jsonschema.validate(yaml.safe_load(path.read_text()), json_schema(), cls=jsonschema.Draft202012Validator)


def test_committed_schema_is_current() -> None:
    assert json.loads(SCHEMA_FILE.read_text()) == json_schema(), "regenerate: zonegate schema > policies/policy.schema.json"


def test_schema_is_a_valid_draft_2020_12_schema() -> None:
    jsonschema.Draft202012Validator.check_schema(json_schema())


@pytest.mark.parametrize(
    "bad",
    [
        {"version": 1, "modes": "enforce"},
        {"version": 1, "mode": "enforcing"},
        {"version": 2},
        {"version": 1, "rules": [{"id": "r", "principal": "p", "device": "d", "allow": [{"functions": ["read_al"]}]}]},
        {"version": 1, "listeners": [{"name": "n", "protocol": "modbus", "bind": "x", "devices": "d", "tsl": {}}]},
    ],
)
def test_schema_rejects_what_editors_should_flag(bad: dict[str, object]) -> None:
    errors = list(jsonschema.Draft202012Validator(json_schema()).iter_errors(bad))
    assert errors


def test_schema_accepts_every_alias() -> None:
    entry = {"functions": ["read_only"], "holding_registers": "0-9"}
    rule = {"id": "r", "principals": ["p"], "devices": ["d"], "allow": [entry]}
    flow = {"id": "f", "from": "10.0.0.0/8", "to": "10.1.0.0/16", "proto": "tcp", "port": 1}
    jsonschema.validate({"version": 1, "rules": [rule], "flows": [flow]}, json_schema())
