//! The live change feed: what each applied run changed, broadcast to the
//! watches following the state as it is applied.
//!
//! The history itself is in the engine (see `history`); the feed only
//! spares a watch that keeps up the engine reads. It is bounded: a watch
//! that falls behind it (or meets a snapshot install, which no change
//! explains) reads the engine from where it stands instead, so no change is
//! ever lost to the feed's size.

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
    /// The state was replaced (a snapshot install) up to `applied`.
    Reset { applied: u64 },
}

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
        // No receiver is no error: nobody watches.
        let _ = self.sender.send(Arc::new(FeedItem::Applied {
            first,
            applied,
            changes,
        }));
    }

    /// After a snapshot install: the state jumped, no change explains it.
    pub(crate) fn reset(&self, applied: u64) {
        let _ = self.sender.send(Arc::new(FeedItem::Reset { applied }));
    }

    /// Everything published from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<FeedItem>> {
        self.sender.subscribe()
    }
}
