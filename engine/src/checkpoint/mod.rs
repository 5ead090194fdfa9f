//! Checkpoints: consistent point-in-time copies that open as databases.
//!
//! A checkpoint directory holds the tables of one version (hard links of
//! the database's immutable tables, or copies across file systems), a
//! manifest written for exactly that table set, `CURRENT`, and the
//! [`CHECKPOINT`](meta::META_FILE) file listing every file with its size
//! and CRC32. It needs no WAL: the memtable is flushed first, so every
//! write acknowledged before the call is in the tables.
//!
//! A *delta* checkpoint is taken against a base checkpoint (a sibling
//! directory): the tables the base already holds are linked from the base
//! instead of being written again, and the metadata names the base by id
//! and checksum. Because every checkpoint links (never merely references)
//! what it needs, each one is complete on its own: deleting an older
//! checkpoint never breaks a newer one, and a chain `base, delta, delta…`
//! restores to exactly the state of its last delta by restoring that delta.
//! What a delta costs is its *new* bytes: the tables written since the
//! base ([`CheckpointMeta::new_bytes`]); that is what a backup ships.
//!
//! A checkpoint on the database's own file system shares its tables' bytes
//! with the database (hard links of immutable files): it protects against
//! lost or overwritten directories and lets a restore skip the copy, but
//! not against a failing disk. For that, put the target on another file
//! system (tables are then copied and checked against their CRC32) or
//! ship it elsewhere.
//!
//! Invariants: a checkpoint directory is complete once its `CHECKPOINT`
//! file exists (it is written last, atomically); a restore copies into a
//! fresh directory, verifies every byte against the recorded CRCs, and only
//! then switches it in.

pub mod meta;
pub mod periodic;

pub use meta::{BaseRef, CheckpointFile, CheckpointMeta, Origin, META_FILE};

use crate::error::IoContext;
use crate::fs::{FileSystem, OsFs};
use crate::{Error, Result};
use std::path::{Path, PathBuf};

/// Progress of a long operation, reported to a callback.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    /// What is being done: `"flush"`, `"link"`, `"copy"`, `"verify"`, `"restore"`.
    pub stage: &'static str,
    /// Bytes done so far in this operation.
    pub done_bytes: u64,
    /// Bytes the operation will handle in all.
    pub total_bytes: u64,
}

/// Reads and checks a checkpoint's metadata; returns it with its checksum.
///
/// ```
/// # let dir = tempfile::tempdir().unwrap();
/// let db = ferry_engine::Db::open(dir.path().join("db"), Default::default())?;
/// db.put(b"k", b"v")?;
/// db.checkpoint(dir.path().join("c"))?;
/// let (meta, _checksum) = ferry_engine::checkpoint::read_meta(&dir.path().join("c"))?;
/// assert_eq!(meta.id, "c");
/// assert!(meta.files.iter().any(|f| f.name.ends_with(".sst")));
/// # Ok::<(), ferry_engine::Error>(())
/// ```
pub fn read_meta(dir: &Path) -> Result<(CheckpointMeta, u32)> {
    read_meta_with(&OsFs, dir)
}

/// [`read_meta`] through `fs`.
pub fn read_meta_with(fs: &dyn FileSystem, dir: &Path) -> Result<(CheckpointMeta, u32)> {
    let path = dir.join(META_FILE);
    let bytes = fs.read_all(&path).at(&path)?;
    CheckpointMeta::decode(&bytes, &path)
}

/// What [`verify`] checked.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VerifyReport {
    /// Checkpoints checked, newest first (the given one, then its bases).
    pub checked: Vec<String>,
    /// Bytes read and checksummed.
    pub bytes: u64,
    /// A base named by the chain that no longer exists (allowed: every
    /// checkpoint is complete on its own).
    pub missing_base: Option<String>,
}

/// Checks a checkpoint and every base of its chain still present: each file
/// exists with the recorded size and CRC32, and each base's metadata has
/// the checksum its delta recorded.
///
/// ```
/// # let dir = tempfile::tempdir().unwrap();
/// # let db = ferry_engine::Db::open(dir.path().join("db"), Default::default())?;
/// db.put(b"k", b"v")?;
/// let target = dir.path().join("backups/full");
/// db.checkpoint(&target)?;
/// let report = ferry_engine::checkpoint::verify(&target, &mut |_| {})?;
/// assert_eq!(report.checked.len(), 1);
/// # Ok::<(), ferry_engine::Error>(())
/// ```
pub fn verify(dir: &Path, progress: &mut dyn FnMut(Progress)) -> Result<VerifyReport> {
    verify_with(&OsFs, dir, progress)
}

pub(crate) fn verify_with(
    fs: &dyn FileSystem,
    dir: &Path,
    progress: &mut dyn FnMut(Progress),
) -> Result<VerifyReport> {
    let mut report = VerifyReport::default();
    let mut current = dir.to_path_buf();
    let mut expected_checksum: Option<(String, u32)> = None;
    // Chains are short; the bound only guards against a cycle of forged
    // metadata files.
    for _ in 0..10_000 {
        let (meta, checksum) = read_meta_with(fs, &current)?;
        if let Some((id, expected)) = &expected_checksum {
            if *expected != checksum {
                return Err(Error::corruption(
                    current.join(META_FILE),
                    0,
                    format!("base {id} does not match: checksum {checksum:08x}, the delta recorded {expected:08x}"),
                ));
            }
        }
        verify_files(fs, &current, &meta, &mut report.bytes, progress)?;
        report.checked.push(meta.id.clone());
        let Some(base) = meta.base else {
            return Ok(report);
        };
        let base_dir = current
            .parent()
            .map(|parent| parent.join(&base.id))
            .unwrap_or_else(|| PathBuf::from(&base.id));
        if !fs.exists(&base_dir.join(META_FILE)) {
            report.missing_base = Some(base.id);
            return Ok(report);
        }
        expected_checksum = Some((base.id, base.checksum));
        current = base_dir;
    }
    Err(Error::corruption(
        dir.join(META_FILE),
        0,
        "checkpoint chain does not end",
    ))
}

fn verify_files(
    fs: &dyn FileSystem,
    dir: &Path,
    meta: &CheckpointMeta,
    bytes: &mut u64,
    progress: &mut dyn FnMut(Progress),
) -> Result<()> {
    let total = meta.total_bytes();
    let mut done = 0;
    for file in &meta.files {
        let path = dir.join(&file.name);
        let size = fs.file_size(&path).at(&path)?;
        if size != file.size {
            return Err(Error::corruption(
                &path,
                size,
                format!(
                    "file is {size} bytes, the checkpoint recorded {}",
                    file.size
                ),
            ));
        }
        let crc = fs.file_crc(&path).at(&path)?;
        if crc != file.crc {
            return Err(Error::corruption(
                &path,
                0,
                "file checksum differs from the checkpoint's record",
            ));
        }
        done += size;
        *bytes += size;
        progress(Progress {
            stage: "verify",
            done_bytes: done,
            total_bytes: total,
        });
    }
    Ok(())
}

/// Restores the checkpoint in `checkpoint` as the database directory
/// `target`.
///
/// The files are copied into a fresh sibling directory, each one checked
/// against its recorded CRC32 while it is copied, synced, and only then is
/// the new directory renamed to `target`. If `target` exists, it is renamed
/// aside first and removed after the switch; a failed or interrupted restore
/// therefore leaves the old data in place (under `target` or, if the crash
/// fell between the two renames, under `target.replaced`).
///
/// ```
/// # let dir = tempfile::tempdir().unwrap();
/// # let db = ferry_engine::Db::open(dir.path().join("db"), Default::default())?;
/// db.put(b"k", b"v")?;
/// db.checkpoint(dir.path().join("ckpt"))?;
/// let restored = dir.path().join("restored");
/// ferry_engine::checkpoint::restore(&dir.path().join("ckpt"), &restored, &mut |_| {})?;
/// let copy = ferry_engine::Db::open(&restored, Default::default())?;
/// assert_eq!(copy.get(b"k")?.as_deref(), Some(&b"v"[..]));
/// # Ok::<(), ferry_engine::Error>(())
/// ```
pub fn restore(
    checkpoint: &Path,
    target: &Path,
    progress: &mut dyn FnMut(Progress),
) -> Result<CheckpointMeta> {
    restore_with(&OsFs, checkpoint, target, progress)
}

/// [`restore`] through `fs`.
pub fn restore_with(
    fs: &dyn FileSystem,
    checkpoint: &Path,
    target: &Path,
    progress: &mut dyn FnMut(Progress),
) -> Result<CheckpointMeta> {
    let (meta, _) = read_meta_with(fs, checkpoint)?;
    build_and_switch(fs, target, |staging| {
        copy_verified(fs, checkpoint, staging, &meta, progress)?;
        fs.sync_dir(staging).at(staging)?;
        Ok(meta.clone())
    })
}

/// Replaces the directory `target` by one that `build` fills in a fresh
/// staging sibling, switching only if `build` succeeded (see
/// [`build_and_switch`] for the crash rules). Used by the replication layer
/// to install a received snapshot as its engine directory.
pub fn switch_dir<T>(target: &Path, build: impl FnOnce(&Path) -> Result<T>) -> Result<T> {
    build_and_switch(&OsFs, target, build)
}

/// Builds a directory with `build` in a fresh staging sibling of `target`
/// and renames it into place only if `build` succeeded. An existing
/// `target` is renamed aside first and removed after the switch, so a
/// failure at any point leaves the old data intact (under `target`, or
/// under `target.replaced` if the process died between the two renames).
pub(crate) fn build_and_switch<T>(
    fs: &dyn FileSystem,
    target: &Path,
    build: impl FnOnce(&Path) -> Result<T>,
) -> Result<T> {
    let parent = target.parent().unwrap_or(Path::new("."));
    let name = target.file_name().and_then(|n| n.to_str()).ok_or_else(|| {
        Error::InvalidOptions(format!("restore target {} has no name", target.display()))
    })?;
    fs.create_dir_durable(parent).at(parent)?;
    let staging = parent.join(format!("{name}.restoring"));
    if fs.exists(&staging) {
        remove_dir_all(fs, &staging)?;
    }
    fs.create_dir_all(&staging).at(&staging)?;
    let built = match build(&staging) {
        Ok(built) => built,
        Err(error) => {
            let _ = remove_dir_all(fs, &staging);
            return Err(error);
        }
    };
    let replaced = parent.join(format!("{name}.replaced"));
    let had_target = fs.exists(target);
    if had_target {
        fs.rename(target, &replaced).at(target)?;
    }
    fs.rename(&staging, target).at(&staging)?;
    fs.sync_dir(parent).at(parent)?;
    if had_target {
        remove_dir_all(fs, &replaced)?;
        fs.sync_dir(parent).at(parent)?;
    }
    Ok(built)
}

fn copy_verified(
    fs: &dyn FileSystem,
    from: &Path,
    to: &Path,
    meta: &CheckpointMeta,
    progress: &mut dyn FnMut(Progress),
) -> Result<()> {
    let total = meta.total_bytes();
    let mut done = 0;
    for file in &meta.files {
        let source = from.join(&file.name);
        let target = to.join(&file.name);
        let crc = fs.copy_file(&source, &target).at(&source)?;
        let size = fs.file_size(&target).at(&target)?;
        if crc != file.crc || size != file.size {
            return Err(Error::corruption(
                &source,
                0,
                format!(
                    "file does not match the checkpoint's record ({size} bytes, crc {crc:08x}; expected {} bytes, crc {:08x})",
                    file.size, file.crc
                ),
            ));
        }
        done += size;
        progress(Progress {
            stage: "restore",
            done_bytes: done,
            total_bytes: total,
        });
    }
    Ok(())
}

/// Removes a directory and the files in it (checkpoints hold no subdirectories).
pub(crate) fn remove_dir_all(fs: &dyn FileSystem, dir: &Path) -> Result<()> {
    for name in fs.list(dir).at(dir)? {
        let path = dir.join(name);
        if fs.remove_file(&path).is_err() {
            remove_dir_all(fs, &path)?;
        }
    }
    fs.remove_dir(dir).at(dir)
}
