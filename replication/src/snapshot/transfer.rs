//! Shipping a snapshot from leader to follower, resumable and differential.
//!
//! ## Protocol (version 1, frames in `proto/raft.proto`)
//!
//! ```text
//! leader                                   follower
//!   Offer{vote, meta, id, files, full_only} ->
//!                                          <- Plan{have[i], reused_local}
//!   Chunk{file, offset, data, crc}*        ->   (each chunk CRC-checked, appended)
//!                                          <- Progress*  (one per chunk: liveness)
//!   Done{state_hash if reused_local}       ->
//!                                          <- Installed{response} | Failed{reason, retry_full}
//! ```
//!
//! - The follower stages into `<data>/incoming/<id>/`. A file it already
//!   holds there (an interrupted attempt) counts from its current length,
//!   so a broken transfer resumes; a table with the same name, size and
//!   CRC in its live engine or its snapshots is hard-linked instead of
//!   sent (differential transfer).
//! - At `Done` every file's size and CRC must match the offer. If local
//!   files were reused, the content checksum of the assembled state must
//!   equal the leader's; if not, the follower discards the staging
//!   directory and answers `retry_full`, and the leader sends everything.
//! - Memory is bounded: one chunk in hand per side plus a channel of four.
//! - There is no deadline for the whole transfer, only an idle timeout per
//!   reply, and an optional bandwidth limit shared by all transfers of a node.

use super::progress::Direction;
use super::{blocking, state_hash_of_checkpoint, SnapshotHandle};
use crate::network::pb::{
    self, raft_transport_client::RaftTransportClient, snapshot_frame::Frame, snapshot_reply::Reply,
    SnapshotFrame, SnapshotReply,
};
use crate::network::{NetworkControl, TransferStats};
use crate::state_machine::SmShared;
use crate::types::{NodeId, Raft, SnapshotMeta, TypeConfig, Vote};
use ferry_engine::fs::{FileSystem, WritableFile};
use futures_util::{Stream, StreamExt};
use openraft::alias::SnapshotOf;
use openraft::error::{NetworkError, ReplicationClosed, StreamingError, Unreachable};
use openraft::raft::SnapshotResponse;
use prost::Message;
use std::collections::HashMap;
use std::future::Future;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use tonic::Status;

/// Tuning of snapshot transfers.
#[derive(Debug, Clone)]
pub struct TransferOptions {
    /// Bytes of file data per chunk.
    pub chunk_bytes: usize,
    /// A transfer with no reply for this long is abandoned (and resumed by
    /// the next attempt).
    pub idle_timeout: Duration,
    /// Limit on outgoing snapshot bytes per second for the whole node; 0 =
    /// unlimited.
    pub max_bytes_per_sec: u64,
    /// The receiver makes received data durable every this many bytes.
    pub sync_every_bytes: u64,
    /// Test hook: the next differential transfer announces a wrong state
    /// hash, to exercise the fall-back to a full transfer.
    #[doc(hidden)]
    pub corrupt_next_state_hash: Arc<std::sync::atomic::AtomicBool>,
}

impl Default for TransferOptions {
    fn default() -> Self {
        TransferOptions {
            chunk_bytes: 1 << 20,
            idle_timeout: Duration::from_secs(10),
            max_bytes_per_sec: 0,
            sync_every_bytes: 8 << 20,
            corrupt_next_state_hash: Default::default(),
        }
    }
}

/// A token bucket shared by a node's outgoing transfers.
pub struct RateLimiter {
    bytes_per_sec: u64,
    state: tokio::sync::Mutex<(tokio::time::Instant, f64)>,
}

impl RateLimiter {
    pub fn new(bytes_per_sec: u64) -> Self {
        RateLimiter {
            bytes_per_sec,
            state: tokio::sync::Mutex::new((tokio::time::Instant::now(), 0.0)),
        }
    }

    async fn acquire(&self, bytes: u64) {
        if self.bytes_per_sec == 0 {
            return;
        }
        let rate = self.bytes_per_sec as f64;
        let mut state = self.state.lock().await;
        let now = tokio::time::Instant::now();
        // Burst of up to a tenth of a second of traffic.
        let tokens = (state.1 + now.duration_since(state.0).as_secs_f64() * rate).min(rate / 10.0);
        let left = tokens - bytes as f64;
        *state = (now, left);
        if left < 0.0 {
            tokio::time::sleep(Duration::from_secs_f64(-left / rate)).await;
        }
    }
}

/// The link a transfer runs over, so that a test's cut interrupts a
/// transfer in flight.
#[derive(Clone)]
pub(crate) struct Link {
    pub(crate) from: NodeId,
    pub(crate) to: NodeId,
    pub(crate) control: NetworkControl,
}

type Cancel = Pin<Box<dyn Future<Output = ReplicationClosed> + Send>>;

fn network_error(reason: impl ToString) -> StreamingError<TypeConfig> {
    StreamingError::Network(NetworkError::from_string(reason))
}

enum Attempt {
    Installed(SnapshotResponse<TypeConfig>),
    RetryFull(String),
}

/// Sends `snapshot` to the follower behind `client` (leader side of
/// `full_snapshot`). A differential attempt whose state hash does not match
/// is retried at once as a full one.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn send(
    client: RaftTransportClient<Channel>,
    link: Link,
    vote: Vote,
    snapshot: SnapshotOf<TypeConfig, SnapshotHandle>,
    cancel: impl Future<Output = ReplicationClosed> + Send + 'static,
    options: &TransferOptions,
    limiter: &Arc<RateLimiter>,
    stats: &Arc<TransferStats>,
) -> Result<SnapshotResponse<TypeConfig>, StreamingError<TypeConfig>> {
    let mut cancel: Cancel = Box::pin(cancel);
    let mut full_only = false;
    loop {
        let attempt = attempt(
            client.clone(),
            link.clone(),
            &vote,
            &snapshot.snapshot,
            full_only,
            &mut cancel,
            options,
            limiter,
            stats,
        )
        .await?;
        match attempt {
            Attempt::Installed(response) => {
                TransferStats::add(&stats.transfers, 1);
                return Ok(response);
            }
            Attempt::RetryFull(reason) if !full_only => {
                tracing::error!(%reason, "differential snapshot install failed its state check; sending the full snapshot");
                full_only = true;
            }
            Attempt::RetryFull(reason) => return Err(network_error(reason)),
        }
    }
}

async fn next_reply(
    replies: &mut tonic::Streaming<SnapshotReply>,
    idle: Duration,
    cancel: &mut Cancel,
    stats: &TransferStats,
) -> Result<Reply, StreamingError<TypeConfig>> {
    let message = tokio::select! {
        closed = cancel.as_mut() => return Err(StreamingError::Closed(closed)),
        message = tokio::time::timeout(idle, replies.message()) => message,
    };
    let reply = message
        .map_err(|_| network_error(format!("no reply from the follower for {idle:?}")))?
        .map_err(|status| StreamingError::Unreachable(Unreachable::new(&status)))?
        .ok_or_else(|| network_error("the follower closed the snapshot stream"))?;
    TransferStats::add(&stats.bytes_sent, reply.encoded_len() as u64);
    reply
        .reply
        .ok_or_else(|| network_error("empty snapshot reply"))
}

#[allow(clippy::too_many_arguments)]
async fn attempt(
    mut client: RaftTransportClient<Channel>,
    link: Link,
    vote: &Vote,
    handle: &SnapshotHandle,
    full_only: bool,
    cancel: &mut Cancel,
    options: &TransferOptions,
    limiter: &Arc<RateLimiter>,
    stats: &Arc<TransferStats>,
) -> Result<Attempt, StreamingError<TypeConfig>> {
    let manifest = handle.manifest();
    let snapshot_id = handle
        .dir()
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("snapshot")
        .to_owned();
    let offer = SnapshotFrame {
        frame: Some(Frame::Offer(pb::Offer {
            vote: postcard::to_stdvec(vote).map_err(network_error)?,
            meta: postcard::to_stdvec(&manifest.meta).map_err(network_error)?,
            snapshot_id: format!("{}-{snapshot_id}", link.from),
            files: manifest.files.iter().map(pb::FileEntry::from).collect(),
            full_only,
            to: link.to,
        })),
    };
    let (frames, receiver) = mpsc::channel::<SnapshotFrame>(4);
    TransferStats::add(&stats.bytes_sent, offer.encoded_len() as u64);
    frames
        .send(offer)
        .await
        .map_err(|_| network_error("snapshot channel closed"))?;
    // The offer is already queued, and the follower's handler answers
    // (headers) before it reads anything, so awaiting the call here cannot
    // wait on frames that are only produced later (the deadlock of
    // openraft's gRPC example, which awaits the call before feeding it).
    let call = client.install_snapshot(ReceiverStream::new(receiver));
    let mut replies = tokio::select! {
        closed = cancel.as_mut() => return Err(StreamingError::Closed(closed)),
        replied = tokio::time::timeout(options.idle_timeout, call) => replied
            .map_err(|_| network_error("the follower did not answer the snapshot offer"))?
            .map_err(|status| StreamingError::Unreachable(Unreachable::new(&status)))?
            .into_inner(),
    };
    let plan = match next_reply(&mut replies, options.idle_timeout, cancel, stats).await? {
        Reply::Plan(plan) => plan,
        Reply::Failed(failed) => return Err(network_error(failed.reason)),
        _ => return Err(network_error("expected a plan from the follower")),
    };
    if plan.have.len() != manifest.files.len() {
        return Err(network_error(
            "the follower's plan does not match the offer",
        ));
    }
    let (total, reused) = outstanding(manifest.files.iter().map(|f| f.size), &plan.have);
    let progress = stats.active.start(
        link.to,
        Direction::Send,
        manifest.meta.last_log_id.map_or(0, |l| l.index),
        total,
        reused,
    );
    let producer = tokio::spawn(produce(
        Producer {
            sent: progress.counter(),
            link,
            handle: handle.clone(),
            options: options.clone(),
            limiter: limiter.clone(),
            stats: stats.clone(),
        },
        plan.have,
        plan.reused_local,
        frames,
    ));
    let _abort = AbortOnDrop(producer);
    loop {
        match next_reply(&mut replies, options.idle_timeout, cancel, stats).await? {
            Reply::Progress(_) => continue,
            Reply::Installed(installed) => {
                let response: SnapshotResponse<TypeConfig> =
                    postcard::from_bytes(&installed.response).map_err(network_error)?;
                return Ok(Attempt::Installed(response));
            }
            Reply::Failed(failed) if failed.retry_full => {
                return Ok(Attempt::RetryFull(failed.reason))
            }
            Reply::Failed(failed) => return Err(network_error(failed.reason)),
            Reply::Plan(_) => return Err(network_error("unexpected second plan")),
        }
    }
}

/// Of files of `sizes` of which the follower holds `have` bytes each: the
/// bytes still to move, and the bytes it holds.
fn outstanding(sizes: impl Iterator<Item = u64>, have: &[u64]) -> (u64, u64) {
    sizes.zip(have).fold((0, 0), |(total, held), (size, have)| {
        let have = (*have).min(size);
        (total + size - have, held + have)
    })
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Streams the bytes the follower lacks, then `Done`.
/// What the sending task reads from.
struct Producer {
    /// Bytes of file data sent, for the transfer's progress.
    sent: Arc<std::sync::atomic::AtomicU64>,
    link: Link,
    handle: SnapshotHandle,
    options: TransferOptions,
    limiter: Arc<RateLimiter>,
    stats: Arc<TransferStats>,
}

async fn produce(
    producer: Producer,
    have: Vec<u64>,
    reused_local: bool,
    frames: mpsc::Sender<SnapshotFrame>,
) {
    let Producer {
        sent,
        link,
        handle,
        options,
        limiter,
        stats,
    } = producer;
    let chunk_bytes = options.chunk_bytes;
    let corrupt_state_hash = options.corrupt_next_state_hash;
    let result: io::Result<()> = async {
        for (index, (file, have)) in handle.manifest().files.iter().zip(have).enumerate() {
            let mut offset = have.min(file.size);
            if offset == file.size {
                continue;
            }
            let mut source = handle.fs.open_sequential(&handle.dir().join(&file.name))?;
            // A resumed file: skip what the follower holds.
            io::copy(&mut (&mut source).take(offset), &mut io::sink())?;
            while offset < file.size {
                let len = (file.size - offset).min(chunk_bytes as u64) as usize;
                let mut data = vec![0u8; len];
                // Reading a chunk blocks briefly; chunks are small enough not
                // to matter to the runtime.
                source.read_exact(&mut data)?;
                limiter.acquire(len as u64).await;
                if link.control.is_cut(link.from, link.to) {
                    // A cut link loses the rest of the stream; the next
                    // attempt resumes from what the follower kept.
                    return Ok(());
                }
                let frame = SnapshotFrame {
                    frame: Some(Frame::Chunk(pb::Chunk {
                        file: index as u32,
                        offset,
                        crc: crc32fast::hash(&data),
                        data,
                    })),
                };
                TransferStats::add(&stats.bytes_sent, frame.encoded_len() as u64);
                if frames.send(frame).await.is_err() {
                    return Ok(());
                }
                sent.fetch_add(len as u64, std::sync::atomic::Ordering::Relaxed);
                offset += len as u64;
            }
        }
        let state_hash = if reused_local {
            let handle = handle.clone();
            let hash = tokio::task::spawn_blocking(move || handle.state_hash())
                .await
                .map_err(io::Error::other)??;
            let corrupt = corrupt_state_hash.swap(false, std::sync::atomic::Ordering::Relaxed);
            Some(if corrupt { !hash } else { hash })
        } else {
            None
        };
        let done = SnapshotFrame {
            frame: Some(Frame::Done(pb::Done { state_hash })),
        };
        TransferStats::add(&stats.bytes_sent, done.encoded_len() as u64);
        let _ = frames.send(done).await;
        Ok(())
    }
    .await;
    if let Err(error) = result {
        // Dropping the sender ends the stream without `Done`; the follower
        // fails the attempt and keeps what it received for a resume.
        tracing::warn!(%error, "reading a snapshot to send failed");
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

impl From<&super::SnapshotFile> for pb::FileEntry {
    fn from(file: &super::SnapshotFile) -> Self {
        pb::FileEntry {
            name: file.name.clone(),
            size: file.size,
            crc: file.crc,
        }
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
    let budget = {
        context
            .sm
            .fs()
            .available_space(context.sm.data_dir())
            .map_err(|e| {
                failed(
                    format!("reading the free space of the data directory: {e}"),
                    false,
                )
            })?
    };
    check_offer(&offer, budget).map_err(|reason| failed(reason, false))?;
    let incoming = context.sm.data_dir().join("incoming");
    let staging = incoming.join(&offer.snapshot_id);
    let plan = {
        let sm = context.sm.clone();
        let dir = staging.clone();
        let offer = offer.clone();
        blocking(move || make_plan(&sm, &dir, &offer))
            .await
            .map_err(|e| failed(format!("preparing {}: {e}", staging.display()), false))?
    };
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
    if let Some((_, mut handle)) = open.take() {
        handle.sync().map_err(|e| failed(e, false))?;
    }

    // Every file must be exactly what the leader offered.
    {
        let (fs, staging) = (fs.clone(), staging.clone());
        let files = offer.files.clone();
        blocking(move || verify_files(&*fs, &staging, &files))
            .await
            .map_err(|e| failed(e, false))?;
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
    if let Ok(names) = fs.list(&incoming) {
        for name in names {
            let _ = fs.remove_dir_all(&incoming.join(name));
        }
    }
    Ok(Reply::Installed(pb::Installed {
        response: postcard::to_stdvec(&response).map_err(|e| failed(e, false))?,
    }))
}

struct Plan {
    have: Vec<u64>,
    reused_local: bool,
    reused_bytes: u64,
}

/// Decides, per offered file, how many bytes are already here: a prefix
/// from an interrupted attempt, or a whole file linked from local state.
fn make_plan(sm: &SmShared, staging: &Path, offer: &pb::Offer) -> io::Result<Plan> {
    let fs = &**sm.fs();
    fs.create_dir_all(staging)?;
    // Candidate sources of reusable files: name -> (path, known CRC).
    let mut sources: HashMap<String, Vec<(PathBuf, Option<u32>)>> = HashMap::new();
    if !offer.full_only {
        if let Ok(Some(current)) = sm.snapshots().current() {
            for file in &current.manifest().files {
                sources
                    .entry(file.name.clone())
                    .or_default()
                    .push((current.dir().join(&file.name), Some(file.crc)));
            }
        }
        let mut dirs = vec![sm.engine_dir()];
        if let Some(incoming) = staging.parent() {
            for name in fs.list(incoming)? {
                let path = incoming.join(name);
                if path != staging {
                    dirs.push(path);
                }
            }
        }
        for dir in dirs {
            for name in fs.list(&dir)? {
                let path = dir.join(&name);
                sources.entry(name).or_default().push((path, None));
            }
        }
    } else {
        // A previous differential attempt failed: nothing local is trusted.
        fs.remove_dir_all(staging)?;
        fs.create_dir_all(staging)?;
    }
    let mut plan = Plan {
        have: Vec::with_capacity(offer.files.len()),
        reused_local: false,
        reused_bytes: 0,
    };
    for file in &offer.files {
        let target = staging.join(&file.name);
        if let Ok(len) = fs.file_size(&target) {
            if len < file.size || (len == file.size && fs.file_crc(&target)? == file.crc) {
                plan.have.push(len);
                continue;
            }
            fs.remove_file(&target)?;
        }
        let mut have = 0;
        for (path, known_crc) in sources.get(&file.name).into_iter().flatten() {
            if fs.is_dir(path) || fs.file_size(path).ok() != Some(file.size) {
                continue;
            }
            let crc = match known_crc {
                Some(crc) => *crc,
                None => fs.file_crc(path)?,
            };
            if crc == file.crc && super::link_or_copy(fs, path, &target).is_ok() {
                have = file.size;
                plan.reused_local = true;
                plan.reused_bytes += file.size;
                break;
            }
        }
        plan.have.push(have);
    }
    fs.sync_dir(staging)?;
    Ok(plan)
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

    #[tokio::test(start_paused = true)]
    async fn the_rate_limiter_holds_transfers_to_the_configured_rate() {
        let limiter = RateLimiter::new(10 << 20);
        let started = tokio::time::Instant::now();
        for _ in 0..50 {
            limiter.acquire(1 << 20).await;
        }
        // 50 MiB at 10 MiB/s: 5 s less the initial burst allowance (none: the
        // bucket starts empty).
        let elapsed = started.elapsed();
        assert!(elapsed >= Duration::from_millis(4900), "{elapsed:?}");
        assert!(elapsed <= Duration::from_millis(5100), "{elapsed:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn an_unlimited_rate_never_waits() {
        let limiter = RateLimiter::new(0);
        let started = tokio::time::Instant::now();
        limiter.acquire(1 << 30).await;
        assert_eq!(started.elapsed(), Duration::ZERO);
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
