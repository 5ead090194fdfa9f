//! What release 0.1.0 wrote into the fixture of `tests/release_fixture.rs`,
//! shared by the test and by the example that wrote it
//! (`examples/write_release_fixture.rs`).

#![allow(dead_code)]

use ferry_replication::types::{Command, Compare, CompareOp, CompareTarget, Op, RequestId, Txn};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Release 0.1.0's fixture: the first, without history, in the envelope's
/// earlier layout.
pub const RELEASE_0_1_0: &str = "release-0.1.0";
/// Written when the small files (`VOTE`, `PURGED`, `SNAPSHOT`,
/// `CHECKPOINT`) moved to the shared envelope with a length (their
/// version 2), with history kept.
pub const ENVELOPE_2: &str = "envelope-2";

/// Where the fixture `name` is kept.
pub fn fixture_dir(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// The commands written before the backup checkpoint and the snapshot;
/// the rest of [`script`] came after them.
pub const BEFORE_CHECKPOINT: usize = 45;

/// User state: key → value.
pub type State = BTreeMap<Vec<u8>, Vec<u8>>;

pub fn put(key: &str, value: &str) -> Op {
    Op::put(key, value)
}

fn compare(key: &str, op: CompareOp, target: CompareTarget) -> Compare {
    Compare {
        key: key.into(),
        op,
        target,
    }
}

/// What the release wrote, as commands: every op, every compare target and
/// operator, both branches, exactly-once ids (one retried), and enough
/// writes to cut a snapshot and several log chunks.
pub fn script() -> Vec<Command> {
    let mut commands = Vec::new();
    for i in 0..40 {
        commands.push(Command::batch(vec![put(
            &format!("job/{i:02}"),
            &format!("queued-{i}"),
        )]));
    }
    commands.push(Command::batch(vec![
        Op::delete("job/00"),
        put("job/01", "running"),
        Op::Get {
            key: "job/02".into(),
        },
    ]));
    let request = |sequence| {
        Some(RequestId {
            client: 7,
            sequence,
            first_incomplete: 1,
        })
    };
    let txn = |compares, success, failure, sequence| {
        Command::Txn(Txn {
            compares,
            success,
            failure,
            request: request(sequence),
            time_ms: 0,
            auth_revision: None,
        })
    };
    commands.push(txn(
        vec![
            compare(
                "job/01",
                CompareOp::Equal,
                CompareTarget::Value(Some(b"running".to_vec())),
            ),
            compare("job/00", CompareOp::Equal, CompareTarget::Value(None)),
            compare("job/02", CompareOp::Greater, CompareTarget::ModRevision(0)),
            compare(
                "job/02",
                CompareOp::Less,
                CompareTarget::CreateRevision(1_000_000),
            ),
            compare("job/02", CompareOp::NotEqual, CompareTarget::Version(7)),
        ],
        vec![put("lock", "worker-1"), put("job/01", "claimed")],
        vec![put("never", "x")],
        1,
    ));
    // The same request again: answered from the exactly-once table.
    commands.push(commands.last().unwrap().clone());
    commands.push(txn(
        vec![compare("lock", CompareOp::Equal, CompareTarget::Version(5))],
        vec![put("never", "x")],
        vec![
            Op::delete("lock"),
            Op::Get {
                key: "job/03".into(),
            },
        ],
        2,
    ));
    for i in 0..30 {
        commands.push(Command::batch(vec![put(
            &format!("step/{i:02}"),
            &"v".repeat(i * 10),
        )]));
    }
    commands
}

pub fn render(state: &State) -> String {
    state
        .iter()
        .map(|(k, v)| {
            format!(
                "{}={}\n",
                String::from_utf8_lossy(k),
                String::from_utf8_lossy(v)
            )
        })
        .collect()
}

pub fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_tree(&entry.path(), &target);
        } else if entry.file_name() != "LOCK" {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}
