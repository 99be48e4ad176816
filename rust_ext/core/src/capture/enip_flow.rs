//! EtherNet/IP flows in replay: what one client connection's messages need beyond splitting, and the
//! counters they feed.
//!
//! ```text
//!  client message --decide_enip (per-flow EnipSession)--> CipDecision --> CipCounts
//!        \-- kept (bounded) until a reply answers it --observe_reply--> connection table in step
//! ```
//!
//! The conduit keeps one [`EnipSession`] per client connection; replay keeps one per flow, fed the same
//! messages, so a Forward Open seen in the capture attributes the SendUnitData requests that follow it.
//! A flow the capture joined mid-connection may carry connected requests on a connection whose Forward
//! Open came before the first frame: the session cannot know their route, and deciding them as
//! `unknown_connection` would report the capture's start, not the policy. Those are decided as
//! unconnected requests to the device itself (empty route prefix) and counted in
//! `unseen_connection_requests`; a flow whose start was captured gets exactly the conduit's decision.

use crate::enip::cpf::{Address, Payload};
use crate::enip::encap::{parse_frame, Body, Command};
use crate::enip::{flatten, parse_request, parse_response, reply_matches, Service};
use crate::policy::{CipDecision, CipReason, EnipSession, Verdict};
use std::borrow::Cow;
use std::collections::{BTreeMap, VecDeque};

/// Requests one flow keeps waiting for their replies; a client that never gets answers cannot grow it.
pub const MAX_IN_FLIGHT: usize = 64;

/// A request waiting for its reply.
struct InFlight {
    frame: Vec<u8>,
    /// Forwarded (allowed, or would_deny in monitor mode): its reply updates the connection table, as
    /// the conduit's would. A refused request never reached the device behind zonegate, but the capture
    /// may hold the device's answer; that answer is only matched, never applied.
    forwarded: bool,
}

/// EtherNet/IP state of one flow.
pub struct EnipFlow {
    pub session: EnipSession,
    in_flight: VecDeque<InFlight>,
    /// The connection's start was not captured.
    midstream: bool,
    /// Connected requests on connections opened before the capture were seen.
    unseen_connections: bool,
}

impl EnipFlow {
    pub fn new(midstream: bool) -> EnipFlow {
        EnipFlow { session: EnipSession::new(), in_flight: VecDeque::new(), midstream, unseen_connections: false }
    }
}

/// The service name a report counts: the policy's name, or the code in hex when it has none.
pub fn service_label(s: Service) -> Cow<'static, str> {
    match s.name() {
        Some(name) => Cow::Borrowed(name),
        None => Cow::Owned(format!("0x{:02x}", s.code())),
    }
}

/// The encapsulation command a report counts: its name, or the word in hex when it is not one.
pub fn command_label(word: u16) -> Cow<'static, str> {
    match Command::from_u16(word) {
        Some(c) => Cow::Borrowed(c.name()),
        None => Cow::Owned(format!("0x{word:04x}")),
    }
}

fn bump(map: &mut BTreeMap<Cow<'static, str>, u64>, key: Cow<'static, str>) {
    *map.entry(key).or_insert(0) += 1;
}

/// Counters of the EtherNet/IP half of a replay.
#[derive(Debug, Clone, Default)]
pub struct CipCounts {
    /// EtherNet/IP connections.
    pub flows: u64,
    /// Encapsulation messages from clients, each decided once.
    pub requests: u64,
    pub allowed: u64,
    pub denied: u64,
    pub would_deny: u64,
    /// Requests denied as malformed (a subset of `denied`).
    pub malformed: u64,
    /// Encapsulation messages from devices.
    pub replies: u64,
    /// Replies with a non-zero encapsulation status or CIP general status.
    pub error_replies: u64,
    /// CIP requests (leaves) inside the decided messages, containers opened.
    pub leaves: u64,
    /// Requests by encapsulation command.
    pub by_command: BTreeMap<Cow<'static, str>, u64>,
    /// Replies by encapsulation command.
    pub replies_by_command: BTreeMap<Cow<'static, str>, u64>,
    /// CIP messages by their outer service (a Multiple Service Packet counts once, as itself).
    pub by_service: BTreeMap<Cow<'static, str>, u64>,
    /// CIP requests inside those messages by service (the leaves the policy decides).
    pub by_leaf_service: BTreeMap<Cow<'static, str>, u64>,
    /// Reason code -> requests (docs/cip-engine.md section 8).
    pub by_reason: BTreeMap<u8, u64>,
    /// Deny or malformed kind name -> requests.
    pub by_malformed: BTreeMap<&'static str, u64>,
    /// Requests each rule allowed (IR index; the rule of the first leaf).
    pub by_rule: Vec<u64>,
    /// Requests denied with each rule named as the closest match.
    pub by_rule_denied: Vec<u64>,
    /// Connected requests decided without their connection's route (opened before the capture).
    pub unseen_connection_requests: u64,
    /// Replies that answer no request of their flow (the conduit would drop them).
    pub unmatched_replies: u64,
}

impl CipCounts {
    pub fn new(rules: usize) -> CipCounts {
        CipCounts { by_rule: vec![0; rules], by_rule_denied: vec![0; rules], ..CipCounts::default() }
    }
}

/// The CIP message a SendRRData or SendUnitData carries, and the connection id of a connected one.
fn cip_message(frame: &[u8]) -> Option<(&[u8], Option<u32>)> {
    let f = parse_frame(frame).ok()?;
    let Body::SendData(sd) = f.body else {
        return None;
    };
    match (sd.cpf.payload()?, sd.cpf.address()) {
        (Payload::Unconnected(m), _) => Some((m, None)),
        (Payload::Connected { message, .. }, Some(Address::Connected { connection_id })) => {
            Some((message, Some(connection_id)))
        }
        (Payload::Connected { message, .. }, _) => Some((message, None)),
    }
}

/// What replay needs from the engine for one client message: `decide_enip` as the conduit calls it,
/// and `decide_unattributed` for a connected request on a connection opened before the capture (its
/// CIP message decided with no route prefix, as if sent to the device itself).
pub trait DecideEnip {
    fn decide_enip(
        &mut self,
        principal: u32,
        device: u32,
        session: &mut EnipSession,
        frame: &[u8],
        now_ns: u64,
    ) -> CipDecision;
    fn decide_unattributed(&mut self, principal: u32, device: u32, message: &[u8], now_ns: u64) -> CipDecision;
}

impl DecideEnip for crate::policy::Engine {
    fn decide_enip(
        &mut self,
        principal: u32,
        device: u32,
        session: &mut EnipSession,
        frame: &[u8],
        now_ns: u64,
    ) -> CipDecision {
        crate::policy::Engine::decide_enip(&*self, principal, device, session, frame, now_ns)
    }

    fn decide_unattributed(&mut self, principal: u32, device: u32, message: &[u8], now_ns: u64) -> CipDecision {
        crate::policy::Engine::decide_cip(&*self, principal, device, message, &[], now_ns)
    }
}

/// A decided client message, as the driver lists a denial.
pub struct Decided {
    pub decision: CipDecision,
    /// Service of the deciding leaf (the denied one, or the first), when the message carried CIP.
    pub leaf_service: Option<Cow<'static, str>>,
}

/// Decides one client message of `flow` and counts it. Returns the decision for the caller to list.
pub fn request<D: DecideEnip>(
    decider: &mut D,
    flow: &mut EnipFlow,
    counts: &mut CipCounts,
    principal: u32,
    device: u32,
    frame: &[u8],
    now_ns: u64,
) -> Decided {
    let word = match frame {
        [a, b, ..] => u16::from_le_bytes([*a, *b]),
        _ => 0,
    };
    let mut decision = decider.decide_enip(principal, device, &mut flow.session, frame, now_ns);
    let message = cip_message(frame);
    let mut unseen = false;
    if flow.midstream && decision.malformed == Some("unknown_connection") {
        if let Some((msg, Some(_))) = message {
            decision = decider.decide_unattributed(principal, device, msg, now_ns);
            decision.command = word;
            counts.unseen_connection_requests += 1;
            flow.unseen_connections = true;
            unseen = true;
        }
    }
    counts.requests += 1;
    bump(&mut counts.by_command, command_label(word));
    let mut leaf_service = None;
    if let Some((msg, _)) = message {
        if let Ok(req) = parse_request(msg) {
            bump(&mut counts.by_service, service_label(req.service));
        }
        if let Ok(leaves) = flatten(msg) {
            counts.leaves += leaves.len() as u64;
            for leaf in &leaves {
                bump(&mut counts.by_leaf_service, service_label(leaf.request.service));
            }
            let at = decision.denied_leaf.unwrap_or(0) as usize;
            leaf_service = leaves.get(at).map(|l| service_label(l.request.service));
        }
    }
    *counts.by_reason.entry(decision.reason as u8).or_insert(0) += 1;
    if let Some(rule) = decision.rule {
        let per_rule =
            if decision.verdict == Verdict::Allow { &mut counts.by_rule } else { &mut counts.by_rule_denied };
        if let Some(n) = per_rule.get_mut(rule as usize) {
            *n += 1;
        }
    }
    if decision.reason == CipReason::Malformed {
        counts.malformed += 1;
        if let Some(kind) = decision.malformed {
            *counts.by_malformed.entry(kind).or_insert(0) += 1;
        }
    }
    match decision.verdict {
        Verdict::Allow => counts.allowed += 1,
        Verdict::WouldDeny => counts.would_deny += 1,
        Verdict::Deny => counts.denied += 1,
    }
    // Nothing can match a reply on an unseen connection: keeping its request would only slow the search.
    let answered_never = word == Command::Nop as u16 || word == Command::UnRegisterSession as u16;
    if !unseen && !answered_never {
        if flow.in_flight.len() >= MAX_IN_FLIGHT {
            flow.in_flight.pop_front();
        }
        flow.in_flight.push_back(InFlight { frame: frame.to_vec(), forwarded: decision.forward() });
    }
    Decided { decision, leaf_service }
}

/// Counts one device message of `flow` and lets the request it answers update the session.
pub fn reply(flow: &mut EnipFlow, counts: &mut CipCounts, frame: &[u8]) {
    counts.replies += 1;
    let word = match frame {
        [a, b, ..] => u16::from_le_bytes([*a, *b]),
        _ => 0,
    };
    bump(&mut counts.replies_by_command, command_label(word));
    let encap_error = frame.len() >= 12 && frame[8..12] != [0, 0, 0, 0];
    let cip_error = cip_message(frame).and_then(|(m, _)| parse_response(m).ok()).is_some_and(|r| r.general_status != 0);
    if encap_error || cip_error {
        counts.error_replies += 1;
    }
    let EnipFlow { session, in_flight, .. } = flow;
    let answered = in_flight.iter().position(|q| {
        if q.forwarded {
            session.observe_reply(&q.frame, frame)
        } else {
            reply_matches(&q.frame, frame, session.table()).is_ok()
        }
    });
    match answered {
        Some(i) => {
            in_flight.remove(i);
        }
        // Replies on connections opened before the capture cannot be checked: the session never
        // learnt their ids.
        None if flow.unseen_connections && word == Command::SendUnitData as u16 => {}
        None => counts.unmatched_replies += 1,
    }
}
