//! Failover under load: leaders are killed and restarted, links are cut,
//! and every acknowledged write must survive exactly once.

mod common;

use common::{fast_raft, Cluster};
use ferry_replication::types::{Command, Op, RequestId, Txn};
use ferry_replication::{Consistency, Node};
use parking_lot::RwLock;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

type Directory = Arc<RwLock<BTreeMap<u64, Arc<Node>>>>;
/// Acknowledged writes: key, the revision that wrote it, when it was
/// acknowledged.
type Acked = Vec<(Vec<u8>, u64, Instant)>;

fn directory(cluster: &Cluster) -> Directory {
    Arc::new(RwLock::new(cluster.nodes.clone()))
}

/// Writes unique keys with request ids until `stop`, retrying each write
/// (same id) on whichever node leads until it is acknowledged.
async fn writer(client: u64, nodes: Directory, stop: Arc<AtomicBool>) -> Acked {
    let mut acked = Vec::new();
    let mut sequence = 0;
    while !stop.load(Ordering::Relaxed) {
        sequence += 1;
        let key = format!("c{client}-{sequence:06}").into_bytes();
        let command = Command::Txn(Txn {
            compares: Vec::new(),
            success: vec![Op::put(key.clone(), vec![client as u8; 100])],
            failure: Vec::new(),
            request: Some(RequestId {
                client,
                sequence,
                first_incomplete: sequence,
            }),
            time_ms: 0,
            auth_revision: None,
        });
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            assert!(
                Instant::now() < deadline,
                "write {client}/{sequence} not acknowledged in 30 s"
            );
            let leader = nodes.read().values().find(|n| n.is_leader()).cloned();
            let Some(leader) = leader else {
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            };
            match tokio::time::timeout(Duration::from_secs(2), leader.txn(command.clone())).await {
                Ok(Ok(response)) => {
                    acked.push((key, response.revision, Instant::now()));
                    break;
                }
                _ => tokio::time::sleep(Duration::from_millis(10)).await,
            }
        }
    }
    acked
}

/// Stops the writers, then checks that each acknowledged write is present
/// exactly once.
async fn stop_and_check(
    cluster: &Cluster,
    stop: &AtomicBool,
    writers: Vec<tokio::task::JoinHandle<Acked>>,
) -> Acked {
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    let mut acked = Vec::new();
    for writer in writers {
        acked.extend(writer.await.unwrap());
    }
    assert!(acked.len() > 20, "only {} writes acknowledged", acked.len());
    check_acked(cluster, &acked).await;
    acked
}

async fn check_acked(cluster: &Cluster, acked: &Acked) {
    let leader = cluster.wait_leader(Duration::from_secs(10)).await;
    let leader = &cluster.nodes[&leader];
    for (key, revision, _) in acked {
        let read = leader.get(key, Consistency::Linearizable).await.unwrap();
        let kv = read
            .value
            .unwrap_or_else(|| panic!("acknowledged write {} lost", String::from_utf8_lossy(key)));
        assert_eq!(
            kv.version,
            1,
            "write {} applied twice",
            String::from_utf8_lossy(key)
        );
        assert_eq!(kv.mod_revision, *revision);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killing_the_leader_three_times_loses_nothing() {
    let mut cluster = Cluster::start(3, fast_raft()).await;
    let nodes = directory(&cluster);
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (1..=4)
        .map(|client| tokio::spawn(writer(client, nodes.clone(), stop.clone())))
        .collect();
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let leader = cluster.wait_leader(Duration::from_secs(10)).await;
        nodes.write().remove(&leader);
        let killed_at = Instant::now();
        cluster.kill(leader).await;
        let new_leader = cluster.wait_leader(Duration::from_secs(10)).await;
        assert_ne!(new_leader, leader);
        // Election timeout is at most 600 ms here; allow scheduling slack.
        assert!(
            killed_at.elapsed() < Duration::from_secs(5),
            "failover took {:?}",
            killed_at.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
        cluster.start_node(leader).await;
        nodes.write().insert(leader, cluster.nodes[&leader].clone());
    }
    let acked = stop_and_check(&cluster, &stop, writers).await;
    let last = acked.iter().map(|(_, r, _)| *r).max().unwrap();
    cluster.wait_applied(last, Duration::from_secs(10)).await;
    cluster.assert_converged(Duration::from_secs(10)).await;
    cluster.shutdown().await;
}

/// The longest stretch without an acknowledged write from `from` on.
fn longest_pause(acked: &Acked, from: Instant) -> Duration {
    let mut times: Vec<Instant> = acked.iter().map(|a| a.2).filter(|t| *t >= from).collect();
    times.sort();
    let mut longest = times.first().map_or(Duration::MAX, |t| *t - from);
    for pair in times.windows(2) {
        longest = longest.max(pair[1] - pair[0]);
    }
    longest
}

/// A planned hand-over to a member that was just restarted and is
/// thousands of entries behind: the leader lets it catch up first (writes
/// go on meanwhile), then hands over with a short pause, with default
/// timeouts; nothing acknowledged is lost or applied twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hand_over_to_a_lagging_just_restarted_member_pauses_writes_briefly() {
    let mut cluster = Cluster::start(3, ferry_replication::RaftOptions::default()).await;
    let nodes = directory(&cluster);
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (1..=16)
        .map(|client| tokio::spawn(writer(client, nodes.clone(), stop.clone())))
        .collect();
    let leader_id = cluster.wait_leader(Duration::from_secs(10)).await;
    let target = *cluster.nodes.keys().find(|&&id| id != leader_id).unwrap();
    nodes.write().remove(&target);
    cluster.kill(target).await;
    // The target misses 10 000 entries.
    let leader = cluster.nodes[&leader_id].clone();
    let behind = leader.metrics().last_log_index.unwrap() + 10_000;
    let deadline = Instant::now() + Duration::from_secs(60);
    while leader.metrics().last_log_index.unwrap() < behind {
        assert!(Instant::now() < deadline, "writers stalled");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    cluster.start_node(target).await;
    nodes.write().insert(target, cluster.nodes[&target].clone());
    let started = Instant::now();
    leader
        .transfer_leadership(target, Duration::from_secs(30))
        .await
        .unwrap();
    let handed_over = Instant::now();
    assert_eq!(cluster.wait_leader(Duration::from_secs(10)).await, target);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let acked = stop_and_check(&cluster, &stop, writers).await;
    // Writes went on while the target caught up, and resumed soon after
    // the hand-over. 50 ms is the target on an idle machine
    // (`ferry-bench failover`); 1 s leaves room for a loaded one. Handed
    // over at once, the target would first fetch and flush 10 000 entries
    // while the old leader takes no writes.
    let pause = longest_pause(&acked, started);
    eprintln!(
        "caught up and handed over in {:?}; longest pause {pause:?}",
        handed_over - started
    );
    assert!(pause < Duration::from_secs(1), "writes paused {pause:?}");
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn five_nodes_survive_partitions_and_lost_answers() {
    let cluster = Cluster::start(5, fast_raft()).await;
    let nodes = directory(&cluster);
    let ids: Vec<u64> = cluster.nodes.keys().copied().collect();
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (1..=3)
        .map(|client| tokio::spawn(writer(client, nodes.clone(), stop.clone())))
        .collect();

    // 1. Answers from a follower to the leader are lost: the leader must
    //    still commit through the other three.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let leader = cluster.wait_leader(Duration::from_secs(10)).await;
    let follower = *ids.iter().find(|&&id| id != leader).unwrap();
    cluster.network.cut(follower, leader);
    tokio::time::sleep(Duration::from_millis(500)).await;
    cluster.network.heal();

    // 2. The leader is isolated: the majority elects another; the old
    //    leader cannot commit anything.
    let old = cluster.wait_leader(Duration::from_secs(10)).await;
    cluster.network.isolate(old, ids.iter().copied());
    let new_leader = cluster.wait_new_leader(old, Duration::from_secs(10)).await;
    assert_ne!(new_leader, old);
    let stranded = tokio::time::timeout(
        Duration::from_millis(800),
        cluster.nodes[&old].put("stranded", "x"),
    )
    .await;
    assert!(
        !matches!(stranded, Ok(Ok(_))),
        "an isolated leader committed a write"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;

    // 3. Slow links: every message from the leader to two followers is
    //    delayed; the leader keeps committing with the fast majority.
    cluster.network.heal();
    let leader = cluster.wait_leader(Duration::from_secs(10)).await;
    for &slow in ids.iter().filter(|&&id| id != leader).take(2) {
        cluster
            .network
            .delay(leader, slow, Duration::from_millis(150));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    cluster.network.heal();

    // 4. A minority (two nodes) is cut off in one direction only.
    cluster.network.heal();
    let leader = cluster.wait_leader(Duration::from_secs(10)).await;
    let minority: Vec<u64> = ids
        .iter()
        .copied()
        .filter(|&id| id != leader)
        .take(2)
        .collect();
    for &m in &minority {
        cluster.network.cut(leader, m);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    cluster.network.heal();

    let acked = stop_and_check(&cluster, &stop, writers).await;
    let leader = cluster.wait_leader(Duration::from_secs(10)).await;
    let read = cluster.nodes[&leader]
        .get("stranded", Consistency::Linearizable)
        .await
        .unwrap();
    assert!(read.value.is_none(), "the isolated leader's write surfaced");
    let last = acked.iter().map(|(_, r, _)| *r).max().unwrap();
    cluster.wait_applied(last, Duration::from_secs(10)).await;
    cluster.assert_converged(Duration::from_secs(10)).await;
    cluster.shutdown().await;
}

/// A write the old leader appended and a new leader's log then replaced
/// may still commit elsewhere in general: it is reported as of unknown
/// outcome (the SDK retries it under its request id), never as "not the
/// leader", which tells a caller nothing was written and invites a resend.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_write_a_new_leaders_log_replaced_is_of_unknown_outcome() {
    let cluster = Cluster::start(3, fast_raft()).await;
    let old = cluster.wait_leader(Duration::from_secs(10)).await;
    let leader = cluster.nodes[&old].clone();
    leader.put("a", "1").await.unwrap();
    cluster.network.isolate(old, cluster.nodes.keys().copied());
    // Proposed at once, while the cut-off leader's lease still runs: it is
    // appended there and never reaches a quorum.
    let pending = tokio::spawn({
        let leader = leader.clone();
        async move { leader.put("b", "2").await }
    });
    let new = cluster.wait_new_leader(old, Duration::from_secs(10)).await;
    cluster.nodes[&new].put("c", "3").await.unwrap();
    cluster.network.heal();
    let result = tokio::time::timeout(Duration::from_secs(20), pending)
        .await
        .expect("the discarded write was answered")
        .unwrap();
    assert!(
        matches!(&result, Err(error) if ferry_replication::is_outcome_unknown(error)),
        "{result:?}"
    );
    cluster.shutdown().await;
}

/// A compaction sent to a member behind the leader, of a revision the
/// leader committed, waits until that member has applied it: the revision
/// is not "in the future" for the cluster.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_compaction_on_a_member_behind_waits_for_the_revision_it_names() {
    let cluster = Cluster::start(3, fast_raft()).await;
    let leader_id = cluster.wait_leader(Duration::from_secs(10)).await;
    let leader = cluster.nodes[&leader_id].clone();
    let (&behind, follower) = cluster
        .nodes
        .iter()
        .find(|(id, _)| **id != leader_id)
        .unwrap();
    leader.put("a", "1").await.unwrap();
    cluster
        .network
        .isolate(behind, cluster.nodes.keys().copied());
    let mut revision = 0;
    for i in 0..20 {
        revision = leader.put("a", i.to_string()).await.unwrap();
    }
    cluster.network.heal();
    let compacted = follower.compact_history_anywhere(revision).await;
    assert_eq!(compacted.unwrap(), revision);
    cluster.shutdown().await;
}
