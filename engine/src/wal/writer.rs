//! Appending records to one log segment.

use super::record::{record_header, segment_header, LogKind};
use crate::error::IoContext;
use crate::fs::{FileSystem, WritableFile};
use crate::Result;
use std::path::{Path, PathBuf};

/// Writes framed records to one segment file.
///
/// Records are buffered until [`LogWriter::flush`] (to the OS) or
/// [`LogWriter::sync`] (to disk). Group commit appends many records and then
/// syncs once.
///
/// ```
/// use ferry_engine::fs::{FaultInjectionFs, FileSystem};
/// use ferry_engine::wal::{read_segment, LogKind, LogWriter, TailPolicy};
/// use std::path::Path;
///
/// let fs = FaultInjectionFs::new();
/// fs.create_dir_all(Path::new("/log")).unwrap();
/// let path = Path::new("/log/000001.log");
/// let mut writer = LogWriter::create(&fs, path, LogKind::Raft)?;
/// writer.append(1, b"first")?;
/// writer.append(2, b"second")?;
/// writer.sync()?;
/// let mut seen = Vec::new();
/// read_segment(&fs, path, LogKind::Raft, TailPolicy::Strict, |sequence, payload| {
///     seen.push((sequence, payload.to_vec()));
///     Ok(())
/// })?;
/// assert_eq!(seen, vec![(1, b"first".to_vec()), (2, b"second".to_vec())]);
/// # Ok::<(), ferry_engine::Error>(())
/// ```
pub struct LogWriter {
    file: Box<dyn WritableFile>,
    path: PathBuf,
    last_sequence: Option<u64>,
}

impl LogWriter {
    /// Creates a new segment and writes its header. The caller syncs the
    /// directory so that the segment survives a power loss.
    pub fn create(fs: &dyn FileSystem, path: &Path, kind: LogKind) -> Result<Self> {
        Self::start(fs.create(path).at(path)?, path, kind)
    }

    /// Creates a new segment through [`FileSystem::create_log`]: its file
    /// may reserve zero-filled space ahead of the records (the engine's WAL
    /// uses this to append without a system call per write group). Call
    /// [`LogWriter::finish`] before a later segment is created, so that
    /// only the last segment can end in reserved space.
    pub fn create_reserving(fs: &dyn FileSystem, path: &Path, kind: LogKind) -> Result<Self> {
        Self::start(fs.create_log(path).at(path)?, path, kind)
    }

    /// Writes the segment header into a new, empty file.
    fn start(mut file: Box<dyn WritableFile>, path: &Path, kind: LogKind) -> Result<Self> {
        file.append(&segment_header(kind)).at(path)?;
        Ok(LogWriter {
            file,
            path: path.to_path_buf(),
            last_sequence: None,
        })
    }

    /// Reopens an existing, already recovered segment to append after its
    /// last record.
    pub fn reopen(fs: &dyn FileSystem, path: &Path, last_sequence: Option<u64>) -> Result<Self> {
        let file = fs.open_append(path).at(path)?;
        Ok(LogWriter {
            file,
            path: path.to_path_buf(),
            last_sequence,
        })
    }

    /// Appends one record. Sequences must not go backwards.
    pub fn append(&mut self, sequence: u64, payload: &[u8]) -> Result<()> {
        self.append_parts(sequence, &[payload])
    }

    /// Appends one record whose payload is `parts` laid end to end. The
    /// file buffers appends anyway, so the parts go straight into it.
    pub(crate) fn append_parts(&mut self, sequence: u64, parts: &[&[u8]]) -> Result<()> {
        debug_assert!(self.last_sequence.is_none_or(|last| sequence >= last));
        self.file
            .append(&record_header(sequence, parts))
            .at(&self.path)?;
        for part in parts {
            self.file.append(part).at(&self.path)?;
        }
        self.last_sequence = Some(sequence);
        Ok(())
    }

    /// Hands buffered records to the OS: they survive a process crash.
    pub fn flush(&mut self) -> Result<()> {
        self.file.flush().at(&self.path)
    }

    /// Makes every appended record durable.
    pub fn sync(&mut self) -> Result<()> {
        self.file.sync().at(&self.path)
    }

    /// Makes every appended record durable and the segment end exactly at
    /// its last record: this segment is complete.
    pub fn finish(&mut self) -> Result<()> {
        self.file.finish().at(&self.path)
    }

    /// Bytes in the segment so far.
    pub fn len(&self) -> u64 {
        self.file.len()
    }

    /// True when the segment holds only its header.
    pub fn is_empty(&self) -> bool {
        self.file.len() <= super::record::SEGMENT_HEADER_LEN as u64
    }

    /// The segment's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}
