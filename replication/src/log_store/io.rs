//! The log store's IO thread: the only writer of segment files.
//!
//! Jobs arrive in the order openraft issued them and are carried out in that
//! order, which gives the serialisation openraft requires of log and vote IO.
//! Appends that queue up while a sync runs are written together and share
//! the next fsync (group commit); their `IOFlushed` callbacks fire only after
//! that fsync returns.

use super::files;
use super::{Location, Shared};
use crate::types::{LogId, TypeConfig, Vote};
use ferry_engine::fs::{FileLock, FileSystem};
use ferry_engine::wal::{read_segment, LogKind, LogWriter, TailPolicy, RECORD_HEADER_LEN};
use openraft::storage::IOFlushed;
use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::mpsc::Receiver;
use std::sync::Arc;
use tokio::sync::oneshot;

pub(crate) type Reply = oneshot::Sender<io::Result<()>>;

/// Log IO slower than this is worth a warning: every append and vote
/// waits behind it (etcd warns of a slow fdatasync likewise), and a stall
/// here is a stall of replication and elections.
const SLOW_IO: std::time::Duration = std::time::Duration::from_millis(100);

fn warn_if_slow(what: &str, started: std::time::Instant) {
    let took = started.elapsed();
    if took >= SLOW_IO {
        tracing::warn!(
            took_ms = took.as_millis() as u64,
            "slow raft log IO: {what}"
        );
    }
}

pub(crate) enum Job {
    Append {
        /// `(index, encoded entry)`, consecutive, following the log's end.
        records: Vec<(u64, Vec<u8>)>,
        callback: IOFlushed<TypeConfig>,
    },
    /// Keep entries up to `keep` (none if `None`), remove the rest.
    Truncate {
        keep: Option<u64>,
        reply: Reply,
    },
    Purge {
        upto: LogId,
        reply: Reply,
    },
    SaveVote {
        vote: Vote,
        reply: Reply,
    },
}

/// One segment file: its first index and the offset of each of its records.
pub(crate) struct Segment {
    pub(crate) path: PathBuf,
    pub(crate) offsets: Vec<u64>,
}

/// What recovery found on disk.
pub(crate) struct Recovered {
    pub(crate) segments: BTreeMap<u64, Segment>,
    /// `(index, encoded entry, location)` of every live entry, in order.
    pub(crate) entries: Vec<(u64, Vec<u8>, Location)>,
    pub(crate) vote: Option<Vote>,
    pub(crate) last_purged: Option<LogId>,
    /// Bytes cut off a torn tail of the last segment.
    pub(crate) torn_tail_bytes: u64,
}

pub(crate) fn segment_path(dir: &Path, first_index: u64) -> PathBuf {
    dir.join(format!("{first_index:020}.log"))
}

pub(crate) fn vote_path(dir: &Path) -> PathBuf {
    dir.join("VOTE")
}

pub(crate) fn purged_path(dir: &Path) -> PathBuf {
    dir.join("PURGED")
}

/// Reads the log directory back: every segment in order, a torn tail of
/// the last one cut, anything else damaged an error naming file and offset.
/// Holds every live record in memory once; the caller keeps only what its
/// cache allows.
pub(crate) fn recover(fs: &dyn FileSystem, dir: &Path) -> io::Result<Recovered> {
    fs.create_dir_all(dir)?;
    let vote: Option<Vote> = files::read(fs, &vote_path(dir), &files::VOTE)?;
    let last_purged: Option<LogId> = files::read(fs, &purged_path(dir), &files::PURGED)?;
    let mut firsts: Vec<u64> = fs
        .list(dir)?
        .iter()
        .filter_map(|name| name.strip_suffix(".log")?.parse().ok())
        .collect();
    firsts.sort_unstable();
    let mut segments = BTreeMap::new();
    let mut entries = Vec::new();
    let mut torn_tail_bytes = 0;
    let mut expected_next: Option<u64> = None;
    for (position, &first) in firsts.iter().enumerate() {
        let path = segment_path(dir, first);
        let is_last = position + 1 == firsts.len();
        let policy = if is_last {
            TailPolicy::TolerateTornTail
        } else {
            TailPolicy::Strict
        };
        let mut offsets = Vec::new();
        let mut offset = ferry_engine::wal::SEGMENT_HEADER_LEN as u64;
        let outcome = read_segment(fs, &path, LogKind::Raft, policy, |index, payload| {
            let expected = expected_next.unwrap_or(first);
            if index != expected || (offsets.is_empty() && index != first) {
                return Err(ferry_engine::Error::Corruption {
                    path: path.clone(),
                    offset,
                    reason: format!("log index {index} where {expected} was expected"),
                });
            }
            let len = (RECORD_HEADER_LEN + payload.len()) as u32;
            offsets.push(offset);
            if last_purged.as_ref().is_none_or(|p| index > p.index) {
                entries.push((
                    index,
                    payload.to_vec(),
                    Location {
                        segment: first,
                        offset,
                        len,
                    },
                ));
            }
            offset += len as u64;
            expected_next = Some(index + 1);
            Ok(())
        })
        .map_err(engine_io)?;
        let on_disk = fs.file_size(&path)?;
        if outcome.valid_len < on_disk {
            // Reserved space the segment had not used yet is no damage.
            torn_tail_bytes += on_disk - outcome.valid_len - outcome.unused_bytes;
            fs.truncate(&path, outcome.valid_len)?;
        }
        if offsets.is_empty() && is_last && outcome.valid_len < RECORD_HEADER_LEN as u64 {
            // A segment created just before a crash, header cut short: nothing in it.
            fs.remove_file(&path)?;
            fs.sync_dir(dir)?;
            continue;
        }
        segments.insert(first, Segment { path, offsets });
    }
    if let Some(purged) = &last_purged {
        // A purge records its point before it removes the segments it
        // covers: a crash (or a failed removal) in between leaves segments
        // whose every entry is purged. Left in place, the last of them
        // would take the next append, which follows the purge point and not
        // that segment: a hole, refused on every start.
        let covered = covered_by_purge(&segments, purged.index);
        for first in &covered {
            let segment = segments.remove(first).expect("listed");
            fs.remove_file(&segment.path)?;
        }
        if !covered.is_empty() {
            fs.sync_dir(dir)?;
        }
    }
    if let (Some(purged), Some((first, ..))) = (&last_purged, entries.first()) {
        if *first != purged.index + 1 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "{}: first log entry {first} does not follow the purged prefix ending at {}",
                    dir.display(),
                    purged.index
                ),
            ));
        }
    }
    Ok(Recovered {
        segments,
        entries,
        vote,
        last_purged,
        torn_tail_bytes,
    })
}

/// The segments (by first index) holding nothing after `upto`, oldest
/// first.
fn covered_by_purge(segments: &BTreeMap<u64, Segment>, upto: u64) -> Vec<u64> {
    let firsts: Vec<u64> = segments.keys().copied().collect();
    let mut covered = Vec::new();
    for (position, &first) in firsts.iter().enumerate() {
        // The segment holds [first, end).
        let end = match firsts.get(position + 1) {
            Some(&next) => next,
            None => first + segments[&first].offsets.len() as u64,
        };
        if end > upto + 1 {
            break;
        }
        covered.push(first);
    }
    covered
}

pub(crate) fn engine_io(error: ferry_engine::Error) -> io::Error {
    match error {
        ferry_engine::Error::Io { source, .. } => source,
        other => io::Error::new(io::ErrorKind::InvalidData, other.to_string()),
    }
}

pub(crate) struct IoThread {
    pub(crate) shared: Arc<Shared>,
    pub(crate) fs: Arc<dyn FileSystem>,
    pub(crate) dir: PathBuf,
    pub(crate) segments: BTreeMap<u64, Segment>,
    pub(crate) writer: Option<LogWriter>,
    pub(crate) segment_bytes: u64,
    /// The directory's lock, released when the thread ends, after the
    /// last segment was finished (see [`lock`]).
    pub(crate) _lock: Box<dyn FileLock>,
}

/// How long opening a log waits for the directory's previous owner in
/// this process (a node being restarted in place) to let it go.
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// Takes the log directory's lock: one writer per log. A segment reserves
/// space ahead of its records and a background thread writes zeros into
/// it, so two writers of one directory would not merely interleave
/// records: the old one's reservation and final cut would overwrite or cut
/// off what the new one appended. A log store of a node restarted in this
/// process waits for the old one's IO thread to end (its jobs drained, its
/// last segment finished); any other holder is an error naming the
/// directory.
pub(crate) fn lock(fs: &dyn FileSystem, dir: &Path) -> io::Result<Box<dyn FileLock>> {
    let path = dir.join("LOCK");
    fs.lock_waiting(&path, LOCK_WAIT).map_err(|e| {
        if e.kind() != io::ErrorKind::WouldBlock {
            return e;
        }
        io::Error::new(
            io::ErrorKind::WouldBlock,
            format!(
                "raft log {} is in use: {} is held by another log store",
                dir.display(),
                path.display()
            ),
        )
    })
}

impl IoThread {
    pub(crate) fn run(mut self, jobs: Receiver<Job>) {
        while let Ok(first) = jobs.recv() {
            let mut batch = vec![first];
            while let Ok(job) = jobs.try_recv() {
                batch.push(job);
            }
            let mut flushed: Vec<IOFlushed<TypeConfig>> = Vec::new();
            let mut written: Vec<(u64, Location)> = Vec::new();
            let mut failed: Option<io::Error> = None;
            for job in batch {
                match job {
                    Job::Append { records, callback } => {
                        if failed.is_none() {
                            if let Err(e) = self.write_records(&records, &mut written) {
                                failed = Some(e);
                            }
                        }
                        flushed.push(callback);
                    }
                    other => {
                        // Everything appended before this job becomes durable first.
                        self.sync_and_publish(&mut flushed, &mut written, &mut failed);
                        self.run_control(other);
                    }
                }
            }
            self.sync_and_publish(&mut flushed, &mut written, &mut failed);
        }
        // Every sender is gone. The last segment ends at its last record
        // again (its reserved space cut off, durably) before the lock goes.
        if let Some(mut writer) = self.writer.take() {
            if let Err(error) = writer.finish() {
                tracing::warn!(dir = %self.dir.display(), %error, "finishing the raft log's last segment failed");
            }
        }
    }

    fn write_records(
        &mut self,
        records: &[(u64, Vec<u8>)],
        written: &mut Vec<(u64, Location)>,
    ) -> io::Result<()> {
        for (index, payload) in records {
            let follows = self
                .segments
                .last_key_value()
                .is_some_and(|(first, s)| first + s.offsets.len() as u64 == *index);
            if !follows {
                if let Some((&first, segment)) = self.segments.last_key_value() {
                    if !segment.offsets.is_empty() {
                        return Err(io::Error::other(format!(
                            "log index {index} does not follow segment {first} (a hole)"
                        )));
                    }
                    // An empty segment started at another index: replace it.
                    self.writer = None;
                    let segment = self.segments.remove(&first).expect("present");
                    self.fs.remove_file(&segment.path)?;
                }
            }
            if !follows
                || self
                    .writer
                    .as_ref()
                    .is_none_or(|w| w.len() >= self.segment_bytes)
            {
                self.roll(*index)?;
            }
            let mut last = self.segments.last_entry().expect("roll created a segment");
            let first = *last.key();
            let segment = last.get_mut();
            debug_assert_eq!(first + segment.offsets.len() as u64, *index);
            let writer = self.writer.as_mut().expect("roll opened a writer");
            let offset = writer.len();
            writer.append(*index, payload).map_err(engine_io)?;
            segment.offsets.push(offset);
            written.push((
                *index,
                Location {
                    segment: first,
                    offset,
                    len: (RECORD_HEADER_LEN + payload.len()) as u32,
                },
            ));
        }
        Ok(())
    }

    /// Seals the active segment (synced, cut back to its last record) and
    /// starts a new one at `index`.
    ///
    /// A segment reserves zero-filled space ahead of its records, as the
    /// engine's WAL does (`ferry_engine::fs::mapped`): an `fdatasync` after
    /// an append then finds the file's size unchanged and commits no file
    /// system journal. Under 64 writers this took the median log fsync
    /// from 0.37–0.43 ms to 0.24–0.25 ms (`benches/RESULTS.md`). Only the
    /// last segment may end in reserved space (readers treat a zero tail
    /// anywhere else as damage), so the old one is finished first.
    fn roll(&mut self, index: u64) -> io::Result<()> {
        if let Some(mut old) = self.writer.take() {
            old.finish().map_err(engine_io)?;
        }
        let path = segment_path(&self.dir, index);
        let writer =
            LogWriter::create_reserving(&*self.fs, &path, LogKind::Raft).map_err(engine_io)?;
        self.fs.sync_dir(&self.dir)?;
        self.segments.insert(
            index,
            Segment {
                path,
                offsets: Vec::new(),
            },
        );
        self.writer = Some(writer);
        Ok(())
    }

    fn sync_and_publish(
        &mut self,
        flushed: &mut Vec<IOFlushed<TypeConfig>>,
        written: &mut Vec<(u64, Location)>,
        failed: &mut Option<io::Error>,
    ) {
        if flushed.is_empty() {
            return;
        }
        if failed.is_none() {
            if let Some(writer) = self.writer.as_mut() {
                let started = std::time::Instant::now();
                if let Err(e) = writer.sync() {
                    *failed = Some(engine_io(e));
                }
                self.shared.stats.record_fsync(started.elapsed());
                warn_if_slow("fsync of appended entries", started);
            }
        }
        match failed.take() {
            None => {
                self.shared.publish(written);
                for callback in flushed.drain(..) {
                    callback.io_completed(Ok(()));
                }
            }
            Some(error) => {
                // A failed fsync leaves the file in an unknown state: report it
                // to every waiter; openraft treats it as fatal for this node.
                tracing::error!(dir = %self.dir.display(), %error, "raft log write failed");
                for callback in flushed.drain(..) {
                    callback.io_completed(Err(io::Error::new(error.kind(), error.to_string())));
                }
                *failed = Some(error);
            }
        }
        written.clear();
    }

    fn run_control(&mut self, job: Job) {
        let started = std::time::Instant::now();
        let (what, result, reply) = match job {
            Job::Append { .. } => unreachable!("appends are handled by run"),
            Job::Truncate { keep, reply } => ("truncate", self.truncate(keep), reply),
            Job::Purge { upto, reply } => ("purge", self.purge(&upto), reply),
            Job::SaveVote { vote, reply } => (
                "vote save",
                files::write(&*self.fs, &vote_path(&self.dir), &files::VOTE, &vote),
                reply,
            ),
        };
        warn_if_slow(what, started);
        let _ = reply.send(result);
    }

    /// Removes entries after `keep` from the end backwards, so that a crash
    /// part-way leaves a shorter log but never a hole.
    fn truncate(&mut self, keep: Option<u64>) -> io::Result<()> {
        let first_removed = keep.map_or(0, |k| k + 1);
        let mut changed = false;
        while let Some((&first, _)) = self.segments.last_key_value() {
            if first < first_removed {
                break;
            }
            let segment = self.segments.remove(&first).expect("present");
            self.writer = None;
            self.fs.remove_file(&segment.path)?;
            changed = true;
        }
        if changed {
            self.fs.sync_dir(&self.dir)?;
        }
        if let Some(mut last_segment) = self.segments.last_entry() {
            let first = *last_segment.key();
            let segment = last_segment.get_mut();
            let keep_records = (first_removed - first) as usize;
            if keep_records < segment.offsets.len() {
                self.writer = None;
                let cut = segment.offsets[keep_records];
                segment.offsets.truncate(keep_records);
                self.fs.truncate(&segment.path, cut)?;
                changed = true;
            }
            if changed || self.writer.is_none() {
                let last = first + segment.offsets.len() as u64;
                let last = last.checked_sub(1).filter(|_| !segment.offsets.is_empty());
                self.writer =
                    Some(LogWriter::reopen(&*self.fs, &segment.path, last).map_err(engine_io)?);
            }
        }
        Ok(())
    }

    /// Records the purge point durably, then deletes segments that hold
    /// nothing after it.
    fn purge(&mut self, upto: &LogId) -> io::Result<()> {
        files::write(&*self.fs, &purged_path(&self.dir), &files::PURGED, upto)?;
        let covered = covered_by_purge(&self.segments, upto.index);
        for first in &covered {
            let segment = self.segments.remove(first).expect("listed");
            if self.segments.is_empty() {
                // The last segment went: the next append starts a new one.
                self.writer = None;
            }
            self.fs.remove_file(&segment.path)?;
            self.shared.forget_segment(*first);
        }
        if !covered.is_empty() {
            self.fs.sync_dir(&self.dir)?;
        }
        Ok(())
    }
}
