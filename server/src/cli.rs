//! The `ferry` tool's client commands: `kv`, `cluster`, `snapshot`, and the
//! offline `backup` commands.
//!
//! Human-readable tables by default, `--json` for scripts. Exit codes:
//! 0 success, 1 the server refused or failed the request, 2 bad usage,
//! 3 the key was not found (`kv get`), 4 no member answered in time.

use clap::{Args, Subcommand};
use ferry_client::pb;
use ferry_client::{Client, Error, Txn};
use serde_json::json;
use std::io::Write;
use std::path::PathBuf;

/// Exit codes scripts can rely on.
pub mod exit {
    pub const OK: i32 = 0;
    pub const FAILED: i32 = 1;
    pub const USAGE: i32 = 2;
    pub const NOT_FOUND: i32 = 3;
    pub const UNAVAILABLE: i32 = 4;
}

#[derive(Debug, Clone, Args)]
pub struct Common {
    /// Client addresses of any cluster members, comma-separated.
    #[arg(
        long,
        global = true,
        default_value = "127.0.0.1:7400",
        value_delimiter = ','
    )]
    pub endpoints: Vec<String>,
    /// Print JSON instead of a table.
    #[arg(long, global = true)]
    pub json: bool,
}

#[derive(Debug, Subcommand)]
pub enum KvCommand {
    /// Print a key's value.
    Get {
        key: String,
        /// Read from any member without a quorum round.
        #[arg(long)]
        stale: bool,
    },
    /// Set a key.
    Put { key: String, value: String },
    /// Delete a key.
    Del { key: String },
    /// List keys (by prefix or range), following pages.
    Scan {
        #[arg(long, default_value = "")]
        prefix: String,
        #[arg(long)]
        start: Option<String>,
        #[arg(long)]
        end: Option<String>,
        /// At most this many keys in all.
        #[arg(long, default_value_t = 1000)]
        limit: u64,
        #[arg(long)]
        keys_only: bool,
        /// Only count the keys.
        #[arg(long)]
        count: bool,
    },
    /// A transaction: compares, then puts/deletes/gets on success or failure.
    Txn {
        /// KEY=VALUE: holds if KEY's value is VALUE.
        #[arg(long = "if-value")]
        if_value: Vec<String>,
        /// KEY: holds if KEY is absent.
        #[arg(long = "if-absent")]
        if_absent: Vec<String>,
        /// KEY=VALUE to put when the compares hold.
        #[arg(long = "then-put")]
        then_put: Vec<String>,
        #[arg(long = "then-del")]
        then_del: Vec<String>,
        #[arg(long = "then-get")]
        then_get: Vec<String>,
        #[arg(long = "else-put")]
        else_put: Vec<String>,
        #[arg(long = "else-get")]
        else_get: Vec<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum ClusterCommand {
    /// Members, roles, term, commit and applied index, lag.
    Status,
    /// Add a member as a learner (it catches up before this returns).
    Add {
        #[arg(long)]
        id: u64,
        #[arg(long)]
        raft_addr: String,
        #[arg(long)]
        client_addr: String,
    },
    /// Make a learner a voter.
    Promote { id: u64 },
    /// Remove a member.
    Remove { id: u64 },
    /// Hand leadership to a member.
    TransferLeader { id: u64 },
    /// Offline, on a stopped member whose cluster lost its majority for
    /// good: make its data directory a new single-node cluster of its own
    /// state (the old directory is kept beside it). Writes it had not
    /// applied are lost; never let old members rejoin.
    Recover {
        #[arg(long)]
        data_dir: PathBuf,
        #[arg(long)]
        id: u64,
        #[arg(long)]
        raft_addr: String,
        #[arg(long)]
        client_addr: String,
    },
}

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

/// Parses `--to-time`: RFC 3339 or Unix milliseconds.
pub fn parse_time_ms(text: &str) -> Result<u64, String> {
    if let Ok(ms) = text.parse::<u64>() {
        return Ok(ms);
    }
    chrono::DateTime::parse_from_rfc3339(text)
        .map_err(|e| format!("{text:?} is neither RFC 3339 nor Unix milliseconds: {e}"))
        .and_then(|t| {
            u64::try_from(t.timestamp_millis()).map_err(|_| format!("{text:?} is before 1970"))
        })
}

fn time_text(ms: u64) -> String {
    i64::try_from(ms)
        .ok()
        .and_then(chrono::DateTime::from_timestamp_millis)
        .map_or_else(
            || format!("{ms} ms"),
            |t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        )
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
                let record = Catalog::checkpoint(&target, index, scratch.path()).map_err(failed)?;
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

#[derive(Debug, Subcommand)]
pub enum SnapshotCommand {
    /// Build a snapshot now on the leader.
    Create,
    /// Download the current snapshot into a new directory (a checkpoint
    /// that `ferry-engine` opens as a database).
    Download { dir: PathBuf },
    /// Export the state as Parquet into a directory on the server.
    ExportParquet { dir: String },
    /// Offline: make a fresh data directory that starts as a new
    /// single-node cluster holding a downloaded snapshot's state. Never let
    /// members of the old cluster join it.
    Restore {
        /// A snapshot directory (from `ferry snapshot download`).
        #[arg(long)]
        from: PathBuf,
        /// The new node's data directory (must not exist).
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

/// Prints an error and returns the exit code for it.
pub fn fail(error: &Error) -> i32 {
    eprintln!("error: {error}");
    match error {
        Error::DeadlineExceeded { .. } => exit::UNAVAILABLE,
        Error::Endpoint(_) => exit::USAGE,
        _ => exit::FAILED,
    }
}

fn split_pair(text: &str) -> Result<(String, String), i32> {
    text.split_once('=')
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .ok_or_else(|| {
            eprintln!("error: {text:?} is not KEY=VALUE");
            exit::USAGE
        })
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn kv_json(kv: &pb::KeyValue) -> serde_json::Value {
    json!({
        "key": text(&kv.key),
        "value": text(&kv.value),
        "create_revision": kv.create_revision,
        "mod_revision": kv.mod_revision,
        "version": kv.version,
    })
}

fn print_table(header: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            widths[i] = widths[i].max(cell.len());
        }
    }
    let line = |cells: Vec<String>| {
        cells
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:<w$}", w = widths[i]))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_owned()
    };
    let mut out = std::io::stdout().lock();
    let _ = writeln!(
        out,
        "{}",
        line(header.iter().map(|h| h.to_string()).collect())
    );
    for row in rows {
        let _ = writeln!(out, "{}", line(row.clone()));
    }
}

async fn connect(common: &Common) -> Result<Client, i32> {
    Client::connect(common.endpoints.clone())
        .await
        .map_err(|e| fail(&e))
}

pub async fn kv(common: &Common, command: KvCommand) -> i32 {
    match kv_inner(common, command).await {
        Ok(code) | Err(code) => code,
    }
}

async fn kv_inner(common: &Common, command: KvCommand) -> Result<i32, i32> {
    let client = connect(common).await?;
    match command {
        KvCommand::Get { key, stale } => {
            let found = if stale {
                client
                    .stale()
                    .get(key.clone())
                    .await
                    .map_err(|e| fail(&e))?
                    .value
            } else {
                client.get(key.clone()).await.map_err(|e| fail(&e))?
            };
            match found {
                Some(kv) if common.json => println!("{}", kv_json(&kv)),
                Some(kv) => println!("{}", text(&kv.value)),
                None => {
                    if common.json {
                        println!("null");
                    } else {
                        eprintln!("{key}: not found");
                    }
                    return Ok(exit::NOT_FOUND);
                }
            }
        }
        KvCommand::Put { key, value } => {
            let revision = client.put(key, value).await.map_err(|e| fail(&e))?;
            if common.json {
                println!("{}", json!({ "revision": revision }));
            } else {
                println!("OK revision {revision}");
            }
        }
        KvCommand::Del { key } => {
            let deleted = client.delete(key).await.map_err(|e| fail(&e))?;
            if common.json {
                println!("{}", json!({ "deleted": deleted }));
            } else {
                println!("{}", if deleted { "deleted" } else { "not found" });
            }
        }
        KvCommand::Scan {
            prefix,
            start,
            end,
            limit,
            keys_only,
            count,
        } => {
            let mut request = pb::RangeRequest {
                prefix: prefix.into_bytes(),
                start: start.unwrap_or_default().into_bytes(),
                end: end.unwrap_or_default().into_bytes(),
                keys_only,
                count_only: count,
                limit: limit.min(1000) as u32,
                ..Default::default()
            };
            if count {
                let page = client.range_request(request).await.map_err(|e| fail(&e))?;
                if common.json {
                    println!(
                        "{}",
                        json!({ "count": page.count, "revision": page.revision })
                    );
                } else {
                    println!("{}", page.count);
                }
                return Ok(exit::OK);
            }
            let mut kvs = Vec::new();
            loop {
                let page = client
                    .range_request(request.clone())
                    .await
                    .map_err(|e| fail(&e))?;
                kvs.extend(page.kvs);
                match page.continuation {
                    Some(token) if (kvs.len() as u64) < limit => request.continuation = token,
                    _ => break,
                }
            }
            kvs.truncate(limit as usize);
            if common.json {
                println!(
                    "{}",
                    serde_json::Value::Array(kvs.iter().map(kv_json).collect())
                );
            } else {
                let rows: Vec<Vec<String>> = kvs
                    .iter()
                    .map(|kv| {
                        vec![
                            text(&kv.key),
                            if keys_only {
                                String::new()
                            } else {
                                text(&kv.value)
                            },
                            kv.mod_revision.to_string(),
                            kv.version.to_string(),
                        ]
                    })
                    .collect();
                print_table(&["KEY", "VALUE", "MOD_REVISION", "VERSION"], &rows);
            }
        }
        KvCommand::Txn {
            if_value,
            if_absent,
            then_put,
            then_del,
            then_get,
            else_put,
            else_get,
        } => {
            let mut txn = Txn::new();
            for pair in if_value {
                let (k, v) = split_pair(&pair)?;
                txn = txn.when_value(k, v);
            }
            for key in if_absent {
                txn = txn.when_absent(key);
            }
            for pair in then_put {
                let (k, v) = split_pair(&pair)?;
                txn = txn.then_put(k, v);
            }
            for key in then_del {
                txn = txn.then_delete(key);
            }
            for key in then_get {
                txn = txn.then_get(key);
            }
            for pair in else_put {
                let (k, v) = split_pair(&pair)?;
                txn = txn.else_put(k, v);
            }
            for key in else_get {
                txn = txn.else_get(key);
            }
            let result = client.txn(txn).await.map_err(|e| fail(&e))?;
            if common.json {
                let gets: Vec<_> = result
                    .gets
                    .iter()
                    .map(|g| g.as_ref().map(kv_json))
                    .collect();
                println!(
                    "{}",
                    json!({ "succeeded": result.succeeded, "revision": result.revision, "gets": gets })
                );
            } else {
                println!(
                    "{} revision {}",
                    if result.succeeded {
                        "SUCCEEDED"
                    } else {
                        "FAILED"
                    },
                    result.revision
                );
                for kv in result.gets.iter().flatten() {
                    println!("{} = {}", text(&kv.key), text(&kv.value));
                }
            }
        }
    }
    Ok(exit::OK)
}

fn print_members(common: &Common, members: &[pb::Member], extra: serde_json::Value) {
    if common.json {
        let members: Vec<_> = members
            .iter()
            .map(|m| {
                json!({
                    "id": m.id, "role": m.role, "voter": m.voter, "raft_addr": m.raft_addr,
                    "client_addr": m.client_addr, "matched_index": m.matched_index, "lag": m.lag,
                    "lag_ms": m.lag_ms,
                })
            })
            .collect();
        let mut value = extra;
        value["members"] = serde_json::Value::Array(members);
        println!("{value}");
        return;
    }
    let rows: Vec<Vec<String>> = members
        .iter()
        .map(|m| {
            vec![
                m.id.to_string(),
                m.role.clone(),
                m.client_addr.clone(),
                m.raft_addr.clone(),
                m.matched_index.to_string(),
                m.lag.to_string(),
                m.lag_ms.map_or("-".to_owned(), |ms| ms.to_string()),
            ]
        })
        .collect();
    print_table(
        &["ID", "ROLE", "CLIENT", "RAFT", "MATCHED", "LAG", "LAG_MS"],
        &rows,
    );
}

pub async fn cluster(common: &Common, command: ClusterCommand) -> i32 {
    match cluster_inner(common, command).await {
        Ok(code) | Err(code) => code,
    }
}

async fn leader_channel(client: &Client) -> Result<tonic::transport::Channel, i32> {
    client.refresh_members().await.map_err(|e| fail(&e))?;
    let leader = client.leader().ok_or_else(|| {
        eprintln!("error: no leader known");
        exit::UNAVAILABLE
    })?;
    tonic::transport::Endpoint::from_shared(format!("http://{leader}"))
        .map_err(|e| {
            eprintln!("error: {e}");
            exit::USAGE
        })
        .map(|e| e.connect_lazy())
}

fn status_fail(status: tonic::Status) -> i32 {
    eprintln!("error: {:?}: {}", status.code(), status.message());
    match status.code() {
        tonic::Code::Unavailable | tonic::Code::DeadlineExceeded => exit::UNAVAILABLE,
        tonic::Code::InvalidArgument => exit::USAGE,
        _ => exit::FAILED,
    }
}

async fn cluster_inner(common: &Common, command: ClusterCommand) -> Result<i32, i32> {
    if let ClusterCommand::Recover {
        data_dir,
        id,
        raft_addr,
        client_addr,
    } = command
    {
        let node = ferry_replication::types::FerryNode {
            raft_addr: raft_addr.clone(),
            client_addr: client_addr.clone(),
        };
        let recovered = ferry_replication::recovery::force_new_cluster(&data_dir, id, node).await;
        return report_new_cluster(common, recovered, &data_dir, id, &raft_addr, &client_addr);
    }
    let client = connect(common).await?;
    if let ClusterCommand::Status = command {
        let status = client.status().await.map_err(|e| fail(&e))?;
        let summary = json!({
            "leader_id": status.leader_id, "term": status.term, "commit_index": status.commit_index,
            "applied_index": status.applied_index, "last_log_index": status.last_log_index,
            "answered_by": status.header.as_ref().map_or(0, |h| h.node_id),
        });
        if !common.json {
            println!(
                "leader {}  term {}  commit {}  applied {}  (answered by node {})",
                status.leader_id,
                status.term,
                status.commit_index,
                status.applied_index,
                status.header.as_ref().map_or(0, |h| h.node_id)
            );
        }
        print_members(common, &status.members, summary);
        return Ok(exit::OK);
    }
    let channel = leader_channel(&client).await?;
    let mut cluster = pb::cluster_client::ClusterClient::new(channel);
    let response = match command {
        ClusterCommand::Status | ClusterCommand::Recover { .. } => unreachable!("handled above"),
        ClusterCommand::Add {
            id,
            raft_addr,
            client_addr,
        } => {
            cluster
                .member_add(pb::MemberAddRequest {
                    id,
                    raft_addr,
                    client_addr,
                    wait: true,
                })
                .await
        }
        ClusterCommand::Promote { id } => cluster.promote(pb::MemberRequest { id }).await,
        ClusterCommand::Remove { id } => cluster.remove(pb::MemberRequest { id }).await,
        ClusterCommand::TransferLeader { id } => {
            cluster.transfer_leader(pb::MemberRequest { id }).await
        }
    }
    .map_err(status_fail)?
    .into_inner();
    print_members(
        common,
        &response.members,
        json!({ "revision": response.header.map_or(0, |h| h.revision) }),
    );
    Ok(exit::OK)
}

/// Reports a data directory made into a new single-node cluster (by
/// `cluster recover` or `snapshot restore`) and how to start it.
fn report_new_cluster(
    common: &Common,
    recovered: std::io::Result<ferry_replication::recovery::Recovered>,
    data_dir: &std::path::Path,
    id: u64,
    raft_addr: &str,
    client_addr: &str,
) -> Result<i32, i32> {
    let recovered = recovered.map_err(|e| {
        eprintln!("error: {e}");
        exit::FAILED
    })?;
    let index = recovered.applied.map_or(0, |l| l.index);
    if common.json {
        println!(
            "{}",
            json!({ "data_dir": data_dir.display().to_string(), "index": index })
        );
    } else {
        println!(
            "{} is a new single-node cluster at index {index}; start it with:\n  ferry serve --id {id} --data-dir {} --raft-addr {raft_addr} --client-addr {client_addr}",
            data_dir.display(),
            data_dir.display()
        );
    }
    Ok(exit::OK)
}

pub async fn snapshot(common: &Common, command: SnapshotCommand) -> i32 {
    match snapshot_inner(common, command).await {
        Ok(code) | Err(code) => code,
    }
}

async fn snapshot_inner(common: &Common, command: SnapshotCommand) -> Result<i32, i32> {
    if let SnapshotCommand::Restore {
        from,
        data_dir,
        id,
        raft_addr,
        client_addr,
    } = command
    {
        let node = ferry_replication::types::FerryNode {
            raft_addr: raft_addr.clone(),
            client_addr: client_addr.clone(),
        };
        let recovered =
            ferry_replication::recovery::restore_as_single_node(&from, &data_dir, id, node).await;
        return report_new_cluster(common, recovered, &data_dir, id, &raft_addr, &client_addr);
    }
    let client = connect(common).await?;
    let channel = leader_channel(&client).await?;
    let mut maintenance = pb::maintenance_client::MaintenanceClient::new(channel);
    match command {
        SnapshotCommand::Create => {
            let response = maintenance
                .checkpoint(pb::CheckpointRequest {})
                .await
                .map_err(status_fail)?
                .into_inner();
            if common.json {
                println!(
                    "{}",
                    json!({ "index": response.index, "bytes": response.bytes, "files": response.files })
                );
            } else {
                println!(
                    "snapshot at index {}: {} files, {} bytes",
                    response.index, response.files, response.bytes
                );
            }
        }
        SnapshotCommand::Download { dir } => {
            if dir.exists() {
                eprintln!("error: {} exists", dir.display());
                return Err(exit::USAGE);
            }
            let partial = dir.with_extension("partial");
            std::fs::create_dir_all(&partial).map_err(|e| {
                eprintln!("error: {}: {e}", partial.display());
                exit::FAILED
            })?;
            let mut stream = maintenance
                .snapshot(pb::SnapshotRequest {})
                .await
                .map_err(status_fail)?
                .into_inner();
            let bar = indicatif::ProgressBar::hidden();
            let mut current: Option<(
                pb::SnapshotFileHeader,
                std::fs::File,
                crc32fast::Hasher,
                u64,
            )> = None;
            let mut info = None;
            let finish = |current: Option<(
                pb::SnapshotFileHeader,
                std::fs::File,
                crc32fast::Hasher,
                u64,
            )>|
             -> Result<(), i32> {
                if let Some((header, file, hasher, written)) = current {
                    let crc = hasher.finalize();
                    if written != header.size || crc != header.crc {
                        eprintln!(
                            "error: {} arrived with {written} bytes and CRC {crc:08x}, expected {} and {:08x}",
                            header.name, header.size, header.crc
                        );
                        return Err(exit::FAILED);
                    }
                    file.sync_all().map_err(|_| exit::FAILED)?;
                }
                Ok(())
            };
            while let Some(chunk) = stream.message().await.map_err(status_fail)? {
                match chunk.chunk {
                    Some(pb::snapshot_chunk::Chunk::Info(i)) => {
                        if !common.json {
                            bar.set_draw_target(indicatif::ProgressDrawTarget::stderr());
                        }
                        bar.set_length(i.total_bytes);
                        bar.set_style(
                            indicatif::ProgressStyle::with_template(
                                "{bar:40} {bytes}/{total_bytes} {bytes_per_sec}",
                            )
                            .expect("static template"),
                        );
                        info = Some(i);
                    }
                    Some(pb::snapshot_chunk::Chunk::File(header)) => {
                        finish(current.take())?;
                        if header.name.contains(['/', '\\']) || header.name.starts_with('.') {
                            eprintln!("error: the server named a file {:?}", header.name);
                            return Err(exit::FAILED);
                        }
                        let file = std::fs::File::create(partial.join(&header.name))
                            .map_err(|_| exit::FAILED)?;
                        current = Some((header, file, crc32fast::Hasher::new(), 0));
                    }
                    Some(pb::snapshot_chunk::Chunk::Data(data)) => {
                        let Some((_, file, hasher, written)) = current.as_mut() else {
                            eprintln!("error: data before a file header");
                            return Err(exit::FAILED);
                        };
                        file.write_all(&data).map_err(|_| exit::FAILED)?;
                        hasher.update(&data);
                        *written += data.len() as u64;
                        bar.inc(data.len() as u64);
                    }
                    None => {}
                }
            }
            finish(current.take())?;
            bar.finish_and_clear();
            std::fs::rename(&partial, &dir).map_err(|_| exit::FAILED)?;
            let info = info.unwrap_or_default();
            if common.json {
                println!(
                    "{}",
                    json!({ "dir": dir.display().to_string(), "index": info.index, "bytes": info.total_bytes, "files": info.files })
                );
            } else {
                println!(
                    "downloaded the snapshot at index {} ({} files, {} bytes) into {}",
                    info.index,
                    info.files,
                    info.total_bytes,
                    dir.display()
                );
            }
        }
        SnapshotCommand::Restore { .. } => unreachable!("handled above"),
        SnapshotCommand::ExportParquet { dir } => {
            let response = maintenance
                .export_parquet(pb::ExportParquetRequest { dir: dir.clone() })
                .await
                .map_err(status_fail)?
                .into_inner();
            if common.json {
                println!(
                    "{}",
                    json!({ "dir": dir, "rows": response.rows, "bytes": response.bytes, "files": response.files })
                );
            } else {
                println!(
                    "exported {} rows into {} Parquet files ({} bytes) in {dir} on the server",
                    response.rows, response.files, response.bytes
                );
            }
        }
    }
    Ok(exit::OK)
}
