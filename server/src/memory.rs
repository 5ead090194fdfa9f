//! Process-wide memory settings of the `ferry` and `ferry-bench` binaries.
//!
//! Both use mimalloc, which asks for transparent huge pages (THP) on its
//! arenas. With the kernel's default `defrag = madvise`, a page fault in
//! such an arena may compact memory synchronously to find a free 2 MiB
//! page, which stalls the faulting thread for milliseconds; RocksDB,
//! Redis and MongoDB advise turning THP off for the same reason. Measured
//! on the engine (64 threads of fsynced writes): with THP, about 4 000 of
//! 160 000 writes took over 3 ms and throughput fell by a fifth; without,
//! about 100. The libraries leave this to the program embedding them.

/// Turns transparent huge pages off for this process and the processes it
/// starts. Call it first in `main`. Failure (an old kernel) only logs.
pub fn disable_transparent_huge_pages() {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: `prctl(PR_SET_THP_DISABLE)` takes integers only and
        // changes only this process's (and its children's) THP policy.
        let done = unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) };
        if done != 0 {
            eprintln!(
                "warning: could not turn transparent huge pages off: {}",
                std::io::Error::last_os_error()
            );
        }
    }
}
