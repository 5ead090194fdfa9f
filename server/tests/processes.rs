//! Real `ferry` processes on loopback: failover under SDK load, membership
//! through the CLI, limits, metrics, graceful stop and the demo.

mod common;

use common::secure::{self, Pki};
use common::{connect, ferry, ProcessCluster};
use ferry_client::{Error, Txn};
use futures_util::StreamExt;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkill_of_the_leader_three_times_under_sdk_load_loses_and_repeats_nothing() {
    let mut cluster = ProcessCluster::start(3);
    let client = connect(cluster.endpoints()).await;
    kill_the_leader_three_times(&mut cluster, &client).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkill_of_the_leader_with_mutual_tls_and_auth_loses_and_repeats_nothing() {
    let pki_dir = tempfile::tempdir().unwrap();
    let pki = Pki::create(pki_dir.path());
    let mut cluster = ProcessCluster::start_with(3, |_| {
        let mut flags = pki.serve_flags();
        flags.extend(["--auth-token-ttl-secs".into(), "3".into()]);
        flags
    });
    let admin = secure::connect(cluster.endpoints(), secure::options(pki.tls(), None)).await;
    secure::enable_auth(&admin).await;
    // Tokens that expire during the run: the SDK renews them, on every
    // member, across the failovers.
    let client = secure::connect(
        cluster.endpoints(),
        secure::options(pki.tls(), Some(("root", secure::ROOT_PASSWORD))),
    )
    .await;
    kill_the_leader_three_times(&mut cluster, &client).await;
    // And nothing gets in without a token.
    let anonymous =
        ferry_client::Client::connect_with(cluster.endpoints(), secure::options(pki.tls(), None))
            .await;
    assert!(
        matches!(anonymous, Err(Error::Unauthenticated(_))),
        "{:?}",
        anonymous.err()
    );
}

/// Four writers and a watcher through `client`; the leader is SIGKILLed
/// and restarted three times; every acknowledged write is on every member
/// once, and the watch saw each once, in order.
async fn kill_the_leader_three_times(cluster: &mut ProcessCluster, client: &ferry_client::Client) {
    // A watcher that must see every acknowledged write once, across the failover.
    let mut watch = client.watch_prefix("load/", 0);
    tokio::time::sleep(Duration::from_millis(200)).await;

    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..4)
        .map(|w| {
            let (client, stop) = (client.clone(), stop.clone());
            tokio::spawn(async move {
                let mut acked = Vec::new();
                let mut i = 0;
                while !stop.load(Ordering::Relaxed) {
                    let key = format!("load/{w}/{i:05}");
                    let revision = client
                        .put(key.clone(), "v")
                        .await
                        .expect("write after retries");
                    acked.push((key, revision));
                    i += 1;
                }
                acked
            })
        })
        .collect();
    // The leader is killed three times; each time the killed node restarts.
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(700)).await;
        let leader = client.status().await.unwrap().leader_id;
        cluster.sigkill(leader);
        tokio::time::sleep(Duration::from_millis(1500)).await;
        cluster.spawn(leader, false, &[]);
    }
    tokio::time::sleep(Duration::from_millis(700)).await;
    stop.store(true, Ordering::Relaxed);
    let mut acked = Vec::new();
    for writer in writers {
        acked.extend(writer.await.unwrap());
    }
    assert!(acked.len() > 50, "only {} writes", acked.len());

    // Every node, the restarted one included, holds every write once.
    let last = acked.iter().map(|(_, r)| *r).max().unwrap();
    for endpoint in cluster.endpoints() {
        // Read from that member itself, once it has applied everything.
        let deadline = Instant::now() + Duration::from_secs(30);
        let kvs = loop {
            let (kvs, applied) = common::stale_prefix_at(client, &endpoint, b"load/").await;
            if applied >= last {
                break kvs;
            }
            assert!(Instant::now() < deadline, "{endpoint} did not catch up");
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let found: BTreeMap<Vec<u8>, (u64, u64)> = kvs
            .into_iter()
            .map(|kv| (kv.key, (kv.mod_revision, kv.version)))
            .collect();
        for (key, revision) in &acked {
            let (mod_revision, version) = found
                .get(key.as_bytes())
                .unwrap_or_else(|| panic!("{endpoint} lost acknowledged write {key}"));
            assert_eq!(
                (*mod_revision, *version),
                (*revision, 1),
                "{key} on {endpoint}"
            );
        }
        assert_eq!(
            found.len(),
            acked.len(),
            "{endpoint} holds writes nobody acknowledged"
        );
    }

    // The watch delivered each write once, in revision order.
    let mut seen = BTreeMap::new();
    let mut previous = 0;
    let deadline = Instant::now() + Duration::from_secs(20);
    while seen.len() < acked.len() {
        let next = tokio::time::timeout(Duration::from_secs(10), watch.next()).await;
        let event = next
            .expect("watch stalled")
            .expect("watch ended")
            .expect("watch error");
        let kv = event.kv.unwrap();
        assert!(
            kv.mod_revision > previous,
            "watch out of order or repeated: {} at revision {} after revision {previous} ({} events seen)",
            String::from_utf8_lossy(&kv.key),
            kv.mod_revision,
            seen.len()
        );
        previous = kv.mod_revision;
        seen.insert(kv.key, kv.mod_revision);
        assert!(Instant::now() < deadline);
    }
    for (key, revision) in &acked {
        assert_eq!(
            seen.get(key.as_bytes()),
            Some(revision),
            "watch missed {key}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn membership_through_the_cli_under_load() {
    let mut cluster = ProcessCluster::start(3);
    let client = connect(cluster.endpoints()).await;
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (client, stop) = (client.clone(), stop.clone());
        tokio::spawn(async move {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                client.put(format!("m/{n:05}"), "x").await.expect("write");
                n += 1;
            }
            n
        })
    };
    cluster.new_node(4);
    cluster.spawn(4, false, &[]);
    let endpoints = cluster.endpoints().join(",");
    let (raft4, client4) = (cluster.raft_addr(4), cluster.client_addr(4));
    // Runs the CLI against the cluster (endpoints appended).
    let run = |args: Vec<String>| {
        let endpoints = endpoints.clone();
        tokio::task::spawn_blocking(move || {
            let mut args: Vec<&str> = args.iter().map(String::as_str).collect();
            args.extend(["--endpoints", &endpoints]);
            ferry(&args)
        })
    };
    let (code, out, err) = run(vec![
        "cluster".into(),
        "add".into(),
        "--id".into(),
        "4".into(),
        "--raft-addr".into(),
        raft4,
        "--client-addr".into(),
        client4,
    ])
    .await
    .unwrap();
    assert_eq!(code, 0, "add: {out}{err}");
    assert!(out.contains("learner"), "{out}");
    let (code, out, err) = run(vec!["cluster".into(), "promote".into(), "4".into()])
        .await
        .unwrap();
    assert_eq!(code, 0, "promote: {out}{err}");
    let leader = client.status().await.unwrap().leader_id;
    let old = (1..=3).find(|id| *id != leader).unwrap();
    let (code, out, err) = run(vec!["cluster".into(), "remove".into(), old.to_string()])
        .await
        .unwrap();
    assert_eq!(code, 0, "remove: {out}{err}");
    let (code, out, _) = run(vec!["cluster".into(), "status".into(), "--json".into()])
        .await
        .unwrap();
    assert_eq!(code, 0);
    let status: serde_json::Value = serde_json::from_str(&out).unwrap();
    let mut ids: Vec<u64> = status["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_u64().unwrap())
        .collect();
    ids.sort();
    let mut expected: Vec<u64> = [1, 2, 3, 4].into_iter().filter(|id| *id != old).collect();
    expected.sort();
    assert_eq!(ids, expected);
    stop.store(true, Ordering::Relaxed);
    let writes = writer.await.unwrap();
    assert!(writes > 10);

    // The CLI's key commands and exit codes.
    let (code, out, _) = run(vec![
        "kv".into(),
        "put".into(),
        "cli".into(),
        "hello".into(),
    ])
    .await
    .unwrap();
    assert_eq!(code, 0, "{out}");
    let (code, out, _) = run(vec!["kv".into(), "get".into(), "cli".into()])
        .await
        .unwrap();
    assert_eq!((code, out.trim()), (0, "hello"));
    let (code, _, _) = run(vec!["kv".into(), "get".into(), "missing".into()])
        .await
        .unwrap();
    assert_eq!(code, 3);
    let (code, out, _) = run(vec![
        "kv".into(),
        "scan".into(),
        "--prefix".into(),
        "m/".into(),
        "--count".into(),
    ])
    .await
    .unwrap();
    assert_eq!(code, 0);
    assert_eq!(out.trim().parse::<u64>().unwrap(), writes);
    let (code, out, _) = run(vec![
        "kv".into(),
        "txn".into(),
        "--if-absent".into(),
        "cli".into(),
        "--then-put".into(),
        "cli=other".into(),
        "--else-get".into(),
        "cli".into(),
        "--json".into(),
    ])
    .await
    .unwrap();
    assert_eq!(code, 0);
    let txn: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(txn["succeeded"], false);
    assert_eq!(txn["gets"][0]["value"], "hello");

    // A snapshot downloads and verifies.
    let target = cluster.root.path().join("downloaded");
    let (code, out, err) = run(vec![
        "snapshot".into(),
        "download".into(),
        target.display().to_string(),
    ])
    .await
    .unwrap();
    assert_eq!(code, 0, "{out}{err}");
    assert!(target.join("CHECKPOINT").exists());

    // ... and restores offline as a new single-node cluster with the data.
    let data = cluster.root.path().join("restored");
    cluster.nodes.push(common::Proc {
        id: 7,
        client: common::free_addr(),
        raft: common::free_addr(),
        metrics: common::free_addr(),
        dir: data.clone(),
        child: None,
    });
    let (code, out, err) = run(vec![
        "snapshot".into(),
        "restore".into(),
        "--from".into(),
        target.display().to_string(),
        "--data-dir".into(),
        data.display().to_string(),
        "--id".into(),
        "7".into(),
        "--raft-addr".into(),
        cluster.raft_addr(7),
        "--client-addr".into(),
        cluster.client_addr(7),
    ])
    .await
    .unwrap();
    assert_eq!(code, 0, "{out}{err}");
    cluster.spawn(7, false, &[]);
    let restored = connect(vec![cluster.client_addr(7)]).await;
    assert_eq!(restored.get("cli").await.unwrap().unwrap().value, b"hello");

    // A learner added at another member's Raft address: that member
    // refuses what is meant for the learner, logs it, and `cluster
    // status` names the mistake.
    let (code, out, err) = run(vec![
        "cluster".into(),
        "add".into(),
        "--id".into(),
        "9".into(),
        "--raft-addr".into(),
        cluster.raft_addr(4),
        "--client-addr".into(),
        common::free_addr(),
        "--wait=false".into(),
    ])
    .await
    .unwrap();
    assert_eq!(code, 0, "add: {out}{err}");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (code, out, err) = run(vec!["cluster".into(), "status".into()]).await.unwrap();
        assert_eq!(code, 0, "{out}{err}");
        if out.contains("node 4 refused") && out.contains("wrong Raft address for node 9") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "status never named the mistake: {out}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        cluster.log(4).contains("misaddressed peer request"),
        "{}",
        cluster.log(4)
    );
    let (code, out, err) = run(vec!["cluster".into(), "remove".into(), "9".into()])
        .await
        .unwrap();
    assert_eq!(code, 0, "remove: {out}{err}");

    // SIGTERM: a graceful stop exits 0.
    assert_eq!(cluster.sigterm(leader), Some(0), "{}", cluster.log(leader));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn limits_and_bad_requests_get_their_documented_errors() {
    let cluster = ProcessCluster::start(1);
    let client = connect(cluster.endpoints()).await;
    let invalid = |result: Result<u64, Error>, limit: &str| match result {
        Err(Error::InvalidArgument(message)) => assert!(message.contains(limit), "{message}"),
        other => panic!("expected INVALID_ARGUMENT naming {limit}, got {other:?}"),
    };
    invalid(
        client.put("big", vec![0u8; (1 << 20) + 1]).await,
        "max_value_bytes",
    );
    invalid(client.put(vec![b'k'; 5000], "v").await, "max_key_bytes");
    invalid(client.put("", "v").await, "empty");
    let mut txn = Txn::new();
    for i in 0..200 {
        txn = txn.then_put(format!("t{i}"), "v");
    }
    match client.txn(txn).await {
        Err(Error::InvalidArgument(message)) => {
            assert!(message.contains("max_txn_ops"), "{message}")
        }
        other => panic!("expected max_txn_ops, got {other:?}"),
    }
    match client.range("a", "z", 20_000).await {
        Err(Error::InvalidArgument(message)) => {
            assert!(message.contains("max_range_page"), "{message}")
        }
        other => panic!("expected max_range_page, got {other:?}"),
    }
    // Nothing of the refused requests was applied; the server still serves.
    assert_eq!(client.get("big").await.unwrap(), None);
    assert_eq!(client.get("t0").await.unwrap(), None);
    let revision = client.put("ok", "v").await.unwrap();
    assert_eq!(
        client.get("ok").await.unwrap().unwrap().mod_revision,
        revision
    );

    // Standard gRPC health.
    let channel = common::channel(&cluster.client_addr(1)).await;
    let health = tonic_health::pb::health_client::HealthClient::new(channel)
        .check(tonic_health::pb::HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        health.status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );

    // Metrics and probes over HTTP.
    let metrics = common::http_get(&cluster.metrics_addr(1), "/metrics").await;
    for name in [
        "ferry_raft_term",
        "ferry_raft_applied_index",
        "ferry_requests_total",
        "ferry_log_fsyncs",
    ] {
        assert!(
            metrics.contains(name),
            "{name} missing from /metrics:\n{metrics}"
        );
    }
    for line in [
        "\nferry_apply_version ",
        "ferry_apply_version_implemented 2",
    ] {
        assert!(
            metrics.contains(line),
            "{line} missing from /metrics:\n{metrics}"
        );
    }
    assert!(common::http_get(&cluster.metrics_addr(1), "/readyz")
        .await
        .starts_with("HTTP/1.1 200"));
}

#[test]
fn the_demo_runs_to_completion() {
    let (code, out, err) = ferry(&["demo", "--exit", "--writers", "4", "--writes", "50"]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.contains("0 lost, 0 applied twice"), "{out}");
    assert!(out.contains("caught up"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigterm_of_a_leader_whose_peers_froze_exits_within_its_bound() {
    let mut cluster = ProcessCluster::start(3);
    let client = connect(cluster.endpoints()).await;
    client.put("k", "v").await.unwrap();
    // The SDK keeps a batch stream and a watch open to the leader, so the
    // stop has client connections to close too.
    let _watch = client.watch_key("k", 0);
    let leader = client.status().await.unwrap().leader_id;
    // Frozen just before the stop, the followers still count as in
    // contact: the leader tries to hand over to one that never answers,
    // and its Raft replication waits on peers that hold their connections
    // open.
    let followers: Vec<u64> = (1..=3).filter(|id| *id != leader).collect();
    for follower in &followers {
        cluster.signal(*follower, libc::SIGSTOP);
    }
    let started = Instant::now();
    let code = cluster.sigterm(leader);
    let took = started.elapsed();
    for follower in &followers {
        cluster.signal(*follower, libc::SIGCONT);
    }
    eprintln!("the stop took {took:?}");
    assert_eq!(code, Some(0), "{}", cluster.log(leader));
    // Two seconds of hand-over plus at most three for Raft and one for the
    // peer service; the rest is slack for a loaded machine.
    assert!(
        took < Duration::from_secs(12),
        "the stop took {took:?}:\n{}",
        cluster.log(leader)
    );
}

/// A member that stops answering without closing its connections (power
/// lost, cut off, frozen here) must not hold a watch on it forever: the
/// SDK finds the connection dead and resumes the watch on another member.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_on_a_member_that_goes_silent_resumes_on_another() {
    let cluster = ProcessCluster::start(3);
    let client = connect(cluster.endpoints()).await;
    let revision = client.put("k", "0").await.unwrap();
    let leader = client.status().await.unwrap().leader_id;
    // The SDK watches on the leader.
    let mut watch = client.watch_key("k", revision);
    let first = tokio::time::timeout(Duration::from_secs(20), watch.next())
        .await
        .expect("the first event")
        .unwrap()
        .unwrap();
    assert_eq!(first.kv.unwrap().value, b"0");
    cluster.signal(leader, libc::SIGSTOP);
    let written = async {
        loop {
            if client.put("k", "1").await.is_ok() {
                return;
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(60), written)
        .await
        .expect("the two others took the write");
    let next = tokio::time::timeout(Duration::from_secs(40), watch.next()).await;
    cluster.signal(leader, libc::SIGCONT);
    let next = next
        .expect("the watch never heard of the write: it waits on the silent member")
        .unwrap()
        .unwrap();
    assert_eq!(next.kv.unwrap().value, b"1");
}
