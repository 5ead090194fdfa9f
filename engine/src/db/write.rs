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
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::Thread;
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

/// Where a queued writer's result is delivered, and the thread to wake.
///
/// Each writer has its own: the leader hands a result straight to its
/// writer, which takes it without touching the queue's lock. With one
/// shared condition variable and results in the queue, every finished
/// group woke every waiter, and they then queued on the lock one by one to
/// look for their results: on 2 cores, most of a 64-writer group's time.
pub(crate) struct Slot {
    done: AtomicBool,
    result: parking_lot::Mutex<Option<Delivery>>,
    thread: Thread,
}

/// A result, and the group members its writer wakes when it takes it.
struct Delivery {
    result: Result<SeqNo>,
    wakes: [Option<Arc<Slot>>; WAKE_FAN_OUT],
}

/// Members each woken writer wakes in turn. Waking a parked thread is a
/// system call and, on a VM, often an interrupt to another CPU: a leader
/// waking 63 writers itself spent most of a group's time on one CPU doing
/// only that, while the woken ran on the other. As a tree, the wake-ups
/// spread over every CPU the woken writers run on.
const WAKE_FAN_OUT: usize = 2;

impl Slot {
    fn new() -> Arc<Self> {
        Arc::new(Slot {
            done: AtomicBool::new(false),
            result: parking_lot::Mutex::new(None),
            thread: std::thread::current(),
        })
    }

    /// Stores the result and wakes its writer.
    fn deliver(&self, result: Result<SeqNo>) {
        self.post(result, Default::default());
        self.thread.unpark();
    }

    /// Stores the result without waking its writer. Every slot in `wakes`
    /// must already hold its result: its writer may be woken at once.
    fn post(&self, result: Result<SeqNo>, wakes: [Option<Arc<Slot>>; WAKE_FAN_OUT]) {
        debug_assert!(wakes
            .iter()
            .flatten()
            .all(|slot| slot.done.load(Ordering::Relaxed)));
        *self.result.lock() = Some(Delivery { result, wakes });
        self.done.store(true, Ordering::Release);
    }

    /// The result, once delivered; wakes the members this writer is to wake.
    fn take(&self) -> Option<Result<SeqNo>> {
        if !self.done.load(Ordering::Acquire) {
            return None;
        }
        let delivery = self.result.lock().take()?;
        for slot in delivery.wakes.into_iter().flatten() {
            slot.thread.unpark();
        }
        Some(delivery.result)
    }
}

/// Delivers a group's results as a wake-up tree: the leader wakes the
/// first [`WAKE_FAN_OUT`] members, and member `i` wakes members
/// `(i + 1) * WAKE_FAN_OUT ..` when it takes its result.
fn deliver_group(slots: &[Arc<Slot>], results: Vec<Result<SeqNo>>) {
    debug_assert_eq!(slots.len(), results.len());
    // Children before parents, so that a woken writer's children already
    // hold their results (a writer may find its result before any wake-up).
    for (i, result) in results.into_iter().enumerate().rev() {
        let mut wakes: [Option<Arc<Slot>>; WAKE_FAN_OUT] = Default::default();
        for (k, wake) in wakes.iter_mut().enumerate() {
            *wake = slots.get((i + 1) * WAKE_FAN_OUT + k).cloned();
        }
        slots[i].post(result, wakes);
    }
    for slot in slots.iter().take(WAKE_FAN_OUT) {
        slot.thread.unpark();
    }
}

#[derive(Default)]
pub(crate) struct WriteQueue {
    /// Queued jobs, each with the slot its result goes to.
    pending: VecDeque<(Job, Arc<Slot>)>,
    leader_active: bool,
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
    /// Where the group's results go (empty for a leader alone).
    slots: Vec<Arc<Slot>>,
    finished: bool,
}

impl Drop for LeaderGuard<'_> {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        // Refuse further writes before the next leader can start: the
        // WAL may hold part of this group.
        self.inner
            .set_background_error(&Error::Background("the write leader panicked".into()));
        self.inner.hand_over();
        for slot in &self.slots {
            slot.deliver(Err(Error::Background("the write leader panicked".into())));
        }
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
        if !queue.leader_active && queue.pending.is_empty() {
            // Uncontended: lead a group of one without a trip through the
            // queue. Writers arriving meanwhile queue up behind us and the
            // next leader takes them as one group.
            queue.leader_active = true;
            drop(queue);
            let mut guard = LeaderGuard {
                inner: self,
                slots: Vec::new(),
                finished: false,
            };
            let mut results = self.commit(vec![job]);
            guard.finished = true;
            self.hand_over();
            return results.pop().unwrap_or(Err(Error::Closed));
        }
        let slot = Slot::new();
        queue.pending.push_back((job, slot.clone()));
        loop {
            if !queue.leader_active && !queue.pending.is_empty() {
                queue.leader_active = true;
                let (group, slots) = take_group(&mut queue.pending);
                drop(queue);
                let mut guard = LeaderGuard {
                    inner: self,
                    slots,
                    finished: false,
                };
                let results = self.commit(group);
                guard.finished = true;
                // Hand the role on before waking the group, so that the
                // next group's WAL write and fsync overlap the wake-ups.
                self.hand_over();
                deliver_group(&guard.slots, results);
            } else {
                drop(queue);
            }
            if let Some(result) = slot.take() {
                return result;
            }
            // A buffered group commits in microseconds, far less than a
            // park and wake-up costs: spin briefly on our slot before
            // sleeping. Not while the leader fsyncs: that takes far longer,
            // and spinning would take the CPU from the writers that should
            // be joining the next group. One spinner at a time: with many
            // writers on few cores, more would only slow the leader down.
            let spin = may_spin
                && !self.leader_syncing.load(Ordering::Acquire)
                && self
                    .writer_spinning
                    .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
                    .is_ok();
            if spin {
                for _ in 0..SPINS_BEFORE_PARKING {
                    if self.leader_syncing.load(Ordering::Relaxed)
                        || slot.done.load(Ordering::Acquire)
                    {
                        break;
                    }
                    std::hint::spin_loop();
                }
                self.writer_spinning.store(false, Ordering::Release);
            } else {
                // Woken by our result, or by `hand_over` when we are first
                // in line to lead; an unpark that came first makes this
                // return at once, and a spurious return only loops.
                std::thread::park();
            }
            if let Some(result) = slot.take() {
                return result;
            }
            queue = self.queue.lock();
            if queue.leader_active && spin {
                // Spun in vain: sleep until there is news.
                drop(queue);
                std::thread::park();
                queue = self.queue.lock();
            }
        }
    }

    /// Gives up the leader role: wakes a shutdown or pause waiting for it,
    /// and the writer first in line, which leads next.
    fn hand_over(&self) {
        let mut queue = self.queue.lock();
        queue.leader_active = false;
        self.queue_changed.notify_all();
        let next = queue.pending.front().map(|(_, slot)| slot.clone());
        drop(queue);
        if let Some(next) = next {
            next.thread.unpark();
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
        /// Gives the role back even if `f` unwinds, so writers and
        /// `close` are not left waiting forever.
        struct Paused<'a>(&'a Inner);
        impl Drop for Paused<'_> {
            fn drop(&mut self) {
                self.0.hand_over();
            }
        }
        let _paused = Paused(self);
        f()
    }

    /// Blocks until no write group is in flight (used by shutdown).
    pub(crate) fn wait_for_write_leader(&self) {
        let mut queue = self.queue.lock();
        while queue.leader_active {
            self.queue_changed.wait(&mut queue);
        }
    }

    /// Commits a group; the results are in the group's order.
    fn commit(&self, group: Vec<Job>) -> Vec<Result<SeqNo>> {
        if let [Job::SwitchMemtable] = group.as_slice() {
            let result = self.make_room(0, true).map(|_| self.visible_sequence());
            return vec![result];
        }
        let bytes: usize = group
            .iter()
            .map(|job| match job {
                Job::Write { batch, .. } => batch.encoded_len(),
                Job::SwitchMemtable => 0,
            })
            .sum();
        match self.commit_writes(&group, bytes) {
            Ok(sequences) => {
                debug_assert_eq!(sequences.len(), group.len(), "a group never mixes kinds");
                sequences.into_iter().map(Ok).collect()
            }
            Err(error) => group.iter().map(|_| Err(error.for_group())).collect(),
        }
    }

    fn commit_writes(&self, group: &[Job], bytes: usize) -> Result<Vec<SeqNo>> {
        let memtable = self.make_room(bytes, false)?;
        let first = self.last_sequence.load(Ordering::Relaxed) + 1;
        // A key's trailer holds 56 bits of sequence: past that, a new
        // version would sort as an old one.
        let count: u64 = group
            .iter()
            .map(|job| match job {
                Job::Write { batch, .. } => batch.len() as u64,
                _ => 0,
            })
            .sum();
        if first.saturating_add(count) > crate::key::MAX_SEQUENCE {
            return Err(Error::InvalidOptions(format!(
                "sequence numbers exhausted: {count} writes after sequence {} would pass {}",
                first - 1,
                crate::key::MAX_SEQUENCE
            )));
        }
        let mut next = first;
        let mut sequences = Vec::with_capacity(group.len());
        let mut need_sync = false;
        let mut user_bytes = 0;
        {
            let mut wal = self.wal.lock();
            let appended = (|| -> Result<()> {
                for job in group {
                    let Job::Write { batch, sync } = job else {
                        continue;
                    };
                    let (count, ops) = batch.wal_payload();
                    wal.writer.append_parts(next, &[&count, ops])?;
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
        // The whole group at once: the memtable searches for the places of
        // several entries together (see `Memtable::insert_all`).
        let mut entries = Vec::with_capacity((next - first) as usize);
        for job in group {
            let Job::Write { batch, .. } = job else {
                continue;
            };
            for op in batch.ops().flatten() {
                let sequence = first + entries.len() as u64;
                entries.push((op.key, sequence, op.kind, op.value));
            }
        }
        memtable.insert_all(&entries);
        debug_assert_eq!(first + entries.len() as u64, next);
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
/// up to the byte limit, with the slots their results go to.
fn take_group(pending: &mut VecDeque<(Job, Arc<Slot>)>) -> (Vec<Job>, Vec<Arc<Slot>>) {
    let mut group = Vec::new();
    let mut slots = Vec::new();
    let mut bytes = 0;
    while let Some((job, _)) = pending.front() {
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
        if let Some((job, slot)) = pending.pop_front() {
            group.push(job);
            slots.push(slot);
        }
        if is_switch {
            break;
        }
    }
    (group, slots)
}

#[cfg(test)]
mod tests {
    use super::{deliver_group, Slot};
    use crate::{Db, Durability, Options, WriteBatch, WriteOptions};

    /// The wake-up tree reaches every member of groups of every shape, each
    /// with its own result, whether a member is parked already or still
    /// on its way to park.
    #[test]
    fn a_delivered_group_wakes_every_member_with_its_result() {
        for size in [1usize, 2, 3, 4, 5, 7, 8, 31, 64, 100] {
            let (slots_tx, slots_rx) = std::sync::mpsc::channel();
            let members: Vec<_> = (0..size)
                .map(|i| {
                    let slots_tx = slots_tx.clone();
                    std::thread::spawn(move || {
                        let slot = Slot::new();
                        slots_tx.send((i, slot.clone())).unwrap();
                        let patience = std::time::Duration::from_secs(10);
                        loop {
                            if let Some(result) = slot.take() {
                                return (i, result.unwrap());
                            }
                            let parked = std::time::Instant::now();
                            std::thread::park_timeout(patience);
                            assert!(
                                parked.elapsed() < patience,
                                "member {i} of {size} was never woken"
                            );
                        }
                    })
                })
                .collect();
            let mut slots: Vec<_> = (0..size).map(|_| slots_rx.recv().unwrap()).collect();
            slots.sort_by_key(|(i, _)| *i);
            if size % 2 == 0 {
                // Let most members park before their results exist.
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            let results = (0..size).map(|i| Ok(1000 + i as u64)).collect();
            let slots: Vec<_> = slots.into_iter().map(|(_, slot)| slot).collect();
            deliver_group(&slots, results);
            for member in members {
                let (i, sequence) = member.join().unwrap();
                assert_eq!(sequence, 1000 + i as u64, "group of {size}");
            }
        }
    }

    /// Many writers, synced and buffered, with memtable switches between
    /// their groups: every write is answered once, with its own sequence,
    /// and is readable afterwards; and writers did share groups.
    #[test]
    fn group_commit_answers_every_writer_once() {
        const WRITERS: u64 = 16;
        const WRITES: u64 = 300;
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(
            dir.path(),
            Options {
                write_buffer_bytes: 32 << 10,
                ..Options::default()
            },
        )
        .unwrap();
        let sync = WriteOptions {
            durability: Some(Durability::Sync),
        };
        let sequences = std::sync::Mutex::new(Vec::new());
        std::thread::scope(|scope| {
            for writer in 0..WRITERS {
                let (db, sequences, sync) = (&db, &sequences, &sync);
                scope.spawn(move || {
                    let mut last = 0;
                    for i in 0..WRITES {
                        let mut batch = WriteBatch::new();
                        batch.put(format!("{writer}/{i}"), format!("{i}"));
                        let sequence = if i % 5 == 0 {
                            db.write_opt(batch, sync).unwrap()
                        } else {
                            db.write(batch).unwrap()
                        };
                        assert!(sequence > last, "a writer's sequences grow");
                        last = sequence;
                        sequences.lock().unwrap().push(sequence);
                    }
                });
            }
            let db = &db;
            scope.spawn(move || {
                for _ in 0..20 {
                    db.flush().unwrap();
                }
            });
        });
        let mut sequences = sequences.into_inner().unwrap();
        sequences.sort_unstable();
        sequences.dedup();
        assert_eq!(
            sequences.len() as u64,
            WRITERS * WRITES,
            "one sequence per write"
        );
        for writer in 0..WRITERS {
            for i in 0..WRITES {
                let value = db.get(format!("{writer}/{i}")).unwrap();
                assert_eq!(value, Some(format!("{i}").into_bytes()));
            }
        }
        let stats = db.statistics();
        assert_eq!(stats.writes, WRITERS * WRITES);
        assert!(
            stats.write_groups < stats.writes,
            "no group held two writes: {stats:?}"
        );
    }
}
