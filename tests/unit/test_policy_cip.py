"""Policy loading, CIP: `enip` devices and `cip` rule entries, their compiled form, and every error
pinned to file, line, column and field (docs/cip-engine.md sections 1-4)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_policy_robustness import paths, values
from test_policy_support import issues_of, load_text

from zonegate.controlplane.policy import PolicyError, cip, load

HEAD = """\
version: 1
zones:
  cell-a: {interface: veth-cell, subnet: 192.168.10.0/24}
devices:
  press:
    zone: cell-a
    enip: {host: 192.168.10.12}
principals:
  operator: {tls_role: Operator}
rules:
  - id: r1
    principal: operator
    device: press
    cip:
"""  # entries from line 15


def policy(entries: str) -> str:
    return HEAD + entries


def entry_ir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, entries: str, n: int = 0) -> dict[str, object]:
    ir = load_text(tmp_path, policy(entries), monkeypatch).ir()
    return ir["rules"][0]["cip"][n]  # type: ignore[no-any-return]


# --- the compiled form ------------------------------------------------------------------------------

def test_contract_example_compiles_as_section_2_says(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    entries = (
        '      - services: [read_tag, write_tag, 0x4B]\n'
        '        tags: ["Line1.*", "Press_SP[0..9]"]\n'
        '        rate: 5/s\n'
    )
    assert entry_ir(tmp_path, monkeypatch, entries) == {
        "services": ["read_tag", "write_tag"],
        "service_codes": [75],
        "tags": [{"parts": [{"name": "line1", "elements": None}, {"name": "*", "elements": None}]},
                 {"parts": [{"name": "press_sp", "elements": [[0, 9]]}]}],
        "classes": None, "instances": None, "attributes": None,
        "routes": None,
        "rate": {"count": 5, "period_ns": 1_000_000_000, "burst": 5},
    }


def test_device_and_rule_gain_enip_and_cip(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    text = policy("      - services: [forward_open, forward_close]\n").replace(
        "    enip: {host: 192.168.10.12}\n",
        "    modbus: {host: 192.168.10.11, units: [1]}\n    enip: {host: 192.168.10.12, port: 2222, timeout: 500ms}\n",
    )
    loaded = load_text(tmp_path, text, monkeypatch)
    ir = loaded.ir()
    assert ir["devices"] == [{"name": "press", "zone": "cell-a", "host": "192.168.10.11", "port": 502,
                              "units": [[1, 1]], "enip": {"host": "192.168.10.12", "port": 2222}}]
    assert ir["rules"][0]["allow"] == [] and len(ir["rules"][0]["cip"]) == 1
    enip = loaded.devices["press"].enip
    assert enip is not None and enip.timeout == 0.5 and enip.max_connections == 1


def test_enip_only_device_defaults(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ir = load_text(tmp_path, policy("      - services: no_operation\n"), monkeypatch).ir()
    assert ir["devices"] == [{"name": "press", "zone": "cell-a", "host": "192.168.10.12", "port": 44818,
                              "units": None, "enip": {"host": "192.168.10.12", "port": 44818}}]


def test_logical_ranges_in_hex_decimal_and_lists(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    entries = (
        "      - services: [get_attribute_single, 0x01]\n"
        "        class: [0x6B, 1, \"0x02-0x04\"]\n"
        "        instance: \"1-7\"\n"
        "        attribute: [9, 3-5, 6]\n"
    )
    got = entry_ir(tmp_path, monkeypatch, entries)
    assert got["services"] == ["get_attribute_all", "get_attribute_single"]
    assert got["service_codes"] == []
    assert got["classes"] == [[1, 4], [107, 107]]
    assert got["instances"] == [[1, 7]]
    assert got["attributes"] == [[3, 6], [9, 9]]
    assert got["tags"] is None


def test_numbers_name_a_code_unless_it_is_common(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # 0x4C is read_tag only to a tag: as a number it is Other(0x4C); 0x0E is get_attribute_single anywhere.
    entries = "      - services: [0x4C, 0x0E, \"0x0A\", 0]\n        class: 1\n"
    got = entry_ir(tmp_path, monkeypatch, entries)
    assert got["services"] == ["get_attribute_single"]
    assert got["service_codes"] == [0, 0x0A, 0x4C]


@pytest.mark.parametrize("preset", ["read_only", "read_write", "programming"])
def test_presets_are_exactly_the_contract_table(preset: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    table = {
        "read_only": {"get_attribute_all", "get_attribute_list", "get_attribute_single", "find_next_object_instance",
                      "get_member", "no_operation", "read_tag", "read_tag_fragmented",
                      "get_instance_attribute_list", "forward_open", "large_forward_open", "forward_close"},
    }
    table["read_write"] = table["read_only"] | {"set_attribute_single", "set_attribute_list", "write_tag",
                                                "write_tag_fragmented", "read_modify_write_tag", "set_member"}
    table["programming"] = table["read_write"] | {
        "set_attribute_all", "create", "delete", "apply_attributes", "restore", "save", "insert_member",
        "remove_member", "reset", "start", "stop", "group_sync", "get_connection_data", "search_connection_data",
        "get_connection_owner"}
    services = entry_ir(tmp_path, monkeypatch, f"      - services: {preset}\n        tags: X\n")["services"]
    assert isinstance(services, list)
    assert set(services) == table[preset] and services == sorted(services)


def test_every_service_name_is_the_parsers() -> None:
    from zonegate import _engine

    names = getattr(_engine, "cip_service_names", None)
    if names is not None:
        assert set(names()) == set(cip.SERVICES)
    assert not cip.CONTAINERS & set(cip.SERVICES)


@pytest.mark.parametrize(
    ("written", "parts"),
    [
        ("Press_SP[0..9]", [("press_sp", [[0, 9]])]),
        ("Grid[0..3, 7]", [("grid", [[0, 3], [7, 7]])]),
        ("Line1.Motor[2].Speed", [("line1", None), ("motor", [[2, 2]]), ("speed", None)]),
        ("Program:Main.Count", [("program:main", None), ("count", None)]),
        ("*", [("*", None)]),
        ("A.*.B", [("a", None), ("*", None), ("b", None)]),
        ("Big[0..4294967295]", [("big", [[0, 4294967295]])]),
    ],
)
def test_tag_patterns(written: str, parts: list[tuple[str, object]]) -> None:
    pattern = cip.parse_tag_pattern(written)
    assert [(p.name, None if p.elements is None else [list(e) for e in p.elements]) for p in pattern.parts] == parts


@pytest.mark.parametrize(
    ("written", "hops"),
    [
        ("1,0", [[1, [0]]]),
        ("2,10.0.0.5/1,3", [[2, list(b"10.0.0.5")], [1, [3]]]),
        ("", []),
        (" 18 , 255 ", [[18, [255]]]),
    ],
)
def test_routes(written: str, hops: list[object], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    got = entry_ir(tmp_path, monkeypatch, f'      - services: read_tag\n        tags: X\n        routes: ["{written}"]\n')
    assert got["routes"] == [hops]
    assert cip.route_text(cip.parse_route(written)) == written.replace(" ", "")


def test_rule_with_allow_and_cip(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    text = policy("      - services: read_tag\n        tags: X\n").replace(
        "    enip: {host: 192.168.10.12}\n", "    enip: {host: 192.168.10.12}\n    modbus: {host: 192.168.10.12}\n"
    ) + "    allow:\n      - functions: [read_coils]\n        coils: 0-7\n"
    rule = load_text(tmp_path, text, monkeypatch).ir()["rules"][0]
    assert len(rule["allow"]) == 1 and len(rule["cip"]) == 1


# --- errors, each at its file:line:column and field -------------------------------------------------

CASES: dict[str, tuple[str, list[str]]] = {
    "unknown service": (
        policy("      - services: [read_tags]\n        tags: X\n"),
        ["x.yaml:15:20: rules[0].cip[0].services[0]: unknown CIP service 'read_tags' (did you mean 'read_tag'?)"],
    ),
    "container named": (
        policy("      - services: [read_tag, multiple_service_packet]\n        tags: X\n"),
        ["x.yaml:15:30: rules[0].cip[0].services[1]: multiple_service_packet is a container: it is never decided "
         "itself, the requests inside it are; name those services"],
    ),
    "code beyond 0x7f": (
        policy("      - services: 0xCC\n        tags: X\n"),
        ["x.yaml:15:9: rules[0].cip[0].services: service code 0xcc is out of range 0x00-0x7f (0x80 is the reply bit)"],
    ),
    "empty services": (
        policy("      - services: []\n        tags: X\n"),
        ["x.yaml:15:9: rules[0].cip[0].services: list at least one service"],
    ),
    "tags and class combined": (
        policy("      - services: read_tag\n        tags: X\n        class: 0x6B\n"),
        ["x.yaml:17:9: rules[0].cip[0].class: an entry names tags or a class/instance/attribute, not both: "
         "split it in two"],
    ),
    "tags and attribute combined": (
        policy("      - services: read_tag\n        tags: X\n        attribute: 1\n"),
        ["x.yaml:17:9: rules[0].cip[0].attribute: an entry names tags or a class/instance/attribute, not both: "
         "split it in two"],
    ),
    "no target with target services": (
        policy("      - services: [forward_open, read_tag, 0x4B]\n"),
        ["x.yaml:15:9: rules[0].cip[0].services: name the tags or the class the entry allows: read_tag, 0x4b "
         "reach a target"],
    ),
    "bad character in a tag pattern": (
        policy('      - services: read_tag\n        tags: ["Line1.*", "Press-SP"]\n'),
        ["x.yaml:16:27: rules[0].cip[0].tags[1]: bad tag pattern 'Press-SP': '-' is not allowed in a tag name "
         "(letters, digits, '_', ':')"],
    ),
    "empty part in a tag pattern": (
        policy("      - services: read_tag\n        tags: Line1..Speed\n"),
        ["x.yaml:16:9: rules[0].cip[0].tags: bad tag pattern 'Line1..Speed': a part has no name "
         "(write Name or Name[0..9])"],
    ),
    "reversed element range": (
        policy('      - services: read_tag\n        tags: ["SP[9..0]"]\n'),
        ["x.yaml:16:16: rules[0].cip[0].tags[0]: bad tag pattern 'SP[9..0]': element range 9..0 is reversed"],
    ),
    "bad element range": (
        policy('      - services: read_tag\n        tags: ["SP[0-9]"]\n'),
        ["x.yaml:16:16: rules[0].cip[0].tags[0]: bad tag pattern 'SP[0-9]': bad element range '0-9' "
         "(write 3 or 0..9)"],
    ),
    "element beyond u32": (
        policy('      - services: read_tag\n        tags: ["SP[0..4294967296]"]\n'),
        ["x.yaml:16:16: rules[0].cip[0].tags[0]: bad tag pattern 'SP[0..4294967296]': element 4294967296 is out "
         "of range 0-4294967295"],
    ),
    "star with elements": (
        policy('      - services: read_tag\n        tags: ["A.*[1]"]\n'),
        ["x.yaml:16:16: rules[0].cip[0].tags[0]: bad tag pattern 'A.*[1]': '*' matches any part with any "
         "elements; it takes no [...]"],
    ),
    "reversed class range": (
        policy('      - services: get_attribute_all\n        class: "0x07-0x01"\n'),
        ["x.yaml:16:9: rules[0].cip[0].class: class range 7-1 is reversed"],
    ),
    "bad instance": (
        policy("      - services: get_attribute_all\n        instance: [1, one]\n"),
        ["x.yaml:16:23: rules[0].cip[0].instance[1]: bad instance 'one': write 1, 0x6B, \"1-7\" or a list of these"],
    ),
    "attribute beyond u32": (
        policy("      - services: get_attribute_all\n        attribute: 0x100000000\n"),
        ["x.yaml:16:9: rules[0].cip[0].attribute: attribute 4294967296 is out of range 0-4294967295"],
    ),
    "route written as numbers": (
        policy("      - services: read_tag\n        tags: X\n        routes: [1,0]\n"),
        ["x.yaml:17:18: rules[0].cip[0].routes[0]: bad route 1: write it as quoted text, PORT,LINK hops joined by "
         "'/', e.g. \"1,0\" (\"\" is the device itself)"],
    ),
    "route with port 0": (
        policy('      - services: read_tag\n        tags: X\n        routes: ["0,1"]\n'),
        ["x.yaml:17:18: rules[0].cip[0].routes[0]: bad route '0,1': port 0 is out of range 1-65535 "
         "(port 0 is reserved)"],
    ),
    "route with a bad link": (
        policy('      - services: read_tag\n        tags: X\n        routes: ["1,0", "2,plc.example/1,0"]\n'),
        ["x.yaml:17:25: rules[0].cip[0].routes[1]: bad route '2,plc.example/1,0': link 'plc.example' is neither "
         "a slot number nor an IP address"],
    ),
    "route with a slot beyond a byte": (
        policy('      - services: read_tag\n        tags: X\n        routes: "1,256"\n'),
        ["x.yaml:17:9: rules[0].cip[0].routes: bad route '1,256': link 256 is not a slot or node number 0-255 "
         "(an address is text)"],
    ),
    "route not PORT,LINK": (
        policy('      - services: read_tag\n        tags: X\n        routes: ["1/0"]\n'),
        ["x.yaml:17:18: rules[0].cip[0].routes[0]: bad route '1/0': write PORT,LINK hops joined by '/', "
         "e.g. \"1,0\" or \"2,10.0.0.5/1,3\""],
    ),
    "burst without rate": (
        policy("      - services: read_tag\n        tags: X\n        burst: 3\n"),
        ["x.yaml:17:9: rules[0].cip[0].burst: burst needs a rate"],
    ),
    "unknown key in an entry": (
        policy("      - services: read_tag\n        tag: X\n"),
        ["x.yaml:16:9: rules[0].cip[0].tag: unknown key 'tag' (did you mean 'tags'?)"],
    ),
    "rule with neither allow nor cip": (
        HEAD.replace("    cip:\n", "    description: nothing\n"),
        ["x.yaml:11:5: rules[0]: a rule needs allow (Modbus) or cip (EtherNet/IP) entries, or both"],
    ),
    "empty cip list": (
        policy("      []\n").replace("    cip:\n      []\n", "    cip: []\n"),
        ["x.yaml:14:5: rules[0].cip: must not be empty"],
    ),
    "device with neither modbus nor enip": (
        policy("      - services: no_operation\n").replace("    enip: {host: 192.168.10.12}\n",
                                                            "    description: a press\n"),
        ["x.yaml:5:3: devices.press: a device needs modbus, enip or both: how zonegate reaches it"],
    ),
    "enip port out of range": (
        policy("      - services: no_operation\n").replace("{host: 192.168.10.12}", "{host: 192.168.10.12, port: 0}"),
        ["x.yaml:7:33: devices.press.enip.port: port 0 is out of range 1-65535"],
    ),
    "unknown key in enip": (
        policy("      - services: no_operation\n").replace("{host: 192.168.10.12}", "{host: 192.168.10.12, units: 1}"),
        ["x.yaml:7:33: devices.press.enip.units: unknown key 'units'; expected one of: host, port, "
         "max_connections, timeout"],
    ),
    "bad enip host": (
        policy("      - services: no_operation\n").replace("{host: 192.168.10.12}", "{host: 'not a host'}"),
        ["x.yaml:7:12: devices.press.enip.host: bad host 'not a host': an IP address or a DNS name"],
    ),
    "cip entries on a Modbus-only device": (
        policy("      - services: no_operation\n").replace("enip: {host: 192.168.10.12}", "modbus: {host: 192.168.10.12}"),
        ["x.yaml:14:5: rules[0].cip: no device of the rule has an enip section ('press'): these entries reach nothing"],
    ),
    "allow entries on an EtherNet/IP-only device": (
        HEAD.replace("    cip:\n", "    allow:\n      - functions: read_coils\n        coils: 0\n"),
        ["x.yaml:14:5: rules[0].allow: no device of the rule has a modbus section ('press'): these entries reach "
         "nothing"],
    ),
    "modbus listener to an EtherNet/IP-only device": (
        policy("      - services: no_operation\n")
        + "listeners:\n  - {name: l, protocol: modbus, bind: 127.0.0.1:8502, devices: [press]}\n",
        ["x.yaml:17:65: listeners[0].devices[0]: device 'press' has no modbus section: a modbus listener relays "
         "Modbus/TCP"],
    ),
    "enip_tls listener without tls": (
        policy("      - services: no_operation\n")
        + "listeners:\n  - {name: l, protocol: enip_tls, bind: 127.0.0.1:2221, devices: [press]}\n",
        ["x.yaml:17:5: listeners[0]: an enip_tls listener needs tls: {cert, key, ca}"],
    ),
    "plain enip listener with tls": (
        policy("      - services: no_operation\n")
        + "listeners:\n  - {name: l, protocol: enip, bind: 127.0.0.1:44818, devices: [press],\n"
        "     tls: {cert: a, key: b, ca: c}}\n",
        ["x.yaml:18:6: listeners[0].tls: tls is only for enip_tls listeners"],
    ),
    "enip listener with two devices": (
        policy("      - services: no_operation\n").replace(
            "principals:\n", "  press2: {zone: cell-a, enip: {host: 192.168.10.13}}\nprincipals:\n")
        + "listeners:\n  - {name: l, protocol: enip, bind: 127.0.0.1:44818, devices: [press, press2]}\n",
        ["x.yaml:18:54: listeners[0].devices: an EtherNet/IP listener relays to one device (a CIP request names "
         "no unit id to pick one by)"],
    ),
    "enip listener to a Modbus-only device": (
        policy("      - services: no_operation\n").replace(
            "principals:\n", "  pump: {zone: cell-a, modbus: {host: 192.168.10.14}}\nprincipals:\n")
        + "listeners:\n  - {name: l, protocol: enip, bind: 127.0.0.1:44818, devices: [pump]}\n",
        ["x.yaml:18:64: listeners[0].devices[0]: device 'pump' has no enip section: an enip listener relays "
         "EtherNet/IP"],
    ),
}


@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_each_error_names_file_line_and_field(case: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    text, expected = CASES[case]
    got = issues_of(tmp_path, text, monkeypatch)
    assert got[: len(expected)] == expected, got


def test_all_cip_errors_are_reported_at_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    text = policy(
        "      - services: [read_tags]\n"
        "        tags: X\n"
        "      - services: read_tag\n"
        '        tags: ["SP[9..0]"]\n'
        "      - services: [get_attribute_all]\n"
    )
    got = issues_of(tmp_path, text, monkeypatch)
    assert [g.split(": ")[0] for g in got] == [
        "x.yaml:15:20", "x.yaml:18:16", "x.yaml:19:9",
    ], got


def test_tags_on_an_enip_only_device_are_an_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    text = policy("      - services: no_operation\n") + (
        "tags:\n  press:\n    - {name: Speed, table: holding, address: 0, type: uint16}\n"
        "opcua: {poll_principal: poller, tls: {cert: a, key: b, ca: c}}\n"
    )
    text = text.replace("  operator: {tls_role: Operator}\n", "  operator: {tls_role: Operator}\n  poller: {gateway: true}\n")
    got = issues_of(tmp_path, text, monkeypatch)
    assert "x.yaml:19:21: tags.press[0].table: device 'press' has no modbus section: table/address tags are " \
           "Modbus values; name a Logix tag with cip_tag instead" in got


def test_enip_host_as_a_name_warns(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    text = policy("      - services: no_operation\n").replace("{host: 192.168.10.12}", "{host: press.cell-a.example}")
    loaded = load_text(tmp_path, text, monkeypatch)
    assert [str(w) for w in loaded.warnings] == [
        "x.yaml:7:12: devices.press.enip.host: warning: the nftables table needs an address: "
        "'press.cell-a.example' is not an IP address"
    ]


def test_check_summary_counts_cip_entries(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from zonegate.commands.check import summary

    loaded = load_text(tmp_path, policy("      - services: no_operation\n      - services: read_tag\n        tags: X\n"),
                       monkeypatch)
    assert ", 1 rule, 0 allow entries, 2 cip entries, 0 listeners;" in summary("x.yaml", loaded)


_NAME_CHARS = "abcXYZ019_:"


@st.composite
def written_patterns(draw: st.DrawFn) -> tuple[str, list[tuple[str, list[list[int]] | None]]]:
    """A tag pattern as an author writes it, and the parts the loader must make of it."""
    texts: list[str] = []
    parts: list[tuple[str, list[list[int]] | None]] = []
    for n in range(draw(st.integers(1, 4))):
        if draw(st.integers(0, 4)) == 0:
            texts.append("*")
            parts.append(("*", None))
            continue
        name = draw(st.text(_NAME_CHARS, min_size=1, max_size=8))
        dims = draw(st.lists(st.tuples(st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1)).map(sorted),
                             max_size=3))
        written = ",".join(f"{lo}..{hi}" if lo != hi or draw(st.booleans()) else str(lo) for lo, hi in dims)
        texts.append(name + (f"[{written}]" if dims else ""))
        parts.append((name.lower(), [list(d) for d in dims] if dims else None))
    return ".".join(texts), parts


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(written=written_patterns(), codes=st.lists(st.integers(0, 0x7F), max_size=3),
       names=st.lists(st.sampled_from(sorted(cip.SERVICES)), min_size=1, max_size=5),
       routes=st.lists(st.lists(st.tuples(st.integers(1, 65535), st.integers(0, 255)), max_size=3), max_size=2))
def test_written_entries_compile_as_written_and_the_engine_takes_them(
    written: tuple[str, list[tuple[str, object]]], codes: list[int], names: list[str],
    routes: list[list[tuple[int, int]]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    from zonegate import _engine

    text, parts = written
    route_texts = ["/".join(f"{p},{link}" for p, link in route) for route in routes]
    entries = (
        f"      - services: {json.dumps(names + [hex(c) for c in codes])}\n"
        f"        tags: [{json.dumps(text)}]\n"
        + (f"        routes: {json.dumps(route_texts)}\n" if route_texts else "")
    )
    loaded = load_text(tmp_path, policy(entries), monkeypatch)
    got = loaded.ir()["rules"][0]["cip"][0]
    assert [(p["name"], p["elements"]) for p in got["tags"][0]["parts"]] == parts
    assert set(got["services"]) | {f"code {c}" for c in got["service_codes"]} == \
        set(names) | {cip.COMMON_BY_CODE.get(c, f"code {c}") for c in codes}
    assert got["routes"] == (None if not routes else [[[p, [link]] for p, link in route] for route in routes])
    _engine.Engine(loaded.ir_json())


PRESS_LINE = Path(__file__).resolve().parents[2] / "policies" / "press-line.yaml"


@st.composite
def mangled_press_line(draw: st.DrawFn) -> dict[str, Any]:
    """press-line.yaml with one to four of its CIP nodes replaced by junk or removed."""
    doc = yaml.safe_load(PRESS_LINE.read_text())
    targets = [p for p in paths(doc) if p and ("cip" in p or "enip" in p or p[0] == "listeners")]
    for _ in range(draw(st.integers(1, 4))):
        path = draw(st.sampled_from(targets))
        parent: Any = doc
        try:
            for part in path[:-1]:
                parent = parent[part]
            if draw(st.booleans()) and isinstance(parent, dict):
                parent.pop(path[-1], None)
            else:
                parent[path[-1]] = draw(values | st.sampled_from(
                    ["0x4C", "1,0", "Line1.*", "SP[9..0]", "A..B", "0x100000000", "*[1]", "2,plc/1,0", 128]))
        except (KeyError, IndexError, TypeError):
            continue
    return doc  # type: ignore[no-any-return]


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                   HealthCheck.function_scoped_fixture])
@given(doc=mangled_press_line())
def test_mangled_cip_policy_loads_and_compiles_or_fails_with_positions(doc: dict[str, Any], tmp_path: Path) -> None:
    from zonegate import _engine

    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(doc))
    try:
        loaded = load([path], pki_dir=tmp_path)
    except PolicyError as exc:
        assert any(i.severity == "error" for i in exc.issues)
        for issue in exc.issues:
            assert issue.file == str(path) and issue.line >= 1 and issue.column >= 1 and issue.message
    else:
        _engine.Engine(loaded.ir_json())  # whatever loads, the engine takes
