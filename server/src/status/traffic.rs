//! Requests per second and p99 latency per method over the last minutes,
//! for the status page's sparklines.
//!
//! Each request adds itself to the current window (a counter and a
//! log-scale latency histogram per method, under one short lock). Every
//! [`SAMPLE_INTERVAL`] the sampler closes the window into a sample and keeps
//! the last [`SAMPLES`] of them. p99 is the upper bound of the histogram
//! bucket it falls in: buckets are a quarter power of two wide, so it reads
//! at most 19% high, never low.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

/// One sample per this long.
pub const SAMPLE_INTERVAL: Duration = Duration::from_secs(2);
/// Samples kept: five minutes.
pub const SAMPLES: usize = 150;

/// Four buckets per power of two of microseconds, up to 2^32 µs.
const BUCKETS: usize = 128;

fn bucket(micros: u64) -> usize {
    let micros = micros.max(1) as f64;
    ((micros.log2() * 4.0) as usize).min(BUCKETS - 1)
}

/// The upper bound of `bucket`, in microseconds.
fn bucket_upper(bucket: usize) -> u64 {
    2f64.powf((bucket + 1) as f64 / 4.0).ceil() as u64
}

struct Window {
    count: u64,
    errors: u64,
    buckets: [u32; BUCKETS],
}

impl Default for Window {
    fn default() -> Self {
        Window {
            count: 0,
            errors: 0,
            buckets: [0; BUCKETS],
        }
    }
}

impl Window {
    fn p99_micros(&self) -> u64 {
        let wanted = (self.count * 99).div_ceil(100);
        let mut seen = 0u64;
        for (i, n) in self.buckets.iter().enumerate() {
            seen += u64::from(*n);
            if seen >= wanted {
                return bucket_upper(i);
            }
        }
        0
    }
}

/// One method in one sample.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MethodSample {
    pub per_sec: f64,
    pub errors_per_sec: f64,
    /// 0 when no request ran.
    pub p99_us: u64,
}

/// One closed window.
#[derive(Debug, Clone)]
pub struct Sample {
    /// When the window closed (ms since the Unix epoch).
    pub at_ms: u64,
    pub methods: HashMap<&'static str, MethodSample>,
}

#[derive(Default)]
pub struct Traffic {
    current: parking_lot::Mutex<HashMap<&'static str, Window>>,
    samples: parking_lot::Mutex<VecDeque<Sample>>,
}

impl Traffic {
    /// Counts one request of `method` that took `elapsed`.
    pub fn record(&self, method: &'static str, elapsed: Duration, ok: bool) {
        let slot = bucket(elapsed.as_micros() as u64);
        let mut current = self.current.lock();
        let window = current.entry(method).or_default();
        window.count += 1;
        window.errors += u64::from(!ok);
        window.buckets[slot] = window.buckets[slot].saturating_add(1);
    }

    /// Closes the current window, `length` long, into a sample taken at
    /// `at_ms`.
    pub fn close_window(&self, at_ms: u64, length: Duration) {
        let closed = std::mem::take(&mut *self.current.lock());
        let secs = length.as_secs_f64().max(1e-3);
        let methods = closed
            .into_iter()
            .map(|(method, window)| {
                (
                    method,
                    MethodSample {
                        per_sec: window.count as f64 / secs,
                        errors_per_sec: window.errors as f64 / secs,
                        p99_us: window.p99_micros(),
                    },
                )
            })
            .collect();
        let mut samples = self.samples.lock();
        if samples.len() == SAMPLES {
            samples.pop_front();
        }
        samples.push_back(Sample { at_ms, methods });
    }

    /// The kept samples, oldest first.
    pub fn samples(&self) -> Vec<Sample> {
        self.samples.lock().iter().cloned().collect()
    }

    /// Closes a window every [`SAMPLE_INTERVAL`] until `stopped` turns true.
    pub async fn run_sampler(
        self: std::sync::Arc<Self>,
        mut stopped: tokio::sync::watch::Receiver<bool>,
    ) {
        let mut ticker = tokio::time::interval(SAMPLE_INTERVAL);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticker.tick().await;
        let mut last = std::time::Instant::now();
        loop {
            tokio::select! {
                _ = stopped.wait_for(|s| *s) => return,
                _ = ticker.tick() => {}
            }
            let now = std::time::Instant::now();
            self.close_window(ferry_replication::types::now_ms(), now - last);
            last = now;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_window_gives_rate_errors_and_a_p99_that_never_reads_low() {
        let traffic = Traffic::default();
        for i in 0..1000u64 {
            // 990 fast requests of 100 µs, 10 slow ones of 50 ms.
            let micros = if i % 100 == 0 { 50_000 } else { 100 };
            traffic.record("Put", Duration::from_micros(micros), i % 500 != 0);
        }
        traffic.record("Get", Duration::from_micros(300), true);
        traffic.close_window(1, Duration::from_secs(2));
        let samples = traffic.samples();
        let put = samples[0].methods["Put"];
        assert_eq!(put.per_sec, 500.0);
        assert_eq!(put.errors_per_sec, 1.0);
        // The 99th percentile is the fast ones' bucket: at least 100 µs, at
        // most 19% above.
        assert!((100..=119).contains(&put.p99_us), "{}", put.p99_us);
        let get = samples[0].methods["Get"];
        assert!((300..=357).contains(&get.p99_us), "{}", get.p99_us);
        // The next window starts empty.
        traffic.close_window(2, Duration::from_secs(2));
        assert!(traffic.samples()[1].methods.is_empty());
    }

    #[test]
    fn only_the_last_five_minutes_are_kept() {
        let traffic = Traffic::default();
        for at in 0..(SAMPLES as u64 + 10) {
            traffic.close_window(at, SAMPLE_INTERVAL);
        }
        let samples = traffic.samples();
        assert_eq!(samples.len(), SAMPLES);
        assert_eq!(samples[0].at_ms, 10);
    }

    #[test]
    fn every_latency_has_a_bucket_whose_bound_is_not_below_it() {
        for micros in [0u64, 1, 2, 3, 99, 100, 1_000_000, u64::MAX / 2] {
            let b = bucket(micros);
            assert!(b < BUCKETS);
            if b < BUCKETS - 1 {
                assert!(bucket_upper(b) >= micros.max(1), "{micros}");
            }
        }
    }
}
