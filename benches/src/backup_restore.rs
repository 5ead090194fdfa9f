//! The `backup-restore` workload of the `recovery` suite: restoring a
//! node's state from a backup chain.
//!
//! A single-node cluster (in this process) is loaded with `--backup-bytes`
//! of state (16-byte keys, 1 KiB incompressible values), ships a
//! checkpoint to a backup directory on the same disk, then takes
//! `--backup-log-entries` single-key writes (100-byte values, 64 writers)
//! that it ships as log. `ferry backup restore` of the whole chain into a
//! fresh data directory is timed: fetching the checkpoint (copy and CRC
//! check of every file), replaying the log through the state machine, and
//! writing the new cluster's data directory. `entries_per_sec` is the log
//! replay rate.

use crate::report::Row;
use crate::transfer::{key, load};
use ferry_replication::backup::{restore, BackupOptions, BackupShipper, LocalDir, RestorePoint};
use ferry_replication::types::{FerryNode, Op};
use ferry_replication::{Node, NodeConfig};
use std::sync::Arc;
use std::time::Instant;

const WRITERS: u64 = 64;

pub fn run(bytes: u64, log_entries: u64, output: &crate::report::Output) -> Vec<Row> {
    crate::report::block_on(run_async(bytes, log_entries, output))
}

async fn run_async(bytes: u64, log_entries: u64, output: &crate::report::Output) -> Vec<Row> {
    let root = output.work_dir();
    let config = NodeConfig::new(1, root.path().join("node"), "127.0.0.1:0".parse().unwrap());
    let node = Arc::new(Node::open(config).await.expect("open node"));
    node.initialize(std::collections::BTreeMap::from([(
        1,
        node.raft_addr().to_string(),
    )]))
    .await
    .expect("initialize");
    while !node.is_leader() {
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let keys = bytes / 1024;
    let started = Instant::now();
    load(&node, 0..keys, 0).await;
    eprintln!(
        "backup-restore: loaded {keys} keys in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let chain = Arc::new(LocalDir::new(root.path().join("chain")).expect("chain dir"));
    let shipper = BackupShipper::new(node.clone(), chain.clone(), BackupOptions::default());
    let started = Instant::now();
    let checkpoint_bytes = shipper
        .ship(true)
        .await
        .expect("ship checkpoint")
        .checkpoint
        .expect("a checkpoint")
        .new_bytes;
    let checkpoint_seconds = started.elapsed().as_secs_f64();

    let started = Instant::now();
    let mut writers = tokio::task::JoinSet::new();
    for writer in 0..WRITERS {
        let node = node.clone();
        writers.spawn(async move {
            let mut i = writer;
            while i < log_entries {
                let op = Op::put(key(i % keys.max(1)), vec![(i % 251) as u8; 100]);
                node.write(vec![op]).await.expect("write");
                i += WRITERS;
            }
        });
    }
    while let Some(done) = writers.join_next().await {
        done.unwrap();
    }
    let shipped = shipper.ship(false).await.expect("ship log");
    eprintln!(
        "backup-restore: {log_entries} writes in {:.1} s, shipped {} log entries",
        started.elapsed().as_secs_f64(),
        shipped.log_entries
    );
    node.shutdown().await.expect("shutdown");
    drop(node);

    let started = Instant::now();
    let report = restore(
        chain,
        RestorePoint::Latest,
        &root.path().join("restored"),
        1,
        FerryNode::from("127.0.0.1:1".to_string()),
    )
    .await
    .expect("restore");
    let seconds = started.elapsed().as_secs_f64();
    eprintln!("backup-restore: {report:?} in {seconds:.2} s");
    vec![Row::new("ferry", "backup-restore")
        .with("state_bytes", checkpoint_bytes as f64)
        .with("checkpoint_ship_seconds", checkpoint_seconds)
        .with("log_entries", report.entries_replayed as f64)
        .with("bytes_fetched", report.bytes_fetched as f64)
        .with("fetch_seconds", report.fetch_seconds)
        .with("replay_seconds", report.replay_seconds)
        .with(
            "entries_per_sec",
            report.entries_replayed as f64 / report.replay_seconds,
        )
        .with("seconds", seconds)]
}
