//! The revision history against a model of the acknowledged writes: reads
//! at random revisions, ranges at a revision, watches from a revision,
//! compaction (reads and watches below it fail and name it, the purge
//! removes what nobody can read any more), across restarts.

mod common;

use common::{fast_raft, Cluster};
use ferry_replication::state_machine::history::{ChangeKind, Compacted};
use ferry_replication::types::{Command, Compare, CompareOp, CompareTarget, Op, Txn};
use ferry_replication::{Consistency, Error, Node, WatchError, WatchOptions, Watcher};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

type State = BTreeMap<Vec<u8>, Vec<u8>>;

/// What one revision did: each key it changed, and its new value
/// (`None`: deleted).
type Changes = Vec<(Vec<u8>, Option<Vec<u8>>)>;

/// Every acknowledged write: revision → its ops' effect on the state.
#[derive(Default)]
struct Model {
    revisions: BTreeMap<u64, Changes>,
}

impl Model {
    fn state_at(&self, revision: u64) -> State {
        let mut state = State::new();
        for (_, changes) in self.revisions.range(..=revision) {
            for (key, value) in changes {
                match value {
                    Some(value) => state.insert(key.clone(), value.clone()),
                    None => state.remove(key),
                };
            }
        }
        state
    }
}

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// `count` random commands over 40 keys (some with a zero byte, so the
/// version index's escaping is exercised): puts, deletes, multi-op
/// transactions that may take either branch.
async fn churn(node: &Node, model: &mut Model, rng: &mut Rng, count: usize) {
    for _ in 0..count {
        let key = |rng: &mut Rng| {
            let n = rng.below(40);
            if n.is_multiple_of(7) {
                format!("k\0{n:02}").into_bytes()
            } else {
                format!("k{n:02}").into_bytes()
            }
        };
        let (a, b) = (key(rng), key(rng));
        let value = rng.next().to_le_bytes().repeat(1 + rng.below(8) as usize);
        let (command, branches) = match rng.below(4) {
            0 => (Command::batch(vec![Op::delete(a.clone())]), None),
            1 => (
                Command::batch(vec![Op::put(a.clone(), value.clone())]),
                None,
            ),
            2 => (
                Command::batch(vec![
                    Op::put(a.clone(), value.clone()),
                    Op::delete(b.clone()),
                ]),
                None,
            ),
            _ => (
                Command::Txn(Txn {
                    compares: vec![Compare {
                        key: a.clone(),
                        op: CompareOp::Greater,
                        target: CompareTarget::Version(0),
                    }],
                    success: vec![Op::put(b.clone(), value.clone())],
                    failure: vec![Op::put(a.clone(), value.clone())],
                    ..Txn::default()
                }),
                Some(()),
            ),
        };
        let response = node.txn(command.clone()).await.unwrap();
        let Command::Txn(txn) = command else {
            unreachable!()
        };
        let ops = match branches {
            Some(()) if !response.succeeded => txn.failure,
            _ => txn.success,
        };
        let state = model.state_at(response.revision);
        let mut changes = Vec::new();
        let mut now = state;
        for op in ops {
            match op {
                Op::Put { key, value, .. } => {
                    now.insert(key.clone(), value.clone());
                    changes.push((key, Some(value)));
                }
                Op::Delete { key, .. } => {
                    if now.remove(&key).is_some() {
                        changes.push((key, None));
                    }
                }
                Op::DeleteRange { start, end, .. } => {
                    let gone: Vec<_> = now
                        .keys()
                        .filter(|k| **k >= start && end.as_ref().is_none_or(|e| *k < e))
                        .cloned()
                        .collect();
                    for key in gone {
                        now.remove(&key);
                        changes.push((key, None));
                    }
                }
                Op::Get { .. } | Op::Range { .. } => {}
            }
        }
        model.revisions.insert(response.revision, changes);
    }
}

async fn state_at(node: &Node, revision: u64) -> Result<State, Error> {
    let read = node
        .range_at(&[], None, usize::MAX, revision, Consistency::Stale)
        .await?;
    assert_eq!(read.revision, revision);
    Ok(read
        .value
        .into_iter()
        .map(|kv| (kv.key, kv.value))
        .collect())
}

async fn check_reads(node: &Node, model: &Model, rng: &mut Rng, compacted: u64) {
    let last = *model.revisions.keys().last().unwrap();
    let floor = compacted.max(1);
    for round in 0..30 {
        // Half of them just after the compacted revision, where versions
        // kept or restored by the purge rules are read.
        let span = if round % 2 == 0 { 60 } else { last + 1 - floor };
        let revision = floor + rng.below(span.min(last + 1 - floor));
        let expected = model.state_at(revision);
        assert_eq!(
            state_at(node, revision).await.unwrap(),
            expected,
            "range at {revision}"
        );
        // Point reads, present and absent keys alike.
        for key in expected
            .keys()
            .take(3)
            .cloned()
            .chain([b"k\x0014".to_vec(), b"k03".to_vec()])
        {
            let read = node
                .get_at(&key, revision, Consistency::Stale)
                .await
                .unwrap();
            assert_eq!(
                read.value.map(|kv| kv.value),
                expected.get(&key).cloned(),
                "{key:?} at {revision}"
            );
        }
    }
}

/// Every change from `from` through `until`, as a watch delivers them.
async fn watched(node: &Node, from: u64, until: u64) -> Vec<(u64, Vec<u8>, Option<Vec<u8>>)> {
    let mut watcher = node
        .watch(WatchOptions::range(Vec::new(), None, from))
        .unwrap();
    drain(&mut watcher, until).await
}

/// What `watcher` delivers until its position reaches `until`; its
/// position never moves back on the way.
async fn drain(watcher: &mut Watcher, until: u64) -> Vec<(u64, Vec<u8>, Option<Vec<u8>>)> {
    let start = watcher.revision();
    let mut seen = Vec::new();
    while watcher.revision() < until {
        let batch = tokio::time::timeout(Duration::from_secs(10), watcher.next())
            .await
            .expect("the watch stalled")
            .unwrap();
        assert!(batch.revision >= start, "the position moved back");
        for event in batch.events {
            let change = event.change;
            let value = (change.kind == ChangeKind::Put).then_some(change.value);
            seen.push((change.revision, change.key, value));
        }
    }
    seen
}

fn expected_changes(model: &Model, from: u64, until: u64) -> Vec<(u64, Vec<u8>, Option<Vec<u8>>)> {
    model
        .revisions
        .range(from..=until)
        .flat_map(|(revision, changes)| {
            changes
                .iter()
                .map(move |(k, v)| (*revision, k.clone(), v.clone()))
        })
        .collect()
}

async fn wait_purged(node: &Node) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while node.state().purge_pending().unwrap() {
        assert!(Instant::now() < deadline, "the purge did not finish");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// History entries (change log, versions) the engine holds below `below`.
fn entries_below(node: &Node, below: u64) -> (usize, usize) {
    let db = node.state().db();
    let changes = db
        .range(
            [0x02u8].to_vec()
                ..[0x02u8]
                    .iter()
                    .chain(&below.to_be_bytes())
                    .copied()
                    .collect::<Vec<_>>(),
        )
        .count();
    let versions = db
        .prefix([0x03u8])
        .filter(|item| {
            let (key, _) = item.as_ref().unwrap();
            let revision =
                u64::from_be_bytes(key[key.len() - 12..key.len() - 4].try_into().unwrap());
            revision < below
        })
        .count();
    (changes, versions)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reads_and_watches_at_any_retained_revision_match_the_model_across_compactions_and_restarts(
) {
    let mut cluster = Cluster::start(3, fast_raft()).await;
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let mut model = Model::default();
    let leader_id = cluster.wait_leader(Duration::from_secs(10)).await;
    let leader = cluster.nodes[&leader_id].clone();
    churn(&leader, &mut model, &mut rng, 300).await;
    check_reads(&leader, &model, &mut rng, 0).await;
    let last = *model.revisions.keys().last().unwrap();
    let first = *model.revisions.keys().next().unwrap();
    assert_eq!(
        watched(&leader, first, last).await,
        expected_changes(&model, first, last)
    );

    // Compact near the end, so that most keys' latest versions are below
    // the cut when the purge runs; below it reads and watches fail and name
    // the compacted revision; from it on they match the model.
    let cut = *model.revisions.keys().nth(280).unwrap();
    assert_eq!(leader.compact_history(cut).await.unwrap(), cut);
    wait_purged(&leader).await;
    let below = state_at(&leader, cut - 1).await.unwrap_err();
    assert!(
        matches!(below, Error::Compacted(Compacted { requested, compacted }) if requested == cut - 1 && compacted == cut),
        "{below:?}"
    );
    match leader.watch(WatchOptions::range(Vec::new(), None, cut - 1)) {
        Err(WatchError::Compacted(c)) => assert_eq!(c.compacted, cut),
        other => panic!("expected Compacted, got {:?}", other.err()),
    }
    // The purge left no change below the cut, and versions only where a
    // read at the cut needs them (a key's version before it, changed since).
    let (changes, versions) = entries_below(&leader, cut);
    assert_eq!(changes, 0);
    assert!(versions <= 40, "{versions} versions below the cut");
    // Compacting at or below the compacted revision is refused, naming it.
    assert!(matches!(
        leader.compact_history(cut - 10).await,
        Err(Error::Compacted(_))
    ));

    // More writes, then every replica holds the same history and state.
    churn(&leader, &mut model, &mut rng, 200).await;
    check_reads(&leader, &model, &mut rng, cut).await;
    let last = *model.revisions.keys().last().unwrap();
    cluster.wait_applied(last, Duration::from_secs(20)).await;
    cluster.assert_converged(Duration::from_secs(10)).await;
    for node in cluster.nodes.values() {
        assert_eq!(
            watched(node, cut, last).await,
            expected_changes(&model, cut, last)
        );
    }

    // Every member restarted: the history is on disk.
    drop(leader);
    for id in [1, 2, 3] {
        cluster.kill(id).await;
        cluster.start_node(id).await;
    }
    let leader_id = cluster.wait_leader(Duration::from_secs(20)).await;
    let leader = cluster.nodes[&leader_id].clone();
    cluster.wait_applied(last, Duration::from_secs(20)).await;
    for node in cluster.nodes.values() {
        assert_eq!(
            watched(node, cut, last).await,
            expected_changes(&model, cut, last)
        );
        check_reads(node, &model, &mut rng, cut).await;
    }
    churn(&leader, &mut model, &mut rng, 50).await;
    check_reads(&leader, &model, &mut rng, cut).await;
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_retention_policy_compacts_beyond_its_bound_and_the_purge_follows() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = ferry_replication::NodeConfig::new(
        1,
        dir.path().join("node"),
        "127.0.0.1:0".parse().unwrap(),
    );
    config.retention = ferry_replication::RetentionOptions {
        keep_revisions: 50,
        keep_for: Duration::ZERO,
        check_interval: Duration::from_millis(100),
    };
    let node = Node::open(config).await.unwrap();
    node.initialize(BTreeMap::from([(1, node.raft_addr().to_owned())]))
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !node.is_leader() {
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut last = 0;
    for i in 0..200 {
        last = node
            .put(format!("k{}", i % 10), format!("v{i}"))
            .await
            .unwrap();
    }
    // Within a few checks the history is cut to the newest 50 revisions.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let compacted = node.compacted().unwrap();
        if compacted > last - 60 && !node.state().purge_pending().unwrap() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "compacted at {compacted}, last {last}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let compacted = node.compacted().unwrap();
    assert_eq!(entries_below(&node, compacted).0, 0);
    // The latest state is whole.
    for k in 0..10 {
        let read = node
            .get(format!("k{k}"), Consistency::Linearizable)
            .await
            .unwrap();
        assert_eq!(
            read.value.unwrap().value,
            format!("v{}", 190 + k).into_bytes()
        );
    }
    node.shutdown().await.unwrap();
}

/// A client resumes its watch on a member that has not applied as far
/// as the client has seen (a follower cut off, or just restarted): the
/// member waits until it has, then delivers each later change once and in
/// order, never the revisions the client already had.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_watch_resumed_on_a_member_behind_it_repeats_nothing() {
    let cluster = Cluster::start(3, fast_raft()).await;
    let leader_id = cluster.wait_leader(Duration::from_secs(10)).await;
    let behind = *cluster.nodes.keys().find(|id| **id != leader_id).unwrap();
    let leader = cluster.nodes[&leader_id].clone();
    let node = cluster.nodes[&behind].clone();
    let mut model = Model::default();
    let mut rng = Rng(11);
    churn(&leader, &mut model, &mut rng, 20).await;
    cluster
        .network
        .isolate(behind, cluster.nodes.keys().copied());
    churn(&leader, &mut model, &mut rng, 30).await;
    // The client saw everything up to here, through the leader.
    let seen_through = *model.revisions.keys().last().unwrap();
    let applied = node.metrics().last_applied.map_or(0, |l| l.index);
    assert!(applied < seen_through, "the member is not behind");
    let mut watcher = node
        .watch(WatchOptions::range(Vec::new(), None, seen_through + 1))
        .unwrap();
    assert_eq!(watcher.revision(), seen_through);
    // Waiting while the member is still behind: nothing to deliver yet.
    let early = tokio::time::timeout(Duration::from_millis(300), watcher.next()).await;
    assert!(early.is_err(), "a batch from a member behind the watch");
    assert_eq!(watcher.revision(), seen_through, "the position moved back");
    cluster.network.heal();
    churn(&leader, &mut model, &mut rng, 30).await;
    let last = *model.revisions.keys().last().unwrap();
    assert_eq!(
        drain(&mut watcher, last).await,
        expected_changes(&model, seen_through + 1, last)
    );
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_member_that_caught_up_by_snapshot_serves_the_same_history() {
    let mut cluster = Cluster::start(3, fast_raft()).await;
    let leader_id = cluster.wait_leader(Duration::from_secs(10)).await;
    let lagging = *cluster.nodes.keys().find(|id| **id != leader_id).unwrap();
    let leader = cluster.nodes[&leader_id].clone();
    let mut model = Model::default();
    let mut rng = Rng(7);
    churn(&leader, &mut model, &mut rng, 50).await;
    cluster.kill(lagging).await;
    churn(&leader, &mut model, &mut rng, 150).await;
    let cut = *model.revisions.keys().nth(80).unwrap();
    leader.compact_history(cut).await.unwrap();
    wait_purged(&leader).await;
    churn(&leader, &mut model, &mut rng, 20).await;
    // The log it lacks is gone: it can only catch up by a snapshot.
    common::snapshot_and_purge_log(&leader).await;
    let received = cluster.nodes[&leader_id]
        .transfer_stats()
        .bytes_sent
        .load(std::sync::atomic::Ordering::Relaxed);
    cluster.start_node(lagging).await;
    let last = *model.revisions.keys().last().unwrap();
    cluster.wait_applied(last, Duration::from_secs(20)).await;
    let node = cluster.nodes[&lagging].clone();
    assert!(
        leader
            .transfer_stats()
            .bytes_sent
            .load(std::sync::atomic::Ordering::Relaxed)
            > received,
        "the member caught up without a snapshot"
    );
    assert_eq!(node.compacted().unwrap(), cut);
    assert_eq!(
        watched(&node, cut, last).await,
        expected_changes(&model, cut, last)
    );
    check_reads(&node, &model, &mut rng, cut).await;
    cluster.assert_converged(Duration::from_secs(10)).await;
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_unchanged_since_before_a_compaction_keeps_its_version_when_it_changes() {
    let cluster = Cluster::start(1, fast_raft()).await;
    let node = cluster.nodes[&1].clone();
    let first = node.put("a", "1").await.unwrap();
    let cut = node.put("b", "1").await.unwrap();
    node.compact_history(cut).await.unwrap();
    wait_purged(&node).await;
    // "a"'s only version is below the cut, and nothing read it there: the
    // purge removed its version entry. Changing "a" now must keep the
    // version a read at the cut sees.
    assert_eq!(entries_below(&node, cut), (0, 0));
    let changed = node.put("a", "2").await.unwrap();
    node.delete("b").await.unwrap();
    let at_cut = state_at(&node, cut).await.unwrap();
    assert_eq!(
        at_cut,
        State::from([
            (b"a".to_vec(), b"1".to_vec()),
            (b"b".to_vec(), b"1".to_vec())
        ]),
        "the state at the cut (a was written at {first})"
    );
    let at_change = state_at(&node, changed).await.unwrap();
    assert_eq!(
        at_change,
        State::from([
            (b"a".to_vec(), b"2".to_vec()),
            (b"b".to_vec(), b"1".to_vec())
        ])
    );
    drop(node);
    cluster.shutdown().await;
}

/// `Watcher::next` is cancel-safe where it reads the previous values of
/// changes it has taken from the live feed: dropped there (a progress
/// timer won the `select!` it sits in), the next call still returns those
/// changes, without waiting for another write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_dropped_while_reading_previous_values_loses_nothing() {
    use futures_util::FutureExt;
    let cluster = Cluster::start(1, fast_raft()).await;
    let node = cluster.leader().unwrap().clone();
    node.put("k", "v0").await.unwrap();
    let mut options = WatchOptions::range(b"k".to_vec(), Some(b"l".to_vec()), 0);
    options.prev_kv = true;
    let mut watcher = node.watch(options).unwrap();
    let mut dropped = 0;
    for round in 1..=20u32 {
        let value = format!("v{round}");
        node.put("k", value.as_str()).await.unwrap();
        // One poll: it takes the change from the feed, then (almost
        // always) waits for the read of the previous value, and is
        // dropped there. If the read was done at once, try again.
        let batch = match watcher.next().now_or_never() {
            Some(batch) => batch.unwrap(),
            None => {
                dropped += 1;
                tokio::time::timeout(Duration::from_secs(10), watcher.next())
                    .await
                    .expect("the change taken before the drop never came")
                    .unwrap()
            }
        };
        assert_eq!(batch.events.len(), 1);
        let event = &batch.events[0];
        assert_eq!(event.change.value, value.as_bytes());
        let prev = event.prev.as_ref().expect("a previous value");
        assert_eq!(prev.value, format!("v{}", round - 1).as_bytes());
        if dropped >= 3 {
            break;
        }
    }
    assert!(dropped > 0, "no poll was ever left waiting");
    cluster.shutdown().await;
}

/// A transaction that changes one key twice: each change's previous value
/// is the one just before it, the earlier change of the same revision
/// included, from the live feed and from the engine alike.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_changed_twice_in_one_revision_has_each_previous_value() {
    let cluster = Cluster::start(1, fast_raft()).await;
    let node = cluster.leader().unwrap().clone();
    let first = node.put("k", "v0").await.unwrap();
    let watch = |from| {
        let mut options = WatchOptions::range(b"k".to_vec(), Some(b"l".to_vec()), from);
        options.prev_kv = true;
        node.watch(options).unwrap()
    };
    let mut live = watch(first + 1);
    let put = |value: &str| Op::put(b"k".to_vec(), value.as_bytes().to_vec());
    let twice = node
        .txn(Command::batch(vec![
            put("v1"),
            put("v2"),
            Op::delete(b"k".to_vec()),
        ]))
        .await
        .unwrap()
        .revision;
    let expected = [
        (twice, ChangeKind::Put, "v0"),
        (twice, ChangeKind::Put, "v1"),
        (twice, ChangeKind::Delete, "v2"),
    ];
    let mut from_engine = watch(first + 1);
    for watcher in [&mut live, &mut from_engine] {
        let batch = tokio::time::timeout(Duration::from_secs(10), watcher.next())
            .await
            .unwrap()
            .unwrap();
        let seen: Vec<_> = batch
            .events
            .iter()
            .map(|e| {
                let prev = e.prev.as_ref().expect("a previous value");
                (
                    e.change.revision,
                    e.change.kind,
                    String::from_utf8(prev.value.clone()).unwrap(),
                )
            })
            .collect();
        let expected: Vec<_> = expected
            .iter()
            .map(|(r, k, v)| (*r, *k, v.to_string()))
            .collect();
        assert_eq!(seen, expected);
    }
    cluster.shutdown().await;
}

/// A run too large for the live feed (its changes are in the engine only)
/// still reaches a live watch, in order, with the runs around it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_too_large_for_the_live_feed_reaches_a_live_watch() {
    let cluster = Cluster::start(1, fast_raft()).await;
    let node = cluster.leader().unwrap().clone();
    let mut options = WatchOptions::range(b"big/".to_vec(), Some(b"big0".to_vec()), 0);
    options.batch_bytes = 64 << 10;
    let mut watcher = node.watch(options).unwrap();
    let large = vec![b'x'; ferry_replication::state_machine::changes::MAX_RUN_BYTES + 1];
    let mut written = Vec::new();
    written.push(node.put("big/a", "small").await.unwrap());
    written.push(node.put("big/b", large.clone()).await.unwrap());
    written.push(node.put("big/c", "small").await.unwrap());
    let mut seen = Vec::new();
    while seen.len() < 3 {
        let batch = tokio::time::timeout(Duration::from_secs(10), watcher.next())
            .await
            .expect("every change within 10 s")
            .unwrap();
        for event in batch.events {
            if event.change.key == b"big/b" {
                assert_eq!(event.change.value, large);
            }
            seen.push(event.change.revision);
        }
    }
    assert_eq!(seen, written);
    cluster.shutdown().await;
}

/// A range delete whose previous values are far larger than a batch:
/// a watch that takes split revisions gets it in bounded parts, each
/// change once, in order, with its previous value, from the live feed and
/// from the engine alike; one that does not gets it whole, or is ended
/// with `RevisionTooLarge` when it is larger than its bound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revision_larger_than_a_batch_goes_in_bounded_parts_or_whole() {
    const KEYS: usize = 200;
    const VALUE: usize = 8 << 10;
    const BATCH: usize = 32 << 10;
    let cluster = Cluster::start(1, fast_raft()).await;
    let node = cluster.leader().unwrap().clone();
    let key = |n: usize| format!("r/{n:03}").into_bytes();
    let value = |n: usize| vec![n as u8; VALUE];
    fill(&node, KEYS, value).await;
    let options = |from: u64, split: bool| {
        let mut options = WatchOptions::range(b"r/".to_vec(), Some(b"r0".to_vec()), from);
        options.prev_kv = true;
        options.batch_bytes = BATCH;
        options.split_revisions = split;
        options
    };
    let live = node.watch(options(0, true)).unwrap();
    let mut whole_live = node.watch(options(0, false)).unwrap();
    let deleted = delete_all(&node).await;
    let from_engine = node.watch(options(deleted, true)).unwrap();
    let mut small = options(deleted, false);
    small.max_whole_revision_bytes = KEYS * VALUE / 2;
    let mut too_small = node.watch(small).unwrap();

    let check = |events: &[ferry_replication::WatchEvent]| {
        assert_eq!(events.len(), KEYS);
        for (n, event) in events.iter().enumerate() {
            assert_eq!(event.change.revision, deleted);
            assert_eq!(event.change.kind, ChangeKind::Delete);
            assert_eq!(event.change.key, key(n));
            let prev = event.prev.as_ref().expect("a previous value");
            assert_eq!(prev.value, value(n), "{n}");
        }
    };
    for mut watcher in [live, from_engine] {
        let (mut events, mut parts) = (Vec::new(), 0);
        loop {
            let batch = tokio::time::timeout(Duration::from_secs(10), watcher.next())
                .await
                .expect("every part within 10 s")
                .unwrap();
            parts += 1;
            let bytes: usize = batch
                .events
                .iter()
                .map(|e| e.change.size() + VALUE + e.change.key.len())
                .sum();
            assert!(bytes <= 2 * BATCH + VALUE + 200, "a part of {bytes} bytes");
            let complete = batch.complete();
            assert_eq!(complete, batch.revision >= deleted);
            events.extend(batch.events);
            if complete {
                break;
            }
        }
        assert!(parts >= KEYS * VALUE / (2 * BATCH), "{parts} parts");
        check(&events);
    }

    let batch = tokio::time::timeout(Duration::from_secs(10), whole_live.next())
        .await
        .unwrap()
        .unwrap();
    assert!(batch.complete());
    assert_eq!(batch.revision, deleted);
    check(&batch.events);

    match tokio::time::timeout(Duration::from_secs(10), too_small.next())
        .await
        .unwrap()
    {
        Err(WatchError::RevisionTooLarge { revision, limit }) => {
            assert_eq!((revision, limit), (deleted, KEYS * VALUE / 2));
        }
        other => panic!("{other:?}"),
    }
    cluster.shutdown().await;
}

/// A split revision whose last part matches nothing (the watch's keys are
/// all in its first parts) still ends: the watcher says the revision is
/// complete, to one taking parts and to one waiting for it whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_split_revision_whose_rest_matches_nothing_still_completes() {
    // Parts of 8 deletes with their 8 KiB previous values: the 96th ends
    // a part, and the keys after it are not watched.
    const BATCH: usize = 32 << 10;
    let cluster = Cluster::start(1, fast_raft()).await;
    let node = cluster.leader().unwrap().clone();
    let key = |n: usize| format!("r/{n:03}").into_bytes();
    fill(&node, 200, |_| vec![7; 8192]).await;
    let deleted = delete_all(&node).await;
    for split in [true, false] {
        let mut options = WatchOptions::range(key(0), Some(key(96)), deleted);
        options.prev_kv = true;
        options.batch_bytes = BATCH;
        options.split_revisions = split;
        let mut watcher = node.watch(options).unwrap();
        let mut events = 0;
        loop {
            let batch = tokio::time::timeout(Duration::from_secs(10), watcher.next())
                .await
                .expect("the revision completes within 10 s")
                .unwrap();
            events += batch.events.len();
            if batch.complete() && batch.revision >= deleted {
                break;
            }
            assert!(split, "a watcher not taking parts got one");
        }
        assert_eq!(events, 96, "split: {split}");
        assert_eq!(watcher.revision(), deleted);
    }
    cluster.shutdown().await;
}

/// Writes `keys` keys `r/000`.. with `value(n)`, in transactions of 50.
async fn fill(node: &Node, keys: usize, value: impl Fn(usize) -> Vec<u8>) {
    for chunk in (0..keys).collect::<Vec<_>>().chunks(50) {
        let ops = chunk
            .iter()
            .map(|&n| Op::put(format!("r/{n:03}").into_bytes(), value(n)))
            .collect();
        node.txn(Command::batch(ops)).await.unwrap();
    }
}

/// Deletes every key under `r/` in one range delete; returns its revision.
async fn delete_all(node: &Node) -> u64 {
    let delete = Op::DeleteRange {
        start: b"r/".to_vec(),
        end: Some(b"r0".to_vec()),
        prev_kv: false,
    };
    node.txn(Command::batch(vec![delete]))
        .await
        .unwrap()
        .revision
}
