//! Fault injection for the node-to-node network, for tests: cut a link in
//! one direction, delay it, isolate a node, heal everything.
//!
//! The real gRPC transport consults it on every call, so tests exercise the
//! production code path. Cutting `a → b` loses requests from `a` to `b`
//! before they are sent; cutting `b → a` lets the request through and loses
//! the answer (the receiver acted, the sender never learns it).

use crate::types::NodeId;
use parking_lot::RwLock;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

#[derive(Default)]
struct Faults {
    cut: HashSet<(NodeId, NodeId)>,
    delay: HashMap<(NodeId, NodeId), Duration>,
}

/// Shared switchboard of network faults; `Default` is a healthy network.
#[derive(Clone, Default)]
pub struct NetworkControl {
    faults: Arc<RwLock<Faults>>,
}

impl NetworkControl {
    /// Loses every message from `from` to `to`.
    pub fn cut(&self, from: NodeId, to: NodeId) {
        self.faults.write().cut.insert((from, to));
    }

    /// Cuts every link to and from `node`.
    pub fn isolate(&self, node: NodeId, others: impl IntoIterator<Item = NodeId>) {
        let mut faults = self.faults.write();
        for other in others {
            if other != node {
                faults.cut.insert((node, other));
                faults.cut.insert((other, node));
            }
        }
    }

    /// Delays every message from `from` to `to`.
    pub fn delay(&self, from: NodeId, to: NodeId, by: Duration) {
        self.faults.write().delay.insert((from, to), by);
    }

    /// Restores a healthy network.
    pub fn heal(&self) {
        let mut faults = self.faults.write();
        faults.cut.clear();
        faults.delay.clear();
    }

    pub(crate) fn is_cut(&self, from: NodeId, to: NodeId) -> bool {
        self.faults.read().cut.contains(&(from, to))
    }

    pub(crate) fn delay_of(&self, from: NodeId, to: NodeId) -> Option<Duration> {
        self.faults.read().delay.get(&(from, to)).copied()
    }
}
