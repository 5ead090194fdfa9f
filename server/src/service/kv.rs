//! The KV service: Get, Put, Delete, Range, Txn.

use super::{consistency, key_value, staleness, timed, Context};
use crate::auth::{Credential, Propose};
use ferry_client::pb::{self, kv_server::Kv};
use ferry_engine::prefix_end;
use ferry_replication::auth::{Access, AccessKind};
use ferry_replication::types::{Compare, CompareOp, CompareTarget, Op, OpResult, RequestId, Txn};
use ferry_replication::{Consistency, PageLimit};
use tonic::{Request, Response, Status};

/// Keys counted by one count-only range at most.
const MAX_COUNT: u64 = 10_000_000;

#[derive(Clone)]
pub struct KvService {
    pub context: Context,
}

fn request_id(id: Option<pb::RequestId>) -> Option<RequestId> {
    id.map(|r| RequestId {
        client: r.client_id,
        sequence: r.sequence,
        first_incomplete: r.first_incomplete,
    })
}

impl KvService {
    fn op(&self, op: pb::Op) -> Result<Op, Status> {
        match op.op {
            Some(pb::op::Op::Put(put)) => {
                self.context.check_key(&put.key)?;
                self.context.check_value(&put.value)?;
                Ok(Op::Put {
                    key: put.key,
                    value: put.value,
                    lease: put.lease,
                    prev_kv: false,
                })
            }
            Some(pb::op::Op::Delete(delete)) => {
                self.context.check_key(&delete.key)?;
                Ok(Op::delete(delete.key))
            }
            Some(pb::op::Op::Get(get)) => {
                self.context.check_key(&get.key)?;
                Ok(Op::Get { key: get.key })
            }
            None => Err(Status::invalid_argument("an operation has no kind")),
        }
    }

    fn compare(&self, compare: pb::Compare) -> Result<Compare, Status> {
        self.context.check_key(&compare.key)?;
        let mut op = match pb::compare::Op::try_from(compare.op) {
            Ok(pb::compare::Op::Equal) => CompareOp::Equal,
            Ok(pb::compare::Op::NotEqual) => CompareOp::NotEqual,
            Ok(pb::compare::Op::Less) => CompareOp::Less,
            Ok(pb::compare::Op::Greater) => CompareOp::Greater,
            Err(_) => return Err(Status::invalid_argument("unknown compare operator")),
        };
        let target = match compare.target {
            Some(pb::compare::Target::Value(v)) => CompareTarget::Value(Some(v)),
            Some(pb::compare::Target::ModRevision(r)) => CompareTarget::ModRevision(r),
            Some(pb::compare::Target::CreateRevision(r)) => CompareTarget::CreateRevision(r),
            Some(pb::compare::Target::Version(v)) => CompareTarget::Version(v),
            Some(pb::compare::Target::Exists(exists)) => {
                // Existence is "version > 0"; absence is "version = 0".
                op = match (op, exists) {
                    (CompareOp::Equal, true) | (CompareOp::NotEqual, false) => CompareOp::Greater,
                    (CompareOp::Equal, false) | (CompareOp::NotEqual, true) => CompareOp::Equal,
                    _ => {
                        return Err(Status::invalid_argument(
                            "exists compares only with EQUAL or NOT_EQUAL",
                        ))
                    }
                };
                CompareTarget::Version(0)
            }
            None => return Err(Status::invalid_argument("a compare has no target")),
        };
        Ok(Compare {
            key: compare.key,
            op,
            target,
        })
    }
}

/// The calls, shared by the unary RPCs and the batch stream.
impl KvService {
    pub(crate) async fn get_call(
        &self,
        credential: &Credential,
        request: pb::GetRequest,
    ) -> Result<pb::GetResponse, Status> {
        timed(&self.context, "Get", async {
            self.context.check_key(&request.key)?;
            let access = Access::key(AccessKind::Read, &request.key);
            let consistency = consistency(request.consistency)?;
            let read = async {
                self.context
                    .node
                    .get(&request.key, consistency)
                    .await
                    .map_err(|e| self.context.status(e))
            };
            let read = self
                .context
                .gate
                .check_read(credential, &access, consistency, read)
                .await?;
            Ok(pb::GetResponse {
                header: self.context.header(read.revision),
                kv: read.value.map(key_value),
                staleness: staleness(read.staleness),
            })
        })
        .await
    }

    pub(crate) async fn put_call(
        &self,
        credential: &Credential,
        request: pb::PutRequest,
    ) -> Result<pb::PutResponse, Status> {
        timed(&self.context, "Put", async {
            self.context.check_key(&request.key)?;
            self.context.check_value(&request.value)?;
            let accesses = Access::write_key(&request.key, request.prev_kv);
            let txn = Txn {
                request: request_id(request.request),
                ..Txn::batch(vec![Op::Put {
                    key: request.key,
                    value: request.value,
                    lease: request.lease,
                    prev_kv: request.prev_kv,
                }])
            };
            let response = self
                .context
                .gate
                .write(credential, &accesses, txn, Propose::Here, |e| {
                    self.context.status(e)
                })
                .await?;
            let prev_kv = response
                .results
                .into_iter()
                .find_map(|result| match result {
                    OpResult::Put { prev } => prev.map(key_value),
                    _ => None,
                });
            Ok(pb::PutResponse {
                header: self.context.header(response.revision),
                prev_kv,
            })
        })
        .await
    }

    pub(crate) async fn delete_call(
        &self,
        credential: &Credential,
        request: pb::DeleteRequest,
    ) -> Result<pb::DeleteResponse, Status> {
        timed(&self.context, "Delete", async {
            self.context.check_key(&request.key)?;
            let accesses = Access::write_key(&request.key, request.prev_kv);
            let txn = Txn {
                request: request_id(request.request),
                ..Txn::batch(vec![Op::Delete {
                    key: request.key,
                    prev_kv: request.prev_kv,
                }])
            };
            let response = self
                .context
                .gate
                .write(credential, &accesses, txn, Propose::Here, |e| {
                    self.context.status(e)
                })
                .await?;
            let (mut deleted, mut prev_kv) = (false, None);
            for result in response.results {
                match result {
                    OpResult::Delete { deleted: n, prev } => {
                        deleted = n > 0;
                        prev_kv = prev.map(key_value);
                    }
                    // The answer of a release 0.1.0 delete (a get, then the
                    // delete), kept for a retry across the upgrade.
                    OpResult::Get(found) => deleted = found.is_some(),
                    OpResult::Put { .. }
                    | OpResult::DeleteRange { .. }
                    | OpResult::Range { .. } => {}
                }
            }
            Ok(pb::DeleteResponse {
                header: self.context.header(response.revision),
                deleted,
                prev_kv,
            })
        })
        .await
    }

    pub(crate) async fn range_call(
        &self,
        credential: &Credential,
        request: pb::RangeRequest,
    ) -> Result<pb::RangeResponse, Status> {
        timed(&self.context, "Range", async {
            let max_page = self.context.limits.max_range_page;
            if request.limit > max_page {
                return Err(Status::invalid_argument(format!(
                    "limit {} exceeds max_range_page = {max_page}",
                    request.limit
                )));
            }
            let (start, end) = if request.prefix.is_empty() {
                let end = (!request.end.is_empty()).then(|| request.end.clone());
                (request.start.clone(), end)
            } else {
                (request.prefix.clone(), prefix_end(&request.prefix))
            };
            let access = Access::Keys {
                kind: AccessKind::Read,
                start: start.clone(),
                end: end.clone(),
            };
            let consistency = consistency(request.consistency)?;
            let read = self.range_read(request, start, end, consistency);
            self.context
                .gate
                .check_read(credential, &access, consistency, read)
                .await
        })
        .await
    }

    /// The range `[start, end)` of `request` (from its continuation, if it
    /// has one), read with `consistency`.
    async fn range_read(
        &self,
        request: pb::RangeRequest,
        mut start: Vec<u8>,
        end: Option<Vec<u8>>,
        consistency: Consistency,
    ) -> Result<pb::RangeResponse, Status> {
        let max_page = self.context.limits.max_range_page;
        let limit = if request.limit == 0 {
            max_page
        } else {
            request.limit
        } as usize;
        let mut revision = request.revision;
        if !request.continuation.is_empty() {
            let token = Continuation::decode(&request.continuation)?;
            if token.next < start || end.as_ref().is_some_and(|e| token.next >= *e) {
                return Err(Status::invalid_argument(
                    "the continuation token is outside the range",
                ));
            }
            if revision != 0 && revision != token.revision {
                return Err(Status::invalid_argument(format!(
                    "the continuation token is of revision {}, the request asks for {revision}",
                    token.revision
                )));
            }
            start = token.next;
            revision = token.revision;
        }
        let node = &self.context.node;
        if request.count_only {
            let read = node
                .count_at(&start, end.as_deref(), MAX_COUNT, revision, consistency)
                .await
                .map_err(|e| self.context.status(e))?;
            return Ok(pb::RangeResponse {
                header: self.context.header(read.revision),
                count: read.value,
                staleness: staleness(read.staleness),
                ..pb::RangeResponse::default()
            });
        }
        let max_bytes = self.context.limits.max_range_bytes;
        let page = PageLimit {
            keys: limit + 1,
            bytes: max_bytes,
        };
        let read = node
            .range_at(&start, end.as_deref(), page, revision, consistency)
            .await
            .map_err(|e| self.context.status(e))?;
        let bytes: usize = read
            .value
            .iter()
            .map(|kv| kv.key.len() + kv.value.len())
            .sum();
        let mut kvs: Vec<pb::KeyValue> = read.value.into_iter().map(key_value).collect();
        let mut continuation = Vec::new();
        // Cut by the key limit (one more was read to know there is
        // more) or by bytes (the read stopped at the budget; there may
        // be nothing after, then the next page is empty).
        let full = kvs.len() > limit || (bytes >= max_bytes && !kvs.is_empty());
        if full {
            kvs.truncate(limit);
            if let Some(last) = kvs.last() {
                continuation = Continuation {
                    revision: read.revision,
                    next: [last.key.as_slice(), &[0]].concat(),
                }
                .encode();
            }
        }
        if request.keys_only {
            for kv in &mut kvs {
                kv.value.clear();
            }
        }
        Ok(pb::RangeResponse {
            header: self.context.header(read.revision),
            count: kvs.len() as u64,
            kvs,
            continuation,
            staleness: staleness(read.staleness),
        })
    }

    pub(crate) async fn txn_call(
        &self,
        credential: &Credential,
        request: pb::TxnRequest,
    ) -> Result<pb::TxnResponse, Status> {
        timed(&self.context, "Txn", async {
            let ops = request.compares.len() + request.success.len() + request.failure.len();
            if ops > self.context.limits.max_txn_ops {
                return Err(Status::invalid_argument(format!(
                    "transaction of {ops} compares and operations exceeds max_txn_ops = {}",
                    self.context.limits.max_txn_ops
                )));
            }
            let txn = Txn {
                compares: request
                    .compares
                    .into_iter()
                    .map(|c| self.compare(c))
                    .collect::<Result<_, _>>()?,
                success: request
                    .success
                    .into_iter()
                    .map(|o| self.op(o))
                    .collect::<Result<_, _>>()?,
                failure: request
                    .failure
                    .into_iter()
                    .map(|o| self.op(o))
                    .collect::<Result<_, _>>()?,
                request: request_id(request.request),
                ..Txn::default()
            };
            let response = self
                .context
                .gate
                .write(credential, &Access::txn(&txn), txn, Propose::Here, |e| {
                    self.context.status(e)
                })
                .await?;
            Ok(pb::TxnResponse {
                header: self.context.header(response.revision),
                succeeded: response.succeeded,
                gets: response
                    .reads()
                    .map(|kv| pb::GetResult {
                        kv: kv.cloned().map(key_value),
                    })
                    .collect(),
            })
        })
        .await
    }
}

/// A range page's continuation token: where the next page starts, and the
/// revision the scan reads at, so that every page sees the same state.
///
/// ## Format (version 1)
///
/// ```text
/// 1 | revision u64 BE | first key of the next page
/// ```
///
/// Opaque to clients; a token from another format version is refused.
struct Continuation {
    revision: u64,
    next: Vec<u8>,
}

impl Continuation {
    const VERSION: u8 = 1;

    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(9 + self.next.len());
        out.push(Self::VERSION);
        out.extend_from_slice(&self.revision.to_be_bytes());
        out.extend_from_slice(&self.next);
        out
    }

    fn decode(bytes: &[u8]) -> Result<Continuation, Status> {
        match bytes.split_first() {
            Some((&Self::VERSION, rest)) if rest.len() >= 8 => {
                let (revision, next) = rest.split_at(8);
                Ok(Continuation {
                    revision: u64::from_be_bytes(revision.try_into().expect("8 bytes")),
                    next: next.to_vec(),
                })
            }
            _ => Err(Status::invalid_argument(
                "not a continuation token of this server",
            )),
        }
    }
}

#[tonic::async_trait]
impl Kv for KvService {
    async fn get(
        &self,
        request: Request<pb::GetRequest>,
    ) -> Result<Response<pb::GetResponse>, Status> {
        let credential = self.context.gate.credential(&request);
        self.get_call(&credential, request.into_inner())
            .await
            .map(Response::new)
    }

    async fn put(
        &self,
        request: Request<pb::PutRequest>,
    ) -> Result<Response<pb::PutResponse>, Status> {
        let credential = self.context.gate.credential(&request);
        self.put_call(&credential, request.into_inner())
            .await
            .map(Response::new)
    }

    async fn delete(
        &self,
        request: Request<pb::DeleteRequest>,
    ) -> Result<Response<pb::DeleteResponse>, Status> {
        let credential = self.context.gate.credential(&request);
        self.delete_call(&credential, request.into_inner())
            .await
            .map(Response::new)
    }

    async fn range(
        &self,
        request: Request<pb::RangeRequest>,
    ) -> Result<Response<pb::RangeResponse>, Status> {
        let credential = self.context.gate.credential(&request);
        self.range_call(&credential, request.into_inner())
            .await
            .map(Response::new)
    }

    async fn txn(
        &self,
        request: Request<pb::TxnRequest>,
    ) -> Result<Response<pb::TxnResponse>, Status> {
        let credential = self.context.gate.credential(&request);
        self.txn_call(&credential, request.into_inner())
            .await
            .map(Response::new)
    }

    type BatchStream = super::batch::ReplyStream;

    async fn batch(
        &self,
        request: Request<tonic::Streaming<pb::BatchRequest>>,
    ) -> Result<Response<Self::BatchStream>, Status> {
        // The stream's credential holds for each of its calls, each
        // checked as its unary RPC would be.
        let credential = self.context.gate.credential(&request);
        Ok(Response::new(super::batch::serve(
            self.clone(),
            credential,
            request.into_inner(),
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::Continuation;

    #[test]
    fn continuation_tokens_round_trip_and_foreign_ones_are_refused() {
        let token = Continuation {
            revision: 77,
            next: b"key\0".to_vec(),
        };
        let back = Continuation::decode(&token.encode()).unwrap();
        assert_eq!((back.revision, back.next), (77, b"key\0".to_vec()));
        assert!(Continuation::decode(b"").is_err());
        assert!(Continuation::decode(b"plain-key").is_err());
        assert!(Continuation::decode(&[1, 0, 0]).is_err());
    }
}
