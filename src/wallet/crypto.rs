//! Private keys at rest: AES-256-GCM with a random 96-bit nonce per key, the
//! wallet address as associated data (a ciphertext moved to another row does
//! not decrypt), stored as `v1:` + hex(nonce ‖ ciphertext ‖ tag).
//!
//! The key-encryption key (KEK) comes from `--wallet-key-file` or
//! `M2POOL_WALLET_KEY`: 64 hex digits are used as the 32-byte key itself, any
//! other text is stretched with HKDF-SHA256. Without either, the KEK is derived
//! from the communication key with HKDF-SHA256 (a different `info`, so the two
//! keys are independent) — which ties the wallets to that key: rotate it and
//! they no longer decrypt. Production should set a wallet key of its own.

use crate::secret::Secret;
use aes_gcm::aead::{Aead, AeadCore, KeyInit, OsRng, Payload};
use aes_gcm::{Aes256Gcm, Key, Nonce};
use alloy::primitives::Address;
use hkdf::Hkdf;
use sha2::Sha256;
use zeroize::Zeroizing;

const SALT: &[u8] = b"m2pool-payment wallet kek v1";
const PREFIX: &str = "v1:";

/// Why a stored key does not decrypt.
#[derive(Debug, thiserror::Error)]
pub enum CryptoError {
    /// Not in the `v1:hex` format.
    #[error("stored key of {address} is not in the v1 format")]
    Format {
        /// The wallet.
        address: String,
    },
    /// Authentication failed: wrong KEK, or the row was altered.
    #[error("stored key of {address} does not decrypt: wrong wallet key, or the row was altered")]
    Decrypt {
        /// The wallet.
        address: String,
    },
}

/// The key-encryption key.
#[derive(Debug, Clone)]
pub struct Kek(Secret<[u8; 32]>);

fn hkdf(ikm: &[u8], info: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    // 32 bytes is far below HKDF-SHA256's limit, so expand cannot fail.
    if Hkdf::<Sha256>::new(Some(SALT), ikm)
        .expand(info, &mut out)
        .is_err()
    {
        unreachable!("HKDF-SHA256 expands to 32 bytes");
    }
    out
}

impl Kek {
    /// From configured material: 64 hex digits are the key; other text is
    /// stretched with HKDF-SHA256. Surrounding whitespace is ignored.
    pub fn from_material(material: &[u8]) -> Self {
        let text = material.trim_ascii();
        let mut raw = [0u8; 32];
        if text.len() == 64 && hex::decode_to_slice(text, &mut raw).is_ok() {
            return Self(Secret::new(raw));
        }
        Self(Secret::new(hkdf(
            text,
            b"wallet key from operator material",
        )))
    }

    /// Derived from the communication key (when no wallet key is configured).
    pub fn from_comm_key(comm: &[u8]) -> Self {
        Self(Secret::new(hkdf(
            comm,
            b"wallet key from communication key",
        )))
    }

    fn cipher(&self) -> Aes256Gcm {
        Aes256Gcm::new(Key::<Aes256Gcm>::from_slice(self.0.expose()))
    }

    /// Encrypts a 32-byte private key for `address`.
    pub fn encrypt(&self, address: &Address, secret: &[u8; 32]) -> String {
        let nonce = Aes256Gcm::generate_nonce(&mut OsRng);
        let payload = Payload {
            msg: secret,
            aad: address.as_slice(),
        };
        // Encryption with a 96-bit nonce and a 32-byte message cannot fail.
        let ct = self
            .cipher()
            .encrypt(&nonce, payload)
            .unwrap_or_else(|_| unreachable!("AES-GCM encrypts 32 bytes"));
        let mut out = Vec::with_capacity(nonce.len() + ct.len());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&ct);
        format!("{PREFIX}{}", hex::encode(out))
    }

    /// Decrypts the private key stored for `address`.
    pub fn decrypt(
        &self,
        address: &Address,
        stored: &str,
    ) -> Result<Zeroizing<[u8; 32]>, CryptoError> {
        let name = || format!("{address:#x}");
        let bytes = stored
            .strip_prefix(PREFIX)
            .and_then(|h| hex::decode(h).ok())
            .filter(|b| b.len() == 12 + 32 + 16)
            .ok_or_else(|| CryptoError::Format { address: name() })?;
        let (nonce, ct) = bytes.split_at(12);
        let payload = Payload {
            msg: ct,
            aad: address.as_slice(),
        };
        let plain = Zeroizing::new(
            self.cipher()
                .decrypt(Nonce::from_slice(nonce), payload)
                .map_err(|_| CryptoError::Decrypt { address: name() })?,
        );
        let mut key = Zeroizing::new([0u8; 32]);
        key.copy_from_slice(&plain);
        Ok(key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_binds_to_the_address() {
        let kek = Kek::from_material(b"operator passphrase\n");
        let a = Address::repeat_byte(1);
        let secret = [7u8; 32];
        let stored = kek.encrypt(&a, &secret);
        assert!(stored.starts_with("v1:"));
        assert!(!stored.contains(&hex::encode(secret)));
        assert_eq!(*kek.decrypt(&a, &stored).expect("decrypts"), secret);
        // Another address, another KEK, or a flipped bit: refused.
        assert!(kek.decrypt(&Address::repeat_byte(2), &stored).is_err());
        assert!(Kek::from_material(b"other").decrypt(&a, &stored).is_err());
        let mut tampered = stored.clone().into_bytes();
        let last = tampered.len() - 1;
        tampered[last] = if tampered[last] == b'0' { b'1' } else { b'0' };
        assert!(
            kek.decrypt(&a, &String::from_utf8(tampered).expect("ascii"))
                .is_err()
        );
        assert!(kek.decrypt(&a, "plain-key").is_err());
        // Two encryptions differ (random nonce).
        assert_ne!(kek.encrypt(&a, &secret), stored);
    }

    #[test]
    fn hex_material_is_the_key_and_comm_derivation_differs() {
        let hexkey = "11".repeat(32);
        let k = Kek::from_material(hexkey.as_bytes());
        assert_eq!(k.0.expose(), &[0x11u8; 32]);
        let from_comm = Kek::from_comm_key(b"test-secret");
        let from_text = Kek::from_material(b"test-secret");
        assert_ne!(from_comm.0.expose(), from_text.0.expose());
        assert_eq!(format!("{from_comm:?}"), "Kek([redacted])");
    }
}
