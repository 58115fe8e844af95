//! Chains: what the daemon reads from (and, later, sends to) a blockchain.
//!
//! A chain implementation follows its node from a persisted block cursor and
//! reports, in order, every verified block with the transfers in it and every
//! reorganisation, as [`ChainEvent`]s to the listen task. It decides nothing
//! about money: matching transfers against watched addresses, deposit state and
//! responses all happen in listen, in one transaction with the cursor.
//!
//! [`Chain`] is the seam for more chains: the config's `net` list picks which
//! run; `ETH` ([`eth`]) is the one implementation today.

pub mod eth;
mod facts;

pub use facts::{Broadcast, PayoutFacts, Refusal};

use crate::config::Network;
use crate::store::{BlockRef, Store, StoreError};
use crate::wallet::{Kek, WalletStore};
use alloy::primitives::{Address, B256, U256};
use futures::future::BoxFuture;
use std::sync::Arc;
use tokio::sync::Notify;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// A transfer found in a verified block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transfer {
    /// Symbol of what moved (`ETH` for native ether).
    pub symbol: Arc<str>,
    /// Transaction hash.
    pub tx_hash: B256,
    /// Log index of the Transfer event; `-1` for native ether.
    pub log_index: i64,
    /// Sender.
    pub from: Address,
    /// Recipient.
    pub to: Address,
    /// Base units.
    pub value: U256,
}

/// A transaction sent from one of the daemon's hot wallets, found in a
/// verified block: how payouts learn they were mined.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnTx {
    /// The hot wallet.
    pub from: Address,
    /// Its nonce.
    pub nonce: u64,
    /// Transaction hash.
    pub tx_hash: B256,
    /// Receipt status.
    pub success: bool,
    /// Gas paid, in wei (gas used × effective gas price).
    pub fee: U256,
    /// Every ERC20 `Transfer` its receipt logged, of any contract: a token
    /// payout paid only if the right one is among them (a token whose
    /// `transfer` returns `false` succeeds with no log).
    pub token_moves: Vec<TokenMove>,
}

/// An ERC20 `Transfer` event in a receipt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenMove {
    /// The token contract that logged it.
    pub contract: Address,
    /// Sender.
    pub from: Address,
    /// Recipient.
    pub to: Address,
    /// Base units.
    pub value: U256,
}

/// What a chain reports to listen, in order.
#[derive(Debug, Clone)]
pub enum ChainEvent {
    /// The next canonical block (its parent is the previous cursor), with every
    /// transfer of a known asset in it; it becomes the new cursor.
    Block {
        /// Chain name.
        chain: Arc<str>,
        /// The block.
        block: BlockRef,
        /// Transfers in it (successful transactions only).
        transfers: Vec<Transfer>,
        /// Transactions in it sent from tracked hot wallets.
        own: Vec<OwnTx>,
    },
    /// Blocks above `fork` left the canonical chain; `fork` is the new cursor.
    Reorg {
        /// Chain name.
        chain: Arc<str>,
        /// Highest block that is still canonical.
        fork: BlockRef,
    },
    /// Transfers to newly watched addresses in blocks that were applied
    /// before the watch started, found by looking back (`lookback_blocks`).
    /// Each counts as a deposit seen if its block is still canonical then.
    Lookback {
        /// Chain name.
        chain: Arc<str>,
        /// The last watch-log row whose lookback this completes.
        upto: i64,
        /// Each transfer with its block's number and hash.
        transfers: Vec<(u64, B256, Transfer)>,
    },
}

impl ChainEvent {
    /// The network it happened on.
    pub fn chain(&self) -> &str {
        match self {
            Self::Block { chain, .. }
            | Self::Reorg { chain, .. }
            | Self::Lookback { chain, .. } => chain,
        }
    }
}

/// A chain failure that stops the chain's task.
#[derive(Debug, thiserror::Error)]
pub enum ChainError {
    /// The node serves another chain than the config says.
    #[error("{chain}: the node at {url} is on chain id {got}, the config expects {expected}")]
    WrongChain {
        /// Chain name.
        chain: String,
        /// RPC URL asked.
        url: String,
        /// `eth_config.chain_id`.
        expected: u64,
        /// What the node said.
        got: u64,
    },
    /// Reading the cursor failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The listen task is gone.
    #[error("{chain}: the listen task stopped taking chain events")]
    Closed {
        /// Chain name.
        chain: String,
    },
    /// The lookback task panicked.
    #[error("{chain}: lookback panicked: {source}")]
    Lookback {
        /// Chain name.
        chain: String,
        /// The panic.
        source: tokio::task::JoinError,
    },
    /// The payout sender failed.
    #[error("{chain}: payouts: {source}")]
    Sender {
        /// Chain name.
        chain: String,
        /// What failed.
        source: eth::SenderError,
    },
}

/// A chain the daemon runs.
pub trait Chain: Send {
    /// Its name in requests and the config's `net` list (`ETH`).
    fn name(&self) -> &str;

    /// Follows the node until `shutdown`, sending events to listen. Transient
    /// node failures are retried without limit; an error return is fatal.
    fn run(
        self: Box<Self>,
        events: mpsc::Sender<ChainEvent>,
        shutdown: CancellationToken,
    ) -> BoxFuture<'static, Result<(), ChainError>>;
}

/// Builds the chain that serves `network`: every network in the config is
/// EVM today, served by [`eth`].
pub async fn build(network: &Network, ctx: ChainContext) -> Result<Box<dyn Chain>, ChainError> {
    Ok(Box::new(eth::EthChain::new(network, ctx).await?))
}

/// What a chain shares with the rest of the daemon.
#[derive(Debug, Clone)]
pub struct ChainContext {
    /// The message store.
    pub store: Store,
    /// The wallet store (keys of the hot wallets).
    pub wallets: WalletStore,
    /// Decrypts the hot wallets' keys.
    pub kek: Kek,
    /// Woken by listen when payouts of this chain are queued or unmined.
    pub payout_wake: Arc<Notify>,
    /// Woken by listen when addresses of this chain start being watched.
    pub lookback_wake: Arc<Notify>,
    /// Where the payout sender reports what it signed, sent and could not
    /// pay: listen's recorder turns each report into state and answers.
    pub facts: Arc<dyn PayoutFacts>,
    /// Where the chain reports its condition.
    pub health: crate::health::Health,
    /// Payout latencies.
    pub metrics: crate::metrics::SharedMetrics,
}
