"""Policy loading: what transparent mode reads from a policy (transparent listeners, the divert mark and
routing table, dual-stack zone subnets), and that the nftables adapter reads the loaded model as written."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest
from test_policy_support import SKELETON, issues_of, load_text

from zonegate.controlplane.nftables import model as nft
from zonegate.controlplane.nftables.adapter import spec_from_policy
from zonegate.controlplane.policy.model import DIVERT_MARK, DIVERT_TABLE

TRANSPARENT = """\
listeners:
  - name: legacy
    protocol: modbus
    bind: 127.0.0.1:8503
    devices: [plc]
    transparent: true
    allow_from: [10.3.0.10/32]
"""


def test_defaults_agree_with_the_firewall_renderer(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    policy = load_text(tmp_path, SKELETON, monkeypatch)
    assert (policy.firewall.divert_mark, policy.firewall.divert_table) == (DIVERT_MARK, DIVERT_TABLE)
    assert (DIVERT_MARK, DIVERT_TABLE) == (nft.DIVERT_MARK, nft.DIVERT_TABLE) == (0x5A47, 23111)
    spec = spec_from_policy(policy)
    assert (spec.divert_mark, spec.divert_table) == (0x5A47, 23111)


def test_transparent_listener_reaches_the_renderer(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    text = SKELETON.replace("host: 127.0.0.1", "host: 192.168.10.11") + TRANSPARENT
    text += "firewall: {divert_mark: 0x100, divert_table: 100}\n"
    policy = load_text(tmp_path, text, monkeypatch)
    assert policy.listeners[0].transparent is True
    spec = spec_from_policy(policy)
    legacy = spec.listeners[0]
    assert (legacy.transparent, legacy.port) == (True, 8503)
    assert [(u.name, str(u.address), u.port) for u in legacy.divert] == [("plc", "192.168.10.11/32", 5020)]
    assert (spec.divert_mark, spec.divert_table) == (0x100, 100)


def test_listener_is_not_transparent_by_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    policy = load_text(tmp_path, SKELETON + TRANSPARENT.replace("    transparent: true\n", ""), monkeypatch)
    assert policy.listeners[0].transparent is False
    assert spec_from_policy(policy).listeners[0].divert == ()


def test_dual_stack_zone_subnets(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    text = SKELETON.replace("subnet: 192.168.10.0/24", "subnet: [192.168.10.0/24, 'fd10::/64']")
    policy = load_text(tmp_path, text, monkeypatch)
    assert policy.zones["cell-a"].subnet == ("192.168.10.0/24", "fd10::/64")
    zone = spec_from_policy(policy).zones[0]
    assert zone.subnets == (ipaddress.ip_network("192.168.10.0/24"), ipaddress.ip_network("fd10::/64"))


def test_single_subnet_is_a_one_item_tuple(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    policy = load_text(tmp_path, SKELETON, monkeypatch)
    assert policy.zones["cell-a"].subnet == ("192.168.10.0/24",)
    assert spec_from_policy(policy).zones[0].subnets == (ipaddress.ip_network("192.168.10.0/24"),)


ERRORS = {
    "transparent on a TLS listener": (
        SKELETON + TRANSPARENT.replace("protocol: modbus", "protocol: modbus_tls").replace(
            "    transparent", "    tls: {cert: s.crt, key: s.key, ca: ca.crt}\n    transparent"),
        [("x.yaml:23:5: listeners[0].transparent: transparent is only for plain modbus listeners"
         " (a diverted client speaks plain Modbus/TCP)")],
    ),
    "transparent is not a boolean": (
        SKELETON + TRANSPARENT.replace("transparent: true", "transparent: yes please"),
        ["x.yaml:22:5: listeners[0].transparent: expected true or false, not 'yes please'"],
    ),
    "transparent device with a DNS name": (
        SKELETON.replace("host: 127.0.0.1", "host: plc.cell.example") + TRANSPARENT,
        [("x.yaml:7:14: devices.plc.modbus.host: warning: the nftables table needs an address: "
         "'plc.cell.example' is not an IP address"),
         ("x.yaml:21:15: listeners[0].devices[0]: a transparent listener takes over connections to its devices'"
         " addresses: device 'plc' needs an IP address as host, not 'plc.cell.example'")],
    ),
    "divert mark zero": (
        SKELETON + "firewall: {divert_mark: 0}\n",
        ["x.yaml:17:12: firewall.divert_mark: 0 is out of range 1-4294967295"],
    ),
    "divert mark beyond 32 bits": (
        SKELETON + "firewall: {divert_mark: 0x100000000}\n",
        ["x.yaml:17:12: firewall.divert_mark: 4294967296 is out of range 1-4294967295"],
    ),
    "divert table reserved": (
        SKELETON + "firewall: {divert_table: 254}\n",
        [("x.yaml:17:12: firewall.divert_table: routing table 254 is reserved (253 default, 254 main, 255 local):"
         " pick another")],
    ),
    "divert table beyond 2^31-1": (
        SKELETON + "firewall: {divert_table: 2147483648}\n",
        ["x.yaml:17:12: firewall.divert_table: 2147483648 is out of range 1-2147483647"],
    ),
    "overlapping subnets": (
        SKELETON.replace("subnet: 192.168.10.0/24", "subnet: [192.168.10.0/24, 192.168.10.128/25]"),
        ["x.yaml:3:60: zones.cell-a.subnet[1]: 192.168.10.128/25 overlaps 192.168.10.0/24, listed before it"],
    ),
    "bad subnet in a list": (
        SKELETON.replace("subnet: 192.168.10.0/24", "subnet: [192.168.10.0/24, 'fd10::1/64']"),
        ["x.yaml:3:60: zones.cell-a.subnet[1]: bad CIDR 'fd10::1/64': host bits are set (the network is fd10::/64)"],
    ),
}


@pytest.mark.parametrize("case", list(ERRORS))
def test_error_is_pinned(case: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    text, expected = ERRORS[case]
    assert issues_of(tmp_path, text, monkeypatch) == expected
