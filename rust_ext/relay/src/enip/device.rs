//! One EtherNet/IP device of the generation in force (docs/enip-conduit.md, "Sessions", "ListIdentity",
//! "Device faults"): how many links it holds, the connect backoff, and the identity learned for ListIdentity.
//! The links themselves belong to the client connections (link.rs); a slot counts one while it lives.

use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};

use tokio::time::Instant;

use crate::config::EnipDeviceConfig;
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
    links: usize,
    backoff: std::time::Duration,
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
}

/// One link's place at the device: counted while it lives.
pub struct LinkSlot {
    device: Arc<EnipDevice>,
}

impl LinkSlot {
    pub fn device(&self) -> &Arc<EnipDevice> {
        &self.device
    }
}

impl Drop for LinkSlot {
    fn drop(&mut self) {
        todo!()
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
        })
    }

    /// A place for one more link, or why not (each refusal counted as `Refusal` says).
    pub fn open_link(self: &Arc<Self>) -> Result<LinkSlot, Refusal> {
        todo!()
    }

    /// A link registered its session: backoff reset, `upstream_up` 1.
    pub fn connected(&self) {
        todo!()
    }

    /// A connect refused or timed out, or no session registered in time: logged (warning, with `why`), counted
    /// `connect_failed`, backoff 0.1 s doubling to 5 s, `upstream_up` 0.
    pub fn connect_failed(&self, why: &str) {
        todo!()
    }

    /// A reload replaced this device (or the relay stops): no new links; open ones finish what is in flight.
    pub fn retire(&self) {
        todo!()
    }

    pub fn is_retired(&self) -> bool {
        todo!()
    }

    /// The device's identity item: learned once (ListIdentity on a short connection of its own, bounded by
    /// the device's timeout), then from the cache; None when it cannot be asked (asked again next time).
    pub async fn identity(&self) -> Option<Arc<[u8]>> {
        todo!()
    }
}
