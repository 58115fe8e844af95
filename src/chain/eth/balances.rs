//! Wallet balances: every `balance_poll_secs`, the native coin and token
//! balances and the next nonce of each wallet of the network (the wallet
//! store's hot and collection wallets, and `collection_address`) are read
//! from the node in JSON-RPC batches and judged against the class's
//! thresholds (`wallet_alerts`). The result goes to the shared health state,
//! where `/healthz` warns about what is low, `/metrics` counts it, and the
//! operator console shows each wallet.
//!
//! Nothing here decides a payout: the sender reads its own balances at the
//! moment it signs. A failed read is logged and tried again at the next
//! poll; balances that stay unread for three polls are warned about.

use super::endpoints::Endpoints;
use super::node::erc20;
use crate::backoff::sleep_or_shutdown;
use crate::config::{ClassAlerts, EthConfig};
use crate::health::{Health, Low, WalletSeen, WalletsSeen};
use crate::msg::amount::format_units;
use crate::wallet::{Label, WalletStore};
use alloy::primitives::{Address, Bytes, U64, U256};
use alloy::providers::Provider;
use alloy::sol_types::SolCall;
use serde_json::json;
use std::sync::Arc;
use std::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

/// Reads balances until `shutdown`; failures are retried at the next poll.
pub(super) async fn watch(
    name: Arc<str>,
    endpoints: Endpoints,
    wallets: WalletStore,
    cfg: EthConfig,
    health: Health,
    shutdown: CancellationToken,
) {
    loop {
        match read_all(&name, &endpoints, &wallets, &cfg).await {
            Ok(list) => {
                debug!(target: "m2pool::eth", chain = %name, wallets = list.len(), "wallet balances read");
                let seen = Arc::new(WalletsSeen {
                    at: Instant::now(),
                    at_ms: crate::clock::now_ms(),
                    list,
                });
                health.chain(&name, |c| {
                    c.wallets = Some(seen);
                    c.wallets_error = None;
                });
            }
            Err(e) => {
                warn!(target: "m2pool::eth", chain = %name, error = %e, "cannot read wallet balances; trying again at the next poll");
                health.chain(&name, |c| c.wallets_error = Some(e));
            }
        }
        if sleep_or_shutdown(cfg.alerts.poll, &shutdown).await {
            return;
        }
    }
}

/// Every wallet of the network with its class, collection first.
async fn wallets_of(
    name: &str,
    wallets: &WalletStore,
    cfg: &EthConfig,
) -> Result<Vec<(Address, Label)>, String> {
    let rows = wallets.wallets(name).await.map_err(|e| e.to_string())?;
    let mut out: Vec<(Address, Label)> = Vec::with_capacity(rows.len() + 1);
    if let Some(c) = cfg.payout.collection {
        out.push((c, Label::Collection));
    }
    for r in rows {
        if !out.iter().any(|(a, _)| *a == r.address) {
            out.push((r.address, r.label));
        }
    }
    out.sort_by_key(|(_, l)| *l != Label::Collection);
    Ok(out)
}

/// Reads and judges every wallet.
async fn read_all(
    name: &str,
    endpoints: &Endpoints,
    wallets: &WalletStore,
    cfg: &EthConfig,
) -> Result<Vec<WalletSeen>, String> {
    let list = wallets_of(name, wallets, cfg).await?;
    let calls_each = 2 + cfg.tokens.len();
    let per_batch = (endpoints.max_batch() / calls_each).max(1);
    let mut out = Vec::with_capacity(list.len());
    for chunk in list.chunks(per_batch) {
        let (_, rpc) = endpoints.get().await.map_err(|e| e.to_string())?;
        let mut batch = alloy::rpc::client::BatchRequest::new(rpc.client());
        let mut waiting = Vec::with_capacity(chunk.len());
        for (address, _) in chunk {
            let add = |e: alloy::transports::TransportError| e.to_string();
            let ether = batch
                .add_call::<_, U256>("eth_getBalance", &(address, "latest"))
                .map_err(add)?;
            let nonce = batch
                .add_call::<_, U64>("eth_getTransactionCount", &(address, "pending"))
                .map_err(add)?;
            let mut tokens = Vec::with_capacity(cfg.tokens.len());
            for t in &cfg.tokens {
                let data = Bytes::from(erc20::balanceOfCall { owner: *address }.abi_encode());
                let call = json!({"to": t.contract, "input": data});
                tokens.push(
                    batch
                        .add_call::<_, Bytes>("eth_call", &(call, "latest"))
                        .map_err(add)?,
                );
            }
            waiting.push((ether, nonce, tokens));
        }
        batch.send().await.map_err(|e| e.to_string())?;
        for ((address, label), (ether, nonce, tokens)) in chunk.iter().zip(waiting) {
            let ether = ether.await.map_err(|e| e.to_string())?;
            let nonce = nonce.await.map_err(|e| e.to_string())?;
            let mut balances = vec![(cfg.native.clone(), ether, cfg.native_decimals)];
            for (t, w) in cfg.tokens.iter().zip(tokens) {
                let out = w.await.map_err(|e| e.to_string())?;
                // A contract that answers nothing usable holds nothing for us.
                let v = erc20::balanceOfCall::abi_decode_returns(&out).unwrap_or_default();
                balances.push((t.symbol.clone(), v, t.decimals));
            }
            let class = match label {
                Label::Collection => &cfg.alerts.collection,
                Label::User => &cfg.alerts.user,
            };
            out.push(WalletSeen {
                address: *address,
                class: label.as_str(),
                low: judge(&cfg.native, &balances, class),
                balances,
                next_nonce: nonce.to::<u64>(),
            });
        }
    }
    Ok(out)
}

/// What of `balances` (native coin first) is below `alerts`.
pub(crate) fn judge(
    native: &str,
    balances: &[(String, U256, u8)],
    alerts: &ClassAlerts,
) -> Vec<Low> {
    let mut low = Vec::new();
    for (symbol, have, decimals) in balances {
        let (min, kind) = if symbol == native {
            (alerts.min_gas, "gas")
        } else {
            (alerts.min_balance.get(symbol).copied(), "balance")
        };
        if let Some(min) = min
            && *have < min
        {
            low.push(Low {
                symbol: symbol.clone(),
                kind,
                holds: format_units(*have, *decimals),
                min: format_units(min, *decimals),
            });
        }
    }
    low
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn below_a_threshold_is_low_at_it_is_not() {
        let alerts = ClassAlerts {
            min_gas: Some(U256::from(10u64)),
            min_balance: [("USDT".to_owned(), U256::from(1_000_000u64))].into(),
        };
        let b = |eth: u64, usdt: u64| {
            vec![
                ("ETH".to_owned(), U256::from(eth), 18),
                ("USDT".to_owned(), U256::from(usdt), 6),
                ("DAI".to_owned(), U256::ZERO, 18),
            ]
        };
        assert!(judge("ETH", &b(10, 1_000_000), &alerts).is_empty());
        let low = judge("ETH", &b(9, 999_999), &alerts);
        assert_eq!(low.len(), 2, "{low:?}");
        assert_eq!(
            (low[0].symbol.as_str(), low[0].kind, low[0].holds.as_str()),
            ("ETH", "gas", "0.000000000000000009")
        );
        assert_eq!(
            (low[1].kind, low[1].holds.as_str(), low[1].min.as_str()),
            ("balance", "0.999999", "1")
        );
        assert!(
            judge("ETH", &b(0, 0), &ClassAlerts::default()).is_empty(),
            "no threshold, no alert"
        );
    }
}
