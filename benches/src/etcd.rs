//! A 3-member etcd cluster on loopback, for the suites that run etcd side
//! by side with Ferry (`--features etcd`, and an `etcd` binary: Debian's
//! `etcd-server`).

use crate::failover::free_addr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// etcd members; killed when dropped.
pub struct Members {
    children: Vec<Child>,
    endpoints: Vec<String>,
}

impl Drop for Members {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Members {
    /// Starts three members of `etcd` with data under `root`; `None` (and
    /// a line on stderr) if the binary is not there.
    pub fn start(etcd: &str, root: &Path) -> Option<Members> {
        let found = Command::new(etcd)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !found {
            eprintln!("etcd: skipped ({etcd} not found; Debian: apt install etcd-server)");
            return None;
        }
        let addrs: Vec<(String, String)> = (0..3).map(|_| (free_addr(), free_addr())).collect();
        let cluster = addrs
            .iter()
            .enumerate()
            .map(|(i, (_, peer))| format!("m{i}=http://{peer}"))
            .collect::<Vec<_>>()
            .join(",");
        let mut members = Members {
            children: Vec::new(),
            endpoints: addrs.iter().map(|(c, _)| format!("http://{c}")).collect(),
        };
        for (i, (client, peer)) in addrs.iter().enumerate() {
            let child = Command::new(etcd)
                .args(["--name", &format!("m{i}")])
                .arg("--data-dir")
                .arg(root.join(format!("m{i}")))
                .args(["--listen-client-urls", &format!("http://{client}")])
                .args(["--advertise-client-urls", &format!("http://{client}")])
                .args(["--listen-peer-urls", &format!("http://{peer}")])
                .args(["--initial-advertise-peer-urls", &format!("http://{peer}")])
                .args(["--initial-cluster", &cluster])
                .args([
                    "--initial-cluster-state",
                    "new",
                    "--initial-cluster-token",
                    "ferry-bench",
                ])
                .args(["--quota-backend-bytes", &(8u64 << 30).to_string()])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("spawn etcd");
            members.children.push(child);
        }
        Some(members)
    }

    /// The members' process ids.
    pub fn pids(&self) -> Vec<u32> {
        self.children.iter().map(|c| c.id()).collect()
    }

    /// `count` clients, once the cluster takes writes.
    pub async fn clients(&self, count: usize) -> Vec<etcd_client::Client> {
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut clients = Vec::new();
        while clients.len() < count {
            match etcd_client::Client::connect(&self.endpoints, None).await {
                Ok(mut client) => {
                    if client.put("ready", "1", None).await.is_ok() {
                        clients.push(client);
                        continue;
                    }
                }
                Err(error) => eprintln!("etcd: {error}"),
            }
            assert!(Instant::now() < deadline, "etcd cluster did not start");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        clients
    }
}
