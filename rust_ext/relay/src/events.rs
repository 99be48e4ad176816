//! What the relay tells Python: a queue of events and an eventfd that wakes Python's loop (docs/relay.md,
//! "Events"). Only per-connection events, audit records (denials and writes) and logs go through here:
//! nothing per allowed read.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::{Arc, Mutex};

/// One audit record's facts; Python formats the JSON line (it knows the principal's role and subject).
#[derive(Debug, Clone)]
pub struct Audit {
    pub conn_id: u64,
    pub listener: Arc<str>,
    pub device: Option<Arc<str>>,
    pub adu: Vec<u8>,
    /// Engine names: `deny`, `would_deny`, `allow`.
    pub verdict: &'static str,
    /// Engine names: `value_out_of_bounds`, `unknown_principal`, ...
    pub reason: &'static str,
    /// The deciding rule's id.
    pub rule: Option<String>,
    /// Set for a denial: the exception code answered.
    pub exception: Option<u8>,
    /// The malformed kind's name, for `reason == "malformed"`.
    pub malformed: Option<&'static str>,
    /// CLOCK_REALTIME, nanoseconds.
    pub time_ns: u64,
}

/// One EtherNet/IP audit record's facts (docs/enip-conduit.md, "Metrics and audit"): the decision's fields as
/// `CipDecision` has them, and the message; Python reads `function` and `writes` from the message itself, as
/// the Python conduit does.
#[derive(Debug, Clone)]
pub struct EnipAudit {
    pub conn_id: u64,
    pub listener: Arc<str>,
    pub device: Option<Arc<str>>,
    /// The whole encapsulation message as the client sent it.
    pub frame: Vec<u8>,
    /// Engine names: `deny`, `would_deny`, `allow`.
    pub verdict: &'static str,
    /// `CipReason::name()`.
    pub reason: &'static str,
    pub rule: Option<String>,
    /// The outer CIP service byte; 0 when none.
    pub service: u8,
    pub target: String,
    pub route: String,
    pub leaves: u32,
    pub denied_leaf: Option<u32>,
    pub malformed: Option<&'static str>,
    /// Set for a denial answered with a CIP status.
    pub general_status: Option<u8>,
    /// Set for a denial answered with an encapsulation status.
    pub encap_status: Option<u32>,
    /// CLOCK_REALTIME, nanoseconds.
    pub time_ns: u64,
}

#[derive(Debug, Clone)]
pub enum Event {
    /// A connection waits for `Relay::identify`; `der` is the client's end-entity certificate (TLS only).
    Identify {
        conn_id: u64,
        listener: Arc<str>,
        peer: String,
        der: Option<Vec<u8>>,
    },
    Closed {
        conn_id: u64,
    },
    Audit(Box<Audit>),
    EnipAudit(Box<EnipAudit>),
    /// `level`: `info`, `warning` or `error`.
    Log {
        level: &'static str,
        message: String,
    },
    /// The answer to `Relay::submit`: the device's reply, or the exception code answered instead.
    Reply {
        token: u64,
        adu: Option<Vec<u8>>,
        exception: Option<u8>,
    },
    /// Audit records and log lines dropped since the last take (the queue was full): Python counts the
    /// audit records as suppressed, as it does its own.
    Dropped {
        audits: u64,
        logs: u64,
    },
}

/// Audit and log events held for Python at most; past it they are dropped and the drop is logged, so a
/// stalled control plane cannot make the relay's memory grow without bound. The others (identify, closed,
/// reply) are never dropped: there is one per connection or per submitted request.
pub const MAX_QUEUED_RECORDS: usize = 100_000;

#[derive(Default)]
struct Queue {
    events: Vec<Event>,
    records: usize,
    dropped_audits: u64,
    dropped_logs: u64,
}

pub struct Events {
    queue: Mutex<Queue>,
    fd: OwnedFd,
}

impl Events {
    pub fn new() -> io::Result<Events> {
        // SAFETY: eventfd takes no pointers; the result is checked before it is owned.
        let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` was just created and nothing else owns it.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(Events { queue: Mutex::new(Queue::default()), fd })
    }

    /// The eventfd Python registers with its loop; readable while events may be waiting.
    pub fn fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    pub fn push(&self, event: Event) {
        let was_empty = {
            let mut q = self.queue.lock().unwrap_or_else(|e| e.into_inner());
            if matches!(event, Event::Audit(_) | Event::EnipAudit(_) | Event::Log { .. }) {
                if q.records >= MAX_QUEUED_RECORDS {
                    match event {
                        Event::Audit(_) | Event::EnipAudit(_) => q.dropped_audits += 1,
                        _ => q.dropped_logs += 1,
                    }
                    return;
                }
                q.records += 1;
            }
            let was_empty = q.events.is_empty();
            q.events.push(event);
            was_empty
        };
        // Only the first event into an empty queue wakes Python: it takes every event at once, and a push
        // after that take finds the queue empty again and wakes it again.
        if was_empty {
            self.wake();
        }
    }

    fn wake(&self) {
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a live u64 to an fd this struct owns. EAGAIN (counter at its maximum)
        // means the fd is readable already, which is all the write is for.
        unsafe { libc::write(self.fd.as_raw_fd(), (&one as *const u64).cast(), 8) };
    }

    /// Every event queued, oldest first.
    pub fn take(&self) -> Vec<Event> {
        let mut q = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        let mut events = std::mem::take(&mut q.events);
        q.records = 0;
        if q.dropped_audits > 0 || q.dropped_logs > 0 {
            let (audits, logs) = (std::mem::take(&mut q.dropped_audits), std::mem::take(&mut q.dropped_logs));
            events.push(Event::Dropped { audits, logs });
        }
        events
    }

    pub fn log(&self, level: &'static str, message: String) {
        self.push(Event::Log { level, message });
    }
}
