//! The sending side: openraft's `RaftNetworkV2` over gRPC.

use super::control::NetworkControl;
use super::pb::raft_transport_client::RaftTransportClient;
use super::pb::RaftMessage;
use super::TransferStats;
use crate::snapshot::transfer::{self, RateLimiter, TransferOptions};
use crate::snapshot::SnapshotHandle;
use crate::types::{FerryNode, NodeId, TypeConfig, Vote};
use futures_util::Stream;
use openraft::alias::SnapshotOf;
use openraft::base::{BoxFuture, BoxStream};
use openraft::error::{NetworkError, RPCError, ReplicationClosed, StreamingError, Unreachable};
use openraft::network::{RPCOption, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, TransferLeaderRequest,
    TransferLeaderResponse, VoteRequest, VoteResponse,
};
use openraft::RaftNetworkV2;
use serde::{de::DeserializeOwned, Serialize};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tonic::transport::{Channel, Endpoint};

/// Creates one [`PeerClient`] per target node.
#[derive(Clone)]
pub struct NetworkFactory {
    pub(crate) node_id: NodeId,
    pub(crate) control: NetworkControl,
    pub(crate) stats: Arc<TransferStats>,
    pub(crate) transfer: TransferOptions,
    pub(crate) limiter: Arc<RateLimiter>,
    /// Mutual TLS towards peers (`None`: plain TCP).
    pub(crate) tls: Option<crate::tls::PeerConnector>,
    /// Failures to reach a peer are logged once per peer per interval:
    /// heartbeats to a peer that is down fail every 50 ms.
    pub(crate) failures: Arc<crate::log_limit::LogLimit>,
    /// Status page addresses: this node's goes out, peers' come back.
    pub(crate) contact: Arc<super::server::PeerContact>,
}

/// How often a peer that keeps failing is logged.
const PEER_FAILURE_LOG_INTERVAL: Duration = Duration::from_secs(30);

/// The shortest deadline of one peer call. openraft gives appends the
/// heartbeat interval (50 ms) as their deadline, so a follower whose
/// fsync stalls for longer (a busy disk, a loaded machine) has every
/// append cancelled and resent, each larger than the last, while it still
/// does the work of the cancelled ones, and the leader backs off between
/// tries (seen in `ferry-bench failover --cpu-hogs 2` as bursts of append
/// timeouts to both followers; with this floor there were none). A dead
/// peer refuses the connection at once, so this bounds only how long a
/// hung one holds its own replication stream.
const MIN_PEER_CALL_DEADLINE: Duration = Duration::from_secs(1);

/// An error and its sources on one line: a TLS refusal is three levels
/// down a transport error.
fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

impl NetworkFactory {
    pub fn new(
        node_id: NodeId,
        control: NetworkControl,
        stats: Arc<TransferStats>,
        transfer: TransferOptions,
        tls: Option<crate::tls::PeerConnector>,
        contact: Arc<super::server::PeerContact>,
    ) -> Self {
        let limiter = Arc::new(RateLimiter::new(transfer.max_bytes_per_sec));
        NetworkFactory {
            node_id,
            control,
            stats,
            transfer,
            limiter,
            tls,
            failures: Arc::new(crate::log_limit::LogLimit::new(PEER_FAILURE_LOG_INTERVAL)),
            contact,
        }
    }
}

/// The connection to one peer.
#[derive(Clone)]
pub struct PeerClient {
    from: NodeId,
    target: NodeId,
    client: RaftTransportClient<Channel>,
    factory: NetworkFactory,
}

/// A lazily connecting channel to the peer at `addr`, over `tls` if given.
pub(crate) fn channel(
    addr: &str,
    tls: Option<&crate::tls::PeerConnector>,
) -> Result<Channel, tonic::transport::Error> {
    // With TLS the connector does the handshake; the URI stays `http` so
    // that tonic adds no TLS layer of its own.
    let endpoint = Endpoint::from_shared(format!("http://{addr}"))?
        .connect_timeout(Duration::from_secs(2))
        .tcp_nodelay(true)
        // Snapshot chunks are 1 MiB: HTTP/2's default 64 KiB windows would
        // make every chunk wait for many window updates.
        .initial_stream_window_size(Some(16 << 20))
        .initial_connection_window_size(Some(32 << 20))
        .http2_keep_alive_interval(Duration::from_secs(10))
        .keep_alive_timeout(Duration::from_secs(20));
    Ok(match tls {
        Some(connector) => endpoint.connect_with_connector_lazy(connector.clone()),
        None => endpoint.connect_lazy(),
    })
}

impl RaftNetworkFactory<TypeConfig> for NetworkFactory {
    type Network = PeerClient;

    async fn new_client(&mut self, target: NodeId, node: &FerryNode) -> PeerClient {
        // An unparsable address surfaces as Unreachable on each call.
        let channel = channel(&node.raft_addr, self.tls.as_ref())
            .unwrap_or_else(|_| Endpoint::from_static("http://0.0.0.0:1").connect_lazy());
        PeerClient {
            from: self.node_id,
            target,
            client: RaftTransportClient::new(channel)
                .max_decoding_message_size(256 << 20)
                .max_encoding_message_size(256 << 20),
            factory: self.clone(),
        }
    }
}

fn unreachable<E: std::error::Error + 'static>(error: &E) -> RPCError<TypeConfig> {
    RPCError::Unreachable(Unreachable::new(error))
}

impl PeerClient {
    /// One unary call: fault injection, postcard in and out, deadline.
    pub(crate) async fn call<Req, Resp, F, Fut>(
        &mut self,
        request: &Req,
        option: &RPCOption,
        send: F,
    ) -> Result<Resp, RPCError<TypeConfig>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        F: FnOnce(RaftTransportClient<Channel>, RaftMessage) -> Fut,
        Fut: Future<Output = Result<tonic::Response<RaftMessage>, tonic::Status>>,
    {
        let control = &self.factory.control;
        if control.is_cut(self.from, self.target) {
            return Err(RPCError::Unreachable(Unreachable::from_string(format!(
                "link {} -> {} is cut",
                self.from, self.target
            ))));
        }
        if let Some(delay) = control.delay_of(self.from, self.target) {
            tokio::time::sleep(delay).await;
        }
        let payload = postcard::to_stdvec(request).map_err(|e| unreachable(&e))?;
        let message = RaftMessage {
            from: self.from,
            payload,
            to: self.target,
            status_url: self.factory.contact.own_status_url(),
        };
        let deadline = option.hard_ttl().max(MIN_PEER_CALL_DEADLINE);
        let reply = tokio::time::timeout(deadline, send(self.client.clone(), message))
            .await
            .map_err(|e| RPCError::Network(NetworkError::new(&e)))?
            .map_err(|status| {
                let source = format!("peer {}", self.target);
                if let Some(suppressed) = self.factory.failures.admit(&source) {
                    tracing::warn!(
                        peer = self.target,
                        suppressed,
                        error = %chain(&status),
                        "cannot reach peer (logged once per {PEER_FAILURE_LOG_INTERVAL:?})"
                    );
                }
                unreachable(&status)
            })?
            .into_inner();
        if control.is_cut(self.target, self.from) {
            return Err(RPCError::Unreachable(Unreachable::from_string(format!(
                "link {} -> {} is cut (answer lost)",
                self.target, self.from
            ))));
        }
        self.factory
            .contact
            .record_status_url(self.target, &reply.status_url);
        let answer: Result<Resp, String> =
            postcard::from_bytes(&reply.payload).map_err(|e| unreachable(&e))?;
        answer.map_err(|remote| RPCError::Network(NetworkError::from_string(remote)))
    }
}

impl RaftNetworkV2<TypeConfig> for PeerClient {
    type SnapshotData = SnapshotHandle;

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.call(&rpc, &option, |mut c, m| async move {
            c.append_entries(m).await
        })
        .await
    }

    /// Entry-less appends overlap the next request (see `append_stream`).
    fn stream_append<'s, S>(
        &'s mut self,
        input: S,
        option: RPCOption,
    ) -> BoxFuture<'s, Result<BoxStream<'s, super::append_stream::Item>, RPCError<TypeConfig>>>
    where
        S: Stream<Item = AppendEntriesRequest<TypeConfig>> + Send + Unpin + 'static,
    {
        let peer = self.clone();
        let call = move |request| -> super::append_stream::Call {
            let mut peer = peer.clone();
            let option = option.clone();
            Box::pin(async move { peer.append_entries(request, option).await })
        };
        Box::pin(async move {
            let results: BoxStream<'s, super::append_stream::Item> =
                Box::pin(super::append_stream::stream(input, call));
            Ok(results)
        })
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.call(&rpc, &option, |mut c, m| async move { c.vote(m).await })
            .await
    }

    async fn pre_vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.call(&rpc, &option, |mut c, m| async move { c.pre_vote(m).await })
            .await
    }

    async fn transfer_leader(
        &mut self,
        req: TransferLeaderRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<TransferLeaderResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.call(&req, &option, |mut c, m| async move {
            c.transfer_leader(m).await
        })
        .await
    }

    async fn full_snapshot(
        &mut self,
        vote: Vote,
        snapshot: SnapshotOf<TypeConfig, SnapshotHandle>,
        cancel: impl Future<Output = ReplicationClosed> + Send + 'static,
        _option: RPCOption,
    ) -> Result<SnapshotResponse<TypeConfig>, StreamingError<TypeConfig>> {
        if self.factory.control.is_cut(self.from, self.target) {
            return Err(StreamingError::Unreachable(Unreachable::from_string(
                format!("link {} -> {} is cut", self.from, self.target),
            )));
        }
        // `install_snapshot_timeout` (the option's TTL) is not a bound on the
        // whole transfer: a large snapshot takes seconds. The transfer has
        // its own per-reply idle timeout instead.
        transfer::send(
            self.client.clone(),
            transfer::Link {
                from: self.from,
                to: self.target,
                control: self.factory.control.clone(),
            },
            vote,
            snapshot,
            cancel,
            &self.factory.transfer,
            &self.factory.limiter,
            &self.factory.stats,
        )
        .await
    }
}
