//! Leases: keys that disappear when their owner stops renewing them.
//!
//! A lease is replicated state (its id, its granted TTL, and the remaining
//! TTL last checkpointed); whether it is still alive is decided by the
//! leader alone, by its monotonic clock ([`keeper`]): keep-alives go to the
//! leader and move the deadline it holds in memory, and when a deadline
//! passes the leader proposes [`LeaseCommand::Revoke`], which deletes the
//! lease and every key attached to it at one revision (watches see the
//! deletes). This is etcd's design, for the same reason: renewals are
//! frequent and need no consensus, expiry is rare and must be agreed.
//!
//! Unlike etcd, a revoke is bounded: one whose deletes would write more
//! than [`MAX_TXN_WRITE_BYTES`](crate::types::MAX_TXN_WRITE_BYTES) (some
//! 300,000 keys of 30 bytes) deletes the lease and as many keys as fit,
//! and leaves a drain marker; the leader then proposes
//! [`LeaseCommand::Drain`] until no key is left, each at a revision of its
//! own. A revoke is one entry of the Raft log and one engine batch on
//! every member, and an unbounded one could pass the engine's limit on a
//! batch, which would stop every member at that entry. While a lease
//! drains, its id cannot be granted again.
//!
//! Invariants:
//! - A key is attached to at most one lease, and a lease's key index
//!   (`\x00lease-key/`) holds exactly the keys whose record names it: both
//!   change in the same engine batch as the key.
//! - A put naming a lease that does not exist is refused whole (the
//!   transaction changes nothing).
//! - No lease expires early because of a failover: a new leader gives each
//!   lease its remaining TTL as last checkpointed (or its granted TTL if it
//!   never was), plus [`LeaseOptions::failover_extension`]; a renewal of
//!   a lease recorded with less than its TTL records the whole TTL before
//!   it is answered (see [`keeper`]). Leases nobody renewed for half their
//!   TTL, or under the current leader for a third of their TTL plus the
//!   failover extension, are checkpointed every
//!   [`LeaseOptions::checkpoint_interval`], so such a lease cannot live
//!   for ever across leader changes either: each leader that leads longer
//!   than that moves it on.
//!
//! ## Format (version 2)
//!
//! ```text
//! engine key = 0x00 "lease/" ‖ id u64 BE              1 | postcard(LeaseRecord)
//! engine key = 0x00 "lease-key/" ‖ id u64 BE ‖ key    empty: `key` is attached to `id`
//! engine key = 0x00 "lease-drain/" ‖ id u64 BE        empty: revoked lease `id` still
//!                                                      has keys to delete (version 2)
//! ```
//!
//! In the Raft log, lease changes are `Command::Lease(LeaseCommand)`
//! (command tag 4, see `types::command`):
//!
//! ```text
//! lease command = varint(tag) | fields
//!   tag 0  Grant { id, ttl_ms }
//!   tag 1  Revoke { id, time_ms }               the leader's, at expiry
//!   tag 2  Checkpoint { remaining: [(id, remaining_ms)] }
//!   tag 3  RevokeBy { id, time_ms, user (option) }  a client's, checked at apply
//!   tag 4  Drain { id, time_ms }                the leader's, while a revoked
//!                                               lease has keys left
//! ```
//!
//! Tags are only appended, as for commands. Version 1 had no drain
//! markers and no tag 4; its state is version 2 state with no lease
//! draining.

pub(crate) mod keeper;
pub(crate) mod store;

pub use keeper::LeaseCall;

use serde::{Deserialize, Serialize};
use std::time::Duration;

/// A lease change, as it travels in the Raft log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum LeaseCommand {
    /// Creates lease `id` (refused if it exists).
    Grant { id: u64, ttl_ms: u64 },
    /// Deletes lease `id` and every key attached to it, at one revision
    /// (refused if it does not exist). The leader proposes it when the
    /// lease expires; a client when it revokes. `time_ms` stamps the
    /// deletes in the history.
    Revoke { id: u64, time_ms: u64 },
    /// The leader's remaining TTL of leases, as `(id, remaining_ms)`; ids
    /// that no longer exist are skipped.
    Checkpoint { remaining: Vec<(u64, u64)> },
    /// A client's revoke, asked as `user` (`None`: asked while auth was off
    /// on the member that took it). Apply judges it as etcd does, by the
    /// auth state it is applied in: while auth is on, it is refused,
    /// changing nothing ([`LeaseError::Denied`]), unless the user may write
    /// every key attached at that moment. (The member's own check judged
    /// by the keys and auth state it had seen, which may be older.)
    /// Otherwise as [`LeaseCommand::Revoke`].
    RevokeBy {
        id: u64,
        time_ms: u64,
        user: Option<String>,
    },
    /// Deletes the next keys of revoked lease `id` whose keys did not all
    /// fit in its revoke (see [`store`]'s drain markers); nothing if none
    /// are left. The leader proposes it while a lease drains.
    Drain { id: u64, time_ms: u64 },
}

/// Whose revoke it is, which decides whether apply checks it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RevokeAs {
    /// The node's own (or the embedding program's): not checked.
    Node,
    /// A client's, checked at apply as `user` ([`LeaseCommand::RevokeBy`];
    /// `None`: no user, as when auth was off on the member that took it).
    Client { user: Option<String> },
}

/// A lease as the replicated state holds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseRecord {
    pub ttl_ms: u64,
    /// The remaining TTL at the last checkpoint (`None`: never
    /// checkpointed; a new leader then starts from `ttl_ms`).
    pub remaining_ms: Option<u64>,
}

/// Bounds and timing of leases.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseOptions {
    /// Leases that may exist at once; a grant beyond is refused.
    pub max_leases: usize,
    /// The TTL range a grant may ask for. The minimum must exceed an
    /// election plus a client's reconnection, or a failover could expire
    /// leases whose owners are alive.
    pub min_ttl: Duration,
    pub max_ttl: Duration,
    /// How often the leader records each lease's remaining TTL in the
    /// replicated state.
    pub checkpoint_interval: Duration,
    /// Added to every lease's remaining TTL when a node becomes leader:
    /// the time its owners need to find the new leader.
    pub failover_extension: Duration,
}

impl Default for LeaseOptions {
    fn default() -> Self {
        LeaseOptions {
            max_leases: 100_000,
            min_ttl: Duration::from_secs(2),
            max_ttl: Duration::from_secs(30 * 24 * 3600),
            checkpoint_interval: Duration::from_secs(5),
            failover_extension: Duration::from_secs(2),
        }
    }
}

/// A lease as the leader sees it now.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LeaseStatus {
    pub id: u64,
    pub ttl: Duration,
    /// Until the leader revokes it (zero: expiring now).
    pub remaining: Duration,
    /// The attached keys, in order (at most the limit asked for).
    pub keys: Vec<Vec<u8>>,
    /// More keys are attached than `keys` holds.
    pub keys_truncated: bool,
}

/// Keys a revoke by a user other than root may delete at most: apply lists
/// and checks each against the user's permissions, on every member, and a
/// larger lease is refused at once. Root may revoke any lease. Part of
/// what apply does.
pub const MAX_CHECKED_KEYS: usize = 10_000;

/// Whether a refusal (`Error::Rejected`) says a write named a lease that
/// does not exist.
pub fn is_not_found(reason: &str) -> bool {
    reason
        .strip_prefix("lease ")
        .and_then(|rest| rest.strip_suffix(" not found"))
        .is_some_and(|id| id.parse::<u64>().is_ok())
}

/// Why a lease call failed. (Also sent from a leader to a follower that
/// forwarded the call: see `network::forward`.)
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, serde::Serialize, serde::Deserialize)]
pub enum LeaseError {
    #[error("lease {0} not found")]
    NotFound(u64),
    #[error("lease {0} already exists")]
    Exists(u64),
    #[error("a lease's TTL must be between {min:?} and {max:?}; asked {asked:?}")]
    Ttl {
        asked: Duration,
        min: Duration,
        max: Duration,
    },
    #[error("{0} leases exist, the limit (max_leases)")]
    TooMany(usize),
    /// A revoke's user may not write every key attached to the lease (or
    /// no user asked while auth is on).
    #[error("permission denied: lease {0} holds keys the user may not write")]
    Denied(u64),
}
