"""Data plane, listener stage: who is on the other end of a connection, resolved once when it opens.

A Modbus/TCP Security client is known by its certificate: the role extension (OID
1.3.6.1.4.1.50316.802.1, exactly one, a DER UTF8String) and the RFC 4514 subject. A certificate with
no role extension, several, or one whose value is not a well-formed UTF8String has no role: it then
gets only what the policy grants its subject, and by default nothing. A plain zone-side client is
known by its source address.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from cryptography import x509

from zonegate.controlplane.pki import ROLE_OID

_UTF8_STRING: Final = 0x0C
_MAX_ROLE_BYTES: Final = 1024


@dataclass(frozen=True, slots=True)
class Identity:
    """What a connection presented: its role and subject (TLS only) and its peer address."""

    peer: str
    role: str | None = None
    subject: str | None = None

    def audit(self, principal: str | None) -> dict[str, str | None]:
        """The `principal` object of an audit record (Modbus and EtherNet/IP write the same one)."""
        return {"name": principal, "role": self.role, "subject": self.subject, "peer": self.peer}


def decode_role(value: bytes) -> str | None:
    """The role in a role extension value, or None unless it is exactly one DER UTF8String."""
    if len(value) < 2 or value[0] != _UTF8_STRING:
        return None
    first = value[1]
    if first < 0x80:
        length, offset = first, 2
    else:
        octets = first & 0x7F
        if octets == 0 or octets > 2 or len(value) < 2 + octets:
            return None
        length = int.from_bytes(value[2 : 2 + octets], "big")
        offset = 2 + octets
        if length < 0x80 or (octets == 2 and length < 0x100):
            return None  # DER requires the shortest length form
    if length > _MAX_ROLE_BYTES or len(value) != offset + length:
        return None
    try:
        role = value[offset:].decode("utf-8")
    except UnicodeDecodeError:
        return None
    return role or None


def role_and_subject(der: bytes) -> tuple[str | None, str]:
    """(role, RFC 4514 subject) of a DER certificate; role None when the extension is absent or bad."""
    cert = x509.load_der_x509_certificate(der)
    subject = cert.subject.rfc4514_string()
    try:
        extensions = cert.extensions
    except (x509.DuplicateExtension, ValueError):
        return None, subject  # several role extensions (or another repeated one): no role
    try:
        extension = extensions.get_extension_for_oid(ROLE_OID)
    except x509.ExtensionNotFound:
        return None, subject
    value = extension.value
    if not isinstance(value, x509.UnrecognizedExtension):
        return None, subject
    return decode_role(value.value), subject


def tls_identity(der: bytes | None, peer: str) -> Identity:
    """The identity of a verified TLS client; `der` is its certificate (None if it sent none)."""
    if der is None:
        return Identity(peer=peer)
    try:
        role, subject = role_and_subject(der)
    except ValueError:
        return Identity(peer=peer)
    return Identity(peer=peer, role=role, subject=subject)


def resolve_tls(
    identity: Identity, principal_for_certificate: Callable[[str | None, str], str | None]
) -> str | None:
    """The principal name for a TLS identity (role first, then subject), or None."""
    if identity.subject is None:
        return None
    return principal_for_certificate(identity.role, identity.subject)
