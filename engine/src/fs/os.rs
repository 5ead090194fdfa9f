//! The real file system, with `mmap` for immutable files.

use super::mapped::MappedLogFile;
use super::{FileLock, FileSystem, RandomAccessFile, WritableFile};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::Path;
use std::sync::Arc;

/// The operating system's file system.
#[derive(Debug, Default, Clone, Copy)]
pub struct OsFs;

impl OsFs {
    /// The disk, as the shared handle that options and restores take.
    pub fn shared() -> Arc<dyn FileSystem> {
        Arc::new(OsFs)
    }
}

/// Appends go to a user-space buffer first so that many small appends (block
/// by block, record by record) become few `write` calls.
struct OsWritableFile {
    file: File,
    buffer: Vec<u8>,
    len: u64,
}

const WRITE_BUFFER_BYTES: usize = 256 * 1024;

impl WritableFile for OsWritableFile {
    fn append(&mut self, data: &[u8]) -> io::Result<()> {
        if self.buffer.len() + data.len() > WRITE_BUFFER_BYTES {
            self.flush()?;
        }
        if data.len() >= WRITE_BUFFER_BYTES {
            self.file.write_all(data)?;
        } else {
            self.buffer.extend_from_slice(data);
        }
        self.len += data.len() as u64;
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        if !self.buffer.is_empty() {
            let written = self.file.write_all(&self.buffer);
            // Even after a failed write the buffer is dropped: some of it may
            // have reached the file, and writing it again would put bytes
            // twice into a log. Callers treat any error as fatal for the file.
            self.buffer.clear();
            written?;
        }
        Ok(())
    }

    fn sync(&mut self) -> io::Result<()> {
        self.flush()?;
        self.file.sync_data()
    }

    fn len(&self) -> u64 {
        self.len
    }
}

#[derive(Debug)]
struct MmapFile {
    // `None` for an empty file: mapping zero bytes is an error on Linux.
    map: Option<memmap2::Mmap>,
}

impl RandomAccessFile for MmapFile {
    fn bytes(&self) -> &[u8] {
        self.map.as_deref().unwrap_or(&[])
    }
}

#[derive(Debug)]
struct OsLock {
    _file: File,
}

impl FileLock for OsLock {}

impl FileSystem for OsFs {
    fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        fs::create_dir_all(path)
    }

    fn create(&self, path: &Path) -> io::Result<Box<dyn WritableFile>> {
        let file = File::create(path)?;
        Ok(Box::new(OsWritableFile {
            file,
            buffer: Vec::with_capacity(WRITE_BUFFER_BYTES),
            len: 0,
        }))
    }

    fn create_new(&self, path: &Path, private: bool) -> io::Result<Box<dyn WritableFile>> {
        let mut options = OpenOptions::new();
        // O_EXCL: fails on any existing name and never follows a symlink.
        options.write(true).create_new(true);
        #[cfg(unix)]
        if private {
            std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        }
        #[cfg(not(unix))]
        let _ = private;
        Ok(Box::new(OsWritableFile {
            file: options.open(path)?,
            buffer: Vec::with_capacity(WRITE_BUFFER_BYTES),
            len: 0,
        }))
    }

    fn create_dir(&self, path: &Path) -> io::Result<()> {
        fs::create_dir(path)
    }

    fn create_log(&self, path: &Path) -> io::Result<Box<dyn WritableFile>> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)?;
        if cfg!(target_os = "linux") {
            Ok(Box::new(MappedLogFile::new(file)?))
        } else {
            // Elsewhere `fsync` is not documented to cover stores through
            // a map: plain buffered appends.
            drop(file);
            self.create(path)
        }
    }

    fn open_append(&self, path: &Path) -> io::Result<Box<dyn WritableFile>> {
        let file = OpenOptions::new().append(true).open(path)?;
        let len = file.metadata()?.len();
        Ok(Box::new(OsWritableFile {
            file,
            buffer: Vec::with_capacity(WRITE_BUFFER_BYTES),
            len,
        }))
    }

    fn open_sequential(&self, path: &Path) -> io::Result<Box<dyn Read + Send>> {
        Ok(Box::new(io::BufReader::with_capacity(
            1 << 20,
            File::open(path)?,
        )))
    }

    fn open_random(&self, path: &Path) -> io::Result<Arc<dyn RandomAccessFile>> {
        let file = File::open(path)?;
        let map = if file.metadata()?.len() == 0 {
            None
        } else {
            // SAFETY: the engine maps only immutable files (finished SSTables),
            // which it never writes, truncates or renames over while a map of
            // them is alive: a table is deleted only after its last handle is
            // dropped, and unlinking does not invalidate a live mapping on
            // Unix. The directory lock keeps other Ferry processes out. A
            // foreign process truncating the file could still fault us; that
            // is outside the engine's contract, as with every mmap-based store.
            Some(unsafe { memmap2::Mmap::map(&file)? })
        };
        Ok(Arc::new(MmapFile { map }))
    }

    fn open_positioned(&self, path: &Path) -> io::Result<Arc<dyn super::PositionedFile>> {
        let file = File::open(path)?;
        let len = file.metadata()?.len();
        Ok(Arc::new(PreadFile { file, len }))
    }

    fn truncate(&self, path: &Path, len: u64) -> io::Result<()> {
        let file = OpenOptions::new().write(true).open(path)?;
        file.set_len(len)?;
        file.sync_all()
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        fs::rename(from, to)
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        fs::remove_file(path)
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in fs::read_dir(dir)? {
            if let Some(name) = entry?.file_name().to_str() {
                names.push(name.to_owned());
            }
        }
        Ok(names)
    }

    fn exists(&self, path: &Path) -> bool {
        path.exists()
    }

    fn is_dir(&self, path: &Path) -> bool {
        fs::symlink_metadata(path).is_ok_and(|m| m.is_dir())
    }

    fn remove_dir_all(&self, path: &Path) -> io::Result<()> {
        fs::remove_dir_all(path)
    }

    fn file_size(&self, path: &Path) -> io::Result<u64> {
        Ok(fs::metadata(path)?.len())
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        File::open(dir)?.sync_all()
    }

    fn hard_link(&self, from: &Path, to: &Path) -> io::Result<()> {
        fs::hard_link(from, to)
    }

    fn available_space(&self, dir: &Path) -> io::Result<u64> {
        use std::os::unix::ffi::OsStrExt;
        let path = std::ffi::CString::new(dir.as_os_str().as_bytes())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "a path with a NUL byte"))?;
        // SAFETY: `path` is a NUL-terminated string that outlives the call,
        // and `stats` is a properly sized, writable statvfs that the call
        // fills in; it is read only after the call reports success.
        let mut stats: libc::statvfs = unsafe { std::mem::zeroed() };
        if unsafe { libc::statvfs(path.as_ptr(), &mut stats) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok((stats.f_bavail as u64).saturating_mul(stats.f_frsize as u64))
    }

    fn remove_dir(&self, path: &Path) -> io::Result<()> {
        fs::remove_dir(path)
    }

    fn lock(&self, path: &Path) -> io::Result<Box<dyn FileLock>> {
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)?;
        match file.try_lock() {
            Ok(()) => Ok(Box::new(OsLock { _file: file })),
            Err(fs::TryLockError::WouldBlock) => Err(io::ErrorKind::WouldBlock.into()),
            Err(fs::TryLockError::Error(e)) => Err(e),
        }
    }
}

/// A file read with `pread`.
#[derive(Debug)]
struct PreadFile {
    file: File,
    len: u64,
}

impl super::PositionedFile for PreadFile {
    fn len(&self) -> u64 {
        self.len
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        std::os::unix::fs::FileExt::read_at(&self.file, buf, offset)
    }
}
