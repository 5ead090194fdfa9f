//! Point-in-time restore from a backup chain.

use super::catalog::{object_name, Catalog, CheckpointRecord, LogChunk};
use super::target::BackupTarget;
use crate::recovery::{aside, make_single_node, move_into_place};
use crate::snapshot::blocking;
use crate::state_machine::apply::apply_and_write;
use crate::types::{Entry, FerryNode, LogId, NodeId};
use ferry_engine::fs::FileSystem;
use ferry_engine::wal::{read_segment, LogKind, TailPolicy};
use openraft::entry::RaftEntry;
use openraft::EntryPayload;
use std::io;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

/// Entries applied per engine batch while replaying, and bytes (of
/// entries) per batch at most: together they bound the replay's memory.
const REPLAY_BATCH: usize = 4096;
const REPLAY_BATCH_BYTES: usize = 16 << 20;

/// The state a restore rebuilds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RestorePoint {
    /// Everything the chain holds.
    Latest,
    /// The state right after log index `N` was applied. The chain must
    /// reach `N`.
    Index(u64),
    /// The longest prefix of the log whose commands were all proposed at
    /// or before this time (ms since the Unix epoch, proposer's clock).
    /// Entries after the first command stamped later are left out, even if
    /// a skewed clock stamped some of them earlier.
    Time(u64),
}

/// What a restore did.
#[derive(Debug, Clone, PartialEq)]
pub struct RestoreReport {
    /// The checkpoint it started from.
    pub checkpoint_index: u64,
    /// The last entry in the restored state.
    pub applied: Option<LogId>,
    /// Log entries applied on top of the checkpoint.
    pub entries_replayed: u64,
    /// The latest proposal time of any command in the restored state.
    pub time_ms: u64,
    /// Bytes read from the target.
    pub bytes_fetched: u64,
    /// Seconds fetching the checkpoint and replaying the log.
    pub fetch_seconds: f64,
    pub replay_seconds: f64,
}

/// How far a restore is, for progress bars.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RestoreProgress {
    /// Bytes of the checkpoint fetched, of `checkpoint_bytes`.
    pub checkpoint_fetched: u64,
    pub checkpoint_bytes: u64,
    /// Log chunks replayed, of `log_chunks` (those after the checkpoint).
    pub log_replayed: u64,
    pub log_chunks: u64,
}

/// Called as a restore moves on.
pub type OnProgress = Arc<dyn Fn(RestoreProgress) + Send + Sync>;

/// Restores the state at `point` from `target` into `data_dir` (which
/// must not exist) as node `id` of a new single-node cluster (see
/// [`crate::recovery`] for what that writes and its risks).
///
/// `data_dir` is written on `fs`, which must be the file system `target`
/// fetches its objects onto (see the targets' `with_fs`).
pub async fn restore(
    fs: &Arc<dyn FileSystem>,
    target: Arc<dyn BackupTarget>,
    point: RestorePoint,
    data_dir: &Path,
    id: NodeId,
    node: FerryNode,
) -> io::Result<RestoreReport> {
    restore_with_progress(fs, target, point, data_dir, id, node, Arc::new(|_| {})).await
}

/// [`restore`], calling `progress` after each file it fetches. Files are
/// streamed from the target one at a time and replayed in bounded batches,
/// so memory stays bounded whatever the chain's size.
pub async fn restore_with_progress(
    fs: &Arc<dyn FileSystem>,
    target: Arc<dyn BackupTarget>,
    point: RestorePoint,
    data_dir: &Path,
    id: NodeId,
    node: FerryNode,
    progress: OnProgress,
) -> io::Result<RestoreReport> {
    let work = aside(&**fs, data_dir, "restore")?;
    fs.create_dir_all(&work)?;
    let built = {
        let (fs, work) = (fs.clone(), work.clone());
        blocking(move || rebuild(&fs, &*target, point, &work, &*progress)).await
    };
    // The new data directory is completed inside the work directory and
    // renamed into place last, so a restore killed at any point leaves no
    // data directory that would start half-made.
    let result = match built {
        Ok(report) => {
            async {
                let staged = work.join("data");
                fs.create_dir_all(&staged)?;
                fs.rename(&work.join("engine"), &staged.join("engine-0"))?;
                fs.sync_dir(&staged)?;
                make_single_node(fs, &staged, id, node).await?;
                move_into_place(&**fs, &staged, data_dir)?;
                Ok(report)
            }
            .await
        }
        Err(error) => Err(error),
    };
    let _ = fs.remove_dir_all(&work);
    result
}

/// Fetches the checkpoint, replays the log up to `point` and leaves the
/// result as a closed, flushed engine in `work/engine`.
fn rebuild(
    fs: &Arc<dyn FileSystem>,
    target: &dyn BackupTarget,
    point: RestorePoint,
    work: &Path,
    on_progress: &(dyn Fn(RestoreProgress) + Send + Sync),
) -> io::Result<RestoreReport> {
    let catalog = Catalog::read(target)?;
    let scratch = work.join("scratch");
    let record = choose_checkpoint(&**fs, target, &catalog, point, &scratch)?;
    let started = Instant::now();
    let engine_dir = work.join("engine");
    let mut progress = RestoreProgress {
        checkpoint_fetched: 0,
        checkpoint_bytes: record.total_bytes(),
        log_replayed: 0,
        log_chunks: chunks_after(&catalog, record.index()).count() as u64,
    };
    on_progress(progress);
    let mut bytes_fetched = fetch_checkpoint(&**fs, target, &record, &engine_dir, |fetched| {
        progress.checkpoint_fetched = fetched;
        on_progress(progress);
    })?;
    let fetch_seconds = started.elapsed().as_secs_f64();

    let started = Instant::now();
    let db = ferry_engine::Db::open(&engine_dir, crate::recovery::engine_options(fs))
        .map_err(io::Error::other)?;
    // A checkpoint of an earlier release: the replay records history from it on.
    crate::state_machine::upgrade_layout(&db)?;
    // Replaying on a checkpoint that follows rules this release lacks
    // would write a state no member would open.
    crate::state_machine::check_apply_version(&db, crate::apply_version::APPLY_VERSION)?;
    let mut replay = Replay {
        point,
        applied: record.applied,
        time_ms: record.time_ms,
        replayed: 0,
        run: Vec::with_capacity(REPLAY_BATCH),
        run_bytes: 0,
        done: false,
    };
    // The first index the chain lacks after what it holds, if it has a hole.
    let mut hole = None;
    for chunk in chunks_after(&catalog, record.index()) {
        if replay.done {
            break;
        }
        let next = replay.next_index();
        if chunk.first > next {
            hole = Some((next, chunk.first));
            break;
        }
        let name = chunk.name();
        let local = work.join("chunk");
        bytes_fetched += target.get(&name, &local)?;
        read_segment(
            &**fs,
            &local,
            LogKind::Raft,
            TailPolicy::Strict,
            |index, payload| {
                if replay.done || index < replay.next_index() {
                    return Ok(());
                }
                let bad = |reason: String| ferry_engine::Error::Corruption {
                    path: local.clone(),
                    offset: 0,
                    reason,
                };
                let entry: Entry = postcard::from_bytes(payload)
                    .map_err(|e| bad(format!("entry {index}: {e}")))?;
                if entry.log_id().index != index || index != replay.next_index() {
                    return Err(bad(format!(
                        "entry {} where {} was expected",
                        entry.log_id().index,
                        replay.next_index()
                    )));
                }
                replay.offer(entry, payload.len());
                if replay.run.len() >= REPLAY_BATCH || replay.run_bytes >= REPLAY_BATCH_BYTES {
                    replay
                        .apply(&db)
                        .map_err(|source| ferry_engine::Error::Io {
                            path: local.clone(),
                            source,
                        })?;
                }
                Ok(())
            },
        )
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("backup {name}: {e}")))?;
        if !replay.done && replay.next_index() <= chunk.last {
            // Cut at a record boundary, so the framing found nothing wrong.
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "backup {name}: ends at entry {}, its name says {}",
                    replay.next_index() - 1,
                    chunk.last
                ),
            ));
        }
        let _ = fs.remove_file(&local);
        progress.log_replayed += 1;
        on_progress(progress);
    }
    replay.apply(&db)?;
    let reached = replay.applied.map_or(0, |l| l.index);
    // A hole before the restore point is an error whatever the point: the
    // state past it cannot be rebuilt, and a shorter state is not an answer.
    let satisfied =
        replay.done || matches!(point, RestorePoint::Index(wanted) if reached >= wanted);
    if let (Some((missing, resumes)), false) = (hole, satisfied) {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!(
                "{}: the chain lacks log entries {missing}..{resumes} after checkpoint {} \
                 (shipped while the log was purged, or lost); restore to an index before \
                 {missing}, or from a later checkpoint",
                target.describe(),
                record.index()
            ),
        ));
    }
    // A chain whose newest log chunks are lost has no hole before them to
    // show it; its head says how far it is committed.
    let committed = catalog.head.as_ref().map_or(0, |head| head.shipped);
    if !satisfied && reached < committed {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!(
                "{}: the chain is committed to index {committed}, but its log reaches only                  {reached} from checkpoint {}: entries {}..={committed} are missing; restore to                  an index at or before {reached}",
                target.describe(),
                record.index(),
                reached + 1
            ),
        ));
    }
    if let RestorePoint::Index(wanted) = point {
        if reached < wanted {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!(
                    "{}: the chain reaches index {reached} from checkpoint {}; index {wanted} is not shipped \
                     (or the log has a gap after {reached})",
                    target.describe(),
                    record.index()
                ),
            ));
        }
    }
    db.flush().map_err(io::Error::other)?;
    db.close().map_err(io::Error::other)?;
    Ok(RestoreReport {
        checkpoint_index: record.index(),
        applied: replay.applied,
        entries_replayed: replay.replayed,
        time_ms: replay.time_ms,
        bytes_fetched,
        fetch_seconds,
        replay_seconds: started.elapsed().as_secs_f64(),
    })
}

/// The newest checkpoint at or before `point`.
fn choose_checkpoint(
    fs: &dyn FileSystem,
    target: &dyn BackupTarget,
    catalog: &Catalog,
    point: RestorePoint,
    scratch: &Path,
) -> io::Result<CheckpointRecord> {
    let none = |why: String| {
        io::Error::new(
            io::ErrorKind::NotFound,
            format!("{}: {why}", target.describe()),
        )
    };
    let oldest = catalog.checkpoints.first().copied();
    for &index in catalog.checkpoints.iter().rev() {
        if let RestorePoint::Index(wanted) = point {
            if index > wanted {
                continue;
            }
        }
        let record = catalog.checkpoint(fs, target, index, scratch)?;
        if let RestorePoint::Time(wanted) = point {
            if record.time_ms > wanted {
                continue;
            }
        }
        return Ok(record);
    }
    Err(match (oldest, point) {
        (None, _) => none("the backup chain holds no checkpoint".into()),
        (Some(oldest), RestorePoint::Index(wanted)) => none(format!(
            "index {wanted} is before the oldest checkpoint (index {oldest})"
        )),
        (Some(_), RestorePoint::Time(wanted)) => none(format!(
            "time {wanted} ms is before the oldest checkpoint's newest command"
        )),
        (Some(_), RestorePoint::Latest) => none("no checkpoint could be read".into()),
    })
}

/// Copies the checkpoint's objects into `dir`, checking each one's size
/// and CRC32; returns the bytes fetched.
fn fetch_checkpoint(
    fs: &dyn FileSystem,
    target: &dyn BackupTarget,
    record: &CheckpointRecord,
    dir: &Path,
    mut fetched: impl FnMut(u64),
) -> io::Result<u64> {
    fs.create_dir_all(dir)?;
    let mut bytes = 0;
    for file in &record.files {
        if !crate::snapshot::transfer::valid_name(&file.name) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "{}: checkpoint file name {:?} is not a plain name",
                    target.describe(),
                    file.name
                ),
            ));
        }
        let name = object_name(file);
        let local = dir.join(&file.name);
        target.get(&name, &local)?;
        let size = fs.file_size(&local)?;
        let crc = fs.file_crc(&local)?;
        if size != file.size || crc != file.crc {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "{}: backup object {name} holds {size} bytes with CRC {crc:08x}, expected {} bytes with CRC {:08x}",
                    target.describe(),
                    file.size,
                    file.crc
                ),
            ));
        }
        bytes += size;
        fetched(bytes);
    }
    fs.sync_dir(dir)?;
    Ok(bytes)
}

/// The log chunks that may hold entries after `index`, in order.
fn chunks_after(catalog: &Catalog, index: u64) -> impl Iterator<Item = LogChunk> + '_ {
    catalog.log.iter().copied().filter(move |c| c.last > index)
}

struct Replay {
    point: RestorePoint,
    applied: Option<LogId>,
    /// Latest command time in the state (prefix maximum).
    time_ms: u64,
    replayed: u64,
    run: Vec<Entry>,
    /// Encoded bytes of the entries in `run`.
    run_bytes: usize,
    done: bool,
}

impl Replay {
    fn next_index(&self) -> u64 {
        self.run
            .last()
            .map(|e| e.log_id())
            .or(self.applied)
            .map_or(0, |l| l.index + 1)
    }

    /// Takes `entry` into the state unless it lies past the restore point.
    fn offer(&mut self, entry: Entry, encoded_bytes: usize) {
        let index = entry.log_id().index;
        let past = match self.point {
            RestorePoint::Latest => false,
            RestorePoint::Index(wanted) => index > wanted,
            RestorePoint::Time(wanted) => {
                matches!(&entry.payload, EntryPayload::Normal(c) if c.time_ms() > wanted)
            }
        };
        if past {
            self.done = true;
            return;
        }
        if let EntryPayload::Normal(command) = &entry.payload {
            self.time_ms = self.time_ms.max(command.time_ms());
        }
        self.run.push(entry);
        self.run_bytes += encoded_bytes;
    }

    fn apply(&mut self, db: &ferry_engine::Db) -> io::Result<()> {
        if self.run.is_empty() {
            return Ok(());
        }
        apply_and_write(db, &self.run, |run, _| {
            self.applied = run.applied;
            Ok(())
        })?;
        self.replayed += self.run.len() as u64;
        self.run.clear();
        self.run_bytes = 0;
        Ok(())
    }
}
