"""CIP tags in the OPC UA converter, end to end: asyncua clients over SignAndEncrypt -> zonegate ->
a cpppo Logix simulator (its own process, GPL, never imported by zonegate), over real loopback sockets.
Every poll and write is a CIP request decided by the engine; the simulator records every message that
reaches it, so a refused write is proven never to arrive."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import socket
import struct
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from asyncua import ua

from tests.conftest import require
from tests.integration import enip_sim as wire
from tests.integration.enip_sim import EnipSimulator, Reply
from tests.integration.test_opcua_server import (  # noqa: F401  (pki is a fixture)
    Pki,
    good_value,
    pki,
    run,
    secure_client,
    tag_node,
    until,
)
from zonegate import _engine
from zonegate.controlplane.audit import AuditLog
from zonegate.controlplane.policy import load
from zonegate.convert.opcua_server import OpcuaConverter, start_opcua
from zonegate.demo.stack import free_port
from zonegate.engine import CompiledPolicy

SCAN = 0.1
DEVICE_TIMEOUT = 0.5

SIM_TAGS = ["Flag=BOOL", "Small=SINT", "Medium=INT", "Count=DINT", "Big=LINT", "Speed=REAL", "Precise=LREAL",
            "Batch=STRING", "Locked=DINT", "Hidden=DINT"]

POLICY = """\
version: 1
zones:
  cell-a: {{subnet: 192.168.10.0/24}}
devices:
  logix:
    zone: cell-a
    enip: {{host: 127.0.0.1, port: {port}, timeout: {timeout}s}}
principals:
  gateway: {{gateway: true}}
  historian: {{opcua_user: historian}}
rules:
  - id: gateway-poll
    principal: gateway
    device: logix
    cip:
      - {{services: [read_tag], tags: [Flag, Small, Medium, Count, Big, Speed, Precise, Batch, Locked]}}
  - id: historian-writes
    principal: historian
    device: logix
    cip:
      - {{services: [write_tag], tags: [Flag, Small, Medium, Count, Big, Speed, Precise]}}
opcua:
  bind: 127.0.0.1:{opcua_port}
  poll_principal: gateway
  scan_classes: {{fast: {scan}s}}
  cert: {{cert: server.crt, key: server.key, ca: ca.crt, crl: ca.crl}}
  users: users
tags: {tags}
"""

TAGS: dict[str, list[dict[str, Any]]] = {
    "logix": [
        {"name": "Flag", "cip_tag": "Flag", "type": "bool", "writable": True},
        {"name": "Small", "cip_tag": "Small", "type": "sint", "writable": True},
        {"name": "Medium", "cip_tag": "Medium", "type": "int", "writable": True},
        {"name": "Count", "cip_tag": "Count", "type": "dint", "writable": True, "min": 0, "max": 100000},
        {"name": "Big", "cip_tag": "Big", "type": "lint", "writable": True},
        {"name": "Speed", "cip_tag": "Speed", "type": "real", "writable": True, "unit": "m/s"},
        {"name": "Precise", "cip_tag": "Precise", "type": "lreal", "writable": True},
        {"name": "Batch", "cip_tag": "Batch", "type": "string"},
        # writable in the tag list, but no rule lets anyone write it
        {"name": "Locked", "cip_tag": "Locked", "type": "dint", "writable": True},
        # no rule lets the poller read it
        {"name": "Hidden", "cip_tag": "Hidden", "type": "dint"},
    ]
}

# Values set in the simulator before the converter starts: (Logix type code, raw little-endian value).
INITIAL: dict[str, tuple[int, bytes]] = {
    "Flag": (0xC1, b"\xff"),
    "Small": (0xC2, struct.pack("<b", -5)),
    "Medium": (0xC3, struct.pack("<h", -300)),
    "Count": (0xC4, struct.pack("<i", 70000)),
    "Big": (0xC5, struct.pack("<q", -(2**40))),
    "Speed": (0xCA, struct.pack("<f", 1.5)),
    "Precise": (0xCB, struct.pack("<d", 2.25)),
    "Batch": (0xD0, struct.pack("<H", 5) + b"hello\x00"),
}
EXPECTED: dict[str, Any] = {
    "Flag": True, "Small": -5, "Medium": -300, "Count": 70000, "Big": -(2**40), "Speed": 1.5, "Precise": 2.25,
    "Batch": "hello",
}
VARIANTS: dict[str, ua.VariantType] = {
    "Flag": ua.VariantType.Boolean, "Small": ua.VariantType.SByte, "Medium": ua.VariantType.Int16,
    "Count": ua.VariantType.Int32, "Big": ua.VariantType.Int64, "Speed": ua.VariantType.Float,
    "Precise": ua.VariantType.Double, "Batch": ua.VariantType.String,
}


class SimClient:
    """The zone side talking to the simulator directly, with raw frames (a session of its own)."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        self.session = Reply(self._exchange(wire.register_session())).session

    def _exchange(self, frame: bytes) -> bytes:
        self.sock.sendall(frame)
        data = b""
        while len(data) < 24 or len(data) < 24 + int.from_bytes(data[2:4], "little"):
            chunk = self.sock.recv(4096)
            if not chunk:
                raise ConnectionError("simulator closed the connection")
            data += chunk
        return data

    def write(self, tag: str, code: int, raw: bytes) -> None:
        message = wire.request(0x4D, wire.symbol(tag), struct.pack("<HH", code, 1) + raw)
        reply = Reply(self._exchange(wire.send_rr_data(message, self.session)))
        assert reply.general_status == 0, reply.cip.hex()

    def read(self, tag: str) -> bytes:
        reply = Reply(self._exchange(wire.send_rr_data(wire.read_tag(tag), self.session)))
        assert reply.general_status == 0, reply.cip.hex()
        return reply.data

    def close(self) -> None:
        self.sock.close()


@dataclass
class Rig:
    sim: EnipSimulator
    converter: OpcuaConverter
    url: str
    audit: Path

    def audit_records(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.audit.read_text().splitlines() if line.strip()]

    def sim_client(self) -> SimClient:
        return SimClient(self.sim.port)


@asynccontextmanager
async def rig(tmp: Path, pki: Pki) -> AsyncIterator[Rig]:
    require(hasattr(_engine.Engine, "decide_cip"), "the engine has no CIP binding (decide_cip)")
    require(importlib.util.find_spec("cpppo") is not None, "cpppo (the simulator, its own process) is not installed")
    sim = EnipSimulator(tmp, SIM_TAGS).start()
    try:
        client = SimClient(sim.port)
        for tag, (code, raw) in INITIAL.items():
            client.write(tag, code, raw)
        client.close()
        policy_file = tmp / "policy.yaml"
        policy_file.write_text(POLICY.format(port=sim.port, timeout=DEVICE_TIMEOUT, opcua_port=free_port(), scan=SCAN,
                                             tags=json.dumps(TAGS)))
        policy = load([policy_file], pki_dir=pki.dir)
        compiled = CompiledPolicy(policy.ir())
        audit_path = tmp / "audit.jsonl"
        audit = AuditLog(str(audit_path))
        converter = await start_opcua(policy, compiled, audit=audit)
        try:
            yield Rig(sim, converter, converter.endpoint, audit_path)
        finally:
            await converter.stop()
            audit.close()
    finally:
        sim.stop()


def write_tag_on_wire(tag: str) -> bytes:
    """The start of a Write Tag request naming `tag`, as it would reach the device."""
    path = wire.symbol(tag)
    return bytes((0x4D, len(path) // 2)) + path


async def _write_status(node: Any, variant: ua.Variant) -> int:
    try:
        await node.write_value(variant)
    except ua.UaStatusCodeError as exc:
        return int(exc.code)
    return 0


def test_each_logix_type_reads_as_its_opcua_type(tmp_path: Path, pki: Pki) -> None:
    async def scenario() -> None:
        async with rig(tmp_path, pki) as r:
            async with await secure_client(r.url, pki) as client:
                for name, expected in EXPECTED.items():
                    node = tag_node(client, r.converter, name)
                    assert await node.read_data_type_as_variant_type() == VARIANTS[name], name
                    dv = await good_value(node, expected)
                    assert dv.Value is not None and dv.Value.VariantType == VARIANTS[name], name
                hidden = tag_node(client, r.converter, "Hidden")
                await until(lambda: r.converter.published("Hidden") is not None, what="Hidden polled")
                dv = await hidden.read_data_value(raise_on_bad_status=False)
                assert dv.StatusCode.value == ua.StatusCodes.BadUserAccessDenied
                # UserAccessLevel follows the cip rules: Medium is writable for the historian, Locked is not
                read_only = ua.AccessLevel.CurrentRead.mask
                read_write = read_only | ua.AccessLevel.CurrentWrite.mask
                medium = tag_node(client, r.converter, "Medium")
                locked = tag_node(client, r.converter, "Locked")
                assert (await medium.read_attribute(ua.AttributeIds.UserAccessLevel)).Value.Value == read_write
                assert (await locked.read_attribute(ua.AttributeIds.UserAccessLevel)).Value.Value == read_only
            # the poller packs its reads in Multiple Service Packets, and never asks for the refused tag
            assert any(m[40:41] == b"\x0a" for m in r.sim.messages() if m[:2] == b"\x6f\x00")
            assert not r.sim.saw(b"Hidden")

    run(scenario())


def test_subscription_sees_a_device_change(tmp_path: Path, pki: Pki) -> None:
    class Handler:
        def __init__(self) -> None:
            self.values: asyncio.Queue[Any] = asyncio.Queue()

        def datachange_notification(self, node: Any, value: Any, data: Any) -> None:
            self.values.put_nowait(value)

    async def scenario() -> None:
        async with rig(tmp_path, pki) as r:
            async with await secure_client(r.url, pki) as client:
                count = tag_node(client, r.converter, "Count")
                await good_value(count, 70000)
                handler = Handler()
                subscription = await client.create_subscription(50, handler)
                await subscription.subscribe_data_change(count)
                assert await asyncio.wait_for(handler.values.get(), 5) == 70000
                sim = r.sim_client()
                try:
                    sim.write("Count", 0xC4, struct.pack("<i", 70001))
                finally:
                    sim.close()
                assert await asyncio.wait_for(handler.values.get(), 5) == 70001
                await subscription.delete()

    run(scenario())


def test_allowed_writes_arrive_and_refused_ones_never_do(tmp_path: Path, pki: Pki) -> None:
    async def scenario() -> None:
        async with rig(tmp_path, pki) as r:
            async with await secure_client(r.url, pki) as client:
                writes = {
                    "Medium": (ua.Variant(1234, ua.VariantType.Int16), 0xC3, struct.pack("<h", 1234)),
                    "Count": (ua.Variant(99999, ua.VariantType.Int32), 0xC4, struct.pack("<i", 99999)),
                    "Speed": (ua.Variant(-0.5, ua.VariantType.Float), 0xCA, struct.pack("<f", -0.5)),
                    "Flag": (ua.Variant(False, ua.VariantType.Boolean), 0xC1, b"\x00"),
                    "Big": (ua.Variant(2**40 + 1, ua.VariantType.Int64), 0xC5, struct.pack("<q", 2**40 + 1)),
                }
                for name, (variant, _, _) in writes.items():
                    assert await _write_status(tag_node(client, r.converter, name), variant) == 0, name
                sim = r.sim_client()
                try:
                    for name, (_, code, raw) in writes.items():
                        assert sim.read(name) == struct.pack("<H", code) + raw, name
                finally:
                    sim.close()
                await good_value(tag_node(client, r.converter, "Medium"), 1234)

                # outside the tag's limits: refused by the converter, before the engine
                status = await _write_status(tag_node(client, r.converter, "Count"), ua.Variant(200000, ua.VariantType.Int32))
                assert status == ua.StatusCodes.BadOutOfRange
                # does not fit the Logix type
                status = await _write_status(tag_node(client, r.converter, "Small"), ua.Variant(300, ua.VariantType.Int32))
                assert status == ua.StatusCodes.BadOutOfRange
                # no rule lets the historian write Locked: denied by the engine, audited, never sent
                status = await _write_status(tag_node(client, r.converter, "Locked"), ua.Variant(1, ua.VariantType.Int32))
                assert status == ua.StatusCodes.BadUserAccessDenied
                # string tags are read-only
                status = await _write_status(tag_node(client, r.converter, "Batch"), ua.Variant("x", ua.VariantType.String))
                assert status == ua.StatusCodes.BadNotWritable
            assert not r.sim.saw(write_tag_on_wire("Locked"))
            # the rig's own setup wrote Batch once; the client's write never left zonegate
            assert sum(write_tag_on_wire("Batch") in m for m in r.sim.messages()) == 1
            records = r.audit_records()
            denied = [a for a in records if a["tag"] == "Locked"]
            assert len(denied) == 1
            assert denied[0]["verdict"] == "deny" and denied[0]["reason"] == "target_not_allowed"
            assert denied[0]["principal"] == {"name": "historian", "opcua_user": "historian"}
            assert denied[0]["cip_tag"] == "Locked" and denied[0]["service"] == "write_tag"
            allowed = [a for a in records if a["verdict"] == "allow"]
            assert {a["tag"] for a in allowed} == set(writes)
            assert all(a["rule"] == "historian-writes" and a["conduit"] == "opcua" for a in allowed)

    run(scenario())


def test_device_down_turns_bad_and_back_turns_good(tmp_path: Path, pki: Pki) -> None:
    async def scenario() -> None:
        async with rig(tmp_path, pki) as r:
            await until(lambda: r.converter.published("Count") == (70000, 0), what="Count Good")
            r.sim.stop()
            bad = (ua.StatusCodes.BadNoCommunication, ua.StatusCodes.BadCommunicationError)

            def count_bad() -> bool:
                last = r.converter.published("Count")
                return last is not None and last[0] is None and last[1] in bad

            await until(count_bad, timeout=SCAN + DEVICE_TIMEOUT + 3.0, what="Count Bad with the device down")
            async with await secure_client(r.url, pki) as client:
                dv = await tag_node(client, r.converter, "Count").read_data_value(raise_on_bad_status=False)
                assert dv.StatusCode.value in bad
            back = EnipSimulator(tmp_path, SIM_TAGS)
            back.port = r.sim.port  # the same device back at the same address, its tags reset to 0
            try:
                back.start()
                # the device's backoff is at most 5 s
                await until(lambda: r.converter.published("Count") == (0, 0), timeout=10.0, what="Count Good again")
            finally:
                back.stop()

    run(scenario())
