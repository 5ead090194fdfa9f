//! `ferry demo`: a local 3-node cluster that loses its leader under load.
//!
//! Starts three `ferry serve` child processes (temporary directories, free
//! loopback ports), writes from several SDK clients, SIGKILLs the leader,
//! measures how long until a write succeeds again, checks that every
//! acknowledged write is present exactly once, restarts the killed node and
//! waits for it to catch up. Then it keeps serving until Ctrl-C (or exits at
//! once with `--exit`).
//!
//! Secure by default: it makes a CA and certificates, runs the nodes with
//! TLS on the client port and mutual TLS between them, creates `root` with
//! a random password and turns auth on before any data is written; it
//! prints how to connect. `--insecure` runs without any of it.

use ferry_client::{Client, ClientOptions, Credentials, TlsOptions};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::process::{Child, Command};

#[derive(Debug, Clone, clap::Args)]
pub struct DemoArgs {
    /// Exit after the demonstration instead of serving until Ctrl-C.
    #[arg(long)]
    pub exit: bool,
    /// Concurrent writing clients.
    #[arg(long, default_value_t = 8)]
    pub writers: u64,
    /// Writes per client.
    #[arg(long, default_value_t = 300)]
    pub writes: u64,
    /// No TLS and no authentication (anyone who can reach the ports can
    /// do anything).
    #[arg(long)]
    pub insecure: bool,
}

/// Where the demo's certificates are, when it has them.
struct Security {
    certs: PathBuf,
}

impl Security {
    fn create(root: &Path) -> Result<Security, String> {
        let certs = root.join("certs");
        crate::certs::create_ca(&certs, false).map_err(|e| e.to_string())?;
        let ca = crate::certs::load_ca(&certs).map_err(|e| e.to_string())?;
        ca.create_node(
            &certs,
            &["127.0.0.1".into(), "localhost".into()],
            "node",
            false,
        )
        .map_err(|e| e.to_string())?;
        Ok(Security { certs })
    }

    fn flags(&self) -> Vec<std::ffi::OsString> {
        let file = |name: &str| self.certs.join(name).into_os_string();
        let mut flags = Vec::new();
        for (flag, name) in [
            ("--cert-file", crate::certs::NODE_CERT),
            ("--key-file", crate::certs::NODE_KEY),
            ("--peer-cert-file", crate::certs::NODE_CERT),
            ("--peer-key-file", crate::certs::NODE_KEY),
            ("--peer-trusted-ca-file", crate::certs::CA_CERT),
        ] {
            flags.push(flag.into());
            flags.push(file(name));
        }
        flags
    }

    fn tls(&self) -> Result<TlsOptions, String> {
        TlsOptions::from_files(&self.certs.join(crate::certs::CA_CERT), None)
            .map_err(|e| e.to_string())
    }
}

/// A random password for the demo's root user.
fn random_password() -> Result<String, String> {
    use ring::rand::SecureRandom;
    let mut bytes = [0u8; 12];
    ring::rand::SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| "no randomness for a password")?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// Creates `root` (role `root`) and turns auth on, through the leader.
async fn enable_auth(client: &Client, password: &str) -> Result<(), String> {
    use ferry_client::pb::{self, auth_client::AuthClient};
    let mut auth = AuthClient::new(client.leader_channel().await.map_err(|e| e.to_string())?);
    let text = |e: tonic::Status| e.message().to_owned();
    auth.user_add(pb::UserAddRequest {
        name: "root".into(),
        password: password.into(),
        no_password: false,
    })
    .await
    .map_err(text)?;
    auth.user_grant_role(pb::UserRoleRequest {
        user: "root".into(),
        role: "root".into(),
    })
    .await
    .map_err(text)?;
    auth.enable(pb::AuthEnableRequest {}).await.map_err(text)?;
    Ok(())
}

struct Member {
    id: u64,
    client: String,
    raft: String,
    dir: PathBuf,
    child: Option<Child>,
}

fn free_port() -> std::io::Result<String> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.to_string())
}

fn spawn(
    member: &Member,
    peers: &[String],
    init: bool,
    logs: &Path,
    security: Option<&Security>,
) -> std::io::Result<Child> {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(logs.join(format!("node-{}.log", member.id)))?;
    let mut command = Command::new(std::env::current_exe()?);
    command
        .arg("serve")
        .args(["--id", &member.id.to_string()])
        .arg("--data-dir")
        .arg(&member.dir)
        .args(["--client-addr", &member.client])
        .args(["--raft-addr", &member.raft])
        .args(["--metrics-addr", ""])
        .args(security.map(Security::flags).unwrap_or_default())
        .stdin(Stdio::null())
        .stdout(Stdio::from(log.try_clone()?))
        .stderr(Stdio::from(log))
        .kill_on_drop(true);
    if init {
        command.arg("--init");
        for peer in peers {
            command.args(["--peer", peer]);
        }
    } else {
        command.arg("--join");
    }
    command.spawn()
}

fn terminate(child: &mut Child) {
    if let Some(pid) = child.id() {
        // SAFETY: sending a signal to our own child process, identified by
        // the pid tokio holds for it; no memory is involved.
        unsafe {
            libc::kill(pid as i32, libc::SIGTERM);
        }
    }
}

/// Runs the demonstration; returns the process exit code.
pub async fn run(args: DemoArgs) -> Result<(), String> {
    let root = tempfile::Builder::new()
        .prefix("ferry-demo-")
        .tempdir()
        .map_err(|e| e.to_string())?;
    let logs = root.path().to_path_buf();
    let security = if args.insecure {
        None
    } else {
        Some(Security::create(root.path())?)
    };
    let mut members = Vec::new();
    for id in 1..=3 {
        members.push(Member {
            id,
            client: free_port().map_err(|e| e.to_string())?,
            raft: free_port().map_err(|e| e.to_string())?,
            dir: root.path().join(format!("node-{id}")),
            child: None,
        });
    }
    let peers: Vec<String> = members[1..]
        .iter()
        .map(|m| format!("{}={}@{}", m.id, m.raft, m.client))
        .collect();
    println!(
        "starting 3 nodes in {} (logs: node-N.log there)",
        root.path().display()
    );
    for (i, member) in members.iter_mut().enumerate() {
        member.child = Some(
            spawn(member, &peers, i == 0, &logs, security.as_ref()).map_err(|e| e.to_string())?,
        );
    }
    let endpoints: Vec<String> = members.iter().map(|m| m.client.clone()).collect();
    let mut options = ClientOptions {
        call_timeout: Duration::from_secs(15),
        ..ClientOptions::default()
    };
    let mut password = None;
    let client = match &security {
        None => connect(&endpoints, &options).await?,
        Some(security) => {
            options.tls = Some(security.tls()?);
            let client = connect(&endpoints, &options).await?;
            let secret = random_password()?;
            enable_auth(&client, &secret).await?;
            println!("TLS everywhere (mutual between nodes); auth on, user root");
            options.credentials = Some(Credentials {
                user: "root".into(),
                password: secret.clone(),
            });
            password = Some(secret);
            // From now on every call carries root's token.
            connect(&endpoints, &options).await?
        }
    };
    let status = client.status().await.map_err(|e| e.to_string())?;
    println!(
        "cluster formed: leader is node {} (term {})",
        status.leader_id, status.term
    );

    // The workload: unique keys from several clients.
    let done = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut writers = Vec::new();
    for w in 0..args.writers {
        let (client, done, writes) = (client.clone(), done.clone(), args.writes);
        writers.push(tokio::spawn(async move {
            let mut acked = Vec::new();
            for i in 0..writes {
                let key = format!("demo/{w:02}/{i:05}");
                match client
                    .put(key.clone(), format!("value {i} of writer {w}"))
                    .await
                {
                    Ok(revision) => acked.push((key, revision)),
                    Err(e) => return Err(format!("write {key} failed: {e}")),
                }
                done.fetch_add(1, Ordering::Relaxed);
            }
            Ok(acked)
        }));
    }
    let total = args.writers * args.writes;
    while done.load(Ordering::Relaxed) < total / 3 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }

    // Kill the leader.
    let leader_id = client.status().await.map_err(|e| e.to_string())?.leader_id;
    let leader = members
        .iter_mut()
        .find(|m| m.id == leader_id)
        .ok_or("the leader is not one of the demo's nodes")?;
    let killed_at = Instant::now();
    if let Some(child) = leader.child.as_mut() {
        child.start_kill().map_err(|e| e.to_string())?;
        let _ = child.wait().await;
    }
    println!(
        "SIGKILLed the leader, node {leader_id}, after {} of {total} writes",
        done.load(Ordering::Relaxed)
    );
    // Failover time: until a write succeeds again.
    let probe = loop {
        if client.put("demo/probe", "after failover").await.is_ok() {
            break killed_at.elapsed();
        }
        if killed_at.elapsed() > Duration::from_secs(30) {
            return Err("no write succeeded within 30 s of the kill".into());
        }
    };
    let new_leader = client.status().await.map_err(|e| e.to_string())?.leader_id;
    println!(
        "node {new_leader} took over: writes succeed again {:.0} ms after the kill",
        probe.as_secs_f64() * 1000.0
    );
    let mut acked = Vec::new();
    for writer in writers {
        acked.extend(writer.await.map_err(|e| e.to_string())??);
    }
    stop.store(true, Ordering::Relaxed);

    // Every acknowledged write, exactly once.
    let mut lost = 0;
    let mut duplicated = 0;
    for (key, revision) in &acked {
        match client.get(key.clone()).await.map_err(|e| e.to_string())? {
            None => lost += 1,
            Some(kv) if kv.version != 1 || kv.mod_revision != *revision => {
                eprintln!(
                    "{key}: acknowledged at revision {revision}, stored at {} with version {}",
                    kv.mod_revision, kv.version
                );
                duplicated += 1
            }
            Some(_) => {}
        }
    }
    println!(
        "{} writes acknowledged: {lost} lost, {duplicated} applied twice",
        acked.len()
    );

    // The killed node comes back and catches up.
    let member = members
        .iter_mut()
        .find(|m| m.id == leader_id)
        .expect("found above");
    member.child =
        Some(spawn(member, &peers, false, &logs, security.as_ref()).map_err(|e| e.to_string())?);
    // Ask that member itself (the SDK's stale reads may go to any member).
    let restarted_addr = member.client.clone();
    let (last_key, _) = acked.last().cloned().unwrap_or_default();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        // A new channel each time: its token is fetched from the member,
        // which refuses until it is up.
        let channel = client.member_channel(&restarted_addr).await;
        let Ok(channel) = channel else {
            if Instant::now() > deadline {
                return Err(format!("node {leader_id} did not come back within 30 s"));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let read = ferry_client::pb::kv_client::KvClient::new(channel)
            .get(ferry_client::pb::GetRequest {
                key: last_key.clone().into_bytes(),
                consistency: ferry_client::pb::Consistency::Stale as i32,
            })
            .await;
        if matches!(&read, Ok(r) if r.get_ref().kv.is_some()) {
            break;
        }
        if Instant::now() > deadline {
            return Err(format!("node {leader_id} did not catch up within 30 s"));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!("node {leader_id} restarted from its data directory and caught up");
    if lost > 0 || duplicated > 0 {
        shutdown(&mut members).await;
        return Err(format!("{lost} writes lost and {duplicated} applied twice"));
    }

    if !args.exit {
        let mut flags = format!("--endpoints {}", endpoints.join(","));
        if let (Some(security), Some(password)) = (&security, &password) {
            flags += &format!(
                " --cacert {} --user root:{password}",
                security.certs.join(crate::certs::CA_CERT).display()
            );
        }
        println!("\nthe cluster keeps serving; try:");
        println!("  ferry kv get demo/00/00000 {flags}");
        println!("  ferry cluster status {flags}");
        println!("press Ctrl-C to stop it");
        let _ = tokio::signal::ctrl_c().await;
    }
    shutdown(&mut members).await;
    Ok(())
}

async fn connect(endpoints: &[String], options: &ClientOptions) -> Result<Client, String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match Client::connect_with(endpoints.to_vec(), options.clone()).await {
            Ok(client) if client.leader().is_some() => return Ok(client),
            Ok(_) | Err(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await
            }
            Ok(_) => return Err("the cluster elected no leader in 30 s".into()),
            Err(e) => return Err(format!("cannot reach the cluster: {e}")),
        }
    }
}

async fn shutdown(members: &mut [Member]) {
    for member in members.iter_mut() {
        if let Some(child) = member.child.as_mut() {
            terminate(child);
        }
    }
    for member in members.iter_mut() {
        if let Some(mut child) = member.child.take() {
            if tokio::time::timeout(Duration::from_secs(10), child.wait())
                .await
                .is_err()
            {
                let _ = child.start_kill();
                let _ = child.wait().await;
            }
        }
    }
}
