"""`zonegate demo`: a simulated tank PLC and press controller, a development PKI and zonegate, with a narrated tour."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser("demo", help="run a simulated PLC behind zonegate and show what it does")
    parser.add_argument("-c", "--config", dest="policy", type=Path, default=None,
                        help="policy file (default: policies/demo.yaml)")
    parser.add_argument("--serve", action="store_true", help="keep everything running and print how to connect")
    parser.set_defaults(func=demo)


def demo(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    # asyncua's client warns about the demo's own development certificates (no local host name in them)
    logging.getLogger("asyncua").setLevel(logging.ERROR)
    from zonegate.controlplane.policy import PolicyError
    from zonegate.demo.tour import main

    try:
        return main(args.policy, args.serve)
    except PolicyError as exc:
        print(exc, file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"zonegate demo: {exc} (is another demo or service using ports 5020, 44818, 8802, 2221, 8502, "
              "9802, 4840?)", file=sys.stderr)
        return 1
