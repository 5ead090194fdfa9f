//! Watches over the durable history, with real processes: a watch opened
//! before every member is SIGKILLed and restarted resumes without a gap or
//! a repeat; a watch from revision 1 afterwards replays everything; after
//! a compaction a watch below it ends naming the compacted revision.

mod common;

use common::{connect, ProcessCluster};
use ferry_client::{Error, WatchStream};
use futures_util::StreamExt;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Reads `watch` until every key of `acked` was seen; asserts each event
/// once, in revision order, at the acknowledged revision.
async fn expect_each_once(watch: &mut WatchStream, acked: &BTreeMap<String, u64>, what: &str) {
    let mut seen = BTreeMap::new();
    let mut previous = 0;
    while seen.len() < acked.len() {
        let event = tokio::time::timeout(Duration::from_secs(20), watch.next())
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "{what}: stalled after {} of {} events",
                    seen.len(),
                    acked.len()
                )
            })
            .unwrap_or_else(|| panic!("{what}: ended"))
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        let kv = event.kv.unwrap();
        assert!(
            kv.mod_revision > previous,
            "{what}: out of order or repeated at {}",
            kv.mod_revision
        );
        previous = kv.mod_revision;
        let key = String::from_utf8(kv.key).unwrap();
        assert!(
            seen.insert(key.clone(), kv.mod_revision).is_none(),
            "{what}: {key} twice"
        );
    }
    for (key, revision) in acked {
        assert_eq!(seen.get(key), Some(revision), "{what}: {key}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_watch_across_a_sigkill_of_every_member_sees_each_write_once() {
    let mut cluster = ProcessCluster::start(3);
    let client = connect(cluster.endpoints()).await;
    let mut watch = client.watch_prefix("load/", 0);
    // The watch's first message names its start revision; past it, every
    // write under the prefix must arrive.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..4)
        .map(|w| {
            let (client, stop) = (client.clone(), stop.clone());
            tokio::spawn(async move {
                let mut acked = BTreeMap::new();
                let mut i = 0;
                while !stop.load(Ordering::Relaxed) {
                    let key = format!("load/{w}/{i:05}");
                    let revision = client
                        .put(key.clone(), "v")
                        .await
                        .expect("write after retries");
                    acked.insert(key, revision);
                    i += 1;
                }
                acked
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(700)).await;
    // Every member at once: no member keeps anything in memory.
    for id in 1..=3 {
        cluster.sigkill(id);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    for id in 1..=3 {
        cluster.spawn(id, false, &[]);
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stop.store(true, Ordering::Relaxed);
    let mut acked = BTreeMap::new();
    for writer in writers {
        acked.extend(writer.await.unwrap());
    }
    assert!(acked.len() > 50, "only {} writes", acked.len());
    expect_each_once(&mut watch, &acked, "the watch opened before").await;

    // From revision 1, after every member restarted: everything, once.
    let mut replay = client.watch_prefix("load/", 1);
    expect_each_once(&mut replay, &acked, "a watch from revision 1").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_watch_below_a_compaction_ends_naming_the_compacted_revision() {
    let mut cluster = ProcessCluster::start(1);
    let client = connect(cluster.endpoints()).await;
    let mut written = BTreeMap::new();
    for i in 0..5 {
        let key = format!("w/{i}");
        written.insert(key.clone(), client.put(key, "v").await.unwrap());
    }
    cluster.sigkill(1);
    cluster.spawn(1, false, &[]);
    let client = connect(cluster.endpoints()).await;
    written.insert("w/after".into(), client.put("w/after", "v").await.unwrap());
    let mut watch = client.watch_prefix("w/", 1);
    expect_each_once(&mut watch, &written, "after a restart").await;

    let revisions: Vec<u64> = written.values().copied().collect();
    let (below, cut) = (revisions[2], revisions[3]);
    assert_eq!(client.compact(cut).await.unwrap(), cut);
    let mut watch = client.watch_prefix("w/", below);
    let first = tokio::time::timeout(Duration::from_secs(20), watch.next())
        .await
        .expect("the watch neither delivered nor ended")
        .expect("the stream ended without an item");
    match first {
        Err(Error::Compacted {
            requested,
            compacted,
        }) => assert_eq!((requested, compacted), (below, cut)),
        other => panic!("expected Compacted, got {other:?}"),
    }
    // Reads below it fail the same way; at it they work.
    assert!(matches!(
        client.get_at("w/0", below).await,
        Err(Error::Compacted { compacted, .. }) if compacted == cut
    ));
    assert!(client.get_at("w/0", cut).await.unwrap().is_some());
}

/// A watch the server refuses as invalid (an empty key) ends with that
/// error: every member would refuse it again, so retrying would only hide
/// it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_refused_as_invalid_ends_with_the_refusal() {
    let dir = tempfile::tempdir().unwrap();
    let (server, client) =
        common::single_node(dir.path(), ferry_server::config::Limits::default()).await;
    let mut watch = client.watch_key("", 0);
    let first = tokio::time::timeout(Duration::from_secs(10), watch.next())
        .await
        .expect("the refusal within 10 s");
    match first {
        Some(Err(Error::Server { code, message })) => {
            assert_eq!(code, tonic::Code::InvalidArgument);
            assert!(message.contains("empty"), "{message}");
        }
        other => panic!("not the refusal: {other:?}"),
    }
    server.shutdown().await.unwrap();
}
