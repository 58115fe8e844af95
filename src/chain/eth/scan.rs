//! Reads blocks from the cursor to the head, verifies each links to the one
//! before it, and extracts the transfers of known assets.
//!
//! Per range of blocks: one `eth_getLogs` for the token contracts' `Transfer`
//! events, then every block with its transactions (fetched a few at a time, in
//! order), and `eth_getBlockReceipts` only for blocks that carry ether
//! transfers, so that only successful ones count. A block whose parent hash is
//! not the cursor's hash means a reorganisation: the scanner walks its window of
//! recent blocks back to the fork point and reports it. A log whose block hash
//! is not the block's means the chain moved between two calls: the range is read
//! again. A block whose logs bloom says it may hold a token transfer, but for
//! which the range answer had none, is asked for again by its hash.

use super::endpoints::Endpoints;
use super::lookback::EtherCache;
use super::node::{NodeError, erc20, node};
use super::range::RangeSize;
use super::transfers::{is_range_error, token_transfers, transactions};
use crate::chain::ChainEvent;
use crate::config::EthConfig;
use crate::health::Health;
use crate::store::BlockRef;
use alloy::eips::BlockNumberOrTag;
use alloy::network::Ethereum;
use alloy::primitives::{
    Address, B256, Bloom, BloomInput,
    map::{AddressMap, AddressSet},
};
use alloy::providers::{Provider, RootProvider};
use alloy::rpc::types::{Filter, Log};
use alloy::sol_types::SolEvent;
use futures::{StreamExt, stream};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

/// Blocks fetched concurrently while scanning a range.
const BLOCK_FETCH_CONCURRENCY: usize = 8;

/// Pause before reading a range again when the last read applied no block.
const NO_PROGRESS_PAUSE: std::time::Duration = std::time::Duration::from_millis(200);

/// Follows one Ethereum node from the cursor.
pub(super) struct Scanner {
    chain: Arc<str>,
    endpoints: Endpoints,
    /// The current endpoint's provider, refreshed at each catch-up.
    rpc: RootProvider<Ethereum>,
    health: Health,
    /// Token contract → symbol.
    tokens: AddressMap<Arc<str>>,
    contracts: Vec<Address>,
    ether: Arc<str>,
    /// Recent verified blocks; the last is the cursor.
    window: BTreeMap<u64, BlockRef>,
    keep: u64,
    /// Blocks asked for per `eth_getLogs`.
    range: RangeSize,
    start_block: Option<u64>,
    /// Hot wallets whose transactions are reported as [`OwnTx`].
    tracked: AddressSet,
    /// New hot wallets to track, from the payout sender.
    track: mpsc::Receiver<Address>,
    /// The ether transfers of the blocks read last, for the lookback.
    ether_cache: EtherCache,
}

impl Scanner {
    #[allow(clippy::too_many_arguments)]
    pub(super) fn new(
        chain: Arc<str>,
        endpoints: Endpoints,
        rpc: RootProvider<Ethereum>,
        cfg: &EthConfig,
        recent: Vec<BlockRef>,
        keep: u64,
        tracked: Vec<Address>,
        track: mpsc::Receiver<Address>,
        health: Health,
        ether_cache: EtherCache,
    ) -> Self {
        Self {
            chain,
            endpoints,
            rpc,
            health,
            tokens: cfg
                .tokens
                .iter()
                .map(|t| (t.contract, Arc::from(t.symbol.as_str())))
                .collect(),
            contracts: cfg.tokens.iter().map(|t| t.contract).collect(),
            ether: Arc::from(cfg.native.as_str()),
            window: recent.into_iter().map(|b| (b.number, b)).collect(),
            keep,
            range: RangeSize::new(cfg.max_block_range),
            start_block: cfg.start_block,
            tracked: tracked.into_iter().collect(),
            track,
            ether_cache,
        }
    }

    /// The block cursor, if there is one yet.
    pub(super) fn cursor(&self) -> Option<BlockRef> {
        self.window.last_key_value().map(|(_, b)| *b)
    }

    async fn send(
        &self,
        events: &mpsc::Sender<ChainEvent>,
        e: ChainEvent,
    ) -> Result<(), NodeError> {
        events.send(e).await.map_err(|_| NodeError::Closed)
    }

    /// On a fresh store, anchors the cursor at `start_block - 1` or the head.
    async fn anchor(&mut self, events: &mpsc::Sender<ChainEvent>) -> Result<(), NodeError> {
        let number = match self.start_block {
            Some(n) => n.saturating_sub(1),
            None => self
                .rpc
                .get_block_number()
                .await
                .map_err(node("eth_blockNumber"))?,
        };
        let block = self.header(number).await?.ok_or(NodeError::Incomplete {
            what: "eth_getBlockByNumber",
            missing: "the anchor block",
        })?;
        debug!(target: "m2pool::eth", chain = %self.chain, number, "block cursor anchored");
        self.window.insert(number, block);
        self.send(
            events,
            ChainEvent::Block {
                chain: self.chain.clone(),
                block,
                transfers: Vec::new(),
                own: Vec::new(),
            },
        )
        .await
    }

    async fn header(&self, number: u64) -> Result<Option<BlockRef>, NodeError> {
        let b = self
            .rpc
            .get_block_by_number(BlockNumberOrTag::Number(number))
            .await
            .map_err(node("eth_getBlockByNumber"))?;
        Ok(b.map(|b| BlockRef {
            number: b.header.number,
            hash: b.header.hash,
            parent_hash: b.header.parent_hash,
        }))
    }

    /// Reads and reports every block from the cursor to the node's head.
    pub(super) async fn catch_up(
        &mut self,
        events: &mpsc::Sender<ChainEvent>,
        shutdown: &CancellationToken,
    ) -> Result<(), NodeError> {
        self.rpc = self.endpoints.get().await?.1;
        if self.window.is_empty() {
            self.anchor(events).await?;
        }
        let head = self
            .rpc
            .get_block_number()
            .await
            .map_err(node("eth_blockNumber"))?;
        if let Some(was) = self.health.saw_head(&self.chain, head) {
            info!(target: "m2pool::eth", chain = %self.chain, head, stalled_secs = was.as_secs(),
                  "the node's head advances again");
        }
        self.verify_cursor(head, events).await?;
        while let Some(cursor) = self.cursor() {
            if cursor.number >= head || shutdown.is_cancelled() {
                break;
            }
            let from = cursor.number + 1;
            let to = head.min(from + self.range.blocks() - 1);
            let logs = match self.logs(from, to).await {
                Ok(logs) => logs,
                Err(NodeError::Rpc { source, .. })
                    if is_range_error(&source) && self.range.halve() =>
                {
                    warn!(target: "m2pool::eth", chain = %self.chain, from, to, range = self.range.blocks(),
                          error = %source, "eth_getLogs refused the range; halving it");
                    continue;
                }
                Err(e) => return Err(e),
            };
            self.scan_range(from, to, logs, events, shutdown).await?;
            self.range.read();
            // Nothing applied (the node does not have the block yet, or
            // answered from another fork): ask again after a pause, not in a
            // tight loop.
            if self.cursor().map(|c| c.number) == Some(cursor.number)
                && crate::backoff::sleep_or_shutdown(NO_PROGRESS_PAUSE, shutdown).await
            {
                break;
            }
        }
        Ok(())
    }

    /// A filter for the watched tokens' `Transfer` logs, blocks not yet set.
    fn transfers(&self) -> Filter {
        Filter::new()
            .address(self.contracts.clone())
            .event_signature(erc20::Transfer::SIGNATURE_HASH)
    }

    async fn logs(&self, from: u64, to: u64) -> Result<HashMap<u64, Vec<Log>>, NodeError> {
        let mut by_block: HashMap<u64, Vec<Log>> = HashMap::new();
        if self.contracts.is_empty() {
            return Ok(by_block);
        }
        let filter = self.transfers().from_block(from).to_block(to);
        let logs = self
            .rpc
            .get_logs(&filter)
            .await
            .map_err(node("eth_getLogs"))?;
        for log in logs {
            if log.removed {
                continue;
            }
            let Some(n) = log.block_number else {
                return Err(NodeError::Incomplete {
                    what: "eth_getLogs",
                    missing: "a block number",
                });
            };
            by_block.entry(n).or_default().push(log);
        }
        Ok(by_block)
    }

    /// Whether a block with `bloom` may hold a `Transfer` of a watched token
    /// (a bloom can say yes wrongly, never no wrongly).
    fn may_hold_transfers(&self, bloom: &Bloom) -> bool {
        bloom.contains_input(BloomInput::Raw(erc20::Transfer::SIGNATURE_HASH.as_slice()))
            && self
                .contracts
                .iter()
                .any(|c| bloom.contains_input(BloomInput::Raw(c.as_slice())))
    }

    /// The token `Transfer` logs of the block with `hash`.
    async fn logs_at(&self, hash: B256) -> Result<Vec<Log>, NodeError> {
        let filter = self.transfers().at_block_hash(hash);
        let logs = self
            .rpc
            .get_logs(&filter)
            .await
            .map_err(node("eth_getLogs(blockHash)"))?;
        Ok(logs.into_iter().filter(|l| !l.removed).collect())
    }

    /// Verifies and reports blocks `from..=to`; stops early at a reorganisation
    /// or when the node does not have a block yet.
    async fn scan_range(
        &mut self,
        from: u64,
        to: u64,
        mut logs: HashMap<u64, Vec<Log>>,
        events: &mpsc::Sender<ChainEvent>,
        shutdown: &CancellationToken,
    ) -> Result<(), NodeError> {
        let rpc = self.rpc.clone();
        let mut blocks = stream::iter(from..=to)
            .map(move |n| {
                let rpc = rpc.clone();
                async move {
                    rpc.get_block_by_number(BlockNumberOrTag::Number(n))
                        .full()
                        .await
                        .map_err(node("eth_getBlockByNumber"))
                }
            })
            .buffered(BLOCK_FETCH_CONCURRENCY);
        while let Some(block) = blocks.next().await {
            if shutdown.is_cancelled() {
                return Ok(());
            }
            let Some(block) = block? else {
                // The node's head moved back under us; the next step sorts it out.
                return Ok(());
            };
            let Some(cursor) = self.cursor() else {
                return Ok(());
            };
            let this = BlockRef {
                number: block.header.number,
                hash: block.header.hash,
                parent_hash: block.header.parent_hash,
            };
            match link(&cursor, &this) {
                Link::Next => {}
                Link::Elsewhere => return Ok(()),
                Link::Fork => return self.reorg(events).await,
            }
            let mut block_logs = logs.remove(&this.number).unwrap_or_default();
            if block_logs.is_empty() && self.may_hold_transfers(&block.header.logs_bloom) {
                // The range answer had nothing for a block whose bloom says it
                // may hold our tokens' transfers: ask for this block by its
                // hash (EIP-234), which a node answers for that very block or
                // refuses. A node that lags behind its own head, or one half of
                // a load-balanced pair, cannot make a deposit be skipped.
                block_logs = self.logs_at(this.hash).await?;
                if !block_logs.is_empty() {
                    warn!(target: "m2pool::eth", chain = %self.chain, number = this.number, logs = block_logs.len(),
                          "eth_getLogs by range missed this block's transfers; read them by block hash");
                }
            }
            if !all_of(&block_logs, this.hash) {
                debug!(target: "m2pool::eth", chain = %self.chain, number = this.number,
                       "logs came from another fork; reading the range again");
                return Ok(());
            }
            // A wallet the sender tracks from now on is tracked before any
            // block that can hold its first transaction is read.
            while let Ok(a) = self.track.try_recv() {
                self.tracked.insert(a);
            }
            let mut transfers = token_transfers(&self.chain, &self.tokens, &block_logs);
            let (ether, own) = transactions(&self.rpc, &block, &self.tracked, &self.ether).await?;
            self.ether_cache.put(this.number, this.hash, ether.clone());
            transfers.extend(ether);
            self.window.insert(this.number, this);
            while self.window.len() as u64 > self.keep {
                self.window.pop_first();
            }
            self.send(
                events,
                ChainEvent::Block {
                    chain: self.chain.clone(),
                    block: this,
                    transfers,
                    own,
                },
            )
            .await?;
        }
        Ok(())
    }

    /// Checks that the cursor (or, when the node's head is below it, the
    /// block at the head) is still the node's; if not, the chain was
    /// reorganised (or rolled back) under us.
    async fn verify_cursor(
        &mut self,
        head: u64,
        events: &mpsc::Sender<ChainEvent>,
    ) -> Result<(), NodeError> {
        let Some(cursor) = self.cursor() else {
            return Ok(());
        };
        let n = cursor.number.min(head);
        let Some(stored) = self.window.get(&n).copied() else {
            return Ok(());
        };
        if self.header(n).await?.map(|b| b.hash) != Some(stored.hash) {
            return self.reorg(events).await;
        }
        Ok(())
    }

    /// Finds the highest block of the window the node still has and reports it
    /// as the fork point.
    async fn reorg(&mut self, events: &mpsc::Sender<ChainEvent>) -> Result<(), NodeError> {
        let tip = self.cursor().map(|b| b.number).unwrap_or_default();
        let mut fork = None;
        for (&n, stored) in self.window.iter().rev() {
            if self.header(n).await?.map(|b| b.hash) == Some(stored.hash) {
                fork = Some(*stored);
                break;
            }
        }
        let fork = match fork {
            Some(f) => f,
            None => {
                // Deeper than the window: trust the node from below the window.
                let lowest = self
                    .window
                    .first_key_value()
                    .map(|(n, _)| *n)
                    .unwrap_or(tip);
                let number = lowest.saturating_sub(1);
                let anchor = self.header(number).await?.ok_or(NodeError::Incomplete {
                    what: "eth_getBlockByNumber",
                    missing: "a block below the reorganisation",
                })?;
                error!(target: "m2pool::eth", chain = %self.chain, tip, window_from = lowest,
                       "reorganisation deeper than the verified window; rescanning from below it");
                anchor
            }
        };
        warn!(target: "m2pool::eth", chain = %self.chain, fork = fork.number,
              depth = tip.saturating_sub(fork.number), "chain reorganisation");
        self.window.retain(|&n, _| n < fork.number);
        self.window.insert(fork.number, fork);
        self.send(
            events,
            ChainEvent::Reorg {
                chain: self.chain.clone(),
                fork,
            },
        )
        .await
    }
}

/// How a fetched block stands to the cursor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Link {
    /// The cursor's child: apply it.
    Next,
    /// Not the next height (the head moved under us): read again.
    Elsewhere,
    /// The next height on another fork: the cursor is no longer canonical.
    Fork,
}

/// How `this` stands to `cursor`: a block is applied only if it is the
/// cursor's child by number and by parent hash.
fn link(cursor: &BlockRef, this: &BlockRef) -> Link {
    if this.number != cursor.number + 1 {
        Link::Elsewhere
    } else if this.parent_hash != cursor.hash {
        Link::Fork
    } else {
        Link::Next
    }
}

/// Every log came from block `hash` (a range answer may mix forks).
fn all_of(logs: &[Log], hash: B256) -> bool {
    logs.iter().all(|l| l.block_hash == Some(hash))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block(number: u64, hash: u8, parent: u8) -> BlockRef {
        BlockRef {
            number,
            hash: B256::repeat_byte(hash),
            parent_hash: B256::repeat_byte(parent),
        }
    }

    #[test]
    fn only_the_cursors_child_by_number_and_parent_hash_is_applied() {
        let cursor = block(10, 0xa, 0x9);
        assert_eq!(link(&cursor, &block(11, 0xb, 0xa)), Link::Next);
        assert_eq!(
            link(&cursor, &block(11, 0xc, 0xd)),
            Link::Fork,
            "the next height on another parent is a reorganisation"
        );
        assert_eq!(link(&cursor, &block(12, 0xc, 0xb)), Link::Elsewhere);
        assert_eq!(link(&cursor, &block(10, 0xa, 0x9)), Link::Elsewhere);
    }

    #[test]
    fn logs_of_another_fork_are_not_taken_for_this_blocks() {
        let here = B256::repeat_byte(1);
        let log = |h: Option<B256>| Log {
            block_hash: h,
            ..Default::default()
        };
        assert!(all_of(&[], here));
        assert!(all_of(&[log(Some(here)), log(Some(here))], here));
        assert!(!all_of(
            &[log(Some(here)), log(Some(B256::repeat_byte(2)))],
            here
        ));
        assert!(!all_of(&[log(None)], here), "a pending log is no block's");
    }
}
