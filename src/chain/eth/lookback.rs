//! Lookback: when an address starts being watched, the transfers to it in the
//! `lookback_blocks` blocks up to the one applied then are looked for too, so
//! that the order of a topup and its deposit does not matter within that
//! window (a backlog of topups in the broker, a reconnect, a business system
//! that publishes the topup a moment after showing the address).
//!
//! Listen records each new watch in the store's watch log with the block
//! cursor of its chain and wakes this task, which reads the new watches in
//! order, a batch at a time, off the request path:
//!
//! - tokens: `eth_getLogs` of the token's `Transfer` events with the
//!   recipient topic set to many new addresses at once (split in halves when
//!   a node refuses the size);
//! - ether: the plain transfers of the blocks the scanner read recently (kept
//!   in an [`EtherCache`]), or of blocks read again from the node.
//!
//! What it finds goes to listen as a [`ChainEvent::Lookback`]; listen counts
//! each transfer whose block is still canonical as a deposit seen, once (a
//! transfer the forward scan saw is already known), and records in the same
//! transaction how far the lookbacks have got, so a restart resumes there.
//! A lookback is sent only when the node's block at the store's cursor is the
//! store's: the node's blocks below it are then the ones applied.

use super::endpoints::{EndpointError, Endpoints};
use super::node::{NodeError, erc20, node};
use super::transfers::{is_range_error, token_transfers, transactions};
use crate::backoff::{Backoff, sleep_or_shutdown};
use crate::chain::{ChainError, ChainEvent, Transfer};
use crate::config::EthConfig;
use crate::store::{NewWatch, Store};
use alloy::eips::BlockNumberOrTag;
use alloy::network::Ethereum;
use alloy::primitives::{
    Address, B256,
    map::{AddressMap, AddressSet},
};
use alloy::providers::{Provider, RootProvider};
use alloy::rpc::types::Filter;
use alloy::sol_types::SolEvent;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

/// New watches looked back for together.
const BATCH: u32 = 10_000;
/// Recipient addresses in one `eth_getLogs` (halved when a node refuses).
const ADDRESSES_PER_CALL: usize = 500;
/// The least time between two rounds that were not full: under a burst of
/// topups the new watches are looked back for in a few large rounds, not
/// one per commit of listen (each round costs node calls and a commit).
const PACE: Duration = Duration::from_millis(100);

/// The plain ether transfers of the blocks the scanner read last, by number
/// (with the block's hash); shared with the lookback, bounded to
/// `lookback_blocks` blocks.
#[derive(Debug, Clone, Default)]
pub(super) struct EtherCache {
    blocks: Arc<Mutex<CachedBlocks>>,
    keep: u64,
}

/// By number: the block's hash and its ether transfers.
type CachedBlocks = BTreeMap<u64, (B256, Vec<Transfer>)>;

impl EtherCache {
    /// A cache of the last `keep` blocks (0: keeps nothing).
    pub fn new(keep: u64) -> Self {
        Self {
            blocks: Arc::default(),
            keep,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, CachedBlocks> {
        self.blocks.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Keeps block `number` (`hash`)'s ether transfers, in place of any
    /// earlier one at that height (a reorganisation's).
    pub fn put(&self, number: u64, hash: B256, ether: Vec<Transfer>) {
        if self.keep == 0 {
            return;
        }
        let mut blocks = self.lock();
        blocks.insert(number, (hash, ether));
        let floor = number.saturating_sub(self.keep);
        while blocks.first_key_value().is_some_and(|(n, _)| *n <= floor) {
            blocks.pop_first();
        }
    }

    /// Block `number`'s ether transfers if the cache holds it with `hash`.
    fn get(&self, number: u64, hash: B256) -> Option<Vec<Transfer>> {
        match self.lock().get(&number) {
            Some((h, ether)) if *h == hash => Some(ether.clone()),
            _ => None,
        }
    }
}

/// Why one lookback round did not finish; it is tried again.
#[derive(Debug, thiserror::Error)]
enum LookError {
    #[error(transparent)]
    Scan(#[from] NodeError),
    #[error(transparent)]
    Endpoint(#[from] EndpointError),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    /// The node is not on the chain as applied (a reorganisation one of the
    /// two has not seen yet).
    #[error("the node's block {number} is not the one applied; looking back again later")]
    Diverged { number: u64 },
    /// A node refuses even one address over one block.
    #[error("eth_getLogs refused the smallest request: {0}")]
    Refused(String),
}

/// Looks back for the transfers to newly watched addresses of one chain.
pub(super) struct Lookback {
    chain: Arc<str>,
    endpoints: Endpoints,
    store: Store,
    blocks: u64,
    max_range: u64,
    /// Token symbol → contract.
    contracts: HashMap<String, Address>,
    /// Token contract → symbol, to decode logs.
    symbols: AddressMap<Arc<str>>,
    ether: Arc<str>,
    cache: EtherCache,
    wake: Arc<Notify>,
}

/// One lookback's addresses: each with the first block looked at for it.
type Starts = HashMap<Address, u64>;

impl Lookback {
    pub fn new(
        chain: Arc<str>,
        endpoints: Endpoints,
        store: Store,
        cfg: &EthConfig,
        cache: EtherCache,
        wake: Arc<Notify>,
    ) -> Self {
        Self {
            chain,
            endpoints,
            store,
            blocks: cfg.lookback_blocks,
            max_range: cfg.max_block_range.max(1),
            contracts: cfg
                .tokens
                .iter()
                .map(|t| (t.symbol.clone(), t.contract))
                .collect(),
            symbols: cfg
                .tokens
                .iter()
                .map(|t| (t.contract, Arc::from(t.symbol.as_str())))
                .collect(),
            ether: Arc::from(cfg.native.as_str()),
            cache,
            wake,
        }
    }

    /// Looks back for every new watch, in order, until `shutdown`. Node
    /// failures are retried without limit; a store failure stops the chain.
    pub async fn run(
        self,
        events: mpsc::Sender<ChainEvent>,
        shutdown: CancellationToken,
    ) -> Result<(), ChainError> {
        if self.blocks == 0 {
            shutdown.cancelled().await;
            return Ok(());
        }
        let mut after = self.store.lookback_done(&self.chain).await?;
        let mut backoff = Backoff::new(Duration::from_millis(250), Duration::from_secs(30));
        loop {
            // Watches are appended in order: everything up to the highest row
            // read now that is not returned needs no lookback.
            let last = self.store.last_watch_id().await?;
            let rows = self.store.watches_after(&self.chain, after, BATCH).await?;
            let Some(upto) = rows.last().map(|r| r.id) else {
                after = after.max(last);
                tokio::select! {
                    _ = shutdown.cancelled() => return Ok(()),
                    _ = self.wake.notified() => {}
                }
                continue;
            };
            let outcome = tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                r = self.look(&rows) => r,
            };
            let transfers = match outcome {
                Ok(t) => t,
                Err(LookError::Store(e)) => return Err(e.into()),
                Err(e) => {
                    let (delay, attempt) = backoff.next_delay();
                    warn!(target: "m2pool::eth", chain = %self.chain, attempt, error = %e,
                          watches = rows.len(), "looking back for new watches failed; retrying");
                    if attempt % 3 == 0 {
                        self.endpoints.failed(self.endpoints.current_index());
                    }
                    if sleep_or_shutdown(delay, &shutdown).await {
                        return Ok(());
                    }
                    continue;
                }
            };
            backoff.reset();
            debug!(target: "m2pool::eth", chain = %self.chain, watches = rows.len(), found = transfers.len(),
                   "looked back");
            let event = ChainEvent::Lookback {
                chain: self.chain.clone(),
                upto,
                transfers,
            };
            if events.send(event).await.is_err() {
                return if shutdown.is_cancelled() {
                    Ok(())
                } else {
                    Err(ChainError::Closed {
                        chain: self.chain.to_string(),
                    })
                };
            }
            after = upto;
            if rows.len() < BATCH as usize && sleep_or_shutdown(PACE, &shutdown).await {
                return Ok(());
            }
        }
    }

    /// The transfers to the addresses of `rows`, each from `lookback_blocks`
    /// before its watch started up to the store's cursor, with their blocks.
    async fn look(&self, rows: &[NewWatch]) -> Result<Vec<(u64, B256, Transfer)>, LookError> {
        let recent = self.store.recent_blocks(&self.chain, u32::MAX).await?;
        let Some(cursor) = recent.first().copied() else {
            return Ok(Vec::new());
        };
        let applied: HashMap<u64, B256> = recent.iter().map(|b| (b.number, b.hash)).collect();
        // Per symbol, each address with the first block to look at.
        let mut wanted: HashMap<&str, Starts> = HashMap::new();
        for r in rows {
            let start = (r.block + 1).saturating_sub(self.blocks);
            let e = wanted
                .entry(r.symbol.as_str())
                .or_default()
                .entry(r.address)
                .or_insert(start);
            *e = (*e).min(start);
        }
        let (_, rpc) = self.endpoints.get().await?;
        let mut found = Vec::new();
        for (symbol, starts) in &wanted {
            if *symbol == &*self.ether {
                self.ether_transfers(&rpc, starts, cursor.number, &applied, &mut found)
                    .await?;
            } else if let Some(contract) = self.contracts.get(*symbol) {
                self.token_transfers(&rpc, *contract, starts, cursor.number, &mut found)
                    .await?;
            }
        }
        // The node's chain is the one applied up to the cursor: then what it
        // answered for every block below is too.
        let node_hash = rpc
            .get_block_by_number(BlockNumberOrTag::Number(cursor.number))
            .await
            .map_err(node("eth_getBlockByNumber"))?
            .map(|b| b.header.hash);
        if node_hash != Some(cursor.hash) {
            return Err(LookError::Diverged {
                number: cursor.number,
            });
        }
        if !found.is_empty() {
            info!(target: "m2pool::eth", chain = %self.chain, watches = rows.len(), transfers = found.len(),
                  "transfers found to newly watched addresses in earlier blocks");
        }
        Ok(found)
    }

    /// Token `Transfer`s of `contract` to `starts`' addresses in their
    /// windows up to `to`.
    async fn token_transfers(
        &self,
        rpc: &RootProvider<Ethereum>,
        contract: Address,
        starts: &Starts,
        to: u64,
        found: &mut Vec<(u64, B256, Transfer)>,
    ) -> Result<(), LookError> {
        let Some(from) = starts.values().min().copied().filter(|f| *f <= to) else {
            return Ok(());
        };
        let mut addresses: Vec<Address> = starts.keys().copied().collect();
        addresses.sort();
        // Work: (addresses, from, to); split in halves when refused.
        let mut work: Vec<(Vec<Address>, u64, u64)> = Vec::new();
        for chunk in addresses.chunks(ADDRESSES_PER_CALL) {
            let mut a = from;
            while a <= to {
                let b = to.min(a + self.max_range - 1);
                work.push((chunk.to_vec(), a, b));
                a = b + 1;
            }
        }
        while let Some((addrs, a, b)) = work.pop() {
            let filter = Filter::new()
                .address(contract)
                .event_signature(erc20::Transfer::SIGNATURE_HASH)
                .topic2(addrs.iter().map(|x| x.into_word()).collect::<Vec<B256>>())
                .from_block(a)
                .to_block(b);
            let logs = match rpc.get_logs(&filter).await {
                Ok(logs) => logs,
                Err(e) if is_range_error(&e) => {
                    if b > a {
                        let mid = a + (b - a) / 2;
                        work.push((addrs.clone(), a, mid));
                        work.push((addrs, mid + 1, b));
                    } else if addrs.len() > 1 {
                        let (left, right) = addrs.split_at(addrs.len() / 2);
                        work.push((left.to_vec(), a, b));
                        work.push((right.to_vec(), a, b));
                    } else {
                        return Err(LookError::Refused(e.to_string()));
                    }
                    continue;
                }
                Err(e) => return Err(node("eth_getLogs")(e).into()),
            };
            for log in logs.iter().filter(|l| !l.removed) {
                let (Some(n), Some(h)) = (log.block_number, log.block_hash) else {
                    return Err(NodeError::Incomplete {
                        what: "eth_getLogs",
                        missing: "a block number and hash",
                    }
                    .into());
                };
                for t in token_transfers(&self.chain, &self.symbols, std::slice::from_ref(log)) {
                    if starts.get(&t.to).is_some_and(|start| n >= *start) {
                        found.push((n, h, t));
                    }
                }
            }
        }
        Ok(())
    }

    /// Plain ether transfers to `starts`' addresses in their windows up to
    /// `to`: from the scanner's cache where it holds the block applied, else
    /// read again from the node.
    async fn ether_transfers(
        &self,
        rpc: &RootProvider<Ethereum>,
        starts: &Starts,
        to: u64,
        applied: &HashMap<u64, B256>,
        found: &mut Vec<(u64, B256, Transfer)>,
    ) -> Result<(), LookError> {
        let Some(from) = starts.values().min().copied() else {
            return Ok(());
        };
        let untracked = AddressSet::default();
        for n in from..=to {
            let cached = applied
                .get(&n)
                .and_then(|h| self.cache.get(n, *h).map(|t| (*h, t)));
            let (hash, ether) = match cached {
                Some(c) => c,
                None => {
                    let Some(block) = rpc
                        .get_block_by_number(BlockNumberOrTag::Number(n))
                        .full()
                        .await
                        .map_err(node("eth_getBlockByNumber"))?
                    else {
                        return Err(LookError::Diverged { number: n });
                    };
                    let (ether, _) = transactions(rpc, &block, &untracked, &self.ether).await?;
                    (block.header.hash, ether)
                }
            };
            for t in ether {
                if starts.get(&t.to).is_some_and(|start| n >= *start) {
                    found.push((n, hash, t));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloy::primitives::U256;

    fn transfer(to: u8) -> Transfer {
        Transfer {
            symbol: Arc::from("ETH"),
            tx_hash: B256::repeat_byte(to),
            log_index: -1,
            from: Address::repeat_byte(0xee),
            to: Address::repeat_byte(to),
            value: U256::from(1u64),
        }
    }

    #[test]
    fn the_ether_cache_keeps_the_last_blocks_by_hash() {
        let c = EtherCache::new(3);
        for n in 1..=5u8 {
            c.put(u64::from(n), B256::repeat_byte(n), vec![transfer(n)]);
        }
        assert!(
            c.get(2, B256::repeat_byte(2)).is_none(),
            "older than 3 blocks"
        );
        assert_eq!(c.get(3, B256::repeat_byte(3)), Some(vec![transfer(3)]));
        assert!(
            c.get(5, B256::repeat_byte(9)).is_none(),
            "another block's hash"
        );
        // A reorganisation's block takes the height's place.
        c.put(5, B256::repeat_byte(9), vec![]);
        assert_eq!(c.get(5, B256::repeat_byte(9)), Some(vec![]));
        assert!(EtherCache::new(0).get(1, B256::ZERO).is_none());
    }
}
