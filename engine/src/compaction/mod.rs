//! Compaction: merging tables into the next level, dropping what no reader
//! can see any more.
//!
//! [`leveled`] decides *what* to compact; [`job`] runs the merge and writes
//! the output tables; [`retention`] decides entry by entry what survives.
//! Flushes use the same retention rules and output writer.

pub(crate) mod job;
pub(crate) mod leveled;
pub(crate) mod output;
pub(crate) mod retention;

use crate::manifest::version::TableFile;
use std::sync::Arc;

/// One unit of compaction work: tables of `level` merged with the tables of
/// `level + 1` they overlap, written to `level + 1`.
#[derive(Debug, Clone)]
pub(crate) struct Compaction {
    pub(crate) level: usize,
    pub(crate) inputs: Vec<Arc<TableFile>>,
    pub(crate) next_level_inputs: Vec<Arc<TableFile>>,
    /// Manual compactions rewrite even a lone table, to drop what it hides.
    pub(crate) allow_trivial_move: bool,
}

impl Compaction {
    pub(crate) fn output_level(&self) -> usize {
        self.level + 1
    }

    /// A single table with nothing under it moves down without rewriting.
    pub(crate) fn is_trivial_move(&self) -> bool {
        self.allow_trivial_move && self.inputs.len() == 1 && self.next_level_inputs.is_empty()
    }

    pub(crate) fn all_inputs(&self) -> impl Iterator<Item = (usize, &Arc<TableFile>)> {
        self.inputs
            .iter()
            .map(|f| (self.level, f))
            .chain(self.next_level_inputs.iter().map(|f| (self.level + 1, f)))
    }

    pub(crate) fn input_bytes(&self) -> u64 {
        self.all_inputs().map(|(_, f)| f.meta.size).sum()
    }
}
