"""Control plane, nftables stage: load a rendered ruleset into the kernel, all or nothing.

Only `table inet zonegate` is ever touched: one libnftables transaction creates it if absent, deletes
it and builds it anew, so the kernel swaps old for new atomically and no packet sees a half table.
After the commit the table is read back and compared with what was rendered (chains, hooks, policies,
set contents, and each chain's rules in order by comment and kinds of terms); a mismatch restores the
previous table. The previous
table is kept as `nft -s list` text, which nft reads back as it printed it.

A ruleset with transparent listeners also needs policy routing (routing.py); apply installs it before
the table, so the first diverted packet is already delivered locally.

Nothing here flushes the ruleset or names another table. libnftables acts on the network namespace of
the calling thread, which is how the namespace tests point it at a box of their own.
"""

from __future__ import annotations

import ipaddress
import json
import threading
from dataclasses import dataclass
from typing import Any

from zonegate.controlplane.nftables import routing
from zonegate.controlplane.nftables.render import FAMILY, TABLE, Json, Ruleset

_TABLE_REF = f"table {FAMILY} {TABLE}"
# One change at a time in this process: a reload's apply and its rollback must not interleave with another.
_lock = threading.RLock()


class NftError(RuntimeError):
    """libnftables refused, or the kernel's table is not what was rendered. The previous table stands."""

    def __init__(self, stage: str, message: str) -> None:
        super().__init__(f"nft {stage}: {message.strip()}")
        self.stage = stage
        self.message = message.strip()


def _context(*, json_output: bool = False, dry_run: bool = False) -> Any:
    try:
        # Debian's python3-nftables, pure Python over libnftables.so.1 (`make link-nftables`).
        import nftables  # type: ignore[import-untyped,unused-ignore]
    except ImportError as exc:
        raise NftError("library", "the python3-nftables module is not importable; install python3-nftables "
                                  "and run `make link-nftables`") from exc
    try:
        nft = nftables.Nftables()
    except OSError as exc:
        raise NftError("library", f"cannot load libnftables.so.1: {exc}") from exc
    nft.set_json_output(json_output)
    nft.set_stateless_output(True)
    nft.set_dry_run(dry_run)
    return nft


def _run_text(script: str, stage: str, *, dry_run: bool = False) -> str:
    with _lock:
        rc, out, err = _context(dry_run=dry_run).cmd(script)
    if rc != 0:
        raise NftError(stage, err or f"libnftables returned {rc}")
    return str(out)


def _run_json(document: Json, stage: str, *, dry_run: bool = False) -> None:
    with _lock:
        rc, _out, err = _context(dry_run=dry_run).json_cmd(document)
    if rc != 0:
        raise NftError(stage, err or f"libnftables returned {rc}")


def exists() -> bool:
    """Whether `table inet zonegate` is in the kernel now."""
    with _lock:
        rc, out, err = _context(json_output=True).cmd(f"list tables {FAMILY}")
    if rc != 0:
        raise NftError("list", err or f"libnftables returned {rc}")
    return any(o.get("table", {}).get("name") == TABLE for o in json.loads(out)["nftables"])


def current_text() -> str | None:
    """The table as the kernel holds it (`nft -s list table inet zonegate`), or None if there is none.

    Elements of dynamic sets (the meters' per-source state) are left out: they are traffic, not policy.
    """
    if not exists():
        return None
    return without_dynamic_elements(_run_text(f"list {_TABLE_REF}", "list"))


def without_dynamic_elements(listing: str) -> str:
    """`listing` minus the `elements = { ... }` of sets flagged dynamic (which may wrap over lines)."""
    out: list[str] = []
    dynamic = skipping = False
    for line in listing.splitlines(keepends=True):
        stripped = line.strip()
        if stripped.startswith("set ") and stripped.endswith("{"):
            dynamic = False
        elif stripped.startswith("flags ") and "dynamic" in stripped:
            dynamic = True
        if dynamic and stripped.startswith("elements = {"):
            skipping = True
        if skipping:
            skipping = not stripped.endswith("}")
            continue
        out.append(line)
    return "".join(out)


def current_objects() -> list[Json] | None:
    """The table in libnftables JSON, or None if there is none."""
    if not exists():
        return None
    with _lock:
        rc, out, err = _context(json_output=True).cmd(f"list {_TABLE_REF}")
    if rc != 0:
        raise NftError("list", err or f"libnftables returned {rc}")
    return [o for o in json.loads(out)["nftables"] if "metainfo" not in o]


def check(ruleset: Ruleset) -> None:
    """Dry-run the replacing transaction: libnftables parses and evaluates it, the kernel is untouched."""
    _run_json(ruleset.replace_commands(), "check", dry_run=True)


@dataclass(frozen=True)
class Applied:
    """A ruleset now in force, and what was in force before it, so a failed reload can step back."""

    ruleset: Ruleset
    previous: str | None

    def rollback(self) -> None:
        """Put the previous table back (or none, if there was none), in one transaction."""
        script = f"add {_TABLE_REF}\ndelete {_TABLE_REF}\n"
        if self.previous is not None:
            script += self.previous
        with _lock:
            _run_text(script, "rollback")


def apply(ruleset: Ruleset) -> Applied:
    """Replace `table inet zonegate` with `ruleset` and verify it; on any failure the previous table stays."""
    with _lock:
        previous = current_text()
        if ruleset.divert is not None:
            # Harmless without a table that marks packets, so it stays even if the table is refused.
            try:
                routing.install(ruleset.divert.versions, ruleset.divert.mark, ruleset.divert.table)
            except routing.RoutingError as exc:
                raise NftError("routing", str(exc)) from exc
        _run_json(ruleset.replace_commands(), "apply")
        applied = Applied(ruleset, previous)
        try:
            verify(ruleset)
        except NftError:
            applied.rollback()
            raise
        return applied


def remove() -> bool:
    """Delete `table inet zonegate` on purpose; True if there was one."""
    with _lock:
        if not exists():
            return False
        _run_text(f"delete {_TABLE_REF}", "remove")
        return True


def verify(ruleset: Ruleset) -> None:
    """Raise unless the kernel's table has the rendered chains, sets and rules (by comment and the kinds
    of their terms, in order: the kernel spells the terms themselves its own way)."""
    listed = current_objects()
    if listed is None:
        raise NftError("verify", f"{_TABLE_REF} is missing after apply")
    want, have = shape(ruleset.objects), shape(listed)
    for part in want:
        if want[part] != have[part]:
            extra = {k: v for k, v in have[part].items() if want[part].get(k) != v}
            missing = {k: v for k, v in want[part].items() if have[part].get(k) != v}
            raise NftError("verify", f"{part} differ: rendered {missing!r}, kernel has {extra!r}")


def shape(objects: Any) -> dict[str, dict[str, Any]]:
    """What verification compares, in a form both the render and a kernel listing reduce to."""
    out: dict[str, dict[str, Any]] = {"limits": {}, "sets": {}, "chains": {}, "rules": {}}
    for obj in objects:
        ((kind, body),) = obj.items()
        if kind == "limit":
            out["limits"][body["name"]] = (body["rate"], body.get("per"))
        elif kind == "set":
            flags = tuple(sorted(set(body.get("flags", [])) - {"dynamic"}))
            dynamic = "timeout" in flags
            elements = None if dynamic else _networks(body.get("elem", []))
            out["sets"][body["name"]] = (body["type"], flags, elements)
        elif kind == "chain":
            out["chains"][body["name"]] = tuple(body.get(k) for k in ("type", "hook", "prio", "policy"))
        elif kind == "rule":
            terms = tuple(next(iter(e)) if isinstance(e, dict) else str(e) for e in body.get("expr", []))
            out["rules"].setdefault(body["chain"], []).append((body.get("comment"), terms))
    return out


def _networks(elements: list[Any]) -> tuple[str, ...]:
    nets: list[Any] = []
    for elem in elements:
        if isinstance(elem, dict) and "elem" in elem:
            elem = elem["elem"]["val"]
        if isinstance(elem, str):
            nets.append(ipaddress.ip_network(elem))
        elif "prefix" in elem:
            nets.append(ipaddress.ip_network(f"{elem['prefix']['addr']}/{elem['prefix']['len']}"))
        elif "range" in elem:
            lo, hi = (ipaddress.ip_address(a) for a in elem["range"])
            nets.extend(ipaddress.summarize_address_range(lo, hi))
    return tuple(str(n) for n in ipaddress.collapse_addresses(nets))


def drop_counts() -> dict[str, int]:
    """Packets dropped so far at each drop point (`drop_*` chains), for metrics; empty if no table."""
    if not exists():
        return {}
    with _lock:
        nft = _context(json_output=True)
        nft.set_stateless_output(False)
        rc, out, err = nft.cmd(f"list {_TABLE_REF}")
    if rc != 0:
        raise NftError("list", err or f"libnftables returned {rc}")
    counts: dict[str, int] = {}
    for obj in json.loads(out)["nftables"]:
        rule = obj.get("rule")
        if rule and rule["chain"].startswith("drop_"):
            for expr in rule["expr"]:
                if isinstance(expr, dict) and isinstance(expr.get("counter"), dict):
                    counts[rule["chain"]] = counts.get(rule["chain"], 0) + int(expr["counter"]["packets"])
    return counts
