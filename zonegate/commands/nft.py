"""`zonegate nft`: render, check, apply, diff, save and remove the `inet zonegate` nftables table.

Exit status: 0 done; 1 libnftables or the kernel refused (the previous table stands); 2 the policy cannot
be loaded or rendered, or the saved script cannot be written. `diff` follows diff(1): 0 no change,
1 changes, 2 trouble.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

from zonegate.controlplane.nftables import routing, ruleset_for
from zonegate.controlplane.nftables.apply import NftError, apply, check, current_text, remove
from zonegate.controlplane.nftables.diff import diff
from zonegate.controlplane.nftables.model import FirewallSpecError
from zonegate.controlplane.nftables.render import Ruleset


def add_parser(sub: Any) -> None:
    parser = sub.add_parser("nft", help="render and apply the nftables ruleset", description=__doc__,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    actions = parser.add_subparsers(dest="nft_action", required=True, metavar="ACTION")
    for name, help_text in (
        ("render", "print the ruleset as nft text (or libnftables JSON with --json)"),
        ("check", "validate the ruleset with a libnftables dry run; the kernel is untouched"),
        ("apply", "replace table inet zonegate in one transaction, then read it back and verify it"),
        ("diff", "show what apply would change in the kernel's table"),
        ("save", "write the table as an nft script that replaces it in one transaction, for loading at boot"),
    ):
        action = actions.add_parser(name, help=help_text, description=help_text)
        action.add_argument("-c", "--config", type=Path, action="append", required=True, metavar="POLICY",
                            help="policy file (repeat to merge several)")
        action.add_argument("--pki", type=Path, default=None, metavar="DIR",
                            help="base for relative certificate paths")
        if name == "render":
            action.add_argument("--json", action="store_true", help="libnftables JSON instead of nft text")
        if name == "save":
            action.add_argument("-o", "--output", type=Path, default=None, metavar="FILE",
                                help="write here (replaced atomically) instead of stdout")
        action.set_defaults(func=run)
    remove = actions.add_parser("remove", help="delete table inet zonegate and the policy routing of "
                                                "transparent conduits (on purpose: this opens the box)")
    remove.set_defaults(func=run)


def _ruleset(args: argparse.Namespace) -> Ruleset | None:
    try:
        from zonegate.controlplane.policy import PolicyError, load  # type: ignore[attr-defined,unused-ignore]
    except ImportError as exc:
        print(f"zonegate nft: the policy loader is not available: {exc}", file=sys.stderr)
        return None
    try:
        return ruleset_for(load(args.config, args.pki))
    except PolicyError as exc:
        print(exc, file=sys.stderr)
    except FirewallSpecError as exc:
        print(f"zonegate nft: {exc}", file=sys.stderr)
    return None


def run(args: argparse.Namespace) -> int:
    try:
        if args.nft_action == "remove":
            removed = remove()
            print("removed table inet zonegate" if removed else "no table inet zonegate", file=sys.stderr)
            try:
                routing.remove()
            except routing.RoutingError as exc:
                print(f"zonegate nft remove: {exc}", file=sys.stderr)
                return 1
            return 0
        ruleset = _ruleset(args)
        if ruleset is None:
            return 2
        if args.nft_action == "render":
            sys.stdout.write(json.dumps(ruleset.document(), indent=2) + "\n" if args.json else ruleset.text)
        elif args.nft_action == "check":
            check(ruleset)
            print("ruleset ok", file=sys.stderr)
        elif args.nft_action == "apply":
            applied = apply(ruleset)
            state = "replaced" if applied.previous is not None else "created"
            print(f"table inet zonegate {state} and verified", file=sys.stderr)
        elif args.nft_action == "save":
            script = ruleset.script(", ".join(str(p) for p in args.config))
            if args.output is None:
                sys.stdout.write(script)
            else:
                try:
                    write_atomically(args.output, script)
                except OSError as exc:
                    print(f"zonegate nft save: cannot write {args.output}: {exc}", file=sys.stderr)
                    return 2
                print(f"saved table inet zonegate to {args.output}", file=sys.stderr)
        elif args.nft_action == "diff":
            changes = diff(current_text(), ruleset)
            sys.stdout.write(changes)
            return 1 if changes else 0
    except NftError as exc:
        print(f"zonegate {exc}", file=sys.stderr)
        return 2 if args.nft_action == "diff" else 1
    return 0


def write_atomically(path: Path, text: str) -> None:
    """Replace `path` with `text` so that a reader (the boot unit) sees the old file or the new, never
    a part: write a temporary file beside it, flush it to disk, rename it over."""
    directory = path.parent if str(path.parent) else Path(".")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=directory)
    try:
        with os.fdopen(fd, "w") as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
