//! The `parquet` suite: export and import throughput of columnar
//! snapshots, their size against the engine's own tables, and bulk import
//! against writing the same rows with `put`: for the engine alone, and
//! for a replicated node built from a state export (`ferry snapshot
//! restore --from-parquet`) against the same rows written through the
//! node.
//!
//! Each timing is the median of `--repeat` runs: the shared VM's speed
//! moves by a third from one second to the next.

use crate::report::Row;
use ferry_engine::columnar::{DirSink, ExportOptions, ParquetCompression};
use ferry_engine::{Db, Durability, Options};
use ferry_replication::types::{FerryNode, Op};
use ferry_replication::{Node, NodeConfig};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Rows in the database.
    #[arg(long, default_value_t = 1_000_000)]
    pub keys: u64,
    /// Bytes per value.
    #[arg(long, default_value_t = 100)]
    pub value_size: usize,
    /// Runs of each timing (the median is reported).
    #[arg(long, default_value_t = 3)]
    pub repeat: usize,
    #[command(flatten)]
    pub output: crate::report::Output,
}

fn dir_bytes(path: &std::path::Path) -> u64 {
    std::fs::read_dir(path)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok()?.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

fn median(mut seconds: Vec<f64>) -> f64 {
    seconds.sort_by(f64::total_cmp);
    seconds[seconds.len() / 2]
}

fn throughput(row: Row, rows: u64, row_bytes: f64, seconds: f64) -> Row {
    row.with("rows_per_sec", rows as f64 / seconds)
        .with("mb_per_sec", rows as f64 * row_bytes / seconds / 1e6)
        .with("seconds", seconds)
}

pub fn run(args: &Args) -> Vec<Row> {
    let mut rows = engine(args);
    rows.extend(crate::report::block_on(node(args)));
    rows
}

fn data(args: &Args) -> Vec<([u8; 16], Vec<u8>)> {
    let mut rng = StdRng::seed_from_u64(5);
    (0..args.keys)
        .map(|i| {
            let mut key = [0u8; 16];
            key[8..].copy_from_slice(&i.to_be_bytes());
            let mut value = vec![0u8; args.value_size];
            rng.fill(&mut value[..args.value_size / 2]);
            (key, value)
        })
        .collect()
}

fn engine(args: &Args) -> Vec<Row> {
    let root = args.output.work_dir();
    let options = || Options {
        durability: Durability::Buffered,
        ..Options::default()
    };
    let rows_data = data(args);
    let row_bytes = (16 + args.value_size) as f64;
    let mut rows = Vec::new();
    let repeat = args.repeat.max(1);

    // Insert with put (in key order, the friendliest order for an LSM),
    // flushed, as the baseline for import.
    let mut put_seconds = Vec::new();
    let mut source = None;
    for run in 0..repeat {
        let db = Db::open(root.path().join(format!("source-{run}")), options()).expect("open");
        let started = Instant::now();
        for (key, value) in &rows_data {
            db.put(key, value).expect("put");
        }
        db.flush().expect("flush");
        put_seconds.push(started.elapsed().as_secs_f64());
        source = Some(db);
    }
    let source = source.expect("one run");
    let put_seconds = median(put_seconds);
    source.compact_range(None, None).expect("compact");
    let table_bytes: u64 = source.statistics().level_bytes.iter().sum();
    rows.push(
        throughput(Row::new("ferry", "put"), args.keys, row_bytes, put_seconds)
            .with("bytes", table_bytes as f64),
    );

    let snapshot = source.snapshot();
    for (name, compression) in [
        ("zstd", ParquetCompression::Zstd(3)),
        ("lz4", ParquetCompression::Lz4),
    ] {
        let export_dir = root.path().join(format!("export-{name}"));
        let export_options = ExportOptions {
            compression,
            ..ExportOptions::default()
        };
        let started = Instant::now();
        let report = source
            .export_parquet(&snapshot, &export_dir, &export_options, &mut |_| {})
            .expect("export");
        let seconds = started.elapsed().as_secs_f64();
        rows.push(
            throughput(
                Row::new("ferry", &format!("export-{name}")),
                report.manifest.rows,
                row_bytes,
                seconds,
            )
            .with("bytes", report.bytes as f64)
            .with("size_ratio", report.bytes as f64 / table_bytes as f64),
        );

        let mut import_seconds = Vec::new();
        for run in 0..repeat {
            let target = Db::open(root.path().join(format!("import-{name}-{run}")), options())
                .expect("open");
            let started = Instant::now();
            let imported = target
                .import_parquet(&export_dir, &mut |_| {})
                .expect("import");
            import_seconds.push(started.elapsed().as_secs_f64());
            assert_eq!(imported.checksum, report.manifest.checksum);
        }
        let seconds = median(import_seconds);
        rows.push(
            throughput(
                Row::new("ferry", &format!("import-{name}")),
                args.keys,
                row_bytes,
                seconds,
            )
            .with("bytes", dir_bytes(&export_dir) as f64)
            .with("speedup_vs_put", put_seconds / seconds),
        );
    }
    rows
}

/// Writes through a node: puts in transactions of 128, 32 in flight, the
/// fastest a client can load a node through its API.
const TXN_OPS: usize = 128;
const IN_FLIGHT: usize = 32;

async fn leading_node(dir: &std::path::Path) -> Arc<Node> {
    let node = Arc::new(
        Node::open(NodeConfig::new(
            1,
            dir,
            "127.0.0.1:0".parse().expect("address"),
        ))
        .await
        .expect("open node"),
    );
    node.initialize(BTreeMap::from([(
        1,
        FerryNode::from(node.raft_addr().to_owned()),
    )]))
    .await
    .expect("initialize");
    while !node.is_leader() {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    node
}

async fn node(args: &Args) -> Vec<Row> {
    let root = args.output.work_dir();
    let rows_data = Arc::new(data(args));
    let row_bytes = (16 + args.value_size) as f64;
    let repeat = args.repeat.max(1);
    let mut rows = Vec::new();

    let mut put_seconds = Vec::new();
    let mut source = None;
    for run in 0..repeat {
        let node = leading_node(&root.path().join(format!("node-{run}"))).await;
        let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let started = Instant::now();
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..IN_FLIGHT {
            let (node, next, rows_data) = (node.clone(), next.clone(), rows_data.clone());
            tasks.spawn(async move {
                loop {
                    let at = next.fetch_add(TXN_OPS, std::sync::atomic::Ordering::Relaxed);
                    if at >= rows_data.len() {
                        return;
                    }
                    let ops = rows_data[at..(at + TXN_OPS).min(rows_data.len())]
                        .iter()
                        .map(|(k, v)| Op::put(k.to_vec(), v.clone()))
                        .collect();
                    node.write(ops).await.expect("write");
                }
            });
        }
        while tasks.join_next().await.is_some() {}
        put_seconds.push(started.elapsed().as_secs_f64());
        source = Some(node);
    }
    let source = source.expect("one run");
    let put_seconds = median(put_seconds);
    rows.push(throughput(
        Row::new("ferry", "node-put"),
        args.keys,
        row_bytes,
        put_seconds,
    ));

    // The state export, written locally, then a node built from it.
    let export_dir = root.path().join("state-export");
    std::fs::create_dir_all(&export_dir).expect("dir");
    let view = source.state().db().snapshot();
    let started = Instant::now();
    let sink = DirSink::new(&ferry_engine::fs::OsFs, &export_dir);
    let (report, _) = ferry_replication::export::state::export(
        &view,
        &ferry_replication::export::streaming_options(),
        sink,
        &mut |_| {},
    )
    .expect("state export");
    let seconds = started.elapsed().as_secs_f64();
    rows.push(
        throughput(
            Row::new("ferry", "node-export"),
            report.manifest.rows,
            row_bytes,
            seconds,
        )
        .with("bytes", report.bytes as f64),
    );
    let mut build_seconds = Vec::new();
    for run in 0..repeat {
        let data_dir = root.path().join(format!("from-export-{run}"));
        let started = Instant::now();
        let restored = ferry_replication::export::restore::from_state_export(
            &ferry_engine::fs::OsFs::shared(),
            &export_dir,
            &data_dir,
            1,
            FerryNode::from("127.0.0.1:1".to_owned()),
            &mut |_| {},
        )
        .await
        .expect("restore");
        build_seconds.push(started.elapsed().as_secs_f64());
        assert_eq!(restored.rows, args.keys);
        assert_eq!(restored.checksum, report.manifest.checksum);
    }
    let seconds = median(build_seconds);
    rows.push(
        throughput(
            Row::new("ferry", "node-from-export"),
            args.keys,
            row_bytes,
            seconds,
        )
        .with("speedup_vs_put", put_seconds / seconds),
    );
    rows
}
