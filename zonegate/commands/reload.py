"""`zonegate reload`: check a policy, then ask the running zonegate to load it (SIGHUP).

Checking first means a typo is reported here, with file and line, instead of only in the service log;
the running process checks again and keeps its old policy if the new one fails.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path
from typing import Final

DEFAULT_PID_FILE: Final = Path("/run/zonegate.pid")


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser("reload", help="check a policy and make the running zonegate load it")
    parser.add_argument("-c", "--config", dest="policy", type=Path, action="append", default=None,
                        help="policy file(s) to check first (those the service was started with)")
    parser.add_argument("--pki", type=Path, default=None, help="base directory of relative certificate paths")
    target = parser.add_mutually_exclusive_group()
    target.add_argument("--pid", type=int, default=None, help="process id of the running zonegate")
    target.add_argument("--pid-file", type=Path, default=DEFAULT_PID_FILE, help="file holding that process id")
    parser.set_defaults(func=reload)


def reload(args: argparse.Namespace) -> int:
    if args.policy:
        from zonegate.controlplane.policy import PolicyError
        from zonegate.controlplane.supervisor import load_settings

        try:
            load_settings(args.policy, args.pki)
        except PolicyError as exc:
            print(exc, file=sys.stderr)
            print("zonegate: policy not valid; nothing reloaded", file=sys.stderr)
            return 2
    pid = args.pid
    if pid is None:
        try:
            pid = int(args.pid_file.read_text().strip())
        except (OSError, ValueError) as exc:
            print(f"zonegate: cannot read a process id from {args.pid_file}: {exc}", file=sys.stderr)
            return 1
    try:
        os.kill(pid, signal.SIGHUP)
    except OSError as exc:
        print(f"zonegate: cannot signal process {pid}: {exc.strerror}", file=sys.stderr)
        return 1
    print(f"zonegate: reload requested from process {pid}")
    return 0
