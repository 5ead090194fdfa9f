//! `/status.json`: what this member knows about the cluster, now.
//!
//! The leader knows every member's progress; a follower knows its own and
//! when it last heard from the leader, and names the leader's status page.
//! See the module's `## Format` (in `status/mod.rs`) for the fields.

use super::failovers::Failovers;
use super::traffic::{self, Traffic};
use crate::metrics::Metrics;
use ferry_replication::snapshot::progress::Direction;
use ferry_replication::types::now_ms;
use ferry_replication::Node;
use serde::Serialize;
use std::collections::BTreeSet;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

/// The version of the document's layout. Fields are only ever added within
/// a version; a removal or a change of meaning takes a new one.
pub const VERSION: u32 = 1;

/// What a report is built from.
pub struct Sources {
    pub node: Arc<Node>,
    pub metrics: Arc<Metrics>,
    pub failovers: Arc<Failovers>,
    /// A learner (DR standby) lagging more than this is past its bound
    /// (`None`: no bound set).
    pub learner_bound: Option<Duration>,
    /// A member not heard from for this long is unreachable.
    pub unreachable_after: Duration,
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub version: u32,
    pub generated_ms: u64,
    pub node: NodeView,
    pub members: Vec<MemberView>,
    pub rpo: Rpo,
    pub failovers: Vec<FailoverView>,
    pub transfers: Vec<TransferView>,
    pub backup_chain: Option<ChainView>,
    pub engine: EngineView,
    pub traffic: TrafficView,
    pub alarms: Vec<Alarm>,
}

#[derive(Debug, Serialize)]
pub struct NodeView {
    pub id: u64,
    /// leader, follower, learner or candidate.
    pub role: &'static str,
    pub term: u64,
    pub leader_id: Option<u64>,
    /// The leader's status page, once its messages named it.
    pub leader_status_url: Option<String>,
    pub commit_index: u64,
    pub applied_index: u64,
    pub last_log_index: u64,
    /// The first entry still in the log (those before it were purged
    /// behind a snapshot: a member further behind gets a snapshot).
    pub first_log_index: u64,
    /// On a follower: ms since the leader was last heard from.
    pub leader_contact_ms: Option<u64>,
}

#[derive(Debug, Serialize)]
pub struct MemberView {
    pub id: u64,
    /// leader, follower or learner.
    pub role: &'static str,
    /// voter, or dr_standby (a learner).
    pub kind: &'static str,
    pub raft_addr: String,
    pub client_addr: String,
    pub status_url: Option<String>,
    /// The highest index known to be in its log (on the leader: acknowledged).
    pub matched_index: Option<u64>,
    /// The member's applied index, where this member knows it (its own).
    pub applied_index: Option<u64>,
    pub lag_entries: Option<u64>,
    /// Time since it last acknowledged the leader (leader's view).
    pub lag_ms: Option<u64>,
    /// Time since this member last heard from it.
    pub last_contact_ms: Option<u64>,
    /// ok, lagging, unreachable, or unknown (a follower cannot tell).
    pub health: &'static str,
}

#[derive(Debug, Serialize)]
pub struct Rpo {
    /// Each DR standby's lag against its bound (known on the leader).
    pub standbys: Vec<StandbyView>,
    /// The backup chain's recovery point, if this member ships one.
    pub backup: Option<BackupView>,
}

#[derive(Debug, Serialize)]
pub struct StandbyView {
    pub id: u64,
    pub lag_ms: Option<u64>,
    pub lag_entries: Option<u64>,
    pub bound_ms: Option<u64>,
    pub exceeded: bool,
}

#[derive(Debug, Serialize)]
pub struct BackupView {
    pub shipped_index: u64,
    /// Applied entries not yet in the chain (on the leader, which ships).
    pub lag_entries: Option<u64>,
    pub last_success_ms: Option<u64>,
    pub failures: u64,
    pub bytes_shipped: u64,
}

#[derive(Debug, Serialize)]
pub struct FailoverView {
    pub at_ms: u64,
    pub from: u64,
    pub to: Option<u64>,
    pub term: Option<u64>,
    pub rto_ms: Option<u64>,
}

#[derive(Debug, Serialize)]
pub struct TransferView {
    pub peer: u64,
    /// send (this member is the leader) or receive.
    pub direction: &'static str,
    pub snapshot_index: u64,
    pub total_bytes: u64,
    pub done_bytes: u64,
    pub reused_bytes: u64,
    /// full, or differential (the follower reused files it held).
    pub kind: &'static str,
    pub elapsed_ms: u64,
    pub bytes_per_sec: u64,
}

#[derive(Debug, Serialize)]
pub struct ChainView {
    pub checkpoint_count: usize,
    pub newest_checkpoints: Vec<u64>,
    pub log_first: Option<u64>,
    pub log_last: Option<u64>,
    pub log_gaps: Vec<[u64; 2]>,
    pub restorable_first: Option<u64>,
    pub restorable_last: Option<u64>,
    /// When the newest restore point was shipped.
    pub newest_restore_point_ms: Option<u64>,
}

#[derive(Debug, Serialize)]
pub struct EngineView {
    /// Bytes of tables.
    pub table_bytes: u64,
    pub levels: Vec<LevelView>,
    pub compaction_debt_bytes: u64,
    pub write_amplification: f64,
    pub write_stalls: u64,
    pub stall_ms: u64,
    pub flushes: u64,
    pub compactions: u64,
}

#[derive(Debug, Serialize)]
pub struct LevelView {
    pub level: usize,
    pub files: usize,
    pub bytes: u64,
}

#[derive(Debug, Serialize)]
pub struct TrafficView {
    pub interval_ms: u64,
    /// When each sample closed, oldest first.
    pub samples_ms: Vec<u64>,
    pub methods: Vec<MethodSeries>,
}

#[derive(Debug, Serialize)]
pub struct MethodSeries {
    pub method: &'static str,
    /// One figure per sample (0 where the method had no request).
    pub per_sec: Vec<f64>,
    pub errors_per_sec: Vec<f64>,
    pub p99_us: Vec<u64>,
}

#[derive(Debug, Serialize)]
pub struct Alarm {
    /// warning or critical.
    pub severity: &'static str,
    /// A stable name for scripts, e.g. `no_leader`.
    pub code: &'static str,
    pub message: String,
}

fn ms(duration: Duration) -> u64 {
    duration.as_millis() as u64
}

impl Sources {
    pub fn report(&self) -> Report {
        let node = &self.node;
        let m = node.metrics();
        let me = node.id();
        let leads = m.current_leader == Some(me);
        let applied = m.last_applied.map_or(0, |l| l.index);
        let last_log = m.last_log_index.unwrap_or(0);
        let leader_contact = match m.current_leader {
            Some(leader) if leader != me => node.last_contact(leader).map(|t| t.elapsed()),
            _ => None,
        };
        let node_view = NodeView {
            id: me,
            role: match m.state {
                s if s.is_leader() => "leader",
                s if s.is_candidate() => "candidate",
                s if s.is_learner() => "learner",
                _ => "follower",
            },
            term: m.current_term,
            leader_id: m.current_leader,
            leader_status_url: m.current_leader.and_then(|l| node.status_url(l)),
            commit_index: m.local_committed.map_or(0, |l| l.index),
            applied_index: applied,
            last_log_index: last_log,
            first_log_index: m.purged.map_or(0, |l| l.index) + 1,
            leader_contact_ms: leader_contact.map(ms),
        };

        let membership = m.membership_config.membership();
        let voters: BTreeSet<u64> = membership.voter_ids().collect();
        let followers = node.followers();
        let mut members = Vec::new();
        let mut standbys = Vec::new();
        for (id, address) in membership.nodes() {
            let id = *id;
            let voter = voters.contains(&id);
            let progress = followers.iter().find(|f| f.id == id);
            let lag_ms = progress.and_then(|f| f.since_ack).map(ms);
            let lag_entries = progress.map(|f| f.lag_entries);
            let exceeded = !voter
                && leads
                && self
                    .learner_bound
                    .is_some_and(|bound| lag_ms.is_none_or(|lag| lag > ms(bound)));
            let health = if id == me {
                if leads || leader_contact.is_some_and(|c| c < self.unreachable_after) {
                    "ok"
                } else {
                    "unreachable"
                }
            } else if leads {
                match lag_ms {
                    Some(lag) if lag <= ms(self.unreachable_after) && !exceeded => "ok",
                    Some(lag) if lag <= ms(self.unreachable_after) => "lagging",
                    _ => "unreachable",
                }
            } else if m.current_leader == Some(id) {
                if leader_contact.is_some_and(|c| c < self.unreachable_after) {
                    "ok"
                } else {
                    "unreachable"
                }
            } else {
                "unknown"
            };
            if !voter {
                standbys.push(StandbyView {
                    id,
                    lag_ms,
                    lag_entries,
                    bound_ms: self.learner_bound.map(ms),
                    exceeded,
                });
            }
            members.push(MemberView {
                id,
                role: match (m.current_leader == Some(id), voter) {
                    (true, _) => "leader",
                    (false, true) => "follower",
                    (false, false) => "learner",
                },
                kind: if voter { "voter" } else { "dr_standby" },
                raft_addr: address.raft_addr.clone(),
                client_addr: address.client_addr.clone(),
                status_url: node.status_url(id),
                matched_index: if id == me {
                    Some(last_log)
                } else {
                    progress.and_then(|f| f.matched_index)
                },
                applied_index: (id == me).then_some(applied),
                lag_entries: if id == me && leads {
                    Some(0)
                } else {
                    lag_entries
                },
                lag_ms: if id == me && leads { Some(0) } else { lag_ms },
                // The leader hears from followers only in answers: their
                // last acknowledgement is its last contact.
                last_contact_ms: if id == me {
                    None
                } else if leads {
                    lag_ms
                } else {
                    node.last_contact(id).map(|t| ms(t.elapsed()))
                },
                health,
            });
        }

        let backup_status = self.metrics.backup();
        let backup = backup_status.map(|b| {
            let shipped = b.shipped_index.load(Ordering::Relaxed);
            let last = b.last_success_ms.load(Ordering::Relaxed);
            BackupView {
                shipped_index: shipped,
                lag_entries: leads.then(|| applied.saturating_sub(shipped)),
                last_success_ms: (last > 0).then_some(last),
                failures: b.failures.load(Ordering::Relaxed),
                bytes_shipped: b.bytes_shipped.load(Ordering::Relaxed),
            }
        });
        let backup_chain = backup_status.and_then(|b| {
            // Everything applied before the last good round started is in the chain.
            let last = b.restore_point_ms.load(Ordering::Relaxed);
            b.chain.lock().as_ref().map(|chain| ChainView {
                checkpoint_count: chain.checkpoint_count,
                newest_checkpoints: chain.newest_checkpoints.clone(),
                log_first: chain.log_range.map(|r| r.0),
                log_last: chain.log_range.map(|r| r.1),
                log_gaps: chain.log_gaps.iter().map(|g| [g.0, g.1]).collect(),
                restorable_first: chain.restorable.map(|r| r.0),
                restorable_last: chain.restorable.map(|r| r.1),
                newest_restore_point_ms: (last > 0).then_some(last),
            })
        });

        let transfers = node
            .transfer_stats()
            .active
            .list()
            .into_iter()
            .map(|t| TransferView {
                peer: t.peer,
                direction: match t.direction {
                    Direction::Send => "send",
                    Direction::Receive => "receive",
                },
                snapshot_index: t.snapshot_index,
                total_bytes: t.total_bytes,
                done_bytes: t.done_bytes,
                reused_bytes: t.reused_bytes,
                kind: if t.differential() {
                    "differential"
                } else {
                    "full"
                },
                elapsed_ms: t.elapsed_ms,
                bytes_per_sec: t.done_bytes * 1000 / t.elapsed_ms.max(1),
            })
            .collect();

        let engine = {
            let stats = node.state().db().statistics();
            EngineView {
                table_bytes: stats.level_bytes.iter().sum(),
                levels: stats
                    .level_files
                    .iter()
                    .zip(&stats.level_bytes)
                    .enumerate()
                    .map(|(level, (files, bytes))| LevelView {
                        level,
                        files: *files,
                        bytes: *bytes,
                    })
                    .collect(),
                compaction_debt_bytes: stats.compaction_debt_bytes,
                write_amplification: stats.write_amplification(),
                write_stalls: stats.write_slowdowns + stats.write_stops,
                stall_ms: stats.stall_micros / 1000,
                flushes: stats.flushes,
                compactions: stats.compactions,
            }
        };

        let failovers = self
            .failovers
            .list()
            .into_iter()
            .map(|f| FailoverView {
                at_ms: f.at_ms,
                from: f.from,
                to: f.to,
                term: f.term,
                rto_ms: f.rto_ms,
            })
            .collect();

        let mut alarms = Vec::new();
        if m.current_leader.is_none() {
            alarms.push(Alarm {
                severity: "critical",
                code: "no_leader",
                message: "no leader is known: writes and linearizable reads fail".into(),
            });
        }
        for member in &members {
            if member.health == "unreachable" && member.id != me {
                alarms.push(Alarm {
                    severity: "warning",
                    code: "member_unreachable",
                    message: format!("member {} has not been heard from", member.id),
                });
            }
        }
        for standby in standbys.iter().filter(|s| s.exceeded) {
            alarms.push(Alarm {
                severity: "warning",
                code: "standby_lag",
                message: format!(
                    "DR standby {} lags {} against its bound of {} ms: its recovery point is falling behind",
                    standby.id,
                    standby.lag_ms.map_or("(never acknowledged)".to_owned(), |l| format!("{l} ms")),
                    standby.bound_ms.unwrap_or(0)
                ),
            });
        }
        if let Some(b) = &backup {
            if b.failures > 0 && leads {
                alarms.push(Alarm {
                    severity: "warning",
                    code: "backup_failures",
                    message: format!("{} backup rounds have failed", b.failures),
                });
            }
        }
        let misaddressed = node.misaddressed();
        if misaddressed.count > 0 {
            alarms.push(Alarm {
                severity: "warning",
                code: "misaddressed_peer",
                message: format!(
                    "{} Raft requests refused as misaddressed, the last from node {} meant for node {}",
                    misaddressed.count, misaddressed.last_from, misaddressed.last_to
                ),
            });
        }
        if engine.write_stalls > 0 {
            alarms.push(Alarm {
                severity: "warning",
                code: "write_stalls",
                message: format!(
                    "the engine delayed writes {} times ({} ms in all): compaction is behind",
                    engine.write_stalls, engine.stall_ms
                ),
            });
        }

        Report {
            version: VERSION,
            generated_ms: now_ms(),
            node: node_view,
            members,
            rpo: Rpo { standbys, backup },
            failovers,
            transfers,
            backup_chain,
            engine,
            traffic: traffic_view(&self.metrics.traffic),
            alarms,
        }
    }
}

fn traffic_view(traffic: &Traffic) -> TrafficView {
    let samples = traffic.samples();
    let methods: BTreeSet<&'static str> = samples
        .iter()
        .flat_map(|s| s.methods.keys().copied())
        .collect();
    TrafficView {
        interval_ms: ms(traffic::SAMPLE_INTERVAL),
        samples_ms: samples.iter().map(|s| s.at_ms).collect(),
        methods: methods
            .into_iter()
            .map(|method| {
                let series = |f: &dyn Fn(&traffic::MethodSample) -> f64| -> Vec<f64> {
                    samples
                        .iter()
                        .map(|s| s.methods.get(method).map_or(0.0, f))
                        .collect()
                };
                MethodSeries {
                    method,
                    per_sec: series(&|m| m.per_sec),
                    errors_per_sec: series(&|m| m.errors_per_sec),
                    p99_us: series(&|m| m.p99_us as f64)
                        .into_iter()
                        .map(|v| v as u64)
                        .collect(),
                }
            })
            .collect(),
    }
}
