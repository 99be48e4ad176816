"""Control plane, telemetry: the audit trail, one JSON line per denial and per allowed write.

A flood of refused requests must not fill the disk, so records pass a per-second budget; what it
drops is counted and reported in the next record that gets through (`suppressed`) and in a metric.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from typing import IO, Any


class AuditLog:
    """Writes audit records to a file (appending) or to standard output (`-`)."""

    def __init__(
        self,
        path: str = "-",
        max_per_second: int = 100,
        on_suppressed: Callable[[int], None] | None = None,
    ) -> None:
        self.path = path
        self.max_per_second = max(1, max_per_second)
        self.on_suppressed = on_suppressed
        self._out: IO[str] = sys.stdout if path == "-" else open(path, "a", encoding="utf-8")  # noqa: SIM115
        self._second = 0
        self._written = 0
        self._suppressed = 0

    def write(self, record: dict[str, Any]) -> bool:
        """Write one record unless this second's budget is spent; True when written."""
        second = int(time.monotonic())
        if second != self._second:
            self._second = second
            self._written = 0
        if self._written >= self.max_per_second:
            self._suppressed += 1
            if self.on_suppressed is not None:
                self.on_suppressed(1)
            return False
        self._written += 1
        if self._suppressed:
            record = {**record, "suppressed": self._suppressed}
            self._suppressed = 0
        try:
            self._out.write(json.dumps(record, separators=(",", ":")) + "\n")
            self._out.flush()
        except (OSError, ValueError):
            return False  # a full disk or closed stream must not stop the data plane
        return True

    def close(self) -> None:
        if self._out is not sys.stdout:
            self._out.close()


def utc_now() -> str:
    """An RFC 3339 timestamp with microseconds."""
    now = time.time()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now % 1 * 1e6):06d}Z"
