//! Opening a database: lock, manifest, WAL replay, cleanup.
//!
//! Replay order and its invariants:
//! 1. The manifest gives the live tables, the first WAL segment still
//!    needed (`log_number`) and the highest sequence already in tables.
//! 2. Segments from `log_number` on are replayed in order into a memtable;
//!    operations at or below the tables' sequence are skipped, so replaying
//!    a segment twice (after a crash during recovery) is harmless.
//! 3. Only the last segment may end in a torn write; it is cut back to its
//!    last good record *before* a new segment is created, so a later
//!    recovery never meets that damage in a segment that is not last.
//! 4. Files no version names (orphaned tables, old segments, old
//!    manifests, temporary files) are deleted last.

use super::{Inner, State, SuperVersion, WalState};
use crate::batch::BatchIter;
use crate::cache::BlockCache;
use crate::error::IoContext;
use crate::flush::write_level0;
use crate::fs::FileSystem;
use crate::manifest::edit::VersionEdit;
use crate::manifest::version::Version;
use crate::manifest::{manifest_name, Recovered, VersionSet};
use crate::memtable::Memtable;
use crate::options::{Options, WalRecovery};
use crate::sst::builder::TableOptions;
use crate::stats::Counters;
use crate::wal::{read_segment, segment_path, LogKind, LogWriter, TailPolicy};
use crate::{Error, Result};
use parking_lot::{Condvar, Mutex};
use std::collections::{BTreeMap, HashSet, VecDeque};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// What recovery found and did when the database was opened.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    /// WAL segments replayed.
    pub wal_segments: usize,
    /// WAL records (write batches) replayed.
    pub wal_records: u64,
    /// A torn write cut off the last segment: file, offset, bytes dropped.
    pub torn_tail: Option<(PathBuf, u64, u64)>,
    /// Damage skipped in salvage mode: file, offset, reason.
    pub salvaged: Vec<(PathBuf, u64, String)>,
    /// Tables flushed during replay because the WAL held more than a memtable.
    pub tables_flushed: usize,
}

fn parse_number(name: &str, suffix: &str) -> Option<u64> {
    name.strip_suffix(suffix)?.parse().ok()
}

pub(crate) fn open(dir: &Path, options: Options) -> Result<Inner> {
    options.validate()?;
    let fs = options.fs.clone();
    if !fs.exists(dir) && !options.create_if_missing {
        return Err(Error::InvalidOptions(format!(
            "{} does not exist",
            dir.display()
        )));
    }
    fs.create_dir_durable(dir).at(dir)?;
    let lock_path = dir.join("LOCK");
    let lock = fs.lock(&lock_path).map_err(|e| match e.kind() {
        io::ErrorKind::WouldBlock => Error::Locked {
            path: dir.to_path_buf(),
        },
        _ => Error::io(&lock_path, e),
    })?;
    let counters = Arc::new(Counters::default());
    let cache = Arc::new(BlockCache::new(options.block_cache_bytes));
    let names = fs.list(dir).at(dir)?;

    let recovered = if VersionSet::exists(&*fs, dir) {
        VersionSet::recover(&fs, dir, &cache, &counters)?
    } else {
        let has_data = names
            .iter()
            .any(|n| n.ends_with(".sst") || n.ends_with(".log"));
        if has_data {
            return Err(Error::corruption(
                dir.join("CURRENT"),
                0,
                "CURRENT is missing but the directory holds database files",
            ));
        }
        // A first open stopped (a crash, a kill) between writing its
        // manifest and CURRENT, which is replaced atomically ever after:
        // no table and no log was written yet, so nothing was ever
        // acknowledged. Its manifests are of no database.
        for name in names.iter().filter(|n| n.starts_with("MANIFEST-")) {
            fs.remove_file(&dir.join(name)).at(&dir.join(name))?;
        }
        if !options.create_if_missing {
            return Err(Error::InvalidOptions(format!(
                "no database in {}",
                dir.display()
            )));
        }
        Recovered {
            version: Version::default(),
            log_number: 0,
            next_file_number: 1,
            last_sequence: 0,
        }
    };
    let highest_on_disk = names
        .iter()
        .filter_map(|n| {
            parse_number(n, ".sst")
                .or_else(|| parse_number(n, ".log"))
                .or_else(|| n.strip_prefix("MANIFEST-")?.parse().ok())
        })
        .max()
        .unwrap_or(0);
    let next_file_number = AtomicU64::new(recovered.next_file_number.max(highest_on_disk + 1));
    let new_number = || next_file_number.fetch_add(1, Ordering::SeqCst);

    let manifest_number = new_number();
    let flushed_sequence = recovered.last_sequence;
    let mut versions = VersionSet::create(
        fs.clone(),
        dir,
        cache.clone(),
        counters.clone(),
        recovered.version,
        manifest_number,
        recovered.log_number,
        next_file_number.load(Ordering::SeqCst),
        recovered.last_sequence,
    )?;

    // Replay the WAL.
    let mut segments: Vec<u64> = names
        .iter()
        .filter_map(|n| parse_number(n, ".log"))
        .filter(|&n| n >= recovered.log_number)
        .collect();
    segments.sort_unstable();
    let wal_number = new_number();
    let mut report = RecoveryReport::default();
    let mut memtable = Arc::new(Memtable::new(
        segments.first().copied().unwrap_or(wal_number),
        options.write_buffer_bytes,
    ));
    let mut last_sequence = flushed_sequence;
    for (index, &segment) in segments.iter().enumerate() {
        let path = segment_path(dir, segment);
        let policy = match options.wal_recovery {
            WalRecovery::Salvage => TailPolicy::Salvage,
            WalRecovery::TolerateTornTail if index + 1 == segments.len() => {
                TailPolicy::TolerateTornTail
            }
            WalRecovery::TolerateTornTail => TailPolicy::Strict,
        };
        let outcome = read_segment(&*fs, &path, LogKind::Wal, policy, |sequence, payload| {
            let ops = BatchIter::decode(payload).ok_or_else(|| {
                Error::corruption(
                    &path,
                    0,
                    format!("batch at sequence {sequence} has no header"),
                )
            })?;
            // The record's ops go in together, as a write group's do.
            let mut entries = Vec::new();
            for (offset, op) in ops.enumerate() {
                let op = op.ok_or_else(|| {
                    Error::corruption(
                        &path,
                        0,
                        format!("batch at sequence {sequence} does not decode"),
                    )
                })?;
                let op_sequence = sequence.saturating_add(offset as u64);
                if op_sequence > crate::key::MAX_SEQUENCE {
                    return Err(Error::corruption(
                        &path,
                        0,
                        format!("batch at sequence {sequence} passes the largest sequence"),
                    ));
                }
                if op_sequence <= flushed_sequence {
                    continue;
                }
                entries.push((op.key, op_sequence, op.kind, op.value));
                last_sequence = last_sequence.max(op_sequence);
            }
            memtable.insert_all(&entries);
            report.wal_records += 1;
            if memtable.approximate_bytes() >= options.write_buffer_bytes {
                // The segment held more than one memtable (e.g. the write
                // buffer was made smaller): flush now to bound memory.
                let table_options = TableOptions::from(&options);
                let edit = write_level0(
                    &*fs,
                    dir,
                    table_options,
                    &memtable,
                    Vec::new(),
                    segment,
                    &new_number,
                )?;
                apply(&mut versions, edit, &next_file_number)?;
                report.tables_flushed += 1;
                memtable = Arc::new(Memtable::new(segment, options.write_buffer_bytes));
            }
            Ok(())
        })?;
        report.wal_segments += 1;
        if outcome.damage.is_none() && outcome.unused_bytes > 0 {
            // The segment's reserved space, left by a crash: cut it (durably)
            // so that the segment, no longer the last, ends at its records.
            fs.truncate(&path, outcome.valid_len).at(&path)?;
        }
        if let Some((offset, reason)) = outcome.damage {
            if outcome.valid_len < crate::wal::record::SEGMENT_HEADER_LEN as u64 {
                // Not even the header reached the disk: the segment holds
                // nothing. Remove it, or it would sit before the next
                // segment as a damaged non-last one.
                fs.remove_file(&path).at(&path)?;
                fs.sync_dir(dir).at(dir)?;
            } else {
                fs.truncate(&path, outcome.valid_len).at(&path)?;
            }
            match policy {
                TailPolicy::Salvage => report.salvaged.push((path.clone(), offset, reason)),
                _ => report.torn_tail = Some((path.clone(), offset, outcome.dropped_bytes)),
            }
        }
    }

    // A fresh segment for new writes, durable in the directory before any
    // write can be acknowledged.
    let wal_path = segment_path(dir, wal_number);
    let writer = LogWriter::create_reserving(&*fs, &wal_path, LogKind::Wal)?;
    fs.sync_dir(dir).at(dir)?;
    if memtable.is_empty() {
        // Everything replayed is already in tables: retire the old segments.
        memtable = Arc::new(Memtable::new(wal_number, options.write_buffer_bytes));
        let edit = VersionEdit {
            log_number: Some(wal_number),
            ..VersionEdit::default()
        };
        apply(&mut versions, edit, &next_file_number)?;
    }

    delete_obsolete_files(&*fs, dir, &versions, versions.log_number, manifest_number)?;

    let version = versions.current();
    let super_version = Arc::new(SuperVersion {
        mem: memtable.clone(),
        imm: Vec::new(),
        version: version.clone(),
    });
    Ok(Inner {
        dir: dir.to_path_buf(),
        fs,
        counters,
        state: Mutex::new(State {
            mem: memtable,
            imm: VecDeque::new(),
            version,
            super_version,
            background_error: None,
            closing: false,
        }),
        work: Condvar::new(),
        versions: Mutex::new(versions),
        wal: Mutex::new(WalState {
            writer,
            dirty: false,
        }),
        queue: Mutex::default(),
        queue_changed: Condvar::new(),
        leader_syncing: std::sync::atomic::AtomicBool::new(false),
        writer_spinning: std::sync::atomic::AtomicBool::new(false),
        next_file_number,
        last_sequence: AtomicU64::new(last_sequence),
        visible_sequence: AtomicU64::new(last_sequence),
        snapshots: Mutex::new(BTreeMap::new()),
        flush_lock: Mutex::new(()),
        compaction: Mutex::default(),
        lock_file: Mutex::new(Some(lock)),
        threads: Mutex::new(Vec::new()),
        report,
        options,
    })
}

fn apply(versions: &mut VersionSet, edit: VersionEdit, next_file_number: &AtomicU64) -> Result<()> {
    let opened = versions.open_added(&edit)?;
    versions.log_and_apply(edit, opened, next_file_number)?;
    Ok(())
}

fn delete_obsolete_files(
    fs: &dyn FileSystem,
    dir: &Path,
    versions: &VersionSet,
    log_number: u64,
    manifest_number: u64,
) -> Result<()> {
    let live: HashSet<u64> = versions
        .current()
        .all_files()
        .map(|(_, f)| f.meta.number)
        .collect();
    let current_manifest = manifest_name(versions.manifest_number().max(manifest_number));
    for name in fs.list(dir).at(dir)? {
        let obsolete = if let Some(number) = parse_number(&name, ".sst") {
            !live.contains(&number)
        } else if let Some(number) = parse_number(&name, ".log") {
            number < log_number
        } else if name.starts_with("MANIFEST-") {
            name != current_manifest
        } else {
            name.ends_with(".tmp")
        };
        if obsolete {
            let path = dir.join(&name);
            fs.remove_file(&path).at(&path)?;
        }
    }
    Ok(())
}
