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

/// How often a misaddressed peer is logged at most (per sender).
const MISADDRESSED_LOG_INTERVAL: std::time::Duration = std::time::Duration::from_secs(30);

/// When this node last heard from each peer (for stale-read reporting),
/// and the requests that reached it while meant for another node.
pub struct PeerContact {
    last: Mutex<std::collections::HashMap<NodeId, Instant>>,
    /// Peers' status pages, as their messages named them.
    status_urls: Mutex<std::collections::HashMap<NodeId, String>>,
    /// This node's status page (empty: none), sent with every message.
    own_status_url: Mutex<String>,
    misaddressed: Mutex<Misaddressed>,
    log: crate::log_limit::LogLimit,
}

impl Default for PeerContact {
    fn default() -> Self {
        PeerContact {
            last: Mutex::default(),
            status_urls: Mutex::default(),
            own_status_url: Mutex::default(),
            misaddressed: Mutex::default(),
            log: crate::log_limit::LogLimit::new(MISADDRESSED_LOG_INTERVAL),
        }
    }
}

/// Peer requests refused because they were meant for another node id: a
/// peer holds a wrong address for one of its peers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Misaddressed {
    pub count: u64,
    /// The last one: its sender and the id it was meant for.
    pub last_from: NodeId,
    pub last_to: NodeId,
}

impl PeerContact {
    fn touch(&self, from: NodeId) {
        self.last.lock().insert(from, Instant::now());
    }

    /// Refuses a request from `from` meant for node `to` unless `to` is
    /// `me` (or 0: a sender of an earlier release, which did not say).
    /// A refusal is counted and logged (rate-limited per sender).
    pub(crate) fn check_addressed(
        &self,
        me: NodeId,
        from: NodeId,
        to: NodeId,
    ) -> Result<(), String> {
        if to == 0 || to == me {
            return Ok(());
        }
        {
            let mut misaddressed = self.misaddressed.lock();
            misaddressed.count += 1;
            misaddressed.last_from = from;
            misaddressed.last_to = to;
        }
        let reason = format!(
            "a request from node {from} meant for node {to} reached node {me}: node {from} has a wrong address for node {to}"
        );
        if let Some(suppressed) = self.log.admit(&from.to_string()) {
            tracing::warn!(
                from,
                to,
                me,
                suppressed,
                "refused a misaddressed peer request: {reason}"
            );
        }
        Err(reason)
    }

    /// The misaddressed requests refused so far.
    pub fn misaddressed(&self) -> Misaddressed {
        *self.misaddressed.lock()
    }

    /// Sets the status page address this node sends to its peers.
    pub(crate) fn set_own_status_url(&self, url: String) {
        *self.own_status_url.lock() = url;
    }

    pub(crate) fn own_status_url(&self) -> String {
        self.own_status_url.lock().clone()
    }

    /// Records the status page `node` named, if it is a plain
    /// `http(s)://host:port` (it ends up as a link on a page: nothing else
    /// is kept).
    pub(crate) fn record_status_url(&self, node: NodeId, url: &str) {
        if url.is_empty() || node == 0 {
            return;
        }
        if !plain_url(url) {
            return;
        }
        let mut urls = self.status_urls.lock();
        if urls.get(&node).map(String::as_str) != Some(url) {
            urls.insert(node, url.to_owned());
        }
    }

    /// The status page `node` last named.
    pub fn status_url(&self, node: NodeId) -> Option<String> {
        self.status_urls.lock().get(&node).cloned()
    }

    /// When a message from `node` last arrived.
    pub fn last_from(&self, node: NodeId) -> Option<Instant> {
        self.last.lock().get(&node).copied()
    }
}

/// `http://` or `https://`, then a host (name, IPv4 or bracketed IPv6) and
/// a port, nothing else, at most 200 bytes.
fn plain_url(url: &str) -> bool {
    let Some(rest) = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))
    else {
        return false;
    };
    url.len() <= 200
        && !rest.is_empty()
        && rest
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b))
}

/// The node-to-node service.
#[derive(Clone)]
pub struct RaftService {
    pub(crate) id: NodeId,
    pub(crate) raft: Raft,
    /// The lease clock, for lease calls followers forward.
    pub(crate) leases: Arc<crate::lease::keeper::Keeper>,
    pub(crate) receiver: ReceiverContext,
    pub(crate) contact: Arc<PeerContact>,
}

impl RaftService {
    pub(crate) fn new(
        id: NodeId,
        raft: Raft,
        leases: Arc<crate::lease::keeper::Keeper>,
        sm: Arc<SmShared>,
        stats: Arc<TransferStats>,
        options: TransferOptions,
        contact: Arc<PeerContact>,
    ) -> Self {
        RaftService {
            receiver: ReceiverContext {
                id,
                contact: contact.clone(),
                raft: raft.clone(),
                sm,
                stats,
                options,
                staging: Default::default(),
            },
            id,
            raft,
            leases,
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
        self.contact
            .check_addressed(self.id, message.from, message.to)
            .map_err(Status::failed_precondition)?;
        self.contact.touch(message.from);
        self.contact
            .record_status_url(message.from, &message.status_url);
        let decoded: Req = postcard::from_bytes(&message.payload)
            .map_err(|e| Status::invalid_argument(format!("undecodable raft message: {e}")))?;
        let answer: Result<Resp, String> = call(self.raft.clone(), decoded)
            .await
            .map_err(|e| e.to_string());
        let payload = postcard::to_stdvec(&answer).map_err(|e| Status::internal(e.to_string()))?;
        Ok(Response::new(RaftMessage {
            from: 0,
            payload,
            to: 0,
            status_url: self.contact.own_status_url(),
        }))
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

    async fn forward(
        &self,
        request: Request<RaftMessage>,
    ) -> Result<Response<RaftMessage>, Status> {
        let leases = self.leases.clone();
        self.handle(request, |raft, forwarded| async move {
            let propose = |command| super::forward::propose(&raft, command);
            Ok::<_, std::convert::Infallible>(
                super::forward::serve(&leases, forwarded, &propose).await,
            )
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_status_addresses_are_kept() {
        let contact = PeerContact::default();
        for good in [
            "http://127.0.0.1:7402",
            "https://node-2.example:7402",
            "http://[::1]:80",
        ] {
            assert!(plain_url(good), "{good}");
        }
        for bad in [
            "",
            "javascript:alert(1)",
            "http://",
            "http://a/b",
            "http://a:1?x",
            "http://a\"onmouseover=x",
            "ftp://a:1",
            &format!("http://{}:1", "a".repeat(300)),
        ] {
            assert!(!plain_url(bad), "{bad}");
            contact.record_status_url(2, bad);
        }
        assert_eq!(contact.status_url(2), None);
        contact.record_status_url(2, "http://10.0.0.2:7402");
        assert_eq!(
            contact.status_url(2).as_deref(),
            Some("http://10.0.0.2:7402")
        );
        contact.record_status_url(0, "http://10.0.0.9:1");
        assert_eq!(contact.status_url(0), None, "a sender that gave no id");
    }
}
