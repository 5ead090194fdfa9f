//! Files written by an earlier release stay readable: a node's data
//! directory (Raft log, engine, snapshot) and a backup chain, written by
//! release 0.1.0 (`tests/fixtures/release-0.1.0/`) and after each later
//! format change (`tests/fixtures/envelope-2/`), are opened by this release
//! and must hold exactly what was written.
//!
//! Each fixture was written by `examples/write_release_fixture.rs` of its
//! time; none is ever rewritten, later changes add one.

mod common;
#[path = "common/release_script.rs"]
mod release_script;

use common::open_restored;
use ferry_replication::backup::{restore, LocalDir, RestorePoint};
use ferry_replication::state_machine::history::ChangeKind;
use ferry_replication::types::{Command, FerryNode};
use ferry_replication::{Consistency, Node, WatchError, WatchEvent, WatchOptions};
use release_script::{copy_tree, fixture_dir, script, State, ENVELOPE_2, RELEASE_0_1_0};
use std::sync::Arc;

fn parse_state(text: &str) -> State {
    text.lines()
        .filter(|line| !line.is_empty())
        .map(|line| {
            let (key, value) = line.split_once('=').expect("key=value");
            (key.as_bytes().to_vec(), value.as_bytes().to_vec())
        })
        .collect()
}

async fn user_state(node: &Node) -> State {
    node.range(&[], None, usize::MAX, Consistency::Stale)
        .await
        .unwrap()
        .value
        .into_iter()
        .map(|kv| (kv.key, kv.value))
        .collect()
}

fn expected(fixture: &str, name: &str) -> State {
    parse_state(&std::fs::read_to_string(fixture_dir(fixture).join(name)).unwrap())
}

/// Opens a copy (in `scratch`) of `fixture`'s node directory, which
/// replays its log over its snapshot and engine, and checks that it holds
/// the state the fixture's script left.
async fn open_with_its_state(fixture: &str, scratch: &std::path::Path) -> Node {
    let data = scratch.join("node");
    copy_tree(&fixture_dir(fixture).join("node"), &data);
    let node = open_restored(1, &data).await;
    assert_eq!(user_state(&node).await, expected(fixture, "STATE"));
    node
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_data_directory_of_release_0_1_0_opens_with_its_state() {
    let scratch = tempfile::tempdir().unwrap();
    let node = open_with_its_state(RELEASE_0_1_0, scratch.path()).await;
    // Release 0.1.0 kept no history: this release's starts after what the
    // old state had applied, and reads and watches before it are refused.
    let upgraded_at = node.compacted().unwrap();
    assert!(upgraded_at > 1);
    assert!(matches!(
        node.watch(WatchOptions::range(Vec::new(), None, 1)),
        Err(WatchError::Compacted(_))
    ));
    // It goes on taking writes, with history: an old key changed now keeps
    // its old version for reads at revisions before the change.
    let old = node
        .get("job/05", Consistency::Stale)
        .await
        .unwrap()
        .value
        .unwrap();
    let before = node.put("after-upgrade", "1").await.unwrap();
    assert!(before >= upgraded_at);
    let changed = node.put("job/05", "after-upgrade").await.unwrap();
    let then = node
        .get_at("job/05", before, Consistency::Stale)
        .await
        .unwrap()
        .value
        .unwrap();
    assert_eq!(then.value, old.value);
    let mut watcher = node
        .watch(WatchOptions::range(Vec::new(), None, upgraded_at))
        .unwrap();
    let mut events = Vec::new();
    while events.len() < 2 {
        events.extend(watcher.next().await.unwrap().events);
    }
    assert_eq!(events[0].change.revision, before);
    assert_eq!(events[1].change.revision, changed);
    assert_eq!(events[1].change.prev_revision, old.mod_revision);
    node.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_data_directory_with_envelope_2_opens_with_its_state_and_history() {
    let scratch = tempfile::tempdir().unwrap();
    let node = open_with_its_state(ENVELOPE_2, scratch.path()).await;
    // Its history was kept from the first write: a watch from revision 1
    // sees every change the script made, and the node takes writes.
    let mut watcher = node
        .watch(WatchOptions::range(Vec::new(), None, 1))
        .unwrap();
    let mut events = Vec::new();
    let last = node.put("after-reopen", "1").await.unwrap();
    while events
        .last()
        .is_none_or(|e: &WatchEvent| e.change.revision < last)
    {
        events.extend(watcher.next().await.unwrap().events);
    }
    let replayed: State = events
        .iter()
        .filter(|e| e.change.key.as_slice() != b"after-reopen")
        .fold(State::new(), |mut state, e| {
            match e.change.kind {
                ChangeKind::Put => state.insert(e.change.key.clone(), e.change.value.clone()),
                ChangeKind::Delete => state.remove(&e.change.key),
            };
            state
        });
    assert_eq!(replayed, expected(ENVELOPE_2, "STATE"));
    node.shutdown().await.unwrap();
}

async fn restores_to_each_point(fixture: &str) {
    let scratch = tempfile::tempdir().unwrap();
    let chain = Arc::new(LocalDir::new(fixture_dir(fixture).join("backup")).unwrap());
    let checkpoint: u64 = std::fs::read_to_string(fixture_dir(fixture).join("CHECKPOINT-INDEX"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    for (point, state) in [
        (RestorePoint::Index(checkpoint), "STATE-AT-CHECKPOINT"),
        (RestorePoint::Latest, "STATE"),
    ] {
        let out = scratch.path().join(format!("{point:?}"));
        restore(
            &ferry_engine::fs::OsFs::shared(),
            chain.clone(),
            point,
            &out,
            1,
            FerryNode::from("127.0.0.1:1".to_string()),
        )
        .await
        .unwrap();
        let node = open_restored(1, &out).await;
        assert_eq!(
            user_state(&node).await,
            expected(fixture, state),
            "{fixture} {point:?}"
        );
        node.shutdown().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_chain_of_release_0_1_0_restores_to_each_point() {
    restores_to_each_point(RELEASE_0_1_0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_chain_with_envelope_2_restores_to_each_point() {
    restores_to_each_point(ENVELOPE_2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_raft_log_of_release_0_1_0_decodes_to_the_commands_it_was_written_with() {
    log_decodes_to_the_script(RELEASE_0_1_0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_raft_log_with_envelope_2_decodes_to_the_commands_it_was_written_with() {
    log_decodes_to_the_script(ENVELOPE_2).await;
}

async fn log_decodes_to_the_script(fixture: &str) {
    use ferry_replication::log_store::{LogStore, LogStoreOptions};
    use openraft::storage::RaftLogReader;
    use openraft::EntryPayload;
    let scratch = tempfile::tempdir().unwrap();
    copy_tree(
        &fixture_dir(fixture).join("node/raft"),
        &scratch.path().join("raft"),
    );
    let mut log = LogStore::open(scratch.path().join("raft"), LogStoreOptions::default()).unwrap();
    let entries = log.try_get_log_entries(0..u64::MAX).await.unwrap();
    let commands: Vec<Command> = entries
        .into_iter()
        .filter_map(|entry| match entry.payload {
            EntryPayload::Normal(command) => Some(command),
            _ => None,
        })
        .map(|command| match Arc::unwrap_or_clone(command) {
            // Stamped by the leader when proposed.
            Command::Txn(mut txn) => {
                assert!(txn.time_ms > 0);
                txn.time_ms = 0;
                Command::Txn(txn)
            }
            other => panic!("{fixture}: the script writes only transactions, not {other}"),
        })
        .collect();
    assert_eq!(commands, script());
}
