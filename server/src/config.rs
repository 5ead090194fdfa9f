//! `ferry serve` configuration: defaults, an optional TOML file, flags.
//!
//! Precedence: a flag given on the command line, else the file's value,
//! else the default. The defaults serve a single-node cluster from
//! `./ferry-data` on 127.0.0.1 with no configuration at all.

use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The largest `max_request_bytes` accepted. A log entry must fit in one
/// backup chunk ([`ferry_replication::backup::MAX_CHUNK_BYTES`]), and a
/// transaction writes its values twice (the record and the change) and
/// may keep as many previous values inline, so this is also a quarter of
/// what apply lets one transaction write
/// ([`ferry_replication::types::MAX_TXN_WRITE_BYTES`]).
pub const MAX_REQUEST_BYTES: usize = ferry_replication::types::MAX_TXN_WRITE_BYTES / 4;
const _: () = assert!(MAX_REQUEST_BYTES as u64 <= ferry_replication::backup::MAX_CHUNK_BYTES);
/// Longest an auth token may stay valid.
pub const MAX_AUTH_TOKEN_TTL_SECS: u64 = 365 * 24 * 3600;

/// Request limits; a request over one is refused with INVALID_ARGUMENT or
/// RESOURCE_EXHAUSTED naming the limit, and changes nothing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    pub max_key_bytes: usize,
    pub max_value_bytes: usize,
    /// Largest encoded request the server decodes.
    pub max_request_bytes: usize,
    /// Compares plus operations of one transaction.
    pub max_txn_ops: usize,
    /// Keys of one range page.
    pub max_range_page: u32,
    /// Bytes of keys and values in one range answer at most (a page ends
    /// early, with a continuation, when it would hold more; a single key
    /// larger than this still comes alone).
    pub max_range_bytes: usize,
    /// HTTP/2 streams (calls in flight) on one client connection at most;
    /// a client opening more waits for one to end.
    pub max_streams_per_connection: u32,
    /// Watch streams open at once.
    pub max_watch_streams: usize,
    /// Watch streams one user may have open at once (with auth on): one
    /// user cannot take every place.
    pub max_watch_streams_per_user: usize,
    /// Calls in flight at once on one `KV.Batch` stream.
    pub max_batch_calls: usize,
    /// Snapshot downloads and Parquet exports running at once.
    pub max_transfers: usize,
    /// Leases that may exist at once (a grant beyond fails
    /// RESOURCE_EXHAUSTED).
    pub max_leases: usize,
    /// The TTL range of a lease grant, in seconds.
    pub min_lease_ttl_secs: u64,
    pub max_lease_ttl_secs: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_key_bytes: 4096,
            max_value_bytes: 1 << 20,
            max_request_bytes: 4 << 20,
            max_txn_ops: 128,
            max_range_page: 10_000,
            max_range_bytes: 2 << 20,
            max_streams_per_connection: 1024,
            max_watch_streams: 1024,
            max_watch_streams_per_user: 256,
            max_batch_calls: 4096,
            max_transfers: 2,
            max_leases: 100_000,
            min_lease_ttl_secs: 2,
            max_lease_ttl_secs: 30 * 24 * 3600,
        }
    }
}

/// Everything `ferry serve` needs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServeConfig {
    /// This node's id, unique in the cluster.
    pub id: u64,
    pub data_dir: PathBuf,
    /// Public API (gRPC) listen address.
    pub client_addr: String,
    /// Node-to-node (Raft) listen address.
    pub raft_addr: String,
    /// HTTP listen address of `/metrics`, `/healthz`, `/readyz` (empty: off).
    pub metrics_addr: String,
    /// Addresses other nodes and clients should use, if not the listen ones.
    pub advertise_client_addr: Option<String>,
    pub advertise_raft_addr: Option<String>,
    /// Initial members other than this node, `ID=RAFT_ADDR@CLIENT_ADDR`,
    /// used with `init`.
    pub peers: Vec<String>,
    /// Form a new cluster of this node and `peers` if the data directory
    /// holds none yet. Without peers and without `join`, a fresh node
    /// forms a single-node cluster anyway.
    pub init: bool,
    /// Start without forming a cluster: wait to be added by `ferry cluster add`.
    pub join: bool,
    pub heartbeat_ms: u64,
    pub election_timeout_min_ms: u64,
    pub election_timeout_max_ms: u64,
    pub snapshot_after_entries: u64,
    pub keep_after_snapshot: u64,
    /// Snapshot transfer bandwidth limit in bytes per second (0: none).
    pub snapshot_max_bytes_per_sec: u64,
    /// Warn (log and `ferry_learner_lag_exceeded`) when a learner, such as a
    /// disaster-recovery standby, has not acknowledged the leader for this
    /// many milliseconds: its recovery point is falling behind (0: never).
    pub learner_max_lag_ms: u64,
    /// Ship a backup chain (checkpoints and the committed log) into this
    /// directory while this node leads (none: no backups).
    pub backup_dir: Option<PathBuf>,
    /// Ship the backup chain here instead: `s3://bucket/prefix` or
    /// `file:///path` (see `ferry_replication::backup::open`).
    pub backup_url: Option<String>,
    /// S3 endpoint and region (none: from `AWS_ENDPOINT`, `AWS_REGION`);
    /// credentials come from the standard AWS environment variables.
    pub s3_endpoint: Option<String>,
    pub s3_region: Option<String>,
    /// S3 access key id, and a file holding the secret key (none: from
    /// `AWS_ACCESS_KEY_ID` and `AWS_SECRET_ACCESS_KEY`).
    pub s3_access_key_id: Option<String>,
    pub s3_secret_access_key_file: Option<PathBuf>,
    /// Retention: keep the newest N checkpoints and the log after them
    /// (0: no bound by count).
    pub backup_keep_chains: u64,
    /// Retention: keep what restores any point of the last this many
    /// seconds (0: no bound by age). With both bounds, either keeps.
    pub backup_keep_for_secs: u64,
    /// Log shipping interval: the backup chain's recovery point.
    pub backup_interval_ms: u64,
    /// Checkpoint interval: bounds the log a restore replays.
    pub backup_checkpoint_interval_ms: u64,
    /// Revision history beyond the newest this many revisions is compacted
    /// by the leader (0: no bound by count).
    pub history_keep_revisions: u64,
    /// Revision history older than this many seconds is compacted by the
    /// leader (0: no bound by age).
    pub history_keep_secs: u64,
    /// A quiet watch gets a progress notification this often.
    pub watch_progress_ms: u64,
    /// Seconds an auth token stays valid (at most a year).
    pub auth_token_ttl_secs: u64,
    /// TLS of the client API and the peer port (see `Tls`).
    pub tls: Tls,
    pub limits: Limits,
}

/// Certificates and keys, as PEM files, with etcd's flag names. The files
/// are read again when they change, so certificates rotate without a
/// restart.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Tls {
    /// The client API's certificate and key: TLS on the client port.
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    /// CA whose client certificates the client API accepts.
    pub trusted_ca_file: Option<PathBuf>,
    /// Require a client certificate signed by `trusted_ca_file`; with auth
    /// on, its common name is the user.
    pub client_cert_auth: bool,
    /// The peer port's certificate and key: mutual TLS between members.
    pub peer_cert_file: Option<PathBuf>,
    pub peer_key_file: Option<PathBuf>,
    /// CA that signs every member's peer certificate (required with them).
    pub peer_trusted_ca_file: Option<PathBuf>,
    /// Peers must also present one of these common names (empty: any the
    /// CA signed).
    pub peer_cert_allowed_cn: Vec<String>,
}

impl Tls {
    fn validate(&self) -> Result<(), String> {
        if self.cert_file.is_some() != self.key_file.is_some() {
            return Err("cert_file and key_file go together".into());
        }
        if self.client_cert_auth && (self.trusted_ca_file.is_none() || self.cert_file.is_none()) {
            return Err("client_cert_auth needs cert_file, key_file and trusted_ca_file".into());
        }
        if self.trusted_ca_file.is_some() && self.cert_file.is_none() {
            return Err(
                "trusted_ca_file needs cert_file and key_file (TLS on the client port)".into(),
            );
        }
        let peer = [
            self.peer_cert_file.is_some(),
            self.peer_key_file.is_some(),
            self.peer_trusted_ca_file.is_some(),
        ];
        if peer.iter().any(|&set| set) && !peer.iter().all(|&set| set) {
            return Err(
                "peer_cert_file, peer_key_file and peer_trusted_ca_file go together (mutual TLS between members)"
                    .into(),
            );
        }
        if !self.peer_cert_allowed_cn.is_empty() && self.peer_cert_file.is_none() {
            return Err("peer_cert_allowed_cn needs the peer certificates".into());
        }
        Ok(())
    }

    /// The client port's TLS, if it has any.
    pub fn client(&self) -> Option<ferry_replication::tls::ServerTls> {
        use ferry_replication::tls::{ClientAuth, ServerTls};
        let (cert, key) = (self.cert_file.clone()?, self.key_file.clone()?);
        Some(ServerTls {
            cert_file: cert,
            key_file: key,
            client_auth: match (&self.trusted_ca_file, self.client_cert_auth) {
                (Some(ca), true) => ClientAuth::Required(ca.clone()),
                (Some(ca), false) => ClientAuth::Optional(ca.clone()),
                (None, _) => ClientAuth::None,
            },
            allowed_cn: Vec::new(),
        })
    }

    /// The HTTP (metrics and status) port's TLS: the client port's
    /// certificate, no client certificates asked for.
    pub fn status(&self) -> Option<ferry_replication::tls::ServerTls> {
        Some(ferry_replication::tls::ServerTls {
            client_auth: ferry_replication::tls::ClientAuth::None,
            ..self.client()?
        })
    }

    /// The peer port's mutual TLS, if configured.
    pub fn peer(&self) -> Option<ferry_replication::tls::PeerTls> {
        Some(ferry_replication::tls::PeerTls {
            cert_file: self.peer_cert_file.clone()?,
            key_file: self.peer_key_file.clone()?,
            trusted_ca_file: self.peer_trusted_ca_file.clone()?,
            allowed_cn: self.peer_cert_allowed_cn.clone(),
        })
    }
}

impl Default for ServeConfig {
    fn default() -> Self {
        let raft = ferry_replication::RaftOptions::default();
        let retention = ferry_replication::RetentionOptions::default();
        ServeConfig {
            id: 1,
            data_dir: PathBuf::from("./ferry-data"),
            client_addr: "127.0.0.1:7400".into(),
            raft_addr: "127.0.0.1:7401".into(),
            metrics_addr: "127.0.0.1:7402".into(),
            advertise_client_addr: None,
            advertise_raft_addr: None,
            peers: Vec::new(),
            init: false,
            join: false,
            heartbeat_ms: raft.heartbeat_interval.as_millis() as u64,
            election_timeout_min_ms: raft.election_timeout_min.as_millis() as u64,
            election_timeout_max_ms: raft.election_timeout_max.as_millis() as u64,
            snapshot_after_entries: raft.snapshot_after_entries,
            keep_after_snapshot: raft.keep_after_snapshot,
            snapshot_max_bytes_per_sec: 0,
            learner_max_lag_ms: 10_000,
            backup_dir: None,
            backup_url: None,
            s3_endpoint: None,
            s3_region: None,
            s3_access_key_id: None,
            s3_secret_access_key_file: None,
            backup_keep_chains: 0,
            backup_keep_for_secs: 0,
            backup_interval_ms: 10_000,
            backup_checkpoint_interval_ms: 600_000,
            history_keep_revisions: retention.keep_revisions,
            history_keep_secs: retention.keep_for.as_secs(),
            watch_progress_ms: 5_000,
            auth_token_ttl_secs: 300,
            tls: Tls::default(),
            limits: Limits::default(),
        }
    }
}

/// A member named on the command line or in the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    pub id: u64,
    pub raft_addr: String,
    pub client_addr: String,
}

impl std::str::FromStr for Peer {
    type Err = String;

    /// `ID=RAFT_ADDR@CLIENT_ADDR`, e.g. `2=127.0.0.1:7411@127.0.0.1:7410`.
    fn from_str(text: &str) -> Result<Self, String> {
        let bad = || format!("peer {text:?} is not ID=RAFT_ADDR@CLIENT_ADDR");
        let (id, addrs) = text.split_once('=').ok_or_else(bad)?;
        let (raft_addr, client_addr) = addrs.split_once('@').ok_or_else(bad)?;
        Ok(Peer {
            id: id.trim().parse().map_err(|_| bad())?,
            raft_addr: raft_addr.trim().to_owned(),
            client_addr: client_addr.trim().to_owned(),
        })
    }
}

impl ServeConfig {
    /// Reads a TOML file of `ServeConfig` fields (all optional).
    pub fn from_file(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        toml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    pub fn parsed_peers(&self) -> Result<Vec<Peer>, String> {
        self.peers.iter().map(|p| p.parse()).collect()
    }

    /// Checks what can be checked before binding anything.
    pub fn validate(&self) -> Result<(), String> {
        if self.id == 0 {
            return Err("id must be at least 1".into());
        }
        if self.init && self.join {
            return Err("init and join exclude each other".into());
        }
        if self.election_timeout_min_ms <= self.heartbeat_ms
            || self.election_timeout_max_ms <= self.election_timeout_min_ms
        {
            return Err("need heartbeat < election timeout min < election timeout max".into());
        }
        if self.backup_dir.is_some() && self.backup_url.is_some() {
            return Err("give backup_dir or backup_url, not both".into());
        }
        if (self.backup_dir.is_some() || self.backup_url.is_some())
            && (self.backup_interval_ms == 0 || self.backup_checkpoint_interval_ms == 0)
        {
            return Err("backup intervals must be at least 1 ms".into());
        }
        if self.watch_progress_ms == 0 {
            return Err("watch_progress_ms must be at least 1".into());
        }
        if self.limits.max_watch_streams_per_user == 0 {
            return Err("max_watch_streams_per_user must be at least 1".into());
        }
        // A token's expiry is now plus the TTL, in milliseconds.
        if self.auth_token_ttl_secs > MAX_AUTH_TOKEN_TTL_SECS {
            return Err(format!(
                "auth_token_ttl_secs must be at most {MAX_AUTH_TOKEN_TTL_SECS} (a year)"
            ));
        }
        // A log entry then fits in one backup chunk, which goes up to object
        // storage in one conditional put (at most 80 MiB), and a transaction
        // in what apply lets one write.
        if self.limits.max_request_bytes > MAX_REQUEST_BYTES {
            return Err(format!(
                "max_request_bytes must be at most {MAX_REQUEST_BYTES}: what a request may write \
                 must fit in what one transaction may write"
            ));
        }
        if self.limits.max_request_bytes < ferry_client::MAX_BATCH_REQUEST_BYTES {
            return Err(format!(
                "max_request_bytes must be at least {}: the SDK's batch messages reach that size",
                ferry_client::MAX_BATCH_REQUEST_BYTES
            ));
        }
        self.tls.validate()?;
        for peer in self.parsed_peers()? {
            if peer.id == self.id {
                return Err(format!("peer {} has this node's own id", peer.id));
            }
        }
        Ok(())
    }

    pub(crate) fn backup_options(&self) -> ferry_replication::backup::BackupOptions {
        ferry_replication::backup::BackupOptions {
            log_interval: Duration::from_millis(self.backup_interval_ms),
            checkpoint_interval: Duration::from_millis(self.backup_checkpoint_interval_ms),
            retention: ferry_replication::backup::Retention {
                keep_chains: (self.backup_keep_chains > 0)
                    .then_some(self.backup_keep_chains as usize),
                keep_for: (self.backup_keep_for_secs > 0)
                    .then(|| Duration::from_secs(self.backup_keep_for_secs)),
            },
            ..Default::default()
        }
    }

    /// Where the backup chain goes, if anywhere.
    pub(crate) fn backup_target(
        &self,
    ) -> Option<std::io::Result<std::sync::Arc<dyn ferry_replication::backup::BackupTarget>>> {
        let url = match (&self.backup_url, &self.backup_dir) {
            (Some(url), _) => url.clone(),
            (None, Some(dir)) => dir.to_string_lossy().into_owned(),
            (None, None) => return None,
        };
        let options = crate::cli::s3_options(
            self.s3_endpoint.clone(),
            self.s3_region.clone(),
            self.s3_access_key_id.clone(),
            self.s3_secret_access_key_file.as_deref(),
        );
        Some(options.and_then(|options| ferry_replication::backup::open(&url, &options)))
    }

    pub(crate) fn retention_options(&self) -> ferry_replication::RetentionOptions {
        ferry_replication::RetentionOptions {
            keep_revisions: self.history_keep_revisions,
            keep_for: Duration::from_secs(self.history_keep_secs),
            ..Default::default()
        }
    }

    pub(crate) fn raft_options(&self) -> ferry_replication::RaftOptions {
        ferry_replication::RaftOptions {
            heartbeat_interval: Duration::from_millis(self.heartbeat_ms),
            election_timeout_min: Duration::from_millis(self.election_timeout_min_ms),
            election_timeout_max: Duration::from_millis(self.election_timeout_max_ms),
            snapshot_after_entries: self.snapshot_after_entries,
            keep_after_snapshot: self.keep_after_snapshot,
            ..ferry_replication::RaftOptions::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_overrides_defaults_and_rejects_unknown_fields() {
        let config: ServeConfig =
            toml::from_str("id = 3\npeers = [\"1=a:1@a:2\"]\n[limits]\nmax_txn_ops = 7\n").unwrap();
        assert_eq!(config.id, 3);
        assert_eq!(config.limits.max_txn_ops, 7);
        assert_eq!(config.limits.max_key_bytes, Limits::default().max_key_bytes);
        assert_eq!(config.parsed_peers().unwrap()[0].client_addr, "a:2");
        assert!(toml::from_str::<ServeConfig>("idd = 3").is_err());
    }

    #[test]
    fn a_request_limit_below_the_sdks_batch_size_or_above_a_transactions_bound_is_refused() {
        assert!(ServeConfig::default().validate().is_ok());
        let mut config = ServeConfig::default();
        config.limits.max_request_bytes = ferry_client::MAX_BATCH_REQUEST_BYTES - 1;
        let error = config.validate().unwrap_err();
        assert!(error.contains("max_request_bytes"), "{error}");
        config.limits.max_request_bytes = ferry_client::MAX_BATCH_REQUEST_BYTES;
        assert!(config.validate().is_ok());
        // Above a quarter of what a transaction may write, a request could
        // be refused at apply for its size.
        config.limits.max_request_bytes = MAX_REQUEST_BYTES + 1;
        let error = config.validate().unwrap_err();
        assert!(error.contains("one transaction may write"), "{error}");
        config.limits.max_request_bytes = MAX_REQUEST_BYTES;
        assert!(config.validate().is_ok());
    }

    #[test]
    fn a_token_ttl_whose_expiry_would_overflow_is_refused() {
        let mut config = ServeConfig {
            auth_token_ttl_secs: u64::MAX / 1000,
            ..ServeConfig::default()
        };
        let error = config.validate().unwrap_err();
        assert!(error.contains("auth_token_ttl_secs"), "{error}");
        config.auth_token_ttl_secs = MAX_AUTH_TOKEN_TTL_SECS;
        assert!(config.validate().is_ok());
    }

    #[test]
    fn peers_parse_and_bad_ones_are_named() {
        let peer: Peer = "2=127.0.0.1:7411@127.0.0.1:7410".parse().unwrap();
        assert_eq!(peer.id, 2);
        assert!("2=x".parse::<Peer>().unwrap_err().contains("2=x"));
    }
}
