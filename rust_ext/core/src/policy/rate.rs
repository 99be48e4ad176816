//! Rate buckets that live beside the compiled policy (docs/engine.md section 4, "Rate buckets").
//!
//! Integer arithmetic only, so the engine and the reference model agree to the nanosecond:
//! capacity `C = burst * period_ns`, a request costs `period_ns`, time refills `count` units per
//! nanosecond. Levels are u128 because `burst * period_ns` and `elapsed * count` can exceed u64.

use std::sync::Mutex;

/// A compiled token-bucket specification.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RateSpec {
    pub count: u64,
    pub period_ns: u64,
    pub capacity: u128,
}

impl RateSpec {
    pub fn new(count: u64, period_ns: u64, burst: u64) -> Self {
        RateSpec { count, period_ns, capacity: burst as u128 * period_ns as u128 }
    }
}

/// The state of one bucket; starts full at the time of its first request.
#[derive(Clone, Copy, Debug, Default)]
pub struct Bucket {
    level: u128,
    last: u64,
    started: bool,
}

impl Bucket {
    /// Charges one request at `now_ns`; true when the bucket held a token.
    #[inline]
    pub fn charge(&mut self, spec: &RateSpec, now_ns: u64) -> bool {
        if !self.started {
            self.started = true;
            self.level = spec.capacity;
            self.last = now_ns;
        }
        let elapsed = now_ns.saturating_sub(self.last) as u128;
        let refill = elapsed * spec.count as u128; // < 2^128: both factors are below 2^64
        self.level = self.level.saturating_add(refill).min(spec.capacity);
        self.last = self.last.max(now_ns);
        if self.level >= spec.period_ns as u128 {
            self.level -= spec.period_ns as u128;
            true
        } else {
            false
        }
    }

    /// Current level, for tests and diagnostics.
    pub fn level(&self) -> u128 {
        self.level
    }
}

/// Every bucket of one engine, one slot per (rule, entry with a rate, principal listed by the rule).
/// Each slot has its own lock, so threads deciding for different principals never contend.
#[derive(Debug, Default)]
pub struct Buckets {
    slots: Vec<Mutex<Bucket>>,
}

impl Buckets {
    pub fn new(n: usize) -> Self {
        Buckets { slots: (0..n).map(|_| Mutex::new(Bucket::default())).collect() }
    }

    pub fn len(&self) -> usize {
        self.slots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// Charges slot `slot`; a poisoned lock (a panic elsewhere while holding it) still charges, since
    /// the bucket state is two integers that are never left half-written.
    #[inline]
    pub fn charge(&self, slot: usize, spec: &RateSpec, now_ns: u64) -> bool {
        let Some(m) = self.slots.get(slot) else { return false };
        let mut b = m.lock().unwrap_or_else(|e| e.into_inner());
        b.charge(spec, now_ns)
    }
}
