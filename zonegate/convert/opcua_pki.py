"""OPC UA converter, certificates: application certificates as OPC UA wants them, and the trust list.

OPC UA application instance certificates are RSA (the secure channel encrypts with the peer's public
key), carry the application URI as a URI subject alternative name, and allow digital signature, non
repudiation, key and data encipherment. `issue_application` makes one from the development authority
(demo and tests; never a shipped key). `TrustList` checks a client's certificate at session creation:
issued by a trusted CA, inside its validity, not revoked by that CA's CRL.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from collections.abc import Iterable, Sequence
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from zonegate.controlplane.pki import Authority

DAY = dt.timedelta(days=1)


def issue_application(
    authority: Authority,
    common_name: str,
    application_uri: str,
    *,
    server: bool = False,
    hosts: Iterable[str] = ("127.0.0.1", "localhost"),
    not_after: dt.datetime | None = None,
) -> tuple[rsa.RSAPrivateKey, x509.Certificate]:
    """An RSA 2048 application instance certificate signed by `authority`."""
    now = dt.datetime.now(dt.timezone.utc)
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    subject = x509.Name(
        [x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Plant"), x509.NameAttribute(NameOID.COMMON_NAME, common_name)]
    )
    names: list[x509.GeneralName] = [x509.UniformResourceIdentifier(application_uri)]
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    ca_ski = authority.cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(authority.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - DAY)
        .not_valid_after(not_after or now + 365 * DAY)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=True, key_encipherment=True, data_encipherment=True,
                key_agreement=False, key_cert_sign=False, crl_sign=False, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
                                  if server else [ExtendedKeyUsageOID.CLIENT_AUTH]),
            critical=False,
        )
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False)
        .sign(authority.key, hashes.SHA256())
    )
    return key, cert


def issue_user(authority: Authority, user: str, *, not_after: dt.datetime | None = None
               ) -> tuple[rsa.RSAPrivateKey, x509.Certificate]:
    """An RSA 2048 X.509 user certificate for OPC UA user `user` (its subject's common name)."""
    now = dt.datetime.now(dt.timezone.utc)
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    subject = x509.Name(
        [x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Plant"), x509.NameAttribute(NameOID.COMMON_NAME, user)]
    )
    ca_ski = authority.cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(authority.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - DAY)
        .not_valid_after(not_after or now + 365 * DAY)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=True, key_encipherment=False, data_encipherment=False,
                key_agreement=False, key_cert_sign=False, crl_sign=False, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False)
        .sign(authority.key, hashes.SHA256())
    )
    return key, cert


def first_der_certificate(data: bytes) -> x509.Certificate:
    """The first certificate of a DER chain (OPC UA sends the sender's certificate, then its issuers)."""
    if len(data) < 4 or data[0] != 0x30:
        raise ValueError("not a DER certificate")
    first = data[1]
    if first < 0x80:
        end = 2 + first
    else:
        count = first & 0x7F
        if count == 0 or count > 4 or len(data) < 2 + count:
            raise ValueError("bad DER length")
        end = 2 + count + int.from_bytes(data[2 : 2 + count], "big")
    if end > len(data):
        raise ValueError("truncated DER certificate")
    return x509.load_der_x509_certificate(data[:end])


def _load_pem_or_der_certs(path: Path) -> list[x509.Certificate]:
    raw = path.read_bytes()
    if b"-----BEGIN" in raw:
        return x509.load_pem_x509_certificates(raw)
    return [x509.load_der_x509_certificate(raw)]


class TrustList:
    """Trusted CA certificates and their revocation lists."""

    def __init__(self, cas: Sequence[x509.Certificate], crls: Sequence[x509.CertificateRevocationList] = ()) -> None:
        if not cas:
            raise ValueError("a trust list needs at least one CA certificate")
        self.cas = list(cas)
        self.revoked: set[tuple[bytes, int]] = set()
        for crl in crls:
            issuer = next((ca for ca in self.cas if ca.subject == crl.issuer), None)
            if issuer is None or not crl.is_signature_valid(issuer.public_key()):  # type: ignore[arg-type]
                raise ValueError(f"CRL from {crl.issuer.rfc4514_string()} is not signed by a trusted CA")
            self.revoked.update((crl.issuer.public_bytes(), entry.serial_number) for entry in crl)

    @classmethod
    def load(cls, ca: Path, crl: Path | None = None) -> TrustList:
        crls: list[x509.CertificateRevocationList] = []
        if crl is not None:
            raw = crl.read_bytes()
            crls.append(x509.load_pem_x509_crl(raw) if b"-----BEGIN" in raw else x509.load_der_x509_crl(raw))
        return cls(_load_pem_or_der_certs(ca), crls)

    def check(self, cert: x509.Certificate, now: dt.datetime | None = None) -> str | None:
        """None when trusted; otherwise `untrusted`, `expired` or `revoked`."""
        moment = now or dt.datetime.now(dt.timezone.utc)
        if not cert.not_valid_before_utc <= moment <= cert.not_valid_after_utc:
            return "expired"
        issuer = next((ca for ca in self.cas if ca.subject == cert.issuer), None)
        if issuer is None:
            return "untrusted"
        try:
            cert.verify_directly_issued_by(issuer)
        except (ValueError, TypeError, InvalidSignature):
            return "untrusted"
        if (cert.issuer.public_bytes(), cert.serial_number) in self.revoked:
            return "revoked"
        return None
