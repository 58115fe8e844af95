//! Signed webhooks (docs/architecture.md, "Webhooks"): every answer to a
//! request that carried a `notify_url` (or of a kind the config gives a URL
//! for) is POSTed there, signed, retried on a schedule, in order per
//! request, until the receiver answers 2xx or the schedule ends and the
//! delivery goes to the dead list.
//!
//! A request and its answers meet through a *target*: the sha256 of what
//! they share, the kind and `queue_id` for withdrawals and payments, the
//! kind, chain, address and symbol for topups (and removes, with their
//! `queue_id` when they cancel). listen stores a request's `notify_url`
//! under its target with the inbox row; the stream's sequencer, numbering
//! the answers, plans one delivery per answer whose target has a URL; the
//! [`dispatch`] task sends them.

pub mod dispatch;

use crate::config::WebhookConfig;
use crate::msg::{Kind, RawObject, lenient_str};
use crate::store::{Planned, StreamRow};
use hmac::{Hmac, Mac};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use std::collections::HashMap;

/// Header with the HMAC-SHA256 of `"{timestamp}.{body}"`, lower-case hex.
pub const SIGNATURE_HEADER: &str = "X-M2Pool-Signature";
/// Header with the unix time of the attempt, in seconds.
pub const TIMESTAMP_HEADER: &str = "X-M2Pool-Timestamp";
/// Header with the answer's stream position: the same on every attempt.
pub const IDEMPOTENCY_HEADER: &str = "Idempotency-Key";
/// Header with the answer's kind (`pay_resp`).
pub const EVENT_HEADER: &str = "X-M2Pool-Event";

/// Plans a delivery for each answer the sequencer numbers (dead letters
/// are not answers and get none).
#[derive(Debug, Clone, Default)]
pub struct Planner {
    /// The config's URL per request kind, for requests without one.
    fallback: HashMap<Kind, String>,
}

impl Planner {
    /// A planner with the config's per-kind URLs.
    pub fn new(config: &WebhookConfig) -> Self {
        Self {
            fallback: config
                .urls
                .iter()
                .map(|(k, u)| (*k, u.to_string()))
                .collect(),
        }
    }

    /// The delivery to plan for `row`, if it is an answer.
    pub fn plan(&self, row: &StreamRow) -> Option<Planned> {
        let (kind, target) = answer_target(&row.kind, &row.body)?;
        Some(Planned {
            target,
            fallback: self.fallback.get(&kind).cloned(),
        })
    }
}

/// A request's target: where its `notify_url` is kept.
pub fn request_target(kind: Kind, obj: &RawObject) -> [u8; 32] {
    let field = |f: &'static str| lenient_str(obj, f);
    target(
        kind,
        field("chain"),
        field("address"),
        field("symbol"),
        field("queue_id"),
    )
}

/// An answer's request kind and target, from its outbox kind (`topup_resp`)
/// and body; `None` for dead letters and anything that is not an answer.
pub fn answer_target(kind: &str, body: &[u8]) -> Option<(Kind, [u8; 32])> {
    #[derive(Deserialize)]
    struct Keys {
        chain: Option<String>,
        address: Option<String>,
        symbol: Option<String>,
        queue_id: Option<String>,
    }
    let kind = Kind::parse(kind.strip_suffix("_resp")?)?;
    let k: Keys = serde_json::from_slice(body).ok()?;
    Some((kind, target(kind, k.chain, k.address, k.symbol, k.queue_id)))
}

fn target(
    kind: Kind,
    chain: Option<String>,
    address: Option<String>,
    symbol: Option<String>,
    queue_id: Option<String>,
) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(kind.as_str());
    let mut part = |s: Option<String>| {
        h.update([0u8]);
        h.update(s.unwrap_or_default().to_ascii_lowercase());
    };
    match kind {
        Kind::Withdraw | Kind::Pay => part(queue_id),
        Kind::Topup => {
            part(chain);
            part(address);
            part(symbol);
        }
        Kind::Remove => {
            part(chain);
            part(address);
            part(symbol);
            part(queue_id);
        }
    }
    h.finalize().into()
}

/// `X-M2Pool-Signature` of `body` sent at `timestamp`: HMAC-SHA256 keyed
/// with the communication key over `"{timestamp}.{body}"`, lower-case hex.
pub fn signature(key: &[u8], timestamp: i64, body: &[u8]) -> String {
    // HMAC takes keys of any length; `new_from_slice` cannot fail for it.
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key).unwrap_or_else(|_| unreachable!());
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    hex::encode(mac.finalize().into_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::msg::Status;
    use crate::reply;
    use alloy::primitives::Address;

    fn req(body: &str) -> RawObject {
        RawObject::parse(body.as_bytes()).expect("json")
    }

    #[test]
    fn answers_find_the_target_their_request_set() {
        let addr: Address = "0x4e5b2e1dc63f6b91cb6cd759936495434c7e972f"
            .parse()
            .expect("address");
        let topup = req(r#"{"chain":"eth","symbol":"usdt","timestamp":1,"sign":"x",
            "address":"0x4E5B2E1DC63F6B91CB6CD759936495434C7E972F"}"#);
        let deposit = br#"{"address":"0x4e5b2e1dc63f6b91cb6cd759936495434c7e972f","status":2,
            "chain":"ETH","symbol":"USDT","amount":1.5,"tx_hash":"0x01"}"#;
        assert_eq!(
            answer_target("topup_resp", deposit),
            Some((Kind::Topup, request_target(Kind::Topup, &topup)))
        );
        // The same address and symbol on a remove is another target.
        assert_ne!(
            request_target(Kind::Remove, &topup),
            request_target(Kind::Topup, &topup)
        );
        let remove = req(r#"{"chain":"ETH","symbol":"USDT","timestamp":1,"sign":"x",
            "address":"0x4e5b2e1dc63f6b91cb6cd759936495434c7e972f","queue_id":"w-1"}"#);
        let cancelled = reply::remove(
            &addr,
            "ETH",
            "USDT",
            Some("w-1".into()),
            Status::Success,
            None,
        );
        assert_eq!(
            answer_target("remove_resp", &cancelled.body),
            Some((Kind::Remove, request_target(Kind::Remove, &remove)))
        );
        let pay = req(
            r#"{"queue_id":"Q-9","from_address":"0x1","chain":"ETH","symbol":"USDT",
            "timestamp":1,"sign":"x","transactions":[]}"#,
        );
        let item = br#"{"queue_id":"Q-9","status":1,"amount":2,"chain":"ETH","symbol":"USDT",
            "order_id":"o-1","tx_hash":"0x02"}"#;
        assert_eq!(
            answer_target("pay_resp", item),
            Some((Kind::Pay, request_target(Kind::Pay, &pay)))
        );
        // A withdrawal with the same queue_id is another request.
        assert_ne!(
            answer_target("withdraw_resp", item).map(|t| t.1),
            Some(request_target(Kind::Pay, &pay))
        );
        assert_eq!(answer_target("dead_letter.pay", item), None);
        assert_eq!(answer_target("pay_resp", b"not json"), None);
    }

    #[test]
    fn the_config_url_of_a_kind_is_the_fallback_and_dead_letters_get_none() {
        let mut cfg = WebhookConfig::default();
        cfg.urls.insert(
            Kind::Topup,
            url::Url::parse("https://shop.example/deposits").expect("url"),
        );
        let planner = Planner::new(&cfg);
        let row = |kind: &str| StreamRow {
            seq: 7,
            kind: kind.to_owned(),
            body: br#"{"address":"0x01","chain":"ETH","symbol":"USDT","status":2,"queue_id":"q"}"#
                .to_vec(),
        };
        let topup = planner.plan(&row("topup_resp")).expect("an answer");
        assert_eq!(
            topup.fallback.as_deref(),
            Some("https://shop.example/deposits")
        );
        let pay = planner.plan(&row("pay_resp")).expect("an answer");
        assert_eq!(pay.fallback, None, "no URL for pay in the config");
        assert!(planner.plan(&row("dead_letter.topup")).is_none());
    }

    #[test]
    fn signature_covers_timestamp_and_body() {
        // python3 -c 'import hmac,hashlib;print(hmac.new(b"test-secret",
        //   b"1758610297.{\"status\":1}",hashlib.sha256).hexdigest())'
        assert_eq!(
            signature(b"test-secret", 1_758_610_297, br#"{"status":1}"#),
            "8ebfc76a3112a34e93fc2f4d9e277493e113918567f347653ea2f149a33dee21"
        );
        assert_ne!(
            signature(b"test-secret", 1_758_610_298, br#"{"status":1}"#),
            signature(b"test-secret", 1_758_610_297, br#"{"status":1}"#)
        );
    }
}
