//! The apply version: a cluster of members of two releases applies by the
//! older release's rules until every member implements the newer ones; a
//! member never applies past what it implements (see
//! `ferry_replication::apply_version`).
//!
//! Nodes act as members of other releases through the
//! `NodeConfig::apply_version` they are started with.

mod common;

use common::{fast_raft, Cluster};
use ferry_replication::{Error, Node};
use std::time::{Duration, Instant};

/// Waits until every running node has applied `version`.
async fn wait_version(cluster: &Cluster, version: u32, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        let versions: Vec<(u64, u32)> = cluster
            .nodes
            .values()
            .map(|n| (n.id(), n.apply_version().unwrap().0))
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

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_apply_version_rises_once_every_member_implements_it_and_never_past_a_member() {
    // Nodes 1 and 2 are of a release that implements version 2; node 3 of
    // one that implements 1 only.
    let mut cluster = Cluster::start_configured(3, fast_raft(), Default::default(), |c| {
        c.apply_versions = [(1, 2), (2, 2), (3, 1)].into();
    })
    .await;
    let leader = cluster.nodes[&cluster.wait_leader(Duration::from_secs(10)).await].clone();
    leader.put("before", "1").await.unwrap();
    // Ten checks of the leader at least: the version stays at 1, which
    // node 3 implements.
    tokio::time::sleep(Duration::from_secs(1)).await;
    for node in cluster.nodes.values() {
        assert_eq!(node.apply_version().unwrap().0, 1, "node {}", node.id());
    }

    // Node 3 is upgraded: the leader raises the version, on every member.
    cluster.kill(3).await;
    cluster.apply_versions.insert(3, 2);
    cluster.start_node(3).await;
    wait_version(&cluster, 2, Duration::from_secs(30)).await;
    let leader = cluster.nodes[&cluster.wait_leader(Duration::from_secs(10)).await].clone();
    leader.put("after", "2").await.unwrap();
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
    // Before nodes outside the membership run (they follow no leader).
    let leader = cluster.nodes[&cluster.wait_leader(Duration::from_secs(10)).await].clone();

    // A member that says it implements less cannot join.
    cluster.apply_versions.insert(4, 1);
    cluster.start_node(4).await;
    let added = leader
        .add_learner(4, cluster.addrs[&4].clone(), false)
        .await;
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
    assert!(!leader
        .metrics()
        .membership_config
        .membership()
        .nodes()
        .any(|(id, _)| *id == 4));
    cluster.kill(4).await;

    // One that cannot be asked is added (etcd's `member add` comes before
    // the member starts), and it stops at the entry that raised the
    // version instead of applying on by older rules.
    cluster.apply_versions.insert(5, 1);
    cluster.start_node(5).await;
    let leader_id = leader.id();
    cluster.network.cut(leader_id, 5);
    leader
        .add_learner(5, cluster.addrs[&5].clone(), false)
        .await
        .expect("a member that does not answer is added");
    cluster.network.heal();
    let behind = cluster.nodes[&5].clone();
    let fatal = wait_stopped(&behind).await;
    assert!(fatal.contains("apply version 2"), "{fatal}");
    assert_eq!(behind.apply_version().unwrap(), (1, 1));
    assert!(
        behind
            .get("after", ferry_replication::Consistency::Stale)
            .await
            .unwrap()
            .value
            .is_none(),
        "nothing after the raise was applied"
    );

    // The same by a snapshot, once the log that raised it is gone: the
    // member refuses to install a state that follows a version it lacks.
    let covered = leader.snapshot().await.unwrap().unwrap();
    leader.purge_log(covered.index).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while leader
        .metrics()
        .purged
        .is_none_or(|p| p.index < covered.index)
    {
        assert!(Instant::now() < deadline, "log not purged");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    cluster.apply_versions.insert(6, 1);
    cluster.start_node(6).await;
    cluster.network.cut(leader_id, 6);
    leader
        .add_learner(6, cluster.addrs[&6].clone(), false)
        .await
        .expect("a member that does not answer is added");
    cluster.network.heal();
    let behind = cluster.nodes[&6].clone();
    let fatal = wait_stopped(&behind).await;
    assert!(fatal.contains("follows apply version 2"), "{fatal}");
    assert_eq!(behind.apply_version().unwrap(), (1, 1));
    assert_eq!(behind.metrics().last_applied, None, "nothing was installed");
    cluster.shutdown().await;
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
