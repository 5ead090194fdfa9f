//! Where a backup chain is kept.

use ferry_engine::fs::{FileSystem, OsFs};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// A place that stores named, immutable files: a local directory (the
/// default, [`LocalDir`]); object storage can implement the same calls.
/// Names are relative paths with `/` separators, as in the module's format.
pub trait BackupTarget: Send + Sync + 'static {
    /// Stores the local file `from` as `name`, atomically: readers see the
    /// whole file or nothing, and once this returns it is durable.
    fn put(&self, name: &str, from: &Path) -> io::Result<()>;
    /// Copies `name` into the local file `to`.
    fn get(&self, name: &str, to: &Path) -> io::Result<()>;
    /// Whether `name` is stored.
    fn exists(&self, name: &str) -> io::Result<bool>;
    /// The names stored under the folder `prefix` (e.g. `"log"`), sorted.
    fn list(&self, prefix: &str) -> io::Result<Vec<String>>;
    /// For messages: where this target is.
    fn describe(&self) -> String;
}

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
}

impl BackupTarget for LocalDir {
    fn put(&self, name: &str, from: &Path) -> io::Result<()> {
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
            // The copy is synced before the rename publishes it.
            fs.copy_file(from, &staging)?;
            fs.rename(&staging, &to)?;
            fs.sync_dir(&dir)
        })();
        if result.is_err() {
            let _ = fs.remove_file(&staging);
        }
        result.map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", to.display())))
    }

    fn get(&self, name: &str, to: &Path) -> io::Result<()> {
        let from = self.path(name)?;
        self.fs
            .copy_file(&from, to)
            .map(drop)
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

    fn describe(&self) -> String {
        self.root.display().to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let back = dir.path().join("back");
        target.get("log/b.log", &back).unwrap();
        assert_eq!(std::fs::read(&back).unwrap(), b"hello");
        for bad in ["../x", "log/../../x", "/etc/passwd", "", "log//x"] {
            assert!(target.put(bad, &source).is_err(), "{bad}");
        }
    }
}
