//! Shipping a snapshot from leader to follower, resumable and differential.
//!
//! ## Protocol (version 1, frames in `proto/raft.proto`)
//!
//! ```text
//! leader                                   follower
//!   Offer{vote, meta, id, files, full_only} ->
//!                                          <- Plan{have[i], reused_local}
//!   Chunk{file, offset, data, crc}*        ->   (each chunk CRC-checked, appended)
//!                                          <- Progress*  (one per chunk: liveness)
//!   Done{state_hash if reused_local}       ->
//!                                          <- Installed{response} | Failed{reason, retry_full}
//! ```
//!
//! - The follower stages into `<data>/incoming/<id>/`. A file it already
//!   holds there (an interrupted attempt) counts from its current length,
//!   so a broken transfer resumes; a table with the same name, size and
//!   CRC in its live engine or its snapshots is hard-linked instead of
//!   sent (differential transfer).
//! - At `Done` every file's size and CRC must match the offer. If local
//!   files were reused, the content checksum of the assembled state must
//!   equal the leader's; if not, the follower discards the staging
//!   directory and answers `retry_full`, and the leader sends everything.
//! - Memory is bounded: one chunk in hand per side plus a channel of four.
//! - There is no deadline for the whole transfer, only an idle timeout per
//!   reply, and an optional bandwidth limit shared by all transfers of a node.
//!   After `Done` the follower sends `Progress` every second while it checks
//!   and installs, which for a large snapshot takes longer than the timeout
//!   (for at most `max_install_time`).
//! - A follower receives one snapshot id at a time, and removes the staging
//!   directories of other snapshots once its plan has reused what it can,
//!   except those of receives still running.
//!
//! The leader's side is [`send`], the follower's [`receive`]; what a
//! follower already holds is decided in `plan`.

mod plan;
mod receive;
mod send;

pub(crate) use receive::{check_offer, receive, valid_name, ReceiverContext};
pub(crate) use send::send;

use crate::network::NetworkControl;
use crate::types::NodeId;
use std::sync::Arc;
use std::time::Duration;

/// Tuning of snapshot transfers.
#[derive(Debug, Clone)]
pub struct TransferOptions {
    /// Bytes of file data per chunk.
    pub chunk_bytes: usize,
    /// A transfer with no reply for this long is abandoned (and resumed by
    /// the next attempt).
    pub idle_timeout: Duration,
    /// Limit on outgoing snapshot bytes per second for the whole node; 0 =
    /// unlimited.
    pub max_bytes_per_sec: u64,
    /// The receiver makes received data durable every this many bytes.
    pub sync_every_bytes: u64,
    /// After the last chunk, the follower keeps the leader waiting at most
    /// this long while it checks and installs (see `receive`); past it the
    /// leader gives up, and the install, if it ends, still counts.
    pub max_install_time: Duration,
    /// Test hook: the next differential transfer announces a wrong state
    /// hash, to exercise the fall-back to a full transfer.
    #[doc(hidden)]
    pub corrupt_next_state_hash: Arc<std::sync::atomic::AtomicBool>,
    /// Test hook: a receiver waits this long after `Done` before its
    /// checks and install, as one reading back a large snapshot does.
    #[doc(hidden)]
    pub pause_before_install: Duration,
}

impl Default for TransferOptions {
    fn default() -> Self {
        TransferOptions {
            chunk_bytes: 1 << 20,
            idle_timeout: Duration::from_secs(10),
            max_bytes_per_sec: 0,
            sync_every_bytes: 8 << 20,
            max_install_time: Duration::from_secs(30 * 60),
            corrupt_next_state_hash: Default::default(),
            pause_before_install: Duration::ZERO,
        }
    }
}

/// A token bucket shared by a node's outgoing transfers.
pub struct RateLimiter {
    bytes_per_sec: u64,
    state: tokio::sync::Mutex<(tokio::time::Instant, f64)>,
}

impl RateLimiter {
    pub fn new(bytes_per_sec: u64) -> Self {
        RateLimiter {
            bytes_per_sec,
            state: tokio::sync::Mutex::new((tokio::time::Instant::now(), 0.0)),
        }
    }

    async fn acquire(&self, bytes: u64) {
        if self.bytes_per_sec == 0 {
            return;
        }
        let rate = self.bytes_per_sec as f64;
        let mut state = self.state.lock().await;
        let now = tokio::time::Instant::now();
        // Burst of up to a tenth of a second of traffic.
        let tokens = (state.1 + now.duration_since(state.0).as_secs_f64() * rate).min(rate / 10.0);
        let left = tokens - bytes as f64;
        *state = (now, left);
        if left < 0.0 {
            tokio::time::sleep(Duration::from_secs_f64(-left / rate)).await;
        }
    }
}

/// The link a transfer runs over, so that a test's cut interrupts a
/// transfer in flight.
#[derive(Clone)]
pub(crate) struct Link {
    pub(crate) from: NodeId,
    pub(crate) to: NodeId,
    pub(crate) control: NetworkControl,
}

/// Of files of `sizes` of which the follower holds `have` bytes each: the
/// bytes still to move, and the bytes it holds.
fn outstanding(sizes: impl Iterator<Item = u64>, have: &[u64]) -> (u64, u64) {
    sizes.zip(have).fold((0, 0), |(total, held), (size, have)| {
        let have = (*have).min(size);
        (total + size - have, held + have)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn the_rate_limiter_holds_transfers_to_the_configured_rate() {
        let limiter = RateLimiter::new(10 << 20);
        let started = tokio::time::Instant::now();
        for _ in 0..50 {
            limiter.acquire(1 << 20).await;
        }
        // 50 MiB at 10 MiB/s: 5 s less the initial burst allowance (none: the
        // bucket starts empty).
        let elapsed = started.elapsed();
        assert!(elapsed >= Duration::from_millis(4900), "{elapsed:?}");
        assert!(elapsed <= Duration::from_millis(5100), "{elapsed:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn an_unlimited_rate_never_waits() {
        let limiter = RateLimiter::new(0);
        let started = tokio::time::Instant::now();
        limiter.acquire(1 << 30).await;
        assert_eq!(started.elapsed(), Duration::ZERO);
    }
}
