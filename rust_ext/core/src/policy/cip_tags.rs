//! Tag-name patterns (docs/cip-engine.md section 3): compiled from the IR, matched against the tag a
//! request names, element count included.
//!
//! ```text
//!  pattern  Line1.Motor[0..3].*        parts: "line1"  "motor" [0..3]  "*"
//!  tag      Line1.Motor[2].Speed[4]    parts: "line1"  "motor" [2]     "speed" [4]
//! ```
//!
//! A tag matches when it has at least as many parts as the pattern and each pattern part matches the
//! tag part in its place. Extra tag parts are members of a structure allowed whole, or what a trailing
//! `*` covers (the two read the same: `*` matches one part, and members after it are admitted). Names
//! compare ASCII case-insensitively: the pattern is lower-cased here, and compared without copying the
//! request's name.

use super::cip::TagPattern;
use super::compile::IrError;
use crate::enip::TagParts;

/// One compiled pattern part.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct PartPattern {
    /// Lower-cased name; `None` for `*`.
    name: Option<Box<str>>,
    /// One inclusive range per dimension; `None`: any elements or none.
    elements: Option<Box<[(u32, u32)]>>,
}

/// A compiled tag pattern.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Pattern {
    parts: Box<[PartPattern]>,
}

/// ASCII case-insensitive equality over the tag-name alphabet `[A-Za-z0-9_:]`, which both sides are
/// held to (the parser refuses other symbols, `compile` other pattern names). Setting bit 5 folds
/// upper to lower case and leaves digits and `:` as they are; `_` becomes 0x7F on both sides, and no
/// other character of the alphabet does, so the fold is exact.
#[inline]
fn same_name(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x | 0x20 == y | 0x20)
}

fn invalid(path: String, message: impl Into<String>) -> IrError {
    IrError::Invalid { path, message: message.into() }
}

impl Pattern {
    pub(crate) fn compile(path: &str, t: &TagPattern) -> Result<Pattern, IrError> {
        if t.parts.is_empty() {
            return Err(invalid(format!("{path}.parts"), "a tag pattern has at least one part"));
        }
        let mut parts = Vec::with_capacity(t.parts.len());
        for (i, p) in t.parts.iter().enumerate() {
            let at = format!("{path}.parts[{i}]");
            let name = if p.name == "*" {
                if p.elements.is_some() {
                    return Err(invalid(at, "a `*` part takes no elements"));
                }
                None
            } else {
                let ok =
                    !p.name.is_empty() && p.name.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'_' || c == b':');
                if !ok {
                    return Err(invalid(
                        format!("{at}.name"),
                        format!("{:?} is not a tag name part (letters, digits, `_`, `:`, or `*`)", p.name),
                    ));
                }
                Some(p.name.to_ascii_lowercase().into_boxed_str())
            };
            let elements = match &p.elements {
                None => None,
                Some(dims) if dims.is_empty() => {
                    return Err(invalid(format!("{at}.elements"), "at least one range per dimension (null: any)"))
                }
                Some(dims) => {
                    let mut out = Vec::with_capacity(dims.len());
                    for (k, [lo, hi]) in dims.iter().copied().enumerate() {
                        let max = u32::MAX as i64;
                        if !(0..=max).contains(&lo) || !(0..=max).contains(&hi) {
                            return Err(invalid(
                                format!("{at}.elements[{k}]"),
                                format!("range [{lo}, {hi}] is outside 0..={max}"),
                            ));
                        }
                        if lo > hi {
                            return Err(invalid(
                                format!("{at}.elements[{k}]"),
                                format!("range [{lo}, {hi}] is reversed"),
                            ));
                        }
                        out.push((lo as u32, hi as u32));
                    }
                    Some(out.into_boxed_slice())
                }
            };
            parts.push(PartPattern { name, elements });
        }
        Ok(Pattern { parts: parts.into_boxed_slice() })
    }

    /// The first part's lower-cased name; `None` when it is `*`.
    pub(crate) fn first_name(&self) -> Option<&str> {
        self.parts[0].name.as_deref()
    }

    /// True when `tag` matches (its names in any case). `count` is the element count of a Read or
    /// Write Tag (Fragmented) request, `None` for other services.
    #[inline]
    pub(crate) fn matches<T: TagParts + ?Sized>(&self, tag: &T, count: Option<u16>) -> bool {
        let m = self.parts.len();
        let n_parts = tag.part_count();
        if n_parts < m {
            return false;
        }
        for (i, p) in self.parts.iter().enumerate() {
            if p.name.as_deref().is_some_and(|n| !same_name(n.as_bytes(), tag.name(i))) {
                return false;
            }
            if let Some(ranges) = &p.elements {
                let elements = tag.elements(i);
                if ranges.len() != elements.len()
                    || !ranges.iter().zip(elements).all(|((lo, hi), e)| lo <= e && e <= hi)
                {
                    return false;
                }
            }
        }
        // The count runs from the last part that has elements; only a bracketed pattern part bounds it.
        let Some(n) = count else { return true };
        let Some(k) = (0..n_parts).rev().find(|&i| !tag.elements(i).is_empty()) else { return true };
        let Some(ranges) = self.parts.get(k).and_then(|p| p.elements.as_deref()) else { return true };
        if ranges.len() > 1 {
            return n <= 1;
        }
        let last = tag.elements(k)[0] as u64 + (n as u64).saturating_sub(1);
        last <= ranges[0].1 as u64
    }
}

#[cfg(test)]
mod tests {
    use super::same_name;

    #[test]
    fn the_fold_is_exact_over_the_tag_name_alphabet() {
        let alphabet: Vec<u8> = (b'a'..=b'z').chain(b'A'..=b'Z').chain(b'0'..=b'9').chain([b'_', b':']).collect();
        for &x in &alphabet {
            for &y in &alphabet {
                assert_eq!(same_name(&[x], &[y]), x.eq_ignore_ascii_case(&y), "{} {}", x as char, y as char);
            }
        }
        assert!(same_name(b"Program:Main_1", b"program:MAIN_1"));
        assert!(!same_name(b"Line1", b"Line1x"));
    }
}
