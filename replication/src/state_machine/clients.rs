//! The exactly-once table: per client, the answers of its recent writes,
//! so that a retried write gets its first answer instead of applying again.
//!
//! ## Format (version 2)
//!
//! ```text
//! engine key   = 0x00 "clients/" ‖ BE u64 client id
//! engine value = 2 | postcard(ClientRecord)
//! ```
//!
//! Release 0.1.0 kept version 1 under `0x00 "client/" ‖ BE u64`, as
//! postcard with answers of its own shape. Such a record is read when its
//! client writes again, rewritten as version 2 and the old key removed.

use crate::types::{LegacyResponse, Response};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io;

const PREFIX: &[u8] = b"\x00clients/";
const LEGACY_PREFIX: &[u8] = b"\x00client/";
const VERSION: u8 = 2;

/// A client's recent answers, for exactly-once retries.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct ClientRecord {
    /// Answers below this sequence were seen by the client and forgotten.
    pub(crate) first_incomplete: u64,
    /// Answers of the sequences at or above `first_incomplete`.
    pub(crate) answers: BTreeMap<u64, Response>,
    /// The revision of the client's last write, for expiry.
    pub(crate) last_revision: u64,
}

/// Answers kept per client at most. A client that keeps its sequences
/// within a smaller window of its oldest unanswered write (the SDK keeps
/// 512) never has an answer it may still retry dropped.
pub(crate) const MAX_ANSWERS_PER_CLIENT: usize = 1024;
/// Bytes of key-values the answers a client has not acknowledged may
/// hold at most (each holds up to
/// [`MAX_TXN_ANSWER_BYTES`](crate::types::MAX_TXN_ANSWER_BYTES)): the record
/// is one engine value, rewritten whenever the client writes. Apply refuses
/// a transaction whose answer would pass it (see `Overlay::apply`), and
/// never drops an answer for room: a dropped one could only be refused on
/// retry, which would also refuse lower sequences that never applied.
pub(crate) const MAX_ANSWER_BYTES_PER_CLIENT: usize = 8 << 20;

impl ClientRecord {
    /// Keeps `answer` as the answer to the client's `sequence`; the client
    /// has seen every answer below `first_incomplete`. Past
    /// [`MAX_ANSWERS_PER_CLIENT`] answers (a client outside the SDK's
    /// window) the oldest go, and `first_incomplete` rises past each one
    /// that goes: a retry of it is then refused as forgotten, never applied
    /// again.
    pub(crate) fn keep(&mut self, sequence: u64, first_incomplete: u64, answer: Response) {
        self.forget_below(first_incomplete);
        self.answers.insert(sequence, answer);
        while self.answers.len() > MAX_ANSWERS_PER_CLIENT {
            let (oldest, _) = self.answers.pop_first().expect("more than the cap");
            self.first_incomplete = self.first_incomplete.max(oldest + 1);
        }
    }

    /// Bytes of key-values in the answers kept once the client has seen
    /// those below `first_incomplete`.
    pub(crate) fn kept_bytes(&self, first_incomplete: u64) -> usize {
        let floor = self.first_incomplete.max(first_incomplete);
        self.answers
            .range(floor..)
            .map(|(_, answer)| answer.answer_bytes())
            .sum()
    }

    fn forget_below(&mut self, first_incomplete: u64) {
        self.first_incomplete = self.first_incomplete.max(first_incomplete);
        let floor = self.first_incomplete;
        self.answers.retain(|kept, _| *kept >= floor);
    }
}

#[derive(Deserialize)]
struct LegacyClientRecord {
    first_incomplete: u64,
    answers: BTreeMap<u64, LegacyResponse>,
    last_revision: u64,
}

pub(crate) fn key(client: u64) -> Vec<u8> {
    let mut out = PREFIX.to_vec();
    out.extend_from_slice(&client.to_be_bytes());
    out
}

pub(crate) fn legacy_key(client: u64) -> Vec<u8> {
    let mut out = LEGACY_PREFIX.to_vec();
    out.extend_from_slice(&client.to_be_bytes());
    out
}

/// Both prefixes records live under, for sweeps.
pub(crate) const PREFIXES: [&[u8]; 2] = [PREFIX, LEGACY_PREFIX];

/// The client id of a record's key (either version).
pub(crate) fn client_of_key(key: &[u8]) -> Option<u64> {
    let id = key
        .strip_prefix(PREFIX)
        .or_else(|| key.strip_prefix(LEGACY_PREFIX))?;
    Some(u64::from_be_bytes(id.try_into().ok()?))
}

fn bad(what: &str, error: impl std::fmt::Display) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("{what}: {error}"))
}

pub(crate) fn encode(record: &ClientRecord) -> io::Result<Vec<u8>> {
    let mut out = vec![VERSION];
    postcard::to_io(record, &mut out).map_err(|e| bad("encoding a client record", e))?;
    Ok(out)
}

pub(crate) fn decode(bytes: &[u8]) -> io::Result<ClientRecord> {
    match bytes.split_first() {
        Some((&VERSION, body)) => postcard::from_bytes(body).map_err(|e| bad("client record", e)),
        _ => Err(bad("client record", "unknown version")),
    }
}

pub(crate) fn decode_legacy(bytes: &[u8]) -> io::Result<ClientRecord> {
    let old: LegacyClientRecord =
        postcard::from_bytes(bytes).map_err(|e| bad("release 0.1.0 client record", e))?;
    Ok(ClientRecord {
        first_incomplete: old.first_incomplete,
        answers: old
            .answers
            .into_iter()
            .map(|(sequence, answer)| (sequence, Response::from(answer)))
            .collect(),
        last_revision: old.last_revision,
    })
}
