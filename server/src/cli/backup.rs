//! `ferry backup`: offline listing and point-in-time restore of a backup
//! chain.

use super::output::{parse_time_ms, time_text};
use super::{exit, Common};
use clap::Subcommand;
use serde_json::json;
use std::path::PathBuf;

#[derive(Debug, Subcommand)]
pub enum BackupCommand {
    /// Show a backup chain: its checkpoints and the log range it holds.
    List {
        /// The backup directory (`ferry serve --backup-dir`).
        #[arg(long)]
        dir: PathBuf,
    },
    /// Offline: rebuild the state as of a log index or a time (default:
    /// everything shipped) into a fresh data directory that starts as a
    /// new single-node cluster. Never let members of the old cluster join it.
    Restore {
        #[arg(long)]
        dir: PathBuf,
        /// The state right after this log index (revision) was applied.
        #[arg(long, conflicts_with = "to_time")]
        to_index: Option<u64>,
        /// The state of every write proposed at or before this time: RFC 3339
        /// (2026-11-23T18:00:00Z) or milliseconds since the Unix epoch.
        #[arg(long)]
        to_time: Option<String>,
        #[arg(long)]
        data_dir: PathBuf,
        #[arg(long, default_value_t = 1)]
        id: u64,
        #[arg(long, default_value = "127.0.0.1:7401")]
        raft_addr: String,
        #[arg(long, default_value = "127.0.0.1:7400")]
        client_addr: String,
    },
}

pub async fn backup(common: &Common, command: BackupCommand) -> i32 {
    match backup_inner(common, command).await {
        Ok(code) | Err(code) => code,
    }
}

async fn backup_inner(common: &Common, command: BackupCommand) -> Result<i32, i32> {
    use ferry_replication::backup::{self, Catalog, LocalDir, RestorePoint};
    let open = |dir: &std::path::Path| {
        if !dir.is_dir() {
            eprintln!("error: {} is not a directory", dir.display());
            return Err(exit::USAGE);
        }
        LocalDir::new(dir).map_err(|e| {
            eprintln!("error: {}: {e}", dir.display());
            exit::FAILED
        })
    };
    let failed = |e: std::io::Error| {
        eprintln!("error: {e}");
        exit::FAILED
    };
    match command {
        BackupCommand::List { dir } => {
            let target = open(&dir)?;
            let catalog = Catalog::read(&target).map_err(failed)?;
            let scratch = tempfile::NamedTempFile::new().map_err(failed)?;
            let mut rows = Vec::new();
            for &index in &catalog.checkpoints {
                let record = Catalog::checkpoint(
                    &ferry_replication::engine::fs::OsFs,
                    &target,
                    index,
                    scratch.path(),
                )
                .map_err(failed)?;
                rows.push(json!({
                    "index": index,
                    "time": time_text(record.time_ms),
                    "time_ms": record.time_ms,
                    "bytes": record.total_bytes(),
                    "new_bytes": record.new_bytes,
                }));
            }
            let log_first = catalog.log.first().map(|c| c.first);
            let log_last = catalog.log.iter().map(|c| c.last).max();
            let gaps = catalog.log_gaps();
            if common.json {
                println!(
                    "{}",
                    json!({ "checkpoints": rows, "log_chunks": catalog.log.len(), "log_first": log_first, "log_last": log_last, "log_gaps": gaps })
                );
            } else {
                println!(
                    "{:>12}  {:<26} {:>14} {:>14}",
                    "CHECKPOINT", "NEWEST WRITE", "BYTES", "NEW BYTES"
                );
                for row in &rows {
                    println!(
                        "{:>12}  {:<26} {:>14} {:>14}",
                        row["index"],
                        row["time"].as_str().unwrap_or(""),
                        row["bytes"],
                        row["new_bytes"]
                    );
                }
                match (log_first, log_last) {
                    (Some(first), Some(last)) => {
                        println!(
                            "log: entries {first}..={last} in {} chunks",
                            catalog.log.len()
                        )
                    }
                    _ => println!("log: none"),
                }
                for (from, to) in &gaps {
                    println!(
                        "log gap: entries {from}..={to} are missing (no restore can cross them)"
                    );
                }
            }
            Ok(exit::OK)
        }
        BackupCommand::Restore {
            dir,
            to_index,
            to_time,
            data_dir,
            id,
            raft_addr,
            client_addr,
        } => {
            let point = match (to_index, to_time) {
                (Some(index), _) => RestorePoint::Index(index),
                (None, Some(time)) => RestorePoint::Time(parse_time_ms(&time).map_err(|e| {
                    eprintln!("error: --to-time: {e}");
                    exit::USAGE
                })?),
                (None, None) => RestorePoint::Latest,
            };
            let target = std::sync::Arc::new(open(&dir)?);
            let node = ferry_replication::types::FerryNode {
                raft_addr: raft_addr.clone(),
                client_addr: client_addr.clone(),
            };
            let report = backup::restore(target, point, &data_dir, id, node)
                .await
                .map_err(failed)?;
            let index = report.applied.map_or(0, |l| l.index);
            if common.json {
                println!(
                    "{}",
                    json!({
                        "data_dir": data_dir.display().to_string(),
                        "index": index,
                        "time_ms": report.time_ms,
                        "checkpoint_index": report.checkpoint_index,
                        "entries_replayed": report.entries_replayed,
                        "bytes_fetched": report.bytes_fetched,
                        "seconds": report.fetch_seconds + report.replay_seconds,
                    })
                );
            } else {
                println!(
                    "restored index {index} (newest write {}) from checkpoint {} + {} log entries, {} bytes fetched, in {:.2} s",
                    time_text(report.time_ms),
                    report.checkpoint_index,
                    report.entries_replayed,
                    report.bytes_fetched,
                    report.fetch_seconds + report.replay_seconds
                );
                println!(
                    "{} is a new single-node cluster; start it with:\n  ferry serve --id {id} --data-dir {} --raft-addr {raft_addr} --client-addr {client_addr}",
                    data_dir.display(),
                    data_dir.display()
                );
            }
            Ok(exit::OK)
        }
    }
}
