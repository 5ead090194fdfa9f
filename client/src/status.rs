//! How the API's errors travel as gRPC statuses: the codes and trailers a
//! server sets, and how the SDK reads them back. Servers built on this
//! crate's stubs use the builders, so both ends agree.

use crate::error::Error;
use tonic::{Code, Status};

/// Trailer a follower sets on a not-leader answer: the leader's node id.
pub const LEADER_ID_METADATA: &str = "ferry-leader-id";
/// Trailer a follower sets on a not-leader answer: the leader's client address.
pub const LEADER_ADDR_METADATA: &str = "ferry-leader-addr";
/// Trailer of an OUT_OF_RANGE answer to a read or watch below the
/// compacted revision: the compacted revision.
pub const COMPACTED_REVISION_METADATA: &str = "ferry-compacted-revision";
/// Trailer of an OUT_OF_RANGE answer to a read at a revision the member
/// has not applied: the revision it is at.
pub const CURRENT_REVISION_METADATA: &str = "ferry-current-revision";
/// Trailer of both OUT_OF_RANGE answers: the revision asked for.
pub const REQUESTED_REVISION_METADATA: &str = "ferry-requested-revision";

fn set(status: &mut Status, key: &'static str, value: impl ToString) {
    if let Ok(value) = value.to_string().parse() {
        status.metadata_mut().insert(key, value);
    }
}

/// The not-leader answer: FAILED_PRECONDITION with the leader's id and
/// client address, for servers built on this crate's stubs.
pub fn not_leader_status(leader_id: Option<u64>, leader_addr: Option<&str>) -> Status {
    let mut status = Status::failed_precondition(match (leader_id, leader_addr) {
        (Some(id), Some(addr)) => format!("not the leader; the leader is node {id} at {addr}"),
        _ => "not the leader; no leader is known (election in progress)".to_owned(),
    });
    if let Some(id) = leader_id {
        set(&mut status, LEADER_ID_METADATA, id);
    }
    if let Some(addr) = leader_addr {
        set(&mut status, LEADER_ADDR_METADATA, addr);
    }
    status
}

/// The answer to a read or watch at `requested`, below `compacted`.
pub fn compacted_status(requested: u64, compacted: u64) -> Status {
    let mut status = Status::out_of_range(format!(
        "revision {requested} has been compacted; the oldest retained revision is {compacted}"
    ));
    set(&mut status, COMPACTED_REVISION_METADATA, compacted);
    set(&mut status, REQUESTED_REVISION_METADATA, requested);
    status
}

/// The answer to a read at `requested`, beyond the member's `current`.
pub fn future_revision_status(requested: u64, current: u64) -> Status {
    let mut status = Status::out_of_range(format!(
        "revision {requested} is in the future; this member is at {current}"
    ));
    set(&mut status, CURRENT_REVISION_METADATA, current);
    set(&mut status, REQUESTED_REVISION_METADATA, requested);
    status
}

fn trailer(status: &Status, key: &str) -> Option<u64> {
    status.metadata().get(key)?.to_str().ok()?.parse().ok()
}

/// The leader's client address a not-leader answer names, if any.
pub(crate) fn status_leader(status: &Status) -> Option<String> {
    status
        .metadata()
        .get(LEADER_ADDR_METADATA)
        .and_then(|v| v.to_str().ok())
        .filter(|addr| !addr.is_empty())
        .map(str::to_owned)
}

/// The SDK's error for an OUT_OF_RANGE answer to a read or watch.
pub(crate) fn out_of_range(status: &Status) -> Error {
    debug_assert_eq!(status.code(), Code::OutOfRange);
    let requested = trailer(status, REQUESTED_REVISION_METADATA).unwrap_or(0);
    if let Some(compacted) = trailer(status, COMPACTED_REVISION_METADATA) {
        return Error::Compacted {
            requested,
            compacted,
        };
    }
    if let Some(current) = trailer(status, CURRENT_REVISION_METADATA) {
        return Error::FutureRevision { requested, current };
    }
    Error::Server {
        code: status.code(),
        message: status.message().into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn revision_errors_come_back_with_their_numbers() {
        assert!(matches!(
            out_of_range(&compacted_status(5, 10)),
            Error::Compacted {
                requested: 5,
                compacted: 10
            }
        ));
        assert!(matches!(
            out_of_range(&future_revision_status(50, 10)),
            Error::FutureRevision {
                requested: 50,
                current: 10
            }
        ));
        assert!(matches!(
            out_of_range(&Status::out_of_range("other")),
            Error::Server { .. }
        ));
    }
}
