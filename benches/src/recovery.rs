//! The `recovery` suite: how fast a database comes back after a crash.
//!
//! `wal-replay`: N records of 16-byte keys and `value_size`-byte values are
//! written to a database whose memtable holds them all (so nothing is
//! flushed and everything must be replayed), the process "crashes" (the
//! handle is leaked: no close, no flush), and the reopen is timed. Ferry
//! only: peers do not expose an equivalent crash-and-replay path.
//!
//! `node-restart`: a single-node cluster process holding `--node-bytes` of
//! state (written through the SDK) is SIGKILLed and started again from its
//! data directory; the time until a linearizable read succeeds is timed.
//!
//! `backup-restore`: see [`crate::backup_restore`].

use crate::report::Row;
use ferry_engine::{Db, Durability, Options};
use std::time::Instant;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// WAL records to replay.
    #[arg(long, default_value_t = 1_000_000)]
    pub records: u64,
    /// Bytes per value.
    #[arg(long, default_value_t = 100)]
    pub value_size: usize,
    /// State of the node in the `node-restart` workload (0 skips it).
    #[arg(long, default_value_t = 1 << 30)]
    pub node_bytes: u64,
    /// State of the node in the `backup-restore` workload (0 skips it).
    #[arg(long, default_value_t = 1 << 30)]
    pub backup_bytes: u64,
    /// Log entries written after the checkpoint in `backup-restore`.
    #[arg(long, default_value_t = 200_000)]
    pub backup_log_entries: u64,
    #[command(flatten)]
    pub output: crate::report::Output,
}

pub fn run(args: &Args) -> Vec<Row> {
    let root = args.output.work_dir();
    let path = root.path().join("db");
    // A memtable larger than the whole WAL: replay must rebuild it all.
    let options = || Options {
        durability: Durability::Buffered,
        write_buffer_bytes: 4 << 30,
        ..Options::default()
    };
    let db = Db::open(&path, options()).expect("open");
    let value = vec![0x5au8; args.value_size];
    for i in 0..args.records {
        let mut key = [0u8; 16];
        key[8..].copy_from_slice(&i.to_be_bytes());
        db.put(key, &value).expect("put");
    }
    let wal_bytes = db.statistics().wal_bytes_written;
    // Crash: drop nothing, sync nothing. The WAL reached the OS on every
    // write (Buffered), which is what a killed process leaves behind. The
    // leaked handle keeps its directory lock, so reopen a copy of the files.
    let copy = root.path().join("crashed");
    std::fs::create_dir_all(&copy).expect("copy dir");
    for entry in std::fs::read_dir(&path).expect("list") {
        let entry = entry.expect("entry");
        if entry.file_name() != "LOCK" {
            std::fs::copy(entry.path(), copy.join(entry.file_name())).expect("copy");
        }
    }
    std::mem::forget(db);

    let started = Instant::now();
    let db = Db::open(&copy, options()).expect("reopen");
    let seconds = started.elapsed().as_secs_f64();
    let report = db.recovery_report().clone();
    assert_eq!(report.wal_records, args.records, "every record replayed");
    eprintln!(
        "ferry wal-replay: {} records, {:.1} MB of WAL in {seconds:.3} s",
        report.wal_records,
        wal_bytes as f64 / 1e6
    );
    let mut rows = vec![Row::new("ferry", "wal-replay")
        .with("records", report.wal_records as f64)
        .with("wal_bytes", wal_bytes as f64)
        .with("seconds", seconds)
        .with("records_per_sec", report.wal_records as f64 / seconds)];
    if args.node_bytes > 0 {
        rows.push(crate::failover::node_restart(args.node_bytes, &args.output));
    }
    if args.backup_bytes > 0 {
        rows.extend(crate::backup_restore::run(
            args.backup_bytes,
            args.backup_log_entries,
            &args.output,
        ));
    }
    rows
}
