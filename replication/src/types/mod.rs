//! The openraft type configuration, the replicated commands and their
//! answers.
//!
//! This module and the storage/network adapters are the only places that
//! name openraft types, so that a later openraft release touches few files.

mod command;
mod response;

pub use command::{
    is_too_large, Command, Op, RangeOrder, SortBy, Txn, ANSWER_REFUSED, MAX_TXN_ANSWER_BYTES,
    MAX_TXN_RANGE_KEYS, MAX_TXN_WRITE_BYTES, WRITES_REFUSED,
};
pub(crate) use response::LegacyResponse;
pub use response::{KeyValue, OpResult, Response};

use serde::{Deserialize, Serialize};
use std::fmt;

/// Node address book entry, replicated with the membership.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FerryNode {
    /// `host:port` of the node's peer (Raft) gRPC service.
    pub raft_addr: String,
    /// `host:port` of the node's public API, if it serves one (the server
    /// does; an embedded node may not). Clients are redirected here.
    pub client_addr: String,
}

impl From<String> for FerryNode {
    fn from(raft_addr: String) -> Self {
        FerryNode {
            raft_addr,
            client_addr: String::new(),
        }
    }
}

impl fmt::Display for FerryNode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.raft_addr)
    }
}

/// What a [`Compare`] looks at.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum CompareTarget {
    /// The value (`None` = the key is absent).
    Value(#[serde(with = "serde_bytes")] Option<Vec<u8>>),
    /// The revision that last modified the key (0 = absent).
    ModRevision(u64),
    /// The revision that created the key (0 = absent).
    CreateRevision(u64),
    /// How many times the key was written since it was created (0 = absent).
    Version(u64),
    /// The lease the key is attached to (0 = none, or absent).
    Lease(u64),
}

/// Comparison operator of a [`Compare`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum CompareOp {
    Equal,
    NotEqual,
    Less,
    Greater,
}

/// A guard of a transaction: `key`'s `target` `op` the given operand.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Compare {
    #[serde(with = "serde_bytes")]
    pub key: Vec<u8>,
    pub op: CompareOp,
    pub target: CompareTarget,
}

/// Identifies a client's write for exactly-once application: the state
/// machine answers a repeated `(client, sequence)` with its first result.
///
/// A client may have many writes in flight; `first_incomplete` is the
/// lowest sequence it has not yet seen answered, so the state machine may
/// forget every answer below it (the client will not retry those).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestId {
    pub client: u64,
    pub sequence: u64,
    pub first_incomplete: u64,
}

/// Milliseconds since the Unix epoch by this machine's clock.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

openraft::declare_raft_types!(
    /// Ferry's openraft type configuration.
    pub TypeConfig:
        // Shared: an entry is cloned for every follower it is sent to and
        // for the state machine, and a command's keys and values are not.
        D = std::sync::Arc<Command>,
        R = Response,
        NodeId = u64,
        Node = FerryNode,
);

pub type NodeId = u64;
pub type LogId = openraft::alias::LogIdOf<TypeConfig>;

/// The id of log entry `index` written by `node` as leader of `term`
/// (for states made outside Raft, such as imports).
pub fn log_id(term: u64, node: NodeId, index: u64) -> LogId {
    LogId::new(
        openraft::impls::leader_id_adv::LeaderId {
            term,
            node_id: node,
        },
        index,
    )
}
pub type Vote = openraft::alias::VoteOf<TypeConfig>;
pub type Entry = openraft::alias::EntryOf<TypeConfig>;
pub type StoredMembership = openraft::alias::StoredMembershipOf<TypeConfig>;
pub type SnapshotMeta = openraft::alias::SnapshotMetaOf<TypeConfig>;
pub type Raft = openraft::Raft<TypeConfig, crate::state_machine::StateMachine>;
