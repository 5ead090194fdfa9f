//! etcd's v3 gRPC API over the same [`Context`] as Ferry's own services,
//! so that `etcdctl` and etcd's client libraries work against Ferry.
//!
//! Each service translates etcd's messages into the node's calls and back;
//! none keeps state of its own. Invariants, the same as Ferry's API:
//! every call asks the auth gate first (etcd's clients send their token in
//! the `token` metadata, which is Ferry's name for it too); lengths and
//! counts are checked against the server's limits before anything is
//! allocated or proposed; errors carry etcd's gRPC codes and messages,
//! because etcd's clients match on them.
//!
//! Revisions are Ferry's: the log index that applied a change. They grow
//! with every change, like etcd's, but skip the indexes of entries that
//! change no key (leader elections, membership, lease grants). etcd's
//! clients only compare revisions and resume from `revision + 1`, which
//! gaps do not disturb; `docs/etcd.md` says why in full.
//!
//! What is supported, partly supported or not: `docs/etcd.md`.

pub mod auth;
pub mod cluster;
pub mod election;
pub mod kv;
pub mod lease;
pub mod lock;
pub mod maintenance;
pub mod recipe;
pub mod snapshot;
pub mod watch;

use crate::service::Context;
use ferry_replication::auth::Access;
use ferry_replication::Error;
use tonic::Status;

/// Code generated from etcd's own `.proto` files (`server/proto/etcd`).
pub mod pb {
    #![allow(clippy::all, missing_docs)]
    pub mod etcdserverpb {
        tonic::include_proto!("etcdserverpb");
    }
    pub mod mvccpb {
        tonic::include_proto!("mvccpb");
    }
    pub mod authpb {
        tonic::include_proto!("authpb");
    }
    pub mod v3lockpb {
        tonic::include_proto!("v3lockpb");
    }
    pub mod v3electionpb {
        tonic::include_proto!("v3electionpb");
    }
}

use pb::etcdserverpb as rpc;

/// What the etcd services need besides the [`Etcd`] context.
pub struct Settings {
    pub max_request_bytes: usize,
    /// Watches open at once, shared with Ferry's own Watch service.
    pub watches: std::sync::Arc<crate::watch_slots::WatchSlots>,
    pub progress_interval: std::time::Duration,
    pub client_tls: bool,
    pub peer_tls: bool,
    /// Snapshot downloads and exports at once, shared with Ferry's own.
    pub transfers: std::sync::Arc<tokio::sync::Semaphore>,
}

/// Adds etcd's services to the client port's router.
pub fn serve(
    router: tonic::transport::server::Router,
    etcd: Etcd,
    settings: Settings,
) -> tonic::transport::server::Router {
    let max = settings.max_request_bytes;
    let scheme = |tls| if tls { "https" } else { "http" };
    router
        .add_service(
            rpc::kv_server::KvServer::new(kv::KvService { etcd: etcd.clone() })
                .max_decoding_message_size(max),
        )
        .add_service(
            rpc::watch_server::WatchServer::new(watch::WatchService {
                etcd: etcd.clone(),
                watches: settings.watches.clone(),
                progress_interval: settings.progress_interval,
            })
            .max_decoding_message_size(max),
        )
        .add_service(
            rpc::lease_server::LeaseServer::new(lease::LeaseService { etcd: etcd.clone() })
                .max_decoding_message_size(max),
        )
        .add_service(
            rpc::cluster_server::ClusterServer::new(cluster::ClusterService {
                etcd: etcd.clone(),
                client_scheme: scheme(settings.client_tls),
                peer_scheme: scheme(settings.peer_tls),
            })
            .max_decoding_message_size(max),
        )
        .add_service(
            rpc::maintenance_server::MaintenanceServer::new(maintenance::MaintenanceService {
                etcd: etcd.clone(),
                transfers: settings.transfers,
            })
            .max_decoding_message_size(max),
        )
        .add_service(
            rpc::auth_server::AuthServer::new(auth::AuthService { etcd: etcd.clone() })
                .max_decoding_message_size(max),
        )
        .add_service(
            pb::v3lockpb::lock_server::LockServer::new(lock::LockService { etcd: etcd.clone() })
                .max_decoding_message_size(max),
        )
        .add_service(
            pb::v3electionpb::election_server::ElectionServer::new(election::ElectionService {
                watches: settings.watches,
                etcd,
            })
            .max_decoding_message_size(max),
        )
}

/// etcd's error messages that clients match on (etcd's
/// `api/v3rpc/rpctypes/error.go`).
pub(crate) mod message {
    pub const COMPACTED: &str = "etcdserver: mvcc: required revision has been compacted";
    pub const FUTURE_REV: &str = "etcdserver: mvcc: required revision is a future revision";
    pub const NO_LEADER: &str = "etcdserver: no leader";
    pub const LEADER_FAIL: &str =
        "etcdserver: request timed out, possibly due to previous leader failure";
    pub const NOT_LEADER: &str = "etcdserver: not leader";
    pub const LEASE_NOT_FOUND: &str = "etcdserver: requested lease not found";
    pub const LEASE_EXIST: &str = "etcdserver: lease already exists";
    pub const LEASE_TTL_TOO_LARGE: &str = "etcdserver: too large lease TTL";
    pub const KEY_NOT_FOUND: &str = "etcdserver: key not found";
    pub const EMPTY_KEY: &str = "etcdserver: key is not provided";
    pub const VALUE_PROVIDED: &str = "etcdserver: value is provided";
    pub const LEASE_PROVIDED: &str = "etcdserver: lease is provided";
    pub const TOO_MANY_OPS: &str = "etcdserver: too many operations in txn request";
    pub const DUPLICATE_KEY: &str = "etcdserver: duplicate key given in txn request";
    pub const MEMBER_NOT_FOUND: &str = "etcdserver: member not found";
    pub const LEARNER_NOT_READY: &str =
        "etcdserver: can only promote a learner member which is in sync with leader";
    pub const BAD_LEADER_TRANSFEREE: &str = "etcdserver: bad leader transferee";
    pub const PERMISSION_DENIED: &str = "etcdserver: permission denied";
    pub const INVALID_AUTH_TOKEN: &str = "etcdserver: invalid auth token";
    pub const USER_EMPTY: &str = "etcdserver: user name is empty";
    pub const AUTH_OLD_REVISION: &str = "etcdserver: revision of auth store is old";
}

/// The etcd view of a node: the shared context plus etcd's header.
#[derive(Clone)]
pub struct Etcd {
    pub context: Context,
}

impl Etcd {
    /// etcd's response header at `revision`.
    ///
    /// `cluster_id` is derived from the voters' ids (FNV-1a), so every
    /// member reports the same one; unlike etcd's it changes when the
    /// voters change (Ferry keeps no cluster identity of its own). Its top
    /// bit is set so that it prints as 16 hex digits, as etcd's do.
    pub(crate) fn header(&self, revision: u64) -> Option<rpc::ResponseHeader> {
        let (hash, term) = self.context.node.with_metrics(|metrics| {
            let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
            for id in metrics.membership_config.membership().voter_ids() {
                for byte in id.to_le_bytes() {
                    hash = (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3);
                }
            }
            (hash, metrics.current_term)
        });
        Some(rpc::ResponseHeader {
            cluster_id: hash | 1 << 63,
            member_id: self.context.node.id(),
            revision: to_i64(revision),
            raft_term: term,
        })
    }

    /// A node error as etcd reports it.
    pub(crate) fn status(&self, error: Error) -> Status {
        match error {
            Error::Compacted(_) => Status::out_of_range(message::COMPACTED),
            Error::FutureRevision { .. } => Status::out_of_range(message::FUTURE_REV),
            Error::NotLeader {
                leader_id: None, ..
            } => Status::unavailable(message::NO_LEADER),
            Error::NotLeader { .. } => Status::unavailable(message::NOT_LEADER),
            // What etcd answers when a leader change leaves a proposal's fate
            // open; its clients do not resend a write on it.
            ref unknown if ferry_replication::is_outcome_unknown(unknown) => {
                Status::unavailable(message::LEADER_FAIL)
            }
            Error::LearnerBehind { .. } => Status::failed_precondition(message::LEARNER_NOT_READY),
            Error::NotVoter(_) => Status::failed_precondition(message::BAD_LEADER_TRANSFEREE),
            Error::Rejected(reason) if ferry_replication::lease::is_not_found(&reason) => {
                Status::not_found(message::LEASE_NOT_FOUND)
            }
            // etcd's clients get a new token and try again on this.
            Error::Rejected(reason) if ferry_replication::auth::is_stale_check(&reason) => {
                Status::invalid_argument(message::AUTH_OLD_REVISION)
            }
            other => self.context.status(other),
        }
    }

    /// Runs a handler under the request metrics, with the auth gate's
    /// refusals in etcd's words: its clients match on them (they
    /// re-authenticate on an invalid token).
    /// (Not an `async fn`, for the reason `service::timed` gives.)
    pub(crate) fn timed<'a, T>(
        &'a self,
        method: &'static str,
        handler: impl std::future::Future<Output = Result<T, Status>> + 'a,
    ) -> impl std::future::Future<Output = Result<T, Status>> + 'a {
        use futures_util::FutureExt;
        crate::service::timed(&self.context, method, handler).map(|r| r.map_err(gate_status))
    }

    /// Writes `txn` for the caller presenting `credential`, if they may do
    /// `accesses`, on the leader (see [`crate::auth::Gate::write`]).
    pub(crate) async fn write(
        &self,
        credential: &crate::auth::Credential,
        accesses: &[Access],
        txn: ferry_replication::types::Txn,
    ) -> Result<ferry_replication::types::Response, Status> {
        let propose = crate::auth::Propose::OnLeader;
        self.context
            .gate
            .write(credential, accesses, txn, propose, |e| self.status(e))
            .await
    }

    /// Checks a key's length against the server's limits.
    pub(crate) fn check_key(&self, key: &[u8]) -> Result<(), Status> {
        if key.is_empty() {
            return Err(Status::invalid_argument(message::EMPTY_KEY));
        }
        self.context.check_key(key)
    }
}

/// A refusal of the auth gate as etcd words it; other statuses as they are.
pub(crate) fn gate_status(status: Status) -> Status {
    match status.code() {
        tonic::Code::PermissionDenied => Status::permission_denied(message::PERMISSION_DENIED),
        tonic::Code::Unauthenticated if status.message() == crate::auth::NO_CREDENTIAL => {
            Status::invalid_argument(message::USER_EMPTY)
        }
        tonic::Code::Unauthenticated => Status::unauthenticated(message::INVALID_AUTH_TOKEN),
        _ => status,
    }
}

/// A revision or count for etcd's signed fields (Ferry's never reach
/// `i64::MAX`; saturate rather than wrap if one did).
pub(crate) fn to_i64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// An etcd revision or id from the wire: negative ones are refused.
pub(crate) fn to_u64(value: i64, what: &str) -> Result<u64, Status> {
    u64::try_from(value).map_err(|_| Status::invalid_argument(format!("negative {what}: {value}")))
}

/// etcd's key range: `range_end` empty is the single key, `"\0"` every key
/// from `key` on, else `[key, range_end)`. `None` as the end: no end.
pub(crate) fn key_range(key: &[u8], range_end: &[u8]) -> (Vec<u8>, Option<Vec<u8>>) {
    match range_end {
        [] => (key.to_vec(), Some([key, &[0]].concat())),
        [0] => (key.to_vec(), None),
        end => (key.to_vec(), Some(end.to_vec())),
    }
}

/// Ferry's key-value as etcd's.
pub(crate) fn key_value(kv: ferry_replication::types::KeyValue) -> pb::mvccpb::KeyValue {
    pb::mvccpb::KeyValue {
        key: kv.key,
        create_revision: to_i64(kv.create_revision),
        mod_revision: to_i64(kv.mod_revision),
        version: to_i64(kv.version),
        value: kv.value,
        lease: to_i64(kv.lease),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_ranges_follow_etcd() {
        assert_eq!(key_range(b"a", b""), (b"a".to_vec(), Some(b"a\0".to_vec())));
        assert_eq!(key_range(b"a", b"\0"), (b"a".to_vec(), None));
        assert_eq!(key_range(b"a", b"b"), (b"a".to_vec(), Some(b"b".to_vec())));
        assert_eq!(to_i64(u64::MAX), i64::MAX);
        assert!(to_u64(-1, "revision").is_err());
    }
}
