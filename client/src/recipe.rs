//! What the coordination recipes (locks, elections, the queue) share:
//! reading everything under a prefix at one revision, and waiting for a
//! key to be deleted.

use crate::client::Client;
use crate::error::{Error, Result};
use crate::pb::{event::Kind, KeyValue};
use futures_util::StreamExt;
use std::sync::atomic::Ordering;

/// Runs `txn`, whose compares say the caller still holds something (a
/// lock, a leadership, a claim); `Error::NotHeld(what())` if it no longer
/// does, in which case the transaction changed nothing.
pub(crate) async fn while_held(
    client: &Client,
    txn: crate::Txn,
    what: impl FnOnce() -> String,
) -> Result<u64> {
    let result = client.txn(txn).await?;
    if result.succeeded {
        Ok(result.revision)
    } else {
        Err(Error::NotHeld(what()))
    }
}

/// Keys per page when a recipe reads a prefix.
const PAGE: u32 = 1000;

/// Every key under `prefix` (linearizable, one revision for all pages),
/// and that revision.
///
/// Lock and election prefixes hold one key per contender, so this is
/// bounded by the number of contenders.
pub(crate) async fn under(client: &Client, prefix: &[u8]) -> Result<(Vec<KeyValue>, u64)> {
    let mut page = client.prefix(prefix.to_vec(), PAGE).await?;
    let revision = page.revision;
    let mut kvs = std::mem::take(&mut page.kvs);
    while let Some(token) = page.continuation.take() {
        page = client.range_after(prefix.to_vec(), token, PAGE).await?;
        kvs.append(&mut page.kvs);
    }
    Ok((kvs, revision))
}

/// Returns once `key` is deleted at or after revision `from`.
pub(crate) async fn deleted(client: &Client, key: &[u8], from: u64) -> Result<()> {
    let mut watch = client.watch_key(key.to_vec(), from);
    while let Some(event) = watch.next().await {
        if event?.kind == Kind::Delete as i32 {
            return Ok(());
        }
    }
    Err(Error::NotHeld("the watch ended".into()))
}

/// The key a contender holding `lease` uses under `prefix`.
pub(crate) fn contender_key(prefix: &[u8], lease: u64) -> Vec<u8> {
    [prefix, format!("{lease:016x}").as_bytes()].concat()
}

/// `name` with the separator its contenders' keys go under.
pub(crate) fn prefix_of(name: &[u8]) -> Vec<u8> {
    [name, b"/"].concat()
}

/// Which contender key a withdrawal deletes.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Written {
    /// The one created at this revision.
    At(u64),
    /// The join's answer never came, and it may still apply: one created
    /// after this revision, the highest of the read that found the key
    /// absent before the join and of this client's joins answered then. A
    /// key created before was another call's: a holder with the same lease,
    /// whose key this call's join would not have replaced (a join writes
    /// only an absent key).
    After(u64),
}

/// Deletes contender `key` from a task of its own, if it is still the one
/// `written` names: for a contender whose call was cancelled, so that it
/// does not block the others until its lease expires. A later [`contend`]
/// with the same key waits for it.
///
/// This write is numbered after the dropped join, whose number this
/// client no longer waits for: applied before it, the join is undone by
/// it; arriving after it, the join is refused as an old request
/// (exactly-once).
pub(crate) fn withdraw(client: &Client, key: Vec<u8>, written: Written) {
    // Outside a runtime (dropped after it shut down) the lease ends it.
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return;
    };
    let (done, finished) = tokio::sync::watch::channel(false);
    client
        .inner
        .withdrawals
        .lock()
        .expect("lock")
        .insert(key.clone(), finished.clone());
    let client = client.clone();
    runtime.spawn(async move {
        let txn = match written {
            Written::At(revision) => crate::Txn::new().when_create_revision(key.clone(), revision),
            Written::After(revision) => crate::Txn::new().when(crate::pb::Compare {
                key: key.clone(),
                op: crate::pb::compare::Op::Greater as i32,
                target: Some(crate::pb::compare::Target::CreateRevision(revision)),
            }),
        };
        let _ = client.txn(txn.then_delete(key.clone())).await;
        let mut withdrawals = client.inner.withdrawals.lock().expect("lock");
        if withdrawals
            .get(&key)
            .is_some_and(|r| r.same_channel(&finished))
        {
            withdrawals.remove(&key);
        }
        let _ = done.send(true);
    });
}

/// Waits until no withdrawal of `key` is under way.
async fn withdrawn(client: &Client, key: &[u8]) {
    let pending = client
        .inner
        .withdrawals
        .lock()
        .expect("lock")
        .get(key)
        .cloned();
    if let Some(mut finished) = pending {
        // Ended (sender dropped) counts as done too.
        let _ = finished.wait_for(|done| *done).await;
    }
}

/// Withdraws a contender when dropped, unless disarmed.
pub(crate) struct Withdraw<'a> {
    pub(crate) client: &'a Client,
    pub(crate) key: Vec<u8>,
    pub(crate) state: Contending,
}

/// How far a contender got.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Contending {
    /// Its join was sent, when this client's joins had been answered up
    /// to the revision given; whether it applied is unknown.
    Joining(u64),
    /// In the queue since `revision`.
    Joined(u64),
    /// Nothing to undo.
    Done,
}

impl Withdraw<'_> {
    /// The join was answered at `revision`: the contender is `state` now.
    fn answered(&mut self, revision: u64, state: Contending) {
        debug_assert!(matches!(self.state, Contending::Joining(_)));
        let inner = &self.client.inner;
        inner.joins_answered.fetch_max(revision, Ordering::SeqCst);
        inner.joining.lock().expect("lock").remove(&self.key);
        self.state = state;
    }
}

impl Drop for Withdraw<'_> {
    fn drop(&mut self) {
        let written = match self.state {
            Contending::Done => return,
            Contending::Joining(floor) => Written::After(floor),
            Contending::Joined(revision) => Written::At(revision),
        };
        let key = std::mem::take(&mut self.key);
        withdraw(self.client, key.clone(), written);
        // After `withdraw` has registered the withdrawal, which the next
        // join of the key waits for.
        if matches!(written, Written::After(_)) {
            self.client.inner.joining.lock().expect("lock").remove(&key);
        }
    }
}

/// Joins the contenders under `prefix` with `lease` (writing `value`) and
/// waits until every contender created before it is gone; returns its key
/// and create revision. The last read checks that its own key is still
/// there: a contender whose lease expired while it waited is told so
/// instead of being let in (etcd-io/etcd#11456).
///
/// Cancel-safe: dropped while waiting, it withdraws its key.
pub(crate) async fn contend(
    client: &Client,
    prefix: &[u8],
    lease: u64,
    value: Vec<u8>,
) -> Result<(Vec<u8>, u64)> {
    let key = contender_key(prefix, lease);
    withdrawn(client, &key).await;
    let already = || {
        Error::InvalidArgument(format!(
            "lease {lease} already contends under {}: one contender per lease and name \
             (use another lease, or wait for the other call)",
            String::from_utf8_lossy(prefix)
        ))
    };
    // A key already there is another call's with the same lease (of this
    // client, or of another): refused before anything is written. The
    // read's revision bounds what a withdrawal may delete: a key created
    // at or before it is not this call's join.
    let read = client
        .get_with(key.clone(), crate::pb::Consistency::Linearizable)
        .await?;
    if read.kv.is_some() {
        return Err(already());
    }
    let read_at = read.header.map_or(0, |h| h.revision);
    // One join of a key at a time: a withdrawal of a join whose answer
    // never came could not tell its key from another's sent meanwhile.
    if !client
        .inner
        .joining
        .lock()
        .expect("lock")
        .insert(key.clone())
    {
        return Err(already());
    }
    // Armed before the join: dropped while it is on its way, the key it
    // may have written is withdrawn too.
    let floor = client
        .inner
        .joins_answered
        .load(Ordering::SeqCst)
        .max(read_at);
    let mut guard = Withdraw {
        client,
        key: key.clone(),
        state: Contending::Joining(floor),
    };
    let joined = client
        .txn(
            crate::Txn::new()
                .when_absent(key.clone())
                .then_put_with_lease(key.clone(), value, lease)
                .else_get(key.clone()),
        )
        .await
        .map_err(crate::lease::not_found(lease))?;
    // A retry of the join gets its first answer (exactly-once): a key that
    // was already there is another call's, with the same lease. Taking it
    // as ours would make two holders; and it is not ours to withdraw.
    if !joined.succeeded {
        guard.answered(joined.revision, Contending::Done);
        return Err(already());
    }
    let revision = joined.revision;
    guard.answered(revision, Contending::Joined(revision));
    loop {
        let (kvs, read_at) = under(client, prefix).await?;
        if !kvs
            .iter()
            .any(|kv| kv.key == key && kv.create_revision == revision)
        {
            guard.state = Contending::Done;
            return Err(Error::LeaseNotFound(lease));
        }
        let before = kvs
            .iter()
            .filter(|kv| kv.create_revision < revision)
            .max_by_key(|kv| kv.create_revision);
        match before {
            None => {
                guard.state = Contending::Done;
                return Ok((key, revision));
            }
            Some(predecessor) => deleted(client, &predecessor.key, read_at + 1).await?,
        }
    }
}
