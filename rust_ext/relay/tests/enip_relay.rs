//! The relay's EtherNet/IP conduit end to end (docs/relay.md "EtherNet/IP", docs/enip-conduit.md): a `Relay`
//! on a socket bound like Python binds it, a fake EtherNet/IP device and clients on 127.0.0.1, the control
//! plane's side played through the event queue.

mod enip_common;
mod relay_common;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use enip_common::*;
use relay_common::{bound_listener, runtime, write_in_pieces, ControlPlane, Rng};
use tokio::net::TcpStream;
use zonegate_relay::enip::frames::{self, HEADER_LEN};
use zonegate_relay::events::Event;
use zonegate_relay::Relay;

/// The relay over one fake device (or a port nothing listens on), its listener's address and the control
/// plane, with every connection identified as `operator`.
struct Setup {
    rt: tokio::runtime::Runtime,
    relay: Relay,
    addr: std::net::SocketAddr,
    cp: ControlPlane,
    device_port: u16,
}

fn setup(device_port: Option<u16>, max_connections: usize, timeout: Duration) -> (Setup, Option<std::sync::Arc<Seen>>) {
    setup_with(engine(), device_port, max_connections, timeout)
}

fn setup_with(
    engine: std::sync::Arc<zonegate_core::policy::Engine>,
    device_port: Option<u16>,
    max_connections: usize,
    timeout: Duration,
) -> (Setup, Option<std::sync::Arc<Seen>>) {
    let rt = runtime();
    let (port, seen) = match device_port {
        Some(port) => (port, None),
        None => {
            let (port, seen) = rt.block_on(enip_device());
            (port, Some(seen))
        }
    };
    let (addr, fd) = bound_listener();
    let config = enip_relay_config(enip_device_config(port, max_connections, timeout));
    let relay = Relay::start(engine, config, &[fd], 2).expect("relay starts");
    (Setup { rt, relay, addr, cp: ControlPlane::new(), device_port: port }, seen)
}

impl Setup {
    /// A client connection, identified as `operator`.
    fn client(&mut self) -> TcpStream {
        let client = self.rt.block_on(TcpStream::connect(self.addr)).unwrap();
        self.cp.wait(&self.relay, Some("operator"), |e| matches!(e, Event::Identify { .. }));
        client
    }

    /// A client with a registered session: the connection and the handle zonegate gave it.
    fn registered(&mut self) -> (TcpStream, u32) {
        let mut client = self.client();
        self.rt.block_on(write(&mut client, &register_session(b"register")));
        let reply = self.rt.block_on(read_message(&mut client));
        let h = frames::header(&reply);
        assert_eq!((h.command, h.status, &h.sender_context), (frames::REGISTER_SESSION, 0, b"register"));
        assert_eq!(&reply[HEADER_LEN..], &[1, 0, 0, 0]);
        (client, h.session)
    }

    /// Sends `frame` and reads one message back, with the time it took.
    fn ask(&self, client: &mut TcpStream, frame: &[u8]) -> (Vec<u8>, Duration) {
        let started = Instant::now();
        self.rt.block_on(write(client, frame));
        let reply = self.rt.block_on(read_message(client));
        (reply, started.elapsed())
    }

    fn faults(&self, kind: &str) -> u64 {
        let faults = self.relay.snapshot().upstream_faults;
        faults.iter().filter(|((d, k), _)| &**d == "press-plc" && *k == kind).map(|(_, n)| n).sum()
    }

    fn stop(self) {
        self.relay.stop(Duration::from_secs(2));
    }
}

#[test]
fn register_session_gets_a_handle_of_zonegate_not_the_device() {
    let (mut s, seen) = setup(None, 2, Duration::from_secs(2));
    let (_client, handle) = s.registered();
    assert_ne!(handle, 0);
    assert_ne!(handle, DEVICE_SESSION);
    // A session is zonegate's own: the device hears nothing of it until a message is forwarded.
    assert!(seen.unwrap().frames().is_empty());
    s.stop();
}

#[test]
fn allowed_read_reaches_the_device_under_its_handle_and_returns_under_the_client_s() {
    let (mut s, seen) = setup(None, 2, Duration::from_secs(2));
    let seen = seen.unwrap();
    let (mut client, handle) = s.registered();
    let request = send_rr(handle, b"read-001", &read_tag("recipe"));
    let (reply, _) = s.ask(&mut client, &request);
    let h = frames::header(&reply);
    assert_eq!((h.command, h.session, h.status, &h.sender_context), (frames::SEND_RR_DATA, handle, 0, b"read-001"));
    assert_eq!(cip_status(&reply), (READ_TAG | 0x80, 0, vec![]));

    // The device's shared session registered first, then carried the request under the device's handle and
    // a sender context of its own.
    let got = seen.frames();
    assert_eq!(frames::header(&got[0]).command, frames::REGISTER_SESSION);
    let forwarded = seen.of(frames::SEND_RR_DATA);
    assert_eq!(forwarded.len(), 1);
    assert_ne!(&forwarded[0][12..20], b"read-001");
    let mut expected = request.clone();
    frames::set_session(&mut expected, DEVICE_SESSION);
    frames::set_context(&mut expected, forwarded[0][12..20].try_into().unwrap());
    assert_eq!(forwarded[0], expected);
    s.stop();
}

#[test]
fn clients_without_connections_share_one_device_session() {
    let (mut s, seen) = setup(None, 4, Duration::from_secs(2));
    let seen = seen.unwrap();
    let mut clients: Vec<_> = (0..3).map(|_| s.registered()).collect();
    // Each client sends two reads in one write, both under the same sender context (clients may).
    for (client, handle) in &mut clients {
        let two =
            [send_rr(*handle, b"same-ctx", &read_tag("recipe")), send_rr(*handle, b"same-ctx", &read_tag("recipe"))];
        s.rt.block_on(write(client, &two.concat()));
    }
    for (client, handle) in &mut clients {
        for _ in 0..2 {
            let reply = s.rt.block_on(read_message(client));
            let h = frames::header(&reply);
            assert_eq!((h.session, h.status, &h.sender_context), (*handle, 0, b"same-ctx"));
            assert_eq!(cip_status(&reply), (READ_TAG | 0x80, 0, vec![]));
        }
    }
    // One connection and one session at the device; each message went under a context no other had.
    assert_eq!(seen.accepted.load(Ordering::SeqCst), 1);
    assert_eq!(seen.of(frames::REGISTER_SESSION).len(), 1);
    let forwarded = seen.of(frames::SEND_RR_DATA);
    assert_eq!(forwarded.len(), 6);
    let mut contexts: Vec<_> = forwarded.iter().map(|f| f[12..20].to_vec()).collect();
    contexts.sort();
    contexts.dedup();
    assert_eq!(contexts.len(), 6);
    assert!(forwarded.iter().all(|f| frames::header(f).session == DEVICE_SESSION));
    s.stop();
}

#[test]
fn a_client_that_opens_a_connection_gets_a_session_of_its_own_after_its_shared_messages() {
    let (mut s, seen) = setup_with(engine_with_connections(), None, 4, Duration::from_secs(2));
    let seen = seen.unwrap();
    let (mut reader, reader_handle) = s.registered();
    let (mut opener, opener_handle) = s.registered();
    // A read (shared session) and a Forward Open in one write: the Forward Open waits for the read's reply.
    let batch = [
        send_rr(opener_handle, b"read-fst", &read_tag("recipe")),
        send_rr(opener_handle, b"open-fo!", &forward_open(7)),
    ];
    s.rt.block_on(write(&mut opener, &batch.concat()));
    let read = s.rt.block_on(read_message(&mut opener));
    assert_eq!((&frames::header(&read).sender_context, cip_status(&read).1), (b"read-fst", 0));
    let opened = s.rt.block_on(read_message(&mut opener));
    let h = frames::header(&opened);
    assert_eq!((h.session, &h.sender_context), (opener_handle, b"open-fo!"));
    assert_eq!(cip_status(&opened), (0x54 | 0x80, 0, vec![]));
    // Later reads of that client go on its own session; the other client stays on the shared one.
    let (reply, _) = s.ask(&mut opener, &send_rr(opener_handle, b"read-snd", &read_tag("recipe")));
    assert_eq!(cip_status(&reply).1, 0);
    let (reply, _) = s.ask(&mut reader, &send_rr(reader_handle, b"reader-1", &read_tag("recipe")));
    assert_eq!(cip_status(&reply).1, 0);

    assert_eq!(seen.accepted.load(Ordering::SeqCst), 2);
    let on: Vec<(usize, u8)> =
        seen.on(frames::SEND_RR_DATA).iter().map(|(c, f)| (*c, frames::items(f).unwrap().cip().unwrap()[0])).collect();
    // In arrival order: the first read (shared session), the Forward Open once the read was answered (the
    // opener's own session), its second read there, the reader's read on the shared session.
    let (shared, own) = (on[0].0, on[1].0);
    assert_ne!(shared, own);
    assert_eq!(on, [(shared, READ_TAG), (own, 0x54), (own, READ_TAG), (shared, READ_TAG)]);
    assert_eq!(seen.of(frames::REGISTER_SESSION).len(), 2);
    // On its own session too the message went under a sender context of the link's, not the client's.
    assert_ne!(&seen.on(frames::SEND_RR_DATA)[1].1[12..20], b"open-fo!");
    s.stop();
}

#[test]
fn the_shared_session_unregisters_as_the_relay_stops() {
    let (mut s, seen) = setup(None, 2, Duration::from_secs(2));
    let seen = seen.unwrap();
    let (mut client, handle) = s.registered();
    let (reply, _) = s.ask(&mut client, &send_rr(handle, b"read-001", &read_tag("recipe")));
    assert_eq!(cip_status(&reply).1, 0);
    drop(client);
    s.stop();
    let unregistered = seen.of(frames::UNREGISTER_SESSION);
    assert_eq!(unregistered.len(), 1);
    assert_eq!(frames::header(&unregistered[0]).session, DEVICE_SESSION);
}

#[test]
fn denied_write_is_answered_0x0f_audited_and_never_reaches_the_device() {
    let (mut s, seen) = setup(None, 2, Duration::from_secs(2));
    let seen = seen.unwrap();
    let (mut client, handle) = s.registered();
    let request = send_rr(handle, b"write-01", &write_tag("recipe", 42));
    let (reply, _) = s.ask(&mut client, &request);
    let h = frames::header(&reply);
    assert_eq!((h.command, h.session, h.status, &h.sender_context), (frames::SEND_RR_DATA, handle, 0, b"write-01"));
    assert_eq!(cip_status(&reply), (WRITE_TAG | 0x80, 0x0F, vec![]));
    // Then an allowed read: once its reply is back, the write would have reached the device before it.
    let (reply, _) = s.ask(&mut client, &send_rr(handle, b"read-002", &read_tag("recipe")));
    assert_eq!(cip_status(&reply).1, 0);
    let forwarded = seen.of(frames::SEND_RR_DATA);
    assert_eq!(forwarded.len(), 1, "only the read reaches the device");
    assert_eq!(frames::items(&forwarded[0]).and_then(|i| i.cip()).map(|c| c[0]), Some(READ_TAG));

    let audit = s.cp.wait(&s.relay, None, |e| matches!(e, Event::EnipAudit(a) if a.verdict == "deny"));
    let Event::EnipAudit(a) = &s.cp.seen[audit] else { unreachable!() };
    assert_eq!((a.listener.as_ref(), a.device.as_deref(), a.service), ("cell-enip", Some("press-plc"), WRITE_TAG));
    assert_eq!((a.general_status, a.encap_status), (Some(0x0F), None));
    assert_eq!(a.frame, request);
    s.stop();
}

#[test]
fn a_message_on_a_wrong_session_answers_0x0064_and_is_not_forwarded() {
    let (mut s, seen) = setup(None, 2, Duration::from_secs(2));
    let seen = seen.unwrap();
    let (mut client, handle) = s.registered();
    let wrong = handle.wrapping_add(1);
    let (reply, _) = s.ask(&mut client, &send_rr(wrong, b"wrong-01", &read_tag("recipe")));
    let h = frames::header(&reply);
    assert_eq!((h.command, h.session, h.status, h.length), (frames::SEND_RR_DATA, wrong, 0x0064, 0));
    assert_eq!(&h.sender_context, b"wrong-01");
    assert!(seen.of(frames::SEND_RR_DATA).is_empty());
    s.stop();
}

#[test]
fn a_silent_device_gets_the_gateway_answer_after_its_timeout() {
    let timeout = Duration::from_millis(300);
    let (mut s, seen) = setup(None, 2, timeout);
    seen.as_ref().unwrap().set_mode(Mode::Silent);
    let (mut client, handle) = s.registered();
    let (reply, took) = s.ask(&mut client, &send_rr(handle, b"silent01", &read_tag("recipe")));
    assert_eq!(frames::header(&reply).session, handle);
    assert_eq!(cip_status(&reply), (READ_TAG | 0x80, 0x01, vec![0x0204]));
    assert!(took >= timeout - Duration::from_millis(50), "answered after {took:?}");
    assert_eq!(seen.unwrap().of(frames::SEND_RR_DATA).len(), 1);
    assert_eq!(s.faults("timeout"), 1);
    s.stop();
}

#[test]
fn a_dead_device_port_gets_the_gateway_answer_then_at_once_during_the_backoff() {
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let (mut s, _) = setup(Some(dead), 2, Duration::from_secs(2));
    let (mut client, handle) = s.registered();
    let (reply, _) = s.ask(&mut client, &send_rr(handle, b"dead-001", &read_tag("recipe")));
    assert_eq!(cip_status(&reply), (READ_TAG | 0x80, 0x01, vec![0x0204]));
    assert_eq!(s.faults("connect_failed"), 1);
    let (reply, took) = s.ask(&mut client, &send_rr(handle, b"dead-002", &read_tag("recipe")));
    assert_eq!(cip_status(&reply), (READ_TAG | 0x80, 0x01, vec![0x0204]));
    assert_eq!(&frames::header(&reply).sender_context, b"dead-002");
    assert!(took < Duration::from_millis(500), "answered after {took:?}: not at once");
    assert_eq!((s.faults("connect_failed"), s.faults("unavailable")), (1, 1));
    let warning = s.cp.wait(&s.relay, None, |e| matches!(e, Event::Log { level: "warning", .. }));
    let Event::Log { message, .. } = &s.cp.seen[warning] else { unreachable!() };
    assert!(message.starts_with(&format!("device press-plc at 127.0.0.1:{dead} unreachable: ")), "{message}");
    s.stop();
}

#[test]
fn a_client_past_max_connections_gets_resource_unavailable() {
    let (mut s, seen) = setup(None, 1, Duration::from_secs(2));
    let (mut first, first_handle) = s.registered();
    let (reply, _) = s.ask(&mut first, &send_rr(first_handle, b"first-01", &read_tag("recipe")));
    assert_eq!(cip_status(&reply).1, 0);
    let (mut second, second_handle) = s.registered();
    let (reply, _) = s.ask(&mut second, &send_rr(second_handle, b"second01", &read_tag("recipe")));
    assert_eq!(frames::header(&reply).session, second_handle);
    assert_eq!(cip_status(&reply), (READ_TAG | 0x80, 0x02, vec![]));
    assert_eq!(s.faults("queue_full"), 1);
    assert_eq!(seen.unwrap().accepted.load(Ordering::SeqCst), 1, "one link only");
    s.stop();
}

#[test]
fn list_identity_is_asked_of_the_device_once_and_names_the_box() {
    let (mut s, seen) = setup(None, 2, Duration::from_secs(2));
    let seen = seen.unwrap();
    for round in 0..2u8 {
        let mut client = s.client();
        let context = [b'l', b'i', 0, 0, 0, 0, 0, round];
        let (reply, _) = s.ask(&mut client, &message(frames::LIST_IDENTITY, 0, &context, &[]));
        let h = frames::header(&reply);
        assert_eq!((h.command, h.status, h.sender_context), (frames::LIST_IDENTITY, 0, context));
        let mut expected = IDENTITY.to_vec();
        // sin_family, sin_port and sin_addr (big-endian): the listener's address, not the device's
        expected[2..4].copy_from_slice(&2u16.to_be_bytes());
        expected[4..6].copy_from_slice(&s.addr.port().to_be_bytes());
        expected[6..10].copy_from_slice(&[127, 0, 0, 1]);
        let mut data = 1u16.to_le_bytes().to_vec(); // item count
        data.extend_from_slice(&frames::ITEM_IDENTITY.to_le_bytes()); // identity item
        data.extend_from_slice(&(expected.len() as u16).to_le_bytes()); // its length
        data.extend_from_slice(&expected);
        assert_eq!(&reply[HEADER_LEN..], &data[..], "round {round}");
    }
    assert_eq!(seen.of(frames::LIST_IDENTITY).len(), 1);
    assert_eq!(seen.accepted.load(Ordering::SeqCst), 1);
    s.stop();
}

#[test]
fn a_silent_device_times_out_every_client_on_the_shared_session_and_keeps_it() {
    let (mut s, seen) = setup(None, 4, Duration::from_millis(300));
    let seen = seen.unwrap();
    seen.set_mode(Mode::Silent);
    let mut clients: Vec<_> = (0..2).map(|_| s.registered()).collect();
    for (n, (client, handle)) in clients.iter_mut().enumerate() {
        s.rt.block_on(write(client, &send_rr(*handle, &[b's', n as u8, 0, 0, 0, 0, 0, 0], &read_tag("recipe"))));
    }
    for (n, (client, handle)) in clients.iter_mut().enumerate() {
        let reply = s.rt.block_on(read_message(client));
        let h = frames::header(&reply);
        assert_eq!((h.session, h.sender_context), (*handle, [b's', n as u8, 0, 0, 0, 0, 0, 0]));
        assert_eq!(cip_status(&reply), (READ_TAG | 0x80, 0x01, vec![0x0204]));
    }
    assert_eq!(s.faults("timeout"), 2);
    // The session itself is kept: once the device answers again, the next read goes on it.
    seen.set_mode(Mode::Answer);
    let (client, handle) = &mut clients[0];
    let (reply, _) = s.ask(client, &send_rr(*handle, b"again!!!", &read_tag("recipe")));
    assert_eq!(cip_status(&reply).1, 0);
    assert_eq!(seen.accepted.load(Ordering::SeqCst), 1);
    s.stop();
}

#[test]
fn a_lost_shared_session_answers_for_the_device_and_the_next_message_opens_another() {
    let (mut s, seen) = setup(None, 4, Duration::from_secs(2));
    let seen = seen.unwrap();
    seen.set_mode(Mode::Close);
    let (mut first, first_handle) = s.registered();
    let (reply, _) = s.ask(&mut first, &send_rr(first_handle, b"lost-one", &read_tag("recipe")));
    assert_eq!(frames::header(&reply).sender_context, *b"lost-one");
    assert_eq!(cip_status(&reply), (READ_TAG | 0x80, 0x01, vec![0x0204]));
    assert_eq!(s.faults("connection_lost"), 1);
    seen.set_mode(Mode::Answer);
    let (mut second, second_handle) = s.registered();
    for (client, handle) in [(&mut second, second_handle), (&mut first, first_handle)] {
        let (reply, _) = s.ask(client, &send_rr(handle, b"back-up!", &read_tag("recipe")));
        assert_eq!(cip_status(&reply).1, 0);
    }
    assert_eq!(seen.accepted.load(Ordering::SeqCst), 2);
    assert_eq!(seen.of(frames::REGISTER_SESSION).len(), 2);
    s.stop();
}

#[test]
fn a_reload_that_moves_the_device_retires_its_shared_session() {
    let (mut s, old) = setup(None, 4, Duration::from_secs(2));
    let old = old.unwrap();
    let (mut client, handle) = s.registered();
    let (reply, _) = s.ask(&mut client, &send_rr(handle, b"before!!", &read_tag("recipe")));
    assert_eq!(cip_status(&reply).1, 0);
    let (port, new) = s.rt.block_on(enip_device());
    let config = enip_relay_config(enip_device_config(port, 4, Duration::from_secs(2)));
    s.relay.reload(engine(), config).expect("reload");
    // The old device's session unregisters (nothing was in flight); the next read goes to the new device.
    let until = Instant::now() + BOUND;
    while old.of(frames::UNREGISTER_SESSION).is_empty() {
        assert!(Instant::now() < until, "the retired session never unregistered");
        std::thread::sleep(Duration::from_millis(5));
    }
    // The connection identifies its principal again under the new generation, then decides and forwards.
    s.rt.block_on(write(&mut client, &send_rr(handle, b"after!!!", &read_tag("recipe"))));
    s.cp.wait(&s.relay, Some("operator"), |e| matches!(e, Event::Identify { .. }));
    let reply = s.rt.block_on(read_message(&mut client));
    assert_eq!(cip_status(&reply).1, 0);
    assert_eq!((old.of(frames::SEND_RR_DATA).len(), new.of(frames::SEND_RR_DATA).len()), (1, 1));
    s.stop();
}

#[test]
fn a_client_pipelining_more_than_the_shared_session_takes_from_it_gets_every_answer_in_order() {
    let (mut s, seen) = setup(None, 4, Duration::from_secs(2));
    let seen = seen.unwrap();
    let (mut client, handle) = s.registered();
    // 12 reads in one write: past the listener's max_outstanding (10) and the per-client share of the session.
    let batch: Vec<u8> =
        (0..12u8).flat_map(|n| send_rr(handle, &[b'p', n, 0, 0, 0, 0, 0, 0], &read_tag("recipe"))).collect();
    s.rt.block_on(write(&mut client, &batch));
    for n in 0..12u8 {
        let reply = s.rt.block_on(read_message(&mut client));
        let h = frames::header(&reply);
        assert_eq!((h.session, h.sender_context), (handle, [b'p', n, 0, 0, 0, 0, 0, 0]));
        assert_eq!(cip_status(&reply).1, 0);
    }
    assert_eq!(seen.of(frames::SEND_RR_DATA).len(), 12);
    assert_eq!(seen.accepted.load(Ordering::SeqCst), 1);
    s.stop();
}

// -- many clients at once ---------------------------------------------------------------------------------------

/// What a soak client sent, and so which answer it waits for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Sent {
    /// An allowed Read Tag of this many elements: the device's reply echoes the count.
    Read(u16),
    /// A Write Tag the policy refuses: zonegate's 0x0F.
    Write,
    /// A Forward Open: the device's reply, or 0x02 when every device session is taken.
    Open,
}

/// One client of the soak: registers, then sends `rounds` batches of random messages (reads under sender
/// contexts that clash within and across clients, refused writes, NOPs, at most one Forward Open), each batch
/// cut into random writes, and matches every answer to the message it answers. `leaves`: closes half-way with
/// a batch unanswered. `slow_every` (not 0): the device is slow to answer reads of a multiple of that many
/// elements (the client's first read is one), so the gateway may answer a forwarded message for it (0x01 /
/// 0x0204). Returns how many reads it sent and the element counts of those the device
/// answered.
async fn soak_client(
    addr: std::net::SocketAddr,
    seed: u64,
    rounds: usize,
    leaves: bool,
    slow_every: u16,
) -> Result<(usize, Vec<u16>), String> {
    let mut rng = Rng(seed | 1);
    let slow = slow_every > 0;
    let mut stream = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    write(&mut stream, &register_session(b"register")).await;
    let handle = frames::header(&read_message(&mut stream).await).session;
    let mut opened = false;
    let mut sent_reads = 0;
    let mut answered = Vec::new();
    for round in 0..rounds {
        let mut batch = Vec::new();
        let mut expected: Vec<([u8; 8], Sent)> = Vec::new();
        for _ in 0..1 + rng.below(6) {
            let context = [b'c', rng.below(3) as u8, 0, 0, 0, 0, 0, 0];
            let (cip, sent) = match rng.below(12) {
                0 => (write_tag("recipe", 1), Sent::Write),
                1 if !opened => {
                    opened = true;
                    (forward_open((seed % 1000) as u16), Sent::Open)
                }
                2 => {
                    batch.extend(message(frames::NOP, handle, &context, b"nop"));
                    continue;
                }
                _ => {
                    // With a slow device, each client's first read is one it is slow to answer.
                    let count = if slow && sent_reads == 0 { slow_every } else { 1 + rng.below(0xFFFE) as u16 };
                    sent_reads += 1;
                    (read_elements("recipe", count), Sent::Read(count))
                }
            };
            batch.extend(send_rr(handle, &context, &cip));
            expected.push((context, sent));
        }
        write_in_pieces(&mut stream, &batch, &mut rng).await;
        if leaves && round == rounds / 2 {
            return Ok((sent_reads, answered));
        }
        while !expected.is_empty() {
            let reply = read_message(&mut stream).await;
            let h = frames::header(&reply);
            if h.session != handle || h.status != 0 {
                return Err(format!("round {round}: header {h:?}, handle {handle:#x}"));
            }
            let (service, status, extended) = cip_status(&reply);
            let gateway = slow && status == 0x01 && extended == [0x0204];
            let kind = match service {
                0xCC => Sent::Read(0),
                0xCD => Sent::Write,
                0xD4 => Sent::Open,
                _ => return Err(format!("round {round}: reply to service {service:#x}")),
            };
            // The first of that kind under that context: a client's answers of one kind come in its order.
            let same = |sent: &Sent| std::mem::discriminant(sent) == std::mem::discriminant(&kind);
            let Some(i) = expected.iter().position(|(c, s)| *c == h.sender_context && same(s)) else {
                return Err(format!("round {round}: an answer nothing waits for: {h:?} {kind:?}"));
            };
            let (_, sent) = expected.remove(i);
            let right = match sent {
                Sent::Read(count) => gateway || (status == 0 && echoed_count(&reply) == Some(count)),
                Sent::Write => status == 0x0F,
                Sent::Open => gateway || status == 0 || status == frames::CIP_RESOURCE_UNAVAILABLE,
            };
            if !right {
                return Err(format!("round {round}: {sent:?} answered {status:#x}, {:?}", echoed_count(&reply)));
            }
            if let (Sent::Read(count), false) = (sent, gateway) {
                answered.push(count);
            }
        }
    }
    Ok((sent_reads, answered))
}

/// Six clients at once, one of them leaving half-way, against the fake device with `max_connections` 4, while
/// the policy is reloaded three times: every client gets exactly one answer per message, its own (the device
/// echoes each read's element count), every answered read reached the device once, no refused write did.
/// `slow_every`: the device answers a read of a multiple of that many elements only after `SLOW_FOR`, past
/// its `timeout`.
fn soak(seeds: std::ops::Range<u64>, timeout: Duration, slow_every: u16) {
    for seed in seeds {
        let (mut s, seen) = setup_with(engine_with_connections(), None, 4, timeout);
        let seen = seen.unwrap();
        seen.slow_every.store(slow_every, Ordering::SeqCst);
        let clients: Vec<_> = (0..6u64)
            .map(|c| s.rt.spawn(soak_client(s.addr, seed.wrapping_mul(31).wrapping_add(c), 20, c == 0, slow_every)))
            .collect();
        // Meanwhile the control plane identifies every connection and reloads the policy (same device: its
        // shared session stays; every client identifies again at its next message).
        let started = Instant::now();
        let mut reloads = 0;
        while !clients.iter().all(|c| c.is_finished()) {
            assert!(started.elapsed() < BOUND * 3, "seed {seed:#x}: the clients did not finish");
            s.cp.serve(&s.relay, Some("operator"), Duration::from_millis(10));
            if reloads < 3 && started.elapsed() > Duration::from_millis(20) * (reloads + 1) {
                let config = enip_relay_config(enip_device_config(s.device_port, 4, timeout));
                s.relay.reload(engine_with_connections(), config).expect("reload");
                reloads += 1;
            }
        }
        let (mut sent, mut answered) = (0, Vec::new());
        for client in clients {
            let (reads, counts) =
                s.rt.block_on(client).expect("the client ran").unwrap_or_else(|e| panic!("seed {seed:#x}: {e}"));
            sent += reads;
            answered.extend(counts);
        }
        let forwarded = seen.of(frames::SEND_RR_DATA);
        let cip: Vec<&[u8]> = forwarded.iter().map(|f| frames::items(f).unwrap().cip().unwrap()).collect();
        assert!(cip.iter().all(|c| c[0] != WRITE_TAG), "seed {seed:#x}: a refused write reached the device");
        let mut reached: Vec<u16> = cip
            .iter()
            .filter(|c| c[0] == READ_TAG)
            .map(|c| u16::from_le_bytes([c[c.len() - 2], c[c.len() - 1]]))
            .collect();
        assert!(reached.len() <= sent, "seed {seed:#x}: {} reads at the device, {sent} sent", reached.len());
        for count in answered {
            let at = reached.iter().position(|&r| r == count);
            assert!(at.is_some(), "seed {seed:#x}: an answered read of {count} never reached the device");
            reached.swap_remove(at.unwrap());
        }
        assert_eq!(s.faults("timeout") > 0, slow_every > 0, "seed {seed:#x}: {} timeouts", s.faults("timeout"));
        s.stop();
    }
}

#[test]
fn many_clients_at_once_each_get_every_answer_their_own_through_reloads() {
    soak(0x5eed_0001..0x5eed_0004, Duration::from_secs(5), 0);
}

#[test]
fn a_device_slow_to_answer_some_reads_never_has_a_late_reply_taken_for_another_message() {
    soak(0x51a0_0001..0x51a0_0004, Duration::from_millis(250), 128);
}
