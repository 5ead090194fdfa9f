//! In-process clusters on loopback: replication, failover, membership.

mod common;

use common::{fast_raft, Cluster};
use ferry_replication::lease::RevokeAs;
use ferry_replication::types::{Command, Op};
use ferry_replication::{Consistency, Error};
use std::time::{Duration, Instant};

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

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn leadership_transfer_promotion_and_removal() {
    let mut cluster = Cluster::start(3, fast_raft()).await;
    let leader_id = cluster.wait_leader(Duration::from_secs(10)).await;
    let leader = cluster.nodes[&leader_id].clone();
    leader.put("a", "1").await.unwrap();

    // Planned hand-off to a chosen follower.
    let target = *cluster.nodes.keys().find(|&&id| id != leader_id).unwrap();
    let started = std::time::Instant::now();
    leader
        .transfer_leadership(target, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(cluster.wait_leader(Duration::from_secs(5)).await, target);
    let new_leader = cluster.nodes[&target].clone();
    new_leader.put("b", "2").await.unwrap();
    eprintln!("planned transfer to first write: {:?}", started.elapsed());

    // A learner joins, catches up, becomes a voter.
    cluster.start_node(4).await;
    new_leader
        .add_learner(4, cluster.addrs[&4].clone(), true)
        .await
        .unwrap();
    let metrics = new_leader.metrics();
    assert!(metrics
        .membership_config
        .membership()
        .learner_ids()
        .any(|id| id == 4));
    // Leadership goes to a voter only: handing it to a learner or to a
    // stranger is refused; to the leader itself, there is nothing to do.
    // Writes go on.
    for to in [4, 77] {
        let refused = new_leader
            .transfer_leadership(to, Duration::from_secs(1))
            .await;
        assert!(
            matches!(refused, Err(ferry_replication::Error::NotVoter(id)) if id == to),
            "{to}: {refused:?}"
        );
    }
    new_leader
        .transfer_leadership(target, Duration::from_secs(1))
        .await
        .unwrap();
    assert!(new_leader.is_leader());
    new_leader.put("c", "3").await.unwrap();
    new_leader.promote(4).await.unwrap();
    let metrics = new_leader.metrics();
    assert!(metrics
        .membership_config
        .membership()
        .voter_ids()
        .any(|id| id == 4));

    // The old leader is removed; the cluster keeps serving with 3 voters.
    new_leader.remove(leader_id).await.unwrap();
    let metrics = new_leader.metrics();
    let voters: Vec<u64> = metrics.membership_config.membership().voter_ids().collect();
    assert_eq!(voters.len(), 3);
    assert!(!voters.contains(&leader_id));
    cluster.kill(leader_id).await;
    let revision = new_leader.put("c", "3").await.unwrap();
    cluster
        .wait_applied(revision, Duration::from_secs(10))
        .await;
    cluster.assert_converged(Duration::from_secs(10)).await;
    let read = cluster.nodes[&4]
        .get("a", Consistency::Stale)
        .await
        .unwrap();
    assert_eq!(read.value.unwrap().value, b"1");
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn compare_and_swap_and_transactions() {
    let cluster = Cluster::start(3, fast_raft()).await;
    let leader = cluster.leader().unwrap().clone();
    let swapped = leader
        .compare_and_swap("lock", None, Some(b"me"))
        .await
        .unwrap();
    assert!(swapped.swapped);
    let lost = leader
        .compare_and_swap("lock", None, Some(b"you"))
        .await
        .unwrap();
    assert!(!lost.swapped);
    assert_eq!(lost.current.as_deref(), Some(&b"me"[..]));
    let released = leader
        .compare_and_swap("lock", Some(b"me"), None)
        .await
        .unwrap();
    assert!(released.swapped);
    assert!(leader
        .get("lock", Consistency::Lease)
        .await
        .unwrap()
        .value
        .is_none());

    // Revisions: create, modify, version.
    let r1 = leader.put("k", "1").await.unwrap();
    let r2 = leader.put("k", "2").await.unwrap();
    let kv = leader
        .get("k", Consistency::Linearizable)
        .await
        .unwrap()
        .value
        .unwrap();
    assert_eq!(
        (kv.create_revision, kv.mod_revision, kv.version),
        (r1, r2, 2)
    );
    let range = leader
        .range(b"", None, 10, Consistency::Linearizable)
        .await
        .unwrap();
    assert_eq!(
        range
            .value
            .iter()
            .map(|kv| kv.key.as_slice())
            .collect::<Vec<_>>(),
        vec![&b"k"[..]]
    );
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_snapshot_restores_as_a_new_single_node_cluster() {
    let cluster = Cluster::start(3, fast_raft()).await;
    let leader = cluster.leader().unwrap().clone();
    for i in 0..50 {
        leader
            .put(format!("k{i:02}"), format!("v{i}"))
            .await
            .unwrap();
    }
    leader.snapshot().await.unwrap();
    let snapshot = leader.raft().get_snapshot().await.unwrap().unwrap();
    let restored = tempfile::tempdir().unwrap();
    let data = restored.path().join("node-9");
    let recovered = ferry_replication::recovery::restore_as_single_node(
        &ferry_engine::fs::OsFs::shared(),
        snapshot.snapshot.dir(),
        &data,
        9,
        "127.0.0.1:0".to_owned().into(),
    )
    .await
    .unwrap();
    assert_eq!(recovered.applied, snapshot.meta.last_log_id);
    cluster.shutdown().await;

    let node = common::open_restored(9, &data).await;
    let read = node.get("k07", Consistency::Linearizable).await.unwrap();
    assert_eq!(read.value.unwrap().value, b"v7");
    let revision = node.put("after", "restore").await.unwrap();
    assert!(revision > recovered.applied.unwrap().index);
    let range = node
        .range(b"k", Some(b"l"), 100, Consistency::Linearizable)
        .await
        .unwrap();
    assert_eq!(range.value.len(), 50);
    node.shutdown().await.unwrap();
}

/// A member added with another member's Raft address: the leader's
/// requests for it reach the wrong node, which refuses them (it does not
/// take them as its own), counts them and says who sent them for whom;
/// the cluster keeps serving and the wrong node's state stays the same as
/// everyone's.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_request_meant_for_another_node_is_refused_and_reported() {
    let cluster = Cluster::start(3, fast_raft()).await;
    let leader = cluster.leader().unwrap().clone();
    let wrong = cluster
        .nodes
        .values()
        .find(|n| n.id() != leader.id())
        .unwrap()
        .clone();
    leader.put("before", "1").await.unwrap();
    leader
        .add_learner(4, wrong.raft_addr().to_owned(), false)
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while wrong.misaddressed().count == 0 {
        assert!(
            Instant::now() < deadline,
            "node {} never refused a request for node 4",
            wrong.id()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let seen = wrong.misaddressed();
    assert_eq!((seen.last_from, seen.last_to), (leader.id(), 4));
    for other in cluster.nodes.values().filter(|n| n.id() != wrong.id()) {
        assert_eq!(other.misaddressed().count, 0, "node {}", other.id());
    }
    // Still a working cluster, with the wrong node a correct follower.
    let revision = leader.put("after", "2").await.unwrap();
    cluster
        .wait_applied(revision, Duration::from_secs(10))
        .await;
    assert!(cluster
        .nodes
        .values()
        .all(|n| n.metrics().current_leader == Some(leader.id())));
    cluster.assert_converged(Duration::from_secs(10)).await;
    cluster.shutdown().await;
}

/// A follower hands writes, lease calls and read indexes to the leader
/// (`Node::*_anywhere`, `Consistency::ReadIndex`), batching what its
/// callers ask at once: 200 concurrent writes through a follower each get
/// their own answer, and each caller's linearizable read through the
/// follower right after its write sees it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_follower_forwards_writes_leases_and_read_indexes_in_batches() {
    let cluster = Cluster::start(3, fast_raft()).await;
    let leader_id = cluster.wait_leader(Duration::from_secs(10)).await;
    let follower = cluster
        .nodes
        .values()
        .find(|n| n.id() != leader_id)
        .unwrap()
        .clone();
    let mut calls = Vec::new();
    for i in 0..200u32 {
        let follower = follower.clone();
        calls.push(tokio::spawn(async move {
            let key = format!("f/{i:03}");
            let written = follower
                .txn_anywhere(Command::batch(vec![Op::put(key.clone(), i.to_be_bytes())]))
                .await
                .unwrap();
            let read = follower.get(&key, Consistency::ReadIndex).await.unwrap();
            let kv = read.value.expect("read-your-write through the follower");
            assert_eq!(kv.mod_revision, written.revision);
            written.revision
        }));
    }
    let mut revisions = std::collections::BTreeSet::new();
    for call in calls {
        assert!(
            revisions.insert(call.await.unwrap()),
            "two writes, one revision"
        );
    }
    // A refusal comes back as the leader's state machine gave it.
    let refused = follower
        .txn_anywhere(Command::batch(vec![Op::Put {
            key: b"f/leased".to_vec(),
            value: Vec::new(),
            lease: 0xdead,
            prev_kv: false,
        }]))
        .await;
    assert!(matches!(refused, Err(Error::Rejected(_))), "{refused:?}");
    // Leases through the follower go on the leader's clock.
    let lease = follower
        .lease_grant_anywhere(0, Duration::from_secs(30))
        .await
        .unwrap();
    follower.lease_keep_alive_anywhere(lease).await.unwrap();
    let status = follower.lease_status_anywhere(lease, 10).await.unwrap();
    assert_eq!(status.ttl, Duration::from_secs(30));
    // A client's revoke, checked at apply (auth is off: allowed).
    follower
        .lease_revoke_anywhere(lease, RevokeAs::Client { user: None })
        .await
        .unwrap();
    assert!(follower.lease_keep_alive_anywhere(lease).await.is_err());
    cluster.assert_converged(Duration::from_secs(5)).await;
    cluster.shutdown().await;
}

/// A learner that never answered (its process is not running) is not made
/// a voter: it would join the quorum at once, and with two of three
/// voters needed, one more down would stall every write. Found by the
/// etcdctl script, where `member promote` of a learner never started made
/// a one-member cluster wait for a second voter.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_learner_that_is_not_caught_up_is_not_promoted() {
    let cluster = Cluster::start(1, fast_raft()).await;
    let leader = cluster.leader().unwrap().clone();
    let absent = ferry_replication::types::FerryNode {
        raft_addr: "127.0.0.1:1".into(),
        client_addr: String::new(),
    };
    leader.add_learner(9, absent, false).await.unwrap();
    // Members read right after the answer include it (etcd's MemberAdd
    // answers with them; etcdctl crashed on a reply without the new one).
    assert!(leader
        .metrics()
        .membership_config
        .membership()
        .learner_ids()
        .any(|id| id == 9));
    match leader.promote(9).await {
        Err(Error::LearnerBehind {
            id: 9,
            never_answered: true,
            ..
        }) => {}
        other => panic!("expected LearnerBehind, got {other:?}"),
    }
    let metrics = leader.metrics();
    assert!(!metrics
        .membership_config
        .membership()
        .voter_ids()
        .any(|v| v == 9));
    // Writes still commit with the one voter.
    tokio::time::timeout(Duration::from_secs(5), leader.put("still", "writes"))
        .await
        .expect("a write commits")
        .unwrap();
    leader.remove(9).await.unwrap();
    assert!(!leader
        .metrics()
        .membership_config
        .membership()
        .nodes()
        .any(|(id, _)| *id == 9));
    cluster.shutdown().await;
}
