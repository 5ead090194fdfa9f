//! The leader's lease clock: when each lease expires, by this node's
//! monotonic clock, and the task that revokes expired leases and
//! checkpoints the others' remaining TTL.
//!
//! Only the leader holds deadlines. A node that becomes leader loads them
//! from the replicated state once per term (after a read barrier, so that
//! it has applied every grant and revoke committed before it), each at its
//! checkpointed remaining TTL plus the failover extension.
//!
//! Why no lease expires early after a failover: a checkpoint records a
//! lease's exact remaining TTL at the time it is taken, and only leases
//! nobody renewed for half their TTL are checkpointed. A renewal of a
//! lease whose recorded remaining TTL may be below its TTL first records
//! the whole TTL again (one proposal), and only then answers. So whatever
//! a new leader loads, the deadline it sets is no earlier than the one the
//! old leader had promised (etcd-io/etcd#13508 fixed the same gap).
//!
//! Why a cut-off leader renews nothing: openraft leaves a leader that
//! lost its quorum in the Leader state, while the majority elects
//! another whose clock expires the lease. A renewal is answered only
//! while openraft's leader lease holds (a quorum acknowledged this leader
//! within the election timeout maximum, so no other can have been
//! elected), and never past the lease's own deadline (its revoke is
//! coming).

use super::{store, LeaseCommand, LeaseError, LeaseOptions, LeaseRecord, RevokeAs};
use crate::state_machine::SmShared;
use crate::types::{now_ms, Command, Raft};
use crate::{Error, Result};
use openraft::async_runtime::WatchReceiver;
use openraft::{ReadPolicy, ServerState};
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// How often the expiry task looks at the deadlines at most.
const TICK: Duration = Duration::from_millis(50);
/// Leases per checkpoint command.
const CHECKPOINT_CHUNK: usize = 1_000;

#[derive(Clone, Copy)]
struct Held {
    ttl: Duration,
    deadline: Instant,
    /// The replicated state may record less than the whole TTL as this
    /// lease's remaining time (a checkpoint was taken or is on its way).
    stored_low: bool,
    /// Not renewed under this leader since then (this leader took over, or
    /// last checkpointed it): see [`Keeper::is_due`]. Else a lease
    /// abandoned by its owner, under leaders that each lead for less than
    /// half its TTL, would be given its whole TTL again by each of them,
    /// and never expire.
    unrenewed_since: Option<Instant>,
}

impl Held {
    /// A lease granted or renewed now, for its whole `ttl`.
    fn whole(ttl: Duration) -> Held {
        Held {
            ttl,
            deadline: Instant::now() + ttl,
            stored_low: false,
            unrenewed_since: None,
        }
    }
}

#[derive(Default)]
struct Clock {
    /// The term the deadlines were loaded for (0: none loaded).
    term: u64,
    held: HashMap<u64, Held>,
}

pub(crate) struct Keeper {
    raft: Raft,
    shared: Arc<SmShared>,
    pub(crate) options: LeaseOptions,
    clock: Mutex<Clock>,
    /// Held from computing a checkpoint of remaining TTLs until it is
    /// committed, and by a renewal that records a whole TTL: so a
    /// checkpoint computed before a renewal never commits after the
    /// renewal's whole TTL (the state would say less than the clock).
    checkpoints: tokio::sync::Mutex<()>,
}

impl Keeper {
    pub(crate) fn new(raft: Raft, shared: Arc<SmShared>, options: LeaseOptions) -> Keeper {
        Keeper {
            raft,
            shared,
            options,
            clock: Mutex::new(Clock::default()),
            checkpoints: tokio::sync::Mutex::new(()),
        }
    }

    /// The state machine's shared state (the forward service answers a
    /// few calls about this member from it).
    pub(crate) fn shared(&self) -> &Arc<SmShared> {
        &self.shared
    }

    fn not_leader(&self) -> Error {
        let metrics = self.raft.metrics().borrow_watched().clone();
        let leader_addr = metrics.current_leader.and_then(|leader| {
            metrics
                .membership_config
                .membership()
                .get_node(&leader)
                .map(|n| n.raft_addr.clone())
        });
        Error::NotLeader {
            leader_id: metrics.current_leader,
            leader_addr,
        }
    }

    /// Fails unless this node leads; loads the deadlines once per term.
    pub(crate) async fn ready(&self) -> Result<()> {
        let (state, term) = {
            let metrics = self.raft.metrics();
            let m = metrics.borrow_watched();
            (m.state, m.current_term)
        };
        if state != ServerState::Leader {
            return Err(self.not_leader());
        }
        if self.clock.lock().term == term {
            return Ok(());
        }
        // Everything committed before this term is applied after this.
        self.raft
            .ensure_linearizable(ReadPolicy::ReadIndex)
            .await
            .map_err(|_| self.not_leader())?;
        let leases = store::all(&self.shared.db().snapshot())?;
        let now = Instant::now();
        let mut clock = self.clock.lock();
        if clock.term != term {
            clock.held = leases
                .into_iter()
                .map(|(id, record)| {
                    let remaining = record.remaining_ms.unwrap_or(record.ttl_ms);
                    let deadline =
                        now + Duration::from_millis(remaining) + self.options.failover_extension;
                    (
                        id,
                        Held {
                            ttl: Duration::from_millis(record.ttl_ms),
                            deadline,
                            stored_low: record.remaining_ms.is_some_and(|r| r < record.ttl_ms),
                            unrenewed_since: Some(now),
                        },
                    )
                })
                .collect();
            clock.term = term;
            tracing::debug!(term, leases = clock.held.len(), "lease deadlines loaded");
        }
        Ok(())
    }

    /// Checks a grant's TTL and the lease count; returns the id to grant
    /// (`id`, or a fresh one for 0).
    pub(crate) async fn prepare_grant(&self, id: u64, ttl: Duration) -> Result<u64, LeaseCall> {
        let (min, max) = (self.options.min_ttl, self.options.max_ttl);
        if ttl < min || ttl > max {
            return Err(LeaseCall::Lease(LeaseError::Ttl {
                asked: ttl,
                min,
                max,
            }));
        }
        self.ready().await?;
        let clock = self.clock.lock();
        if clock.held.len() >= self.options.max_leases {
            return Err(LeaseCall::Lease(LeaseError::TooMany(clock.held.len())));
        }
        if id != 0 {
            // A grant of a lease that exists would be refused at apply; its
            // TTL must not reach the clock of the lease that exists. On the
            // clock alone, it is a grant under way or one that failed
            // before it applied (a retry's first attempt): proposed again,
            // apply decides.
            if clock.held.contains_key(&id)
                && store::get(&self.shared.db().snapshot(), id)
                    .map_err(|e| LeaseCall::Node(e.into()))?
                    .is_some()
            {
                return Err(LeaseCall::Lease(LeaseError::Exists(id)));
            }
            return Ok(id);
        }
        // Positive as an i64, for etcd's clients.
        loop {
            let fresh = rand::random::<u64>() >> 1;
            if fresh != 0 && !clock.held.contains_key(&fresh) {
                return Ok(fresh);
            }
        }
    }

    /// Puts lease `id`, about to be granted with `ttl`, on the clock;
    /// false if the clock already holds it (a concurrent grant of the same
    /// id, or an earlier attempt): then the clock keeps what it holds.
    /// Refused if the clock holds `max_leases` others: counted and taken
    /// under one lock, so concurrent grants cannot pass the bound together.
    fn granting(&self, id: u64, ttl: Duration) -> Result<bool, LeaseCall> {
        let mut clock = self.clock.lock();
        let held = clock.held.len();
        match clock.held.entry(id) {
            std::collections::hash_map::Entry::Occupied(_) => Ok(false),
            std::collections::hash_map::Entry::Vacant(_) if held >= self.options.max_leases => {
                Err(LeaseCall::Lease(LeaseError::TooMany(held)))
            }
            std::collections::hash_map::Entry::Vacant(vacant) => {
                vacant.insert(Held::whole(ttl));
                Ok(true)
            }
        }
    }

    /// Puts on the clock every lease of the replicated state it lacks (at
    /// its recorded remaining TTL, or its TTL, from now): no lease may be
    /// granted without ever expiring, whatever call was dropped where.
    fn reconcile(&self) -> Result<()> {
        let leases = store::all(&self.shared.db().snapshot())?;
        let now = Instant::now();
        let mut clock = self.clock.lock();
        for (id, record) in leases {
            clock.held.entry(id).or_insert_with(|| {
                tracing::warn!(lease = id, "a lease was missing from the leader's clock");
                Held {
                    ttl: Duration::from_millis(record.ttl_ms),
                    deadline: now
                        + Duration::from_millis(record.remaining_ms.unwrap_or(record.ttl_ms)),
                    stored_low: record.remaining_ms.is_some_and(|r| r < record.ttl_ms),
                    unrenewed_since: Some(now),
                }
            });
        }
        Ok(())
    }

    /// Lease `id` is gone.
    pub(crate) fn revoked(&self, id: u64) {
        self.clock.lock().held.remove(&id);
    }

    /// Fails unless a quorum acknowledged this node as leader within
    /// openraft's leader lease (its election timeout maximum): no other
    /// leader can have been elected since, and a new one adds the failover
    /// extension to every lease anyway. No round trip: the lease is kept
    /// by the heartbeats and appends the leader sends regardless.
    async fn confirm_leadership(&self) -> Result<()> {
        self.raft
            .get_read_linearizer(ReadPolicy::LeaseRead)
            .await
            .map(drop)
            .map_err(|_| self.not_leader())
    }

    /// The index a linearizable read must see, once this leader has
    /// confirmed its leadership with a quorum.
    pub(crate) async fn read_index(&self) -> Result<u64> {
        let read = self
            .raft
            .ensure_linearizable(ReadPolicy::ReadIndex)
            .await
            .map_err(|e| match e.forward_to_leader() {
                Some(forward) => Error::NotLeader {
                    leader_id: forward.leader_id,
                    leader_addr: None,
                },
                None => Error::Raft(e.to_string()),
            })?;
        Ok(read.index())
    }

    /// Grants lease `id` (a fresh id for 0) of `ttl`, proposing the grant
    /// with `propose`; returns the id.
    pub(crate) async fn grant<F, Fut>(
        &self,
        id: u64,
        ttl: Duration,
        propose: F,
    ) -> Result<u64, LeaseCall>
    where
        F: FnOnce(Command) -> Fut,
        Fut: std::future::Future<Output = Result<crate::types::Response>>,
    {
        let id = self.prepare_grant(id, ttl).await?;
        let ttl_ms = ttl.as_millis() as u64;
        // On the clock before it is proposed: if this call is dropped after
        // the grant applied (its client went away), the lease still
        // expires; if the grant never applies, the revoke at its deadline
        // finds no lease and the clock forgets it.
        let first_on_clock = self.granting(id, ttl)?;
        match propose(Command::Lease(LeaseCommand::Grant { id, ttl_ms })).await {
            Ok(_) => {
                if !first_on_clock {
                    // The clock held an earlier attempt's deadline: this
                    // grant is the one that applied, and its TTL runs from
                    // now (as etcd's lessor starts it at apply).
                    self.clock.lock().held.insert(id, Held::whole(ttl));
                }
                Ok(id)
            }
            Err(Error::Rejected(_)) => {
                // The lease exists in the state but was not on the clock
                // (it is put there from the state at the next checkpoint
                // round): take this grant's deadline off again, so that
                // the clock learns the lease's own.
                self.revoked(id);
                self.reconcile()?;
                Err(LeaseError::Exists(id).into())
            }
            Err(error) => Err(error.into()),
        }
    }

    /// Revokes lease `id`, deleting its keys at one revision (proposed with
    /// `propose`), which it returns.
    pub(crate) async fn revoke<F, Fut>(
        &self,
        id: u64,
        by: RevokeAs,
        propose: &F,
    ) -> Result<u64, LeaseCall>
    where
        F: Fn(Command) -> Fut,
        Fut: std::future::Future<Output = Result<crate::types::Response>>,
    {
        let change = match by {
            RevokeAs::Node => LeaseCommand::Revoke { id, time_ms: 0 },
            RevokeAs::Client { user } => LeaseCommand::RevokeBy {
                id,
                time_ms: 0,
                user,
            },
        };
        match propose(Command::Lease(change)).await {
            Ok(response) => {
                self.revoked(id);
                Ok(response.revision)
            }
            Err(Error::Rejected(reason)) if reason == LeaseError::Denied(id).to_string() => {
                Err(LeaseError::Denied(id).into())
            }
            Err(Error::Rejected(_)) => Err(LeaseError::NotFound(id).into()),
            Err(error) => Err(error.into()),
        }
    }

    /// Renews lease `id` for its whole TTL; returns the TTL.
    ///
    /// Only once this node has confirmed with a quorum that it still leads
    /// (as etcd's `LeaseRenew` does): a leader cut off from the others
    /// keeps its role until it hears of a newer term, and meanwhile the
    /// new leader's clock expires the lease, so a renewal it answered would
    /// tell a lock holder its lock is safe when another client may hold it.
    pub(crate) async fn keep_alive(&self, id: u64) -> Result<Duration, LeaseCall> {
        self.ready().await?;
        self.confirm_leadership().await?;
        let (ttl, stored_low) = {
            let mut clock = self.clock.lock();
            let Some(held) = clock.held.get_mut(&id) else {
                return Err(LeaseCall::Lease(LeaseError::NotFound(id)));
            };
            let now = Instant::now();
            if held.deadline <= now {
                // Expired: its revoke is due or on its way, and will
                // delete the keys whatever this renewal says.
                return Err(LeaseCall::Lease(LeaseError::NotFound(id)));
            }
            held.deadline = now + held.ttl;
            held.unrenewed_since = None;
            (held.ttl, held.stored_low)
        };
        if stored_low {
            // Record the whole TTL before answering (see the module docs),
            // after any checkpoint already computed has committed.
            let _order = self.checkpoints.lock().await;
            let whole = Command::Lease(LeaseCommand::Checkpoint {
                remaining: vec![(id, ttl.as_millis() as u64)],
            });
            self.raft
                .client_write(whole.into())
                .await
                .map_err(|_| LeaseCall::Node(self.not_leader()))?;
            if let Some(held) = self.clock.lock().held.get_mut(&id) {
                held.stored_low = false;
            }
        }
        // A revoke applied a moment ago may not have reached the clock.
        if store::get(&self.shared.db().snapshot(), id)?.is_none() {
            self.revoked(id);
            return Err(LeaseCall::Lease(LeaseError::NotFound(id)));
        }
        Ok(ttl)
    }

    /// Lease `id` with its remaining TTL and attached keys (at most
    /// `key_limit`).
    pub(crate) async fn status(
        &self,
        id: u64,
        key_limit: usize,
    ) -> Result<super::LeaseStatus, LeaseCall> {
        self.ready().await?;
        let view = self.shared.db().snapshot();
        let Some(record) = store::get(&view, id)? else {
            return Err(LeaseCall::Lease(LeaseError::NotFound(id)));
        };
        let remaining = match self.clock.lock().held.get(&id) {
            Some(held) => held.deadline.saturating_duration_since(Instant::now()),
            None => Duration::from_millis(record.remaining_ms.unwrap_or(record.ttl_ms)),
        };
        let (keys, keys_truncated) = store::attached(&view, id, key_limit)?;
        Ok(super::LeaseStatus {
            id,
            ttl: Duration::from_millis(record.ttl_ms),
            remaining,
            keys,
            keys_truncated,
        })
    }

    /// Every lease in this node's state, by id.
    pub(crate) fn all(&self) -> Result<Vec<(u64, LeaseRecord)>> {
        Ok(store::all(&self.shared.db().snapshot())?)
    }

    fn leads(&self) -> bool {
        self.raft.metrics().borrow_watched().state == ServerState::Leader
    }

    /// The ids whose deadline has passed.
    fn expired(&self) -> Vec<u64> {
        let now = Instant::now();
        self.clock
            .lock()
            .held
            .iter()
            .filter(|(_, held)| held.deadline <= now)
            .map(|(id, _)| *id)
            .collect()
    }

    fn still_expired(&self, id: u64) -> bool {
        self.clock
            .lock()
            .held
            .get(&id)
            .is_some_and(|held| held.deadline <= Instant::now())
    }

    /// Whether `held` is due a checkpoint: nobody renewed it for half its
    /// TTL; or under this leader for a third of its TTL plus the failover
    /// extension (a live owner renews by then: clients renew every third
    /// of the TTL, and find a new leader within the extension), then
    /// every checkpoint interval. Leases being renewed are never due, so
    /// a new leader writes nothing for them (a lease checkpointed low
    /// costs its next renewal a write of its own); and each checkpoint
    /// records less than the last, so an abandoned lease moves on under
    /// every leader that leads longer than the first wait.
    fn is_due(&self, held: &Held, now: Instant) -> bool {
        let interval = self.options.checkpoint_interval;
        let wait = if held.stored_low {
            interval
        } else {
            held.ttl / 3 + self.options.failover_extension
        };
        held.deadline.saturating_duration_since(now) < held.ttl / 2
            || held.unrenewed_since.is_some_and(|since| {
                // A round comes an interval after the last began, a little
                // before this one stamped `since`.
                now.duration_since(since) + interval / 4 >= wait
            })
    }

    /// The leases due a checkpoint, in checkpoint-sized chunks of ids.
    fn due(&self) -> Vec<Vec<u64>> {
        let now = Instant::now();
        let clock = self.clock.lock();
        let mut due: Vec<u64> = clock
            .held
            .iter()
            .filter(|(_, held)| self.is_due(held, now))
            .map(|(id, _)| *id)
            .collect();
        due.sort_unstable();
        due.chunks(CHECKPOINT_CHUNK).map(<[_]>::to_vec).collect()
    }

    /// The remaining TTL, now, of those of `ids` still due. They are
    /// marked as possibly recorded low before the checkpoint is proposed,
    /// so a renewal from now on records the whole TTL again (after this
    /// checkpoint commits: the caller holds `checkpoints`).
    fn remaining(&self, ids: &[u64]) -> Vec<(u64, u64)> {
        let now = Instant::now();
        let mut clock = self.clock.lock();
        ids.iter()
            .filter_map(|id| {
                let held = clock.held.get_mut(id)?;
                let left = held.deadline.saturating_duration_since(now);
                self.is_due(held, now).then(|| {
                    held.stored_low = true;
                    if held.unrenewed_since.is_some() {
                        held.unrenewed_since = Some(now);
                    }
                    (*id, left.as_millis() as u64)
                })
            })
            .collect()
    }

    /// Proposes the checkpoints of the leases due one, each chunk computed
    /// just before it is proposed and committed before a renewal may
    /// record a whole TTL.
    async fn checkpoint(&self) {
        for ids in self.due() {
            let _order = self.checkpoints.lock().await;
            let remaining = self.remaining(&ids);
            if remaining.is_empty() {
                continue;
            }
            let checkpoint = Command::Lease(LeaseCommand::Checkpoint { remaining });
            if let Err(error) = self.raft.client_write(checkpoint.into()).await {
                tracing::debug!(%error, "lease checkpoint not proposed");
                break;
            }
        }
    }
}

/// Why a lease call failed: the lease, or the node.
#[derive(Debug, thiserror::Error)]
pub enum LeaseCall {
    #[error(transparent)]
    Lease(#[from] LeaseError),
    #[error(transparent)]
    Node(#[from] Error),
}

impl From<std::io::Error> for LeaseCall {
    fn from(error: std::io::Error) -> Self {
        LeaseCall::Node(Error::Storage(error))
    }
}

impl Keeper {
    /// Proposes the next step of every revoked lease that still has keys
    /// (see [`LeaseCommand::Drain`]).
    async fn drain(&self) {
        let ids = match store::draining(&self.shared.db().snapshot()) {
            Ok(ids) => ids,
            Err(error) => {
                tracing::warn!(%error, "reading the draining leases");
                return;
            }
        };
        for id in ids {
            let drain = Command::Lease(LeaseCommand::Drain {
                id,
                time_ms: now_ms(),
            });
            if let Err(error) = self.raft.client_write(drain.into()).await {
                tracing::debug!(%error, lease = id, "lease drain not proposed");
                return;
            }
        }
    }
}

/// Revokes expired leases, finishes revoked ones and checkpoints the
/// rest, while this node leads; runs until aborted.
pub(crate) async fn run(keeper: Arc<Keeper>) {
    let mut next_checkpoint = Instant::now() + keeper.options.checkpoint_interval;
    loop {
        tokio::time::sleep(TICK).await;
        if !keeper.leads() {
            let mut clock = keeper.clock.lock();
            clock.term = 0;
            clock.held.clear();
            continue;
        }
        if keeper.ready().await.is_err() {
            continue;
        }
        for id in keeper.expired() {
            if !keeper.still_expired(id) {
                continue;
            }
            let revoke = Command::Lease(LeaseCommand::Revoke {
                id,
                time_ms: now_ms(),
            });
            match keeper.raft.client_write(revoke.into()).await {
                Ok(written) => {
                    // Refused: another revoke got there first; gone either way.
                    keeper.revoked(id);
                    if written.data.rejected.is_none() {
                        tracing::debug!(lease = id, "lease expired and revoked");
                    }
                }
                Err(error) => {
                    tracing::debug!(%error, lease = id, "lease revoke not proposed");
                    break;
                }
            }
        }
        keeper.drain().await;
        if Instant::now() >= next_checkpoint {
            next_checkpoint = Instant::now() + keeper.options.checkpoint_interval;
            if let Err(error) = keeper.reconcile() {
                tracing::warn!(%error, "reading the leases");
            }
            keeper.checkpoint().await;
        }
    }
}
