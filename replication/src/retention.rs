//! Keeping the revision history within bounds: the automatic compaction
//! policy, and the purge steps that remove what a compaction cut off.
//!
//! Both run on the leader only, as proposals: every member applies the
//! same `Compact` and `PurgeHistory` commands at the same log index, so
//! all hold the same history. A new leader picks up a purge where the
//! state says it stands.

use crate::state_machine::{history, SmShared};
use crate::types::{now_ms, Command, Raft};
use openraft::async_runtime::WatchReceiver;
use openraft::ServerState;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;

/// How much history the leader keeps (a workflow store replays recent
/// history after restarts and for analysis; unbounded history would
/// grow the disk without end).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetentionOptions {
    /// History beyond the newest this many revisions is compacted (0: no
    /// bound by count).
    pub keep_revisions: u64,
    /// History older than this is compacted (zero: no bound by age). Ages
    /// come from the proposing leaders' clocks.
    pub keep_for: Duration,
    /// How often the leader applies the bounds.
    pub check_interval: Duration,
}

impl Default for RetentionOptions {
    /// A million revisions (at a few hundred bytes each, some hundreds of
    /// MB), and at most a day: a restarted workflow worker resumes its
    /// watches, and a day of events can be exported.
    fn default() -> Self {
        RetentionOptions {
            keep_revisions: 1_000_000,
            keep_for: Duration::from_secs(24 * 3600),
            check_interval: Duration::from_secs(60),
        }
    }
}

/// Pause between purge steps, so that client writes interleave with them.
const PURGE_PAUSE: Duration = Duration::from_millis(2);

fn leads(raft: &Raft) -> bool {
    raft.metrics().borrow_watched().state == ServerState::Leader
}

/// The revision below which the bounds want the history gone (0: none).
fn policy_target(shared: &SmShared, options: &RetentionOptions) -> std::io::Result<u64> {
    let view = shared.db().snapshot();
    let applied = crate::state_machine::applied_index(&view)?;
    let compacted = history::compacted(&view)?;
    let mut target = 0;
    if options.keep_revisions > 0 {
        target = applied.saturating_sub(options.keep_revisions) + 1;
    }
    if !options.keep_for.is_zero() {
        let cutoff = now_ms().saturating_sub(options.keep_for.as_millis() as u64);
        let by_age = history::first_revision_after(&view, compacted, applied, cutoff)?;
        target = target.max(by_age);
    }
    Ok(if target > compacted { target } else { 0 })
}

/// Runs the policy and the purges until the task is aborted.
pub(crate) async fn run(
    raft: Raft,
    shared: Arc<SmShared>,
    options: RetentionOptions,
    wake: Arc<Notify>,
) {
    let mut next_check = tokio::time::Instant::now() + options.check_interval;
    loop {
        tokio::select! {
            () = wake.notified() => {}
            () = tokio::time::sleep_until(next_check) => {}
        }
        if !leads(&raft) {
            next_check = tokio::time::Instant::now() + options.check_interval;
            continue;
        }
        if tokio::time::Instant::now() >= next_check {
            next_check = tokio::time::Instant::now() + options.check_interval;
            let target = {
                let shared = shared.clone();
                let options = options.clone();
                tokio::task::spawn_blocking(move || policy_target(&shared, &options)).await
            };
            match target {
                Ok(Ok(0)) => {}
                Ok(Ok(revision)) => {
                    let command = Command::Compact {
                        revision,
                        time_ms: now_ms(),
                    };
                    match raft.client_write(command.into()).await {
                        Ok(_) => tracing::info!(below = revision, "compacted the history"),
                        Err(error) => tracing::debug!(%error, "automatic compaction not proposed"),
                    }
                }
                Ok(Err(error)) => tracing::warn!(%error, "reading the history for its retention"),
                Err(error) => tracing::warn!(%error, "retention check"),
            }
        }
        // Purge what compactions cut off, a bounded step at a time.
        loop {
            match shared.purge_pending() {
                Ok(true) if leads(&raft) => {}
                Ok(_) => break,
                Err(error) => {
                    tracing::warn!(%error, "reading the purge state");
                    break;
                }
            }
            if let Err(error) = raft.client_write(Command::PurgeHistory.into()).await {
                tracing::debug!(%error, "purge step not proposed");
                break;
            }
            tokio::time::sleep(PURGE_PAUSE).await;
        }
    }
}
