//! The `ferry` command-line tool: run a node, run the demo, talk to a cluster.

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use clap::{Args, Parser, Subcommand};
use ferry_server::cli::{
    self, exit, BackupCommand, ClusterCommand, Common, HistoryCommand, KvCommand, SnapshotCommand,
};
use ferry_server::config::ServeConfig;
use ferry_server::demo::{self, DemoArgs};
use ferry_server::server::Server;
use std::path::PathBuf;

#[derive(Debug, Parser)]
#[command(
    name = "ferry",
    version,
    about = "Ferry: a replicated key-value state store"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run one node (with no flags: a single-node cluster from ./ferry-data on 127.0.0.1).
    Serve(Box<ServeArgs>),
    /// Start a local 3-node cluster, kill its leader under load, show the failover.
    Demo(DemoArgs),
    /// Read and write keys.
    Kv {
        #[command(flatten)]
        common: Common,
        #[command(subcommand)]
        command: KvCommand,
    },
    /// Inspect and change membership.
    Cluster {
        #[command(flatten)]
        common: Common,
        #[command(subcommand)]
        command: ClusterCommand,
    },
    /// Snapshots: create, download, export as Parquet, restore.
    Snapshot {
        #[command(flatten)]
        common: Common,
        #[command(subcommand)]
        command: SnapshotCommand,
    },
    /// The revision history: export it as Parquet.
    History {
        #[command(flatten)]
        common: Common,
        #[command(subcommand)]
        command: HistoryCommand,
    },
    /// Backup chains (`serve --backup-dir`): list, point-in-time restore.
    Backup {
        #[command(flatten)]
        common: Common,
        #[command(subcommand)]
        command: BackupCommand,
    },
}

/// Flags of `ferry serve`; each overrides the config file, which overrides
/// the defaults.
#[derive(Debug, Args)]
struct ServeArgs {
    /// A TOML file with any of the settings below (flags win).
    #[arg(long)]
    config: Option<PathBuf>,
    #[arg(long)]
    id: Option<u64>,
    #[arg(long)]
    data_dir: Option<PathBuf>,
    #[arg(long)]
    client_addr: Option<String>,
    #[arg(long)]
    raft_addr: Option<String>,
    /// HTTP address for /metrics, /healthz, /readyz ("" disables).
    #[arg(long)]
    metrics_addr: Option<String>,
    #[arg(long)]
    advertise_client_addr: Option<String>,
    #[arg(long)]
    advertise_raft_addr: Option<String>,
    /// Another initial member, ID=RAFT_ADDR@CLIENT_ADDR (repeat; with --init).
    #[arg(long = "peer")]
    peers: Vec<String>,
    /// Form a new cluster of this node and its --peer list (if not formed yet).
    #[arg(long)]
    init: bool,
    /// Do not form a cluster: wait to be added with `ferry cluster add`.
    #[arg(long)]
    join: bool,
    #[arg(long)]
    heartbeat_ms: Option<u64>,
    #[arg(long)]
    election_timeout_min_ms: Option<u64>,
    #[arg(long)]
    election_timeout_max_ms: Option<u64>,
    #[arg(long)]
    snapshot_max_bytes_per_sec: Option<u64>,
    /// Warn when a learner (DR standby) lags the leader by more than this (0: never).
    #[arg(long)]
    learner_max_lag_ms: Option<u64>,
    /// Ship a backup chain into this directory while this node leads.
    #[arg(long)]
    backup_dir: Option<PathBuf>,
    /// Backup log shipping interval (the chain's recovery point).
    #[arg(long)]
    backup_interval_ms: Option<u64>,
    #[arg(long)]
    backup_checkpoint_interval_ms: Option<u64>,
    /// Compact revision history beyond the newest N revisions (0: no bound).
    #[arg(long)]
    history_keep_revisions: Option<u64>,
    /// Compact revision history older than this many seconds (0: no bound).
    #[arg(long)]
    history_keep_secs: Option<u64>,
    /// Send a quiet watch a progress notification this often.
    #[arg(long)]
    watch_progress_ms: Option<u64>,
    #[arg(long)]
    max_value_bytes: Option<usize>,
    #[arg(long)]
    max_txn_ops: Option<usize>,
}

impl ServeArgs {
    fn into_config(self) -> Result<ServeConfig, String> {
        let mut config = match &self.config {
            Some(path) => ServeConfig::from_file(path)?,
            None => ServeConfig::default(),
        };
        macro_rules! set {
            ($($field:ident),*) => { $( if let Some(v) = self.$field { config.$field = v; } )* };
        }
        set!(
            id,
            data_dir,
            client_addr,
            raft_addr,
            metrics_addr,
            heartbeat_ms,
            election_timeout_min_ms,
            election_timeout_max_ms,
            snapshot_max_bytes_per_sec,
            learner_max_lag_ms,
            backup_interval_ms,
            backup_checkpoint_interval_ms,
            history_keep_revisions,
            history_keep_secs,
            watch_progress_ms
        );
        if self.backup_dir.is_some() {
            config.backup_dir = self.backup_dir;
        }
        if self.advertise_client_addr.is_some() {
            config.advertise_client_addr = self.advertise_client_addr;
        }
        if self.advertise_raft_addr.is_some() {
            config.advertise_raft_addr = self.advertise_raft_addr;
        }
        if !self.peers.is_empty() {
            config.peers = self.peers;
        }
        config.init |= self.init;
        config.join |= self.join;
        if let Some(v) = self.max_value_bytes {
            config.limits.max_value_bytes = v;
        }
        if let Some(v) = self.max_txn_ops {
            config.limits.max_txn_ops = v;
        }
        Ok(config)
    }
}

async fn serve(args: ServeArgs) -> i32 {
    let config = match args.into_config() {
        Ok(config) => config,
        Err(e) => {
            eprintln!("error: {e}");
            return exit::USAGE;
        }
    };
    let server = match Server::start(config).await {
        Ok(server) => server,
        Err(e) => {
            eprintln!("error: {e}");
            return exit::FAILED;
        }
    };
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => tracing::info!("interrupted; stopping"),
        _ = terminate.recv() => tracing::info!("SIGTERM; stopping"),
    }
    // Every step of the stop is bounded; this guards the bound itself, so
    // that a SIGTERM always ends the process.
    let bound = ferry_server::server::STOP_BOUND + std::time::Duration::from_secs(5);
    match tokio::time::timeout(bound, server.shutdown()).await {
        Ok(Ok(())) => exit::OK,
        Ok(Err(e)) => {
            eprintln!("error while stopping: {e}");
            exit::FAILED
        }
        Err(_) => {
            eprintln!("error: the graceful stop did not finish within {bound:?}; exiting");
            exit::FAILED
        }
    }
}

fn main() {
    ferry_server::memory::disable_transparent_huge_pages();
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,openraft=warn".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let code = runtime.block_on(async move {
        match cli.command {
            Command::Serve(args) => serve(*args).await,
            Command::Demo(args) => match demo::run(args).await {
                Ok(()) => exit::OK,
                Err(e) => {
                    eprintln!("demo failed: {e}");
                    exit::FAILED
                }
            },
            Command::Kv { common, command } => cli::kv(&common, command).await,
            Command::Cluster { common, command } => cli::cluster(&common, command).await,
            Command::Snapshot { common, command } => cli::snapshot(&common, command).await,
            Command::Backup { common, command } => cli::backup(&common, command).await,
            Command::History { common, command } => cli::history(&common, command).await,
        }
    });
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    std::process::exit(code);
}
