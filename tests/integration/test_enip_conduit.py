"""EtherNet/IP conduit end to end: clients -> zonegate -> cpppo's Logix simulator, over real sockets.

The north listener is EtherNet/IP over mutual TLS (2221-style, principal from the certificate), driven by
raw frames over Python's ssl; the zone listener is plain EtherNet/IP (principal by source address),
driven by cpppo's own client, pycomm3 and pylogix. What reached the device is read from the simulator's
record of every byte it received, and tag values are read back from it directly. Every test runs against
both relays (the `relay` fixture): the Python conduit (the reference) and the Rust relay, started by the
supervisor as `zonegate run --relay` starts them; only what a client, the device, the metrics and the audit
trail see is checked, so the same assertions hold for both.
"""

from __future__ import annotations

import asyncio
import json
import ssl
import struct
import subprocess
import sys
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

import pytest

from tests.conftest import require
from tests.integration import enip_sim as wire
from tests.integration.enip_sim import EnipSimulator, Reply
from tests.integration.relays import RELAYS, require_relay
from zonegate import _engine
from zonegate.controlplane.pki import DevPki, generate
from zonegate.controlplane.supervisor import Supervisor
from zonegate.demo.stack import client_ssl_context, free_port

T = TypeVar("T")
TEST_TIMEOUT = 60.0
TAGS = ["Line1_Speed=INT[10]", "Press_SP=INT[4]", "Secret=INT[2]"]

POLICY = """\
version: 1
mode: {mode}
zones:
  cell-a: {{subnet: 127.0.0.0/8}}
devices:
  press-plc:
    zone: cell-a
    enip: {{host: 127.0.0.1, port: {sim_port}, timeout: {device_timeout}, max_connections: {max_connections}}}
principals:
  operator: {{tls_role: Operator}}
  viewer: {{tls_role: Viewer}}
  line-hmi: {{source: 127.0.0.1}}
rules:
  - id: operator-press
    principals: [operator, line-hmi]
    device: press-plc
    cip:
      - services: [read_only]
        tags: ["Line1_Speed", "Press_SP"]
      - services: [write_tag]
        tags: ["Line1_Speed[0..9]"]
      - services: [get_attribute_all, get_attribute_single, get_attribute_list]
        class: 0x01
        instance: 1
      - services: [forward_open, large_forward_open, forward_close]
  - id: viewer-read
    principal: viewer
    device: press-plc
    cip:
      - services: [read_tag]
        tags: ["Line1_Speed"]
listeners:
  - name: l3-enip
    protocol: enip_tls
    bind: 127.0.0.1:{tls_port}
    devices: [press-plc]
    tls: {{cert: server.crt, key: server.key, ca: ca.crt, crl: ca.crl}}
    request_timeout: 5s
  - name: zone-enip
    protocol: enip
    bind: 127.0.0.1:{plain_port}
    devices: [press-plc]
audit: {{path: {audit}, max_per_second: 1000}}
"""


def run(coro: Coroutine[Any, Any, T], timeout: float = TEST_TIMEOUT) -> T:
    return asyncio.run(asyncio.wait_for(coro, timeout))


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> DevPki:
    return generate(tmp_path_factory.mktemp("pki"))


def engine_ready() -> bool:
    return all(hasattr(_engine, name) for name in ("EnipSession", "enip_split", "cip_flatten"))


class Stack:
    """A policy with both EtherNet/IP listeners in front of one cpppo simulator."""

    def __init__(self, tmp: Path, pki: DevPki, *, relay: str = "python", mode: str = "enforce",
                 device_timeout: str = "2s", delay: float = 0.0, slow: bytes = b"", device_port: int | None = None,
                 max_connections: int = 4) -> None:
        require(engine_ready(), "the engine has no EtherNet/IP binding (decide_enip, EnipSession)")
        self.relay = relay
        self.tmp = tmp
        self.pki = pki
        self.sim = EnipSimulator(tmp, TAGS, delay=delay, slow=slow)
        self.tls_port = free_port()
        self.plain_port = free_port()
        self.audit = tmp / "audit.jsonl"
        self.policy = tmp / "policy.yaml"
        self.policy.write_text(POLICY.format(mode=mode, sim_port=device_port or self.sim.port,
                                             max_connections=max_connections, tls_port=self.tls_port,
                                             plain_port=self.plain_port, audit=json.dumps(str(self.audit)),
                                             device_timeout=device_timeout))
        self.supervisor: Supervisor | None = None

    def audit_records(self) -> list[dict[str, Any]]:
        if not self.audit.exists():
            return []
        return [json.loads(line) for line in self.audit.read_text().splitlines()]

    async def run(self, body: Callable[[Stack], Awaitable[T]], *, device: bool = True) -> T:
        if device:
            await asyncio.to_thread(self.sim.start)
        self.supervisor = Supervisor([self.policy], self.pki.directory, serve_metrics=False, relay=self.relay)
        try:
            await self.supervisor.start()
            # The Rust relay serves the EtherNet/IP listeners itself: no Python conduit beside it.
            assert (self.supervisor.enip is None) == (self.relay == "rust"), self.supervisor.enip
            return await body(self)
        finally:
            await self.supervisor.stop()
            if device:
                await asyncio.to_thread(self.sim.stop)

    def sample(self, name: str, **labels: str) -> float:
        assert self.supervisor is not None
        return self.supervisor.metrics.registry.get_sample_value(name, labels) or 0.0

    def relayed(self) -> list[bytes]:
        """The SendRRData / SendUnitData messages that reached the device."""
        return [m for m in self.sim.messages() if m[0:2] in (b"\x6f\x00", b"\x70\x00")]


class Session:
    """A raw EtherNet/IP client: one connection, one registered session, bounded reads."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.handle = 0

    @classmethod
    async def open(cls, port: int, context: ssl.SSLContext | None = None, *, register: bool = True) -> Session:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(
            "127.0.0.1", port, ssl=context, server_hostname="127.0.0.1" if context else None), 5)
        session = cls(reader, writer)
        if register:
            reply = await session.exchange(wire.register_session())
            assert reply.command == 0x65 and reply.status == 0 and reply.session != 0
            session.handle = reply.session
        return session

    async def send(self, frame: bytes) -> None:
        self.writer.write(frame)
        await self.writer.drain()

    async def read(self) -> Reply:
        head = await asyncio.wait_for(self.reader.readexactly(24), 10)
        body = await asyncio.wait_for(self.reader.readexactly(int.from_bytes(head[2:4], "little")), 10)
        return Reply(head + body)

    async def exchange(self, frame: bytes) -> Reply:
        await self.send(frame)
        return await self.read()

    async def rr(self, cip: bytes, context: bytes = b"zonegate") -> Reply:
        reply = await self.exchange(wire.send_rr_data(cip, self.handle, context))
        assert reply.command == 0x6F and reply.session == self.handle and reply.context == context
        return reply

    async def close(self) -> None:
        self.writer.close()
        try:
            await asyncio.wait_for(self.writer.wait_closed(), 5)
        except (ConnectionError, ssl.SSLError, asyncio.TimeoutError):
            pass


def ints(reply: Reply) -> list[int]:
    """The INT values of a Read Tag reply (after the type word)."""
    assert reply.general_status == 0, reply.cip.hex()
    data = reply.data
    assert struct.unpack_from("<H", data)[0] == wire.INT
    return list(struct.unpack_from(f"<{(len(data) - 2) // 2}h", data, 2))


async def device_values(sim: EnipSimulator, tag: str, count: int) -> list[int]:
    """Read a tag straight from the simulator, around zonegate."""
    session = await Session.open(sim.port)
    try:
        return ints(await session.rr(wire.unconnected_send(wire.read_tag(tag, 0, count=count))))
    finally:
        await session.close()


# -- over TLS, raw frames ---------------------------------------------------------------------------------


def test_operator_reads_and_writes_reach_the_device(tmp_path: Path, pki: DevPki, relay: str) -> None:
    stack = Stack(tmp_path, pki, relay=relay)

    async def body(stack: Stack) -> None:
        session = await Session.open(stack.tls_port, client_ssl_context(pki, "operator"))
        try:
            wrote = await session.rr(wire.unconnected_send(wire.write_tag("Line1_Speed", 2, values=(1200,))))
            assert wrote.service == 0xCD and wrote.general_status == 0
            read = await session.rr(wire.unconnected_send(wire.read_tag("Line1_Speed", 0, count=4)))
            assert read.service == 0xCC and ints(read) == [0, 0, 1200, 0]
            direct = await session.rr(wire.read_tag("press_sp", 1))  # names compare case-insensitively
            assert ints(direct) == [0]
        finally:
            await session.close()
        assert await device_values(stack.sim, "Line1_Speed", 4) == [0, 0, 1200, 0]
        assert len(stack.relayed()) == 3 + 1  # three through zonegate, one read back directly
        assert stack.sample("zonegate_requests_total", conduit="l3-enip", principal="operator", device="press-plc",
                            function="write_tag", verdict="allow", reason="allowed") == 1

    run(stack.run(body))
    (write,) = [r for r in stack.audit_records() if r["verdict"] == "allow"]
    assert write["function"] == "write_tag" and write["rule"] == "operator-press"
    assert write["principal"]["role"] == "Operator" and write["writes"] == ["write_tag Line1_Speed[2]"]


REFUSED = [
    # what, the request, the general status, the reason
    ("write to another tag", wire.unconnected_send(wire.write_tag("Secret", 0, values=(1,))), 0x0F,
     "target_not_allowed"),
    ("write past the allowed elements", wire.write_tag("Line1_Speed", 9, values=(1, 2)), 0x0F,
     "target_not_allowed"),
    ("stop", wire.unconnected_send(wire.request(0x07, wire.IDENTITY)), 0x0F, "service_not_allowed"),
    ("reset", wire.request(0x05, wire.IDENTITY, b"\x00"), 0x0F, "service_not_allowed"),
    ("set attribute single", wire.request(0x10, wire.IDENTITY + b"\x30\x07", b"\x01"), 0x0F,
     "service_not_allowed"),
    ("a write hidden in a multiple service packet",
     wire.multiple(wire.read_tag("Line1_Speed", 0), wire.write_tag("Secret", 1, values=(5,))), 0x0F,
     "target_not_allowed"),
    ("a reset hidden in an unconnected send in a multiple service packet",
     wire.unconnected_send(wire.multiple(wire.read_tag("Press_SP", 0),
                                         wire.unconnected_send(wire.request(0x05, wire.IDENTITY, b"\x00")))),
     0x0F, "service_not_allowed"),
    ("a data segment in the path", wire.request(0x4C, wire.symbol("Line1_Speed") + b"\x80\x01\x00\x00",
                                                b"\x01\x00"), 0x04, "malformed"),
]


@pytest.mark.parametrize(("what", "cip", "status", "reason"), REFUSED, ids=[r[0] for r in REFUSED])
def test_refused_requests_never_reach_the_device(tmp_path: Path, pki: DevPki, relay: str, what: str, cip: bytes,
                                                 status: int, reason: str) -> None:
    stack = Stack(tmp_path, pki, relay=relay)

    async def body(stack: Stack) -> None:
        session = await Session.open(stack.tls_port, client_ssl_context(pki, "operator"))
        try:
            reply = await session.rr(cip, context=b"refuse!!")
            assert reply.status == 0
            assert reply.service == cip[0] | 0x80 and reply.general_status == status, reply.cip.hex()
            # the connection stays usable
            assert ints(await session.rr(wire.read_tag("Line1_Speed", 0))) == [0]
        finally:
            await session.close()
        assert len(stack.relayed()) == 1  # the read only
        assert not stack.sim.saw(b"Secret")

    run(stack.run(body))
    (record,) = stack.audit_records()
    assert record["verdict"] == "deny" and record["reason"] == reason and record["general_status"] == status


def test_viewer_is_limited_to_its_rule_and_unknown_role_gets_0f(tmp_path: Path, pki: DevPki, relay: str) -> None:
    stack = Stack(tmp_path, pki, relay=relay)

    async def body(stack: Stack) -> None:
        viewer = await Session.open(stack.tls_port, client_ssl_context(pki, "viewer"))
        nobody = await Session.open(stack.tls_port, client_ssl_context(pki, "client-norole"))
        try:
            assert ints(await viewer.rr(wire.read_tag("Line1_Speed", 0))) == [0]
            refused = await viewer.rr(wire.write_tag("Line1_Speed", 0))
            assert refused.general_status == 0x0F
            unknown = await nobody.rr(wire.read_tag("Line1_Speed", 0))
            assert unknown.service == 0xCC and unknown.general_status == 0x0F
        finally:
            await viewer.close()
            await nobody.close()
        assert len(stack.relayed()) == 1

    run(stack.run(body))
    # the unknown client's session is zonegate's own; its request is then refused, telling it why
    assert [(r["command"], r["reason"]) for r in stack.audit_records()] == [
        ("register_session", "unknown_principal"), ("send_rr_data", "service_not_allowed"),
        ("send_rr_data", "unknown_principal")]


def test_both_relays_write_the_same_audit_records(tmp_path: Path, pki: DevPki) -> None:
    """One conversation through each relay: the records differ only in their time and the client's port."""
    for relay in RELAYS:
        require_relay(relay)

    async def body(stack: Stack) -> None:
        operator = await Session.open(stack.tls_port, client_ssl_context(pki, "operator"))
        nobody = await Session.open(stack.tls_port, client_ssl_context(pki, "client-norole"))
        zone = await Session.open(stack.plain_port)
        try:
            await operator.rr(wire.unconnected_send(wire.write_tag("Line1_Speed", 2, values=(3,))))
            await operator.rr(wire.multiple(wire.read_tag("Line1_Speed", 0), wire.write_tag("Secret", 1)))
            await operator.rr(wire.request(0x4C, wire.symbol("Line1_Speed") + b"\x80\x01\x00\x00", b"\x01\x00"))
            await operator.rr(wire.request(0x05, wire.IDENTITY, b"\x00"))
            await operator.exchange(wire.header(0x0072, b"", operator.handle))  # IndicateStatus
            await nobody.rr(wire.read_tag("Line1_Speed", 0))
            await zone.rr(wire.write_tag("Press_SP", 0))
        finally:
            for session in (operator, nobody, zone):
                await session.close()

    def normalized(stack: Stack) -> list[dict[str, Any]]:
        records = stack.audit_records()
        for record in records:
            del record["time"]
            record["principal"]["peer"] = record["principal"]["peer"].rpartition(":")[0]
        return records

    seen = {}
    for relay in RELAYS:
        (tmp_path / relay).mkdir()
        stack = Stack(tmp_path / relay, pki, relay=relay)
        run(stack.run(body))
        seen[relay] = normalized(stack)
    # the allowed write, four refusals of the operator's, the unknown client's RegisterSession and read, the
    # zone client's refused write
    assert len(seen["python"]) == 8, seen["python"]
    assert seen["rust"] == seen["python"]


def test_monitor_mode_forwards_would_deny_but_never_malformed(tmp_path: Path, pki: DevPki, relay: str) -> None:
    stack = Stack(tmp_path, pki, relay=relay, mode="monitor")

    async def body(stack: Stack) -> None:
        session = await Session.open(stack.tls_port, client_ssl_context(pki, "operator"))
        try:
            forwarded = await session.rr(wire.write_tag("Secret", 1, values=(7,)))
            assert forwarded.general_status == 0
            malformed = await session.rr(wire.request(0x4C, wire.symbol("Line1_Speed") + b"\x80\x01\x00\x00",
                                                      b"\x01\x00"))
            assert malformed.general_status == 0x04
        finally:
            await session.close()
        assert await device_values(stack.sim, "Secret", 2) == [0, 7]

    run(stack.run(body))
    assert [(r["verdict"], r["reason"]) for r in stack.audit_records()] == [
        ("would_deny", "target_not_allowed"), ("deny", "malformed")]


def test_sessions_are_mapped_and_checked(tmp_path: Path, pki: DevPki, relay: str) -> None:
    stack = Stack(tmp_path, pki, relay=relay)

    async def body(stack: Stack) -> None:
        session = await Session.open(stack.tls_port, client_ssl_context(pki, "operator"))
        try:
            assert ints(await session.rr(wire.read_tag("Line1_Speed", 0))) == [0]
            device_session = struct.unpack_from("<I", stack.relayed()[0], 4)[0]
            assert device_session != session.handle  # zonegate's own session with the device
            wrong = await session.exchange(wire.send_rr_data(wire.read_tag("Line1_Speed", 0), device_session))
            assert wrong.status == 0x64 and wrong.cip == b""
            nop = wire.header(0x0000, b"nothing", session.handle)
            await session.send(nop)  # never answered: the next reply is the read's
            assert ints(await session.rr(wire.read_tag("Line1_Speed", 1), context=b"after-no")) == [0]
            unknown = await session.exchange(wire.header(0x0072, b"", session.handle))  # IndicateStatus
            assert unknown.command == 0x72 and unknown.status == 0x0001
        finally:
            await session.close()
        assert len(stack.relayed()) == 2
        assert stack.sample("zonegate_framing_errors_total", conduit="l3-enip", reason="invalid_session") == 1

    run(stack.run(body))
    (record,) = stack.audit_records()
    assert record["reason"] == "command_not_allowed" and record["encap_status"] == 1


def test_list_identity_comes_from_the_device_once_with_the_box_address(tmp_path: Path, pki: DevPki,
                                                                       relay: str) -> None:
    stack = Stack(tmp_path, pki, relay=relay)

    async def body(stack: Stack) -> None:
        first, second = [await Session.open(stack.tls_port, client_ssl_context(pki, "operator"), register=False)
                         for _ in range(2)]
        try:
            replies = [await s.exchange(wire.header(0x63, b"", 0)) for s in (first, second)]
            services = await first.exchange(wire.header(0x04, b"", 0))
        finally:
            await first.close()
            await second.close()
        for reply in replies:
            data = reply.frame[24:]
            count, kind, length = struct.unpack_from("<HHH", data)
            assert reply.status == 0 and count == 1 and kind == 0x0C
            family, port, address = struct.unpack_from(">HH4s", data, 8)
            assert (family, port, address) == (2, stack.tls_port, bytes((127, 0, 0, 1)))
            assert b"LOGIX" in data  # the product name the device reported
        assert replies[0].frame[24:] == replies[1].frame[24:]
        assert services.status == 0 and b"Communications" in services.frame
        assert stack.sim.commands().count(0x63) == 1  # asked once, then from the cache

    run(stack.run(body))


def test_connected_messaging_through_forward_open(tmp_path: Path, pki: DevPki, relay: str) -> None:
    stack = Stack(tmp_path, pki, relay=relay)

    async def body(stack: Stack) -> None:
        session = await Session.open(stack.tls_port, client_ssl_context(pki, "operator"))
        try:
            opened = await session.rr(wire.forward_open(serial=0x77))
            assert opened.service == 0xD4 and opened.general_status == 0, opened.cip.hex()
            o_t, t_o = struct.unpack_from("<II", opened.data)
            read = await session.exchange(wire.send_unit_data(wire.read_tag("Line1_Speed", 0), session.handle, o_t, 1))
            assert read.command == 0x70 and ints(read) == [0]
            refused = await session.exchange(wire.send_unit_data(wire.write_tag("Secret", 0), session.handle, o_t, 2))
            assert refused.general_status == 0x0F
            assert struct.unpack_from("<I", refused.frame, 24 + 6 + 2 + 4)[0] == t_o  # on the T->O id
            stranger = await session.exchange(wire.send_unit_data(wire.read_tag("Line1_Speed", 0), session.handle,
                                                                  o_t ^ 0x5A5A, 3))
            assert stranger.general_status == 0x01  # a connection this session never opened
        finally:
            await session.close()
        assert not stack.sim.saw(b"Secret")
        assert sum(1 for m in stack.relayed() if m[0] == 0x70) == 1

    run(stack.run(body))


# -- zone side, real client libraries -----------------------------------------------------------------------


def test_cpppo_client_through_the_zone_listener(tmp_path: Path, pki: DevPki, relay: str) -> None:
    stack = Stack(tmp_path, pki, relay=relay)

    async def body(stack: Stack) -> None:
        def client(*operations: str, multiple: bool = False) -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                [sys.executable, "-m", "cpppo.server.enip.client", "-p", "-a", f"127.0.0.1:{stack.plain_port}",
                 *(["-m"] if multiple else []), *operations], capture_output=True, text=True, timeout=30)

        allowed = await asyncio.to_thread(client, "Line1_Speed[3]=(INT)42", "Line1_Speed[0-4]")
        assert allowed.returncode == 0, allowed.stdout + allowed.stderr
        assert "[0, 0, 0, 42, 0]" in allowed.stdout
        refused = await asyncio.to_thread(client, "Line1_Speed[0]", "Secret[0]=(INT)9", multiple=True)
        assert refused.returncode != 0  # cpppo reports the refusal of its Multiple Service Packet
        assert not stack.sim.saw(b"Secret")
        assert await device_values(stack.sim, "Secret", 2) == [0, 0]

    run(stack.run(body))
    denied = [r for r in stack.audit_records() if r["verdict"] == "deny"]
    assert [r["reason"] for r in denied] == ["target_not_allowed"] and denied[0]["principal"]["name"] == "line-hmi"


def test_pylogix_through_the_zone_listener(tmp_path: Path, pki: DevPki, relay: str) -> None:
    stack = Stack(tmp_path, pki, relay=relay)

    async def body(stack: Stack) -> None:
        def client() -> list[Any]:
            from pylogix import PLC

            with PLC() as plc:
                plc.IPAddress = "127.0.0.1"
                plc.Port = stack.plain_port
                plc.SocketTimeout = 10
                return [plc.Write("Line1_Speed[5]", 77), plc.Read("Line1_Speed[5]"), plc.Write("Secret[1]", 3),
                        plc.Read("Secret[0]")]

        wrote, read, secret_write, secret_read = await asyncio.to_thread(client)
        assert wrote.Status == "Success" and read.Status == "Success" and read.Value == 77
        assert secret_write.Status == "Privilege violation" and secret_read.Status == "Privilege violation"
        assert not stack.sim.saw(b"Secret")
        assert await device_values(stack.sim, "Secret", 2) == [0, 0]

    run(stack.run(body))


def test_pycomm3_generic_messages_through_the_zone_listener(tmp_path: Path, pki: DevPki, relay: str) -> None:
    stack = Stack(tmp_path, pki, relay=relay)

    async def body(stack: Stack) -> None:
        def client() -> list[Any]:
            from pycomm3 import CIPDriver, Services

            with CIPDriver(f"127.0.0.1:{stack.plain_port}/1/0") as plc:
                return [
                    plc.generic_message(service=Services.get_attributes_all, class_code=0x01, instance=1,
                                        connected=False, unconnected_send=True, route_path=True),
                    # connected: a Forward Open through zonegate, then SendUnitData on that connection
                    plc.generic_message(service=Services.get_attribute_single, class_code=0x01, instance=1,
                                        attribute=7, connected=True),
                    plc.generic_message(service=Services.stop, class_code=0x01, instance=1, connected=False,
                                        unconnected_send=True, route_path=True),
                    plc.generic_message(service=Services.set_attribute_single, class_code=0x01, instance=1,
                                        attribute=7, request_data=b"\x01", connected=True),
                ]

        identity, name, stop, set_name = await asyncio.to_thread(client)
        assert identity.error is None and b"LOGIX" in identity.value, identity
        assert name.error is None and b"LOGIX" in name.value, name
        assert stop.error is not None and set_name.error is not None
        assert [m for m in stack.relayed() if b"\x07\x02\x20\x01\x24\x01" in m] == []  # no Stop arrived
        assert [m for m in stack.relayed() if b"\x10\x03\x20\x01\x24\x01\x30\x07" in m] == []
        assert any(m[0] == 0x70 for m in stack.relayed())  # the connected request did arrive

    run(stack.run(body))


def test_reload_decides_open_sessions_with_the_new_policy(tmp_path: Path, pki: DevPki, relay: str) -> None:
    stack = Stack(tmp_path, pki, relay=relay)

    async def body(stack: Stack) -> None:
        assert stack.supervisor is not None
        session = await Session.open(stack.tls_port, client_ssl_context(pki, "operator"))
        try:
            assert (await session.rr(wire.write_tag("Line1_Speed", 1, values=(5,)))).general_status == 0
            stack.policy.write_text(stack.policy.read_text().replace(
                'tags: ["Line1_Speed[0..9]"]', 'tags: ["Line1_Speed[0..9]"]\n        rate: 1/h'))
            assert stack.supervisor.reload()
            assert (await session.rr(wire.write_tag("Line1_Speed", 1, values=(6,)))).general_status == 0
            limited = await session.rr(wire.write_tag("Line1_Speed", 1, values=(7,)))
            assert limited.general_status == 0x02  # the new entry's bucket is spent: resource unavailable
            # a policy that does not load keeps the one in force
            stack.policy.write_text("version: 1\nrules: [")
            assert not stack.supervisor.reload()
            assert ints(await session.rr(wire.read_tag("Line1_Speed", 1))) == [6]
        finally:
            await session.close()

    run(stack.run(body))
    assert [r["reason"] for r in stack.audit_records() if r["verdict"] == "deny"] == ["rate_exceeded"]


def test_unregister_session_closes_both_sessions(tmp_path: Path, pki: DevPki, relay: str) -> None:
    """The client's UnRegisterSession ends its connection. On the Python relay the read went on the client's
    own device session, which ends with it; on the Rust relay on the device's shared session, which outlives
    the client and unregisters as zonegate stops."""
    stack = Stack(tmp_path, pki, relay=relay)

    async def body(stack: Stack) -> None:
        session = await Session.open(stack.tls_port, client_ssl_context(pki, "operator"))
        try:
            assert ints(await session.rr(wire.read_tag("Line1_Speed", 0))) == [0]
            await session.send(wire.header(0x66, b"", session.handle))
            with pytest.raises((asyncio.IncompleteReadError, ConnectionError)):
                await session.read()
        finally:
            await session.close()
        if relay == "rust":
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 10
        while 0x66 not in stack.sim.commands():  # zonegate ends its own session with the device too
            assert loop.time() < deadline, stack.sim.commands()
            await asyncio.sleep(0.02)

    run(stack.run(body))
    assert [m[0] for m in stack.sim.connections()[0]][:2] == [0x65, 0x6F]


def test_clients_share_a_device_session_until_one_opens_a_connection(tmp_path: Path, pki: DevPki,
                                                                       relay: str) -> None:
    """Rust relay: unconnected messages of clients holding no connection share one device session; a client's
    Forward Open takes it to a session of its own, with what it sends after. Python relay: every client has
    its own session from its first message on."""
    stack = Stack(tmp_path, pki, relay=relay)

    async def body(stack: Stack) -> None:
        first, second = [await Session.open(stack.tls_port, client_ssl_context(pki, "operator")) for _ in range(2)]
        try:
            for n, session in enumerate((first, second, first)):
                reply = await session.rr(wire.read_tag("Line1_Speed", 0), context=b"read-%03d" % n)
                assert reply.context == b"read-%03d" % n and ints(reply) == [0]
            opened = await second.rr(wire.forward_open(serial=0x42))
            assert opened.general_status == 0, opened.cip.hex()
            o_t = struct.unpack_from("<I", opened.data)[0]
            read = await second.exchange(wire.send_unit_data(wire.read_tag("Line1_Speed", 0), second.handle, o_t, 1))
            assert ints(read) == [0]
            assert ints(await second.rr(wire.read_tag("Line1_Speed", 0))) == [0]
        finally:
            await first.close()
            await second.close()

    run(stack.run(body))
    # UnRegisterSession (0x66) as the sessions end races the simulator's own stop: left out.
    sessions = [[m[0] for m in connection if m[0] != 0x66] for connection in stack.sim.connections()]
    if relay == "rust":
        assert sessions == [[0x65, 0x6F, 0x6F, 0x6F], [0x65, 0x6F, 0x70, 0x6F]], sessions
    else:
        assert sessions == [[0x65, 0x6F, 0x6F], [0x65, 0x6F, 0x6F, 0x70, 0x6F]], sessions


class TlsWrapper:
    """A loopback port that carries each plain connection over TLS to zonegate, with one certificate:
    lets a client library without TLS (cpppo's) speak EtherNet/IP over TLS to the north listener."""

    def __init__(self, port: int, context: ssl.SSLContext) -> None:
        self.port = port
        self.context = context
        self.server: asyncio.Server | None = None
        self.pipes: set[asyncio.Task[None]] = set()

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._carry, "127.0.0.1", 0)
        return int(self.server.sockets[0].getsockname()[1])

    async def _carry(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.port, ssl=self.context,
                                                             server_hostname="127.0.0.1")

        async def pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
            try:
                while data := await source.read(65536):
                    sink.write(data)
                    await sink.drain()
            except (ConnectionError, ssl.SSLError):
                pass
            finally:
                sink.close()

        for task in (asyncio.create_task(pipe(reader, up_writer)), asyncio.create_task(pipe(up_reader, writer))):
            self.pipes.add(task)
            task.add_done_callback(self.pipes.discard)

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
        for task in list(self.pipes):
            task.cancel()


def test_cpppo_client_over_tls_as_operator(tmp_path: Path, pki: DevPki, relay: str) -> None:
    stack = Stack(tmp_path, pki, relay=relay)

    async def body(stack: Stack) -> None:
        wrapper = TlsWrapper(stack.tls_port, client_ssl_context(pki, "operator"))
        port = await wrapper.start()

        def client(*operations: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run([sys.executable, "-m", "cpppo.server.enip.client", "-p", "-a", f"127.0.0.1:{port}",
                                   *operations], capture_output=True, text=True, timeout=30)

        try:
            allowed = await asyncio.to_thread(client, "Line1_Speed[7]=(INT)-3", "Line1_Speed[6-7]")
            assert allowed.returncode == 0, allowed.stdout + allowed.stderr
            assert "[0, -3]" in allowed.stdout
            refused = await asyncio.to_thread(client, "Secret[1]=(INT)4")
            assert refused.returncode != 0
        finally:
            await wrapper.stop()
        assert not stack.sim.saw(b"Secret")

    run(stack.run(body))
    records = stack.audit_records()
    assert [(r["principal"]["role"], r["verdict"], r["function"]) for r in records] == [
        ("Operator", "allow", "write_tag"), ("Operator", "deny", "write_tag")]


def test_under_uvloop_as_zonegate_run_serves(tmp_path: Path, pki: DevPki, relay: str) -> None:
    """`zonegate run` uses uvloop, whose transports differ from asyncio's (TLS, early bytes, sockname)."""
    uvloop = pytest.importorskip("uvloop")
    stack = Stack(tmp_path, pki, relay=relay)

    async def body(stack: Stack) -> None:
        session = await Session.open(stack.tls_port, client_ssl_context(pki, "operator"))
        zone = await Session.open(stack.plain_port)
        try:
            assert (await session.rr(wire.write_tag("Line1_Speed", 4, values=(9,)))).general_status == 0
            assert (await session.rr(wire.write_tag("Secret", 0))).general_status == 0x0F
            opened = await session.rr(wire.forward_open(serial=0x99))
            o_t, _t_o = struct.unpack_from("<II", opened.data)
            read = await session.exchange(wire.send_unit_data(wire.read_tag("Line1_Speed", 4), session.handle, o_t, 1))
            assert ints(read) == [9]
            assert ints(await zone.rr(wire.unconnected_send(wire.read_tag("Line1_Speed", 4)))) == [9]
            identity = await zone.exchange(wire.header(0x63, b"", 0))
            assert struct.unpack_from(">H", identity.frame, 24 + 6 + 4)[0] == stack.plain_port
        finally:
            await session.close()
            await zone.close()
        assert not stack.sim.saw(b"Secret")

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(asyncio.wait_for(stack.run(body), TEST_TIMEOUT))
