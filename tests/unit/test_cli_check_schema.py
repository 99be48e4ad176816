"""`zonegate check` and `zonegate schema`, run as the real command in a subprocess."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import jsonschema  # type: ignore[import-untyped]
from test_policy_support import SKELETON, write

from zonegate.controlplane.policy import json_schema, load

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "policies" / "demo.yaml"


def zonegate(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "zonegate.cli", *args], cwd=cwd, capture_output=True, text=True, timeout=60, check=False,
    )


def test_check_valid_policy_prints_one_summary_line() -> None:
    result = zonegate("check", "policies/demo.yaml")
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    [line] = result.stdout.splitlines()
    assert line.startswith(
        "policies/demo.yaml: ok, mode enforce: 2 zones, 3 devices, 6 principals, 8 rules, 7 allow entries, 2 cip entries, "
        "3 listeners;"
    )
    assert line.endswith(load([DEMO]).source_hash[:16])


def test_check_reports_every_error_and_exits_2(tmp_path: Path) -> None:
    bad = SKELETON.replace("port: 5020", "port: 0").replace("holding: 0-9", "holding: 9-0")
    write(tmp_path, bad, "bad.yaml")
    write(tmp_path, SKELETON, "good.yaml")
    result = zonegate("check", "good.yaml", "bad.yaml", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        "bad.yaml:7:31: devices.plc.modbus.port: port 0 is out of range 1-65535",
        "bad.yaml:16:9: rules[0].allow[0].holding: range 9-0 is reversed",
    ]
    [summary] = result.stdout.splitlines()
    assert summary.startswith("good.yaml: ok")


def test_check_warnings_do_not_fail(tmp_path: Path) -> None:
    write(tmp_path, SKELETON.replace("[read_holding_registers]", "[read_write]").replace("holding:", "input_registers:"), "warn.yaml")
    result = zonegate("check", "warn.yaml", cwd=tmp_path)
    assert result.returncode == 0
    assert result.stderr.splitlines() == [
        ("warn.yaml:15:9: rules[0].allow[0].functions: warning: allows mask_write_register,"
        " read_write_multiple_registers, write_file_record, write_multiple_coils, write_multiple_registers,"
        " write_single_coil, write_single_register but names no range of coils, file_records or"
        " holding_registers: those writes are always denied")
    ]
    assert "1 warning;" in result.stdout


def test_check_together_merges_files(tmp_path: Path) -> None:
    write(tmp_path, SKELETON.split("rules:\n")[0], "plant.yaml")
    write(tmp_path, "version: 1\nrules:\n  - {id: r, principal: operator, device: plc, allow: [{functions: [3], holding: 0}]}\n",
          "rules.yaml")
    alone = zonegate("check", "rules.yaml", cwd=tmp_path)
    assert alone.returncode == 2
    assert alone.stderr.splitlines() == [
        "rules.yaml:3:13: rules[0].principal: unknown principal 'operator'",
        "rules.yaml:3:34: rules[0].device: unknown device 'plc'",
    ]
    together = zonegate("check", "--together", "plant.yaml", "rules.yaml", cwd=tmp_path)
    assert together.returncode == 0, together.stderr
    assert together.stdout.startswith("plant.yaml + rules.yaml: ok")


def test_check_missing_file(tmp_path: Path) -> None:
    result = zonegate("check", "absent.yaml", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.startswith("absent.yaml:1:1: cannot read the policy: ")


def test_check_ir_prints_the_compiled_policy(tmp_path: Path) -> None:
    result = zonegate("check", "--ir", "--pki", str(tmp_path), "policies/demo.yaml")
    assert result.returncode == 0, result.stderr
    _summary, ir = result.stdout.splitlines()
    assert json.loads(ir) == load([DEMO]).ir()


def test_schema_prints_the_json_schema() -> None:
    result = zonegate("schema")
    assert result.returncode == 0, result.stderr
    schema = json.loads(result.stdout)
    assert schema == json_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    assert schema["properties"]["mode"]["enum"] == ["enforce", "monitor"]
    assert "read_only" in json.dumps(schema["$defs"]["AllowEntry"]["properties"]["functions"])
