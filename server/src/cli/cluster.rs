//! `ferry cluster`: membership, leadership, status, and offline recovery.

use super::output::{print_members, report_new_cluster, time_text};
use super::{connect, exit, fail, leader_channel, status_fail, Common};
use clap::Subcommand;
use ferry_client::pb;
use ferry_replication::types::now_ms;
use serde_json::json;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Polls the leader until learner `id` holds the log up to `index`,
/// printing its progress (on stderr: stdout is the command's answer).
async fn wait_caught_up(
    client: &ferry_client::Client,
    id: u64,
    index: u64,
    timeout: Duration,
) -> Result<(), i32> {
    let started = Instant::now();
    let mut reported = None;
    loop {
        let status = client.status().await.map_err(|e| fail(&e))?;
        let member = status.members.iter().find(|m| m.id == id).ok_or_else(|| {
            eprintln!("error: member {id} is no longer in the cluster");
            exit::FAILED
        })?;
        if member.matched_index >= index {
            eprintln!("member {id} caught up (index {index})");
            return Ok(());
        }
        let line = if member.never_contacted {
            format!(
                "member {id}: not connected yet ({}s)",
                started.elapsed().as_secs()
            )
        } else {
            format!("member {id}: at index {} of {index}", member.matched_index)
        };
        if reported.as_ref() != Some(&line) {
            eprintln!("{line}");
            reported = Some(line);
        }
        if started.elapsed() >= timeout {
            let why = if member.never_contacted {
                "it never connected: check its raft address, that it runs with --join, and its peer certificate"
            } else {
                "it is still catching up"
            };
            eprintln!(
                "error: member {id} did not catch up within {timeout:?}: {why}. It stays a learner; `ferry cluster remove {id}` removes it"
            );
            return Err(exit::UNAVAILABLE);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The backup status of the leader: from `status` if the leader answered
/// it, otherwise asked of the leader (`None` if no leader answers, or it
/// ships no backups).
async fn leader_backup(
    client: &ferry_client::Client,
    status: &pb::StatusResponse,
) -> Option<pb::BackupStatus> {
    let answered_by = status.header.as_ref().map_or(0, |h| h.node_id);
    if answered_by == status.leader_id {
        return status.backup;
    }
    let channel = client.leader_channel().await.ok()?;
    let leader = pb::cluster_client::ClusterClient::new(channel)
        .status(pb::StatusRequest {})
        .await
        .ok()?
        .into_inner();
    leader.backup
}

fn backup_json(backup: Option<&pb::BackupStatus>) -> serde_json::Value {
    match backup {
        None => serde_json::Value::Null,
        Some(b) => json!({
            "shipped_index": b.shipped_index,
            "restore_point_ms": b.restore_point_ms,
            "restore_point_age_ms": b.restore_point_ms.map(|t| now_ms().saturating_sub(t)),
            "last_success_ms": b.last_success_ms,
            "failures": b.failures,
        }),
    }
}

/// One line on the backup chain: how old its newest restore point is.
fn backup_line(backup: Option<&pb::BackupStatus>, now: u64) -> String {
    let Some(b) = backup else {
        return "backup: the leader ships no backups (--backup-url)".to_owned();
    };
    let failures = match b.failures {
        0 => String::new(),
        n => format!("  ({n} failed round(s))"),
    };
    match b.restore_point_ms {
        None => format!("backup: no restore point yet{failures}"),
        Some(point) => format!(
            "backup: newest restore point {} ({:.1} s old), chain up to index {}{failures}",
            time_text(point),
            now.saturating_sub(point) as f64 / 1000.0,
            b.shipped_index
        ),
    }
}

#[derive(Debug, Subcommand)]
pub enum ClusterCommand {
    /// Members, roles, term, commit and applied index, lag.
    Status,
    /// Add a member as a learner; with --wait (the default), report its
    /// catching up until it holds the log as of the add, or fail after
    /// --timeout-secs (the learner stays: remove it, or let it catch up).
    Add {
        #[arg(long)]
        id: u64,
        #[arg(long)]
        raft_addr: String,
        #[arg(long)]
        client_addr: String,
        /// Wait for the learner to catch up (--wait=false: return at once).
        #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
        wait: bool,
        #[arg(long, default_value_t = 120)]
        timeout_secs: u64,
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

pub async fn cluster(common: &Common, command: ClusterCommand) -> i32 {
    match cluster_inner(common, command).await {
        Ok(code) | Err(code) => code,
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
        let recovered = ferry_replication::recovery::force_new_cluster(
            &ferry_engine::fs::OsFs::shared(),
            &data_dir,
            id,
            node,
        )
        .await;
        return report_new_cluster(common, recovered, &data_dir, id, &raft_addr, &client_addr);
    }
    let client = connect(common).await?;
    if let ClusterCommand::Status = command {
        let status = client.status().await.map_err(|e| fail(&e))?;
        let summary = json!({
            "leader_id": status.leader_id, "term": status.term, "commit_index": status.commit_index,
            "applied_index": status.applied_index, "last_log_index": status.last_log_index,
            "answered_by": status.header.as_ref().map_or(0, |h| h.node_id),
            "apply_version": status.apply_version,
            "implemented_apply_version": status.implemented_apply_version,
        });
        if !common.json {
            println!(
                "leader {}  term {}  commit {}  applied {}  apply version {} (implements {})  (answered by node {})",
                status.leader_id,
                status.term,
                status.commit_index,
                status.applied_index,
                status.apply_version,
                status.implemented_apply_version,
                status.header.as_ref().map_or(0, |h| h.node_id)
            );
        }
        let mut summary = summary;
        // Only the leader ships backups: its figures are the current ones.
        let backup = leader_backup(&client, &status).await;
        summary["backup"] = backup_json(backup.as_ref());
        if !common.json {
            println!("{}", backup_line(backup.as_ref(), now_ms()));
        }
        // Each member counts the misaddressed peer requests it refused.
        let misaddressed = misaddressed_peers(&client, &status.members).await;
        if !misaddressed.is_empty() {
            summary["misaddressed"] = json!(misaddressed
                .iter()
                .map(|(node, m)| json!({
                    "node": node, "count": m.count, "last_from": m.last_from, "last_to": m.last_to,
                }))
                .collect::<Vec<_>>());
        }
        print_members(common, &status.members, summary);
        if !common.json {
            for (node, m) in &misaddressed {
                println!(
                    "warning: node {node} refused {} peer request(s) meant for another node; the last from node {} for node {}: node {} has a wrong Raft address for node {}",
                    m.count, m.last_from, m.last_to, m.last_from, m.last_to
                );
            }
        }
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
            wait,
            timeout_secs,
        } => {
            let added = cluster
                .member_add(pb::MemberAddRequest {
                    id,
                    raft_addr,
                    client_addr,
                    wait: false,
                })
                .await
                .map_err(status_fail)?
                .into_inner();
            if wait {
                let target = added.header.as_ref().map_or(0, |h| h.revision);
                wait_caught_up(&client, id, target, Duration::from_secs(timeout_secs)).await?;
            }
            Ok(tonic::Response::new(added))
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

/// The members that refused peer requests meant for another node, with
/// what they saw (asked one by one; one that does not answer within 2 s is
/// left out).
async fn misaddressed_peers(
    client: &ferry_client::Client,
    members: &[pb::Member],
) -> Vec<(u64, pb::Misaddressed)> {
    let mut found = Vec::new();
    for member in members.iter().filter(|m| !m.client_addr.is_empty()) {
        let ask = async {
            let channel = client.member_channel(&member.client_addr).await.ok()?;
            let status = pb::cluster_client::ClusterClient::new(channel)
                .status(pb::StatusRequest {})
                .await
                .ok()?
                .into_inner();
            status.misaddressed
        };
        if let Ok(Some(misaddressed)) =
            tokio::time::timeout(std::time::Duration::from_secs(2), ask).await
        {
            found.push((member.id, misaddressed));
        }
    }
    found
}
