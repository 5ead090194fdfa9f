//! A tour of the SDK against a running cluster.
//!
//! ```sh
//! cargo run -p ferry-server -- serve &          # a single-node cluster on 127.0.0.1:7400
//! cargo run -p ferry-client --example quickstart -- 127.0.0.1:7400
//! ```

use ferry_client::{Client, Txn};
use futures_util::StreamExt;
use std::time::Duration;

#[tokio::main]
async fn main() -> Result<(), ferry_client::Error> {
    let endpoints: Vec<String> = std::env::args().skip(1).collect();
    let endpoints = if endpoints.is_empty() {
        vec!["127.0.0.1:7400".to_owned()]
    } else {
        endpoints
    };
    let client = Client::connect(endpoints).await?;
    println!("connected; leader at {:?}", client.leader());

    // Watch the jobs prefix from now on.
    let mut changes = client.watch_prefix("job/", 0);

    let revision = client.put("job/1", "queued").await?;
    println!("put job/1 at revision {revision}");
    let kv = client.get("job/1").await?.expect("just written");
    println!(
        "get job/1 = {:?} (version {})",
        String::from_utf8_lossy(&kv.value),
        kv.version
    );

    // Claim the job only if nobody else did: compare-and-swap as a transaction.
    let claim = client
        .txn(
            Txn::new()
                .when_value("job/1", "queued")
                .then_put("job/1", "running")
                .then_put("lease/1", "worker-a")
                .else_get("job/1"),
        )
        .await?;
    println!("claim succeeded: {}", claim.succeeded);

    let page = client.prefix("job/", 100).await?;
    println!("{} job(s) at revision {}", page.kvs.len(), page.revision);

    let stale = client.stale().get("job/1").await?;
    println!("stale read, staleness {:?}", stale.staleness);

    for _ in 0..3 {
        match tokio::time::timeout(Duration::from_secs(1), changes.next()).await {
            Ok(Some(Ok(event))) => {
                let kv = event.kv.unwrap_or_default();
                let kind = ferry_client::pb::event::Kind::try_from(event.kind)
                    .map_or("unknown", |k| k.as_str_name());
                println!(
                    "watch: {kind} {} = {:?} at revision {}",
                    String::from_utf8_lossy(&kv.key),
                    String::from_utf8_lossy(&kv.value),
                    kv.mod_revision
                );
            }
            _ => break,
        }
    }
    client.delete("job/1").await?;
    client.delete("lease/1").await?;
    Ok(())
}
