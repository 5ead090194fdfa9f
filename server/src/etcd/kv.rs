//! etcd's KV service: Range, Put, DeleteRange, Txn, Compact.
//!
//! A range answer is bounded like Ferry's own: at most `max_range_page`
//! keys and about `max_range_bytes`. A range without a limit that holds
//! more is cut there with `more = true`, as if the client had asked for
//! that limit (etcd's clients that page, e.g. Kubernetes', go on from the
//! last key). A sorted or filtered range must fit in one answer, because
//! sorting needs every key; a larger one is refused, never truncated
//! silently.

use super::pb::etcdserverpb::{
    self as rpc, compare, kv_server::Kv, range_request, request_op, response_op,
};
use super::{key_range, key_value, message, to_i64, to_u64, Etcd};
use crate::auth::Credential;
use ferry_replication::auth::{Access, AccessKind};
use ferry_replication::types::{
    Compare, CompareOp, CompareTarget, KeyValue, Op, OpResult, RangeOrder, SortBy, Txn,
};
use ferry_replication::{Consistency, PageLimit};
use std::cmp::Ordering;
use tonic::{Request, Response, Status};

/// Keys counted for a range's `count` at most.
const MAX_COUNT: u64 = 10_000_000;

/// Attempts of a put with `ignore_value` or `ignore_lease` (a read, then a
/// put conditional on the key not having changed) before it gives up.
const IGNORE_ATTEMPTS: usize = 16;

#[derive(Clone)]
pub struct KvService {
    pub etcd: Etcd,
}

/// How a range's keys are ordered and filtered, from etcd's request.
struct Shape {
    order: range_request::SortOrder,
    target: range_request::SortTarget,
    min_mod: u64,
    max_mod: u64,
    min_create: u64,
    max_create: u64,
}

impl Shape {
    fn of(request: &rpc::RangeRequest) -> Result<Shape, Status> {
        let target = range_request::SortTarget::try_from(request.sort_target)
            .map_err(|_| Status::invalid_argument("unknown sort target"))?;
        let mut order = range_request::SortOrder::try_from(request.sort_order)
            .map_err(|_| Status::invalid_argument("unknown sort order"))?;
        // etcd: a target other than the key with no order sorts ascending.
        if target != range_request::SortTarget::Key && order == range_request::SortOrder::None {
            order = range_request::SortOrder::Ascend;
        }
        Ok(Shape {
            order,
            target,
            min_mod: to_u64(request.min_mod_revision, "min_mod_revision")?,
            max_mod: to_u64(request.max_mod_revision, "max_mod_revision")?,
            min_create: to_u64(request.min_create_revision, "min_create_revision")?,
            max_create: to_u64(request.max_create_revision, "max_create_revision")?,
        })
    }

    /// Whether the engine's key order is the answer's order, unfiltered.
    fn is_plain(&self) -> bool {
        let key_order = self.target == range_request::SortTarget::Key
            && self.order != range_request::SortOrder::Descend;
        key_order
            && self.min_mod == 0
            && self.max_mod == 0
            && self.min_create == 0
            && self.max_create == 0
    }

    fn keeps(&self, kv: &KeyValue) -> bool {
        (self.min_mod == 0 || kv.mod_revision >= self.min_mod)
            && (self.max_mod == 0 || kv.mod_revision <= self.max_mod)
            && (self.min_create == 0 || kv.create_revision >= self.min_create)
            && (self.max_create == 0 || kv.create_revision <= self.max_create)
    }

    fn sort(&self, kvs: &mut [KeyValue]) {
        use range_request::SortTarget as T;
        let by = |a: &KeyValue, b: &KeyValue| -> Ordering {
            match self.target {
                T::Key => a.key.cmp(&b.key),
                T::Version => a.version.cmp(&b.version),
                T::Create => a.create_revision.cmp(&b.create_revision),
                T::Mod => a.mod_revision.cmp(&b.mod_revision),
                T::Value => a.value.cmp(&b.value),
            }
        };
        match self.order {
            range_request::SortOrder::None => {}
            // Stable: equal ones stay in key order, as etcd's do.
            range_request::SortOrder::Ascend => kvs.sort_by(by),
            range_request::SortOrder::Descend => kvs.sort_by(|a, b| by(b, a)),
        }
    }
}

impl KvService {
    fn consistency(serializable: bool) -> Consistency {
        if serializable {
            Consistency::Stale
        } else {
            Consistency::ReadIndex
        }
    }

    pub(crate) async fn range_call(
        &self,
        credential: &Credential,
        request: rpc::RangeRequest,
    ) -> Result<rpc::RangeResponse, Status> {
        let etcd = &self.etcd;
        etcd.check_key(&request.key)?;
        let (start, end) = key_range(&request.key, &request.range_end);
        let access = Access::Keys {
            kind: AccessKind::Read,
            start: start.clone(),
            end: end.clone(),
        };
        let consistency = Self::consistency(request.serializable);
        let read = self.range_read(request, start, end, consistency);
        etcd.context
            .gate
            .check_read(credential, &access, consistency, read)
            .await
    }

    /// The range `[start, end)` of `request`, read with `consistency`.
    async fn range_read(
        &self,
        request: rpc::RangeRequest,
        start: Vec<u8>,
        end: Option<Vec<u8>>,
        consistency: Consistency,
    ) -> Result<rpc::RangeResponse, Status> {
        let etcd = &self.etcd;
        let shape = Shape::of(&request)?;
        let limit = to_u64(request.limit, "limit")?;
        let revision = to_u64(request.revision, "revision")?;
        let node = &etcd.context.node;
        let status = |e| etcd.status(e);
        // etcd's header names the store's revision, also for a read at an
        // earlier one.
        let header = |at: u64| {
            if revision == 0 {
                etcd.header(at)
            } else {
                etcd.header(etcd.context.applied().max(at))
            }
        };
        if request.count_only {
            let read = node
                .count_at(&start, end.as_deref(), MAX_COUNT, revision, consistency)
                .await
                .map_err(status)?;
            return Ok(rpc::RangeResponse {
                header: header(read.revision),
                kvs: Vec::new(),
                more: false,
                count: to_i64(read.value),
            });
        }
        let max_page = u64::from(etcd.context.limits.max_range_page);
        let max_bytes = etcd.context.limits.max_range_bytes;
        // A plain range reads one key past the limit to know there is more;
        // a sorted or filtered one reads all it may hold, and one more to
        // know whether that was all.
        let wanted = if shape.is_plain() && limit > 0 {
            limit.min(max_page)
        } else {
            max_page
        };
        let page = PageLimit {
            keys: (wanted + 1) as usize,
            bytes: max_bytes,
        };
        let read = node
            .range_at(&start, end.as_deref(), page, revision, consistency)
            .await
            .map_err(status)?;
        let at = read.revision;
        let mut kvs = read.value;
        let bytes: usize = kvs.iter().map(|kv| kv.key.len() + kv.value.len()).sum();
        let cut = kvs.len() as u64 > wanted || (bytes >= max_bytes && !kvs.is_empty());
        if cut && !shape.is_plain() {
            return Err(Status::resource_exhausted(format!(
                "a sorted or filtered range must fit in one answer (max_range_page = {max_page} \
                 keys, max_range_bytes = {max_bytes}); narrow the range"
            )));
        }
        // etcd's count is of every key in the range, before limit and
        // filters.
        let count = if cut {
            node.count_at(&start, end.as_deref(), MAX_COUNT, at, Consistency::Stale)
                .await
                .map_err(status)?
                .value
        } else {
            kvs.len() as u64
        };
        kvs.retain(|kv| shape.keeps(kv));
        shape.sort(&mut kvs);
        let shown = if limit > 0 { limit.min(wanted) } else { wanted };
        let more = cut || kvs.len() as u64 > shown;
        kvs.truncate(shown as usize);
        if request.keys_only {
            for kv in &mut kvs {
                kv.value.clear();
            }
        }
        Ok(rpc::RangeResponse {
            header: header(at),
            kvs: kvs.into_iter().map(key_value).collect(),
            more,
            count: to_i64(count),
        })
    }

    /// The put op of `request`; with `ignore_value` or `ignore_lease`, the
    /// current value or lease (`current`, read first) stands in.
    fn put_op(request: rpc::PutRequest, current: Option<&KeyValue>) -> Result<Op, Status> {
        let mut value = request.value;
        let mut lease = to_u64(request.lease, "lease")?;
        if request.ignore_value || request.ignore_lease {
            let current =
                current.ok_or_else(|| Status::invalid_argument(message::KEY_NOT_FOUND))?;
            if request.ignore_value {
                value = current.value.clone();
            }
            if request.ignore_lease {
                lease = current.lease;
            }
        }
        Ok(Op::Put {
            key: request.key,
            value,
            lease,
            prev_kv: request.prev_kv,
        })
    }

    fn check_put(&self, request: &rpc::PutRequest) -> Result<(), Status> {
        self.etcd.check_key(&request.key)?;
        self.etcd.context.check_value(&request.value)?;
        if request.ignore_value && !request.value.is_empty() {
            return Err(Status::invalid_argument(message::VALUE_PROVIDED));
        }
        if request.ignore_lease && request.lease != 0 {
            return Err(Status::invalid_argument(message::LEASE_PROVIDED));
        }
        Ok(())
    }

    /// A put with `ignore_value` or `ignore_lease`: reads the current value
    /// and lease, then writes only if the key did not change meanwhile.
    async fn put_keeping_current(
        &self,
        credential: &Credential,
        request: rpc::PutRequest,
    ) -> Result<ferry_replication::types::Response, Status> {
        let etcd = &self.etcd;
        let node = &etcd.context.node;
        let mut attempts = 0;
        loop {
            let current = node
                .get(&request.key, Consistency::ReadIndex)
                .await
                .map_err(|e| etcd.status(e))?
                .value;
            let op = Self::put_op(request.clone(), current.as_ref())?;
            let mod_revision = current.as_ref().map_or(0, |kv| kv.mod_revision);
            let txn = Txn {
                compares: vec![Compare {
                    key: request.key.clone(),
                    op: CompareOp::Equal,
                    target: CompareTarget::ModRevision(mod_revision),
                }],
                success: vec![op],
                ..Txn::default()
            };
            let response = etcd.write(credential, &Access::txn(&txn), txn).await?;
            attempts += 1;
            if response.succeeded {
                return Ok(response);
            }
            if attempts == IGNORE_ATTEMPTS {
                return Err(Status::aborted(format!(
                    "the key changed during each of {IGNORE_ATTEMPTS} attempts"
                )));
            }
        }
    }

    pub(crate) async fn put_call(
        &self,
        credential: &Credential,
        request: rpc::PutRequest,
    ) -> Result<rpc::PutResponse, Status> {
        let etcd = &self.etcd;
        self.check_put(&request)?;
        let accesses = Access::write_key(&request.key, request.prev_kv);
        let response = if request.ignore_value || request.ignore_lease {
            // Checked before its read (a plain put is checked by the write).
            for access in &accesses {
                etcd.context.gate.check(credential, access)?;
            }
            // Boxed: its read and its retries would otherwise make every
            // put's future (copied whole into the box tonic keeps each
            // call in) several KiB larger.
            Box::pin(self.put_keeping_current(credential, request)).await?
        } else {
            let txn = Txn::batch(vec![Self::put_op(request, None)?]);
            etcd.write(credential, &accesses, txn).await?
        };
        let prev_kv = response.results.into_iter().find_map(|r| match r {
            OpResult::Put { prev } => prev.map(key_value),
            _ => None,
        });
        Ok(rpc::PutResponse {
            header: etcd.header(response.revision),
            prev_kv,
        })
    }

    /// The delete op of an etcd range delete.
    fn delete_op(&self, request: &rpc::DeleteRangeRequest) -> Result<Op, Status> {
        self.etcd.check_key(&request.key)?;
        Ok(if request.range_end.is_empty() {
            Op::Delete {
                key: request.key.clone(),
                prev_kv: request.prev_kv,
            }
        } else {
            let (start, end) = key_range(&request.key, &request.range_end);
            Op::DeleteRange {
                start,
                end,
                prev_kv: request.prev_kv,
            }
        })
    }

    pub(crate) async fn delete_call(
        &self,
        credential: &Credential,
        request: rpc::DeleteRangeRequest,
    ) -> Result<rpc::DeleteRangeResponse, Status> {
        let etcd = &self.etcd;
        let op = self.delete_op(&request)?;
        let accesses = Access::op(&op);
        let response = etcd
            .write(credential, &accesses, Txn::batch(vec![op]))
            .await?;
        let header = etcd.header(response.revision);
        let result = response.results.into_iter().next();
        Ok(delete_response(header, result))
    }

    fn compare(&self, compare: rpc::Compare) -> Result<Compare, Status> {
        self.etcd.check_key(&compare.key)?;
        if !compare.range_end.is_empty() {
            return Err(Status::unimplemented(
                "a compare over a key range is not supported; compare each key",
            ));
        }
        let op = match compare::CompareResult::try_from(compare.result) {
            Ok(compare::CompareResult::Equal) => CompareOp::Equal,
            Ok(compare::CompareResult::NotEqual) => CompareOp::NotEqual,
            Ok(compare::CompareResult::Less) => CompareOp::Less,
            Ok(compare::CompareResult::Greater) => CompareOp::Greater,
            Err(_) => return Err(Status::invalid_argument("unknown compare result")),
        };
        use compare::TargetUnion as U;
        let number = |n: i64| to_u64(n, "compare operand");
        let target = match (
            compare::CompareTarget::try_from(compare.target),
            compare.target_union,
        ) {
            (Ok(compare::CompareTarget::Version), Some(U::Version(n))) => {
                CompareTarget::Version(number(n)?)
            }
            (Ok(compare::CompareTarget::Create), Some(U::CreateRevision(n))) => {
                CompareTarget::CreateRevision(number(n)?)
            }
            (Ok(compare::CompareTarget::Mod), Some(U::ModRevision(n))) => {
                CompareTarget::ModRevision(number(n)?)
            }
            (Ok(compare::CompareTarget::Value), Some(U::Value(v))) => {
                self.etcd.context.check_value(&v)?;
                CompareTarget::Value(Some(v))
            }
            (Ok(compare::CompareTarget::Lease), Some(U::Lease(n))) => {
                CompareTarget::Lease(number(n)?)
            }
            // etcd's default for a missing operand is the type's zero.
            (Ok(compare::CompareTarget::Version), None) => CompareTarget::Version(0),
            (Ok(compare::CompareTarget::Create), None) => CompareTarget::CreateRevision(0),
            (Ok(compare::CompareTarget::Mod), None) => CompareTarget::ModRevision(0),
            (Ok(compare::CompareTarget::Value), None) => CompareTarget::Value(Some(Vec::new())),
            (Ok(compare::CompareTarget::Lease), None) => CompareTarget::Lease(0),
            _ => {
                return Err(Status::invalid_argument(
                    "the compare's target and operand differ",
                ))
            }
        };
        Ok(Compare {
            key: compare.key,
            op,
            target,
        })
    }

    /// A branch's op, and how its answer is to be shaped.
    fn op(&self, op: rpc::RequestOp) -> Result<(Op, Answer), Status> {
        match op.request {
            Some(request_op::Request::RequestRange(range)) => {
                self.etcd.check_key(&range.key)?;
                let shape = Shape::of(&range)?;
                let answer = Answer::Range {
                    keys_only: range.keys_only,
                    count_only: range.count_only,
                };
                if range.revision != 0
                    || shape.min_mod != 0
                    || shape.max_mod != 0
                    || shape.min_create != 0
                    || shape.max_create != 0
                {
                    return Err(Status::unimplemented(
                        "a range inside a txn at a revision, or with revision filters, is \
                         not supported",
                    ));
                }
                if range.range_end.is_empty() {
                    return Ok((Op::Get { key: range.key }, answer));
                }
                let (start, end) = key_range(&range.key, &range.range_end);
                use range_request::SortTarget as T;
                let by = match shape.target {
                    T::Key => SortBy::Key,
                    T::Version => SortBy::Version,
                    T::Create => SortBy::CreateRevision,
                    T::Mod => SortBy::ModRevision,
                    T::Value => SortBy::Value,
                };
                Ok((
                    Op::Range {
                        start,
                        end,
                        limit: to_u64(range.limit, "limit")?,
                        order: RangeOrder {
                            by,
                            descending: shape.order == range_request::SortOrder::Descend,
                        },
                    },
                    answer,
                ))
            }
            Some(request_op::Request::RequestPut(put)) => {
                self.check_put(&put)?;
                if put.ignore_value || put.ignore_lease {
                    return Err(Status::unimplemented(
                        "ignore_value and ignore_lease inside a txn are not supported",
                    ));
                }
                Ok((Self::put_op(put, None)?, Answer::Put))
            }
            Some(request_op::Request::RequestDeleteRange(delete)) => {
                Ok((self.delete_op(&delete)?, Answer::Delete))
            }
            Some(request_op::Request::RequestTxn(_)) => Err(Status::unimplemented(
                "nested transactions are not supported",
            )),
            None => Err(Status::invalid_argument("a txn op has no request")),
        }
    }

    pub(crate) async fn txn_call(
        &self,
        credential: &Credential,
        request: rpc::TxnRequest,
    ) -> Result<rpc::TxnResponse, Status> {
        let etcd = &self.etcd;
        // etcd bounds the largest of the three lists, not their sum.
        let ops = request
            .compare
            .len()
            .max(request.success.len())
            .max(request.failure.len());
        if ops > etcd.context.limits.max_txn_ops {
            return Err(Status::invalid_argument(message::TOO_MANY_OPS));
        }
        let compares: Vec<Compare> = request
            .compare
            .into_iter()
            .map(|c| self.compare(c))
            .collect::<Result<_, _>>()?;
        let branch = |ops: Vec<rpc::RequestOp>| -> Result<(Vec<Op>, Vec<Answer>), Status> {
            let (ops, answers): (Vec<_>, Vec<_>) = ops
                .into_iter()
                .map(|o| self.op(o))
                .collect::<Result<Vec<_>, _>>()?
                .into_iter()
                .unzip();
            check_duplicates(&ops)?;
            Ok((ops, answers))
        };
        let (success, success_answers) = branch(request.success)?;
        let (failure, failure_answers) = branch(request.failure)?;
        // etcd fails every value compare of an absent key (it has no value
        // to be equal, unequal or ordered); Ferry orders absence first.
        // Guard each with "the key exists". Other targets agree: both
        // compare an absent key's versions, revisions and lease as 0.
        let mut guarded = Vec::with_capacity(compares.len());
        for compare in compares {
            if matches!(compare.target, CompareTarget::Value(_)) {
                guarded.push(Compare {
                    key: compare.key.clone(),
                    op: CompareOp::Greater,
                    target: CompareTarget::Version(0),
                });
            }
            guarded.push(compare);
        }
        let txn = Txn {
            compares: guarded,
            success,
            failure,
            ..Txn::default()
        };
        // The guards read only keys a compare reads already.
        let response = etcd.write(credential, &Access::txn(&txn), txn).await?;
        let answers = if response.succeeded {
            success_answers
        } else {
            failure_answers
        };
        let header = etcd.header(response.revision);
        let responses = response
            .results
            .into_iter()
            .zip(answers)
            .map(|(result, answer)| answer.shape(header, result))
            .collect();
        Ok(rpc::TxnResponse {
            header,
            succeeded: response.succeeded,
            responses,
        })
    }

    pub(crate) async fn compact_call(
        &self,
        credential: &Credential,
        request: rpc::CompactionRequest,
    ) -> Result<rpc::CompactionResponse, Status> {
        let etcd = &self.etcd;
        etcd.context.gate.check(credential, &Access::Root)?;
        let revision = to_u64(request.revision, "revision")?;
        etcd.context
            .node
            .compact_history_anywhere(revision)
            .await
            .map_err(|e| etcd.status(e))?;
        // History below the revision is unreadable at once; `physical`
        // asks for it to be gone too, which the purger does in bounded
        // background steps (see `ferry_replication::retention`).
        Ok(rpc::CompactionResponse {
            header: etcd.header(etcd.context.applied()),
        })
    }
}

/// etcd refuses a branch that puts one key twice, or puts a key one of
/// its deletes covers (its `checkIntervals`); deletes may overlap.
fn check_duplicates(ops: &[Op]) -> Result<(), Status> {
    // What each delete covers: `[start, end)`, `end = None` to the end of
    // the key space.
    let deleted: Vec<(&[u8], Option<Vec<u8>>)> = ops
        .iter()
        .filter_map(|op| match op {
            Op::Delete { key, .. } => Some((key.as_slice(), Some([key.as_slice(), &[0]].concat()))),
            Op::DeleteRange { start, end, .. } => Some((start.as_slice(), end.clone())),
            _ => None,
        })
        .collect();
    let mut put: Vec<&[u8]> = Vec::new();
    for op in ops {
        let Op::Put { key, .. } = op else {
            continue;
        };
        let in_a_delete = deleted.iter().any(|(start, end)| {
            key.as_slice() >= *start && end.as_ref().is_none_or(|end| key < end)
        });
        if in_a_delete || put.contains(&key.as_slice()) {
            return Err(Status::invalid_argument(message::DUPLICATE_KEY));
        }
        put.push(key);
    }
    Ok(())
}

/// How one op's result is answered in etcd's terms.
#[derive(Clone, Copy)]
enum Answer {
    Range { keys_only: bool, count_only: bool },
    Put,
    Delete,
}

impl Answer {
    fn shape(self, header: Option<rpc::ResponseHeader>, result: OpResult) -> rpc::ResponseOp {
        use response_op::Response as R;
        let response = match (self, result) {
            (
                Answer::Range {
                    keys_only,
                    count_only,
                },
                OpResult::Get(found),
            ) => {
                let count = u64::from(found.is_some());
                range_response(
                    header,
                    found.into_iter().collect(),
                    false,
                    count,
                    keys_only,
                    count_only,
                )
            }
            (
                Answer::Range {
                    keys_only,
                    count_only,
                },
                OpResult::Range { kvs, more, count },
            ) => range_response(header, kvs, more, count, keys_only, count_only),
            (Answer::Put, OpResult::Put { prev }) => R::ResponsePut(rpc::PutResponse {
                header,
                prev_kv: prev.map(key_value),
            }),
            (_, result) => R::ResponseDeleteRange(delete_response(header, Some(result))),
        };
        rpc::ResponseOp {
            response: Some(response),
        }
    }
}

/// A range's answer inside a txn.
fn range_response(
    header: Option<rpc::ResponseHeader>,
    kvs: Vec<KeyValue>,
    more: bool,
    count: u64,
    keys_only: bool,
    count_only: bool,
) -> response_op::Response {
    let mut kvs: Vec<_> = kvs.into_iter().map(key_value).collect();
    if count_only {
        kvs.clear();
    }
    if keys_only {
        kvs.iter_mut().for_each(|kv| kv.value.clear());
    }
    response_op::Response::ResponseRange(rpc::RangeResponse {
        header,
        kvs,
        more,
        count: to_i64(count),
    })
}

fn delete_response(
    header: Option<rpc::ResponseHeader>,
    result: Option<OpResult>,
) -> rpc::DeleteRangeResponse {
    let (deleted, prev_kvs) = match result {
        Some(OpResult::Delete { deleted, prev }) => (deleted, prev.into_iter().collect()),
        Some(OpResult::DeleteRange { deleted, prev }) => (deleted, prev),
        _ => (0, Vec::new()),
    };
    rpc::DeleteRangeResponse {
        header,
        deleted: to_i64(deleted),
        prev_kvs: prev_kvs.into_iter().map(key_value).collect(),
    }
}

#[tonic::async_trait]
impl Kv for KvService {
    async fn range(
        &self,
        request: Request<rpc::RangeRequest>,
    ) -> Result<Response<rpc::RangeResponse>, Status> {
        self.etcd
            .timed("etcd.Range", async {
                let credential = self.etcd.context.gate.credential(&request);
                self.range_call(&credential, request.into_inner())
                    .await
                    .map(Response::new)
            })
            .await
    }

    async fn put(
        &self,
        request: Request<rpc::PutRequest>,
    ) -> Result<Response<rpc::PutResponse>, Status> {
        self.etcd
            .timed("etcd.Put", async {
                let credential = self.etcd.context.gate.credential(&request);
                self.put_call(&credential, request.into_inner())
                    .await
                    .map(Response::new)
            })
            .await
    }

    async fn delete_range(
        &self,
        request: Request<rpc::DeleteRangeRequest>,
    ) -> Result<Response<rpc::DeleteRangeResponse>, Status> {
        self.etcd
            .timed("etcd.DeleteRange", async {
                let credential = self.etcd.context.gate.credential(&request);
                self.delete_call(&credential, request.into_inner())
                    .await
                    .map(Response::new)
            })
            .await
    }

    async fn txn(
        &self,
        request: Request<rpc::TxnRequest>,
    ) -> Result<Response<rpc::TxnResponse>, Status> {
        self.etcd
            .timed("etcd.Txn", async {
                let credential = self.etcd.context.gate.credential(&request);
                self.txn_call(&credential, request.into_inner())
                    .await
                    .map(Response::new)
            })
            .await
    }

    async fn compact(
        &self,
        request: Request<rpc::CompactionRequest>,
    ) -> Result<Response<rpc::CompactionResponse>, Status> {
        self.etcd
            .timed("etcd.Compact", async {
                let credential = self.etcd.context.gate.credential(&request);
                self.compact_call(&credential, request.into_inner())
                    .await
                    .map(Response::new)
            })
            .await
    }
}
