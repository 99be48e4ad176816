//! EtherNet/IP and CIP parsing, vector by vector: framing outcomes, encapsulation and CPF checks, EPATH
//! forms, service resolution, containers and their bounds. Byte vectors carry a comment per field.

mod enip_support;

use enip_support::*;
use zonegate_core::enip::cip::class;
use zonegate_core::enip::cpf::{Address, MAX_ITEMS};
use zonegate_core::enip::*;

fn vector(name: &str) -> Vec<u8> {
    cip_vectors().into_iter().find(|(n, _)| *n == name).unwrap().1
}

fn leaves(msg: &[u8]) -> Vec<Leaf<'_>> {
    flatten(msg).unwrap()
}

// ---- framing -------------------------------------------------------------------------------------

#[test]
fn split_says_how_many_bytes_are_missing() {
    let msg = encap(0x65, 0, &[0; 8], &[1, 0, 0, 0]);
    assert_eq!(split(&[]), Split::Incomplete { needed: 24 });
    assert_eq!(split(&msg[..10]), Split::Incomplete { needed: 14 });
    assert_eq!(split(&msg[..24]), Split::Incomplete { needed: 4 });
    assert_eq!(split(&msg), Split::Complete { used: 28 });
}

#[test]
fn split_cuts_one_message_from_several_in_one_read() {
    let a = encap(0x63, 0, &[0; 8], &[]);
    let b = send_rr(&vector("stop_to_identity"));
    let both = [a.clone(), b.clone(), b[..5].to_vec()].concat();
    let mut frames = encap::Frames::new(&both);
    assert_eq!(frames.next(), Some(&a[..]));
    assert_eq!(frames.next(), Some(&b[..]));
    assert_eq!(frames.next(), None);
    assert_eq!(frames.consumed(), a.len() + b.len());
    assert_eq!(frames.stop(), Some(Split::Incomplete { needed: 19 }));
}

#[test]
fn split_refuses_an_oversized_length_as_soon_as_it_is_readable() {
    let head = [
        0x6F, 0x00, // command: SendRRData
        0xE8, 0xFF, // length: 65512, one over the specification's bound
    ];
    assert_eq!(split(&head), Split::Invalid(SplitInvalid::Length));
    let small = [0x6F, 0x00, 0x00, 0x02]; // length 512
    assert_eq!(split_with_limit(&small, 511), Split::Invalid(SplitInvalid::Length));
    assert_eq!(split_with_limit(&small, 512), Split::Incomplete { needed: 20 });
    let max = [0x6F, 0x00, 0xE7, 0xFF]; // length 65511: allowed, wait for it
    assert_eq!(split(&max), Split::Incomplete { needed: 20 });
}

// ---- encapsulation -------------------------------------------------------------------------------

#[test]
fn register_session_header_is_read_field_by_field() {
    let msg = [
        0x65, 0x00, // command: RegisterSession
        0x04, 0x00, // length: 4
        0x00, 0x00, 0x00, 0x00, // session handle: 0 (none yet)
        0x00, 0x00, 0x00, 0x00, // status: success
        b'_', b'p', b'y', b'c', b'o', b'm', b'm', b'_', // sender context
        0x00, 0x00, 0x00, 0x00, // options
        0x01, 0x00, // protocol version 1
        0x00, 0x00, // option flags
    ];
    let f = parse_frame(&msg).unwrap();
    assert_eq!(f.command, Some(Command::RegisterSession));
    assert_eq!(f.header.length, 4);
    assert_eq!(&f.header.sender_context, b"_pycomm_");
    assert_eq!(f.body, Body::RegisterSession { version: 1, flags: 0 });
    assert_eq!(Command::RegisterSession.name(), "register_session");
}

#[test]
fn commands_carry_their_spec_values() {
    let all = [
        (Command::Nop, 0x00),
        (Command::ListServices, 0x04),
        (Command::ListIdentity, 0x63),
        (Command::ListInterfaces, 0x64),
        (Command::RegisterSession, 0x65),
        (Command::UnRegisterSession, 0x66),
        (Command::SendRrData, 0x6F),
        (Command::SendUnitData, 0x70),
        (Command::IndicateStatus, 0x72),
        (Command::Cancel, 0x73),
    ];
    for (c, v) in all {
        assert_eq!(c as u16, v);
        assert_eq!(Command::from_u16(v), Some(c));
    }
    assert_eq!(Command::from_u16(0x65 + 0x100), None);
}

#[test]
fn header_checks_fail_with_their_own_reason() {
    let mut opts = encap(0x66, 1, &[0; 8], &[]);
    opts[20] = 1; // options: 1
    assert_eq!(parse_frame(&opts), Err(EncapError::NonZeroOptions));
    let short = encap(0x65, 0, &[0; 8], &[1, 0]); // RegisterSession with 2 bytes
    assert_eq!(parse_frame(&short), Err(EncapError::BadCommandLength { command: 0x65, length: 2 }));
    let unreg = encap(0x66, 1, &[0; 8], &[0]); // UnRegisterSession carries nothing
    assert!(matches!(parse_frame(&unreg), Err(EncapError::BadCommandLength { .. })));
    let ok = encap(0x63, 0, &[0; 8], &[]);
    assert_eq!(parse_frame(&ok[..23]), Err(EncapError::Truncated));
    assert_eq!(parse_frame(&[ok.clone(), vec![0]].concat()), Err(EncapError::TrailingBytes));
    let mut cut = send_rr(&vector("stop_to_identity"));
    cut.pop();
    assert_eq!(parse_frame(&cut), Err(EncapError::Truncated));
}

#[test]
fn unknown_command_is_framed_but_not_named() {
    let f_bytes = encap(0x01, 0, &[0; 8], &[9, 9]);
    let f = parse_frame(&f_bytes).unwrap();
    assert_eq!(f.command, None);
    assert_eq!(f.body, Body::Raw(&[9, 9]));
}

// ---- common packet format ------------------------------------------------------------------------

#[test]
fn send_rr_data_items_are_null_address_and_unconnected_data() {
    let cip = vector("stop_to_identity");
    let data = [
        &[
            0x00, 0x00, 0x00, 0x00, // interface handle: CIP
            0x05, 0x00, // timeout: 5 s
            0x02, 0x00, // item count 2
            0x00, 0x00, 0x00, 0x00, // null address item, length 0
            0xB2, 0x00, 0x06, 0x00, // unconnected data item, length 6
        ][..],
        &cip,
    ]
    .concat();
    let sd = parse_send_data(&data).unwrap();
    assert_eq!((sd.interface, sd.timeout), (0, 5));
    assert_eq!(sd.cpf.items().len(), 2);
    assert_eq!(sd.cpf.address(), Some(Address::Null));
    assert_eq!(sd.cpf.payload(), Some(Payload::Unconnected(&cip[..])));
}

#[test]
fn send_unit_data_items_carry_connection_id_and_sequence() {
    let f_bytes = send_unit(0xAABB_CCDD, 0x0102, &[0x4C, 0x00]);
    let f = parse_frame(&f_bytes).unwrap();
    let Body::SendData(sd) = f.body else { panic!() };
    assert_eq!(sd.cpf.address(), Some(Address::Connected { connection_id: 0xAABB_CCDD }));
    assert_eq!(sd.cpf.payload(), Some(Payload::Connected { sequence: 0x0102, message: &[0x4C, 0x00] }));
}

#[test]
fn cpf_item_lengths_are_checked_against_their_type() {
    let connected_address_of_2 = [
        0x01, 0x00, // item count 1
        0xA1, 0x00, 0x02, 0x00, // connected address, length 2 (must be 4)
        0x00, 0x00,
    ];
    assert_eq!(parse_cpf(&connected_address_of_2), Err(CpfError::BadItemLength { type_id: 0xA1, length: 2 }));
    let connected_data_of_1 = [0x01, 0x00, 0xB1, 0x00, 0x01, 0x00, 0x00]; // no room for the sequence count
    assert!(matches!(parse_cpf(&connected_data_of_1), Err(CpfError::BadItemLength { .. })));
    let past_end = [0x01, 0x00, 0xB2, 0x00, 0x09, 0x00, 0x00]; // says 9 bytes, holds 1
    assert_eq!(parse_cpf(&past_end), Err(CpfError::Truncated));
    let two_items_one_present = [0x02, 0x00, 0x00, 0x00, 0x00, 0x00];
    assert_eq!(parse_cpf(&two_items_one_present), Err(CpfError::Truncated));
    let extra = [0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0xFF];
    assert_eq!(parse_cpf(&extra), Err(CpfError::TrailingBytes));
    let many = [(MAX_ITEMS as u16 + 1).to_le_bytes().to_vec(), vec![0; 4 * (MAX_ITEMS + 1)]].concat();
    assert_eq!(parse_cpf(&many), Err(CpfError::TooManyItems { count: MAX_ITEMS as u16 + 1 }));
    let sockaddr = [&[0x01, 0x00, 0x00, 0x80, 0x10, 0x00][..], &[0u8; 16]].concat(); // O->T sockaddr, 16
    assert_eq!(parse_cpf(&sockaddr).unwrap().items()[0].kind, Some(ItemType::SockaddrOtoT));
}

// ---- EPATH and requests --------------------------------------------------------------------------

#[test]
fn tag_name_keeps_program_scope_elements_and_members() {
    let msg = vector("read_tag_program_scoped_element_member");
    let r = parse_request(&msg).unwrap();
    assert_eq!(r.service, Service::ReadTag);
    assert_eq!(r.access, Access::Read);
    let tag = r.path.tag.as_ref().unwrap();
    assert_eq!(tag.text(), "Program:Main.Line1[3].Speed");
    assert_eq!(tag.parts[1].elements, vec![3]);
    assert_eq!(r.elements, Some(1));
    assert!(r.anomalies.is_empty());
    assert_eq!((r.path.class, r.path.member), (None, None));
}

#[test]
fn write_tag_reads_16_and_32_bit_elements_type_and_count() {
    let msg = vector("write_tag_two_dimensional_16_and_32_bit_elements");
    let r = parse_request(&msg).unwrap();
    assert_eq!(r.service, Service::WriteTag);
    assert_eq!(r.access, Access::Write);
    assert_eq!(r.path.tag.as_ref().unwrap().text(), "Grid[257,65536]");
    assert_eq!((r.data_type, r.elements), (Some(0xC4), Some(1)));
    assert_eq!(r.data, &[0xC4, 0x00, 0x01, 0x00, 0x2A, 0x00, 0x00, 0x00]);
}

#[test]
fn logical_segments_in_8_16_and_32_bit_forms() {
    let a_bytes = vector("get_attribute_single_8_bit_logical");
    let a = parse_request(&a_bytes).unwrap();
    assert_eq!((a.path.class, a.path.instance, a.path.attribute), (Some(1), Some(1), Some(7)));
    assert_eq!((a.service, a.access), (Service::GetAttributeSingle, Access::Read));
    let b_bytes = vector("set_attribute_single_16_and_32_bit_logical");
    let b = parse_request(&b_bytes).unwrap();
    assert_eq!((b.path.class, b.path.instance, b.path.attribute), (Some(0x1234), Some(0x1234_5678), Some(0x100)));
    assert_eq!((b.service, b.access), (Service::SetAttributeSingle, Access::Write));
    assert_eq!(b.data, &[0x2A, 0x00]);
}

#[test]
fn control_services_are_neither_read_nor_write() {
    let r_bytes = vector("stop_to_identity");
    let r = parse_request(&r_bytes).unwrap();
    assert_eq!((r.service, r.access), (Service::Stop, Access::Other));
    for (code, s) in [(0x05, Service::Reset), (0x06, Service::Start), (0x07, Service::Stop)] {
        let r_bytes = [code, 0x02u8, 0x20, 0x01, 0x24, 0x01];
        let r = parse_request(&r_bytes).unwrap();
        assert_eq!((r.service, r.access, r.service.code()), (s, Access::Other, code));
    }
}

#[test]
fn object_specific_codes_resolve_against_the_path() {
    let cm = [0x20, 0x06, 0x24, 0x01]; // class 6, instance 1
    let tag = [0x91, 0x02, b'T', b'1']; // symbol "T1"
    let resolve = |code: u8, path: &[u8]| {
        let msg = [&[code, (path.len() / 2) as u8][..], path, &[0u8; 40]].concat();
        parse_request(&msg).map(|r| r.service).unwrap_or(Service::Other(0xFF))
    };
    assert_eq!(resolve(0x52, &tag), Service::ReadTagFragmented);
    assert_eq!(resolve(0x53, &tag), Service::WriteTagFragmented);
    assert_eq!(resolve(0x4E, &tag), Service::ReadModifyWriteTag);
    assert_eq!(resolve(0x4E, &cm), Service::ForwardClose);
    assert_eq!(resolve(0x52, &cm), Service::UnconnectedSend);
    assert_eq!(resolve(0x54, &cm), Service::ForwardOpen);
    assert_eq!(resolve(0x5B, &cm), Service::LargeForwardOpen);
    assert_eq!(resolve(0x4C, &[0x20, 0x6B, 0x25, 0x00, 0x10, 0x00]), Service::ReadTag, "Symbol instance addressing");
    assert_eq!(resolve(0x4C, &[0x20, 0x01, 0x24, 0x01]), Service::Other(0x4C));
    assert_eq!(resolve(0x0A, &[0x20, 0x01, 0x24, 0x01]), Service::Other(0x0A), "0x0A is a container only at class 2");
    let r = parse_request(&[0x4C, 0x02, 0x20, 0x01, 0x24, 0x01]).unwrap();
    assert!(r.anomalies.contains(Anomalies::UNKNOWN_SERVICE));
    assert_eq!(Service::ReadModifyWriteTag.name(), Some("read_modify_write_tag"));
    assert_eq!(Service::ReadModifyWriteTag.access(), Access::Write);
}

#[test]
fn request_data_shorter_than_the_service_needs_is_flagged() {
    let no_count = [0x4C, 0x02, 0x91, 0x02, b'T', b'1']; // Read Tag without its element count
    let r = parse_request(&no_count).unwrap();
    assert!(r.anomalies.contains(Anomalies::SHORT_DATA));
    assert_eq!(r.elements, None);
    let no_target = parse_request(&[0x01, 0x00]).unwrap();
    assert!(no_target.anomalies.contains(Anomalies::NO_TARGET));
}

#[test]
fn malformed_paths_name_their_fault_and_offset() {
    let err = |path: &[u8]| parse_path(path).unwrap_err();
    use PathErrorKind::*;
    let cases: [(&str, &[u8], PathErrorKind, usize); 12] = [
        ("16-bit class cut short", &[0x21, 0x00, 0x01], Truncated, 0),
        ("logical format 3 is reserved", &[0x20, 0x01, 0x23, 0x00], Reserved, 2),
        ("segment type 111 is reserved", &[0xE0, 0x00], Reserved, 0),
        ("symbolic segment 0x6X", &[0x62, b'a', b'b', 0x00], Unsupported, 0),
        ("service id logical segment", &[0x38, 0x01], Unsupported, 0),
        ("symbol with a dot", &[0x91, 0x03, b'a', b'.', b'b', 0x00], BadSymbol, 0),
        ("empty symbol", &[0x91, 0x00], BadSymbol, 0),
        ("class twice", &[0x20, 0x01, 0x20, 0x02], Duplicate, 2),
        ("instance before class", &[0x24, 0x01, 0x20, 0x01], OutOfOrder, 2),
        ("port after class", &[0x20, 0x01, 0x01, 0x00], OutOfOrder, 2),
        ("port 0", &[0x00, 0x01], BadPort, 0),
        ("electronic key of format 5", &[0x34, 0x05, 0, 0, 0, 0, 0, 0, 0, 0], BadKey, 0),
    ];
    for (name, path, kind, offset) in cases {
        let e = err(path);
        assert_eq!((e.kind, e.offset), (kind, offset), "{name}");
        assert_eq!(e.general_status(), 0x04, "{name}");
    }
    let msg = [0x0E, 0x02, 0x20, 0x01, 0x20, 0x02]; // class twice, in a request
    let e = parse_request(&msg).unwrap_err();
    assert_eq!(e.general_status(), 0x04);
    assert_eq!(e.name(), "path_duplicate_segment");
}

#[test]
fn request_framing_errors() {
    assert_eq!(parse_request(&[0x4C]), Err(CipError::Truncated));
    assert_eq!(parse_request(&[0xCC, 0x00]), Err(CipError::ReplyInRequest));
    assert_eq!(parse_request(&[0x4C, 0x02, 0x20, 0x01]), Err(CipError::PathTruncated));
}

#[test]
fn ports_carry_slot_and_extended_links() {
    let path = [
        0x12, 0x0B, // port 2, extended link address of 11 bytes
        b'1', b'0', b'.', b'0', b'.', b'0', b'.', b'1', b'2', b'3', b'4', 0x00, // "10.0.0.1234", pad
        0x0F, 0x12, 0x00, 0x05, // port 15: extended port 0x0012, link 5, pad
        0x01, 0x00, // port 1, slot 0
        0x20, 0x02, 0x24, 0x01, // Message Router instance 1
    ];
    let p = parse_path(&path).unwrap();
    assert_eq!(p.route.len(), 3);
    assert_eq!(p.route[0], Port { port: 2, link: b"10.0.0.1234".to_vec() });
    assert_eq!(p.route[1], Port { port: 0x12, link: vec![5] });
    assert_eq!(p.route[2], Port { port: 1, link: vec![0] });
    assert_eq!((p.class, p.instance), (Some(class::MESSAGE_ROUTER), Some(1)));
}

#[test]
fn nonzero_pad_and_mixed_addressing_are_anomalies() {
    let p = parse_path(&[0x91, 0x01, b'X', 0xFF]).unwrap(); // pad 0xFF
    assert!(p.anomalies.contains(Anomalies::NONZERO_PAD));
    let q = parse_path(&[0x20, 0x6B, 0x24, 0x01, 0x91, 0x01, b'X', 0x00]).unwrap();
    assert!(q.anomalies.contains(Anomalies::MIXED_ADDRESSING));
}

// ---- containers ----------------------------------------------------------------------------------

#[test]
fn unconnected_send_unwraps_with_its_route() {
    let msg = vector("unconnected_send_read_tag_to_slot_0");
    let top = parse_request(&msg).unwrap();
    assert_eq!(top.service, Service::UnconnectedSend);
    let l = leaves(&msg);
    assert_eq!(l.len(), 1);
    assert_eq!(l[0].request.service, Service::ReadTag);
    assert_eq!(l[0].request.path.tag.as_ref().unwrap().text(), "Tag");
    assert_eq!((l[0].depth, l[0].route.clone()), (1, vec![Port { port: 1, link: vec![0] }]));
    let e_bytes = vector("unconnected_send_over_ethernet_extended_link");
    let e = leaves(&e_bytes);
    assert_eq!(e[0].request.service, Service::Reset);
    assert_eq!(e[0].route.len(), 2);
}

#[test]
fn multiple_service_packet_gives_every_inner_request() {
    let l_bytes = vector("multiple_service_packet_read_and_write");
    let l = leaves(&l_bytes);
    let got: Vec<(Service, String)> =
        l.iter().map(|x| (x.request.service, x.request.path.tag.as_ref().unwrap().text())).collect();
    assert_eq!(got, [(Service::ReadTag, "A_1".to_string()), (Service::WriteTag, "SP".to_string())]);
    assert!(l.iter().all(|x| x.depth == 1 && x.route.is_empty()));
}

#[test]
fn nested_containers_keep_depth_and_route() {
    let l_bytes = vector("multiple_service_packet_inside_unconnected_send");
    let l = leaves(&l_bytes);
    assert_eq!(l.len(), 2);
    assert_eq!(l[1].request.service, Service::Reset, "a Reset hidden two containers deep is still seen");
    assert_eq!((l[1].depth, l[1].route.clone()), (2, vec![Port { port: 1, link: vec![2] }]));
}

#[test]
fn nesting_beyond_the_bound_is_refused() {
    let mut msg = vec![0x0E, 0x03, 0x20, 0x01, 0x24, 0x01, 0x30, 0x01];
    for _ in 0..MAX_DEPTH {
        msg = msp(&[&msg]);
    }
    assert_eq!(leaves(&msg)[0].depth, MAX_DEPTH);
    let deeper = msp(&[&msg]);
    assert_eq!(flatten(&deeper), Err(CipError::TooDeep));
    let routed = unconnected_send(&msg, &[0x01, 0x00]);
    assert_eq!(flatten(&routed).unwrap_err().general_status(), 0x20);
}

#[test]
fn too_many_inner_requests_are_refused() {
    let one = [0x0E, 0x03, 0x20, 0x01, 0x24, 0x01, 0x30, 0x01];
    let many: Vec<&[u8]> = (0..MAX_LEAVES).map(|_| &one[..]).collect();
    assert_eq!(leaves(&msp(&many)).len(), MAX_LEAVES);
    let inner = msp(&many);
    assert_eq!(flatten(&msp(&[&inner, &one])), Err(CipError::TooManyRequests));
}

#[test]
fn multiple_service_packet_offsets_are_checked() {
    let base = msp(&[&[0x01, 0x02, 0x20, 0x01, 0x24, 0x01], &[0x01, 0x02, 0x20, 0x01, 0x24, 0x01]]);
    let mut backwards = base.clone();
    backwards[8] = 0x0E; // first offset past the second
    assert_eq!(flatten(&backwards), Err(CipError::BadOffsets));
    let mut into_table = base.clone();
    into_table[8] = 0x02; // first offset inside the offset table
    assert_eq!(flatten(&into_table), Err(CipError::BadOffsets));
    let empty = [0x0A, 0x02, 0x20, 0x02, 0x24, 0x01, 0x00, 0x00]; // count 0
    assert_eq!(flatten(&empty), Err(CipError::BadOffsets));
    let short = [0x0A, 0x02, 0x20, 0x02, 0x24, 0x01, 0x03, 0x00, 0x08, 0x00]; // 3 offsets, 1 present
    assert_eq!(flatten(&short), Err(CipError::DataTruncated));
}

#[test]
fn unconnected_send_fields_are_checked() {
    let ok = vector("unconnected_send_read_tag_to_slot_0");
    let mut no_route = ok.clone();
    let n = no_route.len();
    no_route[n - 4] = 0; // route size 0 words
    no_route.truncate(n - 2);
    assert_eq!(flatten(&no_route), Err(CipError::BadRoute));
    let logical_route = unconnected_send(&[0x01, 0x02, 0x20, 0x01, 0x24, 0x01], &[0x20, 0x01]);
    assert_eq!(flatten(&logical_route), Err(CipError::BadRoute), "a route names ports only");
    let cut = &ok[..ok.len() - 1];
    assert_eq!(flatten(cut), Err(CipError::DataTruncated));
    let extra = [ok.clone(), vec![0, 0]].concat();
    assert_eq!(flatten(&extra), Err(CipError::DataTrailing));
}

// ---- responses -----------------------------------------------------------------------------------

#[test]
fn response_reads_status_and_extended_status() {
    let msg = [
        0xCC, // reply to Read Tag
        0x00, // reserved
        0x05, // general status: path destination unknown
        0x01, // one extended status word
        0x05, 0x00, // extended status
    ];
    let r = parse_response(&msg).unwrap();
    assert_eq!((r.code, r.general_status, r.extended_status, r.data), (0x4C, 0x05, &[5, 0][..], &[][..]));
    assert_eq!(parse_response(&[0x4C, 0, 0, 0]), Err(CipError::RequestInReply));
    assert_eq!(parse_response(&[0xCC, 0, 0, 2, 0]), Err(CipError::DataTruncated));
}
