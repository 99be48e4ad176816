//! Decision stage: the compiled policy and `decide` (docs/engine.md sections 3-5).
//!
//! `ir` is the JSON shape the loader emits, `compile` validates it and builds an immutable
//! [`Engine`], `decide` runs one request through it, `rate` holds the token buckets beside it.
//! A new policy means a new `Engine`; nothing in a compiled engine changes except bucket levels.

pub mod cip;
mod cip_decide;
mod cip_tags;
pub mod compile;
mod cover;
pub mod decide;
pub mod ir;
pub mod rate;

pub use cip::{CipDecision, CipReason, EnipSession};
pub use compile::IrError;
pub use decide::{BatchSummary, Decision, Reason, Verdict};
pub use ir::{Ir, Mode};

use crate::modbus::functions::Table;
use rate::{Buckets, RateSpec};
use std::collections::HashMap;

/// A contiguous slice of one of the engine's flat arrays.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Span {
    pub off: u32,
    pub len: u32,
}

impl Span {
    #[inline(always)]
    pub fn of<'a, T>(&self, v: &'a [T]) -> &'a [T] {
        &v[self.off as usize..(self.off + self.len) as usize]
    }
}

/// 256-bit set of unit ids.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub(crate) struct UnitSet([u64; 4]);

impl UnitSet {
    pub fn insert_range(&mut self, lo: u8, hi: u8) {
        for u in lo..=hi {
            self.0[(u >> 6) as usize] |= 1 << (u & 63);
        }
    }
    #[inline(always)]
    pub fn contains(&self, u: u8) -> bool {
        self.0[(u >> 6) as usize] >> (u & 63) & 1 != 0
    }
}

/// Function keys of one allow entry as bitsets: plain codes, FC 8 sub-functions, FC 43 MEI types.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct FunctionSet {
    plain: [u64; 4],
    diagnostics: u64,
    mei: u64,
}

impl FunctionSet {
    /// Adds `(fc, sub)`; sub-function values a request can never carry are dropped.
    pub fn insert(&mut self, fc: u8, sub: Option<u16>) {
        match (fc, sub) {
            (fc, None) => self.plain[(fc >> 6) as usize] |= 1 << (fc & 63),
            (8, Some(s)) if s < 64 => self.diagnostics |= 1 << s,
            (43, Some(s)) if s < 64 => self.mei |= 1 << s,
            _ => {}
        }
    }
    #[inline(always)]
    pub fn contains(&self, fc: u8, sub: Option<u16>) -> bool {
        match sub {
            None => self.plain[(fc >> 6) as usize] >> (fc & 63) & 1 != 0,
            Some(s) if s < 64 => match fc {
                8 => self.diagnostics >> s & 1 != 0,
                43 => self.mei >> s & 1 != 0,
                _ => false,
            },
            Some(_) => false,
        }
    }
}

/// One address range of an allow entry, with its write-value bounds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct BoundedRange {
    pub start: u32,
    pub end: u32,
    /// `(min, max)` when the range bounds written values.
    pub bounds: Option<(i64, i64)>,
    pub signed: bool,
}

/// A compiled allow entry.
#[derive(Clone, Debug)]
pub(crate) struct CompiledEntry {
    pub functions: FunctionSet,
    /// Per table: the ranges as written (for value bounds).
    pub ranges: [Span; 5],
    /// Per table: the union of the ranges with adjacent ones joined (for coverage).
    pub merged: [Span; 5],
    /// Bit `t` set when some range of table `t` bounds values.
    pub bounded: u8,
    /// `u32::MAX` when the entry sets no limit.
    pub max_quantity: u32,
    /// The entry's rate and its ordinal among the rule's rated entries.
    pub rate: Option<(RateSpec, u32)>,
}

/// A compiled rule.
#[derive(Clone, Debug)]
pub(crate) struct CompiledRule {
    pub id: String,
    pub entries: Span,
    /// `None`: the units of the device the request is for.
    pub units: Option<UnitSet>,
}

/// A rule that applies to one (principal, device) pair, with the first bucket slot of that
/// (rule, principal).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Candidate {
    pub rule: u32,
    pub slot: u32,
}

/// One allow entry of a candidate rule, filed under a function key it lists.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Item {
    pub rule: u32,
    /// Index into `Engine::entries`.
    pub entry: u32,
    /// Bucket slot of (rule, entry, principal), `u32::MAX` when the entry has no rate.
    pub slot: u32,
    /// The units the rule allows on this pair's device (`None`: any).
    pub units: Option<UnitSet>,
}

/// Function key as one integer: `fc` alone, or `1 << 24 | fc << 16 | sub`. Keys without a
/// sub-function sort first, so a pair's plain keys can be found by rank in its bitmap.
#[inline(always)]
pub(crate) fn key(fc: u8, sub: Option<u16>) -> u32 {
    sub.map_or(fc as u32, |s| 1 << 24 | (fc as u32) << 16 | s as u32)
}

/// What one (principal, device) pair may match: its candidate rules in file order, and for each
/// function key the candidate entries listing it, in (rule, entry) order. Only those entries can
/// match or fail deeper than the function check, so `decide` looks at nothing else.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Pair {
    /// Into `Engine::candidates`.
    pub rules: Span,
    /// Into `Engine::keys`, sorted by key.
    pub keys: Span,
    /// Bit `fc` set when a key `(fc, None)` is among `keys` (they come first, in fc order).
    pub plain: [u64; 4],
}

/// Pairs: a dense table when the pair count is small, a hash map otherwise.
#[derive(Debug)]
pub(crate) enum PairIndex {
    Dense { devices: u32, pairs: Vec<Pair> },
    Sparse(HashMap<u64, Pair>),
}

/// An immutable compiled policy plus the rate buckets beside it. Shared across threads.
#[derive(Debug)]
pub struct Engine {
    pub(crate) mode: Mode,
    pub(crate) principals: Vec<String>,
    pub(crate) devices: Vec<String>,
    pub(crate) device_units: Vec<Option<UnitSet>>,
    pub(crate) rules: Vec<CompiledRule>,
    pub(crate) entries: Vec<CompiledEntry>,
    pub(crate) ranges: Vec<BoundedRange>,
    pub(crate) merged: Vec<(u32, u32)>,
    pub(crate) candidates: Vec<Candidate>,
    /// Function key -> span of `items`, grouped per pair.
    pub(crate) keys: Vec<(u32, Span)>,
    pub(crate) items: Vec<Item>,
    pub(crate) index: PairIndex,
    /// Which candidate entries cover an address range, per `keys` slot (see `cover`).
    pub(crate) covers: cover::Covers,
    pub(crate) buckets: Buckets,
    /// The CIP half of the policy, with its own buckets.
    pub(crate) cip: cip::CipPolicy,
}

impl Engine {
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// Index of the principal called `name`.
    pub fn principal_index(&self, name: &str) -> Option<u32> {
        self.principals.iter().position(|p| p == name).map(|i| i as u32)
    }

    /// Index of the device called `name`.
    pub fn device_index(&self, name: &str) -> Option<u32> {
        self.devices.iter().position(|d| d == name).map(|i| i as u32)
    }

    pub fn principal_count(&self) -> usize {
        self.principals.len()
    }

    pub fn device_count(&self) -> usize {
        self.devices.len()
    }

    pub fn rule_count(&self) -> usize {
        self.rules.len()
    }

    /// Id of rule `index` (as carried by [`Decision::rule`]).
    pub fn rule_id(&self, index: u32) -> &str {
        self.rules.get(index as usize).map_or("", |r| r.id.as_str())
    }

    /// Number of rate bucket slots.
    pub fn bucket_count(&self) -> usize {
        self.buckets.len()
    }

    #[inline]
    pub(crate) fn pair(&self, principal: u32, device: u32) -> &Pair {
        const NONE: &Pair = &Pair { rules: Span { off: 0, len: 0 }, keys: Span { off: 0, len: 0 }, plain: [0; 4] };
        match &self.index {
            PairIndex::Dense { devices, pairs } => {
                if device >= *devices {
                    return NONE;
                }
                pairs.get(principal as usize * *devices as usize + device as usize).unwrap_or(NONE)
            }
            PairIndex::Sparse(map) => map.get(&((principal as u64) << 32 | device as u64)).unwrap_or(NONE),
        }
    }

    /// Slot in `keys` of function key `(fc, sub)` among `pair`'s keys: its span of `items` holds
    /// the candidate entries listing that key.
    #[inline]
    pub(crate) fn key_slot(&self, pair: &Pair, fc: u8, sub: Option<u16>) -> Option<usize> {
        let keys = pair.keys.of(&self.keys);
        if sub.is_none() {
            let (word, bit) = ((fc >> 6) as usize, fc & 63);
            if pair.plain[word] >> bit & 1 == 0 {
                return None;
            }
            let below = (pair.plain[word] & ((1u64 << bit) - 1)).count_ones()
                + pair.plain[..word].iter().map(|w| w.count_ones()).sum::<u32>();
            return Some(pair.keys.off as usize + below as usize);
        }
        let k = key(fc, sub);
        keys.binary_search_by_key(&k, |(key, _)| *key).ok().map(|i| pair.keys.off as usize + i)
    }
}

/// Tables in code order, for indexing per-table arrays.
pub(crate) const TABLES: [Table; 5] = Table::ALL;
