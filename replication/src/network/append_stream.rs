//! A follower's replication stream over unary calls, in which a request
//! that carries no entries does not hold back the next one.
//!
//! openraft generates the appends of one follower one after another. Its
//! default transport sends each only once the one before is answered. When
//! the commit index moves and there is no new entry to carry it, the stream
//! sends an entry-less request to tell the follower. With one client
//! writing, that request is in flight just when the client's next write
//! arrives: the write's entries waited a whole round trip to the follower
//! and back before they were sent (about a quarter of a one-client put's
//! time, `perf trace` of `ferry-bench cluster --clients 1`).
//!
//! Here, while entry-less requests are in flight, the next request is taken
//! and sent as well. Two rules bound what overlaps:
//! - **At most one request with entries is in flight**, as before. A
//!   leadership hand-over waits for its target to have flushed the leader's
//!   whole log; with entries pipelined, appends in flight made the target
//!   miss that window (`benches/RESULTS.md`, "Pipelined replication, tried
//!   and reverted").
//! - **At most [`MAX_IN_FLIGHT`] requests in all.**
//!
//! Results are yielded in the order of the requests, as openraft requires;
//! an error or a conflict ends the stream, and openraft starts a new one.
//! A follower may take two overlapping requests in either order. Both start
//! at a log id the leader already knows the follower holds or is sending in
//! order, and a request without entries truncates nothing, so either order
//! leaves the same log; the commit index a follower learns only grows.

use crate::types::{LogId, TypeConfig};
use futures_util::stream::{FuturesOrdered, Stream, StreamExt};
use openraft::error::RPCError;
use openraft::raft::{AppendEntriesRequest, AppendEntriesResponse, StreamAppendResult};
use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;

/// Requests in flight at once on one stream: an entry-less one and the
/// next.
pub(crate) const MAX_IN_FLIGHT: usize = 2;

pub(crate) type Answer = Result<AppendEntriesResponse<TypeConfig>, RPCError<TypeConfig>>;
/// One unary append call, sent once first polled.
pub(crate) type Call = Pin<Box<dyn Future<Output = Answer> + Send>>;
pub(crate) type Item = Result<StreamAppendResult<TypeConfig>, RPCError<TypeConfig>>;

/// What a sent request covers: `(prev, last]`.
struct Sent {
    prev: Option<LogId>,
    last: Option<LogId>,
    has_entries: bool,
}

struct Pipe<S, F> {
    /// Makes the call that sends one request.
    call: F,
    /// `None` once openraft ended it or this stream stopped.
    input: Option<S>,
    calls: FuturesOrdered<Call>,
    /// One per call, in the same order.
    sent: VecDeque<Sent>,
}

/// The stream of results for the requests of `input`, each sent by the
/// call `call` makes of it.
pub(crate) fn stream<S, F>(input: S, call: F) -> impl Stream<Item = Item> + Send + 'static
where
    S: Stream<Item = AppendEntriesRequest<TypeConfig>> + Send + Unpin + 'static,
    F: FnMut(AppendEntriesRequest<TypeConfig>) -> Call + Send + 'static,
{
    let pipe = Pipe {
        call,
        input: Some(input),
        calls: FuturesOrdered::new(),
        sent: VecDeque::new(),
    };
    futures_util::stream::unfold(pipe, |mut pipe| async move {
        let item = pipe.next_result().await?;
        Some((item, pipe))
    })
}

impl<S, F> Pipe<S, F>
where
    S: Stream<Item = AppendEntriesRequest<TypeConfig>> + Send + Unpin + 'static,
    F: FnMut(AppendEntriesRequest<TypeConfig>) -> Call + Send + 'static,
{
    /// May another request be taken and sent now?
    fn may_send(&self) -> bool {
        self.input.is_some()
            && self.sent.len() < MAX_IN_FLIGHT
            && !self.sent.iter().any(|s| s.has_entries)
    }

    fn send(&mut self, request: AppendEntriesRequest<TypeConfig>) {
        let prev = request.prev_log_id;
        let last = request.entries.last().map(|e| e.log_id).or(prev);
        self.sent.push_back(Sent {
            prev,
            last,
            has_entries: !request.entries.is_empty(),
        });
        let call = (self.call)(request);
        self.calls.push_back(call);
        debug_assert_eq!(self.calls.len(), self.sent.len());
    }

    /// The result of the oldest request in flight, sending whatever may be
    /// sent meanwhile; `None` when nothing is in flight and nothing more
    /// comes.
    async fn next_result(&mut self) -> Option<Item> {
        loop {
            if !self.may_send() {
                let answer = self.calls.next().await?;
                return Some(self.finish(answer));
            }
            let input = self.input.as_mut().expect("may_send checked it");
            // `next()` of openraft's request stream may be dropped and
            // called again: the stream keeps the request it is building.
            tokio::select! {
                biased;
                Some(answer) = self.calls.next(), if !self.calls.is_empty() => {
                    return Some(self.finish(answer));
                }
                request = input.next() => match request {
                    Some(request) => self.send(request),
                    None => self.input = None,
                },
            }
        }
    }

    /// The result of the oldest request; stops the stream after an error,
    /// a conflict or a partial success, as openraft's sequential stream does.
    fn finish(&mut self, answer: Answer) -> Item {
        let sent = self.sent.pop_front().expect("one record per call");
        let stop;
        let item = match answer {
            Ok(response) => {
                let partial = match &response {
                    AppendEntriesResponse::PartialSuccess(matched) => Some(*matched),
                    _ => None,
                };
                let stop_early = partial.is_some_and(|m| m != sent.last);
                let result = response.into_stream_result(sent.prev, sent.last);
                stop = result.is_err() || stop_early;
                Ok(result)
            }
            Err(error) => {
                stop = true;
                Err(error)
            }
        };
        if stop {
            // Requests after it would be answered against a stream
            // openraft is about to replace.
            self.input = None;
            self.calls = FuturesOrdered::new();
            self.sent.clear();
        }
        item
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::{log_id, Entry, Vote};
    use openraft::entry::EntryPayload;
    use std::time::Duration;
    use tokio::sync::{mpsc, oneshot};
    use tokio_stream::wrappers::UnboundedReceiverStream;

    /// A request after index `prev` carrying entries `prev+1..=last`.
    fn request(prev: u64, last: u64) -> AppendEntriesRequest<TypeConfig> {
        AppendEntriesRequest {
            vote: Vote::new_committed(1, 1),
            prev_log_id: Some(log_id(1, 1, prev)),
            entries: (prev + 1..=last)
                .map(|index| Entry {
                    log_id: log_id(1, 1, index),
                    payload: EntryPayload::Blank,
                })
                .collect(),
            leader_commit: Some(log_id(1, 1, prev)),
        }
    }

    /// A request the stream sent: its `(prev, last)` indexes and where its
    /// answer goes.
    type Sent = ((u64, u64), oneshot::Sender<Answer>);

    struct Harness {
        input: mpsc::UnboundedSender<AppendEntriesRequest<TypeConfig>>,
        sent: mpsc::UnboundedReceiver<Sent>,
        results: mpsc::UnboundedReceiver<Item>,
    }

    impl Harness {
        /// A stream whose calls wait for the test to answer them, drained
        /// by a task of its own.
        fn start() -> Harness {
            let (input, requests) = mpsc::unbounded_channel();
            let (sent_tx, sent) = mpsc::unbounded_channel();
            let (results_tx, results) = mpsc::unbounded_channel();
            let call = move |request: AppendEntriesRequest<TypeConfig>| -> Call {
                let index = |id: Option<LogId>| id.map_or(0, |id| id.index);
                let prev = index(request.prev_log_id);
                let last = index(request.entries.last().map(|e| e.log_id)).max(prev);
                let (answer_tx, answer) = oneshot::channel();
                sent_tx.send(((prev, last), answer_tx)).expect("test alive");
                Box::pin(async move { answer.await.expect("test answers") })
            };
            let mut results_stream = Box::pin(stream(UnboundedReceiverStream::new(requests), call));
            tokio::spawn(async move {
                while let Some(item) = results_stream.next().await {
                    if results_tx.send(item).is_err() {
                        break;
                    }
                }
            });
            Harness {
                input,
                sent,
                results,
            }
        }

        /// The next request sent; it must be sent before everything is
        /// idle.
        async fn next_sent(&mut self) -> Sent {
            tokio::time::timeout(Duration::from_secs(1), self.sent.recv())
                .await
                .expect("a request is sent before the stream waits")
                .expect("the stream is alive")
        }

        /// Whether a further request is sent before everything is idle
        /// (time is paused: the timeout fires only then).
        async fn nothing_more_sent(&mut self) -> bool {
            // `Ok(None)`: the stream and its calls are gone.
            matches!(
                tokio::time::timeout(Duration::from_secs(1), self.sent.recv()).await,
                Err(_) | Ok(None)
            )
        }

        async fn next_result(&mut self) -> Option<Item> {
            self.results.recv().await
        }
    }

    /// Answers a sent request: the follower took it all.
    fn succeed(answer: oneshot::Sender<Answer>) {
        answer
            .send(Ok(AppendEntriesResponse::Success))
            .expect("the stream waits for it");
    }

    fn matched(item: Option<Item>) -> u64 {
        match item {
            Some(Ok(Ok(Some(id)))) => id.index,
            other => panic!("expected a success, got {other:?}"),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn entries_go_out_while_an_entry_less_request_is_in_flight() {
        let mut h = Harness::start();
        h.input.send(request(5, 5)).unwrap();
        h.input.send(request(5, 7)).unwrap();
        let (first, first_answer) = h.next_sent().await;
        let (second, second_answer) = h.next_sent().await;
        assert_eq!((first, second), ((5, 5), (5, 7)));
        // Answered out of order, yielded in order.
        succeed(second_answer);
        assert!(h.nothing_more_sent().await);
        assert!(h.results.try_recv().is_err(), "the later answer waits");
        succeed(first_answer);
        assert_eq!(matched(h.next_result().await), 5);
        assert_eq!(matched(h.next_result().await), 7);
    }

    #[tokio::test(start_paused = true)]
    async fn requests_with_entries_go_one_at_a_time() {
        let mut h = Harness::start();
        h.input.send(request(5, 6)).unwrap();
        h.input.send(request(6, 7)).unwrap();
        let (first, answer) = h.next_sent().await;
        assert_eq!(first, (5, 6));
        assert!(h.nothing_more_sent().await, "entries are in flight");
        succeed(answer);
        assert_eq!(matched(h.next_result().await), 6);
        let (second, answer) = h.next_sent().await;
        assert_eq!(second, (6, 7));
        succeed(answer);
        assert_eq!(matched(h.next_result().await), 7);
    }

    #[tokio::test(start_paused = true)]
    async fn no_more_than_two_requests_are_in_flight() {
        let mut h = Harness::start();
        for _ in 0..3 {
            h.input.send(request(5, 5)).unwrap();
        }
        let (_, first) = h.next_sent().await;
        let (_, second) = h.next_sent().await;
        assert!(h.nothing_more_sent().await);
        succeed(first);
        assert_eq!(matched(h.next_result().await), 5);
        let (_, third) = h.next_sent().await;
        succeed(second);
        succeed(third);
        assert_eq!(matched(h.next_result().await), 5);
        assert_eq!(matched(h.next_result().await), 5);
    }

    #[tokio::test(start_paused = true)]
    async fn a_conflict_ends_the_stream_and_drops_what_follows() {
        let mut h = Harness::start();
        h.input.send(request(5, 5)).unwrap();
        h.input.send(request(5, 6)).unwrap();
        let (_, first) = h.next_sent().await;
        let (_, _second) = h.next_sent().await;
        first.send(Ok(AppendEntriesResponse::Conflict)).unwrap();
        match h.next_result().await {
            Some(Ok(Err(openraft::raft::StreamAppendError::Conflict(id)))) => {
                assert_eq!(id.index, 5)
            }
            other => panic!("expected a conflict, got {other:?}"),
        }
        assert!(h.next_result().await.is_none(), "the stream ended");
        h.input.send(request(6, 7)).ok();
        assert!(h.nothing_more_sent().await);
    }

    #[tokio::test(start_paused = true)]
    async fn a_partial_success_ends_the_stream() {
        let mut h = Harness::start();
        h.input.send(request(5, 9)).unwrap();
        let (_, answer) = h.next_sent().await;
        answer
            .send(Ok(AppendEntriesResponse::PartialSuccess(Some(log_id(
                1, 1, 7,
            )))))
            .unwrap();
        assert_eq!(matched(h.next_result().await), 7);
        assert!(h.next_result().await.is_none());
    }
}
