//! Flush: turning a sealed memtable into level-0 tables.

use crate::compaction::output::OutputTables;
use crate::compaction::retention::Retention;
use crate::fs::FileSystem;
use crate::iter::EntryIter;
use crate::key::SeqNo;
use crate::manifest::edit::VersionEdit;
use crate::memtable::{Memtable, MemtableIter};
use crate::sst::builder::TableOptions;
use crate::Result;
use std::path::Path;
use std::sync::Arc;

/// Writes `memtable` to synced tables and returns the edit that adds them
/// to level 0. Versions no snapshot can see are dropped; tombstones are
/// kept (older values may live in deeper levels).
///
/// `log_number` is the first WAL segment still needed once the edit lands.
pub(crate) fn write_level0(
    fs: &dyn FileSystem,
    dir: &Path,
    table_options: TableOptions,
    memtable: &Arc<Memtable>,
    snapshots: Vec<SeqNo>,
    log_number: u64,
    new_number: &dyn Fn() -> u64,
) -> Result<VersionEdit> {
    let mut output = OutputTables::new(fs, dir, table_options, u64::MAX, new_number);
    let mut retention = Retention::new(snapshots);
    let mut entries = MemtableIter::new(memtable.clone(), false);
    entries.seek(None)?;
    while let Some((key, value)) = entries.current() {
        if retention.keep(key, |_| false) {
            output.add(key, value)?;
        }
        entries.advance()?;
    }
    let tables = output.finish()?;
    Ok(VersionEdit {
        log_number: Some(log_number),
        last_sequence: Some(memtable.max_sequence()),
        added: tables.into_iter().map(|t| (0, t)).collect(),
        ..VersionEdit::default()
    })
}
