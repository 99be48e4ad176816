"""Control plane, nftables stage: the `inet zonegate` table that keeps every path across the box
going through a conduit.

`ruleset_for(policy)` (= `render(spec_from_policy(policy))`) -> `check(ruleset)` / `apply(ruleset)`.
`apply` returns an `Applied` handle whose `rollback()` restores the table that was in force before, so a
reload can swap the engine and the ruleset together or neither: render and check the new ruleset and
compile the new engine first; then apply, swap the engine, and roll the table back if the swap fails.
A ruleset with transparent listeners (`Ruleset.divert`) also gets the policy routing tproxy needs
(`routing.install`, done by `apply`); `save` material for boot is `Ruleset.script()`.
"""

from typing import Any

from zonegate.controlplane.nftables.adapter import spec_from_policy
from zonegate.controlplane.nftables.apply import Applied, NftError, apply, check, current_text, remove
from zonegate.controlplane.nftables.diff import diff
from zonegate.controlplane.nftables.model import FirewallSpec, FirewallSpecError
from zonegate.controlplane.nftables.render import Ruleset, render

__all__ = [
    "Applied", "FirewallSpec", "FirewallSpecError", "NftError", "Ruleset",
    "apply", "check", "current_text", "diff", "remove", "render", "ruleset_for", "spec_from_policy",
]


def ruleset_for(policy: Any) -> Ruleset:
    """The `inet zonegate` table for a loaded policy; raises `FirewallSpecError` if it cannot be expressed."""
    return render(spec_from_policy(policy))
