//! Starting a new single-node cluster from existing state: a downloaded
//! snapshot, a checkpoint, or a surviving replica's data when the majority
//! is gone for good (as etcd's `--force-new-cluster`).
//!
//! **Risks.** The new cluster holds what the source held, nothing more:
//! writes the lost majority acknowledged after the source's applied index
//! are gone. Never let the old members rejoin: their logs disagree with the
//! new cluster's history. Grow the new cluster with fresh nodes.
//!
//! What it writes into a fresh data directory, so that `Node::open` starts
//! as the sole voter of a cluster whose state is the source's:
//! - the engine (`engine-0`), copied from the checkpoint with every file's
//!   CRC checked, its membership record rewritten to this node alone;
//! - `raft/PURGED` = the applied log id (the log is empty: everything up to
//!   there is in the state), and `raft/VOTE` in the same term, so that the
//!   node's first election moves to a later term than any log entry it has.

use crate::log_store::{LogStore, LogStoreOptions};
use crate::state_machine::keys;
use crate::types::{FerryNode, LogId, NodeId, StoredMembership, Vote};
use ferry_engine::fs::FileSystem;
use openraft::storage::RaftLogStorage;
use openraft::Membership;
use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// What a recovery produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recovered {
    /// The log id the new cluster starts after.
    pub applied: Option<LogId>,
}

/// Builds `data_dir` (which must not exist) on `fs` as node `id` of a new
/// single-node cluster holding the state of the engine checkpoint
/// `checkpoint` (a downloaded snapshot, or a checkpoint of a replica).
pub async fn restore_as_single_node(
    fs: &Arc<dyn FileSystem>,
    checkpoint: &Path,
    data_dir: &Path,
    id: NodeId,
    node: FerryNode,
) -> io::Result<Recovered> {
    // Built beside the target and renamed into place last, so that a
    // recovery killed part-way leaves no data directory that would start.
    let staged = aside(&**fs, data_dir, "partial")?;
    let result = async {
        ferry_engine::checkpoint::restore_with(
            &**fs,
            checkpoint,
            &staged.join("engine-0"),
            &mut |_| {},
        )
        .map_err(io::Error::other)?;
        let recovered = make_single_node(fs, &staged, id, node).await?;
        move_into_place(&**fs, &staged, data_dir)?;
        Ok(recovered)
    }
    .await;
    if result.is_err() {
        let _ = fs.remove_dir_all(&staged);
    }
    result
}

/// Engine options that open a directory on `fs`.
pub(crate) fn engine_options(fs: &Arc<dyn FileSystem>) -> ferry_engine::Options {
    ferry_engine::Options {
        fs: fs.clone(),
        ..ferry_engine::Options::default()
    }
}

/// A fresh hidden sibling of `data_dir` (`.<name>.<tag>-<unique>`) to build
/// it in: on the same file system, so it moves into place by a rename, and
/// named from the last component, so a trailing slash cannot put it inside.
/// Refuses a `data_dir` that exists: recovery, restores and imports write
/// a fresh data directory, never over one.
pub(crate) fn aside(fs: &dyn FileSystem, data_dir: &Path, tag: &str) -> io::Result<PathBuf> {
    if fs.exists(data_dir) {
        return Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            format!(
                "{} exists; a restore writes a fresh data directory",
                data_dir.display()
            ),
        ));
    }
    let Some(name) = data_dir.file_name() else {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} names no directory", data_dir.display()),
        ));
    };
    Ok(data_dir.with_file_name(format!(
        ".{}.{tag}-{}",
        name.to_string_lossy(),
        crate::snapshot::unique_suffix()
    )))
}

/// Renames the completed directory `staged` to `data_dir`, durably.
pub(crate) fn move_into_place(
    fs: &dyn FileSystem,
    staged: &Path,
    data_dir: &Path,
) -> io::Result<()> {
    fs.rename(staged, data_dir)?;
    match data_dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        Some(parent) => fs.sync_dir(parent),
        None => Ok(()),
    }
}

/// Makes `data_dir`, whose `engine-0` holds the state (and nothing else
/// yet), a new single-node cluster as described in the module docs.
pub(crate) async fn make_single_node(
    fs: &Arc<dyn FileSystem>,
    data_dir: &Path,
    id: NodeId,
    node: FerryNode,
) -> io::Result<Recovered> {
    let engine_dir = data_dir.join("engine-0");
    let db = ferry_engine::Db::open(&engine_dir, engine_options(fs)).map_err(io::Error::other)?;
    let applied: Option<LogId> = match db.get(keys::APPLIED).map_err(io::Error::other)? {
        None => None,
        Some(bytes) => postcard::from_bytes(&bytes).map_err(|e| {
            io::Error::new(io::ErrorKind::InvalidData, format!("applied record: {e}"))
        })?,
    };
    let membership = Membership::new(vec![BTreeSet::from([id])], BTreeMap::from([(id, node)]))
        .map_err(|e| io::Error::other(e.to_string()))?;
    let stored = StoredMembership::new(applied, membership);
    db.put(
        keys::MEMBERSHIP,
        postcard::to_stdvec(&stored).map_err(io::Error::other)?,
    )
    .map_err(io::Error::other)?;
    db.close().map_err(io::Error::other)?;
    fs.write_atomic(
        &data_dir.join(crate::state_machine::ENGINE_POINTER),
        b"engine-0",
    )?;

    let mut log = LogStore::open_with_fs(
        fs.clone(),
        &data_dir.join("raft"),
        LogStoreOptions::default(),
    )?;
    if let Some(applied) = applied {
        log.save_vote(&Vote::new(applied.leader_id.term, id))
            .await?;
        log.purge(applied).await?;
    }
    Ok(Recovered { applied })
}

/// Turns the data directory of a stopped member into a new single-node
/// cluster of its own state, when the cluster's majority is gone for good
/// (etcd's `--force-new-cluster`). The old directory is kept beside it as
/// `<data_dir>.before-recovery-<time>`.
///
/// The recovery point is what this member had applied: entries in its log
/// that it had not applied are not carried over. See the module docs for
/// the risks.
pub async fn force_new_cluster(
    fs: &Arc<dyn FileSystem>,
    data_dir: &Path,
    id: NodeId,
    node: FerryNode,
) -> io::Result<Recovered> {
    let pointer = data_dir.join(crate::state_machine::ENGINE_POINTER);
    let engine_name = read_pointer(&**fs, &pointer).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("{}: {e} (not a Ferry data directory?)", pointer.display()),
        )
    })?;
    let engine_dir = data_dir.join(engine_name.trim());
    let checkpoint = data_dir.join("recovery-checkpoint");
    {
        // Opening takes the engine's lock: a running member fails here.
        let db =
            ferry_engine::Db::open(&engine_dir, engine_options(fs)).map_err(io::Error::other)?;
        // Before anything moves: a state of a later release stays as it is.
        crate::state_machine::check_apply_version(&db, crate::apply_version::APPLY_VERSION)?;
        db.checkpoint(&checkpoint).map_err(io::Error::other)?;
        db.close().map_err(io::Error::other)?;
    }
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let mut aside = data_dir.as_os_str().to_owned();
    aside.push(format!(".before-recovery-{stamp}"));
    let aside = std::path::PathBuf::from(aside);
    fs.rename(data_dir, &aside)?;
    restore_as_single_node(fs, &aside.join("recovery-checkpoint"), data_dir, id, node).await
}

/// The engine pointer file's contents.
fn read_pointer(fs: &dyn FileSystem, pointer: &Path) -> io::Result<String> {
    String::from_utf8(fs.read_all(pointer)?).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{}: not UTF-8", pointer.display()),
        )
    })
}

/// The user keys of a stopped member's data directory (or of one a
/// restore or recovery wrote), read offline: for inspection and checks,
/// without starting a node.
pub fn user_state(
    fs: &Arc<dyn FileSystem>,
    data_dir: &Path,
) -> io::Result<BTreeMap<Vec<u8>, crate::types::KeyValue>> {
    let pointer = data_dir.join(crate::state_machine::ENGINE_POINTER);
    let engine_name = read_pointer(&**fs, &pointer)?;
    let db = ferry_engine::Db::open(data_dir.join(engine_name.trim()), engine_options(fs))
        .map_err(io::Error::other)?;
    let mut state = BTreeMap::new();
    let (from, to) = keys::user_bounds(&[], None);
    for item in db.range(from..to) {
        let (key, value) = item.map_err(io::Error::other)?;
        let record =
            keys::Record::decode(&value).ok_or_else(|| keys::undecodable("record", &key[1..]))?;
        state.insert(key[1..].to_vec(), record.into_key_value(key[1..].to_vec()));
    }
    db.close().map_err(io::Error::other)?;
    Ok(state)
}
