//! Pieces of fake servers, for SDK tests against servers that behave in
//! ways a real one cannot be made to on demand.

use ferry_client::pb;
use std::sync::{Arc, Mutex};
use tonic::{Request, Response, Status};

/// A Cluster service naming one member, itself, as the leader: enough for
/// the SDK to connect.
#[derive(Clone, Default)]
pub struct OneMember {
    pub addr: Arc<Mutex<String>>,
}

#[tonic::async_trait]
impl pb::cluster_server::Cluster for OneMember {
    async fn status(
        &self,
        _: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::StatusResponse>, Status> {
        Ok(Response::new(pb::StatusResponse {
            leader_id: 1,
            members: vec![pb::Member {
                id: 1,
                client_addr: self.addr.lock().unwrap().clone(),
                ..Default::default()
            }],
            ..Default::default()
        }))
    }

    async fn member_add(
        &self,
        _: Request<pb::MemberAddRequest>,
    ) -> Result<Response<pb::MemberResponse>, Status> {
        Err(Status::unimplemented("member_add"))
    }

    async fn promote(
        &self,
        _: Request<pb::MemberRequest>,
    ) -> Result<Response<pb::MemberResponse>, Status> {
        Err(Status::unimplemented("promote"))
    }

    async fn remove(
        &self,
        _: Request<pb::MemberRequest>,
    ) -> Result<Response<pb::MemberResponse>, Status> {
        Err(Status::unimplemented("remove"))
    }

    async fn transfer_leader(
        &self,
        _: Request<pb::MemberRequest>,
    ) -> Result<Response<pb::MemberResponse>, Status> {
        Err(Status::unimplemented("transfer_leader"))
    }
}

type Served = (
    String,
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<Result<(), tonic::transport::Error>>,
);

/// Serves `kv` and a [`OneMember`] cluster on a free loopback port until
/// the returned sender is dropped or sent to; returns the address.
#[allow(dead_code)]
pub async fn serve<K: pb::kv_server::Kv>(kv: K) -> Served {
    serve_with(|server| server.add_service(pb::kv_server::KvServer::new(kv))).await
}

/// As [`serve`], for a Lease service.
#[allow(dead_code)]
pub async fn serve_lease<L: pb::lease_server::Lease>(lease: L) -> Served {
    serve_with(|server| server.add_service(pb::lease_server::LeaseServer::new(lease))).await
}

async fn serve_with(
    service: impl FnOnce(&mut tonic::transport::Server) -> tonic::transport::server::Router,
) -> Served {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let cluster = OneMember::default();
    *cluster.addr.lock().unwrap() = addr.clone();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let mut builder = tonic::transport::Server::builder();
    let server = tokio::spawn(
        service(&mut builder)
            .add_service(pb::cluster_server::ClusterServer::new(cluster))
            .serve_with_incoming_shutdown(
                tokio_stream::wrappers::TcpListenerStream::new(listener),
                async {
                    let _ = stopped.await;
                },
            ),
    );
    (addr, stop, server)
}
