//! The `parquet` suite: export and import throughput of columnar
//! snapshots, their size against the engine's own tables, and bulk import
//! against inserting the same rows with `put`.

use crate::report::Row;
use ferry_engine::columnar::{ExportOptions, ParquetCompression};
use ferry_engine::{Db, Durability, Options};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::time::Instant;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Rows in the database.
    #[arg(long, default_value_t = 1_000_000)]
    pub keys: u64,
    /// Bytes per value.
    #[arg(long, default_value_t = 100)]
    pub value_size: usize,
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

pub fn run(args: &Args) -> Vec<Row> {
    let root = args.output.work_dir();
    let options = || Options {
        durability: Durability::Buffered,
        ..Options::default()
    };
    let mut rng = StdRng::seed_from_u64(5);
    let rows_data: Vec<([u8; 16], Vec<u8>)> = (0..args.keys)
        .map(|i| {
            let mut key = [0u8; 16];
            key[8..].copy_from_slice(&i.to_be_bytes());
            let mut value = vec![0u8; args.value_size];
            rng.fill(&mut value[..args.value_size / 2]);
            (key, value)
        })
        .collect();
    let row_bytes = (16 + args.value_size) as f64;
    let mut rows = Vec::new();

    // Insert with put (in key order, the friendliest order for an LSM),
    // flushed, as the baseline for import.
    let source = Db::open(root.path().join("source"), options()).expect("open");
    let started = Instant::now();
    for (key, value) in &rows_data {
        source.put(key, value).expect("put");
    }
    source.flush().expect("flush");
    let put_seconds = started.elapsed().as_secs_f64();
    source.compact_range(None, None).expect("compact");
    let table_bytes: u64 = source.statistics().level_bytes.iter().sum();
    rows.push(
        Row::new("ferry", "put")
            .with("rows_per_sec", args.keys as f64 / put_seconds)
            .with(
                "mb_per_sec",
                args.keys as f64 * row_bytes / put_seconds / 1e6,
            )
            .with("seconds", put_seconds)
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
            Row::new("ferry", &format!("export-{name}"))
                .with("rows_per_sec", report.manifest.rows as f64 / seconds)
                .with(
                    "mb_per_sec",
                    report.manifest.rows as f64 * row_bytes / seconds / 1e6,
                )
                .with("seconds", seconds)
                .with("bytes", report.bytes as f64)
                .with("size_ratio", report.bytes as f64 / table_bytes as f64),
        );

        let target = Db::open(root.path().join(format!("import-{name}")), options()).expect("open");
        let started = Instant::now();
        let imported = target
            .import_parquet(&export_dir, &mut |_| {})
            .expect("import");
        let seconds = started.elapsed().as_secs_f64();
        assert_eq!(imported.checksum, report.manifest.checksum);
        rows.push(
            Row::new("ferry", &format!("import-{name}"))
                .with("rows_per_sec", imported.rows as f64 / seconds)
                .with(
                    "mb_per_sec",
                    imported.rows as f64 * row_bytes / seconds / 1e6,
                )
                .with("seconds", seconds)
                .with("bytes", dir_bytes(&export_dir) as f64)
                .with("speedup_vs_put", put_seconds / seconds),
        );
    }
    rows
}
