//! An in-process cluster on loopback for the replication tests.

#![allow(dead_code)]

use ferry_replication::network::NetworkControl;
use ferry_replication::{Node, NodeConfig, RaftOptions, TransferOptions};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tempfile::TempDir;

pub struct Cluster {
    pub dir: TempDir,
    pub nodes: BTreeMap<u64, Arc<Node>>,
    pub addrs: BTreeMap<u64, String>,
    pub network: NetworkControl,
    pub options: RaftOptions,
    /// Transfer options every node shares (their test hooks included).
    pub transfer: TransferOptions,
    /// Lease options every node starts with.
    pub lease: ferry_replication::lease::LeaseOptions,
    /// The apply version a node implements, where it is not this
    /// release's (a member of another release); such nodes check every
    /// 100 ms whether the cluster's may rise.
    pub apply_versions: BTreeMap<u64, u32>,
}

pub fn fast_raft() -> RaftOptions {
    RaftOptions {
        heartbeat_interval: Duration::from_millis(50),
        election_timeout_min: Duration::from_millis(300),
        election_timeout_max: Duration::from_millis(600),
        rpc_timeout: Duration::from_secs(2),
        ..RaftOptions::default()
    }
}

impl Cluster {
    pub fn data_dir(&self, id: u64) -> PathBuf {
        self.dir.path().join(format!("node-{id}"))
    }

    pub fn config(&self, id: u64) -> NodeConfig {
        let addr = self
            .addrs
            .get(&id)
            .map(|a| a.parse().unwrap())
            .unwrap_or_else(|| "127.0.0.1:0".parse().unwrap());
        let mut config = NodeConfig::new(id, self.data_dir(id), addr);
        config.raft = self.options.clone();
        config.network = self.network.clone();
        config.transfer = self.transfer.clone();
        config.lease = self.lease.clone();
        if let Some(&implemented) = self.apply_versions.get(&id) {
            config.apply_version = ferry_replication::apply_version::ApplyVersionOptions {
                implemented,
                check_interval: Duration::from_millis(100),
            };
        }
        config
    }

    /// Starts nodes `1..=n` and forms a cluster of them.
    pub async fn start(n: u64, options: RaftOptions) -> Cluster {
        Self::start_with(n, options, Default::default()).await
    }

    /// As [`Cluster::start`], every node with `lease` options.
    pub async fn start_with(
        n: u64,
        options: RaftOptions,
        lease: ferry_replication::lease::LeaseOptions,
    ) -> Cluster {
        Self::start_configured(n, options, lease, |_| {}).await
    }

    /// As [`Cluster::start_with`], after `configure` has changed the
    /// options every node starts with.
    pub async fn start_configured(
        n: u64,
        options: RaftOptions,
        lease: ferry_replication::lease::LeaseOptions,
        configure: impl FnOnce(&mut Cluster),
    ) -> Cluster {
        let mut cluster = Cluster {
            dir: tempfile::tempdir().unwrap(),
            nodes: BTreeMap::new(),
            addrs: BTreeMap::new(),
            network: NetworkControl::default(),
            options,
            transfer: TransferOptions {
                // Small chunks so that even test-sized snapshots take many.
                chunk_bytes: 64 << 10,
                ..TransferOptions::default()
            },
            lease,
            apply_versions: BTreeMap::new(),
        };
        configure(&mut cluster);
        for id in 1..=n {
            cluster.start_node(id).await;
        }
        cluster.nodes[&1]
            .initialize(cluster.addrs.clone())
            .await
            .unwrap();
        cluster.wait_leader(Duration::from_secs(10)).await;
        cluster
    }

    /// Starts (or restarts) node `id` with its data directory.
    pub async fn start_node(&mut self, id: u64) {
        let node = Node::open(self.config(id)).await.unwrap();
        self.addrs.insert(id, node.raft_addr().to_owned());
        self.nodes.insert(id, Arc::new(node));
    }

    /// Stops node `id` abruptly (no leadership hand-off).
    pub async fn kill(&mut self, id: u64) {
        if let Some(node) = self.nodes.remove(&id) {
            node.shutdown().await.ok();
        }
    }

    /// Waits until the running nodes agree on one leader among them.
    pub async fn wait_leader(&self, timeout: Duration) -> u64 {
        let deadline = Instant::now() + timeout;
        loop {
            let leaders: Vec<u64> = self
                .nodes
                .values()
                .filter(|n| n.is_leader())
                .map(|n| n.id())
                .collect();
            // A leader is settled once every running node follows it.
            if let [leader] = leaders[..] {
                if self
                    .nodes
                    .values()
                    .all(|n| n.metrics().current_leader == Some(leader))
                {
                    return leader;
                }
            }
            assert!(
                Instant::now() < deadline,
                "no single leader within {timeout:?}: {leaders:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until exactly one node other than `old` (cut off, and maybe
    /// still believing it leads) is leader; returns it.
    pub async fn wait_new_leader(&self, old: u64, timeout: Duration) -> u64 {
        let deadline = Instant::now() + timeout;
        loop {
            let leaders: Vec<u64> = self
                .nodes
                .values()
                .filter(|n| n.id() != old && n.is_leader())
                .map(|n| n.id())
                .collect();
            if let [leader] = leaders[..] {
                return leader;
            }
            assert!(Instant::now() < deadline, "the majority elected no leader");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn leader(&self) -> Option<&Arc<Node>> {
        self.nodes.values().find(|n| n.is_leader())
    }

    /// Waits until every running node has applied at least `index`.
    pub async fn wait_applied(&self, index: u64, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        for node in self.nodes.values() {
            loop {
                let applied = node.metrics().last_applied.map_or(0, |l| l.index);
                if applied >= index {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "node {} applied {applied}, wanted {index}",
                    node.id()
                );
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }

    /// Asserts that all running nodes hold the same state at the same log id.
    pub async fn assert_converged(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let hashes: Vec<_> = self
                .nodes
                .values()
                .map(|n| n.state_hash().unwrap())
                .collect();
            if hashes.windows(2).all(|w| w[0] == w[1]) {
                return;
            }
            assert!(Instant::now() < deadline, "replicas diverge: {hashes:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn shutdown(mut self) {
        let ids: Vec<u64> = self.nodes.keys().copied().collect();
        for id in ids {
            self.kill(id).await;
        }
    }
}

/// Builds a snapshot on `node` and purges its log behind it, waiting
/// until the purge is done (to within a few entries); returns the
/// snapshot's last index.
pub async fn snapshot_and_purge_log(node: &Node) -> u64 {
    let covered = node.snapshot().await.unwrap().unwrap();
    node.purge_log(covered.index).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while node
        .metrics()
        .purged
        .is_none_or(|p| p.index < covered.index.saturating_sub(5))
    {
        assert!(Instant::now() < deadline, "log not purged");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    covered.index
}

/// Opens the data directory of a new single-node cluster (a restore or a
/// recovery) as node `id` on loopback and waits until it leads.
pub async fn open_restored(id: u64, data_dir: &std::path::Path) -> Node {
    let node = Node::open(NodeConfig::new(
        id,
        data_dir,
        "127.0.0.1:0".parse().unwrap(),
    ))
    .await
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !node.is_leader() {
        assert!(Instant::now() < deadline, "the restored node did not lead");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    node
}
