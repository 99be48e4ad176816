//! Upstream stage: one pool of Modbus/TCP (or Modbus/TCP Security) connections per device, shared by every
//! client of every listener (docs/relay.md "Upstream"; docs/dataplane.md "Upstream", "Device faults", "Bounds").
//!
//! ```text
//!  forward() --lock--> a connection with room? --yes--> its outbox --notify--> connection task --write--> device
//!      ^                    | no                                                 ^                           |
//!      |                    v                                                    |                           |
//!      |              pool queue (<= 1024) ---- taken when a reply frees room ---'                           |
//!      '------------------ oneshot <-- reply matched by its transaction id <-------------- read -------------'
//! ```
//!
//! Each connection is one task that owns the socket and its table of requests in flight; a caller hands its
//! request over under the pool's lock (one short critical section) and waits on a oneshot, bounded by its own
//! deadline. Transaction ids belong to a connection: every request sent gets a fresh one, and the reply is
//! accepted only if that id is in flight there and the reply answers the request (well formed, same unit,
//! function or function | 0x80); the client's id is then put back. Anything else is dropped and counted.
//!
//! Nothing here logs or allocates per request beyond the oneshot and the reply handed back: jobs carry the
//! request inline, and the buffers and tables of a connection are sized once.

use std::collections::VecDeque;
use std::io;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{oneshot, Notify};
use tokio::time::Instant;
use tokio_rustls::TlsConnector;
use zonegate_core::modbus::{matches, parse_request, parse_response, split, Split, MAX_ADU_LEN};

use crate::config::{
    DeviceConfig, BACKOFF_FIRST, BACKOFF_MAX, EXC_GATEWAY_PATH_UNAVAILABLE, EXC_GATEWAY_TARGET_NO_RESPONSE,
    EXC_SERVER_BUSY, MAX_QUEUED_PER_DEVICE,
};
use crate::metrics::Metrics;

/// The policy's bound on `pipeline_depth`; a larger value could not find a free transaction id quickly.
const MAX_DEPTH: usize = 256;
/// Bytes read from a device at once. A partial reply left over is shorter than one ADU, so a read always has
/// room after the complete replies are taken out.
const READ_BUFFER: usize = 16 * 1024;
/// How long a closing connection waits for its TLS close_notify to go out.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(1);

/// A device's reply, its transaction id already the client's, and the time the device took.
#[derive(Debug)]
pub struct Forwarded {
    pub reply: Vec<u8>,
    pub upstream: Duration,
}

/// Where the pool's log lines go (`level`: `info`, `warning`, `error`): device unreachable, back up, a
/// stream that is not Modbus/TCP. Never called per request.
pub type LogHook = Arc<dyn Fn(&'static str, String) + Send + Sync>;

type Answer = Result<Forwarded, u8>;

/// One request on its way to a connection: the client's ADU inline (no allocation), what the reply must
/// match, and where the answer goes.
struct Job {
    adu: [u8; MAX_ADU_LEN],
    len: u16,
    deadline: Instant,
    tx: oneshot::Sender<Answer>,
}

impl Job {
    fn answer(self, answer: Answer) {
        // The caller may have stopped waiting (its deadline passed, its client left): nothing to do then.
        let _ = self.tx.send(answer);
    }
}

/// One request sent on a connection.
struct Entry {
    /// The client's request as it came (its transaction id included): the reply is checked against it.
    adu: [u8; MAX_ADU_LEN],
    len: u16,
    sent: Instant,
    /// The earlier of the caller's deadline and the device's timeout from `sent`.
    expiry: Instant,
    tx: oneshot::Sender<Answer>,
}

/// A connection's requests in flight, found by the transaction id it gave them. At most `depth` (<= 256)
/// entries: a scan of the ids is cheaper than hashing them.
struct InFlight {
    tids: Vec<u16>,
    entries: Vec<Entry>,
    next_tid: u16,
}

impl InFlight {
    fn new(depth: usize) -> Self {
        InFlight { tids: Vec::with_capacity(depth), entries: Vec::with_capacity(depth), next_tid: 1 }
    }

    /// An id not in flight on this connection: the ids cycle through all 65536 values, so a late reply
    /// finds its id reused only after as many requests.
    fn fresh_tid(&mut self) -> u16 {
        loop {
            let tid = self.next_tid;
            self.next_tid = tid.wrapping_add(1);
            if !self.tids.contains(&tid) {
                return tid;
            }
        }
    }

    fn push(&mut self, tid: u16, entry: Entry) {
        self.tids.push(tid);
        self.entries.push(entry);
    }

    fn find(&self, tid: u16) -> Option<usize> {
        self.tids.iter().position(|&t| t == tid)
    }

    fn remove(&mut self, i: usize) -> Entry {
        self.tids.swap_remove(i);
        self.entries.swap_remove(i)
    }

    fn next_expiry(&self) -> Option<Instant> {
        self.entries.iter().map(|e| e.expiry).min()
    }

    /// Answers 0x0B to every entry past its expiry; returns how many.
    fn expire(&mut self, inner: &Inner, now: Instant) -> usize {
        let mut expired = 0;
        let mut i = 0;
        while i < self.entries.len() {
            if self.entries[i].expiry <= now {
                let entry = self.remove(i);
                inner.metrics.upstream_fault(&inner.label, "timeout");
                let _ = entry.tx.send(Err(EXC_GATEWAY_TARGET_NO_RESPONSE));
                expired += 1;
            } else {
                i += 1;
            }
        }
        expired
    }

    fn drain(&mut self) -> std::vec::Drain<'_, Entry> {
        self.tids.clear();
        self.entries.drain(..)
    }
}

/// A live connection as the pool sees it.
struct Conn {
    id: u64,
    notify: Arc<Notify>,
    /// Jobs given to it and not finished: its outbox plus what its task holds or has in flight.
    load: usize,
    /// Jobs handed over and not yet taken by its task; taken together, written together.
    outbox: Vec<Job>,
}

#[derive(Default)]
struct State {
    /// `close()` was called: no new requests; what is queued or in flight finishes.
    closed: bool,
    conns: Vec<Conn>,
    connecting: usize,
    queue: VecDeque<Job>,
    /// Zero when the last connect succeeded (or none failed yet).
    backoff: Duration,
    /// Until then, requests with no connection to go to answer 0x0A at once.
    down_until: Option<Instant>,
    /// Last state reported to the metrics; None before the first connect.
    up: Option<bool>,
    next_conn_id: u64,
}

/// What a submitted request became.
enum Submitted {
    /// Handed to a connection or queued; `connect`: start a connection for the queue.
    Taken { connect: bool },
    /// Answered at once with this exception code, counted under this fault kind.
    Refused(u8, &'static str),
}

struct Inner {
    config: Arc<DeviceConfig>,
    label: Arc<str>,
    metrics: Arc<Metrics>,
    depth: usize,
    tls: Option<(TlsConnector, ServerName<'static>)>,
    state: Mutex<State>,
    log: OnceLock<LogHook>,
}

/// One device's connections (at most `max_connections`), shared by every client of every listener.
pub struct DevicePool {
    pub config: Arc<DeviceConfig>,
    pub label: Arc<str>,
    inner: Arc<Inner>,
}

impl DevicePool {
    /// Builds the pool (and its TLS client configuration, for a TLS device) without connecting: the first
    /// request connects. Err: the TLS material does not load, or `host` is not a name TLS can check.
    pub fn new(config: Arc<DeviceConfig>, metrics: Arc<Metrics>) -> Result<Arc<DevicePool>, String> {
        let label: Arc<str> = Arc::from(config.name.as_str());
        let tls = match &config.tls {
            None => None,
            Some(material) => {
                let client = crate::tls::client_config(material)?;
                let name = ServerName::try_from(config.host.clone())
                    .map_err(|_| format!("host {:?} is neither an IP address nor a DNS name", config.host))?;
                Some((TlsConnector::from(client), name))
            }
        };
        let depth = config.depth().min(MAX_DEPTH);
        let inner = Arc::new(Inner {
            config: config.clone(),
            label: label.clone(),
            metrics,
            depth,
            tls,
            state: Mutex::new(State { next_conn_id: 1, ..State::default() }),
            log: OnceLock::new(),
        });
        Ok(Arc::new(DevicePool { config, label, inner }))
    }

    /// Sends the pool's log lines (device unreachable, back up, bad stream) to `hook`; only the first call
    /// takes effect. Without one, the pool logs nothing.
    pub fn set_log(&self, hook: LogHook) {
        let _ = self.inner.log.set(hook);
    }

    /// Forwards one well-formed request ADU (the client's transaction id in it). Resolves to the device's
    /// matching reply with the client's transaction id put back, or to the exception code to answer instead
    /// (0x06 queue full, 0x0A unreachable or backing off, 0x0B no reply by `deadline` or the device's
    /// timeout, or the connection lost with the request in flight). Always resolves by `deadline`.
    pub async fn forward(&self, adu: &[u8], deadline: Instant) -> Result<Forwarded, u8> {
        let inner = &self.inner;
        if adu.len() < 8 || adu.len() > MAX_ADU_LEN {
            // Not an ADU the framing stage could have cut: a fault of the caller, never sent on.
            inner.metrics.upstream_fault(&inner.label, "internal_error");
            return Err(EXC_GATEWAY_TARGET_NO_RESPONSE);
        }
        let (tx, rx) = oneshot::channel();
        let mut job = Job { adu: [0; MAX_ADU_LEN], len: adu.len() as u16, deadline, tx };
        job.adu[..adu.len()].copy_from_slice(adu);
        let submitted = {
            let mut st = inner.lock();
            inner.submit(&mut st, job)
        };
        match submitted {
            Submitted::Taken { connect } => {
                if connect {
                    spawn_connection(inner);
                }
            }
            Submitted::Refused(code, kind) => {
                if !kind.is_empty() {
                    inner.metrics.upstream_fault(&inner.label, kind);
                }
                return Err(code);
            }
        }
        match tokio::time::timeout_at(deadline, rx).await {
            Ok(Ok(answer)) => answer,
            Ok(Err(_)) => {
                // Every path answers its job before dropping it: a dropped one means a connection task
                // ended abnormally.
                inner.metrics.upstream_fault(&inner.label, "internal_error");
                Err(EXC_GATEWAY_TARGET_NO_RESPONSE)
            }
            // The connection (or the queue) counts the timeout when it gives the request up; it also ends the
            // same deadline, so it is counted once whichever side sees it first.
            Err(_) => Err(EXC_GATEWAY_TARGET_NO_RESPONSE),
        }
    }

    /// Stops taking requests (they answer 0x0A); what is queued or in flight finishes (or times out), then
    /// the connections close.
    pub fn close(&self) {
        let orphans = {
            let mut st = self.inner.lock();
            st.closed = true;
            for conn in &st.conns {
                conn.notify.notify_one();
            }
            Inner::orphans(&mut st)
        };
        for job in orphans {
            job.answer(Err(EXC_GATEWAY_PATH_UNAVAILABLE));
        }
    }

    /// Requests queued or on a connection, not yet answered (0 once a closed pool has finished).
    pub fn pending(&self) -> usize {
        let st = self.inner.lock();
        st.queue.len() + st.conns.iter().map(|c| c.load).sum::<usize>()
    }

    /// While the device is backing off after a failed connect: when the next request will try again.
    pub fn retry_at(&self) -> Option<Instant> {
        let st = self.inner.lock();
        st.down_until.filter(|_| st.conns.is_empty())
    }

    /// Open connections to the device.
    pub fn connections(&self) -> usize {
        self.inner.lock().conns.len()
    }
}

impl Drop for DevicePool {
    fn drop(&mut self) {
        // The connection tasks hold the pool's inner state, not the pool: without this an idle connection of
        // a dropped pool would stay open.
        self.close();
    }
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic elsewhere while holding the lock leaves consistent counters and queues: keep going.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn log(&self, level: &'static str, message: String) {
        if let Some(hook) = self.log.get() {
            hook(level, message);
        }
    }

    fn set_up(&self, st: &mut State, up: bool) {
        if st.up != Some(up) {
            st.up = Some(up);
            self.metrics.upstream_state(&self.label, up);
        }
    }

    fn submit(&self, st: &mut State, job: Job) -> Submitted {
        if st.closed {
            return Submitted::Refused(EXC_GATEWAY_PATH_UNAVAILABLE, "");
        }
        if st.queue.is_empty() {
            // The common case: a connection has room; it gets the request without queueing.
            if let Some(conn) = st.conns.iter_mut().find(|c| c.load < self.depth) {
                conn.load += 1;
                conn.outbox.push(job);
                if conn.outbox.len() == 1 {
                    conn.notify.notify_one();
                }
                return Submitted::Taken { connect: false };
            }
        }
        if st.conns.is_empty() && st.down_until.is_some_and(|until| Instant::now() < until) {
            return Submitted::Refused(EXC_GATEWAY_PATH_UNAVAILABLE, "unavailable");
        }
        if st.queue.len() >= MAX_QUEUED_PER_DEVICE {
            // Places held by callers that stopped waiting, or whose deadline has passed, are given back first.
            let now = Instant::now();
            for _ in 0..st.queue.len() {
                let Some(queued) = st.queue.pop_front() else { break };
                if queued.tx.is_closed() {
                    continue;
                }
                if queued.deadline <= now {
                    // Its caller's own timer may not have fired yet: answer it rather than drop it.
                    self.metrics.upstream_fault(&self.label, "timeout");
                    queued.answer(Err(EXC_GATEWAY_TARGET_NO_RESPONSE));
                    continue;
                }
                st.queue.push_back(queued);
            }
            if st.queue.len() >= MAX_QUEUED_PER_DEVICE {
                return Submitted::Refused(EXC_SERVER_BUSY, "queue_full");
            }
        }
        st.queue.push_back(job);
        self.dispatch(st);
        Submitted::Taken { connect: self.want_connection(st) }
    }

    /// Hands queued jobs to connections with room, oldest first.
    fn dispatch(&self, st: &mut State) {
        let State { queue, conns, .. } = st;
        for conn in conns.iter_mut() {
            if queue.is_empty() {
                return;
            }
            let was_empty = conn.outbox.is_empty();
            while conn.load < self.depth {
                let Some(job) = queue.pop_front() else { break };
                conn.outbox.push(job);
                conn.load += 1;
            }
            if was_empty && !conn.outbox.is_empty() {
                conn.notify.notify_one();
            }
        }
    }

    /// Whether the queue needs another connection now; if so it is counted as connecting and the caller
    /// spawns `run_connection`.
    fn want_connection(&self, st: &mut State) -> bool {
        if st.closed || st.queue.is_empty() || st.conns.len() + st.connecting >= self.config.max_connections.max(1) {
            return false;
        }
        if st.down_until.is_some_and(|until| Instant::now() < until) {
            return false;
        }
        st.connecting += 1;
        true
    }

    /// Queued jobs no connection will ever take: the pool is closed and has none left.
    fn orphans(st: &mut State) -> Vec<Job> {
        if st.closed && st.conns.is_empty() && st.connecting == 0 {
            st.queue.drain(..).collect()
        } else {
            Vec::new()
        }
    }

    async fn open(&self) -> io::Result<Stream> {
        let tcp = TcpStream::connect((self.config.host.as_str(), self.config.port)).await?;
        // Replies and pipelined requests are small and latency-bound: never hold one back for Nagle.
        tcp.set_nodelay(true)?;
        match &self.tls {
            None => Ok(Stream::Plain(tcp)),
            Some((connector, name)) => Ok(Stream::Tls(Box::new(connector.connect(name.clone(), tcp).await?))),
        }
    }

    fn connect_failed(&self, why: String) {
        let failed = {
            let mut st = self.lock();
            st.connecting -= 1;
            st.backoff = if st.backoff.is_zero() { BACKOFF_FIRST } else { (st.backoff * 2).min(BACKOFF_MAX) };
            st.down_until = Some(Instant::now() + st.backoff);
            self.set_up(&mut st, false);
            if st.conns.is_empty() && st.connecting == 0 {
                st.queue.drain(..).collect()
            } else {
                Vec::new()
            }
        };
        self.metrics.upstream_fault(&self.label, "connect_failed");
        self.log(
            "warning",
            format!("device {} at {}:{} unreachable: {}", self.label, self.config.host, self.config.port, why),
        );
        for job in failed {
            job.answer(Err(EXC_GATEWAY_PATH_UNAVAILABLE));
        }
    }

    /// Registers a new connection and gives it the queue; None when the pool closed with nothing queued.
    fn connected(&self) -> Option<(u64, Arc<Notify>)> {
        let mut st = self.lock();
        st.connecting -= 1;
        if st.closed && st.queue.is_empty() {
            return None;
        }
        let was_down = st.up == Some(false);
        st.backoff = Duration::ZERO;
        st.down_until = None;
        self.set_up(&mut st, true);
        let id = st.next_conn_id;
        st.next_conn_id += 1;
        let notify = Arc::new(Notify::new());
        st.conns.push(Conn { id, notify: notify.clone(), load: 0, outbox: Vec::with_capacity(self.depth) });
        self.dispatch(&mut st);
        drop(st);
        if was_down {
            self.log(
                "info",
                format!("device {} at {}:{} reachable again", self.label, self.config.host, self.config.port),
            );
        }
        Some((id, notify))
    }
}

enum Stream {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

/// Starts a connection the pool has counted as connecting.
fn spawn_connection(inner: &Arc<Inner>) {
    match tokio::runtime::Handle::try_current() {
        Ok(runtime) => {
            runtime.spawn(run_connection(inner.clone()));
        }
        // Only while the runtime itself is being dropped (a connection's cleanup runs then): nothing will be
        // served any more, but the count must not stay "connecting" forever.
        Err(_) => inner.connect_failed("the relay is stopping".to_owned()),
    }
}

/// A connection's task: connect (within the device's timeout), then serve until the connection is lost or the
/// closed pool has nothing left for it.
async fn run_connection(inner: Arc<Inner>) {
    let stream = match tokio::time::timeout(inner.config.timeout, inner.open()).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(e)) => return inner.connect_failed(e.to_string()),
        Err(_) => return inner.connect_failed("connect timed out".to_owned()),
    };
    let Some((id, notify)) = inner.connected() else { return };
    match stream {
        Stream::Plain(tcp) => serve(inner, id, notify, tcp).await,
        Stream::Tls(tls) => serve(inner, id, notify, *tls).await,
    }
}

/// Owns a connection's requests in flight and takes the connection out of the pool when its task ends, however
/// it ends (a panic included): unsent jobs go back to the queue, those in flight answer 0x0B.
struct ConnGuard {
    inner: Arc<Inner>,
    id: u64,
    inflight: InFlight,
    /// Set by a clean end (lost, bad stream, closed); still false when the task ended abnormally (a panic).
    ended: bool,
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        let inner = &self.inner;
        let (connect, orphans) = {
            let mut st = inner.lock();
            if let Some(pos) = st.conns.iter().position(|c| c.id == self.id) {
                let conn = st.conns.remove(pos);
                // Never written: safe to send on another connection, ahead of what queued after them.
                for job in conn.outbox.into_iter().rev() {
                    st.queue.push_front(job);
                }
            }
            if st.conns.is_empty() && !st.closed {
                inner.set_up(&mut st, false);
            }
            inner.dispatch(&mut st);
            (inner.want_connection(&mut st), Inner::orphans(&mut st))
        };
        if !self.ended {
            inner.metrics.upstream_fault(&inner.label, "internal_error");
        }
        if !self.inflight.entries.is_empty() {
            inner.metrics.upstream_fault(&inner.label, "connection_lost");
        }
        for entry in self.inflight.drain() {
            let _ = entry.tx.send(Err(EXC_GATEWAY_TARGET_NO_RESPONSE));
        }
        for job in orphans {
            job.answer(Err(EXC_GATEWAY_PATH_UNAVAILABLE));
        }
        if connect {
            spawn_connection(inner);
        }
    }
}

/// Why a connection's loop ended.
enum End {
    /// EOF, reset, a failed or stuck write.
    Lost,
    /// The device sent something that is not Modbus/TCP: abort, count `bad_reply`.
    BadReply,
    /// The pool is closed and this connection has nothing left.
    Closed,
}

async fn serve<S>(inner: Arc<Inner>, id: u64, notify: Arc<Notify>, mut stream: S)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let depth = inner.depth;
    let timeout = inner.config.timeout;
    let mut guard = ConnGuard { inner: inner.clone(), id, inflight: InFlight::new(depth), ended: false };
    let mut rbuf = vec![0u8; READ_BUFFER];
    let mut have = 0usize;
    let mut wbuf: Vec<u8> = Vec::with_capacity(depth.min(64) * MAX_ADU_LEN);
    let mut batch: Vec<Job> = Vec::with_capacity(depth);
    // Jobs of this connection finished since the last handover: their room goes back to the pool together.
    let mut done = 0usize;
    let sleep = tokio::time::sleep_until(Instant::now() + timeout);
    tokio::pin!(sleep);
    let mut armed: Option<Instant> = None;

    let end = 'conn: loop {
        // Handover: give back the room made, take what was handed over (and what the queue can now send).
        {
            let mut st = inner.lock();
            let closed = st.closed;
            let Some(pos) = st.conns.iter().position(|c| c.id == id) else { break 'conn End::Closed };
            st.conns[pos].load -= done;
            done = 0;
            if !st.queue.is_empty() {
                inner.dispatch(&mut st);
            }
            let conn = &mut st.conns[pos];
            std::mem::swap(&mut conn.outbox, &mut batch);
            if closed && conn.load == 0 && st.queue.is_empty() {
                break 'conn End::Closed;
            }
        }
        if !batch.is_empty() {
            let now = Instant::now();
            wbuf.clear();
            for job in batch.drain(..) {
                if job.deadline <= now {
                    inner.metrics.upstream_fault(&inner.label, "timeout");
                    done += 1;
                    job.answer(Err(EXC_GATEWAY_TARGET_NO_RESPONSE));
                    continue;
                }
                if job.tx.is_closed() {
                    // The caller went away (its client closed): the device need not do the work.
                    done += 1;
                    continue;
                }
                let tid = guard.inflight.fresh_tid();
                wbuf.extend_from_slice(&tid.to_be_bytes());
                wbuf.extend_from_slice(&job.adu[2..job.len as usize]);
                let expiry = job.deadline.min(now + timeout);
                let entry = Entry { adu: job.adu, len: job.len, sent: now, expiry, tx: job.tx };
                guard.inflight.push(tid, entry);
            }
            if !wbuf.is_empty() {
                // A device that stops reading must not hold the connection (and its callers) forever.
                let write = async {
                    stream.write_all(&wbuf).await?;
                    stream.flush().await
                };
                match tokio::time::timeout(timeout, write).await {
                    Ok(Ok(())) => {}
                    Ok(Err(_)) | Err(_) => break 'conn End::Lost,
                }
            }
            if done > 0 {
                continue;
            }
        }
        match guard.inflight.next_expiry() {
            Some(next) if armed != Some(next) => {
                sleep.as_mut().reset(next);
                armed = Some(next);
            }
            Some(_) => {}
            None => armed = None,
        }
        tokio::select! {
            biased;
            read = stream.read(&mut rbuf[have..]) => {
                let n = match read {
                    Ok(0) | Err(_) => break 'conn End::Lost,
                    Ok(n) => n,
                };
                have += n;
                let now = Instant::now();
                let mut offset = 0;
                loop {
                    match split(&rbuf[offset..have]) {
                        Split::Complete { used } => {
                            if reply(&inner, &mut guard.inflight, &rbuf[offset..offset + used], now) {
                                done += 1;
                            }
                            offset += used;
                        }
                        Split::Incomplete { .. } => break,
                        Split::Invalid(why) => {
                            inner.log(
                                "warning",
                                format!("device {}: reply stream is not Modbus/TCP ({}), connection aborted",
                                    inner.label, why.name()),
                            );
                            break 'conn End::BadReply;
                        }
                    }
                }
                rbuf.copy_within(offset..have, 0);
                have -= offset;
                // A device that never stops sending keeps this branch ready: expire here too, not only when
                // the timer's branch gets its turn.
                if armed.is_some_and(|at| at <= now) {
                    armed = None;
                    done += guard.inflight.expire(&inner, now);
                }
            }
            _ = notify.notified() => {
                // Let the other tasks ready on this worker (clients answered by the last read, say) hand over
                // their requests first: they then go out in this connection's next write, not one write each.
                tokio::task::yield_now().await;
            }
            _ = &mut sleep, if armed.is_some() => {
                armed = None;
                done += guard.inflight.expire(&inner, Instant::now());
            }
        }
    };
    guard.ended = true;
    match end {
        End::Lost => {}
        End::BadReply => inner.metrics.upstream_fault(&inner.label, "bad_reply"),
        End::Closed => {
            let _ = tokio::time::timeout(SHUTDOWN_TIMEOUT, stream.shutdown()).await;
        }
    }
    // Every loop exit comes before a batch is taken or after it is all sent: nothing is left unsent here.
    debug_assert!(batch.is_empty());
    drop(guard);
}

/// Matches one reply ADU to a request in flight; true when it answered one (which is then done).
fn reply(inner: &Inner, inflight: &mut InFlight, frame: &[u8], now: Instant) -> bool {
    let tid = u16::from_be_bytes([frame[0], frame[1]]);
    let Some(i) = inflight.find(tid) else {
        inner.metrics.upstream_fault(&inner.label, "unmatched_reply");
        return false;
    };
    let entry = &inflight.entries[i];
    let request = &entry.adu[..entry.len as usize];
    let client_tid = u16::from_be_bytes([request[0], request[1]]);
    // The engine's `response_matches`: a well-formed response that, with the client's transaction id put back,
    // `matches` the request (same unit, function or function | 0x80).
    let mut response = parse_response(frame);
    response.transaction_id = client_tid;
    let answers = response.malformed.is_none()
        && match parse_request(request) {
            Ok(parsed) => matches(&parsed, &response),
            // A malformed request forwarded in monitor mode: its header fields are all there is to match.
            Err(e) => {
                e.unit == response.unit && (response.function == e.function || response.function == e.function | 0x80)
            }
        };
    if !answers {
        // Left in flight: the request times out, as a request whose reply never came.
        inner.metrics.upstream_fault(&inner.label, "unmatched_reply");
        return false;
    }
    let entry = inflight.remove(i);
    let upstream = now.saturating_duration_since(entry.sent);
    inner.metrics.upstream_latency(&inner.label, upstream.as_secs_f64());
    if !entry.tx.is_closed() {
        let mut reply = frame.to_vec();
        reply[..2].copy_from_slice(&client_tid.to_be_bytes());
        let _ = entry.tx.send(Ok(Forwarded { reply, upstream }));
    }
    true
}
