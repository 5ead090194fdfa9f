//! etcd's Election service (`v3electionpb`): candidates queue as in
//! [`super::recipe`] under `name/`; the leader is the head of the queue and
//! its value is the proclamation. A `LeaderKey`'s `rev` (its key's create
//! revision) proves leadership in Proclaim and Resign, and fences writes.

use super::pb::v3electionpb::{self as pb, election_server::Election};
use super::recipe;
use super::{to_i64, to_u64, Etcd};
use crate::auth::Credential;
use ferry_engine::prefix_end;
use ferry_replication::auth::{Access, AccessKind};
use ferry_replication::types::{Compare, CompareOp, CompareTarget, Op, Txn};
use ferry_replication::WatchOptions;
use std::pin::Pin;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

pub struct ElectionService {
    pub etcd: Etcd,
    /// Watches open at once, shared with the Watch services: an Observe
    /// stream is one.
    pub watches: std::sync::Arc<crate::watch_slots::WatchSlots>,
}

/// etcd's `concurrency.ErrElectionNotLeader` and `ErrElectionNoLeader`.
const NOT_LEADER: &str = "election: not leader";
const NO_LEADER: &str = "election: no leader";

/// Leader answers an Observe stream may have queued for a slow reader.
const OBSERVE_QUEUE: usize = 4;

impl ElectionService {
    fn check<T>(
        &self,
        request: &Request<T>,
        kind: AccessKind,
        prefix: &[u8],
    ) -> Result<crate::auth::Principal, Status> {
        let credential = self.etcd.context.gate.credential(request);
        recipe::check(&self.etcd, &credential, kind, prefix)
    }

    /// The leader key a Proclaim or Resign names: a key of allowed length.
    /// (Whether the caller may write it is checked with the write.)
    fn leader_key(&self, leader: Option<&pb::LeaderKey>) -> Result<pb::LeaderKey, Status> {
        let leader = leader.ok_or_else(|| Status::invalid_argument(NOT_LEADER))?;
        self.etcd.check_key(&leader.key)?;
        Ok(leader.clone())
    }

    /// A txn on the leader's key for the caller presenting `credential`,
    /// done only if it is still the key the leader created (`rev`).
    async fn as_leader(
        &self,
        credential: &Credential,
        leader: &pb::LeaderKey,
        op: Op,
    ) -> Result<u64, Status> {
        let txn = Txn {
            compares: vec![Compare {
                key: leader.key.clone(),
                op: CompareOp::Equal,
                target: CompareTarget::CreateRevision(to_u64(leader.rev, "rev")?),
            }],
            success: vec![op],
            ..Txn::default()
        };
        let access = Access::key(AccessKind::Write, &leader.key);
        let response = self.etcd.write(credential, &[access], txn).await?;
        if !response.succeeded {
            return Err(Status::failed_precondition(NOT_LEADER));
        }
        Ok(response.revision)
    }
}

#[tonic::async_trait]
impl Election for ElectionService {
    async fn campaign(
        &self,
        request: Request<pb::CampaignRequest>,
    ) -> Result<Response<pb::CampaignResponse>, Status> {
        let etcd = &self.etcd;
        etcd.timed("etcd.Campaign", async {
            etcd.check_key(&request.get_ref().name)?;
            let prefix = recipe::queue_prefix(&request.get_ref().name);
            let credential = etcd.context.gate.credential(&request);
            let request = request.into_inner();
            etcd.context.check_value(&request.value)?;
            let (mut mine, mut abandon) =
                recipe::enqueue(etcd, &credential, &prefix, request.lease, &request.value).await?;
            let (key, lease) = (mine.key.clone(), mine.lease);
            // A campaign again on the same lease keeps its place and
            // proclaims the new value, as etcd's does.
            if mine.value != request.value {
                let leader = pb::LeaderKey {
                    name: request.name.clone(),
                    key: key.clone(),
                    rev: to_i64(mine.create_revision),
                    lease: to_i64(lease),
                };
                let op = Op::Put {
                    key: key.clone(),
                    value: request.value.clone(),
                    lease,
                    prev_kv: false,
                };
                self.as_leader(&credential, &leader, op).await?;
                mine.value = request.value.clone();
            }
            let revision = recipe::wait_for_head(etcd, &prefix, &mine).await?;
            abandon.armed = false;
            Ok(Response::new(pb::CampaignResponse {
                header: etcd.header(revision),
                leader: Some(pb::LeaderKey {
                    name: request.name,
                    key,
                    rev: to_i64(mine.create_revision),
                    lease: to_i64(lease),
                }),
            }))
        })
        .await
    }

    async fn proclaim(
        &self,
        request: Request<pb::ProclaimRequest>,
    ) -> Result<Response<pb::ProclaimResponse>, Status> {
        let etcd = &self.etcd;
        etcd.timed("etcd.Proclaim", async {
            let leader = self.leader_key(request.get_ref().leader.as_ref())?;
            let credential = etcd.context.gate.credential(&request);
            let value = request.into_inner().value;
            etcd.context.check_value(&value)?;
            let op = Op::Put {
                key: leader.key.clone(),
                value,
                lease: to_u64(leader.lease, "lease")?,
                prev_kv: false,
            };
            let revision = self.as_leader(&credential, &leader, op).await?;
            Ok(Response::new(pb::ProclaimResponse {
                header: etcd.header(revision),
            }))
        })
        .await
    }

    async fn leader(
        &self,
        request: Request<pb::LeaderRequest>,
    ) -> Result<Response<pb::LeaderResponse>, Status> {
        let etcd = &self.etcd;
        etcd.timed("etcd.Leader", async {
            etcd.check_key(&request.get_ref().name)?;
            let prefix = recipe::queue_prefix(&request.get_ref().name);
            self.check(&request, AccessKind::Read, &prefix)?;
            match recipe::head(etcd, &prefix).await? {
                (Some(kv), revision) => Ok(Response::new(pb::LeaderResponse {
                    header: etcd.header(revision),
                    kv: Some(kv),
                })),
                (None, _) => Err(Status::not_found(NO_LEADER)),
            }
        })
        .await
    }

    type ObserveStream = Pin<Box<dyn Stream<Item = Result<pb::LeaderResponse, Status>> + Send>>;

    async fn observe(
        &self,
        request: Request<pb::LeaderRequest>,
    ) -> Result<Response<Self::ObserveStream>, Status> {
        let etcd = self.etcd.clone();
        etcd.check_key(&request.get_ref().name)
            .map_err(super::gate_status)?;
        let prefix = recipe::queue_prefix(&request.get_ref().name);
        let principal = self
            .check(&request, AccessKind::Read, &prefix)
            .map_err(super::gate_status)?;
        let credential = etcd.context.gate.credential(&request);
        let permit = self
            .watches
            .take(principal.user.as_deref())
            .map_err(Status::resource_exhausted)?;
        let (sender, receiver) = mpsc::channel(OBSERVE_QUEUE);
        tokio::spawn(async move {
            let _permit = permit;
            let context = &etcd.context;
            let mut last = None;
            loop {
                // Checked again at each change, as a watch is: a user who
                // lost the permission (not a token that expired) loses it.
                let access = recipe::under(AccessKind::Read, &prefix);
                if let Err(status) = context.gate.check_continuing(&credential, &access) {
                    let _ = context.send(&sender, Err(super::gate_status(status))).await;
                    return;
                }
                let (head, revision) = match recipe::head(&etcd, &prefix).await {
                    Ok(found) => found,
                    Err(status) => {
                        let _ = context.send(&sender, Err(status)).await;
                        return;
                    }
                };
                // A new leader, or a new proclamation: say so.
                if let Some(kv) = head {
                    let seen = (kv.key.clone(), kv.mod_revision);
                    if last.as_ref() != Some(&seen) {
                        last = Some(seen);
                        let answer = pb::LeaderResponse {
                            header: etcd.header(revision),
                            kv: Some(kv),
                        };
                        if !context.send(&sender, Ok(answer)).await {
                            return;
                        }
                    }
                }
                // Then wait for any change under the prefix.
                let mut options =
                    WatchOptions::range(prefix.clone(), prefix_end(&prefix), revision + 1);
                // Any part of a revision says that something changed.
                options.split_revisions = true;
                let mut watcher = match context.node.watch(options) {
                    Ok(watcher) => watcher,
                    Err(error) => {
                        let _ = context
                            .send(&sender, Err(Status::unavailable(error.to_string())))
                            .await;
                        return;
                    }
                };
                loop {
                    let batch = tokio::select! {
                        batch = watcher.next() => batch,
                        () = context.stopped() => return,
                        () = sender.closed() => return,
                    };
                    match batch {
                        Ok(batch) if batch.events.is_empty() => continue,
                        Ok(_) => break,
                        Err(error) => {
                            let _ = context
                                .send(&sender, Err(Status::unavailable(error.to_string())))
                                .await;
                            return;
                        }
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(receiver))))
    }

    async fn resign(
        &self,
        request: Request<pb::ResignRequest>,
    ) -> Result<Response<pb::ResignResponse>, Status> {
        let etcd = &self.etcd;
        etcd.timed("etcd.Resign", async {
            let leader = self.leader_key(request.get_ref().leader.as_ref())?;
            // Resigning a leadership already lost is not an error in etcd.
            let credential = etcd.context.gate.credential(&request);
            let rev = to_u64(leader.rev, "rev")?;
            let revision = recipe::leave(etcd, Some(&credential), &leader.key, rev).await?;
            Ok(Response::new(pb::ResignResponse {
                header: etcd.header(revision),
            }))
        })
        .await
    }
}
