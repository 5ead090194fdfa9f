//! The HTTP port (`--metrics-addr`): Prometheus metrics, health probes and
//! the status page.
//!
//! - `/metrics`: the OpenMetrics text ([`crate::metrics`]).
//! - `/healthz`: the process runs. `/readyz`: a leader is known, so
//!   requests can be served (503 otherwise).
//! - `/`, `/status.json`, `/login`: the status page ([`crate::status`]).

use crate::metrics::Metrics;
use crate::status::{self, StatusState};
use axum::http::StatusCode;
use axum::routing::get;
use ferry_replication::Node;
use std::sync::Arc;

/// Serves the port until `stop` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
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
    axum::serve(listener, app)
        .with_graceful_shutdown(stop)
        .await
}
