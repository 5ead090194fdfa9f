//! etcd's Lock service (`v3lockpb`): a lock is the queue of
//! [`super::recipe`] under `name/`; its key is what Unlock takes.

use super::pb::v3lockpb::{self, lock_server::Lock};
use super::recipe;
use super::Etcd;
use ferry_replication::auth::{Access, AccessKind};
use ferry_replication::types::{Op, Txn};
use tonic::{Request, Response, Status};

pub struct LockService {
    pub etcd: Etcd,
}

#[tonic::async_trait]
impl Lock for LockService {
    async fn lock(
        &self,
        request: Request<v3lockpb::LockRequest>,
    ) -> Result<Response<v3lockpb::LockResponse>, Status> {
        let etcd = &self.etcd;
        etcd.timed("etcd.Lock", async {
            let credential = etcd.context.gate.credential(&request);
            let request = request.into_inner();
            etcd.check_key(&request.name)?;
            let prefix = recipe::queue_prefix(&request.name);
            // What the queue does: read and write under the prefix.
            let (mine, mut abandon) =
                recipe::enqueue(etcd, &credential, &prefix, request.lease, b"").await?;
            let revision = recipe::wait_for_head(etcd, &prefix, &mine).await?;
            abandon.armed = false;
            Ok(Response::new(v3lockpb::LockResponse {
                header: etcd.header(revision),
                key: mine.key,
            }))
        })
        .await
    }

    async fn unlock(
        &self,
        request: Request<v3lockpb::UnlockRequest>,
    ) -> Result<Response<v3lockpb::UnlockResponse>, Status> {
        let etcd = &self.etcd;
        etcd.timed("etcd.Unlock", async {
            let credential = etcd.context.gate.credential(&request);
            let key = request.into_inner().key;
            etcd.check_key(&key)?;
            let access = Access::key(AccessKind::Write, &key);
            // etcd deletes the key whatever holds it now.
            let txn = Txn::batch(vec![Op::delete(key)]);
            let response = etcd.write(&credential, &[access], txn).await?;
            Ok(Response::new(v3lockpb::UnlockResponse {
                header: etcd.header(response.revision),
            }))
        })
        .await
    }
}
