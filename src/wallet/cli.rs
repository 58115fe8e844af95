//! `m2pool-payment wallet new | import | list`: what an operator does with hot
//! wallets. Keys are generated or read here, encrypted at once, and never
//! printed; `list` prints addresses, labels and ledger balances only.

use super::{Kek, Label, WalletError, WalletStore};
use crate::msg::{addr_hex, amount::format_units};
use alloy::primitives::Address;
use alloy::signers::local::PrivateKeySigner;
use std::collections::HashMap;
use std::fmt::Write as _;
use zeroize::Zeroizing;

/// A wallet command failure.
#[derive(Debug, thiserror::Error)]
pub enum WalletCliError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] WalletError),
    /// The imported text is not a private key.
    #[error("not a private key: expected 64 hex digits, with or without 0x")]
    BadKey,
    /// The address is in the store already.
    #[error("wallet {0} is already in the store")]
    Exists(String),
    /// `wallet enable` names an address whose key the store does not hold.
    #[error("wallet {0} is not in the store on any network; create or import it first")]
    Unknown(String),
}

async fn store_signer(
    store: &WalletStore,
    kek: &Kek,
    chain: &str,
    signer: &PrivateKeySigner,
    label: Label,
) -> Result<Address, WalletCliError> {
    let address = signer.address();
    let secret = Zeroizing::new(signer.to_bytes().0);
    let encrypted = kek.encrypt(&address, &secret);
    if !store.add(chain, address, label, &encrypted).await? {
        return Err(WalletCliError::Exists(addr_hex(&address)));
    }
    Ok(address)
}

/// Creates `count` wallets and returns their addresses.
pub async fn create(
    store: &WalletStore,
    kek: &Kek,
    chain: &str,
    count: u32,
    label: Label,
) -> Result<Vec<Address>, WalletCliError> {
    let mut out = Vec::with_capacity(count as usize);
    for _ in 0..count {
        let signer = PrivateKeySigner::random();
        out.push(store_signer(store, kek, chain, &signer, label).await?);
    }
    Ok(out)
}

/// Imports the private key in `text` (hex, optional `0x`, surrounding
/// whitespace ignored) and returns its address.
pub async fn import(
    store: &WalletStore,
    kek: &Kek,
    chain: &str,
    text: &str,
    label: Label,
) -> Result<Address, WalletCliError> {
    let t = text.trim();
    let t = t.strip_prefix("0x").unwrap_or(t);
    let mut raw = Zeroizing::new([0u8; 32]);
    if t.len() != 64 || hex::decode_to_slice(t, raw.as_mut_slice()).is_err() {
        return Err(WalletCliError::BadKey);
    }
    let signer =
        PrivateKeySigner::from_slice(raw.as_slice()).map_err(|_| WalletCliError::BadKey)?;
    store_signer(store, kek, chain, &signer, label).await
}

/// Enables wallet `address`, already in the store for another network, on
/// `chain` too: the same key (encrypted for its address, so valid on every
/// EVM network) is stored under `chain`, with its own label, ledger and
/// nonces there. No key material is asked for or shown.
pub async fn enable(
    store: &WalletStore,
    chain: &str,
    address: Address,
    label: Label,
) -> Result<(), WalletCliError> {
    let Some(encrypted) = store.any_encrypted_key(address).await? else {
        return Err(WalletCliError::Unknown(addr_hex(&address)));
    };
    if !store.add(chain, address, label, &encrypted).await? {
        return Err(WalletCliError::Exists(addr_hex(&address)));
    }
    Ok(())
}

/// The `wallet list` table: network, address, label and each ledger
/// balance, exact, for each network of `nets` (name, decimals by symbol).
pub async fn list(
    store: &WalletStore,
    nets: &[(String, HashMap<String, u8>)],
) -> Result<String, WalletCliError> {
    let mut out = String::new();
    for (chain, decimals) in nets {
        list_chain(store, chain, decimals, &mut out).await?;
    }
    Ok(out)
}

async fn list_chain(
    store: &WalletStore,
    chain: &str,
    decimals: &HashMap<String, u8>,
    out: &mut String,
) -> Result<(), WalletCliError> {
    let wallets = store.wallets(chain).await?;
    let mut balances: HashMap<Address, Vec<String>> = HashMap::new();
    for b in store.balances(chain).await? {
        let d = decimals.get(&b.symbol).copied().unwrap_or(0);
        let text = format!(
            "{}{} {}",
            if b.balance.is_negative() { "-" } else { "" },
            format_units(b.balance.unsigned_abs(), d),
            b.symbol
        );
        balances.entry(b.address).or_default().push(text);
    }
    for w in wallets {
        let bal = balances
            .remove(&w.address)
            .map(|b| b.join(", "))
            .unwrap_or_else(|| "-".to_owned());
        let _ = writeln!(
            out,
            "{chain:<8}  {}  {:<10}  {}",
            addr_hex(&w.address),
            w.label.as_str(),
            bal
        );
    }
    Ok(())
}
