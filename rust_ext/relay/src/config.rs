//! What the relay runs from: listeners, devices and their TLS material, copied out of the loaded policy by the
//! Python control plane (zonegate/dataplane/rust_relay.py). Plain data: a reload builds a new `RelayConfig`.

use std::time::Duration;

/// PEM bytes of one TLS endpoint (read by Python after checking the key file is 0600; never logged).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsMaterial {
    /// Own certificate chain, leaf first.
    pub cert_pem: Vec<u8>,
    /// Own private key (PKCS#8, SEC1 or PKCS#1).
    pub key_pem: Vec<u8>,
    /// Trusted CA certificates: the peer's whole chain must end at one of them.
    pub ca_pem: Vec<u8>,
    /// Certificate revocation lists (PEM), checked for the peer's end-entity certificate.
    pub crl_pem: Option<Vec<u8>>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ListenerKind {
    /// Modbus/TCP Security server, north side: principals from client certificates.
    ModbusTls,
    /// Plain Modbus/TCP server, zone side: principals from source addresses.
    Modbus,
    /// EtherNet/IP over TLS (the CIP Security transport), north side: principals from client certificates.
    EnipTls,
    /// Plain EtherNet/IP server, zone side: principals from source addresses.
    Enip,
}

impl ListenerKind {
    pub const fn is_enip(self) -> bool {
        matches!(self, ListenerKind::EnipTls | ListenerKind::Enip)
    }

    pub const fn is_tls(self) -> bool {
        matches!(self, ListenerKind::ModbusTls | ListenerKind::EnipTls)
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct ListenerConfig {
    pub name: String,
    pub kind: ListenerKind,
    /// Set for `ModbusTls` and `EnipTls`.
    pub tls: Option<TlsMaterial>,
    /// Modbus listeners: indices into `RelayConfig::devices`, in routing order (a request goes to the first
    /// that holds its unit). EtherNet/IP listeners: indices into `RelayConfig::enip_devices`; the first is the
    /// listener's device (a CIP request names no unit to pick one by).
    pub devices: Vec<usize>,
    /// Requests in flight per client connection; past it the connection stops reading.
    pub max_outstanding: usize,
    pub idle_timeout: Duration,
    /// From a request's arrival to its answer; past it the client gets 0x0B.
    pub request_timeout: Duration,
}

#[derive(Clone, Debug, PartialEq)]
pub struct DeviceConfig {
    pub name: String,
    pub host: String,
    pub port: u16,
    /// Inclusive unit ranges; None means every unit.
    pub units: Option<Vec<(u8, u8)>>,
    pub max_connections: usize,
    pub pipelining: bool,
    /// In flight per connection when `pipelining`, else 1.
    pub pipeline_depth: usize,
    /// No reply within this answers 0x0B.
    pub timeout: Duration,
    /// Set for a level-3 Modbus/TCP Security server (outbound conduit): zonegate's client certificate and the
    /// CA that must have signed the server's; the server name checked is `host`.
    pub tls: Option<TlsMaterial>,
    /// The device's index in the engine (u32::MAX when the engine does not know it).
    pub engine_index: u32,
}

impl DeviceConfig {
    pub fn holds_unit(&self, unit: u8) -> bool {
        self.units.as_ref().is_none_or(|r| r.iter().any(|&(lo, hi)| lo <= unit && unit <= hi))
    }

    /// Requests in flight per connection.
    pub fn depth(&self) -> usize {
        if self.pipelining {
            self.pipeline_depth.max(1)
        } else {
            1
        }
    }
}

/// One EtherNet/IP device (the policy's `enip:` section of a device; docs/enip-conduit.md).
#[derive(Clone, Debug, PartialEq)]
pub struct EnipDeviceConfig {
    pub name: String,
    pub host: String,
    pub port: u16,
    /// No reply within this (or no session registered within it) answers 0x01 / 0x0204.
    pub timeout: Duration,
    /// Links (zonegate's own sessions, one per relayed client connection) the device holds at once.
    pub max_connections: usize,
    /// The device's index in the engine (u32::MAX when the engine does not know it).
    pub engine_index: u32,
}

#[derive(Clone, Debug, PartialEq)]
pub struct RelayConfig {
    pub listeners: Vec<ListenerConfig>,
    pub devices: Vec<DeviceConfig>,
    pub enip_devices: Vec<EnipDeviceConfig>,
    /// Upper bounds (seconds) of the latency histograms' buckets, ascending (Python's LATENCY_BUCKETS).
    pub latency_bounds: Vec<f64>,
}

/// Per device: requests waiting for a connection with room; past it a request answers 0x06.
pub const MAX_QUEUED_PER_DEVICE: usize = 1024;
/// Per client: bytes buffered without a complete ADU; past it the connection is closed (`overflow`).
pub const MAX_CLIENT_BUFFER: usize = 64 * 1024;
/// Per EtherNet/IP client (and per link, for the device's replies): room for the largest message EtherNet/IP
/// frames and the start of the next; past it the connection is closed (`overflow`; `bad_reply` for a link).
pub const MAX_ENIP_BUFFER: usize = 2 * (24 + 65511);
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
pub const BACKOFF_FIRST: Duration = Duration::from_millis(100);
pub const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// Modbus exception codes the relay answers itself.
pub const EXC_ILLEGAL_FUNCTION: u8 = 0x01;
pub const EXC_SERVER_BUSY: u8 = 0x06;
pub const EXC_GATEWAY_PATH_UNAVAILABLE: u8 = 0x0A;
pub const EXC_GATEWAY_TARGET_NO_RESPONSE: u8 = 0x0B;
