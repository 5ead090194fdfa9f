//! Raft replication of a [`ferry_engine::Db`] with openraft.
//!
//! A [`Node`] is one cluster member: an openraft instance whose log store
//! ([`log_store`]) is the engine's segmented CRC-framed log, whose state
//! machine ([`state_machine`]) is an engine database, and whose transport
//! ([`network`]) is tonic gRPC. The leader is the active replica; followers
//! apply the same log and are hot standbys.
//!
//! Invariants this crate keeps:
//! - An entry is acknowledged to openraft as durable (`IOFlushed`) only
//!   after the fsync that covers it; the Raft log is the only WAL that is
//!   fsynced on the replicated path (the engine applies with buffered
//!   durability and records the applied log id in the same batch).
//! - A snapshot is an engine checkpoint plus its log id and membership; it
//!   is shipped as files in bounded memory, resumably, and a follower
//!   reuses the tables it already has (differential transfer) only if the
//!   assembled state's content checksum equals the leader's.
//! - Only `types`, `log_store`, `state_machine`, `network`, `node` and
//!   `election` name openraft items, so that an openraft upgrade touches
//!   those alone.
//! - With peer TLS configured ([`tls`]), the peer port accepts only
//!   connections whose client certificate the cluster CA signed (and whose
//!   common name is allowed), and a member dials peers only over TLS with
//!   its own certificate: no Raft message, vote or snapshot offer comes
//!   from anyone else. Certificates are re-read when their files change.
//! - Every file a node writes (engine, Raft log and its side files,
//!   snapshots, transfer staging, backup staging) goes through one
//!   [`ferry_engine::fs::FileSystem`], the engine options' `fs`, so the
//!   fault-injecting one covers them all in power-loss tests. The offline
//!   tools (`recovery`, backup and export restores) take the file system
//!   they write through as an argument, for the same reason.
//! - Nothing a peer sends is trusted: a snapshot offer is checked (file
//!   count, names, total size against free space) before anything is
//!   staged, every chunk against the offer, every file against its size
//!   and CRC at `Done`; undecodable Raft messages are refused; a message
//!   for another node id is refused and reported. Every decoder of foreign
//!   bytes has a fuzz target ([`fuzzing`]).
//! - Every member applies an entry by the same rules: those of the
//!   cluster's apply version ([`apply_version`]), which rises by a
//!   replicated command only once every member implements the new one. A
//!   member never applies past the version it implements; it stops instead.
//! - Users, roles and the auth switch ([`auth`]) are replicated state,
//!   changed only by Raft commands; no password is ever in a command, the
//!   log or the engine, only its argon2id hash.

pub use ferry_engine as engine;

pub mod apply_version;
pub mod auth;
pub mod backup;
mod election;
mod error;
pub mod export;
#[doc(hidden)]
pub mod fuzzing;
pub mod lease;
pub mod log_limit;
pub mod log_store;
pub mod network;
mod node;
pub mod recovery;
pub mod retention;
pub mod snapshot;
pub mod state_machine;
pub mod tls;
pub mod types;
pub mod watch;

pub use error::{Error, Result};
pub use node::{
    is_outcome_unknown, CasOutcome, Consistency, FollowerProgress, Leadership, LeadershipWatch,
    Node, NodeConfig, PageLimit, RaftOptions, Read, Staleness, NODE_STOP_BOUND, OUTCOME_UNKNOWN,
};
pub use retention::RetentionOptions;
pub use snapshot::transfer::TransferOptions;
pub use watch::{WatchBatch, WatchError, WatchEvent, WatchOptions, Watcher};
