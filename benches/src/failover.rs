//! The `failover` suite: recovery time when the leader dies, and the pause
//! of a planned leadership transfer, with three node processes on loopback
//! under a steady write load from the SDK.
//!
//! The nodes are this same binary re-executed as `ferry-bench serve-node`
//! (the `ferry serve` code, default settings). Each unplanned round
//! SIGKILLs the leader and measures the time from the kill until a write is
//! acknowledged again (RTO), then restarts the killed node from its data
//! directory and waits until it has caught up. Each planned round asks the
//! leader to hand over and measures the longest gap between acknowledged
//! writes around it. At the end every acknowledged write must be present
//! exactly once: `lost` and `duplicated` must be 0.
//!
//! Where the time goes: a poller asks every member every 5 ms whether it
//! leads. An unplanned round splits into `elect` (kill until a new leader
//! is seen: the silence, the lease, the vote) and `resume` (until the SDK
//! has a write acknowledged: finding the leader, its first commit); a
//! transfer into `hand_over` (the call until the target is seen leading,
//! including the wait for it to catch up, while writes go on) and
//! `first_write`. `pause` is the longest gap in the second after the call;
//! `hand_over_pause` the longest gap from the call until the new leader's
//! first acknowledged write: the part the hand-over itself causes.
//! `steady_pause` is the longest gap in the second before each transfer,
//! with no transfer: the stalls of the machine itself (a slow fsync on a
//! busy disk), which `pause` should be read against. `--cpu-hogs N` runs
//! N busy loops beside the cluster.

use crate::report::Row;
use ferry_client::{Client, ClientOptions};
use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Unplanned rounds (SIGKILL of the leader).
    #[arg(long, default_value_t = 20)]
    pub rounds: usize,
    /// Planned leadership transfers.
    #[arg(long, default_value_t = 20)]
    pub transfers: usize,
    /// Concurrent writing clients.
    #[arg(long, default_value_t = 8)]
    pub writers: usize,
    /// Busy-looping neighbour processes running beside the cluster for
    /// the whole run (a loaded machine).
    #[arg(long, default_value_t = 0)]
    pub cpu_hogs: usize,
    #[command(flatten)]
    pub output: crate::report::Output,
}

/// Runs one node in this process (`ferry-bench serve-node`), for the suite's children.
#[derive(Debug, clap::Args)]
pub struct NodeArgs {
    #[arg(long)]
    pub id: u64,
    #[arg(long)]
    pub data_dir: std::path::PathBuf,
    #[arg(long)]
    pub client_addr: String,
    #[arg(long)]
    pub raft_addr: String,
    #[arg(long = "peer")]
    pub peers: Vec<String>,
    #[arg(long)]
    pub init: bool,
    /// HTTP address of /metrics ("" = none).
    #[arg(long, default_value = "")]
    pub metrics_addr: String,
    /// Keep every revision's history (no automatic compaction).
    #[arg(long)]
    pub keep_history: bool,
    /// Serve with TLS on the client port and mutual TLS between members,
    /// with the certificates `ferry certs` made in this directory.
    #[arg(long)]
    pub tls_dir: Option<std::path::PathBuf>,
}

pub fn serve_node(args: &NodeArgs) {
    if std::env::var_os("FERRY_BENCH_DEBUG").is_some() {
        // The node's log on the suite's stderr (RUST_LOG picks what).
        tracing_subscriber::fmt()
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_default_env()
                    .unwrap_or_else(|_| "info".into()),
            )
            .with_writer(std::io::stderr)
            .init();
    }
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async {
        let config = ferry_server::config::ServeConfig {
            id: args.id,
            data_dir: args.data_dir.clone(),
            client_addr: args.client_addr.clone(),
            raft_addr: args.raft_addr.clone(),
            metrics_addr: args.metrics_addr.clone(),
            peers: args.peers.clone(),
            init: args.init,
            join: !args.init,
            ..ferry_server::config::ServeConfig::default()
        };
        let config = match &args.tls_dir {
            Some(dir) => ferry_server::config::ServeConfig {
                tls: crate::secure::serve_tls(dir),
                ..config
            },
            None => config,
        };
        let config = if args.keep_history {
            ferry_server::config::ServeConfig {
                history_keep_revisions: 0,
                history_keep_secs: 0,
                ..config
            }
        } else {
            config
        };
        let server = ferry_server::server::Server::start(config)
            .await
            .expect("start node");
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("signal");
        term.recv().await;
        let _ = server.shutdown().await;
    });
}

///
/// Chosen at random below the kernel's ephemeral range
/// (`ip_local_port_range` starts at 32768): a port the kernel handed out
/// for `:0` and released can be taken by any outgoing connection (a
/// client's) before the node binds it, and the node then never starts (a
/// `cluster` run once measured Ferry with one of three members down). A
/// port is never handed out twice by one run.
pub(crate) fn free_addr() -> String {
    static TAKEN: std::sync::Mutex<std::collections::BTreeSet<u16>> =
        std::sync::Mutex::new(std::collections::BTreeSet::new());
    loop {
        let port = 20_000 + (rand::random::<u16>() % 12_000);
        if !TAKEN.lock().expect("not poisoned").insert(port) {
            continue;
        }
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return format!("127.0.0.1:{port}");
        }
    }
}

/// `ferry serve` processes (as `serve-node` children of this binary).
pub(crate) struct Nodes {
    pub(crate) root: tempfile::TempDir,
    /// Per node: client address, Raft address.
    pub(crate) addrs: BTreeMap<u64, (String, String)>,
    /// Per node: the metrics address.
    pub(crate) metrics: BTreeMap<u64, String>,
    pub(crate) children: BTreeMap<u64, Child>,
    /// `serve-node` flags every node gets.
    pub(crate) extra: Vec<String>,
}

impl Nodes {
    /// Nodes `1..=n` forming one cluster (node 1 initializes it).
    pub(crate) fn start(root: tempfile::TempDir, n: u64) -> Nodes {
        Self::start_with(root, n, Vec::new())
    }

    /// As [`Nodes::start`], every node also getting the `serve-node` flags `extra`.
    pub(crate) fn start_with(root: tempfile::TempDir, n: u64, extra: Vec<String>) -> Nodes {
        let mut nodes = Nodes {
            root,
            addrs: (1..=n).map(|id| (id, (free_addr(), free_addr()))).collect(),
            metrics: BTreeMap::new(),
            children: BTreeMap::new(),
            extra,
        };
        for id in 1..=n {
            nodes.spawn(id, id == 1);
        }
        nodes
    }

    /// Client addresses of the nodes.
    pub(crate) fn endpoints(&self) -> Vec<String> {
        self.addrs.values().map(|(c, _)| c.clone()).collect()
    }

    /// Starts node `id` (new nodes get fresh addresses); `init` forms the
    /// cluster of every node known now, else it waits to be added.
    pub(crate) fn spawn(&mut self, id: u64, init: bool) {
        self.addrs
            .entry(id)
            .or_insert_with(|| (free_addr(), free_addr()));
        let (client, raft) = self.addrs[&id].clone();
        let metrics = self.metrics.entry(id).or_insert_with(free_addr).clone();
        let mut command = Command::new(std::env::current_exe().expect("own path"));
        command
            .arg("serve-node")
            .args(["--id", &id.to_string()])
            .arg("--data-dir")
            .arg(self.root.path().join(format!("node-{id}")))
            .args(["--client-addr", &client, "--raft-addr", &raft])
            .args(["--metrics-addr", &metrics])
            .args(&self.extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(if std::env::var_os("FERRY_BENCH_DEBUG").is_some() {
                Stdio::inherit()
            } else {
                Stdio::null()
            });
        if init {
            command.arg("--init");
            for (peer, (c, r)) in &self.addrs {
                if *peer != id {
                    command.args(["--peer", &format!("{peer}={r}@{c}")]);
                }
            }
        }
        self.children
            .insert(id, command.spawn().expect("spawn node"));
    }

    pub(crate) fn kill(&mut self, id: u64) {
        if let Some(mut child) = self.children.remove(&id) {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Nodes {
    fn drop(&mut self) {
        for (_, mut child) in std::mem::take(&mut self.children) {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn percentile(values: &mut [f64], p: f64) -> f64 {
    values.sort_by(|a, b| a.total_cmp(b));
    if values.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * values.len() as f64).ceil() as usize;
    values[rank.clamp(1, values.len()) - 1]
}

/// Acknowledged writes: when sent, when acknowledged, key, revision.
type Log = Arc<Mutex<Vec<(Instant, Instant, String, u64)>>>;

/// Leaders as the poller saw them: when a member first said it leads, in
/// a term higher than any seen before; (time, node, term).
type Leaders = Arc<Mutex<Vec<(Instant, u64, u64)>>>;

/// How long after a transfer call its pause is looked for, and how long
/// the window without a transfer it is compared with.
const TRANSFER_WINDOW: Duration = Duration::from_millis(1000);

/// How often [`watch_leaders`] asks every member whether it leads: the
/// resolution of the per-phase times.
const LEADER_POLL: Duration = Duration::from_millis(5);

/// Asks every member for its status every [`LEADER_POLL`] until `stop`,
/// recording each new leader.
fn watch_leaders(nodes: &Nodes, stop: Arc<AtomicBool>) -> (Leaders, tokio::task::JoinHandle<()>) {
    let leaders: Leaders = Arc::default();
    let members: Vec<(u64, ferry_client::pb::cluster_client::ClusterClient<_>)> = nodes
        .addrs
        .iter()
        .map(|(id, (client_addr, _))| {
            let channel = tonic::transport::Endpoint::from_shared(format!("http://{client_addr}"))
                .expect("endpoint")
                .connect_timeout(Duration::from_millis(50))
                .connect_lazy();
            (
                *id,
                ferry_client::pb::cluster_client::ClusterClient::new(channel),
            )
        })
        .collect();
    let seen = leaders.clone();
    let task = tokio::spawn(async move {
        let mut highest = 0;
        while !stop.load(Ordering::Relaxed) {
            let polls = members.iter().map(|(id, member)| {
                let mut member = member.clone();
                async move {
                    let asked = member.status(ferry_client::pb::StatusRequest {});
                    match tokio::time::timeout(Duration::from_millis(50), asked).await {
                        Ok(Ok(status)) => Some((*id, status.into_inner())),
                        _ => None,
                    }
                }
            });
            for (id, status) in futures_util::future::join_all(polls)
                .await
                .into_iter()
                .flatten()
            {
                if status.role == "leader" && status.term > highest {
                    highest = status.term;
                    seen.lock()
                        .expect("lock")
                        .push((Instant::now(), id, status.term));
                }
            }
            tokio::time::sleep(LEADER_POLL).await;
        }
    });
    (leaders, task)
}

/// When, after `since`, a member other than `old` was first seen leading.
fn new_leader_after(leaders: &Leaders, since: Instant, old: u64) -> Option<Instant> {
    leaders
        .lock()
        .expect("lock")
        .iter()
        .find(|(at, id, _)| *at > since && *id != old)
        .map(|(at, ..)| *at)
}

/// The first acknowledgement at or after `since` (of any write).
fn first_ack_at_or_after(log: &Log, since: Instant) -> Option<Instant> {
    log.lock()
        .expect("lock")
        .iter()
        .map(|(_, acked, ..)| *acked)
        .filter(|acked| *acked >= since)
        .min()
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Busy-looping `sh` processes, killed when dropped.
struct CpuHogs(Vec<Child>);

impl CpuHogs {
    fn start(n: usize) -> CpuHogs {
        CpuHogs(
            (0..n)
                .map(|_| {
                    Command::new("sh")
                        .args(["-c", "while :; do :; done"])
                        .stdin(Stdio::null())
                        .spawn()
                        .expect("start a CPU hog")
                })
                .collect(),
        )
    }
}

impl Drop for CpuHogs {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

pub fn run(args: &Args) -> Vec<Row> {
    crate::report::block_on(run_async(args))
}

async fn wait_caught_up(client: &Client, id: u64) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(status) = client.status().await {
            let member = status.members.iter().find(|m| m.id == id);
            if status.leader_id != 0 && member.is_some_and(|m| m.matched_index > 0 && m.lag < 100) {
                return;
            }
        }
        assert!(Instant::now() < deadline, "node {id} did not catch up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The leader: of the members that say they lead, the one with the highest
/// term (a deposed leader may not know it yet).
async fn current_leader(nodes: &Nodes) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut best: Option<(u64, u64)> = None;
        for (id, (client_addr, _)) in &nodes.addrs {
            if !nodes.children.contains_key(id) {
                continue;
            }
            let Ok(endpoint) =
                tonic::transport::Endpoint::from_shared(format!("http://{client_addr}"))
            else {
                continue;
            };
            let mut cluster =
                ferry_client::pb::cluster_client::ClusterClient::new(endpoint.connect_lazy());
            if let Ok(status) = cluster.status(ferry_client::pb::StatusRequest {}).await {
                let status = status.into_inner();
                if std::env::var_os("FERRY_BENCH_DEBUG").is_some() {
                    eprintln!(
                        "  node {id}: role {} term {} leader {}",
                        status.role, status.term, status.leader_id
                    );
                }
                if status.role == "leader" && best.is_none_or(|(term, _)| status.term > term) {
                    best = Some((status.term, *id));
                }
            }
        }
        if let Some((_, id)) = best {
            return id;
        }
        assert!(Instant::now() < deadline, "no member says it leads");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// How long after `since` the first write sent after `since` was
/// acknowledged (answers already in flight at `since` do not count).
fn first_ack_after(log: &Log, since: Instant) -> Option<Duration> {
    log.lock()
        .expect("lock")
        .iter()
        .filter(|(sent, ..)| *sent > since)
        .map(|(_, acked, ..)| *acked - since)
        .min()
}

/// The longest gap between acknowledgements within `[from, to]`, and
/// when it began (`from` itself, or an acknowledgement).
fn longest_gap(log: &Log, from: Instant, to: Instant) -> (Duration, Instant) {
    let mut times: Vec<Instant> = log
        .lock()
        .expect("lock")
        .iter()
        .map(|(_, acked, ..)| *acked)
        .filter(|t| *t >= from && *t <= to)
        .collect();
    times.sort();
    let mut gap = (times.first().map_or(to - from, |t| *t - from), from);
    for pair in times.windows(2) {
        if pair[1] - pair[0] > gap.0 {
            gap = (pair[1] - pair[0], pair[0]);
        }
    }
    gap
}

async fn run_async(args: &Args) -> Vec<Row> {
    let mut nodes = Nodes::start(args.output.work_dir(), 3);
    let endpoints = nodes.endpoints();
    // The SDK's default retry pauses: they are part of the recovery time.
    let options = ClientOptions {
        call_timeout: Duration::from_secs(30),
        ..ClientOptions::default()
    };
    // Wait for a leader, then connect with the suite's retry settings.
    connect(&endpoints).await;
    let client = Client::connect_with(endpoints.clone(), options.clone())
        .await
        .expect("connect");

    let log: Log = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let mut writers = Vec::new();
    for w in 0..args.writers {
        let (client, log, stop) = (client.clone(), log.clone(), stop.clone());
        writers.push(tokio::spawn(async move {
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let key = format!("failover/{w:02}/{i:08}");
                let sent = Instant::now();
                let revision = client
                    .put(key.clone(), vec![0x5a; 100])
                    .await
                    .expect("write within the deadline");
                log.lock()
                    .expect("lock")
                    .push((sent, Instant::now(), key, revision));
                i += 1;
            }
        }));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let _hogs = CpuHogs::start(args.cpu_hogs);
    let (leaders, poller) = watch_leaders(&nodes, stop.clone());

    let mut rto = Vec::new();
    // Per round: kill until a new leader is seen; from then until a write
    // is acknowledged.
    let (mut elect, mut resume) = (Vec::new(), Vec::new());
    for round in 0..args.rounds {
        let leader = current_leader(&nodes).await;
        let killed = Instant::now();
        nodes.kill(leader);
        let deadline = Instant::now() + Duration::from_secs(30);
        let delay = loop {
            if let Some(delay) = first_ack_after(&log, killed) {
                break delay;
            }
            assert!(
                Instant::now() < deadline,
                "no write acknowledged 30 s after the kill"
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        };
        rto.push(ms(delay));
        let elected = new_leader_after(&leaders, killed, leader).unwrap_or(killed + delay);
        let elected_after = elected.saturating_duration_since(killed).min(delay);
        elect.push(ms(elected_after));
        resume.push(ms(delay - elected_after));
        eprintln!(
            "round {round}: killed node {leader}, writes resumed after {:.0} ms (new leader seen after {:.0} ms, first write {:.0} ms later)",
            rto[rto.len() - 1],
            ms(elected_after),
            ms(delay - elected_after),
        );
        nodes.spawn(leader, false);
        wait_caught_up(&client, leader).await;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    let mut pauses = Vec::new();
    // Per transfer: the call until the target is seen leading (writes go
    // on while it catches up), and from then until a write is acknowledged.
    let (mut hand_over, mut first_write) = (Vec::new(), Vec::new());
    // Per transfer, the longest gap from the call until the new leader's
    // first acknowledged write.
    let mut hand_over_pauses = Vec::new();
    // Per transfer, the longest pause in a window as long without one just
    // before it: what the machine's own stalls (a slow fsync on a busy
    // disk, a descheduled process) give, for the pauses to be read against.
    let mut steady = Vec::new();
    for _ in 0..args.transfers {
        let quiet = Instant::now();
        tokio::time::sleep(TRANSFER_WINDOW).await;
        steady.push(ms(longest_gap(&log, quiet, Instant::now()).0));
        let leader = current_leader(&nodes).await;
        let target = nodes
            .addrs
            .keys()
            .copied()
            .find(|id| *id != leader)
            .expect("another member");
        let leader_addr = nodes.addrs[&leader].0.clone();
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{leader_addr}"))
            .expect("endpoint")
            .connect_lazy();
        let started = Instant::now();
        ferry_client::pb::cluster_client::ClusterClient::new(channel)
            .transfer_leader(ferry_client::pb::MemberRequest { id: target })
            .await
            .expect("transfer");
        tokio::time::sleep(TRANSFER_WINDOW).await;
        let (pause, pause_from) = longest_gap(&log, started, Instant::now());
        pauses.push(ms(pause));
        let elected = new_leader_after(&leaders, started, leader);
        let acked = elected.and_then(|at| first_ack_at_or_after(&log, at));
        let (to_leader, to_write) = match (elected, acked) {
            (Some(elected), Some(acked)) => (ms(elected - started), ms(acked - elected)),
            _ => (f64::NAN, f64::NAN),
        };
        // No new leader seen, or no write after it: the whole window.
        hand_over_pauses.push(match acked {
            Some(acked) => ms(longest_gap(&log, started, acked).0),
            None => ms(pause),
        });
        hand_over.push(to_leader);
        first_write.push(to_write);
        eprintln!(
            "transfer {}: node {leader} to node {target}, longest pause {:.1} ms from {:.1} ms after the call, {:.1} ms until the new leader's first write (target seen leading {to_leader:.1} ms after the call, first write {to_write:.1} ms later; {:.1} ms in the second before, without a transfer)",
            pauses.len(),
            ms(pause),
            ms(pause_from - started),
            hand_over_pauses[hand_over_pauses.len() - 1],
            steady[steady.len() - 1]
        );
        let _ = client.refresh_members().await;
    }

    stop.store(true, Ordering::Relaxed);
    for writer in writers {
        writer.await.expect("writer");
    }
    poller.await.expect("leader poller");
    let acked = log.lock().expect("lock").clone();
    // Read everything back in pages (a linearizable read per key would
    // take minutes) and compare.
    let mut stored = std::collections::HashMap::new();
    let mut request = ferry_client::pb::RangeRequest {
        prefix: b"failover/".to_vec(),
        ..Default::default()
    };
    loop {
        let page = client
            .range_request(request.clone())
            .await
            .expect("read back");
        for kv in page.kvs {
            stored.insert(kv.key, (kv.mod_revision, kv.version));
        }
        match page.continuation {
            Some(token) => request.continuation = token,
            None => break,
        }
    }
    let (mut lost, mut duplicated) = (0u64, 0u64);
    for (_, _, key, revision) in &acked {
        match stored.get(key.as_bytes()) {
            None => lost += 1,
            Some((mod_revision, version)) if *version != 1 || mod_revision != revision => {
                duplicated += 1
            }
            Some(_) => {}
        }
    }
    eprintln!("{} writes acknowledged, read back", acked.len());
    let system = match args.cpu_hogs {
        0 => "ferry".to_owned(),
        n => format!("ferry+{n}-cpu-hogs"),
    };
    let (mut hand_over, mut first_write): (Vec<f64>, Vec<f64>) = (
        hand_over.into_iter().filter(|v| !v.is_nan()).collect(),
        first_write.into_iter().filter(|v| !v.is_nan()).collect(),
    );
    vec![
        Row::new(&system, "unplanned")
            .with("rto_p50_ms", percentile(&mut rto, 50.0))
            .with("rto_p99_ms", percentile(&mut rto, 99.0))
            .with("rto_max_ms", percentile(&mut rto, 100.0))
            .with("elect_p50_ms", percentile(&mut elect, 50.0))
            .with("elect_p99_ms", percentile(&mut elect, 99.0))
            .with("resume_p50_ms", percentile(&mut resume, 50.0))
            .with("resume_p99_ms", percentile(&mut resume, 99.0))
            .with("lost", lost as f64)
            .with("duplicated", duplicated as f64)
            .with("rounds", args.rounds as f64)
            .with("acked_writes", acked.len() as f64),
        Row::new(&system, "planned")
            .with("pause_p50_ms", percentile(&mut pauses, 50.0))
            .with("pause_p99_ms", percentile(&mut pauses, 99.0))
            .with("pause_max_ms", percentile(&mut pauses, 100.0))
            .with(
                "hand_over_pause_p50_ms",
                percentile(&mut hand_over_pauses, 50.0),
            )
            .with(
                "hand_over_pause_p99_ms",
                percentile(&mut hand_over_pauses, 99.0),
            )
            .with("hand_over_p50_ms", percentile(&mut hand_over, 50.0))
            .with("hand_over_p99_ms", percentile(&mut hand_over, 99.0))
            .with("first_write_p50_ms", percentile(&mut first_write, 50.0))
            .with("first_write_p99_ms", percentile(&mut first_write, 99.0))
            .with("steady_pause_p50_ms", percentile(&mut steady, 50.0))
            .with("steady_pause_p99_ms", percentile(&mut steady, 99.0))
            .with("rounds", args.transfers as f64),
    ]
}

/// `recovery`'s `node-restart` workload: SIGKILL a node holding `bytes`
/// of state and time its restart until it serves a linearizable read.
pub fn node_restart(bytes: u64, output: &crate::report::Output) -> Row {
    crate::report::block_on(async {
        let mut nodes = Nodes::start(output.work_dir(), 1);
        let endpoint = vec![nodes.addrs[&1].0.clone()];
        let client = connect(&endpoint).await;
        const VALUE: usize = 1024;
        const PER_TXN: u64 = 128;
        let keys = (bytes / VALUE as u64).max(PER_TXN);
        let started = Instant::now();
        let mut tasks = tokio::task::JoinSet::new();
        for first in (0..keys).step_by(PER_TXN as usize) {
            if tasks.len() >= 8 {
                tasks.join_next().await.expect("task").expect("load");
            }
            let client = client.clone();
            tasks.spawn(async move {
                let mut txn = ferry_client::Txn::new();
                for i in first..(first + PER_TXN).min(keys) {
                    let mut value = vec![0u8; VALUE];
                    value[..8].copy_from_slice(&i.to_le_bytes());
                    txn = txn.then_put(format!("restart/{i:012}"), value);
                }
                client.txn(txn).await.expect("load write");
            });
        }
        while let Some(done) = tasks.join_next().await {
            done.expect("load");
        }
        eprintln!(
            "node-restart: loaded {} MiB through the SDK in {:.1} s",
            (keys * VALUE as u64) >> 20,
            started.elapsed().as_secs_f64()
        );
        nodes.kill(1);
        let started = Instant::now();
        nodes.spawn(1, false);
        let last = format!("restart/{:012}", keys - 1);
        let options = ClientOptions {
            call_timeout: Duration::from_secs(120),
            backoff_initial: Duration::from_millis(2),
            backoff_max: Duration::from_millis(20),
            ..ClientOptions::default()
        };
        loop {
            if let Ok(client) = Client::connect_with(endpoint.clone(), options.clone()).await {
                if let Ok(Some(_)) = client.get(last.clone()).await {
                    break;
                }
            }
            assert!(
                started.elapsed() < Duration::from_secs(300),
                "the node did not come back"
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let seconds = started.elapsed().as_secs_f64();
        Row::new("ferry", "node-restart")
            .with("state_bytes", (keys * VALUE as u64) as f64)
            .with("seconds", seconds)
    })
}

/// Connects once a leader is known.
pub(crate) async fn connect(endpoints: &[String]) -> Client {
    connect_with(endpoints, ClientOptions::default()).await
}

/// As [`connect`], with `options` (their call timeout raised to 60 s).
pub(crate) async fn connect_with(endpoints: &[String], options: ClientOptions) -> Client {
    let options = ClientOptions {
        call_timeout: Duration::from_secs(60),
        ..options
    };
    loop {
        if let Ok(client) = Client::connect_with(endpoints.to_vec(), options.clone()).await {
            if client.leader().is_some() {
                return client;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
