//! The replicated command: what a Raft log entry asks the state machine to
//! do, and how it is encoded in the log, in Raft messages and in backup
//! chains.
//!
//! ## Format (envelope version 1)
//!
//! A command is encoded with postcard as
//!
//! ```text
//! varint(0x0FE7_7A01) | envelope version: u8 (1) | postcard(kind)
//! kind = varint(tag) | fields
//!   tag 0  Txn { compares, success, failure, request, time_ms }
//!   tag 1  Compact { revision, time_ms }
//!   tag 2  PurgeHistory
//!   tag 3  Auth(AuthChange)        (see `crate::auth`)
//!   tag 4  Lease(LeaseCommand)     (see `crate::lease`)
//!   tag 5  CheckedTxn { txn (tag 0's fields), auth_revision }
//!          a transaction whose permissions were checked under the auth
//!          state of `auth_revision` (see `Txn::auth_revision`)
//!   tag 6  SetApplyVersion { version: u32, membership: u64 }
//!          (see `crate::apply_version`; `membership`: the log index of the
//!          membership whose members were asked, 0 for none)
//! op = varint(tag) | fields
//!   tag 0  Put { key, value, lease, prev_kv }
//!   tag 1  Delete { key, prev_kv }
//!   tag 2  Get { key }
//!   tag 3  DeleteRange { start, end (option), prev_kv }
//!   tag 4  Range { start, end (option), limit, order { by (tag 0 Key,
//!          1 Version, 2 CreateRevision, 3 ModRevision, 4 Value),
//!          descending } }
//! compare target = varint(tag) | field
//!   tag 0 Value, 1 ModRevision, 2 CreateRevision, 3 Version, 4 Lease
//! ```
//!
//! Release 0.1.0 wrote a transaction with no envelope (its fields straight
//! away, starting with the compares' count). The first varint tells the two
//! apart: a legacy command would need 267 million compares to start with
//! the magic number, and its encoding would then be gigabytes long. Legacy
//! commands decode into [`Command::Txn`] with the ops' new fields at their
//! defaults.
//!
//! Forward compatibility: a kind's fields never change. A new command is a
//! new tag, appended; a new field of an existing command is a new kind (or
//! a new op variant, appended to [`Op`]). So every release decodes every
//! log an earlier release wrote; a release meeting an envelope version or
//! a tag it does not know (a newer leader's) fails to decode that entry, as
//! it could not apply it anyway.

use super::{Compare, RequestId};
use crate::auth::AuthChange;
use crate::lease::LeaseCommand;
use serde::de::{self, SeqAccess, Visitor};
use serde::ser::SerializeTuple;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;

/// See the module's format.
const MAGIC: u64 = 0x0FE7_7A01;
/// The version of the envelope this release writes and reads.
const ENVELOPE_VERSION: u8 = 1;

/// One mutation or read inside a transaction.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Op {
    /// Set `key` to `value`, attached to `lease` (0: none).
    Put {
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
        #[serde(with = "serde_bytes")]
        value: Vec<u8>,
        lease: u64,
        /// Return the key's previous value in the op's result.
        prev_kv: bool,
    },
    /// Remove `key` (no effect if it is absent).
    Delete {
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
        /// Return the deleted value in the op's result.
        prev_kv: bool,
    },
    /// Read `key` as part of the transaction (its result is returned).
    Get {
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
    },
    /// Remove every key in `[start, end)` (`end = None`: every key from
    /// `start` on). A transaction holding one is applied in a run of its
    /// own, because it reads the engine's keys in the range.
    DeleteRange {
        #[serde(with = "serde_bytes")]
        start: Vec<u8>,
        #[serde(with = "serde_bytes")]
        end: Option<Vec<u8>>,
        /// Return the deleted values in the op's result.
        prev_kv: bool,
    },
    /// Read the keys in `[start, end)` (`end = None`: every key from
    /// `start` on) as part of the transaction, ordered by `order`, at most
    /// `limit` of them (0: no limit). Like a range delete, it is applied in
    /// a run of its own. At most [`MAX_TXN_RANGE_KEYS`] keys are looked
    /// at; a larger range answers with what they hold and `more` (from
    /// apply version 2 on, one sorted otherwise than by key ascending is
    /// refused instead: its first keys need not be the first in its order).
    Range {
        #[serde(with = "serde_bytes")]
        start: Vec<u8>,
        #[serde(with = "serde_bytes")]
        end: Option<Vec<u8>>,
        limit: u64,
        order: RangeOrder,
    },
}

/// Keys a range inside a transaction looks at, at most: it runs in apply,
/// where every write waits for it.
pub const MAX_TXN_RANGE_KEYS: usize = 10_000;

/// Bytes of key-values one transaction's answer may hold at most (its
/// reads, ranges and previous values, each counted by
/// [`KeyValue::answer_bytes`](crate::types::KeyValue::answer_bytes)). Apply
/// refuses a transaction whose answer would hold more, changing nothing:
/// every member builds the answer in memory, and the answer is kept for
/// the client's retries in the replicated state. Below the 4 MiB of a
/// gRPC message with room to spare, so that every answer apply gives can
/// reach its client. Part of what apply does, so the same on every member
/// (this release on; earlier releases had no bound).
pub const MAX_TXN_ANSWER_BYTES: usize = 3 << 20;

/// How the reason of a transaction refused for the size of its answer
/// begins (see [`MAX_TXN_ANSWER_BYTES`]).
pub const ANSWER_REFUSED: &str = "the answer is too large";

/// Bytes one transaction may write to the engine at most: the keys and
/// values of its writes and of the history entries they add, as apply
/// counts them. Only a range delete can come near it (a request's own
/// size bounds the rest). Apply refuses a transaction that would write
/// more, changing nothing: a transaction is applied in memory on every
/// member and written as part of one engine batch, and one batch is one
/// record of the engine's WAL. Part of what apply does (this release on;
/// earlier releases had no bound).
pub const MAX_TXN_WRITE_BYTES: usize = 64 << 20;

/// How the reason of a transaction refused for what it would write begins
/// (see [`MAX_TXN_WRITE_BYTES`]).
pub const WRITES_REFUSED: &str = "the transaction writes too much";

/// Whether a refusal (`Error::Rejected`) is one for the size of an answer
/// or of a transaction's writes: nothing was written, and the call must be
/// made smaller (or, for kept answers, later).
pub fn is_too_large(reason: &str) -> bool {
    reason.starts_with(ANSWER_REFUSED) || reason.starts_with(WRITES_REFUSED)
}

/// The order of a range's answer inside a transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RangeOrder {
    pub by: SortBy,
    pub descending: bool,
}

impl RangeOrder {
    /// Key order, ascending (the engine's own).
    pub const KEY: RangeOrder = RangeOrder {
        by: SortBy::Key,
        descending: false,
    };
}

/// What a range is sorted by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SortBy {
    Key,
    Version,
    CreateRevision,
    ModRevision,
    Value,
}

impl Op {
    /// A put without a lease that does not ask for the previous value.
    pub fn put(key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) -> Op {
        Op::Put {
            key: key.into(),
            value: value.into(),
            lease: 0,
            prev_kv: false,
        }
    }

    /// A delete that does not ask for the deleted value.
    pub fn delete(key: impl Into<Vec<u8>>) -> Op {
        Op::Delete {
            key: key.into(),
            prev_kv: false,
        }
    }

    /// The key the op touches.
    pub fn key(&self) -> &[u8] {
        match self {
            Op::Put { key, .. } | Op::Delete { key, .. } | Op::Get { key } => key,
            Op::DeleteRange { start, .. } | Op::Range { start, .. } => start,
        }
    }

    /// Whether the op writes.
    pub fn writes(&self) -> bool {
        !matches!(self, Op::Get { .. } | Op::Range { .. })
    }
}

/// An atomic transaction: if every compare holds, the `success` ops run,
/// otherwise the `failure` ones. A plain batch of writes is a transaction
/// without compares.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Txn {
    pub compares: Vec<Compare>,
    pub success: Vec<Op>,
    pub failure: Vec<Op>,
    pub request: Option<RequestId>,
    /// When the command was proposed, in milliseconds since the Unix epoch,
    /// by the proposing node's clock ([`crate::Node::txn`] stamps it when it
    /// is 0). Apply stores it with the history; point-in-time restore cuts
    /// the log by it.
    pub time_ms: u64,
    /// The revision of the auth state the proposing member checked the
    /// caller's permissions under (`None`: unchecked, the system's own
    /// writes and commands of earlier releases). The member's state may
    /// lag the leader's, so apply refuses the transaction, changing
    /// nothing, when auth is on and its revision has moved past this one
    /// ([`crate::auth::STALE_CHECK`]); the member then catches up, checks
    /// again and retries. Encoded as the kind `CheckedTxn` (see the format).
    #[serde(skip)]
    pub auth_revision: Option<u64>,
}

impl Txn {
    /// An unconditional atomic batch.
    pub fn batch(ops: Vec<Op>) -> Txn {
        Txn {
            success: ops,
            ..Txn::default()
        }
    }
}

/// The replicated command (openraft's `D`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Reads and writes of user keys.
    Txn(Txn),
    /// History below `revision` is no longer served (reads and watches
    /// there fail as compacted); it is removed by [`Command::PurgeHistory`]
    /// steps. A revision at or below the current compacted one changes
    /// nothing.
    Compact { revision: u64, time_ms: u64 },
    /// Removes one bounded step of the history below the compacted
    /// revision; the state machine keeps where it stopped, so successive
    /// steps (from any leader) finish the job.
    PurgeHistory,
    /// A change of users, roles or whether auth is on.
    Auth(AuthChange),
    /// A lease granted, revoked (with its keys) or checkpointed.
    Lease(LeaseCommand),
    /// The cluster applies by the rules of apply version `version` from
    /// here on (see [`crate::apply_version`]). It changes nothing if the
    /// version is at or below the current one, or if the membership is no
    /// longer the one at log index `membership` (0: none), whose members
    /// the leader asked: a member added since may not implement it.
    SetApplyVersion { version: u32, membership: u64 },
}

impl Command {
    /// An unconditional atomic batch.
    pub fn batch(ops: Vec<Op>) -> Command {
        Command::Txn(Txn::batch(ops))
    }

    /// When the command was proposed (0: not stamped).
    pub fn time_ms(&self) -> u64 {
        match self {
            Command::Txn(txn) => txn.time_ms,
            Command::Compact { time_ms, .. } => *time_ms,
            Command::Lease(
                LeaseCommand::Revoke { time_ms, .. }
                | LeaseCommand::RevokeBy { time_ms, .. }
                | LeaseCommand::Drain { time_ms, .. },
            ) => *time_ms,
            Command::PurgeHistory
            | Command::Auth(_)
            | Command::Lease(_)
            | Command::SetApplyVersion { .. } => 0,
        }
    }

    /// Stamps the proposal time if the command has none.
    pub(crate) fn stamp(&mut self, now_ms: u64) {
        match self {
            Command::Txn(txn) if txn.time_ms == 0 => txn.time_ms = now_ms,
            Command::Compact { time_ms, .. } if *time_ms == 0 => *time_ms = now_ms,
            Command::Lease(
                LeaseCommand::Revoke { time_ms, .. }
                | LeaseCommand::RevokeBy { time_ms, .. }
                | LeaseCommand::Drain { time_ms, .. },
            ) if *time_ms == 0 => *time_ms = now_ms,
            _ => {}
        }
    }
}

impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Command::Txn(txn) => write!(
                f,
                "txn({} compares, {}/{} ops)",
                txn.compares.len(),
                txn.success.len(),
                txn.failure.len()
            ),
            Command::Compact { revision, .. } => write!(f, "compact(below {revision})"),
            Command::PurgeHistory => write!(f, "purge-history"),
            Command::Auth(_) => write!(f, "auth-change"),
            Command::Lease(LeaseCommand::Grant { id, .. }) => write!(f, "lease-grant({id})"),
            Command::Lease(LeaseCommand::Revoke { id, .. } | LeaseCommand::RevokeBy { id, .. }) => {
                write!(f, "lease-revoke({id})")
            }
            Command::Lease(LeaseCommand::Checkpoint { remaining }) => {
                write!(f, "lease-checkpoint({} leases)", remaining.len())
            }
            Command::Lease(LeaseCommand::Drain { id, .. }) => write!(f, "lease-drain({id})"),
            Command::SetApplyVersion { version, .. } => write!(f, "apply-version({version})"),
        }
    }
}

/// The encoded kinds, by tag (the order is the format: append only).
#[derive(Serialize)]
enum KindRef<'a> {
    Txn(&'a Txn),
    Compact { revision: u64, time_ms: u64 },
    PurgeHistory,
    Auth(&'a AuthChange),
    Lease(&'a LeaseCommand),
    CheckedTxn(&'a Txn, u64),
    SetApplyVersion { version: u32, membership: u64 },
}

#[derive(Deserialize)]
enum Kind {
    Txn(Txn),
    Compact { revision: u64, time_ms: u64 },
    PurgeHistory,
    Auth(AuthChange),
    Lease(LeaseCommand),
    CheckedTxn(Txn, u64),
    SetApplyVersion { version: u32, membership: u64 },
}

impl Serialize for Command {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let kind = match self {
            Command::Txn(txn) => match txn.auth_revision {
                None => KindRef::Txn(txn),
                Some(revision) => KindRef::CheckedTxn(txn, revision),
            },
            Command::Compact { revision, time_ms } => KindRef::Compact {
                revision: *revision,
                time_ms: *time_ms,
            },
            Command::PurgeHistory => KindRef::PurgeHistory,
            Command::Auth(change) => KindRef::Auth(change),
            Command::Lease(change) => KindRef::Lease(change),
            Command::SetApplyVersion {
                version,
                membership,
            } => KindRef::SetApplyVersion {
                version: *version,
                membership: *membership,
            },
        };
        let mut tuple = serializer.serialize_tuple(3)?;
        tuple.serialize_element(&MAGIC)?;
        tuple.serialize_element(&ENVELOPE_VERSION)?;
        tuple.serialize_element(&kind)?;
        tuple.end()
    }
}

/// An op as release 0.1.0 encoded it.
#[derive(Deserialize)]
enum LegacyOp {
    Put {
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
        #[serde(with = "serde_bytes")]
        value: Vec<u8>,
    },
    Delete {
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
    },
    Get {
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
    },
}

impl From<LegacyOp> for Op {
    fn from(op: LegacyOp) -> Op {
        match op {
            LegacyOp::Put { key, value } => Op::put(key, value),
            LegacyOp::Delete { key } => Op::delete(key),
            LegacyOp::Get { key } => Op::Get { key },
        }
    }
}

struct CommandVisitor;

/// Elements the visitor may read: far more than any command has, so that
/// postcard's tuple access never runs out before the input does.
const ANY_LENGTH: usize = usize::MAX;

fn legacy_ops(ops: Vec<LegacyOp>) -> Vec<Op> {
    ops.into_iter().map(Op::from).collect()
}

impl<'de> Visitor<'de> for CommandVisitor {
    type Value = Command;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a Ferry command")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Command, A::Error> {
        let missing = |what: &str| de::Error::custom(format!("command ends before its {what}"));
        let first: u64 = seq.next_element()?.ok_or_else(|| missing("start"))?;
        if first == MAGIC {
            let version: u8 = seq.next_element()?.ok_or_else(|| missing("version"))?;
            if version != ENVELOPE_VERSION {
                return Err(de::Error::custom(format!(
                    "command envelope version {version} is not known to this release \
                     (it knows {ENVELOPE_VERSION})"
                )));
            }
            let kind: Kind = seq.next_element()?.ok_or_else(|| missing("kind"))?;
            return Ok(match kind {
                Kind::Txn(txn) => Command::Txn(txn),
                Kind::Compact { revision, time_ms } => Command::Compact { revision, time_ms },
                Kind::PurgeHistory => Command::PurgeHistory,
                Kind::Auth(change) => Command::Auth(change),
                Kind::Lease(change) => Command::Lease(change),
                Kind::CheckedTxn(txn, revision) => Command::Txn(Txn {
                    auth_revision: Some(revision),
                    ..txn
                }),
                Kind::SetApplyVersion {
                    version,
                    membership,
                } => Command::SetApplyVersion {
                    version,
                    membership,
                },
            });
        }
        // Release 0.1.0: `first` is the compares' count. Never allocate by
        // it: a damaged count runs out of input instead.
        let mut compares = Vec::new();
        for _ in 0..first {
            compares.push(seq.next_element()?.ok_or_else(|| missing("compares"))?);
        }
        let success: Vec<LegacyOp> = seq.next_element()?.ok_or_else(|| missing("success ops"))?;
        let failure: Vec<LegacyOp> = seq.next_element()?.ok_or_else(|| missing("failure ops"))?;
        let request = seq.next_element()?.ok_or_else(|| missing("request id"))?;
        let time_ms = seq.next_element()?.ok_or_else(|| missing("time"))?;
        Ok(Command::Txn(Txn {
            compares,
            success: legacy_ops(success),
            failure: legacy_ops(failure),
            request,
            time_ms,
            auth_revision: None,
        }))
    }
}

impl<'de> Deserialize<'de> for Command {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Command, D::Error> {
        deserializer.deserialize_tuple(ANY_LENGTH, CommandVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::{CompareOp, CompareTarget};

    fn sample() -> Vec<Command> {
        vec![
            Command::Txn(Txn {
                compares: vec![Compare {
                    key: b"k".to_vec(),
                    op: CompareOp::Equal,
                    target: CompareTarget::Value(Some(b"v".to_vec())),
                }],
                success: vec![
                    Op::Put {
                        key: b"k".to_vec(),
                        value: vec![0, 255],
                        lease: 7,
                        prev_kv: true,
                    },
                    Op::delete("d"),
                    Op::Get { key: b"g".to_vec() },
                ],
                failure: vec![Op::put("f", "x")],
                request: Some(RequestId {
                    client: 1,
                    sequence: 2,
                    first_incomplete: 1,
                }),
                time_ms: 1_700_000_000_000,
                auth_revision: None,
            }),
            Command::Compact {
                revision: 1 << 40,
                time_ms: 5,
            },
            Command::PurgeHistory,
            Command::Auth(AuthChange::UserAdd {
                name: "root".into(),
                password_hash: Some("$argon2id$…".into()),
            }),
        ]
    }

    /// Every command kind and every auth change, as the fixture holds them.
    fn every_kind() -> Vec<Command> {
        use crate::auth::{Permission, PermissionKind};
        let mut all = sample();
        all.extend(
            [
                AuthChange::Enable { token_key: [7; 32] },
                AuthChange::Disable,
                AuthChange::UserAdd {
                    name: "reader".into(),
                    password_hash: None,
                },
                AuthChange::UserDelete {
                    name: "reader".into(),
                },
                AuthChange::UserPassword {
                    name: "root".into(),
                    password_hash: "$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA".into(),
                },
                AuthChange::UserGrantRole {
                    user: "reader".into(),
                    role: "jobs".into(),
                },
                AuthChange::UserRevokeRole {
                    user: "reader".into(),
                    role: "jobs".into(),
                },
                AuthChange::RoleAdd {
                    name: "jobs".into(),
                },
                AuthChange::RoleDelete {
                    name: "jobs".into(),
                },
                AuthChange::RoleGrant {
                    role: "jobs".into(),
                    permission: Permission {
                        kind: PermissionKind::Read,
                        key: b"job/".to_vec(),
                        range_end: b"job0".to_vec(),
                    },
                },
                AuthChange::RoleRevoke {
                    role: "jobs".into(),
                    key: b"job/".to_vec(),
                    range_end: vec![0],
                },
            ]
            .map(Command::Auth),
        );
        all.extend(
            [
                LeaseCommand::Grant {
                    id: 0x7FFF_0000_0000_0001,
                    ttl_ms: 10_000,
                },
                LeaseCommand::Revoke {
                    id: 42,
                    time_ms: 1_700_000_000_000,
                },
                LeaseCommand::Checkpoint {
                    remaining: vec![(42, 3_000), (43, 0)],
                },
            ]
            .map(Command::Lease),
        );
        // Added with etcd's API: range deletes and ranges in transactions,
        // and lease compares.
        all.push(Command::Txn(Txn {
            compares: vec![Compare {
                key: b"lock/a".to_vec(),
                op: CompareOp::Equal,
                target: CompareTarget::Lease(0x694d),
            }],
            success: vec![
                Op::DeleteRange {
                    start: b"a/".to_vec(),
                    end: Some(b"a0".to_vec()),
                    prev_kv: true,
                },
                Op::Range {
                    start: b"lock/".to_vec(),
                    end: None,
                    limit: 1,
                    order: RangeOrder {
                        by: SortBy::CreateRevision,
                        descending: false,
                    },
                },
            ],
            failure: vec![Op::Range {
                start: b"k".to_vec(),
                end: Some(b"l".to_vec()),
                limit: 0,
                order: RangeOrder {
                    by: SortBy::Value,
                    descending: true,
                },
            }],
            request: None,
            time_ms: 7,
            auth_revision: None,
        }));
        // Added with the permission check at apply.
        all.push(Command::Txn(Txn {
            success: vec![Op::put("jobs/1", "queued")],
            request: Some(RequestId {
                client: 3,
                sequence: 4,
                first_incomplete: 4,
            }),
            time_ms: 8,
            auth_revision: Some(12),
            ..Txn::default()
        }));
        // Added with the revoke checked at apply.
        all.extend(
            [
                LeaseCommand::RevokeBy {
                    id: 43,
                    time_ms: 1_700_000_000_001,
                    user: Some("alice".into()),
                },
                LeaseCommand::RevokeBy {
                    id: 44,
                    time_ms: 9,
                    user: None,
                },
            ]
            .map(Command::Lease),
        );
        // Added with bounded revokes.
        all.push(Command::Lease(LeaseCommand::Drain {
            id: 45,
            time_ms: 1_700_000_000_002,
        }));
        // Added with the apply version.
        all.push(Command::SetApplyVersion {
            version: 2,
            membership: 300,
        });
        all
    }

    const FIXTURE: &str = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/commands-envelope-1.hex"
    );

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Commands written by this release decode, unchanged, in every later
    /// one: the fixture (one hex-encoded command per line) is never
    /// rewritten, only added to when a kind is added.
    #[test]
    fn the_envelope_1_fixture_decodes_to_every_kind_and_re_encodes_byte_for_byte() {
        let text = std::fs::read_to_string(FIXTURE).expect("the fixture is committed");
        let lines: Vec<&str> = text.lines().filter(|l| !l.is_empty()).collect();
        let expected = every_kind();
        assert!(
            lines.len() <= expected.len(),
            "the fixture has kinds this test does not"
        );
        for (line, command) in lines.iter().zip(&expected) {
            let bytes: Vec<u8> = (0..line.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&line[i..i + 2], 16).expect("hex"))
                .collect();
            assert_eq!(&postcard::from_bytes::<Command>(&bytes).unwrap(), command);
            assert_eq!(&hex(&postcard::to_stdvec(command).unwrap()), line);
        }
        // A kind added since: the test names the lines to append (the
        // fixture of this release is never rewritten, only added to).
        let missing: Vec<String> = expected[lines.len()..]
            .iter()
            .map(|command| hex(&postcard::to_stdvec(command).unwrap()))
            .collect();
        assert!(
            missing.is_empty(),
            "append these lines to {FIXTURE}:\n{}",
            missing.join("\n")
        );
    }

    #[test]
    fn every_kind_round_trips_through_the_envelope() {
        for command in every_kind() {
            let bytes = postcard::to_stdvec(&command).unwrap();
            assert_eq!(&bytes[..4], &[0x81, 0xF4, 0x9D, 0x7F], "the magic varint");
            assert_eq!(bytes[4], ENVELOPE_VERSION);
            assert_eq!(postcard::from_bytes::<Command>(&bytes).unwrap(), command);
        }
    }

    #[test]
    fn a_legacy_transaction_decodes_with_default_new_fields() {
        #[derive(Serialize)]
        enum OldOp {
            Put { key: Vec<u8>, value: Vec<u8> },
            Delete { key: Vec<u8> },
            Get { key: Vec<u8> },
        }
        #[derive(Serialize)]
        struct OldCommand {
            compares: Vec<Compare>,
            success: Vec<OldOp>,
            failure: Vec<OldOp>,
            request: Option<RequestId>,
            time_ms: u64,
        }
        let compare = Compare {
            key: b"k".to_vec(),
            op: CompareOp::Greater,
            target: CompareTarget::Version(0),
        };
        let old = postcard::to_stdvec(&OldCommand {
            compares: vec![compare.clone(); 3],
            success: vec![
                OldOp::Put {
                    key: b"k".to_vec(),
                    value: b"v".to_vec(),
                },
                OldOp::Delete { key: b"d".to_vec() },
            ],
            failure: vec![OldOp::Get { key: b"g".to_vec() }],
            request: None,
            time_ms: 9,
        })
        .unwrap();
        let decoded: Command = postcard::from_bytes(&old).unwrap();
        assert_eq!(
            decoded,
            Command::Txn(Txn {
                compares: vec![compare; 3],
                success: vec![Op::put("k", "v"), Op::delete("d")],
                failure: vec![Op::Get { key: b"g".to_vec() }],
                request: None,
                time_ms: 9,
                auth_revision: None,
            })
        );
    }

    #[test]
    fn damage_is_a_decode_error_never_a_panic_or_a_huge_allocation() {
        let good = postcard::to_stdvec(&sample()[0]).unwrap();
        for cut in 0..good.len() {
            assert!(
                postcard::from_bytes::<Command>(&good[..cut]).is_err(),
                "cut at {cut}"
            );
        }
        // A legacy compare count of billions with no compares behind it.
        let huge = [0xFF, 0xFF, 0xFF, 0xFF, 0x0F];
        assert!(postcard::from_bytes::<Command>(&huge).is_err());
        // A newer envelope version.
        let mut newer = good.clone();
        newer[4] = 2;
        assert!(postcard::from_bytes::<Command>(&newer).is_err());
        // A kind this release does not know.
        let mut unknown = good;
        unknown[5] = 9;
        assert!(postcard::from_bytes::<Command>(&unknown).is_err());
    }
}
