//! One EtherNet/IP device of the generation in force (docs/enip-conduit.md, "Sessions", "ListIdentity",
//! "Device faults"; docs/relay.md, "Shared session"): how many links it holds, the connect backoff, the
//! identity learned for ListIdentity, and the shared session's task. Dedicated links belong to the client
//! connections (link.rs), the shared one to its own task (shared.rs); a slot counts one while it lives.

use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::{timeout, Instant};

use super::frames;
use super::link::{Link, Pending};
use super::shared;
use crate::config::{EnipDeviceConfig, BACKOFF_FIRST, BACKOFF_MAX};
use crate::events::Events;
use crate::metrics::Metrics;

/// Why no link could be opened.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// Retired by a reload, or backing off after a connect failure (counted `unavailable`): the gateway's
    /// answer (0x01 / 0x0204).
    Unavailable,
    /// `max_connections` links already (counted `queue_full`): general status 0x02.
    Full,
}

#[derive(Default)]
struct State {
    /// Every live link, the shared session's included; `own`: the clients' own links among them.
    links: usize,
    own: usize,
    backoff: Duration,
    down_until: Option<Instant>,
    up: Option<bool>,
}

pub struct EnipDevice {
    pub config: Arc<EnipDeviceConfig>,
    pub label: Arc<str>,
    pub metrics: Arc<Metrics>,
    pub events: Arc<Events>,
    state: Mutex<State>,
    retired: AtomicBool,
    /// The identity item learned from the device; the lock is held while asking, so one asks at a time.
    identity: tokio::sync::Mutex<Option<Arc<[u8]>>>,
    /// Attempts to learn the identity that ended: a caller that waited on one takes its answer, as the
    /// Python conduit's waiters do, instead of asking once more each.
    asked: AtomicU64,
    /// The shared session's task, while one runs (a send that fails means it ended: another is started).
    shared: Mutex<Option<SharedTask>>,
    /// Tells the shared session's task that the device was retired.
    retired_tx: watch::Sender<bool>,
}

struct SharedTask {
    tx: mpsc::UnboundedSender<Pending>,
    task: JoinHandle<()>,
}

/// One link's place at the device: counted while it lives.
pub struct LinkSlot {
    device: Arc<EnipDevice>,
    own: bool,
}

impl LinkSlot {
    pub fn device(&self) -> &Arc<EnipDevice> {
        &self.device
    }
}

impl Drop for LinkSlot {
    fn drop(&mut self) {
        let mut st = self.device.lock();
        st.links = st.links.saturating_sub(1);
        if self.own {
            st.own = st.own.saturating_sub(1);
        }
    }
}

impl EnipDevice {
    pub fn new(
        config: Arc<EnipDeviceConfig>,
        label: Arc<str>,
        metrics: Arc<Metrics>,
        events: Arc<Events>,
    ) -> Arc<EnipDevice> {
        Arc::new(EnipDevice {
            config,
            label,
            metrics,
            events,
            state: Mutex::new(State::default()),
            retired: AtomicBool::new(false),
            identity: tokio::sync::Mutex::new(None),
            asked: AtomicU64::new(0),
            shared: Mutex::new(None),
            retired_tx: watch::channel(false).0,
        })
    }

    /// Whether clients without connections of their own share one session here: from `max_connections` 2
    /// on (the shared session is one of them). A device that takes one session keeps it for one client at a
    /// time, as the Python conduit does, so that a client can still open connections there.
    pub fn shares(&self) -> bool {
        self.config.max_connections >= 2
    }

    /// Sends an unconnected message on the device's shared session, starting the session's task when none
    /// runs (it takes a link slot: refused as `open_link` refuses; the message is then dropped unanswered,
    /// for the caller to answer). Must be called on the relay's runtime.
    pub(crate) fn share(self: &Arc<Self>, mut pending: Pending) -> Result<(), Refusal> {
        let mut running = self.shared.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(task) = running.as_ref() {
            match task.tx.send(pending) {
                Ok(()) => return Ok(()),
                // The task ended (its link did) since: start another.
                Err(mpsc::error::SendError(back)) => pending = back,
            }
        }
        let slot = match self.take_slot(false) {
            Ok(slot) => slot,
            Err(refusal) => {
                // Not for the shared session to answer.
                pending.reply_to = None;
                return Err(refusal);
            }
        };
        let (tx, rx) = mpsc::unbounded_channel();
        // A fresh channel whose receiver is alive: the send cannot fail.
        let _ = tx.send(pending);
        let task = tokio::spawn(shared::run(Link::open(slot), rx, self.retired_tx.subscribe()));
        *running = Some(SharedTask { tx, task });
        Ok(())
    }

    /// The shared session's task, to wait for it as the relay stops (after `retire`).
    pub fn take_shared_task(&self) -> Option<JoinHandle<()>> {
        let mut running = self.shared.lock().unwrap_or_else(|e| e.into_inner());
        running.take().map(|t| t.task)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Plain counters and times: a panic elsewhere while holding the lock leaves nothing half done.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A place for one more link of a client's own, or why not (each refusal counted as `Refusal` says).
    /// Where the device shares a session, one of its `max_connections` is kept for that session whether or
    /// not it runs: clients holding connections never take the last one from those that hold none.
    pub fn open_link(self: &Arc<Self>) -> Result<LinkSlot, Refusal> {
        self.take_slot(true)
    }

    fn take_slot(self: &Arc<Self>, own: bool) -> Result<LinkSlot, Refusal> {
        let max = self.config.max_connections;
        let refusal = {
            let mut st = self.lock();
            if self.is_retired() || st.down_until.is_some_and(|until| Instant::now() < until) {
                Refusal::Unavailable
            } else if st.links >= max || (own && self.shares() && st.own >= max - 1) {
                Refusal::Full
            } else {
                st.links += 1;
                st.own += usize::from(own);
                return Ok(LinkSlot { device: self.clone(), own });
            }
        };
        let kind = match refusal {
            Refusal::Unavailable => "unavailable",
            Refusal::Full => "queue_full",
        };
        self.metrics.upstream_fault(&self.label, kind);
        Err(refusal)
    }

    /// A link registered its session: backoff reset, `upstream_up` 1.
    pub fn connected(&self) {
        let mut st = self.lock();
        st.backoff = Duration::ZERO;
        st.down_until = None;
        self.set_up(&mut st, true);
    }

    /// A connect refused or timed out, or no session registered in time: logged (warning, with `why`), counted
    /// `connect_failed`, backoff 0.1 s doubling to 5 s, `upstream_up` 0.
    pub fn connect_failed(&self, why: &str) {
        {
            let mut st = self.lock();
            st.backoff = if st.backoff.is_zero() { BACKOFF_FIRST } else { (st.backoff * 2).min(BACKOFF_MAX) };
            st.down_until = Some(Instant::now() + st.backoff);
            self.set_up(&mut st, false);
        }
        let why = if why.is_empty() { "no session" } else { why };
        self.events.log(
            "warning",
            format!("device {} at {}:{} unreachable: {}", self.label, self.config.host, self.config.port, why),
        );
        self.metrics.upstream_fault(&self.label, "connect_failed");
    }

    /// `upstream_up` is written only when it changes.
    fn set_up(&self, st: &mut State, up: bool) {
        if st.up != Some(up) {
            st.up = Some(up);
            self.metrics.upstream_state(&self.label, up);
        }
    }

    /// A reload replaced this device (or the relay stops): no new links; open ones finish what is in flight.
    pub fn retire(&self) {
        self.retired.store(true, Ordering::Release);
        self.retired_tx.send_replace(true);
    }

    pub fn is_retired(&self) -> bool {
        self.retired.load(Ordering::Acquire)
    }

    /// The device's identity item: learned once (ListIdentity on a short connection of its own, bounded by
    /// the device's timeout), then from the cache; None when it cannot be asked (asked again next time).
    pub async fn identity(&self) -> Option<Arc<[u8]>> {
        let seen = self.asked.load(Ordering::Acquire);
        let mut cached = self.identity.lock().await;
        if let Some(identity) = cached.as_ref() {
            return Some(identity.clone());
        }
        if self.asked.load(Ordering::Acquire) != seen {
            // Someone asked while this caller waited, and learned nothing: the same answer, at once.
            return None;
        }
        let learned = match self.ask_identity().await {
            Ok(Some(item)) => Some(Arc::<[u8]>::from(item)),
            Ok(None) => {
                self.no_identity("the reply holds no identity item");
                None
            }
            Err(e) => {
                self.no_identity(&e.to_string());
                None
            }
        };
        self.asked.fetch_add(1, Ordering::Release);
        cached.clone_from(&learned);
        learned
    }

    fn no_identity(&self, why: &str) {
        self.events.log("info", format!("device {}: no identity learned: {}", self.label, why));
    }

    /// One ListIdentity on a connection of its own; each step bounded by the device's timeout.
    async fn ask_identity(&self) -> io::Result<Option<Vec<u8>>> {
        let limit = self.config.timeout;
        let timed_out = |_| io::Error::new(io::ErrorKind::TimedOut, "timed out");
        let mut stream = timeout(limit, TcpStream::connect((self.config.host.as_str(), self.config.port)))
            .await
            .map_err(timed_out)??;
        timeout(limit, stream.write_all(&frames::list_identity_request())).await.map_err(timed_out)??;
        let mut reply = vec![0u8; frames::HEADER_LEN];
        timeout(limit, stream.read_exact(&mut reply)).await.map_err(timed_out)??;
        let length = frames::header(&reply).length as usize;
        reply.resize(frames::HEADER_LEN + length, 0);
        timeout(limit, stream.read_exact(&mut reply[frames::HEADER_LEN..])).await.map_err(timed_out)??;
        Ok(frames::identity_item(&reply))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use tokio::net::TcpListener;

    use super::*;
    use crate::events::Event;

    fn device(port: u16, max_connections: usize) -> Arc<EnipDevice> {
        let config = EnipDeviceConfig {
            name: "press-plc".into(),
            host: "127.0.0.1".into(),
            port,
            timeout: Duration::from_millis(300),
            max_connections,
            engine_index: 0,
        };
        EnipDevice::new(
            Arc::new(config),
            Arc::from("press-plc"),
            Arc::new(Metrics::new(vec![0.1])),
            Arc::new(Events::new().unwrap()),
        )
    }

    fn faults(device: &EnipDevice, kind: &str) -> u64 {
        let snapshot = device.metrics.snapshot();
        snapshot.upstream_faults.iter().find(|((_, k), _)| *k == kind).map_or(0, |(_, n)| *n)
    }

    fn up(device: &EnipDevice) -> Option<bool> {
        device.metrics.snapshot().upstream_up.first().map(|(_, up)| *up)
    }

    fn logs(device: &EnipDevice) -> Vec<(&'static str, String)> {
        let events = device.events.take().into_iter();
        events
            .filter_map(|e| if let Event::Log { level, message } = e { Some((level, message)) } else { None })
            .collect()
    }

    /// The backoff as if it had run out: what a later `open_link` would see.
    fn expire_backoff(device: &EnipDevice) {
        device.lock().down_until = Some(Instant::now());
    }

    #[test]
    fn own_links_take_every_slot_but_the_shared_session_s() {
        let device = device(1, 3);
        let a = device.open_link().unwrap();
        let b = device.open_link().unwrap();
        assert_eq!(device.open_link().err(), Some(Refusal::Full));
        assert_eq!(faults(&device, "queue_full"), 1);
        let shared = device.take_slot(false).unwrap();
        assert_eq!(device.take_slot(false).err(), Some(Refusal::Full));
        drop(a);
        let c = device.open_link().unwrap();
        assert!(Arc::ptr_eq(c.device(), &device));
        drop((b, c, shared));
        let st = device.lock();
        assert_eq!((st.links, st.own), (0, 0));
    }

    #[test]
    fn a_device_of_one_session_gives_it_to_one_client_at_a_time() {
        let device = device(1, 1);
        let a = device.open_link().unwrap();
        assert_eq!(device.open_link().err(), Some(Refusal::Full));
        drop(a);
        assert!(device.open_link().is_ok());
    }

    #[test]
    fn connect_failures_back_off_doubling_to_five_seconds() {
        let device = device(1, 3); // two links of clients' own (the third slot is the shared session's)
        let slot = device.open_link().unwrap();
        let mut expected = Vec::new();
        let mut got = Vec::new();
        for i in 0..8u32 {
            device.connect_failed("connection refused");
            got.push(device.lock().backoff);
            expected.push((BACKOFF_FIRST * 2u32.pow(i)).min(BACKOFF_MAX));
            assert_eq!(device.open_link().err(), Some(Refusal::Unavailable));
            expire_backoff(&device);
        }
        assert_eq!(got, expected);
        assert_eq!(*got.last().unwrap(), Duration::from_secs(5));
        assert_eq!((faults(&device, "connect_failed"), faults(&device, "unavailable")), (8, 8));
        assert_eq!(up(&device), Some(false));
        let logs = logs(&device);
        assert_eq!(logs.len(), 8);
        assert_eq!(logs[0], ("warning", "device press-plc at 127.0.0.1:1 unreachable: connection refused".to_string()));
        // the backoff over, a link opens again; a registered session resets the backoff
        let again = device.open_link().unwrap();
        device.connected();
        assert_eq!(up(&device), Some(true));
        let state = device.lock();
        assert_eq!((state.backoff, state.down_until), (Duration::ZERO, None));
        drop(state);
        device.connect_failed("");
        assert_eq!(device.lock().backoff, BACKOFF_FIRST);
        assert!(logs_end_with(&device, "unreachable: no session"));
        drop((slot, again));
    }

    fn logs_end_with(device: &EnipDevice, tail: &str) -> bool {
        logs(device).last().is_some_and(|(_, m)| m.ends_with(tail))
    }

    #[test]
    fn upstream_up_is_written_only_on_change() {
        let device = device(1, 1);
        device.connected();
        device.metrics.upstream_state(&device.label, false); // so that a second write would show
        device.connected();
        assert_eq!(up(&device), Some(false));
        device.connect_failed("x");
        device.metrics.upstream_state(&device.label, true);
        device.connect_failed("x");
        assert_eq!(up(&device), Some(true));
    }

    #[test]
    fn a_retired_device_opens_no_link() {
        let device = device(1, 1);
        let open = device.open_link().unwrap();
        device.retire();
        assert!(device.is_retired());
        assert_eq!(device.open_link().err(), Some(Refusal::Unavailable));
        assert_eq!(faults(&device, "unavailable"), 1);
        drop(open);
        assert_eq!(device.lock().links, 0);
    }

    const IDENTITY: &[u8] = b"\x01\x00\x00\x02\xaf\x12\xc0\xa8\x0a\x0c\0\0\0\0\0\0\0\0\x01\x00\x0e\x00\x5a\x00\x0b\x02\x30\x00\x78\x56\x34\x12\x07PLC-5/1\x03";

    /// A device answering every ListIdentity with `IDENTITY` (or, when `answer` is false, holding the
    /// connection open and saying nothing); counts the connections it accepted.
    async fn identity_device(answer: bool) -> (u16, Arc<AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            let mut silent = Vec::new();
            while let Ok((mut stream, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                if !answer {
                    silent.push(stream);
                    continue;
                }
                tokio::spawn(async move {
                    let mut request = [0u8; frames::HEADER_LEN];
                    if stream.read_exact(&mut request).await.is_err() {
                        return;
                    }
                    assert_eq!(request.to_vec(), frames::list_identity_request());
                    let mut reply = frames::list_identity_request();
                    reply.extend_from_slice(&1u16.to_le_bytes());
                    reply.extend_from_slice(&frames::ITEM_IDENTITY.to_le_bytes());
                    reply.extend_from_slice(&(IDENTITY.len() as u16).to_le_bytes());
                    reply.extend_from_slice(IDENTITY);
                    let length = (reply.len() - frames::HEADER_LEN) as u16;
                    reply[2..4].copy_from_slice(&length.to_le_bytes());
                    let _ = stream.write_all(&reply).await;
                });
            }
        });
        (port, accepted)
    }

    #[tokio::test]
    async fn identity_is_learned_once_then_cached() {
        let (port, accepted) = identity_device(true).await;
        let device = device(port, 1);
        let first = timeout(Duration::from_secs(5), device.identity()).await.unwrap();
        assert_eq!(first.as_deref(), Some(IDENTITY));
        let second = timeout(Duration::from_secs(5), device.identity()).await.unwrap();
        assert_eq!(second.as_deref(), Some(IDENTITY));
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
        assert!(logs(&device).is_empty());
    }

    #[tokio::test]
    async fn a_dead_port_gives_none_and_is_asked_again() {
        let port = {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            listener.local_addr().unwrap().port()
        };
        let device = device(port, 1);
        assert_eq!(timeout(Duration::from_secs(5), device.identity()).await.unwrap(), None);
        assert_eq!(timeout(Duration::from_secs(5), device.identity()).await.unwrap(), None);
        let logs = logs(&device);
        assert_eq!(logs.len(), 2, "{logs:?}");
        assert!(logs
            .iter()
            .all(|(level, m)| *level == "info" && m.starts_with("device press-plc: no identity learned: ")));
    }

    #[tokio::test]
    async fn a_silent_device_gives_none_within_its_timeout_and_is_asked_again() {
        let (port, accepted) = identity_device(false).await;
        let device = device(port, 1);
        let started = Instant::now();
        assert_eq!(timeout(Duration::from_secs(5), device.identity()).await.unwrap(), None);
        assert!(started.elapsed() < Duration::from_secs(2));
        assert_eq!(timeout(Duration::from_secs(5), device.identity()).await.unwrap(), None);
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn callers_waiting_on_one_attempt_share_its_answer() {
        let (port, accepted) = identity_device(false).await;
        let device = device(port, 1);
        let (a, b) = tokio::join!(device.identity(), device.identity());
        assert_eq!((a, b), (None, None));
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
    }
}
