//! TCP reassembly (replay stage 3): segments of one direction in capture order, bytes in stream order out.
//!
//! Each direction is reassembled on its own, keyed by sequence number, never by arrival order:
//!
//! - in-order data is handed on at once, straight from the capture buffer (no copy);
//! - a segment ahead of the expected sequence waits, copied, until the hole before it fills (only its
//!   bytes that no waiting segment already holds);
//! - a retransmission (nothing new) is dropped; a segment overlapping data already handed on gives only
//!   its new bytes: the first copy of a byte wins, as a receiver that has acknowledged it would keep;
//! - a direction first seen without its SYN (capture started mid-connection) starts at the first
//!   segment seen;
//! - a hole that never fills (capture loss) is skipped once the waiting data passes a bound, or at
//!   close, and reported as a [`Chunk::Gap`] so the consumer knows the stream lost bytes there.
//!
//! Sequence numbers wrap at 2^32; offsets here are 64-bit positions in the stream, so a wrap is invisible
//! to the waiting list. A segment more than 2^31 bytes behind or ahead cannot be placed and counts as old.

use std::collections::BTreeMap;

/// Most bytes one direction keeps waiting for a hole to fill; beyond it the hole is declared lost.
pub const MAX_PENDING_BYTES: usize = 1 << 20;
/// Most out-of-order segments one direction keeps waiting.
pub const MAX_PENDING_SEGMENTS: usize = 4096;

/// Where a segment came from: carried with its bytes so a consumer can say which frame completed
/// what, even for bytes that waited for a hole to fill.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tag {
    /// Capture frame number.
    pub frame: u64,
    /// Capture timestamp, nanoseconds.
    pub ts_ns: u64,
}

/// What a direction hands its consumer, in stream order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Chunk<'a> {
    /// The next bytes of the stream, and the segment they came in.
    Data(&'a [u8], Tag),
    /// Bytes were lost here: whatever came before cannot be joined to what follows.
    Gap,
}

/// Per-direction counters, for the replay report's anomalies.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DirectionStats {
    /// Segments with payload.
    pub segments: u64,
    /// Payload bytes handed on in order.
    pub bytes: u64,
    /// Segments that arrived ahead of the expected sequence number.
    pub out_of_order: u64,
    /// Segments that brought nothing new.
    pub retransmitted: u64,
    /// Segments that partly overlapped data already handed on.
    pub overlapping: u64,
    /// Holes skipped because they never filled.
    pub gaps: u64,
    /// Bytes lost in those holes.
    pub gap_bytes: u64,
}

/// One direction of a TCP connection.
#[derive(Debug, Default)]
pub struct Direction {
    started: bool,
    /// Sequence number of the stream's first byte (offset 0).
    start_seq: u32,
    /// Sequence number of the next byte to hand on.
    next_seq: u32,
    /// Stream offset of that byte.
    next_off: u64,
    /// Out-of-order data by stream offset.
    pending: BTreeMap<u64, (Vec<u8>, Tag)>,
    pending_bytes: usize,
    pub stats: DirectionStats,
}

/// What a SYN means for a direction already under way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Syn {
    /// First SYN of this direction: the stream starts at `isn + 1`.
    Started,
    /// The same SYN again (retransmitted).
    Repeated,
    /// A SYN with another initial sequence number: a new connection on the same addresses and ports.
    NewConnection,
}

impl Direction {
    pub fn new() -> Self {
        Self::default()
    }

    /// True once a SYN or a data segment fixed the stream's starting point.
    pub fn started(&self) -> bool {
        self.started
    }

    /// Bytes waiting for a hole to fill.
    pub fn pending_bytes(&self) -> usize {
        self.pending_bytes
    }

    /// A SYN (or SYN+ACK) with initial sequence number `isn`.
    pub fn syn(&mut self, isn: u32) -> Syn {
        let first = isn.wrapping_add(1);
        if !self.started {
            self.start(first);
            return Syn::Started;
        }
        // A SYN repeated, even after data flowed, carries the same ISN; only another one is a new connection.
        if self.start_seq == first {
            Syn::Repeated
        } else {
            Syn::NewConnection
        }
    }

    /// A segment with payload, starting at sequence number `seq`. In-order bytes go to `sink` at once.
    pub fn segment<F: FnMut(Chunk<'_>)>(&mut self, seq: u32, payload: &[u8], tag: Tag, sink: &mut F) {
        if payload.is_empty() {
            return;
        }
        self.stats.segments += 1;
        if !self.started {
            self.start(seq);
        }
        let delta = seq.wrapping_sub(self.next_seq) as i32 as i64;
        if delta <= 0 {
            let skip = delta.unsigned_abs();
            if skip >= payload.len() as u64 {
                self.stats.retransmitted += 1;
                return;
            }
            if skip > 0 {
                self.stats.overlapping += 1;
            }
            self.emit(&payload[skip as usize..], tag, sink);
            self.drain(sink);
            return;
        }
        let off = self.next_off + delta as u64;
        if self.hold(off, payload, tag) {
            self.stats.out_of_order += 1;
        } else {
            self.stats.retransmitted += 1;
        }
        while self.pending_bytes > MAX_PENDING_BYTES || self.pending.len() > MAX_PENDING_SEGMENTS {
            self.skip_hole(sink);
        }
    }

    /// Keeps the bytes of an early segment that no waiting segment holds yet (waiting segments never
    /// overlap, so the first copy of every byte wins). Returns false when it brought nothing new.
    fn hold(&mut self, off: u64, data: &[u8], tag: Tag) -> bool {
        let end = off + data.len() as u64;
        let mut covered: Vec<(u64, u64)> = Vec::new();
        if let Some((&k, (v, _))) = self.pending.range(..off).next_back() {
            if k + v.len() as u64 > off {
                covered.push((k, k + v.len() as u64));
            }
        }
        covered.extend(self.pending.range(off..end).map(|(&k, (v, _))| (k, k + v.len() as u64)));
        let mut pieces: Vec<(u64, u64)> = Vec::new();
        let mut cursor = off;
        for (s, e) in covered {
            if s > cursor {
                pieces.push((cursor, s));
            }
            cursor = cursor.max(e);
        }
        if cursor < end {
            pieces.push((cursor, end));
        }
        for &(s, e) in &pieces {
            self.pending.insert(s, (data[(s - off) as usize..(e - off) as usize].to_vec(), tag));
            self.pending_bytes += (e - s) as usize;
        }
        !pieces.is_empty()
    }

    /// Hands on everything still waiting, skipping holes (the connection closed or the capture ended).
    pub fn flush<F: FnMut(Chunk<'_>)>(&mut self, sink: &mut F) {
        while !self.pending.is_empty() {
            self.skip_hole(sink);
        }
    }

    fn start(&mut self, first: u32) {
        self.started = true;
        self.start_seq = first;
        self.next_seq = first;
        self.next_off = 0;
    }

    fn emit<F: FnMut(Chunk<'_>)>(&mut self, data: &[u8], tag: Tag, sink: &mut F) {
        self.next_off += data.len() as u64;
        self.next_seq = self.next_seq.wrapping_add(data.len() as u32);
        self.stats.bytes += data.len() as u64;
        sink(Chunk::Data(data, tag));
    }

    /// Hands on waiting segments that the stream has reached.
    fn drain<F: FnMut(Chunk<'_>)>(&mut self, sink: &mut F) {
        while let Some(entry) = self.pending.first_entry() {
            let off = *entry.key();
            if off > self.next_off {
                break;
            }
            let (data, tag) = entry.remove();
            self.pending_bytes -= data.len();
            let skip = (self.next_off - off) as usize;
            if skip >= data.len() {
                self.stats.retransmitted += 1;
                continue;
            }
            if skip > 0 {
                self.stats.overlapping += 1;
            }
            self.emit(&data[skip..], tag, sink);
        }
    }

    /// Declares the hole before the first waiting segment lost and moves on to it.
    fn skip_hole<F: FnMut(Chunk<'_>)>(&mut self, sink: &mut F) {
        let Some((&off, _)) = self.pending.first_key_value() else { return };
        if off > self.next_off {
            let lost = off - self.next_off;
            self.stats.gaps += 1;
            self.stats.gap_bytes += lost;
            self.next_seq = self.next_seq.wrapping_add(lost as u32);
            self.next_off = off;
            sink(Chunk::Gap);
        }
        self.drain(sink);
    }
}
