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
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, Semaphore};
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
/// timeout, tags and lengths take at most 30 bytes). A server must accept requests
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
    /// The request's encoded size, as its caller measured it.
    bytes: usize,
    timeout_ms: u64,
    reply: oneshot::Sender<Reply>,
}

/// Calls of one batcher in flight at once at most; more wait for a place.
/// Well below the server's default `max_batch_calls` (4096), so that an SDK
/// with default settings is not refused.
const MAX_CALLS_IN_FLIGHT: usize = 1024;

/// One member's batch stream, opened on first use and reopened after it
/// breaks.
pub(crate) struct Batcher {
    queue: mpsc::UnboundedSender<Queued>,
    unsupported: Arc<AtomicBool>,
    places: Semaphore,
}

impl Batcher {
    /// Starts the batcher's task on the current runtime.
    pub(crate) fn start(channel: Channel) -> Batcher {
        let (queue, calls) = mpsc::unbounded_channel();
        let unsupported = Arc::new(AtomicBool::new(false));
        tokio::spawn(run(channel, calls, unsupported.clone()));
        Batcher {
            queue,
            unsupported,
            places: Semaphore::new(MAX_CALLS_IN_FLIGHT),
        }
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

    /// Runs one call over the stream; the server gives up on it after
    /// `timeout`, when its caller does.
    /// `bytes` is the request message's encoded size.
    pub(crate) async fn call(
        &self,
        request: batch_call::Request,
        bytes: usize,
        timeout: Duration,
    ) -> Reply {
        let ended = || Status::unavailable("the batch stream's task has ended");
        let _place = self.places.acquire().await.map_err(|_| ended())?;
        let (reply, answer) = oneshot::channel();
        let timeout_ms = u64::try_from(timeout.as_millis())
            .unwrap_or(u64::MAX)
            .max(1);
        self.queue
            .send(Queued {
                request,
                bytes,
                timeout_ms,
                reply,
            })
            .map_err(|_| ended())?;
        answer.await.map_err(|_| ended())?
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

    /// Hands each reply to its caller (unknown ids: callers that gave up).
    fn answer(&mut self, response: pb::BatchResponse) {
        for reply in response.replies {
            let Some(caller) = self.calls.remove(&reply.id) else {
                continue;
            };
            let answer = reply
                .response
                .ok_or_else(|| Status::internal("a batch reply without a response"));
            let _ = caller.send(match answer {
                Ok(batch_reply::Response::Error(error)) => Err(error.into_status()),
                other => other,
            });
        }
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
        // more); what it holds is bounded by the calls in flight
        // ([`MAX_CALLS_IN_FLIGHT`]).
        let (outbound, requests) = mpsc::unbounded_channel::<pb::BatchRequest>();
        let mut next = Some(first);
        // The first message goes out with the stream's opening.
        if let Some(batch) = gather(&mut next, &mut calls, &mut in_flight) {
            let _ = outbound.send(batch);
        }
        let opened = KvClient::new(channel.clone())
            .batch(tokio_stream::wrappers::UnboundedReceiverStream::new(
                requests,
            ))
            .await;
        let mut replies = match opened {
            Ok(response) => response.into_inner(),
            Err(status) => {
                let status = if status.code() == Code::Unimplemented {
                    // The caller's retry goes unary.
                    unsupported.store(true, Ordering::Relaxed);
                    Status::unavailable("the member does not know KV.Batch")
                } else {
                    status
                };
                in_flight.fail_all(&status);
                continue;
            }
        };
        // Cleared when the server no longer reads this stream's calls: the
        // stream then only delivers the answers still on their way, and new
        // calls wait for the next stream.
        let mut sending = true;
        let ended = loop {
            tokio::select! {
                queued = calls.recv(), if sending => match queued {
                    Some(queued) => {
                        next = Some(queued);
                        if let Some(batch) = gather(&mut next, &mut calls, &mut in_flight) {
                            sending = outbound.send(batch).is_ok();
                        }
                    }
                    // The batcher is dropped, so no caller waits for an answer.
                    None => return,
                },
                message = replies.message() => match message {
                    Ok(Some(response)) => in_flight.answer(response),
                    Ok(None) => break Status::unavailable("the server ended the batch stream"),
                    Err(status) => {
                        break Status::unavailable(format!("batch stream: {}", status.message()))
                    }
                },
            }
        };
        // Calls the server never answered (or never read): their callers
        // retry them.
        in_flight.fail_all(&ended);
    }
}

/// Takes `next` and every call queued behind it, up to the batch size, into
/// one message; `None` if every caller among them has given up already.
fn gather(
    next: &mut Option<Queued>,
    calls: &mut mpsc::UnboundedReceiver<Queued>,
    in_flight: &mut InFlight,
) -> Option<pb::BatchRequest> {
    let mut batch = pb::BatchRequest::default();
    let mut bytes = 0;
    while let Some(queued) = next.take().or_else(|| calls.try_recv().ok()) {
        if queued.reply.is_closed() {
            // Its attempt timed out while the stream was busy or opening.
            continue;
        }
        let call = pb::BatchCall {
            id: in_flight.add(queued.reply),
            request: Some(queued.request),
            timeout_ms: queued.timeout_ms,
        };
        // The call's id, timeout, tags and lengths around the request.
        bytes += queued.bytes + 40;
        batch.calls.push(call);
        if bytes >= MAX_BATCH_BYTES {
            break;
        }
    }
    debug_assert!(prost::Message::encoded_len(&batch) <= MAX_BATCH_REQUEST_BYTES);
    (!batch.calls.is_empty()).then_some(batch)
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
