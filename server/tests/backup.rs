//! The backup chain of a real cluster: shipped by the leader, continued by
//! the next leader after a SIGKILL, verified with `ferry backup verify`,
//! and restored with `ferry backup restore` to a time, to an index and to
//! its end, each compared with a model of the acknowledged writes; in a
//! local directory and in a real S3 server (moto's).

mod common;
#[path = "../../replication/tests/common/s3.rs"]
mod s3;

use common::{connect, ferry, ProcessCluster};
use ferry_client::Client;
use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

type State = BTreeMap<Vec<u8>, Vec<u8>>;

/// Acknowledged puts: (revision, key, value), in order.
type Model = Vec<(u64, Vec<u8>, Vec<u8>)>;

fn state_at(model: &Model, index: u64) -> State {
    model
        .iter()
        .filter(|w| w.0 <= index)
        .map(|w| (w.1.clone(), w.2.clone()))
        .collect()
}

async fn write(client: &Client, model: &mut Model, count: usize, tag: &str) {
    for i in 0..count {
        let key = format!("key-{:02}", (i * 7) % 40).into_bytes();
        let value = format!("{tag}-{i}").into_bytes();
        let revision = client.put(key.clone(), value.clone()).await.unwrap();
        model.push((revision, key, value));
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

async fn ferry_blocking(args: Vec<String>) -> (i32, String, String) {
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        ferry(&args)
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_chain_survives_a_killed_leader_and_restores_to_a_time_an_index_and_its_end() {
    chain_of_a_killed_leader(|root| vec!["--dir".into(), root.join("chain").display().to_string()])
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_chain_in_s3_survives_a_killed_leader_and_restores() {
    let server = s3::MotoServer::start();
    let secret = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(secret.path(), "test\n").unwrap();
    let options = server.options();
    let (endpoint, secret) = (
        options.endpoint.unwrap(),
        secret.path().display().to_string(),
    );
    chain_of_a_killed_leader(move |_| {
        [
            "--url",
            &format!("s3://{}/clusters/a", s3::BUCKET),
            "--s3-endpoint",
            &endpoint,
            "--s3-region",
            "us-east-1",
            "--s3-access-key-id",
            "test",
            "--s3-secret-access-key-file",
            &secret,
        ]
        .map(String::from)
        .to_vec()
    })
    .await;
}

/// `location(root)`: the flags that name the chain to `ferry backup`;
/// `ferry serve` gets the same with `--backup-` before the first.
async fn chain_of_a_killed_leader(location: impl Fn(&Path) -> Vec<String> + Send + Sync + 'static) {
    let location = std::sync::Arc::new(location);
    let serve_location = location.clone();
    let mut cluster = ProcessCluster::start_with(3, move |root| {
        let mut args = serve_location(root);
        args[0] = args[0].replacen("--", "--backup-", 1);
        args.extend(
            [
                "--backup-interval-ms",
                "100",
                "--backup-checkpoint-interval-ms",
                "1000",
            ]
            .map(String::from),
        );
        args
    });
    let chain = location(cluster.root.path());
    let client = connect(cluster.endpoints()).await;
    let mut model = Model::new();
    write(&client, &mut model, 150, "a").await;
    let end_of_a = model.last().unwrap().0;
    tokio::time::sleep(Duration::from_millis(30)).await;
    let cut = ferry_replication::types::now_ms();
    tokio::time::sleep(Duration::from_millis(30)).await;
    write(&client, &mut model, 150, "b").await;
    let mid_b = model[model.len() - 60].0;

    // The leader reports the chain in its metrics, then dies.
    let leader = client.status().await.unwrap().leader_id;
    let metrics = common::http_get(&cluster.metrics_addr(leader), "/metrics").await;
    for name in ["ferry_backup_shipped_index", "ferry_backup_lag_entries"] {
        assert!(metrics.contains(name), "{name} missing:\n{metrics}");
    }
    cluster.sigkill(leader);
    write(&client, &mut model, 150, "c").await;
    let last = model.last().unwrap().0;

    // The new leader ships the rest.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut args: Vec<String> = vec!["backup".into(), "list".into(), "--json".into()];
        args.extend(chain.iter().cloned());
        let (code, out, err) = ferry_blocking(args).await;
        assert_eq!(code, 0, "{out}{err}");
        let listed: serde_json::Value = serde_json::from_str(&out).unwrap();
        if listed["log_last"].as_u64().unwrap_or(0) >= last {
            assert!(
                listed["checkpoints"].as_array().unwrap().len() >= 2,
                "{listed}"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "chain stuck at {listed}, want {last}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Verify reads every object and chunk, and gives the range a restore reaches.
    let mut args: Vec<String> = vec!["backup".into(), "verify".into(), "--json".into()];
    args.extend(chain.iter().cloned());
    let (code, out, err) = ferry_blocking(args).await;
    assert_eq!(code, 0, "{out}{err}");
    let verified: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        verified["problems"].as_array().unwrap().len(),
        0,
        "{verified}"
    );
    assert!(
        verified["restorable"]["last_index"].as_u64().unwrap() >= last,
        "{verified}"
    );

    let restore = |out: &Path, point: &[&str]| {
        let mut args: Vec<String> = ["backup", "restore", "--json"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        args.extend(chain.iter().cloned());
        args.push("--data-dir".into());
        args.push(out.display().to_string());
        args.extend(point.iter().map(|s| s.to_string()));
        args
    };
    let root = cluster.root.path().to_path_buf();
    let cut_text = cut.to_string();
    let mid_text = mid_b.to_string();
    for (what, point, index) in [
        ("time", vec!["--to-time", cut_text.as_str()], end_of_a),
        ("index", vec!["--to-index", mid_text.as_str()], mid_b),
    ] {
        let out = root.join(format!("restored-{what}"));
        let (code, stdout, err) = ferry_blocking(restore(&out, &point)).await;
        assert_eq!(code, 0, "{what}: {stdout}{err}");
        assert_eq!(
            restored_state(&out),
            state_at(&model, index),
            "{what}: {stdout}"
        );
    }

    // The end of the chain, started as a new cluster.
    cluster.new_node(10);
    let node = cluster.nodes.iter().find(|n| n.id == 10).unwrap();
    let mut args = restore(&node.dir, &[]);
    args.extend(
        [
            "--id",
            "10",
            "--raft-addr",
            &node.raft,
            "--client-addr",
            &node.client,
        ]
        .map(String::from),
    );
    let (code, stdout, err) = ferry_blocking(args).await;
    assert_eq!(code, 0, "{stdout}{err}");
    assert_eq!(
        restored_state(&node.dir),
        state_at(&model, last),
        "{stdout}"
    );
    cluster.extra_args.clear();
    cluster.spawn(10, true, &[]);
    let restored = connect(vec![cluster.client_addr(10)]).await;
    let (_, key, value) = model.last().unwrap();
    assert_eq!(
        restored.get(key.clone()).await.unwrap().map(|kv| kv.value),
        Some(value.clone())
    );
    restored.put("after-restore", "yes").await.unwrap();

    // Bad input is refused with a usage error and writes nothing.
    let bad = root.join("restored-bad");
    let (code, _, err) = ferry_blocking(restore(&bad, &["--to-time", "yesterday"])).await;
    assert_eq!(code, 2, "{err}");
    assert!(!bad.exists());
}

/// `ferry serve --backup-keep-chains 2` prunes older checkpoints and the
/// log below them while the cluster writes; what is left verifies and
/// restores to the last write; `ferry cluster status`, asked of a
/// follower, reports the leader's newest restore point and its age.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn retention_flags_prune_the_chain_and_cluster_status_shows_its_age() {
    let cluster = ProcessCluster::start_with(3, |root| {
        [
            "--backup-dir",
            &root.join("chain").display().to_string(),
            "--backup-interval-ms",
            "100",
            "--backup-checkpoint-interval-ms",
            "300",
            "--backup-keep-chains",
            "2",
        ]
        .map(String::from)
        .to_vec()
    });
    let chain = [
        "--dir".to_string(),
        cluster.root.path().join("chain").display().to_string(),
    ];
    let list = || async {
        let mut args: Vec<String> = vec!["backup".into(), "list".into(), "--json".into()];
        args.extend(chain.iter().cloned());
        let (code, out, err) = ferry_blocking(args).await;
        assert_eq!(code, 0, "{out}{err}");
        let listed: serde_json::Value = serde_json::from_str(&out).unwrap();
        let checkpoints: Vec<u64> = listed["checkpoints"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["index"].as_u64().unwrap())
            .collect();
        (checkpoints, listed)
    };
    let client = connect(cluster.endpoints()).await;
    let mut model = Model::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    let first = loop {
        write(&client, &mut model, 20, "a").await;
        if let Some(&first) = list().await.0.first() {
            break first;
        }
        assert!(
            Instant::now() < deadline,
            "no checkpoint shipped; logs:\n{}\n{}\n{}",
            cluster.log(1),
            cluster.log(2),
            cluster.log(3)
        );
    };
    // Writes go on until retention has dropped that first checkpoint.
    loop {
        write(&client, &mut model, 20, "b").await;
        let (checkpoints, listed) = list().await;
        // Between a new checkpoint's record and its prune, three exist.
        assert!(checkpoints.len() <= 3, "{listed}");
        if checkpoints.first() > Some(&first) && checkpoints.len() <= 2 {
            assert!(
                listed["log_first"].as_u64().unwrap() > first,
                "the log below the first checkpoint is pruned: {listed}"
            );
            break;
        }
        assert!(Instant::now() < deadline, "nothing pruned: {listed}");
    }
    let last = model.last().unwrap().0;
    loop {
        if list().await.1["log_last"].as_u64().unwrap_or(0) >= last {
            break;
        }
        assert!(Instant::now() < deadline, "chain short of {last}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Status through a follower: the leader's figures.
    let leader = client.status().await.unwrap().leader_id;
    let follower = (1..=3).find(|id| *id != leader).unwrap();
    let endpoint = cluster.client_addr(follower);
    let status = |json: bool| {
        let mut args = vec!["cluster", "status", "--endpoints", &endpoint];
        if json {
            args.push("--json");
        }
        let args: Vec<String> = args.into_iter().map(String::from).collect();
        ferry_blocking(args)
    };
    let (code, out, err) = status(true).await;
    assert_eq!(code, 0, "{out}{err}");
    let summary = serde_json::from_str::<serde_json::Value>(&out).unwrap();
    // The cluster rises to what its members implement within 5 s.
    let version = summary["apply_version"].as_u64().unwrap();
    assert!(version == 1 || version == 2, "{out}");
    assert_eq!(summary["implemented_apply_version"], 2, "{out}");
    let backup = &summary["backup"];
    assert!(backup["shipped_index"].as_u64().unwrap() >= last, "{out}");
    // Rounds run every 100 ms; a minute allows for a very slow machine.
    let age = backup["restore_point_age_ms"].as_u64().unwrap();
    assert!(age < 60_000, "{out}");
    let (code, out, err) = status(false).await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("backup: newest restore point"), "{out}");
    assert!(out.contains(" (implements 2)"), "{out}");

    // What retention left verifies and restores to the last write.
    let mut args: Vec<String> = vec!["backup".into(), "verify".into(), "--json".into()];
    args.extend(chain.iter().cloned());
    let (code, out, err) = ferry_blocking(args).await;
    assert_eq!(code, 0, "{out}{err}");
    let out_dir = cluster.root.path().join("restored");
    let mut args: Vec<String> = vec!["backup".into(), "restore".into()];
    args.extend(chain.iter().cloned());
    args.extend(["--data-dir".into(), out_dir.display().to_string()]);
    args.extend(["--to-index".into(), last.to_string()]);
    let (code, out, err) = ferry_blocking(args).await;
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(restored_state(&out_dir), state_at(&model, last));
    // A point before the oldest kept checkpoint is gone, and says so.
    let mut args: Vec<String> = vec!["backup".into(), "restore".into()];
    args.extend(chain.iter().cloned());
    let early = cluster.root.path().join("restored-early");
    args.extend(["--data-dir".into(), early.display().to_string()]);
    args.extend(["--to-index".into(), first.to_string()]);
    let (code, out, err) = ferry_blocking(args).await;
    assert_ne!(code, 0, "{out}{err}");
    assert!(!early.exists());
}
