//! Counters a user can read while the database runs.

use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) user_bytes_written: AtomicU64,
    pub(crate) wal_bytes_written: AtomicU64,
    pub(crate) flush_bytes_written: AtomicU64,
    pub(crate) compaction_bytes_written: AtomicU64,
    pub(crate) compaction_bytes_read: AtomicU64,
    pub(crate) flushes: AtomicU64,
    pub(crate) compactions: AtomicU64,
    pub(crate) trivial_moves: AtomicU64,
    pub(crate) write_slowdowns: AtomicU64,
    pub(crate) write_stops: AtomicU64,
    pub(crate) stall_micros: AtomicU64,
    pub(crate) block_cache_hits: AtomicU64,
    pub(crate) block_cache_misses: AtomicU64,
    pub(crate) bloom_negatives: AtomicU64,
    pub(crate) wal_syncs: AtomicU64,
    pub(crate) write_groups: AtomicU64,
    pub(crate) writes: AtomicU64,
    pub(crate) checkpoints: AtomicU64,
    pub(crate) checkpoint_failures: AtomicU64,
}

impl Counters {
    pub(crate) fn add(counter: &AtomicU64, value: u64) {
        counter.fetch_add(value, Ordering::Relaxed);
    }

    pub(crate) fn snapshot(&self) -> Statistics {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        Statistics {
            user_bytes_written: get(&self.user_bytes_written),
            wal_bytes_written: get(&self.wal_bytes_written),
            flush_bytes_written: get(&self.flush_bytes_written),
            compaction_bytes_written: get(&self.compaction_bytes_written),
            compaction_bytes_read: get(&self.compaction_bytes_read),
            flushes: get(&self.flushes),
            compactions: get(&self.compactions),
            trivial_moves: get(&self.trivial_moves),
            write_slowdowns: get(&self.write_slowdowns),
            write_stops: get(&self.write_stops),
            stall_micros: get(&self.stall_micros),
            block_cache_hits: get(&self.block_cache_hits),
            block_cache_misses: get(&self.block_cache_misses),
            bloom_negatives: get(&self.bloom_negatives),
            wal_syncs: get(&self.wal_syncs),
            write_groups: get(&self.write_groups),
            writes: get(&self.writes),
            checkpoints: get(&self.checkpoints),
            checkpoint_failures: get(&self.checkpoint_failures),
            level_files: Vec::new(),
            level_bytes: Vec::new(),
            compaction_debt_bytes: 0,
        }
    }
}

/// A point-in-time copy of the database's counters.
///
/// ```
/// # let dir = tempfile::tempdir().unwrap();
/// let db = ferry_engine::Db::open(dir.path(), Default::default())?;
/// db.put(b"k", b"v")?;
/// let stats = db.statistics();
/// assert_eq!(stats.writes, 1);
/// assert!(stats.wal_syncs >= 1);
/// # Ok::<(), ferry_engine::Error>(())
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Statistics {
    /// Bytes of keys and values written by the user.
    pub user_bytes_written: u64,
    /// Bytes appended to the WAL.
    pub wal_bytes_written: u64,
    /// Bytes of tables written by memtable flushes.
    pub flush_bytes_written: u64,
    /// Bytes of tables written by compactions.
    pub compaction_bytes_written: u64,
    /// Bytes of tables read by compactions.
    pub compaction_bytes_read: u64,
    /// Memtable flushes completed.
    pub flushes: u64,
    /// Compactions completed (trivial moves included).
    pub compactions: u64,
    /// Compactions that only moved a file to the next level.
    pub trivial_moves: u64,
    /// Write groups delayed because level 0 was filling up.
    pub write_slowdowns: u64,
    /// Write groups that waited for a flush or compaction.
    pub write_stops: u64,
    /// Total microseconds writers spent delayed or stopped.
    pub stall_micros: u64,
    /// Block reads served from the cache.
    pub block_cache_hits: u64,
    /// Block reads that went to the file.
    pub block_cache_misses: u64,
    /// Table lookups answered "absent" by a bloom filter alone.
    pub bloom_negatives: u64,
    /// fsyncs of the WAL.
    pub wal_syncs: u64,
    /// Write groups committed (each one WAL write, at most one fsync).
    pub write_groups: u64,
    /// Write batches committed.
    pub writes: u64,
    /// Periodic checkpoints taken.
    pub checkpoints: u64,
    /// Periodic checkpoints that failed (the next one starts a new chain).
    pub checkpoint_failures: u64,
    /// Number of tables per level.
    pub level_files: Vec<usize>,
    /// Bytes of tables per level.
    pub level_bytes: Vec<u64>,
    /// Bytes compactions still owe: level 0's tables once it is at its
    /// trigger, plus every deeper level's bytes over its budget. An
    /// estimate of backlog (it counts each byte once, not the rewrites of
    /// the levels below it that a compaction also costs).
    pub compaction_debt_bytes: u64,
}

impl Statistics {
    /// Bytes written to disk (WAL, flushes, compactions) per byte the user wrote.
    pub fn write_amplification(&self) -> f64 {
        if self.user_bytes_written == 0 {
            return 0.0;
        }
        (self.wal_bytes_written + self.flush_bytes_written + self.compaction_bytes_written) as f64
            / self.user_bytes_written as f64
    }
}
