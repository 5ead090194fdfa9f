//! The follower's side of a transfer: checks the offer, stages the files
//! and installs the snapshot once every file checks out.

use super::plan::make_plan;
use super::{outstanding, TransferOptions};
use crate::network::pb::{
    self, snapshot_frame::Frame, snapshot_reply::Reply, SnapshotFrame, SnapshotReply,
};
use crate::network::TransferStats;
use crate::snapshot::progress::Direction;
use crate::snapshot::{blocking, state_hash_of_checkpoint, SnapshotHandle};
use crate::state_machine::SmShared;
use crate::types::{Raft, SnapshotMeta, TypeConfig, Vote};
use ferry_engine::fs::{FileSystem, WritableFile};
use futures_util::{Stream, StreamExt};
use openraft::alias::SnapshotOf;
use std::collections::HashSet;
use std::io;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tonic::Status;

/// The staging directories of the receives running now, by snapshot id:
/// a receive removes only the others' that no receive uses, and one id is
/// received by one receive at a time.
#[derive(Default)]
pub(crate) struct Staging(parking_lot::Mutex<HashSet<String>>);

/// A receive's hold on its staging id, released when dropped.
struct StagingClaim {
    staging: Arc<Staging>,
    id: String,
}

impl Drop for StagingClaim {
    fn drop(&mut self) {
        self.staging.0.lock().remove(&self.id);
    }
}

impl Staging {
    fn claim(self: &Arc<Self>, id: &str) -> Option<StagingClaim> {
        self.0.lock().insert(id.to_owned()).then(|| StagingClaim {
            staging: self.clone(),
            id: id.to_owned(),
        })
    }

    /// Whether `name`, an entry of `incoming`, is a running receive's: its
    /// staging directory, or a read's scratch beside it (`<id>.read-…`).
    fn in_use(&self, name: &str) -> bool {
        self.0.lock().iter().any(|id| {
            name.strip_prefix(id.as_str())
                .is_some_and(|rest| rest.is_empty() || rest.starts_with('.'))
        })
    }

    /// Removes what no running receive uses from `incoming`: attempts at
    /// snapshots since replaced, which would otherwise hold their space
    /// until an install succeeds, each failed snapshot adding one. Best
    /// effort: what cannot be removed is left for the next time.
    fn remove_unused(&self, fs: &dyn FileSystem, incoming: &Path) {
        let Ok(names) = fs.list(incoming) else { return };
        for name in names {
            if self.in_use(&name) {
                continue;
            }
            let path = incoming.join(&name);
            let removed = if fs.is_dir(&path) {
                fs.remove_dir_all(&path)
            } else {
                fs.remove_file(&path)
            };
            if let Err(error) = removed {
                if error.kind() != io::ErrorKind::NotFound {
                    tracing::warn!(%error, name, "could not remove an old snapshot staging directory");
                }
            }
        }
    }
}

/// What the follower side needs.
#[derive(Clone)]
pub(crate) struct ReceiverContext {
    /// This node's id: an offer for another is refused.
    pub(crate) id: crate::types::NodeId,
    pub(crate) contact: Arc<crate::network::server::PeerContact>,
    pub(crate) raft: Raft,
    pub(crate) sm: Arc<SmShared>,
    pub(crate) stats: Arc<TransferStats>,
    pub(crate) options: TransferOptions,
    pub(crate) staging: Arc<Staging>,
}

fn failed(reason: impl ToString, retry_full: bool) -> Reply {
    Reply::Failed(pb::Failed {
        reason: reason.to_string(),
        retry_full,
    })
}

/// Follower side of one transfer: runs until the stream ends and sends its
/// replies into `replies`.
pub(crate) async fn receive(
    context: ReceiverContext,
    mut frames: impl Stream<Item = Result<SnapshotFrame, Status>> + Unpin,
    replies: mpsc::Sender<Result<SnapshotReply, Status>>,
) {
    let last = match receive_inner(&context, &mut frames, &replies).await {
        Ok(reply) => reply,
        Err(reply) => reply,
    };
    let _ = replies.send(Ok(SnapshotReply { reply: Some(last) })).await;
}

async fn next_frame(
    frames: &mut (impl Stream<Item = Result<SnapshotFrame, Status>> + Unpin),
    idle: Duration,
) -> Result<Frame, Reply> {
    match tokio::time::timeout(idle, frames.next()).await {
        Err(_) => Err(failed(
            format!("no frame from the leader for {idle:?}"),
            false,
        )),
        Ok(None) => Err(failed("the leader ended the stream early", false)),
        Ok(Some(Err(status))) => Err(failed(format!("stream error: {status}"), false)),
        Ok(Some(Ok(SnapshotFrame { frame: None }))) => Err(failed("empty frame", false)),
        Ok(Some(Ok(SnapshotFrame { frame: Some(frame) }))) => Ok(frame),
    }
}

/// Most files an offer may name: a snapshot is one engine checkpoint, of
/// tens to thousands of tables.
pub(crate) const MAX_OFFER_FILES: usize = 100_000;

/// Refuses an offer this node cannot take, before anything is staged or
/// allocated for it: too many files, a name outside the staging directory
/// or named twice, or more bytes than `budget` (the free space of the data
/// directory: a transfer that cannot fit would fill the disk and fail
/// anyway, taking the node's log writes with it).
pub(crate) fn check_offer(offer: &pb::Offer, budget: u64) -> Result<(), String> {
    if offer.files.len() > MAX_OFFER_FILES {
        return Err(format!(
            "the offer names {} files; at most {MAX_OFFER_FILES} are taken",
            offer.files.len()
        ));
    }
    if !valid_name(&offer.snapshot_id) || !offer.files.iter().all(|f| valid_name(&f.name)) {
        return Err("the offer names a file outside its directory".into());
    }
    let mut names: Vec<&str> = offer.files.iter().map(|f| f.name.as_str()).collect();
    names.sort_unstable();
    if let Some(pair) = names.windows(2).find(|pair| pair[0] == pair[1]) {
        return Err(format!("the offer names {} twice", pair[0]));
    }
    let total = offer
        .files
        .iter()
        .try_fold(0u64, |total, f| total.checked_add(f.size))
        .ok_or("the offer's file sizes add up past 2^64 bytes")?;
    if total > budget {
        return Err(format!(
            "the offer's {total} bytes exceed the {budget} bytes free in this node's data directory"
        ));
    }
    Ok(())
}

/// A plain file name: the offer comes from the network and must not name
/// anything outside the staging directory.
pub(crate) fn valid_name(name: &str) -> bool {
    ferry_engine::fs::check_file_name(name).is_ok()
}

async fn receive_inner(
    context: &ReceiverContext,
    frames: &mut (impl Stream<Item = Result<SnapshotFrame, Status>> + Unpin),
    replies: &mpsc::Sender<Result<SnapshotReply, Status>>,
) -> Result<Reply, Reply> {
    let idle = context.options.idle_timeout;
    let Frame::Offer(offer) = next_frame(frames, idle).await? else {
        return Err(failed("the first frame must be an offer", false));
    };
    let from = offer
        .snapshot_id
        .split_once('-')
        .and_then(|(from, _)| from.parse().ok())
        .unwrap_or(0);
    context
        .contact
        .check_addressed(context.id, from, offer.to)
        .map_err(|e| failed(e, false))?;
    let vote: Vote = postcard::from_bytes(&offer.vote).map_err(|e| failed(e, false))?;
    let meta: SnapshotMeta = postcard::from_bytes(&offer.meta).map_err(|e| failed(e, false))?;
    // Names, count and sizes first: only then may names reach a path.
    check_offer(&offer, u64::MAX).map_err(|reason| failed(reason, false))?;
    let incoming = context.sm.data_dir().join("incoming");
    let staging = incoming.join(&offer.snapshot_id);
    // Held to the end, the install included.
    let _claim = context.staging.claim(&offer.snapshot_id).ok_or_else(|| {
        failed(
            "an earlier attempt at this snapshot is still running here",
            false,
        )
    })?;
    let plan = {
        let sm = context.sm.clone();
        let dir = staging.clone();
        let offer = offer.clone();
        let (used, incoming) = (context.staging.clone(), incoming.clone());
        blocking(move || {
            let plan = make_plan(&sm, &dir, &offer)?;
            // Only now: the plan reuses what it can of them.
            used.remove_unused(&**sm.fs(), &incoming);
            Ok(plan)
        })
        .await
        .map_err(|e| failed(format!("preparing {}: {e}", staging.display()), false))?
    };
    // Read after the plan, which freed what older attempts staged.
    let budget = context
        .sm
        .fs()
        .available_space(context.sm.data_dir())
        .map_err(|e| {
            failed(
                format!("reading the free space of the data directory: {e}"),
                false,
            )
        })?;
    // What an interrupted attempt staged, or local state lent, takes no
    // new space: a resume after a cut must not be refused for ever
    // because the first attempt used the room it needs.
    let held = plan
        .have
        .iter()
        .fold(0u64, |sum, &have| sum.saturating_add(have));
    check_offer(&offer, budget.saturating_add(held)).map_err(|reason| failed(reason, false))?;
    let reused: u64 = plan.reused_bytes;
    TransferStats::add(&context.stats.bytes_reused, reused);
    let reused_local = plan.reused_local;
    let mut written = plan.have.clone();
    let (total, already) = outstanding(offer.files.iter().map(|f| f.size), &written);
    let progress = context.stats.active.start(
        from,
        Direction::Receive,
        meta.last_log_id.map_or(0, |l| l.index),
        total,
        already,
    );
    let reply = SnapshotReply {
        reply: Some(Reply::Plan(pb::Plan {
            have: plan.have,
            reused_local,
        })),
    };
    if replies.send(Ok(reply)).await.is_err() {
        return Err(failed("the leader went away", false));
    }

    let fs = context.sm.fs().clone();
    let mut open: Option<(u32, Box<dyn WritableFile>)> = None;
    let mut unsynced = 0u64;
    let state_hash = loop {
        match next_frame(frames, idle).await? {
            Frame::Chunk(chunk) => {
                let file = offer
                    .files
                    .get(chunk.file as usize)
                    .ok_or_else(|| failed("chunk for an unknown file", false))?;
                if crc32fast::hash(&chunk.data) != chunk.crc {
                    return Err(failed(
                        format!(
                            "chunk of {} at offset {} fails its CRC",
                            file.name, chunk.offset
                        ),
                        false,
                    ));
                }
                let at = written[chunk.file as usize];
                if chunk.offset != at {
                    return Err(failed(
                        format!(
                            "chunk of {} at offset {} where {at} was expected",
                            file.name, chunk.offset
                        ),
                        false,
                    ));
                }
                if at + chunk.data.len() as u64 > file.size {
                    return Err(failed(
                        format!(
                            "chunk of {} at offset {at} with {} bytes runs past the {} bytes offered",
                            file.name,
                            chunk.data.len(),
                            file.size
                        ),
                        false,
                    ));
                }
                if open.as_ref().is_none_or(|(index, _)| *index != chunk.file) {
                    if let Some((_, mut previous)) = open.take() {
                        previous.sync().map_err(|e| failed(e, false))?;
                    }
                    let path = staging.join(&file.name);
                    // A file is written in order: new from offset 0, else
                    // continued after the prefix an earlier attempt left.
                    let handle = if at == 0 {
                        fs.create(&path)
                    } else {
                        fs.open_append(&path)
                    }
                    .map_err(|e| failed(e, false))?;
                    open = Some((chunk.file, handle));
                }
                let (_, handle) = open.as_mut().expect("opened above");
                handle.append(&chunk.data).map_err(|e| failed(e, false))?;
                written[chunk.file as usize] += chunk.data.len() as u64;
                unsynced += chunk.data.len() as u64;
                TransferStats::add(&context.stats.bytes_received, chunk.data.len() as u64);
                progress.add(chunk.data.len() as u64);
                if unsynced >= context.options.sync_every_bytes {
                    handle.sync().map_err(|e| failed(e, false))?;
                    unsynced = 0;
                }
                let progress = SnapshotReply {
                    reply: Some(Reply::Progress(pb::Progress {
                        received_bytes: written.iter().sum(),
                    })),
                };
                if replies.send(Ok(progress)).await.is_err() {
                    return Err(failed("the leader went away", false));
                }
            }
            Frame::Done(done) => break done.state_hash,
            Frame::Offer(_) => return Err(failed("unexpected second offer", false)),
        }
    };
    let received: u64 = written.iter().sum();
    let pause = context.options.pause_before_install;
    let limit = context.options.max_install_time;
    let finish = async move {
        if !pause.is_zero() {
            tokio::time::sleep(pause).await;
        }
        if let Some((_, mut handle)) = open.take() {
            blocking(move || handle.sync())
                .await
                .map_err(|e| failed(e, false))?;
        }

        // Every file must be exactly what the leader offered.
        {
            let (fs, staging) = (fs.clone(), staging.clone());
            let files = offer.files.clone();
            // A file linked from this member's own snapshot that fails (bit
            // rot there) would be linked again by the next plan: ask for
            // everything instead.
            blocking(move || verify_files(&*fs, &staging, &files))
                .await
                .map_err(|e| failed(e, reused_local))?;
        }
        if reused_local {
            let expected = state_hash
                .ok_or_else(|| failed("a differential transfer needs the state hash", true))?;
            let (dir, hash_fs) = (staging.clone(), fs.clone());
            let actual = match blocking(move || state_hash_of_checkpoint(&hash_fs, &dir)).await {
                Ok(hash) => hash,
                Err(error) => {
                    let _ = fs.remove_dir_all(&staging);
                    return Err(failed(
                        format!("assembled snapshot unreadable: {error}"),
                        true,
                    ));
                }
            };
            if actual != expected {
                TransferStats::add(&context.stats.hash_mismatches, 1);
                let _ = fs.remove_dir_all(&staging);
                tracing::error!(
                    expected,
                    actual,
                    "assembled snapshot state differs from the leader's; asking for a full transfer"
                );
                return Err(failed(
                    format!("state hash {actual:016x} differs from the leader's {expected:016x}"),
                    true,
                ));
            }
        }
        // Not part of the snapshot.
        let _ = fs.remove_file(&staging.join(super::plan::REUSED_LOCAL));
        // The state must be the one the meta names: openraft installs by the
        // meta (and, refused, the node could not even restart: the sealed
        // snapshot would be its newest).
        {
            let (check_fs, dir) = (fs.clone(), staging.clone());
            let point = blocking(move || {
                crate::snapshot::read_checkpoint(&check_fs, &dir, crate::state_machine::read_point)
            })
            .await
            .map_err(|e| failed(format!("received snapshot unreadable: {e}"), false))?;
            if point.0 != meta.last_log_id || point.1 != meta.last_membership {
                let _ = fs.remove_dir_all(&staging);
                return Err(failed(
                    format!(
                        "the snapshot's state was applied to {:?} with membership {:?}, \
                         its meta says {:?} and {:?}",
                        point.0, point.1, meta.last_log_id, meta.last_membership
                    ),
                    false,
                ));
            }
        }
        // Kept only if checked here: a later transfer from this node trusts it.
        let state_hash = if reused_local { state_hash } else { None };
        let handle = {
            let sm = context.sm.clone();
            let staging = staging.clone();
            let meta = meta.clone();
            blocking(move || sm.snapshots().seal(&staging, meta, state_hash))
                .await
                .map_err(|e| failed(e, false))?
        };
        let response = context
            .raft
            .install_full_snapshot(
                vote,
                SnapshotOf::<TypeConfig, SnapshotHandle> {
                    meta,
                    snapshot: handle,
                },
            )
            .await
            .map_err(|fatal| failed(fatal, false))?;
        // Older staging directories only served as sources of reusable files.
        let used = context.staging.clone();
        let _ = blocking(move || {
            used.remove_unused(&*fs, &incoming);
            Ok(())
        })
        .await;
        Ok::<Reply, Reply>(Reply::Installed(pb::Installed {
            response: postcard::to_stdvec(&response).map_err(|e| failed(e, false))?,
        }))
    };
    keep_alive(finish, replies, received, idle, limit).await
}

/// Runs `work`, the checks and the install after `Done`, while telling the
/// leader every second (or quarter of the idle timeout, if shorter: the
/// leader's is taken to be like this node's) that this side still works:
/// reading back and installing a large snapshot takes far longer than the
/// leader waits for a reply, and a leader that gave up would send it all
/// again. Past `limit` it stops, so that a leader is not held for ever by
/// an install stuck on a failing disk; a leader gone meanwhile does not
/// stop the install.
async fn keep_alive<T>(
    work: impl std::future::Future<Output = T>,
    replies: &mpsc::Sender<Result<SnapshotReply, Status>>,
    received: u64,
    idle: Duration,
    limit: Duration,
) -> T {
    tokio::pin!(work);
    let every = (idle / 4).clamp(Duration::from_millis(10), Duration::from_secs(1));
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let until = tokio::time::Instant::now() + limit;
    loop {
        tokio::select! {
            done = &mut work => return done,
            _ = tick.tick(), if !replies.is_closed() && tokio::time::Instant::now() < until => {
                let alive = SnapshotReply {
                    reply: Some(Reply::Progress(pb::Progress {
                        received_bytes: received,
                    })),
                };
                // Not awaited: a full channel holds replies the leader has
                // yet to read, each as good as this one.
                let _ = replies.try_send(Ok(alive));
            }
        }
    }
}

/// Checks at `Done` that every offered file arrived whole and intact.
/// Errors name the file (not the path: they go back to the peer).
fn verify_files(fs: &dyn FileSystem, staging: &Path, files: &[pb::FileEntry]) -> io::Result<()> {
    let invalid = |reason: String| io::Error::new(io::ErrorKind::InvalidData, reason);
    for file in files {
        let path = staging.join(&file.name);
        let size = match fs.file_size(&path) {
            Ok(size) => size,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(invalid(format!(
                    "{}: none of its {} bytes arrived before Done",
                    file.name, file.size
                )))
            }
            Err(e) => return Err(e),
        };
        if size < file.size {
            // A correct prefix: kept, so that the next attempt resumes.
            return Err(invalid(format!(
                "{}: {size} of its {} bytes arrived before Done",
                file.name, file.size
            )));
        }
        let crc = fs.file_crc(&path)?;
        if size != file.size || crc != file.crc {
            // Drop the damaged file so the next attempt fetches it again.
            let _ = fs.remove_file(&path);
            return Err(invalid(format!(
                "{}: {size} bytes with CRC {crc:08x}, the leader offered {} bytes with CRC {:08x}",
                file.name, file.size, file.crc
            )));
        }
    }
    fs.sync_dir(staging)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A receive keeps its staging directory, and the scratch of a read
    /// beside it, from another's clean-up; an id is claimed once at a time.
    #[test]
    fn staging_in_use_is_kept_and_the_rest_removed() {
        let dir = tempfile::tempdir().unwrap();
        let fs = ferry_engine::fs::OsFs;
        let incoming = dir.path();
        for name in ["1-a", "1-a.read-x", "1-ab", "2-old", "2-old.read-y"] {
            std::fs::create_dir(incoming.join(name)).unwrap();
            std::fs::write(incoming.join(name).join("000001.sst"), b"x").unwrap();
        }
        std::fs::write(incoming.join("stray"), b"x").unwrap();
        let staging = Arc::new(Staging::default());
        let claim = staging.claim("1-a").unwrap();
        assert!(staging.claim("1-a").is_none(), "claimed twice");
        staging.remove_unused(&fs, incoming);
        let mut left: Vec<_> = std::fs::read_dir(incoming)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        assert_eq!(left, ["1-a", "1-a.read-x"]);
        drop(claim);
        assert!(staging.claim("1-a").is_some(), "released when dropped");
    }

    #[test]
    fn offered_names_cannot_leave_the_staging_directory() {
        for bad in ["", ".", "..", "../x", "a/b", "a\\b", "nul\0"] {
            assert!(!valid_name(bad), "{bad:?}");
        }
        assert!(valid_name("000042.sst"));
        assert!(valid_name("1-00000000000000000100-1-42"));
    }
}
