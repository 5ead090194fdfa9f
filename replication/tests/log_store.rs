//! Restart, power-loss and corruption tests of the Raft log store (the
//! openraft suite never reopens a store).

use ferry_engine::fs::{FaultInjectionFs, FileSystem, OsFs};
use ferry_replication::log_store::{LogStore, LogStoreOptions};
use ferry_replication::types::{Command, Entry, LogId, Op, TypeConfig, Vote};
use openraft::async_runtime::Oneshot;
use openraft::entry::RaftEntry;
use openraft::storage::{IOFlushed, RaftLogReader, RaftLogStorage};
use std::path::{Path, PathBuf};
use std::sync::Arc;

fn log_id(term: u64, index: u64) -> LogId {
    LogId::new(
        openraft::impls::leader_id_adv::LeaderId { term, node_id: 1 },
        index,
    )
}

fn entry(term: u64, index: u64) -> Entry {
    Entry::new_normal(
        log_id(term, index),
        Command::batch(vec![Op::put(
            format!("k{index}").into_bytes(),
            vec![index as u8; 100],
        )])
        .into(),
    )
}

/// Drops `log` and waits until it has let `path` go: its IO thread
/// finishes the last segment (cutting off its reserved space) and then
/// releases the directory's lock.
fn close(log: LogStore, path: &Path) {
    drop(log);
    OsFs.lock_waiting(&path.join("LOCK"), std::time::Duration::from_secs(10))
        .expect("the log was closed");
}

fn options() -> LogStoreOptions {
    // Small segments and cache: entries are read back from disk, across segments.
    LogStoreOptions {
        segment_bytes: 4096,
        cache_bytes: 1024,
    }
}

async fn append(log: &mut LogStore, entries: Vec<Entry>) {
    let (tx, rx) = <openraft::alias::OneshotOf<TypeConfig> as Oneshot>::channel();
    log.append(entries, IOFlushed::<TypeConfig>::signal(tx))
        .await
        .unwrap();
    rx.await.unwrap().unwrap();
}

async fn read_all(log: &mut LogStore) -> Vec<Entry> {
    log.try_get_log_entries(0..u64::MAX).await.unwrap()
}

fn open(fs: &Arc<dyn FileSystem>, dir: &Path) -> LogStore {
    LogStore::open_with_fs(fs.clone(), dir, options()).unwrap()
}

#[tokio::test]
async fn appends_truncation_purge_and_vote_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("raft");
    let mut log = LogStore::open(&path, options()).unwrap();
    for start in (1..=500).step_by(50) {
        append(&mut log, (start..start + 50).map(|i| entry(1, i)).collect()).await;
    }
    log.save_vote(&Vote::new_committed(3, 2)).await.unwrap();
    log.purge(log_id(1, 100)).await.unwrap();
    log.truncate_after(Some(log_id(1, 400))).await.unwrap();
    append(&mut log, (401..=420).map(|i| entry(2, i)).collect()).await;
    drop(log);

    let mut log = LogStore::open(&path, options()).unwrap();
    let state = log.get_log_state().await.unwrap();
    assert_eq!(state.last_purged_log_id, Some(log_id(1, 100)));
    assert_eq!(state.last_log_id, Some(log_id(2, 420)));
    assert_eq!(
        log.read_vote().await.unwrap(),
        Some(Vote::new_committed(3, 2))
    );
    let entries = read_all(&mut log).await;
    let expected: Vec<Entry> = (101..=400)
        .map(|i| entry(1, i))
        .chain((401..=420).map(|i| entry(2, i)))
        .collect();
    assert_eq!(entries, expected);
    // Segments wholly before the purge point are gone.
    let segments = std::fs::read_dir(&path)
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .ends_with(".log")
        })
        .count();
    assert!(segments < 30, "{segments} segments left after purge");
}

#[tokio::test]
async fn power_loss_keeps_every_flushed_entry_and_no_truncated_one() {
    let fault = FaultInjectionFs::new();
    let fs: Arc<dyn FileSystem> = Arc::new(fault.clone());
    let dir = PathBuf::from("/node/raft");
    let mut log = open(&fs, &dir);
    append(&mut log, (0..200).map(|i| entry(1, i)).collect()).await;
    log.save_vote(&Vote::new(2, 1)).await.unwrap();
    log.truncate_after(Some(log_id(1, 149))).await.unwrap();
    append(&mut log, (150..180).map(|i| entry(2, i)).collect()).await;
    log.purge(log_id(1, 20)).await.unwrap();

    let image: Arc<dyn FileSystem> = Arc::new(fault.durable_image());
    drop(log);
    let mut log = open(&image, &dir);
    let state = log.get_log_state().await.unwrap();
    assert_eq!(state.last_purged_log_id, Some(log_id(1, 20)));
    assert_eq!(state.last_log_id, Some(log_id(2, 179)));
    assert_eq!(log.read_vote().await.unwrap(), Some(Vote::new(2, 1)));
    let expected: Vec<Entry> = (21..150)
        .map(|i| entry(1, i))
        .chain((150..180).map(|i| entry(2, i)))
        .collect();
    assert_eq!(read_all(&mut log).await, expected);
}

fn segments(dir: &Path) -> Vec<PathBuf> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .collect();
    paths.sort();
    paths
}

#[tokio::test]
async fn a_torn_tail_is_cut_and_reported() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("raft");
    let mut log = LogStore::open(&path, options()).unwrap();
    append(&mut log, (0..100).map(|i| entry(1, i)).collect()).await;
    close(log, &path);
    let last = segments(&path).pop().unwrap();
    let mut bytes = std::fs::read(&last).unwrap();
    // Half of a record header: a write cut short by a crash.
    bytes.extend_from_slice(&[0x5a; 9]);
    std::fs::write(&last, &bytes).unwrap();

    let mut log = LogStore::open(&path, options()).unwrap();
    assert_eq!(log.torn_tail_bytes(), 9);
    assert_eq!(read_all(&mut log).await.len(), 100);
    append(&mut log, vec![entry(1, 100)]).await;
    drop(log);
    let mut log = LogStore::open(&path, options()).unwrap();
    assert_eq!(log.torn_tail_bytes(), 0);
    assert_eq!(read_all(&mut log).await.len(), 101);
}

#[tokio::test]
async fn damage_inside_the_log_is_an_error_naming_file_and_offset() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("raft");
    let mut log = LogStore::open(&path, options()).unwrap();
    append(&mut log, (0..200).map(|i| entry(1, i)).collect()).await;
    close(log, &path);
    let first = segments(&path).remove(0);
    let mut bytes = std::fs::read(&first).unwrap();
    bytes[100] ^= 0x40;
    std::fs::write(&first, &bytes).unwrap();
    let error = match LogStore::open(&path, options()) {
        Ok(_) => panic!("a damaged segment was accepted"),
        Err(error) => error.to_string(),
    };
    assert!(error.contains(&first.display().to_string()), "{error}");
    assert!(error.contains("offset"), "{error}");
}

#[tokio::test]
async fn damage_found_when_reading_back_an_evicted_entry_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("raft");
    let mut log = LogStore::open(&path, options()).unwrap();
    append(&mut log, (0..50).map(|i| entry(1, i)).collect()).await;
    let first = segments(&path).remove(0);
    let mut bytes = std::fs::read(&first).unwrap();
    bytes[40] ^= 0x01;
    std::fs::write(&first, &bytes).unwrap();
    let error = log.try_get_log_entries(0..1).await.unwrap_err().to_string();
    assert!(
        error.contains("CRC") && error.contains(&first.display().to_string()),
        "{error}"
    );
}

#[tokio::test]
async fn records_are_visited_as_the_segments_hold_them() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("raft");
    let mut log = LogStore::open(&path, options()).unwrap();
    append(&mut log, (1..=300).map(|i| entry(1, i)).collect()).await;
    let reader = log.get_log_reader().await;
    let mut visited = Vec::new();
    reader
        .visit_records(10, |index, record| {
            visited.push((index, record.to_vec()));
            Ok(index < 250)
        })
        .unwrap();
    // From 10 up to the record for which the visitor said stop.
    assert_eq!(
        visited.iter().map(|(i, _)| *i).collect::<Vec<_>>(),
        (10..=250).collect::<Vec<_>>()
    );
    for (index, record) in &visited {
        let (sequence, payload) =
            ferry_engine::wal::decode_record_at(Path::new("visited"), 0, record).unwrap();
        assert_eq!(sequence, *index);
        assert_eq!(
            postcard::from_bytes::<Entry>(payload).unwrap(),
            entry(1, *index)
        );
    }
    // A start below what the log holds is NotFound, and nothing is visited.
    log.purge(log_id(1, 100)).await.unwrap();
    let error = reader
        .visit_records(50, |_, _| panic!("nothing to visit"))
        .unwrap_err();
    assert_eq!(error.kind(), std::io::ErrorKind::NotFound, "{error}");
}

#[tokio::test]
async fn a_directory_has_one_log_store_at_a_time() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("raft");
    let mut log = LogStore::open(&path, options()).unwrap();
    append(&mut log, (0..10).map(|i| entry(1, i)).collect()).await;
    // While the first is open, a second waits, then gives up naming the
    // directory: two writers would cut and overwrite each other's records.
    let error = match LogStore::open(&path, options()) {
        Ok(_) => panic!("a second log store opened a directory in use"),
        Err(error) => error.to_string(),
    };
    assert!(
        error.contains("in use") && error.contains(&path.display().to_string()),
        "{error}"
    );
    // Dropped, it lets the directory go once its last segment is finished:
    // the next store opens it at once, with no torn or unused tail to cut.
    drop(log);
    let mut log = LogStore::open(&path, options()).unwrap();
    assert_eq!(log.torn_tail_bytes(), 0);
    assert_eq!(read_all(&mut log).await.len(), 10);
    let last = segments(&path).pop().unwrap();
    close(log, &path);
    let outcome = ferry_engine::wal::read_segment(
        &OsFs,
        &last,
        ferry_engine::wal::LogKind::Raft,
        ferry_engine::wal::TailPolicy::Strict,
        |_, _| Ok(()),
    )
    .unwrap();
    assert_eq!(
        outcome.valid_len,
        std::fs::metadata(&last).unwrap().len(),
        "a closed log ends at its last record"
    );
}

/// A snapshot installed past the end of a lagging follower's log purges
/// past its last entry. The purge records its point, then removes the
/// segments it covers: a crash in between must not leave a segment that
/// the next append (after the purge point) would not follow.
#[tokio::test]
async fn a_purge_past_the_log_cut_short_before_its_removals_leaves_a_log_that_appends() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("raft");
    let mut log = LogStore::open(&path, options()).unwrap();
    append(&mut log, (100..150).map(|i| entry(1, i)).collect()).await;
    close(log, &path);
    // The purge point of a purge to 200 that removed nothing yet: written
    // by another store, as the crashed purge wrote it.
    let other = dir.path().join("other");
    let mut purged = LogStore::open(&other, options()).unwrap();
    append(&mut purged, vec![entry(1, 200)]).await;
    purged.purge(log_id(1, 200)).await.unwrap();
    close(purged, &other);
    std::fs::copy(other.join("PURGED"), path.join("PURGED")).unwrap();

    let mut log = LogStore::open(&path, options()).unwrap();
    let state = log.get_log_state().await.unwrap();
    assert_eq!(state.last_purged_log_id, Some(log_id(1, 200)));
    assert_eq!(state.last_log_id, Some(log_id(1, 200)));
    assert!(segments(&path).is_empty(), "{:?}", segments(&path));
    append(&mut log, (201..=210).map(|i| entry(1, i)).collect()).await;
    close(log, &path);
    let mut log = LogStore::open(&path, options()).unwrap();
    let expected: Vec<Entry> = (201..=210).map(|i| entry(1, i)).collect();
    assert_eq!(read_all(&mut log).await, expected);
}
