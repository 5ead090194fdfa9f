//! A steady write load elects no one: prompt elections after a leader's
//! death (`replication/src/election.rs`) must not come with elections
//! while the leader lives. Three `ferry serve` processes with default
//! settings take writes from 16 SDK writers; every member's Raft term
//! (`ferry_raft_term` on `/metrics`) is the same after the load as before.
//!
//! A file of its own, so that no other test's cluster shares the CPUs.
//! The load runs the minute issue 21 asks for.

mod common;

use common::{connect, metric, ProcessCluster};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const WRITERS: u64 = 16;
const LOAD: Duration = Duration::from_secs(60);

/// Every member's term, once all three report the same one.
async fn agreed_term(cluster: &ProcessCluster) -> f64 {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut terms = Vec::new();
        for id in 1..=3 {
            terms.push(metric(&cluster.metrics_addr(id), "ferry_raft_term").await);
        }
        if terms[0] > 0.0 && terms.iter().all(|t| *t == terms[0]) {
            return terms[0];
        }
        assert!(
            Instant::now() < deadline,
            "the members disagree on the term: {terms:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_minute_of_steady_writes_elects_no_one() {
    let cluster = ProcessCluster::start(3);
    let client = connect(cluster.endpoints()).await;
    // Every member has joined as a voter.
    let deadline = Instant::now() + Duration::from_secs(30);
    let voters = || async {
        client
            .status()
            .await
            .map_or(0, |s| s.members.iter().filter(|m| m.voter).count())
    };
    while voters().await < 3 {
        assert!(Instant::now() < deadline, "the cluster did not form");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    client.put("warm-up", "1").await.unwrap();
    let before = agreed_term(&cluster).await;

    let stop = Arc::new(AtomicBool::new(false));
    let written = Arc::new(AtomicU64::new(0));
    let writers: Vec<_> = (0..WRITERS)
        .map(|writer| {
            let (client, stop, written) = (client.clone(), stop.clone(), written.clone());
            tokio::spawn(async move {
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    client
                        .put(format!("steady/{writer}/{i}"), vec![7u8; 256])
                        .await
                        .expect("a write under steady load");
                    written.fetch_add(1, Ordering::Relaxed);
                    i += 1;
                }
            })
        })
        .collect();
    tokio::time::sleep(LOAD).await;
    stop.store(true, Ordering::Relaxed);
    for writer in writers {
        writer.await.unwrap();
    }
    let written = written.load(Ordering::Relaxed);
    assert!(written > 1000, "only {written} writes in {LOAD:?}");

    let after = agreed_term(&cluster).await;
    assert_eq!(
        after, before,
        "{written} writes in {LOAD:?} moved the term from {before} to {after}: an election under a live leader"
    );
}
