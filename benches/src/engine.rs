//! The `engine` suite: db_bench-style workloads run against each engine in
//! turn, with the same keys, values, seeds and timing code for every one.
//!
//! Per engine, in order:
//! 1. `fillseq`: keys in order into an empty database (its own directory).
//! 2. `fillrandom`: the same keys in shuffled order into a fresh database,
//!    which every later workload reuses. Disk size and write amplification
//!    are taken after it, once the memtable is flushed.
//! 3. `overwrite`: random existing keys rewritten.
//! 4. `readrandom`: lookups of random existing keys.
//! 5. `readmissing`: lookups of random keys that were never written.
//! 6. `readseq`: one full scan in key order.
//! 7. `mixed`: 4 threads, 90% lookups and 10% writes on random keys.
//! 8. `fillsync-{1,8,64}`: fsynced writes of fresh keys from 1, 8 and 64
//!    threads, which shows how well each engine shares fsyncs.

use crate::adapter::{self, Engine};
use crate::report::Row;
use hdrhistogram::Histogram;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use std::hint::black_box;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Every key is 16 bytes: 8 zero bytes, then the index big-endian.
const KEY_BYTES: usize = 16;
/// One seed for everything, so every engine sees the same key order and values.
const SEED: u64 = 0xfe44_2024;
const MIXED_THREADS: usize = 4;
/// One write in ten in the mixed workload.
const MIXED_WRITE_RATIO: (u32, u32) = (1, 10);
const SYNC_THREADS: [usize; 3] = [1, 8, 64];
/// Slowest latency the histograms track (longer ones are clamped): 100 s.
const MAX_LATENCY_NANOS: u64 = 100_000_000_000;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Keys written by fillseq and fillrandom; also the operation count of
    /// overwrite, the reads and mixed.
    #[arg(long, default_value_t = 1_000_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub keys: u64,

    /// Bytes per value (about half compressible).
    #[arg(long, default_value_t = 100)]
    pub value_size: usize,

    /// Also write the results to this file as a JSON array.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,

    /// Engines to run, comma-separated, in this order.
    #[arg(long, default_value = adapter::AVAILABLE)]
    pub engines: String,

    /// Where the databases go (default: a temporary directory). Each run
    /// works in a fresh subdirectory that is removed afterwards, so nothing
    /// already in PATH is touched; use it to pick the disk under test.
    #[arg(long, value_name = "PATH")]
    pub dir: Option<PathBuf>,

    /// Writes per writer thread (up to 8 threads' worth) in each fillsync
    /// workload: fsync-bound runs are slow, so they get their own, smaller
    /// count.
    #[arg(long, default_value_t = 20_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub sync_ops: u64,
}

/// Runs every selected engine through every workload.
pub fn run(args: &Args) -> Vec<Row> {
    let engines = parse_engines(&args.engines);

    // Declared here so the temporary root outlives every engine's run.
    let temporary_root;
    let root: &Path = match &args.dir {
        Some(dir) => {
            std::fs::create_dir_all(dir)
                .unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
            dir.as_path()
        }
        None => {
            temporary_root = tempfile::tempdir().expect("cannot create a temporary directory");
            temporary_root.path()
        }
    };

    let values = Values::new(args.value_size);
    engines
        .iter()
        .flat_map(|name| run_engine(name, root, args, &values))
        .collect()
}

/// The engine names in `list`, or exit with a usage error before any work
/// is done if one is unknown to this build.
fn parse_engines(list: &str) -> Vec<String> {
    let known: Vec<&str> = adapter::AVAILABLE.split(',').collect();
    let names: Vec<String> = list
        .split(',')
        .map(str::trim)
        .filter(|name| !name.is_empty())
        .map(str::to_owned)
        .collect();
    for name in &names {
        if !known.contains(&name.as_str()) {
            eprintln!(
                "error: unknown engine {name:?}; this build has {}{}",
                adapter::AVAILABLE,
                if cfg!(feature = "rocksdb") {
                    ""
                } else {
                    " (rocksdb needs --features rocksdb)"
                },
            );
            std::process::exit(2);
        }
    }
    names
}

fn run_engine(name: &str, root: &Path, args: &Args, values: &Values) -> Vec<Row> {
    // A fresh directory per engine, removed when the engine is done, so each
    // one starts with the same free space and page cache pressure.
    let dir = tempfile::Builder::new()
        .prefix(&format!("{name}-"))
        .tempdir_in(root)
        .unwrap_or_else(|e| panic!("cannot create a directory in {}: {e}", root.display()));
    let keys = args.keys;
    let row = |engine: &dyn Engine, workload: &str, measurement: &Measurement| {
        to_row(engine.name(), workload, measurement, args.value_size)
    };
    let mut rows = Vec::new();

    // 1. fillseq, in a database of its own: sequential inserts into an empty
    // tree are the best case for an LSM and must not be mixed with the rest.
    {
        let path = dir.path().join("fillseq");
        let engine = adapter::open(name, &path, false);
        let db = &*engine;
        let m = single(keys, |i| db.put(&key(i), values.get(i), false));
        rows.push(row(db, "fillseq", &m));
        drop(engine);
        // Free the disk before the main database grows next to it.
        if let Err(e) = std::fs::remove_dir_all(&path) {
            eprintln!("warning: cannot remove {}: {e}", path.display());
        }
    }

    // 2. fillrandom: the database every later workload runs on.
    let engine = adapter::open(name, &dir.path().join("main"), false);
    let db = &*engine;
    {
        // Shuffled up front so the timed loop only writes.
        let mut order: Vec<u64> = (0..keys).collect();
        order.shuffle(&mut StdRng::seed_from_u64(SEED));
        let m = single(keys, |i| {
            let k = order[i as usize];
            db.put(&key(k), values.get(k), false);
        });
        let fillrandom = row(db, "fillrandom", &m);
        // Flushed outside the timed region: size and write amplification
        // should describe tables on disk, not a memtable waiting in memory.
        db.flush();
        let disk_bytes = db.disk_bytes();
        let write_amp = db.write_amp();
        eprintln!(
            "{name} fillrandom disk {:.1} MB, write amp {}",
            disk_bytes as f64 / 1e6,
            write_amp.map_or_else(|| "n/a".to_owned(), |w| format!("{w:.2}")),
        );
        let mut fillrandom = fillrandom.with("disk_bytes", disk_bytes as f64);
        if let Some(write_amp) = write_amp {
            fillrandom = fillrandom.with("write_amp", write_amp);
        }
        rows.push(fillrandom);
    }

    // 3. overwrite: a different value than fillrandom wrote, so the write
    // really replaces data.
    let mut rng = StdRng::seed_from_u64(SEED ^ 3);
    let m = single(keys, |i| {
        let k = rng.random_range(0..keys);
        db.put(
            &key(k),
            values.get(k.wrapping_add(i).wrapping_add(1)),
            false,
        );
    });
    rows.push(row(db, "overwrite", &m));

    // 4. readrandom: every key was written, so every lookup must hit.
    let mut rng = StdRng::seed_from_u64(SEED ^ 4);
    let mut misses = 0u64;
    let m = single(keys, |_| {
        let k = rng.random_range(0..keys);
        misses += u64::from(black_box(db.get(&key(k))).is_none());
    });
    warn_unless(misses == 0, name, || {
        format!("readrandom missed {misses} of {keys} existing keys")
    });
    rows.push(row(db, "readrandom", &m));

    // 5. readmissing: indices in keys..2*keys are never written (fillsync
    // writes from 2*keys up), so this measures bloom filters and the
    // negative path.
    let mut rng = StdRng::seed_from_u64(SEED ^ 5);
    let mut hits = 0u64;
    let m = single(keys, |_| {
        let k = rng.random_range(keys..2 * keys);
        hits += u64::from(black_box(db.get(&key(k))).is_some());
    });
    warn_unless(hits == 0, name, || {
        format!("readmissing found {hits} keys that were never written")
    });
    rows.push(row(db, "readmissing", &m));

    // 6. readseq: one scan; timing each step would cost more than the step,
    // so only throughput is reported.
    let start = Instant::now();
    let entries = db.scan_all();
    let elapsed = start.elapsed();
    let mut latency = new_histogram();
    latency.saturating_record(nanos(elapsed));
    warn_unless(entries == keys, name, || {
        format!("readseq visited {entries} entries, expected {keys}")
    });
    let m = Measurement {
        ops: entries,
        elapsed,
        latency,
    };
    // A whole scan has no per-operation latency worth reporting.
    let mut readseq = row(db, "readseq", &m);
    readseq.figures.retain(|(name, _)| !name.ends_with("_us"));
    rows.push(readseq);

    // 7. mixed: readers and writers contend for the same tree.
    let m = threaded(MIXED_THREADS, keys, |thread| {
        let mut rng = StdRng::seed_from_u64(SEED ^ (0x100 + thread as u64));
        move |i| {
            let k = rng.random_range(0..keys);
            let (numerator, denominator) = MIXED_WRITE_RATIO;
            if rng.random_ratio(numerator, denominator) {
                db.put(&key(k), values.get(k.wrapping_add(i)), false);
            } else {
                black_box(db.get(&key(k)));
            }
        }
    });
    rows.push(row(db, "mixed", &m));

    // 8. fillsync-N: each workload writes its own range of fresh keys above
    // 2*keys, so none overwrites another or a key readmissing relies on.
    // Many writers get more writes (up to 8x): at one count for all, 64
    // group-committing writers finished in a fraction of a second, mostly
    // start-up and tail.
    for (n, threads) in SYNC_THREADS.into_iter().enumerate() {
        let ops = args.sync_ops * threads.min(8) as u64;
        let base = 2 * keys + n as u64 * args.sync_ops * 8;
        let m = threaded(threads, ops, |_| {
            move |i| db.put(&key(base + i), values.get(base + i), true)
        });
        rows.push(row(db, format!("fillsync-{threads}").as_str(), &m));
    }

    // Close the engine before its directory is removed.
    drop(engine);
    drop(dir);
    rows
}

/// The key of index `i`: byte order is numeric order, so fillseq writes
/// truly ascending keys.
fn key(i: u64) -> [u8; KEY_BYTES] {
    let mut key = [0; KEY_BYTES];
    key[KEY_BYTES - 8..].copy_from_slice(&i.to_be_bytes());
    key
}

/// Values cut from one pre-generated pool, so producing a value costs
/// nothing inside the timed region and every engine stores the same bytes.
struct Values {
    pool: Vec<u8>,
    size: usize,
}

impl Values {
    fn new(size: usize) -> Self {
        // In every 64-byte chunk the second half repeats the first, so lz4
        // shrinks values to about half (db_bench's default ratio): engines
        // that compress neither win nor lose everything by it.
        let len = (1usize << 20).max(size * 4).next_multiple_of(64);
        let mut pool = vec![0u8; len];
        let mut rng = StdRng::seed_from_u64(SEED);
        for chunk in pool.chunks_mut(64) {
            let (random, repeat) = chunk.split_at_mut(32);
            rng.fill(&mut *random);
            repeat.copy_from_slice(random);
        }
        Values { pool, size }
    }

    /// The value for index `i`: a pseudo-random window of the pool, so
    /// neighbouring keys do not get identical values.
    fn get(&self, i: u64) -> &[u8] {
        let windows = (self.pool.len() - self.size + 1) as u64;
        let start = (i.wrapping_mul(0x9e37_79b9_7f4a_7c15) % windows) as usize;
        &self.pool[start..start + self.size]
    }
}

/// What one workload did: its operations, wall-clock time and latencies.
struct Measurement {
    ops: u64,
    elapsed: Duration,
    /// Nanoseconds: many reads take well under a microsecond, and
    /// microsecond buckets would report them all as 0.
    latency: Histogram<u64>,
}

fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_LATENCY_NANOS, 3).expect("valid histogram bounds")
}

fn nanos(duration: Duration) -> u64 {
    u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX)
}

/// Calls `op` with every index in `indices`, timing each call.
fn timed_loop(indices: Range<u64>, mut op: impl FnMut(u64)) -> Histogram<u64> {
    let mut latency = new_histogram();
    for i in indices {
        let start = Instant::now();
        op(i);
        latency.saturating_record(nanos(start.elapsed()));
    }
    latency
}

/// Runs `ops` operations on the calling thread.
fn single(ops: u64, op: impl FnMut(u64)) -> Measurement {
    let start = Instant::now();
    let latency = timed_loop(0..ops, op);
    Measurement {
        ops,
        elapsed: start.elapsed(),
        latency,
    }
}

/// Runs `ops` operations split over `threads` threads. Each thread builds
/// its own operation with `make_op(thread)` (so it can own an RNG) and is
/// given a contiguous share of the indices `0..ops`.
fn threaded<F>(threads: usize, ops: u64, make_op: impl Fn(usize) -> F + Sync) -> Measurement
where
    F: FnMut(u64),
{
    let make_op = &make_op;
    let start = Instant::now();
    let histograms: Vec<Histogram<u64>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|thread| {
                scope.spawn(move || timed_loop(share(ops, threads, thread), make_op(thread)))
            })
            .collect();
        handles
            .into_iter()
            .map(|handle| handle.join().expect("a benchmark thread panicked"))
            .collect()
    });
    let elapsed = start.elapsed();

    let mut latency = new_histogram();
    for histogram in &histograms {
        latency
            .add(histogram)
            .expect("histograms share the same bounds");
    }
    Measurement {
        ops,
        elapsed,
        latency,
    }
}

/// The indices thread `thread` of `threads` works on: `0..ops` cut into
/// contiguous parts whose sizes differ by at most one.
fn share(ops: u64, threads: usize, thread: usize) -> Range<u64> {
    let (threads, thread) = (threads as u64, thread as u64);
    let (base, extra) = (ops / threads, ops % threads);
    let start = thread * base + thread.min(extra);
    start..start + base + u64::from(thread < extra)
}

fn to_row(engine: &str, workload: &str, m: &Measurement, value_size: usize) -> Row {
    let seconds = m.elapsed.as_secs_f64().max(f64::MIN_POSITIVE);
    let micros = |quantile: f64| m.latency.value_at_quantile(quantile) as f64 / 1e3;
    let row = Row::new(engine, workload)
        .with("ops_per_sec", m.ops as f64 / seconds)
        .with("p50_us", micros(0.5))
        .with("p99_us", micros(0.99))
        .with(
            "mb_per_sec",
            (KEY_BYTES + value_size) as f64 * m.ops as f64 / seconds / 1e6,
        );
    eprintln!(
        "{engine} {workload:<12} {:>10.0} ops/s  p50 {:>8.1} us  p99 {:>8.1} us",
        m.ops as f64 / seconds,
        micros(0.5),
        micros(0.99),
    );
    row
}

/// Reports a result that shows an engine lost or invented data; the run
/// goes on so the other numbers are still printed, but they are suspect.
fn warn_unless(ok: bool, engine: &str, message: impl FnOnce() -> String) {
    if !ok {
        eprintln!("WARNING: {engine}: {}", message());
    }
}
