//! A worker pool on Ferry's work queue, fed by a scheduler that only one
//! process runs at a time (leader election), against a running cluster.
//!
//! ```sh
//! cargo run -p ferry-server -- serve &            # a single-node cluster on 127.0.0.1:7400
//! cargo run -p ferry-client --example worker -- 127.0.0.1:7400
//! ```
//!
//! Run it twice: both processes work the queue, one schedules; stop the
//! scheduling one and the other takes over within the lease's TTL. Each
//! item is completed once, even when a worker dies holding it: its claim
//! goes with its lease and another worker takes the item.

use ferry_client::{Client, Error};
use std::time::Duration;

const QUEUE: &str = "example/jobs";
const ELECTION: &str = "example/scheduler";
const TTL: Duration = Duration::from_secs(5);

/// Pushes a job every 200 ms while this process leads the election.
async fn scheduler(client: Client, me: String) -> Result<(), Error> {
    loop {
        let lease = client.lease_grant(TTL).await?;
        let mut alive = client.lease_keep_alive(lease, TTL);
        let leading = client.campaign(ELECTION, lease, me.clone()).await?;
        println!(
            "{me}: scheduling (leader key revision {})",
            leading.revision()
        );
        let mut n = 0u64;
        loop {
            tokio::select! {
                () = alive.lost() => {
                    println!("{me}: lost the leadership");
                    break;
                }
                () = tokio::time::sleep(Duration::from_millis(200)) => {
                    n += 1;
                    let number = client.queue_push(QUEUE, format!("job {n} from {me}")).await?;
                    println!("{me}: pushed item {number}");
                }
            }
        }
    }
}

/// Claims items, works on them, completes them.
async fn worker(client: Client, name: String) -> Result<(), Error> {
    let lease = client.lease_grant(TTL).await?;
    let _alive = client.lease_keep_alive(lease, TTL);
    loop {
        let claim = client.queue_claim(QUEUE, lease).await?;
        tokio::time::sleep(Duration::from_millis(50)).await; // the work
        match client.queue_complete(&claim).await {
            Ok(()) => println!(
                "{name}: completed item {} ({})",
                claim.number,
                String::from_utf8_lossy(&claim.value)
            ),
            // The lease lapsed while working: someone else has the item.
            Err(Error::NotHeld(_)) => println!("{name}: lost item {}", claim.number),
            Err(error) => return Err(error),
        }
    }
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    let endpoints: Vec<String> = std::env::args().skip(1).collect();
    let endpoints = if endpoints.is_empty() {
        vec!["127.0.0.1:7400".to_owned()]
    } else {
        endpoints
    };
    let client = Client::connect(endpoints).await?;
    let me = format!("process-{}", std::process::id());
    let mut tasks = tokio::task::JoinSet::new();
    tasks.spawn(scheduler(client.clone(), me.clone()));
    for w in 0..3 {
        tasks.spawn(worker(client.clone(), format!("{me}/worker-{w}")));
    }
    if let Some(result) = tasks.join_next().await {
        result.expect("task")?;
    }
    Ok(())
}
