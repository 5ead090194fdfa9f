//! `ferry queue`: push, claim, complete and list a work queue's items.

use super::{connect, exit, fail, Common};
use clap::Subcommand;
use serde_json::json;
use std::time::Duration;

#[derive(Debug, Subcommand)]
pub enum QueueCommand {
    /// Add an item at the end of QUEUE; prints its number.
    Push { queue: String, value: String },
    /// Wait for the oldest unclaimed item and claim it under a new lease of
    /// TTL seconds. With a COMMAND (after `--`), run it with the item in
    /// FERRY_QUEUE_ITEM, keeping the claim alive, and complete the item if
    /// it exits 0; without one, print the claim (number, token, lease) for
    /// `ferry queue complete`.
    Claim {
        queue: String,
        #[arg(long, default_value_t = 30)]
        ttl: u64,
        #[arg(last = true)]
        command: Vec<String>,
    },
    /// Complete item NUMBER, claimed with TOKEN.
    Complete {
        queue: String,
        number: u64,
        token: u64,
    },
    /// The first items and whether each is claimed.
    List {
        queue: String,
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
}

pub async fn queue(common: &Common, command: QueueCommand) -> i32 {
    match run(common, command).await {
        Ok(code) | Err(code) => code,
    }
}

async fn run(common: &Common, command: QueueCommand) -> Result<i32, i32> {
    let client = connect(common).await?;
    match command {
        QueueCommand::Push { queue, value } => {
            let number = client
                .queue_push(&queue, value)
                .await
                .map_err(|e| fail(&e))?;
            if common.json {
                println!("{}", json!({ "number": number }));
            } else {
                println!("pushed item {number}");
            }
        }
        QueueCommand::Claim {
            queue,
            ttl,
            command,
        } => {
            let ttl = Duration::from_secs(ttl);
            let lease = client.lease_grant(ttl).await.map_err(|e| fail(&e))?;
            let mut alive = (!command.is_empty()).then(|| client.lease_keep_alive(lease, ttl));
            let claim = client
                .queue_claim(&queue, lease)
                .await
                .map_err(|e| fail(&e))?;
            let value = String::from_utf8_lossy(&claim.value).into_owned();
            if common.json {
                println!(
                    "{}",
                    json!({ "number": claim.number, "value": value, "token": claim.token, "lease": lease })
                );
            } else {
                println!(
                    "claimed item {} token {} lease {lease}: {value}",
                    claim.number, claim.token
                );
            }
            let Some((program, rest)) = command.split_first() else {
                return Ok(exit::OK);
            };
            let env = [
                ("FERRY_QUEUE_ITEM", value.clone()),
                ("FERRY_QUEUE_NUMBER", claim.number.to_string()),
            ];
            let keep = alive.as_mut().expect("kept alive with a command");
            let code =
                super::lock::run_while_leased(program, rest, &env, keep, "the claim's").await?;
            if code == exit::OK {
                client.queue_complete(&claim).await.map_err(|e| fail(&e))?;
            }
            drop(alive);
            let _ = client.lease_revoke(lease).await;
            return Ok(code);
        }
        QueueCommand::Complete {
            queue,
            number,
            token,
        } => {
            let claim = ferry_client::Claim {
                queue: queue.into_bytes(),
                number,
                value: Vec::new(),
                token,
            };
            client.queue_complete(&claim).await.map_err(|e| fail(&e))?;
            println!("completed item {number}");
        }
        QueueCommand::List { queue, limit } => {
            let items = client
                .queue_items(&queue, limit)
                .await
                .map_err(|e| fail(&e))?;
            if common.json {
                let items: Vec<_> = items
                    .iter()
                    .map(|i| json!({ "number": i.number, "value": String::from_utf8_lossy(&i.value), "claimed": i.claimed }))
                    .collect();
                println!("{}", json!({ "items": items }));
            } else {
                for item in items {
                    println!(
                        "{:>8}  {}  {}",
                        item.number,
                        if item.claimed { "claimed" } else { "-      " },
                        String::from_utf8_lossy(&item.value)
                    );
                }
            }
        }
    }
    Ok(exit::OK)
}
