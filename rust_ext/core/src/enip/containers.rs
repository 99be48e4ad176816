//! Parsing stage: containers unwrapped, so that every request inside is decided on its own.
//!
//! ```text
//!  Unconnected Send (0x52 to class 0x06, instance 1), request data:
//!   | priority/tick u8 | timeout ticks u8 | message size u16 | message | pad if size odd |
//!   | route path size u8 (words) | reserved u8 | route path (port segments) |
//!
//!  Multiple Service Packet (0x0A to class 0x02, instance 1), request data:
//!   | count u16 | offset u16 * count | request 1 | request 2 | ... |
//!   offsets count from the start of the count field; request i ends where request i+1 starts
//! ```
//!
//! Containers nest (a Multiple Service Packet inside an Unconnected Send is what most clients send to a
//! controller behind a backplane). Nesting is bounded by [`MAX_DEPTH`] and the number of requests by
//! [`MAX_LEAVES`]; past either the message is refused, never partly decided. Each leaf keeps the route
//! the Unconnected Sends around it add, outermost hop first.

use super::cip::{read_head, read_request, Anomalies, CipError, Request, Service};
use super::epath::{parse_path, PathSink, Port, TagParts};
use super::le16;
use std::cell::RefCell;

/// Most containers around one request (the outermost message counts as depth 0).
pub const MAX_DEPTH: u8 = 4;
/// Most requests one message may carry, all containers included.
pub const MAX_LEAVES: usize = 256;

/// One request that is not a container, and where it sat.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Leaf<'a> {
    pub request: Request<'a>,
    /// How many containers are around it.
    pub depth: u8,
    /// Route added by the Unconnected Sends around it, outermost first.
    pub route: Vec<Port>,
}

/// The leaves of one message, in wire order.
pub type Leaves<'a> = Vec<Leaf<'a>>;

/// An Unconnected Send's fields.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnconnectedSend<'a> {
    pub priority_tick: u8,
    pub timeout_ticks: u8,
    /// The embedded message router request.
    pub message: &'a [u8],
    pub route: Vec<Port>,
}

/// Reads an Unconnected Send's request data.
pub fn parse_unconnected_send(data: &[u8]) -> Result<UnconnectedSend<'_>, CipError> {
    let (message, route_bytes) = unconnected_send_parts(data)?;
    let path = parse_path(route_bytes).map_err(CipError::Path)?;
    if path.route.is_empty() || path.has_target() || path.member.is_some() || path.key.is_some() {
        return Err(CipError::BadRoute);
    }
    Ok(UnconnectedSend { priority_tick: data[0], timeout_ticks: data[1], message, route: path.route })
}

/// An Unconnected Send's embedded message and route path bytes, lengths checked.
fn unconnected_send_parts(data: &[u8]) -> Result<(&[u8], &[u8]), CipError> {
    if data.len() < 4 {
        return Err(CipError::DataTruncated);
    }
    let size = le16(data, 2) as usize;
    let padded = size + (size % 2);
    // Message, its pad, then route size and reserved.
    if data.len() - 4 < padded + 2 {
        return Err(CipError::DataTruncated);
    }
    let message = &data[4..4 + size];
    let r = 4 + padded;
    let route_len = 2 * data[r] as usize;
    let route_bytes = &data[r + 2..];
    if route_bytes.len() < route_len {
        return Err(CipError::DataTruncated);
    }
    if route_bytes.len() > route_len {
        return Err(CipError::DataTrailing);
    }
    Ok((message, route_bytes))
}

/// Reads a Multiple Service Packet's request data: the inner requests' bytes, in order.
pub fn parse_multiple_service(data: &[u8]) -> Result<Vec<&[u8]>, CipError> {
    let count = check_multiple_service(data)?;
    Ok((0..count).map(|i| inner_request(data, count, i)).collect())
}

/// Checks a Multiple Service Packet's count and offset table: the number of requests it carries. Every
/// offset is checked before any request is read, so a bad table refuses the packet whatever is inside.
fn check_multiple_service(data: &[u8]) -> Result<usize, CipError> {
    if data.len() < 2 {
        return Err(CipError::DataTruncated);
    }
    let count = le16(data, 0) as usize;
    if count == 0 {
        return Err(CipError::BadOffsets);
    }
    if count > MAX_LEAVES {
        return Err(CipError::TooManyRequests);
    }
    let table_end = 2 + 2 * count;
    if data.len() < table_end {
        return Err(CipError::DataTruncated);
    }
    for i in 0..count {
        let start = le16(data, 2 + 2 * i) as usize;
        let end = if i + 1 < count { le16(data, 4 + 2 * i) as usize } else { data.len() };
        // Each request needs at least its service and path size bytes.
        if start < table_end || end > data.len() || end < start + 2 {
            return Err(CipError::BadOffsets);
        }
    }
    Ok(count)
}

/// Request `i` of a packet [`check_multiple_service`] accepted.
fn inner_request(data: &[u8], count: usize, i: usize) -> &[u8] {
    let start = le16(data, 2 + 2 * i) as usize;
    let end = if i + 1 < count { le16(data, 4 + 2 * i) as usize } else { data.len() };
    &data[start..end]
}

/// Unwraps every container in one message router request; the leaves are what gets decided.
pub fn flatten(msg: &[u8]) -> Result<Leaves<'_>, CipError> {
    // Most messages are one request; a container reserves what it holds.
    let mut out = Vec::with_capacity(1);
    walk(msg, 0, &[], &mut out)?;
    Ok(out)
}

fn walk<'a>(msg: &'a [u8], depth: u8, route: &[Port], out: &mut Leaves<'a>) -> Result<(), CipError> {
    // The request is read into its place in `out` (a leaf is a few hundred bytes, and moving it out of
    // the parser costs more than reading it); a container's slot is given back once it is read.
    let slot = out.len();
    out.push(Leaf { request: Request::blank(), depth, route: Vec::new() });
    read_request(msg, &mut out[slot].request)?;
    let (service, data) = (out[slot].request.service, out[slot].request.data);
    match service {
        Service::MultipleServicePacket | Service::UnconnectedSend if depth >= MAX_DEPTH => Err(CipError::TooDeep),
        Service::MultipleServicePacket => {
            out.truncate(slot);
            let count = check_multiple_service(data)?;
            // Reserved once, so the list does not move its leaves again and again as it grows.
            out.reserve(count.min(MAX_LEAVES - slot.min(MAX_LEAVES)));
            for i in 0..count {
                walk(inner_request(data, count, i), depth + 1, route, out)?;
            }
            Ok(())
        }
        Service::UnconnectedSend => {
            out.truncate(slot);
            let us = parse_unconnected_send(data)?;
            let mut hops = route.to_vec();
            hops.extend(us.route);
            walk(us.message, depth + 1, &hops, out)
        }
        _ => {
            if slot >= MAX_LEAVES {
                return Err(CipError::TooManyRequests);
            }
            out[slot].route = route.to_vec();
            Ok(())
        }
    }
}

// --- Flattening in place, for the decision stage -----------------------------------------------------
//
// `flatten` gives each leaf an owned `Request` (a few hundred bytes: its path's hops and tag copied).
// Deciding needs none of that copied: `with_flat` reads the same message with the same checks (one
// path walk, `walk_path`, feeds both) but keeps every hop, name part and element as offsets into the
// message, in a scratch reused from one message to the next, so a Multiple Service Packet's requests
// cost no allocation and no copy each.

/// A byte range of the message. Full width: nothing bounds a request's data but the message, and a
/// caller may hand any length.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct At {
    pub off: usize,
    pub len: usize,
}

impl At {
    #[inline]
    pub fn of(self, msg: &[u8]) -> &[u8] {
        &msg[self.off..self.off + self.len]
    }
}

/// A range of one of the scratch lists.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Run {
    pub start: u32,
    pub end: u32,
}

impl Run {
    #[inline]
    pub fn of<T>(self, list: &[T]) -> &[T] {
        &list[self.start as usize..self.end as usize]
    }
}

/// One hop: leave by `port` to the link address at `link`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct HopAt {
    pub port: u16,
    pub link: At,
}

/// One tag name part: its name and its elements (a run of [`Flat::elements`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct PartAt {
    pub name: At,
    pub elements: Run,
}

/// A leaf as [`with_flat`] keeps it: what `Leaf` says, with its hops and tag as runs of the scratch.
#[derive(Clone, Copy, Debug)]
pub(crate) struct LeafAt {
    pub service: Service,
    pub anomalies: Anomalies,
    pub elements: Option<u16>,
    pub class: Option<u32>,
    pub instance: Option<u32>,
    pub attribute: Option<u32>,
    /// Request data after the path.
    pub data: At,
    /// The Unconnected Sends' hops around it (outermost first), then its own path's ports.
    pub hops: Run,
    /// Its tag's parts; `None` without a tag.
    pub tag: Option<Run>,
}

/// The lists [`with_flat`] fills; kept from one message to the next so that they stop growing.
#[derive(Debug, Default)]
pub(crate) struct Scratch {
    pub leaves: Vec<LeafAt>,
    pub hops: Vec<HopAt>,
    pub parts: Vec<PartAt>,
    pub elements: Vec<u32>,
    /// The hops of the Unconnected Sends around the request being read.
    route: Vec<HopAt>,
}

/// Most entries a kept scratch list may hold between messages: a hostile message may fill one with tens
/// of thousands of name parts, and a thread should not hold that memory for ever.
const SCRATCH_KEEP: usize = 4096;

impl Scratch {
    fn clear(&mut self) {
        let big = self.leaves.capacity().max(self.hops.capacity()).max(self.parts.capacity());
        if big > SCRATCH_KEEP || self.elements.capacity() > SCRATCH_KEEP || self.route.capacity() > SCRATCH_KEEP {
            *self = Scratch::default();
            return;
        }
        self.leaves.clear();
        self.hops.clear();
        self.parts.clear();
        self.elements.clear();
        self.route.clear();
    }
}

/// A flattened message: the message and the scratch that describes it.
#[derive(Clone, Copy)]
pub(crate) struct Flat<'m> {
    pub msg: &'m [u8],
    pub s: &'m Scratch,
}

impl<'m> Flat<'m> {
    #[inline]
    pub fn leaves(&self) -> &'m [LeafAt] {
        &self.s.leaves
    }

    /// A leaf's hops as (port, link) pairs.
    #[inline]
    pub fn hops(&self, leaf: &LeafAt) -> impl ExactSizeIterator<Item = (u16, &'m [u8])> + Clone + 'm {
        let msg = self.msg;
        leaf.hops.of(&self.s.hops).iter().map(move |h| (h.port, h.link.of(msg)))
    }

    /// A leaf's tag; `None` without one.
    #[inline]
    pub fn tag(&self, leaf: &LeafAt) -> Option<TagAt<'m>> {
        leaf.tag.map(|r| TagAt { msg: self.msg, parts: r.of(&self.s.parts), elements: &self.s.elements })
    }
}

/// A leaf's tag parts, read through the scratch.
#[derive(Clone, Copy)]
pub(crate) struct TagAt<'m> {
    msg: &'m [u8],
    parts: &'m [PartAt],
    elements: &'m [u32],
}

impl<'m> TagAt<'m> {
    /// Part `i`'s name, borrowed from the message rather than from this view.
    #[inline]
    pub fn name_of(&self, i: usize) -> &'m [u8] {
        self.parts[i].name.of(self.msg)
    }
}

impl TagParts for TagAt<'_> {
    #[inline]
    fn part_count(&self) -> usize {
        self.parts.len()
    }
    #[inline]
    fn name(&self, i: usize) -> &[u8] {
        self.parts[i].name.of(self.msg)
    }
    #[inline]
    fn elements(&self, i: usize) -> &[u32] {
        self.parts[i].elements.of(self.elements)
    }
}

/// Offset of `part` (a slice of `msg`) in `msg`.
#[inline]
fn at(base: usize, part: &[u8]) -> At {
    At { off: part.as_ptr() as usize - base, len: part.len() }
}

/// Keeps a request's ports, name parts and elements in the scratch.
struct LeafSink<'s> {
    base: usize,
    hops: &'s mut Vec<HopAt>,
    parts: &'s mut Vec<PartAt>,
    elements: &'s mut Vec<u32>,
}

impl<'a> PathSink<'a> for LeafSink<'_> {
    #[inline]
    fn port(&mut self, port: u16, link: &'a [u8]) {
        self.hops.push(HopAt { port, link: at(self.base, link) });
    }

    #[inline]
    fn symbol(&mut self, name: &'a [u8]) {
        let n = self.elements.len() as u32;
        self.parts.push(PartAt { name: at(self.base, name), elements: Run { start: n, end: n } });
    }

    #[inline]
    fn element(&mut self, index: u32) {
        self.elements.push(index);
        if let Some(last) = self.parts.last_mut() {
            last.elements.end += 1;
        }
    }
}

/// Keeps an Unconnected Send's route: ports only (anything else makes it a bad route).
struct RouteSink<'s> {
    base: usize,
    route: &'s mut Vec<HopAt>,
    added: usize,
}

impl<'a> PathSink<'a> for RouteSink<'_> {
    fn port(&mut self, port: u16, link: &'a [u8]) {
        self.route.push(HopAt { port, link: at(self.base, link) });
        self.added += 1;
    }
    fn symbol(&mut self, _: &'a [u8]) {}
    fn element(&mut self, _: u32) {}
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch::default());
}

/// [`flatten`] `msg` in place and hand the result to `f`: the same leaves, in the same order, with the
/// same error, as offsets into `msg`.
pub(crate) fn with_flat<R>(msg: &[u8], f: impl FnOnce(Result<Flat<'_>, CipError>) -> R) -> R {
    let mut f = Some(f);
    let mut go = |s: &mut Scratch| {
        s.clear();
        let r = walk_at(msg.as_ptr() as usize, msg, 0, s);
        let f = f.take().expect("called once");
        f(r.map(|()| Flat { msg, s }))
    };
    // A nested use on the same thread (none today) gets a scratch of its own rather than a panic.
    let kept = SCRATCH.try_with(|cell| cell.try_borrow_mut().ok().map(|mut s| go(&mut s)));
    match kept {
        Ok(Some(r)) => r,
        _ => go(&mut Scratch::default()),
    }
}

/// [`walk`], keeping offsets: `part` is the request being read, a slice of the message at address `base`.
fn walk_at(base: usize, part: &[u8], depth: u8, s: &mut Scratch) -> Result<(), CipError> {
    let (hops0, parts0) = (s.hops.len(), s.parts.len());
    if !s.route.is_empty() {
        s.hops.extend_from_slice(&s.route);
    }
    let mut sink = LeafSink { base, hops: &mut s.hops, parts: &mut s.parts, elements: &mut s.elements };
    let h = read_head(part, &mut sink)?;
    match h.service {
        Service::MultipleServicePacket | Service::UnconnectedSend if depth >= MAX_DEPTH => Err(CipError::TooDeep),
        Service::MultipleServicePacket => {
            s.hops.truncate(hops0);
            s.parts.truncate(parts0);
            let count = check_multiple_service(h.data)?;
            let data = h.data;
            let mut start = le16(data, 2) as usize;
            for i in 1..=count {
                let end = if i < count { le16(data, 2 + 2 * i) as usize } else { data.len() };
                walk_at(base, &data[start..end], depth + 1, s)?;
                start = end;
            }
            Ok(())
        }
        Service::UnconnectedSend => {
            s.hops.truncate(hops0);
            s.parts.truncate(parts0);
            let (message, route_bytes) = unconnected_send_parts(h.data)?;
            let outer = s.route.len();
            let mut sink = RouteSink { base, route: &mut s.route, added: 0 };
            let a = super::epath::walk_path(route_bytes, &mut sink).map_err(CipError::Path)?;
            if sink.added == 0 || a.has_target() || a.member.is_some() || a.key.is_some() {
                return Err(CipError::BadRoute);
            }
            walk_at(base, message, depth + 1, s)?;
            s.route.truncate(outer);
            Ok(())
        }
        _ => {
            if s.leaves.len() >= MAX_LEAVES {
                return Err(CipError::TooManyRequests);
            }
            let a = &h.address;
            s.leaves.push(LeafAt {
                service: h.service,
                anomalies: h.anomalies,
                elements: h.elements,
                class: a.class,
                instance: a.instance,
                attribute: a.attribute,
                data: at(base, h.data),
                hops: Run { start: hops0 as u32, end: s.hops.len() as u32 },
                tag: a.tagged.then_some(Run { start: parts0 as u32, end: s.parts.len() as u32 }),
            });
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A small deterministic generator, so that a failure replays.
    struct Lcg(u64);

    impl Lcg {
        fn next(&mut self) -> u32 {
            self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (self.0 >> 33) as u32
        }
        fn below(&mut self, n: u32) -> u32 {
            self.next() % n
        }
    }

    fn symbol(name: &[u8], out: &mut Vec<u8>) {
        out.extend_from_slice(&[0x91, name.len() as u8]);
        out.extend_from_slice(name);
        if name.len() % 2 == 1 {
            out.push(0);
        }
    }

    fn request(service: u8, path: &[u8], data: &[u8]) -> Vec<u8> {
        let mut out = vec![service, (path.len() / 2) as u8];
        out.extend_from_slice(path);
        out.extend_from_slice(data);
        out
    }

    /// A request of one of the shapes clients send: tag reads and writes, attribute services, a
    /// Forward Open, each behind a route now and then.
    fn leaf(rng: &mut Lcg) -> Vec<u8> {
        let mut path = Vec::new();
        if rng.below(5) == 0 {
            path.extend_from_slice(&[0x01, rng.below(4) as u8]); // port 1, a slot
        }
        match rng.below(4) {
            0 | 1 => {
                for part in 0..1 + rng.below(3) {
                    symbol(
                        [&b"Line1"[..], b"Motor", b"Press_SP", b"Program:Main"][(part + rng.below(4)) as usize % 4],
                        &mut path,
                    );
                    if rng.below(2) == 0 {
                        path.extend_from_slice(&[0x28, rng.below(40) as u8]); // element
                    }
                }
                let service = [0x4C, 0x4D, 0x52, 0x53][rng.below(4) as usize];
                request(service, &path, &[0xC4, 0x00, 0x01, 0x00, 0x2A, 0x00, 0x00, 0x00][..2 + rng.below(7) as usize])
            }
            2 => {
                path.extend_from_slice(&[0x20, 0x01, 0x24, rng.below(3) as u8, 0x30, rng.below(9) as u8]);
                request([0x01, 0x0E, 0x10, 0x4B][rng.below(4) as usize], &path, &[0x01, 0x00][..rng.below(3) as usize])
            }
            _ => request(0x54, &[0x20, 0x06, 0x24, 0x01], &[0x0A, 0x0E, 0x00, 0x00]),
        }
    }

    fn container(rng: &mut Lcg, depth: u8) -> Vec<u8> {
        if depth > 3 || rng.below(3) == 0 {
            return leaf(rng);
        }
        if rng.below(2) == 0 {
            let inner: Vec<Vec<u8>> = (0..1 + rng.below(6)).map(|_| container(rng, depth + 1)).collect();
            let mut data = (inner.len() as u16).to_le_bytes().to_vec();
            let mut at = 2 + 2 * inner.len();
            for r in &inner {
                data.extend_from_slice(&(at as u16).to_le_bytes());
                at += r.len();
            }
            inner.iter().for_each(|r| data.extend_from_slice(r));
            request(0x0A, &[0x20, 0x02, 0x24, 0x01], &data)
        } else {
            let inner = container(rng, depth + 1);
            let mut data = vec![0x0A, 0xF0];
            data.extend_from_slice(&(inner.len() as u16).to_le_bytes());
            data.extend_from_slice(&inner);
            if inner.len() % 2 == 1 {
                data.push(0);
            }
            let route: &[u8] = [&[0x01, 0x00][..], &[0x12, 0x08, b'1', b'0', b'.', b'0', b'.', b'0', b'.', b'5']]
                [rng.below(2) as usize];
            data.extend_from_slice(&[(route.len() / 2) as u8, 0]);
            data.extend_from_slice(route);
            request(0x52, &[0x20, 0x06, 0x24, 0x01], &data)
        }
    }

    /// What both readings say about one leaf: service, anomalies, element count, logical address, data,
    /// hops and tag text.
    type Seen = (Service, u32, Option<u16>, [Option<u32>; 3], Vec<u8>, Vec<(u16, Vec<u8>)>, Option<String>);

    fn owned(l: &Leaf<'_>) -> Seen {
        let r = &l.request;
        let hops = l.route.iter().chain(&r.path.route).map(|p| (p.port, p.link.clone())).collect();
        let tag = r.path.tag.as_ref().map(|t| t.text());
        (
            r.service,
            r.anomalies.0,
            r.elements,
            [r.path.class, r.path.instance, r.path.attribute],
            r.data.to_vec(),
            hops,
            tag,
        )
    }

    fn in_place(f: &Flat<'_>, l: &LeafAt) -> Seen {
        let hops = f.hops(l).map(|(p, link)| (p, link.to_vec())).collect();
        let tag = f.tag(l).map(|t| super::super::epath::tag_text(&t));
        (l.service, l.anomalies.0, l.elements, [l.class, l.instance, l.attribute], l.data.of(f.msg).to_vec(), hops, tag)
    }

    /// Flattening in place reads every message as `flatten` does: the same leaves in the same order, or
    /// the same error, for generated container trees and for every one of them cut short or with a byte
    /// changed.
    #[test]
    fn flattening_in_place_reads_as_flatten_does() {
        let mut rng = Lcg(44818);
        let (mut checked, mut many, mut refused) = (0, 0, 0);
        for _ in 0..3000 {
            let good = container(&mut rng, 0);
            let mut variants = vec![good.clone()];
            variants.push(good[..rng.below(good.len() as u32) as usize].to_vec());
            let mut flipped = good.clone();
            let i = rng.below(good.len() as u32) as usize;
            flipped[i] = rng.next() as u8;
            variants.push(flipped);
            for msg in &variants {
                let want = flatten(msg).map(|leaves| leaves.iter().map(owned).collect::<Vec<_>>());
                let got = with_flat(msg, |f| f.map(|f| f.leaves().iter().map(|l| in_place(&f, l)).collect::<Vec<_>>()));
                assert_eq!(got, want, "{msg:02x?}");
                checked += 1;
                match &want {
                    Ok(leaves) if leaves.len() > 1 => many += 1,
                    Err(_) => refused += 1,
                    _ => {}
                }
            }
        }
        assert_eq!(checked, 9000);
        // Both readings were compared on packets of several requests and on refusals, not only on one.
        assert!(many > 500 && refused > 500, "{many} packets of several requests, {refused} refused");
    }
}
