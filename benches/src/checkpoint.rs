//! The `checkpoint` suite: what periodic delta checkpoints cost a write
//! load, and how a delta's size follows the data written since its base.
//!
//! 1. `fillrandom` and `fillrandom+checkpoint`: the same buffered random
//!    fill, without and with a periodic delta checkpoint every
//!    `--interval-ms`; the drop in `ops_per_sec` is the checkpoints' cost.
//! 2. `full` and `delta-N%`: on a database of `--keys` keys, a full
//!    checkpoint, then for each N in 1, 5 and 20 percent of the keys
//!    rewritten, a delta against it: its `new_bytes` (what must be
//!    shipped), `seconds`, and `written_bytes` (user bytes since the base).

use crate::report::Row;
use ferry_engine::checkpoint::periodic::PeriodicCheckpoints;
use ferry_engine::{Db, Durability, Options};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use std::time::{Duration, Instant};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Keys written by each fill.
    #[arg(long, default_value_t = 2_000_000)]
    pub keys: u64,
    /// Bytes per value.
    #[arg(long, default_value_t = 100)]
    pub value_size: usize,
    /// Rounds of (plain fill, checkpointed fill), alternated so that drift of
    /// the machine hits both; the mean of each is reported.
    #[arg(long, default_value_t = 5)]
    pub rounds: usize,
    /// Time between periodic checkpoints during the fill.
    #[arg(long, default_value_t = 1000)]
    pub interval_ms: u64,
    #[command(flatten)]
    pub output: crate::report::Output,
}

fn key(i: u64) -> [u8; 16] {
    let mut key = [0u8; 16];
    key[8..].copy_from_slice(&i.to_be_bytes());
    key
}

fn value(i: u64, size: usize, salt: u64) -> Vec<u8> {
    let mut rng = StdRng::seed_from_u64(i ^ salt);
    let mut value = vec![0u8; size];
    // Half random, half repeated: about as compressible as db_bench's values.
    rng.fill(&mut value[..size / 2]);
    let (head, tail) = value.split_at_mut(size / 2);
    for (i, byte) in tail.iter_mut().enumerate() {
        *byte = head[i % head.len().max(1)];
    }
    value
}

fn fill(db: &Db, keys: u64, value_size: usize) -> f64 {
    let mut order: Vec<u64> = (0..keys).collect();
    order.shuffle(&mut StdRng::seed_from_u64(7));
    let values: Vec<Vec<u8>> = (0..1024).map(|i| value(i, value_size, 1)).collect();
    let started = Instant::now();
    for &i in &order {
        db.put(key(i), &values[(i % 1024) as usize]).expect("put");
    }
    keys as f64 / started.elapsed().as_secs_f64()
}

pub fn run(args: &Args) -> Vec<Row> {
    let root = args.output.work_dir();
    let base = || Options {
        durability: Durability::Buffered,
        ..Options::default()
    };
    let mut rows = Vec::new();

    // 1. Throughput with and without periodic checkpoints, alternated so
    // that drift of the machine (page cache, other load) hits both.
    let mut plain = Vec::new();
    let mut with_checkpoints = Vec::new();
    let mut checkpoints_taken = 0;
    for round in 0..args.rounds {
        let plain_fill = |plain: &mut Vec<f64>| {
            let db = Db::open(root.path().join(format!("plain-{round}")), base()).expect("open");
            plain.push(fill(&db, args.keys, args.value_size));
        };
        let checkpointed_fill = |with_checkpoints: &mut Vec<f64>, taken: &mut u64| {
            let options = Options {
                periodic_checkpoints: Some(PeriodicCheckpoints {
                    dir: root.path().join(format!("backups-{round}")),
                    interval: Duration::from_millis(args.interval_ms),
                    every_bytes: None,
                    deltas_per_chain: 1000,
                    keep_chains: 1,
                }),
                ..base()
            };
            let db =
                Db::open(root.path().join(format!("checkpointed-{round}")), options).expect("open");
            with_checkpoints.push(fill(&db, args.keys, args.value_size));
            *taken += db.statistics().checkpoints;
        };
        // Which variant runs first alternates, so neither gains from order.
        if round % 2 == 0 {
            plain_fill(&mut plain);
            checkpointed_fill(&mut with_checkpoints, &mut checkpoints_taken);
        } else {
            checkpointed_fill(&mut with_checkpoints, &mut checkpoints_taken);
            plain_fill(&mut plain);
        }
        eprintln!(
            "round {round}: fillrandom {:.0} ops/s, with checkpoints {:.0} ops/s",
            plain[round], with_checkpoints[round]
        );
    }
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    // Run-to-run spread of the plain fill: a drop smaller than this is not
    // distinguishable from noise on this machine.
    let spread = |v: &[f64]| {
        let (min, max) = v
            .iter()
            .fold((f64::MAX, f64::MIN), |(a, b), &x| (a.min(x), b.max(x)));
        (max - min) / mean(v) * 100.0
    };
    let noise = spread(&plain);
    let (plain, checked) = (mean(&plain), mean(&with_checkpoints));
    rows.push(
        Row::new("ferry", "fillrandom")
            .with("ops_per_sec", plain)
            .with("spread_percent", noise),
    );
    rows.push(
        Row::new("ferry", "fillrandom+checkpoint")
            .with("ops_per_sec", checked)
            .with("spread_percent", spread(&with_checkpoints))
            .with("drop_percent", (1.0 - checked / plain) * 100.0)
            .with("checkpoints", checkpoints_taken as f64),
    );

    // 2. Delta size against data written since the base.
    let db = Db::open(root.path().join("deltas"), base()).expect("open");
    fill(&db, args.keys, args.value_size);
    let backups = root.path().join("chain");
    std::fs::create_dir_all(&backups).expect("backups dir");
    let started = Instant::now();
    let full = db
        .checkpoint(backups.join("full"))
        .expect("full checkpoint");
    rows.push(
        Row::new("ferry", "full")
            .with("seconds", started.elapsed().as_secs_f64())
            .with("total_bytes", full.total_bytes() as f64)
            .with("new_bytes", full.new_bytes() as f64),
    );
    let mut rng = StdRng::seed_from_u64(11);
    for percent in [1u64, 5, 20] {
        let written_before = db.statistics().user_bytes_written;
        for _ in 0..args.keys * percent / 100 {
            let i = rng.random_range(0..args.keys);
            db.put(key(i), value(i, args.value_size, percent))
                .expect("put");
        }
        let written = db.statistics().user_bytes_written - written_before;
        let started = Instant::now();
        let name = format!("delta-{percent}pct");
        let delta = db
            .checkpoint_delta(backups.join("full"), backups.join(&name))
            .expect("delta checkpoint");
        rows.push(
            Row::new("ferry", &format!("delta-{percent}%"))
                .with("seconds", started.elapsed().as_secs_f64())
                .with("total_bytes", delta.total_bytes() as f64)
                .with("new_bytes", delta.new_bytes() as f64)
                .with("written_bytes", written as f64)
                .with("new_to_written", delta.new_bytes() as f64 / written as f64)
                .with(
                    "new_to_full",
                    delta.new_bytes() as f64 / full.total_bytes() as f64,
                ),
        );
        let stats = db.statistics();
        eprintln!(
            "{name}: {} new bytes for {written} written; write amplification so far {:.2}",
            delta.new_bytes(),
            stats.write_amplification()
        );
    }
    rows
}
