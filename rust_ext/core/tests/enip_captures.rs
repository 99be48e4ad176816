//! EtherNet/IP captures nobody on this project wrote (../shared/pcaps, see its SOURCES.md), cut and
//! parsed as the conduit and the replay will: counts checked against Suricata's expected results and
//! every CIP request checked against Zeek's (icsnpp-enip) baseline log, service, class and instance.

mod enip_support;

use enip_support::*;
use std::collections::BTreeMap;
use zonegate_core::enip::{
    flatten, parse_frame, parse_multiple_service, parse_request, parse_response, Body, Command, Payload, Service,
};

/// Commands of all messages, both directions.
fn commands(m: &Messages) -> BTreeMap<u16, usize> {
    let mut out = BTreeMap::new();
    for msg in m.requests.iter().chain(&m.replies) {
        let f = parse_frame(msg).expect("every captured message parses");
        *out.entry(f.header.command).or_insert(0) += 1;
    }
    out
}

/// The CIP message a request carries, if any.
fn cip(msg: &[u8]) -> Option<&[u8]> {
    let Ok(f) = parse_frame(msg) else { return None };
    let Body::SendData(sd) = f.body else { return None };
    match sd.cpf.payload()? {
        Payload::Unconnected(m) => Some(m),
        Payload::Connected { message, .. } => Some(message),
    }
}

/// (service, class, instance) of every request, containers and what they carry, as Zeek logs them.
fn census(m: &Messages) -> BTreeMap<(u8, u32, u32), usize> {
    let mut out = BTreeMap::new();
    let mut add = |code: u8, class: Option<u32>, inst: Option<u32>| {
        *out.entry((code, class.unwrap_or(u32::MAX), inst.unwrap_or(u32::MAX))).or_insert(0) += 1;
    };
    for msg in &m.requests {
        let Some(c) = cip(msg) else { continue };
        let top = parse_request(c).expect("every captured request parses");
        add(top.code, top.path.class, top.path.instance);
        if top.service == Service::MultipleServicePacket {
            for inner in parse_multiple_service(top.data).unwrap() {
                let r = parse_request(inner).unwrap();
                add(r.code, r.path.class, r.path.instance);
            }
        }
    }
    out
}

/// The same census from Zeek's cip.log: tab-separated, column 13 is request/response, 14 the service,
/// 20 the class id and 22 the instance id (hex, `-` when absent).
fn zeek_census(log: &str) -> BTreeMap<(u8, u32, u32), usize> {
    let mut out = BTreeMap::new();
    for line in log.lines().filter(|l| !l.starts_with('#')) {
        let f: Vec<&str> = line.split('\t').collect();
        if f.len() < 22 || f[12] != "request" {
            continue;
        }
        let hexv = |s: &str| u32::from_str_radix(s.trim_start_matches("0x"), 16).unwrap_or(u32::MAX);
        let key = (hexv(f[13]) as u8, hexv(f[19]), hexv(f[21]));
        *out.entry(key).or_insert(0) += 1;
    }
    out
}

#[test]
fn enip_cip_example_gives_suricatas_counts() {
    let Some(cap) = shared("suricata-verify/enip-keywords/enip_cip_example.pcap") else { return };
    let m = messages(&cap);
    assert_eq!(m.invalid_streams, 0);
    assert_eq!(m.leftover, 0, "no message is left half read");
    let cmds = commands(&m);
    // enip_command:112 -> 267 and enip_command:99 -> 2 (test.yaml); both count requests and replies.
    assert_eq!(cmds.get(&(Command::SendUnitData as u16)), Some(&267));
    assert_eq!(cmds.get(&(Command::ListIdentity as u16)), Some(&2));
    // cip_service:10 -> 41 (Suricata 7: requests only).
    let msp = m
        .requests
        .iter()
        .filter_map(|r| cip(r))
        .filter(|c| parse_request(c).unwrap().service == Service::MultipleServicePacket)
        .count();
    assert_eq!(msp, 41);
    // enip-frames sid 4: |03 02 20 8b 24 01 01 00 06 00|, Get Attribute List to class 0x8B instance 1
    // asking for attribute 6: 41 of them, all inside the Multiple Service Packets.
    let mut gal_8b = 0;
    for c in m.requests.iter().filter_map(|r| cip(r)) {
        for leaf in flatten(c).unwrap() {
            let r = &leaf.request;
            if r.service == Service::GetAttributeList && r.path.class == Some(0x8B) && r.data == [1, 0, 6, 0] {
                assert_eq!(leaf.depth, 1);
                gal_8b += 1;
            }
        }
    }
    assert_eq!(gal_8b, 41);
}

#[test]
fn enip_cip_example_requests_match_zeeks_log() {
    let Some(dir) = shared_pcaps() else { return };
    let cap = std::fs::read(dir.join("icsnpp-enip/enip_cip_example.pcap")).unwrap();
    let log = std::fs::read_to_string(dir.join("icsnpp-enip/baseline/baseline__analyzer.basic__cip.log")).unwrap();
    let ours = census(&messages(&cap));
    let zeek = zeek_census(&log);
    assert_eq!(ours, zeek);
    assert_eq!(zeek.values().sum::<usize>(), 585, "41 packets of 11 and 134 single requests");
}

#[test]
fn every_reply_parses_and_carries_the_reply_bit() {
    let Some(cap) = shared("icsnpp-enip/enip_cip_example.pcap") else { return };
    let m = messages(&cap);
    let mut replies = 0;
    for msg in &m.replies {
        if let Some(c) = cip(msg) {
            let r = parse_response(c).expect("every captured reply parses");
            assert!(r.code == 0x03 || r.code == 0x0A || r.code == 0x04, "service {:#x}", r.code);
            replies += 1;
        }
    }
    // Zeek: 532 + 40 + 1 replies, of which 40 are Multiple Service Packets carrying 440 of the 532.
    assert_eq!(replies, 532 - 440 + 40 + 1);
}

#[test]
fn multiple_service_packet_capture_has_eleven_get_attribute_lists() {
    let Some(cap) = shared("icsnpp-enip/multiple_service_packet_cip.pcapng") else { return };
    let m = messages(&cap);
    let first = m.requests.iter().find_map(|r| cip(r)).unwrap();
    let leaves = flatten(first).unwrap();
    assert_eq!(leaves.len(), 11);
    assert!(leaves.iter().all(|l| l.request.service == Service::GetAttributeList && l.depth == 1));
    let classes: Vec<u32> = leaves.iter().map(|l| l.request.path.class.unwrap()).collect();
    // Zeek's multiple_service_request cip.log, in order.
    assert_eq!(classes, [0x01, 0x69, 0x73, 0xAC, 0x68, 0x70, 0x8E, 0x69, 0x68, 0x77, 0x8B]);
    assert_eq!(leaves[4].request.path.instance, Some(0x2420), "16-bit instance segment");
}

#[test]
fn set_attribute_single_capture_is_seen_with_its_anomaly() {
    let Some(cap) = shared("icsnpp-enip/set_attribute_single_service_cip.pcapng") else { return };
    let m = messages(&cap);
    let f = parse_frame(&m.requests[0]).unwrap();
    assert_eq!(f.command, Some(Command::SendUnitData));
    assert_eq!(f.header.session, 0xB4CA_FFF4);
    assert_eq!(&f.header.sender_context, b"_pycomm_");
    let r = parse_request(cip(&m.requests[0]).unwrap()).unwrap();
    // Zeek: 0x10 Set Attributes Single, class 0x01 Identity, instance 0x00.
    assert_eq!((r.service, r.path.class, r.path.instance), (Service::SetAttributeSingle, Some(1), Some(0)));
    assert_eq!(r.access.name(), "write");
    assert!(r.anomalies.contains(zonegate_core::enip::Anomalies::MISSING_ATTRIBUTE));
    assert!(r.anomalies.contains(zonegate_core::enip::Anomalies::SHORT_DATA));
}

#[test]
fn list_identity_capture_has_one_request_and_one_reply() {
    let Some(cap) = shared("suricata-verify/enip-alert/enip_test1.pcap") else { return };
    let m = messages(&cap);
    assert_eq!((m.requests.len(), m.replies.len()), (1, 1));
    let req = parse_frame(&m.requests[0]).unwrap();
    assert_eq!((req.command, req.body), (Some(Command::ListIdentity), Body::Empty));
    let rep = parse_frame(&m.replies[0]).unwrap();
    let Body::Raw(data) = rep.body else { panic!("a reply body") };
    // Item count 1, item type 0x000C, then the identity with "1756-ENBT/A" as product name.
    assert_eq!(&data[..4], &[1, 0, 0x0C, 0]);
    assert!(data.windows(11).any(|w| w == b"1756-ENBT/A"));
}
