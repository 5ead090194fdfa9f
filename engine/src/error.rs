//! Typed errors of the engine's public API.

use std::io;
use std::path::PathBuf;

/// Result alias used throughout the engine.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in the engine.
///
/// Corruption is always reported with the file and the byte offset where it
/// was detected, so an operator can find and inspect it.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An operating-system I/O error, with the file it happened on.
    #[error("I/O error on {path}: {source}")]
    Io {
        /// The file or directory being accessed.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// Stored bytes failed a checksum or could not be decoded.
    #[error("corruption in {path} at offset {offset}: {reason}")]
    Corruption {
        /// The file that holds the bad bytes.
        path: PathBuf,
        /// Byte offset of the bad record, block or footer in that file.
        offset: u64,
        /// What was wrong.
        reason: String,
    },
    /// Another process (or another `Db` in this process) holds the directory.
    #[error("database directory {path} is locked by another process or handle")]
    Locked {
        /// The directory that is in use.
        path: PathBuf,
    },
    /// A key or value exceeds the configured limit; nothing was written.
    #[error("{what} of {size} bytes exceeds the limit of {limit} bytes")]
    TooLarge {
        /// `"key"` or `"value"`.
        what: &'static str,
        /// Size of the rejected item.
        size: usize,
        /// The configured maximum.
        limit: usize,
    },
    /// Options are inconsistent or out of range.
    #[error("invalid options: {0}")]
    InvalidOptions(String),
    /// The files were written by a format version this release cannot read.
    #[error("{path}: unsupported format version {version}")]
    UnsupportedVersion {
        /// The file carrying the version.
        path: PathBuf,
        /// The version found.
        version: u32,
    },
    /// A background flush or compaction failed; the database is read-only
    /// until it is reopened.
    #[error("background work failed earlier, database is read-only: {0}")]
    Background(String),
    /// The database has been closed.
    #[error("database is closed")]
    Closed,
}

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>, source: io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    pub(crate) fn corruption(
        path: impl Into<PathBuf>,
        offset: u64,
        reason: impl Into<String>,
    ) -> Self {
        Error::Corruption {
            path: path.into(),
            offset,
            reason: reason.into(),
        }
    }

    /// True when the error reports damaged bytes on disk.
    pub fn is_corruption(&self) -> bool {
        matches!(self, Error::Corruption { .. })
    }
}

/// Attaches a path to an `io::Result`.
pub(crate) trait IoContext<T> {
    fn at(self, path: &std::path::Path) -> Result<T>;
}

impl<T> IoContext<T> for io::Result<T> {
    fn at(self, path: &std::path::Path) -> Result<T> {
        self.map_err(|e| Error::io(path, e))
    }
}
