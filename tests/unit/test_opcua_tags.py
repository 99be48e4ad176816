"""OPC UA converter, pure parts: the register codec, tag checks, read coalescing and write ADUs."""

from __future__ import annotations

import math
import struct
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from zonegate import _engine
from zonegate.convert.opcua_poll import MAX_BITS, MAX_REGISTERS, ReadBlock, exception_status, plan_reads
from zonegate.convert.opcua_tags import (
    CodecError,
    accepts,
    Tag,
    TagError,
    decode,
    encode,
    settings_from_mapping,
    tags_from_mapping,
    within_limits,
)
from zonegate.convert.opcua_writes import write_adu


def tag(**fields: object) -> Tag:
    base = Tag(name="t", device="plc", table="holding_registers", address=10, type="uint16")
    return replace(base, **fields)  # type: ignore[arg-type]


# -- codec: readable vectors --------------------------------------------------------------------------------

VECTORS = [
    # (type, word_order, byte_order, registers as the device holds them, value)
    ("float32", "big", "big", [0x3FC0, 0x0000], 1.5),  # 1.5 = 0x3FC00000
    ("float32", "little", "big", [0x0000, 0x3FC0], 1.5),  # low word first
    ("float32", "big", "little", [0xC03F, 0x0000], 1.5),  # bytes swapped in each word
    ("float32", "little", "little", [0x0000, 0xC03F], 1.5),
    ("int32", "big", "big", [0xFFFF, 0xFFFE], -2),
    ("uint32", "big", "big", [0x0001, 0x0000], 65536),
    ("uint32", "little", "big", [0x0000, 0x0001], 65536),
    ("int16", "big", "big", [0xFFFB], -5),
    ("int16", "big", "little", [0xFBFF], -5),
    ("uint16", "big", "big", [0x1234], 0x1234),
    ("int64", "big", "big", [0xFFFF, 0xFFFF, 0xFFFF, 0xFFFF], -1),
    ("int64", "little", "big", [0x0004, 0x0003, 0x0002, 0x0001], 0x0001000200030004),
    ("uint64", "big", "big", [0x0001, 0x0002, 0x0003, 0x0004], 0x0001000200030004),
    ("float64", "big", "big", [0x3FF8, 0x0000, 0x0000, 0x0000], 1.5),  # 1.5 = 0x3FF8000000000000
    ("float64", "little", "big", [0x0000, 0x0000, 0x0000, 0x3FF8], 1.5),
]


@pytest.mark.parametrize(("kind", "word_order", "byte_order", "registers", "value"), VECTORS)
def test_codec_vectors(kind: str, word_order: str, byte_order: str, registers: list[int], value: object) -> None:
    t = tag(type=kind, word_order=word_order, byte_order=byte_order)
    assert decode(t, registers) == value
    assert encode(t, value) == registers


def test_strings_read_in_address_order_and_stop_at_nul() -> None:
    t = tag(type="string", length=4)
    assert decode(t, [0x4142, 0x4331, 0x0000, 0x0000]) == "ABC1"
    assert encode(t, "ABC1") == [0x4142, 0x4331, 0x0000, 0x0000]
    swapped = tag(type="string", length=2, byte_order="little")
    assert decode(swapped, [0x4241, 0x3143]) == "ABC1"
    assert encode(swapped, "ABC1") == [0x4241, 0x3143]
    with pytest.raises(CodecError):
        encode(tag(type="string", length=1), "ABC")


def test_bools_in_bit_tables() -> None:
    t = tag(table="coils", type="bool")
    assert decode(t, [1]) is True and decode(t, [0]) is False
    assert encode(t, True) == [1] and encode(t, False) == [0]
    with pytest.raises(CodecError):
        encode(t, 2)


def test_scale_and_offset_map_raw_to_engineering() -> None:
    level = tag(scale=0.1)
    assert decode(level, [425]) == pytest.approx(42.5)
    assert encode(level, 42.5) == [425]
    celsius = tag(type="int16", scale=0.5, offset=-40.0)
    assert decode(celsius, [0]) == -40.0
    assert encode(celsius, 20.0) == [120]
    with pytest.raises(CodecError):
        encode(level, 7000.0)  # raw 70000 does not fit uint16


@pytest.mark.parametrize(
    ("t", "value"),
    [
        (tag(type="uint16"), -1),
        (tag(type="uint16"), 65536),
        (tag(type="int16"), 32768),
        (tag(type="int32"), 1.5),  # not an integer
        (tag(type="uint16"), "12"),
        (tag(type="uint16"), True),
        (tag(type="int32"), math.nan),
        (tag(type="float32"), 1e300),  # overflows float32
    ],
)
def test_values_that_do_not_fit_are_refused(t: Tag, value: object) -> None:
    with pytest.raises(CodecError):
        encode(t, value)


@given(
    kind=st.sampled_from(["int16", "uint16", "int32", "uint32", "int64", "uint64"]),
    word_order=st.sampled_from(["big", "little"]),
    byte_order=st.sampled_from(["big", "little"]),
    data=st.data(),
)
def test_integer_round_trip(kind: str, word_order: str, byte_order: str, data: st.DataObject) -> None:
    bits = {"int16": 16, "uint16": 16, "int32": 32, "uint32": 32, "int64": 64, "uint64": 64}[kind]
    signed = not kind.startswith("u")
    lo, hi = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else (0, (1 << bits) - 1)
    value = data.draw(st.integers(lo, hi))
    t = tag(type=kind, word_order=word_order, byte_order=byte_order)
    registers = encode(t, value)
    assert all(0 <= r <= 0xFFFF for r in registers) and len(registers) == bits // 16
    assert decode(t, registers) == value


@given(value=st.floats(width=32, allow_nan=False), word_order=st.sampled_from(["big", "little"]),
       byte_order=st.sampled_from(["big", "little"]))
def test_float32_round_trip(value: float, word_order: str, byte_order: str) -> None:
    t = tag(type="float32", word_order=word_order, byte_order=byte_order)
    assert decode(t, encode(t, value)) == struct.unpack(">f", struct.pack(">f", value))[0]


def test_kinds_of_value_each_tag_accepts() -> None:
    assert accepts(tag(), 5) and accepts(tag(), 5.5) and not accepts(tag(), "5") and not accepts(tag(), True)
    assert accepts(tag(table="coils", type="bool"), True) and not accepts(tag(table="coils", type="bool"), 2)
    assert accepts(tag(type="string", length=2), "ab") and not accepts(tag(type="string", length=2), 1)


def test_limits() -> None:
    t = tag(min=0.0, max=800.0)
    assert within_limits(t, 800) and within_limits(t, 0.0)
    assert not within_limits(t, 800.5) and not within_limits(t, -1) and not within_limits(t, "5")
    assert within_limits(tag(), 1e9)


# -- tag checks -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"table": "coils", "address": 0, "type": "uint16"}, "holds bits"),
        ({"table": "holding", "address": 0, "type": "bool"}, "bit table"),
        ({"table": "input", "address": 0, "type": "uint16", "writable": True}, "read-only"),
        ({"table": "holding", "address": 65535, "type": "uint32"}, "do not fit"),
        ({"table": "holding", "address": 0, "type": "string"}, "length"),
        ({"table": "holding", "address": 0, "type": "decimal"}, "not one of"),
        ({"table": "registers", "address": 0, "type": "uint16"}, "table must be"),
        ({"table": "holding", "address": 0, "type": "uint16", "scale": 0}, "non-zero"),
        ({"table": "holding", "address": 0, "type": "uint16", "min": 5, "max": 1}, "above max"),
        ({"table": "holding", "address": 0, "type": "uint16", "max": 70000}, "outside what a uint16"),
        ({"table": "holding", "address": 0, "type": "uint16", "scan": "fast"}, "duration"),
        ({"table": "holding", "address": 0, "type": "uint16", "word_order": "middle"}, "word_order"),
    ],
)
def test_tag_definitions_that_cannot_work_are_refused(entry: dict[str, object], message: str) -> None:
    with pytest.raises(TagError, match=message):
        tags_from_mapping({"plc": [{"name": "x", **entry}]})


def test_overlapping_tags_and_duplicate_names_are_refused() -> None:
    with pytest.raises(TagError, match="overlap"):
        tags_from_mapping({"plc": [
            {"name": "a", "table": "holding", "address": 0, "type": "float32"},
            {"name": "b", "table": "holding", "address": 1, "type": "uint16"},
        ]})
    with pytest.raises(TagError, match="twice"):
        tags_from_mapping({"plc": [
            {"name": "a", "table": "holding", "address": 0, "type": "uint16"},
            {"name": "a", "table": "holding", "address": 5, "type": "uint16"},
        ]})


def test_scan_classes_and_settings() -> None:
    settings = settings_from_mapping(
        {"bind": "127.0.0.1:4841", "poll_principal": "gateway", "scan_classes": {"fast": "100ms", "slow": "5s"},
         "default_scan": "slow", "cert": {"cert": "s.crt", "key": "s.key", "ca": "ca.crt"}},
        {"plc": [{"name": "a", "table": "holding", "address": 0, "type": "uint16", "scan": "fast"},
                 {"name": "b", "table": "holding", "address": 1, "type": "uint16"},
                 {"name": "c", "table": "holding", "address": 2, "type": "uint16", "scan": "250ms"}]},
        {"plc": 3},
    )
    assert [t.scan for t in settings.tags] == [0.1, 5.0, 0.25]
    assert all(t.modbus_unit == 3 for t in settings.tags)
    assert (settings.host, settings.port) == ("127.0.0.1", 4841)
    assert settings.modes == ("SignAndEncrypt",)
    assert set(settings.security) == {"Basic256Sha256", "Aes128_Sha256_RsaOaep", "Aes256_Sha256_RsaPss"}
    with pytest.raises(TagError, match="poll_principal"):
        settings_from_mapping({"cert": {"cert": "a", "key": "b", "ca": "c"}}, {})


# -- coalescing -----------------------------------------------------------------------------------------------


def test_neighbours_share_one_read_within_the_function_code_limit() -> None:
    tags = [tag(name=f"r{i}", address=i * 10, type="uint32") for i in range(20)]  # 0..191
    blocks = plan_reads(tags)
    assert [(b.start, b.count) for b in blocks] == [(0, 122), (130, 62)]
    assert all(b.count <= MAX_REGISTERS for b in blocks)
    assert sum(len(b.tags) for b in blocks) == 20


def test_bits_coalesce_up_to_2000() -> None:
    tags = [tag(name=f"c{i}", table="coils", type="bool", address=i * 100) for i in range(30)]  # 0..2900
    blocks = plan_reads(tags)
    assert [(b.start, b.count) for b in blocks] == [(0, 1901), (2000, 901)]
    assert all(b.count <= MAX_BITS for b in blocks)


def test_scan_classes_units_and_tables_read_apart() -> None:
    tags = [
        tag(name="a", address=0),
        tag(name="b", address=1, scan=0.1),
        tag(name="c", address=2, modbus_unit=2),
        tag(name="d", address=3, table="input_registers"),
        tag(name="e", address=4),
    ]
    blocks = plan_reads(tags)
    assert sorted((b.table, b.unit, b.scan, b.start, b.count) for b in blocks) == [
        ("holding_registers", 1, 0.1, 1, 1),
        ("holding_registers", 1, 1.0, 0, 5),
        ("holding_registers", 2, 1.0, 2, 1),
        ("input_registers", 1, 1.0, 3, 1),
    ]


def test_read_adu_and_reply_parsing() -> None:
    block = ReadBlock("plc", 1, "holding_registers", 100, 2, 1.0, ())
    adu = block.adu(0x0102)
    # tid 0102, protocol 0, length 6, unit 1, fc 3, start 100, quantity 2
    assert adu == bytes.fromhex("0102 0000 0006 01 03 0064 0002")
    request = _engine.parse_request(adu)
    assert request.malformed == 0 and request.ranges == [(3, 100, 101, False)]
    reply = bytes.fromhex("0102 0000 0007 01 03 04 1234 ABCD")
    assert block.values(reply) == [0x1234, 0xABCD]
    with pytest.raises(ValueError):
        block.values(bytes.fromhex("0102 0000 0005 01 03 02 1234"))  # one register short
    bits = ReadBlock("plc", 1, "coils", 0, 10, 1.0, ())
    assert bits.values(bytes.fromhex("0001 0000 0005 01 01 02 05 02")) == [1, 0, 1, 0, 0, 0, 0, 0, 0, 1]


def test_modbus_exceptions_map_to_matching_bad_status() -> None:
    assert exception_status(0x0A) == 0x80310000  # BadNoCommunication
    assert exception_status(0x0B) == 0x80050000  # BadCommunicationError
    assert exception_status(0x02) == 0x803C0000  # BadOutOfRange
    assert exception_status(0x99) == 0x80050000


# -- write ADUs ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("t", "raw", "expected"),
    [
        # unit 1, fc 5, address 3, 0xFF00 = on
        (tag(table="coils", type="bool", address=3), [1], "0007 0000 0006 01 05 0003 FF00"),
        (tag(table="coils", type="bool", address=3), [0], "0007 0000 0006 01 05 0003 0000"),
        # fc 6, address 10, value
        (tag(), [0x1234], "0007 0000 0006 01 06 000A 1234"),
        # fc 16, address 10, quantity 2, byte count 4, values
        (tag(type="uint32"), [0x0001, 0x0002], "0007 0000 000B 01 10 000A 0002 04 0001 0002"),
    ],
)
def test_write_adus_are_the_requests_a_modbus_client_would_send(t: Tag, raw: list[int], expected: str) -> None:
    adu = write_adu(t, raw, 7)
    assert adu == bytes.fromhex(expected)
    request = _engine.parse_request(adu)
    assert request.malformed == 0
    assert [v for _t, _a, v in request.values] == raw


def test_multiple_coils_use_fc15() -> None:
    adu = write_adu(tag(table="coils", type="bool", address=0), [1, 0, 1], 1)
    # fc 15, address 0, quantity 3, byte count 1, bits 101
    assert adu == bytes.fromhex("0001 0000 0008 01 0F 0000 0003 01 05")
    assert _engine.parse_request(adu).malformed == 0


def test_writers_are_principals_whose_rules_cover_the_whole_tag() -> None:
    from zonegate.convert.opcua_writes import writers_of

    def entry(functions: list[int], start: int, end: int, table: str = "holding_registers") -> dict[str, object]:
        ranges: dict[str, list[dict[str, object]]] = {t: [] for t in ("coils", "discrete_inputs", "input_registers",
                                                                       "holding_registers", "file_records")}
        ranges[table] = [{"start": start, "end": end, "min": None, "max": None, "signed": False}]
        return {"functions": [[fc, None] for fc in functions], "ranges": ranges, "max_quantity": None, "rate": None}

    ir = {
        "principals": [{"name": n} for n in ("historian", "engineer", "viewer")],
        "devices": [{"name": "plc"}, {"name": "other"}],
        "rules": [
            {"id": "a", "principals": [0], "devices": [0], "units": None, "allow": [entry([6], 100, 100)]},
            {"id": "b", "principals": [1], "devices": [0], "units": None,
             "allow": [entry([16], 100, 100), entry([16], 101, 101)]},  # ranges of two entries never join
            {"id": "c", "principals": [2], "devices": [1], "units": None, "allow": [entry([6, 16], 0, 999)]},
        ],
    }
    assert writers_of(ir, tag(address=100)) == {"historian"}  # FC 6 only
    assert writers_of(ir, tag(address=100, type="uint32")) == set()  # FC 16 over 100..101, split across entries
    adjacent = entry([16], 100, 100)
    adjacent["ranges"]["holding_registers"].append(  # type: ignore[index]
        {"start": 101, "end": 101, "min": None, "max": None, "signed": False})
    ir["rules"][1]["allow"] = [adjacent]  # adjacent ranges of one entry join
    assert writers_of(ir, tag(address=100, type="uint32")) == {"engineer"}
    assert writers_of(ir, tag(address=100, device="other")) == {"viewer"}


def test_writers_are_principals_whose_rules_reach_the_tags_unit() -> None:
    from zonegate.convert.opcua_writes import writers_of

    ranges: dict[str, list[dict[str, object]]] = {t: [] for t in ("coils", "discrete_inputs", "input_registers",
                                                                   "holding_registers", "file_records")}
    ranges["holding_registers"] = [{"start": 0, "end": 999, "min": None, "max": None, "signed": False}]
    allow = [{"functions": [[6, None]], "ranges": ranges, "max_quantity": None, "rate": None}]
    ir = {
        "principals": [{"name": n} for n in ("unit2", "any", "device")],
        "devices": [{"name": "plc", "units": [[1, 3]]}],
        "rules": [
            {"id": "a", "principals": [0], "devices": [0], "units": [[2, 2]], "allow": allow},
            {"id": "b", "principals": [1], "devices": [0], "units": [[0, 255]], "allow": allow},
            {"id": "c", "principals": [2], "devices": [0], "units": None, "allow": allow},  # the device's units
        ],
    }
    assert writers_of(ir, tag(address=100, modbus_unit=1)) == {"any", "device"}
    assert writers_of(ir, tag(address=100, modbus_unit=2)) == {"unit2", "any", "device"}
    assert writers_of(ir, tag(address=100, modbus_unit=7)) == {"any"}


# -- the policy loader and the converter agree ------------------------------------------------------------

AGREEMENT_POLICY = """\
version: 1
zones:
  cell-a: {subnet: 192.168.10.0/24}
devices:
  plc:
    zone: cell-a
    modbus: {host: 127.0.0.1, port: 5020, units: [1], timeout: 3s}
principals:
  poller: {gateway: true}
rules:
  - id: poll
    principal: poller
    device: plc
    allow:
      - {functions: [read_holding_registers], holding: 0-199}
opcua:
  poll_principal: poller
  tls: {cert: opcua.crt, key: opcua.key, ca: ca.crt}
  %s
tags:
  plc:
    - {name: Floor, table: holding, address: 0, type: int16, writable: true, min: -5}
    - {name: Ceiling, table: holding, address: 1, type: uint16, writable: true, max: 1000}
    - {name: Counter, table: holding, address: 4, type: uint64, writable: true, max: 18446744073709551615}
    - {name: Odometer, table: holding, address: 8, type: uint64, writable: true, min: 18446744073709551000}
"""


def _load_agreement(tmp_path: Path, opcua_keys: str = "") -> Any:
    from zonegate.controlplane.policy import load

    policy_file = tmp_path / "policy.yaml"
    policy_file.write_text(AGREEMENT_POLICY % opcua_keys)
    return load([policy_file], pki_dir=tmp_path)


def test_a_lone_min_or_max_and_uint64_limits_mean_the_same_to_loader_and_converter(tmp_path: Path) -> None:
    from zonegate.convert.opcua_tags import settings_from_policy, within_limits

    policy = _load_agreement(tmp_path)
    loaded = {t.name: t for t in policy.tags["plc"]}
    served = {t.name: t for t in settings_from_policy(policy).tags}
    for name in loaded:
        assert (served[name].min, served[name].max) == (loaded[name].min, loaded[name].max), name
    assert served["Counter"].max == 2**64 - 1 and isinstance(served["Counter"].max, int)  # exact, not a float
    assert served["Counter"].type == "uint64" and served["Counter"].words == 4
    cases = {
        "Floor": [(-5, True), (-6, False), (32767, True)],
        "Ceiling": [(1000, True), (1001, False), (0, True)],
        "Counter": [(2**64 - 1, True), (2**64, False), (0, True)],
        "Odometer": [(2**64 - 1, True), (18446744073709551000, True), (18446744073709550999, False)],
    }
    for name, values in cases.items():
        for value, inside in values:
            assert within_limits(served[name], value) is inside, (name, value)
    assert encode(served["Counter"], 2**64 - 1) == [0xFFFF] * 4


def test_a_uint64_limit_beyond_the_type_is_refused_by_both(tmp_path: Path) -> None:
    from zonegate.controlplane.policy import PolicyError
    from zonegate.convert.opcua_tags import tags_from_mapping

    policy_file = tmp_path / "policy.yaml"
    policy_file.write_text((AGREEMENT_POLICY % "").replace("18446744073709551615", "18446744073709551616"))
    with pytest.raises(PolicyError, match="outside what a uint64"):
        from zonegate.controlplane.policy import load

        load([policy_file], pki_dir=tmp_path)
    with pytest.raises(TagError, match="outside what a uint64"):
        tags_from_mapping({"plc": [{"name": "C", "table": "holding", "address": 4, "type": "uint64",
                                    "max": 2**64}]})


def test_opcua_application_uri_and_timeout_keys(tmp_path: Path) -> None:
    from zonegate.convert.opcua_tags import DEFAULT_APPLICATION_URI, settings_from_policy

    defaults = settings_from_policy(_load_agreement(tmp_path))
    assert (defaults.application_uri, defaults.timeout) == (DEFAULT_APPLICATION_URI, 3.0)  # the device's timeout
    chosen = settings_from_policy(_load_agreement(tmp_path, "application_uri: urn:plant:gw-7\n  timeout: 750ms"))
    assert (chosen.application_uri, chosen.timeout) == ("urn:plant:gw-7", 0.75)
