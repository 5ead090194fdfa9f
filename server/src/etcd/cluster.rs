//! etcd's Cluster service over the node's membership.
//!
//! Members are named by their Ferry ids. etcd's peer and client URLs are
//! Ferry's Raft and client addresses with a scheme. Ferry adds members only
//! as learners (they hold no data yet, and a voter that holds none would
//! count against the quorum at once); a learner becomes a voter with
//! MemberPromote once it has caught up, as in etcd.

use super::pb::etcdserverpb::{self as rpc, cluster_server::Cluster};
use super::{message, Etcd};
use ferry_replication::auth::Access;
use ferry_replication::types::FerryNode;
use ferry_replication::Error;
use tonic::{Request, Response, Status};

pub struct ClusterService {
    pub etcd: Etcd,
    /// `https` when the port serves TLS.
    pub client_scheme: &'static str,
    pub peer_scheme: &'static str,
}

/// Strips a URL's scheme and path: `http://127.0.0.1:2380/` is
/// `127.0.0.1:2380`.
fn address(url: &str) -> Result<String, Status> {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let host = rest.split('/').next().unwrap_or_default();
    if host.is_empty() || !host.contains(':') {
        return Err(Status::invalid_argument(format!(
            "etcdserver: bad peer URL {url:?}: want scheme://host:port"
        )));
    }
    Ok(host.to_owned())
}

impl ClusterService {
    fn members(&self) -> Vec<rpc::Member> {
        let metrics = self.etcd.context.node.metrics();
        let membership = metrics.membership_config.membership();
        let voters: Vec<u64> = membership.voter_ids().collect();
        let url = |scheme: &str, addr: &str| {
            if addr.is_empty() {
                Vec::new()
            } else {
                vec![format!("{scheme}://{addr}")]
            }
        };
        membership
            .nodes()
            .map(|(id, node)| rpc::Member {
                id: *id,
                name: format!("ferry-{id}"),
                peer_ur_ls: url(self.peer_scheme, &node.raft_addr),
                client_ur_ls: url(self.client_scheme, &node.client_addr),
                is_learner: !voters.contains(id),
            })
            .collect()
    }

    fn status(&self, error: Error) -> Status {
        match error {
            Error::Node(reason)
                if reason.contains("not a member") || reason.contains("unknown") =>
            {
                Status::not_found(message::MEMBER_NOT_FOUND)
            }
            other => self.etcd.status(other),
        }
    }
}

#[tonic::async_trait]
impl Cluster for ClusterService {
    async fn member_add(
        &self,
        request: Request<rpc::MemberAddRequest>,
    ) -> Result<Response<rpc::MemberAddResponse>, Status> {
        let context = &self.etcd.context;
        self.etcd
            .timed("etcd.MemberAdd", async {
                context.gate.authorize(&request, &Access::Root)?;
                let request = request.into_inner();
                if !request.is_learner {
                    return Err(Status::failed_precondition(
                        "Ferry adds members as learners only: add it with --learner, start it, \
                     and promote it once it has caught up",
                    ));
                }
                let [url] = request.peer_ur_ls.as_slice() else {
                    return Err(Status::invalid_argument("a member needs one peer URL"));
                };
                let raft_addr = address(url)?;
                if self.members().iter().any(|m| {
                    m.peer_ur_ls
                        .iter()
                        .any(|u| address(u).ok().as_ref() == Some(&raft_addr))
                }) {
                    return Err(Status::failed_precondition(
                        "etcdserver: Peer URLs already exists",
                    ));
                }
                // etcd picks the new member's id; Ferry's is the `--id` it is
                // then started with.
                let taken: Vec<u64> = self.members().iter().map(|m| m.id).collect();
                let id = loop {
                    let id = rand_id();
                    if !taken.contains(&id) {
                        break id;
                    }
                };
                let node = FerryNode {
                    raft_addr,
                    client_addr: String::new(),
                };
                let revision = context
                    .node
                    .add_learner(id, node, false)
                    .await
                    .map_err(|e| self.status(e))?;
                let members = self.members();
                Ok(Response::new(rpc::MemberAddResponse {
                    header: self.etcd.header(revision),
                    member: members.iter().find(|m| m.id == id).cloned(),
                    members,
                }))
            })
            .await
    }

    async fn member_remove(
        &self,
        request: Request<rpc::MemberRemoveRequest>,
    ) -> Result<Response<rpc::MemberRemoveResponse>, Status> {
        let context = &self.etcd.context;
        self.etcd
            .timed("etcd.MemberRemove", async {
                context.gate.authorize(&request, &Access::Root)?;
                let id = request.into_inner().id;
                if !self.members().iter().any(|m| m.id == id) {
                    return Err(Status::not_found(message::MEMBER_NOT_FOUND));
                }
                let revision = context.node.remove(id).await.map_err(|e| self.status(e))?;
                Ok(Response::new(rpc::MemberRemoveResponse {
                    header: self.etcd.header(revision),
                    members: self.members(),
                }))
            })
            .await
    }

    async fn member_update(
        &self,
        request: Request<rpc::MemberUpdateRequest>,
    ) -> Result<Response<rpc::MemberUpdateResponse>, Status> {
        let context = &self.etcd.context;
        self.etcd
            .timed("etcd.MemberUpdate", async {
                context.gate.authorize(&request, &Access::Root)?;
                Err(Status::unimplemented(
                    "a member's Raft address cannot change in place: remove the member and add \
                 it again at its new address",
                ))
            })
            .await
    }

    async fn member_list(
        &self,
        request: Request<rpc::MemberListRequest>,
    ) -> Result<Response<rpc::MemberListResponse>, Status> {
        let context = &self.etcd.context;
        self.etcd
            .timed("etcd.MemberList", async {
                context.gate.authorize(&request, &Access::Any)?;
                Ok(Response::new(rpc::MemberListResponse {
                    header: self.etcd.header(context.applied()),
                    members: self.members(),
                }))
            })
            .await
    }

    async fn member_promote(
        &self,
        request: Request<rpc::MemberPromoteRequest>,
    ) -> Result<Response<rpc::MemberPromoteResponse>, Status> {
        let context = &self.etcd.context;
        self.etcd
            .timed("etcd.MemberPromote", async {
                context.gate.authorize(&request, &Access::Root)?;
                let id = request.into_inner().id;
                match self.members().iter().find(|m| m.id == id) {
                    None => return Err(Status::not_found(message::MEMBER_NOT_FOUND)),
                    Some(member) if !member.is_learner => {
                        return Err(Status::failed_precondition(
                            "etcdserver: can only promote a learner member",
                        ))
                    }
                    Some(_) => {}
                }
                let revision = context.node.promote(id).await.map_err(|e| self.status(e))?;
                Ok(Response::new(rpc::MemberPromoteResponse {
                    header: self.etcd.header(revision),
                    members: self.members(),
                }))
            })
            .await
    }
}

/// A random member id of 16 hex digits, as etcd's print (etcdctl pads
/// shorter ones with spaces), below 2^63 (clients that keep ids as signed
/// numbers).
fn rand_id() -> u64 {
    rand::random_range(1u64 << 60..1u64 << 63)
}

#[cfg(test)]
mod tests {
    use super::address;

    #[test]
    fn peer_urls_become_addresses() {
        assert_eq!(address("http://127.0.0.1:2380").unwrap(), "127.0.0.1:2380");
        assert_eq!(address("https://h:1/").unwrap(), "h:1");
        assert_eq!(address("h:1").unwrap(), "h:1");
        assert!(address("http://nohost").is_err());
        assert!(address("").is_err());
    }
}
