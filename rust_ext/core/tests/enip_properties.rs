//! Properties of the CIP parsers over generated inputs: any well-formed path (every segment form and
//! width) reads back as the model that wrote it, and any nesting of containers up to the bound gives
//! back every leaf with its depth and route. A deterministic generator keeps failures replayable.

mod enip_support;

use enip_support::*;
use zonegate_core::enip::*;

struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u32 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (self.0 >> 32) as u32
    }
    fn below(&mut self, n: u32) -> u32 {
        self.next() % n
    }
}

/// A value and the widest encoding it may use (0: 8-bit, 1: 16-bit, 2: 32-bit).
fn value(rng: &mut Lcg) -> (u32, u8) {
    match rng.below(3) {
        0 => (rng.below(256), 0),
        1 => (rng.below(65536), 1),
        _ => (rng.next(), 2),
    }
}

/// A logical segment of type `ty` in the given width (never narrower than the value needs).
fn logical(ty: u8, v: u32, width: u8, out: &mut Vec<u8>) {
    let width = width.max(if v > 0xFFFF {
        2
    } else if v > 0xFF {
        1
    } else {
        0
    });
    out.push(0x20 | (ty << 2) | width);
    match width {
        0 => out.push(v as u8),
        1 => {
            out.push(0);
            out.extend_from_slice(&(v as u16).to_le_bytes());
        }
        _ => {
            out.push(0);
            out.extend_from_slice(&v.to_le_bytes());
        }
    }
}

fn port(rng: &mut Lcg, out: &mut Vec<u8>) -> Port {
    let start = out.len();
    let extended_port = rng.below(4) == 0;
    let extended_link = rng.below(3) == 0;
    let port = if extended_port { 15 + rng.below(1000) as u16 } else { 1 + rng.below(14) as u16 };
    let link: Vec<u8> =
        if extended_link { (0..1 + rng.below(15)).map(|_| rng.next() as u8).collect() } else { vec![rng.next() as u8] };
    out.push(if extended_port { 0x0F } else { port as u8 } | if extended_link { 0x10 } else { 0 });
    if extended_link {
        out.push(link.len() as u8);
    }
    if extended_port {
        out.extend_from_slice(&port.to_le_bytes());
    }
    out.extend_from_slice(&link);
    if (out.len() - start) % 2 == 1 {
        out.push(0);
    }
    Port { port, link }
}

const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_:";

#[test]
fn generated_paths_read_back_as_written() {
    let mut rng = Lcg(0xC1F);
    for _ in 0..20_000 {
        let mut bytes = Vec::new();
        let route: Vec<Port> = (0..rng.below(3)).map(|_| port(&mut rng, &mut bytes)).collect();
        let mut want = Path { route, ..Path::default() };
        if rng.below(2) == 0 {
            let (c, w) = value(&mut rng);
            logical(0, c, w, &mut bytes);
            want.class = Some(c);
            if rng.below(3) > 0 {
                let (i, w) = value(&mut rng);
                logical(1, i, w, &mut bytes);
                want.instance = Some(i);
                if rng.below(2) == 0 {
                    let (a, w) = value(&mut rng);
                    logical(4, a, w, &mut bytes);
                    want.attribute = Some(a);
                }
            }
        } else {
            let mut tag = TagName::default();
            for _ in 0..1 + rng.below(4) {
                let name: String = (0..1 + rng.below(20))
                    .map(|_| ALPHABET[rng.below(ALPHABET.len() as u32) as usize] as char)
                    .collect();
                bytes.push(0x91);
                bytes.push(name.len() as u8);
                bytes.extend_from_slice(name.as_bytes());
                if name.len() % 2 == 1 {
                    bytes.push(0);
                }
                let mut elements = Vec::new();
                for _ in 0..rng.below(4) {
                    let (e, w) = value(&mut rng);
                    logical(2, e, w, &mut bytes);
                    elements.push(e);
                }
                tag.parts.push(TagPart { name: name.as_str().into(), elements: elements.into() });
            }
            want.tag = Some(tag);
        }
        let got = parse_path(&bytes).unwrap_or_else(|e| panic!("{e:?} for {bytes:02x?}"));
        assert_eq!(got, want, "{bytes:02x?}");
        // The same path in a request is read identically, whatever the service.
        let mut msg = vec![rng.below(0x80) as u8, (bytes.len() / 2) as u8];
        msg.extend_from_slice(&bytes);
        assert_eq!(bytes.len() % 2, 0);
        assert_eq!(parse_request(&msg).unwrap().path, want);
    }
}

/// A random tree of containers around single requests: (message bytes, expected (depth, route, attribute)).
fn tree(rng: &mut Lcg, depth: u8, route: &[Port], leaves: &mut Vec<(u8, Vec<Port>, u32)>) -> Vec<u8> {
    let choice = if depth >= MAX_DEPTH { 0 } else { rng.below(3) };
    match choice {
        0 => {
            let attr = rng.below(256);
            leaves.push((depth, route.to_vec(), attr));
            vec![0x0E, 0x03, 0x20, 0x01, 0x24, 0x01, 0x30, attr as u8]
        }
        1 => {
            let n = 1 + rng.below(4);
            let inner: Vec<Vec<u8>> = (0..n).map(|_| tree(rng, depth + 1, route, leaves)).collect();
            let refs: Vec<&[u8]> = inner.iter().map(|v| v.as_slice()).collect();
            msp(&refs)
        }
        _ => {
            let mut hop = Vec::new();
            let p = port(rng, &mut hop);
            let mut r = route.to_vec();
            r.push(p);
            let inner = tree(rng, depth + 1, &r, leaves);
            unconnected_send(&inner, &hop)
        }
    }
}

#[test]
fn generated_container_trees_give_every_leaf() {
    let mut rng = Lcg(0x7EE);
    for _ in 0..5_000 {
        let mut want = Vec::new();
        let msg = tree(&mut rng, 0, &[], &mut want);
        match flatten(&msg) {
            Ok(leaves) => {
                let got: Vec<(u8, Vec<Port>, u32)> =
                    leaves.iter().map(|l| (l.depth, l.route.clone(), l.request.path.attribute.unwrap())).collect();
                assert_eq!(got, want);
            }
            Err(e) => {
                assert_eq!(e, CipError::TooManyRequests);
                assert!(want.len() > MAX_LEAVES);
            }
        }
        // One more container around it: refused exactly when a leaf was already at the bound.
        let deeper = msp(&[&msg]);
        let at_bound = want.iter().any(|(d, _, _)| *d == MAX_DEPTH);
        if want.len() <= MAX_LEAVES && !at_bound {
            assert_eq!(flatten(&deeper).unwrap().len(), want.len());
        } else if at_bound {
            assert_eq!(flatten(&deeper), Err(CipError::TooDeep));
        }
    }
}
