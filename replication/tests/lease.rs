//! Leases: keys attached to a lease go when it is revoked or expires, in
//! one revision that watches see; a renewed lease stays, across a failover
//! too; its remaining TTL is checkpointed into the replicated state.

mod common;

use common::{fast_raft, Cluster};
use ferry_replication::lease::LeaseCall;
use ferry_replication::lease::{LeaseError, LeaseOptions, RevokeAs};
use ferry_replication::state_machine::history::ChangeKind;
use ferry_replication::types::{Command, Op};
use ferry_replication::{Consistency, Error, Node, WatchOptions};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn put_with(key: &str, lease: u64) -> Command {
    Command::batch(vec![Op::Put {
        key: key.into(),
        value: b"v".to_vec(),
        lease,
        prev_kv: false,
    }])
}

async fn present(node: &Node, key: &str) -> bool {
    node.get(key, Consistency::Linearizable)
        .await
        .unwrap()
        .value
        .is_some()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_revoked_lease_takes_its_keys_in_one_revision_that_watches_see() {
    let cluster = Cluster::start(3, fast_raft()).await;
    let leader = cluster.leader().unwrap().clone();
    let lease = leader
        .lease_grant(0, Duration::from_secs(30))
        .await
        .unwrap();
    let other = leader
        .lease_grant(77, Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(other, 77);
    assert!(matches!(
        leader.lease_grant(77, Duration::from_secs(30)).await,
        Err(LeaseCall::Lease(LeaseError::Exists(77)))
    ));
    let start = leader.txn(put_with("job/a", lease)).await.unwrap().revision;
    leader.txn(put_with("job/b", lease)).await.unwrap();
    leader.txn(put_with("job/c", other)).await.unwrap();
    leader.put("job/plain", "v").await.unwrap();
    // job/c moves to `lease`, then back: the index follows the record.
    leader.txn(put_with("job/c", lease)).await.unwrap();
    leader.txn(put_with("job/c", other)).await.unwrap();
    let status = leader.lease_status(lease, 100).await.unwrap();
    assert_eq!(status.keys, vec![b"job/a".to_vec(), b"job/b".to_vec()]);
    assert_eq!(status.ttl, Duration::from_secs(30));
    assert!(status.remaining <= status.ttl && status.remaining > Duration::from_secs(20));
    // A put naming a lease that does not exist changes nothing.
    let refused = leader
        .txn(Command::batch(vec![
            Op::put("job/never", "v"),
            Op::Put {
                key: b"job/never2".to_vec(),
                value: b"v".to_vec(),
                lease: 999,
                prev_kv: false,
            },
        ]))
        .await;
    assert!(
        matches!(refused, Err(Error::Rejected(ref r)) if r.contains("lease 999")),
        "{refused:?}"
    );
    assert!(!present(&leader, "job/never").await);

    let mut watch = leader
        .watch(WatchOptions::range(
            b"job/".to_vec(),
            Some(b"job0".to_vec()),
            start + 1,
        ))
        .unwrap();
    let revoked = leader.lease_revoke(lease, RevokeAs::Node).await.unwrap();
    assert!(matches!(
        leader
            .lease_revoke(lease, RevokeAs::Client { user: None })
            .await,
        Err(LeaseCall::Lease(LeaseError::NotFound(_)))
    ));
    for key in ["job/a", "job/b"] {
        assert!(!present(&leader, key).await, "{key}");
    }
    for key in ["job/c", "job/plain"] {
        assert!(present(&leader, key).await, "{key}");
    }
    let mut deletes = Vec::new();
    while deletes.len() < 2 {
        let batch = tokio::time::timeout(Duration::from_secs(10), watch.next())
            .await
            .expect("the deletes arrive")
            .unwrap();
        for event in batch.events {
            if event.change.kind == ChangeKind::Delete {
                assert_eq!(
                    event.change.revision, revoked,
                    "one revision for the lease's keys"
                );
                deletes.push(event.change.key);
            }
        }
    }
    assert_eq!(deletes, vec![b"job/a".to_vec(), b"job/b".to_vec()]);
    assert!(leader.leases().unwrap().iter().all(|(id, _)| *id != lease));
    // A follower answers lease calls with the leader.
    let follower = cluster
        .nodes
        .values()
        .find(|n| n.id() != leader.id())
        .unwrap();
    assert!(matches!(
        follower.lease_keep_alive(other).await,
        Err(LeaseCall::Node(Error::NotLeader { .. }))
    ));
    cluster.assert_converged(Duration::from_secs(10)).await;
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_lease_nobody_renews_expires_no_earlier_than_its_ttl_and_a_renewed_one_stays() {
    let cluster = Cluster::start(3, fast_raft()).await;
    let leader = cluster.leader().unwrap().clone();
    let ttl = Duration::from_secs(2);
    assert!(matches!(
        leader.lease_grant(0, Duration::from_millis(500)).await,
        Err(LeaseCall::Lease(LeaseError::Ttl { .. }))
    ));
    let granted = Instant::now();
    let dying = leader.lease_grant(0, ttl).await.unwrap();
    let kept = leader.lease_grant(0, ttl).await.unwrap();
    leader.txn(put_with("dying", dying)).await.unwrap();
    leader.txn(put_with("kept", kept)).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while present(&leader, "dying").await {
        assert!(Instant::now() < deadline, "the lease never expired");
        assert_eq!(leader.lease_keep_alive(kept).await.unwrap(), ttl);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        granted.elapsed() >= ttl,
        "expired after {:?}",
        granted.elapsed()
    );
    assert!(matches!(
        leader.lease_keep_alive(dying).await,
        Err(LeaseCall::Lease(LeaseError::NotFound(_)))
    ));
    // Renewed all along, across the other's expiry.
    for _ in 0..10 {
        leader.lease_keep_alive(kept).await.unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(present(&leader, "kept").await);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_renewed_lease_survives_a_failover_and_its_remaining_ttl_a_restart() {
    let options = LeaseOptions {
        checkpoint_interval: Duration::from_millis(300),
        ..LeaseOptions::default()
    };
    let mut cluster = Cluster::start_with(3, fast_raft(), options).await;
    let leader = cluster.leader().unwrap().clone();
    let ttl = Duration::from_secs(3);
    let lease = leader.lease_grant(0, ttl).await.unwrap();
    leader.txn(put_with("owned", lease)).await.unwrap();
    let idle = leader
        .lease_grant(0, Duration::from_secs(600))
        .await
        .unwrap();
    // Checkpoints record the idle lease's remaining TTL.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let old = leader.id();
    drop(leader);
    cluster.kill(old).await;
    let new_leader = cluster.wait_leader(Duration::from_secs(20)).await;
    let node: Arc<Node> = cluster.nodes[&new_leader].clone();
    // The owner finds the new leader within the TTL and renews there.
    let deadline = Instant::now() + ttl;
    loop {
        match node.lease_keep_alive(lease).await {
            Ok(_) => break,
            Err(LeaseCall::Node(Error::NotLeader { .. })) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await
            }
            Err(other) => panic!("renewal on the new leader: {other:?}"),
        }
    }
    for _ in 0..15 {
        node.lease_keep_alive(lease).await.unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(present(&node, "owned").await);
    // The idle lease's checkpointed remaining TTL is below its TTL.
    let status = node.lease_status(idle, 0).await.unwrap();
    assert!(
        status.remaining < Duration::from_secs(600) + LeaseOptions::default().failover_extension
    );
    // Every member restarts: the lease is still there, with its TTL.
    drop(node);
    cluster.start_node(old).await;
    let ids: Vec<u64> = cluster.nodes.keys().copied().collect();
    for id in &ids {
        cluster.kill(*id).await;
    }
    for id in &ids {
        cluster.start_node(*id).await;
    }
    let restarted = cluster.wait_leader(Duration::from_secs(30)).await;
    let node = cluster.nodes[&restarted].clone();
    let status = node.lease_status(idle, 0).await.unwrap();
    assert_eq!(status.ttl, Duration::from_secs(600));
    assert!(
        status.remaining < Duration::from_secs(600) + LeaseOptions::default().failover_extension
    );
    // Nobody renews `lease` any more: it goes, with its key.
    let deadline = Instant::now() + Duration::from_secs(30);
    while present(&node, "owned").await {
        assert!(Instant::now() < deadline, "the lease never expired");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    cluster.shutdown().await;
}

/// A grant that applied while its call was dropped (its client went away)
/// never reaches the leader's clock through the call; the lease must
/// expire all the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_lease_granted_behind_the_clock_s_back_still_expires() {
    let options = LeaseOptions {
        checkpoint_interval: Duration::from_millis(300),
        ..LeaseOptions::default()
    };
    let cluster = Cluster::start_with(3, fast_raft(), options).await;
    let leader = cluster.leader().unwrap().clone();
    let grant = Command::Lease(ferry_replication::lease::LeaseCommand::Grant {
        id: 5,
        ttl_ms: 2_000,
    });
    leader.txn(grant).await.unwrap();
    leader.txn(put_with("orphan", 5)).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while present(&leader, "orphan").await {
        assert!(
            Instant::now() < deadline,
            "a lease missing from the clock never expired"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    cluster.shutdown().await;
}

/// A grant naming a lease that exists is refused, and the refused grant's
/// TTL does not reach the leader's clock of that lease (it would make the
/// lease expire at the refused TTL). A TTL too large for milliseconds is
/// refused, not wrapped into the allowed range.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_refused_grant_leaves_the_lease_it_names_alone() {
    let cluster = Cluster::start(3, fast_raft()).await;
    let leader = cluster.leader().unwrap().clone();
    let follower = cluster
        .nodes
        .values()
        .find(|n| !n.is_leader())
        .unwrap()
        .clone();
    let ttl = Duration::from_secs(60);
    assert_eq!(leader.lease_grant(7, ttl).await.unwrap(), 7);
    for refused in [
        leader.lease_grant(7, Duration::from_secs(2)).await,
        follower
            .lease_grant_anywhere(7, Duration::from_secs(2))
            .await,
    ] {
        assert!(
            matches!(refused, Err(LeaseCall::Lease(LeaseError::Exists(7)))),
            "{refused:?}"
        );
    }
    let status = leader.lease_status(7, 0).await.unwrap();
    assert_eq!(status.ttl, ttl);
    assert!(
        status.remaining > Duration::from_secs(50),
        "{:?}",
        status.remaining
    );
    // 2^64 ms + 2 384 ms, in seconds: wrapped, it would be 2.4 s.
    let huge = Duration::from_secs(18_446_744_073_709_554);
    let refused = follower.lease_grant_anywhere(0, huge).await;
    assert!(
        matches!(refused, Err(LeaseCall::Lease(LeaseError::Ttl { .. }))),
        "{refused:?}"
    );
    cluster.shutdown().await;
}

/// A leader cut off from the others keeps its role until it hears of a
/// newer term, while the majority elects another whose clock will expire
/// the lease: it must not renew the lease (a lock holder would go on
/// believing its lock safe).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_leader_cut_off_from_its_quorum_does_not_renew_a_lease() {
    let cluster = Cluster::start(3, fast_raft()).await;
    let old = cluster.wait_leader(Duration::from_secs(10)).await;
    let leader = cluster.nodes[&old].clone();
    let lease = leader.lease_grant(0, Duration::from_secs(5)).await.unwrap();
    leader.lease_keep_alive(lease).await.unwrap();
    cluster.network.isolate(old, cluster.nodes.keys().copied());
    let new_leader = cluster.wait_new_leader(old, Duration::from_secs(10)).await;
    assert_ne!(new_leader, old);
    let renewed =
        tokio::time::timeout(Duration::from_secs(5), leader.lease_keep_alive(lease)).await;
    assert!(
        !matches!(renewed, Ok(Ok(_))),
        "a leader cut off from its quorum renewed a lease: {renewed:?}"
    );
    cluster.network.heal();
    // The lease lives on under whichever member leads now: on a loaded
    // machine, leadership may move once more after the heal.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match cluster.nodes[&new_leader]
            .lease_keep_alive_anywhere(lease)
            .await
        {
            Ok(_) => break,
            Err(LeaseCall::Node(Error::NotLeader { .. })) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(error) => panic!("the lease did not live on: {error:?}"),
        }
    }
    cluster.shutdown().await;
}

/// A revoke whose deletes would not fit in one transaction's bound
/// (`MAX_TXN_WRITE_BYTES`) ends the lease at once and deletes its keys in
/// steps the leader proposes: every key goes exactly once, the id stays
/// taken until the last one is gone, and every member ends up alike.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_lease_too_large_for_one_revision_is_revoked_in_steps_and_every_key_goes() {
    let cluster = Cluster::start(3, fast_raft()).await;
    let leader = cluster.leader().unwrap().clone();
    let lease = leader
        .lease_grant(5, Duration::from_secs(60))
        .await
        .unwrap();
    // 5 000 keys of 4 KiB: deleting one writes some 20 KiB (its tombstone,
    // change, versions and index entry), 100 MB in all.
    let key = |k: usize| format!("big/{k:05}/{}", "x".repeat(4000));
    const KEYS: usize = 5_000;
    let mut start = 0;
    for first in (0..KEYS).step_by(50) {
        let ops = (first..first + 50)
            .map(|k| Op::Put {
                key: key(k).into_bytes(),
                value: b"v".to_vec(),
                lease,
                prev_kv: false,
            })
            .collect();
        start = leader.txn(Command::batch(ops)).await.unwrap().revision;
    }
    let mut watch = leader
        .watch(WatchOptions::range(
            b"big/".to_vec(),
            Some(b"big0".to_vec()),
            start + 1,
        ))
        .unwrap();
    let revoked = leader.lease_revoke(lease, RevokeAs::Node).await.unwrap();
    // Each step applies some 60 MB on every member, which on a busy
    // machine may cost the leader its role: calls go to whoever leads.
    let grant = || async {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match leader
                .lease_grant_anywhere(5, Duration::from_secs(60))
                .await
            {
                Err(LeaseCall::Node(error)) if Instant::now() < deadline => {
                    tracing::debug!(%error, "grant retried");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                other => return other,
            }
        }
    };
    // The lease is gone at once: no put may name it, and its id is taken
    // while its keys drain (refused unless the drain has finished).
    let deadline = Instant::now() + Duration::from_secs(30);
    let refused = loop {
        match leader.txn_anywhere(put_with("big/late", lease)).await {
            Err(Error::NotLeader { .. }) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            other => break other,
        }
    };
    assert!(matches!(refused, Err(Error::Rejected(_))), "{refused:?}");
    let mut regranted = grant().await;
    if let Err(error) = &regranted {
        assert!(
            matches!(error, LeaseCall::Lease(LeaseError::Exists(5))),
            "{error:?}"
        );
    }
    let mut deleted = std::collections::BTreeSet::new();
    let mut revisions = std::collections::BTreeSet::new();
    while deleted.len() < KEYS {
        let batch = tokio::time::timeout(Duration::from_secs(60), watch.next())
            .await
            .expect("the drain goes on")
            .unwrap();
        for event in batch.events {
            assert_eq!(event.change.kind, ChangeKind::Delete);
            assert!(event.change.revision >= revoked);
            revisions.insert(event.change.revision);
            assert!(deleted.insert(event.change.key), "a key deleted twice");
        }
    }
    assert_eq!(revisions.first(), Some(&revoked));
    assert!(revisions.len() >= 2, "one revision: {revisions:?}");
    // Once drained, the id may be granted again.
    let deadline = Instant::now() + Duration::from_secs(30);
    while let Err(error) = &regranted {
        assert!(
            matches!(error, LeaseCall::Lease(LeaseError::Exists(5))) && Instant::now() < deadline,
            "the drained id stays taken: {error:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
        regranted = grant().await;
    }
    assert_eq!(regranted.unwrap(), 5);
    cluster.assert_converged(Duration::from_secs(30)).await;
    cluster.shutdown().await;
}

/// Grants at once cannot pass `max_leases` together: the leader counts
/// and takes a place on its clock under one lock.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_grants_stay_within_max_leases() {
    let options = LeaseOptions {
        max_leases: 5,
        ..LeaseOptions::default()
    };
    let cluster = Cluster::start_with(1, fast_raft(), options).await;
    let leader = cluster.leader().unwrap().clone();
    let grants: Vec<_> = (0..40)
        .map(|_| {
            let leader = leader.clone();
            tokio::spawn(async move { leader.lease_grant(0, Duration::from_secs(60)).await })
        })
        .collect();
    let mut granted = 0;
    for grant in grants {
        match grant.await.unwrap() {
            Ok(_) => granted += 1,
            Err(error) => assert!(
                matches!(error, LeaseCall::Lease(LeaseError::TooMany(_))),
                "{error:?}"
            ),
        }
    }
    assert_eq!(granted, 5);
    assert_eq!(leader.leases().unwrap().len(), 5);
    cluster.shutdown().await;
}

/// A lease its owner abandoned, while the leadership moves more often than
/// half its TTL: each new leader gives it its recorded remaining time, and
/// checkpoints it once nobody renewed it for a third of its TTL, so it
/// still expires, and never before its TTL.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_abandoned_lease_expires_though_the_leader_changes_every_two_fifths_of_its_ttl() {
    let options = LeaseOptions {
        checkpoint_interval: Duration::from_millis(200),
        failover_extension: Duration::from_millis(100),
        ..LeaseOptions::default()
    };
    let cluster = Cluster::start_with(3, fast_raft(), options).await;
    let leader = cluster.leader().unwrap().clone();
    let ttl = Duration::from_secs(6);
    let lease = leader.lease_grant(0, ttl).await.unwrap();
    leader.txn(put_with("abandoned", lease)).await.unwrap();
    let started = Instant::now();
    let mut moves = 0;
    'leaders: loop {
        let id = cluster.wait_leader(Duration::from_secs(10)).await;
        let node = cluster.nodes[&id].clone();
        // Each leader leads for about two fifths of the TTL: under the
        // half-TTL rule alone, none would move the lease on.
        let tenure = Instant::now() + ttl * 2 / 5;
        while Instant::now() < tenure {
            let read = node.get("abandoned", Consistency::ReadIndex).await;
            if read.is_ok_and(|read| read.value.is_none()) {
                break 'leaders;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "still there after {moves} leader changes"
        );
        let target = *cluster.nodes.keys().find(|&&other| other != id).unwrap();
        if node
            .transfer_leadership(target, Duration::from_secs(5))
            .await
            .is_ok()
        {
            moves += 1;
        }
    }
    assert!(started.elapsed() >= ttl, "expired before its TTL");
    cluster.shutdown().await;
}
