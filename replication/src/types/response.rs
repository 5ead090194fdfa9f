//! The state machine's answers.
//!
//! Answers are kept in the exactly-once table (so a retried write gets its
//! first answer), hence on disk and in snapshots: their encoding is part of
//! the client record's format (see `state_machine::clients`). Like
//! commands, they only grow by appended enum variants.

use serde::{Deserialize, Serialize};

/// A key's value with its revisions.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct KeyValue {
    #[serde(with = "serde_bytes")]
    pub key: Vec<u8>,
    #[serde(with = "serde_bytes")]
    pub value: Vec<u8>,
    pub create_revision: u64,
    pub mod_revision: u64,
    /// Writes since creation (1 for a new key).
    pub version: u64,
    /// The lease the key is attached to (0: none).
    pub lease: u64,
}

/// Bytes a key-value counts for in an answer beyond its key and value: more
/// than its revisions, version, lease and framing take in any of the
/// answer's encodings (postcard, the native and the etcd protobuf).
const KEY_VALUE_OVERHEAD: usize = 64;

impl KeyValue {
    /// What this key-value counts for against
    /// [`MAX_TXN_ANSWER_BYTES`](crate::types::MAX_TXN_ANSWER_BYTES).
    pub fn answer_bytes(&self) -> usize {
        self.key.len() + self.value.len() + KEY_VALUE_OVERHEAD
    }
}

impl OpResult {
    /// The key-values this result returns.
    pub fn key_values(&self) -> impl Iterator<Item = &KeyValue> {
        let (one, many): (Option<&KeyValue>, &[KeyValue]) = match self {
            OpResult::Put { prev } | OpResult::Delete { prev, .. } | OpResult::Get(prev) => {
                (prev.as_ref(), &[])
            }
            OpResult::DeleteRange { prev, .. } => (None, prev),
            OpResult::Range { kvs, .. } => (None, kvs),
        };
        one.into_iter().chain(many)
    }
}

/// What one op of the branch a transaction took did, in op order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum OpResult {
    /// The previous value, if the put asked for it and there was one.
    Put { prev: Option<KeyValue> },
    /// Keys deleted (0 or 1), and the deleted value if asked for.
    Delete {
        deleted: u64,
        prev: Option<KeyValue>,
    },
    /// The key, if present.
    Get(Option<KeyValue>),
    /// Keys a range delete removed, and their values if asked for.
    DeleteRange { deleted: u64, prev: Vec<KeyValue> },
    /// A range's keys in its order, whether there were more than its limit
    /// (or than a transaction looks at), and how many it counted.
    Range {
        kvs: Vec<KeyValue>,
        more: bool,
        count: u64,
    },
}

/// The state machine's answer to a command (openraft's `R`).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Response {
    /// The log index that applied the command (the revision of its writes).
    pub revision: u64,
    /// Whether the compares held (always true without compares).
    pub succeeded: bool,
    /// One per op of the branch taken, in order.
    pub results: Vec<OpResult>,
    /// Why the command was refused without effect (a stale request id).
    pub rejected: Option<String>,
}

impl Response {
    /// Bytes of key-values the answer holds, as counted against
    /// [`MAX_TXN_ANSWER_BYTES`](crate::types::MAX_TXN_ANSWER_BYTES).
    pub fn answer_bytes(&self) -> usize {
        self.results
            .iter()
            .flat_map(OpResult::key_values)
            .map(KeyValue::answer_bytes)
            .sum()
    }

    /// The results of the branch's `Get` ops, in order.
    pub fn reads(&self) -> impl Iterator<Item = Option<&KeyValue>> {
        self.results.iter().filter_map(|result| match result {
            OpResult::Get(kv) => Some(kv.as_ref()),
            _ => None,
        })
    }
}

/// A key-value as release 0.1.0 stored it in answers.
#[derive(Deserialize)]
struct LegacyKeyValue {
    #[serde(with = "serde_bytes")]
    key: Vec<u8>,
    #[serde(with = "serde_bytes")]
    value: Vec<u8>,
    create_revision: u64,
    mod_revision: u64,
    version: u64,
}

/// An answer as release 0.1.0 stored it: only its `Get` results.
#[derive(Deserialize)]
pub(crate) struct LegacyResponse {
    revision: u64,
    succeeded: bool,
    reads: Vec<Option<LegacyKeyValue>>,
    rejected: Option<String>,
}

impl From<LegacyResponse> for Response {
    fn from(old: LegacyResponse) -> Response {
        let kv = |kv: LegacyKeyValue| KeyValue {
            key: kv.key,
            value: kv.value,
            create_revision: kv.create_revision,
            mod_revision: kv.mod_revision,
            version: kv.version,
            lease: 0,
        };
        Response {
            revision: old.revision,
            succeeded: old.succeeded,
            results: old
                .reads
                .into_iter()
                .map(|read| OpResult::Get(read.map(kv)))
                .collect(),
            rejected: old.rejected,
        }
    }
}
