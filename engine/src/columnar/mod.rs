//! Columnar snapshots: the state of one snapshot as ordinary Parquet files.
//!
//! An export is a directory that any Parquet reader (pyarrow, DuckDB,
//! Spark) can open, and that [`Db::import_parquet`](crate::Db::import_parquet)
//! bulk-loads into a new database without going through the WAL.
//!
//! ## Format (version 1)
//!
//! ```text
//! export/
//!   part-000000.parquet   rows sorted by key, keys unique across all parts
//!   part-000001.parquet   (parts are cut at ExportOptions::file_bytes)
//!   EXPORT                text: totals and the list of parts, last line its CRC32
//!
//! Parquet schema:  key: binary (required) | value: binary (required) | sequence: uint64 (required)
//! file key-value metadata:
//!   ferry.format_version    "1"
//!   ferry.snapshot_sequence the snapshot's sequence number
//!   ferry.rows              rows in this file
//!   ferry.content_checksum  content checksum (hex) of this file's rows
//! EXPORT:
//!   ferry-export 1
//!   sequence <n>
//!   rows <n>
//!   checksum <16 hex digits>
//!   part <name> <rows> <16 hex digits>       (one line per part, in key order)
//!   crc <8 hex digits>                        (CRC32 of every line above, with newlines)
//! ```
//!
//! The *content checksum* of a sequence of rows is xxh3-64 over, row by row
//! in key order, `u32 LE key length ‖ key ‖ u32 LE value length ‖ value`;
//! [`Snapshot::content_checksum`](crate::Snapshot::content_checksum)
//! computes it for a live snapshot, so an export → import round trip can be
//! checked end to end.
//!
//! Row groups are dictionary-encoded, compressed (zstd by default, lz4 on
//! request), carry page statistics so readers can prune by key range, and
//! are declared sorted by `key`.

pub(crate) mod export;
pub(crate) mod import;
mod manifest;
mod reader;
mod writer;

pub use crate::db::restore_parquet;
pub use export::{ExportOptions, ExportReport, ParquetCompression};
pub use import::{read_manifest, ImportReport};
pub use manifest::{ExportManifest, ExportPart, EXPORT_FILE};
pub use reader::PartReader;
pub use writer::{DirSink, FileWriter, PartSink, PartWriter};

/// Streaming content checksum (see the module docs).
///
/// ```
/// use ferry_engine::columnar::ContentChecksum;
/// let mut checksum = ContentChecksum::new();
/// checksum.add(b"key", b"value");
/// assert_eq!(checksum.rows(), 1);
/// assert_ne!(checksum.value(), ContentChecksum::new().value());
/// ```
#[derive(Default)]
pub struct ContentChecksum {
    hasher: xxhash_rust::xxh3::Xxh3,
    rows: u64,
}

impl ContentChecksum {
    /// An empty checksum.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds one row.
    pub fn add(&mut self, key: &[u8], value: &[u8]) {
        self.hasher.update(&(key.len() as u32).to_le_bytes());
        self.hasher.update(key);
        self.hasher.update(&(value.len() as u32).to_le_bytes());
        self.hasher.update(value);
        self.rows += 1;
    }

    /// Rows added so far.
    pub fn rows(&self) -> u64 {
        self.rows
    }

    /// The checksum of the rows added so far.
    pub fn value(&self) -> u64 {
        self.hasher.digest()
    }
}

pub(crate) const COLUMN_KEY: &str = "key";
pub(crate) const COLUMN_VALUE: &str = "value";
pub(crate) const COLUMN_SEQUENCE: &str = "sequence";
pub(crate) const META_VERSION: &str = "ferry.format_version";
pub(crate) const META_SEQUENCE: &str = "ferry.snapshot_sequence";
/// Key-value metadata of every part: its rows, and its content checksum
/// (16 hex digits).
pub const META_ROWS: &str = "ferry.rows";
/// See [`META_ROWS`].
pub const META_CHECKSUM: &str = "ferry.content_checksum";

pub(crate) fn schema() -> arrow_schema::SchemaRef {
    use arrow_schema::{DataType, Field, Schema};
    std::sync::Arc::new(Schema::new(vec![
        Field::new(COLUMN_KEY, DataType::Binary, false),
        Field::new(COLUMN_VALUE, DataType::Binary, false),
        Field::new(COLUMN_SEQUENCE, DataType::UInt64, false),
    ]))
}

/// The name of the part at `index`.
pub fn part_name(index: usize) -> String {
    format!("part-{index:06}.parquet")
}
