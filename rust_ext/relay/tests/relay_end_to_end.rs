//! The relay end to end (docs/relay.md "A connection"): a `Relay` built in Rust on a socket bound like Python
//! binds it, a Modbus device and clients on 127.0.0.1, the control plane's side played through the event queue.

mod relay_common;

use std::os::fd::AsRawFd;
use std::sync::atomic::Ordering;
use std::time::Duration;

use relay_common::*;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use zonegate_relay::config::TlsMaterial;
use zonegate_relay::events::Event;
use zonegate_relay::tls::client_config;
use zonegate_relay::Relay;

fn exception(tid: u16, unit: u8, fc: u8, code: u8) -> Vec<u8> {
    adu(tid, unit, &[fc | 0x80, code])
}

fn count(relay: &Relay, principal: &str, fc: u8, verdict: u8) -> u64 {
    relay
        .snapshot()
        .requests
        .iter()
        .filter(|((l, p, d, f, v, _), _)| {
            &**l == "zone" && &**p == principal && &**d == "plc" && *f == fc && *v == verdict
        })
        .map(|(_, n)| n)
        .sum()
}

#[test]
fn allowed_read_is_answered_and_denied_write_never_reaches_the_device() {
    let rt = runtime();
    let (device_port, seen) = rt.block_on(device());
    let (addr, fd) = bound_listener();
    let relay = Relay::start(engine(false), relay_config(listener_config("zone", None), device_port), &[fd], 2)
        .expect("relay starts");
    let mut cp = ControlPlane::new();

    let mut client = rt.block_on(TcpStream::connect(addr)).unwrap();
    // Sent before the principal is known: the relay holds them until Python answers.
    let mut requests = read_holding(0x1234, 1, 10, 2);
    requests.extend(write_single(0x1235, 1, 10, 7));
    rt.block_on(write(&mut client, &requests));
    cp.wait(&relay, Some("operator"), |e| matches!(e, Event::Identify { .. }));

    let mut replies = rt.block_on(read_adus(&mut client, 2));
    replies.sort();
    assert_eq!(replies, vec![adu(0x1234, 1, &[3, 4, 0, 10, 0, 11]), exception(0x1235, 1, 6, 0x01)]);
    assert_eq!(seen.writes.load(Ordering::SeqCst), 0, "the denied write reached the device");
    assert_eq!(seen.requests.load(Ordering::SeqCst), 1);

    let audit = cp.wait(&relay, None, |e| matches!(e, Event::Audit(_)));
    let Event::Audit(a) = &cp.seen[audit] else { unreachable!() };
    assert_eq!((a.verdict, a.exception, a.device.as_deref()), ("deny", Some(1), Some("plc")));
    assert_eq!(a.adu, write_single(0x1235, 1, 10, 7));
    assert_eq!((count(&relay, "operator", 3, 0), count(&relay, "operator", 6, 1)), (1, 1));
    let latency = relay.snapshot().gateway_latency;
    let (_, series) = latency.iter().find(|(l, _)| &**l == "zone").expect("gateway latency of the listener");
    assert_eq!(series.len(), 5 + 2);
    assert_eq!(series[..series.len() - 1].iter().sum::<f64>(), 1.0, "one forwarded request: {series:?}");

    // A unit no device of the listener holds: the engine's unknown device, denied.
    rt.block_on(write(&mut client, &read_holding(7, 9, 0, 1)));
    assert_eq!(rt.block_on(read_adus(&mut client, 1)), vec![exception(7, 9, 3, 0x01)]);

    drop(client);
    cp.wait(&relay, None, |e| matches!(e, Event::Closed { .. }));
    relay.stop(Duration::from_secs(2));
    // Stopped: the listening socket is closed.
    assert!(rt.block_on(TcpStream::connect(addr)).is_err());
}

#[test]
fn unknown_principal_is_answered_exception_01_on_an_open_connection() {
    let rt = runtime();
    let (device_port, seen) = rt.block_on(device());
    let (addr, fd) = bound_listener();
    let relay = Relay::start(engine(false), relay_config(listener_config("zone", None), device_port), &[fd], 1)
        .expect("relay starts");
    let mut cp = ControlPlane::new();
    let mut client = rt.block_on(TcpStream::connect(addr)).unwrap();
    cp.wait(&relay, None, |e| matches!(e, Event::Identify { .. }));
    for tid in 1..=3u16 {
        rt.block_on(write(&mut client, &read_holding(tid, 1, 0, 1)));
        assert_eq!(rt.block_on(read_adus(&mut client, 1)), vec![exception(tid, 1, 3, 0x01)]);
    }
    assert_eq!(seen.requests.load(Ordering::SeqCst), 0);
    assert_eq!(count(&relay, "unknown", 3, 1), 3);
    relay.stop(Duration::from_secs(1));
}

#[test]
fn invalid_stream_is_counted_and_closed() {
    let rt = runtime();
    let (device_port, _seen) = rt.block_on(device());
    let (addr, fd) = bound_listener();
    let relay = Relay::start(engine(false), relay_config(listener_config("zone", None), device_port), &[fd], 1)
        .expect("relay starts");
    let mut cp = ControlPlane::new();
    let mut client = rt.block_on(TcpStream::connect(addr)).unwrap();
    cp.wait(&relay, Some("operator"), |e| matches!(e, Event::Identify { .. }));
    // A read, then a header whose protocol id is not 0: the read is still answered, then the relay closes.
    let mut bytes = read_holding(1, 1, 0, 1);
    bytes.extend_from_slice(&[0, 2, 0, 1, 0, 6, 1, 3, 0, 0, 0, 1]);
    rt.block_on(write(&mut client, &bytes));
    assert_eq!(rt.block_on(read_adus(&mut client, 1)), vec![adu(1, 1, &[3, 2, 0, 0])]);
    assert!(rt.block_on(closed_by_peer(&mut client)));
    let framing = relay.snapshot().framing_errors;
    assert!(framing.iter().any(|((l, r), n)| &**l == "zone" && *r == "protocol_id" && *n == 1), "{framing:?}");
    relay.stop(Duration::from_secs(1));
}

#[test]
fn reload_swaps_the_engine_and_asks_for_the_principal_again() {
    let rt = runtime();
    let (device_port, seen) = rt.block_on(device());
    let (addr, fd) = bound_listener();
    let config = relay_config(listener_config("zone", None), device_port);
    let relay = Relay::start(engine(false), config.clone(), &[fd], 2).expect("relay starts");
    let mut cp = ControlPlane::new();
    let mut client = rt.block_on(TcpStream::connect(addr)).unwrap();
    cp.wait(&relay, Some("operator"), |e| matches!(e, Event::Identify { .. }));
    rt.block_on(write(&mut client, &write_single(1, 1, 5, 5)));
    assert_eq!(rt.block_on(read_adus(&mut client, 1)), vec![exception(1, 1, 6, 0x01)]);

    // A reload whose listeners differ is refused and changes nothing.
    let mut renamed = config.clone();
    renamed.listeners[0].name = "other".to_owned();
    assert!(relay.reload(engine(true), renamed).is_err());

    relay.reload(engine(true), config).expect("reload");
    rt.block_on(write(&mut client, &write_single(2, 1, 5, 5)));
    // The next request waits for the principal under the new policy.
    let second = cp.wait(&relay, Some("operator"), |e| matches!(e, Event::Identify { .. }));
    assert!(second > 0);
    assert_eq!(rt.block_on(read_adus(&mut client, 1)), vec![write_single(2, 1, 5, 5)]);
    assert_eq!(seen.writes.load(Ordering::SeqCst), 1);
    // An allowed write is audited too.
    cp.wait(&relay, None, |e| matches!(e, Event::Audit(a) if a.verdict == "allow"));
    relay.stop(Duration::from_secs(1));
}

#[test]
fn mutual_tls_listener_identifies_by_certificate_and_relays() {
    let rt = runtime();
    let (device_port, seen) = rt.block_on(device());
    let ca = ca("zone CA");
    let server = material(&server_leaf(&ca), &ca, None);
    let (addr, fd) = bound_listener();
    let relay =
        Relay::start(engine(false), relay_config(listener_config("north", Some(server)), device_port), &[fd], 2)
            .expect("relay starts");
    let mut cp = ControlPlane::new();
    let operator = client_leaf(&ca, "operator-1", 20);
    let connector = TlsConnector::from(client_config(&material(&operator, &ca, None)).unwrap());
    let mut client = rt.block_on(async {
        let tcp = TcpStream::connect(addr).await.unwrap();
        connector.connect(ServerName::try_from("127.0.0.1").unwrap(), tcp).await.expect("handshake")
    });
    let at = cp.wait(&relay, Some("operator"), |e| matches!(e, Event::Identify { .. }));
    let Event::Identify { der, listener, .. } = &cp.seen[at] else { unreachable!() };
    assert_eq!(&**listener, "north");
    let der = der.as_ref().expect("client certificate");
    assert!(operator.cert_pem.len() > der.len() && !der.is_empty());

    let mut requests = Vec::new();
    for tid in 0..20u16 {
        requests.extend(read_holding(tid, 1, tid, 1));
    }
    rt.block_on(write(&mut client, &requests));
    let mut replies = rt.block_on(read_adus(&mut client, 20));
    replies.sort();
    let expected: Vec<Vec<u8>> = (0..20u16).map(|t| adu(t, 1, &[3, 2, 0, t as u8])).collect();
    assert_eq!(replies, expected);
    assert_eq!(seen.requests.load(Ordering::SeqCst), 20);

    // A client without a certificate from the CA is refused and counted.
    let rogue = relay_common::ca("rogue");
    let stranger = material(&client_leaf(&rogue, "x", 30), &ca, None);
    let connector = TlsConnector::from(client_config(&stranger).unwrap());
    rt.block_on(async {
        let tcp = TcpStream::connect(addr).await.unwrap();
        if let Ok(mut s) = connector.connect(ServerName::try_from("127.0.0.1").unwrap(), tcp).await {
            // TLS 1.3: the client learns of the refusal at its first read.
            let _ = closed_by_peer(&mut s).await;
        }
    });
    cp.wait(&relay, None, |e| matches!(e, Event::Log { message, .. } if message.contains("unknown_ca")));
    let failures = relay.snapshot().handshake_failures;
    assert!(failures.iter().any(|((l, r), n)| &**l == "north" && *r == "unknown_ca" && *n == 1), "{failures:?}");
    relay.stop(Duration::from_secs(1));
}

#[test]
fn start_refuses_bad_material_or_sockets_and_leaves_the_fds_to_the_caller() {
    let (_addr, fd) = bound_listener();
    let ca = ca("zone CA");
    let mut broken = material(&server_leaf(&ca), &ca, None);
    broken.key_pem = b"not a key".to_vec();
    let err = Relay::start(engine(false), relay_config(listener_config("north", Some(broken)), 1), &[fd], 1)
        .err()
        .expect("refused");
    assert!(err.contains("listener north") && err.contains("private key"), "{err}");

    let mut device_tls = relay_config(listener_config("zone", None), 1);
    device_tls.devices[0].tls = Some(TlsMaterial { ca_pem: Vec::new(), ..material(&server_leaf(&ca), &ca, None) });
    let err = Relay::start(engine(false), device_tls, &[fd], 1).err().expect("refused");
    assert!(err.contains("device plc") && err.contains("CA bundle"), "{err}");

    // A socket that is not listening.
    let idle = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let err = Relay::start(engine(false), relay_config(listener_config("zone", None), 1), &[idle.as_raw_fd()], 1)
        .err()
        .expect("refused");
    assert!(err.contains("listener zone") && err.contains("not a listening socket"), "{err}");

    // The fd is still the caller's and still listening: a relay can start on it.
    let relay = Relay::start(engine(false), relay_config(listener_config("zone", None), 1), &[fd], 1).expect("starts");
    relay.stop(Duration::from_secs(1));
}

#[test]
fn submitted_requests_are_answered_by_reply_events() {
    let rt = runtime();
    let (device_port, seen) = rt.block_on(device());
    let (_addr, fd) = bound_listener();
    let config = relay_config(listener_config("zone", None), device_port);
    let relay = Relay::start(engine(false), config.clone(), &[fd], 1).expect("relay starts");
    let mut cp = ControlPlane::new();
    let token = relay.submit("plc", read_holding(0x0042, 1, 3, 1)).expect("submitted");
    let at = cp.wait(&relay, None, |e| matches!(e, Event::Reply { .. }));
    let Event::Reply { token: answered, adu, exception } = &cp.seen[at] else { unreachable!() };
    assert_eq!((*answered, adu.as_deref(), *exception), (token, Some(&adu_of(0x0042, &[3, 2, 0, 3])[..]), None));
    assert_eq!(seen.requests.load(Ordering::SeqCst), 1);
    assert!(relay.submit("no-such-device", read_holding(1, 1, 0, 1)).unwrap_err().contains("unknown device"));
    assert!(relay.submit("plc", vec![0, 1, 0, 0]).is_err(), "not one ADU");

    relay.stop(Duration::from_secs(1));
    assert!(relay.submit("plc", read_holding(2, 1, 0, 1)).is_err());
    assert!(relay.reload(engine(true), config).is_err());
}

fn adu_of(tid: u16, pdu: &[u8]) -> Vec<u8> {
    adu(tid, 1, pdu)
}

#[test]
fn pipelined_requests_beyond_max_outstanding_all_get_replies_and_an_idle_client_is_closed() {
    let rt = runtime();
    let (device_port, seen) = rt.block_on(device());
    let (addr, fd) = bound_listener();
    let mut listener = listener_config("zone", None);
    listener.max_outstanding = 2;
    listener.idle_timeout = Duration::from_millis(300);
    let relay = Relay::start(engine(false), relay_config(listener, device_port), &[fd], 2).expect("relay starts");
    let mut cp = ControlPlane::new();
    let mut client = rt.block_on(TcpStream::connect(addr)).unwrap();
    cp.wait(&relay, Some("operator"), |e| matches!(e, Event::Identify { .. }));
    let mut requests = Vec::new();
    for tid in 0..50u16 {
        requests.extend(read_holding(tid, 1, tid % 100, 1));
    }
    rt.block_on(write(&mut client, &requests));
    let mut replies = rt.block_on(read_adus(&mut client, 50));
    replies.sort();
    let expected: Vec<Vec<u8>> = (0..50u16).map(|t| adu(t, 1, &[3, 2, 0, t as u8])).collect();
    assert_eq!(replies, expected);
    assert_eq!(seen.requests.load(Ordering::SeqCst), 50);

    // Then nothing: the relay closes the connection once idle_timeout has passed without a request.
    assert!(rt.block_on(closed_by_peer(&mut client)));
    let framing = relay.snapshot().framing_errors;
    assert!(framing.iter().any(|((l, r), n)| &**l == "zone" && *r == "idle" && *n == 1), "{framing:?}");
    cp.wait(&relay, None, |e| matches!(e, Event::Closed { .. }));
    relay.stop(Duration::from_secs(1));
}

// -- many clients at once ---------------------------------------------------------------------------------------

/// What a soak client sent under one transaction id, and so which answer it waits for.
#[derive(Clone, Copy, Debug)]
enum Sent {
    /// An allowed read: the device's registers hold their addresses, so the reply tells which read it is.
    Read { start: u16, qty: u16 },
    /// A write the policy refuses: exception 01.
    Write,
}

/// One client of the Modbus soak: `rounds` batches of random requests (allowed reads, refused writes), each
/// cut into random writes, transaction ids counting from 1 as every other client's do (so they clash on the
/// shared device connection), every answer matched to its request. `leaves`: closes half-way with a batch
/// unanswered. `slow_every` (not 0): the device is slow to answer reads from a multiple of that address (the
/// client's first read is one), so the gateway may answer them (0x0B).
/// Returns how many reads it sent and how many the device answered.
async fn modbus_soak_client(
    addr: std::net::SocketAddr,
    seed: u64,
    rounds: usize,
    leaves: bool,
    slow_every: u16,
) -> Result<(usize, usize), String> {
    let mut rng = Rng(seed | 1);
    let slow = slow_every > 0;
    let mut stream = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let mut tid: u16 = 0;
    let (mut sent_reads, mut answered) = (0, 0);
    for round in 0..rounds {
        let mut batch = Vec::new();
        let mut expected = std::collections::HashMap::new();
        for _ in 0..1 + rng.below(8) {
            tid = tid.wrapping_add(1);
            let sent = if rng.below(8) == 0 {
                batch.extend(write_single(tid, 1, rng.below(100) as u16, 7));
                Sent::Write
            } else {
                // With a slow device, each client's first read is one it is slow to answer.
                let start = if slow && sent_reads == 0 { slow_every } else { 1 + rng.below(95) as u16 };
                let qty = 1 + rng.below(5) as u16;
                batch.extend(read_holding(tid, 1, start, qty));
                sent_reads += 1;
                Sent::Read { start, qty }
            };
            expected.insert(tid, sent);
        }
        write_in_pieces(&mut stream, &batch, &mut rng).await;
        if leaves && round == rounds / 2 {
            return Ok((sent_reads, answered));
        }
        for reply in read_adus(&mut stream, expected.len()).await {
            let tid = u16::from_be_bytes([reply[0], reply[1]]);
            let Some(sent) = expected.remove(&tid) else {
                return Err(format!("round {round}: a reply nothing waits for: {reply:02x?}"));
            };
            let right = match sent {
                Sent::Read { start, qty } => {
                    let mut pdu = vec![3, (2 * qty) as u8];
                    (start..start + qty).for_each(|a| pdu.extend_from_slice(&a.to_be_bytes()));
                    let own = reply == adu(tid, 1, &pdu);
                    answered += usize::from(own);
                    own || (slow && reply == adu(tid, 1, &[0x83, 0x0B]))
                }
                Sent::Write => reply == adu(tid, 1, &[0x86, 0x01]),
            };
            if !right {
                return Err(format!("round {round}: {sent:?} (tid {tid}) answered {reply:02x?}"));
            }
        }
    }
    Ok((sent_reads, answered))
}

/// Six clients at once, one leaving half-way, on one pipelined device connection, while the policy is reloaded
/// three times: every client gets exactly one answer per request, its own, under its own transaction id;
/// no refused write reaches the device. `slow_every`: the device answers a read from a multiple of that
/// address only after `SLOW_READ`, past its `timeout`.
fn modbus_soak(seeds: std::ops::Range<u64>, timeout: Duration, slow_every: u16) {
    for seed in seeds {
        let rt = runtime();
        let (device_port, seen) = rt.block_on(device());
        seen.slow_every.store(slow_every, Ordering::SeqCst);
        let (addr, fd) = bound_listener();
        let mut config = relay_config(listener_config("zone", None), device_port);
        config.devices[0].timeout = timeout;
        let relay = Relay::start(engine(false), config.clone(), &[fd], 2).expect("relay starts");
        let mut cp = ControlPlane::new();
        let clients: Vec<_> = (0..6u64)
            .map(|c| rt.spawn(modbus_soak_client(addr, seed.wrapping_mul(31).wrapping_add(c), 20, c == 0, slow_every)))
            .collect();
        let started = std::time::Instant::now();
        let mut reloads = 0;
        while !clients.iter().all(|c| c.is_finished()) {
            assert!(started.elapsed() < BOUND * 3, "seed {seed:#x}: the clients did not finish");
            cp.serve(&relay, Some("operator"), Duration::from_millis(10));
            if reloads < 3 && started.elapsed() > Duration::from_millis(20) * (reloads + 1) {
                relay.reload(engine(false), config.clone()).expect("reload");
                reloads += 1;
            }
        }
        let (mut sent, mut answered) = (0, 0);
        for client in clients {
            let (reads, own) =
                rt.block_on(client).expect("the client ran").unwrap_or_else(|e| panic!("seed {seed:#x}: {e}"));
            sent += reads;
            answered += own;
        }
        assert_eq!(seen.writes.load(Ordering::SeqCst), 0, "seed {seed:#x}: a refused write reached the device");
        let reached = seen.requests.load(Ordering::SeqCst);
        assert!(
            answered <= reached && reached <= sent,
            "seed {seed:#x}: {answered} answered, {reached} reached, {sent} sent"
        );
        let timeouts: u64 =
            relay.snapshot().upstream_faults.iter().filter(|((_, k), _)| *k == "timeout").map(|(_, n)| n).sum();
        assert_eq!(timeouts > 0, slow_every > 0, "seed {seed:#x}: {timeouts} timeouts");
        relay.stop(Duration::from_secs(1));
    }
}

#[test]
fn many_clients_at_once_each_get_their_own_answers_through_reloads() {
    modbus_soak(0x5eed_0001..0x5eed_0004, Duration::from_secs(2), 0);
}

#[test]
fn a_device_slow_to_answer_some_reads_never_has_a_late_reply_taken_for_another_request() {
    modbus_soak(0x51a0_0001..0x51a0_0004, Duration::from_millis(250), 37);
}
