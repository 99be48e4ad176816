//! zonegate's Modbus relay: listener -> engine -> device pool, on tokio (docs/relay.md).
//!
//! Python stays the control plane: it binds the listening sockets, resolves principals, writes audit
//! records, serves metrics and reloads policies; this crate does everything per request.

pub mod config;
pub mod enip;
pub mod events;
mod listener;
pub mod metrics;
pub mod tls;
pub mod upstream;

use std::collections::HashMap;
use std::os::fd::{FromRawFd, RawFd};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use tokio::runtime::{Handle, Runtime};
use tokio::sync::{oneshot, watch, Notify};
use tokio_rustls::TlsAcceptor;
use zonegate_core::policy::Engine;

use crate::config::{DeviceConfig, EnipDeviceConfig, ListenerKind, RelayConfig};
use crate::enip::device::EnipDevice;
use crate::events::{Event, Events};
use crate::metrics::Metrics;
use crate::upstream::DevicePool;

/// No route: the engine's unknown device, and the metric label `unknown`.
pub const NO_DEVICE: u32 = u32::MAX;
/// How long a stopping relay waits for the devices' shared EtherNet/IP sessions to unregister.
const SHARED_CLOSE_TIMEOUT: Duration = Duration::from_secs(1);

/// One listener's settings in a generation, with what the request path needs worked out in advance.
pub struct ListenerGen {
    pub label: Arc<str>,
    pub kind: ListenerKind,
    pub tls: Option<TlsAcceptor>,
    pub max_outstanding: usize,
    pub idle_timeout: Duration,
    pub request_timeout: Duration,
    /// Unit id -> index into the generation's devices (the first of the listener holding it), or `NO_DEVICE`.
    pub routes: Box<[u32; 256]>,
    /// EtherNet/IP listeners: index into the generation's `enip_devices` of the listener's device.
    pub enip_device: Option<usize>,
}

/// Everything a policy decides, swapped as one: engine, listeners' settings and TLS, device pools.
pub struct Generation {
    pub number: u64,
    pub engine: Arc<Engine>,
    pub config: Arc<RelayConfig>,
    pub listeners: Vec<ListenerGen>,
    pub pools: Vec<Arc<DevicePool>>,
    /// Per device: the engine's index (`NO_DEVICE` when the engine does not know it).
    pub device_engine: Vec<u32>,
    pub device_labels: Vec<Arc<str>>,
    /// The label of an unresolved principal or an unrouted request, made once.
    pub unknown: Arc<str>,
    /// EtherNet/IP devices, as `config.enip_devices`: links, backoff and learned identity.
    pub enip_devices: Vec<Arc<EnipDevice>>,
}

impl Generation {
    fn device(&self, name: &str) -> Option<usize> {
        self.config.devices.iter().position(|d| d.name == name)
    }

    fn enip_device(&self, name: &str) -> Option<usize> {
        self.config.enip_devices.iter().position(|d| d.name == name)
    }
}

/// State every task shares with the `Relay` handle.
pub struct Shared {
    pub metrics: Arc<Metrics>,
    pub events: Arc<Events>,
    generation: RwLock<Arc<Generation>>,
    /// The number of the generation in force, read per request batch without taking the lock.
    generation_number: AtomicU64,
    identify: Mutex<HashMap<u64, oneshot::Sender<Option<String>>>>,
    next_conn: AtomicU64,
    next_token: AtomicU64,
    stop: watch::Sender<bool>,
    /// Per open connection: told when the relay stops (taken, and the map left empty, by `Relay::stop`).
    stop_notices: Mutex<Option<HashMap<u64, oneshot::Sender<()>>>>,
    connections: AtomicUsize,
    connections_done: Notify,
}

impl Shared {
    pub fn current(&self) -> Arc<Generation> {
        self.generation.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn generation_number(&self) -> u64 {
        self.generation_number.load(Ordering::Acquire)
    }

    pub(crate) fn next_conn_id(&self) -> u64 {
        self.next_conn.fetch_add(1, Ordering::Relaxed)
    }

    /// Registers a connection waiting for its principal; the receiver resolves when Python answers.
    pub(crate) fn wait_identify(&self, conn_id: u64) -> oneshot::Receiver<Option<String>> {
        let (tx, rx) = oneshot::channel();
        self.identify.lock().unwrap_or_else(|e| e.into_inner()).insert(conn_id, tx);
        rx
    }

    pub(crate) fn forget_identify(&self, conn_id: u64) {
        self.identify.lock().unwrap_or_else(|e| e.into_inner()).remove(&conn_id);
    }

    pub(crate) fn stop_signal(&self) -> watch::Receiver<bool> {
        self.stop.subscribe()
    }

    /// Resolves when the relay stops (at once if it has).
    pub(crate) fn stop_notice(&self, conn_id: u64) -> oneshot::Receiver<()> {
        let (tx, rx) = oneshot::channel();
        if let Some(map) = self.stop_notices.lock().unwrap_or_else(|e| e.into_inner()).as_mut() {
            map.insert(conn_id, tx);
        }
        // Stopped already: `tx` is dropped, which resolves `rx` too.
        rx
    }

    pub(crate) fn forget_stop_notice(&self, conn_id: u64) {
        if let Some(map) = self.stop_notices.lock().unwrap_or_else(|e| e.into_inner()).as_mut() {
            map.remove(&conn_id);
        }
    }

    fn signal_stop(&self) {
        let _ = self.stop.send(true);
        let notices = self.stop_notices.lock().unwrap_or_else(|e| e.into_inner()).take();
        for (_, tx) in notices.into_iter().flatten() {
            let _ = tx.send(());
        }
    }

    pub(crate) fn connection_started(&self) {
        self.connections.fetch_add(1, Ordering::AcqRel);
    }

    pub(crate) fn connection_ended(&self) {
        if self.connections.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.connections_done.notify_waiters();
        }
    }
}

/// The relay: a tokio runtime running one accept loop per listener, and the generation in force.
pub struct Relay {
    shared: Arc<Shared>,
    handle: Handle,
    runtime: Mutex<Option<Runtime>>,
    listener_names: Vec<String>,
}

fn check_config(config: &RelayConfig) -> Result<(), String> {
    for l in &config.listeners {
        let count = if l.kind.is_enip() { config.enip_devices.len() } else { config.devices.len() };
        if let Some(&i) = l.devices.iter().find(|&&i| i >= count) {
            return Err(format!("listener {}: device index {i} out of range", l.name));
        }
        if l.kind.is_tls() && l.tls.is_none() {
            return Err(format!("listener {}: a TLS listener without TLS material", l.name));
        }
    }
    let mut names: Vec<&str> = config.listeners.iter().map(|l| l.name.as_str()).collect();
    names.sort_unstable();
    if names.windows(2).any(|w| w[0] == w[1]) {
        return Err("listener names are not unique".to_owned());
    }
    Ok(())
}

/// Equal settings keep the pool (and its connections) across a reload; the engine index lives in the generation.
fn same_device(old: &DeviceConfig, new: &DeviceConfig) -> bool {
    let mut old = old.clone();
    old.engine_index = new.engine_index;
    old == *new
}

fn same_enip_device(old: &EnipDeviceConfig, new: &EnipDeviceConfig) -> bool {
    let mut old = old.clone();
    old.engine_index = new.engine_index;
    old == *new
}

/// Builds a generation; must run inside the runtime (pools may start tasks). Err names the listener or device
/// whose TLS material does not load. Pools of `old` whose settings are unchanged are reused.
fn build_generation(
    number: u64,
    engine: Arc<Engine>,
    config: RelayConfig,
    old: Option<&Generation>,
    metrics: &Arc<Metrics>,
    events: &Arc<Events>,
) -> Result<Generation, String> {
    check_config(&config)?;
    let mut listeners = Vec::with_capacity(config.listeners.len());
    for l in &config.listeners {
        let tls = match &l.tls {
            Some(material) if l.kind.is_tls() => {
                Some(TlsAcceptor::from(tls::server_config(material).map_err(|e| format!("listener {}: {e}", l.name))?))
            }
            _ => None,
        };
        let mut routes = Box::new([NO_DEVICE; 256]);
        for (unit, route) in routes.iter_mut().enumerate().filter(|_| !l.kind.is_enip()) {
            if let Some(&d) = l.devices.iter().find(|&&d| config.devices[d].holds_unit(unit as u8)) {
                *route = d as u32;
            }
        }
        listeners.push(ListenerGen {
            label: Arc::from(l.name.as_str()),
            kind: l.kind,
            tls,
            max_outstanding: l.max_outstanding.max(1),
            idle_timeout: l.idle_timeout,
            request_timeout: l.request_timeout,
            routes,
            enip_device: if l.kind.is_enip() { l.devices.first().copied() } else { None },
        });
    }
    let mut pools = Vec::with_capacity(config.devices.len());
    for d in &config.devices {
        let kept = old.and_then(|g| {
            let i = g.device(&d.name)?;
            same_device(&g.config.devices[i], d).then(|| g.pools[i].clone())
        });
        let pool = match kept {
            Some(pool) => pool,
            None => {
                if let Some(material) = &d.tls {
                    // Checked here too so the error names the device whatever the pool reports.
                    tls::client_config(material).map_err(|e| format!("device {}: {e}", d.name))?;
                }
                let pool = DevicePool::new(Arc::new(d.clone()), metrics.clone())
                    .map_err(|e| format!("device {}: {e}", d.name))?;
                let events = events.clone();
                pool.set_log(Arc::new(move |level, message| events.log(level, message)));
                pool
            }
        };
        pools.push(pool);
    }
    let mut enip_devices = Vec::with_capacity(config.enip_devices.len());
    for d in &config.enip_devices {
        let kept = old.and_then(|g| {
            let i = g.enip_device(&d.name)?;
            same_enip_device(&g.config.enip_devices[i], d).then(|| g.enip_devices[i].clone())
        });
        enip_devices.push(kept.unwrap_or_else(|| {
            EnipDevice::new(Arc::new(d.clone()), Arc::from(d.name.as_str()), metrics.clone(), events.clone())
        }));
    }
    Ok(Generation {
        number,
        enip_devices,
        engine,
        device_engine: config.devices.iter().map(|d| d.engine_index).collect(),
        device_labels: config.devices.iter().map(|d| Arc::from(d.name.as_str())).collect(),
        unknown: Arc::from("unknown"),
        listeners,
        pools,
        config: Arc::new(config),
    })
}

/// Whether `fd` is a socket in the listening state (checked before the relay takes it over).
fn is_listening_socket(fd: RawFd) -> bool {
    if fd < 0 {
        return false;
    }
    let mut value: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `value` and `len` are live and sized for SO_ACCEPTCONN's int; a bad fd only makes the call fail.
    let rc = unsafe {
        libc::getsockopt(fd, libc::SOL_SOCKET, libc::SO_ACCEPTCONN, (&mut value as *mut libc::c_int).cast(), &mut len)
    };
    rc == 0 && value != 0
}

/// Pools of `old` that `new` does not keep: they finish what is in flight, then close.
fn retire(old: &Generation, new: &Generation) {
    for pool in &old.pools {
        if !new.pools.iter().any(|p| Arc::ptr_eq(p, pool)) {
            pool.close();
        }
    }
    for device in &old.enip_devices {
        if !new.enip_devices.iter().any(|d| Arc::ptr_eq(d, device)) {
            device.retire();
        }
    }
}

impl Relay {
    /// Starts the runtime and one accept loop per listener; `fds[i]` is `config.listeners[i]`'s bound, listening
    /// TCP socket. The relay owns the fds once this returns Ok; on Err they are left to the caller.
    pub fn start(engine: Arc<Engine>, config: RelayConfig, fds: &[RawFd], threads: usize) -> Result<Relay, String> {
        if fds.len() != config.listeners.len() {
            return Err(format!("{} listening sockets for {} listeners", fds.len(), config.listeners.len()));
        }
        for (l, &fd) in config.listeners.iter().zip(fds) {
            if !is_listening_socket(fd) {
                return Err(format!("listener {}: file descriptor {fd} is not a listening socket", l.name));
            }
        }
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads.max(1))
            .thread_name("zonegate-relay")
            .enable_all()
            .build()
            .map_err(|e| format!("relay runtime: {e}"))?;
        let metrics = Arc::new(Metrics::new(config.latency_bounds.clone()));
        let listener_names: Vec<String> = config.listeners.iter().map(|l| l.name.clone()).collect();
        let events = Arc::new(Events::new().map_err(|e| format!("relay event fd: {e}"))?);
        let generation = {
            let _guard = runtime.enter();
            build_generation(1, engine, config, None, &metrics, &events)?
        };
        let (stop, _) = watch::channel(false);
        let shared = Arc::new(Shared {
            metrics,
            events,
            generation: RwLock::new(Arc::new(generation)),
            generation_number: AtomicU64::new(1),
            identify: Mutex::new(HashMap::new()),
            next_conn: AtomicU64::new(1),
            next_token: AtomicU64::new(1),
            stop,
            stop_notices: Mutex::new(Some(HashMap::new())),
            connections: AtomicUsize::new(0),
            connections_done: Notify::new(),
        });
        let handle = runtime.handle().clone();
        {
            let _guard = runtime.enter();
            for (index, &fd) in fds.iter().enumerate() {
                // SAFETY: the caller hands over a listening socket it no longer uses; from here it is ours.
                let std_listener = unsafe { std::net::TcpListener::from_raw_fd(fd) };
                let listener =
                    std_listener.set_nonblocking(true).and_then(|()| tokio::net::TcpListener::from_std(std_listener));
                match listener {
                    Ok(listener) => {
                        runtime.spawn(listener::accept_loop(shared.clone(), index, listener));
                    }
                    Err(e) => {
                        shared.events.log("error", format!("listener {}: cannot accept: {e}", listener_names[index]))
                    }
                }
            }
        }
        Ok(Relay { shared, handle, runtime: Mutex::new(Some(runtime)), listener_names })
    }

    pub fn event_fd(&self) -> RawFd {
        self.shared.events.fd()
    }

    pub fn events(&self) -> Vec<Event> {
        self.shared.events.take()
    }

    /// Python's answer to an `identify` event: the principal's name, or None when unknown.
    pub fn identify(&self, conn_id: u64, principal: Option<String>) {
        let tx = self.shared.identify.lock().unwrap_or_else(|e| e.into_inner()).remove(&conn_id);
        if let Some(tx) = tx {
            let _ = tx.send(principal);
        }
    }

    /// Builds the new generation first; on Err the old one stays in force. Listeners are bound at start, so
    /// the new configuration must name the same listeners in the same order.
    pub fn reload(&self, engine: Arc<Engine>, config: RelayConfig) -> Result<(), String> {
        let names: Vec<&str> = config.listeners.iter().map(|l| l.name.as_str()).collect();
        if names != self.listener_names.iter().map(String::as_str).collect::<Vec<_>>() {
            return Err(format!(
                "listeners changed ({} instead of {}): they take effect at the next restart",
                names.join(", "),
                self.listener_names.join(", ")
            ));
        }
        if self.stopped() {
            return Err("the relay is stopped".to_owned());
        }
        let old = self.shared.current();
        let new = {
            let _guard = self.handle.enter();
            Arc::new(build_generation(
                old.number + 1,
                engine,
                config,
                Some(&old),
                &self.shared.metrics,
                &self.shared.events,
            )?)
        };
        let number = new.number;
        *self.shared.generation.write().unwrap_or_else(|e| e.into_inner()) = new.clone();
        self.shared.generation_number.store(number, Ordering::Release);
        retire(&old, &new);
        Ok(())
    }

    /// Forwards `adu` to the named device outside any client connection (the OPC UA converter); the answer
    /// comes as a `Reply` event with the returned token.
    pub fn submit(&self, device: &str, adu: Vec<u8>) -> Result<u64, String> {
        match zonegate_core::modbus::frame::split(&adu) {
            zonegate_core::modbus::frame::Split::Complete { used } if used == adu.len() => {}
            _ => return Err("not one complete Modbus/TCP ADU".to_owned()),
        }
        if self.stopped() {
            return Err("the relay is stopped".to_owned());
        }
        let generation = self.shared.current();
        let index = generation.device(device).ok_or_else(|| format!("unknown device {device}"))?;
        let pool = generation.pools[index].clone();
        let timeout = generation.config.devices[index].timeout;
        let token = self.shared.next_token.fetch_add(1, Ordering::Relaxed);
        let shared = self.shared.clone();
        self.handle.spawn(async move {
            let deadline = tokio::time::Instant::now() + timeout;
            // The pool answers by `deadline` (0x0B past it).
            let event = match pool.forward(&adu, deadline).await {
                Ok(f) => Event::Reply { token, adu: Some(f.reply), exception: None },
                Err(code) => Event::Reply { token, adu: None, exception: Some(code) },
            };
            shared.events.push(event);
        });
        Ok(token)
    }

    fn stopped(&self) -> bool {
        self.runtime.lock().unwrap_or_else(|e| e.into_inner()).is_none()
    }

    pub fn snapshot(&self) -> metrics::Snapshot {
        self.shared.metrics.snapshot()
    }

    /// Stops accepting, lets connections answer what they forwarded for up to `timeout`, then closes everything.
    /// Blocks the calling thread (never a runtime thread). Idempotent.
    pub fn stop(&self, timeout: Duration) {
        let Some(runtime) = self.runtime.lock().unwrap_or_else(|e| e.into_inner()).take() else { return };
        self.shared.signal_stop();
        let shared = self.shared.clone();
        runtime.block_on(async move {
            let _ = tokio::time::timeout(timeout, async {
                loop {
                    let done = shared.connections_done.notified();
                    if shared.connections.load(Ordering::Acquire) == 0 {
                        break;
                    }
                    done.await;
                }
            })
            .await;
        });
        let generation = self.shared.current();
        for pool in &generation.pools {
            pool.close();
        }
        for device in &generation.enip_devices {
            device.retire();
        }
        // The devices' shared sessions answer what is in flight and unregister (bounded).
        let sessions: Vec<_> = generation.enip_devices.iter().filter_map(|d| d.take_shared_task()).collect();
        runtime.block_on(async move {
            let _ = tokio::time::timeout(SHARED_CLOSE_TIMEOUT, async {
                for task in sessions {
                    let _ = task.await;
                }
            })
            .await;
        });
        // Tasks still running (connections past the timeout, pools) are dropped with their sockets.
        runtime.shutdown_timeout(Duration::from_millis(200));
        // Connections that never got an answer to `identify` will not get one now.
        self.shared.identify.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.lock().unwrap_or_else(|e| e.into_inner()).take() {
            self.shared.signal_stop();
            runtime.shutdown_background();
        }
    }
}
