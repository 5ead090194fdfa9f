//! Rust client SDK for a Ferry cluster.
//!
//! [`Client::connect`] takes any subset of the members' client addresses,
//! learns the rest and the leader from the cluster, and follows leadership
//! changes. Each call has a deadline ([`ClientOptions::call_timeout`]);
//! within it the client retries `UNAVAILABLE` and not-leader answers with
//! exponential backoff and jitter, going straight to the leader a follower
//! names.
//!
//! Writes are exactly-once across retries and failovers: the client has a
//! random id and numbers its writes; a retried write carries the same number
//! and the cluster answers it with its first result instead of applying it
//! again. Reads are linearizable unless asked through [`Client::stale`].
//!
//! Get, Put, Delete and Txn calls to a member share one `KV.Batch` stream:
//! what is queued goes out as one message, answers come back by id, and a
//! broken stream fails its calls into the same retry loop. Each batched
//! call carries its attempt's timeout, so the server drops it when the
//! caller does, as with a unary call.
//!
//! Every call is cancel-safe: dropping its future at any await point (as
//! `tokio::time::timeout` and `select!` do) releases what it held (its
//! write number, its in-flight place, its slot on the batch stream, which
//! tells the server to stop the call), so it never makes a later call
//! wait or fail. A dropped write's outcome is unknown to its caller, but
//! it applies at most once: its number is never sent again, and later
//! writes tell the cluster to refuse any copy still on its way. A call's
//! deadline covers all its waiting, for a place as much as for answers.
//!
//! Coordination is built on leases, transactions and watches: leases with
//! a background [`KeepAlive`], locks whose key's create revision is a
//! fencing token ([`Client::lock`], [`Txn::if_lock_held`]), elections
//! ([`Client::campaign`], [`Client::observe`]) and a work queue with
//! leased claims ([`Client::queue_claim`]). Their invariants: waiters are
//! served in the order they asked; a waiter is let in only after a
//! linearizable read shows its own key (so its lease) still there; every
//! release is a transaction fenced by the create revision of what it
//! releases.
//!
//! This crate depends on neither the engine nor openraft. It also holds the
//! public `.proto` (`proto/ferry.proto`) and its generated types ([`pb`]),
//! which the server reuses.
//!
//! ```no_run
//! # async fn demo() -> ferry_client::Result<()> {
//! let client = ferry_client::Client::connect(["127.0.0.1:7400"]).await?;
//! let revision = client.put("job/42", "running").await?;
//! let kv = client.get("job/42").await?.expect("present");
//! assert_eq!(kv.mod_revision, revision);
//! # Ok(()) }
//! ```

mod batch;
mod client;
mod credentials;
mod election;
mod error;
mod lease;
mod lock;
mod queue;
mod recipe;
mod status;
mod txn;
mod watch;

pub use batch::MAX_BATCH_REQUEST_BYTES;
pub use client::{Client, ClientOptions, Page, Stale, StaleRead};
pub use credentials::{AuthChannel, Credentials, TlsOptions, TOKEN_METADATA};
pub use election::{Leader, Leadership, Observe};
pub use error::{Error, Result};
pub use lease::{KeepAlive, LeaseInfo, LeaseState};
pub use lock::LockGuard;
pub use pb::{Event, KeyValue, Staleness};
pub use queue::{Claim, QueueItem};
pub use status::{
    compacted_status, future_revision_status, not_leader_status, COMPACTED_REVISION_METADATA,
    CURRENT_REVISION_METADATA, LEADER_ADDR_METADATA, LEADER_ID_METADATA,
    REQUESTED_REVISION_METADATA,
};
pub use txn::{Txn, TxnResult};
pub use watch::WatchStream;

/// Generated types and gRPC stubs of `proto/ferry.proto`.
pub mod pb {
    #![allow(missing_docs, clippy::all)]
    tonic::include_proto!("ferry.v1");

    /// The encoded file descriptor set, for gRPC server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("ferry_descriptor");
}
