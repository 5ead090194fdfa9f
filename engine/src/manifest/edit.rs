//! Version edits: the records of the manifest.
//!
//! ## Format (payload of one manifest record, version 1 of the log format)
//!
//! ```text
//! edit  = field*
//! field = tag: varint, then
//!   1 log number          : varint   first WAL segment still needed
//!   2 next file number    : varint
//!   3 last sequence       : varint   highest sequence held by tables
//!   4 add table           : level u8 | number | size | file crc32 | min seq | max seq (varints)
//!                           | smallest, largest (varint length ‖ internal key)
//!   5 delete table        : level u8 | number (varint)
//! ```
//!
//! An unknown tag fails decoding: an older release refuses a newer manifest
//! rather than silently misreading it.

use crate::varint::{self, Cursor};

/// Description of a table as the manifest records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TableMeta {
    pub(crate) number: u64,
    pub(crate) size: u64,
    /// CRC32 of the whole table file.
    pub(crate) file_crc: u32,
    pub(crate) min_sequence: u64,
    pub(crate) max_sequence: u64,
    pub(crate) smallest: Vec<u8>,
    pub(crate) largest: Vec<u8>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct VersionEdit {
    pub(crate) log_number: Option<u64>,
    pub(crate) next_file_number: Option<u64>,
    pub(crate) last_sequence: Option<u64>,
    pub(crate) added: Vec<(usize, TableMeta)>,
    pub(crate) deleted: Vec<(usize, u64)>,
}

const TAG_LOG_NUMBER: u64 = 1;
const TAG_NEXT_FILE: u64 = 2;
const TAG_LAST_SEQUENCE: u64 = 3;
const TAG_ADD_TABLE: u64 = 4;
const TAG_DELETE_TABLE: u64 = 5;

impl VersionEdit {
    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        let mut scalar = |tag, value: Option<u64>| {
            if let Some(value) = value {
                varint::put_u64(&mut out, tag);
                varint::put_u64(&mut out, value);
            }
        };
        scalar(TAG_LOG_NUMBER, self.log_number);
        scalar(TAG_NEXT_FILE, self.next_file_number);
        scalar(TAG_LAST_SEQUENCE, self.last_sequence);
        for (level, table) in &self.added {
            varint::put_u64(&mut out, TAG_ADD_TABLE);
            out.push(*level as u8);
            for value in [
                table.number,
                table.size,
                u64::from(table.file_crc),
                table.min_sequence,
                table.max_sequence,
            ] {
                varint::put_u64(&mut out, value);
            }
            varint::put_bytes(&mut out, &table.smallest);
            varint::put_bytes(&mut out, &table.largest);
        }
        for (level, number) in &self.deleted {
            varint::put_u64(&mut out, TAG_DELETE_TABLE);
            out.push(*level as u8);
            varint::put_u64(&mut out, *number);
        }
        out
    }

    /// Decodes an edit; `Err` carries the byte position and the reason.
    pub(crate) fn decode(bytes: &[u8]) -> Result<Self, (usize, String)> {
        let mut cursor = Cursor::new(bytes);
        let mut edit = VersionEdit::default();
        while !cursor.is_empty() {
            let at = cursor.position();
            let short = || (at, "edit field is cut short".to_owned());
            let tag = cursor.u64().ok_or_else(short)?;
            match tag {
                TAG_LOG_NUMBER => edit.log_number = Some(cursor.u64().ok_or_else(short)?),
                TAG_NEXT_FILE => edit.next_file_number = Some(cursor.u64().ok_or_else(short)?),
                TAG_LAST_SEQUENCE => edit.last_sequence = Some(cursor.u64().ok_or_else(short)?),
                TAG_ADD_TABLE => {
                    let table = (|| {
                        let level = cursor.u8()? as usize;
                        let table = TableMeta {
                            number: cursor.u64()?,
                            size: cursor.u64()?,
                            file_crc: u32::try_from(cursor.u64()?).ok()?,
                            min_sequence: cursor.u64()?,
                            max_sequence: cursor.u64()?,
                            smallest: cursor.bytes()?.to_vec(),
                            largest: cursor.bytes()?.to_vec(),
                        };
                        let internal_keys = table.smallest.len() >= crate::key::TRAILER_LEN
                            && table.largest.len() >= crate::key::TRAILER_LEN;
                        internal_keys.then_some((level, table))
                    })()
                    .ok_or_else(short)?;
                    edit.added.push(table);
                }
                TAG_DELETE_TABLE => {
                    let level = cursor.u8().ok_or_else(short)? as usize;
                    let number = cursor.u64().ok_or_else(short)?;
                    edit.deleted.push((level, number));
                }
                other => return Err((at, format!("unknown edit tag {other}"))),
            }
        }
        Ok(edit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_rejects_garbage() {
        let edit = VersionEdit {
            log_number: Some(7),
            next_file_number: Some(9),
            last_sequence: Some(1000),
            added: vec![(
                1,
                TableMeta {
                    number: 8,
                    size: 4096,
                    file_crc: 0xdead_beef,
                    min_sequence: 1,
                    max_sequence: 1000,
                    smallest: b"a\0\0\0\0\0\0\0\x01".to_vec(),
                    largest: b"z\0\0\0\0\0\0\0\x01".to_vec(),
                },
            )],
            deleted: vec![(0, 3)],
        };
        assert_eq!(VersionEdit::decode(&edit.encode()).unwrap(), edit);
        assert!(VersionEdit::decode(&[99, 1]).is_err());
        assert!(VersionEdit::decode(&[4, 1, 2]).is_err());
    }
}
