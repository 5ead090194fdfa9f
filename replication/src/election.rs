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
//! voter: when the leader has been silent for `lease + margin + jitter`.
//! - The campaign is a pre-vote first, so it never disturbs a leader that
//!   a quorum still hears: a voter that heard from it refuses, and the
//!   term does not move.
//! - `margin` covers the time between a message reaching this node (when
//!   silence is measured) and openraft processing it (when its lease
//!   clock starts).
//! - `jitter` is random per attempt, so the two followers of a dead
//!   leader rarely campaign at the same moment and split the vote; a
//!   split (or a refused round) is retried after another jittered pause.
//!
//! It adds no election that openraft's own timer would not start a little
//! later anyway: it only acts after a silence longer than the longest
//! election timeout.

use crate::network::server::PeerContact;
use crate::types::{NodeId, Raft};
use openraft::async_runtime::WatchReceiver;
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
    /// Each attempt waits a further random pause below this.
    pub jitter: Duration,
    /// How often silence is checked.
    pub tick: Duration,
}

impl Prompt {
    pub(crate) fn for_timeouts(heartbeat: Duration, election_max: Duration) -> Prompt {
        Prompt {
            lease: election_max,
            margin: heartbeat / 2,
            jitter: heartbeat,
            tick: Duration::from_millis(5).min(heartbeat / 4),
        }
    }
}

/// Runs until the node stops (the caller aborts it).
pub(crate) async fn run(raft: Raft, id: NodeId, contact: Arc<PeerContact>, prompt: Prompt) {
    let metrics = raft.metrics();
    // The leader whose silence is timed: the last one this node followed
    // (openraft forgets the leader once an election starts).
    let mut followed: Option<NodeId> = None;
    let mut next_attempt: Option<Instant> = None;
    loop {
        tokio::time::sleep(prompt.tick).await;
        let (leader, state, voter) = {
            let m = metrics.borrow_watched();
            let voter = m
                .membership_config
                .membership()
                .voter_ids()
                .any(|v| v == id);
            (m.current_leader, m.state, voter)
        };
        if state.is_leader() || !voter {
            followed = None;
            next_attempt = None;
            continue;
        }
        if let Some(leader) = leader {
            if followed != Some(leader) {
                followed = Some(leader);
                next_attempt = None;
            }
        }
        let Some(silence_from) = followed.and_then(|l| contact.last_from(l)) else {
            continue;
        };
        let silent = silence_from.elapsed();
        if silent < prompt.lease + prompt.margin {
            next_attempt = None;
            continue;
        }
        let now = Instant::now();
        let due = *next_attempt.get_or_insert_with(|| now + jitter(prompt.jitter));
        if now < due {
            continue;
        }
        tracing::info!(
            leader = ?followed,
            silent_ms = silent.as_millis() as u64,
            "leader silent past its lease: campaigning (pre-vote first)"
        );
        if raft.trigger().elect(true).await.is_err() {
            return; // Raft stopped.
        }
        // The next attempt, if this one does not end the silence.
        next_attempt = Some(now + prompt.lease / 2 + jitter(prompt.jitter));
    }
}

fn jitter(bound: Duration) -> Duration {
    bound.mul_f64(rand::rng().random_range(0.0..1.0))
}
