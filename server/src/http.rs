//! The HTTP port (`--metrics-addr`): Prometheus metrics, health probes and
//! the status page.
//!
//! - `/metrics`: the OpenMetrics text ([`crate::metrics`]).
//! - `/healthz`: the process runs. `/readyz`: a leader is known, so
//!   requests can be served (503 otherwise).
//! - `/`, `/status.json`, `/login`: the status page ([`crate::status`]).
//!
//! With a certificate on the client port (`--cert-file`), this port speaks
//! HTTPS with the same certificate (reloaded as it changes), so that a
//! login's password and the tokens never cross the network in the clear.
//! It asks for no client certificate: browsers and scrapers have none.

use crate::metrics::Metrics;
use crate::status::{self, StatusState};
use axum::http::StatusCode;
use axum::routing::get;
use ferry_replication::Node;
use futures_util::{Stream, StreamExt};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::rustls::ServerConfig;
use tokio_rustls::server::TlsStream;

/// The port: plain HTTP, or HTTPS with a (reloading) server configuration.
pub enum Port {
    Plain(TcpListener),
    Tls(
        TcpListener,
        Arc<ferry_replication::tls::Reloading<ServerConfig>>,
    ),
}

/// TLS connections of a listener, as axum takes them.
struct TlsListener {
    connections: Pin<Box<dyn Stream<Item = std::io::Result<TlsStream<TcpStream>>> + Send>>,
    local: SocketAddr,
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            match self.connections.next().await {
                Some(Ok(stream)) => {
                    let peer = stream.get_ref().0.peer_addr().unwrap_or(self.local);
                    return (stream, peer);
                }
                // Handshake failures are logged by the acceptor.
                Some(Err(_)) => continue,
                // The acceptor stopped: nothing more will come.
                None => std::future::pending().await,
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        Ok(self.local)
    }
}

/// Serves the port until `stop` resolves.
pub async fn serve(
    port: Port,
    node: Arc<Node>,
    metrics: Arc<Metrics>,
    status: StatusState,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let ready_node = node.clone();
    let app = axum::Router::new()
        .route(
            "/metrics",
            get(move || {
                let (node, metrics) = (node.clone(), metrics.clone());
                async move {
                    (
                        [(
                            "content-type",
                            "application/openmetrics-text; version=1.0.0; charset=utf-8",
                        )],
                        metrics.render(&node),
                    )
                }
            }),
        )
        .route("/healthz", get(|| async { "ok\n" }))
        .route(
            "/readyz",
            get(move || {
                let node = ready_node.clone();
                async move {
                    match node.metrics().current_leader {
                        Some(leader) => (StatusCode::OK, format!("ready (leader {leader})\n")),
                        None => (
                            StatusCode::SERVICE_UNAVAILABLE,
                            "no leader known\n".to_owned(),
                        ),
                    }
                }
            }),
        )
        .merge(status::routes().with_state(status));
    match port {
        Port::Plain(listener) => {
            axum::serve(listener, app)
                .with_graceful_shutdown(stop)
                .await
        }
        Port::Tls(listener, config) => {
            let local = listener.local_addr()?;
            let listener = TlsListener {
                connections: Box::pin(ferry_replication::tls::incoming(
                    listener,
                    config,
                    Vec::new(),
                    "status",
                )),
                local,
            };
            axum::serve(listener, app)
                .with_graceful_shutdown(stop)
                .await
        }
    }
}
