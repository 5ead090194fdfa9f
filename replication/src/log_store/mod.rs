//! The Raft log store: openraft's `RaftLogStorage` on the engine's
//! segmented, CRC-framed log (`ferry_engine::wal`, kind `Raft`).
//!
//! ## Format (version 1)
//!
//! ```text
//! raft/<first index, 20 digits>.log   log segments (the engine's WAL framing, kind Raft);
//!                                     record sequence = log index, payload = postcard(Entry)
//! raft/VOTE                           the last saved vote (see `files`)
//! raft/PURGED                         the last purged log id (see `files`)
//! raft/LOCK                           held by the one log store that has the directory open
//! ```
//!
//! The last segment may run on past its last record in zero bytes: space
//! reserved ahead of the records (`ferry_engine::fs::mapped`), cut off when
//! the segment is sealed or the store is closed, and by recovery after a
//! crash. The WAL reader has always treated a zero tail of a log's last
//! segment as unused space (the engine's WAL reserves likewise), so this
//! is still version 1; a SIGKILLed member (`server/tests/processes.rs`)
//! recovers from such a tail.
//!
//! Invariants:
//! - Entries are contiguous: segment `n` holds indexes `n, n+1, …` and the
//!   next segment starts where it ends. Truncation removes from the end
//!   backwards and purge from the front, so a crash part-way leaves a
//!   shorter log, never a hole.
//! - `append` makes entries readable at once (they sit in the cache until
//!   written) and signals `IOFlushed` only after the fsync that covers them.
//! - Memory is bounded: the index holds a location per entry; entry bodies
//!   are cached only up to `cache_bytes` (never evicted before they are on
//!   disk), older ones are read back from the segment and CRC-checked.

pub(crate) mod files;
mod io;

use crate::types::{Entry, LogId, TypeConfig, Vote};
use ferry_engine::fs::{FileSystem, OsFs, RandomAccessFile};
use io::{IoThread, Job};
use openraft::entry::RaftEntry;
use openraft::storage::{IOFlushed, LogState, RaftLogReader, RaftLogStorage};
use parking_lot::{Mutex, RwLock};
use std::collections::{HashMap, VecDeque};
use std::fmt::Debug;
use std::io::{Error as IoError, ErrorKind};
use std::ops::{Bound, RangeBounds};
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc};

/// Options of the log store.
#[derive(Debug, Clone)]
pub struct LogStoreOptions {
    /// A segment is sealed and a new one started past this size.
    pub segment_bytes: u64,
    /// Bytes of recent entries kept decoded in memory.
    pub cache_bytes: usize,
}

impl Default for LogStoreOptions {
    fn default() -> Self {
        LogStoreOptions {
            segment_bytes: 64 << 20,
            cache_bytes: 64 << 20,
        }
    }
}

/// Where an entry's record sits on disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Location {
    pub(crate) segment: u64,
    pub(crate) offset: u64,
    pub(crate) len: u32,
}

impl Location {
    /// The offset just past the record.
    fn end(&self) -> usize {
        self.offset as usize + self.len as usize
    }
}

#[derive(Clone)]
struct Slot {
    log_id: LogId,
    location: Option<Location>,
    entry: Option<Arc<Entry>>,
    size: usize,
}

struct Index {
    /// Log index of `slots[0]`.
    first: u64,
    slots: VecDeque<Slot>,
    last_purged: Option<LogId>,
    vote: Option<Vote>,
    cached_bytes: usize,
    /// Every slot below this index has no cached entry.
    evict_from: u64,
}

impl Index {
    fn last_log_id(&self) -> Option<LogId> {
        self.slots.back().map(|s| s.log_id).or(self.last_purged)
    }

    fn slot(&self, index: u64) -> Option<&Slot> {
        self.slots
            .get(usize::try_from(index.checked_sub(self.first)?).ok()?)
    }
}

/// Counters of the log's fsyncs.
#[derive(Debug, Default)]
pub struct LogStats {
    fsyncs: std::sync::atomic::AtomicU64,
    fsync_nanos: std::sync::atomic::AtomicU64,
}

/// A reading of [`LogStats`].
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct LogStatsSnapshot {
    pub fsyncs: u64,
    pub fsync_seconds: f64,
}

impl LogStats {
    pub(crate) fn record_fsync(&self, took: std::time::Duration) {
        use std::sync::atomic::Ordering::Relaxed;
        self.fsyncs.fetch_add(1, Relaxed);
        self.fsync_nanos.fetch_add(took.as_nanos() as u64, Relaxed);
    }

    pub fn snapshot(&self) -> LogStatsSnapshot {
        use std::sync::atomic::Ordering::Relaxed;
        LogStatsSnapshot {
            fsyncs: self.fsyncs.load(Relaxed),
            fsync_seconds: self.fsync_nanos.load(Relaxed) as f64 / 1e9,
        }
    }
}

pub(crate) struct Shared {
    pub(crate) stats: Arc<LogStats>,
    fs: Arc<dyn FileSystem>,
    dir: PathBuf,
    index: RwLock<Index>,
    maps: Mutex<HashMap<u64, Arc<dyn RandomAccessFile>>>,
    cache_bytes: usize,
}

impl Shared {
    /// Called by the IO thread after an fsync: the entries now have a home
    /// on disk, so their cached bodies may be evicted.
    pub(crate) fn publish(&self, written: &[(u64, Location)]) {
        let mut index = self.index.write();
        for (log_index, location) in written {
            let first = index.first;
            if let Some(slot) = log_index
                .checked_sub(first)
                .and_then(|i| index.slots.get_mut(i as usize))
            {
                slot.location = Some(*location);
            }
        }
        while index.cached_bytes > self.cache_bytes {
            let at = index.evict_from.max(index.first);
            let Some(position) = at.checked_sub(index.first) else {
                break;
            };
            let Some(slot) = index.slots.get_mut(position as usize) else {
                break;
            };
            if slot.location.is_none() {
                break;
            }
            if slot.entry.take().is_some() {
                let size = slot.size;
                index.cached_bytes -= size;
            }
            index.evict_from = at + 1;
        }
        // A segment that grew has a stale map; drop it so the next read remaps.
        let mut maps = self.maps.lock();
        for (_, location) in written {
            maps.remove(&location.segment);
        }
    }

    pub(crate) fn forget_segment(&self, first: u64) {
        self.maps.lock().remove(&first);
    }

    /// The map of segment `first`, remapped if it does not reach `end` (the
    /// segment grew since it was mapped).
    fn segment_map(&self, first: u64, end: usize) -> Result<Arc<dyn RandomAccessFile>, IoError> {
        let mut maps = self.maps.lock();
        match maps.get(&first) {
            Some(file) if file.bytes().len() >= end => Ok(file.clone()),
            _ => {
                let file = self.fs.open_random(&io::segment_path(&self.dir, first))?;
                maps.insert(first, file.clone());
                Ok(file)
            }
        }
    }

    fn read_entry(&self, slot: &Slot) -> Result<Entry, IoError> {
        if let Some(entry) = &slot.entry {
            return Ok((**entry).clone());
        }
        let location = slot.location.ok_or_else(|| not_held(&slot.log_id))?;
        let path = io::segment_path(&self.dir, location.segment);
        let file = self.segment_map(location.segment, location.end())?;
        let (sequence, _, payload) = record_in(&path, &file, location)?;
        let entry: Entry = postcard::from_bytes(payload).map_err(|e| {
            IoError::new(
                ErrorKind::InvalidData,
                format!(
                    "{}: undecodable entry at offset {}: {e}",
                    path.display(),
                    location.offset
                ),
            )
        })?;
        if sequence != slot.log_id.index || entry.log_id() != slot.log_id {
            return Err(IoError::new(
                ErrorKind::InvalidData,
                format!(
                    "{}: offset {} holds entry {} where {} was expected",
                    path.display(),
                    location.offset,
                    entry.log_id(),
                    slot.log_id
                ),
            ));
        }
        Ok(entry)
    }

    /// The framed record of each entry from `first` on (the engine's WAL
    /// record: header with the index as sequence, then postcard(Entry)),
    /// handed to `visit` until it returns false or the log ends. A record
    /// on disk is handed over as it lies there, after its CRC and index are
    /// checked; one not yet written is framed from its cached entry. So a
    /// copy of the log (a backup) costs no decoding or re-encoding.
    fn visit_records(
        &self,
        first: u64,
        mut visit: impl FnMut(u64, &[u8]) -> Result<bool, IoError>,
    ) -> Result<(), IoError> {
        const SLICE: u64 = 256;
        let mut next = first;
        let mut scratch = Vec::new();
        // The segment last read, its path (for errors) and its map, so that
        // a run of records from one segment takes the maps' lock once.
        let mut mapped: Option<(u64, PathBuf, Arc<dyn RandomAccessFile>)> = None;
        loop {
            // A record on disk needs only its location; the cached entry
            // (an atomic count to take and drop) only when it has none.
            let slots = self.slots(next..next.saturating_add(SLICE), |slot| {
                let entry = slot.location.is_none().then(|| slot.entry.clone());
                (slot.log_id, slot.location, entry.flatten())
            });
            if slots.is_empty() {
                return Ok(());
            }
            for (log_id, location, entry) in &slots {
                let index = log_id.index;
                if index != next {
                    // Purged from under the caller.
                    return Err(IoError::new(
                        ErrorKind::NotFound,
                        format!("log entry {next} is no longer in the log"),
                    ));
                }
                let record = match (location, entry) {
                    (Some(location), _) => {
                        let end = location.end();
                        let reusable = mapped.as_ref().is_some_and(|(segment, _, file)| {
                            *segment == location.segment && file.bytes().len() >= end
                        });
                        if !reusable {
                            let file = self.segment_map(location.segment, end)?;
                            let path = io::segment_path(&self.dir, location.segment);
                            mapped = Some((location.segment, path, file));
                        }
                        let (_, path, file) = mapped.as_ref().expect("mapped above");
                        let (sequence, record, _) = record_in(path, file, *location)?;
                        if sequence != index {
                            return Err(IoError::new(
                                ErrorKind::InvalidData,
                                format!(
                                    "{}: offset {} holds entry {sequence} where {index} was expected",
                                    path.display(),
                                    location.offset
                                ),
                            ));
                        }
                        record
                    }
                    (None, Some(entry)) => {
                        let payload = postcard::to_stdvec(&**entry).map_err(IoError::other)?;
                        scratch.clear();
                        ferry_engine::wal::encode_record(&mut scratch, index, &payload);
                        &scratch
                    }
                    (None, None) => return Err(not_held(log_id)),
                };
                if !visit(index, record)? {
                    return Ok(());
                }
                next += 1;
            }
        }
    }

    /// What `take` takes of each slot of `range` the log holds.
    fn slots<T>(&self, range: impl RangeBounds<u64>, take: impl Fn(&Slot) -> T) -> Vec<T> {
        let index = self.index.read();
        let end = index.first + index.slots.len() as u64;
        let start = match range.start_bound() {
            Bound::Included(&s) => s,
            Bound::Excluded(&s) => s + 1,
            Bound::Unbounded => 0,
        }
        .max(index.first);
        let stop = match range.end_bound() {
            Bound::Included(&e) => e.saturating_add(1),
            Bound::Excluded(&e) => e,
            Bound::Unbounded => u64::MAX,
        }
        .min(end);
        (start..stop.max(start))
            .filter_map(|i| index.slot(i).map(&take))
            .collect()
    }

    fn entries(&self, range: impl RangeBounds<u64>) -> Result<Vec<Entry>, IoError> {
        let slots = self.slots(range, Slot::clone);
        slots.iter().map(|slot| self.read_entry(slot)).collect()
    }
}

/// The record at `location` in `file`, a map of the segment at `path`,
/// with its CRC checked: its sequence, its bytes and its payload.
fn record_in<'a>(
    path: &Path,
    file: &'a Arc<dyn RandomAccessFile>,
    location: Location,
) -> Result<(u64, &'a [u8], &'a [u8]), IoError> {
    let record = file
        .bytes()
        .get(location.offset as usize..location.end())
        .ok_or_else(|| cut_short(path, location.offset))?;
    let (sequence, payload) = ferry_engine::wal::decode_record_at(path, location.offset, record)
        .map_err(io::engine_io)?;
    Ok((sequence, record, payload))
}

fn not_held(log_id: &LogId) -> IoError {
    IoError::other(format!("log entry {log_id} is neither cached nor on disk"))
}

fn cut_short(path: &Path, offset: u64) -> IoError {
    IoError::new(
        ErrorKind::InvalidData,
        format!("{}: record at offset {offset} is cut short", path.display()),
    )
}

/// The Raft log store of one node. Cloning shares it.
pub struct LogStore {
    shared: Arc<Shared>,
    jobs: mpsc::Sender<Job>,
    /// Bytes cut off a torn tail at open.
    torn_tail_bytes: u64,
}

/// A reader of the log for replication tasks.
#[derive(Clone)]
pub struct LogReader {
    shared: Arc<Shared>,
}

impl LogStore {
    /// Opens (or creates) the log in `dir` on the real file system.
    pub fn open(dir: impl AsRef<Path>, options: LogStoreOptions) -> Result<Self, IoError> {
        Self::open_with_fs(Arc::new(OsFs), dir.as_ref(), options)
    }

    /// Opens the log through `fs` (tests pass a fault-injecting one).
    pub fn open_with_fs(
        fs: Arc<dyn FileSystem>,
        dir: &Path,
        options: LogStoreOptions,
    ) -> Result<Self, IoError> {
        // Durably: a vote saved in a directory whose own entry a power loss
        // takes away is a vote forgotten, and a second vote in its term.
        fs.create_dir_durable(dir)?;
        let lock = io::lock(&*fs, dir)?;
        let recovered = io::recover(&*fs, dir)?;
        let first = recovered
            .entries
            .first()
            .map(|(i, ..)| *i)
            .or_else(|| recovered.last_purged.as_ref().map(|p| p.index + 1))
            .unwrap_or(0);
        let mut slots = VecDeque::with_capacity(recovered.entries.len());
        for (position, (log_index, payload, location)) in recovered.entries.iter().enumerate() {
            let entry: Entry = postcard::from_bytes(payload).map_err(|e| {
                IoError::new(
                    ErrorKind::InvalidData,
                    format!("{}: undecodable entry {log_index}: {e}", dir.display()),
                )
            })?;
            debug_assert_eq!(first + position as u64, *log_index);
            slots.push_back(Slot {
                log_id: entry.log_id(),
                location: Some(*location),
                entry: None,
                size: payload.len(),
            });
        }
        let writer = match recovered.segments.last_key_value() {
            Some((first_index, segment)) => {
                let last = (!segment.offsets.is_empty())
                    .then(|| first_index + segment.offsets.len() as u64 - 1);
                Some(
                    ferry_engine::wal::LogWriter::reopen(&*fs, &segment.path, last)
                        .map_err(io::engine_io)?,
                )
            }
            None => None,
        };
        let shared = Arc::new(Shared {
            stats: Arc::new(LogStats::default()),
            fs: fs.clone(),
            dir: dir.to_path_buf(),
            index: RwLock::new(Index {
                first,
                slots,
                last_purged: recovered.last_purged,
                vote: recovered.vote,
                cached_bytes: 0,
                evict_from: first,
            }),
            maps: Mutex::new(HashMap::new()),
            cache_bytes: options.cache_bytes,
        });
        let (jobs, receiver) = mpsc::channel();
        let thread = IoThread {
            shared: shared.clone(),
            fs,
            dir: dir.to_path_buf(),
            segments: recovered.segments,
            writer,
            segment_bytes: options.segment_bytes,
            _lock: lock,
        };
        std::thread::Builder::new()
            .name("ferry-raft-log".into())
            .spawn(move || thread.run(receiver))?;
        Ok(LogStore {
            shared,
            jobs,
            torn_tail_bytes: recovered.torn_tail_bytes,
        })
    }

    /// fsync counters of this log.
    pub fn stats(&self) -> Arc<LogStats> {
        self.shared.stats.clone()
    }

    /// Bytes cut off a torn tail when the log was opened.
    pub fn torn_tail_bytes(&self) -> u64 {
        self.torn_tail_bytes
    }

    async fn control(&self, make: impl FnOnce(io::Reply) -> Job) -> Result<(), IoError> {
        let (reply, done) = tokio::sync::oneshot::channel();
        self.jobs
            .send(make(reply))
            .map_err(|_| IoError::other("raft log IO thread stopped"))?;
        done.await
            .map_err(|_| IoError::other("raft log IO thread stopped"))?
    }
}

impl LogReader {
    /// The first index the log still holds (everything below is purged).
    pub fn first_index(&self) -> u64 {
        self.shared.index.read().first
    }

    /// Hands `visit` the framed record of each entry from `first` on, as
    /// the log's segments hold it, until it returns false or the log ends
    /// (for blocking tasks that copy the log, such as backup shipping).
    ///
    /// ## Format
    /// Each record is the engine's WAL record (`ferry_engine::wal`, kind
    /// Raft) with the entry's index as its sequence and postcard(Entry) as
    /// its payload: the bytes of a log segment, version 1 of this store's
    /// format.
    pub fn visit_records(
        &self,
        first: u64,
        visit: impl FnMut(u64, &[u8]) -> Result<bool, IoError>,
    ) -> Result<(), IoError> {
        self.shared.visit_records(first, visit)
    }

    /// The entries of `range` that the log holds, read synchronously (for
    /// blocking tasks such as backup shipping).
    pub fn read(&self, range: impl RangeBounds<u64>) -> Result<Vec<Entry>, IoError> {
        self.shared.entries(range)
    }
}

impl RaftLogReader<TypeConfig> for LogReader {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, IoError> {
        self.shared.entries(range)
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, IoError> {
        Ok(self.shared.index.read().vote)
    }
}

/// The store reads like any of its readers.
impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, IoError> {
        self.get_log_reader().await.try_get_log_entries(range).await
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, IoError> {
        self.get_log_reader().await.read_vote().await
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogReader;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, IoError> {
        let index = self.shared.index.read();
        Ok(LogState {
            last_purged_log_id: index.last_purged,
            last_log_id: index.last_log_id(),
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        LogReader {
            shared: self.shared.clone(),
        }
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), IoError> {
        let saved = *vote;
        self.control(|reply| Job::SaveVote { vote: saved, reply })
            .await?;
        self.shared.index.write().vote = Some(*vote);
        Ok(())
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: IOFlushed<TypeConfig>,
    ) -> Result<(), IoError>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        let mut records = Vec::new();
        {
            let mut index = self.shared.index.write();
            for entry in entries {
                let log_id = entry.log_id();
                if index.slots.is_empty() && log_id.index > index.first {
                    // An empty log may restart anywhere after its purged prefix
                    // (after a snapshot install, say).
                    index.first = log_id.index;
                    index.evict_from = log_id.index;
                }
                let expected = index.first + index.slots.len() as u64;
                if log_id.index != expected {
                    return Err(IoError::other(format!(
                        "append of log index {} where {expected} was expected (a hole)",
                        log_id.index
                    )));
                }
                let payload = postcard::to_stdvec(&entry).map_err(IoError::other)?;
                index.cached_bytes += payload.len();
                index.slots.push_back(Slot {
                    log_id,
                    location: None,
                    entry: Some(Arc::new(entry)),
                    size: payload.len(),
                });
                records.push((expected, payload));
            }
        }
        if records.is_empty() {
            callback.io_completed(Ok(()));
            return Ok(());
        }
        self.jobs
            .send(Job::Append { records, callback })
            .map_err(|_| IoError::other("raft log IO thread stopped"))
    }

    async fn truncate_after(&mut self, last_log_id: Option<LogId>) -> Result<(), IoError> {
        let keep = last_log_id.as_ref().map(|l| l.index);
        {
            let mut index = self.shared.index.write();
            let keep_slots = keep.map_or(0, |k| (k + 1).saturating_sub(index.first)) as usize;
            while index.slots.len() > keep_slots {
                let slot = index.slots.pop_back().expect("len checked");
                if slot.entry.is_some() {
                    index.cached_bytes -= slot.size;
                }
            }
        }
        self.control(|reply| Job::Truncate { keep, reply }).await
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), IoError> {
        {
            let mut index = self.shared.index.write();
            while index
                .slots
                .front()
                .is_some_and(|s| s.log_id.index <= log_id.index)
            {
                let slot = index.slots.pop_front().expect("front checked");
                if slot.entry.is_some() {
                    index.cached_bytes -= slot.size;
                }
            }
            index.first = index.first.max(log_id.index + 1);
            index.last_purged = Some(log_id);
        }
        self.control(|reply| Job::Purge {
            upto: log_id,
            reply,
        })
        .await
    }
}
