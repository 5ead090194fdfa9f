//! Bulk loading: sorted rows written straight into tables of the bottom
//! level of an empty database, with no WAL and no per-key writes. What a
//! Parquet import, or any rebuild from sorted rows, is built on.

use super::{Db, Inner};
use crate::columnar::ContentChecksum;
use crate::compaction::output::OutputTables;
use crate::key::{self, SeqNo, ValueKind};
use crate::manifest::edit::{TableMeta, VersionEdit};
use crate::manifest::version::NUM_LEVELS;
use crate::{Error, Result};
use std::sync::atomic::Ordering;

/// What a bulk load wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BulkReport {
    /// Rows loaded.
    pub rows: u64,
    /// Content checksum of the rows (see [`crate::columnar`]).
    pub checksum: u64,
    /// The database's sequence afterwards.
    pub sequence: SeqNo,
    /// Tables written.
    pub tables: usize,
    /// Bytes of tables written.
    pub table_bytes: u64,
}

/// Takes the rows of a bulk load; see [`Db::bulk_load`].
pub struct BulkLoader<'a> {
    output: OutputTables<'a>,
    sequence: SeqNo,
    max_key_bytes: usize,
    max_value_bytes: usize,
    last_key: Vec<u8>,
    internal: Vec<u8>,
    checksum: ContentChecksum,
}

impl BulkLoader<'_> {
    /// Adds a row written at `sequence` (1 ..= the load's sequence); keys
    /// must come in strictly increasing order, within the database's key
    /// and value limits.
    pub fn add(&mut self, key: &[u8], value: &[u8], sequence: SeqNo) -> Result<()> {
        if self.checksum.rows() > 0 && self.last_key.as_slice() >= key {
            return Err(Error::InvalidOptions(format!(
                "bulk load row {} is not in strictly increasing key order",
                self.checksum.rows()
            )));
        }
        if sequence == 0 || sequence > self.sequence {
            return Err(Error::InvalidOptions(format!(
                "bulk load row sequence {sequence} outside 1..={}",
                self.sequence
            )));
        }
        if key.len() > self.max_key_bytes {
            return Err(Error::TooLarge {
                what: "key",
                size: key.len(),
                limit: self.max_key_bytes,
            });
        }
        if value.len() > self.max_value_bytes {
            return Err(Error::TooLarge {
                what: "value",
                size: value.len(),
                limit: self.max_value_bytes,
            });
        }
        self.checksum.add(key, value);
        self.internal.clear();
        key::encode_into(&mut self.internal, key, sequence, ValueKind::Put);
        self.output.add(&self.internal, value)?;
        self.last_key.clear();
        self.last_key.extend_from_slice(key);
        Ok(())
    }

    /// Rows added so far.
    pub fn rows(&self) -> u64 {
        self.checksum.rows()
    }

    /// The content checksum of the rows added so far.
    pub fn checksum(&self) -> u64 {
        self.checksum.value()
    }
}

impl Db {
    /// Bulk-loads rows into this database, which must be empty: `load`
    /// adds them (sorted, see [`BulkLoader::add`]) and they become tables
    /// of the bottom level, visible all at once, only if `load` and every
    /// row succeed; a failure leaves the database empty. Afterwards the
    /// database reads at `sequence`.
    ///
    /// ```
    /// # let dir = tempfile::tempdir().unwrap();
    /// let db = ferry_engine::Db::open(dir.path(), Default::default())?;
    /// let report = db.bulk_load(2, |rows| {
    ///     rows.add(b"a", b"1", 1)?;
    ///     rows.add(b"b", b"2", 2)
    /// })?;
    /// assert_eq!(report.rows, 2);
    /// assert_eq!(db.get(b"b")?.as_deref(), Some(&b"2"[..]));
    /// // Sequences have 56 bits: a load past them is refused.
    /// # let dir = tempfile::tempdir().unwrap();
    /// let db = ferry_engine::Db::open(dir.path(), Default::default())?;
    /// assert!(db.bulk_load(1 << 56, |rows| rows.add(b"a", b"1", 1)).is_err());
    /// # Ok::<(), ferry_engine::Error>(())
    /// ```
    pub fn bulk_load(
        &self,
        sequence: SeqNo,
        load: impl FnOnce(&mut BulkLoader<'_>) -> Result<()>,
    ) -> Result<BulkReport> {
        let inner = &self.inner;
        inner.with_writes_paused(|| inner.bulk_load(sequence, load))
    }
}

impl Inner {
    fn bulk_load(
        &self,
        sequence: SeqNo,
        load: impl FnOnce(&mut BulkLoader<'_>) -> Result<()>,
    ) -> Result<BulkReport> {
        if sequence > crate::key::MAX_SEQUENCE {
            return Err(Error::InvalidOptions(format!(
                "bulk load sequence {sequence} is past the largest, {}",
                crate::key::MAX_SEQUENCE
            )));
        }
        {
            let state = self.state.lock();
            let empty = self.visible_sequence() == 0
                && state.mem.is_empty()
                && state.imm.is_empty()
                && state.version.all_files().next().is_none();
            if !empty {
                return Err(Error::InvalidOptions(
                    "a bulk load needs an empty database".into(),
                ));
            }
        }
        let new_number = || self.new_file_number();
        let mut loader = BulkLoader {
            output: OutputTables::new(
                &*self.fs,
                &self.dir,
                self.table_options(),
                self.options.target_file_bytes,
                &new_number,
            ),
            sequence,
            max_key_bytes: self.options.max_key_bytes,
            max_value_bytes: self.options.max_value_bytes,
            last_key: Vec::new(),
            internal: Vec::new(),
            checksum: ContentChecksum::new(),
        };
        load(&mut loader)?;
        let (rows, checksum) = (loader.checksum.rows(), loader.checksum.value());
        if rows > 0 && sequence == 0 {
            return Err(Error::InvalidOptions("rows loaded at sequence 0".into()));
        }
        let tables: Vec<TableMeta> = loader.output.finish()?;
        let report = BulkReport {
            rows,
            checksum,
            sequence,
            tables: tables.len(),
            table_bytes: tables.iter().map(|t| t.size).sum(),
        };
        let edit = VersionEdit {
            last_sequence: Some(sequence),
            added: tables.into_iter().map(|t| (NUM_LEVELS - 1, t)).collect(),
            ..VersionEdit::default()
        };
        self.install(edit, |_| {})?;
        self.last_sequence.store(sequence, Ordering::SeqCst);
        self.publish_sequence(sequence);
        self.work.notify_all();
        Ok(report)
    }
}
