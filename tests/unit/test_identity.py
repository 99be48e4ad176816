"""Role extension parsing and principal resolution: exactly one DER UTF8String, or no role at all."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives import serialization

from zonegate.controlplane.pki import Authority, DevPki, encode_role, generate, load_certificate
from zonegate.dataplane.identity import Identity, decode_role, resolve_tls, role_and_subject, tls_identity


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> DevPki:
    return generate(tmp_path_factory.mktemp("pki"))


def der(pki: DevPki, name: str) -> bytes:
    return load_certificate(pki.cert(name)).public_bytes(serialization.Encoding.DER)


@pytest.mark.parametrize(
    ("value", "role"),
    [
        (b"\x0c\x08Operator", "Operator"),  # UTF8String, short length
        (encode_role("Ingénieur"), "Ingénieur"),  # non-ASCII UTF-8
        (encode_role("r" * 200), "r" * 200),  # long-form length 81 c8
        (b"\x13\x08Operator", None),  # PrintableString: wrong type
        (b"\x0c\x09Operator", None),  # length says 9, 8 follow
        (b"\x0c\x07Operator", None),  # trailing byte
        (b"\x0c\x81\x08Operator", None),  # long form where short is required (not DER)
        (b"\x0c\x02\xff\xfe", None),  # not UTF-8
        (b"\x0c\x00", None),  # empty role
        (b"\x0c", None),  # truncated header
        (b"\x0c\x84\x00\x00\x00\x08Operator", None),  # absurd length octets
        (b"", None),
    ],
)
def test_decode_role(value: bytes, role: str | None) -> None:
    assert decode_role(value) == role


def test_certificates_from_the_dev_pki(pki: DevPki) -> None:
    assert role_and_subject(der(pki, "operator")) == ("Operator", "CN=operator-1,O=Plant")
    assert role_and_subject(der(pki, "client-norole")) == (None, "CN=norole-1,O=Plant")
    assert role_and_subject(der(pki, "client-tworoles")) == (None, "CN=tworoles-1,O=Plant")
    assert role_and_subject(der(pki, "client-badrole")) == (None, "CN=badrole-1,O=Plant")


def test_tls_identity_survives_garbage_and_absence() -> None:
    assert tls_identity(None, "10.0.0.1:5") == Identity(peer="10.0.0.1:5")
    assert tls_identity(b"\x30\x03\x02\x01\x00", "10.0.0.1:5") == Identity(peer="10.0.0.1:5")


def test_resolution_role_first_then_subject(pki: DevPki) -> None:
    def lookup(role: str | None, subject: str) -> str | None:
        if role == "Operator":
            return "operator"
        return "auditor" if subject == "CN=norole-1,O=Plant" else None

    assert resolve_tls(tls_identity(der(pki, "operator"), "p"), lookup) == "operator"
    assert resolve_tls(tls_identity(der(pki, "client-norole"), "p"), lookup) == "auditor"
    assert resolve_tls(tls_identity(der(pki, "client-tworoles"), "p"), lookup) is None
    assert resolve_tls(Identity(peer="p"), lookup) is None


def test_role_issued_by_a_fresh_authority() -> None:
    ca = Authority.create("test CA")
    _, cert = ca.issue("x", role_values=[encode_role("Viewer")])
    assert role_and_subject(cert.public_bytes(serialization.Encoding.DER)) == ("Viewer", "CN=x,O=Plant")
