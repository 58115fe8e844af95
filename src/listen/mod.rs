//! The listen task (ListenServer): the one owner of the daemon's decisions.
//!
//! It takes routed requests from the consumers and events from the chains, and
//! applies each batch in one message-store transaction: the inbox row, the state
//! change (watches, deposits, payouts, block cursor), the outbox rows of the
//! responses it causes and the ledger movements it makes final. Only after the
//! commit are the deliveries acknowledged and the outbox relay, the ledger relay
//! and the payout senders woken (docs/architecture.md, "Invariants": no lost request, no lost response,
//! no missed deposit). Batching is what makes it fast: one fsync covers a batch.
//!
//! [`requests`] handles what business systems ask; [`blocks`] what the chains
//! report; [`facts`] (the [`Recorder`]) what the payout senders report, in
//! their own tasks. Together they are the only writer of payout state and
//! answers.

mod blocks;
mod facts;
mod recent;
mod requests;
mod tokens;
mod watchset;

pub use facts::Recorder;
pub use tokens::Tokens;
pub use watchset::WatchSet;

use crate::chain::ChainEvent;
use crate::config::Config;
use crate::health::Health;
use crate::metrics::SharedMetrics;
use crate::msg::Kind;
use crate::reply::Reply;
use crate::server::Request;
use crate::store::{InboxRow, Store, StoreError, StoreTx, WatchRow};
use crate::txlog::{Line, TxLog};
use alloy::primitives::B256;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use tokio::sync::{Notify, mpsc, watch};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

/// Most requests applied in one transaction.
const REQUEST_BATCH: usize = 1024;
/// Most chain events applied in one transaction.
const CHAIN_BATCH: usize = 64;

/// The events of `batch` (emptied) grouped by network, each network's in
/// their order, the networks in the order they first appear. Networks are
/// independent (every row, cursor and watch is per network), so one
/// network's events may commit before an earlier one of another's.
fn by_network(batch: &mut Vec<ChainEvent>) -> Vec<Vec<ChainEvent>> {
    let mut groups: Vec<Vec<ChainEvent>> = Vec::new();
    for event in batch.drain(..) {
        match groups.iter_mut().find(|g| g[0].chain() == event.chain()) {
            Some(g) => g.push(event),
            None => groups.push(vec![event]),
        }
    }
    groups
}

/// A routed request and the handle that acknowledges its delivery.
#[derive(Debug)]
pub struct Inbound {
    /// The routed request.
    pub request: Request,
    /// Acknowledges the delivery after the commit; `None` when there is none.
    pub ack: Option<Box<dyn Ack>>,
}

/// The sender's handle on one request, as listen sees it: listen calls it
/// once the request's inbox row is committed. The queue module (a broker
/// delivery) and the HTTP API (a caller waiting for its answer) implement
/// it; listen knows neither.
pub trait Ack: Send + Sync + std::fmt::Debug {
    /// Whether acknowledging this request acknowledges every request of its
    /// kind handed over before it (a broker's `multiple`): listen then
    /// calls only the last of each kind in a batch, and gathers no answers
    /// for it.
    fn cumulative(&self) -> bool {
        false
    }

    /// Acknowledges this request (and, when [`Ack::cumulative`], every one
    /// of its kind before it). A failure is the implementation's to report:
    /// a broker then delivers again, which the inbox makes harmless.
    fn through(self: Box<Self>, receipt: Receipt) -> futures::future::BoxFuture<'static, ()>;
}

/// What became of a committed request.
#[derive(Debug, Default, Clone)]
pub struct Receipt {
    /// The very same body was recorded before: it moved nothing.
    pub repeat: bool,
    /// The answers it caused in this commit, in order (empty for a
    /// cumulative acknowledgement).
    pub answers: Vec<Reply>,
}

/// A listen failure; it stops the daemon.
#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    /// The message store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The config runs no network (its validation does not let this happen).
    #[error("the config runs no network")]
    NoNetwork,
}

/// Who to wake after a commit.
#[derive(Debug, Clone)]
pub struct Wakers {
    /// The outbox relay (responses queued).
    pub outbox: Arc<Notify>,
    /// The HTTP API's stream sequencer (responses queued), when it runs.
    pub stream: Arc<Notify>,
    /// The ledger relay (movements queued).
    pub ledger: Arc<Notify>,
    /// Each chain's payout sender (payouts queued, or mined ones reorganised away).
    pub payouts: HashMap<String, Arc<Notify>>,
    /// Each chain's lookback (addresses started being watched).
    pub lookback: HashMap<String, Arc<Notify>>,
}

/// What one transaction queued, to wake the right tasks after its commit.
#[derive(Debug, Default)]
struct Effects {
    /// Responses (and dead letters) queued in the outbox by this transaction.
    replies: usize,
    /// Responses not yet written to the outbox: they go in, in order, in one
    /// statement batch before the commit ([`Effects::flush`]).
    outbox: Vec<Reply>,
    movements: usize,
    payout_chains: Vec<String>,
    /// Chains with new watches to look back for.
    lookback_chains: Vec<String>,
    /// Transaction-log lines, written after the commit.
    lines: Vec<Line>,
    /// While `Some`, a copy of every response queued, for the receipt of
    /// the request being applied.
    tap: Option<Vec<Reply>>,
}

impl Effects {
    /// Queues a response; it reaches the outbox at the next [`Effects::flush`].
    fn push(&mut self, reply: Reply) {
        self.replies += 1;
        if let Some(tap) = &mut self.tap {
            tap.push(reply.clone());
        }
        self.outbox.push(reply);
    }

    /// Writes the queued responses to the outbox, in order.
    async fn flush(&mut self, tx: &mut StoreTx) -> Result<(), ListenError> {
        if self.outbox.is_empty() {
            return Ok(());
        }
        let rows: Vec<(&str, &[u8], Option<&Line>)> = self
            .outbox
            .iter()
            .map(|r| (r.kind, r.body.as_slice(), r.line.as_ref()))
            .collect();
        tx.push_outbox_many(&rows).await?;
        self.outbox.clear();
        Ok(())
    }
}

/// Due heights are stored with each deposit and payout when it is recorded:
/// when `confirm_height` differs from the one they were computed with, they
/// are computed again, so that lowering it decides what is now deep enough
/// at the next block, and raising it makes what was pending wait longer.
async fn confirm_height_changes(
    tx: &mut StoreTx,
    chain: &str,
    confirm_height: u64,
) -> Result<(), ListenError> {
    let key = format!("confirm_height.{chain}");
    let was = tx.meta(&key).await?;
    let now = confirm_height.to_string();
    if let Some(was) = was.as_deref()
        && was != now
    {
        let (deposits, payouts) = tx.recompute_dues(chain, confirm_height).await?;
        info!(target: "m2pool::listen", chain, was, now = confirm_height, deposits, payouts,
              "confirm_height changed: due heights of pending deposits and payouts computed again");
    }
    if was.as_deref() != Some(now.as_str()) {
        tx.set_meta(&key, &now).await?;
    }
    Ok(())
}

/// What listen decides by on one network, from its section of the config.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Rules {
    /// Blocks above a transaction's before it is final.
    confirm_height: u64,
    /// `stuck_payout_secs`: a payout the node refuses this long can be
    /// cancelled by giving its nonce to another transfer.
    stuck_after_ms: i64,
    /// Blocks kept to find a fork point (`block_window`).
    keep: u64,
}

impl Rules {
    fn of(evm: &crate::config::EthConfig) -> Self {
        Self {
            confirm_height: evm.confirm_height,
            stuck_after_ms: i64::try_from(evm.payout.stuck_after.as_millis()).unwrap_or(i64::MAX),
            keep: evm.block_window(),
        }
    }
}

/// The listen task's state.
pub struct Listen {
    store: Store,
    watches: HashMap<String, WatchSet>,
    /// Each network's decimals and token contracts (the contracts check
    /// payouts recorded before their contract was stored with them).
    tokens: Arc<Tokens>,
    /// Each network's confirmation depth, block window and patience.
    rules: HashMap<String, Rules>,
    /// The first network's: for a chain the config does not run.
    first_rules: Rules,
    wakers: Wakers,
    txlog: TxLog,
    metrics: SharedMetrics,
    /// Where the committed block cursor of each chain is reported.
    health: Health,
    /// Each chain's block cursor as applied (committed or in the current
    /// transaction): a watch starts there.
    cursors: HashMap<String, u64>,
    /// A dead-letter exchange is configured.
    dead_letters: bool,
    /// The last accepted topups: one of them again is a redelivery, applied
    /// as a repeat (it must not undo a remove applied since).
    recent_topups: recent::RecentHashes,
    /// Per chain, transactions whose deposits a reorganisation orphaned: a
    /// transfer of theirs is matched to its deposit when mined again even if
    /// its address was removed meanwhile (it was reported `2`; it must not
    /// end `0` while the money did arrive).
    orphaned: HashMap<String, HashSet<B256>>,
}

impl Listen {
    /// Loads the watch set from `store`.
    pub async fn new(
        store: Store,
        config: &Config,
        wakers: Wakers,
        txlog: TxLog,
        metrics: SharedMetrics,
        health: Health,
    ) -> Result<Self, ListenError> {
        let mut watches: HashMap<String, WatchSet> = config
            .networks
            .iter()
            .map(|n| {
                let symbols = n.evm.symbols().map(|(s, _)| s).collect();
                (n.name.clone(), WatchSet::new(symbols))
            })
            .collect();
        store
            .each_watch(|w, watched| {
                let known = match watches.get_mut(&w.chain) {
                    Some(set) if watched => set.insert(w.address, &w.symbol),
                    Some(set) => {
                        set.remove(w.address, &w.symbol);
                        true
                    }
                    None => false,
                };
                if !known {
                    warn!(target: "m2pool::listen", chain = %w.chain, symbol = %w.symbol,
                          address = %crate::msg::addr_hex(&w.address),
                          "stored watch names a chain or symbol the config no longer has; ignored");
                }
            })
            .await?;
        let loaded: usize = watches.values().map(WatchSet::len).sum();
        info!(target: "m2pool::listen", watches = loaded, "watch set loaded");
        let compacted = store.compact_watches(loaded).await?;
        if compacted > 0 {
            info!(target: "m2pool::listen", removed = compacted, "watch log compacted");
        }
        let mut orphaned = HashMap::new();
        let mut tx = store.begin().await?;
        for n in &config.networks {
            let txs: HashSet<B256> = tx
                .orphaned_deposit_txs(&n.name)
                .await?
                .into_iter()
                .collect();
            orphaned.insert(n.name.clone(), txs);
            confirm_height_changes(&mut tx, &n.name, n.evm.confirm_height).await?;
        }
        tx.commit().await?;
        // The committed cursor is what `/healthz` shows, from the start on.
        let mut cursors = HashMap::new();
        for chain in config.net_names() {
            if let Some(cursor) = store.recent_blocks(&chain, 1).await?.first() {
                health.chain(&chain, |h| h.cursor = Some(cursor.number));
                cursors.insert(chain, cursor.number);
            }
        }
        // What the broker can redeliver is at most `prefetch` per consumer;
        // a generous multiple of it is kept.
        let prefetch = config
            .rmq
            .as_ref()
            .map_or(crate::config::DEFAULT_PREFETCH, |r| r.prefetch);
        let keep_topups = 4 * usize::from(prefetch).max(4096);
        let mut recent_topups = recent::RecentHashes::new(keep_topups);
        let recent = store
            .recent_topups(u32::try_from(keep_topups).unwrap_or(u32::MAX))
            .await?;
        for hash in recent.into_iter().rev() {
            recent_topups.push(hash);
        }
        let listen = Self {
            store,
            watches,
            tokens: Arc::new(Tokens::new(config)),
            rules: config
                .networks
                .iter()
                .map(|n| (n.name.clone(), Rules::of(&n.evm)))
                .collect(),
            first_rules: Rules::of(&config.networks.first().ok_or(ListenError::NoNetwork)?.evm),
            wakers,
            txlog,
            metrics,
            health,
            cursors,
            dead_letters: config
                .rmq
                .as_ref()
                .is_some_and(|r| r.dead_letter_exchange.is_some()),
            recent_topups,
            orphaned,
        };
        listen.count_watches();
        Ok(listen)
    }

    /// The recorder the payout senders report to: with listen, the only
    /// writer of payout state and answers.
    pub fn recorder(&self) -> Recorder {
        Recorder::new(
            self.store.clone(),
            self.tokens.clone(),
            [self.wakers.outbox.clone(), self.wakers.stream.clone()],
            self.metrics.clone(),
        )
    }

    /// The rules of network `chain` (one the config does not run has none:
    /// the first network's then, and a log).
    fn rules(&self, chain: &str) -> Rules {
        self.rules.get(chain).copied().unwrap_or_else(|| {
            warn!(target: "m2pool::listen", chain, "no settings for this network; using the first network's");
            self.first_rules
        })
    }

    /// Applies requests and chain events until both inputs are done. At
    /// `shutdown` the requests already handed over are committed (and
    /// acknowledged) and no more are taken; chain events are taken until the
    /// chains, which stop at shutdown too, close their channel.
    ///
    /// No chain event is applied before `caught_up` says the topup and remove
    /// requests queued at start are handed over (or its sender is gone): a
    /// deposit must not be read before the topup that asks for it.
    pub async fn run(
        mut self,
        mut requests: mpsc::Receiver<Inbound>,
        mut chain: mpsc::Receiver<ChainEvent>,
        mut caught_up: watch::Receiver<bool>,
        shutdown: CancellationToken,
    ) -> Result<(), ListenError> {
        let mut reqs = Vec::with_capacity(REQUEST_BATCH);
        let mut events = Vec::with_capacity(CHAIN_BATCH);
        let (mut reqs_open, mut chain_open) = (true, true);
        let mut gate_open = *caught_up.borrow_and_update();
        while reqs_open || chain_open {
            tokio::select! {
                biased;
                _ = shutdown.cancelled(), if reqs_open => {
                    reqs_open = false;
                    // Blocks wait for the next start if the requests queued
                    // at this one were not all read.
                    chain_open &= gate_open;
                    while let Ok(inbound) = requests.try_recv() {
                        reqs.push(inbound);
                    }
                    if !reqs.is_empty() {
                        self.apply_requests(&mut reqs).await?;
                    }
                }
                changed = caught_up.changed(), if !gate_open => {
                    if changed.is_ok() && !*caught_up.borrow_and_update() {
                        continue;
                    }
                    // What was handed over before the gate opened is in the
                    // channel now: apply it before any block.
                    gate_open = true;
                    while let Ok(inbound) = requests.try_recv() {
                        reqs.push(inbound);
                        if reqs.len() == REQUEST_BATCH {
                            self.apply_requests(&mut reqs).await?;
                        }
                    }
                    if !reqs.is_empty() {
                        self.apply_requests(&mut reqs).await?;
                    }
                }
                n = chain.recv_many(&mut events, CHAIN_BATCH), if chain_open && gate_open => {
                    if n == 0 {
                        chain_open = false;
                    } else {
                        // One commit per network: a network's answers go out
                        // while the next network's blocks are applied.
                        for mut run in by_network(&mut events) {
                            self.apply_chain(&mut run).await?;
                        }
                    }
                }
                n = requests.recv_many(&mut reqs, REQUEST_BATCH), if reqs_open => {
                    if n == 0 {
                        reqs_open = false;
                    } else {
                        self.apply_requests(&mut reqs).await?;
                    }
                }
            }
        }
        debug!(target: "m2pool::listen", "listen stopped");
        Ok(())
    }

    async fn apply_requests(&mut self, batch: &mut Vec<Inbound>) -> Result<(), ListenError> {
        let mut tx = self.store.begin().await?;
        let mut fx = Effects::default();
        // The inbox rows of the whole batch go in first. A body recorded
        // before (a broker redelivery, or a business system sending the very
        // same message again) is applied as a repeat: every request is
        // idempotent, so a repeat moves nothing and answers with the current
        // state (docs/architecture.md, "Invariants": no double payout), and a topup sent again after a remove watches
        // the address again.
        let rows: Vec<InboxRow<'_>> = batch
            .iter()
            .map(|i| {
                let r = &i.request;
                let (outcome, error) = requests::inbox_outcome(r);
                InboxRow {
                    kind: r.kind.as_str(),
                    body_hash: &r.body_hash,
                    body: &r.body,
                    outcome,
                    error,
                }
            })
            .collect();
        let mut new = tx.record_requests(&rows).await?;
        // Where their answers go (docs/architecture.md, "Webhooks"): kept
        // before anything answers them.
        let targets: Vec<(&[u8; 32], &str)> = batch
            .iter()
            .filter_map(|i| i.request.notify.as_ref())
            .map(|n| (&n.target, n.url.as_str()))
            .collect();
        if !targets.is_empty() {
            tx.set_notify_targets(&targets).await?;
        }
        let mut adds = Vec::new();
        let mut payouts =
            requests::NewPayouts::for_batch(&mut tx, batch.iter().map(|i| &i.request)).await?;
        let mut receipts = Vec::with_capacity(batch.len());
        for inbound in batch.iter() {
            let r = &inbound.request;
            // Accepted topups are always recorded anew (not looked up by
            // body): a recent one again is a redelivery all the same.
            let repeat = if matches!(r.routed, crate::server::Routed::Watch(_)) {
                let seen = self.recent_topups.contains(&r.body_hash);
                self.recent_topups.push(r.body_hash);
                seen
            } else {
                !new.remove(&r.body_hash)
            };
            if repeat {
                debug!(target: "m2pool::listen", kind = %r.kind, "request seen before; applied as a repeat");
            }
            // A caller waiting for this very request gets its answers.
            let tapped = inbound.ack.as_ref().is_some_and(|a| !a.cumulative());
            fx.tap = tapped.then(Vec::new);
            self.apply_request(&mut tx, r, repeat, &mut adds, &mut payouts, &mut fx)
                .await?;
            receipts.push(Receipt {
                repeat,
                answers: fx.tap.take().unwrap_or_default(),
            });
        }
        self.add_watches(&mut tx, &mut adds, &mut fx).await?;
        payouts.write(&mut tx).await?;
        drop((adds, payouts));
        fx.flush(&mut tx).await?;
        tx.commit().await?;
        self.wake(&fx);
        // One acknowledgement per consumer covers the batch: each consumer
        // hands its deliveries over in order, so every delivery up to the last
        // one of this batch is committed (`multiple`). A delivery of a channel
        // that has since been replaced fails to ack and is redelivered, which
        // the inbox makes harmless.
        let mut last: HashMap<Kind, Box<dyn Ack>> = HashMap::new();
        let mut each = Vec::new();
        for (inbound, receipt) in batch.drain(..).zip(receipts) {
            match inbound.ack {
                Some(a) if a.cumulative() => {
                    last.insert(inbound.request.kind, a);
                }
                Some(a) => each.push(a.through(receipt)),
                None => {}
            }
        }
        let cumulative = last.into_values().map(|a| a.through(Receipt::default()));
        futures::future::join_all(cumulative.chain(each)).await;
        // The broker sends more as soon as it has the acks; the log lines
        // (queued to their writer) come after.
        self.log_lines(std::mem::take(&mut fx.lines)).await;
        Ok(())
    }

    async fn apply_chain(&mut self, batch: &mut Vec<ChainEvent>) -> Result<(), ListenError> {
        let started = std::time::Instant::now();
        let blocks = batch.len().max(1) as u32;
        let mut tx = self.store.begin().await?;
        let mut fx = Effects::default();
        let mut moved: HashMap<std::sync::Arc<str>, u64> = HashMap::new();
        for event in batch.drain(..) {
            let cursor = match &event {
                ChainEvent::Block { chain, block, .. } => Some((chain.clone(), block.number)),
                ChainEvent::Reorg { chain, fork } => Some((chain.clone(), fork.number)),
                ChainEvent::Lookback { .. } => None,
            };
            self.apply_event(&mut tx, event, &mut fx).await?;
            if let Some((chain, cursor)) = cursor {
                self.cursors.insert(chain.to_string(), cursor);
                moved.insert(chain, cursor);
            }
        }
        fx.flush(&mut tx).await?;
        tx.commit().await?;
        // Only what is committed is the cursor (a block handed over but not
        // yet applied would be read again after a crash).
        for (chain, cursor) in moved {
            self.health.chain(&chain, |h| h.cursor = Some(cursor));
        }
        let per_block = started.elapsed() / blocks;
        for _ in 0..blocks {
            self.metrics.block_apply.observe(per_block);
        }
        self.wake(&fx);
        self.log_lines(fx.lines).await;
        Ok(())
    }

    /// Appends the watches of `adds` to the store's watch log, each with its
    /// chain's cursor (where its lookback counts back from), and empties it.
    async fn add_watches(
        &self,
        tx: &mut StoreTx,
        adds: &mut Vec<&WatchRow>,
        fx: &mut Effects,
    ) -> Result<(), ListenError> {
        if adds.is_empty() {
            return Ok(());
        }
        let rows: Vec<(&WatchRow, Option<u64>)> = adds
            .iter()
            .map(|w| (*w, self.cursors.get(&w.chain).copied()))
            .collect();
        tx.add_watches(&rows).await?;
        for w in adds.drain(..) {
            if !fx.lookback_chains.contains(&w.chain) {
                fx.lookback_chains.push(w.chain.clone());
            }
        }
        Ok(())
    }

    async fn log_lines(&self, lines: Vec<Line>) {
        for l in lines {
            self.txlog.write(l).await;
        }
    }

    /// Publishes the watch set's size to the metrics.
    fn count_watches(&self) {
        let n: usize = self.watches.values().map(WatchSet::len).sum();
        self.metrics
            .watched
            .store(n as u64, std::sync::atomic::Ordering::Relaxed);
    }

    fn wake(&self, fx: &Effects) {
        if fx.replies > 0 {
            self.wakers.outbox.notify_one();
            self.wakers.stream.notify_one();
        }
        if fx.movements > 0 {
            self.wakers.ledger.notify_one();
        }
        for chain in &fx.payout_chains {
            if let Some(w) = self.wakers.payouts.get(chain) {
                w.notify_one();
            }
        }
        for chain in &fx.lookback_chains {
            if let Some(w) = self.wakers.lookback.get(chain) {
                w.notify_one();
            }
        }
    }
}

#[cfg(test)]
mod tests;
