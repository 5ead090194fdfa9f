//! Errors of the client SDK.

use std::time::Duration;

/// What a client call can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No member answered usefully before the call's deadline; carries the
    /// last failure seen.
    #[error("no answer within {deadline:?}: {last}")]
    DeadlineExceeded { deadline: Duration, last: String },
    /// The request was refused as invalid (a limit, a malformed argument);
    /// nothing was changed.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// A server limit was hit (request size, concurrent streams…); nothing
    /// was changed.
    #[error("resource exhausted: {0}")]
    ResourceExhausted(String),
    /// A read or watch asked for a revision whose history was compacted.
    #[error(
        "revision {requested} has been compacted (the oldest retained revision is {compacted})"
    )]
    Compacted { requested: u64, compacted: u64 },
    /// A read asked for a revision the member has not applied yet.
    #[error("revision {requested} is in the future (the member is at {current})")]
    FutureRevision { requested: u64, current: u64 },
    /// The cluster has auth enabled and refused this client's credentials
    /// (none, a wrong password, an unknown certificate name).
    #[error("unauthenticated: {0}")]
    Unauthenticated(String),
    /// The user may not do this (a key outside their roles' permissions,
    /// or an administrative call of a user other than root).
    #[error("permission denied: {0}")]
    PermissionDenied(String),
    /// The endpoint list was empty or unparsable.
    #[error("bad endpoint: {0}")]
    Endpoint(String),
    /// Any other answer of the server.
    /// A lock, leadership or claim is no longer held: its key is gone
    /// (its lease expired or was revoked) or was replaced.
    #[error("no longer held: {0}")]
    NotHeld(String),
    /// The lease does not exist (it expired, or was revoked).
    #[error("lease {0} not found")]
    LeaseNotFound(u64),
    #[error("server error {code:?}: {message}")]
    Server { code: tonic::Code, message: String },
}

impl Error {
    /// Whether this failure ended retries (the caller may still retry
    /// later with the same result).
    pub fn code(&self) -> Option<tonic::Code> {
        match self {
            Error::Server { code, .. } => Some(*code),
            Error::InvalidArgument(_) => Some(tonic::Code::InvalidArgument),
            Error::ResourceExhausted(_) => Some(tonic::Code::ResourceExhausted),
            Error::Compacted { .. } | Error::FutureRevision { .. } => Some(tonic::Code::OutOfRange),
            Error::DeadlineExceeded { .. } => Some(tonic::Code::DeadlineExceeded),
            Error::Unauthenticated(_) => Some(tonic::Code::Unauthenticated),
            Error::PermissionDenied(_) => Some(tonic::Code::PermissionDenied),
            Error::LeaseNotFound(_) => Some(tonic::Code::NotFound),
            Error::NotHeld(_) => Some(tonic::Code::FailedPrecondition),
            Error::Endpoint(_) => None,
        }
    }
}

/// Result of client calls.
pub type Result<T, E = Error> = std::result::Result<T, E>;
