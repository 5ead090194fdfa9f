//! How the replicated state is laid out in the engine.
//!
//! ## Format (version 1)
//!
//! ```text
//! engine key   = 0x00 ‖ name          system records, replicated like data:
//!                  "applied"              postcard(Option<LogId>): last applied log id
//!                  "membership"           postcard(StoredMembership)
//!                  "time"                 postcard(u64): the latest `time_ms` of any
//!                                         command applied so far (absent: none had one)
//!                  "client/" ‖ BE u64     postcard(ClientRecord): exactly-once table
//! engine key   = 0x01 ‖ user key      user data
//! user value   = format: u8 (1) | create_revision: u64 LE | mod_revision: u64 LE
//!                | version: u64 LE | value bytes
//! ```
//!
//! The applied marker is written in the same engine batch as the effects of
//! the entries it names, so whatever the engine recovers after a crash, the
//! marker describes exactly that state.

use crate::types::{KeyValue, Response};
use serde::{Deserialize, Serialize};

pub(crate) const APPLIED: &[u8] = b"\x00applied";
pub(crate) const MEMBERSHIP: &[u8] = b"\x00membership";
pub(crate) const TIME: &[u8] = b"\x00time";
const CLIENT_PREFIX: &[u8] = b"\x00client/";
pub(crate) const USER_PREFIX: u8 = 0x01;
const VALUE_FORMAT: u8 = 1;
const VALUE_HEADER: usize = 25;

pub(crate) fn user_key(key: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(key.len() + 1);
    out.push(USER_PREFIX);
    out.extend_from_slice(key);
    out
}

pub(crate) fn client_key(client: u64) -> Vec<u8> {
    let mut out = CLIENT_PREFIX.to_vec();
    out.extend_from_slice(&client.to_be_bytes());
    out
}

/// The client id of a [`client_key`].
pub(crate) fn client_of_key(key: &[u8]) -> Option<u64> {
    let id = key.strip_prefix(CLIENT_PREFIX)?;
    Some(u64::from_be_bytes(id.try_into().ok()?))
}

/// A stored user value with its revisions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Record {
    pub(crate) create_revision: u64,
    pub(crate) mod_revision: u64,
    pub(crate) version: u64,
    pub(crate) value: Vec<u8>,
}

impl Record {
    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(VALUE_HEADER + self.value.len());
        out.push(VALUE_FORMAT);
        out.extend_from_slice(&self.create_revision.to_le_bytes());
        out.extend_from_slice(&self.mod_revision.to_le_bytes());
        out.extend_from_slice(&self.version.to_le_bytes());
        out.extend_from_slice(&self.value);
        out
    }

    /// Decodes a stored value; `None` if it is not a version-1 record (the
    /// caller reports it as corruption with the key).
    pub(crate) fn decode(bytes: &[u8]) -> Option<Record> {
        if bytes.len() < VALUE_HEADER || bytes[0] != VALUE_FORMAT {
            return None;
        }
        let word = |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"));
        Some(Record {
            create_revision: word(1),
            mod_revision: word(9),
            version: word(17),
            value: bytes[VALUE_HEADER..].to_vec(),
        })
    }

    pub(crate) fn into_key_value(self, key: Vec<u8>) -> KeyValue {
        KeyValue {
            key,
            value: self.value,
            create_revision: self.create_revision,
            mod_revision: self.mod_revision,
            version: self.version,
        }
    }
}

/// A client's recent answers, for exactly-once retries.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct ClientRecord {
    /// Answers below this sequence were seen by the client and forgotten.
    pub(crate) first_incomplete: u64,
    /// Answers of the sequences at or above `first_incomplete`.
    pub(crate) answers: std::collections::BTreeMap<u64, Response>,
    /// The revision of the client's last write, for expiry.
    pub(crate) last_revision: u64,
}

pub(crate) const CLIENT_PREFIX_KEY: &[u8] = CLIENT_PREFIX;
