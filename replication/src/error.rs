//! Errors of the replicated node API.

use crate::types::NodeId;

/// What a [`crate::Node`] call can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// This node is not the leader; retry on the leader if it is known.
    #[error("not the leader (leader: {leader_id:?} at {leader_addr:?})")]
    NotLeader {
        leader_id: Option<NodeId>,
        leader_addr: Option<String>,
    },
    /// The state machine refused the command without effect.
    #[error("rejected: {0}")]
    Rejected(String),
    /// A read at a revision whose history was compacted.
    #[error(transparent)]
    Compacted(#[from] crate::state_machine::history::Compacted),
    /// A read at a revision this node has not applied yet.
    #[error("revision {requested} is in the future; this node is at {current}")]
    FutureRevision { requested: u64, current: u64 },
    /// A local storage failure.
    #[error("storage: {0}")]
    Storage(#[from] std::io::Error),
    /// TLS files that do not load.
    #[error("TLS: {0}")]
    Tls(#[from] crate::tls::TlsError),
    /// The node could not start or serve (bind, configuration).
    #[error("node: {0}")]
    Node(String),
    /// A learner that has not caught up with the leader's log (or never
    /// answered it) cannot become a voter: it would count against the
    /// quorum at once and could stall every write.
    #[error(
        "member {id} is not caught up with the leader (it lacks {lag_entries} entries{}); promote it once it has",
        if *never_answered { ", and never answered" } else { "" }
    )]
    LearnerBehind {
        id: NodeId,
        lag_entries: u64,
        never_answered: bool,
    },
    /// A member cannot join a cluster whose apply version is above what
    /// it implements (see [`crate::apply_version`]): it would stop at once.
    #[error(
        "member {id} implements apply versions up to {implemented}, but the cluster follows \
         {cluster}: run a release on it that implements {cluster}"
    )]
    ApplyVersionBehind {
        id: NodeId,
        implemented: u32,
        cluster: u32,
    },
    /// Leadership can go only to a voter (not a learner, nor a stranger).
    #[error("member {0} is not a voter of the cluster: only a voter can lead")]
    NotVoter(NodeId),
    /// Any other Raft failure (a stopped node, a membership conflict…).
    #[error("raft: {0}")]
    Raft(String),
}

/// Result of node calls.
pub type Result<T, E = Error> = std::result::Result<T, E>;
