//! The `ferry` tool's client commands: `kv`, `cluster`, `snapshot`,
//! `history`, and the offline `backup` commands.
//!
//! Human-readable tables by default, `--json` for scripts. Exit codes:
//! 0 success, 1 the server refused or failed the request, 2 bad usage,
//! 3 the key was not found (`kv get`), 4 no member answered in time.

mod backup;
mod cluster;
mod download;
mod history;
mod kv;
mod output;
mod snapshot;

pub use backup::{backup, BackupCommand};
pub use cluster::{cluster, ClusterCommand};
pub use history::{history, HistoryCommand};
pub use kv::{kv, KvCommand};
pub use output::parse_time_ms;
pub use snapshot::{snapshot, SnapshotCommand};

use clap::Args;
use ferry_client::{Client, Error};

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
    Client::connect(common.endpoints.clone())
        .await
        .map_err(|e| fail(&e))
}

async fn leader_channel(client: &Client) -> Result<tonic::transport::Channel, i32> {
    client.refresh_members().await.map_err(|e| fail(&e))?;
    let leader = client.leader().ok_or_else(|| {
        eprintln!("error: no leader known");
        exit::UNAVAILABLE
    })?;
    tonic::transport::Endpoint::from_shared(format!("http://{leader}"))
        .map_err(|e| {
            eprintln!("error: {e}");
            exit::USAGE
        })
        .map(|e| e.connect_lazy())
}

fn status_fail(status: tonic::Status) -> i32 {
    eprintln!("error: {:?}: {}", status.code(), status.message());
    match status.code() {
        tonic::Code::Unavailable | tonic::Code::DeadlineExceeded => exit::UNAVAILABLE,
        tonic::Code::InvalidArgument => exit::USAGE,
        _ => exit::FAILED,
    }
}
