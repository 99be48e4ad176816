"""Policy language: function names, numbers, FC 8 / FC 43 sub-functions and the presets."""

from __future__ import annotations

import pytest

from zonegate.controlplane.policy import functions as fn
from zonegate.controlplane.policy.errors import FieldError


def test_presets_hold_exactly_the_documented_codes() -> None:
    assert fn.READ_ONLY == {(1, None), (2, None), (3, None), (4, None), (20, None), (24, None)}
    assert fn.READ_WRITE == fn.READ_ONLY | {(5, None), (6, None), (15, None), (16, None), (21, None), (22, None), (23, None)}
    assert fn.DIAGNOSTICS == {(7, None), (11, None), (12, None), (17, None), (43, 14)} | {
        (8, sub) for sub in (0, 2, 11, 12, 13, 14, 15, 16, 17, 18)
    }
    every_sub = {(8, s) for s in fn.DIAGNOSTIC_NAMES} | {(43, 13), (43, 14)}
    plain = {(fc, None) for fc in fn.FUNCTION_NAMES if fc not in (8, 43)}
    assert fn.PROGRAMMING == plain | every_sub


@pytest.mark.parametrize("dangerous", [1, 3, 4, 10, 20])
def test_diagnostics_preset_leaves_out_state_changing_sub_functions(dangerous: int) -> None:
    assert (8, dangerous) not in fn.DIAGNOSTICS
    assert (8, dangerous) in fn.PROGRAMMING


@pytest.mark.parametrize(
    ("written", "keys"),
    [
        (3, {(3, None)}),
        ("3", {(3, None)}),
        ("read_holding_registers", {(3, None)}),
        ("8/4", {(8, 4)}),
        ("8/force_listen_only_mode", {(8, 4)}),
        ("diagnostics/force_listen_only_mode", {(8, 4)}),
        ("diagnostics/restart_communications", {(8, 1)}),
        ("diagnostics/restart_communications_option", {(8, 1)}),
        ("diagnostics/0", {(8, 0)}),
        ("return_query_data", {(8, 0)}),
        ("43/14", {(43, 14)}),
        ("encapsulated_interface_transport/read_device_identification", {(43, 14)}),
        ("read_device_identification", {(43, 14)}),
        ("can_open_general_reference", {(43, 13)}),
        ("read_fifo_queue", {(24, None)}),
        (" 16 ", {(16, None)}),
        ("read_only", fn.READ_ONLY),
        ("diagnostics", fn.DIAGNOSTICS),
    ],
)
def test_spellings(written: object, keys: set[fn.FunctionKey]) -> None:
    assert fn.resolve(written) == keys


@pytest.mark.parametrize(
    ("written", "message"),
    [
        (8, "diagnostics (8) needs its sub-function named, e.g. 8/0 or diagnostics/return_query_data"),
        (43, "encapsulated_interface_transport (43) needs its sub-function named, e.g. 43/14 or read_device_identification"),
        ("encapsulated_interface_transport", "encapsulated_interface_transport (43) needs its sub-function named, e.g. 43/14 or read_device_identification"),
        (0, "function code 0 is not a public Modbus function zonegate parses; requests with it are always denied"),
        (300, "function code 300 is out of range 1-255"),
        ("3/1", "read_holding_registers (3) has no sub-functions"),
        ("8/5", "sub-function 5 of function 8 is not one zonegate parses"),
        ("8/19", "sub-function 19 of function 8 is not one zonegate parses"),
        (True, "a function is a name, a number, 'FC/SUB' or a preset"),
        ("fly/1", "unknown function 'fly'"),
    ],
)
def test_rejected_spellings(written: object, message: str) -> None:
    with pytest.raises(FieldError) as caught:
        fn.resolve(written)
    assert caught.value.message == message


def test_suggestion_for_a_typo() -> None:
    with pytest.raises(FieldError) as caught:
        fn.resolve("read_only_")
    assert caught.value.suggestion == "read_only"


def test_labels() -> None:
    assert fn.function_label((8, 4)) == "diagnostics/force_listen_only_mode"
    assert fn.function_label((3, None)) == "read_holding_registers"
    assert fn.function_label((43, 14)) == "encapsulated_interface_transport/read_device_identification"
