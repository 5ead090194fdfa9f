//! The `CHECKPOINT` file: what a checkpoint holds and where it came from.
//!
//! ## Format (version 2)
//!
//! ```text
//! file   = the envelope (crate::envelope), magic "FERRYCKP", version 2
//! body   = id | sequence | created unix ms | base flag: u8 [| base id | base crc]
//!          | file count | file*
//! file   = name | size | crc32 of the file's bytes | origin: u8 (0 new, 1 from base)
//! (ids and names: varint length ‖ UTF-8 bytes; numbers: varints)
//! ```
//!
//! Version 1 had the same body in the envelope's earlier layout (no length
//! field); it is still read.
//!
//! The body's CRC is the checkpoint's *checksum*: a delta names its base
//! by id and by this checksum, so a base that was replaced by another
//! checkpoint with the same name is detected. (It is the same for both
//! versions: the body did not change.)

use crate::envelope;
use crate::varint::{self, Cursor};
use crate::{Error, Result};
use std::path::Path;

/// Name of the metadata file inside a checkpoint directory.
pub const META_FILE: &str = "CHECKPOINT";
const KIND: envelope::Kind = envelope::Kind {
    magic: *b"FERRYCKP",
    version: 2,
    unsized_versions: &[1],
    what: "checkpoint metadata",
};

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
        (envelope::seal(&KIND, &body), crc32fast::hash(&body))
    }

    /// Decodes and checks the file; returns the metadata and its checksum.
    pub(crate) fn decode(bytes: &[u8], path: &Path) -> Result<(CheckpointMeta, u32)> {
        let bad =
            |offset: usize, reason: &str| Error::corruption(path, offset as u64, reason.to_owned());
        let opened = envelope::open(&KIND, bytes).map_err(|e| match e {
            envelope::EnvelopeError::Version { found, .. } => Error::UnsupportedVersion {
                path: path.to_path_buf(),
                version: found,
            },
            other => bad(other.offset() as usize, &other.to_string()),
        })?;
        let (body, crc) = (opened.body, opened.crc);
        // Offsets in messages below count from the body's start.
        let body_at = bytes.len() - body.len();
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
        .ok_or_else(|| bad(body_at, "checkpoint metadata does not decode"))?;
        // Names come from disk: refuse anything that could escape the
        // checkpoint directory (its files) or the chain's (its base, a
        // sibling).
        let base = meta.base.as_ref().map(|base| base.id.as_str());
        let names = meta.files.iter().map(|file| file.name.as_str());
        if names
            .chain(base)
            .any(|name| crate::fs::check_file_name(name).is_err())
        {
            return Err(bad(
                body_at,
                "checkpoint names a file outside its directory",
            ));
        }
        // Sizes come from disk too: their sum must not overflow.
        if meta
            .files
            .iter()
            .try_fold(0u64, |total, file| total.checked_add(file.size))
            .is_none()
        {
            return Err(bad(body_at, "checkpoint file sizes overflow"));
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
        // Version 1 (no length field) still reads, with the same checksum.
        let version_1 = [
            b"FERRYCKP".as_slice(),
            &1u32.to_le_bytes(),
            &crc.to_le_bytes(),
            &bytes[crate::envelope::HEADER_LEN..],
        ]
        .concat();
        assert_eq!(
            CheckpointMeta::decode(&version_1, path).unwrap(),
            (meta.clone(), crc)
        );
        let mut escaping = meta.clone();
        escaping.files[0].name = "../x".into();
        let (bytes, _) = escaping.encode();
        assert!(CheckpointMeta::decode(&bytes, path).is_err());
        // The base is a sibling directory, named the same way.
        for id in ["../x", "/", "a/b", ""] {
            let mut escaping = meta.clone();
            escaping.base.as_mut().unwrap().id = id.into();
            let (bytes, _) = escaping.encode();
            assert!(CheckpointMeta::decode(&bytes, path).is_err(), "{id:?}");
        }
        let mut huge = meta;
        huge.files.push(CheckpointFile {
            size: u64::MAX,
            ..huge.files[0].clone()
        });
        huge.files[1].name = "000006.sst".into();
        let (bytes, _) = huge.encode();
        assert!(CheckpointMeta::decode(&bytes, path).is_err());
    }
}
