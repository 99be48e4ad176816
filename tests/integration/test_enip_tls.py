"""EtherNet/IP over TLS (the 2221 listener): every certificate the Modbus/TCP Security listener refuses
is refused here too, before any EtherNet/IP message is read, and nothing reaches the device. Each runs
against both relays (Python and Rust: the `relay` fixture)."""

from __future__ import annotations

import asyncio
import ssl
from pathlib import Path

import pytest

from tests.integration import enip_sim as wire
from tests.integration.test_enip_conduit import Session, Stack, ints, run
from zonegate.controlplane.pki import DevPki, generate
from zonegate.demo.stack import client_ssl_context


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> DevPki:
    return generate(tmp_path_factory.mktemp("pki"))


async def attempt(port: int, context: ssl.SSLContext) -> object:
    """Register a session and read a tag; the reply, or the exception the connection ended with."""
    session = None
    try:
        session = await Session.open(port, context, register=False)
        reply = await session.exchange(wire.register_session())
        return reply
    except (ssl.SSLError, ConnectionError, asyncio.IncompleteReadError, OSError) as exc:
        return exc
    finally:
        if session is not None:
            await session.close()


async def until(predicate: object, timeout: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():  # type: ignore[operator]
        if loop.time() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.01)


@pytest.mark.parametrize(
    ("certificate", "maximum", "reason"),
    [
        (None, ssl.TLSVersion.TLSv1_2, "no_client_certificate"),
        (None, ssl.TLSVersion.TLSv1_3, "no_client_certificate"),
        ("client-rogue", None, "unknown_ca"),
        ("client-expired", None, "certificate_expired"),
        ("client-revoked", None, "certificate_revoked"),
    ],
)
def test_refused_certificates(tmp_path: Path, pki: DevPki, relay: str, certificate: str | None,
                              maximum: ssl.TLSVersion | None, reason: str) -> None:
    stack = Stack(tmp_path, pki, relay=relay)

    async def body(stack: Stack) -> None:
        result = await attempt(stack.tls_port, client_ssl_context(pki, certificate, maximum=maximum))
        assert isinstance(result, BaseException), result
        await until(lambda: stack.sample("zonegate_tls_handshake_failures_total", conduit="l3-enip",
                                         reason=reason) == 1)
        assert stack.sim.messages() == []

    run(stack.run(body))
    assert stack.audit_records() == []


def test_plain_enip_on_the_tls_port_is_refused(tmp_path: Path, pki: DevPki, relay: str) -> None:
    stack = Stack(tmp_path, pki, relay=relay)

    async def body(stack: Stack) -> None:
        session = await Session.open(stack.tls_port, None, register=False)
        try:
            await session.send(wire.register_session())
            with pytest.raises((asyncio.IncompleteReadError, ConnectionError)):
                await session.read()
        finally:
            await session.close()
        await until(lambda: stack.sample("zonegate_tls_handshake_failures_total", conduit="l3-enip",
                                         reason="other") + stack.sample(
            "zonegate_tls_handshake_failures_total", conduit="l3-enip", reason="protocol_version") == 1)
        assert stack.sim.messages() == []

    run(stack.run(body))


def test_a_good_certificate_is_served_while_bad_ones_are_refused(tmp_path: Path, pki: DevPki, relay: str) -> None:
    stack = Stack(tmp_path, pki, relay=relay)

    async def body(stack: Stack) -> None:
        good = await Session.open(stack.tls_port, client_ssl_context(pki, "operator"))
        try:
            refused = await attempt(stack.tls_port, client_ssl_context(pki, "client-rogue"))
            assert isinstance(refused, BaseException)
            assert ints(await good.rr(wire.read_tag("Line1_Speed", 0))) == [0]
        finally:
            await good.close()

    run(stack.run(body))
