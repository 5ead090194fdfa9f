//! The Maintenance service: checkpoint, snapshot download, Parquet exports
//! (streamed, see `export`), history compaction, engine defragmentation,
//! sizes.

use super::export::{self, Export, ExportStream};
use super::{timed, Context};
use ferry_client::pb::{self, maintenance_server::Maintenance};
use ferry_replication::auth::Access;
use std::io::Read;
use std::pin::Pin;
use std::sync::Arc;
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

pub struct MaintenanceService {
    pub context: Context,
    /// Places for snapshot downloads and exports running at once.
    pub transfers: Arc<Semaphore>,
}

const CHUNK: usize = 1 << 20;

type ChunkStream =
    Pin<Box<dyn tokio_stream::Stream<Item = Result<pb::SnapshotChunk, Status>> + Send>>;

impl MaintenanceService {
    /// A place among the concurrent downloads and exports, or
    /// RESOURCE_EXHAUSTED naming the limit.
    pub(crate) fn transfer_permit(&self) -> Result<OwnedSemaphorePermit, Status> {
        self.transfers.clone().try_acquire_owned().map_err(|_| {
            Status::resource_exhausted(format!(
                "max_transfers = {} snapshot downloads and exports are running",
                self.context.limits.max_transfers
            ))
        })
    }

    fn applied(&self) -> u64 {
        self.context
            .node
            .metrics()
            .last_applied
            .map_or(0, |l| l.index)
    }
}

/// Streams the current snapshot (building one if there is none) as Ferry's
/// snapshot chunks: its info, then each file's header and data. The
/// permit is held until the stream ends. Ferry's Snapshot RPC sends these;
/// etcd's wraps them in its archive (`crate::etcd::snapshot`).
pub(crate) async fn snapshot_chunks(
    context: &Context,
    permit: OwnedSemaphorePermit,
) -> Result<mpsc::Receiver<Result<pb::SnapshotChunk, Status>>, Status> {
    let node = &context.node;
    let snapshot = match node
        .raft()
        .get_snapshot()
        .await
        .map_err(|e| Status::internal(e.to_string()))?
    {
        Some(snapshot) => snapshot,
        None => {
            node.snapshot().await.map_err(|e| context.status(e))?;
            node.raft()
                .get_snapshot()
                .await
                .map_err(|e| Status::internal(e.to_string()))?
                .ok_or_else(|| Status::internal("no snapshot after building one"))?
        }
    };
    // The handle pins the snapshot's files while they stream.
    let handle = snapshot.snapshot;
    let (sender, receiver) = mpsc::channel(4);
    std::thread::spawn(move || {
        let _permit = permit;
        let manifest = handle.manifest();
        let log_id = manifest.meta.last_log_id;
        let info = pb::SnapshotChunk {
            chunk: Some(pb::snapshot_chunk::Chunk::Info(pb::SnapshotInfo {
                index: log_id.map_or(0, |l| l.index),
                term: log_id.map_or(0, |l| l.leader_id.term),
                total_bytes: manifest.total_bytes(),
                files: manifest.files.len() as u32,
            })),
        };
        if sender.blocking_send(Ok(info)).is_err() {
            return;
        }
        for file in &manifest.files {
            let header = pb::SnapshotChunk {
                chunk: Some(pb::snapshot_chunk::Chunk::File(pb::SnapshotFileHeader {
                    name: file.name.clone(),
                    size: file.size,
                    crc: file.crc,
                })),
            };
            if sender.blocking_send(Ok(header)).is_err() {
                return;
            }
            let mut source = match handle.fs().open_sequential(&handle.dir().join(&file.name)) {
                Ok(source) => source,
                Err(e) => {
                    let _ = sender.blocking_send(Err(Status::internal(e.to_string())));
                    return;
                }
            };
            let mut left = file.size;
            while left > 0 {
                let mut data = vec![0u8; (left as usize).min(CHUNK)];
                if let Err(e) = source.read_exact(&mut data) {
                    let _ = sender.blocking_send(Err(Status::internal(e.to_string())));
                    return;
                }
                left -= data.len() as u64;
                let chunk = pb::SnapshotChunk {
                    chunk: Some(pb::snapshot_chunk::Chunk::Data(data)),
                };
                if sender.blocking_send(Ok(chunk)).is_err() {
                    return;
                }
            }
        }
    });
    Ok(receiver)
}

#[tonic::async_trait]
impl Maintenance for MaintenanceService {
    async fn checkpoint(
        &self,
        request: Request<pb::CheckpointRequest>,
    ) -> Result<Response<pb::CheckpointResponse>, Status> {
        timed(&self.context, "Checkpoint", async {
            self.context.gate.authorize(&request, &Access::Root)?;
            let node = &self.context.node;
            node.snapshot().await.map_err(|e| self.context.status(e))?;
            let snapshot = node
                .raft()
                .get_snapshot()
                .await
                .map_err(|e| Status::internal(e.to_string()))?
                .ok_or_else(|| Status::internal("no snapshot after building one"))?;
            let manifest = snapshot.snapshot.manifest();
            Ok(Response::new(pb::CheckpointResponse {
                header: self.context.header(self.applied()),
                index: manifest.meta.last_log_id.map_or(0, |l| l.index),
                bytes: manifest.total_bytes(),
                files: manifest.files.len() as u32,
            }))
        })
        .await
    }

    type SnapshotStream = ChunkStream;

    async fn snapshot(
        &self,
        request: Request<pb::SnapshotRequest>,
    ) -> Result<Response<Self::SnapshotStream>, Status> {
        timed(&self.context, "Snapshot", async {
            self.context.gate.authorize(&request, &Access::Root)?;
            let permit = self.transfer_permit()?;
            let receiver = snapshot_chunks(&self.context, permit).await?;
            Ok(Response::new(
                Box::pin(ReceiverStream::new(receiver)) as ChunkStream
            ))
        })
        .await
    }

    type ExportStateStream = ExportStream;

    async fn export_state(
        &self,
        request: Request<pb::ExportStateRequest>,
    ) -> Result<Response<Self::ExportStateStream>, Status> {
        timed(&self.context, "ExportState", async {
            self.context.gate.authorize(&request, &Access::Root)?;
            let permit = self.transfer_permit()?;
            Ok(Response::new(export::start(
                &self.context,
                Export::State,
                permit,
            )))
        })
        .await
    }

    type ExportHistoryStream = ExportStream;

    async fn export_history(
        &self,
        request: Request<pb::ExportHistoryRequest>,
    ) -> Result<Response<Self::ExportHistoryStream>, Status> {
        timed(&self.context, "ExportHistory", async {
            self.context.gate.authorize(&request, &Access::Root)?;
            let request = request.into_inner();
            if request.to_revision != 0 && request.to_revision < request.from_revision {
                return Err(Status::invalid_argument(format!(
                    "to_revision {} is before from_revision {}",
                    request.to_revision, request.from_revision
                )));
            }
            // Refused at once rather than mid-stream.
            let compacted = self
                .context
                .node
                .compacted()
                .map_err(|e| self.context.status(e))?;
            if request.from_revision != 0 && request.from_revision < compacted {
                return Err(ferry_client::compacted_status(
                    request.from_revision,
                    compacted,
                ));
            }
            let permit = self.transfer_permit()?;
            let what = Export::History {
                from: request.from_revision,
                to: request.to_revision,
            };
            Ok(Response::new(export::start(&self.context, what, permit)))
        })
        .await
    }

    async fn compact(
        &self,
        request: Request<pb::CompactRequest>,
    ) -> Result<Response<pb::CompactResponse>, Status> {
        timed(&self.context, "Compact", async {
            self.context.gate.authorize(&request, &Access::Root)?;
            let revision = request.into_inner().revision;
            let compacted = self
                .context
                .node
                .compact_history(revision)
                .await
                .map_err(|e| self.context.status(e))?;
            Ok(Response::new(pb::CompactResponse {
                header: self.context.header(self.applied()),
                compacted,
            }))
        })
        .await
    }

    async fn defragment(
        &self,
        request: Request<pb::DefragmentRequest>,
    ) -> Result<Response<pb::DefragmentResponse>, Status> {
        timed(&self.context, "Defragment", async {
            self.context.gate.authorize(&request, &Access::Root)?;
            self.context
                .node
                .compact_engine()
                .await
                .map_err(|e| self.context.status(e))?;
            Ok(Response::new(pb::DefragmentResponse {
                header: self.context.header(self.applied()),
            }))
        })
        .await
    }

    async fn status(
        &self,
        request: Request<pb::MaintenanceStatusRequest>,
    ) -> Result<Response<pb::MaintenanceStatusResponse>, Status> {
        timed(&self.context, "MaintenanceStatus", async {
            let caller = self.context.gate.authorize(&request, &Access::Any)?;
            let state = self.context.node.state().clone();
            let (engine, snapshots, log, keys) = tokio::task::spawn_blocking(move || {
                let data = state.data_dir();
                let engine = state.db();
                let statistics = engine.statistics();
                let fs = state.fs();
                (
                    fs.tree_bytes(engine.path()),
                    fs.tree_bytes(&data.join("snapshots")),
                    fs.tree_bytes(&data.join("raft")),
                    statistics.level_bytes.iter().sum::<u64>(),
                )
            })
            .await
            .map_err(|e| Status::internal(e.to_string()))?;
            Ok(Response::new(pb::MaintenanceStatusResponse {
                header: self.context.header(self.applied()),
                engine_bytes: engine,
                snapshot_bytes: snapshots,
                log_bytes: log,
                table_bytes: keys,
                // Where the data lives is for root only.
                data_dir: if caller.root {
                    self.context.node.state().data_dir().display().to_string()
                } else {
                    String::new()
                },
                compacted_revision: self
                    .context
                    .node
                    .compacted()
                    .map_err(|e| self.context.status(e))?,
                purge_pending: self
                    .context
                    .node
                    .state()
                    .purge_pending()
                    .map_err(|e| Status::internal(e.to_string()))?,
            }))
        })
        .await
    }
}
