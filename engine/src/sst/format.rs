//! The byte layout of a table file around its blocks.
//!
//! ## Format (version 1)
//!
//! ```text
//! table   = data-block* filter-block properties-block index-block footer
//! block   = payload | compression: u8 (0 none, 1 lz4) | crc: u32 LE        (5-byte trailer)
//! crc     = CRC32 over payload ‖ compression byte
//! lz4 payload = uncompressed length: u32 LE ‖ lz4 block (lz4_flex "size prepended")
//! footer  = filter handle | properties handle | index handle | version: u32 LE
//!           | crc: u32 LE (over the 52 bytes before it) | magic: u64 LE      (64 bytes)
//! handle  = offset: u64 LE | size: u64 LE      (size excludes the trailer)
//! ```
//!
//! The index block maps the last internal key of every data block to the
//! block's handle (encoded as two varints). The filter block holds a bloom
//! filter over user keys ([`super::bloom`]); the properties block holds
//! [`TableProperties`].

use crate::varint::{self, Cursor};
use crate::{Error, Result};
use std::path::Path;

pub(crate) const BLOCK_TRAILER_LEN: usize = 5;
pub(crate) const FOOTER_LEN: usize = 64;
pub(crate) const TABLE_MAGIC: u64 = u64::from_le_bytes(*b"FERRYSST");
pub(crate) const TABLE_FORMAT_VERSION: u32 = 1;
/// A compressed block declaring more than this is damage: the writer
/// compresses no block larger (see [`encode_block`]), so a reader never
/// allocates more for one on the word of a file. (Options may make larger
/// blocks: one large value, or a large `block_bytes`. They are kept raw.)
const MAX_BLOCK_LEN: usize = 256 << 20;

const COMPRESSION_NONE: u8 = 0;
const COMPRESSION_LZ4: u8 = 1;

/// Where a block lives in the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct BlockHandle {
    pub(crate) offset: u64,
    pub(crate) size: u64,
}

impl BlockHandle {
    pub(crate) fn encode_varint(&self, out: &mut Vec<u8>) {
        varint::put_u64(out, self.offset);
        varint::put_u64(out, self.size);
    }

    pub(crate) fn decode_varint(bytes: &[u8]) -> Option<Self> {
        let mut cursor = Cursor::new(bytes);
        Some(BlockHandle {
            offset: cursor.u64()?,
            size: cursor.u64()?,
        })
    }
}

/// Appends the on-disk form of a block (payload + trailer) to `out`,
/// compressing when it pays.
pub(crate) fn encode_block(raw: &[u8], compress: bool, out: &mut Vec<u8>) {
    let start = out.len();
    let mut kind = COMPRESSION_NONE;
    if compress && raw.len() <= MAX_BLOCK_LEN {
        let compressed = lz4_flex::compress_prepend_size(raw);
        // Keep the raw form unless lz4 saves at least 1/8.
        if compressed.len() < raw.len() - raw.len() / 8 {
            out.extend_from_slice(&compressed);
            kind = COMPRESSION_LZ4;
        }
    }
    if kind == COMPRESSION_NONE {
        out.extend_from_slice(raw);
    }
    out.push(kind);
    let crc = crc32fast::hash(&out[start..]);
    out.extend_from_slice(&crc.to_le_bytes());
}

/// Reads, verifies and decompresses the block at `handle` of `file`.
pub(crate) fn decode_block(file: &[u8], handle: BlockHandle, path: &Path) -> Result<Vec<u8>> {
    let bad = |reason: String| Error::corruption(path, handle.offset, reason);
    let end = handle
        .offset
        .checked_add(handle.size)
        .and_then(|n| n.checked_add(BLOCK_TRAILER_LEN as u64))
        .filter(|&end| end <= file.len() as u64)
        .ok_or_else(|| {
            bad(format!(
                "block of {} bytes runs past the end of the file",
                handle.size
            ))
        })?;
    let bytes = &file[handle.offset as usize..end as usize];
    let (body, crc_bytes) = bytes.split_at(bytes.len() - 4);
    let stored_crc = u32::from_le_bytes(crc_bytes.try_into().unwrap_or_default());
    if crc32fast::hash(body) != stored_crc {
        return Err(bad("block checksum mismatch".into()));
    }
    let (payload, kind) = body.split_at(body.len() - 1);
    match kind[0] {
        COMPRESSION_NONE => Ok(payload.to_vec()),
        COMPRESSION_LZ4 => {
            let declared = payload
                .get(..4)
                .map(|s| u32::from_le_bytes(s.try_into().unwrap_or_default()) as usize)
                .ok_or_else(|| bad("lz4 block too short".into()))?;
            if declared > MAX_BLOCK_LEN {
                return Err(bad(format!("lz4 block declares {declared} bytes")));
            }
            lz4_flex::decompress_size_prepended(payload).map_err(|e| bad(format!("lz4: {e}")))
        }
        other => Err(bad(format!("unknown compression {other}"))),
    }
}

/// The fixed-size tail of a table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Footer {
    pub(crate) filter: BlockHandle,
    pub(crate) properties: BlockHandle,
    pub(crate) index: BlockHandle,
}

impl Footer {
    pub(crate) fn encode(&self) -> [u8; FOOTER_LEN] {
        let mut out = [0u8; FOOTER_LEN];
        let handles = [self.filter, self.properties, self.index];
        for (i, handle) in handles.iter().enumerate() {
            out[i * 16..i * 16 + 8].copy_from_slice(&handle.offset.to_le_bytes());
            out[i * 16 + 8..i * 16 + 16].copy_from_slice(&handle.size.to_le_bytes());
        }
        out[48..52].copy_from_slice(&TABLE_FORMAT_VERSION.to_le_bytes());
        let crc = crc32fast::hash(&out[..52]);
        out[52..56].copy_from_slice(&crc.to_le_bytes());
        out[56..64].copy_from_slice(&TABLE_MAGIC.to_le_bytes());
        out
    }

    pub(crate) fn decode(file: &[u8], path: &Path) -> Result<Self> {
        let len = file.len();
        if len < FOOTER_LEN {
            return Err(Error::corruption(
                path,
                0,
                format!("file of {len} bytes is too short for a table"),
            ));
        }
        let start = len - FOOTER_LEN;
        let footer = &file[start..];
        let word =
            |at: usize| u64::from_le_bytes(footer[at..at + 8].try_into().unwrap_or_default());
        let bad = |reason: &str| Error::corruption(path, start as u64, format!("footer: {reason}"));
        if word(56) != TABLE_MAGIC {
            return Err(bad("bad magic, not a Ferry table"));
        }
        let crc = u32::from_le_bytes(footer[52..56].try_into().unwrap_or_default());
        if crc32fast::hash(&footer[..52]) != crc {
            return Err(bad("checksum mismatch"));
        }
        let version = u32::from_le_bytes(footer[48..52].try_into().unwrap_or_default());
        if version != TABLE_FORMAT_VERSION {
            return Err(Error::UnsupportedVersion {
                path: path.to_path_buf(),
                version,
            });
        }
        let handle = |i: usize| BlockHandle {
            offset: word(i * 16),
            size: word(i * 16 + 8),
        };
        Ok(Footer {
            filter: handle(0),
            properties: handle(1),
            index: handle(2),
        })
    }
}

/// Facts about a table, stored in its properties block.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct TableProperties {
    pub(crate) entries: u64,
    pub(crate) deletes: u64,
    pub(crate) min_sequence: u64,
    pub(crate) max_sequence: u64,
    pub(crate) smallest: Vec<u8>,
    pub(crate) largest: Vec<u8>,
    pub(crate) key_bytes: u64,
    pub(crate) value_bytes: u64,
}

const PROPERTIES_VERSION: u64 = 1;

impl TableProperties {
    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for value in [
            PROPERTIES_VERSION,
            self.entries,
            self.deletes,
            self.min_sequence,
            self.max_sequence,
            self.key_bytes,
            self.value_bytes,
        ] {
            varint::put_u64(&mut out, value);
        }
        varint::put_bytes(&mut out, &self.smallest);
        varint::put_bytes(&mut out, &self.largest);
        out
    }

    pub(crate) fn decode(bytes: &[u8]) -> Option<Self> {
        let mut cursor = Cursor::new(bytes);
        if cursor.u64()? != PROPERTIES_VERSION {
            return None;
        }
        Some(TableProperties {
            entries: cursor.u64()?,
            deletes: cursor.u64()?,
            min_sequence: cursor.u64()?,
            max_sequence: cursor.u64()?,
            key_bytes: cursor.u64()?,
            value_bytes: cursor.u64()?,
            smallest: cursor.bytes()?.to_vec(),
            largest: cursor.bytes()?.to_vec(),
        })
        .filter(|p| {
            p.entries == 0
                || (p.smallest.len() >= crate::key::TRAILER_LEN
                    && p.largest.len() >= crate::key::TRAILER_LEN)
        })
    }
}

#[cfg(test)]
mod block_tests {
    use super::*;

    #[test]
    fn a_block_too_large_to_read_compressed_is_written_raw_and_reads_back() {
        let raw = vec![b'a'; MAX_BLOCK_LEN + 1];
        let mut file = Vec::new();
        encode_block(&raw, true, &mut file);
        let handle = BlockHandle {
            offset: 0,
            size: (file.len() - BLOCK_TRAILER_LEN) as u64,
        };
        assert_eq!(decode_block(&file, handle, Path::new("t")).unwrap(), raw);
    }
}
