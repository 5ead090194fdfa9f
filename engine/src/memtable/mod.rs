//! The memtable: a concurrent sorted map of the most recent writes.
//!
//! It is an insert-only [skip list](skiplist) keyed by internal key, its
//! nodes in an [arena], so readers see it while the single write leader
//! inserts. An entry is never changed once inserted; a newer version is a
//! new entry with a higher sequence, which is what gives snapshots their
//! consistent view. The memory is freed whole when the memtable is dropped
//! (after its flush, once no reader holds it).

mod arena;
mod skiplist;

use crate::iter::EntryIter;
use crate::key::{self, SeqNo, ValueKind};
use crate::sst::bloom::{self, AtomicFilter};
use crate::sst::table::PointQuery;
use crate::Result;
use skiplist::{NodeRef, SkipList};
use std::cmp::Ordering;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering as AtomicOrdering};
use std::sync::Arc;

/// Bytes charged per entry on top of key and value: a node's header and
/// links, and the arena's unused tails.
const ENTRY_OVERHEAD: usize = 64;

/// Bytes of the user key kept in [`MemKey::prefix`].
const PREFIX_LEN: usize = 16;

/// A memtable key: the internal key, laid out for the skip list's hot loop.
///
/// A search compares keys at every level, and most of its time went to
/// chasing pointers to keys and to `memcmp` calls. Here the first 16
/// bytes of the user key are one big-endian `u128` (zero-padded), kept in
/// each node's header, so for keys of up to 16 bytes, and for longer keys
/// that differ early, one integer comparison decides.
///
/// Order (the internal-key order of [`key::compare`]): the padded prefix,
/// then the user key's length capped at 16 (a shorter key that matches the
/// padded prefix ends early, so it is smaller), then the bytes after the
/// first 16, then the trailer descending.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct MemKey<'a> {
    prefix: u128,
    len: u32,
    /// User key bytes after the first 16; empty for short keys.
    rest: &'a [u8],
    trailer: u64,
}

impl<'a> MemKey<'a> {
    fn new(user_key: &'a [u8], trailer: u64) -> Self {
        MemKey {
            prefix: key::prefix_u128(user_key),
            rest: user_key.get(PREFIX_LEN..).unwrap_or_default(),
            len: u32::try_from(user_key.len()).expect("a key under 4 GiB"),
            trailer,
        }
    }

    fn user_key_is(&self, user_key: &[u8]) -> bool {
        self.len as usize == user_key.len()
            && self.prefix == key::prefix_u128(user_key)
            && self.rest == user_key.get(PREFIX_LEN..).unwrap_or_default()
    }

    fn kind(&self) -> Option<ValueKind> {
        ValueKind::from_u8(self.trailer as u8)
    }

    /// Writes the encoded internal key into `out`.
    fn encode_into(&self, out: &mut Vec<u8>) {
        out.clear();
        let head = (self.len as usize).min(PREFIX_LEN);
        out.extend_from_slice(&self.prefix.to_be_bytes()[..head]);
        out.extend_from_slice(self.rest);
        out.extend_from_slice(&self.trailer.to_be_bytes());
    }

    fn from_internal(internal: &'a [u8]) -> Self {
        let user_key = key::user_key(internal);
        let mut trailer = [0u8; 8];
        trailer.copy_from_slice(&internal[user_key.len()..]);
        MemKey::new(user_key, u64::from_be_bytes(trailer))
    }
}

impl Ord for MemKey<'_> {
    #[inline]
    fn cmp(&self, other: &Self) -> Ordering {
        self.prefix
            .cmp(&other.prefix)
            .then_with(|| {
                self.len
                    .min(PREFIX_LEN as u32)
                    .cmp(&other.len.min(PREFIX_LEN as u32))
            })
            .then_with(|| self.rest.cmp(other.rest))
            .then_with(|| other.trailer.cmp(&self.trailer))
    }
}

impl PartialOrd for MemKey<'_> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// The result of a point lookup in one source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Lookup {
    Found(Vec<u8>),
    Deleted,
    Absent,
}

pub(crate) struct Memtable {
    list: SkipList,
    /// Every user key inserted, for lookups of keys this memtable lacks.
    filter: AtomicFilter,
    approximate_bytes: AtomicUsize,
    /// First WAL segment holding this memtable's writes: segments from this
    /// one on must be kept until the memtable is flushed.
    first_wal_segment: u64,
    max_sequence: AtomicU64,
}

impl Memtable {
    /// A memtable expected to hold up to `budget_bytes` (the write buffer
    /// size); its key filter gets one bit per 8 bytes of it (10–20 bits per
    /// key for typical entries), at most 8 MiB.
    pub(crate) fn new(first_wal_segment: u64, budget_bytes: usize) -> Self {
        Memtable {
            list: SkipList::new(),
            filter: AtomicFilter::with_bits((budget_bytes / 8).min(64 << 20)),
            approximate_bytes: AtomicUsize::new(0),
            first_wal_segment,
            max_sequence: AtomicU64::new(0),
        }
    }

    /// Inserts one entry.
    #[cfg(test)]
    fn insert(&self, user_key: &[u8], sequence: SeqNo, kind: ValueKind, value: &[u8]) {
        self.insert_all(&[(user_key, sequence, kind, value)]);
    }

    /// Inserts entries: `(user key, sequence, kind, value)`, each sequence
    /// new to this memtable. Only the write leader calls this. A group of
    /// entries is faster than each alone: their places are searched for
    /// together.
    pub(crate) fn insert_all(&self, entries: &[(&[u8], SeqNo, ValueKind, &[u8])]) {
        let mut keyed = Vec::with_capacity(entries.len());
        let (mut charge, mut max_sequence) = (0, 0);
        for &(user_key, sequence, kind, value) in entries {
            debug_assert!(sequence <= key::MAX_SEQUENCE);
            charge += user_key.len() + key::TRAILER_LEN + value.len() + ENTRY_OVERHEAD;
            max_sequence = max_sequence.max(sequence);
            self.filter.insert(bloom::hash(user_key));
            keyed.push((MemKey::new(user_key, (sequence << 8) | kind as u64), value));
        }
        self.list.insert_all(&keyed);
        self.approximate_bytes
            .fetch_add(charge, AtomicOrdering::Relaxed);
        self.max_sequence
            .fetch_max(max_sequence, AtomicOrdering::Relaxed);
    }

    /// The newest version of `user_key` at or below `sequence`.
    pub(crate) fn get(&self, query: &PointQuery) -> Lookup {
        let (user_key, sequence) = (query.user_key, query.sequence);
        if !self.filter.may_contain(query.hash) {
            return Lookup::Absent;
        }
        let target = MemKey::new(user_key, (sequence << 8) | 0xff);
        Self::lookup(self.list.at_or_after(&target), query)
    }

    /// [`Memtable::get`] of each query, their searches run together.
    pub(crate) fn get_all(&self, queries: &[&PointQuery]) -> Vec<Lookup> {
        let mut lookups = vec![Lookup::Absent; queries.len()];
        // Only the keys the filter lets through are searched for.
        let (mut searched, mut targets) = (Vec::new(), Vec::new());
        for (at, query) in queries.iter().enumerate() {
            if self.filter.may_contain(query.hash) {
                searched.push(at);
                targets.push(MemKey::new(query.user_key, (query.sequence << 8) | 0xff));
            }
        }
        for (at, node) in searched
            .into_iter()
            .zip(self.list.at_or_after_all(&targets))
        {
            lookups[at] = Self::lookup(node, queries[at]);
        }
        lookups
    }

    /// The answer to `query` from the first node at or after its target.
    fn lookup(node: Option<NodeRef>, query: &PointQuery) -> Lookup {
        let Some(node) = node else {
            return Lookup::Absent;
        };
        let key = node.key();
        if !key.user_key_is(query.user_key) {
            return Lookup::Absent;
        }
        // A search answers a node at or after its target, so never a
        // version newer than the query's (one not yet published).
        debug_assert!(
            key.trailer >> 8 <= query.sequence,
            "a version newer than the read"
        );
        match key.kind() {
            Some(ValueKind::Put) => Lookup::Found(node.value().to_vec()),
            _ => Lookup::Deleted,
        }
    }

    pub(crate) fn approximate_bytes(&self) -> usize {
        self.approximate_bytes.load(AtomicOrdering::Relaxed)
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    pub(crate) fn first_wal_segment(&self) -> u64 {
        self.first_wal_segment
    }

    pub(crate) fn max_sequence(&self) -> SeqNo {
        self.max_sequence.load(AtomicOrdering::Relaxed)
    }
}

/// A cursor over a memtable, forward or reverse.
pub(crate) struct MemtableIter {
    // Declared before `memtable` so that it is dropped first (see `set`).
    current: Option<NodeRef<'static>>,
    key: Vec<u8>,
    reverse: bool,
    memtable: Arc<Memtable>,
}

impl MemtableIter {
    pub(crate) fn new(memtable: Arc<Memtable>, reverse: bool) -> Self {
        MemtableIter {
            current: None,
            key: Vec::new(),
            reverse,
            memtable,
        }
    }

    fn set(&mut self, node: Option<NodeRef<'_>>) {
        // SAFETY: a node borrows the skip list inside `self.memtable`. The
        // list lives on the heap behind that `Arc`, which this iterator owns
        // and never replaces, and it frees no node before it is dropped; so
        // every node stored here stays valid while the iterator lives, and
        // `current` is declared before `memtable`, so it is dropped first.
        let node: Option<NodeRef<'static>> = unsafe { std::mem::transmute(node) };
        if let Some(node) = &node {
            node.key().encode_into(&mut self.key);
        }
        self.current = node;
    }
}

impl EntryIter for MemtableIter {
    fn seek(&mut self, target: Option<&[u8]>) -> Result<()> {
        let memtable = self.memtable.clone();
        let list = &memtable.list;
        let node = match (target, self.reverse) {
            (None, false) => list.first(),
            (None, true) => list.last(),
            (Some(t), false) => list.at_or_after(&MemKey::from_internal(t)),
            (Some(t), true) => list.at_or_before(&MemKey::from_internal(t)),
        };
        self.set(node);
        Ok(())
    }

    fn advance(&mut self) -> Result<()> {
        let memtable = self.memtable.clone();
        let next = match &self.current {
            Some(node) if self.reverse => memtable.list.before(&node.key()),
            Some(node) => node.next(),
            None => return Ok(()),
        };
        self.set(next);
        Ok(())
    }

    fn current(&self) -> Option<(&[u8], &[u8])> {
        self.current
            .as_ref()
            .map(|node| (&self.key[..], node.value()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_respect_sequence() {
        let memtable = Memtable::new(1, 1 << 20);
        memtable.insert(b"k", 1, ValueKind::Put, b"v1");
        memtable.insert(b"k", 3, ValueKind::Delete, b"");
        memtable.insert(b"k", 5, ValueKind::Put, b"v5");
        assert_eq!(memtable.get(&PointQuery::new(b"k", 0)), Lookup::Absent);
        assert_eq!(
            memtable.get(&PointQuery::new(b"k", 2)),
            Lookup::Found(b"v1".to_vec())
        );
        assert_eq!(memtable.get(&PointQuery::new(b"k", 4)), Lookup::Deleted);
        assert_eq!(
            memtable.get(&PointQuery::new(b"k", 9)),
            Lookup::Found(b"v5".to_vec())
        );
        assert_eq!(memtable.get(&PointQuery::new(b"j", 9)), Lookup::Absent);
        assert_eq!(memtable.max_sequence(), 5);
    }

    #[test]
    fn mem_key_order_matches_internal_key_order() {
        use proptest::prelude::*;
        // Up to 60 bytes: across the 16 of the prefix.
        let key = prop::collection::vec(prop::sample::select(vec![0u8, 1, 0x7f, 0xff]), 0..60);
        proptest!(|(a in key.clone(), b in key, sa in 1u64..5, sb in 1u64..5)| {
            let (ia, ib) = (key::encode(&a, sa, ValueKind::Put), key::encode(&b, sb, ValueKind::Delete));
            let (ma, mb) = (MemKey::from_internal(&ia), MemKey::from_internal(&ib));
            prop_assert_eq!(ma.cmp(&mb), key::compare(&ia, &ib));
            let mut encoded = Vec::new();
            ma.encode_into(&mut encoded);
            prop_assert_eq!(&encoded, &ia);
            prop_assert!(ma.user_key_is(&a));
            prop_assert_eq!(ma.user_key_is(&b), a == b);
        });
    }

    #[test]
    fn iterates_both_ways() {
        let memtable = Arc::new(Memtable::new(1, 1 << 20));
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
