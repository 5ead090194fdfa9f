//! # ferry-engine
//!
//! Ferry's storage engine: a log-structured merge tree with its own
//! segmented write-ahead log, written for a replicated state store that
//! must never lose an acknowledged write.
//!
//! ## Design
//!
//! A write is appended to the [WAL](wal) (CRC32-framed records, group
//! commit, fsync per [`Durability`]), then inserted into the memtable (a
//! skip list in an arena, one writer and lock-free readers, with an
//! in-memory bloom filter of its keys) and
//! made visible by publishing its sequence number. A full memtable is sealed and flushed by a background thread to
//! a level-0 [table](sst) (lz4 blocks with CRCs, bloom filter, mmap reads);
//! [leveled compaction](compaction) merges tables down the levels. The
//! [manifest] is the durable list of live tables: a table exists only once
//! a synced manifest edit names it. Small self-describing files (a
//! checkpoint's `CHECKPOINT`, and the replication layer's own) share one
//! [envelope]: magic, version, length and CRC.
//!
//! ## Invariants
//!
//! - A write is acknowledged only after its WAL record is written (and,
//!   under `Sync`, fsynced); recovery replays every such record.
//! - Sequence numbers are dense and increase with commit order; a reader at
//!   sequence `s` sees exactly the writes with sequence `<= s`.
//! - A WAL segment is deleted only after a durable manifest edit says its
//!   data is in tables; a table file only after no version, iterator or
//!   snapshot can still read it.
//! - Damage is never returned as data: every record, block and footer is
//!   checksummed, and a mismatch is an error naming file and offset.
//!
//! ```
//! use ferry_engine::{Db, Options};
//! # let dir = tempfile::tempdir().unwrap();
//! let db = Db::open(dir.path(), Options::default())?;
//! db.put(b"workflow/7/state", b"waiting")?;
//! assert_eq!(db.get(b"workflow/7/state")?.as_deref(), Some(&b"waiting"[..]));
//! # Ok::<(), ferry_engine::Error>(())
//! ```

#![warn(missing_docs)]

mod batch;
mod cache;
pub mod checkpoint;
pub mod columnar;
pub mod compaction;
mod db;
pub mod envelope;
mod error;
mod flush;
pub mod fs;
#[doc(hidden)]
pub mod fuzzing;
mod iter;
mod key;
pub mod manifest;
mod memtable;
mod options;
pub mod sst;
mod stats;
mod varint;
pub mod wal;

pub use batch::{SavePoint, WriteBatch};

pub use db::{prefix_end, BulkLoader, BulkReport, Db, DbIterator, RecoveryReport, Snapshot};
pub use error::{Error, Result};
pub use key::SeqNo;
pub use options::{Durability, Options, WalRecovery, WriteOptions};
pub use stats::Statistics;
