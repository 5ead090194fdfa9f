//! etcd's Maintenance service.
//!
//! - Status reports the etcd API version Ferry speaks (`3.5.0`), the data
//!   directory's size on disk, the leader, and the Raft index and term.
//! - Alarm: Ferry raises none (it refuses writes over its limits instead of
//!   entering etcd's NOSPACE mode), so the list is always empty and
//!   disarming is a no-op.
//! - Defragment compacts the engine's tables, as Ferry's own does.
//! - Hash is the content checksum of this member's whole replicated state;
//!   HashKV that of its user keys and values at the applied revision.
//!   Members at the same revision answer the same.
//! - MoveLeader hands leadership over as Ferry's TransferLeader does.
//! - Snapshot streams Ferry's snapshot in etcd's stream shape (see
//!   [`super::snapshot`]); `ferry snapshot restore --from FILE` makes a
//!   new cluster of what `etcdctl snapshot save FILE` wrote.

use super::pb::etcdserverpb::{self as rpc, maintenance_server::Maintenance};
use super::snapshot::Writer;
use super::{message, to_i64, Etcd};
use ferry_client::pb;
use ferry_replication::auth::Access;
use std::pin::Pin;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

/// The etcd API version the services follow.
pub const ETCD_API_VERSION: &str = "3.5.0";

/// Longest a MoveLeader waits for the target to catch up and take over.
const MOVE_LEADER_TIMEOUT: Duration = Duration::from_secs(5);

pub struct MaintenanceService {
    pub etcd: Etcd,
    /// Places for snapshot downloads and exports running at once, shared
    /// with Ferry's own Maintenance service.
    pub transfers: std::sync::Arc<tokio::sync::Semaphore>,
}

/// A 64-bit checksum folded to etcd's 32 bits.
fn fold(hash: u64) -> u32 {
    (hash ^ (hash >> 32)) as u32
}

/// Sends Ferry's snapshot `chunks` in etcd's stream shape (see
/// [`super::snapshot`]), one chunk per message.
async fn archive(
    context: crate::service::Context,
    mut chunks: mpsc::Receiver<Result<pb::SnapshotChunk, Status>>,
    sender: mpsc::Sender<Result<rpc::SnapshotResponse, Status>>,
) {
    let (mut writer, mut blob) = Writer::start();
    // etcd's clients show it as progress only.
    let mut remaining = 0u64;
    while let Some(chunk) = chunks.recv().await {
        let chunk = match chunk {
            Ok(chunk) => chunk,
            Err(status) => {
                let _ = context.send(&sender, Err(status)).await;
                return;
            }
        };
        match &chunk.chunk {
            Some(pb::snapshot_chunk::Chunk::Info(info)) => remaining = info.total_bytes,
            Some(pb::snapshot_chunk::Chunk::Data(data)) => {
                remaining = remaining.saturating_sub(data.len() as u64)
            }
            _ => {}
        }
        blob.extend(writer.chunk(&chunk));
        let answer = rpc::SnapshotResponse {
            header: None,
            remaining_bytes: remaining.max(1),
            blob: std::mem::take(&mut blob),
        };
        if !context.send(&sender, Ok(answer)).await {
            return;
        }
    }
    let last = rpc::SnapshotResponse {
        header: None,
        remaining_bytes: 0,
        blob: writer.finish(),
    };
    let _ = context.send(&sender, Ok(last)).await;
}

#[tonic::async_trait]
impl Maintenance for MaintenanceService {
    async fn alarm(
        &self,
        request: Request<rpc::AlarmRequest>,
    ) -> Result<Response<rpc::AlarmResponse>, Status> {
        let context = &self.etcd.context;
        self.etcd
            .timed("etcd.Alarm", async {
                let access =
                    match rpc::alarm_request::AlarmAction::try_from(request.get_ref().action) {
                        Ok(rpc::alarm_request::AlarmAction::Get) => Access::Any,
                        Ok(_) => Access::Root,
                        Err(_) => return Err(Status::invalid_argument("unknown alarm action")),
                    };
                context.gate.authorize(&request, &access)?;
                Ok(Response::new(rpc::AlarmResponse {
                    header: self.etcd.header(context.applied()),
                    alarms: Vec::new(),
                }))
            })
            .await
    }

    async fn status(
        &self,
        request: Request<rpc::StatusRequest>,
    ) -> Result<Response<rpc::StatusResponse>, Status> {
        let context = &self.etcd.context;
        self.etcd
            .timed("etcd.Status", async {
                context.gate.authorize(&request, &Access::Any)?;
                // The data directory's bytes: what etcd's `db_size` stands for.
                let state = context.node.state().clone();
                let size =
                    tokio::task::spawn_blocking(move || state.fs().tree_bytes(state.data_dir()))
                        .await
                        .map_err(|e| Status::internal(e.to_string()))?;
                let metrics = context.node.metrics();
                let id = context.node.id();
                let is_learner = !metrics
                    .membership_config
                    .membership()
                    .voter_ids()
                    .any(|v| v == id);
                Ok(Response::new(rpc::StatusResponse {
                    header: self.etcd.header(context.applied()),
                    version: ETCD_API_VERSION.to_owned(),
                    db_size: to_i64(size),
                    leader: metrics.current_leader.unwrap_or(0),
                    raft_index: metrics.last_log_index.unwrap_or(0),
                    raft_term: metrics.current_term,
                    raft_applied_index: metrics.last_applied.map_or(0, |l| l.index),
                    errors: Vec::new(),
                    db_size_in_use: to_i64(size),
                    is_learner,
                }))
            })
            .await
    }

    async fn defragment(
        &self,
        request: Request<rpc::DefragmentRequest>,
    ) -> Result<Response<rpc::DefragmentResponse>, Status> {
        let context = &self.etcd.context;
        self.etcd
            .timed("etcd.Defragment", async {
                context.gate.authorize(&request, &Access::Root)?;
                context
                    .node
                    .compact_engine()
                    .await
                    .map_err(|e| self.etcd.status(e))?;
                Ok(Response::new(rpc::DefragmentResponse {
                    header: self.etcd.header(context.applied()),
                }))
            })
            .await
    }

    async fn hash(
        &self,
        request: Request<rpc::HashRequest>,
    ) -> Result<Response<rpc::HashResponse>, Status> {
        let context = &self.etcd.context;
        self.etcd
            .timed("etcd.Hash", async {
                context.gate.authorize(&request, &Access::Root)?;
                let node = context.node.clone();
                let (applied, hash) = tokio::task::spawn_blocking(move || node.state_hash())
                    .await
                    .map_err(|e| Status::internal(e.to_string()))?
                    .map_err(|e| self.etcd.status(e))?;
                Ok(Response::new(rpc::HashResponse {
                    header: self.etcd.header(applied.map_or(0, |l| l.index)),
                    hash: fold(hash),
                }))
            })
            .await
    }

    async fn hash_kv(
        &self,
        request: Request<rpc::HashKvRequest>,
    ) -> Result<Response<rpc::HashKvResponse>, Status> {
        let context = &self.etcd.context;
        self.etcd
            .timed("etcd.HashKV", async {
                context.gate.authorize(&request, &Access::Root)?;
                let revision = request.get_ref().revision;
                let node = context.node.clone();
                let (at, hash) = tokio::task::spawn_blocking(move || node.user_checksum())
                    .await
                    .map_err(|e| Status::internal(e.to_string()))?
                    .map_err(|e| self.etcd.status(e))?;
                if revision != 0 && revision != to_i64(at) {
                    return Err(Status::unimplemented(format!(
                        "HashKV hashes the applied revision ({at}) only; ask with revision 0"
                    )));
                }
                let compacted = context.node.compacted().map_err(|e| self.etcd.status(e))?;
                Ok(Response::new(rpc::HashKvResponse {
                    header: self.etcd.header(at),
                    hash: fold(hash),
                    compact_revision: to_i64(compacted),
                }))
            })
            .await
    }

    type SnapshotStream = Pin<Box<dyn Stream<Item = Result<rpc::SnapshotResponse, Status>> + Send>>;

    async fn snapshot(
        &self,
        request: Request<rpc::SnapshotRequest>,
    ) -> Result<Response<Self::SnapshotStream>, Status> {
        let context = &self.etcd.context;
        self.etcd
            .timed("etcd.Snapshot", async {
                context.gate.authorize(&request, &Access::Root)?;
                let permit = self.transfers.clone().try_acquire_owned().map_err(|_| {
                    Status::resource_exhausted(format!(
                        "max_transfers = {} snapshot downloads and exports are running",
                        context.limits.max_transfers
                    ))
                })?;
                let chunks = crate::service::maintenance::snapshot_chunks(context, permit).await?;
                let (sender, receiver) = mpsc::channel(4);
                tokio::spawn(archive(context.clone(), chunks, sender));
                Ok(Response::new(
                    Box::pin(ReceiverStream::new(receiver)) as Self::SnapshotStream
                ))
            })
            .await
    }

    async fn move_leader(
        &self,
        request: Request<rpc::MoveLeaderRequest>,
    ) -> Result<Response<rpc::MoveLeaderResponse>, Status> {
        let context = &self.etcd.context;
        self.etcd
            .timed("etcd.MoveLeader", async {
                context.gate.authorize(&request, &Access::Root)?;
                let target = request.into_inner().target_id;
                let node = &context.node;
                let metrics = node.metrics();
                if !metrics
                    .membership_config
                    .membership()
                    .voter_ids()
                    .any(|v| v == target)
                {
                    return Err(Status::failed_precondition(message::BAD_LEADER_TRANSFEREE));
                }
                if !node.is_leader() {
                    return Err(Status::failed_precondition(message::NOT_LEADER));
                }
                node.transfer_leadership(target, MOVE_LEADER_TIMEOUT)
                    .await
                    .map_err(|e| self.etcd.status(e))?;
                Ok(Response::new(rpc::MoveLeaderResponse {
                    header: self.etcd.header(context.applied()),
                }))
            })
            .await
    }

    async fn downgrade(
        &self,
        request: Request<rpc::DowngradeRequest>,
    ) -> Result<Response<rpc::DowngradeResponse>, Status> {
        let context = &self.etcd.context;
        self.etcd
            .timed("etcd.Downgrade", async {
                context.gate.authorize(&request, &Access::Root)?;
                Err(Status::unimplemented(
                "etcd's cluster downgrade does not apply to Ferry: a Ferry release reads every \
                 earlier release's files and logs",
            ))
            })
            .await
    }
}
