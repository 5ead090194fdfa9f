//! The `ferry` command-line tool: run a node, run the demo, talk to a cluster.

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use clap::{Args, Parser, Subcommand};
use ferry_server::cli::{
    self, exit, AuthCommand, BackupCommand, CertsCommand, ClusterCommand, Common, HistoryCommand,
    KvCommand, RoleCommand, SnapshotCommand, UserCommand,
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
    /// Grant, revoke, inspect and keep alive leases.
    Lease {
        #[command(flatten)]
        common: Common,
        #[command(subcommand)]
        command: cli::LeaseCommand,
    },
    /// Hold a lock while a command runs (fencing token in FERRY_LOCK_TOKEN).
    Lock {
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        args: cli::LockArgs,
    },
    /// Campaign in a leader election, or observe one.
    Elect {
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        args: cli::ElectArgs,
    },
    /// A durable work queue with leased claims.
    Queue {
        #[command(flatten)]
        common: Common,
        #[command(subcommand)]
        command: cli::QueueCommand,
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
    /// Users: add, delete, passwd, grant-role, revoke-role, list.
    User {
        #[command(flatten)]
        common: Common,
        #[command(subcommand)]
        command: UserCommand,
    },
    /// Roles and their key permissions.
    Role {
        #[command(flatten)]
        common: Common,
        #[command(subcommand)]
        command: RoleCommand,
    },
    /// Turn auth on or off, or show whether it is on.
    Auth {
        #[command(flatten)]
        common: Common,
        #[command(subcommand)]
        command: AuthCommand,
    },
    /// Development certificates: a CA, node and client certificates.
    Certs {
        #[command(subcommand)]
        command: CertsCommand,
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
    /// Build a snapshot (and purge the log behind it) every this many entries.
    #[arg(long)]
    snapshot_after_entries: Option<u64>,
    /// Log entries kept behind a snapshot, for followers a little behind.
    #[arg(long)]
    keep_after_snapshot: Option<u64>,
    /// Warn when a learner (DR standby) lags the leader by more than this (0: never).
    #[arg(long)]
    learner_max_lag_ms: Option<u64>,
    /// Ship a backup chain into this directory while this node leads.
    #[arg(long, conflicts_with = "backup_url")]
    backup_dir: Option<PathBuf>,
    /// Ship the backup chain to object storage (`s3://bucket/prefix`) or a
    /// directory (`file:///path`). Credentials come from AWS_ACCESS_KEY_ID
    /// and AWS_SECRET_ACCESS_KEY (or the other standard AWS variables).
    #[arg(long)]
    backup_url: Option<String>,
    #[command(flatten)]
    s3: cli::S3Args,
    /// Retention: keep the newest N checkpoints and the log after them.
    #[arg(long)]
    backup_keep_chains: Option<u64>,
    /// Retention: keep what restores any point of this last span (e.g. 7d, 12h, 30m).
    #[arg(long, value_parser = cli::parse_duration_secs)]
    backup_keep_for: Option<u64>,
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
    /// Seconds a token from Auth.Authenticate stays valid.
    #[arg(long)]
    auth_token_ttl_secs: Option<u64>,
    /// TLS on the client port: this server's certificate (PEM).
    #[arg(long)]
    cert_file: Option<PathBuf>,
    /// The private key of --cert-file (PEM).
    #[arg(long)]
    key_file: Option<PathBuf>,
    /// CA whose client certificates the client port accepts.
    #[arg(long)]
    trusted_ca_file: Option<PathBuf>,
    /// Require a client certificate from --trusted-ca-file; with auth on,
    /// its common name is the user.
    #[arg(long)]
    client_cert_auth: bool,
    /// Mutual TLS between members: this node's peer certificate (PEM).
    #[arg(long)]
    peer_cert_file: Option<PathBuf>,
    #[arg(long)]
    peer_key_file: Option<PathBuf>,
    /// The CA that signs every member's peer certificate.
    #[arg(long)]
    peer_trusted_ca_file: Option<PathBuf>,
    /// Peers must present a certificate with one of these common names
    /// (repeat or comma-separate; default: any the CA signed).
    #[arg(long, value_delimiter = ',')]
    peer_cert_allowed_cn: Vec<String>,
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
            snapshot_after_entries,
            keep_after_snapshot,
            learner_max_lag_ms,
            backup_interval_ms,
            backup_checkpoint_interval_ms,
            history_keep_revisions,
            history_keep_secs,
            watch_progress_ms,
            auth_token_ttl_secs
        );
        macro_rules! set_tls {
            ($($field:ident),*) => { $( if self.$field.is_some() { config.tls.$field = self.$field; } )* };
        }
        set_tls!(
            cert_file,
            key_file,
            trusted_ca_file,
            peer_cert_file,
            peer_key_file,
            peer_trusted_ca_file
        );
        config.tls.client_cert_auth |= self.client_cert_auth;
        if !self.peer_cert_allowed_cn.is_empty() {
            config.tls.peer_cert_allowed_cn = self.peer_cert_allowed_cn;
        }
        if self.backup_dir.is_some() {
            config.backup_dir = self.backup_dir;
        }
        if self.backup_url.is_some() {
            config.backup_url = self.backup_url;
        }
        let cli::S3Args {
            s3_endpoint,
            s3_region,
            s3_access_key_id,
            s3_secret_access_key_file,
        } = self.s3;
        config.s3_endpoint = s3_endpoint.or(config.s3_endpoint);
        config.s3_region = s3_region.or(config.s3_region);
        config.s3_access_key_id = s3_access_key_id.or(config.s3_access_key_id);
        config.s3_secret_access_key_file =
            s3_secret_access_key_file.or(config.s3_secret_access_key_file);
        if let Some(n) = self.backup_keep_chains {
            config.backup_keep_chains = n;
        }
        if let Some(secs) = self.backup_keep_for {
            config.backup_keep_for_secs = secs;
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

const DEFAULT_LOG_FILTER: &str = "info,openraft=warn,openraft::replication=error,\
openraft::engine::handler::replication_handler=error,openraft::core::heartbeat=error";

fn main() {
    ferry_server::memory::disable_transparent_huge_pages();
    // One crypto provider for the process, before anything builds a TLS
    // configuration (ours name it anyway; this covers any that do not).
    ferry_replication::tls::install_provider();
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                // openraft logs every failed heartbeat to an unreachable
                // peer (every 50 ms, three lines each); the transport logs
                // those once per peer per interval instead.
                .unwrap_or_else(|_| DEFAULT_LOG_FILTER.into()),
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
            Command::Lease { common, command } => cli::lease(&common, command).await,
            Command::Lock { common, args } => cli::lock(&common, args).await,
            Command::Elect { common, args } => cli::elect(&common, args).await,
            Command::Queue { common, command } => cli::queue(&common, command).await,
            Command::Cluster { common, command } => cli::cluster(&common, command).await,
            Command::Snapshot { common, command } => cli::snapshot(&common, command).await,
            Command::Backup { common, command } => cli::backup(&common, command).await,
            Command::History { common, command } => cli::history(&common, command).await,
            Command::User { common, command } => cli::user(&common, command).await,
            Command::Role { common, command } => cli::role(&common, command).await,
            Command::Auth { common, command } => cli::auth(&common, command).await,
            Command::Certs { command } => cli::certs(command),
        }
    });
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    std::process::exit(code);
}
