//! A version: the set of live tables, level by level.
//!
//! Versions are immutable and shared (`Arc`): readers and iterators hold the
//! version they started with, so the tables it names stay open and on disk
//! until the last holder lets go (see [`TableFile`]'s `Drop`).
//!
//! Invariants, checked when a version is built:
//! - level 0 is ordered newest table first (tables may overlap);
//! - every deeper level is ordered by key and its tables do not overlap;
//! - for one user key, versions in a shallower level are newer.

use super::edit::{TableMeta, VersionEdit};
use crate::fs::FileSystem;
use crate::iter::EntryIter;
use crate::key;
use crate::memtable::Lookup;
use crate::sst::table::{PointQuery, Table, TableIter};
use crate::{Error, Result};
use std::cmp::Ordering;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering as AtomicOrdering};
use std::sync::Arc;

/// Number of levels.
pub(crate) const NUM_LEVELS: usize = 7;

/// A live table: its manifest entry and its open reader. When a compaction
/// makes it obsolete, the file is deleted as the last reference drops.
pub(crate) struct TableFile {
    pub(crate) meta: TableMeta,
    pub(crate) table: Arc<Table>,
    obsolete: AtomicBool,
    fs: Arc<dyn FileSystem>,
    path: PathBuf,
}

impl std::fmt::Debug for TableFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TableFile")
            .field("number", &self.meta.number)
            .finish()
    }
}

impl TableFile {
    pub(crate) fn new(meta: TableMeta, table: Arc<Table>, fs: Arc<dyn FileSystem>) -> Self {
        let path = table.path().to_path_buf();
        TableFile {
            meta,
            table,
            obsolete: AtomicBool::new(false),
            fs,
            path,
        }
    }

    pub(crate) fn mark_obsolete(&self) {
        self.obsolete.store(true, AtomicOrdering::Release);
    }

    pub(crate) fn smallest_user_key(&self) -> &[u8] {
        key::user_key(&self.meta.smallest)
    }

    pub(crate) fn largest_user_key(&self) -> &[u8] {
        key::user_key(&self.meta.largest)
    }

    /// Whether the table's key range meets `[start, end]` (user keys,
    /// `None` = unbounded).
    pub(crate) fn overlaps(&self, start: Option<&[u8]>, end: Option<&[u8]>) -> bool {
        start.is_none_or(|s| self.largest_user_key() >= s)
            && end.is_none_or(|e| self.smallest_user_key() <= e)
    }
}

impl Drop for TableFile {
    fn drop(&mut self) {
        if self.obsolete.load(AtomicOrdering::Acquire) {
            // Nothing references the table any more. A failed removal only
            // leaves an orphan, which the next open deletes.
            let _ = self.fs.remove_file(&self.path);
        }
    }
}

#[derive(Debug, Clone, Default)]
pub(crate) struct Version {
    pub(crate) levels: [Vec<Arc<TableFile>>; NUM_LEVELS],
}

impl Version {
    /// Applies an edit, producing the next version. `opened` holds the
    /// readers of the tables the edit adds.
    pub(crate) fn apply(
        &self,
        edit: &VersionEdit,
        opened: &mut HashMap<u64, Arc<TableFile>>,
    ) -> Result<Version> {
        let mut next = self.clone();
        for (level, number) in &edit.deleted {
            let files = next
                .levels
                .get_mut(*level)
                .ok_or_else(|| invalid(format!("level {level}")))?;
            let before = files.len();
            files.retain(|f| f.meta.number != *number);
            if files.len() == before {
                return Err(invalid(format!(
                    "deleting table {number} not in level {level}"
                )));
            }
        }
        for (level, meta) in &edit.added {
            let file = opened
                .remove(&meta.number)
                .ok_or_else(|| invalid(format!("table {} added but not opened", meta.number)))?;
            next.levels
                .get_mut(*level)
                .ok_or_else(|| invalid(format!("level {level}")))?
                .push(file);
        }
        next.levels[0].sort_by_key(|f| std::cmp::Reverse(f.meta.number));
        for level in 1..NUM_LEVELS {
            next.levels[level].sort_by(|a, b| key::compare(&a.meta.smallest, &b.meta.smallest));
        }
        next.check()?;
        Ok(next)
    }

    /// Checks the non-overlap invariant of levels 1 and deeper.
    fn check(&self) -> Result<()> {
        for (level, files) in self.levels.iter().enumerate().skip(1) {
            for pair in files.windows(2) {
                if pair[0].largest_user_key() >= pair[1].smallest_user_key() {
                    return Err(invalid(format!(
                        "tables {} and {} overlap in level {level}",
                        pair[0].meta.number, pair[1].meta.number
                    )));
                }
            }
        }
        Ok(())
    }

    pub(crate) fn level_bytes(&self, level: usize) -> u64 {
        self.levels[level].iter().map(|f| f.meta.size).sum()
    }

    pub(crate) fn all_files(&self) -> impl Iterator<Item = (usize, &Arc<TableFile>)> {
        self.levels
            .iter()
            .enumerate()
            .flat_map(|(level, files)| files.iter().map(move |f| (level, f)))
    }

    /// Tables of `level` that meet `[start, end]` (user keys).
    pub(crate) fn overlapping(
        &self,
        level: usize,
        start: Option<&[u8]>,
        end: Option<&[u8]>,
    ) -> Vec<Arc<TableFile>> {
        self.levels[level]
            .iter()
            .filter(|f| f.overlaps(start, end))
            .cloned()
            .collect()
    }

    /// The newest version of `user_key` at or below `sequence` in the tables.
    pub(crate) fn get(&self, query: &PointQuery) -> Result<Lookup> {
        let (user_key, sequence) = (query.user_key, query.sequence);
        for file in &self.levels[0] {
            if file.meta.min_sequence > sequence || !file.overlaps(Some(user_key), Some(user_key)) {
                continue;
            }
            match file.table.get(query)? {
                Lookup::Absent => {}
                found => return Ok(found),
            }
        }
        for files in &self.levels[1..] {
            let index = files.partition_point(|f| f.largest_user_key() < user_key);
            let Some(file) = files.get(index) else {
                continue;
            };
            if file.smallest_user_key() > user_key {
                continue;
            }
            match file.table.get(query)? {
                Lookup::Absent => {}
                found => return Ok(found),
            }
        }
        Ok(Lookup::Absent)
    }

    /// Cursors over every table: one per level-0 table, one per deeper level.
    pub(crate) fn iterators(&self, reverse: bool) -> Vec<Box<dyn EntryIter>> {
        let mut out: Vec<Box<dyn EntryIter>> = Vec::new();
        for file in &self.levels[0] {
            out.push(Box::new(TableIter::new(file.table.clone(), reverse)));
        }
        for files in &self.levels[1..] {
            if !files.is_empty() {
                out.push(Box::new(LevelIter::new(files.clone(), reverse)));
            }
        }
        out
    }
}

fn invalid(reason: String) -> Error {
    Error::corruption("MANIFEST", 0, reason)
}

/// A cursor over the non-overlapping, sorted tables of one level, opening
/// one table cursor at a time.
pub(crate) struct LevelIter {
    files: Vec<Arc<TableFile>>,
    reverse: bool,
    position: usize,
    current: Option<TableIter>,
}

impl LevelIter {
    pub(crate) fn new(files: Vec<Arc<TableFile>>, reverse: bool) -> Self {
        LevelIter {
            files,
            reverse,
            position: 0,
            current: None,
        }
    }

    fn open(&mut self, position: usize, target: Option<&[u8]>) -> Result<()> {
        self.position = position;
        self.current = match self.files.get(position) {
            Some(file) => {
                let mut iter = TableIter::new(file.table.clone(), self.reverse);
                iter.seek(target)?;
                Some(iter)
            }
            None => None,
        };
        Ok(())
    }

    /// Moves to neighbouring tables while the current one is exhausted.
    fn settle(&mut self) -> Result<()> {
        while self.current.as_ref().is_some_and(|c| c.current().is_none()) {
            let next = if self.reverse {
                self.position.checked_sub(1)
            } else {
                Some(self.position + 1)
            };
            match next {
                Some(position) if position < self.files.len() => self.open(position, None)?,
                _ => self.current = None,
            }
        }
        Ok(())
    }
}

impl EntryIter for LevelIter {
    fn seek(&mut self, target: Option<&[u8]>) -> Result<()> {
        if self.files.is_empty() {
            self.current = None;
            return Ok(());
        }
        let position = match (target, self.reverse) {
            (None, false) => 0,
            (None, true) => self.files.len() - 1,
            // First table whose largest key is >= target; in reverse the
            // answer is there or at the end of the table before it.
            (Some(t), reverse) => {
                let index = self
                    .files
                    .partition_point(|f| key::compare(&f.meta.largest, t) == Ordering::Less);
                if reverse {
                    index.min(self.files.len() - 1)
                } else {
                    index
                }
            }
        };
        self.open(position, target)?;
        self.settle()
    }

    fn advance(&mut self) -> Result<()> {
        if let Some(current) = &mut self.current {
            current.advance()?;
        }
        self.settle()
    }

    fn current(&self) -> Option<(&[u8], &[u8])> {
        self.current.as_ref()?.current()
    }
}
