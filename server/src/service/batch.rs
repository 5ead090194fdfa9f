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
//! call's is. A call over `max_batch_calls` in flight fails alone with
//! RESOURCE_EXHAUSTED. A stopping server takes no more calls, answers
//! those it took and ends the stream, so a graceful stop does not wait
//! for clients to hang up.

use super::kv::KvService;
use ferry_client::pb::{self, batch_call, batch_reply};
use futures_util::stream::FuturesUnordered;
use futures_util::{FutureExt, Stream, StreamExt};
use prost::Message;
use std::pin::Pin;
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

/// Starts serving one batch stream.
pub fn serve(service: KvService, calls: Streaming<pb::BatchRequest>) -> ReplyStream {
    let (replies, stream) = mpsc::channel(REPLY_BUFFER);
    tokio::spawn(drive(service, calls, replies));
    Box::pin(tokio_stream::wrappers::ReceiverStream::new(stream))
}

async fn drive(
    service: KvService,
    mut calls: Streaming<pb::BatchRequest>,
    replies: mpsc::Sender<Result<pb::BatchResponse, Status>>,
) {
    let max_calls = service.context.limits.max_batch_calls;
    let context = service.context.clone();
    let stopped = context.stopped();
    tokio::pin!(stopped);
    let mut running = FuturesUnordered::new();
    let mut open = true;
    loop {
        tokio::select! {
            // A stopping server takes no more calls and ends the stream
            // once those running are answered; the SDK sends the next
            // calls elsewhere.
            () = &mut stopped, if open => open = false,
            message = calls.message(), if open => match message {
                Ok(Some(batch)) => {
                    let mut refused = Vec::new();
                    for call in batch.calls {
                        if running.len() >= max_calls {
                            refused.push(refusal(call.id, max_calls));
                        } else {
                            running.push(answer(service.clone(), call));
                        }
                    }
                    if !refused.is_empty()
                        && replies.send(Ok(pb::BatchResponse { replies: refused })).await.is_err()
                    {
                        return;
                    }
                }
                // The client has sent all its calls: answer those running.
                Ok(None) => open = false,
                // The client is gone (or sent garbage): nobody to answer.
                Err(_) => return,
            },
            Some(first) = running.next(), if !running.is_empty() => {
                let mut next = Some(first);
                while let Some(first) = next.take() {
                    let mut bytes = first.encoded_len();
                    let mut batch = vec![first];
                    while let Some(Some(reply)) = running.next().now_or_never() {
                        bytes += reply.encoded_len();
                        if bytes > MAX_REPLY_BATCH_BYTES {
                            next = Some(reply);
                            break;
                        }
                        batch.push(reply);
                    }
                    let message = pb::BatchResponse { replies: batch };
                    if replies.send(Ok(message)).await.is_err() {
                        return;
                    }
                }
            },
            else => return,
        }
    }
}

fn refusal(id: u64, max_calls: usize) -> pb::BatchReply {
    let status = Status::resource_exhausted(format!(
        "max_batch_calls = {max_calls} calls are in flight on this stream"
    ));
    pb::BatchReply {
        id,
        response: Some(batch_reply::Response::Error(pb::CallError::from_status(
            &status,
        ))),
    }
}

async fn answer(service: KvService, call: pb::BatchCall) -> pb::BatchReply {
    use batch_reply::Response;
    let response = match call.request {
        Some(batch_call::Request::Get(r)) => service.get_call(r).await.map(Response::Get),
        Some(batch_call::Request::Put(r)) => service.put_call(r).await.map(Response::Put),
        Some(batch_call::Request::Delete(r)) => service.delete_call(r).await.map(Response::Delete),
        Some(batch_call::Request::Txn(r)) => service.txn_call(r).await.map(Response::Txn),
        None => Err(Status::invalid_argument("a batch call without a request")),
    };
    pb::BatchReply {
        id: call.id,
        response: Some(
            response.unwrap_or_else(|status| Response::Error(pb::CallError::from_status(&status))),
        ),
    }
}
