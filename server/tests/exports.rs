//! Parquet exports through the CLI, read by DuckDB: the state export shows
//! the user keys and values that were written and nothing else; the
//! history export has one row per acknowledged change in revision order; a
//! state export restores into a new cluster whose user state checksums
//! equal to the source's.

mod common;

#[path = "../../engine/tests/support/duckdb.rs"]
mod duckdb;

use common::{connect, ferry, ProcessCluster};
use std::collections::BTreeMap;
use std::path::Path;

fn json(out: &str) -> serde_json::Value {
    serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{e}: {out}"))
}

fn files(dir: &Path) -> String {
    format!("{}/*.parquet", dir.display())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exports_read_by_duckdb_hold_what_was_written_and_restore_a_cluster() {
    let mut cluster = ProcessCluster::start(3);
    let client = connect(cluster.endpoints()).await;
    let endpoints = cluster.endpoints().join(",");
    let started_ms = ferry_replication::types::now_ms();

    // Writes, overwrites and deletes; the model keeps what each did.
    let mut state: BTreeMap<String, (String, u64, u64, u64)> = BTreeMap::new();
    let mut changes = Vec::new();
    for i in 0..300u64 {
        let key = format!("job/{:03}", i % 120);
        if i % 9 == 4 {
            // An absent key's delete changes nothing and leaves no row.
            let (revision, prev) = client.remove(key.clone()).await.unwrap();
            if let Some(prev) = prev {
                assert_eq!(state.remove(&key).unwrap().2, prev.mod_revision);
                changes.push((revision, "delete", key, None, prev.mod_revision));
            }
            continue;
        }
        let value = format!("value-{i}");
        let (revision, prev) = client.replace(key.clone(), value.clone()).await.unwrap();
        let entry = state
            .entry(key.clone())
            .or_insert((String::new(), revision, 0, 0));
        assert_eq!(
            prev.as_ref().map(|p| p.mod_revision),
            (entry.3 > 0).then_some(entry.2)
        );
        *entry = (value.clone(), entry.1, revision, entry.3 + 1);
        changes.push((
            revision,
            "put",
            key,
            Some(value),
            prev.map_or(0, |p| p.mod_revision),
        ));
    }
    let ended_ms = ferry_replication::types::now_ms();

    // The state export, downloaded to a local directory.
    let export = cluster.root.path().join("state-export");
    let (code, out, err) = ferry(&[
        "snapshot",
        "export-parquet",
        export.to_str().unwrap(),
        "--json",
        "--endpoints",
        &endpoints,
    ]);
    assert_eq!(code, 0, "{out}{err}");
    let summary = json(&out);
    assert_eq!(summary["rows"], state.len() as u64);
    let rows = duckdb::query(&format!(
        "select decode(key), decode(value), create_revision, mod_revision, version, lease \
         from read_parquet('{}') order by key",
        files(&export)
    ));
    let expected: Vec<Vec<String>> = state
        .iter()
        .map(|(key, (value, create, modified, version))| {
            vec![
                key.clone(),
                value.clone(),
                create.to_string(),
                modified.to_string(),
                version.to_string(),
                "0".into(),
            ]
        })
        .collect();
    assert_eq!(
        rows, expected,
        "the state export holds exactly the user keys"
    );
    let columns = duckdb::query(&format!(
        "select column_name from (describe select * from read_parquet('{}'))",
        files(&export)
    ));
    assert_eq!(
        columns.concat(),
        [
            "key",
            "value",
            "create_revision",
            "mod_revision",
            "version",
            "lease"
        ]
    );

    // The history export: one row per change, in revision order.
    let history = cluster.root.path().join("history-export");
    let (code, out, err) = ferry(&[
        "history",
        "export",
        history.to_str().unwrap(),
        "--json",
        "--endpoints",
        &endpoints,
    ]);
    assert_eq!(code, 0, "{out}{err}");
    let rows = duckdb::query(&format!(
        "select revision, op, decode(key), decode(value), prev_revision, epoch_ms(time) \
         from read_parquet('{}') order by revision",
        files(&history)
    ));
    assert_eq!(rows.len(), changes.len(), "{rows:?}");
    for (row, (revision, op, key, value, prev)) in rows.iter().zip(&changes) {
        assert_eq!(row[0], revision.to_string());
        assert_eq!((&row[1], &row[2]), (&op.to_string(), key));
        assert_eq!(row[3], value.clone().unwrap_or_else(|| "NULL".into()));
        assert_eq!(row[4], prev.to_string());
        let time: u64 = row[5].parse().unwrap();
        assert!((started_ms..=ended_ms).contains(&time), "time {time}");
    }
    let revisions: Vec<u64> = rows.iter().map(|r| r[0].parse().unwrap()).collect();
    assert!(
        revisions.windows(2).all(|w| w[0] < w[1]),
        "in revision order"
    );

    // The state export becomes a new cluster with the same user state.
    let data = cluster.root.path().join("restored");
    cluster.nodes.push(common::Proc {
        id: 9,
        client: common::free_addr(),
        raft: common::free_addr(),
        metrics: common::free_addr(),
        dir: data.clone(),
        child: None,
    });
    let (code, out, err) = ferry(&[
        "snapshot",
        "restore",
        "--from-parquet",
        export.to_str().unwrap(),
        "--data-dir",
        data.to_str().unwrap(),
        "--id",
        "9",
        "--raft-addr",
        &cluster.raft_addr(9),
        "--client-addr",
        &cluster.client_addr(9),
    ]);
    assert_eq!(code, 0, "{out}{err}");
    cluster.spawn(9, false, &[]);
    let restored = connect(vec![cluster.client_addr(9)]).await;
    let (key, (value, ..)) = state.iter().next().unwrap();
    assert_eq!(
        restored.get(key.clone()).await.unwrap().unwrap().value,
        value.as_bytes()
    );
    let again = cluster.root.path().join("export-of-the-restored");
    let (code, out, err) = ferry(&[
        "snapshot",
        "export-parquet",
        again.to_str().unwrap(),
        "--json",
        "--endpoints",
        &cluster.client_addr(9),
    ]);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(json(&out)["checksum"], summary["checksum"]);
    assert_eq!(json(&out)["rows"], summary["rows"]);
}
