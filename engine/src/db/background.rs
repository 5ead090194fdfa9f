//! Background work: flushing memtables, compacting levels, periodic fsync.
//!
//! One thread flushes and one compacts, so a long compaction never holds
//! up the flush that writers may be waiting for. Both sleep on
//! `Inner::work` and stop when the database closes or a background error
//! is recorded (after which the database refuses writes until reopened:
//! continuing after a failed flush could acknowledge writes that a later
//! crash loses).

use super::Inner;
use crate::checkpoint::periodic::PeriodicCheckpoints;
use crate::compaction::{job, leveled, Compaction};
use crate::manifest::version::{Version, NUM_LEVELS};
use crate::options::Durability;
use crate::stats::Counters;
use crate::wal::segment_path;
use crate::Result;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub(crate) fn start(inner: &Arc<Inner>) {
    let mut threads = inner.threads.lock();
    if inner.options.background_work {
        let db = inner.clone();
        threads.push(spawn("ferry-flush", move || flush_loop(&db)));
        let db = inner.clone();
        threads.push(spawn("ferry-compact", move || compaction_loop(&db)));
    }
    if let Some(settings) = inner.options.periodic_checkpoints.clone() {
        let db = inner.clone();
        threads.push(spawn("ferry-checkpoint", move || {
            checkpoint_loop(&db, &settings)
        }));
    }
    if let Durability::Periodic(interval) = inner.options.durability {
        let db = inner.clone();
        threads.push(spawn("ferry-wal-sync", move || sync_loop(&db, interval)));
    }
}

fn spawn(name: &str, body: impl FnOnce() + Send + 'static) -> std::thread::JoinHandle<()> {
    std::thread::Builder::new()
        .name(name.to_owned())
        .spawn(body)
        .expect("spawning a background thread")
}

fn flush_loop(db: &Inner) {
    loop {
        {
            let mut state = db.state.lock();
            while !state.closing && state.background_error.is_none() && state.imm.is_empty() {
                db.work.wait(&mut state);
            }
            if state.closing || state.background_error.is_some() {
                return;
            }
        }
        if let Err(error) = db.flush_oldest_immutable() {
            db.set_background_error(&error);
            return;
        }
    }
}

fn compaction_loop(db: &Inner) {
    loop {
        {
            let mut state = db.state.lock();
            while !state.closing
                && state.background_error.is_none()
                && leveled::most_urgent(&state.version, &db.options).1 < 1.0
            {
                db.work.wait(&mut state);
            }
            if state.closing || state.background_error.is_some() {
                return;
            }
        }
        match db.compact_once() {
            Ok(true) => {}
            Ok(false) => std::thread::sleep(Duration::from_millis(10)),
            Err(error) => {
                db.set_background_error(&error);
                return;
            }
        }
    }
}

/// Bounds the loss window of `Durability::Periodic`: appended WAL bytes
/// are fsynced at most `interval` after they were written.
fn sync_loop(db: &Inner, interval: Duration) {
    loop {
        let deadline = Instant::now() + interval;
        {
            let mut state = db.state.lock();
            while !state.closing && Instant::now() < deadline {
                db.work.wait_until(&mut state, deadline);
            }
            if state.closing || state.background_error.is_some() {
                // After a failed write the WAL's state is unknown: syncing
                // it again could write buffered bytes twice.
                return;
            }
        }
        let mut wal = db.wal.lock();
        if wal.dirty {
            if let Err(error) = wal.writer.sync() {
                drop(wal);
                db.set_background_error(&error);
                return;
            }
            wal.dirty = false;
            Counters::add(&db.counters.wal_syncs, 1);
        }
    }
}

fn checkpoint_loop(db: &Inner, settings: &PeriodicCheckpoints) {
    let fs = &*db.fs;
    let chain_numbers = |fs: &dyn crate::fs::FileSystem| -> Vec<u64> {
        let mut numbers: Vec<u64> = fs
            .list(&settings.dir)
            .unwrap_or_default()
            .iter()
            .filter_map(|n| n.strip_prefix("chain-")?.parse().ok())
            .collect();
        numbers.sort_unstable();
        numbers
    };
    // Never extend a chain left by an earlier run: start a fresh one.
    let mut chain = chain_numbers(fs).last().copied().unwrap_or(0);
    let mut position = None::<usize>;
    let mut written_at_last = db.counters.user_bytes_written.load(Ordering::Relaxed);
    loop {
        let deadline = Instant::now() + settings.interval;
        {
            let mut state = db.state.lock();
            loop {
                if state.closing {
                    return;
                }
                let written =
                    db.counters.user_bytes_written.load(Ordering::Relaxed) - written_at_last;
                if Instant::now() >= deadline
                    || settings.every_bytes.is_some_and(|limit| written >= limit)
                {
                    break;
                }
                let wake = deadline.min(Instant::now() + Duration::from_millis(50));
                db.work.wait_until(&mut state, wake);
            }
        }
        written_at_last = db.counters.user_bytes_written.load(Ordering::Relaxed);
        let next = match position {
            Some(p) if p < settings.deltas_per_chain => p + 1,
            _ => {
                chain += 1;
                0
            }
        };
        let chain_dir = settings.dir.join(format!("chain-{chain:06}"));
        let target = chain_dir.join(format!("{next:06}"));
        let base = (next > 0).then(|| chain_dir.join(format!("{:06}", next - 1)));
        let taken = fs
            .create_dir_durable(&chain_dir)
            .map_err(|e| crate::Error::io(&chain_dir, e))
            .and_then(|()| db.create_checkpoint(&target, base.as_deref(), &mut |_| {}));
        match taken {
            Ok(_) => {
                position = Some(next);
                Counters::add(&db.counters.checkpoints, 1);
                let chains = chain_numbers(fs);
                let excess = chains.len().saturating_sub(settings.keep_chains);
                for old in &chains[..excess] {
                    let _ = crate::checkpoint::remove_dir_all(
                        fs,
                        &settings.dir.join(format!("chain-{old:06}")),
                    );
                }
            }
            Err(_) => {
                // A closing database fails its flush: not a checkpoint failure.
                if db.state.lock().closing {
                    return;
                }
                Counters::add(&db.counters.checkpoint_failures, 1);
                if next == 0 {
                    // An empty chain must not count when old chains are pruned.
                    let _ = crate::checkpoint::remove_dir_all(fs, &chain_dir);
                }
                position = None;
            }
        }
    }
}

impl Inner {
    /// Writes the oldest immutable memtable to a level-0 table and installs
    /// it. Returns false when there was nothing to flush.
    pub(crate) fn flush_oldest_immutable(&self) -> Result<bool> {
        let _serial = self.flush_lock.lock();
        let (memtable, log_number) = {
            let state = self.state.lock();
            let Some(memtable) = state.imm.front().cloned() else {
                return Ok(false);
            };
            // Every WAL segment before the next memtable's first one holds
            // only data of memtables flushed by the time this edit lands.
            let next = state.imm.get(1).unwrap_or(&state.mem);
            (memtable, next.first_wal_segment())
        };
        let new_number = || self.new_file_number();
        let edit = crate::flush::write_level0(
            &*self.fs,
            &self.dir,
            self.table_options(),
            &memtable,
            self.live_snapshots(),
            log_number,
            &new_number,
        )?;
        let bytes: u64 = edit.added.iter().map(|(_, t)| t.size).sum();
        self.install(edit, |state| {
            let flushed = state.imm.pop_front();
            debug_assert!(flushed.is_some_and(|m| Arc::ptr_eq(&m, &memtable)));
        })?;
        self.delete_wal_before(log_number);
        Counters::add(&self.counters.flushes, 1);
        Counters::add(&self.counters.flush_bytes_written, bytes);
        Ok(true)
    }

    /// Removes WAL segments older than `log_number` (their data is in
    /// tables named by a durable manifest edit).
    pub(crate) fn delete_wal_before(&self, log_number: u64) {
        let Ok(names) = self.fs.list(&self.dir) else {
            return;
        };
        for name in names {
            if let Some(number) = name
                .strip_suffix(".log")
                .and_then(|n| n.parse::<u64>().ok())
            {
                if number < log_number {
                    let _ = self.fs.remove_file(&segment_path(&self.dir, number));
                }
            }
        }
    }

    /// Runs the most urgent compaction, if any.
    pub(crate) fn compact_once(&self) -> Result<bool> {
        let mut pointers = self.compaction.lock();
        let version = self.versions.lock().current();
        let Some(compaction) = leveled::pick(&version, &self.options, &mut pointers) else {
            return Ok(false);
        };
        self.run_compaction(&compaction, &version)?;
        Ok(true)
    }

    /// Compacts `[start, end]` level by level down to the deepest level
    /// holding such keys.
    pub(crate) fn compact_range(&self, start: Option<&[u8]>, end: Option<&[u8]>) -> Result<()> {
        let _pointers = self.compaction.lock();
        let version = self.versions.lock().current();
        let deepest = (0..NUM_LEVELS)
            .rev()
            .find(|&level| version.levels[level].iter().any(|f| f.overlaps(start, end)))
            .unwrap_or(0);
        for level in 0..deepest.clamp(1, NUM_LEVELS - 1) {
            let version = self.versions.lock().current();
            if let Some(compaction) = leveled::for_range(&version, level, start, end) {
                self.run_compaction(&compaction, &version)?;
            }
        }
        Ok(())
    }

    fn run_compaction(&self, compaction: &Compaction, version: &Version) -> Result<()> {
        let new_number = || self.new_file_number();
        let context = job::JobContext {
            fs: &*self.fs,
            dir: &self.dir,
            table_options: self.table_options(),
            target_file_bytes: self.options.target_file_bytes,
            new_number: &new_number,
            snapshots: self.live_snapshots(),
        };
        let result = job::run(compaction, version, &context)?;
        self.install(result.edit, |_| {})?;
        Counters::add(&self.counters.compactions, 1);
        if compaction.is_trivial_move() {
            Counters::add(&self.counters.trivial_moves, 1);
        }
        Counters::add(&self.counters.compaction_bytes_read, result.bytes_read);
        Counters::add(
            &self.counters.compaction_bytes_written,
            result.bytes_written,
        );
        Ok(())
    }
}
