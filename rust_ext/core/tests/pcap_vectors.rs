//! Request vectors cut from the shared captures (../shared/pcaps), parsed as zonegate parses them.
//! Each names its capture and frame number (tshark numbering); every byte field is annotated.

use zonegate_core::modbus::frame::{split, Split};
use zonegate_core::modbus::functions::{Malformed, Table};
use zonegate_core::modbus::request::parse_request;

fn ranges(frame: &[u8]) -> Vec<(Table, u32, u32, bool)> {
    let r = parse_request(frame).expect("well formed");
    r.ranges().map(|g| (g.table, g.start, g.end, g.write)).collect()
}

fn values(frame: &[u8]) -> Vec<(u32, Option<u16>)> {
    let r = parse_request(frame).expect("well formed");
    r.values().map(|v| (v.address, v.value)).collect()
}

fn kind(frame: &[u8]) -> Malformed {
    parse_request(frame).expect_err("malformed").kind
}

/// icsnpp-modbus/modbus_example.pcap frame 4.
const ICSNPP_F4_READ_COILS: [u8; 12] = [
    0x00, 0x01, // transaction id 1
    0x00, 0x00, // protocol id
    0x00, 0x06, // length 6
    0x04, // unit 4
    0x01, // fc 1 read_coils
    0x00, 0x01, // start 1
    0x00, 0x01, // quantity 1
];

/// icsnpp-modbus/modbus_example.pcap frame 36.
const ICSNPP_F36_WRITE_SINGLE_COIL: [u8; 12] = [
    0x00, 0x09, // transaction id 9
    0x00, 0x00, // protocol id
    0x00, 0x06, // length 6
    0x06, // unit 6
    0x05, // fc 5 write_single_coil
    0x00, 0x01, // address 1
    0xFF, 0x00, // ON
];

/// icsnpp-modbus/modbus_example.pcap frame 52.
const ICSNPP_F52_WRITE_MULTIPLE_COILS: [u8; 14] = [
    0x00, 0x0D, // transaction id 13
    0x00, 0x00, // protocol id
    0x00, 0x08, // length 8
    0x07, // unit 7
    0x0F, // fc 15 write_multiple_coils
    0x00, 0x01, // start 1
    0x00, 0x04, // quantity 4
    0x01, // byte count 1
    0x09, // coils 1..=4: 1,0,0,1
];

/// icsnpp-modbus/modbus_example.pcap frame 56.
const ICSNPP_F56_WRITE_MULTIPLE_REGISTERS: [u8; 21] = [
    0x00, 0x0E, // transaction id 14
    0x00, 0x00, // protocol id
    0x00, 0x0F, // length 15
    0x07, // unit 7
    0x10, // fc 16 write_multiple_registers
    0x00, 0x01, // start 1
    0x00, 0x04, // quantity 4
    0x08, // byte count 8
    0x00, 0xAA, // register 1
    0x00, 0xBB, // register 2
    0x00, 0xCC, // register 3
    0x00, 0xDD, // register 4
];

/// icsnpp-modbus/modbus_example.pcap frame 64: a read file record with no sub-request.
const ICSNPP_F64_READ_FILE_RECORD_EMPTY: [u8; 9] = [
    0x00, 0x10, // transaction id 16
    0x00, 0x00, // protocol id
    0x00, 0x03, // length 3
    0x08, // unit 8
    0x14, // fc 20 read_file_record
    0x00, // byte count 0: below the minimum of 7
];

/// icsnpp-modbus/modbus_example.pcap frame 68: a write file record with no sub-request.
const ICSNPP_F68_WRITE_FILE_RECORD_EMPTY: [u8; 9] = [
    0x00, 0x11, // transaction id 17
    0x00, 0x00, // protocol id
    0x00, 0x03, // length 3
    0x08, // unit 8
    0x15, // fc 21 write_file_record
    0x00, // byte count 0: below the minimum of 9
];

/// icsnpp-modbus/modbus_example.pcap frame 72.
const ICSNPP_F72_MASK_WRITE: [u8; 14] = [
    0x00, 0x12, // transaction id 18
    0x00, 0x00, // protocol id
    0x00, 0x08, // length 8
    0x04, // unit 4
    0x16, // fc 22 mask_write_register
    0x00, 0x0A, // address 10
    0xDE, 0xAD, // AND mask
    0x00, 0x00, // OR mask
];

/// icsnpp-modbus/modbus_example.pcap frame 84.
const ICSNPP_F84_READ_WRITE: [u8; 23] = [
    0x00, 0x15, // transaction id 21
    0x00, 0x00, // protocol id
    0x00, 0x11, // length 17
    0x06, // unit 6
    0x17, // fc 23 read_write_multiple_registers
    0x00, 0x01, // read start 1
    0x00, 0x04, // read quantity 4
    0x00, 0x02, // write start 2
    0x00, 0x03, // write quantity 3
    0x06, // byte count 6
    0x00, 0xAA, // register 2
    0x00, 0xBB, // register 3
    0x00, 0xCC, // register 4
];

/// icsnpp-modbus/modbus_example.pcap frame 88.
const ICSNPP_F88_READ_FIFO: [u8; 10] = [
    0x00, 0x16, // transaction id 22
    0x00, 0x00, // protocol id
    0x00, 0x04, // length 4
    0x0A, // unit 10
    0x18, // fc 24 read_fifo_queue
    0x00, 0x00, // FIFO pointer address 0
];

/// suricata-verify/modbus/modbus.pcap frame 8.
const SURICATA_F8_DIAGNOSTICS: [u8; 12] = [
    0x00, 0x00, // transaction id 0
    0x00, 0x00, // protocol id
    0x00, 0x06, // length 6
    0x0A, // unit 10
    0x08, // fc 8 diagnostics
    0x00, 0x04, // sub-function 4 force listen only mode
    0x00, 0x00, // data
];

/// suricata-verify/modbus/modbus.pcap frame 32.
const SURICATA_F32_DEVICE_ID: [u8; 12] = [
    0x00, 0x01, // transaction id 1
    0x00, 0x00, // protocol id
    0x00, 0x06, // length 6
    0x0A, // unit 10
    0x2B, // fc 43 encapsulated_interface_transport
    0x0E, // MEI 14 read device identification
    0x03, // read device id code 3 (extended)
    0x01, // object id 1
    0x00, // one byte beyond the three MEI 14 carries
];

/// zeek/modbus-eit.pcap frame 3.
const ZEEK_EIT_F3_DEVICE_ID_UNIT_255: [u8; 11] = [
    0x00, 0x00, // transaction id 0
    0x00, 0x00, // protocol id
    0x00, 0x05, // length 5
    0xFF, // unit 255
    0x2B, // fc 43
    0x0E, // MEI 14
    0x01, // read device id code 1 (basic)
    0x00, // object id 0
];

/// zeek/4SICS-GeekLounge-151022-min.pcap frame 1, first 17 of 260 bytes (the rest is noise).
const ZEEK_4SICS_F1_READ_WRITE_HEAD: [u8; 17] = [
    0x00, 0x0B, // transaction id 11
    0x00, 0x00, // protocol id
    0x00, 0xFE, // length 254
    0x01, // unit 1
    0x17, // fc 23
    0x00, 0x00, // read start 0
    0x00, 0x00, // read quantity 0
    0x00, 0xDF, // write start 223
    0x21, 0x12, // write quantity 8466
    0xBF, // byte count 191
];

#[test]
fn icsnpp_reads_and_writes() {
    assert_eq!(ranges(&ICSNPP_F4_READ_COILS), vec![(Table::Coils, 1, 1, false)]);
    assert_eq!(parse_request(&ICSNPP_F4_READ_COILS).unwrap().unit, 4);
    assert_eq!(values(&ICSNPP_F36_WRITE_SINGLE_COIL), vec![(1, Some(1))]);
    assert_eq!(values(&ICSNPP_F52_WRITE_MULTIPLE_COILS), vec![(1, Some(1)), (2, Some(0)), (3, Some(0)), (4, Some(1))]);
    assert_eq!(
        values(&ICSNPP_F56_WRITE_MULTIPLE_REGISTERS),
        vec![(1, Some(0xAA)), (2, Some(0xBB)), (3, Some(0xCC)), (4, Some(0xDD))]
    );
    assert_eq!(values(&ICSNPP_F72_MASK_WRITE), vec![(10, None)]);
    assert_eq!(
        ranges(&ICSNPP_F84_READ_WRITE),
        vec![(Table::HoldingRegisters, 1, 4, false), (Table::HoldingRegisters, 2, 4, true)]
    );
    assert_eq!(ranges(&ICSNPP_F88_READ_FIFO), vec![(Table::HoldingRegisters, 0, 0, false)]);
}

#[test]
fn icsnpp_empty_file_record_requests_are_malformed() {
    assert_eq!(kind(&ICSNPP_F64_READ_FILE_RECORD_EMPTY), Malformed::BadByteCount);
    assert_eq!(kind(&ICSNPP_F68_WRITE_FILE_RECORD_EMPTY), Malformed::BadByteCount);
}

#[test]
fn suricata_diagnostics_and_device_identification() {
    assert_eq!(parse_request(&SURICATA_F8_DIAGNOSTICS).unwrap().function_key(), (8, Some(4)));
    // The capture's MEI 14 request carries one byte more than the specification's three.
    let e = parse_request(&SURICATA_F32_DEVICE_ID).unwrap_err();
    assert_eq!((e.kind, e.function, e.sub, e.unit), (Malformed::TrailingBytes, 43, Some(14), 10));
}

#[test]
fn zeek_unit_255_and_a_fuzzed_read_write() {
    let r = parse_request(&ZEEK_EIT_F3_DEVICE_ID_UNIT_255).unwrap();
    assert_eq!((r.unit, r.function_key()), (255, (43, Some(14))));
    // The splitter waits for all 260 bytes; given them, the read quantity 0 is the first fault.
    assert_eq!(split(&ZEEK_4SICS_F1_READ_WRITE_HEAD), Split::Incomplete { needed: 260 - 17 });
    let mut whole = ZEEK_4SICS_F1_READ_WRITE_HEAD.to_vec();
    whole.resize(260, 0x5A);
    assert_eq!(split(&whole), Split::Complete { used: 260 });
    assert_eq!(kind(&whole), Malformed::BadQuantity);
}
