//! The client side of the relay (docs/relay.md, "A connection"): one accept loop per listener and one task per
//! connection, which handshakes, waits for Python to name the principal, then reads, frames, decides and
//! answers or forwards. Replies ready when the task runs are written together, in one write.

use std::cell::RefCell;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::time::Instant;
use zonegate_core::modbus::frame::{split, Split};
use zonegate_core::policy::{Decision, Verdict};

use crate::config::{EXC_GATEWAY_PATH_UNAVAILABLE, HANDSHAKE_TIMEOUT, MAX_CLIENT_BUFFER};
use crate::events::{Audit, Event};
use crate::metrics::{LatencyCell, RequestCell};
use crate::upstream::Forwarded;
use crate::{Generation, Shared, NO_DEVICE};

/// The read buffer a connection starts with: a few dozen pipelined requests. It grows (to MAX_CLIENT_BUFFER)
/// only for a client that sends more than that at once, so a thousand idle clients cost little memory.
pub(crate) const INITIAL_BUFFER: usize = 4096;
/// A connection's close_notify and last bytes get this long once the connection is done.
pub(crate) const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(1);
/// Audited even when allowed: the writes (functions 5, 6, 15, 16, 21, 22, 23).
const WRITE_FUNCTIONS: [u8; 7] = [5, 6, 15, 16, 21, 22, 23];
/// After an accept error (out of file descriptors, ...), the loop waits this long rather than spin.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(50);

/// CLOCK_MONOTONIC in nanoseconds: the clock the engine's rate buckets run on (Python's `monotonic_ns`).
pub(crate) fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid, writable timespec; CLOCK_MONOTONIC is always available on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

pub(crate) fn realtime_ns() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64)
}

/// The exception response to the request whose MBAP header and function are `head` (tid, unit, function).
#[inline]
fn push_exception(out: &mut Vec<u8>, head: Head, code: u8) {
    let [t0, t1] = head.tid.to_be_bytes();
    out.extend_from_slice(&[t0, t1, 0, 0, 0, 3, head.unit, head.function | 0x80, code]);
}

#[derive(Clone, Copy)]
struct Head {
    tid: u16,
    unit: u8,
    function: u8,
}

impl Head {
    fn of(adu: &[u8]) -> Head {
        Head { tid: u16::from_be_bytes([adu[0], adu[1]]), unit: adu[6], function: adu[7] }
    }
}

/// A forwarded request's outcome.
struct Done {
    head: Head,
    arrived: Instant,
    result: Result<Forwarded, u8>,
}

/// A request counter's key within one connection and principal: (device, function, verdict, reason).
type CellKey = (u32, u8, u8, u8);

/// Request counters a connection keeps handles on.
const MAX_CELLS: usize = 32;

/// The largest ADU `split` lets through (length field 254).
const MAX_ADU: usize = 260;

type Forward = Pin<Box<dyn Future<Output = Done> + Send>>;

/// A connection's forwarded requests, polled by the connection's own task: a device's reply wakes that task
/// directly, with no task or channel per request in between. At most `max_outstanding` of them, so polling
/// them all on a wake costs little.
#[derive(Default)]
struct InFlight {
    forwards: Vec<Forward>,
}

impl InFlight {
    fn len(&self) -> usize {
        self.forwards.len()
    }

    /// Moves every finished forward's outcome to `done`; Ready when there was at least one.
    fn poll_done(&mut self, cx: &mut Context<'_>, done: &mut Vec<Done>) -> Poll<()> {
        let before = done.len();
        let mut i = 0;
        while i < self.forwards.len() {
            match self.forwards[i].as_mut().poll(cx) {
                Poll::Ready(d) => {
                    done.push(d);
                    // In request order among those done together: clients match replies by transaction id,
                    // but one that pipelines gets them as the device answered them where it can.
                    drop(self.forwards.remove(i));
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

/// Resolves once the relay stops.
pub(crate) async fn stopped(stop: &mut tokio::sync::watch::Receiver<bool>) {
    let _ = stop.wait_for(|&s| s).await;
}

pub(crate) async fn accept_loop(shared: Arc<Shared>, index: usize, listener: TcpListener) {
    let mut stop = shared.stop_signal();
    let label = shared.current().listeners[index].label.clone();
    loop {
        tokio::select! {
            _ = stopped(&mut stop) => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    // Replies are written once per batch already: Nagle would only hold them back.
                    let _ = stream.set_nodelay(true);
                    let conn_id = shared.next_conn_id();
                    shared.connection_started();
                    shared.metrics.connection_opened(&label);
                    tokio::spawn(connection(shared.clone(), index, label.clone(), stream, peer, conn_id));
                }
                Err(e) => {
                    // Out of descriptors or memory passes; a socket that cannot accept at all does not.
                    let lasting = matches!(
                        e.raw_os_error(),
                        Some(libc::EBADF | libc::ENOTSOCK | libc::EINVAL | libc::EOPNOTSUPP)
                    );
                    shared.events.log("error", format!("{label}: accept failed: {e}"));
                    if lasting {
                        break;
                    }
                    tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                }
            }
        }
    }
}

/// Ends a connection's bookkeeping however its task ends: returned, panicked (a fault of zonegate's, counted
/// `internal_error`: that client is closed, the others go on) or dropped by the runtime when the relay stops.
struct ConnectionGuard {
    shared: Arc<Shared>,
    label: Arc<str>,
    conn_id: u64,
    /// Set once an `identify` event went out: Python then expects `closed`.
    asked: AtomicBool,
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        let shared = &self.shared;
        if std::thread::panicking() {
            shared.metrics.framing_error(&self.label, "internal_error");
            shared.events.log("error", format!("{}: internal error on connection {}", self.label, self.conn_id));
        }
        shared.forget_identify(self.conn_id);
        shared.forget_stop_notice(self.conn_id);
        if self.asked.load(Ordering::Relaxed) {
            shared.events.push(Event::Closed { conn_id: self.conn_id });
        }
        shared.metrics.connection_closed(&self.label);
        shared.connection_ended();
    }
}

async fn connection(
    shared: Arc<Shared>,
    index: usize,
    label: Arc<str>,
    stream: TcpStream,
    peer: SocketAddr,
    conn_id: u64,
) {
    let guard =
        ConnectionGuard { shared: shared.clone(), label: label.clone(), conn_id, asked: AtomicBool::new(false) };
    let generation = shared.current();
    let tls = generation.listeners[index].tls.clone();
    let enip = generation.listeners[index].kind.is_enip();
    drop(generation);
    // The address the client dialled: an EtherNet/IP ListIdentity answer names it instead of the device's.
    let local = stream.local_addr().ok();
    let asked = &guard.asked;
    match tls {
        None if enip => {
            crate::enip::session::serve(&shared, index, &label, stream, peer, local, conn_id, None, asked).await
        }
        None => serve(&shared, index, &label, stream, peer, conn_id, None, asked).await,
        Some(acceptor) => match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
            Ok(Ok(stream)) => {
                let der = stream.get_ref().1.peer_certificates().and_then(|c| c.first()).map(|c| c.to_vec());
                if enip {
                    crate::enip::session::serve(&shared, index, &label, stream, peer, local, conn_id, der, asked).await
                } else {
                    serve(&shared, index, &label, stream, peer, conn_id, der, asked).await
                }
            }
            Ok(Err(e)) => handshake_failed(&shared, &label, peer, crate::tls::failure_reason(&e), &e.to_string()),
            Err(_) => handshake_failed(&shared, &label, peer, "timeout", "no handshake within 10 s"),
        },
    }
}

fn handshake_failed(shared: &Shared, label: &Arc<str>, peer: SocketAddr, reason: &'static str, detail: &str) {
    shared.metrics.handshake_failure(label, reason);
    shared.events.log("warning", format!("{label}: TLS handshake with {peer} failed ({reason}): {detail}"));
}

/// A client connection's stream: plain TCP or server-side TLS.
pub(crate) trait ClientStream: AsyncRead + AsyncWrite + Unpin {
    /// Whether TLS records wait to be sent that no application write will carry.
    fn wants_write(&self) -> bool {
        false
    }
}

impl ClientStream for TcpStream {}

impl ClientStream for tokio_rustls::server::TlsStream<TcpStream> {
    fn wants_write(&self) -> bool {
        self.get_ref().1.wants_write()
    }
}

/// Reads what the client sent. A read that yields no application data may still have made TLS queue records of
/// its own (the `no_renegotiation` alert answering a TLS 1.2 renegotiation request): they are sent at once, as
/// OpenSSL does, rather than left until the next reply.
pub(crate) async fn read_some<S: ClientStream>(stream: &mut S, buf: &mut [u8]) -> std::io::Result<usize> {
    std::future::poll_fn(|cx| {
        let mut read = ReadBuf::new(buf);
        match Pin::new(&mut *stream).poll_read(cx, &mut read) {
            Poll::Ready(result) => Poll::Ready(result.map(|()| read.filled().len())),
            Poll::Pending => {
                if stream.wants_write() {
                    // An error here shows at the next read or write.
                    let _ = Pin::new(&mut *stream).poll_flush(cx);
                }
                Poll::Pending
            }
        }
    })
    .await
}

/// Who the client is under one generation: the engine's index and the metric label.
pub(crate) struct Principal {
    pub(crate) index: u32,
    pub(crate) label: Arc<str>,
}

impl Principal {
    /// Python's answer to `identify`, resolved against `generation` (unknown: `u32::MAX`, `unknown`).
    pub(crate) fn resolve(generation: &Generation, name: Option<String>) -> Principal {
        match name.and_then(|n| Some((generation.engine.principal_index(&n)?, n))) {
            Some((index, name)) => Principal { index, label: Arc::from(name.as_str()) },
            None => Principal::unknown(generation),
        }
    }

    pub(crate) fn unknown(generation: &Generation) -> Principal {
        Principal { index: u32::MAX, label: generation.unknown.clone() }
    }
}

/// Pushes an `identify` event for the connection (both protocols ask the same way); the receiver resolves
/// with Python's answer.
pub(crate) fn ask_identity(
    shared: &Shared,
    conn_id: u64,
    listener: &Arc<str>,
    asked: &AtomicBool,
    peer: &str,
    der: Option<&[u8]>,
) -> oneshot::Receiver<Option<String>> {
    let rx = shared.wait_identify(conn_id);
    asked.store(true, Ordering::Relaxed);
    shared.events.push(Event::Identify {
        conn_id,
        listener: listener.clone(),
        peer: peer.to_owned(),
        der: der.map(<[u8]>::to_vec),
    });
    rx
}

/// Serves one connection until it closes; sets `asked` when an `identify` event goes out.
#[allow(clippy::too_many_arguments)]
async fn serve<S: ClientStream>(
    shared: &Arc<Shared>,
    index: usize,
    label: &Arc<str>,
    mut stream: S,
    peer: SocketAddr,
    conn_id: u64,
    der: Option<Vec<u8>>,
    asked: &AtomicBool,
) {
    let mut conn = Conn::new(shared.clone(), index, label.clone(), conn_id, asked);
    // A oneshot of its own rather than the relay's watch: polled at every wake, it touches no shared state.
    let mut stop = shared.stop_notice(conn_id);
    let mut inflight = InFlight::default();
    let mut done: Vec<Done> = Vec::new();
    let mut buf = vec![0u8; INITIAL_BUFFER];
    let mut filled = 0usize;
    let mut out: Vec<u8> = Vec::with_capacity(1024);
    let peer_text = peer.to_string();
    // The principal is asked for at once (the client may send nothing for a while) and again, at the next
    // request, after every reload.
    let mut identifying: Option<oneshot::Receiver<Option<String>>> =
        Some(conn.ask_identity(&peer_text, der.as_deref()));
    // `closing`: stop taking requests (stop, invalid stream); `eof`: the client sent all it will, and what
    // it sent is still answered.
    let mut closing = false;
    let mut eof = false;
    let mut last_request = Instant::now();
    let idle = tokio::time::sleep_until(last_request + conn.listener().idle_timeout);
    tokio::pin!(idle);
    loop {
        if identifying.is_none() && !closing && filled > 0 {
            if shared.generation_number() != conn.principal_generation {
                conn.refresh();
                identifying = Some(conn.ask_identity(&peer_text, der.as_deref()));
            } else {
                let used = conn.handle_frames(&buf[..filled], &mut out, &mut inflight, &mut closing);
                if used > 0 {
                    buf.copy_within(used..filled, 0);
                    filled -= used;
                }
            }
        }
        if !out.is_empty() {
            if stream.write_all(&out).await.is_err() || stream.flush().await.is_err() {
                break;
            }
            out.clear();
        }
        if inflight.forwards.is_empty() && (closing || (eof && identifying.is_none())) {
            break;
        }
        let max_outstanding = conn.listener().max_outstanding;
        let can_read = !closing && !eof && identifying.is_none() && inflight.len() < max_outstanding;
        if can_read && filled == buf.len() {
            if buf.len() >= MAX_CLIENT_BUFFER {
                shared.metrics.framing_error(label, "overflow");
                break;
            }
            buf.resize((buf.len() * 2).min(MAX_CLIENT_BUFFER), 0);
        }
        tokio::select! {
            biased;
            () = std::future::poll_fn(|cx| inflight.poll_done(cx, &mut done)), if !inflight.forwards.is_empty() => {
                for d in done.drain(..) {
                    conn.finish(d, &mut out);
                }
            }
            answer = async { identifying.as_mut().expect("guarded").await }, if identifying.is_some() => {
                identifying = None;
                conn.identified(answer.ok().flatten());
            }
            read = read_some(&mut stream, &mut buf[filled..]), if can_read => match read {
                Ok(0) => eof = true,
                Ok(n) => {
                    filled += n;
                    last_request = Instant::now();
                    conn.now = last_request;
                }
                Err(_) => break,
            },
            _ = &mut stop, if !closing => closing = true,
            () = &mut idle, if !closing => {
                let deadline = last_request + conn.listener().idle_timeout;
                if inflight.forwards.is_empty() && Instant::now() >= deadline {
                    shared.metrics.framing_error(label, "idle");
                    break;
                }
                // Requests came since the timer was set (or some are in flight): look again later.
                let next =
                    if inflight.forwards.is_empty() { deadline } else { Instant::now() + conn.listener().idle_timeout };
                idle.as_mut().reset(next);
            }
        }
    }
    let _ = tokio::time::timeout(SHUTDOWN_TIMEOUT, stream.shutdown()).await;
}

/// A connection's state between reads.
struct Conn<'a> {
    shared: Arc<Shared>,
    index: usize,
    label: Arc<str>,
    conn_id: u64,
    generation: Arc<Generation>,
    principal_generation: u64,
    principal: Principal,
    /// When the bytes being framed were read: the requests' arrival, deadline and latency start.
    now: Instant,
    /// Set once an `identify` event was sent.
    asked: &'a AtomicBool,
    /// The request counters this connection used under its current principal, by (device, function, verdict,
    /// reason): a request is counted without taking the metrics lock.
    cells: RefCell<Vec<(CellKey, RequestCell)>>,
    gateway_latency: Arc<LatencyCell>,
}

impl<'a> Conn<'a> {
    fn new(shared: Arc<Shared>, index: usize, label: Arc<str>, conn_id: u64, asked: &'a AtomicBool) -> Conn<'a> {
        let generation = shared.current();
        let gateway_latency = shared.metrics.gateway_latency_cell(&label);
        Conn {
            shared,
            index,
            label,
            conn_id,
            principal_generation: generation.number,
            principal: Principal::unknown(&generation),
            generation,
            now: Instant::now(),
            asked,
            cells: RefCell::new(Vec::new()),
            gateway_latency,
        }
    }

    fn listener(&self) -> &crate::ListenerGen {
        &self.generation.listeners[self.index]
    }

    fn refresh(&mut self) {
        self.generation = self.shared.current();
        self.principal_generation = self.generation.number;
    }

    fn ask_identity(&mut self, peer: &str, der: Option<&[u8]>) -> oneshot::Receiver<Option<String>> {
        ask_identity(&self.shared, self.conn_id, &self.label, self.asked, peer, der)
    }

    /// Python's answer, resolved against the generation it was asked under (a newer one asks again).
    fn identified(&mut self, name: Option<String>) {
        self.cells.get_mut().clear();
        self.principal = Principal::resolve(&self.generation, name);
    }

    /// Decides and answers or forwards every complete ADU at the start of `buf`, as long as the connection
    /// may have more requests in flight; returns the bytes consumed.
    fn handle_frames(&self, buf: &[u8], out: &mut Vec<u8>, inflight: &mut InFlight, closing: &mut bool) -> usize {
        let generation = &*self.generation;
        let listener = &generation.listeners[self.index];
        let now_ns = monotonic_ns();
        let mut pos = 0;
        while inflight.len() < listener.max_outstanding {
            match split(&buf[pos..]) {
                Split::Complete { used } => {
                    let adu = &buf[pos..pos + used];
                    pos += used;
                    self.handle(generation, adu, now_ns, out, inflight);
                }
                Split::Incomplete { .. } => break,
                Split::Invalid(why) => {
                    // Not Modbus/TCP and no way to resynchronise: answer what was forwarded, then close.
                    self.shared.metrics.framing_error(&self.label, why.name());
                    self.shared
                        .events
                        .log("warning", format!("{}: invalid Modbus/TCP stream ({})", self.label, why.name()));
                    *closing = true;
                    return buf.len();
                }
            }
        }
        pos
    }

    #[inline]
    fn handle(&self, generation: &Generation, adu: &[u8], now_ns: u64, out: &mut Vec<u8>, inflight: &mut InFlight) {
        let listener = &generation.listeners[self.index];
        let device = listener.routes[adu[6] as usize];
        let (engine_device, device_label) = if device == NO_DEVICE {
            (NO_DEVICE, None)
        } else {
            (generation.device_engine[device as usize], Some(&generation.device_labels[device as usize]))
        };
        let decision = generation.engine.decide(self.principal.index, engine_device, adu, now_ns);
        self.count(device, decision.function, decision.verdict as u8, decision.reason as u8, device_label);
        let head = Head::of(adu);
        if decision.verdict == Verdict::Deny {
            self.audit(generation, device_label, adu, &decision);
            push_exception(out, head, decision.exception.unwrap_or(0x01));
            return;
        }
        if decision.verdict == Verdict::WouldDeny || WRITE_FUNCTIONS.contains(&decision.function) {
            self.audit(generation, device_label, adu, &decision);
        }
        if device == NO_DEVICE {
            push_exception(out, head, EXC_GATEWAY_PATH_UNAVAILABLE);
            return;
        }
        let pool = generation.pools[device as usize].clone();
        let deadline = self.now + listener.request_timeout;
        let arrived = self.now;
        // The request travels inside the forward's one allocation, not in a buffer of its own.
        let mut request = [0u8; MAX_ADU];
        let len = adu.len();
        request[..len].copy_from_slice(adu);
        // The pool answers by `deadline` itself (0x0B past it): no timer of our own per request.
        inflight.forwards.push(Box::pin(async move {
            let result = pool.forward(&request[..len], deadline).await;
            Done { head, arrived, result }
        }));
    }

    #[inline]
    fn count(&self, device: u32, function: u8, verdict: u8, reason: u8, device_label: Option<&Arc<str>>) {
        let mut cells = self.cells.borrow_mut();
        let wanted = (device, function, verdict, reason);
        if let Some((_, cell)) = cells.iter().find(|(key, _)| *key == wanted) {
            cell.fetch_add(1, Ordering::Relaxed);
            return;
        }
        // Bounded whatever mix of functions a client sends.
        if cells.len() >= MAX_CELLS {
            cells.clear();
        }
        let generation = &self.generation;
        let key = (
            self.label.clone(),
            self.principal.label.clone(),
            device_label.unwrap_or(&generation.unknown).clone(),
            function,
            verdict,
            reason,
        );
        let cell = self.shared.metrics.request_cell(key);
        cell.fetch_add(1, Ordering::Relaxed);
        cells.push((wanted, cell));
    }

    /// A forwarded request's answer: the device's reply or the gateway's exception. Either way its time in
    /// zonegate is observed (the whole time when the device gave no reply), as the Python relay does.
    fn finish(&mut self, done: Done, out: &mut Vec<u8>) {
        let upstream = match done.result {
            Ok(forwarded) => {
                out.extend_from_slice(&forwarded.reply);
                forwarded.upstream
            }
            Err(code) => {
                push_exception(out, done.head, code);
                Duration::ZERO
            }
        };
        self.gateway_latency.observe(done.arrived.elapsed().saturating_sub(upstream).as_secs_f64());
    }

    fn audit(&self, generation: &Generation, device: Option<&Arc<str>>, adu: &[u8], decision: &Decision) {
        let deny = decision.verdict == Verdict::Deny;
        self.shared.events.push(Event::Audit(Box::new(Audit {
            conn_id: self.conn_id,
            listener: self.label.clone(),
            device: device.cloned(),
            adu: adu.to_vec(),
            verdict: decision.verdict.name(),
            reason: decision.reason.name(),
            rule: decision.rule.map(|r| generation.engine.rule_id(r).to_owned()),
            exception: if deny { Some(decision.exception.unwrap_or(0x01)) } else { None },
            malformed: decision.malformed.map(|m| m.name()),
            time_ns: realtime_ns(),
        })));
    }
}
