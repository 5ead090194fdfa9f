//! The openraft type configuration and the replicated commands.
//!
//! This module and the storage/network adapters are the only places that
//! name openraft types, so that a later openraft release touches few files.

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

/// One mutation inside a replicated command.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Op {
    /// Set `key` to `value`.
    Put {
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
        #[serde(with = "serde_bytes")]
        value: Vec<u8>,
    },
    /// Remove `key` (no effect if it is absent).
    Delete {
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
    },
    /// Read `key` as part of the transaction (its result is returned).
    Get {
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
    },
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

/// The replicated command (openraft's `D`): an atomic transaction. A plain
/// batch of writes is a transaction without compares.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Command {
    pub compares: Vec<Compare>,
    pub success: Vec<Op>,
    pub failure: Vec<Op>,
    pub request: Option<RequestId>,
    /// When the command was proposed, in milliseconds since the Unix epoch,
    /// by the proposing node's clock ([`crate::Node::txn`] stamps it when it
    /// is 0). Apply never reads it; point-in-time restore cuts the log by it.
    pub time_ms: u64,
}

impl Command {
    /// An unconditional atomic batch.
    pub fn batch(ops: Vec<Op>) -> Self {
        Command {
            compares: Vec::new(),
            success: ops,
            failure: Vec::new(),
            request: None,
            time_ms: 0,
        }
    }
}

impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "txn({} compares, {}/{} ops)",
            self.compares.len(),
            self.success.len(),
            self.failure.len()
        )
    }
}

/// Milliseconds since the Unix epoch by this machine's clock.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Result of a `Get` inside a transaction.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct KeyValue {
    #[serde(with = "serde_bytes")]
    pub key: Vec<u8>,
    #[serde(with = "serde_bytes")]
    pub value: Vec<u8>,
    pub create_revision: u64,
    pub mod_revision: u64,
    pub version: u64,
}

/// The state machine's answer to a [`Command`] (openraft's `R`).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Response {
    /// The log index that applied the command (the revision of its writes).
    pub revision: u64,
    /// Whether the compares held (always true without compares).
    pub succeeded: bool,
    /// For each `Get` of the branch taken, in order: the key if present.
    pub reads: Vec<Option<KeyValue>>,
    /// Why the command was refused without effect (a stale request id).
    pub rejected: Option<String>,
}

openraft::declare_raft_types!(
    /// Ferry's openraft type configuration.
    pub TypeConfig:
        D = Command,
        R = Response,
        NodeId = u64,
        Node = FerryNode,
);

pub type NodeId = u64;
pub type LogId = openraft::alias::LogIdOf<TypeConfig>;
pub type Vote = openraft::alias::VoteOf<TypeConfig>;
pub type Entry = openraft::alias::EntryOf<TypeConfig>;
pub type StoredMembership = openraft::alias::StoredMembershipOf<TypeConfig>;
pub type SnapshotMeta = openraft::alias::SnapshotMetaOf<TypeConfig>;
pub type Raft = openraft::Raft<TypeConfig, crate::state_machine::StateMachine>;

#[cfg(test)]
mod tests {
    use super::*;

    /// Log entries written before byte strings were serialized as slices
    /// must still decode: postcard writes both as a length and the bytes.
    #[test]
    fn byte_strings_keep_their_postcard_encoding() {
        #[derive(Serialize)]
        enum OldOp {
            Put { key: Vec<u8>, value: Vec<u8> },
        }
        let old = postcard::to_stdvec(&OldOp::Put {
            key: b"key".to_vec(),
            value: vec![0, 1, 255],
        })
        .unwrap();
        let new = Op::Put {
            key: b"key".to_vec(),
            value: vec![0, 1, 255],
        };
        assert_eq!(postcard::to_stdvec(&new).unwrap(), old);
        assert_eq!(postcard::from_bytes::<Op>(&old).unwrap(), new);
        let compare = CompareTarget::Value(Some(vec![7; 300]));
        let bytes = postcard::to_stdvec(&compare).unwrap();
        assert_eq!(
            postcard::from_bytes::<CompareTarget>(&bytes).unwrap(),
            compare
        );
    }
}
