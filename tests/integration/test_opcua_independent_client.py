"""The OPC UA converter against a client from another code base (python-opcua, the `opcua` package):
connect with SignAndEncrypt and a user name, read a polled value, write an allowed tag (it reaches the
PLC) and a refused one (it does not)."""

from __future__ import annotations

import asyncio
import importlib.util
from pathlib import Path
from typing import Any

from tests.conftest import require
from tests.integration.test_opcua_server import (  # noqa: F401
    CLIENT_URI,
    PASSWORD,
    Pki,
    pki,
    rig,
    run,
)


def _round_trip(url: str, pki_: Pki, nodes: dict[str, Any]) -> dict[str, Any]:
    """Blocking: the whole session in python-opcua's own threads."""
    from opcua import Client, ua
    from opcua.crypto import security_policies

    client = Client(url, timeout=5)
    client.application_uri = CLIENT_URI
    client.set_security(security_policies.SecurityPolicyBasic256Sha256, str(pki_.client_cert),
                        str(pki_.client_key), mode=ua.MessageSecurityMode.SignAndEncrypt)
    client.set_user("historian")
    client.set_password(PASSWORD)
    out: dict[str, Any] = {}
    client.connect()
    try:
        ns = client.get_namespace_index("urn:zonegate:devices")
        value = client.get_node(ua.NodeId(nodes["Ticks"], ns)).get_data_value()
        out["ticks"] = (value.StatusCode.is_good(), value.Value.Value)
        setpoint = client.get_node(ua.NodeId(nodes["Setpoint"], ns))
        setpoint.set_value(ua.DataValue(ua.Variant(321, ua.VariantType.UInt16)))
        try:
            client.get_node(ua.NodeId(nodes["Spare"], ns)).set_value(ua.DataValue(ua.Variant(1, ua.VariantType.UInt16)))
            out["spare"] = "written"
        except ua.UaStatusCodeError as exc:
            out["spare"] = exc.code
    finally:
        client.disconnect()
    return out


def test_python_opcua_reads_and_writes_through_the_engine(tmp_path: Path, pki: Pki) -> None:
    require(importlib.util.find_spec("opcua") is not None, "the independent client `opcua` is not installed")
    from opcua import ua

    async def scenario() -> None:
        async with rig(tmp_path, pki) as r:
            await _wait_good(r)
            nodes = {name: str(node.Identifier) for name, node in r.converter.node_of.items()}
            spare_writes = r.plc.seen[6]
            result = await asyncio.to_thread(_round_trip, r.url, pki, nodes)
            assert result["ticks"] == (True, 7)
            assert await r.plc_read(100) == [321]
            assert result["spare"] == ua.StatusCodes.BadUserAccessDenied
            assert r.plc.seen[6] == spare_writes + 1  # the allowed write only

    run(scenario())


async def _wait_good(r: Any) -> None:
    """Until the first poll has published (bounded)."""
    deadline = asyncio.get_running_loop().time() + 5
    while (r.converter.published("Ticks") or (None, -1))[1] != 0:
        assert asyncio.get_running_loop().time() < deadline, "no poll published in time"
        await asyncio.sleep(0.02)
