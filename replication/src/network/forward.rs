//! Requests a follower hands to the leader on behalf of its clients
//! ([`crate::Node::txn_anywhere`], [`crate::Consistency::ReadIndex`]), so
//! that a client may send anything to any member, as etcd's clients do.
//!
//! The follower has already checked the caller's permissions (the auth
//! state is replicated, so it decides as the leader would), and the link
//! is the peers' own, mutually authenticated with peer TLS when that is
//! on: the leader trusts a forwarded request as it trusts an append.
//!
//! ## Format (version 1)
//!
//! `RaftMessage.payload` of a `Forward` call is `postcard(ForwardRequest)`;
//! the answer's is `postcard(Result<Result<ForwardReply, ForwardError>,
//! String>)` (the outer error is the transport's, as for every call). Each enum
//! only grows by appended variants; a leader that meets a variant it does
//! not know fails to decode it and answers INVALID_ARGUMENT, which the
//! follower reports.

use super::client::{NetworkFactory, PeerClient};
use crate::types::{Command, FerryNode, NodeId, Raft, Response};
use openraft::network::{RPCOption, RaftNetworkFactory};
use openraft::ReadPolicy;
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// Longest a forwarded request may take: a write waits for a quorum's
/// fsync, a read index for a quorum's heartbeat answer.
const FORWARD_DEADLINE: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum ForwardRequest {
    /// Propose the command (the follower stamped its time).
    Txn(Command),
    /// Confirm leadership with a quorum and name the index a read must see.
    ReadIndex,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum ForwardReply {
    /// The applied command's answer (a refusal is in `rejected`).
    Txn(Response),
    /// The log index the leader's state machine must have applied for a
    /// read to be linearizable.
    ReadIndex(u64),
}

/// Why the leader did not do a forwarded request.
#[derive(Debug, Clone, Serialize, Deserialize, thiserror::Error)]
pub enum ForwardError {
    /// The receiver is not (or no longer) the leader.
    #[error("member is not the leader (leader: {leader_id:?})")]
    NotLeader { leader_id: Option<NodeId> },
    #[error("{0}")]
    Failed(String),
}

fn not_leader(
    error: &impl openraft::TryAsRef<openraft::error::ForwardToLeader<crate::types::TypeConfig>>,
) -> Option<ForwardError> {
    error.try_as_ref().map(|f| ForwardError::NotLeader {
        leader_id: f.leader_id,
    })
}

/// The leader's side: does `request`.
pub(crate) async fn serve(
    raft: &Raft,
    request: ForwardRequest,
) -> Result<ForwardReply, ForwardError> {
    match request {
        ForwardRequest::Txn(command) => match raft.client_write(command).await {
            Ok(written) => Ok(ForwardReply::Txn(written.data)),
            Err(error) => Err(error
                .api_error()
                .and_then(not_leader)
                .unwrap_or_else(|| ForwardError::Failed(error.to_string()))),
        },
        ForwardRequest::ReadIndex => match raft.ensure_linearizable(ReadPolicy::ReadIndex).await {
            Ok(read) => Ok(ForwardReply::ReadIndex(read.index())),
            Err(error) => Err(error
                .api_error()
                .and_then(not_leader)
                .unwrap_or_else(|| ForwardError::Failed(error.to_string()))),
        },
    }
}

/// The follower's side: one connection per leader, kept while that
/// member leads at the same address.
pub(crate) struct Forwarder {
    factory: NetworkFactory,
    peers: parking_lot::Mutex<Option<(NodeId, String, PeerClient)>>,
}

impl Forwarder {
    pub(crate) fn new(factory: NetworkFactory) -> Forwarder {
        Forwarder {
            factory,
            peers: parking_lot::Mutex::new(None),
        }
    }

    /// Sends `request` to `leader` (at `node`).
    pub(crate) async fn send(
        &self,
        leader: NodeId,
        node: &FerryNode,
        request: &ForwardRequest,
    ) -> Result<ForwardReply, ForwardError> {
        let cached = match &*self.peers.lock() {
            Some((id, addr, peer)) if *id == leader && *addr == node.raft_addr => {
                Some(peer.clone())
            }
            _ => None,
        };
        let mut peer = match cached {
            Some(peer) => peer,
            None => {
                let peer = self.factory.clone().new_client(leader, node).await;
                *self.peers.lock() = Some((leader, node.raft_addr.clone(), peer.clone()));
                peer
            }
        };
        let answer: Result<Result<ForwardReply, ForwardError>, _> = peer
            .call(
                request,
                &RPCOption::new(FORWARD_DEADLINE),
                |mut c, m| async move { c.forward(m).await },
            )
            .await;
        match answer {
            Ok(answer) => answer,
            Err(error) => Err(ForwardError::Failed(format!(
                "forwarding to the leader {leader}: {error}"
            ))),
        }
    }
}
