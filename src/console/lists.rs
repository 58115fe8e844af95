//! Payouts and deposits: lists newest first with filters and a search box,
//! and each payout's page (every answer sent, every transaction signed for
//! it, and why it waits when it does).

use super::html::{self, code, esc, pill, table, time, time_opt};
use super::pages::{PAGE, pager};
use super::{Deps, Lang, LangQuery, gate, store_failed};
use crate::msg::amount::format_units;
use crate::msg::{addr_hex, parse_address};
use crate::store::{DepositFilter, Payout, PayoutFilter, PayoutState, TxView};
use axum::extract::{Path, Query};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use serde::Deserialize;
use std::fmt::Write as _;
use std::time::Duration;

/// Filters, search and position of the payout list.
#[derive(Debug, Deserialize, Default)]
pub(crate) struct PayoutQuery {
    lang: Option<String>,
    chain: Option<String>,
    state: Option<String>,
    symbol: Option<String>,
    wallet: Option<String>,
    q: Option<String>,
    before: Option<i64>,
}

/// An empty form field is no filter.
fn given(v: &Option<String>) -> Option<String> {
    v.as_deref()
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
}

/// A state's pill.
fn state_pill(state: PayoutState) -> String {
    let class = match state {
        PayoutState::Confirmed => "ok",
        PayoutState::Failed | PayoutState::Refused | PayoutState::Cancelled => "bad",
        PayoutState::Mined => "info",
        _ => "warn",
    };
    pill(class, state.as_str())
}

/// Every symbol of every network, for the filter.
fn symbols(v: &super::Viewer<'_>) -> Vec<String> {
    let mut all: Vec<String> = v
        .console
        .chains
        .iter()
        .flat_map(|c| v.console.tokens.symbols(c))
        .collect();
    all.sort();
    all.dedup();
    all
}

/// `GET /console/payouts`.
pub(crate) async fn payouts(
    axum::extract::State(deps): Deps,
    headers: HeaderMap,
    Query(q): Query<PayoutQuery>,
) -> Result<Response, Response> {
    let v = gate(&deps, &headers, q.lang.as_deref())?;
    let l = v.lang;
    let search = given(&q.q);
    let filter = PayoutFilter {
        chain: given(&q.chain).map(|c| c.to_ascii_uppercase()),
        state: given(&q.state).filter(|s| PayoutState::ALL.iter().any(|x| x.as_str() == s)),
        symbol: given(&q.symbol).map(|s| s.to_ascii_uppercase()),
        wallet: given(&q.wallet).and_then(|w| parse_address(&w).ok()),
    };
    let (rows, next, looked) = match &search {
        Some(text) => {
            let found = v
                .console
                .store
                .find_payouts(&deps.chains, text, PAGE)
                .await
                .map_err(|e| store_failed(&v, e))?;
            (found, None, None)
        }
        None => {
            let found = v
                .console
                .store
                .console_payouts(&filter, q.before, PAGE)
                .await
                .map_err(|e| store_failed(&v, e))?;
            (found.rows, found.next, Some(found.looked))
        }
    };
    let states: Vec<&str> = PayoutState::ALL.iter().map(|s| s.as_str()).collect();
    let mut b = format!(
        "<form class=\"filters\" method=\"get\"><label>{search_l} <input name=\"q\" id=\"q\" value=\"{qv}\" placeholder=\"{ph}\"></label>\
         {chain}{state}{symbol}<label>{wallet_l} <input name=\"wallet\" value=\"{wallet}\" placeholder=\"0x…\"></label>\
         <button type=\"submit\" id=\"search\">{go}</button></form>",
        search_l = esc(l.t("search")),
        qv = esc(search.as_deref().unwrap_or("")),
        ph = esc(l.t("search.payouts")),
        chain = html::select(
            "chain",
            l.t("network"),
            l.t("any"),
            &deps.chains,
            filter.chain.as_deref()
        ),
        state = html::select(
            "state",
            l.t("state"),
            l.t("any"),
            &states,
            filter.state.as_deref()
        ),
        symbol = html::select(
            "symbol",
            l.t("symbol"),
            l.t("any"),
            &symbols(&v),
            filter.symbol.as_deref()
        ),
        wallet_l = esc(l.t("wallet")),
        wallet = esc(q.wallet.as_deref().unwrap_or("")),
        go = esc(l.t("filter")),
    );
    let rows: Vec<Vec<String>> = rows
        .iter()
        .map(|p| {
            let decimals = v.console.tokens.of_payout(p);
            vec![
                format!("<a href=\"/console/payouts/{0}\">{0}</a>", p.id),
                time(p.created_at),
                esc(&p.chain),
                esc(p.kind.as_str()),
                format!(
                    "<a href=\"/console/payouts/{}\">{}</a>",
                    p.id,
                    esc(&p.queue_id)
                ),
                esc(&p.order_id),
                format!(
                    "<span class=\"num\">{}</span> {}",
                    esc(&format_units(p.amount, decimals)),
                    esc(&p.symbol)
                ),
                code(&addr_hex(&p.to)),
                state_pill(p.state),
                p.tx_hash.map_or_else(String::new, |h| code(&h.to_string())),
            ]
        })
        .collect();
    b.push_str(&table(
        "payouts",
        &[
            l.t("id"),
            l.t("created"),
            l.t("network"),
            l.t("kind"),
            l.t("queue_id"),
            l.t("order_id"),
            l.t("amount"),
            l.t("to"),
            l.t("state"),
            l.t("tx"),
        ],
        &rows,
        l.t("none"),
    ));
    let keep = format!(
        "chain={}&state={}&symbol={}&wallet={}&before=",
        html::query_value(filter.chain.as_deref().unwrap_or("")),
        html::query_value(filter.state.as_deref().unwrap_or("")),
        html::query_value(filter.symbol.as_deref().unwrap_or("")),
        html::query_value(q.wallet.as_deref().unwrap_or("")),
    );
    b.push_str(&pager(l, next, looked, &keep));
    Ok(v.page("payouts", l.t("nav.payouts"), &b))
}

/// `{0}`-style text of `key` with already-rendered HTML `args`.
fn say(l: Lang, key: &str, args: &[String]) -> String {
    let mut out = esc(l.t(key));
    for (i, a) in args.iter().enumerate() {
        out = out.replace(&format!("{{{i}}}"), a);
    }
    out
}

/// Why payout `p` is not final yet, in the reader's words (empty when it
/// is final): what it waits for, what the node said, the last error.
pub(crate) fn waits(
    l: Lang,
    p: &Payout,
    txs: &[TxView],
    cursor: Option<u64>,
    confirm_height: u64,
    stuck_after: Duration,
) -> Vec<String> {
    let mut out = Vec::new();
    if p.state.is_final() {
        return out;
    }
    let last_signed = txs.iter().map(|t| t.signed_at).max();
    match p.state {
        PayoutState::Queued | PayoutState::Claimed => {
            out.push(say(l, "stuck.queued", &[time(p.created_at)]));
        }
        PayoutState::Signed => out.push(say(l, "stuck.signed", &[time_opt(last_signed)])),
        PayoutState::Sent => out.push(say(
            l,
            "stuck.unmined",
            &[time_opt(last_signed), stuck_after.as_secs().to_string()],
        )),
        PayoutState::Mined => {
            let block = p.block_number.unwrap_or_default();
            out.push(say(
                l,
                "stuck.mined",
                &[
                    block.to_string(),
                    (block + confirm_height).to_string(),
                    cursor.map_or_else(|| "—".to_owned(), |c| c.to_string()),
                ],
            ));
        }
        _ => {}
    }
    if let Some(at) = p.refused_at {
        out.push(say(
            l,
            "stuck.refused",
            &[time(at), esc(p.refusal.as_deref().unwrap_or(""))],
        ));
    }
    if p.cancel_requested {
        out.push(say(l, "stuck.cancel", &[]));
    }
    if let Some(e) = &p.error {
        out.push(say(l, "stuck.error", &[esc(e)]));
    }
    out
}

/// `GET /console/payouts/{id}`.
pub(crate) async fn payout(
    axum::extract::State(deps): Deps,
    headers: HeaderMap,
    Path(id): Path<i64>,
    Query(q): Query<LangQuery>,
) -> Result<Response, Response> {
    let v = gate(&deps, &headers, q.lang.as_deref())?;
    let l = v.lang;
    let Some(p) = v
        .console
        .store
        .payout(id)
        .await
        .map_err(|e| store_failed(&v, e))?
    else {
        return Ok(v.html(
            StatusCode::NOT_FOUND,
            html::page(l, "payouts", l.t("not_found"), ""),
        ));
    };
    let txs = v
        .console
        .store
        .payout_tx_views(p.id)
        .await
        .map_err(|e| store_failed(&v, e))?;
    let decimals = v.console.tokens.of_payout(&p);
    let snap = deps.health.snapshot();
    let cursor = snap.chains.get(&p.chain).and_then(|c| c.cursor);
    let net = v.console.nets.get(&p.chain);
    let reasons = waits(
        l,
        &p,
        &txs,
        cursor,
        net.map_or(20, |n| n.confirm_height),
        net.map_or(Duration::from_secs(180), |n| n.stuck_after),
    );
    let mut b = String::new();
    let _ = write!(b, "<section id=\"why\"><h2>{}</h2>", esc(l.t("why_stuck")));
    if reasons.is_empty() {
        let _ = write!(b, "<p>{} {}</p>", state_pill(p.state), esc(l.t("final")));
    } else {
        b.push_str("<ul>");
        for r in &reasons {
            let _ = write!(b, "<li>{r}</li>");
        }
        b.push_str("</ul>");
    }
    b.push_str("</section>");
    let opt_addr = |a: Option<alloy::primitives::Address>| {
        a.map_or_else(|| "—".to_owned(), |a| code(&addr_hex(&a)))
    };
    b.push_str(&html::facts(&[
        (l.t("network"), esc(&p.chain)),
        (l.t("kind"), esc(p.kind.as_str())),
        (l.t("queue_id"), esc(&p.queue_id)),
        (l.t("order_id"), esc(&p.order_id)),
        (l.t("state"), state_pill(p.state)),
        (
            l.t("amount"),
            format!(
                "{} {}",
                esc(&format_units(p.amount, decimals)),
                esc(&p.symbol)
            ),
        ),
        (l.t("from"), code(&addr_hex(&p.from))),
        (l.t("payer"), opt_addr(p.payer)),
        (l.t("to"), code(&addr_hex(&p.to))),
        (
            l.t("nonce"),
            p.nonce.map_or_else(|| "—".to_owned(), |n| n.to_string()),
        ),
        (
            l.t("tx"),
            p.tx_hash
                .map_or_else(|| "—".to_owned(), |h| code(&h.to_string())),
        ),
        (
            l.t("block"),
            p.block_number
                .map_or_else(|| "—".to_owned(), |n| n.to_string()),
        ),
        (
            l.t("fee"),
            p.fee.map_or_else(
                || "—".to_owned(),
                |f| {
                    format!(
                        "{} {}",
                        esc(&format_units(f, 18)),
                        esc(&native(&v, &p.chain))
                    )
                },
            ),
        ),
        (l.t("created"), time(p.created_at)),
        (l.t("updated"), time(p.updated_at)),
    ]));

    let _ = write!(b, "<h2>{}</h2>", esc(l.t("answers")));
    let answers = crate::reply::payout_answers(&p, decimals);
    let rows: Vec<Vec<String>> = answers
        .iter()
        .map(|a| {
            vec![
                esc(&a["status"].to_string()),
                format!("<code class=\"wrap\">{}</code>", esc(&a.to_string())),
            ]
        })
        .collect();
    b.push_str(&table("answers", &["status", "JSON"], &rows, l.t("none")));

    let _ = write!(b, "<h2>{}</h2>", esc(l.t("transactions")));
    let rows: Vec<Vec<String>> = txs
        .iter()
        .map(|t| {
            let current = Some(t.tx_hash) == p.tx_hash;
            let mined = match (current, p.block_number) {
                (true, Some(n)) => format!("{} {n}", esc(l.t("block"))),
                _ => "—".to_owned(),
            };
            let mut hash = code(&t.tx_hash.to_string());
            if t.cancels {
                let _ = write!(hash, " {}", pill("warn", l.t("cancels")));
            }
            vec![
                hash,
                p.nonce.map_or_else(|| "—".to_owned(), |n| n.to_string()),
                t.gas_limit.to_string(),
                esc(&t.max_fee),
                esc(&t.priority_fee),
                time(t.signed_at),
                mined,
            ]
        })
        .collect();
    b.push_str(&table(
        "txs",
        &[
            l.t("tx"),
            l.t("nonce"),
            l.t("gas_limit"),
            l.t("max_fee"),
            l.t("priority_fee"),
            l.t("signed_at"),
            l.t("mined_at"),
        ],
        &rows,
        l.t("none"),
    ));
    let title = l.tf("payout", &[&p.id.to_string()]);
    Ok(v.page("payouts", &title, &b))
}

/// The native symbol of `chain` (`ETH` when unknown).
fn native(v: &super::Viewer<'_>, chain: &str) -> String {
    v.console
        .nets
        .get(chain)
        .map_or_else(|| "ETH".to_owned(), |n| n.native.clone())
}

/// Filters, search and position of the deposit list.
#[derive(Debug, Deserialize, Default)]
pub(crate) struct DepositQuery {
    lang: Option<String>,
    chain: Option<String>,
    symbol: Option<String>,
    state: Option<String>,
    q: Option<String>,
    before: Option<i64>,
}

/// Deposit states by stored number.
const DEPOSIT_STATES: [(&str, i64); 4] = [
    ("pending", crate::store::DEPOSIT_PENDING),
    ("confirmed", crate::store::DEPOSIT_CONFIRMED),
    ("failed", crate::store::DEPOSIT_FAILED),
    ("orphaned", crate::store::DEPOSIT_ORPHANED),
];

/// `GET /console/deposits`.
pub(crate) async fn deposits(
    axum::extract::State(deps): Deps,
    headers: HeaderMap,
    Query(q): Query<DepositQuery>,
) -> Result<Response, Response> {
    let v = gate(&deps, &headers, q.lang.as_deref())?;
    let l = v.lang;
    let search = given(&q.q);
    let state_name = given(&q.state).filter(|s| DEPOSIT_STATES.iter().any(|(n, _)| n == s));
    let filter = DepositFilter {
        chain: given(&q.chain).map(|c| c.to_ascii_uppercase()),
        symbol: given(&q.symbol).map(|s| s.to_ascii_uppercase()),
        state: state_name
            .as_deref()
            .and_then(|s| DEPOSIT_STATES.iter().find(|(n, _)| *n == s))
            .map(|(_, n)| *n),
    };
    let (rows, next, looked) = match &search {
        Some(text) => {
            let found = v
                .console
                .store
                .find_deposits(&deps.chains, text, PAGE)
                .await
                .map_err(|e| store_failed(&v, e))?;
            (found, None, None)
        }
        None => {
            let found = v
                .console
                .store
                .console_deposits(&filter, q.before, PAGE)
                .await
                .map_err(|e| store_failed(&v, e))?;
            (found.rows, found.next, Some(found.looked))
        }
    };
    let states: Vec<&str> = DEPOSIT_STATES.iter().map(|(n, _)| *n).collect();
    let mut b = format!(
        "<form class=\"filters\" method=\"get\"><label>{search_l} <input name=\"q\" id=\"q\" value=\"{qv}\" placeholder=\"{ph}\"></label>\
         {chain}{symbol}{state}<button type=\"submit\" id=\"search\">{go}</button></form>",
        search_l = esc(l.t("search")),
        qv = esc(search.as_deref().unwrap_or("")),
        ph = esc(l.t("search.deposits")),
        chain = html::select(
            "chain",
            l.t("network"),
            l.t("any"),
            &deps.chains,
            filter.chain.as_deref()
        ),
        symbol = html::select(
            "symbol",
            l.t("symbol"),
            l.t("any"),
            &symbols(&v),
            filter.symbol.as_deref()
        ),
        state = html::select(
            "state",
            l.t("state"),
            l.t("any"),
            &states,
            state_name.as_deref()
        ),
        go = esc(l.t("filter")),
    );
    let rows: Vec<Vec<String>> = rows
        .iter()
        .map(|d| {
            let decimals = d
                .decimals
                .unwrap_or_else(|| v.console.tokens.decimals(&d.chain, &d.symbol));
            let (name, class) = match d.state {
                crate::store::DEPOSIT_CONFIRMED => ("confirmed", "ok"),
                crate::store::DEPOSIT_FAILED => ("failed", "bad"),
                crate::store::DEPOSIT_ORPHANED => ("orphaned", "bad"),
                _ => ("pending", "warn"),
            };
            vec![
                d.id.to_string(),
                time(d.created_at),
                esc(&d.chain),
                code(&addr_hex(&d.address)),
                format!(
                    "<span class=\"num\">{}</span> {}",
                    esc(&format_units(d.amount, decimals)),
                    esc(&d.symbol)
                ),
                code(&addr_hex(&d.from)),
                code(&d.tx_hash.to_string()),
                d.block.to_string(),
                pill(class, name),
            ]
        })
        .collect();
    b.push_str(&table(
        "deposits",
        &[
            l.t("id"),
            l.t("created"),
            l.t("network"),
            l.t("address"),
            l.t("amount"),
            l.t("from"),
            l.t("tx"),
            l.t("block"),
            l.t("state"),
        ],
        &rows,
        l.t("none"),
    ));
    let keep = format!(
        "chain={}&symbol={}&state={}&before=",
        html::query_value(filter.chain.as_deref().unwrap_or("")),
        html::query_value(filter.symbol.as_deref().unwrap_or("")),
        html::query_value(state_name.as_deref().unwrap_or("")),
    );
    b.push_str(&pager(l, next, looked, &keep));
    Ok(v.page("deposits", l.t("nav.deposits"), &b))
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloy::primitives::{Address, B256};

    fn tx(at: i64) -> TxView {
        TxView {
            tx_hash: B256::repeat_byte(1),
            gas_limit: 100_000,
            max_fee: "1".into(),
            priority_fee: "1".into(),
            signed_at: at,
            cancels: false,
        }
    }

    #[test]
    fn a_waiting_payout_says_what_it_waits_for() {
        let l = Lang::En;
        let wait = Duration::from_secs(180);
        let mut p = Payout::sample(Address::repeat_byte(2));
        p.created_at = 0;
        let w = waits(l, &p, &[], None, 20, wait);
        assert_eq!(w.len(), 1);
        assert!(
            w[0].starts_with("Waiting for its wallet&#39;s nonce actor since <time"),
            "{w:?}"
        );

        p.state = PayoutState::Sent;
        p.refused_at = Some(1_000);
        p.refusal = Some("insufficient funds <for gas>".into());
        let w = waits(l, &p, &[tx(0)], None, 20, wait);
        assert!(w[0].contains("after 180 s it is replaced"), "{w:?}");
        assert!(
            w[1].contains("The node refuses its transaction since")
                && w[1].contains("insufficient funds &lt;for gas&gt;"),
            "escaped: {w:?}"
        );

        p.refused_at = None;
        p.state = PayoutState::Mined;
        p.block_number = Some(100);
        let w = waits(l, &p, &[tx(0)], Some(110), 20, wait);
        assert_eq!(
            w,
            vec!["Mined in block 100; final at block 120 (cursor 110).".to_owned()]
        );

        p.state = PayoutState::Confirmed;
        p.error = Some("x".into());
        assert!(waits(l, &p, &[], Some(130), 20, wait).is_empty(), "final");
        p.state = PayoutState::Queued;
        assert!(waits(Lang::Zh, &p, &[], None, 20, wait)[0].contains("等待"));
    }
}
