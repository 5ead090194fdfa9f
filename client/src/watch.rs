//! Watches that survive failovers.

use crate::client::Client;
use crate::error::{Error, Result};
use crate::pb::{watch_client::WatchClient, Event, WatchRequest};
use futures_util::Stream;
use std::collections::HashSet;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::sync::mpsc;
use tonic::Code;

/// A stream of changes; on a broken connection it reconnects (to any member
/// that knows the leader) and resumes after the last revision delivered, so
/// no change is skipped or repeated. A member keeps its change history in
/// memory, so one that restarted may no longer hold the revision to resume
/// from; the stream then resumes on another member, and ends with
/// [`Error::Compacted`] only when no known member holds it.
pub struct WatchStream {
    events: mpsc::Receiver<Result<Event>>,
    task: tokio::task::JoinHandle<()>,
}

impl WatchStream {
    pub(crate) fn start(client: Client, request: WatchRequest) -> WatchStream {
        let (sender, events) = mpsc::channel(256);
        let task = tokio::spawn(run(client, request, sender));
        WatchStream { events, task }
    }
}

impl Drop for WatchStream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Stream for WatchStream {
    type Item = Result<Event>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.events.poll_recv(cx)
    }
}

/// Where to watch from: the leader, unless it answered that it no longer
/// holds the revision, then any other known member that has not.
fn watch_target(client: &Client, compacted: &HashSet<String>) -> Option<String> {
    if let Some(leader) = client.leader().filter(|l| !compacted.contains(l)) {
        return Some(leader);
    }
    let endpoints = client.inner.endpoints.lock().expect("lock");
    endpoints.iter().find(|e| !compacted.contains(*e)).cloned()
}

async fn run(client: Client, mut request: WatchRequest, sender: mpsc::Sender<Result<Event>>) {
    let mut backoff = client.inner.options.backoff_initial;
    // Members that answered OUT_OF_RANGE for the current start revision.
    let mut compacted: HashSet<String> = HashSet::new();
    let mut last_refusal = String::new();
    loop {
        if client.leader().is_none() {
            let _ = client.refresh_members().await;
        }
        let Some(target) = watch_target(&client, &compacted) else {
            let _ = sender.send(Err(Error::Compacted(last_refusal))).await;
            return;
        };
        let attempt = async {
            let channel = client
                .channel(&target)
                .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
            WatchClient::new(channel).watch(request.clone()).await
        };
        match attempt.await {
            Ok(response) => {
                let mut stream = response.into_inner();
                backoff = client.inner.options.backoff_initial;
                loop {
                    match stream.message().await {
                        Ok(Some(message)) => {
                            for event in message.events {
                                let revision = event.kv.as_ref().map_or(0, |kv| kv.mod_revision);
                                if sender.send(Ok(event)).await.is_err() {
                                    return;
                                }
                                request.start_revision = revision + 1;
                                compacted.clear();
                            }
                        }
                        Ok(None) => break,
                        Err(status) if status.code() == Code::OutOfRange => {
                            last_refusal = status.message().into();
                            compacted.insert(target.clone());
                            break;
                        }
                        Err(_) => break,
                    }
                }
            }
            Err(status) if status.code() == Code::OutOfRange => {
                last_refusal = status.message().into();
                compacted.insert(target.clone());
                continue;
            }
            Err(_) => {}
        }
        // The member went away or lost leadership: find the leader again.
        let _ = client.refresh_members().await;
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(
            client
                .inner
                .options
                .backoff_max
                .max(Duration::from_millis(10)),
        );
    }
}
