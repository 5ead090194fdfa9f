//! The small state files of the Raft log: `VOTE` and `PURGED`.
//!
//! ## Format (version 1)
//!
//! ```text
//! file = magic (8 bytes: "FERRYVOT" or "FERRYPRG") | version: u32 LE | crc: u32 LE | body
//! crc  = CRC32 over body
//! body = postcard of the value (VOTE: the vote; PURGED: the last purged log id)
//! ```
//!
//! Both are replaced atomically (write to a temporary file, fsync, rename,
//! fsync the directory), so a reader sees the old or the new value, never a
//! mix; the CRC catches damage at rest.

use ferry_engine::fs::FileSystem;
use serde::{de::DeserializeOwned, Serialize};
use std::io;
use std::path::Path;

pub(crate) const VOTE_MAGIC: &[u8; 8] = b"FERRYVOT";
pub(crate) const PURGED_MAGIC: &[u8; 8] = b"FERRYPRG";
const VERSION: u32 = 1;
const HEADER_LEN: usize = 16;

pub(crate) fn write<T: Serialize>(
    fs: &dyn FileSystem,
    path: &Path,
    magic: &[u8; 8],
    value: &T,
) -> io::Result<()> {
    let body = postcard::to_stdvec(value).map_err(io::Error::other)?;
    let mut bytes = Vec::with_capacity(HEADER_LEN + body.len());
    bytes.extend_from_slice(magic);
    bytes.extend_from_slice(&VERSION.to_le_bytes());
    bytes.extend_from_slice(&crc32fast::hash(&body).to_le_bytes());
    bytes.extend_from_slice(&body);
    fs.write_atomic(path, &bytes)
}

/// Reads the file, `None` if it does not exist. Damage is an
/// `InvalidData` error naming the file.
pub(crate) fn read<T: DeserializeOwned>(
    fs: &dyn FileSystem,
    path: &Path,
    magic: &[u8; 8],
) -> io::Result<Option<T>> {
    if !fs.exists(path) {
        return Ok(None);
    }
    let bytes = fs.read_all(path)?;
    let bad = |reason: &str| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{}: {reason}", path.display()),
        )
    };
    if bytes.len() < HEADER_LEN || &bytes[..8] != magic {
        return Err(bad("not a Ferry Raft state file (bad magic or cut short)"));
    }
    let version = u32::from_le_bytes(bytes[8..12].try_into().expect("4 bytes"));
    if version != VERSION {
        return Err(bad(&format!("unsupported version {version}")));
    }
    let crc = u32::from_le_bytes(bytes[12..16].try_into().expect("4 bytes"));
    let body = &bytes[HEADER_LEN..];
    if crc32fast::hash(body) != crc {
        return Err(bad("CRC mismatch at offset 16"));
    }
    postcard::from_bytes(body)
        .map(Some)
        .map_err(|e| bad(&format!("undecodable body: {e}")))
}
