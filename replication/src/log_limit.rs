//! Log lines of repeated failures, at most one per source per interval.
//!
//! A peer that is down or misconfigured fails every heartbeat (every
//! 50 ms); a scanner fails a TLS handshake per connection. Logging each
//! would drown everything else, and logging none would hide them: the
//! first failure of a source is logged, then one line per interval that
//! says how many were not.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Sources remembered at most; a scan from many addresses must not grow
/// this without bound. Past it, the oldest sources are forgotten.
const MAX_SOURCES: usize = 1024;

pub struct LogLimit {
    interval: Duration,
    sources: Mutex<HashMap<String, Seen>>,
}

struct Seen {
    logged: Instant,
    suppressed: u64,
}

impl LogLimit {
    pub fn new(interval: Duration) -> LogLimit {
        LogLimit {
            interval,
            sources: Mutex::new(HashMap::new()),
        }
    }

    /// Whether a failure of `source` should be logged now; `Some(n)`: yes,
    /// and `n` failures of it since its last line were not.
    pub fn admit(&self, source: &str) -> Option<u64> {
        let mut sources = self.sources.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        if let Some(seen) = sources.get_mut(source) {
            if now.duration_since(seen.logged) < self.interval {
                seen.suppressed += 1;
                return None;
            }
            let suppressed = seen.suppressed;
            *seen = Seen {
                logged: now,
                suppressed: 0,
            };
            return Some(suppressed);
        }
        if sources.len() >= MAX_SOURCES {
            let interval = self.interval;
            sources.retain(|_, seen| now.duration_since(seen.logged) < interval);
            if sources.len() >= MAX_SOURCES {
                sources.clear();
            }
        }
        sources.insert(
            source.to_owned(),
            Seen {
                logged: now,
                suppressed: 0,
            },
        );
        Some(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_source_is_logged_once_per_interval_with_the_count_it_held_back() {
        let limit = LogLimit::new(Duration::from_millis(200));
        assert_eq!(limit.admit("peer 2"), Some(0));
        for _ in 0..9 {
            assert_eq!(limit.admit("peer 2"), None);
        }
        // Another source is not held back by the first.
        assert_eq!(limit.admit("peer 3"), Some(0));
        std::thread::sleep(Duration::from_millis(250));
        assert_eq!(limit.admit("peer 2"), Some(9));
        assert_eq!(limit.admit("peer 2"), None);
    }

    #[test]
    fn many_sources_do_not_grow_it_without_bound() {
        let limit = LogLimit::new(Duration::from_secs(60));
        for i in 0..(3 * MAX_SOURCES) {
            limit.admit(&format!("10.0.{}.{}:1", i / 256, i % 256));
        }
        assert!(limit.sources.lock().unwrap().len() <= MAX_SOURCES);
    }
}
