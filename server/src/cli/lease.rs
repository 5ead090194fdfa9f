//! `ferry lease`: grant, revoke, inspect and keep alive leases (etcdctl's
//! `lease` commands). Attach keys with `ferry kv put --lease ID`.

use super::{connect, exit, fail, Common};
use clap::Subcommand;
use serde_json::json;
use std::time::Duration;

#[derive(Debug, Subcommand)]
pub enum LeaseCommand {
    /// Grant a lease of TTL seconds; prints its id.
    Grant { ttl_secs: u64 },
    /// Revoke a lease: its keys are deleted.
    Revoke { id: u64 },
    /// A lease's granted and remaining TTL (and, with --keys, its keys).
    #[command(alias = "ttl")]
    Timetolive {
        id: u64,
        #[arg(long)]
        keys: bool,
    },
    /// Every lease.
    List,
    /// Keep a lease alive until Ctrl-C (or until it is gone).
    KeepAlive { id: u64 },
}

pub async fn lease(common: &Common, command: LeaseCommand) -> i32 {
    match run(common, command).await {
        Ok(code) | Err(code) => code,
    }
}

async fn run(common: &Common, command: LeaseCommand) -> Result<i32, i32> {
    let client = connect(common).await?;
    match command {
        LeaseCommand::Grant { ttl_secs } => {
            let id = client
                .lease_grant(Duration::from_secs(ttl_secs))
                .await
                .map_err(|e| fail(&e))?;
            if common.json {
                println!("{}", json!({ "id": id, "ttl_secs": ttl_secs }));
            } else {
                println!("lease {id:016x} granted with TTL({ttl_secs}s)  (id {id})");
            }
        }
        LeaseCommand::Revoke { id } => {
            let revision = client.lease_revoke(id).await.map_err(|e| fail(&e))?;
            if common.json {
                println!("{}", json!({ "revision": revision }));
            } else {
                println!("lease {id} revoked at revision {revision}");
            }
        }
        LeaseCommand::Timetolive { id, keys } => {
            let info = client
                .lease_time_to_live(id, keys)
                .await
                .map_err(|e| fail(&e))?;
            let names: Vec<String> = info
                .keys
                .iter()
                .map(|k| String::from_utf8_lossy(k).into_owned())
                .collect();
            if common.json {
                println!(
                    "{}",
                    json!({
                        "id": id, "granted_ttl_secs": info.ttl.as_secs(),
                        "remaining_ms": info.remaining.as_millis() as u64,
                        "keys": names, "keys_truncated": info.keys_truncated,
                    })
                );
            } else {
                println!(
                    "lease {id} granted with TTL({}s), remaining({}s)",
                    info.ttl.as_secs(),
                    info.remaining.as_secs()
                );
                if keys {
                    println!("attached keys: {names:?}");
                }
            }
        }
        LeaseCommand::List => {
            let leases = client.leases().await.map_err(|e| fail(&e))?;
            if common.json {
                let leases: Vec<_> = leases
                    .iter()
                    .map(|(id, ttl)| json!({ "id": id, "ttl_secs": ttl.as_secs() }))
                    .collect();
                println!("{}", json!({ "leases": leases }));
            } else {
                println!("found {} leases", leases.len());
                for (id, ttl) in leases {
                    println!("{id}  TTL({}s)", ttl.as_secs());
                }
            }
        }
        LeaseCommand::KeepAlive { id } => {
            let ttl = client.lease_renew(id).await.map_err(|e| fail(&e))?;
            println!("lease {id} keepalived with TTL({})", ttl.as_secs());
            let mut keep = client.lease_keep_alive(id, ttl);
            tokio::select! {
                () = keep.lost() => {
                    eprintln!("lease {id} expired or revoked");
                    return Ok(exit::NOT_FOUND);
                }
                _ = tokio::signal::ctrl_c() => {}
            }
        }
    }
    Ok(exit::OK)
}
