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

#[cfg(test)]
mod tests {
    use super::*;

    fn change(revision: u64) -> Change {
        Change {
            revision,
            key: format!("k{revision}").into_bytes(),
            value: Some(vec![1]),
            create_revision: revision,
            version: 1,
        }
    }

    #[test]
    fn a_subscription_gets_the_backlog_then_live_changes_without_a_gap() {
        let feed = ChangeFeed::new(10, 100);
        feed.publish(vec![change(11), change(12)]);
        let (backlog, mut live) = feed.subscribe(12).unwrap();
        assert_eq!(
            backlog.iter().map(|c| c.revision).collect::<Vec<_>>(),
            vec![12]
        );
        feed.publish(vec![change(13)]);
        assert_eq!(live.try_recv().unwrap().revision, 13);
    }

    #[test]
    fn revisions_before_the_retained_history_are_refused() {
        let feed = ChangeFeed::new(10, 2);
        // Before the node opened: never retained.
        assert_eq!(
            feed.subscribe(5).unwrap_err(),
            Compacted {
                requested: 5,
                oldest: 11
            }
        );
        feed.publish(vec![change(11), change(12), change(13)]);
        // Evicted by the capacity.
        assert_eq!(feed.subscribe(11).unwrap_err().oldest, 12);
        assert_eq!(feed.subscribe(12).unwrap().0.len(), 2);
        // A snapshot install restarts the history.
        feed.reset(100);
        assert!(feed.subscribe(50).is_err());
        assert!(feed.subscribe(0).unwrap().0.is_empty());
    }
}
