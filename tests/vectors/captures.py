"""Request vectors cut from the shared captures (../shared/pcaps, see its SOURCES.md).

Each vector names its capture and frame (numbered from 1, as Wireshark does) and the offset of the ADU
in that frame's TCP payload; tests/unit/test_vectors.py re-reads the capture to prove the bytes are
still the capture's. The decode beside each is what docs/engine.md section 2 makes of it.
"""

from __future__ import annotations

from dataclasses import dataclass

from tests.vectors.requests import Bad, Ok


@dataclass(frozen=True)
class CaptureVector:
    capture: str
    frame: int
    offset: int  # where the ADU starts in the frame's TCP payload
    adu: bytes
    expect: Ok | Bad


C = CaptureVector
SURICATA = "suricata-verify/modbus/modbus.pcap"
ICSNPP = "icsnpp-modbus/modbus_example.pcap"

# fmt: off
CAPTURED: tuple[CaptureVector, ...] = (
    C(SURICATA, 8, 0,
      b"\x00\x00"  # transaction id 0
      b"\x00\x00"  # protocol id 0
      b"\x00\x06"  # length 6
      b"\x0a"      # unit 10
      b"\x08"      # function 8 diagnostics
      b"\x00\x04"  # sub-function 4 force_listen_only_mode
      b"\x00\x00", # data 0
      Ok(8, 10, sub=4)),
    C(SURICATA, 32, 0,
      b"\x00\x01"  # transaction id 1
      b"\x00\x00"  # protocol id 0
      b"\x00\x06"  # length 6
      b"\x0a"      # unit 10
      b"\x2b"      # function 43
      b"\x0e"      # MEI type 14 read_device_identification
      b"\x03"      # read device id code 3: extended
      b"\x01"      # object id 1
      b"\x00",     # a fourth byte MEI 14 does not have
      Bad("trailing_bytes", 43, 10)),
    C(SURICATA, 40, 0,
      b"\x00\x00"  # transaction id 0
      b"\x00\x00"  # protocol id 0
      b"\x00\x02"  # length 2
      b"\x0a"      # unit 10
      b"\x11",     # function 17 report_server_id
      Ok(17, 10)),
    C(SURICATA, 54, 0,
      b"\x00\x01"  # transaction id 1
      b"\x00\x00"  # protocol id 0
      b"\x00\x06"  # length 6
      b"\x0a"      # unit 10
      b"\x01"      # function 1 read_coils
      b"\x00\x02"  # start 2 (Suricata's rules say 3: they count from 1)
      b"\x00\x02", # quantity 2
      Ok(1, 10, quantity=2, ranges=(("coils", 2, 3, "read"),))),
    C(SURICATA, 57, 0,
      b"\x00\x01"  # transaction id 1
      b"\x00\x00"  # protocol id 0
      b"\x00\x06"  # length 6
      b"\x0a"      # unit 10
      b"\x03"      # function 3 read_holding_registers
      b"\x00\x05"  # start 5
      b"\x00\x02", # quantity 2
      Ok(3, 10, quantity=2, ranges=(("holding_registers", 5, 6, "read"),))),
    C(SURICATA, 60, 0,
      b"\x00\x01"  # transaction id 1
      b"\x00\x00"  # protocol id 0
      b"\x00\x06"  # length 6
      b"\x0a"      # unit 10
      b"\x05"      # function 5 write_single_coil
      b"\x00\x02"  # address 2
      b"\x00\x00", # off
      Ok(5, 10, quantity=1, ranges=(("coils", 2, 2, "write"),), values=(("coils", 2, 0),))),
    C(SURICATA, 66, 0,
      b"\x00\x01"  # transaction id 1
      b"\x00\x00"  # protocol id 0
      b"\x00\x06"  # length 6
      b"\x0a"      # unit 10
      b"\x06"      # function 6 write_single_register
      b"\x00\x05"  # address 5
      b"\x00\x0b", # value 11
      Ok(6, 10, quantity=1, ranges=(("holding_registers", 5, 5, "write"),),
         values=(("holding_registers", 5, 11),))),
    C(ICSNPP, 8, 0,
      b"\x00\x02"  # transaction id 2
      b"\x00\x00"  # protocol id 0
      b"\x00\x06"  # length 6
      b"\x05"      # unit 5
      b"\x01"      # function 1 read_coils
      b"\x00\x01"  # start 1
      b"\x00\x08", # quantity 8
      Ok(1, 5, quantity=8, ranges=(("coils", 1, 8, "read"),))),
    C(ICSNPP, 16, 0,
      b"\x00\x04"  # transaction id 4
      b"\x00\x00"  # protocol id 0
      b"\x00\x06"  # length 6
      b"\x05"      # unit 5
      b"\x02"      # function 2 read_discrete_inputs
      b"\x00\x01"  # start 1
      b"\x00\x08", # quantity 8
      Ok(2, 5, quantity=8, ranges=(("discrete_inputs", 1, 8, "read"),))),
    C(ICSNPP, 32, 0,
      b"\x00\x08"  # transaction id 8
      b"\x00\x00"  # protocol id 0
      b"\x00\x06"  # length 6
      b"\x05"      # unit 5
      b"\x04"      # function 4 read_input_registers
      b"\x00\x01"  # start 1
      b"\x00\x08", # quantity 8
      Ok(4, 5, quantity=8, ranges=(("input_registers", 1, 8, "read"),))),
    C(ICSNPP, 36, 0,
      b"\x00\x09"  # transaction id 9
      b"\x00\x00"  # protocol id 0
      b"\x00\x06"  # length 6
      b"\x06"      # unit 6
      b"\x05"      # function 5 write_single_coil
      b"\x00\x01"  # address 1
      b"\xff\x00", # on
      Ok(5, 6, quantity=1, ranges=(("coils", 1, 1, "write"),), values=(("coils", 1, 1),))),
    C(ICSNPP, 40, 0,
      b"\x00\x0a"  # transaction id 10
      b"\x00\x00"  # protocol id 0
      b"\x00\x06"  # length 6
      b"\x07"      # unit 7
      b"\x06"      # function 6 write_single_register
      b"\x00\x01"  # address 1
      b"\xab\xcd", # value 0xABCD
      Ok(6, 7, quantity=1, ranges=(("holding_registers", 1, 1, "write"),),
         values=(("holding_registers", 1, 0xABCD),))),
    C(ICSNPP, 44, 0,
      b"\x00\x0b"  # transaction id 11
      b"\x00\x00"  # protocol id 0
      b"\x00\x02"  # length 2
      b"\x02"      # unit 2
      b"\x07",     # function 7 read_exception_status
      Ok(7, 2)),
    C(ICSNPP, 48, 0,
      b"\x00\x0c"  # transaction id 12
      b"\x00\x00"  # protocol id 0
      b"\x00\x06"  # length 6
      b"\x02"      # unit 2
      b"\x08"      # function 8 diagnostics
      b"\x00\x02"  # sub-function 2 return_diagnostic_register
      b"\x00\x00", # data 0
      Ok(8, 2, sub=2)),
    C(ICSNPP, 52, 0,
      b"\x00\x0d"  # transaction id 13
      b"\x00\x00"  # protocol id 0
      b"\x00\x08"  # length 8
      b"\x07"      # unit 7
      b"\x0f"      # function 15 write_multiple_coils
      b"\x00\x01"  # start 1
      b"\x00\x04"  # quantity 4
      b"\x01"      # byte count 1
      b"\x09",     # coils 1..4: 1,0,0,1
      Ok(15, 7, quantity=4, ranges=(("coils", 1, 4, "write"),),
         values=(("coils", 1, 1), ("coils", 2, 0), ("coils", 3, 0), ("coils", 4, 1)))),
    C(ICSNPP, 56, 0,
      b"\x00\x0e"  # transaction id 14
      b"\x00\x00"  # protocol id 0
      b"\x00\x0f"  # length 15
      b"\x07"      # unit 7
      b"\x10"      # function 16 write_multiple_registers
      b"\x00\x01"  # start 1
      b"\x00\x04"  # quantity 4
      b"\x08"      # byte count 8
      b"\x00\xaa"  # register 1 = 0xAA
      b"\x00\xbb"  # register 2 = 0xBB
      b"\x00\xcc"  # register 3 = 0xCC
      b"\x00\xdd", # register 4 = 0xDD
      Ok(16, 7, quantity=4, ranges=(("holding_registers", 1, 4, "write"),),
         values=(("holding_registers", 1, 0xAA), ("holding_registers", 2, 0xBB),
                 ("holding_registers", 3, 0xCC), ("holding_registers", 4, 0xDD)))),
    C(ICSNPP, 60, 0,
      b"\x00\x0f"  # transaction id 15
      b"\x00\x00"  # protocol id 0
      b"\x00\x02"  # length 2
      b"\x02"      # unit 2
      b"\x11",     # function 17 report_server_id
      Ok(17, 2)),
    C(ICSNPP, 64, 0,
      b"\x00\x10"  # transaction id 16
      b"\x00\x00"  # protocol id 0
      b"\x00\x03"  # length 3
      b"\x08"      # unit 8
      b"\x14"      # function 20 read_file_record
      b"\x00",     # byte count 0: below 7
      Bad("bad_byte_count", 20, 8)),
    C(ICSNPP, 68, 0,
      b"\x00\x11"  # transaction id 17
      b"\x00\x00"  # protocol id 0
      b"\x00\x03"  # length 3
      b"\x08"      # unit 8
      b"\x15"      # function 21 write_file_record
      b"\x00",     # byte count 0: below 9
      Bad("bad_byte_count", 21, 8)),
    C(ICSNPP, 72, 0,
      b"\x00\x12"  # transaction id 18
      b"\x00\x00"  # protocol id 0
      b"\x00\x08"  # length 8
      b"\x04"      # unit 4
      b"\x16"      # function 22 mask_write_register
      b"\x00\x0a"  # address 10
      b"\xde\xad"  # AND mask
      b"\x00\x00", # OR mask
      Ok(22, 4, quantity=1, ranges=(("holding_registers", 10, 10, "write"),))),
    C(ICSNPP, 84, 0,
      b"\x00\x15"  # transaction id 21
      b"\x00\x00"  # protocol id 0
      b"\x00\x11"  # length 17
      b"\x06"      # unit 6
      b"\x17"      # function 23 read_write_multiple_registers
      b"\x00\x01"  # read start 1
      b"\x00\x04"  # read quantity 4
      b"\x00\x02"  # write start 2
      b"\x00\x03"  # write quantity 3
      b"\x06"      # byte count 6
      b"\x00\xaa"  # register 2 = 0xAA
      b"\x00\xbb"  # register 3 = 0xBB
      b"\x00\xcc", # register 4 = 0xCC
      Ok(23, 6, quantity=4,
         ranges=(("holding_registers", 1, 4, "read"), ("holding_registers", 2, 4, "write")),
         values=(("holding_registers", 2, 0xAA), ("holding_registers", 3, 0xBB), ("holding_registers", 4, 0xCC)))),
    C(ICSNPP, 88, 0,
      b"\x00\x16"  # transaction id 22
      b"\x00\x00"  # protocol id 0
      b"\x00\x04"  # length 4
      b"\x0a"      # unit 10
      b"\x18"      # function 24 read_fifo_queue
      b"\x00\x00", # FIFO pointer address 0
      Ok(24, 10, quantity=1, ranges=(("holding_registers", 0, 0, "read"),))),
    C(ICSNPP, 92, 0,
      b"\x00\x17"  # transaction id 23
      b"\x00\x00"  # protocol id 0
      b"\x00\x05"  # length 5
      b"\x01"      # unit 1
      b"\x2b"      # function 43
      b"\x0e"      # MEI type 14 read_device_identification
      b"\x01"      # read device id code 1
      b"\x00",     # object id 0
      Ok(43, 1, sub=14)),
    C("zeek/modbus-eit.pcap", 3, 0,
      b"\x00\x00"  # transaction id 0
      b"\x00\x00"  # protocol id 0
      b"\x00\x05"  # length 5
      b"\xff"      # unit 255
      b"\x2b"      # function 43
      b"\x0e"      # MEI type 14
      b"\x01"      # read device id code 1
      b"\x00",     # object id 0
      Ok(43, 255, sub=14)),
    C("zeek/modbusSmall.pcap", 24, 0,
      b"\x00\x01"  # transaction id 1
      b"\x00\x00"  # protocol id 0
      b"\x00\x08"  # length 8
      b"\x01"      # unit 1
      b"\x0f"      # function 15 write_multiple_coils
      b"\x00\x00"  # start 0
      b"\x00\x03"  # quantity 3
      b"\x01"      # byte count 1
      b"\x04",     # coils 0..2: 0,0,1
      Ok(15, 1, quantity=3, ranges=(("coils", 0, 2, "write"),),
         values=(("coils", 0, 0), ("coils", 1, 0), ("coils", 2, 1)))),
    C("zeek/fuzz-1011.pcap", 1, 0,
      b"\x04\x5f"  # transaction id 1119
      b"\x00\x00"  # protocol id 0
      b"\x00\x06"  # length 6
      b"\xff"      # unit 255
      b"\x04"      # function 4 read_input_registers
      b"\x03\x84"  # start 900
      b"\x00\x93", # quantity 147: above 125
      Bad("bad_quantity", 4, 255)),
    C("zeek/fuzz-1011.pcap", 5, 0,
      b"\x32\xc1"  # transaction id 12993
      b"\x00\x00"  # protocol id 0
      b"\x00\x06"  # length 6
      b"\xff"      # unit 255
      b"\x04"      # function 4 read_input_registers
      b"\x01\x90"  # start 400
      b"\x00\x64", # quantity 100
      Ok(4, 255, quantity=100, ranges=(("input_registers", 400, 499, "read"),))),
    C("zeek/fuzz-72.pcap", 3, 0,
      b"\x00\x00"  # transaction id 0
      b"\x00\x00"  # protocol id 0
      b"\x00\x06"  # length 6
      b"\x01"      # unit 1
      b"\x1d"      # function 29: not public, not parsed
      b"\x00\x00\x00\x00", # payload
      Ok(29, 1, known=False)),
    C("zeek/fuzz-72.pcap", 6, 0,
      b"\x00\x00"  # transaction id 0
      b"\x00\x00"  # protocol id 0
      b"\x00\x04"  # length 4 (the segment carries 2 more bytes after this ADU)
      b"\x01"      # unit 1
      b"\x21"      # function 33: not public
      b"\x00\x00", # payload
      Ok(33, 1, known=False)),
    C("zeek/fuzz-72.pcap", 16, 0,
      b"\x00\x00"  # transaction id 0
      b"\x00\x00"  # protocol id 0
      b"\x00\x06"  # length 6
      b"\x01"      # unit 1
      b"\x2b"      # function 43
      b"\x00"      # MEI type 0: neither 13 nor 14
      b"\x00\x00\x00", # payload
      Bad("bad_mei_type", 43, 1)),
    C("zeek/4SICS-GeekLounge-151022-min.pcap", 1, 0,
      b"\x00\x0b"  # transaction id 11
      b"\x00\x00"  # protocol id 0
      b"\x00\xfe"  # length 254: the largest a splitter accepts
      b"\x01"      # unit 1
      b"\x17"      # function 23 read_write_multiple_registers
      b"\x00\x00"  # read start 0
      b"\x00\x00"  # read quantity 0: below 1 (Zeek reports the length mismatch instead)
      b"\x00\xdf"  # write start 223
      b"\x21\x12"  # write quantity 8466
      b"\xbf"      # byte count 191
      + bytes.fromhex(  # 243 bytes of noise, cut from the frame as is
          "cfed0e80297f6f512d12c5e1c2e700b1a6201b5c0f6167be640a675532a0d9b28988aa8506f424cc20d721252ce6fc"
          "1da496f4bf06b6af6d854f1c1e18191e8d381357393d7aaab2fb4e3b374042927d0e49b19cac1aabd3d93c00b7d805"
          "b407b993ec198fc2df2aeb42c3b77a772d43bd9f10ce6882e01e678360007af3d9f69a347eac5678ed4b6a86b06a57"
          "f458620fbdf939f4e59e36b3cdb10b61dfaff768cc1c46f881ec44b1c464e1d176c6732bfdf1bdf9a001b49548f988"
          "c7e2e98ad7b8018ad7116a8ed0b5872f81bc643c063ee064edf2fdc7ca68b1af88647dcedad90a18753c9b199363ed"
          "4418d132d9e3bc81"
      ),
      Bad("bad_quantity", 23, 1)),
)
# fmt: on


@dataclass(frozen=True)
class CaptureSplit:
    capture: str
    frame: int
    status: str
    n: int


# What the splitter makes of the start of a frame's payload.
CAPTURED_SPLITS: tuple[CaptureSplit, ...] = (
    CaptureSplit(SURICATA, 76, "invalid", 2),  # 00 01 | 00 00 | 88 04: length 0x8804
    CaptureSplit(SURICATA, 80, "invalid", 1),  # 00 01 | 00 10 | 00 06: protocol id 0x0010
    CaptureSplit("zeek/fuzz-72.pcap", 35, "invalid", 1),  # aa aa | aa aa: protocol id 0xAAAA
    CaptureSplit("zeek/fuzz-72.pcap", 14, "incomplete", 31),  # length 0x25 with 6 bytes of 43 present
    CaptureSplit("zeek/fuzz-72.pcap", 6, "complete", 10),  # a 10-byte ADU and 2 stray bytes
    CaptureSplit("zeek/modbus-and-non-modbus-p502.pcap", 65, "invalid", 1),  # "GET / HTTP/1.1" on port 502
    CaptureSplit("zeek/modbus-and-non-modbus-p502.pcap", 49, "invalid", 1),  # a TLS ClientHello on port 502
)
