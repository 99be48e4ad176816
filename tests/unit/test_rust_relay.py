"""The Python side of the Rust relay without the relay running: the configuration it is given (PEM bytes read
after the key file's mode is checked; Modbus listeners, then EtherNet/IP ones), the policies it refuses, the
audit records it writes (the Python relay's, Modbus and EtherNet/IP), and its counters merged into the
metrics page. The relay itself is exercised end to end by the
conduit integration tests (tests/integration, `relay` parameter)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from prometheus_client import generate_latest

from tests.integration import enip_sim as wire
from zonegate import _engine
from zonegate.controlplane.audit import utc_now
from zonegate.controlplane.metrics import LATENCY_BUCKETS, Metrics
from zonegate.controlplane.pki import DevPki, generate
from zonegate.controlplane.supervisor import Supervisor, load_settings
from zonegate.controlplane.tls import TlsConfigError
from zonegate.dataplane.conduit import _Generation, audit_record
from zonegate.dataplane.config import RuntimeSettings
from zonegate.dataplane.enip_conduit import CIP_REASONS, _Message
from zonegate.dataplane.enip_conduit import audit_record as enip_audit_record
from zonegate.dataplane.enip_frames import Header
from zonegate.dataplane.identity import Identity
from zonegate.dataplane.rust_relay import (
    RelayConfigError,
    RustConduit,
    _Client,
    _code,
    _peer,
    _utc,
    check_relay_settings,
    relay_config,
    served_listeners,
    tls_material,
)
from zonegate.engine import MALFORMED, REASONS, VERDICTS

POLICY = """\
version: 1
zones:
  cell-a: {{subnet: 127.0.0.0/8}}
  level3: {{subnet: 10.3.0.0/24}}
devices:
  tank-plc:
    zone: cell-a
    modbus: {{host: 127.0.0.1, port: 5020, units: [1, 3-4], max_connections: 2, pipelining: true,
              pipeline_depth: 8, timeout: 1500ms}}
  historian:
    zone: level3
    modbus: {{host: 127.0.0.1, port: 8020, tls: {{cert: gateway-client.crt, key: gateway-client.key, ca: ca.crt}}}}
principals:
  operator: {{tls_role: Operator}}
  hmi: {{source: 127.0.0.1}}
rules:
  - {{id: operator-read, principal: operator, device: tank-plc, allow: [{{functions: [read_holding_registers]}}]}}
listeners:
  - name: north
    protocol: modbus_tls
    bind: 127.0.0.1:8502
    devices: [tank-plc]
    tls: {{cert: server.crt, key: server.key, ca: ca.crt, crl: ca.crl}}
    max_outstanding: 7
    idle_timeout: 30s
    request_timeout: 4s
  - name: zone
    protocol: modbus
    bind: 127.0.0.1:8503
    devices: [historian]{transparent}
"""


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> DevPki:
    return generate(tmp_path_factory.mktemp("pki"))


def write_policy(tmp_path: Path, transparent: bool = False) -> Path:
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY.format(transparent="\n    transparent: true" if transparent else ""))
    return policy


def test_config_carries_listeners_devices_and_pem_bytes(tmp_path: Path, pki: DevPki) -> None:
    settings = load_settings([write_policy(tmp_path)], pki.directory)
    config = relay_config(settings, settings.listeners)
    assert [d["name"] for d in config["devices"]] == ["tank-plc", "historian"]
    north, zone = config["listeners"]
    assert (north["name"], north["kind"], north["devices"]) == ("north", "modbus_tls", [0])
    assert (north["max_outstanding"], north["idle_timeout"], north["request_timeout"]) == (7, 30.0, 4.0)
    assert north["tls"] == {"cert": pki.cert("server").read_bytes(), "key": pki.key("server").read_bytes(),
                            "ca": pki.ca.read_bytes(), "crl": (pki.directory / "ca.crl").read_bytes()}
    assert (zone["kind"], zone["tls"], zone["devices"]) == ("modbus", None, [1])
    plc, historian = config["devices"]
    assert plc["units"] == [(1, 1), (3, 4)] and plc["tls"] is None
    assert (plc["max_connections"], plc["pipelining"], plc["pipeline_depth"], plc["timeout"]) == (2, True, 8, 1.5)
    assert historian["units"] is None and historian["tls"]["crl"] is None
    assert historian["tls"]["cert"] == pki.cert("gateway-client").read_bytes()
    assert config["latency_bounds"] == list(LATENCY_BUCKETS)
    json.dumps(config, default=lambda b: b.decode())  # plain data only: nothing the binding cannot convert


def test_key_readable_by_others_is_refused_naming_the_file(tmp_path: Path, pki: DevPki) -> None:
    settings = load_settings([write_policy(tmp_path)], pki.directory)
    (north,) = [x for x in settings.listeners if x.name == "north"]
    assert north.tls is not None
    loose = tmp_path / "server.key"
    loose.write_bytes(north.tls.key.read_bytes())
    loose.chmod(0o644)
    with pytest.raises(TlsConfigError, match=re.escape(f"{loose}: private key mode is 0644")):
        tls_material(type(north.tls)(cert=north.tls.cert, key=loose, ca=north.tls.ca))


def test_transparent_listener_is_refused_with_the_way_out(tmp_path: Path, pki: DevPki) -> None:
    settings = load_settings([write_policy(tmp_path, transparent=True)], pki.directory)
    with pytest.raises(RelayConfigError, match="listener zone: transparent listeners .* --relay python"):
        check_relay_settings(settings)


def test_supervisor_knows_two_relays() -> None:
    with pytest.raises(ValueError, match="python, rust"):
        Supervisor([], relay="go")


def test_peer_is_written_as_the_python_relay_writes_it() -> None:
    assert _peer("127.0.0.1:60202") == ("127.0.0.1:60202", "127.0.0.1")
    assert _peer("[::1]:60202") == ("::1:60202", "::1")
    assert _peer(("::1", 60202)) == ("::1:60202", "::1")


def test_relay_time_is_formatted_as_utc_now() -> None:
    shape = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$")
    assert shape.match(utc_now())
    assert _utc(1_764_149_649_507_874_123) == "2025-11-26T09:34:09.507874Z"
    assert _utc(None) is None


def test_audit_record_from_relay_names_equals_the_python_relays() -> None:
    adu = bytes.fromhex("0001 0000 0006 01 06 0064 1388")  # write register 100 = 5000
    identity = Identity(peer="127.0.0.1:60202", role="Operator", subject="CN=operator-1,O=Plant")
    by_code = audit_record("north", "operator", identity, "tank-plc", adu, unit=1, function=6, sub=None,
                           rule="operator-setpoints", reason=REASONS.index("value_out_of_bounds"),
                           verdict=VERDICTS.index("deny"), exception=1, malformed=0, time="t")
    by_name = audit_record("north", "operator", identity, "tank-plc", adu, unit=1, function=6, sub=None,
                           rule="operator-setpoints", reason=_code("value_out_of_bounds", REASONS),
                           verdict=_code("deny", VERDICTS), exception=1, malformed=_code(None, MALFORMED), time="t")
    assert by_code == by_name == {
        "time": "t", "conduit": "north",
        "principal": {"name": "operator", "role": "Operator", "subject": "CN=operator-1,O=Plant",
                      "peer": "127.0.0.1:60202"},
        "device": "tank-plc", "unit": 1, "function": "write_single_register", "function_code": 6,
        "table": "holding_registers",
        "ranges": [{"table": "holding_registers", "start": 100, "end": 100, "access": "write"}],
        "values": [5000], "rule": "operator-setpoints", "reason": "value_out_of_bounds", "verdict": "deny",
        "exception": 1,
    }
    malformed = audit_record("north", None, Identity(peer="p"), None, adu, unit=1, function=6, sub=None, rule=None,
                             reason=_code("malformed", REASONS), verdict=_code("deny", VERDICTS), exception=3,
                             malformed=_code("bad_quantity", MALFORMED), time="t")
    assert malformed["malformed"] == "bad_quantity" and malformed["exception"] == 3


def relay_snapshot() -> dict[str, object]:
    series = [0.0] * (len(LATENCY_BUCKETS) + 2)
    series[3], series[-1] = 2.0, 0.0006
    return {
        "requests": [("north", "operator", "tank-plc", 3, 0, 0, 5), ("north", "unknown", "unknown", 3, 1, 1, 2)],
        "gateway_latency": {"north": list(series)},
        "upstream_latency": {"tank-plc": list(series)},
        "active_connections": {"north": 3},
        "handshake_failures": [("north", "unknown_ca", 4)],
        "framing_errors": [("north", "length", 1)],
        "upstream_up": {"tank-plc": True},
        "upstream_faults": [("tank-plc", "timeout", 6)],
    }


def test_relay_counters_are_merged_with_pythons_at_scrape() -> None:
    metrics = Metrics()
    metrics.count_request("north", "operator", "tank-plc", 3, 0, 0)  # as the EtherNet/IP side counts its own
    metrics.connections.labels("north").inc()
    metrics.handshake_failures.labels("north", "unknown_ca").inc()
    metrics.upstream_state("tank-plc", False)
    metrics.gateway_latency_observe("north", 0.0003)
    registry = metrics.registry
    requests = {"conduit": "north", "principal": "operator", "device": "tank-plc", "function": "read_holding_registers",
                "verdict": "allow", "reason": "allowed"}
    assert registry.get_sample_value("zonegate_requests_total", requests) == 1
    assert registry.get_sample_value("zonegate_active_connections", {"conduit": "north"}) == 1
    metrics.watch_relay(relay_snapshot)
    assert registry.get_sample_value("zonegate_requests_total", requests) == 6
    assert registry.get_sample_value("zonegate_requests_total", {
        "conduit": "north", "principal": "unknown", "device": "unknown", "function": "read_holding_registers",
        "verdict": "deny", "reason": "unknown_principal"}) == 2
    assert registry.get_sample_value("zonegate_active_connections", {"conduit": "north"}) == 4
    assert registry.get_sample_value("zonegate_tls_handshake_failures_total",
                                     {"conduit": "north", "reason": "unknown_ca"}) == 5
    assert registry.get_sample_value("zonegate_framing_errors_total", {"conduit": "north", "reason": "length"}) == 1
    assert registry.get_sample_value("zonegate_upstream_up", {"device": "tank-plc"}) == 1  # the relay's pool says
    assert registry.get_sample_value("zonegate_upstream_faults_total", {"device": "tank-plc", "kind": "timeout"}) == 6
    assert registry.get_sample_value("zonegate_gateway_latency_seconds_count", {"conduit": "north"}) == 3
    assert registry.get_sample_value("zonegate_upstream_latency_seconds_count", {"device": "tank-plc"}) == 2
    page = generate_latest(registry).decode()
    for family in ("zonegate_requests_total counter", "zonegate_active_connections gauge",
                   "zonegate_tls_handshake_failures_total counter", "zonegate_upstream_up gauge"):
        assert page.count(f"# TYPE {family}\n") == 1, family  # one family each, Python's and the relay's merged

    def stopped() -> dict[str, object]:
        raise RuntimeError("the relay is not running")

    metrics.watch_relay(stopped)  # a relay gone under the scrape: Python's own counts, not an error page
    assert registry.get_sample_value("zonegate_requests_total", requests) == 1
    metrics.watch_relay(None)
    assert registry.get_sample_value("zonegate_tls_handshake_failures_total",
                                     {"conduit": "north", "reason": "unknown_ca"}) == 1


def test_dropped_relay_events_count_as_suppressed_audit_records(caplog: pytest.LogCaptureFixture) -> None:
    metrics = Metrics()
    # Only the conduit's metrics take part in handling this event.
    RustConduit._event(SimpleNamespace(metrics=metrics), ("dropped", 5, 1))  # type: ignore[arg-type]
    assert metrics.registry.get_sample_value("zonegate_audit_suppressed_total") == 5
    assert "5 audit records and 1 log lines dropped" in caplog.text


# -- EtherNet/IP ---------------------------------------------------------------------------------------------

ENIP_POLICY = """\
version: 1
zones:
  cell-a: {subnet: 127.0.0.0/8}
devices:
  tank-plc:
    zone: cell-a
    modbus: {host: 127.0.0.1, port: 5020}
  press-plc:
    zone: cell-a
    modbus: {host: 127.0.0.1, port: 5021}
    enip: {host: 127.0.0.1, port: 44818, timeout: 1500ms, max_connections: 3}
  drive:
    zone: cell-a
    enip: {host: 127.0.0.2}
principals:
  operator: {tls_role: Operator}
rules:
  - id: operator-press
    principal: operator
    device: press-plc
    cip:
      - services: [write_tag]
        tags: ["Line1_Speed"]
listeners:
  - name: zone
    protocol: modbus
    bind: 127.0.0.1:8503
    devices: [press-plc]
  - name: l3-enip
    protocol: enip_tls
    bind: 127.0.0.1:2221
    devices: [press-plc]
    tls: {cert: server.crt, key: server.key, ca: ca.crt}
    request_timeout: 3s
  - name: zone-enip
    protocol: enip
    bind: 127.0.0.1:44818
    devices: [drive]
"""


def enip_settings(tmp_path: Path, pki: DevPki) -> RuntimeSettings:
    policy = tmp_path / "enip.yaml"
    policy.write_text(ENIP_POLICY)
    return load_settings([policy], pki.directory)


def test_enip_listeners_follow_the_modbus_ones_with_their_own_devices(tmp_path: Path, pki: DevPki) -> None:
    settings = enip_settings(tmp_path, pki)
    served = served_listeners(settings)
    assert [x.name for x in served] == ["zone", "l3-enip", "zone-enip"]
    config = relay_config(settings, served)
    assert [d["name"] for d in config["devices"]] == ["tank-plc", "press-plc"]
    assert config["enip_devices"] == [
        {"name": "press-plc", "host": "127.0.0.1", "port": 44818, "timeout": 1.5, "max_connections": 3},
        {"name": "drive", "host": "127.0.0.2", "port": 44818, "timeout": 2.0, "max_connections": 1},
    ]
    zone, north, plain = config["listeners"]
    assert (zone["kind"], zone["devices"]) == ("modbus", [1])  # index into devices
    assert (north["kind"], north["devices"], north["request_timeout"]) == ("enip_tls", [0], 3.0)  # enip_devices
    assert north["tls"] == {"cert": pki.cert("server").read_bytes(), "key": pki.key("server").read_bytes(),
                            "ca": pki.ca.read_bytes(), "crl": None}
    assert (plain["kind"], plain["tls"], plain["devices"]) == ("enip", None, [1])


def test_enip_tls_certificates_are_watched_for_expiry(tmp_path: Path, pki: DevPki) -> None:
    settings = enip_settings(tmp_path, pki)
    metrics = Metrics()
    RustConduit._watch_certificates(SimpleNamespace(metrics=metrics), settings)  # type: ignore[arg-type]
    assert metrics.expiry.files == {("l3-enip", "server"): pki.cert("server"), ("l3-enip", "ca"): pki.ca}


class _Records:
    def __init__(self) -> None:
        self.records: list[dict[str, Any]] = []

    def write(self, record: dict[str, Any]) -> None:
        self.records.append(record)


@pytest.mark.parametrize("cip", [
    wire.write_tag("Secret", 0),  # denied: another tag
    wire.multiple(wire.read_tag("Line1_Speed"), wire.write_tag("Line1_Speed", values=(3,))),  # allowed, a write
    wire.request(0x4C, wire.symbol("Line1_Speed") + b"\x80\x01\x00\x00", b"\x01\x00"),  # malformed path
], ids=["deny", "allowed-write", "malformed"])
def test_enip_audit_from_the_relay_equals_the_python_conduits(tmp_path: Path, pki: DevPki, cip: bytes) -> None:
    settings = enip_settings(tmp_path, pki)
    generation = _Generation(1, settings)
    policy = generation.policy
    frame = wire.send_rr_data(cip, 0x1234)
    decision = policy.engine.decide_enip(policy.principal_index("operator"), policy.device_index("press-plc"),
                                         _engine.EnipSession(), frame)
    identity = Identity(peer="127.0.0.1:60202", role="Operator", subject="CN=operator-1,O=Plant")
    message = _Message(frame, Header.read(frame))
    deny = decision.verdict == VERDICTS.index("deny")
    python = enip_audit_record(
        "l3-enip", "operator", identity, "press-plc", message, verdict=decision.verdict, reason=decision.reason,
        rule=decision.rule_id or None, service=decision.service, target=decision.target, route=decision.route,
        leaves=decision.leaves, denied_leaf=decision.denied_leaf, malformed=decision.malformed,
        general_status=decision.general_status, encap_status=decision.encap_status,
        writes=None if deny else message.writes(), time="2025-11-26T09:34:09.507874Z")
    client = _Client("l3-enip", True, identity, "127.0.0.1")
    client.principal = "operator"
    records = _Records()
    event = ("enip_audit", 7, "l3-enip", "press-plc", frame, VERDICTS[decision.verdict], CIP_REASONS[decision.reason],
             decision.rule_id or None, decision.service, decision.target, decision.route, decision.leaves,
             decision.denied_leaf, decision.malformed, decision.general_status if deny else None,
             decision.encap_status if deny else None, 1_764_149_649_507_874_123)
    # Only the conduit's clients and audit log take part in handling this event.
    conduit: Any = SimpleNamespace(clients={7: client}, audit=records)
    conduit._enip_audit = lambda *fields: RustConduit._enip_audit(conduit, *fields)
    RustConduit._event(conduit, event)
    assert records.records == [python]
    assert python["principal"]["role"] == "Operator" and python["verdict"] in ("deny", "allow")
    if not deny:
        assert python["writes"] == ["write_tag Line1_Speed"]
