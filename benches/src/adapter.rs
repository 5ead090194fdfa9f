//! Storage engines behind one interface, so each workload is written once
//! and runs unchanged against Ferry and its peers.
//!
//! Every engine is configured alike where the knob exists: a 256 MiB block
//! cache, lz4 data blocks, bloom filters, and writes that reach the OS on
//! every put (buffered) or are fsynced before the put returns (sync).
//! Errors panic: a benchmark run with a failing engine has no meaning.

use std::fs;
use std::hint::black_box;
use std::path::{Path, PathBuf};

/// Every engine this build can open, comma-separated; also the default of `--engines`.
pub const AVAILABLE: &str = if cfg!(feature = "rocksdb") {
    "ferry,fjall,rocksdb"
} else {
    "ferry,fjall"
};

/// Block cache given to every engine (Ferry's default), so reads compare
/// engines rather than cache sizes.
const BLOCK_CACHE_BYTES: u64 = 256 << 20;

/// A key-value engine as the workloads see it.
pub trait Engine: Send + Sync {
    fn name(&self) -> &str;
    /// Writes `key`; with `sync` the write is on stable storage when this returns.
    fn put(&self, key: &[u8], value: &[u8], sync: bool);
    fn get(&self, key: &[u8]) -> Option<Vec<u8>>;
    /// Visits every entry in key order; returns how many there were.
    fn scan_all(&self) -> u64;
    /// Writes the memtable out as a table, so size and write amplification
    /// describe the tree rather than what is still in memory.
    fn flush(&self);
    /// Bytes of every file under the engine's directory.
    fn disk_bytes(&self) -> u64;
    /// Bytes written to disk (WAL, flushes, compactions) per user byte, if
    /// the engine exposes the counters.
    fn write_amp(&self) -> Option<f64>;
}

/// Opens engine `name` in `dir` (created if missing). With `sync_default`
/// every write is synced, whatever its own `sync` flag says.
///
/// Panics on a name outside [`AVAILABLE`]; callers validate names first.
pub fn open(name: &str, dir: &Path, sync_default: bool) -> Box<dyn Engine> {
    fs::create_dir_all(dir).unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
    match name {
        "ferry" => Box::new(Ferry::open(dir, sync_default)),
        "fjall" => Box::new(Fjall::open(dir, sync_default)),
        #[cfg(feature = "rocksdb")]
        "rocksdb" => Box::new(rocks::Rocks::open(dir, sync_default)),
        other => panic!("unknown engine {other:?}; this build has {AVAILABLE}"),
    }
}

/// Total size of the files under `dir`.
///
/// Background compaction deletes files while we walk, so a file or
/// directory that vanishes (or cannot be read) counts as zero instead of
/// failing the run.
fn dir_bytes(dir: &Path) -> u64 {
    let Ok(entries) = fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|entry| match entry.metadata() {
            Ok(metadata) if metadata.is_dir() => dir_bytes(&entry.path()),
            Ok(metadata) => metadata.len(),
            Err(_) => 0,
        })
        .sum()
}

struct Ferry {
    db: ferry_engine::Db,
    dir: PathBuf,
}

impl Ferry {
    /// Per-write override used for sync puts; the database default stays
    /// `Buffered` so that plain puts need no options.
    const SYNC: ferry_engine::WriteOptions = ferry_engine::WriteOptions {
        durability: Some(ferry_engine::Durability::Sync),
    };

    fn open(dir: &Path, sync_default: bool) -> Self {
        use ferry_engine::{Durability, Options};
        let options = Options {
            durability: if sync_default {
                Durability::Sync
            } else {
                Durability::Buffered
            },
            block_cache_bytes: BLOCK_CACHE_BYTES,
            ..Options::default()
        };
        let db = ferry_engine::Db::open(dir, options).expect("ferry: open failed");
        Ferry {
            db,
            dir: dir.to_path_buf(),
        }
    }
}

impl Engine for Ferry {
    fn name(&self) -> &str {
        "ferry"
    }

    fn put(&self, key: &[u8], value: &[u8], sync: bool) {
        if sync {
            let mut batch = ferry_engine::WriteBatch::new();
            batch.put(key, value);
            self.db
                .write_opt(batch, &Self::SYNC)
                .expect("ferry: sync put failed");
        } else {
            self.db.put(key, value).expect("ferry: put failed");
        }
    }

    fn get(&self, key: &[u8]) -> Option<Vec<u8>> {
        self.db.get(key).expect("ferry: get failed")
    }

    fn scan_all(&self) -> u64 {
        let mut entries = 0;
        for entry in self.db.iter() {
            black_box(entry.expect("ferry: scan failed"));
            entries += 1;
        }
        entries
    }

    fn flush(&self) {
        self.db.flush().expect("ferry: flush failed");
    }

    fn disk_bytes(&self) -> u64 {
        dir_bytes(&self.dir)
    }

    fn write_amp(&self) -> Option<f64> {
        Some(self.db.statistics().write_amplification())
    }
}

struct Fjall {
    // Declared before `db` so the keyspace handle is dropped first.
    keyspace: fjall::Keyspace,
    db: fjall::Database,
    sync_default: bool,
    dir: PathBuf,
}

impl Fjall {
    fn open(dir: &Path, sync_default: bool) -> Self {
        // Keyspace defaults already match the other engines where it
        // matters: 64 MiB memtable, bloom filters, lz4 on the last level.
        let db = fjall::Database::builder(dir)
            .cache_size(BLOCK_CACHE_BYTES)
            .open()
            .expect("fjall: open failed");
        let keyspace = db
            .keyspace("bench", fjall::KeyspaceCreateOptions::default)
            .expect("fjall: cannot open keyspace");
        Fjall {
            keyspace,
            db,
            sync_default,
            dir: dir.to_path_buf(),
        }
    }
}

impl Engine for Fjall {
    fn name(&self) -> &str {
        "fjall"
    }

    fn put(&self, key: &[u8], value: &[u8], sync: bool) {
        // `insert` hands the journal to the OS (PersistMode::Buffer) unless
        // manual persist is configured, which is the same guarantee as
        // Ferry's Buffered; fjall has no per-write sync flag, so a sync put
        // persists the journal right after. SyncData (fdatasync) is what
        // Ferry's WAL and RocksDB's sync writes use too.
        self.keyspace.insert(key, value).expect("fjall: put failed");
        if sync || self.sync_default {
            self.db
                .persist(fjall::PersistMode::SyncData)
                .expect("fjall: persist failed");
        }
    }

    fn get(&self, key: &[u8]) -> Option<Vec<u8>> {
        self.keyspace
            .get(key)
            .expect("fjall: get failed")
            .map(|value| value.to_vec())
    }

    fn scan_all(&self) -> u64 {
        let mut entries = 0;
        for guard in self.keyspace.iter() {
            let (key, value) = guard.into_inner().expect("fjall: scan failed");
            black_box((key.len(), value.len()));
            entries += 1;
        }
        entries
    }

    fn flush(&self) {
        // fjall 3 has no public flush; this hidden (but public) helper seals
        // the memtable and waits until it is written as a table.
        self.keyspace
            .rotate_memtable_and_wait()
            .expect("fjall: flush failed");
    }

    fn disk_bytes(&self) -> u64 {
        dir_bytes(&self.dir)
    }

    fn write_amp(&self) -> Option<f64> {
        // fjall keeps its byte counters private (the metrics API is behind
        // a hidden feature), so there is nothing honest to report.
        None
    }
}

#[cfg(feature = "rocksdb")]
mod rocks {
    use super::{black_box, dir_bytes, Engine, BLOCK_CACHE_BYTES};
    use rocksdb::statistics::Ticker;
    use rocksdb::{BlockBasedOptions, Cache, DBCompressionType, Options, WriteOptions, DB};
    use std::path::{Path, PathBuf};

    pub struct Rocks {
        // Declared first so the database closes before the options (and the
        // statistics object they own) are dropped.
        db: DB,
        options: Options,
        buffered: WriteOptions,
        sync: WriteOptions,
        dir: PathBuf,
    }

    impl Rocks {
        pub fn open(dir: &Path, sync_default: bool) -> Self {
            let mut table = BlockBasedOptions::default();
            table.set_block_cache(&Cache::new_lru_cache(BLOCK_CACHE_BYTES as usize));
            // Full (not block-based) filter, 10 bits per key like Ferry.
            table.set_bloom_filter(10.0, false);

            let mut options = Options::default();
            options.create_if_missing(true);
            options.set_compression_type(DBCompressionType::Lz4);
            options.set_block_based_table_factory(&table);
            // Statistics give the byte counters behind write_amp().
            options.enable_statistics();
            let db = DB::open(&options, dir).expect("rocksdb: open failed");

            let mut buffered = WriteOptions::default();
            buffered.set_sync(sync_default);
            let mut sync = WriteOptions::default();
            sync.set_sync(true);
            Rocks {
                db,
                options,
                buffered,
                sync,
                dir: dir.to_path_buf(),
            }
        }
    }

    impl Engine for Rocks {
        fn name(&self) -> &str {
            "rocksdb"
        }

        fn put(&self, key: &[u8], value: &[u8], sync: bool) {
            let options = if sync { &self.sync } else { &self.buffered };
            self.db
                .put_opt(key, value, options)
                .expect("rocksdb: put failed");
        }

        fn get(&self, key: &[u8]) -> Option<Vec<u8>> {
            self.db.get(key).expect("rocksdb: get failed")
        }

        fn scan_all(&self) -> u64 {
            let mut iter = self.db.raw_iterator();
            iter.seek_to_first();
            let mut entries = 0;
            while iter.valid() {
                black_box((iter.key().map(<[u8]>::len), iter.value().map(<[u8]>::len)));
                entries += 1;
                iter.next();
            }
            // An invalid iterator means either the end or an error.
            iter.status().expect("rocksdb: scan failed");
            entries
        }

        fn flush(&self) {
            self.db.flush().expect("rocksdb: flush failed");
        }

        fn disk_bytes(&self) -> u64 {
            dir_bytes(&self.dir)
        }

        fn write_amp(&self) -> Option<f64> {
            // Same definition as Ferry's: WAL + flush + compaction bytes per
            // user byte.
            let user = self.options.get_ticker_count(Ticker::BytesWritten);
            if user == 0 {
                return None;
            }
            let written = self.options.get_ticker_count(Ticker::WalFileBytes)
                + self.options.get_ticker_count(Ticker::FlushWriteBytes)
                + self.options.get_ticker_count(Ticker::CompactWriteBytes);
            Some(written as f64 / user as f64)
        }
    }
}
