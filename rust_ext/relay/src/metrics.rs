//! Counters the relay keeps for Prometheus: updated in place on the request path, read by Python only when
//! Prometheus scrapes (`Metrics::snapshot`). Labels are names the policy gave (listener, principal, device)
//! or fixed strings: never a client address or a register number.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// (conduit, principal label, device label, function code, verdict, reason): Python's request key.
pub type RequestKey = (Arc<str>, Arc<str>, Arc<str>, u8, u8, u8);

/// (conduit, principal label, device label, function name, verdict, reason name): an EtherNet/IP message's
/// key, labelled by the service name of its deciding request (docs/enip-conduit.md, "Metrics and audit").
pub type NamedRequestKey = (Arc<str>, Arc<str>, Arc<str>, &'static str, u8, &'static str);

/// One request counter the request path keeps a handle on: counting is one atomic add, with no lock, no
/// hashing of the labels and no reference count touched (`Metrics::request_cell`).
pub type RequestCell = Arc<AtomicU64>;

/// A latency histogram the request path keeps a handle on (`Metrics::gateway_latency_cell`): observing is two
/// atomic adds, with no lock and no hashing; `snapshot` adds it to the series of the same label.
pub struct LatencyCell {
    bounds: Arc<[f64]>,
    /// Per bucket, then +Inf.
    counts: Box<[AtomicU64]>,
    sum_ns: AtomicU64,
}

impl LatencyCell {
    fn new(bounds: Arc<[f64]>) -> Self {
        let counts = (0..bounds.len() + 1).map(|_| AtomicU64::new(0)).collect();
        LatencyCell { bounds, counts, sum_ns: AtomicU64::new(0) }
    }

    pub fn observe(&self, seconds: f64) {
        // bisect_left, as `Metrics::observe`.
        let i = self.bounds.partition_point(|&b| b < seconds);
        self.counts[i].fetch_add(1, Ordering::Relaxed);
        self.sum_ns.fetch_add((seconds * 1e9) as u64, Ordering::Relaxed);
    }

    fn add_to(&self, series: &mut Series) {
        if series.is_empty() {
            series.resize(self.counts.len() + 1, 0.0);
        }
        for (s, c) in series.iter_mut().zip(self.counts.iter()) {
            *s += c.load(Ordering::Relaxed) as f64;
        }
        let last = series.len() - 1;
        series[last] += self.sum_ns.load(Ordering::Relaxed) as f64 / 1e9;
    }
}

/// A latency histogram's series: a count per bucket (non-cumulative), the +Inf count, then the sum.
pub type Series = Vec<f64>;

#[derive(Default, Clone, Debug)]
pub struct Snapshot {
    pub requests: Vec<(RequestKey, u64)>,
    pub named_requests: Vec<(NamedRequestKey, u64)>,
    pub gateway_latency: Vec<(Arc<str>, Series)>,
    pub upstream_latency: Vec<(Arc<str>, Series)>,
    pub active_connections: Vec<(Arc<str>, i64)>,
    pub handshake_failures: Vec<((Arc<str>, &'static str), u64)>,
    pub framing_errors: Vec<((Arc<str>, &'static str), u64)>,
    pub upstream_up: Vec<(Arc<str>, bool)>,
    pub upstream_faults: Vec<((Arc<str>, &'static str), u64)>,
}

#[derive(Default)]
struct Counters {
    requests: HashMap<RequestKey, u64>,
    request_cells: HashMap<RequestKey, RequestCell>,
    named_cells: HashMap<NamedRequestKey, RequestCell>,
    gateway_cells: HashMap<Arc<str>, Arc<LatencyCell>>,
    gateway_latency: HashMap<Arc<str>, Series>,
    upstream_latency: HashMap<Arc<str>, Series>,
    active_connections: HashMap<Arc<str>, i64>,
    handshake_failures: HashMap<(Arc<str>, &'static str), u64>,
    framing_errors: HashMap<(Arc<str>, &'static str), u64>,
    upstream_up: HashMap<Arc<str>, bool>,
    upstream_faults: HashMap<(Arc<str>, &'static str), u64>,
}

/// One per relay, shared by every task; survives reloads (counters are cumulative).
pub struct Metrics {
    bounds: Vec<f64>,
    /// The same bounds, shared by the latency cells.
    cell_bounds: Arc<[f64]>,
    counters: Mutex<Counters>,
}

impl Metrics {
    pub fn new(latency_bounds: Vec<f64>) -> Self {
        let cell_bounds = Arc::from(latency_bounds.as_slice());
        Metrics { bounds: latency_bounds, cell_bounds, counters: Mutex::new(Counters::default()) }
    }

    fn with<R>(&self, f: impl FnOnce(&mut Counters) -> R) -> R {
        // A panic elsewhere while holding the lock leaves plain counters: keep counting.
        let mut guard = self.counters.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut guard)
    }

    fn observe(bounds: &[f64], series: &mut Series, seconds: f64) {
        if series.is_empty() {
            series.resize(bounds.len() + 2, 0.0);
        }
        // bisect_left: the first bucket whose upper bound is >= seconds, else +Inf.
        let i = bounds.partition_point(|&b| b < seconds);
        series[i] += 1.0;
        let last = series.len() - 1;
        series[last] += seconds;
    }

    pub fn count_request(&self, key: RequestKey) {
        self.with(|c| *c.requests.entry(key).or_insert(0) += 1);
    }

    /// The counter of `key`, for a caller that counts the same key many times (`fetch_add(1, Relaxed)`);
    /// `snapshot` adds it to `count_request`'s counts.
    pub fn request_cell(&self, key: RequestKey) -> RequestCell {
        self.with(|c| c.request_cells.entry(key).or_default().clone())
    }

    /// `request_cell` for an EtherNet/IP key.
    pub fn named_request_cell(&self, key: NamedRequestKey) -> RequestCell {
        self.with(|c| c.named_cells.entry(key).or_default().clone())
    }

    /// The gateway latency histogram of `conduit`, for a caller that observes it many times.
    pub fn gateway_latency_cell(&self, conduit: &Arc<str>) -> Arc<LatencyCell> {
        let bounds = &self.cell_bounds;
        self.with(|c| {
            c.gateway_cells.entry(conduit.clone()).or_insert_with(|| Arc::new(LatencyCell::new(bounds.clone()))).clone()
        })
    }

    /// A forwarded request's time in zonegate: total minus the time at the device.
    pub fn gateway_latency(&self, conduit: &Arc<str>, seconds: f64) {
        self.with(|c| {
            let series = c.gateway_latency.entry(conduit.clone()).or_default();
            Self::observe(&self.bounds, series, seconds)
        });
    }

    pub fn upstream_latency(&self, device: &Arc<str>, seconds: f64) {
        self.with(|c| {
            let series = c.upstream_latency.entry(device.clone()).or_default();
            Self::observe(&self.bounds, series, seconds)
        });
    }

    pub fn connection_opened(&self, conduit: &Arc<str>) {
        self.with(|c| *c.active_connections.entry(conduit.clone()).or_insert(0) += 1);
    }

    pub fn connection_closed(&self, conduit: &Arc<str>) {
        self.with(|c| *c.active_connections.entry(conduit.clone()).or_insert(0) -= 1);
    }

    /// `reason`: one of Python's FAILURE_REASONS (zonegate/controlplane/tls.py).
    pub fn handshake_failure(&self, conduit: &Arc<str>, reason: &'static str) {
        self.with(|c| *c.handshake_failures.entry((conduit.clone(), reason)).or_insert(0) += 1);
    }

    /// `reason`: `protocol_id`, `length`, `overflow`, `idle`, `internal_error`, `invalid_session`.
    pub fn framing_error(&self, conduit: &Arc<str>, reason: &'static str) {
        self.with(|c| *c.framing_errors.entry((conduit.clone(), reason)).or_insert(0) += 1);
    }

    pub fn upstream_state(&self, device: &Arc<str>, up: bool) {
        self.with(|c| c.upstream_up.insert(device.clone(), up));
    }

    /// `kind`: `connect_failed`, `unavailable`, `timeout`, `connection_lost`, `unmatched_reply`, `bad_reply`,
    /// `queue_full`, `internal_error`.
    pub fn upstream_fault(&self, device: &Arc<str>, kind: &'static str) {
        self.with(|c| *c.upstream_faults.entry((device.clone(), kind)).or_insert(0) += 1);
    }

    pub fn snapshot(&self) -> Snapshot {
        self.with(|c| Snapshot {
            requests: {
                let mut requests = c.requests.clone();
                for (k, cell) in &c.request_cells {
                    *requests.entry(k.clone()).or_insert(0) += cell.load(Ordering::Relaxed);
                }
                requests.into_iter().filter(|&(_, n)| n > 0).collect()
            },
            named_requests: c
                .named_cells
                .iter()
                .map(|(k, cell)| (k.clone(), cell.load(Ordering::Relaxed)))
                .filter(|&(_, n)| n > 0)
                .collect(),
            gateway_latency: {
                let mut series = c.gateway_latency.clone();
                for (k, cell) in &c.gateway_cells {
                    cell.add_to(series.entry(k.clone()).or_default());
                }
                series.into_iter().collect()
            },
            upstream_latency: c.upstream_latency.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            active_connections: c.active_connections.iter().map(|(k, v)| (k.clone(), *v)).collect(),
            handshake_failures: c.handshake_failures.iter().map(|(k, v)| (k.clone(), *v)).collect(),
            framing_errors: c.framing_errors.iter().map(|(k, v)| (k.clone(), *v)).collect(),
            upstream_up: c.upstream_up.iter().map(|(k, v)| (k.clone(), *v)).collect(),
            upstream_faults: c.upstream_faults.iter().map(|(k, v)| (k.clone(), *v)).collect(),
        })
    }
}
