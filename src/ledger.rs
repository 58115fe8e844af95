//! The ledger relay: applies final movements from the message store's
//! `ledger_outbox` to the wallet store, exactly once.
//!
//! Listen writes a movement in the same transaction that makes a deposit or a
//! payout final; this task applies it to the wallet store (where a movement
//! already in the ledger is skipped) and only then marks it applied. A crash in
//! between applies it again, which changes nothing. A wallet store outage only
//! delays the ledger: it is retried without limit, with a `warn` per attempt.

use crate::backoff::{Backoff, sleep_or_shutdown};
use crate::store::{Store, StoreError};
use crate::wallet::WalletStore;
use std::time::Duration;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

/// Movements applied per wallet-store transaction.
const BATCH: u32 = 500;

/// Runs until `shutdown`; only a message store failure is fatal.
pub async fn relay(
    store: Store,
    wallets: WalletStore,
    wake: std::sync::Arc<Notify>,
    shutdown: CancellationToken,
) -> Result<(), StoreError> {
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(30));
    while !shutdown.is_cancelled() {
        let pending = store.pending_ledger(BATCH).await?;
        if pending.is_empty() {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = wake.notified() => {}
                _ = tokio::time::sleep(Duration::from_secs(5)) => {}
            }
            continue;
        }
        let entries: Vec<_> = pending.iter().map(|m| m.entry.clone()).collect();
        match wallets.apply(&entries).await {
            Ok(applied) => {
                backoff.reset();
                let ids: Vec<i64> = pending.iter().map(|m| m.id).collect();
                store.mark_ledger_applied(&ids).await?;
                debug!(target: "m2pool::ledger", movements = ids.len(), applied, "ledger updated");
            }
            Err(e) => {
                let (delay, attempt) = backoff.next_delay();
                warn!(target: "m2pool::ledger", attempt, error = %e, "cannot update the wallet store's ledger; retrying");
                if sleep_or_shutdown(delay, &shutdown).await {
                    break;
                }
            }
        }
    }
    Ok(())
}
