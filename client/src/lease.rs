//! Leases: grant one, attach keys to it ([`Client::put_with_lease`]),
//! and keep it alive in the background ([`KeepAlive`]); when its owner
//! stops renewing it (it crashed, or dropped the handle), the cluster
//! deletes its keys once its TTL has passed.

use crate::client::Client;
use crate::error::{Error, Result};
use crate::pb::{self, lease_client::LeaseClient};
use rand::Rng;
use std::time::Duration;
use tokio::sync::watch;
use tonic::Code;

/// A lease as [`Client::lease_time_to_live`] reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseInfo {
    pub id: u64,
    pub ttl: Duration,
    /// Until the leader revokes it, unless renewed.
    pub remaining: Duration,
    /// Attached keys, if asked for (at most the server's page size).
    pub keys: Vec<Vec<u8>>,
    pub keys_truncated: bool,
}

/// What a [`KeepAlive`] knows of its lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseState {
    /// Renewed `ttl` ago at most (the last renewal succeeded).
    Alive,
    /// The cluster says the lease is gone (expired or revoked), or no
    /// renewal succeeded for a whole TTL, so it may have expired (as
    /// etcd's client decides): its keys are or may be deleted, and
    /// renewing stopped.
    Lost,
}

/// Renews a lease in the background until dropped.
///
/// It renews every third of the TTL, on whichever member leads, through
/// failovers. Dropping it stops the renewals at once (the lease then
/// expires after its TTL); [`Client::lease_revoke`] ends it now.
pub struct KeepAlive {
    id: u64,
    state: watch::Receiver<LeaseState>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for KeepAlive {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl KeepAlive {
    pub fn id(&self) -> u64 {
        self.id
    }

    pub fn state(&self) -> LeaseState {
        *self.state.borrow()
    }

    /// Resolves once the lease is known to be gone. A worker holding work
    /// under the lease must stop then: its keys are deleted. Cancel-safe.
    pub async fn lost(&mut self) {
        let _ = self.state.wait_for(|s| *s == LeaseState::Lost).await;
    }
}

/// Maps the server's NOT_FOUND to [`Error::LeaseNotFound`]: what a lease
/// call, or a write naming lease `id`, fails with when the lease is gone.
pub(crate) fn not_found(id: u64) -> impl Fn(Error) -> Error {
    move |error| match error {
        Error::Server {
            code: Code::NotFound,
            ..
        } => Error::LeaseNotFound(id),
        other => other,
    }
}

impl Client {
    /// Grants a lease of `ttl` (in whole seconds, a fraction rounded up;
    /// within the server's bounds); returns its id.
    ///
    /// The id is chosen here, so a retried grant whose first attempt did
    /// apply is recognised (the lease exists) instead of granting a
    /// second lease. Cancellation: a dropped grant may or may not have
    /// granted a lease; one nobody renews expires after `ttl`.
    ///
    /// ```no_run
    /// # async fn demo(client: ferry_client::Client, lease: u64) -> ferry_client::Result<()> {
    /// let lease = client.lease_grant(std::time::Duration::from_secs(10)).await?;
    /// client.put_with_lease("workers/w1", "alive", lease).await?;
    /// # Ok(()) }
    /// ```
    pub async fn lease_grant(&self, ttl: Duration) -> Result<u64> {
        // Positive as an i64, for etcd's clients.
        let id = rand::rng().random_range(1..=u64::MAX >> 1);
        // Whole seconds on the wire, rounded up: a lease never lives
        // shorter than asked (a keep-alive counts the TTL asked).
        let ttl_secs = ttl.as_secs() + u64::from(ttl.subsec_nanos() > 0);
        let mut attempts = 0u32;
        self.call(true, |connection| {
            attempts += 1;
            let retry = attempts > 1;
            async move {
                let answer = LeaseClient::new(connection.channel)
                    .grant(pb::LeaseGrantRequest { ttl_secs, id })
                    .await;
                match answer {
                    Ok(_) => Ok(id),
                    // An earlier attempt granted it.
                    Err(status) if retry && status.code() == Code::AlreadyExists => Ok(id),
                    Err(status) => Err(status),
                }
            }
        })
        .await
    }

    /// Revokes lease `id`: its keys are deleted, at one revision, which
    /// this returns. Cancellation: the revoke may or may not have applied.
    /// A retry that finds the lease gone (an earlier attempt revoked it,
    /// and its answer was lost) succeeds, with a revision at or after the
    /// revoke's.
    ///
    /// ```no_run
    /// # async fn demo(client: ferry_client::Client, lease: u64) -> ferry_client::Result<()> {
    /// let revision = client.lease_revoke(lease).await?;
    /// # Ok(()) }
    /// ```
    pub async fn lease_revoke(&self, id: u64) -> Result<u64> {
        // Whether an earlier attempt may have revoked it: one sent and not
        // answered (it timed out, or the connection dropped), as opposed
        // to one a member refused (a follower turning it away).
        let unknown = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let revoked = self
            .call(true, |connection| {
                let unknown = unknown.clone();
                async move {
                    use std::sync::atomic::Ordering::Relaxed;
                    // Unknown until answered: a timeout drops this future.
                    let before = unknown.swap(true, Relaxed);
                    let answer = LeaseClient::new(connection.channel)
                        .revoke(pb::LeaseRevokeRequest { id })
                        .await;
                    match answer {
                        Ok(r) => Ok(Some(r.into_inner().header.map_or(0, |h| h.revision))),
                        // An earlier attempt revoked it, and its answer was
                        // lost.
                        Err(status) if status.code() == Code::NotFound && before => Ok(None),
                        Err(status) => {
                            let answered = !matches!(
                                status.code(),
                                Code::Unavailable
                                    | Code::DeadlineExceeded
                                    | Code::Cancelled
                                    | Code::Unknown
                                    | Code::Internal
                            );
                            if answered {
                                unknown.store(before, Relaxed);
                            }
                            Err(status)
                        }
                    }
                }
            })
            .await
            .map_err(not_found(id))?;
        match revoked {
            Some(revision) => Ok(revision),
            // A revision at or after that revoke: the leader's, which
            // applied it (any user may ask for the status).
            None => Ok(self.status().await?.header.map_or(0, |h| h.revision)),
        }
    }

    /// Renews lease `id` once for its whole TTL; returns the TTL.
    /// Cancel-safe (a renewal is idempotent).
    ///
    /// ```no_run
    /// # async fn demo(client: ferry_client::Client, lease: u64) -> ferry_client::Result<()> {
    /// let ttl = client.lease_renew(lease).await?;
    /// # Ok(()) }
    /// ```
    pub async fn lease_renew(&self, id: u64) -> Result<Duration> {
        let ttl_secs = self
            .call(true, |connection| async move {
                let mut answers = LeaseClient::new(connection.channel)
                    .keep_alive(tokio_stream::once(pb::LeaseKeepAliveRequest { id }))
                    .await?
                    .into_inner();
                match answers.message().await? {
                    Some(answer) => Ok(answer.ttl_secs),
                    None => Err(tonic::Status::unavailable("keep-alive stream ended")),
                }
            })
            .await?;
        if ttl_secs == 0 {
            return Err(Error::LeaseNotFound(id));
        }
        Ok(Duration::from_secs(ttl_secs))
    }

    /// Keeps lease `id` (granted with `ttl`) alive in the background until
    /// the handle is dropped.
    ///
    /// ```no_run
    /// # async fn demo(client: ferry_client::Client, lease: u64) -> ferry_client::Result<()> {
    /// let ttl = std::time::Duration::from_secs(10);
    /// let mut alive = client.lease_keep_alive(lease, ttl);
    /// alive.lost().await; // the lease is gone: stop working under it
    /// # Ok(()) }
    /// ```
    pub fn lease_keep_alive(&self, id: u64, ttl: Duration) -> KeepAlive {
        let (report, state) = watch::channel(LeaseState::Alive);
        let client = self.clone();
        // A third of the TTL: two renewals may fail before it runs out.
        let every = |ttl: Duration| (ttl / 3).max(Duration::from_millis(100));
        let mut ttl = ttl;
        let task = tokio::spawn(async move {
            // The lease was granted or renewed just before this handle was
            // asked for; from then on, a renewal that succeeds moves it.
            let mut renewed = tokio::time::Instant::now();
            loop {
                // Nothing may confirm the lease for a whole TTL (the cluster
                // is unreachable, or no member can confirm it leads): then
                // the lease may be gone, and another client may hold what
                // it guarded.
                let left = ttl.saturating_sub(renewed.elapsed());
                // The leader restarts the TTL when it takes the renewal, at
                // the earliest when it is sent: counting from the answer
                // would let this handle say "alive" after the lease ran out.
                let sent = tokio::time::Instant::now();
                match tokio::time::timeout(left, client.lease_renew(id)).await {
                    Ok(Ok(granted)) => {
                        renewed = sent;
                        // The lease's own TTL may be shorter than the one
                        // the caller named.
                        ttl = ttl.min(granted);
                        report.send_replace(LeaseState::Alive);
                        // From when the leader may have restarted the TTL,
                        // not from the answer, which may come late.
                        tokio::time::sleep_until(renewed + every(ttl)).await;
                    }
                    Ok(Err(Error::LeaseNotFound(_))) | Err(_) => {
                        report.send_replace(LeaseState::Lost);
                        return;
                    }
                    Ok(Err(_)) if renewed.elapsed() >= ttl => {
                        report.send_replace(LeaseState::Lost);
                        return;
                    }
                    // No member answered in time: keep trying, sooner.
                    Ok(Err(_)) => {
                        tokio::time::sleep(every(ttl).min(Duration::from_millis(200))).await
                    }
                }
            }
        });
        KeepAlive { id, state, task }
    }

    /// Lease `id`'s TTL, remaining time and, with `keys`, its keys.
    ///
    /// ```no_run
    /// # async fn demo(client: ferry_client::Client, lease: u64) -> ferry_client::Result<()> {
    /// let info = client.lease_time_to_live(lease, true).await?;
    /// println!("{:?} left, keys {:?}", info.remaining, info.keys);
    /// # Ok(()) }
    /// ```
    pub async fn lease_time_to_live(&self, id: u64, keys: bool) -> Result<LeaseInfo> {
        self.call(true, |connection| async move {
            LeaseClient::new(connection.channel)
                .time_to_live(pb::LeaseTimeToLiveRequest { id, keys })
                .await
                .map(|r| {
                    let r = r.into_inner();
                    LeaseInfo {
                        id: r.id,
                        ttl: Duration::from_secs(r.granted_ttl_secs),
                        remaining: Duration::from_millis(r.remaining_ms),
                        keys: r.keys,
                        keys_truncated: r.keys_truncated,
                    }
                })
        })
        .await
        .map_err(not_found(id))
    }

    /// Every lease, with its granted TTL.
    ///
    /// ```no_run
    /// # async fn demo(client: ferry_client::Client, lease: u64) -> ferry_client::Result<()> {
    /// for (id, ttl) in client.leases().await? {
    ///     println!("{id}: {ttl:?}");
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn leases(&self) -> Result<Vec<(u64, Duration)>> {
        self.call(true, |connection| async move {
            LeaseClient::new(connection.channel)
                .list(pb::LeaseListRequest {})
                .await
                .map(|r| {
                    r.into_inner()
                        .leases
                        .into_iter()
                        .map(|l| (l.id, Duration::from_secs(l.ttl_secs)))
                        .collect()
                })
        })
        .await
    }
}
