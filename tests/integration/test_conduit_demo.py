"""`zonegate demo` end to end (on free ports, so it can run beside a real demo): the tour's steps and the
audit lines of the refused writes appear in its output."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import require
from zonegate.demo.press import cpppo_missing
from zonegate.demo.stack import free_port

ROOT = Path(__file__).resolve().parents[2]
# every port demo.yaml names: the simulated PLCs', the listeners', the historian's, metrics and OPC UA
DEMO_PORTS = ("5020", "44818", "8802", "2221", "8803", "8502", "9802", "4840")


def demo_policy(tmp_path: Path, keep: tuple[str, ...] = ()) -> Path:
    """demo.yaml with every port but `keep` (host:port strings) moved to a free one."""
    text = (ROOT / "policies" / "demo.yaml").read_text()
    for port in DEMO_PORTS:
        kept = [k for k in keep if k.endswith(f":{port}")]
        if kept:
            continue
        text = text.replace(f":{port}", f":{free_port()}").replace(f"port: {port}", f"port: {free_port()}")
    policy = tmp_path / "demo.yaml"
    policy.write_text(text)
    return policy


def test_demo_tour(tmp_path: Path) -> None:
    require(cpppo_missing() is None, "cpppo (the press controller simulator) is not installed")
    policy = demo_policy(tmp_path)
    result = subprocess.run([sys.executable, "-m", "zonegate.cli", "demo", "-c", str(policy)], cwd=ROOT,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "refused with Modbus exception 01" in out
    assert "forwarded and written (mode monitor)" in out
    audit = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    modbus = [r for r in audit if r["conduit"] == "l3-modbus-security"]
    assert [(r["verdict"], r["values"]) for r in modbus][:3] == [
        ("allow", [800]), ("deny", [5000]), ("would_deny", [5000])]
    assert 'zonegate_requests_total{conduit="l3-modbus-security"' in out
    # the OPC UA part: the same PLC's tags read, the operator's write allowed, the historian's refused
    assert "OPC UA on opc.tcp://127.0.0.1:" in out and "Tank/Level = " in out
    assert "holding 100 on the PLC is now 600" in out
    assert "refused with BadUserAccessDenied; the PLC never saw it (0 writes reached it" in out
    opcua = [(r["principal"]["opcua_user"], r["verdict"], r["value"]) for r in audit if r["conduit"] == "opcua"]
    assert opcua == [("operator", "allow", 60.0), ("historian", "deny", 90.0)]
    assert 'zonegate_requests_total{conduit="opcua"' in out and "zonegate_opcua_sessions" in out
    # the EtherNet/IP part: the allowed write read back, the write to an unnamed tag and the Stop refused 0x0F
    assert "Press_Strokes = 128734" in out
    assert "written; read back through zonegate: Press_SpeedSP = 55" in out
    assert "refused with CIP general status 0x0F (privilege violation); the press never saw it" in out
    assert "refused with CIP general status 0x0F (privilege violation); the press keeps running" in out
    assert "on the press itself (zone side, past zonegate): Press_ForceLimit = 250.0" in out
    enip = [(r["function"], r["target"], r["verdict"], r["reason"], r.get("general_status"))
            for r in audit if r["conduit"] == "l3-enip"]
    assert enip == [("write_tag", "Press_SpeedSP", "allow", "allowed", None),
                    ("write_tag", "Press_ForceLimit", "deny", "target_not_allowed", 0x0F),
                    ("stop", "class 0x01 instance 1", "deny", "service_not_allowed", 0x0F)]
    assert 'zonegate_requests_total{conduit="l3-enip",device="press-plc",function="write_tag"' in out


def test_demo_without_cpppo_skips_the_ethernet_ip_part(tmp_path: Path) -> None:
    """cpppo is an optional extra: hidden from the interpreter, the demo says so in one line and runs the rest."""
    policy = demo_policy(tmp_path)
    hide = ("import sys; sys.modules['cpppo'] = None; from zonegate.cli import main; "
            f"sys.exit(main(['demo', '-c', {str(policy)!r}]))")
    result = subprocess.run([sys.executable, "-c", hide], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    skipped = [line for line in out.splitlines() if "EtherNet/IP part skipped" in line]
    assert skipped == ["== EtherNet/IP part skipped: cpppo is not installed (pip install -e '.[demo]')"]
    assert "Press_" not in out
    assert "refused with Modbus exception 01" in out and "holding 100 on the PLC is now 600" in out


def test_demo_serve_keeps_running_until_sigterm(tmp_path: Path) -> None:
    import select
    import signal
    import socket
    import time

    from zonegate.controlplane.pki import DevPki
    from zonegate.demo.stack import client_ssl_context

    listen = free_port()
    policy = demo_policy(tmp_path, keep=("127.0.0.1:8802",))
    policy.write_text(policy.read_text().replace("127.0.0.1:8802", f"127.0.0.1:{listen}"))
    process = subprocess.Popen([sys.executable, "-m", "zonegate.cli", "demo", "--serve", "-c", str(policy)],
                               cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        # Read the raw descriptor: a buffered readline() can swallow several lines at once, after which
        # select() would wait for output that has already arrived.
        received = b""
        deadline = time.monotonic() + 60
        while b"Metrics: curl" not in received:
            remaining = deadline - time.monotonic()
            assert remaining > 0 and process.poll() is None, received.decode(errors="replace")
            if select.select([process.stdout], [], [], remaining)[0]:
                received += os.read(process.stdout.fileno(), 65536)
        lines = received.decode().splitlines(keepends=True)
        pki_line = next(line for line in lines if "cafile=" in line)
        pki = DevPki(Path(pki_line.split('cafile="', 1)[1].split('"', 1)[0]).parent)
        context = client_ssl_context(pki, "operator")
        with socket.create_connection(("127.0.0.1", listen), timeout=5) as raw:
            with context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
                tls.sendall(bytes.fromhex("0001 0000 0006 01 03 0000 0002"))  # read holding 0-1
                reply = b""
                while len(reply) < 13:
                    chunk = tls.recv(13 - len(reply))
                    assert chunk, "connection closed before the reply"
                    reply += chunk
        assert reply[:9] == bytes.fromhex("0001 0000 0007 01 03 04")
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=30)
        assert process.returncode == 0, err
        assert "stopping" in out
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)
