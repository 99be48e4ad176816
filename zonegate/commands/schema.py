"""`zonegate schema`: the JSON Schema of a policy file on stdout, generated from the policy model.

Point an editor at it (e.g. `# yaml-language-server: $schema=policy.schema.json`) to complete and check
policies while writing them; `zonegate check` remains the authority (it also checks references).
"""

from __future__ import annotations

import argparse
import json

from zonegate.controlplane.policy import json_schema


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser("schema", help="print the policy JSON Schema", description=__doc__)
    parser.set_defaults(func=run)


def render() -> str:
    return json.dumps(json_schema(), indent=2, sort_keys=False) + "\n"


def run(args: argparse.Namespace) -> int:
    print(render(), end="")
    return 0
