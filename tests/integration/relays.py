"""The two relays the conduit tests run against: the Python relay (the reference) and the Rust relay
(`zonegate._engine.Relay` driven by zonegate.dataplane.rust_relay), started the way `zonegate run --relay`
starts them, in the test's own event loop. The EtherNet/IP tests start them through the supervisor instead
(tests/integration/test_enip_conduit.py, `Stack`), since under the Python relay a second conduit serves them."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Final

from tests.conftest import require
from zonegate import _engine
from zonegate.controlplane.audit import AuditLog
from zonegate.controlplane.metrics import Metrics
from zonegate.controlplane.supervisor import load_settings
from zonegate.dataplane.rust_relay import RustConduit
from zonegate.demo.stack import running_conduit

RELAYS: Final = ("python", "rust")


def require_relay(relay: str) -> None:
    """Skip (or fail, under ZONEGATE_STRICT=1) a Rust relay case when the extension was built without it."""
    if relay == "rust":
        require(hasattr(_engine, "Relay"), "zonegate._engine was built without the Rust relay (Relay)")


@asynccontextmanager
async def running(relay: str, policy: Sequence[Path], pki_dir: Path | None, audit_path: str = "-", *,
                  serve_metrics: bool = False) -> AsyncIterator[Any]:
    """A started conduit of `relay` for `policy`; drained on exit (`running_conduit` for the Python one)."""
    if relay == "python":
        async with running_conduit(policy, pki_dir, audit_path, serve_metrics=serve_metrics) as python:
            yield python
        return
    settings = load_settings(policy, pki_dir)
    metrics = Metrics()
    audit = AuditLog(audit_path, settings.audit_max_per_second, on_suppressed=metrics.audit_suppressed.inc)
    conduit: Any = RustConduit(settings, metrics, audit)
    try:
        await conduit.start()
        if serve_metrics:
            host, port = settings.metrics_bind
            metrics.serve(host, port)
        yield conduit
    finally:
        await conduit.drain(1.0)
        metrics.stop()
        audit.close()
