//! The failovers this member saw, and how long each kept writes from
//! succeeding: the RTO as observed here.
//!
//! A failover starts when this member loses its leader: the leader it knew
//! changes or is gone. Its start is the last time this member heard from
//! the old leader (for a leader that died, within one heartbeat of its
//! death; on the old leader itself, the moment it stepped down). It ends
//! when this member applies the first entry of the new leader's term: the
//! new leader commits that entry before any write, so from then on writes
//! succeed. On a follower the end also includes the one heartbeat that
//! brings it the new commit index, so a follower's figure reads a little
//! high, never low.

use ferry_replication::types::now_ms;
use ferry_replication::Node;
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;

/// Failovers kept.
pub const KEPT: usize = 20;

/// One failover.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failover {
    /// When it started (ms since the Unix epoch).
    pub at_ms: u64,
    /// The leader lost.
    pub from: u64,
    /// The new leader, once known.
    pub to: Option<u64>,
    /// The new leader's term, once known.
    pub term: Option<u64>,
    /// From the start until writes succeeded again; `None` while it lasts.
    pub rto_ms: Option<u64>,
}

struct Pending {
    started: Instant,
    failover: Failover,
}

#[derive(Default)]
struct State {
    leader: Option<u64>,
    pending: Option<Pending>,
    done: VecDeque<Failover>,
}

/// The tracker: fed by the node's Raft metrics, read by the status page.
#[derive(Default)]
pub struct Failovers {
    state: parking_lot::Mutex<State>,
}

impl Failovers {
    /// The failovers seen, newest first, the one in progress (if any) first
    /// of all.
    pub fn list(&self) -> Vec<Failover> {
        let state = self.state.lock();
        state
            .pending
            .iter()
            .map(|p| p.failover.clone())
            .chain(state.done.iter().rev().cloned())
            .collect()
    }

    /// Takes in what the node knows now: `leader` and `term`, and the term
    /// of the last applied entry. `lost_contact` is when this member last
    /// heard from a given leader. Returns whether a failover is under way.
    fn observe(
        &self,
        me: u64,
        leader: Option<u64>,
        term: u64,
        applied_term: Option<u64>,
        lost_contact: impl Fn(u64) -> Option<Instant>,
    ) -> bool {
        let mut state = self.state.lock();
        let now = Instant::now();
        if leader != state.leader {
            if let (Some(old), None) = (state.leader, &state.pending) {
                // The old leader's last word here; this member itself, if
                // it led, stopped leading just now.
                let started = if old == me {
                    now
                } else {
                    lost_contact(old).unwrap_or(now).min(now)
                };
                state.pending = Some(Pending {
                    started,
                    failover: Failover {
                        at_ms: now_ms()
                            .saturating_sub(now.duration_since(started).as_millis() as u64),
                        from: old,
                        to: None,
                        term: None,
                        rto_ms: None,
                    },
                });
            }
            state.leader = leader;
            if let (Some(new), Some(pending)) = (leader, state.pending.as_mut()) {
                pending.failover.to = Some(new);
                pending.failover.term = Some(term);
            }
        }
        let finished = state.pending.as_ref().is_some_and(
            |p| matches!((p.failover.term, applied_term), (Some(t), Some(a)) if a >= t),
        );
        if finished {
            let Pending {
                started,
                mut failover,
            } = state.pending.take().expect("checked above");
            failover.rto_ms = Some(now.duration_since(started).as_millis() as u64);
            if state.done.len() == KEPT {
                state.done.pop_front();
            }
            state.done.push_back(failover);
        }
        state.pending.is_some()
    }

    /// Follows who leads `node` until `stopped` turns true.
    pub async fn run(
        self: Arc<Self>,
        node: Arc<Node>,
        mut stopped: tokio::sync::watch::Receiver<bool>,
    ) {
        let mut watch = node.leadership_watch();
        loop {
            let now = watch.current();
            let pending = self.observe(node.id(), now.leader, now.term, now.applied_term, |peer| {
                node.last_contact(peer)
            });
            // Applied entries matter only while a failover lasts: its end
            // is the first entry of the new term applied here.
            tokio::select! {
                _ = stopped.wait_for(|s| *s) => return,
                changed = watch.changed(pending) => if !changed { return },
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_failover_runs_from_the_last_word_of_the_old_leader_to_the_new_terms_first_entry() {
        let failovers = Failovers::default();
        let heard = Instant::now();
        // Node 2 leads term 1; this is node 3.
        failovers.observe(3, Some(2), 1, Some(1), |_| Some(heard));
        assert!(
            failovers.list().is_empty(),
            "the first leader is no failover"
        );
        std::thread::sleep(Duration::from_millis(30));
        failovers.observe(3, None, 2, Some(1), |_| Some(heard));
        let pending = failovers.list();
        assert_eq!(
            (pending[0].from, pending[0].to, pending[0].rto_ms),
            (2, None, None)
        );
        failovers.observe(3, Some(1), 2, Some(1), |_| Some(heard));
        assert_eq!(failovers.list()[0].to, Some(1));
        assert_eq!(
            failovers.list()[0].rto_ms,
            None,
            "nothing of term 2 applied yet"
        );
        failovers.observe(3, Some(1), 2, Some(2), |_| Some(heard));
        let done = failovers.list();
        assert_eq!(done.len(), 1);
        assert_eq!((done[0].to, done[0].term), (Some(1), Some(2)));
        assert!(done[0].rto_ms.unwrap() >= 30);
    }

    #[test]
    fn a_leader_that_steps_down_starts_its_failover_itself_and_only_the_newest_are_kept() {
        let failovers = Failovers::default();
        let mut term = 1;
        failovers.observe(1, Some(1), term, Some(term), |_| None);
        for _ in 0..(KEPT + 5) {
            term += 1;
            let next = if term % 2 == 0 { 2 } else { 1 };
            failovers.observe(1, Some(next), term, Some(term), |_| None);
        }
        let list = failovers.list();
        assert_eq!(list.len(), KEPT);
        assert_eq!(list[0].term, Some(term), "newest first");
        assert!(list.iter().all(|f| f.rto_ms.is_some()));
    }
}
