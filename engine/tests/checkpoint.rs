//! Full and delta checkpoints, verification, restore and periodic chains.

use ferry_engine::checkpoint::periodic::PeriodicCheckpoints;
use ferry_engine::checkpoint::{self, Origin};
use ferry_engine::{Db, Durability, Error, Options};
use std::collections::BTreeMap;
use std::fs;
use std::path::Path;
use std::time::Duration;

fn options() -> Options {
    Options {
        durability: Durability::Buffered,
        write_buffer_bytes: 64 << 10,
        level0_compaction_trigger: 2,
        level1_max_bytes: 256 << 10,
        target_file_bytes: 64 << 10,
        ..Options::default()
    }
}

fn contents(dir: &Path) -> BTreeMap<Vec<u8>, Vec<u8>> {
    let db = Db::open(dir, options()).expect("checkpoint opens as a database");
    let map = db.iter().map(|e| e.unwrap()).collect();
    db.close().unwrap();
    map
}

fn write_range(
    db: &Db,
    model: &mut BTreeMap<Vec<u8>, Vec<u8>>,
    range: std::ops::Range<u32>,
    tag: &str,
) {
    for i in range {
        let (k, v) = (
            format!("key{i:06}").into_bytes(),
            format!("{tag}-{i}-{}", "x".repeat(60)).into_bytes(),
        );
        db.put(&k, &v).unwrap();
        model.insert(k, v);
    }
}

#[test]
fn full_and_delta_checkpoints_restore_exact_states() {
    let root = tempfile::tempdir().unwrap();
    // No background compaction: it would rewrite tables between
    // checkpoints, and a delta holds every table written since its base
    // (compaction outputs included), which would blur the size check.
    let deterministic = Options {
        background_work: false,
        ..options()
    };
    let db = Db::open(root.path().join("db"), deterministic).unwrap();
    let backups = root.path().join("backups");
    let mut model = BTreeMap::new();

    write_range(&db, &mut model, 0..3000, "a");
    let full = db.checkpoint(backups.join("c0")).unwrap();
    let state0 = model.clone();
    assert!(full.base.is_none());
    assert!(full.files.iter().all(|f| f.origin == Origin::New));

    write_range(&db, &mut model, 3000..3300, "b");
    db.delete(b"key000007").unwrap();
    model.remove(&b"key000007"[..]);
    let delta1 = db
        .checkpoint_delta(backups.join("c0"), backups.join("c1"))
        .unwrap();
    let state1 = model.clone();

    write_range(&db, &mut model, 100..200, "c");
    let delta2 = db
        .checkpoint_delta(backups.join("c1"), backups.join("c2"))
        .unwrap();
    let state2 = model.clone();

    // Deltas write only what is new: far less than the whole state.
    assert!(delta1.new_bytes() > 0);
    assert!(
        delta1.new_bytes() * 3 < full.total_bytes(),
        "delta {} vs full {}",
        delta1.new_bytes(),
        full.total_bytes()
    );
    assert!(delta1.files.iter().any(|f| f.origin == Origin::Base));
    assert_eq!(delta2.base.as_ref().unwrap().id, "c1");
    assert!(delta1.sequence > full.sequence && delta2.sequence > delta1.sequence);

    // Writes after the last checkpoint are not in it.
    write_range(&db, &mut model, 5000..5010, "d");
    db.close().unwrap();

    let report = checkpoint::verify(&backups.join("c2"), &mut |_| {}).unwrap();
    assert_eq!(report.checked, ["c2", "c1", "c0"]);
    assert_eq!(
        contents(&restore(&backups.join("c0"), root.path(), "r0")),
        state0
    );
    assert_eq!(
        contents(&restore(&backups.join("c1"), root.path(), "r1")),
        state1
    );
    assert_eq!(
        contents(&restore(&backups.join("c2"), root.path(), "r2")),
        state2
    );

    // Deleting older checkpoints never breaks a newer one.
    fs::remove_dir_all(backups.join("c0")).unwrap();
    let report = checkpoint::verify(&backups.join("c2"), &mut |_| {}).unwrap();
    assert_eq!(report.checked, ["c2", "c1"]);
    assert_eq!(report.missing_base.as_deref(), Some("c0"));
    fs::remove_dir_all(backups.join("c1")).unwrap();
    assert_eq!(
        contents(&restore(&backups.join("c2"), root.path(), "r2b")),
        state2
    );
}

fn restore(checkpoint: &Path, root: &Path, name: &str) -> std::path::PathBuf {
    let target = root.join(name);
    checkpoint::restore(checkpoint, &target, &mut |_| {}).unwrap();
    target
}

#[test]
fn checkpoint_under_concurrent_writes_holds_everything_acknowledged_before() {
    let root = tempfile::tempdir().unwrap();
    let db = Db::open(root.path().join("db"), options()).unwrap();
    let mut model = BTreeMap::new();
    write_range(&db, &mut model, 0..2000, "base");
    let stop = std::sync::atomic::AtomicBool::new(false);
    let meta = std::thread::scope(|scope| {
        scope.spawn(|| {
            let mut i = 10_000u32;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                db.put(format!("key{i:06}"), b"concurrent").unwrap();
                i += 1;
            }
        });
        std::thread::sleep(Duration::from_millis(50));
        let meta = db.checkpoint(root.path().join("ckpt")).unwrap();
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        meta
    });
    let copy = contents(&root.path().join("ckpt"));
    for (k, v) in &model {
        assert_eq!(copy.get(k), Some(v));
    }
    // A consistent prefix of the concurrent writer's keys, nothing torn.
    let concurrent: Vec<u32> = copy
        .keys()
        .filter_map(|k| std::str::from_utf8(&k[3..]).ok()?.parse::<u32>().ok())
        .filter(|&i| i >= 10_000)
        .collect();
    if let (Some(first), Some(last)) = (concurrent.first(), concurrent.last()) {
        assert_eq!(*first, 10_000);
        assert_eq!(
            (last - first + 1) as usize,
            concurrent.len(),
            "gap-free prefix"
        );
    }
    assert!(meta.sequence >= 2000);
}

#[test]
fn verify_and_restore_reject_damage_and_leave_old_data_alone() {
    let root = tempfile::tempdir().unwrap();
    let db = Db::open(root.path().join("db"), options()).unwrap();
    let mut model = BTreeMap::new();
    write_range(&db, &mut model, 0..2000, "v");
    let meta = db.checkpoint(root.path().join("ckpt")).unwrap();
    let good = root.path().join("good");
    db.checkpoint(&good).unwrap();
    db.close().unwrap();

    // An existing database at the target.
    let target = root.path().join("live");
    checkpoint::restore(&good, &target, &mut |_| {}).unwrap();
    let before = contents(&target);

    // Flip one byte of a table: verify and restore both name the file.
    let table = meta
        .files
        .iter()
        .find(|f| f.name.ends_with(".sst"))
        .unwrap();
    let table_path = root.path().join("ckpt").join(&table.name);
    let mut bytes = fs::read(&table_path).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 1;
    // The table is a hard link shared with the database and the other
    // checkpoint: damage a fresh copy (a new inode), not the shared bytes.
    fs::remove_file(&table_path).unwrap();
    fs::write(&table_path, &bytes).unwrap();
    match checkpoint::verify(&root.path().join("ckpt"), &mut |_| {}) {
        Err(Error::Corruption { path, .. }) => assert_eq!(path, table_path),
        other => panic!("expected corruption, got {other:?}"),
    }
    match checkpoint::restore(&root.path().join("ckpt"), &target, &mut |_| {}) {
        Err(Error::Corruption { path, .. }) => assert_eq!(path, table_path),
        other => panic!("expected corruption, got {other:?}"),
    }
    assert_eq!(
        contents(&target),
        before,
        "a failed restore leaves the old data untouched"
    );
    assert!(
        !root.path().join("live.restoring").exists(),
        "no staging left behind"
    );

    // A missing file.
    fs::remove_file(&table_path).unwrap();
    match checkpoint::verify(&root.path().join("ckpt"), &mut |_| {}) {
        Err(Error::Io { path, .. }) => assert_eq!(path, table_path),
        other => panic!("expected a missing-file error, got {other:?}"),
    }

    // Restoring a good checkpoint over an existing database replaces it.
    checkpoint::restore(&good, &target, &mut |_| {}).unwrap();
    assert_eq!(contents(&target), model);
}

#[test]
fn delta_whose_base_does_not_match_is_refused() {
    let root = tempfile::tempdir().unwrap();
    let db = Db::open(root.path().join("db"), options()).unwrap();
    let mut model = BTreeMap::new();
    write_range(&db, &mut model, 0..500, "a");
    db.checkpoint(root.path().join("base")).unwrap();
    write_range(&db, &mut model, 500..600, "b");
    db.checkpoint_delta(root.path().join("base"), root.path().join("delta"))
        .unwrap();
    // Replace the base with another checkpoint under the same name.
    fs::remove_dir_all(root.path().join("base")).unwrap();
    write_range(&db, &mut model, 600..700, "c");
    db.checkpoint(root.path().join("base")).unwrap();
    match checkpoint::verify(&root.path().join("delta"), &mut |_| {}) {
        Err(Error::Corruption { reason, .. }) => {
            assert!(reason.contains("does not match"), "{reason}")
        }
        other => panic!("expected a base mismatch, got {other:?}"),
    }
    // Bad arguments get clear errors.
    let not_a_checkpoint = root.path().join("db");
    assert!(db
        .checkpoint_delta(&not_a_checkpoint, root.path().join("x"))
        .is_err());
    let elsewhere = tempfile::tempdir().unwrap();
    assert!(matches!(
        db.checkpoint_delta(root.path().join("delta"), elsewhere.path().join("y")),
        Err(Error::InvalidOptions(_))
    ));
    assert!(matches!(
        db.checkpoint(root.path().join("delta")),
        Err(Error::InvalidOptions(_))
    ));
}

#[test]
fn progress_is_reported() {
    let root = tempfile::tempdir().unwrap();
    let db = Db::open(root.path().join("db"), options()).unwrap();
    let mut model = BTreeMap::new();
    write_range(&db, &mut model, 0..2000, "a");
    let mut events = Vec::new();
    db.checkpoint_with(None, root.path().join("c"), &mut |p| events.push(p))
        .unwrap();
    let last = events.last().unwrap();
    assert_eq!(last.stage, "link");
    assert_eq!(last.done_bytes, last.total_bytes);
    let mut restored = Vec::new();
    checkpoint::restore(&root.path().join("c"), &root.path().join("r"), &mut |p| {
        restored.push(p)
    })
    .unwrap();
    assert!(restored
        .iter()
        .all(|p| p.stage == "restore" && p.done_bytes <= p.total_bytes));
}

#[test]
fn periodic_checkpoints_form_chains_and_prune() {
    let root = tempfile::tempdir().unwrap();
    let backups = root.path().join("backups");
    let options = Options {
        periodic_checkpoints: Some(PeriodicCheckpoints {
            dir: backups.clone(),
            interval: Duration::from_millis(40),
            every_bytes: None,
            deltas_per_chain: 2,
            keep_chains: 2,
        }),
        ..options()
    };
    let db = Db::open(root.path().join("db"), options).unwrap();
    let mut model = BTreeMap::new();
    let mut i = 0;
    while db.statistics().checkpoints < 8 {
        write_range(&db, &mut model, i..i + 50, "p");
        i += 50;
        std::thread::sleep(Duration::from_millis(5));
    }
    let acknowledged = model.clone();
    // Wait for one more checkpoint: it must hold everything written before.
    let taken = db.statistics().checkpoints;
    while db.statistics().checkpoints < taken + 2 {
        std::thread::sleep(Duration::from_millis(10));
    }
    let stats = db.statistics();
    db.close().unwrap();
    assert_eq!(stats.checkpoint_failures, 0);
    let mut chains: Vec<_> = fs::read_dir(&backups)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    chains.sort();
    assert_eq!(chains.len(), 2, "older chains are pruned: {chains:?}");
    let newest_chain = chains.last().unwrap();
    let mut members: Vec<_> = fs::read_dir(newest_chain)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    members.sort();
    assert!(
        members.len() <= 3,
        "one full and at most two deltas: {members:?}"
    );
    let newest = members.last().unwrap();
    let (meta, _) = checkpoint::read_meta(newest).unwrap();
    assert_eq!(meta.base.is_some(), members.len() > 1);
    checkpoint::verify(newest, &mut |_| {}).unwrap();
    let restored = contents(&restore(newest, root.path(), "restored"));
    for (k, v) in &acknowledged {
        assert_eq!(
            restored.get(k),
            Some(v),
            "write acknowledged before the checkpoint is in it"
        );
    }
}
