"""The relay benchmark's EtherNet/IP half runs as a test with timing off, so it cannot rot between runs.

Its target and load generator talk over real loopback sockets; the end-to-end run puts zonegate's
`enip_tls` listener between them with a PKI made for the run.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from typing import Any

from tests.conftest import ROOT

BENCH = ROOT / "benchmarks" / "bench_relay.py"
sys.path.insert(0, str(ROOT))

from benchmarks.bench_relay import (  # noqa: E402
    ENIP_REPLY_CPF,
    Result,
    _EnipTargetProtocol,
    closed_loop,
    fixed_rate,
)


class _RefusingTarget(_EnipTargetProtocol):
    """Registers sessions, then answers every Read Tag with general status 0x0F (what a refusal looks like)."""

    def data_received(self, data: bytes) -> None:
        if data[0] == 0x65:
            super().data_received(data)
            return
        cip = bytes((0xCC, 0, 0x0F, 0))
        cpf = ENIP_REPLY_CPF[:12] + len(cip).to_bytes(2, "little") + cip
        self.transport.write(b"\x6f\x00" + len(cpf).to_bytes(2, "little") + data[4:8] + bytes(4) + data[12:24] + cpf)


async def _against(factory: Any, run: Any) -> Result:
    server = await asyncio.get_running_loop().create_server(factory, "127.0.0.1", 0)
    try:
        port = int(server.sockets[0].getsockname()[1])
        return await asyncio.wait_for(run(port), 30)
    finally:
        server.close()
        await server.wait_closed()


def test_enip_target_answers_every_read_tag_of_every_client() -> None:
    result = asyncio.run(_against(_EnipTargetProtocol, lambda port: closed_loop(port, None, 4, 0.05, 0.2, "enip")))
    assert result.errors == 0
    assert result.requests > 0 and len(result.latencies_us) == result.requests


def test_enip_fixed_rate_sends_on_schedule_and_matches_every_reply() -> None:
    result = asyncio.run(_against(_EnipTargetProtocol,
                                  lambda port: fixed_rate(port, None, 4, 200.0, 0.05, 0.25, "enip")))
    assert result.errors == 0
    assert 0 < result.requests <= 200 * 0.25 + 4  # what was scheduled in the measured window, no more


def test_an_answer_other_than_the_read_tag_reply_counts_as_an_error_not_a_request() -> None:
    result = asyncio.run(_against(_RefusingTarget, lambda port: closed_loop(port, None, 1, 0.0, 0.1, "enip")))
    assert result.requests == 0 and result.errors >= 1


def test_bench_relay_enip_only_reports_its_keys_through_zonegate() -> None:
    done = subprocess.run(
        [sys.executable, str(BENCH), "--quick", "--json", "--enip-only", "--systems", "direct,zonegate",
         "--clients", "1,64"],
        capture_output=True, text=True, timeout=180, check=False, cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    for key in ("zonegate_enip_rps_64", "zonegate_enip_p99_2k_us", "zonegate_enip_cpu_us", "direct_enip_rps_64"):
        assert result[key] > 0, key
    assert not [key for key in result if "errors" in key], result  # every request answered by the target
    assert not [key for key in result if key.startswith(("zonegate_rps", "direct_rps"))]  # no Modbus half


def test_bench_relay_halves_are_exclusive() -> None:
    done = subprocess.run([sys.executable, str(BENCH), "--enip-only", "--modbus-only"], capture_output=True,
                          text=True, timeout=60, check=False)
    assert done.returncode == 2
    assert "not allowed with" in done.stderr
