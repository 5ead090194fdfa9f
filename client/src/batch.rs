//! Calls multiplexed over one `KV.Batch` stream per member.
//!
//! A unary gRPC call costs an HTTP/2 stream: headers both ways, HPACK work,
//! flow-control bookkeeping and a tower dispatch on each side. Under many
//! concurrent small writes that, not Raft or the disk, is where a node's
//! CPU goes. A [`Batcher`] keeps one `Batch` stream open to a member and
//! sends every call queued since its last send as one message; the server
//! packs the answers ready together the same way. Nothing waits for a batch
//! to fill, so one call alone costs what it did.
//!
//! Invariants:
//! - Every call handed to the batcher is answered exactly once: by its
//!   reply, or with `UNAVAILABLE` when the stream breaks (the caller's
//!   retry loop then retries it; writes carry their exactly-once id).
//! - Ids are unique among the stream's calls in flight; a new stream
//!   starts with no calls in flight.
//! - A member that does not know `Batch` (`UNIMPLEMENTED`) is remembered,
//!   and calls to it go unary from then on.

use crate::pb::{self, batch_call, batch_reply, kv_client::KvClient};
use crate::{LEADER_ADDR_METADATA, LEADER_ID_METADATA};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot};
use tonic::transport::Channel;
use tonic::{Code, Status};

/// Calls whose encoding is larger go unary: a batch message must stay
/// within the server's request size limit, and a large call gains nothing
/// from sharing a stream.
pub(crate) const MAX_BATCHED_CALL_BYTES: usize = 64 << 10;

/// A batch message takes no more calls once it holds this many bytes.
const MAX_BATCH_BYTES: usize = 256 << 10;

/// The largest batch message the SDK sends: [`MAX_BATCH_BYTES`] less a
/// byte, then one more call at its largest, framing included (a call's id,
/// tag and lengths take at most 23 bytes). A server must accept requests
/// of this size.
pub const MAX_BATCH_REQUEST_BYTES: usize = MAX_BATCH_BYTES + MAX_BATCHED_CALL_BYTES + 64;

impl pb::CallError {
    /// The wire form of a failed call's status, keeping its not-leader
    /// trailers.
    pub fn from_status(status: &Status) -> pb::CallError {
        let text = |key| {
            status
                .metadata()
                .get(key)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        pb::CallError {
            code: status.code() as i32,
            message: status.message().to_owned(),
            leader_id: text(LEADER_ID_METADATA)
                .and_then(|id| id.parse().ok())
                .unwrap_or(0),
            leader_addr: text(LEADER_ADDR_METADATA).unwrap_or_default(),
        }
    }

    /// The status the call's unary RPC would have failed with.
    pub fn into_status(self) -> Status {
        let mut status = Status::new(Code::from_i32(self.code), self.message);
        if self.leader_id != 0 {
            if let Ok(value) = self.leader_id.to_string().parse() {
                status.metadata_mut().insert(LEADER_ID_METADATA, value);
            }
        }
        if let Ok(value) = self.leader_addr.parse() {
            if !self.leader_addr.is_empty() {
                status.metadata_mut().insert(LEADER_ADDR_METADATA, value);
            }
        }
        status
    }
}

type Reply = Result<batch_reply::Response, Status>;

struct Queued {
    request: batch_call::Request,
    reply: oneshot::Sender<Reply>,
}

/// One member's batch stream, opened on first use and reopened after it
/// breaks.
pub(crate) struct Batcher {
    queue: mpsc::UnboundedSender<Queued>,
    unsupported: Arc<AtomicBool>,
}

impl Batcher {
    /// Starts the batcher's task on the current runtime.
    pub(crate) fn start(channel: Channel) -> Batcher {
        let (queue, calls) = mpsc::unbounded_channel();
        let unsupported = Arc::new(AtomicBool::new(false));
        tokio::spawn(run(channel, calls, unsupported.clone()));
        Batcher { queue, unsupported }
    }

    /// Whether calls can go through this batcher: its member knows `Batch`
    /// and its task still runs (it ends with the runtime that started it).
    pub(crate) fn usable(&self) -> bool {
        !self.unsupported.load(Ordering::Relaxed) && !self.queue.is_closed()
    }

    /// Whether the task ended (with the runtime that started it).
    pub(crate) fn ended(&self) -> bool {
        self.queue.is_closed()
    }

    /// Runs one call over the stream.
    pub(crate) async fn call(&self, request: batch_call::Request) -> Reply {
        let (reply, answer) = oneshot::channel();
        self.queue
            .send(Queued { request, reply })
            .map_err(|_| Status::unavailable("the batch stream's task has ended"))?;
        answer
            .await
            .map_err(|_| Status::unavailable("the batch stream's task has ended"))?
    }
}

/// Calls sent and not yet answered, by id.
struct InFlight {
    next_id: u64,
    calls: HashMap<u64, oneshot::Sender<Reply>>,
    /// Size after the last sweep of callers that gave up (timed out).
    swept: usize,
}

impl InFlight {
    fn add(&mut self, reply: oneshot::Sender<Reply>) -> u64 {
        // Callers that gave up (their attempt timed out) leave their slot
        // behind; sweep them whenever the map has doubled since the last
        // sweep, so a member that never answers cannot grow it without bound.
        if self.calls.len() >= 2 * self.swept.max(64) {
            self.calls.retain(|_, reply| !reply.is_closed());
            self.swept = self.calls.len();
        }
        let id = self.next_id;
        self.next_id += 1;
        self.calls.insert(id, reply);
        id
    }

    fn fail_all(&mut self, status: &Status) {
        for (_, reply) in self.calls.drain() {
            let _ = reply.send(Err(status.clone()));
        }
        self.swept = 0;
    }
}

async fn run(
    channel: Channel,
    mut calls: mpsc::UnboundedReceiver<Queued>,
    unsupported: Arc<AtomicBool>,
) {
    let mut in_flight = InFlight {
        next_id: 0,
        calls: HashMap::new(),
        swept: 0,
    };
    // One stream per turn of this loop; a turn starts with the first call
    // after the previous stream ended.
    while let Some(first) = calls.recv().await {
        // Unbounded so that sending never stops this task from reading
        // replies (the server may be waiting for us to read before it reads
        // more); what it holds is bounded by the callers waiting.
        let (outbound, requests) = mpsc::unbounded_channel::<pb::BatchRequest>();
        let mut next = Some(first);
        // The first message goes out with the stream's opening.
        let _ = outbound.send(gather(&mut next, &mut calls, &mut in_flight));
        let opened = KvClient::new(channel.clone())
            .batch(tokio_stream::wrappers::UnboundedReceiverStream::new(
                requests,
            ))
            .await;
        let mut replies = match opened {
            Ok(response) => response.into_inner(),
            Err(status) => {
                if status.code() == Code::Unimplemented {
                    // The caller's retry goes unary.
                    unsupported.store(true, Ordering::Relaxed);
                }
                in_flight.fail_all(&Status::unavailable(format!(
                    "batch stream not opened: {}",
                    status.message()
                )));
                continue;
            }
        };
        let broken = loop {
            tokio::select! {
                queued = calls.recv() => match queued {
                    Some(queued) => {
                        next = Some(queued);
                        let batch = gather(&mut next, &mut calls, &mut in_flight);
                        if outbound.send(batch).is_err() {
                            break Status::unavailable("the batch stream closed");
                        }
                    }
                    // The batcher is dropped, so no caller waits for an answer.
                    None => return,
                },
                message = replies.message() => match message {
                    Ok(Some(response)) => {
                        for reply in response.replies {
                            let Some(caller) = in_flight.calls.remove(&reply.id) else {
                                continue;
                            };
                            let answer = reply.response.ok_or_else(|| {
                                Status::internal("a batch reply without a response")
                            });
                            let _ = caller.send(match answer {
                                Ok(batch_reply::Response::Error(error)) => Err(error.into_status()),
                                other => other,
                            });
                        }
                    }
                    Ok(None) => break Status::unavailable("the server ended the batch stream"),
                    Err(status) => {
                        break Status::unavailable(format!("batch stream: {}", status.message()))
                    }
                },
            }
        };
        in_flight.fail_all(&broken);
    }
}

/// Takes `next` and every call queued behind it, up to the batch size, into
/// one message.
fn gather(
    next: &mut Option<Queued>,
    calls: &mut mpsc::UnboundedReceiver<Queued>,
    in_flight: &mut InFlight,
) -> pb::BatchRequest {
    let mut batch = pb::BatchRequest::default();
    let mut bytes = 0;
    while let Some(queued) = next.take().or_else(|| calls.try_recv().ok()) {
        let call = pb::BatchCall {
            id: in_flight.add(queued.reply),
            request: Some(queued.request),
        };
        bytes += prost::Message::encoded_len(&call) + 6;
        batch.calls.push(call);
        if bytes >= MAX_BATCH_BYTES {
            break;
        }
    }
    debug_assert!(!batch.calls.is_empty());
    debug_assert!(prost::Message::encoded_len(&batch) <= MAX_BATCH_REQUEST_BYTES);
    batch
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_call_error_carries_the_not_leader_trailers_both_ways() {
        let status = crate::not_leader_status(Some(3), Some("127.0.0.1:7420"));
        let error = pb::CallError::from_status(&status);
        assert_eq!(error.leader_id, 3);
        assert_eq!(error.leader_addr, "127.0.0.1:7420");
        let back = error.into_status();
        assert_eq!(back.code(), Code::FailedPrecondition);
        assert_eq!(back.message(), status.message());
        assert_eq!(
            back.metadata().get(LEADER_ADDR_METADATA).unwrap(),
            "127.0.0.1:7420"
        );
        assert_eq!(back.metadata().get(LEADER_ID_METADATA).unwrap(), "3");

        let plain = pb::CallError::from_status(&Status::invalid_argument("bad key")).into_status();
        assert_eq!(plain.code(), Code::InvalidArgument);
        assert!(plain.metadata().get(LEADER_ID_METADATA).is_none());
        assert!(plain.metadata().get(LEADER_ADDR_METADATA).is_none());
    }
}
