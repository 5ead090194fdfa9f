//! Snapshot transfers in progress, for status pages and `cluster status`.
//!
//! A transfer registers itself once the follower's plan says how many bytes
//! will move, counts bytes as chunks pass, and leaves the registry when its
//! [`TransferGuard`] drops, however the attempt ends. Both sides register:
//! the leader as `Send`, the follower as `Receive`.

use crate::types::NodeId;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

/// Which side of a transfer this node is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    Send,
    Receive,
}

/// One transfer as it stands now.
#[derive(Debug, Clone, PartialEq)]
pub struct TransferProgress {
    /// The other node: the follower when sending, the leader when receiving.
    pub peer: NodeId,
    pub direction: Direction,
    /// The log index the snapshot holds.
    pub snapshot_index: u64,
    /// Bytes this attempt moves (what the follower lacked).
    pub total_bytes: u64,
    /// Bytes moved so far.
    pub done_bytes: u64,
    /// Bytes of the snapshot the follower already had (local tables reused
    /// or an interrupted attempt resumed): a differential transfer has some.
    pub reused_bytes: u64,
    pub elapsed_ms: u64,
}

impl TransferProgress {
    /// Whether the follower reused files it already held.
    pub fn differential(&self) -> bool {
        self.reused_bytes > 0
    }
}

struct Entry {
    peer: NodeId,
    direction: Direction,
    snapshot_index: u64,
    total_bytes: u64,
    reused_bytes: u64,
    done: Arc<AtomicU64>,
    started: Instant,
}

/// The registry; one per node.
#[derive(Default)]
pub struct ActiveTransfers {
    next: AtomicU64,
    entries: parking_lot::Mutex<BTreeMap<u64, Entry>>,
}

impl std::fmt::Debug for ActiveTransfers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ActiveTransfers")
            .field("running", &self.entries.lock().len())
            .finish()
    }
}

impl ActiveTransfers {
    /// Registers a transfer of `total_bytes` until the guard drops.
    pub(crate) fn start(
        self: &Arc<Self>,
        peer: NodeId,
        direction: Direction,
        snapshot_index: u64,
        total_bytes: u64,
        reused_bytes: u64,
    ) -> TransferGuard {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let done = Arc::new(AtomicU64::new(0));
        self.entries.lock().insert(
            id,
            Entry {
                peer,
                direction,
                snapshot_index,
                total_bytes,
                reused_bytes,
                done: done.clone(),
                started: Instant::now(),
            },
        );
        TransferGuard {
            registry: self.clone(),
            id,
            done,
        }
    }

    /// The transfers running now, oldest first.
    pub fn list(&self) -> Vec<TransferProgress> {
        self.entries
            .lock()
            .values()
            .map(|e| TransferProgress {
                peer: e.peer,
                direction: e.direction,
                snapshot_index: e.snapshot_index,
                total_bytes: e.total_bytes,
                done_bytes: e.done.load(Ordering::Relaxed).min(e.total_bytes),
                reused_bytes: e.reused_bytes,
                elapsed_ms: e.started.elapsed().as_millis() as u64,
            })
            .collect()
    }
}

/// A registered transfer; counts bytes, leaves the registry on drop.
pub(crate) struct TransferGuard {
    registry: Arc<ActiveTransfers>,
    id: u64,
    done: Arc<AtomicU64>,
}

impl TransferGuard {
    /// A handle that counts bytes for this transfer from another task.
    pub(crate) fn counter(&self) -> Arc<AtomicU64> {
        self.done.clone()
    }

    pub(crate) fn add(&self, bytes: u64) {
        self.done.fetch_add(bytes, Ordering::Relaxed);
    }
}

impl Drop for TransferGuard {
    fn drop(&mut self) {
        self.registry.entries.lock().remove(&self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_transfer_counts_its_bytes_and_leaves_when_dropped() {
        let registry = Arc::new(ActiveTransfers::default());
        let guard = registry.start(2, Direction::Send, 40, 1000, 0);
        let other = registry.start(3, Direction::Send, 40, 500, 200);
        guard.add(300);
        guard.counter().fetch_add(100, Ordering::Relaxed);
        let list = registry.list();
        assert_eq!(list.len(), 2);
        assert_eq!(
            (list[0].peer, list[0].done_bytes, list[0].total_bytes),
            (2, 400, 1000)
        );
        assert!(!list[0].differential() && list[1].differential());
        drop(guard);
        assert_eq!(registry.list().len(), 1);
        drop(other);
        assert!(registry.list().is_empty());
    }
}
