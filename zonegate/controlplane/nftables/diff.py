"""Control plane, nftables stage: what `apply` would change, as a unified diff of nft text.

The rendered text is written the way the kernel lists the table (`nft -s list table inet zonegate`),
so an unchanged policy diffs empty against a live box and a changed one shows only the lines it moves.
"""

from __future__ import annotations

import difflib

from zonegate.controlplane.nftables.render import FAMILY, TABLE, Ruleset


def diff(current: str | None, ruleset: Ruleset) -> str:
    """Unified diff from the kernel's table (None: absent) to the rendered one; empty when they agree."""
    before = (current or "").splitlines(keepends=True)
    after = ruleset.text.splitlines(keepends=True)
    label = f"table {FAMILY} {TABLE}"
    source = f"kernel: {label}" if current is not None else "kernel: (none)"
    return "".join(difflib.unified_diff(before, after, source, f"policy: {label}"))
