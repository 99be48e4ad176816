"""Rendering transparent conduits, IPv6 zones and the saved boot script; what an operator reads before
anything touches a kernel (the namespace tests prove the same with packets)."""

from __future__ import annotations

import argparse
import configparser
import ipaddress
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ROOT, require
from tests.unit.test_nft_render import POLICY, load_spec, objects, rule_lines, rules, spec
from zonegate.commands import nft as nft_command
from zonegate.controlplane.nftables.adapter import spec_from_policy
from zonegate.controlplane.nftables.model import (
    DIVERT_MARK,
    FirewallSpec,
    FirewallSpecError,
    Listener,
    Upstream,
    networks,
)
from zonegate.controlplane.nftables.render import Divert, render
from zonegate.dataplane.transparent import Destination, DeviceMap

PLC = Upstream("press-plc", ipaddress.ip_network("192.168.10.11"), 502)
PLC6 = Upstream("press-plc6", ipaddress.ip_network("fd10::11"), 502)
DRIVE = Upstream("drive", ipaddress.ip_network("192.168.10.12"), 5020)


def transparent(*divert: Upstream, sources: str | list[str] = "10.3.0.0/24") -> FirewallSpec:
    return spec(listeners=(Listener("legacy", 8503, networks(sources), "modbus", True, divert),),
                upstreams=divert)


# --- transparent listeners ---------------------------------------------------------------------------


def test_transparent_listener_diverts_its_sources_connections_to_its_devices() -> None:
    ruleset = render(transparent(PLC))
    chains = {c["name"]: c for c in objects(ruleset, "chain")}
    assert chains["prerouting"] == {"family": "inet", "table": "zonegate", "name": "prerouting", "type": "filter",
                                    "hook": "prerouting", "prio": -150, "policy": "accept"}
    assert rule_lines(ruleset, "prerouting") == [
        "type filter hook prerouting priority mangle; policy accept;",
        "ip saddr @listener_legacy_v4 ip daddr @divert_legacy_v4 tcp dport 502 tproxy ip to :8503 "
        'meta mark set 0x00005a47 accept comment "listener legacy divert"',
    ]
    assert "\tset divert_legacy_v4 {\n\t\ttype ipv4_addr\n\t\tflags interval\n\t\telements = { 192.168.10.11 }" \
        in ruleset.text
    assert ruleset.divert == Divert(DIVERT_MARK, DIVERT_MARK, (4,))


def test_diverted_connections_are_metered_and_accepted_on_input_by_mark_never_at_the_listener_port() -> None:
    lines = rule_lines(render(transparent(PLC)), "input")
    match = ("meta mark 0x00005a47 ip saddr @listener_legacy_v4 ip daddr @divert_legacy_v4 tcp dport 502 "
             "ct state new")
    assert f'{match} accept comment "listener legacy"' in lines
    assert any(line.startswith(f"{match} update @meter_legacy_v4 ") and "goto drop_flood_legacy" in line
               for line in lines)
    assert not any("8503" in line for line in lines)


def test_devices_on_several_ports_get_a_set_per_port_and_ipv6_its_own_rule() -> None:
    ruleset = render(transparent(PLC, DRIVE, PLC6, sources=["10.3.0.0/24", "fd03::/64"]))
    lines = rule_lines(ruleset, "prerouting")[1:]
    assert [line.split(" tproxy ")[0] for line in lines] == [
        "ip saddr @listener_legacy_v4 ip daddr @divert_legacy_502_v4 tcp dport 502",
        "ip saddr @listener_legacy_v4 ip daddr @divert_legacy_5020_v4 tcp dport 5020",
        "ip6 saddr @listener_legacy_v6 ip6 daddr @divert_legacy_502_v6 tcp dport 502",
    ]
    assert "tproxy ip6 to :8503" in lines[2]
    assert ruleset.divert is not None and ruleset.divert.versions == (4, 6)


def test_without_transparent_listeners_there_is_no_prerouting_chain_and_no_routing() -> None:
    ruleset = render(spec())
    assert "prerouting" not in {c["name"] for c in objects(ruleset, "chain")}
    assert ruleset.divert is None


def test_transparent_text_and_json_agree_rule_for_rule() -> None:
    ruleset = render(transparent(PLC, DRIVE))
    prerouting = rules(ruleset, "prerouting")
    assert [r["comment"] for r in prerouting] == ["listener legacy divert"] * 2
    kinds = [next(iter(e)) for e in prerouting[0]["expr"]]
    assert kinds == ["match", "match", "match", "tproxy", "mangle", "accept"]
    assert prerouting[0]["expr"][3] == {"tproxy": {"family": "ip", "port": 8503}}


@pytest.mark.filterwarnings("ignore::DeprecationWarning:jsonschema")
def test_transparent_document_validates_against_the_libnftables_schema() -> None:
    try:
        import nftables  # type: ignore[import-untyped,unused-ignore]
    except ImportError:
        nftables = None
    require(nftables is not None, "needs python3-nftables (make link-nftables)")
    ruleset = render(transparent(PLC, PLC6, sources=["10.3.0.0/24", "fd03::/64"]))
    nftables.SchemaValidator().validate(ruleset.replace_commands())


@pytest.mark.parametrize("build", [
    lambda: Listener("x", 8503, (), "modbus", True, ()),
    lambda: Listener("x", 8503, (), "modbus", False, (PLC,)),
    lambda: Listener("x", 8503, (), "modbus", True, (Upstream("ntp", ipaddress.ip_network("10.0.0.1"), 123, "udp"),)),
    lambda: FirewallSpec(divert_table=254),
    lambda: FirewallSpec(divert_mark=0),
])
def test_inexpressible_diversions_are_refused(build: Any) -> None:
    with pytest.raises(FirewallSpecError):
        build()


def test_policy_listener_marked_transparent_diverts_to_its_devices() -> None:
    policy = {
        "zones": {"cell-a": {"interface": "veth-cell", "subnet": "192.168.10.0/24"},
                  "level3": {"interface": "veth-l3", "subnet": ["10.3.0.0/24", "fd03::/64"]}},
        "devices": {"press-plc": {"zone": "cell-a", "modbus": {"host": "192.168.10.11", "port": 502}}},
        "principals": {"legacy-scada": {"source": "10.3.0.10"}},
        "listeners": [{"name": "legacy", "protocol": "modbus", "bind": {"port": 8503}, "devices": ["press-plc"],
                       "transparent": True, "allow_from": ["10.3.0.10/32"]}],
        "firewall": {"divert_mark": 0x100, "divert_table": 100},
    }
    fw = spec_from_policy(policy)
    (legacy,) = fw.listeners
    assert (legacy.transparent, legacy.divert, legacy.sources) == (True, (PLC,), networks("10.3.0.10/32"))
    assert (fw.divert_mark, fw.divert_table) == (0x100, 100)
    assert render(fw).divert == Divert(0x100, 100, (4,))


# --- IPv6 ----------------------------------------------------------------------------------------------


def test_dual_stack_zone_subnets_become_default_sources_in_both_families() -> None:
    policy = {
        "zones": {"cell-a": {"interface": "veth-cell", "subnet": ["192.168.10.0/24", "fd10::/64"]},
                  "level3": {"interface": "veth-l3", "subnets": ["10.3.0.0/24", "fd03::/64"]}},
        "devices": {"press-plc": {"zone": "cell-a", "modbus": {"host": "fd10::11", "port": 502}}},
        "principals": {"hmi": {"source": "fd10::50"}},
        "listeners": [{"name": "l3", "protocol": "modbus_tls", "bind": {"port": 802}, "devices": ["press-plc"]},
                      {"name": "zone", "protocol": "modbus", "bind": {"port": 502}, "devices": ["press-plc"]}],
    }
    fw = spec_from_policy(policy)
    by_name = {lst.name: lst for lst in fw.listeners}
    assert by_name["l3"].sources == networks(["10.3.0.0/24", "fd03::/64"])
    assert by_name["zone"].sources == networks(["192.168.10.0/24", "fd10::/64"])
    text = render(fw).text
    assert "ip6 saddr @listener_zone_v6 ct state new accept" in text
    assert "ip6 daddr @upstream_press_plc_v6 tcp dport 502 ct state new accept" in text


def test_loaded_policy_with_ipv6_zone_principal_and_device_renders_ip6_sets(tmp_path: Path) -> None:
    text = (POLICY.replace("subnet: 192.168.10.0/24", "subnet: fd10::/64")
            .replace("source: 192.168.10.50", "source: fd10::50")
            .replace("host: 192.168.10.11", "host: fd10::11"))
    fw = load_spec(tmp_path, text)
    by_name = {lst.name: lst for lst in fw.listeners}
    assert by_name["zone-modbus"].sources == networks("fd10::/64")
    rendered = render(fw).text
    assert "\tset listener_zone_modbus_v6 {\n\t\ttype ipv6_addr\n\t\tflags interval\n\t\telements = { fd10::/64 }" \
        in rendered
    assert "ip6 daddr @upstream_press_plc_v6 tcp dport 502" in rendered


# --- the original destination ------------------------------------------------------------------------


def test_original_destination_maps_to_the_device_and_anything_else_to_none() -> None:
    devices = DeviceMap.of([("press-plc", "192.168.10.11", 502), ("press-plc6", "fd10::11", 502)])
    assert devices.device_for(Destination.from_sockname(("192.168.10.11", 502))) == "press-plc"
    assert devices.device_for(Destination.from_sockname(("::ffff:192.168.10.11", 502, 0, 0))) == "press-plc"
    assert devices.device_for(Destination.from_sockname(("fd10:0::11", 502, 0, 0))) == "press-plc6"
    assert devices.device_for(Destination.from_sockname(("192.168.10.11", 503))) is None
    assert devices.device_for(Destination.from_sockname(("192.168.10.12", 502))) is None


def test_device_map_keeps_a_listeners_devices_and_refuses_what_it_cannot_match() -> None:
    class Settings:
        def __init__(self, host: str, port: int) -> None:
            self.host, self.port = host, port

    devices = {"a": Settings("192.168.10.11", 502), "b": Settings("192.168.10.12", 502)}
    assert len(DeviceMap.of(devices, names=["a"])) == 1
    with pytest.raises(ValueError, match="must be an IP address"):
        DeviceMap.of([("plc", "plc.cell.example", 502)])
    with pytest.raises(ValueError, match="both"):
        DeviceMap.of([("a", "192.168.10.11", 502), ("b", "192.168.10.11", 502)])
    with pytest.raises(ValueError):
        Destination.from_sockname("/run/socket")


def test_transparent_socket_needs_the_privilege_or_says_so() -> None:
    from zonegate.dataplane.transparent import TransparentError, original_destination, transparent_socket

    try:
        sock = transparent_socket("127.0.0.1", 0)
    except TransparentError as exc:
        assert "CAP_NET_ADMIN" in str(exc)
        return
    with sock:
        assert original_destination(sock) == Destination(ipaddress.ip_address("127.0.0.1"), sock.getsockname()[1])


# --- saving for boot -----------------------------------------------------------------------------------


def test_saved_script_replaces_only_the_zonegate_table_in_one_go() -> None:
    ruleset = render(transparent(PLC))
    script = ruleset.script("/etc/zonegate/policy.yaml")
    lines = script.splitlines()
    assert lines[0] == "#!/usr/sbin/nft -f"
    commands = [line for line in lines if line and not line.startswith("#")]
    assert commands[:2] == ["table inet zonegate", "delete table inet zonegate"]
    assert script.endswith(ruleset.text)
    assert not any("flush" in c for c in commands) and "/etc/zonegate/policy.yaml" in lines[1]


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="zonegate")
    nft_command.add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return int(args.func(args))


def test_nft_save_writes_the_script_to_stdout_or_a_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from zonegate.controlplane.nftables import ruleset_for
    from zonegate.controlplane.policy import load

    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY)
    expected = ruleset_for(load([policy])).script(str(policy))
    assert main(["nft", "save", "-c", str(policy)]) == 0
    assert capsys.readouterr().out == expected
    out = tmp_path / "boot" / "nftables.nft"
    out.parent.mkdir()
    out.write_text("old\n")
    assert main(["nft", "save", "-c", str(policy), "-o", str(out)]) == 0
    assert out.read_text() == expected
    assert out.stat().st_mode & 0o777 == 0o644
    assert [p.name for p in out.parent.iterdir()] == ["nftables.nft"]


def test_nft_save_refuses_a_bad_policy_and_an_unwritable_place(tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY.replace("port: 502", "port: 0"))
    assert main(["nft", "save", "-c", str(policy), "-o", str(tmp_path / "x.nft")]) == 2
    assert not (tmp_path / "x.nft").exists()
    policy.write_text(POLICY)
    assert main(["nft", "save", "-c", str(policy), "-o", str(tmp_path / "missing" / "x.nft")]) == 2
    assert "cannot write" in capsys.readouterr().err


UNIT = ROOT / "packaging" / "zonegate-nftables.service"


def test_boot_unit_loads_the_saved_table_before_the_network_and_never_removes_it() -> None:
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str  # type: ignore[assignment,method-assign]
    unit.read(UNIT)
    assert unit["Unit"]["DefaultDependencies"] == "no"
    assert "network-pre.target" in unit["Unit"]["Before"].split()
    assert "network-pre.target" in unit["Unit"]["Wants"].split()
    assert "nftables.service" in unit["Unit"]["After"].split()
    assert unit["Service"]["Type"] == "oneshot" and unit["Service"]["RemainAfterExit"] == "yes"
    assert unit["Service"]["ExecStart"] == "/usr/sbin/nft -f /etc/zonegate/nftables.nft"
    assert "ExecStop" not in unit["Service"]
    assert unit["Install"]["WantedBy"] == "sysinit.target"


def test_boot_unit_passes_systemd_analyze_verify() -> None:
    tool = shutil.which("systemd-analyze")
    require(tool is not None and shutil.which("nft") is not None, "needs systemd-analyze and nft")
    assert tool is not None
    done = subprocess.run([tool, "verify", str(UNIT)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
