//! `GET /v1/payouts/{queue_id}`, `GET /v1/deposits`, `GET /v1/watches/{address}`:
//! state as the store holds it, behind the API token. Where they overlap
//! with the queue answers, they are those answers' JSON: a payout's
//! `answers` are the ones it has been given, a deposit is its topup answer
//! as of now.

use super::{State, answer, authorize, refuse};
use crate::msg::{Status, addr_hex, parse_address};
use crate::reply::{self, DepositFacts};
use crate::store::{DEPOSIT_CONFIRMED, DEPOSIT_FAILED, DepositView, Payout};
use axum::extract::{Path, Query};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use serde::Deserialize;
use serde_json::{Value, json};

/// Most deposits in one page.
const PAGE_MAX: u32 = 500;
/// Deposits in a page when `limit` is not given.
const PAGE_DEFAULT: u32 = 100;

/// Upper-case `chain` if it runs, else the 404 naming those that do.
fn chain_of(nets: &[String], chain: &str) -> Result<String, Response> {
    let upper = chain.to_ascii_uppercase();
    if nets.contains(&upper) {
        Ok(upper)
    } else {
        Err(refuse(
            StatusCode::NOT_FOUND,
            format!(
                "chain `{chain}` is not configured; configured: {}",
                nets.join(", ")
            ),
        ))
    }
}

/// `?chain=` of the payout and watch reads.
#[derive(Debug, Deserialize)]
pub(super) struct ChainFilter {
    chain: Option<String>,
}

impl ChainFilter {
    /// The chain asked for, or every one that runs.
    fn chains(&self, nets: &[String]) -> Result<Vec<String>, Response> {
        match &self.chain {
            Some(c) => Ok(vec![chain_of(nets, c)?]),
            None => Ok(nets.to_vec()),
        }
    }
}

/// An address from the URL, or the 400 that says what is wrong with it.
fn address_of(text: &str) -> Result<alloy::primitives::Address, Response> {
    parse_address(text).map_err(|e| refuse(StatusCode::BAD_REQUEST, format!("address: {e}")))
}

/// `GET /v1/payouts/{queue_id}[?chain=ETH]`: every item of the payout
/// request `queue_id` with its state, transactions and answers so far.
pub(super) async fn payouts(
    axum::extract::State(deps): State,
    headers: HeaderMap,
    Path(queue_id): Path<String>,
    Query(filter): Query<ChainFilter>,
) -> Result<Response, Response> {
    let api = authorize(&deps, &headers)?;
    let mut items = Vec::new();
    for chain in filter.chains(&deps.nets)? {
        let found = deps
            .store
            .payouts_of_queue(&chain, &queue_id)
            .await
            .map_err(store_failed)?;
        for p in found {
            let txs = deps
                .store
                .payout_tx_views(p.id)
                .await
                .map_err(store_failed)?;
            items.push(item(&p, api.tokens.of_payout(&p), &txs));
        }
    }
    if items.is_empty() {
        return Err(refuse(
            StatusCode::NOT_FOUND,
            format!("no payout with queue_id `{queue_id}`"),
        ));
    }
    Ok(answer(
        StatusCode::OK,
        json!({"queue_id": queue_id, "items": items}),
    ))
}

/// One payout item.
fn item(p: &Payout, decimals: u8, txs: &[crate::store::TxView]) -> Value {
    json!({
        "chain": p.chain,
        "kind": p.kind.as_str(),
        "order_id": p.order_id,
        "state": p.state.as_str(),
        "payer": p.payer.as_ref().map(addr_hex),
        "nonce": p.nonce,
        "tx_hash": p.tx_hash.map(|h| h.to_string()),
        "transactions": txs.iter().map(|t| json!({"tx_hash": t.tx_hash.to_string(), "signed_at_ms": t.signed_at})).collect::<Vec<_>>(),
        "block_height": p.block_number,
        "answers": reply::payout_answers(p, decimals),
    })
}

/// `GET /v1/deposits` query.
#[derive(Debug, Deserialize)]
pub(super) struct DepositQuery {
    address: String,
    chain: String,
    symbol: Option<String>,
    /// The last `id` of the previous page.
    after: Option<i64>,
    limit: Option<u32>,
}

/// `GET /v1/deposits?address=…&chain=…[&symbol=…][&after=ID][&limit=N]`:
/// deposits to an address, oldest first, a page at a time (`next` is the
/// `after` of the next page, `null` on the last).
pub(super) async fn deposits(
    axum::extract::State(deps): State,
    headers: HeaderMap,
    Query(q): Query<DepositQuery>,
) -> Result<Response, Response> {
    let api = authorize(&deps, &headers)?;
    let chain = chain_of(&deps.nets, &q.chain)?;
    let address = address_of(&q.address)?;
    let limit = q.limit.unwrap_or(PAGE_DEFAULT).clamp(1, PAGE_MAX);
    let symbol = q.symbol.map(|s| s.to_ascii_uppercase());
    let after = q.after.unwrap_or(0);
    let rows = deps
        .store
        .deposits_of(&chain, &address, symbol.as_deref(), after, limit)
        .await
        .map_err(store_failed)?;
    let next = (rows.len() == limit as usize).then(|| rows.last().map(|d| d.id));
    let list: Vec<Value> = rows
        .iter()
        .map(|d| {
            let decimals = d
                .decimals
                .unwrap_or_else(|| api.tokens.decimals(&d.chain, &d.symbol));
            deposit(d, decimals)
        })
        .collect();
    Ok(answer(
        StatusCode::OK,
        json!({"deposits": list, "next": next.flatten()}),
    ))
}

/// A deposit as its topup answer now, with its row id and state.
fn deposit(d: &DepositView, decimals: u8) -> Value {
    let (status, state) = match d.state {
        DEPOSIT_CONFIRMED => (Status::Success, "confirmed"),
        DEPOSIT_FAILED => (Status::Failed, "failed"),
        crate::store::DEPOSIT_ORPHANED => (Status::Pending, "orphaned"),
        _ => (Status::Pending, "pending"),
    };
    let facts = DepositFacts {
        chain: &d.chain,
        symbol: &d.symbol,
        decimals,
        address: d.address,
        from: d.from,
        amount: d.amount,
        tx_hash: d.tx_hash,
        block: d.block,
    };
    let mut v: Value =
        serde_json::from_slice(&reply::deposit(&facts, status, None).body).unwrap_or_default();
    if let Some(o) = v.as_object_mut() {
        o.insert("id".into(), json!(d.id));
        o.insert("state".into(), json!(state));
        o.insert("log_index".into(), json!(d.log_index));
    }
    v
}

/// `GET /v1/watches/{address}[?chain=ETH]`: per network and symbol,
/// whether the address is watched and since when.
pub(super) async fn watches(
    axum::extract::State(deps): State,
    headers: HeaderMap,
    Path(address): Path<String>,
    Query(filter): Query<ChainFilter>,
) -> Result<Response, Response> {
    authorize(&deps, &headers)?;
    let address = address_of(&address)?;
    let mut list = Vec::new();
    for chain in filter.chains(&deps.nets)? {
        let state = deps
            .store
            .watch_state(&chain, &address)
            .await
            .map_err(store_failed)?;
        for (symbol, watched, at) in state {
            list.push(
                json!({"chain": chain, "symbol": symbol, "watched": watched, "since_ms": at}),
            );
        }
    }
    Ok(answer(
        StatusCode::OK,
        json!({"address": addr_hex(&address), "watches": list}),
    ))
}

/// The store could not be read: 503, the reason logged.
fn store_failed(e: crate::store::StoreError) -> Response {
    tracing::warn!(target: "m2pool::http", error = %e, "API read failed");
    refuse(
        StatusCode::SERVICE_UNAVAILABLE,
        "the store cannot be read now; try again",
    )
}
