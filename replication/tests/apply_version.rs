//! The apply version: a cluster of members of two releases applies by the
//! older release's rules until every member implements the newer ones; a
//! member never applies past what it implements (see
//! `ferry_replication::apply_version`).
//!
//! Nodes act as members of other releases through the
//! `NodeConfig::apply_version` they are started with.

mod common;

use common::{fast_raft, Cluster};
use ferry_replication::{Consistency, Error, Node};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The cluster's voters; other nodes are started outside the membership.
const VOTERS: [u64; 3] = [1, 2, 3];

/// Waits until every voter has applied `version`.
async fn wait_version(cluster: &Cluster, version: u32, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        let versions: Vec<(u64, u32)> = VOTERS
            .iter()
            .map(|id| (*id, cluster.nodes[id].apply_version().unwrap().0))
            .collect();
        if versions.iter().all(|&(_, v)| v == version) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "apply versions {versions:?} after {timeout:?}, wanted {version} everywhere"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Does `call` on whichever voter leads, again while leadership moves (a
/// loaded machine can hold a follower's heartbeat past its timeout).
async fn on_leader<T, F, Fut>(cluster: &Cluster, call: F) -> Result<T, Error>
where
    F: Fn(Arc<Node>) -> Fut,
    Fut: std::future::Future<Output = Result<T, Error>>,
{
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let leader = VOTERS
            .iter()
            .map(|id| cluster.nodes[id].clone())
            .find(|n| n.is_leader());
        if let Some(leader) = leader {
            match call(leader).await {
                Err(Error::NotLeader { .. }) => {}
                Err(ref error) if ferry_replication::is_outcome_unknown(error) => {}
                answer => return answer,
            }
        }
        assert!(Instant::now() < deadline, "no leader took the call");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn put(cluster: &Cluster, key: &'static str) {
    on_leader(cluster, |n| async move { n.put(key, "v").await })
        .await
        .unwrap();
}

/// Adds node `id` as a learner, through whichever voter leads.
async fn add(cluster: &Cluster, id: u64) -> Result<u64, Error> {
    let addr = cluster.addrs[&id].clone();
    on_leader(cluster, |n| {
        let addr = addr.clone();
        async move { n.add_learner(id, addr, false).await }
    })
    .await
}

/// Starts node `id` as a member of a release that implements apply
/// version 1 only, adds it while it cannot be asked (cut off from every
/// voter), and waits until it stops; returns it and why it stopped.
async fn add_unasked_behind(cluster: &mut Cluster, id: u64) -> (Arc<Node>, String) {
    cluster.apply_versions.insert(id, 1);
    cluster.start_node(id).await;
    for voter in VOTERS {
        cluster.network.cut(voter, id);
    }
    add(cluster, id)
        .await
        .expect("a member that does not answer is added");
    cluster.network.heal();
    let behind = cluster.nodes[&id].clone();
    let fatal = wait_stopped(&behind).await;
    (behind, fatal)
}

/// Waits until `node`'s Raft has stopped for good; returns why.
async fn wait_stopped(node: &Node) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Err(fatal) = &node.metrics().running_state {
            return fatal.to_string();
        }
        assert!(
            Instant::now() < deadline,
            "node {} is still applying: {:?}",
            node.id(),
            node.metrics().last_applied
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_apply_version_rises_once_every_member_implements_it_and_never_past_a_member() {
    // Nodes 1 and 2 are of a release that implements version 2; node 3 of
    // one that implements 1 only.
    let mut cluster = Cluster::start_configured(3, fast_raft(), Default::default(), |c| {
        c.apply_versions = [(1, 2), (2, 2), (3, 1)].into();
    })
    .await;
    put(&cluster, "before").await;
    // Ten checks of the leader (if it is node 1 or 2): the version stays
    // at 1, which node 3 implements.
    tokio::time::sleep(Duration::from_secs(1)).await;
    for node in cluster.nodes.values() {
        assert_eq!(node.apply_version().unwrap().0, 1, "node {}", node.id());
    }

    // Node 3 is upgraded: the leader raises the version, on every member.
    cluster.kill(3).await;
    cluster.apply_versions.insert(3, 2);
    cluster.start_node(3).await;
    wait_version(&cluster, 2, Duration::from_secs(30)).await;
    put(&cluster, "after").await;
    cluster.assert_converged(Duration::from_secs(30)).await;

    // Downgraded, node 3 refuses to open its state rather than apply on
    // by rules older than the cluster's.
    cluster.kill(3).await;
    cluster.apply_versions.insert(3, 1);
    let refused = Node::open(cluster.config(3)).await;
    let message = refused
        .err()
        .expect("a downgraded member is refused")
        .to_string();
    assert!(
        message.contains("follows apply version 2") && message.contains("up to 1"),
        "{message}"
    );
    cluster.apply_versions.insert(3, 2);
    cluster.start_node(3).await;

    // A member that says it implements less cannot join.
    cluster.apply_versions.insert(4, 1);
    cluster.start_node(4).await;
    let added = add(&cluster, 4).await;
    assert!(
        matches!(
            added,
            Err(Error::ApplyVersionBehind {
                id: 4,
                implemented: 1,
                cluster: 2
            })
        ),
        "{added:?}"
    );
    for id in VOTERS {
        let metrics = cluster.nodes[&id].metrics();
        assert!(!metrics.membership_config.nodes().any(|(id, _)| *id == 4));
    }
    cluster.kill(4).await;

    // One that cannot be asked is added (etcd's `member add` comes before
    // the member starts), and it stops at the entry that raised the
    // version instead of applying on by older rules.
    let (behind, fatal) = add_unasked_behind(&mut cluster, 5).await;
    assert!(fatal.contains("log entry"), "{fatal}");
    assert!(fatal.contains("follows apply version 2"), "{fatal}");
    assert_eq!(behind.apply_version().unwrap(), (1, 1));
    let after = behind.get("after", Consistency::Stale).await.unwrap();
    assert!(after.value.is_none(), "nothing after the raise was applied");

    // The same by a snapshot, once the log that raised it is gone (from
    // every voter, whichever leads): the member refuses to install a
    // state that follows a version it lacks.
    for id in VOTERS {
        common::snapshot_and_purge_log(&cluster.nodes[&id]).await;
    }
    let (behind, fatal) = add_unasked_behind(&mut cluster, 6).await;
    assert!(fatal.contains("the state in"), "{fatal}");
    assert!(fatal.contains("follows apply version 2"), "{fatal}");
    assert_eq!(behind.apply_version().unwrap(), (1, 1));
    assert_eq!(behind.metrics().last_applied, None, "nothing was installed");
    cluster.shutdown().await;
}
