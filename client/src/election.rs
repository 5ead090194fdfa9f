//! Leader election on leases and watches (etcd's election recipe).
//!
//! Candidates put `NAME/<lease id>` with their value under their lease;
//! the leader is the candidate whose key was created first. A leader that
//! dies stops renewing its lease; when the lease expires its key goes and
//! the next candidate in line leads.

use crate::client::Client;
use crate::error::{Error, Result};
use crate::pb::{event::Kind, KeyValue};
use crate::recipe;
use futures_util::StreamExt;
use std::collections::BTreeMap;
use tokio::sync::mpsc;

/// Leading an election, as [`Client::campaign`] returns it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leadership {
    key: Vec<u8>,
    revision: u64,
    lease: u64,
}

impl Leadership {
    /// The leader key (`NAME/<lease id>`).
    pub fn key(&self) -> &[u8] {
        &self.key
    }

    /// The leader key's create revision: it only grows from one leader of
    /// an election to the next, so it fences as a lock's token does.
    pub fn revision(&self) -> u64 {
        self.revision
    }
}

/// Who leads an election.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leader {
    pub key: Vec<u8>,
    pub value: Vec<u8>,
    /// The leader key's create revision.
    pub revision: u64,
}

fn leader_of(kvs: impl IntoIterator<Item = KeyValue>) -> Option<Leader> {
    kvs.into_iter()
        .min_by_key(|kv| kv.create_revision)
        .map(|kv| Leader {
            key: kv.key,
            value: kv.value,
            revision: kv.create_revision,
        })
}

/// Leader changes of one election, each once, in order.
pub struct Observe {
    changes: mpsc::Receiver<Result<Option<Leader>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Observe {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Observe {
    /// The next leader (`None`: nobody leads now). Cancel-safe.
    pub async fn next(&mut self) -> Option<Result<Option<Leader>>> {
        self.changes.recv().await
    }
}

impl Client {
    /// Waits until this candidate leads election `name`, under `lease`,
    /// announcing `value`. Cancel-safe: dropped while waiting, the
    /// candidate withdraws.
    ///
    /// ```no_run
    /// # async fn demo(client: ferry_client::Client) -> ferry_client::Result<()> {
    /// use std::time::Duration;
    /// let ttl = Duration::from_secs(10);
    /// let lease = client.lease_grant(ttl).await?;
    /// let _alive = client.lease_keep_alive(lease, ttl);
    /// let leading = client.campaign("elections/scheduler", lease, "worker-7").await?;
    /// client.proclaim(&leading, "worker-7 at 10.0.0.7").await?;
    /// client.resign(&leading).await?;
    /// # Ok(()) }
    /// ```
    pub async fn campaign(
        &self,
        name: impl AsRef<[u8]>,
        lease: u64,
        value: impl Into<Vec<u8>>,
    ) -> Result<Leadership> {
        let prefix = recipe::prefix_of(name.as_ref());
        let (key, revision) = recipe::contend(self, &prefix, lease, value.into()).await?;
        Ok(Leadership {
            key,
            revision,
            lease,
        })
    }

    /// Announces a new value as the leader. Fails with [`Error::NotHeld`]
    /// once the leadership is lost.
    ///
    /// ```no_run
    /// # async fn demo(client: ferry_client::Client, leading: ferry_client::Leadership) -> ferry_client::Result<()> {
    /// client.proclaim(&leading, "worker-7 at 10.0.0.7").await?;
    /// # Ok(()) }
    /// ```
    pub async fn proclaim(&self, leading: &Leadership, value: impl Into<Vec<u8>>) -> Result<()> {
        let txn = crate::Txn::new()
            .when_create_revision(leading.key.clone(), leading.revision)
            .then_put_with_lease(leading.key.clone(), value, leading.lease);
        recipe::while_held(self, txn, || "the leadership".into())
            .await
            .map(drop)
    }

    /// Steps down: the next candidate leads.
    ///
    /// ```no_run
    /// # async fn demo(client: ferry_client::Client, leading: ferry_client::Leadership) -> ferry_client::Result<()> {
    /// client.resign(&leading).await?;
    /// # Ok(()) }
    /// ```
    pub async fn resign(&self, leading: &Leadership) -> Result<()> {
        let txn = crate::Txn::new()
            .when_create_revision(leading.key.clone(), leading.revision)
            .then_delete(leading.key.clone());
        recipe::while_held(self, txn, || "the leadership".into())
            .await
            .map(drop)
    }

    /// Who leads election `name` now.
    ///
    /// ```no_run
    /// # async fn demo(client: ferry_client::Client, _x: ()) -> ferry_client::Result<()> {
    /// if let Some(leader) = client.election_leader("elections/scheduler").await? {
    ///     println!("{}", String::from_utf8_lossy(&leader.value));
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn election_leader(&self, name: impl AsRef<[u8]>) -> Result<Option<Leader>> {
        let (kvs, _) = recipe::under(self, &recipe::prefix_of(name.as_ref())).await?;
        Ok(leader_of(kvs))
    }

    /// The leaders of election `name`: the current one first, then each
    /// change once, in order (a new leader, a new value, or nobody), as
    /// the candidates' keys change.
    ///
    /// ```no_run
    /// # async fn demo(client: ferry_client::Client, _x: ()) -> ferry_client::Result<()> {
    /// let mut leaders = client.observe("elections/scheduler");
    /// while let Some(leader) = leaders.next().await {
    ///     println!("{:?}", leader?.map(|l| l.value));
    /// }
    /// # Ok(()) }
    /// ```
    pub fn observe(&self, name: impl AsRef<[u8]>) -> Observe {
        let (sender, changes) = mpsc::channel(64);
        let client = self.clone();
        let prefix = recipe::prefix_of(name.as_ref());
        let task = tokio::spawn(async move {
            if let Err(error) = observe(&client, &prefix, &sender).await {
                let _ = sender.send(Err(error)).await;
            }
        });
        Observe { changes, task }
    }
}

/// Candidates by key, kept from one read and then the watch's events.
async fn observe(
    client: &Client,
    prefix: &[u8],
    sender: &mpsc::Sender<Result<Option<Leader>>>,
) -> Result<()> {
    let (kvs, revision) = recipe::under(client, prefix).await?;
    let mut candidates: BTreeMap<Vec<u8>, KeyValue> =
        kvs.into_iter().map(|kv| (kv.key.clone(), kv)).collect();
    let mut current = leader_of(candidates.values().cloned());
    if sender.send(Ok(current.clone())).await.is_err() {
        return Ok(());
    }
    let mut watch = client.watch_prefix(prefix.to_vec(), revision + 1);
    let mut at = revision;
    let mut pending = false;
    loop {
        // Apply every event of a revision before comparing leaders, so a
        // revision that replaces the leader reports only the result: the
        // leader is compared when the next event is of a later revision,
        // or when no further event has arrived yet and the watch knows the
        // revision complete (a large one comes in parts).
        let event = if !pending {
            watch.next().await
        } else if watch.revision() >= at {
            tokio::time::timeout(std::time::Duration::ZERO, watch.next())
                .await
                .unwrap_or_default()
        } else {
            match tokio::time::timeout(std::time::Duration::from_millis(20), watch.next()).await {
                Ok(event) => event,
                // Neither the rest of the revision nor word that it is
                // complete yet: look again.
                Err(_) => continue,
            }
        };
        let Some(event) = event else {
            if !pending {
                return Err(Error::NotHeld("the watch ended".into()));
            }
            pending = false;
            let next = leader_of(candidates.values().cloned());
            if next != current {
                current = next;
                if sender.send(Ok(current.clone())).await.is_err() {
                    return Ok(());
                }
            }
            continue;
        };
        let event = event?;
        let Some(kv) = event.kv else { continue };
        if kv.mod_revision != at && pending {
            // A new revision: report the one before first.
            let next = leader_of(candidates.values().cloned());
            if next != current {
                current = next;
                if sender.send(Ok(current.clone())).await.is_err() {
                    return Ok(());
                }
            }
        }
        at = kv.mod_revision;
        pending = true;
        if event.kind == Kind::Delete as i32 {
            candidates.remove(&kv.key);
        } else {
            candidates.insert(kv.key.clone(), kv);
        }
    }
}
