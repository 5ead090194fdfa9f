//! The `ferry` tool's client commands: `kv`, `lease`, `cluster`, `snapshot`,
//! `history`, and the offline `backup` commands.
//!
//! Human-readable tables by default, `--json` for scripts. Exit codes:
//! 0 success, 1 the server refused or failed the request, 2 bad usage,
//! 3 the key was not found (`kv get`), 4 no member answered in time.

mod auth;
mod backup;
mod certs;
mod cluster;
mod download;
mod history;
mod kv;
mod lease;
mod lock;
mod output;
mod queue;
mod snapshot;

pub use auth::{auth, role, user, AuthCommand, RoleCommand, UserCommand};
pub use backup::{backup, s3_options, BackupCommand, S3Args};
pub use certs::{certs, CertsCommand};
pub use cluster::{cluster, ClusterCommand};
pub use history::{history, HistoryCommand};
pub use kv::{kv, KvCommand};
pub use lease::{lease, LeaseCommand};
pub use lock::{elect, lock, ElectArgs, LockArgs};
pub use output::{parse_duration_secs, parse_time_ms};
pub use queue::{queue, QueueCommand};
pub use snapshot::{snapshot, SnapshotCommand};

mod password;

use clap::Args;
use ferry_client::{Client, ClientOptions, Credentials, Error, TlsOptions};
use std::path::PathBuf;

/// Exit codes scripts can rely on.
pub mod exit {
    pub const OK: i32 = 0;
    pub const FAILED: i32 = 1;
    pub const USAGE: i32 = 2;
    pub const NOT_FOUND: i32 = 3;
    pub const UNAVAILABLE: i32 = 4;
}

#[derive(Debug, Clone, Args)]
pub struct Common {
    /// Client addresses of any cluster members, comma-separated.
    #[arg(
        long,
        global = true,
        default_value = "127.0.0.1:7400",
        value_delimiter = ','
    )]
    pub endpoints: Vec<String>,
    /// Print JSON instead of a table.
    #[arg(long, global = true)]
    pub json: bool,
    /// Authenticate as this user (auth enabled): NAME:PASSWORD, or NAME
    /// alone to be asked for the password (read from stdin when it is not
    /// a terminal).
    #[arg(long = "user", id = "auth_user", global = true)]
    pub user: Option<String>,
    /// Connect over TLS, trusting this CA's certificates (PEM).
    #[arg(long, global = true)]
    pub cacert: Option<PathBuf>,
    /// This client's certificate (PEM), for servers with --client-cert-auth.
    #[arg(
        long = "cert",
        id = "client_cert",
        global = true,
        requires = "client_key"
    )]
    pub cert: Option<PathBuf>,
    /// The private key of --cert (PEM).
    #[arg(
        long = "key",
        id = "client_key",
        global = true,
        requires = "client_cert"
    )]
    pub key: Option<PathBuf>,
}

impl Common {
    /// Client options for these flags.
    pub fn options(&self) -> Result<ClientOptions, String> {
        let mut options = ClientOptions::default();
        if let Some(ca) = &self.cacert {
            let identity = self.cert.as_deref().zip(self.key.as_deref());
            options.tls = Some(TlsOptions::from_files(ca, identity).map_err(|e| e.to_string())?);
        } else if self.cert.is_some() {
            return Err("--cert needs --cacert (the CA of the servers' certificates)".into());
        }
        if let Some(user) = &self.user {
            let (name, password) = match user.split_once(':') {
                Some((name, password)) => (name.to_owned(), password.to_owned()),
                None => (
                    user.clone(),
                    password::read(&format!("Password for {user}: "))?,
                ),
            };
            options.credentials = Some(Credentials {
                user: name,
                password,
            });
        }
        Ok(options)
    }
}

/// Prints an error and returns the exit code for it.
pub fn fail(error: &Error) -> i32 {
    eprintln!("error: {error}");
    match error {
        Error::DeadlineExceeded { .. } => exit::UNAVAILABLE,
        Error::Endpoint(_) => exit::USAGE,
        _ => exit::FAILED,
    }
}

async fn connect(common: &Common) -> Result<Client, i32> {
    let options = common.options().map_err(|e| {
        eprintln!("error: {e}");
        exit::USAGE
    })?;
    Client::connect_with(common.endpoints.clone(), options)
        .await
        .map_err(|e| fail(&e))
}

async fn leader_channel(client: &Client) -> Result<ferry_client::AuthChannel, i32> {
    client.leader_channel().await.map_err(|e| fail(&e))
}

fn status_fail(status: tonic::Status) -> i32 {
    eprintln!("error: {:?}: {}", status.code(), status.message());
    match status.code() {
        tonic::Code::Unavailable | tonic::Code::DeadlineExceeded => exit::UNAVAILABLE,
        tonic::Code::InvalidArgument => exit::USAGE,
        _ => exit::FAILED,
    }
}
