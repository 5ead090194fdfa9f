//! The disaster-recovery standby: a learner whose lag is watched, and a
//! recovery from it when the voters are gone for good.

mod common;

use common::{connect, ferry, ProcessCluster};
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_lagging_standby_is_reported_and_recovers_the_cluster_up_to_its_lag() {
    let mut cluster = ProcessCluster::start(3);
    let client = connect(cluster.endpoints()).await;
    cluster.new_node(4);
    cluster.spawn(4, false, &[]);
    let endpoints = cluster.endpoints().join(",");
    let (code, out, err) = tokio::task::spawn_blocking({
        let (raft, client_addr, endpoints) = (
            cluster.raft_addr(4),
            cluster.client_addr(4),
            endpoints.clone(),
        );
        move || {
            ferry(&[
                "cluster",
                "add",
                "--id",
                "4",
                "--raft-addr",
                &raft,
                "--client-addr",
                &client_addr,
                "--endpoints",
                &endpoints,
            ])
        }
    })
    .await
    .unwrap();
    assert_eq!(code, 0, "{out}{err}");

    // Writes the standby receives.
    for i in 0..100 {
        client.put(format!("before/{i:03}"), "x").await.unwrap();
    }
    // The standby itself (not any member) holds them.
    let deadline = Instant::now() + Duration::from_secs(20);
    while common::stale_prefix_at(&client, &cluster.client_addr(4), b"before/")
        .await
        .0
        .len()
        < 100
    {
        assert!(Instant::now() < deadline, "the standby did not catch up");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Its link is cut (the process is frozen): its lag rises and the leader warns.
    cluster.signal(4, libc::SIGSTOP);
    for i in 0..20 {
        client.put(format!("after/{i:03}"), "x").await.unwrap();
    }
    let status = client.status().await.unwrap();
    let leader = status.leader_id;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let status = client.status().await.unwrap();
        let lag_ms = status
            .members
            .iter()
            .find(|m| m.id == 4)
            .and_then(|m| m.lag_ms);
        let warned = cluster
            .log(leader)
            .contains("learner lag exceeds its bound");
        if lag_ms.is_some_and(|ms| ms > 1000) && warned {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no lag warning (lag {lag_ms:?} ms)"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // The voters are lost for good; the standby becomes a new cluster.
    for id in 1..=3 {
        cluster.sigkill(id);
    }
    cluster.signal(4, libc::SIGCONT);
    cluster.sigkill(4);
    let data = cluster
        .nodes
        .iter()
        .find(|n| n.id == 4)
        .unwrap()
        .dir
        .clone();
    let (raft, client_addr) = (cluster.raft_addr(4), cluster.client_addr(4));
    let (code, out, err) = ferry(&[
        "cluster",
        "recover",
        "--data-dir",
        data.to_str().unwrap(),
        "--id",
        "4",
        "--raft-addr",
        &raft,
        "--client-addr",
        &client_addr,
    ]);
    assert_eq!(code, 0, "{out}{err}");
    cluster.spawn(4, false, &[]);
    let recovered = connect(vec![client_addr]).await;
    // Everything up to its lag is there; it serves writes alone.
    for i in 0..100 {
        assert!(
            recovered
                .get(format!("before/{i:03}"))
                .await
                .unwrap()
                .is_some(),
            "before/{i:03} lost"
        );
    }
    let status = recovered.status().await.unwrap();
    assert_eq!(status.members.len(), 1);
    recovered.put("after-recovery", "x").await.unwrap();
}
