//! etcd's Watch service: one two-way stream carries many watches, created
//! and cancelled by the client, each served from the node's history like
//! Ferry's own watch (`crate::service::watch`).
//!
//! Memory per stream is bounded: each watch holds one batch of changes
//! (about 256 KiB), and all of a stream's watches share a few buffered
//! messages towards the client. A client that reads slowly makes its
//! watches fall behind, never grow; they read the history from the engine
//! when it catches up.
//!
//! A revision much larger than a batch (a range delete or a lease revoke
//! with `prev_kv`, a large transaction) goes in parts to a watch created
//! with `fragment`: messages marked `fragment` but the last, which etcd's
//! clients join into one answer. They join only parts that no other
//! answer of the stream comes between, so a watch sending parts holds the
//! stream's [`Outbox`] until its last. Without `fragment`, a revision goes
//! whole in one message, as etcd sends it, up to 64 MiB
//! (`MAX_WHOLE_REVISION_BYTES`); a larger one cancels the watch with a
//! reason that names `fragment`.

use super::pb::{etcdserverpb as rpc, mvccpb};
use super::{key_range, key_value, message, to_i64, to_u64, Etcd};
use crate::auth::Credential;
use ferry_replication::auth::{Access, AccessKind};
use ferry_replication::state_machine::history::ChangeKind;
use ferry_replication::{WatchError, WatchEvent, WatchOptions};
use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, Mutex, OwnedMutexGuard};
use tokio::task::JoinHandle;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt;
use tonic::{Request, Response, Status, Streaming};

/// Messages buffered towards a client that reads slowly, for all of a
/// stream's watches together.
const BUFFERED_MESSAGES: usize = 8;

/// How often a watch's credential and permission are checked again.
const RECHECK_EVERY: Duration = Duration::from_secs(1);

/// etcd's `clientv3.InvalidWatchID`: the watch id of a stream-wide
/// progress answer and of a refused create.
const INVALID_WATCH_ID: i64 = -1;

pub struct WatchService {
    pub etcd: Etcd,
    /// Watches open at once, over all streams and both APIs.
    pub watches: Arc<crate::watch_slots::WatchSlots>,
    /// A watch that asked for progress notifications and sent nothing for
    /// this long gets one.
    pub progress_interval: Duration,
}

type Answer = Result<rpc::WatchResponse, Status>;
type AnswerStream = Pin<Box<dyn tokio_stream::Stream<Item = Answer> + Send>>;

/// A stream's way to its client, shared by its watches: one answer at a
/// time, or one watch's parts of a fragmented answer together.
#[derive(Clone)]
struct Outbox {
    sender: mpsc::Sender<Answer>,
    turn: Arc<Mutex<()>>,
}

impl Outbox {
    fn new(sender: mpsc::Sender<Answer>) -> Self {
        Outbox {
            sender,
            turn: Arc::new(Mutex::new(())),
        }
    }

    /// Sends one answer, after any fragmented answer under way; false if
    /// the client or the server is gone.
    async fn send(&self, etcd: &Etcd, answer: Answer) -> bool {
        let _turn = self.turn.lock().await;
        etcd.context.send(&self.sender, answer).await
    }

    /// The outbox to oneself until the guard is dropped: for the parts of
    /// a fragmented answer.
    async fn hold(&self) -> OwnedMutexGuard<()> {
        self.turn.clone().lock_owned().await
    }
}

/// One open watch of a stream.
struct Open {
    task: JoinHandle<()>,
    /// Every matching change up to this revision has been sent.
    revision: Arc<AtomicU64>,
}

/// What a create request asks for, checked.
struct Create {
    options: WatchOptions,
    access: Access,
    no_put: bool,
    no_delete: bool,
    progress_notify: bool,
}

impl WatchService {
    fn create(&self, request: &rpc::WatchCreateRequest) -> Result<Create, Status> {
        // etcd watches from the smallest key, 0x00, when none is given (so
        // an empty key with range end "\0" watches every key).
        let key: &[u8] = if request.key.is_empty() {
            &[0]
        } else {
            &request.key
        };
        self.etcd.check_key(key)?;
        let (start, end) = key_range(key, &request.range_end);
        let mut options = WatchOptions::range(
            start.clone(),
            end.clone(),
            to_u64(request.start_revision, "start_revision")?,
        );
        options.prev_kv = request.prev_kv;
        options.split_revisions = request.fragment;
        let mut no_put = false;
        let mut no_delete = false;
        for filter in &request.filters {
            match rpc::watch_create_request::FilterType::try_from(*filter) {
                Ok(rpc::watch_create_request::FilterType::Noput) => no_put = true,
                Ok(rpc::watch_create_request::FilterType::Nodelete) => no_delete = true,
                Err(_) => return Err(Status::invalid_argument("unknown watch filter")),
            }
        }
        Ok(Create {
            options,
            access: Access::Keys {
                kind: AccessKind::Read,
                start,
                end,
            },
            no_put,
            no_delete,
            progress_notify: request.progress_notify,
        })
    }
}

/// A stream's state: its watches, by id.
struct Stream {
    etcd: Etcd,
    credential: Credential,
    answers: Outbox,
    watches: HashMap<i64, Open>,
    next_id: i64,
}

impl Stream {
    async fn send(&self, answer: Answer) -> bool {
        self.answers.send(&self.etcd, answer).await
    }

    fn answer(&self, watch_id: i64, revision: u64) -> rpc::WatchResponse {
        rpc::WatchResponse {
            header: self.etcd.header(revision),
            watch_id,
            ..rpc::WatchResponse::default()
        }
    }

    /// An id the client did not choose: the lowest unused from `next_id`.
    fn free_id(&mut self) -> i64 {
        while self.watches.contains_key(&self.next_id) {
            // After a client's own `i64::MAX`, from 0 again (a stream holds
            // few watches, so one is free).
            self.next_id = self.next_id.checked_add(1).unwrap_or(0);
        }
        self.next_id
    }

    /// Ends the watches whose task ended (an error, or the client gone).
    fn reap(&mut self) {
        self.watches.retain(|_, open| !open.task.is_finished());
    }
}

impl WatchService {
    /// Handles a create request; false if the stream is to end.
    async fn open(&self, stream: &mut Stream, request: rpc::WatchCreateRequest) -> bool {
        stream.reap();
        let id = if request.watch_id > 0 {
            request.watch_id
        } else {
            stream.free_id()
        };
        let applied = self.etcd.context.applied();
        // A create that is refused is answered as etcd does: created and
        // cancelled, under watch id -1 (its clients match it to their
        // oldest create waiting for an answer).
        let refuse = |reason: String| rpc::WatchResponse {
            header: self.etcd.header(applied),
            watch_id: INVALID_WATCH_ID,
            created: true,
            canceled: true,
            cancel_reason: reason,
            ..rpc::WatchResponse::default()
        };
        if stream.watches.contains_key(&id) {
            return stream
                .send(Ok(refuse(
                    "mvcc: duplicate watch ID provided on the WatchStream".into(),
                )))
                .await;
        }
        let create = match self.create(&request) {
            Ok(create) => create,
            Err(status) => return stream.send(Ok(refuse(status.message().to_owned()))).await,
        };
        let principal = match self
            .etcd
            .context
            .gate
            .check(&stream.credential, &create.access)
        {
            Ok(principal) => principal,
            Err(status) => {
                // As the text of Go's gRPC error: etcd's clients compare
                // the whole of it to know that a new token may help.
                let status = super::gate_status(status);
                let reason = format!(
                    "rpc error: code = {:?} desc = {}",
                    status.code(),
                    status.message()
                );
                return stream.send(Ok(refuse(reason))).await;
            }
        };
        let permit = match self.watches.take(principal.user.as_deref()) {
            Ok(permit) => permit,
            Err(why) => return stream.send(Ok(refuse(why))).await,
        };
        let watcher = match self.etcd.context.node.watch(create.options.clone()) {
            Ok(watcher) => watcher,
            Err(WatchError::Compacted(c)) => {
                // etcd: created, then, in an answer of its own, cancelled
                // with the compacted revision (its clients take a created
                // and cancelled answer for a refusal, without it).
                let mut created = stream.answer(id, applied);
                created.created = true;
                if !stream.send(Ok(created)).await {
                    return false;
                }
                let mut cancelled = stream.answer(id, applied);
                cancelled.canceled = true;
                cancelled.compact_revision = to_i64(c.compacted);
                cancelled.cancel_reason = message::COMPACTED.into();
                // The id was handed out: the next watch must not get it (a
                // client's cancel of this one would end that one).
                stream.next_id = stream.next_id.max(id.saturating_add(1));
                return stream.send(Ok(cancelled)).await;
            }
            Err(error) => return stream.send(Ok(refuse(error.to_string()))).await,
        };
        let mut created = stream.answer(id, watcher.revision());
        created.created = true;
        if !stream.send(Ok(created)).await {
            return false;
        }
        // Raised by the watcher as it reads past changes that do not match,
        // and by the pump once it has sent a batch.
        let revision = watcher.progress();
        let task = tokio::spawn(pump(
            Pump {
                etcd: self.etcd.clone(),
                credential: stream.credential.clone(),
                answers: stream.answers.clone(),
                id,
                create,
                revision: revision.clone(),
                progress_interval: self.progress_interval,
            },
            watcher,
            permit,
        ));
        stream.next_id = stream.next_id.max(id.saturating_add(1));
        stream.watches.insert(id, Open { task, revision });
        true
    }
}

/// What a watch's task needs.
struct Pump {
    etcd: Etcd,
    credential: Credential,
    answers: Outbox,
    id: i64,
    create: Create,
    revision: Arc<AtomicU64>,
    progress_interval: Duration,
}

/// Sends one watch's events until it ends: cancelled (the task is
/// aborted), the stream closed, the server stopping, or an error.
async fn pump(
    pump: Pump,
    mut watcher: ferry_replication::Watcher,
    _permit: crate::watch_slots::WatchSlot,
) {
    let context = &pump.etcd.context;
    let _open = context.metrics.open_stream("etcd.watch");
    let mut checked = tokio::time::Instant::now();
    let stopped = context.stopped();
    tokio::pin!(stopped);
    // Held while this watch sends the parts of a fragmented answer.
    let mut parts: Option<OwnedMutexGuard<()>> = None;
    loop {
        let next = tokio::select! {
            next = watcher.next() => Some(next),
            () = tokio::time::sleep(pump.progress_interval),
                if pump.create.progress_notify && parts.is_none() => None,
            () = &mut stopped => return,
            () = pump.answers.sender.closed() => return,
        };
        let mut answer = rpc::WatchResponse {
            watch_id: pump.id,
            ..rpc::WatchResponse::default()
        };
        let mut sent = watcher.revision();
        match next {
            None => answer.header = pump.etcd.header(watcher.revision()),
            Some(Ok(batch)) => {
                sent = batch.revision;
                // A part names the revision it ends in, which the rest of
                // the answer completes (as etcd's header, at or above its
                // events).
                let last = batch.events.last().map_or(0, |e| e.change.revision);
                answer.header = pump.etcd.header(batch.revision.max(last));
                answer.fragment = !batch.complete();
                answer.events = batch
                    .events
                    .into_iter()
                    .filter(|e| match e.change.kind {
                        ChangeKind::Put => !pump.create.no_put,
                        ChangeKind::Delete => !pump.create.no_delete,
                    })
                    .map(event)
                    .collect();
                // A part whose changes were all filtered out says nothing
                // the client asked for; the last part of an answer whose
                // first parts went out still ends it.
                if answer.events.is_empty() && (parts.is_none() || answer.fragment) {
                    if !answer.fragment {
                        pump.revision.fetch_max(sent, Ordering::AcqRel);
                    }
                    continue;
                }
            }
            Some(Err(WatchError::Compacted(c))) => {
                answer.header = pump.etcd.header(watcher.revision());
                answer.canceled = true;
                answer.compact_revision = to_i64(c.compacted);
                answer.cancel_reason = message::COMPACTED.into();
                send(&pump, &mut parts, answer).await;
                return;
            }
            Some(Err(error)) => {
                answer.header = pump.etcd.header(watcher.revision());
                answer.canceled = true;
                answer.cancel_reason = error.to_string();
                send(&pump, &mut parts, answer).await;
                return;
            }
        }
        // Checked again as the watch goes on: a user who lost the
        // permission, or was deleted or changed password, loses the watch.
        // Not one whose token expired: etcd checks a watch's token only
        // when it is created, and its clients renew tokens only for new
        // calls, so a long watch would end silently.
        if checked.elapsed() >= RECHECK_EVERY {
            checked = tokio::time::Instant::now();
            let still = context
                .gate
                .check_continuing(&pump.credential, &pump.create.access);
            if let Err(status) = still {
                answer.events.clear();
                answer.fragment = false;
                answer.canceled = true;
                answer.cancel_reason = super::gate_status(status).message().to_owned();
                send(&pump, &mut parts, answer).await;
                return;
            }
        }
        let more = answer.fragment;
        if more && parts.is_none() {
            parts = Some(pump.answers.hold().await);
        }
        if !send(&pump, &mut parts, answer).await {
            return;
        }
        if !more {
            // The answer is whole: other answers may go out again, and
            // only now may a progress answer report it.
            parts = None;
            pump.revision.fetch_max(sent, Ordering::AcqRel);
        }
    }
}

/// Sends one of a watch's answers: at once while it holds the outbox for
/// the parts of a fragmented answer, else in its turn.
async fn send(
    pump: &Pump,
    parts: &mut Option<OwnedMutexGuard<()>>,
    answer: rpc::WatchResponse,
) -> bool {
    match parts {
        Some(_) => {
            pump.etcd
                .context
                .send(&pump.answers.sender, Ok(answer))
                .await
        }
        None => pump.answers.send(&pump.etcd, Ok(answer)).await,
    }
}

/// The node's event as etcd's.
fn event(event: WatchEvent) -> mvccpb::Event {
    let kind = match event.change.kind {
        ChangeKind::Put => mvccpb::event::EventType::Put,
        ChangeKind::Delete => mvccpb::event::EventType::Delete,
    };
    let mut kv = key_value(event.change.key_value());
    if kind == mvccpb::event::EventType::Delete {
        // etcd's delete event holds the key and its revision only.
        kv = mvccpb::KeyValue {
            key: kv.key,
            mod_revision: kv.mod_revision,
            ..mvccpb::KeyValue::default()
        };
    }
    mvccpb::Event {
        r#type: kind as i32,
        kv: Some(kv),
        prev_kv: event.prev.map(key_value),
    }
}

#[tonic::async_trait]
impl rpc::watch_server::Watch for WatchService {
    type WatchStream = AnswerStream;

    async fn watch(
        &self,
        request: Request<Streaming<rpc::WatchRequest>>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let credential = self.etcd.context.gate.credential(&request);
        // The stream itself needs a valid credential; each watch is checked
        // against its keys when it is created.
        self.etcd
            .context
            .gate
            .check(&credential, &Access::Any)
            .map_err(super::gate_status)?;
        let mut requests = request.into_inner();
        let (sender, receiver) = mpsc::channel(BUFFERED_MESSAGES);
        let answers = Outbox::new(sender);
        let service = WatchService {
            etcd: self.etcd.clone(),
            watches: self.watches.clone(),
            progress_interval: self.progress_interval,
        };
        tokio::spawn(async move {
            let mut stream = Stream {
                etcd: service.etcd.clone(),
                credential,
                answers,
                watches: HashMap::new(),
                next_id: 0,
            };
            loop {
                let next = tokio::select! {
                    next = requests.next() => next,
                    () = service.etcd.context.stopped() => None,
                    () = stream.answers.sender.closed() => None,
                };
                let Some(Ok(request)) = next else { break };
                use rpc::watch_request::RequestUnion as U;
                let go_on = match request.request_union {
                    Some(U::CreateRequest(create)) => service.open(&mut stream, create).await,
                    Some(U::CancelRequest(cancel)) => {
                        // etcd answers the cancel of a watch it has, and
                        // says nothing about an id it does not.
                        match stream.watches.remove(&cancel.watch_id) {
                            Some(open) => {
                                open.task.abort();
                                let revision = service.etcd.context.applied();
                                let mut answer = stream.answer(cancel.watch_id, revision);
                                answer.canceled = true;
                                stream.send(Ok(answer)).await
                            }
                            None => true,
                        }
                    }
                    Some(U::ProgressRequest(_)) => {
                        stream.reap();
                        // Complete up to the slowest watch's revision (or
                        // the applied one if there is none).
                        let revision = stream
                            .watches
                            .values()
                            .map(|open| open.revision.load(Ordering::Acquire))
                            .min()
                            .unwrap_or_else(|| service.etcd.context.applied());
                        let answer = stream.answer(INVALID_WATCH_ID, revision);
                        stream.send(Ok(answer)).await
                    }
                    None => {
                        stream
                            .send(Err(Status::invalid_argument("a watch request of no kind")))
                            .await
                    }
                };
                if !go_on {
                    break;
                }
            }
            for (_, open) in stream.watches.drain() {
                open.task.abort();
            }
        });
        Ok(Response::new(
            Box::pin(ReceiverStream::new(receiver)) as AnswerStream
        ))
    }
}
