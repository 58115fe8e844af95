//! The `sign` field: lower-case hex HMAC-SHA256 of the canonical string, keyed
//! with the communication key (README, "Signature").

use super::canon::{CanonError, RawObject};
use hmac::{Hmac, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

fn mac(key: &[u8], canonical: &str) -> HmacSha256 {
    // HMAC takes keys of any length; `new_from_slice` cannot fail for it.
    let mut mac = <HmacSha256 as Mac>::new_from_slice(key).unwrap_or_else(|_| unreachable!());
    mac.update(canonical.as_bytes());
    mac
}

/// The `sign` value for a canonical string.
pub fn sign_canonical(key: &[u8], canonical: &str) -> String {
    hex::encode(mac(key, canonical).finalize().into_bytes())
}

/// Checks `provided` (hex, any case) against the canonical string in constant time.
pub fn verify_canonical(key: &[u8], canonical: &str, provided: &str) -> bool {
    match hex::decode(provided.trim()) {
        Ok(bytes) => mac(key, canonical).verify_slice(&bytes).is_ok(),
        Err(_) => false,
    }
}

/// The `sign` value for a whole JSON message (its `sign` field, if any, is ignored).
pub fn sign_message(key: &[u8], body: &[u8]) -> Result<String, CanonError> {
    let obj = RawObject::parse(body)?;
    Ok(sign_canonical(key, &obj.canonical_string()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &[u8] = b"test-secret";

    #[test]
    fn design_vectors() {
        let withdraw = "amount=50.25&chain=ETH&from_address=0x1111111111111111111111111111111111111111&queue_id=withdraw_123&symbol=USDT&timestamp=1758610297&to_address=0x2222222222222222222222222222222222222222";
        assert_eq!(
            sign_canonical(KEY, withdraw),
            "3395a064fd0f7626285e0f630f674a6e37180a4353e5c30777452affb51ef346"
        );
        let topup = "address=0x4e5b2e1dc63f6b91cb6cd759936495434c7e972f&chain=ETH&symbol=USDT&timestamp=1758610297";
        assert_eq!(
            sign_canonical(KEY, topup),
            "dc23568e23e62f8a5e989693d165b4b0efc348e0982c2c1f4e547794eef90f8a"
        );
    }

    #[test]
    fn design_vectors_from_json_messages() {
        let withdraw = br#"{"queue_id":"withdraw_123","from_address":"0x1111111111111111111111111111111111111111",
            "to_address":"0x2222222222222222222222222222222222222222","amount":50.25,"chain":"ETH",
            "symbol":"USDT","timestamp":1758610297,"sign":"ignored"}"#;
        assert_eq!(
            sign_message(KEY, withdraw).expect("signs"),
            "3395a064fd0f7626285e0f630f674a6e37180a4353e5c30777452affb51ef346"
        );
        let topup = br#"{"chain":"ETH","symbol":"USDT","address":"0x4e5b2e1dc63f6b91cb6cd759936495434c7e972f","timestamp":1758610297}"#;
        assert_eq!(
            sign_message(KEY, topup).expect("signs"),
            "dc23568e23e62f8a5e989693d165b4b0efc348e0982c2c1f4e547794eef90f8a"
        );
    }

    #[test]
    fn verify_is_case_insensitive_and_strict() {
        let c = "address=0x4e5b2e1dc63f6b91cb6cd759936495434c7e972f&chain=ETH&symbol=USDT&timestamp=1758610297";
        let good = "dc23568e23e62f8a5e989693d165b4b0efc348e0982c2c1f4e547794eef90f8a";
        assert!(verify_canonical(KEY, c, good));
        assert!(verify_canonical(KEY, c, &good.to_uppercase()));
        assert!(!verify_canonical(b"other-key", c, good));
        assert!(!verify_canonical(KEY, &c.replace("USDT", "ETH"), good));
        assert!(!verify_canonical(KEY, c, &good[..62]));
        assert!(!verify_canonical(KEY, c, "zz"));
        assert!(!verify_canonical(KEY, c, ""));
    }
}
