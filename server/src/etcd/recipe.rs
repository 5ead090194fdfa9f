//! The queue under etcd's locks and elections (etcd's
//! `client/v3/concurrency`), run in the server as etcd's v3lock and
//! v3election services do.
//!
//! Each contender puts `prefix/<lease in hex>` attached to its lease, if
//! absent; the key's create revision is its place in the queue. It holds
//! the lock (or leads) once no key under the prefix has a lower create
//! revision, which it learns by watching the deletion of the key just
//! before its own. Before answering, it checks that its own key still
//! exists with the same create revision: a lease that expired while it
//! waited (etcd-io/etcd#11456, Jepsen's etcd 3.4.3 finding) deleted it,
//! and the lock is then refused, never granted to a dead session. A caller
//! fences its writes with the key's create revision.

use super::{key_value, message, to_u64, Etcd};
use crate::auth::Credential;
use crate::service::Context;
use ferry_engine::prefix_end;
use ferry_replication::auth::{Access, AccessKind};
use ferry_replication::state_machine::history::ChangeKind;
use ferry_replication::types::{Command, Compare, CompareOp, CompareTarget, KeyValue, Op, Txn};
use ferry_replication::{Consistency, PageLimit, WatchError, WatchOptions};
use tonic::Status;

/// Contenders one queue may hold; more are refused (the queue is read
/// whole each time the head may have changed).
pub const MAX_CONTENDERS: usize = 10_000;

/// etcd's `concurrency.ErrSessionExpired`.
pub const SESSION_EXPIRED: &str = "session is expired";

/// The prefix of the queue of lock or election `name`.
pub fn queue_prefix(name: &[u8]) -> Vec<u8> {
    [name, b"/"].concat()
}

/// `kind` on every key under `prefix`.
pub fn under(kind: AccessKind, prefix: &[u8]) -> Access {
    Access::Keys {
        kind,
        start: prefix.to_vec(),
        end: prefix_end(prefix),
    }
}

/// What a contender does: read and write every key under `prefix`.
pub fn contender_accesses(prefix: &[u8]) -> [Access; 2] {
    [
        under(AccessKind::Read, prefix),
        under(AccessKind::Write, prefix),
    ]
}

/// Whether `credential` may do `kind` on every key under `prefix`.
pub fn check(
    etcd: &Etcd,
    credential: &Credential,
    kind: AccessKind,
    prefix: &[u8],
) -> Result<crate::auth::Principal, Status> {
    etcd.context.gate.check(credential, &under(kind, prefix))
}

/// A contender's key: `prefix` and its lease in hex, as etcd names it.
pub fn contender_key(prefix: &[u8], lease: u64) -> Vec<u8> {
    [prefix, format!("{lease:x}").as_bytes()].concat()
}

/// The queue under `prefix` in create order, and the revision read at:
/// keys and revisions, without values (a queue is read whole each time
/// its head may have changed, and values may be large).
pub async fn queue(etcd: &Etcd, prefix: &[u8]) -> Result<(Vec<KeyValue>, u64), Status> {
    let end = prefix_end(prefix);
    let read = etcd
        .context
        .node
        .range_keys_at(
            prefix,
            end.as_deref(),
            PageLimit::from(MAX_CONTENDERS + 1),
            0,
            Consistency::ReadIndex,
        )
        .await
        .map_err(|e| etcd.status(e))?;
    if read.value.len() > MAX_CONTENDERS {
        return Err(Status::resource_exhausted(format!(
            "more than {MAX_CONTENDERS} contenders wait under one name"
        )));
    }
    let mut kvs = read.value;
    kvs.sort_by_key(|kv| kv.create_revision);
    Ok((kvs, read.revision))
}

/// Waits, from `after` on, until `key` is deleted (or was already).
async fn deleted(context: &Context, key: &[u8], after: u64) -> Result<(), Status> {
    let mut options = WatchOptions::range(key.to_vec(), Some([key, &[0]].concat()), after + 1);
    // Any part of a revision tells whether the key was deleted.
    options.split_revisions = true;
    let mut watcher = context.node.watch(options).map_err(watch_status)?;
    loop {
        let batch = tokio::select! {
            batch = watcher.next() => batch.map_err(watch_status)?,
            () = context.stopped() => return Err(Status::unavailable("the server is stopping")),
        };
        if batch
            .events
            .iter()
            .any(|e| e.change.kind == ChangeKind::Delete)
        {
            return Ok(());
        }
    }
}

fn watch_status(error: WatchError) -> Status {
    match error {
        WatchError::Compacted(_) => Status::out_of_range(message::COMPACTED),
        WatchError::Closed => Status::unavailable("the member is stopping"),
        WatchError::Storage(e) => Status::internal(format!("watch: {e}")),
        error @ WatchError::RevisionTooLarge { .. } => {
            Status::resource_exhausted(error.to_string())
        }
    }
}

/// Joins the queue under `prefix` as `key` (with `value`, on `lease`), or
/// finds the key already there (a retry); returns the key as it stands.
async fn join(
    etcd: &Etcd,
    credential: &Credential,
    prefix: &[u8],
    key: &[u8],
    value: &[u8],
    lease: u64,
) -> Result<KeyValue, Status> {
    let response = etcd
        .write(
            credential,
            &contender_accesses(prefix),
            Txn {
                compares: vec![Compare {
                    key: key.to_vec(),
                    op: CompareOp::Equal,
                    target: CompareTarget::CreateRevision(0),
                }],
                success: vec![Op::Put {
                    key: key.to_vec(),
                    value: value.to_vec(),
                    lease,
                    prev_kv: false,
                }],
                failure: vec![Op::Get { key: key.to_vec() }],
                ..Txn::default()
            },
        )
        .await?;
    if response.succeeded {
        return Ok(KeyValue {
            key: key.to_vec(),
            value: value.to_vec(),
            create_revision: response.revision,
            mod_revision: response.revision,
            version: 1,
            lease,
        });
    }
    let found = response.reads().next().flatten().cloned();
    // Deleted between the compare and now: its lease ran out.
    found.ok_or_else(|| Status::failed_precondition(SESSION_EXPIRED))
}

/// Waits until `mine` heads the queue under `prefix`, then checks it is
/// still there; returns the revision that showed it.
pub async fn wait_for_head(etcd: &Etcd, prefix: &[u8], mine: &KeyValue) -> Result<u64, Status> {
    loop {
        let (queue, revision) = queue(etcd, prefix).await?;
        let before = queue
            .iter()
            .rev()
            .find(|kv| kv.create_revision < mine.create_revision);
        match before {
            Some(ahead) => deleted(&etcd.context, &ahead.key, revision).await?,
            None => {
                let still = queue
                    .iter()
                    .any(|kv| kv.key == mine.key && kv.create_revision == mine.create_revision);
                return if still {
                    Ok(revision)
                } else {
                    Err(Status::failed_precondition(SESSION_EXPIRED))
                };
            }
        }
    }
}

/// Deletes `key` if it is still the one created at `create_revision`, for
/// the caller presenting `credential` (`None`: for the server, undoing a
/// join whose call was dropped).
pub async fn leave(
    etcd: &Etcd,
    credential: Option<&Credential>,
    key: &[u8],
    create_revision: u64,
) -> Result<u64, Status> {
    let txn = Txn {
        compares: vec![Compare {
            key: key.to_vec(),
            op: CompareOp::Equal,
            target: CompareTarget::CreateRevision(create_revision),
        }],
        success: vec![Op::delete(key.to_vec())],
        ..Txn::default()
    };
    let response = match credential {
        Some(credential) => {
            let access = Access::key(AccessKind::Write, key);
            etcd.write(credential, &[access], txn).await?
        }
        None => etcd
            .context
            .node
            .txn_anywhere(Command::Txn(txn))
            .await
            .map_err(|e| etcd.status(e))?,
    };
    Ok(response.revision)
}

/// Leaves the queue if the call that joined it is dropped before it
/// answers (the client gave up), as etcd's `Mutex.Lock` does on
/// cancellation; disarmed once the call answers.
pub struct Abandon {
    pub etcd: Etcd,
    pub key: Vec<u8>,
    pub create_revision: u64,
    pub armed: bool,
}

impl Drop for Abandon {
    fn drop(&mut self) {
        if self.armed {
            let (etcd, key, revision) = (self.etcd.clone(), self.key.clone(), self.create_revision);
            tokio::spawn(async move {
                if let Err(error) = leave(&etcd, None, &key, revision).await {
                    tracing::warn!(%error, "could not leave a lock queue after a cancelled call");
                }
            });
        }
    }
}

/// Joins the queue under `prefix` as the contender of `lease` (its key
/// named as etcd names it) with `value`: its key as it stands, and the
/// guard that leaves the queue if the call is dropped before it answers.
pub async fn enqueue(
    etcd: &Etcd,
    credential: &Credential,
    prefix: &[u8],
    lease: i64,
    value: &[u8],
) -> Result<(KeyValue, Abandon), Status> {
    let lease = self::lease(lease)?;
    let key = contender_key(prefix, lease);
    etcd.check_key(&key)?;
    let mine = join(etcd, credential, prefix, &key, value, lease).await?;
    let abandon = Abandon {
        etcd: etcd.clone(),
        key,
        create_revision: mine.create_revision,
        armed: true,
    };
    Ok((mine, abandon))
}

/// A lease id from the wire: a contender needs one.
pub fn lease(value: i64) -> Result<u64, Status> {
    match to_u64(value, "lease")? {
        0 => Err(Status::invalid_argument("a lock or campaign needs a lease")),
        lease => Ok(lease),
    }
}

/// The first key under `prefix` by create revision (the lock holder or
/// the leader), as etcd's key-value.
pub async fn head(
    etcd: &Etcd,
    prefix: &[u8],
) -> Result<(Option<super::pb::mvccpb::KeyValue>, u64), Status> {
    let (queue, revision) = queue(etcd, prefix).await?;
    let Some(first) = queue.into_iter().next() else {
        return Ok((None, revision));
    };
    // Its value, as of the revision the queue was read at (this member
    // has applied it: it just read there).
    let read = etcd
        .context
        .node
        .get_at(&first.key, revision, Consistency::Stale)
        .await
        .map_err(|e| etcd.status(e))?;
    Ok((read.value.map(key_value), revision))
}
