"""OPC UA converter, identity: the salted password file and user name -> principal mapping."""

from __future__ import annotations

from pathlib import Path

import pytest

from zonegate.convert.opcua_users import (
    PasswordFile,
    PasswordFileError,
    PrincipalUserManager,
    hash_password,
    principals_by_user,
)

FAST = 10  # log2 n: the file records its own cost; tests use a cheap one


def write_users(path: Path, text: str, mode: int = 0o600) -> Path:
    path.write_text(text)
    path.chmod(mode)
    return path


def test_hashes_are_salted_and_verify(tmp_path: Path) -> None:
    one, two = hash_password("secret", log2_n=FAST), hash_password("secret", log2_n=FAST)
    assert one != two  # a fresh salt each time
    users = PasswordFile.load(write_users(tmp_path / "users", f"# comment\n\nalice:{one}\nbob:{two}\n"))
    assert users.users == {"alice", "bob"}
    assert users.verify("alice", "secret") and users.verify("bob", "secret")
    assert not users.verify("alice", "Secret") and not users.verify("carol", "secret")
    assert "secret" not in (tmp_path / "users").read_text()


def test_a_file_others_can_read_is_refused(tmp_path: Path) -> None:
    path = write_users(tmp_path / "users", f"alice:{hash_password('x', log2_n=FAST)}\n", mode=0o644)
    with pytest.raises(PasswordFileError, match="0600"):
        PasswordFile.load(path)
    with pytest.raises(PasswordFileError, match="cannot open"):
        PasswordFile.load(tmp_path / "missing")


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("alice", "expected name:scrypt"),
        ("alice:plain-text-password", "expected name:scrypt"),
        ("alice:scrypt$14$8$1$zz$00", "hex"),
        ("alice:scrypt$40$8$1$00112233445566778899$00112233445566778899aabbccddeeff", "out of range"),
        ("alice:scrypt$14$8$1$00$00112233445566778899aabbccddeeff", "too short"),
    ],
)
def test_malformed_entries_name_the_line(line: str, message: str) -> None:
    with pytest.raises(PasswordFileError, match=message) as caught:
        PasswordFile.parse(f"# users\n{line}\n", "users.txt")
    assert "users.txt:2" in str(caught.value)


def test_a_user_twice_is_refused() -> None:
    entry = hash_password("x", log2_n=FAST)
    with pytest.raises(PasswordFileError, match="twice"):
        PasswordFile.parse(f"alice:{entry}\nalice:{entry}\n")


def test_users_map_to_principals_and_everything_else_is_refused() -> None:
    ir = {"principals": [
        {"name": "historian", "tls_roles": [], "subjects": [], "opcua_users": ["hist1", "hist2"], "sources": []},
        {"name": "operator", "tls_roles": ["Operator"], "subjects": [], "opcua_users": [], "sources": []},
    ]}
    assert principals_by_user(ir) == {"hist1": "historian", "hist2": "historian"}
    entry = hash_password("pw", log2_n=FAST)
    manager = PrincipalUserManager(PasswordFile.parse(f"hist1:{entry}\nstray:{entry}\n"), principals_by_user(ir))
    user = manager.get_user(None, username="hist1", password="pw")
    assert user is not None and user.name == "historian"
    assert manager.get_user(None, username="hist1", password="nope") is None
    assert manager.get_user(None, username="stray", password="pw") is None  # no principal
    assert manager.get_user(None, username="hist2", password="pw") is None  # no password entry
    assert manager.get_user(None) is None  # anonymous
    assert manager.refused == 4
