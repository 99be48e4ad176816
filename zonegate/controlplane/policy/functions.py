"""Policy loading: Modbus function names, numbers and presets, resolved to the engine's function keys.

A function key is `(fc, sub)`: `sub` is the FC 8 sub-function or the FC 43 MEI type and `None` for
every other code (docs/engine.md, section 2). Policy authors write names from the Modbus Application
Protocol specification in snake_case, plain numbers, `8/4`-style pairs or `diagnostics/NAME` pairs, and
four presets. FC 8 and FC 43 always need their sub-function: a bare `8` would silently include
`restart_communications` and `force_listen_only_mode`, which take a device off the bus.
"""

from __future__ import annotations

from typing import Final

from .errors import FieldError

FunctionKey = tuple[int, int | None]

# Public request function codes the engine parses (docs/engine.md, section 2).
FUNCTION_NAMES: Final[dict[int, str]] = {
    1: "read_coils",
    2: "read_discrete_inputs",
    3: "read_holding_registers",
    4: "read_input_registers",
    5: "write_single_coil",
    6: "write_single_register",
    7: "read_exception_status",
    8: "diagnostics",
    11: "get_comm_event_counter",
    12: "get_comm_event_log",
    15: "write_multiple_coils",
    16: "write_multiple_registers",
    17: "report_server_id",
    20: "read_file_record",
    21: "write_file_record",
    22: "mask_write_register",
    23: "read_write_multiple_registers",
    24: "read_fifo_queue",
    43: "encapsulated_interface_transport",
}

# FC 8 sub-functions (Modbus Application Protocol v1.1b3, 6.8).
DIAGNOSTIC_NAMES: Final[dict[int, str]] = {
    0: "return_query_data",
    1: "restart_communications",
    2: "return_diagnostic_register",
    3: "change_ascii_input_delimiter",
    4: "force_listen_only_mode",
    10: "clear_counters_and_diagnostic_register",
    11: "return_bus_message_count",
    12: "return_bus_communication_error_count",
    13: "return_bus_exception_error_count",
    14: "return_server_message_count",
    15: "return_server_no_response_count",
    16: "return_server_nak_count",
    17: "return_server_busy_count",
    18: "return_bus_character_overrun_count",
    20: "clear_overrun_counter_and_flag",
}

# The specification's own longer spelling, accepted as a synonym.
DIAGNOSTIC_ALIASES: Final[dict[str, int]] = {"restart_communications_option": 1}

# FC 43 MEI types (6.19, 6.20, 6.21).
MEI_NAMES: Final[dict[int, str]] = {
    13: "can_open_general_reference",
    14: "read_device_identification",
}

SUB_FUNCTION_CODES: Final[dict[int, dict[int, str]]] = {8: DIAGNOSTIC_NAMES, 43: MEI_NAMES}

READ_ONLY: Final[frozenset[FunctionKey]] = frozenset(
    (fc, None) for fc in (1, 2, 3, 4, 20, 24)
)
READ_WRITE: Final[frozenset[FunctionKey]] = READ_ONLY | frozenset(
    (fc, None) for fc in (5, 6, 15, 16, 21, 22, 23)
)
# Counters and identification only: nothing that restarts, silences or clears the device.
DIAGNOSTICS: Final[frozenset[FunctionKey]] = frozenset(
    [(7, None), (11, None), (12, None), (17, None), (43, 14)]
    + [(8, sub) for sub in (0, 2, 11, 12, 13, 14, 15, 16, 17, 18)]
)
# Everything zonegate can parse. User-defined codes (65-72, 100-110) are never parsed and stay denied.
PROGRAMMING: Final[frozenset[FunctionKey]] = frozenset(
    [(fc, None) for fc in FUNCTION_NAMES if fc not in SUB_FUNCTION_CODES]
    + [(fc, sub) for fc, subs in SUB_FUNCTION_CODES.items() for sub in subs]
)

PRESETS: Final[dict[str, frozenset[FunctionKey]]] = {
    "read_only": READ_ONLY,
    "read_write": READ_WRITE,
    "diagnostics": DIAGNOSTICS,
    "programming": PROGRAMMING,
}

# Function codes that write, and the table each writes; the loader warns when an entry allows one
# of these but names no range of that table (such requests can never pass the address check).
WRITE_TABLES: Final[dict[int, str]] = {
    5: "coils",
    15: "coils",
    6: "holding_registers",
    16: "holding_registers",
    22: "holding_registers",
    23: "holding_registers",
    21: "file_records",
}

_BY_NAME: Final[dict[str, int]] = {name: fc for fc, name in FUNCTION_NAMES.items()}
_SUB_BY_NAME: Final[dict[int, dict[str, int]]] = {
    8: {**{name: sub for sub, name in DIAGNOSTIC_NAMES.items()}, **DIAGNOSTIC_ALIASES},
    43: {name: sub for sub, name in MEI_NAMES.items()},
}
# Sub-function names that read naturally on their own (`read_device_identification`).
_BARE_SUB_NAMES: Final[dict[str, FunctionKey]] = {
    **{name: (8, sub) for name, sub in _SUB_BY_NAME[8].items()},
    **{name: (43, sub) for name, sub in _SUB_BY_NAME[43].items()},
}


def all_spellings() -> list[str]:
    """Every name accepted in `functions`, for the JSON Schema and for "did you mean" hints."""
    names = list(PRESETS) + [n for n in FUNCTION_NAMES.values() if n not in PRESETS]
    names += [f"{FUNCTION_NAMES[fc]}/{sub_name}" for fc, subs in _SUB_BY_NAME.items() for sub_name in subs]
    names += list(_BARE_SUB_NAMES)
    return names


def function_label(key: FunctionKey) -> str:
    """The readable name of one function key, as the docs and warnings print it."""
    fc, sub = key
    name = FUNCTION_NAMES.get(fc, str(fc))
    if sub is None:
        return name
    return f"{name}/{SUB_FUNCTION_CODES[fc].get(sub, str(sub))}"


def _number(text: str) -> int | None:
    text = text.strip()
    return int(text) if text.isdigit() else None


def _code(fc: int) -> int:
    if not 0 <= fc <= 255:
        raise FieldError(f"function code {fc} is out of range 1-255")
    if fc not in FUNCTION_NAMES:
        raise FieldError(
            f"function code {fc} is not a public Modbus function zonegate parses; requests with it are always denied"
        )
    return fc


def _sub(fc: int, text: str) -> int:
    subs = SUB_FUNCTION_CODES.get(fc)
    if subs is None:
        raise FieldError(f"{FUNCTION_NAMES[fc]} ({fc}) has no sub-functions")
    number = _number(text)
    if number is not None:
        if number not in subs:
            kind = "sub-function" if fc == 8 else "MEI type"
            raise FieldError(f"{kind} {number} of function {fc} is not one zonegate parses")
        return number
    by_name = _SUB_BY_NAME[fc]
    if text in by_name:
        return by_name[text]
    raise FieldError(
        f"unknown {'sub-function' if fc == 8 else 'MEI type'} '{text}' of {FUNCTION_NAMES[fc]}",
        suggestion=_closest(text, list(by_name)),
    )


def resolve(item: object) -> frozenset[FunctionKey]:
    """One `functions` entry -> the function keys it allows. Raises FieldError."""
    if isinstance(item, bool) or not isinstance(item, (int, str)):
        raise FieldError("a function is a name, a number, 'FC/SUB' or a preset")
    if isinstance(item, int):
        fc = _code(item)
        if fc in SUB_FUNCTION_CODES:
            raise FieldError(_needs_sub(fc))
        return frozenset([(fc, None)])
    text = item.strip()
    if text in PRESETS:
        return PRESETS[text]
    if text in _BARE_SUB_NAMES:
        return frozenset([_BARE_SUB_NAMES[text]])
    if "/" in text:
        head, _, tail = text.partition("/")
        head, tail = head.strip(), tail.strip()
        number = _number(head)
        if number is not None:
            fc = _code(number)
        elif head in _BY_NAME:
            fc = _BY_NAME[head]
        else:
            raise FieldError(f"unknown function '{head}'", suggestion=_closest(head, list(_BY_NAME)))
        return frozenset([(fc, _sub(fc, tail))])
    number = _number(text)
    if number is not None:
        return resolve(number)
    if text in _BY_NAME:
        fc = _BY_NAME[text]
        if fc in SUB_FUNCTION_CODES:
            raise FieldError(_needs_sub(fc))
        return frozenset([(fc, None)])
    raise FieldError(f"unknown function '{text}'", suggestion=_closest(text, all_spellings()))


def _needs_sub(fc: int) -> str:
    example = "8/0 or diagnostics/return_query_data" if fc == 8 else "43/14 or read_device_identification"
    return f"{FUNCTION_NAMES[fc]} ({fc}) needs its sub-function named, e.g. {example}"


def _closest(word: str, candidates: list[str]) -> str | None:
    from difflib import get_close_matches

    found = get_close_matches(word, candidates, n=1, cutoff=0.6)
    return found[0] if found else None
