//! The `cluster` suite: a 3-node Ferry cluster side by side with a 3-member
//! etcd cluster, both on loopback and both fsyncing every commit.
//!
//! For each system and each client count (default 1, 64, 256): `put` of
//! 16-byte keys and 256-byte values (each key new), `overwrite` of random
//! keys written before, then linearizable `get` of keys written before,
//! each for `--seconds`. Both systems keep every revision's history. Clients are tasks spread
//! over at most 16 connections (SDK clients), the same for both systems.
//! Ferry runs as `ferry serve` processes (this binary re-executed as
//! `serve-node`) with default settings; the Ferry SDK is its client.
//!
//! First, two floors that a one-client put is read against, on the same
//! disk: `ferry-engine sync put`, one writer's synced puts into the engine
//! alone (one fdatasync each), and `floor replicated put`, the least a
//! 3-member quorum commit can take on this machine (see `floor.rs`).
//!
//! Each system's first row is `idle`: its servers' CPU over 3 s with the
//! clients connected and no calls (`cpu_percent`, of one core).
//!
//! Each row also gives the servers' CPU per operation (`cpu_us_per_op`,
//! all member processes) and the client's (`client_cpu_us_per_op`, this
//! process): on a small machine the client competes for the same cores.
//! `--systems` runs only the named ones.
//!
//! etcd runs when the bench is built with `--features etcd` (its client
//! crate, `etcd-client`, needs `protoc` to build: point `PROTOC` at one)
//! and an `etcd` binary is found (Debian: `apt install etcd-server`). The
//! same build also drives Ferry through etcd's client and Ferry's
//! etcd-compatible API (system `ferry-etcd-client`), compared with etcd in
//! a ratio table of its own.

use crate::failover::{connect_with, Nodes};
use crate::report::Row;
use hdrhistogram::Histogram;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Concurrent clients, comma-separated.
    #[arg(long, value_delimiter = ',', default_values_t = [1usize, 64, 256])]
    pub clients: Vec<usize>,
    /// Seconds each workload runs at each client count.
    #[arg(long, default_value_t = 5.0)]
    pub seconds: f64,
    /// Also run each system with TLS and authentication on (systems
    /// `ferry-tls` and `etcd-tls`): TLS on the client port, mutual TLS
    /// between members, clients logged in as root with a password.
    #[arg(long)]
    pub tls: bool,
    /// The etcd binary (with `--features etcd`).
    #[arg(long, default_value = "etcd")]
    pub etcd: String,
    /// Run only these systems (comma-separated: ferry, ferry-tls, etcd,
    /// etcd-tls, ferry-etcd-client); all by default. For profiling one.
    #[arg(long, value_delimiter = ',')]
    pub systems: Vec<String>,
    #[command(flatten)]
    pub output: crate::report::Output,
}

const VALUE_BYTES: usize = 256;
const MAX_CONNECTIONS: usize = 16;

/// What the load generator needs of a system's client.
pub(crate) trait KvClient: Clone + Send + Sync + 'static {
    fn put(&self, key: Vec<u8>, value: Vec<u8>) -> impl Future<Output = Result<(), String>> + Send;
    fn get(&self, key: Vec<u8>) -> impl Future<Output = Result<(), String>> + Send;
}

impl KvClient for ferry_client::Client {
    async fn put(&self, key: Vec<u8>, value: Vec<u8>) -> Result<(), String> {
        ferry_client::Client::put(self, key, value)
            .await
            .map(drop)
            .map_err(|e| e.to_string())
    }

    async fn get(&self, key: Vec<u8>) -> Result<(), String> {
        ferry_client::Client::get(self, key)
            .await
            .map(drop)
            .map_err(|e| e.to_string())
    }
}

/// A 16-byte key.
fn key(i: u64) -> Vec<u8> {
    format!("{i:016}").into_bytes()
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Workload {
    /// Puts of new keys.
    Put,
    /// Puts of random keys among those written before (the key space
    /// filled by `Put`).
    Overwrite,
    Get,
}

/// Runs `workload` from `clients` tasks over `pool` for `seconds`.
async fn drive<C: KvClient>(
    system: &str,
    pool: &[C],
    workload: Workload,
    clients: usize,
    seconds: f64,
    written: &Arc<AtomicU64>,
) -> Row {
    let deadline = Instant::now() + Duration::from_secs_f64(seconds);
    let readable = written.load(Ordering::Relaxed).max(1);
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for task in 0..clients {
        let client = pool[task % pool.len()].clone();
        let written = written.clone();
        tasks.spawn(async move {
            let mut latency = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("bounds");
            let mut errors = 0u64;
            let mut state = (task as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
            while Instant::now() < deadline {
                let sent = Instant::now();
                let result = match workload {
                    Workload::Put => {
                        let i = written.fetch_add(1, Ordering::Relaxed);
                        client.put(key(i), vec![(i % 251) as u8; VALUE_BYTES]).await
                    }
                    Workload::Overwrite => {
                        state ^= state << 13;
                        state ^= state >> 7;
                        state ^= state << 17;
                        client
                            .put(
                                key(state % readable),
                                vec![(state % 251) as u8; VALUE_BYTES],
                            )
                            .await
                    }
                    Workload::Get => {
                        state ^= state << 13;
                        state ^= state >> 7;
                        state ^= state << 17;
                        client.get(key(state % readable)).await
                    }
                };
                match result {
                    Ok(()) => latency.saturating_record(sent.elapsed().as_micros() as u64),
                    Err(error) => {
                        errors += 1;
                        if errors == 1 {
                            eprintln!("  error: {error}");
                        }
                    }
                }
            }
            (latency, errors)
        });
    }
    let mut latency = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("bounds");
    let mut errors = 0;
    while let Some(done) = tasks.join_next().await {
        let (histogram, failed) = done.expect("client task");
        latency.add(histogram).expect("same bounds");
        errors += failed;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let name = match workload {
        Workload::Put => "put",
        Workload::Overwrite => "overwrite",
        Workload::Get => "get",
    };
    let row = Row::new(system, name)
        .with("clients", clients as f64)
        .with("ops_per_sec", latency.len() as f64 / elapsed)
        .with("p50_us", latency.value_at_quantile(0.5) as f64)
        .with("p99_us", latency.value_at_quantile(0.99) as f64)
        .with("errors", errors as f64);
    eprintln!(
        "{system} {name} x{clients}: {:.0} ops/s, p99 {} us",
        latency.len() as f64 / elapsed,
        latency.value_at_quantile(0.99)
    );
    row
}

/// Every workload at every client count against one system whose server
/// processes are `pids`: each row also says how much CPU (user and system,
/// all server processes) an operation cost, a figure that moves less than
/// throughput when the shared machine is noisy.
async fn run_system<C: KvClient>(system: &str, pool: &[C], pids: &[u32], args: &Args) -> Vec<Row> {
    let written = Arc::new(AtomicU64::new(0));
    let mut rows = vec![idle(system, pids).await];
    for workload in [Workload::Put, Workload::Overwrite, Workload::Get] {
        for &clients in &args.clients {
            let me = [std::process::id()];
            let (before, client_before) = (cpu_seconds(pids), cpu_seconds(&me));
            let row = drive(system, pool, workload, clients, args.seconds, &written).await;
            let cpu = cpu_seconds(pids) - before;
            let client_cpu = cpu_seconds(&me) - client_before;
            let ops = row.get("ops_per_sec").unwrap_or(0.0) * args.seconds;
            let per_op = |seconds: f64| if ops > 0.0 { seconds * 1e6 / ops } else { 0.0 };
            // The client's own CPU competes with the servers' on a small
            // machine; it is the same client code for both systems.
            rows.push(
                row.with("cpu_us_per_op", per_op(cpu))
                    .with("client_cpu_us_per_op", per_op(client_cpu)),
            );
        }
    }
    rows
}

/// The servers' CPU while no client calls (connections open): what the
/// cluster costs its machine between bursts, from heartbeats and timers.
async fn idle(system: &str, pids: &[u32]) -> Row {
    const SECONDS: f64 = 3.0;
    // Let connection set-up and the first heartbeats settle.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = cpu_seconds(pids);
    tokio::time::sleep(Duration::from_secs_f64(SECONDS)).await;
    let percent = (cpu_seconds(pids) - before) / SECONDS * 100.0;
    eprintln!("{system} idle: {percent:.2}% of a core");
    Row::new(system, "idle").with("cpu_percent", percent)
}

/// CPU seconds (user and system) the processes `pids` have used so far.
pub(crate) fn cpu_seconds(pids: &[u32]) -> f64 {
    // SAFETY: sysconf with a valid name has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    pids.iter()
        .filter_map(|pid| std::fs::read_to_string(format!("/proc/{pid}/stat")).ok())
        .filter_map(|stat| {
            // Fields after the command name (which may hold spaces).
            let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
            let user: f64 = fields.get(11)?.parse().ok()?;
            let system: f64 = fields.get(12)?.parse().ok()?;
            Some((user + system) / ticks)
        })
        .sum()
}

fn connections(args: &Args) -> usize {
    args.clients
        .iter()
        .copied()
        .max()
        .unwrap_or(1)
        .clamp(1, MAX_CONNECTIONS)
}

pub fn run(args: &Args) -> Vec<Row> {
    crate::report::block_on(run_async(args))
}

async fn run_async(args: &Args) -> Vec<Row> {
    let chosen = |system: &str| args.systems.is_empty() || args.systems.iter().any(|s| s == system);
    let floor_dir = args.output.work_dir();
    let mut rows = vec![
        engine_sync_put(args),
        crate::floor::replicated_put(floor_dir.path(), 2000),
    ];
    drop(floor_dir);
    let modes: &[bool] = if args.tls { &[false, true] } else { &[false] };
    for &secure in modes {
        if chosen(if secure { "ferry-tls" } else { "ferry" }) {
            rows.extend(run_ferry(args, secure).await);
        }
    }
    for &secure in modes {
        if chosen(if secure { "etcd-tls" } else { "etcd" }) {
            rows.extend(etcd::run(args, secure).await);
        }
    }
    if chosen("ferry-etcd-client") {
        rows.extend(etcd::run_ferry_through_etcd_client(args).await);
    }
    rows
}

/// Synced puts of one writer into the engine alone, on the disk the
/// clusters use: one fdatasync each, the floor under a one-client put
/// (which needs the leader's and a follower's), measured in the same run.
fn engine_sync_put(args: &Args) -> Row {
    const PUTS: u64 = 2000;
    let root = args.output.work_dir();
    let engine = crate::adapter::open("ferry", root.path(), true);
    let mut histogram = Histogram::<u64>::new(3).expect("histogram");
    let started = Instant::now();
    for i in 0..PUTS {
        let put = Instant::now();
        engine.put(&key(i), &[0x5a; VALUE_BYTES], true);
        histogram
            .record(put.elapsed().as_micros() as u64)
            .expect("record");
    }
    one_client_row(
        Row::new("ferry-engine", "sync put"),
        "engine sync put x1",
        &histogram,
        PUTS,
        started.elapsed().as_secs_f64(),
    )
}

/// `row` with the figures of one client's `ops` operations in `seconds`
/// and their latencies in `histogram` (µs); printed as progress too.
pub(crate) fn one_client_row(
    row: Row,
    progress: &str,
    histogram: &Histogram<u64>,
    ops: u64,
    seconds: f64,
) -> Row {
    let (p50, p99) = (
        histogram.value_at_quantile(0.5),
        histogram.value_at_quantile(0.99),
    );
    eprintln!("{progress}: p50 {p50} us, p99 {p99} us");
    row.with("clients", 1.0)
        .with("ops_per_sec", ops as f64 / seconds)
        .with("p50_us", p50 as f64)
        .with("p99_us", p99 as f64)
}

/// A 3-node Ferry cluster under the workloads; `secure`: with TLS and
/// auth on (system `ferry-tls`).
async fn run_ferry(args: &Args, secure: bool) -> Vec<Row> {
    let root = args.output.work_dir();
    let pki = root.path().join("pki");
    let mut extra = Vec::new();
    if secure {
        crate::secure::create_pki(&pki);
        extra = vec!["--tls-dir".into(), pki.display().to_string()];
    }
    let nodes = Nodes::start_with(root, 3, extra);
    let endpoints = nodes.endpoints();
    let options = if secure {
        let first = connect_with(&endpoints, crate::secure::client_options(&pki, false)).await;
        crate::secure::enable_auth(&first).await;
        crate::secure::client_options(&pki, true)
    } else {
        ferry_client::ClientOptions::default()
    };
    let mut pool = Vec::new();
    for _ in 0..connections(args) {
        pool.push(connect_with(&endpoints, options.clone()).await);
    }
    let pids: Vec<u32> = nodes.children.values().map(|c| c.id()).collect();
    let system = if secure { "ferry-tls" } else { "ferry" };
    run_system(system, &pool, &pids, args).await
}

#[cfg(not(feature = "etcd"))]
mod etcd {
    pub async fn run(_: &super::Args, _secure: bool) -> Vec<crate::report::Row> {
        eprintln!("etcd: skipped (build ferry-bench with --features etcd; see the README)");
        Vec::new()
    }

    pub async fn run_ferry_through_etcd_client(_: &super::Args) -> Vec<crate::report::Row> {
        Vec::new()
    }
}

#[cfg(feature = "etcd")]
mod etcd {
    use super::{connections, run_system, Args, KvClient};
    use crate::etcd::Members;
    use crate::report::Row;

    impl KvClient for etcd_client::KvClient {
        async fn put(&self, key: Vec<u8>, value: Vec<u8>) -> Result<(), String> {
            let mut client = self.clone();
            etcd_client::KvClient::put(&mut client, key, value, None)
                .await
                .map(drop)
                .map_err(|e| e.to_string())
        }

        async fn get(&self, key: Vec<u8>) -> Result<(), String> {
            // etcd's default range is linearizable (no `serializable`).
            let mut client = self.clone();
            etcd_client::KvClient::get(&mut client, key, None)
                .await
                .map(drop)
                .map_err(|e| e.to_string())
        }
    }

    pub async fn run(args: &Args, secure: bool) -> Vec<Row> {
        let root = args.output.work_dir();
        let pki = root.path().join("pki");
        if secure {
            crate::secure::create_pki(&pki);
        }
        let Some(mut members) =
            Members::start_with(&args.etcd, root.path(), secure.then_some(pki.as_path()))
        else {
            return Vec::new();
        };
        if secure {
            members.enable_auth().await;
        }
        let mut pool = Vec::new();
        for client in members.clients(connections(args)).await {
            pool.push(client.kv_client());
        }
        let system = if secure { "etcd-tls" } else { "etcd" };
        let rows = run_system(system, &pool, &members.pids(), args).await;
        drop(members);
        rows
    }

    /// A 3-node Ferry cluster driven through etcd's client and Ferry's
    /// etcd-compatible API (system `ferry-etcd-client`): both systems
    /// measured with the same client. The client spreads calls over every
    /// member, as it does for etcd; followers hand writes to the leader.
    pub async fn run_ferry_through_etcd_client(args: &Args) -> Vec<Row> {
        let root = args.output.work_dir();
        let nodes = crate::failover::Nodes::start_with(root, 3, Vec::new());
        let endpoints = nodes.endpoints();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        // Every member up: etcd's client spreads calls over all of them.
        for endpoint in &endpoints {
            loop {
                if let Ok(mut one) = etcd_client::Client::connect([endpoint], None).await {
                    if one.status().await.is_ok_and(|s| s.leader() != 0) {
                        break;
                    }
                }
                assert!(
                    std::time::Instant::now() < deadline,
                    "Ferry member {endpoint} did not answer etcd's client"
                );
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            }
        }
        let mut pool = Vec::new();
        while pool.len() < connections(args) {
            match etcd_client::Client::connect(&endpoints, None).await {
                Ok(mut client) => {
                    if client.put("ready", "1", None).await.is_ok() {
                        pool.push(client.kv_client());
                        continue;
                    }
                }
                Err(error) => eprintln!("ferry through etcd-client: {error}"),
            }
            assert!(
                std::time::Instant::now() < deadline,
                "Ferry did not answer etcd's client"
            );
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
        let pids: Vec<u32> = nodes.children.values().map(|c| c.id()).collect();
        run_system("ferry-etcd-client", &pool, &pids, args).await
    }
}
