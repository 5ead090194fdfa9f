//! Clusters of real `ferry serve` processes on loopback.

#![allow(dead_code)]

pub mod browser;
pub mod fake;
pub mod secure;

use ferry_client::{Client, ClientOptions};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tempfile::TempDir;

pub const FERRY: &str = env!("CARGO_BIN_EXE_ferry");

/// A loopback address with a free port, chosen at random below the
/// kernel's ephemeral range (`ip_local_port_range` starts at 32768): a port
/// the kernel handed out for `:0` and was released again can be taken by
/// any outgoing connection before the node binds it, and then the node
/// cannot start (a cluster without its initializing node never elects).
/// Ports handed out by this process are never handed out twice.
pub fn free_addr() -> String {
    use rand::Rng;
    static TAKEN: std::sync::Mutex<std::collections::BTreeSet<u16>> =
        std::sync::Mutex::new(std::collections::BTreeSet::new());
    let mut rng = rand::rng();
    loop {
        let port: u16 = rng.random_range(20_000..32_000);
        if !TAKEN.lock().unwrap().insert(port) {
            continue;
        }
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return format!("127.0.0.1:{port}");
        }
    }
}

pub struct Proc {
    pub id: u64,
    pub client: String,
    pub raft: String,
    pub metrics: String,
    pub dir: PathBuf,
    pub child: Option<Child>,
}

pub struct ProcessCluster {
    pub root: TempDir,
    pub nodes: Vec<Proc>,
    /// Extra `ferry serve` flags every node gets.
    pub extra_args: Vec<String>,
    /// Environment variables every node gets.
    pub env: Vec<(String, String)>,
}

impl ProcessCluster {
    fn node(&self, id: u64) -> &Proc {
        self.nodes.iter().find(|n| n.id == id).unwrap()
    }

    pub fn new_node(&mut self, id: u64) {
        self.nodes.push(Proc {
            id,
            client: free_addr(),
            raft: free_addr(),
            metrics: free_addr(),
            dir: self.root.path().join(format!("node-{id}")),
            child: None,
        });
    }

    /// Starts node `id` (`init` with the given peers, else `--join`).
    pub fn spawn(&mut self, id: u64, init: bool, peers: &[u64]) {
        let extra = self.extra_args.clone();
        self.spawn_with(id, init, peers, &extra);
    }

    /// [`Self::spawn`] with `args` instead of the cluster's extra flags.
    pub fn spawn_with(&mut self, id: u64, init: bool, peers: &[u64], args: &[String]) {
        let peer_args: Vec<String> = peers
            .iter()
            .map(|p| {
                let n = self.node(*p);
                format!("{}={}@{}", n.id, n.raft, n.client)
            })
            .collect();
        let root = self.root.path().to_path_buf();
        let node = self.nodes.iter_mut().find(|n| n.id == id).unwrap();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(root.join(format!("node-{id}.log")))
            .unwrap();
        let mut command = Command::new(FERRY);
        command
            .arg("serve")
            .args(["--id", &id.to_string()])
            .arg("--data-dir")
            .arg(&node.dir)
            .args(["--client-addr", &node.client])
            .args(["--raft-addr", &node.raft])
            .args(["--metrics-addr", &node.metrics])
            .args(["--heartbeat-ms", "50"])
            .args(["--election-timeout-min-ms", "300"])
            .args(["--election-timeout-max-ms", "600"])
            .args(["--learner-max-lag-ms", "1000"])
            .args(args)
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log));
        if init {
            command.arg("--init");
            for peer in &peer_args {
                command.args(["--peer", peer]);
            }
        } else {
            command.arg("--join");
        }
        node.child = Some(command.spawn().unwrap());
    }

    /// `n` nodes forming one cluster (node 1 initializes it).
    pub fn start(n: u64) -> ProcessCluster {
        Self::start_with(n, |_| Vec::new())
    }

    /// As [`Self::start`], every node also getting `extra(root)` as flags.
    pub fn start_with(
        n: u64,
        extra: impl FnOnce(&std::path::Path) -> Vec<String>,
    ) -> ProcessCluster {
        Self::start_configured(n, extra, Vec::new())
    }

    /// As [`Self::start_with`], every node also getting `env`.
    pub fn start_configured(
        n: u64,
        extra: impl FnOnce(&std::path::Path) -> Vec<String>,
        env: Vec<(String, String)>,
    ) -> ProcessCluster {
        let root = tempfile::tempdir().unwrap();
        let extra_args = extra(root.path());
        let mut cluster = ProcessCluster {
            root,
            nodes: Vec::new(),
            extra_args,
            env,
        };
        for id in 1..=n {
            cluster.new_node(id);
        }
        let others: Vec<u64> = (2..=n).collect();
        cluster.spawn(1, true, &others);
        for id in 2..=n {
            cluster.spawn(id, false, &[]);
        }
        cluster
    }

    pub fn endpoints(&self) -> Vec<String> {
        self.nodes.iter().map(|n| n.client.clone()).collect()
    }

    pub fn sigkill(&mut self, id: u64) {
        let node = self.nodes.iter_mut().find(|n| n.id == id).unwrap();
        if let Some(mut child) = node.child.take() {
            child.kill().unwrap();
            child.wait().unwrap();
        }
    }

    /// SIGTERM; returns the exit code.
    pub fn sigterm(&mut self, id: u64) -> Option<i32> {
        let node = self.nodes.iter_mut().find(|n| n.id == id).unwrap();
        let mut child = node.child.take()?;
        // SAFETY: signalling our own child by the pid std holds for it.
        unsafe {
            libc::kill(child.id() as i32, libc::SIGTERM);
        }
        // A graceful stop is bounded at about 20 s of steps (hand-over,
        // requests in flight, Raft, a last backup round); on a machine whose
        // CPUs are taken by other work it may take longer.
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status.code();
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends `signal` (SIGSTOP, SIGCONT…) to node `id`'s process.
    pub fn signal(&self, id: u64, signal: i32) {
        let pid = self.node(id).child.as_ref().expect("running").id();
        // SAFETY: signalling our own child by the pid std holds for it.
        unsafe {
            libc::kill(pid as i32, signal);
        }
    }

    pub fn log(&self, id: u64) -> String {
        std::fs::read_to_string(self.root.path().join(format!("node-{id}.log"))).unwrap_or_default()
    }

    pub fn client_addr(&self, id: u64) -> String {
        self.node(id).client.clone()
    }

    pub fn raft_addr(&self, id: u64) -> String {
        self.node(id).raft.clone()
    }

    pub fn metrics_addr(&self, id: u64) -> String {
        self.node(id).metrics.clone()
    }
}

impl Drop for ProcessCluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            if let Some(mut child) = node.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

pub fn options() -> ClientOptions {
    ClientOptions {
        call_timeout: Duration::from_secs(20),
        ..ClientOptions::default()
    }
}

/// A plaintext gRPC channel to `addr`, for raw calls the SDK does not make.
#[allow(dead_code)]
pub async fn channel(addr: &str) -> tonic::transport::Channel {
    tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap()
}

/// Connects once a leader is known.
pub async fn connect(endpoints: Vec<String>) -> Client {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(client) = Client::connect_with(endpoints.clone(), options()).await {
            if client.leader().is_some() {
                return client;
            }
        }
        assert!(Instant::now() < deadline, "no leader in 30 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Runs the `ferry` tool; returns exit code and stdout.
pub fn ferry(args: &[&str]) -> (i32, String, String) {
    let output = Command::new(FERRY).args(args).output().unwrap();
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// A stale read served by the member at `addr` itself (the SDK's stale
/// reads may go to any member). A member just restarted may not listen
/// yet: connection errors are retried for up to 30 s.
pub async fn stale_range_at(
    client: &Client,
    addr: &str,
    request: ferry_client::pb::RangeRequest,
) -> ferry_client::pb::RangeResponse {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let attempt = async {
            // The client's TLS and token, to that member alone.
            let channel = client
                .member_channel(addr)
                .await
                .map_err(|e| e.to_string())?;
            ferry_client::pb::kv_client::KvClient::new(channel)
                .range(ferry_client::pb::RangeRequest {
                    consistency: ferry_client::pb::Consistency::Stale as i32,
                    ..request.clone()
                })
                .await
                .map(tonic::Response::into_inner)
                .map_err(|e| e.to_string())
        };
        match attempt.await {
            Ok(response) => return response,
            Err(error) => {
                assert!(Instant::now() < deadline, "{addr}: {error}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Every key under `prefix` on the member at `addr`, and the applied index
/// it was read at.
pub async fn stale_prefix_at(
    client: &Client,
    addr: &str,
    prefix: &[u8],
) -> (Vec<ferry_client::pb::KeyValue>, u64) {
    let mut kvs = Vec::new();
    let mut continuation = Vec::new();
    loop {
        let page = stale_range_at(
            client,
            addr,
            ferry_client::pb::RangeRequest {
                prefix: prefix.to_vec(),
                continuation,
                ..Default::default()
            },
        )
        .await;
        kvs.extend(page.kvs);
        let applied = page.staleness.map_or(0, |s| s.applied_index);
        if page.continuation.is_empty() {
            return (kvs, applied);
        }
        continuation = page.continuation;
    }
}

/// A plain HTTP/1.1 GET; returns the whole response.
pub async fn http_get(addr: &str, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(
            format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    response
}

/// A single-node server in `dir` (metrics on a free port), leading, and an
/// SDK connected to it.
pub async fn single_node(
    dir: &std::path::Path,
    limits: ferry_server::config::Limits,
) -> (ferry_server::server::Server, Client) {
    let server = ferry_server::server::Server::start(ferry_server::config::ServeConfig {
        data_dir: dir.join("node"),
        client_addr: "127.0.0.1:0".into(),
        raft_addr: "127.0.0.1:0".into(),
        metrics_addr: "127.0.0.1:0".into(),
        init: true,
        limits,
        ..ferry_server::config::ServeConfig::default()
    })
    .await
    .unwrap();
    let client = connect(vec![server.client_addr.to_string()]).await;
    client.put("ready", "1").await.unwrap();
    (server, client)
}

/// The value of the Prometheus sample `name{labels}` (e.g.
/// `ferry_open_streams{kind="watch"}`) at the metrics endpoint `addr`, 0
/// if it is absent.
pub async fn metric(addr: &str, sample: &str) -> f64 {
    let text = http_get(addr, "/metrics").await;
    text.lines()
        .find_map(|line| line.strip_prefix(sample)?.trim().parse().ok())
        .unwrap_or(0.0)
}
