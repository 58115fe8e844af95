//! Each network's assets as listen reads them: decimals and token contracts,
//! from the config's section of that network.

use crate::config::Config;
use crate::store::Payout;
use alloy::primitives::Address;
use std::collections::HashMap;
use tracing::warn;

/// One asset of one network.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Asset {
    decimals: u8,
    /// `None` for the native coin.
    contract: Option<Address>,
}

/// Every configured network's assets, by network and symbol.
#[derive(Debug, Clone, Default)]
pub struct Tokens {
    by_chain: HashMap<String, HashMap<String, Asset>>,
}

impl Tokens {
    /// The assets of every network `config` runs.
    pub fn new(config: &Config) -> Self {
        let by_chain = config
            .networks
            .iter()
            .map(|n| {
                let assets = n
                    .evm
                    .symbols()
                    .map(|(symbol, decimals)| {
                        let contract = n.evm.token(&symbol).map(|t| t.contract);
                        (symbol, Asset { decimals, contract })
                    })
                    .collect();
                (n.name.clone(), assets)
            })
            .collect();
        Self { by_chain }
    }

    /// Decimals of `symbol` on `chain` (18 for one the config no longer
    /// knows, with a log).
    pub fn decimals(&self, chain: &str, symbol: &str) -> u8 {
        self.asset(chain, symbol)
            .map(|a| a.decimals)
            .unwrap_or_else(|| {
                warn!(target: "m2pool::listen", chain, symbol, "no decimals known for symbol; assuming 18");
                18
            })
    }

    /// Every symbol of `chain`, in no particular order.
    pub fn symbols(&self, chain: &str) -> Vec<String> {
        self.by_chain
            .get(chain)
            .map(|a| a.keys().cloned().collect())
            .unwrap_or_default()
    }

    /// Decimals of payout `p`: as recorded, else (an older row) the config's.
    pub fn of_payout(&self, p: &Payout) -> u8 {
        p.decimals
            .unwrap_or_else(|| self.decimals(&p.chain, &p.symbol))
    }

    /// The configured contract of token `symbol` on `chain`.
    pub fn contract(&self, chain: &str, symbol: &str) -> Option<Address> {
        self.asset(chain, symbol).and_then(|a| a.contract)
    }

    /// Whether `symbol` is `chain`'s native coin (`ETH`, `BNB` …).
    pub fn is_native(&self, chain: &str, symbol: &str) -> bool {
        self.asset(chain, symbol)
            .is_some_and(|a| a.contract.is_none())
    }

    fn asset(&self, chain: &str, symbol: &str) -> Option<Asset> {
        self.by_chain.get(chain)?.get(symbol).copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimals_and_contracts_are_per_network_and_unknown_symbols_read_as_18() {
        let config = crate::config::Config::from_json(include_bytes!(
            "../../tests/fixtures/compat/config.go-v2.json"
        ))
        .expect("fixture config");
        let tokens = Tokens::new(&config);
        assert_eq!(tokens.decimals("ETH", "ETH"), 18);
        assert_eq!(tokens.decimals("ETH", "USDT"), 6);
        assert!(tokens.contract("ETH", "USDT").is_some());
        assert_eq!(tokens.contract("ETH", "ETH"), None);
        assert!(tokens.is_native("ETH", "ETH"));
        assert!(!tokens.is_native("ETH", "USDT"));
        assert!(!tokens.is_native("BSC", "ETH"), "a network not run");
        assert_eq!(tokens.decimals("ETH", "NOPE"), 18);
        assert_eq!(tokens.decimals("BSC", "USDT"), 18, "an unknown network");
        assert_eq!(tokens.contract("BSC", "USDT"), None);
    }
}
