"""Control plane, supervisor: one zonegate process from policy load to drained shutdown.

Loads the policy, builds the conduit (listeners, upstream pools), serves metrics and writes the audit
trail, and (unless told not to) puts the policy's nftables table in force. SIGHUP reloads: the new policy
is loaded, compiled, its TLS material read and its ruleset rendered and dry-run before anything is
swapped; then the table is applied and the engine swapped, and if the swap fails the table is rolled
back, so the engine and the ruleset change together or not at all. A policy that fails keeps the old
one in force and is reported in the log and in `zonegate_policy_reloads_total{result="failed"}`.
Stopping leaves the table in the kernel: the boundary stays closed while zonegate is down. SIGTERM (or SIGINT) stops accepting, lets forwarded
requests finish within a bounded drain time, and exits.

The Modbus and EtherNet/IP conduits run in the Rust relay (zonegate.dataplane.rust_relay, docs/relay.md) or
in the Python relay (zonegate.dataplane.conduit and zonegate.dataplane.enip_conduit, the reference); the OPC
UA converter runs beside either. `relay="auto"` (the default) takes the Rust relay unless the policy has a
transparent listener, which only the Python relay serves; `relay="rust"` refuses such a policy before the
firewall table is touched.

When the policy has an `opcua:` section the OPC UA converter runs beside the conduit, on the conduit's
device pools. A reload hands it the new engine (rules, principals, OPC UA users); its address space,
endpoint, certificates and password file are fixed at start, so a reload that changes the `opcua:` or
`tags:` sections (or adds or removes them) is refused as a whole, with the changed settings named, and
takes effect at the next restart.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

from zonegate.controlplane.audit import AuditLog
from zonegate.controlplane.metrics import Metrics
from zonegate.dataplane.conduit import Conduit
from zonegate.dataplane.config import RuntimeSettings, from_policy
from zonegate.dataplane.enip_conduit import EnipConduit, start_enip
from zonegate.dataplane.rust_relay import RelayConfigError, RustConduit, check_relay_settings, make_conduit

log = logging.getLogger("zonegate")

DRAIN_TIMEOUT: Final = 5.0
RELAYS: Final = ("auto", "python", "rust")


def load_settings(paths: Sequence[Path], pki_dir: Path | None) -> RuntimeSettings:
    """Load, validate and adapt a policy; raises `PolicyError` with every issue found."""
    return load_policy(paths, pki_dir)[1]


def load_policy(paths: Sequence[Path], pki_dir: Path | None) -> tuple[Any, RuntimeSettings]:
    """The loaded policy and the runtime settings adapted from it."""
    from zonegate.controlplane.policy import load

    policy = load(list(paths), pki_dir=pki_dir)
    return policy, from_policy(policy)


def checked_ruleset(policy: Any) -> Any:
    """Render the policy's table and dry-run it in the kernel; raises before anything is applied."""
    from zonegate.controlplane.nftables import check, ruleset_for

    ruleset = ruleset_for(policy)
    check(ruleset)
    return ruleset


class Supervisor:
    """Runs one conduit and reacts to signals."""

    def __init__(self, paths: Sequence[Path], pki_dir: Path | None = None, *, serve_metrics: bool = True,
                 firewall: bool = False, relay: str = "auto") -> None:
        if relay not in RELAYS:
            raise ValueError(f"relay must be one of {', '.join(RELAYS)}, not {relay!r}")
        self.paths = list(paths)
        self.relay = relay
        self.firewall = firewall
        self.pki_dir = pki_dir
        self.serve_metrics = serve_metrics
        self.metrics = Metrics()
        self.audit: AuditLog | None = None
        self.conduit: Conduit | RustConduit | None = None
        self.converter: Any = None  # the OPC UA converter, when the policy has an opcua section
        self.enip: EnipConduit | None = None  # the Python relay's EtherNet/IP conduit; the Rust relay has its own
        self.metrics_port: int | None = None
        self.stopping = asyncio.Event()

    async def start(self) -> None:
        policy, settings = load_policy(self.paths, self.pki_dir)
        if self.relay == "auto":
            # The Rust relay where it can run the policy; the Python relay (the reference) where it cannot.
            try:
                check_relay_settings(settings)
                self.relay = "rust"
            except RelayConfigError as exc:
                log.info("Modbus and EtherNet/IP conduits on the Python relay: %s", exc)
                self.relay = "python"
        elif self.relay == "rust":
            check_relay_settings(settings)
        if self.firewall:
            from zonegate.controlplane.nftables import apply

            apply(checked_ruleset(policy))
            log.info("nftables table inet zonegate in force")
        self.audit = AuditLog(
            settings.audit_path,
            settings.audit_max_per_second,
            on_suppressed=lambda n: self.metrics.audit_suppressed.inc(n),
        )
        self.conduit = make_conduit(self.relay, settings, self.metrics, self.audit)
        await self.conduit.start()
        if isinstance(self.conduit, Conduit):
            self.enip = await start_enip(self.conduit, settings)
        for listener in [*self.conduit.listeners, *(self.enip.listeners if self.enip else ())]:
            log.info("listening: %s (%s) on %s:%d", listener.settings.name, listener.settings.protocol,
                     listener.settings.host, listener.port)
        if getattr(policy, "opcua", None) is not None:
            await self._start_converter(policy)
        if self.serve_metrics:
            host, port = settings.metrics_bind
            self.metrics_port = self.metrics.serve(host, port)
            log.info("metrics on http://%s:%d/metrics", host, self.metrics_port)
        log.info("policy %s in force, mode %s, %s relay", settings.source_hash[:12], settings.mode, self.relay)

    async def _start_converter(self, policy: Any) -> None:
        from zonegate.convert.opcua_server import start_opcua

        conduit = self.conduit
        assert conduit is not None
        # On the Rust relay the pools are RelayPool adapters: the converter uses only their submit and closed.
        pools: Any = lambda: conduit.pools  # noqa: E731
        self.converter = await start_opcua(policy, conduit.generation.policy, pools=pools,
                                           audit=self.audit, metrics=self.metrics)
        log.info("listening: opcua on %s", self.converter.endpoint)

    def _converter_check(self, policy: Any) -> None:
        """Raise when the reloaded policy's OPC UA part cannot be swapped into the running converter."""
        if self.converter is None and getattr(policy, "opcua", None) is None:
            return  # no converter before or after: asyncua need not even be imported
        from zonegate.convert.opcua_server import reload_problem

        problem = reload_problem(self.converter, policy)
        if problem is not None:
            raise ValueError(problem)

    def reload(self) -> bool:
        """Load the policy files again and swap them in; False (old policy kept) if anything fails."""
        assert self.conduit is not None
        applied = None
        try:
            policy, settings = load_policy(self.paths, self.pki_dir)
            self._converter_check(policy)
            if self.firewall:
                from zonegate.controlplane.nftables import apply

                ruleset = checked_ruleset(policy)
                applied = apply(ruleset)
            try:
                prepared = self.enip.prepare(settings) if self.enip is not None else None
                self.conduit.reload(settings)
                if self.enip is not None and prepared is not None:
                    self.enip.commit(prepared)
                if self.converter is not None:
                    self.converter.use_policy(self.conduit.generation.policy)
            except Exception:
                if applied is not None:
                    applied.rollback()  # the engine stayed as it was: so does the table
                raise
        except Exception as exc:  # any failure to build the new policy keeps the old one in force
            self.metrics.reloads.labels("failed").inc()
            log.error("reload failed, previous policy kept: %s", exc)
            return False
        self.metrics.reloads.labels("ok").inc()
        log.info("reloaded: policy %s in force, mode %s", settings.source_hash[:12], settings.mode)
        return True

    def request_stop(self) -> None:
        self.stopping.set()

    async def run(self) -> None:
        """Start, then serve until SIGTERM/SIGINT; SIGHUP reloads."""
        loop = asyncio.get_running_loop()
        try:
            await self.start()  # a part that fails to start (the converter's port, ...) stops the rest
            loop.add_signal_handler(signal.SIGHUP, self.reload)
            loop.add_signal_handler(signal.SIGTERM, self.request_stop)
            loop.add_signal_handler(signal.SIGINT, self.request_stop)
            log.info("ready")
            await self.stopping.wait()
        finally:
            for signum in (signal.SIGHUP, signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(signum)
            await self.stop()

    async def stop(self) -> None:
        if self.converter is not None:
            log.info("stopping the OPC UA converter")
            try:
                await self.converter.stop()
            except Exception:
                log.exception("opcua: error while stopping")
            self.converter = None
        if self.enip is not None:
            await self.enip.drain(DRAIN_TIMEOUT)
            self.enip = None
        if self.conduit is not None:
            log.info("draining")
            await self.conduit.drain(DRAIN_TIMEOUT)
            self.conduit = None
        self.metrics.stop()
        if self.audit is not None:
            self.audit.close()
        log.info("stopped")
