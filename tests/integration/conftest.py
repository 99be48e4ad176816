"""Fixtures of the integration tests: `relay` runs a conduit test (Modbus or EtherNet/IP) once per relay
(Python, Rust)."""

from __future__ import annotations

import pytest

from tests.integration.relays import RELAYS, require_relay


@pytest.fixture(params=RELAYS)
def relay(request: pytest.FixtureRequest) -> str:
    name = str(request.param)
    require_relay(name)
    return name
