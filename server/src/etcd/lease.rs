//! etcd's Lease service over the node's leases, with the permissions of
//! Ferry's own (`crate::service::lease`).
//!
//! As in etcd, a TTL below the server's minimum is raised to it, a keep-
//! alive of an unknown lease answers TTL 0, and a time-to-live of an
//! unknown lease answers TTL -1.

use super::pb::etcdserverpb::{self as rpc, lease_server::Lease};
use super::{message, to_i64, to_u64, Etcd};
use crate::service::lease::check_revoke;
use ferry_replication::auth::Access;
use ferry_replication::lease::{LeaseCall, LeaseError};
use std::pin::Pin;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};

pub struct LeaseService {
    pub etcd: Etcd,
}

/// Keep-alive answers a stream may have queued for a slow reader.
const KEEP_ALIVE_QUEUE: usize = 16;

impl LeaseService {
    fn status(&self, error: LeaseCall) -> Status {
        match error {
            LeaseCall::Node(error) => self.etcd.status(error),
            LeaseCall::Lease(LeaseError::NotFound(_)) => {
                Status::not_found(message::LEASE_NOT_FOUND)
            }
            LeaseCall::Lease(LeaseError::Exists(_)) => {
                Status::failed_precondition(message::LEASE_EXIST)
            }
            LeaseCall::Lease(LeaseError::Ttl { .. }) => {
                Status::out_of_range(message::LEASE_TTL_TOO_LARGE)
            }
            LeaseCall::Lease(error @ LeaseError::TooMany(_)) => {
                Status::resource_exhausted(error.to_string())
            }
            LeaseCall::Lease(LeaseError::Denied(_)) => {
                Status::permission_denied(message::PERMISSION_DENIED)
            }
        }
    }
}

#[tonic::async_trait]
impl Lease for LeaseService {
    async fn lease_grant(
        &self,
        request: Request<rpc::LeaseGrantRequest>,
    ) -> Result<Response<rpc::LeaseGrantResponse>, Status> {
        let context = &self.etcd.context;
        self.etcd
            .timed("etcd.LeaseGrant", async {
                context.gate.authorize(&request, &Access::Any)?;
                let request = request.into_inner();
                let id = to_u64(request.id, "lease id")?;
                let ttl = to_u64(request.ttl, "TTL")?.max(context.limits.min_lease_ttl_secs);
                let id = context
                    .node
                    .lease_grant_anywhere(id, Duration::from_secs(ttl))
                    .await
                    .map_err(|e| self.status(e))?;
                Ok(Response::new(rpc::LeaseGrantResponse {
                    header: self.etcd.header(context.applied()),
                    id: to_i64(id),
                    ttl: to_i64(ttl),
                    error: String::new(),
                }))
            })
            .await
    }

    async fn lease_revoke(
        &self,
        request: Request<rpc::LeaseRevokeRequest>,
    ) -> Result<Response<rpc::LeaseRevokeResponse>, Status> {
        let context = &self.etcd.context;
        self.etcd
            .timed("etcd.LeaseRevoke", async {
                let id = to_u64(request.get_ref().id, "lease id")?;
                let by = check_revoke(context, &request, id)
                    .await
                    .map_err(|e| e.into_status(|e| self.status(e)))?;
                let revision = context
                    .node
                    .lease_revoke_anywhere(id, by)
                    .await
                    .map_err(|e| self.status(e))?;
                Ok(Response::new(rpc::LeaseRevokeResponse {
                    header: self.etcd.header(revision),
                }))
            })
            .await
    }

    type LeaseKeepAliveStream =
        Pin<Box<dyn Stream<Item = Result<rpc::LeaseKeepAliveResponse, Status>> + Send>>;

    async fn lease_keep_alive(
        &self,
        request: Request<Streaming<rpc::LeaseKeepAliveRequest>>,
    ) -> Result<Response<Self::LeaseKeepAliveStream>, Status> {
        let credential = self.etcd.context.gate.credential(&request);
        self.etcd
            .context
            .gate
            .check(&credential, &Access::Any)
            .map_err(super::gate_status)?;
        let mut requests = request.into_inner();
        let (answers, stream) = mpsc::channel(KEEP_ALIVE_QUEUE);
        let etcd = self.etcd.clone();
        tokio::spawn(async move {
            let context = &etcd.context;
            loop {
                let next = tokio::select! {
                    next = requests.next() => next,
                    () = context.stopped() => None,
                };
                let Some(Ok(renew)) = next else { break };
                // The credential may have been revoked since the stream
                // opened (a deleted user, a changed password). Not merely
                // expired: etcd's clients renew a token only for new calls,
                // and a keep-alive stream outlives it.
                let answer = match context.gate.check_continuing(&credential, &Access::Any) {
                    Err(status) => Err(super::gate_status(status)),
                    Ok(_) => match u64::try_from(renew.id) {
                        Err(_) => Err(Status::invalid_argument("negative lease id")),
                        Ok(id) => match context.node.lease_keep_alive_anywhere(id).await {
                            Ok(ttl) => Ok(ttl.as_secs()),
                            Err(LeaseCall::Lease(LeaseError::NotFound(_))) => Ok(0),
                            Err(LeaseCall::Node(error)) => Err(etcd.status(error)),
                            Err(LeaseCall::Lease(error)) => {
                                Err(Status::internal(error.to_string()))
                            }
                        },
                    },
                };
                let answer = answer.map(|ttl| rpc::LeaseKeepAliveResponse {
                    header: etcd.header(context.applied()),
                    id: renew.id,
                    ttl: to_i64(ttl),
                });
                let end = answer.is_err();
                if !context.send(&answers, answer).await || end {
                    break;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(stream))))
    }

    async fn lease_time_to_live(
        &self,
        request: Request<rpc::LeaseTimeToLiveRequest>,
    ) -> Result<Response<rpc::LeaseTimeToLiveResponse>, Status> {
        let context = &self.etcd.context;
        self.etcd
            .timed("etcd.LeaseTimeToLive", async {
                context.gate.authorize(&request, &Access::Any)?;
                let credential = context.gate.credential(&request);
                let request = request.into_inner();
                let id = to_u64(request.id, "lease id")?;
                let limit = if request.keys {
                    context.limits.max_range_page as usize
                } else {
                    0
                };
                let header = self.etcd.header(context.applied());
                match context.node.lease_status_anywhere(id, limit).await {
                    Ok(status) => {
                        context.gate.check_readable(&credential, &status.keys)?;
                        Ok(Response::new(rpc::LeaseTimeToLiveResponse {
                            header,
                            id: request.id,
                            // etcd rounds the remaining time up to whole seconds.
                            ttl: to_i64(status.remaining.as_millis().div_ceil(1000) as u64),
                            granted_ttl: to_i64(status.ttl.as_secs()),
                            keys: status.keys,
                        }))
                    }
                    Err(LeaseCall::Lease(LeaseError::NotFound(_))) => {
                        Ok(Response::new(rpc::LeaseTimeToLiveResponse {
                            header,
                            id: request.id,
                            ttl: -1,
                            ..rpc::LeaseTimeToLiveResponse::default()
                        }))
                    }
                    Err(error) => Err(self.status(error)),
                }
            })
            .await
    }

    async fn lease_leases(
        &self,
        request: Request<rpc::LeaseLeasesRequest>,
    ) -> Result<Response<rpc::LeaseLeasesResponse>, Status> {
        let context = &self.etcd.context;
        self.etcd
            .timed("etcd.LeaseLeases", async {
                context.gate.authorize(&request, &Access::Any)?;
                let node = context.node.clone();
                let leases = tokio::task::spawn_blocking(move || node.leases())
                    .await
                    .map_err(|e| Status::internal(e.to_string()))?
                    .map_err(|e| self.etcd.status(e))?;
                Ok(Response::new(rpc::LeaseLeasesResponse {
                    header: self.etcd.header(context.applied()),
                    leases: leases
                        .into_iter()
                        .map(|(id, _)| rpc::LeaseStatus { id: to_i64(id) })
                        .collect(),
                }))
            })
            .await
    }
}
