//! Compile stage for CIP (docs/cip-engine.md sections 2-4): the IR of a rule's `cip` entries, validated
//! into the fast forms `decide_cip` matches on (a service bitset, lower-cased tag patterns, sorted
//! ranges, routes as hop lists), plus the candidate index and the rate buckets of the CIP entries.
//!
//! Every error names its IR field (`rules[1].cip[0].services[2]: unknown CIP service "read_tags"`), as
//! the Modbus compile errors do. Deciding is `cip_decide`, tag patterns `cip_tags`.

use super::cip_tags::Pattern;
use super::compile::IrError;
use super::ir::{Ir, Rate};
use super::rate::{Buckets, RateSpec};
use super::{Span, Verdict};
use crate::enip::Service;
use serde::Deserialize;
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

pub use super::cip_decide::{cip_texts, leaf_connection, route_text, target_text, EnipSession};

/// `enip` of an IR device (the conduit dials it; the engine only reads it to check its shape).
#[derive(Clone, Debug, Deserialize)]
pub struct EnipDevice {
    pub host: String,
    pub port: i64,
}

/// One IR `cip` entry, as the loader writes it.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CipEntry {
    /// Resolved service names (section 1's table, presets expanded).
    pub services: Vec<String>,
    /// Raw codes matched only when the request's service resolves to `Other(code)`.
    #[serde(default)]
    pub service_codes: Vec<i64>,
    #[serde(default)]
    pub tags: Option<Vec<TagPattern>>,
    #[serde(default)]
    pub classes: Option<Vec<[i64; 2]>>,
    #[serde(default)]
    pub instances: Option<Vec<[i64; 2]>>,
    #[serde(default)]
    pub attributes: Option<Vec<[i64; 2]>>,
    /// Routes as hops `[port, link bytes]`; `[]` is the device itself.
    #[serde(default)]
    pub routes: Option<Vec<IrRoute>>,
    #[serde(default)]
    pub rate: Option<Rate>,
}

/// An IR route: hops `[port, link bytes]`.
pub type IrRoute = Vec<(i64, Vec<i64>)>;

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TagPattern {
    pub parts: Vec<PatternPart>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PatternPart {
    /// Lower-cased name, or `"*"`.
    pub name: String,
    /// One inclusive range per dimension; `None`: any elements or none.
    #[serde(default)]
    pub elements: Option<Vec<[i64; 2]>>,
}

/// Every service a policy can name, in bit order of [`ServiceSet`]. Containers are absent: their
/// leaves are decided, never they.
pub const NAMED_SERVICES: [Service; 33] = {
    use Service::*;
    [
        GetAttributeAll,
        SetAttributeAll,
        GetAttributeList,
        SetAttributeList,
        Reset,
        Start,
        Stop,
        Create,
        Delete,
        ApplyAttributes,
        GetAttributeSingle,
        SetAttributeSingle,
        FindNextObjectInstance,
        Restore,
        Save,
        NoOperation,
        GetMember,
        SetMember,
        InsertMember,
        RemoveMember,
        GroupSync,
        ReadTag,
        WriteTag,
        ReadModifyWriteTag,
        ReadTagFragmented,
        WriteTagFragmented,
        GetInstanceAttributeList,
        ForwardClose,
        ForwardOpen,
        LargeForwardOpen,
        GetConnectionData,
        SearchConnectionData,
        GetConnectionOwner,
    ]
};

/// Services that name no data: an entry made only of these may leave its target open.
const NO_TARGET: [Service; 7] = [
    Service::NoOperation,
    Service::ForwardOpen,
    Service::LargeForwardOpen,
    Service::ForwardClose,
    Service::GetConnectionData,
    Service::SearchConnectionData,
    Service::GetConnectionOwner,
];

/// A request's service as a [`ServiceSet`] looks it up: found once per request, tested per entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ServiceKey {
    /// Bit of a named service in [`NAMED_SERVICES`].
    Named(u32),
    /// An unresolved code.
    Code(u8),
    /// A container (never decided itself, so in no set).
    None,
}

impl ServiceKey {
    pub(crate) fn of(s: Service) -> ServiceKey {
        match s {
            Service::Other(c) if c < 128 => ServiceKey::Code(c),
            Service::Other(_) => ServiceKey::None,
            s => named_bit(s).map_or(ServiceKey::None, ServiceKey::Named),
        }
    }
}

/// Position of a named service in [`NAMED_SERVICES`], by match rather than by search (once per request).
const fn named_bit(s: Service) -> Option<u32> {
    use Service::*;
    Some(match s {
        GetAttributeAll => 0,
        SetAttributeAll => 1,
        GetAttributeList => 2,
        SetAttributeList => 3,
        Reset => 4,
        Start => 5,
        Stop => 6,
        Create => 7,
        Delete => 8,
        ApplyAttributes => 9,
        GetAttributeSingle => 10,
        SetAttributeSingle => 11,
        FindNextObjectInstance => 12,
        Restore => 13,
        Save => 14,
        NoOperation => 15,
        GetMember => 16,
        SetMember => 17,
        InsertMember => 18,
        RemoveMember => 19,
        GroupSync => 20,
        ReadTag => 21,
        WriteTag => 22,
        ReadModifyWriteTag => 23,
        ReadTagFragmented => 24,
        WriteTagFragmented => 25,
        GetInstanceAttributeList => 26,
        ForwardClose => 27,
        ForwardOpen => 28,
        LargeForwardOpen => 29,
        GetConnectionData => 30,
        SearchConnectionData => 31,
        GetConnectionOwner => 32,
        MultipleServicePacket | UnconnectedSend | Other(_) => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn named_bits_follow_the_table() {
        for (i, s) in NAMED_SERVICES.iter().enumerate() {
            assert_eq!(named_bit(*s), Some(i as u32), "{s:?}");
        }
    }
}

/// An entry's services: named ones by bit, unresolved codes (0..=0x7F) by code.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct ServiceSet {
    named: u64,
    codes: u128,
}

impl ServiceSet {
    #[inline]
    pub fn contains(&self, key: ServiceKey) -> bool {
        match key {
            ServiceKey::Named(b) => self.named >> b & 1 != 0,
            ServiceKey::Code(c) => self.codes >> c & 1 != 0,
            ServiceKey::None => false,
        }
    }
}

/// A compiled route: hops of (port, link bytes).
pub(crate) type Route = Vec<(u16, Vec<u8>)>;

/// What an entry's target check looks at.
#[derive(Clone, Debug)]
pub(crate) enum Target {
    /// No tags and no logical address: any target (only no-target services).
    Any,
    Tags(Vec<Pattern>),
    /// Each `None` means any; ranges sorted by start.
    Logical {
        classes: Option<Vec<(u32, u32)>>,
        instances: Option<Vec<(u32, u32)>>,
        attributes: Option<Vec<(u32, u32)>>,
    },
}

#[derive(Clone, Debug)]
pub(crate) struct CompiledCipEntry {
    pub services: ServiceSet,
    pub target: Target,
    pub routes: Option<Vec<Route>>,
    /// Which distinct `routes` list this is, numbered over the policy (`u32::MAX` when `routes` is
    /// None): entries of many rules share one, and a leaf compares its route with each list once.
    pub route_set: u32,
    /// The entry's rate and its ordinal among the rule's rated CIP entries.
    pub rate: Option<(RateSpec, u32)>,
}

/// A rule that applies to one (principal, device) pair and has CIP entries, with the first bucket
/// slot of that (rule, principal).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct CipCandidate {
    pub rule: u32,
    pub entries: Span,
    pub slot: u32,
}

/// The CIP half of a compiled policy.
#[derive(Debug, Default)]
pub(crate) struct CipPolicy {
    pub entries: Vec<CompiledCipEntry>,
    /// (principal << 32 | device) -> candidate rules in file order, with their entries bucketed.
    pub pairs: HashMap<u64, PairIndex, BuildHasherDefault<WordHasher>>,
    pub buckets: Buckets,
}

/// A multiply-rotate hash over whole words, for the maps looked up once per message and once per leaf.
/// SipHash's resistance to chosen keys is not needed: the keys are the policy's, fixed when it
/// compiles; a request only chooses what to look up, which at worst walks one bucket's few keys.
#[derive(Clone, Copy, Default)]
pub(crate) struct WordHasher(u64);

impl Hasher for WordHasher {
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            self.write_u64(u64::from_le_bytes(c.try_into().unwrap_or_default()));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut w = [0u8; 8];
            w[..rest.len()].copy_from_slice(rest);
            self.write_u64(u64::from_le_bytes(w));
        }
    }

    #[inline]
    fn write_u64(&mut self, w: u64) {
        self.0 = (self.0.rotate_left(5) ^ w).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }

    #[inline]
    fn write_usize(&mut self, w: usize) {
        self.write_u64(w as u64);
    }

    #[inline]
    fn finish(&self) -> u64 {
        self.0
    }
}

/// Where an entry sits in a pair's walk: index into the pair's candidates, then into `entries`.
pub(crate) type EntryRef = (u32, u32);

/// The candidate rules of one (principal, device) pair and, per kind of leaf, the entries that can
/// pass its target check, in walk order. A leaf only tries its bucket's entries for a match: an entry
/// outside it fails the target check whatever the route and service, so the first passing entry of the
/// bucket is the first passing entry of the whole walk.
///
/// Buckets: [`UNTAGGED`] (leaves without a tag: every entry that is not a tag entry),
/// [`OTHER_NAME`] (tagged leaves whose first name part no pattern names: entries with any target and
/// tag entries with a pattern starting `*`), then one per first name part the pair's patterns name.
#[derive(Debug, Default)]
pub(crate) struct PairIndex {
    pub candidates: Vec<CipCandidate>,
    /// Folded first name part ([`fold`]) -> bucket.
    names: HashMap<Box<[u8]>, u32, BuildHasherDefault<WordHasher>>,
    buckets: Vec<Box<[EntryRef]>>,
    /// The same walk as bit sets, when the pair has at most 64 entries (nearly every policy).
    pub masks: Option<PairMasks>,
}

/// A pair's entries as bits, bit `i` for entry `i` of the walk (candidates in file order, their entries
/// in order). A leaf's route and service then pick the entries it passes with a few word operations,
/// rather than entry by entry, and the lowest bit is the first entry in the walk.
#[derive(Debug)]
pub(crate) struct PairMasks {
    /// The walk: bit `i` is `walk[i]`.
    pub walk: Box<[EntryRef]>,
    /// Entries with any route.
    pub any_route: u64,
    /// Per distinct route set of the pair: its number ([`CompiledCipEntry::route_set`]), an entry that
    /// has it (whose `routes` the leaf is compared with), and the entries that have it.
    pub route_sets: Box<[(u32, u32, u64)]>,
    /// Per named service bit ([`NAMED_SERVICES`]): the entries whose services contain it.
    named: Box<[u64]>,
    /// Per unresolved code some entry names: the entries that name it.
    codes: Box<[(u8, u64)]>,
    /// Per bucket (as [`PairIndex::bucket_id`] numbers them): its entries.
    pub buckets: Box<[u64]>,
}

impl PairMasks {
    fn build(walk: Vec<EntryRef>, entries: &[CompiledCipEntry], buckets: &[Vec<EntryRef>]) -> Option<PairMasks> {
        if walk.len() > 64 {
            return None;
        }
        let bit = |r: &EntryRef| 1u64 << walk.iter().position(|w| w == r).unwrap_or(0);
        let mut any_route = 0u64;
        let mut route_sets: Vec<(u32, u32, u64)> = Vec::new();
        let mut named = vec![0u64; NAMED_SERVICES.len()];
        let mut codes: Vec<(u8, u64)> = Vec::new();
        for (i, (_, ei)) in walk.iter().enumerate() {
            let e = &entries[*ei as usize];
            let b = 1u64 << i;
            match &e.routes {
                None => any_route |= b,
                Some(_) => match route_sets.iter_mut().find(|(set, _, _)| *set == e.route_set) {
                    Some((_, _, m)) => *m |= b,
                    None => route_sets.push((e.route_set, *ei, b)),
                },
            }
            for (k, m) in named.iter_mut().enumerate() {
                if e.services.contains(ServiceKey::Named(k as u32)) {
                    *m |= b;
                }
            }
            for c in 0..=0x7Fu8 {
                if e.services.contains(ServiceKey::Code(c)) {
                    match codes.iter_mut().find(|(code, _)| *code == c) {
                        Some((_, m)) => *m |= b,
                        None => codes.push((c, b)),
                    }
                }
            }
        }
        let buckets = buckets.iter().map(|list| list.iter().map(bit).fold(0, |a, b| a | b)).collect();
        Some(PairMasks {
            walk: walk.into_boxed_slice(),
            any_route,
            route_sets: route_sets.into_boxed_slice(),
            named: named.into_boxed_slice(),
            codes: codes.into_boxed_slice(),
            buckets,
        })
    }

    /// The entries whose services contain `key`.
    #[inline]
    pub fn services(&self, key: ServiceKey) -> u64 {
        match key {
            ServiceKey::Named(b) => self.named.get(b as usize).copied().unwrap_or(0),
            ServiceKey::Code(c) => self.codes.iter().find(|(code, _)| *code == c).map_or(0, |(_, m)| *m),
            ServiceKey::None => 0,
        }
    }
}

pub(crate) const UNTAGGED: usize = 0;
pub(crate) const OTHER_NAME: usize = 1;

/// The case fold tag names compare under (`cip_tags::same_name`): bit 5 set on every byte.
#[inline]
pub(crate) fn fold(c: u8) -> u8 {
    c | 0x20
}

impl PairIndex {
    fn build(candidates: Vec<CipCandidate>, entries: &[CompiledCipEntry]) -> PairIndex {
        let walk = || {
            candidates.iter().enumerate().flat_map(move |(ci, c)| {
                (c.entries.off..c.entries.off + c.entries.len).map(move |ei| ((ci as u32, ei), &entries[ei as usize]))
            })
        };
        let mut names: HashMap<Box<[u8]>, u32, BuildHasherDefault<WordHasher>> = HashMap::default();
        for (_, e) in walk() {
            if let Target::Tags(pats) = &e.target {
                for first in pats.iter().filter_map(|p| p.first_name()) {
                    let key: Box<[u8]> = first.bytes().map(fold).collect();
                    let next = names.len() as u32 + 2;
                    names.entry(key).or_insert(next);
                }
            }
        }
        let mut buckets: Vec<Vec<EntryRef>> = vec![Vec::new(); names.len() + 2];
        let mut by_id: Vec<&[u8]> = vec![&[]; names.len() + 2];
        for (k, v) in &names {
            by_id[*v as usize] = k;
        }
        for (r, e) in walk() {
            match &e.target {
                Target::Any => buckets.iter_mut().for_each(|b| b.push(r)),
                Target::Logical { .. } => buckets[UNTAGGED].push(r),
                Target::Tags(pats) => {
                    for (b, name) in buckets.iter_mut().zip(&by_id).skip(OTHER_NAME) {
                        let can = pats.iter().any(|p| match p.first_name() {
                            None => true,
                            Some(first) => {
                                !name.is_empty()
                                    && first.len() == name.len()
                                    && first.bytes().map(fold).eq(name.iter().copied())
                            }
                        });
                        if can {
                            b.push(r);
                        }
                    }
                }
            }
        }
        let masks = PairMasks::build(walk().map(|(r, _)| r).collect(), entries, &buckets);
        PairIndex { candidates, names, buckets: buckets.into_iter().map(Vec::into_boxed_slice).collect(), masks }
    }

    /// The bucket of a leaf: `first` is its tag's first name part, `None` without a tag.
    #[inline]
    pub(crate) fn bucket(&self, first: Option<&[u8]>) -> &[EntryRef] {
        &self.buckets[self.bucket_id(first)]
    }

    /// The number of the bucket of a leaf whose tag's first name part is `first` (`None`: no tag).
    #[inline]
    pub(crate) fn bucket_id(&self, first: Option<&[u8]>) -> usize {
        let Some(name) = first else { return UNTAGGED };
        if self.names.is_empty() {
            return OTHER_NAME;
        }
        let mut buf = [0u8; 64];
        let id = if name.len() <= buf.len() {
            let folded = &mut buf[..name.len()];
            for (d, s) in folded.iter_mut().zip(name) {
                *d = fold(*s);
            }
            self.names.get(&*folded)
        } else {
            let folded: Vec<u8> = name.iter().copied().map(fold).collect();
            self.names.get(folded.as_slice())
        };
        id.map_or(OTHER_NAME, |i| *i as usize)
    }
}

fn invalid(path: impl Into<String>, message: impl Into<String>) -> IrError {
    IrError::Invalid { path: path.into(), message: message.into() }
}

fn u32_ranges(path: &str, list: &[[i64; 2]]) -> Result<Vec<(u32, u32)>, IrError> {
    let mut out = Vec::with_capacity(list.len());
    for (i, [lo, hi]) in list.iter().copied().enumerate() {
        let max = u32::MAX as i64;
        if !(0..=max).contains(&lo) || !(0..=max).contains(&hi) {
            return Err(invalid(format!("{path}[{i}]"), format!("range [{lo}, {hi}] is outside 0..={max}")));
        }
        if lo > hi {
            return Err(invalid(format!("{path}[{i}]"), format!("range [{lo}, {hi}] is reversed")));
        }
        out.push((lo as u32, hi as u32));
    }
    out.sort_unstable();
    Ok(out)
}

fn compile_route(path: &str, hops: &[(i64, Vec<i64>)]) -> Result<Route, IrError> {
    let mut out = Vec::with_capacity(hops.len());
    for (i, (port, link)) in hops.iter().enumerate() {
        let p = format!("{path}[{i}]");
        if !(1..=0xFFFF).contains(port) {
            return Err(invalid(p, format!("port {port} is outside 1..=65535")));
        }
        if link.is_empty() || link.len() > 255 {
            return Err(invalid(p, "a link address has 1 to 255 bytes"));
        }
        let mut bytes = Vec::with_capacity(link.len());
        for b in link {
            if !(0..=255).contains(b) {
                return Err(invalid(p, format!("link byte {b} is outside 0..=255")));
            }
            bytes.push(*b as u8);
        }
        out.push((*port as u16, bytes));
    }
    Ok(out)
}

fn compile_entry(path: &str, e: &CipEntry, rated: &mut u32) -> Result<CompiledCipEntry, IrError> {
    let mut services = ServiceSet::default();
    let mut all_no_target = true;
    for (i, name) in e.services.iter().enumerate() {
        let p = format!("{path}.services[{i}]");
        if name == "unconnected_send" || name == "multiple_service_packet" {
            return Err(invalid(
                p,
                format!("{name} is a container: the requests inside it are decided, it cannot be named"),
            ));
        }
        let Some(bit) = NAMED_SERVICES.iter().position(|s| s.name() == Some(name.as_str())) else {
            return Err(invalid(p, format!("unknown CIP service {name:?}")));
        };
        services.named |= 1 << bit;
        all_no_target &= NO_TARGET.contains(&NAMED_SERVICES[bit]);
    }
    for (i, code) in e.service_codes.iter().copied().enumerate() {
        if !(0..=0x7F).contains(&code) {
            return Err(invalid(
                format!("{path}.service_codes[{i}]"),
                format!("service code {code} is outside 0..=0x7F"),
            ));
        }
        services.codes |= 1 << code;
        all_no_target = false;
    }
    if e.services.is_empty() && e.service_codes.is_empty() {
        return Err(invalid(format!("{path}.services"), "the entry names no service"));
    }
    let logical = e.classes.is_some() || e.instances.is_some() || e.attributes.is_some();
    let target = match &e.tags {
        Some(_) if logical => {
            return Err(invalid(
                format!("{path}.tags"),
                "tags and class/instance/attribute cannot be combined in one entry",
            ))
        }
        Some(list) => {
            let mut pats = Vec::with_capacity(list.len());
            for (i, t) in list.iter().enumerate() {
                pats.push(Pattern::compile(&format!("{path}.tags[{i}]"), t)?);
            }
            Target::Tags(pats)
        }
        None if logical => {
            let opt = |field: &str, v: &Option<Vec<[i64; 2]>>| -> Result<_, IrError> {
                v.as_deref().map(|l| u32_ranges(&format!("{path}.{field}"), l)).transpose()
            };
            Target::Logical {
                classes: opt("classes", &e.classes)?,
                instances: opt("instances", &e.instances)?,
                attributes: opt("attributes", &e.attributes)?,
            }
        }
        None if all_no_target => Target::Any,
        None => return Err(invalid(format!("{path}.tags"), "name the tags or the class the entry allows")),
    };
    let routes = match &e.routes {
        None => None,
        Some(list) => {
            let mut out = Vec::with_capacity(list.len());
            for (i, r) in list.iter().enumerate() {
                out.push(compile_route(&format!("{path}.routes[{i}]"), r)?);
            }
            Some(out)
        }
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
    Ok(CompiledCipEntry { services, target, routes, route_set: u32::MAX, rate })
}

impl CipPolicy {
    /// Compiles every rule's `cip` entries. Principal and device indices were checked by the Modbus
    /// half; they are checked again here so this stands on its own.
    pub(crate) fn compile(ir: &Ir) -> Result<CipPolicy, IrError> {
        let (np, nd) = (ir.principals.len(), ir.devices.len());
        for (i, d) in ir.devices.iter().enumerate() {
            if let Some(e) = &d.enip {
                if !(1..=0xFFFF).contains(&e.port) {
                    return Err(invalid(
                        format!("devices[{i}].enip.port"),
                        format!("port {} is outside 1..=65535", e.port),
                    ));
                }
            }
        }
        let mut entries = Vec::new();
        let mut pairs: HashMap<u64, Vec<CipCandidate>> = HashMap::new();
        let mut slots: u64 = 0;
        for (ri, r) in ir.rules.iter().enumerate() {
            if r.cip.is_empty() {
                continue;
            }
            let first = entries.len() as u32;
            let mut rated = 0u32;
            for (ei, e) in r.cip.iter().enumerate() {
                entries.push(compile_entry(&format!("rules[{ri}].cip[{ei}]"), e, &mut rated)?);
            }
            let span = Span { off: first, len: entries.len() as u32 - first };
            let mut ps: Vec<u32> = Vec::new();
            for (k, p) in r.principals.iter().copied().enumerate() {
                if p < 0 || p as u64 >= np as u64 {
                    return Err(invalid(
                        format!("rules[{ri}].principals[{k}]"),
                        format!("principal index {p} is out of range"),
                    ));
                }
                if !ps.contains(&(p as u32)) {
                    ps.push(p as u32);
                }
            }
            let mut ds: Vec<u32> = Vec::new();
            for (k, d) in r.devices.iter().copied().enumerate() {
                if d < 0 || d as u64 >= nd as u64 {
                    return Err(invalid(
                        format!("rules[{ri}].devices[{k}]"),
                        format!("device index {d} is out of range"),
                    ));
                }
                if !ds.contains(&(d as u32)) {
                    ds.push(d as u32);
                }
            }
            for (k, p) in ps.iter().enumerate() {
                let slot = if rated == 0 { u32::MAX } else { (slots + k as u64 * rated as u64) as u32 };
                for d in &ds {
                    pairs.entry((*p as u64) << 32 | *d as u64).or_default().push(CipCandidate {
                        rule: ri as u32,
                        entries: span,
                        slot,
                    });
                }
            }
            slots += ps.len() as u64 * rated as u64;
            if slots >= u32::MAX as u64 {
                return Err(invalid(format!("rules[{ri}]"), "too many rate buckets"));
            }
        }
        let mut sets: HashMap<&[Route], u32> = HashMap::new();
        let ids: Vec<u32> = entries
            .iter()
            .map(|e| match &e.routes {
                None => u32::MAX,
                Some(r) => {
                    let next = sets.len() as u32;
                    *sets.entry(r.as_slice()).or_insert(next)
                }
            })
            .collect();
        for (e, id) in entries.iter_mut().zip(ids) {
            e.route_set = id;
        }
        let pairs = pairs.into_iter().map(|(k, c)| (k, PairIndex::build(c, &entries))).collect();
        Ok(CipPolicy { entries, pairs, buckets: Buckets::new(slots as usize) })
    }

    #[inline]
    pub(crate) fn pair(&self, principal: u32, device: u32) -> Option<&PairIndex> {
        self.pairs.get(&((principal as u64) << 32 | device as u64))
    }
}

/// Why; values continue the Modbus [`super::Reason`] values (docs/cip-engine.md section 8).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum CipReason {
    Allowed = 0,
    UnknownPrincipal = 1,
    Malformed = 2,
    NoMatchingRule = 3,
    RateExceeded = 9,
    /// Depth 1.
    RouteNotAllowed = 10,
    /// Depth 2.
    ServiceNotAllowed = 11,
    /// Depth 3.
    TargetNotAllowed = 12,
    /// An encapsulation command the conduit never forwards.
    CommandNotAllowed = 13,
}

impl CipReason {
    pub const fn name(self) -> &'static str {
        match self {
            CipReason::Allowed => "allowed",
            CipReason::UnknownPrincipal => "unknown_principal",
            CipReason::Malformed => "malformed",
            CipReason::NoMatchingRule => "no_matching_rule",
            CipReason::RateExceeded => "rate_exceeded",
            CipReason::RouteNotAllowed => "route_not_allowed",
            CipReason::ServiceNotAllowed => "service_not_allowed",
            CipReason::TargetNotAllowed => "target_not_allowed",
            CipReason::CommandNotAllowed => "command_not_allowed",
        }
    }

    pub(crate) const fn from_depth(depth: u8) -> CipReason {
        match depth {
            1 => CipReason::RouteNotAllowed,
            2 => CipReason::ServiceNotAllowed,
            _ => CipReason::TargetNotAllowed,
        }
    }
}

/// One CIP or encapsulation decision, explained (docs/cip-engine.md sections 7 and 8).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CipDecision {
    pub verdict: Verdict,
    pub reason: CipReason,
    /// Index of the deciding rule (see [`super::Engine::rule_id`]).
    pub rule: Option<u32>,
    /// Kind name when `reason` is `Malformed`.
    pub malformed: Option<&'static str>,
    /// CIP general status to answer (deny at the CIP level only).
    pub general_status: Option<u8>,
    /// Encapsulation status to answer (deny at the encapsulation level only).
    pub encap_status: Option<u32>,
    /// Encapsulation command word; 0 for `decide_cip`.
    pub command: u16,
    /// The outer CIP service byte; 0 when none.
    pub service: u8,
    /// Leaves decided.
    pub leaves: u32,
    pub denied_leaf: Option<u32>,
    /// The deciding leaf's target, for audit: tag name, `class 0x01 instance 1 attribute 7`, or "".
    pub target: String,
    /// The deciding leaf's route text.
    pub route: String,
}

impl CipDecision {
    /// True unless the message must be refused.
    #[inline]
    pub fn forward(&self) -> bool {
        self.verdict != Verdict::Deny
    }
}
