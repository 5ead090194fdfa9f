//! Options of a database and of single writes.

use crate::fs::{FileSystem, OsFs};
use crate::{Error, Result};
use std::sync::Arc;
use std::time::Duration;

/// When a write is made durable on disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// The WAL is fsynced before the write returns. Concurrent writers share
    /// one fsync (group commit). Survives power loss.
    Sync,
    /// The WAL is handed to the OS on every write and fsynced by a background
    /// thread every `interval`: a power loss loses at most the writes of the
    /// last interval; a process crash loses nothing.
    Periodic(Duration),
    /// The WAL is handed to the OS on every write and fsynced only when a
    /// segment is closed. A process crash loses nothing, a power loss may
    /// lose everything since the last segment switch.
    Buffered,
}

/// What recovery does with a damaged WAL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WalRecovery {
    /// A torn record at the tail of the last segment (an interrupted write)
    /// is truncated and reported; damage anywhere else fails the open with
    /// the file and offset. The default.
    TolerateTornTail,
    /// Skips damaged records: the rest of a damaged segment is dropped and
    /// replay goes on with the next one. Acknowledged writes may be lost; the
    /// skipped ranges are reported in [`RecoveryReport`](crate::RecoveryReport).
    Salvage,
}

/// Options of a database, fixed when it is opened.
///
/// ```
/// use ferry_engine::{Durability, Options};
/// let options = Options {
///     durability: Durability::Sync,
///     write_buffer_bytes: 8 << 20,
///     ..Options::default()
/// };
/// assert!(options.validate().is_ok());
/// ```
#[derive(Debug, Clone)]
pub struct Options {
    /// Default durability of writes; each write may override it.
    pub durability: Durability,
    /// Size at which the memtable is switched and flushed to level 0.
    pub write_buffer_bytes: usize,
    /// Immutable memtables waiting for flush before writers stall.
    pub max_immutable_memtables: usize,
    /// Target size of one data block before compression.
    pub block_bytes: usize,
    /// Entries between restart points inside a block.
    pub block_restart_interval: usize,
    /// Bloom filter bits per key (10 gives about 1% false positives).
    pub bloom_bits_per_key: usize,
    /// Capacity of the cache of decompressed blocks.
    pub block_cache_bytes: u64,
    /// Compress data blocks with lz4.
    pub compression: bool,
    /// Level-0 file count that triggers a compaction into level 1.
    pub level0_compaction_trigger: usize,
    /// Level-0 file count at which each write is delayed.
    pub level0_slowdown_trigger: usize,
    /// Level-0 file count at which writes wait for compaction.
    pub level0_stop_trigger: usize,
    /// Target size of level 1; each further level is `level_size_multiplier` times larger.
    pub level1_max_bytes: u64,
    /// Growth factor between levels.
    pub level_size_multiplier: u64,
    /// Target size of one table written by compaction.
    pub target_file_bytes: u64,
    /// Largest accepted key.
    pub max_key_bytes: usize,
    /// Largest accepted value.
    pub max_value_bytes: usize,
    /// How recovery treats a damaged WAL.
    pub wal_recovery: WalRecovery,
    /// Run flush and compaction on background threads. When false they run
    /// only through [`Db::flush`](crate::Db::flush) and
    /// [`Db::compact_range`](crate::Db::compact_range) (deterministic tests).
    pub background_work: bool,
    /// Create the database if the directory holds none.
    pub create_if_missing: bool,
    /// Take delta checkpoints periodically (see
    /// [`PeriodicCheckpoints`](crate::checkpoint::periodic::PeriodicCheckpoints)
    /// for the recovery point this gives).
    pub periodic_checkpoints: Option<crate::checkpoint::periodic::PeriodicCheckpoints>,
    /// The file system all files go through.
    pub fs: Arc<dyn FileSystem>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            durability: Durability::Sync,
            write_buffer_bytes: 64 << 20,
            max_immutable_memtables: 2,
            block_bytes: 8 << 10,
            block_restart_interval: 16,
            bloom_bits_per_key: 10,
            block_cache_bytes: 256 << 20,
            compression: true,
            level0_compaction_trigger: 4,
            level0_slowdown_trigger: 20,
            level0_stop_trigger: 36,
            level1_max_bytes: 256 << 20,
            level_size_multiplier: 10,
            target_file_bytes: 64 << 20,
            max_key_bytes: 64 << 10,
            max_value_bytes: 64 << 20,
            wal_recovery: WalRecovery::TolerateTornTail,
            background_work: true,
            create_if_missing: true,
            periodic_checkpoints: None,
            fs: Arc::new(OsFs),
        }
    }
}

impl Options {
    /// Checks that the options are consistent.
    ///
    /// ```
    /// let bad = ferry_engine::Options { block_bytes: 0, ..Default::default() };
    /// assert!(bad.validate().is_err());
    /// ```
    pub fn validate(&self) -> Result<()> {
        let fail = |message: &str| Err(Error::InvalidOptions(message.to_owned()));
        if self.write_buffer_bytes < 4096 {
            return fail("write_buffer_bytes must be at least 4096");
        }
        if self.block_bytes == 0 || self.block_restart_interval == 0 {
            return fail("block_bytes and block_restart_interval must be positive");
        }
        if self.max_immutable_memtables == 0 {
            return fail("max_immutable_memtables must be at least 1");
        }
        if !(self.level0_compaction_trigger <= self.level0_slowdown_trigger
            && self.level0_slowdown_trigger <= self.level0_stop_trigger)
            || self.level0_compaction_trigger == 0
        {
            return fail("level-0 triggers must satisfy 0 < compaction <= slowdown <= stop");
        }
        if self.level_size_multiplier < 2
            || self.level1_max_bytes == 0
            || self.target_file_bytes == 0
        {
            return fail("level sizes must be positive and grow by at least 2x");
        }
        if self.max_key_bytes == 0 || self.max_key_bytes > u32::MAX as usize / 2 {
            return fail("max_key_bytes must be in 1..2^31");
        }
        if self.max_value_bytes > u32::MAX as usize / 2 {
            return fail("max_value_bytes must be below 2^31");
        }
        if let Durability::Periodic(interval) = self.durability {
            if interval.is_zero() {
                return fail("Periodic durability needs a non-zero interval");
            }
        }
        if let Some(periodic) = &self.periodic_checkpoints {
            if periodic.interval.is_zero() || periodic.keep_chains == 0 {
                return fail("periodic checkpoints need a non-zero interval and keep_chains");
            }
        }
        Ok(())
    }
}

/// Options of one write.
///
/// ```
/// use ferry_engine::{Durability, WriteOptions};
/// let sync = WriteOptions { durability: Some(Durability::Sync) };
/// # let _ = sync;
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct WriteOptions {
    /// Overrides the database's durability for this write.
    pub durability: Option<Durability>,
}
