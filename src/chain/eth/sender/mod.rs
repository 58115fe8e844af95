//! Payouts on Ethereum: the dispatcher hands queued payouts to the nonce actor
//! of their wallet ([`actor`]), and broadcasts again, byte for byte, whatever
//! was signed but is not mined yet (at start, then every `rebroadcast_secs`).
//! A transaction signed within the last interval is left to the broadcaster
//! that has just sent it (see [`due_again`]).
//!
//! A payout is never signed twice with different nonces: the nonce, the raw
//! bytes and the hash are stored before the first broadcast, and everything
//! after that (a restart, a dropped transaction, a reorganisation) sends the
//! same bytes again. "Already known" and "nonce too low" answers are resolved by
//! looking the hash up, never by signing anew.

mod actor;
mod broadcaster;
mod check;
mod replace;
mod sign;

use crate::backoff::{Backoff, sleep_or_shutdown};
use crate::chain::eth::endpoints::Endpoints;
use crate::chain::{Broadcast, PayoutFacts};
use crate::config::EthConfig;
use crate::msg::{addr_hex, hash_hex};
use crate::store::{Payout, SignedTx, Store, StoreError};
use crate::wallet::{Kek, WalletStore};
use actor::{Actor, ActorError};
use alloy::primitives::Address;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{Notify, mpsc};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

/// Jobs waiting for one wallet's actor.
const ACTOR_QUEUE: usize = 2048;

/// What the payout side of a chain needs.
pub struct SenderDeps {
    /// Chain name.
    pub chain: Arc<str>,
    /// Ethereum settings (tokens, fees, gas limits).
    pub cfg: EthConfig,
    /// Message store.
    pub store: Store,
    /// Wallet store (keys).
    pub wallets: WalletStore,
    /// Decrypts keys.
    pub kek: Kek,
    /// Woken by listen when payouts are queued or unmined.
    pub wake: Arc<Notify>,
    /// Where what was signed, sent and refused is reported.
    pub facts: Arc<dyn PayoutFacts>,
    /// Tells the watcher about wallets to track.
    pub track: mpsc::Sender<Address>,
    /// Payouts the node refuses.
    pub metrics: crate::metrics::SharedMetrics,
    /// Where payouts the node keeps refusing are shown.
    pub health: crate::health::Health,
}

/// What a nonce actor is asked to do.
#[derive(Debug)]
pub(super) enum ActorMsg {
    /// Pay this.
    Pay(Job),
    /// This payout's current transaction is stuck: replace it (same nonce,
    /// higher fees).
    Replace {
        /// The payout.
        payout: Payout,
        /// Its current transaction.
        tx: SignedTx,
    },
    /// A remove cancels this payout, which the node keeps refusing: give its
    /// nonce to a zero-value transfer to the wallet itself.
    Cancel {
        /// The payout.
        payout: Payout,
        /// Its current transaction.
        tx: SignedTx,
    },
}

/// A payout on its way to a nonce actor.
#[derive(Debug, Clone)]
pub(super) struct Job {
    payout: Payout,
    /// What the requested wallet held, when it could not pay.
    shortfall: Option<String>,
}

/// A payout sender failure: it stops the chain.
#[derive(Debug, thiserror::Error)]
pub enum SenderError {
    /// The message store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A wallet's nonce actor failed.
    #[error("nonce actor of {wallet}: {source}")]
    Actor {
        /// The wallet.
        wallet: String,
        /// Its error.
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A wallet's nonce actor ended while the sender was running.
    #[error("nonce actor of {wallet} stopped")]
    ActorStopped {
        /// The wallet.
        wallet: String,
    },
    /// A nonce actor panicked.
    #[error("a nonce actor panicked: {0}")]
    ActorPanicked(tokio::task::JoinError),
    /// The payout sender ended while its chain was running.
    #[error("the payout sender stopped")]
    Stopped,
    /// The payout sender panicked.
    #[error("the payout sender panicked: {0}")]
    Panicked(tokio::task::JoinError),
}

/// What the node said to `tx`, as the recorder is told it.
fn outcome(tx: &SignedTx, result: Result<(), sign::SendError>) -> Broadcast<'_> {
    Broadcast {
        tx,
        refused: result.err().map(|e| e.to_string()),
    }
}

/// Whether a rebroadcast sends a transaction signed at `signed_at` (unix
/// ms) again at `now`: at the first rebroadcast of a run always (what an
/// earlier run signed may never have reached the node), and one the node
/// has `refused`; otherwise only once it is at least one `interval_ms` old.
/// A younger one was handed to its wallet's broadcaster moments ago, which
/// sends it (or is about to): sending it again would only make the node
/// check its signature twice (and, mined meanwhile, make us look it up by
/// hash), so a burst of payouts that spans a rebroadcast doubled the node's
/// work.
pub(super) fn due_again(
    signed_at: i64,
    refused: bool,
    now: i64,
    interval_ms: i64,
    first: bool,
) -> bool {
    first || refused || now.saturating_sub(signed_at) >= interval_ms
}

/// A payout the node has refused for at least `stuck_payout_secs`, in plain
/// words (for the error log and `/healthz`).
fn refused_for_long(p: &Payout, since_ms: i64, reason: &str) -> String {
    let order = if p.order_id.is_empty() {
        String::new()
    } else {
        format!(" order_id `{}`", p.order_id)
    };
    format!(
        "payout queue_id `{}`{order} from {} (nonce {}) has been refused by the node for {}s: {reason}; \
         fund the wallet, or cancel it with a remove naming its queue_id",
        p.queue_id,
        p.payer.map(|a| addr_hex(&a)).unwrap_or_default(),
        p.nonce.unwrap_or_default(),
        since_ms / 1000
    )
}

/// Dispatches queued payouts and rebroadcasts unmined ones.
pub(super) struct Sender {
    deps: Arc<SenderDeps>,
    endpoints: Endpoints,
    chain_id: u64,
    actors: HashMap<Address, mpsc::Sender<ActorMsg>>,
    running: JoinSet<(Address, Result<(), ActorError>)>,
    collection: Option<Address>,
    /// Payouts whose long refusal was logged as an error already.
    reported: HashSet<i64>,
}

impl Sender {
    pub(super) fn new(deps: SenderDeps, endpoints: Endpoints, chain_id: u64) -> Self {
        Self {
            deps: Arc::new(deps),
            endpoints,
            chain_id,
            actors: HashMap::new(),
            running: JoinSet::new(),
            collection: None,
            reported: HashSet::new(),
        }
    }

    /// Runs until `shutdown`; returns an error only when the store or an actor fails.
    pub(super) async fn run(mut self, shutdown: CancellationToken) -> Result<(), SenderError> {
        let released = self.deps.facts.restarted(&self.deps.chain).await?;
        if released > 0 {
            info!(target: "m2pool::payout", released, "claimed payouts queued again after a restart");
        }
        // Payouts need the wallet store for their keys anyway: wait for it
        // rather than run without the collection wallet.
        let mut backoff = Backoff::new(Duration::from_millis(250), Duration::from_secs(15));
        self.collection = match self.deps.cfg.payout.collection {
            Some(c) => Some(c),
            None => loop {
                match self.deps.wallets.collection(&self.deps.chain).await {
                    Ok(c) => break c,
                    Err(e) => {
                        let (delay, attempt) = backoff.next_delay();
                        warn!(target: "m2pool::payout", attempt, error = %e,
                              "cannot read the collection wallet from the wallet store; retrying");
                        if sleep_or_shutdown(delay, &shutdown).await {
                            return Ok(());
                        }
                    }
                }
            },
        };
        info!(target: "m2pool::payout", collection = ?self.collection.map(|c| format!("{c:#x}")), "payout sender ready");
        let interval = self.deps.cfg.payout.rebroadcast;
        let mut last_rebroadcast = Instant::now() - interval;
        let mut first = true;
        let mut after = 0i64;
        let result = loop {
            if last_rebroadcast.elapsed() >= interval {
                self.rebroadcast(first, &shutdown).await?;
                first = false;
                last_rebroadcast = Instant::now();
            }
            after = self.dispatch(after, &shutdown).await?;
            self.cancels(&shutdown).await?;
            let until_rebroadcast = interval.saturating_sub(last_rebroadcast.elapsed());
            tokio::select! {
                _ = shutdown.cancelled() => break Ok(()),
                _ = self.deps.wake.notified() => {}
                _ = tokio::time::sleep(until_rebroadcast.min(Duration::from_secs(5))) => {}
                Some(done) = self.running.join_next(), if !self.running.is_empty() => {
                    // Actors stop with the daemon: that is no failure.
                    if shutdown.is_cancelled() && matches!(done, Ok((_, Ok(())))) {
                        break Ok(());
                    }
                    break Err(match done {
                        Ok((wallet, Err(e))) => SenderError::Actor { wallet: addr_hex(&wallet), source: Box::new(e) },
                        Ok((wallet, Ok(()))) => SenderError::ActorStopped { wallet: addr_hex(&wallet) },
                        Err(e) => SenderError::ActorPanicked(e),
                    });
                }
            }
        };
        self.actors.clear();
        while let Some(done) = self.running.join_next().await {
            if let Ok((wallet, Err(e))) = done {
                error!(target: "m2pool::payout", wallet = %format!("{wallet:#x}"), error = %e, "nonce actor failed");
            }
        }
        result
    }

    /// The actor of `wallet`, started on first use.
    fn actor(&mut self, wallet: Address, shutdown: &CancellationToken) -> mpsc::Sender<ActorMsg> {
        if let Some(a) = self.actors.get(&wallet) {
            return a.clone();
        }
        let collection = self
            .collection
            .filter(|c| *c != wallet)
            .map(|c| (c, self.actor(c, shutdown)));
        let (tx, rx) = mpsc::channel(ACTOR_QUEUE);
        let actor = Actor::new(
            wallet,
            self.deps.clone(),
            self.endpoints.clone(),
            self.chain_id,
            collection,
        );
        let stop = shutdown.clone();
        self.running
            .spawn(async move { (wallet, actor.run(rx, stop).await) });
        debug!(target: "m2pool::payout", wallet = %format!("{wallet:#x}"), "nonce actor started");
        self.actors.insert(wallet, tx.clone());
        tx
    }

    /// Hands queued payouts with id above `after` to their wallets' actors;
    /// returns the highest id handed out.
    async fn dispatch(
        &mut self,
        mut after: i64,
        shutdown: &CancellationToken,
    ) -> Result<i64, SenderError> {
        loop {
            let queued = self
                .deps
                .store
                .queued_payouts(&self.deps.chain, after, 1000)
                .await?;
            if queued.is_empty() {
                return Ok(after);
            }
            for p in queued {
                after = after.max(p.id);
                let actor = self.actor(p.from, shutdown);
                let job = Job {
                    payout: p,
                    shortfall: None,
                };
                tokio::select! {
                    _ = shutdown.cancelled() => return Ok(after),
                    sent = actor.send(ActorMsg::Pay(job)) => if sent.is_err() {
                        warn!(target: "m2pool::payout", "a nonce actor is gone; its payouts wait for a restart");
                    },
                }
            }
        }
    }

    /// Sends every signed-but-unmined transaction again, same bytes, in nonce
    /// order per wallet; after the `first` of a run, only those the node
    /// refused or signed at least one interval ago ([`due_again`]).
    ///
    /// Payouts whose current transaction has waited longer than
    /// `stuck_payout_secs` are handed to their wallet's actor to be replaced.
    /// One the node has refused that long is also logged as an error, shown
    /// by `/healthz` and counted, until the node takes it or a remove cancels
    /// it (higher fees do not cure "insufficient funds for gas").
    async fn rebroadcast(
        &mut self,
        first: bool,
        shutdown: &CancellationToken,
    ) -> Result<(), SenderError> {
        let interval_ms =
            i64::try_from(self.deps.cfg.payout.rebroadcast.as_millis()).unwrap_or(i64::MAX);
        let read_at = crate::clock::now_ms();
        let (unmined, young): (Vec<_>, Vec<_>) = self
            .deps
            .store
            .unmined_txs(&self.deps.chain)
            .await?
            .into_iter()
            .partition(|(p, t)| {
                due_again(
                    t.signed_at,
                    p.refused_at.is_some(),
                    read_at,
                    interval_ms,
                    first,
                )
            });
        let refs: Vec<&SignedTx> = unmined.iter().map(|(_, t)| t).collect();
        let results = sign::broadcast(&self.endpoints, &refs).await;
        let outcomes: Vec<Broadcast<'_>> = refs
            .iter()
            .zip(results)
            .map(|(tx, result)| outcome(tx, result))
            .collect();
        for (o, (p, _)) in outcomes.iter().zip(&unmined) {
            if let Some(e) = &o.refused {
                warn!(target: "m2pool::payout", id = p.id, tx = %hash_hex(&o.tx.tx_hash), error = %e,
                      "rebroadcast not accepted");
            }
        }
        let accepted = outcomes.iter().filter(|o| o.refused.is_none()).count();
        if !unmined.is_empty() {
            info!(target: "m2pool::payout", sent = unmined.len(), accepted, "unmined payouts broadcast again");
        }
        self.deps.facts.broadcast(&outcomes).await?;

        let stuck_ms =
            i64::try_from(self.deps.cfg.payout.stuck_after.as_millis()).unwrap_or(i64::MAX);
        let now = crate::clock::now_ms();
        let mut refused_long = Vec::new();
        let mut replace = Vec::new();
        // Higher fees get a transaction mined that waits in the pool, or
        // that a node refuses as underpriced; the cancelling transfer is
        // never replaced by the payout's own. Young ones too, should
        // `stuck_payout_secs` be shorter than the rebroadcast interval.
        let stuck = |p: &Payout, t: &SignedTx| {
            now - t.signed_at.max(p.updated_at) >= stuck_ms && !t.cancels && p.payer.is_some()
        };
        for (o, (p, t)) in outcomes.iter().zip(&unmined) {
            match &o.refused {
                Some(reason) => {
                    let since = now - p.refused_at.unwrap_or(now);
                    if since >= stuck_ms {
                        if self.reported.insert(p.id) {
                            error!(target: "m2pool::payout", id = p.id, queue_id = %p.queue_id,
                                   order_id = %p.order_id,
                                   wallet = %p.payer.map(|a| addr_hex(&a)).unwrap_or_default(),
                                   nonce = p.nonce.unwrap_or_default(), reason = %reason,
                                   refused_secs = since / 1000,
                                   "the node keeps refusing a signed payout; later payouts of this wallet wait behind it");
                        }
                        refused_long.push(refused_for_long(p, since, reason));
                    }
                }
                None => {
                    self.reported.remove(&p.id);
                }
            }
            if stuck(p, t) {
                replace.push((p.clone(), t.clone()));
            }
        }
        for (p, t) in young.iter().filter(|(p, t)| stuck(p, t)) {
            replace.push((p.clone(), t.clone()));
        }
        self.deps.metrics.refused_payouts.store(
            refused_long.len() as u64,
            std::sync::atomic::Ordering::Relaxed,
        );
        self.deps
            .health
            .chain(&self.deps.chain, |c| c.refused_payouts = refused_long);
        drop(outcomes);
        for (p, t) in replace {
            let Some(payer) = p.payer else { continue };
            warn!(target: "m2pool::payout", id = p.id, tx = %hash_hex(&t.tx_hash),
                  "payout not mined in time; replacing it with higher fees");
            let actor = self.actor(payer, shutdown);
            tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                sent = actor.send(ActorMsg::Replace { payout: p, tx: t }) => if sent.is_err() {
                    warn!(target: "m2pool::payout", "a nonce actor is gone");
                },
            }
        }
        Ok(())
    }

    /// Hands the payouts whose cancel was asked for to their wallets' actors,
    /// to give their nonce to a zero-value transfer.
    async fn cancels(&mut self, shutdown: &CancellationToken) -> Result<(), SenderError> {
        for (p, t) in self.deps.store.cancels_to_sign(&self.deps.chain).await? {
            let Some(payer) = p.payer else { continue };
            let actor = self.actor(payer, shutdown);
            tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                sent = actor.send(ActorMsg::Cancel { payout: p, tx: t }) => if sent.is_err() {
                    warn!(target: "m2pool::payout", "a nonce actor is gone");
                },
            }
        }
        Ok(())
    }
}

/// Test-only crash points, in debug builds: the process aborts at the point
/// `M2POOL_FAILPOINT` names (`after_sign`, `after_broadcast`), so tests can
/// prove what a crash there leaves behind. Release builds have none.
pub(super) fn failpoint(name: &str) {
    if cfg!(debug_assertions) && std::env::var("M2POOL_FAILPOINT").as_deref() == Ok(name) {
        error!(target: "m2pool::payout", failpoint = name, "fail point reached: aborting");
        std::process::abort();
    }
}

#[cfg(test)]
mod tests {
    use super::due_again;

    #[test]
    fn a_rebroadcast_leaves_young_transactions_to_their_broadcaster() {
        let (now, interval) = (1_000_000, 30_000);
        // The first rebroadcast of a run sends everything, however young.
        assert!(due_again(now, false, now, interval, true));
        assert!(due_again(now - 1, false, now, interval, true));
        // Later ones what the node refused, however young ...
        assert!(due_again(now, true, now, interval, false));
        // ... and otherwise only what is at least one interval old.
        assert!(!due_again(now, false, now, interval, false));
        assert!(!due_again(now - interval + 1, false, now, interval, false));
        assert!(due_again(now - interval, false, now, interval, false));
        assert!(due_again(now - 10 * interval, false, now, interval, false));
        // A clock that went back does not make a transaction due.
        assert!(!due_again(now + 5_000, false, now, interval, false));
    }
}
