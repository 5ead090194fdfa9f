//! A durable work queue with leased claims (the durable-execution case).
//!
//! ```text
//! QUEUE/seq                 the last item number given out
//! QUEUE/item/<n, 20 digits> an item, in push order
//! QUEUE/claim/<n>           a claim on item n, under the claimant's lease
//! ```
//!
//! A push takes the next number with a compare on `QUEUE/seq`, so items
//! are numbered in the order their pushes applied. A claim is a
//! transaction that creates `claim/<n>` under the claimant's lease if the
//! item exists and nobody claims it: a claimant that dies stops renewing
//! its lease, the claim goes with it, and the item is claimable again. A
//! completion deletes the item and the claim if the claim is still the
//! one made (its create revision): a claimant that lost its lease cannot
//! complete what someone else now holds. Claimers with nothing to take
//! wait on a watch of the queue, not by polling.

use crate::client::Client;
use crate::error::{Error, Result};
use crate::Txn;
use futures_util::StreamExt;

/// Items a claim looks at per read.
const PAGE: u32 = 256;

fn seq_key(queue: &[u8]) -> Vec<u8> {
    [queue, b"/seq"].concat()
}

fn items_prefix(queue: &[u8]) -> Vec<u8> {
    [queue, b"/item/"].concat()
}

fn item_key(queue: &[u8], n: u64) -> Vec<u8> {
    [items_prefix(queue), format!("{n:020}").into_bytes()].concat()
}

fn claim_key(queue: &[u8], n: u64) -> Vec<u8> {
    [queue, format!("/claim/{n:020}").as_bytes()].concat()
}

fn number(queue: &[u8], key: &[u8]) -> Option<u64> {
    std::str::from_utf8(key.strip_prefix(items_prefix(queue).as_slice())?)
        .ok()?
        .parse()
        .ok()
}

/// An item claimed by [`Client::queue_claim`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    pub queue: Vec<u8>,
    /// The item's number: its place in push order.
    pub number: u64,
    pub value: Vec<u8>,
    /// The claim key's create revision: it fences the claim as a lock's
    /// token does (a later claim of the same item has a larger one).
    pub token: u64,
}

/// An item as [`Client::queue_items`] lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueItem {
    pub number: u64,
    pub value: Vec<u8>,
    pub claimed: bool,
}

impl Client {
    /// Adds `value` at the end of `queue`; returns its number.
    ///
    /// Cancellation: a dropped push may or may not have added the item;
    /// it never adds it twice.
    ///
    /// ```no_run
    /// # async fn demo(client: ferry_client::Client) -> ferry_client::Result<()> {
    /// let number = client.queue_push("queues/emails", "send #42").await?;
    /// # Ok(()) }
    /// ```
    pub async fn queue_push(
        &self,
        queue: impl AsRef<[u8]>,
        value: impl Into<Vec<u8>>,
    ) -> Result<u64> {
        let queue = queue.as_ref();
        let value = value.into();
        let seq = seq_key(queue);
        loop {
            let (next, txn) = match self.get(seq.clone()).await? {
                None => (1, Txn::new().when_absent(seq.clone())),
                Some(kv) => {
                    let last: u64 = std::str::from_utf8(&kv.value)
                        .ok()
                        .and_then(|s| s.parse().ok())
                        .ok_or_else(|| {
                            Error::InvalidArgument("the queue's seq key is not a number".into())
                        })?;
                    (
                        last + 1,
                        Txn::new().when_mod_revision(seq.clone(), kv.mod_revision),
                    )
                }
            };
            let txn = txn
                .then_put(seq.clone(), next.to_string())
                .then_put(item_key(queue, next), value.clone());
            if self.txn(txn).await?.succeeded {
                return Ok(next);
            }
            // Another push took `next`: take the one after.
        }
    }

    /// Waits for the oldest unclaimed item of `queue` and claims it under
    /// `lease` (keep the lease alive while working on it).
    ///
    /// Cancellation: a claim dropped after its transaction applied holds
    /// the item until the lease ends; the item is then claimable again.
    ///
    /// ```no_run
    /// # async fn demo(client: ferry_client::Client, lease: u64) -> ferry_client::Result<()> {
    /// let claim = client.queue_claim("queues/emails", lease).await?;
    /// // ... do the work ...
    /// client.queue_complete(&claim).await?;
    /// # Ok(()) }
    /// ```
    pub async fn queue_claim(&self, queue: impl AsRef<[u8]>, lease: u64) -> Result<Claim> {
        let queue = queue.as_ref();
        let prefix = items_prefix(queue);
        loop {
            let mut page = self.prefix(prefix.clone(), PAGE).await?;
            let read_at = page.revision;
            loop {
                for kv in &page.kvs {
                    let Some(n) = number(queue, &kv.key) else {
                        continue;
                    };
                    let claim = claim_key(queue, n);
                    let txn = Txn::new()
                        .when_create_revision(kv.key.clone(), kv.create_revision)
                        .when_absent(claim.clone())
                        .then_put_with_lease(claim, self.id().to_string(), lease);
                    let result = self
                        .txn(txn)
                        .await
                        .map_err(crate::lease::not_found(lease))?;
                    if result.succeeded {
                        return Ok(Claim {
                            queue: queue.to_vec(),
                            number: n,
                            value: kv.value.clone(),
                            token: result.revision,
                        });
                    }
                }
                match page.continuation.take() {
                    Some(token) => page = self.range_after(prefix.clone(), token, PAGE).await?,
                    None => break,
                }
            }
            // Nothing to take: wait for a push or a released claim.
            let mut changes = self.watch_prefix(queue.to_vec(), read_at + 1);
            loop {
                let event = changes
                    .next()
                    .await
                    .ok_or_else(|| Error::NotHeld("the watch ended".into()))??;
                let released = event.kind == crate::pb::event::Kind::Delete as i32
                    && event
                        .kv
                        .as_ref()
                        .is_some_and(|kv| kv.key.starts_with(&[queue, b"/claim/"].concat()));
                let pushed = event.kind == crate::pb::event::Kind::Put as i32
                    && event
                        .kv
                        .as_ref()
                        .is_some_and(|kv| kv.key.starts_with(&prefix));
                if released || pushed {
                    break;
                }
            }
        }
    }

    /// Finishes a claimed item: deletes it and the claim, if the claim is
    /// still held. Fails with [`Error::NotHeld`] if it was lost (the
    /// lease ended; someone else may hold the item now). Writes are
    /// exactly-once, so a retried completion never completes twice.
    ///
    /// ```no_run
    /// # async fn demo(client: ferry_client::Client, claim: ferry_client::Claim) -> ferry_client::Result<()> {
    /// client.queue_complete(&claim).await?;
    /// # Ok(()) }
    /// ```
    pub async fn queue_complete(&self, claim: &Claim) -> Result<()> {
        let claim_key = claim_key(&claim.queue, claim.number);
        let txn = Txn::new()
            .when_create_revision(claim_key.clone(), claim.token)
            .then_delete(item_key(&claim.queue, claim.number))
            .then_delete(claim_key);
        crate::recipe::while_held(self, txn, || format!("the claim on item {}", claim.number))
            .await
            .map(drop)
    }

    /// The first `limit` items of `queue`, in order, and whether each is
    /// claimed.
    ///
    /// ```no_run
    /// # async fn demo(client: ferry_client::Client, _x: ()) -> ferry_client::Result<()> {
    /// for item in client.queue_items("queues/emails", 100).await? {
    ///     println!("{} claimed={}", item.number, item.claimed);
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn queue_items(&self, queue: impl AsRef<[u8]>, limit: u32) -> Result<Vec<QueueItem>> {
        let queue = queue.as_ref();
        let page = self.prefix(items_prefix(queue), limit).await?;
        let mut items = Vec::with_capacity(page.kvs.len());
        for kv in page.kvs {
            let Some(n) = number(queue, &kv.key) else {
                continue;
            };
            let claimed = self.get(claim_key(queue, n)).await?.is_some();
            items.push(QueueItem {
                number: n,
                value: kv.value,
                claimed,
            });
        }
        Ok(items)
    }
}
