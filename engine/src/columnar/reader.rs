//! Reading one Parquet part that Ferry did not necessarily write: the
//! decoder is a large body of code fed with bytes we do not trust, so its
//! errors, and even its panics, become errors naming the file.

use crate::error::IoContext;
use crate::fs::{FileSystem, RandomAccessFile};
use crate::{Error, Result};
use arrow_array::RecordBatch;
use parquet::arrow::arrow_reader::{ParquetRecordBatchReader, ParquetRecordBatchReaderBuilder};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Rows per decoded batch.
const BATCH_ROWS: usize = 8192;

/// Lets parquet read straight from the mapped file.
struct MappedBytes(Arc<dyn RandomAccessFile>);

impl AsRef<[u8]> for MappedBytes {
    fn as_ref(&self) -> &[u8] {
        self.0.bytes()
    }
}

/// One open part: its key-value metadata, then its batches.
pub struct PartReader {
    path: PathBuf,
    size: u64,
    metadata: Vec<(String, Option<String>)>,
    reader: ParquetRecordBatchReader,
}

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

impl PartReader {
    /// Opens the part at `path` through `fs` (memory-mapped).
    pub fn open(fs: &dyn FileSystem, path: &Path) -> Result<PartReader> {
        let file = fs.open_random(path).at(path)?;
        let size = file.bytes().len() as u64;
        let bytes = bytes::Bytes::from_owner(MappedBytes(file));
        let (metadata, reader) = guarded(
            path,
            "not a readable parquet file",
            catch_unwind(AssertUnwindSafe(|| {
                let builder =
                    ParquetRecordBatchReaderBuilder::try_new(bytes).map_err(|e| e.to_string())?;
                let metadata = builder
                    .metadata()
                    .file_metadata()
                    .key_value_metadata()
                    .map(|kvs| {
                        kvs.iter()
                            .map(|kv| (kv.key.clone(), kv.value.clone()))
                            .collect()
                    })
                    .unwrap_or_default();
                let reader = builder
                    .with_batch_size(BATCH_ROWS)
                    .build()
                    .map_err(|e| e.to_string())?;
                Ok((metadata, reader))
            })),
        )?;
        Ok(PartReader {
            path: path.to_path_buf(),
            size,
            metadata,
            reader,
        })
    }

    /// The value of the file's key-value metadata `key`.
    pub fn metadata(&self, key: &str) -> Option<&str> {
        self.metadata
            .iter()
            .find(|(k, _)| k == key)
            .and_then(|(_, v)| v.as_deref())
    }

    /// The file's size in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The file's path, for errors.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The next batch of rows; `None` at the end.
    pub fn next_batch(&mut self) -> Result<Option<RecordBatch>> {
        let reader = &mut self.reader;
        guarded(
            &self.path,
            "damaged row group",
            catch_unwind(AssertUnwindSafe(|| {
                reader.next().transpose().map_err(|e| e.to_string())
            })),
        )
    }

    /// A corruption error naming this file.
    pub fn corrupt(&self, reason: impl Into<String>) -> Error {
        Error::corruption(&self.path, 0, reason.into())
    }
}
