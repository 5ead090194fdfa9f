//! Writing rows as Parquet parts, in bounded memory, into any sink: a
//! directory (an export on disk) or a stream (an export sent to a client).
//!
//! The writer knows nothing of what the rows are: its caller builds Arrow
//! record batches of its schema and adds each row to the part's content
//! checksum. The writer closes a row group at `row_group_bytes` and a part
//! at `file_bytes`, between batches, and records each part's rows and
//! checksum.

use super::export::{ExportOptions, ParquetCompression};
use super::{part_name, ContentChecksum, ExportPart, META_CHECKSUM, META_ROWS};
use crate::error::IoContext;
use crate::fs::{FileSystem, WritableFile};
use crate::{Error, Result};
use arrow_array::RecordBatch;
use arrow_schema::SchemaRef;
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::metadata::{KeyValue, SortingColumn};
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use std::io;
use std::path::{Path, PathBuf};

/// Where parts go.
pub trait PartSink {
    /// What a part's bytes are written to.
    type Part: io::Write + Send;
    /// Starts the part `name`.
    fn create(&mut self, name: &str) -> io::Result<Self::Part>;
    /// The part `name` is complete (its writer handed back); returns its
    /// size in bytes.
    fn finish(&mut self, name: &str, part: Self::Part) -> io::Result<u64>;
}

/// Parts written as files of a directory through the engine's file system.
pub struct DirSink<'a> {
    fs: &'a dyn FileSystem,
    dir: PathBuf,
}

impl<'a> DirSink<'a> {
    /// Parts go into `dir`, which exists.
    pub fn new(fs: &'a dyn FileSystem, dir: impl Into<PathBuf>) -> Self {
        DirSink {
            fs,
            dir: dir.into(),
        }
    }
}

/// `std::io::Write` over the engine's file abstraction.
pub struct FileWriter {
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

impl PartSink for DirSink<'_> {
    type Part = FileWriter;

    fn create(&mut self, name: &str) -> io::Result<FileWriter> {
        let file = self.fs.create(&self.dir.join(name))?;
        Ok(FileWriter { file })
    }

    fn finish(&mut self, _name: &str, mut part: FileWriter) -> io::Result<u64> {
        part.file.sync()?;
        Ok(part.file.len())
    }
}

fn parquet_error(what: &str, error: impl std::fmt::Display) -> Error {
    Error::io(what, io::Error::other(error.to_string()))
}

/// Writer properties of every Ferry export: compressed, dictionary
/// encoded, page statistics so readers can prune, sorted by the first
/// column, and `metadata` in each file's key-value metadata.
fn properties(
    options: &ExportOptions,
    metadata: Vec<(String, String)>,
) -> Result<WriterProperties> {
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
        .set_key_value_metadata(Some(
            metadata
                .into_iter()
                .map(|(key, value)| KeyValue::new(key, value))
                .collect(),
        ))
        .build())
}

struct OpenPart<W: io::Write + Send> {
    name: String,
    writer: ArrowWriter<W>,
}

/// See the module docs.
pub struct PartWriter<S: PartSink> {
    schema: SchemaRef,
    options: ExportOptions,
    properties: WriterProperties,
    sink: S,
    part: Option<OpenPart<S::Part>>,
    checksum: ContentChecksum,
    parts: Vec<ExportPart>,
    bytes: u64,
}

impl<S: PartSink> PartWriter<S> {
    /// Parts of `schema` (sorted by its first column) into `sink`, each
    /// with `metadata` besides its rows and checksum.
    pub fn new(
        schema: SchemaRef,
        options: &ExportOptions,
        metadata: Vec<(String, String)>,
        sink: S,
    ) -> Result<Self> {
        Ok(PartWriter {
            schema,
            options: *options,
            properties: properties(options, metadata)?,
            sink,
            part: None,
            checksum: ContentChecksum::new(),
            parts: Vec::new(),
            bytes: 0,
        })
    }

    /// The schema batches must have.
    pub fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    /// Adds a row of the batch about to be written to the current part's
    /// checksum (call for every row, before [`PartWriter::write`]).
    pub fn checksum(&mut self, key: &[u8], value: &[u8]) {
        self.checksum.add(key, value);
    }

    /// Writes a batch; closes the row group or the part when it reaches
    /// its size.
    pub fn write(&mut self, batch: &RecordBatch) -> Result<()> {
        if batch.num_rows() == 0 {
            return Ok(());
        }
        if self.part.is_none() {
            self.open_part()?;
        }
        let part = self.part.as_mut().expect("opened above");
        part.writer
            .write(batch)
            .map_err(|e| parquet_error(&part.name, e))?;
        if part.writer.in_progress_size() >= self.options.row_group_bytes {
            part.writer
                .flush()
                .map_err(|e| parquet_error(&part.name, e))?;
        }
        if part.writer.bytes_written() as u64 + part.writer.in_progress_size() as u64
            >= self.options.file_bytes
        {
            self.finish_part()?;
        }
        Ok(())
    }

    fn open_part(&mut self) -> Result<()> {
        let name = part_name(self.parts.len());
        let file = self.sink.create(&name).at(Path::new(&name))?;
        let writer = ArrowWriter::try_new(file, self.schema.clone(), Some(self.properties.clone()))
            .map_err(|e| parquet_error(&name, e))?;
        self.part = Some(OpenPart { name, writer });
        Ok(())
    }

    fn finish_part(&mut self) -> Result<()> {
        let Some(mut part) = self.part.take() else {
            return Ok(());
        };
        let rows = self.checksum.rows();
        let checksum = self.checksum.value();
        self.checksum = ContentChecksum::new();
        part.writer
            .append_key_value_metadata(KeyValue::new(META_ROWS.to_owned(), rows.to_string()));
        part.writer.append_key_value_metadata(KeyValue::new(
            META_CHECKSUM.to_owned(),
            format!("{checksum:016x}"),
        ));
        let file = part
            .writer
            .into_inner()
            .map_err(|e| parquet_error(&part.name, e))?;
        self.bytes += self
            .sink
            .finish(&part.name, file)
            .at(Path::new(&part.name))?;
        self.parts.push(ExportPart {
            name: part.name,
            rows,
            checksum,
        });
        Ok(())
    }

    /// Closes the last part; returns the parts, the bytes written and the
    /// sink.
    pub fn finish(mut self) -> Result<(Vec<ExportPart>, u64, S)> {
        // An export of no rows still has one part: its metadata is what a
        // restore reads (the applied point of an empty state, say).
        if self.parts.is_empty() && self.part.is_none() {
            self.open_part()?;
        }
        self.finish_part()?;
        Ok((self.parts, self.bytes, self.sink))
    }
}
