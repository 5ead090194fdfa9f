//! The memtable: a concurrent sorted map of the most recent writes.
//!
//! It is a lock-free skip list (crossbeam-skiplist) keyed by internal key, so
//! readers see it while the single write leader inserts. An entry is never
//! changed once inserted; a newer version is a new entry with a higher
//! sequence, which is what gives snapshots their consistent view.

use crate::iter::EntryIter;
use crate::key::{self, InternalKey, SeqNo, ValueKind};
use crate::Result;
use crossbeam_skiplist::SkipMap;
use std::ops::Bound;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

/// Bytes charged per entry on top of key and value: skip-list node overhead.
const ENTRY_OVERHEAD: usize = 64;

/// The result of a point lookup in one source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Lookup {
    Found(Vec<u8>),
    Deleted,
    Absent,
}

pub(crate) struct Memtable {
    map: SkipMap<InternalKey, Box<[u8]>>,
    approximate_bytes: AtomicUsize,
    /// First WAL segment holding this memtable's writes: segments from this
    /// one on must be kept until the memtable is flushed.
    first_wal_segment: u64,
    max_sequence: AtomicU64,
}

impl Memtable {
    pub(crate) fn new(first_wal_segment: u64) -> Self {
        Memtable {
            map: SkipMap::new(),
            approximate_bytes: AtomicUsize::new(0),
            first_wal_segment,
            max_sequence: AtomicU64::new(0),
        }
    }

    /// Inserts one entry. Only the write leader calls this.
    pub(crate) fn insert(&self, user_key: &[u8], sequence: SeqNo, kind: ValueKind, value: &[u8]) {
        let internal = key::encode(user_key, sequence, kind);
        self.approximate_bytes.fetch_add(
            internal.len() + value.len() + ENTRY_OVERHEAD,
            Ordering::Relaxed,
        );
        self.max_sequence.fetch_max(sequence, Ordering::Relaxed);
        self.map
            .insert(InternalKey(internal.into_boxed_slice()), value.into());
    }

    /// The newest version of `user_key` at or below `sequence`.
    pub(crate) fn get(&self, user_key: &[u8], sequence: SeqNo) -> Lookup {
        let target = InternalKey(key::seek_key(user_key, sequence).into_boxed_slice());
        let Some(entry) = self.map.lower_bound(Bound::Included(&target)) else {
            return Lookup::Absent;
        };
        if key::user_key(&entry.key().0) != user_key {
            return Lookup::Absent;
        }
        match key::kind(&entry.key().0) {
            Some(ValueKind::Put) => Lookup::Found(entry.value().to_vec()),
            _ => Lookup::Deleted,
        }
    }

    pub(crate) fn approximate_bytes(&self) -> usize {
        self.approximate_bytes.load(Ordering::Relaxed)
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    pub(crate) fn first_wal_segment(&self) -> u64 {
        self.first_wal_segment
    }

    pub(crate) fn max_sequence(&self) -> SeqNo {
        self.max_sequence.load(Ordering::Relaxed)
    }
}

/// An owned `(internal key, value)` pair.
type OwnedEntry = (Box<[u8]>, Box<[u8]>);

/// A cursor over a memtable, forward or reverse.
pub(crate) struct MemtableIter {
    memtable: Arc<Memtable>,
    reverse: bool,
    current: Option<OwnedEntry>,
}

impl MemtableIter {
    pub(crate) fn new(memtable: Arc<Memtable>, reverse: bool) -> Self {
        MemtableIter {
            memtable,
            reverse,
            current: None,
        }
    }

    fn set(&mut self, entry: Option<crossbeam_skiplist::map::Entry<'_, InternalKey, Box<[u8]>>>) {
        self.current = entry.map(|e| (e.key().0.clone(), e.value().clone()));
    }
}

impl EntryIter for MemtableIter {
    fn seek(&mut self, target: Option<&[u8]>) -> Result<()> {
        let memtable = self.memtable.clone();
        let entry = match (target, self.reverse) {
            (None, false) => memtable.map.front(),
            (None, true) => memtable.map.back(),
            (Some(t), false) => memtable
                .map
                .lower_bound(Bound::Included(&InternalKey(t.into()))),
            (Some(t), true) => memtable
                .map
                .upper_bound(Bound::Included(&InternalKey(t.into()))),
        };
        self.set(entry);
        Ok(())
    }

    fn advance(&mut self) -> Result<()> {
        let Some((current, _)) = self.current.take() else {
            return Ok(());
        };
        let memtable = self.memtable.clone();
        let bound = InternalKey(current);
        let entry = if self.reverse {
            memtable.map.upper_bound(Bound::Excluded(&bound))
        } else {
            memtable.map.lower_bound(Bound::Excluded(&bound))
        };
        self.set(entry);
        Ok(())
    }

    fn current(&self) -> Option<(&[u8], &[u8])> {
        self.current.as_ref().map(|(k, v)| (&k[..], &v[..]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_respect_sequence() {
        let memtable = Memtable::new(1);
        memtable.insert(b"k", 1, ValueKind::Put, b"v1");
        memtable.insert(b"k", 3, ValueKind::Delete, b"");
        memtable.insert(b"k", 5, ValueKind::Put, b"v5");
        assert_eq!(memtable.get(b"k", 0), Lookup::Absent);
        assert_eq!(memtable.get(b"k", 2), Lookup::Found(b"v1".to_vec()));
        assert_eq!(memtable.get(b"k", 4), Lookup::Deleted);
        assert_eq!(memtable.get(b"k", 9), Lookup::Found(b"v5".to_vec()));
        assert_eq!(memtable.get(b"j", 9), Lookup::Absent);
        assert_eq!(memtable.max_sequence(), 5);
    }

    #[test]
    fn iterates_both_ways() {
        let memtable = Arc::new(Memtable::new(1));
        for (i, k) in [b"a", b"b", b"c"].iter().enumerate() {
            memtable.insert(*k, i as u64 + 1, ValueKind::Put, b"");
        }
        for reverse in [false, true] {
            let mut iter = MemtableIter::new(memtable.clone(), reverse);
            iter.seek(None).unwrap();
            let mut keys = Vec::new();
            while let Some((k, _)) = iter.current() {
                keys.push(key::user_key(k).to_vec());
                iter.advance().unwrap();
            }
            let mut expected = vec![b"a".to_vec(), b"b".to_vec(), b"c".to_vec()];
            if reverse {
                expected.reverse();
            }
            assert_eq!(keys, expected);
        }
    }
}
