//! The database: ties WAL, memtables, tables and background work together.

mod background;
mod bulk;
mod checkpoint;
mod columnar;
mod iter;
pub use iter::prefix_end;
mod recovery;
mod snapshot;
mod write;

pub use bulk::{BulkLoader, BulkReport};
pub use columnar::restore_parquet;
pub use iter::DbIterator;
pub use recovery::RecoveryReport;
pub use snapshot::Snapshot;

use crate::fs::{FileLock, FileSystem};
use crate::key::SeqNo;
use crate::manifest::edit::VersionEdit;
use crate::manifest::version::{Version, NUM_LEVELS};
use crate::manifest::VersionSet;
use crate::memtable::{Lookup, Memtable};
use crate::options::{Options, WriteOptions};
use crate::sst::builder::TableOptions;
use crate::sst::table::PointQuery;
use crate::stats::{Counters, Statistics};
use crate::wal::LogWriter;
use crate::{Error, Result, WriteBatch};
use parking_lot::{Condvar, Mutex};
use std::collections::{BTreeMap, VecDeque};
use std::ops::{Bound, RangeBounds};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

/// What a reader needs, captured atomically: the memtables and the table
/// version that together hold every write up to the visible sequence.
pub(crate) struct SuperVersion {
    pub(crate) mem: Arc<Memtable>,
    /// Immutable memtables, newest first.
    pub(crate) imm: Vec<Arc<Memtable>>,
    pub(crate) version: Arc<Version>,
}

impl SuperVersion {
    /// The memtables in the order a point read asks them: newest first, so
    /// the first that knows a key has its newest version.
    fn memtables(&self) -> impl Iterator<Item = &Arc<Memtable>> {
        std::iter::once(&self.mem).chain(self.imm.iter())
    }
}

/// State guarded by `Inner::state`.
pub(crate) struct State {
    pub(crate) mem: Arc<Memtable>,
    /// Memtables waiting for flush, oldest first.
    pub(crate) imm: VecDeque<Arc<Memtable>>,
    pub(crate) version: Arc<Version>,
    pub(crate) super_version: Arc<SuperVersion>,
    pub(crate) background_error: Option<String>,
    pub(crate) closing: bool,
}

impl State {
    fn refresh(&mut self) {
        self.super_version = Arc::new(SuperVersion {
            mem: self.mem.clone(),
            imm: self.imm.iter().rev().cloned().collect(),
            version: self.version.clone(),
        });
    }
}

pub(crate) struct WalState {
    pub(crate) writer: LogWriter,
    /// Appends not yet fsynced.
    pub(crate) dirty: bool,
}

/// Shared core of a [`Db`]; background threads hold it too.
///
/// Lock order: `versions` → `state` → `wal`. `queue`, `snapshots`,
/// `flush_lock` and `compaction` are never held while taking a lock that
/// precedes them in this list.
pub(crate) struct Inner {
    pub(crate) dir: PathBuf,
    pub(crate) options: Options,
    pub(crate) fs: Arc<dyn FileSystem>,
    pub(crate) counters: Arc<Counters>,
    pub(crate) state: Mutex<State>,
    /// Signalled whenever memtables, versions or the closing flag change.
    pub(crate) work: Condvar,
    pub(crate) versions: Mutex<VersionSet>,
    pub(crate) wal: Mutex<WalState>,
    pub(crate) queue: Mutex<write::WriteQueue>,
    pub(crate) queue_changed: Condvar,
    /// True while the write leader waits for an fsync.
    pub(crate) leader_syncing: std::sync::atomic::AtomicBool,
    /// True while one waiting writer spins (at most one does).
    pub(crate) writer_spinning: std::sync::atomic::AtomicBool,
    pub(crate) next_file_number: AtomicU64,
    /// Last sequence handed out (only the write leader changes it).
    pub(crate) last_sequence: AtomicU64,
    /// Last sequence whose write is complete and readable.
    visible_sequence: AtomicU64,
    pub(crate) snapshots: Mutex<BTreeMap<SeqNo, usize>>,
    /// Serializes flushes of immutable memtables.
    pub(crate) flush_lock: Mutex<()>,
    /// Serializes compactions; holds the round-robin pointer per level.
    pub(crate) compaction: Mutex<[Vec<u8>; NUM_LEVELS]>,
    lock_file: Mutex<Option<Box<dyn FileLock>>>,
    threads: Mutex<Vec<JoinHandle<()>>>,
    report: RecoveryReport,
}

impl Inner {
    pub(crate) fn visible_sequence(&self) -> SeqNo {
        self.visible_sequence.load(Ordering::Acquire)
    }

    pub(crate) fn publish_sequence(&self, sequence: SeqNo) {
        self.visible_sequence.store(sequence, Ordering::Release);
    }

    pub(crate) fn new_file_number(&self) -> u64 {
        self.next_file_number.fetch_add(1, Ordering::SeqCst)
    }

    pub(crate) fn table_options(&self) -> TableOptions {
        TableOptions::from(&self.options)
    }

    pub(crate) fn super_version(&self) -> Arc<SuperVersion> {
        self.state.lock().super_version.clone()
    }

    /// The visible sequence and the super version, read under one lock so
    /// that no compaction can fall between them: a compaction that dropped a
    /// version shadowed by a newer write is installed only with that write
    /// already visible, so a reader never sees a sequence too old for its
    /// tables.
    pub(crate) fn read_view(&self) -> Result<(SeqNo, Arc<SuperVersion>)> {
        let state = self.state.lock();
        if state.closing {
            return Err(Error::Closed);
        }
        Ok((self.visible_sequence(), state.super_version.clone()))
    }

    pub(crate) fn live_snapshots(&self) -> Vec<SeqNo> {
        self.snapshots.lock().keys().copied().collect()
    }

    fn check_open(&self) -> Result<()> {
        if self.state.lock().closing {
            return Err(Error::Closed);
        }
        Ok(())
    }

    /// The read view for an iterator: a snapshot's sequence with the current
    /// super version, or the newest state read under one lock. Iterators
    /// work on a closed database too (they own what they read).
    fn view_at(&self, sequence: Option<SeqNo>) -> (SeqNo, Arc<SuperVersion>) {
        match sequence {
            Some(sequence) => (sequence, self.super_version()),
            None => {
                let state = self.state.lock();
                (self.visible_sequence(), state.super_version.clone())
            }
        }
    }

    /// Reads at a registered snapshot's sequence (the snapshot keeps
    /// compaction from dropping what it sees).
    pub(crate) fn get_at(&self, user_key: &[u8], sequence: SeqNo) -> Result<Option<Vec<u8>>> {
        // The super version is taken after the sequence, so it holds every
        // write up to that sequence (see `State` and the flush install).
        let (_, source) = self.read_view()?;
        self.get_in(&source, user_key, sequence)
    }

    /// Reads the newest state.
    pub(crate) fn get_latest(&self, user_key: &[u8]) -> Result<Option<Vec<u8>>> {
        let (sequence, source) = self.read_view()?;
        self.get_in(&source, user_key, sequence)
    }

    /// Reads the newest state of each key, under one read view. The
    /// memtables' searches for the keys run together, which is faster
    /// than one [`Inner::get_latest`] after another.
    pub(crate) fn get_many_latest(&self, user_keys: &[&[u8]]) -> Result<Vec<Option<Vec<u8>>>> {
        let (sequence, source) = self.read_view()?;
        let queries: Vec<PointQuery> = user_keys
            .iter()
            .map(|user_key| PointQuery::new(user_key, sequence))
            .collect();
        let mut found: Vec<Option<Vec<u8>>> = vec![None; queries.len()];
        // Queries no memtable has decided yet.
        let mut open: Vec<usize> = (0..queries.len()).collect();
        for memtable in source.memtables() {
            if open.is_empty() {
                break;
            }
            let asked: Vec<&PointQuery> = open.iter().map(|&at| &queries[at]).collect();
            let lookups = memtable.get_all(&asked);
            let mut still = Vec::new();
            for (at, lookup) in open.into_iter().zip(lookups) {
                match lookup {
                    Lookup::Found(value) => found[at] = Some(value),
                    Lookup::Deleted => {}
                    Lookup::Absent => still.push(at),
                }
            }
            open = still;
        }
        for at in open {
            if let Lookup::Found(value) = source.version.get(&queries[at])? {
                found[at] = Some(value);
            }
        }
        Ok(found)
    }

    fn get_in(
        &self,
        source: &SuperVersion,
        user_key: &[u8],
        sequence: SeqNo,
    ) -> Result<Option<Vec<u8>>> {
        let query = PointQuery::new(user_key, sequence);
        for memtable in source.memtables() {
            match memtable.get(&query) {
                Lookup::Found(value) => return Ok(Some(value)),
                Lookup::Deleted => return Ok(None),
                Lookup::Absent => {}
            }
        }
        match source.version.get(&query)? {
            Lookup::Found(value) => Ok(Some(value)),
            Lookup::Deleted | Lookup::Absent => Ok(None),
        }
    }

    pub(crate) fn range_at<K: AsRef<[u8]>, R: RangeBounds<K>>(
        &self,
        range: R,
        sequence: Option<SeqNo>,
    ) -> DbIterator {
        let owned = |bound: Bound<&K>| match bound {
            Bound::Included(k) => Bound::Included(k.as_ref().to_vec()),
            Bound::Excluded(k) => Bound::Excluded(k.as_ref().to_vec()),
            Bound::Unbounded => Bound::Unbounded,
        };
        let (start, end) = (owned(range.start_bound()), owned(range.end_bound()));
        let (sequence, source) = self.view_at(sequence);
        DbIterator::new(source, sequence, start, end)
    }

    pub(crate) fn prefix_at(&self, prefix: &[u8], sequence: Option<SeqNo>) -> DbIterator {
        let end = match iter::prefix_end(prefix) {
            Some(end) => Bound::Excluded(end),
            None => Bound::Unbounded,
        };
        let (sequence, source) = self.view_at(sequence);
        DbIterator::new(source, sequence, Bound::Included(prefix.to_vec()), end)
    }

    /// Makes `edit` durable in the manifest and installs the new version
    /// for readers; `with_state` runs under the same state lock (a flush
    /// retires its memtable there, so readers never see the data twice or
    /// not at all).
    pub(crate) fn install(
        &self,
        edit: VersionEdit,
        with_state: impl FnOnce(&mut State),
    ) -> Result<()> {
        {
            let mut versions = self.versions.lock();
            let opened = versions.open_added(&edit)?;
            let version = versions.log_and_apply(edit, opened, &self.next_file_number)?;
            let mut state = self.state.lock();
            with_state(&mut state);
            state.version = version;
            state.refresh();
        }
        self.work.notify_all();
        Ok(())
    }

    pub(crate) fn set_background_error(&self, error: &Error) {
        let mut state = self.state.lock();
        if state.background_error.is_none() {
            state.background_error = Some(error.to_string());
        }
        self.work.notify_all();
    }
}

/// An embedded Ferry database.
///
/// `Db` is `Send + Sync`: share it between threads with an `Arc`.
/// Concurrent writers are committed in groups that share one WAL write and
/// one fsync. Dropping a `Db` closes it; [`Db::close`] does the same and
/// reports errors.
///
/// ```
/// use ferry_engine::{Db, Options};
/// # let dir = tempfile::tempdir().unwrap();
/// let db = Db::open(dir.path(), Options::default())?;
/// db.put(b"job/42", b"running")?;
/// assert_eq!(db.get(b"job/42")?.as_deref(), Some(&b"running"[..]));
/// db.delete(b"job/42")?;
/// assert_eq!(db.get(b"job/42")?, None);
/// db.close()?;
/// # Ok::<(), ferry_engine::Error>(())
/// ```
pub struct Db {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Db {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Db").field("dir", &self.inner.dir).finish()
    }
}

impl Db {
    /// Opens (or creates) the database in `path`, replaying its WAL.
    ///
    /// A second open of the same directory, from this process or another,
    /// fails with [`Error::Locked`].
    ///
    /// ```
    /// # let dir = tempfile::tempdir().unwrap();
    /// let db = ferry_engine::Db::open(dir.path(), Default::default())?;
    /// assert!(matches!(
    ///     ferry_engine::Db::open(dir.path(), Default::default()),
    ///     Err(ferry_engine::Error::Locked { .. })
    /// ));
    /// # Ok::<(), ferry_engine::Error>(())
    /// ```
    pub fn open(path: impl AsRef<Path>, options: Options) -> Result<Db> {
        let inner = Arc::new(recovery::open(path.as_ref(), options)?);
        background::start(&inner);
        Ok(Db { inner })
    }

    /// The value of `key`, or `None`.
    ///
    /// ```
    /// # let dir = tempfile::tempdir().unwrap();
    /// let db = ferry_engine::Db::open(dir.path(), Default::default())?;
    /// assert_eq!(db.get(b"missing")?, None);
    /// # Ok::<(), ferry_engine::Error>(())
    /// ```
    pub fn get(&self, key: impl AsRef<[u8]>) -> Result<Option<Vec<u8>>> {
        self.inner.get_latest(key.as_ref())
    }

    /// The value of each key, as one consistent read: what [`Db::get`] of
    /// each would return if no write came between them. Faster than one
    /// `get` after another for keys spread over a large memtable.
    ///
    /// ```
    /// # let dir = tempfile::tempdir().unwrap();
    /// let db = ferry_engine::Db::open(dir.path(), Default::default())?;
    /// db.put(b"a", b"1")?;
    /// let values = db.get_many(&[&b"a"[..], b"b"])?;
    /// assert_eq!(values, vec![Some(b"1".to_vec()), None]);
    /// # Ok::<(), ferry_engine::Error>(())
    /// ```
    pub fn get_many<K: AsRef<[u8]>>(&self, keys: &[K]) -> Result<Vec<Option<Vec<u8>>>> {
        let keys: Vec<&[u8]> = keys.iter().map(AsRef::as_ref).collect();
        self.inner.get_many_latest(&keys)
    }

    /// Sets `key` to `value`. Returns the sequence number of the write.
    ///
    /// ```
    /// # let dir = tempfile::tempdir().unwrap();
    /// let db = ferry_engine::Db::open(dir.path(), Default::default())?;
    /// let first = db.put(b"k", b"1")?;
    /// let second = db.put(b"k", b"2")?;
    /// assert!(second > first);
    /// # Ok::<(), ferry_engine::Error>(())
    /// ```
    pub fn put(&self, key: impl AsRef<[u8]>, value: impl AsRef<[u8]>) -> Result<SeqNo> {
        let mut batch = WriteBatch::new();
        batch.put(key, value);
        self.write(batch)
    }

    /// Deletes `key` (a no-op if absent). Returns the sequence of the write.
    ///
    /// ```
    /// # let dir = tempfile::tempdir().unwrap();
    /// let db = ferry_engine::Db::open(dir.path(), Default::default())?;
    /// db.put(b"k", b"v")?;
    /// db.delete(b"k")?;
    /// assert_eq!(db.get(b"k")?, None);
    /// # Ok::<(), ferry_engine::Error>(())
    /// ```
    pub fn delete(&self, key: impl AsRef<[u8]>) -> Result<SeqNo> {
        let mut batch = WriteBatch::new();
        batch.delete(key);
        self.write(batch)
    }

    /// Applies a batch atomically with the database's default durability.
    /// Returns the sequence of its last operation.
    ///
    /// ```
    /// # let dir = tempfile::tempdir().unwrap();
    /// let db = ferry_engine::Db::open(dir.path(), Default::default())?;
    /// let mut batch = ferry_engine::WriteBatch::new();
    /// batch.put(b"a", b"1");
    /// batch.put(b"b", b"2");
    /// db.write(batch)?;
    /// assert_eq!(db.iter().count(), 2);
    /// # Ok::<(), ferry_engine::Error>(())
    /// ```
    pub fn write(&self, batch: WriteBatch) -> Result<SeqNo> {
        self.write_opt(batch, &WriteOptions::default())
    }

    /// Applies a batch atomically with per-write options.
    ///
    /// A key or value over the configured limits rejects the whole batch
    /// with [`Error::TooLarge`]; nothing of it is written.
    ///
    /// ```
    /// use ferry_engine::{Db, Durability, Options, WriteBatch, WriteOptions};
    /// # let dir = tempfile::tempdir().unwrap();
    /// let db = Db::open(dir.path(), Options { durability: Durability::Buffered, ..Options::default() })?;
    /// let mut batch = WriteBatch::new();
    /// batch.put(b"important", b"1");
    /// db.write_opt(batch, &WriteOptions { durability: Some(Durability::Sync) })?;
    /// # Ok::<(), ferry_engine::Error>(())
    /// ```
    pub fn write_opt(&self, batch: WriteBatch, options: &WriteOptions) -> Result<SeqNo> {
        self.inner.write(batch, options)
    }

    /// A consistent view of the database as of now.
    ///
    /// ```
    /// # let dir = tempfile::tempdir().unwrap();
    /// let db = ferry_engine::Db::open(dir.path(), Default::default())?;
    /// let snapshot = db.snapshot();
    /// db.put(b"k", b"v")?;
    /// assert_eq!(snapshot.get(b"k")?, None);
    /// # Ok::<(), ferry_engine::Error>(())
    /// ```
    pub fn snapshot(&self) -> Snapshot {
        Snapshot::new(self.inner.clone())
    }

    /// All live keys in order.
    ///
    /// ```
    /// # let dir = tempfile::tempdir().unwrap();
    /// let db = ferry_engine::Db::open(dir.path(), Default::default())?;
    /// db.put(b"b", b"2")?;
    /// db.put(b"a", b"1")?;
    /// let keys: Vec<_> = db.iter().map(|e| e.unwrap().0).collect();
    /// assert_eq!(keys, vec![b"a".to_vec(), b"b".to_vec()]);
    /// # Ok::<(), ferry_engine::Error>(())
    /// ```
    pub fn iter(&self) -> DbIterator {
        self.inner.range_at::<&[u8], _>(.., None)
    }

    /// Live keys within `range`, forwards or (with `.rev()`) backwards.
    ///
    /// ```
    /// # let dir = tempfile::tempdir().unwrap();
    /// let db = ferry_engine::Db::open(dir.path(), Default::default())?;
    /// for k in ["a", "b", "c"] { db.put(k, "")?; }
    /// let keys: Vec<_> = db.range("a".."c").rev().map(|e| e.unwrap().0).collect();
    /// assert_eq!(keys, vec![b"b".to_vec(), b"a".to_vec()]);
    /// # Ok::<(), ferry_engine::Error>(())
    /// ```
    pub fn range<K: AsRef<[u8]>, R: RangeBounds<K>>(&self, range: R) -> DbIterator {
        self.inner.range_at(range, None)
    }

    /// Live keys that start with `prefix`.
    ///
    /// ```
    /// # let dir = tempfile::tempdir().unwrap();
    /// let db = ferry_engine::Db::open(dir.path(), Default::default())?;
    /// db.put(b"job/1", b"")?;
    /// db.put(b"job/2", b"")?;
    /// db.put(b"lock/1", b"")?;
    /// assert_eq!(db.prefix(b"job/").count(), 2);
    /// # Ok::<(), ferry_engine::Error>(())
    /// ```
    pub fn prefix(&self, prefix: impl AsRef<[u8]>) -> DbIterator {
        self.inner.prefix_at(prefix.as_ref(), None)
    }

    /// Writes the memtable to a level-0 table and waits until every write
    /// made before the call is in a table.
    ///
    /// ```
    /// # let dir = tempfile::tempdir().unwrap();
    /// let db = ferry_engine::Db::open(dir.path(), Default::default())?;
    /// db.put(b"k", b"v")?;
    /// db.flush()?;
    /// assert_eq!(db.statistics().level_files[0], 1);
    /// # Ok::<(), ferry_engine::Error>(())
    /// ```
    pub fn flush(&self) -> Result<()> {
        self.inner.flush()
    }

    /// Compacts every table that holds keys in `[start, end]` (`None` =
    /// unbounded) down to the deepest level that has such keys, dropping
    /// overwritten versions and, at the bottom, tombstones.
    ///
    /// ```
    /// # let dir = tempfile::tempdir().unwrap();
    /// let db = ferry_engine::Db::open(dir.path(), Default::default())?;
    /// db.put(b"k", b"v")?;
    /// db.delete(b"k")?;
    /// db.compact_range(None, None)?;
    /// assert_eq!(db.statistics().level_files.iter().sum::<usize>(), 0);
    /// # Ok::<(), ferry_engine::Error>(())
    /// ```
    pub fn compact_range(&self, start: Option<&[u8]>, end: Option<&[u8]>) -> Result<()> {
        self.inner.flush()?;
        self.inner.compact_range(start, end)
    }

    /// Counters since open, plus the current shape of the tree.
    ///
    /// ```
    /// # let dir = tempfile::tempdir().unwrap();
    /// let db = ferry_engine::Db::open(dir.path(), Default::default())?;
    /// db.put(b"k", b"v")?;
    /// assert!(db.statistics().write_amplification() > 0.0);
    /// # Ok::<(), ferry_engine::Error>(())
    /// ```
    pub fn statistics(&self) -> Statistics {
        let mut statistics = self.inner.counters.snapshot();
        let version = self.inner.state.lock().version.clone();
        statistics.level_files = version.levels.iter().map(Vec::len).collect();
        statistics.level_bytes = (0..NUM_LEVELS).map(|l| version.level_bytes(l)).collect();
        statistics.compaction_debt_bytes =
            crate::compaction::leveled::debt_bytes(&version, &self.inner.options);
        statistics
    }

    /// What recovery did when the database was opened.
    ///
    /// ```
    /// # let dir = tempfile::tempdir().unwrap();
    /// let db = ferry_engine::Db::open(dir.path(), Default::default())?;
    /// assert!(db.recovery_report().torn_tail.is_none());
    /// # Ok::<(), ferry_engine::Error>(())
    /// ```
    pub fn recovery_report(&self) -> &RecoveryReport {
        &self.inner.report
    }

    /// The sequence of the newest readable write.
    ///
    /// ```
    /// # let dir = tempfile::tempdir().unwrap();
    /// let db = ferry_engine::Db::open(dir.path(), Default::default())?;
    /// let sequence = db.put(b"k", b"v")?;
    /// assert_eq!(db.latest_sequence(), sequence);
    /// # Ok::<(), ferry_engine::Error>(())
    /// ```
    pub fn latest_sequence(&self) -> SeqNo {
        self.inner.visible_sequence()
    }

    /// The database directory.
    ///
    /// ```
    /// # let dir = tempfile::tempdir().unwrap();
    /// let db = ferry_engine::Db::open(dir.path(), Default::default())?;
    /// assert_eq!(db.path(), dir.path());
    /// # Ok::<(), ferry_engine::Error>(())
    /// ```
    pub fn path(&self) -> &Path {
        &self.inner.dir
    }

    /// Stops background work, makes the WAL durable and releases the
    /// directory lock. Data in the memtable stays in the WAL and is replayed
    /// on the next open.
    ///
    /// ```
    /// # let dir = tempfile::tempdir().unwrap();
    /// let db = ferry_engine::Db::open(dir.path(), Default::default())?;
    /// db.put(b"k", b"v")?;
    /// db.close()?;
    /// let db = ferry_engine::Db::open(dir.path(), Default::default())?;
    /// assert_eq!(db.get(b"k")?.as_deref(), Some(&b"v"[..]));
    /// # Ok::<(), ferry_engine::Error>(())
    /// ```
    pub fn close(self) -> Result<()> {
        self.inner.shutdown()
    }
}

impl Drop for Db {
    fn drop(&mut self) {
        let _ = self.inner.shutdown();
    }
}

impl Inner {
    /// Idempotent: stops the threads, waits for a write group in flight,
    /// syncs and finishes the WAL segment, releases the lock.
    fn shutdown(&self) -> Result<()> {
        {
            let mut state = self.state.lock();
            if state.closing && self.lock_file.lock().is_none() {
                return Ok(());
            }
            state.closing = true;
            self.work.notify_all();
        }
        let threads = std::mem::take(&mut *self.threads.lock());
        for thread in threads {
            let _ = thread.join();
        }
        self.wait_for_write_leader();
        let result = {
            let mut wal = self.wal.lock();
            // `finish`: synced, and cut back to its last record, so a clean
            // close leaves no reserved space behind.
            wal.writer.finish().map(|()| wal.dirty = false)
        };
        self.lock_file.lock().take();
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_send_sync<T: Send + Sync>() {}

    #[test]
    fn db_is_send_and_sync() {
        assert_send_sync::<Db>();
        assert_send_sync::<Snapshot>();
        fn assert_send<T: Send>() {}
        assert_send::<DbIterator>();
    }
}
