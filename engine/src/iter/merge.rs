//! Merging many sorted cursors into one.

use super::EntryIter;
use crate::key;
use crate::Result;
use std::cmp::Ordering;

/// Yields the entries of all children in one sorted stream. On equal keys
/// (which only happens for the same entry stored twice during a move) the
/// child listed first wins its turn first.
pub(crate) struct MergeIter {
    children: Vec<Box<dyn EntryIter>>,
    reverse: bool,
    current: Option<usize>,
}

impl MergeIter {
    pub(crate) fn new(children: Vec<Box<dyn EntryIter>>, reverse: bool) -> Self {
        MergeIter {
            children,
            reverse,
            current: None,
        }
    }

    /// Picks the child with the smallest key (largest when reverse). A
    /// linear scan: a merge has a handful of children (memtables, level-0
    /// tables, one cursor per deeper level).
    fn pick(&mut self) {
        let mut best: Option<(usize, &[u8])> = None;
        for (index, child) in self.children.iter().enumerate() {
            let Some((candidate, _)) = child.current() else {
                continue;
            };
            let better = match best {
                None => true,
                Some((_, best_key)) => {
                    let order = key::compare(candidate, best_key);
                    if self.reverse {
                        order == Ordering::Greater
                    } else {
                        order == Ordering::Less
                    }
                }
            };
            if better {
                best = Some((index, candidate));
            }
        }
        self.current = best.map(|(index, _)| index);
    }
}

impl EntryIter for MergeIter {
    fn seek(&mut self, target: Option<&[u8]>) -> Result<()> {
        for child in &mut self.children {
            child.seek(target)?;
        }
        self.pick();
        Ok(())
    }

    fn advance(&mut self) -> Result<()> {
        if let Some(index) = self.current {
            self.children[index].advance()?;
            self.pick();
        }
        Ok(())
    }

    fn current(&self) -> Option<(&[u8], &[u8])> {
        self.children[self.current?].current()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::key::ValueKind;

    /// A cursor over a sorted vector, for tests of the combinators.
    pub(crate) struct VecIter {
        entries: Vec<(Vec<u8>, Vec<u8>)>,
        reverse: bool,
        position: Option<usize>,
    }

    impl VecIter {
        pub(crate) fn new(mut entries: Vec<(Vec<u8>, Vec<u8>)>, reverse: bool) -> Self {
            entries.sort_by(|a, b| key::compare(&a.0, &b.0));
            VecIter {
                entries,
                reverse,
                position: None,
            }
        }
    }

    impl EntryIter for VecIter {
        fn seek(&mut self, target: Option<&[u8]>) -> Result<()> {
            let n = self.entries.len();
            self.position = match (target, self.reverse) {
                (None, false) => (n > 0).then_some(0),
                (None, true) => n.checked_sub(1),
                (Some(t), false) => {
                    let i = self
                        .entries
                        .partition_point(|e| key::compare(&e.0, t) == Ordering::Less);
                    (i < n).then_some(i)
                }
                (Some(t), true) => {
                    let i = self
                        .entries
                        .partition_point(|e| key::compare(&e.0, t) != Ordering::Greater);
                    i.checked_sub(1)
                }
            };
            Ok(())
        }
        fn advance(&mut self) -> Result<()> {
            self.position = match (self.position, self.reverse) {
                (Some(p), false) => (p + 1 < self.entries.len()).then_some(p + 1),
                (Some(p), true) => p.checked_sub(1),
                (None, _) => None,
            };
            Ok(())
        }
        fn current(&self) -> Option<(&[u8], &[u8])> {
            self.position
                .map(|p| (&self.entries[p].0[..], &self.entries[p].1[..]))
        }
    }

    #[test]
    fn merges_in_both_directions() {
        let make = |keys: &[(&[u8], u64)], reverse| -> Box<dyn EntryIter> {
            Box::new(VecIter::new(
                keys.iter()
                    .map(|(k, s)| (key::encode(k, *s, ValueKind::Put), vec![]))
                    .collect(),
                reverse,
            ))
        };
        for reverse in [false, true] {
            let mut merge = MergeIter::new(
                vec![
                    make(&[(b"a", 1), (b"c", 3)], reverse),
                    make(&[(b"b", 2), (b"c", 4)], reverse),
                ],
                reverse,
            );
            merge.seek(None).unwrap();
            let mut seen = Vec::new();
            while let Some((k, _)) = merge.current() {
                seen.push((key::user_key(k).to_vec(), key::sequence(k)));
                merge.advance().unwrap();
            }
            let mut expected = vec![
                (b"a".to_vec(), 1),
                (b"b".to_vec(), 2),
                (b"c".to_vec(), 4),
                (b"c".to_vec(), 3),
            ];
            if reverse {
                expected.reverse();
            }
            assert_eq!(seen, expected);
        }
    }
}
