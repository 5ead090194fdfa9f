//! Applying committed commands to the engine.
//!
//! A run of entries becomes one engine write batch; reads inside the run see
//! the run's own earlier writes through an overlay, so the result is the same
//! as applying entry by entry.

use super::changes::Change;
use super::keys::{self, ClientRecord, Record};
use crate::types::{
    Command, Compare, CompareOp, CompareTarget, Entry, LogId, Op, Response, StoredMembership,
};
use ferry_engine::{Db, WriteBatch};
use openraft::entry::RaftEntry;
use openraft::EntryPayload;
use std::collections::HashMap;
use std::io;

/// Answers kept per client at most. A client that keeps its sequences
/// within a smaller window of its oldest unanswered write (the SDK keeps
/// 512) never has an answer it may still retry dropped; past the cap the
/// oldest go, which only a client breaking that rule can notice.
const MAX_ANSWERS_PER_CLIENT: usize = 1024;
/// A client silent for this many revisions is forgotten; its later retries
/// of old writes would be applied again.
pub(crate) const CLIENT_EXPIRY_REVISIONS: u64 = 1_000_000;
const CLIENT_SWEEP_EVERY: u64 = 10_000;

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
}

/// Applies `entries` (consecutive, after what `db` holds) on top of `db`
/// without writing: the batch also carries the applied marker, the new
/// membership and the latest command time, so that writing it moves the
/// state and its description together. The state machine and backup
/// restore both apply through here, which is what makes a restored state
/// equal to the replicas' state at the same index.
pub(crate) fn apply_entries<'e>(
    db: &Db,
    entries: impl IntoIterator<Item = &'e Entry>,
) -> io::Result<AppliedRun> {
    let mut overlay = Overlay::new(db);
    let time_before: u64 = match overlay.get(keys::TIME)? {
        Some(bytes) => postcard::from_bytes(&bytes).map_err(io::Error::other)?,
        None => 0,
    };
    let mut time = time_before;
    let mut membership = None;
    let mut applied = None;
    let mut responses = Vec::new();
    for entry in entries {
        let log_id = entry.log_id();
        let response = match &entry.payload {
            EntryPayload::Normal(command) => {
                time = time.max(command.time_ms);
                overlay.apply(command, log_id.index)?
            }
            EntryPayload::Blank => Response {
                revision: log_id.index,
                succeeded: true,
                ..Response::default()
            },
            EntryPayload::Membership(m) => {
                membership = Some(StoredMembership::new(Some(log_id), m.clone()));
                Response {
                    revision: log_id.index,
                    succeeded: true,
                    ..Response::default()
                }
            }
        };
        overlay.sweep_clients(log_id.index)?;
        applied = Some(log_id);
        responses.push(response);
    }
    overlay.put(
        keys::APPLIED.to_vec(),
        postcard::to_stdvec(&applied).map_err(io::Error::other)?,
    );
    if let Some(membership) = &membership {
        overlay.put(
            keys::MEMBERSHIP.to_vec(),
            postcard::to_stdvec(membership).map_err(io::Error::other)?,
        );
    }
    if time > time_before {
        overlay.put(
            keys::TIME.to_vec(),
            postcard::to_stdvec(&time).map_err(io::Error::other)?,
        );
    }
    let (batch, changes) = overlay.finish()?;
    Ok(AppliedRun {
        batch,
        changes,
        responses,
        applied,
        membership,
    })
}

fn decode_client(bytes: &[u8]) -> io::Result<ClientRecord> {
    postcard::from_bytes(bytes)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("client record: {e}")))
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
    /// Client records read or changed in this run, as they are now.
    clients: HashMap<u64, ClientRecord>,
    /// Clients whose record changed (written at the end of the run).
    dirty: std::collections::BTreeSet<u64>,
    /// User-visible changes, in order, for the change feed.
    pub(crate) changes: Vec<Change>,
}

impl<'a> Overlay<'a> {
    pub(crate) fn new(db: &'a Db) -> Self {
        Overlay {
            db,
            writes: HashMap::new(),
            clients: HashMap::new(),
            dirty: std::collections::BTreeSet::new(),
            changes: Vec::new(),
        }
    }

    /// The run's writes as one batch (one operation per key: its final
    /// state), and its changes.
    fn finish(mut self) -> io::Result<(WriteBatch, Vec<Change>)> {
        for client in std::mem::take(&mut self.dirty) {
            let record = &self.clients[&client];
            let bytes = postcard::to_stdvec(record).map_err(io::Error::other)?;
            self.writes.insert(keys::client_key(client), Some(bytes));
        }
        let mut batch = WriteBatch::new();
        for (key, value) in &self.writes {
            match value {
                Some(value) => batch.put(key, value),
                None => batch.delete(key),
            };
        }
        Ok((batch, self.changes))
    }

    pub(crate) fn get(&self, engine_key: &[u8]) -> io::Result<Option<Vec<u8>>> {
        if let Some(value) = self.writes.get(engine_key) {
            return Ok(value.clone());
        }
        self.db.get(engine_key).map_err(io::Error::other)
    }

    pub(crate) fn put(&mut self, engine_key: Vec<u8>, value: Vec<u8>) {
        self.writes.insert(engine_key, Some(value));
    }

    fn delete(&mut self, engine_key: Vec<u8>) {
        self.writes.insert(engine_key, None);
    }

    fn record(&self, key: &[u8]) -> io::Result<Option<Record>> {
        let engine_key = keys::user_key(key);
        match self.get(&engine_key)? {
            None => Ok(None),
            Some(bytes) => Record::decode(&bytes).map(Some).ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("stored value of key {key:?} is not a version-1 record"),
                )
            }),
        }
    }

    /// Applies one command at log index `revision`.
    pub(crate) fn apply(&mut self, command: &Command, revision: u64) -> io::Result<Response> {
        if let Some(request) = command.request {
            let record = self.client_record(request.client)?;
            if let Some(answer) = record.answers.get(&request.sequence) {
                return Ok(answer.clone());
            }
            if request.sequence < record.first_incomplete {
                return Ok(Response {
                    revision,
                    succeeded: false,
                    reads: Vec::new(),
                    rejected: Some(format!(
                        "request {} of client {} was already answered and forgotten",
                        request.sequence, request.client
                    )),
                });
            }
        }
        let mut succeeded = true;
        for compare in &command.compares {
            if !self.holds(compare)? {
                succeeded = false;
                break;
            }
        }
        let ops = if succeeded {
            &command.success
        } else {
            &command.failure
        };
        let mut reads = Vec::new();
        for op in ops {
            match op {
                Op::Put { key, value } => {
                    let previous = self.record(key)?;
                    let record = Record {
                        create_revision: previous.as_ref().map_or(revision, |p| p.create_revision),
                        mod_revision: revision,
                        version: previous.as_ref().map_or(1, |p| p.version + 1),
                        value: value.clone(),
                    };
                    self.put(keys::user_key(key), record.encode());
                    self.changes.push(Change {
                        revision,
                        key: key.clone(),
                        value: Some(record.value),
                        create_revision: record.create_revision,
                        version: record.version,
                    });
                }
                Op::Delete { key } => {
                    if self.record(key)?.is_some() {
                        self.delete(keys::user_key(key));
                        self.changes.push(Change {
                            revision,
                            key: key.clone(),
                            value: None,
                            create_revision: 0,
                            version: 0,
                        });
                    }
                }
                Op::Get { key } => {
                    reads.push(self.record(key)?.map(|r| r.into_key_value(key.clone())));
                }
            }
        }
        let response = Response {
            revision,
            succeeded,
            reads,
            rejected: None,
        };
        if let Some(request) = command.request {
            let record = self.client_record(request.client)?;
            record.first_incomplete = record.first_incomplete.max(request.first_incomplete);
            let floor = record.first_incomplete;
            record.answers.retain(|sequence, _| *sequence >= floor);
            record.answers.insert(request.sequence, response.clone());
            // A client that never reports progress cannot grow its record
            // without bound: the oldest answers go first.
            while record.answers.len() > MAX_ANSWERS_PER_CLIENT {
                record.answers.pop_first();
            }
            record.last_revision = revision;
            self.dirty.insert(request.client);
        }
        Ok(response)
    }

    /// The client's record as of the entries applied so far.
    fn client_record(&mut self, client: u64) -> io::Result<&mut ClientRecord> {
        if !self.clients.contains_key(&client) {
            let record = match self.get(&keys::client_key(client))? {
                None => ClientRecord::default(),
                Some(bytes) => decode_client(&bytes)?,
            };
            self.clients.insert(client, record);
        }
        Ok(self.clients.get_mut(&client).expect("inserted above"))
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
        let mut candidates: std::collections::BTreeSet<u64> =
            self.clients.keys().copied().collect();
        for item in self.db.prefix(keys::CLIENT_PREFIX_KEY) {
            let (key, _) = item.map_err(io::Error::other)?;
            candidates.insert(keys::client_of_key(&key).ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("client record key {key:?}"),
                )
            })?);
        }
        for client in candidates {
            let last_revision = match self.clients.get(&client) {
                Some(record) => record.last_revision,
                None => match self.get(&keys::client_key(client))? {
                    Some(bytes) => decode_client(&bytes)?.last_revision,
                    None => continue,
                },
            };
            // A record loaded in this run but absent (deleted, or a client
            // that only read) is the default record: nothing to forget.
            if last_revision == 0 && !self.dirty.contains(&client) {
                continue;
            }
            if last_revision + CLIENT_EXPIRY_REVISIONS < revision {
                self.clients.remove(&client);
                self.dirty.remove(&client);
                self.delete(keys::client_key(client));
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
        };
        Ok(match compare.op {
            CompareOp::Equal => ordering.is_eq(),
            CompareOp::NotEqual => ordering.is_ne(),
            CompareOp::Less => ordering.is_lt(),
            CompareOp::Greater => ordering.is_gt(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::RequestId;

    fn put(index: u64, client: u64, sequence: u64) -> Entry {
        let leader = openraft::impls::leader_id_adv::LeaderId {
            term: 1,
            node_id: 1,
        };
        let log_id = LogId::new(leader, index);
        Entry::new_normal(
            log_id,
            Command {
                request: Some(RequestId {
                    client,
                    sequence,
                    first_incomplete: sequence,
                }),
                ..Command::batch(vec![Op::Put {
                    key: format!("k{client}").into_bytes(),
                    value: vec![1],
                }])
            },
        )
    }

    fn record(db: &Db, client: u64) -> Option<ClientRecord> {
        db.get(keys::client_key(client))
            .unwrap()
            .map(|b| decode_client(&b).unwrap())
    }

    #[test]
    fn a_silent_client_is_forgotten_and_a_retry_in_the_same_run_is_answered() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path(), Default::default()).unwrap();
        // Client 1 writes twice in one run, the second a retry: one answer.
        let run = apply_entries(&db, &[put(10, 1, 5), put(11, 1, 5)]).unwrap();
        assert_eq!(run.responses[0], run.responses[1]);
        db.write(run.batch).unwrap();
        let kept = record(&db, 1).unwrap();
        assert_eq!((kept.last_revision, kept.answers.len()), (10, 1));

        // Past the expiry, at a sweep point, client 1 is forgotten; client 2,
        // new in that very run, is kept.
        let sweep_at = CLIENT_EXPIRY_REVISIONS + 20_000;
        assert!(sweep_at.is_multiple_of(CLIENT_SWEEP_EVERY));
        let run = apply_entries(&db, &[put(sweep_at - 1, 2, 1), put(sweep_at, 2, 2)]).unwrap();
        db.write(run.batch).unwrap();
        assert!(record(&db, 1).is_none());
        assert_eq!(record(&db, 2).unwrap().last_revision, sweep_at);
    }
}
