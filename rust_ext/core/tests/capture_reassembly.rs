//! TCP reassembly of one direction: order by sequence number, first copy wins, holes reported.

use zonegate_core::capture::reassembly::{Chunk, Direction, Syn, Tag, MAX_PENDING_BYTES};

/// What the consumer saw: the stream's bytes, with `|` where a hole was skipped.
fn run(start: Option<u32>, segments: &[(u32, &[u8])], flush: bool) -> (Vec<u8>, Direction) {
    let mut dir = Direction::new();
    let mut seen = Vec::new();
    if let Some(isn) = start {
        assert_eq!(dir.syn(isn), Syn::Started);
    }
    let mut sink = |c: Chunk<'_>| match c {
        Chunk::Data(d, _) => seen.extend_from_slice(d),
        Chunk::Gap => seen.push(b'|'),
    };
    for (i, (seq, data)) in segments.iter().enumerate() {
        dir.segment(*seq, data, Tag { frame: i as u64 + 1, ts_ns: 0 }, &mut sink);
    }
    if flush {
        dir.flush(&mut sink);
    }
    (seen, dir)
}

#[test]
fn in_order_segments_pass_straight_through() {
    let (seen, dir) = run(Some(99), &[(100, b"abc"), (103, b"def")], false);
    assert_eq!(seen, b"abcdef");
    assert_eq!(dir.stats.segments, 2);
    assert_eq!(dir.stats.out_of_order, 0);
}

#[test]
fn out_of_order_segment_waits_for_the_hole() {
    let (seen, dir) = run(Some(99), &[(103, b"def"), (106, b"ghi"), (100, b"abc")], false);
    assert_eq!(seen, b"abcdefghi");
    assert_eq!(dir.stats.out_of_order, 2);
    assert_eq!(dir.pending_bytes(), 0);
}

#[test]
fn retransmission_is_dropped() {
    let (seen, dir) = run(Some(99), &[(100, b"abc"), (100, b"abc"), (103, b"def"), (100, b"abc")], false);
    assert_eq!(seen, b"abcdef");
    assert_eq!(dir.stats.retransmitted, 2);
}

#[test]
fn overlap_keeps_the_first_copy_and_adds_only_new_bytes() {
    // The second segment repeats "c" as "X" and brings "de": the first copy of "c" wins.
    let (seen, dir) = run(Some(99), &[(100, b"abc"), (102, b"Xde")], false);
    assert_eq!(seen, b"abcde");
    assert_eq!(dir.stats.overlapping, 1);
}

#[test]
fn overlapping_waiting_segments_keep_the_first_copy() {
    // "EF" arrives after "ef" was already waiting for the same sequence numbers: "ef" wins.
    let (seen, _) = run(Some(99), &[(104, b"efgh"), (102, b"cdEF"), (100, b"ab")], false);
    assert_eq!(seen, b"abcdefgh");
    // A waiting segment inside a later, longer one: the longer one fills only around it.
    let (seen, _) = run(Some(99), &[(104, b"e"), (102, b"cdXfg"), (100, b"ab")], false);
    assert_eq!(seen, b"abcdefg");
}

#[test]
fn longer_copy_at_the_same_waiting_offset_replaces_the_shorter() {
    let (seen, dir) = run(Some(99), &[(103, b"d"), (103, b"def"), (103, b"de"), (100, b"abc")], false);
    assert_eq!(seen, b"abcdef");
    assert_eq!(dir.stats.retransmitted, 1);
}

#[test]
fn sequence_numbers_wrap() {
    let isn = u32::MAX - 2; // first data byte at u32::MAX - 1
    let (seen, _) = run(Some(isn), &[(0, b"cd"), (u32::MAX - 1, b"ab"), (2, b"e")], false);
    assert_eq!(seen, b"abcde");
}

#[test]
fn midstream_direction_starts_at_the_first_segment() {
    let (seen, dir) = run(None, &[(5000, b"xy"), (5002, b"z"), (4990, b"old")], false);
    assert_eq!(seen, b"xyz");
    assert!(dir.started());
    assert_eq!(dir.stats.retransmitted, 1, "data before the first segment seen is old");
}

#[test]
fn hole_that_never_fills_is_skipped_at_flush() {
    let (seen, dir) = run(Some(99), &[(100, b"ab"), (105, b"fg"), (110, b"k")], true);
    assert_eq!(seen, b"ab|fg|k");
    assert_eq!(dir.stats.gaps, 2);
    assert_eq!(dir.stats.gap_bytes, 3 + 3);
}

#[test]
fn waiting_data_is_bounded() {
    let big = vec![b'x'; 64 * 1024];
    let mut segs: Vec<(u32, &[u8])> = Vec::new();
    // A hole at 100..1100 that never fills, then more than the bound of waiting data.
    let n = MAX_PENDING_BYTES / big.len() + 2;
    for i in 0..n {
        segs.push((1100 + (i * big.len()) as u32, &big));
    }
    let (seen, dir) = run(Some(99), &segs, false);
    assert_eq!(dir.stats.gaps, 1);
    assert!(dir.pending_bytes() <= MAX_PENDING_BYTES);
    assert_eq!(seen[0], b'|');
    assert_eq!(seen.len() - 1, n * big.len());
}

#[test]
fn syn_repeated_or_renewed() {
    let mut dir = Direction::new();
    assert_eq!(dir.syn(1000), Syn::Started);
    assert_eq!(dir.syn(1000), Syn::Repeated);
    dir.segment(1001, b"abc", Tag::default(), &mut |_| {});
    assert_eq!(dir.syn(1000), Syn::Repeated, "a late retransmitted SYN is the same connection");
    assert_eq!(dir.syn(77), Syn::NewConnection);
}

#[test]
fn empty_payload_changes_nothing() {
    let (seen, dir) = run(Some(99), &[(100, b""), (100, b"a")], false);
    assert_eq!(seen, b"a");
    assert_eq!(dir.stats.segments, 1);
}

#[test]
fn waiting_bytes_keep_the_frame_they_came_in() {
    let mut dir = Direction::new();
    dir.syn(99);
    let mut seen = Vec::new();
    let mut sink = |c: Chunk<'_>| {
        if let Chunk::Data(d, tag) = c {
            seen.push((d.to_vec(), tag.frame));
        }
    };
    dir.segment(103, b"def", Tag { frame: 7, ts_ns: 70 }, &mut sink);
    dir.segment(100, b"abc", Tag { frame: 9, ts_ns: 90 }, &mut sink);
    assert_eq!(seen, vec![(b"abc".to_vec(), 9), (b"def".to_vec(), 7)]);
}
