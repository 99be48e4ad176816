"""`zonegate` command line: one module per subcommand under zonegate/commands/."""

from __future__ import annotations

import argparse
import importlib
import sys

# Subcommand modules each define `add_parser(subparsers)`, which registers a parser whose
# `func(args) -> int` is the command. Imported lazily so `zonegate check` does not load asyncio servers.
COMMANDS = ("check", "schema", "replay", "demo", "run", "reload", "nft", "pki")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="zonegate", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"zonegate.commands.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"zonegate.commands.{name}":
                continue  # command not built in this tree
            raise
        module.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
