//! Leases with real processes: a worker's keys stay while its SDK keeps
//! the lease alive, across a SIGKILL of the leader, and go (as deletes a
//! watch sees) once it stops; the CLI's lease commands.

mod common;

use ferry_client::pb;
use std::sync::{Arc, Mutex};
use tonic::{Request, Response, Status};

use common::{connect, ferry, ProcessCluster};
use futures_util::StreamExt;
use std::time::{Duration, Instant};

async fn present(client: &ferry_client::Client, key: &str) -> bool {
    client.get(key).await.unwrap().is_some()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_kept_lease_outlives_a_leader_sigkill_and_its_keys_go_when_renewals_stop() {
    let mut cluster = ProcessCluster::start(3);
    let client = connect(cluster.endpoints()).await;
    let ttl = Duration::from_secs(4);
    let lease = client.lease_grant(ttl).await.unwrap();
    let revision = client
        .put_with_lease("workers/w1", "alive", lease)
        .await
        .unwrap();
    assert!(matches!(
        client.put_with_lease("workers/w2", "x", 12345).await,
        Err(ferry_client::Error::LeaseNotFound(12345))
    ));
    let mut watch = client.watch_prefix("workers/", revision + 1);
    let keep = client.lease_keep_alive(lease, ttl);

    let leader = client.status().await.unwrap().leader_id;
    cluster.sigkill(leader);
    // Three TTLs across the failover: renewals find the new leader.
    let until = Instant::now() + 3 * ttl;
    while Instant::now() < until {
        assert!(
            present(&client, "workers/w1").await,
            "the lease expired while kept alive"
        );
        assert_eq!(keep.state(), ferry_client::LeaseState::Alive);
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    cluster.spawn(leader, false, &[]);
    let info = client.lease_time_to_live(lease, true).await.unwrap();
    assert_eq!(info.ttl, ttl);
    assert_eq!(info.keys, vec![b"workers/w1".to_vec()]);

    // The worker stops renewing (it dropped the handle, as a crash would).
    // Its last renewal is one made now: the background one may have been
    // up to a third of the TTL ago (more on a loaded machine), and the
    // lease rightly expires a TTL after that one, which this test cannot see.
    drop(keep);
    let stopped = Instant::now();
    client.lease_renew(lease).await.unwrap();
    let event = tokio::time::timeout(Duration::from_secs(60), watch.next())
        .await
        .expect("the key's delete arrives")
        .expect("watch open")
        .unwrap();
    assert_eq!(event.kv.as_ref().unwrap().key, b"workers/w1");
    assert_eq!(event.kind, ferry_client::pb::event::Kind::Delete as i32);
    assert!(
        stopped.elapsed() >= ttl.saturating_sub(Duration::from_secs(1)),
        "too early"
    );
    assert!(!present(&client, "workers/w1").await);
    assert!(matches!(
        client.lease_renew(lease).await,
        Err(ferry_client::Error::LeaseNotFound(_))
    ));
    // A handle on a lease that is gone says so.
    let mut gone = client.lease_keep_alive(lease, ttl);
    tokio::time::timeout(Duration::from_secs(30), gone.lost())
        .await
        .expect("the handle learns the lease is gone");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_cli_grants_attaches_lists_and_revokes() {
    let cluster = ProcessCluster::start(1);
    let endpoints = cluster.endpoints().join(",");
    let run = |args: &[&str]| {
        let mut args = args.to_vec();
        args.extend(["--endpoints", &endpoints]);
        ferry(&args)
    };
    let (code, out, err) = run(&["lease", "grant", "60", "--json"]);
    assert_eq!(code, 0, "{out}{err}");
    let granted: serde_json::Value = serde_json::from_str(&out).unwrap();
    let id = granted["id"].as_u64().unwrap().to_string();
    let (code, out, err) = run(&["kv", "put", "cli/k", "v", "--lease", &id]);
    assert_eq!(code, 0, "{out}{err}");
    let (code, out, err) = run(&["kv", "put", "cli/other", "v", "--lease", "999"]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(err.contains("lease 999 not found"), "{err}");
    let (code, out, _) = run(&["lease", "timetolive", &id, "--keys", "--json"]);
    assert_eq!(code, 0);
    let ttl: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(ttl["granted_ttl_secs"], 60);
    assert_eq!(ttl["keys"][0], "cli/k");
    let (code, out, _) = run(&["lease", "list"]);
    assert_eq!(code, 0);
    assert!(out.contains(&id), "{out}");
    let (code, out, err) = run(&["lease", "revoke", &id]);
    assert_eq!(code, 0, "{out}{err}");
    let (code, _, _) = run(&["kv", "get", "cli/k"]);
    assert_eq!(code, 3, "the lease's key is gone");
    let (code, _, err) = run(&["lease", "timetolive", &id]);
    assert_eq!(code, 1);
    assert!(err.contains("not found"), "{err}");
}

/// A kept lease whose renewals stop reaching any member is reported lost
/// once a whole TTL has passed without one (it may have expired, and what
/// it guarded may be someone else's), as etcd's client decides.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kept_lease_nobody_can_renew_for_a_ttl_is_reported_lost() {
    let mut cluster = ProcessCluster::start(1);
    let client = connect(cluster.endpoints()).await;
    let ttl = Duration::from_secs(3);
    let lease = client.lease_grant(ttl).await.unwrap();
    let mut keep = client.lease_keep_alive(lease, ttl);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(keep.state(), ferry_client::LeaseState::Alive);
    cluster.sigkill(1);
    let cut = Instant::now();
    tokio::time::timeout(Duration::from_secs(30), keep.lost())
        .await
        .expect("still reported alive 30 s after the cluster went away");
    assert!(
        cut.elapsed() <= ttl + Duration::from_secs(5),
        "reported lost only {:?} after the cluster went away",
        cut.elapsed()
    );
}

/// A keep-alive asked with a longer TTL than the lease was granted (the
/// server's answer says the shorter one) renews at a third of the lease's
/// own TTL: the lease outlives several of its TTLs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keep_alive_named_a_longer_ttl_renews_at_the_leases_own() {
    let cluster = ProcessCluster::start(1);
    let client = connect(cluster.endpoints()).await;
    let lease = client.lease_grant(Duration::from_secs(2)).await.unwrap();
    let keep = client.lease_keep_alive(lease, Duration::from_secs(60));
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(keep.state(), ferry_client::LeaseState::Alive);
    let info = client.lease_time_to_live(lease, false).await.unwrap();
    assert!(info.remaining > Duration::ZERO, "{info:?}");
    drop(cluster);
}

/// A Lease service whose first revoke of a lease applies but loses its
/// answer (the connection drops), as a leader that dies just after
/// applying it would.
#[derive(Clone, Default)]
struct LosesTheFirstRevokeAnswer {
    revoked: Arc<Mutex<Vec<u64>>>,
}

#[tonic::async_trait]
impl pb::lease_server::Lease for LosesTheFirstRevokeAnswer {
    async fn grant(
        &self,
        _: Request<pb::LeaseGrantRequest>,
    ) -> Result<Response<pb::LeaseGrantResponse>, Status> {
        Err(Status::unimplemented("grant"))
    }

    async fn revoke(
        &self,
        request: Request<pb::LeaseRevokeRequest>,
    ) -> Result<Response<pb::LeaseRevokeResponse>, Status> {
        let id = request.into_inner().id;
        let mut revoked = self.revoked.lock().unwrap();
        if id == 7 && !revoked.contains(&id) {
            revoked.push(id);
            return Err(Status::unavailable("the connection dropped"));
        }
        Err(Status::not_found(format!("lease {id} not found")))
    }

    type KeepAliveStream = tokio_stream::Empty<Result<pb::LeaseKeepAliveResponse, Status>>;

    async fn keep_alive(
        &self,
        _: Request<tonic::Streaming<pb::LeaseKeepAliveRequest>>,
    ) -> Result<Response<Self::KeepAliveStream>, Status> {
        Err(Status::unimplemented("keep_alive"))
    }

    async fn time_to_live(
        &self,
        _: Request<pb::LeaseTimeToLiveRequest>,
    ) -> Result<Response<pb::LeaseTimeToLiveResponse>, Status> {
        Err(Status::unimplemented("time_to_live"))
    }

    async fn list(
        &self,
        _: Request<pb::LeaseListRequest>,
    ) -> Result<Response<pb::LeaseListResponse>, Status> {
        Err(Status::unimplemented("list"))
    }
}

/// A revoke whose answer was lost, retried, finds the lease gone: that is
/// its own success, not "not found"; a lease that never existed still is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_revoke_that_finds_the_lease_gone_succeeds() {
    let service = LosesTheFirstRevokeAnswer::default();
    let (addr, stop, server) = common::fake::serve_lease(service.clone()).await;
    let client = ferry_client::Client::connect_with([addr], common::options())
        .await
        .unwrap();
    client.lease_revoke(7).await.unwrap();
    assert_eq!(*service.revoked.lock().unwrap(), vec![7]);
    match client.lease_revoke(8).await {
        Err(ferry_client::Error::LeaseNotFound(8)) => {}
        other => panic!("{other:?}"),
    }
    let _ = stop.send(());
    server.await.unwrap().unwrap();
}
