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
//! rows). `ship-cost` then measures what shipping costs writers, on a
//! server of its own with [`SHIP_COST_KEYS`] keys (a fresh, small LSM, so
//! that the big node's compactions do not drown a cost of a few percent):
//! 64 SDK clients over 16 connections put for `SHIP_COST_SECONDS` each
//! through a `ferry serve` server with no shipper and with an S3 shipper
//! shipping the log every second (after its first checkpoint, which is
//! shipped before), in alternating windows. It reports put throughput
//! both ways, and the CPU the shipper itself used (its rounds and its S3
//! client's threads, as `BackupStatus` counts it) as a share of the
//! server's CPU in the windows it shipped in. The clients run in this
//! process on a runtime of their own, whose threads are counted apart, so
//! the server's CPU is the process's less theirs. The S3 server runs on
//! the same machine, so its CPU is reported too; a real object store's is
//! not the node's to pay.

use crate::report::Row;
use crate::transfer::{key, load};
use ferry_replication::backup::{
    cpu::ThreadSet, restore, BackupOptions, BackupShipper, BackupTarget, LocalDir, RestorePoint,
};
use ferry_replication::types::{FerryNode, Op};
use ferry_replication::{Node, NodeConfig};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

const WRITERS: u64 = 64;
/// Connections the `ship-cost` writers share, as in the `cluster` suite.
const CONNECTIONS: usize = 16;
const SHIP_COST_SECONDS: u64 = 6;
/// The key space `ship-cost` overwrites (1 KiB values: 64 MiB).
const SHIP_COST_KEYS: u64 = 64 << 10;
/// Whether `ship-cost` ships in each window: ABBA four times, so that a
/// drift linear in time (the LSM filling up) falls equally on both, and
/// the engine's bursts of background work (flushes, compactions) average
/// out.
const WINDOWS: [bool; 16] = [
    false, true, true, false, false, true, true, false, false, true, true, false, false, true,
    true, false,
];

#[path = "../../replication/tests/common/s3.rs"]
mod s3;

pub fn run(bytes: u64, log_entries: u64, output: &crate::report::Output) -> Vec<Row> {
    crate::report::block_on(run_async(bytes, log_entries, output))
}

/// A new single-node cluster in `dir`, leading. Its log is kept far behind
/// snapshots: log written while no shipper runs (between the first
/// checkpoints and the log round, or in ship-cost's windows without one)
/// must still be there when shipping resumes, as it would be with a
/// shipper running all along (otherwise the next round ships a checkpoint).
async fn single_node(dir: std::path::PathBuf) -> Arc<Node> {
    let mut config = NodeConfig::new(1, dir, "127.0.0.1:0".parse().unwrap());
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
    node
}

async fn run_async(bytes: u64, log_entries: u64, output: &crate::report::Output) -> Vec<Row> {
    let root = output.work_dir();
    let node = single_node(root.path().join("node")).await;
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
    node.shutdown().await.expect("shutdown");
    drop(node);
    let mut rows = ship_cost(
        root.path().join("ship-cost-node"),
        server.target("bench/ship-cost"),
        server.pid(),
    )
    .await;

    for ((system, chain), (_, checkpoint_bytes, checkpoint_seconds)) in
        chains.into_iter().zip(shipped_checkpoints)
    {
        let started = Instant::now();
        let report = restore(
            &ferry_engine::fs::OsFs::shared(),
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

/// What `ship-cost` adds up over the windows with, or without, shipping
/// (CPU in seconds).
#[derive(Debug, Default, Clone, Copy)]
struct Totals {
    puts: u64,
    seconds: f64,
    server_cpu: f64,
    s3_cpu: f64,
    shipper_cpu: f64,
}

/// Put throughput of 64 SDK clients writing through a `ferry serve`
/// server without a shipper and with one shipping to S3 every second, in
/// the windows of [`WINDOWS`], on a fresh node in `dir`; the CPU time per
/// put of the server, of the S3 server; and the shipper's own CPU as a
/// share of the server's. Server and clients share this process: the
/// clients run on a runtime of their own whose threads are counted, and
/// the server's CPU is the process's less theirs.
async fn ship_cost(dir: std::path::PathBuf, chain: Arc<dyn BackupTarget>, s3_pid: u32) -> Vec<Row> {
    let server = ferry_server::server::Server::start(ferry_server::config::ServeConfig {
        id: 1,
        data_dir: dir,
        client_addr: "127.0.0.1:0".into(),
        raft_addr: "127.0.0.1:0".into(),
        metrics_addr: String::new(),
        init: true,
        // Windows without a shipper: the log they write must still be
        // there when shipping resumes (see `single_node`).
        keep_after_snapshot: 4_000_000,
        ..ferry_server::config::ServeConfig::default()
    })
    .await
    .expect("start server");
    let node = server.node.clone();
    while !node.is_leader() {
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let keys = SHIP_COST_KEYS;
    load(&node, 0..keys, 0).await;
    let (clients_runtime, client_threads) =
        ThreadSet::runtime("ship-cost-client", 2).expect("client runtime");
    let endpoint = vec![server.client_addr.to_string()];
    let clients: Vec<ferry_client::Client> = clients_runtime
        .spawn(async move {
            let mut clients = Vec::new();
            for _ in 0..CONNECTIONS {
                let options = ferry_client::ClientOptions::default();
                clients.push(crate::failover::connect_with(&endpoint, options).await);
            }
            clients
        })
        .await
        .expect("clients");
    // The steady state is measured: log every second, the next checkpoint
    // (10 min away) outside the windows. The chain's first checkpoint is
    // shipped before them.
    let options = BackupOptions {
        log_interval: std::time::Duration::from_secs(1),
        ..BackupOptions::default()
    };
    let shipper = BackupShipper::new(node.clone(), chain.clone(), options);
    shipper.ship(true).await.expect("first checkpoint");
    // The shipper's CPU: its rounds' steps, and its S3 client's I/O threads.
    let steps_cpu = || shipper.status().cpu_ns.load(Ordering::Relaxed) as f64 / 1e9;
    let shipper_cpu = || steps_cpu() + chain.cpu_ns() as f64 / 1e9;
    // The server's CPU: this process's but the clients'.
    let server_cpu = || own_cpu_seconds() - client_threads.cpu_ns() as f64 / 1e9;
    // Per window: (shipping, puts/s); and totals without and with shipping.
    let mut windows = Vec::new();
    let mut totals = [Totals::default(); 2];
    for shipping in WINDOWS {
        if shipping {
            // The steady state: what the last window without a shipper
            // wrote is shipped before this one is timed.
            shipper.ship(false).await.expect("catch up");
        }
        let shipped_before = shipper.status().bytes_shipped.load(Ordering::Relaxed);
        let task = shipping.then(|| shipper.spawn());
        let (server_before, s3_before, shipper_before, steps_before) = (
            server_cpu(),
            process_cpu_seconds(s3_pid),
            shipper_cpu(),
            steps_cpu(),
        );
        let started = Instant::now();
        let until = started + std::time::Duration::from_secs(SHIP_COST_SECONDS);
        let writers: Vec<_> = (0..WRITERS)
            .map(|writer| {
                let client = clients[writer as usize % clients.len()].clone();
                clients_runtime.spawn(async move {
                    let mut done = 0u64;
                    while Instant::now() < until {
                        let i = writer + done * WRITERS;
                        let value = vec![(i % 251) as u8; 100];
                        client.put(key(i % keys), value).await.expect("put");
                        done += 1;
                    }
                    done
                })
            })
            .collect();
        let mut puts = 0;
        for writer in writers {
            puts += writer.await.expect("writer");
        }
        let seconds = started.elapsed().as_secs_f64();
        if let Some(task) = task {
            task.abort();
        }
        let (own, s3, shipping_cpu, steps) = (
            server_cpu() - server_before,
            process_cpu_seconds(s3_pid) - s3_before,
            shipper_cpu() - shipper_before,
            steps_cpu() - steps_before,
        );
        eprintln!(
            "ship-cost: shipping {shipping}: {:.0} puts/s, {:.1} us CPU per put ({:.1} the server, of which {:.2} the shipper, {:.2} of it its rounds; {:.1} the S3 server), {} bytes shipped",
            puts as f64 / seconds,
            (own + s3) * 1e6 / puts as f64,
            own * 1e6 / puts as f64,
            shipping_cpu * 1e6 / puts as f64,
            steps * 1e6 / puts as f64,
            s3 * 1e6 / puts as f64,
            shipper.status().bytes_shipped.load(Ordering::Relaxed) - shipped_before
        );
        windows.push((shipping, puts as f64 / seconds));
        let total = &mut totals[shipping as usize];
        total.puts += puts;
        total.seconds += seconds;
        total.server_cpu += own;
        total.s3_cpu += s3;
        total.shipper_cpu += shipping_cpu;
    }
    drop(clients);
    clients_runtime.shutdown_background();
    drop(node);
    server.shutdown().await.expect("shutdown");
    let ops = totals.map(|t| t.puts as f64 / t.seconds);
    let cpu = totals.map(|t| (t.server_cpu + t.s3_cpu) * 1e6 / t.puts as f64);
    let shipping = totals[1];
    // Each ABBA group's ratio: how far one group strays from the next
    // shows what the throughput ratio alone can resolve.
    let groups: Vec<f64> = windows
        .chunks(4)
        .map(|group| {
            let mean = |on: bool| {
                let rates: Vec<f64> = group.iter().filter(|w| w.0 == on).map(|w| w.1).collect();
                rates.iter().sum::<f64>() / rates.len() as f64
            };
            mean(true) / mean(false)
        })
        .collect();
    let fold = |f: fn(f64, f64) -> f64, start: f64| groups.iter().copied().fold(start, f);
    vec![
        Row::new("ferry", "put x64 (no backup)")
            .with("ops_per_sec", ops[0])
            .with("cpu_us_per_op", cpu[0])
            .with("seconds", totals[0].seconds),
        Row::new("ferry-shipping-s3", "put x64 (shipping to S3)")
            .with("ops_per_sec", ops[1])
            .with("cpu_us_per_op", cpu[1])
            .with(
                "shipper_cpu_share",
                shipping.shipper_cpu / shipping.server_cpu,
            )
            .with("s3_server_cpu_share", shipping.s3_cpu / shipping.server_cpu)
            .with("seconds", shipping.seconds),
        Row::new("ferry-shipping-s3/ferry", "put x64")
            .with("ratio", ops[1] / ops[0])
            .with("ratio_min", fold(f64::min, f64::INFINITY))
            .with("ratio_max", fold(f64::max, 0.0))
            .with("cpu_ratio", cpu[1] / cpu[0]),
    ]
}
