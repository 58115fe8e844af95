//! What a block moved, read from the node: the `Transfer` events of the
//! configured tokens, plain ether transfers in successful transactions, and
//! the transactions of tracked hot wallets with what their receipts logged.
//! Shared by the scanner (every block, forward) and the lookback (recent
//! blocks, for newly watched addresses).

use super::node::{NodeError, erc20, node};
use crate::chain::{OwnTx, TokenMove, Transfer};
use alloy::consensus::Transaction as _;
use alloy::network::{Ethereum, ReceiptResponse, TransactionResponse};
use alloy::primitives::{
    B256, U256,
    map::{AddressMap, AddressSet},
};
use alloy::providers::{Provider, RootProvider};
use alloy::rpc::types::{Block, Log};
use alloy::sol_types::SolEvent;
use alloy::transports::{RpcError, TransportErrorKind};
use std::collections::HashMap;
use std::sync::Arc;
use tracing::warn;

/// Whether an `eth_getLogs` error asks for a smaller range.
pub(super) fn is_range_error(e: &RpcError<TransportErrorKind>) -> bool {
    let text = e.to_string().to_ascii_lowercase();
    [
        "range",
        "too many",
        "limit",
        "exceed",
        "results",
        "too large",
        "timeout",
    ]
    .iter()
    .any(|w| text.contains(w))
}

/// Every ERC20 `Transfer` among `logs`.
fn token_moves(logs: &[Log]) -> Vec<TokenMove> {
    logs.iter()
        .filter(|l| l.topics().first() == Some(&erc20::Transfer::SIGNATURE_HASH))
        .filter_map(|l| {
            let t = erc20::Transfer::decode_log_data(l.data()).ok()?;
            Some(TokenMove {
                contract: l.address(),
                from: t.from,
                to: t.to,
                value: t.value,
            })
        })
        .collect()
}

pub(super) fn token_transfers(
    chain: &str,
    tokens: &AddressMap<Arc<str>>,
    logs: &[Log],
) -> Vec<Transfer> {
    let mut out = Vec::with_capacity(logs.len());
    for log in logs {
        let Some(symbol) = tokens.get(&log.address()) else {
            continue;
        };
        let (Some(tx_hash), Some(index)) = (log.transaction_hash, log.log_index) else {
            continue;
        };
        match erc20::Transfer::decode_log_data(log.data()) {
            // A zero-value Transfer moves nothing: address-poisoning spam
            // sends them to watched addresses by the thousands.
            Ok(t) if t.value.is_zero() => {}
            Ok(t) => out.push(Transfer {
                symbol: symbol.clone(),
                tx_hash,
                log_index: index as i64,
                from: t.from,
                to: t.to,
                value: t.value,
            }),
            Err(e) => {
                warn!(target: "m2pool::eth", chain, tx = %tx_hash, log_index = index,
                      error = %e, "Transfer log does not decode; skipped");
            }
        }
    }
    out
}

/// Successful plain ether transfers in `block` (value > 0, to an address),
/// and every transaction sent from a tracked hot wallet with its receipt.
pub(super) async fn transactions(
    rpc: &RootProvider<Ethereum>,
    block: &Block,
    tracked: &AddressSet,
    ether_symbol: &Arc<str>,
) -> Result<(Vec<Transfer>, Vec<OwnTx>), NodeError> {
    if block.transactions.is_hashes() && !block.transactions.is_empty() {
        return Err(NodeError::Incomplete {
            what: "eth_getBlockByNumber(full)",
            missing: "the block's transactions",
        });
    }
    let mut ether = Vec::new();
    let mut own = Vec::new();
    for tx in block.transactions.txns() {
        let from = tx.from();
        if tracked.contains(&from) {
            own.push((from, tx.nonce(), tx.tx_hash()));
        }
        let Some(to) = tx.to() else { continue };
        let value = tx.value();
        if !value.is_zero() {
            ether.push(Transfer {
                symbol: ether_symbol.clone(),
                tx_hash: tx.tx_hash(),
                log_index: -1,
                from,
                to,
                value,
            });
        }
    }
    if ether.is_empty() && own.is_empty() {
        return Ok((ether, Vec::new()));
    }
    let receipts = rpc
        .get_block_receipts(block.header.hash.into())
        .await
        .map_err(node("eth_getBlockReceipts"))?
        .ok_or(NodeError::Incomplete {
            what: "eth_getBlockReceipts",
            missing: "the block's receipts",
        })?;
    let by_hash: HashMap<B256, (bool, U256, &alloy::rpc::types::TransactionReceipt)> = receipts
        .iter()
        .map(|r| {
            let fee = U256::from(r.gas_used()) * U256::from(r.effective_gas_price());
            (r.transaction_hash(), (r.status(), fee, r))
        })
        .collect();
    // A value transfer without its receipt is not guessed at: the block
    // is read again (a failed one is dropped, as a reverted call moved nothing).
    if ether.iter().any(|t| !by_hash.contains_key(&t.tx_hash)) {
        return Err(NodeError::Incomplete {
            what: "eth_getBlockReceipts",
            missing: "the receipt of an ether transfer",
        });
    }
    ether.retain(|t| by_hash.get(&t.tx_hash).is_some_and(|(ok, _, _)| *ok));
    let own = own
        .into_iter()
        .map(|(from, nonce, tx_hash)| {
            let (success, fee, receipt) =
                by_hash
                    .get(&tx_hash)
                    .copied()
                    .ok_or(NodeError::Incomplete {
                        what: "eth_getBlockReceipts",
                        missing: "a receipt of a hot wallet's transaction",
                    })?;
            Ok(OwnTx {
                from,
                nonce,
                tx_hash,
                success,
                fee,
                token_moves: token_moves(receipt.inner.logs()),
            })
        })
        .collect::<Result<Vec<_>, NodeError>>()?;
    Ok((ether, own))
}
