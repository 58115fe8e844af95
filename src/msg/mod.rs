//! The wire contract: request fields, response bodies, amounts and signatures
//! (README, "Messages").
//!
//! A request body is read once into a [`RawObject`] (every member's exact text);
//! the signature is checked over its canonical string ([`sign`]); typed fields
//! are then taken out with the getters here, each error naming its field.
//! Responses are serde structs whose field names and order follow the Go
//! version; amounts are written as exact JSON numbers ([`Decimal`]).

pub mod amount;
pub mod canon;
pub mod sign;

pub use canon::{CanonError, RawObject};

use alloy::primitives::{Address, B256, U256};
use serde::{Serialize, Serializer};
use serde_json::value::RawValue;

/// The four request kinds, named as in the config's queue keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// Deposit watch.
    Topup,
    /// Withdrawal.
    Withdraw,
    /// Payment (single or batch).
    Pay,
    /// Remove watch / cancel payout.
    Remove,
}

impl Kind {
    /// Every kind.
    pub const ALL: [Kind; 4] = [Kind::Topup, Kind::Withdraw, Kind::Pay, Kind::Remove];

    /// The config key of the request queue (`topup`).
    pub const fn as_str(self) -> &'static str {
        match self {
            Kind::Topup => "topup",
            Kind::Withdraw => "withdraw",
            Kind::Pay => "pay",
            Kind::Remove => "remove",
        }
    }

    /// The kind named by a config key, if any.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `status` in every response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Failed (final).
    Failed = 0,
    /// Succeeded (final).
    Success = 1,
    /// Seen on chain or broadcast, not final yet.
    Pending = 2,
    /// The request's signature did not verify.
    BadSignature = 3,
}

impl Serialize for Status {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u8(*self as u8)
    }
}

/// An exact decimal written as a JSON number (`100.5`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decimal(String);

impl Decimal {
    /// Base units written with `decimals` places.
    pub fn from_units(value: U256, decimals: u8) -> Self {
        Self(amount::format_units(value, decimals))
    }

    /// Zero, for responses that move nothing.
    pub fn zero() -> Self {
        Self("0".to_owned())
    }

    /// A request's own JSON number text, echoed in a refusal; zero when the
    /// text is not a JSON number.
    pub fn echo(text: Option<&str>) -> Self {
        match text {
            Some(t)
                if t.len() <= ECHO_MAX
                    && serde_json::from_str::<serde::de::IgnoredAny>(t).is_ok()
                    && t.starts_with(|c: char| c == '-' || c.is_ascii_digit()) =>
            {
                Self(t.to_owned())
            }
            _ => Self::zero(),
        }
    }

    /// The decimal text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Serialize for Decimal {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let raw = RawValue::from_string(self.0.clone()).map_err(serde::ser::Error::custom)?;
        raw.serialize(s)
    }
}

/// Lower-case `0x` hex of an address, as every response writes it.
pub fn addr_hex(a: &Address) -> String {
    format!("{a:#x}")
}

/// Lower-case `0x` hex of a hash.
pub fn hash_hex(h: &B256) -> String {
    format!("{h:#x}")
}

/// Reads an address in any case: `0x` and 40 hex digits. The checksum, if the
/// mixed case carries one, is not enforced (README, "Amounts and addresses": any case is accepted).
pub fn parse_address(s: &str) -> Result<Address, String> {
    let hex = s
        .strip_prefix("0x")
        .or_else(|| s.strip_prefix("0X"))
        .ok_or_else(|| "must start with 0x".to_owned())?;
    if hex.len() != 40 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err("must be 0x followed by 40 hex digits".to_owned());
    }
    let mut bytes = [0u8; 20];
    hex::decode_to_slice(hex, &mut bytes).map_err(|e| e.to_string())?;
    Ok(Address::from(bytes))
}

/// A field that is missing, of the wrong JSON type, or unusable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FieldError {
    /// Absent or null.
    #[error("missing field `{0}`")]
    Missing(&'static str),
    /// Present with another JSON type.
    #[error("field `{field}` must be {expected}")]
    WrongType {
        /// Field name.
        field: &'static str,
        /// What it must be, in words.
        expected: &'static str,
    },
    /// Right type, unusable value.
    #[error("field `{field}` {reason}")]
    Invalid {
        /// Field name.
        field: &'static str,
        /// Why, in words.
        reason: String,
    },
}

fn present<'a>(obj: &'a RawObject, field: &'static str) -> Result<&'a str, FieldError> {
    match obj.get(field).map(|v| v.get().trim()) {
        None | Some("null") => Err(FieldError::Missing(field)),
        Some(text) => Ok(text),
    }
}

/// A required string field.
pub fn str_field(obj: &RawObject, field: &'static str) -> Result<String, FieldError> {
    let text = present(obj, field)?;
    if !text.starts_with('"') {
        return Err(FieldError::WrongType {
            field,
            expected: "a string",
        });
    }
    serde_json::from_str(text).map_err(|e| FieldError::Invalid {
        field,
        reason: e.to_string(),
    })
}

/// An optional string field (absent and null are the same).
pub fn opt_str_field(obj: &RawObject, field: &'static str) -> Result<Option<String>, FieldError> {
    match str_field(obj, field) {
        Ok(s) => Ok(Some(s)),
        Err(FieldError::Missing(_)) => Ok(None),
        Err(e) => Err(e),
    }
}

/// A string field if it is one, for addressing a rejection; never fails.
pub fn lenient_str(obj: &RawObject, field: &'static str) -> Option<String> {
    str_field(obj, field).ok()
}

/// Longest string a refusal echoes back ([`echo_str`]): above every valid
/// value (ids are at most 200 characters), far below what would let one
/// request make replies many times its own size.
pub const ECHO_MAX: usize = 256;

/// A string field to echo in a refusal: as [`lenient_str`], but `None` when it
/// is longer than [`ECHO_MAX`] bytes (no valid request has such a value).
pub fn echo_str(obj: &RawObject, field: &'static str) -> Option<String> {
    lenient_str(obj, field).filter(|s| s.len() <= ECHO_MAX)
}

/// A required integer field (`timestamp`).
pub fn int_field(obj: &RawObject, field: &'static str) -> Result<i64, FieldError> {
    let text = present(obj, field)?;
    let is_number = text.starts_with(|c: char| c == '-' || c.is_ascii_digit());
    if !is_number {
        return Err(FieldError::WrongType {
            field,
            expected: "a number",
        });
    }
    text.parse().map_err(|_| FieldError::Invalid {
        field,
        reason: "must be a whole number".to_owned(),
    })
}

/// A required JSON number field, as its exact text (`amount`).
pub fn number_text<'a>(obj: &'a RawObject, field: &'static str) -> Result<&'a str, FieldError> {
    let text = present(obj, field)?;
    if !text.starts_with(|c: char| c == '-' || c.is_ascii_digit()) {
        return Err(FieldError::WrongType {
            field,
            expected: "a JSON number",
        });
    }
    Ok(text)
}

/// A required address field.
pub fn address_field(obj: &RawObject, field: &'static str) -> Result<Address, FieldError> {
    let s = str_field(obj, field)?;
    parse_address(&s).map_err(|reason| FieldError::Invalid {
        field,
        reason: format!("is not a valid address: {reason}"),
    })
}

/// Deposit notification (and topup refusal) on the `topup_resp` queue.
#[derive(Debug, Clone, Serialize)]
pub struct TopupResponse {
    /// The watched address, lower case.
    pub address: String,
    /// 2 seen, 1 final, 0 failed or refused, 3 bad signature.
    pub status: Status,
    /// Chain (`ETH`).
    pub chain: String,
    /// Symbol (`USDT`, `ETH`).
    pub symbol: String,
    /// Deposited amount in token units; 0 for a refusal.
    pub amount: Decimal,
    /// Deposit transaction; empty for a refusal.
    pub tx_hash: String,
    /// Sender of the deposit.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from_address: Option<String>,
    /// Block the deposit is in.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub block_height: Option<u64>,
    /// Why the request was refused or the deposit failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Result of a withdrawal (`withdraw_resp`) or of one payment transfer
/// (`pay_resp`, with `order_id`).
#[derive(Debug, Clone, Serialize)]
pub struct PayoutResponse {
    /// The request's id.
    pub queue_id: String,
    /// 2 broadcast, 1 final, 0 failed or refused, 3 bad signature.
    pub status: Status,
    /// Amount in token units.
    pub amount: Decimal,
    /// Chain.
    pub chain: String,
    /// Symbol.
    pub symbol: String,
    /// The payment item (pay only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub order_id: Option<String>,
    /// The transaction; empty when nothing was sent.
    pub tx_hash: String,
    /// The wallet that paid (or was asked to).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from_address: Option<String>,
    /// Recipient.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub to_address: Option<String>,
    /// Why it was refused or failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Result of a remove request on the `remove_resp` queue.
#[derive(Debug, Clone, Serialize)]
pub struct RemoveResponse {
    /// The address named by the request, lower case.
    pub address: String,
    /// 1 removed, 0 refused, 3 bad signature.
    pub status: Status,
    /// Chain.
    pub chain: String,
    /// Symbol.
    pub symbol: String,
    /// The payout the request asked to cancel.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub queue_id: Option<String>,
    /// Why it was refused.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obj(s: &str) -> RawObject {
        RawObject::parse(s.as_bytes()).expect("object")
    }

    #[test]
    fn addresses_any_case_written_lower() {
        let a = parse_address("0x4E5B2E1DC63F6B91CB6CD759936495434C7E972F").expect("upper");
        let b = parse_address("0x4e5b2e1dc63f6b91cb6cd759936495434c7e972f").expect("lower");
        assert_eq!(a, b);
        assert_eq!(addr_hex(&a), "0x4e5b2e1dc63f6b91cb6cd759936495434c7e972f");
        for bad in [
            "",
            "0x",
            "4e5b2e1dc63f6b91cb6cd759936495434c7e972f",
            "0x1111...",
            "0x4e5b2e1dc63f6b91cb6cd759936495434c7e972",
            "0x4e5b2e1dc63f6b91cb6cd759936495434c7e972g",
            " 0x4e5b2e1dc63f6b91cb6cd759936495434c7e972f",
        ] {
            assert!(parse_address(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn getters_name_the_field() {
        let o = obj(r#"{"a":"x","n":12,"f":1.5,"b":true,"z":null,"s":"12"}"#);
        assert_eq!(str_field(&o, "a"), Ok("x".into()));
        assert_eq!(str_field(&o, "z"), Err(FieldError::Missing("z")));
        assert_eq!(str_field(&o, "q"), Err(FieldError::Missing("q")));
        assert!(matches!(
            str_field(&o, "n"),
            Err(FieldError::WrongType { field: "n", .. })
        ));
        assert_eq!(opt_str_field(&o, "z"), Ok(None));
        assert_eq!(int_field(&o, "n"), Ok(12));
        assert!(matches!(
            int_field(&o, "f"),
            Err(FieldError::Invalid { field: "f", .. })
        ));
        assert!(matches!(
            int_field(&o, "s"),
            Err(FieldError::WrongType { .. })
        ));
        assert_eq!(number_text(&o, "f"), Ok("1.5"));
        assert!(matches!(
            number_text(&o, "s"),
            Err(FieldError::WrongType { .. })
        ));
        assert!(matches!(
            number_text(&o, "b"),
            Err(FieldError::WrongType { .. })
        ));
        let e = address_field(&o, "a").expect_err("not an address");
        assert!(e.to_string().contains("`a`"), "{e}");
    }

    #[test]
    fn responses_match_the_go_shape() {
        let r = TopupResponse {
            address: "0x4e5b2e1dc63f6b91cb6cd759936495434c7e972f".into(),
            status: Status::Pending,
            chain: "ETH".into(),
            symbol: "USDT".into(),
            amount: Decimal::from_units(U256::from(100_500_000u64), 6),
            tx_hash: "0xabc".into(),
            from_address: None,
            block_height: None,
            error: None,
        };
        let got = serde_json::to_string(&r).expect("serializes");
        let want = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/compat/messages/topup_resp.json"
        ))
        .expect("fixture");
        let want: serde_json::Value = serde_json::from_str(&want).expect("fixture is JSON");
        let got_v: serde_json::Value = serde_json::from_str(&got).expect("JSON");
        let keys = |v: &serde_json::Value| {
            v.as_object()
                .map(|o| o.keys().cloned().collect::<Vec<_>>())
                .unwrap_or_default()
        };
        assert_eq!(keys(&got_v), keys(&want));
        assert!(got.contains(r#""amount":100.5,"#), "{got}");
        assert!(got.contains(r#""status":2,"#), "{got}");
    }
}
