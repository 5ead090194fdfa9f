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
    /// With TLS: the directory of `crate::secure`'s certificates.
    pki: Option<std::path::PathBuf>,
    /// Clients log in as root (auth is on).
    auth: bool,
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
        Self::start_with(etcd, root, None)
    }

    /// As [`Members::start`]; with `pki` (a directory of
    /// `crate::secure`'s certificates) TLS on the client port and mutual
    /// TLS between members, as a Ferry cluster `--tls-dir` would run.
    pub fn start_with(etcd: &str, root: &Path, pki: Option<&Path>) -> Option<Members> {
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
        let scheme = if pki.is_some() { "https" } else { "http" };
        let cluster = addrs
            .iter()
            .enumerate()
            .map(|(i, (_, peer))| format!("m{i}={scheme}://{peer}"))
            .collect::<Vec<_>>()
            .join(",");
        let mut members = Members {
            children: Vec::new(),
            endpoints: addrs
                .iter()
                .map(|(c, _)| format!("{scheme}://{c}"))
                .collect(),
            pki: pki.map(Path::to_owned),
            auth: false,
        };
        // No `--trusted-ca-file` on the client port: etcd would then
        // require client certificates, and its clients (like Ferry's here)
        // authenticate by password.
        let tls_flags: Vec<std::ffi::OsString> = match pki {
            Some(dir) => {
                let (cert, key, ca) = (
                    crate::secure::node_cert(dir),
                    crate::secure::node_key(dir),
                    crate::secure::ca(dir),
                );
                vec![
                    "--cert-file".into(),
                    cert.clone().into(),
                    "--key-file".into(),
                    key.clone().into(),
                    "--peer-cert-file".into(),
                    cert.into(),
                    "--peer-key-file".into(),
                    key.into(),
                    "--peer-trusted-ca-file".into(),
                    ca.into(),
                    "--peer-client-cert-auth".into(),
                ]
            }
            None => Vec::new(),
        };
        for (i, (client, peer)) in addrs.iter().enumerate() {
            let child = Command::new(etcd)
                .args(["--name", &format!("m{i}")])
                .arg("--data-dir")
                .arg(root.join(format!("m{i}")))
                .args(["--listen-client-urls", &format!("{scheme}://{client}")])
                .args(["--advertise-client-urls", &format!("{scheme}://{client}")])
                .args(["--listen-peer-urls", &format!("{scheme}://{peer}")])
                .args([
                    "--initial-advertise-peer-urls",
                    &format!("{scheme}://{peer}"),
                ])
                .args(&tls_flags)
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

    /// How clients connect: TLS against the CA, as root once auth is on.
    fn options(&self) -> etcd_client::ConnectOptions {
        let mut options = etcd_client::ConnectOptions::new();
        if let Some(dir) = &self.pki {
            let ca = std::fs::read(crate::secure::ca(dir)).expect("read CA");
            options = options.with_tls(
                etcd_client::TlsOptions::new()
                    .ca_certificate(etcd_client::Certificate::from_pem(ca)),
            );
        }
        if self.auth {
            options = options
                .with_user("root", crate::secure::ROOT_PASSWORD)
                .with_auto_token_refresh(true);
        }
        options
    }

    /// Creates `root` and turns auth on; later clients log in as root.
    pub async fn enable_auth(&mut self) {
        let mut client = self.clients(1).await.remove(0);
        client
            .user_add("root", crate::secure::ROOT_PASSWORD, None)
            .await
            .expect("etcd user add root");
        client
            .user_grant_role("root", "root")
            .await
            .expect("etcd grant root");
        client.auth_enable().await.expect("etcd auth enable");
        self.auth = true;
    }

    /// `count` clients, once the cluster takes writes.
    pub async fn clients(&self, count: usize) -> Vec<etcd_client::Client> {
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut clients = Vec::new();
        while clients.len() < count {
            match etcd_client::Client::connect(&self.endpoints, Some(self.options())).await {
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
