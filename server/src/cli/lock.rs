//! `ferry lock` and `ferry elect`: a lock held while a command runs, and
//! leader elections, each under a lease this command keeps alive.

use super::{connect, exit, fail, Common};
use clap::Args;
use ferry_client::Client;
use serde_json::json;
use std::time::Duration;

#[derive(Debug, Args)]
pub struct LockArgs {
    /// The lock's name.
    pub name: String,
    /// Lease TTL in seconds: how long the lock outlives this process if it
    /// dies.
    #[arg(long, default_value_t = 10)]
    pub ttl: u64,
    /// Run this while holding the lock (after `--`), with the fencing token
    /// in FERRY_LOCK_TOKEN and the lock key in FERRY_LOCK_KEY; without it,
    /// hold the lock until Ctrl-C.
    #[arg(last = true)]
    pub command: Vec<String>,
}

#[derive(Debug, Args)]
pub struct ElectArgs {
    /// The election's name.
    pub name: String,
    /// What to announce while leading.
    pub value: Option<String>,
    /// Print each leader as it changes, instead of campaigning.
    #[arg(long)]
    pub observe: bool,
    /// Lease TTL in seconds.
    #[arg(long, default_value_t = 10)]
    pub ttl: u64,
}

/// Runs `program` with `args` and `env` while `alive`'s lease lasts;
/// returns its exit code, or FAILED once it had to be stopped because the
/// lease (and with it what `what` names) was lost: it must not go on
/// unprotected.
pub(super) async fn run_while_leased(
    program: &str,
    args: &[String],
    env: &[(&str, String)],
    alive: &mut ferry_client::KeepAlive,
    what: &str,
) -> Result<i32, i32> {
    let mut child = tokio::process::Command::new(program)
        .args(args)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| {
            eprintln!("error: cannot run {program}: {e}");
            exit::USAGE
        })?;
    Ok(tokio::select! {
        status = child.wait() => status.ok().and_then(|s| s.code()).unwrap_or(exit::FAILED),
        () = alive.lost() => {
            let _ = child.kill().await;
            eprintln!("error: {what} lease expired; the command was stopped");
            exit::FAILED
        }
    })
}

async fn leased(client: &Client, ttl: u64) -> Result<(u64, ferry_client::KeepAlive), i32> {
    let ttl = Duration::from_secs(ttl);
    let lease = client.lease_grant(ttl).await.map_err(|e| fail(&e))?;
    Ok((lease, client.lease_keep_alive(lease, ttl)))
}

pub async fn lock(common: &Common, args: LockArgs) -> i32 {
    match run_lock(common, args).await {
        Ok(code) | Err(code) => code,
    }
}

async fn run_lock(common: &Common, args: LockArgs) -> Result<i32, i32> {
    let client = connect(common).await?;
    let (lease, mut alive) = leased(&client, args.ttl).await?;
    let guard = client.lock(&args.name, lease).await.map_err(|e| fail(&e))?;
    let key = String::from_utf8_lossy(guard.key()).into_owned();
    if common.json {
        println!("{}", json!({ "key": key, "token": guard.token() }));
    } else {
        println!("{key} token {}", guard.token());
    }
    let code = match args.command.split_first() {
        None => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => exit::OK,
                () = alive.lost() => {
                    eprintln!("error: the lock's lease expired");
                    exit::FAILED
                }
            }
        }
        Some((program, rest)) => {
            let env = [
                ("FERRY_LOCK_TOKEN", guard.token().to_string()),
                ("FERRY_LOCK_KEY", key.clone()),
            ];
            run_while_leased(program, rest, &env, &mut alive, "the lock's").await?
        }
    };
    let code = match client.unlock(&guard).await {
        Err(ferry_client::Error::NotHeld(_)) => {
            eprintln!("error: the lock was lost (its lease expired) before the command ended");
            exit::FAILED
        }
        _ => code,
    };
    drop(alive);
    let _ = client.lease_revoke(lease).await;
    Ok(code)
}

pub async fn elect(common: &Common, args: ElectArgs) -> i32 {
    match run_elect(common, args).await {
        Ok(code) | Err(code) => code,
    }
}

fn show(common: &Common, leader: &Option<ferry_client::Leader>) {
    match leader {
        Some(leader) if common.json => println!(
            "{}",
            json!({
                "key": String::from_utf8_lossy(&leader.key),
                "value": String::from_utf8_lossy(&leader.value),
                "revision": leader.revision,
            })
        ),
        Some(leader) => println!(
            "{} {}",
            String::from_utf8_lossy(&leader.key),
            String::from_utf8_lossy(&leader.value)
        ),
        None if common.json => println!("null"),
        None => println!("(no leader)"),
    }
}

async fn run_elect(common: &Common, args: ElectArgs) -> Result<i32, i32> {
    let client = connect(common).await?;
    if args.observe {
        let mut changes = client.observe(&args.name);
        loop {
            tokio::select! {
                next = changes.next() => match next {
                    Some(Ok(leader)) => show(common, &leader),
                    Some(Err(error)) => return Err(fail(&error)),
                    None => return Ok(exit::FAILED),
                },
                _ = tokio::signal::ctrl_c() => return Ok(exit::OK),
            }
        }
    }
    let Some(value) = args.value else {
        eprintln!("error: a campaign needs a VALUE (or --observe)");
        return Err(exit::USAGE);
    };
    let (lease, mut alive) = leased(&client, args.ttl).await?;
    let leading = client
        .campaign(&args.name, lease, value.clone())
        .await
        .map_err(|e| fail(&e))?;
    show(
        common,
        &Some(ferry_client::Leader {
            key: leading.key().to_vec(),
            value: value.into_bytes(),
            revision: leading.revision(),
        }),
    );
    let code = tokio::select! {
        _ = tokio::signal::ctrl_c() => exit::OK,
        () = alive.lost() => {
            eprintln!("error: the leadership's lease expired");
            exit::FAILED
        }
    };
    let _ = client.resign(&leading).await;
    drop(alive);
    let _ = client.lease_revoke(lease).await;
    Ok(code)
}
