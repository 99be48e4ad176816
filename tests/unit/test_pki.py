"""Development PKI: what `zonegate pki init` writes, and the key-file rules the TLS contexts enforce."""

from __future__ import annotations

import datetime as dt
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509

from zonegate.controlplane import pki as pki_module
from zonegate.controlplane.pki import ROLE_OID, encode_role, generate, load_certificate, seconds_until_expiry
from zonegate.controlplane.tls import TlsConfigError, check_key_file, client_context, server_context

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> pki_module.DevPki:
    return generate(tmp_path_factory.mktemp("pki"))


def test_every_key_is_mode_0600(pki: pki_module.DevPki) -> None:
    keys = sorted(pki.directory.glob("*.key"))
    assert len(keys) >= 12
    for key in keys:
        assert stat.S_IMODE(key.stat().st_mode) == 0o600, key


def test_roles_are_der_utf8_strings(pki: pki_module.DevPki) -> None:
    cert = load_certificate(pki.cert("operator"))
    value = cert.extensions.get_extension_for_oid(ROLE_OID).value
    assert isinstance(value, x509.UnrecognizedExtension)
    assert value.value == b"\x0c\x08Operator"


def test_two_role_certificate_really_has_two_role_extensions(pki: pki_module.DevPki) -> None:
    cert = load_certificate(pki.cert("client-tworoles"))
    with pytest.raises(x509.DuplicateExtension):
        _ = cert.extensions
    # and it is still a validly signed certificate from the CA
    ca = load_certificate(pki.ca)
    cert.verify_directly_issued_by(ca)


def test_validity_windows_and_revocation(pki: pki_module.DevPki) -> None:
    assert seconds_until_expiry(pki.cert("client-expired")) < 0
    assert load_certificate(pki.cert("client-notyet")).not_valid_before_utc > dt.datetime.now(dt.timezone.utc)
    assert seconds_until_expiry(pki.cert("operator")) > 365 * 86400
    crl = x509.load_pem_x509_crl(pki.crl.read_bytes())
    revoked = load_certificate(pki.cert("client-revoked")).serial_number
    assert crl.get_revoked_certificate_by_serial_number(revoked) is not None
    assert crl.get_revoked_certificate_by_serial_number(load_certificate(pki.cert("operator")).serial_number) is None


def test_long_role_uses_der_long_form_length() -> None:
    assert encode_role("x" * 200)[:3] == b"\x0c\x81\xc8"
    assert encode_role("x" * 300)[:4] == b"\x0c\x82\x01\x2c"


def test_key_readable_by_others_is_refused(pki: pki_module.DevPki, tmp_path: Path) -> None:
    loose = tmp_path / "loose.key"
    loose.write_bytes(pki.key("server").read_bytes())
    os.chmod(loose, 0o644)
    with pytest.raises(TlsConfigError, match="mode is 0644"):
        check_key_file(loose)
    with pytest.raises(TlsConfigError, match="0600"):
        server_context(pki.cert("server"), loose, pki.ca)
    with pytest.raises(TlsConfigError, match="cannot read"):
        check_key_file(tmp_path / "missing.key")


def test_contexts_are_tls12_plus_with_mutual_auth_and_crl(pki: pki_module.DevPki) -> None:
    import ssl

    context = server_context(pki.cert("server"), pki.key("server"), pki.ca, pki.crl)
    assert context.minimum_version == ssl.TLSVersion.TLSv1_2
    assert context.verify_mode == ssl.CERT_REQUIRED
    assert context.verify_flags & ssl.VERIFY_CRL_CHECK_LEAF
    assert context.options & ssl.OP_NO_COMPRESSION and context.options & ssl.OP_NO_RENEGOTIATION
    tls12 = {c["name"] for c in context.get_ciphers() if c["protocol"] == "TLSv1.2"}
    assert tls12 == {"ECDHE-ECDSA-AES128-GCM-SHA256", "ECDHE-RSA-AES128-GCM-SHA256"}
    client = client_context(pki.cert("gateway-client"), pki.key("gateway-client"), pki.ca)
    assert client.check_hostname and client.verify_mode == ssl.CERT_REQUIRED


def test_rsa_pki_builds_working_contexts(tmp_path: Path) -> None:
    rsa = generate(tmp_path, roles={"operator": "Operator"}, key_kind="rsa")
    server_context(rsa.cert("server"), rsa.key("server"), rsa.ca, rsa.crl)
    assert load_certificate(rsa.cert("operator")).public_key().key_size == 2048  # type: ignore[union-attr]


def test_pki_init_command(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "zonegate.cli", "pki", "init", str(tmp_path / "dev"), "--role", "scada=Operator"],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "scada.crt  role Operator" in result.stdout
    role = load_certificate(tmp_path / "dev" / "scada.crt").extensions.get_extension_for_oid(ROLE_OID).value
    assert role.value == encode_role("Operator")  # type: ignore[attr-defined]
    assert stat.S_IMODE((tmp_path / "dev" / "scada.key").stat().st_mode) == 0o600
    assert "opcua-server.crt" in result.stdout
    assert stat.S_IMODE((tmp_path / "dev" / "opcua-server.key").stat().st_mode) == 0o600


def test_badsig_certificate_names_the_ca_but_does_not_verify(pki: pki_module.DevPki) -> None:
    from cryptography.exceptions import InvalidSignature

    forged = load_certificate(pki.cert("client-badsig"))
    ca = load_certificate(pki.ca)
    assert forged.issuer == ca.subject
    with pytest.raises(InvalidSignature):
        forged.verify_directly_issued_by(ca)


def test_opcua_certificates_carry_the_application_uri_and_opcua_key_usages(pki: pki_module.DevPki) -> None:
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import NameOID

    from zonegate.convert.opcua_pki import TrustList

    server = load_certificate(pki.cert("opcua-server"))
    san = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == ["urn:zonegate:opcua"]  # policies/demo.yaml's
    assert isinstance(server.public_key(), rsa.RSAPublicKey) and server.public_key().key_size == 2048
    usage = server.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.digital_signature and usage.content_commitment and usage.key_encipherment and usage.data_encipherment
    client = load_certificate(pki.cert("opcua-client"))
    assert client.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
        x509.UniformResourceIdentifier) == [pki_module.OPCUA_CLIENT_URI]
    trust = TrustList.load(pki.ca, pki.crl)
    assert trust.check(client) is None and trust.check(server) is None
    assert trust.check(load_certificate(pki.cert("opcua-rogue-client"))) == "untrusted"
    for user in ("operator", "historian"):
        cert = load_certificate(pki.cert(f"opcua-user-{user}"))
        assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == user
        assert trust.check(cert) is None
        assert stat.S_IMODE(pki.key(f"opcua-user-{user}").stat().st_mode) == 0o600
    assert stat.S_IMODE(pki.key("opcua-server").stat().st_mode) == 0o600


def test_opcua_server_certificate_follows_the_application_uri(tmp_path: Path) -> None:
    pki = generate(tmp_path / "dev", opcua_uri="urn:plant:gw-7", opcua_users=())
    san = load_certificate(pki.cert("opcua-server")).extensions.get_extension_for_class(x509.SubjectAlternativeName)
    assert san.value.get_values_for_type(x509.UniformResourceIdentifier) == ["urn:plant:gw-7"]
    assert not list((tmp_path / "dev").glob("opcua-user-*"))
