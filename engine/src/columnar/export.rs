//! Writing a snapshot as Parquet files, in bounded memory.

use super::manifest::{ExportManifest, ExportPart, EXPORT_FILE};
use super::{
    part_name, schema, ContentChecksum, META_CHECKSUM, META_ROWS, META_SEQUENCE, META_VERSION,
};
use crate::checkpoint::Progress;
use crate::error::IoContext;
use crate::fs::{FileSystem, WritableFile};
use crate::{DbIterator, Error, Result};
use arrow_array::builder::{BinaryBuilder, UInt64Builder};
use arrow_array::{ArrayRef, RecordBatch};
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::metadata::{KeyValue, SortingColumn};
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use std::io;
use std::path::{Path, PathBuf};
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

/// `std::io::Write` over the engine's file abstraction.
struct FileWriter {
    file: Box<dyn WritableFile>,
}

impl io::Write for FileWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.file.append(buf)?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

fn parquet_error(path: &Path, error: impl std::fmt::Display) -> Error {
    Error::io(path, io::Error::other(error.to_string()))
}

fn properties(options: &ExportOptions, sequence: u64) -> Result<WriterProperties> {
    let compression = match options.compression {
        ParquetCompression::None => Compression::UNCOMPRESSED,
        ParquetCompression::Lz4 => Compression::LZ4_RAW,
        ParquetCompression::Zstd(level) => Compression::ZSTD(
            ZstdLevel::try_new(level)
                .map_err(|e| Error::InvalidOptions(format!("zstd level: {e}")))?,
        ),
    };
    Ok(WriterProperties::builder()
        .set_compression(compression)
        .set_dictionary_enabled(true)
        .set_statistics_enabled(EnabledStatistics::Page)
        .set_sorting_columns(Some(vec![SortingColumn {
            column_idx: 0,
            descending: false,
            nulls_first: false,
        }]))
        .set_key_value_metadata(Some(vec![
            KeyValue::new(META_VERSION.to_owned(), "1".to_owned()),
            KeyValue::new(META_SEQUENCE.to_owned(), sequence.to_string()),
        ]))
        .build())
}

/// One part file being written.
struct Part {
    writer: ArrowWriter<FileWriter>,
    path: PathBuf,
    checksum: ContentChecksum,
}

struct Exporter<'a> {
    fs: &'a dyn FileSystem,
    dir: &'a Path,
    options: ExportOptions,
    properties: WriterProperties,
    part: Option<Part>,
    parts: Vec<ExportPart>,
    keys: BinaryBuilder,
    values: BinaryBuilder,
    sequences: UInt64Builder,
    batch_bytes: usize,
    bytes: u64,
}

impl Exporter<'_> {
    fn add(&mut self, key: &[u8], value: &[u8], sequence: u64) -> Result<()> {
        if self.part.is_none() {
            let path = self.dir.join(part_name(self.parts.len()));
            let file = self.fs.create(&path).at(&path)?;
            let writer =
                ArrowWriter::try_new(FileWriter { file }, schema(), Some(self.properties.clone()))
                    .map_err(|e| parquet_error(&path, e))?;
            self.part = Some(Part {
                writer,
                path,
                checksum: ContentChecksum::new(),
            });
        }
        if let Some(part) = &mut self.part {
            part.checksum.add(key, value);
        }
        self.keys.append_value(key);
        self.values.append_value(value);
        self.sequences.append_value(sequence);
        self.batch_bytes += key.len() + value.len() + 8;
        if self.batch_bytes >= self.options.batch_bytes {
            self.write_batch()?;
        }
        Ok(())
    }

    /// Hands the gathered rows to the writer; closes the row group or the
    /// part when they reach their size.
    fn write_batch(&mut self) -> Result<()> {
        self.write_batch_if_pending()?;
        let Some(part) = &mut self.part else {
            return Ok(());
        };
        if part.writer.in_progress_size() >= self.options.row_group_bytes {
            part.writer
                .flush()
                .map_err(|e| parquet_error(&part.path, e))?;
        }
        if part.writer.bytes_written() as u64 + part.writer.in_progress_size() as u64
            >= self.options.file_bytes
        {
            self.finish_part()?;
        }
        Ok(())
    }

    fn finish_part(&mut self) -> Result<()> {
        self.write_batch_if_pending()?;
        let Some(mut part) = self.part.take() else {
            return Ok(());
        };
        let rows = part.checksum.rows();
        let checksum = part.checksum.value();
        part.writer
            .append_key_value_metadata(KeyValue::new(META_ROWS.to_owned(), rows.to_string()));
        part.writer.append_key_value_metadata(KeyValue::new(
            META_CHECKSUM.to_owned(),
            format!("{checksum:016x}"),
        ));
        let mut file = part
            .writer
            .into_inner()
            .map_err(|e| parquet_error(&part.path, e))?;
        file.file.sync().at(&part.path)?;
        self.bytes += file.file.len();
        let name = part
            .path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default()
            .to_owned();
        self.parts.push(ExportPart {
            name,
            rows,
            checksum,
        });
        Ok(())
    }

    fn write_batch_if_pending(&mut self) -> Result<()> {
        if self.batch_bytes > 0 {
            let Some(part) = &mut self.part else {
                return Ok(());
            };
            let columns: Vec<ArrayRef> = vec![
                Arc::new(self.keys.finish()),
                Arc::new(self.values.finish()),
                Arc::new(self.sequences.finish()),
            ];
            let batch = RecordBatch::try_new(schema(), columns)
                .map_err(|e| parquet_error(&part.path, e))?;
            part.writer
                .write(&batch)
                .map_err(|e| parquet_error(&part.path, e))?;
            self.batch_bytes = 0;
        }
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
        let mut exporter = Exporter {
            fs,
            dir: &staging,
            options: *options,
            properties: properties(options, sequence)?,
            part: None,
            parts: Vec::new(),
            keys: BinaryBuilder::new(),
            values: BinaryBuilder::new(),
            sequences: UInt64Builder::new(),
            batch_bytes: 0,
            bytes: 0,
        };
        let mut total = ContentChecksum::new();
        let mut done = 0u64;
        while let Some(entry) = entries.next_with_sequence() {
            let (key, value, entry_sequence) = entry?;
            total.add(&key, &value);
            done += (key.len() + value.len()) as u64;
            exporter.add(&key, &value, entry_sequence)?;
            if total.rows().is_multiple_of(65_536) {
                progress(Progress {
                    stage: "export",
                    done_bytes: done,
                    total_bytes: total_hint.max(done),
                });
            }
        }
        exporter.finish_part()?;
        let manifest = ExportManifest {
            sequence,
            rows: total.rows(),
            checksum: total.value(),
            parts: exporter.parts,
        };
        let path = staging.join(EXPORT_FILE);
        fs.write_atomic(&path, manifest.encode().as_bytes())
            .at(&path)?;
        progress(Progress {
            stage: "export",
            done_bytes: done,
            total_bytes: done,
        });
        Ok(ExportReport {
            manifest,
            bytes: exporter.bytes,
        })
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
