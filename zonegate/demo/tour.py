"""The narrated demo: a live tank PLC, a press controller, a development PKI, and zonegate between level 3
and the PLCs.

An operator (Modbus/TCP Security client with role Operator) reads the tank, writes an allowed setpoint,
is refused a setpoint outside the process limits (exception 01, and the audit line that records it),
sees the same request forwarded but recorded in monitor mode. Then the press controller (cpppo's Logix
simulator, when cpppo is installed) over EtherNet/IP over TLS: a Read Tag and a Write Tag to the speed
setpoint allowed and read back, a Write Tag to a tag no rule names and a Stop refused with CIP status 0x0F.
Then the tank PLC's tags over OPC UA (SignAndEncrypt, X.509 user certificates): a client reads them, the
operator's setpoint write is allowed and reaches the PLC, the historian's is refused by the same rules. The tour ends with the metrics that
counted it all. Everything runs on loopback in this process, over real sockets.
"""

from __future__ import annotations

import asyncio
import signal
import tempfile
import urllib.request
from pathlib import Path
from typing import Any, Final

from pymodbus.client import AsyncModbusTlsClient

from zonegate.controlplane.pki import DevPki, generate
from zonegate.controlplane.supervisor import load_settings
from zonegate.dataplane.conduit import Conduit
from zonegate.demo import cip_client
from zonegate.demo.plc import SETPOINT, SimulatedPlc
from zonegate.demo.press import TAGS as PRESS_TAGS
from zonegate.demo.press import PressController, cpppo_missing
from zonegate.demo.stack import client_ssl_context, running_conduit, running_converter, running_enip

DEFAULT_POLICY: Final = Path(__file__).resolve().parents[2] / "policies" / "demo.yaml"
SHOWN_METRICS: Final = ("zonegate_requests_total", "zonegate_upstream_up", "zonegate_active_connections",
                        "zonegate_policy_reloads_total", "zonegate_opcua_sessions", "zonegate_opcua_bad_variables")
OPCUA_SETPOINT: Final = "Tank/InflowSetpoint"
PRESS_DEVICE: Final = "press-plc"
PRESS_SETPOINT: Final = "Press_SpeedSP"
PRESS_LIMIT: Final = "Press_ForceLimit"


def say(text: str) -> None:
    print(f"\n== {text}", flush=True)


async def tour(policy: Path, serve: bool, work: Path) -> int:
    pki = generate(work / "pki")
    say(f"development PKI in {pki.directory} (CA, server, operator/engineer/viewer, refusal cases)")
    settings = load_settings([policy], pki.directory)
    device = settings.devices.get("tank-plc") or next(iter(settings.devices.values()))
    plc = SimulatedPlc(device.port, live=True, initial={SETPOINT: 500})
    await plc.start()
    say(f"tank PLC simulator on {device.host}:{device.port} (unit 1; level in holding 0, setpoint in 100)")
    press = await start_press(settings.enip.devices.get(PRESS_DEVICE), work)
    try:
        async with running_conduit([policy], pki.directory, serve_metrics=True) as conduit, \
                running_enip(conduit) as enip, \
                running_converter([policy], pki.directory, conduit) as converter:
            listener = next(x for x in conduit.listeners if x.settings.protocol == "modbus_tls")
            host, port = listener.settings.host, listener.port
            say(f"zonegate: Modbus/TCP Security on {host}:{port}, metrics on "
                f"http://{settings.metrics_bind[0]}:{settings.metrics_bind[1]}/metrics, mode {settings.mode}")
            enip_listener = next((x for x in enip.listeners if x.settings.protocol == "enip_tls"), None) \
                if enip is not None else None
            if enip_listener is not None:
                say(f"zonegate: EtherNet/IP over TLS on {enip_listener.settings.host}:{enip_listener.port} "
                    f"(principal from the client certificate)")
            if converter is not None:
                say(f"zonegate: OPC UA on {converter.endpoint} (SignAndEncrypt; the PLC's tags, polled as "
                    f"{converter.settings.poll_principal})")
            if serve:
                print_connect_help(host, port, pki.directory, settings.metrics_bind,
                                   converter.endpoint if converter is not None else None,
                                   (enip_listener.settings.host, enip_listener.port)
                                   if press is not None and enip_listener is not None else None)
                await _until_signalled()
                say("stopping")
                return 0
            await narrate(conduit, policy, pki.directory, host, port, settings.metrics_bind, work)
            if press is not None and enip_listener is not None:
                await narrate_enip(pki, enip_listener.settings.host, enip_listener.port, press)
            if converter is not None:
                await narrate_opcua(converter, pki, plc)
            await show_metrics(settings.metrics_bind)
    finally:
        if press is not None:
            await press.stop()
        await plc.stop()
    return 0


async def start_press(device: Any, work: Path) -> PressController | None:
    """The press controller simulator, or None (and one line saying why) when it cannot run here."""
    if device is None:
        return None
    why = cpppo_missing()
    if why is not None:
        say(f"EtherNet/IP part skipped: {why}")
        return None
    press = PressController(device.host, device.port, work / "press-simulator.log")
    await press.start()
    say(f"press controller (cpppo's Logix simulator) on {device.host}:{device.port}: "
        + ", ".join(f"{name} {type_name}" for name, (type_name, _value) in PRESS_TAGS.items()))
    return press


async def narrate(conduit: Conduit, policy: Path, pki_dir: Path, host: str, port: int,
                  metrics_bind: tuple[str, int], work: Path) -> None:
    pki = DevPki(pki_dir)
    client = AsyncModbusTlsClient(host, port=port, sslctx=client_ssl_context(pki, "operator"), timeout=3, retries=0)
    if not await client.connect():
        raise RuntimeError(f"cannot connect to zonegate on {host}:{port}")
    try:
        say("operator (role Operator) reads holding registers 0-1 (level, ticks) and setpoint 100")
        read = await client.read_holding_registers(0, count=2, device_id=1)
        setpoint = await client.read_holding_registers(SETPOINT, count=1, device_id=1)
        print(f"   level {read.registers[0]}, ticks {read.registers[1]}, setpoint {setpoint.registers[0]}")

        say("operator writes setpoint 100 = 800 (allowed: rule operator-setpoints, 0..1500)")
        wrote = await client.write_register(SETPOINT, 800, device_id=1)
        print(f"   {'refused' if wrote.isError() else 'written'}; the audit line above records the write")

        say("operator writes setpoint 100 = 5000 (outside 0..1500)")
        refused = await client.write_register(SETPOINT, 5000, device_id=1)
        code = getattr(refused, "exception_code", None)
        print(f"   refused with Modbus exception {code:02X} (illegal function); the PLC never saw it"
              if refused.isError() else "   unexpectedly written")

        say("the same write in monitor mode: forwarded, and recorded as would_deny")
        monitor = work / "demo-monitor.yaml"
        monitor.write_text(policy.read_text().replace("mode: enforce", "mode: monitor"))
        conduit.reload(load_settings([monitor], pki_dir))
        forwarded = await client.write_register(SETPOINT, 5000, device_id=1)
        print(f"   {'refused' if forwarded.isError() else 'forwarded and written'} (mode monitor)")
        conduit.reload(load_settings([policy], pki_dir))
        await client.write_register(SETPOINT, 800, device_id=1)
    finally:
        client.close()


async def narrate_enip(pki: DevPki, host: str, port: int, press: PressController) -> None:
    """The press over EtherNet/IP over TLS: raw CIP in Unconnected Sends to backplane slot 0."""
    say("EtherNet/IP over TLS: operator (role Operator) registers a session and reads the press tags (Read Tag)")
    client = await cip_client.CipClient.connect(host, port, client_ssl_context(pki, "operator"))
    try:
        for tag in ("Press_State", "Press_Speed", PRESS_SETPOINT, "Press_Force", "Press_Strokes"):
            reply = await client.read(tag)
            print(f"   {tag} = {reply.value() if reply.ok else 'refused ' + reply.status_text}")

        say(f"operator writes {PRESS_SETPOINT} = 55 (allowed: rule operator-press, Write Tag to {PRESS_SETPOINT})")
        wrote = await client.write(PRESS_SETPOINT, "INT", 55)
        back = await client.read(PRESS_SETPOINT)
        print(f"   {'written' if wrote.ok else 'refused ' + wrote.status_text}; read back through zonegate: "
              f"{PRESS_SETPOINT} = {back.value() if back.ok else back.status_text}")

        say(f"operator writes {PRESS_LIMIT} = 400.0 (no rule names that tag)")
        refused = await client.write(PRESS_LIMIT, "REAL", 400.0)
        print(f"   refused with CIP general status {refused.status_text}; the press never saw it "
              f"(the audit line above records the denial)" if not refused.ok else "   unexpectedly written")

        say("operator sends Stop (0x07) to the controller's Identity object")
        stopped = await client.send(cip_client.routed(cip_client.stop()))
        print(f"   refused with CIP general status {stopped.status_text}; the press keeps running"
              if not stopped.ok else "   unexpectedly accepted")
    finally:
        await client.close()
    direct = await cip_client.CipClient.connect(press.host, press.port)
    try:
        limit = await direct.read(PRESS_LIMIT)
        print(f"   on the press itself (zone side, past zonegate): {PRESS_LIMIT} = "
              f"{limit.value() if limit.ok else limit.status_text}")
    finally:
        await direct.close()


async def narrate_opcua(converter: Any, pki: DevPki, plc: SimulatedPlc) -> None:
    """The PLC's tags over OPC UA: read, one write allowed (operator), one refused (historian)."""
    from asyncua import ua

    say("OPC UA: client opcua-client (SignAndEncrypt, Basic256Sha256) as user operator (X.509 user certificate)")
    async with await opcua_client(converter, pki, "operator") as client:
        ns = await client.get_namespace_index(converter.settings.namespace)
        for name in ("Tank/Level", "Tank/Ticks", OPCUA_SETPOINT):
            value = await _good_value(client.get_node(converter.node_of[name]))
            print(f"   {name} = {value}  (ns={ns};s={converter.node_of[name].Identifier})")
        say(f"operator writes {OPCUA_SETPOINT} = 60.0 % (allowed: rule operator-setpoints; the PLC gets 600)")
        await client.get_node(converter.node_of[OPCUA_SETPOINT]).write_value(
            ua.DataValue(ua.Variant(60.0, ua.VariantType.Double)))
        print(f"   written; holding 100 on the PLC is now {await plc_register(plc, SETPOINT)}")
    before = plc.seen[6]
    say(f"historian (X.509 user certificate) writes {OPCUA_SETPOINT} = 90.0 % (its rules only read)")
    async with await opcua_client(converter, pki, "historian") as client:
        try:
            await client.get_node(converter.node_of[OPCUA_SETPOINT]).write_value(
                ua.DataValue(ua.Variant(90.0, ua.VariantType.Double)))
            print("   unexpectedly written")
        except ua.UaStatusCodeError as exc:
            verdict = "BadUserAccessDenied" if exc.code == ua.StatusCodes.BadUserAccessDenied else f"0x{exc.code:08X}"
            print(f"   refused with {verdict}; the PLC never saw it "
                  f"({plc.seen[6] - before} writes reached it; the audit line above records the denial)")


async def opcua_client(converter: Any, pki: DevPki, user: str) -> Any:
    from asyncua import Client
    from asyncua.crypto.security_policies import SecurityPolicyBasic256Sha256
    from asyncua.crypto.uacrypto import CertProperties

    from zonegate.controlplane.pki import OPCUA_CLIENT_URI

    client = Client(converter.endpoint, timeout=5)
    client.application_uri = OPCUA_CLIENT_URI
    await client.set_security(SecurityPolicyBasic256Sha256, CertProperties(str(pki.cert("opcua-client")), "pem"),
                              CertProperties(str(pki.key("opcua-client")), "pem"))
    await client.load_client_certificate(str(pki.cert(f"opcua-user-{user}")), "pem")
    await client.load_private_key(pki.key(f"opcua-user-{user}"), extension="pem")
    return client


async def _good_value(node: Any, timeout: float = 10.0) -> object:
    """The variable's value once the converter's first poll has published it (bounded)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        dv = await node.read_data_value(raise_on_bad_status=False)
        if dv.StatusCode.is_good():
            return dv.Value.Value
        if asyncio.get_running_loop().time() > deadline:
            raise RuntimeError(f"{node} still {dv.StatusCode} after {timeout}s")
        await asyncio.sleep(0.05)


async def plc_register(plc: SimulatedPlc, address: int) -> int:
    """One holding register read straight from the PLC (zone side), past zonegate."""
    from pymodbus.client import AsyncModbusTcpClient

    client = AsyncModbusTcpClient(plc.host, port=plc.port, timeout=2)
    await client.connect()
    try:
        return int((await client.read_holding_registers(address, count=1, device_id=1)).registers[0])
    finally:
        client.close()


async def show_metrics(metrics_bind: tuple[str, int]) -> None:
    say("metrics (excerpt)")
    url = f"http://{metrics_bind[0]}:{metrics_bind[1]}/metrics"
    page = await asyncio.to_thread(lambda: urllib.request.urlopen(url, timeout=5).read().decode())
    for line in page.splitlines():
        if line.startswith(SHOWN_METRICS):
            print(f"   {line}")
    say("done; `zonegate demo --serve` keeps everything running")


async def _until_signalled() -> None:
    """Wait for SIGINT or SIGTERM (a background demo does not get SIGINT from a terminal)."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    try:
        await stop.wait()
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)


def print_connect_help(host: str, port: int, pki_dir: Path, metrics_bind: tuple[str, int],
                       opcua: str | None = None, enip: tuple[str, int] | None = None) -> None:
    print(f"""
Serving until Ctrl-C (or SIGTERM). Connect as the operator, for example with pymodbus:

    from pymodbus.client import ModbusTlsClient
    import ssl
    ctx = ssl.create_default_context(cafile="{pki_dir}/ca.crt")
    ctx.load_cert_chain("{pki_dir}/operator.crt", "{pki_dir}/operator.key")
    client = ModbusTlsClient("{host}", port={port}, sslctx=ctx); client.connect()
    print(client.read_holding_registers(0, count=2, device_id=1).registers)

or look at the handshake: openssl s_client -connect {host}:{port} -CAfile {pki_dir}/ca.crt \\
    -cert {pki_dir}/operator.crt -key {pki_dir}/operator.key
Metrics: curl http://{metrics_bind[0]}:{metrics_bind[1]}/metrics
""" + ("" if opcua is None else f"""OPC UA on {opcua} (SignAndEncrypt), with asyncua:

    from asyncua import Client
    from asyncua.crypto.security_policies import SecurityPolicyBasic256Sha256
    from asyncua.crypto.uacrypto import CertProperties
    client = Client("{opcua}"); client.application_uri = "urn:zonegate:dev-client"
    await client.set_security(SecurityPolicyBasic256Sha256, CertProperties("{pki_dir}/opcua-client.crt", "pem"),
                              CertProperties("{pki_dir}/opcua-client.key", "pem"))
    await client.load_client_certificate("{pki_dir}/opcua-user-operator.crt", "pem")
    await client.load_private_key("{pki_dir}/opcua-user-operator.key", extension="pem")
    async with client: ...
""") + ("" if enip is None else f"""EtherNet/IP over TLS on {enip[0]}:{enip[1]} (the press controller's tags),
with the demo's CIP client:

    import asyncio, ssl
    from zonegate.demo.cip_client import CipClient
    ctx = ssl.create_default_context(cafile="{pki_dir}/ca.crt")
    ctx.load_cert_chain("{pki_dir}/operator.crt", "{pki_dir}/operator.key")
    async def main():
        client = await CipClient.connect("{enip[0]}", {enip[1]}, ctx)
        print((await client.read("Press_Speed")).value()); await client.close()
    asyncio.run(main())
"""), flush=True)


def main(policy: Path | None, serve: bool) -> int:
    with tempfile.TemporaryDirectory(prefix="zonegate-demo-") as work:
        from zonegate.commands.run import run_on_event_loop

        try:
            return run_on_event_loop(tour(policy or DEFAULT_POLICY, serve, Path(work)))
        except KeyboardInterrupt:
            return 0
