//! Bulk-loading a Parquet export: rows go straight into tables at the
//! bottom level, with no WAL and no per-key writes.

use super::manifest::{ExportManifest, EXPORT_FILE};
use super::reader::PartReader;
use super::{
    ContentChecksum, COLUMN_KEY, COLUMN_SEQUENCE, COLUMN_VALUE, META_CHECKSUM, META_ROWS,
    META_SEQUENCE,
};
use crate::checkpoint::Progress;
use crate::db::BulkLoader;
use crate::error::IoContext;
use crate::fs::FileSystem;
use crate::{Error, Result};
use arrow_array::{Array, BinaryArray, RecordBatch, UInt64Array};
use std::path::Path;

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

/// What the decoding thread hands to the loading one.
enum Decoded {
    Batch(RecordBatch),
    /// The part with this index is fully decoded; its file has this size.
    EndOfPart(usize, u64),
}

/// Reads the export in `dir`, checks it row by row and hands its rows to
/// `loader` (the caller's bulk load, which installs them only if
/// everything checked out). Returns the manifest.
///
/// Parquet decoding runs on a second thread, a bounded channel of a few
/// batches ahead of the table writer, so the two stages overlap and memory
/// stays bounded. The decoding thread also checks each part's rows against
/// its checksum; the loader's own checksum of every row is checked against
/// the export's total.
pub(crate) fn load(
    fs: &dyn FileSystem,
    dir: &Path,
    loader: &mut BulkLoader<'_>,
    progress: &mut dyn FnMut(Progress),
) -> Result<ExportManifest> {
    let manifest_path = dir.join(EXPORT_FILE);
    let manifest = read_manifest(fs, dir)?;
    let mut total_bytes = 0;
    for part in &manifest.parts {
        let path = dir.join(&part.name);
        total_bytes += fs.file_size(&path).at(&path)?;
    }
    let mut done_bytes = 0;
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
                        // Order and sequence are the export's promises: a
                        // breach is damage in this file.
                        loader
                            .add(keys.value(row), values.value(row), sequences.value(row))
                            .map_err(|error| match error {
                                Error::InvalidOptions(reason) => {
                                    Error::corruption(&path, 0, reason)
                                }
                                other => other,
                            })?;
                    }
                }
                Decoded::EndOfPart(index, size) => {
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
    if loader.rows() != manifest.rows || loader.checksum() != manifest.checksum {
        return Err(Error::corruption(
            &manifest_path,
            0,
            "total rows or content checksum differ",
        ));
    }
    Ok(manifest)
}

/// The `EXPORT` file of the export in `dir`, checked.
pub fn read_manifest(fs: &dyn FileSystem, dir: &Path) -> Result<ExportManifest> {
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
    Ok(manifest)
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
    let mut reader = PartReader::open(fs, path)?;
    if reader.metadata(META_SEQUENCE) != Some(manifest.sequence.to_string().as_str())
        || reader.metadata(META_ROWS) != Some(part.rows.to_string().as_str())
        || reader.metadata(META_CHECKSUM) != Some(format!("{:016x}", part.checksum).as_str())
    {
        return Err(reader.corrupt("file metadata does not match the EXPORT file"));
    }
    let mut checksum = ContentChecksum::new();
    while let Some(batch) = reader.next_batch()? {
        let Ok((keys, values, _)) = columns(&batch) else {
            return Err(reader.corrupt("columns have the wrong names or types"));
        };
        for row in 0..batch.num_rows() {
            checksum.add(keys.value(row), values.value(row));
        }
        if !deliver(batch) {
            return Ok(reader.size());
        }
    }
    if checksum.rows() != part.rows || checksum.value() != part.checksum {
        return Err(reader.corrupt(format!(
            "rows or content checksum differ from the EXPORT file ({} rows read)",
            checksum.rows()
        )));
    }
    Ok(reader.size())
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
