"""`zonegate replay --policy POLICY --pcap FILE`: what a policy would have done to a recorded capture
(every Modbus/TCP and EtherNet/IP request in it).

Exit 0 after the report; 1 with `--fail-on-deny` when any request would be denied (so a policy change
can be checked against captures in CI); 2 when the policy is invalid, the capture cannot be read, or
the capture is damaged part-way (the report then covers the frames before the damage).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from zonegate.controlplane.policy import PolicyError
from zonegate.replay import DEFAULT_LISTED, ProgressBar, render_json, render_text, replay

EXIT_DENIED = 1
EXIT_ERROR = 2


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "replay", help="decide every Modbus/TCP and EtherNet/IP request of a pcap/pcapng capture with a policy", description=__doc__
    )
    parser.add_argument(
        "--policy", required=True, type=Path, action="append", metavar="POLICY",
        help="policy YAML file (repeat to merge several files into one policy)",
    )
    parser.add_argument("--pcap", required=True, type=Path, metavar="FILE", help="capture file (pcap or pcapng)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the text report")
    parser.add_argument("--fail-on-deny", action="store_true", help="exit 1 when any request would be denied")
    parser.add_argument(
        "--principal", metavar="NAME",
        help="decide every flow as this principal instead of matching client addresses to principals' sources",
    )
    parser.add_argument(
        "--device", metavar="NAME",
        help="decide every flow against this device instead of matching server addresses to devices",
    )
    parser.add_argument(
        "--max-denials", type=int, default=DEFAULT_LISTED, metavar="N",
        help=f"list at most N denials and invalid streams (all are counted; default {DEFAULT_LISTED})",
    )
    parser.add_argument("--pki", type=Path, default=None, help="base directory of the policy's relative TLS paths")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.max_denials < 0:
        print("zonegate replay: --max-denials must be >= 0", file=sys.stderr)
        return EXIT_ERROR
    bar = ProgressBar(sys.stderr)
    try:
        result = replay(
            args.policy, args.pcap, principal=args.principal, device=args.device,
            max_listed=args.max_denials, pki_dir=args.pki, progress=bar,
        )
    except PolicyError as exc:
        for issue in exc.issues:
            print(issue, file=sys.stderr)
        return EXIT_ERROR
    except (OSError, ValueError) as exc:
        print(f"zonegate replay: {exc}", file=sys.stderr)
        return EXIT_ERROR
    finally:
        bar.close()
    for warning in result.warnings:
        print(warning, file=sys.stderr)
    print(render_json(result) if args.json else render_text(result))
    if not result.complete:
        print(f"zonegate replay: {args.pcap}: {result.report.capture_error}", file=sys.stderr)
        return EXIT_ERROR
    if args.fail_on_deny and result.would_be_denied:
        return EXIT_DENIED
    return 0
