//! The in-memory set of watched addresses of one chain: O(1) per transfer.
//!
//! Each address maps to a bit mask over the chain's symbols (`ETH` is bit 0,
//! the configured tokens follow), so a million addresses cost one small hash
//! table entry each. The listen task owns it and decides from it what is new;
//! the store's watch log is its durable copy, replayed at start.

use alloy::primitives::{Address, map::AddressMap};

/// Watched addresses of one chain.
#[derive(Debug)]
pub struct WatchSet {
    symbols: Vec<String>,
    map: AddressMap<u64>,
}

impl WatchSet {
    /// An empty set over `symbols` (at most 64).
    pub fn new(symbols: Vec<String>) -> Self {
        debug_assert!(symbols.len() <= 64);
        Self {
            symbols,
            map: AddressMap::default(),
        }
    }

    fn bit(&self, symbol: &str) -> Option<u64> {
        self.symbols
            .iter()
            .position(|s| s == symbol)
            .map(|i| 1u64 << i)
    }

    /// Watches `address` for `symbol`; `false` if the symbol is unknown.
    pub fn insert(&mut self, address: Address, symbol: &str) -> bool {
        match self.bit(symbol) {
            Some(bit) => {
                *self.map.entry(address).or_insert(0) |= bit;
                true
            }
            None => false,
        }
    }

    /// Stops watching `address` for `symbol`; `false` if it was not watched.
    pub fn remove(&mut self, address: Address, symbol: &str) -> bool {
        let Some(bit) = self.bit(symbol) else {
            return false;
        };
        let Some(mask) = self.map.get_mut(&address) else {
            return false;
        };
        let was = *mask & bit != 0;
        *mask &= !bit;
        if *mask == 0 {
            self.map.remove(&address);
        }
        was
    }

    /// Whether `address` is watched for `symbol`.
    pub fn contains(&self, address: &Address, symbol: &str) -> bool {
        match (self.map.get(address), self.bit(symbol)) {
            (Some(mask), Some(bit)) => mask & bit != 0,
            _ => false,
        }
    }

    /// Number of watched addresses (any symbol).
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether nothing is watched.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_symbol_membership() {
        let mut w = WatchSet::new(vec!["ETH".into(), "USDT".into()]);
        let a = Address::repeat_byte(1);
        assert!(w.insert(a, "USDT"));
        assert!(!w.insert(a, "DAI"));
        assert!(w.contains(&a, "USDT"));
        assert!(!w.contains(&a, "ETH"));
        assert!(w.insert(a, "ETH"));
        w.remove(a, "USDT");
        assert!(!w.contains(&a, "USDT"));
        assert!(w.contains(&a, "ETH"));
        assert_eq!(w.len(), 1);
        w.remove(a, "ETH");
        assert!(w.is_empty());
    }
}
