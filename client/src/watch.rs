//! Watches that survive failovers and restarts.

use crate::client::Client;
use crate::error::{Error, Result};
use crate::pb::{watch_client::WatchClient, Event, WatchRequest};
use futures_util::Stream;
use std::collections::HashSet;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::sync::mpsc;
use tonic::Code;

/// A watch answer holds about 512 KiB of changes, and one change may be
/// a value of up to the server's request size with its previous version:
/// more than tonic's 4 MiB default.
const MAX_WATCH_MESSAGE_BYTES: usize = 64 << 20;

/// A stream of changes in revision order, each once. On a broken
/// connection it reconnects (to the leader if known, else any member) and
/// resumes after the last revision it knows complete, so no change is
/// skipped or repeated: members keep their history on disk, so any of them
/// can serve the resume, across failovers and restarts. It ends with
/// [`Error::Compacted`] only when the history it needs was compacted.
///
/// Polling it is cancel-safe, and dropping it ends its stream on the
/// server at once.
pub struct WatchStream {
    events: mpsc::Receiver<Result<Event>>,
    progress: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl WatchStream {
    pub(crate) fn start(client: Client, mut request: WatchRequest) -> WatchStream {
        // The stream takes a large revision in parts (see `run`), so that
        // none is too large for a message.
        request.split_revisions = true;
        let (sender, events) = mpsc::channel(256);
        let progress = Arc::new(AtomicU64::new(request.start_revision.saturating_sub(1)));
        let task = tokio::spawn(run(client, request, sender, progress.clone()));
        WatchStream {
            events,
            progress,
            task,
        }
    }

    /// Every matching change up to this revision has been received by the
    /// stream (it may still wait in the stream's buffer): it moves with
    /// events and with the server's progress notifications, which a quiet
    /// watch gets every few seconds. A watch whose revision keeps up with
    /// the cluster's is up to date; one whose revision stands still is
    /// stalled or disconnected.
    pub fn revision(&self) -> u64 {
        self.progress.load(Ordering::Acquire)
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

/// Where to watch from: the leader, unless it answered that it does not
/// hold the revision, then any other known member that has not.
fn watch_target(client: &Client, refused: &HashSet<String>) -> Option<String> {
    if let Some(leader) = client.leader().filter(|l| !refused.contains(l)) {
        return Some(leader);
    }
    let endpoints = client.inner.endpoints.lock().expect("lock");
    endpoints.iter().find(|e| !refused.contains(*e)).cloned()
}

async fn run(
    client: Client,
    mut request: WatchRequest,
    sender: mpsc::Sender<Result<Event>>,
    progress: Arc<AtomicU64>,
) {
    let mut backoff = client.inner.options.backoff_initial;
    // Members that answered OUT_OF_RANGE for the current start revision
    // (one restored from an older backup may hold less history).
    let mut refused: HashSet<String> = HashSet::new();
    let mut last_refusal = None;
    // Whether the last attempt's token was refused: a second refusal in a
    // row ends the watch.
    let mut token_refused = false;
    // The revision of the last event sent on, and how many of its events
    // were. A resume starts at the first revision not known complete,
    // from its first event: those of a split revision sent on already
    // come again, in the same order, and are skipped.
    let mut last = (0u64, 0u64);
    loop {
        if client.leader().is_none() {
            let _ = client.refresh_members().await;
        }
        let Some(target) = watch_target(&client, &refused) else {
            let error = last_refusal.unwrap_or(Error::Compacted {
                requested: request.start_revision,
                compacted: 0,
            });
            let _ = sender.send(Err(error)).await;
            return;
        };
        let attempt = async {
            let channel = client
                .channel(&target)
                .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
            client.ensure_token(&channel).await?;
            WatchClient::new(channel)
                .max_decoding_message_size(MAX_WATCH_MESSAGE_BYTES)
                .watch(request.clone())
                .await
        };
        let ended = match attempt.await {
            Ok(response) => {
                let mut stream = response.into_inner();
                backoff = client.inner.options.backoff_initial;
                token_refused = false;
                let resumed_at = request.start_revision;
                let mut skip = if last.0 == resumed_at { last.1 } else { 0 };
                loop {
                    match stream.message().await {
                        Ok(Some(message)) => {
                            for event in message.events {
                                let revision = event.kv.as_ref().map_or(0, |kv| kv.mod_revision);
                                if skip > 0 && revision == resumed_at {
                                    skip -= 1;
                                    continue;
                                }
                                skip = 0;
                                if revision == last.0 {
                                    last.1 += 1;
                                } else {
                                    last = (revision, 1);
                                }
                                if sender.send(Ok(event)).await.is_err() {
                                    return;
                                }
                            }
                            // Everything up to the header's revision has
                            // arrived (events after it are a split
                            // revision's first part).
                            let through = message.header.map_or(0, |h| h.revision);
                            if through >= request.start_revision {
                                request.start_revision = through + 1;
                                progress.store(through, Ordering::Release);
                                refused.clear();
                            }
                        }
                        Ok(None) => break None,
                        Err(status) => break Some(status),
                    }
                }
            }
            Err(status) => Some(status),
        };
        if let Some(status) = ended {
            match status.code() {
                Code::OutOfRange => {
                    last_refusal = Some(crate::status::out_of_range(&status));
                    refused.insert(target.clone());
                    continue;
                }
                Code::Unauthenticated
                    if client.inner.options.credentials.is_some() && !token_refused =>
                {
                    // The token expired: a new one, and resume.
                    token_refused = true;
                    client.drop_token();
                    continue;
                }
                Code::Unauthenticated => {
                    let error = Error::Unauthenticated(status.message().into());
                    let _ = sender.send(Err(error)).await;
                    return;
                }
                Code::PermissionDenied => {
                    let error = Error::PermissionDenied(status.message().into());
                    let _ = sender.send(Err(error)).await;
                    return;
                }
                // The request itself is refused (an empty or too long key):
                // every member would refuse it again.
                Code::InvalidArgument => {
                    let error = Error::Server {
                        code: Code::InvalidArgument,
                        message: status.message().into(),
                    };
                    let _ = sender.send(Err(error)).await;
                    return;
                }
                _ => {}
            }
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
