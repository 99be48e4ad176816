"""Policy loading: the OPC UA address space (`tags`) and converter settings (`opcua`), as the converter
reads them (defaults resolved, widths computed) and the errors and warnings an author gets."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_policy_support import issues_of, load_text

from zonegate.controlplane.policy import PolicyError, load
from zonegate.controlplane.policy.model import SECURITY_POLICIES, Endpoint

ROOT = Path(__file__).resolve().parents[2]

BASE = """\
version: 1
zones:
  cell-a: {subnet: 192.168.10.0/24}
devices:
  plc:
    zone: cell-a
    modbus: {host: 127.0.0.1, port: 5020, units: [1]}
principals:
  poller: {gateway: true}
  scada: {opcua_user: scada}
rules:
  - id: poll
    principal: poller
    device: plc
    allow:
      - {functions: [read_only], holding: 0-199, coils: 0-15, discrete_inputs: 0-15, input_registers: 0-99}
  - id: scada-write
    principal: scada
    device: plc
    allow:
      - {functions: [write_single_register, write_multiple_registers, write_single_coil], holding: 100-109, coils: 0}
opcua:
  poll_principal: poller
  tls: {cert: opcua.crt, key: opcua.key, ca: ca.crt}
tags:
  plc:
"""


def policy_with(tags: str, *, opcua: str = "") -> str:
    """BASE with extra `opcua` keys (indented 2) and the tag lines (indented 4) of device plc."""
    text = BASE.replace("opcua:\n", "opcua:\n" + opcua) if opcua else BASE
    return text + tags


ONE = "    - {name: Level, table: holding, address: 0, type: uint16}\n"


def test_demo_tags_and_opcua(tmp_path: Path) -> None:
    policy = load([ROOT / "policies" / "demo.yaml"], pki_dir=tmp_path)
    assert policy.warnings == ()
    tags = policy.tags["tank-plc"]
    assert [(t.name, t.table, t.address, t.type, t.registers, t.scan) for t in tags] == [
        ("Tank/Level", "holding_registers", 0, "uint16", 1, "fast"),
        ("Tank/Ticks", "holding_registers", 1, "uint16", 1, "fast"),
        ("Tank/Temperature", "holding_registers", 2, "float32", 2, "slow"),
        ("Tank/InflowSetpoint", "holding_registers", 100, "uint16", 1, "fast"),
    ]
    setpoint = tags[3]
    assert (setpoint.writable, setpoint.min, setpoint.max, setpoint.scale, setpoint.unit) == (True, 0.0, 100.0, 0.1, "%")
    opcua = policy.opcua
    assert opcua is not None
    assert (opcua.bind, opcua.poll_principal, opcua.default_scan) == (
        Endpoint(host="127.0.0.1", port=4840), "opcua-poller", "fast")
    assert opcua.scan_classes == {"fast": 0.5, "slow": 5.0}
    assert (opcua.security, opcua.modes) == (SECURITY_POLICIES, ("SignAndEncrypt",))
    assert opcua.tls.cert == tmp_path.resolve() / "opcua-server.crt"
    assert opcua.tls.crl == tmp_path.resolve() / "ca.crl"
    assert policy.principals["opcua-poller"].gateway is True


def test_tag_defaults_and_widths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tags = (
        ONE
        + "    - {name: Run, table: coils, address: 0, type: bool}\n"
        + "    - {name: Alarm, table: discrete_inputs, address: 3, type: bool}\n"
        + "    - {name: Total, table: input_registers, address: 10, type: uint32, word_order: little}\n"
        + "    - {name: Energy, table: input_registers, address: 12, type: float64, byte_order: little}\n"
        + "    - {name: Count, table: holding_registers, address: 20, type: int64, scale: 2, offset: -1.5}\n"
        + "    - {name: Batch, table: holding, address: 30, type: string, length: 8, scan: slow}\n"
    )
    policy = load_text(tmp_path, policy_with(tags), monkeypatch)
    level, run, alarm, total, energy, count, batch = policy.tags["plc"]
    assert (level.word_order, level.byte_order, level.scale, level.offset, level.writable) == ("big", "big", 1.0, 0.0, False)
    assert (level.unit, level.description, level.min, level.max, level.length) == (None, None, None, None, None)
    assert [t.registers for t in (level, run, alarm, total, energy, count, batch)] == [1, 1, 1, 2, 4, 4, 8]
    assert [t.end for t in (total, energy, batch)] == [11, 15, 37]
    assert (total.word_order, energy.byte_order, count.scale, count.offset) == ("little", "little", 2.0, -1.5)
    assert (level.scan, level.scan_defaulted, batch.scan, batch.scan_defaulted) == ("fast", True, "slow", False)
    assert policy.opcua is not None and policy.opcua.scan_period(batch.scan) == 5.0
    assert policy.opcua.bind == Endpoint(host="127.0.0.1", port=4840)
    assert policy.opcua.users is None


def test_opcua_choices(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    opcua = ("  bind: 127.0.0.1:14840\n  scan_classes: {slow: 10s, fast: 100ms}\n  security: Aes256_Sha256_RsaPss\n"
             "  modes: [SignAndEncrypt, Sign]\n  users: opcua-users.txt\n")
    policy = load_text(tmp_path, policy_with(ONE, opcua=opcua), monkeypatch)
    assert policy.opcua is not None
    assert (policy.opcua.default_scan, policy.tags["plc"][0].scan) == ("slow", "slow")
    assert (policy.opcua.security, policy.opcua.modes) == (("Aes256_Sha256_RsaPss",), ("SignAndEncrypt", "Sign"))
    assert policy.opcua.users == tmp_path.resolve() / "opcua-users.txt"
    assert policy.opcua.bind.port == 14840


def test_policy_without_opcua_has_none(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    text = BASE.split("opcua:\n")[0]
    policy = load_text(tmp_path, text, monkeypatch)
    assert (policy.opcua, policy.tags) == (None, {})


def test_schema_validates_the_demo_tags() -> None:
    import jsonschema  # type: ignore[import-untyped]
    import yaml

    from zonegate.controlplane.policy import json_schema

    document = yaml.safe_load((ROOT / "policies" / "demo.yaml").read_text())
    jsonschema.Draft202012Validator(json_schema()).validate(document)
    bad = {**document, "tags": {"tank-plc": [{"name": "x", "table": "holding", "address": 0, "type": "uint8"}]}}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.Draft202012Validator(json_schema()).validate(bad)


# Line 27 holds the first tag, line 23 `poll_principal` (or the first extra opcua key).
TAG_ERRORS = {
    "unknown device": (
        policy_with(ONE) + "  plk:\n" + ONE.replace("Level", "Flow"),
        ["x.yaml:28:3: tags.plk: unknown device 'plk' (did you mean 'plc'?)"],
    ),
    "overlap of a 32-bit tag": (
        policy_with(ONE.replace("uint16", "int32") + "    - {name: Flow, table: holding, address: 1, type: uint16}\n"),
        ["x.yaml:28:36: tags.plc[1].address: 'Flow' (holding_registers 1) overlaps tag 'Level' (0-1)"],
    ),
    "same address in another table is no overlap, a repeated name is": (
        policy_with(ONE + "    - {name: Level, table: input_registers, address: 0, type: uint16}\n"),
        [("x.yaml:28:8: tags.plc[1].name: duplicate tag name 'Level' (first at x.yaml:27): tag names are unique"
         " across all devices")],
    ),
    "a name repeated on another device": (
        policy_with(ONE).replace("units: [1]}", "units: [1]}\n  plc2: {zone: cell-a, modbus: {host: 127.0.0.2}}")
        + "  plc2:\n" + ONE,
        [("x.yaml:30:7: tags.plc2[0]: warning: no rule lets the poll principal read holding_registers 0 of 'plc2':"
         " tag 'Level' will always be Bad"),
         ("x.yaml:30:8: tags.plc2[0].name: duplicate tag name 'Level' (first at x.yaml:28): tag names are unique"
         " across all devices")],
    ),
    "a unit the device does not answer": (
        policy_with("    - {name: S, table: holding, address: 0, type: int16, modbus_unit: 2}\n"),
        ["x.yaml:27:58: tags.plc[0].modbus_unit: unit 2 is not a unit of device 'plc'"],
    ),
    "numeric type on coils": (
        policy_with("    - {name: Run, table: coils, address: 0, type: uint16}\n"),
        ["x.yaml:27:45: tags.plc[0].type: coils hold single bits: a coils tag is type bool, not uint16"],
    ),
    "bool on registers": (
        policy_with("    - {name: Run, table: holding, address: 0, type: bool}\n"),
        ["x.yaml:27:47: tags.plc[0].type: bool is for coils and discrete_inputs; holding_registers hold 16-bit registers"],
    ),
    "writable input register": (
        policy_with("    - {name: T, table: input_registers, address: 0, type: int16, writable: true}\n"),
        ["x.yaml:27:66: tags.plc[0].writable: input_registers are read-only in Modbus: the tag cannot be writable"],
    ),
    "writable discrete input": (
        policy_with("    - {name: A, table: discrete_inputs, address: 0, type: bool, writable: true}\n"),
        ["x.yaml:27:65: tags.plc[0].writable: discrete_inputs are read-only in Modbus: the tag cannot be writable"],
    ),
    "address range overflow": (
        policy_with("    - {name: E, table: holding, address: 65534, type: float64}\n"),
        ["x.yaml:27:33: tags.plc[0].address: float64 at 65534 spans 4 addresses and runs past 65535"],
    ),
    "string without length": (
        policy_with("    - {name: S, table: holding, address: 0, type: string}\n"),
        ["x.yaml:27:7: tags.plc[0]: a string tag needs length: the registers it spans"],
    ),
    "length on a number": (
        policy_with("    - {name: S, table: holding, address: 0, type: int32, length: 2}\n"),
        ["x.yaml:27:58: tags.plc[0].length: length is for string tags; a int32 spans 2"],
    ),
    "unknown type": (
        policy_with("    - {name: S, table: holding, address: 0, type: uint8}\n"),
        [("x.yaml:27:45: tags.plc[0].type: expected 'bool', 'int16', 'uint16', 'int32', 'uint32', 'float32', "
         "'float64', 'int64', 'uint64', 'string', 'sint', 'int', 'dint', 'lint', 'real' or 'lreal', not 'uint8'")],
    ),
    "unknown table": (
        policy_with("    - {name: S, table: holdings, address: 0, type: int16}\n"),
        ["x.yaml:27:17: tags.plc[0].table: unknown table 'holdings': coils, discrete_inputs, input_registers or holding"],
    ),
    "unknown key": (
        policy_with("    - {name: S, table: holding, address: 0, type: int16, scan_class: fast}\n"),
        [("x.yaml:27:58: tags.plc[0].scan_class: unknown key 'scan_class'; expected one of: name, cip_tag, table, address, "
         "type, length, word_order, byte_order, scale, offset, unit, description, writable, min, max, scan, modbus_unit")],
    ),
    "max beyond the scaled type": (
        policy_with("    - {name: S, table: holding, address: 100, type: uint16, scale: 0.1, writable: true, max: 7000}\n"),
        [("x.yaml:27:89: tags.plc[0].max: max 7000 is outside what a uint16 with scale 0.1 and offset 0 can hold "
         "(0 to 6553.5)")],
    ),
    "min above max": (
        policy_with("    - {name: S, table: holding, address: 100, type: int16, writable: true, min: 5, max: 1}\n"),
        ["x.yaml:27:76: tags.plc[0].min: min 5 is above max 1"],
    ),
    "scale on a bool": (
        policy_with("    - {name: S, table: coils, address: 0, type: bool, scale: 2}\n"),
        ["x.yaml:27:55: tags.plc[0].scale: scale is for numeric tags, not bool"],
    ),
    "zero scale": (
        policy_with("    - {name: S, table: holding, address: 0, type: int16, scale: 0}\n"),
        ["x.yaml:27:58: tags.plc[0].scale: scale must not be 0"],
    ),
    "scale is not a number": (
        policy_with("    - {name: S, table: holding, address: 0, type: int16, scale: .inf}\n"),
        ["x.yaml:27:58: tags.plc[0].scale: expected a number, not inf"],
    ),
    "bad tag name": (
        policy_with("    - {name: 'Tank//Level', table: holding, address: 0, type: int16}\n"),
        [("x.yaml:27:8: tags.plc[0].name: bad tag name 'Tank//Level': letters, digits, '_', '.', '-', single spaces "
         "or '/' between words, at most 128 characters")],
    ),
    "unknown scan class": (
        policy_with("    - {name: S, table: holding, address: 0, type: int16, scan: medium}\n"),
        ["x.yaml:27:58: tags.plc[0].scan: unknown scan class 'medium'; the opcua section defines fast, slow"],
    ),
    "tags without opcua": (
        BASE.replace("opcua:\n  poll_principal: poller\n  tls: {cert: opcua.crt, key: opcua.key, ca: ca.crt}\n", "")
        + ONE,
        ["x.yaml:22:1: tags: tags are served by the OPC UA converter: add an opcua section"],
    ),
}

OPCUA_ERRORS = {
    "unknown poll principal": (
        policy_with(ONE).replace("poll_principal: poller", "poll_principal: poler"),
        ["x.yaml:23:3: opcua.poll_principal: unknown principal 'poler' (did you mean 'poller'?)"],
    ),
    "poll principal that is a client": (
        policy_with(ONE).replace("poll_principal: poller", "poll_principal: scada"),
        ["x.yaml:23:3: opcua.poll_principal: principal 'scada' is not the gateway's own: declare it with gateway: true",
         ("x.yaml:27:7: tags.plc[0]: warning: no rule lets the poll principal read holding_registers 0 of 'plc': "
         "tag 'Level' will always be Bad")],
    ),
    "security None": (
        policy_with(ONE, opcua="  security: [Basic256Sha256, None]\n"),
        ["x.yaml:23:30: opcua.security[1]: security policy None is never offered: sessions are always signed"],
    ),
    "mode None": (
        policy_with(ONE, opcua="  modes: None\n"),
        ["x.yaml:23:3: opcua.modes: security mode None is never offered: sessions are always signed"],
    ),
    "misspelt security policy": (
        policy_with(ONE, opcua="  security: Basic256sha256\n"),
        [("x.yaml:23:3: opcua.security: unknown security policy 'Basic256sha256'; expected one of: Basic256Sha256, "
         "Aes128_Sha256_RsaOaep, Aes256_Sha256_RsaPss (did you mean 'Basic256Sha256'?)")],
    ),
    "repeated mode": (
        policy_with(ONE, opcua="  modes: [Sign, Sign]\n"),
        ["x.yaml:23:17: opcua.modes[1]: Sign is listed twice"],
    ),
    "no scan classes": (
        policy_with(ONE, opcua="  scan_classes: {}\n"),
        ["x.yaml:23:3: opcua.scan_classes: must not be empty"],
    ),
    "bad scan period": (
        policy_with(ONE, opcua="  scan_classes: {fast: 0s}\n"),
        ["x.yaml:23:18: opcua.scan_classes.fast: duration '0s' must be more than 0 and at most 24h"],
    ),
    "unknown default scan": (
        policy_with(ONE, opcua="  default_scan: medium\n"),
        ["x.yaml:23:3: opcua.default_scan: unknown scan class 'medium'; the opcua section defines fast, slow"],
    ),
    "missing tls": (
        policy_with(ONE).replace("  tls: {cert: opcua.crt, key: opcua.key, ca: ca.crt}\n", ""),
        ["x.yaml:22:1: opcua.tls: missing required key"],
    ),
    "bind clash with metrics": (
        policy_with(ONE, opcua="  bind: 127.0.0.1:9802\n"),
        ["x.yaml:23:3: opcua.bind: 127.0.0.1:9802 is already bound by metrics.bind"],
    ),
    "gateway principal with an identity": (
        policy_with(ONE).replace("poller: {gateway: true}", "poller: {gateway: true, source: 127.0.0.1}"),
        [("x.yaml:9:12: principals.poller.gateway: a gateway principal is zonegate itself: it takes no tls_role, "
         "tls_subject, opcua_user or source")],
    ),
}


@pytest.mark.parametrize("case", list(TAG_ERRORS))
def test_tag_error_is_pinned(case: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    text, expected = TAG_ERRORS[case]
    assert issues_of(tmp_path, text, monkeypatch) == expected


@pytest.mark.parametrize("case", list(OPCUA_ERRORS))
def test_opcua_error_is_pinned(case: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    text, expected = OPCUA_ERRORS[case]
    assert issues_of(tmp_path, text, monkeypatch) == expected


def warnings_of(tmp_path: Path, text: str, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    return [str(w) for w in load_text(tmp_path, text, monkeypatch).warnings]


def test_writable_tags_some_rule_allows_load_without_warnings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tags = ("    - {name: SP, table: holding, address: 100, type: uint16, writable: true}\n"
            "    - {name: SP2, table: holding, address: 102, type: float32, writable: true}\n"
            "    - {name: Run, table: coils, address: 0, type: bool, writable: true}\n")
    assert warnings_of(tmp_path, policy_with(tags), monkeypatch) == []


def test_writable_tag_no_rule_allows_is_a_warning(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tags = ("    - {name: SP, table: holding, address: 109, type: uint32, writable: true}\n"
            "    - {name: Run, table: coils, address: 1, type: bool, writable: true}\n")
    assert warnings_of(tmp_path, policy_with(tags), monkeypatch) == [
        ("x.yaml:27:62: tags.plc[0].writable: warning: no rule lets any opcua_user principal write holding_registers"
        " 109-110 of 'plc': writes to 'SP' are always denied"),
        ("x.yaml:28:57: tags.plc[1].writable: warning: no rule lets any opcua_user principal write coils 1 of 'plc':"
        " writes to 'Run' are always denied"),
    ]


def test_write_rights_of_a_client_principal_do_not_count(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # the only rule that writes 100-109 is for a TLS principal: no OPC UA user can ever write the tag
    text = policy_with("    - {name: SP, table: holding, address: 100, type: uint16, writable: true}\n")
    text = text.replace("scada: {opcua_user: scada}", "scada: {tls_role: Scada}")
    assert warnings_of(tmp_path, text, monkeypatch) == [
        ("x.yaml:27:62: tags.plc[0].writable: warning: no rule lets any opcua_user principal write holding_registers"
        " 100 of 'plc': writes to 'SP' are always denied"),
    ]


def test_tag_the_poller_cannot_read_is_a_warning(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    text = policy_with("    - {name: Far, table: holding, address: 198, type: float64}\n")
    assert warnings_of(tmp_path, text, monkeypatch) == [
        ("x.yaml:27:7: tags.plc[0]: warning: no rule lets the poll principal read holding_registers 198-201 of 'plc':"
        " tag 'Far' will always be Bad"),
    ]


def test_tags_merge_across_files_by_device(tmp_path: Path) -> None:
    main = tmp_path / "main.yaml"
    main.write_text(policy_with(ONE))
    more = tmp_path / "more.yaml"
    more.write_text("version: 1\ndevices:\n  plc3: {zone: cell-a, modbus: {host: 127.0.0.3}}\n"
                    "tags:\n  plc3:\n" + ONE.replace("Level", "Level3"))
    clash = tmp_path / "clash.yaml"
    clash.write_text("version: 1\ntags:\n  plc:\n" + ONE)
    policy = load([main, more])
    assert {device: [t.name for t in tags] for device, tags in policy.tags.items()} == {"plc": ["Level"], "plc3": ["Level3"]}
    with pytest.raises(PolicyError) as caught:
        load([main, clash])
    assert [str(i) for i in caught.value.errors] == [f"{clash}:3:3: tags.plc: already defined at {main}:26"]


def test_a_gateway_principal_allowed_to_write_is_a_warning(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    text = policy_with(ONE).replace("{functions: [read_only], holding: 0-199", "{functions: [read_write], holding: 0-199")
    assert warnings_of(tmp_path, text, monkeypatch) == [
        ("x.yaml:16:10: rules[0].allow[0].functions: warning: allows a gateway principal to write: the converter's"
        " polls only read, and OPC UA writes are decided for the writing user's principal"),
    ]


def test_tags_on_other_units_of_one_device_may_share_addresses(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    text = policy_with(ONE + "    - {name: Level2, table: holding, address: 0, type: uint16, modbus_unit: 2}\n")
    policy = load_text(tmp_path, text.replace("units: [1]", "units: [1, 2]"), monkeypatch)
    assert [(t.name, t.modbus_unit) for t in policy.tags["plc"]] == [("Level", None), ("Level2", 2)]


_tag_values = {
    "table": st.sampled_from(["coils", "discrete_inputs", "input_registers", "holding", "holding_registers", "x", 3]),
    "address": st.one_of(st.integers(-2, 65540), st.text(max_size=4)),
    "type": st.sampled_from(["bool", "int16", "uint16", "int32", "uint32", "float32", "float64", "int64", "string", "u8"]),
    "length": st.one_of(st.none(), st.integers(-1, 130)),
    "scale": st.one_of(st.floats(allow_nan=True), st.integers(-3, 3), st.booleans()),
    "offset": st.floats(allow_nan=True, allow_infinity=True),
    "min": st.one_of(st.none(), st.floats(-1e20, 1e20), st.integers(-(2**70), 2**70)),
    "max": st.one_of(st.none(), st.floats(-1e20, 1e20), st.integers(-(2**70), 2**70)),
    "writable": st.one_of(st.booleans(), st.just("yes")),
    "scan": st.sampled_from(["fast", "slow", "medium", 5]),
    "word_order": st.sampled_from(["big", "little", "middle"]),
    "modbus_unit": st.integers(-1, 300),
}


@st.composite
def tag_lists(draw: st.DrawFn) -> list[dict[str, object]]:
    tags = []
    for n in range(draw(st.integers(1, 4))):
        keys = draw(st.sets(st.sampled_from(sorted(_tag_values)), max_size=len(_tag_values)))
        tag: dict[str, object] = {"name": f"T{n % 3}"}
        tag.update({key: draw(_tag_values[key]) for key in keys})
        tags.append(tag)
    return tags


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(tags=tag_lists())
def test_any_tag_list_loads_or_fails_with_positioned_issues(tags: list[dict[str, object]], tmp_path: Path) -> None:
    document = yaml.safe_load(BASE + "    []\n")
    document["tags"]["plc"] = tags
    path = tmp_path / "fuzz.yaml"
    path.write_text(yaml.safe_dump(document))
    try:
        policy = load([path])
    except PolicyError as exc:
        assert exc.errors and all(issue.line >= 1 and issue.column >= 1 for issue in exc.issues)
        return
    for tag in policy.tags["plc"]:
        assert 0 <= tag.address <= tag.end <= 65535 and tag.scan in ("fast", "slow")


def test_a_rule_for_other_units_does_not_let_the_poller_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    text = policy_with(ONE).replace("  - id: poll\n    principal: poller\n", "  - id: poll\n    principal: poller\n    units: 2\n")
    text = text.replace("units: [1]}", "units: [1, 2]}")
    assert warnings_of(tmp_path, text, monkeypatch) == [
        ("x.yaml:28:7: tags.plc[0]: warning: no rule lets the poll principal read holding_registers 0 of 'plc':"
        " tag 'Level' will always be Bad"),
    ]
