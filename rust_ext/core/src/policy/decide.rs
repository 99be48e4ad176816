//! Decision stage: one request ADU in, one [`Decision`] out (docs/engine.md section 4).
//!
//! Candidate rules for the (principal, device) pair are precomputed; each allow entry is checked
//! unit -> function -> addresses -> quantity -> values, the first entry passing all of them decides
//! (after its rate bucket), otherwise the deepest failure does. The entries listing the request's
//! function key are found by index, and which of them cover its addresses by one lookup (`cover`),
//! so only those covering entries are checked further. Nothing here allocates.

use super::cover::{KeyCover, WALK};
use super::{CompiledEntry, CompiledRule, Engine, Item, Mode, Pair, UnitSet};
use crate::modbus::frame::{Frames, Split};
use crate::modbus::functions::{ExceptionCode, Malformed, Table};
use crate::modbus::request::{parse_request, Request};

/// What happens to the request; values are the binding's enum values.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Verdict {
    /// Forward.
    Allow = 0,
    /// Refuse with `exception_code`.
    Deny = 1,
    /// Monitor mode: would have been refused; forwarded and counted.
    WouldDeny = 2,
}

impl Verdict {
    pub const fn name(self) -> &'static str {
        match self {
            Verdict::Allow => "allow",
            Verdict::Deny => "deny",
            Verdict::WouldDeny => "would_deny",
        }
    }
}

/// Why; values are the binding's enum values. Policy failures from `UnitNotAllowed` to
/// `ValueOutOfBounds` are ordered by depth (how far a request got through an allow entry).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum Reason {
    Allowed = 0,
    UnknownPrincipal = 1,
    Malformed = 2,
    NoMatchingRule = 3,
    /// Depth 1.
    UnitNotAllowed = 4,
    /// Depth 2.
    FunctionNotAllowed = 5,
    /// Depth 3.
    AddressOutOfRange = 6,
    /// Depth 4.
    QuantityExceeded = 7,
    /// Depth 5.
    ValueOutOfBounds = 8,
    RateExceeded = 9,
}

impl Reason {
    pub const fn name(self) -> &'static str {
        match self {
            Reason::Allowed => "allowed",
            Reason::UnknownPrincipal => "unknown_principal",
            Reason::Malformed => "malformed",
            Reason::NoMatchingRule => "no_matching_rule",
            Reason::UnitNotAllowed => "unit_not_allowed",
            Reason::FunctionNotAllowed => "function_not_allowed",
            Reason::AddressOutOfRange => "address_out_of_range",
            Reason::QuantityExceeded => "quantity_exceeded",
            Reason::ValueOutOfBounds => "value_out_of_bounds",
            Reason::RateExceeded => "rate_exceeded",
        }
    }

    /// Policy failure of depth 1..=5.
    const fn from_depth(depth: u8) -> Reason {
        match depth {
            1 => Reason::UnitNotAllowed,
            2 => Reason::FunctionNotAllowed,
            3 => Reason::AddressOutOfRange,
            4 => Reason::QuantityExceeded,
            _ => Reason::ValueOutOfBounds,
        }
    }
}

/// Every decision explains itself: verdict, reason, deciding rule, exception to answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Decision {
    pub verdict: Verdict,
    pub reason: Reason,
    /// Set only when `reason` is `Malformed`.
    pub malformed: Option<Malformed>,
    /// Index of the deciding rule (see [`Engine::rule_id`]).
    pub rule: Option<u32>,
    /// Modbus exception code to answer with (`Deny` only).
    pub exception: Option<u8>,
    /// Raw function code byte; 0 when the frame is too short to hold one.
    pub function: u8,
    pub sub: Option<u16>,
    pub unit: u8,
}

impl Decision {
    /// True unless the request must be refused.
    #[inline]
    pub fn forward(&self) -> bool {
        self.verdict != Verdict::Deny
    }
}

/// Outcome of deciding every complete ADU at the start of a buffer.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BatchSummary {
    pub frames: u64,
    pub allowed: u64,
    pub denied: u64,
    pub would_deny: u64,
    /// Bytes covered by the decided frames.
    pub consumed: usize,
    /// One byte per frame: `verdict << 4 | reason`.
    pub verdicts: Vec<u8>,
    /// Why deciding stopped before the end of the buffer (`Incomplete` or `Invalid`), if it did.
    pub stop: Option<Split>,
}

/// Index of the range in a sorted, non-overlapping slice that holds `addr`.
#[inline(always)]
fn find<T>(v: &[T], addr: u32, bounds: impl Fn(&T) -> (u32, u32)) -> Option<&T> {
    let i = v.partition_point(|r| bounds(r).0 <= addr);
    if i == 0 {
        return None;
    }
    let r = &v[i - 1];
    (bounds(r).1 >= addr).then_some(r)
}

impl Engine {
    #[inline]
    fn refuse(&self, reason: Reason, rule: Option<u32>, function: u8, sub: Option<u16>, unit: u8) -> Decision {
        // An unknown principal is refused in monitor mode too: monitor is for trying a policy on the
        // people it names, not for letting anonymous clients through.
        let (verdict, exception) = match self.mode {
            Mode::Monitor if reason != Reason::UnknownPrincipal => (Verdict::WouldDeny, None),
            Mode::Monitor => (Verdict::Deny, Some(ExceptionCode::IllegalFunction as u8)),
            Mode::Enforce => {
                let code = match reason {
                    Reason::RateExceeded => ExceptionCode::ServerDeviceBusy,
                    _ => ExceptionCode::IllegalFunction,
                };
                (Verdict::Deny, Some(code as u8))
            }
        };
        Decision { verdict, reason, malformed: None, rule, exception, function, sub, unit }
    }

    #[inline]
    fn refuse_request(&self, reason: Reason, rule: Option<u32>, req: &Request<'_>) -> Decision {
        self.refuse(reason, rule, req.function, req.sub, req.unit)
    }

    /// Depth at which `req` fails `entry` (3..=5), or 0 when it passes. Units (depth 1) are
    /// checked per rule and functions (depth 2) by the key index, both before this.
    #[inline]
    fn entry_depth(&self, entry: &CompiledEntry, req: &Request<'_>) -> u8 {
        for r in req.ranges() {
            let merged = entry.merged[r.table as usize].of(&self.merged);
            if find(merged, r.start, |m| *m).is_none_or(|m| m.1 < r.end) {
                return 3;
            }
        }
        self.depth_past_addresses(entry, req)
    }

    /// Depth at which `req`, whose addresses `entry` covers, fails it (4 or 5), or 0.
    #[inline(always)]
    fn depth_past_addresses(&self, entry: &CompiledEntry, req: &Request<'_>) -> u8 {
        if req.quantity > entry.max_quantity {
            return 4;
        }
        if entry.bounded == 0 {
            return 0;
        }
        self.value_depth(entry, req)
    }

    /// 5 when a value `req` writes lies outside the bounds of `entry`'s range that holds it, else 0.
    fn value_depth(&self, entry: &CompiledEntry, req: &Request<'_>) -> u8 {
        if let Some((start, words)) = req.register_writes() {
            return self.register_bounds(entry, start, words);
        }
        for v in req.values() {
            let t = v.table as usize;
            if entry.bounded >> t & 1 == 0 {
                continue;
            }
            let ranges = entry.ranges[t].of(&self.ranges);
            let Some(r) = find(ranges, v.address, |r| (r.start, r.end)) else { return 5 };
            let Some((lo, hi)) = r.bounds else { continue };
            let Some(raw) = v.value else { return 5 };
            let x = if r.signed { raw as i16 as i64 } else { raw as i64 };
            if x < lo || x > hi {
                return 5;
            }
        }
        0
    }

    /// Bounds of consecutive holding-register writes, walking the entry's ranges alongside the
    /// addresses (both ascend) instead of searching for each one.
    #[inline]
    fn register_bounds(&self, entry: &CompiledEntry, start: u32, words: &[u8]) -> u8 {
        const HOLDING: usize = Table::HoldingRegisters as usize;
        if entry.bounded >> HOLDING & 1 == 0 {
            return 0;
        }
        let ranges = entry.ranges[HOLDING].of(&self.ranges);
        let mut i = ranges.partition_point(|r| r.end < start);
        for (k, w) in words.chunks_exact(2).enumerate() {
            let addr = start + k as u32;
            while i < ranges.len() && ranges[i].end < addr {
                i += 1;
            }
            let Some(r) = ranges.get(i).filter(|r| r.start <= addr) else { return 5 };
            if let Some((lo, hi)) = r.bounds {
                let raw = u16::from_be_bytes([w[0], w[1]]);
                let x = if r.signed { raw as i16 as i64 } else { raw as i64 };
                if x < lo || x > hi {
                    return 5;
                }
            }
        }
        0
    }

    #[inline(always)]
    fn unit_ok(&self, rule: &CompiledRule, device_units: Option<UnitSet>, unit: u8) -> bool {
        match rule.units.or(device_units) {
            None => true,
            Some(set) => set.contains(unit),
        }
    }

    /// Decides one request ADU for `principal` talking to `device` (IR indices; anything out of
    /// range is unknown) at monotonic time `now_ns`.
    pub fn decide(&self, principal: u32, device: u32, adu: &[u8], now_ns: u64) -> Decision {
        if principal as usize >= self.principals.len() {
            let function = adu.get(7).copied().unwrap_or(0);
            let unit = adu.get(6).copied().unwrap_or(0);
            return self.refuse(Reason::UnknownPrincipal, None, function, None, unit);
        }
        match parse_request(adu) {
            Ok(req) => self.decide_request(principal, device, &req, now_ns),
            Err(e) => Decision {
                verdict: Verdict::Deny,
                reason: Reason::Malformed,
                malformed: Some(e.kind),
                rule: None,
                exception: Some(ExceptionCode::IllegalDataValue as u8),
                function: e.function,
                sub: e.sub,
                unit: e.unit,
            },
        }
    }

    /// Decides an already parsed, well-formed request (steps 2b-5 of section 4).
    #[inline]
    pub fn decide_request(&self, principal: u32, device: u32, req: &Request<'_>, now_ns: u64) -> Decision {
        if principal as usize >= self.principals.len() {
            return self.refuse_request(Reason::UnknownPrincipal, None, req);
        }
        if req.code.is_none() {
            return self.refuse_request(Reason::FunctionNotAllowed, None, req);
        }
        let pair = self.pair(principal, device);
        if pair.rules.len == 0 {
            return self.refuse_request(Reason::NoMatchingRule, None, req);
        }
        if let Some(slot) = self.key_slot(pair, req.function, req.sub) {
            let items = self.keys[slot].1.of(&self.items);
            let kc = self.covers.by_key[slot];
            let decided = if kc.cover == WALK {
                self.walk_items(items, req, now_ns)
            } else {
                self.pick_items(items, kc, req, now_ns)
            };
            if let Some(d) = decided {
                return d;
            }
        }
        self.refuse_before_addresses(pair, device, req)
    }

    /// Steps 4-5 over the candidate entries listing the request's key (in (rule, entry) order:
    /// the only ones that can match or fail deeper than depth 2), using their coverage index.
    /// `None` when no entry passes the unit check.
    #[inline]
    fn pick_items(&self, items: &[Item], kc: KeyCover, req: &Request<'_>, now_ns: u64) -> Option<Decision> {
        let all = u64::MAX >> (64 - items.len());
        let units = if kc.same_units {
            if items[0].units.is_some_and(|u| !u.contains(req.unit)) {
                return None;
            }
            all
        } else {
            let mut m = 0u64;
            for (i, item) in items.iter().enumerate() {
                if item.units.is_none_or(|u| u.contains(req.unit)) {
                    m |= 1 << i;
                }
            }
            if m == 0 {
                return None;
            }
            m
        };
        let mut left = units & self.covers.covering(kc.cover, req);
        if left == 0 {
            // Every entry that got past the units failed the address check: the first one decides.
            let first = &items[units.trailing_zeros() as usize];
            return Some(self.refuse_request(Reason::AddressOutOfRange, Some(first.rule), req));
        }
        // Entries covering the addresses fail deeper than any that do not, so only they compete.
        let (mut best_depth, mut best_rule) = (0u8, 0u32);
        while left != 0 {
            let item = &items[left.trailing_zeros() as usize];
            left &= left - 1;
            let entry = &self.entries[item.entry as usize];
            let depth = self.depth_past_addresses(entry, req);
            if depth == 0 {
                return Some(self.admit(item, entry, req, now_ns));
            }
            if depth > best_depth {
                best_depth = depth;
                best_rule = item.rule;
            }
        }
        Some(self.refuse_request(Reason::from_depth(best_depth), Some(best_rule), req))
    }

    /// [`Engine::pick_items`] for keys with too many items for a mask: every entry in turn.
    fn walk_items(&self, items: &[Item], req: &Request<'_>, now_ns: u64) -> Option<Decision> {
        let (mut best_depth, mut best_rule) = (0u8, 0u32);
        for item in items {
            if item.units.is_some_and(|u| !u.contains(req.unit)) {
                continue;
            }
            let entry = &self.entries[item.entry as usize];
            let depth = self.entry_depth(entry, req);
            if depth == 0 {
                return Some(self.admit(item, entry, req, now_ns));
            }
            if depth > best_depth {
                best_depth = depth;
                best_rule = item.rule;
            }
        }
        (best_depth > 0).then(|| self.refuse_request(Reason::from_depth(best_depth), Some(best_rule), req))
    }

    /// The entry of `item` matched: its rate bucket, if any, has the last word.
    #[inline]
    fn admit(&self, item: &Item, entry: &CompiledEntry, req: &Request<'_>, now_ns: u64) -> Decision {
        if let Some((spec, _)) = &entry.rate {
            if !self.buckets.charge(item.slot as usize, spec, now_ns) {
                return self.refuse_request(Reason::RateExceeded, Some(item.rule), req);
            }
        }
        Decision {
            verdict: Verdict::Allow,
            reason: Reason::Allowed,
            malformed: None,
            rule: Some(item.rule),
            exception: None,
            function: req.function,
            sub: req.sub,
            unit: req.unit,
        }
    }

    /// Nothing got past the function check: the first rule (with entries) whose units allow the
    /// request failed at depth 2; if there is none, the first rule with entries failed at depth 1.
    fn refuse_before_addresses(&self, pair: &Pair, device: u32, req: &Request<'_>) -> Decision {
        let device_units = self.device_units.get(device as usize).copied().flatten();
        let fb = self.covers.fallback[pair.rules.off as usize];
        if fb.first == u32::MAX {
            // Every candidate rule has an empty allow list: nothing could match.
            return self.refuse_request(Reason::NoMatchingRule, None, req);
        }
        if fb.same_units {
            let reason = if self.unit_ok(&self.rules[fb.first as usize], device_units, req.unit) {
                Reason::FunctionNotAllowed
            } else {
                Reason::UnitNotAllowed
            };
            return self.refuse_request(reason, Some(fb.first), req);
        }
        for c in pair.rules.of(&self.candidates) {
            let rule = &self.rules[c.rule as usize];
            if rule.entries.len != 0 && self.unit_ok(rule, device_units, req.unit) {
                return self.refuse_request(Reason::FunctionNotAllowed, Some(c.rule), req);
            }
        }
        self.refuse_request(Reason::UnitNotAllowed, Some(fb.first), req)
    }

    /// The same decision as [`Engine::decide`], found by walking every entry of every candidate
    /// rule in order, exactly as section 4 reads. Slower; kept so tests can hold the indexed path
    /// to the letter of the contract.
    #[doc(hidden)]
    pub fn decide_scan(&self, principal: u32, device: u32, adu: &[u8], now_ns: u64) -> Decision {
        let req = match parse_request(adu) {
            Ok(req) if (principal as usize) < self.principals.len() && req.code.is_some() => req,
            _ => return self.decide(principal, device, adu, now_ns),
        };
        let pair = self.pair(principal, device);
        let device_units = self.device_units.get(device as usize).copied().flatten();
        let (mut best_depth, mut best_rule) = (0u8, 0u32);
        for c in pair.rules.of(&self.candidates) {
            let rule = &self.rules[c.rule as usize];
            for entry in rule.entries.of(&self.entries) {
                let depth = if !self.unit_ok(rule, device_units, req.unit) {
                    1
                } else if !entry.functions.contains(req.function, req.sub) {
                    2
                } else {
                    self.entry_depth(entry, &req)
                };
                if depth == 0 {
                    if let Some((spec, ordinal)) = &entry.rate {
                        let slot = c.slot as usize + *ordinal as usize;
                        if !self.buckets.charge(slot, spec, now_ns) {
                            return self.refuse_request(Reason::RateExceeded, Some(c.rule), &req);
                        }
                    }
                    return Decision {
                        verdict: Verdict::Allow,
                        reason: Reason::Allowed,
                        malformed: None,
                        rule: Some(c.rule),
                        exception: None,
                        function: req.function,
                        sub: req.sub,
                        unit: req.unit,
                    };
                }
                if depth > best_depth {
                    best_depth = depth;
                    best_rule = c.rule;
                }
            }
        }
        match best_depth {
            0 => self.refuse_request(Reason::NoMatchingRule, None, &req),
            d => self.refuse_request(Reason::from_depth(d), Some(best_rule), &req),
        }
    }

    /// Splits `buf` and decides every complete ADU at its start, all at time `now_ns`.
    pub fn decide_batch(&self, principal: u32, device: u32, buf: &[u8], now_ns: u64) -> BatchSummary {
        let mut s = BatchSummary { verdicts: Vec::with_capacity(buf.len() / 12 + 1), ..Default::default() };
        let mut frames = Frames::new(buf);
        for adu in &mut frames {
            let d = self.decide(principal, device, adu, now_ns);
            match d.verdict {
                Verdict::Allow => s.allowed += 1,
                Verdict::Deny => s.denied += 1,
                Verdict::WouldDeny => s.would_deny += 1,
            }
            s.verdicts.push((d.verdict as u8) << 4 | d.reason as u8);
        }
        s.frames = s.verdicts.len() as u64;
        s.consumed = frames.consumed();
        s.stop = frames.stop();
        s
    }

    /// Rule span helper for tests and diagnostics: number of allow entries of rule `index`.
    pub fn entry_count(&self, index: u32) -> usize {
        self.rules.get(index as usize).map_or(0, |r| r.entries.len as usize)
    }
}
