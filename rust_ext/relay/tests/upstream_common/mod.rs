//! Device simulators and helpers for the device pool's tests: real TCP on 127.0.0.1, Modbus/TCP framed
//! with the engine's own splitter, every wait bounded.

#![allow(dead_code)]

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use zonegate_core::modbus::{split, Split};
use zonegate_relay::config::DeviceConfig;
use zonegate_relay::metrics::Metrics;

/// Upper bound on any wait in these tests: a failure shows up as a timeout, never as a hang.
pub const BOUND: Duration = Duration::from_secs(10);

pub fn device_config(port: u16, pipelining: bool, depth: usize, timeout: Duration) -> DeviceConfig {
    DeviceConfig {
        name: "plc".to_owned(),
        host: "127.0.0.1".to_owned(),
        port,
        units: None,
        max_connections: 1,
        pipelining,
        pipeline_depth: depth,
        timeout,
        tls: None,
        engine_index: 0,
    }
}

pub fn metrics() -> Arc<Metrics> {
    Arc::new(Metrics::new(vec![0.0005, 0.001, 0.01, 0.1, 1.0]))
}

/// `zonegate_upstream_faults_total{device, kind}`.
pub fn fault(metrics: &Metrics, device: &str, kind: &str) -> u64 {
    metrics.snapshot().upstream_faults.iter().find(|((d, k), _)| &**d == device && *k == kind).map_or(0, |(_, n)| *n)
}

pub fn up(metrics: &Metrics, device: &str) -> Option<bool> {
    metrics.snapshot().upstream_up.iter().find(|(d, _)| &**d == device).map(|(_, up)| *up)
}

/// Replies observed by `zonegate_upstream_latency_seconds{device}` (the series' bucket counts).
pub fn latency_count(metrics: &Metrics, device: &str) -> f64 {
    metrics
        .snapshot()
        .upstream_latency
        .iter()
        .find(|(d, _)| &**d == device)
        .map_or(0.0, |(_, series)| series[..series.len() - 1].iter().sum())
}

pub fn deadline_in(ms: u64) -> Instant {
    Instant::now() + Duration::from_millis(ms)
}

/// FC 3, read holding registers.
pub fn read_holding(tid: u16, unit: u8, start: u16, qty: u16) -> Vec<u8> {
    let mut adu = Vec::with_capacity(12);
    adu.extend_from_slice(&tid.to_be_bytes()); // transaction id
    adu.extend_from_slice(&[0, 0]); // protocol id
    adu.extend_from_slice(&6u16.to_be_bytes()); // length: unit + fc + start + qty
    adu.push(unit); // unit id
    adu.push(3); // function: read holding registers
    adu.extend_from_slice(&start.to_be_bytes()); // start address
    adu.extend_from_slice(&qty.to_be_bytes()); // quantity
    adu
}

/// The simulated device's register contents: distinct per address.
pub fn register(address: u16) -> u16 {
    address.wrapping_mul(7).wrapping_add(1000)
}

pub fn start_of(request: &[u8]) -> u16 {
    u16::from_be_bytes([request[8], request[9]])
}

/// What a well-behaved device answers to `request` (FC 3 only), with the request's transaction id.
pub fn answer(request: &[u8]) -> Vec<u8> {
    let start = start_of(request);
    let qty = u16::from_be_bytes([request[10], request[11]]);
    let mut adu = Vec::with_capacity(9 + 2 * qty as usize);
    adu.extend_from_slice(&request[0..2]); // transaction id, as asked
    adu.extend_from_slice(&[0, 0]); // protocol id
    adu.extend_from_slice(&(3 + 2 * qty).to_be_bytes()); // length: unit + fc + byte count + data
    adu.push(request[6]); // unit id
    adu.push(3); // function
    adu.push((2 * qty) as u8); // byte count
    for i in 0..qty {
        adu.extend_from_slice(&register(start + i).to_be_bytes());
    }
    adu
}

/// Reads a Modbus/TCP stream a read at a time and cuts it into ADUs.
pub struct Frames {
    buf: Vec<u8>,
}

impl Frames {
    pub fn new() -> Self {
        Frames { buf: Vec::new() }
    }

    /// The ADUs complete after one more read; None at EOF or on error.
    pub async fn next_batch<R: AsyncRead + Unpin>(&mut self, stream: &mut R) -> Option<Vec<Vec<u8>>> {
        let mut chunk = [0u8; 4096];
        loop {
            let n = match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return None,
                Ok(n) => n,
            };
            self.buf.extend_from_slice(&chunk[..n]);
            let mut frames = Vec::new();
            while let Split::Complete { used } = split(&self.buf) {
                frames.push(self.buf.drain(..used).collect());
            }
            if !frames.is_empty() {
                return Some(frames);
            }
        }
    }
}

/// A device listening on 127.0.0.1; `accepted` counts its connections.
pub struct Device {
    pub port: u16,
    pub accepted: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl Drop for Device {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Starts a device on `listener`; `handler(n, stream)` serves its n-th connection (from 0).
pub fn device_on<H, F>(listener: TcpListener, handler: H) -> Device
where
    H: Fn(usize, TcpStream) -> F + Send + Sync + 'static,
    F: Future<Output = ()> + Send + 'static,
{
    let port = listener.local_addr().unwrap().port();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    let task = tokio::spawn(async move {
        let mut handlers = tokio::task::JoinSet::new();
        while let Ok((stream, _)) = listener.accept().await {
            let n = count.fetch_add(1, Ordering::SeqCst);
            handlers.spawn(handler(n, stream));
        }
    });
    Device { port, accepted, task }
}

pub async fn device<H, F>(handler: H) -> Device
where
    H: Fn(usize, TcpStream) -> F + Send + Sync + 'static,
    F: Future<Output = ()> + Send + 'static,
{
    device_on(TcpListener::bind("127.0.0.1:0").await.unwrap(), handler)
}

/// A well-behaved device: answers every request, those of one read in reverse order (replies need not come
/// back in the order asked).
pub async fn serve_reversed<S: AsyncRead + AsyncWrite + Unpin>(mut stream: S) {
    let mut frames = Frames::new();
    while let Some(batch) = frames.next_batch(&mut stream).await {
        let out: Vec<u8> = batch.iter().rev().flat_map(|r| answer(r)).collect();
        if stream.write_all(&out).await.is_err() {
            return;
        }
    }
}
