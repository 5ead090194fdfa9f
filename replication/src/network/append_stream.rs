//! Pipelined replication: a leader's append-entries requests to one
//! follower travel on one gRPC stream, and the follower answers them in
//! order (openraft's `stream_append`).
//!
//! Why: with one unary call per request, openraft sends a follower its
//! next request only once the last is answered, so a write that arrives
//! while an entry-less request (a commit notice) is on its way waits a
//! round trip, and every request pays for an HTTP/2 stream of its own
//! (headers, a task, trailers). On a stream, requests go as soon as openraft
//! makes them, and each costs one message.
//!
//! ## Format (version 1)
//!
//! RPC `AppendStream(stream RaftMessage) returns (stream RaftMessage)` of
//! `proto/raft.proto`.
//! - Each request is a `RaftMessage` whose `payload` is
//!   `postcard(AppendEntriesRequest)`, with `from` and `to` as in unary
//!   calls; `status_url` is sent in the first only.
//! - Each answer is a `RaftMessage` whose `payload` is
//!   `postcard(Result<StreamAppendResult, String>)`: one per request, in
//!   request order. `Err(text)` is a fatal error of the follower's Raft
//!   (it is stopping); the stream ends after it.
//! - A request that cannot be decoded or is meant for another node ends
//!   the stream with `INVALID_ARGUMENT` or `FAILED_PRECONDITION` after the
//!   answers to the requests before it.
//! - Releases before it answer `UNIMPLEMENTED`. The leader then sends that
//!   peer's requests one by one with `AppendEntries`, as before.

use super::client::{unreachable, PeerClient, MIN_PEER_CALL_DEADLINE};
use super::pb::RaftMessage;
use super::server::RaftService;
use super::TransferStats;
use crate::types::{NodeId, TypeConfig};
use futures_util::{Stream, StreamExt};
use openraft::error::{NetworkError, RPCError, Unreachable};
use openraft::network::RPCOption;
use openraft::raft::{AppendEntriesRequest, StreamAppendResult};
use parking_lot::Mutex;
use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;
use tokio::time::Instant;
use tonic::{Status, Streaming};

type Answer = Result<StreamAppendResult<TypeConfig>, RPCError<TypeConfig>>;
pub(crate) type Answers<'s> = openraft::base::BoxStream<'s, Answer>;

/// What the follower sends back per request.
type WireAnswer = Result<StreamAppendResult<TypeConfig>, String>;

/// Whether a peer serves `AppendStream`, as far as this leader knows.
/// Shared by the clones of one peer's client; a new client tries again.
#[derive(Debug, Default)]
pub(crate) struct Support {
    unimplemented: AtomicBool,
}

impl Support {
    pub(crate) fn streams(&self) -> bool {
        !self.unimplemented.load(Ordering::Relaxed)
    }
}

/// The send times of requests not yet answered, oldest first: the oldest
/// bounds how long the answer may take.
#[derive(Default)]
struct InFlight {
    sent: Mutex<VecDeque<Instant>>,
    /// Signalled at each send, so that a wait for an answer with nothing in
    /// flight starts its clock when something is.
    more: Notify,
}

/// The leader's side: sends `first`, then what `rest` yields, on one
/// stream to `peer`, and yields the answers in order. Ends with an error
/// when an answer is late (the deadline of a unary call), the link is cut
/// (fault injection) or the stream breaks; openraft then starts another.
pub(crate) async fn send<'s, S>(
    peer: &'s mut PeerClient,
    first: AppendEntriesRequest<TypeConfig>,
    rest: S,
    option: &RPCOption,
) -> Result<Answers<'s>, RPCError<TypeConfig>>
where
    S: Stream<Item = AppendEntriesRequest<TypeConfig>> + Send + Unpin + 'static,
{
    let (from, to) = (peer.from, peer.target);
    let control = peer.factory.control.clone();
    let deadline = option.hard_ttl().max(MIN_PEER_CALL_DEADLINE);
    let in_flight = Arc::new(InFlight::default());
    let status_url = peer.factory.contact.own_status_url();
    let requests = {
        let in_flight = in_flight.clone();
        let cut = control.clone();
        let mut status_url = Some(status_url);
        futures_util::stream::iter([first])
            .chain(rest)
            // A cut link delivers nothing more; the answers to what went
            // before still count.
            .take_while(move |_| std::future::ready(!cut.is_cut(from, to)))
            .then(move |request| {
                let delay = control.delay_of(from, to);
                let encoded = postcard::to_stdvec(&request);
                let in_flight = in_flight.clone();
                let status_url = status_url.take().unwrap_or_default();
                async move {
                    if let Some(delay) = delay {
                        tokio::time::sleep(delay).await;
                    }
                    let payload = encoded
                        .map_err(|e| tracing::error!(to, "cannot encode an append: {e}"))
                        .ok()?;
                    in_flight.sent.lock().push_back(Instant::now());
                    in_flight.more.notify_one();
                    Some(RaftMessage {
                        from,
                        payload,
                        to,
                        status_url,
                    })
                }
            })
            // What cannot be encoded cannot be sent: the stream ends before
            // it, and openraft starts another (which fails the same way,
            // with its backoff) rather than skip an entry.
            .take_while(|message| std::future::ready(message.is_some()))
            .filter_map(std::future::ready)
    };
    let call = tokio::time::timeout(
        deadline,
        peer.client.clone().append_stream(Box::pin(requests)),
    )
    .await
    .map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
    let answers = match call {
        Ok(answers) => answers.into_inner(),
        Err(status) if status.code() == tonic::Code::Unimplemented => {
            // An older release: the next stream goes request by request.
            peer.support.unimplemented.store(true, Ordering::Relaxed);
            return Err(unreachable(&status));
        }
        Err(status) => return Err(peer.failed(&status)),
    };
    let state = Receiving {
        answers,
        in_flight,
        deadline,
        link: (from, to),
        peer,
        done: false,
    };
    Ok(Box::pin(futures_util::stream::unfold(
        state,
        Receiving::next,
    )))
}

struct Receiving<'s> {
    answers: Streaming<RaftMessage>,
    in_flight: Arc<InFlight>,
    deadline: Duration,
    link: (NodeId, NodeId),
    peer: &'s mut PeerClient,
    done: bool,
}

impl<'s> Receiving<'s> {
    async fn next(mut self) -> Option<(Answer, Self)> {
        if self.done {
            return None;
        }
        let answer = self.answer().await?;
        self.done = answer.is_err() || matches!(answer, Ok(Err(_)));
        Some((answer, self))
    }

    /// The next answer; `None` when the follower ended the stream cleanly.
    async fn answer(&mut self) -> Option<Answer> {
        let (from, to) = self.link;
        let message = loop {
            let oldest = self.in_flight.sent.lock().front().copied();
            let received = match oldest {
                Some(sent) => tokio::select! {
                    received = self.answers.message() => received,
                    () = tokio::time::sleep_until(sent + self.deadline) => {
                        return Some(Err(RPCError::Network(NetworkError::from_string(format!(
                            "no answer from peer {to} to an append within {:?}",
                            self.deadline
                        )))));
                    }
                },
                None => tokio::select! {
                    received = self.answers.message() => received,
                    () = self.in_flight.more.notified() => continue,
                },
            };
            break received;
        };
        let message = match message {
            Ok(Some(message)) => message,
            Ok(None) => return None,
            Err(status) => return Some(Err(self.peer.failed(&status))),
        };
        self.in_flight.sent.lock().pop_front();
        if self.peer.factory.control.is_cut(to, from) {
            return Some(Err(RPCError::Unreachable(Unreachable::from_string(
                format!("link {to} -> {from} is cut (answer lost)"),
            ))));
        }
        self.peer
            .factory
            .contact
            .record_status_url(to, &message.status_url);
        let answer: WireAnswer = match postcard::from_bytes(&message.payload) {
            Ok(answer) => answer,
            Err(error) => return Some(Err(unreachable(&error))),
        };
        Some(answer.map_err(|remote| RPCError::Network(NetworkError::from_string(remote))))
    }
}

/// The follower's side: hands the requests to the local Raft as they
/// come and sends its answers back in order.
pub(crate) fn receive(
    service: &RaftService,
    requests: Streaming<RaftMessage>,
) -> Pin<Box<dyn Stream<Item = Result<RaftMessage, Status>> + Send>> {
    let refusal = Arc::new(Mutex::new(None::<Status>));
    let decoded = {
        let refusal = refusal.clone();
        let contact = service.contact.clone();
        let stats = service.receiver.stats.clone();
        let me = service.id;
        let mut stopping = service.stopping.clone();
        requests
            .map(
                move |message| -> Result<AppendEntriesRequest<TypeConfig>, Status> {
                    let message = message?;
                    TransferStats::add(&stats.log_bytes_received, message.payload.len() as u64);
                    contact
                        .check_addressed(me, message.from, message.to)
                        .map_err(Status::failed_precondition)?;
                    contact.touch(message.from);
                    contact.record_status_url(message.from, &message.status_url);
                    postcard::from_bytes(&message.payload).map_err(|e| {
                        Status::invalid_argument(format!("undecodable raft message: {e}"))
                    })
                },
            )
            // The first refusal ends the input: what came before is
            // answered, then the refusal is the stream's end.
            .take_while(move |decoded| {
                let go = match decoded {
                    Ok(_) => true,
                    Err(status) => {
                        *refusal.lock() = Some(status.clone());
                        false
                    }
                };
                std::future::ready(go)
            })
            .filter_map(|decoded| std::future::ready(decoded.ok()))
            // Raft's stream task holds the core until its input ends.
            .take_until(async move {
                let _ = stopping.wait_for(|stopping| *stopping).await;
            })
    };
    let status_url = service.contact.own_status_url();
    let mut first = true;
    let answers = service.raft.stream_append(decoded).map(move |answer| {
        let answer: WireAnswer = answer.map_err(|fatal| fatal.to_string());
        let payload = postcard::to_stdvec(&answer).map_err(|e| Status::internal(e.to_string()))?;
        Ok(RaftMessage {
            from: 0,
            payload,
            to: 0,
            status_url: if std::mem::take(&mut first) {
                status_url.clone()
            } else {
                String::new()
            },
        })
    });
    let end = futures_util::stream::once(async move { refusal.lock().take() })
        .filter_map(|refusal| std::future::ready(refusal.map(Err)));
    Box::pin(answers.chain(end).fuse().boxed())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::log_id;
    use openraft::raft::StreamAppendError;

    /// Answers of format version 1, as this release writes them: a later
    /// release must decode these bytes to the same answers.
    #[test]
    fn answers_of_version_1_keep_their_encoding() {
        let answers: [(WireAnswer, &str); 4] = [
            (Ok(Ok(Some(log_id(3, 1, 42)))), "00000103012a"),
            (Ok(Ok(None)), "000000"),
            (
                Ok(Err(StreamAppendError::Conflict(log_id(2, 2, 7)))),
                "000100020207",
            ),
            (
                Err("the Raft core stopped".into()),
                "0115746865205261667420636f72652073746f70706564",
            ),
        ];
        let mut changed = Vec::new();
        for (answer, hex) in answers {
            let bytes: Vec<u8> = (0..hex.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
                .collect();
            let read: Result<WireAnswer, _> = postcard::from_bytes(&bytes);
            let written = postcard::to_stdvec(&answer).unwrap();
            if read.as_ref().ok() != Some(&answer) || written != bytes {
                let written: String = written.iter().map(|b| format!("{b:02x}")).collect();
                changed.push(format!("{answer:?} is now {written}, was {hex}"));
            }
        }
        assert!(
            changed.is_empty(),
            "the format changed:\n{}",
            changed.join("\n")
        );
    }
}
