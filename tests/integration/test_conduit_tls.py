"""Modbus/TCP Security listener: every certificate and protocol the specification refuses is refused.

Clients are Python's ssl and `openssl s_client`, over real loopback sockets, against a conduit whose only
device is a simulated PLC; each refusal is checked on the wire and in the handshake-failure metric.
"""

from __future__ import annotations

import asyncio
import shutil
import ssl
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import require
from tests.integration.test_conduit import Stack, run
from zonegate.controlplane.pki import DevPki, generate
from zonegate.demo.plc import SimulatedPlc
from zonegate.demo.stack import client_ssl_context

READ_HOLDING_0 = bytes.fromhex("0007 0000 0006 01 03 0000 0001")  # tid 7, unit 1, fc 3, start 0, qty 1


async def exchange(port: int, context: ssl.SSLContext, adu: bytes = READ_HOLDING_0) -> bytes | BaseException:
    """Send one ADU and return the reply ADU, or the exception the connection ended with."""
    writer = None
    try:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection("127.0.0.1", port, ssl=context, server_hostname="127.0.0.1"), 5
        )
        writer.write(adu)
        await writer.drain()
        header = await asyncio.wait_for(reader.readexactly(6), 5)
        return header + await asyncio.wait_for(reader.readexactly(int.from_bytes(header[4:6], "big")), 5)
    except (ssl.SSLError, ConnectionError, asyncio.IncompleteReadError, OSError) as exc:
        return exc
    finally:
        if writer is not None:
            writer.close()


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> DevPki:
    return generate(tmp_path_factory.mktemp("pki"))


def failures(conduit: Any, reason: str) -> float:
    value = conduit.metrics.registry.get_sample_value(
        "zonegate_tls_handshake_failures_total", {"conduit": "l3-modbus-security", "reason": reason}
    )
    return value or 0.0


async def until(predicate: Any, timeout: float = 5.0) -> None:
    """Wait (bounded) until `predicate()` holds; the server notes a failure just after the client sees it."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.01)


@pytest.mark.parametrize(
    ("certificate", "maximum", "reason"),
    [
        (None, ssl.TLSVersion.TLSv1_2, "no_client_certificate"),
        (None, ssl.TLSVersion.TLSv1_3, "no_client_certificate"),
        ("client-rogue", None, "unknown_ca"),
        ("client-expired", None, "certificate_expired"),
        ("client-notyet", None, "certificate_not_yet_valid"),
        ("client-revoked", None, "certificate_revoked"),
        ("client-badsig", None, "bad_certificate"),
    ],
)
def test_refused_certificates(
    tmp_path: Path, pki: DevPki, relay: str, certificate: str | None, maximum: ssl.TLSVersion | None, reason: str
) -> None:
    stack = Stack(tmp_path, pki, relay=relay)

    async def body(plc: SimulatedPlc, conduit: Any) -> None:
        context = client_ssl_context(pki, certificate, maximum=maximum)
        result = await exchange(stack.listen_port, context)
        # TLS 1.2 fails in the handshake; under TLS 1.3 the client may finish its side first and only
        # learn of the refusal (an alert, then EOF) when it reads. Either way no reply ever comes.
        assert isinstance(result, BaseException), result
        await until(lambda: failures(conduit, reason) == 1)
        assert plc.requests_seen == 0

    run(stack.run(body))


@pytest.mark.parametrize("certificate", ["client-norole", "client-tworoles", "client-badrole"])
def test_certificates_without_a_usable_role_get_exception_01(
    tmp_path: Path, pki: DevPki, relay: str, certificate: str
) -> None:
    stack = Stack(tmp_path, pki, relay=relay)

    async def body(plc: SimulatedPlc, conduit: Any) -> None:
        reply = await exchange(stack.listen_port, client_ssl_context(pki, certificate))
        # client-norole maps to nothing here (the policy's auditor subject is norole-1 only in
        # test_subject_principal); every request answers exception 01 and never reaches the PLC.
        assert reply == bytes.fromhex("0007 0000 0003 01 83 01"), reply
        assert plc.requests_seen == 0

    stack.policy.write_text(stack.policy.read_text().replace('auditor: {tls_subject: "CN=norole-1,O=Plant"}',
                                                             'auditor: {tls_subject: "CN=nobody,O=Plant"}'))
    run(stack.run(body))
    (record,) = stack.audit_records()
    assert record["reason"] == "unknown_principal" and record["principal"]["name"] is None


def test_subject_principal_without_role(tmp_path: Path, pki: DevPki, relay: str) -> None:
    """A certificate without a role still gets what the policy grants its subject (here: nothing but rules)."""
    stack = Stack(tmp_path, pki, relay=relay)

    async def body(plc: SimulatedPlc, conduit: Any) -> None:
        reply = await exchange(stack.listen_port, client_ssl_context(pki, "client-norole"))
        assert reply == bytes.fromhex("0007 0000 0003 01 83 01"), reply

    run(stack.run(body))
    (record,) = stack.audit_records()
    assert record["principal"]["name"] == "auditor" and record["reason"] == "no_matching_rule"


def test_weak_suite_refused(tmp_path: Path, pki: DevPki, relay: str) -> None:
    stack = Stack(tmp_path, pki, relay=relay)

    async def body(plc: SimulatedPlc, conduit: Any) -> None:
        for cipher in ("ECDHE-ECDSA-AES128-SHA", "ECDHE-ECDSA-AES256-SHA384", "ECDHE-ECDSA-AES256-GCM-SHA384"):
            context = client_ssl_context(pki, "operator", maximum=ssl.TLSVersion.TLSv1_2, ciphers=cipher)
            assert isinstance(await exchange(stack.listen_port, context), BaseException)
        await until(lambda: failures(conduit, "no_shared_cipher") == 3)

    run(stack.run(body))


def _s_client(port: int, pki: DevPki, *options: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    openssl = shutil.which("openssl")
    require(openssl, "openssl is not installed")
    assert openssl is not None
    return subprocess.run(
        [openssl, "s_client", "-connect", f"127.0.0.1:{port}", "-CAfile", str(pki.ca), *options],
        input=stdin, capture_output=True, text=True, timeout=20,
    )


def test_openssl_s_client_refusals(tmp_path: Path, pki: DevPki, relay: str) -> None:
    stack = Stack(tmp_path, pki, relay=relay)

    async def body(plc: SimulatedPlc, conduit: Any) -> None:
        port = stack.listen_port
        old = await asyncio.to_thread(
            _s_client, port, pki, "-tls1_1", "-cipher", "DEFAULT:@SECLEVEL=0",
            "-cert", str(pki.cert("operator")), "-key", str(pki.key("operator")),
        )
        assert old.returncode != 0
        await until(lambda: failures(conduit, "protocol_version") == 1)
        no_cert = await asyncio.to_thread(_s_client, port, pki, "-tls1_2")
        assert no_cert.returncode != 0
        await until(lambda: failures(conduit, "no_client_certificate") == 1)
        cbc = await asyncio.to_thread(
            _s_client, port, pki, "-tls1_2", "-cipher", "ECDHE-ECDSA-AES128-SHA256",
            "-cert", str(pki.cert("operator")), "-key", str(pki.key("operator")),
        )
        assert cbc.returncode != 0
        await until(lambda: failures(conduit, "no_shared_cipher") == 1)
        good = await asyncio.to_thread(
            _s_client, port, pki, "-tls1_2",
            "-cert", str(pki.cert("operator")), "-key", str(pki.key("operator")),
        )
        assert "ECDHE-ECDSA-AES128-GCM-SHA256" in good.stdout
        assert "Compression: NONE" in good.stdout
        # "R" asks s_client to renegotiate (TLS 1.2); zonegate refuses with a no_renegotiation alert
        renegotiate = await asyncio.to_thread(
            _s_client, port, pki, "-tls1_2", "-cert", str(pki.cert("operator")), "-key", str(pki.key("operator")),
            stdin="R\n",
        )
        assert "RENEGOTIATING" in renegotiate.stdout + renegotiate.stderr
        assert "no renegotiation" in renegotiate.stdout + renegotiate.stderr
        assert plc.requests_seen == 0

    run(stack.run(body))


def test_tls13_and_tls12_allowed_suites_work(tmp_path: Path, pki: DevPki, relay: str) -> None:
    stack = Stack(tmp_path, pki, relay=relay)

    async def body(plc: SimulatedPlc, conduit: Any) -> None:
        for maximum in (ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3):
            reply = await exchange(stack.listen_port, client_ssl_context(pki, "operator", maximum=maximum))
            assert reply == bytes.fromhex("0007 0000 0005 01 03 02 0141"), reply  # register 0 = 321
        assert plc.seen[3] == 2

    run(stack.run(body))


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1:DeprecationWarning")  # the point of the test
def test_python_tls11_client_refused(tmp_path: Path, pki: DevPki, relay: str) -> None:
    stack = Stack(tmp_path, pki, relay=relay)

    async def body(plc: SimulatedPlc, conduit: Any) -> None:
        context = client_ssl_context(pki, "operator", minimum=ssl.TLSVersion.TLSv1, maximum=ssl.TLSVersion.TLSv1_1,
                                     ciphers="DEFAULT:@SECLEVEL=0")
        assert isinstance(await exchange(stack.listen_port, context), BaseException)
        await until(lambda: failures(conduit, "protocol_version") == 1)
        assert plc.requests_seen == 0

    run(stack.run(body))
