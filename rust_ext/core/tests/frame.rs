//! Splitter behaviour (docs/engine.md section 1): three outcomes, never a panic.

use zonegate_core::modbus::frame::{split, Frames, Split, SplitInvalid};

/// Read holding registers 0..=1, unit 1, transaction 1.
const READ_HOLDING: [u8; 12] = [
    0x00, 0x01, // transaction id 1
    0x00, 0x00, // protocol id 0 (Modbus)
    0x00, 0x06, // length 6: unit + 5-byte PDU
    0x01, // unit 1
    0x03, // fc 3 read_holding_registers
    0x00, 0x00, // start 0
    0x00, 0x02, // quantity 2
];

/// Write single register 100 = 50, unit 1, transaction 2.
const WRITE_SINGLE: [u8; 12] = [
    0x00, 0x02, // transaction id 2
    0x00, 0x00, // protocol id 0
    0x00, 0x06, // length 6
    0x01, // unit 1
    0x06, // fc 6 write_single_register
    0x00, 0x64, // address 100
    0x00, 0x32, // value 50
];

#[test]
fn empty_buffer_needs_a_header() {
    assert_eq!(split(&[]), Split::Incomplete { needed: 6 });
}

#[test]
fn partial_header_needs_the_rest_of_it() {
    for n in 0..6 {
        assert_eq!(split(&READ_HOLDING[..n]), Split::Incomplete { needed: 6 - n }, "prefix {n}");
    }
}

#[test]
fn header_without_body_needs_the_declared_length() {
    for n in 6..12 {
        assert_eq!(split(&READ_HOLDING[..n]), Split::Incomplete { needed: 12 - n }, "prefix {n}");
    }
}

#[test]
fn complete_adu_reports_its_length() {
    assert_eq!(split(&READ_HOLDING), Split::Complete { used: 12 });
}

#[test]
fn several_adus_in_one_buffer_split_one_at_a_time() {
    let mut buf = Vec::new();
    buf.extend_from_slice(&READ_HOLDING);
    buf.extend_from_slice(&WRITE_SINGLE);
    buf.extend_from_slice(&READ_HOLDING[..5]);
    assert_eq!(split(&buf), Split::Complete { used: 12 });
    assert_eq!(split(&buf[12..]), Split::Complete { used: 12 });
    assert_eq!(split(&buf[24..]), Split::Incomplete { needed: 1 });
    let mut frames = Frames::new(&buf);
    assert_eq!(frames.next(), Some(&READ_HOLDING[..]));
    assert_eq!(frames.next(), Some(&WRITE_SINGLE[..]));
    assert_eq!(frames.next(), None);
    assert_eq!(frames.consumed(), 24);
    assert_eq!(frames.stop(), Some(Split::Incomplete { needed: 1 }));
}

#[test]
fn one_adu_delivered_in_pieces_completes_on_the_last_piece() {
    let mut acc = Vec::new();
    for (i, b) in WRITE_SINGLE.iter().enumerate() {
        acc.push(*b);
        let expect = if i + 1 < 6 {
            Split::Incomplete { needed: 6 - (i + 1) }
        } else if i + 1 < 12 {
            Split::Incomplete { needed: 12 - (i + 1) }
        } else {
            Split::Complete { used: 12 }
        };
        assert_eq!(split(&acc), expect, "after {} bytes", i + 1);
    }
}

#[test]
fn nonzero_protocol_id_is_invalid() {
    let buf = [
        0x00, 0x01, // transaction id
        0x00, 0x01, // protocol id 1: not Modbus
        0x00, 0x06, // length
    ];
    assert_eq!(split(&buf), Split::Invalid(SplitInvalid::ProtocolId));
    let buf = [0x00, 0x01, 0x80, 0x00, 0x00, 0x06]; // protocol id 0x8000
    assert_eq!(split(&buf), Split::Invalid(SplitInvalid::ProtocolId));
}

#[test]
fn length_below_two_is_invalid() {
    for len in [0u8, 1] {
        let buf = [
            0x00, 0x01, // transaction id
            0x00, 0x00, // protocol id
            0x00, len, // length 0 or 1: no room for unit + function code
        ];
        assert_eq!(split(&buf), Split::Invalid(SplitInvalid::Length), "len {len}");
    }
}

#[test]
fn length_above_254_is_invalid_before_waiting_for_it() {
    let buf = [
        0x00, 0x01, // transaction id
        0x00, 0x00, // protocol id
        0x00, 0xFF, // length 255: one more than the largest ADU allows
    ];
    assert_eq!(split(&buf), Split::Invalid(SplitInvalid::Length));
    let buf = [0x00, 0x01, 0x00, 0x00, 0xFF, 0xFF]; // length 65535
    assert_eq!(split(&buf), Split::Invalid(SplitInvalid::Length));
}

#[test]
fn length_bounds_are_inclusive() {
    let mut two = vec![
        0x00, 0x01, // transaction id
        0x00, 0x00, // protocol id
        0x00, 0x02, // length 2: unit + function code only
        0x01, // unit
        0x07, // fc 7 read_exception_status
    ];
    assert_eq!(split(&two), Split::Complete { used: 8 });
    two[5] = 254;
    assert_eq!(split(&two), Split::Incomplete { needed: 252 });
    two.resize(260, 0);
    assert_eq!(split(&two), Split::Complete { used: 260 });
}

#[test]
fn protocol_id_is_checked_before_length() {
    let buf = [0x00, 0x01, 0x00, 0x01, 0x00, 0x00]; // bad protocol id and bad length
    assert_eq!(split(&buf), Split::Invalid(SplitInvalid::ProtocolId));
}

#[test]
fn frames_stop_at_an_invalid_header() {
    let mut buf = READ_HOLDING.to_vec();
    buf.extend_from_slice(&[0x00, 0x09, 0x12, 0x34, 0x00, 0x06]); // protocol id 0x1234
    let mut frames = Frames::new(&buf);
    assert_eq!(frames.by_ref().count(), 1);
    assert_eq!(frames.consumed(), 12);
    assert_eq!(frames.stop(), Some(Split::Invalid(SplitInvalid::ProtocolId)));
}

#[test]
fn arbitrary_bytes_never_panic_and_never_overrun() {
    // Deterministic pseudo-random buffers of every length up to 300.
    let mut x: u32 = 0x1234_5678;
    for len in 0..300 {
        let buf: Vec<u8> = (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                (x >> 24) as u8
            })
            .collect();
        match split(&buf) {
            Split::Complete { used } => assert!((8..=260).contains(&used) && used <= buf.len()),
            Split::Incomplete { needed } => assert!((1..=260).contains(&needed)),
            Split::Invalid(_) => {}
        }
    }
}
