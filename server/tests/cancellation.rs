//! The SDK is cancel-safe: a call's future dropped at any await point
//! releases what it held, costs later calls nothing, and a dropped write
//! applies at most once; deadlines cover every wait; a dropped client or
//! watch frees its streams on the server.

mod common;

use common::{connect, metric, single_node, ProcessCluster};
use ferry_client::pb;
use ferry_client::{Client, ClientOptions, Error, Txn};
use ferry_server::config::Limits;
use futures_util::{FutureExt, StreamExt};
use rand::Rng;
use std::collections::BTreeMap;
use std::future::Future;
use std::pin::pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tonic::{Request, Response, Status, Streaming};

/// Polls `future` up to `polls` times, yielding in between, then drops it
/// unless it finished: a `timeout` or `select!` giving up at that point.
async fn poll_then_drop<F: Future>(future: F, polls: usize) -> Option<F::Output> {
    let mut future = pin!(future);
    for _ in 0..polls {
        if let Some(output) = future.as_mut().now_or_never() {
            return Some(output);
        }
        tokio::task::yield_now().await;
    }
    None
}

/// Every key under `prefix`, read linearizably page by page.
async fn all_under(client: &Client, prefix: &str) -> BTreeMap<Vec<u8>, pb::KeyValue> {
    let mut found = BTreeMap::new();
    let mut page = client.prefix(prefix, 1000).await.unwrap();
    loop {
        for kv in page.kvs.drain(..) {
            found.insert(kv.key.clone(), kv);
        }
        match page.continuation.take() {
            Some(token) => page = client.range_after(prefix, token, 1000).await.unwrap(),
            None => return found,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_dropped_at_every_await_point_wedge_nothing_and_apply_at_most_once() {
    let dir = tempfile::tempdir().unwrap();
    let (server, client) = single_node(dir.path(), Limits::default()).await;

    // The probe of the issue: one put polled once (it has its number and
    // its call is queued), then dropped. On a loaded machine the thread
    // polling it can be preempted mid-poll long enough for the in-process
    // server to answer, and the put then finishes in that one poll: the
    // probe is tried again, and fails only if that happens every time.
    let mut probed = false;
    for _ in 0..10 {
        if poll_then_drop(client.put("dropped/probe", "x"), 1)
            .await
            .is_none()
        {
            probed = true;
            break;
        }
    }
    assert!(
        probed,
        "the put finished in one poll ten times; the probe tests nothing"
    );
    // Then every call kind dropped after 1, 2, … polls: each await point
    // of each call is left at least once.
    for polls in 1..40 {
        let key = format!("dropped/{polls}");
        poll_then_drop(client.put(key.clone(), "p"), polls).await;
        poll_then_drop(client.delete(format!("{key}/none")), polls).await;
        let txn = Txn::new().then_put(format!("{key}/txn"), "t");
        poll_then_drop(client.txn(txn), polls).await;
        poll_then_drop(client.get(key.clone()), polls).await;
        poll_then_drop(client.prefix("dropped/", 10), polls).await;
        poll_then_drop(client.stale().get(key), polls).await;
    }

    // 2 000 sequential writes on the same client all finish promptly
    // (before the fix, write 512 waited for ever behind the dropped one).
    let mut acked = BTreeMap::new();
    for i in 0..2000 {
        let key = format!("after/{i:04}");
        let revision = tokio::time::timeout(Duration::from_secs(10), client.put(key.clone(), "v"))
            .await
            .unwrap_or_else(|_| panic!("write {i} after the dropped ones hung"))
            .unwrap();
        acked.insert(key.into_bytes(), revision);
    }
    let after = all_under(&client, "after/").await;
    assert_eq!(after.len(), acked.len());
    for (key, revision) in &acked {
        assert_eq!(after[key].mod_revision, *revision);
    }
    // A dropped write applied at most once: no key written twice.
    for (key, kv) in all_under(&client, "dropped/").await {
        assert_eq!(kv.version, 1, "{key:?} was applied twice");
    }
    drop(client);
    server.shutdown().await.unwrap();
}

/// Once a withdrawal of a dropped call would have landed, `guard`'s key is
/// still the one it was granted with (`what` says otherwise).
async fn assert_still_held(
    client: &Client,
    guard: &ferry_client::LockGuard,
    what: impl FnOnce() -> String,
) {
    tokio::time::sleep(Duration::from_millis(20)).await;
    let held = client.get(guard.key().to_vec()).await.unwrap();
    assert_eq!(
        held.map(|kv| kv.create_revision),
        Some(guard.token()),
        "{}",
        what()
    );
}

/// A lock call dropped at any point, its join included, leaves no
/// contender behind, and a retry with the same lease right after a drop
/// holds the lock for real (the dropped call's withdrawal never deletes
/// the key the retry joined with).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lock_call_dropped_at_any_point_leaves_no_contender_behind() {
    let dir = tempfile::tempdir().unwrap();
    let (server, client) = single_node(dir.path(), Limits::default()).await;
    let other = connect(vec![server.client_addr.to_string()]).await;
    let ttl = Duration::from_secs(60);
    let (lease, other_lease) = (
        client.lease_grant(ttl).await.unwrap(),
        other.lease_grant(ttl).await.unwrap(),
    );
    let within = Duration::from_secs(10);
    for polls in 1..30 {
        poll_then_drop(client.lock("locks/retried", lease), polls).await;
        let guard = tokio::time::timeout(within, client.lock("locks/retried", lease))
            .await
            .expect("the retry got the lock")
            .unwrap();
        assert_still_held(&client, &guard, || {
            format!("the retry's key was deleted under it ({polls} polls)")
        })
        .await;
        client.unlock(&guard).await.unwrap();
    }
    // Dropped with no retry, the lease still alive: the next contender
    // gets the lock at once.
    for polls in 1..30 {
        poll_then_drop(client.lock("locks/dropped", lease), polls).await;
        let guard = tokio::time::timeout(within, other.lock("locks/dropped", other_lease))
            .await
            .unwrap_or_else(|_| panic!("a dropped call ({polls} polls) left its key behind"))
            .unwrap();
        other.unlock(&guard).await.unwrap();
    }
    drop((client, other));
    server.shutdown().await.unwrap();
}

/// A second lock call with the lease that holds the lock is refused: two
/// holders of one lock would be two holders, and the key is not the second
/// call's to withdraw, not even when the second call is dropped before
/// its join is answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_lock_call_with_the_holders_lease_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (server, client) = single_node(dir.path(), Limits::default()).await;
    let lease = client.lease_grant(Duration::from_secs(60)).await.unwrap();
    let guard = client.lock("locks/shared", lease).await.unwrap();
    let second = client.lock("locks/shared", lease).await;
    assert!(
        matches!(second, Err(Error::InvalidArgument(_))),
        "{second:?}"
    );
    let held = client.get(guard.key().to_vec()).await.unwrap();
    assert_eq!(held.map(|kv| kv.create_revision), Some(guard.token()));
    // Nor when the second call is another client's (another process
    // sharing the lease), which never saw the holder's join.
    let other = connect(vec![server.client_addr.to_string()]).await;
    for polls in 1..30 {
        for caller in [&client, &other] {
            poll_then_drop(caller.lock("locks/shared", lease), polls).await;
            assert_still_held(&client, &guard, || {
                format!("a dropped second call ({polls} polls) deleted the holder's key")
            })
            .await;
        }
    }
    drop(other);
    // Two calls with one lease at once: exactly one holds the lock, the
    // other is refused (by the read, or while the first call joins).
    let other = client.lease_grant(Duration::from_secs(60)).await.unwrap();
    for _ in 0..20 {
        let (a, b) = tokio::join!(
            client.lock("locks/joining", other),
            client.lock("locks/joining", other)
        );
        let held = match (a, b) {
            (Ok(held), Err(Error::InvalidArgument(_)))
            | (Err(Error::InvalidArgument(_)), Ok(held)) => held,
            other => panic!("not one holder and one refusal: {other:?}"),
        };
        client.unlock(&held).await.unwrap();
    }
    client.unlock(&guard).await.unwrap();
    drop(client);
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_for_a_place_counts_against_the_deadline() {
    let dir = tempfile::tempdir().unwrap();
    let (server, _) = single_node(dir.path(), Limits::default()).await;
    let endpoints = vec![server.client_addr.to_string()];
    let options = ClientOptions {
        call_timeout: Duration::from_millis(1500),
        max_in_flight_writes: 1,
        ..ClientOptions::default()
    };

    // A write polled once and then neither polled nor dropped holds the
    // only in-flight place: the next write fails at its deadline.
    let client = Client::connect_with(endpoints.clone(), options.clone())
        .await
        .unwrap();
    let mut held = Box::pin(client.put("held", "1"));
    assert!((&mut held).now_or_never().is_none());
    let started = Instant::now();
    let error = client.put("next", "1").await.unwrap_err();
    assert!(
        matches!(&error, Error::DeadlineExceeded { last, .. } if last.contains("max_in_flight_writes")),
        "{error}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    drop(held);
    client.put("next", "1").await.unwrap();

    // The same with the answer window: a held write keeps the oldest
    // number; 511 later ones finish; the 512th waits for room, until its
    // deadline.
    let client = Client::connect_with(
        endpoints,
        ClientOptions {
            max_in_flight_writes: 256,
            ..options
        },
    )
    .await
    .unwrap();
    let mut held = Box::pin(client.put("held", "2"));
    assert!((&mut held).now_or_never().is_none());
    for i in 0..511 {
        client.put(format!("w/{i}"), "v").await.unwrap();
    }
    let error = client.put("w/511", "v").await.unwrap_err();
    assert!(
        matches!(&error, Error::DeadlineExceeded { last, .. } if last.contains("answer window")),
        "{error}"
    );
    // Dropping the held write makes room at once.
    drop(held);
    client.put("w/511", "v").await.unwrap();
    drop(client);
    server.shutdown().await.unwrap();
}

/// A KV service whose calls never finish; it records the batch calls it
/// receives and the cancellations.
#[derive(Clone, Default)]
struct Silent {
    calls: Arc<Mutex<Vec<u64>>>,
    cancelled: Arc<Mutex<Vec<u64>>>,
}

type Never<T> = std::result::Result<Response<T>, Status>;

#[tonic::async_trait]
impl pb::kv_server::Kv for Silent {
    async fn get(&self, _: Request<pb::GetRequest>) -> Never<pb::GetResponse> {
        std::future::pending().await
    }
    async fn put(&self, _: Request<pb::PutRequest>) -> Never<pb::PutResponse> {
        std::future::pending().await
    }
    async fn delete(&self, _: Request<pb::DeleteRequest>) -> Never<pb::DeleteResponse> {
        std::future::pending().await
    }
    async fn range(&self, _: Request<pb::RangeRequest>) -> Never<pb::RangeResponse> {
        std::future::pending().await
    }
    async fn txn(&self, _: Request<pb::TxnRequest>) -> Never<pb::TxnResponse> {
        std::future::pending().await
    }

    type BatchStream = futures_util::stream::Pending<Result<pb::BatchResponse, Status>>;

    async fn batch(
        &self,
        request: Request<Streaming<pb::BatchRequest>>,
    ) -> Never<Self::BatchStream> {
        let mut calls = request.into_inner();
        let service = self.clone();
        tokio::spawn(async move {
            while let Ok(Some(message)) = calls.message().await {
                let ids = message.calls.iter().map(|c| c.id);
                service.calls.lock().unwrap().extend(ids);
                service.cancelled.lock().unwrap().extend(message.cancel);
            }
        });
        Ok(Response::new(futures_util::stream::pending()))
    }
}

async fn eventually(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !done() {
        assert!(Instant::now() < deadline, "{what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_batched_call_is_cancelled_on_the_server() {
    let service = Silent::default();
    let (addr, stop, server) = common::fake::serve(service.clone()).await;
    let client = connect(vec![addr]).await;
    let put = tokio::spawn({
        let client = client.clone();
        async move { client.put("k", "v").await }
    });
    eventually("the call reached the server", || {
        !service.calls.lock().unwrap().is_empty()
    })
    .await;
    let id = service.calls.lock().unwrap()[0];
    put.abort();
    let _ = put.await;
    eventually("the server was told of the cancellation", || {
        service.cancelled.lock().unwrap().contains(&id)
    })
    .await;
    drop(client);
    stop.send(()).unwrap();
    server.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_client_frees_its_watch_and_batch_streams_on_the_server() {
    let dir = tempfile::tempdir().unwrap();
    let (server, client) = single_node(dir.path(), Limits::default()).await;
    let metrics = server.metrics_addr.unwrap().to_string();
    let mut watch = client.watch_prefix("busy/", 0);
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..16)
        .map(|w| {
            let (client, stop) = (client.clone(), stop.clone());
            tokio::spawn(async move {
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let _ = client.put(format!("busy/{w}/{i}"), "v").await;
                    i += 1;
                }
            })
        })
        .collect();
    // The watch is open and sees the load; the batch stream carries it.
    tokio::time::timeout(Duration::from_secs(20), watch.next())
        .await
        .expect("the watch saw no write")
        .unwrap()
        .unwrap();
    let watch_streams = r#"ferry_open_streams{kind="watch"}"#;
    let batch_streams = r#"ferry_open_streams{kind="batch"}"#;
    assert_eq!(metric(&metrics, watch_streams).await, 1.0);
    assert!(metric(&metrics, batch_streams).await >= 1.0);

    // Dropped mid-load: the writers' calls in flight, the watch, the client.
    for writer in &writers {
        writer.abort();
    }
    for writer in writers {
        let _ = writer.await;
    }
    drop((watch, client));
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let open = (
            metric(&metrics, watch_streams).await,
            metric(&metrics, batch_streams).await,
        );
        if open == (0.0, 0.0) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "streams still open on the server (watch, batch): {open:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    server.shutdown().await.unwrap();
}

/// What one loader saw acknowledged: key → revision.
type Acked = BTreeMap<Vec<u8>, u64>;

/// Runs random calls, each under a random timeout of 0–5 ms, until `stop`.
async fn load(client: Client, worker: usize, stop: Arc<AtomicBool>) -> Acked {
    let mut acked = Acked::new();
    let mut i = 0u64;
    while !stop.load(Ordering::Relaxed) {
        i += 1;
        let (kind, micros) = {
            let mut rng = rand::rng();
            (rng.random_range(0..6), rng.random_range(0..=5_000))
        };
        let limit = Duration::from_micros(micros);
        let key = format!("chaos/{worker}/{i:06}");
        match kind {
            0 => {
                if let Ok(Ok(revision)) =
                    tokio::time::timeout(limit, client.put(key.clone(), "p")).await
                {
                    acked.insert(key.into_bytes(), revision);
                }
            }
            1 => {
                let txn = Txn::new().then_put(key.clone(), "t");
                if let Ok(Ok(result)) = tokio::time::timeout(limit, client.txn(txn)).await {
                    acked.insert(key.into_bytes(), result.revision);
                }
            }
            2 => {
                let _ = tokio::time::timeout(limit, client.delete(format!("{key}/absent"))).await;
            }
            3 => {
                let _ = tokio::time::timeout(limit, client.get(key)).await;
            }
            4 => {
                let prefix = format!("chaos/{worker}/");
                let _ = tokio::time::timeout(limit, client.prefix(prefix, 20)).await;
            }
            _ => {
                let mut watch = client.watch_prefix(format!("chaos/{worker}/"), 0);
                let _ = tokio::time::timeout(limit, watch.next()).await;
            }
        }
        // Each worker also needs the odd call to finish, or nothing would
        // be acknowledged on a loaded machine.
        if i.is_multiple_of(50) {
            let key = format!("chaos/{worker}/{i:06}/whole");
            let revision = client
                .put(key.clone(), "w")
                .await
                .expect("an untimed write");
            acked.insert(key.into_bytes(), revision);
        }
    }
    acked
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn random_timeouts_on_every_call_kind_across_a_leader_sigkill_lose_and_repeat_nothing() {
    let mut cluster = ProcessCluster::start(3);
    let client = connect(cluster.endpoints()).await;
    let stop = Arc::new(AtomicBool::new(false));
    let loaders: Vec<_> = (0..8)
        .map(|w| tokio::spawn(load(client.clone(), w, stop.clone())))
        .collect();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let leader = client.status().await.unwrap().leader_id;
    cluster.sigkill(leader);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    cluster.spawn(leader, false, &[]);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stop.store(true, Ordering::Relaxed);
    let mut acked = Acked::new();
    for loader in loaders {
        acked.extend(loader.await.unwrap());
    }

    // The same client still completes 1 000 writes.
    for i in 0..1000 {
        let key = format!("chaos/after/{i:04}");
        let revision = tokio::time::timeout(Duration::from_secs(20), client.put(key.clone(), "a"))
            .await
            .unwrap_or_else(|_| panic!("write {i} after the chaos hung"))
            .unwrap_or_else(|e| panic!("write {i} after the chaos: {e}"));
        acked.insert(key.into_bytes(), revision);
    }

    // No acknowledged write lost, and no write (acknowledged, timed out or
    // dropped) applied twice: each key was meant to be written once.
    let found = all_under(&client, "chaos/").await;
    for (key, revision) in &acked {
        let kv = found
            .get(key)
            .unwrap_or_else(|| panic!("acknowledged write {key:?} lost"));
        assert_eq!(kv.mod_revision, *revision, "{key:?}");
    }
    for (key, kv) in &found {
        assert_eq!(kv.version, 1, "{key:?} was applied twice");
    }
    assert!(
        acked.len() > 1000,
        "only {} writes acknowledged",
        acked.len()
    );
}
