//! Prompt elections after the leader goes silent.
//!
//! openraft's own timer campaigns a random election timeout (min..max)
//! after the leader's last message, but every voter refuses votes until
//! its leader lease has run out, and openraft's lease is the timeout's
//! maximum. A campaign started before then is refused, and the next one
//! waits a whole new timeout: a dead leader used to cost one and a half to
//! two maxima (p50 ≈ 535 ms with 150–300 ms).
//!
//! This task campaigns as soon as the lease has certainly run out on every
//! voter: when the leader has been silent for `lease + margin + rank ×
//! slot + jitter`.
//! - The campaign is a pre-vote first, so it never disturbs a leader that
//!   a quorum still hears: a voter that heard from it refuses, and the
//!   term does not move.
//! - `margin` covers the time between a message reaching this node (when
//!   silence is measured) and openraft processing it (when its lease
//!   clock starts).
//! - `rank` orders the voters that may campaign (every voter but the
//!   silent leader, by id), and each waits one `slot` more than the one
//!   before it: the first campaigns alone, and has won (or lost) before
//!   the next starts. With a random pause alone (0–50 ms) the two
//!   followers of a dead leader often campaigned within a few ms of each
//!   other; both passed pre-vote, then split the real vote, and the retry
//!   cost the RTO 200–300 ms (in about one round of 40 with a CPU-heavy
//!   neighbour). `jitter` is a small random pause on top.
//! - A round that did not end the silence is retried after one slot per
//!   voter that may campaign, so the voters keep their order and the next
//!   round comes soon: a pre-vote is refused while a voter still holds the
//!   old leader's lease, which under CPU load can outlast the margin, and
//!   a refused pre-vote changes nothing.
//! - A vote this node granted to another candidate in a newer term puts
//!   its own campaign off by half a lease (Raft's rule: granting a vote
//!   restarts the election timer). openraft forgets the leader once
//!   it grants a vote, so without this rule the follower that had just
//!   elected the other one campaigned against it a few ms later, and with
//!   a CPU-heavy neighbour that cost a whole retry (writes resumed ~190 ms
//!   after the new leader was seen, in 2 rounds of 20).
//!
//! It adds no election that openraft's own timer would not start a little
//! later anyway: it only acts after a silence longer than the longest
//! election timeout.

use crate::network::server::PeerContact;
use crate::types::{NodeId, Raft};
use openraft::async_runtime::WatchReceiver;
use openraft::vote::RaftLeaderId;
use rand::Rng;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// When and how often to campaign after the leader goes silent.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Prompt {
    /// openraft's leader lease: the election timeout's maximum.
    pub lease: Duration,
    /// Added to the lease before the first attempt.
    pub margin: Duration,
    /// Each voter waits this much more than the one ranked before it.
    pub slot: Duration,
    /// Each attempt waits a further random pause below this.
    pub jitter: Duration,
    /// How often silence is checked while the followed leader has never
    /// been heard from; otherwise the task sleeps until a campaign could
    /// be due, or the vote, the leader or the state changes.
    pub tick: Duration,
}

impl Prompt {
    pub(crate) fn for_timeouts(heartbeat: Duration, election_max: Duration) -> Prompt {
        Prompt {
            lease: election_max,
            margin: heartbeat / 2,
            slot: heartbeat / 2,
            jitter: heartbeat / 4,
            tick: Duration::from_millis(5).min(heartbeat / 4),
        }
    }
}

/// Runs until the node stops (the caller aborts it).
pub(crate) async fn run(raft: Raft, id: NodeId, contact: Arc<PeerContact>, prompt: Prompt) {
    // Vote, leader, state and membership: what this task reads, and what
    // wakes it besides its own deadlines (openraft's full metrics change
    // several times a write).
    let mut server = raft.server_metrics();
    let mut wake = Some(Instant::now() + prompt.tick);
    // The leader whose silence is timed: the last one this node followed
    // (openraft forgets the leader once an election starts).
    let mut followed: Option<NodeId> = None;
    // The term `followed` led in.
    let mut followed_term = 0;
    let mut next_attempt: Option<Instant> = None;
    // The newest term in which this node voted for another candidate.
    let mut voted_in = 0;
    loop {
        // With nothing due, only a change of the server metrics wakes it.
        let due = async {
            match wake {
                Some(at) => tokio::time::sleep_until(tokio::time::Instant::from_std(at)).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = due => {}
            changed = server.changed() => if changed.is_err() {
                return; // Raft stopped.
            },
        }
        // Read from the channel that woke this task: openraft publishes its
        // full metrics after the server metrics, so at this point they may
        // still hold the old leader or state.
        let (leader, state, voter, term, vote, rank) = {
            let m = server.borrow_and_update();
            let voters = || m.membership_config.membership().voter_ids();
            let voter = voters().any(|v| v == id);
            let rank = rank(voters(), followed, id);
            let vote = (!m.vote.is_committed()).then(|| {
                let candidate = m.vote.leader_id();
                (candidate.term(), *candidate.node_id())
            });
            let term = m.vote.leader_id().term();
            (m.current_leader, m.state, voter, term, vote, rank)
        };
        if state.is_leader() || !voter {
            followed = None;
            next_attempt = None;
            wake = None;
            continue;
        }
        if let Some(leader) = leader {
            if followed != Some(leader) || followed_term != term {
                followed = Some(leader);
                followed_term = term;
                next_attempt = None;
            }
        }
        if let Some((vote_term, candidate)) = vote {
            if candidate != id && vote_term > followed_term && vote_term > voted_in {
                // Another candidate holds this node's vote: give it half
                // a lease to win and be heard.
                voted_in = vote_term;
                next_attempt = Some(Instant::now() + prompt.lease / 2 + jitter(prompt.jitter));
            }
        }
        let Some(silence_from) = followed.and_then(|l| contact.last_from(l)) else {
            // No leader yet: one will change the server metrics.
            wake = followed.map(|_| Instant::now() + prompt.tick);
            continue;
        };
        let silent = silence_from.elapsed();
        if silent < prompt.lease + prompt.margin {
            next_attempt = None;
            // The leader's next message moves this on; it is checked then.
            wake = Some(silence_from + prompt.lease + prompt.margin);
            continue;
        }
        let now = Instant::now();
        let due =
            *next_attempt.get_or_insert_with(|| now + prompt.slot * rank.0 + jitter(prompt.jitter));
        if now < due {
            wake = Some(due);
            continue;
        }
        tracing::info!(
            leader = ?followed,
            silent_ms = silent.as_millis() as u64,
            rank = rank.0,
            term,
            ?vote,
            "leader silent past its lease: campaigning (pre-vote first)"
        );
        if raft.trigger().elect(true).await.is_err() {
            return; // Raft stopped.
        }
        // The next attempt, if this one does not end the silence.
        next_attempt = Some(now + prompt.slot * rank.1 + jitter(prompt.jitter));
        wake = next_attempt;
    }
}

/// This voter's place among the voters that may campaign (all but the
/// silent leader `followed`), by id from 0, and how many there are.
fn rank(voters: impl Iterator<Item = NodeId>, followed: Option<NodeId>, id: NodeId) -> (u32, u32) {
    let (mut before, mut candidates) = (0, 0);
    for voter in voters.filter(|&v| Some(v) != followed) {
        candidates += 1;
        if voter < id {
            before += 1;
        }
    }
    (before, candidates)
}

fn jitter(bound: Duration) -> Duration {
    bound.mul_f64(rand::rng().random_range(0.0..1.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_voters_left_by_a_silent_leader_each_get_their_own_slot() {
        let voters = [1, 2, 3, 5, 8];
        for leader in voters {
            let mut ranks: Vec<u32> = voters
                .iter()
                .filter(|&&v| v != leader)
                .map(|&id| {
                    let (rank, candidates) = rank(voters.into_iter(), Some(leader), id);
                    assert_eq!(candidates, 4);
                    rank
                })
                .collect();
            ranks.sort();
            assert_eq!(ranks, [0, 1, 2, 3], "leader {leader}");
        }
        // With no leader known yet, every voter is a candidate.
        assert_eq!(rank(voters.into_iter(), None, 3), (2, 5));
    }
}
