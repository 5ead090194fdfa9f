//! Applying committed commands to the engine.
//!
//! A run of entries becomes one engine write batch; reads inside the run see
//! the run's own earlier writes through an overlay, so the result is the same
//! as applying entry by entry. The one exception is a history purge step,
//! which iterates the engine: it starts a run of its own, so the engine
//! holds every entry before it.

use super::clients::{self, ClientRecord};
use super::history::{self, Change, ChangeKind, PurgeCursor, PURGE_STEP_ENTRIES};
use super::keys::{self, Record};
use crate::lease;
use crate::types::{
    Command, Compare, CompareOp, CompareTarget, Entry, LogId, Op, OpResult, RangeOrder, Response,
    SortBy, StoredMembership, Txn, ANSWER_REFUSED, MAX_TXN_ANSWER_BYTES, MAX_TXN_RANGE_KEYS,
    MAX_TXN_WRITE_BYTES, WRITES_REFUSED,
};
use ferry_engine::{Db, SavePoint, SeqNo, WriteBatch};
use openraft::entry::RaftEntry;
use openraft::EntryPayload;
use std::collections::{BTreeSet, HashMap};
use std::io;

/// A client silent for this many revisions is forgotten; its later retries
/// of old writes would be applied again.
pub(crate) const CLIENT_EXPIRY_REVISIONS: u64 = 1_000_000;
const CLIENT_SWEEP_EVERY: u64 = 10_000;
/// A run ends after the entry that takes its writes past this many bytes
/// (see [`Overlay::written`]): a run is held in memory and written as one
/// engine batch, one WAL record. With a transaction's own bound
/// ([`MAX_TXN_WRITE_BYTES`]) a batch stays far below the WAL's record
/// limit.
const MAX_RUN_WRITE_BYTES: usize = 32 << 20;

/// A run reads ahead the values of at most about this many bytes (see
/// [`Overlay::read_ahead`]), in groups of [`READ_AHEAD_GROUP`] keys.
const MAX_READ_AHEAD_BYTES: usize = 16 << 20;
const READ_AHEAD_GROUP: usize = 256;

/// The byte bounds apply works within; tests shrink them.
#[derive(Debug, Clone, Copy)]
struct Bounds {
    /// See [`MAX_TXN_WRITE_BYTES`]: part of what apply does.
    txn_write_bytes: usize,
    /// See [`MAX_RUN_WRITE_BYTES`]: only how entries are grouped.
    run_write_bytes: usize,
    /// See [`MAX_READ_AHEAD_BYTES`]: only how values are read.
    read_ahead_bytes: usize,
    /// See [`crate::auth::MAX_AUTH_STATE_BYTES`]: part of what apply does.
    auth_state_bytes: usize,
    /// The highest apply version this member implements (see
    /// [`crate::apply_version`]): an entry raising the cluster's past it
    /// stops apply.
    implemented_apply_version: u32,
}

impl Bounds {
    const RELEASE: Bounds = Bounds {
        txn_write_bytes: MAX_TXN_WRITE_BYTES,
        run_write_bytes: MAX_RUN_WRITE_BYTES,
        read_ahead_bytes: MAX_READ_AHEAD_BYTES,
        auth_state_bytes: crate::auth::MAX_AUTH_STATE_BYTES,
        implemented_apply_version: crate::apply_version::APPLY_VERSION,
    };
}
/// What a put or a delete counts against [`MAX_TXN_WRITE_BYTES`] before it
/// is applied, beyond its key (counted eight times: its record, change and
/// version entries name it, escaped), its value (twice: the record and the
/// change) and the previous value it may keep inline: more than it writes.
const OP_WRITE_BYTES: usize = 256;

/// What listing a key for a range delete counts against
/// [`MAX_TXN_WRITE_BYTES`] beyond the key's own bytes: deleting a key
/// writes its tombstone, a change and two version entries, each naming
/// the key, so more than its bytes plus this. The listing stops, and the
/// delete is refused, before its keys alone fill memory.
const LISTED_KEY_BYTES: usize = 32;

/// The effects of a run of entries, ready to be written as one batch.
pub(crate) struct AppliedRun {
    pub(crate) batch: WriteBatch,
    /// User-visible changes, in order, for the change feed.
    pub(crate) changes: Vec<Change>,
    /// One answer per entry, in order.
    pub(crate) responses: Vec<Response>,
    pub(crate) applied: Option<LogId>,
    /// The run's last membership entry, if it had one.
    pub(crate) membership: Option<StoredMembership>,
    /// The run changed the auth state.
    pub(crate) auth_changed: bool,
}

fn encode<T: serde::Serialize>(value: &T) -> io::Result<Vec<u8>> {
    postcard::to_stdvec(value).map_err(io::Error::other)
}

/// Whether an entry must start a run of its own: it reads the engine as
/// a whole (a purge step iterates the history, an auth change loads the
/// auth state), so the engine must hold every entry before it.
fn is_barrier(entry: &Entry) -> bool {
    let EntryPayload::Normal(command) = &entry.payload else {
        return false;
    };
    match &**command {
        Command::PurgeHistory
        | Command::Auth(_)
        | Command::Lease(
            crate::lease::LeaseCommand::Revoke { .. }
            | crate::lease::LeaseCommand::RevokeBy { .. }
            | crate::lease::LeaseCommand::Drain { .. },
        ) => true,
        // A range delete lists the range's keys from the engine.
        Command::Txn(txn) => txn
            .success
            .iter()
            .chain(&txn.failure)
            .any(|op| matches!(op, Op::DeleteRange { .. } | Op::Range { .. })),
        _ => false,
    }
}

/// Applies `entries` (consecutive, after what `db` holds) and writes them,
/// as one batch or, around purge steps, several; `written` gets each run
/// with the engine sequence that wrote it. The state machine and backup
/// restore both apply through here, which is what makes a restored state
/// equal to the replicas' state at the same index.
pub(crate) fn apply_and_write(
    db: &Db,
    entries: &[Entry],
    written: impl FnMut(AppliedRun, SeqNo) -> io::Result<()>,
) -> io::Result<()> {
    apply_and_write_within(db, entries, Bounds::RELEASE, written)
}

/// [`apply_and_write`] on a member that implements apply versions up to
/// `implemented` (see [`crate::apply_version::ApplyVersionOptions`]).
pub(crate) fn apply_and_write_implementing(
    db: &Db,
    entries: &[Entry],
    implemented: u32,
    written: impl FnMut(AppliedRun, SeqNo) -> io::Result<()>,
) -> io::Result<()> {
    let bounds = Bounds {
        implemented_apply_version: implemented,
        ..Bounds::RELEASE
    };
    apply_and_write_within(db, entries, bounds, written)
}

fn apply_and_write_within(
    db: &Db,
    entries: &[Entry],
    bounds: Bounds,
    mut written: impl FnMut(AppliedRun, SeqNo) -> io::Result<()>,
) -> io::Result<()> {
    let mut rest = entries;
    while !rest.is_empty() {
        let (mut run, used) = apply_run(db, rest, bounds)?;
        debug_assert!(used > 0 && used <= rest.len());
        let batch = std::mem::replace(&mut run.batch, WriteBatch::new());
        let sequence = db.write(batch).map_err(io::Error::other)?;
        written(run, sequence)?;
        rest = &rest[used..];
    }
    Ok(())
}

/// Applies a prefix of `entries` on top of `db` without writing; returns
/// it and how many entries it took. The batch also carries the applied
/// marker, the new membership, the latest command time and the history's
/// bookkeeping, so that writing it moves the state and its description
/// together.
fn apply_run(db: &Db, entries: &[Entry], bounds: Bounds) -> io::Result<(AppliedRun, usize)> {
    // The run: up to the next barrier after the first entry.
    let end = entries
        .iter()
        .skip(1)
        .position(is_barrier)
        .map_or(entries.len(), |at| at + 1);
    let run = &entries[..end];
    let mut overlay = Overlay::new(db)?;
    overlay.bounds = bounds;
    // The answers the run holds until it is written.
    let mut answers = 0;
    overlay.read_ahead(run)?;
    let time_before = overlay.time;
    let mut membership: Option<StoredMembership> = None;
    let mut applied = None;
    let mut responses = Vec::new();
    for entry in run {
        let log_id = entry.log_id();
        let done = |revision| Response {
            revision,
            succeeded: true,
            ..Response::default()
        };
        let response = match &entry.payload {
            EntryPayload::Normal(command) => {
                overlay.time = overlay.time.max(command.time_ms());
                match &**command {
                    Command::Txn(txn) => overlay.apply(txn, log_id.index)?,
                    Command::Compact { revision, .. } => overlay.compact(*revision, log_id.index),
                    Command::PurgeHistory => {
                        overlay.purge_step()?;
                        done(log_id.index)
                    }
                    Command::Auth(change) => overlay.change_auth(change, log_id.index)?,
                    Command::Lease(change) => overlay.change_lease(change, log_id.index)?,
                    Command::SetApplyVersion {
                        version,
                        membership: asked,
                    } => {
                        // The membership as of this entry: one applied
                        // earlier in this run, or the engine's.
                        let current = match &membership {
                            Some(m) => m.log_id().map_or(0, |l| l.index),
                            None => super::read_point(db)?.1.log_id().map_or(0, |l| l.index),
                        };
                        if current == *asked {
                            overlay.set_apply_version(*version, log_id.index)?
                        } else {
                            Response {
                                revision: log_id.index,
                                succeeded: false,
                                ..Response::default()
                            }
                        }
                    }
                }
            }
            EntryPayload::Blank => done(log_id.index),
            EntryPayload::Membership(m) => {
                membership = Some(StoredMembership::new(Some(log_id), m.clone()));
                done(log_id.index)
            }
        };
        overlay.sweep_clients(log_id.index)?;
        applied = Some(log_id);
        answers += response.answer_bytes();
        responses.push(response);
        if overlay.written() + answers >= bounds.run_write_bytes {
            // The rest starts a run of its own, on top of this one.
            break;
        }
    }
    let used = responses.len();
    overlay.put(keys::APPLIED.to_vec(), encode(&applied)?);
    if let Some(membership) = &membership {
        overlay.put(keys::MEMBERSHIP.to_vec(), encode(membership)?);
    }
    if overlay.time > time_before {
        overlay.put(keys::TIME.to_vec(), encode(&overlay.time)?);
    }
    let auth_changed = overlay.auth_changed;
    let (batch, changes) = overlay.finish()?;
    Ok((
        AppliedRun {
            batch,
            changes,
            responses,
            applied,
            membership,
            auth_changed,
        },
        used,
    ))
}

/// Pending effects of the entries applied so far in this batch.
///
/// Exactly-once records are kept decoded for the whole run and encoded once
/// at its end ([`Overlay::finish`]): a client with many writes in flight
/// has a record of many answers, and re-encoding it per entry made a run
/// quadratic in its writes per client.
pub(crate) struct Overlay<'a> {
    db: &'a Db,
    /// Engine key → new engine value (`None` = deleted).
    writes: HashMap<Vec<u8>, Option<Vec<u8>>>,
    /// Engine key → its value before the run, read ahead (see
    /// [`Overlay::read_ahead`]); `writes` comes first.
    read: HashMap<Vec<u8>, Option<Vec<u8>>>,
    /// Client records read or changed in this run, as they are now.
    clients: HashMap<u64, ClientRecord>,
    /// Clients whose record changed (written at the end of the run).
    dirty: BTreeSet<u64>,
    /// User-visible changes, in order, for the change feed.
    pub(crate) changes: Vec<Change>,
    /// The history's entries (change log, versions): written after
    /// `writes`, straight into the batch. Nothing in a run reads them (a
    /// purge step, which does, starts a run), so they skip the overlay.
    history: WriteBatch,
    /// Scratch space for encoding a change.
    scratch: Vec<u8>,
    /// The latest command time so far.
    time: u64,
    /// The compacted revision, and the purge under way, as of the entries
    /// applied so far; `history_dirty` once either changed in this run.
    compacted: u64,
    purge: Option<PurgeCursor>,
    history_dirty: bool,
    /// The apply version the entries follow, as of the entries applied so
    /// far (see [`crate::apply_version`]); read from the engine only when a
    /// rule asks ([`Overlay::apply_version`]), which few entries do.
    apply_version: Option<u32>,
    /// An auth change was applied in this run.
    auth_changed: bool,
    /// The auth revision if auth is on, as of the entries applied so far;
    /// read when a checked transaction first needs it.
    auth_gate: Option<Option<u64>>,
    /// While a transaction that may be refused part-way is applied: what
    /// each of its writes replaced in `writes` (see [`Overlay::roll_back`]).
    undo: Option<Vec<Undo>>,
    /// Bytes of keys and values put in `writes` in this run, and of the
    /// exactly-once records it will rewrite (see [`Overlay::written`]).
    written: usize,
    bounds: Bounds,
}

/// An engine key and what `Overlay::writes` held for it before a write of
/// the transaction being applied (`None`: nothing).
type Undo = (Vec<u8>, Option<Option<Vec<u8>>>);

/// Where a transaction began, to roll back to.
struct TxnMark {
    history: SavePoint,
    changes: usize,
    written: usize,
}

/// Whether `op`'s result holds key-values (which count against
/// [`MAX_TXN_ANSWER_BYTES`]).
fn answers_with_values(op: &Op) -> bool {
    match op {
        Op::Put { prev_kv, .. } | Op::Delete { prev_kv, .. } | Op::DeleteRange { prev_kv, .. } => {
            *prev_kv
        }
        Op::Get { .. } | Op::Range { .. } => true,
    }
}

/// Why a transaction that would write more than `bound` bytes
/// ([`MAX_TXN_WRITE_BYTES`]) is refused.
fn writes_too_large(bound: usize) -> String {
    format!(
        "{WRITES_REFUSED}: it would write more than {bound} bytes of keys, values and \
         history; delete a large range in smaller ranges"
    )
}

/// Why a transaction whose answer passed [`MAX_TXN_ANSWER_BYTES`] is refused.
fn too_large() -> String {
    format!(
        "{ANSWER_REFUSED}: the transaction's answer would hold more than \
         {MAX_TXN_ANSWER_BYTES} bytes of keys and values; read large values or ranges outside \
         a transaction (a range pages)"
    )
}

/// Takes `kv`'s bytes from what is `left` of a transaction's answer; false
/// once the answer would hold more than [`MAX_TXN_ANSWER_BYTES`].
fn spend(left: &mut usize, kv: &crate::types::KeyValue) -> bool {
    spend_bytes(left, kv.answer_bytes())
}

/// [`spend`] of `bytes`.
fn spend_bytes(left: &mut usize, bytes: usize) -> bool {
    match left.checked_sub(bytes) {
        Some(rest) => {
            *left = rest;
            true
        }
        None => false,
    }
}

impl<'a> Overlay<'a> {
    pub(crate) fn new(db: &'a Db) -> io::Result<Self> {
        let time = match db.get(keys::TIME).map_err(io::Error::other)? {
            Some(bytes) => postcard::from_bytes(&bytes).map_err(io::Error::other)?,
            None => 0,
        };
        let view = db.snapshot();
        let compacted = history::compacted(&view)?;
        let purge = match view.get(keys::PURGE).map_err(io::Error::other)? {
            Some(bytes) => Some(postcard::from_bytes(&bytes).map_err(io::Error::other)?),
            None => None,
        };
        Ok(Overlay {
            db,
            writes: HashMap::new(),
            read: HashMap::new(),
            clients: HashMap::new(),
            dirty: BTreeSet::new(),
            changes: Vec::new(),
            history: WriteBatch::new(),
            scratch: Vec::new(),
            time,
            compacted,
            purge,
            history_dirty: false,
            apply_version: None,
            auth_changed: false,
            auth_gate: None,
            undo: None,
            written: 0,
            bounds: Bounds::RELEASE,
        })
    }

    /// The run's writes as one batch (one operation per key: its final
    /// state), and its changes.
    fn finish(mut self) -> io::Result<(WriteBatch, Vec<Change>)> {
        for client in std::mem::take(&mut self.dirty) {
            let record = &self.clients[&client];
            let bytes = clients::encode(record)?;
            self.writes.insert(clients::key(client), Some(bytes));
            // A record of release 0.1.0, now rewritten under its new key.
            self.writes.insert(clients::legacy_key(client), None);
        }
        if self.history_dirty {
            self.writes.insert(
                keys::COMPACTED.to_vec(),
                Some(self.compacted.to_le_bytes().to_vec()),
            );
            let purge = match &self.purge {
                Some(cursor) => Some(encode(cursor)?),
                None => None,
            };
            self.writes.insert(keys::PURGE.to_vec(), purge);
        }
        let mut batch = WriteBatch::new();
        for (key, value) in &self.writes {
            match value {
                Some(value) => batch.put(key, value),
                None => batch.delete(key),
            };
        }
        // After the overlay's writes: a version a purge step of this run
        // removed may be needed again by a change after it.
        batch.append(&self.history);
        Ok((batch, self.changes))
    }

    /// Reads the latest values of the keys the run's puts, deletes and
    /// exactly-once records will read, all at once: searched for together, the
    /// engine's memtable lookups overlap their waits on memory, which one
    /// after another weigh on a run of random overwrites. Nothing writes
    /// the engine during a run but the run itself, at its end, so these
    /// stay the values before the run.
    ///
    /// Each key is read once, and reading ahead stops once the values read
    /// pass [`MAX_READ_AHEAD_BYTES`]: the rest are read as they are needed.
    fn read_ahead(&mut self, run: &[Entry]) -> io::Result<()> {
        let mut wanted = Vec::new();
        let mut seen = std::collections::HashSet::new();
        let mut clients = BTreeSet::new();
        for entry in run {
            let EntryPayload::Normal(command) = &entry.payload else {
                continue;
            };
            let Command::Txn(txn) = &**command else {
                continue;
            };
            if let Some(request) = txn.request {
                clients.insert(request.client);
            }
            for op in txn.success.iter().chain(&txn.failure) {
                if let Op::Put { key, .. } | Op::Delete { key, .. } = op {
                    if seen.insert(key.as_slice()) {
                        wanted.push(keys::user_key(key));
                    }
                }
            }
        }
        // Exactly-once records: `client_record` reads the current key, and
        // the legacy one when it is absent.
        for client in clients {
            if !self.clients.contains_key(&client) {
                wanted.push(clients::key(client));
                wanted.push(clients::legacy_key(client));
            }
        }
        if wanted.len() < 2 {
            return Ok(());
        }
        let mut bytes = 0;
        for group in wanted.chunks(READ_AHEAD_GROUP) {
            let values = self.db.get_many(group).map_err(io::Error::other)?;
            bytes += values.iter().flatten().map(Vec::len).sum::<usize>();
            self.read.extend(group.iter().cloned().zip(values));
            if bytes > self.bounds.read_ahead_bytes {
                break;
            }
        }
        Ok(())
    }

    pub(crate) fn get(&self, engine_key: &[u8]) -> io::Result<Option<Vec<u8>>> {
        self.with_value(engine_key, |value| value.map(<[u8]>::to_vec))
    }

    /// `f` of the value `engine_key` has as of the entries applied so far:
    /// this run's writes, then what it read ahead, then the engine. Only a
    /// value read from the engine is copied.
    fn with_value<T>(
        &self,
        engine_key: &[u8],
        f: impl FnOnce(Option<&[u8]>) -> T,
    ) -> io::Result<T> {
        if let Some(value) = self.writes.get(engine_key) {
            return Ok(f(value.as_deref()));
        }
        if let Some(value) = self.read.get(engine_key) {
            return Ok(f(value.as_deref()));
        }
        let value = self.db.get(engine_key).map_err(io::Error::other)?;
        Ok(f(value.as_deref()))
    }

    pub(crate) fn put(&mut self, engine_key: Vec<u8>, value: Vec<u8>) {
        self.set(engine_key, Some(value));
    }

    fn delete(&mut self, engine_key: Vec<u8>) {
        self.set(engine_key, None);
    }

    fn set(&mut self, engine_key: Vec<u8>, value: Option<Vec<u8>>) {
        self.written += engine_key.len() + value.as_ref().map_or(0, Vec::len);
        match &mut self.undo {
            Some(undo) => {
                let before = self.writes.insert(engine_key.clone(), value);
                undo.push((engine_key, before));
            }
            None => {
                self.writes.insert(engine_key, value);
            }
        }
    }

    /// Starts keeping what a transaction changes, so that it can be undone.
    fn mark(&mut self) -> TxnMark {
        debug_assert!(self.undo.is_none(), "transactions do not nest");
        self.undo = Some(Vec::new());
        TxnMark {
            history: self.history.savepoint(),
            changes: self.changes.len(),
            written: self.written(),
        }
    }

    /// Bytes the run writes so far: its overlay's keys and values (a key
    /// written twice counts twice), its history entries, and the
    /// exactly-once records it will rewrite. What a run and a transaction
    /// are bounded by.
    fn written(&self) -> usize {
        self.written + self.history.encoded_len()
    }

    /// Undoes everything since `mark`: the overlay's writes, the history's
    /// entries and the feed's changes.
    fn roll_back(&mut self, mark: TxnMark) {
        self.history.rollback_to(mark.history);
        self.changes.truncate(mark.changes);
        // `written` only grows: what was undone still counts for the run,
        // which is conservative.
        for (key, before) in self.undo.take().unwrap_or_default().into_iter().rev() {
            match before {
                Some(value) => self.writes.insert(key, value),
                None => self.writes.remove(&key),
            };
        }
    }

    fn record(&self, key: &[u8]) -> io::Result<Option<Record>> {
        match self.get(&keys::user_key(key))? {
            None => Ok(None),
            Some(bytes) => Record::decode_owned(bytes)
                .map(Some)
                .ok_or_else(|| keys::undecodable("record", key)),
        }
    }

    /// `key`'s latest value `previous` is being replaced: it becomes a
    /// version entry, pointing at its change log entry, or holding it
    /// inline if that is below the compacted revision (purged, or never
    /// written by release 0.1.0).
    fn supersede(&mut self, key: &[u8], previous: &Record) {
        let at = history::version_key(key, previous.mod_revision, previous.mod_index);
        if previous.mod_revision < self.compacted {
            self.history.put(&at, history::inline(previous));
        } else {
            self.history.put(&at, history::pointer());
        }
    }

    /// Records a change in the change log and the feed (a delete also gets
    /// its version entry: there is no latest value to stand for it).
    fn record_change(&mut self, change: Change) {
        self.scratch.clear();
        change.encode_into(&mut self.scratch);
        self.history.put(
            history::change_key(change.revision, change.index),
            &self.scratch,
        );
        if change.kind == ChangeKind::Delete {
            let at = history::version_key(&change.key, change.revision, change.index);
            self.history.put(&at, history::pointer());
        }
        self.changes.push(change);
    }

    /// Applies one transaction at log index `revision`.
    pub(crate) fn apply(&mut self, txn: &Txn, revision: u64) -> io::Result<Response> {
        if let Some(request) = txn.request {
            let record = self.client_record(request.client)?;
            if let Some(answer) = record.answers.get(&request.sequence) {
                return Ok(answer.clone());
            }
            if request.sequence < record.first_incomplete {
                return Ok(Response {
                    revision,
                    succeeded: false,
                    results: Vec::new(),
                    rejected: Some(format!(
                        "request {} of client {} was already answered and forgotten",
                        request.sequence, request.client
                    )),
                });
            }
        }
        if let Some(checked) = txn.auth_revision {
            if self.auth_gate()?.is_some_and(|current| checked < current) {
                // Not remembered as the request's answer: its retry, checked
                // again, is a new attempt.
                return Ok(Response {
                    revision,
                    succeeded: false,
                    results: Vec::new(),
                    rejected: Some(crate::auth::STALE_CHECK.to_owned()),
                });
            }
        }
        let mut succeeded = true;
        for compare in &txn.compares {
            if !self.holds(compare)? {
                succeeded = false;
                break;
            }
        }
        let ops = if succeeded {
            &txn.success
        } else {
            &txn.failure
        };
        // A put naming a lease that does not exist refuses the whole
        // transaction, before any op changed anything.
        for op in ops {
            if let Op::Put { lease, .. } = op {
                if *lease != 0 && self.get(&lease::store::record_key(*lease))?.is_none() {
                    let response = Response {
                        revision,
                        succeeded: false,
                        results: Vec::new(),
                        rejected: Some(crate::lease::LeaseError::NotFound(*lease).to_string()),
                    };
                    self.answered(txn, revision, &response)?;
                    return Ok(response);
                }
            }
        }
        // Puts and deletes that could write more than the bound (large
        // previous values kept inline, past a compaction) refuse the
        // transaction before it changes anything.
        if self.could_write(ops)? > self.bounds.txn_write_bytes {
            let why = writes_too_large(self.bounds.txn_write_bytes);
            return self.refuse(txn, revision, None, why);
        }
        // A transaction whose answer holds values may be refused part-way,
        // when the answer grows past its bound, and one with a range delete
        // when its writes do: only then is what it changes kept for undoing
        // (puts alone never are).
        let mark = ops
            .iter()
            .any(|op| answers_with_values(op) || matches!(op, Op::DeleteRange { .. }))
            .then(|| self.mark());
        let mut left = MAX_TXN_ANSWER_BYTES;
        let mut results = Vec::with_capacity(ops.len());
        let mut index = 0u32;
        let as_kv = |key: &[u8], record: Record| record.into_key_value(key.to_vec());
        for op in ops {
            let result = match op {
                Op::Put {
                    key,
                    value,
                    lease,
                    prev_kv,
                } => {
                    let previous = self.record(key)?;
                    if let Some(previous) = &previous {
                        self.supersede(key, previous);
                    }
                    let before = previous.as_ref().map_or(0, |p| p.lease);
                    if before != *lease {
                        if before != 0 {
                            self.delete(lease::store::index_key(before, key));
                        }
                        if *lease != 0 {
                            self.put(lease::store::index_key(*lease, key), Vec::new());
                        }
                    }
                    let record = Record {
                        create_revision: previous.as_ref().map_or(revision, |p| p.create_revision),
                        mod_revision: revision,
                        version: previous.as_ref().map_or(1, |p| p.version + 1),
                        lease: *lease,
                        mod_index: index,
                        value: value.clone(),
                    };
                    self.put(keys::user_key(key), record.encode());
                    self.record_change(Change {
                        revision,
                        index,
                        kind: ChangeKind::Put,
                        key: key.clone(),
                        value: record.value,
                        create_revision: record.create_revision,
                        version: record.version,
                        lease: record.lease,
                        prev_revision: previous.as_ref().map_or(0, |p| p.mod_revision),
                        time_ms: txn.time_ms,
                    });
                    index += 1;
                    OpResult::Put {
                        prev: previous.filter(|_| *prev_kv).map(|p| as_kv(key, p)),
                    }
                }
                Op::Delete { key, prev_kv } => match self.record(key)? {
                    Some(previous) => {
                        self.delete_key(key, &previous, revision, index, txn.time_ms);
                        index += 1;
                        OpResult::Delete {
                            deleted: 1,
                            prev: prev_kv.then(|| as_kv(key, previous)),
                        }
                    }
                    None => OpResult::Delete {
                        deleted: 0,
                        prev: None,
                    },
                },
                Op::Get { key } => OpResult::Get(self.record(key)?.map(|r| as_kv(key, r))),
                Op::DeleteRange {
                    start,
                    end,
                    prev_kv,
                } => {
                    let mut prev = Vec::new();
                    let mut deleted = 0;
                    let (keys, truncated) = self.keys_in(
                        start,
                        end.as_deref(),
                        usize::MAX,
                        self.bounds.txn_write_bytes,
                    )?;
                    if truncated {
                        let why = writes_too_large(self.bounds.txn_write_bytes);
                        return self.refuse(txn, revision, mark, why);
                    }
                    let began = mark.as_ref().expect("a range delete is marked").written;
                    for key in keys {
                        let Some(previous) = self.record(&key)? else {
                            continue;
                        };
                        self.delete_key(&key, &previous, revision, index, txn.time_ms);
                        index += 1;
                        deleted += 1;
                        if self.written() - began > self.bounds.txn_write_bytes {
                            let why = writes_too_large(self.bounds.txn_write_bytes);
                            return self.refuse(txn, revision, mark, why);
                        }
                        if *prev_kv {
                            let kv = as_kv(&key, previous);
                            // Counted here, to stop before reading on.
                            if !spend(&mut left, &kv) {
                                return self.refuse(txn, revision, mark, too_large());
                            }
                            prev.push(kv);
                        }
                    }
                    OpResult::DeleteRange { deleted, prev }
                }
                Op::Range {
                    start,
                    end,
                    limit,
                    order,
                } => {
                    let (keys, truncated) =
                        self.keys_in(start, end.as_deref(), MAX_TXN_RANGE_KEYS, usize::MAX)?;
                    // Apply version 2 on: sorted otherwise than by key
                    // ascending, the first keys of a range cut short are not
                    // its first in that order (etcd's lock recipe asks for
                    // the first by create revision): refused, not answered
                    // wrong. Below, answered from the keys looked at.
                    if truncated && *order != RangeOrder::KEY && self.apply_version()? >= 2 {
                        let reason = format!(
                            "{ANSWER_REFUSED}: a range in a transaction sorted otherwise than \
                             by key ascending must hold at most {MAX_TXN_RANGE_KEYS} keys; \
                             narrow it"
                        );
                        return self.refuse(txn, revision, mark, reason);
                    }
                    // Every key listed exists (see `keys_in`).
                    let count = keys.len() as u64;
                    let limit = if *limit == 0 { u64::MAX } else { *limit };
                    let more = truncated || count > limit;
                    let take = limit.min(count) as usize;
                    // In key order, only the keys the answer holds are read.
                    // Sorted by revisions or version, every key's record is
                    // read for them and its value dropped until the sort
                    // has chosen the answer's; sorted by value, every value
                    // is kept, and counts against the bound.
                    let read: Vec<Vec<u8>> = match (order.by, order.descending) {
                        (SortBy::Key, false) => keys.into_iter().take(take).collect(),
                        (SortBy::Key, true) => keys.into_iter().rev().take(take).collect(),
                        _ => keys.into_iter().collect(),
                    };
                    let keep_values = matches!(order.by, SortBy::Key | SortBy::Value);
                    let mut kvs = Vec::with_capacity(read.len());
                    for key in read {
                        let Some(record) = self.record(&key)? else {
                            continue;
                        };
                        let mut kv = as_kv(&key, record);
                        if !keep_values {
                            kv.value = Vec::new();
                        }
                        if !spend(&mut left, &kv) {
                            return self.refuse(txn, revision, mark, too_large());
                        }
                        kvs.push(kv);
                    }
                    sort_range(&mut kvs, *order);
                    kvs.truncate(take);
                    if !keep_values {
                        for kv in &mut kvs {
                            let record = self.record(&kv.key)?.expect("read above in this op");
                            kv.value = record.value;
                            if !spend_bytes(&mut left, kv.value.len()) {
                                return self.refuse(txn, revision, mark, too_large());
                            }
                        }
                    }
                    OpResult::Range { kvs, more, count }
                }
            };
            // A range and a range delete spent their bytes as they read.
            if mark.is_some()
                && !matches!(
                    result,
                    OpResult::Range { .. } | OpResult::DeleteRange { .. }
                )
                && !result.key_values().all(|kv| spend(&mut left, kv))
            {
                return self.refuse(txn, revision, mark, too_large());
            }
            results.push(result);
        }
        // The client keeps its answers until it acknowledges them: a
        // client with large answers outstanding gets no more until it has.
        if let (Some(_), Some(request)) = (&mark, txn.request) {
            let kept = self
                .client_record(request.client)?
                .kept_bytes(request.first_incomplete);
            let answer = MAX_TXN_ANSWER_BYTES - left;
            if kept + answer > clients::MAX_ANSWER_BYTES_PER_CLIENT {
                return self.refuse(
                    txn,
                    revision,
                    mark,
                    format!(
                        "{ANSWER_REFUSED}: this client has {kept} bytes of answers it has not \
                         acknowledged, and this one would pass {}; retry once earlier calls \
                         have returned",
                        clients::MAX_ANSWER_BYTES_PER_CLIENT
                    ),
                );
            }
        }
        self.undo = None;
        let response = Response {
            revision,
            succeeded,
            results,
            rejected: None,
        };
        self.answered(txn, revision, &response)?;
        Ok(response)
    }

    /// Refuses `txn` for the size of its answer or writes, with `reason`:
    /// undoes what it changed since `mark` (`None`: nothing yet).
    fn refuse(
        &mut self,
        txn: &Txn,
        revision: u64,
        mark: Option<TxnMark>,
        reason: String,
    ) -> io::Result<Response> {
        debug_assert!(crate::types::is_too_large(&reason));
        if let Some(mark) = mark {
            self.roll_back(mark);
        }
        let response = Response {
            revision,
            succeeded: false,
            results: Vec::new(),
            rejected: Some(reason),
        };
        self.answered(txn, revision, &response)?;
        Ok(response)
    }

    /// The user keys in `[start, end)`: the engine's, merged with this
    /// run's writes; at most `cap` of the engine's, and of their bytes
    /// (each counted with [`LISTED_KEY_BYTES`] more) at most `cap_bytes`;
    /// and whether there were more. Only a transaction that starts its run
    /// calls it (see [`is_barrier`]), so the writes are its own earlier
    /// ops'.
    fn keys_in(
        &self,
        start: &[u8],
        end: Option<&[u8]>,
        cap: usize,
        cap_bytes: usize,
    ) -> io::Result<(BTreeSet<Vec<u8>>, bool)> {
        let (from, mut to) = keys::user_bounds(start, end);
        let mut found = BTreeSet::new();
        let mut truncated = false;
        let mut bytes = 0usize;
        for item in self.db.snapshot().range(from.as_slice()..to.as_slice()) {
            let (key, _) = item.map_err(io::Error::other)?;
            bytes = bytes.saturating_add(key.len() - 1 + LISTED_KEY_BYTES);
            if found.len() == cap || bytes > cap_bytes {
                // The answer covers the keys before this one.
                truncated = true;
                to = key.to_vec();
                break;
            }
            found.insert(key[1..].to_vec());
        }
        for (key, value) in &self.writes {
            if key.as_slice() >= from.as_slice() && key.as_slice() < to.as_slice() {
                match value {
                    Some(_) => found.insert(key[1..].to_vec()),
                    None => found.remove(&key[1..]),
                };
            }
        }
        Ok((found, truncated))
    }

    /// Deletes `key`, whose record is `previous`, as the change `(revision,
    /// index)`, detaching it from its lease.
    fn delete_key(
        &mut self,
        key: &[u8],
        previous: &Record,
        revision: u64,
        index: u32,
        time_ms: u64,
    ) {
        self.supersede(key, previous);
        self.delete(keys::user_key(key));
        if previous.lease != 0 {
            self.delete(lease::store::index_key(previous.lease, key));
        }
        self.record_change(Change {
            revision,
            index,
            kind: ChangeKind::Delete,
            key: key.to_vec(),
            value: Vec::new(),
            create_revision: 0,
            version: 0,
            lease: 0,
            prev_revision: previous.mod_revision,
            time_ms,
        });
    }

    /// Keeps `response` as the answer to `txn`'s request, if it has one.
    fn answered(&mut self, txn: &Txn, revision: u64, response: &Response) -> io::Result<()> {
        if let Some(request) = txn.request {
            let first = !self.dirty.contains(&request.client);
            let record = self.client_record(request.client)?;
            record.keep(request.sequence, request.first_incomplete, response.clone());
            record.last_revision = revision;
            // The run rewrites the whole record at its end.
            let grew = match first {
                true => record.kept_bytes(0),
                false => response.answer_bytes(),
            };
            self.dirty.insert(request.client);
            self.written += grew;
        }
        Ok(())
    }

    /// Applies a lease change at log index `revision`; a refused one
    /// changes nothing and says why.
    fn change_lease(
        &mut self,
        change: &crate::lease::LeaseCommand,
        revision: u64,
    ) -> io::Result<Response> {
        use crate::lease::{LeaseCommand, LeaseError, LeaseRecord};
        let refused = |error: LeaseError| Response {
            revision,
            succeeded: false,
            rejected: Some(error.to_string()),
            ..Response::default()
        };
        let done = Response {
            revision,
            succeeded: true,
            ..Response::default()
        };
        match change {
            LeaseCommand::Grant { id, ttl_ms } => {
                let key = lease::store::record_key(*id);
                // A lease still draining keeps its id: a grant of it would
                // have its keys deleted by the drain.
                if *id == 0
                    || self.get(&key)?.is_some()
                    || self.get(&lease::store::drain_key(*id))?.is_some()
                {
                    return Ok(refused(LeaseError::Exists(*id)));
                }
                let record = LeaseRecord {
                    ttl_ms: *ttl_ms,
                    remaining_ms: None,
                };
                self.put(key, lease::store::encode(&record));
                Ok(done)
            }
            LeaseCommand::Revoke { id, time_ms } | LeaseCommand::RevokeBy { id, time_ms, .. } => {
                // A barrier: the engine holds every entry before this one.
                debug_assert!(self.writes.is_empty(), "a revoke starts its run");
                let view = self.db.snapshot();
                if lease::store::get(&view, *id)?.is_none() {
                    return Ok(refused(LeaseError::NotFound(*id)));
                }
                if let LeaseCommand::RevokeBy { user, .. } = change {
                    // By the keys attached and the auth state now, which
                    // every member applies alike (the barrier above makes
                    // both whole). Root may; anyone else only a lease of at
                    // most `MAX_CHECKED_KEYS` keys, each theirs to write.
                    let auth = crate::auth::store::load(&view)?;
                    let allowed = |user: &str| -> io::Result<bool> {
                        if !auth.users.contains_key(user) {
                            return Ok(false);
                        }
                        if auth.is_root(user) {
                            return Ok(true);
                        }
                        let (keys, more) =
                            lease::store::attached(&view, *id, lease::MAX_CHECKED_KEYS)?;
                        Ok(!more
                            && keys.iter().all(|key| {
                                auth.allows(
                                    user,
                                    &crate::auth::Access::key(crate::auth::AccessKind::Write, key),
                                )
                            }))
                    };
                    let allowed = match (auth.enabled, user.as_deref()) {
                        (false, _) => true,
                        (true, Some(user)) => allowed(user)?,
                        (true, None) => false,
                    };
                    if !allowed {
                        return Ok(refused(LeaseError::Denied(*id)));
                    }
                }
                // Gone at once: from here on a put naming it is refused, so
                // its keys only get fewer.
                self.delete(lease::store::record_key(*id));
                self.drain(*id, revision, *time_ms)?;
                Ok(done)
            }
            LeaseCommand::Drain { id, time_ms } => {
                debug_assert!(self.writes.is_empty(), "a drain starts its run");
                if self.get(&lease::store::drain_key(*id))?.is_some() {
                    self.drain(*id, revision, *time_ms)?;
                }
                Ok(done)
            }
            LeaseCommand::Checkpoint { remaining } => {
                for (id, remaining_ms) in remaining {
                    let key = lease::store::record_key(*id);
                    if let Some(bytes) = self.get(&key)? {
                        let mut record = lease::store::decode(&bytes)?;
                        record.remaining_ms = Some(*remaining_ms);
                        self.put(key, lease::store::encode(&record));
                    }
                }
                Ok(done)
            }
        }
    }

    /// At most what the puts and deletes of `ops` write (see
    /// [`OP_WRITE_BYTES`]); read from the overlay and the engine without
    /// copying values.
    fn could_write(&self, ops: &[Op]) -> io::Result<usize> {
        let mut total = 0usize;
        for op in ops {
            let (key, value) = match op {
                Op::Put { key, value, .. } => (key, value.len()),
                Op::Delete { key, .. } => (key, 0),
                _ => continue,
            };
            let inline = self.with_value(&keys::user_key(key), |bytes| {
                match bytes.and_then(Record::peek) {
                    Some((mod_revision, len)) if mod_revision < self.compacted => len,
                    _ => 0,
                }
            })?;
            total = total.saturating_add(8 * key.len() + 2 * value + inline + OP_WRITE_BYTES);
        }
        Ok(total)
    }

    /// Deletes the keys attached to revoked lease `id` at `revision`, as
    /// many as [`Bounds::txn_write_bytes`] allows, and marks the lease as
    /// draining if keys are left (unmarks it if none are). Each call
    /// removes at least one index entry (deleting its key, or dropping it
    /// as stale), so a drain ends. Only an entry that starts its run calls
    /// it (see [`is_barrier`]): it lists the keys from the engine.
    fn drain(&mut self, id: u64, revision: u64, time_ms: u64) -> io::Result<()> {
        let view = self.db.snapshot();
        let budget = self.bounds.txn_write_bytes;
        let (attached, mut more) =
            lease::store::attached_within(&view, id, usize::MAX, budget, LISTED_KEY_BYTES)?;
        let began = self.written();
        let mut index = 0u32;
        let mut keys = attached.into_iter();
        for key in keys.by_ref() {
            match self.record(&key)? {
                Some(record) if record.lease == id => {
                    self.delete_key(&key, &record, revision, index, time_ms);
                    index += 1;
                }
                // The index and the records change together, so this is
                // damage; drop the stale index entry.
                _ => {
                    tracing::warn!(lease = id, "lease index names a key not attached to it");
                    self.delete(lease::store::index_key(id, &key));
                }
            }
            if self.written() - began > budget {
                break;
            }
        }
        more |= keys.next().is_some();
        let marker = lease::store::drain_key(id);
        if more {
            self.put(marker, Vec::new());
        } else if self.get(&marker)?.is_some() {
            self.delete(marker);
        }
        Ok(())
    }

    /// The apply version the entries follow at this point of the run:
    /// every rule that differs between versions asks here. The engine
    /// holds it until an entry of this run raised it.
    fn apply_version(&mut self) -> io::Result<u32> {
        match self.apply_version {
            Some(version) => Ok(version),
            None => {
                let version = super::stored_apply_version(self.db)?;
                self.apply_version = Some(version);
                Ok(version)
            }
        }
    }

    /// Raises the apply version the entries after this one follow (the
    /// caller checked that the membership is the one whose members were
    /// asked). A version this member does not implement stops apply (an
    /// error, fatal to openraft) before anything of the run is written:
    /// applying on by the old rules would diverge from the members that
    /// follow the new.
    fn set_apply_version(&mut self, version: u32, index: u64) -> io::Result<Response> {
        if version > self.bounds.implemented_apply_version {
            return Err(crate::apply_version::too_new(
                version,
                self.bounds.implemented_apply_version,
                &format!("log entry {index}"),
            ));
        }
        let raised = version > self.apply_version()?;
        if raised {
            self.apply_version = Some(version);
            self.put(keys::APPLY_VERSION.to_vec(), version.to_le_bytes().to_vec());
        }
        Ok(Response {
            revision: index,
            succeeded: raised,
            ..Response::default()
        })
    }

    /// Raises the compacted revision to `revision` (at most `index`, the
    /// command's own: the future has no history to remove) and starts
    /// purging below it. Not raising it (a revision at or below the
    /// current one) is not an error; the answer says whether it moved.
    fn compact(&mut self, revision: u64, index: u64) -> Response {
        let revision = revision.min(index);
        let raised = revision > self.compacted;
        if raised {
            self.compacted = revision;
            // A purge under way restarts with the new bound: it would have
            // kept versions the new one may not need.
            self.purge = Some(PurgeCursor::start(revision));
            self.history_dirty = true;
        }
        Response {
            revision: index,
            succeeded: raised,
            ..Response::default()
        }
    }

    /// One bounded step of the purge under way, if any. The run holds no
    /// earlier entry (see [`apply_and_write`]), so the engine is the state.
    fn purge_step(&mut self) -> io::Result<()> {
        debug_assert!(self.writes.is_empty(), "a purge step starts its run");
        // Apply version 2 on: a step may stop inside a key (of any number
        // of versions); below, a key's versions are taken whole.
        let within_keys = self.apply_version()? >= 2;
        let Some(cursor) = self.purge.take() else {
            return Ok(());
        };
        let view = self.db.snapshot();
        let (writes, written) = (&mut self.writes, &mut self.written);
        self.purge = history::purge_step(
            &view,
            cursor,
            PURGE_STEP_ENTRIES,
            within_keys,
            &mut |key, value| {
                *written += key.len() + value.as_ref().map_or(0, Vec::len);
                writes.insert(key, value);
            },
        )?;
        self.history_dirty = true;
        Ok(())
    }

    /// Applies an auth change on the engine's auth state (the run holds no
    /// earlier entry); refused changes change nothing.
    fn change_auth(
        &mut self,
        change: &crate::auth::AuthChange,
        revision: u64,
    ) -> io::Result<Response> {
        debug_assert!(self.writes.is_empty(), "an auth change starts its run");
        let before = crate::auth::store::load(&self.db.snapshot())?;
        let mut after = before.clone();
        let applied = change.apply(&mut after).and_then(|()| {
            // Only a change that grows the state is held to the bound.
            let (bytes, max) = (after.bytes(), self.bounds.auth_state_bytes);
            match bytes > max && bytes > before.bytes() {
                true => Err(format!(
                    "the auth state would take {bytes} bytes, more than the {max} it may"
                )),
                false => Ok(()),
            }
        });
        if let Err(reason) = applied {
            return Ok(Response {
                revision,
                succeeded: false,
                rejected: Some(reason),
                ..Response::default()
            });
        }
        let (writes, written) = (&mut self.writes, &mut self.written);
        crate::auth::store::diff(&before, &after, &mut |key, value| {
            *written += key.len() + value.as_ref().map_or(0, Vec::len);
            writes.insert(key, value);
        })?;
        self.auth_changed = true;
        self.auth_gate = None;
        Ok(Response {
            revision,
            succeeded: true,
            ..Response::default()
        })
    }

    /// The auth revision if auth is on (`None`: off), as of the entries
    /// applied so far.
    fn auth_gate(&mut self) -> io::Result<Option<u64>> {
        if let Some(gate) = self.auth_gate {
            return Ok(gate);
        }
        let gate = crate::auth::store::enabled_revision(|key| self.get(key))?;
        self.auth_gate = Some(gate);
        Ok(gate)
    }

    /// The client's record as of the entries applied so far.
    fn client_record(&mut self, client: u64) -> io::Result<&mut ClientRecord> {
        if !self.clients.contains_key(&client) {
            let record = match self.get(&clients::key(client))? {
                Some(bytes) => clients::decode(&bytes)?,
                None => match self.get(&clients::legacy_key(client))? {
                    Some(bytes) => clients::decode_legacy(&bytes)?,
                    None => ClientRecord::default(),
                },
            };
            self.clients.insert(client, record);
        }
        Ok(self.clients.get_mut(&client).expect("inserted above"))
    }

    /// The last revision a client's record (either version) names, if it
    /// has one as of the entries applied so far.
    fn last_revision_of(&self, client: u64) -> io::Result<Option<u64>> {
        if let Some(record) = self.clients.get(&client) {
            return Ok(Some(record.last_revision));
        }
        if let Some(bytes) = self.get(&clients::key(client))? {
            return Ok(Some(clients::decode(&bytes)?.last_revision));
        }
        match self.get(&clients::legacy_key(client))? {
            Some(bytes) => Ok(Some(clients::decode_legacy(&bytes)?.last_revision)),
            None => Ok(None),
        }
    }

    /// Forgets clients that wrote nothing for `CLIENT_EXPIRY_REVISIONS`
    /// revisions. Runs at revisions that are multiples of
    /// `CLIENT_SWEEP_EVERY`; it reads through the overlay, so every replica
    /// decides the same whatever its batch boundaries.
    pub(crate) fn sweep_clients(&mut self, revision: u64) -> io::Result<()> {
        if !revision.is_multiple_of(CLIENT_SWEEP_EVERY) || revision < CLIENT_EXPIRY_REVISIONS {
            return Ok(());
        }
        // Every client the state holds: in the engine, or new in this run.
        let mut candidates: BTreeSet<u64> = self.clients.keys().copied().collect();
        for prefix in clients::PREFIXES {
            for item in self.db.prefix(prefix) {
                let (key, _) = item.map_err(io::Error::other)?;
                candidates.insert(clients::client_of_key(&key).ok_or_else(|| {
                    io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("client record key {key:?}"),
                    )
                })?);
            }
        }
        for client in candidates {
            let Some(last_revision) = self.last_revision_of(client)? else {
                continue;
            };
            // A record loaded in this run but absent (deleted, or a client
            // that only read) is the default record: nothing to forget.
            if last_revision == 0 && !self.dirty.contains(&client) {
                continue;
            }
            if last_revision + CLIENT_EXPIRY_REVISIONS < revision {
                self.clients.remove(&client);
                self.dirty.remove(&client);
                self.delete(clients::key(client));
                self.delete(clients::legacy_key(client));
            }
        }
        Ok(())
    }

    fn holds(&self, compare: &Compare) -> io::Result<bool> {
        let record = self.record(&compare.key)?;
        let ordering = match &compare.target {
            CompareTarget::Value(expected) => {
                let actual = record.as_ref().map(|r| &r.value);
                actual.cmp(&expected.as_ref())
            }
            CompareTarget::ModRevision(n) => record.as_ref().map_or(0, |r| r.mod_revision).cmp(n),
            CompareTarget::CreateRevision(n) => {
                record.as_ref().map_or(0, |r| r.create_revision).cmp(n)
            }
            CompareTarget::Version(n) => record.as_ref().map_or(0, |r| r.version).cmp(n),
            CompareTarget::Lease(n) => record.as_ref().map_or(0, |r| r.lease).cmp(n),
        };
        Ok(match compare.op {
            CompareOp::Equal => ordering.is_eq(),
            CompareOp::NotEqual => ordering.is_ne(),
            CompareOp::Less => ordering.is_lt(),
            CompareOp::Greater => ordering.is_gt(),
        })
    }
}

/// Sorts a range's answer (stable: equal ones stay in key order).
fn sort_range(kvs: &mut [crate::types::KeyValue], order: RangeOrder) {
    use crate::types::KeyValue;
    let by = |a: &KeyValue, b: &KeyValue| match order.by {
        SortBy::Key => a.key.cmp(&b.key),
        SortBy::Version => a.version.cmp(&b.version),
        SortBy::CreateRevision => a.create_revision.cmp(&b.create_revision),
        SortBy::ModRevision => a.mod_revision.cmp(&b.mod_revision),
        SortBy::Value => a.value.cmp(&b.value),
    };
    if order.descending {
        kvs.sort_by(|a, b| by(b, a));
    } else if order != RangeOrder::KEY {
        kvs.sort_by(by);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state_machine::history::{ChangeAt, ChangePage, Scan};
    use crate::types::RequestId;

    /// Every change of revisions `from..=until` in one page.
    fn scan_all(view: &ferry_engine::Snapshot, from: u64, until: u64) -> ChangePage {
        let all = |_: &[u8]| true;
        let mut scan = Scan::new(ChangeAt::revision(from), until, &all, usize::MAX);
        scan.look_at = usize::MAX;
        let page = history::scan_changes(view, &scan).unwrap();
        assert!(!page.more);
        page
    }

    fn log_id(index: u64) -> LogId {
        let leader = openraft::impls::leader_id_adv::LeaderId {
            term: 1,
            node_id: 1,
        };
        LogId::new(leader, index)
    }

    /// A txn of `ops` by `client` as its request `sequence`, the client
    /// having seen every answer below `first_incomplete`.
    fn request(
        index: u64,
        client: u64,
        sequence: u64,
        first_incomplete: u64,
        ops: Vec<Op>,
    ) -> Entry {
        Entry::new_normal(
            log_id(index),
            Command::Txn(Txn {
                request: Some(RequestId {
                    client,
                    sequence,
                    first_incomplete,
                }),
                ..Txn::batch(ops)
            })
            .into(),
        )
    }

    fn put(index: u64, client: u64, sequence: u64) -> Entry {
        let ops = vec![Op::put(format!("k{client}"), vec![1])];
        request(index, client, sequence, sequence, ops)
    }

    fn record(db: &Db, client: u64) -> Option<ClientRecord> {
        db.get(clients::key(client))
            .unwrap()
            .map(|b| clients::decode(&b).unwrap())
    }

    fn apply(db: &Db, entries: &[Entry]) -> Vec<Response> {
        let mut responses = Vec::new();
        apply_and_write(db, entries, |run, _| {
            responses.extend(run.responses);
            Ok(())
        })
        .unwrap();
        responses
    }

    /// Everything in `db`, for comparing states.
    fn contents(db: &Db) -> Vec<(Vec<u8>, Vec<u8>)> {
        db.snapshot().iter().map(|item| item.unwrap()).collect()
    }

    /// A generated txn: its ops (key, delete, guard), and its client.
    type GeneratedTxn = (Vec<(u8, bool, u8)>, u8);

    #[test]
    fn a_run_answers_and_writes_as_its_entries_one_by_one() {
        use proptest::prelude::*;
        // Txns of one or two puts, deletes and guarded puts over a few
        // keys, some retried by their clients, after a history both
        // databases share: what a run reads ahead must never hide what an
        // earlier entry of the same run wrote (or deleted, or a client
        // sweep removed).
        let op = (0u8..4, any::<bool>(), 0u8..3);
        let txn = (prop::collection::vec(op, 1..3), 0u8..3);
        let txns = || prop::collection::vec(txn.clone(), 0..40);
        proptest!(ProptestConfig::with_cases(64), |(history in txns(), ops in txns(), across_a_sweep in any::<bool>())| {
            let entries = |txns: &[GeneratedTxn], first: u64| -> Vec<Entry> {
                txns.iter()
                    .enumerate()
                    .map(|(at, (generated, client))| {
                        let index = first + at as u64;
                        // The first op's key, guarded (0: no guard).
                        let (guarded, _, guard) = generated[0];
                        let ops: Vec<Op> = generated
                            .iter()
                            .map(|&(key, delete, _)| {
                                let key = format!("k{key}");
                                if delete { Op::delete(key) } else { Op::put(key, index.to_le_bytes().to_vec()) }
                            })
                            .collect();
                        let sequence = index / 2; // pairs: a retry of the same request
                        let txn = Txn {
                            compares: match guard {
                                0 => Vec::new(),
                                _ => vec![Compare {
                                    key: format!("k{guarded}").into_bytes(),
                                    op: CompareOp::Greater,
                                    target: CompareTarget::Version(u64::from(guard)),
                                }],
                            },
                            request: Some(crate::types::RequestId { client: u64::from(*client) + 1, sequence, first_incomplete: sequence }),
                            ..Txn::batch(ops)
                        };
                        Entry::new_normal(log_id(index), Command::Txn(txn).into())
                    })
                    .collect()
            };
            let (together, apart) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
            let (together, apart) = (
                Db::open(together.path(), Default::default()).unwrap(),
                Db::open(apart.path(), Default::default()).unwrap(),
            );
            let history = entries(&history, 1);
            apply(&together, &history);
            apply(&apart, &history);
            // Across a sweep point, the history's clients are forgotten in
            // the middle of the run.
            let first = if across_a_sweep {
                CLIENT_EXPIRY_REVISIONS + 2 * CLIENT_SWEEP_EVERY - ops.len() as u64 / 2
            } else {
                history.len() as u64 + 1
            };
            let entries = entries(&ops, first);
            let run = apply(&together, &entries);
            let one_by_one: Vec<Response> = entries
                .iter()
                .flat_map(|entry| apply(&apart, std::slice::from_ref(entry)))
                .collect();
            prop_assert_eq!(run, one_by_one);
            prop_assert_eq!(contents(&together), contents(&apart));
        });
    }

    /// Client `client`'s put of `k<client>`, checked under `auth_revision`.
    fn checked(index: u64, client: u64, auth_revision: u64) -> Entry {
        let mut entry = put(index, client, 1);
        if let EntryPayload::Normal(command) = &mut entry.payload {
            if let Command::Txn(txn) = std::sync::Arc::make_mut(command) {
                txn.auth_revision = Some(auth_revision);
            }
        }
        entry
    }

    fn auth(index: u64, change: crate::auth::AuthChange) -> Entry {
        Entry::new_normal(log_id(index), Command::Auth(change).into())
    }

    fn written(db: &Db, client: u64) -> bool {
        db.get(keys::user_key(format!("k{client}").as_bytes()))
            .unwrap()
            .is_some()
    }

    #[test]
    fn a_txn_checked_under_an_older_auth_state_changes_nothing_and_its_retry_is_applied() {
        use crate::auth::{AuthChange, STALE_CHECK};
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path(), Default::default()).unwrap();
        // Auth off: no stamp is too old.
        apply(&db, &[auth(1, AuthChange::RoleAdd { name: "r".into() })]);
        assert!(apply(&db, &[checked(2, 1, 0)])[0].rejected.is_none());
        assert!(written(&db, 1));
        // Auth on at revision 4 (four changes).
        apply(
            &db,
            &[
                auth(
                    3,
                    AuthChange::UserAdd {
                        name: "root".into(),
                        password_hash: None,
                    },
                ),
                auth(
                    4,
                    AuthChange::UserGrantRole {
                        user: "root".into(),
                        role: "root".into(),
                    },
                ),
                auth(5, AuthChange::Enable { token_key: [1; 32] }),
            ],
        );
        let refused = apply(&db, &[checked(6, 2, 3)]);
        assert_eq!(refused[0].rejected.as_deref(), Some(STALE_CHECK));
        assert!(!written(&db, 2));
        assert!(record(&db, 2).is_none(), "the refusal is not its answer");
        // Its retry, checked under the current state, is applied; unchecked
        // commands always are.
        let retried = apply(&db, &[checked(7, 2, 4), put(8, 3, 1)]);
        assert!(retried.iter().all(|r| r.rejected.is_none()), "{retried:?}");
        assert!(written(&db, 2) && written(&db, 3));
        // A change earlier in the same run counts.
        let run = apply(
            &db,
            &[
                auth(9, AuthChange::RoleAdd { name: "s".into() }),
                checked(10, 4, 4),
                checked(11, 5, 5),
            ],
        );
        assert_eq!(run[1].rejected.as_deref(), Some(STALE_CHECK));
        assert!(run[2].rejected.is_none());
        assert!(!written(&db, 4) && written(&db, 5));
    }

    #[test]
    fn a_clients_revoke_is_judged_at_apply_by_the_keys_and_auth_state_of_then() {
        use crate::auth::{AuthChange, Permission, PermissionKind};
        use crate::lease::{LeaseCommand, LeaseError};
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path(), Default::default()).unwrap();
        let lease = |index: u64, change: LeaseCommand| {
            Entry::new_normal(log_id(index), Command::Lease(change).into())
        };
        let revoke_by = |index: u64, id: u64, user: Option<&str>| {
            lease(
                index,
                LeaseCommand::RevokeBy {
                    id,
                    time_ms: 0,
                    user: user.map(str::to_owned),
                },
            )
        };
        let attach = |index: u64, id: u64, key: &str| {
            Entry::new_normal(
                log_id(index),
                Command::batch(vec![Op::Put {
                    key: key.into(),
                    value: b"v".to_vec(),
                    lease: id,
                    prev_kv: false,
                }])
                .into(),
            )
        };
        let present = |key: &str| db.get(keys::user_key(key.as_bytes())).unwrap().is_some();
        let denied = Some(LeaseError::Denied(1).to_string());
        // Auth off: a client's revoke needs no user.
        let run = apply(
            &db,
            &[
                lease(
                    1,
                    LeaseCommand::Grant {
                        id: 9,
                        ttl_ms: 60_000,
                    },
                ),
                attach(2, 9, "b/1"),
            ],
        );
        assert!(run.iter().all(|r| r.rejected.is_none()), "{run:?}");
        assert!(apply(&db, &[revoke_by(3, 9, None)])[0].rejected.is_none());
        assert!(!present("b/1"));
        // Auth on; alice may write a/ only.
        let user = |name: &str| AuthChange::UserAdd {
            name: name.into(),
            password_hash: None,
        };
        let grant_role = |user: &str, role: &str| AuthChange::UserGrantRole {
            user: user.into(),
            role: role.into(),
        };
        let run = apply(
            &db,
            &[
                auth(4, user("root")),
                auth(5, grant_role("root", "root")),
                auth(6, user("alice")),
                auth(7, AuthChange::RoleAdd { name: "a".into() }),
                auth(
                    8,
                    AuthChange::RoleGrant {
                        role: "a".into(),
                        permission: Permission {
                            kind: PermissionKind::ReadWrite,
                            key: b"a/".to_vec(),
                            range_end: b"a0".to_vec(),
                        },
                    },
                ),
                auth(9, grant_role("alice", "a")),
                auth(10, AuthChange::Enable { token_key: [1; 32] }),
                lease(
                    11,
                    LeaseCommand::Grant {
                        id: 1,
                        ttl_ms: 60_000,
                    },
                ),
                attach(12, 1, "a/1"),
            ],
        );
        assert!(run.iter().all(|r| r.rejected.is_none()), "{run:?}");
        // alice may revoke a lease of her keys alone; once a key she may
        // not write is attached (whatever her member saw), she may not,
        // nor may no one, nor a user that does not exist.
        let run = apply(
            &db,
            &[
                attach(13, 1, "b/2"),
                revoke_by(14, 1, Some("alice")),
                revoke_by(15, 1, None),
                revoke_by(16, 1, Some("mallory")),
            ],
        );
        assert_eq!(run[1].rejected, denied);
        assert_eq!(run[2].rejected, denied);
        assert_eq!(run[3].rejected, denied);
        assert!(
            present("a/1") && present("b/2"),
            "a refused revoke changes nothing"
        );
        assert!(db.get(lease::store::record_key(1)).unwrap().is_some());
        // Root may; and the node's own revoke is not checked.
        assert!(apply(&db, &[revoke_by(17, 1, Some("root"))])[0]
            .rejected
            .is_none());
        assert!(!present("a/1") && !present("b/2"));
        let run = apply(
            &db,
            &[
                lease(
                    18,
                    LeaseCommand::Grant {
                        id: 2,
                        ttl_ms: 60_000,
                    },
                ),
                attach(19, 2, "b/3"),
                lease(20, LeaseCommand::Revoke { id: 2, time_ms: 0 }),
            ],
        );
        assert!(run.iter().all(|r| r.rejected.is_none()), "{run:?}");
        assert!(!present("b/3"));
        // A revoke of a lease with no keys by alice is allowed.
        let run = apply(
            &db,
            &[
                lease(
                    21,
                    LeaseCommand::Grant {
                        id: 3,
                        ttl_ms: 60_000,
                    },
                ),
                revoke_by(22, 3, Some("alice")),
            ],
        );
        assert!(run.iter().all(|r| r.rejected.is_none()), "{run:?}");
        // A lease of more than MAX_CHECKED_KEYS keys, every one hers: not
        // alice's to revoke (apply would list and check them all), root's.
        let many: Vec<Op> = (0..=lease::MAX_CHECKED_KEYS)
            .map(|k| Op::Put {
                key: format!("a/{k:05}").into_bytes(),
                value: Vec::new(),
                lease: 4,
                prev_kv: false,
            })
            .collect();
        let run = apply(
            &db,
            &[
                lease(
                    23,
                    LeaseCommand::Grant {
                        id: 4,
                        ttl_ms: 60_000,
                    },
                ),
                Entry::new_normal(log_id(24), Command::batch(many).into()),
                revoke_by(25, 4, Some("alice")),
            ],
        );
        assert_eq!(run[2].rejected, Some(LeaseError::Denied(4).to_string()));
        assert!(present("a/00000"));
        assert!(apply(&db, &[revoke_by(26, 4, Some("root"))])[0]
            .rejected
            .is_none());
        assert!(!present("a/00000"));
    }

    #[test]
    fn a_revoke_too_large_for_one_revision_drains_in_steps() {
        use crate::lease::{LeaseCommand, LeaseError};
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path(), Default::default()).unwrap();
        let bounds = Bounds {
            txn_write_bytes: 4096,
            ..Bounds::RELEASE
        };
        let lease = |index: u64, change: LeaseCommand| {
            Entry::new_normal(log_id(index), Command::Lease(change).into())
        };
        let grant = |index| {
            lease(
                index,
                LeaseCommand::Grant {
                    id: 7,
                    ttl_ms: 60_000,
                },
            )
        };
        let attach: Vec<Op> = (0..100)
            .map(|k| Op::Put {
                key: format!("l/{k:03}").into_bytes(),
                value: b"v".to_vec(),
                lease: 7,
                prev_kv: false,
            })
            .collect();
        apply(&db, &[grant(1), txn_entry(2, 1, 0, attach)]);
        let user_keys = |db: &Db| db.prefix([keys::USER_PREFIX, b'l']).count();
        let draining = |db: &Db| lease::store::draining(&db.snapshot()).unwrap();
        let (answers, _) = apply_within(
            &db,
            &[
                lease(3, LeaseCommand::Revoke { id: 7, time_ms: 0 }),
                // Gone at once: a put naming it is refused, a grant of its
                // id too, while it drains.
                txn_entry(
                    4,
                    1,
                    1,
                    vec![Op::Put {
                        key: b"l/late".to_vec(),
                        value: Vec::new(),
                        lease: 7,
                        prev_kv: false,
                    }],
                ),
                grant(5),
                // Detached while it drains: kept.
                txn_entry(6, 1, 2, vec![Op::put("l/099", "kept")]),
            ],
            bounds,
        );
        assert!(answers[0].rejected.is_none());
        assert!(answers[1].rejected.is_some());
        assert_eq!(answers[2].rejected, Some(LeaseError::Exists(7).to_string()));
        let left = user_keys(&db);
        assert!(left > 1 && left < 100, "{left} keys left");
        assert_eq!(draining(&db), vec![7]);
        let mut index = 7;
        while !draining(&db).is_empty() {
            assert!(index < 200, "the drain does not end");
            let before = user_keys(&db);
            apply_within(
                &db,
                &[lease(index, LeaseCommand::Drain { id: 7, time_ms: 0 })],
                bounds,
            );
            assert!(user_keys(&db) < before || draining(&db).is_empty());
            index += 1;
        }
        assert_eq!(user_keys(&db), 1, "only the detached key is left");
        // Each key deleted once, at the revoke's revision or a drain's.
        let page = scan_all(&db.snapshot(), 3, index);
        let deletes: BTreeSet<_> = page
            .changes
            .iter()
            .filter(|c| c.kind == ChangeKind::Delete)
            .map(|c| c.key.clone())
            .collect();
        assert_eq!(deletes.len(), 99);
        // A drain with nothing left changes nothing; the id is free again.
        let before = contents(&db);
        apply_within(
            &db,
            &[lease(index, LeaseCommand::Drain { id: 7, time_ms: 0 })],
            bounds,
        );
        let after = contents(&db);
        assert_eq!(
            before
                .iter()
                .filter(|(k, _)| k.as_slice() != keys::APPLIED)
                .count(),
            after
                .iter()
                .filter(|(k, _)| k.as_slice() != keys::APPLIED)
                .count()
        );
        let (answers, _) = apply_within(&db, &[grant(index + 1)], bounds);
        assert!(answers[0].rejected.is_none(), "{answers:?}");
    }

    #[test]
    fn a_silent_client_is_forgotten_and_a_retry_in_the_same_run_is_answered() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path(), Default::default()).unwrap();
        // Client 1 writes twice in one run, the second a retry: one answer.
        let responses = apply(&db, &[put(10, 1, 5), put(11, 1, 5)]);
        assert_eq!(responses[0], responses[1]);
        let kept = record(&db, 1).unwrap();
        assert_eq!((kept.last_revision, kept.answers.len()), (10, 1));

        // Past the expiry, at a sweep point, client 1 is forgotten; client 2,
        // new in that very run, is kept.
        let sweep_at = CLIENT_EXPIRY_REVISIONS + 20_000;
        assert!(sweep_at.is_multiple_of(CLIENT_SWEEP_EVERY));
        apply(&db, &[put(sweep_at - 1, 2, 1), put(sweep_at, 2, 2)]);
        assert!(record(&db, 1).is_none());
        assert_eq!(record(&db, 2).unwrap().last_revision, sweep_at);
    }

    #[test]
    fn a_range_delete_removes_the_engines_keys_and_its_own_txns_writes() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path(), Default::default()).unwrap();
        let txn = |index, ops| Entry::new_normal(log_id(index), Command::batch(ops).into());
        let range = |start: &[u8], end: Option<&[u8]>| Op::DeleteRange {
            start: start.to_vec(),
            end: end.map(<[u8]>::to_vec),
            prev_kv: true,
        };
        let responses = apply(
            &db,
            &[
                txn(
                    1,
                    vec![Op::put("a/1", "1"), Op::put("a/2", "2"), Op::put("b", "3")],
                ),
                // In the same run as the puts, and after one of its own.
                txn(2, vec![Op::put("a/3", "3"), range(b"a/", Some(b"a0"))]),
                txn(3, vec![Op::put("c", "4"), range(b"b", None)]),
            ],
        );
        let deleted = |r: &Response| match &r.results[1] {
            OpResult::DeleteRange { deleted, prev } => (
                *deleted,
                prev.iter().map(|kv| kv.key.clone()).collect::<Vec<_>>(),
            ),
            other => panic!("{other:?}"),
        };
        assert_eq!(
            deleted(&responses[1]),
            (3, vec![b"a/1".to_vec(), b"a/2".to_vec(), b"a/3".to_vec()])
        );
        assert_eq!(
            deleted(&responses[2]),
            (2, vec![b"b".to_vec(), b"c".to_vec()])
        );
        assert_eq!(db.prefix([keys::USER_PREFIX]).count(), 0);
        // Every deleted key is a change of its own, in order.
        let page = scan_all(&db.snapshot(), 2, 3);
        let kinds: Vec<_> = page
            .changes
            .iter()
            .map(|c| (c.revision, c.index, c.kind))
            .collect();
        assert_eq!(
            kinds,
            [
                (2, 0, ChangeKind::Put),
                (2, 1, ChangeKind::Delete),
                (2, 2, ChangeKind::Delete),
                (2, 3, ChangeKind::Delete),
                (3, 0, ChangeKind::Put),
                (3, 1, ChangeKind::Delete),
                (3, 2, ChangeKind::Delete),
            ]
        );
    }

    fn txn_entry(index: u64, client: u64, sequence: u64, ops: Vec<Op>) -> Entry {
        request(index, client, sequence, 0, ops)
    }

    type KeyAndValue = (Vec<u8>, Vec<u8>);

    /// What the keys under `big/` are: their latest values and their
    /// versions; and how many changes the history holds.
    fn big_state(db: &Db) -> (Vec<KeyAndValue>, usize) {
        let under = |prefix: u8| {
            db.prefix([prefix, b'b', b'i', b'g'])
                .map(|item| item.unwrap())
                .collect::<Vec<_>>()
        };
        let mut state = under(keys::USER_PREFIX);
        state.extend(under(keys::VERSION_PREFIX));
        (state, db.prefix([keys::CHANGE_PREFIX]).count())
    }

    #[test]
    fn a_txn_whose_answer_would_be_too_large_is_refused_and_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path(), Default::default()).unwrap();
        let big = vec![7u8; 1 << 20];
        let fill: Vec<Op> = (0..4)
            .map(|i| Op::put(format!("big/{i}"), big.clone()))
            .collect();
        apply(&db, &[txn_entry(1, 1, 0, fill)]);
        let (before, mut changes) = big_state(&db);
        let get = |i: u32| Op::Get {
            key: format!("big/{i}").into_bytes(),
        };
        let range = |limit: u64, by: SortBy| Op::Range {
            start: b"big/".to_vec(),
            end: Some(b"big0".to_vec()),
            limit,
            order: RangeOrder {
                by,
                descending: false,
            },
        };
        let refusals = [
            // Writes first, then reads past the bound.
            vec![
                Op::put("x", "1"),
                get(0),
                get(1),
                Op::delete("big/3"),
                get(2),
                get(3),
            ],
            vec![Op::put("x", "1"), range(0, SortBy::Key)],
            // Sorted by value, a range reads every key it sorts.
            vec![range(1, SortBy::Value)],
            vec![Op::DeleteRange {
                start: b"big/".to_vec(),
                end: Some(b"big0".to_vec()),
                prev_kv: true,
            }],
        ];
        let mut index = 2;
        for (sequence, ops) in refusals.into_iter().enumerate() {
            // In one run with a write after it, which is applied.
            let entries = [
                txn_entry(index, 2, sequence as u64, ops),
                txn_entry(index + 1, 3, sequence as u64, vec![Op::put("y", "2")]),
            ];
            let answers = apply(&db, &entries);
            assert!(
                answers[0]
                    .rejected
                    .as_deref()
                    .is_some_and(|why| why.contains("answer would hold more")),
                "{:?}",
                answers[0].rejected
            );
            assert!(answers[1].rejected.is_none());
            assert!(db.get(keys::user_key(b"x")).unwrap().is_none());
            // Only y's put changed anything.
            changes += 1;
            assert_eq!(big_state(&db), (before.clone(), changes));
            // Its retry gets the same refusal.
            let retried = apply(&db, &[txn_entry(index + 2, 2, sequence as u64, Vec::new())]);
            assert_eq!(retried[0], answers[0]);
            index += 3;
        }
        // Within the bound: two values, and a range in key order that
        // reads only what its limit keeps.
        let answers = apply(
            &db,
            &[
                txn_entry(index, 4, 0, vec![get(0), get(1)]),
                txn_entry(index + 1, 4, 1, vec![range(2, SortBy::Key)]),
                // Sorted by revision, the values of the keys the sort
                // passes over are not held.
                txn_entry(index + 2, 5, 0, vec![range(1, SortBy::CreateRevision)]),
            ],
        );
        assert!(answers.iter().all(|a| a.rejected.is_none()), "{answers:?}");
        match &answers[1].results[0] {
            OpResult::Range { kvs, more, count } => {
                assert_eq!((kvs.len(), *more, *count), (2, true, 4));
            }
            other => panic!("{other:?}"),
        }
        match &answers[2].results[0] {
            OpResult::Range { kvs, .. } => {
                assert_eq!(kvs.len(), 1);
                assert_eq!(kvs[0].value, big);
            }
            other => panic!("{other:?}"),
        }
    }

    /// Applies `entries` within `bounds`; the answers and the number of
    /// engine batches written.
    fn apply_within(db: &Db, entries: &[Entry], bounds: Bounds) -> (Vec<Response>, usize) {
        let (mut responses, mut batches) = (Vec::new(), 0);
        apply_and_write_within(db, entries, bounds, |run, _| {
            responses.extend(run.responses);
            batches += 1;
            Ok(())
        })
        .unwrap();
        (responses, batches)
    }

    #[test]
    fn a_range_delete_that_would_write_too_much_is_refused_and_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path(), Default::default()).unwrap();
        let bounds = Bounds {
            txn_write_bytes: 4096,
            ..Bounds::RELEASE
        };
        let fill: Vec<Op> = (0..100)
            .map(|i| Op::put(format!("big/{i:03}"), "v"))
            .collect();
        apply(&db, &[txn_entry(1, 1, 0, fill)]);
        let (before, mut changes) = big_state(&db);
        let range = |end: &str| Op::DeleteRange {
            start: b"big/".to_vec(),
            end: Some(end.as_bytes().to_vec()),
            prev_kv: false,
        };
        let refusals = [
            // 100 keys of 7 bytes: listed, more than the bound.
            vec![range("big0")],
            // 80 keys: listed within it (80 * (7 + 32) = 3 120), but
            // deleting them writes more; after a write of its own.
            vec![Op::put("x", "1"), range("big/080")],
        ];
        let mut index = 2;
        for (sequence, ops) in refusals.into_iter().enumerate() {
            // In one run with a write after it, which is applied.
            let entries = [
                txn_entry(index, 2, sequence as u64, ops),
                txn_entry(index + 1, 3, sequence as u64, vec![Op::put("y", "2")]),
            ];
            let (answers, _) = apply_within(&db, &entries, bounds);
            let why = answers[0].rejected.as_deref().unwrap_or_default();
            assert!(why.starts_with(WRITES_REFUSED), "{answers:?}");
            assert!(crate::types::is_too_large(why));
            assert!(answers[1].rejected.is_none());
            assert!(db.get(keys::user_key(b"x")).unwrap().is_none());
            changes += 1;
            assert_eq!(big_state(&db), (before.clone(), changes));
            // Its retry gets the same refusal.
            let (retried, _) = apply_within(
                &db,
                &[txn_entry(index + 2, 2, sequence as u64, Vec::new())],
                bounds,
            );
            assert_eq!(retried[0], answers[0]);
            index += 3;
        }
        // Within the bound, in smaller ranges.
        for sequence in 0..10u64 {
            let end = match sequence {
                9 => "big0".to_owned(),
                _ => format!("big/{:03}", (sequence + 1) * 10),
            };
            let (answers, _) = apply_within(
                &db,
                &[txn_entry(index, 4, sequence, vec![range(&end)])],
                bounds,
            );
            assert!(answers[0].rejected.is_none(), "{answers:?}");
            index += 1;
        }
        assert!(big_state(&db)
            .0
            .iter()
            .all(|(key, _)| key[0] != keys::USER_PREFIX));
    }

    #[test]
    fn deletes_that_would_keep_large_values_inline_past_the_bound_are_refused_whole() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path(), Default::default()).unwrap();
        let bounds = Bounds {
            txn_write_bytes: 4096,
            ..Bounds::RELEASE
        };
        let fill: Vec<Op> = (0..10)
            .map(|i| Op::put(format!("big/{i}"), vec![7u8; 1000]))
            .collect();
        let compact = Entry::new_normal(
            log_id(2),
            Command::Compact {
                revision: 2,
                time_ms: 0,
            }
            .into(),
        );
        apply(&db, &[txn_entry(1, 1, 0, fill), compact]);
        let (before, changes) = big_state(&db);
        // Each delete keeps its 1 000-byte value inline (it was written
        // below the compacted revision): ten would pass 4 096 bytes.
        let deletes = |n: usize| (0..n).map(|i| Op::delete(format!("big/{i}"))).collect();
        let (answers, _) = apply_within(&db, &[txn_entry(3, 2, 0, deletes(10))], bounds);
        let why = answers[0].rejected.as_deref().unwrap_or_default();
        assert!(why.starts_with(WRITES_REFUSED), "{answers:?}");
        assert_eq!(big_state(&db), (before, changes));
        let (answers, _) = apply_within(&db, &[txn_entry(4, 2, 1, deletes(2))], bounds);
        assert!(answers[0].rejected.is_none(), "{answers:?}");
    }

    #[test]
    fn the_auth_state_grows_no_further_than_its_bound() {
        use crate::auth::AuthChange;
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path(), Default::default()).unwrap();
        let bounds = Bounds {
            auth_state_bytes: 1000,
            ..Bounds::RELEASE
        };
        let add = |index: u64, name: String| {
            let change = AuthChange::UserAdd {
                name,
                password_hash: None,
            };
            Entry::new_normal(log_id(index), Command::Auth(change).into())
        };
        // Users of 100-byte names, until the state would pass 1 000 bytes.
        let mut index = 1;
        let added = loop {
            let (answers, _) = apply_within(&db, &[add(index, format!("{index:0100}"))], bounds);
            if let Some(why) = &answers[0].rejected {
                assert!(why.contains("auth state"), "{why}");
                break index - 1;
            }
            index += 1;
            assert!(index < 100, "the bound never held");
        };
        assert!((8..=9).contains(&added), "{added} users");
        let users = crate::auth::store::load(&db.snapshot())
            .unwrap()
            .users
            .len();
        assert_eq!(users as u64, added);
        // Shrinking is always allowed.
        let delete = AuthChange::UserDelete {
            name: format!("{:0100}", 1),
        };
        let entry = Entry::new_normal(log_id(index + 1), Command::Auth(delete).into());
        let (answers, _) = apply_within(&db, &[entry], bounds);
        assert!(answers[0].rejected.is_none(), "{answers:?}");
    }

    #[test]
    fn listing_a_key_for_a_range_delete_counts_less_than_deleting_it_writes() {
        // What makes refusing a range delete whose listing passed the
        // bound right: its deletes would have passed it too.
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path(), Default::default()).unwrap();
        apply(&db, &[txn_entry(1, 1, 0, vec![Op::put("a", "")])]);
        let mut overlay = Overlay::new(&db).unwrap();
        let before = overlay.written();
        let txn = Txn::batch(vec![Op::DeleteRange {
            start: b"a".to_vec(),
            end: None,
            prev_kv: false,
        }]);
        let answer = overlay.apply(&txn, 2).unwrap();
        assert!(matches!(
            answer.results[0],
            OpResult::DeleteRange { deleted: 1, .. }
        ));
        // The key is 1 byte long.
        assert!(overlay.written() - before > LISTED_KEY_BYTES);
    }

    #[test]
    fn a_run_that_writes_much_is_written_as_several_batches_with_the_same_result() {
        let entries: Vec<Entry> = (1..=6)
            .map(|i| txn_entry(i, 1, i, vec![Op::put(format!("k{i}"), vec![7u8; 100])]))
            .collect();
        let (whole, cut) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let (whole, cut) = (
            Db::open(whole.path(), Default::default()).unwrap(),
            Db::open(cut.path(), Default::default()).unwrap(),
        );
        let (answers, batches) = apply_within(&whole, &entries, Bounds::RELEASE);
        assert_eq!(batches, 1);
        let small = Bounds {
            run_write_bytes: 300,
            ..Bounds::RELEASE
        };
        let (cut_answers, cut_batches) = apply_within(&cut, &entries, small);
        assert!(cut_batches >= 3, "{cut_batches} batches");
        assert_eq!(cut_answers, answers);
        assert_eq!(contents(&cut), contents(&whole));
        // Overwrites (twice in a transaction, with previous values) of 384
        // keys, read ahead one group of values at most: the rest are read
        // as needed, with the same result.
        let key = |k: u64| format!("r{k:03}");
        let fill: Vec<Entry> = (0..3u64)
            .map(|t| {
                let ops = (t * 128..(t + 1) * 128)
                    .map(|k| Op::put(key(k), "0"))
                    .collect();
                txn_entry(7 + t, 2, t, ops)
            })
            .collect();
        apply(&whole, &fill);
        apply(&cut, &fill);
        let overwrite = |prev_kv| {
            (0..384u64).map(move |k| Op::Put {
                key: key(k).into_bytes(),
                value: vec![1; 10],
                lease: 0,
                prev_kv,
            })
        };
        let entries: Vec<Entry> = (0..6u64)
            .map(|t| {
                let ops = overwrite(t % 2 == 0).skip(t as usize * 64).take(64);
                let ops = ops.clone().chain(ops).collect();
                txn_entry(10 + t, 3, t, ops)
            })
            .collect();
        let (answers, _) = apply_within(&whole, &entries, Bounds::RELEASE);
        let little = Bounds {
            read_ahead_bytes: 1,
            ..Bounds::RELEASE
        };
        let (little_answers, _) = apply_within(&cut, &entries, little);
        assert_eq!(little_answers, answers);
        assert_eq!(contents(&cut), contents(&whole));
    }

    #[test]
    fn an_answer_a_full_record_dropped_is_refused_on_retry_never_applied_again() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path(), Default::default()).unwrap();
        let put_k =
            |index: u64, sequence: u64| txn_entry(index, 1, sequence, vec![Op::put("k", "v")]);
        // A client that never reports progress: more answers than are kept.
        let entries: Vec<Entry> = (0..=clients::MAX_ANSWERS_PER_CLIENT as u64)
            .map(|sequence| put_k(sequence + 1, sequence))
            .collect();
        apply(&db, &entries);
        let version = |db: &Db| {
            Record::decode_owned(db.get(keys::user_key(b"k")).unwrap().unwrap())
                .unwrap()
                .version
        };
        let versions = version(&db);
        let retry = apply(&db, &[put_k(5000, 0)]);
        assert!(
            retry[0]
                .rejected
                .as_deref()
                .is_some_and(|why| why.contains("forgotten")),
            "{retry:?}"
        );
        assert_eq!(version(&db), versions, "the retry was not applied again");
        // By bytes, nothing is dropped: a client whose unacknowledged
        // answers would pass the bound gets its next large answer refused,
        // without effect, until it acknowledges. Each answer holds two
        // 1 MiB values.
        let big = vec![1u8; 1 << 20];
        apply(
            &db,
            &[txn_entry(
                5001,
                2,
                0,
                vec![Op::put("b/1", big.clone()), Op::put("b/2", big)],
            )],
        );
        let reads = |index: u64, sequence: u64, first_incomplete: u64| {
            let ops = vec![
                Op::put("r", sequence.to_le_bytes().to_vec()),
                Op::Get {
                    key: b"b/1".to_vec(),
                },
                Op::Get {
                    key: b"b/2".to_vec(),
                },
            ];
            request(index, 3, sequence, first_incomplete, ops)
        };
        let answers = apply(
            &db,
            &(0..4).map(|s| reads(5002 + s, s, 0)).collect::<Vec<_>>(),
        );
        assert!(answers[..3].iter().all(|a| a.rejected.is_none()));
        assert!(
            answers[3]
                .rejected
                .as_deref()
                .is_some_and(crate::types::is_too_large),
            "{:?}",
            answers[3].rejected
        );
        let r = |db: &Db| {
            db.get(keys::user_key(b"r"))
                .unwrap()
                .map(|bytes| Record::decode_owned(bytes).unwrap().value)
        };
        assert_eq!(
            r(&db),
            Some(2u64.to_le_bytes().to_vec()),
            "the refused put changed nothing"
        );
        let kept = record(&db, 3).unwrap();
        assert_eq!(kept.first_incomplete, 0, "no answer was dropped");
        // Every kept answer is still its request's, on retry.
        let retry = apply(&db, &[reads(6000, 0, 0)]);
        assert_eq!(retry[0], answers[0]);
        // Acknowledged, the earlier answers go and a new one fits.
        let later = apply(&db, &[reads(6001, 4, 3)]);
        assert!(later[0].rejected.is_none(), "{later:?}");
    }

    #[test]
    fn a_purge_step_starts_a_run_of_its_own() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path(), Default::default()).unwrap();
        let entries = [
            put(1, 1, 1),
            Entry::new_normal(
                log_id(2),
                Command::Compact {
                    revision: 2,
                    time_ms: 0,
                }
                .into(),
            ),
            Entry::new_normal(log_id(3), Command::PurgeHistory.into()),
            put(4, 2, 1),
        ];
        let mut runs = Vec::new();
        apply_and_write(&db, &entries, |run, _| {
            runs.push(run.responses.len());
            Ok(())
        })
        .unwrap();
        assert_eq!(runs, vec![2, 2]);
        let view = db.snapshot();
        assert_eq!(history::compacted(&view).unwrap(), 2);
    }

    #[test]
    fn a_purge_step_over_large_kept_values_stops_early() {
        // 40 values of 1 MiB, each replaced after the compacted revision:
        // a purge keeps each one, inline, so a step that kept all 40 would
        // write 40 MiB.
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path(), Default::default()).unwrap();
        let key = |k: u32| format!("big/{k:02}");
        // Written 10 at a time (a transaction writes each value twice).
        let big = |k: u32| Op::put(key(k), vec![7u8; 1 << 20]);
        let mut entries: Vec<Entry> = (0..4u32)
            .map(|t| {
                let ops = (t * 10..t * 10 + 10).map(big).collect();
                txn_entry(1 + u64::from(t), 1, t.into(), ops)
            })
            .collect();
        let small: Vec<Op> = (0..40).map(|k| Op::put(key(k), "small")).collect();
        let purge = |index| Entry::new_normal(log_id(index), Command::PurgeHistory.into());
        entries.extend([
            txn_entry(5, 1, 4, small),
            Entry::new_normal(
                log_id(6),
                Command::Compact {
                    revision: 5,
                    time_ms: 0,
                }
                .into(),
            ),
            purge(7),
        ]);
        apply(&db, &entries);
        let cursor = |db: &Db| -> Option<history::PurgeCursor> {
            db.get(keys::PURGE)
                .unwrap()
                .map(|bytes| postcard::from_bytes(&bytes).unwrap())
        };
        assert!(
            matches!(
                cursor(&db).map(|c| c.phase),
                Some(history::PurgePhase::Versions { after: Some(_) })
            ),
            "{:?}",
            cursor(&db)
        );
        // Later steps finish it, and every change at the compacted
        // revision still has its previous value (a watch's prev_kv).
        apply(&db, &[purge(8), purge(9), purge(10), purge(11)]);
        assert!(cursor(&db).is_none(), "{:?}", cursor(&db));
        let view = db.snapshot();
        let page = scan_all(&view, 5, 6);
        assert_eq!(page.changes.len(), 40);
        for change in &page.changes {
            let before = history::version_before(&view, change).unwrap();
            assert_eq!(before.map(|kv| kv.value.len()), Some(1 << 20));
        }
    }

    /// Apply version 2's purge steps stop inside a key, each within its
    /// bound however many versions the key has, and remove what version
    /// 1's steps (a key whole) remove.
    #[test]
    fn purge_steps_inside_a_key_are_bounded_and_remove_what_whole_keys_do() {
        use proptest::prelude::*;
        // (key, delete) per write; one key gets many versions.
        let write = (0u8..4, prop::bool::weighted(0.2));
        proptest!(ProptestConfig::with_cases(24), |(writes in prop::collection::vec(write, 1..120), cut in 1u64..120, limit in 1usize..9)| {
            let (whole, within) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
            let (whole, within) = (
                Db::open(whole.path(), Default::default()).unwrap(),
                Db::open(within.path(), Default::default()).unwrap(),
            );
            let mut entries: Vec<Entry> = writes
                .iter()
                .enumerate()
                .map(|(at, &(key, delete))| {
                    let index = at as u64 + 1;
                    let key = format!("k{key}");
                    let op = if delete { Op::delete(key) } else { Op::put(key, index.to_le_bytes().to_vec()) };
                    txn_entry(index, 1, index, vec![op])
                })
                .collect();
            let below = cut.min(entries.len() as u64);
            let index = entries.len() as u64 + 1;
            entries.push(Entry::new_normal(log_id(index), Command::Compact { revision: below, time_ms: 0 }.into()));
            for db in [&whole, &within] {
                apply(db, &entries);
            }
            let purge = |db: &Db, within_keys: bool, limit: usize| -> usize {
                let mut cursor = Some(history::PurgeCursor::start(below));
                let mut steps = 0;
                while let Some(at) = cursor.take() {
                    let view = db.snapshot();
                    let mut batch = WriteBatch::new();
                    let mut writes = 0;
                    cursor = history::purge_step(&view, at, limit, within_keys, &mut |key, value| {
                        writes += 1;
                        match value {
                            Some(value) => batch.put(key, value),
                            None => batch.delete(key),
                        }
                    }).unwrap();
                    if within_keys {
                        assert!(writes <= limit, "a step wrote {writes} entries, over {limit}");
                    }
                    db.write(batch).unwrap();
                    steps += 1;
                    assert!(steps < 10_000, "the purge never ends");
                }
                steps
            };
            purge(&whole, false, PURGE_STEP_ENTRIES);
            purge(&within, true, limit);
            prop_assert_eq!(contents(&whole), contents(&within));
        });
    }

    /// Which purge a step takes depends on the state's apply version: the
    /// same entries leave the purge of one hot key at a different place.
    #[test]
    fn the_apply_version_decides_whether_a_purge_step_stops_inside_a_key() {
        let versions = PURGE_STEP_ENTRIES as u64 + 10;
        let cursor_after = |version: u32| {
            let dir = tempfile::tempdir().unwrap();
            let db = Db::open(dir.path(), Default::default()).unwrap();
            let mut entries = vec![Entry::new_normal(
                log_id(1),
                Command::SetApplyVersion {
                    version,
                    membership: 0,
                }
                .into(),
            )];
            entries.extend((2..versions + 2).map(|index| {
                txn_entry(
                    index,
                    1,
                    index,
                    vec![Op::put("hot", index.to_le_bytes().to_vec())],
                )
            }));
            let compact = versions + 2;
            entries.push(Entry::new_normal(
                log_id(compact),
                Command::Compact {
                    revision: compact,
                    time_ms: 0,
                }
                .into(),
            ));
            entries.push(Entry::new_normal(
                log_id(compact + 1),
                Command::PurgeHistory.into(),
            ));
            apply(&db, &entries);
            let bytes = db.get(keys::PURGE).unwrap().unwrap();
            postcard::from_bytes::<history::PurgeCursor>(&bytes)
                .unwrap()
                .phase
        };
        // Under 1 the step took the key whole (and stopped after it, past
        // its bound).
        assert!(
            matches!(
                cursor_after(1),
                history::PurgePhase::Versions { after: Some(_) }
            ),
            "the key whole"
        );
        assert!(
            matches!(cursor_after(2), history::PurgePhase::WithinKey { .. }),
            "stopped inside the key"
        );
    }

    /// A page of a watch's history read ends after a bounded number of
    /// entries even if none matches, and says how far it looked: a watch
    /// far behind on a quiet key moves on page by page.
    #[test]
    fn a_history_page_that_matches_nothing_still_ends_and_moves_on() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path(), Default::default()).unwrap();
        let mut entries: Vec<Entry> = (1..=50)
            .map(|index| txn_entry(index, 1, index, vec![Op::put("noise", "n")]))
            .collect();
        entries.push(txn_entry(51, 1, 51, vec![Op::put("wanted", "w")]));
        apply(&db, &entries);
        let view = db.snapshot();
        let wanted = |key: &[u8]| key == b"wanted";
        let (mut from, mut pages) = (1, 0);
        let found = loop {
            let mut scan = Scan::new(ChangeAt::revision(from), 51, &wanted, usize::MAX);
            scan.look_at = 10;
            let page = history::scan_changes(&view, &scan).unwrap();
            pages += 1;
            assert!(page.through() >= from, "a page moves on");
            if !page.changes.is_empty() {
                assert!(!page.more);
                break page.changes;
            }
            assert!(page.more, "an empty page before the end says there is more");
            assert_eq!(page.next.index, 0, "one change per revision: never split");
            from = page.next.revision;
        };
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].revision, 51);
        assert!(pages >= 5, "{pages} pages");
    }

    /// A sorted range in a transaction over more keys than apply looks at:
    /// answered from the first keys under apply version 1, refused from 2
    /// on; in key order it is answered under both.
    #[test]
    fn a_sorted_range_cut_short_in_a_transaction_is_refused_from_apply_version_2() {
        let answers_under = |version: u32| {
            let dir = tempfile::tempdir().unwrap();
            let db = Db::open(dir.path(), Default::default()).unwrap();
            let set = Command::SetApplyVersion {
                version,
                membership: 0,
            };
            // The last key by name is the first written: the first by
            // create revision is past the keys looked at.
            let keys = MAX_TXN_RANGE_KEYS + 1;
            let mut entries = vec![
                Entry::new_normal(log_id(1), set.into()),
                txn_entry(2, 1, 2, vec![Op::put(format!("r/{keys:06}"), "first")]),
                txn_entry(
                    3,
                    1,
                    3,
                    (0..keys)
                        .map(|k| Op::put(format!("r/{k:06}"), "v"))
                        .collect(),
                ),
            ];
            let range = |index, by, descending| {
                let order = RangeOrder { by, descending };
                let op = Op::Range {
                    start: b"r/".to_vec(),
                    end: Some(b"r0".to_vec()),
                    limit: 1,
                    order,
                };
                txn_entry(index, 1, index, vec![op])
            };
            entries.push(range(4, SortBy::CreateRevision, false));
            entries.push(range(5, SortBy::Key, false));
            let answers = apply(&db, &entries);
            (answers[3].clone(), answers[4].clone())
        };
        let (sorted, by_key) = answers_under(1);
        assert!(sorted.rejected.is_none(), "{:?}", sorted.rejected);
        let OpResult::Range { kvs, more, .. } = &sorted.results[0] else {
            panic!("{sorted:?}")
        };
        assert!(*more);
        assert_ne!(
            kvs[0].key,
            format!("r/{:06}", MAX_TXN_RANGE_KEYS + 1).into_bytes()
        );
        assert!(by_key.rejected.is_none());

        let (sorted, by_key) = answers_under(2);
        let reason = sorted.rejected.expect("refused");
        assert!(crate::types::is_too_large(&reason), "{reason}");
        assert!(by_key.rejected.is_none(), "{:?}", by_key.rejected);
        let OpResult::Range { kvs, more, .. } = &by_key.results[0] else {
            panic!("{by_key:?}")
        };
        assert!(*more);
        assert_eq!(kvs[0].key, b"r/000000");
    }

    #[test]
    fn the_apply_version_rises_only_and_never_past_what_the_member_implements() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path(), Default::default()).unwrap();
        let set_under = |index, version, membership| {
            Entry::new_normal(
                log_id(index),
                Command::SetApplyVersion {
                    version,
                    membership,
                }
                .into(),
            )
        };
        // The state has no membership yet: asked under "none".
        let set = |index, version| set_under(index, version, 0);
        let version = |db: &Db| Overlay::new(db).unwrap().apply_version().unwrap();
        assert_eq!(version(&db), 1, "absent: 1");
        let implementing = |db: &Db, entries: &[Entry], implemented| {
            apply_and_write_implementing(db, entries, implemented, |_, _| Ok(()))
        };
        implementing(&db, &[put(1, 1, 0), set(2, 2)], 2).unwrap();
        assert_eq!(version(&db), 2);
        // Never lowered: an old proposal applied late changes nothing.
        let answers = apply(&db, &[set(3, 1)]);
        assert!(!answers[0].succeeded);
        assert_eq!(version(&db), 2);
        // Past what this member implements: apply stops, and nothing of
        // the run is written (not even the entries before it).
        let before = contents(&db);
        let error = implementing(&db, &[put(4, 2, 0), set(5, 3)], 2).unwrap_err();
        assert!(
            error
                .to_string()
                .contains("log entry 5 follows apply version 3"),
            "{error}"
        );
        assert_eq!(contents(&db), before);
        assert_eq!(version(&db), 2);
        // Asked under a membership that changed since (a member was added
        // after the leader asked): nothing changes, not even for a member
        // that does not implement it.
        let membership = |index| {
            let node = crate::types::FerryNode::from("127.0.0.1:1".to_owned());
            let membership = openraft::Membership::new(
                vec![BTreeSet::from([1, 2])],
                std::collections::BTreeMap::from([(1, node.clone()), (2, node)]),
            )
            .unwrap();
            Entry::new_membership(log_id(index), membership)
        };
        let answers = apply(&db, &[membership(4), set_under(5, 3, 0)]);
        assert!(!answers[1].succeeded);
        assert_eq!(version(&db), 2);
        let answers = implementing(&db, &[membership(6), set_under(7, 3, 4)], 2);
        assert!(answers.is_ok(), "a stale raise is not applied: {answers:?}");
        assert_eq!(version(&db), 2);
        // Under the membership it names, whether applied in the same run
        // or before it, the raise applies.
        implementing(&db, &[set_under(8, 3, 6)], 3).unwrap();
        assert_eq!(version(&db), 3);
        implementing(&db, &[membership(9), set_under(10, 4, 9)], 4).unwrap();
        assert_eq!(version(&db), 4);
    }
}
