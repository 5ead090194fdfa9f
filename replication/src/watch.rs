//! Watches: every change of a key range from a revision on, in revision
//! order, each exactly once, served by any member from its own history.
//!
//! A [`Watcher`] reads the engine's change log from its start revision
//! until it reaches the state as applied, then follows the live feed. It
//! subscribes to the feed before its first read, so nothing applied in
//! between is missed; what both show is skipped by revision. A watcher
//! that falls behind the feed, or meets a snapshot install, goes back to
//! reading the engine from where it stands: memory stays bounded by one
//! page whatever the watcher's speed, and it fails only when the history
//! it still needs is compacted away.
//!
//! A revision is delivered whole unless it is larger than about twice a
//! batch (a range delete or a lease revoke with previous values, a large
//! transaction). Such a revision is split across batches only for a
//! watcher that asked for it (`split_revisions`, etcd's `fragment`):
//! the others get it whole, up to [`MAX_WHOLE_REVISION_BYTES`], and are
//! ended past that, so that no watch holds an unbounded revision.

use crate::state_machine::changes::FeedItem;
use crate::state_machine::history::{self, Change, ChangeAt, Compacted, Scan};
use crate::state_machine::SmShared;
use crate::types::KeyValue;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tokio::sync::broadcast;

/// What to watch.
#[derive(Debug, Clone)]
pub struct WatchOptions {
    /// First key watched.
    pub start: Vec<u8>,
    /// End of the range, exclusive (`None`: to the end of the key space).
    pub end: Option<Vec<u8>>,
    /// First revision to deliver (0: changes applied from now on).
    pub from_revision: u64,
    /// Deliver each change's previous version with it.
    pub prev_kv: bool,
    /// A batch holds about this many bytes of changes and previous
    /// versions; at most about twice this with `split_revisions`.
    pub batch_bytes: usize,
    /// Deliver a revision larger than a batch in parts (see
    /// [`WatchBatch::complete`]). Else each revision is delivered whole,
    /// and one larger than `max_whole_revision_bytes` ends the watch with
    /// [`WatchError::RevisionTooLarge`].
    pub split_revisions: bool,
    /// See `split_revisions`; [`MAX_WHOLE_REVISION_BYTES`] by default.
    pub max_whole_revision_bytes: usize,
}

/// The largest revision, in bytes of changes and previous versions, a
/// watcher that does not take split revisions gets whole (as one batch).
pub const MAX_WHOLE_REVISION_BYTES: usize = 64 << 20;

impl WatchOptions {
    /// Changes of keys in `[start, end)` from `from_revision` on.
    pub fn range(start: Vec<u8>, end: Option<Vec<u8>>, from_revision: u64) -> Self {
        WatchOptions {
            start,
            end,
            from_revision,
            prev_kv: false,
            batch_bytes: 256 << 10,
            split_revisions: false,
            max_whole_revision_bytes: MAX_WHOLE_REVISION_BYTES,
        }
    }
}

/// One change delivered to a watch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchEvent {
    pub change: Change,
    /// The key's version before the change, if asked for and it existed.
    pub prev: Option<KeyValue>,
}

impl WatchEvent {
    /// What the event holds, in bytes, as a batch counts it.
    fn size(&self) -> usize {
        self.change.size()
            + self
                .prev
                .as_ref()
                .map_or(0, |kv| kv.key.len() + kv.value.len())
    }
}

/// Changes delivered together.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchBatch {
    /// In revision order.
    pub events: Vec<WatchEvent>,
    /// Every matching change up to this revision has been delivered. With
    /// `split_revisions`, events of a later revision are the first part
    /// of revision `revision + 1`, whose rest comes in the next batches.
    pub revision: u64,
}

impl WatchBatch {
    /// Whether the batch ends with a whole revision: false if its last
    /// events are a part of a split revision.
    pub fn complete(&self) -> bool {
        self.events
            .last()
            .is_none_or(|e| e.change.revision <= self.revision)
    }

    fn size(&self) -> usize {
        self.events.iter().map(WatchEvent::size).sum()
    }
}

/// Why a watch ended.
#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    /// The history the watch needs next was compacted.
    #[error(transparent)]
    Compacted(#[from] Compacted),
    #[error("watch: {0}")]
    Storage(#[from] io::Error),
    /// The node is shutting down.
    #[error("the node stopped")]
    Closed,
    /// A revision too large to deliver whole, to a watcher that does not
    /// take split revisions.
    #[error(
        "the changes of revision {revision} take more than {limit} bytes; \
         a watch that takes a revision in parts (fragment) can read them"
    )]
    RevisionTooLarge { revision: u64, limit: usize },
}

/// See the module docs.
pub struct Watcher {
    shared: Arc<SmShared>,
    options: WatchOptions,
    feed: broadcast::Receiver<Arc<FeedItem>>,
    /// Every matching change up to this revision has been delivered.
    delivered: u64,
    /// Changes of revision `delivered + 1` below this index have been
    /// delivered (a split revision; only while catching up).
    within: u32,
    /// Reading the engine, not the feed.
    catching_up: bool,
    /// Without `split_revisions`: the parts of a revision read so far,
    /// kept here so that [`Watcher::next`] stays cancel-safe.
    pending: Option<WatchBatch>,
    /// See [`Watcher::progress`].
    progress: Arc<AtomicU64>,
}

impl Watcher {
    pub(crate) fn start(
        shared: Arc<SmShared>,
        options: WatchOptions,
    ) -> Result<Watcher, WatchError> {
        // Before reading anything: whatever is applied from now on reaches
        // the feed.
        let feed = shared.changes().subscribe();
        let view = shared.db().snapshot();
        let applied = crate::state_machine::applied_index(&view)?;
        let (delivered, catching_up) = match options.from_revision {
            0 => (applied, false),
            from => {
                let compacted = history::compacted(&view)?;
                if from < compacted {
                    return Err(Compacted {
                        requested: from,
                        compacted,
                    }
                    .into());
                }
                (from - 1, true)
            }
        };
        Ok(Watcher {
            shared,
            options,
            feed,
            delivered,
            within: 0,
            catching_up,
            pending: None,
            progress: Arc::new(AtomicU64::new(delivered)),
        })
    }

    /// Every matching change up to this revision has been delivered: the
    /// revision a progress notification reports.
    pub fn revision(&self) -> u64 {
        // Not past the revisions held back with a split one's first parts.
        match self.pending.as_ref().and_then(|p| p.events.first()) {
            Some(event) => self.delivered.min(event.change.revision - 1),
            None => self.delivered,
        }
    }

    /// A revision another task may read while this watcher waits in
    /// [`Watcher::next`] (to answer a request for progress): the watcher
    /// raises it when it has read past changes of which none matched, so
    /// that nothing at or below it is still to come. It is not raised
    /// when a batch is returned: the batch's owner raises it (`fetch_max`)
    /// once the batch is sent, or a progress answer could overtake it.
    pub fn progress(&self) -> Arc<AtomicU64> {
        self.progress.clone()
    }

    fn matches(options: &WatchOptions, key: &[u8]) -> bool {
        key >= options.start.as_slice()
            && options.end.as_ref().is_none_or(|end| key < end.as_slice())
    }

    /// The next batch of changes. Cancel-safe: dropped at its await, it
    /// loses nothing (the watcher's position moves only once a read is
    /// done), so it can sit in a `select!` beside a progress timer.
    pub async fn next(&mut self) -> Result<WatchBatch, WatchError> {
        loop {
            let part = self.next_part().await?;
            if self.options.split_revisions {
                return Ok(part);
            }
            let batch = match self.pending.take() {
                None => part,
                Some(mut pending) => {
                    pending.events.extend(part.events);
                    pending.revision = part.revision;
                    pending
                }
            };
            if batch.complete() {
                return Ok(batch);
            }
            let limit = self.options.max_whole_revision_bytes;
            if batch.size() > limit {
                return Err(WatchError::RevisionTooLarge {
                    revision: batch.revision + 1,
                    limit,
                });
            }
            self.pending = Some(batch);
        }
    }

    /// The next batch, which may end inside a revision.
    async fn next_part(&mut self) -> Result<WatchBatch, WatchError> {
        loop {
            debug_assert!(self.catching_up || self.within == 0);
            if self.catching_up {
                if let Some(batch) = self.read_engine().await? {
                    return Ok(batch);
                }
                continue;
            }
            let item = match self.feed.recv().await {
                Ok(item) => item,
                // Fell behind the feed: the engine has what it skipped.
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    self.catching_up = true;
                    continue;
                }
                Err(broadcast::error::RecvError::Closed) => return Err(WatchError::Closed),
            };
            // Taken into locals and kept only once the batch is whole: if
            // this future is dropped at the await below, the items it took
            // from the feed are lost, so the watcher is marked as catching
            // up meanwhile and the next call reads them from the engine
            // (waiting for a later feed item to show the gap could wait
            // for ever on a quiet cluster).
            let mut delivered = self.delivered;
            let mut catch_up = false;
            let mut events = Vec::new();
            let mut bytes = 0;
            let mut next = Some(item);
            while let Some(item) = next.take() {
                match &*item {
                    FeedItem::Applied {
                        first,
                        applied,
                        changes,
                    } => {
                        if *applied <= delivered {
                            // Read from the engine already.
                        } else if *first > delivered + 1 {
                            // Runs this receiver never saw.
                            catch_up = true;
                            break;
                        } else {
                            for change in changes {
                                if change.revision > delivered
                                    && Self::matches(&self.options, &change.key)
                                {
                                    bytes += change.size();
                                    events.push(change.clone());
                                }
                            }
                            delivered = *applied;
                        }
                    }
                    FeedItem::Skipped { applied } => {
                        if *applied > delivered {
                            catch_up = true;
                            break;
                        }
                    }
                }
                // More that is ready, up to a batch.
                if bytes < self.options.batch_bytes {
                    match self.feed.try_recv() {
                        Ok(item) => next = Some(item),
                        Err(broadcast::error::TryRecvError::Lagged(_)) => catch_up = true,
                        Err(_) => {}
                    }
                }
            }
            self.catching_up = true;
            let (events, cut) = self.with_prev(events).await?;
            match cut {
                None => {
                    self.delivered = delivered;
                    self.catching_up = catch_up;
                }
                // The revisions from `cut` on are too large with their
                // previous versions to hold here: the engine delivers them
                // in bounded pages.
                Some(cut) => self.delivered = cut - 1,
            }
            if !events.is_empty() {
                return Ok(WatchBatch {
                    events,
                    revision: self.delivered,
                });
            }
            self.progress.fetch_max(self.revision(), Ordering::AcqRel);
        }
    }

    /// One page from the engine; `None` if it held no matching change.
    async fn read_engine(&mut self) -> Result<Option<WatchBatch>, WatchError> {
        let shared = self.shared.clone();
        let options = self.options.clone();
        let from = ChangeAt {
            revision: self.delivered + 1,
            index: self.within,
        };
        let (page, applied) = tokio::task::spawn_blocking(move || {
            let view = shared.db().snapshot();
            let compacted = history::compacted(&view)?;
            if from.revision < compacted {
                return Err(WatchError::Compacted(Compacted {
                    requested: from.revision,
                    compacted,
                }));
            }
            let applied = crate::state_machine::applied_index(&view)?;
            let matches = |key: &[u8]| Self::matches(&options, key);
            let mut scan = Scan::new(from, applied, &matches, options.batch_bytes);
            scan.prev_kv = options.prev_kv;
            Ok((history::scan_changes(&view, &scan)?, applied))
        })
        .await
        .map_err(|e| WatchError::Storage(io::Error::other(e)))??;
        // A member behind the client (it resumed here from a revision this
        // member has not applied yet) reads an empty page ending at its
        // applied index: the position must not move back to it, or the
        // revisions in between would come again from the feed.
        if page.next > from {
            self.delivered = page.through();
            self.within = page.next.index;
        }
        if !page.more && page.through() >= applied && self.within == 0 {
            // Caught up with the state as it was read; the feed holds what
            // was applied since (the watcher subscribed before reading).
            self.catching_up = false;
        }
        if page.changes.is_empty() {
            if from.index > 0 && self.within == 0 {
                // The rest of a split revision, none of it matching: say
                // that the revision is complete (its owner may hold its
                // first parts, and etcd's client an unfinished answer).
                return Ok(Some(WatchBatch {
                    events: Vec::new(),
                    revision: self.delivered,
                }));
            }
            self.progress.fetch_max(self.revision(), Ordering::AcqRel);
            return Ok(None);
        }
        let prevs = if page.prevs.is_empty() {
            vec![None; page.changes.len()]
        } else {
            page.prevs
        };
        debug_assert_eq!(prevs.len(), page.changes.len());
        let events = page
            .changes
            .into_iter()
            .zip(prevs)
            .map(|(change, prev)| WatchEvent { change, prev })
            .collect();
        Ok(Some(WatchBatch {
            events,
            revision: self.delivered,
        }))
    }

    /// Events of live changes, with their previous versions if asked for.
    /// Where those take the events past what a batch may hold, only the
    /// whole revisions before that are returned, with the revision of the
    /// first change left out.
    async fn with_prev(
        &self,
        changes: Vec<Change>,
    ) -> Result<(Vec<WatchEvent>, Option<u64>), WatchError> {
        if !self.options.prev_kv || changes.is_empty() {
            let events = changes
                .into_iter()
                .map(|change| WatchEvent { change, prev: None })
                .collect();
            return Ok((events, None));
        }
        let shared = self.shared.clone();
        // As a page of the engine holds at most (see `Scan::budget`).
        let limit = self.options.batch_bytes.saturating_mul(2);
        tokio::task::spawn_blocking(move || {
            let view = shared.db().snapshot();
            // The history these changes were read from may be compacted
            // since, and a purge may have removed their previous versions:
            // no previous version would then read as a create.
            let compacted = history::compacted(&view)?;
            let mut events = Vec::with_capacity(changes.len());
            let mut bytes = 0;
            for change in changes {
                if change.revision < compacted {
                    return Err(WatchError::Compacted(Compacted {
                        requested: change.revision,
                        compacted,
                    }));
                }
                let prev = history::version_before(&view, &change)?;
                let event = WatchEvent { change, prev };
                bytes += event.size();
                if bytes > limit {
                    let cut = event.change.revision;
                    events.retain(|e: &WatchEvent| e.change.revision < cut);
                    return Ok((events, Some(cut)));
                }
                events.push(event);
            }
            Ok((events, None))
        })
        .await
        .map_err(|e| WatchError::Storage(io::Error::other(e)))?
    }
}
