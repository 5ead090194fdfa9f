//! How the replicated state is laid out in the engine.
//!
//! ## Format (layout version 2)
//!
//! ```text
//! engine key = 0x00 ‖ name        system records, replicated like data:
//!   "applied"                       postcard(Option<LogId>): last applied log id
//!   "membership"                    postcard(StoredMembership)
//!   "time"                          postcard(u64): the latest `time_ms` of any command
//!                                   applied so far (absent: none had one)
//!   "layout"                        u8: this layout's version (2); absent in a state
//!                                   written by release 0.1.0 (layout 1, no history)
//!   "compacted"                     u64 LE: the first revision whose history is kept
//!                                   (absent: 0, all of it)
//!   "purge"                         where removing history below "compacted" stands
//!                                   (see `history`; absent: nothing to remove)
//!   "apply_version"                 u32 LE: the apply version entries follow (see
//!                                   `crate::apply_version`; absent: 1)
//!   "clients/" ‖ BE u64             exactly-once record (see `clients`)
//!   "client/" ‖ BE u64              layout 1's exactly-once record, replaced when next written
//! engine key = 0x01 ‖ user key    the latest value: a record
//! engine key = 0x02 ‖ …           the change log, by revision (see `history`)
//! engine key = 0x03 ‖ …           each key's versions (see `history`)
//!
//! record = 2 | create_revision u64 LE | mod_revision u64 LE | version u64 LE
//!            | lease u64 LE | mod_index u32 LE | value bytes
//!        | 1 | create_revision | mod_revision | version | value bytes   (layout 1)
//! mod_index = the change's place in its revision (its change log entry is
//!             (mod_revision, mod_index)); layout 1's records have 0 and no lease
//! ```
//!
//! The applied marker is written in the same engine batch as the effects of
//! the entries it names, so whatever the engine recovers after a crash, the
//! marker describes exactly that state. A state of layout 1 is upgraded
//! when opened: it gets "layout" and a "compacted" revision just above what
//! it had applied, since it holds no history before that.

use crate::types::KeyValue;

pub(crate) const APPLIED: &[u8] = b"\x00applied";
pub(crate) const MEMBERSHIP: &[u8] = b"\x00membership";
pub(crate) const TIME: &[u8] = b"\x00time";
pub(crate) const LAYOUT: &[u8] = b"\x00layout";
pub(crate) const COMPACTED: &[u8] = b"\x00compacted";
pub(crate) const PURGE: &[u8] = b"\x00purge";
pub(crate) const APPLY_VERSION: &[u8] = b"\x00apply_version";
pub(crate) const USER_PREFIX: u8 = 0x01;
pub(crate) const CHANGE_PREFIX: u8 = 0x02;
pub(crate) const VERSION_PREFIX: u8 = 0x03;
/// The layout this release writes.
pub(crate) const LAYOUT_VERSION: u8 = 2;

const RECORD_V1: u8 = 1;
const RECORD_V2: u8 = 2;
const RECORD_V1_HEADER: usize = 25;
const RECORD_V2_HEADER: usize = 37;

pub(crate) fn user_key(key: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(key.len() + 1);
    out.push(USER_PREFIX);
    out.extend_from_slice(key);
    out
}

/// Engine keys bounding the user keys in `[start, end)` (`end = None`: all
/// after `start`).
pub(crate) fn user_bounds(start: &[u8], end: Option<&[u8]>) -> (Vec<u8>, Vec<u8>) {
    let to = match end {
        Some(end) => user_key(end),
        None => vec![USER_PREFIX + 1],
    };
    (user_key(start), to)
}

/// The `u64 LE` at `at` (the caller checked the length).
pub(crate) fn word(bytes: &[u8], at: usize) -> u64 {
    let mut le = [0; 8];
    le.copy_from_slice(&bytes[at..at + 8]);
    u64::from_le_bytes(le)
}

/// A stored user value with its revisions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Record {
    pub(crate) create_revision: u64,
    pub(crate) mod_revision: u64,
    pub(crate) version: u64,
    pub(crate) lease: u64,
    /// The change's index within `mod_revision` (see the format).
    pub(crate) mod_index: u32,
    pub(crate) value: Vec<u8>,
}

impl Record {
    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(RECORD_V2_HEADER + self.value.len());
        self.encode_into(&mut out);
        out
    }

    pub(crate) fn encode_into(&self, out: &mut Vec<u8>) {
        out.push(RECORD_V2);
        out.extend_from_slice(&self.create_revision.to_le_bytes());
        out.extend_from_slice(&self.mod_revision.to_le_bytes());
        out.extend_from_slice(&self.version.to_le_bytes());
        out.extend_from_slice(&self.lease.to_le_bytes());
        out.extend_from_slice(&self.mod_index.to_le_bytes());
        out.extend_from_slice(&self.value);
    }

    /// The record as the state checksum sees it (see `crate::export`):
    /// create, mod, version and lease revisions (u64 LE), then the value.
    /// Internal fields (its format version, `mod_index`) are left out, so
    /// a state rebuilt from an export checksums as its source.
    pub(crate) fn state_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(32 + self.value.len());
        for n in [
            self.create_revision,
            self.mod_revision,
            self.version,
            self.lease,
        ] {
            out.extend_from_slice(&n.to_le_bytes());
        }
        out.extend_from_slice(&self.value);
        out
    }

    /// Decodes a stored value; `None` if it is not a record of a known
    /// version (the caller reports it as corruption with the key).
    pub(crate) fn decode(bytes: &[u8]) -> Option<Record> {
        match *bytes.first()? {
            RECORD_V2 if bytes.len() >= RECORD_V2_HEADER => Some(Record {
                create_revision: word(bytes, 1),
                mod_revision: word(bytes, 9),
                version: word(bytes, 17),
                lease: word(bytes, 25),
                mod_index: u32::from_le_bytes([bytes[33], bytes[34], bytes[35], bytes[36]]),
                value: bytes[RECORD_V2_HEADER..].to_vec(),
            }),
            RECORD_V1 if bytes.len() >= RECORD_V1_HEADER => Some(Record {
                create_revision: word(bytes, 1),
                mod_revision: word(bytes, 9),
                version: word(bytes, 17),
                lease: 0,
                mod_index: 0,
                value: bytes[RECORD_V1_HEADER..].to_vec(),
            }),
            _ => None,
        }
    }

    /// [`Record::decode`] of a value read into its own buffer, which keeps
    /// the value (no second allocation and copy).
    /// The mod revision and value length of an encoded record, without
    /// copying its value.
    pub(crate) fn peek(bytes: &[u8]) -> Option<(u64, usize)> {
        let header = match *bytes.first()? {
            RECORD_V2 => RECORD_V2_HEADER,
            RECORD_V1 => RECORD_V1_HEADER,
            _ => return None,
        };
        let record = Record::decode(bytes.get(..header)?)?;
        Some((record.mod_revision, bytes.len() - header))
    }

    pub(crate) fn decode_owned(mut bytes: Vec<u8>) -> Option<Record> {
        let header = match *bytes.first()? {
            RECORD_V2 => RECORD_V2_HEADER,
            RECORD_V1 => RECORD_V1_HEADER,
            _ => return None,
        };
        let mut record = Record::decode(bytes.get(..header)?)?;
        bytes.drain(..header);
        record.value = bytes;
        Some(record)
    }

    pub(crate) fn into_key_value(self, key: Vec<u8>) -> KeyValue {
        KeyValue {
            key,
            value: self.value,
            create_revision: self.create_revision,
            mod_revision: self.mod_revision,
            version: self.version,
            lease: self.lease,
        }
    }
}

/// A stored value that is not a record: corruption, named by its key.
pub(crate) fn undecodable(what: &str, key: &[u8]) -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::InvalidData,
        format!("stored {what} of key {key:?} is not decodable"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_of_both_versions_decode_and_damage_does_not() {
        let record = Record {
            create_revision: 3,
            mod_revision: 9,
            version: 4,
            lease: 77,
            mod_index: 3,
            value: b"value".to_vec(),
        };
        assert_eq!(Record::decode(&record.encode()), Some(record.clone()));
        let mut v1 = vec![RECORD_V1];
        for n in [3u64, 9, 4] {
            v1.extend_from_slice(&n.to_le_bytes());
        }
        v1.extend_from_slice(b"value");
        assert_eq!(
            Record::decode(&v1),
            Some(Record {
                lease: 0,
                mod_index: 0,
                ..record.clone()
            })
        );
        let encoded = record.encode();
        for cut in 0..RECORD_V2_HEADER {
            assert_eq!(Record::decode(&encoded[..cut]), None);
            assert_eq!(Record::decode_owned(encoded[..cut].to_vec()), None);
        }
        assert_eq!(Record::decode_owned(encoded.clone()), Some(record.clone()));
        assert_eq!(Record::decode_owned(v1.clone()), Record::decode(&v1));
        assert_eq!(Record::decode(&[9; 40]), None);
    }
}
