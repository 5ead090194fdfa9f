//! The live change feed: what each applied run changed, broadcast to the
//! watches following the state as it is applied.
//!
//! The history itself is in the engine (see `history`); the feed only
//! spares a watch that keeps up the engine reads. It is bounded, in runs
//! and in bytes: it keeps the last `capacity` runs, and a run whose changes
//! are larger than [`MAX_RUN_BYTES`] goes as a [`FeedItem::Skipped`]
//! marker. A watch that falls behind the feed, or meets a marker, reads
//! the engine from where it stands instead, so no change is ever lost to
//! the feed's bounds.

use super::history::Change;
use std::sync::Arc;
use tokio::sync::broadcast;

/// What the feed carries, one item per applied run.
#[derive(Debug)]
pub enum FeedItem {
    /// Entries `first..=applied` were applied: their changes, in order.
    /// Runs are consecutive, so a receiver that missed one (it lagged, or
    /// dropped what it had received) sees a gap before the next.
    Applied {
        first: u64,
        applied: u64,
        changes: Vec<Change>,
    },
    /// The feed does not carry what entries up to `applied` changed: the
    /// state was replaced (a snapshot install), or a run's changes were
    /// too large to hold here (they are in the engine).
    Skipped { applied: u64 },
}

/// The most bytes of changes ([`Change::size`]) one feed item holds: the
/// feed keeps at most its capacity times this, whatever the values.
pub const MAX_RUN_BYTES: usize = 256 << 10;

/// See the module docs.
pub struct ChangeFeed {
    sender: broadcast::Sender<Arc<FeedItem>>,
}

impl ChangeFeed {
    /// A feed keeping at most `capacity` runs for watches that lag.
    pub(crate) fn new(capacity: usize) -> Self {
        ChangeFeed {
            sender: broadcast::channel(capacity.max(16)).0,
        }
    }

    pub(crate) fn publish(&self, first: u64, applied: u64, changes: Vec<Change>) {
        debug_assert!(first <= applied);
        let bytes: usize = changes.iter().map(Change::size).sum();
        let item = if bytes > MAX_RUN_BYTES {
            FeedItem::Skipped { applied }
        } else {
            FeedItem::Applied {
                first,
                applied,
                changes,
            }
        };
        // No receiver is no error: nobody watches.
        let _ = self.sender.send(Arc::new(item));
    }

    /// After a snapshot install: the state jumped, no change explains it.
    pub(crate) fn reset(&self, applied: u64) {
        let _ = self.sender.send(Arc::new(FeedItem::Skipped { applied }));
    }

    /// Everything published from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<FeedItem>> {
        self.sender.subscribe()
    }
}
