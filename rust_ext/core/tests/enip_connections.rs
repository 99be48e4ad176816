//! Connected messaging: Forward Open / Large Forward Open / Forward Close parsed, and the connection
//! table that attributes SendUnitData requests to the path their connection was opened to.

mod enip_support;

use enip_support::*;
use zonegate_core::enip::connections::MAX_CONNECTIONS;
use zonegate_core::enip::*;

/// A successful Forward Open reply for the triad of [`forward_open_data`] with connection `serial`.
fn reply(serial: u16, ot_id: u32) -> Vec<u8> {
    let mut v = Vec::new();
    v.extend_from_slice(&ot_id.to_le_bytes()); // O->T connection id, chosen by the target
    v.extend_from_slice(&0x0002_0001u32.to_le_bytes()); // T->O connection id, as asked
    v.extend_from_slice(&serial.to_le_bytes()); // connection serial
    v.extend_from_slice(&[0x4D, 0x00]); // originator vendor
    v.extend_from_slice(&[0x78, 0x56, 0x34, 0x12]); // originator serial
    v.extend_from_slice(&5_000_000u32.to_le_bytes()); // O->T actual packet interval
    v.extend_from_slice(&5_000_000u32.to_le_bytes()); // T->O actual packet interval
    v.extend_from_slice(&[0x00, 0x00]); // application reply size 0, reserved
    v
}

fn forward_close_data(serial: u16) -> Vec<u8> {
    let mut v = vec![0x0A, 0x0E]; // priority / tick, timeout ticks
    v.extend_from_slice(&serial.to_le_bytes()); // connection serial
    v.extend_from_slice(&[0x4D, 0x00, 0x78, 0x56, 0x34, 0x12]); // vendor, originator serial
    v.extend_from_slice(&[0x03, 0x00]); // path size 3 words, reserved
    v.extend_from_slice(&[0x01, 0x00, 0x20, 0x02, 0x24, 0x01]); // port 1 slot 0, Message Router instance 1
    v
}

#[test]
fn forward_open_fields_are_read() {
    let msg = forward_open(false, 0x0101);
    let r = parse_request(&msg).unwrap();
    assert_eq!(r.service, Service::ForwardOpen);
    let fo = parse_forward_open(r.data, false).unwrap();
    assert_eq!(fo.triad, Triad { connection_serial: 0x0101, vendor: 0x4D, originator_serial: 0x1234_5678 });
    assert_eq!((fo.to_connection_id, fo.ot_rpi, fo.ot_params), (0x0002_0001, 5_000_000, 0x43F8));
    assert_eq!(fo.transport_class(), 3);
    assert_eq!(fo.path.route, vec![Port { port: 1, link: vec![0] }]);
    assert_eq!(fo.path.class, Some(2));
    let key = fo.path.key.unwrap();
    assert_eq!((key.vendor, key.device_type, key.product_code, key.major, key.minor), (1, 14, 54, 20, 11));
}

#[test]
fn large_forward_open_has_32_bit_parameters() {
    let msg = forward_open(true, 2);
    let r = parse_request(&msg).unwrap();
    assert_eq!(r.service, Service::LargeForwardOpen);
    let fo = parse_forward_open(r.data, true).unwrap();
    assert!(fo.large);
    assert_eq!((fo.ot_params, fo.to_params), (0x4200_0FF8, 0x4200_0FF8));
    assert_eq!(fo.path.class, Some(2));
}

#[test]
fn forward_open_length_is_checked_both_ways() {
    let d = forward_open_data(false, 1);
    assert_eq!(parse_forward_open(&d[..d.len() - 1], false), Err(CipError::DataTruncated));
    assert_eq!(parse_forward_open(&[d.clone(), vec![0, 0]].concat(), false), Err(CipError::DataTrailing));
    assert_eq!(parse_forward_open(&d[..20], false), Err(CipError::DataTruncated));
    assert!(parse_forward_open(&d, true).is_err(), "a short Forward Open is not a Large one");
}

#[test]
fn connected_request_is_attributed_to_the_opened_path() {
    let mut table = ConnectionTable::new();
    let fo = parse_forward_open(&forward_open_data(false, 7), false).unwrap();
    table.open_requested(&fo).unwrap();
    assert!(matches!(table.connected_request(0xC0FF_EE00, 1), Err(TableError::UnknownConnection { .. })));
    let rep = parse_forward_open_reply(&reply(7, 0xC0FF_EE00)).unwrap();
    let c = table.open_replied(&rep).unwrap();
    assert_eq!((c.ot_connection_id, c.to_connection_id, c.transport_class), (0xC0FF_EE00, 0x0002_0001, 3));

    // A SendUnitData Read Tag on that connection: the table gives the route and target it was opened to.
    let msg = send_unit(0xC0FF_EE00, 1, &[0x4C, 0x02, 0x91, 0x02, b'T', b'1', 0x01, 0x00]);
    let Body::SendData(sd) = parse_frame(&msg).unwrap().body else { panic!() };
    let Some(cpf::Address::Connected { connection_id }) = sd.cpf.address() else { panic!() };
    let Some(Payload::Connected { sequence, message }) = sd.cpf.payload() else { panic!() };
    let a = table.connected_request(connection_id, sequence).unwrap();
    assert_eq!(a.connection.path.route, vec![Port { port: 1, link: vec![0] }]);
    assert!(!a.repeated);
    assert_eq!(parse_request(message).unwrap().path.tag.unwrap().text(), "T1");
    assert!(table.connected_request(connection_id, sequence).unwrap().repeated, "same sequence count again");
    assert!(!table.connected_request(connection_id, sequence + 1).unwrap().repeated);

    let fc = parse_forward_close(&forward_close_data(7)).unwrap();
    assert_eq!(table.close(&fc.triad).map(|c| c.ot_connection_id), Some(0xC0FF_EE00));
    assert!(table.get(0xC0FF_EE00).is_none());
    assert!(table.is_empty());
}

#[test]
fn unsolicited_or_refused_replies_open_nothing() {
    let mut table = ConnectionTable::new();
    let rep = parse_forward_open_reply(&reply(9, 1)).unwrap();
    assert!(table.open_replied(&rep).is_none(), "no Forward Open was pending");
    let fo = parse_forward_open(&forward_open_data(false, 9), false).unwrap();
    table.open_requested(&fo).unwrap();
    table.open_refused(&fo.triad);
    assert!(table.open_replied(&rep).is_none());
    assert!(table.is_empty());
}

#[test]
fn table_refuses_duplicates_and_is_bounded() {
    let mut table = ConnectionTable::new();
    let fo = parse_forward_open(&forward_open_data(false, 0), false).unwrap();
    table.open_requested(&fo).unwrap();
    assert_eq!(table.open_requested(&fo), Err(TableError::DuplicateTriad));
    for serial in 1..MAX_CONNECTIONS as u16 {
        table.open_requested(&parse_forward_open(&forward_open_data(false, serial), false).unwrap()).unwrap();
    }
    let one_more = parse_forward_open(&forward_open_data(false, 0xFFFF), false).unwrap();
    assert_eq!(table.open_requested(&one_more), Err(TableError::Full));
    assert_eq!(table.len(), MAX_CONNECTIONS);
}

#[test]
fn forward_open_reply_length_is_checked() {
    let r = reply(1, 2);
    assert_eq!(parse_forward_open_reply(&r[..25]), Err(CipError::DataTruncated));
    let mut with_app = r.clone();
    with_app[24] = 1; // one word of application reply, missing
    assert_eq!(parse_forward_open_reply(&with_app), Err(CipError::DataTruncated));
    assert_eq!(parse_forward_open_reply(&[r, vec![0]].concat()), Err(CipError::DataTrailing));
}
