"""A simulated tank PLC (a pymodbus server on loopback), the zone-side device of the demo and tests.

Holding registers (zero-based, as on the wire):

| address | meaning |
|---|---|
| 0 | tank level, 0..1000 (moves toward the inflow setpoint while the process runs) |
| 1 | process ticks (increments on every access while the process runs) |
| 100..109 | setpoints (100: inflow setpoint, 0..1000) |
| 110..199 | spare, read-write |

The server counts every request it receives by function code, so a test can prove that a denied request
never reached the device.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from typing import Any

from pymodbus.constants import ExcCodes
from pymodbus.pdu import ModbusPDU
from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

LEVEL = 0
TICKS = 1
SETPOINT = 100
REGISTER_COUNT = 200


class SimulatedPlc:
    """One PLC on 127.0.0.1:`port` answering the given unit ids."""

    def __init__(self, port: int = 0, units: tuple[int, ...] = (1,), *, live: bool = False,
                 host: str = "127.0.0.1", initial: dict[int, int] | None = None) -> None:
        self.host = host
        self.port = port
        self.units = units
        self.live = live
        self.seen: Counter[int] = Counter()  # function code -> requests received
        self._registers: list[int] | None = None
        self._last_step = time.monotonic()
        self._initial = dict(initial or {})
        self.server: ModbusTcpServer | None = None

    @property
    def requests_seen(self) -> int:
        return sum(self.seen.values())

    def _trace(self, sending: bool, pdu: ModbusPDU) -> ModbusPDU:
        if not sending:
            self.seen[pdu.function_code] += 1
        return pdu

    async def _action(self, function_code: int, start_address: int, address: int, count: int,
                      current_registers: list[int], set_values: Any) -> ExcCodes | None:
        self._registers = current_registers
        if self.live:
            self._step(current_registers, start_address)
        return None

    def _step(self, registers: list[int], start: int) -> None:
        now = time.monotonic()
        elapsed = now - self._last_step
        self._last_step = now
        level, setpoint = registers[LEVEL - start], registers[SETPOINT - start]
        move = min(abs(setpoint - level), max(1, int(elapsed * 50)))
        registers[LEVEL - start] = level + move if setpoint > level else level - move
        registers[TICKS - start] = (registers[TICKS - start] + 1) & 0xFFFF

    def _device(self, unit: int) -> SimDevice:
        values = [self._initial.get(i, 0) for i in range(REGISTER_COUNT)]
        block = [SimData(address=0, values=values, datatype=DataType.REGISTERS)]
        bits = [SimData(address=0, count=64, values=False, datatype=DataType.BITS)]
        return SimDevice(id=unit, simdata=(bits, bits, block, block), action=self._action)

    async def start(self) -> int:
        """Start serving; returns the port (useful when asked for port 0)."""
        devices = [self._device(unit) for unit in self.units]
        self.server = ModbusTcpServer(
            devices if len(devices) > 1 else devices[0],
            address=(self.host, self.port),
            trace_pdu=self._trace,
        )
        await self.server.serve_forever(background=True)
        transport = self.server.transport
        if self.port == 0 and transport is not None:
            sockets = getattr(transport, "sockets", None)
            if sockets:
                self.port = int(sockets[0].getsockname()[1])
        return self.port

    async def stop(self) -> None:
        if self.server is not None:
            await self.server.shutdown()  # type: ignore[no-untyped-call]
            self.server = None


async def serve_forever(port: int) -> None:
    """Run the live tank PLC until cancelled."""
    plc = SimulatedPlc(port, live=True, initial={SETPOINT: 500})
    await plc.start()
    try:
        await asyncio.Event().wait()
    finally:
        await plc.stop()
