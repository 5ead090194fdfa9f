//! Reading one Parquet part that Ferry did not necessarily write: the
//! decoder is a large body of code fed with bytes we do not trust, so its
//! errors, and even its panics, become errors naming the file.

use crate::error::IoContext;
use crate::fs::{FileSystem, PositionedFile};
use crate::{Error, Result};
use arrow_array::RecordBatch;
use parquet::arrow::arrow_reader::{ParquetRecordBatchReader, ParquetRecordBatchReaderBuilder};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Rows per decoded batch.
const BATCH_ROWS: usize = 8192;

/// The part as parquet reads it: positioned reads, never a mapping (the
/// file is not the engine's; see [`FileSystem::open_positioned`]).
struct Source(Arc<dyn PositionedFile>);

/// A [`std::io::Read`] from an offset of a [`Source`].
struct SourceReader {
    file: Arc<dyn PositionedFile>,
    at: u64,
}

impl std::io::Read for SourceReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.file.read_at(self.at, buf)?;
        self.at += n as u64;
        Ok(n)
    }
}

impl parquet::file::reader::Length for Source {
    fn len(&self) -> u64 {
        self.0.len()
    }
}

impl parquet::file::reader::ChunkReader for Source {
    type T = std::io::BufReader<SourceReader>;

    fn get_read(&self, start: u64) -> parquet::errors::Result<Self::T> {
        Ok(std::io::BufReader::new(SourceReader {
            file: self.0.clone(),
            at: start,
        }))
    }

    fn get_bytes(&self, start: u64, length: usize) -> parquet::errors::Result<bytes::Bytes> {
        // The length comes from the file's own metadata: bounded by the
        // file before it is allocated.
        let end = start
            .checked_add(length as u64)
            .filter(|&end| end <= self.0.len());
        if end.is_none() {
            return Err(parquet::errors::ParquetError::EOF(format!(
                "{length} bytes at {start} reach past the file's {} bytes",
                self.0.len()
            )));
        }
        let mut buffer = vec![0; length];
        let mut filled = 0;
        while filled < length {
            let n = self
                .0
                .read_at(start + filled as u64, &mut buffer[filled..])?;
            if n == 0 {
                return Err(parquet::errors::ParquetError::EOF(
                    "the file was cut short while it was read".into(),
                ));
            }
            filled += n;
        }
        Ok(buffer.into())
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
    /// Opens the part at `path` through `fs` (read by offsets, not mapped).
    pub fn open(fs: &dyn FileSystem, path: &Path) -> Result<PartReader> {
        let file = fs.open_positioned(path).at(path)?;
        let size = file.len();
        let bytes = Source(file);
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
