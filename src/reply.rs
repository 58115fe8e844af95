//! Response bodies, built from what the daemon knows: one place that turns a
//! deposit, a payout or a remove into the JSON of its response queue.

use crate::msg::{
    Decimal, Kind, PayoutResponse, RemoveResponse, Status, TopupResponse, addr_hex, hash_hex,
};
use crate::store::{NewPayout, Payout};
use alloy::primitives::{Address, B256, U256};

/// A response body, ready for the outbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// Response kind: the config key of its queue (`topup_resp`).
    pub kind: &'static str,
    /// JSON body.
    pub body: Vec<u8>,
}

/// The response kind (config key) that answers `kind`.
pub fn resp_kind(kind: Kind) -> &'static str {
    match kind {
        Kind::Topup => "topup_resp",
        Kind::Withdraw => "withdraw_resp",
        Kind::Pay => "pay_resp",
        Kind::Remove => "remove_resp",
    }
}

fn encode<T: serde::Serialize>(kind: Kind, body: &T) -> Reply {
    Reply {
        kind: resp_kind(kind),
        // Serializing these structs (strings, numbers, raw decimal text that
        // was built from digits) cannot fail.
        body: serde_json::to_vec(body).unwrap_or_else(|e| {
            tracing::error!(target: "m2pool::reply", error = %e, "response did not serialize");
            b"{}".to_vec()
        }),
    }
}

/// What a deposit response reports.
#[derive(Debug, Clone)]
pub struct DepositFacts<'a> {
    /// Chain.
    pub chain: &'a str,
    /// Symbol.
    pub symbol: &'a str,
    /// Decimals of the symbol.
    pub decimals: u8,
    /// The watched address.
    pub address: Address,
    /// Sender.
    pub from: Address,
    /// Base units.
    pub amount: U256,
    /// Transaction.
    pub tx_hash: B256,
    /// Block.
    pub block: u64,
}

/// A deposit notification.
pub fn deposit(f: &DepositFacts<'_>, status: Status, error: Option<String>) -> Reply {
    encode(
        Kind::Topup,
        &TopupResponse {
            address: addr_hex(&f.address),
            status,
            chain: f.chain.to_owned(),
            symbol: f.symbol.to_owned(),
            amount: Decimal::from_units(f.amount, f.decimals),
            tx_hash: hash_hex(&f.tx_hash),
            from_address: Some(addr_hex(&f.from)),
            block_height: Some(f.block),
            error,
        },
    )
}

/// A remove answer.
pub fn remove(
    address: &Address,
    chain: &str,
    symbol: &str,
    queue_id: Option<String>,
    status: Status,
    error: Option<String>,
) -> Reply {
    encode(
        Kind::Remove,
        &RemoveResponse {
            address: addr_hex(address),
            status,
            chain: chain.to_owned(),
            symbol: symbol.to_owned(),
            queue_id,
            error,
        },
    )
}

/// A payout response from its stored state; `decimals` of its symbol. A
/// `status=2` names the transaction it named the first time (a fee bump
/// that replaced it later changes nothing in its repeats); a final answer
/// names the transaction that was mined.
pub fn payout(p: &Payout, status: Status, error: Option<String>, decimals: u8) -> Reply {
    let tx_hash = match status {
        Status::Pending => p.announced_tx.or(p.tx_hash),
        _ => p.tx_hash,
    };
    let kind = p.kind;
    encode(
        kind,
        &PayoutResponse {
            queue_id: p.queue_id.clone(),
            status,
            amount: Decimal::from_units(p.amount, decimals),
            chain: p.chain.clone(),
            symbol: p.symbol.clone(),
            order_id: (kind == Kind::Pay).then(|| p.order_id.clone()),
            tx_hash: tx_hash.map(|h| hash_hex(&h)).unwrap_or_default(),
            from_address: Some(addr_hex(&p.payer.unwrap_or(p.from))),
            to_address: Some(addr_hex(&p.to)),
            error,
        },
    )
}

/// A response about a payout request that was not stored (a conflicting
/// repeat of a known key).
pub fn new_payout(p: &NewPayout, status: Status, error: Option<String>, decimals: u8) -> Reply {
    let kind = p.kind;
    encode(
        kind,
        &PayoutResponse {
            queue_id: p.queue_id.clone(),
            status,
            amount: Decimal::from_units(p.amount, decimals),
            chain: p.chain.clone(),
            symbol: p.symbol.clone(),
            order_id: (kind == Kind::Pay).then(|| p.order_id.clone()),
            tx_hash: String::new(),
            from_address: Some(addr_hex(&p.from)),
            to_address: Some(addr_hex(&p.to)),
            error,
        },
    )
}

/// A payout refusal for a request that never became a payout: echoes what the
/// request said.
pub fn payout_refusal(kind: Kind, r: PayoutResponse) -> Reply {
    encode(kind, &r)
}

/// A topup or remove refusal: echoes what the request said.
pub fn watch_refusal(
    kind: Kind,
    address: String,
    chain: String,
    symbol: String,
    queue_id: Option<String>,
    status: Status,
    error: String,
) -> Reply {
    match kind {
        Kind::Remove => encode(
            kind,
            &RemoveResponse {
                address,
                status,
                chain,
                symbol,
                queue_id,
                error: Some(error),
            },
        ),
        _ => encode(
            Kind::Topup,
            &TopupResponse {
                address,
                status,
                chain,
                symbol,
                amount: Decimal::zero(),
                tx_hash: String::new(),
                from_address: None,
                block_height: None,
                error: Some(error),
            },
        ),
    }
}
