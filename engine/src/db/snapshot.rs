//! Snapshots: a fixed sequence number that compaction must respect.

use super::{DbIterator, Inner};
use crate::key::SeqNo;
use crate::Result;
use std::ops::RangeBounds;
use std::sync::Arc;

/// A consistent, read-only view of the database at one moment.
///
/// While a snapshot lives, compaction keeps every version it can see, so
/// reads through it return exactly the state at its creation, whatever is
/// written, flushed or compacted afterwards.
///
/// ```
/// # let dir = tempfile::tempdir().unwrap();
/// let db = ferry_engine::Db::open(dir.path(), Default::default())?;
/// db.put(b"k", b"old")?;
/// let snapshot = db.snapshot();
/// db.put(b"k", b"new")?;
/// assert_eq!(snapshot.get(b"k")?.as_deref(), Some(&b"old"[..]));
/// assert_eq!(db.get(b"k")?.as_deref(), Some(&b"new"[..]));
/// # Ok::<(), ferry_engine::Error>(())
/// ```
pub struct Snapshot {
    inner: Arc<Inner>,
    sequence: SeqNo,
}

impl Snapshot {
    pub(crate) fn new(inner: Arc<Inner>) -> Self {
        let mut snapshots = inner.snapshots.lock();
        let sequence = inner.visible_sequence();
        *snapshots.entry(sequence).or_insert(0) += 1;
        drop(snapshots);
        Snapshot { inner, sequence }
    }

    /// The sequence number the snapshot reads at.
    ///
    /// ```
    /// # let dir = tempfile::tempdir().unwrap();
    /// let db = ferry_engine::Db::open(dir.path(), Default::default())?;
    /// let written = db.put(b"k", b"v")?;
    /// assert_eq!(db.snapshot().sequence(), written);
    /// # Ok::<(), ferry_engine::Error>(())
    /// ```
    pub fn sequence(&self) -> SeqNo {
        self.sequence
    }

    /// The value of `key` as of the snapshot.
    ///
    /// ```
    /// # let dir = tempfile::tempdir().unwrap();
    /// let db = ferry_engine::Db::open(dir.path(), Default::default())?;
    /// let snapshot = db.snapshot();
    /// db.put(b"k", b"v")?;
    /// assert_eq!(snapshot.get(b"k")?, None);
    /// # Ok::<(), ferry_engine::Error>(())
    /// ```
    pub fn get(&self, key: impl AsRef<[u8]>) -> Result<Option<Vec<u8>>> {
        self.inner.get_at(key.as_ref(), self.sequence)
    }

    /// All live keys as of the snapshot.
    ///
    /// ```
    /// # let dir = tempfile::tempdir().unwrap();
    /// let db = ferry_engine::Db::open(dir.path(), Default::default())?;
    /// db.put(b"a", b"1")?;
    /// let snapshot = db.snapshot();
    /// db.put(b"b", b"2")?;
    /// assert_eq!(snapshot.iter().count(), 1);
    /// # Ok::<(), ferry_engine::Error>(())
    /// ```
    pub fn iter(&self) -> DbIterator {
        self.inner.range_at::<&[u8], _>(.., Some(self.sequence))
    }

    /// Live keys within `range` as of the snapshot.
    ///
    /// ```
    /// # let dir = tempfile::tempdir().unwrap();
    /// let db = ferry_engine::Db::open(dir.path(), Default::default())?;
    /// db.put(b"a", b"1")?;
    /// db.put(b"b", b"2")?;
    /// let snapshot = db.snapshot();
    /// assert_eq!(snapshot.range(b"b".as_slice()..).count(), 1);
    /// # Ok::<(), ferry_engine::Error>(())
    /// ```
    pub fn range<K: AsRef<[u8]>, R: RangeBounds<K>>(&self, range: R) -> DbIterator {
        self.inner.range_at(range, Some(self.sequence))
    }

    /// Live keys starting with `prefix` as of the snapshot.
    ///
    /// ```
    /// # let dir = tempfile::tempdir().unwrap();
    /// let db = ferry_engine::Db::open(dir.path(), Default::default())?;
    /// db.put(b"user/1", b"a")?;
    /// db.put(b"item/1", b"b")?;
    /// assert_eq!(db.snapshot().prefix(b"user/").count(), 1);
    /// # Ok::<(), ferry_engine::Error>(())
    /// ```
    pub fn prefix(&self, prefix: impl AsRef<[u8]>) -> DbIterator {
        self.inner.prefix_at(prefix.as_ref(), Some(self.sequence))
    }
}

impl Drop for Snapshot {
    fn drop(&mut self) {
        let mut snapshots = self.inner.snapshots.lock();
        if let Some(count) = snapshots.get_mut(&self.sequence) {
            *count -= 1;
            if *count == 0 {
                snapshots.remove(&self.sequence);
            }
        }
    }
}
