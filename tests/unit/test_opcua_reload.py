"""What a reload may change under a running OPC UA converter: rules and principals yes; tags, endpoint,
certificates and users file no (the reload is refused, naming what changed)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

from tests.unit.test_opcua_tags import AGREEMENT_POLICY
from zonegate.controlplane.policy import load
from zonegate.convert.opcua_server import reload_problem
from zonegate.convert.opcua_tags import settings_from_policy


def _policy(tmp_path: Path, text: str, name: str = "policy.yaml") -> Any:
    path = tmp_path / name
    path.write_text(text)
    return load([path], pki_dir=tmp_path)


def test_rule_changes_reload_and_opcua_changes_are_refused_by_name(tmp_path: Path) -> None:
    text = AGREEMENT_POLICY % ""
    running = SimpleNamespace(settings=settings_from_policy(_policy(tmp_path, text)))
    assert reload_problem(running, _policy(tmp_path, text.replace("holding: 0-199", "holding: 0-99"))) is None  # type: ignore[arg-type]
    moved = reload_problem(running, _policy(tmp_path, text.replace("address: 1,", "address: 2,")))  # type: ignore[arg-type]
    assert moved is not None and moved.startswith("opcua: tags changed") and "restart" in moved
    rebound = text.replace("poll_principal: poller", "poll_principal: poller\n  bind: 127.0.0.1:4841")
    endpoint = reload_problem(running, _policy(tmp_path, rebound))  # type: ignore[arg-type]
    assert endpoint is not None and "port changed" in endpoint
    no_section = text.split("opcua:")[0]  # the tags go too: they follow the opcua section
    assert "removes the opcua section" in (reload_problem(running, _policy(tmp_path, no_section)) or "")  # type: ignore[arg-type]
    assert "adds an opcua section" in (reload_problem(None, _policy(tmp_path, text)) or "")
    assert reload_problem(None, _policy(tmp_path, no_section)) is None
