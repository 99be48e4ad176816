//! No input makes the EtherNet/IP parsers panic: every vector and every captured message is cut at
//! every length, has every bit flipped, and gets random bytes appended; each variant runs through
//! the whole parse (split, encapsulation, CPF, request, containers, connection requests, responses, reply matching)
//! and a connection table. Whatever comes back must respect the bounds the parsers promise.

mod enip_support;

use enip_support::*;
use zonegate_core::enip::*;

/// Runs every parser that could see these bytes. Returns nothing: a panic fails the test.
fn exercise(bytes: &[u8], table: &mut ConnectionTable) {
    let _ = split(bytes);
    let _ = split_with_limit(bytes, 512);
    let _ = encap::Frames::new(bytes).count();
    if let Ok(f) = parse_frame(bytes) {
        if let Body::SendData(sd) = f.body {
            match sd.cpf.payload() {
                Some(Payload::Unconnected(m)) => cip_level(m, table),
                Some(Payload::Connected { sequence, message }) => {
                    if let Some(cpf::Address::Connected { connection_id }) = sd.cpf.address() {
                        let _ = table.connected_request(connection_id, sequence);
                    }
                    cip_level(message, table);
                }
                None => {}
            }
        }
    }
    cip_level(bytes, table);
    let _ = reply_matches(bytes, bytes, table);
}

fn cip_level(m: &[u8], table: &mut ConnectionTable) {
    let _ = parse_path(m);
    let _ = parse_cpf(m);
    let _ = parse_send_data(m);
    let _ = parse_response(m);
    let _ = parse_forward_open_reply(m);
    if let Ok(r) = parse_response(m) {
        if let Ok(rep) = parse_forward_open_reply(r.data) {
            let _ = table.open_replied(&rep);
        }
    }
    if let Ok(r) = parse_request(m) {
        let _ = r.path.tag.as_ref().map(|t| t.text());
        match r.service {
            Service::ForwardOpen | Service::LargeForwardOpen => {
                if let Ok(fo) = parse_forward_open(r.data, r.service == Service::LargeForwardOpen) {
                    let _ = table.open_requested(&fo);
                }
            }
            Service::ForwardClose => {
                if let Ok(fc) = parse_forward_close(r.data) {
                    let _ = table.close(&fc.triad);
                }
            }
            _ => {}
        }
    }
    if let Ok(leaves) = flatten(m) {
        assert!(!leaves.is_empty() && leaves.len() <= MAX_LEAVES);
        for l in &leaves {
            assert!(l.depth <= MAX_DEPTH);
            assert!(!l.request.service.is_container());
        }
    }
    for large in [false, true] {
        let _ = parse_forward_open(m, large);
    }
    let _ = parse_forward_close(m);
    let _ = parse_multiple_service(m);
    let _ = parse_unconnected_send(m);
}

/// A small deterministic generator, so a failure replays exactly.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u8 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (self.0 >> 56) as u8
    }
}

fn corpus() -> Vec<Vec<u8>> {
    let mut out: Vec<Vec<u8>> = message_vectors().into_iter().map(|(_, v)| v).collect();
    out.extend(cip_vectors().into_iter().map(|(_, v)| v));
    out.push(forward_open_data(false, 1));
    out.push(forward_open_data(true, 1));
    out
}

#[test]
fn every_truncation_of_every_vector_is_handled() {
    let mut table = ConnectionTable::new();
    for v in corpus() {
        for n in 0..=v.len() {
            exercise(&v[..n], &mut table);
            exercise(&v[v.len() - n..], &mut table);
        }
    }
}

#[test]
fn every_bit_flip_of_every_vector_is_handled() {
    let mut table = ConnectionTable::new();
    for v in corpus() {
        let mut w = v.clone();
        for i in 0..w.len() {
            for bit in 0..8 {
                w[i] ^= 1 << bit;
                exercise(&w, &mut table);
                w[i] ^= 1 << bit;
            }
        }
    }
    assert!(table.len() <= zonegate_core::enip::connections::MAX_CONNECTIONS);
}

#[test]
fn random_bytes_appended_and_random_messages_are_handled() {
    let mut rng = Lcg(0x5EED);
    let mut table = ConnectionTable::new();
    for v in corpus() {
        for _ in 0..64 {
            let extra = (rng.next() % 32) as usize;
            let mut w = v.clone();
            w.extend((0..extra).map(|_| rng.next()));
            exercise(&w, &mut table);
        }
    }
    for _ in 0..4096 {
        let len = rng.next() as usize;
        let w: Vec<u8> = (0..len).map(|_| rng.next()).collect();
        exercise(&w, &mut table);
        // A random CIP request wrapped in a well-formed message, so the inner parsers see it too.
        exercise(&send_rr(&w), &mut table);
    }
}

#[test]
fn captured_messages_survive_truncation_and_bit_flips() {
    let Some(cap) = shared("icsnpp-enip/enip_cip_example.pcap") else { return };
    let m = messages(&cap);
    let mut unique: Vec<Vec<u8>> = m.requests.iter().chain(&m.replies).cloned().collect();
    unique.sort();
    unique.dedup();
    let mut table = ConnectionTable::new();
    for v in &unique {
        for n in 0..=v.len() {
            exercise(&v[..n], &mut table);
        }
    }
    // Bit flips over a sample: one of each distinct length.
    unique.dedup_by_key(|v| v.len());
    for v in &unique {
        let mut w = v.clone();
        for i in 0..w.len() {
            for bit in 0..8 {
                w[i] ^= 1 << bit;
                exercise(&w, &mut table);
                w[i] ^= 1 << bit;
            }
        }
    }
}
