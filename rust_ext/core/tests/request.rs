//! Request parsing (docs/engine.md section 2): every public function code, valid and invalid, with
//! the checks in their listed order. Every byte field of every vector carries a comment.

use zonegate_core::modbus::functions::{FunctionCode, Malformed, Table};
use zonegate_core::modbus::request::{parse_request, Range, Request, WrittenValue};

fn ok(frame: &[u8]) -> Request<'_> {
    match parse_request(frame) {
        Ok(r) => r,
        Err(e) => panic!("expected a request, got {e:?}"),
    }
}

fn kind(frame: &[u8]) -> Malformed {
    match parse_request(frame) {
        Ok(r) => panic!("expected malformed, got {r:?}"),
        Err(e) => e.kind,
    }
}

fn ranges(r: &Request<'_>) -> Vec<(Table, u32, u32, bool)> {
    r.ranges().map(|Range { table, start, end, write }| (table, start, end, write)).collect()
}

fn values(r: &Request<'_>) -> Vec<(Table, u32, Option<u16>)> {
    r.values().map(|WrittenValue { table, address, value }| (table, address, value)).collect()
}

/// Builds an ADU with a correct MBAP header around `pdu` (for cases where the header is not the point).
fn adu(unit: u8, pdu: &[u8]) -> Vec<u8> {
    let mut v = vec![0x00, 0x2A, 0x00, 0x00];
    v.extend_from_slice(&((pdu.len() + 1) as u16).to_be_bytes());
    v.push(unit);
    v.extend_from_slice(pdu);
    v
}

// ---------------------------------------------------------------- header

#[test]
fn frame_shorter_than_a_function_code_is_truncated() {
    let frame = [
        0x00, 0x01, // transaction id
        0x00, 0x00, // protocol id
        0x00, 0x01, // length 1: unit only
        0x05, // unit 5
    ];
    let e = parse_request(&frame).unwrap_err();
    assert_eq!((e.kind, e.function, e.unit), (Malformed::Truncated, 0, 5));
    assert_eq!(kind(&[]), Malformed::Truncated);
}

#[test]
fn frame_shorter_than_its_length_field_is_truncated() {
    let frame = [
        0x00, 0x01, // transaction id
        0x00, 0x00, // protocol id
        0x00, 0x06, // length 6, but only 5 bytes follow
        0x01, // unit
        0x03, // fc 3
        0x00, 0x00, // start
        0x00, // quantity, first byte only
    ];
    assert_eq!(kind(&frame), Malformed::Truncated);
}

#[test]
fn frame_longer_than_its_length_field_has_trailing_bytes() {
    let frame = [
        0x00, 0x01, // transaction id
        0x00, 0x00, // protocol id
        0x00, 0x06, // length 6
        0x01, // unit
        0x03, // fc 3
        0x00, 0x00, // start
        0x00, 0x01, // quantity
        0xAA, // one byte beyond the ADU
    ];
    assert_eq!(kind(&frame), Malformed::TrailingBytes);
}

#[test]
fn frame_with_a_protocol_id_is_refused() {
    let frame = [
        0x00, 0x01, // transaction id
        0x00, 0x07, // protocol id 7: not Modbus
        0x00, 0x06, // length 6
        0x01, // unit
        0x03, // fc 3
        0x00, 0x00, // start
        0x00, 0x01, // quantity
    ];
    assert_eq!(kind(&frame), Malformed::Truncated);
}

// ---------------------------------------------------------------- fc 1-4

#[test]
fn read_coils_touches_its_range() {
    let frame = [
        0x12, 0x34, // transaction id 0x1234
        0x00, 0x00, // protocol id
        0x00, 0x06, // length 6
        0x11, // unit 17
        0x01, // fc 1 read_coils
        0x00, 0x13, // start 19
        0x00, 0x25, // quantity 37
    ];
    let r = ok(&frame);
    assert_eq!((r.transaction_id, r.unit, r.function, r.sub), (0x1234, 17, 1, None));
    assert_eq!(r.code, Some(FunctionCode::ReadCoils));
    assert_eq!(ranges(&r), vec![(Table::Coils, 19, 55, false)]);
    assert_eq!(r.quantity, 37);
    assert!(values(&r).is_empty());
    assert!(!r.is_write());
}

#[test]
fn read_discrete_inputs_accepts_2000_bits() {
    let frame = [
        0x00, 0x01, // transaction id
        0x00, 0x00, // protocol id
        0x00, 0x06, // length
        0x01, // unit
        0x02, // fc 2 read_discrete_inputs
        0x00, 0x00, // start 0
        0x07, 0xD0, // quantity 2000 (the limit)
    ];
    let r = ok(&frame);
    assert_eq!(ranges(&r), vec![(Table::DiscreteInputs, 0, 1999, false)]);
    assert_eq!(r.quantity, 2000);
}

#[test]
fn read_bits_refuses_zero_and_2001() {
    for qty in [0u16, 2001] {
        let q = qty.to_be_bytes();
        let frame = [
            0x00, 0x01, // transaction id
            0x00, 0x00, // protocol id
            0x00, 0x06, // length
            0x01, // unit
            0x01, // fc 1
            0x00, 0x00, // start
            q[0], q[1], // quantity 0 or 2001
        ];
        assert_eq!(kind(&frame), Malformed::BadQuantity, "qty {qty}");
    }
}

#[test]
fn read_holding_registers_touches_its_range() {
    let frame = [
        0x00, 0x01, // transaction id
        0x00, 0x00, // protocol id
        0x00, 0x06, // length
        0x01, // unit
        0x03, // fc 3 read_holding_registers
        0x00, 0x6B, // start 107
        0x00, 0x03, // quantity 3
    ];
    let r = ok(&frame);
    assert_eq!(ranges(&r), vec![(Table::HoldingRegisters, 107, 109, false)]);
    assert_eq!(r.quantity, 3);
}

#[test]
fn read_input_registers_refuses_126() {
    let frame = [
        0x00, 0x01, // transaction id
        0x00, 0x00, // protocol id
        0x00, 0x06, // length
        0x01, // unit
        0x04, // fc 4 read_input_registers
        0x00, 0x00, // start
        0x00, 0x7E, // quantity 126 (limit 125)
    ];
    assert_eq!(kind(&frame), Malformed::BadQuantity);
    let mut at_limit = frame;
    at_limit[11] = 0x7D; // quantity 125
    assert_eq!(ranges(&ok(&at_limit)), vec![(Table::InputRegisters, 0, 124, false)]);
}

#[test]
fn read_past_address_65535_overflows() {
    let frame = [
        0x00, 0x01, // transaction id
        0x00, 0x00, // protocol id
        0x00, 0x06, // length
        0x01, // unit
        0x03, // fc 3
        0xFF, 0xFF, // start 65535
        0x00, 0x02, // quantity 2: would touch 65536
    ];
    assert_eq!(kind(&frame), Malformed::AddressOverflow);
    let mut last = frame;
    last[11] = 0x01; // quantity 1: touches 65535 only
    assert_eq!(ranges(&ok(&last)), vec![(Table::HoldingRegisters, 65535, 65535, false)]);
}

#[test]
fn quantity_is_checked_before_overflow() {
    let frame = [
        0x00, 0x01, // transaction id
        0x00, 0x00, // protocol id
        0x00, 0x06, // length
        0x01, // unit
        0x03, // fc 3
        0xFF, 0xFF, // start 65535
        0x00, 0x7E, // quantity 126: bad quantity and overflow; quantity is checked first
    ];
    assert_eq!(kind(&frame), Malformed::BadQuantity);
}

#[test]
fn read_with_short_or_long_data() {
    assert_eq!(kind(&adu(1, &[0x03, 0x00, 0x00, 0x00])), Malformed::Truncated); // 3 data bytes
    assert_eq!(kind(&adu(1, &[0x03, 0x00, 0x00, 0x00, 0x01, 0x00])), Malformed::TrailingBytes); // 5
    assert_eq!(kind(&adu(1, &[0x03])), Malformed::Truncated); // no data at all
}

// ---------------------------------------------------------------- fc 5, 6

#[test]
fn write_single_coil_on_and_off() {
    let on = [
        0x00, 0x01, // transaction id
        0x00, 0x00, // protocol id
        0x00, 0x06, // length
        0x01, // unit
        0x05, // fc 5 write_single_coil
        0x00, 0xAC, // address 172
        0xFF, 0x00, // value ON
    ];
    let r = ok(&on);
    assert_eq!(ranges(&r), vec![(Table::Coils, 172, 172, true)]);
    assert_eq!(values(&r), vec![(Table::Coils, 172, Some(1))]);
    assert_eq!(r.quantity, 1);
    let mut off = on;
    off[10] = 0x00; // value OFF
    assert_eq!(values(&ok(&off)), vec![(Table::Coils, 172, Some(0))]);
}

#[test]
fn write_single_coil_refuses_other_values() {
    for v in [0x0001u16, 0x00FF, 0xFFFF, 0x0100] {
        let b = v.to_be_bytes();
        let frame = [
            0x00, 0x01, // transaction id
            0x00, 0x00, // protocol id
            0x00, 0x06, // length
            0x01, // unit
            0x05, // fc 5
            0x00, 0x00, // address 0
            b[0], b[1], // value: neither 0x0000 nor 0xFF00
        ];
        assert_eq!(kind(&frame), Malformed::BadCoilValue, "value {v:#06x}");
    }
}

#[test]
fn write_single_coil_length_before_value() {
    let frame = adu(1, &[0x05, 0x00, 0x00, 0x12, 0x34, 0x00]); // bad value and a trailing byte
    assert_eq!(kind(&frame), Malformed::TrailingBytes);
}

#[test]
fn write_single_register_carries_its_value() {
    let frame = [
        0x00, 0x01, // transaction id
        0x00, 0x00, // protocol id
        0x00, 0x06, // length
        0x01, // unit
        0x06, // fc 6 write_single_register
        0x00, 0x01, // address 1
        0x00, 0x03, // value 3
    ];
    let r = ok(&frame);
    assert_eq!(ranges(&r), vec![(Table::HoldingRegisters, 1, 1, true)]);
    assert_eq!(values(&r), vec![(Table::HoldingRegisters, 1, Some(3))]);
    assert!(r.is_write());
    assert_eq!(kind(&adu(1, &[0x06, 0x00, 0x01, 0x00])), Malformed::Truncated);
}

// ---------------------------------------------------------------- fc 7, 11, 12, 17

#[test]
fn functions_without_data() {
    for fc in [0x07u8, 0x0B, 0x0C, 0x11] {
        let frame = [
            0x00, 0x01, // transaction id
            0x00, 0x00, // protocol id
            0x00, 0x02, // length 2: unit + function code
            0x01, // unit
            fc,   // fc 7 / 11 / 12 / 17
        ];
        let r = ok(&frame);
        assert!(ranges(&r).is_empty() && values(&r).is_empty());
        assert_eq!((r.quantity, r.sub), (0, None));
        assert_eq!(kind(&adu(1, &[fc, 0x00])), Malformed::TrailingBytes, "fc {fc}");
    }
}

// ---------------------------------------------------------------- fc 8

#[test]
fn diagnostics_return_query_data_echoes_any_even_length() {
    let frame = [
        0x00, 0x01, // transaction id
        0x00, 0x00, // protocol id
        0x00, 0x08, // length 8
        0x01, // unit
        0x08, // fc 8 diagnostics
        0x00, 0x00, // sub-function 0 return query data
        0xA5, 0x37, // data word 1
        0x12, 0x34, // data word 2
    ];
    let r = ok(&frame);
    assert_eq!(r.function_key(), (8, Some(0)));
    assert!(ranges(&r).is_empty());
    let bare = adu(1, &[0x08, 0x00, 0x00]); // sub 0 without data
    assert_eq!(ok(&bare).sub, Some(0));
    let odd = adu(1, &[0x08, 0x00, 0x00, 0xA5]); // sub 0 with one data byte
    assert_eq!(kind(&odd), Malformed::TrailingBytes);
}

#[test]
fn diagnostics_other_subfunctions_take_one_word() {
    for sub in [1u8, 2, 3, 4, 10, 11, 12, 13, 14, 15, 16, 17, 18, 20] {
        let frame = [
            0x00, 0x01, // transaction id
            0x00, 0x00, // protocol id
            0x00, 0x06, // length
            0x01, // unit
            0x08, // fc 8
            0x00, sub, // sub-function
            0x00, 0x00, // data word
        ];
        assert_eq!(ok(&frame).sub, Some(sub as u16));
        assert_eq!(kind(&adu(1, &[0x08, 0x00, sub, 0x00])), Malformed::Truncated, "sub {sub}");
        assert_eq!(kind(&adu(1, &[0x08, 0x00, sub, 0, 0, 0])), Malformed::TrailingBytes, "sub {sub}");
    }
}

#[test]
fn diagnostics_refuses_unknown_subfunctions() {
    for sub in [5u16, 6, 9, 19, 21, 0x0100, 0xFFFF] {
        let s = sub.to_be_bytes();
        let frame = [
            0x00, 0x01, // transaction id
            0x00, 0x00, // protocol id
            0x00, 0x06, // length
            0x01, // unit
            0x08, // fc 8
            s[0], s[1], // sub-function not in the accepted set
            0x00, 0x00, // data word
        ];
        let e = parse_request(&frame).unwrap_err();
        assert_eq!((e.kind, e.sub), (Malformed::BadSubfunction, Some(sub)), "sub {sub}");
    }
    assert_eq!(kind(&adu(1, &[0x08, 0x00])), Malformed::Truncated); // one sub-function byte
}

// ---------------------------------------------------------------- fc 15

#[test]
fn write_multiple_coils_yields_each_bit() {
    let frame = [
        0x00, 0x01, // transaction id
        0x00, 0x00, // protocol id
        0x00, 0x09, // length 9
        0x01, // unit
        0x0F, // fc 15 write_multiple_coils
        0x00, 0x13, // start 19
        0x00, 0x0A, // quantity 10
        0x02, // byte count 2 = ceil(10 / 8)
        0xCD, // coils 19..=26: 1,0,1,1,0,0,1,1 (LSB first)
        0x01, // coils 27..=28: 1,0
    ];
    let r = ok(&frame);
    assert_eq!(ranges(&r), vec![(Table::Coils, 19, 28, true)]);
    let bits: Vec<u16> = r.values().map(|v| v.value.unwrap()).collect();
    assert_eq!(bits, vec![1, 0, 1, 1, 0, 0, 1, 1, 1, 0]);
    assert_eq!(r.values().next().unwrap().address, 19);
    assert_eq!(r.values().last().unwrap().address, 28);
    assert_eq!(r.quantity, 10);
}

#[test]
fn write_multiple_coils_checks_in_order() {
    // quantity 0 (and a wrong byte count): quantity first
    assert_eq!(kind(&adu(1, &[0x0F, 0x00, 0x00, 0x00, 0x00, 0x01, 0xFF])), Malformed::BadQuantity);
    // quantity 1969
    assert_eq!(kind(&adu(1, &[0x0F, 0x00, 0x00, 0x07, 0xB1, 0x01, 0xFF])), Malformed::BadQuantity);
    // start 65535, quantity 2: overflow before byte count
    assert_eq!(kind(&adu(1, &[0x0F, 0xFF, 0xFF, 0x00, 0x02, 0x05, 0x03])), Malformed::AddressOverflow);
    // quantity 9 needs byte count 2, says 1
    assert_eq!(kind(&adu(1, &[0x0F, 0x00, 0x00, 0x00, 0x09, 0x01, 0xFF])), Malformed::BadByteCount);
    // byte count right, one data byte missing
    assert_eq!(kind(&adu(1, &[0x0F, 0x00, 0x00, 0x00, 0x09, 0x02, 0xFF])), Malformed::Truncated);
    // byte count right, one extra byte
    assert_eq!(kind(&adu(1, &[0x0F, 0x00, 0x00, 0x00, 0x08, 0x01, 0xFF, 0x00])), Malformed::TrailingBytes);
    // fewer than 5 data bytes
    assert_eq!(kind(&adu(1, &[0x0F, 0x00, 0x00, 0x00, 0x08])), Malformed::Truncated);
}

// ---------------------------------------------------------------- fc 16

#[test]
fn write_multiple_registers_yields_each_word() {
    let frame = [
        0x00, 0x01, // transaction id
        0x00, 0x00, // protocol id
        0x00, 0x0B, // length 11
        0x01, // unit
        0x10, // fc 16 write_multiple_registers
        0x00, 0x01, // start 1
        0x00, 0x02, // quantity 2
        0x04, // byte count 4
        0x00, 0x0A, // register 1 = 10
        0x01, 0x02, // register 2 = 258
    ];
    let r = ok(&frame);
    assert_eq!(ranges(&r), vec![(Table::HoldingRegisters, 1, 2, true)]);
    assert_eq!(values(&r), vec![(Table::HoldingRegisters, 1, Some(10)), (Table::HoldingRegisters, 2, Some(258))]);
    assert_eq!(r.quantity, 2);
}

#[test]
fn write_multiple_registers_checks_in_order() {
    let mut big = vec![0x10, 0x00, 0x00, 0x00, 0x7C, 0xF8]; // quantity 124 (limit 123), byte count 248
    big.resize(6 + 248, 0);
    assert_eq!(kind(&adu(1, &big[..200])), Malformed::BadQuantity);
    assert_eq!(kind(&adu(1, &[0x10, 0xFF, 0xFF, 0x00, 0x02, 0x04, 0, 1, 0, 2])), Malformed::AddressOverflow);
    assert_eq!(kind(&adu(1, &[0x10, 0x00, 0x00, 0x00, 0x02, 0x03, 0, 1, 0])), Malformed::BadByteCount);
    assert_eq!(kind(&adu(1, &[0x10, 0x00, 0x00, 0x00, 0x02, 0x04, 0, 1, 0])), Malformed::Truncated);
    assert_eq!(kind(&adu(1, &[0x10, 0x00, 0x00, 0x00, 0x01, 0x02, 0, 1, 0])), Malformed::TrailingBytes);
    assert_eq!(kind(&adu(1, &[0x10, 0x00, 0x00, 0x00, 0x01])), Malformed::Truncated);
}

// ---------------------------------------------------------------- fc 20

#[test]
fn read_file_record_touches_one_range_per_sub_request() {
    let frame = [
        0x00, 0x01, // transaction id
        0x00, 0x00, // protocol id
        0x00, 0x11, // length 17
        0x01, // unit
        0x14, // fc 20 read_file_record
        0x0E, // byte count 14: two sub-requests
        0x06, // sub-request 1: reference type 6
        0x00, 0x04, // file 4
        0x00, 0x01, // record 1
        0x00, 0x02, // record length 2
        0x06, // sub-request 2: reference type 6
        0x00, 0x03, // file 3
        0x00, 0x09, // record 9
        0x00, 0x05, // record length 5
    ];
    let r = ok(&frame);
    assert_eq!(
        ranges(&r),
        vec![
            (Table::FileRecords, 4 << 16 | 1, 4 << 16 | 2, false),
            (Table::FileRecords, 3 << 16 | 9, 3 << 16 | 13, false),
        ]
    );
    assert_eq!(r.quantity, 5);
    assert!(values(&r).is_empty());
}

#[test]
fn read_file_record_checks_in_order() {
    let sub = |rt: u8, file: u16, rec: u16, len: u16| {
        let mut v = vec![rt];
        v.extend_from_slice(&file.to_be_bytes());
        v.extend_from_slice(&rec.to_be_bytes());
        v.extend_from_slice(&len.to_be_bytes());
        v
    };
    let req = |subs: &[Vec<u8>]| {
        let body: Vec<u8> = subs.concat();
        let mut pdu = vec![0x14, body.len() as u8];
        pdu.extend_from_slice(&body);
        adu(1, &pdu)
    };
    assert_eq!(kind(&adu(1, &[0x14])), Malformed::Truncated);
    assert_eq!(kind(&adu(1, &[0x14, 0x00])), Malformed::BadByteCount); // byte count 0
    assert_eq!(kind(&adu(1, &[0x14, 0x08, 6, 0, 1, 0, 0, 0, 1, 0])), Malformed::BadByteCount); // 8 % 7
    assert_eq!(kind(&adu(1, &[0x14, 0x07, 6, 0, 1, 0, 0, 0])), Malformed::Truncated);
    assert_eq!(kind(&adu(1, &[0x14, 0x07, 6, 0, 1, 0, 0, 0, 1, 9])), Malformed::TrailingBytes);
    assert_eq!(kind(&req(&[sub(5, 1, 0, 1)])), Malformed::BadReferenceType);
    assert_eq!(kind(&req(&[sub(6, 0, 0, 1)])), Malformed::BadRecord); // file 0
    assert_eq!(kind(&req(&[sub(6, 1, 10000, 1)])), Malformed::BadRecord); // record 10000
    assert_eq!(kind(&req(&[sub(6, 1, 0, 0)])), Malformed::BadRecord); // length 0
    assert_eq!(kind(&req(&[sub(6, 1, 9990, 11)])), Malformed::BadRecord); // past record 9999
    assert_eq!(
        ranges(&ok(&req(&[sub(6, 65535, 9990, 10)]))),
        vec![(Table::FileRecords, 0xFFFF_2706, 0xFFFF_270F, false)]
    );
    // The first sub-request's fault wins over a later one's.
    assert_eq!(kind(&req(&[sub(6, 0, 0, 1), sub(7, 1, 0, 1)])), Malformed::BadRecord);
    assert_eq!(kind(&req(&[sub(6, 1, 0, 1), sub(7, 1, 0, 1)])), Malformed::BadReferenceType);
    // 35 sub-requests (byte count 245) is the most a request can hold.
    let many: Vec<Vec<u8>> = (0..35).map(|i| sub(6, 1, i * 10, 1)).collect();
    assert_eq!(ranges(&ok(&req(&many))).len(), 35);
}

// ---------------------------------------------------------------- fc 21

#[test]
fn write_file_record_yields_record_words() {
    let frame = [
        0x00, 0x01, // transaction id
        0x00, 0x00, // protocol id
        0x00, 0x0E, // length 14
        0x01, // unit
        0x15, // fc 21 write_file_record
        0x0B, // byte count 11
        0x06, // reference type 6
        0x00, 0x04, // file 4
        0x00, 0x07, // record 7
        0x00, 0x02, // record length 2
        0x06, 0xAF, // record 7 = 0x06AF
        0x04, 0xBE, // record 8 = 0x04BE
    ];
    let r = ok(&frame);
    assert_eq!(ranges(&r), vec![(Table::FileRecords, 4 << 16 | 7, 4 << 16 | 8, true)]);
    assert_eq!(
        values(&r),
        vec![(Table::FileRecords, 4 << 16 | 7, Some(0x06AF)), (Table::FileRecords, 4 << 16 | 8, Some(0x04BE))]
    );
    assert_eq!(r.quantity, 2);
}

#[test]
fn write_file_record_two_sub_requests() {
    let frame = [
        0x00, 0x01, // transaction id
        0x00, 0x00, // protocol id
        0x00, 0x17, // length 23
        0x01, // unit
        0x15, // fc 21
        0x14, // byte count 20
        0x06, // sub 1: reference type
        0x00, 0x01, // file 1
        0x00, 0x00, // record 0
        0x00, 0x01, // length 1
        0x00, 0x05, // record 0 = 5
        0x06, // sub 2: reference type
        0x00, 0x02, // file 2
        0x00, 0x0A, // record 10
        0x00, 0x02, // length 2
        0xFF, 0xFF, // record 10 = 65535
        0x80, 0x00, // record 11 = 32768
    ];
    let r = ok(&frame);
    assert_eq!(ranges(&r).len(), 2);
    let vals: Vec<(u32, u16)> = r.values().map(|v| (v.address, v.value.unwrap())).collect();
    assert_eq!(vals, vec![(1 << 16, 5), (2 << 16 | 10, 0xFFFF), (2 << 16 | 11, 0x8000)]);
}

#[test]
fn write_file_record_checks_in_order() {
    assert_eq!(kind(&adu(1, &[0x15])), Malformed::Truncated);
    assert_eq!(kind(&adu(1, &[0x15, 0x08, 6, 0, 1, 0, 0, 0, 0, 0])), Malformed::BadByteCount); // bc 8
    assert_eq!(kind(&adu(1, &[0x15, 0xFC])), Malformed::BadByteCount); // bc 252
    assert_eq!(kind(&adu(1, &[0x15, 0x09, 6, 0, 1, 0, 0, 0, 1, 0])), Malformed::Truncated);
    assert_eq!(kind(&adu(1, &[0x15, 0x09, 6, 0, 1, 0, 0, 0, 1, 0, 5, 0])), Malformed::TrailingBytes);
    // record length 2 needs 4 data bytes, 2 present
    assert_eq!(kind(&adu(1, &[0x15, 0x09, 6, 0, 1, 0, 0, 0, 2, 0, 5])), Malformed::BadByteCount);
    // a second sub-request with fewer than 7 bytes
    assert_eq!(kind(&adu(1, &[0x15, 0x0F, 6, 0, 1, 0, 0, 0, 1, 0, 5, 6, 0, 1, 0, 0, 0])), Malformed::BadByteCount);
    assert_eq!(kind(&adu(1, &[0x15, 0x09, 7, 0, 1, 0, 0, 0, 1, 0, 5])), Malformed::BadReferenceType);
    assert_eq!(kind(&adu(1, &[0x15, 0x09, 6, 0, 0, 0, 0, 0, 1, 0, 5])), Malformed::BadRecord); // file 0
    assert_eq!(kind(&adu(1, &[0x15, 0x09, 6, 0, 1, 0x27, 0x10, 0, 1, 0, 5])), Malformed::BadRecord);
    // rec 10000
}

// ---------------------------------------------------------------- fc 22

#[test]
fn mask_write_register_writes_an_unknown_value() {
    let frame = [
        0x00, 0x01, // transaction id
        0x00, 0x00, // protocol id
        0x00, 0x08, // length 8
        0x01, // unit
        0x16, // fc 22 mask_write_register
        0x00, 0x04, // address 4
        0x00, 0xF2, // AND mask
        0x00, 0x25, // OR mask
    ];
    let r = ok(&frame);
    assert_eq!(ranges(&r), vec![(Table::HoldingRegisters, 4, 4, true)]);
    assert_eq!(values(&r), vec![(Table::HoldingRegisters, 4, None)]);
    assert_eq!(kind(&adu(1, &[0x16, 0, 4, 0, 0xF2, 0])), Malformed::Truncated);
    assert_eq!(kind(&adu(1, &[0x16, 0, 4, 0, 0xF2, 0, 0x25, 0])), Malformed::TrailingBytes);
}

// ---------------------------------------------------------------- fc 23

#[test]
fn read_write_multiple_registers_has_two_ranges() {
    let frame = [
        0x00, 0x01, // transaction id
        0x00, 0x00, // protocol id
        0x00, 0x11, // length 17
        0x01, // unit
        0x17, // fc 23 read_write_multiple_registers
        0x00, 0x03, // read start 3
        0x00, 0x06, // read quantity 6
        0x00, 0x0E, // write start 14
        0x00, 0x03, // write quantity 3
        0x06, // byte count 6
        0x00, 0xFF, // register 14 = 255
        0x00, 0xFF, // register 15 = 255
        0x00, 0xFF, // register 16 = 255
    ];
    let r = ok(&frame);
    assert_eq!(ranges(&r), vec![(Table::HoldingRegisters, 3, 8, false), (Table::HoldingRegisters, 14, 16, true)]);
    assert_eq!(values(&r).len(), 3);
    assert_eq!(values(&r)[2], (Table::HoldingRegisters, 16, Some(255)));
    assert_eq!(r.quantity, 6);
}

#[test]
fn read_write_multiple_registers_checks_in_order() {
    let f = |rs: u16, rq: u16, ws: u16, wq: u16, bc: u8, data: usize| {
        let mut pdu = vec![0x17];
        for x in [rs, rq, ws, wq] {
            pdu.extend_from_slice(&x.to_be_bytes());
        }
        pdu.push(bc);
        pdu.resize(pdu.len() + data, 0);
        adu(1, &pdu)
    };
    assert_eq!(kind(&adu(1, &[0x17, 0, 0, 0, 1, 0, 0, 0, 1])), Malformed::Truncated); // 8 data bytes
    assert_eq!(kind(&f(0, 0, 0, 1, 2, 2)), Malformed::BadQuantity); // read 0
    assert_eq!(kind(&f(0, 126, 0, 1, 2, 2)), Malformed::BadQuantity); // read 126
    assert_eq!(kind(&f(65535, 2, 0, 122, 2, 2)), Malformed::AddressOverflow); // read overflow before write qty
    assert_eq!(kind(&f(0, 1, 0, 122, 244, 0)), Malformed::BadQuantity); // write 122
    assert_eq!(kind(&f(0, 1, 0, 0, 0, 0)), Malformed::BadQuantity); // write 0
    assert_eq!(kind(&f(0, 1, 65535, 2, 4, 4)), Malformed::AddressOverflow); // write overflow
    assert_eq!(kind(&f(0, 1, 0, 2, 3, 3)), Malformed::BadByteCount);
    assert_eq!(kind(&f(0, 1, 0, 2, 4, 3)), Malformed::Truncated);
    assert_eq!(kind(&f(0, 1, 0, 2, 4, 5)), Malformed::TrailingBytes);
    assert_eq!(ok(&f(0, 125, 0, 121, 242, 242)).quantity, 125);
}

// ---------------------------------------------------------------- fc 24

#[test]
fn read_fifo_queue_touches_its_pointer_register() {
    let frame = [
        0x00, 0x01, // transaction id
        0x00, 0x00, // protocol id
        0x00, 0x04, // length 4
        0x01, // unit
        0x18, // fc 24 read_fifo_queue
        0x04, 0xDE, // FIFO pointer address 1246
    ];
    let r = ok(&frame);
    assert_eq!(ranges(&r), vec![(Table::HoldingRegisters, 1246, 1246, false)]);
    assert_eq!(r.quantity, 1);
    assert_eq!(kind(&adu(1, &[0x18, 0x04])), Malformed::Truncated);
    assert_eq!(kind(&adu(1, &[0x18, 0x04, 0xDE, 0])), Malformed::TrailingBytes);
}

// ---------------------------------------------------------------- fc 43

#[test]
fn read_device_identification() {
    let frame = [
        0x00, 0x01, // transaction id
        0x00, 0x00, // protocol id
        0x00, 0x05, // length 5
        0x01, // unit
        0x2B, // fc 43 encapsulated_interface_transport
        0x0E, // MEI type 14 read device identification
        0x01, // read device id code 1 (basic)
        0x00, // object id 0
    ];
    let r = ok(&frame);
    assert_eq!(r.function_key(), (43, Some(14)));
    assert_eq!(r.quantity, 0);
    for code in [0u8, 5, 0xFF] {
        assert_eq!(kind(&adu(1, &[0x2B, 0x0E, code, 0x00])), Malformed::BadDeviceIdCode, "code {code}");
    }
    assert_eq!(kind(&adu(1, &[0x2B, 0x0E, 0x01])), Malformed::Truncated);
    assert_eq!(kind(&adu(1, &[0x2B, 0x0E, 0x09, 0x00, 0x00])), Malformed::TrailingBytes);
    // length before code
}

#[test]
fn canopen_general_reference_takes_any_length() {
    let frame = [
        0x00, 0x01, // transaction id
        0x00, 0x00, // protocol id
        0x00, 0x03, // length 3
        0x01, // unit
        0x2B, // fc 43
        0x0D, // MEI type 13 CANopen general reference
    ];
    assert_eq!(ok(&frame).sub, Some(13));
    assert_eq!(ok(&adu(1, &[0x2B, 0x0D, 1, 2, 3, 4, 5])).sub, Some(13));
}

#[test]
fn other_mei_types_are_refused() {
    for mei in [0u8, 12, 15, 0xFF] {
        let e = parse_request(&adu(1, &[0x2B, mei, 0x01, 0x00])).unwrap_err();
        assert_eq!((e.kind, e.sub), (Malformed::BadMeiType, Some(mei as u16)));
    }
    assert_eq!(kind(&adu(1, &[0x2B])), Malformed::Truncated);
}

// ---------------------------------------------------------------- codes zonegate does not parse

#[test]
fn non_public_codes_are_not_parsed_and_never_malformed() {
    let public = [1u8, 2, 3, 4, 5, 6, 7, 8, 11, 12, 15, 16, 17, 20, 21, 22, 23, 24, 43];
    for fc in 0..=255u8 {
        if public.contains(&fc) {
            continue;
        }
        let frame = [
            0x00, 0x01, // transaction id
            0x00, 0x00, // protocol id
            0x00, 0x03, // length 3
            0x01, // unit
            fc,   // a code zonegate does not parse
            0x99, // anything
        ];
        let r = ok(&frame);
        assert_eq!((r.code, r.function, r.quantity), (None, fc, 0));
        assert!(ranges(&r).is_empty() && values(&r).is_empty());
    }
}

#[test]
fn every_function_code_and_length_never_panics() {
    let mut x: u32 = 0xDEAD_BEEF;
    let mut rnd = || {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        (x >> 24) as u8
    };
    for fc in 0..=255u8 {
        for len in 0..=253usize {
            for _ in 0..3 {
                let mut pdu = vec![fc];
                pdu.extend((0..len).map(|_| rnd()));
                let frame = adu(rnd(), &pdu);
                if let Ok(r) = parse_request(&frame) {
                    // Walk everything the decision stage would walk.
                    for g in r.ranges() {
                        assert!(g.start <= g.end);
                    }
                    let _ = r.values().count();
                }
            }
        }
    }
}
