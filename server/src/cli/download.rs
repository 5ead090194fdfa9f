//! Files streamed by a server into a new local directory (snapshot
//! downloads, Parquet exports): every name is checked by the engine's one
//! rule for names from outside, every file's size and CRC32 at its end,
//! and the files are written into a staging directory of the download's
//! own (`.<name>.partial-<pid>-<nanos>` beside it, so two downloads never
//! share one), renamed to `<dir>` only once everything arrived and was
//! counted, and made durable there (a failed download leaves nothing).
//! Every file goes through the engine's `FileSystem`.

use super::exit;
use ferry_engine::fs::{FileSystem, WritableFile};
use std::path::{Path, PathBuf};
use std::sync::Arc;

struct Incoming {
    name: String,
    file: Box<dyn WritableFile>,
    crc: crc32fast::Hasher,
    size: u64,
}

/// See the module docs.
pub struct Download {
    fs: Arc<dyn FileSystem>,
    dir: PathBuf,
    partial: PathBuf,
    current: Option<Incoming>,
    bar: indicatif::ProgressBar,
    files: u32,
    bytes: u64,
    done: bool,
}

fn failed(what: impl std::fmt::Display) -> i32 {
    eprintln!("error: {what}");
    exit::FAILED
}

impl Download {
    /// A download into `dir`, which must not exist; `progress` draws a bar
    /// on stderr.
    pub fn new(dir: &Path, progress: bool) -> Result<Download, i32> {
        Self::on(ferry_engine::fs::OsFs::shared(), dir, progress)
    }

    /// [`Download::new`] on the file system `fs`.
    pub fn on(fs: Arc<dyn FileSystem>, dir: &Path, progress: bool) -> Result<Download, i32> {
        if fs.exists(dir) {
            eprintln!("error: {} exists", dir.display());
            return Err(exit::USAGE);
        }
        let Some(name) = dir.file_name() else {
            eprintln!("error: {} names no directory", dir.display());
            return Err(exit::USAGE);
        };
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let partial = dir.with_file_name(format!(
            ".{}.partial-{}-{nanos}",
            name.to_string_lossy(),
            std::process::id()
        ));
        // The parent may be new; the staging directory itself must be:
        // `create_dir` fails if the name exists (a symlink planted there
        // included), so nothing of another's is reused.
        if let Some(parent) = partial.parent().filter(|p| !p.as_os_str().is_empty()) {
            fs.create_dir_all(parent)
                .map_err(|e| failed(format!("{}: {e}", parent.display())))?;
        }
        fs.create_dir(&partial)
            .map_err(|e| failed(format!("{}: {e}", partial.display())))?;
        let bar = if progress {
            indicatif::ProgressBar::with_draw_target(None, indicatif::ProgressDrawTarget::stderr())
        } else {
            indicatif::ProgressBar::hidden()
        };
        Ok(Download {
            fs,
            dir: dir.to_path_buf(),
            partial,
            current: None,
            bar,
            files: 0,
            bytes: 0,
            done: false,
        })
    }

    /// How many bytes to expect, for the bar (0: unknown, a spinner).
    pub fn expect_bytes(&mut self, total: u64) {
        let template = if total == 0 {
            "{spinner} {bytes} {bytes_per_sec}"
        } else {
            "{bar:40} {bytes}/{total_bytes} {bytes_per_sec}"
        };
        if total > 0 {
            self.bar.set_length(total);
        }
        self.bar
            .set_style(indicatif::ProgressStyle::with_template(template).expect("static template"));
    }

    /// A file begins.
    pub fn start(&mut self, name: &str) -> Result<(), i32> {
        if let Some(open) = &self.current {
            return Err(failed(format!("{name} began before {} ended", open.name)));
        }
        ferry_engine::fs::check_file_name(name)
            .map_err(|e| failed(format!("the server sent {e}")))?;
        let path = self.partial.join(name);
        if self.fs.exists(&path) {
            return Err(failed(format!("the server sent {name} twice")));
        }
        // `create_new`: never opens what is already there, a symlink
        // planted in the directory included.
        let file = self
            .fs
            .create_new(&path, false)
            .map_err(|e| failed(format!("{}: {e}", path.display())))?;
        self.current = Some(Incoming {
            name: name.to_owned(),
            file,
            crc: crc32fast::Hasher::new(),
            size: 0,
        });
        Ok(())
    }

    /// Bytes of the current file.
    pub fn data(&mut self, data: &[u8]) -> Result<(), i32> {
        let Some(open) = self.current.as_mut() else {
            return Err(failed("data before a file began"));
        };
        open.file
            .append(data)
            .map_err(|e| failed(format!("{}: {e}", open.name)))?;
        open.crc.update(data);
        open.size += data.len() as u64;
        self.bar.inc(data.len() as u64);
        Ok(())
    }

    /// The current file ends; it must have `size` bytes and CRC32 `crc`.
    pub fn end(&mut self, size: u64, crc: u32) -> Result<(), i32> {
        let Some(open) = self.current.take() else {
            return Err(failed("a file ended before it began"));
        };
        let got = open.crc.finalize();
        if open.size != size || got != crc {
            return Err(failed(format!(
                "{} arrived with {} bytes and CRC {got:08x}, the server sent {size} and {crc:08x}",
                open.name, open.size
            )));
        }
        let mut file = open.file;
        file.sync()
            .map_err(|e| failed(format!("{}: {e}", open.name)))?;
        self.files += 1;
        self.bytes += size;
        Ok(())
    }

    /// Everything arrived, `files` files (and `bytes` bytes, when the
    /// server said): moves them into place, durably; returns the files and
    /// bytes received. A count that differs fails, leaving nothing.
    pub fn finish(mut self, files: u32, bytes: Option<u64>) -> Result<(u32, u64), i32> {
        if let Some(open) = &self.current {
            return Err(failed(format!("the stream ended inside {}", open.name)));
        }
        if self.files != files || bytes.is_some_and(|bytes| bytes != self.bytes) {
            return Err(failed(format!(
                "{} files of {} bytes arrived, the server announced {files}{}",
                self.files,
                self.bytes,
                bytes.map_or(String::new(), |b| format!(" of {b} bytes"))
            )));
        }
        self.bar.finish_and_clear();
        let fs = self.fs.clone();
        let sync = |dir: &Path| {
            fs.sync_dir(dir)
                .map_err(|e| failed(format!("{}: {e}", dir.display())))
        };
        sync(&self.partial)?;
        fs.rename(&self.partial, &self.dir)
            .map_err(|e| failed(format!("{}: {e}", self.dir.display())))?;
        self.done = true;
        let parent = match self.dir.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => parent,
            _ => Path::new("."),
        };
        sync(parent)?;
        Ok((self.files, self.bytes))
    }
}

impl Drop for Download {
    fn drop(&mut self) {
        if !self.done {
            self.bar.finish_and_clear();
            let _ = self.fs.remove_dir_all(&self.partial);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one_file(download: &mut Download, name: &str, data: &[u8]) {
        download.start(name).unwrap();
        download.data(data).unwrap();
        download
            .end(data.len() as u64, crc32fast::hash(data))
            .unwrap();
    }

    #[test]
    fn downloads_side_by_side_keep_apart_and_a_short_count_leaves_nothing() {
        let root = tempfile::tempdir().unwrap();
        // Once `<dir>.partial`, both of these staged in `x.partial`.
        let (jan, feb) = (root.path().join("x.jan"), root.path().join("x.feb"));
        let mut first = Download::new(&jan, false).unwrap();
        let mut second = Download::new(&feb, false).unwrap();
        one_file(&mut first, "a", b"january");
        one_file(&mut second, "a", b"february");
        one_file(&mut first, "b", b"more");
        assert_eq!(first.finish(2, Some(11)).unwrap(), (2, 11));
        assert_eq!(second.finish(1, None).unwrap(), (1, 8));
        assert_eq!(std::fs::read(jan.join("a")).unwrap(), b"january");
        assert_eq!(std::fs::read(feb.join("a")).unwrap(), b"february");
        // Into a directory that does not exist yet.
        let nested = root.path().join("new/deeper/x");
        let mut third = Download::new(&nested, false).unwrap();
        one_file(&mut third, "a", b"m");
        third.finish(1, Some(1)).unwrap();
        assert!(nested.join("a").exists());
        // A stream that ends between files, short of what it announced.
        let short = root.path().join("short");
        let mut download = Download::new(&short, false).unwrap();
        one_file(&mut download, "a", b"x");
        assert!(download.finish(2, None).is_err());
        let left: Vec<_> = std::fs::read_dir(root.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert!(!short.exists());
        assert_eq!(left.len(), 3, "{left:?}");
    }
}
