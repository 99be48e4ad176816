"""Policy loading: the typed model the conduits and the firewall renderer read (defaults resolved)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from test_policy_support import SKELETON, load_text, write

from zonegate.controlplane.policy import PolicyError, load
from zonegate.controlplane.policy.model import Endpoint

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "policies" / "demo.yaml"


def test_demo_listeners_devices_and_defaults(tmp_path: Path) -> None:
    policy = load([DEMO], pki_dir=tmp_path)
    north, enip_north, zone_side = policy.listeners
    assert (north.name, north.protocol, north.host, north.port) == ("l3-modbus-security", "modbus_tls", "127.0.0.1", 8802)
    assert north.bind == Endpoint(host="127.0.0.1", port=8802)
    assert north.devices == ("tank-plc",)
    assert north.tls is not None
    assert north.tls.cert == tmp_path.resolve() / "server.crt"
    assert north.tls.key == tmp_path.resolve() / "server.key"
    assert north.tls.ca == tmp_path.resolve() / "ca.crt"
    assert north.tls.crl == tmp_path.resolve() / "ca.crl"
    assert (north.max_outstanding, north.idle_timeout, north.request_timeout) == (10, 300.0, 5.0)
    assert north.allow_from is None
    assert (zone_side.protocol, zone_side.port, zone_side.tls) == ("modbus", 8502, None)
    assert (enip_north.name, enip_north.protocol, enip_north.port, enip_north.devices) == (
        "l3-enip", "enip_tls", 2221, ("press-plc",))
    assert enip_north.tls is not None and enip_north.tls.cert == tmp_path.resolve() / "server.crt"
    press = policy.devices["press-plc"].enip
    assert press is not None and (press.host, press.port, press.max_connections, press.timeout) == (
        "127.0.0.1", 44818, 2, 2.0)
    plc = policy.devices["tank-plc"].modbus
    assert (plc.host, plc.port, plc.units, plc.max_connections, plc.pipelining, plc.timeout) == (
        "127.0.0.1", 5020, ((1, 1),), 1, False, 2.0
    )
    historian = policy.devices["l3-historian"].modbus
    assert historian.tls is not None and historian.tls.cert == tmp_path.resolve() / "gateway-client.crt"
    assert policy.pki_dir == tmp_path.resolve()
    assert (policy.metrics.bind.host, policy.metrics.bind.port, policy.metrics.allow_from) == (
        "127.0.0.1", 9802, ("127.0.0.1/32",)
    )
    assert (policy.audit.path, policy.audit.max_per_second) == ("-", 100)
    assert policy.mode == "enforce"
    assert policy.warnings == ()


def test_defaults_of_a_minimal_policy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    policy = load_text(tmp_path, SKELETON.replace("port: 5020, ", ""), monkeypatch)
    modbus = policy.devices["plc"].modbus
    assert (modbus.port, modbus.max_connections, modbus.pipelining, modbus.timeout, modbus.tls) == (502, 1, False, 2.0, None)
    assert policy.mode == "enforce"
    assert policy.pki_dir == tmp_path.resolve()
    assert policy.listeners == [] and policy.flows == []
    assert (policy.firewall.log_group, policy.firewall.log_rate.count, policy.firewall.log_rate.unit) == (1, 10, "second")
    assert (policy.firewall.connection_rate.count, policy.firewall.connection_rate.period_ns) == (20, 1_000_000_000)
    assert str(policy.metrics.bind) == "127.0.0.1:9802"


@pytest.mark.parametrize(
    ("written", "seconds"),
    [("300ms", 0.3), ("5s", 5.0), ("2m", 120.0), ("1h", 3600.0), ("1.5", 1.5), ("7", 7.0), ("2.5s", 2.5)],
)
def test_durations(written: str, seconds: float, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    text = SKELETON.replace("units: [1]}", f"units: [1], timeout: {written}}}")
    assert load_text(tmp_path, text, monkeypatch).devices["plc"].modbus.timeout == pytest.approx(seconds)


def test_pki_dir_relative_to_the_policy_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    text = "pki_dir: certs\n" + SKELETON + (
        "listeners:\n  - name: n\n    protocol: modbus_tls\n    bind: 127.0.0.1:8802\n    devices: [plc]\n"
        "    tls: {cert: s.crt, key: /etc/zonegate/s.key, ca: ../ca.crt}\n"
    )
    policy = load_text(tmp_path, text, monkeypatch)
    tls = policy.listeners[0].tls
    assert tls is not None
    assert tls.cert == tmp_path.resolve() / "certs" / "s.crt"
    assert tls.key == Path("/etc/zonegate/s.key")
    assert tls.ca == tmp_path.resolve() / "ca.crt"
    override = load([tmp_path / "x.yaml"], pki_dir=tmp_path / "other")
    assert override.listeners[0].tls is not None
    assert override.listeners[0].tls.cert == tmp_path.resolve() / "other" / "s.crt"


def test_audit_path_relative_to_the_policy_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    policy = load_text(tmp_path, SKELETON + "audit: {path: logs/audit.jsonl}\n", monkeypatch)
    assert policy.audit.path == str(tmp_path.resolve() / "logs" / "audit.jsonl")


PRINCIPALS = """\
principals:
  operator: {tls_role: Operator}
  auditor: {tls_subject: "CN=auditor-1,O=Plant"}
  both: {tls_role: Engineer, tls_subject: "CN=eng-7,O=Plant"}
  historian: {opcua_user: historian}
  line-hmi: {source: 192.168.10.50}
  cell: {source: [192.168.10.0/24, "fd00::/64"]}
  wide: {source: 192.168.0.0/16}
"""


@pytest.fixture
def principals_policy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    text = SKELETON.replace("principals:\n  operator: {tls_role: Operator}\n", PRINCIPALS)
    return load_text(tmp_path, text, monkeypatch)


def test_principal_for_certificate(principals_policy) -> None:  # type: ignore[no-untyped-def]
    p = principals_policy
    assert p.principal_for_certificate("Operator", "CN=someone,O=Plant") == "operator"
    assert p.principal_for_certificate(None, "CN=auditor-1,O=Plant") == "auditor"
    assert p.principal_for_certificate(None, "O=Plant,CN=auditor-1") == "auditor"  # attribute order
    assert p.principal_for_certificate("Unknown", "CN=auditor-1,O=Plant") == "auditor"  # role first, then subject
    assert p.principal_for_certificate("Engineer", "CN=auditor-1,O=Plant") == "both"
    assert p.principal_for_certificate("operator", "CN=x") is None  # roles are case-sensitive
    assert p.principal_for_certificate(None, "CN=auditor-1") is None
    assert p.principal_for_certificate(None, "not a subject") is None


def test_principal_for_source_most_specific_wins(principals_policy) -> None:  # type: ignore[no-untyped-def]
    p = principals_policy
    assert p.principal_for_source("192.168.10.50") == "line-hmi"
    assert p.principal_for_source("::ffff:192.168.10.50") == "line-hmi"
    assert p.principal_for_source("192.168.10.51") == "cell"
    assert p.principal_for_source("192.168.99.1") == "wide"
    assert p.principal_for_source("fd00::1") == "cell"
    assert p.principal_for_source("10.0.0.1") is None
    assert p.principal_for_source("garbage") is None


def test_one_identity_for_two_principals_is_an_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    text = SKELETON.replace(
        "  operator: {tls_role: Operator}\n", "  operator: {tls_role: Operator}\n  other: {tls_role: [Viewer, Operator]}\n"
    )
    with pytest.raises(PolicyError) as caught:
        load_text(tmp_path, text, monkeypatch)
    assert [str(i) for i in caught.value.issues] == [
        "x.yaml:10:11: principals.other.tls_role: tls_role 'Operator' already identifies principal 'operator'"
    ]


def test_several_files_load_as_one_policy(tmp_path: Path) -> None:
    plant = write(tmp_path, SKELETON.split("rules:\n")[0], "plant.yaml")
    more = write(tmp_path, "version: 1\nprincipals:\n  viewer: {tls_role: Viewer}\nrules:\n  - id: v\n"
                 "    principal: viewer\n    device: plc\n    allow: [{functions: [read_only], holding: 0-9}]\n", "rules.yaml")
    policy = load([plant, more])
    assert list(policy.principals) == ["operator", "viewer"]
    assert [rule.id for rule in policy.rules] == ["v"]
    assert policy.source_hash == hashlib.sha256(plant.read_bytes() + more.read_bytes()).hexdigest()
    assert policy.files == (plant, more)


def test_a_name_defined_in_two_files_is_an_error(tmp_path: Path) -> None:
    plant = write(tmp_path, SKELETON, "plant.yaml")
    again = write(tmp_path, "version: 1\nmode: monitor\ndevices:\n  plc: {zone: cell-a, modbus: {host: 10.0.0.1}}\n", "again.yaml")
    with pytest.raises(PolicyError) as caught:
        load([plant, again])
    assert [str(i) for i in caught.value.issues] == [f"{again}:4:3: devices.plc: already defined at {plant}:5"]


def test_source_hash_is_the_file_sha256(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    policy = load_text(tmp_path, SKELETON, monkeypatch)
    assert policy.source_hash == hashlib.sha256(SKELETON.encode()).hexdigest()


def test_write_without_writable_range_is_a_warning(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    text = SKELETON.replace("functions: [read_holding_registers]", "functions: [read_coils, write_single_coil]").replace(
        "holding: 0-9", "holding: 0-9\n        discrete_inputs: 0-9"
    )
    policy = load_text(tmp_path, text, monkeypatch)
    assert [str(w) for w in policy.warnings] == [
        ("x.yaml:15:9: rules[0].allow[0].functions: warning: allows write_single_coil but names no range of coils:"
        " those writes are always denied")
    ]
    assert policy.warnings[0].severity == "warning"


def test_mask_write_on_bounded_range_is_a_warning(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    text = SKELETON.replace("functions: [read_holding_registers]", "functions: [mask_write_register]").replace(
        "holding: 0-9", "holding: {range: 0-9, max: 100}"
    )
    policy = load_text(tmp_path, text, monkeypatch)
    assert [w.message for w in policy.warnings] == [
        "mask_write_register is always denied on holding ranges with min/max (its value is not known)"
    ]


def test_flows_and_firewall(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    text = SKELETON + (
        "flows:\n  - {id: ntp, from: 192.168.10.0/24, to: 10.3.0.10, proto: udp, port: 123}\n"
        "firewall: {log_group: 3, log_rate: 2/min, connection_rate: 100/h}\n"
        "metrics: {bind: '[::1]:9900', allow_from: [10.3.0.0/24]}\n"
    )
    policy = load_text(tmp_path, text, monkeypatch)
    [flow] = policy.flows
    assert (flow.id, flow.source, flow.to, flow.proto, flow.port) == ("ntp", "192.168.10.0/24", "10.3.0.10/32", "udp", 123)
    assert (policy.firewall.log_group, policy.firewall.log_rate.unit, policy.firewall.log_rate.period_ns) == (
        3, "minute", 60_000_000_000
    )
    assert (policy.firewall.connection_rate.count, policy.firewall.connection_rate.unit) == (100, "hour")
    assert (policy.metrics.bind.host, policy.metrics.bind.port, policy.metrics.allow_from) == ("::1", 9900, ("10.3.0.0/24",))


def test_device_for_unit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    text = SKELETON.replace("principals:\n", "  drives:\n    zone: cell-a\n    modbus: {host: 127.0.0.2, units: [2-4]}\nprincipals:\n") + (
        "listeners:\n  - {name: z, protocol: modbus, bind: 127.0.0.1:8502, devices: [plc, drives]}\n"
    )
    policy = load_text(tmp_path, text, monkeypatch)
    listener = policy.listeners[0]
    assert [policy.device_for_unit(listener, u) for u in (0, 1, 2, 4, 5)] == [None, "plc", "drives", "drives", None]
