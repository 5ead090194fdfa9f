//! The revision history: every change of a user key, kept in the engine
//! beside the latest values, written in the same batch as the change.
//!
//! Two indexes over the same changes:
//! - the **change log**, by revision: what a watch from a revision and a
//!   history export read, in order, sequentially;
//! - the **versions** of each key, by key then revision: what a read at a
//!   past revision looks up. A version gets its entry when it is
//!   superseded (the latest one is the latest value itself), and a delete
//!   gets one at once. An entry points at the change log, except for
//!   versions from below the compacted revision, which hold their record.
//!
//! ## Format (layout version 2)
//!
//! ```text
//! change log: 0x02 ‖ BE u64 revision ‖ BE u32 index      (index: the change's place in its
//!                                                         revision's command, from 0)
//!   value = op u8 (1 put, 2 delete) | time_ms u64 LE | prev_revision u64 LE
//!           | key length u32 LE | key
//!           | put only: create_revision u64 LE | version u64 LE | lease u64 LE | value bytes
//! versions:   0x03 ‖ escape(user key) ‖ BE u64 revision ‖ BE u32 index
//!   value = 1                 the change log entry at (revision, index) holds the version
//!         | 2 | record        the version itself (a put; see `keys` for records)
//! escape(key) = the key with every 0x00 byte as 0x00 0xFF, then 0x00 0x01, so that
//!               versions sort by key, then revision, and a key's versions are contiguous
//! "purge" (system key) = postcard(PurgeCursor)
//! ```
//!
//! `prev_revision` is the key's previous mod revision (0: it did not
//! exist). A delete of an absent key is no change and leaves no entry.
//!
//! **Reads at revision R (≥ C, the compacted revision below).** A key's
//! value at R is its latest value if that was written at or before R;
//! else its newest version entry at or before R (a delete: absent); none:
//! it did not exist at R. Every superseded version has an entry: when a
//! key changes, apply writes one for the version it replaces, pointing at
//! the change log if that version is at or above C, else inline (its
//! change log entry is purged, or, in a state from release 0.1.0, was
//! never written).
//!
//! **Compaction.** The system key "compacted" (C) is the first revision
//! whose history is served; a [`Command::Compact`](crate::types::Command)
//! raises it, and reads and watches below it fail at once. The entries below
//! C are then removed by [`purge_step`]s, replicated commands each doing a
//! bounded amount of work, so every replica removes the same entries at the
//! same log index. For each key, the newest version entry below C is kept
//! (as an inline record) if it is a put superseded at or after C: a read
//! at a revision ≥ C needs it. Every other entry below C goes.
//!
//! **Cost.** A put of a new key writes its value twice (the latest value
//! and the change log) and its key twice; replacing a value also writes a
//! version entry for the old one (the escaped key and 13 bytes); a delete
//! writes a small change and two version entries. Per retained change that
//! is the value plus about 60 bytes and the key two or three times, before
//! the engine's compression; `ferry-bench history` measures it.

use super::keys::{self, word, Record};
use crate::types::KeyValue;
use ferry_engine::Snapshot;
use serde::{Deserialize, Serialize};
use std::io;

const PUT: u8 = 1;
const DELETE: u8 = 2;
const POINTER: u8 = 1;
const INLINE: u8 = 2;
const CHANGE_HEADER: usize = 21;
const CHANGE_PUT_FIELDS: usize = 24;
/// Revision and index after a version key's escaped user key.
const VERSION_SUFFIX: usize = 12;

/// Put or delete.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeKind {
    Put,
    Delete,
}

/// One change of a user key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub revision: u64,
    /// The change's place among its revision's changes.
    pub index: u32,
    pub kind: ChangeKind,
    pub key: Vec<u8>,
    /// Empty for a delete.
    pub value: Vec<u8>,
    /// 0 for a delete.
    pub create_revision: u64,
    /// 0 for a delete.
    pub version: u64,
    pub lease: u64,
    /// The key's mod revision before this change (0: it did not exist).
    pub prev_revision: u64,
    /// When the command was proposed (ms since the Unix epoch; 0: unknown).
    pub time_ms: u64,
}

impl Change {
    /// The key as the change left it (for a delete: key and mod revision).
    pub fn key_value(&self) -> KeyValue {
        KeyValue {
            key: self.key.clone(),
            value: self.value.clone(),
            create_revision: self.create_revision,
            mod_revision: self.revision,
            version: self.version,
            lease: self.lease,
        }
    }

    /// Bytes the change takes in memory and on the wire, roughly.
    pub fn size(&self) -> usize {
        self.key.len() + self.value.len() + 64
    }

    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(
            CHANGE_HEADER + self.key.len() + CHANGE_PUT_FIELDS + self.value.len(),
        );
        self.encode_into(&mut out);
        out
    }

    /// Appends the change's encoding (the format's change log value).
    pub(crate) fn encode_into(&self, out: &mut Vec<u8>) {
        out.push(match self.kind {
            ChangeKind::Put => PUT,
            ChangeKind::Delete => DELETE,
        });
        out.extend_from_slice(&self.time_ms.to_le_bytes());
        out.extend_from_slice(&self.prev_revision.to_le_bytes());
        let key_len = u32::try_from(self.key.len()).expect("keys are bounded far below 4 GiB");
        out.extend_from_slice(&key_len.to_le_bytes());
        out.extend_from_slice(&self.key);
        if self.kind == ChangeKind::Put {
            out.extend_from_slice(&self.create_revision.to_le_bytes());
            out.extend_from_slice(&self.version.to_le_bytes());
            out.extend_from_slice(&self.lease.to_le_bytes());
            out.extend_from_slice(&self.value);
        }
    }

    /// The key of an encoded change, without decoding the rest.
    fn peek_key(bytes: &[u8]) -> Option<&[u8]> {
        let key_len = u32::from_le_bytes(bytes.get(17..21)?.try_into().ok()?) as usize;
        bytes.get(CHANGE_HEADER..CHANGE_HEADER.checked_add(key_len)?)
    }

    pub(crate) fn decode(revision: u64, index: u32, bytes: &[u8]) -> Option<Change> {
        let key = Self::peek_key(bytes)?.to_vec();
        let (time_ms, prev_revision) = (word(bytes, 1), word(bytes, 9));
        let rest = &bytes[CHANGE_HEADER + key.len()..];
        match bytes[0] {
            PUT if rest.len() >= CHANGE_PUT_FIELDS => Some(Change {
                revision,
                index,
                kind: ChangeKind::Put,
                key,
                value: rest[CHANGE_PUT_FIELDS..].to_vec(),
                create_revision: word(rest, 0),
                version: word(rest, 8),
                lease: word(rest, 16),
                prev_revision,
                time_ms,
            }),
            DELETE if rest.is_empty() => Some(Change {
                revision,
                index,
                kind: ChangeKind::Delete,
                key,
                value: Vec::new(),
                create_revision: 0,
                version: 0,
                lease: 0,
                prev_revision,
                time_ms,
            }),
            _ => None,
        }
    }

    /// The record a put leaves (`None` for a delete).
    fn record(&self) -> Option<Record> {
        (self.kind == ChangeKind::Put).then(|| Record {
            create_revision: self.create_revision,
            mod_revision: self.revision,
            version: self.version,
            lease: self.lease,
            mod_index: self.index,
            value: self.value.clone(),
        })
    }
}

pub(crate) fn change_key(revision: u64, index: u32) -> Vec<u8> {
    let mut out = Vec::with_capacity(13);
    out.push(keys::CHANGE_PREFIX);
    out.extend_from_slice(&revision.to_be_bytes());
    out.extend_from_slice(&index.to_be_bytes());
    out
}

fn parse_change_key(key: &[u8]) -> Option<(u64, u32)> {
    if key.len() != 13 || key[0] != keys::CHANGE_PREFIX {
        return None;
    }
    let revision = u64::from_be_bytes(key[1..9].try_into().ok()?);
    let index = u32::from_be_bytes(key[9..13].try_into().ok()?);
    Some((revision, index))
}

fn escape_into(key: &[u8], out: &mut Vec<u8>) {
    for &byte in key {
        out.push(byte);
        if byte == 0 {
            out.push(0xFF);
        }
    }
    out.extend_from_slice(&[0x00, 0x01]);
}

fn unescape(escaped: &[u8]) -> Option<Vec<u8>> {
    let body = escaped.strip_suffix(&[0x00, 0x01])?;
    let mut out = Vec::with_capacity(body.len());
    let mut bytes = body.iter();
    while let Some(&byte) = bytes.next() {
        out.push(byte);
        if byte == 0 && bytes.next() != Some(&0xFF) {
            return None;
        }
    }
    Some(out)
}

/// The start of `key`'s versions (`0x03 ‖ escape(key)`).
fn versions_of(key: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(key.len() + 3 + VERSION_SUFFIX);
    out.push(keys::VERSION_PREFIX);
    escape_into(key, &mut out);
    out
}

pub(crate) fn version_key(key: &[u8], revision: u64, index: u32) -> Vec<u8> {
    let mut out = versions_of(key);
    out.extend_from_slice(&revision.to_be_bytes());
    out.extend_from_slice(&index.to_be_bytes());
    out
}

/// A version key's escaped-key part (with its `0x03`), revision and index.
fn parse_version_key(key: &[u8]) -> Option<(&[u8], u64, u32)> {
    let split = key.len().checked_sub(VERSION_SUFFIX)?;
    let (group, suffix) = key.split_at(split);
    if group.first() != Some(&keys::VERSION_PREFIX) {
        return None;
    }
    let revision = u64::from_be_bytes(suffix[..8].try_into().ok()?);
    let index = u32::from_be_bytes(suffix[8..].try_into().ok()?);
    Some((group, revision, index))
}

/// A version entry's value: where the version is.
pub(crate) enum Version {
    /// In the change log at the same revision and index.
    Pointer,
    /// Kept inline (below the compacted revision).
    Inline(Record),
}

pub(crate) fn pointer() -> Vec<u8> {
    vec![POINTER]
}

pub(crate) fn inline(record: &Record) -> Vec<u8> {
    let mut out = vec![INLINE];
    record.encode_into(&mut out);
    out
}

fn decode_version(bytes: &[u8]) -> Option<Version> {
    match bytes.split_first()? {
        (&POINTER, []) => Some(Version::Pointer),
        (&INLINE, record) => Record::decode(record).map(Version::Inline),
        _ => None,
    }
}

fn corrupt(what: &str, key: &[u8]) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("history: undecodable {what} at engine key {key:?}"),
    )
}

fn engine(error: ferry_engine::Error) -> io::Error {
    io::Error::other(error)
}

/// A read or watch below the compacted revision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("revision {requested} has been compacted; the oldest retained revision is {compacted}")]
pub struct Compacted {
    pub requested: u64,
    pub compacted: u64,
}

/// The compacted revision of a view (0: nothing compacted).
pub(crate) fn compacted(view: &Snapshot) -> io::Result<u64> {
    match view.get(keys::COMPACTED).map_err(engine)? {
        None => Ok(0),
        Some(bytes) if bytes.len() == 8 => Ok(word(&bytes, 0)),
        Some(_) => Err(corrupt("compacted revision", keys::COMPACTED)),
    }
}

/// The record a version entry names, reading the change log for pointers.
fn resolve(
    view: &Snapshot,
    key: &[u8],
    revision: u64,
    index: u32,
    value: &[u8],
) -> io::Result<Option<Record>> {
    match decode_version(value).ok_or_else(|| corrupt("version", key))? {
        Version::Inline(record) => Ok(Some(record)),
        Version::Pointer => {
            let at = change_key(revision, index);
            let bytes = view
                .get(&at)
                .map_err(engine)?
                .ok_or_else(|| corrupt("missing change for version", key))?;
            let change =
                Change::decode(revision, index, &bytes).ok_or_else(|| corrupt("change", &at))?;
            Ok(change.record())
        }
    }
}

/// `key` as it was just before the change at `(revision, index)`: made by
/// the newest change ordered before that position. Both reads at a
/// revision and a change's previous value are this one lookup.
fn before_change(
    view: &Snapshot,
    key: &[u8],
    revision: u64,
    index: u32,
) -> io::Result<Option<KeyValue>> {
    let latest = match view.get(keys::user_key(key)).map_err(engine)? {
        None => None,
        Some(bytes) => {
            Some(Record::decode(&bytes).ok_or_else(|| keys::undecodable("record", key))?)
        }
    };
    if let Some(latest) = &latest {
        if (latest.mod_revision, latest.mod_index) < (revision, index) {
            return Ok(Some(latest.clone().into_key_value(key.to_vec())));
        }
    }
    // The newest version entry before the position.
    let group = versions_of(key);
    let mut below = group.clone();
    below.extend_from_slice(&revision.to_be_bytes());
    below.extend_from_slice(&index.to_be_bytes());
    let newest = view.range(group..below).next_back();
    Ok(match newest.transpose().map_err(engine)? {
        None => None,
        Some((version, value)) => {
            let (_, at, index) =
                parse_version_key(&version).ok_or_else(|| corrupt("version key", &version))?;
            resolve(view, key, at, index, &value)?.map(|record| record.into_key_value(key.to_vec()))
        }
    })
}

/// `key` as of `revision` (which the caller checked is not compacted).
pub(crate) fn get_at(view: &Snapshot, key: &[u8], revision: u64) -> io::Result<Option<KeyValue>> {
    // At `revision`: after every change of it, before any of the next.
    before_change(view, key, revision.saturating_add(1), 0)
}

/// The keys of `[start, end)` as of `revision`, in order, to `visit`
/// until it returns false (the caller checked the revision is not
/// compacted).
pub(crate) fn range_at(
    view: &Snapshot,
    start: &[u8],
    end: Option<&[u8]>,
    revision: u64,
    mut visit: impl FnMut(KeyValue) -> bool,
) -> io::Result<()> {
    let (from, to) = keys::user_bounds(start, end);
    let mut latest = view.range(from..to).peekable();
    let version_to = match end {
        Some(end) => versions_of(end),
        None => vec![keys::VERSION_PREFIX + 1],
    };
    let mut versions = view.range(versions_of(start)..version_to).peekable();
    loop {
        // The next user key of either index.
        let latest_key = match latest.peek() {
            Some(Ok((key, _))) => Some(key[1..].to_vec()),
            Some(Err(_)) => {
                return Err(engine(
                    latest.next().expect("peeked").expect_err("an error"),
                ))
            }
            None => None,
        };
        let version_key = match versions.peek() {
            Some(Ok((key, _))) => {
                let (group, _, _) =
                    parse_version_key(key).ok_or_else(|| corrupt("version key", key))?;
                Some(unescape(&group[1..]).ok_or_else(|| corrupt("version key", key))?)
            }
            Some(Err(_)) => {
                return Err(engine(
                    versions.next().expect("peeked").expect_err("an error"),
                ))
            }
            None => None,
        };
        let key = match (&latest_key, &version_key) {
            (None, None) => return Ok(()),
            (Some(l), None) => l.clone(),
            (None, Some(v)) => v.clone(),
            (Some(l), Some(v)) => l.min(v).clone(),
        };
        let record = if latest_key.as_ref() == Some(&key) {
            let (_, bytes) = latest.next().expect("peeked").map_err(engine)?;
            Some(Record::decode(&bytes).ok_or_else(|| keys::undecodable("record", &key))?)
        } else {
            None
        };
        // The key's versions: the newest at or before `revision`.
        let mut newest = None;
        if version_key.as_ref() == Some(&key) {
            let group = versions_of(&key);
            while let Some(Ok((entry, _))) = versions.peek() {
                if !entry.starts_with(&group) || entry.len() != group.len() + VERSION_SUFFIX {
                    break;
                }
                let (entry, value) = versions.next().expect("peeked").map_err(engine)?;
                let (_, at, index) =
                    parse_version_key(&entry).ok_or_else(|| corrupt("version key", &entry))?;
                if at <= revision {
                    newest = Some((at, index, value));
                }
            }
        }
        let found = match record {
            Some(record) if record.mod_revision <= revision => Some(record),
            _ => match newest {
                Some((at, index, value)) => resolve(view, &key, at, index, &value)?,
                None => None,
            },
        };
        if let Some(record) = found {
            if !visit(record.into_key_value(key)) {
                return Ok(());
            }
        }
    }
}

/// A place in the change log: the change `index` of `revision`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ChangeAt {
    pub revision: u64,
    pub index: u32,
}

impl ChangeAt {
    /// The first change of `revision`.
    pub fn revision(revision: u64) -> ChangeAt {
        ChangeAt { revision, index: 0 }
    }
}

/// A page of the change log.
pub struct ChangePage {
    /// The matching changes, in revision order.
    pub changes: Vec<Change>,
    /// With `prev_kv`: each change's previous version (see
    /// [`version_before`]), in step with `changes`; else empty.
    pub prevs: Vec<Option<KeyValue>>,
    /// Where the next page starts. Every change before it has been looked
    /// at, so every revision before `next.revision` is complete; a page
    /// that stopped inside a revision has `next.index > 0`.
    pub next: ChangeAt,
    /// Whether the scan stopped at its budget before `until`.
    pub more: bool,
}

impl ChangePage {
    /// Every change up to this revision has been looked at.
    pub fn through(&self) -> u64 {
        self.next.revision - 1
    }
}

/// Change log entries one page looks at, at most, matching or not: a watch
/// on a key rarely written, far behind, would otherwise read the whole
/// history in one call, longer than a progress interval, and begin again
/// after it.
pub(crate) const SCAN_ENTRIES: usize = 65_536;

/// What one page of the change log reads.
pub(crate) struct Scan<'a> {
    /// Where to start; a page that starts inside a revision ends at its
    /// end (or splits it again).
    pub from: ChangeAt,
    /// The last revision to read.
    pub until: u64,
    pub matches: &'a dyn Fn(&[u8]) -> bool,
    /// Bytes of changes ([`Change::size`]) and previous versions a page
    /// holds before it ends at the next revision. A revision is split
    /// across pages only where it alone takes a page past twice this (a
    /// later revision that would is left whole to the next page), so a
    /// page holds at most about twice the budget and a revision of up to
    /// twice the budget is never split.
    pub budget: usize,
    /// Entries looked at before a page ends (at most twice this inside
    /// one revision), as the budget.
    pub look_at: usize,
    /// Read each matching change's previous version, counted in the
    /// budget: a range delete's previous values may be far larger than
    /// its changes.
    pub prev_kv: bool,
}

impl<'a> Scan<'a> {
    /// The changes from `from` through revision `until` whose key
    /// `matches`, about `budget` bytes of them.
    pub(crate) fn new(
        from: ChangeAt,
        until: u64,
        matches: &'a dyn Fn(&[u8]) -> bool,
        budget: usize,
    ) -> Self {
        Scan {
            from,
            until,
            matches,
            budget,
            look_at: SCAN_ENTRIES,
            prev_kv: false,
        }
    }
}

/// One page of the change log: see [`Scan`].
pub(crate) fn scan_changes(view: &Snapshot, scan: &Scan) -> io::Result<ChangePage> {
    let mut page = ChangePage {
        changes: Vec::new(),
        prevs: Vec::new(),
        next: scan.from,
        more: false,
    };
    if scan.until < scan.from.revision {
        page.next = ChangeAt::revision(scan.until.saturating_add(1));
        return Ok(page);
    }
    let (mut bytes, mut looked) = (0usize, 0usize);
    let (split_bytes, split_looked) = (
        scan.budget.saturating_mul(2),
        scan.look_at.saturating_mul(2),
    );
    // The page's first revision, the only one it may split; and the
    // revision being read, with the page's changes when it began.
    let mut first = None;
    let mut current = (scan.from.revision, 0usize);
    let start = change_key(scan.from.revision, scan.from.index);
    let end = change_key(scan.until.saturating_add(1), 0);
    for item in view.range(start..end) {
        let (key, value) = item.map_err(engine)?;
        let (revision, index) =
            parse_change_key(&key).ok_or_else(|| corrupt("change key", &key))?;
        let at = ChangeAt { revision, index };
        let first = *first.get_or_insert(revision);
        // Everything before `at` is looked at: the page may end here.
        if revision != current.0 {
            // A page that began inside a revision ends with it, so that
            // the parts of a split revision hold that revision alone after
            // the first.
            if at > scan.from
                && (bytes >= scan.budget || looked >= scan.look_at || scan.from.index > 0)
            {
                page.more = true;
                page.next = at;
                return Ok(page);
            }
            current = (revision, page.changes.len());
        } else if bytes >= split_bytes || looked >= split_looked {
            page.more = true;
            if revision == first {
                // Alone past twice the budget: split it here.
                page.next = at;
            } else {
                // Not split: the next page starts with it.
                page.changes.truncate(current.1);
                page.prevs.truncate(current.1);
                page.next = ChangeAt::revision(revision);
            }
            return Ok(page);
        }
        looked += 1;
        let user_key = Change::peek_key(&value).ok_or_else(|| corrupt("change", &key))?;
        if !(scan.matches)(user_key) {
            continue;
        }
        let change =
            Change::decode(revision, index, &value).ok_or_else(|| corrupt("change", &key))?;
        bytes += change.size();
        if scan.prev_kv {
            let prev = version_before(view, &change)?;
            bytes += prev.as_ref().map_or(0, |kv| kv.key.len() + kv.value.len());
            page.prevs.push(prev);
        }
        page.changes.push(change);
    }
    page.next = ChangeAt::revision(scan.until.saturating_add(1));
    Ok(page)
}

/// The version of `key` just before `change` (a watch's `prev_kv`): an
/// earlier change of the same revision (a transaction writing the key
/// twice) counts.
pub(crate) fn version_before(view: &Snapshot, change: &Change) -> io::Result<Option<KeyValue>> {
    before_change(view, &change.key, change.revision, change.index)
}

/// The first revision in `[from, until]` whose changes were proposed after
/// `cutoff_ms` (`until` if none was): a binary search over the change log,
/// whose times rise with revisions (up to the skew between successive
/// leaders' clocks).
pub(crate) fn first_revision_after(
    view: &Snapshot,
    from: u64,
    until: u64,
    cutoff_ms: u64,
) -> io::Result<u64> {
    let end = change_key(until.saturating_add(1), 0);
    // The time of the first change at or after `revision` (`None`: none).
    let time_at = |revision: u64| -> io::Result<Option<u64>> {
        match view.range(change_key(revision, 0)..end.clone()).next() {
            None => Ok(None),
            Some(item) => {
                let (key, value) = item.map_err(engine)?;
                if value.len() < CHANGE_HEADER {
                    return Err(corrupt("change", &key));
                }
                Ok(Some(word(&value, 1)))
            }
        }
    };
    let (mut low, mut high) = (from.max(1), until);
    while low < high {
        let middle = low + (high - low) / 2;
        match time_at(middle)? {
            Some(time) if time <= cutoff_ms => low = middle + 1,
            _ => high = middle,
        }
    }
    Ok(low)
}

/// Where removing the history below a compacted revision stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct PurgeCursor {
    /// The compacted revision being purged to.
    pub(crate) below: u64,
    pub(crate) phase: PurgePhase,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum PurgePhase {
    /// Versions of keys after this escaped key (with its `0x03`) remain to
    /// be looked at (`None`: from the first).
    Versions { after: Option<Vec<u8>> },
    /// Change log entries below `below` remain.
    Changes,
    /// Versions of the key `group` (escaped, with its `0x03`) after the
    /// version entry `after` remain, then those of the keys after it. Only
    /// from apply version 2 on, where a step may stop inside a key.
    WithinKey { group: Vec<u8>, after: Vec<u8> },
}

impl PurgeCursor {
    pub(crate) fn start(below: u64) -> PurgeCursor {
        PurgeCursor {
            below,
            phase: PurgePhase::Versions { after: None },
        }
    }
}

/// Entries one purge step looks at, at most (plus the rest of the key it
/// stops in): bounds the step's engine batch and the time it holds up
/// apply.
pub(crate) const PURGE_STEP_ENTRIES: usize = 20_000;
/// Bytes one purge step writes, at most (plus the rest of the key it stops
/// in): a version kept below the compacted revision takes its value
/// inline, so a step over large values writes them.
const PURGE_STEP_BYTES: usize = 16 << 20;

/// One step of purging `view` (the state before the step) below
/// `cursor.below`: writes (engine key, `None` to delete) go to `write`;
/// returns where the next step starts, `None` when done.
///
/// With `within_keys` (apply version 2 on) a step may stop inside a key,
/// so its bounds hold for a key of any number of versions; below it (the
/// rules of apply version 1) a step takes a key's versions whole, in
/// memory. Both remove the same entries in the end.
pub(crate) fn purge_step(
    view: &Snapshot,
    cursor: PurgeCursor,
    limit: usize,
    within_keys: bool,
    write: &mut dyn FnMut(Vec<u8>, Option<Vec<u8>>),
) -> io::Result<Option<PurgeCursor>> {
    let below = cursor.below;
    match cursor.phase {
        PurgePhase::Versions { after } if within_keys => {
            let from = match after {
                Some(group) => past_group(&group),
                None => vec![keys::VERSION_PREFIX],
            };
            purge_versions_within_keys(view, below, from, limit, write)
        }
        PurgePhase::WithinKey { group, after } => {
            debug_assert!(within_keys, "only apply version 2 stops inside a key");
            let mut from = after;
            // The next engine key after `after`.
            from.push(0);
            debug_assert!(from.starts_with(&group));
            purge_versions_within_keys(view, below, from, limit, write)
        }
        PurgePhase::Versions { after } => {
            let from = match &after {
                Some(group) => past_group(group),
                None => vec![keys::VERSION_PREFIX],
            };
            let mut iter = view.range(from..vec![keys::VERSION_PREFIX + 1]).peekable();
            let (mut looked, mut bytes) = (0, 0);
            while let Some(item) = iter.next() {
                let (first, value) = item.map_err(engine)?;
                let (group, _, _) =
                    parse_version_key(&first).ok_or_else(|| corrupt("version key", &first))?;
                let group = group.to_vec();
                // The key's versions, in revision order.
                let mut entries = vec![(first, value)];
                while let Some(Ok((next, _))) = iter.peek() {
                    if !next.starts_with(&group) || next.len() != group.len() + VERSION_SUFFIX {
                        break;
                    }
                    entries.push(iter.next().expect("peeked").map_err(engine)?);
                }
                looked += entries.len();
                let latest = latest_revision(view, &group)?;
                bytes += purge_key(view, &entries, latest, below, write)?;
                if looked >= limit || bytes >= PURGE_STEP_BYTES {
                    return Ok(Some(PurgeCursor {
                        below,
                        phase: PurgePhase::Versions { after: Some(group) },
                    }));
                }
            }
            Ok(Some(PurgeCursor {
                below,
                phase: PurgePhase::Changes,
            }))
        }
        PurgePhase::Changes => {
            let mut removed = 0;
            for item in view.range(change_key(0, 0)..change_key(below, 0)) {
                let (key, _) = item.map_err(engine)?;
                write(key, None);
                removed += 1;
                if removed >= limit {
                    return Ok(Some(PurgeCursor {
                        below,
                        phase: PurgePhase::Changes,
                    }));
                }
            }
            Ok(None)
        }
    }
}

/// Entries of a key at or above the purge's bound that a step steps
/// over before it seeks past the rest of the key instead. Only how the
/// step reads: neither what it writes nor where it stops depends on it.
const STEP_OVER: usize = 16;

/// The first engine key after every version entry of `group`.
fn past_group(group: &[u8]) -> Vec<u8> {
    let mut from = group.to_vec();
    from.extend_from_slice(&[0xFF; VERSION_SUFFIX + 1]);
    from
}

/// The versions phase of [`purge_step`] from `from` on, one entry at a
/// time (apply version 2 on): an entry below `below` goes unless it is its
/// key's newest one there and the key changed at or after `below` (then
/// it is kept, inline), as [`purge_key`] decides for a key whole; past a
/// key's entries below `below`, the rest of the key is skipped unread.
fn purge_versions_within_keys(
    view: &Snapshot,
    below: u64,
    from: Vec<u8>,
    limit: usize,
    write: &mut dyn FnMut(Vec<u8>, Option<Vec<u8>>),
) -> io::Result<Option<PurgeCursor>> {
    let end = vec![keys::VERSION_PREFIX + 1];
    let mut iter = view.range(from..end.clone()).peekable();
    let (mut looked, mut bytes) = (0, 0);
    while let Some(item) = iter.next() {
        let (key, value) = item.map_err(engine)?;
        let (group, revision, index) =
            parse_version_key(&key).ok_or_else(|| corrupt("version key", &key))?;
        let group = group.to_vec();
        looked += 1;
        let mut key_done = revision >= below;
        if !key_done {
            if matches!(iter.peek(), Some(Err(_))) {
                iter.next().transpose().map_err(engine)?;
            }
            // The key's next entry, if it has one.
            let next = match iter.peek() {
                Some(Ok((next, _))) => parse_version_key(next)
                    .filter(|(next_group, _, _)| *next_group == group.as_slice())
                    .map(|(_, revision, _)| revision),
                _ => None,
            };
            if next.is_some_and(|next| next < below) {
                bytes += key.len();
                write(key.clone(), None);
            } else {
                // The key's newest entry below `below`.
                key_done = true;
                let changed_since =
                    next.is_some() || latest_revision(view, &group)?.is_some_and(|m| m >= below);
                let record = if changed_since {
                    resolve(view, &key, revision, index, &value)?
                } else {
                    None
                };
                match record {
                    Some(record) => {
                        if matches!(decode_version(&value), Some(Version::Pointer)) {
                            // Its change log entry goes in the next phase.
                            let inline = inline(&record);
                            bytes += key.len() + inline.len();
                            write(key.clone(), Some(inline));
                        }
                    }
                    None => {
                        bytes += key.len();
                        write(key.clone(), None);
                    }
                }
            }
        }
        if key_done {
            // Nothing of this key is left below `below`: past the rest of
            // it, stepping over a few entries (most keys have none left)
            // and seeking past many (a new range costs a seek per table).
            let mut stepped = 0;
            while let Some(Ok((next, _))) = iter.peek() {
                let same = parse_version_key(next).is_some_and(|(g, _, _)| g == group.as_slice());
                if !same {
                    break;
                }
                if stepped == STEP_OVER {
                    iter = view.range(past_group(&group)..end.clone()).peekable();
                    break;
                }
                // Not counted in `looked`: where a step stops is replicated
                // state, and must not depend on this shortcut.
                iter.next();
                stepped += 1;
            }
        }
        if looked >= limit || bytes >= PURGE_STEP_BYTES {
            let phase = if key_done {
                PurgePhase::Versions { after: Some(group) }
            } else {
                PurgePhase::WithinKey { group, after: key }
            };
            return Ok(Some(PurgeCursor { below, phase }));
        }
    }
    Ok(Some(PurgeCursor {
        below,
        phase: PurgePhase::Changes,
    }))
}

/// The mod revision of the latest value of the key whose versions are
/// `group`, if it has one.
fn latest_revision(view: &Snapshot, group: &[u8]) -> io::Result<Option<u64>> {
    let user_key = unescape(&group[1..]).ok_or_else(|| corrupt("version key", group))?;
    Ok(match view.get(keys::user_key(&user_key)).map_err(engine)? {
        None => None,
        Some(bytes) => Some(
            Record::decode(&bytes)
                .ok_or_else(|| keys::undecodable("record", &user_key))?
                .mod_revision,
        ),
    })
}

/// Purges one key's version entries below `below` (see the module docs);
/// `latest` is the mod revision of its latest value, if it has one (the
/// version that superseded its last entry, when no later entry did).
/// Returns the bytes of keys and values it wrote.
fn purge_key(
    view: &Snapshot,
    entries: &[(Vec<u8>, Vec<u8>)],
    latest: Option<u64>,
    below: u64,
    write: &mut dyn FnMut(Vec<u8>, Option<Vec<u8>>),
) -> io::Result<usize> {
    let mut bytes = 0;
    let mut write = |key: Vec<u8>, value: Option<Vec<u8>>| {
        bytes += key.len() + value.as_ref().map_or(0, Vec::len);
        write(key, value);
    };
    let parsed: Vec<(u64, u32)> = entries
        .iter()
        .map(|(key, _)| {
            parse_version_key(key)
                .map(|(_, r, i)| (r, i))
                .ok_or_else(|| corrupt("version key", key))
        })
        .collect::<io::Result<_>>()?;
    let old = parsed
        .iter()
        .take_while(|(revision, _)| *revision < below)
        .count();
    if old == 0 {
        return Ok(0);
    }
    // Superseded at or after `below`: by a later entry, or by the latest
    // value.
    let changed_since = old < entries.len() || latest.is_some_and(|m| m >= below);
    let mut keep = None;
    if changed_since {
        let (key, value) = &entries[old - 1];
        let (revision, index) = parsed[old - 1];
        if let Some(record) = resolve(view, key, revision, index, value)? {
            keep = Some(old - 1);
            if matches!(decode_version(value), Some(Version::Pointer)) {
                // Its change log entry goes in the next phase.
                write(key.clone(), Some(inline(&record)));
            }
        }
    }
    for (at, (key, _)) in entries.iter().enumerate().take(old) {
        if Some(at) != keep {
            write(key.clone(), None);
        }
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaped_keys_keep_their_order_and_their_versions_together() {
        let keys: Vec<&[u8]> = vec![
            b"",
            b"\x00",
            b"\x00\x00",
            b"\x00\x01",
            b"a",
            b"a\x00",
            b"a\x00b",
            b"a\x01",
            b"ab",
            b"\xff",
        ];
        let mut encoded: Vec<Vec<u8>> = Vec::new();
        for key in &keys {
            for revision in [1u64, 256, 1 << 40] {
                encoded.push(version_key(key, revision, 0));
            }
        }
        let mut sorted = encoded.clone();
        sorted.sort();
        assert_eq!(sorted, encoded, "by key, then revision");
        for key in &keys {
            let encoded = version_key(key, 9, 3);
            let (group, revision, index) = parse_version_key(&encoded).unwrap();
            assert_eq!((revision, index), (9, 3));
            assert_eq!(unescape(&group[1..]).unwrap(), key.to_vec());
        }
        assert_eq!(unescape(b"\x00\x02\x00\x01"), None);
    }

    #[test]
    fn changes_round_trip_and_damage_is_refused() {
        let put = Change {
            revision: 10,
            index: 2,
            kind: ChangeKind::Put,
            key: b"k\x00".to_vec(),
            value: b"value".to_vec(),
            create_revision: 4,
            version: 3,
            lease: 5,
            prev_revision: 8,
            time_ms: 1234,
        };
        let delete = Change {
            kind: ChangeKind::Delete,
            value: Vec::new(),
            create_revision: 0,
            version: 0,
            lease: 0,
            ..put.clone()
        };
        let fixed = CHANGE_HEADER + put.key.len();
        for (change, whole) in [(put.clone(), fixed + CHANGE_PUT_FIELDS), (delete, fixed)] {
            let bytes = change.encode();
            assert_eq!(Change::decode(10, 2, &bytes), Some(change.clone()));
            // Shorter than its fixed fields: refused (a put's value has no
            // length of its own; the engine's framing guards it).
            for cut in 0..whole {
                assert_eq!(Change::decode(10, 2, &bytes[..cut]), None, "cut {cut}");
            }
        }
        let mut unknown = put.encode();
        unknown[0] = 9;
        assert_eq!(Change::decode(10, 2, &unknown), None);
    }
}
