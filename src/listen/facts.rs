//! The recorder: turns what the payout senders report (signed, broadcast,
//! refused, replaced) into payout state and the answers it causes, each report
//! in one message-store transaction.
//!
//! With listen's own decisions (queued, cancelled, mined, final) this is the
//! whole of what is written about a payout and told about it: chain code only
//! reports facts through [`PayoutFacts`] (docs/architecture.md, "One place
//! decides"). The recorder runs in the reporting task, so the signed bytes
//! are committed before the sender broadcasts them.

use super::tokens::Tokens;
use crate::chain::{Broadcast, PayoutFacts, Refusal};
use crate::metrics::SharedMetrics;
use crate::msg::{Status, hash_hex};
use crate::reply::{self, Reply};
use crate::store::{Payout, PayoutState, SignedTx, Store, StoreError, StoreTx};
use alloy::primitives::{Address, B256};
use futures::future::BoxFuture;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;
use tracing::{info, warn};

/// Records the payout senders' reports. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Recorder {
    store: Store,
    tokens: Arc<Tokens>,
    /// Woken after answers are queued: the outbox relay and the stream.
    outbox: [Arc<Notify>; 2],
    /// Payout broadcast latency.
    metrics: SharedMetrics,
}

impl Recorder {
    /// A recorder writing to `store`, reading decimals from `tokens`, waking
    /// the outbox relay and the stream sequencer through `outbox`.
    pub fn new(
        store: Store,
        tokens: Arc<Tokens>,
        outbox: [Arc<Notify>; 2],
        metrics: SharedMetrics,
    ) -> Self {
        Self {
            store,
            tokens,
            outbox,
            metrics,
        }
    }

    /// Commits `tx` and wakes the relay when it queued answers.
    async fn commit(&self, tx: StoreTx, replies: usize) -> Result<(), StoreError> {
        tx.commit().await?;
        if replies > 0 {
            self.outbox.iter().for_each(|n| n.notify_one());
        }
        Ok(())
    }

    /// Refuses the queued payouts among `refused`, each with its `status=0`.
    async fn refuse(&self, tx: &mut StoreTx, refused: &[Refusal<'_>]) -> Result<usize, StoreError> {
        let mut replies = Vec::new();
        for r in refused {
            let p = r.payout;
            if !tx
                .move_payout(
                    p.id,
                    PayoutState::Queued,
                    PayoutState::Refused,
                    Some(r.error),
                )
                .await?
            {
                continue;
            }
            warn!(target: "m2pool::payout", id = p.id, queue_id = %p.queue_id, order_id = %p.order_id,
                  error = r.error, "payout refused");
            replies.push(reply::payout(
                p,
                Status::Failed,
                Some(r.error.to_owned()),
                self.tokens.of_payout(p),
            ));
        }
        queue(tx, &replies).await?;
        Ok(replies.len())
    }

    async fn record_signed(
        &self,
        wallet: Address,
        signed: &[(u64, &SignedTx)],
        refused: &[Refusal<'_>],
    ) -> Result<Vec<i64>, StoreError> {
        let mut tx = self.store.begin().await?;
        let gone = tx.mark_signed_many(wallet, signed).await?;
        if !gone.is_empty() {
            // Nothing of this batch is kept: the sender signs the rest again.
            return Ok(gone);
        }
        let replies = self.refuse(&mut tx, refused).await?;
        self.commit(tx, replies).await?;
        Ok(gone)
    }

    async fn record_refused(&self, refused: &[Refusal<'_>]) -> Result<(), StoreError> {
        let mut tx = self.store.begin().await?;
        let replies = self.refuse(&mut tx, refused).await?;
        self.commit(tx, replies).await
    }

    /// A payout transaction the node took is sent, with its `status=2` if
    /// not announced yet (a cancelling transfer announces nothing); one it
    /// refused keeps the time of its first refusal and the node's words.
    async fn record_broadcast(&self, outcomes: &[Broadcast<'_>]) -> Result<(), StoreError> {
        if outcomes.is_empty() {
            return Ok(());
        }
        let mut accepted = Vec::with_capacity(outcomes.len());
        let mut paying = Vec::with_capacity(outcomes.len());
        let mut refused: Vec<(i64, String)> = Vec::new();
        for o in outcomes {
            let id = o.tx.payout_id;
            match &o.refused {
                Some(reason) => refused.push((id, reason.clone())),
                None => {
                    accepted.push(id);
                    if !o.tx.cancels {
                        paying.push(id);
                    }
                }
            }
        }
        let mut tx = self.store.begin().await?;
        tx.accepted(&accepted).await?;
        let announced = tx.take_announcements(&paying).await?;
        let replies: Vec<Reply> = announced.iter().map(|p| self.announce(p)).collect();
        queue(&mut tx, &replies).await?;
        tx.record_refusals(&refused).await?;
        self.commit(tx, replies.len()).await
    }

    /// The `status=2` of payout `p`, whose first transaction the node took.
    fn announce(&self, p: &Payout) -> Reply {
        let waited = crate::clock::now_ms().saturating_sub(p.created_at).max(0) as u64;
        self.metrics
            .payout_broadcast
            .observe(Duration::from_millis(waited));
        info!(target: "m2pool::payout", id = p.id, queue_id = %p.queue_id, order_id = %p.order_id,
              tx = %p.tx_hash.map(|h| hash_hex(&h)).unwrap_or_default(), "payout broadcast");
        reply::payout(p, Status::Pending, None, self.tokens.of_payout(p))
    }

    async fn record_replaced(&self, old: B256, new: &SignedTx) -> Result<bool, StoreError> {
        let mut tx = self.store.begin().await?;
        let current = tx.replace_tx(old, new).await?;
        tx.commit().await?;
        Ok(current)
    }
}

/// Queues `replies` in the outbox of `tx`.
async fn queue(tx: &mut StoreTx, replies: &[Reply]) -> Result<(), StoreError> {
    if replies.is_empty() {
        return Ok(());
    }
    let rows: Vec<(&str, &[u8], Option<&crate::txlog::Line>)> = replies
        .iter()
        .map(|r| (r.kind, r.body.as_slice(), r.line.as_ref()))
        .collect();
    tx.push_outbox_many(&rows).await
}

impl PayoutFacts for Recorder {
    fn restarted<'a>(&'a self, chain: &'a str) -> BoxFuture<'a, Result<u64, StoreError>> {
        Box::pin(self.store.release_claims(chain))
    }

    fn signed<'a>(
        &'a self,
        wallet: Address,
        signed: &'a [(u64, &'a SignedTx)],
        refused: &'a [Refusal<'a>],
    ) -> BoxFuture<'a, Result<Vec<i64>, StoreError>> {
        Box::pin(self.record_signed(wallet, signed, refused))
    }

    fn refused<'a>(&'a self, refused: &'a [Refusal<'a>]) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(self.record_refused(refused))
    }

    fn broadcast<'a>(
        &'a self,
        outcomes: &'a [Broadcast<'a>],
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(self.record_broadcast(outcomes))
    }

    fn replaced<'a>(
        &'a self,
        old: B256,
        new: &'a SignedTx,
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        Box::pin(self.record_replaced(old, new))
    }
}
