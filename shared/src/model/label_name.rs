//! A label's name as a label key holds it: one of the core labels without an allocation, any
//! other name on the heap.

use std::borrow::Borrow;
use std::cmp::Ordering;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::ops::Deref;

use super::status::CORE_LABELS;

/// A label name (`MERCHANT_NAME`, `TAX`, or any other string a key carries), compared, ordered
/// and hashed as the string it spells, so it behaves as the `String` it replaces.
///
/// Why not a `String`: every label key carries one, and a batch clones label keys millions of
/// times (its results, journal rows, status changes and result rows), nearly always with one of
/// the 22 core label names: those are held as an index into [`CORE_LABELS`], so creating,
/// cloning and dropping them allocates nothing. Any other name (a free string a table may
/// hold, or a test's) is kept as written.
#[derive(Clone)]
pub struct LabelName(Repr);

#[derive(Clone)]
enum Repr {
    /// Index into [`CORE_LABELS`].
    Core(u8),
    Other(Box<str>),
}

/// The index of a core label name (a test checks it agrees with [`CORE_LABELS`]).
fn core_index(s: &str) -> Option<u8> {
    core_index_of_bytes(s.as_bytes())
}

/// [`core_index`] of bytes: the core labels differ in (length, first byte, last byte), so a
/// `match` on those picks the one candidate, and one comparison confirms it (a `match` on
/// the names themselves compares with every name of the same length).
fn core_index_of_bytes(s: &[u8]) -> Option<u8> {
    let i: u8 = match (s.len(), *s.first()?, *s.last()?) {
        (13, b'M', b'E') => 0,
        (11, b'S', b'S') => 1,
        (12, b'P', b'R') => 2,
        (7, b'W', b'E') => 3,
        (10, b'L', b'D') => 4,
        (12, b'A', b'E') => 5,
        (4, b'D', b'E') => 6,
        (4, b'T', b'E') => 7,
        (14, b'P', b'D') => 8,
        (6, b'C', b'N') => 9,
        (8, b'D', b'T') => 10,
        (12, b'P', b'E') => 11,
        (8, b'Q', b'Y') => 12,
        (10, b'U', b'E') => 13,
        (10, b'L', b'L') => 14,
        (8, b'S', b'L') => 15,
        (3, b'T', b'X') => 16,
        (3, b'T', b'P') => 17,
        (11, b'G', b'L') => 18,
        (6, b'C', b'E') => 19,
        (9, b'C', b'K') => 20,
        (6, b'R', b'D') => 21,
        _ => return None,
    };
    let name = CORE_LABELS.get(usize::from(i))?.as_bytes();
    same_bytes(name, s).then_some(i)
}

/// `a == b` for short byte strings (names, tags: up to 24 bytes), by a few overlapping word
/// loads each rather than a `memcmp` call (this runs several times per result id of a file).
#[inline]
pub(crate) fn same_bytes(a: &[u8], b: &[u8]) -> bool {
    // As integers: arrays of bytes compare with `memcmp` too.
    fn word<const N: usize>(s: &[u8]) -> u64 {
        let mut w = [0u8; 8];
        w[..N].copy_from_slice(&s[..N]);
        u64::from_ne_bytes(w)
    }
    let n = a.len();
    if n != b.len() {
        return false;
    }
    // Differences or-ed together, not a chain of `==`: the compiler turns such a chain back
    // into a `memcmp` call.
    let diff = |at: usize, n: usize| -> u64 {
        match n {
            8 => word::<8>(&a[at..]) ^ word::<8>(&b[at..]),
            _ => word::<4>(&a[at..]) ^ word::<4>(&b[at..]),
        }
    };
    match n {
        17..=24 => diff(0, 8) | diff(8, 8) | diff(n - 8, 8) == 0,
        8..=16 => diff(0, 8) | diff(n - 8, 8) == 0,
        4..=7 => diff(0, 4) | diff(n - 4, 4) == 0,
        _ => a.iter().zip(b).fold(0, |d, (x, y)| d | (x ^ y)) == 0,
    }
}

/// Whether `a` sorts before `b` as strings do (byte by byte), at compile time.
const fn str_less(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    let mut i = 0;
    while i < a.len() && i < b.len() {
        if a[i] != b[i] {
            return a[i] < b[i];
        }
        i += 1;
    }
    a.len() < b.len()
}

/// Each core label's position among the core labels in string order: two core labels are
/// ordered by these without comparing their strings (label keys are compared millions of
/// times while a batch is planned).
const CORE_RANK: [u8; CORE_LABELS.len()] = {
    let mut rank = [0u8; CORE_LABELS.len()];
    let mut i = 0;
    while i < CORE_LABELS.len() {
        let mut j = 0;
        while j < CORE_LABELS.len() {
            if str_less(CORE_LABELS[j], CORE_LABELS[i]) {
                rank[i] += 1;
            }
            j += 1;
        }
        i += 1;
    }
    rank
};

impl LabelName {
    pub fn new(s: &str) -> Self {
        match core_index(s) {
            Some(i) => LabelName(Repr::Core(i)),
            None => LabelName(Repr::Other(s.into())),
        }
    }

    /// [`new`](Self::new) of the bytes of a name read from a file: a core label is found
    /// without a UTF-8 check first; `None` when the bytes are not UTF-8.
    pub fn from_bytes(b: &[u8]) -> Option<Self> {
        match core_index_of_bytes(b) {
            Some(i) => Some(LabelName(Repr::Core(i))),
            None => std::str::from_utf8(b)
                .ok()
                .map(|s| LabelName(Repr::Other(s.into()))),
        }
    }

    pub fn as_str(&self) -> &str {
        match &self.0 {
            Repr::Core(i) => CORE_LABELS[usize::from(*i)],
            Repr::Other(s) => s,
        }
    }

    /// The position of this name in [`CORE_LABELS`], when it is a core label.
    pub fn core_index(&self) -> Option<usize> {
        match self.0 {
            Repr::Core(i) => Some(usize::from(i)),
            Repr::Other(_) => None,
        }
    }
}

impl Deref for LabelName {
    type Target = str;

    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl AsRef<str> for LabelName {
    fn as_ref(&self) -> &str {
        self.as_str()
    }
}

impl Borrow<str> for LabelName {
    fn borrow(&self) -> &str {
        self.as_str()
    }
}

impl fmt::Debug for LabelName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl fmt::Display for LabelName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl PartialEq for LabelName {
    fn eq(&self, other: &Self) -> bool {
        match (&self.0, &other.0) {
            (Repr::Core(a), Repr::Core(b)) => a == b,
            _ => self.as_str() == other.as_str(),
        }
    }
}

impl Eq for LabelName {}

impl PartialOrd for LabelName {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for LabelName {
    fn cmp(&self, other: &Self) -> Ordering {
        match (&self.0, &other.0) {
            (Repr::Core(a), Repr::Core(b)) => {
                CORE_RANK[usize::from(*a)].cmp(&CORE_RANK[usize::from(*b)])
            }
            _ => self.as_str().cmp(other.as_str()),
        }
    }
}

impl Hash for LabelName {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.as_str().hash(state);
    }
}

impl PartialEq<str> for LabelName {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl PartialEq<&str> for LabelName {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl PartialEq<String> for LabelName {
    fn eq(&self, other: &String) -> bool {
        self.as_str() == other
    }
}

impl PartialEq<LabelName> for str {
    fn eq(&self, other: &LabelName) -> bool {
        self == other.as_str()
    }
}

impl PartialEq<LabelName> for &str {
    fn eq(&self, other: &LabelName) -> bool {
        *self == other.as_str()
    }
}

impl PartialEq<LabelName> for String {
    fn eq(&self, other: &LabelName) -> bool {
        self == other.as_str()
    }
}

impl From<&str> for LabelName {
    fn from(s: &str) -> Self {
        LabelName::new(s)
    }
}

impl From<&String> for LabelName {
    fn from(s: &String) -> Self {
        LabelName::new(s)
    }
}

impl From<String> for LabelName {
    fn from(s: String) -> Self {
        match core_index(&s) {
            Some(i) => LabelName(Repr::Core(i)),
            None => LabelName(Repr::Other(s.into_boxed_str())),
        }
    }
}

impl From<&LabelName> for LabelName {
    fn from(s: &LabelName) -> Self {
        s.clone()
    }
}

impl From<LabelName> for String {
    fn from(s: LabelName) -> Self {
        match s.0 {
            Repr::Core(_) => s.as_str().to_owned(),
            Repr::Other(b) => b.into_string(),
        }
    }
}

impl From<&LabelName> for String {
    fn from(s: &LabelName) -> Self {
        s.as_str().to_owned()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    #[test]
    fn every_core_label_is_held_without_allocation_and_spelled_back() {
        for (i, name) in CORE_LABELS.iter().enumerate() {
            let l = LabelName::new(name);
            assert_eq!(l.core_index(), Some(i), "{name}");
            assert_eq!(l.as_str(), *name);
            assert_eq!(String::from(l.clone()), *name);
        }
        for name in CORE_LABELS.iter().chain(&["NOT_A_CORE_LABEL", "date", ""]) {
            assert_eq!(
                LabelName::from_bytes(name.as_bytes()).map(|l| l.core_index()),
                Some(LabelName::new(name).core_index()),
                "{name}"
            );
            assert_eq!(LabelName::from_bytes(name.as_bytes()).unwrap(), *name);
        }
        assert_eq!(LabelName::from_bytes(b"\xff"), None);
        for a in [
            "",
            "A",
            "TAX",
            "TAXI",
            "WEBSITE",
            "DISCOUNT",
            "MERCHANT_NAME",
            "x".repeat(20).as_str(),
        ] {
            for b in [
                "",
                "B",
                "TAX",
                "TIX",
                "TAXI",
                "WEBSITX",
                "DISCOUNT",
                "DISCOUNX",
                "MERCHANT_NAME",
                "MERCHANX_NAME",
                "x".repeat(20).as_str(),
            ] {
                assert_eq!(same_bytes(a.as_bytes(), b.as_bytes()), a == b, "{a} {b}");
            }
        }
        // Same length, first and last byte as a core label, yet another name.
        for near in ["DAXE", "TIXE", "TAAX", "MERCHANT_XAME", "REFXND"] {
            assert_eq!(LabelName::new(near).core_index(), None, "{near}");
        }
        let other = LabelName::from("NOT_A_CORE_LABEL".to_owned());
        assert_eq!(other.core_index(), None);
        assert_eq!(other, "NOT_A_CORE_LABEL");
        assert_eq!(LabelName::new("date").core_index(), None, "case matters");
    }

    #[test]
    fn orders_compares_and_hashes_as_its_string() {
        let names = [
            "TAX",
            "A_FREE_NAME",
            "DATE",
            "ZZZ",
            "TIP",
            "",
            "SUBTOTAL",
            "DATE",
        ];
        let ours: Vec<String> = names
            .iter()
            .map(|n| LabelName::new(n))
            .collect::<BTreeSet<_>>()
            .into_iter()
            .map(String::from)
            .collect();
        let strings: Vec<String> = names
            .iter()
            .map(|n| (*n).to_owned())
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        assert_eq!(ours, strings);
        for a in CORE_LABELS.iter().chain(&names) {
            for b in CORE_LABELS.iter().chain(&names) {
                assert_eq!(
                    LabelName::new(a).cmp(&LabelName::new(b)),
                    a.cmp(b),
                    "{a} {b}"
                );
            }
        }
        for a in names {
            for b in names {
                assert_eq!(
                    LabelName::new(a).cmp(&LabelName::new(b)),
                    a.cmp(b),
                    "{a} {b}"
                );
                assert_eq!(LabelName::new(a) == LabelName::new(b), a == b);
            }
        }
        let set: std::collections::HashSet<LabelName> = names.iter().map(|n| (*n).into()).collect();
        assert!(set.contains("TAX") && set.contains("A_FREE_NAME") && !set.contains("X"));
        assert_eq!(format!("{:?}", LabelName::new("TAX")), "\"TAX\"");
    }
}
