//! The `CHECKPOINT` file: what a checkpoint holds and where it came from.
//!
//! ## Format (version 1)
//!
//! ```text
//! file   = magic "FERRYCKP" (8) | version: u32 LE | crc: u32 LE (CRC32 of body) | body
//! body   = id | sequence | created unix ms | base flag: u8 [| base id | base crc]
//!          | file count | file*
//! file   = name | size | crc32 of the file's bytes | origin: u8 (0 new, 1 from base)
//! (ids and names: varint length ‖ UTF-8 bytes; numbers: varints)
//! ```
//!
//! The crc in the header is the checkpoint's *checksum*: a delta names its
//! base by id and by this checksum, so a base that was replaced by another
//! checkpoint with the same name is detected.

use crate::varint::{self, Cursor};
use crate::{Error, Result};
use std::path::Path;

/// Name of the metadata file inside a checkpoint directory.
pub const META_FILE: &str = "CHECKPOINT";
const MAGIC: &[u8; 8] = b"FERRYCKP";
const VERSION: u32 = 1;
const HEADER_LEN: usize = 16;

/// Where a file of a checkpoint came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// Written (linked or copied) from the database for this checkpoint.
    New,
    /// Already held by the base checkpoint, linked from there.
    Base,
}

/// One file of a checkpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckpointFile {
    /// File name inside the checkpoint directory.
    pub name: String,
    /// Size in bytes.
    pub size: u64,
    /// CRC32 of the file's bytes.
    pub crc: u32,
    /// New in this checkpoint, or taken over from the base.
    pub origin: Origin,
}

/// The base a delta checkpoint was taken against.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BaseRef {
    /// The base checkpoint's id (its directory name, a sibling of the delta).
    pub id: String,
    /// The base's metadata checksum.
    pub checksum: u32,
}

/// The decoded `CHECKPOINT` file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckpointMeta {
    /// Unique name of the checkpoint (its directory name).
    pub id: String,
    /// Every write with a sequence up to this one is in the checkpoint, and none after.
    pub sequence: u64,
    /// Creation time, milliseconds since the Unix epoch.
    pub created_unix_ms: u64,
    /// The base, for a delta checkpoint.
    pub base: Option<BaseRef>,
    /// Every file of the checkpoint, metadata file excluded.
    pub files: Vec<CheckpointFile>,
}

impl CheckpointMeta {
    /// Bytes of the files that are new in this checkpoint.
    pub fn new_bytes(&self) -> u64 {
        self.files
            .iter()
            .filter(|f| f.origin == Origin::New)
            .map(|f| f.size)
            .sum()
    }

    /// Bytes of all files of the checkpoint.
    pub fn total_bytes(&self) -> u64 {
        self.files.iter().map(|f| f.size).sum()
    }

    /// Encodes the file; returns the bytes and the checksum.
    pub(crate) fn encode(&self) -> (Vec<u8>, u32) {
        let mut body = Vec::new();
        varint::put_bytes(&mut body, self.id.as_bytes());
        varint::put_u64(&mut body, self.sequence);
        varint::put_u64(&mut body, self.created_unix_ms);
        match &self.base {
            None => body.push(0),
            Some(base) => {
                body.push(1);
                varint::put_bytes(&mut body, base.id.as_bytes());
                varint::put_u64(&mut body, u64::from(base.checksum));
            }
        }
        varint::put_u64(&mut body, self.files.len() as u64);
        for file in &self.files {
            varint::put_bytes(&mut body, file.name.as_bytes());
            varint::put_u64(&mut body, file.size);
            varint::put_u64(&mut body, u64::from(file.crc));
            body.push(match file.origin {
                Origin::New => 0,
                Origin::Base => 1,
            });
        }
        let crc = crc32fast::hash(&body);
        let mut out = Vec::with_capacity(HEADER_LEN + body.len());
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&VERSION.to_le_bytes());
        out.extend_from_slice(&crc.to_le_bytes());
        out.extend_from_slice(&body);
        (out, crc)
    }

    /// Decodes and checks the file; returns the metadata and its checksum.
    pub(crate) fn decode(bytes: &[u8], path: &Path) -> Result<(CheckpointMeta, u32)> {
        let bad =
            |offset: usize, reason: &str| Error::corruption(path, offset as u64, reason.to_owned());
        if bytes.len() < HEADER_LEN || &bytes[..8] != MAGIC {
            return Err(bad(0, "not a Ferry checkpoint (bad magic)"));
        }
        let version = u32::from_le_bytes(bytes[8..12].try_into().unwrap_or_default());
        if version != VERSION {
            return Err(Error::UnsupportedVersion {
                path: path.to_path_buf(),
                version,
            });
        }
        let crc = u32::from_le_bytes(bytes[12..16].try_into().unwrap_or_default());
        let body = &bytes[HEADER_LEN..];
        if crc32fast::hash(body) != crc {
            return Err(bad(12, "checkpoint metadata checksum mismatch"));
        }
        let mut cursor = Cursor::new(body);
        let text = |cursor: &mut Cursor<'_>| -> Option<String> {
            String::from_utf8(cursor.bytes()?.to_vec()).ok()
        };
        let meta = (|| {
            let id = text(&mut cursor)?;
            let sequence = cursor.u64()?;
            let created_unix_ms = cursor.u64()?;
            let base = match cursor.u8()? {
                0 => None,
                1 => Some(BaseRef {
                    id: text(&mut cursor)?,
                    checksum: u32::try_from(cursor.u64()?).ok()?,
                }),
                _ => return None,
            };
            let count = cursor.usize()?;
            let mut files = Vec::with_capacity(count.min(body.len()));
            for _ in 0..count {
                files.push(CheckpointFile {
                    name: text(&mut cursor)?,
                    size: cursor.u64()?,
                    crc: u32::try_from(cursor.u64()?).ok()?,
                    origin: match cursor.u8()? {
                        0 => Origin::New,
                        1 => Origin::Base,
                        _ => return None,
                    },
                });
            }
            Some(CheckpointMeta {
                id,
                sequence,
                created_unix_ms,
                base,
                files,
            })
        })()
        .ok_or_else(|| bad(HEADER_LEN, "checkpoint metadata does not decode"))?;
        // File names come from disk: refuse anything that could escape the
        // checkpoint directory.
        for file in &meta.files {
            if crate::fs::check_file_name(&file.name).is_err() {
                return Err(bad(
                    HEADER_LEN,
                    "checkpoint names a file outside its directory",
                ));
            }
        }
        Ok((meta, crc))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_damage() {
        let meta = CheckpointMeta {
            id: "000002".into(),
            sequence: 99,
            created_unix_ms: 1,
            base: Some(BaseRef {
                id: "000001".into(),
                checksum: 7,
            }),
            files: vec![CheckpointFile {
                name: "000005.sst".into(),
                size: 10,
                crc: 3,
                origin: Origin::Base,
            }],
        };
        let (bytes, crc) = meta.encode();
        let path = Path::new("CHECKPOINT");
        assert_eq!(
            CheckpointMeta::decode(&bytes, path).unwrap(),
            (meta.clone(), crc)
        );
        let mut damaged = bytes.clone();
        damaged[20] ^= 1;
        assert!(CheckpointMeta::decode(&damaged, path)
            .unwrap_err()
            .is_corruption());
        assert!(CheckpointMeta::decode(&bytes[..10], path).is_err());
        let mut escaping = meta;
        escaping.files[0].name = "../x".into();
        let (bytes, _) = escaping.encode();
        assert!(CheckpointMeta::decode(&bytes, path).is_err());
    }
}
