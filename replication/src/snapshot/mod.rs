//! Snapshots: an engine checkpoint plus the Raft metadata it stands for.
//!
//! A snapshot never serialises the key space: it is a directory of hard
//! links to immutable tables (plus the engine's manifest and `CHECKPOINT`),
//! so building one costs a memtable flush and O(tables) links, and shipping
//! one streams files in bounded memory ([`transfer`]).
//!
//! ## Format (version 2)
//!
//! ```text
//! snapshots/<name>/                 an engine checkpoint (see ferry_engine::checkpoint)
//! snapshots/<name>/SNAPSHOT         the envelope (ferry_engine::envelope), magic "FERRYSNP",
//!                                   version 2; body = postcard(SnapshotManifest)
//! ```
//!
//! Version 1 had the same body in the envelope's earlier layout (no length
//! field); it is still read.
//!
//! `SNAPSHOT` is written last, atomically: a directory without it is an
//! unfinished build and is removed at open. The manifest lists every file a
//! receiver needs (name, size, CRC32), `CHECKPOINT` included.

pub mod progress;
pub mod transfer;

use crate::types::SnapshotMeta;
use ferry_engine::envelope;
use ferry_engine::fs::FileSystem;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock, Weak};

const MANIFEST: envelope::Kind = envelope::Kind {
    magic: *b"FERRYSNP",
    version: 2,
    unsized_versions: &[1],
    what: "snapshot manifest",
};
pub(crate) const MANIFEST_FILE: &str = "SNAPSHOT";

/// One file of a snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotFile {
    pub name: String,
    pub size: u64,
    pub crc: u32,
}

/// What `SNAPSHOT` records.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotManifest {
    pub meta: SnapshotMeta,
    pub files: Vec<SnapshotFile>,
    /// `ferry_engine` content checksum of the whole state, once computed.
    pub state_hash: Option<u64>,
}

impl SnapshotManifest {
    pub fn total_bytes(&self) -> u64 {
        self.files.iter().map(|f| f.size).sum()
    }
}

/// A snapshot that exists on disk. While a handle lives (a transfer reads
/// it, openraft holds it), the directory is not garbage-collected.
#[derive(Clone)]
pub struct SnapshotHandle {
    pub(crate) fs: Arc<dyn FileSystem>,
    pub(crate) dir: PathBuf,
    pub(crate) manifest: Arc<SnapshotManifest>,
    pin: Arc<Pin>,
}

struct Pin {
    state_hash: OnceLock<u64>,
}

impl std::fmt::Debug for SnapshotHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SnapshotHandle({})", self.dir.display())
    }
}

impl SnapshotHandle {
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The file system the snapshot's files are on.
    pub fn fs(&self) -> &Arc<dyn FileSystem> {
        &self.fs
    }

    pub fn manifest(&self) -> &SnapshotManifest {
        &self.manifest
    }

    /// The content checksum of the snapshot's state, computed once per
    /// handle family (it reads the whole checkpoint).
    pub fn state_hash(&self) -> io::Result<u64> {
        if let Some(hash) = self
            .manifest
            .state_hash
            .or(self.pin.state_hash.get().copied())
        {
            return Ok(hash);
        }
        let hash = state_hash_of_checkpoint(&self.fs, &self.dir)?;
        let _ = self.pin.state_hash.set(hash);
        Ok(hash)
    }
}

/// Content checksum of the engine checkpoint in `dir`.
pub fn state_hash_of_checkpoint(fs: &Arc<dyn FileSystem>, dir: &Path) -> io::Result<u64> {
    read_checkpoint(fs, dir, |db| {
        db.snapshot().content_checksum().map_err(io::Error::other)
    })
}

/// Runs `read` on the engine checkpoint in `dir` without touching `dir`:
/// its files are linked into a scratch directory, which is opened as a
/// database and removed afterwards.
pub(crate) fn read_checkpoint<T>(
    fs: &Arc<dyn FileSystem>,
    dir: &Path,
    read: impl FnOnce(&ferry_engine::Db) -> io::Result<T>,
) -> io::Result<T> {
    // Beside it, named after it whole (`with_extension` would drop a
    // dotted part), so that a receive's clean-up sees it as its own.
    let mut scratch = dir.as_os_str().to_owned();
    scratch.push(format!(".read-{}", unique_suffix()));
    let scratch = std::path::PathBuf::from(scratch);
    link_tree(&**fs, dir, &scratch, |name| name != MANIFEST_FILE)?;
    let result = (|| {
        let options = ferry_engine::Options {
            background_work: false,
            fs: fs.clone(),
            ..ferry_engine::Options::default()
        };
        let db = ferry_engine::Db::open(&scratch, options).map_err(io::Error::other)?;
        let value = read(&db)?;
        db.close().map_err(io::Error::other)?;
        Ok(value)
    })();
    let _ = fs.remove_dir_all(&scratch);
    result
}

/// Runs file work on tokio's blocking pool.
pub(crate) async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> io::Result<T> + Send + 'static,
) -> io::Result<T> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(io::Error::other)?
}

pub(crate) fn unique_suffix() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("{nanos}-{}", COUNTER.fetch_add(1, Ordering::Relaxed))
}

/// Hard-links (or copies, across file systems) every file of `from` that
/// `keep` accepts into the new directory `to`, and makes `to`'s entries
/// durable: a directory of links is a snapshot or an engine only once a
/// power loss cannot take the links away.
pub(crate) fn link_tree(
    fs: &dyn FileSystem,
    from: &Path,
    to: &Path,
    keep: impl Fn(&str) -> bool,
) -> io::Result<()> {
    fs.create_dir_all(to)?;
    for name in fs.list(from)? {
        let path = from.join(&name);
        if !keep(&name) || fs.is_dir(&path) {
            continue;
        }
        link_or_copy(fs, &path, &to.join(&name))?;
    }
    fs.sync_dir(to)
}

/// Links `from` as `to`, or copies it (synced) where links cannot be made.
/// The caller syncs `to`'s directory.
pub(crate) fn link_or_copy(fs: &dyn FileSystem, from: &Path, to: &Path) -> io::Result<()> {
    if fs.hard_link(from, to).is_err() {
        fs.copy_file(from, to)?;
    }
    Ok(())
}

pub(crate) fn write_manifest(
    fs: &dyn FileSystem,
    dir: &Path,
    manifest: &SnapshotManifest,
) -> io::Result<()> {
    fs.write_atomic(&dir.join(MANIFEST_FILE), &encode_manifest(manifest)?)
}

/// `SNAPSHOT`'s bytes: postcard(manifest) in the envelope.
pub(crate) fn encode_manifest(manifest: &SnapshotManifest) -> io::Result<Vec<u8>> {
    let body = postcard::to_stdvec(manifest).map_err(io::Error::other)?;
    Ok(envelope::seal(&MANIFEST, &body))
}

pub(crate) fn read_manifest(fs: &dyn FileSystem, dir: &Path) -> io::Result<SnapshotManifest> {
    let path = dir.join(MANIFEST_FILE);
    let bytes = fs.read_all(&path)?;
    decode_manifest(&bytes, &path.display().to_string())
}

/// Decodes `SNAPSHOT`'s bytes, read from `name`; damage is an error naming it.
pub(crate) fn decode_manifest(bytes: &[u8], name: &str) -> io::Result<SnapshotManifest> {
    let bad =
        |reason: String| io::Error::new(io::ErrorKind::InvalidData, format!("{name}: {reason}"));
    let opened = envelope::open(&MANIFEST, bytes).map_err(|e| bad(e.to_string()))?;
    postcard::from_bytes(opened.body).map_err(|e| bad(format!("undecodable: {e}")))
}

/// Lists the files of the checkpoint in `dir` with sizes and CRCs, the
/// `CHECKPOINT` file included (the engine's own list leaves it out).
pub(crate) fn checkpoint_files(fs: &dyn FileSystem, dir: &Path) -> io::Result<Vec<SnapshotFile>> {
    let (meta, _) = ferry_engine::checkpoint::read_meta_with(fs, dir).map_err(io::Error::other)?;
    let mut files: Vec<SnapshotFile> = meta
        .files
        .iter()
        .map(|f| SnapshotFile {
            name: f.name.clone(),
            size: f.size,
            crc: f.crc,
        })
        .collect();
    let meta_path = dir.join(ferry_engine::checkpoint::META_FILE);
    files.push(SnapshotFile {
        name: ferry_engine::checkpoint::META_FILE.to_owned(),
        size: fs.file_size(&meta_path)?,
        crc: fs.file_crc(&meta_path)?,
    });
    Ok(files)
}

/// The snapshots of one node, in `<data>/snapshots/`.
pub struct SnapshotStore {
    fs: Arc<dyn FileSystem>,
    dir: PathBuf,
    pins: Mutex<HashMap<PathBuf, Weak<Pin>>>,
}

/// Whether `name` is a sealed snapshot's (`seal` names them by index
/// first), not a build's or an import's scratch directory.
fn is_sealed_name(name: &str) -> bool {
    name.len() > 20 && name.as_bytes()[..20].iter().all(u8::is_ascii_digit)
}

fn sort_key(meta: &SnapshotMeta) -> (u64, u64) {
    meta.last_log_id
        .as_ref()
        .map_or((0, 0), |l| (l.index + 1, l.leader_id.term))
}

impl SnapshotStore {
    /// Opens the store, removing unfinished builds and imports.
    pub fn open(fs: Arc<dyn FileSystem>, dir: impl Into<PathBuf>) -> io::Result<Self> {
        let dir = dir.into();
        fs.create_dir_all(&dir)?;
        for name in fs.list(&dir)? {
            let path = dir.join(name);
            if fs.is_dir(&path) && !fs.exists(&path.join(MANIFEST_FILE)) {
                fs.remove_dir_all(&path)?;
            }
        }
        Ok(SnapshotStore {
            fs,
            dir,
            pins: Mutex::new(HashMap::new()),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The file system the snapshots live on.
    pub fn fs(&self) -> &Arc<dyn FileSystem> {
        &self.fs
    }

    /// A fresh, not yet existing directory for a build or an import.
    pub(crate) fn scratch_dir(&self, what: &str) -> PathBuf {
        self.dir.join(format!("{what}-{}", unique_suffix()))
    }

    fn handle(&self, dir: PathBuf, manifest: SnapshotManifest) -> SnapshotHandle {
        let mut pins = self.pins.lock();
        let pin = pins.get(&dir).and_then(Weak::upgrade).unwrap_or_else(|| {
            Arc::new(Pin {
                state_hash: OnceLock::new(),
            })
        });
        pins.insert(dir.clone(), Arc::downgrade(&pin));
        SnapshotHandle {
            fs: self.fs.clone(),
            dir,
            manifest: Arc::new(manifest),
            pin,
        }
    }

    /// The newest complete snapshot.
    pub fn current(&self) -> io::Result<Option<SnapshotHandle>> {
        let mut best: Option<(PathBuf, SnapshotManifest)> = None;
        for name in self.fs.list(&self.dir)? {
            if !is_sealed_name(&name) {
                continue;
            }
            let path = self.dir.join(name);
            if !self.fs.exists(&path.join(MANIFEST_FILE)) {
                continue;
            }
            let manifest = read_manifest(&*self.fs, &path)?;
            if best
                .as_ref()
                .is_none_or(|(_, b)| sort_key(&manifest.meta) > sort_key(&b.meta))
            {
                best = Some((path, manifest));
            }
        }
        Ok(best.map(|(dir, manifest)| self.handle(dir, manifest)))
    }

    /// Turns a checkpoint directory (inside the store) into a snapshot by
    /// writing its manifest, then renaming it to its final name.
    pub(crate) fn seal(
        &self,
        staging: &Path,
        meta: SnapshotMeta,
        state_hash: Option<u64>,
    ) -> io::Result<SnapshotHandle> {
        let manifest = SnapshotManifest {
            files: checkpoint_files(&*self.fs, staging)?,
            meta,
            state_hash,
        };
        write_manifest(&*self.fs, staging, &manifest)?;
        let (index, term) = sort_key(&manifest.meta);
        let name = format!("{index:020}-{term}-{}", unique_suffix());
        let target = self.dir.join(name);
        self.fs.rename(staging, &target)?;
        self.fs.sync_dir(&self.dir)?;
        Ok(self.handle(target, manifest))
    }

    /// Copies (links) an outside snapshot into the store, checking each
    /// file's CRC.
    pub(crate) fn import(&self, source: &SnapshotHandle) -> io::Result<SnapshotHandle> {
        if source.dir.parent() == Some(&self.dir) {
            return Ok(source.clone());
        }
        let staging = self.scratch_dir("import");
        self.fs.create_dir_all(&staging)?;
        for file in &source.manifest.files {
            let to = staging.join(&file.name);
            link_or_copy(&*self.fs, &source.dir.join(&file.name), &to)?;
            let crc = self.fs.file_crc(&to)?;
            if crc != file.crc {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("{}: CRC {crc:08x}, expected {:08x}", to.display(), file.crc),
                ));
            }
        }
        self.fs.sync_dir(&staging)?;
        self.seal(
            &staging,
            source.manifest.meta.clone(),
            source.manifest.state_hash,
        )
    }

    /// Removes every complete snapshot older than `keep` that nothing pins.
    /// A newer one stays: a build that started before an install may seal
    /// after it, and its collection must not remove what was installed.
    /// Only sealed snapshots are looked at: a build or import being sealed
    /// meanwhile (its manifest written, its rename to come) is not one.
    pub fn collect_garbage(&self, keep: &SnapshotHandle) -> io::Result<()> {
        let kept = sort_key(&keep.manifest.meta);
        let pins = self.pins.lock();
        for name in self.fs.list(&self.dir)? {
            if !is_sealed_name(&name) {
                continue;
            }
            let path = self.dir.join(name);
            if path == keep.dir || !self.fs.exists(&path.join(MANIFEST_FILE)) {
                continue;
            }
            if pins.get(&path).is_some_and(|w| w.strong_count() > 0) {
                continue;
            }
            match read_manifest(&*self.fs, &path) {
                Ok(manifest) if sort_key(&manifest.meta) < kept => {}
                // Newer, or unreadable: not this collection's to remove.
                _ => continue,
            }
            match self.fs.remove_dir_all(&path) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::{log_id, StoredMembership};
    use ferry_engine::fs::OsFs;

    /// A snapshot of `index`, sealed in `store` from a real checkpoint.
    fn snapshot_at(store: &SnapshotStore, index: u64) -> SnapshotHandle {
        let engine = store
            .dir()
            .parent()
            .unwrap()
            .join(format!("engine-{index}"));
        let db = ferry_engine::Db::open(&engine, ferry_engine::Options::default()).unwrap();
        db.put(format!("k{index}"), b"v").unwrap();
        let staging = store.scratch_dir("build");
        db.checkpoint(&staging).unwrap();
        db.close().unwrap();
        let meta = SnapshotMeta {
            last_log_id: Some(log_id(1, 1, index)),
            last_membership: StoredMembership::default(),
        };
        store.seal(&staging, meta, None).unwrap()
    }

    /// A build sealed after an install (it started before) collects only
    /// what is older than itself: the newer, installed snapshot stays.
    #[test]
    fn garbage_is_only_what_is_older_than_the_snapshot_kept() {
        let dir = tempfile::tempdir().unwrap();
        let store = SnapshotStore::open(Arc::new(OsFs), dir.path().join("snapshots")).unwrap();
        let old = snapshot_at(&store, 50);
        let installed = snapshot_at(&store, 200);
        let built = snapshot_at(&store, 100);
        let (old_dir, installed_dir) = (old.dir.clone(), installed.dir.clone());
        drop((old, installed));
        store.collect_garbage(&built).unwrap();
        assert!(!store.fs().exists(&old_dir), "older than the kept one");
        assert!(store.fs().exists(&installed_dir), "newer: kept");
        let current = store.current().unwrap().unwrap();
        assert_eq!(current.dir, installed_dir);
    }
}
