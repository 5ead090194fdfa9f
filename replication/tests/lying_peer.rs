//! A peer that lies: a test-only Raft client sends a follower snapshot
//! offers and frames no leader would, and Raft requests that do not
//! decode. Each is refused with an error naming what was wrong; the node
//! stays up, its state unchanged, and goes on replicating.

mod common;

use common::{fast_raft, Cluster};
use ferry_replication::network::pb::{
    self, raft_transport_client::RaftTransportClient, snapshot_frame::Frame, snapshot_reply::Reply,
    SnapshotFrame,
};
use ferry_replication::types::{SnapshotMeta, Vote};
use ferry_replication::Node;
use std::sync::Arc;
use std::time::Duration;
use tonic::transport::Channel;

/// Sends `frames` as one snapshot stream; the follower's final reason for
/// refusing it (every stream here must be refused).
async fn refused(client: &mut RaftTransportClient<Channel>, frames: Vec<SnapshotFrame>) -> String {
    let mut replies = client
        .install_snapshot(tokio_stream::iter(frames))
        .await
        .expect("the follower answers the stream")
        .into_inner();
    loop {
        let reply = tokio::time::timeout(Duration::from_secs(30), replies.message())
            .await
            .expect("an answer within 30 s")
            .expect("a reply, not a transport error")
            .expect("a final reply before the stream ends");
        match reply.reply.expect("a reply has a body") {
            Reply::Failed(failed) => return failed.reason,
            Reply::Installed(_) => panic!("a lying peer's snapshot was installed"),
            Reply::Plan(_) | Reply::Progress(_) => continue,
        }
    }
}

fn file(name: &str, data: &[u8]) -> pb::FileEntry {
    pb::FileEntry {
        name: name.into(),
        size: data.len() as u64,
        crc: crc32fast::hash(data),
    }
}

fn chunk(file: u32, offset: u64, data: &[u8]) -> SnapshotFrame {
    SnapshotFrame {
        frame: Some(Frame::Chunk(pb::Chunk {
            file,
            offset,
            data: data.to_vec(),
            crc: crc32fast::hash(data),
        })),
    }
}

fn done() -> SnapshotFrame {
    SnapshotFrame {
        frame: Some(Frame::Done(pb::Done { state_hash: None })),
    }
}

/// An offer to `target` from node 1 in the current term, as a leader's
/// would look, of `files`.
fn offer(target: &Node, id: &str, files: Vec<pb::FileEntry>) -> SnapshotFrame {
    let metrics = target.metrics();
    let vote = Vote::new_committed(metrics.current_term, 1);
    let meta = SnapshotMeta {
        last_log_id: metrics.last_applied,
        last_membership: (*metrics.membership_config).clone(),
    };
    SnapshotFrame {
        frame: Some(Frame::Offer(pb::Offer {
            vote: postcard::to_stdvec(&vote).unwrap(),
            meta: postcard::to_stdvec(&meta).unwrap(),
            snapshot_id: format!("1-lie-{id}"),
            files,
            full_only: true,
            to: target.id(),
        })),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_refuses_every_lie_by_name_and_keeps_its_state() {
    let cluster = Cluster::start(3, fast_raft()).await;
    let leader = cluster.leader().unwrap().clone();
    for i in 0..50 {
        leader.put(format!("k{i}"), format!("v{i}")).await.unwrap();
    }
    cluster.assert_converged(Duration::from_secs(10)).await;
    let follower: Arc<Node> = cluster
        .nodes
        .values()
        .find(|n| n.id() != leader.id())
        .unwrap()
        .clone();
    let before = follower.state_hash().unwrap();
    let mut client = RaftTransportClient::new(
        Channel::from_shared(format!("http://{}", follower.raft_addr()))
            .unwrap()
            .connect()
            .await
            .unwrap(),
    );
    let (a, b) = (b"aaaa".as_slice(), b"bbbb".as_slice());

    // File sizes past any disk.
    let mut huge = file("000001.sst", a);
    huge.size = 1 << 60;
    let reason = refused(&mut client, vec![offer(&follower, "huge", vec![huge])]).await;
    assert!(
        reason.contains("bytes exceed") && reason.contains("free"),
        "{reason}"
    );
    // Sizes that overflow when added up, and too many files.
    let mut overflow = vec![file("000001.sst", a), file("000002.sst", b)];
    overflow[0].size = u64::MAX;
    let reason = refused(&mut client, vec![offer(&follower, "overflow", overflow)]).await;
    assert!(reason.contains("2^64"), "{reason}");
    let many = (0..100_001)
        .map(|i| file(&format!("{i:06}.sst"), a))
        .collect();
    let reason = refused(&mut client, vec![offer(&follower, "many", many)]).await;
    assert!(reason.contains("100001 files"), "{reason}");
    // Names outside the staging directory, or twice.
    let reason = refused(
        &mut client,
        vec![offer(&follower, "escape", vec![file("../../ENGINE", a)])],
    )
    .await;
    assert!(reason.contains("outside its directory"), "{reason}");
    let twice = vec![file("000001.sst", a), file("000001.sst", b)];
    let reason = refused(&mut client, vec![offer(&follower, "twice", twice)]).await;
    assert!(reason.contains("000001.sst twice"), "{reason}");

    // Chunks out of order.
    let reason = refused(
        &mut client,
        vec![
            offer(&follower, "order", vec![file("000001.sst", a)]),
            chunk(0, 2, b"aa"),
        ],
    )
    .await;
    assert!(
        reason.contains("at offset 2 where 0 was expected"),
        "{reason}"
    );
    // A chunk for a file the offer does not have, and one longer than its file.
    let reason = refused(
        &mut client,
        vec![
            offer(&follower, "unknown", vec![file("000001.sst", a)]),
            chunk(5, 0, a),
        ],
    )
    .await;
    assert!(reason.contains("unknown file"), "{reason}");
    let reason = refused(
        &mut client,
        vec![
            offer(&follower, "long", vec![file("000001.sst", a)]),
            chunk(0, 0, b"aaaaaaaa"),
        ],
    )
    .await;
    assert!(reason.contains("runs past the 4 bytes offered"), "{reason}");
    // Chunks that belong to the other file: each file gets the other's bytes.
    let reason = refused(
        &mut client,
        vec![
            offer(
                &follower,
                "swapped",
                vec![file("000001.sst", a), file("000002.sst", b)],
            ),
            chunk(0, 0, b),
            chunk(1, 0, a),
            done(),
        ],
    )
    .await;
    assert!(
        reason.contains("000001.sst") && reason.contains("CRC"),
        "{reason}"
    );
    // A chunk whose own CRC is wrong.
    let mut bad = chunk(0, 0, a);
    if let Some(Frame::Chunk(c)) = bad.frame.as_mut() {
        c.crc ^= 1;
    }
    let reason = refused(
        &mut client,
        vec![offer(&follower, "crc", vec![file("000001.sst", a)]), bad],
    )
    .await;
    assert!(reason.contains("fails its CRC"), "{reason}");
    // Done before every byte has arrived: part of a file, and none of one.
    let reason = refused(
        &mut client,
        vec![
            offer(
                &follower,
                "early",
                vec![file("000001.sst", a), file("000002.sst", b)],
            ),
            chunk(0, 0, b"aa"),
            done(),
        ],
    )
    .await;
    assert!(reason.contains("000001.sst: 2 of its 4 bytes"), "{reason}");
    let reason = refused(
        &mut client,
        vec![
            offer(
                &follower,
                "none",
                vec![file("000001.sst", a), file("000002.sst", b)],
            ),
            chunk(0, 0, a),
            done(),
        ],
    )
    .await;
    assert!(
        reason.contains("000002.sst: none of its 4 bytes"),
        "{reason}"
    );
    // A whole, intact engine checkpoint whose state is not the one the
    // meta names (it was applied to nothing): refused before it is sealed
    // (openraft would install it by the meta).
    let scratch = tempfile::tempdir().unwrap();
    let other = scratch.path().join("checkpoint");
    {
        let db = ferry_replication::engine::Db::open(
            scratch.path().join("engine"),
            ferry_replication::engine::Options::default(),
        )
        .unwrap();
        db.put(b"\x01k", b"not this cluster's").unwrap();
        db.checkpoint(&other).unwrap();
        db.close().unwrap();
    }
    let mut names: Vec<String> = std::fs::read_dir(&other)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    let contents: Vec<Vec<u8>> = names
        .iter()
        .map(|n| std::fs::read(other.join(n)).unwrap())
        .collect();
    let files = names
        .iter()
        .zip(&contents)
        .map(|(n, c)| file(n, c))
        .collect();
    let mut frames = vec![offer(&follower, "other-state", files)];
    for (at, content) in contents.iter().enumerate() {
        if !content.is_empty() {
            frames.push(chunk(at as u32, 0, content));
        }
    }
    frames.push(done());
    let reason = refused(&mut client, frames).await;
    assert!(reason.contains("its meta says"), "{reason}");

    // A frame before the offer, a second offer, and an offer for another node.
    let reason = refused(&mut client, vec![chunk(0, 0, a)]).await;
    assert!(reason.contains("first frame must be an offer"), "{reason}");
    let reason = refused(
        &mut client,
        vec![
            offer(&follower, "again", vec![file("000001.sst", a)]),
            offer(&follower, "again", vec![file("000001.sst", a)]),
        ],
    )
    .await;
    assert!(reason.contains("second offer"), "{reason}");
    let mut elsewhere = offer(&follower, "elsewhere", vec![file("000001.sst", a)]);
    if let Some(Frame::Offer(o)) = elsewhere.frame.as_mut() {
        o.to = 99;
    }
    let reason = refused(&mut client, vec![elsewhere]).await;
    assert!(reason.contains("meant for node 99"), "{reason}");
    // An offer whose vote and metadata do not decode.
    let mut garbled = offer(&follower, "garbled", vec![file("000001.sst", a)]);
    if let Some(Frame::Offer(o)) = garbled.frame.as_mut() {
        o.vote = vec![0xff; 3];
    }
    let reason = refused(&mut client, vec![garbled]).await;
    assert!(!reason.is_empty());

    // Raft requests whose payload, or whose entries, do not decode.
    for payload in [vec![0xff; 64], {
        // A heartbeat's prefix with the entry count of a million.
        let mut p = postcard::to_stdvec(&Vote::new_committed(1, 1)).unwrap();
        p.extend_from_slice(&[0, 0xc0, 0x84, 0x3d]);
        p
    }] {
        let status = client
            .append_entries(pb::RaftMessage {
                from: 1,
                payload,
                to: follower.id(),
                status_url: String::new(),
            })
            .await
            .expect_err("an undecodable request is refused");
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        assert!(
            status.message().contains("undecodable raft message"),
            "{status}"
        );
    }

    // Nothing changed, and the follower goes on as one.
    assert_eq!(follower.state_hash().unwrap(), before);
    assert_eq!(follower.metrics().current_leader, Some(leader.id()));
    let revision = leader.put("after", "the lies").await.unwrap();
    cluster
        .wait_applied(revision, Duration::from_secs(10))
        .await;
    cluster.assert_converged(Duration::from_secs(10)).await;
    cluster.shutdown().await;
}
