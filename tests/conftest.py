"""Shared test helpers. `require()` skips a test normally but fails it under ZONEGATE_STRICT=1 (CI)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PCAPS = ROOT.parent / "shared" / "pcaps"
STRICT = os.environ.get("ZONEGATE_STRICT") == "1"


def require(condition: object, why: str) -> None:
    """Skip (or, in strict CI, fail) when a tool, privilege or namespace is missing."""
    if condition:
        return
    if STRICT:
        pytest.fail(f"ZONEGATE_STRICT=1 and {why}")
    pytest.skip(why)
