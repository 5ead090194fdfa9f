//! The state machine: openraft's `RaftStateMachine` over a `ferry_engine::Db`.
//!
//! The Raft log is the only write-ahead log on the replicated path. The
//! engine is opened with [`Durability::Buffered`]: applying a run of
//! entries is one engine batch with no fsync, carrying the applied marker
//! (see [`keys`]). After a crash the engine recovers some prefix of its
//! batches, the marker names exactly that prefix, and openraft re-applies
//! the log from there. Log entries are purged only up to a snapshot, and a
//! snapshot's checkpoint flushes the live memtable first, so the engine's
//! durable state never falls behind the purged log.
//!
//! ## Format (version 1)
//!
//! ```text
//! <data>/ENGINE        name of the live engine directory (one line, replaced atomically)
//! <data>/engine-<n>/   the live engine; a snapshot install builds engine-<n+1> and switches
//! <data>/snapshots/    see crate::snapshot
//! ```

pub(crate) mod apply;
pub mod changes;
pub(crate) mod clients;
pub mod history;
pub(crate) mod keys;

use crate::snapshot::{link_tree, SnapshotHandle, SnapshotStore, MANIFEST_FILE};
use crate::types::{LogId, SnapshotMeta, StoredMembership, TypeConfig};
use changes::ChangeFeed;
use ferry_engine::fs::FileSystem;
use ferry_engine::{Db, Durability, Options, WriteBatch};
use futures_util::StreamExt;
use openraft::alias::SnapshotOf;
use openraft::storage::{EntryResponder, RaftSnapshotBuilder, RaftStateMachine};
use parking_lot::{Mutex, RwLock};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Applied runs the live feed keeps for watches that lag (beyond, they
/// read the engine's history).
const FEED_CAPACITY: usize = 1024;
/// Entries applied per engine batch at most.
const MAX_APPLY_RUN: usize = 1024;
pub(crate) const ENGINE_POINTER: &str = "ENGINE";

/// Applied log id and membership.
type AppliedPoint = (Option<LogId>, StoredMembership);

/// State shared by the state machine, its snapshot builders and readers.
pub struct SmShared {
    data_dir: PathBuf,
    engine_options: Options,
    db: RwLock<Arc<Db>>,
    engine_dir: Mutex<PathBuf>,
    applied: RwLock<AppliedPoint>,
    snapshots: SnapshotStore,
    changes: ChangeFeed,
    /// Users, roles and whether auth is on, as applied (for the server's
    /// per-request checks).
    auth: RwLock<Arc<crate::auth::AuthState>>,
    /// The highest apply version this member implements.
    implemented_apply_version: u32,
}

/// The state machine handed to openraft.
pub struct StateMachine {
    shared: Arc<SmShared>,
}

/// Builds one snapshot (see [`SmShared::build_snapshot`]).
pub struct SnapshotBuilder {
    shared: Arc<SmShared>,
}

fn engine_err(error: ferry_engine::Error) -> io::Error {
    io::Error::other(error)
}

pub(crate) fn read_point(db: &Db) -> io::Result<AppliedPoint> {
    let decode = |bytes: Vec<u8>, what: &str| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "{}: undecodable {what} record ({} bytes)",
                db.path().display(),
                bytes.len()
            ),
        )
    };
    let applied = match db.get(keys::APPLIED).map_err(engine_err)? {
        None => None,
        Some(bytes) => postcard::from_bytes(&bytes).map_err(|_| decode(bytes, "applied"))?,
    };
    let membership = match db.get(keys::MEMBERSHIP).map_err(engine_err)? {
        None => StoredMembership::default(),
        Some(bytes) => postcard::from_bytes(&bytes).map_err(|_| decode(bytes, "membership"))?,
    };
    Ok((applied, membership))
}

/// The applied index a view of the engine holds (0: none).
pub fn applied_index(view: &ferry_engine::Snapshot) -> io::Result<u64> {
    let applied: Option<LogId> = match view.get(keys::APPLIED).map_err(engine_err)? {
        None => None,
        Some(bytes) => postcard::from_bytes(&bytes).map_err(|_| {
            io::Error::new(io::ErrorKind::InvalidData, "undecodable applied record")
        })?,
    };
    Ok(applied.map_or(0, |l| l.index))
}

/// The apply version `db`'s state follows (see [`crate::apply_version`]).
pub(crate) fn stored_apply_version(db: &Db) -> io::Result<u32> {
    crate::apply_version::decode(db.get(keys::APPLY_VERSION).map_err(engine_err)?.as_deref())
}

/// Refuses `db`'s state if it follows an apply version above
/// `implemented` (a state applied by a later release's rules).
pub(crate) fn check_apply_version(db: &Db, implemented: u32) -> io::Result<()> {
    let version = stored_apply_version(db)?;
    if version > implemented {
        return Err(crate::apply_version::too_new(
            version,
            implemented,
            &format!("the state in {}", db.path().display()),
        ));
    }
    Ok(())
}

/// Brings a state written by an earlier release to this release's layout
/// (see `keys`): a state of layout 1 holds no history, so its history
/// starts just after what it had applied.
pub(crate) fn upgrade_layout(db: &Db) -> io::Result<()> {
    if let Some(layout) = db.get(keys::LAYOUT).map_err(engine_err)? {
        return match layout.as_slice() {
            [keys::LAYOUT_VERSION] => Ok(()),
            other => Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "{}: state layout {other:?} is not known to this release (it knows {})",
                    db.path().display(),
                    keys::LAYOUT_VERSION
                ),
            )),
        };
    }
    let (applied, _) = read_point(db)?;
    let mut batch = WriteBatch::new();
    batch.put(keys::LAYOUT, [keys::LAYOUT_VERSION]);
    if let Some(applied) = applied {
        tracing::info!(
            dir = %db.path().display(),
            applied = applied.index,
            "upgrading a state of release 0.1.0: its history starts after what it applied"
        );
        batch.put(keys::COMPACTED, (applied.index + 1).to_le_bytes());
    }
    db.write(batch).map_err(engine_err)?;
    Ok(())
}

impl StateMachine {
    /// Opens the state machine in `data_dir` (creating it if needed). The
    /// engine options' durability is overridden to `Buffered`.
    pub fn open(data_dir: impl AsRef<Path>, engine_options: Options) -> io::Result<Self> {
        Self::open_implementing(
            data_dir,
            engine_options,
            crate::apply_version::APPLY_VERSION,
        )
    }

    /// [`StateMachine::open`] for a member that implements apply versions
    /// up to `implemented`: a state that follows a later one is refused.
    pub fn open_implementing(
        data_dir: impl AsRef<Path>,
        mut engine_options: Options,
        implemented: u32,
    ) -> io::Result<Self> {
        let data_dir = data_dir.as_ref().to_path_buf();
        let fs = engine_options.fs.clone();
        fs.create_dir_all(&data_dir)?;
        engine_options.durability = Durability::Buffered;
        let pointer = data_dir.join(ENGINE_POINTER);
        let engine_name = if fs.exists(&pointer) {
            String::from_utf8(fs.read_all(&pointer)?)
                .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "ENGINE is not UTF-8"))?
                .trim()
                .to_owned()
        } else {
            let name = "engine-0".to_owned();
            fs.write_atomic(&pointer, name.as_bytes())?;
            name
        };
        // Leftovers of an interrupted install: any other engine directory.
        for name in fs.list(&data_dir)? {
            let path = data_dir.join(&name);
            if name.starts_with("engine-") && name != engine_name && fs.is_dir(&path) {
                fs.remove_dir_all(&path)?;
            }
        }
        let engine_dir = data_dir.join(&engine_name);
        let db = Db::open(&engine_dir, engine_options.clone()).map_err(engine_err)?;
        upgrade_layout(&db)?;
        check_apply_version(&db, implemented)?;
        let point = read_point(&db)?;
        let snapshots = SnapshotStore::open(fs, data_dir.join("snapshots"))?;
        let changes = ChangeFeed::new(FEED_CAPACITY);
        let auth = crate::auth::store::load(&db.snapshot())?;
        Ok(StateMachine {
            shared: Arc::new(SmShared {
                data_dir,
                engine_options,
                db: RwLock::new(Arc::new(db)),
                engine_dir: Mutex::new(engine_dir),
                applied: RwLock::new(point),
                snapshots,
                changes,
                auth: RwLock::new(Arc::new(auth)),
                implemented_apply_version: implemented,
            }),
        })
    }

    /// The shared state, for readers.
    pub fn shared(&self) -> Arc<SmShared> {
        self.shared.clone()
    }
}

impl SmShared {
    /// The live engine. Hold the `Arc` only for the duration of a read: a
    /// snapshot install swaps it.
    pub fn db(&self) -> Arc<Db> {
        self.db.read().clone()
    }

    /// The last applied log id and membership.
    pub fn applied(&self) -> (Option<LogId>, StoredMembership) {
        self.applied.read().clone()
    }

    /// Users, roles and whether auth is on, as of the last applied entry.
    pub fn auth(&self) -> Arc<crate::auth::AuthState> {
        self.auth.read().clone()
    }

    fn reload_auth(&self, db: &Db) -> io::Result<()> {
        *self.auth.write() = Arc::new(crate::auth::store::load(&db.snapshot())?);
        Ok(())
    }

    /// The feed of applied changes, for watches.
    pub fn changes(&self) -> &ChangeFeed {
        &self.changes
    }

    pub fn snapshots(&self) -> &SnapshotStore {
        &self.snapshots
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The file system every file of this state goes through (the
    /// engine's, its snapshots', transfer staging).
    pub fn fs(&self) -> &Arc<dyn FileSystem> {
        &self.engine_options.fs
    }

    /// The live engine's directory.
    pub(crate) fn engine_dir(&self) -> PathBuf {
        self.engine_dir.lock().clone()
    }

    /// Applies a run of entries (one engine batch, or several around
    /// history purge steps), publishes their changes and answers them.
    fn apply_run(&self, run: Vec<EntryResponder<TypeConfig>>) -> io::Result<()> {
        if run.is_empty() {
            return Ok(());
        }
        let db = self.db();
        let (entries, responders): (Vec<_>, Vec<_>) = run.into_iter().unzip();
        let mut responders = responders.into_iter();
        let mut first = entries.first().map_or(0, |e| e.log_id.index);
        let implemented = self.implemented_apply_version;
        apply::apply_and_write_implementing(&db, &entries, implemented, |run, _| {
            if run.auth_changed {
                self.reload_auth(&db)?;
            }
            let membership = run.membership.unwrap_or_else(|| self.applied().1);
            let applied = run.applied;
            let last = applied.map_or(first, |l| l.index);
            self.changes.publish(first, last, run.changes);
            first = last + 1;
            *self.applied.write() = (applied, membership);
            for (responder, response) in responders.by_ref().zip(run.responses) {
                if let Some(responder) = responder {
                    responder.send(response);
                }
            }
            Ok(())
        })
    }

    /// The first revision whose history is served (0: all of it).
    pub fn compacted(&self) -> io::Result<u64> {
        history::compacted(&self.db().snapshot())
    }

    /// The apply version the applied state follows (see
    /// [`crate::apply_version`]).
    pub fn apply_version(&self) -> io::Result<u32> {
        stored_apply_version(&self.db())
    }

    /// The highest apply version this member implements.
    pub fn implemented_apply_version(&self) -> u32 {
        self.implemented_apply_version
    }

    /// Whether history below the compacted revision remains to be removed
    /// (by [`crate::types::Command::PurgeHistory`] steps).
    pub fn purge_pending(&self) -> io::Result<bool> {
        Ok(self.db().get(keys::PURGE).map_err(engine_err)?.is_some())
    }

    fn start_build(self: &Arc<Self>) -> SnapshotBuilder {
        SnapshotBuilder {
            shared: self.clone(),
        }
    }

    /// Checkpoints the live engine and seals it as a snapshot. Writers are
    /// held up only by the memtable switch inside the checkpoint. The
    /// applied state the snapshot claims is read from the checkpoint
    /// itself, where apply wrote it in the same batch as the data: applies
    /// go on during the build, and nothing else says exactly where the
    /// checkpoint cut them.
    fn build_snapshot(&self) -> io::Result<SnapshotHandle> {
        let started = std::time::Instant::now();
        let staging = self.snapshots.scratch_dir("build");
        let db = self.db();
        db.checkpoint(&staging).map_err(engine_err)?;
        let (applied, membership) =
            crate::snapshot::read_checkpoint(self.snapshots.fs(), &staging, read_point)?;
        let meta = SnapshotMeta {
            last_log_id: applied,
            last_membership: membership,
        };
        let handle = self.snapshots.seal(&staging, meta, None)?;
        self.snapshots.collect_garbage(&handle)?;
        // A checkpoint flushes the memtable: a burst of writes that the
        // Raft log's fsyncs on the same disk may wait behind.
        tracing::info!(
            applied = ?handle.manifest.meta.last_log_id,
            took_ms = started.elapsed().as_millis() as u64,
            "built a snapshot"
        );
        Ok(handle)
    }

    /// Replaces the live engine by the snapshot's checkpoint.
    fn install(&self, meta: &SnapshotMeta, snapshot: &SnapshotHandle) -> io::Result<()> {
        let ours = self.snapshots.import(snapshot)?;
        if ours.manifest.meta != *meta {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "snapshot {} records {:?}, openraft asked to install {:?}",
                    ours.dir.display(),
                    ours.manifest.meta.last_log_id,
                    meta.last_log_id
                ),
            ));
        }
        let mut engine_dir = self.engine_dir.lock();
        let next = next_engine_name(&engine_dir);
        let new_dir = self.data_dir.join(&next);
        let fs = &*self.engine_options.fs;
        if fs.exists(&new_dir) {
            fs.remove_dir_all(&new_dir)?;
        }
        link_tree(fs, &ours.dir, &new_dir, |name| name != MANIFEST_FILE)?;
        let db = Db::open(&new_dir, self.engine_options.clone()).map_err(engine_err)?;
        upgrade_layout(&db)?;
        if let Err(error) = check_apply_version(&db, self.implemented_apply_version) {
            drop(db);
            let _ = fs.remove_dir_all(&new_dir);
            return Err(error);
        }
        let point = read_point(&db)?;
        if point.0 != meta.last_log_id {
            drop(db);
            let _ = fs.remove_dir_all(&new_dir);
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "snapshot {} holds applied marker {:?}, its manifest says {:?}",
                    ours.dir.display(),
                    point.0,
                    meta.last_log_id
                ),
            ));
        }
        // The switch: before it a power loss finds the old engine, after it
        // the new one, whole (link_tree synced its entries).
        fs.write_atomic(&self.data_dir.join(ENGINE_POINTER), next.as_bytes())?;
        self.reload_auth(&db)?;
        let old = std::mem::replace(&mut *self.db.write(), Arc::new(db));
        *self.applied.write() = (meta.last_log_id, meta.last_membership.clone());
        self.changes.reset(meta.last_log_id.map_or(0, |l| l.index));
        let old_dir = std::mem::replace(&mut *engine_dir, new_dir);
        drop(engine_dir);
        retire(old, &old_dir, fs);
        self.snapshots.collect_garbage(&ours)?;
        Ok(())
    }
}

fn next_engine_name(current: &Path) -> String {
    let n: u64 = current
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.strip_prefix("engine-"))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    format!("engine-{}", n + 1)
}

/// Closes a replaced engine once its last reader lets go and removes its
/// directory; if readers hold it too long, the directory is removed at the
/// next open instead.
fn retire(mut db: Arc<Db>, dir: &Path, fs: &dyn FileSystem) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match Arc::try_unwrap(db) {
            Ok(db) => {
                if let Err(error) = db.close() {
                    tracing::warn!(%error, dir = %dir.display(), "closing the replaced engine");
                }
                if let Err(error) = fs.remove_dir_all(dir) {
                    tracing::warn!(%error, dir = %dir.display(), "removing the replaced engine");
                }
                return;
            }
            Err(shared) if Instant::now() < deadline => {
                db = shared;
                std::thread::sleep(Duration::from_millis(1));
            }
            Err(_) => return,
        }
    }
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    type SnapshotData = SnapshotHandle;

    async fn build_snapshot(&mut self) -> io::Result<SnapshotOf<TypeConfig, SnapshotHandle>> {
        let shared = self.shared.clone();
        let handle = tokio::task::spawn_blocking(move || shared.build_snapshot())
            .await
            .map_err(io::Error::other)??;
        Ok(SnapshotOf::<TypeConfig, SnapshotHandle> {
            meta: handle.manifest.meta.clone(),
            snapshot: handle,
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotData = SnapshotHandle;
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(&mut self) -> io::Result<(Option<LogId>, StoredMembership)> {
        Ok(self.shared.applied())
    }

    async fn apply<Strm>(&mut self, mut entries: Strm) -> io::Result<()>
    where
        Strm: futures_util::Stream<Item = io::Result<EntryResponder<TypeConfig>>> + Unpin + Send,
    {
        let mut run = Vec::new();
        while let Some(item) = entries.next().await {
            run.push(item?);
            if run.len() >= MAX_APPLY_RUN {
                self.shared.apply_run(std::mem::take(&mut run))?;
            }
        }
        self.shared.apply_run(run)
    }

    async fn try_create_snapshot_builder(&mut self, _force: bool) -> Option<SnapshotBuilder> {
        Some(self.shared.start_build())
    }

    async fn get_snapshot_builder(&mut self) -> SnapshotBuilder {
        self.shared.start_build()
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: SnapshotHandle,
    ) -> io::Result<()> {
        let shared = self.shared.clone();
        let meta = meta.clone();
        tokio::task::spawn_blocking(move || shared.install(&meta, &snapshot))
            .await
            .map_err(io::Error::other)?
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> io::Result<Option<SnapshotOf<TypeConfig, SnapshotHandle>>> {
        Ok(self.shared.snapshots.current()?.map(
            |handle| SnapshotOf::<TypeConfig, SnapshotHandle> {
                meta: handle.manifest.meta.clone(),
                snapshot: handle,
            },
        ))
    }
}
