//! Every answer pushed to WebSocket clients (`GET /v1/stream`), in commit
//! order, each with its stream position `id`; `?after=ID` resumes after a
//! disconnect without loss or gaps.
//!
//! Outbox ids are given when a row is written, not when it commits: today
//! the store's writers take turns, but the stream does not rely on it. It
//! has positions of its own: one task, the sequencer
//! ([`sequence`]), numbers committed rows in the order it finds them, in a
//! transaction of its own, and hands them to the connected clients. A
//! client reads what it missed from the store, then follows live; when it
//! falls behind, it reads from the store again.

use super::{State, authorize};
use crate::store::{DEAD_LETTER_PREFIX, Store, StoreError, StreamRow};
use crate::webhook::Planner;
use axum::extract::Query;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::http::HeaderMap;
use axum::response::Response;
use serde::Deserialize;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{Notify, broadcast};
use tokio_util::sync::CancellationToken;
use tracing::debug;

/// Rows numbered per transaction, and read per page when catching up.
const PAGE: u32 = 1000;
/// Answers held for slow clients before they read from the store instead.
const LIVE_BUFFER: usize = 4096;
/// The sequencer looks even when not woken (a wake can be missed while it
/// works): answers are at most this late.
const IDLE_LOOK: Duration = Duration::from_secs(1);
/// The least time between two rounds that were not full: a round is a
/// transaction that takes the store's writer turn.
const PACE: Duration = Duration::from_millis(10);

/// Answers as they get their stream position.
#[derive(Debug, Clone)]
pub struct Hub {
    live: broadcast::Sender<Arc<StreamRow>>,
    wake: Arc<Notify>,
}

impl Hub {
    /// A hub the sequencer is woken for through `wake` (listen and the
    /// payout recorder notify it after committing answers).
    pub fn new(wake: Arc<Notify>) -> Self {
        Self {
            live: broadcast::channel(LIVE_BUFFER).0,
            wake,
        }
    }
}

/// The sequencer: numbers committed answers, plans their webhook
/// deliveries in the same transaction (and wakes the dispatcher through
/// `webhooks`), and hands them to the clients, until `shutdown`. A critical
/// task: a store failure stops the daemon.
pub async fn sequence(
    store: Store,
    hub: Hub,
    planner: Planner,
    webhooks: Arc<Notify>,
    shutdown: CancellationToken,
) -> Result<(), StoreError> {
    let plan = move |row: &StreamRow| planner.plan(row);
    loop {
        let rows = store.sequence_outbox(PAGE, &plan).await?;
        if rows.is_empty() {
            tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                _ = hub.wake.notified() => {}
                _ = tokio::time::sleep(IDLE_LOOK) => {}
            }
            continue;
        }
        webhooks.notify_one();
        let full = rows.len() >= PAGE as usize;
        for row in rows {
            // No client connected is no error.
            let _ = hub.live.send(Arc::new(row));
        }
        // Under a burst, answers committed meanwhile are numbered together
        // after a short pause rather than a transaction each; the first
        // answer after a quiet spell goes out at once.
        if !full && crate::backoff::sleep_or_shutdown(PACE, &shutdown).await {
            return Ok(());
        }
    }
}

/// `GET /v1/stream` query.
#[derive(Debug, Deserialize)]
pub(super) struct StreamQuery {
    /// The last position the client has; absent: only answers from now on.
    after: Option<i64>,
}

/// `GET /v1/stream[?after=ID]` (token): upgrades to a WebSocket.
pub(super) async fn connect(
    axum::extract::State(deps): State,
    headers: HeaderMap,
    Query(q): Query<StreamQuery>,
    ws: WebSocketUpgrade,
) -> Response {
    let api = match authorize(&deps, &headers) {
        Ok(a) => a,
        Err(r) => return r,
    };
    let (store, hub, shutdown) = (deps.store.clone(), api.stream.clone(), api.shutdown.clone());
    ws.on_upgrade(move |socket| async move {
        if let Err(e) = follow(socket, store, hub, q.after, shutdown).await {
            debug!(target: "m2pool::http", error = %e, "stream ended");
        }
    })
}

/// Why a stream ended.
#[derive(Debug, thiserror::Error)]
enum StreamEnd {
    #[error("client gone: {0}")]
    Client(#[from] axum::Error),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Sends the client everything after `after`, then follows live.
async fn follow(
    mut socket: WebSocket,
    store: Store,
    hub: Hub,
    after: Option<i64>,
    shutdown: CancellationToken,
) -> Result<(), StreamEnd> {
    // Subscribed before reading the store: nothing falls between the two.
    let mut live = hub.live.subscribe();
    let mut last = match after {
        Some(a) => a.max(0),
        None => store.stream_top().await?,
    };
    loop {
        // What the client misses, from the store.
        loop {
            let rows = store.stream_after(last, PAGE).await?;
            let Some(end) = rows.last().map(|r| r.seq) else {
                break;
            };
            for row in &rows {
                send(&mut socket, row).await?;
            }
            last = end;
        }
        // Then live, until the client falls behind or a position is missing.
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => {
                    let _ = socket.send(Message::Close(None)).await;
                    return Ok(());
                }
                incoming = socket.recv() => match incoming {
                    None | Some(Ok(Message::Close(_))) => return Ok(()),
                    Some(Err(e)) => return Err(e.into()),
                    Some(Ok(_)) => {}
                },
                row = live.recv() => match row {
                    Ok(row) if row.seq <= last => {}
                    Ok(row) if row.seq == last + 1 => {
                        send(&mut socket, &row).await?;
                        last = row.seq;
                    }
                    // Behind: read the store again.
                    Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => break,
                    Err(broadcast::error::RecvError::Closed) => return Ok(()),
                },
            }
        }
    }
}

/// One answer as the client gets it: `{"id": 17, "kind": "topup_resp",
/// "answer": {…}}`. Dead letters are not answers: skipped.
async fn send(socket: &mut WebSocket, row: &StreamRow) -> Result<(), StreamEnd> {
    if row.kind.starts_with(DEAD_LETTER_PREFIX) {
        return Ok(());
    }
    let answer = String::from_utf8_lossy(&row.body);
    let kind = serde_json::to_string(&row.kind).unwrap_or_default();
    let text = format!("{{\"id\":{},\"kind\":{kind},\"answer\":{answer}}}", row.seq);
    socket.send(Message::Text(text.into())).await?;
    Ok(())
}
