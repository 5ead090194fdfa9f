//! Snapshot shipping: learners catching up after the log was purged, a
//! differential transfer to a replica that already holds most of the
//! state, the fall-back to a full transfer, and resuming a cut transfer.

mod common;

use common::{fast_raft, Cluster};
use ferry_replication::types::Op;
use ferry_replication::{Consistency, Node, RaftOptions};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

fn snapshotting_raft() -> RaftOptions {
    RaftOptions {
        snapshot_after_entries: 100,
        keep_after_snapshot: 5,
        ..fast_raft()
    }
}

/// An incompressible 1 KiB value.
fn value(key: usize, tag: u8) -> Vec<u8> {
    let mut state = (key as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ tag as u64;
    (0..1024)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect()
}

/// Writes `keys` keys (1 KiB values) in batches through the leader,
/// retrying across leader changes; returns the last revision.
async fn load(cluster: &Cluster, keys: usize, tag: u8) -> u64 {
    let mut revision = 0;
    for chunk in (0..keys).collect::<Vec<_>>().chunks(50) {
        let ops: Vec<Op> = chunk
            .iter()
            .map(|&i| Op::put(format!("key-{i:06}").into_bytes(), value(i, tag)))
            .collect();
        revision = write(cluster, ops).await;
    }
    revision
}

async fn write(cluster: &Cluster, ops: Vec<Op>) -> u64 {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let id = cluster.wait_leader(Duration::from_secs(10)).await;
        match cluster.nodes[&id].write(ops.clone()).await {
            Ok(revision) => return revision,
            Err(error) => {
                assert!(
                    std::time::Instant::now() < deadline,
                    "write failed: {error}"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}

/// Size of the node's current snapshot.
async fn snapshot_bytes(node: &Node) -> u64 {
    let snapshot = node.raft().get_snapshot().await.unwrap().unwrap();
    snapshot.snapshot.manifest().total_bytes()
}

/// Snapshot now and purge the log behind it, on the leader.
async fn snapshot_and_purge(cluster: &Cluster) {
    common::snapshot_and_purge_log(cluster.leader().unwrap()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn learner_joins_by_snapshot_then_rejoins_differentially() {
    let mut cluster = Cluster::start(3, snapshotting_raft()).await;
    let leader_id = cluster.wait_leader(Duration::from_secs(10)).await;
    load(&cluster, 4000, 1).await;
    snapshot_and_purge(&cluster).await;

    // A new node can only catch up by snapshot: the log's head is gone.
    cluster.start_node(4).await;
    let addr = cluster.addrs[&4].clone();
    let leader = cluster.nodes[&leader_id].clone();
    // Writes go on while the snapshot is shipped and installed.
    let stop = Arc::new(AtomicBool::new(false));
    let background = {
        let (leader, stop) = (leader.clone(), stop.clone());
        tokio::spawn(async move {
            let mut acked = Vec::new();
            for i in 0.. {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let key = format!("during-{i:05}");
                if let Ok(revision) = leader.put(key.clone(), "x").await {
                    acked.push((key, revision));
                }
            }
            acked
        })
    };
    leader.add_learner(4, addr, true).await.unwrap();
    stop.store(true, Ordering::Relaxed);
    let during = background.await.unwrap();
    assert!(!during.is_empty());
    // Counted at the receiver: a follower that lagged behind the purge may
    // get a snapshot from the same leader meanwhile.
    let full_bytes = received(&cluster, 4);
    let snapshot_bytes = snapshot_bytes(&leader).await;
    assert!(
        full_bytes >= snapshot_bytes,
        "sent {full_bytes} of a {snapshot_bytes}-byte snapshot"
    );
    assert_eq!(
        full_bytes, snapshot_bytes,
        "node 4 received more than one snapshot"
    );
    leader.promote(4).await.unwrap();
    let last = leader.put("after-join", "1").await.unwrap();
    cluster.wait_applied(last, Duration::from_secs(10)).await;
    cluster.assert_converged(Duration::from_secs(10)).await;
    for (key, revision) in &during {
        let read = cluster.nodes[&4]
            .get(key, Consistency::Stale)
            .await
            .unwrap();
        assert_eq!(
            read.value.map(|kv| kv.mod_revision),
            Some(*revision),
            "{key}"
        );
    }

    // Node 4 goes away; 1% of the keys change and the log is purged again.
    cluster.kill(4).await;
    let leader = cluster.nodes[&leader_id].clone();
    for i in (0..4000).step_by(100) {
        let key = format!("key-{i:06}").into_bytes();
        write(&cluster, vec![Op::put(key, value(i, 2))]).await;
    }
    snapshot_and_purge(&cluster).await;
    cluster.start_node(4).await;
    let last = leader.put("after-rejoin", "1").await.unwrap();
    cluster.wait_applied(last, Duration::from_secs(20)).await;
    cluster.assert_converged(Duration::from_secs(10)).await;
    let differential = received(&cluster, 4);
    let reused = cluster.nodes[&4]
        .transfer_stats()
        .bytes_reused
        .load(Ordering::Relaxed);
    assert!(reused > 0, "the rejoining node reused nothing");
    assert!(
        differential * 5 < full_bytes,
        "differential transfer received {differential} bytes, the full one {full_bytes}"
    );
    let read = cluster.nodes[&4]
        .get("key-000100", Consistency::Stale)
        .await
        .unwrap();
    assert_eq!(read.value.unwrap().value, value(100, 2));
    cluster.shutdown().await;
}

/// Starts a cluster in which a follower installed the leader's snapshot
/// (its tables are then the leader's, which a differential transfer
/// reuses) and is stopped; returns the cluster, the leader and the follower.
async fn a_stopped_follower_holding_the_leaders_tables() -> (Cluster, u64, u64) {
    let mut cluster = Cluster::start(3, snapshotting_raft()).await;
    let leader_id = cluster.wait_leader(Duration::from_secs(10)).await;
    load(&cluster, 1000, 1).await;
    snapshot_and_purge(&cluster).await;
    let follower = *cluster.nodes.keys().find(|&&id| id != leader_id).unwrap();
    // The follower must have the snapshot's files: restart it after an install.
    cluster.kill(follower).await;
    load(&cluster, 1000, 3).await;
    snapshot_and_purge(&cluster).await;
    let leader = cluster.nodes[&leader_id].clone();
    cluster.start_node(follower).await;
    let last = leader.put("x", "y").await.unwrap();
    cluster.wait_applied(last, Duration::from_secs(20)).await;
    cluster.kill(follower).await;
    (cluster, leader_id, follower)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn state_hash_mismatch_falls_back_to_a_full_transfer() {
    let (mut cluster, leader_id, follower) = a_stopped_follower_holding_the_leaders_tables().await;
    // Change a little and lie about the state hash once.
    for i in 0..20 {
        let key = format!("key-{i:06}").into_bytes();
        write(&cluster, vec![Op::put(key, value(i, 4))]).await;
    }
    snapshot_and_purge(&cluster).await;
    let leader_node = cluster.nodes[&leader_id].clone();
    let hook = leader_transfer_hook(&cluster);
    hook.store(true, Ordering::Relaxed);
    cluster.start_node(follower).await;
    let last = leader_node.put("z", "w").await.unwrap();
    cluster.wait_applied(last, Duration::from_secs(20)).await;
    cluster.assert_converged(Duration::from_secs(10)).await;
    assert!(!hook.load(Ordering::Relaxed), "the hook was not used");
    let mismatches = cluster.nodes[&follower]
        .transfer_stats()
        .hash_mismatches
        .load(Ordering::Relaxed);
    assert_eq!(mismatches, 1);
    cluster.shutdown().await;
}

/// A table of the follower's own snapshot that rotted (its manifest still
/// names the old CRC) is reused by a differential transfer, fails the
/// check at its end, and the follower asks for everything: without that,
/// every retry linked it again and failed the same way.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rotten_local_table_makes_the_next_transfer_a_full_one() {
    let (mut cluster, leader_id, follower) = a_stopped_follower_holding_the_leaders_tables().await;
    let leader = cluster.nodes[&leader_id].clone();

    // Rot: every file of its snapshots gets one byte flipped, in a copy
    // renamed over it (the engine's hard links keep the good bytes).
    let snapshots = cluster.data_dir(follower).join("snapshots");
    let mut rotten = 0;
    for snapshot in std::fs::read_dir(&snapshots).unwrap().flatten() {
        if !snapshot.path().join("SNAPSHOT").exists() {
            continue;
        }
        for file in std::fs::read_dir(snapshot.path()).unwrap().flatten() {
            let path = file.path();
            if path.file_name().unwrap() == "SNAPSHOT" || !path.is_file() {
                continue;
            }
            let mut bytes = std::fs::read(&path).unwrap();
            if bytes.is_empty() {
                continue;
            }
            let middle = bytes.len() / 2;
            bytes[middle] ^= 0x55;
            let copy = path.with_extension("rot");
            std::fs::write(&copy, &bytes).unwrap();
            std::fs::rename(&copy, &path).unwrap();
            rotten += 1;
        }
    }
    assert!(
        rotten > 0,
        "no snapshot file to rot under {}",
        snapshots.display()
    );
    for i in 0..20 {
        let key = format!("key-{i:06}").into_bytes();
        write(&cluster, vec![Op::put(key, value(i, 4))]).await;
    }
    snapshot_and_purge(&cluster).await;
    cluster.start_node(follower).await;
    let last = leader.put("z", "w").await.unwrap();
    cluster.wait_applied(last, Duration::from_secs(60)).await;
    cluster.assert_converged(Duration::from_secs(10)).await;
    cluster.shutdown().await;
}

fn leader_transfer_hook(cluster: &Cluster) -> std::sync::Arc<std::sync::atomic::AtomicBool> {
    cluster.transfer.corrupt_next_state_hash.clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cut_transfer_resumes_where_it_stopped() {
    let mut cluster = Cluster::start(3, snapshotting_raft()).await;
    let leader_id = cluster.wait_leader(Duration::from_secs(10)).await;
    load(&cluster, 3000, 1).await;
    snapshot_and_purge(&cluster).await;
    // What an attempt at an older snapshot left: the new transfer takes
    // what it can reuse from it, then frees its space.
    let incoming = cluster.data_dir(4).join("incoming");
    let stale = incoming.join("9-stale");
    std::fs::create_dir_all(&stale).unwrap();
    std::fs::write(stale.join("000001.sst"), vec![1u8; 1 << 20]).unwrap();
    cluster.start_node(4).await;
    let leader = cluster.nodes[&leader_id].clone();
    // Cut the link once the transfer is under way, then heal it.
    let network = cluster.network.clone();
    let node4 = cluster.nodes[&4].clone();
    let cutter = tokio::spawn(async move {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while node4
            .transfer_stats()
            .bytes_received
            .load(Ordering::Relaxed)
            < 1 << 20
        {
            assert!(
                std::time::Instant::now() < deadline,
                "transfer never started"
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        network.cut(leader_id, 4);
        // Removed by the plan, before the first byte arrived.
        assert!(
            !stale.exists(),
            "the stale staging directory is still there"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
        network.heal();
    });
    leader
        .add_learner(4, cluster.addrs[&4].clone(), false)
        .await
        .unwrap();
    cutter.await.unwrap();
    let last = leader.put("done", "1").await.unwrap();
    cluster.wait_applied(last, Duration::from_secs(30)).await;
    cluster.assert_converged(Duration::from_secs(10)).await;
    let snapshot_bytes = snapshot_bytes(&leader).await;
    let received = received(&cluster, 4);
    assert!(
        received < snapshot_bytes + snapshot_bytes / 5,
        "received {received} bytes of a {snapshot_bytes}-byte snapshot: the transfer restarted"
    );
    cluster.shutdown().await;
}

/// A follower whose checks and install after the last chunk take longer
/// than the leader's idle timeout (a large snapshot read back) keeps the
/// leader waiting with progress replies: the first attempt installs, and
/// nothing is sent twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_slow_install_keeps_the_leader_waiting_instead_of_sending_again() {
    let idle = Duration::from_secs(2);
    let mut cluster =
        common::Cluster::start_configured(3, snapshotting_raft(), Default::default(), |cluster| {
            cluster.transfer.idle_timeout = idle
        })
        .await;
    let leader_id = cluster.wait_leader(Duration::from_secs(10)).await;
    load(&cluster, 1000, 1).await;
    snapshot_and_purge(&cluster).await;
    cluster.transfer.pause_before_install = idle * 3;
    cluster.start_node(4).await;
    let leader = cluster.nodes[&leader_id].clone();
    tokio::time::timeout(
        Duration::from_secs(60),
        leader.add_learner(4, cluster.addrs[&4].clone(), true),
    )
    .await
    .expect("the learner caught up within 60 s")
    .unwrap();
    let stats = leader.transfer_stats();
    assert_eq!(stats.failed_attempts.load(Ordering::Relaxed), 0);
    assert_eq!(stats.transfers.load(Ordering::Relaxed), 1);
    let snapshot_bytes = snapshot_bytes(&leader).await;
    let received = received(&cluster, 4);
    assert!(
        received <= snapshot_bytes,
        "received {received} bytes of a {snapshot_bytes}-byte snapshot"
    );
    cluster.shutdown().await;
}

/// Snapshot bytes node `id` received.
fn received(cluster: &Cluster, id: u64) -> u64 {
    cluster.nodes[&id]
        .transfer_stats()
        .bytes_received
        .load(Ordering::Relaxed)
}
