//! Ethereum: follows one node over JSON-RPC (and WebSocket new heads when
//! configured) and reports blocks, transfers and reorganisations.
//!
//! The loop: read every block from the cursor to the head ([`scan`]), then wait
//! for a new-head notification ([`heads`]) or the poll interval, whichever comes
//! first. Node failures are retried without limit with a `warn` per attempt;
//! only a node on the wrong chain, or listen going away, stops it.

mod balances;
mod endpoints;
mod heads;
mod lookback;
mod node;
mod range;
mod scan;
mod sender;
mod transfers;

pub use sender::SenderError;

use crate::backoff::{Backoff, sleep_or_shutdown};
use crate::chain::{Chain, ChainContext, ChainError, ChainEvent};
use crate::config::{EthConfig, Network};
use crate::store::BlockRef;
use alloy::network::Ethereum;
use alloy::primitives::Address;
use alloy::providers::RootProvider;
use endpoints::{EndpointError, Endpoints};
use futures::future::BoxFuture;
use node::NodeError;
use scan::Scanner;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// The Ethereum chain: a watcher following the node, and the payout sender.
pub struct EthChain {
    name: Arc<str>,
    cfg: EthConfig,
    recent: Vec<BlockRef>,
    tracked: Vec<Address>,
    ctx: ChainContext,
}

impl EthChain {
    /// Prepares to follow the node of `network` from the cursor in the store.
    pub async fn new(network: &Network, ctx: ChainContext) -> Result<Self, ChainError> {
        let (name, cfg) = (network.name.as_str(), &network.evm);
        let keep = cfg.block_window();
        let recent = ctx
            .store
            .recent_blocks(name, u32::try_from(keep).unwrap_or(u32::MAX))
            .await?;
        let tracked = ctx.store.payers_in_flight(name).await?;
        Ok(Self {
            name: Arc::from(name),
            cfg: cfg.clone(),
            recent,
            tracked,
            ctx,
        })
    }

    /// Connects to a node endpoint on the expected chain, trying each in turn
    /// without limit; `None` on shutdown.
    async fn connect(
        &self,
        endpoints: &Endpoints,
        shutdown: &CancellationToken,
    ) -> Result<Option<(u64, RootProvider<Ethereum>)>, ChainError> {
        let mut backoff = Backoff::new(Duration::from_millis(250), Duration::from_secs(30));
        loop {
            let outcome = tokio::select! {
                _ = shutdown.cancelled() => return Ok(None),
                r = endpoints.get() => r,
            };
            match outcome {
                Ok((index, rpc)) => {
                    let id = endpoints.chain_id().unwrap_or_default();
                    info!(target: "m2pool::eth", chain = %self.name, chain_id = id, endpoint = index, "node connected");
                    self.ctx
                        .health
                        .chain(&self.name, |c| c.node_connected = true);
                    return Ok(Some((id, rpc)));
                }
                Err(EndpointError::WrongChain { url, expected, got }) if endpoints.len() == 1 => {
                    return Err(ChainError::WrongChain {
                        chain: self.name.to_string(),
                        url,
                        expected,
                        got,
                    });
                }
                Err(e) => {
                    let (delay, attempt) = backoff.next_delay();
                    warn!(target: "m2pool::eth", chain = %self.name, attempt, error = %e,
                          "cannot reach the node; retrying");
                    if attempt % 3 == 0 {
                        endpoints.failed(endpoints.current_index());
                    }
                    if sleep_or_shutdown(delay, shutdown).await {
                        return Ok(None);
                    }
                }
            }
        }
    }

    async fn follow(
        self: Box<Self>,
        events: mpsc::Sender<ChainEvent>,
        shutdown: CancellationToken,
    ) -> Result<(), ChainError> {
        let endpoints = Endpoints::new(
            self.name.clone(),
            self.cfg.rpc_urls(),
            self.cfg.chain_id,
            self.cfg.rpc_timeout,
            self.cfg.max_rpc_batch,
            self.cfg.broadcasts_in_flight,
        );
        let Some((chain_id, rpc)) = self.connect(&endpoints, &shutdown).await? else {
            return Ok(());
        };
        let wake = Arc::new(Notify::new());
        let helpers_stop = shutdown.child_token();
        let ws_urls = self.cfg.ws_urls();
        let heads = (!ws_urls.is_empty()).then(|| {
            tokio::spawn(heads::follow(
                self.name.clone(),
                ws_urls,
                wake.clone(),
                helpers_stop.clone(),
            ))
        });
        let (track_tx, track_rx) = mpsc::channel(1024);
        let deps = sender::SenderDeps {
            chain: self.name.clone(),
            cfg: self.cfg.clone(),
            store: self.ctx.store.clone(),
            wallets: self.ctx.wallets.clone(),
            kek: self.ctx.kek.clone(),
            wake: self.ctx.payout_wake.clone(),
            facts: self.ctx.facts.clone(),
            track: track_tx,
            metrics: self.ctx.metrics.clone(),
            health: self.ctx.health.clone(),
        };
        let mut payouts = tokio::spawn(
            sender::Sender::new(deps, endpoints.clone(), chain_id).run(helpers_stop.clone()),
        );
        let cache = lookback::EtherCache::new(self.cfg.lookback_blocks);
        let mut lookbacks = tokio::spawn(
            lookback::Lookback::new(
                self.name.clone(),
                endpoints.clone(),
                self.ctx.store.clone(),
                &self.cfg,
                cache.clone(),
                self.ctx.lookback_wake.clone(),
            )
            .run(events.clone(), helpers_stop.clone()),
        );
        let balances = tokio::spawn(balances::watch(
            self.name.clone(),
            endpoints.clone(),
            self.ctx.wallets.clone(),
            self.cfg.clone(),
            self.ctx.health.clone(),
            helpers_stop.clone(),
        ));
        let keep = self.cfg.block_window();
        let mut scanner = Scanner::new(
            self.name.clone(),
            endpoints.clone(),
            rpc,
            &self.cfg,
            self.recent,
            keep,
            self.tracked,
            track_rx,
            self.ctx.health.clone(),
            cache,
        );
        let mut backoff = Backoff::new(Duration::from_millis(250), Duration::from_secs(30));
        let result = loop {
            match scanner.catch_up(&events, &shutdown).await {
                Ok(()) => {
                    backoff.reset();
                    self.ctx
                        .health
                        .chain(&self.name, |c| c.node_connected = true);
                }
                // Listen stops taking blocks at shutdown when it has not
                // caught up with the requests yet.
                Err(NodeError::Closed) if shutdown.is_cancelled() => break Ok(()),
                Err(NodeError::Closed) => {
                    break Err(ChainError::Closed {
                        chain: self.name.to_string(),
                    });
                }
                Err(e) => {
                    let (delay, attempt) = backoff.next_delay();
                    self.ctx
                        .health
                        .chain(&self.name, |c| c.node_connected = false);
                    warn!(target: "m2pool::eth", chain = %self.name, attempt, error = %e,
                          cursor = scanner.cursor().map(|b| b.number), "node request failed; retrying");
                    if attempt % 3 == 0 {
                        endpoints.failed(endpoints.current_index());
                    }
                    if sleep_or_shutdown(delay, &shutdown).await {
                        break Ok(());
                    }
                    continue;
                }
            }
            if self.ctx.health.check_stall(&self.name, self.cfg.head_stall) {
                warn!(target: "m2pool::eth", chain = %self.name, limit_secs = self.cfg.head_stall.as_secs(),
                      "the node's head has not advanced for longer than the limit; is the node syncing?");
            }
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => break Ok(()),
                _ = wake.notified() => {}
                _ = tokio::time::sleep(self.cfg.poll_interval) => {}
                done = &mut payouts => break Err(ChainError::Sender {
                    chain: self.name.to_string(),
                    source: match done {
                        Ok(Err(e)) => e,
                        Ok(Ok(())) => SenderError::Stopped,
                        Err(e) => SenderError::Panicked(e),
                    },
                }),
                done = &mut lookbacks => break match done {
                    Ok(Ok(())) if shutdown.is_cancelled() => Ok(()),
                    Ok(Ok(())) => Err(ChainError::Closed { chain: self.name.to_string() }),
                    Ok(Err(e)) => Err(e),
                    Err(e) => Err(ChainError::Lookback { chain: self.name.to_string(), source: e }),
                },
            }
        };
        helpers_stop.cancel();
        if let Some(h) = heads {
            let _ = h.await;
        }
        let _ = balances.await;
        if !lookbacks.is_finished()
            && let Ok(Err(e)) = lookbacks.await
        {
            tracing::error!(target: "m2pool::eth", chain = %self.name, error = %e,
                            "lookback failed while stopping");
        }
        if !payouts.is_finished()
            && let Ok(Err(e)) = payouts.await
        {
            tracing::error!(target: "m2pool::eth", chain = %self.name, error = %e,
                            "payout sender failed while stopping");
        }
        result
    }
}

impl Chain for EthChain {
    fn name(&self) -> &str {
        &self.name
    }

    fn run(
        self: Box<Self>,
        events: mpsc::Sender<ChainEvent>,
        shutdown: CancellationToken,
    ) -> BoxFuture<'static, Result<(), ChainError>> {
        Box::pin(self.follow(events, shutdown))
    }
}
