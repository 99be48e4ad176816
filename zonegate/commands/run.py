"""`zonegate run`: the conduit as a service (listeners, upstreams, metrics, audit, reload on SIGHUP)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, Final, TypeVar

T = TypeVar("T")

# TLS reads allocate 256 KiB buffers; glibc's default thresholds then turn every read into mmap/munmap
# and trim system calls. These keep such buffers on the heap. Set before the interpreter starts.
GLIBC_TUNABLES: Final = "glibc.malloc.mmap_threshold=4194304:glibc.malloc.trim_threshold=67108864"


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser("run", help="run the conduit described by a policy")
    parser.add_argument("-c", "--config", dest="policy", type=Path, action="append", required=True,
                        help="policy file (repeat to merge several)")
    parser.add_argument("--pki", type=Path, default=None, help="base directory of relative certificate paths")
    parser.add_argument("--pid-file", type=Path, default=None, help="write the process id here (for reload)")
    parser.add_argument("--no-firewall", dest="firewall", action="store_false",
                        help="do not apply the policy's nftables table (development on a workstation)")
    parser.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))
    parser.add_argument("--relay", default="auto", choices=("auto", "python", "rust"),
                        help="where the Modbus and EtherNet/IP conduits run: the Rust relay (docs/relay.md) or the"
                             " Python relay (docs/dataplane.md); auto (default): Rust unless the policy has a"
                             " transparent listener, which only the Python relay serves")
    parser.set_defaults(func=run)


def _ensure_malloc_tunables() -> None:
    """Re-exec once with GLIBC_TUNABLES set, unless the environment already sets it."""
    if "GLIBC_TUNABLES" in os.environ or not sys.platform.startswith("linux"):
        return
    env = dict(os.environ, GLIBC_TUNABLES=GLIBC_TUNABLES)
    os.execve(sys.executable, [sys.executable, "-m", "zonegate.cli", *sys.argv[1:]], env)


def run(args: argparse.Namespace) -> int:
    _ensure_malloc_tunables()
    logging.basicConfig(
        level=getattr(logging, args.log_level.upper()),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    from zonegate.controlplane.nftables import FirewallSpecError, NftError
    from zonegate.controlplane.policy import PolicyError
    from zonegate.controlplane.supervisor import Supervisor
    from zonegate.controlplane.tls import TlsConfigError
    from zonegate.convert.errors import ConverterError
    from zonegate.dataplane.rust_relay import RelayConfigError

    supervisor = Supervisor(args.policy, args.pki, firewall=args.firewall, relay=args.relay)
    if args.pid_file is not None:
        args.pid_file.write_text(f"{os.getpid()}\n")
    try:
        run_on_event_loop(supervisor.run())
    except PolicyError as exc:
        print(exc, file=sys.stderr)
        return 2
    except RelayConfigError as exc:
        print(f"zonegate: --relay {args.relay}: {exc}", file=sys.stderr)
        return 2
    except (TlsConfigError, ConverterError, OSError) as exc:
        print(f"zonegate: {exc}", file=sys.stderr)
        return 1
    except (FirewallSpecError, NftError) as exc:
        print(f"zonegate: nftables: {exc} (the table in force, if any, is unchanged;"
              " --no-firewall runs without applying one)", file=sys.stderr)
        return 1
    finally:
        if args.pid_file is not None:
            args.pid_file.unlink(missing_ok=True)
    return 0


def run_on_event_loop(main: Coroutine[Any, Any, T]) -> T:
    """Run `main` on uvloop when available (the data plane is measured on it), else on asyncio's loop."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    return uvloop.run(main)
