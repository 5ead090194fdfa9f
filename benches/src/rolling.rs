//! The `rolling` suite: every member of a 3-node cluster replaced, one at a
//! time, by a new node, under a steady write load from the SDK.
//!
//! The cluster (`ferry serve` processes, default settings) is first loaded
//! with `--bytes` of state (1 KiB values) through the SDK, so that the log
//! behind the last snapshot is purged and a new node needs a snapshot. Then,
//! while `--writers` SDK clients keep writing, each old node `n` is replaced
//! by `n + 3` the way an operator would: add the new node as a learner and
//! wait until it has caught up, promote it, hand leadership away if `n`
//! leads, remove `n`, stop it. Per replacement the suite reports its time
//! and what the new node received (snapshot bytes and log bytes, from its
//! metrics). Writes that fail even after the SDK's retries are counted
//! (`failed` must be 0), and at the end every acknowledged write is read
//! back (`lost` must be 0).

use crate::failover::{connect, Nodes};
use crate::report::Row;
use ferry_client::pb::cluster_client::ClusterClient;
use ferry_client::{pb, Client};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// State loaded before the replacements.
    #[arg(long, default_value_t = 256 << 20)]
    pub bytes: u64,
    /// Concurrent writing clients during the replacements.
    #[arg(long, default_value_t = 8)]
    pub writers: usize,
    #[command(flatten)]
    pub output: crate::report::Output,
}

pub fn run(args: &Args) -> Vec<Row> {
    crate::report::block_on(run_async(args))
}

/// The cluster service of the current leader.
async fn leader_cluster(client: &Client) -> ClusterClient<tonic::transport::Channel> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if client.refresh_members().await.is_ok() {
            if let Some(leader) = client.leader() {
                let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{leader}"))
                    .expect("leader address");
                return ClusterClient::new(endpoint.connect_lazy());
            }
        }
        assert!(Instant::now() < deadline, "no leader");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Runs a membership call against the leader, retrying through elections.
async fn admin<F, Fut>(client: &Client, what: &str, call: F) -> pb::MemberResponse
where
    F: Fn(ClusterClient<tonic::transport::Channel>) -> Fut,
    Fut: std::future::Future<Output = Result<tonic::Response<pb::MemberResponse>, tonic::Status>>,
{
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        match call(leader_cluster(client).await).await {
            Ok(response) => return response.into_inner(),
            Err(status) => {
                assert!(Instant::now() < deadline, "{what}: {status:?}");
                eprintln!("  {what}: {}; retrying", status.message());
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// A metric's value from a node's /metrics.
async fn metric(addr: &str, name: &str) -> f64 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(mut stream) = tokio::net::TcpStream::connect(addr).await else {
        return 0.0;
    };
    let request = format!("GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    if stream.write_all(request.as_bytes()).await.is_err() {
        return 0.0;
    }
    let mut text = String::new();
    let _ = stream.read_to_string(&mut text).await;
    text.lines()
        .find_map(|line| {
            line.strip_prefix(name)?
                .strip_prefix(' ')?
                .trim()
                .parse()
                .ok()
        })
        .unwrap_or(0.0)
}

async fn run_async(args: &Args) -> Vec<Row> {
    let mut nodes = Nodes::start(args.output.work_dir(), 3);
    let client = connect(&nodes.endpoints()).await;

    let keys = args.bytes / 1024;
    let started = Instant::now();
    let loaded = Arc::new(AtomicU64::new(0));
    let mut loaders = tokio::task::JoinSet::new();
    for _ in 0..64 {
        let (client, loaded) = (client.clone(), loaded.clone());
        loaders.spawn(async move {
            loop {
                let i = loaded.fetch_add(1, Ordering::Relaxed);
                if i >= keys {
                    return;
                }
                let value = crate::transfer::value(i, 0);
                client
                    .put(format!("load/{i:012}"), value)
                    .await
                    .expect("load");
            }
        });
    }
    while let Some(done) = loaders.join_next().await {
        done.expect("loader");
    }
    eprintln!(
        "rolling: loaded {keys} keys in {:.1} s",
        started.elapsed().as_secs_f64()
    );

    let stop = Arc::new(AtomicBool::new(false));
    let failed = Arc::new(AtomicU64::new(0));
    let mut writers = tokio::task::JoinSet::new();
    for w in 0..args.writers {
        let (client, stop, failed) = (client.clone(), stop.clone(), failed.clone());
        writers.spawn(async move {
            // The indexes of this writer's acknowledged keys.
            let mut acked = Vec::new();
            let mut next = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let key = format!("rolling/{w:02}/{next:08}");
                match client.put(key, vec![0x5a; 100]).await {
                    Ok(_) => acked.push(next),
                    Err(error) => {
                        if failed.fetch_add(1, Ordering::Relaxed) == 0 {
                            eprintln!("  write failed after retries: {error}");
                        }
                    }
                }
                next += 1;
            }
            (w, acked)
        });
    }

    let mut rows = Vec::new();
    let rolling_started = Instant::now();
    for old in 1..=3u64 {
        let new = old + 3;
        let started = Instant::now();
        nodes.spawn(new, false);
        let (client_addr, raft_addr) = nodes.addrs[&new].clone();
        admin(&client, "add learner", |mut c| {
            let request = pb::MemberAddRequest {
                id: new,
                raft_addr: raft_addr.clone(),
                client_addr: client_addr.clone(),
                wait: true,
            };
            async move { c.member_add(request).await }
        })
        .await;
        let caught_up = started.elapsed().as_secs_f64();
        admin(&client, "promote", |mut c| async move {
            c.promote(pb::MemberRequest { id: new }).await
        })
        .await;
        let status = client.status().await.expect("status");
        if status.leader_id == old {
            admin(&client, "transfer leadership", |mut c| async move {
                c.transfer_leader(pb::MemberRequest { id: new }).await
            })
            .await;
        }
        admin(&client, "remove", |mut c| async move {
            c.remove(pb::MemberRequest { id: old }).await
        })
        .await;
        nodes.kill(old);
        let seconds = started.elapsed().as_secs_f64();
        let metrics = nodes.metrics[&new].clone();
        let snapshot = metric(&metrics, "ferry_snapshot_received_bytes").await;
        let log = metric(&metrics, "ferry_log_received_bytes").await;
        eprintln!(
            "rolling: node {old} -> {new} in {seconds:.2} s (caught up after {caught_up:.2} s), \
             received {:.1} MB of snapshot and {:.1} MB of log",
            snapshot / 1e6,
            log / 1e6
        );
        rows.push(
            Row::new("ferry", &format!("replace-{old}-by-{new}"))
                .with("seconds", seconds)
                .with("catch_up_seconds", caught_up)
                .with("snapshot_bytes", snapshot)
                .with("log_bytes", log),
        );
    }
    let total = rolling_started.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    let mut acked_per_writer = Vec::new();
    while let Some(done) = writers.join_next().await {
        acked_per_writer.push(done.expect("writer"));
    }

    // Every acknowledged write is there, read through the new members only.
    let new_endpoints: Vec<String> = (4..=6).map(|id| nodes.addrs[&id].0.clone()).collect();
    let reader = connect(&new_endpoints).await;
    let (mut acked, mut lost) = (0u64, 0u64);
    for (w, indexes) in &acked_per_writer {
        let mut present = std::collections::BTreeSet::new();
        let mut continuation = Vec::new();
        loop {
            let page = reader
                .range_request(pb::RangeRequest {
                    prefix: format!("rolling/{w:02}/").into_bytes(),
                    continuation,
                    keys_only: true,
                    ..Default::default()
                })
                .await
                .expect("read back");
            present.extend(page.kvs.into_iter().map(|kv| kv.key));
            match page.continuation {
                Some(next) => continuation = next,
                None => break,
            }
        }
        acked += indexes.len() as u64;
        lost += indexes
            .iter()
            .filter(|i| !present.contains(format!("rolling/{w:02}/{i:08}").as_bytes()))
            .count() as u64;
    }
    let failed = failed.load(Ordering::Relaxed);
    eprintln!(
        "rolling: all three replaced in {total:.1} s; {acked} writes acknowledged, {failed} failed"
    );
    rows.push(
        Row::new("ferry", "rolling-replacement")
            .with("seconds", total)
            .with(
                "snapshot_bytes",
                rows.iter().filter_map(|r| r.get("snapshot_bytes")).sum(),
            )
            .with(
                "log_bytes",
                rows.iter().filter_map(|r| r.get("log_bytes")).sum(),
            )
            .with("acked_writes", acked as f64)
            .with("failed", failed as f64)
            .with("lost", lost as f64),
    );
    rows
}
