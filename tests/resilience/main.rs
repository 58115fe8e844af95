//! Resilience: the broker going away, the daemon killed at random moments,
//! poison messages, secrets in logs, graceful shutdown (docs/architecture.md, "Invariants").

#[path = "../common/mod.rs"]
mod common;

mod broker;
mod crash;
mod poison;
mod secrets;
mod shutdown;

use alloy::primitives::Address;
use anyhow::Result;
use common::hex_addr;
use serde_json::{Value, json};

/// A withdrawal request body.
pub fn withdraw(queue_id: &str, from: Address, to: Address, amount: &str) -> Result<Value> {
    let mut v = json!({"queue_id": queue_id, "from_address": hex_addr(from), "to_address": hex_addr(to),
                       "chain": "ETH", "symbol": "USDT", "timestamp": 1758610297});
    v["amount"] = serde_json::from_str(amount)?;
    Ok(v)
}

/// Matches responses of `queue_id` with `status`.
pub fn is(queue_id: &str, status: u64) -> impl Fn(&Value) -> bool {
    let q = queue_id.to_owned();
    move |v| v["queue_id"] == q && v["status"] == status
}

/// What finds the request a response on `queue` answers: the address for
/// topup and remove answers, `queue_id` for withdrawals, `queue_id/order_id`
/// for pays.
pub fn key_of(queue: &str, v: &Value) -> String {
    let s = |f: &str| v[f].as_str().unwrap_or("?").to_owned();
    match queue {
        "withdraw_resp" => s("queue_id"),
        "pay_resp" => format!("{}/{}", s("queue_id"), s("order_id")),
        _ => s("address"),
    }
}
