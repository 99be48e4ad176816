//! Test PKI (generated per test with rcgen), a small policy, a Modbus device on 127.0.0.1 and the control
//! plane's side of the event queue, for the relay's tests. Every wait is bounded.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::os::fd::IntoRawFd;
use std::sync::atomic::{AtomicU16, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rcgen::{
    BasicConstraints, Certificate, CertificateParams, CertificateRevocationListParams, DnType, ExtendedKeyUsagePurpose,
    IsCa, KeyIdMethod, KeyPair, KeyUsagePurpose, RevokedCertParams, SerialNumber,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use zonegate_core::modbus::frame::{split, Split};
use zonegate_core::policy::Engine;
use zonegate_relay::config::{DeviceConfig, ListenerConfig, ListenerKind, RelayConfig, TlsMaterial};
use zonegate_relay::events::Event;
use zonegate_relay::Relay;

/// Upper bound on any wait: a failure shows up as a timeout, never as a hang.
pub const BOUND: Duration = Duration::from_secs(10);

// -- PKI ------------------------------------------------------------------------------------------------------

pub struct Ca {
    pub cert: Certificate,
    pub key: KeyPair,
}

pub struct Leaf {
    pub cert_pem: Vec<u8>,
    pub key_pem: Vec<u8>,
    pub serial: u64,
}

pub fn ca(name: &str) -> Ca {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let key = KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    Ca { cert, key }
}

fn leaf(ca: &Ca, cn: &str, sans: Vec<String>, purpose: ExtendedKeyUsagePurpose, serial: u64) -> Leaf {
    let mut params = CertificateParams::new(sans).unwrap();
    params.distinguished_name.push(DnType::CommonName, cn);
    params.extended_key_usages = vec![purpose];
    params.serial_number = Some(SerialNumber::from(serial));
    let key = KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, &ca.cert, &ca.key).unwrap();
    Leaf { cert_pem: cert.pem().into_bytes(), key_pem: key.serialize_pem().into_bytes(), serial }
}

pub fn server_leaf(ca: &Ca) -> Leaf {
    leaf(ca, "zonegate", vec!["127.0.0.1".to_owned(), "localhost".to_owned()], ExtendedKeyUsagePurpose::ServerAuth, 10)
}

pub fn client_leaf(ca: &Ca, cn: &str, serial: u64) -> Leaf {
    leaf(ca, cn, Vec::new(), ExtendedKeyUsagePurpose::ClientAuth, serial)
}

/// A CRL of `ca` revoking the given serial numbers.
pub fn crl(ca: &Ca, revoked: &[u64]) -> Vec<u8> {
    let params = CertificateRevocationListParams {
        this_update: rcgen::date_time_ymd(2024, 1, 1),
        next_update: rcgen::date_time_ymd(2099, 1, 1),
        crl_number: SerialNumber::from(1u64),
        issuing_distribution_point: None,
        revoked_certs: revoked
            .iter()
            .map(|&s| RevokedCertParams {
                serial_number: SerialNumber::from(s),
                revocation_time: rcgen::date_time_ymd(2024, 1, 1),
                reason_code: None,
                invalidity_date: None,
            })
            .collect(),
        key_identifier_method: KeyIdMethod::Sha256,
    };
    params.signed_by(&ca.cert, &ca.key).unwrap().pem().unwrap().into_bytes()
}

pub fn material(leaf: &Leaf, ca: &Ca, crl: Option<Vec<u8>>) -> TlsMaterial {
    TlsMaterial {
        cert_pem: leaf.cert_pem.clone(),
        key_pem: leaf.key_pem.clone(),
        ca_pem: ca.cert.pem().into_bytes(),
        crl_pem: crl,
    }
}

// -- policy ---------------------------------------------------------------------------------------------------

/// Principal `operator` (index 0) may read holding registers 0..=99 of device `plc` (unit 1); with `writes`,
/// it may also write single registers there. Nothing else is allowed.
pub fn engine(writes: bool) -> Arc<Engine> {
    let functions = if writes { "[[3, null], [6, null]]" } else { "[[3, null]]" };
    let ir = format!(
        r#"{{"version": 1, "mode": "enforce",
        "principals": [{{"name": "operator", "tls_roles": ["Operator"], "subjects": [], "opcua_users": [],
                         "sources": []}}],
        "devices": [{{"name": "plc", "zone": "cell-a", "host": "127.0.0.1", "port": 502, "units": [[1, 1]]}}],
        "rules": [{{"id": "operator-reads", "principals": [0], "devices": [0], "units": null,
                    "allow": [{{"functions": {functions},
                               "ranges": {{"holding_registers": [{{"start": 0, "end": 99, "min": null, "max": null,
                                                                  "signed": false}}],
                                          "coils": [], "discrete_inputs": [], "input_registers": [],
                                          "file_records": []}},
                               "max_quantity": null, "rate": null}}]}}]}}"#
    );
    Arc::new(Engine::from_json(&ir).expect("valid IR"))
}

pub fn device_config(port: u16) -> DeviceConfig {
    DeviceConfig {
        name: "plc".to_owned(),
        host: "127.0.0.1".to_owned(),
        port,
        units: Some(vec![(1, 1)]),
        max_connections: 1,
        pipelining: true,
        pipeline_depth: 16,
        timeout: Duration::from_secs(2),
        tls: None,
        engine_index: 0,
    }
}

pub fn listener_config(name: &str, tls: Option<TlsMaterial>) -> ListenerConfig {
    ListenerConfig {
        name: name.to_owned(),
        kind: if tls.is_some() { ListenerKind::ModbusTls } else { ListenerKind::Modbus },
        tls,
        devices: vec![0],
        max_outstanding: 10,
        idle_timeout: Duration::from_secs(30),
        request_timeout: Duration::from_secs(5),
    }
}

pub fn relay_config(listener: ListenerConfig, device_port: u16) -> RelayConfig {
    RelayConfig {
        listeners: vec![listener],
        devices: vec![device_config(device_port)],
        enip_devices: Vec::new(),
        latency_bounds: vec![0.0005, 0.001, 0.01, 0.1, 1.0],
    }
}

/// A listening socket on 127.0.0.1, as Python binds it: its address and the fd handed to the relay.
pub fn bound_listener() -> (SocketAddr, i32) {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    (l.local_addr().unwrap(), l.into_raw_fd())
}

// -- Modbus ---------------------------------------------------------------------------------------------------

pub fn adu(tid: u16, unit: u8, pdu: &[u8]) -> Vec<u8> {
    let mut v = tid.to_be_bytes().to_vec();
    v.extend_from_slice(&[0, 0]);
    v.extend_from_slice(&((pdu.len() + 1) as u16).to_be_bytes());
    v.push(unit);
    v.extend_from_slice(pdu);
    v
}

pub fn read_holding(tid: u16, unit: u8, start: u16, qty: u16) -> Vec<u8> {
    let [s0, s1] = start.to_be_bytes();
    let [q0, q1] = qty.to_be_bytes();
    adu(tid, unit, &[3, s0, s1, q0, q1])
}

pub fn write_single(tid: u16, unit: u8, address: u16, value: u16) -> Vec<u8> {
    let [a0, a1] = address.to_be_bytes();
    let [v0, v1] = value.to_be_bytes();
    adu(tid, unit, &[6, a0, a1, v0, v1])
}

/// Reads whole ADUs until `n` have arrived.
pub async fn read_adus<S: AsyncRead + Unpin>(stream: &mut S, n: usize) -> Vec<Vec<u8>> {
    let mut buf = Vec::new();
    let mut adus = Vec::new();
    let mut chunk = [0u8; 4096];
    while adus.len() < n {
        match split(&buf) {
            Split::Complete { used } => {
                adus.push(buf.drain(..used).collect());
                continue;
            }
            Split::Invalid(why) => panic!("invalid stream from the relay: {why:?}"),
            Split::Incomplete { .. } => {}
        }
        let got = tokio::time::timeout(BOUND, stream.read(&mut chunk)).await.expect("reply in time").unwrap();
        assert!(got > 0, "connection closed with {} of {n} replies", adus.len());
        buf.extend_from_slice(&chunk[..got]);
    }
    adus
}

/// Reads until the peer closes (bounded); true when it did.
pub async fn closed_by_peer<S: AsyncRead + Unpin>(stream: &mut S) -> bool {
    let mut chunk = [0u8; 512];
    loop {
        match tokio::time::timeout(BOUND, stream.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue,
            Err(_) => return false,
        }
    }
}

/// What the device saw, and which reads it is slow to answer.
#[derive(Default)]
pub struct Seen {
    pub requests: AtomicUsize,
    pub writes: AtomicUsize,
    /// A read from a non-zero multiple of this address (0: none) is answered only after `SLOW_READ`, the
    /// device reading nothing more on that connection meanwhile (a device busy with a slow request).
    pub slow_every: AtomicU16,
}

/// How long a slow read keeps the fake Modbus device busy.
pub const SLOW_READ: Duration = Duration::from_millis(400);

/// A Modbus server on 127.0.0.1: answers FC 3 with registers holding their address, echoes FC 6, and answers
/// anything else exception 01. Counts what it is sent.
pub async fn device() -> (u16, Arc<Seen>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen = Arc::new(Seen::default());
    let counts = seen.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(serve_device(stream, counts.clone()));
        }
    });
    (port, seen)
}

async fn serve_device<S: AsyncRead + AsyncWrite + Unpin>(mut stream: S, seen: Arc<Seen>) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let got = match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        buf.extend_from_slice(&chunk[..got]);
        let mut out = Vec::new();
        while let Split::Complete { used } = split(&buf) {
            let req: Vec<u8> = buf.drain(..used).collect();
            seen.requests.fetch_add(1, Ordering::SeqCst);
            let tid = u16::from_be_bytes([req[0], req[1]]);
            let (unit, fc) = (req[6], req[7]);
            match fc {
                3 => {
                    let start = u16::from_be_bytes([req[8], req[9]]);
                    let qty = u16::from_be_bytes([req[10], req[11]]);
                    let every = seen.slow_every.load(Ordering::SeqCst);
                    if every > 0 && start > 0 && start.is_multiple_of(every) {
                        if stream.write_all(&out).await.is_err() {
                            return;
                        }
                        out.clear();
                        tokio::time::sleep(SLOW_READ).await;
                    }
                    let mut pdu = vec![3, (2 * qty) as u8];
                    for a in start..start + qty {
                        pdu.extend_from_slice(&a.to_be_bytes());
                    }
                    out.extend(adu(tid, unit, &pdu));
                }
                6 => {
                    seen.writes.fetch_add(1, Ordering::SeqCst);
                    out.extend_from_slice(&req);
                }
                _ => out.extend(adu(tid, unit, &[fc | 0x80, 1])),
            }
        }
        if stream.write_all(&out).await.is_err() {
            return;
        }
    }
}

// -- the control plane's side ---------------------------------------------------------------------------------

/// Collects the relay's events as Python does: waits on the eventfd, reads it, takes the queue.
pub struct ControlPlane {
    pub seen: Vec<Event>,
    /// Events already returned by `wait`: each is picked once.
    picked: Vec<bool>,
}

impl ControlPlane {
    pub fn new() -> Self {
        ControlPlane { seen: Vec::new(), picked: Vec::new() }
    }

    /// Waits (bounded) for an event `pick` accepts and no earlier `wait` returned, answering identify events
    /// with `principal` meanwhile; returns its index in `seen`.
    pub fn wait(&mut self, relay: &Relay, principal: Option<&str>, pick: impl Fn(&Event) -> bool) -> usize {
        let deadline = Instant::now() + BOUND;
        loop {
            self.picked.resize(self.seen.len(), false);
            if let Some(i) = (0..self.seen.len()).find(|&i| !self.picked[i] && pick(&self.seen[i])) {
                self.picked[i] = true;
                return i;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(!left.is_zero(), "no such event within {BOUND:?}; seen: {:?}", self.seen);
            self.serve(relay, principal, left);
        }
    }

    /// Takes the relay's events for up to `wait` (one look), answering identify events with `principal`.
    pub fn serve(&mut self, relay: &Relay, principal: Option<&str>, wait: Duration) {
        let mut pfd = libc::pollfd { fd: relay.event_fd(), events: libc::POLLIN, revents: 0 };
        // SAFETY: one valid pollfd for the duration of the call.
        unsafe { libc::poll(&mut pfd, 1, wait.as_millis().min(1000) as i32) };
        let mut counter = [0u8; 8];
        // SAFETY: reads at most 8 bytes into a live buffer; EAGAIN (nothing pending) is fine.
        unsafe { libc::read(relay.event_fd(), counter.as_mut_ptr().cast(), 8) };
        for event in relay.events() {
            if let Event::Identify { conn_id, .. } = &event {
                relay.identify(*conn_id, principal.map(str::to_owned));
            }
            self.seen.push(event);
        }
    }
}

/// xorshift64*: a soak's choices, the same for the same seed (which must not be 0).
pub struct Rng(pub u64);

impl Rng {
    pub fn below(&mut self, n: usize) -> usize {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        (x.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 32) as usize % n
    }
}

/// Writes `bytes` in writes of random sizes: messages split across writes and several in one.
pub async fn write_in_pieces<S: AsyncWrite + Unpin>(stream: &mut S, bytes: &[u8], rng: &mut Rng) {
    let mut at = 0;
    while at < bytes.len() {
        let piece = 1 + rng.below(bytes.len() - at);
        write(stream, &bytes[at..at + piece]).await;
        at += piece;
    }
}

/// Runs `f` on a runtime of the test's own (the device and the clients), separate from the relay's.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()
}

pub async fn write<S: AsyncWrite + Unpin>(stream: &mut S, bytes: &[u8]) {
    stream.write_all(bytes).await.unwrap();
    stream.flush().await.unwrap();
}
