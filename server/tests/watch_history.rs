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

/// A revision far larger than a watch message (a transaction deleting
/// thousands of keys, with their previous values) reaches an SDK watch in
/// parts; the server is SIGKILLed while the watch is inside it, and the
/// resumed watch skips the part it already has: each change once, in
/// order, with its previous value.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_watch_resumed_inside_a_split_revision_repeats_and_skips_nothing() {
    const KEYS: usize = 8000;
    let value = |n: usize| format!("{n:05}").repeat(200).into_bytes();
    let mut cluster =
        ProcessCluster::start_with(1, |_| vec!["--max-txn-ops".into(), KEYS.to_string()]);
    let client = connect(cluster.endpoints()).await;
    let key = |n: usize| format!("big/{n:05}");
    for chunk in (0..KEYS).collect::<Vec<_>>().chunks(1000) {
        let txn = chunk.iter().fold(ferry_client::Txn::new(), |txn, &n| {
            txn.then_put(key(n), value(n))
        });
        client.txn(txn).await.unwrap();
    }
    let from = client.put("before", "v").await.unwrap() + 1;
    let deleted = client
        .txn((0..KEYS).fold(ferry_client::Txn::new(), |txn, n| txn.then_delete(key(n))))
        .await
        .unwrap()
        .revision;
    let request = ferry_client::pb::WatchRequest {
        prefix: b"big/".to_vec(),
        start_revision: from,
        prev_kv: true,
        ..Default::default()
    };
    // On the wire, asked with split_revisions as the SDK does: the first
    // part of the revision, its header at the revision before.
    let channel = common::channel(&cluster.client_addr(1)).await;
    let mut raw = ferry_client::pb::watch_client::WatchClient::new(channel)
        .max_decoding_message_size(64 << 20)
        .watch(ferry_client::pb::WatchRequest {
            split_revisions: true,
            ..request.clone()
        })
        .await
        .unwrap()
        .into_inner();
    let first_part = loop {
        let message = raw.message().await.unwrap().expect("a message");
        if !message.events.is_empty() {
            break message;
        }
    };
    assert!(first_part.events.len() < KEYS, "the revision came whole");
    assert_eq!(first_part.header.unwrap().revision, deleted - 1);
    drop(raw);

    let mut watch = client.watch(request);
    let mut seen = vec![next_event(&mut watch).await];
    // The stream fills its buffers and stops reading, inside the revision
    // (it comes in parts, as above): the resume starts inside it.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(watch.revision() < deleted);
    cluster.sigkill(1);
    cluster.spawn(1, false, &[]);
    while seen.len() < KEYS {
        seen.push(next_event(&mut watch).await);
    }
    for (n, event) in seen.iter().enumerate() {
        let kv = event.kv.as_ref().unwrap();
        assert_eq!(
            (kv.key.as_slice(), kv.mod_revision),
            (key(n).as_bytes(), deleted),
            "event {n}"
        );
        assert_eq!(event.prev_kv.as_ref().unwrap().value, value(n), "event {n}");
    }
    // Nothing after it: the next event is a later write.
    let after = client.put("big/after", "v").await.unwrap();
    let event = next_event(&mut watch).await;
    assert_eq!(event.kv.unwrap().mod_revision, after);
}

async fn next_event(watch: &mut WatchStream) -> ferry_client::Event {
    tokio::time::timeout(Duration::from_secs(30), watch.next())
        .await
        .expect("the next event within 30 s")
        .expect("the watch ended")
        .expect("the watch failed")
}

/// etcd's `fragment`: a revision far larger than a message goes to a watch
/// that asked for it in parts, every part but the last marked `fragment`,
/// with no other answer of the stream between them (etcd's clients join
/// only consecutive parts); a watch on the same stream that did not ask
/// gets the revision whole, in one message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_etcd_watch_with_fragment_gets_a_large_revision_in_consecutive_parts() {
    use ferry_server::etcd::pb::etcdserverpb::{
        watch_request::RequestUnion, WatchCreateRequest, WatchRequest, WatchResponse,
    };
    use prost::Message;
    const KEYS: usize = 2000;
    let value = |n: usize| format!("{n:04}").repeat(256).into_bytes();
    let key = |n: usize| format!("big/{n:04}");
    let dir = tempfile::tempdir().unwrap();
    let limits = ferry_server::config::Limits {
        max_txn_ops: KEYS,
        ..Default::default()
    };
    let (server, client) = common::single_node(dir.path(), limits).await;
    for chunk in (0..KEYS).collect::<Vec<_>>().chunks(500) {
        let txn = chunk.iter().fold(ferry_client::Txn::new(), |txn, &n| {
            txn.then_put(key(n), value(n))
        });
        client.txn(txn).await.unwrap();
    }
    let deleted = client
        .txn((0..KEYS).fold(ferry_client::Txn::new(), |txn, n| txn.then_delete(key(n))))
        .await
        .unwrap()
        .revision;

    let create = |watch_id: i64, fragment: bool| WatchRequest {
        request_union: Some(RequestUnion::CreateRequest(WatchCreateRequest {
            key: b"big/".to_vec(),
            range_end: b"big0".to_vec(),
            start_revision: deleted as i64,
            prev_kv: true,
            fragment,
            watch_id,
            ..WatchCreateRequest::default()
        })),
    };
    // Kept open: a stream whose client stops sending ends.
    let requests = futures_util::stream::iter([create(1, true), create(2, false)])
        .chain(futures_util::stream::pending());
    let channel = common::channel(&server.client_addr.to_string()).await;
    let mut grpc = tonic::client::Grpc::new(channel).max_decoding_message_size(64 << 20);
    grpc.ready().await.unwrap();
    let path = tonic::codegen::http::uri::PathAndQuery::from_static("/etcdserverpb.Watch/Watch");
    let mut answers = grpc
        .streaming::<_, WatchRequest, WatchResponse, _>(
            tonic::Request::new(requests),
            path,
            tonic_prost::ProstCodec::default(),
        )
        .await
        .unwrap()
        .into_inner();

    let mut events: [Vec<_>; 3] = Default::default();
    let mut parts = 0;
    // The watch whose fragmented answer is under way.
    let mut open = None;
    while events[1].len() < KEYS || events[2].len() < KEYS {
        let answer = tokio::time::timeout(Duration::from_secs(20), answers.message())
            .await
            .expect("an answer within 20 s")
            .unwrap()
            .expect("the stream goes on");
        assert!(!answer.canceled, "{}", answer.cancel_reason);
        if let Some(watch) = open {
            assert_eq!(answer.watch_id, watch, "another answer between parts");
        }
        open = answer.fragment.then_some(answer.watch_id);
        if answer.events.is_empty() {
            continue;
        }
        assert_eq!(answer.header.unwrap().revision, deleted as i64);
        match answer.watch_id {
            1 => {
                parts += 1;
                assert!(
                    answer.encoded_len() < 1 << 20,
                    "{} bytes",
                    answer.encoded_len()
                );
            }
            2 => {
                assert!(!answer.fragment);
                assert_eq!(answer.events.len(), KEYS, "the revision whole");
            }
            other => panic!("watch {other}"),
        }
        events[answer.watch_id as usize].extend(answer.events);
    }
    assert!(parts >= 4, "{parts} parts");
    assert_eq!(open, None, "the last part ends the answer");
    for watch in [1, 2] {
        assert_eq!(events[watch].len(), KEYS);
        for (n, event) in events[watch].iter().enumerate() {
            let kv = event.kv.as_ref().unwrap();
            assert_eq!(kv.key, key(n).as_bytes(), "watch {watch}, event {n}");
            assert_eq!(event.prev_kv.as_ref().unwrap().value, value(n));
        }
    }
    drop(answers);
    server.shutdown().await.unwrap();
}
