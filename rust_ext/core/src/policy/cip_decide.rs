//! Decision stage for CIP (docs/cip-engine.md sections 5, 6 and 8): one message router request, or one
//! encapsulation message with its session's connection table, in; one [`CipDecision`] out.
//!
//! ```text
//!  message --flatten--> leaves --malformed pass (every leaf)--> policy pass (leaf by leaf, wire order)
//!                                                                route -> service -> target -> bucket
//!  SendRRData   -> the unconnected message; an allowed Forward Open is recorded in the session
//!  SendUnitData -> the connection's route prefix + the connected message
//! ```
//!
//! The malformed pass runs over every leaf before the policy sees any, so a message with a malformed
//! leaf is refused in both modes even when an earlier leaf is only a would-be denial.
//!
//! Leaves are read in place (`containers::with_flat`: offsets into the message, no copy and no
//! allocation per request); the audit texts are made from them only for a decision that wants them.

use super::cip::{CipDecision, CipReason, CompiledCipEntry, ServiceKey, Target};
use super::{Engine, Mode, Verdict};
use crate::enip::containers::{with_flat, Flat, LeafAt};
use crate::enip::{
    parse_forward_close, parse_forward_open, parse_forward_open_reply, parse_frame, parse_request, parse_response,
    parse_unconnected_send, reply_matches, tag_text, Address, Anomalies, Body, CipError, Command, ConnectionTable,
    Payload, Port, Request, Service, TableError, TagParts, MAX_DEPTH,
};
use std::cell::Cell;

/// General status 0x01: connection failure.
const CONNECTION_FAILURE: u8 = 0x01;
/// General status 0x02: resource unavailable (rate).
const RESOURCE_UNAVAILABLE: u8 = 0x02;
/// General status 0x04: path segment error.
const PATH_SEGMENT_ERROR: u8 = 0x04;
/// General status 0x08: service not supported.
const SERVICE_NOT_SUPPORTED: u8 = 0x08;
/// General status 0x0F: privilege violation.
const PRIVILEGE_VIOLATION: u8 = 0x0F;
/// General status 0x13: not enough data.
const NOT_ENOUGH_DATA: u8 = 0x13;
/// Encapsulation status 0x0001: invalid or unsupported command.
const ENCAP_INVALID_COMMAND: u32 = 0x0001;
/// Encapsulation status 0x0003: incorrect data.
const ENCAP_INCORRECT_DATA: u32 = 0x0003;

/// Path anomalies that would let the device read a path differently from the policy.
const BAD_PATH: [Anomalies; 4] =
    [Anomalies::NONZERO_PAD, Anomalies::MIXED_ADDRESSING, Anomalies::DATA_SEGMENT, Anomalies::NETWORK_SEGMENT];

/// The connection fields of a leaf: `Ok(Some(transport class))` for a (Large) Forward Open whose data
/// reads, `Ok(None)` for every other leaf and a readable Forward Close, the data's error otherwise.
pub fn leaf_connection(req: &Request<'_>) -> Result<Option<u8>, CipError> {
    connection_of(req.service, req.data)
}

fn connection_of(service: Service, data: &[u8]) -> Result<Option<u8>, CipError> {
    match service {
        Service::ForwardOpen | Service::LargeForwardOpen => {
            let fo = parse_forward_open(data, service == Service::LargeForwardOpen)?;
            Ok(Some(fo.transport_class()))
        }
        Service::ForwardClose => parse_forward_close(data).map(|_| None),
        _ => Ok(None),
    }
}

/// The request a chain of Unconnected Sends delivers (or the message itself when it is none), and the
/// hops the chain adds, outermost first.
fn delivered(msg: &[u8]) -> Option<(Request<'_>, Vec<Port>)> {
    let mut hops = Vec::new();
    let mut msg = msg;
    for _ in 0..=MAX_DEPTH {
        let r = parse_request(msg).ok()?;
        if r.service != Service::UnconnectedSend {
            return Some((r, hops));
        }
        let us = parse_unconnected_send(r.data).ok()?;
        hops.extend(us.route);
        msg = us.message;
    }
    None
}

/// Why a leaf is malformed (step 2), as a kind name and the general status to answer.
fn leaf_malformed(msg: &[u8], leaf: &LeafAt) -> Option<(&'static str, u8)> {
    if BAD_PATH.iter().any(|a| leaf.anomalies.contains(*a)) {
        return Some(("bad_path", PATH_SEGMENT_ERROR));
    }
    let tag_service = matches!(
        leaf.service,
        Service::ReadTag
            | Service::ReadTagFragmented
            | Service::WriteTag
            | Service::WriteTagFragmented
            | Service::ReadModifyWriteTag
    );
    if tag_service && leaf.anomalies.contains(Anomalies::SHORT_DATA) {
        return Some(("short_data", NOT_ENOUGH_DATA));
    }
    match connection_of(leaf.service, leaf.data.of(msg)) {
        Err(e) => Some((e.name(), e.general_status())),
        // Implicit (class 0/1) I/O never crosses the conduit.
        Ok(Some(0 | 1)) => Some(("io_connection", SERVICE_NOT_SUPPORTED)),
        Ok(_) => None,
    }
}

/// One hop as section 4 writes it: a one-byte link in decimal, a longer printable one as its text.
fn hop_text(s: &mut String, port: u16, link: &[u8]) {
    use std::fmt::Write;
    let _ = write!(s, "{port},");
    let printable = link.iter().all(|c| c.is_ascii_graphic() && *c != b',' && *c != b'/');
    match link {
        [one] => {
            let _ = write!(s, "{one}");
        }
        link if printable => s.extend(link.iter().map(|&c| c as char)),
        link => {
            s.push_str("0x");
            for b in link {
                let _ = write!(s, "{b:02x}");
            }
        }
    }
}

/// Route text (section 4 syntax) of hops, in order.
pub fn route_text<'a>(hops: impl IntoIterator<Item = &'a Port>) -> String {
    hops_text(hops.into_iter().map(|p| (p.port, p.link.as_slice())))
}

fn hops_text<'a>(hops: impl Iterator<Item = (u16, &'a [u8])>) -> String {
    let mut s = String::new();
    for (i, (port, link)) in hops.enumerate() {
        if i > 0 {
            s.push('/');
        }
        hop_text(&mut s, port, link);
    }
    s
}

/// Audit text of a request's target: the tag name, `class 0x01 instance 1 attribute 7`, or "".
pub fn target_text(req: &Request<'_>) -> String {
    let p = &req.path;
    match &p.tag {
        Some(t) => t.text(),
        None => logical_text(p.class, p.instance, p.attribute),
    }
}

fn logical_text(class: Option<u32>, instance: Option<u32>, attribute: Option<u32>) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    if let Some(c) = class {
        let _ = write!(s, "class 0x{c:02X}");
        if let Some(i) = instance {
            let _ = write!(s, " instance {i}");
        }
        if let Some(a) = attribute {
            let _ = write!(s, " attribute {a}");
        }
    }
    s
}

/// The audit texts (`target`, `route`) of a flattened leaf decided with route prefix `prefix`.
fn leaf_texts(flat: &Flat<'_>, leaf: &LeafAt, prefix: &[Port]) -> (String, String) {
    let target = match flat.tag(leaf) {
        Some(t) => tag_text(&t),
        None => logical_text(leaf.class, leaf.instance, leaf.attribute),
    };
    let route = hops_text(prefix.iter().map(|p| (p.port, p.link.as_slice())).chain(flat.hops(leaf)));
    (target, route)
}

/// The audit texts (`target`, `route`) of leaf `leaf` of `msg` decided with route prefix `prefix`, as
/// [`Engine::decide_cip`] fills them; empty when the message has no such leaf.
pub fn cip_texts(msg: &[u8], prefix: &[Port], leaf: u32) -> (String, String) {
    with_flat(msg, |flat| {
        flat.ok().and_then(|f| f.leaves().get(leaf as usize).map(|l| leaf_texts(&f, l, prefix))).unwrap_or_default()
    })
}

fn in_ranges(ranges: &Option<Vec<(u32, u32)>>, v: Option<u32>) -> bool {
    match ranges {
        None => true,
        Some(list) => v.is_some_and(|v| list.iter().any(|(lo, hi)| *lo <= v && v <= *hi)),
    }
}

/// A leaf ready for the policy pass.
struct View<'l, 'm> {
    flat: &'l Flat<'m>,
    leaf: &'l LeafAt,
    prefix: &'l [Port],
    service: ServiceKey,
    /// Route sets (`CompiledCipEntry::route_set` below 64) compared with the leaf's route so far, and
    /// those it is in.
    routes_known: Cell<u64>,
    routes_in: Cell<u64>,
}

impl<'l, 'm> View<'l, 'm> {
    fn new(flat: &'l Flat<'m>, leaf: &'l LeafAt, prefix: &'l [Port]) -> Self {
        View {
            flat,
            leaf,
            prefix,
            service: ServiceKey::of(leaf.service),
            routes_known: Cell::new(0),
            routes_in: Cell::new(0),
        }
    }

    fn hop_count(&self) -> usize {
        self.prefix.len() + (self.leaf.hops.end - self.leaf.hops.start) as usize
    }

    /// Depth at which the leaf fails `entry`'s route (1) or service (2) check, 0 when it passes both.
    #[inline]
    fn reach(&self, entry: &CompiledCipEntry) -> u8 {
        if let Some(routes) = &entry.routes {
            if !self.route_in(entry.route_set, routes) {
                return 1;
            }
        }
        if !entry.services.contains(self.service) {
            return 2;
        }
        0
    }

    /// True when the leaf's route is one of `routes` (route set `set`), compared once per set.
    #[inline]
    fn route_in(&self, set: u32, routes: &[super::cip::Route]) -> bool {
        if set >= 64 {
            return self.route_among(routes);
        }
        let bit = 1u64 << set;
        if self.routes_known.get() & bit == 0 {
            self.routes_known.set(self.routes_known.get() | bit);
            if self.route_among(routes) {
                self.routes_in.set(self.routes_in.get() | bit);
            }
        }
        self.routes_in.get() & bit != 0
    }

    fn route_among(&self, routes: &[super::cip::Route]) -> bool {
        let n = self.hop_count();
        let same = |r: &super::cip::Route| {
            r.len() == n && {
                let (head, tail) = r.split_at(self.prefix.len());
                head.iter().zip(self.prefix).all(|((port, link), h)| *port == h.port && *link == h.link)
                    && tail
                        .iter()
                        .zip(self.flat.hops(self.leaf))
                        .all(|((port, link), (hp, hl))| *port == hp && link.as_slice() == hl)
            }
        };
        routes.iter().any(same)
    }

    /// The target check (depth 3).
    #[inline]
    fn target_ok(&self, entry: &CompiledCipEntry) -> bool {
        let leaf = self.leaf;
        match &entry.target {
            Target::Any => true,
            Target::Tags(patterns) => {
                self.flat.tag(leaf).is_some_and(|t| patterns.iter().any(|p| p.matches(&t, leaf.elements)))
            }
            Target::Logical { classes, instances, attributes } => {
                leaf.tag.is_none()
                    && leaf.class.is_some()
                    && in_ranges(classes, leaf.class)
                    && in_ranges(instances, leaf.instance)
                    && in_ranges(attributes, leaf.attribute)
            }
        }
    }

    /// The first name part of the leaf's tag, which picks its bucket of the pair's entries.
    #[inline]
    fn first_name(&self) -> Option<&'m [u8]> {
        self.flat.tag(self.leaf).map(|t| if t.part_count() == 0 { &[][..] } else { t.name_of(0) })
    }
}

/// The connection table of one client session (docs/cip-engine.md section 6).
#[derive(Debug, Default)]
pub struct EnipSession {
    table: ConnectionTable,
}

impl EnipSession {
    pub fn new() -> Self {
        Self::default()
    }

    /// Pending and open connections.
    pub fn connections(&self) -> usize {
        self.table.len()
    }

    pub fn table(&self) -> &ConnectionTable {
        &self.table
    }

    /// Checks that `reply` answers `request` (both whole encapsulation messages) and applies a Forward
    /// Open reply or a Forward Close to the table. False when the reply answers nothing, or claims a
    /// Forward Open succeeded without ids that read (the pending connection is then forgotten).
    pub fn observe_reply(&mut self, request: &[u8], reply: &[u8]) -> bool {
        if reply_matches(request, reply, &self.table).is_err() {
            return false;
        }
        let (Ok(q), Ok(a)) = (parse_frame(request), parse_frame(reply)) else { return false };
        if q.command != Some(Command::SendRrData) {
            return true;
        }
        let (Body::SendData(qd), Body::SendData(ad)) = (q.body, a.body) else { return true };
        let (Some(Payload::Unconnected(qm)), Some(Payload::Unconnected(am))) = (qd.cpf.payload(), ad.cpf.payload())
        else {
            return true;
        };
        let (Some((req, _)), Ok(rep)) = (delivered(qm), parse_response(am)) else { return true };
        // A router that could not deliver an Unconnected Send answers for it (0x52 | 0x80).
        let delivered_ok = rep.general_status == 0 && rep.code == req.code;
        match req.service {
            Service::ForwardOpen | Service::LargeForwardOpen => {
                let Ok(fo) = parse_forward_open(req.data, req.service == Service::LargeForwardOpen) else {
                    return true;
                };
                if !delivered_ok {
                    self.table.open_refused(&fo.triad);
                    return true;
                }
                match parse_forward_open_reply(rep.data) {
                    Ok(r) if r.triad == fo.triad => {
                        self.table.open_replied(&r);
                        true
                    }
                    _ => {
                        self.table.open_refused(&fo.triad);
                        false
                    }
                }
            }
            Service::ForwardClose => {
                if delivered_ok {
                    if let Ok(fc) = parse_forward_close(req.data) {
                        self.table.close(&fc.triad);
                    }
                }
                true
            }
            _ => true,
        }
    }

    /// `request` (a whole encapsulation message) got the gateway's answer, not the device's (no device session
    /// to be had, the device unreachable or too slow): a Forward Open in it is no connection as far as the
    /// client knows, so its triad is free again for the client's retry, and the session holds no connection
    /// for it.
    pub fn unanswered(&mut self, request: &[u8]) {
        let Ok(q) = parse_frame(request) else { return };
        let Body::SendData(qd) = q.body else { return };
        let Some(Payload::Unconnected(qm)) = qd.cpf.payload() else { return };
        let Some((req, _)) = delivered(qm) else { return };
        let large = match req.service {
            Service::ForwardOpen => false,
            Service::LargeForwardOpen => true,
            _ => return,
        };
        if let Ok(fo) = parse_forward_open(req.data, large) {
            self.table.open_refused(&fo.triad);
        }
    }
}

impl Engine {
    fn cip_decision(&self, service: u8) -> CipDecision {
        CipDecision {
            verdict: Verdict::Allow,
            reason: CipReason::Allowed,
            rule: None,
            malformed: None,
            general_status: None,
            encap_status: None,
            command: 0,
            service,
            leaves: 0,
            denied_leaf: None,
            target: String::new(),
            route: String::new(),
        }
    }

    /// Sets a policy refusal (or an unknown principal) on `d`, as the mode says.
    fn cip_refuse(&self, d: &mut CipDecision, reason: CipReason, rule: Option<u32>) {
        d.reason = reason;
        d.rule = rule;
        if self.mode == Mode::Monitor && reason != CipReason::UnknownPrincipal {
            d.verdict = Verdict::WouldDeny;
            return;
        }
        d.verdict = Verdict::Deny;
        d.general_status = Some(match reason {
            CipReason::RateExceeded => RESOURCE_UNAVAILABLE,
            _ => PRIVILEGE_VIOLATION,
        });
    }

    fn cip_malformed(d: &mut CipDecision, kind: &'static str, status: u8) {
        d.verdict = Verdict::Deny;
        d.reason = CipReason::Malformed;
        d.rule = None;
        d.malformed = Some(kind);
        d.general_status = Some(status);
    }

    fn encap_refuse(d: &mut CipDecision, reason: CipReason, kind: Option<&'static str>, status: u32) {
        d.verdict = Verdict::Deny;
        d.reason = reason;
        d.malformed = kind;
        d.encap_status = Some(status);
    }

    /// Decides one message router request for `principal` talking to `device` (IR indices). `prefix`
    /// is the route of the connection a connected request travels on (empty for unconnected ones).
    pub fn decide_cip(&self, principal: u32, device: u32, msg: &[u8], prefix: &[Port], now_ns: u64) -> CipDecision {
        self.decide_cip_with(principal, device, msg, prefix, now_ns, true).0
    }

    /// [`Engine::decide_cip`] without the audit texts: `target` and `route` stay empty, and the index of
    /// the leaf they describe is returned instead ([`cip_texts`] makes them when someone reads them).
    /// Most decisions are allowed and never audited, so their texts need not be built.
    pub fn decide_cip_lazy(
        &self,
        principal: u32,
        device: u32,
        msg: &[u8],
        prefix: &[Port],
        now_ns: u64,
    ) -> (CipDecision, Option<u32>) {
        self.decide_cip_with(principal, device, msg, prefix, now_ns, false)
    }

    fn decide_cip_with(
        &self,
        principal: u32,
        device: u32,
        msg: &[u8],
        prefix: &[Port],
        now_ns: u64,
        texts: bool,
    ) -> (CipDecision, Option<u32>) {
        let mut d = self.cip_decision(msg.first().copied().unwrap_or(0));
        if principal as usize >= self.principals.len() {
            self.cip_refuse(&mut d, CipReason::UnknownPrincipal, None);
            return (d, None);
        }
        with_flat(msg, |flat| match flat {
            Ok(flat) => self.decide_flat(&flat, d, principal, device, prefix, now_ns, texts),
            Err(e) => {
                Self::cip_malformed(&mut d, e.name(), e.general_status());
                (d, None)
            }
        })
    }

    /// Steps 2-4 over a flattened message.
    #[allow(clippy::too_many_arguments)]
    fn decide_flat(
        &self,
        flat: &Flat<'_>,
        mut d: CipDecision,
        principal: u32,
        device: u32,
        prefix: &[Port],
        now_ns: u64,
        texts: bool,
    ) -> (CipDecision, Option<u32>) {
        let leaves = flat.leaves();
        let describe = |d: &mut CipDecision, leaf: &LeafAt| {
            if texts {
                (d.target, d.route) = leaf_texts(flat, leaf, prefix);
            }
        };
        for (i, leaf) in leaves.iter().enumerate() {
            if let Some((kind, status)) = leaf_malformed(flat.msg, leaf) {
                Self::cip_malformed(&mut d, kind, status);
                d.denied_leaf = Some(i as u32);
                describe(&mut d, leaf);
                return (d, Some(i as u32));
            }
        }
        let pair = self.cip.pair(principal, device);
        let mut first_rule = None;
        for (i, leaf) in leaves.iter().enumerate() {
            d.leaves = i as u32 + 1;
            let view = View::new(flat, leaf, prefix);
            match self.decide_leaf(pair, &view, now_ns) {
                Ok(rule) => {
                    first_rule.get_or_insert(rule);
                }
                Err((reason, rule)) => {
                    self.cip_refuse(&mut d, reason, rule);
                    d.denied_leaf = Some(i as u32);
                    describe(&mut d, leaf);
                    return (d, Some(i as u32));
                }
            }
        }
        d.rule = first_rule;
        match leaves.first() {
            Some(leaf) => {
                describe(&mut d, leaf);
                (d, Some(0))
            }
            None => (d, None),
        }
    }

    /// Step 3 for one leaf: the matching entry's rule, or the refusal and the rule it names. A pair of
    /// at most 64 entries (nearly all) is decided over its bit sets ([`Engine::decide_leaf_masked`]).
    ///
    /// Only the leaf's bucket can hold a passing entry. When none passes, the deepest failure is found
    /// over every entry without the target check: no entry passes it, so an entry that passes route and
    /// service fails at depth 3, the deepest there is, and the first such one decides.
    fn decide_leaf(
        &self,
        pair: Option<&super::cip::PairIndex>,
        view: &View<'_, '_>,
        now_ns: u64,
    ) -> Result<u32, (CipReason, Option<u32>)> {
        let Some(pair) = pair.filter(|p| !p.candidates.is_empty()) else {
            return Err((CipReason::NoMatchingRule, None));
        };
        let entries = &self.cip.entries;
        if let Some(m) = &pair.masks {
            return self.decide_leaf_masked(pair, m, view, now_ns);
        }
        for &(ci, ei) in pair.bucket(view.first_name()) {
            let entry = &entries[ei as usize];
            if view.reach(entry) != 0 || !view.target_ok(entry) {
                continue;
            }
            return self.admit_leaf(&pair.candidates[ci as usize], entry, now_ns);
        }
        let (mut best_depth, mut best_rule) = (0u8, None);
        for c in &pair.candidates {
            for entry in c.entries.of(entries) {
                let depth = match view.reach(entry) {
                    0 => return Err((CipReason::TargetNotAllowed, Some(c.rule))),
                    d => d,
                };
                if depth > best_depth {
                    best_depth = depth;
                    best_rule = Some(c.rule);
                }
            }
        }
        Err((CipReason::from_depth(best_depth), best_rule))
    }

    /// The first passing entry decides: its rule, unless the entry's rate bucket is empty.
    #[inline]
    fn admit_leaf(
        &self,
        c: &super::cip::CipCandidate,
        entry: &super::cip::CompiledCipEntry,
        now_ns: u64,
    ) -> Result<u32, (CipReason, Option<u32>)> {
        if let Some((spec, ordinal)) = &entry.rate {
            let slot = c.slot as usize + *ordinal as usize;
            if !self.cip.buckets.charge(slot, spec, now_ns) {
                return Err((CipReason::RateExceeded, Some(c.rule)));
            }
        }
        Ok(c.rule)
    }

    /// [`Engine::decide_leaf`] over the pair's bit sets: the same walk, the same first passing entry and
    /// the same deepest failure (section 5, step 3).
    #[inline]
    fn decide_leaf_masked(
        &self,
        pair: &super::cip::PairIndex,
        m: &super::cip::PairMasks,
        view: &View<'_, '_>,
        now_ns: u64,
    ) -> Result<u32, (CipReason, Option<u32>)> {
        let entries = &self.cip.entries;
        let mut route_ok = m.any_route;
        for &(set, rep, mask) in m.route_sets.iter() {
            if let Some(routes) = &entries[rep as usize].routes {
                if view.route_in(set, routes) {
                    route_ok |= mask;
                }
            }
        }
        let reach_ok = route_ok & m.services(view.service);
        let mut passing = reach_ok & m.buckets[pair.bucket_id(view.first_name())];
        while passing != 0 {
            let (ci, ei) = m.walk[passing.trailing_zeros() as usize];
            passing &= passing - 1;
            let entry = &entries[ei as usize];
            if !view.target_ok(entry) {
                continue;
            }
            return self.admit_leaf(&pair.candidates[ci as usize], entry, now_ns);
        }
        // The first entry that passes route and service fails at the target (depth 3); else the first
        // that passes the route fails at the service (2); else every entry fails at the route (1).
        let rule_of = |bits: u64| Some(pair.candidates[m.walk[bits.trailing_zeros() as usize].0 as usize].rule);
        if reach_ok != 0 {
            Err((CipReason::TargetNotAllowed, rule_of(reach_ok)))
        } else if route_ok != 0 {
            Err((CipReason::ServiceNotAllowed, rule_of(route_ok)))
        } else if m.walk.is_empty() {
            Err((CipReason::from_depth(0), None))
        } else {
            Err((CipReason::RouteNotAllowed, rule_of(1)))
        }
    }

    /// Decides one encapsulation message from a client whose connections `session` tracks.
    pub fn decide_enip(
        &self,
        principal: u32,
        device: u32,
        session: &mut EnipSession,
        frame: &[u8],
        now_ns: u64,
    ) -> CipDecision {
        let command = match frame {
            [a, b, ..] => u16::from_le_bytes([*a, *b]),
            _ => 0,
        };
        let mut d = self.cip_decision(0);
        d.command = command;
        if principal as usize >= self.principals.len() {
            self.cip_refuse(&mut d, CipReason::UnknownPrincipal, None);
            return d;
        }
        let f = match parse_frame(frame) {
            Ok(f) => f,
            Err(e) => {
                Self::encap_refuse(&mut d, CipReason::Malformed, Some(e.name()), ENCAP_INCORRECT_DATA);
                return d;
            }
        };
        let sd = match (f.command, f.body) {
            (
                Some(
                    Command::Nop
                    | Command::RegisterSession
                    | Command::UnRegisterSession
                    | Command::ListIdentity
                    | Command::ListServices
                    | Command::ListInterfaces,
                ),
                _,
            ) => return d,
            (Some(Command::SendRrData | Command::SendUnitData), Body::SendData(sd)) => sd,
            _ => {
                Self::encap_refuse(&mut d, CipReason::CommandNotAllowed, None, ENCAP_INVALID_COMMAND);
                return d;
            }
        };
        let items = sd.cpf.items();
        let two = items.len() == 2;
        let bad_items = |d: &mut CipDecision| {
            Self::encap_refuse(d, CipReason::Malformed, Some("cpf_bad_items"), ENCAP_INCORRECT_DATA);
        };
        if f.command == Some(Command::SendRrData) {
            let (Some(Address::Null), Some(Payload::Unconnected(msg))) = (sd.cpf.address(), sd.cpf.payload()) else {
                bad_items(&mut d);
                return d;
            };
            if !two {
                bad_items(&mut d);
                return d;
            }
            let mut out = self.decide_cip(principal, device, msg, &[], now_ns);
            out.command = command;
            if out.forward() {
                self.record_forward_open(&mut out, session, msg);
            }
            return out;
        }
        match (sd.cpf.address(), sd.cpf.payload()) {
            (Some(Address::Connected { connection_id }), Some(Payload::Connected { sequence, message })) if two => {
                let prefix = match session.table.connected_request(connection_id, sequence) {
                    Ok(a) => a.connection.path.route.clone(),
                    Err(_) => {
                        Self::cip_malformed(&mut d, "unknown_connection", CONNECTION_FAILURE);
                        d.service = message.first().copied().unwrap_or(0);
                        return d;
                    }
                };
                let mut out = self.decide_cip(principal, device, message, &prefix, now_ns);
                out.command = command;
                out
            }
            (Some(Address::Sequenced { .. }), _) => {
                Self::encap_refuse(&mut d, CipReason::Malformed, Some("io_connection"), ENCAP_INCORRECT_DATA);
                d
            }
            _ => {
                bad_items(&mut d);
                d
            }
        }
    }

    /// A forwarded Forward Open that is the whole message, or all an Unconnected Send chain delivers,
    /// goes into the table with the chain's hops ahead of its connection path's ports; one the table
    /// cannot hold is refused in both modes, since connected requests on it could not be attributed.
    fn record_forward_open(&self, d: &mut CipDecision, session: &mut EnipSession, msg: &[u8]) {
        let Some((req, hops)) = delivered(msg) else { return };
        let large = match req.service {
            Service::ForwardOpen => false,
            Service::LargeForwardOpen => true,
            _ => return,
        };
        let Ok(mut fo) = parse_forward_open(req.data, large) else { return };
        if !hops.is_empty() {
            fo.path.route = hops.into_iter().chain(fo.path.route).collect();
        }
        let refused = match session.table.open_requested(&fo) {
            Ok(()) => return,
            Err(TableError::DuplicateTriad) => "duplicate_connection",
            Err(_) => "too_many_connections",
        };
        Self::cip_malformed(d, refused, CONNECTION_FAILURE);
        d.denied_leaf = Some(0);
    }
}
