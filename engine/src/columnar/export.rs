//! Writing a snapshot as Parquet files, in bounded memory.

use super::manifest::{ExportManifest, EXPORT_FILE};
use super::writer::{DirSink, PartWriter};
use super::{schema, ContentChecksum, META_SEQUENCE, META_VERSION};
use crate::checkpoint::Progress;
use crate::error::IoContext;
use crate::fs::FileSystem;
use crate::{DbIterator, Error, Result};
use arrow_array::builder::{BinaryBuilder, UInt64Builder};
use arrow_array::{ArrayRef, RecordBatch};
use std::path::Path;
use std::sync::Arc;

/// Compression of the Parquet column chunks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParquetCompression {
    /// No compression.
    None,
    /// LZ4 (raw block format): fastest.
    Lz4,
    /// Zstandard at the given level (1–22): smallest. The default, level 3.
    Zstd(i32),
}

/// How an export is laid out.
///
/// Memory stays within a fixed budget whatever the database size: one
/// in-memory batch of at most `batch_bytes` of keys and values, plus the
/// encoded row group being built (at most about `row_group_bytes`), plus
/// the writer's page buffers. With the defaults that is below 100 MiB.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExportOptions {
    /// Bytes of keys and values gathered before they are handed to the writer.
    pub batch_bytes: usize,
    /// Encoded bytes after which a row group is closed.
    pub row_group_bytes: usize,
    /// Approximate size at which a new part file is started.
    pub file_bytes: u64,
    /// Column compression.
    pub compression: ParquetCompression,
}

impl Default for ExportOptions {
    fn default() -> Self {
        ExportOptions {
            batch_bytes: 8 << 20,
            row_group_bytes: 64 << 20,
            file_bytes: 512 << 20,
            compression: ParquetCompression::Zstd(3),
        }
    }
}

/// What an export wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportReport {
    /// The summary also written as the `EXPORT` file.
    pub manifest: ExportManifest,
    /// Bytes of Parquet written.
    pub bytes: u64,
}

/// The raw rows of one snapshot: key, value, sequence.
struct RawRows {
    keys: BinaryBuilder,
    values: BinaryBuilder,
    sequences: UInt64Builder,
    bytes: usize,
}

impl RawRows {
    fn flush(&mut self, writer: &mut PartWriter<DirSink<'_>>) -> Result<()> {
        if self.bytes == 0 {
            return Ok(());
        }
        let columns: Vec<ArrayRef> = vec![
            Arc::new(self.keys.finish()),
            Arc::new(self.values.finish()),
            Arc::new(self.sequences.finish()),
        ];
        let batch = RecordBatch::try_new(schema(), columns)
            .map_err(|e| Error::InvalidOptions(format!("export batch: {e}")))?;
        writer.write(&batch)?;
        self.bytes = 0;
        Ok(())
    }
}

/// Exports the entries of `entries` (an iterator at one snapshot) into
/// `dir`, which must not exist. The files are written in a staging
/// directory renamed into place when complete.
pub(crate) fn export(
    fs: &dyn FileSystem,
    mut entries: DbIterator,
    sequence: u64,
    dir: &Path,
    options: &ExportOptions,
    total_hint: u64,
    progress: &mut dyn FnMut(Progress),
) -> Result<ExportReport> {
    if fs.exists(dir) {
        return Err(Error::InvalidOptions(format!(
            "export target {} already exists",
            dir.display()
        )));
    }
    let name = dir.file_name().and_then(|n| n.to_str()).ok_or_else(|| {
        Error::InvalidOptions(format!("export target {} has no name", dir.display()))
    })?;
    let parent = dir.parent().unwrap_or(Path::new(".")).to_path_buf();
    let staging = parent.join(format!("{name}.partial"));
    if fs.exists(&staging) {
        crate::checkpoint::remove_dir_all(fs, &staging)?;
    }
    fs.create_dir_all(&staging).at(&staging)?;
    let result = (|| {
        let metadata = vec![
            (META_VERSION.to_owned(), "1".to_owned()),
            (META_SEQUENCE.to_owned(), sequence.to_string()),
        ];
        let mut writer = PartWriter::new(schema(), options, metadata, DirSink::new(fs, &staging))?;
        let mut rows = RawRows {
            keys: BinaryBuilder::new(),
            values: BinaryBuilder::new(),
            sequences: UInt64Builder::new(),
            bytes: 0,
        };
        let mut total = ContentChecksum::new();
        let mut done = 0u64;
        while let Some(entry) = entries.next_with_sequence() {
            let (key, value, entry_sequence) = entry?;
            total.add(&key, &value);
            writer.checksum(&key, &value);
            done += (key.len() + value.len()) as u64;
            rows.keys.append_value(&key);
            rows.values.append_value(&value);
            rows.sequences.append_value(entry_sequence);
            rows.bytes += key.len() + value.len() + 8;
            if rows.bytes >= options.batch_bytes {
                rows.flush(&mut writer)?;
            }
            if total.rows().is_multiple_of(65_536) {
                progress(Progress {
                    stage: "export",
                    done_bytes: done,
                    total_bytes: total_hint.max(done),
                });
            }
        }
        rows.flush(&mut writer)?;
        let (parts, bytes, _) = writer.finish()?;
        let manifest = ExportManifest {
            sequence,
            rows: total.rows(),
            checksum: total.value(),
            parts,
        };
        let path = staging.join(EXPORT_FILE);
        fs.write_atomic(&path, manifest.encode().as_bytes())
            .at(&path)?;
        progress(Progress {
            stage: "export",
            done_bytes: done,
            total_bytes: done,
        });
        Ok(ExportReport { manifest, bytes })
    })();
    match result {
        Ok(report) => {
            fs.rename(&staging, dir).at(&staging)?;
            fs.sync_dir(&parent).at(&parent)?;
            Ok(report)
        }
        Err(error) => {
            let _ = crate::checkpoint::remove_dir_all(fs, &staging);
            Err(error)
        }
    }
}
