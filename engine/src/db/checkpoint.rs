//! Taking checkpoints of a running database (see [`crate::checkpoint`]).

use super::{Db, Inner};
use crate::checkpoint::{
    read_meta_with, BaseRef, CheckpointFile, CheckpointMeta, Origin, Progress, META_FILE,
};
use crate::error::IoContext;
use crate::manifest::write_snapshot;
use crate::sst::table_path;
use crate::{Error, Result};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

impl Db {
    /// Writes a full checkpoint into `dir` (which must not exist): a
    /// consistent copy holding every write acknowledged before the call,
    /// which opens as a normal database. Tables are hard-linked (copied
    /// across file systems), so the cost grows with the memtable, which is
    /// flushed first, not with the database.
    ///
    /// ```
    /// # let dir = tempfile::tempdir().unwrap();
    /// let db = ferry_engine::Db::open(dir.path().join("db"), Default::default())?;
    /// db.put(b"k", b"v")?;
    /// let meta = db.checkpoint(dir.path().join("ckpt"))?;
    /// assert!(meta.base.is_none());
    /// let copy = ferry_engine::Db::open(dir.path().join("ckpt"), Default::default())?;
    /// assert_eq!(copy.get(b"k")?.as_deref(), Some(&b"v"[..]));
    /// # Ok::<(), ferry_engine::Error>(())
    /// ```
    pub fn checkpoint(&self, dir: impl AsRef<Path>) -> Result<CheckpointMeta> {
        self.inner
            .create_checkpoint(dir.as_ref(), None, &mut |_| {})
    }

    /// Writes a delta checkpoint into `dir` against the checkpoint `base`
    /// (a sibling directory): only tables the base does not hold are new;
    /// the rest are linked from the base. The result is complete on its own.
    ///
    /// ```
    /// # let dir = tempfile::tempdir().unwrap();
    /// let db = ferry_engine::Db::open(dir.path().join("db"), Default::default())?;
    /// db.put(b"a", b"1")?;
    /// db.checkpoint(dir.path().join("c1"))?;
    /// db.put(b"b", b"2")?;
    /// let delta = db.checkpoint_delta(dir.path().join("c1"), dir.path().join("c2"))?;
    /// assert_eq!(delta.base.as_ref().map(|b| b.id.as_str()), Some("c1"));
    /// assert!(delta.new_bytes() < delta.total_bytes());
    /// # Ok::<(), ferry_engine::Error>(())
    /// ```
    pub fn checkpoint_delta(
        &self,
        base: impl AsRef<Path>,
        dir: impl AsRef<Path>,
    ) -> Result<CheckpointMeta> {
        self.inner
            .create_checkpoint(dir.as_ref(), Some(base.as_ref()), &mut |_| {})
    }

    /// [`Db::checkpoint`] or [`Db::checkpoint_delta`] (with `base`),
    /// reporting progress.
    ///
    /// ```
    /// # let dir = tempfile::tempdir().unwrap();
    /// let db = ferry_engine::Db::open(dir.path().join("db"), Default::default())?;
    /// db.put(b"k", b"v")?;
    /// let mut stages = Vec::new();
    /// db.checkpoint_with(None, dir.path().join("c"), &mut |p| stages.push(p.stage))?;
    /// assert!(stages.contains(&"link"));
    /// # Ok::<(), ferry_engine::Error>(())
    /// ```
    pub fn checkpoint_with(
        &self,
        base: Option<&Path>,
        dir: impl AsRef<Path>,
        progress: &mut dyn FnMut(Progress),
    ) -> Result<CheckpointMeta> {
        self.inner.create_checkpoint(dir.as_ref(), base, progress)
    }
}

impl Inner {
    pub(crate) fn create_checkpoint(
        &self,
        target: &Path,
        base: Option<&Path>,
        progress: &mut dyn FnMut(Progress),
    ) -> Result<CheckpointMeta> {
        let fs = &*self.fs;
        let name = target
            .file_name()
            .and_then(|n| n.to_str())
            .ok_or_else(|| {
                Error::InvalidOptions(format!(
                    "checkpoint target {} has no name",
                    target.display()
                ))
            })?
            .to_owned();
        let parent = target.parent().unwrap_or(Path::new(".")).to_path_buf();
        let base = match base {
            None => None,
            Some(base_dir) => {
                if base_dir.parent().unwrap_or(Path::new(".")) != parent {
                    return Err(Error::InvalidOptions(format!(
                        "the base {} must be a sibling of the delta {}",
                        base_dir.display(),
                        target.display()
                    )));
                }
                let (meta, checksum) = read_meta_with(fs, base_dir)?;
                Some((base_dir.to_path_buf(), meta, checksum))
            }
        };
        if fs.exists(target) {
            return Err(Error::InvalidOptions(format!(
                "checkpoint target {} already exists",
                target.display()
            )));
        }

        progress(Progress {
            stage: "flush",
            done_bytes: 0,
            total_bytes: 0,
        });
        self.flush()?;
        // Holding the version keeps its tables on disk while they are linked.
        let (version, sequence) = {
            let versions = self.versions.lock();
            (versions.current(), versions.last_sequence)
        };

        fs.create_dir_durable(&parent).at(&parent)?;
        let staging = parent.join(format!("{name}.partial"));
        if fs.exists(&staging) {
            crate::checkpoint::remove_dir_all(fs, &staging)?;
        }
        fs.create_dir_all(&staging).at(&staging)?;
        let built = self.fill_checkpoint(&staging, &version, sequence, base.as_ref(), progress);
        let files = match built {
            Ok(files) => files,
            Err(error) => {
                let _ = crate::checkpoint::remove_dir_all(fs, &staging);
                return Err(error);
            }
        };
        let meta = CheckpointMeta {
            id: name,
            sequence,
            created_unix_ms: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
            base: base.map(|(_, meta, checksum)| BaseRef {
                id: meta.id,
                checksum,
            }),
            files,
        };
        // The metadata is written last: a directory without it is not a
        // checkpoint, and the rename makes it appear complete or not at all.
        let (bytes, _) = meta.encode();
        let meta_path = staging.join(META_FILE);
        fs.write_atomic(&meta_path, &bytes).at(&meta_path)?;
        fs.rename(&staging, target).at(&staging)?;
        fs.sync_dir(&parent).at(&parent)?;
        Ok(meta)
    }

    fn fill_checkpoint(
        &self,
        staging: &Path,
        version: &crate::manifest::version::Version,
        sequence: u64,
        base: Option<&(PathBuf, CheckpointMeta, u32)>,
        progress: &mut dyn FnMut(Progress),
    ) -> Result<Vec<CheckpointFile>> {
        let fs = &*self.fs;
        let total: u64 = version.all_files().map(|(_, f)| f.meta.size).sum();
        let mut done = 0;
        let mut files = Vec::new();
        for (_, table) in version.all_files() {
            let file_name = format!("{:06}.sst", table.meta.number);
            let in_base = base.and_then(|(dir, meta, _)| {
                meta.files
                    .iter()
                    .find(|f| {
                        f.name == file_name
                            && f.size == table.meta.size
                            && f.crc == table.meta.file_crc
                    })
                    .map(|_| dir.join(&file_name))
            });
            let (source, origin) = match in_base {
                Some(path) => (path, Origin::Base),
                None => (table_path(&self.dir, table.meta.number), Origin::New),
            };
            let destination = staging.join(&file_name);
            if fs.hard_link(&source, &destination).is_err() {
                // Another file system: copy, checking the bytes on the way.
                let crc = fs.copy_file(&source, &destination).at(&source)?;
                if crc != table.meta.file_crc {
                    return Err(Error::corruption(
                        &source,
                        0,
                        "table checksum differs from the manifest's record",
                    ));
                }
            }
            done += table.meta.size;
            progress(Progress {
                stage: "link",
                done_bytes: done,
                total_bytes: total,
            });
            files.push(CheckpointFile {
                name: file_name,
                size: table.meta.size,
                crc: table.meta.file_crc,
                origin,
            });
        }
        let manifest_number = version
            .all_files()
            .map(|(_, f)| f.meta.number)
            .max()
            .unwrap_or(0)
            + 1;
        drop(write_snapshot(
            fs,
            staging,
            manifest_number,
            version,
            0,
            manifest_number + 1,
            sequence,
        )?);
        for small in [
            crate::manifest::manifest_name(manifest_number),
            "CURRENT".to_owned(),
        ] {
            let path = staging.join(&small);
            files.push(CheckpointFile {
                size: fs.file_size(&path).at(&path)?,
                crc: fs.file_crc(&path).at(&path)?,
                name: small,
                origin: Origin::New,
            });
        }
        fs.sync_dir(staging).at(staging)?;
        Ok(files)
    }
}
