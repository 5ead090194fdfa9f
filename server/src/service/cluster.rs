//! The Cluster service: status and membership changes.

use super::{timed, Context};
use ferry_client::pb::{self, cluster_server::Cluster};
use ferry_replication::auth::Access;
use ferry_replication::types::FerryNode;
use openraft_free::role;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tonic::{Request, Response, Status};

/// Helpers that keep openraft's types out of this module's signatures.
mod openraft_free {
    pub(super) fn role(leader: Option<u64>, id: u64, voter: bool) -> &'static str {
        match (leader == Some(id), voter) {
            (true, _) => "leader",
            (false, true) => "follower",
            (false, false) => "learner",
        }
    }
}

/// Longest a `MemberAdd` with `wait` waits for the learner to catch up.
const MAX_ADD_WAIT: std::time::Duration = std::time::Duration::from_secs(300);

pub struct ClusterService {
    pub context: Context,
}

impl ClusterService {
    fn members(&self) -> Vec<pb::Member> {
        let metrics = self.context.node.metrics();
        let membership = metrics.membership_config.membership();
        let voters: Vec<u64> = membership.voter_ids().collect();
        let last = metrics.last_log_index.unwrap_or(0);
        let followers = self.context.node.followers();
        membership
            .nodes()
            .map(|(id, node)| {
                let voter = voters.contains(id);
                let since_ack = followers
                    .iter()
                    .find(|f| f.id == *id)
                    .and_then(|f| f.since_ack);
                let matched = metrics
                    .replication
                    .as_ref()
                    .and_then(|r| r.get(id).copied().flatten())
                    .map(|l| l.index);
                pb::Member {
                    id: *id,
                    raft_addr: node.raft_addr.clone(),
                    client_addr: node.client_addr.clone(),
                    role: role(metrics.current_leader, *id, voter).to_owned(),
                    voter,
                    matched_index: matched.unwrap_or(0),
                    lag: matched.map_or(0, |m| last.saturating_sub(m)),
                    lag_ms: since_ack.map(|d| d.as_millis() as u64),
                    never_contacted: self.context.node.is_leader()
                        && metrics.current_leader != Some(*id)
                        && since_ack.is_none(),
                }
            })
            .collect()
    }

    fn answer(&self, revision: u64) -> Response<pb::MemberResponse> {
        Response::new(pb::MemberResponse {
            header: self.context.header(revision),
            members: self.members(),
        })
    }
}

#[tonic::async_trait]
impl Cluster for ClusterService {
    async fn status(
        &self,
        request: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::StatusResponse>, Status> {
        timed(&self.context, "Status", async {
            self.context.gate.authorize(&request, &Access::Any)?;
            let metrics = self.context.node.metrics();
            let applied = metrics.last_applied.map_or(0, |l| l.index);
            let role = match metrics.state {
                s if s.is_leader() => "leader",
                s if s.is_candidate() => "candidate",
                s if s.is_learner() => "learner",
                _ => "follower",
            };
            let (apply_version, implemented_apply_version) = self
                .context
                .node
                .apply_version()
                .map_err(|e| self.context.status(e))?;
            Ok(Response::new(pb::StatusResponse {
                apply_version,
                implemented_apply_version,
                header: self.context.header(applied),
                term: metrics.current_term,
                commit_index: metrics.local_committed.map_or(0, |l| l.index),
                applied_index: applied,
                role: role.to_owned(),
                leader_id: metrics.current_leader.unwrap_or(0),
                members: self.members(),
                last_log_index: metrics.last_log_index.unwrap_or(0),
                misaddressed: {
                    let m = self.context.node.misaddressed();
                    (m.count > 0).then_some(pb::Misaddressed {
                        count: m.count,
                        last_from: m.last_from,
                        last_to: m.last_to,
                    })
                },
                backup: self.context.metrics.backup().map(|b| {
                    let set = |ms: u64| (ms > 0).then_some(ms);
                    pb::BackupStatus {
                        shipped_index: b.shipped_index.load(Ordering::Relaxed),
                        restore_point_ms: set(b.restore_point_ms.load(Ordering::Relaxed)),
                        last_success_ms: set(b.last_success_ms.load(Ordering::Relaxed)),
                        failures: b.failures.load(Ordering::Relaxed),
                    }
                }),
            }))
        })
        .await
    }

    async fn member_add(
        &self,
        request: Request<pb::MemberAddRequest>,
    ) -> Result<Response<pb::MemberResponse>, Status> {
        timed(&self.context, "MemberAdd", async {
            self.context.gate.authorize(&request, &Access::Root)?;
            let request = request.into_inner();
            if request.id == 0 || request.raft_addr.is_empty() {
                return Err(Status::invalid_argument(
                    "a member needs an id and a raft address",
                ));
            }
            let node = FerryNode {
                raft_addr: request.raft_addr,
                client_addr: request.client_addr,
            };
            let revision = self
                .context
                .node
                .add_learner(request.id, node, false)
                .await
                .map_err(|e| self.context.status(e))?;
            if request.wait {
                // Bounded even if the caller set no deadline: a learner
                // that never connects must not hold the call for ever.
                let waited = tokio::time::timeout(
                    MAX_ADD_WAIT,
                    self.context.node.wait_replicated(request.id, revision),
                )
                .await;
                match waited {
                    Ok(result) => result.map_err(|e| self.context.status(e))?,
                    Err(_) => {
                        return Err(Status::deadline_exceeded(format!(
                            "member {} was added as a learner but has not caught up within {MAX_ADD_WAIT:?}{}",
                            request.id,
                            if self.members().iter().any(|m| m.id == request.id && m.never_contacted) {
                                ": it never connected"
                            } else {
                                ""
                            }
                        )))
                    }
                }
            }
            Ok(self.answer(revision))
        })
        .await
    }

    async fn promote(
        &self,
        request: Request<pb::MemberRequest>,
    ) -> Result<Response<pb::MemberResponse>, Status> {
        timed(&self.context, "Promote", async {
            self.context.gate.authorize(&request, &Access::Root)?;
            let id = request.into_inner().id;
            let revision = self
                .context
                .node
                .promote(id)
                .await
                .map_err(|e| self.context.status(e))?;
            Ok(self.answer(revision))
        })
        .await
    }

    async fn remove(
        &self,
        request: Request<pb::MemberRequest>,
    ) -> Result<Response<pb::MemberResponse>, Status> {
        timed(&self.context, "Remove", async {
            self.context.gate.authorize(&request, &Access::Root)?;
            let id = request.into_inner().id;
            let revision = self
                .context
                .node
                .remove(id)
                .await
                .map_err(|e| self.context.status(e))?;
            Ok(self.answer(revision))
        })
        .await
    }

    async fn transfer_leader(
        &self,
        request: Request<pb::MemberRequest>,
    ) -> Result<Response<pb::MemberResponse>, Status> {
        timed(&self.context, "TransferLeader", async {
            self.context.gate.authorize(&request, &Access::Root)?;
            let id = request.into_inner().id;
            let node = &self.context.node;
            if !node.is_leader() {
                return Err(self.context.status(ferry_replication::Error::NotLeader {
                    leader_id: node.metrics().current_leader,
                    leader_addr: None,
                }));
            }
            node.transfer_leadership(id, Duration::from_secs(5))
                .await
                .map_err(|e| self.context.status(e))?;
            Ok(self.answer(node.metrics().last_applied.map_or(0, |l| l.index)))
        })
        .await
    }
}
