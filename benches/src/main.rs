//! `ferry-bench`: Ferry's benchmarks, side by side with peer engines.
//!
//! ```text
//! cargo run --release -p ferry-bench -- engine --keys 1000000 --json engine.json
//! cargo run --release -p ferry-bench -- recovery
//! cargo run --release -p ferry-bench -- checkpoint --json checkpoint.json
//! cargo run --release -p ferry-bench -- parquet
//! cargo run --release -p ferry-bench -- transfer --json transfer.json
//! cargo run --release -p ferry-bench -- failover --json failover.json
//! cargo run --release -p ferry-bench --features rocksdb -- engine --engines ferry,rocksdb
//! ```

mod adapter;
mod backup_restore;
mod checkpoint;
mod cluster;
mod coordination;
mod engine;
#[cfg(feature = "etcd")]
mod etcd;
mod failover;
mod floor;
mod history;
mod parquet;
mod recovery;
mod report;
mod rolling;
mod secure;
mod transfer;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "ferry-bench",
    about = "Ferry's benchmarks, side by side with peer engines"
)]
struct Cli {
    #[command(subcommand)]
    suite: Suite,
}

/// One subcommand per suite. Every suite returns the same `Row`s, so
/// printing and JSON output are shared and a new suite only adds a variant.
#[derive(Debug, Subcommand)]
enum Suite {
    /// Storage engines under db_bench-style workloads (fill, read, scan, mixed, sync).
    Engine(engine::Args),
    /// WAL replay time after a crash.
    Recovery(recovery::Args),
    /// Cost of periodic delta checkpoints; delta size against data written.
    Checkpoint(checkpoint::Args),
    /// Parquet export and import throughput and size.
    Parquet(parquet::Args),
    /// Snapshot shipping between Raft nodes: full and differential.
    Transfer(transfer::Args),
    /// RTO when the leader is SIGKILLed, pause of a planned leadership transfer.
    Failover(failover::Args),
    /// A 3-node Ferry cluster against a 3-member etcd cluster: puts and linearizable gets.
    Cluster(cluster::Args),
    /// Locks, lease grants and renewals on 3-node Ferry against 3-member etcd.
    Coordination(coordination::Args),
    /// The revision history against etcd's: replay by watch, bytes per change, compaction, export.
    History(history::Args),
    /// All three members replaced one by one under load: time and bytes.
    Rolling(rolling::Args),
    /// (internal) one node of the failover suite's cluster.
    #[command(hide = true)]
    ServeNode(failover::NodeArgs),
}

fn main() {
    ferry_server::memory::disable_transparent_huge_pages();
    let cli = Cli::parse();
    let (rows, json) = match &cli.suite {
        Suite::Engine(args) => (engine::run(args), args.json.as_deref()),
        Suite::Recovery(args) => (recovery::run(args), args.output.json.as_deref()),
        Suite::Checkpoint(args) => (checkpoint::run(args), args.output.json.as_deref()),
        Suite::Parquet(args) => (parquet::run(args), args.output.json.as_deref()),
        Suite::Transfer(args) => (transfer::run(args), args.output.json.as_deref()),
        Suite::Failover(args) => (failover::run(args), args.output.json.as_deref()),
        Suite::Cluster(args) => (cluster::run(args), args.output.json.as_deref()),
        Suite::Coordination(args) => (coordination::run(args), args.output.json.as_deref()),
        Suite::Rolling(args) => (rolling::run(args), args.output.json.as_deref()),
        Suite::History(args) => (history::run(args), args.output.json.as_deref()),
        Suite::ServeNode(args) => {
            failover::serve_node(args);
            return;
        }
    };

    report::print_table(&rows);
    report::print_ratios(&rows);

    if let Some(path) = json {
        report::write_json(path, &rows)
            .unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
        eprintln!("wrote {}", path.display());
    }
}
