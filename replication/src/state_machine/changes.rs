//! The change feed: every applied put and delete, for watches.
//!
//! A bounded in-memory history plus a broadcast of new changes. The history
//! is complete from `retained_from` on; a watch from an older revision gets
//! [`Compacted`]. It starts at the applied index when the node opens (older
//! changes are in the engine as state, not as events) and moves up as old
//! changes are evicted or a snapshot replaces the state.

use parking_lot::Mutex;
use std::collections::VecDeque;
use std::sync::Arc;
use tokio::sync::broadcast;

/// One applied change of a user key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub revision: u64,
    pub key: Vec<u8>,
    /// `None` for a delete.
    pub value: Option<Vec<u8>>,
    pub create_revision: u64,
    pub version: u64,
}

/// A watch asked for a revision older than the feed retains.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("revision {requested} is no longer retained; the oldest retained is {oldest}")]
pub struct Compacted {
    pub requested: u64,
    pub oldest: u64,
}

struct History {
    changes: VecDeque<Arc<Change>>,
    /// Every change with a revision at or above this one is in `changes`.
    retained_from: u64,
}

/// Retained changes from the requested revision, and a receiver of the
/// changes after them.
pub type Subscription = (Vec<Arc<Change>>, broadcast::Receiver<Arc<Change>>);

/// See the module docs.
pub struct ChangeFeed {
    history: Mutex<History>,
    capacity: usize,
    sender: broadcast::Sender<Arc<Change>>,
}

impl ChangeFeed {
    pub(crate) fn new(applied_index: u64, capacity: usize) -> Self {
        ChangeFeed {
            history: Mutex::new(History {
                changes: VecDeque::new(),
                retained_from: applied_index + 1,
            }),
            capacity,
            sender: broadcast::channel(capacity.max(16)).0,
        }
    }

    pub(crate) fn publish(&self, changes: Vec<Change>) {
        let mut history = self.history.lock();
        for change in changes {
            let change = Arc::new(change);
            history.changes.push_back(change.clone());
            let _ = self.sender.send(change);
        }
        while history.changes.len() > self.capacity {
            let evicted = history.changes.pop_front().expect("non-empty");
            history.retained_from = history.retained_from.max(evicted.revision + 1);
        }
    }

    /// After a snapshot install: the state jumped, no event explains it.
    pub(crate) fn reset(&self, applied_index: u64) {
        let mut history = self.history.lock();
        history.changes.clear();
        history.retained_from = applied_index + 1;
    }

    /// Changes from `from_revision` on (0: from now on): the retained ones,
    /// and a receiver of later ones, with no gap between them.
    pub fn subscribe(&self, from_revision: u64) -> Result<Subscription, Compacted> {
        let history = self.history.lock();
        let receiver = self.sender.subscribe();
        if from_revision == 0 {
            return Ok((Vec::new(), receiver));
        }
        if from_revision < history.retained_from {
            return Err(Compacted {
                requested: from_revision,
                oldest: history.retained_from,
            });
        }
        let backlog = history
            .changes
            .iter()
            .filter(|c| c.revision >= from_revision)
            .cloned()
            .collect();
        Ok((backlog, receiver))
    }
}
