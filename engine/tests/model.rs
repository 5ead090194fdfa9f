//! Model-based test: random operation sequences against a `BTreeMap`,
//! with flushes, compactions, reopens, snapshots and iterators mixed in.

use ferry_engine::fs::FaultInjectionFs;
use ferry_engine::{Db, Durability, Options, WriteBatch};
use proptest::prelude::*;
use std::collections::BTreeMap;
use std::ops::Bound;
use std::path::Path;
use std::sync::Arc;

type Model = BTreeMap<Vec<u8>, Vec<u8>>;

#[derive(Debug, Clone)]
enum Op {
    Put(u8, u16),
    Delete(u8),
    Batch(Vec<(u8, Option<u16>)>),
    Get(u8),
    Flush,
    Compact(Option<(u8, u8)>),
    Reopen,
    TakeSnapshot,
    CheckSnapshot(usize),
    Range(u8, u8, bool),
    GetMany(Vec<u8>),
}

fn key(k: u8) -> Vec<u8> {
    // Shared prefixes exercise prefix compression; the spread of lengths
    // exercises key ordering across lengths.
    format!("key/{:03}/{}", k % 64, "x".repeat((k / 64) as usize)).into_bytes()
}

fn value(v: u16) -> Vec<u8> {
    let mut value = format!("value-{v}-").into_bytes();
    value.resize(16 + (v as usize % 200), b'v');
    value
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        30 => (any::<u8>(), any::<u16>()).prop_map(|(k, v)| Op::Put(k, v)),
        10 => any::<u8>().prop_map(Op::Delete),
        6 => prop::collection::vec((any::<u8>(), prop::option::of(any::<u16>())), 1..8).prop_map(Op::Batch),
        15 => any::<u8>().prop_map(Op::Get),
        3 => Just(Op::Flush),
        2 => prop::option::of((any::<u8>(), any::<u8>())).prop_map(Op::Compact),
        2 => Just(Op::Reopen),
        3 => Just(Op::TakeSnapshot),
        4 => any::<usize>().prop_map(Op::CheckSnapshot),
        6 => (any::<u8>(), any::<u8>(), any::<bool>()).prop_map(|(a, b, r)| Op::Range(a, b, r)),
        5 => prop::collection::vec(any::<u8>(), 0..20).prop_map(Op::GetMany),
    ]
}

fn options(fs: &FaultInjectionFs) -> Options {
    Options {
        fs: Arc::new(fs.clone()),
        durability: Durability::Buffered,
        // Tiny sizes so that a few hundred operations reach every level.
        write_buffer_bytes: 4096,
        block_bytes: 256,
        block_restart_interval: 4,
        level0_compaction_trigger: 2,
        level0_slowdown_trigger: 4,
        level0_stop_trigger: 8,
        level1_max_bytes: 8 << 10,
        target_file_bytes: 4 << 10,
        level_size_multiplier: 4,
        background_work: false,
        ..Options::default()
    }
}

fn expected_range(model: &Model, a: u8, b: u8) -> Vec<(Vec<u8>, Vec<u8>)> {
    let (low, high) = (key(a.min(b)), key(a.max(b)));
    if low > high {
        return Vec::new();
    }
    model
        .range::<Vec<u8>, _>((Bound::Included(&low), Bound::Excluded(&high)))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

fn collect(
    iter: impl Iterator<Item = ferry_engine::Result<(Vec<u8>, Vec<u8>)>>,
) -> Vec<(Vec<u8>, Vec<u8>)> {
    iter.collect::<Result<_, _>>().expect("iteration failed")
}

fn run(ops: Vec<Op>, background: bool) {
    let fs = FaultInjectionFs::new();
    let dir = Path::new("/db");
    let open = || {
        let mut options = options(&fs);
        options.background_work = background;
        Db::open(dir, options).expect("open")
    };
    let mut db = open();
    let mut model = Model::new();
    let mut snapshots: Vec<(ferry_engine::Snapshot, Model)> = Vec::new();
    for op in ops {
        match op {
            Op::Put(k, v) => {
                db.put(key(k), value(v)).unwrap();
                model.insert(key(k), value(v));
            }
            Op::Delete(k) => {
                db.delete(key(k)).unwrap();
                model.remove(&key(k));
            }
            Op::Batch(entries) => {
                let mut batch = WriteBatch::new();
                for (k, v) in entries {
                    match v {
                        Some(v) => {
                            batch.put(key(k), value(v));
                            model.insert(key(k), value(v));
                        }
                        None => {
                            batch.delete(key(k));
                            model.remove(&key(k));
                        }
                    }
                }
                db.write(batch).unwrap();
            }
            Op::Get(k) => assert_eq!(
                db.get(key(k)).unwrap(),
                model.get(&key(k)).cloned(),
                "get {k}"
            ),
            Op::GetMany(ks) => {
                let keys: Vec<Vec<u8>> = ks.iter().map(|&k| key(k)).collect();
                let expected: Vec<_> = keys.iter().map(|k| model.get(k).cloned()).collect();
                assert_eq!(db.get_many(&keys).unwrap(), expected, "get_many {ks:?}");
            }
            Op::Flush => db.flush().unwrap(),
            Op::Compact(range) => {
                let (low, high) = range.map(|(a, b)| (key(a.min(b)), key(a.max(b)))).unzip();
                db.compact_range(low.as_deref(), high.as_deref()).unwrap();
            }
            Op::Reopen => {
                // Snapshots do not survive a reopen.
                snapshots.clear();
                db.close().unwrap();
                db = open();
            }
            Op::TakeSnapshot => snapshots.push((db.snapshot(), model.clone())),
            Op::CheckSnapshot(i) => {
                if !snapshots.is_empty() {
                    let (snapshot, frozen) = &snapshots[i % snapshots.len()];
                    let seen = collect(snapshot.iter());
                    let expected: Vec<_> =
                        frozen.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
                    assert_eq!(seen, expected, "snapshot view changed");
                }
            }
            Op::Range(a, b, reverse) => {
                let (low, high) = (key(a.min(b)), key(a.max(b)));
                let mut expected = expected_range(&model, a, b);
                let seen = if reverse {
                    expected.reverse();
                    collect(db.range(low..high).rev())
                } else {
                    collect(db.range(low..high))
                };
                assert_eq!(seen, expected, "range");
            }
        }
    }
    // Final full check both ways, and from both ends at once.
    let all: Vec<_> = model.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    assert_eq!(collect(db.iter()), all);
    let mut reversed = all.clone();
    reversed.reverse();
    assert_eq!(collect(db.iter().rev()), reversed);
    let mut both = db.iter();
    let mut front = Vec::new();
    let mut back = Vec::new();
    while let Some(entry) = both.next() {
        front.push(entry.unwrap());
        match both.next_back() {
            Some(entry) => back.push(entry.unwrap()),
            None => break,
        }
    }
    back.reverse();
    front.extend(back);
    assert_eq!(front, all, "meeting iterators");
    drop(snapshots);
    db.close().unwrap();
    let db = open();
    assert_eq!(collect(db.iter()), all, "after final reopen");
}

proptest! {
    // FERRY_MODEL_CASES=2000 for a longer search than CI's.
    #![proptest_config(ProptestConfig { cases: std::env::var("FERRY_MODEL_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(128), ..ProptestConfig::default() })]

    #[test]
    fn matches_btreemap(ops in prop::collection::vec(op(), 1..400)) {
        run(ops, false);
    }

    #[test]
    fn matches_btreemap_with_background_threads(ops in prop::collection::vec(op(), 1..300)) {
        run(ops, true);
    }
}
