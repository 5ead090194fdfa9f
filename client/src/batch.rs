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
//! - Ids are unique among the stream's calls in flight (the batcher
//!   numbers its calls once, across all its streams); a new stream starts
//!   with no calls in flight.
//! - A caller that gives up (its future is dropped) is forgotten at once,
//!   and the server is told to stop its call (`BatchRequest.cancel`).
//! - A member that does not know `Batch` (`UNIMPLEMENTED`) is remembered,
//!   and calls to it go unary from then on.

use crate::credentials::AuthChannel;
use crate::pb::{self, batch_call, batch_reply, kv_client::KvClient};
use crate::{LEADER_ADDR_METADATA, LEADER_ID_METADATA};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, Semaphore};
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

/// What callers hand the batcher's task.
enum Message {
    Call(Queued),
    /// The caller of this call gave up (its future was dropped).
    Cancel(u64),
}

struct Queued {
    /// Unique among this batcher's calls, on every stream it opens.
    id: u64,
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
    queue: mpsc::UnboundedSender<Message>,
    unsupported: Arc<AtomicBool>,
    places: Semaphore,
    next_id: AtomicU64,
}

/// Tells the batcher's task that a call's caller gave up, unless the call
/// was answered first: the task stops waiting for it and asks the server
/// to stop it, as dropping a unary call resets its HTTP/2 stream.
struct CancelOnDrop<'a> {
    queue: &'a mpsc::UnboundedSender<Message>,
    id: u64,
    answered: bool,
}

impl Drop for CancelOnDrop<'_> {
    fn drop(&mut self) {
        if !self.answered {
            // The task may have ended already; then nothing runs the call.
            let _ = self.queue.send(Message::Cancel(self.id));
        }
    }
}

impl Batcher {
    /// Starts the batcher's task on the current runtime.
    pub(crate) fn start(channel: AuthChannel) -> Batcher {
        let (queue, calls) = mpsc::unbounded_channel();
        let unsupported = Arc::new(AtomicBool::new(false));
        tokio::spawn(run(channel, calls, unsupported.clone()));
        Batcher {
            queue,
            unsupported,
            places: Semaphore::new(MAX_CALLS_IN_FLIGHT),
            next_id: AtomicU64::new(0),
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
    ///
    /// Cancel-safe: dropped while waiting for a place, it held nothing;
    /// dropped later, its place is released at once and the call is
    /// cancelled (taken out of the calls in flight, and stopped on the
    /// server if it was sent), so it costs later calls nothing.
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
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.queue
            .send(Message::Call(Queued {
                id,
                request,
                bytes,
                timeout_ms,
                reply,
            }))
            .map_err(|_| ended())?;
        let mut cancel = CancelOnDrop {
            queue: &self.queue,
            id,
            answered: false,
        };
        let answer = answer.await;
        cancel.answered = true;
        answer.map_err(|_| ended())?
    }
}

/// Calls sent on the current stream and not yet answered, by id.
#[derive(Default)]
struct InFlight {
    calls: HashMap<u64, oneshot::Sender<Reply>>,
}

impl InFlight {
    fn add(&mut self, id: u64, reply: oneshot::Sender<Reply>) {
        let previous = self.calls.insert(id, reply);
        assert!(previous.is_none(), "batch call id {id} in flight twice");
    }

    /// Forgets a call whose caller gave up; true if it was sent on the
    /// current stream (the server is then told to stop it).
    fn cancel(&mut self, id: u64) -> bool {
        self.calls.remove(&id).is_some()
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
    }
}

async fn run(
    channel: AuthChannel,
    mut calls: mpsc::UnboundedReceiver<Message>,
    unsupported: Arc<AtomicBool>,
) {
    let mut in_flight = InFlight::default();
    // One stream per turn of this loop; a turn starts with the first call
    // after the previous stream ended.
    while let Some(first) = calls.recv().await {
        // The first message goes out with the stream's opening; only
        // cancellations, or callers that all gave up, open nothing.
        let Some(batch) = gather(first, &mut calls, &mut in_flight) else {
            continue;
        };
        // Unbounded so that sending never stops this task from reading
        // replies (the server may be waiting for us to read before it reads
        // more); what it holds is bounded by the calls in flight
        // ([`MAX_CALLS_IN_FLIGHT`]).
        let (outbound, requests) = mpsc::unbounded_channel::<pb::BatchRequest>();
        let _ = outbound.send(batch);
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
                    Some(message) => {
                        if let Some(batch) = gather(message, &mut calls, &mut in_flight) {
                            sending = outbound.send(batch).is_ok();
                        }
                    }
                    // The batcher is dropped, so no caller waits for an
                    // answer; dropping the stream cancels what runs.
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

/// Takes `first` and every message queued behind it, up to the batch
/// size, into one message of calls and cancellations; `None` if there is
/// nothing to send (callers that gave up before their call went out are
/// skipped, and so are cancellations of calls not on this stream).
fn gather(
    first: Message,
    calls: &mut mpsc::UnboundedReceiver<Message>,
    in_flight: &mut InFlight,
) -> Option<pb::BatchRequest> {
    let mut batch = pb::BatchRequest::default();
    let mut bytes = 0;
    let mut next = Some(first);
    while let Some(message) = next.take().or_else(|| calls.try_recv().ok()) {
        match message {
            Message::Cancel(id) => {
                if in_flight.cancel(id) {
                    batch.cancel.push(id);
                    bytes += 11;
                }
            }
            Message::Call(queued) => {
                if queued.reply.is_closed() {
                    // Its caller gave up while the stream was busy or
                    // opening; its cancellation follows and finds nothing.
                    continue;
                }
                in_flight.add(queued.id, queued.reply);
                batch.calls.push(pb::BatchCall {
                    id: queued.id,
                    request: Some(queued.request),
                    timeout_ms: queued.timeout_ms,
                });
                // The call's id, timeout, tags and lengths around the request.
                bytes += queued.bytes + 40;
            }
        }
        if bytes >= MAX_BATCH_BYTES {
            break;
        }
    }
    debug_assert!(prost::Message::encoded_len(&batch) <= MAX_BATCH_REQUEST_BYTES);
    (!batch.calls.is_empty() || !batch.cancel.is_empty()).then_some(batch)
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
