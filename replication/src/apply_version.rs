//! The apply version: which rules of apply a cluster follows, so that
//! members of different releases never apply one entry differently.
//!
//! Every member applies every entry, and their states agree only if they
//! apply it the same way. A release that changes what apply does (a new
//! bound, a new command, a new answer) would make a cluster of old and
//! new members diverge during a rolling upgrade, or stop the old ones at
//! an entry they cannot decode. So each such change is gated on the
//! cluster's *apply version*, part of the replicated state:
//!
//! - A release implements every apply version from 1 to its
//!   [`APPLY_VERSION`], and applies an entry by the rules of the version
//!   the state holds at that entry, which every member knows alike.
//! - The version rises only by a replicated [`Command::SetApplyVersion`]
//!   (never falls). The leader proposes it ([`run`]) once every member of
//!   the membership, learners included, has said that it implements the
//!   new version. A member that cannot say (down, cut off, or of a release
//!   from before this mechanism) counts as "no": the leader asks again
//!   later. The command names the membership whose members were asked,
//!   and changes nothing if, where it is applied, the membership is
//!   another one: a member added meanwhile was not asked.
//! - A member never applies past what it implements: meeting a higher
//!   version in an entry, a snapshot to install or its own state at start
//!   (or in an offline restore or recovery), it stops with an error naming
//!   both versions, rather than applying by rules it does not know. That
//!   can only happen to a member added (or downgraded) after the version
//!   rose. Adding one that says it implements less is refused (see
//!   [`crate::Node::add_learner`]); one that cannot be asked (not started
//!   yet) is added and stops by itself if it is behind.
//! - Members of releases before this mechanism check nothing: a cluster
//!   that has one never rises past 1 (it cannot answer), but such a member
//!   added or downgraded into a cluster past 1 would apply by its own
//!   rules. Do not run them beside releases past apply version 1.
//!
//! How a future release changes apply: raise [`APPLY_VERSION`], and make
//! the new behaviour depend on the version the overlay gives
//! (`Overlay::apply_version()`), keeping the old one below it. A new
//! command is proposed only once the cluster's version allows it.
//!
//! ## Format
//!
//! The state holds the version under `0x00 ‖ "apply_version"` as a
//! `u32 LE` (absent: 1, what every state written before this mechanism
//! follows). `SetApplyVersion { version, membership }` is tag 6 of the
//! command envelope (see `types::command`); a member's answer to "which
//! version do you implement" is `ForwardRequest::ApplyVersion` (see
//! `network::forward`).

use crate::network::client::NetworkFactory;
use crate::network::forward::{self, ForwardReply, ForwardRequest};
use crate::state_machine::SmShared;
use crate::types::{Command, FerryNode, NodeId, Raft};
use openraft::async_runtime::WatchReceiver;
use openraft::ServerState;
use std::sync::Arc;
use std::time::Duration;

/// The highest apply version this release implements. The versions, each
/// one's rules being the previous one's but for what it names:
/// - 1: apply as in the releases before the apply version, and in this
///   one while a cluster has not risen;
/// - 2: a step of the history purge may stop inside a key
///   (`history::purge_step`), so that its bounds hold for a key of any
///   number of versions (under 1, a step takes a key's versions whole, in
///   memory and in one engine batch); and a range inside a transaction,
///   sorted otherwise than by key ascending, that would look at more than
///   `MAX_TXN_RANGE_KEYS` keys is refused (under 1, it is answered from
///   the first keys, which need not be the first in its order).
pub const APPLY_VERSION: u32 = 2;

/// What this member implements, and how often it checks, as leader,
/// whether the cluster may rise.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApplyVersionOptions {
    /// The highest apply version this member implements: [`APPLY_VERSION`].
    /// Only tests set another, to act as a member of another release.
    pub implemented: u32,
    /// How often a leader whose cluster follows an older version than it
    /// implements asks the members again: after a rolling upgrade's last
    /// member, the version rises within this.
    pub check_interval: Duration,
}

impl Default for ApplyVersionOptions {
    fn default() -> Self {
        ApplyVersionOptions {
            implemented: APPLY_VERSION,
            check_interval: Duration::from_secs(5),
        }
    }
}

/// The apply version `value` (the state's record; `None`: absent) names.
pub(crate) fn decode(value: Option<&[u8]>) -> std::io::Result<u32> {
    match value {
        None => Ok(1),
        Some(bytes) => bytes.try_into().map(u32::from_le_bytes).map_err(|_| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("undecodable apply version record ({} bytes)", bytes.len()),
            )
        }),
    }
}

/// Why a member refuses a state or an entry: it follows `version`, above
/// what the member implements.
pub(crate) fn too_new(version: u32, implemented: u32, what: &str) -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::Unsupported,
        format!(
            "{what} follows apply version {version}, but this member implements apply versions up to \
             {implemented}: run a release that implements it (a cluster's apply version never falls)"
        ),
    )
}

/// Which apply version `id` (at `node`) implements, as it answers; `None`
/// if it does not (unreachable, or of a release without the mechanism).
pub(crate) async fn implemented_by(
    factory: &NetworkFactory,
    id: NodeId,
    node: &FerryNode,
) -> Option<u32> {
    match forward::ask(factory, id, node, &ForwardRequest::ApplyVersion).await {
        Ok(ForwardReply::ApplyVersion(version)) => Some(version),
        Ok(other) => {
            tracing::warn!(member = id, answer = ?other, "unexpected answer about the apply version");
            None
        }
        Err(error) => {
            tracing::debug!(member = id, %error, "no answer about the apply version");
            None
        }
    }
}

/// The version every member implements, if each of them answered (this
/// one included): what the cluster may rise to; with the log index of the
/// membership whose members were asked (0: none), which the raise names.
async fn common(raft: &Raft, factory: &NetworkFactory, own: (NodeId, u32)) -> Option<(u32, u64)> {
    let (members, membership): (Vec<(NodeId, FerryNode)>, u64) = {
        let metrics = raft.metrics();
        let metrics = metrics.borrow_watched();
        let config = &metrics.membership_config;
        (
            // Every node of every config (a joint one has two) and the
            // learners.
            config
                .nodes()
                .map(|(id, node)| (*id, node.clone()))
                .collect(),
            config.log_id().map_or(0, |l| l.index),
        )
    };
    let mut lowest = own.1;
    for (id, node) in members {
        if id != own.0 {
            lowest = lowest.min(implemented_by(factory, id, &node).await?);
        }
    }
    Some((lowest, membership))
}

/// On the leader: raises the cluster's apply version to what every member
/// implements, checking every `interval` while it is below this member's
/// own. Nothing to do (no call to anyone) once they are equal.
pub(crate) async fn run(
    raft: Raft,
    shared: Arc<SmShared>,
    factory: NetworkFactory,
    id: NodeId,
    interval: Duration,
) {
    let own = shared.implemented_apply_version();
    loop {
        tokio::time::sleep(interval).await;
        if raft.metrics().borrow_watched().state != ServerState::Leader {
            continue;
        }
        let current = match shared.apply_version() {
            Ok(current) => current,
            Err(error) => {
                tracing::warn!(%error, "reading the apply version");
                continue;
            }
        };
        if current >= own {
            continue;
        }
        let Some((version, membership)) = common(&raft, &factory, (id, own)).await else {
            continue;
        };
        if version > current {
            let raise = Command::SetApplyVersion {
                version,
                membership,
            };
            match raft.client_write(raise.into()).await {
                Ok(written) if written.data.succeeded => {
                    tracing::info!(from = current, to = version, "raised the apply version")
                }
                // The membership changed since the members were asked.
                Ok(_) => tracing::debug!("apply version not raised: the members changed"),
                Err(error) => tracing::debug!(%error, "apply version not raised"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_absent_record_is_version_one_and_a_damaged_one_an_error() {
        assert_eq!(decode(None).unwrap(), 1);
        assert_eq!(decode(Some(&7u32.to_le_bytes())).unwrap(), 7);
        assert!(decode(Some(&[1, 0, 0])).is_err());
        let refusal = too_new(3, 2, "entry 12").to_string();
        assert!(
            refusal.contains("entry 12 follows apply version 3"),
            "{refusal}"
        );
        assert!(refusal.contains("up to 2"), "{refusal}");
    }
}
