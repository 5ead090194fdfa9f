//! `ferry kv`: read and write keys.

use super::output::{kv_json, print_table, split_pair, text};
use super::{connect, exit, fail, Common};
use clap::Subcommand;
use ferry_client::{pb, Txn};
use serde_json::json;

#[derive(Debug, Subcommand)]
pub enum KvCommand {
    /// Print a key's value.
    Get {
        key: String,
        /// Read from any member without a quorum round.
        #[arg(long)]
        stale: bool,
    },
    /// Set a key.
    Put {
        key: String,
        value: String,
        /// Attach the key to this lease (`ferry lease grant`): it is
        /// deleted when the lease expires or is revoked.
        #[arg(long, default_value_t = 0)]
        lease: u64,
        /// LOCK_KEY:TOKEN: write only while that lock is held with that
        /// fencing token (`ferry lock` passes both to its command as
        /// FERRY_LOCK_KEY and FERRY_LOCK_TOKEN); otherwise write nothing and
        /// exit 1.
        #[arg(long)]
        fence: Option<String>,
    },
    /// Delete a key.
    Del { key: String },
    /// Compact the revision history below REV, cluster-wide: reads and
    /// watches below it fail from then on, and its space is reclaimed.
    Compact { revision: u64 },
    /// List keys (by prefix or range), following pages.
    Scan {
        #[arg(long, default_value = "")]
        prefix: String,
        #[arg(long)]
        start: Option<String>,
        #[arg(long)]
        end: Option<String>,
        /// At most this many keys in all.
        #[arg(long, default_value_t = 1000)]
        limit: u64,
        #[arg(long)]
        keys_only: bool,
        /// Only count the keys.
        #[arg(long)]
        count: bool,
    },
    /// A transaction: compares, then puts/deletes/gets on success or failure.
    Txn {
        /// KEY=VALUE: holds if KEY's value is VALUE.
        #[arg(long = "if-value")]
        if_value: Vec<String>,
        /// KEY: holds if KEY is absent.
        #[arg(long = "if-absent")]
        if_absent: Vec<String>,
        /// KEY=VALUE to put when the compares hold.
        #[arg(long = "then-put")]
        then_put: Vec<String>,
        #[arg(long = "then-del")]
        then_del: Vec<String>,
        #[arg(long = "then-get")]
        then_get: Vec<String>,
        #[arg(long = "else-put")]
        else_put: Vec<String>,
        #[arg(long = "else-get")]
        else_get: Vec<String>,
    },
}

pub async fn kv(common: &Common, command: KvCommand) -> i32 {
    match kv_inner(common, command).await {
        Ok(code) | Err(code) => code,
    }
}

async fn kv_inner(common: &Common, command: KvCommand) -> Result<i32, i32> {
    let client = connect(common).await?;
    match command {
        KvCommand::Get { key, stale } => {
            let found = if stale {
                client
                    .stale()
                    .get(key.clone())
                    .await
                    .map_err(|e| fail(&e))?
                    .value
            } else {
                client.get(key.clone()).await.map_err(|e| fail(&e))?
            };
            match found {
                Some(kv) if common.json => println!("{}", kv_json(&kv)),
                Some(kv) => println!("{}", text(&kv.value)),
                None => {
                    if common.json {
                        println!("null");
                    } else {
                        eprintln!("{key}: not found");
                    }
                    return Ok(exit::NOT_FOUND);
                }
            }
        }
        KvCommand::Put {
            key,
            value,
            lease,
            fence: Some(fence),
        } => {
            let Some((lock_key, token)) = fence
                .rsplit_once(':')
                .and_then(|(k, t)| Some((k.to_owned(), t.parse::<u64>().ok()?)))
            else {
                eprintln!("error: --fence takes LOCK_KEY:TOKEN");
                return Err(exit::USAGE);
            };
            let result = client
                .txn(
                    ferry_client::Txn::new()
                        .when_create_revision(lock_key.clone(), token)
                        .then_put_with_lease(key, value, lease),
                )
                .await
                .map_err(|e| fail(&e))?;
            if !result.succeeded {
                eprintln!("error: lock {lock_key} is no longer held with token {token}; nothing was written");
                return Err(exit::FAILED);
            }
            if common.json {
                println!("{}", json!({ "revision": result.revision }));
            } else {
                println!("OK revision {}", result.revision);
            }
        }
        KvCommand::Put {
            key, value, lease, ..
        } => {
            let revision = if lease == 0 {
                client.put(key, value).await
            } else {
                client.put_with_lease(key, value, lease).await
            }
            .map_err(|e| fail(&e))?;
            if common.json {
                println!("{}", json!({ "revision": revision }));
            } else {
                println!("OK revision {revision}");
            }
        }
        KvCommand::Del { key } => {
            let deleted = client.delete(key).await.map_err(|e| fail(&e))?;
            if common.json {
                println!("{}", json!({ "deleted": deleted }));
            } else {
                println!("{}", if deleted { "deleted" } else { "not found" });
            }
        }
        KvCommand::Compact { revision } => {
            let compacted = client.compact(revision).await.map_err(|e| fail(&e))?;
            if common.json {
                println!("{}", json!({ "compacted": compacted }));
            } else {
                println!("compacted: history below revision {compacted} is gone");
            }
        }
        KvCommand::Scan {
            prefix,
            start,
            end,
            limit,
            keys_only,
            count,
        } => {
            let mut request = pb::RangeRequest {
                prefix: prefix.into_bytes(),
                start: start.unwrap_or_default().into_bytes(),
                end: end.unwrap_or_default().into_bytes(),
                keys_only,
                count_only: count,
                limit: limit.min(1000) as u32,
                ..Default::default()
            };
            if count {
                let page = client.range_request(request).await.map_err(|e| fail(&e))?;
                if common.json {
                    println!(
                        "{}",
                        json!({ "count": page.count, "revision": page.revision })
                    );
                } else {
                    println!("{}", page.count);
                }
                return Ok(exit::OK);
            }
            let mut kvs = Vec::new();
            loop {
                let page = client
                    .range_request(request.clone())
                    .await
                    .map_err(|e| fail(&e))?;
                kvs.extend(page.kvs);
                match page.continuation {
                    Some(token) if (kvs.len() as u64) < limit => request.continuation = token,
                    _ => break,
                }
            }
            kvs.truncate(limit as usize);
            if common.json {
                println!(
                    "{}",
                    serde_json::Value::Array(kvs.iter().map(kv_json).collect())
                );
            } else {
                let rows: Vec<Vec<String>> = kvs
                    .iter()
                    .map(|kv| {
                        vec![
                            text(&kv.key),
                            if keys_only {
                                String::new()
                            } else {
                                text(&kv.value)
                            },
                            kv.mod_revision.to_string(),
                            kv.version.to_string(),
                        ]
                    })
                    .collect();
                print_table(&["KEY", "VALUE", "MOD_REVISION", "VERSION"], &rows);
            }
        }
        KvCommand::Txn {
            if_value,
            if_absent,
            then_put,
            then_del,
            then_get,
            else_put,
            else_get,
        } => {
            let mut txn = Txn::new();
            for pair in if_value {
                let (k, v) = split_pair(&pair)?;
                txn = txn.when_value(k, v);
            }
            for key in if_absent {
                txn = txn.when_absent(key);
            }
            for pair in then_put {
                let (k, v) = split_pair(&pair)?;
                txn = txn.then_put(k, v);
            }
            for key in then_del {
                txn = txn.then_delete(key);
            }
            for key in then_get {
                txn = txn.then_get(key);
            }
            for pair in else_put {
                let (k, v) = split_pair(&pair)?;
                txn = txn.else_put(k, v);
            }
            for key in else_get {
                txn = txn.else_get(key);
            }
            let result = client.txn(txn).await.map_err(|e| fail(&e))?;
            if common.json {
                let gets: Vec<_> = result
                    .gets
                    .iter()
                    .map(|g| g.as_ref().map(kv_json))
                    .collect();
                println!(
                    "{}",
                    json!({ "succeeded": result.succeeded, "revision": result.revision, "gets": gets })
                );
            } else {
                println!(
                    "{} revision {}",
                    if result.succeeded {
                        "SUCCEEDED"
                    } else {
                        "FAILED"
                    },
                    result.revision
                );
                for kv in result.gets.iter().flatten() {
                    println!("{} = {}", text(&kv.key), text(&kv.value));
                }
            }
        }
    }
    Ok(exit::OK)
}
