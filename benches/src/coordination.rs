//! The `coordination` suite: locks, lease grants and lease renewals on a
//! 3-node Ferry cluster, side by side with a 3-member etcd cluster (its
//! `v3lock` service and lease API, through `etcd-client`) under the
//! `etcd` feature.
//!
//! Workloads, each for `--seconds`:
//! - `lock x1`: one client acquires and releases a lock in a loop
//!   (cycles/s; p50/p99 of a whole cycle);
//! - `lock x16`: sixteen clients contend for one lock: cycles/s, and the
//!   hand-off latency (from one holder's release returning to the next
//!   holder's acquire returning) as p50/p99;
//! - `grant x16`: lease grants from sixteen clients;
//! - `renew x64`: lease renewals from 64 clients, each renewing its own
//!   leases in turn: the renewals per second one cluster sustains is the
//!   number of leases it keeps alive at one renewal per second each.

use crate::failover::{connect, Nodes};
use crate::report::Row;
use hdrhistogram::Histogram;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Seconds each workload runs.
    #[arg(long, default_value_t = 5.0)]
    pub seconds: f64,
    /// The etcd binary (with `--features etcd`).
    #[arg(long, default_value = "etcd")]
    pub etcd: String,
    #[command(flatten)]
    pub output: crate::report::Output,
}

/// What the workloads need of a system's client.
pub(crate) trait Coord: Clone + Send + Sync + 'static {
    type Held: Send;
    fn grant(&self, ttl_secs: u64) -> impl Future<Output = Result<u64, String>> + Send;
    fn lock(
        &self,
        name: &str,
        lease: u64,
    ) -> impl Future<Output = Result<Self::Held, String>> + Send;
    fn unlock(&self, held: Self::Held) -> impl Future<Output = Result<(), String>> + Send;
    fn renew(&self, lease: u64) -> impl Future<Output = Result<(), String>> + Send;
}

impl Coord for ferry_client::Client {
    type Held = ferry_client::LockGuard;

    async fn grant(&self, ttl_secs: u64) -> Result<u64, String> {
        self.lease_grant(Duration::from_secs(ttl_secs))
            .await
            .map_err(|e| e.to_string())
    }

    async fn lock(&self, name: &str, lease: u64) -> Result<Self::Held, String> {
        ferry_client::Client::lock(self, name, lease)
            .await
            .map_err(|e| e.to_string())
    }

    async fn unlock(&self, held: Self::Held) -> Result<(), String> {
        ferry_client::Client::unlock(self, &held)
            .await
            .map_err(|e| e.to_string())
    }

    async fn renew(&self, lease: u64) -> Result<(), String> {
        self.lease_renew(lease)
            .await
            .map(drop)
            .map_err(|e| e.to_string())
    }
}

fn histogram() -> Histogram<u64> {
    Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("bounds")
}

fn row(
    system: &str,
    workload: &str,
    clients: usize,
    ops: u64,
    seconds: f64,
    latency: &Histogram<u64>,
) -> Row {
    eprintln!(
        "{system} {workload} x{clients}: {:.0} ops/s, p99 {} us",
        ops as f64 / seconds,
        latency.value_at_quantile(0.99)
    );
    Row::new(system, workload)
        .with("clients", clients as f64)
        .with("ops_per_sec", ops as f64 / seconds)
        .with("p50_us", latency.value_at_quantile(0.5) as f64)
        .with("p99_us", latency.value_at_quantile(0.99) as f64)
}

/// `clients` tasks each acquiring and releasing lock `name`. With one
/// client the latency is the cycle's; with more, the hand-off's.
async fn locks<C: Coord>(system: &str, pool: &[C], clients: usize, seconds: f64) -> Row {
    let name = format!("bench-lock-{clients}");
    let deadline = Instant::now() + Duration::from_secs_f64(seconds);
    // (acquired, released) of every cycle.
    let cycles: Arc<Mutex<Vec<(Instant, Instant)>>> = Arc::default();
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for task in 0..clients {
        let client = pool[task % pool.len()].clone();
        let (name, cycles) = (name.clone(), cycles.clone());
        tasks.spawn(async move {
            let lease = client.grant(600).await.expect("grant");
            let mut latency = histogram();
            while Instant::now() < deadline {
                let sent = Instant::now();
                let held = client.lock(&name, lease).await.expect("lock");
                let acquired = Instant::now();
                client.unlock(held).await.expect("unlock");
                let released = Instant::now();
                latency.saturating_record((released - sent).as_micros() as u64);
                cycles.lock().unwrap().push((acquired, released));
            }
            latency
        });
    }
    let mut cycle_latency = histogram();
    while let Some(done) = tasks.join_next().await {
        cycle_latency
            .add(done.expect("lock task"))
            .expect("same bounds");
    }
    let elapsed = started.elapsed().as_secs_f64();
    let mut cycles = cycles.lock().unwrap().clone();
    let count = cycles.len() as u64;
    if clients == 1 {
        return row(system, "lock", clients, count, elapsed, &cycle_latency);
    }
    cycles.sort_by_key(|c| c.0);
    let mut handoff = histogram();
    for pair in cycles.windows(2) {
        handoff
            .saturating_record(pair[1].0.saturating_duration_since(pair[0].1).as_micros() as u64);
    }
    row(system, "lock", clients, count, elapsed, &handoff)
}

async fn grants<C: Coord>(system: &str, pool: &[C], clients: usize, seconds: f64) -> Row {
    let deadline = Instant::now() + Duration::from_secs_f64(seconds);
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for task in 0..clients {
        let client = pool[task % pool.len()].clone();
        tasks.spawn(async move {
            let mut latency = histogram();
            while Instant::now() < deadline {
                let sent = Instant::now();
                client.grant(60).await.expect("grant");
                latency.saturating_record(sent.elapsed().as_micros() as u64);
            }
            latency
        });
    }
    let mut latency = histogram();
    while let Some(done) = tasks.join_next().await {
        latency.add(done.expect("grant task")).expect("same bounds");
    }
    row(
        system,
        "grant",
        clients,
        latency.len(),
        started.elapsed().as_secs_f64(),
        &latency,
    )
}

async fn renewals<C: Coord>(system: &str, pool: &[C], clients: usize, seconds: f64) -> Row {
    const LEASES_PER_CLIENT: usize = 16;
    let mut tasks = tokio::task::JoinSet::new();
    let deadline = Instant::now() + Duration::from_secs_f64(seconds) + Duration::from_secs(2);
    for task in 0..clients {
        let client = pool[task % pool.len()].clone();
        tasks.spawn(async move {
            let mut leases = Vec::new();
            for _ in 0..LEASES_PER_CLIENT {
                leases.push(client.grant(60).await.expect("grant"));
            }
            // Start together, after every grant.
            tokio::time::sleep_until((deadline - Duration::from_secs_f64(seconds)).into()).await;
            let mut latency = histogram();
            let mut next = 0;
            while Instant::now() < deadline {
                let sent = Instant::now();
                client.renew(leases[next]).await.expect("renew");
                latency.saturating_record(sent.elapsed().as_micros() as u64);
                next = (next + 1) % leases.len();
            }
            latency
        });
    }
    let mut latency = histogram();
    while let Some(done) = tasks.join_next().await {
        latency.add(done.expect("renew task")).expect("same bounds");
    }
    row(system, "renew", clients, latency.len(), seconds, &latency)
}

async fn run_system<C: Coord>(system: &str, pool: &[C], args: &Args) -> Vec<Row> {
    vec![
        locks(system, pool, 1, args.seconds).await,
        locks(system, pool, 16, args.seconds).await,
        grants(system, pool, 16, args.seconds).await,
        renewals(system, pool, 64, args.seconds).await,
    ]
}

pub fn run(args: &Args) -> Vec<Row> {
    crate::report::block_on(run_async(args))
}

async fn run_async(args: &Args) -> Vec<Row> {
    let mut rows = Vec::new();
    {
        let nodes = Nodes::start(args.output.work_dir(), 3);
        let endpoints = nodes.endpoints();
        let mut pool = Vec::new();
        for _ in 0..16 {
            pool.push(connect(&endpoints).await);
        }
        rows.extend(run_system("ferry", &pool, args).await);
    }
    rows.extend(etcd::run(args).await);
    rows
}

#[cfg(not(feature = "etcd"))]
mod etcd {
    pub async fn run(_: &super::Args) -> Vec<crate::report::Row> {
        eprintln!("etcd: skipped (build ferry-bench with --features etcd; see the README)");
        Vec::new()
    }
}

#[cfg(feature = "etcd")]
mod etcd {
    use super::{run_system, Args, Coord};
    use crate::etcd::Members;
    use crate::report::Row;

    impl Coord for etcd_client::Client {
        type Held = Vec<u8>;

        async fn grant(&self, ttl_secs: u64) -> Result<u64, String> {
            let mut client = self.clone();
            etcd_client::Client::lease_grant(&mut client, ttl_secs as i64, None)
                .await
                .map(|r| r.id() as u64)
                .map_err(|e| e.to_string())
        }

        async fn lock(&self, name: &str, lease: u64) -> Result<Vec<u8>, String> {
            let mut client = self.clone();
            let options = etcd_client::LockOptions::new().with_lease(lease as i64);
            etcd_client::Client::lock(&mut client, name, Some(options))
                .await
                .map(|r| r.key().to_vec())
                .map_err(|e| e.to_string())
        }

        async fn unlock(&self, key: Vec<u8>) -> Result<(), String> {
            let mut client = self.clone();
            etcd_client::Client::unlock(&mut client, key)
                .await
                .map(drop)
                .map_err(|e| e.to_string())
        }

        async fn renew(&self, lease: u64) -> Result<(), String> {
            // One keep-alive exchange on a stream of its own (opening the
            // keeper sends one renewal and reads its answer), as Ferry's
            // `lease_renew` does.
            let mut client = self.clone();
            etcd_client::Client::lease_keep_alive(&mut client, lease as i64)
                .await
                .map(drop)
                .map_err(|e| e.to_string())
        }
    }

    pub async fn run(args: &Args) -> Vec<Row> {
        let root = args.output.work_dir();
        let Some(members) = Members::start(&args.etcd, root.path()) else {
            return Vec::new();
        };
        let pool = members.clients(16).await;
        let rows = run_system("etcd", &pool, args).await;
        drop(members);
        rows
    }
}
