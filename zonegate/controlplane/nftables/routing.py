"""Control plane, nftables stage: the policy routing that nftables `tproxy` needs for transparent conduits.

`tproxy` hands a packet addressed to a zone device to a local socket but leaves its addresses alone, so
the routing decision would still forward it. The table marks every diverted packet; these two pieces
make the kernel deliver marked packets locally instead:

    ip rule add fwmark MARK lookup TABLE              (and ip -6 rule, for IPv6)
    ip route replace local 0.0.0.0/0 dev lo table TABLE   (local ::/0 for IPv6)

Both are idempotent here: installing twice leaves one rule and one route; removing what is absent is
not an error. Without them a diverted packet is forwarded and meets the forward chain's default drop,
so a missing piece fails closed. Commands run in the network namespace of the calling thread.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterable

from zonegate.controlplane.nftables.model import DIVERT_MARK, DIVERT_TABLE

STEP_TIMEOUT = 10.0
_ANY = {4: "0.0.0.0/0", 6: "::/0"}


class RoutingError(RuntimeError):
    """`ip` refused to install or remove a policy-routing piece."""


def _ip(version: int, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("ip")
    if binary is None:
        raise RoutingError("iproute2's `ip` is not installed")
    try:
        done = subprocess.run([binary, f"-{version}", *args], capture_output=True, text=True,
                              timeout=STEP_TIMEOUT)
    except subprocess.TimeoutExpired as exc:
        raise RoutingError(f"ip {' '.join(args)}: no answer within {STEP_TIMEOUT:g} s") from exc
    if check and done.returncode != 0:
        raise RoutingError(f"ip -{version} {' '.join(args)}: {done.stderr.strip() or done.returncode}")
    return done


def _rules(version: int, mark: int, table: int) -> int:
    """How many `fwmark MARK lookup TABLE` rules there are now."""
    done = _ip(version, "-j", "rule", "show", check=False)
    if done.returncode != 0:  # no policy routing for this family at all (IPv6 disabled): nothing of ours
        return 0
    listed = json.loads(done.stdout or "[]")
    return sum(1 for r in listed if _as_int(r.get("fwmark")) == mark and _table_of(r) == table)


def _as_int(value: object) -> int | None:
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        try:
            return int(value, 0)
        except ValueError:
            return None
    return None


def _table_of(rule: dict[str, object]) -> int | None:
    table = rule.get("table")
    return _as_int(table) if table is not None else None


def _has_local_route(version: int, table: int) -> bool:
    done = _ip(version, "-j", "route", "show", "table", str(table), "type", "local", check=False)
    if done.returncode != 0:  # the kernel makes a table with its first route: none yet, so not ours
        return False
    listed = json.loads(done.stdout or "[]")
    return any(r.get("dst") in ("default", _ANY[version]) and r.get("dev") == "lo" for r in listed)


def install(versions: Iterable[int] = (4, 6), mark: int = DIVERT_MARK, table: int = DIVERT_TABLE) -> None:
    """Route packets marked `mark` to table `table`, whose one route delivers everything locally."""
    for version in sorted(set(versions)):
        _ip(version, "route", "replace", "local", _ANY[version], "dev", "lo", "table", str(table))
        if _rules(version, mark, table) == 0:
            _ip(version, "rule", "add", "fwmark", hex(mark), "lookup", str(table))


def remove(versions: Iterable[int] = (4, 6), mark: int = DIVERT_MARK, table: int = DIVERT_TABLE) -> None:
    """Take the rule and the local route away again; absent pieces are fine."""
    for version in sorted(set(versions)):
        for _ in range(_rules(version, mark, table)):
            _ip(version, "rule", "del", "fwmark", hex(mark), "lookup", str(table))
        if _has_local_route(version, table):
            _ip(version, "route", "del", "local", _ANY[version], "dev", "lo", "table", str(table))


def installed(version: int, mark: int = DIVERT_MARK, table: int = DIVERT_TABLE) -> bool:
    """Whether both pieces are in place for IP `version`."""
    return _rules(version, mark, table) > 0 and _has_local_route(version, table)
