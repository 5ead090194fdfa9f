//! The public gRPC services over a [`Node`].
//!
//! Follower behaviour (documented in the `.proto`): writes and
//! linearizable reads sent to a follower are not forwarded; they fail with
//! FAILED_PRECONDITION carrying the leader's id and client address, and the
//! SDK retries on the leader. Stale reads and watches are served by any
//! member.

pub mod auth;
pub mod batch;
pub mod cluster;
pub mod export;
pub mod kv;
pub mod lease;
pub mod maintenance;
pub mod watch;

use crate::config::Limits;
use crate::metrics::Metrics;
use ferry_client::pb;
use ferry_replication::{Consistency, Error, Node};
use std::sync::Arc;
use tonic::Status;

/// What every service needs.
#[derive(Clone)]
pub struct Context {
    pub node: Arc<Node>,
    pub limits: Limits,
    pub metrics: Arc<Metrics>,
    /// Turns true when the server stops: long-lived streams (watches, batch
    /// streams) end then, or a graceful stop would wait for them forever.
    pub stopping: tokio::sync::watch::Receiver<bool>,
    /// Who calls, and whether they may: every RPC asks it first.
    pub gate: Arc<crate::auth::Gate>,
}

/// After the server starts stopping, a streaming client gets this long to
/// read what it is owed before its stream is dropped, so that a client that
/// stopped reading cannot hold up a graceful stop.
const STREAM_STOP_GRACE: std::time::Duration = std::time::Duration::from_secs(2);

impl Context {
    /// Resolves once the server is stopping.
    pub(crate) async fn stopped(&self) {
        let mut stopping = self.stopping.clone();
        let _ = stopping.wait_for(|s| *s).await;
    }

    /// Sends one message of a server stream; false if the stream is to end:
    /// the client is gone, or the server is stopping and the client has not
    /// read within [`STREAM_STOP_GRACE`].
    pub(crate) async fn send<T>(&self, sender: &tokio::sync::mpsc::Sender<T>, item: T) -> bool {
        tokio::select! {
            sent = sender.send(item) => sent.is_ok(),
            () = async {
                self.stopped().await;
                tokio::time::sleep(STREAM_STOP_GRACE).await;
            } => false,
        }
    }
}

impl Context {
    /// The index this node has applied.
    pub(crate) fn applied(&self) -> u64 {
        self.node
            .with_metrics(|m| m.last_applied.as_ref().map_or(0, |l| l.index))
    }

    pub(crate) fn header(&self, revision: u64) -> Option<pb::Header> {
        Some(pb::Header {
            revision,
            node_id: self.node.id(),
            leader_id: self.node.current_leader().unwrap_or(0),
        })
    }

    /// Maps a node error to the status the public API documents.
    pub(crate) fn status(&self, error: Error) -> Status {
        match error {
            Error::NotLeader { leader_id, .. } => {
                let leader_addr = leader_id.and_then(|id| {
                    self.node
                        .metrics()
                        .membership_config
                        .membership()
                        .get_node(&id)
                        .map(|n| n.client_addr.clone())
                        .filter(|a| !a.is_empty())
                });
                ferry_client::not_leader_status(leader_id, leader_addr.as_deref())
            }
            Error::Rejected(reason) if ferry_replication::lease::is_not_found(&reason) => {
                Status::not_found(reason)
            }
            // Auth kept changing under the write (see `Gate::write`); nothing
            // was written, so the SDK's retry is safe.
            Error::Rejected(reason) if ferry_replication::auth::is_stale_check(&reason) => {
                Status::unavailable(reason)
            }
            // Nothing was written: a call the client must make smaller or
            // later, never a conflict.
            Error::Rejected(reason) if ferry_replication::types::is_too_large(&reason) => {
                Status::resource_exhausted(reason)
            }
            Error::Rejected(reason) => Status::already_exists(reason),
            Error::Compacted(c) => ferry_client::compacted_status(c.requested, c.compacted),
            Error::FutureRevision { requested, current } => {
                ferry_client::future_revision_status(requested, current)
            }
            Error::Storage(e) => Status::internal(format!("storage: {e}")),
            Error::Tls(e) => Status::internal(format!("TLS: {e}")),
            error @ (Error::LearnerBehind { .. }
            | Error::NotVoter(_)
            | Error::ApplyVersionBehind { .. }) => Status::failed_precondition(error.to_string()),
            Error::Node(reason) | Error::Raft(reason) => Status::unavailable(reason),
        }
    }

    pub(crate) fn check_key(&self, key: &[u8]) -> Result<(), Status> {
        if key.is_empty() {
            return Err(Status::invalid_argument("the key is empty"));
        }
        if key.len() > self.limits.max_key_bytes {
            return Err(Status::invalid_argument(format!(
                "key of {} bytes exceeds max_key_bytes = {}",
                key.len(),
                self.limits.max_key_bytes
            )));
        }
        Ok(())
    }

    pub(crate) fn check_value(&self, value: &[u8]) -> Result<(), Status> {
        if value.len() > self.limits.max_value_bytes {
            return Err(Status::invalid_argument(format!(
                "value of {} bytes exceeds max_value_bytes = {}",
                value.len(),
                self.limits.max_value_bytes
            )));
        }
        Ok(())
    }
}

pub(crate) fn consistency(value: i32) -> Result<Consistency, Status> {
    match pb::Consistency::try_from(value) {
        Ok(pb::Consistency::Linearizable) => Ok(Consistency::Linearizable),
        Ok(pb::Consistency::Lease) => Ok(Consistency::Lease),
        Ok(pb::Consistency::Stale) => Ok(Consistency::Stale),
        Err(_) => Err(Status::invalid_argument(format!(
            "unknown consistency {value}"
        ))),
    }
}

pub(crate) fn staleness(s: Option<ferry_replication::Staleness>) -> Option<pb::Staleness> {
    s.map(|s| pb::Staleness {
        applied_index: s.applied_index,
        known_commit_index: s.known_commit_index,
        since_leader_contact_ms: s.since_leader_contact.map(|d| d.as_millis() as u64),
    })
}

pub(crate) fn key_value(kv: ferry_replication::types::KeyValue) -> pb::KeyValue {
    pb::KeyValue {
        key: kv.key,
        value: kv.value,
        create_revision: kv.create_revision,
        mod_revision: kv.mod_revision,
        version: kv.version,
        lease: kv.lease,
    }
}

/// Runs a handler under the request metrics.
///
/// Not an `async fn`: one would hold `handler` twice (as its argument, and
/// again as the future it awaits), and the handlers are the largest
/// futures of the write path.
pub(crate) fn timed<'a, T>(
    context: &'a Context,
    method: &'static str,
    handler: impl std::future::Future<Output = Result<T, Status>> + 'a,
) -> impl std::future::Future<Output = Result<T, Status>> + 'a {
    use futures_util::FutureExt;
    let timer = context.metrics.start(method);
    handler.map(move |result| {
        timer.finish(&result);
        result
    })
}
