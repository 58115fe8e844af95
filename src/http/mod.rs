//! The HTTP endpoint on `http_config.listen` (off unless set):
//! `GET /healthz` and `GET /metrics` ([`health`]) always, and with
//! `http_config.api` the HTTP API beside RabbitMQ (docs/architecture.md,
//! "HTTP API"): signed requests in ([`requests`]), state out ([`reads`]),
//! and every answer pushed over a WebSocket ([`stream`]).
//!
//! Requests over HTTP take the queues' path from the router on: the same
//! verification, the same inbox and idempotency (a request sent both ways
//! is one request), the same answers in the outbox.

// The handlers' helpers return the refusal itself as their error: a
// response is built once per request on that path, boxing it buys nothing.
#![allow(clippy::result_large_err)]

mod health;
mod reads;
mod requests;
pub mod stream;

use crate::chain::ChainEvent;
use crate::health::{Health, Limits};
use crate::listen::Inbound;
use crate::metrics::SharedMetrics;
use crate::secret::Secret;
use crate::server::Router;
use crate::store::Store;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::json;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio::sync::mpsc::WeakSender;
use tokio_util::sync::CancellationToken;
use tracing::info;

/// The endpoint failed.
#[derive(Debug, thiserror::Error)]
#[error("http endpoint on {addr}: {source}")]
pub struct HttpError {
    /// Where it was to listen.
    pub addr: SocketAddr,
    /// Why it could not.
    pub source: std::io::Error,
}

/// What the endpoint reads.
#[derive(Debug, Clone)]
pub struct HttpDeps {
    /// Connections, heads, cursors.
    pub health: Health,
    /// Counters and histograms.
    pub metrics: SharedMetrics,
    /// For backlog and state counts, and the API's reads.
    pub store: Store,
    /// The consumers → listen channel (HTTP requests take it too).
    pub requests: WeakSender<Inbound>,
    /// The chains → listen channel.
    pub chain: WeakSender<ChainEvent>,
    /// When health is degraded besides lost connections.
    pub limits: Limits,
    /// The chains that run, whose payouts are counted.
    pub nets: Vec<String>,
    /// The HTTP API, when `http_config.api` is on.
    pub api: Option<ApiDeps>,
    /// The operator console, when a console token is configured.
    pub console: Option<crate::console::Console>,
}

/// What the HTTP API needs besides [`HttpDeps`].
#[derive(Debug, Clone)]
pub struct ApiDeps {
    /// Decodes and verifies requests, as for the queues.
    pub router: Router,
    /// Decimals of each network's symbols, for rows older than the column.
    pub tokens: Arc<crate::listen::Tokens>,
    /// What reads and the stream must present; `None`: they are refused.
    pub token: Option<Arc<Secret<String>>>,
    /// Answers as they get their stream position.
    pub stream: stream::Hub,
    /// Ends WebSocket streams at shutdown.
    pub shutdown: CancellationToken,
}

/// Serves until `shutdown`.
pub async fn serve(
    addr: SocketAddr,
    deps: HttpDeps,
    shutdown: CancellationToken,
) -> Result<(), HttpError> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| HttpError { addr, source })?;
    info!(target: "m2pool::http", %addr, api = deps.api.is_some(), console = deps.console.is_some(), "http endpoint listening");
    axum::serve(listener, app(deps))
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
        .map_err(|source| HttpError { addr, source })
}

/// The routes.
fn app(deps: HttpDeps) -> axum::Router {
    let deps = Arc::new(deps);
    let mut app = axum::Router::new()
        .route("/healthz", get(health_route))
        .route("/metrics", get(metrics_route));
    if deps.api.is_some() {
        app = app
            .route("/v1/{kind}", post(requests::post))
            .route("/v1/payouts/{queue_id}", get(reads::payouts))
            .route("/v1/deposits", get(reads::deposits))
            .route("/v1/watches/{address}", get(reads::watches))
            .route("/v1/stream", get(stream::connect))
            .layer(axum::extract::DefaultBodyLimit::max(
                crate::server::MAX_BODY,
            ));
    }
    let console = deps.console.clone();
    let app = app.fallback(not_found).with_state(deps);
    match console {
        Some(c) => app.merge(crate::console::routes(c)),
        None => app,
    }
}

/// Shared state of every handler.
type State = axum::extract::State<Arc<HttpDeps>>;

async fn health_route(axum::extract::State(deps): State) -> Response {
    let (status, body) = deps.healthz().await;
    let code = StatusCode::from_u16(status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
    (code, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

async fn metrics_route(axum::extract::State(deps): State) -> Response {
    let body = deps.metrics.render(&deps.gauges().await);
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body).into_response()
}

async fn not_found() -> Response {
    (StatusCode::NOT_FOUND, "not found: try /healthz or /metrics").into_response()
}

/// A JSON answer with `code`.
fn answer(code: StatusCode, body: serde_json::Value) -> Response {
    (code, axum::Json(body)).into_response()
}

/// An error answer: `{"error": …}` with `code`.
fn refuse(code: StatusCode, error: impl std::fmt::Display) -> Response {
    answer(code, json!({ "error": error.to_string() }))
}

/// Checks the `Authorization: Bearer …` token reads and the stream need.
/// Returns the API's deps once the token checks out.
fn authorize<'d>(deps: &'d HttpDeps, headers: &HeaderMap) -> Result<&'d ApiDeps, Response> {
    let api = api_of(deps)?;
    let Some(token) = &api.token else {
        return Err(refuse(
            StatusCode::FORBIDDEN,
            "reads are off: no API token is configured (http_config.api_token_file or M2POOL_API_TOKEN)",
        ));
    };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    let same: bool =
        subtle::ConstantTimeEq::ct_eq(given.as_bytes(), token.expose().as_bytes()).into();
    if same {
        Ok(api)
    } else {
        let mut r = refuse(
            StatusCode::UNAUTHORIZED,
            "missing or wrong API token (Authorization: Bearer …)",
        );
        r.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            header::HeaderValue::from_static("Bearer"),
        );
        Err(r)
    }
}

/// The API's part of the deps; only routed when there is one.
fn api_of(deps: &HttpDeps) -> Result<&ApiDeps, Response> {
    deps.api
        .as_ref()
        .ok_or_else(|| refuse(StatusCode::NOT_FOUND, "the HTTP API is off"))
}
