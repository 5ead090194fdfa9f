//! The `transfer` suite: shipping replicated state to a node that needs it.
//!
//! A single-node cluster (the leader) is loaded with `--bytes` of state
//! through Raft (16-byte keys, 1 KiB incompressible values), compacted,
//! snapshotted, and its log purged, so that a new node can only catch up by
//! snapshot. Both nodes run in this process and talk gRPC over 127.0.0.1.
//!
//! - `full`: an empty node joins as a learner; time from `add_learner` until
//!   it holds the log up to that point (snapshot received, verified,
//!   installed).
//! - `differential`: that node is stopped, 1% of the keys are rewritten,
//!   the leader snapshots and purges again, and the node restarts: it
//!   already holds the tables of the first snapshot and receives only the
//!   rest (then proves the assembled state's checksum equals the leader's).
//!
//! `bytes_sent` is every snapshot frame byte the leader sent plus the
//! replies it received; `bytes_ratio` is relative to the full transfer.

use crate::report::Row;
use ferry_replication::types::Op;
use ferry_replication::{Node, NodeConfig, RaftOptions};
use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Bytes of state (values) to load.
    #[arg(long, default_value_t = 1 << 30)]
    pub bytes: u64,
    /// Share of keys rewritten before the differential transfer.
    #[arg(long, default_value_t = 0.01)]
    pub update_fraction: f64,
    #[command(flatten)]
    pub output: crate::report::Output,
}

const VALUE: usize = 1024;
const BATCH: u64 = 256;

pub(crate) fn key(i: u64) -> Vec<u8> {
    let mut key = vec![0u8; 16];
    key[8..].copy_from_slice(&i.to_be_bytes());
    key
}

pub(crate) fn value(i: u64, round: u64) -> Vec<u8> {
    let mut state = (i + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ round;
    (0..VALUE / 8)
        .flat_map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state.to_le_bytes()
        })
        .collect()
}

fn options(id: u64, dir: &std::path::Path) -> NodeConfig {
    let mut config = NodeConfig::new(
        id,
        dir.join(format!("node-{id}")),
        "127.0.0.1:0".parse().unwrap(),
    );
    config.raft = RaftOptions {
        // The bench decides when to snapshot; nothing is kept behind one,
        // so the joining node cannot catch up from the log.
        snapshot_after_entries: u64::MAX / 2,
        keep_after_snapshot: 0,
        ..RaftOptions::default()
    };
    config
}

/// Writes keys `keys` (value round `round`) through the leader, 4 batches in flight.
pub(crate) async fn load(leader: &Arc<Node>, keys: impl Iterator<Item = u64>, round: u64) {
    let keys: Vec<u64> = keys.collect();
    let mut tasks = tokio::task::JoinSet::new();
    for chunk in keys.chunks(BATCH as usize) {
        if tasks.len() >= 4 {
            tasks.join_next().await.unwrap().unwrap();
        }
        let ops: Vec<Op> = chunk
            .iter()
            .map(|&i| Op::put(key(i), value(i, round)))
            .collect();
        let leader = leader.clone();
        tasks.spawn(async move { leader.write(ops).await.expect("write") });
    }
    while let Some(done) = tasks.join_next().await {
        done.unwrap();
    }
}

async fn snapshot_and_purge(leader: &Node) -> u64 {
    let covered = leader
        .snapshot()
        .await
        .expect("snapshot")
        .expect("non-empty");
    leader.purge_log(covered.index).await.expect("purge");
    while leader
        .metrics()
        .purged
        .is_none_or(|p| p.index < covered.index)
    {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    leader
        .raft()
        .get_snapshot()
        .await
        .expect("get snapshot")
        .expect("snapshot")
        .snapshot
        .manifest()
        .total_bytes()
}

async fn wait_caught_up(leader: &Node, target: u64) -> f64 {
    let started = Instant::now();
    let index = leader.metrics().last_log_index.unwrap_or(0);
    leader
        .wait_replicated(target, index)
        .await
        .expect("catch up");
    started.elapsed().as_secs_f64()
}

pub fn run(args: &Args) -> Vec<Row> {
    crate::report::block_on(run_async(args))
}

async fn run_async(args: &Args) -> Vec<Row> {
    let root = args.output.work_dir();
    let keys = (args.bytes / VALUE as u64).max(BATCH);
    let leader = Arc::new(
        Node::open(options(1, root.path()))
            .await
            .expect("open leader"),
    );
    leader
        .initialize(BTreeMap::from([(1, leader.raft_addr().to_owned())]))
        .await
        .expect("initialize");
    while !leader.is_leader() {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let started = Instant::now();
    load(&leader, 0..keys, 0).await;
    eprintln!(
        "loaded {keys} keys ({} MiB) through Raft in {:.1} s",
        (keys * VALUE as u64) >> 20,
        started.elapsed().as_secs_f64()
    );
    leader.compact_engine().await.expect("compact");
    let snapshot_bytes = snapshot_and_purge(&leader).await;

    // (a) full transfer to an empty node.
    let target = Node::open(options(2, root.path()))
        .await
        .expect("open target");
    let target_addr = target.raft_addr().to_owned();
    let before = leader.transfer_stats().bytes_sent.load(Ordering::Relaxed);
    let started = Instant::now();
    leader
        .add_learner(2, target_addr.clone(), false)
        .await
        .expect("add learner");
    wait_caught_up(&leader, 2).await;
    let full_seconds = started.elapsed().as_secs_f64();
    let full_bytes = leader.transfer_stats().bytes_sent.load(Ordering::Relaxed) - before;
    let full = Row::new("ferry", "full")
        .with("seconds", full_seconds)
        .with("bytes_sent", full_bytes as f64)
        .with("bytes_ratio", 1.0)
        .with("snapshot_bytes", snapshot_bytes as f64)
        .with("mb_per_sec", snapshot_bytes as f64 / full_seconds / 1e6);
    target.shutdown().await.expect("stop target");
    drop(target);

    // (b) the node missed 1% of the updates and the log was purged.
    let updated = ((keys as f64 * args.update_fraction) as u64).max(1);
    let stride = (keys / updated).max(1);
    load(
        &leader,
        (0..keys).step_by(stride as usize).take(updated as usize),
        1,
    )
    .await;
    snapshot_and_purge(&leader).await;
    let before = leader.transfer_stats().bytes_sent.load(Ordering::Relaxed);
    let transfers_before = leader.transfer_stats().transfers.load(Ordering::Relaxed);
    let mut config = options(2, root.path());
    config.listen_addr = target_addr.parse().expect("address");
    let started = Instant::now();
    let target = Node::open(config).await.expect("reopen target");
    wait_caught_up(&leader, 2).await;
    let diff_seconds = started.elapsed().as_secs_f64();
    let diff_bytes = leader.transfer_stats().bytes_sent.load(Ordering::Relaxed) - before;
    let reused = target.transfer_stats().bytes_reused.load(Ordering::Relaxed);
    let (leader_state, target_state) = (leader.state_hash().expect("hash"), {
        let index = leader.metrics().last_applied;
        while target.metrics().last_applied < index {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        target.state_hash().expect("hash")
    });
    assert_eq!(
        leader_state, target_state,
        "replicas diverge after the differential transfer"
    );
    assert!(leader.transfer_stats().transfers.load(Ordering::Relaxed) > transfers_before);
    let differential = Row::new("ferry", "differential")
        .with("seconds", diff_seconds)
        .with("bytes_sent", diff_bytes as f64)
        .with("bytes_ratio", diff_bytes as f64 / full_bytes as f64)
        .with("bytes_reused", reused as f64)
        .with("updated_keys", updated as f64);
    target.shutdown().await.expect("stop target");
    leader.shutdown().await.expect("stop leader");
    vec![full, differential]
}
