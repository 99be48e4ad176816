//! The event queue between the relay and Python's loop (docs/relay.md "Events"): the eventfd wakes the loop
//! when the first event arrives, `take` empties the queue, and audit and log records are bounded.

use std::sync::Arc;

use zonegate_relay::events::{Audit, Event, Events, MAX_QUEUED_RECORDS};

fn readable(events: &Events) -> bool {
    let mut pfd = libc::pollfd { fd: events.fd(), events: libc::POLLIN, revents: 0 };
    // SAFETY: one valid pollfd; a zero timeout only looks.
    unsafe { libc::poll(&mut pfd, 1, 0) == 1 }
}

fn drain_fd(events: &Events) {
    let mut counter = [0u8; 8];
    // SAFETY: reads at most 8 bytes into a live buffer.
    unsafe { libc::read(events.fd(), counter.as_mut_ptr().cast(), 8) };
}

fn audit() -> Event {
    Event::Audit(Box::new(Audit {
        conn_id: 1,
        listener: Arc::from("zone"),
        device: None,
        adu: vec![0, 1, 0, 0, 0, 2, 1, 3],
        verdict: "deny",
        reason: "malformed",
        rule: None,
        exception: Some(3),
        malformed: Some("truncated"),
        time_ns: 1,
    }))
}

#[test]
fn first_event_wakes_the_loop_and_take_empties_the_queue() {
    let events = Events::new().unwrap();
    assert!(!readable(&events));
    events.push(Event::Closed { conn_id: 7 });
    assert!(readable(&events));
    drain_fd(&events);
    // Into a queue that is not empty: Python was woken already.
    events.log("info", "device up".to_owned());
    assert!(!readable(&events));
    let taken = events.take();
    assert!(matches!(taken[..], [Event::Closed { conn_id: 7 }, Event::Log { level: "info", .. }]));
    assert!(events.take().is_empty());
    events.push(Event::Reply { token: 1, adu: None, exception: Some(0x0B) });
    assert!(readable(&events), "a push after a take wakes the loop again");
}

#[test]
fn audit_and_log_records_are_bounded_but_connection_events_are_not() {
    let events = Events::new().unwrap();
    for _ in 0..MAX_QUEUED_RECORDS + 5 {
        events.push(audit());
    }
    events.log("warning", "one more".to_owned());
    events.push(Event::Closed { conn_id: 9 });
    let taken = events.take();
    let audits = taken.iter().filter(|e| matches!(e, Event::Audit(_))).count();
    assert_eq!(audits, MAX_QUEUED_RECORDS);
    assert!(taken.iter().any(|e| matches!(e, Event::Closed { conn_id: 9 })));
    let Some(Event::Dropped { audits: 5, logs: 1 }) = taken.last() else {
        panic!("no drop report: {:?}", taken.last())
    };
    // The bound starts again once Python has taken the queue.
    events.push(audit());
    assert_eq!(events.take().len(), 1);
}
