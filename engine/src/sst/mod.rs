//! Sorted string tables: immutable files of sorted internal entries.
//!
//! A table is written once by [`builder::TableBuilder`] (flush or
//! compaction), synced, and only then named in the manifest. It is read
//! through `mmap` by [`table::Table`], which keeps its index and bloom
//! filter in memory and data blocks in the shared block cache. Every block
//! carries its own CRC32, checked on every read from the file.

pub(crate) mod block;
pub(crate) mod bloom;
pub(crate) mod builder;
pub(crate) mod format;
pub(crate) mod table;

use std::path::{Path, PathBuf};

/// File name of table `number` inside `dir`.
pub(crate) fn table_path(dir: &Path, number: u64) -> PathBuf {
    dir.join(format!("{number:06}.sst"))
}
