//! Running one compaction: merge, filter, write, describe as an edit.

use super::output::OutputTables;
use super::retention::Retention;
use super::Compaction;
use crate::fs::FileSystem;
use crate::iter::merge::MergeIter;
use crate::iter::EntryIter;
use crate::key::SeqNo;
use crate::manifest::edit::VersionEdit;
use crate::manifest::version::{Version, NUM_LEVELS};
use crate::sst::builder::TableOptions;
use crate::sst::table::TableIter;
use crate::Result;
use std::path::Path;

/// Everything a compaction needs from the database.
pub(crate) struct JobContext<'a> {
    pub(crate) fs: &'a dyn FileSystem,
    pub(crate) dir: &'a Path,
    pub(crate) table_options: TableOptions,
    pub(crate) target_file_bytes: u64,
    pub(crate) new_number: &'a dyn Fn() -> u64,
    pub(crate) snapshots: Vec<SeqNo>,
}

/// What a finished compaction produced.
pub(crate) struct JobResult {
    pub(crate) edit: VersionEdit,
    pub(crate) bytes_read: u64,
    pub(crate) bytes_written: u64,
}

pub(crate) fn run(
    compaction: &Compaction,
    version: &Version,
    context: &JobContext<'_>,
) -> Result<JobResult> {
    let output_level = compaction.output_level();
    let mut edit = VersionEdit::default();
    for (level, file) in compaction.all_inputs() {
        edit.deleted.push((level, file.meta.number));
    }
    if compaction.is_trivial_move() {
        edit.added
            .push((output_level, compaction.inputs[0].meta.clone()));
        return Ok(JobResult {
            edit,
            bytes_read: 0,
            bytes_written: 0,
        });
    }

    let children: Vec<Box<dyn EntryIter>> = compaction
        .all_inputs()
        .map(|(_, f)| Box::new(TableIter::new(f.table.clone(), false)) as Box<dyn EntryIter>)
        .collect();
    let mut merge = MergeIter::new(children, false);
    merge.seek(None)?;
    let mut retention = Retention::new(context.snapshots.clone());
    let deeper = &version.levels[(output_level + 1).min(NUM_LEVELS)..];
    let is_bottom = |user_key: &[u8]| {
        deeper.iter().all(|files| {
            files
                .iter()
                .all(|f| !f.overlaps(Some(user_key), Some(user_key)))
        })
    };
    let mut output = OutputTables::new(
        context.fs,
        context.dir,
        context.table_options,
        context.target_file_bytes,
        context.new_number,
    );
    while let Some((key, value)) = merge.current() {
        if retention.keep(key, is_bottom) {
            output.add(key, value)?;
        }
        merge.advance()?;
    }
    let bytes_written = output.bytes_written;
    let tables = output.finish()?;
    let bytes_written = bytes_written.max(tables.iter().map(|t| t.size).sum());
    for table in tables {
        edit.added.push((output_level, table));
    }
    Ok(JobResult {
        edit,
        bytes_read: compaction.input_bytes(),
        bytes_written,
    })
}
