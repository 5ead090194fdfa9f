//! Distributed locks with fencing tokens, on leases and watches.
//!
//! A contender puts `NAME/<lease id>` under its lease and waits until
//! every key under `NAME/` created before its own is gone, so waiters are
//! served in the order they asked. The lock key's create revision is the
//! fencing token: revisions only grow, so a later holder of the same lock
//! always has a larger token.
//!
//! What the token guarantees, and what it does not: a holder whose lease
//! expires (a long pause, a partition) loses the lock without knowing it.
//! Its writes to Ferry guarded by [`crate::Txn::if_lock_held`] are then
//! refused, because its key is gone. A resource outside Ferry is only
//! protected if it remembers the highest token it has seen and refuses
//! requests that carry a lower one; the token cannot stop a paused holder
//! from sending a request, only let its receiver recognise it as stale.

use crate::client::Client;
use crate::error::Result;
use crate::recipe;

/// A held lock. Dropping it does not release the lock (its lease still
/// holds the key): call [`Client::unlock`], or let the lease end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockGuard {
    key: Vec<u8>,
    token: u64,
    lease: u64,
}

impl LockGuard {
    /// The lock key (`NAME/<lease id>`).
    pub fn key(&self) -> &[u8] {
        &self.key
    }

    /// The fencing token: the lock key's create revision.
    pub fn token(&self) -> u64 {
        self.token
    }

    pub fn lease(&self) -> u64 {
        self.lease
    }
}

impl Client {
    /// Waits until this caller holds lock `name` under `lease` (see
    /// [`Client::lease_grant`]; keep the lease alive while holding it).
    ///
    /// Cancel-safe: dropped while waiting, it withdraws from the queue of
    /// waiters. Fails with [`Error::LeaseNotFound`] if the lease expires
    /// before the lock is granted.
    ///
    /// ```no_run
    /// # async fn demo(client: ferry_client::Client) -> ferry_client::Result<()> {
    /// use std::time::Duration;
    /// let ttl = Duration::from_secs(10);
    /// let lease = client.lease_grant(ttl).await?;
    /// let _alive = client.lease_keep_alive(lease, ttl);
    /// let guard = client.lock("locks/scheduler", lease).await?;
    /// // ... work, passing guard.token() to outside resources ...
    /// client.unlock(&guard).await?;
    /// # Ok(()) }
    /// ```
    pub async fn lock(&self, name: impl AsRef<[u8]>, lease: u64) -> Result<LockGuard> {
        let prefix = recipe::prefix_of(name.as_ref());
        let (key, token) = recipe::contend(self, &prefix, lease, Vec::new()).await?;
        Ok(LockGuard { key, token, lease })
    }

    /// Releases `guard`'s lock. Fails with [`Error::NotHeld`] if it was
    /// already lost (its lease ended). Cancellation: the release may or
    /// may not have happened; the lease ends it in any case.
    ///
    /// ```no_run
    /// # async fn demo(client: ferry_client::Client, guard: ferry_client::LockGuard) -> ferry_client::Result<()> {
    /// client.unlock(&guard).await?;
    /// # Ok(()) }
    /// ```
    pub async fn unlock(&self, guard: &LockGuard) -> Result<()> {
        let txn = crate::Txn::new()
            .if_lock_held(guard)
            .then_delete(guard.key.clone());
        recipe::while_held(self, txn, || {
            format!(
                "lock key {} (token {})",
                String::from_utf8_lossy(&guard.key),
                guard.token
            )
        })
        .await
        .map(drop)
    }
}
