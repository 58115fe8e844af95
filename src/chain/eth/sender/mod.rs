//! Payouts on Ethereum: the dispatcher hands queued payouts to the nonce actor
//! of their wallet ([`actor`]), and broadcasts again, byte for byte, whatever
//! was signed but is not mined yet (at start, then every `rebroadcast_secs`).
//!
//! A payout is never signed twice with different nonces: the nonce, the raw
//! bytes and the hash are stored before the first broadcast, and everything
//! after that (a restart, a dropped transaction, a reorganisation) sends the
//! same bytes again. "Already known" and "nonce too low" answers are resolved by
//! looking the hash up, never by signing anew.

mod actor;
mod replace;
mod sign;

use crate::backoff::{Backoff, sleep_or_shutdown};
use crate::chain::eth::endpoints::Endpoints;
use crate::config::EthConfig;
use crate::msg::{Status, hash_hex};
use crate::reply;
use crate::store::{Payout, Store, StoreError};
use crate::wallet::{Kek, WalletStore};
use actor::{Actor, ActorError};
use alloy::primitives::Address;
use std::collections::HashMap;
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
    /// Woken after responses are queued.
    pub outbox: Arc<Notify>,
    /// Tells the watcher about wallets to track.
    pub track: mpsc::Sender<Address>,
    /// Payout broadcast latency.
    pub metrics: crate::metrics::SharedMetrics,
}

impl SenderDeps {
    /// The transfer payout `p` asks for: ether, or a token transfer on the
    /// contract recorded with it (the config's for an older row); `None`
    /// when that contract is not known.
    fn draft(&self, p: &Payout, gas_limit: u64) -> Option<sign::Draft> {
        if p.symbol == "ETH" {
            return Some(sign::Draft::ether(p.to, p.amount, gas_limit));
        }
        let contract = p
            .contract
            .or_else(|| self.cfg.token(&p.symbol).map(|t| t.contract))?;
        Some(sign::Draft::token(contract, p.to, p.amount, gas_limit))
    }

    /// Decimals of payout `p`: as recorded, else (an older row) the config's.
    fn decimals(&self, p: &Payout) -> u8 {
        p.decimals
            .or_else(|| self.cfg.decimals(&p.symbol))
            .unwrap_or(18)
    }
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
        tx: crate::store::SignedTx,
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
    /// A nonce actor stopped with an error, or panicked.
    #[error("nonce actor of {wallet}: {message}")]
    Actor {
        /// The wallet.
        wallet: String,
        /// What happened.
        message: String,
    },
}

/// Records that the node accepted payouts `ids`: sent, and `status=2` for each
/// not yet announced.
async fn announce(deps: &SenderDeps, ids: &[i64]) -> Result<(), StoreError> {
    if ids.is_empty() {
        return Ok(());
    }
    let mut tx = deps.store.begin().await?;
    let mut replies = 0;
    for id in ids {
        if let Some(p) = tx.announce(*id).await? {
            let waited = crate::store::now_ms().saturating_sub(p.created_at).max(0) as u64;
            deps.metrics
                .payout_broadcast
                .observe(Duration::from_millis(waited));
            let reply = reply::payout(&p, Status::Pending, None, deps.decimals(&p));
            tx.push_outbox(reply.kind, &reply.body).await?;
            replies += 1;
            info!(target: "m2pool::payout", id, queue_id = %p.queue_id, order_id = %p.order_id,
                  tx = %p.tx_hash.map(|h| hash_hex(&h)).unwrap_or_default(), "payout broadcast");
        }
    }
    tx.commit().await?;
    if replies > 0 {
        deps.outbox.notify_one();
    }
    Ok(())
}

/// Dispatches queued payouts and rebroadcasts unmined ones.
pub(super) struct Sender {
    deps: Arc<SenderDeps>,
    endpoints: Endpoints,
    chain_id: u64,
    actors: HashMap<Address, mpsc::Sender<ActorMsg>>,
    running: JoinSet<(Address, Result<(), ActorError>)>,
    collection: Option<Address>,
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
        }
    }

    /// Runs until `shutdown`; returns an error only when the store or an actor fails.
    pub(super) async fn run(mut self, shutdown: CancellationToken) -> Result<(), SenderError> {
        let released = self.deps.store.release_claims(&self.deps.chain).await?;
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
        let mut after = 0i64;
        let result = loop {
            if last_rebroadcast.elapsed() >= interval {
                self.rebroadcast(&shutdown).await?;
                last_rebroadcast = Instant::now();
            }
            after = self.dispatch(after, &shutdown).await?;
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
                        Ok((wallet, Err(e))) => SenderError::Actor { wallet: format!("{wallet:#x}"), message: e.to_string() },
                        Ok((wallet, Ok(()))) => SenderError::Actor { wallet: format!("{wallet:#x}"), message: "stopped".into() },
                        Err(e) => SenderError::Actor { wallet: "?".into(), message: e.to_string() },
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
    /// order per wallet.
    ///
    /// Payouts whose current transaction has waited longer than
    /// `stuck_payout_secs` are handed to their wallet's actor to be replaced.
    async fn rebroadcast(&mut self, shutdown: &CancellationToken) -> Result<(), SenderError> {
        let unmined = self.deps.store.unmined_txs(&self.deps.chain).await?;
        if unmined.is_empty() {
            return Ok(());
        }
        let refs: Vec<&crate::store::SignedTx> = unmined.iter().map(|(_, t)| t).collect();
        let results = sign::broadcast(&self.endpoints, &refs).await;
        let mut accepted = Vec::new();
        for ((p, t), r) in unmined.iter().zip(results) {
            match r {
                Ok(()) => accepted.push(p.id),
                Err(e) => {
                    warn!(target: "m2pool::payout", id = p.id, tx = %hash_hex(&t.tx_hash), error = %e,
                                "rebroadcast not accepted")
                }
            }
        }
        info!(target: "m2pool::payout", sent = unmined.len(), accepted = accepted.len(), "unmined payouts broadcast again");
        announce(&self.deps, &accepted).await?;

        let stuck_ms =
            i64::try_from(self.deps.cfg.payout.stuck_after.as_millis()).unwrap_or(i64::MAX);
        let now = crate::store::now_ms();
        for (p, t) in unmined {
            let waiting = now - t.signed_at.max(p.updated_at);
            let Some(payer) = p.payer else { continue };
            if waiting < stuck_ms {
                continue;
            }
            warn!(target: "m2pool::payout", id = p.id, tx = %hash_hex(&t.tx_hash), waiting_secs = waiting / 1000,
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
}
