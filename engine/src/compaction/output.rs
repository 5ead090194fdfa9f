//! Writing a sorted stream into one or more new tables.

use crate::error::IoContext;
use crate::fs::FileSystem;
use crate::key;
use crate::manifest::edit::TableMeta;
use crate::sst::builder::{TableBuilder, TableOptions};
use crate::sst::table_path;
use crate::Result;
use std::path::{Path, PathBuf};

/// Splits its input into tables of about `target_bytes`, never between two
/// versions of one user key (so tables of one level never share a key).
pub(crate) struct OutputTables<'a> {
    fs: &'a dyn FileSystem,
    dir: &'a Path,
    options: TableOptions,
    target_bytes: u64,
    new_number: &'a dyn Fn() -> u64,
    current: Option<(u64, TableBuilder)>,
    last_user_key: Vec<u8>,
    finished: Vec<TableMeta>,
    /// Every file created so far, finished or not: removed on failure.
    created: Vec<PathBuf>,
    pub(crate) bytes_written: u64,
}

impl<'a> OutputTables<'a> {
    pub(crate) fn new(
        fs: &'a dyn FileSystem,
        dir: &'a Path,
        options: TableOptions,
        target_bytes: u64,
        new_number: &'a dyn Fn() -> u64,
    ) -> Self {
        OutputTables {
            fs,
            dir,
            options,
            target_bytes,
            new_number,
            current: None,
            last_user_key: Vec::new(),
            finished: Vec::new(),
            created: Vec::new(),
            bytes_written: 0,
        }
    }

    pub(crate) fn add(&mut self, internal_key: &[u8], value: &[u8]) -> Result<()> {
        let user_key = key::user_key(internal_key);
        let split = self.current.as_ref().is_some_and(|(_, b)| {
            b.estimated_len() >= self.target_bytes && self.last_user_key != user_key
        });
        if split {
            self.finish_current()?;
        }
        if self.current.is_none() {
            let number = (self.new_number)();
            let path = table_path(self.dir, number);
            let file = self.fs.create(&path).at(&path)?;
            self.created.push(path.clone());
            self.current = Some((number, TableBuilder::new(file, &path, self.options)));
        }
        if let Some((_, builder)) = &mut self.current {
            builder.add(internal_key, value)?;
        }
        self.last_user_key.clear();
        self.last_user_key.extend_from_slice(user_key);
        Ok(())
    }

    fn finish_current(&mut self) -> Result<()> {
        if let Some((number, builder)) = self.current.take() {
            let finished = builder.finish()?;
            let (properties, size) = (finished.properties, finished.size);
            self.bytes_written += size;
            self.finished.push(TableMeta {
                number,
                size,
                file_crc: finished.file_crc,
                min_sequence: properties.min_sequence,
                max_sequence: properties.max_sequence,
                smallest: properties.smallest,
                largest: properties.largest,
            });
        }
        Ok(())
    }

    /// Finishes the last table and syncs the directory, so the tables are
    /// durable before any manifest edit names them.
    pub(crate) fn finish(mut self) -> Result<Vec<TableMeta>> {
        self.finish_current()?;
        self.fs.sync_dir(self.dir).at(self.dir)?;
        self.created.clear();
        Ok(std::mem::take(&mut self.finished))
    }
}

impl Drop for OutputTables<'_> {
    fn drop(&mut self) {
        // Reached with files still listed only when the job failed: remove
        // the partial outputs (no manifest names them).
        for path in &self.created {
            let _ = self.fs.remove_file(path);
        }
    }
}
