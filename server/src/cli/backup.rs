//! `ferry backup`: offline listing, verification and point-in-time
//! restore of a backup chain, in a directory or in object storage.

use super::output::{parse_time_ms, time_text};
use super::{exit, Common};
use clap::{Args, Subcommand};
use ferry_replication::backup::BackupTarget;
use serde_json::json;
use std::path::PathBuf;
use std::sync::Arc;

/// Where the chain is: `--dir DIR` or `--url s3://bucket/prefix`.
#[derive(Debug, Args)]
pub struct ChainArgs {
    /// The backup directory (`ferry serve --backup-dir`).
    #[arg(long, required_unless_present = "url", conflicts_with = "url")]
    dir: Option<PathBuf>,
    /// The chain's URL (`ferry serve --backup-url`): s3://bucket/prefix or
    /// file:///path. S3 credentials come from the AWS environment variables.
    #[arg(long)]
    url: Option<String>,
    #[command(flatten)]
    s3: S3Args,
}

/// How to reach S3, for `ferry serve` and `ferry backup`. Fields not given
/// come from the standard AWS environment variables.
#[derive(Debug, Clone, Args)]
pub struct S3Args {
    /// S3 endpoint, for S3-compatible servers (default: AWS_ENDPOINT, or AWS).
    #[arg(long)]
    pub s3_endpoint: Option<String>,
    /// S3 region (default: AWS_REGION).
    #[arg(long)]
    pub s3_region: Option<String>,
    /// S3 access key id (default: AWS_ACCESS_KEY_ID).
    #[arg(long)]
    pub s3_access_key_id: Option<String>,
    /// A file holding the S3 secret key (default: AWS_SECRET_ACCESS_KEY).
    #[arg(long)]
    pub s3_secret_access_key_file: Option<PathBuf>,
}

/// S3 settings from flags; a secret is read from a file, never taken on
/// the command line (where `ps` shows it).
pub fn s3_options(
    endpoint: Option<String>,
    region: Option<String>,
    access_key_id: Option<String>,
    secret_file: Option<&std::path::Path>,
) -> std::io::Result<ferry_replication::backup::S3Options> {
    let secret_access_key = match secret_file {
        Some(path) => Some(
            std::fs::read_to_string(path)
                .map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", path.display())))?
                .trim()
                .to_string(),
        ),
        None => None,
    };
    Ok(ferry_replication::backup::S3Options {
        endpoint,
        region,
        access_key_id,
        secret_access_key,
    })
}

impl ChainArgs {
    fn open(&self) -> Result<Arc<dyn BackupTarget>, i32> {
        let url = match (&self.url, &self.dir) {
            (Some(url), _) => url.clone(),
            (None, Some(dir)) => {
                if !dir.is_dir() {
                    eprintln!("error: {} is not a directory", dir.display());
                    return Err(exit::USAGE);
                }
                dir.to_string_lossy().into_owned()
            }
            (None, None) => return Err(exit::USAGE),
        };
        let s3 = s3_options(
            self.s3.s3_endpoint.clone(),
            self.s3.s3_region.clone(),
            self.s3.s3_access_key_id.clone(),
            self.s3.s3_secret_access_key_file.as_deref(),
        );
        s3.and_then(|s3| ferry_replication::backup::open(&url, &s3))
            .map_err(|e| {
                eprintln!("error: {url}: {e}");
                exit::USAGE
            })
    }
}

#[derive(Debug, Subcommand)]
pub enum BackupCommand {
    /// Show a backup chain: its checkpoints and the log range it holds.
    List {
        #[command(flatten)]
        chain: ChainArgs,
    },
    /// Check every object's checksum and the chain's continuity (no gap in
    /// the log, every checkpoint's files present) without restoring; print
    /// the restorable range. Exits non-zero if anything is wrong.
    Verify {
        #[command(flatten)]
        chain: ChainArgs,
    },
    /// Offline: rebuild the state as of a log index or a time (default:
    /// everything shipped) into a fresh data directory that starts as a
    /// new single-node cluster. Never let members of the old cluster join it.
    Restore {
        #[command(flatten)]
        chain: ChainArgs,
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
    use ferry_replication::backup::{self, Catalog, RestorePoint};
    let failed = |e: std::io::Error| {
        eprintln!("error: {e}");
        exit::FAILED
    };
    // Targets block while they fetch: keep them off the async threads.
    let off_runtime = |work: Box<dyn FnOnce() -> std::io::Result<serde_json::Value> + Send>| async {
        tokio::task::spawn_blocking(work)
            .await
            .unwrap_or_else(|e| Err(std::io::Error::other(e.to_string())))
    };
    match command {
        BackupCommand::Verify { chain } => {
            let target = chain.open()?;
            let report = off_runtime(Box::new(move || {
                let scratch = tempfile::NamedTempFile::new()?;
                let report = backup::verify(
                    &ferry_replication::engine::fs::OsFs,
                    &*target,
                    scratch.path(),
                )?;
                Ok(verify_json(&report))
            }))
            .await
            .map_err(failed)?;
            let problems = report["problems"].as_array().map_or(0, Vec::len);
            if common.json {
                println!("{report}");
            } else {
                println!(
                    "checked {} checkpoints, {} objects, {} log chunks ({} bytes read); {} orphaned files outside the chain",
                    report["checkpoints"], report["objects"], report["log_chunks"], report["bytes_read"], report["orphans"]
                );
                match report["restorable"].as_object() {
                    Some(r) => println!(
                        "restorable: index {} ({}) to index {} ({})",
                        r["first_index"],
                        r["first_time"].as_str().unwrap_or(""),
                        r["last_index"],
                        r["last_time"].as_str().unwrap_or("")
                    ),
                    None => println!("restorable: nothing (no intact checkpoint)"),
                }
                for problem in report["problems"].as_array().into_iter().flatten() {
                    println!(
                        "PROBLEM {}: {}",
                        problem["name"].as_str().unwrap_or(""),
                        problem["what"].as_str().unwrap_or("")
                    );
                }
                if problems == 0 {
                    println!("the chain is intact");
                }
            }
            Ok(if problems == 0 {
                exit::OK
            } else {
                exit::FAILED
            })
        }
        BackupCommand::List { chain } => {
            let target = chain.open()?;
            let (catalog, records) = tokio::task::spawn_blocking(move || {
                let catalog = Catalog::read(&*target)?;
                let scratch = tempfile::NamedTempFile::new()?;
                let mut records = Vec::new();
                for &index in &catalog.checkpoints {
                    records.push(catalog.checkpoint(
                        &ferry_replication::engine::fs::OsFs,
                        &*target,
                        index,
                        scratch.path(),
                    )?);
                }
                Ok::<_, std::io::Error>((catalog, records))
            })
            .await
            .map_err(|e| failed(std::io::Error::other(e.to_string())))?
            .map_err(failed)?;
            let mut rows = Vec::new();
            for (&index, record) in catalog.checkpoints.iter().zip(&records) {
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
            chain,
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
            let target = chain.open()?;
            let node = ferry_replication::types::FerryNode {
                raft_addr: raft_addr.clone(),
                client_addr: client_addr.clone(),
            };
            let bar = if common.json {
                indicatif::ProgressBar::hidden()
            } else {
                indicatif::ProgressBar::with_draw_target(
                    None,
                    indicatif::ProgressDrawTarget::stderr(),
                )
            };
            if let Ok(style) = indicatif::ProgressStyle::with_template(
                "{bar:40} {bytes}/{total_bytes} {bytes_per_sec} {msg}",
            ) {
                bar.set_style(style);
            }
            let drawn = bar.clone();
            let progress: backup::OnProgress = Arc::new(move |p: backup::RestoreProgress| {
                drawn.set_length(p.checkpoint_bytes);
                drawn.set_position(p.checkpoint_fetched);
                drawn.set_message(format!(
                    "checkpoint; log chunks {}/{}",
                    p.log_replayed, p.log_chunks
                ));
            });
            let report = backup::restore_with_progress(
                &ferry_engine::fs::OsFs::shared(),
                target,
                point,
                &data_dir,
                id,
                node,
                progress,
            )
            .await
            .map_err(failed)?;
            bar.finish_and_clear();
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

fn verify_json(report: &ferry_replication::backup::VerifyReport) -> serde_json::Value {
    json!({
        "checkpoints": report.checkpoints,
        "objects": report.objects,
        "log_chunks": report.log_chunks,
        "orphans": report.orphans,
        "bytes_read": report.bytes_read,
        "restorable": report.restorable.map(|r| json!({
            "first_index": r.first_index,
            "first_time_ms": r.first_time_ms,
            "first_time": time_text(r.first_time_ms),
            "last_index": r.last_index,
            "last_time_ms": r.last_time_ms,
            "last_time": time_text(r.last_time_ms),
        })),
        "problems": report.problems.iter().map(|p| json!({"name": p.name, "what": p.what})).collect::<Vec<_>>(),
    })
}
