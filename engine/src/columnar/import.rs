//! Bulk-loading a Parquet export: rows go straight into tables at the
//! bottom level, with no WAL and no per-key writes.

use super::manifest::{ExportManifest, EXPORT_FILE};
use super::{
    ContentChecksum, COLUMN_KEY, COLUMN_SEQUENCE, COLUMN_VALUE, META_CHECKSUM, META_ROWS,
    META_SEQUENCE,
};
use crate::checkpoint::Progress;
use crate::compaction::output::OutputTables;
use crate::error::IoContext;
use crate::fs::{FileSystem, RandomAccessFile};
use crate::key::{self, ValueKind};
use crate::manifest::edit::TableMeta;
use crate::{Error, Result};
use arrow_array::{Array, BinaryArray, RecordBatch, UInt64Array};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;
use std::sync::Arc;

/// What an import loaded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImportReport {
    /// Rows loaded.
    pub rows: u64,
    /// Content checksum of the loaded rows (equal to the export's).
    pub checksum: u64,
    /// Sequence of the exported snapshot, now the database's sequence.
    pub sequence: u64,
    /// Tables written.
    pub tables: usize,
    /// Bytes of tables written.
    pub table_bytes: u64,
}

/// Lets parquet read straight from the mapped file.
struct MappedBytes(Arc<dyn RandomAccessFile>);

impl AsRef<[u8]> for MappedBytes {
    fn as_ref(&self) -> &[u8] {
        self.0.bytes()
    }
}

/// Limits an import enforces on every row, as a write would.
pub(crate) struct RowLimits {
    pub(crate) max_key_bytes: usize,
    pub(crate) max_value_bytes: usize,
}

/// What the decoding thread hands to the loading one.
enum Decoded {
    Batch(RecordBatch),
    /// The part with this index is fully decoded; its file has this size.
    EndOfPart(usize, u64),
}

/// Reads the export in `dir`, checks it row by row and writes its rows into
/// new tables through `output`. Returns the manifest and the tables; the
/// caller installs them only if everything checked out.
///
/// Parquet decoding runs on a second thread, a bounded channel of a few
/// batches ahead of the table writer, so the two stages overlap and memory
/// stays bounded.
pub(crate) fn load(
    fs: &dyn FileSystem,
    dir: &Path,
    limits: &RowLimits,
    mut output: OutputTables<'_>,
    progress: &mut dyn FnMut(Progress),
) -> Result<(ExportManifest, Vec<TableMeta>)> {
    let manifest_path = dir.join(EXPORT_FILE);
    let manifest = ExportManifest::decode(
        &fs.read_all(&manifest_path).at(&manifest_path)?,
        &manifest_path,
    )?;
    if manifest.sequence == 0 && manifest.rows > 0 {
        return Err(Error::corruption(
            &manifest_path,
            0,
            "rows exported at sequence 0",
        ));
    }
    let mut total_bytes = 0;
    for part in &manifest.parts {
        let path = dir.join(&part.name);
        total_bytes += fs.file_size(&path).at(&path)?;
    }
    let mut done_bytes = 0;
    let mut total = ContentChecksum::new();
    let mut checksum = ContentChecksum::new();
    let mut last_key: Vec<u8> = Vec::new();
    let mut internal = Vec::new();
    // Batches arrive part by part, in order: this is the part they belong to.
    let mut part_index = 0;
    std::thread::scope(|scope| -> Result<()> {
        let (sender, receiver) = std::sync::mpsc::sync_channel::<Result<Decoded>>(4);
        let manifest = &manifest;
        scope.spawn(move || {
            for (index, part) in manifest.parts.iter().enumerate() {
                let decoded = decode_part(fs, &dir.join(&part.name), manifest, part, |batch| {
                    sender.send(Ok(Decoded::Batch(batch))).is_ok()
                });
                let message = decoded.map(|size| Decoded::EndOfPart(index, size));
                let failed = message.is_err();
                if sender.send(message).is_err() || failed {
                    return;
                }
            }
        });
        for message in receiver {
            match message? {
                Decoded::Batch(batch) => {
                    let path = manifest
                        .parts
                        .get(part_index)
                        .map_or(dir.to_path_buf(), |p| dir.join(&p.name));
                    let (keys, values, sequences) =
                        columns(&batch).map_err(|reason| Error::corruption(&path, 0, reason))?;
                    for row in 0..batch.num_rows() {
                        let (key, value, sequence) =
                            (keys.value(row), values.value(row), sequences.value(row));
                        let bad = |reason: String| Error::corruption(&path, 0, reason);
                        if total.rows() > 0 && last_key.as_slice() >= key {
                            return Err(bad(format!(
                                "row {} is not in strictly increasing key order",
                                total.rows()
                            )));
                        }
                        if sequence == 0 || sequence > manifest.sequence {
                            return Err(bad(format!(
                                "row sequence {sequence} outside 1..={}",
                                manifest.sequence
                            )));
                        }
                        if key.len() > limits.max_key_bytes {
                            return Err(Error::TooLarge {
                                what: "key",
                                size: key.len(),
                                limit: limits.max_key_bytes,
                            });
                        }
                        if value.len() > limits.max_value_bytes {
                            return Err(Error::TooLarge {
                                what: "value",
                                size: value.len(),
                                limit: limits.max_value_bytes,
                            });
                        }
                        checksum.add(key, value);
                        total.add(key, value);
                        internal.clear();
                        key::encode_into(&mut internal, key, sequence, ValueKind::Put);
                        output.add(&internal, value)?;
                        last_key.clear();
                        last_key.extend_from_slice(key);
                    }
                }
                Decoded::EndOfPart(index, size) => {
                    let part = &manifest.parts[index];
                    if checksum.rows() != part.rows || checksum.value() != part.checksum {
                        return Err(Error::corruption(
                            dir.join(&part.name),
                            0,
                            format!(
                                "rows or content checksum differ from the EXPORT file ({} rows read)",
                                checksum.rows()
                            ),
                        ));
                    }
                    checksum = ContentChecksum::new();
                    part_index = index + 1;
                    done_bytes += size;
                    progress(Progress {
                        stage: "import",
                        done_bytes,
                        total_bytes,
                    });
                }
            }
        }
        Ok(())
    })?;
    if total.rows() != manifest.rows || total.value() != manifest.checksum {
        return Err(Error::corruption(
            &manifest_path,
            0,
            "total rows or content checksum differ",
        ));
    }
    let tables = output.finish()?;
    Ok((manifest, tables))
}

/// Decodes one part, handing each batch to `deliver` (which returns false
/// to stop). Checks the file's metadata against the EXPORT file. Returns
/// the file's size.
fn decode_part(
    fs: &dyn FileSystem,
    path: &Path,
    manifest: &ExportManifest,
    part: &super::ExportPart,
    mut deliver: impl FnMut(RecordBatch) -> bool,
) -> Result<u64> {
    let file = fs.open_random(path).at(path)?;
    let size = file.bytes().len() as u64;
    let bytes = bytes::Bytes::from_owner(MappedBytes(file));
    let (metadata, mut reader) = guarded(
        path,
        "not a readable parquet file",
        catch_unwind(AssertUnwindSafe(|| {
            let builder =
                ParquetRecordBatchReaderBuilder::try_new(bytes).map_err(|e| e.to_string())?;
            let metadata = builder
                .metadata()
                .file_metadata()
                .key_value_metadata()
                .cloned()
                .unwrap_or_default();
            let reader = builder
                .with_batch_size(8192)
                .build()
                .map_err(|e| e.to_string())?;
            Ok((metadata, reader))
        })),
    )?;
    let meta = |name: &str| {
        metadata
            .iter()
            .find(|kv| kv.key == name)
            .and_then(|kv| kv.value.clone())
    };
    if meta(META_SEQUENCE).as_deref() != Some(manifest.sequence.to_string().as_str())
        || meta(META_ROWS).as_deref() != Some(part.rows.to_string().as_str())
        || meta(META_CHECKSUM).as_deref() != Some(format!("{:016x}", part.checksum).as_str())
    {
        return Err(Error::corruption(
            path,
            0,
            "file metadata does not match the EXPORT file",
        ));
    }
    loop {
        let next = guarded(
            path,
            "damaged row group",
            catch_unwind(AssertUnwindSafe(|| {
                reader.next().transpose().map_err(|e| e.to_string())
            })),
        )?;
        let Some(batch) = next else {
            return Ok(size);
        };
        if columns(&batch).is_err() {
            return Err(Error::corruption(
                path,
                0,
                "columns have the wrong names or types",
            ));
        }
        if !deliver(batch) {
            return Ok(size);
        }
    }
}

/// The parquet decoder is a large body of code fed with bytes we do not
/// trust: an error or even a panic in it becomes an error naming the file.
fn guarded<T>(
    path: &Path,
    what: &str,
    result: std::thread::Result<std::result::Result<T, String>>,
) -> Result<T> {
    match result {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(message)) => Err(Error::corruption(path, 0, format!("{what}: {message}"))),
        Err(_) => Err(Error::corruption(
            path,
            0,
            format!("{what}: the parquet decoder panicked"),
        )),
    }
}

fn columns(
    batch: &RecordBatch,
) -> std::result::Result<(&BinaryArray, &BinaryArray, &UInt64Array), String> {
    let column = |name: &str| {
        batch
            .column_by_name(name)
            .filter(|c| c.null_count() == 0)
            .ok_or_else(|| format!("column {name} is missing or has nulls"))
    };
    let keys = column(COLUMN_KEY)?.as_any().downcast_ref::<BinaryArray>();
    let values = column(COLUMN_VALUE)?.as_any().downcast_ref::<BinaryArray>();
    let sequences = column(COLUMN_SEQUENCE)?
        .as_any()
        .downcast_ref::<UInt64Array>();
    match (keys, values, sequences) {
        (Some(k), Some(v), Some(s)) => Ok((k, v, s)),
        _ => Err("columns have the wrong types (expected binary, binary, uint64)".to_owned()),
    }
}
