//! Running one node as a server: the Raft node, the public gRPC API with
//! health and reflection, and the HTTP metrics endpoint.

use crate::config::ServeConfig;
use crate::metrics::Metrics;
use crate::service::kv::KvService;
use crate::service::maintenance::MaintenanceService;
use crate::service::watch::WatchService;
use crate::service::Context;
use ferry_client::pb;
use ferry_replication::backup::BackupShipper;
use ferry_replication::network::NetworkControl;
use ferry_replication::types::FerryNode;
use ferry_replication::{Node, NodeConfig};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{watch, Semaphore};
// tonic's own `tcp_nodelay` applies only to listeners it binds; ours
// are bound first (to learn the port), so each accepted stream sets it:
// with Nagle on, a reply's trailing frames wait for the client's delayed
// ACK (40 ms on Linux).
use tonic::transport::server::TcpIncoming;

/// A running server.
pub struct Server {
    pub node: Arc<Node>,
    pub client_addr: SocketAddr,
    pub raft_addr: String,
    pub metrics_addr: Option<SocketAddr>,
    stop: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    backup: Option<(Arc<BackupShipper>, tokio::task::JoinHandle<()>)>,
    health: tonic_health::server::HealthReporter,
}

/// Starting failed.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("configuration: {0}")]
    Config(String),
    #[error("binding {addr}: {source}")]
    Bind {
        addr: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Node(#[from] ferry_replication::Error),
}

async fn bind(addr: &str) -> Result<tokio::net::TcpListener, StartError> {
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| StartError::Bind {
            addr: addr.to_owned(),
            source,
        })
}

impl Server {
    /// Opens the node and serves until [`Server::shutdown`].
    pub async fn start(config: ServeConfig) -> Result<Server, StartError> {
        Self::start_with_network(config, NetworkControl::default()).await
    }

    /// [`Server::start`] with the node's links to its peers switched by
    /// `network`: tests cut and delay them to stage partitions and lagging
    /// members.
    pub async fn start_with_network(
        config: ServeConfig,
        network: NetworkControl,
    ) -> Result<Server, StartError> {
        config.validate().map_err(StartError::Config)?;
        let peers = config.parsed_peers().map_err(StartError::Config)?;
        let client_listener = bind(&config.client_addr).await?;
        let client_addr = client_listener
            .local_addr()
            .map_err(|source| StartError::Bind {
                addr: config.client_addr.clone(),
                source,
            })?;
        let advertised_client = config
            .advertise_client_addr
            .clone()
            .unwrap_or_else(|| client_addr.to_string());
        let raft_listen = config
            .raft_addr
            .parse()
            .map_err(|e| StartError::Config(format!("raft address {}: {e}", config.raft_addr)))?;
        let mut node_config = NodeConfig::new(config.id, &config.data_dir, raft_listen);
        node_config.advertise_addr = config.advertise_raft_addr.clone();
        node_config.network = network;
        node_config.raft = config.raft_options();
        node_config.retention = config.retention_options();
        node_config.transfer.max_bytes_per_sec = config.snapshot_max_bytes_per_sec;
        node_config.peer_tls = config.tls.peer();
        node_config.lease.max_leases = config.limits.max_leases;
        node_config.lease.min_ttl = Duration::from_secs(config.limits.min_lease_ttl_secs);
        node_config.lease.max_ttl = Duration::from_secs(config.limits.max_lease_ttl_secs);
        let client_tls = match config.tls.client() {
            Some(tls) => Some(
                tls.reloading()
                    .map_err(|e| StartError::Config(e.to_string()))?,
            ),
            None => None,
        };
        let node = Arc::new(Node::open(node_config).await?);
        let raft_addr = node.raft_addr().to_owned();

        let initialized = node
            .raft()
            .is_initialized()
            .await
            .map_err(|e| ferry_replication::Error::Raft(e.to_string()))?;
        if !initialized && (config.init || (peers.is_empty() && !config.join)) {
            let mut members = BTreeMap::new();
            members.insert(
                config.id,
                FerryNode {
                    raft_addr: raft_addr.clone(),
                    client_addr: advertised_client.clone(),
                },
            );
            for peer in &peers {
                members.insert(
                    peer.id,
                    FerryNode {
                        raft_addr: peer.raft_addr.clone(),
                        client_addr: peer.client_addr.clone(),
                    },
                );
            }
            tracing::info!(members = members.len(), "forming a new cluster");
            node.initialize(members).await?;
        }

        let metrics = Metrics::new();
        let (stop, stopped) = watch::channel(false);
        let context = Context {
            node: node.clone(),
            limits: config.limits.clone(),
            metrics: metrics.clone(),
            stopping: stopped.clone(),
            gate: Arc::new(crate::auth::Gate::new(
                node.clone(),
                config.tls.client_cert_auth,
                Duration::from_secs(config.auth_token_ttl_secs.max(1)),
            )),
        };
        let wait_stop = |mut stopped: watch::Receiver<bool>| async move {
            let _ = stopped.wait_for(|s| *s).await;
        };
        let (health, health_service) = tonic_health::server::health_reporter();
        health
            .set_service_status("", tonic_health::ServingStatus::Serving)
            .await;
        let reflection = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
            .build_v1()
            .map_err(|e| StartError::Config(format!("reflection: {e}")))?;
        let max = config.limits.max_request_bytes;
        // One set of places for the watches of both APIs.
        let watches = crate::watch_slots::WatchSlots::new(&config.limits);
        let transfers = Arc::new(Semaphore::new(config.limits.max_transfers));
        let router = tonic::transport::Server::builder()
            .tcp_nodelay(true)
            .max_concurrent_streams(Some(config.limits.max_streams_per_connection))
            .add_service(health_service)
            .add_service(reflection)
            .add_service(
                pb::kv_server::KvServer::new(KvService {
                    context: context.clone(),
                })
                .max_decoding_message_size(max),
            )
            .add_service(
                pb::watch_server::WatchServer::new(WatchService {
                    context: context.clone(),
                    streams: watches.clone(),
                    progress_interval: Duration::from_millis(config.watch_progress_ms),
                })
                .max_decoding_message_size(max),
            )
            .add_service(
                pb::auth_server::AuthServer::new(crate::service::auth::AuthService {
                    context: context.clone(),
                })
                .max_decoding_message_size(max),
            )
            .add_service(
                pb::lease_server::LeaseServer::new(crate::service::lease::LeaseService {
                    context: context.clone(),
                })
                .max_decoding_message_size(max),
            )
            .add_service(
                pb::cluster_server::ClusterServer::new(crate::service::cluster::ClusterService {
                    context: context.clone(),
                })
                .max_decoding_message_size(max),
            )
            .add_service(
                pb::maintenance_server::MaintenanceServer::new(MaintenanceService {
                    context: context.clone(),
                    transfers: transfers.clone(),
                })
                .max_decoding_message_size(max),
            );
        let router = crate::etcd::serve(
            router,
            crate::etcd::Etcd {
                context: context.clone(),
            },
            crate::etcd::Settings {
                max_request_bytes: max,
                watches,
                progress_interval: Duration::from_millis(config.watch_progress_ms),
                client_tls: config.tls.cert_file.is_some(),
                peer_tls: config.tls.peer_cert_file.is_some(),
                transfers,
            },
        );
        let mut tasks = Vec::new();
        let grpc_stop = wait_stop(stopped.clone());
        tasks.push(tokio::spawn(async move {
            let served = match client_tls {
                Some(tls) => {
                    let incoming = ferry_replication::tls::incoming(
                        client_listener,
                        tls,
                        Vec::new(),
                        "client",
                    );
                    router
                        .serve_with_incoming_shutdown(incoming, grpc_stop)
                        .await
                }
                None => {
                    let incoming = TcpIncoming::from(client_listener).with_nodelay(Some(true));
                    router
                        .serve_with_incoming_shutdown(incoming, grpc_stop)
                        .await
                }
            };
            if let Err(error) = served {
                tracing::error!(%error, "client API stopped");
            }
        }));
        let failovers = Arc::new(crate::status::failovers::Failovers::default());
        tasks.push(tokio::spawn(
            failovers.clone().run(node.clone(), stopped.clone()),
        ));
        tasks.push(tokio::spawn(
            metrics.traffic.clone().run_sampler(stopped.clone()),
        ));
        let metrics_for_http = metrics.clone();
        let metrics_addr = if config.metrics_addr.is_empty() {
            None
        } else {
            let listener = bind(&config.metrics_addr).await?;
            let addr = listener.local_addr().ok();
            let port = match config.tls.status() {
                Some(tls) => crate::http::Port::Tls(
                    listener,
                    tls.reloading()
                        .map_err(|e| StartError::Config(e.to_string()))?,
                ),
                None => crate::http::Port::Plain(listener),
            };
            let scheme = match port {
                crate::http::Port::Tls(..) => "https",
                crate::http::Port::Plain(_) => "http",
            };
            if let Some(addr) = addr {
                node.set_status_url(status_url(scheme, addr, &advertised_client));
            }
            let status = crate::status::StatusState {
                sources: Arc::new(crate::status::report::Sources {
                    node: node.clone(),
                    metrics: metrics.clone(),
                    failovers,
                    learner_bound: (config.learner_max_lag_ms > 0)
                        .then(|| Duration::from_millis(config.learner_max_lag_ms)),
                    unreachable_after: Duration::from_millis(
                        (2 * config.election_timeout_max_ms).max(1000),
                    ),
                }),
                gate: context.gate.clone(),
            };
            let http_stop = wait_stop(stopped.clone());
            let node = node.clone();
            tasks.push(tokio::spawn(async move {
                if let Err(error) =
                    crate::http::serve(port, node, metrics_for_http, status, http_stop).await
                {
                    tracing::error!(%error, "metrics endpoint stopped");
                }
            }));
            addr
        };
        if config.learner_max_lag_ms > 0 {
            tasks.push(tokio::spawn(watch_learner_lag(
                node.clone(),
                context.metrics.clone(),
                Duration::from_millis(config.learner_max_lag_ms),
                stopped.clone(),
            )));
        }
        let backup = match config.backup_target() {
            Some(target) => {
                let target =
                    target.map_err(|e| StartError::Config(format!("backup target: {e}")))?;
                let shipper = BackupShipper::new(node.clone(), target, config.backup_options());
                context.metrics.set_backup(shipper.status().clone());
                let task = shipper.spawn();
                Some((shipper, task))
            }
            None => None,
        };
        tracing::info!(id = config.id, %client_addr, raft = %raft_addr, metrics = ?metrics_addr, data = %config.data_dir.display(), "serving");
        Ok(Server {
            node,
            client_addr,
            raft_addr,
            metrics_addr,
            stop,
            tasks,
            backup,
            health,
        })
    }

    /// Graceful stop: reports NOT_SERVING, ships a last backup round and
    /// hands leadership to a caught-up voter if this node leads, lets
    /// in-flight requests finish, stops Raft and flushes the engine.
    ///
    /// Bounded whatever the cluster does: each step has its own bound
    /// (below), so the whole stop takes at most about [`STOP_BOUND`]. A
    /// step cut short costs nothing durable: acknowledged writes are in
    /// the fsynced Raft log, and the next start replays what the engine
    /// did not flush.
    pub async fn shutdown(mut self) -> Result<(), ferry_replication::Error> {
        self.health
            .set_service_status("", tonic_health::ServingStatus::NotServing)
            .await;
        if let Some((shipper, task)) = self.backup.take() {
            task.abort();
            if self.node.is_leader() {
                // A last round, so a clean stop loses nothing to the chain.
                match tokio::time::timeout(LAST_BACKUP_BOUND, shipper.ship(false)).await {
                    Ok(Ok(report)) => tracing::info!(
                        index = report.shipped_index,
                        "backup chain shipped up to date"
                    ),
                    Ok(Err(error)) => tracing::warn!(%error, "last backup round failed"),
                    Err(_) => tracing::warn!("last backup round timed out"),
                }
            }
        }
        self.hand_over().await;
        let _ = self.stop.send(true);
        // The tasks stop together, within one grace period.
        let deadline = tokio::time::Instant::now() + STOP_GRACE;
        for task in self.tasks.drain(..) {
            let abort = task.abort_handle();
            if tokio::time::timeout_at(deadline, task).await.is_err() {
                // A connection whose client stopped reading holds the
                // graceful stop of HTTP/2 for ever: stop serving instead.
                tracing::warn!(
                    "a server task did not stop within {STOP_GRACE:?} (a client not reading?); \
                     stopping it"
                );
                abort.abort();
            }
        }
        self.node.shutdown().await
    }

    /// If this node leads, moves leadership to the most caught-up voter
    /// that acknowledged it lately, so clients fail over without waiting
    /// for an election timeout. Skipped when no voter is in contact (the
    /// hand-over could only time out), and bounded by [`HAND_OVER_BOUND`].
    async fn hand_over(&self) {
        if !self.node.is_leader() {
            return;
        }
        let voters: Vec<u64> = self
            .node
            .metrics()
            .membership_config
            .membership()
            .voter_ids()
            .collect();
        let target = self
            .node
            .followers()
            .into_iter()
            .filter(|f| voters.contains(&f.id))
            .filter(|f| f.since_ack.is_some_and(|ack| ack < IN_CONTACT))
            .max_by_key(|f| f.matched_index.unwrap_or(0));
        let Some(target) = target else {
            tracing::info!("no voter in contact; stopping without a hand-over");
            return;
        };
        match self
            .node
            .transfer_leadership(target.id, HAND_OVER_BOUND)
            .await
        {
            Ok(()) => tracing::info!(to = target.id, "handed leadership over"),
            Err(error) => tracing::warn!(%error, "leadership hand-over failed"),
        }
    }
}

/// How long a graceful stop waits for the client API (and the other
/// server tasks) to finish before it stops them.
const STOP_GRACE: Duration = Duration::from_secs(5);
/// How long a stopping leader waits for its last backup round.
const LAST_BACKUP_BOUND: Duration = Duration::from_secs(10);
/// How long a stopping leader waits for a hand-over to take effect.
const HAND_OVER_BOUND: Duration = Duration::from_secs(2);
/// A voter that acknowledged the leader within this long is worth
/// handing over to.
const IN_CONTACT: Duration = Duration::from_secs(1);
/// The longest a graceful stop takes: the steps' bounds, and the node's own
/// ([`ferry_replication::Node::shutdown`]).
pub const STOP_BOUND: Duration = Duration::from_secs(
    LAST_BACKUP_BOUND.as_secs()
        + HAND_OVER_BOUND.as_secs()
        + STOP_GRACE.as_secs()
        + ferry_replication::NODE_STOP_BOUND.as_secs(),
);

/// The status page's address as peers should link to it: the bound
/// address, with the advertised client host where it is bound to all
/// interfaces.
fn status_url(scheme: &str, bound: SocketAddr, advertised_client: &str) -> String {
    let host = if bound.ip().is_unspecified() {
        advertised_client
            .rsplit_once(':')
            .map_or(advertised_client, |(host, _)| host)
            .to_owned()
    } else {
        match bound.ip() {
            std::net::IpAddr::V6(ip) => format!("[{ip}]"),
            ip => ip.to_string(),
        }
    };
    format!("{scheme}://{host}:{}", bound.port())
}

/// While this node leads, checks every learner's time since its last
/// acknowledgement against `bound`: a disaster-recovery standby's recovery
/// point is that lag. Past the bound it sets `ferry_learner_lag_exceeded`
/// and logs a warning (again every 10 s while it lasts).
async fn watch_learner_lag(
    node: Arc<Node>,
    metrics: Arc<Metrics>,
    bound: Duration,
    mut stopped: watch::Receiver<bool>,
) {
    let mut warned: BTreeMap<u64, std::time::Instant> = BTreeMap::new();
    loop {
        tokio::select! {
            _ = stopped.wait_for(|s| *s) => return,
            _ = tokio::time::sleep(Duration::from_millis(250)) => {}
        }
        if !node.is_leader() {
            metrics.clear_learner_lag();
            warned.clear();
            continue;
        }
        let learners: Vec<u64> = node
            .metrics()
            .membership_config
            .membership()
            .learner_ids()
            .collect();
        for follower in node
            .followers()
            .into_iter()
            .filter(|f| learners.contains(&f.id))
        {
            let exceeded = follower.since_ack.is_none_or(|lag| lag > bound);
            metrics.set_learner_lag_exceeded(follower.id, exceeded);
            if !exceeded {
                warned.remove(&follower.id);
                continue;
            }
            if warned
                .get(&follower.id)
                .is_none_or(|t| t.elapsed() > Duration::from_secs(10))
            {
                tracing::warn!(
                    learner = follower.id,
                    lag_ms = follower.since_ack.map(|d| d.as_millis() as u64),
                    lag_entries = follower.lag_entries,
                    bound_ms = bound.as_millis() as u64,
                    "learner lag exceeds its bound: its recovery point is falling behind"
                );
                warned.insert(follower.id, std::time::Instant::now());
            }
        }
    }
}
