"""Request vectors for the parsing stage: every public function code, well formed and malformed.

Each vector is one ADU with a comment on every field and the decode docs/engine.md section 2 expects.
Tables and access are spelled out (`"coils"`, `"read"`) so a vector reads without the code tables.
Addresses are zero-based, as on the wire.
"""

from __future__ import annotations

from dataclasses import dataclass

Touch = tuple[str, int, int, str]  # (table, first address, last address, "read" | "write")
Value = tuple[str, int, int]  # (table, address, value)


@dataclass(frozen=True)
class Ok:
    """A well-formed request: what it touches and writes."""

    function: int
    unit: int
    sub: int | None = None
    quantity: int = 0
    ranges: tuple[Touch, ...] = ()
    values: tuple[Value, ...] = ()
    known: bool = True


@dataclass(frozen=True)
class Bad:
    """A framed request its function's structure rejects; `kind` is the first failing check."""

    kind: str
    function: int
    unit: int


@dataclass(frozen=True)
class RequestVector:
    name: str
    adu: bytes
    expect: Ok | Bad


V = RequestVector

# fmt: off
REQUESTS: tuple[RequestVector, ...] = (
    # ---- FC 1 read_coils ---------------------------------------------------------------------
    V("read_coils",
      b"\x00\x01"  # transaction id 1
      b"\x00\x00"  # protocol id 0
      b"\x00\x06"  # length 6: unit + 5-byte PDU
      b"\x01"      # unit 1
      b"\x01"      # function 1 read_coils
      b"\x00\x13"  # start 19
      b"\x00\x25", # quantity 37
      Ok(1, 1, quantity=37, ranges=(("coils", 19, 55, "read"),))),
    V("read_coils_max_quantity_at_top",
      b"\x00\x02"  # transaction id 2
      b"\x00\x00"  # protocol id 0
      b"\x00\x06"  # length 6
      b"\x01"      # unit 1
      b"\x01"      # function 1 read_coils
      b"\xf8\x30"  # start 63536
      b"\x07\xd0", # quantity 2000: last address 65535, the top of the table
      Ok(1, 1, quantity=2000, ranges=(("coils", 63536, 65535, "read"),))),
    V("read_coils_quantity_zero",
      b"\x00\x03"  # transaction id 3
      b"\x00\x00"  # protocol id 0
      b"\x00\x06"  # length 6
      b"\x01"      # unit 1
      b"\x01"      # function 1 read_coils
      b"\x00\x00"  # start 0
      b"\x00\x00", # quantity 0: below 1
      Bad("bad_quantity", 1, 1)),
    V("read_coils_quantity_2001",
      b"\x00\x04"  # transaction id 4
      b"\x00\x00"  # protocol id 0
      b"\x00\x06"  # length 6
      b"\x01"      # unit 1
      b"\x01"      # function 1 read_coils
      b"\x00\x00"  # start 0
      b"\x07\xd1", # quantity 2001: above 2000
      Bad("bad_quantity", 1, 1)),
    V("read_coils_past_65535",
      b"\x00\x05"  # transaction id 5
      b"\x00\x00"  # protocol id 0
      b"\x00\x06"  # length 6
      b"\x01"      # unit 1
      b"\x01"      # function 1 read_coils
      b"\xff\xff"  # start 65535
      b"\x00\x02", # quantity 2: start + quantity = 65537 > 65536
      Bad("address_overflow", 1, 1)),
    V("read_coils_short",
      b"\x00\x06"  # transaction id 6
      b"\x00\x00"  # protocol id 0
      b"\x00\x05"  # length 5
      b"\x01"      # unit 1
      b"\x01"      # function 1 read_coils
      b"\x00\x00"  # start 0
      b"\x00",     # quantity: one byte of two
      Bad("truncated", 1, 1)),
    V("read_coils_trailing",
      b"\x00\x07"  # transaction id 7
      b"\x00\x00"  # protocol id 0
      b"\x00\x07"  # length 7
      b"\x01"      # unit 1
      b"\x01"      # function 1 read_coils
      b"\x00\x00"  # start 0
      b"\x00\x01"  # quantity 1
      b"\x00",     # one byte too many
      Bad("trailing_bytes", 1, 1)),
    V("read_coils_trailing_before_bad_quantity",
      b"\x00\x08"  # transaction id 8
      b"\x00\x00"  # protocol id 0
      b"\x00\x07"  # length 7
      b"\x01"      # unit 1
      b"\x01"      # function 1 read_coils
      b"\x00\x00"  # start 0
      b"\x00\x00"  # quantity 0 (bad, but the length is checked first)
      b"\x00",     # one byte too many
      Bad("trailing_bytes", 1, 1)),
    # ---- FC 2 read_discrete_inputs -----------------------------------------------------------
    V("read_discrete_inputs",
      b"\x00\x10"  # transaction id 16
      b"\x00\x00"  # protocol id 0
      b"\x00\x06"  # length 6
      b"\x02"      # unit 2
      b"\x02"      # function 2 read_discrete_inputs
      b"\x00\xc4"  # start 196
      b"\x00\x16", # quantity 22
      Ok(2, 2, quantity=22, ranges=(("discrete_inputs", 196, 217, "read"),))),
    V("read_discrete_inputs_quantity_2001",
      b"\x00\x11"  # transaction id 17
      b"\x00\x00"  # protocol id 0
      b"\x00\x06"  # length 6
      b"\x02"      # unit 2
      b"\x02"      # function 2 read_discrete_inputs
      b"\x00\x00"  # start 0
      b"\x07\xd1", # quantity 2001
      Bad("bad_quantity", 2, 2)),
    # ---- FC 3 read_holding_registers ---------------------------------------------------------
    V("read_holding_registers",
      b"\x00\x20"  # transaction id 32
      b"\x00\x00"  # protocol id 0
      b"\x00\x06"  # length 6
      b"\x11"      # unit 17
      b"\x03"      # function 3 read_holding_registers
      b"\x00\x6b"  # start 107
      b"\x00\x03", # quantity 3
      Ok(3, 17, quantity=3, ranges=(("holding_registers", 107, 109, "read"),))),
    V("read_holding_registers_quantity_125",
      b"\x00\x21"  # transaction id 33
      b"\x00\x00"  # protocol id 0
      b"\x00\x06"  # length 6
      b"\x00"      # unit 0 (broadcast address, still parsed)
      b"\x03"      # function 3
      b"\x00\x00"  # start 0
      b"\x00\x7d", # quantity 125: the most one read may ask
      Ok(3, 0, quantity=125, ranges=(("holding_registers", 0, 124, "read"),))),
    V("read_holding_registers_quantity_126",
      b"\x00\x22"  # transaction id 34
      b"\x00\x00"  # protocol id 0
      b"\x00\x06"  # length 6
      b"\x01"      # unit 1
      b"\x03"      # function 3
      b"\x00\x00"  # start 0
      b"\x00\x7e", # quantity 126
      Bad("bad_quantity", 3, 1)),
    V("read_holding_registers_past_65535",
      b"\x00\x23"  # transaction id 35
      b"\x00\x00"  # protocol id 0
      b"\x00\x06"  # length 6
      b"\x01"      # unit 1
      b"\x03"      # function 3
      b"\xff\xf0"  # start 65520
      b"\x00\x11", # quantity 17: start + quantity = 65537
      Bad("address_overflow", 3, 1)),
    V("read_holding_registers_no_data",
      b"\x00\x24"  # transaction id 36
      b"\x00\x00"  # protocol id 0
      b"\x00\x02"  # length 2: unit and function only
      b"\x01"      # unit 1
      b"\x03",     # function 3, no start or quantity
      Bad("truncated", 3, 1)),
    # ---- FC 4 read_input_registers -----------------------------------------------------------
    V("read_input_registers",
      b"\x00\x30"  # transaction id 48
      b"\x00\x00"  # protocol id 0
      b"\x00\x06"  # length 6
      b"\x01"      # unit 1
      b"\x04"      # function 4 read_input_registers
      b"\x00\x08"  # start 8
      b"\x00\x01", # quantity 1
      Ok(4, 1, quantity=1, ranges=(("input_registers", 8, 8, "read"),))),
    V("read_input_registers_quantity_0",
      b"\x00\x31"  # transaction id 49
      b"\x00\x00"  # protocol id 0
      b"\x00\x06"  # length 6
      b"\x01"      # unit 1
      b"\x04"      # function 4
      b"\x00\x08"  # start 8
      b"\x00\x00", # quantity 0
      Bad("bad_quantity", 4, 1)),
    # ---- FC 5 write_single_coil --------------------------------------------------------------
    V("write_single_coil_on",
      b"\x00\x40"  # transaction id 64
      b"\x00\x00"  # protocol id 0
      b"\x00\x06"  # length 6
      b"\x01"      # unit 1
      b"\x05"      # function 5 write_single_coil
      b"\x00\xac"  # address 172
      b"\xff\x00", # value 0xFF00: on
      Ok(5, 1, quantity=1, ranges=(("coils", 172, 172, "write"),), values=(("coils", 172, 1),))),
    V("write_single_coil_off",
      b"\x00\x41"  # transaction id 65
      b"\x00\x00"  # protocol id 0
      b"\x00\x06"  # length 6
      b"\x01"      # unit 1
      b"\x05"      # function 5
      b"\xff\xff"  # address 65535
      b"\x00\x00", # value 0x0000: off
      Ok(5, 1, quantity=1, ranges=(("coils", 65535, 65535, "write"),), values=(("coils", 65535, 0),))),
    V("write_single_coil_value_0001",
      b"\x00\x42"  # transaction id 66
      b"\x00\x00"  # protocol id 0
      b"\x00\x06"  # length 6
      b"\x01"      # unit 1
      b"\x05"      # function 5
      b"\x00\x01"  # address 1
      b"\x00\x01", # value 0x0001: neither 0x0000 nor 0xFF00
      Bad("bad_coil_value", 5, 1)),
    V("write_single_coil_value_ffff",
      b"\x00\x43"  # transaction id 67
      b"\x00\x00"  # protocol id 0
      b"\x00\x06"  # length 6
      b"\x01"      # unit 1
      b"\x05"      # function 5
      b"\x00\x01"  # address 1
      b"\xff\xff", # value 0xFFFF
      Bad("bad_coil_value", 5, 1)),
    # ---- FC 6 write_single_register ----------------------------------------------------------
    V("write_single_register",
      b"\x00\x50"  # transaction id 80
      b"\x00\x00"  # protocol id 0
      b"\x00\x06"  # length 6
      b"\x01"      # unit 1
      b"\x06"      # function 6 write_single_register
      b"\x00\x64"  # address 100
      b"\xfc\x18", # value 0xFC18 (-1000 as i16, 64536 as u16)
      Ok(6, 1, quantity=1, ranges=(("holding_registers", 100, 100, "write"),),
         values=(("holding_registers", 100, 0xFC18),))),
    V("write_single_register_trailing",
      b"\x00\x51"  # transaction id 81
      b"\x00\x00"  # protocol id 0
      b"\x00\x08"  # length 8
      b"\x01"      # unit 1
      b"\x06"      # function 6
      b"\x00\x64"  # address 100
      b"\x00\x01"  # value 1
      b"\x00\x02", # a second value nobody asked for
      Bad("trailing_bytes", 6, 1)),
    # ---- FC 7 read_exception_status ----------------------------------------------------------
    V("read_exception_status",
      b"\x00\x60"  # transaction id 96
      b"\x00\x00"  # protocol id 0
      b"\x00\x02"  # length 2
      b"\x01"      # unit 1
      b"\x07",     # function 7 read_exception_status, no data
      Ok(7, 1)),
    V("read_exception_status_trailing",
      b"\x00\x61"  # transaction id 97
      b"\x00\x00"  # protocol id 0
      b"\x00\x03"  # length 3
      b"\x01"      # unit 1
      b"\x07"      # function 7
      b"\x00",     # no data expected
      Bad("trailing_bytes", 7, 1)),
    # ---- FC 8 diagnostics --------------------------------------------------------------------
    V("diagnostics_return_query_data",
      b"\x00\x70"  # transaction id 112
      b"\x00\x00"  # protocol id 0
      b"\x00\x08"  # length 8
      b"\x01"      # unit 1
      b"\x08"      # function 8 diagnostics
      b"\x00\x00"  # sub-function 0 return_query_data
      b"\xa5\x37"  # query data word 1
      b"\x12\x34", # query data word 2
      Ok(8, 1, sub=0)),
    V("diagnostics_return_query_data_empty",
      b"\x00\x71"  # transaction id 113
      b"\x00\x00"  # protocol id 0
      b"\x00\x04"  # length 4
      b"\x01"      # unit 1
      b"\x08"      # function 8
      b"\x00\x00", # sub-function 0 with no data: an even (zero) number of bytes
      Ok(8, 1, sub=0)),
    V("diagnostics_return_query_data_odd",
      b"\x00\x72"  # transaction id 114
      b"\x00\x00"  # protocol id 0
      b"\x00\x05"  # length 5
      b"\x01"      # unit 1
      b"\x08"      # function 8
      b"\x00\x00"  # sub-function 0
      b"\xa5",     # an odd byte of query data
      Bad("trailing_bytes", 8, 1)),
    V("diagnostics_restart_communications",
      b"\x00\x73"  # transaction id 115
      b"\x00\x00"  # protocol id 0
      b"\x00\x06"  # length 6
      b"\x01"      # unit 1
      b"\x08"      # function 8
      b"\x00\x01"  # sub-function 1 restart_communications_option
      b"\xff\x00", # clear the event log
      Ok(8, 1, sub=1)),
    V("diagnostics_force_listen_only",
      b"\x00\x74"  # transaction id 116
      b"\x00\x00"  # protocol id 0
      b"\x00\x06"  # length 6
      b"\x01"      # unit 1
      b"\x08"      # function 8
      b"\x00\x04"  # sub-function 4 force_listen_only_mode
      b"\x00\x00", # data 0
      Ok(8, 1, sub=4)),
    V("diagnostics_clear_overrun",
      b"\x00\x75"  # transaction id 117
      b"\x00\x00"  # protocol id 0
      b"\x00\x06"  # length 6
      b"\x01"      # unit 1
      b"\x08"      # function 8
      b"\x00\x14"  # sub-function 20 clear_overrun_counter
      b"\x00\x00", # data 0
      Ok(8, 1, sub=20)),
    V("diagnostics_subfunction_5",
      b"\x00\x76"  # transaction id 118
      b"\x00\x00"  # protocol id 0
      b"\x00\x06"  # length 6
      b"\x01"      # unit 1
      b"\x08"      # function 8
      b"\x00\x05"  # sub-function 5: reserved
      b"\x00\x00", # data 0
      Bad("bad_subfunction", 8, 1)),
    V("diagnostics_subfunction_19",
      b"\x00\x77"  # transaction id 119
      b"\x00\x00"  # protocol id 0
      b"\x00\x06"  # length 6
      b"\x01"      # unit 1
      b"\x08"      # function 8
      b"\x00\x13"  # sub-function 19: reserved
      b"\x00\x00", # data 0
      Bad("bad_subfunction", 8, 1)),
    V("diagnostics_subfunction_high_byte",
      b"\x00\x78"  # transaction id 120
      b"\x00\x00"  # protocol id 0
      b"\x00\x06"  # length 6
      b"\x01"      # unit 1
      b"\x08"      # function 8
      b"\x01\x00"  # sub-function 256: not 0 even though the low byte is
      b"\x00\x00", # data 0
      Bad("bad_subfunction", 8, 1)),
    V("diagnostics_no_subfunction",
      b"\x00\x79"  # transaction id 121
      b"\x00\x00"  # protocol id 0
      b"\x00\x03"  # length 3
      b"\x01"      # unit 1
      b"\x08"      # function 8
      b"\x00",     # half a sub-function
      Bad("truncated", 8, 1)),
    V("diagnostics_subfunction_10_short",
      b"\x00\x7a"  # transaction id 122
      b"\x00\x00"  # protocol id 0
      b"\x00\x04"  # length 4
      b"\x01"      # unit 1
      b"\x08"      # function 8
      b"\x00\x0a", # sub-function 10 clear_counters, its data word missing
      Bad("truncated", 8, 1)),
    V("diagnostics_subfunction_10_long",
      b"\x00\x7b"  # transaction id 123
      b"\x00\x00"  # protocol id 0
      b"\x00\x08"  # length 8
      b"\x01"      # unit 1
      b"\x08"      # function 8
      b"\x00\x0a"  # sub-function 10
      b"\x00\x00"  # data 0
      b"\x00\x00", # a second data word
      Bad("trailing_bytes", 8, 1)),
    # ---- FC 11, 12, 17: no data --------------------------------------------------------------
    V("get_comm_event_counter",
      b"\x00\x80"  # transaction id 128
      b"\x00\x00"  # protocol id 0
      b"\x00\x02"  # length 2
      b"\x01"      # unit 1
      b"\x0b",     # function 11 get_comm_event_counter
      Ok(11, 1)),
    V("get_comm_event_log",
      b"\x00\x81"  # transaction id 129
      b"\x00\x00"  # protocol id 0
      b"\x00\x02"  # length 2
      b"\x01"      # unit 1
      b"\x0c",     # function 12 get_comm_event_log
      Ok(12, 1)),
    V("get_comm_event_log_trailing",
      b"\x00\x82"  # transaction id 130
      b"\x00\x00"  # protocol id 0
      b"\x00\x04"  # length 4
      b"\x01"      # unit 1
      b"\x0c"      # function 12
      b"\x00\x00", # no data expected
      Bad("trailing_bytes", 12, 1)),
    V("report_server_id",
      b"\x00\x83"  # transaction id 131
      b"\x00\x00"  # protocol id 0
      b"\x00\x02"  # length 2
      b"\xff"      # unit 255
      b"\x11",     # function 17 report_server_id
      Ok(17, 255)),
    # ---- FC 15 write_multiple_coils ----------------------------------------------------------
    V("write_multiple_coils",
      b"\x00\x90"  # transaction id 144
      b"\x00\x00"  # protocol id 0
      b"\x00\x09"  # length 9
      b"\x01"      # unit 1
      b"\x0f"      # function 15 write_multiple_coils
      b"\x00\x13"  # start 19
      b"\x00\x0a"  # quantity 10
      b"\x02"      # byte count 2 = ceil(10 / 8)
      b"\xcd"      # coils 19..26: 1,0,1,1,0,0,1,1 (LSB first)
      b"\x01",     # coils 27..28: 1,0 (the six high bits are padding)
      Ok(15, 1, quantity=10, ranges=(("coils", 19, 28, "write"),),
         values=(("coils", 19, 1), ("coils", 20, 0), ("coils", 21, 1), ("coils", 22, 1), ("coils", 23, 0),
                 ("coils", 24, 0), ("coils", 25, 1), ("coils", 26, 1), ("coils", 27, 1), ("coils", 28, 0)))),
    V("write_multiple_coils_byte_count_short",
      b"\x00\x91"  # transaction id 145
      b"\x00\x00"  # protocol id 0
      b"\x00\x08"  # length 8
      b"\x01"      # unit 1
      b"\x0f"      # function 15
      b"\x00\x13"  # start 19
      b"\x00\x0a"  # quantity 10
      b"\x01"      # byte count 1: 10 coils need 2
      b"\xcd",     # one byte of coils
      Bad("bad_byte_count", 15, 1)),
    V("write_multiple_coils_quantity_1969",
      b"\x00\x92"  # transaction id 146
      b"\x00\x00"  # protocol id 0
      b"\x00\x07"  # length 7
      b"\x01"      # unit 1
      b"\x0f"      # function 15
      b"\x00\x00"  # start 0
      b"\x07\xb1"  # quantity 1969: above 1968
      b"\xf7",     # byte count 247 (the quantity fails first)
      Bad("bad_quantity", 15, 1)),
    V("write_multiple_coils_past_65535",
      b"\x00\x93"  # transaction id 147
      b"\x00\x00"  # protocol id 0
      b"\x00\x08"  # length 8
      b"\x01"      # unit 1
      b"\x0f"      # function 15
      b"\xff\xff"  # start 65535
      b"\x00\x02"  # quantity 2: start + quantity = 65537
      b"\x01"      # byte count 1
      b"\x03",     # coils
      Bad("address_overflow", 15, 1)),
    V("write_multiple_coils_header_short",
      b"\x00\x94"  # transaction id 148
      b"\x00\x00"  # protocol id 0
      b"\x00\x06"  # length 6
      b"\x01"      # unit 1
      b"\x0f"      # function 15
      b"\x00\x13"  # start 19
      b"\x00\x0a", # quantity 10, then no byte count
      Bad("truncated", 15, 1)),
    V("write_multiple_coils_values_short",
      b"\x00\x95"  # transaction id 149
      b"\x00\x00"  # protocol id 0
      b"\x00\x08"  # length 8
      b"\x01"      # unit 1
      b"\x0f"      # function 15
      b"\x00\x13"  # start 19
      b"\x00\x0a"  # quantity 10
      b"\x02"      # byte count 2
      b"\xcd",     # only one of the two bytes
      Bad("truncated", 15, 1)),
    V("write_multiple_coils_values_long",
      b"\x00\x96"  # transaction id 150
      b"\x00\x00"  # protocol id 0
      b"\x00\x0a"  # length 10
      b"\x01"      # unit 1
      b"\x0f"      # function 15
      b"\x00\x13"  # start 19
      b"\x00\x0a"  # quantity 10
      b"\x02"      # byte count 2
      b"\xcd\x01"  # coils
      b"\x00",     # a byte beyond the byte count
      Bad("trailing_bytes", 15, 1)),
    # ---- FC 16 write_multiple_registers ------------------------------------------------------
    V("write_multiple_registers",
      b"\x00\xa0"  # transaction id 160
      b"\x00\x00"  # protocol id 0
      b"\x00\x0b"  # length 11
      b"\x01"      # unit 1
      b"\x10"      # function 16 write_multiple_registers
      b"\x00\x01"  # start 1
      b"\x00\x02"  # quantity 2
      b"\x04"      # byte count 4 = 2 * 2
      b"\x00\x0a"  # register 1 = 10
      b"\x01\x02", # register 2 = 258
      Ok(16, 1, quantity=2, ranges=(("holding_registers", 1, 2, "write"),),
         values=(("holding_registers", 1, 10), ("holding_registers", 2, 258)))),
    V("write_multiple_registers_quantity_124",
      b"\x00\xa1"  # transaction id 161
      b"\x00\x00"  # protocol id 0
      b"\x00\x07"  # length 7
      b"\x01"      # unit 1
      b"\x10"      # function 16
      b"\x00\x00"  # start 0
      b"\x00\x7c"  # quantity 124: above 123
      b"\xf8",     # byte count 248
      Bad("bad_quantity", 16, 1)),
    V("write_multiple_registers_byte_count_odd",
      b"\x00\xa2"  # transaction id 162
      b"\x00\x00"  # protocol id 0
      b"\x00\x0a"  # length 10
      b"\x01"      # unit 1
      b"\x10"      # function 16
      b"\x00\x01"  # start 1
      b"\x00\x02"  # quantity 2
      b"\x03"      # byte count 3: 2 registers need 4
      b"\x00\x0a\x01", # three bytes
      Bad("bad_byte_count", 16, 1)),
    V("write_multiple_registers_values_short",
      b"\x00\xa3"  # transaction id 163
      b"\x00\x00"  # protocol id 0
      b"\x00\x09"  # length 9
      b"\x01"      # unit 1
      b"\x10"      # function 16
      b"\x00\x01"  # start 1
      b"\x00\x02"  # quantity 2
      b"\x04"      # byte count 4
      b"\x00\x0a", # one register of two
      Bad("truncated", 16, 1)),
    V("write_multiple_registers_past_65535",
      b"\x00\xa4"  # transaction id 164
      b"\x00\x00"  # protocol id 0
      b"\x00\x0b"  # length 11
      b"\x01"      # unit 1
      b"\x10"      # function 16
      b"\xff\xff"  # start 65535
      b"\x00\x02"  # quantity 2: start + quantity = 65537
      b"\x04"      # byte count 4
      b"\x00\x01\x00\x02", # two registers
      Bad("address_overflow", 16, 1)),
    # ---- FC 20 read_file_record --------------------------------------------------------------
    V("read_file_record_two_groups",
      b"\x00\xb0"  # transaction id 176
      b"\x00\x00"  # protocol id 0
      b"\x00\x11"  # length 17
      b"\x01"      # unit 1
      b"\x14"      # function 20 read_file_record
      b"\x0e"      # byte count 14: two 7-byte sub-requests
      b"\x06"      # reference type 6
      b"\x00\x04"  # file 4
      b"\x00\x01"  # record 1
      b"\x00\x02"  # record length 2
      b"\x06"      # reference type 6
      b"\x00\x03"  # file 3
      b"\x00\x09"  # record 9
      b"\x00\x05", # record length 5
      Ok(20, 1, quantity=5,
         ranges=(("file_records", 4 << 16 | 1, 4 << 16 | 2, "read"),
                 ("file_records", 3 << 16 | 9, 3 << 16 | 13, "read")))),
    V("read_file_record_last_record",
      b"\x00\xb1"  # transaction id 177
      b"\x00\x00"  # protocol id 0
      b"\x00\x0a"  # length 10
      b"\x01"      # unit 1
      b"\x14"      # function 20
      b"\x07"      # byte count 7
      b"\x06"      # reference type 6
      b"\xff\xff"  # file 65535
      b"\x27\x0f"  # record 9999
      b"\x00\x01", # record length 1: record + length = 10000, the limit
      Ok(20, 1, quantity=1, ranges=(("file_records", 0xFFFF270F, 0xFFFF270F, "read"),))),
    V("read_file_record_byte_count_8",
      b"\x00\xb2"  # transaction id 178
      b"\x00\x00"  # protocol id 0
      b"\x00\x0b"  # length 11
      b"\x01"      # unit 1
      b"\x14"      # function 20
      b"\x08"      # byte count 8: not a multiple of 7
      b"\x06\x00\x04\x00\x01\x00\x02\x00", # a sub-request and a stray byte
      Bad("bad_byte_count", 20, 1)),
    V("read_file_record_byte_count_252",
      b"\x00\xb3"  # transaction id 179
      b"\x00\x00"  # protocol id 0
      b"\x00\x03"  # length 3
      b"\x01"      # unit 1
      b"\x14"      # function 20
      b"\xfc",     # byte count 252: a multiple of 7 above 245
      Bad("bad_byte_count", 20, 1)),
    V("read_file_record_reference_type_7",
      b"\x00\xb4"  # transaction id 180
      b"\x00\x00"  # protocol id 0
      b"\x00\x0a"  # length 10
      b"\x01"      # unit 1
      b"\x14"      # function 20
      b"\x07"      # byte count 7
      b"\x07"      # reference type 7: must be 6
      b"\x00\x04"  # file 4
      b"\x00\x01"  # record 1
      b"\x00\x02", # record length 2
      Bad("bad_reference_type", 20, 1)),
    V("read_file_record_file_0",
      b"\x00\xb5"  # transaction id 181
      b"\x00\x00"  # protocol id 0
      b"\x00\x0a"  # length 10
      b"\x01"      # unit 1
      b"\x14"      # function 20
      b"\x07"      # byte count 7
      b"\x06"      # reference type 6
      b"\x00\x00"  # file 0: files count from 1
      b"\x00\x01"  # record 1
      b"\x00\x02", # record length 2
      Bad("bad_record", 20, 1)),
    V("read_file_record_past_record_9999",
      b"\x00\xb6"  # transaction id 182
      b"\x00\x00"  # protocol id 0
      b"\x00\x0a"  # length 10
      b"\x01"      # unit 1
      b"\x14"      # function 20
      b"\x07"      # byte count 7
      b"\x06"      # reference type 6
      b"\x00\x01"  # file 1
      b"\x27\x0f"  # record 9999
      b"\x00\x02", # record length 2: record + length = 10001
      Bad("bad_record", 20, 1)),
    V("read_file_record_length_0",
      b"\x00\xb7"  # transaction id 183
      b"\x00\x00"  # protocol id 0
      b"\x00\x0a"  # length 10
      b"\x01"      # unit 1
      b"\x14"      # function 20
      b"\x07"      # byte count 7
      b"\x06"      # reference type 6
      b"\x00\x01"  # file 1
      b"\x00\x00"  # record 0
      b"\x00\x00", # record length 0
      Bad("bad_record", 20, 1)),
    V("read_file_record_short",
      b"\x00\xb8"  # transaction id 184
      b"\x00\x00"  # protocol id 0
      b"\x00\x06"  # length 6
      b"\x01"      # unit 1
      b"\x14"      # function 20
      b"\x07"      # byte count 7
      b"\x06\x00\x01", # 3 of the 7 bytes
      Bad("truncated", 20, 1)),
    V("read_file_record_empty",
      b"\x00\xb9"  # transaction id 185
      b"\x00\x00"  # protocol id 0
      b"\x00\x02"  # length 2
      b"\x01"      # unit 1
      b"\x14",     # function 20, no byte count
      Bad("truncated", 20, 1)),
    # ---- FC 21 write_file_record -------------------------------------------------------------
    V("write_file_record",
      b"\x00\xc0"  # transaction id 192
      b"\x00\x00"  # protocol id 0
      b"\x00\x0e"  # length 14
      b"\x01"      # unit 1
      b"\x15"      # function 21 write_file_record
      b"\x0b"      # byte count 11: a 7-byte sub-request header and 2 registers
      b"\x06"      # reference type 6
      b"\x00\x04"  # file 4
      b"\x00\x07"  # record 7
      b"\x00\x02"  # record length 2
      b"\x06\xaf"  # record 7 = 0x06AF
      b"\x04\xbe", # record 8 = 0x04BE
      Ok(21, 1, quantity=2, ranges=(("file_records", 4 << 16 | 7, 4 << 16 | 8, "write"),),
         values=(("file_records", 4 << 16 | 7, 0x06AF), ("file_records", 4 << 16 | 8, 0x04BE)))),
    V("write_file_record_two_groups",
      b"\x00\xc1"  # transaction id 193
      b"\x00\x00"  # protocol id 0
      b"\x00\x15"  # length 21
      b"\x01"      # unit 1
      b"\x15"      # function 21
      b"\x12"      # byte count 18
      b"\x06"      # reference type 6
      b"\x00\x01"  # file 1
      b"\x00\x00"  # record 0
      b"\x00\x01"  # record length 1
      b"\x80\x00"  # record 0 = 0x8000
      b"\x06"      # reference type 6
      b"\x00\x02"  # file 2
      b"\x00\x05"  # record 5
      b"\x00\x01"  # record length 1
      b"\x00\x2a", # record 5 = 42
      Ok(21, 1, quantity=1,
         ranges=(("file_records", 1 << 16, 1 << 16, "write"), ("file_records", 2 << 16 | 5, 2 << 16 | 5, "write")),
         values=(("file_records", 1 << 16, 0x8000), ("file_records", 2 << 16 | 5, 42)))),
    V("write_file_record_byte_count_8",
      b"\x00\xc2"  # transaction id 194
      b"\x00\x00"  # protocol id 0
      b"\x00\x0b"  # length 11
      b"\x01"      # unit 1
      b"\x15"      # function 21
      b"\x08"      # byte count 8: below 9
      b"\x06\x00\x04\x00\x07\x00\x00\x00", # eight bytes
      Bad("bad_byte_count", 21, 1)),
    V("write_file_record_data_overruns",
      b"\x00\xc3"  # transaction id 195
      b"\x00\x00"  # protocol id 0
      b"\x00\x0d"  # length 13
      b"\x01"      # unit 1
      b"\x15"      # function 21
      b"\x0a"      # byte count 10
      b"\x06"      # reference type 6
      b"\x00\x04"  # file 4
      b"\x00\x07"  # record 7
      b"\x00\x02"  # record length 2: needs 4 data bytes
      b"\x06\xaf\x04", # only 3 are left
      Bad("bad_byte_count", 21, 1)),
    V("write_file_record_leftover_header",
      b"\x00\xc4"  # transaction id 196
      b"\x00\x00"  # protocol id 0
      b"\x00\x0f"  # length 15
      b"\x01"      # unit 1
      b"\x15"      # function 21
      b"\x0c"      # byte count 12
      b"\x06"      # reference type 6
      b"\x00\x04"  # file 4
      b"\x00\x07"  # record 7
      b"\x00\x01"  # record length 1
      b"\x06\xaf"  # record 7
      b"\x06\x00\x01", # 3 bytes left: fewer than a 7-byte sub-request header
      Bad("bad_byte_count", 21, 1)),
    V("write_file_record_reference_type_0",
      b"\x00\xc5"  # transaction id 197
      b"\x00\x00"  # protocol id 0
      b"\x00\x0d"  # length 13
      b"\x01"      # unit 1
      b"\x15"      # function 21
      b"\x0a"      # byte count 10
      b"\x00"      # reference type 0: must be 6
      b"\x00\x04"  # file 4
      b"\x00\x07"  # record 7
      b"\x00\x01"  # record length 1
      b"\x06\xaf\x00", # record 7 and a spare byte
      Bad("bad_reference_type", 21, 1)),
    V("write_file_record_record_10000",
      b"\x00\xc6"  # transaction id 198
      b"\x00\x00"  # protocol id 0
      b"\x00\x0c"  # length 12
      b"\x01"      # unit 1
      b"\x15"      # function 21
      b"\x09"      # byte count 9
      b"\x06"      # reference type 6
      b"\x00\x04"  # file 4
      b"\x27\x10"  # record 10000: above 9999
      b"\x00\x01"  # record length 1
      b"\x06\xaf", # record data
      Bad("bad_record", 21, 1)),
    V("write_file_record_byte_count_beyond_data",
      b"\x00\xc7"  # transaction id 199
      b"\x00\x00"  # protocol id 0
      b"\x00\x0c"  # length 12
      b"\x01"      # unit 1
      b"\x15"      # function 21
      b"\x0a"      # byte count 10, but only 9 bytes follow
      b"\x06\x00\x04\x00\x07\x00\x01\x06\xaf", # one sub-request
      Bad("truncated", 21, 1)),
    # ---- FC 22 mask_write_register -----------------------------------------------------------
    V("mask_write_register",
      b"\x00\xd0"  # transaction id 208
      b"\x00\x00"  # protocol id 0
      b"\x00\x08"  # length 8
      b"\x01"      # unit 1
      b"\x16"      # function 22 mask_write_register
      b"\x00\x04"  # address 4
      b"\x00\xf2"  # AND mask
      b"\x00\x25", # OR mask: the written value depends on what the register holds
      Ok(22, 1, quantity=1, ranges=(("holding_registers", 4, 4, "write"),))),
    V("mask_write_register_no_or_mask",
      b"\x00\xd1"  # transaction id 209
      b"\x00\x00"  # protocol id 0
      b"\x00\x06"  # length 6
      b"\x01"      # unit 1
      b"\x16"      # function 22
      b"\x00\x04"  # address 4
      b"\x00\xf2", # AND mask, OR mask missing
      Bad("truncated", 22, 1)),
    # ---- FC 23 read_write_multiple_registers -------------------------------------------------
    V("read_write_multiple_registers",
      b"\x00\xe0"  # transaction id 224
      b"\x00\x00"  # protocol id 0
      b"\x00\x11"  # length 17
      b"\x01"      # unit 1
      b"\x17"      # function 23 read_write_multiple_registers
      b"\x00\x03"  # read start 3
      b"\x00\x06"  # read quantity 6
      b"\x00\x0e"  # write start 14
      b"\x00\x03"  # write quantity 3
      b"\x06"      # byte count 6
      b"\x00\xff"  # register 14 = 255
      b"\x00\xff"  # register 15 = 255
      b"\xff\xff", # register 16 = 0xFFFF
      Ok(23, 1, quantity=6,
         ranges=(("holding_registers", 3, 8, "read"), ("holding_registers", 14, 16, "write")),
         values=(("holding_registers", 14, 255), ("holding_registers", 15, 255), ("holding_registers", 16, 0xFFFF)))),
    V("read_write_multiple_registers_write_quantity_122",
      b"\x00\xe1"  # transaction id 225
      b"\x00\x00"  # protocol id 0
      b"\x00\x0b"  # length 11
      b"\x01"      # unit 1
      b"\x17"      # function 23
      b"\x00\x03"  # read start 3
      b"\x00\x06"  # read quantity 6
      b"\x00\x0e"  # write start 14
      b"\x00\x7a"  # write quantity 122: above 121
      b"\xf4",     # byte count 244
      Bad("bad_quantity", 23, 1)),
    V("read_write_multiple_registers_read_past_65535",
      b"\x00\xe2"  # transaction id 226
      b"\x00\x00"  # protocol id 0
      b"\x00\x0d"  # length 13
      b"\x01"      # unit 1
      b"\x17"      # function 23
      b"\xff\xff"  # read start 65535
      b"\x00\x02"  # read quantity 2: overflows
      b"\x00\x0e"  # write start 14
      b"\x00\x01"  # write quantity 1
      b"\x02"      # byte count 2
      b"\x00\x01", # register 14 = 1
      Bad("address_overflow", 23, 1)),
    V("read_write_multiple_registers_byte_count",
      b"\x00\xe3"  # transaction id 227
      b"\x00\x00"  # protocol id 0
      b"\x00\x0d"  # length 13
      b"\x01"      # unit 1
      b"\x17"      # function 23
      b"\x00\x03"  # read start 3
      b"\x00\x06"  # read quantity 6
      b"\x00\x0e"  # write start 14
      b"\x00\x02"  # write quantity 2
      b"\x02"      # byte count 2: two registers need 4
      b"\x00\x01", # one register
      Bad("bad_byte_count", 23, 1)),
    V("read_write_multiple_registers_short",
      b"\x00\xe4"  # transaction id 228
      b"\x00\x00"  # protocol id 0
      b"\x00\x0a"  # length 10
      b"\x01"      # unit 1
      b"\x17"      # function 23
      b"\x00\x03"  # read start 3
      b"\x00\x06"  # read quantity 6
      b"\x00\x0e"  # write start 14
      b"\x00\x01", # write quantity 1, no byte count
      Bad("truncated", 23, 1)),
    # ---- FC 24 read_fifo_queue ---------------------------------------------------------------
    V("read_fifo_queue",
      b"\x00\xf0"  # transaction id 240
      b"\x00\x00"  # protocol id 0
      b"\x00\x04"  # length 4
      b"\x01"      # unit 1
      b"\x18"      # function 24 read_fifo_queue
      b"\x04\xde", # FIFO pointer address 1246
      Ok(24, 1, quantity=1, ranges=(("holding_registers", 1246, 1246, "read"),))),
    V("read_fifo_queue_trailing",
      b"\x00\xf1"  # transaction id 241
      b"\x00\x00"  # protocol id 0
      b"\x00\x06"  # length 6
      b"\x01"      # unit 1
      b"\x18"      # function 24
      b"\x04\xde"  # FIFO pointer address 1246
      b"\x00\x01", # a quantity FC 24 does not have
      Bad("trailing_bytes", 24, 1)),
    # ---- FC 43 encapsulated_interface_transport ----------------------------------------------
    V("read_device_identification",
      b"\x01\x00"  # transaction id 256
      b"\x00\x00"  # protocol id 0
      b"\x00\x05"  # length 5
      b"\x01"      # unit 1
      b"\x2b"      # function 43 encapsulated_interface_transport
      b"\x0e"      # MEI type 14 read_device_identification
      b"\x01"      # read device id code 1: basic
      b"\x00",     # object id 0
      Ok(43, 1, sub=14)),
    V("read_device_identification_code_4",
      b"\x01\x01"  # transaction id 257
      b"\x00\x00"  # protocol id 0
      b"\x00\x05"  # length 5
      b"\x01"      # unit 1
      b"\x2b"      # function 43
      b"\x0e"      # MEI type 14
      b"\x04"      # read device id code 4: one specific object
      b"\x05",     # object id 5
      Ok(43, 1, sub=14)),
    V("read_device_identification_code_0",
      b"\x01\x02"  # transaction id 258
      b"\x00\x00"  # protocol id 0
      b"\x00\x05"  # length 5
      b"\x01"      # unit 1
      b"\x2b"      # function 43
      b"\x0e"      # MEI type 14
      b"\x00"      # read device id code 0: not 1..4
      b"\x00",     # object id 0
      Bad("bad_device_id_code", 43, 1)),
    V("read_device_identification_code_5",
      b"\x01\x03"  # transaction id 259
      b"\x00\x00"  # protocol id 0
      b"\x00\x05"  # length 5
      b"\x01"      # unit 1
      b"\x2b"      # function 43
      b"\x0e"      # MEI type 14
      b"\x05"      # read device id code 5
      b"\x00",     # object id 0
      Bad("bad_device_id_code", 43, 1)),
    V("read_device_identification_no_object",
      b"\x01\x04"  # transaction id 260
      b"\x00\x00"  # protocol id 0
      b"\x00\x04"  # length 4
      b"\x01"      # unit 1
      b"\x2b"      # function 43
      b"\x0e"      # MEI type 14
      b"\x01",     # read device id code 1, object id missing
      Bad("truncated", 43, 1)),
    V("can_open_general_reference",
      b"\x01\x05"  # transaction id 261
      b"\x00\x00"  # protocol id 0
      b"\x00\x06"  # length 6
      b"\x01"      # unit 1
      b"\x2b"      # function 43
      b"\x0d"      # MEI type 13 CANopen general reference: any payload
      b"\x00\x01\x02", # CANopen payload
      Ok(43, 1, sub=13)),
    V("can_open_general_reference_empty",
      b"\x01\x06"  # transaction id 262
      b"\x00\x00"  # protocol id 0
      b"\x00\x03"  # length 3
      b"\x01"      # unit 1
      b"\x2b"      # function 43
      b"\x0d",     # MEI type 13 and nothing more
      Ok(43, 1, sub=13)),
    V("encapsulated_interface_mei_0",
      b"\x01\x07"  # transaction id 263
      b"\x00\x00"  # protocol id 0
      b"\x00\x05"  # length 5
      b"\x01"      # unit 1
      b"\x2b"      # function 43
      b"\x00"      # MEI type 0: neither 13 nor 14
      b"\x01\x00", # payload
      Bad("bad_mei_type", 43, 1)),
    V("encapsulated_interface_no_mei",
      b"\x01\x08"  # transaction id 264
      b"\x00\x00"  # protocol id 0
      b"\x00\x02"  # length 2
      b"\x01"      # unit 1
      b"\x2b",     # function 43, MEI type missing
      Bad("truncated", 43, 1)),
    # ---- codes that are not parsed: decided as function_not_allowed, never malformed ----------
    V("function_0",
      b"\x02\x00"  # transaction id 512
      b"\x00\x00"  # protocol id 0
      b"\x00\x02"  # length 2
      b"\x01"      # unit 1
      b"\x00",     # function 0: not a function
      Ok(0, 1, known=False)),
    V("function_9_with_data",
      b"\x02\x01"  # transaction id 513
      b"\x00\x00"  # protocol id 0
      b"\x00\x04"  # length 4
      b"\x01"      # unit 1
      b"\x09"      # function 9: unassigned
      b"\xde\xad", # whatever follows is not looked at
      Ok(9, 1, known=False)),
    V("function_90_user_defined",
      b"\x02\x02"  # transaction id 514
      b"\x00\x00"  # protocol id 0
      b"\x00\x03"  # length 3
      b"\x01"      # unit 1
      b"\x5a"      # function 90: user-defined (Schneider UMAS)
      b"\x00",     # payload
      Ok(90, 1, known=False)),
    V("function_with_exception_bit",
      b"\x02\x03"  # transaction id 515
      b"\x00\x00"  # protocol id 0
      b"\x00\x03"  # length 3
      b"\x01"      # unit 1
      b"\x83"      # function 0x83: a response code sent as a request
      b"\x02",     # exception-looking byte
      Ok(0x83, 1, known=False)),
    V("function_255",
      b"\x02\x04"  # transaction id 516
      b"\x00\x00"  # protocol id 0
      b"\x00\x02"  # length 2
      b"\x01"      # unit 1
      b"\xff",     # function 255
      Ok(255, 1, known=False)),
)
# fmt: on


@dataclass(frozen=True)
class SplitVector:
    name: str
    buf: bytes
    status: str  # "complete" | "incomplete" | "invalid"
    n: int  # bytes used, bytes needed, or the invalid reason (1 protocol_id, 2 length)


# fmt: off
SPLITS: tuple[SplitVector, ...] = (
    SplitVector("empty", b"", "incomplete", 6),
    SplitVector("tid_only",
                b"\x00\x01",                  # transaction id, nothing more
                "incomplete", 4),
    SplitVector("header_less_unit",
                b"\x00\x01\x00\x00\x00",      # tid, pid, half a length
                "incomplete", 1),
    SplitVector("header_only",
                b"\x00\x01\x00\x00\x00\x06",  # tid 1, pid 0, length 6: unit + PDU still to come
                "incomplete", 6),
    SplitVector("one_byte_short",
                b"\x00\x01\x00\x00\x00\x06"   # tid 1, pid 0, length 6
                b"\x01\x03\x00\x00\x00",      # unit 1, FC 3, start 0, half a quantity
                "incomplete", 1),
    SplitVector("exact",
                b"\x00\x01\x00\x00\x00\x06"   # tid 1, pid 0, length 6
                b"\x01\x03\x00\x00\x00\x01",  # unit 1, FC 3, start 0, quantity 1
                "complete", 12),
    SplitVector("two_adus",
                b"\x00\x01\x00\x00\x00\x02\x01\x07"  # tid 1, length 2, unit 1, FC 7
                b"\x00\x02\x00\x00\x00\x02\x01\x07", # a second ADU right behind
                "complete", 8),
    SplitVector("adu_and_partial",
                b"\x00\x01\x00\x00\x00\x02\x01\x11"  # tid 1, length 2, unit 1, FC 17
                b"\x00",                             # first byte of the next ADU
                "complete", 8),
    SplitVector("protocol_id_1",
                b"\x00\x01\x00\x01\x00\x06",  # pid 1: not Modbus
                "invalid", 1),
    SplitVector("protocol_id_checked_before_length",
                b"\x00\x01\xff\xff\xff\xff",  # pid 0xFFFF and length 0xFFFF: pid reported
                "invalid", 1),
    SplitVector("length_0",
                b"\x00\x01\x00\x00\x00\x00",  # length 0: no unit
                "invalid", 2),
    SplitVector("length_1",
                b"\x00\x01\x00\x00\x00\x01\x01",  # length 1: unit but no function code
                "invalid", 2),
    SplitVector("length_2_minimum",
                b"\x00\x01\x00\x00\x00\x02\x01\x07",  # length 2: unit + FC 7
                "complete", 8),
    SplitVector("length_254_maximum_header",
                b"\x00\x01\x00\x00\x00\xfe",  # length 254: the largest allowed
                "incomplete", 254),
    SplitVector("length_255",
                b"\x00\x01\x00\x00\x00\xff",  # length 255: one above the PDU limit
                "invalid", 2),
    SplitVector("length_huge",
                b"\x00\x01\x00\x00\x88\x04",  # length 0x8804 (suricata-verify modbus.pcap frame 76)
                "invalid", 2),
)
# fmt: on


@dataclass(frozen=True)
class ExceptionVector:
    name: str
    request: bytes
    code: int
    response: bytes


# fmt: off
EXCEPTION_RESPONSES: tuple[ExceptionVector, ...] = (
    ExceptionVector("illegal_function_for_a_write",
                    b"\x12\x34\x00\x00\x00\x06\x07\x06\x00\x64\x05\xdc",  # tid 0x1234, unit 7, FC 6
                    0x01,
                    b"\x12\x34"  # the request's transaction id
                    b"\x00\x00"  # protocol id 0
                    b"\x00\x03"  # length 3: unit, function, code
                    b"\x07"      # the request's unit
                    b"\x86"      # function 6 | 0x80
                    b"\x01"),    # exception 01 illegal function
    ExceptionVector("illegal_data_value_for_a_malformed_read",
                    b"\x00\x09\x00\x00\x00\x06\x01\x03\x00\x00\x00\x00",  # FC 3 quantity 0
                    0x03,
                    b"\x00\x09"  # transaction id 9
                    b"\x00\x00"  # protocol id 0
                    b"\x00\x03"  # length 3
                    b"\x01"      # unit 1
                    b"\x83"      # function 3 | 0x80
                    b"\x03"),    # exception 03 illegal data value
    ExceptionVector("server_busy_for_a_rate_limited_request",
                    b"\xff\xff\x00\x00\x00\x02\xff\x11",  # tid 0xFFFF, unit 255, FC 17
                    0x06,
                    b"\xff\xff"  # transaction id 0xFFFF
                    b"\x00\x00"  # protocol id 0
                    b"\x00\x03"  # length 3
                    b"\xff"      # unit 255
                    b"\x91"      # function 17 | 0x80
                    b"\x06"),    # exception 06 server device busy
    ExceptionVector("function_already_carrying_the_exception_bit",
                    b"\x00\x01\x00\x00\x00\x02\x01\x83",  # a request with function 0x83
                    0x01,
                    b"\x00\x01"  # transaction id 1
                    b"\x00\x00"  # protocol id 0
                    b"\x00\x03"  # length 3
                    b"\x01"      # unit 1
                    b"\x83"      # 0x83 | 0x80 is still 0x83
                    b"\x01"),    # exception 01
)
# fmt: on


@dataclass(frozen=True)
class FramingFault:
    """A frame handed to the parser that is not exactly one complete ADU (the splitter never does this)."""

    name: str
    adu: bytes
    kind: str


# Not specified by docs/engine.md section 2 (it parses complete ADUs); both parsers fail closed alike:
# no function code, a protocol id other than 0, or fewer bytes than declared is truncated; more bytes
# than declared, or a declaration beyond 260 bytes, is trailing bytes.
# fmt: off
FRAMING_FAULTS: tuple[FramingFault, ...] = (
    FramingFault("empty", b"", "truncated"),
    FramingFault("no_function_code",
                 b"\x00\x01\x00\x00\x00\x06"  # tid 1, pid 0, length 6
                 b"\x01",                     # unit 1, nothing after it
                 "truncated"),
    FramingFault("protocol_id_1",
                 b"\x00\x01\x00\x01\x00\x02"  # tid 1, pid 1, length 2
                 b"\x01\x07",                 # unit 1, FC 7
                 "truncated"),
    FramingFault("shorter_than_declared",
                 b"\x00\x01\x00\x00\x00\x06"  # length 6: 12 bytes declared
                 b"\x01\x03\x00\x00",         # 10 bytes present
                 "truncated"),
    FramingFault("longer_than_declared",
                 b"\x00\x01\x00\x00\x00\x02"  # length 2: 8 bytes declared
                 b"\x01\x07\x00",             # 9 bytes present
                 "trailing_bytes"),
    FramingFault("length_0",
                 b"\x00\x01\x00\x00\x00\x00"  # length 0: 6 bytes declared
                 b"\x01\x07",                 # 8 present
                 "trailing_bytes"),
    FramingFault("length_255",
                 b"\x00\x01\x00\x00\x00\xff"  # length 255: 261 bytes, beyond the 260-byte ADU
                 b"\x01\x11" + bytes(253),    # unit 1, FC 17, and exactly the declared bytes
                 "trailing_bytes"),
)
# fmt: on
