"""OPC UA converter, identity stage: user name tokens -> policy principals.

A session's user is the policy principal that lists its name under `opcua_user`. Passwords are never
in the policy: the policy names a file of salted scrypt hashes, one user a line, readable by its owner
only (mode 0600, like a key):

```
# name:scrypt$<log2 n>$<r>$<p>$<salt hex>$<hash hex>
historian:scrypt$14$8$1$8c1f...$e3b0...
```

Anonymous sessions are refused; so is a user the file does not hold, a wrong password, and a user
with no principal. Unknown users cost the same hashing time as known ones.

A user may instead present an X.509 user certificate (an X509IdentityToken, signed with its key over
the server's certificate and nonce, which asyncua verifies). The certificate must be issued by a CA of
the converter's trust list, be valid and not revoked; its subject's common name is the user name, and
the principal listing that name under `opcua_user` is the session's principal, exactly as for a
password user of that name.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from asyncua.crypto.permission_rules import User, UserRole
from cryptography.x509.oid import NameOID

from zonegate.convert.opcua_pki import TrustList, first_der_certificate

log = logging.getLogger(__name__)

LOG2_N: Final = 14
R: Final = 8
P: Final = 1
SALT_BYTES: Final = 16
HASH_BYTES: Final = 32
MAX_FILE_BYTES: Final = 1 << 20


class PasswordFileError(ValueError):
    """The password file cannot be used (permissions, syntax); the message names file and line."""


def hash_password(password: str, salt: bytes | None = None, log2_n: int = LOG2_N) -> str:
    """One password file entry's hash field for `password` (a fresh random salt unless given)."""
    salt = os.urandom(SALT_BYTES) if salt is None else salt
    digest = hashlib.scrypt(password.encode("utf-8"), salt=salt, n=1 << log2_n, r=R, p=P, dklen=HASH_BYTES,
                            maxmem=256 << 20)
    return f"scrypt${log2_n}${R}${P}${salt.hex()}${digest.hex()}"


class _Entry:
    __slots__ = ("log2_n", "r", "p", "salt", "digest")

    def __init__(self, log2_n: int, r: int, p: int, salt: bytes, digest: bytes) -> None:
        self.log2_n, self.r, self.p, self.salt, self.digest = log2_n, r, p, salt, digest

    def matches(self, password: str) -> bool:
        candidate = hashlib.scrypt(password.encode("utf-8"), salt=self.salt, n=1 << self.log2_n, r=self.r,
                                   p=self.p, dklen=len(self.digest), maxmem=256 << 20)
        return hmac.compare_digest(candidate, self.digest)


_DUMMY: Final = _Entry(LOG2_N, R, P, b"\x00" * SALT_BYTES, b"\x00" * HASH_BYTES)


class PasswordFile:
    """Users and their salted password hashes, read once from a file only its owner can read."""

    def __init__(self, entries: Mapping[str, _Entry]) -> None:
        self._entries = dict(entries)

    @property
    def users(self) -> frozenset[str]:
        return frozenset(self._entries)

    @classmethod
    def load(cls, path: Path) -> PasswordFile:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        except OSError as exc:
            raise PasswordFileError(f"{path}: cannot open the password file: {exc.strerror}") from None
        with os.fdopen(fd, "rb") as handle:
            mode = os.fstat(handle.fileno()).st_mode
            if not stat.S_ISREG(mode):
                raise PasswordFileError(f"{path}: the password file is not a regular file")
            if mode & 0o077:
                raise PasswordFileError(f"{path}: the password file must have mode 0600, not {mode & 0o777:04o}")
            raw = handle.read(MAX_FILE_BYTES + 1)
        if len(raw) > MAX_FILE_BYTES:
            raise PasswordFileError(f"{path}: the password file is larger than {MAX_FILE_BYTES} bytes")
        return cls.parse(raw.decode("utf-8", errors="strict"), str(path))

    @classmethod
    def parse(cls, text: str, source: str = "<passwords>") -> PasswordFile:
        entries: dict[str, _Entry] = {}
        for number, line in enumerate(text.splitlines(), start=1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            name, sep, field = line.partition(":")
            parts = field.split("$")
            where = f"{source}:{number}"
            if not sep or not name or len(parts) != 6 or parts[0] != "scrypt":
                raise PasswordFileError(f"{where}: expected name:scrypt$log2n$r$p$salt$hash")
            if name in entries:
                raise PasswordFileError(f"{where}: user {name!r} appears twice")
            try:
                log2_n, r, p = int(parts[1]), int(parts[2]), int(parts[3])
                salt, digest = bytes.fromhex(parts[4]), bytes.fromhex(parts[5])
            except ValueError:
                raise PasswordFileError(f"{where}: numbers and hex expected in the hash") from None
            if not (10 <= log2_n <= 20 and 1 <= r <= 32 and 1 <= p <= 16 and len(salt) >= 8 and len(digest) >= 16):
                raise PasswordFileError(f"{where}: hash parameters out of range (or salt/hash too short)")
            entries[name] = _Entry(log2_n, r, p, salt, digest)
        return cls(entries)

    def verify(self, name: str, password: str) -> bool:
        entry = self._entries.get(name)
        if entry is None:
            _DUMMY.matches(password)  # same cost as a real check: no user-name oracle by timing
            return False
        return entry.matches(password)


def principals_by_user(ir: Mapping[str, Any]) -> dict[str, str]:
    """OPC UA user name -> principal name, from the compiled policy's principals."""
    out: dict[str, str] = {}
    for principal in ir["principals"]:
        for user in principal.get("opcua_users", ()):
            out.setdefault(str(user), str(principal["name"]))
    return out


@dataclass
class PrincipalUser(User):
    """A session's user: `name` is its policy principal, `opcua_user` the name it logged in with."""

    opcua_user: str | None = None


class UserCertificate(bytes):
    """The DER of an X.509 user token's certificate whose signature the server has verified.

    asyncua hands a user manager the secure channel's (application) certificate for every other kind
    of token; only this type marks a certificate that identifies a user.
    """


def certificate_user(der: bytes) -> str | None:
    """The user name an X.509 user certificate carries: its subject's common name."""
    cert = first_der_certificate(der)
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    value = names[0].value if names else None
    return value if isinstance(value, str) and value else None


class PrincipalUserManager:
    """asyncua user manager: a verified user name, or user certificate, becomes a `User` named for its
    policy principal."""

    def __init__(self, passwords: PasswordFile, principals: Mapping[str, str], trust: TrustList | None = None) -> None:
        self.passwords = passwords
        self.principals = dict(principals)
        self.trust = trust
        self.refused = 0
        self.refused_by: dict[str, int] = {}

    def _refuse(self, reason: str) -> None:
        self.refused += 1
        self.refused_by[reason] = self.refused_by.get(reason, 0) + 1

    def get_user(self, iserver: Any, username: str | None = None, password: str | None = None,
                 certificate: Any = None) -> PrincipalUser | None:
        if isinstance(certificate, UserCertificate) and username is None:
            return self._certificate_user(certificate)
        if username is None or password is None:
            self._refuse("no_credentials")
            log.warning("opcua: refused a session without a user name and password")
            return None
        ok = self.passwords.verify(username, password)
        principal = self.principals.get(username)
        if not ok or principal is None:
            self._refuse("bad_credentials" if not ok else "no_principal")
            log.warning("opcua: refused user %r (%s)", username,
                        "bad credentials" if not ok else "no principal")
            return None
        return PrincipalUser(role=UserRole.User, name=principal, opcua_user=username)

    def _certificate_user(self, der: bytes) -> PrincipalUser | None:
        try:
            verdict = self.trust.check(first_der_certificate(der)) if self.trust is not None else "untrusted"
            name = certificate_user(der)
        except ValueError:
            verdict, name = "untrusted", None
        if verdict:
            self._refuse(f"user_certificate_{verdict}")
            log.warning("opcua: refused a user certificate (%s)", verdict)
            return None
        principal = self.principals.get(name) if name is not None else None
        if principal is None:
            self._refuse("no_principal")
            log.warning("opcua: refused user certificate of %r (no principal)", name)
            return None
        return PrincipalUser(role=UserRole.User, name=principal, opcua_user=name)
