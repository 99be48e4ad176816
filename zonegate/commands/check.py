"""`zonegate check POLICY...`: load and compile each policy file as the running gateway would, and report.

Exit 0 when every file is valid (one summary line per file on stdout, warnings on stderr); exit 2 with
one `FILE:LINE:COL: field: message` line per issue on stderr otherwise.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from zonegate.controlplane.policy import Policy, PolicyError, load

EXIT_INVALID = 2


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser("check", help="validate policy files", description=__doc__)
    parser.add_argument("policies", nargs="+", type=Path, metavar="POLICY", help="policy YAML file(s)")
    parser.add_argument(
        "--together", action="store_true",
        help="load all files as one policy (sections merge) instead of one policy per file",
    )
    parser.add_argument("--pki", type=Path, default=None, help="base directory of relative TLS paths")
    parser.add_argument("--ir", action="store_true", help="print the compiled policy (JSON) of each valid policy")
    parser.set_defaults(func=run)


def summary(name: str, policy: Policy) -> str:
    """One line an auditor can read: what the policy holds."""
    entries = sum(len(rule.allow) for rule in policy.rules)

    def count(n: int, word: str) -> str:
        return f"{n} {word}{'' if n == 1 else 's'}"

    parts = [
        count(len(policy.zones), "zone"), count(len(policy.devices), "device"),
        count(len(policy.principals), "principal"), count(len(policy.rules), "rule"),
        f"{entries} allow entr{'y' if entries == 1 else 'ies'}",
        count(len(policy.listeners), "listener"),
    ]
    cip_entries = sum(len(rule.cip) for rule in policy.rules)
    if cip_entries:
        parts.insert(5, f"{cip_entries} cip entr{'y' if cip_entries == 1 else 'ies'}")
    warned = f", {count(len(policy.warnings), 'warning')}" if policy.warnings else ""
    return f"{name}: ok, mode {policy.mode}: {', '.join(parts)}{warned}; sha256 {policy.source_hash[:16]}"


def engine_refusal(policy: Policy) -> str | None:
    """Compile the policy in the engine, as `zonegate run` will; the engine's reason if it refuses."""
    from zonegate import _engine

    try:
        _engine.Engine(policy.ir_json())
    except ValueError as exc:
        return str(exc)
    return None


def run(args: argparse.Namespace) -> int:
    groups: list[list[Path]] = [args.policies] if args.together else [[p] for p in args.policies]
    status = 0
    for paths in groups:
        name = " + ".join(str(p) for p in paths)
        try:
            policy = load(paths, pki_dir=args.pki)
        except PolicyError as exc:
            for issue in exc.issues:
                print(issue, file=sys.stderr)
            status = EXIT_INVALID
            continue
        refusal = engine_refusal(policy)
        if refusal is not None:
            print(f"{name}:1:1: the engine refused the compiled policy: {refusal}", file=sys.stderr)
            status = EXIT_INVALID
            continue
        for issue in policy.warnings:
            print(issue, file=sys.stderr)
        print(summary(name, policy))
        if args.ir:
            print(policy.ir_json())
    return status
