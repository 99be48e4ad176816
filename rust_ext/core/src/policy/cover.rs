//! Address coverage of the candidate entries under one function key, all of them at once.
//!
//! The address check (docs/engine.md section 4c, depth 3) is where most candidate entries of a
//! real policy part ways: rules of one pair usually differ by the addresses they allow. Checked
//! entry by entry, a denial would cost a walk over every entry filed under the request's key. Here
//! every interval start and every interval end + 1 of those entries is a break; between two breaks
//! the set of entries covering an address does not change, so each break carries that set as a
//! bitmask (bit i: the key's i-th item). The entries covering a range `[s, e]` are the AND of the
//! masks from the break at or below `s` up to the last break at or below `e`. The decision stage
//! then runs the quantity and value checks only on those, and decides a request no entry covers
//! without looking at any entry. Keys with more than 64 items are walked entry by entry instead.

use super::{CompiledEntry, Item, Span, TABLES};
use crate::modbus::request::Request;
use std::collections::HashMap;

/// Most items one mask can hold.
const MAX_ITEMS: usize = 64;
/// `KeyCover::cover` of a key with more items than a mask holds.
pub(crate) const WALK: u32 = u32::MAX;

/// How the decision stage treats the items filed under one key (one per `Engine::keys` slot).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct KeyCover {
    /// Index of the key's coverage, or [`WALK`].
    pub cover: u32,
    /// Every item carries the same unit set, so one test answers the unit check for all of them.
    pub same_units: bool,
}

/// What a pair whose entries all fail the unit or function check is decided from: the first
/// candidate rule with entries (`u32::MAX`: none has any), and whether every such rule allows the
/// same units on the pair's device (then that rule alone says unit or function).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Fallback {
    pub first: u32,
    pub same_units: bool,
}

#[derive(Clone, Copy, Debug)]
struct Cover {
    /// Per table: span of `Covers::breaks` and of `Covers::masks`.
    tables: [Span; 5],
}

/// Coverage of every key of every pair. Keys whose items cover the same addresses (the same
/// entries, or entries with the same ranges) share one coverage.
#[derive(Debug, Default)]
pub(crate) struct Covers {
    /// Parallel to `Engine::keys`.
    pub by_key: Vec<KeyCover>,
    /// Indexed by the offset of a pair's span of `Engine::candidates`.
    pub fallback: Vec<Fallback>,
    covers: Vec<Cover>,
    /// Sorted break addresses, per cover and table.
    breaks: Vec<u32>,
    /// Items covering the addresses from the break at the same index up to the next one.
    masks: Vec<u64>,
}

impl Covers {
    /// Builds the coverage of every key; `classes` numbers entries with equal checks (equal
    /// numbers, equal coverage). `None` when the index would not fit its 32-bit offsets.
    pub fn build(
        keys: &[(u32, Span)],
        items: &[Item],
        entries: &[CompiledEntry],
        merged: &[(u32, u32)],
        classes: &[u32],
        fallback: Vec<Fallback>,
    ) -> Option<Covers> {
        let mut out = Covers { fallback, ..Default::default() };
        let mut seen: HashMap<Vec<u32>, u32> = HashMap::new();
        out.by_key.reserve_exact(keys.len());
        for (_, span) in keys {
            let list = span.of(items);
            let same_units = list.iter().all(|it| it.units == list[0].units);
            let cover = if list.len() > MAX_ITEMS {
                WALK
            } else {
                let sig: Vec<u32> = list.iter().map(|it| classes[it.entry as usize]).collect();
                match seen.get(&sig) {
                    Some(c) => *c,
                    None => {
                        let c = out.add(list, entries, merged)?;
                        seen.insert(sig, c);
                        c
                    }
                }
            };
            out.by_key.push(KeyCover { cover, same_units });
        }
        out.breaks.shrink_to_fit();
        out.masks.shrink_to_fit();
        Some(out)
    }

    fn add(&mut self, list: &[Item], entries: &[CompiledEntry], merged: &[(u32, u32)]) -> Option<u32> {
        let mut tables = [Span::default(); 5];
        let mut points = Vec::new();
        for (t, span) in tables.iter_mut().enumerate().take(TABLES.len()) {
            points.clear();
            for it in list {
                for &(s, e) in entries[it.entry as usize].merged[t].of(merged) {
                    points.push(s);
                    // An interval reaching the top of the address space has no end break: the
                    // addresses after its last break are all covered.
                    if let Some(after) = e.checked_add(1) {
                        points.push(after);
                    }
                }
            }
            points.sort_unstable();
            points.dedup();
            let off = self.breaks.len();
            let mut masks = vec![0u64; points.len()];
            for (i, it) in list.iter().enumerate() {
                for &(s, e) in entries[it.entry as usize].merged[t].of(merged) {
                    let mut k = points.partition_point(|p| *p < s);
                    while k < points.len() && points[k] <= e {
                        masks[k] |= 1 << i;
                        k += 1;
                    }
                }
            }
            self.breaks.extend_from_slice(&points);
            self.masks.extend_from_slice(&masks);
            if self.breaks.len() >= u32::MAX as usize {
                return None;
            }
            *span = Span { off: off as u32, len: (self.breaks.len() - off) as u32 };
        }
        self.covers.push(Cover { tables });
        u32::try_from(self.covers.len() - 1).ok().filter(|c| *c != WALK)
    }

    /// Items of the key with coverage `cover` whose entries hold every address `req` touches (all
    /// of them when it touches none).
    #[inline]
    pub fn covering(&self, cover: u32, req: &Request<'_>) -> u64 {
        let tables = &self.covers[cover as usize].tables;
        let mut m = u64::MAX;
        for r in req.ranges() {
            let span = tables[r.table as usize];
            let breaks = span.of(&self.breaks);
            let masks = span.of(&self.masks);
            let i = breaks.partition_point(|b| *b <= r.start);
            if i == 0 {
                return 0;
            }
            let mut i = i - 1;
            m &= masks[i];
            while m != 0 && i + 1 < breaks.len() && breaks[i + 1] <= r.end {
                i += 1;
                m &= masks[i];
            }
            if m == 0 {
                return 0;
            }
        }
        m
    }
}

#[cfg(test)]
mod tests {
    use super::WALK;
    use crate::policy::Engine;
    use serde_json::{json, Value};

    fn adu(unit: u8, pdu: &[u8]) -> Vec<u8> {
        let mut v = vec![0x00, 0x01, 0x00, 0x00];
        v.extend_from_slice(&((pdu.len() + 1) as u16).to_be_bytes());
        v.push(unit);
        v.extend_from_slice(pdu);
        v
    }

    fn w(x: u64) -> [u8; 2] {
        (x as u16).to_be_bytes()
    }

    /// Sorted, non-overlapping ranges below `top`, some adjacent (the index must join those), some
    /// with value bounds.
    fn ranges(rnd: &mut impl FnMut(u64) -> u64, base: u64, top: u64, span: u64) -> Value {
        let mut out = Vec::new();
        let mut at = base + rnd(span);
        for _ in 0..rnd(4) {
            let end = (at + rnd(span)).min(top);
            let mut r = json!({"start": at, "end": end, "min": null, "max": null, "signed": false});
            if rnd(3) == 0 {
                r["min"] = json!(rnd(50) as i64 - 10);
                r["max"] = json!(60 + rnd(40) as i64);
                r["signed"] = json!(rnd(2) == 0);
            }
            out.push(r);
            if end >= top {
                break;
            }
            at = end + 1 + rnd(3) * rnd(2);
        }
        json!(out)
    }

    /// Random policies, some with more entries under one key than a mask holds, decided through
    /// the coverage index and by the plain walk of section 4: the same decision every time.
    #[test]
    fn covered_decisions_match_the_plain_walk() {
        let mut x: u64 = 0xD1B5_4A32_D192_ED03;
        let mut rnd = move |n: u64| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x % n
        };
        let fcs = [1u64, 3, 5, 6, 15, 16, 20, 21, 22, 23, 7, 8, 43];
        let mut walked = 0;
        for round in 0..120 {
            let many = round % 6 == 0;
            let mut rules = Vec::new();
            for r in 0..(if many { 25 + rnd(20) } else { 1 + rnd(8) }) {
                let mut allow = Vec::new();
                for _ in 0..(if many { 2 + rnd(3) } else { rnd(4) }) {
                    let mut functions: Vec<Value> = (0..1 + rnd(4))
                        .map(|_| match fcs[rnd(fcs.len() as u64) as usize] {
                            8 => json!([8, rnd(2)]),
                            43 => json!([43, 13 + rnd(2)]),
                            fc => json!([fc, null]),
                        })
                        .collect();
                    // Many entries under one key: more than a mask holds.
                    if many {
                        functions.push(json!([3, null]));
                    }
                    let files = if rnd(4) == 0 {
                        json!([{"start": 0x0002_0000u64 + rnd(9000), "end": u32::MAX, "min": null, "max": null, "signed": false}])
                    } else {
                        ranges(&mut rnd, 0x0001_0000, 0x0003_270F, 6000)
                    };
                    let mut en = json!({
                        "functions": functions,
                        "ranges": {"holding_registers": ranges(&mut rnd, 0, 0xFFFF, 40),
                                   "coils": ranges(&mut rnd, 0, 0xFFFF, 40),
                                   "discrete_inputs": [], "input_registers": [], "file_records": files},
                        "max_quantity": null,
                        "rate": null,
                    });
                    if rnd(3) == 0 {
                        en["max_quantity"] = json!(1 + rnd(10));
                    }
                    if rnd(4) == 0 {
                        en["rate"] = json!({"count": 1 + rnd(3), "period_ns": 100, "burst": 1 + rnd(3)});
                    }
                    allow.push(en);
                }
                let units = if rnd(3) == 0 { json!([[1, 1 + rnd(3)]]) } else { json!(null) };
                let (ps, ds) = if many { (json!([0, 1]), json!([0, 1])) } else { (json!([rnd(2)]), json!([rnd(2)])) };
                rules.push(
                    json!({"id": format!("r{r}"), "principals": ps, "devices": ds, "units": units, "allow": allow}),
                );
            }
            let ir = json!({
                "version": 1,
                "mode": if round % 4 == 0 { "monitor" } else { "enforce" },
                "principals": [{"name": "a"}, {"name": "b"}],
                "devices": [{"name": "plc", "units": [[1, 2]]}, {"name": "gw", "units": null}],
                "rules": rules,
            })
            .to_string();
            let a = Engine::from_json(&ir).unwrap();
            let b = Engine::from_json(&ir).unwrap();
            walked += a.covers.by_key.iter().filter(|k| k.cover == WALK).count();
            for t in 0..400u64 {
                let unit = 1 + rnd(3) as u8;
                let start = rnd(200);
                let qty = 1 + rnd(40);
                let file = 1 + rnd(3) + if rnd(5) == 0 { 0xFFF0 } else { 0 };
                let record = rnd(9990);
                let frame = match rnd(11) {
                    0 => adu(unit, &[&[0x03][..], &w(start), &w(qty)].concat()),
                    1 => adu(unit, &[&[0x01][..], &w(start), &w(qty)].concat()),
                    2 => adu(unit, &[&[0x06][..], &w(start), &w(rnd(120))].concat()),
                    3 => {
                        let n = 1 + rnd(6);
                        let vals: Vec<u8> = (0..n).flat_map(|_| w(rnd(120))).collect();
                        adu(unit, &[&[0x10][..], &w(start), &w(n), &[2 * n as u8], &vals].concat())
                    }
                    4 => adu(unit, &[&[0x0F][..], &w(start), &w(10), &[2, rnd(256) as u8, rnd(4) as u8]].concat()),
                    5 => {
                        let subs = 1 + rnd(3);
                        let mut pdu = vec![0x14, 7 * subs as u8];
                        for _ in 0..subs {
                            let rec = rnd(9990);
                            pdu.extend(
                                [
                                    &[6][..],
                                    &w(1 + rnd(3) + if rnd(5) == 0 { 0xFFF0 } else { 0 }),
                                    &w(rec),
                                    &w(1 + rnd(9)),
                                ]
                                .concat(),
                            );
                        }
                        adu(unit, &pdu)
                    }
                    6 => {
                        let n = 1 + rnd(4);
                        let vals: Vec<u8> = (0..n).flat_map(|_| w(rnd(120))).collect();
                        let body = [&[6][..], &w(file), &w(record), &w(n), &vals].concat();
                        adu(unit, &[&[0x15, body.len() as u8][..], &body].concat())
                    }
                    7 => adu(unit, &[&[0x16][..], &w(start), &[0xFF, 0x00, 0x00, 0x01]].concat()),
                    8 => adu(
                        unit,
                        &[&[0x17][..], &w(start), &w(qty), &w(start + rnd(20)), &w(1), &[2], &w(rnd(120))].concat(),
                    ),
                    9 => adu(unit, &[0x08, 0x00, rnd(2) as u8, 0x00, 0x00]),
                    _ => adu(unit, &[0x2B, 13 + rnd(2) as u8, 0x01, 0x00]),
                };
                let (p, d) = (rnd(3) as u32, rnd(3) as u32);
                let da = a.decide(p, d, &frame, t * 37);
                let db = b.decide_scan(p, d, &frame, t * 37);
                assert_eq!(da, db, "round {round} frame {frame:02x?} p {p} d {d}");
            }
        }
        assert!(walked > 0, "no key had more items than a mask holds");
    }
}
