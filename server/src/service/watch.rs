//! The Watch service: changes of a key, range or prefix, in order.

use super::kv::prefix_end;
use super::{timed, Context};
use ferry_client::pb::{self, watch_server::Watch};
use ferry_replication::state_machine::changes::Change;
use std::pin::Pin;
use std::sync::Arc;
use tokio::sync::{broadcast, mpsc, Semaphore};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

pub struct WatchService {
    pub context: Context,
    pub streams: Arc<Semaphore>,
}

/// Which keys a watch follows.
struct Matcher {
    start: Vec<u8>,
    /// Exclusive end; `None` = to the end of the key space.
    end: Option<Vec<u8>>,
}

impl Matcher {
    fn matches(&self, key: &[u8]) -> bool {
        key >= self.start.as_slice() && self.end.as_ref().is_none_or(|e| key < e.as_slice())
    }
}

fn event(change: &Change) -> pb::Event {
    let (kind, value) = match &change.value {
        Some(value) => (pb::event::Kind::Put, value.clone()),
        None => (pb::event::Kind::Delete, Vec::new()),
    };
    pb::Event {
        kind: kind as i32,
        kv: Some(pb::KeyValue {
            key: change.key.clone(),
            value,
            create_revision: change.create_revision,
            mod_revision: change.revision,
            version: change.version,
        }),
    }
}

type EventStream =
    Pin<Box<dyn tokio_stream::Stream<Item = Result<pb::WatchResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Watch for WatchService {
    type WatchStream = EventStream;

    async fn watch(
        &self,
        request: Request<pb::WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        timed(&self.context, "Watch", async {
            let request = request.into_inner();
            let matcher = if !request.prefix.is_empty() {
                Matcher {
                    end: prefix_end(&request.prefix),
                    start: request.prefix,
                }
            } else {
                self.context.check_key(&request.key)?;
                let end = if request.end.is_empty() {
                    Some([request.key.as_slice(), &[0]].concat())
                } else {
                    Some(request.end)
                };
                Matcher {
                    start: request.key,
                    end,
                }
            };
            let permit = self.streams.clone().try_acquire_owned().map_err(|_| {
                Status::resource_exhausted(format!(
                    "max_watch_streams = {} watches are open",
                    self.context.limits.max_watch_streams
                ))
            })?;
            let (backlog, mut live) = self
                .context
                .node
                .state()
                .changes()
                .subscribe(request.start_revision)
                .map_err(|e| Status::out_of_range(e.to_string()))?;
            let (sender, receiver) = mpsc::channel(64);
            let context = self.context.clone();
            tokio::spawn(async move {
                let _permit = permit;
                let _open = context.metrics.open_stream("watch");
                let mut last = 0;
                let events: Vec<pb::Event> = backlog
                    .iter()
                    .filter(|c| matcher.matches(&c.key))
                    .inspect(|c| last = c.revision)
                    .map(|c| event(c))
                    .collect();
                if !events.is_empty() {
                    let message = pb::WatchResponse {
                        header: context.header(last),
                        events,
                    };
                    if !context.send(&sender, Ok(message)).await {
                        return;
                    }
                }
                let stopped = context.stopped();
                tokio::pin!(stopped);
                loop {
                    let received = tokio::select! {
                        received = live.recv() => received.map_err(Some),
                        // Else a graceful stop would wait for the watcher to
                        // hang up.
                        () = &mut stopped => Err(None),
                        // The watcher hung up: free its place now, not at
                        // the next matching change, which may never come.
                        () = sender.closed() => return,
                    };
                    let reason = match received {
                        Ok(change) => Ok(change),
                        // The watcher fell behind the feed.
                        Err(Some(broadcast::error::RecvError::Lagged(missed))) => {
                            Err(format!("watch fell {missed} changes behind"))
                        }
                        Err(Some(broadcast::error::RecvError::Closed)) => return,
                        Err(None) => Err("the server is stopping".to_owned()),
                    };
                    let change = match reason {
                        Ok(change) => change,
                        Err(reason) => {
                            // End the stream with a clear error; the SDK
                            // resumes from the last revision it saw, on
                            // another member if need be, if still retained.
                            let resume = format!("{reason}; resume from revision {}", last + 1);
                            let _ = context
                                .send(&sender, Err(Status::unavailable(resume)))
                                .await;
                            return;
                        }
                    };
                    if change.revision <= last || !matcher.matches(&change.key) {
                        continue;
                    }
                    last = change.revision;
                    let message = pb::WatchResponse {
                        header: context.header(change.revision),
                        events: vec![event(&change)],
                    };
                    if !context.send(&sender, Ok(message)).await {
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
