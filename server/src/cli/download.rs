//! Files streamed by a server into a new local directory (snapshot
//! downloads, Parquet exports): every name is checked by the engine's one
//! rule for names from outside, every file's size and CRC32 at its end,
//! and the files are written under `<dir>.partial`, renamed to `<dir>`
//! only once everything arrived (a failed download leaves nothing).

use super::exit;
use std::io::Write;
use std::path::{Path, PathBuf};

struct Incoming {
    name: String,
    file: std::fs::File,
    crc: crc32fast::Hasher,
    size: u64,
}

/// See the module docs.
pub struct Download {
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
        if dir.exists() {
            eprintln!("error: {} exists", dir.display());
            return Err(exit::USAGE);
        }
        let partial = dir.with_extension("partial");
        // `symlink_metadata`: a symlink there (dangling or not) is removed
        // itself, never followed (`remove_dir_all` does not follow one).
        if let Ok(meta) = std::fs::symlink_metadata(&partial) {
            let removed = if meta.is_dir() {
                std::fs::remove_dir_all(&partial)
            } else {
                std::fs::remove_file(&partial)
            };
            removed.map_err(|e| failed(format!("{}: {e}", partial.display())))?;
        }
        std::fs::create_dir_all(&partial)
            .map_err(|e| failed(format!("{}: {e}", partial.display())))?;
        let bar = if progress {
            indicatif::ProgressBar::with_draw_target(None, indicatif::ProgressDrawTarget::stderr())
        } else {
            indicatif::ProgressBar::hidden()
        };
        Ok(Download {
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
        if path.exists() {
            return Err(failed(format!("the server sent {name} twice")));
        }
        // `create_new`: never opens what is already there, a symlink
        // planted in the directory included (O_EXCL does not follow one).
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
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
            .write_all(data)
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
        open.file
            .sync_all()
            .map_err(|e| failed(format!("{}: {e}", open.name)))?;
        self.files += 1;
        self.bytes += size;
        Ok(())
    }

    /// Everything arrived: moves the files into place; returns the files
    /// and bytes received.
    pub fn finish(mut self) -> Result<(u32, u64), i32> {
        if let Some(open) = &self.current {
            return Err(failed(format!("the stream ended inside {}", open.name)));
        }
        self.bar.finish_and_clear();
        std::fs::rename(&self.partial, &self.dir)
            .map_err(|e| failed(format!("{}: {e}", self.dir.display())))?;
        self.done = true;
        Ok((self.files, self.bytes))
    }
}

impl Drop for Download {
    fn drop(&mut self) {
        if !self.done {
            self.bar.finish_and_clear();
            let _ = std::fs::remove_dir_all(&self.partial);
        }
    }
}
