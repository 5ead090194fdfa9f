//! The state machine after a crash: whatever the engine kept, the applied
//! marker names exactly that state, and re-applying the log from the marker
//! gives the state of a replica that never crashed.

use ferry_engine::fs::{FaultInjectionFs, FileSystem};
use ferry_engine::Options;
use ferry_replication::state_machine::StateMachine;
use ferry_replication::types::{Command, Entry, LogId, Op, RequestId, Txn};
use openraft::entry::RaftEntry;
use openraft::storage::RaftStateMachine;
use std::sync::Arc;

fn log_id(index: u64) -> LogId {
    LogId::new(
        openraft::impls::leader_id_adv::LeaderId {
            term: 1,
            node_id: 1,
        },
        index,
    )
}

/// Entry `i` puts `k{i}`; every entry is also a request of client 7, and
/// every tenth one increments a counter through a compare on its version.
fn entry(i: u64) -> Entry {
    Entry::new_normal(
        log_id(i),
        Command::Txn(Txn {
            compares: Vec::new(),
            success: vec![Op::put(
                format!("k{i:04}").into_bytes(),
                i.to_le_bytes().to_vec(),
            )],
            failure: Vec::new(),
            request: Some(RequestId {
                client: 7,
                sequence: i,
                first_incomplete: i,
            }),
            time_ms: 0,
            auth_revision: None,
        })
        .into(),
    )
}

async fn apply(sm: &mut StateMachine, range: std::ops::RangeInclusive<u64>) {
    let entries: Vec<_> = range.map(|i| Ok((entry(i), None))).collect();
    sm.apply(futures_util::stream::iter(entries)).await.unwrap();
}

fn options(fs: &FaultInjectionFs) -> Options {
    Options {
        fs: Arc::new(fs.clone()) as Arc<dyn FileSystem>,
        ..Options::default()
    }
}

fn state_hash(sm: &StateMachine) -> u64 {
    sm.shared().db().snapshot().content_checksum().unwrap()
}

#[tokio::test]
async fn after_power_loss_the_marker_matches_the_data_and_replay_converges() {
    // A replica that never crashes.
    let reference_dir = tempfile::tempdir().unwrap();
    let mut reference = StateMachine::open(reference_dir.path(), Options::default()).unwrap();
    for start in (1..=100).step_by(10) {
        apply(&mut reference, start..=start + 9).await;
    }

    let dir = tempfile::tempdir().unwrap();
    let fault = FaultInjectionFs::new();
    let mut sm = StateMachine::open(dir.path(), options(&fault)).unwrap();
    for start in (1..=100).step_by(10) {
        apply(&mut sm, start..=start + 9).await;
        if start == 41 {
            sm.shared().db().flush().unwrap();
        }
    }
    let image = fault.durable_image();
    drop(sm);

    let mut sm = StateMachine::open(dir.path(), options(&image)).unwrap();
    let (applied, _) = sm.applied_state().await.unwrap();
    let applied = applied.expect("the flushed marker survives").index;
    assert!((50..=100).contains(&applied), "applied {applied}");
    let db = sm.shared().db();
    for i in 1..=100u64 {
        let present = db.get(format!("\u{1}k{i:04}")).unwrap().is_some();
        assert_eq!(
            present,
            i <= applied,
            "key {i} present={present}, marker {applied}"
        );
    }
    drop(db);

    // openraft re-applies from the marker; entries at or below it, applied
    // again by a confused caller, are refused by the client table (their
    // answers were acknowledged) and change nothing.
    apply(&mut sm, applied.saturating_sub(5).max(1)..=100).await;
    assert_eq!(state_hash(&sm), state_hash(&reference));
}

/// A request of `client`; its log index is set by [`in_log_order`].
fn request(client: u64, sequence: u64, first_incomplete: u64, key: &str) -> Entry {
    Entry::new_normal(
        log_id(0),
        Command::Txn(Txn {
            compares: Vec::new(),
            success: vec![Op::put(key.as_bytes().to_vec(), vec![1])],
            failure: Vec::new(),
            request: Some(RequestId {
                client,
                sequence,
                first_incomplete,
            }),
            time_ms: 0,
            auth_revision: None,
        })
        .into(),
    )
}

/// The entries as a log holds them: at consecutive indexes from 1.
fn in_log_order(
    entries: impl IntoIterator<Item = Entry>,
) -> Vec<std::io::Result<openraft::storage::EntryResponder<ferry_replication::types::TypeConfig>>> {
    entries
        .into_iter()
        .enumerate()
        .map(|(at, mut entry)| {
            entry.log_id = log_id(at as u64 + 1);
            Ok((entry, None))
        })
        .collect()
}

#[tokio::test]
async fn concurrent_requests_of_one_client_apply_once_each_in_any_order() {
    let dir = tempfile::tempdir().unwrap();
    let mut sm = StateMachine::open(dir.path(), Options::default()).unwrap();
    // Sequences 1..=3 in flight at once, applied out of order, then retried.
    let order = [
        request(1, 2, 1, "b"),
        request(1, 1, 1, "a"),
        request(1, 3, 1, "c"),
        request(1, 2, 1, "b"),
        request(1, 1, 1, "a"),
    ];
    let entries = in_log_order(order.iter().cloned());
    sm.apply(futures_util::stream::iter(entries)).await.unwrap();
    let db = sm.shared().db();
    for key in ["a", "b", "c"] {
        let bytes = db.get(format!("\u{1}{key}")).unwrap().unwrap();
        // Record format: byte 0 its version, then create, mod, version (u64 LE each).
        let version = u64::from_le_bytes(bytes[17..25].try_into().unwrap());
        assert_eq!(version, 1, "{key} applied more than once");
    }
}

#[tokio::test]
async fn an_answer_within_the_client_window_survives_many_later_writes() {
    // The SDK keeps new sequences within 512 of its oldest unanswered write;
    // the cluster keeps up to 1024 answers per client. A write stuck in
    // retries while the rest of its window completes is still answered
    // from the table when it is retried, not applied again.
    let dir = tempfile::tempdir().unwrap();
    let mut sm = StateMachine::open(dir.path(), Options::default()).unwrap();
    let mut entries = vec![request(1, 1, 1, "stuck")];
    for sequence in 2..512 {
        entries.push(request(1, sequence, 1, &format!("k{sequence}")));
    }
    entries.push(request(1, 1, 1, "stuck"));
    let stream = in_log_order(entries);
    sm.apply(futures_util::stream::iter(stream)).await.unwrap();
    let bytes = sm.shared().db().get("\u{1}stuck").unwrap().unwrap();
    let version = u64::from_le_bytes(bytes[17..25].try_into().unwrap());
    assert_eq!(version, 1, "the retried write was applied again");
}
