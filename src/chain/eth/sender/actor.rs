//! The nonce actor: one task per sending wallet, the only owner of that
//! wallet's next nonce and of what its in-flight payouts reserve.
//!
//! Per batch of payouts: read the wallet's balances and nonce at one block,
//! decrypt the key, check each payout against what is left after in-flight
//! reservations, sign with consecutive nonces, and store the signed bytes
//! (before any broadcast: docs/architecture.md, "Invariants") in the one transaction that takes the
//! payouts from queued, so that a payout stays cancellable while the node or
//! the wallet store is waited for. Then broadcast in nonce order, and record the
//! accepted ones as sent with their `status=2`. A batch's broadcast runs
//! while the next batch is signed (batches still go out in nonce order, one
//! after the other), so the node admits one while the next is prepared. A
//! payout the wallet cannot cover goes to the collection wallet's actor; one
//! nobody can pay, or whose payer lacks gas, is refused with a plain-words
//! error.

use super::check::{Check, Payer, Reservation, Reserved, reservation};
use super::sign::{self, SignFor};
use super::{ActorMsg, Job, SenderDeps, broadcaster, failpoint};
use crate::backoff::{Backoff, sleep_or_shutdown};
use crate::chain::Refusal;
use crate::chain::eth::endpoints::Endpoints;
use crate::chain::eth::node::NodeError;
use crate::msg::addr_hex;
use crate::store::{SignedTx, StoreError};
use crate::wallet::WalletError;
use alloy::network::Ethereum;
use alloy::primitives::Address;
use alloy::providers::RootProvider;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

/// Payouts signed per batch.
const BATCH: usize = 512;

/// A nonce actor failure: only the message store failing stops it.
#[derive(Debug, thiserror::Error)]
pub(in crate::chain) enum ActorError {
    /// The message store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The wallet's broadcaster ended before its actor.
    #[error("the broadcaster stopped")]
    BroadcasterStopped,
    /// The wallet's broadcaster panicked.
    #[error("the broadcaster panicked: {0}")]
    BroadcasterPanicked(tokio::task::JoinError),
}

pub(super) struct Actor {
    pub wallet: Address,
    pub deps: Arc<SenderDeps>,
    pub endpoints: Endpoints,
    pub chain_id: u64,
    /// The collection wallet's actor, for payouts this wallet cannot cover.
    pub collection: Option<(Address, mpsc::Sender<ActorMsg>)>,
    next_nonce: Option<u64>,
    pub(super) inflight: BTreeMap<u64, Reservation>,
}

impl Actor {
    pub fn new(
        wallet: Address,
        deps: Arc<SenderDeps>,
        endpoints: Endpoints,
        chain_id: u64,
        collection: Option<(Address, mpsc::Sender<ActorMsg>)>,
    ) -> Self {
        Self {
            wallet,
            deps,
            endpoints,
            chain_id,
            collection,
            next_nonce: None,
            inflight: BTreeMap::new(),
        }
    }

    /// What this wallet's transactions are signed for.
    pub(super) fn sign_for(&self) -> SignFor {
        SignFor {
            chain_id: self.chain_id,
            fees: self.deps.cfg.fee_model,
        }
    }

    /// Takes batches of payouts (and replacements of stuck ones) until the
    /// channel closes or `shutdown`.
    pub async fn run(
        mut self,
        mut jobs: mpsc::Receiver<ActorMsg>,
        shutdown: CancellationToken,
    ) -> Result<(), ActorError> {
        // Tracked before anything is signed, so the watcher reports our transactions.
        let _ = self.deps.track.send(self.wallet).await;
        for (p, tx) in self
            .deps
            .store
            .in_flight(&self.deps.chain, self.wallet)
            .await?
        {
            if let Some(n) = p.nonce {
                self.inflight
                    .insert(n, reservation(&self.deps.cfg, &p, &tx));
            }
        }
        let mut batch = Vec::with_capacity(BATCH);
        // What is signed and stored goes to the broadcaster, which sends it
        // in nonce order while the next batch is signed.
        let (to_send, mut sending) = broadcaster::spawn(self.deps.clone(), self.endpoints.clone());
        let mut ended = false;
        let result = loop {
            let n = tokio::select! {
                // Shutdown first: no new batch is taken once it is asked for.
                biased;
                _ = shutdown.cancelled() => break Ok(()),
                // A broadcaster that fails (what the node said could not be
                // stored) stops the actor now, not when the next batch comes.
                done = &mut sending => {
                    ended = true;
                    break Err(broadcaster_ended(done));
                }
                n = jobs.recv_many(&mut batch, BATCH) => n,
            };
            if n == 0 {
                break Ok(());
            }
            let mut pays = Vec::with_capacity(n);
            let mut replacements = Vec::new();
            for msg in batch.drain(..) {
                match msg {
                    ActorMsg::Pay(job) => pays.push(job),
                    ActorMsg::Replace { payout, tx } => replacements.push((payout, tx, false)),
                    ActorMsg::Cancel { payout, tx } => replacements.push((payout, tx, true)),
                }
            }
            if !pays.is_empty() {
                let stored = match self.process(pays, &shutdown).await {
                    Ok(stored) => stored,
                    Err(e) => break Err(e),
                };
                if !stored.is_empty() {
                    let txs = stored.into_iter().map(|(_, t)| t).collect();
                    if to_send.send(broadcaster::Work::Send(txs)).await.is_err() {
                        ended = true;
                        break Err(broadcaster_ended((&mut sending).await));
                    }
                }
            }
            if !replacements.is_empty() {
                // A replacement goes out after what was signed before it.
                let (ack, sent) = tokio::sync::oneshot::channel();
                if to_send.send(broadcaster::Work::Flush(ack)).await.is_err() || sent.await.is_err()
                {
                    ended = true;
                    break Err(broadcaster_ended((&mut sending).await));
                }
            }
            for (payout, tx, cancel) in replacements {
                self.replace(payout, tx, cancel, &shutdown).await?;
            }
        };
        // What was signed goes out before the actor ends (and is sent again,
        // same bytes, at the next start if it does not).
        drop(to_send);
        if !ended {
            match sending.await {
                Ok(Ok(())) => {}
                done if result.is_ok() => return Err(broadcaster_ended(done)),
                _ => {}
            }
        }
        result
    }

    /// Retries `f` on the current node endpoint until it succeeds, moving to
    /// the next endpoint every third failure; `None` on shutdown.
    pub(super) async fn patiently<T, F, Fut>(
        &self,
        what: &str,
        shutdown: &CancellationToken,
        mut f: F,
    ) -> Option<T>
    where
        F: FnMut(RootProvider<Ethereum>) -> Fut,
        Fut: Future<Output = Result<T, NodeError>>,
    {
        let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(15));
        loop {
            let (index, error) = match self.endpoints.get().await {
                Ok((index, rpc)) => match f(rpc).await {
                    Ok(v) => return Some(v),
                    Err(e) => (Some(index), e.to_string()),
                },
                Err(e) => (None, e.to_string()),
            };
            let (delay, attempt) = backoff.next_delay();
            warn!(target: "m2pool::payout", wallet = %addr_hex(&self.wallet), attempt, error = %error, what,
                  "node request failed; retrying");
            if let Some(i) = index
                && attempt % 3 == 0
            {
                self.endpoints.failed(i);
            }
            if sleep_or_shutdown(delay, shutdown).await {
                return None;
            }
        }
    }

    /// Checks, signs and stores a batch; returns the stored transactions
    /// (payout id, signed bytes) in nonce order, to broadcast.
    ///
    /// Nothing is claimed while the node or the wallet store is waited for:
    /// the payouts stay queued, so a remove can cancel them until the one
    /// transaction that stores their signed bytes, which takes each only if
    /// it is still queued. A payout cancelled in the meantime is dropped and
    /// the rest signed again with the nonces closed up: no gap.
    async fn process(
        &mut self,
        mut jobs: Vec<Job>,
        shutdown: &CancellationToken,
    ) -> Result<Vec<(i64, SignedTx)>, ActorError> {
        // 1. Balances and nonce at one block, and fees.
        let mut symbols: Vec<(String, Address)> = Vec::new();
        for j in &jobs {
            let p = &j.payout;
            if self.deps.cfg.is_native(&p.symbol) || symbols.iter().any(|(s, _)| *s == p.symbol) {
                continue;
            }
            if let Some(c) = p
                .contract
                .or_else(|| self.deps.cfg.token(&p.symbol).map(|t| t.contract))
            {
                symbols.push((p.symbol.clone(), c));
            }
        }
        let wallet = self.wallet;
        let Some(view) = self
            .patiently("balances", shutdown, |rpc| {
                sign::view(rpc, wallet, &symbols)
            })
            .await
        else {
            return Ok(Vec::new());
        };
        let (ceiling, model) = (
            self.deps.cfg.payout.max_fee_per_gas,
            self.deps.cfg.fee_model,
        );
        let Some(fees) = self
            .patiently("fees", shutdown, |rpc| sign::fees(rpc, ceiling, model))
            .await
        else {
            return Ok(Vec::new());
        };
        if self.next_nonce.is_none() {
            let Some(pending) = self
                .patiently("nonce", shutdown, |rpc| sign::pending_nonce(rpc, wallet))
                .await
            else {
                return Ok(Vec::new());
            };
            let stored = self.deps.store.max_nonce(&self.deps.chain, wallet).await?;
            self.next_nonce = Some(stored.map_or(pending, |n| pending.max(n + 1)));
        }
        // Another sender (an operator's sweep, a second gateway) may have
        // used nonces meanwhile: never sign below what is already mined.
        self.next_nonce = self.next_nonce.map(|n| n.max(view.nonce));
        self.inflight.retain(|n, _| *n >= view.nonce);

        // 2. The key, decrypted for this batch only.
        let key = loop {
            match self
                .deps
                .wallets
                .signer(&self.deps.kek, &self.deps.chain, self.wallet)
                .await
                .map(|s| s.map(|s| sign::BatchKey::of(&s)))
            {
                Ok(Some(Ok(key))) => break key,
                Ok(Some(Err(e))) => {
                    error!(target: "m2pool::payout", wallet = %addr_hex(&self.wallet), error = %e, "wallet key unusable");
                    let e = format!("the key of {} cannot be used: {e}", addr_hex(&self.wallet));
                    return self.refuse_all(jobs, &e).await.map(|()| Vec::new());
                }
                Ok(None) => {
                    let e = format!("this gateway holds no key for {}", addr_hex(&self.wallet));
                    return self.refuse_all(jobs, &e).await.map(|()| Vec::new());
                }
                Err(e @ (WalletError::Crypto(_) | WalletError::Corrupt { .. })) => {
                    error!(target: "m2pool::payout", wallet = %addr_hex(&self.wallet), error = %e, "wallet key unusable");
                    let e = format!("the key of {} cannot be used: {e}", addr_hex(&self.wallet));
                    return self.refuse_all(jobs, &e).await.map(|()| Vec::new());
                }
                Err(e) => {
                    warn!(target: "m2pool::payout", error = %e, "wallet store unavailable; retrying");
                    if sleep_or_shutdown(Duration::from_secs(1), shutdown).await {
                        return Ok(Vec::new());
                    }
                }
            }
        };

        // 3. The gas of each ether payout (a contract recipient is asked).
        let mut gas: HashMap<i64, Result<u64, String>> = HashMap::new();
        for job in &jobs {
            let p = &job.payout;
            if !self.deps.cfg.is_native(&p.symbol) {
                continue;
            }
            let (from, to, value, plain) = (
                self.wallet,
                p.to,
                p.amount,
                self.deps.cfg.payout.gas_limit_eth,
            );
            match self
                .patiently("gas estimate", shutdown, |rpc| {
                    sign::ether_gas_limit(rpc, from, to, value, plain)
                })
                .await
            {
                Some(g) => gas.insert(p.id, g),
                // At shutdown nothing is taken: they stay queued.
                None => return Ok(Vec::new()),
            };
        }

        // 4. Decide and sign each, in order, then store the signed bytes
        // (before anything leaves) and the refusals in one transaction.
        let (start_nonce, start_inflight) = (self.next_nonce, self.inflight.clone());
        let (stored, forward) = loop {
            self.next_nonce = start_nonce;
            self.inflight = start_inflight.clone();
            let mut signed: Vec<(Job, u64, SignedTx)> = Vec::new();
            let mut refused: Vec<(Job, String)> = Vec::new();
            let mut forward: Vec<Job> = Vec::new();
            let mut reserved = Reserved::of(self.inflight.values());
            for job in &jobs {
                match self.payer().check(job, &view, fees, &gas, &reserved) {
                    Check::Pay(draft) => {
                        let nonce = self.next_nonce.unwrap_or(view.nonce);
                        match sign::sign(&key, self.sign_for(), &job.payout, nonce, draft, fees) {
                            Ok(stx) => {
                                let r = reservation(&self.deps.cfg, &job.payout, &stx);
                                reserved.add(&r);
                                self.inflight.insert(nonce, r);
                                self.next_nonce = Some(nonce + 1);
                                signed.push((job.clone(), nonce, stx));
                            }
                            Err(e) => refused.push((job.clone(), format!("signing failed: {e}"))),
                        }
                    }
                    Check::Forward(note) => {
                        let mut job = job.clone();
                        job.shortfall = Some(note);
                        forward.push(job);
                    }
                    Check::Refuse(e) => refused.push((job.clone(), e)),
                }
            }
            let rows: Vec<(u64, &SignedTx)> = signed.iter().map(|(_, n, t)| (*n, t)).collect();
            let refusals: Vec<Refusal<'_>> = refused
                .iter()
                .map(|(job, error)| Refusal {
                    payout: &job.payout,
                    error,
                })
                .collect();
            let gone = self
                .deps
                .facts
                .signed(self.wallet, &rows, &refusals)
                .await?;
            drop((rows, refusals));
            let taken = signed;
            if !gone.is_empty() {
                // Cancelled while we waited: without them, the nonces close up.
                info!(target: "m2pool::payout", wallet = %addr_hex(&self.wallet), cancelled = gone.len(),
                      "payouts cancelled while being prepared; the rest are signed again");
                jobs.retain(|j| !gone.contains(&j.payout.id));
                continue;
            }
            break (taken, forward);
        };
        drop(key);
        let stored: Vec<(i64, SignedTx)> = stored
            .into_iter()
            .map(|(job, nonce, stx)| {
                info!(target: "m2pool::payout", id = job.payout.id, queue_id = %job.payout.queue_id,
                      order_id = %job.payout.order_id, payer = %addr_hex(&self.wallet), nonce,
                      tx = %format!("{:#x}", stx.tx_hash), "payout signed");
                (job.payout.id, stx)
            })
            .collect();
        if !stored.is_empty() {
            // Between storing the signed bytes and the broadcast.
            failpoint("after_sign");
        }

        // 5. What this wallet cannot cover goes to the collection wallet,
        // still queued (not at shutdown: it is dispatched again at the next
        // start).
        if let Some((_, to)) = self
            .collection
            .as_ref()
            .filter(|_| !shutdown.is_cancelled())
        {
            for job in forward {
                if to.send(ActorMsg::Pay(job)).await.is_err() {
                    warn!(target: "m2pool::payout", "collection wallet's actor is gone");
                }
            }
        }
        // 6. The caller broadcasts them (see [`broadcast`]).
        Ok(stored)
    }

    /// This wallet as [`check`] sees it.
    fn payer(&self) -> Payer<'_> {
        Payer {
            wallet: self.wallet,
            collection: self.collection.as_ref().map(|(c, _)| *c),
            cfg: &self.deps.cfg,
        }
    }

    async fn refuse_all(&self, jobs: Vec<Job>, error: &str) -> Result<(), ActorError> {
        let refusals: Vec<Refusal<'_>> = jobs
            .iter()
            .map(|job| Refusal {
                payout: &job.payout,
                error,
            })
            .collect();
        self.deps.facts.refused(&refusals).await?;
        Ok(())
    }
}

/// Why the broadcaster ended before the actor: its error, or its panic.
fn broadcaster_ended(done: Result<Result<(), StoreError>, tokio::task::JoinError>) -> ActorError {
    match done {
        Ok(Err(e)) => ActorError::Store(e),
        Ok(Ok(())) => ActorError::BroadcasterStopped,
        Err(e) => ActorError::BroadcasterPanicked(e),
    }
}
