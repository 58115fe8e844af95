//! Low-gas and low-balance thresholds of a network's wallets
//! (`<network>_config.wallet_alerts`, docs/architecture.md, "Operator
//! console"), and how often their balances are read
//! (`balance_poll_secs`).
//!
//! Thresholds are per wallet class, as the wallet store labels them:
//! `user` (the hot wallets payouts name) and `collection`. Each class has a
//! `min_gas` in the native coin and a `min_balance` per token, in whole
//! units as requests write amounts (`"0.05"`, `"1000"`). Without a setting
//! the collection wallet is warned about when it cannot pay the gas of one
//! token transfer at the fee ceiling, and hot wallets not at all (most of
//! them are deposit addresses, which hold no gas by design).

use super::{ConfigError, invalid};
use crate::msg::amount::parse_units;
use alloy::primitives::U256;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::time::Duration;

/// Default of `balance_poll_secs`.
pub const DEFAULT_BALANCE_POLL_SECS: u64 = 60;

/// `wallet_alerts` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAlerts {
    pub user: Option<RawClass>,
    pub collection: Option<RawClass>,
}

/// One class's thresholds as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawClass {
    pub min_gas: Option<String>,
    pub min_balance: Option<BTreeMap<String, String>>,
}

/// When a wallet of one class is low, in base units.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClassAlerts {
    /// Native coin below this is too little gas (`None`: not checked).
    pub min_gas: Option<U256>,
    /// Token balances below these are low, by upper-case symbol.
    pub min_balance: BTreeMap<String, U256>,
}

/// A network's wallet checks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WalletAlerts {
    /// How often balances are read (`balance_poll_secs`, default 60).
    pub poll: Duration,
    /// Hot wallets (label `user`).
    pub user: ClassAlerts,
    /// The collection wallet.
    pub collection: ClassAlerts,
}

impl Default for WalletAlerts {
    fn default() -> Self {
        Self {
            poll: Duration::from_secs(DEFAULT_BALANCE_POLL_SECS),
            user: ClassAlerts::default(),
            collection: ClassAlerts::default(),
        }
    }
}

/// What the thresholds are read against: the network's coins.
pub(super) struct Coins<'a> {
    /// The native symbol and its decimals.
    pub native: (&'a str, u8),
    /// Each token's symbol and decimals.
    pub tokens: Vec<(&'a str, u8)>,
    /// The gas of one token transfer at the fee ceiling, in wei: the
    /// collection wallet's default `min_gas`.
    pub one_transfer: U256,
}

/// Reads `wallet_alerts` and `balance_poll_secs` of `section`.
pub(super) fn wallet_alerts(
    section: &str,
    raw: Option<RawAlerts>,
    poll_secs: Option<u64>,
    coins: &Coins<'_>,
) -> Result<WalletAlerts, ConfigError> {
    let poll = match poll_secs.unwrap_or(DEFAULT_BALANCE_POLL_SECS) {
        0 => {
            return Err(invalid(
                format!("{section}.balance_poll_secs"),
                "must be above 0",
            ));
        }
        n => Duration::from_secs(n),
    };
    let raw = raw.unwrap_or_default();
    let gas_set = raw.collection.as_ref().is_some_and(|c| c.min_gas.is_some());
    let mut collection = class(
        &format!("{section}.wallet_alerts.collection"),
        raw.collection,
        coins,
    )?;
    if !gas_set {
        collection.min_gas = Some(coins.one_transfer);
    }
    Ok(WalletAlerts {
        poll,
        user: class(&format!("{section}.wallet_alerts.user"), raw.user, coins)?,
        collection,
    })
}

/// One class's thresholds in base units.
fn class(key: &str, raw: Option<RawClass>, coins: &Coins<'_>) -> Result<ClassAlerts, ConfigError> {
    let Some(raw) = raw else {
        return Ok(ClassAlerts::default());
    };
    let (native, native_decimals) = coins.native;
    // "0" turns a check off (the collection wallet's default gas check too).
    let off = |t: &str| t.trim() == "0";
    let min_gas = raw
        .min_gas
        .filter(|t| !off(t))
        .map(|t| {
            parse_units(t.trim(), native_decimals).map_err(|e| {
                invalid(
                    format!("{key}.min_gas"),
                    format!("`{t}` is not an amount of {native}: {e}"),
                )
            })
        })
        .transpose()?;
    let mut min_balance = BTreeMap::new();
    for (symbol, text) in raw.min_balance.unwrap_or_default() {
        if off(&text) {
            continue;
        }
        let upper = symbol.trim().to_ascii_uppercase();
        let Some((_, decimals)) = coins.tokens.iter().find(|(s, _)| *s == upper) else {
            let hint = if upper == native {
                format!("{native} is the native coin: set min_gas")
            } else {
                let known: Vec<&str> = coins.tokens.iter().map(|(s, _)| *s).collect();
                format!("not a token of this network ({})", known.join(", "))
            };
            return Err(invalid(format!("{key}.min_balance.{symbol}"), hint));
        };
        let v = parse_units(text.trim(), *decimals).map_err(|e| {
            invalid(
                format!("{key}.min_balance.{symbol}"),
                format!("`{text}` is not an amount of {upper}: {e}"),
            )
        })?;
        min_balance.insert(upper, v);
    }
    Ok(ClassAlerts {
        min_gas,
        min_balance,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn coins() -> Coins<'static> {
        Coins {
            native: ("ETH", 18),
            tokens: vec![("USDT", 6)],
            one_transfer: U256::from(2_000_000_000_000_000u64),
        }
    }

    fn read(v: serde_json::Value) -> Result<WalletAlerts, ConfigError> {
        let raw: RawAlerts = serde_json::from_value(v).map_err(|e| invalid("x", e.to_string()))?;
        wallet_alerts("eth_config", Some(raw), None, &coins())
    }

    #[test]
    fn defaults_warn_about_the_collection_gas_only() {
        let a = wallet_alerts("eth_config", None, None, &coins()).expect("defaults");
        assert_eq!(a.poll, Duration::from_secs(60));
        assert_eq!(a.user, ClassAlerts::default());
        assert_eq!(a.collection.min_gas, Some(coins().one_transfer));
        assert!(a.collection.min_balance.is_empty());
    }

    #[test]
    fn amounts_are_whole_units_in_each_coins_decimals() {
        let a = read(serde_json::json!({
            "user": {"min_gas": "0.05", "min_balance": {"usdt": "100.5"}},
            "collection": {"min_gas": "1"}
        }))
        .expect("valid");
        assert_eq!(a.user.min_gas, Some(U256::from(50_000_000_000_000_000u64)));
        assert_eq!(a.user.min_balance["USDT"], U256::from(100_500_000u64));
        assert_eq!(
            a.collection.min_gas,
            Some(U256::from(1_000_000_000_000_000_000u64))
        );
        let off =
            read(serde_json::json!({"collection": {"min_gas": "0", "min_balance": {"USDT": "0"}}}))
                .expect("valid");
        assert_eq!(
            off.collection,
            ClassAlerts::default(),
            "0 turns a check off"
        );
    }

    #[test]
    fn bad_thresholds_name_their_key() {
        let key_of = |v| match read(v) {
            Err(ConfigError::Invalid { key, .. }) => key,
            other => panic!("accepted: {other:?}"),
        };
        assert_eq!(
            key_of(serde_json::json!({"user": {"min_balance": {"DAI": "1"}}})),
            "eth_config.wallet_alerts.user.min_balance.DAI"
        );
        assert_eq!(
            key_of(serde_json::json!({"user": {"min_balance": {"ETH": "1"}}})),
            "eth_config.wallet_alerts.user.min_balance.ETH"
        );
        assert_eq!(
            key_of(serde_json::json!({"collection": {"min_gas": "0.0000000000000000001"}})),
            "eth_config.wallet_alerts.collection.min_gas"
        );
        assert_eq!(
            key_of(serde_json::json!({"user": {"min_balance": {"USDT": "1.0000001"}}})),
            "eth_config.wallet_alerts.user.min_balance.USDT"
        );
        assert_eq!(
            key_of(serde_json::json!({"collection": {"min_gas": "-1"}})),
            "eth_config.wallet_alerts.collection.min_gas"
        );
        assert!(matches!(
            wallet_alerts("eth_config", None, Some(0), &coins()),
            Err(ConfigError::Invalid { ref key, .. }) if key == "eth_config.balance_poll_secs"
        ));
    }
}
