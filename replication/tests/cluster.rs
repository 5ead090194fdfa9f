//! In-process clusters on loopback: replication, failover, membership.

mod common;

use common::{fast_raft, Cluster};
use ferry_replication::{Consistency, Error};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_nodes_replicate_and_read() {
    let cluster = Cluster::start(3, fast_raft()).await;
    let leader = cluster.leader().unwrap();
    let revision = leader.put("k", "v").await.unwrap();
    assert!(revision > 0);
    let read = leader.get("k", Consistency::Linearizable).await.unwrap();
    assert_eq!(read.value.unwrap().value, b"v");
    assert!(read.revision >= revision);
    cluster.wait_applied(revision, Duration::from_secs(5)).await;
    for node in cluster.nodes.values() {
        let read = node.get("k", Consistency::Stale).await.unwrap();
        assert_eq!(read.value.unwrap().mod_revision, revision);
        assert!(read.staleness.is_some());
    }
    let follower = cluster.nodes.values().find(|n| !n.is_leader()).unwrap();
    match follower.put("x", "y").await {
        Err(Error::NotLeader {
            leader_id,
            leader_addr,
        }) => {
            assert_eq!(leader_id, Some(leader.id()));
            assert_eq!(leader_addr.as_deref(), Some(leader.raft_addr()));
        }
        other => panic!("expected NotLeader, got {other:?}"),
    }
    cluster.assert_converged(Duration::from_secs(5)).await;
    cluster.shutdown().await;
}
