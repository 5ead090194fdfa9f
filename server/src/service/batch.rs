//! `KV.Batch`: many Get, Put, Delete and Txn calls over one stream.
//!
//! Each call runs through the same code as its unary RPC (metrics
//! included); only the framing differs. One task per stream drives the
//! calls as a set of futures, so a call costs a future, not a spawned task
//! or an HTTP/2 stream. Answers are sent as calls finish; every answer
//! ready at the moment one is sent goes into the same message, which is
//! where the saving comes from under load, without delaying anything when
//! idle.
//!
//! Invariants: every call taken is answered once, unless the client goes
//! away first, in which case its future is dropped, as a cancelled unary
//! call's is. A call runs at most for the timeout its client sent (after
//! which the client has given up on it). A call over `max_batch_calls` in
//! flight fails alone with UNAVAILABLE. A stopping server takes no more
//! calls, answers those it took and ends the stream, so a graceful stop
//! does not wait for clients to hang up; nor for one that stopped reading,
//! which is cut off after a grace period. A call the client cancels
//! (`BatchRequest.cancel`) is stopped and not answered; a client that goes
//! away stops every call of its stream at once.

use super::kv::KvService;
use crate::auth::Credential;
use ferry_client::pb::{self, batch_call, batch_reply};
use futures_util::future::{AbortHandle, Abortable};
use futures_util::stream::FuturesUnordered;
use futures_util::{FutureExt, Stream, StreamExt};
use prost::Message;
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tonic::{Status, Streaming};

pub type ReplyStream = Pin<Box<dyn Stream<Item = Result<pb::BatchResponse, Status>> + Send>>;

/// Answer messages buffered towards a client that reads slowly; beyond
/// that the stream stops taking new calls until it reads.
const REPLY_BUFFER: usize = 16;

/// An answer message takes no more answers that would bring it over this
/// size (a single larger answer goes alone, as its unary RPC's would), so
/// that answers packed together never exceed what a client decodes.
const MAX_REPLY_BATCH_BYTES: usize = 1 << 20;

/// A single answer larger than this is replaced by an error for its call
/// alone: the SDK decodes messages of up to 4 MiB (tonic's default), and
/// one it cannot decode would break the stream and every call on it.
const MAX_ANSWER_BYTES: usize = (4 << 20) - (64 << 10);

/// Starts serving one batch stream.
pub fn serve(
    service: KvService,
    credential: Credential,
    calls: Streaming<pb::BatchRequest>,
) -> ReplyStream {
    let (replies, stream) = mpsc::channel(REPLY_BUFFER);
    tokio::spawn(drive(service, Arc::new(credential), calls, replies));
    Box::pin(tokio_stream::wrappers::ReceiverStream::new(stream))
}

type Replies = mpsc::Sender<Result<pb::BatchResponse, Status>>;

async fn drive(
    service: KvService,
    credential: Arc<Credential>,
    mut calls: Streaming<pb::BatchRequest>,
    replies: Replies,
) {
    let max_calls = service.context.limits.max_batch_calls;
    let context = service.context.clone();
    let _open = context.metrics.open_stream("batch");
    let stopped = context.stopped();
    tokio::pin!(stopped);
    let mut running = FuturesUnordered::new();
    // How to stop each call running, by id (what `cancel` names).
    let mut handles: HashMap<u64, AbortHandle> = HashMap::new();
    let mut open = true;
    // Ends once no more calls come (the client finished sending, or the
    // server is stopping) and every call taken is answered.
    while open || !running.is_empty() {
        tokio::select! {
            // A stopping server takes no more calls and ends the stream
            // once those running are answered; the SDK sends the next
            // calls elsewhere.
            () = &mut stopped, if open => open = false,
            // The client went away: nobody reads the answers, so stop the
            // calls now rather than when each would send its answer.
            () = replies.closed() => return,
            message = calls.message(), if open => match message {
                Ok(Some(batch)) => {
                    let mut refused = Vec::new();
                    for call in batch.calls {
                        if let Some(refusal) = refusal(&call, &handles, running.len(), max_calls) {
                            refused.push(refusal);
                            continue;
                        }
                        let (handle, registration) = AbortHandle::new_pair();
                        handles.insert(call.id, handle);
                        let id = call.id;
                        running.push(
                            Abortable::new(answer(service.clone(), credential.clone(), call), registration)
                                .map(move |answered| (id, answered.ok())),
                        );
                    }
                    // After the calls: a call may be cancelled in the very
                    // message that carries it.
                    for id in batch.cancel {
                        if let Some(handle) = handles.remove(&id) {
                            handle.abort();
                        }
                    }
                    if !refused.is_empty()
                        && !context.send(&replies, Ok(pb::BatchResponse { replies: refused })).await
                    {
                        return;
                    }
                }
                // The client has sent all its calls: answer those running.
                Ok(None) => open = false,
                // Garbage on the stream: say why, and drop the calls taken
                // (the client fails and retries them). A client that is
                // gone has dropped the receiver, so this returns at once.
                Err(status) => {
                    let _ = replies.try_send(Err(status));
                    return;
                }
            },
            Some(first) = running.next(), if !running.is_empty() => {
                // Cancelled calls end without an answer.
                let mut next = first.1;
                handles.remove(&first.0);
                while let Some((first, mut bytes)) = next.take() {
                    let mut batch = vec![first];
                    while let Some(Some((id, answered))) = running.next().now_or_never() {
                        handles.remove(&id);
                        let Some((reply, len)) = answered else { continue };
                        // The reply's field tag and length prefix included.
                        bytes += len + 6;
                        if bytes > MAX_REPLY_BATCH_BYTES {
                            next = Some((reply, len));
                            break;
                        }
                        batch.push(reply);
                    }
                    if !context.send(&replies, Ok(pb::BatchResponse { replies: batch })).await {
                        return;
                    }
                }
            },
        }
    }
}

/// Why `call` cannot be taken, as its answer: over the stream's limit
/// (UNAVAILABLE, a transient condition the SDK retries after a backoff, as
/// it would a busy member), or an id already running on the stream (a
/// client error: a cancellation could not tell the two apart).
fn refusal(
    call: &pb::BatchCall,
    handles: &HashMap<u64, AbortHandle>,
    running: usize,
    max_calls: usize,
) -> Option<pb::BatchReply> {
    let status = if handles.contains_key(&call.id) {
        Status::invalid_argument(format!(
            "batch call id {} is already in flight on this stream",
            call.id
        ))
    } else if running >= max_calls {
        Status::unavailable(format!(
            "max_batch_calls = {max_calls} calls are in flight on this stream"
        ))
    } else {
        return None;
    };
    Some(pb::BatchReply {
        id: call.id,
        response: Some(batch_reply::Response::Error(pb::CallError::from_status(
            &status,
        ))),
    })
}

/// Runs one call; returns its reply and the reply's encoded size.
async fn answer(
    service: KvService,
    credential: Arc<Credential>,
    call: pb::BatchCall,
) -> (pb::BatchReply, usize) {
    use batch_reply::Response;
    let credential = &*credential;
    // Each call's future is boxed where it is made: inline, this future
    // was the largest of the four (several KiB), copied whole into the
    // stream's `FuturesUnordered` and again into the timeout, which took
    // 3.5% of the servers' CPU under 64 writers (`perf record`, overwrite
    // x64).
    let handled: Pin<Box<dyn Future<Output = Result<Response, Status>> + Send + '_>> =
        match call.request {
            Some(batch_call::Request::Get(r)) => {
                Box::pin(async move { service.get_call(credential, r).await.map(Response::Get) })
            }
            Some(batch_call::Request::Put(r)) => {
                Box::pin(async move { service.put_call(credential, r).await.map(Response::Put) })
            }
            Some(batch_call::Request::Delete(r)) => Box::pin(async move {
                service
                    .delete_call(credential, r)
                    .await
                    .map(Response::Delete)
            }),
            Some(batch_call::Request::Txn(r)) => {
                Box::pin(async move { service.txn_call(credential, r).await.map(Response::Txn) })
            }
            None => Box::pin(std::future::ready(Err(Status::invalid_argument(
                "a batch call without a request",
            )))),
        };
    // A unary call is dropped when its client gives up (the HTTP/2 stream
    // is reset); a batched one stops at the deadline its client sent, so
    // calls nobody waits for do not pile up against `max_batch_calls`.
    let response = match call.timeout_ms {
        0 => handled.await,
        ms => tokio::time::timeout(Duration::from_millis(ms), handled)
            .await
            .unwrap_or_else(|_| Err(Status::deadline_exceeded("the call's timeout passed"))),
    };
    let reply = |response: Result<Response, Status>| pb::BatchReply {
        id: call.id,
        response: Some(
            response.unwrap_or_else(|status| Response::Error(pb::CallError::from_status(&status))),
        ),
    };
    let answered = reply(response);
    let len = answered.encoded_len();
    if len <= MAX_ANSWER_BYTES {
        return (answered, len);
    }
    let refused = reply(Err(Status::resource_exhausted(format!(
        "an answer of {len} bytes exceeds the {MAX_ANSWER_BYTES} bytes of a batch message; \
         read fewer or smaller values per call"
    ))));
    let len = refused.encoded_len();
    (refused, len)
}
