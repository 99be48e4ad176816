"""Control plane, PKI: the development certificate authority and certificate facts the conduit watches.

`zonegate pki init DIR` and the tests build a throwaway PKI here: a CA, a server certificate for the
Modbus/TCP Security listener, client certificates carrying the Modbus role extension, and the
deliberately broken certificates the refusal tests need (no role, two roles, a badly encoded role,
expired, not yet valid, revoked, signed by another CA). Keys are written with mode 0600 and never leave
the directory they were made in: a development PKI is generated, never shipped.

The role extension (OID 1.3.6.1.4.1.50316.802.1) holds one DER UTF8String:

```
 0     1        2 ...
 +-----+--------+----------------+
 | 0C  | length | role (UTF-8)   |     short-form length up to 127, long form 81 xx / 82 xx xx
 +-----+--------+----------------+
```
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

ROLE_OID: Final = x509.ObjectIdentifier("1.3.6.1.4.1.50316.802.1")
KEY_MODE: Final = 0o600
DAY: Final = dt.timedelta(days=1)

# The role of each ordinary client certificate `zonegate pki init` makes, by file stem.
DEFAULT_CLIENT_ROLES: Final[Mapping[str, str]] = {
    "operator": "Operator",
    "engineer": "Engineer",
    "viewer": "Viewer",
    "gateway-client": "Gateway",
}

PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey


def encode_role(role: str) -> bytes:
    """DER UTF8String holding `role`: the value of the role extension."""
    body = role.encode("utf-8")
    return b"\x0c" + _der_length(len(body)) + body


def _der_length(n: int) -> bytes:
    if n < 0x80:
        return bytes((n,))
    octets = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes((0x80 | len(octets),)) + octets


def _oid_der(oid: x509.ObjectIdentifier) -> bytes:
    arcs = [int(a) for a in oid.dotted_string.split(".")]
    body = bytearray((40 * arcs[0] + arcs[1],))
    for arc in arcs[2:]:
        chunk = [arc & 0x7F]
        arc >>= 7
        while arc:
            chunk.append(0x80 | (arc & 0x7F))
            arc >>= 7
        body.extend(reversed(chunk))
    return b"\x06" + _der_length(len(body)) + bytes(body)


def _der_children(der: bytes) -> list[bytes]:
    """The encoded elements inside the outer SEQUENCE of `der` (definite lengths only)."""
    offset = 1
    offset += _length_octets(der, offset)[1]
    children = []
    while offset < len(der):
        length, size = _length_octets(der, offset + 1)
        end = offset + 1 + size + length
        children.append(der[offset:end])
        offset = end
    return children


def _length_octets(der: bytes, offset: int) -> tuple[int, int]:
    """(content length, size of the length field) of the length field at `offset`."""
    first = der[offset]
    if first < 0x80:
        return first, 1
    n = first & 0x7F
    return int.from_bytes(der[offset + 1 : offset + 1 + n], "big"), 1 + n


def _corrupt_signature(cert: x509.Certificate) -> x509.Certificate:
    """The same certificate with one bit of its signature flipped (still well-formed DER)."""
    der = bytearray(cert.public_bytes(serialization.Encoding.DER))
    der[-1] ^= 0x01  # the last byte of the signature BIT STRING (the end of ECDSA's s, or of RSA's value)
    return x509.load_der_x509_certificate(bytes(der))


def new_key(kind: str = "ec") -> PrivateKey:
    """A fresh private key: ECDSA P-256 (`ec`) or RSA 2048 (`rsa`)."""
    if kind == "rsa":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    if kind == "ec":
        return ec.generate_private_key(ec.SECP256R1())
    raise ValueError(f"key kind must be 'ec' or 'rsa', got {kind!r}")


def write_key(path: Path, key: PrivateKey) -> None:
    """Write a PEM private key created with mode 0600 (never readable by anyone else, not even briefly)."""
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, KEY_MODE)
    with os.fdopen(fd, "wb") as out:
        out.write(pem)


def write_certificate(path: Path, cert: x509.Certificate) -> None:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def load_certificate(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def seconds_until_expiry(path: Path, now: dt.datetime | None = None) -> float:
    """Seconds until the first certificate in a PEM file expires (negative once it has)."""
    cert = load_certificate(path)
    moment = now or dt.datetime.now(dt.timezone.utc)
    return (cert.not_valid_after_utc - moment).total_seconds()


@dataclass
class Authority:
    """A certificate authority: its key and certificate, and the serials it has revoked."""

    name: str
    key: PrivateKey
    cert: x509.Certificate
    revoked: list[int] = field(default_factory=list)

    @classmethod
    def create(cls, name: str, key_kind: str = "ec", now: dt.datetime | None = None) -> Authority:
        moment = now or dt.datetime.now(dt.timezone.utc)
        key = new_key(key_kind)
        subject = x509.Name(
            [x509.NameAttribute(NameOID.ORGANIZATION_NAME, "zonegate development"),
             x509.NameAttribute(NameOID.COMMON_NAME, name)]
        )
        ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
        cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(moment - DAY)
            .not_valid_after(moment + 3650 * DAY)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True, content_commitment=False, key_encipherment=False,
                    data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
                    encipher_only=False, decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(ski, critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False)
            .sign(key, hashes.SHA256())
        )
        return cls(name=name, key=key, cert=cert)

    def issue(
        self,
        common_name: str,
        *,
        server: bool = False,
        role_values: Iterable[bytes] = (),
        key_kind: str = "ec",
        not_before: dt.datetime | None = None,
        not_after: dt.datetime | None = None,
        hosts: Iterable[str] = ("127.0.0.1", "localhost"),
    ) -> tuple[PrivateKey, x509.Certificate]:
        """Issue a leaf certificate. `role_values` are raw extension values (one per role extension)."""
        now = dt.datetime.now(dt.timezone.utc)
        key = new_key(key_kind)
        subject = x509.Name(
            [x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Plant"),
             x509.NameAttribute(NameOID.COMMON_NAME, common_name)]
        )
        ca_ski = self.cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(not_before or now - DAY)
            .not_valid_after(not_after or now + 825 * DAY)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True, content_commitment=False, key_encipherment=key_kind == "rsa",
                    data_encipherment=False, key_agreement=False, key_cert_sign=False, crl_sign=False,
                    encipher_only=False, decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(
                x509.ExtendedKeyUsage(
                    [ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH]
                ),
                critical=False,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False)
        )
        if server:
            names: list[x509.GeneralName] = []
            for host in hosts:
                try:
                    names.append(x509.IPAddress(ipaddress.ip_address(host)))
                except ValueError:
                    names.append(x509.DNSName(host))
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        values = list(role_values)
        # The builder refuses a repeated extension, so extra role values go in under placeholder OIDs
        # (same encoded length) that are renamed to the role OID before the certificate is signed again.
        for i, value in enumerate(values):
            oid = ROLE_OID if i == 0 else x509.ObjectIdentifier(f"1.3.6.1.4.1.50316.802.{i + 1}")
            builder = builder.add_extension(x509.UnrecognizedExtension(oid, value), critical=False)
        cert = builder.sign(self.key, hashes.SHA256())
        if len(values) > 1:
            cert = self._resign_with_repeated_role(cert, len(values))
        return key, cert

    def _resign_with_repeated_role(self, cert: x509.Certificate, count: int) -> x509.Certificate:
        role_der = _oid_der(ROLE_OID)
        tbs = cert.tbs_certificate_bytes
        for i in range(1, count):
            placeholder = _oid_der(x509.ObjectIdentifier(f"1.3.6.1.4.1.50316.802.{i + 1}"))
            tbs = tbs.replace(placeholder, role_der)
        if isinstance(self.key, ec.EllipticCurvePrivateKey):
            signature = self.key.sign(tbs, ec.ECDSA(hashes.SHA256()))
        else:
            from cryptography.hazmat.primitives.asymmetric import padding

            signature = self.key.sign(tbs, padding.PKCS1v15(), hashes.SHA256())
        der = cert.public_bytes(serialization.Encoding.DER)
        body = _der_children(der)
        algorithm = body[1]
        bit_string = b"\x03" + _der_length(len(signature) + 1) + b"\x00" + signature
        content = tbs + algorithm + bit_string
        return x509.load_der_x509_certificate(b"\x30" + _der_length(len(content)) + content)

    def crl(self, now: dt.datetime | None = None) -> x509.CertificateRevocationList:
        moment = now or dt.datetime.now(dt.timezone.utc)
        builder = (
            x509.CertificateRevocationListBuilder()
            .issuer_name(self.cert.subject)
            .last_update(moment - DAY)
            .next_update(moment + 30 * DAY)
            .add_extension(x509.CRLNumber(1), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(
                    self.cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
                ),
                critical=False,
            )
        )
        for serial in self.revoked:
            builder = builder.add_revoked_certificate(
                x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(moment - DAY).build()
            )
        return builder.sign(self.key, hashes.SHA256())


@dataclass(frozen=True)
class DevPki:
    """Where `generate` put everything. Every certificate `NAME.crt` has its key beside it as `NAME.key`."""

    directory: Path

    def cert(self, name: str) -> Path:
        return self.directory / f"{name}.crt"

    def key(self, name: str) -> Path:
        return self.directory / f"{name}.key"

    @property
    def ca(self) -> Path:
        return self.directory / "ca.crt"

    @property
    def crl(self) -> Path:
        return self.directory / "ca.crl"


def generate(
    directory: Path,
    *,
    roles: Mapping[str, str] = DEFAULT_CLIENT_ROLES,
    key_kind: str = "ec",
    server_hosts: Iterable[str] = ("127.0.0.1", "localhost"),
    opcua_uri: str = "urn:zonegate:opcua",
    opcua_users: Iterable[str] = ("operator", "historian"),
) -> DevPki:
    """Build a development PKI in `directory`.

    Files (each `.crt` with its `.key`, keys mode 0600): `ca` (with `ca.crl`), `server`, one client per
    entry of `roles` (`operator` has role Operator, ...), and for refusal tests `client-norole`,
    `client-tworoles`, `client-badrole` (role as a PrintableString), `client-expired`, `client-notyet`,
    `client-revoked` (listed in `ca.crl`), `client-rogue` (issued by `rogue-ca`, which is not trusted) and
    `client-badsig` (names the CA as issuer, signature does not verify).

    OPC UA (RSA 2048, as the secure channel needs): `opcua-server` (application URI `opcua_uri` as a URI
    subject alternative name, key usages OPC UA clients check), `opcua-client` (a level-3 client
    application, URI `urn:zonegate:dev-client`), `opcua-rogue-client` (same URI, issued by `rogue-ca`) and
    one X.509 user certificate `opcua-user-NAME` (subject CN=NAME) per entry of `opcua_users`.
    """
    directory.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.timezone.utc)
    ca = Authority.create("zonegate development CA", key_kind)
    rogue = Authority.create("rogue CA", key_kind)

    def save(name: str, pair: tuple[PrivateKey, x509.Certificate]) -> x509.Certificate:
        write_key(directory / f"{name}.key", pair[0])
        write_certificate(directory / f"{name}.crt", pair[1])
        return pair[1]

    write_key(directory / "ca.key", ca.key)
    write_certificate(directory / "ca.crt", ca.cert)
    write_key(directory / "rogue-ca.key", rogue.key)
    write_certificate(directory / "rogue-ca.crt", rogue.cert)
    save("server", ca.issue("zonegate", server=True, key_kind=key_kind, hosts=server_hosts))
    # A level-3 Modbus/TCP Security server that an outbound conduit connects to.
    save("l3-server", ca.issue("l3-server", server=True, key_kind=key_kind, hosts=server_hosts))
    for name, role in roles.items():
        save(name, ca.issue(f"{name}-1", role_values=[encode_role(role)], key_kind=key_kind))
    save("client-norole", ca.issue("norole-1", key_kind=key_kind))
    save(
        "client-tworoles",
        ca.issue("tworoles-1", role_values=[encode_role("Operator"), encode_role("Engineer")], key_kind=key_kind),
    )
    # PrintableString (tag 0x13) where the specification demands UTF8String.
    save("client-badrole", ca.issue("badrole-1", role_values=[b"\x13\x08Operator"], key_kind=key_kind))
    save(
        "client-expired",
        ca.issue("expired-1", role_values=[encode_role("Operator")], key_kind=key_kind,
                 not_before=now - 30 * DAY, not_after=now - DAY),
    )
    save(
        "client-notyet",
        ca.issue("notyet-1", role_values=[encode_role("Operator")], key_kind=key_kind,
                 not_before=now + 10 * DAY, not_after=now + 40 * DAY),
    )
    revoked = save("client-revoked", ca.issue("revoked-1", role_values=[encode_role("Operator")], key_kind=key_kind))
    ca.revoked.append(revoked.serial_number)
    save("client-rogue", rogue.issue("rogue-1", role_values=[encode_role("Operator")], key_kind=key_kind))
    # Names the development CA as issuer, but its signature does not verify.
    key, forged = ca.issue("badsig-1", role_values=[encode_role("Operator")], key_kind=key_kind)
    write_key(directory / "client-badsig.key", key)
    write_certificate(directory / "client-badsig.crt", _corrupt_signature(forged))
    _opcua_certificates(ca, rogue, save, opcua_uri, opcua_users, server_hosts)
    (directory / "ca.crl").write_bytes(ca.crl().public_bytes(serialization.Encoding.PEM))
    return DevPki(directory)


OPCUA_CLIENT_URI: Final = "urn:zonegate:dev-client"


def _opcua_certificates(ca: Authority, rogue: Authority, save: Callable[[str, tuple[PrivateKey, x509.Certificate]], object],
                        server_uri: str, users: Iterable[str], hosts: Iterable[str]) -> None:
    from zonegate.convert.opcua_pki import issue_application, issue_user

    hosts = list(hosts)
    save("opcua-server", issue_application(ca, "zonegate", server_uri, server=True, hosts=hosts))
    save("opcua-client", issue_application(ca, "dev-client", OPCUA_CLIENT_URI))
    save("opcua-rogue-client", issue_application(rogue, "rogue-client", OPCUA_CLIENT_URI))
    for user in users:
        save(f"opcua-user-{user}", issue_user(ca, user))
