//! Parsing stage: CIP EPATHs (padded form, Vol. 1 appendix C) into the address a policy matches on.
//!
//! ```text
//!  port      000e pppp [link size if e] [port u16 if pppp=15] link address... [pad to even]
//!  logical   001t ttff  ff: 0 = u8 value | 1 = pad + u16 LE | 2 = pad + u32 LE
//!            ttt: 0 class, 1 instance, 2 member (array element after a symbol), 3 connection point,
//!                 4 attribute, 5 electronic key (0x34, format 4, 8 bytes)
//!  network   010x xxxx  one data byte, or (0x5X) a word count and that many words
//!  data      1000 0000  simple data: word count, words (Forward Open application data)
//!            1001 0001  ANSI extended symbol: length, characters, pad to even (a Logix tag name part)
//! ```
//!
//! A path is read once into plain data: the route (port segments), the logical address, and the tag
//! name with its array elements and members (`Program:Main.Line1[3].Speed`). Anything that would let a
//! device read a path differently from the policy (a segment repeated, logical segments out of order,
//! characters that could be confused with the tag name syntax) is an error, answered with general
//! status 0x04 (path segment error).

use super::cip::Anomalies;
use super::{le16, le32};

/// Kinds of malformed path, with the byte offset of the offending segment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PathErrorKind {
    /// A segment runs past the end of the path.
    Truncated,
    /// A segment type or format the specification reserves (logical format 3, segment type 111, ...).
    Reserved,
    /// A segment zonegate does not accept in a request path (symbolic 0x6X, service id, extended logical).
    Unsupported,
    /// A symbol that is empty or holds a character outside `[A-Za-z0-9_:]`.
    BadSymbol,
    /// The same logical segment (class, instance, attribute, connection point) twice.
    Duplicate,
    /// Logical segments out of order (instance before class, port after an address segment, ...).
    OutOfOrder,
    /// Port 0 (reserved) or an empty link address.
    BadPort,
    /// An electronic key whose format is not 4, or a second key.
    BadKey,
}

/// A path that cannot be read, and where.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PathError {
    pub kind: PathErrorKind,
    /// Offset of the segment in the path.
    pub offset: usize,
}

impl PathError {
    pub const fn name(self) -> &'static str {
        match self.kind {
            PathErrorKind::Truncated => "path_truncated",
            PathErrorKind::Reserved => "path_reserved_segment",
            PathErrorKind::Unsupported => "path_unsupported_segment",
            PathErrorKind::BadSymbol => "path_bad_symbol",
            PathErrorKind::Duplicate => "path_duplicate_segment",
            PathErrorKind::OutOfOrder => "path_out_of_order",
            PathErrorKind::BadPort => "path_bad_port",
            PathErrorKind::BadKey => "path_bad_key",
        }
    }

    /// CIP general status a device answers: 0x04, path segment error.
    pub const fn general_status(self) -> u8 {
        0x04
    }
}

/// One hop of a route: leave by `port`, to the node at `link`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Port {
    pub port: u16,
    /// Link address: one byte (a slot or node number) or an extended address (e.g. an IP as text).
    pub link: Vec<u8>,
}

/// A short list kept inline up to `N` items and on the heap past that: a parsed tag name has a few parts
/// of a few elements each, and an allocation per part would cost more than parsing the path.
#[derive(Clone)]
pub enum InlineVec<T, const N: usize> {
    Inline { len: u8, items: [T; N] },
    Heap(Vec<T>),
}

impl<T: Default, const N: usize> Default for InlineVec<T, N> {
    fn default() -> Self {
        InlineVec::Inline { len: 0, items: std::array::from_fn(|_| T::default()) }
    }
}

impl<T: Default, const N: usize> InlineVec<T, N> {
    pub fn push(&mut self, v: T) {
        match self {
            InlineVec::Inline { len, items } if (*len as usize) < N => {
                items[*len as usize] = v;
                *len += 1;
            }
            InlineVec::Inline { items, .. } => {
                let mut heap = Vec::with_capacity(2 * N);
                heap.extend(items.iter_mut().map(std::mem::take));
                heap.push(v);
                *self = InlineVec::Heap(heap);
            }
            // Growth stays amortised: a hostile path may hold a couple of hundred element segments.
            InlineVec::Heap(heap) => heap.push(v),
        }
    }

    fn last_mut(&mut self) -> Option<&mut T> {
        match self {
            InlineVec::Inline { len, items } => items[..*len as usize].last_mut(),
            InlineVec::Heap(heap) => heap.last_mut(),
        }
    }
}

impl<T, const N: usize> std::ops::Deref for InlineVec<T, N> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        match self {
            InlineVec::Inline { len, items } => &items[..*len as usize],
            InlineVec::Heap(heap) => heap,
        }
    }
}

impl<'a, T, const N: usize> IntoIterator for &'a InlineVec<T, N> {
    type Item = &'a T;
    type IntoIter = std::slice::Iter<'a, T>;
    fn into_iter(self) -> Self::IntoIter {
        self.iter()
    }
}

impl<T: std::fmt::Debug, const N: usize> std::fmt::Debug for InlineVec<T, N> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

/// Equal when the items are, wherever they are kept.
impl<T: PartialEq, const N: usize> PartialEq for InlineVec<T, N> {
    fn eq(&self, o: &Self) -> bool {
        **self == **o
    }
}

impl<T: Eq, const N: usize> Eq for InlineVec<T, N> {}

impl<T: PartialEq, const N: usize> PartialEq<Vec<T>> for InlineVec<T, N> {
    fn eq(&self, o: &Vec<T>) -> bool {
        **self == **o
    }
}

impl<T: Default, const N: usize> From<Vec<T>> for InlineVec<T, N> {
    fn from(v: Vec<T>) -> Self {
        let mut out = Self::default();
        for x in v {
            out.push(x);
        }
        out
    }
}

/// Longest tag name part kept inline (Logix allows 40 characters; most names are far shorter).
const SYMBOL_INLINE: usize = 22;

/// A tag name part's characters (`[A-Za-z0-9_:]`, as the parser accepts them), inline when short. Never
/// grows once read, so a longer one is a boxed slice (two words, which keeps the inline form the size).
#[derive(Clone)]
pub enum Symbol {
    Inline { len: u8, bytes: [u8; SYMBOL_INLINE] },
    Heap(Box<[u8]>),
}

impl Default for Symbol {
    fn default() -> Self {
        Symbol::Inline { len: 0, bytes: [0; SYMBOL_INLINE] }
    }
}

/// Equal when the characters are, wherever they are kept.
impl PartialEq for Symbol {
    fn eq(&self, o: &Self) -> bool {
        self.as_bytes() == o.as_bytes()
    }
}

impl Eq for Symbol {}

impl Symbol {
    pub fn as_bytes(&self) -> &[u8] {
        match self {
            Symbol::Inline { len, bytes } => &bytes[..*len as usize],
            Symbol::Heap(heap) => heap,
        }
    }

    /// The name as text; every byte the parser keeps is ASCII.
    pub fn as_str(&self) -> &str {
        std::str::from_utf8(self.as_bytes()).unwrap_or_default()
    }
}

impl From<&[u8]> for Symbol {
    fn from(s: &[u8]) -> Self {
        if s.len() <= SYMBOL_INLINE {
            let mut bytes = [0u8; SYMBOL_INLINE];
            bytes[..s.len()].copy_from_slice(s);
            Symbol::Inline { len: s.len() as u8, bytes }
        } else {
            Symbol::Heap(s.into())
        }
    }
}

impl From<&str> for Symbol {
    fn from(s: &str) -> Self {
        Symbol::from(s.as_bytes())
    }
}

impl std::fmt::Debug for Symbol {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self.as_str(), f)
    }
}

/// One dot-separated part of a tag name and the array elements that follow it (Logix arrays have up to
/// three dimensions; four fit in the same space).
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct TagPart {
    pub name: Symbol,
    pub elements: InlineVec<u32, 4>,
}

/// A Logix tag name, e.g. `Program:Main.Line1[3,4].Speed`.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct TagName {
    pub parts: InlineVec<TagPart, 3>,
}

impl TagName {
    /// The canonical text: parts joined by `.`, elements as `[i]` or `[i,j]` after their part.
    pub fn text(&self) -> String {
        tag_text(&self.parts[..])
    }
}

/// A tag name's parts, wherever they are kept: a [`TagName`]'s own, or the offsets the decision stage
/// keeps into the message.
pub trait TagParts {
    fn part_count(&self) -> usize;
    /// Part `i`'s name, as on the wire.
    fn name(&self, i: usize) -> &[u8];
    /// Part `i`'s array elements.
    fn elements(&self, i: usize) -> &[u32];
}

impl TagParts for [TagPart] {
    #[inline]
    fn part_count(&self) -> usize {
        self.len()
    }
    #[inline]
    fn name(&self, i: usize) -> &[u8] {
        self[i].name.as_bytes()
    }
    #[inline]
    fn elements(&self, i: usize) -> &[u32] {
        &self[i].elements
    }
}

/// The canonical text of a tag name ([`TagName::text`]).
pub fn tag_text<T: TagParts + ?Sized>(t: &T) -> String {
    use std::fmt::Write;
    let n = t.part_count();
    // Sized once: the text goes into every decision's audit fields.
    let size: usize = (0..n).map(|i| t.name(i).len() + 1 + 11 * t.elements(i).len()).sum();
    let mut s = String::with_capacity(size + 1);
    for i in 0..n {
        if i > 0 {
            s.push('.');
        }
        // Every byte of a symbol the walker accepts is ASCII.
        s.extend(t.name(i).iter().map(|&c| c as char));
        let elements = t.elements(i);
        if !elements.is_empty() {
            s.push('[');
            for (j, e) in elements.iter().enumerate() {
                if j > 0 {
                    s.push(',');
                }
                let _ = write!(s, "{e}");
            }
            s.push(']');
        }
    }
    s
}

/// Electronic key (logical special segment, format 4), as carried by Forward Open.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ElectronicKey {
    pub vendor: u16,
    pub device_type: u16,
    pub product_code: u16,
    /// Major revision; bit 7 is the compatibility bit.
    pub major: u8,
    pub minor: u8,
}

/// A parsed path.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Path {
    /// Port segments in order (routes through bridges and backplanes).
    pub route: Vec<Port>,
    pub class: Option<u32>,
    pub instance: Option<u32>,
    pub attribute: Option<u32>,
    /// Member id after a logical address (not an array element: those belong to the tag).
    pub member: Option<u32>,
    pub connection_point: Option<u32>,
    pub tag: Option<TagName>,
    pub key: Option<ElectronicKey>,
    pub anomalies: Anomalies,
}

impl Path {
    /// True when the path names neither a class nor a tag (only a route, or nothing).
    pub fn has_target(&self) -> bool {
        self.class.is_some() || self.tag.is_some()
    }
}

/// The characters a symbol may hold, `[A-Za-z0-9_:]`, as a table: one load per character.
const SYMBOL_CHARS: [bool; 256] = {
    let mut t = [false; 256];
    let mut c = 0;
    while c < 256 {
        let b = c as u8;
        t[c] = b.is_ascii_alphanumeric() || b == b'_' || b == b':';
        c += 1;
    }
    t
};

fn symbol_ok(s: &[u8]) -> bool {
    !s.is_empty() && s.iter().all(|&c| SYMBOL_CHARS[c as usize])
}

/// Where the walk is, so ordering rules can be checked.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Stage {
    Route,
    Address,
}

/// Parses a padded EPATH occupying all of `buf` (the caller cut it by the path size in words).
pub fn parse_path(buf: &[u8]) -> Result<Path, PathError> {
    let mut p = Path::default();
    read_path(buf, &mut p)?;
    Ok(p)
}

/// [`parse_path`] into a path the caller holds (a fresh [`Path::default`]): a request's path is read
/// where the request will stay, rather than built here and moved out through every caller.
pub(crate) fn read_path(buf: &[u8], p: &mut Path) -> Result<(), PathError> {
    let a = walk_path(buf, &mut PathBuilder(p))?;
    p.set_address(&a);
    Ok(())
}

impl Path {
    /// Copies what [`walk_path`] read besides the hops and the tag.
    pub(crate) fn set_address(&mut self, a: &Address) {
        let p = self;
        p.class = a.class;
        p.instance = a.instance;
        p.attribute = a.attribute;
        p.member = a.member;
        p.connection_point = a.connection_point;
        p.key = a.key;
        p.anomalies = a.anomalies;
    }
}

/// What a path walk hands on besides its address: the hops and the tag, segment by segment, as slices
/// of the path. [`Path`] keeps owned copies; the decision stage keeps offsets into the message, so that
/// the requests of a Multiple Service Packet are read without a copy or an allocation each.
pub(crate) trait PathSink<'a> {
    /// A port segment: leave by `port` to `link`.
    fn port(&mut self, port: u16, link: &'a [u8]);
    /// An ANSI extended symbol: the next tag name part.
    fn symbol(&mut self, name: &'a [u8]);
    /// An array element of the last symbol.
    fn element(&mut self, index: u32);
}

/// The address of a path, as [`walk_path`] read it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Address {
    pub class: Option<u32>,
    pub instance: Option<u32>,
    pub attribute: Option<u32>,
    pub member: Option<u32>,
    pub connection_point: Option<u32>,
    pub key: Option<ElectronicKey>,
    /// At least one symbol: the path names a tag.
    pub tagged: bool,
    pub anomalies: Anomalies,
}

impl Address {
    /// True when the path names a class or a tag.
    #[inline]
    pub fn has_target(&self) -> bool {
        self.class.is_some() || self.tagged
    }
}

/// Builds a [`Path`]'s route and tag.
pub(crate) struct PathBuilder<'p>(pub(crate) &'p mut Path);

impl<'a> PathSink<'a> for PathBuilder<'_> {
    fn port(&mut self, port: u16, link: &'a [u8]) {
        self.0.route.push(Port { port, link: link.to_vec() });
    }

    fn symbol(&mut self, name: &'a [u8]) {
        self.0
            .tag
            .get_or_insert_with(Default::default)
            .parts
            .push(TagPart { name: Symbol::from(name), elements: InlineVec::default() });
    }

    fn element(&mut self, index: u32) {
        if let Some(last) = self.0.tag.as_mut().and_then(|t| t.parts.last_mut()) {
            last.elements.push(index);
        }
    }
}

/// Walks a padded EPATH occupying all of `buf`: every check of the path is here, whoever keeps what
/// it names ([`PathSink`]).
#[inline]
pub(crate) fn walk_path<'a, S: PathSink<'a>>(buf: &'a [u8], sink: &mut S) -> Result<Address, PathError> {
    let mut a = Address::default();
    let mut i = 0usize;
    let mut stage = Stage::Route;
    // Rank of the last class/instance/attribute segment seen: logical addresses go class, instance,
    // attribute (connection point and member may follow the instance).
    let mut rank = 0u8;
    while i < buf.len() {
        let at = i;
        let err = |kind| PathError { kind, offset: at };
        let b = buf[i];
        let need = |n: usize| if buf.len() - at < n { Err(err(PathErrorKind::Truncated)) } else { Ok(()) };
        match b >> 5 {
            0b000 => {
                // Port segment.
                if stage != Stage::Route {
                    return Err(err(PathErrorKind::OutOfOrder));
                }
                let extended = b & 0x10 != 0;
                let mut j = at + 1;
                let mut link_len = 1usize;
                if extended {
                    need(2)?;
                    link_len = buf[j] as usize;
                    j += 1;
                }
                let mut port = (b & 0x0F) as u16;
                if port == 15 {
                    if buf.len() < j + 2 {
                        return Err(err(PathErrorKind::Truncated));
                    }
                    port = le16(buf, j);
                    j += 2;
                }
                if port == 0 || link_len == 0 {
                    return Err(err(PathErrorKind::BadPort));
                }
                if buf.len() < j + link_len {
                    return Err(err(PathErrorKind::Truncated));
                }
                let link = &buf[j..j + link_len];
                j += link_len;
                if (j - at) % 2 == 1 {
                    if j >= buf.len() {
                        return Err(err(PathErrorKind::Truncated));
                    }
                    if buf[j] != 0 {
                        a.anomalies |= Anomalies::NONZERO_PAD;
                    }
                    j += 1;
                }
                sink.port(port, link);
                i = j;
            }
            0b001 => {
                // Logical segment.
                let ty = (b >> 2) & 0x07;
                let fmt = b & 0x03;
                if ty == 5 {
                    // Electronic key: checks the node it is addressed to, so it may sit before or after
                    // the hop that reaches it; it is not an address and does not end the route.
                    if fmt != 0 {
                        return Err(err(PathErrorKind::Reserved));
                    }
                    need(2)?;
                    if buf[at + 1] != 4 {
                        return Err(err(PathErrorKind::BadKey));
                    }
                    need(10)?;
                    if a.key.is_some() {
                        return Err(err(PathErrorKind::BadKey));
                    }
                    let k = &buf[at + 2..at + 10];
                    a.key = Some(ElectronicKey {
                        vendor: le16(k, 0),
                        device_type: le16(k, 2),
                        product_code: le16(k, 4),
                        major: k[6],
                        minor: k[7],
                    });
                    i = at + 10;
                    continue;
                }
                if ty == 6 || ty == 7 {
                    return Err(err(PathErrorKind::Unsupported));
                }
                stage = Stage::Address;
                let (value, len) = match fmt {
                    0 => {
                        need(2)?;
                        (buf[at + 1] as u32, 2)
                    }
                    1 => {
                        need(4)?;
                        if buf[at + 1] != 0 {
                            a.anomalies |= Anomalies::NONZERO_PAD;
                        }
                        (le16(buf, at + 2) as u32, 4)
                    }
                    2 => {
                        need(6)?;
                        if buf[at + 1] != 0 {
                            a.anomalies |= Anomalies::NONZERO_PAD;
                        }
                        (le32(buf, at + 2), 6)
                    }
                    _ => return Err(err(PathErrorKind::Reserved)),
                };
                i = at + len;
                match ty {
                    0 | 1 | 4 => {
                        let orphan = a.tagged && a.class.is_none();
                        let after_member = a.member.is_some();
                        let (slot, r) = match ty {
                            0 => (&mut a.class, 1),
                            1 => (&mut a.instance, 2),
                            _ => (&mut a.attribute, 3),
                        };
                        if slot.is_some() {
                            return Err(err(PathErrorKind::Duplicate));
                        }
                        if r <= rank || (r > 1 && orphan) || after_member {
                            return Err(err(PathErrorKind::OutOfOrder));
                        }
                        *slot = Some(value);
                        rank = r;
                    }
                    3 => {
                        if a.connection_point.is_some() {
                            return Err(err(PathErrorKind::Duplicate));
                        }
                        a.connection_point = Some(value);
                    }
                    _ => {
                        // Member: an array element right after a symbol, else a member id.
                        if a.tagged && a.member.is_none() && rank == 0 {
                            sink.element(value);
                            continue;
                        }
                        if a.member.is_some() {
                            return Err(err(PathErrorKind::Duplicate));
                        }
                        a.member = Some(value);
                    }
                }
            }
            0b010 => {
                // Network segment: carried by Forward Open, never an address.
                a.anomalies |= Anomalies::NETWORK_SEGMENT;
                if b & 0x10 == 0 {
                    need(2)?;
                    i = at + 2;
                } else {
                    need(2)?;
                    let words = buf[at + 1] as usize;
                    need(2 + 2 * words)?;
                    i = at + 2 + 2 * words;
                }
            }
            0b100 => match b {
                0x80 => {
                    // Simple data segment.
                    need(2)?;
                    let words = buf[at + 1] as usize;
                    need(2 + 2 * words)?;
                    a.anomalies |= Anomalies::DATA_SEGMENT;
                    i = at + 2 + 2 * words;
                }
                0x91 => {
                    // ANSI extended symbol: a tag name part.
                    stage = Stage::Address;
                    need(2)?;
                    let n = buf[at + 1] as usize;
                    let padded = 2 + n + (n % 2);
                    need(padded)?;
                    let s = &buf[at + 2..at + 2 + n];
                    if !symbol_ok(s) {
                        return Err(err(PathErrorKind::BadSymbol));
                    }
                    if n % 2 == 1 && buf[at + 2 + n] != 0 {
                        a.anomalies |= Anomalies::NONZERO_PAD;
                    }
                    if rank > 0 || a.member.is_some() {
                        // A symbol after a logical address: instance addressing mixed with names.
                        a.anomalies |= Anomalies::MIXED_ADDRESSING;
                    }
                    a.tagged = true;
                    sink.symbol(s);
                    i = at + padded;
                }
                _ => return Err(err(PathErrorKind::Unsupported)),
            },
            0b011 => return Err(err(PathErrorKind::Unsupported)),
            _ => return Err(err(PathErrorKind::Reserved)),
        }
    }
    if a.tagged && a.class.is_some() {
        a.anomalies |= Anomalies::MIXED_ADDRESSING;
    }
    Ok(a)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn symbol(out: &mut Vec<u8>, name: &str) {
        out.extend_from_slice(&[0x91, name.len() as u8]);
        out.extend_from_slice(name.as_bytes());
        if name.len() % 2 == 1 {
            out.push(0);
        }
    }

    /// Names, parts and elements past what is kept inline read the same as short ones.
    #[test]
    fn long_names_many_parts_and_many_elements_spill_to_the_heap_unchanged() {
        let long = "Program:A_Very_Long_Program_Name_40_chars";
        let mut bytes = Vec::new();
        symbol(&mut bytes, long);
        for e in 0..200u32 {
            bytes.extend_from_slice(&[0x28, e as u8]);
        }
        for name in ["B", "C", "D", "E"] {
            symbol(&mut bytes, name);
        }
        let p = parse_path(&bytes).unwrap();
        let tag = p.tag.as_ref().unwrap();
        assert_eq!(tag.parts.len(), 5);
        assert_eq!(tag.parts[0].name.as_str(), long);
        assert_eq!(tag.parts[0].elements, (0..200).collect::<Vec<u32>>());
        let names: Vec<&str> = tag.parts.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, [long, "B", "C", "D", "E"]);
        let elements: String = (0..200).map(|e: u32| e.to_string()).collect::<Vec<_>>().join(",");
        assert_eq!(tag.text(), format!("{long}[{elements}].B.C.D.E"));
    }

    #[test]
    fn inline_and_heap_forms_compare_by_content() {
        let short: InlineVec<u32, 4> = vec![1, 2].into();
        let mut spilled: InlineVec<u32, 4> = vec![1, 2, 3, 4, 5].into();
        assert!(matches!(spilled, InlineVec::Heap(_)));
        assert_ne!(short, spilled);
        let heap_short = InlineVec::<u32, 4>::Heap(vec![1, 2]);
        assert_eq!(short, heap_short);
        spilled.push(6);
        assert_eq!(spilled, vec![1, 2, 3, 4, 5, 6]);
        assert_eq!(Symbol::from("x".repeat(30).as_str()), Symbol::Heap(b"x".repeat(30).into()));
        assert_eq!(Symbol::from("Abc"), Symbol::Heap(b"Abc".to_vec().into()));
        assert_eq!(format!("{:?}", Symbol::from("Abc")), "\"Abc\"");
    }
}
