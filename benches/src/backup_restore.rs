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
//!
//! The same chain is shipped to a real S3 server on loopback (moto's,
//! installed from PyPI if missing) and restored from it too (`ferry-s3`
//! rows). `ship-cost` then measures what shipping costs writers: 64
//! writers for `SHIP_COST_SECONDS` each with no shipper and with an S3
//! shipper shipping the log every second (after its first checkpoint,
//! which is shipped before), in alternating windows, in the same node. The S3 server
//! runs on the same machine, so its CPU is part of the cost.

use crate::report::Row;
use crate::transfer::{key, load};
use ferry_replication::backup::{
    restore, BackupOptions, BackupShipper, BackupTarget, LocalDir, RestorePoint,
};
use ferry_replication::types::{FerryNode, Op};
use ferry_replication::{Node, NodeConfig};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

const WRITERS: u64 = 64;
const SHIP_COST_SECONDS: u64 = 10;
/// Whether `ship-cost` ships in each window: ABBA thrice, so that a drift
/// linear in time (the LSM filling up) falls equally on both, and the
/// engine's bursts of background work (flushes, compactions) average out.
const WINDOWS: [bool; 12] = [
    false, true, true, false, false, true, true, false, false, true, true, false,
];

#[path = "../../replication/tests/common/s3.rs"]
mod s3;

pub fn run(bytes: u64, log_entries: u64, output: &crate::report::Output) -> Vec<Row> {
    crate::report::block_on(run_async(bytes, log_entries, output))
}

async fn run_async(bytes: u64, log_entries: u64, output: &crate::report::Output) -> Vec<Row> {
    let root = output.work_dir();
    let mut config = NodeConfig::new(1, root.path().join("node"), "127.0.0.1:0".parse().unwrap());
    // `ship-cost` runs windows without a shipper: the log they write must
    // still be there when shipping resumes, as it would be with a shipper
    // running all along (otherwise the next round ships a checkpoint).
    config.raft.keep_after_snapshot = 4_000_000;
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
    let server = s3::MotoServer::start();
    let local: Arc<dyn BackupTarget> =
        Arc::new(LocalDir::new(root.path().join("chain")).expect("chain dir"));
    let chains = [("ferry", local), ("ferry-s3", server.target("bench/chain"))];
    let mut shipped_checkpoints = Vec::new();
    for (system, chain) in &chains {
        let shipper = BackupShipper::new(node.clone(), chain.clone(), BackupOptions::default());
        let started = Instant::now();
        let checkpoint_bytes = shipper
            .ship(true)
            .await
            .expect("ship checkpoint")
            .checkpoint
            .expect("a checkpoint")
            .new_bytes;
        let seconds = started.elapsed().as_secs_f64();
        eprintln!("backup-restore: {system}: checkpoint of {checkpoint_bytes} bytes shipped in {seconds:.1} s");
        shipped_checkpoints.push((shipper, checkpoint_bytes, seconds));
    }

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
    let writes_seconds = started.elapsed().as_secs_f64();
    for (shipper, _, _) in &shipped_checkpoints {
        let shipped = shipper.ship(false).await.expect("ship log");
        eprintln!(
            "backup-restore: {log_entries} writes in {writes_seconds:.1} s, shipped {} log entries",
            shipped.log_entries
        );
    }
    let mut rows = ship_cost(&node, server.target("bench/ship-cost"), keys, server.pid()).await;
    node.shutdown().await.expect("shutdown");
    drop(node);

    for ((system, chain), (_, checkpoint_bytes, checkpoint_seconds)) in
        chains.into_iter().zip(shipped_checkpoints)
    {
        let started = Instant::now();
        let report = restore(
            chain,
            RestorePoint::Latest,
            &root.path().join(format!("restored-{system}")),
            1,
            FerryNode::from("127.0.0.1:1".to_string()),
        )
        .await
        .expect("restore");
        let seconds = started.elapsed().as_secs_f64();
        eprintln!("backup-restore: {system}: {report:?} in {seconds:.2} s");
        rows.push(
            Row::new(system, "backup-restore")
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
                .with("mb_per_sec", report.bytes_fetched as f64 / 1e6 / seconds)
                .with("seconds", seconds),
        );
    }
    rows
}

/// CPU time used so far by this process (all its threads).
fn own_cpu_seconds() -> f64 {
    // SAFETY: getrusage only writes the struct it is given, which is
    // zeroed and owned here.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut usage);
        usage
    };
    let seconds = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    seconds(usage.ru_utime) + seconds(usage.ru_stime)
}

/// CPU time used so far by process `pid` (0 if it cannot be read).
fn process_cpu_seconds(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // Fields after the command name (which may hold spaces) in parentheses;
    // utime and stime are the 14th and 15th fields, in clock ticks.
    let Some((_, rest)) = stat.rsplit_once(')') else {
        return 0.0;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // SAFETY: sysconf reads a constant of the system.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    (ticks(11) + ticks(12)) / per_second
}

/// Put throughput of 64 writers without a shipper and with one shipping
/// to S3 every second, in the windows of [`WINDOWS`]; and the CPU time
/// per put of this process plus the S3 server's, which varies far less
/// than throughput on a machine whose engine bursts of background work
/// come and go.
async fn ship_cost(
    node: &Arc<Node>,
    chain: Arc<dyn BackupTarget>,
    keys: u64,
    s3_pid: u32,
) -> Vec<Row> {
    // The steady state is measured: log every second, the next checkpoint
    // (10 min away) outside the windows. The chain's first checkpoint is
    // shipped before them.
    let options = BackupOptions {
        log_interval: std::time::Duration::from_secs(1),
        ..BackupOptions::default()
    };
    let shipper = BackupShipper::new(node.clone(), chain, options);
    shipper.ship(true).await.expect("first checkpoint");
    // (puts, seconds, CPU seconds) without and with shipping.
    let mut totals = [(0u64, 0f64, 0f64); 2];
    for shipping in WINDOWS {
        if shipping {
            // The steady state: what the last window without a shipper
            // wrote is shipped before this one is timed.
            shipper.ship(false).await.expect("catch up");
        }
        let shipped_before = shipper.status().bytes_shipped.load(Ordering::Relaxed);
        let task = shipping.then(|| shipper.spawn());
        let (own_before, s3_before) = (own_cpu_seconds(), process_cpu_seconds(s3_pid));
        let started = Instant::now();
        let until = started + std::time::Duration::from_secs(SHIP_COST_SECONDS);
        let mut writers = tokio::task::JoinSet::new();
        for writer in 0..WRITERS {
            let node = node.clone();
            writers.spawn(async move {
                let mut done = 0u64;
                while Instant::now() < until {
                    let i = writer + done * WRITERS;
                    let op = Op::put(key(i % keys.max(1)), vec![(i % 251) as u8; 100]);
                    node.write(vec![op]).await.expect("write");
                    done += 1;
                }
                done
            });
        }
        let mut puts = 0;
        while let Some(done) = writers.join_next().await {
            puts += done.unwrap();
        }
        let seconds = started.elapsed().as_secs_f64();
        let (own, s3) = (
            own_cpu_seconds() - own_before,
            process_cpu_seconds(s3_pid) - s3_before,
        );
        let cpu = own + s3;
        if let Some(task) = task {
            task.abort();
        }
        eprintln!(
            "ship-cost: shipping {shipping}: {:.0} puts/s, {:.1} us CPU per put ({:.1} the node, {:.1} the S3 server), {} bytes shipped",
            puts as f64 / seconds,
            cpu * 1e6 / puts as f64,
            own * 1e6 / puts as f64,
            s3 * 1e6 / puts as f64,
            shipper.status().bytes_shipped.load(Ordering::Relaxed) - shipped_before
        );
        let total = &mut totals[shipping as usize];
        total.0 += puts;
        total.1 += seconds;
        total.2 += cpu;
    }
    let ops = totals.map(|(puts, seconds, _)| puts as f64 / seconds);
    let cpu = totals.map(|(puts, _, cpu)| cpu * 1e6 / puts as f64);
    vec![
        Row::new("ferry", "put x64 (no backup)")
            .with("ops_per_sec", ops[0])
            .with("cpu_us_per_op", cpu[0])
            .with("seconds", totals[0].1),
        Row::new("ferry-shipping-s3", "put x64 (shipping to S3)")
            .with("ops_per_sec", ops[1])
            .with("cpu_us_per_op", cpu[1])
            .with("seconds", totals[1].1),
        Row::new("ferry-shipping-s3/ferry", "put x64")
            .with("ratio", ops[1] / ops[0])
            .with("cpu_ratio", cpu[1] / cpu[0]),
    ]
}
