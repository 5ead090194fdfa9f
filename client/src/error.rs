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
    /// A watch asked for a revision the server no longer retains.
    #[error("revision no longer retained: {0}")]
    Compacted(String),
    /// The endpoint list was empty or unparsable.
    #[error("bad endpoint: {0}")]
    Endpoint(String),
    /// Any other answer of the server.
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
            Error::Compacted(_) => Some(tonic::Code::OutOfRange),
            Error::DeadlineExceeded { .. } => Some(tonic::Code::DeadlineExceeded),
            Error::Endpoint(_) => None,
        }
    }
}

/// Result of client calls.
pub type Result<T, E = Error> = std::result::Result<T, E>;
