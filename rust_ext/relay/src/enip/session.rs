//! One EtherNet/IP client connection (docs/relay.md, "EtherNet/IP"; docs/enip-conduit.md, "A message's
//! path"): frame, check the session, decide, refuse / answer / forward on the device's shared session or the
//! client's own link, reply.
//!
//! The task owns the client's stream and its link's (link.rs) and waits on both in one `select!`, with the
//! shared session's answers (shared.rs), the ListIdentity look-ups, the principal's identification, the stop
//! notice and the idle timer. Answers ready when the task runs are written to the client in one write,
//! messages for the link in another.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::AsyncWriteExt;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use zonegate_core::enip::{flatten, parse_request, split, Access, Split};
use zonegate_core::policy::{CipDecision, CipReason, EnipSession, Verdict};

use super::device::{EnipDevice, Refusal};
use super::frames;
use super::link::{Done, Link, Pending};
use crate::config::MAX_ENIP_BUFFER;
use crate::events::{EnipAudit, Event};
use crate::listener::{
    ask_identity, monotonic_ns, read_some, realtime_ns, ClientStream, Principal, INITIAL_BUFFER, SHUTDOWN_TIMEOUT,
};
use crate::metrics::{LatencyCell, RequestCell};
use crate::{Generation, Shared, NO_DEVICE};

/// Request counters a connection keeps handles on (bounded whatever mix of services a client sends).
const MAX_CELLS: usize = 32;
/// Messages one client may have on the device's shared session at once (fewer than `max_outstanding` when
/// that is larger): the session is every client's, and a device takes one session's messages in turn.
const MAX_SHARED_PER_CLIENT: usize = 4;
/// Forward Open and Large Forward Open: a reply to a message holding one may name a connection.
const FORWARD_OPENS: [u8; 2] = [0x54, 0x5B];
/// The Connection Manager services that open or close a connection: tied to the session they are sent on, so
/// never on the device's shared session.
const CONNECTION_SERVICES: [u8; 3] = [0x54, 0x5B, 0x4E];

/// A counter's key within one connection and principal: (function, verdict, reason).
type CellKey = (&'static str, u8, &'static str);

type Lookup = Pin<Box<dyn Future<Output = Option<Arc<[u8]>>> + Send>>;
/// A ListIdentity message and the identity item found for it (None: the device could not be asked).
type Found = (Vec<u8>, Option<Arc<[u8]>>);

/// ListIdentity messages waiting for the device's identity: polled by the connection's own task.
#[derive(Default)]
struct Lookups {
    waiting: Vec<(Vec<u8>, Lookup)>,
}

impl Lookups {
    /// Moves every finished look-up to `done`; Ready when there was at least one.
    fn poll_done(&mut self, cx: &mut Context<'_>, done: &mut Vec<Found>) -> Poll<()> {
        let before = done.len();
        let mut i = 0;
        while i < self.waiting.len() {
            match self.waiting[i].1.as_mut().poll(cx) {
                Poll::Ready(identity) => {
                    let (frame, _) = self.waiting.remove(i);
                    done.push((frame, identity));
                }
                Poll::Pending => i += 1,
            }
        }
        if done.len() > before {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }
}

/// What the answer, metrics and audit need from a SendRRData / SendUnitData message's CIP request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Summary {
    /// The deciding leaf's service name (`denied_leaf`, else the first); `other` without one.
    function: &'static str,
    /// Any leaf of access kind write: an allowed message is audited.
    writes: bool,
    /// Any leaf a (Large) Forward Open, or leaves unknown.
    opens: bool,
    /// Any leaf a (Large) Forward Open or a Forward Close, or leaves unknown: the message needs the client's
    /// own link.
    connects: bool,
}

impl Summary {
    /// Flattens only a container: a plain request is its own single leaf.
    fn of(cip: Option<&[u8]>, denied_leaf: Option<u32>) -> Summary {
        const UNREAD: Summary = Summary { function: "other", writes: false, opens: true, connects: true };
        let Some(cip) = cip else { return UNREAD };
        let Ok(request) = parse_request(cip) else { return UNREAD };
        if !request.service.is_container() {
            return Summary {
                function: request.service.name().unwrap_or("other"),
                writes: request.service.access() == Access::Write,
                opens: FORWARD_OPENS.contains(&request.code),
                connects: CONNECTION_SERVICES.contains(&request.code),
            };
        }
        let Ok(leaves) = flatten(cip) else { return UNREAD };
        let Some(first) = leaves.first() else {
            return Summary { function: "other", writes: false, opens: false, connects: false };
        };
        let index = denied_leaf.unwrap_or(0) as usize;
        let deciding = leaves.get(index).unwrap_or(first);
        Summary {
            function: deciding.request.service.name().unwrap_or("other"),
            writes: leaves.iter().any(|l| l.request.service.access() == Access::Write),
            opens: leaves.iter().any(|l| FORWARD_OPENS.contains(&l.request.code)),
            connects: leaves.iter().any(|l| CONNECTION_SERVICES.contains(&l.request.code)),
        }
    }
}

fn relayed(command: u16) -> bool {
    command == frames::SEND_RR_DATA || command == frames::SEND_UNIT_DATA
}

/// RegisterSession's protocol version field, read as far as the message has it (a short one reads low).
fn register_version(frame: &[u8]) -> u16 {
    let data = &frame[frames::HEADER_LEN.min(frame.len())..];
    match data {
        [a, b, ..] => u16::from_le_bytes([*a, *b]),
        [a] => u16::from(*a),
        [] => 0,
    }
}

/// A random non-zero session handle: the client cannot guess another connection's.
fn session_handle(conn_id: u64) -> u32 {
    let mut bytes = [0u8; 4];
    // SAFETY: writes at most 4 bytes into `bytes`, which is live and 4 bytes long.
    let n = unsafe { libc::getrandom(bytes.as_mut_ptr().cast(), bytes.len(), 0) };
    let handle = if n == 4 {
        u32::from_ne_bytes(bytes)
    } else {
        // No entropy source: still unlikely to repeat across connections.
        let mixed = (realtime_ns() ^ conn_id.rotate_left(32)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        (mixed >> 32) as u32
    };
    handle.max(1)
}

/// Serves one EtherNet/IP connection until it closes; sets `asked` when an `identify` event goes out.
/// `local`: the address the client dialled (ListIdentity names it instead of the device's).
#[allow(clippy::too_many_arguments)]
pub(crate) async fn serve<S: ClientStream>(
    shared: &Arc<Shared>,
    index: usize,
    label: &Arc<str>,
    mut stream: S,
    peer: SocketAddr,
    local: Option<SocketAddr>,
    conn_id: u64,
    der: Option<Vec<u8>>,
    asked: &AtomicBool,
) {
    let (shared_tx, mut from_shared) = mpsc::unbounded_channel::<Done>();
    let mut client = Client::new(shared.clone(), index, label.clone(), conn_id, local, shared_tx);
    let mut stop = shared.stop_notice(conn_id);
    let mut link: Option<Link> = None;
    let mut lookups = Lookups::default();
    let mut done: Vec<Done> = Vec::new();
    let mut found: Vec<Found> = Vec::new();
    let mut buf = vec![0u8; INITIAL_BUFFER];
    let mut filled = 0usize;
    let mut out: Vec<u8> = Vec::with_capacity(1024);
    let peer_text = peer.to_string();
    // Asked at once (the client may send nothing for a while) and again, at the next message, after a reload.
    let mut identifying: Option<oneshot::Receiver<Option<String>>> =
        Some(ask_identity(shared, conn_id, label, asked, &peer_text, der.as_deref()));
    // `closing`: take no more messages (stop, UnRegisterSession, a stream that cannot be framed); `eof`: the
    // client sent all it will. Either way what is in flight is answered first.
    let mut closing = false;
    let mut eof = false;
    let mut last_request = Instant::now();
    let idle = tokio::time::sleep_until(last_request + client.listener().idle_timeout);
    tokio::pin!(idle);
    loop {
        // Answers from the last wake first: a link that ended is gone before the next message looks for one.
        client.finish_all(&mut done, &mut out);
        client.check_link(&mut link).await;
        client.release_held(&mut link, &mut done);
        // The gateway's answers for held messages whose link is gone, before any new message is decided: a
        // Forward Open among them leaves the session now, not after a retry of it was recorded again.
        client.finish_all(&mut done, &mut out);
        if identifying.is_none() && !closing && filled > 0 {
            if shared.generation_number() != client.principal_generation {
                // What went on the old device's shared session is answered first: nothing sent under the new
                // generation (another session, maybe another device entry) overtakes it.
                if client.on_shared == 0 {
                    client.refresh();
                    identifying = Some(ask_identity(shared, conn_id, label, asked, &peer_text, der.as_deref()));
                }
            } else {
                let used =
                    client.handle_frames(&buf[..filled], &mut out, &mut link, &mut lookups, &mut done, &mut closing);
                if used > 0 {
                    buf.copy_within(used..filled, 0);
                    filled -= used;
                }
            }
        }
        if let Some(l) = link.as_mut() {
            l.flush(&mut done);
        }
        client.finish_all(&mut done, &mut out);
        client.check_link(&mut link).await;
        if !out.is_empty() {
            if stream.write_all(&out).await.is_err() || stream.flush().await.is_err() {
                break;
            }
            out.clear();
        }
        if client.outstanding == 0 && (closing || (eof && identifying.is_none())) {
            break;
        }
        // Waiting for the old generation's shared answers before the new one (above): not reading meanwhile.
        let refreshing = shared.generation_number() != client.principal_generation && client.on_shared > 0;
        let can_read = !closing
            && !eof
            && !refreshing
            && identifying.is_none()
            && client.outstanding < client.listener().max_outstanding
            && client.on_shared < MAX_SHARED_PER_CLIENT;
        if can_read && filled == buf.len() {
            if buf.len() >= MAX_ENIP_BUFFER {
                // Unreachable with a bounded length field, kept as the bound it is.
                shared.metrics.framing_error(label, "overflow");
                closing = true;
                filled = 0;
                continue;
            }
            buf.resize((buf.len() * 2).min(MAX_ENIP_BUFFER), 0);
        }
        tokio::select! {
            biased;
            io = std::future::poll_fn(|cx| link.as_mut().expect("guarded").poll_io(cx)), if link.is_some() => {
                if let Some(l) = link.as_mut() {
                    l.on_io(io, &mut client.session, &client.t_o, &mut done);
                }
            }
            answer = from_shared.recv(), if client.on_shared > 0 => {
                // The client holds a sender itself: the channel never ends.
                done.extend(answer);
                while let Ok(answer) = from_shared.try_recv() {
                    done.push(answer);
                }
            }
            () = std::future::poll_fn(|cx| lookups.poll_done(cx, &mut found)), if !lookups.waiting.is_empty() => {
                for (frame, identity) in found.drain(..) {
                    client.outstanding = client.outstanding.saturating_sub(1);
                    frames::push_list_identity_reply(&mut out, &frame, identity.as_deref(), client.local);
                }
            }
            answer = async { identifying.as_mut().expect("guarded").await }, if identifying.is_some() => {
                identifying = None;
                client.identified(answer.ok().flatten());
            }
            read = read_some(&mut stream, &mut buf[filled..]), if can_read => match read {
                Ok(0) => eof = true,
                Ok(n) => {
                    filled += n;
                    last_request = Instant::now();
                    client.now = last_request;
                }
                Err(_) => break,
            },
            _ = &mut stop, if !closing => closing = true,
            () = &mut idle, if !closing => {
                let deadline = last_request + client.listener().idle_timeout;
                if client.outstanding == 0 && Instant::now() >= deadline {
                    shared.metrics.framing_error(label, "idle");
                    break;
                }
                // Messages came since the timer was set (or some are in flight): look again later.
                let next = if client.outstanding == 0 { deadline } else { Instant::now() + client.listener().idle_timeout };
                idle.as_mut().reset(next);
            }
            // Nothing left to wait for (cannot happen while anything is outstanding): end rather than hang.
            else => break,
        }
    }
    if let Some(l) = link.take() {
        l.close().await;
    }
    let _ = tokio::time::timeout(SHUTDOWN_TIMEOUT, stream.shutdown()).await;
}

/// What EtherNet/IP ties to one client connection, and the connection's view of the generation in force.
struct Client {
    shared: Arc<Shared>,
    index: usize,
    label: Arc<str>,
    conn_id: u64,
    local: Option<SocketAddr>,
    generation: Arc<Generation>,
    principal_generation: u64,
    principal: Principal,
    /// The listener's device under this generation.
    device: Option<Arc<EnipDevice>>,
    device_engine: u32,
    device_label: Arc<str>,
    /// When the bytes being framed were read: the messages' arrival, deadline and latency start.
    now: Instant,
    /// The handle zonegate gave the client.
    registered: Option<u32>,
    /// The client's connection table, as the engine decides and the link's replies keep it.
    session: EnipSession,
    /// O->T connection id -> T->O, from the Forward Open replies seen.
    t_o: HashMap<u32, u32>,
    /// Messages forwarded and ListIdentity look-ups not answered yet.
    outstanding: usize,
    /// Where the device's shared session answers this client's messages (serve's receiver), and how many
    /// of them it has not answered yet.
    shared_tx: mpsc::UnboundedSender<Done>,
    on_shared: usize,
    /// Messages for the client's link waiting for `on_shared` to reach 0.
    held: VecDeque<Pending>,
    cells: Vec<(CellKey, RequestCell)>,
    gateway_latency: Arc<LatencyCell>,
}

impl Client {
    fn new(
        shared: Arc<Shared>,
        index: usize,
        label: Arc<str>,
        conn_id: u64,
        local: Option<SocketAddr>,
        shared_tx: mpsc::UnboundedSender<Done>,
    ) -> Client {
        let generation = shared.current();
        let gateway_latency = shared.metrics.gateway_latency_cell(&label);
        let mut client = Client {
            shared,
            index,
            label,
            conn_id,
            local,
            principal_generation: generation.number,
            principal: Principal::unknown(&generation),
            device: None,
            device_engine: NO_DEVICE,
            device_label: generation.unknown.clone(),
            generation,
            now: Instant::now(),
            registered: None,
            session: EnipSession::new(),
            t_o: HashMap::new(),
            outstanding: 0,
            shared_tx,
            on_shared: 0,
            held: VecDeque::new(),
            cells: Vec::new(),
            gateway_latency,
        };
        client.find_device();
        client
    }

    fn listener(&self) -> &crate::ListenerGen {
        &self.generation.listeners[self.index]
    }

    fn find_device(&mut self) {
        let generation = &self.generation;
        let found = generation.listeners[self.index].enip_device.and_then(|i| {
            let device = generation.enip_devices.get(i)?;
            // The config's index: a device kept across a reload may hold the old engine's.
            Some((device.clone(), generation.config.enip_devices[i].engine_index))
        });
        (self.device, self.device_engine, self.device_label) = match found {
            Some((device, engine)) => {
                let label = device.label.clone();
                (Some(device), engine, label)
            }
            None => (None, NO_DEVICE, generation.unknown.clone()),
        };
    }

    fn refresh(&mut self) {
        self.generation = self.shared.current();
        self.principal_generation = self.generation.number;
        self.find_device();
    }

    fn identified(&mut self, name: Option<String>) {
        self.cells.clear();
        self.principal = Principal::resolve(&self.generation, name);
    }

    /// Decides and answers or forwards every complete message at the start of `buf`, as long as the client
    /// may have more in flight; returns the bytes consumed.
    fn handle_frames(
        &mut self,
        buf: &[u8],
        out: &mut Vec<u8>,
        link: &mut Option<Link>,
        lookups: &mut Lookups,
        done: &mut Vec<Done>,
        closing: &mut bool,
    ) -> usize {
        let now_ns = monotonic_ns();
        let mut pos = 0;
        while !*closing && self.outstanding < self.listener().max_outstanding && self.on_shared < MAX_SHARED_PER_CLIENT
        {
            match split(&buf[pos..]) {
                Split::Complete { used } => {
                    let frame = &buf[pos..pos + used];
                    pos += used;
                    self.handle(frame, now_ns, out, link, lookups, done, closing);
                }
                Split::Incomplete { .. } => break,
                Split::Invalid(_) => {
                    // No way to resynchronise: answer what is in flight, then close.
                    self.shared.metrics.framing_error(&self.label, "length");
                    self.shared.events.log("warning", format!("{}: invalid EtherNet/IP stream (length)", self.label));
                    *closing = true;
                    return buf.len();
                }
            }
        }
        if *closing {
            // What follows an UnRegisterSession is never read.
            return buf.len();
        }
        pos
    }

    #[allow(clippy::too_many_arguments)]
    fn handle(
        &mut self,
        frame: &[u8],
        now_ns: u64,
        out: &mut Vec<u8>,
        link: &mut Option<Link>,
        lookups: &mut Lookups,
        done: &mut Vec<Done>,
        closing: &mut bool,
    ) {
        let header = frames::header(frame);
        let command = header.command;
        let session_bound = relayed(command) || command == frames::UNREGISTER_SESSION;
        if session_bound && self.registered != Some(header.session) {
            self.shared.metrics.framing_error(&self.label, "invalid_session");
            self.shared.events.log(
                "info",
                format!(
                    "{}: command 0x{command:04x} on session {:#x}, not the one the client was given",
                    self.label, header.session
                ),
            );
            frames::push_encap_error(out, frame, frames::STATUS_INVALID_SESSION);
            return;
        }
        let generation = self.generation.clone();
        let decision =
            generation.engine.decide_enip(self.principal.index, self.device_engine, &mut self.session, frame, now_ns);
        let items = if relayed(command) { frames::items(frame) } else { None };
        let cip = items.as_ref().and_then(|i| i.cip());
        let summary = if relayed(command) {
            Summary::of(cip, decision.denied_leaf)
        } else {
            let function = frames::command_name(command).unwrap_or("other");
            Summary { function, writes: false, opens: false, connects: false }
        };
        self.count(summary.function, decision.verdict as u8, decision.reason.name());
        // The outer service a refusal or the gateway's answer replies to.
        let service =
            if decision.service != 0 { decision.service } else { cip.and_then(|c| c.first().copied()).unwrap_or(0) };
        let t_o = items.and_then(|i| i.connection_id()).and_then(|id| self.t_o.get(&id).copied());
        if decision.verdict == Verdict::Deny {
            self.audit(&generation, frame, &decision);
            if command == frames::REGISTER_SESSION && decision.reason == CipReason::UnknownPrincipal {
                // The session is zonegate's own (nothing reaches the device); every request on it is then
                // answered 0x0F, which tells the client why.
                self.register(frame, out);
            } else if command == frames::NOP {
                // NOP is never answered, refused or not.
            } else if let (Some(status), true) = (decision.general_status, relayed(command)) {
                frames::push_cip_error(out, frame, service, status, &[], t_o);
            } else {
                frames::push_encap_error(out, frame, decision.encap_status.unwrap_or(frames::STATUS_INVALID_COMMAND));
            }
            return;
        }
        if decision.verdict == Verdict::WouldDeny || summary.writes {
            self.audit(&generation, frame, &decision);
        }
        match command {
            frames::SEND_RR_DATA | frames::SEND_UNIT_DATA => {
                let shareable = command == frames::SEND_RR_DATA && !summary.connects;
                self.forward(frame, service, t_o, summary.opens, shareable, out, link, done)
            }
            frames::REGISTER_SESSION => self.register(frame, out),
            // No reply; the link unregisters zonegate's session with the device once in-flight is answered.
            frames::UNREGISTER_SESSION => *closing = true,
            frames::LIST_IDENTITY => match &self.device {
                None => frames::push_list_identity_reply(out, frame, None, None),
                Some(device) => {
                    let device = device.clone();
                    self.outstanding += 1;
                    lookups.waiting.push((frame.to_vec(), Box::pin(async move { device.identity().await })));
                }
            },
            frames::LIST_SERVICES => frames::push_list_services_reply(out, frame),
            frames::LIST_INTERFACES => frames::push_list_interfaces_reply(out, frame),
            frames::NOP => {}
            // The engine allows nothing else; should it, zonegate still does not relay it.
            _ => frames::push_encap_error(out, frame, frames::STATUS_INVALID_COMMAND),
        }
    }

    fn register(&mut self, frame: &[u8], out: &mut Vec<u8>) {
        if self.registered.is_some() {
            frames::push_encap_error(out, frame, frames::STATUS_INVALID_COMMAND);
        } else if register_version(frame) != frames::PROTOCOL_VERSION {
            frames::push_encap_error(out, frame, frames::STATUS_UNSUPPORTED_PROTOCOL);
        } else {
            let handle = session_handle(self.conn_id);
            self.registered = Some(handle);
            frames::push_register_reply(out, frame, handle);
        }
    }

    /// Forwards an allowed message: on the device's shared session when it is `shareable` (unconnected, no
    /// connection opened or closed) and the client holds no link of its own, else on the client's link. A
    /// message for the link waits while the client's earlier messages are on the shared session, so that the
    /// device sees them in the order the client sent them.
    #[allow(clippy::too_many_arguments)]
    fn forward(
        &mut self,
        frame: &[u8],
        service: u8,
        t_o: Option<u32>,
        opens: bool,
        shareable: bool,
        out: &mut Vec<u8>,
        link: &mut Option<Link>,
        done: &mut Vec<Done>,
    ) {
        let deadline = self.now + self.listener().request_timeout;
        let shares = self.device.as_ref().is_some_and(|d| d.shares());
        if shareable && shares && link.is_none() && self.held.is_empty() && self.session.connections() == 0 {
            let device = self.device.clone().expect("shares: a device");
            let mut pending = Pending::new(frame.to_vec(), service, t_o, self.now, deadline, opens);
            pending.reply_to = Some(self.shared_tx.clone());
            pending.shared = true;
            match device.share(pending) {
                Ok(()) => {
                    self.outstanding += 1;
                    self.on_shared += 1;
                }
                Err(Refusal::Full) => {
                    frames::push_cip_error(out, frame, service, frames::CIP_RESOURCE_UNAVAILABLE, &[], t_o)
                }
                Err(Refusal::Unavailable) => frames::push_unreachable(out, frame, service, t_o),
            }
            return;
        }
        if link.is_none() {
            if let Some(device) = &self.device {
                match device.open_link() {
                    Ok(slot) => *link = Some(Link::open(slot)),
                    Err(Refusal::Unavailable) => {}
                    Err(Refusal::Full) => {
                        self.unsent(frame, opens);
                        frames::push_cip_error(out, frame, service, frames::CIP_RESOURCE_UNAVAILABLE, &[], t_o);
                        return;
                    }
                }
            }
        }
        let Some(link) = link.as_mut() else {
            self.unsent(frame, opens);
            frames::push_unreachable(out, frame, service, t_o);
            return;
        };
        self.outstanding += 1;
        let pending = Pending::new(frame.to_vec(), service, t_o, self.now, deadline, opens);
        if self.on_shared > 0 || !self.held.is_empty() {
            self.held.push_back(pending);
        } else {
            link.submit(pending, done);
        }
    }

    /// Once nothing of the client's is on the shared session, what waited for its link goes there (or gets
    /// the gateway's answer if the link is gone).
    fn release_held(&mut self, link: &mut Option<Link>, done: &mut Vec<Done>) {
        if self.on_shared > 0 || self.held.is_empty() {
            return;
        }
        for pending in self.held.drain(..) {
            match link.as_mut() {
                Some(link) => link.submit(pending, done),
                None => done.push(Done { pending, reply: None }),
            }
        }
    }

    /// Answers that came back (the device's replies and the gateway's answers), in the order they came.
    fn finish_all(&mut self, done: &mut Vec<Done>, out: &mut Vec<u8>) {
        for Done { mut pending, reply } in done.drain(..) {
            self.outstanding = self.outstanding.saturating_sub(1);
            if pending.shared {
                self.on_shared = self.on_shared.saturating_sub(1);
            }
            let total = pending.arrived.elapsed();
            self.gateway_latency.observe(total.saturating_sub(pending.upstream).as_secs_f64());
            match reply {
                Some(reply) => {
                    if pending.opens && frames::header(&reply).command == frames::SEND_RR_DATA {
                        let ids = frames::items(&reply).and_then(|i| i.cip()).and_then(frames::forward_open_ids);
                        if let Some((o_t, t_o)) = ids {
                            self.t_o.insert(o_t, t_o);
                        }
                    }
                    out.extend_from_slice(&reply);
                }
                None => {
                    let opens = pending.opens;
                    self.unsent(pending.client_frame(), opens);
                    pending.push_fault(out);
                }
            }
        }
    }

    /// The gateway answers `frame` instead of the device: a Forward Open in it (`opens`) made no connection
    /// the client knows of, so the session frees its triad (the client's retry is not a duplicate) and no
    /// longer counts it (its unconnected messages may go on the shared session again).
    fn unsent(&mut self, frame: &[u8], opens: bool) {
        if opens {
            self.session.unanswered(frame);
        }
    }

    /// Drops an ended link (the device dropped the client's connections with it: the session starts again),
    /// and closes one whose device a reload retired once nothing is in flight on it.
    async fn check_link(&mut self, link: &mut Option<Link>) {
        let Some(l) = link.as_ref() else { return };
        if l.is_closed() {
            *link = None;
        } else if !l.busy() && l.device().is_retired() {
            if let Some(l) = link.take() {
                l.close().await;
            }
        } else {
            return;
        }
        if !self.t_o.is_empty() || self.session.connections() > 0 {
            self.session = EnipSession::new();
            self.t_o.clear();
        }
    }

    fn count(&mut self, function: &'static str, verdict: u8, reason: &'static str) {
        let wanted = (function, verdict, reason);
        if let Some((_, cell)) = self.cells.iter().find(|(key, _)| *key == wanted) {
            cell.fetch_add(1, Ordering::Relaxed);
            return;
        }
        if self.cells.len() >= MAX_CELLS {
            self.cells.clear();
        }
        let key =
            (self.label.clone(), self.principal.label.clone(), self.device_label.clone(), function, verdict, reason);
        let cell = self.shared.metrics.named_request_cell(key);
        cell.fetch_add(1, Ordering::Relaxed);
        self.cells.push((wanted, cell));
    }

    fn audit(&self, generation: &Generation, frame: &[u8], decision: &CipDecision) {
        let deny = decision.verdict == Verdict::Deny;
        self.shared.events.push(Event::EnipAudit(Box::new(EnipAudit {
            conn_id: self.conn_id,
            listener: self.label.clone(),
            device: self.device.as_ref().map(|d| d.label.clone()),
            frame: frame.to_vec(),
            verdict: decision.verdict.name(),
            reason: decision.reason.name(),
            rule: decision.rule.map(|r| generation.engine.rule_id(r).to_owned()).filter(|r| !r.is_empty()),
            service: decision.service,
            target: decision.target.clone(),
            route: decision.route.clone(),
            leaves: decision.leaves,
            denied_leaf: decision.denied_leaf,
            malformed: decision.malformed,
            general_status: if deny { decision.general_status } else { None },
            encap_status: if deny { decision.encap_status } else { None },
            time_ns: realtime_ns(),
        })));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A Read Tag of `Speed`, one element.
    const READ_TAG: [u8; 10] = [
        0x4C, // service: Read Tag
        0x04, // path size, words
        0x91, 0x05, b'S', b'p', b'e', b'e', b'd', 0x00, // symbolic segment, padded
    ];

    fn with_elements(request: &[u8]) -> Vec<u8> {
        let mut r = request.to_vec();
        r.extend_from_slice(&[0x01, 0x00]); // elements
        r
    }

    #[test]
    fn a_plain_request_is_its_own_leaf() {
        let s = Summary::of(Some(&with_elements(&READ_TAG)), None);
        assert_eq!(s, Summary { function: "read_tag", writes: false, opens: false, connects: false });
    }

    #[test]
    fn the_denied_leaf_of_a_container_names_the_function() {
        // Multiple Service Packet to the message router: a Read Tag, then a Write Tag.
        let read = with_elements(&READ_TAG);
        let mut write = READ_TAG.to_vec();
        write[0] = 0x4D; // service: Write Tag
        write.extend_from_slice(&[0xC3, 0x00, 0x01, 0x00, 0x07, 0x00]); // INT, 1 element, value 7
        let mut msp = vec![0x0A, 0x02, 0x20, 0x02, 0x24, 0x01]; // service, path: class 2 instance 1
        msp.extend_from_slice(&2u16.to_le_bytes()); // count
        msp.extend_from_slice(&6u16.to_le_bytes()); // offset of the first request
        msp.extend_from_slice(&(6 + read.len() as u16).to_le_bytes()); // offset of the second
        msp.extend_from_slice(&read);
        msp.extend_from_slice(&write);
        let first = Summary::of(Some(&msp), None);
        assert_eq!(first, Summary { function: "read_tag", writes: true, opens: false, connects: false });
        assert_eq!(Summary::of(Some(&msp), Some(1)).function, "write_tag");
        // Out of range: the first leaf, as the Python conduit reads it.
        assert_eq!(Summary::of(Some(&msp), Some(9)).function, "read_tag");
    }

    #[test]
    fn an_unreadable_message_is_other_and_may_open() {
        assert_eq!(Summary::of(None, None), Summary { function: "other", writes: false, opens: true, connects: true });
        assert_eq!(
            Summary::of(Some(&[0x4C]), None),
            Summary { function: "other", writes: false, opens: true, connects: true }
        );
    }

    #[test]
    fn register_version_reads_what_the_message_has() {
        let mut frame = vec![0u8; 24];
        assert_eq!(register_version(&frame), 0);
        frame.push(1);
        assert_eq!(register_version(&frame), 1);
        frame.extend_from_slice(&[0x01, 0x00, 0x00]);
        assert_eq!(register_version(&frame), 0x0101);
    }

    #[test]
    fn session_handles_are_never_zero() {
        assert!((0..64).all(|i| session_handle(i) != 0));
    }
}

/// The connection task against a fake device, through the relay's public face (blocking sockets, bounded
/// waits): the session handles on both sides, a forwarded read, a foreign handle, a dead device.
#[cfg(test)]
mod conduit_tests {
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};
    use std::os::fd::IntoRawFd;
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use zonegate_core::policy::Engine;

    use crate::config::{EnipDeviceConfig, ListenerConfig, ListenerKind, RelayConfig};
    use crate::events::Event;
    use crate::Relay;

    const BOUND: Duration = Duration::from_secs(10);
    /// The handle the fake device gives zonegate's link.
    const DEVICE_SESSION: u32 = 0xD00D;

    /// Operator may Read Tag `Speed` of `press-plc`; nothing else.
    fn engine() -> Arc<Engine> {
        let ir = r#"{"version": 1, "mode": "enforce",
            "principals": [{"name": "operator", "tls_roles": [], "subjects": [], "opcua_users": [], "sources": []}],
            "devices": [{"name": "press-plc", "zone": "cell-a", "host": "127.0.0.1", "port": 502, "units": null,
                         "enip": {"host": "127.0.0.1", "port": 44818}}],
            "rules": [{"id": "operator-press", "principals": [0], "devices": [0], "units": null, "allow": [],
                       "cip": [{"services": ["read_tag"],
                                "tags": [{"parts": [{"name": "speed", "elements": null}]}]}]}]}"#;
        Arc::new(Engine::from_json(ir).expect("valid IR"))
    }

    fn start(device_port: u16) -> (Relay, std::net::SocketAddr) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let config = RelayConfig {
            listeners: vec![ListenerConfig {
                name: "cell-enip".to_owned(),
                kind: ListenerKind::Enip,
                tls: None,
                devices: vec![0],
                max_outstanding: 8,
                idle_timeout: Duration::from_secs(30),
                request_timeout: Duration::from_secs(5),
            }],
            devices: Vec::new(),
            enip_devices: vec![EnipDeviceConfig {
                name: "press-plc".to_owned(),
                host: "127.0.0.1".to_owned(),
                port: device_port,
                timeout: Duration::from_millis(500),
                max_connections: 2,
                engine_index: 0,
            }],
            latency_bounds: vec![0.001, 0.01, 0.1, 1.0],
        };
        let relay = Relay::start(engine(), config, &[listener.into_raw_fd()], 1).expect("relay starts");
        (relay, addr)
    }

    /// Answers the first `identify` with `operator`.
    fn identify(relay: &Relay) {
        let until = Instant::now() + BOUND;
        loop {
            for event in relay.events() {
                if let Event::Identify { conn_id, .. } = event {
                    relay.identify(conn_id, Some("operator".to_owned()));
                    return;
                }
            }
            assert!(Instant::now() < until, "no identify event");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn message(command: u16, session: u32, context: &[u8; 8], data: &[u8]) -> Vec<u8> {
        let mut m = Vec::new();
        m.extend_from_slice(&command.to_le_bytes()); // command
        m.extend_from_slice(&(data.len() as u16).to_le_bytes()); // length
        m.extend_from_slice(&session.to_le_bytes()); // session handle
        m.extend_from_slice(&0u32.to_le_bytes()); // status
        m.extend_from_slice(context); // sender context
        m.extend_from_slice(&0u32.to_le_bytes()); // options
        m.extend_from_slice(data);
        m
    }

    /// SendRRData carrying `cip` unconnected.
    fn send_rr_data(session: u32, context: &[u8; 8], cip: &[u8]) -> Vec<u8> {
        let mut data = vec![0, 0, 0, 0, 0, 0]; // interface handle, timeout
        data.extend_from_slice(&2u16.to_le_bytes()); // item count
        data.extend_from_slice(&[0, 0, 0, 0]); // null address item
        data.extend_from_slice(&0xB2u16.to_le_bytes()); // unconnected data item
        data.extend_from_slice(&(cip.len() as u16).to_le_bytes());
        data.extend_from_slice(cip);
        message(0x6F, session, context, &data)
    }

    fn read_tag(tag: &[u8; 5]) -> Vec<u8> {
        let mut r = vec![0x4C, 0x04, 0x91, 0x05]; // Read Tag, path 4 words, symbol of 5 bytes
        r.extend_from_slice(tag);
        r.extend_from_slice(&[0x00, 0x01, 0x00]); // pad, one element
        r
    }

    fn read_message(stream: &mut TcpStream) -> Vec<u8> {
        stream.set_read_timeout(Some(BOUND)).unwrap();
        let mut m = vec![0u8; 24];
        stream.read_exact(&mut m).expect("a message in time");
        let len = u16::from_le_bytes([m[2], m[3]]) as usize;
        m.resize(24 + len, 0);
        stream.read_exact(&mut m[24..]).expect("the message's data in time");
        m
    }

    /// The CIP reply a SendRRData reply carries (after the 16 bytes of CPF up to the data item's body).
    fn cip_of(reply: &[u8]) -> &[u8] {
        &reply[24 + 16..]
    }

    fn register(stream: &mut TcpStream) -> u32 {
        stream.write_all(&message(0x65, 0, b"register", &[1, 0, 0, 0])).unwrap();
        let reply = read_message(stream);
        assert_eq!(u32::from_le_bytes(reply[8..12].try_into().unwrap()), 0, "status");
        let handle = u32::from_le_bytes(reply[4..8].try_into().unwrap());
        assert_ne!(handle, 0);
        handle
    }

    /// A device that registers sessions and answers each Read Tag with INT 7; it reports the command and session
    /// handle of every message but RegisterSession.
    fn fake_device() -> (u16, std::sync::mpsc::Receiver<(u16, u32)>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let Ok((mut stream, _)) = listener.accept() else { return };
            loop {
                let mut head = [0u8; 24];
                if stream.read_exact(&mut head).is_err() {
                    return;
                }
                let mut body = vec![0u8; u16::from_le_bytes([head[2], head[3]]) as usize];
                if stream.read_exact(&mut body).is_err() {
                    return;
                }
                let context: [u8; 8] = head[12..20].try_into().unwrap();
                let session = u32::from_le_bytes(head[4..8].try_into().unwrap());
                let command = u16::from_le_bytes([head[0], head[1]]);
                if command != 0x65 {
                    let _ = tx.send((command, session));
                }
                match command {
                    0x65 => {
                        let _ = stream.write_all(&message(0x65, DEVICE_SESSION, &context, &body));
                    }
                    0x6F => {
                        let cip = [0xCC, 0x00, 0x00, 0x00, 0xC3, 0x00, 0x07, 0x00]; // reply, status 0, INT 7
                        let _ = stream.write_all(&send_rr_data(session, &context, &cip));
                    }
                    _ => {}
                }
            }
        });
        (port, rx)
    }

    #[test]
    fn a_read_goes_under_the_links_handle_and_comes_back_under_the_clients() {
        let (device_port, sessions) = fake_device();
        let (relay, addr) = start(device_port);
        let mut client = TcpStream::connect(addr).unwrap();
        identify(&relay);
        let handle = register(&mut client);

        client.write_all(&send_rr_data(handle, b"read-one", &read_tag(b"Speed"))).unwrap();
        let reply = read_message(&mut client);
        assert_eq!(u32::from_le_bytes(reply[4..8].try_into().unwrap()), handle);
        assert_eq!(&reply[12..20], b"read-one");
        assert_eq!(cip_of(&reply), [0xCC, 0x00, 0x00, 0x00, 0xC3, 0x00, 0x07, 0x00]);
        assert_eq!(sessions.recv_timeout(BOUND).unwrap(), (0x6F, DEVICE_SESSION));

        // Another handle: refused 0x0064, never forwarded.
        client.write_all(&send_rr_data(handle ^ 1, b"foreign!", &read_tag(b"Speed"))).unwrap();
        let refused = read_message(&mut client);
        assert_eq!(u32::from_le_bytes(refused[8..12].try_into().unwrap()), 0x0064);

        // A refused tag: 0x0F to the Read Tag, never forwarded.
        client.write_all(&send_rr_data(handle, b"secret!!", &read_tag(b"Other"))).unwrap();
        let denied = read_message(&mut client);
        assert_eq!(&cip_of(&denied)[..3], [0xCC, 0x00, 0x0F]);
        assert!(sessions.try_recv().is_err());

        let snapshot = relay.snapshot();
        let count = |function: &str, reason: &str| {
            snapshot.named_requests.iter().find(|(k, _)| k.3 == function && k.5 == reason).map_or(0, |(_, n)| *n)
        };
        assert_eq!(count("read_tag", "allowed"), 1);
        assert_eq!(count("register_session", "allowed"), 1);
        assert_eq!(count("read_tag", "target_not_allowed"), 1);
        assert!(snapshot.framing_errors.iter().any(|((_, r), n)| *r == "invalid_session" && *n == 1));
        relay.stop(Duration::from_secs(2));
    }

    #[test]
    fn unregister_session_closes_the_client_and_the_shared_session_ends_with_the_relay() {
        let (device_port, seen) = fake_device();
        let (relay, addr) = start(device_port);
        let mut client = TcpStream::connect(addr).unwrap();
        identify(&relay);
        let handle = register(&mut client);
        client.write_all(&send_rr_data(handle, b"read-one", &read_tag(b"Speed"))).unwrap();
        read_message(&mut client);
        assert_eq!(seen.recv_timeout(BOUND).unwrap(), (0x6F, DEVICE_SESSION));
        client.write_all(&message(0x66, handle, b"goodbye!", &[])).unwrap();
        // No reply: the connection ends.
        let mut rest = Vec::new();
        client.set_read_timeout(Some(BOUND)).unwrap();
        assert_eq!(client.read_to_end(&mut rest).unwrap(), 0);
        // The read went on the device's shared session, which outlives the client: it unregisters as the
        // relay stops.
        relay.stop(Duration::from_secs(2));
        assert_eq!(seen.recv_timeout(BOUND).unwrap(), (0x66, DEVICE_SESSION));
    }

    #[test]
    fn a_length_beyond_what_enip_frames_closes_the_connection() {
        let (device_port, _seen) = fake_device();
        let (relay, addr) = start(device_port);
        let mut client = TcpStream::connect(addr).unwrap();
        identify(&relay);
        let mut header = message(0x6F, 0, b"too-long", &[]);
        header[2..4].copy_from_slice(&0xFFFFu16.to_le_bytes()); // length past 65511
        client.write_all(&header).unwrap();
        let mut rest = Vec::new();
        client.set_read_timeout(Some(BOUND)).unwrap();
        assert_eq!(client.read_to_end(&mut rest).unwrap(), 0);
        let framing = relay.snapshot().framing_errors;
        assert!(framing.iter().any(|((_, r), n)| *r == "length" && *n == 1));
        relay.stop(Duration::from_secs(2));
    }

    #[test]
    fn a_dead_device_answers_connection_failure_0204() {
        // A port nothing listens on.
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let (relay, addr) = start(port);
        let mut client = TcpStream::connect(addr).unwrap();
        identify(&relay);
        let handle = register(&mut client);
        for context in [b"first!!!", b"backoff!"] {
            client.write_all(&send_rr_data(handle, context, &read_tag(b"Speed"))).unwrap();
            let reply = read_message(&mut client);
            assert_eq!(&reply[12..20], context);
            // Reply to Read Tag, general status 0x01, one extended status word 0x0204.
            assert_eq!(&cip_of(&reply)[..6], [0xCC, 0x00, 0x01, 0x01, 0x04, 0x02]);
        }
        let faults = relay.snapshot().upstream_faults;
        let fault = |kind: &str| faults.iter().find(|((_, k), _)| *k == kind).map_or(0, |(_, n)| *n);
        assert_eq!((fault("connect_failed"), fault("unavailable")), (1, 1));
        relay.stop(Duration::from_secs(2));
    }
}
