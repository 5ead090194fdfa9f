//! The receiving side: the gRPC service that hands peers' messages to the
//! local Raft node.

use super::pb::raft_transport_server::RaftTransport;
use super::pb::{RaftMessage, SnapshotFrame, SnapshotReply};
use super::TransferStats;
use crate::snapshot::transfer::{self, ReceiverContext, TransferOptions};
use crate::state_machine::SmShared;
use crate::types::{NodeId, Raft};
use parking_lot::Mutex;
use serde::{de::DeserializeOwned, Serialize};
use std::fmt::Display;
use std::future::Future;
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

/// When this node last heard from each peer (for stale-read reporting).
#[derive(Default)]
pub struct PeerContact {
    last: Mutex<std::collections::HashMap<NodeId, Instant>>,
}

impl PeerContact {
    fn touch(&self, from: NodeId) {
        self.last.lock().insert(from, Instant::now());
    }

    /// When a message from `node` last arrived.
    pub fn last_from(&self, node: NodeId) -> Option<Instant> {
        self.last.lock().get(&node).copied()
    }
}

/// The node-to-node service.
#[derive(Clone)]
pub struct RaftService {
    pub(crate) raft: Raft,
    pub(crate) receiver: ReceiverContext,
    pub(crate) contact: Arc<PeerContact>,
}

impl RaftService {
    pub(crate) fn new(
        raft: Raft,
        sm: Arc<SmShared>,
        stats: Arc<TransferStats>,
        options: TransferOptions,
        contact: Arc<PeerContact>,
    ) -> Self {
        RaftService {
            receiver: ReceiverContext {
                raft: raft.clone(),
                sm,
                stats,
                options,
            },
            raft,
            contact,
        }
    }

    async fn handle<Req, Resp, E, F, Fut>(
        &self,
        request: Request<RaftMessage>,
        call: F,
    ) -> Result<Response<RaftMessage>, Status>
    where
        Req: DeserializeOwned,
        Resp: Serialize,
        E: Display,
        F: FnOnce(Raft, Req) -> Fut,
        Fut: Future<Output = Result<Resp, E>>,
    {
        let message = request.into_inner();
        self.contact.touch(message.from);
        let decoded: Req = postcard::from_bytes(&message.payload)
            .map_err(|e| Status::invalid_argument(format!("undecodable raft message: {e}")))?;
        let answer: Result<Resp, String> = call(self.raft.clone(), decoded)
            .await
            .map_err(|e| e.to_string());
        let payload = postcard::to_stdvec(&answer).map_err(|e| Status::internal(e.to_string()))?;
        Ok(Response::new(RaftMessage { from: 0, payload }))
    }
}

#[tonic::async_trait]
impl RaftTransport for RaftService {
    async fn append_entries(
        &self,
        request: Request<RaftMessage>,
    ) -> Result<Response<RaftMessage>, Status> {
        TransferStats::add(
            &self.receiver.stats.log_bytes_received,
            request.get_ref().payload.len() as u64,
        );
        self.handle(request, |raft, rpc| async move {
            raft.append_entries(rpc).await
        })
        .await
    }

    async fn vote(&self, request: Request<RaftMessage>) -> Result<Response<RaftMessage>, Status> {
        self.handle(request, |raft, rpc| async move { raft.vote(rpc).await })
            .await
    }

    async fn pre_vote(
        &self,
        request: Request<RaftMessage>,
    ) -> Result<Response<RaftMessage>, Status> {
        self.handle(request, |raft, rpc| async move { raft.pre_vote(rpc).await })
            .await
    }

    async fn transfer_leader(
        &self,
        request: Request<RaftMessage>,
    ) -> Result<Response<RaftMessage>, Status> {
        self.handle(request, |raft, rpc| async move {
            raft.handle_transfer_leader(rpc).await
        })
        .await
    }

    type InstallSnapshotStream = ReceiverStream<Result<SnapshotReply, Status>>;

    async fn install_snapshot(
        &self,
        request: Request<Streaming<SnapshotFrame>>,
    ) -> Result<Response<Self::InstallSnapshotStream>, Status> {
        let frames = request.into_inner();
        let (replies, stream) = mpsc::channel(4);
        // Answer at once and work in a task: the sender awaits this answer
        // while its frames are already queued.
        tokio::spawn(transfer::receive(self.receiver.clone(), frames, replies));
        Ok(Response::new(ReceiverStream::new(stream)))
    }
}
