//! The small state files of the Raft log: `VOTE` and `PURGED`.
//!
//! ## Format (version 2)
//!
//! ```text
//! file = the envelope (ferry_engine::envelope), magic "FERRYVOT" or "FERRYPRG", version 2
//! body = postcard of the value (VOTE: the vote; PURGED: the last purged log id)
//! ```
//!
//! Version 1 had the same body in the envelope's earlier layout (no length
//! field); it is still read.
//!
//! Both are replaced atomically (write to a temporary file, fsync, rename,
//! fsync the directory), so a reader sees the old or the new value, never a
//! mix; the CRC catches damage at rest.

use ferry_engine::envelope::{self, Kind};
use ferry_engine::fs::FileSystem;
use serde::{de::DeserializeOwned, Serialize};
use std::io;
use std::path::Path;

pub(crate) const VOTE: Kind = state_file(*b"FERRYVOT", "Raft vote file");
pub(crate) const PURGED: Kind = state_file(*b"FERRYPRG", "Raft purge mark");

const fn state_file(magic: [u8; 8], what: &'static str) -> Kind {
    Kind {
        magic,
        version: 2,
        unsized_versions: &[1],
        what,
    }
}

pub(crate) fn write<T: Serialize>(
    fs: &dyn FileSystem,
    path: &Path,
    kind: &Kind,
    value: &T,
) -> io::Result<()> {
    let body = postcard::to_stdvec(value).map_err(io::Error::other)?;
    fs.write_atomic(path, &envelope::seal(kind, &body))
}

/// Reads the file, `None` if it does not exist. Damage is an
/// `InvalidData` error naming the file.
pub(crate) fn read<T: DeserializeOwned>(
    fs: &dyn FileSystem,
    path: &Path,
    kind: &Kind,
) -> io::Result<Option<T>> {
    if !fs.exists(path) {
        return Ok(None);
    }
    let bytes = fs.read_all(path)?;
    let bad = |reason: String| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{}: {reason}", path.display()),
        )
    };
    let opened = envelope::open(kind, &bytes).map_err(|e| bad(e.to_string()))?;
    postcard::from_bytes(opened.body)
        .map(Some)
        .map_err(|e| bad(format!("undecodable body: {e}")))
}
