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
use crate::lease::keeper::{Keeper, LeaseCall};
use crate::lease::{LeaseError, LeaseStatus};
use crate::types::{Command, FerryNode, NodeId, Raft, Response};
use openraft::network::{RPCOption, RaftNetworkFactory};
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
    /// The lease calls, which only the leader's lease clock can answer.
    LeaseGrant {
        id: u64,
        ttl_ms: u64,
    },
    LeaseRevoke {
        id: u64,
    },
    LeaseKeepAlive {
        id: u64,
    },
    LeaseStatus {
        id: u64,
        key_limit: u64,
    },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum ForwardReply {
    /// The applied command's answer.
    Txn(Response),
    /// The log index the leader's state machine must have applied for a
    /// read to be linearizable.
    ReadIndex(u64),
    /// A lease call's number: the granted id, the revoke's revision, or the
    /// renewed TTL in milliseconds.
    Lease(u64),
    LeaseStatus(LeaseStatus),
}

/// Why the leader did not do a forwarded request.
#[derive(Debug, Clone, Serialize, Deserialize, thiserror::Error)]
pub enum ForwardError {
    /// The receiver is not (or no longer) the leader.
    #[error("member is not the leader (leader: {leader_id:?})")]
    NotLeader { leader_id: Option<NodeId> },
    #[error("{0}")]
    Failed(String),
    #[error(transparent)]
    Lease(#[from] LeaseError),
    /// The state machine refused the command without effect.
    #[error("{0}")]
    Rejected(String),
}

impl From<crate::Error> for ForwardError {
    fn from(error: crate::Error) -> ForwardError {
        match error {
            crate::Error::NotLeader { leader_id, .. } => ForwardError::NotLeader { leader_id },
            crate::Error::Rejected(reason) => ForwardError::Rejected(reason),
            other => ForwardError::Failed(other.to_string()),
        }
    }
}

impl From<LeaseCall> for ForwardError {
    fn from(error: LeaseCall) -> ForwardError {
        match error {
            LeaseCall::Lease(error) => ForwardError::Lease(error),
            LeaseCall::Node(error) => error.into(),
        }
    }
}

/// Proposes `command` on this (leading) node's Raft, as the remote side
/// of a forwarded call does: a refusal is an error, as from `Node::txn`.
pub(crate) async fn propose(raft: &Raft, command: Command) -> crate::Result<Response> {
    match raft.client_write(command).await {
        Ok(written) => match written.data.rejected {
            Some(reason) => Err(crate::Error::Rejected(reason)),
            None => Ok(written.data),
        },
        Err(error) => Err(match error.forward_to_leader() {
            Some(forward) => crate::Error::NotLeader {
                leader_id: forward.leader_id,
                leader_addr: None,
            },
            None => crate::Error::Raft(error.to_string()),
        }),
    }
}

/// The leader's side: does `request`, proposing commands with `propose`.
pub(crate) async fn serve<F, Fut>(
    leases: &Keeper,
    request: ForwardRequest,
    propose: F,
) -> Result<ForwardReply, ForwardError>
where
    F: FnOnce(Command) -> Fut,
    Fut: std::future::Future<Output = crate::Result<Response>>,
{
    Ok(match request {
        ForwardRequest::Txn(command) => ForwardReply::Txn(propose(command).await?),
        ForwardRequest::ReadIndex => ForwardReply::ReadIndex(leases.read_index().await?),
        ForwardRequest::LeaseGrant { id, ttl_ms } => ForwardReply::Lease(
            leases
                .grant(id, Duration::from_millis(ttl_ms), propose)
                .await?,
        ),
        ForwardRequest::LeaseRevoke { id } => {
            ForwardReply::Lease(leases.revoke(id, propose).await?)
        }
        ForwardRequest::LeaseKeepAlive { id } => {
            ForwardReply::Lease(leases.keep_alive(id).await?.as_millis() as u64)
        }
        ForwardRequest::LeaseStatus { id, key_limit } => ForwardReply::LeaseStatus(
            leases
                .status(id, usize::try_from(key_limit).unwrap_or(usize::MAX))
                .await?,
        ),
    })
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
