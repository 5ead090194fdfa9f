//! Power-loss tests over the fault-injection file system: everything not
//! fsynced (and every directory entry not synced) is dropped, then the
//! database must recover every write its durability mode promised.

use ferry_engine::fs::FaultInjectionFs;
use ferry_engine::{Db, Durability, Options};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

fn options(fs: &FaultInjectionFs, durability: Durability) -> Options {
    Options {
        fs: Arc::new(fs.clone()),
        durability,
        // Small memtables and levels: power fails during flushes and
        // compactions too, not only between WAL appends.
        write_buffer_bytes: 16 << 10,
        block_bytes: 512,
        level0_compaction_trigger: 2,
        level1_max_bytes: 64 << 10,
        target_file_bytes: 16 << 10,
        ..Options::default()
    }
}

fn key(i: u64) -> Vec<u8> {
    format!("key{i:08}").into_bytes()
}

fn value(i: u64) -> Vec<u8> {
    format!("value-{i}-{}", "p".repeat((i % 50) as usize)).into_bytes()
}

/// Writers in several threads; each acknowledged key is recorded under
/// `acked`'s lock, and the power-loss image is taken under the same lock,
/// so the recorded set is exactly what was acknowledged before the cut.
fn cut_power_under_load(
    db: &Db,
    fs: &FaultInjectionFs,
    threads: u64,
    first: u64,
    run_for: Duration,
) -> (FaultInjectionFs, Vec<u64>) {
    let acked = Mutex::new(Vec::new());
    let stop = AtomicBool::new(false);
    let (image, acked_at_cut) = std::thread::scope(|scope| {
        for t in 0..threads {
            let (acked, stop) = (&acked, &stop);
            scope.spawn(move || {
                let mut i = first + t;
                while !stop.load(Ordering::Relaxed) {
                    if db.put(key(i), value(i)).is_err() {
                        break;
                    }
                    acked.lock().unwrap().push(i);
                    i += threads;
                }
            });
        }
        std::thread::sleep(run_for);
        // Writers keep acknowledging after the cut until they see `stop`;
        // only what was recorded before it counts.
        let guard = acked.lock().unwrap();
        let image = fs.durable_image();
        let acked_at_cut = guard.clone();
        stop.store(true, Ordering::Relaxed);
        drop(guard);
        (image, acked_at_cut)
    });
    (image, acked_at_cut)
}

#[test]
fn sync_writes_survive_power_loss_at_random_moments() {
    let dir = Path::new("/db");
    let mut fs = FaultInjectionFs::new();
    let mut expected: Vec<u64> = Vec::new();
    for round in 0..10u64 {
        let db = Db::open(dir, options(&fs, Durability::Sync)).expect("open after power loss");
        let run_for = Duration::from_millis(30 + (round * 37) % 90);
        let (image, acked) = cut_power_under_load(&db, &fs, 4, round * 1_000_000, run_for);
        let stats = db.statistics();
        drop(db);
        expected.extend(&acked);
        let recovered = Db::open(dir, options(&image, Durability::Sync)).expect("recover");
        for &i in &expected {
            assert_eq!(
                recovered.get(key(i)).unwrap(),
                Some(value(i)),
                "round {round}: acked key {i} lost"
            );
        }
        // Nothing but acknowledged or in-flight writes, and every value intact.
        for entry in recovered.iter() {
            let (k, v) = entry.unwrap();
            let i: u64 = std::str::from_utf8(&k[3..]).unwrap().parse().unwrap();
            assert_eq!(v, value(i));
        }
        if round == 9 {
            assert!(
                stats.flushes > 0,
                "the test must cut power around flushes too: {stats:?}"
            );
        }
        recovered.close().unwrap();
        fs = image;
    }
}

#[test]
fn every_acknowledged_sync_write_survives() {
    // Sequential version with exact expectations: after a cut following
    // write N, keys 0..=N are all there and nothing else.
    let dir = Path::new("/db");
    let fs = FaultInjectionFs::new();
    let db = Db::open(dir, options(&fs, Durability::Sync)).unwrap();
    let mut images = Vec::new();
    for i in 0..3000u64 {
        db.put(key(i), value(i)).unwrap();
        if i % 250 == 249 {
            images.push((i, fs.durable_image()));
        }
    }
    drop(db);
    for (last_acked, image) in images {
        let db = Db::open(dir, options(&image, Durability::Sync)).unwrap();
        for i in 0..=last_acked {
            assert_eq!(
                db.get(key(i)).unwrap(),
                Some(value(i)),
                "acked key {i} lost (cut after {last_acked})"
            );
        }
        assert_eq!(db.iter().count() as u64, last_acked + 1, "no phantom keys");
    }
}

#[test]
fn concurrent_sync_writers_share_fsyncs_and_lose_nothing() {
    let dir = Path::new("/db");
    let fs = FaultInjectionFs::new();
    let db = Db::open(dir, options(&fs, Durability::Sync)).unwrap();
    let (image, acked) = cut_power_under_load(&db, &fs, 16, 0, Duration::from_millis(200));
    let stats = db.statistics();
    drop(db);
    assert!(
        stats.wal_syncs < stats.writes,
        "group commit must share fsyncs: {stats:?}"
    );
    let recovered = Db::open(dir, options(&image, Durability::Sync)).unwrap();
    assert!(!acked.is_empty());
    for i in acked {
        assert_eq!(
            recovered.get(key(i)).unwrap(),
            Some(value(i)),
            "acked key {i} lost"
        );
    }
}

#[test]
fn periodic_durability_loses_at_most_the_window() {
    let dir = Path::new("/db");
    let fs = FaultInjectionFs::new();
    let interval = Duration::from_millis(50);
    let db = Db::open(dir, options(&fs, Durability::Periodic(interval))).unwrap();
    let started = Instant::now();
    let mut acked_at = Vec::new();
    let mut i = 0u64;
    while started.elapsed() < Duration::from_millis(400) {
        db.put(key(i), value(i)).unwrap();
        acked_at.push(started.elapsed());
        i += 1;
    }
    let cut = started.elapsed();
    let image = fs.durable_image();
    drop(db);
    let recovered = Db::open(dir, options(&image, Durability::Periodic(interval))).unwrap();
    // Allow the window plus scheduling slack on a loaded 2-core machine.
    let window = interval * 3;
    let mut lost_in_window = 0;
    for (i, at) in acked_at.iter().enumerate() {
        let present = recovered.get(key(i as u64)).unwrap().is_some();
        if *at + window < cut {
            assert!(
                present,
                "key {i} acknowledged {:?} before the cut was lost",
                cut - *at
            );
        } else if !present {
            lost_in_window += 1;
        }
    }
    // Whatever survived is a prefix: no holes.
    let count = recovered.iter().count();
    for i in 0..count {
        assert!(
            recovered.get(key(i as u64)).unwrap().is_some(),
            "hole at {i}"
        );
    }
    eprintln!(
        "periodic: {} writes, {lost_in_window} lost inside the window",
        acked_at.len()
    );
}

#[test]
fn buffered_writes_survive_a_process_crash_but_not_a_power_loss() {
    // A process crash keeps what reached the OS; a power loss may not.
    let dir = Path::new("/db");
    let fs = FaultInjectionFs::new();
    let db = Db::open(dir, options(&fs, Durability::Buffered)).unwrap();
    for i in 0..2000 {
        db.put(key(i), value(i)).unwrap();
    }
    let crashed = fs.process_crash_image();
    let powered_off = fs.durable_image();
    drop(db);
    let db = Db::open(dir, options(&crashed, Durability::Buffered)).unwrap();
    for i in 0..2000 {
        assert_eq!(db.get(key(i)).unwrap(), Some(value(i)));
    }
    // After a power loss what survives is still a consistent prefix.
    let db = Db::open(dir, options(&powered_off, Durability::Buffered)).unwrap();
    let count = db.iter().count() as u64;
    for i in 0..count {
        assert_eq!(
            db.get(key(i)).unwrap(),
            Some(value(i)),
            "hole at {i} of {count}"
        );
    }
}
