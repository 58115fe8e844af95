//! Response bodies, built from what the daemon knows: one place that turns a
//! deposit, a payout or a remove into the JSON of its response queue.

use crate::msg::{
    Decimal, Kind, PayoutResponse, RemoveResponse, Status, TopupResponse, addr_hex, hash_hex,
};
use crate::store::{NewPayout, Payout, PayoutState};
use crate::txlog::{Line, go_amount};
use alloy::primitives::{Address, B256, U256};

/// A response body, ready for the outbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// Response kind: the config key of its queue (`topup_resp`).
    pub kind: &'static str,
    /// JSON body.
    pub body: Vec<u8>,
    /// The transaction-log line it writes once the broker has it; `None`
    /// when it names no plain address to file it under.
    pub line: Option<Line>,
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

/// What a response says, for its log line (the Go version's `…Resp` lines).
trait Logged {
    fn line(&self, kind: Kind) -> Option<Line>;
}

/// A line filed under `file`, if that is plainly an address.
fn line_in(
    file: &str,
    name: &str,
    from: &str,
    to: &str,
    chain: &str,
    symbol: &str,
    amount: String,
) -> Option<Line> {
    let file = file.to_ascii_lowercase();
    let plain = file.len() == 42
        && file.starts_with("0x")
        && file[2..].bytes().all(|b| b.is_ascii_hexdigit());
    plain.then(|| Line {
        file,
        kind: name.to_owned(),
        from: from.to_owned(),
        to: to.to_owned(),
        chain: chain.to_owned(),
        symbol: symbol.to_owned(),
        amount,
    })
}

impl Logged for TopupResponse {
    fn line(&self, _: Kind) -> Option<Line> {
        let from = self.from_address.as_deref().unwrap_or_default();
        line_in(
            &self.address,
            "TopupResp",
            from,
            &self.address,
            &self.chain,
            &self.symbol,
            go_amount(self.amount.as_str()),
        )
    }
}

impl Logged for RemoveResponse {
    fn line(&self, _: Kind) -> Option<Line> {
        // A remove answer carries no amount: its line says 0, as Go wrote it.
        line_in(
            &self.address,
            "RemoveResp",
            "",
            &self.address,
            &self.chain,
            &self.symbol,
            "0".to_owned(),
        )
    }
}

impl Logged for PayoutResponse {
    fn line(&self, kind: Kind) -> Option<Line> {
        let name = if kind == Kind::Pay {
            "PayResp"
        } else {
            "WithdrawResp"
        };
        let from = self.from_address.as_deref().unwrap_or_default();
        let to = self.to_address.as_deref().unwrap_or_default();
        line_in(
            from,
            name,
            from,
            to,
            &self.chain,
            &self.symbol,
            go_amount(self.amount.as_str()),
        )
    }
}

fn encode<T: serde::Serialize + Logged>(kind: Kind, body: &T) -> Reply {
    Reply {
        kind: resp_kind(kind),
        line: body.line(kind),
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

/// The answers a payout has been given, rebuilt from its state: `2` once
/// announced, then its final answer.
pub fn payout_answers(p: &Payout, decimals: u8) -> Vec<serde_json::Value> {
    let mut out = Vec::new();
    let mut add = |r: Reply| {
        if let Ok(v) = serde_json::from_slice(&r.body) {
            out.push(v);
        }
    };
    if p.announced {
        add(payout(p, Status::Pending, None, decimals));
    }
    match p.state {
        PayoutState::Confirmed => add(payout(p, Status::Success, None, decimals)),
        PayoutState::Failed | PayoutState::Refused | PayoutState::Cancelled => {
            add(payout(p, Status::Failed, p.error.clone(), decimals))
        }
        _ => {}
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every response's line, made from what decided it, is the line the
    /// published body itself gives (`txlog::response_line`, which rows from
    /// before migration 0008 still use).
    #[test]
    fn a_replys_line_is_the_line_its_body_gives() {
        let facts = DepositFacts {
            chain: "ETH",
            symbol: "USDT",
            decimals: 6,
            address: Address::repeat_byte(0xab),
            from: Address::repeat_byte(1),
            amount: U256::from(1_500_000u64),
            tx_hash: B256::repeat_byte(2),
            block: 7,
        };
        let mut withdrawal = Payout::sample(Address::repeat_byte(0xcd));
        withdrawal.amount = U256::from(123_456_789u64);
        let mut pay = withdrawal.clone();
        pay.kind = Kind::Pay;
        pay.order_id = "o-1".into();
        let echo = |from: &str| PayoutResponse {
            queue_id: "q".into(),
            status: Status::Failed,
            amount: Decimal::echo(Some("1e3")),
            chain: "ETH".into(),
            symbol: "USDT".into(),
            order_id: None,
            tx_hash: String::new(),
            from_address: Some(from.into()),
            to_address: Some("0xnot-an-address".into()),
            error: Some("bad".into()),
        };
        let replies = [
            deposit(&facts, Status::Pending, None),
            deposit(&facts, Status::Success, None),
            remove(&facts.address, "ETH", "USDT", None, Status::Success, None),
            payout(&withdrawal, Status::Pending, None, 6),
            payout(&pay, Status::Success, None, 6),
            payout_refusal(
                Kind::Withdraw,
                echo("0xABCDEFabcdef0123456789abcdef0123456789AB"),
            ),
            payout_refusal(Kind::Pay, echo("not an address")),
            watch_refusal(
                Kind::Topup,
                "0x00000000000000000000000000000000000000Ff".into(),
                "ETH".into(),
                "DOGE".into(),
                None,
                Status::Failed,
                "unknown symbol".into(),
            ),
            watch_refusal(
                Kind::Remove,
                "nope".into(),
                "ETH".into(),
                "USDT".into(),
                Some("r".into()),
                Status::Failed,
                "bad".into(),
            ),
        ];
        let mut lines = 0;
        for r in &replies {
            assert_eq!(
                r.line,
                crate::txlog::response_line(r.kind, &r.body),
                "{}",
                String::from_utf8_lossy(&r.body)
            );
            lines += usize::from(r.line.is_some());
        }
        assert_eq!(lines, 7, "the two without a plain address write none");
    }
}
