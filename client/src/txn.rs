//! A builder for transactions: compares, then the operations of the
//! branch the compares choose.

use crate::pb::{self, compare, op, Compare, KeyValue, Op, RequestId};

/// An atomic transaction: if every compare holds, the `then` operations
/// run, otherwise the `else` ones.
///
/// ```
/// use ferry_client::Txn;
/// let claim = Txn::new()
///     .when_absent("lease/42")
///     .then_put("lease/42", "worker-7")
///     .else_get("lease/42");
/// ```
#[derive(Debug, Clone, Default)]
pub struct Txn {
    compares: Vec<Compare>,
    success: Vec<Op>,
    failure: Vec<Op>,
}

/// What a transaction did.
#[derive(Debug, Clone, PartialEq)]
pub struct TxnResult {
    pub succeeded: bool,
    pub revision: u64,
    /// One per `get` of the branch taken, in order.
    pub gets: Vec<Option<KeyValue>>,
}

impl From<pb::TxnResponse> for TxnResult {
    fn from(response: pb::TxnResponse) -> Self {
        TxnResult {
            succeeded: response.succeeded,
            revision: response.header.map_or(0, |h| h.revision),
            gets: response.gets.into_iter().map(|g| g.kv).collect(),
        }
    }
}

fn put(key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>, lease: u64) -> Op {
    Op {
        op: Some(op::Op::Put(pb::PutOp {
            key: key.into(),
            value: value.into(),
            lease,
        })),
    }
}

fn delete(key: impl Into<Vec<u8>>) -> Op {
    Op {
        op: Some(op::Op::Delete(pb::DeleteOp { key: key.into() })),
    }
}

fn get(key: impl Into<Vec<u8>>) -> Op {
    Op {
        op: Some(op::Op::Get(pb::GetOp { key: key.into() })),
    }
}

impl Txn {
    pub fn new() -> Self {
        Txn::default()
    }

    /// Adds a raw compare.
    pub fn when(mut self, compare: Compare) -> Self {
        self.compares.push(compare);
        self
    }

    fn compare(self, key: impl Into<Vec<u8>>, op: compare::Op, target: compare::Target) -> Self {
        self.when(Compare {
            key: key.into(),
            op: op as i32,
            target: Some(target),
        })
    }

    /// Holds if `key`'s value equals `value`.
    pub fn when_value(self, key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) -> Self {
        self.compare(
            key,
            compare::Op::Equal,
            compare::Target::Value(value.into()),
        )
    }

    /// Holds if `key` does not exist.
    pub fn when_absent(self, key: impl Into<Vec<u8>>) -> Self {
        self.compare(key, compare::Op::Equal, compare::Target::Exists(false))
    }

    /// Holds if `key` exists.
    pub fn when_exists(self, key: impl Into<Vec<u8>>) -> Self {
        self.compare(key, compare::Op::Equal, compare::Target::Exists(true))
    }

    /// Holds if `key` was created at `revision` (0: absent): the key is
    /// still the one written then, not a later one of the same name.
    pub fn when_create_revision(self, key: impl Into<Vec<u8>>, revision: u64) -> Self {
        self.compare(
            key,
            compare::Op::Equal,
            compare::Target::CreateRevision(revision),
        )
    }

    /// Holds while `guard`'s lock is held: its key still exists with the
    /// fencing token as its create revision. A holder whose lease expired
    /// (a pause, a partition) has lost the key, so its guarded writes are
    /// refused instead of applied:
    ///
    /// ```no_run
    /// # async fn demo(client: ferry_client::Client, guard: ferry_client::LockGuard) -> ferry_client::Result<()> {
    /// use ferry_client::Txn;
    /// let wrote = client
    ///     .txn(Txn::new().if_lock_held(&guard).then_put("job/42", "done"))
    ///     .await?
    ///     .succeeded;
    /// # Ok(()) }
    /// ```
    pub fn if_lock_held(self, guard: &crate::lock::LockGuard) -> Self {
        self.when_create_revision(guard.key().to_vec(), guard.token())
    }

    /// Holds if `key` was last modified at `revision` (0: absent).
    pub fn when_mod_revision(self, key: impl Into<Vec<u8>>, revision: u64) -> Self {
        self.compare(
            key,
            compare::Op::Equal,
            compare::Target::ModRevision(revision),
        )
    }

    /// Holds if `key` has been written `version` times since its creation.
    pub fn when_version(self, key: impl Into<Vec<u8>>, version: u64) -> Self {
        self.compare(key, compare::Op::Equal, compare::Target::Version(version))
    }

    pub fn then_put(mut self, key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) -> Self {
        self.success.push(put(key, value, 0));
        self
    }

    /// [`Txn::then_put`] attaching the key to `lease` (a lease that does
    /// not exist fails the whole transaction, which changes nothing).
    pub fn then_put_with_lease(
        mut self,
        key: impl Into<Vec<u8>>,
        value: impl Into<Vec<u8>>,
        lease: u64,
    ) -> Self {
        self.success.push(put(key, value, lease));
        self
    }

    pub fn then_delete(mut self, key: impl Into<Vec<u8>>) -> Self {
        self.success.push(delete(key));
        self
    }

    pub fn then_get(mut self, key: impl Into<Vec<u8>>) -> Self {
        self.success.push(get(key));
        self
    }

    pub fn else_put(mut self, key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) -> Self {
        self.failure.push(put(key, value, 0));
        self
    }

    pub fn else_delete(mut self, key: impl Into<Vec<u8>>) -> Self {
        self.failure.push(delete(key));
        self
    }

    pub fn else_get(mut self, key: impl Into<Vec<u8>>) -> Self {
        self.failure.push(get(key));
        self
    }

    pub(crate) fn to_request(&self, request: RequestId) -> pb::TxnRequest {
        pb::TxnRequest {
            compares: self.compares.clone(),
            success: self.success.clone(),
            failure: self.failure.clone(),
            request: Some(request),
        }
    }
}
