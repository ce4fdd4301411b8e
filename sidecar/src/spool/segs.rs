//! The segments holding a live message's records, kept inline.
//!
//! A message's records are almost always in one segment, two when it straddles a rollover or
//! was retried later. A `BTreeSet` allocated a 112-byte node for each queued message; two
//! inline slots cost nothing more than the entry itself (docs/benchmarks.md, "Memory per
//! queued message").

use smallvec::SmallVec;

/// A small set of segment numbers, in the order first seen.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Segs(SmallVec<[u64; 2]>);

impl Segs {
    /// Adds `seg`; false if it was there already.
    pub fn insert(&mut self, seg: u64) -> bool {
        if self.contains(&seg) {
            return false;
        }
        self.0.push(seg);
        true
    }

    /// Whether `seg` is in the set.
    pub fn contains(&self, seg: &u64) -> bool {
        self.0.contains(seg)
    }

    /// Each segment once.
    pub fn iter(&self) -> impl Iterator<Item = &u64> {
        self.0.iter()
    }
}

impl<'a> IntoIterator for &'a Segs {
    type Item = &'a u64;
    type IntoIter = std::slice::Iter<'a, u64>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

impl IntoIterator for Segs {
    type Item = u64;
    type IntoIter = smallvec::IntoIter<[u64; 2]>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.into_iter()
    }
}

impl FromIterator<u64> for Segs {
    fn from_iter<I: IntoIterator<Item = u64>>(iter: I) -> Self {
        let mut segs = Segs::default();
        for s in iter {
            segs.insert(s);
        }
        segs
    }
}

#[cfg(test)]
mod tests {
    use super::Segs;

    #[test]
    fn each_segment_is_held_once_inline_or_not() {
        let mut segs = Segs::default();
        assert!(segs.insert(7));
        assert!(!segs.insert(7), "a segment is pinned once");
        assert!(segs.insert(9));
        assert!(
            segs.0.inline_size() == 2 && !segs.0.spilled(),
            "two segments stay inline"
        );
        assert!(segs.insert(3));
        assert!(!segs.insert(9));
        assert_eq!(segs.iter().copied().collect::<Vec<_>>(), [7, 9, 3]);
        assert!(segs.contains(&3) && !segs.contains(&4));
        let from: Segs = [5, 5, 6].into_iter().collect();
        assert_eq!(from.into_iter().collect::<Vec<_>>(), [5, 6]);
    }
}
