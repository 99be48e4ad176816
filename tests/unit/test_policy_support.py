"""Shared helpers for the policy tests (no tests here): write a policy to a temporary directory, load it."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from zonegate.controlplane.policy import Policy, PolicyError, load

SKELETON = """\
version: 1
zones:
  cell-a: {interface: veth-cell, subnet: 192.168.10.0/24}
devices:
  plc:
    zone: cell-a
    modbus: {host: 127.0.0.1, port: 5020, units: [1]}
principals:
  operator: {tls_role: Operator}
rules:
  - id: r1
    principal: operator
    device: plc
    allow:
      - functions: [read_holding_registers]
        holding: 0-9
"""


def write(directory: Path, text: str, name: str = "x.yaml") -> Path:
    path = directory / name
    path.write_text(textwrap.dedent(text))
    return path


def load_text(directory: Path, text: str, monkeypatch: pytest.MonkeyPatch) -> Policy:
    """Load `text` as `x.yaml`, with the working directory set so issues name the file `x.yaml`."""
    write(directory, text)
    monkeypatch.chdir(directory)
    return load([Path("x.yaml")])


def issues_of(directory: Path, text: str, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every issue line for a policy that must fail to load."""
    with pytest.raises(PolicyError) as caught:
        load_text(directory, text, monkeypatch)
    return [str(issue) for issue in caught.value.issues]
