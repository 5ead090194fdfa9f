//! `KV.Batch`: calls answered by id, each as its unary RPC would be; the
//! per-stream limit; not-leader answers that the SDK follows; and the SDK's
//! fallback to unary calls on a server without `Batch`.

mod common;

use common::{connect, single_node, ProcessCluster};
use ferry_client::pb::{self, batch_call, batch_reply, kv_client::KvClient};
use ferry_client::{Client, Txn};
use ferry_server::config::{Limits, ServeConfig};
use ferry_server::server::Server;
use futures_util::StreamExt;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::mpsc;
use tokio_stream::wrappers::UnboundedReceiverStream;
use tonic::transport::Channel;
use tonic::{Code, Request, Response, Status, Streaming};

fn put(id: u64, key: &str, value: &str) -> pb::BatchCall {
    pb::BatchCall {
        timeout_ms: 0,
        id,
        request: Some(batch_call::Request::Put(pb::PutRequest {
            key: key.into(),
            value: value.into(),
            ..Default::default()
        })),
    }
}

fn get(id: u64, key: &str, consistency: pb::Consistency) -> pb::BatchCall {
    pb::BatchCall {
        id,
        request: Some(batch_call::Request::Get(pb::GetRequest {
            key: key.into(),
            consistency: consistency as i32,
        })),
        timeout_ms: 0,
    }
}

/// Opens a batch stream to `addr`: a sender of messages and the replies by id.
async fn open(
    addr: &str,
) -> (
    mpsc::UnboundedSender<pb::BatchRequest>,
    Streaming<pb::BatchResponse>,
) {
    let channel = Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let (sender, requests) = mpsc::unbounded_channel();
    let replies = KvClient::new(channel)
        .batch(UnboundedReceiverStream::new(requests))
        .await
        .unwrap()
        .into_inner();
    (sender, replies)
}

/// Reads replies until `count` calls are answered.
async fn replies(
    stream: &mut Streaming<pb::BatchResponse>,
    count: usize,
) -> HashMap<u64, batch_reply::Response> {
    let mut answered = HashMap::new();
    while answered.len() < count {
        let message = stream.message().await.unwrap().expect("stream open");
        for reply in message.replies {
            let previous = answered.insert(reply.id, reply.response.expect("a response"));
            assert!(previous.is_none(), "call {} answered twice", reply.id);
        }
    }
    answered
}

fn error(response: &batch_reply::Response) -> (Code, String) {
    match response {
        batch_reply::Response::Error(e) => (Code::from_i32(e.code), e.message.clone()),
        other => panic!("expected an error, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_are_answered_by_id_each_as_its_unary_rpc() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(ServeConfig {
        data_dir: dir.path().join("node"),
        client_addr: "127.0.0.1:0".into(),
        raft_addr: "127.0.0.1:0".into(),
        metrics_addr: String::new(),
        init: true,
        limits: Limits {
            max_batch_calls: 3,
            ..Limits::default()
        },
        ..ServeConfig::default()
    })
    .await
    .unwrap();
    let addr = server.client_addr.to_string();
    // Wait for the single node to lead.
    let client = connect(vec![addr.clone()]).await;
    client.put("ready", "1").await.unwrap();

    let (sender, mut stream) = open(&addr).await;
    // Five calls in one message; the limit takes the first three.
    sender
        .send(pb::BatchRequest {
            calls: vec![
                put(1, "a", "1"),
                put(2, "", "empty key"),
                pb::BatchCall {
                    timeout_ms: 0,
                    id: 3,
                    request: None,
                },
                put(4, "b", "2"),
                put(5, "c", "3"),
            ],
            ..Default::default()
        })
        .unwrap();
    let answered = replies(&mut stream, 5).await;
    let revision = match &answered[&1] {
        batch_reply::Response::Put(r) => r.header.as_ref().unwrap().revision,
        other => panic!("expected a put, got {other:?}"),
    };
    assert!(revision > 0);
    let (code, message) = error(&answered[&2]);
    assert_eq!(code, Code::InvalidArgument);
    assert!(message.contains("empty"), "{message}");
    assert_eq!(error(&answered[&3]).0, Code::InvalidArgument);
    for id in [4, 5] {
        let (code, message) = error(&answered[&id]);
        assert_eq!(code, Code::Unavailable);
        assert!(message.contains("max_batch_calls"), "{message}");
    }

    // The refused calls changed nothing; the stream goes on serving.
    sender
        .send(pb::BatchRequest {
            calls: vec![
                get(6, "a", pb::Consistency::Linearizable),
                pb::BatchCall {
                    timeout_ms: 0,
                    id: 7,
                    request: Some(batch_call::Request::Delete(pb::DeleteRequest {
                        key: b"ready".to_vec(),
                        ..Default::default()
                    })),
                },
                get(8, "b", pb::Consistency::Linearizable),
            ],
            ..Default::default()
        })
        .unwrap();
    let answered = replies(&mut stream, 3).await;
    match &answered[&6] {
        batch_reply::Response::Get(r) => {
            let kv = r.kv.as_ref().expect("a is present");
            assert_eq!(
                (kv.value.as_slice(), kv.mod_revision),
                (&b"1"[..], revision)
            );
        }
        other => panic!("expected a get, got {other:?}"),
    }
    match &answered[&7] {
        batch_reply::Response::Delete(r) => assert!(r.deleted),
        other => panic!("expected a delete, got {other:?}"),
    }
    match &answered[&8] {
        batch_reply::Response::Get(r) => assert!(r.kv.is_none(), "refused put applied"),
        other => panic!("expected a get, got {other:?}"),
    }
    assert_eq!(client.get("c").await.unwrap(), None);

    // A transaction over the SDK, which batches it, answers as its unary RPC.
    let result = client
        .txn(Txn::new().when_absent("b").then_put("b", "2").else_get("b"))
        .await
        .unwrap();
    assert!(result.succeeded);
    assert_eq!(client.get("b").await.unwrap().unwrap().value, b"2");

    // Answers ready together are packed up to 1 MiB a message, so large
    // values never make a message the client cannot decode (this stream
    // takes three calls at once).
    let big = vec![b'x'; 600 << 10];
    for i in 0..3 {
        client.put(format!("big{i}"), big.clone()).await.unwrap();
    }
    let gets = (0..3)
        .map(|i| get(100 + i, &format!("big{i}"), pb::Consistency::Linearizable))
        .collect();
    sender
        .send(pb::BatchRequest {
            calls: gets,
            ..Default::default()
        })
        .unwrap();
    let mut answered = 0;
    while answered < 3 {
        let message = stream.message().await.unwrap().expect("stream open");
        let bytes = prost::Message::encoded_len(&message);
        assert!(
            message.replies.len() == 1 || bytes <= 1 << 20,
            "{} answers in {bytes} bytes",
            message.replies.len()
        );
        for reply in message.replies {
            match reply.response {
                Some(batch_reply::Response::Get(r)) => assert_eq!(r.kv.unwrap().value, big),
                other => panic!("expected a get, got {other:?}"),
            }
            answered += 1;
        }
    }

    // Closing our side ends the stream once everything is answered.
    drop(sender);
    assert!(stream.message().await.unwrap().is_none());

    drop(client);
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_call_is_stopped_and_never_answered() {
    let dir = tempfile::tempdir().unwrap();
    let (server, _client) = single_node(dir.path(), Limits::default()).await;
    let (sender, mut stream) = open(&server.client_addr.to_string()).await;
    // Cancelled in the message that carries it: it never runs.
    sender
        .send(pb::BatchRequest {
            calls: vec![put(1, "cancelled", "1"), put(2, "kept", "1")],
            cancel: vec![1],
        })
        .unwrap();
    let answered = replies(&mut stream, 1).await;
    assert!(matches!(answered[&2], batch_reply::Response::Put(_)));
    // Cancellations of unknown or answered ids are ignored; the stream
    // goes on, and the cancelled put changed nothing.
    sender
        .send(pb::BatchRequest {
            calls: vec![
                get(3, "cancelled", pb::Consistency::Linearizable),
                get(4, "kept", pb::Consistency::Linearizable),
            ],
            cancel: vec![2, 99],
        })
        .unwrap();
    let answered = replies(&mut stream, 2).await;
    assert!(
        !answered.contains_key(&1),
        "the cancelled call was answered"
    );
    match (&answered[&3], &answered[&4]) {
        (batch_reply::Response::Get(cancelled), batch_reply::Response::Get(kept)) => {
            assert!(cancelled.kv.is_none(), "the cancelled put was applied");
            assert!(kept.kv.is_some());
        }
        other => panic!("expected two gets, got {other:?}"),
    }
    // An id already in flight is refused alone (a cancellation could not
    // tell the two calls apart).
    let slow = pb::BatchCall {
        timeout_ms: 0,
        id: 5,
        request: Some(batch_call::Request::Txn(pb::TxnRequest::default())),
    };
    sender
        .send(pb::BatchRequest {
            calls: vec![slow.clone(), slow],
            ..Default::default()
        })
        .unwrap();
    // The refusal goes out as the message is read, before the first copy
    // can have finished.
    let message = stream.message().await.unwrap().expect("stream open");
    assert_eq!(message.replies.len(), 1);
    assert_eq!(message.replies[0].id, 5);
    let (code, text) = error(message.replies[0].response.as_ref().unwrap());
    assert_eq!(code, Code::InvalidArgument);
    assert!(text.contains("already in flight"), "{text}");
    drop(sender);
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graceful_stop_ends_open_streams_and_cuts_off_clients_that_stopped_reading() {
    // An idle batch stream and a watch end by themselves: the stop takes
    // well under the 5 s after which it would stop serving regardless.
    let dir = tempfile::tempdir().unwrap();
    let (server, client) = single_node(dir.path(), Limits::default()).await;
    let addr = server.client_addr.to_string();
    let (sender, mut stream) = open(&addr).await;
    // From the put's own revision, so the event is in the watch's backlog
    // however late the watch subscribes.
    let revision = client.put("w", "1").await.unwrap();
    let mut watch = client.watch_key("w", revision);
    let event = within(watch.next(), "the watch's first event")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(event.kv.unwrap().mod_revision, revision);
    let started = std::time::Instant::now();
    within(server.shutdown(), "a graceful stop").await.unwrap();
    assert!(
        started.elapsed() < std::time::Duration::from_secs(4),
        "the stop waited {:?} for open streams",
        started.elapsed()
    );
    let ended = within(stream.message(), "the idle stream's end").await;
    assert!(matches!(ended, Ok(None) | Err(_)));
    drop((sender, watch, client));

    // A client that sends calls and never reads the answers holds its
    // connection open: the stop still finishes.
    let dir = tempfile::tempdir().unwrap();
    let (server, client) = single_node(dir.path(), Limits::default()).await;
    let big = vec![b'x'; 600 << 10];
    for k in 0..3 {
        client.put(format!("big{k}"), big.clone()).await.unwrap();
    }
    let (flood, _never_read) = open(&server.client_addr.to_string()).await;
    for i in 0..300 {
        let gets = (0..3)
            .map(|k| get(i * 3 + k, &format!("big{k}"), pb::Consistency::Stale))
            .collect();
        flood
            .send(pb::BatchRequest {
                calls: gets,
                ..Default::default()
            })
            .unwrap();
    }
    // Long enough for the answers to fill the stream's buffers.
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    within(server.shutdown(), "a graceful stop with an unread stream")
        .await
        .unwrap();
    drop((flood, client));
}

/// `future`, or a panic naming `what` if it takes over 15 s.
async fn within<T>(future: impl std::future::Future<Output = T>, what: &str) -> T {
    tokio::time::timeout(std::time::Duration::from_secs(15), future)
        .await
        .unwrap_or_else(|_| panic!("{what} took over 15 s"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_follower_answers_a_batched_write_with_the_leader_and_the_sdk_follows() {
    let cluster = ProcessCluster::start(3);
    let client = connect(cluster.endpoints()).await;
    client.put("ready", "1").await.unwrap();
    let status = client.status().await.unwrap();
    let follower = (1..=3).find(|id| *id != status.leader_id).unwrap();

    let (sender, mut stream) = open(&cluster.client_addr(follower)).await;
    sender
        .send(pb::BatchRequest {
            calls: vec![put(1, "k", "v")],
            ..Default::default()
        })
        .unwrap();
    let answered = replies(&mut stream, 1).await;
    match &answered[&1] {
        batch_reply::Response::Error(e) => {
            assert_eq!(Code::from_i32(e.code), Code::FailedPrecondition);
            assert_eq!(e.leader_id, status.leader_id);
            assert_eq!(e.leader_addr, cluster.client_addr(status.leader_id));
        }
        other => panic!("expected not-leader, got {other:?}"),
    }

    // An SDK that knows only the follower is sent on to the leader.
    let only_follower = connect(vec![cluster.client_addr(follower)]).await;
    let revision = only_follower.put("k", "v").await.unwrap();
    assert_eq!(
        client.get("k").await.unwrap().unwrap().mod_revision,
        revision
    );
}

/// A server of the KV and Cluster services without `Batch`, as a release
/// before it would be: enough for the SDK to connect, put and get.
#[derive(Clone, Default)]
struct UnaryOnly {
    data: Arc<Mutex<BTreeMap<Vec<u8>, Vec<u8>>>>,
    batch_attempts: Arc<AtomicUsize>,
    unary_calls: Arc<AtomicUsize>,
}

#[tonic::async_trait]
impl pb::kv_server::Kv for UnaryOnly {
    async fn get(
        &self,
        request: Request<pb::GetRequest>,
    ) -> Result<Response<pb::GetResponse>, Status> {
        self.unary_calls.fetch_add(1, Ordering::SeqCst);
        let key = request.into_inner().key;
        let value = self.data.lock().unwrap().get(&key).cloned();
        Ok(Response::new(pb::GetResponse {
            kv: value.map(|value| pb::KeyValue {
                key,
                value,
                ..Default::default()
            }),
            ..Default::default()
        }))
    }

    async fn put(
        &self,
        request: Request<pb::PutRequest>,
    ) -> Result<Response<pb::PutResponse>, Status> {
        self.unary_calls.fetch_add(1, Ordering::SeqCst);
        let request = request.into_inner();
        self.data.lock().unwrap().insert(request.key, request.value);
        Ok(Response::new(pb::PutResponse::default()))
    }

    async fn delete(
        &self,
        _: Request<pb::DeleteRequest>,
    ) -> Result<Response<pb::DeleteResponse>, Status> {
        Err(Status::unimplemented("delete"))
    }

    async fn range(
        &self,
        _: Request<pb::RangeRequest>,
    ) -> Result<Response<pb::RangeResponse>, Status> {
        Err(Status::unimplemented("range"))
    }

    async fn txn(&self, _: Request<pb::TxnRequest>) -> Result<Response<pb::TxnResponse>, Status> {
        Err(Status::unimplemented("txn"))
    }

    type BatchStream = tokio_stream::Empty<Result<pb::BatchResponse, Status>>;

    async fn batch(
        &self,
        _: Request<Streaming<pb::BatchRequest>>,
    ) -> Result<Response<Self::BatchStream>, Status> {
        self.batch_attempts.fetch_add(1, Ordering::SeqCst);
        Err(Status::unimplemented("this server predates KV.Batch"))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sdk_falls_back_to_unary_calls_on_a_server_without_batch() {
    let service = UnaryOnly::default();
    let (addr, stop, server) = common::fake::serve(service.clone()).await;

    let client: Client = connect(vec![addr]).await;
    for i in 0..20 {
        client.put(format!("k{i}"), format!("v{i}")).await.unwrap();
    }
    for i in 0..20 {
        let kv = client.get(format!("k{i}")).await.unwrap().expect("present");
        assert_eq!(kv.value, format!("v{i}").into_bytes());
    }
    // One refused stream was enough for the SDK to remember.
    assert_eq!(service.batch_attempts.load(Ordering::SeqCst), 1);
    assert_eq!(service.unary_calls.load(Ordering::SeqCst), 40);

    drop(client);
    stop.send(()).unwrap();
    server.await.unwrap().unwrap();
}
