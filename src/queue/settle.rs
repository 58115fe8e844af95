//! Answers without a broker: with no `rmq_config`, requests come over the
//! HTTP API only and answers reach business systems through the WebSocket
//! stream and webhooks, which the sequencer feeds from committed outbox
//! rows whatever their `sent_at`. This task does for such rows what the
//! relay does after the broker's confirm: marks them sent (so the outbox
//! backlog, its age in `/healthz` and retention mean the same as with a
//! broker) and writes their transaction-log lines.

use super::QueueError;
use crate::lease::Lease;
use crate::store::Store;
use crate::txlog::TxLog;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::debug;

/// Rows settled per round.
const BATCH: u32 = 1_000;

/// Settles committed answers until shutdown, then until listen has
/// committed its last batch (`drained`) and everything is settled.
pub async fn settle(
    store: Store,
    wake: Arc<Notify>,
    txlog: TxLog,
    lease: Lease,
    shutdown: CancellationToken,
    drained: CancellationToken,
) -> Result<(), QueueError> {
    loop {
        let rows = store.unsent(0, BATCH).await?;
        if rows.is_empty() {
            if shutdown.is_cancelled() && drained.is_cancelled() {
                return Ok(());
            }
            tokio::select! {
                _ = wake.notified() => {}
                _ = drained.cancelled(), if shutdown.is_cancelled() => {}
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
            continue;
        }
        // A deposed instance writes nothing more (its lease task stops it).
        if !lease.is_held() {
            if shutdown.is_cancelled() {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        }
        let ids: Vec<i64> = rows.iter().map(|r| r.id).collect();
        store.mark_sent(&ids).await?;
        for row in rows {
            let line = row
                .line
                .or_else(|| crate::txlog::response_line(&row.kind, &row.body));
            if let Some(line) = line {
                txlog.write(line).await;
            }
        }
        debug!(target: "m2pool::queue", settled = ids.len(), "answers settled without a broker");
    }
}
