//! Shipping checkpoints and the committed log to a backup target.

use super::catalog::{checkpoint_name, log_name, object_name, Catalog, CheckpointRecord, LogChunk};
use super::cpu;
use super::head;
use super::retention::Retention;
use super::target::BackupTarget;
use crate::node::Node;
use crate::snapshot::{blocking, read_checkpoint, unique_suffix};
use crate::state_machine::keys;
use crate::types::now_ms;
use ferry_engine::wal::{segment_header, LogKind};
use std::io;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How often the shipper ships.
#[derive(Debug, Clone)]
pub struct BackupOptions {
    /// Log shipping interval: the backup chain's recovery point.
    pub log_interval: Duration,
    /// Checkpoint interval: bounds how much log a restore replays.
    pub checkpoint_interval: Duration,
    /// Entries per log chunk at most.
    pub max_chunk_entries: u64,
    /// Bytes per log chunk at most (an entry larger than this still ships,
    /// alone), and at most [`MAX_CHUNK_BYTES`]: a chunk is built in memory.
    pub max_chunk_bytes: u64,
    /// Which checkpoints to keep; the rest are pruned after each round.
    pub retention: Retention,
}

/// The most bytes of log a chunk holds (one entry more may go in): chunks
/// are built in memory and go up in one put.
pub const MAX_CHUNK_BYTES: u64 = 64 << 20;

/// A chunk's first allocation: most rounds ship less than this, and a
/// larger chunk grows from here without many copies.
const CHUNK_START_BYTES: u64 = 4 << 20;

impl Default for BackupOptions {
    fn default() -> Self {
        BackupOptions {
            log_interval: Duration::from_secs(10),
            checkpoint_interval: Duration::from_secs(600),
            max_chunk_entries: 20_000,
            max_chunk_bytes: MAX_CHUNK_BYTES,
            retention: Retention::default(),
        }
    }
}

/// What the shipper has done, for metrics and status.
#[derive(Debug, Default)]
pub struct BackupStatus {
    /// The highest log index the chain holds (0 = none yet).
    pub shipped_index: AtomicU64,
    /// The index of the newest shipped checkpoint.
    pub checkpoint_index: AtomicU64,
    /// When a round last succeeded (ms since the Unix epoch, 0 = never).
    pub last_success_ms: AtomicU64,
    /// The newest restore point: the chain holds every write applied
    /// before this time (ms since the Unix epoch, 0 = none yet, or this
    /// node does not lead). Its age is what a restore from the chain would
    /// lose now.
    pub restore_point_ms: AtomicU64,
    /// Files pruned by retention.
    pub pruned_files: AtomicU64,
    /// Bytes written to the target.
    pub bytes_shipped: AtomicU64,
    /// Rounds that failed.
    pub failures: AtomicU64,
    /// Prunes that failed (a round's commit stands; the next
    /// checkpoint's round prunes again).
    pub prune_failures: AtomicU64,
    /// CPU time of the rounds' steps, on the blocking threads they run on
    /// (ns). Building a checkpoint's snapshot is the node's work and is
    /// not counted.
    pub cpu_ns: AtomicU64,
    /// CPU time of the target's own I/O threads (ns), as of the last round.
    pub target_cpu_ns: AtomicU64,
    /// The chain as the target listed it after the last successful round.
    pub chain: parking_lot::Mutex<Option<ChainSummary>>,
}

/// A backup chain's shape, for status pages.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ChainSummary {
    /// Checkpoints in the chain.
    pub checkpoint_count: usize,
    /// Indexes of the newest checkpoints (at most [`ChainSummary::NEWEST`]).
    pub newest_checkpoints: Vec<u64>,
    /// The log the chain holds: first and last index.
    pub log_range: Option<(u64, u64)>,
    /// Stretches of log missing between chunks: a restore cannot cross them.
    pub log_gaps: Vec<(u64, u64)>,
    /// The indexes a restore can reach: from the oldest checkpoint to the
    /// last index shipped.
    pub restorable: Option<(u64, u64)>,
}

impl BackupStatus {
    /// CPU time shipping has cost this node so far.
    pub fn cpu_seconds(&self) -> f64 {
        let ns = self.cpu_ns.load(Ordering::Relaxed) + self.target_cpu_ns.load(Ordering::Relaxed);
        ns as f64 / 1e9
    }
}

impl ChainSummary {
    pub const NEWEST: usize = 10;

    /// The chain after a round that shipped log up to `last` and no
    /// checkpoint: the same shape, a longer log.
    pub fn extend_to(&mut self, last: u64) {
        if let Some(range) = &mut self.log_range {
            range.1 = range.1.max(last);
        }
        if let Some(restorable) = &mut self.restorable {
            restorable.1 = restorable.1.max(last);
        }
    }

    pub fn of(catalog: &Catalog) -> ChainSummary {
        let first_log = catalog.log.first().map(|c| c.first);
        let last_log = catalog.log.iter().map(|c| c.last).max();
        let skip = catalog.checkpoints.len().saturating_sub(Self::NEWEST);
        ChainSummary {
            checkpoint_count: catalog.checkpoints.len(),
            newest_checkpoints: catalog.checkpoints[skip..].to_vec(),
            log_range: first_log.zip(last_log),
            log_gaps: catalog.log_gaps(),
            restorable: catalog
                .checkpoints
                .first()
                .copied()
                .zip(catalog.last_index()),
        }
    }
}

/// A checkpoint a round shipped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShippedCheckpoint {
    /// The log index of the state it holds.
    pub index: u64,
    /// Bytes it added to the chain (files the chain did not hold yet).
    pub new_bytes: u64,
    /// Bytes of all its files.
    pub total_bytes: u64,
}

/// What one round shipped.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ShipReport {
    /// The checkpoint shipped, if the round shipped one.
    pub checkpoint: Option<ShippedCheckpoint>,
    /// Log entries shipped.
    pub log_entries: u64,
    /// The highest index the chain holds after the round.
    pub shipped_index: u64,
}

struct Progress {
    /// The next log index to ship; `None` = read it from the target.
    next: Option<u64>,
    last_checkpoint: Option<Instant>,
}

/// Ships a node's checkpoints and committed log to a [`BackupTarget`].
/// Rounds run only while the node leads ([`BackupShipper::spawn`]); a new
/// leader continues the chain from what the target holds.
pub struct BackupShipper {
    node: Arc<Node>,
    target: Arc<dyn BackupTarget>,
    options: BackupOptions,
    staging: PathBuf,
    status: Arc<BackupStatus>,
    progress: tokio::sync::Mutex<Progress>,
}

impl BackupShipper {
    pub fn new(
        node: Arc<Node>,
        target: Arc<dyn BackupTarget>,
        options: BackupOptions,
    ) -> Arc<Self> {
        assert!(
            options.max_chunk_entries > 0,
            "a log chunk holds at least one entry"
        );
        let staging = node
            .state()
            .snapshots()
            .dir()
            .with_file_name("backup-staging");
        // Files of rounds a crash interrupted.
        let _ = node.state().fs().remove_dir_all(&staging);
        Arc::new(BackupShipper {
            node,
            target,
            options,
            staging,
            status: Arc::default(),
            progress: tokio::sync::Mutex::new(Progress {
                next: None,
                last_checkpoint: None,
            }),
        })
    }

    pub fn status(&self) -> &Arc<BackupStatus> {
        &self.status
    }

    /// Runs rounds every log interval while this node leads, with a
    /// checkpoint every checkpoint interval. Abort the task to stop.
    pub fn spawn(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let this = self.clone();
        tokio::spawn(async move {
            let mut ticker = tokio::time::interval(this.options.log_interval);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticker.tick().await;
                if !this.node.is_leader() {
                    // Another node ships meanwhile; re-read the chain when leading again.
                    this.progress.lock().await.next = None;
                    // Its restore points are the leader's to report: this
                    // node's last one would only age here.
                    this.status.restore_point_ms.store(0, Ordering::Relaxed);
                    continue;
                }
                let due = this
                    .progress
                    .lock()
                    .await
                    .last_checkpoint
                    .is_none_or(|t| t.elapsed() >= this.options.checkpoint_interval);
                if let Err(error) = this.ship(due).await {
                    tracing::warn!(%error, target = %this.target.describe(), "backup round failed; retrying next interval");
                }
            }
        })
    }

    /// Ships one round now: a checkpoint if `checkpoint` (or if the chain
    /// cannot continue without one: it is empty, or the log it needs next
    /// was purged), then every applied entry not shipped yet.
    pub async fn ship(&self, checkpoint: bool) -> io::Result<ShipReport> {
        let mut progress = self.progress.lock().await;
        let started_ms = now_ms();
        let result = self.round(&mut progress, checkpoint).await;
        self.status
            .target_cpu_ns
            .store(self.target.cpu_ns(), Ordering::Relaxed);
        match &result {
            Ok(report) => {
                self.status
                    .restore_point_ms
                    .store(started_ms, Ordering::Relaxed);
                // Listing the chain costs a LIST per thousand files: do it
                // when its shape changed (a checkpoint, which also prunes),
                // and otherwise move the summary's end to what was shipped.
                let listed = self.status.chain.lock().is_some();
                if report.checkpoint.is_some() || !listed {
                    let target = self.target.clone();
                    match self.step(move || Catalog::read(&*target)).await {
                        Ok(catalog) => *self.status.chain.lock() = Some(ChainSummary::of(&catalog)),
                        Err(error) => tracing::warn!(%error, "listing the backup chain failed"),
                    }
                } else if let Some(chain) = self.status.chain.lock().as_mut() {
                    chain.extend_to(report.shipped_index);
                }
                self.status
                    .shipped_index
                    .store(report.shipped_index, Ordering::Relaxed);
                self.status
                    .last_success_ms
                    .store(now_ms(), Ordering::Relaxed);
            }
            Err(_) => {
                progress.next = None;
                self.status.failures.fetch_add(1, Ordering::Relaxed);
            }
        }
        result
    }

    /// Runs a step of a round on a blocking thread (the target's calls
    /// block), counting the CPU time it uses there.
    async fn step<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> io::Result<T> + Send + 'static,
    ) -> io::Result<T> {
        let status = self.status.clone();
        blocking(move || cpu::on_this_thread(&status.cpu_ns, work)).await
    }

    async fn round(&self, progress: &mut Progress, checkpoint: bool) -> io::Result<ShipReport> {
        self.node.state().fs().create_dir_all(&self.staging)?;
        // The term this node leads in; every name it writes carries it, and
        // the claim fails if a newer leader holds the chain (see `head`).
        // Both from one reading: a node that reads a term as a follower,
        // then leads the next, must not ship under the old one.
        let (term, leading) = self
            .node
            .with_metrics(|m| (m.current_term, m.state == openraft::ServerState::Leader));
        if !leading {
            return Err(io::Error::other("not the leader: another node ships"));
        }
        let (target, node) = (self.target.clone(), self.node.id());
        self.step(move || {
            head::claim(&*target, term, node, || {
                Ok(Catalog::read(&*target)?.last_index().unwrap_or(0))
            })
        })
        .await?;
        if progress.next.is_none() {
            // Continue after the shipped log, not after the newest
            // checkpoint: a round that shipped a checkpoint and then failed
            // must still ship the log below it while the log holds it.
            let target = self.target.clone();
            let catalog = self.step(move || Catalog::read(&*target)).await?;
            progress.next = match catalog.log.iter().map(|c| c.last).max() {
                Some(last) => Some(last + 1),
                None => catalog.checkpoints.last().map(|c| c + 1),
            };
        }
        let mut report = ShipReport::default();
        let gap = progress
            .next
            .is_none_or(|next| next < self.node.log_reader().first_index());
        if checkpoint && !gap {
            // First what the log holds: building the snapshot lets Raft
            // purge it, and the chain would have a hole where it was.
            self.ship_log_to_applied(progress, &mut report, term)
                .await?;
        }
        if checkpoint || gap {
            let shipped = self.ship_checkpoint(term).await?;
            let index = shipped.index;
            // Where the log is still there, it is shipped in full even below
            // the checkpoint, so every index stays restorable from the older
            // checkpoints; only a purged stretch is skipped (a hole a restore
            // reports).
            if gap {
                progress.next = Some(progress.next.unwrap_or(0).max(index + 1));
            }
            // Building it let Raft purge the log, maybe past what was
            // shipped before it (many entries applied meanwhile): the
            // checkpoint covers those, as after a gap.
            if progress
                .next
                .is_some_and(|next| next < self.node.log_reader().first_index())
            {
                progress.next = Some(index + 1);
            }
            progress.last_checkpoint = Some(Instant::now());
            self.status.checkpoint_index.store(index, Ordering::Relaxed);
            report.checkpoint = Some(shipped);
        }
        let next = self
            .ship_log_to_applied(progress, &mut report, term)
            .await?;
        report.shipped_index = (next - 1).max(report.checkpoint.map_or(0, |c| c.index));
        let (target, shipped) = (self.target.clone(), report.shipped_index);
        // Pruning only has something new to drop once a newer checkpoint
        // is in the chain; rounds between checkpoints skip its LIST.
        let retention = self.options.retention.clone();
        let prune = !retention.is_none() && report.checkpoint.is_some();
        let scratch = self.staging.join(format!("retention-{}", unique_suffix()));
        let fs = self.node.state().fs().clone();
        // Committing is the last step that needs the chain: a leader fenced
        // meanwhile fails here, and its files stay orphans.
        let committed = target.clone();
        self.step(move || head::commit(&*committed, term, shipped))
            .await?;
        if prune {
            // What was shipped is committed: a failed prune fails only
            // itself (the next checkpoint's round tries again).
            match self
                .step(move || retention.prune(&*fs, &*target, term, &scratch, now_ms()))
                .await
            {
                Ok(pruned) => {
                    self.status
                        .pruned_files
                        .fetch_add(pruned, Ordering::Relaxed);
                }
                Err(error) => {
                    self.status.prune_failures.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(%error, "backup retention: pruning failed");
                }
            }
        }
        Ok(report)
    }

    /// Ships the log from where the chain ends up to the applied index;
    /// returns the index after the last entry shipped.
    async fn ship_log_to_applied(
        &self,
        progress: &mut Progress,
        report: &mut ShipReport,
        term: u64,
    ) -> io::Result<u64> {
        let reader = self.node.log_reader().clone();
        let applied = self.node.state().applied().0.map_or(0, |l| l.index);
        let mut next = progress.next.unwrap_or(1);
        while next <= applied {
            let last = applied.min(next + self.options.max_chunk_entries - 1);
            let (target, reader) = (self.target.clone(), reader.clone());
            let max_bytes = self.options.max_chunk_bytes;
            let (last, bytes) = self
                .step(move || {
                    let want = LogChunk {
                        first: next,
                        last,
                        term,
                    };
                    ship_log(&*target, &reader, want, max_bytes)
                })
                .await?;
            self.status
                .bytes_shipped
                .fetch_add(bytes, Ordering::Relaxed);
            report.log_entries += last + 1 - next;
            next = last + 1;
            progress.next = Some(next);
        }
        Ok(next)
    }

    /// Ships the state as a checkpoint: builds a snapshot, then stores the
    /// files the chain lacks and, last, the record.
    async fn ship_checkpoint(&self, term: u64) -> io::Result<ShippedCheckpoint> {
        self.node.snapshot().await.map_err(io::Error::other)?;
        let handle = self
            .node
            .state()
            .snapshots()
            .current()?
            .ok_or_else(|| io::Error::other("no snapshot after building one"))?;
        let (target, staging) = (self.target.clone(), self.staging.clone());
        let status = self.status.clone();
        let fs = self.node.state().fs().clone();
        self.step(move || {
            // The handle pins the snapshot's directory while its files are copied.
            let dir = handle.dir();
            let time_ms = read_checkpoint(&fs, dir, |db| {
                match db.get(keys::TIME).map_err(io::Error::other)? {
                    Some(bytes) => postcard::from_bytes(&bytes).map_err(io::Error::other),
                    None => Ok(0),
                }
            })?;
            let mut new_bytes = 0;
            for file in &handle.manifest().files {
                let name = object_name(file);
                if !target.exists(&name)? {
                    // Stored meanwhile by another shipper: the same bytes (the
                    // name is the content).
                    stored_or_same(target.put(&name, &dir.join(&file.name)))?;
                    new_bytes += file.size;
                }
            }
            let record = CheckpointRecord {
                applied: handle.manifest().meta.last_log_id,
                time_ms,
                created_ms: now_ms(),
                files: handle.manifest().files.clone(),
                new_bytes,
            };
            let encoded = record.encode()?;
            let file = staging.join(format!("record-{}", unique_suffix()));
            fs.write_atomic(&file, &encoded)?;
            let stored = target.put(&checkpoint_name(record.index(), term), &file);
            let _ = fs.remove_file(&file);
            // Stored by an earlier round of this term that failed before
            // committing: the same state.
            stored_or_same(stored)?;
            status
                .bytes_shipped
                .fetch_add(new_bytes + encoded.len() as u64, Ordering::Relaxed);
            Ok(ShippedCheckpoint {
                index: record.index(),
                new_bytes,
                total_bytes: record.total_bytes(),
            })
        })
        .await
    }
}

/// Ships entries from `want.first` on, up to `want.last`, as one chunk of at most
/// `max_bytes` (the first entry always goes in); returns the last index it
/// holds and the chunk's size. The chunk is built in memory, bounded by
/// [`MAX_CHUNK_BYTES`] (or one entry, if larger), and goes up in one put. Entries the
/// log no longer holds are an error (the next round ships a checkpoint).
fn ship_log(
    target: &dyn BackupTarget,
    reader: &crate::log_store::LogReader,
    want: LogChunk,
    max_bytes: u64,
) -> io::Result<(u64, u64)> {
    let LogChunk { first, last, term } = want;
    let max_bytes = max_bytes.min(MAX_CHUNK_BYTES);
    let mut chunk = Vec::with_capacity(max_bytes.min(CHUNK_START_BYTES) as usize);
    chunk.extend_from_slice(&segment_header(LogKind::Raft));
    // A chunk is a log segment's bytes: each record is copied as the log
    // holds it (its CRC checked on the way), never decoded.
    let (mut next, mut full) = (first, false);
    let visited = reader.visit_records(first, |index, record| {
        assert_eq!(index, next, "records come in order");
        // Full before the record that would take it past `max_bytes`: a
        // chunk is larger only when its first record alone is.
        full = index > first && (chunk.len() + record.len()) as u64 > max_bytes;
        if index > last || full {
            return Ok(false);
        }
        chunk.extend_from_slice(record);
        next += 1;
        Ok(true)
    });
    match visited {
        // A damaged record: not the next round's to mend.
        Err(error) if error.kind() != io::ErrorKind::NotFound => return Err(error),
        _ => {}
    }
    if next <= last && !full {
        return Err(io::Error::other(format!(
            "log entries {next}..={last} are no longer all in the log (purged before \
             shipping); the next round ships a checkpoint"
        )));
    }
    let shipped_last = next - 1;
    let size = chunk.len() as u64;
    // A name of this term stored already holds these same entries.
    stored_or_same(target.put_bytes(&log_name(first, shipped_last, term), chunk))?;
    Ok((shipped_last, size))
}

/// A put whose name was stored already: in the shipper, always by a writer
/// of the same bytes (content-named objects; names carrying this term).
fn stored_or_same(put: io::Result<()>) -> io::Result<()> {
    match put {
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        other => other,
    }
}
