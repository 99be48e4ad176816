"""OPC UA converter, certificates: application certificates as OPC UA clients expect them, and the
trust list that checks client certificates (issuer, validity, revocation)."""

from __future__ import annotations

import datetime as dt

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from zonegate.controlplane.pki import Authority
from zonegate.convert.opcua_pki import TrustList, first_der_certificate, issue_application


@pytest.fixture(scope="module")
def ca() -> Authority:
    return Authority.create("opcua-unit-ca", key_kind="rsa")


def test_application_certificates_carry_the_uri_and_opcua_key_usage(ca: Authority) -> None:
    _key, cert = issue_application(ca, "zonegate", "urn:zonegate:opcua", server=True)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == ["urn:zonegate:opcua"]
    usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.digital_signature and usage.content_commitment and usage.key_encipherment and usage.data_encipherment


def test_trust_list_checks_issuer_validity_and_revocation(ca: Authority) -> None:
    other = Authority.create("other-ca", key_kind="rsa")
    _, good = issue_application(ca, "historian", "urn:plant:historian")
    _, revoked = issue_application(ca, "old", "urn:plant:old")
    _, stranger = issue_application(other, "stranger", "urn:plant:stranger")
    _, expired = issue_application(ca, "expired", "urn:plant:expired",
                                   not_after=dt.datetime.now(dt.timezone.utc) - dt.timedelta(hours=1))
    authority = Authority(ca.name, ca.key, ca.cert, revoked=[revoked.serial_number])
    trust = TrustList([ca.cert], [authority.crl()])
    assert trust.check(good) is None
    assert trust.check(revoked) == "revoked"
    assert trust.check(stranger) == "untrusted"
    assert trust.check(expired) == "expired"


def test_a_crl_not_signed_by_a_trusted_ca_is_refused(ca: Authority) -> None:
    other = Authority.create("other-ca-2", key_kind="rsa")
    with pytest.raises(ValueError, match="not signed by a trusted CA"):
        TrustList([ca.cert], [other.crl()])


def test_first_certificate_of_a_der_chain(ca: Authority) -> None:
    _, cert = issue_application(ca, "chain", "urn:plant:chain")
    leaf = cert.public_bytes(serialization.Encoding.DER)
    chain = leaf + ca.cert.public_bytes(serialization.Encoding.DER)
    assert first_der_certificate(chain) == cert
    for bad in (b"", b"\x02\x01\x00", leaf[:-10], b"\x30\x85\x00\x00\x00\x00\x01"):
        with pytest.raises(ValueError):
            first_der_certificate(bad)
