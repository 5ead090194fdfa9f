//! A backup chain in a local directory.

use super::{conflict, BackupTarget, Version};
use ferry_engine::fs::{FileSystem, OsFs};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// A backup target in a local directory (put it on another disk, or a
/// mounted remote file system, to survive the loss of the node's disk).
/// Its files, and the local files it copies from and to, go through one
/// [`FileSystem`].
#[derive(Debug, Clone)]
pub struct LocalDir {
    fs: Arc<dyn FileSystem>,
    root: PathBuf,
}

impl LocalDir {
    /// Uses (and creates) `root` on the operating system's file system.
    pub fn new(root: impl Into<PathBuf>) -> io::Result<Self> {
        Self::with_fs(Arc::new(OsFs), root)
    }

    /// Uses (and creates) `root` on `fs`.
    pub fn with_fs(fs: Arc<dyn FileSystem>, root: impl Into<PathBuf>) -> io::Result<Self> {
        let root = root.into();
        fs.create_dir_all(&root)?;
        Ok(LocalDir { fs, root })
    }

    fn path(&self, name: &str) -> io::Result<PathBuf> {
        // Names come from catalogs a restore reads; none may leave the root.
        ferry_engine::fs::check_relative_path(name).map_err(|e| {
            io::Error::new(io::ErrorKind::InvalidInput, format!("backup name: {e}"))
        })?;
        Ok(self.root.join(name))
    }

    /// Publishes `name`: `fill` writes (and syncs) a staging file beside
    /// it, which a hard link then makes `name` whole or not at all.
    fn publish(&self, name: &str, fill: impl FnOnce(&Path) -> io::Result<()>) -> io::Result<()> {
        let to = self.path(name)?;
        let fs = &*self.fs;
        let dir = to.parent().unwrap_or(&self.root).to_path_buf();
        if !fs.is_dir(&dir) {
            // A folder made now must itself survive a power loss: sync the
            // parent of each one created, from the root down.
            let mut missing = Vec::new();
            let mut at = dir.as_path();
            while !fs.is_dir(at) && at.starts_with(&self.root) {
                missing.push(at.to_path_buf());
                at = at.parent().unwrap_or(&self.root);
            }
            fs.create_dir_all(&dir)?;
            for created in missing.iter().rev() {
                if let Some(parent) = created.parent() {
                    fs.sync_dir(parent)?;
                }
            }
        }
        let staging = dir.join(format!(
            ".{}.tmp-{}",
            to.file_name().and_then(|n| n.to_str()).unwrap_or("file"),
            crate::snapshot::unique_suffix()
        ));
        let result = (|| {
            // The copy is synced before the link publishes it; a link, unlike
            // a rename, fails if the name is taken, so no put replaces one.
            fill(&staging)?;
            fs.hard_link(&staging, &to)?;
            fs.sync_dir(&dir)
        })();
        let _ = fs.remove_file(&staging);
        result.map_err(|e| match e.kind() {
            io::ErrorKind::AlreadyExists => conflict(format!("{} is stored already", to.display())),
            kind => io::Error::new(kind, format!("{}: {e}", to.display())),
        })
    }
}

impl BackupTarget for LocalDir {
    fn put(&self, name: &str, from: &Path) -> io::Result<()> {
        self.publish(name, |staging| self.fs.copy_file(from, staging).map(drop))
    }

    fn put_bytes(&self, name: &str, bytes: Vec<u8>) -> io::Result<()> {
        self.publish(name, |staging| {
            let mut out = self.fs.create(staging)?;
            out.append(&bytes)?;
            out.sync()
        })
    }

    fn get(&self, name: &str, to: &Path) -> io::Result<u64> {
        let from = self.path(name)?;
        self.fs
            .copy_file(&from, to)
            .and_then(|_| self.fs.file_size(to))
            .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", from.display())))
    }

    fn exists(&self, name: &str) -> io::Result<bool> {
        Ok(self.fs.exists(&self.path(name)?))
    }

    fn list(&self, prefix: &str) -> io::Result<Vec<String>> {
        let dir = self.path(prefix)?;
        let mut names = Vec::new();
        if !self.fs.is_dir(&dir) {
            return Ok(names);
        }
        for name in self.fs.list(&dir)? {
            // Staging files of puts in progress (or interrupted) are not stored names.
            if name.starts_with('.') || self.fs.is_dir(&dir.join(&name)) {
                continue;
            }
            names.push(format!("{prefix}/{name}"));
        }
        names.sort();
        Ok(names)
    }

    fn delete(&self, name: &str) -> io::Result<()> {
        let path = self.path(name)?;
        match self.fs.remove_file(&path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => {
                Err(io::Error::new(e.kind(), format!("{}: {e}", path.display())))
            }
            _ => Ok(()),
        }
    }

    fn read_versioned(&self, name: &str) -> io::Result<Option<(Vec<u8>, Version)>> {
        let path = self.path(name)?;
        if !self.fs.exists(&path) {
            return Ok(None);
        }
        let bytes = self.fs.read_all(&path)?;
        let version = content_version(&bytes);
        Ok(Some((bytes, version)))
    }

    fn swap(&self, name: &str, bytes: &[u8], expected: Option<&Version>) -> io::Result<()> {
        let path = self.path(name)?;
        // The lock makes read-compare-write one step for every process on
        // this host; a directory shared over a network file system has no
        // such step (say so in the docs: fence through object storage).
        let _lock = self.lock_records()?;
        let stored = self.read_versioned(name)?.map(|(_, v)| v);
        if stored.as_ref() != expected {
            return Err(conflict(format!(
                "{} changed since it was read",
                path.display()
            )));
        }
        self.fs.write_atomic(&path, bytes)
    }

    fn describe(&self) -> String {
        self.root.display().to_string()
    }
}

impl LocalDir {
    fn lock_records(&self) -> io::Result<Box<dyn ferry_engine::fs::FileLock>> {
        self.fs
            .lock_waiting(&self.root.join(".records.lock"), Duration::from_secs(10))
    }
}

/// A record's version in a directory: its length and CRC32 (a swap
/// compares contents, so an identical rewrite is not a change).
fn content_version(bytes: &[u8]) -> Version {
    Version(format!("{}-{:08x}", bytes.len(), crc32fast::hash(bytes)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn swap_replaces_only_the_version_read() {
        let dir = tempfile::tempdir().unwrap();
        let target = LocalDir::new(dir.path()).unwrap();
        assert!(target.read_versioned("head").unwrap().is_none());
        target.swap("head", b"one", None).unwrap();
        assert!(target.swap("head", b"two", None).is_err());
        let (bytes, version) = target.read_versioned("head").unwrap().unwrap();
        assert_eq!(bytes, b"one");
        target.swap("head", b"two", Some(&version)).unwrap();
        let error = target.swap("head", b"three", Some(&version)).unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::AlreadyExists);
        assert_eq!(target.read_versioned("head").unwrap().unwrap().0, b"two");
    }

    #[test]
    fn put_get_list_and_names_stay_inside() {
        let dir = tempfile::tempdir().unwrap();
        let target = LocalDir::new(dir.path().join("b")).unwrap();
        let source = dir.path().join("src");
        std::fs::write(&source, b"hello").unwrap();
        target.put("log/a.log", &source).unwrap();
        target.put("log/b.log", &source).unwrap();
        assert!(target.exists("log/a.log").unwrap());
        assert!(!target.exists("log/c.log").unwrap());
        assert_eq!(target.list("log").unwrap(), vec!["log/a.log", "log/b.log"]);
        assert!(target.list("checkpoints").unwrap().is_empty());
        let other = dir.path().join("other");
        std::fs::write(&other, b"changed").unwrap();
        let error = target.put("log/a.log", &other).unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::AlreadyExists, "{error}");
        let back = dir.path().join("back");
        assert_eq!(target.get("log/a.log", &back).unwrap(), 5);
        assert_eq!(std::fs::read(&back).unwrap(), b"hello");
        target.get("log/b.log", &back).unwrap();
        assert_eq!(std::fs::read(&back).unwrap(), b"hello");
        target.delete("log/a.log").unwrap();
        target.delete("log/a.log").unwrap();
        assert_eq!(target.list("log").unwrap(), vec!["log/b.log"]);
        for bad in ["../x", "log/../../x", "/etc/passwd", "", "log//x"] {
            assert!(target.put(bad, &source).is_err(), "{bad}");
        }
    }
}
