//! The Lease service over the node's leases (`ferry_replication::lease`).
//!
//! Permissions follow etcd: any authenticated user may grant, renew and
//! inspect leases (a lease holds no data); revoking one deletes its keys,
//! so it needs write permission on every key attached to it; attaching a
//! key is a put, checked as one.

use super::{timed, Context};
use ferry_client::pb::{self, lease_server::Lease};
use ferry_replication::auth::{Access, AccessKind};
use ferry_replication::lease::{LeaseCall, LeaseError, RevokeAs};
use std::pin::Pin;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};

pub struct LeaseService {
    pub context: Context,
}

/// Keep-alive answers a stream may have queued for a slow reader.
const KEEP_ALIVE_QUEUE: usize = 16;
/// This member checks a revoke before proposing it, as apply does after:
/// a lease with more keys than this is refused at once rather than listed
/// on every member for each attempt.
use ferry_replication::lease::MAX_CHECKED_KEYS;

impl LeaseService {
    fn status(&self, error: LeaseCall) -> Status {
        match error {
            LeaseCall::Node(error) => self.context.status(error),
            LeaseCall::Lease(error @ LeaseError::NotFound(_)) => {
                Status::not_found(error.to_string())
            }
            LeaseCall::Lease(error @ LeaseError::Exists(_)) => {
                Status::already_exists(error.to_string())
            }
            LeaseCall::Lease(error @ LeaseError::Ttl { .. }) => {
                Status::invalid_argument(error.to_string())
            }
            LeaseCall::Lease(error @ LeaseError::TooMany(_)) => {
                Status::resource_exhausted(error.to_string())
            }
            LeaseCall::Lease(error @ LeaseError::Denied(_)) => {
                Status::permission_denied(error.to_string())
            }
        }
    }
}

/// Why a revoke may not go ahead.
pub(crate) enum RevokeRefused {
    Denied(Status),
    Lease(LeaseCall),
}

impl RevokeRefused {
    pub(crate) fn into_status(self, lease: impl FnOnce(LeaseCall) -> Status) -> Status {
        match self {
            RevokeRefused::Denied(status) => status,
            RevokeRefused::Lease(call) => lease(call),
        }
    }
}

/// Whether the caller of `request` may revoke lease `id`: root may; anyone
/// else needs write permission on every key attached to it, since the
/// revoke deletes them, and the lease may hold at most
/// [`MAX_CHECKED_KEYS`]. This member's answer refuses early; apply decides,
/// by the keys and auth state of that moment (which may have moved since
/// this member looked), so the revoke is to be proposed as the returned
/// [`RevokeAs`].
pub(crate) async fn check_revoke<T>(
    context: &Context,
    request: &Request<T>,
    id: u64,
) -> Result<RevokeAs, RevokeRefused> {
    let caller = context
        .gate
        .authorize(request, &Access::Any)
        .map_err(RevokeRefused::Denied)?;
    let revoke_as = RevokeAs::Client {
        user: caller.user.clone(),
    };
    if caller.root {
        return Ok(revoke_as);
    }
    let status = context
        .node
        .lease_status_anywhere(id, MAX_CHECKED_KEYS)
        .await
        .map_err(RevokeRefused::Lease)?;
    if status.keys_truncated {
        return Err(RevokeRefused::Denied(Status::permission_denied(format!(
            "lease {id} holds more than {MAX_CHECKED_KEYS} keys: only root may revoke it"
        ))));
    }
    for key in &status.keys {
        context
            .gate
            .authorize(request, &Access::key(AccessKind::Write, key))
            .map_err(RevokeRefused::Denied)?;
    }
    Ok(revoke_as)
}

#[tonic::async_trait]
impl Lease for LeaseService {
    async fn grant(
        &self,
        request: Request<pb::LeaseGrantRequest>,
    ) -> Result<Response<pb::LeaseGrantResponse>, Status> {
        timed(&self.context, "LeaseGrant", async {
            self.context.gate.authorize(&request, &Access::Any)?;
            let request = request.into_inner();
            let ttl = Duration::from_secs(request.ttl_secs);
            let id = self
                .context
                .node
                .lease_grant(request.id, ttl)
                .await
                .map_err(|e| self.status(e))?;
            Ok(Response::new(pb::LeaseGrantResponse {
                header: self.context.header(self.context.applied()),
                id,
                ttl_secs: request.ttl_secs,
            }))
        })
        .await
    }

    async fn revoke(
        &self,
        request: Request<pb::LeaseRevokeRequest>,
    ) -> Result<Response<pb::LeaseRevokeResponse>, Status> {
        timed(&self.context, "LeaseRevoke", async {
            let id = request.get_ref().id;
            let by = check_revoke(&self.context, &request, id)
                .await
                .map_err(|e| e.into_status(|e| self.status(e)))?;
            let revision = self
                .context
                .node
                .lease_revoke(id, by)
                .await
                .map_err(|e| self.status(e))?;
            Ok(Response::new(pb::LeaseRevokeResponse {
                header: self.context.header(revision),
            }))
        })
        .await
    }

    type KeepAliveStream =
        Pin<Box<dyn Stream<Item = Result<pb::LeaseKeepAliveResponse, Status>> + Send>>;

    async fn keep_alive(
        &self,
        request: Request<Streaming<pb::LeaseKeepAliveRequest>>,
    ) -> Result<Response<Self::KeepAliveStream>, Status> {
        let credential = self.context.gate.credential(&request);
        self.context.gate.check(&credential, &Access::Any)?;
        let mut requests = request.into_inner();
        let (answers, stream) = mpsc::channel(KEEP_ALIVE_QUEUE);
        let context = self.context.clone();
        tokio::spawn(async move {
            loop {
                let next = tokio::select! {
                    next = requests.next() => next,
                    () = context.stopped() => None,
                };
                let Some(Ok(renew)) = next else { break };
                // The credential may have been revoked since the stream opened.
                if let Err(status) = context.gate.check(&credential, &Access::Any) {
                    let _ = answers.send(Err(status)).await;
                    break;
                }
                let answer = match context.node.lease_keep_alive(renew.id).await {
                    Ok(ttl) => Ok(pb::LeaseKeepAliveResponse {
                        header: context.header(context.applied()),
                        id: renew.id,
                        ttl_secs: ttl.as_secs(),
                    }),
                    Err(LeaseCall::Lease(LeaseError::NotFound(_))) => {
                        Ok(pb::LeaseKeepAliveResponse {
                            header: context.header(context.applied()),
                            id: renew.id,
                            ttl_secs: 0,
                        })
                    }
                    // Not the leader (any more): the client goes on there.
                    Err(LeaseCall::Node(error)) => Err(context.status(error)),
                    Err(LeaseCall::Lease(error)) => Err(Status::internal(error.to_string())),
                };
                let end = answer.is_err();
                if !context.send(&answers, answer).await || end {
                    break;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(stream))))
    }

    async fn time_to_live(
        &self,
        request: Request<pb::LeaseTimeToLiveRequest>,
    ) -> Result<Response<pb::LeaseTimeToLiveResponse>, Status> {
        timed(&self.context, "LeaseTimeToLive", async {
            self.context.gate.authorize(&request, &Access::Any)?;
            let credential = self.context.gate.credential(&request);
            let request = request.into_inner();
            let limit = if request.keys {
                self.context.limits.max_range_page as usize
            } else {
                0
            };
            let status = self
                .context
                .node
                .lease_status(request.id, limit)
                .await
                .map_err(|e| self.status(e))?;
            self.context
                .gate
                .check_readable(&credential, &status.keys)?;
            Ok(Response::new(pb::LeaseTimeToLiveResponse {
                header: self.context.header(self.context.applied()),
                id: status.id,
                granted_ttl_secs: status.ttl.as_secs(),
                remaining_ms: status.remaining.as_millis() as u64,
                keys: status.keys,
                keys_truncated: request.keys && status.keys_truncated,
            }))
        })
        .await
    }

    async fn list(
        &self,
        request: Request<pb::LeaseListRequest>,
    ) -> Result<Response<pb::LeaseListResponse>, Status> {
        timed(&self.context, "LeaseList", async {
            self.context.gate.authorize(&request, &Access::Any)?;
            let node = self.context.node.clone();
            let leases = tokio::task::spawn_blocking(move || node.leases())
                .await
                .map_err(|e| Status::internal(e.to_string()))?
                .map_err(|e| self.context.status(e))?;
            Ok(Response::new(pb::LeaseListResponse {
                header: self.context.header(self.context.applied()),
                leases: leases
                    .into_iter()
                    .map(|(id, ttl)| pb::LeaseInfo {
                        id,
                        ttl_secs: ttl.as_secs(),
                    })
                    .collect(),
            }))
        })
        .await
    }
}
