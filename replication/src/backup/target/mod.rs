//! Where a backup chain is kept: a local directory ([`LocalDir`],
//! `file://`) or an object store ([`ObjectTarget`], `s3://`).
//!
//! Both give the chain the same three guarantees, which its fencing and
//! its readers rely on:
//! - a name is written whole or not at all, and once `put` returns it is
//!   durable;
//! - `put` never replaces a stored name ([`io::ErrorKind::AlreadyExists`]);
//! - `swap` replaces one small record only if it is still the version the
//!   caller read (compare-and-swap), which is what fences a deposed leader.

mod local;
mod object;

pub use local::LocalDir;
pub use object::{ObjectTarget, S3Options};

use std::io;
use std::path::Path;
use std::sync::Arc;

/// A place that stores named, immutable files. Names are relative paths
/// with `/` separators, as in the backup module's format.
pub trait BackupTarget: Send + Sync + 'static {
    /// Stores the local file `from` as `name`, atomically (readers see the
    /// whole file or nothing) and only if `name` is not stored yet: a
    /// stored name is an [`io::ErrorKind::AlreadyExists`] error and stays
    /// as it was. Once this returns the file is durable.
    fn put(&self, name: &str, from: &Path) -> io::Result<()>;
    /// Stores `bytes` as `name`, as [`BackupTarget::put`] stores a file:
    /// for what a caller built in memory (a log chunk, bounded by its
    /// size limit), so that it is not written to a local file and read
    /// back first.
    fn put_bytes(&self, name: &str, bytes: Vec<u8>) -> io::Result<()>;
    /// Copies `name` into the local file `to`, streaming (memory stays
    /// bounded whatever the size); returns the bytes copied.
    fn get(&self, name: &str, to: &Path) -> io::Result<u64>;
    /// Whether `name` is stored.
    fn exists(&self, name: &str) -> io::Result<bool>;
    /// The names stored under the folder `prefix` (e.g. `"log"`), sorted.
    fn list(&self, prefix: &str) -> io::Result<Vec<String>>;
    /// Removes `name`; removing a name that is not stored is not an error.
    fn delete(&self, name: &str) -> io::Result<()>;
    /// Reads a small record that [`BackupTarget::swap`] maintains, with the
    /// version a later swap must name; `None` if it is not stored.
    fn read_versioned(&self, name: &str) -> io::Result<Option<(Vec<u8>, Version)>>;
    /// Stores `bytes` as `name` if the stored version is still `expected`
    /// (`None`: if nothing is stored). Otherwise nothing changes and the
    /// error is [`io::ErrorKind::AlreadyExists`]: read again and retry.
    fn swap(&self, name: &str, bytes: &[u8], expected: Option<&Version>) -> io::Result<()>;
    /// For messages: where this target is.
    fn describe(&self) -> String;
    /// CPU time used so far by threads of the target's own (an object
    /// store's I/O runtime), in nanoseconds. Work a call does on the
    /// calling thread is the caller's to count.
    fn cpu_ns(&self) -> u64 {
        0
    }
}

/// The version of a record read by [`BackupTarget::read_versioned`]: an
/// ETag in object storage, the record's checksum in a directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Version(pub String);

/// Opens the target a URL names: `s3://bucket/prefix` (credentials,
/// region and endpoint from `s3` or the standard AWS environment
/// variables) or `file:///path` (a local directory, created if missing).
/// A plain path is taken as a local directory.
pub fn open(url: &str, s3: &S3Options) -> io::Result<Arc<dyn BackupTarget>> {
    let invalid = |why: String| io::Error::new(io::ErrorKind::InvalidInput, why);
    if let Some(rest) = url.strip_prefix("s3://") {
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(invalid(format!("{url}: no bucket named")));
        }
        return Ok(Arc::new(ObjectTarget::s3(bucket, prefix, s3)?));
    }
    if let Some(path) = url.strip_prefix("file://") {
        if !path.starts_with('/') {
            return Err(invalid(format!(
                "{url}: a file URL names an absolute path (file:///var/backups/ferry)"
            )));
        }
        return Ok(Arc::new(LocalDir::new(path)?));
    }
    if url.contains("://") {
        return Err(invalid(format!(
            "{url}: unsupported backup URL (use s3://bucket/prefix or file:///path)"
        )));
    }
    Ok(Arc::new(LocalDir::new(url)?))
}

/// The error a put of a stored name, or a swap of a changed record, gives.
pub(crate) fn conflict(what: String) -> io::Error {
    io::Error::new(io::ErrorKind::AlreadyExists, what)
}
