"""Audit and metrics under a flood of refused requests: the audit trail stays within its budget and says
how much it suppressed; every request is still counted."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest

from tests.integration.test_conduit import Stack, run
from tests.integration.test_conduit_faults import read_adu
from tests.integration.test_conduit_tls import until
from zonegate.controlplane.pki import DevPki, generate
from zonegate.demo.plc import SimulatedPlc
from zonegate.demo.stack import client_ssl_context

WRITE_OUT_OF_RANGE = bytes.fromhex("0000 0006 01 06 0005 0001")  # after a 2-byte tid: write register 5 = 1


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> DevPki:
    return generate(tmp_path_factory.mktemp("pki"))


def test_flood_of_denials_is_rate_limited_in_the_audit_and_fully_counted(
    tmp_path: Path, pki: DevPki, relay: str
) -> None:
    stack = Stack(tmp_path, pki, relay=relay)
    stack.policy.write_text(stack.policy.read_text().replace("max_per_second: 1000", "max_per_second: 5"))
    total = 300
    seconds: list[float] = []

    async def body(plc: SimulatedPlc, conduit: Any) -> None:
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", stack.listen_port, ssl=client_ssl_context(pki, "operator"), server_hostname="127.0.0.1"
        )
        started = time.monotonic()
        writer.write(b"".join(i.to_bytes(2, "big") + WRITE_OUT_OF_RANGE for i in range(total)))
        replies = [await read_adu(reader) for _ in range(total)]
        seconds.append(time.monotonic() - started)
        writer.close()
        assert all(r[2:] == bytes.fromhex("0000 0003 01 86 01") for r in replies)
        assert plc.requests_seen == 0
        registry = conduit.metrics.registry
        assert registry.get_sample_value("zonegate_requests_total", {
            "conduit": "l3-modbus-security", "principal": "operator", "device": "tank-plc",
            "function": "write_single_register", "verdict": "deny", "reason": "address_out_of_range"}) == total
        # Every denial is either written or counted as suppressed, once the control plane has taken the
        # relay's events (the Rust relay hands them over after answering).
        def suppressed() -> float:
            return registry.get_sample_value("zonegate_audit_suppressed_total") or 0.0

        await until(lambda: len(stack.audit_records()) + suppressed() >= total)
        assert suppressed() == total - len(stack.audit_records())

    run(stack.run(body))
    records = stack.audit_records()
    # at most 5 records in each second the flood touched
    assert 5 <= len(records) <= 5 * (int(seconds[0]) + 2)
    assert all(r["reason"] == "address_out_of_range" and r["values"] == [1] for r in records)
    assert records[0]["principal"] == {"name": "operator", "role": "Operator", "subject": "CN=operator-1,O=Plant",
                                       "peer": records[0]["principal"]["peer"]}
    assert {"time", "conduit", "device", "unit", "function", "table", "ranges", "rule", "verdict"} <= set(records[0])
