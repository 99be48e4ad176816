"""Policy loading: every error names file, line, column and field path, and all are reported at once."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_policy_support import SKELETON, issues_of, load_text, write

from zonegate.controlplane.policy import PolicyError, load


def with_rules(rules: str) -> str:
    """The skeleton with its rules section (from line 10) replaced."""
    head = SKELETON.split("rules:\n")[0]
    return head + "rules:\n" + rules


ENTRY = "  - id: r1\n    principal: operator\n    device: plc\n    allow:\n"  # lines 11-14; entries from 15

CASES: dict[str, tuple[str, list[str]]] = {
    "reversed range": (
        with_rules(ENTRY + "      - functions: [read_holding_registers]\n        holding: 200-100\n"),
        ["x.yaml:16:9: rules[0].allow[0].holding: range 200-100 is reversed"],
    ),
    "reversed pair": (
        with_rules(ENTRY + "      - functions: [read_holding_registers]\n        holding: [200, 100]\n"),
        ["x.yaml:16:9: rules[0].allow[0].holding: range 200-100 is reversed"],
    ),
    "reversed range in a list": (
        with_rules(ENTRY + "      - functions: [read_coils]\n        coils: [0-9, 30-20]\n"),
        ["x.yaml:16:22: rules[0].allow[0].coils[1]: range 30-20 is reversed"],
    ),
    "overlapping ranges": (
        with_rules(ENTRY + "      - functions: [read_coils]\n        coils: [0-9, 20-29, 5-12]\n"),
        ["x.yaml:16:29: rules[0].allow[0].coils[2]: ranges 0-9 and 5-12 overlap"],
    ),
    "address out of range": (
        with_rules(ENTRY + "      - functions: [read_input_registers]\n        input_registers: 65530-65536\n"),
        ["x.yaml:16:9: rules[0].allow[0].input_registers: address 65536 is out of range 0-65535"],
    ),
    "bad range text": (
        with_rules(ENTRY + "      - functions: [read_holding_registers]\n        holding: 1O0-109\n"),
        ["x.yaml:16:9: rules[0].allow[0].holding: bad address range '1O0-109': write 100-109, 100 or [100, 109]"],
    ),
    "bound out of uint16": (
        with_rules(
            ENTRY + "      - functions: [write_single_register]\n"
            "        holding: {range: 100-109, min: -5, max: 1500}\n"
        ),
        ["x.yaml:16:35: rules[0].allow[0].holding.min: min -5 is out of the uint16 range 0..65535"],
    ),
    "bound out of int16": (
        with_rules(
            ENTRY + "      - functions: [write_single_register]\n"
            "        holding: [{range: 100, min: -5, max: 40000, signed: true}]\n"
        ),
        ["x.yaml:16:41: rules[0].allow[0].holding[0].max: max 40000 is out of the int16 range -32768..32767"],
    ),
    "min above max": (
        with_rules(
            ENTRY + "      - functions: [write_single_register]\n"
            "        holding: {range: 100, min: 9, max: 1}\n"
        ),
        ["x.yaml:16:31: rules[0].allow[0].holding.min: min 9 is above max 1"],
    ),
    "unknown key in a range": (
        with_rules(
            ENTRY + "      - functions: [write_single_register]\n"
            "        holding: {range: 100, maximum: 9}\n"
        ),
        ["x.yaml:16:31: rules[0].allow[0].holding.maximum: unknown key 'maximum' (did you mean 'max'?)"],
    ),
    "file record out of range": (
        with_rules(
            ENTRY + "      - functions: [read_file_record]\n"
            "        file_records: {file: 2, records: 0-10000}\n"
        ),
        ["x.yaml:16:33: rules[0].allow[0].file_records.records: record 10000 is out of range 0-9999"],
    ),
    "unknown function with hint": (
        with_rules(ENTRY + "      - functions: [read_holding_registers, write_single_registr]\n"),
        [
            ("x.yaml:15:45: rules[0].allow[0].functions[1]: unknown function 'write_single_registr'"
            " (did you mean 'write_single_register'?)")
        ],
    ),
    "fc 8 needs a sub-function": (
        with_rules(ENTRY + "      - functions: 8\n"),
        [
            ("x.yaml:15:9: rules[0].allow[0].functions: diagnostics (8) needs its sub-function named,"
            " e.g. 8/0 or diagnostics/return_query_data")
        ],
    ),
    "non-public function code": (
        with_rules(ENTRY + "      - functions: [3, 90]\n"),
        [
            ("x.yaml:15:24: rules[0].allow[0].functions[1]: function code 90 is not a public Modbus function"
            " zonegate parses; requests with it are always denied")
        ],
    ),
    "unknown sub-function": (
        with_rules(ENTRY + "      - functions: [diagnostics/force_listen_only]\n"),
        [
            ("x.yaml:15:21: rules[0].allow[0].functions[0]: unknown sub-function 'force_listen_only' of"
            " diagnostics (did you mean 'force_listen_only_mode'?)")
        ],
    ),
    "bad MEI type": (
        with_rules(ENTRY + "      - functions: [43/12]\n"),
        ["x.yaml:15:21: rules[0].allow[0].functions[0]: MEI type 12 of function 43 is not one zonegate parses"],
    ),
    "empty functions": (
        with_rules(ENTRY + "      - functions: []\n"),
        ["x.yaml:15:9: rules[0].allow[0].functions: must not be empty"],
    ),
    "bad rate": (
        with_rules(ENTRY + "      - functions: [3]\n        holding: 0-9\n        rate: 5/day\n"),
        ["x.yaml:17:9: rules[0].allow[0].rate: bad rate '5/day': write COUNT/s, COUNT/min or COUNT/h, e.g. 5/s"],
    ),
    "burst without rate": (
        with_rules(ENTRY + "      - functions: [3]\n        holding: 0-9\n        burst: 4\n"),
        ["x.yaml:17:9: rules[0].allow[0].burst: burst needs a rate"],
    ),
    "max_quantity out of range": (
        with_rules(ENTRY + "      - functions: [3]\n        holding: 0-9\n        max_quantity: 0\n"),
        ["x.yaml:17:9: rules[0].allow[0].max_quantity: 0 is out of range 1-2000"],
    ),
    "holding given twice": (
        with_rules(ENTRY + "      - functions: [3]\n        holding: 0-9\n        holding_registers: 10-19\n"),
        ["x.yaml:17:9: rules[0].allow[0].holding_registers: 'holding_registers' repeats 'holding': write one of them"],
    ),
    "unknown key at the top": (
        SKELETON + "modes: monitor\n",
        ["x.yaml:17:1: modes: unknown key 'modes' (did you mean 'mode'?)"],
    ),
    "unknown key in an entry": (
        with_rules(ENTRY + "      - functions: [3]\n        holdings: 0-9\n"),
        ["x.yaml:16:9: rules[0].allow[0].holdings: unknown key 'holdings' (did you mean 'holding'?)"],
    ),
    "unknown principal and device": (
        with_rules("  - id: r1\n    principal: opertor\n    devices: [plc, press]\n    allow:\n      - functions: [3]\n"),
        [
            "x.yaml:12:5: rules[0].principal: unknown principal 'opertor' (did you mean 'operator'?)",
            "x.yaml:13:20: rules[0].devices[1]: unknown device 'press'",
        ],
    ),
    "duplicate rule id": (
        SKELETON + "  - id: r1\n    principal: operator\n    device: plc\n    allow: [{functions: [3], holding: 0}]\n",
        ["x.yaml:17:5: rules[1].id: duplicate rule id 'r1' (first at line 11)"],
    ),
    "rule without principal": (
        with_rules("  - id: r1\n    device: plc\n    allow: [{functions: [3], holding: 0}]\n"),
        ["x.yaml:11:5: rules[0].principal: missing required key"],
    ),
    "bad rule id": (
        with_rules("  - id: 'my rule'\n    principal: operator\n    device: plc\n    allow: [{functions: [3]}]\n"),
        ["x.yaml:11:5: rules[0].id: bad name 'my rule': letters, digits, '_', '.', '-', starting with a letter or digit"],
    ),
    "rule units out of range": (
        with_rules(
            "  - id: r1\n    principal: operator\n    device: plc\n    units: [1, 256]\n"
            "    allow: [{functions: [3], holding: 0}]\n"
        ),
        ["x.yaml:14:16: rules[0].units[1]: unit id 256 is out of range 0-255"],
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_error_is_pinned_to_its_node(case: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    text, expected = CASES[case]
    assert issues_of(tmp_path, text, monkeypatch) == expected


DEVICE_CASES: dict[str, tuple[str, list[str]]] = {
    "bad CIDR": (
        SKELETON.replace("subnet: 192.168.10.0/24", "subnet: 192.168.10.0/33"),
        [("x.yaml:3:34: zones.cell-a.subnet: bad CIDR '192.168.10.0/33': '192.168.10.0/33' does not appear"
         " to be an IPv4 or IPv6 network")],
    ),
    "CIDR with host bits": (
        SKELETON.replace("subnet: 192.168.10.0/24", "subnet: 192.168.10.1/24"),
        [("x.yaml:3:34: zones.cell-a.subnet: bad CIDR '192.168.10.1/24': host bits are set"
         " (the network is 192.168.10.0/24)")],
    ),
    "unknown zone": (
        SKELETON.replace("zone: cell-a", "zone: cell-b"),
        ["x.yaml:6:5: devices.plc.zone: unknown zone 'cell-b' (did you mean 'cell-a'?)"],
    ),
    "port out of range": (
        SKELETON.replace("port: 5020", "port: 65536"),
        ["x.yaml:7:31: devices.plc.modbus.port: port 65536 is out of range 1-65535"],
    ),
    "bad duration": (
        SKELETON.replace("units: [1]}", "units: [1], timeout: 2 seconds}"),
        [("x.yaml:7:55: devices.plc.modbus.timeout: bad duration '2 seconds': write 300ms, 5s, 2m, 1h"
         " or a number of seconds")],
    ),
    "zero duration": (
        SKELETON.replace("units: [1]}", "units: [1], timeout: 0ms}"),
        ["x.yaml:7:55: devices.plc.modbus.timeout: duration '0ms' must be more than 0 and at most 24h"],
    ),
    "principal without identity": (
        SKELETON.replace("operator: {tls_role: Operator}", "operator: {description: nobody}"),
        ["x.yaml:9:3: principals.operator: a principal needs tls_role, tls_subject, opcua_user or source (or gateway: true)"],
    ),
    "bad subject": (
        SKELETON.replace("operator: {tls_role: Operator}", "operator: {tls_subject: 'auditor-1'}"),
        [("x.yaml:9:14: principals.operator.tls_subject: bad certificate subject 'auditor-1': write RFC 4514,"
         " e.g. CN=auditor-1,O=Plant")],
    ),
    "bad source address": (
        SKELETON.replace("operator: {tls_role: Operator}", "operator: {source: [10.0.0.1, 10.0.0.300]}"),
        [("x.yaml:9:33: principals.operator.source[1]: bad CIDR '10.0.0.300': '10.0.0.300' does not appear"
         " to be an IPv4 or IPv6 network")],
    ),
    "wrong mode": (
        SKELETON.replace("version: 1\n", "version: 1\nmode: enforcing\n"),
        ["x.yaml:2:1: mode: expected 'enforce' or 'monitor', not 'enforcing'"],
    ),
    "wrong version": (
        SKELETON.replace("version: 1", "version: 2"),
        ["x.yaml:1:1: version: unsupported policy version 2: this zonegate reads version 1"],
    ),
    "missing version": (
        SKELETON.replace("version: 1\n", ""),
        ["x.yaml:1:1: version: missing required key"],
    ),
    "mapping expected": (
        SKELETON.replace("zone: cell-a\n    modbus: {host: 127.0.0.1, port: 5020, units: [1]}", "zone: cell-a\n    modbus: [127.0.0.1]"),
        ["x.yaml:7:5: devices.plc.modbus: expected a mapping, not a list"],
    ),
    "duplicate YAML key": (
        SKELETON.replace("    zone: cell-a\n", "    zone: cell-a\n    zone: cell-a\n"),
        ["x.yaml:7:5: devices.plc.zone: duplicate key (first at line 6)"],
    ),
}


@pytest.mark.parametrize("case", list(DEVICE_CASES))
def test_section_error_is_pinned(case: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    text, expected = DEVICE_CASES[case]
    assert issues_of(tmp_path, text, monkeypatch) == expected


LISTENERS = """\
listeners:
  - name: north
    protocol: modbus_tls
    bind: 127.0.0.1:8802
    devices: [plc]
    tls: {cert: server.crt, key: server.key, ca: ca.crt}
"""  # lines 17-22 after the skeleton


LISTENER_CASES: dict[str, tuple[str, list[str]]] = {
    "unknown device": (
        LISTENERS.replace("devices: [plc]", "devices: [plc, pls]"),
        ["x.yaml:21:20: listeners[0].devices[1]: unknown device 'pls' (did you mean 'plc'?)"],
    ),
    "modbus_tls without tls": (
        LISTENERS.replace("    tls: {cert: server.crt, key: server.key, ca: ca.crt}\n", ""),
        ["x.yaml:18:5: listeners[0]: a modbus_tls listener needs tls: {cert, key, ca}"],
    ),
    "tls on a plain listener": (
        LISTENERS.replace("protocol: modbus_tls", "protocol: modbus"),
        ["x.yaml:22:5: listeners[0].tls: tls is only for modbus_tls listeners"],
    ),
    "tls without key": (
        LISTENERS.replace(" key: server.key,", ""),
        ["x.yaml:22:5: listeners[0].tls.key: missing required key"],
    ),
    "bad bind": (
        LISTENERS.replace("bind: 127.0.0.1:8802", "bind: localhost:8802"),
        ["x.yaml:20:5: listeners[0].bind: 'localhost' is not an IP address"],
    ),
    "unknown protocol": (
        LISTENERS.replace("protocol: modbus_tls", "protocol: s7comm"),
        ["x.yaml:19:5: listeners[0].protocol: expected 'modbus', 'modbus_tls', 'enip' or 'enip_tls', not 's7comm'"],
    ),
    "bind clash with metrics": (
        LISTENERS + "metrics: {bind: 127.0.0.1:8802}\n",
        ["x.yaml:20:5: listeners[0].bind: 127.0.0.1:8802 is already bound by metrics.bind"],
    ),
    "overlapping units": (
        LISTENERS.replace("devices: [plc]", "devices: [plc, plc2]")
        + "  - name: spare\n    protocol: modbus\n    bind: 127.0.0.1:8502\n    devices: [plc2]\n",
        [("x.yaml:21:20: listeners[0].devices[1]: devices 'plc' and 'plc2' share unit ids:"
         " a request's unit id must pick one device")],
    ),
    "duplicate listener name": (
        LISTENERS + "  - name: north\n    protocol: modbus\n    bind: 127.0.0.1:8502\n    devices: [plc]\n",
        ["x.yaml:23:5: listeners[1].name: duplicate listener name 'north' (first at line 18)"],
    ),
}

PLC2 = "  plc2:\n    zone: cell-a\n    modbus: {host: 127.0.0.2, units: [1-3]}\n"


@pytest.mark.parametrize("case", list(LISTENER_CASES))
def test_listener_error_is_pinned(case: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    text, expected = LISTENER_CASES[case]
    skeleton = SKELETON
    if "plc2" in text:
        skeleton = SKELETON.replace("principals:\n", PLC2 + "principals:\n")
        expected = [line.replace("x.yaml:21:", "x.yaml:24:").replace("x.yaml:2", "x.yaml:2") for line in expected]
    assert issues_of(tmp_path, skeleton + text, monkeypatch) == expected


def test_all_errors_are_reported_at_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    text = (
        SKELETON.replace("subnet: 192.168.10.0/24", "subnet: 10.0.0.1/8")
        .replace("port: 5020", "port: 0")
        .replace("principal: operator", "principal: nobody")
        .replace("holding: 0-9", "holding: 9-0")
    )
    issues = issues_of(tmp_path, text, monkeypatch)
    assert [line.split(": ")[0:2] for line in issues] == [
        ["x.yaml:3:34", "zones.cell-a.subnet"],
        ["x.yaml:7:31", "devices.plc.modbus.port"],
        ["x.yaml:12:5", "rules[0].principal"],
        ["x.yaml:16:9", "rules[0].allow[0].holding"],
    ]


def test_yaml_syntax_error_has_a_position(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    issues = issues_of(tmp_path, "version: 1\nzones: {cell-a: [\n", monkeypatch)
    assert len(issues) == 1 and issues[0].startswith("x.yaml:3:1: YAML: ")


def test_empty_and_non_mapping_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert issues_of(tmp_path, "# nothing\n", monkeypatch) == ["x.yaml:1:1: the policy file is empty"]
    assert issues_of(tmp_path, "- 1\n", monkeypatch) == [
        "x.yaml:1:1: a policy file is a mapping of sections (version, zones, devices, ...)"
    ]


def test_unreadable_file_is_an_issue(tmp_path: Path) -> None:
    missing = tmp_path / "absent.yaml"
    with pytest.raises(PolicyError) as caught:
        load([missing])
    [issue] = caught.value.issues
    assert (issue.file, issue.line, issue.column) == (str(missing), 1, 1)
    assert "cannot read the policy" in issue.message


def test_issue_fields(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(PolicyError) as caught:
        load_text(tmp_path, SKELETON.replace("holding: 0-9", "holding: 9-0"), monkeypatch)
    [issue] = caught.value.issues
    assert (issue.file, issue.line, issue.column, issue.path, issue.severity) == (
        "x.yaml", 16, 9, "rules[0].allow[0].holding", "error"
    )
    assert issue.message == "range 9-0 is reversed"
    assert str(caught.value) == "x.yaml:16:9: rules[0].allow[0].holding: range 9-0 is reversed"


def test_errors_across_files_name_their_file(tmp_path: Path) -> None:
    base = write(tmp_path, SKELETON.split("rules:\n")[0], "plant.yaml")
    rules = write(tmp_path, "version: 1\nrules:\n  - id: r1\n    principal: ghost\n    device: plc\n"
                  "    allow: [{functions: [3], holding: 0}]\n", "rules.yaml")
    with pytest.raises(PolicyError) as caught:
        load([base, rules])
    assert [str(i) for i in caught.value.issues] == [
        f"{rules}:4:5: rules[0].principal: unknown principal 'ghost'"
    ]


def test_cross_section_checks_run_beside_field_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    text = SKELETON.replace("holding: 0-9", "holding: 9-0") + LISTENERS + "metrics: {bind: 127.0.0.1:8802}\n"
    assert issues_of(tmp_path, text, monkeypatch) == [
        "x.yaml:16:9: rules[0].allow[0].holding: range 9-0 is reversed",
        "x.yaml:20:5: listeners[0].bind: 127.0.0.1:8802 is already bound by metrics.bind",
    ]


def test_alias_bomb_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    levels = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    levels += [f"a{n}: &a{n} [*a{n - 1}, *a{n - 1}, *a{n - 1}, *a{n - 1}, *a{n - 1}, *a{n - 1}, *a{n - 1}, *a{n - 1}, *a{n - 1}, *a{n - 1}]" for n in range(1, 9)]
    [issue] = issues_of(tmp_path, "version: 1\n" + "\n".join(levels) + "\n", monkeypatch)
    assert "the policy expands to more than 200000 values (YAML aliases?)" in issue


def test_recursive_alias_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    [issue] = issues_of(tmp_path, "version: 1\nzones: &z {loop: *z}\n", monkeypatch)
    assert issue.endswith("the policy expands to deeper than 32 levels (YAML aliases?)")


def test_control_character_is_located(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert issues_of(tmp_path, "version: 1\nmode: en\x07force\n", monkeypatch) == [
        "x.yaml:2:9: YAML: character U+0007 is not allowed in a policy"
    ]


def test_yaml_octal_and_base_60_numbers_are_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    text = SKELETON.replace("holding: 0-9", "holding: [0100, 200]").replace("port: 5020", "port: 1:30")
    assert issues_of(tmp_path, text, monkeypatch) == [
        ("x.yaml:7:37: devices.plc.modbus.port: 1:30 reads as a base-60 number, i.e. 90; write it without"
        " leading zeros, or quote it if it is text"),
        ("x.yaml:16:19: rules[0].allow[0].holding[0]: 0100 reads as octal, i.e. 64; write it without leading"
        " zeros, or quote it if it is text"),
    ]
