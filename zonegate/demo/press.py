"""A simulated press controller for the demo: cpppo's EtherNet/IP (Logix) simulator, run as its own process.

cpppo is GPL and an optional `demo` extra: zonegate never imports it, it only starts
`python -m cpppo.server.enip` with this interpreter and talks to it over a loopback socket. The
simulator has no process logic; the demo commissions the tags below with plain Write Tags on the zone
side before zonegate starts.

| tag | type | meaning |
|---|---|---|
| Press_State | INT | 1 running |
| Press_Speed | INT | strokes per minute |
| Press_SpeedSP | INT | speed setpoint (the one tag an operator may write) |
| Press_Force | REAL | last stroke's force, kN |
| Press_Strokes | DINT | stroke counter |
| Press_ForceLimit | REAL | overload limit, kN (no rule names it: maintenance sets it on the zone side) |
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import sys
from pathlib import Path
from typing import Final

from zonegate.demo.cip_client import CipClient

TAGS: Final = {"Press_State": ("INT", 1), "Press_Speed": ("INT", 42), "Press_SpeedSP": ("INT", 42),
               "Press_Force": ("REAL", 118.5), "Press_Strokes": ("DINT", 128_734),
               "Press_ForceLimit": ("REAL", 250.0)}


def cpppo_missing() -> str | None:
    """Why the simulator cannot run here, or None. Looks the package up without importing it."""
    if importlib.util.find_spec("cpppo") is None:
        return "cpppo is not installed (pip install -e '.[demo]')"
    return None


class PressController:
    """The simulator process on host:port, with its tags commissioned."""

    def __init__(self, host: str, port: int, log: Path) -> None:
        self.host = host
        self.port = port
        self.log = log
        self.process: asyncio.subprocess.Process | None = None
        self._drain: asyncio.Task[None] | None = None

    async def start(self, timeout: float = 30.0) -> None:
        argv = ["--no-config", "--no-udp", "--address-output", "--address", f"{self.host}:{self.port}",
                *(f"{name}={type_name}" for name, (type_name, _value) in TAGS.items())]
        with self.log.open("wb") as err:
            self.process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "cpppo.server.enip", *argv, stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE, stderr=err, env=dict(os.environ, PYTHONUNBUFFERED="1"))
        try:
            try:
                await asyncio.wait_for(self._running(), timeout)
                client = await asyncio.wait_for(self._connect(), timeout)
            except asyncio.TimeoutError:
                # a TimeoutError is an OSError: say what timed out rather than look like a busy port
                raise RuntimeError(f"press simulator not listening on {self.host}:{self.port} after {timeout:g}s "
                                   f"(its log: {self.log})") from None
            try:
                for name, (type_name, value) in TAGS.items():
                    reply = await client.write(name, type_name, value)
                    if not reply.ok:
                        raise RuntimeError(f"press simulator refused {name} = {value}: {reply.status_text}")
            finally:
                await client.close()
        except BaseException:
            await self.stop()
            raise

    async def _running(self) -> None:
        """Until the simulator says it is listening ('... Server address = (host, port)', or with older
        cpppo '... running on (host, port)')."""
        assert self.process is not None and self.process.stdout is not None
        while True:
            line = await self.process.stdout.readline()
            if not line:
                tail = self.log.read_text(errors="replace").strip().splitlines()[-1:]
                raise RuntimeError(f"press simulator exited with {await self.process.wait()}: {' '.join(tail)}")
            if b"Server address" in line or b"running on" in line:
                self._drain = asyncio.ensure_future(self._discard(self.process.stdout))
                return

    @staticmethod
    async def _discard(stream: asyncio.StreamReader) -> None:
        # keep the pipe from filling if the simulator prints more
        while await stream.read(65536):
            pass

    async def _connect(self) -> CipClient:
        # the listening line comes just before accept() is ready: retry a refused connect, within the caller's bound
        while True:
            try:
                return await CipClient.connect(self.host, self.port)
            except ConnectionRefusedError:
                await asyncio.sleep(0.05)

    async def stop(self) -> None:
        process, self.process = self.process, None
        if process is not None and process.returncode is None:
            process.terminate()
            try:
                await asyncio.wait_for(process.wait(), 5)
            except asyncio.TimeoutError:
                process.kill()
                await process.wait()
        if self._drain is not None:
            self._drain.cancel()
            self._drain = None
