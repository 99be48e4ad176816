"""`zonegate nft render` from policy files: what an operator reads before anything touches a kernel."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from tests.unit.test_nft_render import POLICY
from zonegate import cli
from zonegate.commands import nft as nft_command
from zonegate.controlplane.nftables import ruleset_for
from zonegate.controlplane.policy import load

POLICIES = sorted((Path(__file__).resolve().parents[2] / "policies").glob("*.yaml"))


def main(argv: list[str]) -> int:
    """`zonegate ARGV` with only the nft command registered, as `zonegate.cli` registers it."""
    parser = argparse.ArgumentParser(prog="zonegate")
    nft_command.add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return int(args.func(args))


def test_nft_is_a_zonegate_command() -> None:
    assert "nft" in cli.COMMANDS


@pytest.fixture
def policy(tmp_path: Path) -> Path:
    path = tmp_path / "policy.yaml"
    path.write_text(POLICY)
    return path


def test_render_prints_the_table_of_the_policy(policy: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["nft", "render", "-c", str(policy)]) == 0
    out = capsys.readouterr().out
    assert out == ruleset_for(load([policy])).text
    assert out.startswith("table inet zonegate {\n")


def test_render_json_is_a_loadable_libnftables_document(policy: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["nft", "render", "--json", "-c", str(policy)]) == 0
    document = json.loads(capsys.readouterr().out)
    assert document == ruleset_for(load([policy])).document()
    assert document["nftables"][1] == {"table": {"family": "inet", "name": "zonegate"}}


def test_an_invalid_policy_is_reported_with_its_position(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(POLICY.replace("port: 502,", "port: 70000,"))
    assert main(["nft", "render", "-c", str(bad)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert f"{bad}:" in captured.err


def test_a_policy_the_ruleset_cannot_express_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    dns = tmp_path / "dns.yaml"
    dns.write_text(POLICY.replace("host: 10.3.0.20", "host: historian.plant.example"))
    assert main(["nft", "render", "-c", str(dns)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "l3-historian" in captured.err and "must be an IP address" in captured.err


def test_a_missing_policy_file_is_an_error_not_a_crash(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["nft", "check", "-c", str(tmp_path / "absent.yaml")]) == 2
    assert "absent.yaml" in capsys.readouterr().err


@pytest.mark.parametrize("path", [p for p in POLICIES if "mes.plant.example" not in p.read_text()],
                         ids=lambda p: p.name)
def test_shipped_policies_render(path: Path) -> None:
    assert ruleset_for(load([path])).text.startswith("table inet zonegate {\n")
