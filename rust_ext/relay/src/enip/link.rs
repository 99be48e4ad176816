//! A client connection's link to its device: zonegate's own session there, owned and polled by the client's
//! task (docs/relay.md, "EtherNet/IP"; docs/enip-conduit.md, "Sessions", "Device faults").
//!
//! ```text
//!  connect (device timeout) -> RegisterSession (reply within the device timeout) -> ready
//!  submit: waiting (until ready) -> sent with the link's handle -> in flight -> reply | gateway's answer
//! ```
//!
//! The link is no task of its own: `poll_io` is one branch of the client task's `select!` (connect, device
//! reads, the earliest deadline), and `on_io` turns what happened into `Done` answers for the client. Every
//! submitted message gets exactly one: the device's reply, with the client's handle put back, or the
//! gateway's (0x01 / 0x0204).

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::time::{Instant, Sleep};
use zonegate_core::enip::{split, Split};
use zonegate_core::policy::EnipSession;

use super::device::{EnipDevice, LinkSlot};
use super::frames;
use crate::config::MAX_ENIP_BUFFER;
use crate::listener::{INITIAL_BUFFER, SHUTDOWN_TIMEOUT};

/// One forwarded message, from the client's write to the device's reply or the gateway's answer.
pub(crate) struct Pending {
    /// The message: under the client's handle and sender context until sent, under the link's after.
    frame: Vec<u8>,
    client_session: u32,
    client_context: [u8; 8],
    /// Where the answer goes when the message travels on a device's shared session (another task's link).
    pub reply_to: Option<mpsc::UnboundedSender<Done>>,
    /// Sent to the shared session (its answer comes from there).
    pub shared: bool,
    /// The outer CIP service: the gateway's answer is a reply to it.
    pub service: u8,
    /// The connection's T->O id for a SendUnitData (the gateway answers on it).
    pub t_o: Option<u32>,
    pub arrived: Instant,
    deadline: Instant,
    sent: Option<Instant>,
    /// Where its bytes end in everything the link ever put on its wire: written whole once the link's count of
    /// bytes written reaches it.
    wire_end: u64,
    /// Time at the device, once it replied.
    pub upstream: Duration,
    /// Whether the message may hold a Forward Open (unknown: assume so): only then is the reply read for ids.
    pub opens: bool,
}

impl Pending {
    /// `frame`: a whole message (`split` cut it). `deadline`: the listener's (arrival + `request_timeout`);
    /// the link brings it nearer with its own.
    pub fn new(
        frame: Vec<u8>,
        service: u8,
        t_o: Option<u32>,
        arrived: Instant,
        deadline: Instant,
        opens: bool,
    ) -> Self {
        let header = frames::header(&frame);
        Pending {
            client_session: header.session,
            client_context: header.sender_context,
            frame,
            reply_to: None,
            shared: false,
            service,
            t_o,
            arrived,
            deadline,
            sent: None,
            wire_end: 0,
            upstream: Duration::ZERO,
            opens,
        }
    }

    /// The message as the client sent it (its own handle and sender context).
    pub fn client_frame(&mut self) -> &[u8] {
        self.restore_client();
        &self.frame
    }

    fn restore_client(&mut self) {
        frames::set_session(&mut self.frame, self.client_session);
        frames::set_context(&mut self.frame, &self.client_context);
    }

    /// The device's reply under the client's handle and sender context.
    fn reply_to_client(&self, reply: &mut [u8]) {
        frames::set_session(reply, self.client_session);
        frames::set_context(reply, &self.client_context);
    }

    /// Appends the gateway's answer (0x01 / 0x0204 to the outer service).
    pub fn push_fault(&mut self, out: &mut Vec<u8>) {
        let (service, t_o) = (self.service, self.t_o);
        frames::push_unreachable(out, self.client_frame(), service, t_o);
    }
}

/// A shared session's message that no answer went out for (its task ended abnormally) still gets one: the
/// gateway's, so that its client is never left waiting.
impl Drop for Pending {
    fn drop(&mut self) {
        let Some(tx) = self.reply_to.take() else { return };
        let pending = Pending {
            frame: std::mem::take(&mut self.frame),
            client_session: self.client_session,
            client_context: self.client_context,
            reply_to: None,
            shared: self.shared,
            service: self.service,
            t_o: self.t_o,
            arrived: self.arrived,
            deadline: self.deadline,
            sent: self.sent,
            wire_end: self.wire_end,
            upstream: self.upstream,
            opens: self.opens,
        };
        let _ = tx.send(Done { pending, reply: None });
    }
}

/// A message's answer: `reply` is the device's (under the client's handle), None for the gateway's.
pub(crate) struct Done {
    pub pending: Pending,
    pub reply: Option<Vec<u8>>,
}

impl Done {
    /// Hands the answer to the client task that is waiting for it, when that is another task's (shared.rs);
    /// else gives it back.
    pub fn route(mut self) -> Option<Done> {
        match self.pending.reply_to.take() {
            // A client that left drops its receiver: nothing to do then.
            Some(tx) => {
                let _ = tx.send(self);
                None
            }
            None => Some(self),
        }
    }
}

/// How a device's reply answers a request: as it is, or moved to the T->O id (`frames::on_t_o`).
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Accepted {
    AsIs,
    Fixed(Vec<u8>),
}

/// `EnipClient.accept_reply`: whether the device's `reply` answers `request` (as sent, the link's handle),
/// applying it to the client's session when it does. Two device habits are taken for the answers they are:
/// a routed Unconnected Send answered by the target's reply to what it carried, and a connected reply on the
/// O->T id the request used (`t_o`: O->T -> T->O).
pub(crate) fn accept_reply(
    session: &mut EnipSession,
    t_o: &HashMap<u32, u32>,
    request: &[u8],
    reply: &[u8],
) -> Option<Accepted> {
    if session.observe_reply(request, reply) {
        return Some(Accepted::AsIs);
    }
    if let Some(answered) = frames::as_answered(request, reply) {
        if session.observe_reply(&answered, reply) {
            return Some(Accepted::AsIs);
        }
    }
    let fixed = frames::on_t_o(request, reply, t_o)?;
    session.observe_reply(request, &fixed).then_some(Accepted::Fixed(fixed))
}

/// What is waiting for the session and what is in flight, with their deadlines (no I/O).
#[derive(Default)]
pub(crate) struct Queue {
    waiting: VecDeque<Pending>,
    inflight: Vec<Pending>,
    /// The last sender context the link gave a message.
    contexts: u64,
}

impl Queue {
    pub fn is_empty(&self) -> bool {
        self.waiting.is_empty() && self.inflight.is_empty()
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.waiting.len() + self.inflight.len()
    }

    /// The nearest message deadline.
    pub fn earliest(&self) -> Option<Instant> {
        self.inflight.iter().chain(&self.waiting).map(|p| p.deadline).min()
    }

    /// Takes every message whose deadline has come, those in flight first (in order), then those waiting.
    pub fn expire(&mut self, now: Instant, expired: &mut Vec<Pending>) {
        let mut i = 0;
        while i < self.inflight.len() {
            if self.inflight[i].deadline <= now {
                expired.push(self.inflight.remove(i));
            } else {
                i += 1;
            }
        }
        let mut kept = VecDeque::with_capacity(self.waiting.len());
        for p in self.waiting.drain(..) {
            if p.deadline <= now {
                expired.push(p);
            } else {
                kept.push_back(p);
            }
        }
        self.waiting = kept;
    }

    /// Everything, in flight first: the link is gone.
    pub fn take_all(&mut self, out: &mut Vec<Pending>) {
        out.append(&mut self.inflight);
        out.extend(self.waiting.drain(..));
    }

    /// Marks `p` sent at `now` under `session` and a sender context of the link's own, bringing its deadline
    /// to `now + timeout` at the latest; appends the bytes to `wire`, whose first byte is the link's `base`-th.
    ///
    /// The context is the link's, not the client's, so that no two messages in flight share one (clients of
    /// a shared session pick theirs alone; one client may reuse its own), and a device's late reply to a
    /// message the gateway already answered for matches nothing, rather than a later message sent under the
    /// same context. The reply gets the client's context back.
    pub fn send(
        &mut self,
        mut p: Pending,
        session: u32,
        now: Instant,
        timeout: Duration,
        wire: &mut Vec<u8>,
        base: u64,
    ) {
        frames::set_session(&mut p.frame, session);
        self.contexts = self.contexts.wrapping_add(1);
        frames::set_context(&mut p.frame, &self.contexts.to_le_bytes());
        p.sent = Some(now);
        p.deadline = p.deadline.min(now + timeout);
        wire.extend_from_slice(&p.frame);
        p.wire_end = base + wire.len() as u64;
        self.inflight.push(p);
    }

    /// The first message in flight that `reply` answers (in the order they were sent), taken out, with the
    /// reply to hand back.
    pub fn take_answered(
        &mut self,
        mut answers: impl FnMut(&[u8]) -> Option<Accepted>,
    ) -> Option<(Pending, Option<Vec<u8>>)> {
        for i in 0..self.inflight.len() {
            if let Some(accepted) = answers(&self.inflight[i].frame) {
                let fixed = match accepted {
                    Accepted::AsIs => None,
                    Accepted::Fixed(f) => Some(f),
                };
                return Some((self.inflight.remove(i), fixed));
            }
        }
        None
    }
}

/// The I/O the client task waits on.
pub(crate) enum Io {
    Connected(io::Result<TcpStream>),
    Read(io::Result<usize>),
    /// The device can take more of what is left to write (or the socket failed).
    Writable(io::Result<()>),
    /// The earliest deadline came.
    Deadline,
}

type Connecting = Pin<Box<dyn Future<Output = io::Result<TcpStream>> + Send>>;

enum Socket {
    Connecting(Connecting),
    Open(TcpStream),
    Closed,
}

pub(crate) struct Link {
    slot: LinkSlot,
    socket: Socket,
    /// The device's handle, once it answered RegisterSession (0 until then).
    session: u32,
    /// While connected but not registered: the RegisterSession reply is due by then.
    register_deadline: Option<Instant>,
    queue: Queue,
    buf: Vec<u8>,
    filled: usize,
    /// Bytes for the device, written together by `flush`; `written` of them went out. What the device does not
    /// take at once is written as it does (`poll_io`), replies read meanwhile.
    wire: Vec<u8>,
    written: usize,
    /// Bytes the link wrote before `wire`'s first.
    wire_base: u64,
    /// Since when the device has taken none of what is left to write: past its timeout the link is lost.
    stalled: Option<Instant>,
    timer: Option<Pin<Box<Sleep>>>,
    timer_at: Option<Instant>,
    closed: bool,
}

impl Link {
    /// Starts connecting (bounded by the device's timeout) in the slot the device gave.
    pub fn open(slot: LinkSlot) -> Link {
        let config = slot.device().config.clone();
        let connect: Connecting = Box::pin(async move {
            let connect = TcpStream::connect((config.host.as_str(), config.port));
            match tokio::time::timeout(config.timeout, connect).await {
                Ok(result) => result,
                Err(_) => Err(io::Error::new(io::ErrorKind::TimedOut, "connect timed out")),
            }
        });
        Link {
            slot,
            socket: Socket::Connecting(connect),
            session: 0,
            register_deadline: None,
            queue: Queue::default(),
            buf: Vec::new(),
            filled: 0,
            wire: Vec::new(),
            written: 0,
            wire_base: 0,
            stalled: None,
            timer: None,
            timer_at: None,
            closed: false,
        }
    }

    pub fn device(&self) -> &std::sync::Arc<EnipDevice> {
        self.slot.device()
    }

    fn timeout(&self) -> Duration {
        self.device().config.timeout
    }

    fn fault(&self, kind: &'static str) {
        let device = self.device();
        device.metrics.upstream_fault(&device.label, kind);
    }

    /// Ended (connect failed, lost, aborted): the owner drops it and starts its session again.
    pub fn is_closed(&self) -> bool {
        self.closed
    }

    /// Messages waiting or in flight.
    pub fn busy(&self) -> bool {
        !self.queue.is_empty()
    }

    /// Forwards a message. Its answer comes later through `on_io`, or now in `done` if the link ended.
    pub fn submit(&mut self, mut pending: Pending, done: &mut Vec<Done>) {
        if self.closed {
            done.push(Done { pending, reply: None });
            return;
        }
        pending.deadline = pending.deadline.min(pending.arrived + self.timeout());
        if self.session != 0 {
            let timeout = self.timeout();
            self.queue.send(pending, self.session, Instant::now(), timeout, &mut self.wire, self.wire_base);
        } else {
            self.queue.waiting.push_back(pending);
        }
    }

    /// Waits for the connect, the device's bytes or the earliest deadline.
    pub fn poll_io(&mut self, cx: &mut Context<'_>) -> Poll<Io> {
        match &mut self.socket {
            Socket::Connecting(connect) => {
                if let Poll::Ready(result) = connect.as_mut().poll(cx) {
                    return Poll::Ready(Io::Connected(result));
                }
            }
            Socket::Open(stream) => {
                if self.written < self.wire.len() {
                    if let Poll::Ready(result) = stream.poll_write_ready(cx) {
                        return Poll::Ready(Io::Writable(result));
                    }
                }
                if self.filled == self.buf.len() {
                    if self.buf.len() >= MAX_ENIP_BUFFER {
                        return Poll::Ready(Io::Read(Err(io::Error::other("reply buffer full"))));
                    }
                    let size = (self.buf.len() * 2).clamp(INITIAL_BUFFER, MAX_ENIP_BUFFER);
                    self.buf.resize(size, 0);
                }
                let mut read = ReadBuf::new(&mut self.buf[self.filled..]);
                if let Poll::Ready(result) = Pin::new(stream).poll_read(cx, &mut read) {
                    let n = read.filled().len();
                    return Poll::Ready(Io::Read(result.map(|()| n)));
                }
            }
            Socket::Closed => {}
        }
        let stalled = self.stalled.map(|since| since + self.timeout());
        let earliest = [self.register_deadline, self.queue.earliest(), stalled].into_iter().flatten().min();
        let Some(at) = earliest else { return Poll::Pending };
        let timer = self.timer.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(at)));
        if self.timer_at != Some(at) {
            timer.as_mut().reset(at);
            self.timer_at = Some(at);
        }
        match timer.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Io::Deadline),
            Poll::Pending => Poll::Pending,
        }
    }

    /// What `poll_io` returned, applied: answers for the client go to `done`. `session` and `t_o` are the
    /// client's (replies are matched, and Forward Open replies applied, by its `EnipSession`).
    pub fn on_io(&mut self, io: Io, session: &mut EnipSession, t_o: &HashMap<u32, u32>, done: &mut Vec<Done>) {
        match io {
            Io::Connected(Ok(stream)) => {
                // Messages are written once per batch already: Nagle would only hold them back.
                let _ = stream.set_nodelay(true);
                self.socket = Socket::Open(stream);
                self.register_deadline = Some(Instant::now() + self.timeout());
                self.wire.extend_from_slice(&frames::register_request());
            }
            Io::Connected(Err(e)) => {
                let device = self.device();
                device.connect_failed(&e.to_string());
                self.end(false, done);
            }
            Io::Read(Ok(0)) | Io::Read(Err(_)) => self.end(true, done),
            Io::Read(Ok(n)) => {
                self.filled += n;
                self.replies(session, t_o, done);
            }
            Io::Writable(Ok(())) => self.flush(done),
            Io::Writable(Err(_)) => self.end(true, done),
            Io::Deadline => self.sweep(done),
        }
    }

    /// Every complete message the device sent.
    fn replies(&mut self, session: &mut EnipSession, t_o: &HashMap<u32, u32>, done: &mut Vec<Done>) {
        let mut pos = 0;
        while !self.closed && pos < self.filled {
            match split(&self.buf[pos..self.filled]) {
                Split::Complete { used } => {
                    let (start, end) = (pos, pos + used);
                    pos = end;
                    // Moved out for the call (a reply may end the link, which clears the buffer).
                    let buf = std::mem::take(&mut self.buf);
                    self.reply(&buf[start..end], session, t_o, done);
                    if !self.closed {
                        self.buf = buf;
                    }
                }
                Split::Incomplete { .. } => break,
                Split::Invalid(_) => {
                    self.abort("bad_reply", done);
                    return;
                }
            }
        }
        if self.closed {
            return;
        }
        self.buf.copy_within(pos..self.filled, 0);
        self.filled -= pos;
    }

    fn reply(&mut self, reply: &[u8], session: &mut EnipSession, t_o: &HashMap<u32, u32>, done: &mut Vec<Done>) {
        if self.session == 0 {
            let header = frames::header(reply);
            if header.command == frames::REGISTER_SESSION && header.status == 0 && header.session != 0 {
                self.session = header.session;
                self.register_deadline = None;
                self.device().connected();
                let (now, timeout) = (Instant::now(), self.timeout());
                while let Some(p) = self.queue.waiting.pop_front() {
                    self.queue.send(p, self.session, now, timeout, &mut self.wire, self.wire_base);
                }
            } else {
                self.device().connect_failed("no session registered");
                self.abort("bad_reply", done);
            }
            return;
        }
        // Only connected messages are matched by connection and sequence; any other reply carries the
        // request's sender context, which rules out most messages in flight before parsing them.
        let context = reply.get(12..20);
        let answered = self.queue.take_answered(|request| {
            let command = u16::from_le_bytes([request[0], request[1]]);
            if command != frames::SEND_UNIT_DATA && request.get(12..20) != context {
                return None;
            }
            accept_reply(session, t_o, request, reply)
        });
        let Some((mut pending, fixed)) = answered else {
            self.fault("unmatched_reply");
            return;
        };
        pending.upstream = pending.sent.map_or(Duration::ZERO, |s| s.elapsed());
        let device = self.device();
        device.metrics.upstream_latency(&device.label, pending.upstream.as_secs_f64());
        let mut reply = fixed.unwrap_or_else(|| reply.to_vec());
        pending.reply_to_client(&mut reply);
        done.push(Done { pending, reply: Some(reply) });
    }

    fn sweep(&mut self, done: &mut Vec<Done>) {
        let now = Instant::now();
        if self.stalled.is_some_and(|since| since + self.timeout() <= now) {
            // The device took nothing for its whole timeout: as if it had gone.
            self.end(true, done);
            return;
        }
        if self.register_deadline.is_some_and(|d| d <= now) {
            self.device().connect_failed("no session registered in time");
            self.abort("timeout", done);
            return;
        }
        let mut expired = Vec::new();
        self.queue.expire(now, &mut expired);
        // A message answered for while part of it is still to be written must not reach the device after its
        // client was told it failed (nor after what that client sent next): nothing more is written then.
        let on_wire = self.wire_base + self.written as u64;
        let unwritten = expired.iter().any(|p| p.sent.is_some() && p.wire_end > on_wire);
        for pending in expired {
            self.fault("timeout");
            done.push(Done { pending, reply: None });
        }
        if unwritten {
            self.end(true, done);
        }
    }

    /// Gives up on the device's connection (counted `kind`); what is in flight gets the gateway's answer.
    fn abort(&mut self, kind: &'static str, done: &mut Vec<Done>) {
        self.fault(kind);
        self.end(true, done);
    }

    /// The link is over: the gateway's answer for everything it held (`connection_lost` counted when
    /// messages were in flight on a connection that had been made).
    fn end(&mut self, connected: bool, done: &mut Vec<Done>) {
        if self.closed {
            return;
        }
        self.closed = true;
        if connected && !self.queue.inflight.is_empty() {
            self.fault("connection_lost");
        }
        self.socket = Socket::Closed;
        self.buf = Vec::new();
        self.filled = 0;
        self.wire.clear();
        self.written = 0;
        self.stalled = None;
        self.register_deadline = None;
        let mut lost = Vec::new();
        self.queue.take_all(&mut lost);
        done.extend(lost.into_iter().map(|pending| Done { pending, reply: None }));
    }

    /// Writes what was sent since the last flush, in one write, as far as the device takes it now; the rest
    /// goes as it takes more (`poll_io`). Never waits.
    pub fn flush(&mut self, done: &mut Vec<Done>) {
        // Sent once connected (the register request comes first then).
        let Socket::Open(stream) = &self.socket else { return };
        while self.written < self.wire.len() {
            match stream.try_write(&self.wire[self.written..]) {
                Ok(0) => break,
                Ok(n) => {
                    self.written += n;
                    self.stalled = None;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.stalled.get_or_insert_with(Instant::now);
                    return;
                }
                Err(_) => break,
            }
        }
        if self.written < self.wire.len() {
            self.end(true, done);
            return;
        }
        self.wire_base += self.wire.len() as u64;
        self.wire.clear();
        self.written = 0;
    }

    /// Ends zonegate's session with the device: what was sent goes first, then UnRegisterSession, then the
    /// connection closes (bounded). Nothing is answered any more.
    pub async fn close(mut self) {
        if self.closed {
            return;
        }
        if !self.queue.inflight.is_empty() {
            self.fault("connection_lost");
        }
        if let Socket::Open(mut stream) = std::mem::replace(&mut self.socket, Socket::Closed) {
            if self.session != 0 {
                self.wire.extend_from_slice(&frames::unregister_request(self.session));
            }
            let wire = std::mem::take(&mut self.wire);
            let rest = &wire[self.written..];
            let _ = tokio::time::timeout(SHUTDOWN_TIMEOUT, async {
                stream.write_all(rest).await?;
                stream.shutdown().await
            })
            .await;
        }
        self.closed = true;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A SendRRData under session `session`, sender context `n`.
    fn message(session: u32, n: u8) -> Vec<u8> {
        let mut m = vec![0u8; 24];
        m[0..2].copy_from_slice(&frames::SEND_RR_DATA.to_le_bytes()); // command
        m[4..8].copy_from_slice(&session.to_le_bytes()); // session handle
        m[12] = n; // sender context
        m
    }

    fn pending(n: u8, arrived: Instant, deadline: Instant) -> Pending {
        Pending::new(message(0xC1, n), 0x4C, None, arrived, deadline, false)
    }

    #[test]
    fn a_shared_message_gets_exactly_one_answer_routed_or_dropped() {
        let t = Instant::now();
        let (tx, mut rx) = mpsc::unbounded_channel();
        // Routed: the owner gets it once, under its own context again.
        let mut p = pending(5, t, t + Duration::from_secs(1));
        p.reply_to = Some(tx.clone());
        frames::set_context(&mut p.frame, &[9; 8]);
        assert!(Done { pending: p, reply: None }.route().is_none());
        let Done { pending: mut answered, reply } = rx.try_recv().unwrap();
        assert!(reply.is_none());
        assert_eq!(answered.client_frame()[12..20], [5, 0, 0, 0, 0, 0, 0, 0]);
        drop(answered);
        assert!(rx.try_recv().is_err());
        // Dropped unanswered (its task gone): the gateway's answer still reaches the owner.
        let mut p = pending(6, t, t + Duration::from_secs(1));
        p.reply_to = Some(tx);
        drop(p);
        let Done { pending: answered, reply } = rx.try_recv().unwrap();
        assert!(reply.is_none() && answered.reply_to.is_none());
        assert!(rx.try_recv().is_err());
        // Not a shared message: handed back to the caller.
        assert!(Done { pending: pending(7, t, t), reply: None }.route().is_some());
    }

    #[test]
    fn expire_takes_in_flight_then_waiting_and_keeps_the_rest() {
        let t = Instant::now();
        let mut q = Queue::default();
        let mut wire = Vec::new();
        q.send(pending(1, t, t + Duration::from_secs(1)), 0xD0, t, Duration::from_secs(5), &mut wire, 0);
        q.send(pending(2, t, t + Duration::from_secs(9)), 0xD0, t, Duration::from_secs(5), &mut wire, 0);
        q.waiting.push_back(pending(3, t, t + Duration::from_secs(2)));
        q.waiting.push_back(pending(4, t, t + Duration::from_secs(20)));
        assert_eq!(q.earliest(), Some(t + Duration::from_secs(1)));
        let mut expired = Vec::new();
        q.expire(t + Duration::from_secs(5), &mut expired);
        let contexts: Vec<u8> = expired.iter().map(|p| p.frame[12]).collect();
        // 2's deadline came down to sent + the device's timeout (5 s).
        assert_eq!(contexts, [1, 2, 3]);
        assert_eq!(q.len(), 1);
        assert_eq!(q.earliest(), Some(t + Duration::from_secs(20)));
    }

    #[test]
    fn send_puts_the_link_handle_on_the_wire_and_faults_answer_under_the_clients() {
        let t = Instant::now();
        let mut q = Queue::default();
        let mut wire = Vec::new();
        q.send(pending(7, t, t + Duration::from_secs(1)), 0xDEAD_BEEF, t, Duration::from_secs(1), &mut wire, 0);
        assert_eq!(&wire[4..8], &0xDEAD_BEEFu32.to_le_bytes());
        let mut all = Vec::new();
        q.take_all(&mut all);
        assert_eq!(&all[0].client_frame()[4..8], &0xC1u32.to_le_bytes());
        assert!(q.is_empty());
    }

    #[test]
    fn take_answered_matches_in_flight_order_and_hands_back_a_fixed_reply() {
        let t = Instant::now();
        let mut q = Queue::default();
        let mut wire = Vec::new();
        for n in 1..=3 {
            q.send(pending(n, t, t + Duration::from_secs(1)), 0xD0, t, Duration::from_secs(1), &mut wire, 0);
        }
        // Both 2 and 3 would accept: the first sent is taken.
        let (p, fixed) = q.take_answered(|req| (req[12] >= 2).then_some(Accepted::AsIs)).unwrap();
        assert_eq!((p.frame[12], fixed), (2, None));
        let (p, fixed) = q.take_answered(|req| (req[12] == 3).then(|| Accepted::Fixed(vec![9]))).unwrap();
        assert_eq!((p.frame[12], fixed), (3, Some(vec![9])));
        assert!(q.take_answered(|_| None).is_none());
        assert_eq!(q.len(), 1);
    }
}

/// A link against a device that registers the session, then reads nothing more: the link writes without
/// waiting, and gives up within the device's timeout.
#[cfg(test)]
mod stall_tests {
    use std::sync::Arc;

    use tokio::io::AsyncReadExt;
    use tokio::net::TcpSocket;

    use super::*;
    use crate::config::EnipDeviceConfig;
    use crate::events::Events;
    use crate::metrics::Metrics;

    /// A device whose connections take a little (a small receive buffer), answer RegisterSession, then
    /// never read again (held open until the test ends).
    async fn deaf_device() -> (u16, tokio::sync::oneshot::Sender<()>) {
        let socket = TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(4096).unwrap();
        socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let listener = socket.listen(4).unwrap();
        let port = listener.local_addr().unwrap().port();
        let (done_tx, done_rx) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(async move {
            let Ok((mut stream, _)) = listener.accept().await else { return };
            let mut register = [0u8; 28];
            if stream.read_exact(&mut register).await.is_err() {
                return;
            }
            let mut reply = register.to_vec();
            reply[4..8].copy_from_slice(&0xD00Du32.to_le_bytes());
            let _ = stream.write_all(&reply).await;
            let _ = done_rx.await;
        });
        (port, done_tx)
    }

    /// A SendRRData of `len` bytes of data, sender context `n`.
    fn big_message(n: u8, len: usize) -> Vec<u8> {
        let mut m = vec![0u8; 24 + len];
        m[0..2].copy_from_slice(&frames::SEND_RR_DATA.to_le_bytes());
        m[2..4].copy_from_slice(&(len as u16).to_le_bytes());
        m[12] = n;
        m
    }

    #[tokio::test]
    async fn a_device_that_stops_reading_loses_the_link_within_its_timeout() {
        let (port, _hold) = deaf_device().await;
        let config = EnipDeviceConfig {
            name: "press-plc".into(),
            host: "127.0.0.1".into(),
            port,
            timeout: Duration::from_millis(300),
            max_connections: 2,
            engine_index: 0,
        };
        let metrics = Arc::new(Metrics::new(vec![0.1]));
        let events = Arc::new(Events::new().unwrap());
        let device = EnipDevice::new(Arc::new(config), Arc::from("press-plc"), metrics.clone(), events);
        let mut link = Link::open(device.open_link().unwrap());
        let mut session = EnipSession::new();
        let no_connections = HashMap::new();
        let mut done = Vec::new();
        // Far more than the kernel holds for a peer that does not read.
        let count = 128u8;
        let now = Instant::now();
        for n in 0..count {
            link.submit(
                Pending::new(big_message(n, 60_000), 0x4C, None, now, now + Duration::from_secs(30), false),
                &mut done,
            );
        }
        let started = Instant::now();
        let bound = started + Duration::from_secs(5);
        while done.len() < usize::from(count) {
            link.flush(&mut done);
            let io = tokio::time::timeout_at(bound, std::future::poll_fn(|cx| link.poll_io(cx)))
                .await
                .expect("the link gives up within the bound");
            link.on_io(io, &mut session, &no_connections, &mut done);
        }
        assert!(link.is_closed());
        assert!(done.iter().all(|d| d.reply.is_none()), "every message gets the gateway's answer");
        assert!(started.elapsed() < Duration::from_secs(2), "{:?}", started.elapsed());
        let faults = metrics.snapshot().upstream_faults;
        let fault = |kind: &str| faults.iter().find(|((_, k), _)| *k == kind).map_or(0, |(_, n)| *n);
        // The messages past their deadline with bytes unwritten, or the stall: either ends the link.
        assert!(fault("timeout") >= 1 || fault("connection_lost") == 1, "{faults:?}");
    }
}
