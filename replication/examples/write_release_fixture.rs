//! Writes this release's fixture for `tests/release_fixture.rs`: a node's
//! data directory and a backup chain holding `release_script::script()`.
//! Run once per change of a format, naming the output after the change (or
//! the release), then commit it and add it to the test:
//!
//! ```sh
//! cargo run -p ferry-replication --example write_release_fixture -- tests/fixtures/NAME
//! ```
//!
//! (The test reads the fixture of each earlier release; it never rewrites one.)

#[path = "../tests/common/release_script.rs"]
mod release_script;

use ferry_replication::backup::{BackupOptions, BackupShipper, LocalDir};
use ferry_replication::types::FerryNode;
use ferry_replication::{Consistency, Node, NodeConfig};
use release_script::{copy_tree, render, script, State, BEFORE_CHECKPOINT};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

async fn user_state(node: &Node) -> State {
    node.range(&[], None, usize::MAX, Consistency::Stale)
        .await
        .expect("read")
        .value
        .into_iter()
        .map(|kv| (kv.key, kv.value))
        .collect()
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out = PathBuf::from(
        std::env::args()
            .nth(1)
            .ok_or("usage: write_release_fixture OUT_DIR")?,
    );
    if out.exists() {
        return Err(format!(
            "{} exists; a release's fixture is written once",
            out.display()
        )
        .into());
    }
    std::fs::create_dir_all(&out)?;
    let scratch = tempfile::tempdir()?;
    let data = scratch.path().join("node");
    let node = Arc::new(Node::open(NodeConfig::new(1, &data, "127.0.0.1:0".parse()?)).await?);
    node.initialize(BTreeMap::from([(
        1,
        FerryNode::from(node.raft_addr().to_owned()),
    )]))
    .await?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while !node.is_leader() {
        if Instant::now() > deadline {
            return Err("the node did not lead".into());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let shipper = BackupShipper::new(
        node.clone(),
        Arc::new(LocalDir::new(out.join("backup"))?),
        BackupOptions {
            max_chunk_entries: 16,
            ..BackupOptions::default()
        },
    );
    let commands = script();
    let (first, rest) = commands.split_at(BEFORE_CHECKPOINT);
    for command in first {
        // Some are refused on purpose (a stale request id); the log keeps them.
        let _ = node.txn(command.clone()).await;
    }
    shipper.ship(true).await?;
    let checkpoint = node.metrics().last_applied.map_or(0, |l| l.index);
    std::fs::write(
        out.join("STATE-AT-CHECKPOINT"),
        render(&user_state(&node).await),
    )?;
    std::fs::write(out.join("CHECKPOINT-INDEX"), checkpoint.to_string())?;
    node.snapshot().await?;
    for command in rest {
        let _ = node.txn(command.clone()).await;
    }
    shipper.ship(false).await?;
    std::fs::write(out.join("STATE"), render(&user_state(&node).await))?;
    node.shutdown().await?;
    drop(shipper);
    drop(node);
    copy_tree(&data, &out.join("node"));
    println!("wrote {}", out.display());
    Ok(())
}
