//! Node-to-node transport over tonic gRPC (see `proto/raft.proto`).

mod append_stream;
pub mod client;
pub mod control;
pub mod forward;
pub mod server;

/// Generated protobuf and gRPC code of `proto/raft.proto`.
pub mod pb {
    #![allow(missing_docs, clippy::all)]
    tonic::include_proto!("ferry.raft.v1");
}

pub use client::NetworkFactory;
pub use control::NetworkControl;
pub use server::RaftService;

use std::sync::atomic::{AtomicU64, Ordering};

/// Counters of the node's snapshot transfers (both directions).
#[derive(Debug, Default)]
pub struct TransferStats {
    /// Bytes of snapshot frames this node sent as a leader (chunks,
    /// offers and the like), plus replies it received.
    pub bytes_sent: AtomicU64,
    /// Bytes of snapshot files received as a follower.
    pub bytes_received: AtomicU64,
    /// Files a follower reused from local state instead of receiving.
    pub bytes_reused: AtomicU64,
    /// Transfers completed (sender side).
    pub transfers: AtomicU64,
    /// Transfer attempts that failed (sender side): the follower refused
    /// or failed, stopped answering, or could not be reached. openraft
    /// tries again; the next attempt resumes what the follower staged.
    pub failed_attempts: AtomicU64,
    /// Differential installs that failed their state-hash check.
    pub hash_mismatches: AtomicU64,
    /// Bytes of append-entries messages (log entries and heartbeats)
    /// received as a follower.
    pub log_bytes_received: AtomicU64,
    /// Transfers running now, with their progress.
    pub active: std::sync::Arc<crate::snapshot::progress::ActiveTransfers>,
}

impl TransferStats {
    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }
}
