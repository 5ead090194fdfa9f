//! The file-system layer every engine file goes through.
//!
//! The engine never calls `std::fs` directly: it writes through
//! [`FileSystem`], so that tests can swap in [`FaultInjectionFs`], which
//! remembers how much of each file was fsynced and which directory entries
//! were made durable, and can then simulate a power loss (LevelDB's
//! fault-injection env). [`OsFs`] is the real implementation; it reads
//! immutable files through `mmap`.

mod fault;
mod mapped;
mod name;
mod os;

pub use fault::FaultInjectionFs;
pub use name::{check_file_name, check_relative_path, BadName};
pub use os::OsFs;

use std::fmt::Debug;
use std::io::{self, Read};
use std::path::Path;
use std::sync::Arc;

/// A file opened for appending. Appends may be buffered in user space until
/// [`WritableFile::flush`]; they are durable only after [`WritableFile::sync`].
pub trait WritableFile: Send + Sync {
    /// Appends bytes at the end of the file.
    fn append(&mut self, data: &[u8]) -> io::Result<()>;
    /// Hands buffered bytes to the operating system (they now survive a
    /// process crash, not a power loss).
    fn flush(&mut self) -> io::Result<()>;
    /// Flushes, then makes the file's data durable (fdatasync).
    fn sync(&mut self) -> io::Result<()>;
    /// Makes the file durable at exactly its appended length: space a log
    /// file reserved ahead of its appends is given back first, so the file
    /// ends at its last record even after a power loss.
    fn finish(&mut self) -> io::Result<()> {
        self.sync()
    }
    /// Bytes appended so far, buffered or not.
    fn len(&self) -> u64;
    /// True when nothing has been appended.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// An immutable file whose whole content can be borrowed as one slice.
pub trait RandomAccessFile: Send + Sync + Debug {
    /// The file's bytes.
    fn bytes(&self) -> &[u8];
}

/// A file read at any offset, without a mapping (see
/// [`FileSystem::open_positioned`]).
pub trait PositionedFile: Send + Sync + Debug {
    /// The file's length when it was opened.
    fn len(&self) -> u64;
    /// True for an empty file.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Reads up to `buf.len()` bytes at `offset`; 0 at the end.
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<usize>;
}

/// A [`PositionedFile`] over a file read whole or mapped.
#[derive(Debug)]
struct WholeFile(Arc<dyn RandomAccessFile>);

impl PositionedFile for WholeFile {
    fn len(&self) -> u64 {
        self.0.bytes().len() as u64
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        let bytes = self.0.bytes();
        let from = usize::try_from(offset).map_or(bytes.len(), |o| o.min(bytes.len()));
        let n = buf.len().min(bytes.len() - from);
        buf[..n].copy_from_slice(&bytes[from..from + n]);
        Ok(n)
    }
}

/// A held exclusive lock on a file; released when dropped.
pub trait FileLock: Send + Sync + Debug {}

/// The operations the engine needs from a file system.
pub trait FileSystem: Send + Sync + Debug {
    /// Creates a directory and its parents.
    fn create_dir_all(&self, path: &Path) -> io::Result<()>;
    /// [`FileSystem::create_dir_all`], then each directory it created made
    /// durable in its parent: a new directory's entry survives a power
    /// loss only once its parent is synced, and what is synced inside it
    /// is lost with it otherwise.
    fn create_dir_durable(&self, path: &Path) -> io::Result<()> {
        let mut created = Vec::new();
        let mut at = Some(path);
        while let Some(dir) = at.filter(|d| !d.as_os_str().is_empty() && !self.exists(d)) {
            created.push(dir.to_path_buf());
            at = dir.parent();
        }
        self.create_dir_all(path)?;
        for dir in created.iter().rev() {
            if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
                self.sync_dir(parent)?;
            }
        }
        Ok(())
    }
    /// Creates (or truncates) a file for appending.
    fn create(&self, path: &Path) -> io::Result<Box<dyn WritableFile>>;
    /// Creates a file for appending that must not exist yet: a name that
    /// is taken fails, a symlink planted there included (it is never
    /// followed), so nothing of another's is opened. With `private`, only
    /// its owner may read or write it (a key), from its creation on, where
    /// the file system has permissions. For names that come from outside
    /// and for secrets.
    fn create_new(&self, path: &Path, private: bool) -> io::Result<Box<dyn WritableFile>>;
    /// Creates one directory, whose parent exists and whose name is not
    /// taken (by anything: a planted symlink fails too).
    fn create_dir(&self, path: &Path) -> io::Result<()>;
    /// Creates (or truncates) a log segment for appending. Unlike
    /// [`FileSystem::create`], the file may reserve zero-filled space ahead
    /// of its appends (so its size on disk runs past [`WritableFile::len`]
    /// until [`WritableFile::finish`] or drop), which lets [`OsFs`] write
    /// records into a shared memory map: a record is in the kernel's page
    /// cache, safe from a process crash, without a system call. Readers of
    /// such a file treat an all-zero tail after the last record as unused.
    fn create_log(&self, path: &Path) -> io::Result<Box<dyn WritableFile>> {
        self.create(path)
    }
    /// Opens an existing file for appending at its end.
    fn open_append(&self, path: &Path) -> io::Result<Box<dyn WritableFile>>;
    /// Opens a file for one sequential read.
    fn open_sequential(&self, path: &Path) -> io::Result<Box<dyn Read + Send>>;
    /// Opens an immutable file for random reads.
    fn open_random(&self, path: &Path) -> io::Result<Arc<dyn RandomAccessFile>>;
    /// Opens a file for reads at any offset, never mapped: for files from
    /// outside the engine (an import's), which another process may cut
    /// short while they are read. A cut mapping faults the process; a read
    /// past the end only comes back short.
    fn open_positioned(&self, path: &Path) -> io::Result<Arc<dyn PositionedFile>> {
        Ok(Arc::new(WholeFile(self.open_random(path)?)))
    }
    /// Cuts a file to `len` bytes and makes the new length durable.
    fn truncate(&self, path: &Path, len: u64) -> io::Result<()>;
    /// Renames a file, replacing any file at `to`, or a directory to a name
    /// that does not exist. Durable after `sync_dir` of the parent.
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    /// Removes a file. Durable after `sync_dir`.
    fn remove_file(&self, path: &Path) -> io::Result<()>;
    /// Names of the entries of a directory.
    fn list(&self, dir: &Path) -> io::Result<Vec<String>>;
    /// Whether a file or directory exists.
    fn exists(&self, path: &Path) -> bool;
    /// Whether `path` is a directory.
    fn is_dir(&self, path: &Path) -> bool;
    /// Size of a file in bytes.
    fn file_size(&self, path: &Path) -> io::Result<u64>;
    /// Makes the directory's entries (creations, renames, removals) durable.
    fn sync_dir(&self, dir: &Path) -> io::Result<()>;
    /// Creates `to` as another name of the file `from` (a hard link). Fails
    /// when the two are on different file systems; callers then copy.
    fn hard_link(&self, from: &Path, to: &Path) -> io::Result<()>;
    /// Removes an empty directory.
    fn remove_dir(&self, path: &Path) -> io::Result<()>;
    /// Takes an exclusive lock on `path`, failing with `WouldBlock` if it is held.
    fn lock(&self, path: &Path) -> io::Result<Box<dyn FileLock>>;

    /// Takes an exclusive lock on `path`, waiting up to `wait` for its
    /// holder to let it go; then fails with `WouldBlock`. For a lock held
    /// briefly, or by an owner that is shutting down.
    fn lock_waiting(
        &self,
        path: &Path,
        wait: std::time::Duration,
    ) -> io::Result<Box<dyn FileLock>> {
        let deadline = std::time::Instant::now() + wait;
        loop {
            match self.lock(path) {
                Err(e)
                    if e.kind() == io::ErrorKind::WouldBlock
                        && std::time::Instant::now() < deadline =>
                {
                    std::thread::sleep(std::time::Duration::from_millis(2));
                }
                other => return other,
            }
        }
    }

    /// Removes a directory and everything in it (no symbolic link is
    /// followed). Durable after `sync_dir` of the parent.
    fn remove_dir_all(&self, path: &Path) -> io::Result<()> {
        for name in self.list(path)? {
            let child = path.join(name);
            if self.is_dir(&child) {
                self.remove_dir_all(&child)?;
            } else {
                self.remove_file(&child)?;
            }
        }
        self.remove_dir(path)
    }

    /// Bytes of the files under `dir`, recursively; what cannot be listed
    /// or sized counts 0 (a figure for status pages, not an inventory).
    fn tree_bytes(&self, dir: &Path) -> u64 {
        let Ok(names) = self.list(dir) else {
            return 0;
        };
        names
            .into_iter()
            .map(|name| {
                let path = dir.join(name);
                match self.is_dir(&path) {
                    true => self.tree_bytes(&path),
                    false => self.file_size(&path).unwrap_or(0),
                }
            })
            .sum()
    }

    /// Bytes an unprivileged writer may still add to the file system
    /// holding `dir`. File systems that cannot tell answer `u64::MAX`.
    fn available_space(&self, _dir: &Path) -> io::Result<u64> {
        Ok(u64::MAX)
    }

    /// Reads a whole (small) file.
    fn read_all(&self, path: &Path) -> io::Result<Vec<u8>> {
        let mut bytes = Vec::new();
        self.open_sequential(path)?.read_to_end(&mut bytes)?;
        Ok(bytes)
    }

    /// Copies a file in bounded memory, syncs the copy and returns the
    /// CRC32 of its bytes (so a copy is verified as it is made).
    fn copy_file(&self, from: &Path, to: &Path) -> io::Result<u32> {
        let mut source = self.open_sequential(from)?;
        let mut target = self.create(to)?;
        let mut crc = crc32fast::Hasher::new();
        let mut buffer = vec![0u8; 1 << 20];
        loop {
            let read = source.read(&mut buffer)?;
            if read == 0 {
                break;
            }
            crc.update(&buffer[..read]);
            target.append(&buffer[..read])?;
        }
        target.sync()?;
        Ok(crc.finalize())
    }

    /// CRC32 of a whole file, read in bounded memory.
    fn file_crc(&self, path: &Path) -> io::Result<u32> {
        let mut source = self.open_sequential(path)?;
        let mut crc = crc32fast::Hasher::new();
        let mut buffer = vec![0u8; 1 << 20];
        loop {
            let read = source.read(&mut buffer)?;
            if read == 0 {
                return Ok(crc.finalize());
            }
            crc.update(&buffer[..read]);
        }
    }

    /// Writes a small file and makes it durable under its final name:
    /// write to `path.tmp`, fsync, rename, fsync the directory.
    fn write_atomic(&self, path: &Path, data: &[u8]) -> io::Result<()> {
        self.write_atomic_as(path, data, false)
    }
    /// [`FileSystem::write_atomic`]; with `private`, a file only its owner
    /// may read (a key): `path.tmp` is then created anew, owner-only from
    /// the start (see [`FileSystem::create_new`]), since a leftover or
    /// planted one would keep its own permissions, and the data with them.
    fn write_atomic_as(&self, path: &Path, data: &[u8], private: bool) -> io::Result<()> {
        let tmp = path.with_extension("tmp");
        let mut file = if private {
            match self.remove_file(&tmp) {
                Err(error) if error.kind() != io::ErrorKind::NotFound => return Err(error),
                _ => {}
            }
            self.create_new(&tmp, true)?
        } else {
            self.create(&tmp)?
        };
        file.append(data)?;
        file.sync()?;
        drop(file);
        self.rename(&tmp, path)?;
        let parent = match path.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => parent,
            _ => Path::new("."),
        };
        self.sync_dir(parent)
    }
}
