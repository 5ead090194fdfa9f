//! [`Node`]: one member of a replicated Ferry cluster, embeddable in a
//! process (the server wraps it in a public API).
//!
//! Active-passive: the leader takes writes and linearizable reads, the
//! followers are hot standbys that apply the same log and take over within
//! an election timeout.

use crate::error::{Error, Result};
use crate::lease::keeper::LeaseCall;
use crate::lease::{LeaseStatus, RevokeAs};
use crate::log_store::{LogReader, LogStats, LogStatsSnapshot, LogStore, LogStoreOptions};
use crate::network::forward::{ForwardError, ForwardReply, ForwardRequest, Forwarder};
use crate::network::pb::raft_transport_server::RaftTransportServer;
use crate::network::server::PeerContact;
use crate::network::{NetworkControl, NetworkFactory, RaftService, TransferStats};
use crate::retention::RetentionOptions;
use crate::snapshot::transfer::TransferOptions;
use crate::state_machine::history::{self, Compacted};
use crate::state_machine::{self, keys, SmShared, StateMachine};
use crate::types::{
    Command, Compare, CompareOp, CompareTarget, FerryNode, KeyValue, LogId, NodeId, Op, Raft,
    Response, Txn,
};
use crate::watch::{WatchError, WatchOptions, Watcher};
use openraft::async_runtime::WatchReceiver;
use openraft::error::{ClientWriteError, ForwardReason, RaftError};
use openraft::storage::RaftLogStorage;
use openraft::{ChangeMembers, Config, RaftMetrics, ReadPolicy, ServerState, SnapshotPolicy};
use parking_lot::Mutex;
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::oneshot;
// tonic's own `tcp_nodelay` applies only to listeners it binds; ours
// are bound first (to learn the port), so each accepted stream sets it:
// with Nagle on, a reply's trailing frames wait for the client's delayed
// ACK (40 ms on Linux).
use tonic::transport::server::TcpIncoming;

/// Raft timing and log retention.
#[derive(Debug, Clone)]
pub struct RaftOptions {
    pub heartbeat_interval: Duration,
    pub election_timeout_min: Duration,
    pub election_timeout_max: Duration,
    /// Build a snapshot after this many applied entries since the last.
    pub snapshot_after_entries: u64,
    /// Entries kept in the log behind a snapshot, so that a follower that
    /// installed a large snapshot can catch up from the log afterwards.
    pub keep_after_snapshot: u64,
    /// Bound on one RPC (append, vote); snapshot transfers use
    /// [`TransferOptions::idle_timeout`] instead.
    pub rpc_timeout: Duration,
}

impl Default for RaftOptions {
    fn default() -> Self {
        RaftOptions {
            // openraft's leader lease equals the election timeout maximum,
            // and followers refuse votes while it runs; `election` then
            // campaigns as soon as it has run out, so a dead leader is
            // replaced in about one maximum plus tens of milliseconds
            // (`ferry-bench failover`: p99 ≈ 410 ms). Heartbeats every
            // 50 ms leave room for fsync stalls before a follower gives up
            // on a leader.
            heartbeat_interval: Duration::from_millis(50),
            election_timeout_min: Duration::from_millis(150),
            election_timeout_max: Duration::from_millis(300),
            snapshot_after_entries: 100_000,
            keep_after_snapshot: 200_000,
            rpc_timeout: Duration::from_secs(5),
        }
    }
}

/// How to open a [`Node`].
#[derive(Clone)]
pub struct NodeConfig {
    pub id: NodeId,
    pub data_dir: PathBuf,
    /// Where the node-to-node service listens (port 0 picks a free port).
    pub listen_addr: SocketAddr,
    /// The address peers use to reach this node; by default the bound address.
    pub advertise_addr: Option<String>,
    pub raft: RaftOptions,
    pub transfer: TransferOptions,
    pub engine: ferry_engine::Options,
    pub log: LogStoreOptions,
    /// How much revision history the cluster keeps (applied by the leader).
    pub retention: RetentionOptions,
    /// Fault injection hook for tests; healthy by default.
    pub network: NetworkControl,
    /// Mutual TLS on the peer port and towards peers (`None`: plain TCP,
    /// for a network where every host that can reach the port is trusted).
    pub peer_tls: Option<crate::tls::PeerTls>,
    /// Lease limits and timing (see [`crate::lease`]).
    pub lease: crate::lease::LeaseOptions,
    /// The apply versions this member implements (see
    /// [`crate::apply_version`]); only tests change the default.
    pub apply_version: crate::apply_version::ApplyVersionOptions,
}

impl NodeConfig {
    /// Defaults for node `id` keeping its data in `data_dir` and listening
    /// for peers on `listen_addr`.
    pub fn new(id: NodeId, data_dir: impl Into<PathBuf>, listen_addr: SocketAddr) -> Self {
        NodeConfig {
            id,
            data_dir: data_dir.into(),
            listen_addr,
            advertise_addr: None,
            raft: RaftOptions::default(),
            transfer: TransferOptions::default(),
            engine: ferry_engine::Options::default(),
            log: LogStoreOptions::default(),
            retention: RetentionOptions::default(),
            network: NetworkControl::default(),
            peer_tls: None,
            lease: crate::lease::LeaseOptions::default(),
            apply_version: Default::default(),
        }
    }

    fn openraft_config(&self) -> Result<Config> {
        let ms = |d: Duration| d.as_millis() as u64;
        let config = Config {
            cluster_name: "ferry".into(),
            heartbeat_interval: ms(self.raft.heartbeat_interval),
            election_timeout_min: ms(self.raft.election_timeout_min),
            election_timeout_max: ms(self.raft.election_timeout_max),
            // Bounds a single append or vote; snapshot transfers are
            // governed by the transfer's idle timeout instead.
            install_snapshot_timeout: ms(self.raft.rpc_timeout),
            snapshot_policy: SnapshotPolicy::LogsSinceLast(self.raft.snapshot_after_entries),
            max_in_snapshot_log_to_keep: self.raft.keep_after_snapshot,
            purge_batch_size: 1024,
            replication_lag_threshold: self.raft.keep_after_snapshot.max(1000),
            enable_pre_vote: Some(true),
            ..Config::default()
        };
        config
            .validate()
            .map_err(|e| Error::Node(format!("raft configuration: {e}")))
    }
}

/// How fresh a read must be.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Consistency {
    /// Confirmed with a quorum (read index) before reading: never stale.
    #[default]
    Linearizable,
    /// Served by the leader under its lease, without a quorum round.
    Lease,
    /// Served by this replica as it is; see [`Staleness`].
    Stale,
    /// Linearizable on any member, as etcd's reads are: a follower asks
    /// the leader for its read index (the leader confirms leadership with
    /// a quorum) and serves the read once it has applied up to it.
    ReadIndex,
}

/// How far a stale read may be behind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Staleness {
    /// The log index this replica has applied.
    pub applied_index: u64,
    /// The highest commit index this replica knows of.
    pub known_commit_index: u64,
    /// Time since this replica last heard from the leader (None on the
    /// leader, or if it never heard from one).
    pub since_leader_contact: Option<Duration>,
}

/// A read result with the revision it was served at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Read<T> {
    pub value: T,
    /// The applied log index the read observed.
    pub revision: u64,
    /// Present for [`Consistency::Stale`] reads.
    pub staleness: Option<Staleness>,
}

/// Result of [`Node::compare_and_swap`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CasOutcome {
    pub swapped: bool,
    pub revision: u64,
    /// The value found when the swap did not happen.
    pub current: Option<Vec<u8>>,
}

/// See [`Node::leadership_watch`].
///
/// It follows openraft's server metrics, which change with the vote, the
/// leader and the membership only, and its data metrics (the applied
/// entry) only when asked: openraft publishes its full metrics at every
/// turn of its loop, several times per write, and a watcher of those would
/// wake and copy them (membership and per-peer maps) that often.
pub struct LeadershipWatch {
    server: openraft::alias::WatchReceiverOf<
        crate::types::TypeConfig,
        openraft::metrics::RaftServerMetrics<crate::types::TypeConfig>,
    >,
    data: openraft::alias::WatchReceiverOf<
        crate::types::TypeConfig,
        openraft::metrics::RaftDataMetrics<crate::types::TypeConfig>,
    >,
}

/// Who leads, as one node knows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Leadership {
    /// The leader, once this node's vote for it is on disk.
    pub leader: Option<NodeId>,
    /// The term of the node's vote on disk (the leader's term, once known).
    pub term: u64,
    /// The term of the last entry the node applied.
    pub applied_term: Option<u64>,
}

impl LeadershipWatch {
    /// The leadership now, marked as seen.
    pub fn current(&mut self) -> Leadership {
        let (leader, term) = {
            let m = self.server.borrow_and_update();
            let voted = m.vote.leader_id();
            // `current_leader` comes from the vote in memory, `vote` is the
            // one on disk: a leader is named once its term is known with it.
            let leader = m
                .current_leader
                .filter(|&l| m.vote.is_committed() && voted.node_id == l);
            (leader, voted.term)
        };
        let applied_term = self
            .data
            .borrow_and_update()
            .last_applied
            .map(|l| l.leader_id.term);
        Leadership {
            leader,
            term,
            applied_term,
        }
    }

    /// Waits until the leader or the term changes, or, with `applied`,
    /// also until the node applies an entry. False once the node has
    /// stopped.
    pub async fn changed(&mut self, applied: bool) -> bool {
        if applied {
            tokio::select! {
                changed = self.server.changed() => changed.is_ok(),
                changed = self.data.changed() => changed.is_ok(),
            }
        } else {
            self.server.changed().await.is_ok()
        }
    }
}

/// How far a follower is behind, as the leader sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FollowerProgress {
    pub id: NodeId,
    /// Highest log index known to be replicated to it.
    pub matched_index: Option<u64>,
    /// Entries it lacks of the leader's log.
    pub lag_entries: u64,
    /// Time since it last acknowledged the leader.
    pub since_ack: Option<Duration>,
}

/// A read's consistent view. The engine handle is kept so that a snapshot
/// install cannot close the engine under the read.
struct View {
    _db: Arc<ferry_engine::Db>,
    snapshot: ferry_engine::Snapshot,
    revision: u64,
    staleness: Option<Staleness>,
}

/// A running cluster member.
pub struct Node {
    id: NodeId,
    raft: Raft,
    sm: Arc<SmShared>,
    log_stats: Arc<LogStats>,
    log_reader: LogReader,
    raft_addr: String,
    stats: Arc<TransferStats>,
    contact: Arc<PeerContact>,
    /// How long a fresh leader's writes wait for its lease.
    lease_wait: Duration,
    /// Hands follower requests to the leader ([`Node::txn_anywhere`]).
    forwarder: Arc<Forwarder>,
    stop_server: Mutex<Option<oneshot::Sender<()>>>,
    server: Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// The leader's history retention (see [`crate::retention`]), and its
    /// wake-up after a compaction.
    retention: tokio::task::JoinHandle<()>,
    purger_wake: Arc<tokio::sync::Notify>,
    /// The leader's lease clock, and its expiry task.
    leases: Arc<crate::lease::keeper::Keeper>,
    lease_task: tokio::task::JoinHandle<()>,
    /// Campaigns once a silent leader's lease has run out ([`crate::election`]).
    election_task: tokio::task::JoinHandle<()>,
    /// Raises the cluster's apply version as leader ([`crate::apply_version`]).
    apply_version_task: tokio::task::JoinHandle<()>,
}

/// Prefix of the [`Error::Raft`] of a write whose entry this leader
/// appended and then discarded (a new leader's log replaced it, or a
/// snapshot covered it): it may have committed, or may still.
pub const OUTCOME_UNKNOWN: &str = "the write's outcome is unknown";

/// Whether a node error is a write of unknown outcome ([`OUTCOME_UNKNOWN`]).
pub fn is_outcome_unknown(error: &Error) -> bool {
    // Forwarded from the leader, it arrives with a prefix of its own.
    matches!(error, Error::Raft(reason) if reason.contains(OUTCOME_UNKNOWN))
}

/// A client write's failure that leaves its outcome unknown, as a node
/// error; `None` for the others (refused before anything was appended).
pub(crate) fn outcome_unknown(
    error: &RaftError<crate::types::TypeConfig, ClientWriteError<crate::types::TypeConfig>>,
) -> Option<Error> {
    match error.api_error() {
        Some(ClientWriteError::LogEntryDiscarded(_)) => Some(Error::Raft(format!(
            "{OUTCOME_UNKNOWN}: its entry was appended, then discarded by a change of leader; \
             it may still commit"
        ))),
        _ => None,
    }
}

/// A forwarded call's failure as a node error.
fn forward_error(error: ForwardError) -> Error {
    match error {
        ForwardError::NotLeader { leader_id } => Error::NotLeader {
            leader_id,
            leader_addr: None,
        },
        ForwardError::Lease(error) => Error::Node(error.to_string()),
        ForwardError::Rejected(reason) => Error::Rejected(reason),
        ForwardError::Failed(reason) => Error::Raft(reason),
    }
}

impl From<ForwardError> for LeaseCall {
    fn from(error: ForwardError) -> LeaseCall {
        match error {
            ForwardError::Lease(error) => LeaseCall::Lease(error),
            other => LeaseCall::Node(forward_error(other)),
        }
    }
}

/// A leader's answer of another kind than asked: a bug, or a leader of a
/// release that answers differently.
fn unexpected(reply: ForwardReply) -> Error {
    Error::Node(format!("the leader answered {reply:?}"))
}

fn raft_error<
    E: std::fmt::Debug
        + std::fmt::Display
        + openraft::TryAsRef<openraft::error::ForwardToLeader<crate::types::TypeConfig>>,
>(
    error: RaftError<crate::types::TypeConfig, E>,
) -> Error {
    if let Some(forward) = error.forward_to_leader() {
        return Error::NotLeader {
            leader_id: forward.leader_id,
            leader_addr: forward.leader_node.as_ref().map(|n| n.raft_addr.clone()),
        };
    }
    Error::Raft(error.to_string())
}

/// How much one range read returns at most: `keys` keys, or as many as
/// reach `bytes` of keys and values (at least one, however large).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageLimit {
    pub keys: usize,
    pub bytes: usize,
}

impl From<usize> for PageLimit {
    /// A bound in keys alone.
    fn from(keys: usize) -> PageLimit {
        PageLimit {
            keys,
            bytes: usize::MAX,
        }
    }
}

impl Node {
    /// Opens the node's storage, starts its peer service and joins Raft.
    /// A node with data rejoins its cluster; a new cluster needs
    /// [`Node::initialize`] on one node.
    pub async fn open(config: NodeConfig) -> Result<Node> {
        let listener = tokio::net::TcpListener::bind(config.listen_addr)
            .await
            .map_err(|e| Error::Node(format!("binding {}: {e}", config.listen_addr)))?;
        let bound = listener.local_addr()?;
        let raft_addr = config
            .advertise_addr
            .clone()
            .unwrap_or_else(|| bound.to_string());
        let raft_config = Arc::new(config.openraft_config()?);
        // One file system for everything the node writes: the engine's
        // (`config.engine.fs`), so a fault-injecting one covers it all.
        let fs = config.engine.fs.clone();
        fs.create_dir_all(&config.data_dir)?;
        let mut log =
            LogStore::open_with_fs(fs, &config.data_dir.join("raft"), config.log.clone())?;
        let log_stats = log.stats();
        let log_reader = log.get_log_reader().await;
        let sm = StateMachine::open_implementing(
            &config.data_dir,
            config.engine.clone(),
            config.apply_version.implemented,
        )?;
        let shared = sm.shared();
        let stats = Arc::new(TransferStats::default());
        let tls = match &config.peer_tls {
            Some(tls) => Some((
                tls.connector()?,
                tls.server().reloading()?,
                tls.allowed_cn.clone(),
            )),
            None => None,
        };
        let contact = Arc::new(PeerContact::default());
        let network = NetworkFactory::new(
            config.id,
            config.network.clone(),
            stats.clone(),
            config.transfer.clone(),
            tls.as_ref().map(|(connector, _, _)| connector.clone()),
            contact.clone(),
        );
        let forwarder = Arc::new(Forwarder::new(network.clone()));
        let raft = Raft::new(config.id, raft_config, network, log, sm)
            .await
            .map_err(|e| Error::Raft(e.to_string()))?;
        let leases = Arc::new(crate::lease::keeper::Keeper::new(
            raft.clone(),
            shared.clone(),
            config.lease.clone(),
        ));
        let service = RaftService::new(
            config.id,
            raft.clone(),
            leases.clone(),
            shared.clone(),
            stats.clone(),
            config.transfer.clone(),
            contact.clone(),
        );
        let (stop_server, stopped) = oneshot::channel::<()>();
        let server = tokio::spawn(async move {
            let router = tonic::transport::Server::builder()
                .tcp_nodelay(true)
                .initial_stream_window_size(Some(16 << 20))
                .initial_connection_window_size(Some(32 << 20))
                .add_service(
                    RaftTransportServer::new(service)
                        .max_decoding_message_size(256 << 20)
                        .max_encoding_message_size(256 << 20),
                );
            let stopped = async {
                let _ = stopped.await;
            };
            let result = match tls {
                Some((_, config, allowed_cn)) => {
                    let incoming = crate::tls::incoming(listener, config, allowed_cn, "peer");
                    router.serve_with_incoming_shutdown(incoming, stopped).await
                }
                None => {
                    let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
                    router.serve_with_incoming_shutdown(incoming, stopped).await
                }
            };
            if let Err(error) = result {
                tracing::error!(%error, "raft peer service stopped");
            }
        });
        let purger_wake = Arc::new(tokio::sync::Notify::new());
        let retention = tokio::spawn(crate::retention::run(
            raft.clone(),
            shared.clone(),
            config.retention.clone(),
            purger_wake.clone(),
        ));
        let lease_task = tokio::spawn(crate::lease::keeper::run(leases.clone()));
        let election_task = tokio::spawn(crate::election::run(
            raft.clone(),
            config.id,
            contact.clone(),
            crate::election::Prompt::for_timeouts(
                config.raft.heartbeat_interval,
                config.raft.election_timeout_max,
            ),
        ));
        let apply_version_task = tokio::spawn(crate::apply_version::run(
            raft.clone(),
            shared.clone(),
            forwarder.factory().clone(),
            config.id,
            config.apply_version.check_interval,
        ));
        Ok(Node {
            id: config.id,
            raft,
            sm: shared,
            log_stats,
            log_reader,
            raft_addr,
            stats,
            contact,
            lease_wait: config.raft.election_timeout_max,
            forwarder,
            stop_server: Mutex::new(Some(stop_server)),
            server: Mutex::new(Some(server)),
            retention,
            purger_wake,
            leases,
            lease_task,
            election_task,
            apply_version_task,
        })
    }

    pub fn id(&self) -> NodeId {
        self.id
    }

    /// The address peers reach this node at.
    pub fn raft_addr(&self) -> &str {
        &self.raft_addr
    }

    /// The state machine's shared state (engine, change feed, snapshots).
    pub fn state(&self) -> &Arc<SmShared> {
        &self.sm
    }

    /// Who leads, as it changes, for watchers outside this crate (which do
    /// not name openraft's runtime traits).
    pub fn leadership_watch(&self) -> LeadershipWatch {
        LeadershipWatch {
            server: self.raft.server_metrics(),
            data: self.raft.data_metrics(),
        }
    }

    /// When this node last heard from `peer`.
    /// Peer requests this node refused because they were meant for
    /// another node id (a peer has a wrong address for a member).
    pub fn misaddressed(&self) -> crate::network::server::Misaddressed {
        self.contact.misaddressed()
    }

    /// Sets the address of this node's status page, which its Raft
    /// messages carry to its peers (`http://host:port`).
    pub fn set_status_url(&self, url: String) {
        self.contact.set_own_status_url(url);
    }

    /// The status page of `peer` (this node's own for its id), as its
    /// messages named it; `None` until one arrived.
    pub fn status_url(&self, peer: NodeId) -> Option<String> {
        if peer == self.id {
            let own = self.contact.own_status_url();
            return (!own.is_empty()).then_some(own);
        }
        self.contact.status_url(peer)
    }

    pub fn last_contact(&self, peer: NodeId) -> Option<Instant> {
        self.contact.last_from(peer)
    }

    /// The openraft handle, for what this API does not cover.
    pub fn raft(&self) -> &Raft {
        &self.raft
    }

    /// fsync counters of this node's Raft log.
    /// A reader of this node's Raft log.
    pub fn log_reader(&self) -> &LogReader {
        &self.log_reader
    }

    pub fn log_stats(&self) -> LogStatsSnapshot {
        self.log_stats.snapshot()
    }

    /// Counters of snapshot transfers sent and received by this node.
    pub fn transfer_stats(&self) -> &TransferStats {
        &self.stats
    }

    /// Forms a new cluster of `members` (id → peer address, or a
    /// [`FerryNode`] with the client address too). Call it once,
    /// on one node; the others learn of it by replication.
    pub async fn initialize<N: Into<FerryNode>>(&self, members: BTreeMap<NodeId, N>) -> Result<()> {
        let members: BTreeMap<NodeId, FerryNode> = members
            .into_iter()
            .map(|(id, node)| (id, node.into()))
            .collect();
        self.raft
            .initialize(members)
            .await
            .map_err(|e| Error::Raft(e.to_string()))
    }

    /// Current Raft metrics (role, term, log and apply positions, leader).
    pub fn metrics(&self) -> RaftMetrics<crate::types::TypeConfig> {
        self.raft.metrics().borrow_watched().clone()
    }

    /// `read` of the current metrics, without copying them (a copy holds
    /// the membership and per-peer maps: a cost on every response that
    /// needs only the term).
    pub fn with_metrics<R>(
        &self,
        read: impl FnOnce(&RaftMetrics<crate::types::TypeConfig>) -> R,
    ) -> R {
        read(&self.raft.metrics().borrow_watched())
    }

    /// Replication progress of every other member; empty unless this node leads.
    pub fn followers(&self) -> Vec<FollowerProgress> {
        let metrics = self.metrics();
        let last = metrics.last_log_index.unwrap_or(0);
        let Some(replication) = &metrics.replication else {
            return Vec::new();
        };
        replication
            .iter()
            .filter(|(id, _)| **id != self.id)
            .map(|(id, matched)| {
                let since_ack = since_ack(&metrics, *id);
                let matched_index = matched.map(|l| l.index);
                FollowerProgress {
                    id: *id,
                    matched_index,
                    lag_entries: last.saturating_sub(matched_index.unwrap_or(0)),
                    since_ack,
                }
            })
            .collect()
    }

    /// The leader as this node knows it, with its addresses.
    pub fn leader(&self) -> Option<(NodeId, FerryNode)> {
        // In place: every call a follower forwards asks this.
        self.with_metrics(|metrics| {
            let leader = metrics.current_leader?;
            let node = metrics
                .membership_config
                .membership()
                .get_node(&leader)
                .cloned()
                .unwrap_or_default();
            Some((leader, node))
        })
    }

    pub fn is_leader(&self) -> bool {
        self.raft.metrics().borrow_watched().state == ServerState::Leader
    }

    /// The leader's id as this node knows it (without copying the metrics,
    /// for per-request use).
    pub fn current_leader(&self) -> Option<NodeId> {
        self.raft.metrics().borrow_watched().current_leader
    }

    /// Runs a transaction through Raft and returns the state machine's answer.
    ///
    /// A leader that was just elected accepts writes only once a quorum has
    /// acknowledged it (its lease); until then openraft refuses the write
    /// before proposing it, and this call waits and retries on this node.
    pub async fn txn(&self, mut command: Command) -> Result<Response> {
        command.stamp(crate::types::now_ms());
        let command = Arc::new(command);
        let deadline = Instant::now() + self.lease_wait;
        let response = loop {
            match self.raft.client_write(command.clone()).await {
                Ok(written) => break written.data,
                Err(error) => {
                    // Appended, then dropped from this log: it may still
                    // commit through another leader. Proposed again, it
                    // could apply twice; the caller must decide (the SDK
                    // retries with its request id, which dedups).
                    if let Some(unknown) = outcome_unknown(&error) {
                        return Err(unknown);
                    }
                    let forward = error.forward_to_leader();
                    let reason = forward.map(|f| f.reason);
                    // The rare waits are boxed: inline, they made every
                    // write's future (held by every call in flight) about
                    // twice its size.
                    if reason == Some(ForwardReason::LeaseExpired)
                        && self.is_leader()
                        && Instant::now() < deadline
                    {
                        Box::pin(tokio::time::sleep(Duration::from_millis(2))).await;
                        continue;
                    }
                    // Leadership is moving (an election, a hand-over): an
                    // answer now could only say "no leader" or name one
                    // that is not leading yet, and the client would back
                    // off or bounce. Hold the write until a leader is
                    // known (at most the lease wait), then try again: this
                    // node writes it if it leads now, or names the leader.
                    let handing_over = reason == Some(ForwardReason::LeadershipTransfer);
                    let unknown = forward.is_some_and(|f| f.leader_id.is_none());
                    if (handing_over || unknown) && Instant::now() < deadline {
                        Box::pin(self.wait_for_leader(handing_over, deadline)).await;
                        if Instant::now() < deadline {
                            continue;
                        }
                    }
                    return Err(raft_error::<ClientWriteError<crate::types::TypeConfig>>(
                        error,
                    ));
                }
            }
        };
        match response.rejected {
            Some(reason) => Err(Error::Rejected(reason)),
            None => Ok(response),
        }
    }

    /// Does `request` on the leader: here if this node leads, else handed
    /// to the leader over the peers' link, as etcd's members do for their
    /// clients. A leader that lost leadership meanwhile makes it try again
    /// at the new one (bounded by the lease wait). Ferry's own API does not
    /// forward (its SDK goes to the leader); the etcd-compatible one does.
    async fn on_leader(&self, request: ForwardRequest) -> Result<ForwardReply, ForwardError> {
        let deadline = Instant::now() + self.lease_wait;
        loop {
            // Each way is boxed when taken: inline, both made every call's
            // future over 4 KiB, copied whole into the box tonic puts each
            // call in.
            let answer = match self.leader() {
                Some((leader, node)) if leader != self.id => {
                    Box::pin(self.forwarder.send(leader, &node, request.clone())).await
                }
                // This node leads, or no leader is known: `txn` waits for
                // one, or names it.
                _ => {
                    let txn = |c| self.txn(c);
                    Box::pin(crate::network::forward::serve(
                        &self.leases,
                        request.clone(),
                        &txn,
                    ))
                    .await
                }
            };
            match answer {
                Err(ForwardError::NotLeader { leader_id })
                    if Instant::now() < deadline && leader_id != Some(self.id) =>
                {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                answer => return answer,
            }
        }
    }

    /// Returns once this node has applied everything the leader had
    /// committed when it was called (the leader's read index): what a
    /// follower reads afterwards includes every write acknowledged before.
    pub async fn catch_up(&self) -> Result<()> {
        self.read_barrier(Consistency::ReadIndex).await.map(|_| ())
    }

    /// [`Node::txn`] on any member (see [`Node::on_leader`]).
    pub async fn txn_anywhere(&self, mut command: Command) -> Result<Response> {
        command.stamp(crate::types::now_ms());
        match self.on_leader(ForwardRequest::Txn(command)).await {
            Ok(ForwardReply::Txn(response)) => Ok(response),
            Ok(other) => Err(unexpected(other)),
            Err(error) => Err(forward_error(error)),
        }
    }

    /// [`Node::lease_grant`] on any member.
    pub async fn lease_grant_anywhere(&self, id: u64, ttl: Duration) -> Result<u64, LeaseCall> {
        // Saturating: a TTL from the wire may be any u64 of seconds, and a
        // wrapped one could land inside the allowed range.
        let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
        match self
            .on_leader(ForwardRequest::LeaseGrant { id, ttl_ms })
            .await?
        {
            ForwardReply::Lease(id) => Ok(id),
            other => Err(unexpected(other).into()),
        }
    }

    /// [`Node::lease_revoke`] on any member.
    pub async fn lease_revoke_anywhere(&self, id: u64, by: RevokeAs) -> Result<u64, LeaseCall> {
        let request = match by {
            RevokeAs::Node => ForwardRequest::LeaseRevoke { id },
            RevokeAs::Client { user } => ForwardRequest::LeaseRevokeBy { id, user },
        };
        match self.on_leader(request).await? {
            ForwardReply::Lease(revision) => Ok(revision),
            other => Err(unexpected(other).into()),
        }
    }

    /// [`Node::lease_keep_alive`] on any member.
    pub async fn lease_keep_alive_anywhere(&self, id: u64) -> Result<Duration, LeaseCall> {
        match self
            .on_leader(ForwardRequest::LeaseKeepAlive { id })
            .await?
        {
            ForwardReply::Lease(ttl_ms) => Ok(Duration::from_millis(ttl_ms)),
            other => Err(unexpected(other).into()),
        }
    }

    /// [`Node::lease_status`] on any member.
    pub async fn lease_status_anywhere(
        &self,
        id: u64,
        key_limit: usize,
    ) -> Result<LeaseStatus, LeaseCall> {
        let key_limit = key_limit as u64;
        match self
            .on_leader(ForwardRequest::LeaseStatus { id, key_limit })
            .await?
        {
            ForwardReply::LeaseStatus(status) => Ok(status),
            other => Err(unexpected(other).into()),
        }
    }

    /// Waits until this node has applied `index`, for at most `timeout`.
    /// Reads the metrics in place: openraft's own wait copies all of them
    /// (membership and per-peer maps) at every change, for every waiter,
    /// and a follower serving many reads has many waiters.
    async fn wait_applied(&self, index: u64, timeout: Duration) -> Result<()> {
        let mut metrics = self.raft.metrics();
        let applied = async {
            loop {
                let last = metrics
                    .borrow_watched()
                    .last_applied
                    .as_ref()
                    .map_or(0, |l| l.index);
                if last >= index {
                    return Ok(());
                }
                if metrics.changed().await.is_err() {
                    return Err(Error::Node(
                        "Raft stopped while waiting to apply the read index".into(),
                    ));
                }
            }
        };
        tokio::time::timeout(timeout, applied)
            .await
            .unwrap_or_else(|_| {
                Err(Error::Node(format!(
                    "the read index {index} was not applied within {timeout:?}"
                )))
            })
    }

    /// Waits until `deadline` for a known leader: another node if
    /// `elsewhere` (this one is handing over), else any.
    async fn wait_for_leader(&self, elsewhere: bool, deadline: Instant) {
        let mut metrics = self.raft.metrics();
        loop {
            let leader = metrics.borrow_watched().current_leader;
            if leader.is_some_and(|l| !elsewhere || l != self.id) {
                return;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            // Err: the deadline passed, or Raft stopped.
            if !matches!(
                tokio::time::timeout(left, metrics.changed()).await,
                Ok(Ok(()))
            ) {
                return;
            }
        }
    }

    /// Atomically applies `ops`; returns the revision (log index) that wrote them.
    pub async fn write(&self, ops: Vec<Op>) -> Result<u64> {
        Ok(self.txn(Command::batch(ops)).await?.revision)
    }

    pub async fn put(&self, key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) -> Result<u64> {
        self.write(vec![Op::put(key, value)]).await
    }

    pub async fn delete(&self, key: impl Into<Vec<u8>>) -> Result<u64> {
        self.write(vec![Op::delete(key)]).await
    }

    /// Sets `key` to `new` (`None` deletes) if its value is `expected`
    /// (`None` = absent).
    pub async fn compare_and_swap(
        &self,
        key: impl Into<Vec<u8>>,
        expected: Option<&[u8]>,
        new: Option<&[u8]>,
    ) -> Result<CasOutcome> {
        let key = key.into();
        let success = match new {
            Some(value) => Op::put(key.clone(), value),
            None => Op::delete(key.clone()),
        };
        let response = self
            .txn(Command::Txn(Txn {
                compares: vec![Compare {
                    key: key.clone(),
                    op: CompareOp::Equal,
                    target: CompareTarget::Value(expected.map(<[u8]>::to_vec)),
                }],
                success: vec![success],
                failure: vec![Op::Get { key }],
                ..Txn::default()
            }))
            .await?;
        Ok(CasOutcome {
            swapped: response.succeeded,
            revision: response.revision,
            current: if response.succeeded {
                None
            } else {
                response.reads().next().flatten().map(|kv| kv.value.clone())
            },
        })
    }

    /// Waits until a read at `consistency` is allowed here; returns the
    /// staleness for stale reads.
    async fn read_barrier(&self, consistency: Consistency) -> Result<Option<Staleness>> {
        let policy = match consistency {
            Consistency::ReadIndex => match self.leader() {
                Some((leader, node)) if leader != self.id => {
                    let index = match self
                        .forwarder
                        .send(leader, &node, ForwardRequest::ReadIndex)
                        .await
                        .map_err(forward_error)?
                    {
                        ForwardReply::ReadIndex(index) => index,
                        other => return Err(unexpected(other)),
                    };
                    self.wait_applied(index, FOLLOWER_READ_WAIT).await?;
                    return Ok(None);
                }
                _ => ReadPolicy::ReadIndex,
            },
            Consistency::Linearizable => ReadPolicy::ReadIndex,
            Consistency::Lease => ReadPolicy::LeaseRead,
            Consistency::Stale => {
                let (leader, applied_index, known_commit_index) = self.with_metrics(|m| {
                    (
                        m.current_leader,
                        m.last_applied.as_ref().map_or(0, |l| l.index),
                        m.local_committed.as_ref().map_or(0, |l| l.index),
                    )
                });
                let since_leader_contact = match leader {
                    Some(leader) if leader == self.id => None,
                    Some(leader) => self.contact.last_from(leader).map(|t| t.elapsed()),
                    None => None,
                };
                return Ok(Some(Staleness {
                    applied_index,
                    known_commit_index,
                    since_leader_contact,
                }));
            }
        };
        self.raft
            .ensure_linearizable(policy)
            .await
            .map_err(raft_error)?;
        Ok(None)
    }

    /// A consistent view of the engine once a read at `consistency` is
    /// allowed, with the applied index it reflects.
    async fn read_view(&self, consistency: Consistency) -> Result<View> {
        let staleness = self.read_barrier(consistency).await?;
        let db = self.sm.db();
        let snapshot = db.snapshot();
        let revision = state_machine::applied_index(&snapshot)?;
        Ok(View {
            _db: db,
            snapshot,
            revision,
            staleness,
        })
    }

    /// A view for a read at `revision` (0: the latest): the revision the
    /// read answers at, and whether it needs the history (an older one).
    async fn read_view_at(&self, revision: u64, consistency: Consistency) -> Result<(View, bool)> {
        let mut view = self.read_view(consistency).await?;
        if revision == 0 || revision == view.revision {
            return Ok((view, false));
        }
        if revision > view.revision {
            return Err(Error::FutureRevision {
                requested: revision,
                current: view.revision,
            });
        }
        let compacted = history::compacted(&view.snapshot)?;
        if revision < compacted {
            return Err(Compacted {
                requested: revision,
                compacted,
            }
            .into());
        }
        view.revision = revision;
        Ok((view, true))
    }

    /// Runs `read` on the view on a blocking thread: scans must not hold
    /// up the async runtime that also carries Raft heartbeats.
    async fn blocking_read<T: Send + 'static>(
        view: View,
        read: impl FnOnce(&View) -> Result<T> + Send + 'static,
    ) -> Result<Read<T>> {
        tokio::task::spawn_blocking(move || {
            let value = read(&view)?;
            Ok(Read {
                value,
                revision: view.revision,
                staleness: view.staleness,
            })
        })
        .await
        .map_err(|e| Error::Node(format!("read task: {e}")))?
    }

    /// Reads `key`.
    pub async fn get(
        &self,
        key: impl AsRef<[u8]>,
        consistency: Consistency,
    ) -> Result<Read<Option<KeyValue>>> {
        self.get_at(key, 0, consistency).await
    }

    /// Reads `key` as of `revision` (0: the latest). A revision below the
    /// compacted one fails with [`Error::Compacted`], one not applied here
    /// yet with [`Error::FutureRevision`].
    pub async fn get_at(
        &self,
        key: impl AsRef<[u8]>,
        revision: u64,
        consistency: Consistency,
    ) -> Result<Read<Option<KeyValue>>> {
        // Bound as a whole: the view's engine handle must outlive the reads.
        let (view, past) = self.read_view_at(revision, consistency).await?;
        let key = key.as_ref();
        let value = if past {
            history::get_at(&view.snapshot, key, view.revision)?
        } else {
            match view
                .snapshot
                .get(keys::user_key(key))
                .map_err(std::io::Error::other)?
            {
                None => None,
                Some(bytes) => Some(decode(key, &bytes)?),
            }
        };
        Ok(Read {
            value,
            revision: view.revision,
            staleness: view.staleness,
        })
    }

    /// Reads up to `limit` keys in `[start, end)` (`end = None`: to the end).
    /// See [`Node::range_at`] for a bound in bytes.
    pub async fn range(
        &self,
        start: &[u8],
        end: Option<&[u8]>,
        limit: usize,
        consistency: Consistency,
    ) -> Result<Read<Vec<KeyValue>>> {
        self.range_at(start, end, limit, 0, consistency).await
    }

    /// Reads keys in `[start, end)` as of `revision` (0: the latest), up
    /// to `limit`; errors as [`Node::get_at`]. Runs on a blocking thread,
    /// so a long scan never holds up the async runtime (and Raft's
    /// heartbeats on it).
    pub async fn range_at(
        &self,
        start: &[u8],
        end: Option<&[u8]>,
        limit: impl Into<PageLimit>,
        revision: u64,
        consistency: Consistency,
    ) -> Result<Read<Vec<KeyValue>>> {
        self.range_with(start, end, limit.into(), revision, consistency, true)
            .await
    }

    /// [`Node::range_at`] without the values (each `value` is empty), for
    /// a caller that needs keys and revisions only: a range of large
    /// values then holds one value at a time, and `limit.bytes` counts
    /// keys alone.
    pub async fn range_keys_at(
        &self,
        start: &[u8],
        end: Option<&[u8]>,
        limit: impl Into<PageLimit>,
        revision: u64,
        consistency: Consistency,
    ) -> Result<Read<Vec<KeyValue>>> {
        self.range_with(start, end, limit.into(), revision, consistency, false)
            .await
    }

    async fn range_with(
        &self,
        start: &[u8],
        end: Option<&[u8]>,
        limit: PageLimit,
        revision: u64,
        consistency: Consistency,
        values: bool,
    ) -> Result<Read<Vec<KeyValue>>> {
        let (view, past) = self.read_view_at(revision, consistency).await?;
        let (start, end) = (start.to_vec(), end.map(<[u8]>::to_vec));
        Self::blocking_read(view, move |view| {
            let mut out = Vec::new();
            if limit.keys == 0 {
                return Ok(out);
            }
            let mut bytes = 0;
            let mut more = |out: &mut Vec<KeyValue>, mut kv: KeyValue| {
                if !values {
                    kv.value = Vec::new();
                }
                bytes += kv.key.len() + kv.value.len();
                out.push(kv);
                out.len() < limit.keys && bytes < limit.bytes
            };
            if past {
                history::range_at(
                    &view.snapshot,
                    &start,
                    end.as_deref(),
                    view.revision,
                    |kv| more(&mut out, kv),
                )?;
                return Ok(out);
            }
            let (from, to) = keys::user_bounds(&start, end.as_deref());
            for item in view.snapshot.range(from..to) {
                let (key, value) = item.map_err(std::io::Error::other)?;
                if !more(&mut out, decode(&key[1..], &value)?) {
                    break;
                }
            }
            Ok(out)
        })
        .await
    }

    /// Counts the keys in `[start, end)` (`end = None`: to the end), at most `limit`.
    pub async fn count(
        &self,
        start: &[u8],
        end: Option<&[u8]>,
        limit: u64,
        consistency: Consistency,
    ) -> Result<Read<u64>> {
        self.count_at(start, end, limit, 0, consistency).await
    }

    /// Counts the keys in `[start, end)` as of `revision` (0: the latest),
    /// at most `limit`; errors as [`Node::get_at`]. Runs on a blocking
    /// thread.
    pub async fn count_at(
        &self,
        start: &[u8],
        end: Option<&[u8]>,
        limit: u64,
        revision: u64,
        consistency: Consistency,
    ) -> Result<Read<u64>> {
        let (view, past) = self.read_view_at(revision, consistency).await?;
        let (start, end) = (start.to_vec(), end.map(<[u8]>::to_vec));
        Self::blocking_read(view, move |view| {
            let mut count = 0;
            if limit == 0 {
                return Ok(count);
            }
            if past {
                history::range_at(
                    &view.snapshot,
                    &start,
                    end.as_deref(),
                    view.revision,
                    |_| {
                        count += 1;
                        count < limit
                    },
                )?;
                return Ok(count);
            }
            let (from, to) = keys::user_bounds(&start, end.as_deref());
            for item in view.snapshot.range(from..to) {
                item.map_err(std::io::Error::other)?;
                count += 1;
                if count >= limit {
                    break;
                }
            }
            Ok(count)
        })
        .await
    }

    /// Watches a key range from a revision on (see [`crate::watch`]);
    /// served by this node from its own history.
    pub fn watch(&self, options: WatchOptions) -> std::result::Result<Watcher, WatchError> {
        Watcher::start(self.sm.clone(), options)
    }

    /// Users, roles and whether auth is on, as this node has applied them.
    pub fn auth(&self) -> Arc<crate::auth::AuthState> {
        self.sm.auth()
    }

    /// Changes users, roles or whether auth is on, cluster-wide (on the
    /// leader). A change the state refuses (an unknown role, enabling auth
    /// without a root user…) fails with [`Error::Rejected`] naming why.
    pub async fn change_auth(&self, change: crate::auth::AuthChange) -> Result<u64> {
        Ok(self.txn(Command::Auth(change)).await?.revision)
    }

    /// Grants a lease of `ttl` (on the leader): `id`, or a fresh id for 0.
    /// Returns the id. The lease lives while [`Node::lease_keep_alive`]
    /// renews it within `ttl`.
    pub async fn lease_grant(&self, id: u64, ttl: Duration) -> Result<u64, LeaseCall> {
        self.leases.grant(id, ttl, &|c| self.txn(c)).await
    }

    /// Revokes lease `id` (on the leader), deleting its keys at one
    /// revision, which it returns. A client's revoke (`by`) is checked when
    /// applied: see [`RevokeAs`].
    pub async fn lease_revoke(&self, id: u64, by: RevokeAs) -> Result<u64, LeaseCall> {
        self.leases.revoke(id, by, &|c| self.txn(c)).await
    }

    /// Renews lease `id` for its whole TTL (on the leader); returns the TTL.
    pub async fn lease_keep_alive(&self, id: u64) -> Result<Duration, LeaseCall> {
        self.leases.keep_alive(id).await
    }

    /// Lease `id` as the leader sees it, with at most `key_limit` of its
    /// keys.
    pub async fn lease_status(&self, id: u64, key_limit: usize) -> Result<LeaseStatus, LeaseCall> {
        self.leases.status(id, key_limit).await
    }

    /// Every lease this node's state holds, by id, with its granted TTL.
    pub fn leases(&self) -> Result<Vec<(u64, Duration)>> {
        Ok(self
            .leases
            .all()?
            .into_iter()
            .map(|(id, record)| (id, Duration::from_millis(record.ttl_ms)))
            .collect())
    }

    /// The first revision whose history this node serves (0: all of it).
    pub fn compacted(&self) -> Result<u64> {
        Ok(self.sm.compacted()?)
    }

    /// Compacts the history below `revision` cluster-wide (on the leader):
    /// reads and watches below it fail as compacted from now on, and the
    /// leader's purger removes it in bounded steps. Returns the compacted
    /// revision afterwards. A revision at or below the current compacted
    /// one fails with [`Error::Compacted`]; one beyond what was applied
    /// with [`Error::FutureRevision`].
    pub async fn compact_history(&self, revision: u64) -> Result<u64> {
        self.compact(revision, false).await
    }

    /// [`Node::compact_history`] on any member (see [`Node::on_leader`]).
    pub async fn compact_history_anywhere(&self, revision: u64) -> Result<u64> {
        self.compact(revision, true).await
    }

    async fn compact(&self, revision: u64, anywhere: bool) -> Result<u64> {
        // The state machine's own position: Raft's metrics may lag behind
        // a write that was just answered. Ahead of it, the revision may
        // still be committed (a follower behind, a leader just elected
        // that has not applied its predecessor's last writes): only what
        // the leader committed decides.
        let applied = || self.sm.applied().0.map_or(0, |l| l.index);
        if revision > applied() {
            self.catch_up().await?;
        }
        let applied = applied();
        if revision > applied {
            return Err(Error::FutureRevision {
                requested: revision,
                current: applied,
            });
        }
        let command = Command::Compact {
            revision,
            time_ms: 0,
        };
        let response = if anywhere {
            self.txn_anywhere(command).await?
        } else {
            self.txn(command).await?
        };
        if !response.succeeded {
            // The answer's revision is the compaction command's own index:
            // the state here has applied it once this returns.
            let compacted = self.sm.compacted()?;
            return Err(Compacted {
                requested: revision,
                compacted,
            }
            .into());
        }
        // The leader's purger removes what is below (a follower's wake-up
        // is harmless: the purger acts only on a leader).
        self.purger_wake.notify_one();
        Ok(revision.min(response.revision))
    }

    /// The applied log id and the content checksum of the whole replicated
    /// state at that point, from one consistent view. Replicas that applied
    /// the same log have equal hashes.
    pub fn state_hash(&self) -> Result<(Option<LogId>, u64)> {
        let db = self.sm.db();
        let snapshot = db.snapshot();
        let applied: Option<LogId> =
            match snapshot.get(keys::APPLIED).map_err(std::io::Error::other)? {
                None => None,
                Some(bytes) => postcard::from_bytes(&bytes).map_err(std::io::Error::other)?,
            };
        let hash = snapshot.content_checksum().map_err(std::io::Error::other)?;
        Ok((applied, hash))
    }

    /// The revision and the content checksum of the user state alone (keys,
    /// values and their revisions; no system record, no history), from one
    /// consistent view: what a state export records, so a cluster restored
    /// from one can be compared with its source.
    pub fn user_checksum(&self) -> Result<(u64, u64)> {
        let view = self.sm.db().snapshot();
        let revision = state_machine::applied_index(&view)?;
        Ok((revision, crate::export::state::user_checksum(&view)?))
    }

    /// Adds `id` (reachable at `raft_addr`) as a learner; with `wait`,
    /// returns only once the learner holds the log up to the entry that
    /// added it (by replication or a snapshot install).
    pub async fn add_learner(
        &self,
        id: NodeId,
        node: impl Into<FerryNode>,
        wait: bool,
    ) -> Result<u64> {
        let node = node.into();
        // Every release implements version 1; past it, a member that says
        // it implements less is refused here rather than stopping at its
        // first entry. One that does not answer (not started yet: etcd's
        // `member add` comes first) is added, and stops by itself if it is
        // behind (see `crate::apply_version`).
        let cluster = self.sm.apply_version()?;
        if cluster > 1 {
            let asked =
                crate::apply_version::implemented_by(self.forwarder.factory(), id, &node).await;
            if let Some(implemented) = asked.filter(|&v| v < cluster) {
                return Err(Error::ApplyVersionBehind {
                    id,
                    implemented,
                    cluster,
                });
            }
        }
        let response = self
            .raft
            .add_learner(id, node, false)
            .await
            .map_err(raft_error)?;
        let index = response.log_id.index;
        self.wait_membership(index).await?;
        if wait {
            self.wait_replicated(id, index).await?;
        }
        Ok(index)
    }

    /// The apply version the cluster follows, as this member has applied
    /// it, and the highest it implements (see [`crate::apply_version`]).
    pub fn apply_version(&self) -> Result<(u32, u32)> {
        Ok((
            self.sm.apply_version()?,
            self.sm.implemented_apply_version(),
        ))
    }

    /// Waits until this node's metrics show the membership of entry `index`
    /// or a later one. openraft answers a membership change once it is
    /// committed and publishes its metrics on its own time: a caller that
    /// reads the members right after the answer (etcd's `MemberAdd` names
    /// the new member from them) would otherwise see the old ones.
    async fn wait_membership(&self, index: u64) -> Result<()> {
        let mut metrics = self.raft.metrics();
        loop {
            let seen = metrics
                .borrow_watched()
                .membership_config
                .log_id()
                .as_ref()
                .map_or(0, |l| l.index);
            if seen >= index {
                return Ok(());
            }
            metrics
                .changed()
                .await
                .map_err(|e| Error::Raft(e.to_string()))?;
        }
    }

    /// Waits until this leader sees `id` holding the log up to `index`.
    pub async fn wait_replicated(&self, id: NodeId, index: u64) -> Result<()> {
        let mut metrics = self.raft.metrics();
        loop {
            let matched = {
                let m = metrics.borrow_watched();
                if m.state != ServerState::Leader {
                    return Err(Error::NotLeader {
                        leader_id: m.current_leader,
                        leader_addr: None,
                    });
                }
                matched_index(&m, id)
            };
            if matched.is_some_and(|m| m >= index) {
                return Ok(());
            }
            metrics
                .changed()
                .await
                .map_err(|e| Error::Raft(e.to_string()))?;
        }
    }

    /// Makes learner `id` a voter, once it holds the leader's log to within
    /// [`TRANSFER_CAUGHT_UP_ENTRIES`] and has answered the leader recently
    /// (within the election timeout): else [`Error::LearnerBehind`], and
    /// nothing changes. Promoting a learner that is down or far behind
    /// would make it a voter the quorum waits for.
    pub async fn promote(&self, id: NodeId) -> Result<u64> {
        if self.is_leader() {
            let progress = self.followers().into_iter().find(|f| f.id == id);
            let answered = progress
                .as_ref()
                .and_then(|p| p.since_ack)
                .is_some_and(|since| since <= self.lease_wait);
            let lag_entries = progress.as_ref().map_or(u64::MAX, |p| p.lag_entries);
            if !answered || lag_entries > TRANSFER_CAUGHT_UP_ENTRIES {
                return Err(Error::LearnerBehind {
                    id,
                    lag_entries,
                    never_answered: progress.and_then(|p| p.matched_index).is_none(),
                });
            }
        }
        let response = self
            .raft
            .change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([id])), false)
            .await
            .map_err(raft_error)?;
        self.wait_membership(response.log_id.index).await?;
        Ok(response.log_id.index)
    }

    /// Removes `id` from the cluster (voter or learner).
    pub async fn remove(&self, id: NodeId) -> Result<u64> {
        let metrics = self.metrics();
        let membership = metrics.membership_config.membership();
        if membership.voter_ids().any(|v| v == id) {
            self.raft
                .change_membership(ChangeMembers::RemoveVoters(BTreeSet::from([id])), false)
                .await
                .map_err(raft_error)?;
        }
        let response = self
            .raft
            .change_membership(ChangeMembers::RemoveNodes(BTreeSet::from([id])), false)
            .await
            .map_err(raft_error)?;
        self.wait_membership(response.log_id.index).await?;
        Ok(response.log_id.index)
    }

    /// Hands leadership to `to` (planned maintenance) and waits until this
    /// node sees a leader other than itself, up to `timeout`.
    ///
    /// The hand-over starts only once `to` holds the log to within
    /// [`TRANSFER_CAUGHT_UP_ENTRIES`] of this leader's end: from the
    /// trigger on, this leader takes no writes and the target campaigns
    /// only after flushing the log up to the leader's last entry, so a
    /// target still catching up (just restarted, or slow) would stall
    /// writes for as long as it needs, or fail and leave the cluster to an
    /// election timeout. Until then, writes go on as usual; a target that
    /// does not catch up within `timeout` is an error and nothing changes.
    pub async fn transfer_leadership(&self, to: NodeId, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        let mut metrics = self.raft.metrics();
        // openraft stops the leader's heartbeats and lease once a transfer
        // is triggered, and forgets the target only when another node
        // leads: a target that cannot win (itself, a learner, a stranger)
        // would leave the cluster without a leader until an election, or
        // for good with one voter.
        if to == self.id && self.is_leader() {
            return Ok(());
        }
        if !self
            .metrics()
            .membership_config
            .membership()
            .voter_ids()
            .any(|v| v == to)
        {
            return Err(Error::NotVoter(to));
        }
        loop {
            let (matched, last, answered) = {
                let m = metrics.borrow_watched();
                if m.state != ServerState::Leader {
                    return Err(Error::NotLeader {
                        leader_id: m.current_leader,
                        leader_addr: None,
                    });
                }
                (
                    matched_index(&m, to).unwrap_or(0),
                    m.last_log_index.unwrap_or(0),
                    since_ack(&m, to).is_some_and(|since| since <= self.lease_wait),
                )
            };
            if answered && matched + TRANSFER_CAUGHT_UP_ENTRIES >= last {
                break;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(Error::Raft(format!(
                    "not handing leadership to {to}: it holds the log up to {matched} of {last}{} \
                     and did not catch up in {timeout:?}",
                    if answered {
                        ""
                    } else {
                        ", has not answered lately"
                    }
                )));
            }
            let _ = tokio::time::timeout(left, metrics.changed()).await;
        }
        self.raft
            .trigger()
            .transfer_leader(to)
            .await
            .map_err(|e| Error::Raft(e.to_string()))?;
        loop {
            let leader = metrics.borrow_watched().current_leader;
            if leader.is_some_and(|l| l != self.id) {
                return Ok(());
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(Error::Raft(format!(
                    "leadership did not move to {to} in {timeout:?}"
                )));
            }
            let _ = tokio::time::timeout(left, metrics.changed()).await;
        }
    }

    /// Compacts this replica's whole engine (a local maintenance step; it
    /// changes no replicated state, and no history: see
    /// [`Node::compact_history`] for that).
    pub async fn compact_engine(&self) -> Result<()> {
        let db = self.sm.db();
        tokio::task::spawn_blocking(move || db.compact_range(None, None))
            .await
            .map_err(|e| Error::Node(e.to_string()))?
            .map_err(std::io::Error::other)?;
        Ok(())
    }

    /// Builds a snapshot now and waits for it; returns the log id it covers.
    pub async fn snapshot(&self) -> Result<Option<LogId>> {
        self.raft
            .trigger()
            .snapshot()
            .await
            .map_err(|e| Error::Raft(e.to_string()))?;
        let target = self.metrics().last_applied;
        let mut metrics = self.raft.metrics();
        loop {
            let snapshot = metrics.borrow_watched().snapshot;
            if snapshot.is_some() && snapshot >= target {
                return Ok(snapshot);
            }
            metrics
                .changed()
                .await
                .map_err(|e| Error::Raft(e.to_string()))?;
        }
    }

    /// Purges the log up to `upto` (never past the last snapshot).
    pub async fn purge_log(&self, upto: u64) -> Result<()> {
        self.raft
            .trigger()
            .purge_log(upto)
            .await
            .map_err(|e| Error::Raft(e.to_string()))
    }

    /// Stops Raft and the peer service. Data stays on disk; opening the
    /// same directory again rejoins the cluster.
    pub async fn shutdown(&self) -> Result<()> {
        self.retention.abort();
        self.lease_task.abort();
        self.election_task.abort();
        self.apply_version_task.abort();
        // Raft first, so nothing applies while the engine flushes. Bounded:
        // a core stuck on a peer that never answers must not hold the stop
        // (what it did not finish is in the fsynced log or was never
        // acknowledged).
        let result = match tokio::time::timeout(RAFT_STOP_BOUND, self.raft.shutdown()).await {
            Ok(result) => result.map_err(|e| Error::Raft(e.to_string())),
            Err(_) => {
                tracing::warn!("Raft did not stop within {RAFT_STOP_BOUND:?}; stopping anyway");
                Ok(())
            }
        };
        // The engine applies without fsync; a clean stop makes its state
        // durable so that the next start replays nothing.
        let db = self.sm.db();
        let flushed = tokio::task::spawn_blocking(move || db.flush()).await;
        if let Ok(Err(error)) = flushed {
            tracing::warn!(%error, "flushing the engine at shutdown");
        }
        let stop = self.stop_server.lock().take();
        if let Some(stop) = stop {
            let _ = stop.send(());
        }
        let server = self.server.lock().take();
        if let Some(mut server) = server {
            // A peer connection that stays open holds tonic's graceful
            // stop; past the bound the peer service is stopped outright.
            if tokio::time::timeout(PEER_SERVICE_STOP_BOUND, &mut server)
                .await
                .is_err()
            {
                server.abort();
            }
        }
        result
    }
}

/// How long since `id` last acknowledged this leader, as its metrics show
/// (`None`: never, or this node does not lead).
fn since_ack(metrics: &RaftMetrics<crate::types::TypeConfig>, id: NodeId) -> Option<Duration> {
    use openraft::async_runtime::Instant as _;
    metrics
        .heartbeat
        .as_ref()
        .and_then(|h| h.get(&id).cloned().flatten())
        .map(|t| t.elapsed())
}

/// The log index a leader's metrics show `id` holding (`None`: unknown,
/// or this node does not lead).
fn matched_index(metrics: &RaftMetrics<crate::types::TypeConfig>, id: NodeId) -> Option<u64> {
    metrics
        .replication
        .as_ref()
        .and_then(|r| r.get(&id).copied().flatten())
        .map(|l| l.index)
}

/// How far behind the leader's last entry a member may be for
/// [`Node::transfer_leadership`] to hand it leadership: a few write
/// batches, which it flushes in a millisecond or two.
pub const TRANSFER_CAUGHT_UP_ENTRIES: u64 = 256;

/// Longest a follower's read waits to apply the leader's read index (it is
/// normally one append behind at most).
const FOLLOWER_READ_WAIT: Duration = Duration::from_secs(5);

/// How long [`Node::shutdown`] waits for Raft to stop.
const RAFT_STOP_BOUND: Duration = Duration::from_secs(3);
/// How long [`Node::shutdown`] waits for the peer service's connections
/// to close.
const PEER_SERVICE_STOP_BOUND: Duration = Duration::from_secs(1);
/// The longest [`Node::shutdown`] waits, besides flushing the engine.
pub const NODE_STOP_BOUND: Duration =
    Duration::from_secs(RAFT_STOP_BOUND.as_secs() + PEER_SERVICE_STOP_BOUND.as_secs());

impl Drop for Node {
    fn drop(&mut self) {
        self.retention.abort();
        self.lease_task.abort();
        self.election_task.abort();
        self.apply_version_task.abort();
        if let Some(stop) = self.stop_server.get_mut().take() {
            let _ = stop.send(());
        }
        if let Some(server) = self.server.get_mut().take() {
            server.abort();
        }
    }
}

fn decode(key: &[u8], bytes: &[u8]) -> Result<KeyValue> {
    keys::Record::decode(bytes)
        .map(|r| r.into_key_value(key.to_vec()))
        .ok_or_else(|| Error::Storage(keys::undecodable("record", key)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lease::LeaseError;

    /// A grant whose first attempt failed before it applied (the leader
    /// refused it, or its entry was discarded) left the lease's id on the
    /// leader's clock; the retry must be granted, not told the lease exists
    /// (the SDK takes that as its first attempt having applied).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_grant_retried_after_a_first_attempt_that_never_applied_is_granted() {
        let dir = tempfile::tempdir().unwrap();
        let config = NodeConfig::new(1, dir.path().join("node"), "127.0.0.1:0".parse().unwrap());
        let node = Node::open(config).await.unwrap();
        let addr = node.raft_addr().to_owned();
        node.initialize(BTreeMap::from([(1, addr)])).await.unwrap();
        let ttl = Duration::from_secs(60);
        let deadline = Instant::now() + Duration::from_secs(10);
        while node.put("ready", "1").await.is_err() {
            assert!(Instant::now() < deadline, "no leader");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let failed = node
            .leases
            .grant(9, ttl, |_| async {
                Err(Error::NotLeader {
                    leader_id: None,
                    leader_addr: None,
                })
            })
            .await;
        assert!(failed.is_err());
        assert_eq!(node.lease_grant(9, ttl).await.unwrap(), 9);
        assert_eq!(node.lease_status(9, 0).await.unwrap().ttl, ttl);
        // Now that it exists, a grant of it is refused.
        let again = node.lease_grant(9, ttl).await;
        assert!(
            matches!(again, Err(LeaseCall::Lease(LeaseError::Exists(9)))),
            "{again:?}"
        );
        node.shutdown().await.unwrap();
    }
}
