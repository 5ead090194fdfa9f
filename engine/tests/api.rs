//! The embedded API's contract: locking, limits, concurrency, statistics.

use ferry_engine::{Db, Durability, Error, Options, WriteBatch, WriteOptions};
use std::process::Command;
use std::sync::Arc;

fn small() -> Options {
    Options {
        durability: Durability::Buffered,
        write_buffer_bytes: 32 << 10,
        block_bytes: 1024,
        level0_compaction_trigger: 2,
        level1_max_bytes: 128 << 10,
        target_file_bytes: 32 << 10,
        level_size_multiplier: 4,
        ..Options::default()
    }
}

#[test]
fn second_open_in_this_process_is_locked_until_close() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(dir.path(), Options::default()).unwrap();
    let err = Db::open(dir.path(), Options::default()).unwrap_err();
    assert!(matches!(err, Error::Locked { .. }));
    assert!(err.to_string().contains("locked"), "{err}");
    db.close().unwrap();
    Db::open(dir.path(), Options::default()).expect("lock released by close");
}

#[test]
fn lock_probe_child() {
    let Ok(dir) = std::env::var("FERRY_LOCK_PROBE") else {
        return;
    };
    match Db::open(&dir, Options::default()) {
        Err(Error::Locked { .. }) => std::process::exit(17),
        Err(other) => panic!("unexpected: {other}"),
        Ok(_) => std::process::exit(0),
    }
}

#[test]
fn second_process_gets_a_locked_error() {
    if std::env::var("FERRY_LOCK_PROBE").is_ok() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(dir.path(), Options::default()).unwrap();
    let status = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "lock_probe_child", "--test-threads=1"])
        .env("FERRY_LOCK_PROBE", dir.path())
        .status()
        .unwrap();
    assert_eq!(status.code(), Some(17), "the other process must see Locked");
    drop(db);
    let status = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "lock_probe_child", "--test-threads=1"])
        .env("FERRY_LOCK_PROBE", dir.path())
        .status()
        .unwrap();
    assert_eq!(
        status.code(),
        Some(0),
        "after drop the other process may open"
    );
}

#[test]
fn oversized_writes_are_rejected_whole() {
    let dir = tempfile::tempdir().unwrap();
    let options = Options {
        max_key_bytes: 16,
        max_value_bytes: 64,
        ..Options::default()
    };
    let db = Db::open(dir.path(), options).unwrap();
    let mut batch = WriteBatch::new();
    batch.put(b"fine", b"ok");
    batch.put(b"also-fine", vec![0u8; 65]);
    let err = db.write(batch).unwrap_err();
    assert!(
        matches!(
            err,
            Error::TooLarge {
                what: "value",
                size: 65,
                limit: 64
            }
        ),
        "{err}"
    );
    assert_eq!(
        db.get(b"fine").unwrap(),
        None,
        "nothing of the batch was written"
    );
    assert!(matches!(
        db.put(vec![b'k'; 17], b"v"),
        Err(Error::TooLarge { what: "key", .. })
    ));
    assert_eq!(db.statistics().writes, 0);
    db.put(vec![b'k'; 16], vec![0u8; 64])
        .expect("at the limit is fine");
}

#[test]
fn invalid_options_are_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let bad = Options {
        level0_slowdown_trigger: 1,
        level0_compaction_trigger: 4,
        ..Options::default()
    };
    assert!(matches!(
        Db::open(dir.path(), bad),
        Err(Error::InvalidOptions(_))
    ));
}

#[test]
fn concurrent_readers_and_writers_reach_deep_levels() {
    let dir = tempfile::tempdir().unwrap();
    let db = Arc::new(Db::open(dir.path(), small()).unwrap());
    std::thread::scope(|scope| {
        for t in 0..4u32 {
            let db = db.clone();
            scope.spawn(move || {
                for i in 0..5000u32 {
                    let k = format!("{:08}", i * 4 + t);
                    db.put(&k, format!("{k}-{}", "v".repeat(50))).unwrap();
                    if i % 7 == 0 {
                        let probe = format!("{:08}", (i / 2) * 4 + t);
                        let found = db.get(&probe).unwrap();
                        assert_eq!(
                            found,
                            Some(format!("{probe}-{}", "v".repeat(50)).into_bytes())
                        );
                    }
                }
            });
        }
        let db = db.clone();
        scope.spawn(move || {
            // A scanner sees sorted, duplicate-free keys while writes go on.
            for _ in 0..20 {
                let keys: Vec<Vec<u8>> = db.iter().map(|e| e.unwrap().0).collect();
                assert!(keys.windows(2).all(|w| w[0] < w[1]));
            }
        });
    });
    db.flush().unwrap();
    db.compact_range(None, None).unwrap();
    let stats = db.statistics();
    assert!(stats.flushes > 5, "{stats:?}");
    assert!(stats.compactions > 0, "{stats:?}");
    // Where exactly the data sits depends on thread timing; below level 0
    // it must be after a full compaction.
    assert_eq!(stats.level_files[0], 0, "{stats:?}");
    assert!(
        stats.level_files.iter().skip(1).sum::<usize>() > 0,
        "{stats:?}"
    );
    assert!(stats.write_amplification() > 1.0);
    assert_eq!(db.iter().count(), 20_000);
    for i in (0..20_000u32).step_by(97) {
        assert!(db.get(format!("{i:08}")).unwrap().is_some());
    }
}

#[test]
fn snapshots_survive_flush_and_compaction() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(dir.path(), small()).unwrap();
    for i in 0..2000u32 {
        db.put(format!("{i:05}"), b"old").unwrap();
    }
    let snapshot = db.snapshot();
    for i in 0..2000u32 {
        if i % 2 == 0 {
            db.delete(format!("{i:05}")).unwrap();
        } else {
            db.put(format!("{i:05}"), b"new").unwrap();
        }
    }
    db.flush().unwrap();
    db.compact_range(None, None).unwrap();
    assert_eq!(snapshot.iter().count(), 2000);
    assert!(snapshot.iter().all(|e| e.unwrap().1 == b"old"));
    assert_eq!(db.iter().count(), 1000);
    drop(snapshot);
    // With the snapshot gone, a full compaction drops the old versions and
    // the tombstones: the tree holds exactly the live data.
    db.compact_range(None, None).unwrap();
    let stats = db.statistics();
    let entries_bytes: u64 = stats.level_bytes.iter().sum();
    assert!(entries_bytes > 0);
    assert_eq!(db.iter().count(), 1000);
}

#[test]
fn iterators_outlive_writes_and_compactions() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(dir.path(), small()).unwrap();
    for i in 0..3000u32 {
        db.put(format!("{i:05}"), b"v").unwrap();
    }
    let mut iter = db.iter();
    let first = iter.next().unwrap().unwrap();
    for i in 0..3000u32 {
        db.delete(format!("{i:05}")).unwrap();
    }
    db.compact_range(None, None).unwrap();
    assert_eq!(first.0, b"00000");
    assert_eq!(iter.count(), 2999, "the iterator still sees its moment");
    assert_eq!(db.iter().count(), 0);
}

#[test]
fn per_write_sync_overrides_buffered_default() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(dir.path(), small()).unwrap();
    let before = db.statistics().wal_syncs;
    db.put(b"a", b"1").unwrap();
    assert_eq!(
        db.statistics().wal_syncs,
        before,
        "buffered write does not fsync"
    );
    let mut batch = WriteBatch::new();
    batch.put(b"b", b"2");
    db.write_opt(
        batch,
        &WriteOptions {
            durability: Some(Durability::Sync),
        },
    )
    .unwrap();
    assert_eq!(db.statistics().wal_syncs, before + 1);
}

#[test]
fn reverse_and_prefix_iteration() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(dir.path(), small()).unwrap();
    for k in ["a/1", "a/2", "a/3", "b/1", "b\u{ff}", "c"] {
        db.put(k, k).unwrap();
    }
    db.flush().unwrap();
    db.delete("a/2").unwrap();
    fn keys(iter: impl Iterator<Item = ferry_engine::Result<(Vec<u8>, Vec<u8>)>>) -> Vec<String> {
        iter.map(|e| String::from_utf8(e.unwrap().0).unwrap())
            .collect()
    }
    assert_eq!(keys(db.prefix("a/")), ["a/1", "a/3"]);
    assert_eq!(keys(db.prefix("a/").rev()), ["a/3", "a/1"]);
    assert_eq!(keys(db.range("a/3".."c").rev()), ["b\u{ff}", "b/1", "a/3"]);
    assert_eq!(
        keys(db.range::<&str, _>((
            std::ops::Bound::Excluded("a/1"),
            std::ops::Bound::Included("b/1")
        ))),
        ["a/3", "b/1"]
    );
}
