//! Fuzz target: a TCP byte stream as the EtherNet/IP conduit receives it, cut into messages, each
//! parsed down to the CIP requests it carries; connected messages go through a connection table.
#![no_main]

use libfuzzer_sys::fuzz_target;
use zonegate_core::enip::{
    cpf::{Address, Payload},
    encap::Frames,
    flatten, parse_forward_open, parse_frame, parse_request, Body, ConnectionTable, Service,
};

fuzz_target!(|data: &[u8]| {
    let mut table = ConnectionTable::new();
    let mut frames = Frames::new(data);
    for msg in frames.by_ref() {
        let Ok(frame) = parse_frame(msg) else { continue };
        let Body::SendData(sd) = frame.body else { continue };
        let cip = match sd.cpf.payload() {
            Some(Payload::Unconnected(m)) => m,
            Some(Payload::Connected { sequence, message }) => {
                if let Some(Address::Connected { connection_id }) = sd.cpf.address() {
                    let _ = table.connected_request(connection_id, sequence);
                }
                message
            }
            None => continue,
        };
        if let Ok(req) = parse_request(cip) {
            if matches!(req.service, Service::ForwardOpen | Service::LargeForwardOpen) {
                if let Ok(fo) = parse_forward_open(req.data, req.service == Service::LargeForwardOpen) {
                    let _ = table.open_requested(&fo);
                }
            }
        }
        let _ = flatten(cip);
    }
    assert!(frames.consumed() <= data.len());
});
