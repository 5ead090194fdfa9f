//! Power loss during a snapshot install and during backup rounds: a node,
//! and a backup target, on the fault-injecting file system, imaged (what
//! a disk would hold if the power failed then) over and over while they
//! work. Every image must open, and hold either the old or the new state,
//! never a mix; every image of a backup chain must list and restore.

mod common;

use common::{fast_raft, open_restored, Cluster};
use ferry_engine::fs::{FaultInjectionFs, FileSystem};
use ferry_replication::backup::{self, BackupOptions, BackupShipper, Catalog, LocalDir};
use ferry_replication::state_machine::{applied_index, StateMachine};
use ferry_replication::{Node, NodeConfig};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Takes durable images of `fs` until `stop`, keeping at most `limit`
/// spread over the whole run: when the limit is reached, every other image
/// goes and the interval doubles (a busy machine makes the work slower,
/// not the sampling shorter).
fn sample(
    fs: FaultInjectionFs,
    stop: Arc<AtomicBool>,
    limit: usize,
) -> std::thread::JoinHandle<Vec<FaultInjectionFs>> {
    std::thread::spawn(move || {
        let mut images = Vec::new();
        let mut interval = Duration::from_micros(300);
        while !stop.load(Ordering::Relaxed) {
            images.push(fs.durable_image());
            if images.len() >= limit {
                images = images.into_iter().step_by(2).collect();
                interval *= 2;
            }
            std::thread::sleep(interval);
        }
        images
    })
}

/// A single-node cluster at `/node` on `fs`, once it leads.
async fn leading_node_on(fs: &Arc<dyn FileSystem>) -> Arc<Node> {
    let mut config = NodeConfig::new(1, "/node", "127.0.0.1:0".parse().unwrap());
    config.raft = fast_raft();
    config.engine.fs = fs.clone();
    let node = Arc::new(Node::open(config).await.unwrap());
    node.initialize(std::collections::BTreeMap::from([(
        1,
        node.raft_addr().to_owned(),
    )]))
    .await
    .unwrap();
    while !node.is_leader() {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    node
}

/// The applied index and user checksum of the state in `data_dir` on `fs`.
fn state_of(fs: FaultInjectionFs, data_dir: &Path) -> (u64, u64) {
    let options = ferry_engine::Options {
        fs: Arc::new(fs),
        background_work: false,
        ..ferry_engine::Options::default()
    };
    let sm = StateMachine::open(data_dir, options).expect("an image of the node opens");
    let view = sm.shared().db().snapshot();
    (
        applied_index(&view).unwrap(),
        ferry_replication::export::state::user_checksum(&view).unwrap(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_install_cut_by_power_loss_leaves_the_old_or_the_new_state() {
    // Snapshots leave at 400 KB/s: the transfer of this one (about 200 KB
    // of values) lasts long enough that images are taken during it, however
    // fast the machine.
    let mut cluster = Cluster::start_configured(2, fast_raft(), Default::default(), |cluster| {
        cluster.transfer.max_bytes_per_sec = 400_000;
    })
    .await;
    let leader = cluster.leader().unwrap().clone();
    // Node 3 lives on the fault-injecting file system: engine, Raft log,
    // snapshots and transfer staging alike.
    let fault = FaultInjectionFs::new();
    let mut config: NodeConfig = cluster.config(3);
    config.engine.fs = Arc::new(fault.clone());
    let data_dir = config.data_dir.clone();
    let node3 = Arc::new(Node::open(config).await.unwrap());
    cluster.addrs.insert(3, node3.raft_addr().to_owned());
    cluster.nodes.insert(3, node3.clone());
    for i in 0..300 {
        leader
            .put(format!("a/{i:04}"), vec![b'a'; 200])
            .await
            .unwrap();
    }
    leader
        .add_learner(3, node3.raft_addr().to_owned(), true)
        .await
        .unwrap();
    cluster.assert_converged(Duration::from_secs(20)).await;
    let old = node3.user_checksum().unwrap();
    // The state machine writes without fsync (the Raft log is what is
    // durable; a power loss may leave the engine at an earlier prefix, which
    // the log replays). Flushed here, its durable state is exactly `old`.
    node3.state().db().flush().unwrap();

    // Cut node 3 off while the state moves on and the log behind a new
    // snapshot is purged: it can only catch up by a snapshot.
    cluster.network.isolate(3, [1, 2]);
    for i in 0..600 {
        leader
            .put(format!("b/{i:04}"), vec![b'b'; 200])
            .await
            .unwrap();
    }
    let snapshot = leader.snapshot().await.unwrap().expect("a snapshot").index;
    leader.raft().trigger().purge_log(snapshot).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while leader.metrics().purged.map_or(0, |l| l.index) < snapshot {
        assert!(Instant::now() < deadline, "the leader did not purge");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let new = leader.user_checksum().unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let sampler = sample(fault.clone(), stop.clone(), 400);
    cluster.network.heal();
    let deadline = Instant::now() + Duration::from_secs(60);
    while node3.metrics().last_applied.map_or(0, |l| l.index) < new.0 {
        assert!(
            Instant::now() < deadline,
            "node 3 did not install the snapshot"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    stop.store(true, Ordering::Relaxed);
    let images = sampler.join().unwrap();
    assert_eq!(node3.user_checksum().unwrap().1, new.1);

    let (mut saw_old, mut saw_new, mut mid_transfer) = (0, 0, 0);
    for image in images {
        let incoming = data_dir.join("incoming");
        if image.list(&incoming).is_ok_and(|names| !names.is_empty()) {
            mid_transfer += 1;
        }
        let (applied, checksum) = state_of(image, &data_dir);
        if (applied, checksum) == old {
            saw_old += 1;
        } else {
            assert_eq!(
                checksum, new.1,
                "an image at applied index {applied} holds neither the old state ({old:?}) nor the new ({new:?})"
            );
            assert!(applied >= snapshot, "the new state at index {applied}");
            saw_new += 1;
        }
    }
    eprintln!("images: {saw_old} old, {saw_new} new, {mid_transfer} taken mid-transfer");
    assert!(saw_old > 0 && saw_new > 0, "the images span the install");
    assert!(mid_transfer > 0, "some images cut the transfer itself");
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_rounds_cut_by_power_loss_leave_a_chain_that_lists_and_restores() {
    // A single node and its backup target on one fault-injecting file
    // system: staging, checkpoint objects, log chunks and records.
    let fault = FaultInjectionFs::new();
    let fs: Arc<dyn FileSystem> = Arc::new(fault.clone());
    let node = leading_node_on(&fs).await;
    let target = Arc::new(LocalDir::with_fs(fs.clone(), "/backup").unwrap());
    let shipper = BackupShipper::new(
        node.clone(),
        target,
        BackupOptions {
            max_chunk_entries: 50,
            ..BackupOptions::default()
        },
    );

    let stop = Arc::new(AtomicBool::new(false));
    let sampler = sample(fault.clone(), stop.clone(), 300);
    let mut revisions = Vec::new();
    for round in 0..6 {
        for i in 0..80 {
            let revision = node
                .put(format!("k/{round}/{i:03}"), format!("v{round}-{i}"))
                .await
                .unwrap();
            revisions.push((revision, format!("k/{round}/{i:03}")));
        }
        shipper.ship(round % 3 == 0).await.unwrap();
    }
    stop.store(true, Ordering::Relaxed);
    let images = sampler.join().unwrap();
    node.shutdown().await.unwrap();

    let scratch = tempfile::tempdir().unwrap();
    let (mut checked, mut restored) = (0, 0);
    for (n, image) in images.iter().enumerate() {
        // Every image's chain lists, and every record in it reads back.
        let chain = LocalDir::with_fs(Arc::new(image.clone()), "/backup").unwrap();
        let catalog = Catalog::read(&chain).expect("an image's chain lists");
        for &index in &catalog.checkpoints {
            catalog
                .checkpoint(image, &chain, index, Path::new("/scratch-record"))
                .expect("every listed record reads back whole");
        }
        checked += 1;
        // Every eighth image with a checkpoint is restored for real: copied
        // out of the image, restored to its end, compared with the writes.
        if catalog.checkpoints.is_empty() || n % 8 != 0 {
            continue;
        }
        let copy = scratch.path().join(format!("chain-{n}"));
        copy_out(image, Path::new("/backup"), &copy);
        let data = scratch.path().join(format!("restored-{n}"));
        let disk = ferry_engine::fs::OsFs::shared();
        let report = backup::restore(
            &disk,
            Arc::new(LocalDir::new(&copy).unwrap()),
            backup::RestorePoint::Latest,
            &data,
            1,
            ferry_replication::types::FerryNode {
                raft_addr: "127.0.0.1:0".into(),
                client_addr: String::new(),
            },
        )
        .await
        .expect("an image's chain restores");
        let applied = report.applied.map_or(0, |l| l.index);
        let restored_node = open_restored(1, &data).await;
        for (revision, key) in &revisions {
            let value = restored_node
                .get(key.as_bytes(), ferry_replication::Consistency::Stale)
                .await
                .unwrap()
                .value;
            assert_eq!(
                value.is_some(),
                *revision <= applied,
                "{key} (revision {revision}) in a chain restored to {applied}"
            );
        }
        restored_node.shutdown().await.unwrap();
        restored += 1;
    }
    eprintln!("{checked} images of the chain listed, {restored} restored");
    assert!(
        restored >= 2,
        "too few images with a checkpoint were restored"
    );
}

/// Copies the directory tree `from` of `fs` to `to` on the real disk.
fn copy_out(fs: &FaultInjectionFs, from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for name in fs.list(from).unwrap() {
        let path = from.join(&name);
        if fs.is_dir(&path) {
            copy_out(fs, &path, &to.join(&name));
        } else {
            std::fs::write(to.join(&name), fs.read_all(&path).unwrap()).unwrap();
        }
    }
}

/// A restore from a snapshot, cut by power loss at any point, leaves no
/// data directory, or a whole one: the source's state, the log empty up to
/// its applied entry, and the vote of that term.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restore_cut_by_power_loss_leaves_no_data_directory_or_a_whole_one() {
    use openraft::storage::{RaftLogReader, RaftLogStorage};
    let fault = FaultInjectionFs::new();
    let fs: Arc<dyn FileSystem> = Arc::new(fault.clone());
    let node = leading_node_on(&fs).await;
    for i in 0..2000 {
        node.put(format!("k/{i:05}"), vec![b'v'; 100])
            .await
            .unwrap();
    }
    node.snapshot().await.unwrap().expect("a snapshot");
    let source = node.user_checksum().unwrap();
    let snapshot = node.raft().get_snapshot().await.unwrap().unwrap();
    let from = snapshot.snapshot.dir().to_path_buf();
    node.shutdown().await.unwrap();

    let restored = Path::new("/restored");
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = sample(fault.clone(), stop.clone(), 400);
    let recovered = ferry_replication::recovery::restore_as_single_node(
        &fs,
        &from,
        restored,
        9,
        "127.0.0.1:0".to_owned().into(),
    )
    .await
    .unwrap();
    stop.store(true, Ordering::Relaxed);
    let mut images = sampler.join().unwrap();
    images.push(fault.durable_image());
    assert_eq!(recovered.applied.map(|l| l.index), Some(source.0));

    let (mut absent, mut whole, mut mid_restore) = (0, 0, 0);
    for image in images {
        let staged = image.list(Path::new("/")).unwrap_or_default();
        if staged
            .iter()
            .any(|name| name.starts_with(".restored.partial-"))
        {
            mid_restore += 1;
        }
        if !image.exists(restored) {
            absent += 1;
            continue;
        }
        assert_eq!(state_of(image.clone(), restored), source);
        let mut log = ferry_replication::log_store::LogStore::open_with_fs(
            Arc::new(image),
            &restored.join("raft"),
            Default::default(),
        )
        .expect("the restored log opens");
        let state = log.get_log_state().await.unwrap();
        assert_eq!(state.last_purged_log_id, recovered.applied);
        let vote = log.read_vote().await.unwrap().expect("a vote");
        assert_eq!(
            vote.leader_id().term,
            recovered.applied.unwrap().leader_id.term
        );
        whole += 1;
    }
    eprintln!(
        "images: {absent} without the data directory ({mid_restore} of them mid-restore), \
         {whole} with it whole"
    );
    assert!(whole > 0);
    assert!(mid_restore > 0, "no image cut the restore itself");
}
