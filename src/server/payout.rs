//! Withdraw and pay requests: one transfer, or the batch form of pay with a
//! `transactions` array (one response per transfer, keyed by `order_id`).
//!
//! A batch is valid or refused as a whole: when one item is wrong, every item
//! is answered `0` and the error names the item.

use super::{Routed, Router, refusal};
use crate::msg::{self, Decimal, Kind, PayoutResponse, RawObject, Status, amount};
use crate::reply;
use crate::store::NewPayout;
use alloy::primitives::{Address, U256};
use serde_json::value::RawValue;
use sha2::{Digest, Sha256};
use std::collections::HashSet;

/// Most transfers in one payment.
pub const MAX_BATCH: usize = 1000;
/// Longest `queue_id` or `order_id`.
const MAX_ID: usize = 200;

/// One transfer as the request spells it, read leniently to address answers.
struct ItemText {
    order_id: Option<String>,
    to: Option<String>,
    amount: Option<String>,
}

fn lenient_item(obj: &RawObject) -> ItemText {
    ItemText {
        order_id: msg::echo_str(obj, "order_id"),
        to: msg::echo_str(obj, "to_address").map(|a| a.to_ascii_lowercase()),
        amount: obj.get("amount").map(|v| v.get().trim().to_owned()),
    }
}

fn batch(obj: &RawObject) -> Option<Result<Vec<Box<RawValue>>, String>> {
    let raw = obj.get("transactions")?;
    Some(
        serde_json::from_str::<Vec<Box<RawValue>>>(raw.get())
            .map_err(|_| "field `transactions` must be an array of transfers".to_owned()),
    )
}

/// What the item content hash covers: everything that decides what moves.
pub(crate) fn content_hash(p: &NewPayout) -> [u8; 32] {
    let mut h = Sha256::new();
    for part in [
        p.chain.as_str(),
        p.kind.as_str(),
        p.queue_id.as_str(),
        p.order_id.as_str(),
        p.symbol.as_str(),
    ] {
        h.update(part.as_bytes());
        h.update([0u8]);
    }
    h.update(p.from.as_slice());
    h.update(p.to.as_slice());
    h.update(p.amount.to_be_bytes::<32>());
    h.finalize().into()
}

impl Router {
    /// Routes a withdraw or pay; `forced` refuses it (still answered) for a
    /// fault found in the body before it.
    pub(super) fn payout_request(
        &self,
        kind: Kind,
        obj: &RawObject,
        forced: Option<String>,
    ) -> Routed {
        let Some(queue_id) = msg::echo_str(obj, "queue_id") else {
            return Routed::Unaddressable {
                reason: format!("{kind} request without a `queue_id` string cannot be answered"),
            };
        };
        let items: Vec<ItemText> = match (kind, batch(obj)) {
            (Kind::Pay, Some(Ok(list))) if !list.is_empty() => list
                .iter()
                .take(MAX_BATCH)
                .map(|raw| match RawObject::parse(raw.get().as_bytes()) {
                    Ok(o) => lenient_item(&o),
                    Err(_) => ItemText {
                        order_id: None,
                        to: None,
                        amount: None,
                    },
                })
                .collect(),
            _ => vec![lenient_item(obj)],
        };
        let refuse = |status: Status, error: String| {
            let replies = items
                .iter()
                .map(|item| {
                    reply::payout_refusal(
                        kind,
                        PayoutResponse {
                            queue_id: queue_id.clone(),
                            status,
                            amount: Decimal::echo(item.amount.as_deref()),
                            chain: msg::echo_str(obj, "chain").unwrap_or_default(),
                            symbol: msg::echo_str(obj, "symbol").unwrap_or_default(),
                            order_id: (kind == Kind::Pay)
                                .then(|| item.order_id.clone().unwrap_or_default()),
                            tx_hash: String::new(),
                            from_address: msg::echo_str(obj, "from_address")
                                .map(|a| a.to_ascii_lowercase()),
                            to_address: item.to.clone(),
                            error: Some(error.clone()),
                        },
                    )
                })
                .collect();
            refusal(status, error, replies)
        };
        if let Some(error) = forced {
            return refuse(Status::Failed, error);
        }
        if let Err(error) = self.verify(obj) {
            return refuse(Status::BadSignature, error);
        }
        match self.validate_payout(kind, obj, &queue_id) {
            Ok(payouts) => Routed::Payout(payouts),
            Err(error) => refuse(Status::Failed, error),
        }
    }

    fn validate_payout(
        &self,
        kind: Kind,
        obj: &RawObject,
        queue_id: &str,
    ) -> Result<Vec<NewPayout>, String> {
        if queue_id.trim().is_empty() || queue_id.len() > MAX_ID {
            return Err(format!("field `queue_id` must be 1 to {MAX_ID} characters"));
        }
        let (chain, symbol, decimals, contract) = self.chain_symbol(obj)?;
        let from = msg::address_field(obj, "from_address").map_err(|e| e.to_string())?;
        if from == Address::ZERO {
            return Err("field `from_address` must not be the zero address".to_owned());
        }
        msg::int_field(obj, "timestamp").map_err(|e| e.to_string())?;

        let transfer = |o: &RawObject, prefix: &str| -> Result<(String, Address, U256), String> {
            let order_id = if kind == Kind::Pay {
                let id = msg::str_field(o, "order_id").map_err(|e| format!("{prefix}{e}"))?;
                if id.trim().is_empty() || id.len() > MAX_ID {
                    return Err(format!(
                        "{prefix}field `order_id` must be 1 to {MAX_ID} characters"
                    ));
                }
                id
            } else {
                String::new()
            };
            let to = msg::address_field(o, "to_address").map_err(|e| format!("{prefix}{e}"))?;
            if to == Address::ZERO {
                return Err(format!(
                    "{prefix}field `to_address` must not be the zero address"
                ));
            }
            if to == from {
                return Err(format!(
                    "{prefix}field `to_address` is the same as `from_address`"
                ));
            }
            let text = msg::number_text(o, "amount").map_err(|e| format!("{prefix}{e}"))?;
            let units = amount::parse_units(text, decimals)
                .map_err(|e| format!("{prefix}field `amount` {e}"))?;
            Ok((order_id, to, units))
        };

        let transfers = match (kind, batch(obj)) {
            (Kind::Pay, Some(list)) => {
                let list = list?;
                if list.is_empty() || list.len() > MAX_BATCH {
                    return Err(format!(
                        "field `transactions` must hold 1 to {MAX_BATCH} transfers"
                    ));
                }
                let mut seen = HashSet::with_capacity(list.len());
                let mut out = Vec::with_capacity(list.len());
                for (i, raw) in list.iter().enumerate() {
                    let prefix = format!("transactions[{i}]: ");
                    let o = RawObject::parse(raw.get().as_bytes())
                        .map_err(|e| format!("{prefix}{e}"))?;
                    let t = transfer(&o, &prefix)?;
                    if !seen.insert(t.0.clone()) {
                        return Err(format!(
                            "{prefix}order_id `{}` appears twice in the batch",
                            t.0
                        ));
                    }
                    out.push(t);
                }
                out
            }
            _ => vec![transfer(obj, "")?],
        };
        Ok(transfers
            .into_iter()
            .map(|(order_id, to, units)| {
                let mut p = NewPayout {
                    chain: chain.clone(),
                    kind,
                    queue_id: queue_id.to_owned(),
                    order_id,
                    content_hash: [0; 32],
                    symbol: symbol.clone(),
                    from,
                    to,
                    amount: units,
                    decimals,
                    contract,
                };
                p.content_hash = content_hash(&p);
                p
            })
            .collect())
    }
}
