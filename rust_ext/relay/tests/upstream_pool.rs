//! The device pool against simulated devices over real TCP on 127.0.0.1 (docs/relay.md "Upstream",
//! docs/dataplane.md "Device faults"): transaction-id remapping, pipelining, timeouts, faults, back-pressure.

mod upstream_common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::time::{timeout, Instant};
use upstream_common::*;
use zonegate_relay::config::MAX_QUEUED_PER_DEVICE;
use zonegate_relay::upstream::DevicePool;

const PATH_UNAVAILABLE: u8 = 0x0A;
const TARGET_NO_RESPONSE: u8 = 0x0B;
const SERVER_BUSY: u8 = 0x06;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn colliding_client_transaction_ids_each_get_their_own_reply() {
    let dev = device(|_, stream| serve_reversed(stream)).await;
    let metrics = metrics();
    let pool = DevicePool::new(Arc::new(device_config(dev.port, true, 16, BOUND)), metrics.clone()).unwrap();

    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..50u16 {
        let pool = pool.clone();
        tasks.spawn(async move {
            // Three client transaction ids shared by fifty requests: only the pool's own ids tell them apart.
            let request = read_holding(i % 3, 1, 100 + i, 1 + i % 5);
            let got = pool.forward(&request, deadline_in(5_000)).await;
            (request, got)
        });
    }
    let mut n = 0;
    while let Some(joined) = timeout(BOUND, tasks.join_next()).await.unwrap() {
        let (request, got) = joined.unwrap();
        let forwarded = got.unwrap_or_else(|code| panic!("exception {code:#04x}"));
        assert_eq!(forwarded.reply, answer(&request), "reply to the request at {}", start_of(&request));
        n += 1;
    }
    assert_eq!(n, 50);
    assert_eq!(dev.accepted.load(Ordering::SeqCst), 1, "one connection carries every request");
    assert_eq!(fault(&metrics, "plc", "unmatched_reply"), 0);
    assert_eq!(latency_count(&metrics, "plc"), 50.0);
    assert_eq!(up(&metrics, "plc"), Some(true));
}

/// A device that holds every request until none has arrived for a moment, then answers them all: the most it
/// holds at once is what the pool had in flight on the connection.
async fn max_in_flight(pipelining: bool, depth: usize) -> usize {
    let max = Arc::new(AtomicUsize::new(0));
    let seen = max.clone();
    let dev = device(move |_, mut stream| {
        let max = seen.clone();
        async move {
            let mut frames = Frames::new();
            let mut held: Vec<Vec<u8>> = Vec::new();
            loop {
                tokio::select! {
                    batch = frames.next_batch(&mut stream) => {
                        let Some(batch) = batch else { return };
                        held.extend(batch);
                        max.fetch_max(held.len(), Ordering::SeqCst);
                    }
                    _ = tokio::time::sleep(Duration::from_millis(20)), if !held.is_empty() => {
                        let out: Vec<u8> = held.drain(..).flat_map(|r| answer(&r)).collect();
                        if stream.write_all(&out).await.is_err() {
                            return;
                        }
                    }
                }
            }
        }
    })
    .await;
    let pool = DevicePool::new(Arc::new(device_config(dev.port, pipelining, depth, BOUND)), metrics()).unwrap();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..20u16 {
        let pool = pool.clone();
        tasks.spawn(async move {
            let request = read_holding(i, 1, i, 1);
            (pool.forward(&request, deadline_in(9_000)).await.map(|f| f.reply), answer(&request))
        });
    }
    while let Some(joined) = timeout(BOUND, tasks.join_next()).await.unwrap() {
        let (got, expected) = joined.unwrap();
        assert_eq!(got.unwrap(), expected);
    }
    max.load(Ordering::SeqCst)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelining_puts_depth_requests_in_flight_and_no_more() {
    assert_eq!(max_in_flight(true, 4).await, 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_pipelining_one_request_at_a_time() {
    assert_eq!(max_in_flight(false, 16).await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeout_answers_0x0b_keeps_the_connection_and_drops_the_late_reply() {
    // Holds the request at address 1; answers it late, just before the next request's reply.
    let dev = device(|_, mut stream| async move {
        let mut frames = Frames::new();
        let mut held: Vec<Vec<u8>> = Vec::new();
        while let Some(batch) = frames.next_batch(&mut stream).await {
            let mut out = Vec::new();
            for request in batch {
                if start_of(&request) == 1 {
                    held.push(request);
                } else {
                    out.extend(held.drain(..).flat_map(|r| answer(&r)));
                    out.extend(answer(&request));
                }
            }
            if stream.write_all(&out).await.is_err() {
                return;
            }
        }
    })
    .await;
    let metrics = metrics();
    let config = device_config(dev.port, false, 1, Duration::from_millis(200));
    let pool = DevicePool::new(Arc::new(config), metrics.clone()).unwrap();

    let slow = pool.forward(&read_holding(9, 1, 1, 1), deadline_in(5_000)).await;
    assert_eq!(slow.unwrap_err(), TARGET_NO_RESPONSE);
    assert_eq!(fault(&metrics, "plc", "timeout"), 1);

    let next = read_holding(9, 1, 2, 2);
    let got = pool.forward(&next, deadline_in(5_000)).await.unwrap();
    assert_eq!(got.reply, answer(&next), "the late reply is not taken for the next request's");
    assert_eq!(fault(&metrics, "plc", "unmatched_reply"), 1, "the late reply is dropped and counted");
    assert_eq!(dev.accepted.load(Ordering::SeqCst), 1, "the connection is kept");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_callers_deadline_is_honoured_before_the_devices_timeout() {
    let dev = device(|_, mut stream| async move {
        let mut frames = Frames::new();
        while frames.next_batch(&mut stream).await.is_some() {}
    })
    .await;
    let metrics = metrics();
    let pool = DevicePool::new(Arc::new(device_config(dev.port, false, 1, BOUND)), metrics.clone()).unwrap();
    let deadline = deadline_in(150);
    let got = timeout(BOUND, pool.forward(&read_holding(1, 1, 0, 1), deadline)).await.unwrap();
    assert_eq!(got.unwrap_err(), TARGET_NO_RESPONSE);
    assert!(Instant::now() >= deadline);
    // The connection counts the timeout when it gives the request up, which may be just after the caller's
    // own deadline returned: wait for it, within the bound.
    let counted = timeout(BOUND, async {
        while fault(&metrics, "plc", "timeout") == 0 {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    })
    .await;
    assert!(counted.is_ok(), "the timeout is counted");
    assert_eq!(fault(&metrics, "plc", "timeout"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replies_with_the_wrong_transaction_id_or_unit_are_dropped_and_counted() {
    let dev = device(|_, mut stream| async move {
        let mut frames = Frames::new();
        while let Some(batch) = frames.next_batch(&mut stream).await {
            let mut out = Vec::new();
            for request in batch {
                let mut reply = answer(&request);
                match start_of(&request) {
                    1 => reply[0] ^= 0x80, // another transaction id
                    2 => reply[6] += 1,    // another unit
                    3 => reply[7] = 4,     // another function
                    _ => {}
                }
                out.extend(reply);
            }
            if stream.write_all(&out).await.is_err() {
                return;
            }
        }
    })
    .await;
    let metrics = metrics();
    let config = device_config(dev.port, true, 8, Duration::from_millis(200));
    let pool = DevicePool::new(Arc::new(config), metrics.clone()).unwrap();
    for start in 1..=3 {
        let got = pool.forward(&read_holding(5, 1, start, 1), deadline_in(5_000)).await;
        assert_eq!(got.unwrap_err(), TARGET_NO_RESPONSE, "request at {start}");
    }
    assert_eq!(fault(&metrics, "plc", "unmatched_reply"), 3);
    assert_eq!(fault(&metrics, "plc", "timeout"), 3);
    let good = read_holding(5, 1, 4, 1);
    assert_eq!(pool.forward(&good, deadline_in(5_000)).await.unwrap().reply, answer(&good));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_down_answers_0x0a_backs_off_and_recovers_when_it_comes_up() {
    // A port nothing listens on (bound, then freed): connecting is refused.
    let port = {
        let probe = TcpListener::bind("127.0.0.1:0").await.unwrap();
        probe.local_addr().unwrap().port()
    };
    let metrics = metrics();
    let config = device_config(port, false, 1, Duration::from_secs(2));
    let pool = DevicePool::new(Arc::new(config), metrics.clone()).unwrap();
    let request = read_holding(3, 1, 10, 1);

    assert_eq!(pool.forward(&request, deadline_in(5_000)).await.unwrap_err(), PATH_UNAVAILABLE);
    assert_eq!(fault(&metrics, "plc", "connect_failed"), 1);
    assert_eq!(up(&metrics, "plc"), Some(false));
    let first = pool.retry_at().expect("backing off");

    // During the backoff: 0x0A at once, without trying to connect.
    if Instant::now() < first {
        assert_eq!(pool.forward(&request, deadline_in(5_000)).await.unwrap_err(), PATH_UNAVAILABLE);
        assert_eq!(fault(&metrics, "plc", "unavailable"), 1);
        assert_eq!(fault(&metrics, "plc", "connect_failed"), 1);
    }

    // After it: the next request tries again, fails again, and the backoff doubles.
    tokio::time::sleep_until(first).await;
    assert_eq!(pool.forward(&request, deadline_in(5_000)).await.unwrap_err(), PATH_UNAVAILABLE);
    assert_eq!(fault(&metrics, "plc", "connect_failed"), 2);
    let second = pool.retry_at().expect("backing off");
    assert!(second >= first + Duration::from_millis(200), "0.1 s, then 0.2 s");

    // The device comes up; the first request after the backoff reconnects.
    let dev = device_on(TcpListener::bind(("127.0.0.1", port)).await.unwrap(), |_, s| serve_reversed(s));
    tokio::time::sleep_until(second).await;
    let got = pool.forward(&request, deadline_in(5_000)).await.unwrap();
    assert_eq!(got.reply, answer(&request));
    assert_eq!(up(&metrics, "plc"), Some(true));
    assert_eq!(pool.retry_at(), None);
    assert_eq!(dev.accepted.load(Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_mid_reply_answers_0x0b_and_the_next_request_reconnects() {
    let dev = device(|n, mut stream| async move {
        let mut frames = Frames::new();
        if n == 0 {
            // Half a reply, then a reset.
            let Some(batch) = frames.next_batch(&mut stream).await else { return };
            let reply = answer(&batch[0]);
            let _ = stream.write_all(&reply[..5]).await;
            let _ = stream.set_zero_linger();
            drop(stream);
            return;
        }
        serve_reversed(stream).await
    })
    .await;
    let metrics = metrics();
    let pool = DevicePool::new(Arc::new(device_config(dev.port, false, 1, BOUND)), metrics.clone()).unwrap();
    let request = read_holding(1, 1, 20, 3);
    assert_eq!(pool.forward(&request, deadline_in(5_000)).await.unwrap_err(), TARGET_NO_RESPONSE);
    assert_eq!(fault(&metrics, "plc", "connection_lost"), 1);

    let got = pool.forward(&request, deadline_in(5_000)).await.unwrap();
    assert_eq!(got.reply, answer(&request));
    assert_eq!(dev.accepted.load(Ordering::SeqCst), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_that_is_not_modbus_answers_0x0b_for_all_in_flight_and_aborts() {
    let (closed_tx, closed_rx) = oneshot::channel::<()>();
    let closed_tx = Arc::new(Mutex::new(Some(closed_tx)));
    let dev = device(move |_, mut stream| {
        let closed_tx = closed_tx.clone();
        async move {
            let mut frames = Frames::new();
            let mut held = 0;
            while held < 3 {
                let Some(batch) = frames.next_batch(&mut stream).await else { return };
                held += batch.len();
            }
            // Protocol id 0x1234: not Modbus/TCP, cannot be resynchronised.
            let _ = stream.write_all(&[0x00, 0x01, 0x12, 0x34, 0x00, 0x03, 0x01, 0x03, 0x00]).await;
            let mut rest = [0u8; 64];
            while matches!(stream.read(&mut rest).await, Ok(n) if n > 0) {}
            if let Some(tx) = closed_tx.lock().unwrap().take() {
                let _ = tx.send(());
            }
        }
    })
    .await;
    let metrics = metrics();
    let pool = DevicePool::new(Arc::new(device_config(dev.port, true, 8, BOUND)), metrics.clone()).unwrap();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..3u16 {
        let pool = pool.clone();
        tasks.spawn(async move { pool.forward(&read_holding(i, 1, i, 1), deadline_in(5_000)).await });
    }
    while let Some(joined) = timeout(BOUND, tasks.join_next()).await.unwrap() {
        assert_eq!(joined.unwrap().unwrap_err(), TARGET_NO_RESPONSE);
    }
    assert_eq!(fault(&metrics, "plc", "bad_reply"), 1);
    timeout(BOUND, closed_rx).await.expect("the pool closes the connection").unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_answers_0x06_and_every_waiting_request_resolves_by_its_deadline() {
    // Takes requests and never answers.
    let dev = device(|_, mut stream| async move {
        let mut frames = Frames::new();
        while frames.next_batch(&mut stream).await.is_some() {}
    })
    .await;
    let metrics = metrics();
    let pool = DevicePool::new(Arc::new(device_config(dev.port, false, 1, BOUND)), metrics.clone()).unwrap();
    let deadline = deadline_in(1_000);
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..=MAX_QUEUED_PER_DEVICE {
        let pool = pool.clone();
        tasks.spawn(async move { pool.forward(&read_holding(i as u16, 1, 0, 1), deadline).await });
    }
    // One in flight, the rest queued: wait (bounded) until every task has handed its request over.
    let until = Instant::now() + BOUND;
    while pool.pending() < MAX_QUEUED_PER_DEVICE + 1 && Instant::now() < until {
        tokio::task::yield_now().await;
    }
    assert_eq!(pool.pending(), MAX_QUEUED_PER_DEVICE + 1);
    let over = pool.forward(&read_holding(1, 1, 0, 1), deadline_in(5_000)).await;
    assert_eq!(over.unwrap_err(), SERVER_BUSY);
    assert_eq!(fault(&metrics, "plc", "queue_full"), 1);

    let mut n = 0;
    while let Some(joined) = timeout(BOUND, tasks.join_next()).await.unwrap() {
        assert_eq!(joined.unwrap().unwrap_err(), TARGET_NO_RESPONSE);
        n += 1;
    }
    assert_eq!(n, MAX_QUEUED_PER_DEVICE + 1);
    assert!(Instant::now() >= deadline);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_finishes_what_is_in_flight_then_closes() {
    let (release_tx, release_rx) = oneshot::channel::<()>();
    let release = Arc::new(Mutex::new(Some(release_rx)));
    let (closed_tx, closed_rx) = oneshot::channel::<()>();
    let closed_tx = Arc::new(Mutex::new(Some(closed_tx)));
    let dev = device(move |_, mut stream| {
        let release = release.lock().unwrap().take();
        let closed_tx = closed_tx.lock().unwrap().take();
        async move {
            let mut frames = Frames::new();
            let Some(batch) = frames.next_batch(&mut stream).await else { return };
            // Answers only once the pool has been closed.
            if let Some(release) = release {
                let _ = release.await;
            }
            let _ = stream.write_all(&answer(&batch[0])).await;
            while frames.next_batch(&mut stream).await.is_some() {}
            if let Some(tx) = closed_tx {
                let _ = tx.send(());
            }
        }
    })
    .await;
    let pool = DevicePool::new(Arc::new(device_config(dev.port, false, 1, BOUND)), metrics()).unwrap();
    let request = read_holding(4, 1, 7, 2);
    let in_flight = tokio::spawn({
        let pool = pool.clone();
        let request = request.clone();
        async move { pool.forward(&request, deadline_in(5_000)).await }
    });
    let until = Instant::now() + BOUND;
    while pool.pending() == 0 && Instant::now() < until {
        tokio::task::yield_now().await;
    }
    pool.close();
    assert_eq!(pool.forward(&request, deadline_in(5_000)).await.unwrap_err(), PATH_UNAVAILABLE);
    release_tx.send(()).unwrap();
    let got = timeout(BOUND, in_flight).await.unwrap().unwrap().unwrap();
    assert_eq!(got.reply, answer(&request));
    timeout(BOUND, closed_rx).await.expect("the connection closes once idle").unwrap();
    assert_eq!(pool.connections(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_device_does_not_delay_another() {
    let silent = device(|_, mut stream| async move {
        let mut frames = Frames::new();
        while frames.next_batch(&mut stream).await.is_some() {}
    })
    .await;
    let fast = device(|_, s| serve_reversed(s)).await;
    let metrics = metrics();
    let silent_pool = DevicePool::new(Arc::new(device_config(silent.port, false, 1, BOUND)), metrics.clone()).unwrap();
    let fast_pool = DevicePool::new(Arc::new(device_config(fast.port, false, 1, BOUND)), metrics).unwrap();
    let stuck = tokio::spawn({
        let pool = silent_pool.clone();
        async move { pool.forward(&read_holding(1, 1, 0, 1), deadline_in(5_000)).await }
    });
    for i in 0..20u16 {
        let request = read_holding(i, 1, i, 1);
        assert_eq!(fast_pool.forward(&request, deadline_in(5_000)).await.unwrap().reply, answer(&request));
    }
    assert!(!stuck.is_finished());
    stuck.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replies_cut_into_pieces_and_exception_replies_come_through() {
    // Every reply written a byte at a time; the request at address 99, and one for no registers (malformed,
    // as a monitor-mode policy forwards it), are answered exception 02.
    let dev = device(|_, mut stream| async move {
        let _ = stream.set_nodelay(true);
        let mut frames = Frames::new();
        while let Some(batch) = frames.next_batch(&mut stream).await {
            for request in batch {
                let reply = if start_of(&request) == 99 || request[10..12] == [0, 0] {
                    let mut exception = request[..9].to_vec();
                    exception[4..6].copy_from_slice(&3u16.to_be_bytes()); // length: unit + fc + code
                    exception[7] = 0x83; // function | 0x80
                    exception[8] = 0x02; // illegal data address
                    exception
                } else {
                    answer(&request)
                };
                for byte in reply {
                    if stream.write_all(&[byte]).await.is_err() {
                        return;
                    }
                }
            }
        }
    })
    .await;
    let metrics = metrics();
    let pool = DevicePool::new(Arc::new(device_config(dev.port, true, 4, BOUND)), metrics.clone()).unwrap();
    for (start, qty) in [(5u16, 3u16), (99, 3), (6, 3), (7, 0)] {
        let request = read_holding(0x4242, 1, start, qty);
        let got = pool.forward(&request, deadline_in(5_000)).await.unwrap();
        if start == 99 || qty == 0 {
            assert_eq!(got.reply, [0x42, 0x42, 0, 0, 0, 3, 1, 0x83, 0x02]);
        } else {
            assert_eq!(got.reply, answer(&request));
        }
    }
    assert_eq!(fault(&metrics, "plc", "unmatched_reply"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_device_gets_up_to_max_connections() {
    // Holds requests until none has come for a moment: the first connection stays full while more queue.
    let dev = device(|_, mut stream| async move {
        let mut frames = Frames::new();
        let mut held: Vec<Vec<u8>> = Vec::new();
        loop {
            tokio::select! {
                batch = frames.next_batch(&mut stream) => {
                    let Some(batch) = batch else { return };
                    held.extend(batch);
                }
                _ = tokio::time::sleep(Duration::from_millis(20)), if !held.is_empty() => {
                    let out: Vec<u8> = held.drain(..).flat_map(|r| answer(&r)).collect();
                    if stream.write_all(&out).await.is_err() {
                        return;
                    }
                }
            }
        }
    })
    .await;
    let mut config = device_config(dev.port, false, 1, BOUND);
    config.max_connections = 2;
    let pool = DevicePool::new(Arc::new(config), metrics()).unwrap();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..10u16 {
        let pool = pool.clone();
        tasks.spawn(async move {
            let request = read_holding(i, 1, i, 1);
            (pool.forward(&request, deadline_in(5_000)).await.map(|f| f.reply), answer(&request))
        });
    }
    while let Some(joined) = timeout(BOUND, tasks.join_next()).await.unwrap() {
        let (got, expected) = joined.unwrap();
        assert_eq!(got.unwrap(), expected);
    }
    assert_eq!(dev.accepted.load(Ordering::SeqCst), 2);
    assert_eq!(pool.connections(), 2);
}
