//! The Watch service: changes of a key, range or prefix from a revision
//! on, in order, each once, from this member's history (see
//! `ferry_replication::watch`).
//!
//! Memory per watch is bounded: one batch of changes (about 256 KiB; a
//! larger revision whole up to 64 MiB, or in parts for a client that
//! asks with `split_revisions`) plus a few messages buffered towards the
//! client.
//! A client that reads slowly makes its watch fall behind, never grow; the
//! watch then reads the history from the engine when the client catches
//! up, and ends with OUT_OF_RANGE only if that history was compacted
//! meanwhile.

use super::{timed, Context};
use ferry_client::pb::{self, watch_server::Watch};
use ferry_engine::prefix_end;
use ferry_replication::auth::{Access, AccessKind};
use ferry_replication::state_machine::history::ChangeKind;
use ferry_replication::{WatchError, WatchEvent, WatchOptions};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

pub struct WatchService {
    pub context: Context,
    pub streams: Arc<crate::watch_slots::WatchSlots>,
    /// A watch that sent nothing for this long gets a progress
    /// notification (a message without events naming its revision).
    pub progress_interval: Duration,
}

/// Messages buffered towards a client that reads slowly.
const BUFFERED_MESSAGES: usize = 4;

/// How often a watch's credential and permission are checked again.
const RECHECK_EVERY: Duration = Duration::from_secs(1);

fn event(event: WatchEvent) -> pb::Event {
    let change = event.change;
    let kind = match change.kind {
        ChangeKind::Put => pb::event::Kind::Put,
        ChangeKind::Delete => pb::event::Kind::Delete,
    };
    pb::Event {
        kind: kind as i32,
        kv: Some(super::key_value(change.key_value())),
        prev_kv: event.prev.map(super::key_value),
    }
}

fn watch_status(error: WatchError) -> Status {
    match error {
        WatchError::Compacted(c) => ferry_client::compacted_status(c.requested, c.compacted),
        WatchError::Closed => Status::unavailable("the member is stopping"),
        WatchError::Storage(e) => Status::internal(format!("watch: {e}")),
        error @ WatchError::RevisionTooLarge { .. } => {
            Status::resource_exhausted(error.to_string())
        }
    }
}

type EventStream =
    Pin<Box<dyn tokio_stream::Stream<Item = Result<pb::WatchResponse, Status>> + Send>>;

impl WatchService {
    fn options(&self, request: pb::WatchRequest) -> Result<WatchOptions, Status> {
        let (start, end) = if !request.prefix.is_empty() {
            (request.prefix.clone(), prefix_end(&request.prefix))
        } else {
            self.context.check_key(&request.key)?;
            let end = if request.end.is_empty() {
                [request.key.as_slice(), &[0]].concat()
            } else {
                request.end
            };
            (request.key, Some(end))
        };
        let mut options = WatchOptions::range(start, end, request.start_revision);
        options.prev_kv = request.prev_kv;
        options.split_revisions = request.split_revisions;
        Ok(options)
    }
}

#[tonic::async_trait]
impl Watch for WatchService {
    type WatchStream = EventStream;

    async fn watch(
        &self,
        request: Request<pb::WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        timed(&self.context, "Watch", async {
            let credential = self.context.gate.credential(&request);
            let options = self.options(request.into_inner())?;
            let access = Access::Keys {
                kind: AccessKind::Read,
                start: options.start.clone(),
                end: options.end.clone(),
            };
            let principal = self.context.gate.check(&credential, &access)?;
            let permit = self
                .streams
                .take(principal.user.as_deref())
                .map_err(Status::resource_exhausted)?;
            let mut watcher = self.context.node.watch(options).map_err(watch_status)?;
            let (sender, receiver) = mpsc::channel(BUFFERED_MESSAGES);
            let context = self.context.clone();
            let progress_interval = self.progress_interval;
            tokio::spawn(async move {
                let _permit = permit;
                let _open = context.metrics.open_stream("watch");
                let message = |events, revision| pb::WatchResponse {
                    header: context.header(revision),
                    events,
                };
                // The watch's revision at once: a client resuming later
                // starts after it, even if no change ever matches.
                if !context
                    .send(&sender, Ok(message(Vec::new(), watcher.revision())))
                    .await
                {
                    return;
                }
                let stopped = context.stopped();
                tokio::pin!(stopped);
                let mut checked = tokio::time::Instant::now();
                loop {
                    let next = tokio::select! {
                        next = watcher.next() => Some(next),
                        () = tokio::time::sleep(progress_interval) => None,
                        // Else a graceful stop would wait for the watcher to
                        // hang up.
                        () = &mut stopped => {
                            let status = Status::unavailable(format!(
                                "the server is stopping; resume from revision {}",
                                watcher.revision() + 1
                            ));
                            let _ = context.send(&sender, Err(status)).await;
                            return;
                        }
                        // The watcher hung up: free its place now, not at
                        // the next matching change, which may never come.
                        () = sender.closed() => return,
                    };
                    let reply = match next {
                        // Quiet for an interval: say how far it is complete.
                        None => Ok(message(Vec::new(), watcher.revision())),
                        Some(Ok(batch)) => {
                            let events = batch.events.into_iter().map(event).collect();
                            Ok(message(events, batch.revision))
                        }
                        Some(Err(error)) => Err(watch_status(error)),
                    };
                    // Checked again as the watch goes on: when its token
                    // expires (the SDK resumes with a new one), or its user
                    // loses the permission, it ends, as a new call would be
                    // refused.
                    let reply = if checked.elapsed() >= RECHECK_EVERY {
                        checked = tokio::time::Instant::now();
                        context.gate.check(&credential, &access).and(reply)
                    } else {
                        reply
                    };
                    let failed = reply.is_err();
                    if !context.send(&sender, reply).await || failed {
                        return;
                    }
                }
            });
            Ok(Response::new(
                Box::pin(ReceiverStream::new(receiver)) as EventStream
            ))
        })
        .await
    }
}
