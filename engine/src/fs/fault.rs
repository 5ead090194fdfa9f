//! An in-memory file system that can simulate a power loss.
//!
//! It models what a crash-consistent disk promises and nothing more:
//! - a file's bytes survive a power loss only up to the length at its last
//!   `sync`;
//! - a directory entry (a creation, rename or removal) survives only if the
//!   directory was synced after it. A file created but never made durable in
//!   its directory disappears, and an unsynced rename reverts.
//!
//! [`FaultInjectionFs::power_loss`] applies exactly those rules, so a test
//! can write, "cut the power" at any moment and reopen the database on what
//! a real disk would have kept.

use super::{FileLock, FileSystem, RandomAccessFile, WritableFile};
use parking_lot::Mutex;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;

#[derive(Debug, Default)]
struct FileData {
    /// The content as the running system sees it, reserved zeros included.
    bytes: Vec<u8>,
    /// Bytes of `bytes` that survive a power loss.
    synced_len: usize,
    /// The file's size after a power loss (at least `synced_len`): a log
    /// file's reserved space is durable zeros once synced, as `fallocate`d
    /// blocks are.
    synced_size: usize,
}

impl FileData {
    /// What a power loss leaves of this file.
    fn durable_bytes(&self) -> Vec<u8> {
        let mut bytes = self.bytes[..self.synced_len.min(self.bytes.len())].to_vec();
        bytes.resize(self.synced_size.max(bytes.len()), 0);
        bytes
    }
}

/// Granularity of a log file's reserved space here: small, so that tests
/// stay light, but larger than most records, so that records land in and
/// straddle reserved space as they do on a real disk.
const LOG_RESERVE_BYTES: usize = 4096;

type FileId = u64;

#[derive(Debug, Default)]
struct State {
    files: HashMap<FileId, FileData>,
    /// Directory entries as the running system sees them.
    live: BTreeMap<PathBuf, FileId>,
    /// Directory entries as they were at each directory's last sync.
    durable: BTreeMap<PathBuf, FileId>,
    dirs: HashSet<PathBuf>,
    locks: HashSet<PathBuf>,
    next_id: FileId,
    /// When set, every write and sync fails, as on a dead disk.
    fail_writes: bool,
}

/// In-memory [`FileSystem`] that tracks durability, for crash tests.
///
/// ```
/// use ferry_engine::fs::FaultInjectionFs;
/// use ferry_engine::{Db, Durability, Options};
/// use std::sync::Arc;
///
/// let fs = FaultInjectionFs::new();
/// let options = || Options { fs: Arc::new(fs.clone()), durability: Durability::Sync, ..Options::default() };
/// let db = Db::open("/db", options())?;
/// db.put(b"acknowledged", b"1")?;
/// // What a disk would hold if the power failed now.
/// let image = fs.durable_image();
/// drop(db);
/// let recovered = Db::open("/db", Options { fs: Arc::new(image), ..options() })?;
/// assert_eq!(recovered.get(b"acknowledged")?.as_deref(), Some(&b"1"[..]));
/// # Ok::<(), ferry_engine::Error>(())
/// ```
#[derive(Debug, Clone, Default)]
pub struct FaultInjectionFs {
    state: Arc<Mutex<State>>,
}

impl FaultInjectionFs {
    /// An empty file system.
    pub fn new() -> Self {
        Self::default()
    }

    /// Simulates a power loss: every file falls back to its last synced
    /// length, every directory to its last synced entries, and all locks
    /// are released. Handles opened before stay usable but write into
    /// orphaned files.
    pub fn power_loss(&self) {
        let mut state = self.state.lock();
        state.live = state.durable.clone();
        let referenced: HashSet<FileId> = state.live.values().copied().collect();
        state.files.retain(|id, _| referenced.contains(id));
        for file in state.files.values_mut() {
            file.bytes = file.durable_bytes();
            file.synced_len = file.bytes.len();
            file.synced_size = file.bytes.len();
        }
        state.locks.clear();
        state.fail_writes = false;
    }

    /// What a disk would hold if the power failed now, as a new, independent
    /// file system: the running database keeps writing to `self`, which
    /// no longer matters, while recovery is tested on the image.
    pub fn durable_image(&self) -> FaultInjectionFs {
        self.image(true)
    }

    /// What the OS would hold if the *process* died now (not the machine):
    /// every written byte and entry, synced or not, as a new file system.
    pub fn process_crash_image(&self) -> FaultInjectionFs {
        self.image(false)
    }

    fn image(&self, power_loss: bool) -> FaultInjectionFs {
        let state = self.state.lock();
        let entries = if power_loss {
            &state.durable
        } else {
            &state.live
        };
        let mut files = HashMap::new();
        // Files named by either view, so the image can itself lose power.
        for id in entries.values().chain(state.durable.values()) {
            if let Some(file) = state.files.get(id) {
                let data = if power_loss {
                    let bytes = file.durable_bytes();
                    FileData {
                        synced_len: bytes.len(),
                        synced_size: bytes.len(),
                        bytes,
                    }
                } else {
                    FileData {
                        bytes: file.bytes.clone(),
                        synced_len: file.synced_len,
                        synced_size: file.synced_size,
                    }
                };
                files.insert(*id, data);
            }
        }
        let image = State {
            files,
            live: entries.clone(),
            durable: state.durable.clone(),
            dirs: state.dirs.clone(),
            locks: HashSet::new(),
            next_id: state.next_id,
            fail_writes: false,
        };
        FaultInjectionFs {
            state: Arc::new(Mutex::new(image)),
        }
    }

    /// A new, empty file at `path` (replacing one there, unless
    /// `exclusive`).
    fn new_file(&self, path: &Path, exclusive: bool) -> io::Result<FileId> {
        let mut state = self.state.lock();
        if state.fail_writes {
            return Err(dead_disk());
        }
        if exclusive && (state.live.contains_key(path) || state.dirs.contains(path)) {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("{} exists", path.display()),
            ));
        }
        if !state.dirs.contains(&parent(path)) {
            return Err(not_found());
        }
        let id = state.next_id;
        state.next_id += 1;
        state.files.insert(id, FileData::default());
        state.live.insert(path.to_path_buf(), id);
        Ok(id)
    }

    /// Makes every later write and sync fail with an I/O error (a dying disk).
    pub fn set_fail_writes(&self, fail: bool) {
        self.state.lock().fail_writes = fail;
    }

    /// Bytes of `path` not yet synced (for assertions in tests).
    pub fn unsynced_bytes(&self, path: &Path) -> Option<usize> {
        let state = self.state.lock();
        let id = state.live.get(path)?;
        let file = state.files.get(id)?;
        Some(file.bytes.len() - file.synced_len)
    }

    /// Overwrites one byte of a file in place (for corruption tests).
    pub fn corrupt_byte(&self, path: &Path, offset: usize) -> io::Result<()> {
        let mut state = self.state.lock();
        let id = *state.live.get(path).ok_or_else(not_found)?;
        let file = state.files.get_mut(&id).ok_or_else(not_found)?;
        let byte = file.bytes.get_mut(offset).ok_or_else(not_found)?;
        *byte ^= 0x40;
        Ok(())
    }
}

/// Applies a write to file `id`, unless writes are set to fail. (A file
/// removed meanwhile is an orphan: writing to it changes nothing.)
fn update_file(
    state: &Mutex<State>,
    id: FileId,
    write: impl FnOnce(&mut FileData),
) -> io::Result<()> {
    let mut state = state.lock();
    if state.fail_writes {
        return Err(dead_disk());
    }
    if let Some(file) = state.files.get_mut(&id) {
        write(file);
    }
    Ok(())
}

fn not_found() -> io::Error {
    io::ErrorKind::NotFound.into()
}

fn dead_disk() -> io::Error {
    io::Error::other("injected write failure")
}

fn parent(path: &Path) -> PathBuf {
    path.parent().map(Path::to_path_buf).unwrap_or_default()
}

struct MemWritableFile {
    state: Arc<Mutex<State>>,
    id: FileId,
}

impl WritableFile for MemWritableFile {
    fn append(&mut self, data: &[u8]) -> io::Result<()> {
        update_file(&self.state, self.id, |file| {
            file.bytes.extend_from_slice(data)
        })
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }

    fn sync(&mut self) -> io::Result<()> {
        update_file(&self.state, self.id, |file| {
            file.synced_len = file.bytes.len();
            file.synced_size = file.bytes.len();
        })
    }

    fn len(&self) -> u64 {
        let state = self.state.lock();
        state
            .files
            .get(&self.id)
            .map_or(0, |f| f.bytes.len() as u64)
    }
}

/// A log file that reserves space ahead of its appends, like `OsFs`'s
/// mapped log: the file runs on in zeros past `len` until it is finished
/// or dropped.
struct MemLogFile {
    state: Arc<Mutex<State>>,
    id: FileId,
    len: usize,
}

impl WritableFile for MemLogFile {
    fn append(&mut self, data: &[u8]) -> io::Result<()> {
        let (start, end) = (self.len, self.len + data.len());
        update_file(&self.state, self.id, |file| {
            if end > file.bytes.len() {
                file.bytes
                    .resize(end.next_multiple_of(LOG_RESERVE_BYTES), 0);
            }
            file.bytes[start..end].copy_from_slice(data);
        })?;
        self.len = end;
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }

    fn sync(&mut self) -> io::Result<()> {
        let len = self.len;
        update_file(&self.state, self.id, |file| {
            file.synced_len = len;
            file.synced_size = file.bytes.len();
        })
    }

    fn finish(&mut self) -> io::Result<()> {
        let len = self.len;
        update_file(&self.state, self.id, |file| {
            file.bytes.truncate(len);
            file.synced_len = len;
            file.synced_size = len;
        })
    }

    fn len(&self) -> u64 {
        self.len as u64
    }
}

impl Drop for MemLogFile {
    fn drop(&mut self) {
        // Cut back but not synced, like `OsFs`: a power loss before the
        // next sync brings the reserved zeros back.
        let mut state = self.state.lock();
        if let Some(file) = state.files.get_mut(&self.id) {
            file.bytes.truncate(self.len);
        }
    }
}

#[derive(Debug)]
struct MemRandomFile {
    bytes: Vec<u8>,
}

impl RandomAccessFile for MemRandomFile {
    fn bytes(&self) -> &[u8] {
        &self.bytes
    }
}

#[derive(Debug)]
struct MemLock {
    state: Arc<Mutex<State>>,
    path: PathBuf,
}

impl FileLock for MemLock {}

impl Drop for MemLock {
    fn drop(&mut self) {
        self.state.lock().locks.remove(&self.path);
    }
}

impl FaultInjectionFs {
    fn read_file(&self, path: &Path) -> io::Result<Vec<u8>> {
        let state = self.state.lock();
        let id = state.live.get(path).ok_or_else(not_found)?;
        Ok(state.files.get(id).ok_or_else(not_found)?.bytes.clone())
    }
}

impl FileSystem for FaultInjectionFs {
    fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        let mut state = self.state.lock();
        let mut current = Some(path);
        while let Some(dir) = current {
            state.dirs.insert(dir.to_path_buf());
            current = dir.parent();
        }
        Ok(())
    }

    fn create(&self, path: &Path) -> io::Result<Box<dyn WritableFile>> {
        let id = self.new_file(path, false)?;
        Ok(Box::new(MemWritableFile {
            state: self.state.clone(),
            id,
        }))
    }

    /// As [`FileSystem::create`], refusing a name that is taken; this file
    /// system has no permissions, so `private` changes nothing.
    fn create_new(&self, path: &Path, _private: bool) -> io::Result<Box<dyn WritableFile>> {
        let id = self.new_file(path, true)?;
        Ok(Box::new(MemWritableFile {
            state: self.state.clone(),
            id,
        }))
    }

    fn create_dir(&self, path: &Path) -> io::Result<()> {
        let mut state = self.state.lock();
        if state.live.contains_key(path) || state.dirs.contains(path) {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("{} exists", path.display()),
            ));
        }
        if !state.dirs.contains(&parent(path)) {
            return Err(not_found());
        }
        state.dirs.insert(path.to_path_buf());
        Ok(())
    }

    fn create_log(&self, path: &Path) -> io::Result<Box<dyn WritableFile>> {
        let id = self.new_file(path, false)?;
        Ok(Box::new(MemLogFile {
            state: self.state.clone(),
            id,
            len: 0,
        }))
    }

    fn open_append(&self, path: &Path) -> io::Result<Box<dyn WritableFile>> {
        let state = self.state.lock();
        let id = *state.live.get(path).ok_or_else(not_found)?;
        Ok(Box::new(MemWritableFile {
            state: self.state.clone(),
            id,
        }))
    }

    fn open_sequential(&self, path: &Path) -> io::Result<Box<dyn Read + Send>> {
        Ok(Box::new(io::Cursor::new(self.read_file(path)?)))
    }

    fn open_random(&self, path: &Path) -> io::Result<Arc<dyn RandomAccessFile>> {
        Ok(Arc::new(MemRandomFile {
            bytes: self.read_file(path)?,
        }))
    }

    fn truncate(&self, path: &Path, len: u64) -> io::Result<()> {
        let mut state = self.state.lock();
        if state.fail_writes {
            return Err(dead_disk());
        }
        let id = *state.live.get(path).ok_or_else(not_found)?;
        let file = state.files.get_mut(&id).ok_or_else(not_found)?;
        let len = usize::try_from(len).map_err(|_| io::Error::other("length overflow"))?;
        file.bytes.truncate(len);
        // Like `OsFs`, the new length itself is made durable.
        file.synced_len = file.bytes.len();
        file.synced_size = file.bytes.len();
        Ok(())
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let mut state = self.state.lock();
        if state.fail_writes {
            return Err(dead_disk());
        }
        if state.dirs.contains(from) {
            // A directory: every entry under it moves, durable entries
            // included. This model tracks the durability of file entries,
            // not of directories, so a directory's rename is durable at
            // once here (on a disk it is after a sync of its parent): a
            // missing parent sync after a directory rename goes unseen.
            if state.dirs.contains(to) || state.live.contains_key(to) {
                return Err(io::ErrorKind::AlreadyExists.into());
            }
            let moved = |path: &Path| to.join(path.strip_prefix(from).expect("under from"));
            let files: Vec<(PathBuf, FileId)> = state
                .live
                .iter()
                .filter(|(path, _)| path.starts_with(from))
                .map(|(path, id)| (path.clone(), *id))
                .collect();
            for (path, id) in files {
                state.live.remove(&path);
                state.live.insert(moved(&path), id);
            }
            let durable: Vec<(PathBuf, FileId)> = state
                .durable
                .iter()
                .filter(|(path, _)| path.starts_with(from))
                .map(|(path, id)| (path.clone(), *id))
                .collect();
            for (path, id) in durable {
                state.durable.remove(&path);
                state.durable.insert(moved(&path), id);
            }
            let dirs: Vec<PathBuf> = state
                .dirs
                .iter()
                .filter(|d| d.starts_with(from))
                .cloned()
                .collect();
            for dir in dirs {
                state.dirs.remove(&dir);
                state.dirs.insert(moved(&dir));
            }
            return Ok(());
        }
        let id = state.live.remove(from).ok_or_else(not_found)?;
        state.live.insert(to.to_path_buf(), id);
        Ok(())
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        let mut state = self.state.lock();
        state.live.remove(path).ok_or_else(not_found)?;
        Ok(())
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        let state = self.state.lock();
        if !state.dirs.contains(dir) {
            return Err(not_found());
        }
        Ok(state
            .live
            .keys()
            .chain(state.dirs.iter())
            .filter(|path| path.parent() == Some(dir))
            .filter_map(|path| path.file_name()?.to_str().map(str::to_owned))
            .collect())
    }

    fn exists(&self, path: &Path) -> bool {
        let state = self.state.lock();
        state.live.contains_key(path) || state.dirs.contains(path)
    }

    fn is_dir(&self, path: &Path) -> bool {
        self.state.lock().dirs.contains(path)
    }

    fn file_size(&self, path: &Path) -> io::Result<u64> {
        let state = self.state.lock();
        let id = state.live.get(path).ok_or_else(not_found)?;
        Ok(state.files.get(id).ok_or_else(not_found)?.bytes.len() as u64)
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        let mut state = self.state.lock();
        if state.fail_writes {
            return Err(dead_disk());
        }
        let State { live, durable, .. } = &mut *state;
        durable.retain(|path, _| path.parent() != Some(dir));
        for (path, id) in live.iter() {
            if path.parent() == Some(dir) {
                durable.insert(path.clone(), *id);
            }
        }
        Ok(())
    }

    fn hard_link(&self, from: &Path, to: &Path) -> io::Result<()> {
        let mut state = self.state.lock();
        if state.fail_writes {
            return Err(dead_disk());
        }
        let id = *state.live.get(from).ok_or_else(not_found)?;
        if !state.dirs.contains(&parent(to)) {
            return Err(not_found());
        }
        if state.live.contains_key(to) {
            return Err(io::ErrorKind::AlreadyExists.into());
        }
        state.live.insert(to.to_path_buf(), id);
        Ok(())
    }

    fn remove_dir(&self, path: &Path) -> io::Result<()> {
        let mut state = self.state.lock();
        if state.live.keys().any(|p| p.parent() == Some(path))
            || state.dirs.iter().any(|d| d.parent() == Some(path))
        {
            return Err(io::Error::other("directory not empty"));
        }
        state.dirs.remove(path);
        Ok(())
    }

    fn lock(&self, path: &Path) -> io::Result<Box<dyn FileLock>> {
        let mut state = self.state.lock();
        if !state.locks.insert(path.to_path_buf()) {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        Ok(Box::new(MemLock {
            state: self.state.clone(),
            path: path.to_path_buf(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn power_loss_keeps_only_synced_bytes_and_entries() {
        let fs = FaultInjectionFs::new();
        let dir = Path::new("/db");
        fs.create_dir_all(dir).unwrap();
        let mut a = fs.create(&dir.join("a")).unwrap();
        a.append(b"hello").unwrap();
        a.sync().unwrap();
        a.append(b" world").unwrap();
        fs.sync_dir(dir).unwrap();
        let mut b = fs.create(&dir.join("b")).unwrap();
        b.append(b"lost").unwrap();
        b.sync().unwrap(); // data synced, but the entry never was
        fs.power_loss();
        assert_eq!(fs.read_all(&dir.join("a")).unwrap(), b"hello");
        assert!(!fs.exists(&dir.join("b")));
    }

    #[test]
    fn unsynced_rename_reverts() {
        let fs = FaultInjectionFs::new();
        let dir = Path::new("/db");
        fs.create_dir_all(dir).unwrap();
        fs.write_atomic(&dir.join("CURRENT"), b"one").unwrap();
        let mut tmp = fs.create(&dir.join("CURRENT.tmp")).unwrap();
        tmp.append(b"two").unwrap();
        tmp.sync().unwrap();
        fs.rename(&dir.join("CURRENT.tmp"), &dir.join("CURRENT"))
            .unwrap();
        fs.power_loss();
        assert_eq!(fs.read_all(&dir.join("CURRENT")).unwrap(), b"one");
    }

    #[test]
    fn tree_bytes_counts_every_file_below() {
        let fs = FaultInjectionFs::new();
        fs.create_dir_all(Path::new("/d/sub/deeper")).unwrap();
        for (path, bytes) in [("/d/a", 3), ("/d/sub/b", 5), ("/d/sub/deeper/c", 7)] {
            fs.create(Path::new(path))
                .unwrap()
                .append(&vec![0; bytes])
                .unwrap();
        }
        assert_eq!(fs.tree_bytes(Path::new("/d")), 15);
        assert_eq!(fs.tree_bytes(Path::new("/d/sub")), 12);
        assert_eq!(fs.tree_bytes(Path::new("/missing")), 0);
    }
}
