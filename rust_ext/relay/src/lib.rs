//! zonegate's Modbus relay: listener -> engine -> device pool, on tokio (docs/relay.md).
//!
//! Python stays the control plane: it binds the listening sockets, resolves principals, writes audit
//! records, serves metrics and reloads policies; this crate does everything per request.

pub mod config;
pub mod metrics;
pub mod upstream;
