//! The status page: `GET /` on the metrics port, fed by `/status.json`.
//!
//! The page (HTML, script and style, embedded in the binary: it works
//! offline) polls `/status.json` four times a second and draws the cluster, the
//! recovery point and the observed recovery times, transfers with their
//! progress, the backup chain, the engine, traffic sparklines and alarms.
//! On a follower it shows the follower's own view and links to the
//! leader's page (whose address the leader's Raft messages carry).
//!
//! With auth on, `/status.json` wants `Authorization: Bearer TOKEN` of root
//! or of a user with the role `status`; the page asks for a name and a
//! password and gets the token from `POST /login` (`{"user", "password"}`
//! as JSON; answers `{"token", "ttl_secs"}`). The page itself holds no data.
//!
//! ## Format
//!
//! `/status.json`, version 1 (the `version` field). Within a version fields
//! are only added; scripts ignore fields they do not know. Times are ms
//! since the Unix epoch (`*_ms` that are instants) or durations in ms
//! (`lag_ms`, `rto_ms`, `elapsed_ms`, `*_contact_ms`); `null` means not
//! known here (a follower does not know its peers' progress).
//!
//! ```text
//! version            1
//! generated_ms       when the document was made
//! node               this member: id, role (leader|follower|learner|candidate),
//!                    term, leader_id, leader_status_url, commit_index,
//!                    applied_index, first_log_index, last_log_index,
//!                    leader_contact_ms
//! members[]          id, role (leader|follower|learner), kind (voter|dr_standby),
//!                    raft_addr, client_addr, status_url, matched_index,
//!                    applied_index, lag_entries, lag_ms, last_contact_ms,
//!                    health (ok|lagging|unreachable|unknown)
//! rpo.standbys[]     id, lag_ms, lag_entries, bound_ms, exceeded
//! rpo.backup         shipped_index, lag_entries, last_success_ms, failures,
//!                    bytes_shipped (null: this member ships no backups)
//! failovers[]        newest first: at_ms, from, to, term, rto_ms (null while
//!                    it lasts); see `failovers` for what is measured
//! transfers[]        peer, direction (send|receive), snapshot_index,
//!                    total_bytes, done_bytes, reused_bytes,
//!                    kind (full|differential), elapsed_ms, bytes_per_sec
//! backup_chain       checkpoint_count, newest_checkpoints[], log_first,
//!                    log_last, log_gaps[[first, last]], restorable_first,
//!                    restorable_last, newest_restore_point_ms (or null)
//! engine             table_bytes, levels[{level, files, bytes}],
//!                    compaction_debt_bytes, write_amplification,
//!                    write_stalls, stall_ms, flushes, compactions
//! traffic            interval_ms, samples_ms[], methods[{method, per_sec[],
//!                    errors_per_sec[], p99_us[]}] (one figure per sample)
//! alarms[]           severity (warning|critical), code, message
//! ```

pub mod failovers;
pub mod report;
pub mod traffic;

use crate::auth::{Credential, Gate};
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use std::sync::Arc;

const INDEX: &str = include_str!("page/index.html");
const SCRIPT: &str = include_str!("page/app.js");
const STYLE: &str = include_str!("page/style.css");

/// Only the page's own files: no inline script, nothing from elsewhere.
const POLICY: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; frame-ancestors 'none'";

/// Longest login body accepted.
const MAX_LOGIN_BYTES: usize = 4096;

#[derive(Clone)]
pub struct StatusState {
    pub sources: Arc<report::Sources>,
    pub gate: Arc<Gate>,
}

/// The page's routes.
pub fn routes() -> axum::Router<StatusState> {
    axum::Router::new()
        .route(
            "/",
            get(|| async { asset(INDEX, "text/html; charset=utf-8") }),
        )
        .route(
            "/app.js",
            get(|| async { asset(SCRIPT, "text/javascript; charset=utf-8") }),
        )
        .route(
            "/style.css",
            get(|| async { asset(STYLE, "text/css; charset=utf-8") }),
        )
        .route("/status.json", get(status_json))
        .route("/login", post(login))
}

fn asset(body: &'static str, content_type: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CONTENT_SECURITY_POLICY, POLICY),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        body,
    )
        .into_response()
}

fn json(status: StatusCode, body: String) -> Response {
    (
        status,
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        body,
    )
        .into_response()
}

fn error(status: StatusCode, message: &str) -> Response {
    json(status, serde_json::json!({ "error": message }).to_string())
}

fn refused(status: &tonic::Status) -> Response {
    let code = match status.code() {
        tonic::Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        tonic::Code::PermissionDenied => StatusCode::FORBIDDEN,
        tonic::Code::InvalidArgument => StatusCode::BAD_REQUEST,
        tonic::Code::FailedPrecondition => StatusCode::CONFLICT,
        _ => StatusCode::SERVICE_UNAVAILABLE,
    };
    error(code, status.message())
}

/// The bearer token of `headers`, if any.
fn credential(headers: &HeaderMap) -> Credential {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map_or(Credential::Anonymous, |t| {
            Credential::Token(t.trim().to_owned())
        })
}

async fn status_json(State(state): State<StatusState>, headers: HeaderMap) -> Response {
    if let Err(status) = state.gate.check_status(&credential(&headers)) {
        return refused(&status);
    }
    let sources = state.sources.clone();
    // Reading engine statistics and membership is quick, but not async.
    match tokio::task::spawn_blocking(move || serde_json::to_string(&sources.report())).await {
        Ok(Ok(body)) => json(StatusCode::OK, body),
        Ok(Err(e)) => error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
    }
}

#[derive(serde::Deserialize)]
struct Login {
    user: String,
    password: String,
}

async fn login(State(state): State<StatusState>, body: Bytes) -> Response {
    if body.len() > MAX_LOGIN_BYTES {
        return error(
            StatusCode::PAYLOAD_TOO_LARGE,
            &format!("a login is at most {MAX_LOGIN_BYTES} bytes"),
        );
    }
    let login: Login = match serde_json::from_slice(&body) {
        Ok(login) => login,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                &format!("a login is JSON {{\"user\", \"password\"}}: {e}"),
            )
        }
    };
    let (token, ttl) = match state.gate.authenticate(&login.user, &login.password).await {
        Ok(issued) => issued,
        Err(status) => return refused(&status),
    };
    // Refuse at the door a user who could not read the page anyway.
    if let Err(status) = state.gate.check_status(&Credential::Token(token.clone())) {
        return refused(&status);
    }
    json(
        StatusCode::OK,
        serde_json::json!({ "token": token, "ttl_secs": ttl.as_secs() }).to_string(),
    )
}
