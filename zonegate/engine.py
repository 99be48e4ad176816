"""The engine stage as the data plane sees it: the Rust engine's codes, names and Modbus refusals.

`zonegate._engine` speaks in small integers so the per-frame boundary stays cheap; the tables here turn
them into the stable names used in metrics labels, audit records and reports. `CompiledPolicy` is one
compiled policy (an immutable engine plus its name indices): a reload builds a new one and swaps it in.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, Final

from zonegate import _engine

# Indexed by the binding's integer codes (docs/engine.md sections 2 and 5).
VERDICTS: Final = ("allow", "deny", "would_deny")
REASONS: Final = (
    "allowed",  # 0
    "unknown_principal",  # 1
    "malformed",  # 2
    "no_matching_rule",  # 3
    "unit_not_allowed",  # 4
    "function_not_allowed",  # 5
    "address_out_of_range",  # 6
    "quantity_exceeded",  # 7
    "value_out_of_bounds",  # 8
    "rate_exceeded",  # 9
)
MALFORMED: Final = (
    "none",  # 0: well formed
    "truncated",  # 1
    "trailing_bytes",  # 2
    "bad_quantity",  # 3
    "bad_byte_count",  # 4
    "address_overflow",  # 5
    "bad_coil_value",  # 6
    "bad_subfunction",  # 7
    "bad_mei_type",  # 8
    "bad_reference_type",  # 9
    "bad_record",  # 10
    "bad_device_id_code",  # 11
)
TABLES: Final = ("coils", "discrete_inputs", "input_registers", "holding_registers", "file_records")
SPLIT_INVALID_REASONS: Final = ("", "protocol_id", "length")  # split() INVALID values, by code

# An index no policy holds: deciding with it denies as unknown principal (or matches no rule for a device).
UNKNOWN_INDEX: Final = 0xFFFF_FFFF

_EXCEPTION_ADU_LENGTH: Final = 3  # unit + function + exception code
_MIN_REQUEST_ADU: Final = 8  # MBAP header, unit and function code


def exception_response(adu: bytes, code: int) -> bytes:
    """The Modbus exception response to request `adu`: same transaction and unit, function | 0x80.

    ```
     0      2      4      6     7          8
     +------+------+------+-----+----------+------+
     | tid  | 0000 | 0003 |unit | fc|0x80  | code |
     +------+------+------+-----+----------+------+
    ```
    """
    if len(adu) < _MIN_REQUEST_ADU:
        raise ValueError(f"a request ADU has at least {_MIN_REQUEST_ADU} bytes, got {len(adu)}")
    if not 0 < code <= 0xFF:
        raise ValueError(f"exception code must be 1..255, got {code}")
    return (
        bytes(adu[0:2])
        + b"\x00\x00"
        + _EXCEPTION_ADU_LENGTH.to_bytes(2, "big")
        + bytes((adu[6], adu[7] | 0x80, code))
    )


class CompiledPolicy:
    """One compiled policy: the Rust engine built from an IR document, and name -> index maps."""

    __slots__ = ("engine", "ir", "principals", "devices")

    def __init__(self, ir: Mapping[str, Any]) -> None:
        self.ir: Mapping[str, Any] = MappingProxyType(dict(ir))
        self.engine: _engine.Engine = _engine.Engine(json.dumps(ir))
        self.principals: Mapping[str, int] = MappingProxyType(
            {p["name"]: i for i, p in enumerate(ir["principals"])}
        )
        self.devices: Mapping[str, int] = MappingProxyType({d["name"]: i for i, d in enumerate(ir["devices"])})

    @property
    def mode(self) -> str:
        return self.engine.mode

    def principal_index(self, name: str) -> int:
        """The principal's index, or UNKNOWN_INDEX (which the engine denies as unknown_principal)."""
        return self.principals.get(name, UNKNOWN_INDEX)

    def device_index(self, name: str) -> int:
        return self.devices.get(name, UNKNOWN_INDEX)

    def decide(self, principal: str, device: str, adu: bytes, now_ns: int | None = None) -> _engine.Decision:
        return self.engine.decide(self.principal_index(principal), self.device_index(device), adu, now_ns)
