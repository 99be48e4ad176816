"""OPC UA converter end to end: asyncua clients over SignAndEncrypt -> zonegate -> a simulated PLC
(pymodbus), all over real loopback sockets. Writes are decided by the engine; the PLC counts what
reaches it, so a refused write is proven never to arrive."""

from __future__ import annotations

import asyncio
import gc
import json
from collections.abc import AsyncIterator, Coroutine
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest
from asyncua import Client, ua
from asyncua.crypto.security_policies import (
    SecurityPolicyAes128Sha256RsaOaep,
    SecurityPolicyAes256Sha256RsaPss,
    SecurityPolicyBasic256Sha256,
)
from cryptography.hazmat.primitives import serialization
from pymodbus.client import AsyncModbusTcpClient

from zonegate.controlplane.audit import AuditLog
from zonegate.controlplane.pki import Authority, write_certificate, write_key
from zonegate.controlplane.policy import load
from zonegate.convert.opcua_pki import issue_application, issue_user
from zonegate.convert.opcua_server import OpcuaConverter, start_opcua
from zonegate.convert.opcua_tags import DEFAULT_APPLICATION_URI as SERVER_URI
from zonegate.convert.opcua_users import hash_password
from zonegate.demo.plc import SimulatedPlc
from zonegate.demo.stack import free_port
from zonegate.engine import CompiledPolicy

T = TypeVar("T")
TEST_TIMEOUT = 60.0
CLIENT_URI = "urn:plant:historian"
SCAN = 0.1
DEVICE_TIMEOUT = 0.5
PASSWORD = "correct horse battery staple"

POLICY = """\
version: 1
mode: {mode}
zones:
  cell-a: {{subnet: 192.168.10.0/24}}
devices:
  plc:
    zone: cell-a
    modbus: {{host: 127.0.0.1, port: {port}, units: [1], timeout: {timeout}s}}
principals:
  gateway: {{gateway: true}}
  historian: {{opcua_user: historian}}
  viewer: {{opcua_user: viewer}}
rules:
  - id: gateway-poll
    principal: gateway
    device: plc
    allow:
      - {{functions: [read_holding_registers, read_coils], holding: 0-199, coils: 0-63}}
  - id: historian-setpoints
    principal: historian
    device: plc
    allow:
      - functions: [write_single_register, write_multiple_registers]
        holding: {{range: 100-109, min: 0, max: 1000}}
      - {{functions: [write_single_coil], coils: 0-7}}
      - {{functions: [write_single_register], holding: 250}}
opcua:
  bind: 127.0.0.1:{opcua_port}
  poll_principal: gateway
  scan_classes: {{fast: {scan}s}}
  modes: {modes}
  cert: {{cert: server.crt, key: server.key, ca: ca.crt, crl: ca.crl}}
  users: users
tags: {tags}
"""

TAGS: dict[str, list[dict[str, Any]]] = {
    "plc": [
        {"name": "Level", "table": "holding", "address": 0, "type": "uint16", "scale": 0.1, "unit": "m3",
         "description": "Tank level", "min": 0, "max": 100},
        {"name": "Ticks", "table": "holding", "address": 1, "type": "uint16"},
        {"name": "Temperature", "table": "holding", "address": 2, "type": "float32", "word_order": "little",
         "unit": "degC"},
        {"name": "Batch", "table": "holding", "address": 10, "type": "string", "length": 4},
        {"name": "Setpoint", "table": "holding", "address": 100, "type": "uint16", "writable": True,
         "min": 0, "max": 800, "unit": "m3/h"},
        {"name": "Trim", "table": "holding", "address": 101, "type": "int16", "writable": True},
        {"name": "Ratio", "table": "holding", "address": 102, "type": "int32", "writable": True},
        {"name": "Spare", "table": "holding", "address": 120, "type": "uint16", "writable": True},
        # past the end of the PLC's registers: the policy allows the write, the device refuses it
        {"name": "Beyond", "table": "holding", "address": 250, "type": "uint16", "writable": True},
        {"name": "Pump", "table": "coils", "address": 0, "type": "bool", "writable": True},
        # the gateway's rule lists no input registers: this tag's poll is refused by the engine
        {"name": "Undeclared", "table": "input_registers", "address": 5, "type": "uint16"},
    ]
}

SECURITY = {
    "Basic256Sha256": SecurityPolicyBasic256Sha256,
    "Aes128_Sha256_RsaOaep": SecurityPolicyAes128Sha256RsaOaep,
    "Aes256_Sha256_RsaPss": SecurityPolicyAes256Sha256RsaPss,
}


def run(coro: Coroutine[Any, Any, T], timeout: float = TEST_TIMEOUT) -> T:
    return asyncio.run(asyncio.wait_for(coro, timeout))


async def until(predicate: Any, timeout: float = 5.0, what: str = "condition") -> None:
    """Wait (bounded) until `predicate()` holds."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"{what} not reached within {timeout}s")
        await asyncio.sleep(0.02)


@dataclass
class Pki:
    dir: Path
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    stranger_cert: Path
    stranger_key: Path
    users: Path

    def client_pair(self, name: str) -> tuple[Path, Path]:
        return self.dir / f"{name}.pem", self.dir / f"{name}-key.pem"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """Test PKI made now: a CA, the server and a trusted client, and a client from a CA nobody trusts."""
    base = tmp_path_factory.mktemp("opcua-pki")
    ca = Authority.create("opcua-test-ca", key_kind="rsa")
    other = Authority.create("somebody-else-ca", key_kind="rsa")
    write_certificate(base / "ca.crt", ca.cert)
    pairs = {
        "server": issue_application(ca, "zonegate", SERVER_URI, server=True),
        "client": issue_application(ca, "historian", CLIENT_URI),
        "stranger": issue_application(other, "stranger", CLIENT_URI),
        "revoked": issue_application(ca, "retired-laptop", CLIENT_URI),
        # X.509 user certificates: the user name is the subject's common name
        "user-historian": issue_user(ca, "historian"),
        "user-nobody": issue_user(ca, "nobody"),
        "user-stranger": issue_user(other, "historian"),
    }
    ca.revoked.append(pairs["revoked"][1].serial_number)
    (base / "ca.crl").write_bytes(ca.crl().public_bytes(serialization.Encoding.PEM))
    for name, (key, cert) in pairs.items():
        write_key(base / f"{name}.key", key)
        write_certificate(base / f"{name}.crt", cert)
        write_key(base / f"{name}-key.pem", key)  # clients pick the encoding by file extension
        write_certificate(base / f"{name}.pem", cert)
    users = base / "users"
    users.touch(mode=0o600)
    users.write_text(
        f"# test users\nhistorian:{hash_password(PASSWORD, log2_n=10)}\nviewer:{hash_password('viewer-pw', log2_n=10)}\n"
    )
    users.chmod(0o600)
    return Pki(base, base / "ca.crt", base / "server.crt", base / "server.key", base / "client.pem",
               base / "client-key.pem", base / "stranger.pem", base / "stranger-key.pem", users)


@dataclass
class Rig:
    plc: SimulatedPlc
    converter: OpcuaConverter
    url: str
    audit: Path
    tmp: Path

    async def plc_write(self, address: int, values: list[int]) -> None:
        """Change the device from the zone side, as the process would."""
        client = AsyncModbusTcpClient("127.0.0.1", port=self.plc.port, timeout=2)
        await client.connect()
        try:
            await client.write_registers(address, values, device_id=1)
        finally:
            client.close()

    async def plc_read(self, address: int, count: int = 1, coils: bool = False) -> list[int]:
        client = AsyncModbusTcpClient("127.0.0.1", port=self.plc.port, timeout=2)
        await client.connect()
        try:
            if coils:
                reply = await client.read_coils(address, count=count, device_id=1)
                return [int(b) for b in reply.bits[:count]]
            reply = await client.read_holding_registers(address, count=count, device_id=1)
            return list(reply.registers)
        finally:
            client.close()

    def audit_records(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.audit.read_text().splitlines() if line.strip()]


@asynccontextmanager
async def rig(tmp: Path, pki: Pki, *, modes: tuple[str, ...] = ("SignAndEncrypt",),
              mode: str = "enforce") -> AsyncIterator[Rig]:
    plc = SimulatedPlc(initial={0: 425, 1: 7, 10: 0x4142, 11: 0x4331})
    await plc.start()
    policy_file = tmp / "policy.yaml"
    policy_file.write_text(POLICY.format(mode=mode, port=plc.port, timeout=DEVICE_TIMEOUT, opcua_port=free_port(), scan=SCAN,
                                         modes=json.dumps(list(modes)), tags=json.dumps(TAGS)))
    policy = load([policy_file], pki_dir=pki.dir)
    compiled = CompiledPolicy(policy.ir())
    audit_path = tmp / "audit.jsonl"
    audit = AuditLog(str(audit_path))
    converter = await start_opcua(policy, compiled, audit=audit)
    try:
        yield Rig(plc, converter, converter.endpoint, audit_path, tmp)
    finally:
        await converter.stop()
        await plc.stop()
        audit.close()


async def secure_client(url: str, pki: Pki, *, policy: str = "Basic256Sha256", user: str | None = "historian",
                        password: str | None = PASSWORD, identity: str = "client",
                        mode: ua.MessageSecurityMode = ua.MessageSecurityMode.SignAndEncrypt) -> Client:
    client = Client(url, timeout=5)
    client.application_uri = CLIENT_URI
    cert, key = pki.client_pair(identity)
    await client.set_security(SECURITY[policy], str(cert), str(key), mode=mode)
    if user is not None:
        client.set_user(user)
    if password is not None:
        client.set_password(password)
    return client


def tag_node(client: Client, converter: OpcuaConverter, name: str) -> Any:
    return client.get_node(converter.node_of[name])


async def good_value(node: Any, expected: Any, timeout: float = 5.0) -> ua.DataValue:
    """Read until the variable is Good and holds `expected` (bounded)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        dv = await node.read_data_value(raise_on_bad_status=False)
        if dv.StatusCode.is_good() and dv.Value.Value == expected:
            return dv
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"{node} never became Good {expected!r}; last {dv.StatusCode} {dv.Value}")
        await asyncio.sleep(0.02)


# -- address space and reads ------------------------------------------------------------------------------


def test_address_space_folders_types_access_and_units(tmp_path: Path, pki: Pki) -> None:
    async def scenario() -> None:
        async with rig(tmp_path, pki) as r:
            async with await secure_client(r.url, pki) as client:
                ns = await client.get_namespace_index("urn:zonegate:devices")
                objects = client.nodes.objects
                zone = await objects.get_child(f"{ns}:cell-a")
                device = await zone.get_child(f"{ns}:plc")
                names = {(await child.read_browse_name()).Name for child in await device.get_children()}
                assert names == {t["name"] for t in TAGS["plc"]}

                level = await device.get_child(f"{ns}:Level")
                assert await level.read_data_type_as_variant_type() == ua.VariantType.Double  # scaled
                assert await tag_node(client, r.converter, "Trim").read_data_type_as_variant_type() == ua.VariantType.Int16
                assert await tag_node(client, r.converter, "Pump").read_data_type_as_variant_type() == ua.VariantType.Boolean
                read_only = ua.AccessLevel.CurrentRead.mask
                read_write = read_only | ua.AccessLevel.CurrentWrite.mask
                assert (await level.read_attribute(ua.AttributeIds.AccessLevel)).Value.Value == read_only
                assert (await level.read_attribute(ua.AttributeIds.UserAccessLevel)).Value.Value == read_only
                setpoint = tag_node(client, r.converter, "Setpoint")
                assert (await setpoint.read_attribute(ua.AttributeIds.AccessLevel)).Value.Value == read_write
                assert (await setpoint.read_attribute(ua.AttributeIds.UserAccessLevel)).Value.Value == read_write
                # writable, but no rule lets the historian write address 120
                spare = tag_node(client, r.converter, "Spare")
                assert (await spare.read_attribute(ua.AttributeIds.AccessLevel)).Value.Value == read_write
                assert (await spare.read_attribute(ua.AttributeIds.UserAccessLevel)).Value.Value == read_only

                eu_range = await (await level.get_child("0:EURange")).read_value()
                assert (eu_range.Low, eu_range.High) == (0.0, 100.0)
                units = await (await level.get_child("0:EngineeringUnits")).read_value()
                assert units.DisplayName.Text == "m3"
                description = await level.read_attribute(ua.AttributeIds.Description)
                assert description.Value.Value.Text == "Tank level"

                dv = await good_value(level, 42.5)
                assert dv.SourceTimestamp is not None
                await good_value(tag_node(client, r.converter, "Batch"), "ABC1")
            async with await secure_client(r.url, pki, user="viewer", password="viewer-pw") as viewer:
                setpoint = tag_node(viewer, r.converter, "Setpoint")
                # the viewer may write nothing: the same variable is read-only for it
                assert (await setpoint.read_attribute(ua.AttributeIds.AccessLevel)).Value.Value == read_write
                assert (await setpoint.read_attribute(ua.AttributeIds.UserAccessLevel)).Value.Value == read_only

    run(scenario())


def test_polls_are_coalesced_into_one_read_per_table(tmp_path: Path, pki: Pki) -> None:
    async def scenario() -> None:
        async with rig(tmp_path, pki) as r:
            blocks = r.converter.poller.groups
            reads = [b for group in blocks.values() for b in group]
            assert sorted((b.table, b.start, b.count) for b in reads) == [
                ("coils", 0, 1), ("holding_registers", 0, 121), ("holding_registers", 250, 1),
                ("input_registers", 5, 1),
            ]
            await until(lambda: r.plc.seen[3] >= 3, what="three holding polls")
            assert set(r.plc.seen) <= {1, 3}  # polls only read, and the undeclared read never left
            assert r.converter.published("Undeclared") == (None, ua.StatusCodes.BadUserAccessDenied)
            assert r.converter.poller.stats.denied >= 1

    run(scenario())


def test_each_security_policy_reads_values_that_follow_the_device(tmp_path: Path, pki: Pki) -> None:
    async def scenario() -> None:
        async with rig(tmp_path, pki) as r:
            ticks_value = 7
            for policy in sorted(SECURITY):
                async with await secure_client(r.url, pki, policy=policy) as client:
                    ticks = tag_node(client, r.converter, "Ticks")
                    await good_value(ticks, ticks_value)
                    ticks_value += 1
                    await r.plc_write(1, [ticks_value])
                    changed = await good_value(ticks, ticks_value)
                    assert changed.SourceTimestamp is not None
            async with await secure_client(r.url, pki) as client:
                # float32, low word first: 21.5 = 0x41AC0000
                await r.plc_write(2, [0x0000, 0x41AC])
                await good_value(tag_node(client, r.converter, "Temperature"), 21.5)

    run(scenario())


def test_subscription_receives_device_changes(tmp_path: Path, pki: Pki) -> None:
    class Handler:
        def __init__(self) -> None:
            self.values: asyncio.Queue[Any] = asyncio.Queue()

        def datachange_notification(self, node: Any, value: Any, data: Any) -> None:
            self.values.put_nowait(value)

    async def scenario() -> None:
        async with rig(tmp_path, pki) as r:
            async with await secure_client(r.url, pki) as client:
                ticks = tag_node(client, r.converter, "Ticks")
                await good_value(ticks, 7)
                handler = Handler()
                subscription = await client.create_subscription(50, handler)
                await subscription.subscribe_data_change(ticks)
                assert await asyncio.wait_for(handler.values.get(), 5) == 7
                for value in (100, 101, 102):
                    await r.plc_write(1, [value])
                    while (got := await asyncio.wait_for(handler.values.get(), 5)) != value:
                        assert got in (7, 100, 101, 102)
                await subscription.delete()

    run(scenario())


# -- writes -------------------------------------------------------------------------------------------------


def test_allowed_writes_reach_the_device(tmp_path: Path, pki: Pki) -> None:
    async def scenario() -> None:
        async with rig(tmp_path, pki) as r:
            async with await secure_client(r.url, pki) as client:
                await tag_node(client, r.converter, "Setpoint").write_value(ua.Variant(640, ua.VariantType.UInt16))
                assert await r.plc_read(100) == [640]
                await tag_node(client, r.converter, "Trim").write_value(ua.Variant(5, ua.VariantType.Int16))
                assert await r.plc_read(101) == [5]
                # int32 over two registers, high word first: each word within the policy's 0..1000
                await tag_node(client, r.converter, "Ratio").write_value(ua.Variant(66036, ua.VariantType.Int32))
                assert await r.plc_read(102, 2) == [1, 500]
                await tag_node(client, r.converter, "Pump").write_value(ua.Variant(True, ua.VariantType.Boolean))
                assert await r.plc_read(0, 1, coils=True) == [1]
                assert r.plc.seen[6] == 2 and r.plc.seen[16] == 1 and r.plc.seen[5] == 1
                await good_value(tag_node(client, r.converter, "Setpoint"), 640)
            allowed = [a for a in r.audit_records() if a["verdict"] == "allow"]
            assert {a["tag"] for a in allowed} == {"Setpoint", "Trim", "Ratio", "Pump"}
            assert all(a["principal"] == {"name": "historian", "opcua_user": "historian"} for a in allowed)
            assert all(a["rule"] == "historian-setpoints" and a["conduit"] == "opcua" for a in allowed)

    run(scenario())


async def _write_status(node: Any, variant: ua.Variant) -> int:
    try:
        await node.write_value(variant)
    except ua.UaStatusCodeError as exc:
        return int(exc.code)
    return 0


def test_refused_writes_never_reach_the_device(tmp_path: Path, pki: Pki) -> None:
    async def scenario() -> None:
        async with rig(tmp_path, pki) as r:
            async with await secure_client(r.url, pki) as client:
                writes_before = r.plc.seen[6] + r.plc.seen[16] + r.plc.seen[5]
                # above the tag's own limit (800)
                status = await _write_status(tag_node(client, r.converter, "Setpoint"),
                                             ua.Variant(900, ua.VariantType.UInt16))
                assert status == ua.StatusCodes.BadOutOfRange
                # within the tag, outside the policy's value bound (0..1000): -1 is register 0xFFFF
                status = await _write_status(tag_node(client, r.converter, "Trim"),
                                             ua.Variant(-1, ua.VariantType.Int16))
                assert status == ua.StatusCodes.BadOutOfRange
                # an address no rule allows
                status = await _write_status(tag_node(client, r.converter, "Spare"),
                                             ua.Variant(1, ua.VariantType.UInt16))
                assert status == ua.StatusCodes.BadUserAccessDenied
                # a read-only tag
                status = await _write_status(tag_node(client, r.converter, "Ticks"),
                                             ua.Variant(1, ua.VariantType.UInt16))
                assert status == ua.StatusCodes.BadNotWritable
                # the server's own nodes are not writable by clients
                status = await _write_status(client.get_node(ua.ObjectIds.Server_ServerStatus_BuildInfo_ProductName),
                                             ua.Variant("x", ua.VariantType.String))
                assert status == ua.StatusCodes.BadUserAccessDenied
                assert r.plc.seen[6] + r.plc.seen[16] + r.plc.seen[5] == writes_before
            async with await secure_client(r.url, pki, user="viewer", password="viewer-pw") as viewer:
                status = await _write_status(tag_node(viewer, r.converter, "Setpoint"),
                                             ua.Variant(10, ua.VariantType.UInt16))
                assert status == ua.StatusCodes.BadUserAccessDenied
            assert r.plc.seen[6] + r.plc.seen[16] + r.plc.seen[5] == writes_before
            denials = {(a["tag"], a["reason"]) for a in r.audit_records() if a["verdict"] == "deny"}
            assert denials == {("Setpoint", "tag_limits"), ("Trim", "value_out_of_bounds"),
                               ("Spare", "address_out_of_range"), ("Setpoint", "no_matching_rule")}

    run(scenario())


def test_device_errors_and_bad_writes_come_back_per_item(tmp_path: Path, pki: Pki) -> None:
    async def scenario() -> None:
        async with rig(tmp_path, pki) as r:
            async with await secure_client(r.url, pki) as client:
                # allowed by the policy, refused by the device (illegal data address, exception 02)
                status = await _write_status(tag_node(client, r.converter, "Beyond"),
                                             ua.Variant(1, ua.VariantType.UInt16))
                assert status == ua.StatusCodes.BadOutOfRange
                assert r.plc.seen[6] == 1
                # a string where a number belongs never becomes a request
                status = await _write_status(tag_node(client, r.converter, "Setpoint"),
                                             ua.Variant("ten", ua.VariantType.String))
                assert status == ua.StatusCodes.BadTypeMismatch
                # several items in one Write: each gets its own result
                items = []
                for name, variant in (("Setpoint", ua.Variant(5, ua.VariantType.UInt16)),
                                      ("Spare", ua.Variant(5, ua.VariantType.UInt16)),
                                      ("Setpoint", ua.Variant(6, ua.VariantType.UInt16))):
                    item = ua.WriteValue()
                    item.NodeId = r.converter.node_of[name]
                    item.AttributeId = ua.AttributeIds.Value
                    item.Value = ua.DataValue(variant)
                    items.append(item)
                ranged = ua.WriteValue()
                ranged.NodeId = r.converter.node_of["Setpoint"]
                ranged.AttributeId = ua.AttributeIds.Value
                ranged.IndexRange = "0"
                ranged.Value = ua.DataValue(ua.Variant(7, ua.VariantType.UInt16))
                items.append(ranged)
                params = ua.WriteParameters()
                params.NodesToWrite = items
                results = await client.uaclient.write(params)
                assert [c.value for c in results] == [0, ua.StatusCodes.BadUserAccessDenied, 0,
                                                      ua.StatusCodes.BadIndexRangeInvalid]
                assert await r.plc_read(100) == [6]
                assert r.plc.seen[6] == 3
            refused = [a for a in r.audit_records() if a.get("device_exception")]
            assert [(a["tag"], a["device_exception"]) for a in refused] == [("Beyond", 2)]

    run(scenario())


def test_monitor_mode_forwards_would_be_denials_and_audits_them(tmp_path: Path, pki: Pki) -> None:
    async def scenario() -> None:
        async with rig(tmp_path, pki, mode="monitor") as r:
            async with await secure_client(r.url, pki) as client:
                await tag_node(client, r.converter, "Spare").write_value(ua.Variant(77, ua.VariantType.UInt16))
                assert await r.plc_read(120) == [77]
                # the tag's own limits are zonegate's, not the policy's: refused in either mode
                status = await _write_status(tag_node(client, r.converter, "Setpoint"),
                                             ua.Variant(900, ua.VariantType.UInt16))
                assert status == ua.StatusCodes.BadOutOfRange
            records = [(a["tag"], a["verdict"], a["reason"]) for a in r.audit_records()]
            assert records == [("Spare", "would_deny", "address_out_of_range"), ("Setpoint", "deny", "tag_limits")]

    run(scenario())


# -- device faults ------------------------------------------------------------------------------------------


def test_device_down_turns_bad_within_the_bound_and_good_when_back(tmp_path: Path, pki: Pki) -> None:
    async def scenario() -> None:
        async with rig(tmp_path, pki) as r:
            async with await secure_client(r.url, pki) as client:
                ticks = tag_node(client, r.converter, "Ticks")
                await good_value(ticks, 7)
                loop = asyncio.get_running_loop()
                port = r.plc.port
                stopped = loop.time()
                await r.plc.stop()
                bound = SCAN + DEVICE_TIMEOUT + 0.5  # one scan, one device timeout, and read-back slack
                while True:
                    dv = await ticks.read_data_value(raise_on_bad_status=False)
                    if dv.StatusCode.value in (ua.StatusCodes.BadCommunicationError, ua.StatusCodes.BadNoCommunication):
                        break
                    assert dv.StatusCode.is_good(), dv.StatusCode
                    assert loop.time() - stopped < bound, "value stayed Good after the device stopped"
                    await asyncio.sleep(0.02)
                assert dv.SourceTimestamp is not None
                assert dv.Value.Value is None  # a Bad value carries no stale number
                status = await _write_status(tag_node(client, r.converter, "Setpoint"),
                                             ua.Variant(10, ua.VariantType.UInt16))
                assert status in (ua.StatusCodes.BadNoCommunication, ua.StatusCodes.BadCommunicationError)

                r.plc = SimulatedPlc(port=port, initial={1: 9})
                await r.plc.start()
                await good_value(ticks, 9, timeout=10.0)  # within the pool's reconnect backoff

    run(scenario())


# -- security -------------------------------------------------------------------------------------------------


def test_untrusted_and_revoked_client_certificates_are_refused(tmp_path: Path, pki: Pki) -> None:
    async def scenario() -> None:
        async with rig(tmp_path, pki) as r:
            for identity, expected in (("stranger", ua.StatusCodes.BadCertificateUntrusted),
                                       ("revoked", ua.StatusCodes.BadCertificateRevoked)):
                client = await secure_client(r.url, pki, identity=identity)
                with pytest.raises(ua.UaStatusCodeError) as caught:
                    await client.connect()
                assert caught.value.code == expected, identity
                client.disconnect_socket()
            # a trusted certificate presented by an application claiming another URI
            client = await secure_client(r.url, pki)
            client.application_uri = "urn:plant:somebody-else"
            with pytest.raises(ua.UaStatusCodeError) as caught:
                await client.connect()
            assert caught.value.code == ua.StatusCodes.BadCertificateUriInvalid
            client.disconnect_socket()
            assert r.converter.channel_stats.by_kind == {
                "certificate_untrusted": 1, "certificate_revoked": 1, "certificate_uri_mismatch": 1,
            }

    run(scenario())


def test_wrong_password_unknown_user_and_anonymous_are_refused(tmp_path: Path, pki: Pki) -> None:
    cases = [
        ("historian", "wrong", ua.StatusCodes.BadUserAccessDenied),
        ("nobody", PASSWORD, ua.StatusCodes.BadUserAccessDenied),
        (None, None, ua.StatusCodes.BadIdentityTokenRejected),  # anonymous is not offered
    ]

    async def scenario() -> None:
        async with rig(tmp_path, pki) as r:
            for user, password, expected in cases:
                client = await secure_client(r.url, pki, user=user, password=password)
                with pytest.raises(ua.UaStatusCodeError) as caught:
                    await client.connect()
                assert caught.value.code == expected, user
                client.disconnect_socket()
            assert r.converter.users.refused == 2

    run(scenario())


def test_x509_user_certificates_map_to_principals(tmp_path: Path, pki: Pki) -> None:
    async def user_client(url: str, name: str, policy: str = "Basic256Sha256") -> Client:
        client = await secure_client(url, pki, policy=policy, user=None, password=None)
        cert, key = pki.client_pair(name)
        await client.load_client_certificate(str(cert))
        await client.load_private_key(str(key))
        return client

    async def scenario() -> None:
        async with rig(tmp_path, pki) as r:
            for policy in SECURITY:  # each policy signs the user token its own way (SHA-256, PSS)
                async with await user_client(r.url, "user-historian", policy) as client:
                    await good_value(tag_node(client, r.converter, "Ticks"), 7)
                    await tag_node(client, r.converter, "Setpoint").write_value(
                        ua.DataValue(ua.Variant(640, ua.VariantType.UInt16)))
                    assert await r.plc_read(100) == [640]
            written = [rec for rec in r.audit_records() if rec["verdict"] == "allow"]
            assert written[-1]["principal"] == {"name": "historian", "opcua_user": "historian"}
            for name in ("user-stranger", "user-nobody"):
                client = await user_client(r.url, name)
                with pytest.raises(ua.UaStatusCodeError) as caught:
                    await client.connect()
                assert caught.value.code == ua.StatusCodes.BadUserAccessDenied, name
                client.disconnect_socket()
            assert r.converter.users.refused_by == {"user_certificate_untrusted": 1, "no_principal": 1}

    run(scenario())


def test_a_user_name_token_never_counts_the_application_certificate_as_a_user(tmp_path: Path, pki: Pki) -> None:
    """asyncua passes the channel's certificate to the user manager for every token; only a verified X.509
    user token's certificate names a user."""
    from zonegate.convert.opcua_users import PasswordFile, PrincipalUserManager, UserCertificate
    from zonegate.convert.opcua_pki import TrustList

    users = PrincipalUserManager(PasswordFile({}), {"historian": "historian"}, TrustList.load(pki.ca))
    der = pki.client_pair("user-historian")[0].read_bytes()
    from cryptography import x509 as _x509
    from cryptography.hazmat.primitives.serialization import Encoding

    der = _x509.load_pem_x509_certificate(der).public_bytes(Encoding.DER)
    assert users.get_user(None, certificate=der) is None  # a plain certificate: no user
    user = users.get_user(None, certificate=UserCertificate(der))
    assert user is not None and (user.name, user.opcua_user) == ("historian", "historian")


def test_sign_only_is_not_offered_by_default(tmp_path: Path, pki: Pki) -> None:
    async def scenario() -> None:
        async with rig(tmp_path, pki) as r:
            client = Client(r.url, timeout=5)
            endpoints = await client.connect_and_get_server_endpoints()
            offered = {(e.SecurityPolicyUri.rsplit("#", 1)[1], e.SecurityMode) for e in endpoints}
            assert offered == {(name, ua.MessageSecurityMode.SignAndEncrypt) for name in SECURITY}
            assert {t.TokenType for e in endpoints for t in e.UserIdentityTokens} == {
                ua.UserTokenType.UserName, ua.UserTokenType.Certificate}  # never Anonymous

    run(scenario())


def test_start_refuses_a_readable_key_and_a_taken_port(tmp_path: Path, pki: Pki) -> None:
    from zonegate.convert.opcua_server import ConverterError

    async def scenario() -> None:
        async with rig(tmp_path, pki) as r:
            policy = load([tmp_path / "policy.yaml"], pki_dir=pki.dir)
            compiled = CompiledPolicy(policy.ir())
            # the same bind address as the running converter: taken
            with pytest.raises(OSError):
                await start_opcua(policy, compiled)
            loose = tmp_path / "loose"
            loose.mkdir()
            for name in ("server.crt", "ca.crt", "ca.crl", "users"):
                (loose / name).write_bytes((pki.dir / name).read_bytes())
                (loose / name).chmod(0o600)
            (loose / "server.key").write_bytes(pki.server_key.read_bytes())
            (loose / "server.key").chmod(0o644)
            with pytest.raises(ConverterError, match="mode 0600"):
                await start_opcua(load([tmp_path / "policy.yaml"], pki_dir=loose), compiled)
            # a certificate for another application URI (the historian's) as the server's
            (loose / "server.crt").write_bytes(pki.client_cert.read_bytes())
            (loose / "server.key").write_bytes(pki.client_key.read_bytes())
            (loose / "server.key").chmod(0o600)
            with pytest.raises(ConverterError, match="application URI"):
                await start_opcua(load([tmp_path / "policy.yaml"], pki_dir=loose), compiled)
            assert r.converter.poller.tasks and all(not t.done() for t in r.converter.poller.tasks)

    run(scenario())


def test_the_collector_skips_the_address_space_while_serving_and_is_restored_after(tmp_path: Path, pki: Pki) -> None:
    before = gc.get_threshold()

    async def scenario() -> None:
        async with rig(tmp_path, pki) as r:
            # everything alive once the address space is built is left out of collections
            assert gc.get_freeze_count() > 10_000
            assert gc.get_threshold()[0] >= 10_000
            await until(lambda: r.converter.published("Ticks") == (7, 0), what="Ticks polled")
        assert gc.get_freeze_count() == 0
        assert gc.get_threshold() == before

    run(scenario())
