//! The user-facing iterator: a consistent, ordered view of live keys.

use super::SuperVersion;
use crate::iter::merge::MergeIter;
use crate::iter::EntryIter;
use crate::key::{self, SeqNo, ValueKind, MAX_SEQUENCE};
use crate::memtable::MemtableIter;
use crate::Result;
use std::ops::Bound;
use std::sync::Arc;

/// Iterates over the live keys of a range as of one sequence number, in key
/// order, forwards ([`Iterator`]) or backwards ([`DoubleEndedIterator`]),
/// or from both ends at once.
///
/// The iterator owns what it reads (memtables and table files stay alive
/// while it exists), so it may outlive the borrow of the [`Db`](crate::Db)
/// and even the database's [`close`](crate::Db::close). It never sees
/// writes made after it was created.
///
/// ```
/// # let dir = tempfile::tempdir().unwrap();
/// let db = ferry_engine::Db::open(dir.path(), Default::default())?;
/// for key in ["a", "b", "c", "d"] {
///     db.put(key, "x")?;
/// }
/// let keys: Vec<Vec<u8>> = db.range("b"..="c").map(|e| e.map(|(k, _)| k)).collect::<Result<_, _>>()?;
/// assert_eq!(keys, vec![b"b".to_vec(), b"c".to_vec()]);
/// let last = db.iter().next_back().transpose()?;
/// assert_eq!(last.map(|(k, _)| k), Some(b"d".to_vec()));
/// # Ok::<(), ferry_engine::Error>(())
/// ```
pub struct DbIterator {
    source: Arc<SuperVersion>,
    sequence: SeqNo,
    start: Bound<Vec<u8>>,
    end: Bound<Vec<u8>>,
    forward: Option<MergeIter>,
    backward: Option<MergeIter>,
    /// Last key returned from the front, and from the back: the two ends
    /// stop where they meet.
    front_key: Option<Vec<u8>>,
    back_key: Option<Vec<u8>>,
    failed: bool,
}

impl DbIterator {
    pub(crate) fn new(
        source: Arc<SuperVersion>,
        sequence: SeqNo,
        start: Bound<Vec<u8>>,
        end: Bound<Vec<u8>>,
    ) -> Self {
        DbIterator {
            source,
            sequence,
            start,
            end,
            forward: None,
            backward: None,
            front_key: None,
            back_key: None,
            failed: false,
        }
    }

    fn merge(&self, reverse: bool) -> MergeIter {
        let mut children: Vec<Box<dyn EntryIter>> = Vec::new();
        children.push(Box::new(MemtableIter::new(
            self.source.mem.clone(),
            reverse,
        )));
        for memtable in &self.source.imm {
            children.push(Box::new(MemtableIter::new(memtable.clone(), reverse)));
        }
        children.extend(self.source.version.iterators(reverse));
        MergeIter::new(children, reverse)
    }

    fn before_end(&self, user_key: &[u8]) -> bool {
        let in_range = match &self.end {
            Bound::Unbounded => true,
            Bound::Included(end) => user_key <= end.as_slice(),
            Bound::Excluded(end) => user_key < end.as_slice(),
        };
        in_range && self.back_key.as_deref().is_none_or(|back| user_key < back)
    }

    fn after_start(&self, user_key: &[u8]) -> bool {
        let in_range = match &self.start {
            Bound::Unbounded => true,
            Bound::Included(start) => user_key >= start.as_slice(),
            Bound::Excluded(start) => user_key > start.as_slice(),
        };
        in_range
            && self
                .front_key
                .as_deref()
                .is_none_or(|front| user_key > front)
    }

    fn next_forward(&mut self) -> Result<Option<Entry>> {
        if self.forward.is_none() {
            let mut merge = self.merge(false);
            match &self.start {
                Bound::Unbounded => merge.seek(None)?,
                Bound::Included(start) => merge.seek(Some(&key::seek_key(start, MAX_SEQUENCE)))?,
                Bound::Excluded(start) => merge.seek(Some(&key::last_key_of(start)))?,
            }
            self.forward = Some(merge);
        }
        let Some(mut merge) = self.forward.take() else {
            return Ok(None);
        };
        let result = self.scan_forward(&mut merge);
        self.forward = Some(merge);
        result
    }

    fn scan_forward(&mut self, merge: &mut MergeIter) -> Result<Option<Entry>> {
        loop {
            let Some((internal, value)) = merge.current() else {
                return Ok(None);
            };
            let user_key = key::user_key(internal).to_vec();
            if !self.before_end(&user_key) {
                return Ok(None);
            }
            if key::sequence(internal) > self.sequence {
                merge.advance()?;
                continue;
            }
            // The first visible version is the newest; skip the older ones.
            let sequence = key::sequence(internal);
            let value = (key::kind(internal) == Some(ValueKind::Put)).then(|| value.to_vec());
            merge.advance()?;
            while let Some((internal, _)) = merge.current() {
                if key::user_key(internal) != user_key.as_slice() {
                    break;
                }
                merge.advance()?;
            }
            if let Some(value) = value {
                self.front_key = Some(user_key.clone());
                return Ok(Some((user_key, value, sequence)));
            }
        }
    }

    fn next_backward(&mut self) -> Result<Option<Entry>> {
        if self.backward.is_none() {
            let mut merge = self.merge(true);
            match &self.end {
                Bound::Unbounded => merge.seek(None)?,
                Bound::Included(end) => merge.seek(Some(&key::last_key_of(end)))?,
                Bound::Excluded(end) => merge.seek(Some(&key::seek_key(end, MAX_SEQUENCE)))?,
            }
            self.backward = Some(merge);
        }
        let Some(mut merge) = self.backward.take() else {
            return Ok(None);
        };
        let result = self.scan_backward(&mut merge);
        self.backward = Some(merge);
        result
    }

    fn scan_backward(&mut self, merge: &mut MergeIter) -> Result<Option<Entry>> {
        loop {
            let Some((internal, _)) = merge.current() else {
                return Ok(None);
            };
            let user_key = key::user_key(internal).to_vec();
            if !self.after_start(&user_key) {
                return Ok(None);
            }
            // Reverse order meets a key's versions oldest first: the last
            // visible one is the newest a reader at `sequence` sees.
            let mut newest: Option<(Option<Vec<u8>>, SeqNo)> = None;
            while let Some((internal, value)) = merge.current() {
                if key::user_key(internal) != user_key.as_slice() {
                    break;
                }
                if key::sequence(internal) <= self.sequence {
                    let value =
                        (key::kind(internal) == Some(ValueKind::Put)).then(|| value.to_vec());
                    newest = Some((value, key::sequence(internal)));
                }
                merge.advance()?;
            }
            if let Some((Some(value), sequence)) = newest {
                self.back_key = Some(user_key.clone());
                return Ok(Some((user_key, value, sequence)));
            }
        }
    }
}

/// A key, its value and the sequence of the write that set it.
type Entry = (Vec<u8>, Vec<u8>, SeqNo);

impl DbIterator {
    /// The next entry from the front with the sequence number of the write
    /// that produced its value (its revision).
    ///
    /// ```
    /// # let dir = tempfile::tempdir().unwrap();
    /// let db = ferry_engine::Db::open(dir.path(), Default::default())?;
    /// let written = db.put(b"k", b"v")?;
    /// let (key, _, sequence) = db.iter().next_with_sequence().unwrap()?;
    /// assert_eq!((key.as_slice(), sequence), (&b"k"[..], written));
    /// # Ok::<(), ferry_engine::Error>(())
    /// ```
    pub fn next_with_sequence(&mut self) -> Option<Result<Entry>> {
        if self.failed {
            return None;
        }
        let result = self.next_forward();
        self.failed = result.is_err();
        result.transpose()
    }
}

impl Iterator for DbIterator {
    type Item = Result<(Vec<u8>, Vec<u8>)>;

    fn next(&mut self) -> Option<Self::Item> {
        self.next_with_sequence().map(|r| r.map(|(k, v, _)| (k, v)))
    }
}

impl DoubleEndedIterator for DbIterator {
    fn next_back(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        let result = self.next_backward();
        self.failed = result.is_err();
        result.transpose().map(|r| r.map(|(k, v, _)| (k, v)))
    }
}

/// The smallest key greater than every key starting with `prefix`, if any
/// (`None`: the prefix is empty or all `0xff`, so no key is past it). The
/// one implementation: the server's ranges, watches and permissions use it.
pub fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < u8::MAX {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::prefix_end;

    #[test]
    fn prefix_end_increments_last_byte() {
        assert_eq!(prefix_end(b"ab"), Some(b"ac".to_vec()));
        assert_eq!(prefix_end(b"a\xff"), Some(b"b".to_vec()));
        assert_eq!(prefix_end(b"\xff\xff"), None);
        assert_eq!(prefix_end(b""), None);
    }
}
