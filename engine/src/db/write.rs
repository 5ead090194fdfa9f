//! The write path: group commit through a queue with one leader at a time.
//!
//! A writer enqueues its batch. If no leader is active it becomes the
//! leader: it takes the queued batches (up to [`MAX_GROUP_BYTES`]), gives
//! them consecutive sequences, appends them to the WAL in one write,
//! fsyncs once if any of them asked for `Sync`, inserts them into the
//! memtable, publishes the new visible sequence and wakes the group.
//! Everyone else waits for its result. Only the leader ever switches the
//! memtable or the WAL segment, so no write can land in a memtable that a
//! flush is already reading.

use super::{Inner, WalState};
use crate::batch::BatchOp;
use crate::error::IoContext;
use crate::key::SeqNo;
use crate::memtable::Memtable;
use crate::options::{Durability, WriteOptions};
use crate::stats::Counters;
use crate::wal::{segment_path, LogKind, LogWriter};
use crate::{Error, Result, WriteBatch};
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Spin iterations (a few microseconds) a waiting writer polls for its
/// group before it parks.
const SPINS_BEFORE_PARKING: u32 = 4000;

/// Upper bound on the bytes one group commits (a single larger batch
/// still goes through, alone).
const MAX_GROUP_BYTES: usize = 4 << 20;

pub(crate) enum Job {
    Write {
        batch: WriteBatch,
        sync: bool,
    },
    /// Seal the memtable so that a flush can take it (from `Db::flush`).
    SwitchMemtable,
}

#[derive(Default)]
pub(crate) struct WriteQueue {
    pending: VecDeque<(u64, Job)>,
    results: HashMap<u64, Result<SeqNo>>,
    leader_active: bool,
    next_id: u64,
}

impl Error {
    /// A copy of an error for every member of a failed group.
    fn for_group(&self) -> Error {
        match self {
            Error::Io { path, source } => Error::Io {
                path: path.clone(),
                source: std::io::Error::new(source.kind(), source.to_string()),
            },
            Error::Corruption {
                path,
                offset,
                reason,
            } => Error::Corruption {
                path: path.clone(),
                offset: *offset,
                reason: reason.clone(),
            },
            Error::Closed => Error::Closed,
            Error::Background(message) => Error::Background(message.clone()),
            other => Error::Background(other.to_string()),
        }
    }
}

/// Held by the write leader. If the leader unwinds (a bug), the guard fails
/// its group and gives up the role, so that the other writers and `close`
/// are not left waiting forever.
struct LeaderGuard<'a> {
    inner: &'a Inner,
    group: Vec<u64>,
    finished: bool,
}

impl Drop for LeaderGuard<'_> {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        let mut queue = self.inner.queue.lock();
        for id in &self.group {
            queue.results.insert(
                *id,
                Err(Error::Background("the write leader panicked".into())),
            );
        }
        queue.leader_active = false;
        self.inner.queue_changed.notify_all();
        drop(queue);
        self.inner
            .set_background_error(&Error::Background("the write leader panicked".into()));
    }
}

impl Inner {
    pub(crate) fn write(&self, batch: WriteBatch, options: &WriteOptions) -> Result<SeqNo> {
        self.check_limits(&batch)?;
        let durability = options.durability.unwrap_or(self.options.durability);
        if batch.is_empty() {
            self.check_open()?;
            return Ok(self.visible_sequence());
        }
        self.submit(Job::Write {
            batch,
            sync: durability == Durability::Sync,
        })
    }

    fn check_limits(&self, batch: &WriteBatch) -> Result<()> {
        // One batch is one WAL record, whose format caps its payload.
        if batch.encoded_len() > crate::wal::record::MAX_PAYLOAD_LEN {
            return Err(Error::TooLarge {
                what: "batch",
                size: batch.encoded_len(),
                limit: crate::wal::record::MAX_PAYLOAD_LEN,
            });
        }
        for op in batch.ops() {
            let Some(BatchOp { key, value, .. }) = op else {
                return Err(Error::InvalidOptions("malformed write batch".into()));
            };
            if key.len() > self.options.max_key_bytes {
                return Err(Error::TooLarge {
                    what: "key",
                    size: key.len(),
                    limit: self.options.max_key_bytes,
                });
            }
            if value.len() > self.options.max_value_bytes {
                return Err(Error::TooLarge {
                    what: "value",
                    size: value.len(),
                    limit: self.options.max_value_bytes,
                });
            }
        }
        Ok(())
    }

    fn submit(&self, job: Job) -> Result<SeqNo> {
        // Only a buffered write is worth spinning for: anything else waits
        // for an fsync or a memtable switch, far longer than a spin.
        let may_spin = matches!(job, Job::Write { sync: false, .. });
        let mut queue = self.queue.lock();
        let id = queue.next_id;
        queue.next_id += 1;
        if !queue.leader_active && queue.pending.is_empty() {
            // Uncontended: lead a group of one without a trip through the
            // queue. Writers arriving meanwhile queue up behind us and the
            // next leader takes them as one group.
            queue.leader_active = true;
            drop(queue);
            let mut guard = LeaderGuard {
                inner: self,
                group: vec![id],
                finished: false,
            };
            let mut results = self.commit(vec![(id, job)]);
            guard.finished = true;
            let mut queue = self.queue.lock();
            queue.leader_active = false;
            self.groups_committed
                .fetch_add(1, std::sync::atomic::Ordering::Release);
            // Wakes queued writers and a shutdown waiting for the leader.
            self.queue_changed.notify_all();
            drop(queue);
            return results
                .pop()
                .map_or(Err(Error::Closed), |(_, result)| result);
        }
        queue.pending.push_back((id, job));
        loop {
            if let Some(result) = queue.results.remove(&id) {
                return result;
            }
            if !queue.leader_active {
                queue.leader_active = true;
                let group = take_group(&mut queue.pending);
                drop(queue);
                let mut guard = LeaderGuard {
                    inner: self,
                    group: group.iter().map(|(id, _)| *id).collect(),
                    finished: false,
                };
                let results = self.commit(group);
                guard.finished = true;
                queue = self.queue.lock();
                queue.results.extend(results);
                queue.leader_active = false;
                self.groups_committed
                    .fetch_add(1, std::sync::atomic::Ordering::Release);
                self.queue_changed.notify_all();
                continue;
            }
            // A buffered group commits in microseconds, far less than a
            // park and wake-up costs: spin briefly on the group counter
            // before sleeping on the condition variable. Not while the
            // leader fsyncs: that takes far longer, and spinning would take
            // the CPU from the writers that should be joining the next group.
            // One spinner at a time: with many writers on few cores, more
            // would only slow the leader down.
            let spin = may_spin
                && !self
                    .leader_syncing
                    .load(std::sync::atomic::Ordering::Acquire)
                && self
                    .writer_spinning
                    .compare_exchange(
                        false,
                        true,
                        std::sync::atomic::Ordering::Acquire,
                        std::sync::atomic::Ordering::Relaxed,
                    )
                    .is_ok();
            if !spin {
                self.queue_changed.wait(&mut queue);
                continue;
            }
            let seen = self
                .groups_committed
                .load(std::sync::atomic::Ordering::Acquire);
            drop(queue);
            for _ in 0..SPINS_BEFORE_PARKING {
                if self
                    .leader_syncing
                    .load(std::sync::atomic::Ordering::Relaxed)
                {
                    break;
                }
                if self
                    .groups_committed
                    .load(std::sync::atomic::Ordering::Acquire)
                    != seen
                {
                    break;
                }
                std::hint::spin_loop();
            }
            self.writer_spinning
                .store(false, std::sync::atomic::Ordering::Release);
            queue = self.queue.lock();
            if queue.results.contains_key(&id) || !queue.leader_active {
                continue;
            }
            self.queue_changed.wait(&mut queue);
        }
    }

    /// Runs `f` while no write can commit: it takes the leader role, so
    /// writers queue until `f` returns.
    pub(crate) fn with_writes_paused<T>(&self, f: impl FnOnce() -> T) -> T {
        {
            let mut queue = self.queue.lock();
            while queue.leader_active {
                self.queue_changed.wait(&mut queue);
            }
            queue.leader_active = true;
        }
        let result = f();
        let mut queue = self.queue.lock();
        queue.leader_active = false;
        self.queue_changed.notify_all();
        result
    }

    /// Blocks until no write group is in flight (used by shutdown).
    pub(crate) fn wait_for_write_leader(&self) {
        let mut queue = self.queue.lock();
        while queue.leader_active {
            self.queue_changed.wait(&mut queue);
        }
    }

    fn commit(&self, group: Vec<(u64, Job)>) -> Vec<(u64, Result<SeqNo>)> {
        if let [(id, Job::SwitchMemtable)] = group.as_slice() {
            let result = self.make_room(0, true).map(|_| self.visible_sequence());
            return vec![(*id, result)];
        }
        let bytes: usize = group
            .iter()
            .map(|(_, job)| match job {
                Job::Write { batch, .. } => batch.encoded_len(),
                Job::SwitchMemtable => 0,
            })
            .sum();
        match self.commit_writes(&group, bytes) {
            Ok(sequences) => group
                .iter()
                .map(|(id, _)| *id)
                .zip(sequences.into_iter().map(Ok))
                .collect(),
            Err(error) => group
                .iter()
                .map(|(id, _)| (*id, Err(error.for_group())))
                .collect(),
        }
    }

    fn commit_writes(&self, group: &[(u64, Job)], bytes: usize) -> Result<Vec<SeqNo>> {
        let memtable = self.make_room(bytes, false)?;
        let first = self.last_sequence.load(Ordering::Relaxed) + 1;
        let mut next = first;
        let mut sequences = Vec::with_capacity(group.len());
        let mut need_sync = false;
        let mut user_bytes = 0;
        {
            let mut wal = self.wal.lock();
            let mut payload = Vec::with_capacity(bytes);
            let appended = (|| -> Result<()> {
                for (_, job) in group {
                    let Job::Write { batch, sync } = job else {
                        continue;
                    };
                    payload.clear();
                    batch.encode_into(&mut payload);
                    wal.writer.append(next, &payload)?;
                    next += batch.len() as u64;
                    sequences.push(next - 1);
                    need_sync |= *sync;
                    user_bytes += batch.user_bytes();
                }
                if need_sync {
                    self.leader_syncing
                        .store(true, std::sync::atomic::Ordering::Release);
                    let synced = wal.writer.sync();
                    self.leader_syncing
                        .store(false, std::sync::atomic::Ordering::Release);
                    synced?;
                    wal.dirty = false;
                    Counters::add(&self.counters.wal_syncs, 1);
                } else {
                    wal.writer.flush()?;
                    wal.dirty = true;
                }
                Ok(())
            })();
            if let Err(error) = appended {
                // The WAL may now end in a partial group: refuse further
                // writes until a reopen has recovered it. (The state lock
                // comes before the WAL lock: release it first.)
                drop(wal);
                self.set_background_error(&error);
                return Err(error);
            }
            Counters::add(
                &self.counters.wal_bytes_written,
                (bytes + group.len() * crate::wal::record::RECORD_HEADER_LEN) as u64,
            );
        }
        let mut sequence = first;
        for (_, job) in group {
            let Job::Write { batch, .. } = job else {
                continue;
            };
            for op in batch.ops().flatten() {
                memtable.insert(op.key, sequence, op.kind, op.value);
                sequence += 1;
            }
        }
        debug_assert_eq!(sequence, next);
        self.last_sequence.store(next - 1, Ordering::Relaxed);
        self.publish_sequence(next - 1);
        Counters::add(&self.counters.user_bytes_written, user_bytes);
        Counters::add(&self.counters.write_groups, 1);
        Counters::add(&self.counters.writes, sequences.len() as u64);
        Ok(sequences)
    }

    /// Makes sure the memtable has room, switching it when full (or when
    /// `force` and it is not empty) and applying backpressure: one short
    /// delay when level 0 is filling up, a wait when flushes or level 0 are
    /// too far behind. Returns the memtable to insert into.
    fn make_room(&self, bytes: usize, force: bool) -> Result<Arc<Memtable>> {
        let background = self.options.background_work;
        let mut delayed = false;
        let mut force = force;
        let mut state = self.state.lock();
        loop {
            if let Some(message) = &state.background_error {
                return Err(Error::Background(message.clone()));
            }
            if state.closing {
                return Err(Error::Closed);
            }
            let level0 = state.version.levels[0].len();
            if background && !delayed && level0 >= self.options.level0_slowdown_trigger {
                drop(state);
                let started = Instant::now();
                std::thread::sleep(Duration::from_millis(1));
                Counters::add(&self.counters.write_slowdowns, 1);
                Counters::add(
                    &self.counters.stall_micros,
                    started.elapsed().as_micros() as u64,
                );
                delayed = true;
                state = self.state.lock();
                continue;
            }
            let full = state.mem.approximate_bytes() + bytes > self.options.write_buffer_bytes
                && !state.mem.is_empty();
            if !full && (!force || state.mem.is_empty()) {
                return Ok(state.mem.clone());
            }
            if state.imm.len() >= self.options.max_immutable_memtables
                || (background && level0 >= self.options.level0_stop_trigger)
            {
                if !background {
                    drop(state);
                    self.flush_oldest_immutable()?;
                    state = self.state.lock();
                    continue;
                }
                let started = Instant::now();
                Counters::add(&self.counters.write_stops, 1);
                self.work.wait_for(&mut state, Duration::from_millis(100));
                Counters::add(
                    &self.counters.stall_micros,
                    started.elapsed().as_micros() as u64,
                );
                continue;
            }
            drop(state);
            self.switch_memtable()?;
            force = false;
            state = self.state.lock();
        }
    }

    /// Starts a new WAL segment and memtable; the old memtable joins the
    /// flush queue. Called by the write leader only.
    fn switch_memtable(&self) -> Result<()> {
        let number = self.new_file_number();
        let switched = (|| -> Result<()> {
            let mut wal = self.wal.lock();
            // The old segment is complete: make it durable *before* the next
            // one exists on disk, so that only the newest segment can ever
            // end in a torn record (recovery treats damage in any other
            // segment as corruption).
            // `finish` also gives back the space it reserved past its last
            // record: only the last segment may end in reserved zeros.
            wal.writer.finish()?;
            Counters::add(&self.counters.wal_syncs, 1);
            let path = segment_path(&self.dir, number);
            let writer = LogWriter::create_reserving(&*self.fs, &path, LogKind::Wal)?;
            self.fs.sync_dir(&self.dir).at(&self.dir)?;
            *wal = WalState {
                writer,
                dirty: false,
            };
            Ok(())
        })();
        if let Err(error) = switched {
            self.set_background_error(&error);
            return Err(error);
        }
        let mut state = self.state.lock();
        let old = std::mem::replace(
            &mut state.mem,
            Arc::new(Memtable::new(number, self.options.write_buffer_bytes)),
        );
        state.imm.push_back(old);
        state.refresh();
        self.work.notify_all();
        Ok(())
    }

    /// Seals the memtable and waits until every sealed memtable is flushed.
    pub(crate) fn flush(&self) -> Result<()> {
        self.submit(Job::SwitchMemtable)?;
        if !self.options.background_work {
            while self.flush_oldest_immutable()? {}
            return Ok(());
        }
        let mut state = self.state.lock();
        // Wait for the newest sealed memtable (the one this call sealed, or
        // a later one) to be flushed; flushes go in order, so every earlier
        // one is then flushed too. Waiting for an empty queue instead could
        // wait forever under a steady write load.
        let Some(sealed) = state.imm.back().cloned() else {
            return Ok(());
        };
        loop {
            if let Some(message) = &state.background_error {
                return Err(Error::Background(message.clone()));
            }
            if !state.imm.iter().any(|m| Arc::ptr_eq(m, &sealed)) {
                return Ok(());
            }
            if state.closing {
                return Err(Error::Closed);
            }
            self.work.wait(&mut state);
        }
    }
}

/// Takes the next group: one memtable switch alone, or consecutive writes
/// up to the byte limit.
fn take_group(pending: &mut VecDeque<(u64, Job)>) -> Vec<(u64, Job)> {
    let mut group = Vec::new();
    let mut bytes = 0;
    while let Some((_, job)) = pending.front() {
        let is_switch = matches!(job, Job::SwitchMemtable);
        if !group.is_empty() && is_switch {
            break;
        }
        if let Job::Write { batch, .. } = job {
            if !group.is_empty() && bytes + batch.encoded_len() > MAX_GROUP_BYTES {
                break;
            }
            bytes += batch.encoded_len();
        }
        if let Some(entry) = pending.pop_front() {
            group.push(entry);
        }
        if is_switch {
            break;
        }
    }
    group
}
