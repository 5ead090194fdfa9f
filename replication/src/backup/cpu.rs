//! CPU time the backup chain costs its node: what the shipper's status
//! and metrics report, so the price of shipping is measured directly
//! rather than inferred from the throughput of writers, which swings far
//! more than that price between windows of the same workload.
//!
//! Two kinds of threads do a backup's work: the blocking threads a round's
//! steps run on (measured around each step with [`on_this_thread`]), and
//! the I/O threads of an object store's own runtime ([`ThreadSet`]).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// CPU time the calling thread has used, in nanoseconds.
pub fn thread_ns() -> u64 {
    clock_ns(libc::CLOCK_THREAD_CPUTIME_ID)
}

fn clock_ns(clock: libc::clockid_t) -> u64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime only writes the timespec it is given, which is
    // owned here; an invalid clock is an error return, not undefined.
    if unsafe { libc::clock_gettime(clock, &mut now) } != 0 {
        return 0;
    }
    now.tv_sec as u64 * 1_000_000_000 + now.tv_nsec as u64
}

/// Runs `work`, adding the CPU time it used on this thread to `total`.
pub fn on_this_thread<T>(total: &AtomicU64, work: impl FnOnce() -> T) -> T {
    let started = thread_ns();
    let result = work();
    total.fetch_add(thread_ns().saturating_sub(started), Ordering::Relaxed);
    result
}

/// The threads of one runtime, for the CPU time they have used, including
/// threads that have exited since. Register each thread from the runtime's
/// `on_thread_start` and `on_thread_stop` hooks.
#[derive(Debug, Default)]
pub struct ThreadSet {
    /// Threads running now. A thread leaves the set (under this lock)
    /// before it exits, so every handle here names a live thread: that is
    /// what makes asking for its clock sound.
    live: parking_lot::Mutex<Vec<libc::pthread_t>>,
    /// CPU time of the threads that have left.
    retired_ns: AtomicU64,
}

impl ThreadSet {
    /// A multi-threaded runtime of `workers` threads named `name`, each
    /// counted in a new set; returns both.
    pub fn runtime(
        name: &str,
        workers: usize,
    ) -> std::io::Result<(tokio::runtime::Runtime, Arc<Self>)> {
        let set = Arc::new(ThreadSet::default());
        let (start, stop) = (set.clone(), set.clone());
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(workers)
            .thread_name(name)
            .on_thread_start(move || start.enter())
            .on_thread_stop(move || stop.leave())
            .enable_all()
            .build()?;
        Ok((runtime, set))
    }

    /// Call on the thread that starts.
    pub fn enter(&self) {
        // SAFETY: pthread_self has no preconditions.
        let me = unsafe { libc::pthread_self() };
        self.live.lock().push(me);
    }

    /// Call on the thread that stops, as the last thing it does.
    pub fn leave(&self) {
        // SAFETY: pthread_self has no preconditions.
        let me = unsafe { libc::pthread_self() };
        let mut live = self.live.lock();
        // SAFETY: pthread_equal compares two handles of live threads.
        live.retain(|&t| unsafe { libc::pthread_equal(t, me) } == 0);
        // Counted under the lock, so a reader sees this thread's time in
        // the live set or in the retired total, never both or neither.
        self.retired_ns.fetch_add(thread_ns(), Ordering::Relaxed);
    }

    /// CPU time all the threads have used, in nanoseconds.
    pub fn cpu_ns(&self) -> u64 {
        let live = self.live.lock();
        let running: u64 = live
            .iter()
            .map(|&thread| {
                let mut clock: libc::clockid_t = 0;
                // SAFETY: `thread` is live while the lock is held (see
                // `live`), and the call only writes `clock`.
                match unsafe { libc::pthread_getcpuclockid(thread, &mut clock) } {
                    0 => clock_ns(clock),
                    _ => 0,
                }
            })
            .sum();
        running + self.retired_ns.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spin(for_ns: u64) {
        let until = thread_ns() + for_ns;
        while thread_ns() < until {
            std::hint::black_box(0u64);
        }
    }

    #[test]
    fn a_step_counts_the_cpu_it_used_and_not_the_time_it_slept() {
        let total = AtomicU64::new(0);
        on_this_thread(&total, || {
            spin(20_000_000);
            std::thread::sleep(std::time::Duration::from_millis(50));
        });
        let used = total.load(Ordering::Relaxed);
        assert!(used >= 20_000_000, "{used} ns");
        // Sleeping used no CPU: well under the 70 ms of wall time, even on
        // a busy machine (a spin that is descheduled uses no CPU either).
        assert!(used < 45_000_000, "{used} ns");
    }

    #[test]
    fn a_runtimes_threads_count_while_running_and_after_exiting() {
        let (runtime, set) = ThreadSet::runtime("test", 2).unwrap();
        runtime.block_on(async {
            tokio::task::spawn(async { spin(30_000_000) })
                .await
                .unwrap();
        });
        let running = set.cpu_ns();
        assert!(running >= 30_000_000, "{running} ns");
        drop(runtime);
        assert!(set.live.lock().is_empty(), "every thread left");
        assert!(set.cpu_ns() >= running, "exited threads still count");
    }
}
