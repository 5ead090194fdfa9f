//! Prometheus metrics (`/metrics`), and the traffic figures of the status
//! page.
//!
//! Request counters and latency histograms are recorded as requests run;
//! Raft, replication, engine and transfer figures are read from the node
//! when scraped.

use ferry_replication::backup::BackupStatus;
use ferry_replication::Node;
use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MethodLabels {
    pub method: String,
    pub code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MethodOnly {
    pub method: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PeerLabels {
    pub peer: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StreamLabels {
    pub kind: &'static str,
}

/// Every metric the server exports.
pub struct Metrics {
    registry: parking_lot::Mutex<Registry>,
    requests: Family<MethodLabels, Counter>,
    latency: Family<MethodOnly, Histogram>,
    open_streams: Family<StreamLabels, Gauge>,
    term: Gauge,
    is_leader: Gauge,
    commit_index: Gauge,
    applied_index: Gauge,
    apply_version: Gauge,
    implemented_apply_version: Gauge,
    last_log_index: Gauge,
    lag_entries: Family<PeerLabels, Gauge>,
    lag_seconds: Family<PeerLabels, Gauge<f64, std::sync::atomic::AtomicU64>>,
    snapshot_sent: Gauge,
    snapshot_received: Gauge,
    snapshot_failed_attempts: Gauge,
    log_received: Gauge,
    log_fsyncs: Gauge,
    log_fsync_seconds: Gauge<f64, std::sync::atomic::AtomicU64>,
    compactions: Gauge,
    write_stalls: Gauge,
    flushes: Gauge,
    learner_lag_exceeded: Family<PeerLabels, Gauge>,
    backup: std::sync::OnceLock<Arc<BackupStatus>>,
    backup_shipped_index: Gauge,
    backup_lag_entries: Gauge,
    backup_failures: Gauge,
    backup_prune_failures: Gauge,
    backup_last_success: Gauge,
    backup_restore_point_age: Gauge,
    backup_cpu: Gauge<f64, std::sync::atomic::AtomicU64>,
    /// Per-method rates and p99s over the last minutes (the status page).
    pub traffic: Arc<crate::status::traffic::Traffic>,
}

impl Metrics {
    pub fn new() -> Arc<Self> {
        let mut registry = Registry::with_prefix("ferry");
        let requests = Family::<MethodLabels, Counter>::default();
        let latency = Family::<MethodOnly, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.0001, 2.0, 18))
        });
        registry.register(
            "requests",
            "gRPC requests by method and status code",
            requests.clone(),
        );
        registry.register(
            "request_seconds",
            "gRPC request latency by method",
            latency.clone(),
        );
        let metrics = Metrics {
            requests,
            latency,
            open_streams: Family::default(),
            term: Gauge::default(),
            is_leader: Gauge::default(),
            commit_index: Gauge::default(),
            applied_index: Gauge::default(),
            apply_version: Gauge::default(),
            implemented_apply_version: Gauge::default(),
            last_log_index: Gauge::default(),
            lag_entries: Family::default(),
            lag_seconds: Family::default(),
            snapshot_sent: Gauge::default(),
            snapshot_received: Gauge::default(),
            snapshot_failed_attempts: Gauge::default(),
            log_received: Gauge::default(),
            log_fsyncs: Gauge::default(),
            log_fsync_seconds: Gauge::default(),
            compactions: Gauge::default(),
            write_stalls: Gauge::default(),
            flushes: Gauge::default(),
            learner_lag_exceeded: Family::default(),
            backup: std::sync::OnceLock::new(),
            backup_shipped_index: Gauge::default(),
            backup_lag_entries: Gauge::default(),
            backup_failures: Gauge::default(),
            backup_prune_failures: Gauge::default(),
            backup_last_success: Gauge::default(),
            backup_restore_point_age: Gauge::default(),
            backup_cpu: Gauge::default(),
            traffic: Arc::default(),
            registry: parking_lot::Mutex::new(Registry::default()),
        };
        registry.register(
            "open_streams",
            "Server-side streams (watch, batch) whose task still runs, by kind",
            metrics.open_streams.clone(),
        );
        registry.register("raft_term", "Current Raft term", metrics.term.clone());
        registry.register(
            "raft_is_leader",
            "1 if this node is the leader",
            metrics.is_leader.clone(),
        );
        registry.register(
            "raft_commit_index",
            "Highest committed log index known here",
            metrics.commit_index.clone(),
        );
        registry.register(
            "raft_applied_index",
            "Highest applied log index",
            metrics.applied_index.clone(),
        );
        registry.register(
            "apply_version",
            "The apply version the cluster follows, as applied here",
            metrics.apply_version.clone(),
        );
        registry.register(
            "apply_version_implemented",
            "The highest apply version this node's release implements",
            metrics.implemented_apply_version.clone(),
        );
        registry.register(
            "raft_last_log_index",
            "Last log index in this node's log",
            metrics.last_log_index.clone(),
        );
        registry.register(
            "replication_lag_entries",
            "Entries a follower is behind (leader only)",
            metrics.lag_entries.clone(),
        );
        registry.register(
            "replication_lag_seconds",
            "Seconds since a follower last acknowledged (leader only)",
            metrics.lag_seconds.clone(),
        );
        registry.register(
            "snapshot_sent_bytes",
            "Snapshot bytes sent to followers",
            metrics.snapshot_sent.clone(),
        );
        registry.register(
            "snapshot_received_bytes",
            "Snapshot bytes received from a leader",
            metrics.snapshot_received.clone(),
        );
        registry.register(
            "snapshot_failed_attempts",
            "Snapshot transfers to a follower that failed and are tried again",
            metrics.snapshot_failed_attempts.clone(),
        );
        registry.register(
            "log_received_bytes",
            "Bytes of log entries and heartbeats received from a leader",
            metrics.log_received.clone(),
        );
        registry.register(
            "log_fsyncs",
            "fsyncs of the Raft log",
            metrics.log_fsyncs.clone(),
        );
        registry.register(
            "log_fsync_seconds",
            "Total seconds spent in Raft log fsyncs",
            metrics.log_fsync_seconds.clone(),
        );
        registry.register(
            "engine_compactions",
            "Engine compactions run",
            metrics.compactions.clone(),
        );
        registry.register(
            "engine_write_stalls",
            "Engine write slowdowns and stops",
            metrics.write_stalls.clone(),
        );
        registry.register(
            "engine_flushes",
            "Engine memtable flushes",
            metrics.flushes.clone(),
        );
        registry.register(
            "learner_lag_exceeded",
            "1 while a learner (e.g. a DR standby) lags more than learner_max_lag_ms (leader only)",
            metrics.learner_lag_exceeded.clone(),
        );
        registry.register(
            "backup_shipped_index",
            "Highest log index in the backup chain (as this node last shipped it)",
            metrics.backup_shipped_index.clone(),
        );
        registry.register(
            "backup_lag_entries",
            "Applied entries not yet in the backup chain: its recovery point (leader only)",
            metrics.backup_lag_entries.clone(),
        );
        registry.register(
            "backup_failures",
            "Backup rounds that failed",
            metrics.backup_failures.clone(),
        );
        registry.register(
            "backup_prune_failures",
            "Prunes of the backup chain by retention that failed",
            metrics.backup_prune_failures.clone(),
        );
        registry.register(
            "backup_last_success_timestamp_seconds",
            "Unix time of the last successful backup round (0: none)",
            metrics.backup_last_success.clone(),
        );
        registry.register(
            "backup_restore_point_age_seconds",
            "Age of the newest restore point in the backup chain: the writes a restore would lose now (-1: none yet)",
            metrics.backup_restore_point_age.clone(),
        );
        registry.register(
            "backup_cpu_seconds",
            "CPU time this member has spent shipping backups (its rounds and its object store client)",
            metrics.backup_cpu.clone(),
        );
        *metrics.registry.lock() = registry;
        Arc::new(metrics)
    }

    /// Records whether learner `peer` is past its lag bound.
    pub fn set_learner_lag_exceeded(&self, peer: u64, exceeded: bool) {
        self.learner_lag_exceeded
            .get_or_create(&PeerLabels {
                peer: peer.to_string(),
            })
            .set(i64::from(exceeded));
    }

    /// Reports the backup shipper's status from now on.
    pub fn set_backup(&self, status: Arc<BackupStatus>) {
        let _ = self.backup.set(status);
    }

    /// The backup shipper's status, if this member ships backups.
    pub fn backup(&self) -> Option<&Arc<BackupStatus>> {
        self.backup.get()
    }

    /// Forgets learner lag flags (this node no longer leads).
    pub fn clear_learner_lag(&self) {
        self.learner_lag_exceeded.clear();
    }

    /// Counts a server-side stream of `kind` as open until the guard drops
    /// (when the stream's task ends, however it ends).
    pub fn open_stream(&self, kind: &'static str) -> OpenStream {
        let gauge = self
            .open_streams
            .get_or_create(&StreamLabels { kind })
            .clone();
        gauge.inc();
        OpenStream { gauge }
    }

    /// Server-side streams of `kind` open now.
    pub fn open_streams(&self, kind: &'static str) -> i64 {
        self.open_streams
            .get_or_create(&StreamLabels { kind })
            .get()
    }

    /// Starts timing a request of `method`; record the outcome with [`Timer::finish`].
    pub fn start(&self, method: &'static str) -> Timer<'_> {
        Timer {
            metrics: self,
            method,
            started: Instant::now(),
        }
    }

    /// The text exposition, with node figures read now.
    pub fn render(&self, node: &Node) -> String {
        let m = node.metrics();
        self.term.set(m.current_term as i64);
        self.is_leader
            .set(i64::from(m.current_leader == Some(node.id())));
        self.commit_index
            .set(m.local_committed.map_or(0, |l| l.index) as i64);
        self.applied_index
            .set(m.last_applied.map_or(0, |l| l.index) as i64);
        self.last_log_index
            .set(m.last_log_index.unwrap_or(0) as i64);
        if let Ok((version, implemented)) = node.apply_version() {
            self.apply_version.set(i64::from(version));
            self.implemented_apply_version.set(i64::from(implemented));
        }
        self.lag_entries.clear();
        self.lag_seconds.clear();
        for follower in node.followers() {
            let labels = PeerLabels {
                peer: follower.id.to_string(),
            };
            self.lag_entries
                .get_or_create(&labels)
                .set(follower.lag_entries as i64);
            let seconds = follower
                .since_ack
                .map_or(f64::INFINITY, |d| d.as_secs_f64());
            self.lag_seconds.get_or_create(&labels).set(seconds);
        }
        let transfers = node.transfer_stats();
        self.snapshot_sent
            .set(transfers.bytes_sent.load(Ordering::Relaxed) as i64);
        self.snapshot_received
            .set(transfers.bytes_received.load(Ordering::Relaxed) as i64);
        self.snapshot_failed_attempts
            .set(transfers.failed_attempts.load(Ordering::Relaxed) as i64);
        self.log_received
            .set(transfers.log_bytes_received.load(Ordering::Relaxed) as i64);
        let log = node.log_stats();
        self.log_fsyncs.set(log.fsyncs as i64);
        self.log_fsync_seconds.set(log.fsync_seconds);
        let engine = node.state().db().statistics();
        self.compactions.set(engine.compactions as i64);
        self.write_stalls
            .set((engine.write_slowdowns + engine.write_stops) as i64);
        self.flushes.set(engine.flushes as i64);
        if let Some(backup) = self.backup.get() {
            let shipped = backup.shipped_index.load(Ordering::Relaxed);
            self.backup_shipped_index.set(shipped as i64);
            let applied = m.last_applied.map_or(0, |l| l.index);
            let leads = m.current_leader == Some(node.id());
            self.backup_lag_entries.set(if leads {
                applied.saturating_sub(shipped) as i64
            } else {
                0
            });
            self.backup_failures
                .set(backup.failures.load(Ordering::Relaxed) as i64);
            self.backup_prune_failures
                .set(backup.prune_failures.load(Ordering::Relaxed) as i64);
            self.backup_cpu.set(backup.cpu_seconds());
            self.backup_last_success
                .set((backup.last_success_ms.load(Ordering::Relaxed) / 1000) as i64);
            let point = backup.restore_point_ms.load(Ordering::Relaxed);
            self.backup_restore_point_age.set(match point {
                0 => -1,
                _ => (ferry_replication::types::now_ms().saturating_sub(point) / 1000) as i64,
            });
        }
        let mut text = String::new();
        encode(&mut text, &self.registry.lock()).expect("writing to a String cannot fail");
        text
    }
}

/// One open server-side stream; see [`Metrics::open_stream`].
pub struct OpenStream {
    gauge: Gauge,
}

impl Drop for OpenStream {
    fn drop(&mut self) {
        self.gauge.dec();
    }
}

/// Times one request.
pub struct Timer<'a> {
    metrics: &'a Metrics,
    method: &'static str,
    started: Instant,
}

impl Timer<'_> {
    pub fn finish<T>(self, result: &Result<T, tonic::Status>) {
        let code = match result {
            Ok(_) => "OK".to_owned(),
            Err(status) => format!("{:?}", status.code()),
        };
        self.metrics
            .requests
            .get_or_create(&MethodLabels {
                method: self.method.to_owned(),
                code,
            })
            .inc();
        let elapsed = self.started.elapsed();
        self.metrics
            .latency
            .get_or_create(&MethodOnly {
                method: self.method.to_owned(),
            })
            .observe(elapsed.as_secs_f64());
        self.metrics
            .traffic
            .record(self.method, elapsed, result.is_ok());
    }
}
