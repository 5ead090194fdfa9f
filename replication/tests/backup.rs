//! The backup chain: checkpoints and log shipped by successive leaders,
//! point-in-time restore to an index and to a time compared with a model,
//! the chain continuing past a purged log, and damage in the chain
//! reported by name.

mod common;
#[path = "common/s3.rs"]
mod s3;

use common::{fast_raft, Cluster};
use ferry_replication::backup::{
    head, restore, verify, BackupOptions, BackupShipper, BackupTarget, Catalog, LocalDir, LogChunk,
    RestorePoint, Retention,
};
use ferry_replication::engine::fs::OsFs;
use ferry_replication::types::{now_ms, FerryNode, Op};
use ferry_replication::{Consistency, Node};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

type State = BTreeMap<Vec<u8>, Vec<u8>>;

/// Acknowledged writes in revision order.
#[derive(Default)]
struct Model {
    writes: Vec<(u64, Op)>,
}

impl Model {
    fn state_at(&self, index: u64) -> State {
        let mut state = State::new();
        for (revision, op) in &self.writes {
            if *revision > index {
                break;
            }
            match op {
                Op::Put { key, value, .. } => {
                    state.insert(key.clone(), value.clone());
                }
                Op::Delete { key, .. } => {
                    state.remove(key);
                }
                Op::DeleteRange { start, end, .. } => {
                    state.retain(|k, _| k < start || end.as_ref().is_some_and(|e| k >= e));
                }
                Op::Get { .. } | Op::Range { .. } => {}
            }
        }
        state
    }

    fn last(&self) -> u64 {
        self.writes.last().map_or(0, |w| w.0)
    }
}

/// `count` puts and deletes over 60 keys through `node`, recorded in `model`.
async fn churn(node: &Node, model: &mut Model, count: u64, seed: u64) {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    for _ in 0..count {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let key = format!("key-{:02}", state % 60).into_bytes();
        let op = if state.is_multiple_of(5) {
            Op::delete(key)
        } else {
            Op::put(key, state.to_le_bytes().repeat(1 + (state % 40) as usize))
        };
        let revision = node.write(vec![op.clone()]).await.unwrap();
        assert!(revision > model.last());
        model.writes.push((revision, op));
    }
}

/// The user keys of a restored data directory, read from its engine.
fn restored_state(data_dir: &Path) -> State {
    ferry_replication::recovery::user_state(&ferry_engine::fs::OsFs::shared(), data_dir)
        .unwrap()
        .into_iter()
        .map(|(key, kv)| (key, kv.value))
        .collect()
}

async fn restore_to(
    chain: &Arc<dyn BackupTarget>,
    point: RestorePoint,
    out: &Path,
) -> std::io::Result<ferry_replication::backup::RestoreReport> {
    restore(
        &ferry_engine::fs::OsFs::shared(),
        chain.clone(),
        point,
        out,
        1,
        FerryNode::from("127.0.0.1:1".to_string()),
    )
    .await
}

fn shipper(node: &Arc<Node>, chain: &Arc<dyn BackupTarget>) -> Arc<BackupShipper> {
    BackupShipper::new(
        node.clone(),
        chain.clone(),
        BackupOptions {
            max_chunk_entries: 70,
            ..BackupOptions::default()
        },
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn point_in_time_restore_to_index_and_time_matches_the_model() {
    let scratch = tempfile::tempdir().unwrap();
    let chain: Arc<dyn BackupTarget> =
        Arc::new(LocalDir::new(scratch.path().join("chain")).unwrap());
    chain_scenario(chain, scratch.path()).await;
}

/// The same chain, in a real S3 server (moto) started for the test.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_chain_in_s3_ships_fences_prunes_verifies_and_restores() {
    let scratch = tempfile::tempdir().unwrap();
    let s3 = s3::MotoServer::start();
    let chain = s3.target("chains/cluster-a");
    chain_scenario(chain, scratch.path()).await;
}

/// Ships through two leaders, restores to points compared with a model,
/// fences the first leader, prunes, verifies and reports damage by name.
async fn chain_scenario(chain: Arc<dyn BackupTarget>, scratch: &Path) {
    let cluster = Cluster::start(3, fast_raft()).await;
    let mut model = Model::default();

    let first = cluster.wait_leader(Duration::from_secs(10)).await;
    let leader = cluster.nodes[&first].clone();
    let shipper_a = shipper(&leader, &chain);
    churn(&leader, &mut model, 150, 1).await;
    let shipped = shipper_a.ship(true).await.unwrap();
    let checkpoint_1 = shipped
        .checkpoint
        .expect("first round ships a checkpoint")
        .index;
    assert_eq!(shipped.shipped_index, checkpoint_1);
    churn(&leader, &mut model, 150, 2).await;
    let shipped = shipper_a.ship(false).await.unwrap();
    assert!(shipped.checkpoint.is_none());
    assert_eq!(
        shipped.shipped_index,
        leader.metrics().last_applied.unwrap().index
    );
    let end_of_phase_2 = model.last();
    // What shipping cost is counted: the rounds' steps always, and an
    // object store's own I/O threads (a directory has none).
    let status = shipper_a.status();
    assert!(
        status.cpu_ns.load(Ordering::Relaxed) > 0,
        "the rounds used CPU"
    );
    assert_eq!(
        status.target_cpu_ns.load(Ordering::Relaxed) > 0,
        chain.describe().starts_with("s3://"),
        "{}",
        chain.describe()
    );

    tokio::time::sleep(Duration::from_millis(20)).await;
    let cut = now_ms();
    tokio::time::sleep(Duration::from_millis(20)).await;

    // The chain goes on from another leader.
    let second = *cluster.nodes.keys().find(|&&id| id != first).unwrap();
    leader
        .transfer_leadership(second, Duration::from_secs(10))
        .await
        .unwrap();
    let leader = cluster.nodes[&second].clone();
    let shipper_b = shipper(&leader, &chain);
    churn(&leader, &mut model, 150, 3).await;
    let checkpoint_2 = shipper_b
        .ship(true)
        .await
        .unwrap()
        .checkpoint
        .unwrap()
        .index;
    churn(&leader, &mut model, 100, 4).await;
    shipper_b.ship(false).await.unwrap();
    churn(&leader, &mut model, 50, 5).await;
    let third = shipper_b.ship(true).await.unwrap().checkpoint.unwrap();
    let (checkpoint_3, new_bytes, total) = (third.index, third.new_bytes, third.total_bytes);
    assert!(
        new_bytes < total,
        "a later checkpoint ships only new tables: {new_bytes} of {total}"
    );
    churn(&leader, &mut model, 40, 6).await;
    let last = shipper_b.ship(false).await.unwrap().shipped_index;
    assert!(
        checkpoint_1 < end_of_phase_2
            && end_of_phase_2 < checkpoint_2
            && checkpoint_2 < checkpoint_3
    );
    assert!(last >= model.last());

    let points = [
        (
            "at the first checkpoint",
            RestorePoint::Index(checkpoint_1),
            checkpoint_1,
        ),
        (
            "mid log after it",
            RestorePoint::Index(checkpoint_1 + 77),
            checkpoint_1 + 77,
        ),
        (
            "just before the second",
            RestorePoint::Index(checkpoint_2 - 1),
            checkpoint_2 - 1,
        ),
        (
            "at the second",
            RestorePoint::Index(checkpoint_2),
            checkpoint_2,
        ),
        (
            "between second and third",
            RestorePoint::Index(checkpoint_2 + 120),
            checkpoint_2 + 120,
        ),
        ("the time cut", RestorePoint::Time(cut), end_of_phase_2),
        ("latest", RestorePoint::Latest, model.last()),
    ];
    for (n, (what, point, index)) in points.into_iter().enumerate() {
        let out = scratch.join(format!("restored-{n}"));
        let report = restore_to(&chain, point, &out)
            .await
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        let expected = model.state_at(index);
        assert_eq!(restored_state(&out), expected, "{what}: {report:?}");
        if let RestorePoint::Index(wanted) = point {
            assert_eq!(report.applied.unwrap().index, wanted, "{what}");
        }
        if let RestorePoint::Time(_) = point {
            // The cut leaves out every write after it, and only those.
            assert!(report.time_ms <= cut, "{report:?}");
            let applied = report.applied.unwrap().index;
            assert!(
                applied >= end_of_phase_2
                    && model
                        .writes
                        .iter()
                        .all(|w| w.0 <= end_of_phase_2 || w.0 > applied)
            );
        }
    }

    // A restored directory serves as a new cluster.
    let out = scratch.join("restored-6");
    let node = common::open_restored(1, &out).await;
    node.put("after-restore", "yes").await.unwrap();
    let read = node
        .get(b"after-restore", Consistency::Linearizable)
        .await
        .unwrap();
    assert_eq!(read.value.map(|kv| kv.value), Some(b"yes".to_vec()));
    node.shutdown().await.unwrap();

    // Points the chain does not hold are errors, not shorter states.
    let error = restore_to(
        &chain,
        RestorePoint::Index(checkpoint_1 - 1),
        &scratch.join("early"),
    )
    .await
    .unwrap_err();
    assert!(
        error.to_string().contains("before the oldest checkpoint"),
        "{error}"
    );
    let error = restore_to(
        &chain,
        RestorePoint::Index(last + 1000),
        &scratch.join("late"),
    )
    .await
    .unwrap_err();
    assert!(error.to_string().contains("is not shipped"), "{error}");
    assert!(!scratch.join("late").exists());

    // A clean chain verifies, from the first checkpoint to the end.
    let fs = OsFs;
    let report = verify(&fs, &*chain, &scratch.join("verify")).unwrap();
    assert!(report.problems.is_empty(), "{report:?}");
    let restorable = report.restorable.unwrap();
    assert_eq!(
        (restorable.first_index, restorable.last_index),
        (checkpoint_1, last)
    );
    assert!(
        restorable.first_time_ms > 0 && restorable.last_time_ms >= cut,
        "{restorable:?}"
    );

    // The first leader, deposed but still shipping (a partition), is fenced:
    // it cannot claim the chain again, and what it writes is not chain.
    let (held, _) = head::read(&*chain).unwrap().unwrap();
    let (old_term, term) = (held.segments[0].term, held.term());
    assert!(old_term < term, "{held:?}");
    let error = head::claim(&*chain, old_term, first, || Ok(0)).unwrap_err();
    assert!(error.to_string().contains("fenced"), "{error}");
    let stale = LogChunk {
        first: last + 1,
        last: last + 5,
        term: old_term,
    }
    .name();
    let file = scratch.join("stale");
    std::fs::write(&file, b"entries a deposed leader ships").unwrap();
    chain.put(&stale, &file).unwrap();
    assert!(head::commit(&*chain, old_term, last + 5).is_err());
    let catalog = Catalog::read(&*chain).unwrap();
    assert_eq!(catalog.last_index(), Some(last));
    assert_eq!(catalog.orphans, vec![(stale.clone(), old_term)]);
    let report = verify(&fs, &*chain, &scratch.join("verify")).unwrap();
    assert!(
        report.problems.is_empty() && report.orphans == 1,
        "{report:?}"
    );

    // Two leaders' records of one checkpoint (the same state): the later
    // term's is used, and the other must not outlive it.
    let catalog = Catalog::read(&*chain).unwrap();
    let used = catalog.checkpoint_name(checkpoint_1);
    let twin = format!("checkpoints/{checkpoint_1:020}-{term:020}.ckpt");
    assert_ne!(used, twin);
    let file = scratch.join("twin");
    chain.get(&used, &file).unwrap();
    chain.put(&twin, &file).unwrap();
    let catalog = Catalog::read(&*chain).unwrap();
    assert_eq!(catalog.checkpoint_name(checkpoint_1), twin);
    assert_eq!(catalog.shadowed, vec![(checkpoint_1, used)]);

    // A record that cannot be read names objects nobody knows: a prune
    // keeps every object while it is kept, and does not fail (a round's
    // commit is done by then, and its prune must not make it a failure).
    let record = catalog.checkpoint_name(checkpoint_3);
    let good = scratch.join("good-record");
    chain.get(&record, &good).unwrap();
    damage(&chain, &record, 10, scratch);
    let objects = chain.list("objects").unwrap();
    let keep_two = Retention {
        keep_chains: Some(2),
        keep_for: None,
    };
    keep_two
        .prune(&fs, &*chain, term, &scratch.join("prune"), now_ms())
        .unwrap();
    assert_eq!(chain.list("objects").unwrap(), objects);
    chain.delete(&record).unwrap();
    chain.put(&record, &good).unwrap();

    // Retention keeps the newest chain, removes the rest (and the orphan),
    // and what it keeps still restores.
    let keep_one = Retention {
        keep_chains: Some(1),
        keep_for: None,
    };
    let removed = keep_one
        .prune(&fs, &*chain, term, &scratch.join("prune"), now_ms())
        .unwrap();
    assert!(removed > 3, "{removed}");
    let catalog = Catalog::read(&*chain).unwrap();
    assert_eq!(catalog.checkpoints, vec![checkpoint_3]);
    assert!(catalog.shadowed.is_empty(), "{catalog:?}");
    assert_eq!(chain.list("checkpoints").unwrap().len(), 1);
    assert!(catalog.orphans.is_empty() && catalog.log_gaps().is_empty());
    assert!(catalog.log.iter().all(|c| c.last > checkpoint_3));
    let report = verify(&fs, &*chain, &scratch.join("verify")).unwrap();
    assert!(report.problems.is_empty(), "{report:?}");
    assert_eq!(
        report.restorable.map(|r| (r.first_index, r.last_index)),
        Some((checkpoint_3, last))
    );
    let out = scratch.join("after-prune");
    restore_to(&chain, RestorePoint::Latest, &out)
        .await
        .unwrap();
    assert_eq!(restored_state(&out), model.state_at(model.last()));
    let error = restore_to(
        &chain,
        RestorePoint::Index(checkpoint_2),
        &scratch.join("pruned"),
    )
    .await
    .unwrap_err();
    assert!(
        error.to_string().contains("before the oldest checkpoint"),
        "{error}"
    );

    // The newest log chunk lost leaves no gap before a later one: the
    // head, committed past it, shows it to restore and to verify.
    let catalog = Catalog::read(&*chain).unwrap();
    let newest = *catalog.log.last().unwrap();
    let kept = scratch.join("newest-chunk");
    chain.get(&newest.name(), &kept).unwrap();
    chain.delete(&newest.name()).unwrap();
    let error = restore_to(&chain, RestorePoint::Latest, &scratch.join("lost-tail"))
        .await
        .unwrap_err();
    assert!(error.to_string().contains("missing"), "{error}");
    assert!(!scratch.join("lost-tail").exists());
    let report = verify(&fs, &*chain, &scratch.join("verify")).unwrap();
    let reaches = report.restorable.unwrap().last_index;
    assert!(reaches < last, "{report:?}");
    assert!(
        report
            .problems
            .iter()
            .any(|p| p.name == "log/" && p.what.contains(&format!("{}..={last}", reaches + 1))),
        "{report:?}"
    );
    // Restoring to an index the chain still reaches works.
    restore_to(
        &chain,
        RestorePoint::Index(reaches),
        &scratch.join("before-lost-tail"),
    )
    .await
    .unwrap();
    chain.put(&newest.name(), &kept).unwrap();
    let report = verify(&fs, &*chain, &scratch.join("verify")).unwrap();
    assert!(report.problems.is_empty(), "{report:?}");

    // Damage in a log chunk or an object is reported by name, by restore
    // and by verify; so is a missing object.
    let catalog = Catalog::read(&*chain).unwrap();
    let tail = catalog.log.last().unwrap().name();
    damage(&chain, &tail, 40, scratch);
    let error = restore_to(&chain, RestorePoint::Latest, &scratch.join("bad-log"))
        .await
        .unwrap_err();
    assert!(error.to_string().contains(&tail), "{error}");
    let objects = chain.list("objects").unwrap();
    assert!(objects.len() >= 2, "{objects:?}");
    let (corrupt, missing) = (&objects[0], &objects[1]);
    damage(&chain, corrupt, 0, scratch);
    chain.delete(missing).unwrap();
    let error = restore_to(
        &chain,
        RestorePoint::Index(checkpoint_3),
        &scratch.join("bad-object"),
    )
    .await
    .unwrap_err();
    assert!(error.to_string().contains("objects/"), "{error}");
    assert!(!scratch.join("bad-object").exists());
    let report = verify(&fs, &*chain, &scratch.join("verify")).unwrap();
    let named = |name: &str| {
        report
            .problems
            .iter()
            .find(|p| p.name == name)
            .map(|p| p.what.clone())
    };
    assert!(named(&tail).is_some(), "{report:?}");
    assert!(
        named(corrupt).is_some_and(|w| w.contains("CRC")),
        "{report:?}"
    );
    assert!(
        named(missing).is_some_and(|w| w.contains("missing")),
        "{report:?}"
    );
    assert_eq!(report.problems.len(), 3, "{report:?}");

    cluster.shutdown().await;
}

/// Flips a byte of a stored file, through the target (delete, then put).
fn damage(chain: &Arc<dyn BackupTarget>, name: &str, at: usize, scratch: &Path) {
    let local = scratch.join("damaged");
    chain.get(name, &local).unwrap();
    flip_byte(&local, at);
    chain.delete(name).unwrap();
    chain.put(name, &local).unwrap();
}

fn flip_byte(path: &Path, at: usize) {
    let mut bytes = std::fs::read(path).unwrap();
    let at = at.min(bytes.len() - 1);
    bytes[at] ^= 0x40;
    std::fs::write(path, bytes).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_running_shipper_keeps_the_chain_going_past_a_purged_log() {
    let cluster = Cluster::start(1, fast_raft()).await;
    let scratch = tempfile::tempdir().unwrap();
    let chain: Arc<dyn BackupTarget> =
        Arc::new(LocalDir::new(scratch.path().join("chain")).unwrap());
    let id = cluster.wait_leader(Duration::from_secs(10)).await;
    let node = cluster.nodes[&id].clone();
    let mut model = Model::default();
    let shipper = BackupShipper::new(
        node.clone(),
        chain.clone(),
        BackupOptions {
            log_interval: Duration::from_millis(50),
            checkpoint_interval: Duration::from_secs(3600),
            max_chunk_entries: 1000,
            ..BackupOptions::default()
        },
    );
    let task = shipper.spawn();
    churn(&node, &mut model, 100, 7).await;
    wait_shipped(&shipper, model.last()).await;

    // The log the chain needs next is purged before the shipper sees it:
    // the next round ships a checkpoint instead.
    task.abort();
    churn(&node, &mut model, 100, 8).await;
    let covered = node.snapshot().await.unwrap().unwrap();
    node.purge_log(covered.index).await.unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while node.log_reader().first_index() <= covered.index {
        assert!(std::time::Instant::now() < deadline, "purge did not happen");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    churn(&node, &mut model, 20, 9).await;
    let report = shipper.ship(false).await.unwrap();
    assert!(report.checkpoint.is_some(), "{report:?}");
    assert_eq!(report.shipped_index, model.last());

    let out = scratch.path().join("restored");
    restore_to(&chain, RestorePoint::Latest, &out)
        .await
        .unwrap();
    assert_eq!(restored_state(&out), model.state_at(model.last()));

    // Writes shipped as one chunk ("A"), then a time cut.
    churn(&node, &mut model, 30, 10).await;
    let end_a = shipper.ship(false).await.unwrap().shipped_index;
    tokio::time::sleep(Duration::from_millis(20)).await;
    let cut = now_ms();
    tokio::time::sleep(Duration::from_millis(20)).await;

    // A round ships a checkpoint and dies before its log; the next leader
    // continues after the shipped log, not after that checkpoint.
    churn(&node, &mut model, 30, 11).await;
    let options = || BackupOptions {
        max_chunk_entries: 1000,
        ..BackupOptions::default()
    };
    let interrupted = BackupShipper::new(node.clone(), chain.clone(), options());
    let checkpoint = interrupted
        .ship(true)
        .await
        .unwrap()
        .checkpoint
        .unwrap()
        .index;
    assert!(checkpoint >= model.last());
    let log_dir = scratch.path().join("chain");
    let catalog = || ferry_replication::backup::Catalog::read(&*chain).unwrap();
    for chunk in catalog().log.into_iter().filter(|c| c.first > end_a) {
        std::fs::remove_file(log_dir.join(chunk.name())).unwrap();
    }
    let next_leader = BackupShipper::new(node.clone(), chain.clone(), options());
    let report = next_leader.ship(false).await.unwrap();
    assert!(report.log_entries >= 30, "{report:?}");
    let mid = end_a + 15;
    let out = scratch.path().join("restored-mid");
    restore_to(&chain, RestorePoint::Index(mid), &out)
        .await
        .unwrap();
    assert_eq!(restored_state(&out), model.state_at(mid));

    // Chunk A is lost: restores that must cross it fail and say so; one
    // that need not still works.
    let a = catalog().log.into_iter().find(|c| c.last == end_a).unwrap();
    std::fs::remove_file(log_dir.join(a.name())).unwrap();
    assert!(!catalog().log_gaps().is_empty());
    for (what, point) in [
        ("index", RestorePoint::Index(mid)),
        ("time", RestorePoint::Time(cut)),
    ] {
        let out = scratch.path().join(format!("across-hole-{what}"));
        let error = restore_to(&chain, point, &out).await.unwrap_err();
        assert!(
            error.to_string().contains("lacks log entries"),
            "{what}: {error}"
        );
        assert!(!out.exists());
    }
    let out = scratch.path().join("restored-after-hole");
    restore_to(&chain, RestorePoint::Latest, &out)
        .await
        .unwrap();
    assert_eq!(restored_state(&out), model.state_at(model.last()));
    cluster.shutdown().await;
}

async fn wait_shipped(shipper: &BackupShipper, index: u64) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while shipper
        .status()
        .shipped_index
        .load(std::sync::atomic::Ordering::Relaxed)
        < index
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the shipper did not ship {index}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A leader cut off from the others keeps believing it leads and keeps
/// its shipper; once the new leader shipped, the old one's rounds are
/// fenced and write nothing into the chain (in a real S3 server).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_partitioned_old_leader_cannot_extend_the_chain_in_s3() {
    let s3 = s3::MotoServer::start();
    let chain = s3.target("chains/partitioned");
    let scratch = tempfile::tempdir().unwrap();
    let cluster = Cluster::start(3, fast_raft()).await;
    let mut model = Model::default();
    let old = cluster.wait_leader(Duration::from_secs(10)).await;
    let shipper_old = shipper(&cluster.nodes[&old], &chain);
    churn(&cluster.nodes[&old], &mut model, 100, 11).await;
    shipper_old.ship(true).await.unwrap();

    cluster.network.isolate(old, cluster.nodes.keys().copied());
    let new = cluster.wait_new_leader(old, Duration::from_secs(20)).await;
    let leader = cluster.nodes[&new].clone();
    churn(&leader, &mut model, 100, 12).await;
    let shipper_new = shipper(&leader, &chain);
    let shipped = shipper_new.ship(true).await.unwrap().shipped_index;

    // The old leader still thinks it leads (nothing told it otherwise) and
    // ships: every round is refused before it writes.
    assert!(
        cluster.nodes[&old].is_leader(),
        "the cut-off leader stepped down on its own"
    );
    let listing = || -> Vec<String> {
        ["checkpoints", "log", "objects"]
            .iter()
            .flat_map(|p| chain.list(p).unwrap())
            .collect()
    };
    let (names_before, head_before) = (listing(), chain.read_versioned("head").unwrap());
    for checkpoint in [false, true] {
        let error = shipper_old.ship(checkpoint).await.unwrap_err();
        assert!(error.to_string().contains("fenced"), "{error}");
    }
    assert_eq!(listing(), names_before);
    assert_eq!(chain.read_versioned("head").unwrap(), head_before);
    let catalog = Catalog::read(&*chain).unwrap();
    let new_term = leader.metrics().current_term;
    assert_eq!(catalog.head.as_ref().map(|h| h.term()), Some(new_term));
    assert_eq!(catalog.last_index(), Some(shipped));
    let report = verify(&OsFs, &*chain, &scratch.path().join("verify")).unwrap();
    assert!(report.problems.is_empty(), "{report:?}");
    let out = scratch.path().join("restored");
    restore_to(&chain, RestorePoint::Latest, &out)
        .await
        .unwrap();
    assert_eq!(restored_state(&out), model.state_at(model.last()));

    cluster.network.heal();
    cluster.shutdown().await;
}

/// A log chunk stays within `max_chunk_bytes` unless its first entry alone
/// is larger (an object store takes a chunk in one conditional put, up to
/// a size): the bound is checked before an entry goes in, not after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_chunks_stay_within_their_byte_bound() {
    let scratch = tempfile::tempdir().unwrap();
    let chain: Arc<dyn BackupTarget> =
        Arc::new(LocalDir::new(scratch.path().join("chain")).unwrap());
    let cluster = Cluster::start(1, fast_raft()).await;
    let leader = cluster.leader().unwrap().clone();
    let max = 16 << 10;
    let shipper = BackupShipper::new(
        leader.clone(),
        chain.clone(),
        BackupOptions {
            max_chunk_bytes: max,
            ..BackupOptions::default()
        },
    );
    shipper.ship(true).await.unwrap();
    // 3 KiB entries: five fill a chunk to 15 KiB, and the sixth would
    // take it past 16.
    for i in 0..40 {
        leader
            .put(format!("k{i}"), vec![b'v'; 3 << 10])
            .await
            .unwrap();
    }
    // And one entry larger than the bound, which goes alone.
    leader.put("big", vec![b'b'; 40 << 10]).await.unwrap();
    leader.put("after", "x").await.unwrap();
    shipper.ship(false).await.unwrap();
    let catalog = Catalog::read(&*chain).unwrap();
    let chunks = catalog.log.clone();
    assert!(chunks.len() > 5, "{chunks:?}");
    let mut alone = 0;
    for chunk in &chunks {
        let file = scratch.path().join("chunk");
        let size = chain.get(&chunk.name(), &file).unwrap();
        if chunk.first == chunk.last && size > max {
            alone += 1;
        } else {
            assert!(size <= max, "{} holds {size} bytes", chunk.name());
        }
    }
    assert_eq!(alone, 1, "{chunks:?}");
    cluster.shutdown().await;
}
