//! The `history` suite: what keeping every revision costs and gives, Ferry
//! against etcd in the same run, both 3 members on loopback.
//!
//! For each system: `--changes` puts of new keys (16-byte keys, 256-byte
//! values, from `--clients` clients); then a watch from revision 1 replays
//! every change (events/s); the bytes on disk per retained change (one
//! member, after its storage was compacted: Ferry's engine directory,
//! etcd's database size); the time to compact away every revision (until
//! the space is reclaimed: Ferry's purge steps, etcd's physical
//! compaction). Ferry also exports its history as Parquet (rows/s, MB/s).
//! Put throughput with history kept, for new keys and overwrites, is in
//! the `cluster` suite.

use crate::failover::{connect, Nodes};
use crate::report::Row;
use ferry_client::pb;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Changes written, then replayed by the watch.
    #[arg(long, default_value_t = 1_000_000)]
    pub changes: u64,
    /// Clients writing them.
    #[arg(long, default_value_t = 256)]
    pub clients: usize,
    /// The etcd binary (with `--features etcd`).
    #[arg(long, default_value = "etcd")]
    pub etcd: String,
    #[command(flatten)]
    pub output: crate::report::Output,
}

const VALUE_BYTES: usize = 256;
const CONNECTIONS: usize = 16;
/// Every key starts with it (16 decimal digits), so one prefix watches all.
const PREFIX: &str = "0";

fn key(i: u64) -> String {
    format!("{i:016}")
}

/// A value no compression shrinks (the bytes on disk per change compare
/// storage layouts, not compressors).
fn value(i: u64) -> Vec<u8> {
    let mut state = i.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..VALUE_BYTES / 8)
        .flat_map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state.to_le_bytes()
        })
        .collect()
}

/// Writes `changes` new keys through `put` from `clients` tasks; returns
/// the seconds it took.
async fn fill<C, F>(pool: &[C], clients: usize, changes: u64, put: F) -> f64
where
    C: Clone + Send + 'static,
    F: Fn(C, String, Vec<u8>) -> futures_util::future::BoxFuture<'static, Result<(), String>>
        + Clone
        + Send
        + 'static,
{
    let next = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for task in 0..clients {
        let (client, next, put) = (pool[task % pool.len()].clone(), next.clone(), put.clone());
        tasks.spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= changes {
                    return;
                }
                put(client.clone(), key(i), value(i)).await.expect("a put");
            }
        });
    }
    while tasks.join_next().await.is_some() {}
    started.elapsed().as_secs_f64()
}

fn row(system: &str, workload: &str) -> Row {
    Row::new(system, workload)
}

pub fn run(args: &Args) -> Vec<Row> {
    crate::report::block_on(run_async(args))
}

async fn run_async(args: &Args) -> Vec<Row> {
    let mut rows = ferry(args).await;
    rows.extend(etcd::run(args).await);
    rows
}

async fn ferry(args: &Args) -> Vec<Row> {
    use futures_util::StreamExt;
    let nodes = Nodes::start_with(args.output.work_dir(), 3, vec!["--keep-history".into()]);
    let endpoints = nodes.endpoints();
    let mut pool = Vec::new();
    for _ in 0..CONNECTIONS {
        pool.push(connect(&endpoints).await);
    }
    let client = pool[0].clone();
    let mut rows = Vec::new();
    let start = client.status().await.expect("status").applied_index + 1;
    let seconds = fill(
        &pool,
        args.clients,
        args.changes,
        |client: ferry_client::Client, key, value| {
            Box::pin(async move {
                client
                    .put(key, value)
                    .await
                    .map(drop)
                    .map_err(|e| e.to_string())
            })
        },
    )
    .await;
    rows.push(
        row("ferry", "fill")
            .with("clients", args.clients as f64)
            .with("ops_per_sec", args.changes as f64 / seconds)
            .with("seconds", seconds),
    );
    eprintln!("ferry: {} changes written in {seconds:.1} s", args.changes);

    // A watch from the first revision replays every change.
    let mut watch = client.watch_prefix(PREFIX, start);
    let started = Instant::now();
    let mut events = 0u64;
    while events < args.changes {
        let event = tokio::time::timeout(Duration::from_secs(60), watch.next())
            .await
            .expect("the replay stalled")
            .expect("the watch ended")
            .expect("watch error");
        assert!(event.kv.is_some());
        events += 1;
    }
    let seconds = started.elapsed().as_secs_f64();
    drop(watch);
    rows.push(
        row("ferry", "watch-replay")
            .with("events", events as f64)
            .with("events_per_sec", events as f64 / seconds)
            .with("seconds", seconds),
    );
    eprintln!("ferry: replayed {events} events in {seconds:.2} s");

    // The history as Parquet, streamed to the client.
    let leader = client.leader().expect("a leader");
    let mut maintenance = pb::maintenance_client::MaintenanceClient::new(
        tonic::transport::Endpoint::from_shared(format!("http://{leader}"))
            .expect("address")
            .connect_lazy(),
    )
    .max_decoding_message_size(8 << 20);
    let started = Instant::now();
    let mut stream = maintenance
        .export_history(pb::ExportHistoryRequest::default())
        .await
        .expect("export")
        .into_inner();
    let (mut bytes, mut exported) = (0u64, 0u64);
    while let Some(chunk) = stream.message().await.expect("export stream") {
        match chunk.chunk {
            Some(pb::export_chunk::Chunk::Data(data)) => bytes += data.len() as u64,
            Some(pb::export_chunk::Chunk::Summary(summary)) => exported = summary.rows,
            _ => {}
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    assert!(exported >= args.changes, "{exported} rows exported");
    let row_bytes = (16 + VALUE_BYTES) as f64;
    rows.push(
        row("ferry", "history-export")
            .with("rows_per_sec", exported as f64 / seconds)
            .with("mb_per_sec", exported as f64 * row_bytes / seconds / 1e6)
            .with("parquet_bytes", bytes as f64)
            .with("seconds", seconds),
    );

    // Bytes on disk per retained change, once the engine is compacted.
    maintenance
        .defragment(pb::DefragmentRequest {})
        .await
        .expect("defragment");
    let status = maintenance
        .status(pb::MaintenanceStatusRequest {})
        .await
        .expect("status")
        .into_inner();
    let last = status.header.map_or(0, |h| h.revision);
    rows.push(
        row("ferry", "disk-per-change")
            .with("bytes", status.engine_bytes as f64)
            .with(
                "bytes_per_change",
                status.engine_bytes as f64 / args.changes as f64,
            ),
    );

    // Compacting every revision away, until the purge is done.
    let started = Instant::now();
    client.compact(last).await.expect("compact");
    loop {
        let status = maintenance
            .status(pb::MaintenanceStatusRequest {})
            .await
            .expect("status")
            .into_inner();
        if !status.purge_pending {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let seconds = started.elapsed().as_secs_f64();
    rows.push(
        row("ferry", "compact")
            .with("revisions", args.changes as f64)
            .with("seconds", seconds),
    );
    eprintln!(
        "ferry: compacted {} revisions in {seconds:.2} s",
        args.changes
    );
    drop(nodes);
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
    use super::{fill, row, Args, CONNECTIONS, PREFIX};
    use crate::etcd::Members;
    use crate::report::Row;
    use std::time::{Duration, Instant};

    pub async fn run(args: &Args) -> Vec<Row> {
        let root = args.output.work_dir();
        let Some(members) = Members::start(&args.etcd, root.path()) else {
            return Vec::new();
        };
        let mut clients = members.clients(CONNECTIONS).await;
        let mut rows = Vec::new();
        let start = clients[0]
            .get("ready", None)
            .await
            .expect("get")
            .header()
            .map_or(0, |h| h.revision())
            + 1;
        let pool: Vec<etcd_client::KvClient> = clients.iter().map(|c| c.kv_client()).collect();
        let seconds = fill(
            &pool,
            args.clients,
            args.changes,
            |mut kv: etcd_client::KvClient, key, value| {
                Box::pin(async move {
                    kv.put(key, value, None)
                        .await
                        .map(drop)
                        .map_err(|e| e.to_string())
                })
            },
        )
        .await;
        rows.push(
            row("etcd", "fill")
                .with("clients", args.clients as f64)
                .with("ops_per_sec", args.changes as f64 / seconds)
                .with("seconds", seconds),
        );
        eprintln!("etcd: {} changes written in {seconds:.1} s", args.changes);

        let client = &mut clients[0];
        let options = etcd_client::WatchOptions::new()
            .with_prefix()
            .with_start_revision(start as i64);
        let mut stream = client.watch(PREFIX, Some(options)).await.expect("watch");
        let started = Instant::now();
        let mut events = 0u64;
        while events < args.changes {
            let message = tokio::time::timeout(Duration::from_secs(60), stream.message())
                .await
                .expect("the replay stalled")
                .expect("watch error")
                .expect("the watch ended");
            events += message.events().len() as u64;
        }
        let seconds = started.elapsed().as_secs_f64();
        rows.push(
            row("etcd", "watch-replay")
                .with("events", events as f64)
                .with("events_per_sec", events as f64 / seconds)
                .with("seconds", seconds),
        );
        eprintln!("etcd: replayed {events} events in {seconds:.2} s");

        let mut maintenance = client.maintenance_client();
        let status = maintenance.status().await.expect("status");
        let last = status.header().map_or(0, |h| h.revision());
        let db_bytes = status.db_size() as f64;
        rows.push(
            row("etcd", "disk-per-change")
                .with("bytes", db_bytes)
                .with("bytes_per_change", db_bytes / args.changes as f64),
        );
        let started = Instant::now();
        client
            .compact(
                last,
                Some(etcd_client::CompactionOptions::new().with_physical()),
            )
            .await
            .expect("compact");
        let seconds = started.elapsed().as_secs_f64();
        rows.push(
            row("etcd", "compact")
                .with("revisions", args.changes as f64)
                .with("seconds", seconds),
        );
        drop(members);
        rows
    }
}
