//! The leader's side of a transfer: the offer, then the files the
//! follower's plan says it lacks, read and sent in bounded memory.

use super::{outstanding, Link, RateLimiter, TransferOptions};
use crate::network::pb::{
    self, raft_transport_client::RaftTransportClient, snapshot_frame::Frame, snapshot_reply::Reply,
    SnapshotFrame, SnapshotReply,
};
use crate::network::TransferStats;
use crate::snapshot::progress::Direction;
use crate::snapshot::SnapshotHandle;
use crate::types::{TypeConfig, Vote};
use openraft::alias::SnapshotOf;
use openraft::error::{NetworkError, ReplicationClosed, StreamingError, Unreachable};
use openraft::raft::SnapshotResponse;
use prost::Message;
use std::future::Future;
use std::io::{self, Read};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

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
        .await
        .inspect_err(|error| {
            if !matches!(error, StreamingError::Closed(_)) {
                TransferStats::add(&stats.failed_attempts, 1);
            }
        })?;
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

impl From<&crate::snapshot::SnapshotFile> for pb::FileEntry {
    fn from(file: &crate::snapshot::SnapshotFile) -> Self {
        pb::FileEntry {
            name: file.name.clone(),
            size: file.size,
            crc: file.crc,
        }
    }
}
