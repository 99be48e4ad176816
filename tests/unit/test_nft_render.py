"""Rendering the `inet zonegate` table: what each policy fact turns into, without a kernel."""

from __future__ import annotations

import ipaddress
import json
import textwrap
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import require
from zonegate.controlplane.nftables.adapter import spec_from_policy
from zonegate.controlplane.nftables.apply import shape
from zonegate.controlplane.nftables.diff import diff
from zonegate.controlplane.nftables.model import (
    FirewallSpec,
    FirewallSpecError,
    Flow,
    Listener,
    Metrics,
    Rate,
    Upstream,
    Zone,
    networks,
)
from zonegate.controlplane.nftables.render import Ruleset, render

CELL = Zone("cell-a", "veth-cell", ipaddress.ip_network("192.168.10.0/24"))
L3 = Zone("level3", "veth-l3", ipaddress.ip_network("10.3.0.0/24"))


def spec(**changes: Any) -> FirewallSpec:
    fields: dict[str, Any] = dict(
        zones=(CELL, L3),
        listeners=(Listener("l3-modbus-security", 802, networks("10.3.0.0/24"), "modbus_tls"),
                   Listener("zone-modbus", 502, networks("192.168.10.0/24"))),
        upstreams=(Upstream("press-plc", ipaddress.ip_network("192.168.10.11"), 502),),
        flows=(Flow("ntp", networks("10.3.0.5"), networks("192.168.10.0/24"), "udp", 123),),
        metrics=Metrics(9802, networks("10.3.0.7")),
    )
    fields.update(changes)
    return FirewallSpec(**fields)


def objects(ruleset: Ruleset, kind: str) -> list[dict[str, Any]]:
    return [o[kind] for o in ruleset.objects if kind in o]


def rules(ruleset: Ruleset, chain: str) -> list[dict[str, Any]]:
    return [r for r in objects(ruleset, "rule") if r["chain"] == chain]


def rule_lines(ruleset: Ruleset, chain: str) -> list[str]:
    text = ruleset.text
    body = text[text.index(f"\tchain {chain} {{\n"):]
    body = body[: body.index("\n\t}")]
    return [line.strip() for line in body.splitlines()[1:]]


# --- the table's frame ---------------------------------------------------------------------------------


def test_base_chains_drop_by_default() -> None:
    chains = {c["name"]: c for c in objects(render(spec()), "chain")}
    for hook in ("input", "forward", "output"):
        assert chains[hook] == {"family": "inet", "table": "zonegate", "name": hook, "type": "filter",
                                "hook": hook, "prio": 0, "policy": "drop"}


def test_an_empty_spec_still_closes_the_box() -> None:
    ruleset = render(FirewallSpec())
    assert rule_lines(ruleset, "forward")[-1] == 'goto drop_forward comment "default"'
    assert rule_lines(ruleset, "input")[-1] == 'goto drop_input comment "default"'
    assert rule_lines(ruleset, "output")[-1] == 'goto drop_output comment "default"'
    accepts = [line for line in rule_lines(ruleset, "forward") if " accept " in line]
    assert accepts == ['ct state established,related accept comment "established"']


def test_replacement_names_only_its_own_table_and_never_flushes() -> None:
    commands = render(spec()).replace_commands()["nftables"]
    assert commands[:2] == [{"add": {"table": {"family": "inet", "name": "zonegate"}}},
                            {"delete": {"table": {"family": "inet", "name": "zonegate"}}}]
    assert all(set(c) == {"add"} for c in commands[2:])
    for command in commands:
        body = next(iter(command.values()))
        inner = next(iter(body.values()))
        assert inner.get("table", inner.get("name")) == "zonegate"
    assert "flush" not in json.dumps(commands)


def test_text_and_json_carry_the_same_rules_in_the_same_order() -> None:
    ruleset = render(spec())
    for chain in (c["name"] for c in objects(ruleset, "chain")):
        comments = [r["comment"] for r in rules(ruleset, chain)]
        lines = rule_lines(ruleset, chain)
        lines = [line for line in lines if not line.startswith("type filter")]
        assert [line.rsplit(' comment "', 1)[1][:-1] for line in lines] == comments


@pytest.mark.filterwarnings("ignore::DeprecationWarning:jsonschema")
def test_document_validates_against_the_libnftables_schema() -> None:
    try:
        import nftables  # type: ignore[import-untyped,unused-ignore]
    except ImportError:
        nftables = None
    require(nftables is not None, "needs python3-nftables (make link-nftables)")
    validator = nftables.SchemaValidator()
    validator.validate(render(spec()).document())
    validator.validate(render(spec()).replace_commands())


# --- input -------------------------------------------------------------------------------------------


def test_each_listener_port_is_open_only_to_its_named_set() -> None:
    ruleset = render(spec())
    sets = {s["name"]: s for s in objects(ruleset, "set")}
    assert sets["listener_l3_modbus_security_v4"]["elem"] == [{"prefix": {"addr": "10.3.0.0", "len": 24}}]
    assert ('tcp dport 802 ip saddr @listener_l3_modbus_security_v4 ct state new accept '
            'comment "listener l3-modbus-security"') in rule_lines(ruleset, "input")
    assert ('tcp dport 502 ip saddr @listener_zone_modbus_v4 ct state new accept '
            'comment "listener zone-modbus"') in rule_lines(ruleset, "input")


def test_new_connections_are_metered_per_source_before_they_are_accepted() -> None:
    ruleset = render(spec(connection_rate=Rate(7)))
    lines = rule_lines(ruleset, "input")
    flood = ('tcp dport 802 ip saddr @listener_l3_modbus_security_v4 ct state new '
             'update @meter_l3_modbus_security_v4 { ip saddr limit rate over 7/second burst 7 packets } '
             'goto drop_flood_l3_modbus_security comment "listener l3-modbus-security flood"')
    assert lines.index(flood) + 1 == lines.index(
        'tcp dport 802 ip saddr @listener_l3_modbus_security_v4 ct state new accept '
        'comment "listener l3-modbus-security"')
    meter = next(s for s in objects(ruleset, "set") if s["name"] == "meter_l3_modbus_security_v4")
    assert meter["flags"] == ["timeout"] and meter["timeout"] == 60 and "elem" not in meter


def test_metrics_port_only_to_its_scrapers_and_closed_without_them() -> None:
    lines = rule_lines(render(spec()), "input")
    assert 'tcp dport 9802 ip saddr @metrics_scrapers_v4 ct state new accept comment "metrics"' in lines
    closed = rule_lines(render(spec(metrics=Metrics(9802))), "input")
    assert not any("9802" in line for line in closed)


def test_ipv6_sources_get_their_own_sets_and_rules() -> None:
    ruleset = render(spec(listeners=(Listener("north", 802, networks(["10.3.0.0/24", "fd00:3::/64"])),)))
    sets = {s["name"]: s for s in objects(ruleset, "set")}
    assert sets["listener_north_v6"]["type"] == "ipv6_addr"
    assert sets["listener_north_v6"]["elem"] == [{"prefix": {"addr": "fd00:3::", "len": 64}}]
    assert any("ip6 saddr @listener_north_v6" in line and line.endswith("accept comment \"listener north\"")
               for line in rule_lines(ruleset, "input"))


def test_overlapping_sources_are_merged_since_interval_sets_refuse_overlaps() -> None:
    ruleset = render(spec(listeners=(Listener("north", 802, networks(["10.3.0.0/24", "10.3.0.77", "10.3.1.0/24"])),)))
    north = next(s for s in objects(ruleset, "set") if s["name"] == "listener_north_v4")
    assert north["elem"] == [{"prefix": {"addr": "10.3.0.0", "len": 23}}]


# --- forward -----------------------------------------------------------------------------------------


def test_forward_allows_exactly_the_declared_flow() -> None:
    ruleset = render(spec())
    accepts = [line for line in rule_lines(ruleset, "forward") if " accept " in line]
    assert accepts == [
        'ct state established,related accept comment "established"',
        'ip saddr @flow_ntp_from_v4 ip daddr @flow_ntp_to_v4 udp dport 123 ct state new accept comment "flow ntp"',
    ]


def test_every_zone_pair_has_a_drop_point_of_its_own() -> None:
    lines = rule_lines(render(spec()), "forward")
    assert ('iifname "veth-l3" oifname "veth-cell" goto drop_zone_level3_to_cell_a '
            'comment "zone level3 to cell-a"') in lines
    assert ('iifname "veth-cell" oifname "veth-l3" goto drop_zone_cell_a_to_level3 '
            'comment "zone cell-a to level3"') in lines


def test_zone_without_interface_has_no_pair_rule() -> None:
    ruleset = render(spec(zones=(CELL, Zone("level3", None, L3.subnet))))
    assert not any("iifname" in line for line in rule_lines(ruleset, "forward"))


# --- output ------------------------------------------------------------------------------------------


def test_box_dials_upstreams_only_on_their_ports() -> None:
    lines = rule_lines(render(spec()), "output")
    accepts = [line for line in lines if " accept " in line]
    assert accepts == [
        'oif "lo" accept comment "loopback"',
        'ct state established,related accept comment "established"',
        'icmpv6 type { nd-router-solicit, nd-neighbor-solicit, nd-neighbor-advert } ip6 hoplimit 255 accept '
        'comment "neighbour discovery"',
        'icmpv6 type { mld-listener-report, mld2-listener-report } ip6 hoplimit 1 accept '
        'comment "multicast listener reports"',
        'ip daddr @upstream_press_plc_v4 tcp dport 502 ct state new accept comment "upstream press-plc"',
    ]


# --- drops -------------------------------------------------------------------------------------------


def test_drops_are_logged_under_a_shared_rate_to_the_configured_group_then_counted() -> None:
    ruleset = render(spec(log_group=7, log_rate=Rate(3, "minute")))
    limit = objects(ruleset, "limit")
    assert limit == [{"family": "inet", "table": "zonegate", "name": "log_rate", "rate": 3, "per": "minute",
                      "burst": 5}]
    assert rule_lines(ruleset, "drop_flood_zone_modbus") == [
        'limit name "log_rate" log prefix "zonegate drop zone-modbus flood: " group 7 comment "log"',
        'counter drop comment "drop"',
    ]
    drops = [c["name"] for c in objects(ruleset, "chain") if c["name"].startswith("drop_")]
    assert set(drops) >= {"drop_invalid", "drop_input", "drop_forward", "drop_output"}
    for chain in drops:
        assert len(rules(ruleset, chain)) == 2


def test_long_names_are_clipped_to_kernel_limits() -> None:
    name = "x" * 200
    ruleset = render(spec(listeners=(Listener(name, 802, networks("10.3.0.0/24")),)))
    for rule in objects(ruleset, "rule"):
        assert len(rule["comment"].encode()) <= 127
        for expr in rule["expr"]:
            if "log" in expr:
                assert len(expr["log"]["prefix"].encode()) <= 127


# --- refusals ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("build", [
    lambda: Listener('bad"name', 802, ()),
    lambda: Listener("north", 0, ()),
    lambda: Upstream("plc", ipaddress.ip_network("192.168.10.11"), 70000),
    lambda: Flow("ntp", networks("10.3.0.5"), networks("fd00::1"), "udp", 123),
    lambda: Flow("ntp", networks("10.3.0.5"), networks("192.168.10.1"), "icmp", 1),  # type: ignore[arg-type]
    lambda: Zone("cell", "bad name with spaces", None),
    lambda: FirewallSpec(log_group=70000),
    lambda: FirewallSpec(zones=(CELL, Zone("other", "veth-cell", None))),
    lambda: Rate.parse("fast"),
    lambda: Rate.parse("0/s"),
    lambda: networks("10.3.0.300"),
])
def test_inexpressible_specs_are_refused(build: Any) -> None:
    with pytest.raises(FirewallSpecError):
        build()


def test_names_that_collide_as_identifiers_are_refused() -> None:
    with pytest.raises(FirewallSpecError, match="both render as nft name"):
        render(spec(listeners=(Listener("north-1", 802, networks("10.3.0.0/24")),
                               Listener("north_1", 803, networks("10.3.0.0/24")))))


@pytest.mark.parametrize("text, count, unit", [("10/s", 10, "second"), ("20/second", 20, "second"),
                                               ("100/min", 100, "minute"), ("5 / h", 5, "hour")])
def test_rates_read_as_nft_writes_them(text: str, count: int, unit: str) -> None:
    assert Rate.parse(text) == Rate(count, unit)


# --- diff ----------------------------------------------------------------------------------------------


def test_diff_is_empty_for_the_same_table_and_shows_moved_lines_otherwise() -> None:
    before = render(spec())
    assert diff(before.text, before) == ""
    after = render(spec(metrics=Metrics(9802, networks(["10.3.0.7", "10.3.0.8"]))))
    changes = diff(before.text, after)
    assert "-\t\telements = { 10.3.0.7 }\n" in changes
    assert "+\t\telements = { 10.3.0.7, 10.3.0.8 }\n" in changes
    assert diff(None, after).startswith("--- kernel: (none)\n")


# --- verification shape --------------------------------------------------------------------------------


def test_shape_reads_a_kernel_listing_the_way_it_reads_a_render() -> None:
    """A kernel listing spells elements, flags and set flags its own way; verification must not mind."""
    ruleset = render(spec(metrics=Metrics(9802, networks(["10.3.0.7", "10.3.0.8"]))))
    listed = json.loads(json.dumps(ruleset.objects))
    for obj in listed:
        body = next(iter(obj.values()))
        body["handle"] = 1
        if body.get("name") == "metrics_scrapers_v4":
            body["elem"] = [{"range": ["10.3.0.7", "10.3.0.8"]}]
        if body.get("name", "").startswith("meter_"):
            body["flags"] = ["dynamic", "timeout"]
            body["elem"] = [{"elem": {"val": "10.3.0.9", "timeout": 60}}]
    assert shape(listed) == shape(ruleset.objects)


def test_shape_tells_a_missing_rule_or_element_apart() -> None:
    ruleset = render(spec())
    no_rule = [o for o in ruleset.objects if o.get("rule", {}).get("comment") != "flow ntp"]
    assert shape(no_rule)["rules"] != shape(ruleset.objects)["rules"]
    other = json.loads(json.dumps(ruleset.objects))
    for obj in other:
        if obj.get("set", {}).get("name") == "metrics_scrapers_v4":
            obj["set"]["elem"] = ["10.3.0.8"]
    assert shape(other)["sets"] != shape(ruleset.objects)["sets"]


# --- from a loaded policy ------------------------------------------------------------------------------

POLICY = """\
version: 1
zones:
  cell-a: {interface: veth-cell, subnet: 192.168.10.0/24}
  level3: {interface: veth-l3, subnet: 10.3.0.0/24}
devices:
  press-plc:
    zone: cell-a
    modbus: {host: 192.168.10.11, port: 502, units: [1]}
  l3-historian:
    zone: level3
    modbus:
      host: 10.3.0.20
      port: 802
      tls: {cert: c.crt, key: c.key, ca: ca.crt}
principals:
  operator: {tls_role: Operator}
  line-hmi: {source: 192.168.10.50}
rules:
  - id: r1
    principal: operator
    device: press-plc
    allow:
      - functions: [read_holding_registers]
        holding: 0-9
listeners:
  - name: l3-modbus-security
    protocol: modbus_tls
    bind: 10.3.0.1:802
    devices: [press-plc]
    tls: {cert: s.crt, key: s.key, ca: ca.crt}
  - name: zone-modbus
    protocol: modbus
    bind: 192.168.10.1:502
    devices: [l3-historian]
  - name: engineering
    protocol: modbus_tls
    bind: 10.3.0.1:8802
    devices: [press-plc]
    tls: {cert: s.crt, key: s.key, ca: ca.crt}
    allow_from: [10.3.0.40/32]
flows:
  - {id: ntp, from: 10.3.0.5, to: 192.168.10.0/24, proto: udp, port: 123}
metrics: {bind: 10.3.0.1:9802, allow_from: [10.3.0.7/32]}
firewall: {log_group: 4, log_rate: 5/s, connection_rate: 50/s}
"""


def load_spec(tmp_path: Path, text: str = POLICY) -> FirewallSpec:
    from zonegate.controlplane.policy import load

    path = tmp_path / "policy.yaml"
    path.write_text(textwrap.dedent(text))
    return spec_from_policy(load([path]))


def test_loaded_policy_resolves_listener_sources_from_the_zones(tmp_path: Path) -> None:
    fw = load_spec(tmp_path)
    by_name = {lst.name: lst for lst in fw.listeners}
    # certificate-authenticated: the far side of the box from its devices
    assert by_name["l3-modbus-security"].sources == networks("10.3.0.0/24")
    # plain: the zones that hold source-identified principals
    assert by_name["zone-modbus"].sources == networks("192.168.10.0/24")
    # written out: exactly that
    assert by_name["engineering"].sources == networks("10.3.0.40/32")


def test_loaded_policy_carries_upstreams_flows_metrics_and_firewall_settings(tmp_path: Path) -> None:
    fw = load_spec(tmp_path)
    assert [(u.name, str(u.address), u.port) for u in fw.upstreams] == [
        ("press-plc", "192.168.10.11/32", 502), ("l3-historian", "10.3.0.20/32", 802)]
    assert fw.flows == (Flow("ntp", networks("10.3.0.5"), networks("192.168.10.0/24"), "udp", 123),)
    assert fw.metrics == Metrics(9802, networks("10.3.0.7/32"))
    assert (fw.log_group, fw.log_rate, fw.connection_rate) == (4, Rate(5), Rate(50))
    assert {z.name: z.interface for z in fw.zones} == {"cell-a": "veth-cell", "level3": "veth-l3"}
    render(fw)


def test_device_named_by_dns_cannot_be_pinned_in_the_ruleset(tmp_path: Path) -> None:
    with pytest.raises(FirewallSpecError, match="must be an IP address"):
        load_spec(tmp_path, POLICY.replace("host: 10.3.0.20", "host: historian.plant.example"))


def test_meter_state_is_not_part_of_the_listed_table() -> None:
    from zonegate.controlplane.nftables.apply import without_dynamic_elements

    listing = ("table inet zonegate {\n\tset listener_x_v4 {\n\t\ttype ipv4_addr\n\t\tflags interval\n"
               "\t\telements = { 10.3.0.0/24 }\n\t}\n\n\tset meter_x_v4 {\n\t\ttype ipv4_addr\n\t\tsize 65535\n"
               "\t\tflags dynamic,timeout\n\t\ttimeout 1m\n"
               "\t\telements = { 10.3.0.10 limit rate over 20/second burst 20 packets,\n"
               "\t\t\t     10.3.0.12 limit rate over 20/second burst 20 packets }\n\t}\n}\n")
    assert without_dynamic_elements(listing) == listing.replace(
        "\t\telements = { 10.3.0.10 limit rate over 20/second burst 20 packets,\n"
        "\t\t\t     10.3.0.12 limit rate over 20/second burst 20 packets }\n", "")
