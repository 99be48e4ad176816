//! Token-bucket arithmetic (docs/engine.md section 4, "Rate buckets"), step by step.

use zonegate_core::policy::rate::{Bucket, RateSpec};

#[test]
fn bucket_starts_full_at_its_first_request() {
    let spec = RateSpec::new(2, 1_000, 3); // 2 per 1000 ns, burst 3: capacity 3000, cost 1000
    let mut b = Bucket::default();
    assert!(b.charge(&spec, 5_000));
    assert_eq!(b.level(), 2_000);
    assert!(b.charge(&spec, 5_000));
    assert!(b.charge(&spec, 5_000));
    assert_eq!(b.level(), 0);
    assert!(!b.charge(&spec, 5_000));
}

#[test]
fn refill_is_elapsed_times_count_capped_at_capacity() {
    let spec = RateSpec::new(2, 1_000, 3);
    let mut b = Bucket::default();
    for _ in 0..3 {
        assert!(b.charge(&spec, 0));
    }
    // 499 ns * 2 = 998 < 1000: still empty, but the partial refill is kept.
    assert!(!b.charge(&spec, 499));
    assert_eq!(b.level(), 998);
    assert!(b.charge(&spec, 500)); // +2
    assert_eq!(b.level(), 0);
    assert!(b.charge(&spec, 1_000_000));
    assert_eq!(b.level(), 2_000); // capped at 3000, then charged
}

#[test]
fn clock_going_back_refills_nothing_and_keeps_last() {
    let spec = RateSpec::new(1, 10, 1);
    let mut b = Bucket::default();
    assert!(b.charge(&spec, 100));
    assert!(!b.charge(&spec, 50));
    assert!(!b.charge(&spec, 109));
    assert!(b.charge(&spec, 110));
}
