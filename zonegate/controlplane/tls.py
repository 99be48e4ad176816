"""Control plane, TLS: the Modbus/TCP Security contexts the listeners and outbound upstreams use.

Both sides follow MB-TCP-Security: TLS 1.2 or newer, mutual authentication mandatory, for TLS 1.2 only
ECDHE with AES-128-GCM-SHA256 (RSA or ECDSA keys), no compression, no renegotiation. Trust comes from a
CA bundle and, when configured, a CRL checked for the leaf. A private key is refused unless only its
owner can read it (mode 0600 or stricter). Handshake failures are sorted into a small, fixed set of
reasons so they can label a metric.
"""

from __future__ import annotations

import os
import ssl
import stat
from pathlib import Path
from typing import Final

# TLS 1.2 suites (OpenSSL names): ECDHE key exchange, AES-128-GCM, SHA-256, for ECDSA and RSA keys.
TLS12_CIPHERS: Final = "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256"
HANDSHAKE_TIMEOUT: Final = 10.0

# The bounded label values of zonegate_tls_handshake_failures_total.
FAILURE_REASONS: Final = (
    "no_client_certificate",
    "unknown_ca",
    "certificate_expired",
    "certificate_not_yet_valid",
    "certificate_revoked",
    "bad_certificate",
    "protocol_version",
    "no_shared_cipher",
    "timeout",
    "connection_lost",
    "other",
)

# OpenSSL X509_V_ERR_* codes, by the reason they report.
_VERIFY_CODES: Final = {
    2: "unknown_ca",  # unable to get issuer certificate
    7: "bad_certificate",  # certificate signature failure
    9: "certificate_not_yet_valid",
    10: "certificate_expired",
    18: "unknown_ca",  # self-signed leaf
    19: "unknown_ca",  # self-signed certificate in chain
    20: "unknown_ca",  # unable to get local issuer certificate
    21: "unknown_ca",  # unable to verify the first certificate
    23: "certificate_revoked",
}


class TlsConfigError(ValueError):
    """A certificate, key, CA or CRL file that cannot be used; the message names the file."""


def check_key_file(path: Path) -> None:
    """Refuse a private key file that anyone but its owner can read or write."""
    try:
        mode = path.stat().st_mode
    except OSError as exc:
        raise TlsConfigError(f"{path}: cannot read private key: {exc.strerror}") from exc
    if not stat.S_ISREG(mode):
        raise TlsConfigError(f"{path}: private key is not a regular file")
    if mode & 0o077:
        raise TlsConfigError(f"{path}: private key mode is {stat.S_IMODE(mode):04o}; it must be 0600")


def _base_context(protocol: int, cert: Path, key: Path, ca: Path, crl: Path | None) -> ssl.SSLContext:
    context = ssl.SSLContext(protocol)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers(TLS12_CIPHERS)
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION | ssl.OP_NO_TICKET
    context.verify_mode = ssl.CERT_REQUIRED
    check_key_file(key)
    for label, path in (("certificate", cert), ("CA bundle", ca)) + ((("CRL", crl),) if crl else ()):
        if not path.is_file():
            raise TlsConfigError(f"{path}: {label} file not found")
    try:
        context.load_cert_chain(os.fspath(cert), os.fspath(key))
    except (ssl.SSLError, OSError) as exc:
        raise TlsConfigError(f"{cert}: certificate and key do not load together: {exc}") from exc
    try:
        context.load_verify_locations(cafile=os.fspath(ca))
    except (ssl.SSLError, OSError) as exc:
        raise TlsConfigError(f"{ca}: CA bundle does not load: {exc}") from exc
    if crl is not None:
        try:
            context.load_verify_locations(cafile=os.fspath(crl))
        except (ssl.SSLError, OSError) as exc:
            raise TlsConfigError(f"{crl}: CRL does not load: {exc}") from exc
        context.verify_flags |= ssl.VERIFY_CRL_CHECK_LEAF
    context.verify_flags |= ssl.VERIFY_X509_STRICT
    return context


def server_context(cert: Path, key: Path, ca: Path, crl: Path | None = None) -> ssl.SSLContext:
    """The context of a Modbus/TCP Security listener: clients must present a certificate from `ca`."""
    return _base_context(ssl.PROTOCOL_TLS_SERVER, cert, key, ca, crl)


def client_context(cert: Path, key: Path, ca: Path, crl: Path | None = None) -> ssl.SSLContext:
    """The context of an outbound upstream: zonegate's own certificate, the level-3 server's checked."""
    context = _base_context(ssl.PROTOCOL_TLS_CLIENT, cert, key, ca, crl)
    context.check_hostname = True
    return context


def failure_reason(exc: BaseException) -> str:
    """The FAILURE_REASONS label for a failed server-side handshake."""
    if isinstance(exc, TimeoutError):
        return "timeout"
    if isinstance(exc, ssl.SSLCertVerificationError):
        return _VERIFY_CODES.get(exc.verify_code, "bad_certificate")
    if isinstance(exc, ssl.SSLError):
        reason = (exc.reason or "").upper()
        if "PEER_DID_NOT_RETURN_A_CERTIFICATE" in reason or "CERTIFICATE_REQUIRED" in reason:
            return "no_client_certificate"
        if "UNSUPPORTED_PROTOCOL" in reason or "WRONG_VERSION" in reason or "VERSION_TOO_LOW" in reason:
            return "protocol_version"
        if "NO_SHARED_CIPHER" in reason or "NO_CIPHERS" in reason:
            return "no_shared_cipher"
        if "EOF" in reason:
            return "connection_lost"
        if "CERTIFICATE" in reason:
            return "bad_certificate"
        return "other"
    if isinstance(exc, (ConnectionError, EOFError)):
        return "connection_lost"
    return "other"
