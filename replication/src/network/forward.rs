//! Requests a follower hands to the leader on behalf of its clients
//! ([`crate::Node::txn_anywhere`], [`crate::Consistency::ReadIndex`]), so
//! that a client may send anything to any member, as etcd's clients do.
//! The same call also asks a member about itself
//! ([`ForwardRequest::ApplyVersion`], sent by a leader to its members and
//! to a member it is about to add).
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
use crate::lease::{LeaseError, LeaseStatus, RevokeAs};
use crate::types::{Command, FerryNode, NodeId, Raft, Response};
use openraft::network::{RPCOption, RaftNetworkFactory};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::oneshot;

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
    /// Several of the above (never a batch), done concurrently; answered
    /// in order. A follower sends what its clients asked while its
    /// previous batches were on their way in one message.
    Batch(Vec<ForwardRequest>),
    /// A client's revoke, checked at apply as its user
    /// ([`crate::lease::LeaseCommand::RevokeBy`]).
    LeaseRevokeBy {
        id: u64,
        user: Option<String>,
    },
    /// Which apply version the receiver implements (see
    /// [`crate::apply_version`]): answered by any member about itself,
    /// never forwarded.
    ApplyVersion,
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
    Batch(Vec<Result<ForwardReply, ForwardError>>),
    /// The highest apply version the answering member implements.
    ApplyVersion(u32),
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
    match raft.client_write(command.into()).await {
        Ok(written) => match written.data.rejected {
            Some(reason) => Err(crate::Error::Rejected(reason)),
            None => Ok(written.data),
        },
        Err(error) => Err(match crate::node::outcome_unknown(&error) {
            Some(unknown) => unknown,
            None => match error.forward_to_leader() {
                Some(forward) => crate::Error::NotLeader {
                    leader_id: forward.leader_id,
                    leader_addr: None,
                },
                None => crate::Error::Raft(error.to_string()),
            },
        }),
    }
}

/// The leader's side: does `request`, proposing commands with `propose`.
pub(crate) async fn serve<P, Fut>(
    leases: &Keeper,
    request: ForwardRequest,
    propose: &P,
) -> Result<ForwardReply, ForwardError>
where
    P: Fn(Command) -> Fut,
    Fut: std::future::Future<Output = crate::Result<Response>>,
{
    match request {
        ForwardRequest::Batch(requests) => {
            // Concurrently, so that the writes join one group commit.
            let answers = requests
                .into_iter()
                .map(|request| serve_one(leases, request, propose));
            Ok(ForwardReply::Batch(
                futures_util::future::join_all(answers).await,
            ))
        }
        one => serve_one(leases, one, propose).await,
    }
}

async fn serve_one<P, Fut>(
    leases: &Keeper,
    request: ForwardRequest,
    propose: &P,
) -> Result<ForwardReply, ForwardError>
where
    P: Fn(Command) -> Fut,
    Fut: std::future::Future<Output = crate::Result<Response>>,
{
    // The rarer calls are boxed, so that this future (one per call of a
    // batch, each allocated whole) is about the size of a proposal's.
    Ok(match request {
        ForwardRequest::Txn(command) => ForwardReply::Txn(propose(command).await?),
        ForwardRequest::ReadIndex => ForwardReply::ReadIndex(Box::pin(leases.read_index()).await?),
        ForwardRequest::LeaseGrant { id, ttl_ms } => ForwardReply::Lease(
            Box::pin(leases.grant(id, Duration::from_millis(ttl_ms), propose)).await?,
        ),
        ForwardRequest::LeaseRevoke { id } => {
            ForwardReply::Lease(Box::pin(leases.revoke(id, RevokeAs::Node, propose)).await?)
        }
        ForwardRequest::LeaseRevokeBy { id, user } => ForwardReply::Lease(
            Box::pin(leases.revoke(id, RevokeAs::Client { user }, propose)).await?,
        ),
        ForwardRequest::LeaseKeepAlive { id } => {
            ForwardReply::Lease(Box::pin(leases.keep_alive(id)).await?.as_millis() as u64)
        }
        ForwardRequest::LeaseStatus { id, key_limit } => ForwardReply::LeaseStatus(
            Box::pin(leases.status(id, usize::try_from(key_limit).unwrap_or(usize::MAX))).await?,
        ),
        ForwardRequest::ApplyVersion => {
            ForwardReply::ApplyVersion(leases.shared().implemented_apply_version())
        }
        ForwardRequest::Batch(_) => {
            return Err(ForwardError::Failed("a batch inside a batch".into()))
        }
    })
}

/// Asks `request` of member `id` (at `node`) itself, outside the
/// follower's batches: for the calls every member answers about itself.
pub(crate) async fn ask(
    factory: &NetworkFactory,
    id: NodeId,
    node: &FerryNode,
    request: &ForwardRequest,
) -> Result<ForwardReply, ForwardError> {
    let mut peer = factory.clone().new_client(id, node).await;
    call(&mut peer, id, request).await
}

/// One forward call to `to` over `peer`.
async fn call(
    peer: &mut PeerClient,
    to: NodeId,
    request: &ForwardRequest,
) -> Result<ForwardReply, ForwardError> {
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
            "forwarding to member {to}: {error}"
        ))),
    }
}

/// Batches a follower sends to the leader at once at most: more requests
/// wait to go in the next.
const MAX_IN_FLIGHT: usize = 4;
/// Requests in one batch at most (each at most `max_request_bytes`, so a
/// batch stays well under the peers' 256 MiB message limit).
const MAX_BATCH: usize = 32;

type Waiting = (
    ForwardRequest,
    oneshot::Sender<Result<ForwardReply, ForwardError>>,
);

/// The follower's side. Requests are queued and sent in batches: what
/// arrives while [`MAX_IN_FLIGHT`] batches are on their way goes in the
/// next, so a loaded follower sends one message for many client calls
/// (each a separate message cost about twice the CPU of a leader's own
/// call), and one call alone goes at once. A read index asked in a batch
/// sent after the read arrived is linearizable for it. One connection per
/// leader, kept while that member leads at the same address.
pub(crate) struct Forwarder {
    factory: NetworkFactory,
    peer: parking_lot::Mutex<Option<(NodeId, String, PeerClient)>>,
    queue: parking_lot::Mutex<Queue>,
}

#[derive(Default)]
struct Queue {
    /// By leader and its address: a batch goes to one.
    waiting: Vec<(NodeId, FerryNode, Waiting)>,
    senders: usize,
}

impl Forwarder {
    pub(crate) fn new(factory: NetworkFactory) -> Forwarder {
        Forwarder {
            factory,
            peer: parking_lot::Mutex::new(None),
            queue: parking_lot::Mutex::new(Queue::default()),
        }
    }

    /// How this member reaches its peers.
    pub(crate) fn factory(&self) -> &NetworkFactory {
        &self.factory
    }

    /// Sends `request` to `leader` (at `node`), in a batch.
    pub(crate) async fn send(
        self: &Arc<Self>,
        leader: NodeId,
        node: &FerryNode,
        request: ForwardRequest,
    ) -> Result<ForwardReply, ForwardError> {
        let (answer, answered) = oneshot::channel();
        let start = {
            let mut queue = self.queue.lock();
            queue
                .waiting
                .push((leader, node.clone(), (request, answer)));
            let start = queue.senders < MAX_IN_FLIGHT;
            if start {
                queue.senders += 1;
            }
            start
        };
        if start {
            tokio::spawn(self.clone().drain());
        }
        answered
            .await
            .unwrap_or_else(|_| Err(ForwardError::Failed("the forwarding task stopped".into())))
    }

    /// Sends batches until the queue is empty.
    async fn drain(self: Arc<Self>) {
        loop {
            let batch = {
                let mut queue = self.queue.lock();
                let Some((leader, node, _)) = queue.waiting.first() else {
                    queue.senders -= 1;
                    return;
                };
                let (leader, node) = (*leader, node.clone());
                let mut batch = Vec::new();
                let mut rest = Vec::new();
                for (to, at, waiting) in queue.waiting.drain(..) {
                    if batch.len() < MAX_BATCH && to == leader && at == node {
                        batch.push(waiting);
                    } else {
                        rest.push((to, at, waiting));
                    }
                }
                queue.waiting = rest;
                (leader, node, batch)
            };
            let (leader, node, mut batch) = batch;
            if batch.len() == 1 {
                let (request, answer) = batch.pop().expect("one");
                let _ = answer.send(self.call(leader, &node, &request).await);
                continue;
            }
            let (requests, answers): (Vec<_>, Vec<_>) = batch.into_iter().unzip();
            let count = requests.len();
            let error = match self
                .call(leader, &node, &ForwardRequest::Batch(requests))
                .await
            {
                Ok(ForwardReply::Batch(replies)) if replies.len() == count => {
                    for (answer, reply) in answers.into_iter().zip(replies) {
                        let _ = answer.send(reply);
                    }
                    continue;
                }
                Ok(other) => ForwardError::Failed(format!("the leader answered {other:?}")),
                Err(error) => error,
            };
            for answer in answers {
                let _ = answer.send(Err(error.clone()));
            }
        }
    }

    /// One call to `leader` (at `node`).
    async fn call(
        &self,
        leader: NodeId,
        node: &FerryNode,
        request: &ForwardRequest,
    ) -> Result<ForwardReply, ForwardError> {
        let cached = match &*self.peer.lock() {
            Some((id, addr, peer)) if *id == leader && *addr == node.raft_addr => {
                Some(peer.clone())
            }
            _ => None,
        };
        let mut peer = match cached {
            Some(peer) => peer,
            None => {
                let peer = self.factory.clone().new_client(leader, node).await;
                *self.peer.lock() = Some((leader, node.raft_addr.clone(), peer.clone()));
                peer
            }
        };
        call(&mut peer, leader, request).await
    }
}
