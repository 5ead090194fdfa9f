//! A real S3-compatible server for tests: moto's (`moto_server`, from
//! PyPI), started on an ephemeral loopback port and stopped on drop. If
//! it is not installed, the set-up installs it with pip; if that fails,
//! the test fails (it never skips).

// Each test binary that includes this uses part of it.
#![allow(dead_code)]

use ferry_replication::backup::{BackupTarget, ObjectTarget, S3Options};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub struct MotoServer {
    child: Child,
    pub endpoint: String,
    port: u16,
}

pub const BUCKET: &str = "ferry-backups";

fn program() -> String {
    // Tests of one binary run in parallel: one of them installs.
    static INSTALL: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _installing = INSTALL.lock().unwrap_or_else(|e| e.into_inner());
    let found = Command::new("moto_server")
        .arg("--help")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        let installed = Command::new("python3")
            .args(["-m", "pip", "install", "--quiet", "moto[server]==5.2.1"])
            .status()
            .expect("python3 runs (moto's S3 server comes from PyPI)");
        assert!(installed.success(), "pip install moto[server] failed");
    }
    "moto_server".to_string()
}

impl MotoServer {
    pub fn start() -> MotoServer {
        let program = program();
        let port = {
            let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            probe.local_addr().unwrap().port()
        };
        let child = Command::new(program)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("moto_server starts");
        let server = MotoServer {
            child,
            endpoint: format!("http://127.0.0.1:{port}"),
            port,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if server
                .request("PUT", &format!("/{BUCKET}"))
                .is_ok_and(|s| s.starts_with("HTTP/1.1 200"))
            {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "moto_server did not come up on port {port}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        server
    }

    /// A bare HTTP request (moto does not check signatures); the status line.
    fn request(&self, method: &str, path: &str) -> std::io::Result<String> {
        let mut stream = TcpStream::connect(("127.0.0.1", self.port))?;
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        write!(
            stream,
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            self.port
        )?;
        let mut answer = String::new();
        stream.read_to_string(&mut answer)?;
        Ok(answer.lines().next().unwrap_or("").to_string())
    }

    pub fn options(&self) -> S3Options {
        S3Options {
            endpoint: Some(self.endpoint.clone()),
            region: Some("us-east-1".into()),
            access_key_id: Some("test".into()),
            secret_access_key: Some("test".into()),
        }
    }

    /// The server's process id (for measuring what it costs).
    #[allow(dead_code)]
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn target(&self, prefix: &str) -> Arc<dyn BackupTarget> {
        Arc::new(ObjectTarget::s3(BUCKET, prefix, &self.options()).unwrap())
    }
}

impl Drop for MotoServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
