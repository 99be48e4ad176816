//! Replies checked against the request they are taken for: session, sender context and service for
//! unconnected messages; connection id, sequence count and service for connected ones.

mod enip_support;

use enip_support::*;
use zonegate_core::enip::connections::parse_forward_open_reply;
use zonegate_core::enip::*;

/// A SendRRData reply: same layout as the request, CIP reply in the unconnected data item.
fn rr_reply(session: u32, context: &[u8; 8], cip: &[u8]) -> Vec<u8> {
    let mut d = vec![0, 0, 0, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0xB2, 0];
    d.extend_from_slice(&(cip.len() as u16).to_le_bytes());
    d.extend_from_slice(cip);
    encap(0x6F, session, context, &d)
}

const STOP: [u8; 6] = [
    0x07, // Stop
    0x02, // path: 2 words
    0x20, 0x01, 0x24, 0x01, // Identity instance 1
];
const STOP_OK: [u8; 4] = [
    0x87, // reply to Stop
    0x00, // reserved
    0x00, // general status: success
    0x00, // no extended status
];

#[test]
fn unconnected_reply_must_echo_session_context_and_service() {
    let table = ConnectionTable::new();
    let req = send_rr(&STOP);
    assert_eq!(reply_matches(&req, &rr_reply(0x0102_0304, b"zonegate", &STOP_OK), &table), Ok(()));
    assert_eq!(reply_matches(&req, &rr_reply(0x0102_0305, b"zonegate", &STOP_OK), &table), Err(Mismatch::Session));
    assert_eq!(
        reply_matches(&req, &rr_reply(0x0102_0304, b"zonegatX", &STOP_OK), &table),
        Err(Mismatch::SenderContext)
    );
    let reset_ok = [0x85, 0, 0, 0];
    assert_eq!(reply_matches(&req, &rr_reply(0x0102_0304, b"zonegate", &reset_ok), &table), Err(Mismatch::Service));
    assert_eq!(reply_matches(&req, &rr_reply(0x0102_0304, b"zonegate", &STOP), &table), Err(Mismatch::Service));
    let other_command = encap(0x63, 0x0102_0304, b"zonegate", &[]);
    assert_eq!(reply_matches(&req, &other_command, &table), Err(Mismatch::Command));
    assert!(matches!(reply_matches(&req, &[0; 10], &table), Err(Mismatch::Malformed(EncapError::Truncated))));
}

#[test]
fn an_unconnected_send_is_answered_by_the_request_inside_or_by_a_router() {
    let table = ConnectionTable::new();
    let req = send_rr(&unconnected_send(&STOP, &[0x01, 0x02]));
    let reply = |cip: &[u8]| rr_reply(0x0102_0304, b"zonegate", cip);
    assert_eq!(reply_matches(&req, &reply(&STOP_OK), &table), Ok(()), "the target's reply to Stop");
    let undeliverable = [0xD2, 0x00, 0x01, 0x01, 0x04, 0x03]; // connection failure, 0x0304: no path
    assert_eq!(reply_matches(&req, &reply(&undeliverable), &table), Ok(()), "a router's refusal");
    assert_eq!(reply_matches(&req, &reply(&[0x85, 0, 0, 0]), &table), Err(Mismatch::Service));
    // Nested: the innermost request answers.
    let nested = send_rr(&unconnected_send(&unconnected_send(&STOP, &[0x01, 0x02]), &[0x01, 0x00]));
    assert_eq!(reply_matches(&nested, &reply(&STOP_OK), &table), Ok(()));
    assert_eq!(reply_matches(&nested, &reply(&undeliverable), &table), Ok(()));
    // A Multiple Service Packet inside answers as one.
    let packet = send_rr(&unconnected_send(&msp(&[&STOP]), &[0x01, 0x00]));
    assert_eq!(reply_matches(&packet, &reply(&[0x8A, 0, 0, 0, 1, 0, 4, 0, 0x87, 0, 0, 0]), &table), Ok(()));
    assert_eq!(reply_matches(&packet, &reply(&STOP_OK), &table), Err(Mismatch::Service));
}

#[test]
fn register_session_reply_brings_the_session() {
    let table = ConnectionTable::new();
    let req = encap(0x65, 0, b"ctx-0001", &[1, 0, 0, 0]);
    let rep = encap(0x65, 0x00AB_CDEF, b"ctx-0001", &[1, 0, 0, 0]);
    assert_eq!(reply_matches(&req, &rep, &table), Ok(()));
}

#[test]
fn connected_reply_comes_on_the_t_to_o_id_with_the_same_sequence() {
    let mut table = ConnectionTable::new();
    table.open_requested(&parse_forward_open(&forward_open_data(false, 3), false).unwrap()).unwrap();
    let mut fo_reply = Vec::new();
    fo_reply.extend_from_slice(&0x0000_0A0Au32.to_le_bytes()); // O->T id
    fo_reply.extend_from_slice(&0x0002_0001u32.to_le_bytes()); // T->O id
    fo_reply.extend_from_slice(&[0x03, 0x00, 0x4D, 0x00, 0x78, 0x56, 0x34, 0x12]); // triad
    fo_reply.extend_from_slice(&[0; 8]); // APIs
    fo_reply.extend_from_slice(&[0, 0]); // no application reply
    table.open_replied(&parse_forward_open_reply(&fo_reply).unwrap()).unwrap();

    let req = send_unit(0x0A0A, 9, &STOP);
    assert_eq!(reply_matches(&req, &send_unit(0x0002_0001, 9, &STOP_OK), &table), Ok(()));
    assert_eq!(reply_matches(&req, &send_unit(0x0002_0001, 8, &STOP_OK), &table), Err(Mismatch::Sequence));
    assert_eq!(reply_matches(&req, &send_unit(0x0A0A, 9, &STOP_OK), &table), Err(Mismatch::Connection));
    let unknown = send_unit(0x0B0B, 9, &STOP);
    assert_eq!(reply_matches(&unknown, &send_unit(0x0002_0001, 9, &STOP_OK), &table), Err(Mismatch::Connection));
}

#[test]
fn captured_list_identity_reply_matches_its_request() {
    let Some(cap) = shared("suricata-verify/enip-alert/enip_test1.pcap") else { return };
    let m = messages(&cap);
    assert_eq!(reply_matches(&m.requests[0], &m.replies[0], &ConnectionTable::new()), Ok(()));
}

#[test]
fn captured_unconnected_replies_never_match_a_mismatched_request() {
    let Some(cap) = shared("icsnpp-enip/enip_cip_example.pcap") else { return };
    let m = messages(&cap);
    let table = ConnectionTable::new();
    // Every ListIdentity request of the capture matches its reply, and none matches a SendUnitData reply.
    let li_req: Vec<&Vec<u8>> = m.requests.iter().filter(|r| r[0] == 0x63).collect();
    let li_rep: Vec<&Vec<u8>> = m.replies.iter().filter(|r| r[0] == 0x63).collect();
    assert_eq!((li_req.len(), li_rep.len()), (1, 1));
    assert_eq!(reply_matches(li_req[0], li_rep[0], &table), Ok(()));
    let sud = m.replies.iter().find(|r| r[0] == 0x70).unwrap();
    assert_eq!(reply_matches(li_req[0], sud, &table), Err(Mismatch::Command));
}
