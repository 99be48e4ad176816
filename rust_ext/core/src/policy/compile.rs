//! Compile stage of the control plane: validates the policy IR and builds the immutable engine.
//!
//! Validation is all-or-nothing and every error names the IR field it is about
//! (`rules[2].allow[0].ranges.holding_registers[1]: start 200 > end 100`). The loader should never
//! produce such an IR; these checks keep a bad one from ever reaching the data plane.

use super::cover::{Covers, Fallback};
use super::ir::{AddressRange, Entry, Ir, Rule};
use super::rate::{Buckets, RateSpec};
use super::{
    key, BoundedRange, Candidate, CompiledEntry, CompiledRule, Engine, FunctionSet, Item, Pair, PairIndex, Span,
    UnitSet, TABLES,
};
use std::collections::HashMap;
use std::fmt;

/// Largest (principal x device) table kept dense; larger policies use a hash map.
const DENSE_PAIRS: usize = 1 << 16;

/// Why an IR document was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum IrError {
    /// Not JSON, or not the IR's shape (serde's message, with line and column).
    Syntax(String),
    /// Well-formed JSON with a value the engine refuses, at `path`.
    Invalid { path: String, message: String },
}

impl fmt::Display for IrError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IrError::Syntax(m) => write!(f, "policy IR is not valid JSON of the expected shape: {m}"),
            IrError::Invalid { path, message } => write!(f, "policy IR {path}: {message}"),
        }
    }
}

impl std::error::Error for IrError {}

fn invalid(path: impl Into<String>, message: impl Into<String>) -> IrError {
    IrError::Invalid { path: path.into(), message: message.into() }
}

fn units(path: &str, ranges: &[[i64; 2]]) -> Result<UnitSet, IrError> {
    let mut set = UnitSet::default();
    for (i, [lo, hi]) in ranges.iter().copied().enumerate() {
        if !(0..=255).contains(&lo) || !(0..=255).contains(&hi) {
            return Err(invalid(format!("{path}[{i}]"), format!("unit range [{lo}, {hi}] is outside 0..=255")));
        }
        if lo > hi {
            return Err(invalid(format!("{path}[{i}]"), format!("unit range [{lo}, {hi}] is reversed")));
        }
        set.insert_range(lo as u8, hi as u8);
    }
    Ok(set)
}

fn index(path: String, i: i64, n: usize, what: &str) -> Result<u32, IrError> {
    if i < 0 || i as u64 >= n as u64 {
        return Err(invalid(path, format!("{what} index {i} is out of range (policy has {n})")));
    }
    Ok(i as u32)
}

struct Builder {
    entries: Vec<CompiledEntry>,
    /// Distinct function keys of each entry, parallel to `entries`.
    entry_keys: Vec<Vec<u32>>,
    ranges: Vec<BoundedRange>,
    merged: Vec<(u32, u32)>,
}

impl Builder {
    fn table(&mut self, path: &str, table: usize, list: &[AddressRange]) -> Result<(Span, Span, bool), IrError> {
        let max = TABLES[table].max_address() as i64;
        let name = TABLES[table].name();
        let raw = Span { off: self.ranges.len() as u32, len: list.len() as u32 };
        let merged_off = self.merged.len() as u32;
        let mut bounded = false;
        let mut prev_end: Option<i64> = None;
        for (i, r) in list.iter().enumerate() {
            let p = || format!("{path}.ranges.{name}[{i}]");
            if r.start < 0 || r.end > max || r.start > max || r.end < 0 {
                return Err(invalid(p(), format!("range {}-{} is outside 0..={max}", r.start, r.end)));
            }
            if r.start > r.end {
                return Err(invalid(p(), format!("start {} > end {}", r.start, r.end)));
            }
            if let Some(pe) = prev_end {
                if r.start <= pe {
                    return Err(invalid(
                        p(),
                        format!("range {}-{} overlaps or precedes the one before it", r.start, r.end),
                    ));
                }
            }
            prev_end = Some(r.end);
            let bounds = match (r.min, r.max) {
                (None, None) => None,
                (Some(lo), Some(hi)) if lo <= hi => Some((lo, hi)),
                (Some(lo), Some(hi)) => return Err(invalid(p(), format!("min {lo} > max {hi}"))),
                _ => return Err(invalid(p(), "min and max must both be null or both be integers")),
            };
            bounded |= bounds.is_some();
            self.ranges.push(BoundedRange { start: r.start as u32, end: r.end as u32, bounds, signed: r.signed });
            let joins = self.merged.len() as u32 > merged_off
                && self.merged.last().is_some_and(|last| last.1 as u64 + 1 >= r.start as u64);
            match self.merged.last_mut() {
                Some(last) if joins => last.1 = last.1.max(r.end as u32),
                _ => self.merged.push((r.start as u32, r.end as u32)),
            }
        }
        let merged = Span { off: merged_off, len: self.merged.len() as u32 - merged_off };
        Ok((raw, merged, bounded))
    }

    fn entry(&mut self, path: &str, e: &Entry, rated: &mut u32) -> Result<(), IrError> {
        let mut functions = FunctionSet::default();
        let mut keys = Vec::with_capacity(e.functions.len());
        for (i, (fc, sub)) in e.functions.iter().copied().enumerate() {
            let p = format!("{path}.functions[{i}]");
            if !(0..=255).contains(&fc) {
                return Err(invalid(p, format!("function code {fc} is outside 0..=255")));
            }
            let sub = match sub {
                None => None,
                Some(s) if fc != 8 && fc != 43 => {
                    return Err(invalid(p, format!("function {fc} has no sub-function (got {s}); only 8 and 43 do")))
                }
                Some(s) if !(0..=65535).contains(&s) => {
                    return Err(invalid(p, format!("sub-function {s} is outside 0..=65535")))
                }
                Some(s) => Some(s as u16),
            };
            functions.insert(fc as u8, sub);
            let k = key(fc as u8, sub);
            if !keys.contains(&k) {
                keys.push(k);
            }
        }
        let mut ranges = [Span::default(); 5];
        let mut merged = [Span::default(); 5];
        let mut bounded = 0u8;
        for (t, list) in e.ranges.by_table().into_iter().enumerate() {
            let (r, m, b) = self.table(path, t, list)?;
            ranges[t] = r;
            merged[t] = m;
            bounded |= (b as u8) << t;
        }
        let max_quantity = match e.max_quantity {
            None => u32::MAX,
            Some(q) if q >= 1 => q.min(u32::MAX as i64) as u32,
            Some(q) => return Err(invalid(format!("{path}.max_quantity"), format!("{q} is not >= 1"))),
        };
        let rate = match e.rate {
            None => None,
            Some(r) => {
                for (field, v) in [("count", r.count), ("period_ns", r.period_ns), ("burst", r.burst)] {
                    if v == 0 {
                        return Err(invalid(format!("{path}.rate.{field}"), "must be >= 1"));
                    }
                }
                *rated += 1;
                Some((RateSpec::new(r.count, r.period_ns, r.burst), *rated - 1))
            }
        };
        self.entries.push(CompiledEntry { functions, ranges, merged, bounded, max_quantity, rate });
        self.entry_keys.push(keys);
        Ok(())
    }
}

/// Numbers entries by what their checks after the function key look at (coverage, bounds,
/// quantity): equal numbers, equal outcomes for every request.
fn entry_classes(b: &Builder) -> Vec<u32> {
    let mut ids: HashMap<Vec<u64>, u32> = HashMap::new();
    b.entries
        .iter()
        .map(|e| {
            let mut sig = vec![e.max_quantity as u64, e.bounded as u64];
            for t in 0..TABLES.len() {
                sig.push(u64::MAX);
                sig.extend(e.merged[t].of(&b.merged).iter().map(|(s, x)| (*s as u64) << 32 | *x as u64));
                if e.bounded >> t & 1 != 0 {
                    for r in e.ranges[t].of(&b.ranges) {
                        sig.push((r.start as u64) << 32 | r.end as u64);
                        match r.bounds {
                            None => sig.push(0),
                            Some((lo, hi)) => sig.extend([1 + r.signed as u64, lo as u64, hi as u64]),
                        }
                    }
                }
            }
            let next = ids.len() as u32;
            *ids.entry(sig).or_insert(next)
        })
        .collect()
}

fn dedup(v: &mut Vec<u32>) {
    let mut seen = std::collections::HashSet::with_capacity(v.len());
    v.retain(|x| seen.insert(*x));
}

impl Engine {
    /// Parses and compiles an IR JSON document.
    pub fn from_json(ir_json: &str) -> Result<Engine, IrError> {
        let ir: Ir = serde_json::from_str(ir_json).map_err(|e| IrError::Syntax(e.to_string()))?;
        Engine::compile(&ir)
    }

    /// Validates `ir` and builds the engine; nothing is built when anything is wrong.
    pub fn compile(ir: &Ir) -> Result<Engine, IrError> {
        if ir.version != 1 {
            return Err(invalid("version", format!("unsupported IR version {} (this engine reads 1)", ir.version)));
        }
        let np = ir.principals.len();
        let nd = ir.devices.len();
        if np > u32::MAX as usize / 2 || nd > u32::MAX as usize / 2 {
            return Err(invalid("principals", "too many principals or devices"));
        }
        let mut names: HashMap<&str, usize> = HashMap::new();
        for (i, p) in ir.principals.iter().enumerate() {
            if let Some(j) = names.insert(p.name.as_str(), i) {
                return Err(invalid(format!("principals[{i}].name"), format!("{:?} repeats principals[{j}]", p.name)));
            }
        }
        names.clear();
        let mut device_units = Vec::with_capacity(nd);
        for (i, d) in ir.devices.iter().enumerate() {
            if let Some(j) = names.insert(d.name.as_str(), i) {
                return Err(invalid(format!("devices[{i}].name"), format!("{:?} repeats devices[{j}]", d.name)));
            }
            device_units.push(match &d.units {
                None => None,
                Some(u) => Some(units(&format!("devices[{i}].units"), u)?),
            });
        }
        names.clear();

        let mut b = Builder { entries: Vec::new(), entry_keys: Vec::new(), ranges: Vec::new(), merged: Vec::new() };
        let mut rules = Vec::with_capacity(ir.rules.len());
        let mut pairs: Vec<(u64, Candidate)> = Vec::new();
        let mut slots: u64 = 0;
        for (ri, r) in ir.rules.iter().enumerate() {
            let path = format!("rules[{ri}]");
            let Rule { id, principals, devices, units: rule_units, allow, .. } = r;
            if id.is_empty() {
                return Err(invalid(format!("{path}.id"), "rule id is empty"));
            }
            if let Some(j) = names.insert(id.as_str(), ri) {
                return Err(invalid(format!("{path}.id"), format!("{id:?} repeats rules[{j}]")));
            }
            let mut ps = Vec::with_capacity(principals.len());
            for (k, p) in principals.iter().enumerate() {
                ps.push(index(format!("{path}.principals[{k}]"), *p, np, "principal")?);
            }
            let mut ds = Vec::with_capacity(devices.len());
            for (k, d) in devices.iter().enumerate() {
                ds.push(index(format!("{path}.devices[{k}]"), *d, nd, "device")?);
            }
            dedup(&mut ps);
            dedup(&mut ds);
            let units = match rule_units {
                None => None,
                Some(u) => Some(units(&format!("{path}.units"), u)?),
            };
            let first = b.entries.len() as u32;
            let mut rated = 0u32;
            for (ei, e) in allow.iter().enumerate() {
                b.entry(&format!("{path}.allow[{ei}]"), e, &mut rated)?;
            }
            let entries = Span { off: first, len: b.entries.len() as u32 - first };
            for (k, p) in ps.iter().enumerate() {
                let slot = if rated == 0 { u32::MAX } else { (slots + k as u64 * rated as u64) as u32 };
                for d in &ds {
                    pairs.push(((*p as u64) << 32 | *d as u64, Candidate { rule: ri as u32, slot }));
                }
            }
            slots += ps.len() as u64 * rated as u64;
            if slots >= u32::MAX as u64 {
                return Err(invalid(path, "too many rate buckets"));
            }
            rules.push(CompiledRule { id: id.clone(), entries, units });
        }
        if rules.len() >= u32::MAX as usize {
            return Err(invalid("rules", "too many rules"));
        }

        let classes = entry_classes(&b);
        // Stable sorts keep file order within each (principal, device) list and each key.
        pairs.sort_by_key(|(k, _)| *k);
        let mut candidates = Vec::with_capacity(pairs.len());
        let mut keys: Vec<(u32, Span)> = Vec::new();
        let mut items: Vec<Item> = Vec::new();
        let mut index: Vec<(u64, Pair)> = Vec::new();
        let mut filed: Vec<(u32, Item)> = Vec::new();
        let mut fallback: Vec<Fallback> = Vec::new();
        let mut i = 0;
        while i < pairs.len() {
            let pk = pairs[i].0;
            let mut j = i;
            filed.clear();
            while j < pairs.len() && pairs[j].0 == pk {
                let c = pairs[j].1;
                let rule = &rules[c.rule as usize];
                for e in rule.entries.off..rule.entries.off + rule.entries.len {
                    let slot = match b.entries[e as usize].rate {
                        Some((_, k)) => c.slot + k,
                        None => u32::MAX,
                    };
                    for k in &b.entry_keys[e as usize] {
                        let units = rule.units.or(device_units[(pk & 0xFFFF_FFFF) as usize]);
                        filed.push((*k, Item { rule: c.rule, entry: e, slot, units }));
                    }
                }
                candidates.push(c);
                j += 1;
            }
            let pair_units = device_units[(pk & 0xFFFF_FFFF) as usize];
            let mut fb = Fallback { first: u32::MAX, same_units: true };
            let mut first_units = None;
            for c in &candidates[i..j] {
                let rule = &rules[c.rule as usize];
                if rule.entries.len == 0 {
                    continue;
                }
                let u = rule.units.or(pair_units);
                match first_units {
                    None => (fb.first, first_units) = (c.rule, Some(u)),
                    Some(f) => fb.same_units &= f == u,
                }
            }
            fallback.resize(candidates.len(), fb);
            filed.sort_by_key(|(k, _)| *k);
            // An entry that repeats an earlier one of the same key (same units, same checks) can
            // never decide: the earlier one matches first or fails as deep and wins the tie.
            let mut seen: std::collections::HashSet<(u32, Option<UnitSet>, u32)> = Default::default();
            filed.retain(|(k, item)| seen.insert((*k, item.units, classes[item.entry as usize])));
            let keys_off = keys.len() as u32;
            for (k, item) in filed.iter().copied() {
                let joins = keys.len() as u32 > keys_off && keys.last().is_some_and(|(lk, _)| *lk == k);
                match keys.last_mut() {
                    Some((_, s)) if joins => s.len += 1,
                    _ => keys.push((k, Span { off: items.len() as u32, len: 1 })),
                }
                items.push(item);
            }
            if items.len() >= u32::MAX as usize {
                return Err(invalid("rules", "too many (principal, device, function) combinations"));
            }
            let mut plain = [0u64; 4];
            for (k, _) in &keys[keys_off as usize..] {
                if *k < 256 {
                    plain[(*k >> 6) as usize] |= 1 << (*k & 63);
                }
            }
            let pair = Pair {
                rules: Span { off: i as u32, len: (j - i) as u32 },
                keys: Span { off: keys_off, len: keys.len() as u32 - keys_off },
                plain,
            };
            index.push((pk, pair));
            i = j;
        }
        let covers = Covers::build(&keys, &items, &b.entries, &b.merged, &classes, fallback)
            .ok_or_else(|| invalid("rules", "too many address ranges"))?;
        let index = if np.saturating_mul(nd) <= DENSE_PAIRS {
            let mut dense = vec![Pair::default(); np * nd];
            for (k, p) in index {
                dense[(k >> 32) as usize * nd + (k & 0xFFFF_FFFF) as usize] = p;
            }
            PairIndex::Dense { devices: nd as u32, pairs: dense }
        } else {
            PairIndex::Sparse(index.into_iter().collect())
        };

        Ok(Engine {
            mode: ir.mode,
            principals: ir.principals.iter().map(|p| p.name.clone()).collect(),
            devices: ir.devices.iter().map(|d| d.name.clone()).collect(),
            device_units,
            rules,
            entries: b.entries,
            ranges: b.ranges,
            merged: b.merged,
            candidates,
            keys,
            items,
            index,
            covers,
            buckets: Buckets::new(slots as usize),
            cip: super::cip::CipPolicy::compile(ir)?,
        })
    }
}
