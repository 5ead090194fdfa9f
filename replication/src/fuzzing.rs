//! Entry points for the fuzz targets in `fuzz/`: every decoder of bytes
//! this crate reads from the network or from disk, run on arbitrary input.
//!
//! Each returns normally for input it refuses (a typed error inside) and
//! panics only when a property fails: a value that decodes must re-encode
//! into bytes that decode to the same value (for prost messages and fixed
//! layouts: to the same bytes), and no decoder may panic, hang or allocate
//! beyond what its input could hold. `cargo fuzz` runs them with coverage
//! guidance; `tests/fuzz.rs` runs them on stable over the committed corpus
//! in `fuzz/corpus/` plus mutations of it, in CI.
//!
//! Not part of the stable API.

use crate::auth::{Role, User};
use crate::backup::CheckpointRecord;
use crate::network::pb;
use crate::snapshot::{decode_manifest, encode_manifest, transfer};
use crate::state_machine::{clients, history::Change, keys::Record};
use crate::types::{Command, Entry, LogId, SnapshotMeta, TypeConfig, Vote};
use ferry_engine::fs::{FaultInjectionFs, FileSystem};
use ferry_engine::wal::{read_segment, LogKind, TailPolicy};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, TransferLeaderRequest,
    VoteRequest, VoteResponse,
};
use prost::Message;
use serde::{de::DeserializeOwned, Serialize};
use std::path::Path;

/// Every target, by name: the fuzz crate's binaries and the stable runner
/// take their names from here.
pub const TARGETS: &[ferry_engine::fuzzing::Target] = &[
    ("command", command),
    ("raft_message", raft_message),
    ("snapshot_frame", snapshot_frame),
    ("snapshot_reply", snapshot_reply),
    ("snapshot_manifest", snapshot_manifest),
    ("backup_record", backup_record),
    ("backup_log_chunk", backup_log_chunk),
    ("raft_state_file", raft_state_file),
    ("state_records", state_records),
];

/// postcard's value round trip: encode, decode, encode again gives the
/// same bytes (postcard has one encoding per value, but its decoder may
/// accept others, so the input itself is not compared).
fn postcard_round_trip<T: Serialize + DeserializeOwned>(value: &T, what: &str) {
    let once = postcard::to_stdvec(value).expect("a decoded value encodes");
    let again: T = postcard::from_bytes(&once)
        .unwrap_or_else(|e| panic!("{what}: a re-encoded value does not decode: {e}"));
    assert_eq!(
        postcard::to_stdvec(&again).expect("encodes"),
        once,
        "{what}: re-encoding is not stable"
    );
}

fn postcard_target<T: Serialize + DeserializeOwned>(bytes: &[u8], what: &str) {
    if let Ok(value) = postcard::from_bytes::<T>(bytes) {
        postcard_round_trip(&value, what);
    }
}

/// A protobuf message's round trip: what decodes re-encodes into a
/// message equal to it, and that encoding is stable.
fn prost_round_trip<M: Message + Default + PartialEq + std::fmt::Debug>(bytes: &[u8]) -> Option<M> {
    let message = M::decode(bytes).ok()?;
    let once = message.encode_to_vec();
    let again = M::decode(once.as_slice()).expect("a re-encoded message decodes");
    assert_eq!(again, message, "protobuf round trip");
    assert_eq!(
        again.encode_to_vec(),
        once,
        "protobuf re-encoding is stable"
    );
    Some(message)
}

/// A Raft log entry's command, as the log, Raft messages and backup chains
/// carry it. Property: a command that decodes equals its re-decoded
/// encoding.
pub fn command(bytes: &[u8]) {
    if let Ok(command) = postcard::from_bytes::<Command>(bytes) {
        let once = postcard::to_stdvec(&command).expect("a command encodes");
        let again: Command = postcard::from_bytes(&once).expect("a re-encoded command decodes");
        assert_eq!(again, command, "command round trip");
    }
}

/// A node-to-node message as the transport decodes it: the protobuf
/// envelope, then its payload as each request a peer may send and each
/// answer a peer may give.
pub fn raft_message(bytes: &[u8]) {
    let payload = match prost_round_trip::<pb::RaftMessage>(bytes) {
        Some(message) => message.payload,
        // Also the payload alone: most of the structure is in it.
        None => bytes.to_vec(),
    };
    postcard_target::<AppendEntriesRequest<TypeConfig>>(&payload, "append entries");
    postcard_target::<VoteRequest<TypeConfig>>(&payload, "vote");
    postcard_target::<TransferLeaderRequest<TypeConfig>>(&payload, "transfer leader");
    postcard_target::<Result<AppendEntriesResponse<TypeConfig>, String>>(
        &payload,
        "append entries answer",
    );
    postcard_target::<Result<VoteResponse<TypeConfig>, String>>(&payload, "vote answer");
    postcard_target::<Result<(), String>>(&payload, "transfer leader answer");
}

/// A snapshot frame as a follower decodes it; an offer is also checked as
/// the follower checks it (names, count, sizes against a budget), and its
/// vote and metadata decoded.
pub fn snapshot_frame(bytes: &[u8]) {
    let Some(frame) = prost_round_trip::<pb::SnapshotFrame>(bytes) else {
        return;
    };
    if let Some(pb::snapshot_frame::Frame::Offer(offer)) = frame.frame {
        for budget in [0, 1 << 30, u64::MAX] {
            let _ = transfer::check_offer(&offer, budget);
        }
        postcard_target::<Vote>(&offer.vote, "offer vote");
        postcard_target::<SnapshotMeta>(&offer.meta, "offer meta");
    }
}

/// A follower's reply as the leader decodes it, with an installed
/// snapshot's response inside.
pub fn snapshot_reply(bytes: &[u8]) {
    let Some(reply) = prost_round_trip::<pb::SnapshotReply>(bytes) else {
        return;
    };
    if let Some(pb::snapshot_reply::Reply::Installed(installed)) = reply.reply {
        postcard_target::<SnapshotResponse<TypeConfig>>(&installed.response, "installed");
    }
}

/// A snapshot's `SNAPSHOT` file. Property: a manifest that decodes
/// re-encodes to the same bytes (magic, version, CRC and a postcard body of
/// one encoding per value); a decoded manifest re-decodes equal.
pub fn snapshot_manifest(bytes: &[u8]) {
    if let Ok(manifest) = decode_manifest(bytes, "SNAPSHOT") {
        let again = encode_manifest(&manifest).expect("a manifest encodes");
        assert_eq!(
            decode_manifest(&again, "SNAPSHOT").expect("re-encoded manifest decodes"),
            manifest
        );
    }
}

/// A backup chain's checkpoint record, as a restore or `backup list` reads
/// it from the target.
pub fn backup_record(bytes: &[u8]) {
    if let Ok(record) = CheckpointRecord::decode(bytes, "record") {
        let again = record.encode().expect("a record encodes");
        assert_eq!(
            CheckpointRecord::decode(&again, "record").expect("re-encoded record decodes"),
            record
        );
    }
}

/// Writes `bytes` as `/fuzz/file` of an in-memory file system.
fn file_with(bytes: &[u8]) -> (FaultInjectionFs, &'static Path) {
    let fs = FaultInjectionFs::new();
    let path = Path::new("/fuzz/file");
    let written = fs
        .create_dir_all(Path::new("/fuzz"))
        .and_then(|()| fs.create(path))
        .and_then(|mut file| file.append(bytes).and_then(|()| file.sync()));
    written.expect("an in-memory file takes any bytes");
    (fs, path)
}

/// A backup chain's log chunk: a Raft-kind log segment of postcard
/// entries, read as a restore reads it.
pub fn backup_log_chunk(bytes: &[u8]) {
    let (fs, path) = file_with(bytes);
    let _ = read_segment(
        &fs,
        path,
        LogKind::Raft,
        TailPolicy::Strict,
        |_, payload| {
            if let Ok(entry) = postcard::from_bytes::<Entry>(payload) {
                postcard_round_trip(&entry, "log entry");
            }
            Ok(())
        },
    );
}

/// The Raft log store's side files (`VOTE`, `PURGED`), read at start-up.
pub fn raft_state_file(bytes: &[u8]) {
    use crate::log_store::files;
    let (fs, path) = file_with(bytes);
    if let Ok(Some(vote)) = files::read::<Vote>(&fs, path, &files::VOTE) {
        postcard_round_trip(&vote, "vote file");
    }
    if let Ok(Some(purged)) = files::read::<LogId>(&fs, path, &files::PURGED) {
        postcard_round_trip(&purged, "purged file");
    }
}

/// The state machine's records in the engine: key records, history
/// changes, lease, client, user and role records. Each decodes from a
/// data directory Ferry may not have written in this process (a restored
/// backup, a snapshot from a peer).
pub fn state_records(bytes: &[u8]) {
    if let Some(record) = Record::decode(bytes) {
        let again = record.encode();
        assert_eq!(Record::decode(&again), Some(record.clone()), "key record");
        assert_eq!(Record::decode_owned(again).as_ref(), Some(&record));
    }
    if let Some(change) = Change::decode(7, 3, bytes) {
        let again = change.encode();
        assert_eq!(Change::decode(7, 3, &again), Some(change), "history change");
    }
    if let Ok(lease) = crate::lease::store::decode(bytes) {
        let again = crate::lease::store::encode(&lease);
        assert_eq!(crate::lease::store::decode(&again).ok(), Some(lease));
    }
    if let Ok(client) = clients::decode(bytes) {
        let again = clients::encode(&client).expect("a client record encodes");
        let decoded = clients::decode(&again).expect("re-encoded client record decodes");
        assert_eq!(clients::encode(&decoded).expect("encodes"), again);
    }
    if let Ok(client) = clients::decode_legacy(bytes) {
        let again = clients::encode(&client).expect("a client record encodes");
        assert!(clients::decode(&again).is_ok(), "a legacy record converts");
    }
    use crate::auth::store::{decode, encode};
    if let Ok(user) = decode::<User>(bytes, "user") {
        let again = encode(&user).expect("a user encodes");
        assert_eq!(
            decode::<User>(&again, "user").ok(),
            Some(user),
            "user record"
        );
    }
    if let Ok(role) = decode::<Role>(bytes, "role") {
        let again = encode(&role).expect("a role encodes");
        assert_eq!(
            decode::<Role>(&again, "role").ok(),
            Some(role),
            "role record"
        );
    }
}

/// Valid inputs for every target, built from this release's encoders:
/// the seeds of the corpus (`fuzz/corpus/<target>/`, written by
/// kept there by `tests/fuzz.rs`) and of the stable runs.
pub fn seeds() -> Vec<(&'static str, Vec<u8>)> {
    use crate::types::{log_id, CompareOp, CompareTarget, FerryNode, RequestId};
    use crate::types::{Compare, Op, Txn};
    use openraft::entry::RaftEntry;
    use openraft::{EntryPayload, Membership, StoredMembership};
    use std::collections::{BTreeMap, BTreeSet};

    let txn = Command::Txn(Txn {
        compares: vec![Compare {
            key: b"task/1".to_vec(),
            op: CompareOp::Equal,
            target: CompareTarget::Value(Some(b"queued".to_vec())),
        }],
        success: vec![
            Op::Put {
                key: b"task/1".to_vec(),
                value: b"running".to_vec(),
                lease: 7,
                prev_kv: true,
            },
            Op::delete("task/0"),
            Op::Get {
                key: b"task/2".to_vec(),
            },
        ],
        failure: vec![Op::put("f", "x")],
        request: Some(RequestId {
            client: 9,
            sequence: 4,
            first_incomplete: 3,
        }),
        time_ms: 1_700_000_000_000,
        auth_revision: Some(5),
    });
    let lease = Command::Lease(crate::lease::LeaseCommand::Checkpoint {
        remaining: vec![(1, 500), (2, 9000)],
    });
    let revoke = Command::Lease(crate::lease::LeaseCommand::RevokeBy {
        id: 3,
        time_ms: 1_700_000_000_000,
        user: Some("alice".into()),
    });
    let auth = Command::Auth(crate::auth::AuthChange::UserGrantRole {
        user: "root".into(),
        role: "root".into(),
    });
    let encode = |value: &dyn erased::Encode| value.bytes();
    let node = FerryNode {
        raft_addr: "127.0.0.1:7401".into(),
        client_addr: "127.0.0.1:7400".into(),
    };
    let membership = Membership::new(
        vec![BTreeSet::from([1, 2, 3])],
        BTreeMap::from([
            (1, node.clone()),
            (2, node.clone()),
            (3, node.clone()),
            (4, node),
        ]),
    )
    .expect("a valid membership");
    let applied = log_id(2, 1, 40);
    let meta = SnapshotMeta {
        last_log_id: Some(applied),
        last_membership: StoredMembership::new(Some(log_id(1, 1, 3)), membership.clone()),
    };
    let vote = Vote::new_committed(2, 1);
    let entries: Vec<Entry> = vec![
        Entry::new_normal(log_id(2, 1, 41), txn.clone().into()),
        Entry::new_normal(log_id(2, 1, 42), lease.clone().into()),
        Entry {
            log_id: log_id(2, 1, 43),
            payload: EntryPayload::Membership(membership),
        },
        Entry {
            log_id: log_id(2, 1, 44),
            payload: EntryPayload::Blank,
        },
    ];
    let append = AppendEntriesRequest::<TypeConfig> {
        vote,
        prev_log_id: Some(applied),
        entries: entries.clone(),
        leader_commit: Some(applied),
    };
    let message = |payload: Vec<u8>| {
        pb::RaftMessage {
            from: 1,
            payload,
            to: 2,
            status_url: "http://127.0.0.1:7402".into(),
        }
        .encode_to_vec()
    };
    let files = vec![
        crate::snapshot::SnapshotFile {
            name: "000004.sst".into(),
            size: 4096,
            crc: 7,
        },
        crate::snapshot::SnapshotFile {
            name: "CHECKPOINT".into(),
            size: 120,
            crc: 9,
        },
    ];
    let offer = pb::SnapshotFrame {
        frame: Some(pb::snapshot_frame::Frame::Offer(pb::Offer {
            vote: encode(&vote),
            meta: encode(&meta),
            snapshot_id: "1-00000000000000000040-1-2-1".into(),
            files: files.iter().map(pb::FileEntry::from).collect(),
            full_only: false,
            to: 2,
        })),
    };
    let chunk = pb::SnapshotFrame {
        frame: Some(pb::snapshot_frame::Frame::Chunk(pb::Chunk {
            file: 1,
            offset: 0,
            data: b"chunk".to_vec(),
            crc: crc32fast::hash(b"chunk"),
        })),
    };
    let done = pb::SnapshotFrame {
        frame: Some(pb::snapshot_frame::Frame::Done(pb::Done {
            state_hash: Some(77),
        })),
    };
    let replies = [
        pb::snapshot_reply::Reply::Plan(pb::Plan {
            have: vec![0, 4096],
            reused_local: true,
        }),
        pb::snapshot_reply::Reply::Progress(pb::Progress {
            received_bytes: 4096,
        }),
        pb::snapshot_reply::Reply::Installed(pb::Installed {
            response: encode(&SnapshotResponse::<TypeConfig>::new(vote)),
        }),
        pb::snapshot_reply::Reply::Failed(pb::Failed {
            reason: "state hash differs".into(),
            retry_full: true,
        }),
    ];
    let manifest = crate::snapshot::SnapshotManifest {
        meta: meta.clone(),
        files: files.clone(),
        state_hash: Some(0xfeed),
    };
    let record = CheckpointRecord {
        applied: Some(applied),
        time_ms: 1_700_000_000_000,
        created_ms: 1_700_000_000_500,
        files,
        new_bytes: 4096,
    };
    let chunk_file = {
        let mut out = ferry_engine::wal::segment_header(LogKind::Raft).to_vec();
        for entry in &entries {
            ferry_engine::wal::encode_record(&mut out, entry.log_id.index, &encode(entry));
        }
        out
    };
    fn state_file<T: Serialize>(kind: &ferry_engine::envelope::Kind, value: &T) -> Vec<u8> {
        let fs = FaultInjectionFs::new();
        let path = Path::new("/seed/file");
        fs.create_dir_all(Path::new("/seed")).expect("in memory");
        crate::log_store::files::write(&fs, path, kind, value).expect("in memory");
        fs.read_all(path).expect("in memory")
    }
    let mut seeds = vec![
        ("command", encode(&txn)),
        ("command", encode(&lease)),
        ("command", encode(&revoke)),
        ("command", encode(&auth)),
        ("raft_message", message(encode(&append))),
        (
            "raft_message",
            message(encode(&VoteRequest::<TypeConfig>::new(vote, Some(applied)))),
        ),
        (
            "raft_message",
            message(encode(&Ok::<_, String>(VoteResponse::<TypeConfig>::new(
                vote,
                Some(applied),
                true,
            )))),
        ),
        ("snapshot_frame", offer.encode_to_vec()),
        ("snapshot_frame", chunk.encode_to_vec()),
        ("snapshot_frame", done.encode_to_vec()),
        (
            "snapshot_manifest",
            encode_manifest(&manifest).expect("encodes"),
        ),
        ("backup_record", record.encode().expect("encodes")),
        ("backup_log_chunk", chunk_file),
        (
            "raft_state_file",
            state_file(&crate::log_store::files::VOTE, &vote),
        ),
        (
            "raft_state_file",
            state_file(&crate::log_store::files::PURGED, &applied),
        ),
        (
            "state_records",
            Record {
                create_revision: 3,
                mod_revision: 9,
                version: 4,
                lease: 7,
                mod_index: 1,
                value: b"running".to_vec(),
            }
            .encode(),
        ),
        (
            "state_records",
            crate::lease::store::encode(&crate::lease::LeaseRecord {
                ttl_ms: 5000,
                remaining_ms: Some(2500),
            }),
        ),
        (
            "state_records",
            crate::auth::store::encode(&User {
                password_hash: Some("$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA".into()),
                roles: BTreeSet::from(["root".into(), "status".into()]),
                epoch: 2,
            })
            .expect("encodes"),
        ),
    ];
    for reply in replies {
        seeds.push((
            "snapshot_reply",
            pb::SnapshotReply { reply: Some(reply) }.encode_to_vec(),
        ));
    }
    seeds
}

/// Encoding through a trait object, so that seeds of many types share
/// one helper.
mod erased {
    pub trait Encode {
        fn bytes(&self) -> Vec<u8>;
    }

    impl<T: serde::Serialize> Encode for T {
        fn bytes(&self) -> Vec<u8> {
            postcard::to_stdvec(self).expect("a seed encodes")
        }
    }
}

/// A small deterministic generator (xorshift64*): the stable runs are
/// reproducible from their seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// One mutation of `input`: flip a bit, set a byte to an edge value,
/// insert or remove bytes, truncate, duplicate a stretch, or splice in
/// part of `other`.
fn mutate(rng: &mut Rng, input: &mut Vec<u8>, other: &[u8]) {
    let len = input.len();
    match rng.below(7) {
        0 if len > 0 => {
            let at = rng.below(len);
            input[at] ^= 1 << rng.below(8);
        }
        1 if len > 0 => {
            let at = rng.below(len);
            input[at] = [0, 1, 0x7f, 0x80, 0xff][rng.below(5)];
        }
        2 => {
            let at = rng.below(len + 1);
            let n = 1 + rng.below(8);
            for _ in 0..n {
                input.insert(at, rng.next() as u8);
            }
        }
        3 if len > 0 => {
            let at = rng.below(len);
            let n = (1 + rng.below(8)).min(len - at);
            input.drain(at..at + n);
        }
        4 => input.truncate(rng.below(len + 1)),
        5 if len > 0 => {
            let at = rng.below(len);
            let n = (1 + rng.below(16)).min(len - at);
            let stretch = input[at..at + n].to_vec();
            let to = rng.below(len + 1);
            input.splice(to..to, stretch);
        }
        _ if !other.is_empty() => {
            let from = rng.below(other.len());
            let n = (1 + rng.below(32)).min(other.len() - from);
            let at = rng.below(len + 1);
            let end = (at + n).min(len);
            input.splice(at..end, other[from..from + n].iter().copied());
        }
        _ => input.push(rng.next() as u8),
    }
}

/// The committed corpus of `target` under `root` (one file an input),
/// sorted by name.
pub fn corpus(root: &Path, target: &str) -> Vec<Vec<u8>> {
    let mut files: Vec<std::path::PathBuf> = std::fs::read_dir(root.join(target))
        .map(|entries| entries.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    files.sort();
    files
        .iter()
        .map(|f| std::fs::read(f).unwrap_or_else(|e| panic!("{}: {e}", f.display())))
        .collect()
}

/// Checks that the corpus under `root` holds every one of `seeds` (as
/// `<target>/seed-<crc>`); with `write`, adds those it lacks. Returns the
/// files missing (before writing): a format or seed changed and the
/// corpus was not brought along.
pub fn seeds_in_corpus(
    root: &Path,
    seeds: Vec<(&'static str, Vec<u8>)>,
    write: bool,
) -> std::io::Result<Vec<std::path::PathBuf>> {
    let mut missing = Vec::new();
    for (name, bytes) in seeds {
        let path = root
            .join(name)
            .join(format!("seed-{:08x}", crc32fast::hash(&bytes)));
        if std::fs::read(&path).ok().as_deref() == Some(bytes.as_slice()) {
            continue;
        }
        if write {
            std::fs::create_dir_all(root.join(name))?;
            std::fs::write(&path, &bytes)?;
        }
        missing.push(path);
    }
    Ok(missing)
}

/// The stable run of one target (what `tests/fuzz.rs` does for each):
/// its corpus under `corpus_root` (which must not be empty) and `extra`
/// inputs, then [`run`]. A failing input is saved under `failures` and
/// the message names it.
pub fn check(
    corpus_root: &Path,
    failures: &Path,
    (name, target): (&str, fn(&[u8])),
    extra: impl IntoIterator<Item = Vec<u8>>,
    rounds: usize,
    seed: u64,
) -> Result<usize, String> {
    let mut inputs = corpus(corpus_root, name);
    if inputs.is_empty() {
        return Err(format!(
            "no corpus for {name} in {}: run the fuzz tests with FERRY_WRITE_CORPUS=1",
            corpus_root.display()
        ));
    }
    inputs.extend(extra);
    run(target, &inputs, rounds, seed).map_err(|(input, message)| {
        let path = failures.join(format!("{name}-{:08x}", crc32fast::hash(&input)));
        let saved = std::fs::create_dir_all(failures).and_then(|()| std::fs::write(&path, &input));
        format!(
            "fuzz target {name} failed (seed {seed}): {message}\ninput {}: {}",
            match saved {
                Ok(()) => "saved as",
                Err(_) => "could not be saved as",
            },
            path.display()
        )
    })?;
    Ok(inputs.len())
}

/// A failing input and what failed.
pub type Failure = (Vec<u8>, String);

/// Runs `target` on every input, then on `rounds` mutations of them (one
/// to four each) and on `rounds / 4` random inputs of up to 512 bytes,
/// from `seed`. A property failure is returned with the input that caused
/// it, for a regression file.
pub fn run(target: fn(&[u8]), inputs: &[Vec<u8>], rounds: usize, seed: u64) -> Result<(), Failure> {
    let attempt = |input: &[u8]| {
        std::panic::catch_unwind(|| target(input)).map_err(|panic| {
            let message = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "a panic".into());
            (input.to_vec(), message)
        })
    };
    // Panics are caught and reported with their input here, and some are
    // caught inside the code under test by design (the Parquet reader turns
    // the parquet crate's panics into errors): the default hook would print
    // each one. The hook is process-wide, so the runner wants a test binary
    // of its own (as `tests/fuzz.rs` is).
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let result = run_quietly(&attempt, inputs, rounds, seed);
    std::panic::set_hook(hook);
    result
}

fn run_quietly(
    attempt: &dyn Fn(&[u8]) -> Result<(), Failure>,
    inputs: &[Vec<u8>],
    rounds: usize,
    seed: u64,
) -> Result<(), Failure> {
    for input in inputs {
        attempt(input)?;
    }
    let mut rng = Rng(seed | 1);
    for _ in 0..rounds {
        let mut input = inputs[rng.below(inputs.len())].clone();
        let other = &inputs[rng.below(inputs.len())];
        for _ in 0..1 + rng.below(4) {
            mutate(&mut rng, &mut input, other);
        }
        attempt(&input)?;
    }
    for _ in 0..rounds / 4 {
        let input: Vec<u8> = (0..rng.below(513)).map(|_| rng.next() as u8).collect();
        attempt(&input)?;
    }
    Ok(())
}
