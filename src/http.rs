//! The health and metrics endpoint (off unless `http_config.listen` is set):
//! `GET /healthz` (JSON; 503 when degraded) and `GET /metrics` (Prometheus).
//!
//! `/healthz` is degraded while the broker or a node is unreachable, a head
//! has stalled, the block cursor trails the head or responses wait too long
//! for the broker ([`crate::health::problems`]); it lists why in `problems`.
//!
//! A deliberately small HTTP/1.1 responder: one request per connection, GET
//! only, no body. It reads its figures from the shared health state, the
//! metrics, the message store and the internal channels (through weak handles,
//! so it never keeps a channel open at shutdown).

use crate::chain::ChainEvent;
use crate::health::{self, Health, Limits, OutboxState, Role};
use crate::listen::Inbound;
use crate::metrics::{ChainGauge, Gauges, SharedMetrics};
use crate::store::Store;
use serde_json::json;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc::WeakSender;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

/// The endpoint failed to start.
#[derive(Debug, thiserror::Error)]
#[error("health endpoint on {addr}: {source}")]
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
    /// For backlog and state counts.
    pub store: Store,
    /// The consumers → listen channel.
    pub requests: WeakSender<Inbound>,
    /// The chains → listen channel.
    pub chain: WeakSender<ChainEvent>,
    /// When health is degraded besides lost connections.
    pub limits: Limits,
    /// The chains that run, whose payouts are counted.
    pub nets: Vec<String>,
}

impl HttpDeps {
    /// The outbox as the store reports it, or why it cannot.
    async fn outbox(&self) -> Result<OutboxState, String> {
        let (backlog, oldest_ms) = self.store.outbox_unsent().await.map_err(|e| {
            warn!(target: "m2pool::http", error = %e, "cannot read the outbox for health");
            e.to_string()
        })?;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
        Ok(OutboxState {
            backlog,
            oldest: oldest_ms.map(|t| Duration::from_millis(now.saturating_sub(t).max(0) as u64)),
        })
    }

    async fn gauges(&self) -> Gauges {
        let snap = self.health.snapshot();
        let (payouts, deposits) = self
            .store
            .state_counts(&self.nets)
            .await
            .unwrap_or_else(|e| {
                warn!(target: "m2pool::http", error = %e, "cannot read state counts for metrics");
                Default::default()
            });
        let fill = |name, cap: Option<(usize, usize)>| cap.map(|(c, m)| (name, m - c, m));
        Gauges {
            outbox_backlog: self.outbox().await.map_or(-1, |o| o.backlog),
            payouts,
            deposits,
            chains: snap
                .chains
                .iter()
                .map(|(n, c)| ChainGauge {
                    chain: n.clone(),
                    head: c.head,
                    cursor: c.cursor.unwrap_or_default(),
                    node_connected: c.node_connected,
                    stalled: c.stalled,
                })
                .collect(),
            channels: [
                fill(
                    "requests",
                    self.requests
                        .upgrade()
                        .map(|s| (s.capacity(), s.max_capacity())),
                ),
                fill(
                    "chain_events",
                    self.chain
                        .upgrade()
                        .map(|s| (s.capacity(), s.max_capacity())),
                ),
            ]
            .into_iter()
            .flatten()
            .collect(),
            broker_connected: snap.broker_connected,
            active: matches!(snap.role, Role::Active { .. }),
            lease_term: match snap.role {
                Role::Active { term } => term,
                Role::Standby => snap.lease.term,
            },
        }
    }

    /// The `/healthz` answer: 200 and `"status":"ok"`, or 503 and
    /// `"status":"degraded"` with the `problems` in plain words.
    async fn healthz(&self) -> (u16, String) {
        let snap = self.health.snapshot();
        if snap.role == Role::Standby {
            // Waiting is this instance's job: not a fault.
            let body = json!({
                "status": "standby",
                "role": "standby",
                "problems": [],
                "active": {"instance": snap.lease.holder, "term": snap.lease.term},
                "broker_connected": snap.broker_connected,
            });
            return (200, body.to_string());
        }
        let outbox = self.outbox().await;
        let problems = health::problems(&snap, &outbox, &self.limits);
        let mut chains = serde_json::Map::new();
        for (name, c) in &snap.chains {
            chains.insert(
                name.clone(),
                json!({
                    "node_connected": c.node_connected,
                    "head": c.head,
                    "cursor": c.cursor,
                    "cursor_lag": c.lag(),
                    "seconds_since_head": c.since_head().map(|d| d.as_secs()),
                    "head_stalled": self.limits.stalled(name, c).is_some(),
                }),
            );
        }
        let (backlog, oldest) = match &outbox {
            Ok(o) => (o.backlog, o.oldest.map(|d| d.as_secs())),
            Err(_) => (-1, None),
        };
        let degraded = !problems.is_empty();
        let term = match snap.role {
            Role::Active { term } => term,
            Role::Standby => 0,
        };
        let body = json!({
            "status": if degraded { "degraded" } else { "ok" },
            "role": "active",
            "term": term,
            "problems": problems,
            "broker_connected": snap.broker_connected,
            "chains": chains,
            "outbox_backlog": backlog,
            "outbox_oldest_secs": oldest,
        });
        (if degraded { 503 } else { 200 }, body.to_string())
    }
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
    info!(target: "m2pool::http", %addr, "health and metrics endpoint listening");
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            a = listener.accept() => a,
        };
        match accepted {
            Ok((sock, _)) => {
                let deps = deps.clone();
                tokio::spawn(async move {
                    if let Err(e) =
                        tokio::time::timeout(Duration::from_secs(10), respond(sock, &deps)).await
                    {
                        debug!(target: "m2pool::http", error = %e, "request timed out");
                    }
                });
            }
            Err(e) => debug!(target: "m2pool::http", error = %e, "accept failed"),
        }
    }
}

async fn respond(mut sock: TcpStream, deps: &HttpDeps) -> std::io::Result<()> {
    let mut buf = vec![0u8; 8192];
    let mut len = 0;
    while !buf[..len].windows(4).any(|w| w == b"\r\n\r\n") {
        if len == buf.len() {
            return write(&mut sock, 431, "text/plain", "request header too large").await;
        }
        let n = sock.read(&mut buf[len..]).await?;
        if n == 0 {
            return Ok(());
        }
        len += n;
    }
    let head = String::from_utf8_lossy(&buf[..len]);
    let mut parts = head.split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = path.split('?').next().unwrap_or("");
    match (method, path) {
        ("GET", "/healthz") => {
            let (status, body) = deps.healthz().await;
            write(&mut sock, status, "application/json", &body).await
        }
        ("GET", "/metrics") => {
            let body = deps.metrics.render(&deps.gauges().await);
            write(&mut sock, 200, "text/plain; version=0.0.4", &body).await
        }
        ("GET", _) => {
            write(
                &mut sock,
                404,
                "text/plain",
                "not found: try /healthz or /metrics",
            )
            .await
        }
        _ => write(&mut sock, 405, "text/plain", "only GET").await,
    }
}

async fn write(
    sock: &mut TcpStream,
    status: u16,
    content_type: &str,
    body: &str,
) -> std::io::Result<()> {
    let reason = match status {
        200 => "OK",
        404 => "Not Found",
        405 => "Method Not Allowed",
        431 => "Request Header Fields Too Large",
        _ => "Service Unavailable",
    };
    let head = format!(
        "HTTP/1.1 {status} {reason}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    );
    sock.write_all(head.as_bytes()).await?;
    sock.write_all(body.as_bytes()).await?;
    sock.shutdown().await
}
