//! Reply parsing and matching (docs/engine.md section 2, responses).

use zonegate_core::modbus::functions::Malformed;
use zonegate_core::modbus::request::parse_request;
use zonegate_core::modbus::response::{matches, parse_response};

#[test]
fn exception_response_carries_its_code() {
    let frame = [
        0x00, 0x05, // transaction id 5
        0x00, 0x00, // protocol id
        0x00, 0x03, // length 3
        0x01, // unit
        0x83, // fc 3 | 0x80: exception
        0x02, // exception 02 illegal data address
    ];
    let r = parse_response(&frame);
    assert_eq!((r.transaction_id, r.unit, r.function, r.exception, r.malformed), (5, 1, 0x83, Some(2), None));
    let long = [0x00, 0x05, 0x00, 0x00, 0x00, 0x04, 0x01, 0x83, 0x02, 0x00]; // one byte too many
    assert_eq!(parse_response(&long).malformed, Some(Malformed::TrailingBytes));
}

#[test]
fn read_responses_check_their_byte_count() {
    let frame = [
        0x00, 0x01, // transaction id
        0x00, 0x00, // protocol id
        0x00, 0x07, // length 7
        0x01, // unit
        0x03, // fc 3
        0x04, // byte count 4
        0x00, 0x0A, // register 0
        0x01, 0x02, // register 1
    ];
    assert_eq!(parse_response(&frame).malformed, None);
    let short = [0x00, 0x01, 0x00, 0x00, 0x00, 0x06, 0x01, 0x03, 0x04, 0x00, 0x0A, 0x01]; // 3 of 4 bytes
    assert_eq!(parse_response(&short).malformed, Some(Malformed::Truncated));
    let odd = [0x00, 0x01, 0x00, 0x00, 0x00, 0x06, 0x01, 0x03, 0x03, 0x00, 0x0A, 0x01]; // odd count
    assert_eq!(parse_response(&odd).malformed, Some(Malformed::BadByteCount));
    let coils = [
        0x00, 0x01, // transaction id
        0x00, 0x00, // protocol id
        0x00, 0x04, // length 4
        0x01, // unit
        0x01, // fc 1
        0x01, // byte count 1
        0x05, // coils 0..=7
    ];
    assert_eq!(parse_response(&coils).malformed, None);
    let empty = [0x00, 0x01, 0x00, 0x00, 0x00, 0x03, 0x01, 0x01, 0x00]; // byte count 0
    assert_eq!(parse_response(&empty).malformed, Some(Malformed::BadByteCount));
}

#[test]
fn write_responses_are_echoes() {
    let echo = [
        0x00, 0x02, // transaction id
        0x00, 0x00, // protocol id
        0x00, 0x06, // length 6
        0x01, // unit
        0x10, // fc 16
        0x00, 0x01, // start 1
        0x00, 0x02, // quantity 2
    ];
    assert_eq!(parse_response(&echo).malformed, None);
    let bad_coil = [0x00, 0x02, 0x00, 0x00, 0x00, 0x06, 0x01, 0x05, 0x00, 0x01, 0x12, 0x34];
    assert_eq!(parse_response(&bad_coil).malformed, Some(Malformed::BadCoilValue));
    let zero = [0x00, 0x02, 0x00, 0x00, 0x00, 0x06, 0x01, 0x0F, 0x00, 0x01, 0x00, 0x00];
    assert_eq!(parse_response(&zero).malformed, Some(Malformed::BadQuantity));
    let rw = [
        0x00, 0x02, // transaction id
        0x00, 0x00, // protocol id
        0x00, 0x05, // length 5
        0x01, // unit
        0x17, // fc 23
        0x02, // byte count 2
        0x00, 0x01, // register
    ];
    assert_eq!(parse_response(&rw).malformed, None);
}

#[test]
fn matches_transaction_unit_and_function() {
    let req = [
        0x00, 0x09, // transaction id 9
        0x00, 0x00, // protocol id
        0x00, 0x06, // length
        0x02, // unit 2
        0x03, // fc 3
        0x00, 0x00, // start
        0x00, 0x01, // quantity
    ];
    let req = parse_request(&req).unwrap();
    let answer = |tid: u8, unit: u8, fc: u8| parse_response(&[0x00, tid, 0x00, 0x00, 0x00, 0x03, unit, fc, 0x02]);
    let normal = [
        0x00, 0x09, // transaction id 9
        0x00, 0x00, // protocol id
        0x00, 0x05, // length 5
        0x02, // unit 2
        0x03, // fc 3
        0x02, // byte count 2
        0x00, 0x2A, // register 0 = 42
    ];
    assert!(matches(&req, &parse_response(&normal)));
    assert!(matches(&req, &answer(9, 2, 0x83)));
    assert!(!matches(&req, &answer(8, 2, 0x83)));
    assert!(!matches(&req, &answer(9, 1, 0x83)));
    assert!(!matches(&req, &answer(9, 2, 0x84)));
    assert!(!matches(&req, &answer(9, 2, 0x04)));
}

#[test]
fn replies_never_panic() {
    let mut x: u32 = 0x0BAD_F00D;
    for len in 0..300usize {
        let buf: Vec<u8> = (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                (x >> 24) as u8
            })
            .collect();
        let _ = parse_response(&buf);
        let mut framed = vec![0x00, 0x01, 0x00, 0x00];
        framed.extend_from_slice(&((len.min(253) + 1) as u16).to_be_bytes());
        framed.push(0x01);
        framed.extend_from_slice(&buf[..len.min(253)]);
        let _ = parse_response(&framed);
    }
}
