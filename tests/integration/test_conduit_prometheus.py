"""A real Prometheus scrapes zonegate's /metrics and answers queries for the requests a test caused;
`promtool check metrics` accepts the page."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import require
from tests.integration.relays import running
from tests.integration.test_conduit import Stack, run
from tests.integration.test_conduit_faults import read_adu, read_request
from zonegate.controlplane.pki import DevPki, generate
from zonegate.demo.plc import SimulatedPlc
from zonegate.demo.stack import client_ssl_context, free_port

WRITE_REGISTER_5 = bytes.fromhex("0000 0006 01 06 0005 0001")  # after the tid: denied (address)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> DevPki:
    return generate(tmp_path_factory.mktemp("pki"))


def fetch(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as response:
        return response.read().decode()


def query(port: int, promql: str) -> dict[str, float]:
    url = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
    try:
        body = json.loads(fetch(url))
    except OSError:
        return {}
    return {r["metric"].get("verdict", ""): float(r["value"][1]) for r in body["data"]["result"]}


def test_prometheus_scrapes_request_counters_by_verdict(tmp_path: Path, pki: DevPki, relay: str) -> None:
    prometheus, promtool = shutil.which("prometheus"), shutil.which("promtool")
    require(prometheus and promtool, "Debian's prometheus package (prometheus, promtool) is not installed")
    assert prometheus is not None and promtool is not None
    stack = Stack(tmp_path, pki, relay=relay)
    metrics_port, prometheus_port = free_port(), free_port()
    stack.policy.write_text(stack.policy.read_text() + f"metrics: {{bind: 127.0.0.1:{metrics_port}}}\n")
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
        "scrape_configs:\n"
        f"  - {{job_name: zonegate, static_configs: [{{targets: ['127.0.0.1:{metrics_port}']}}]}}\n"
    )

    async def body() -> None:
        plc = SimulatedPlc(stack.plc_port, initial={0: 1})
        await plc.start()
        server = subprocess.Popen(
            [prometheus, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{prometheus_port}"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        try:
            async with running(relay, [stack.policy], pki.directory, str(stack.audit), serve_metrics=True):
                reader, writer = await asyncio.open_connection(
                    "127.0.0.1", stack.listen_port, ssl=client_ssl_context(pki, "operator"),
                    server_hostname="127.0.0.1",
                )
                for tid in range(3):
                    writer.write(read_request(tid, 0))
                    await read_adu(reader)
                for tid in range(3, 5):
                    writer.write(tid.to_bytes(2, "big") + WRITE_REGISTER_5)
                    await read_adu(reader)
                writer.close()
                wanted = {"allow": 3.0, "deny": 2.0}
                promql = 'sum by (verdict) (zonegate_requests_total{job="zonegate"})'
                deadline = asyncio.get_running_loop().time() + 60
                seen: dict[str, float] = {}
                while seen != wanted and asyncio.get_running_loop().time() < deadline:
                    seen = await asyncio.to_thread(query, prometheus_port, promql)
                    if seen != wanted:
                        await asyncio.sleep(0.5)  # poll the query API until a scrape lands
                assert seen == wanted
                page = await asyncio.to_thread(fetch, f"http://127.0.0.1:{metrics_port}/metrics")
        finally:
            server.terminate()
            server.wait(timeout=15)
            await plc.stop()
        check = subprocess.run([promtool, "check", "metrics"], input=page, capture_output=True, text=True,
                               timeout=30)
        assert check.returncode == 0, check.stdout + check.stderr

    run(body(), timeout=120)
