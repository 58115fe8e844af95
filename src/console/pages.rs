//! The overview (health in plain words, networks, backlogs, counts), the
//! wallets (balances on chain and in the ledger, gas, nonces, payouts
//! waiting) and the requests (the inbox by kind and outcome, dead letters).

use super::html::{self, code, esc, pill, table, time, time_opt};
use super::{Deps, LangQuery, gate, store_failed};
use crate::health::{self, Role};
use crate::msg::amount::format_units;
use crate::msg::{Kind, addr_hex};
use crate::store::Outcome;
use alloy::primitives::{Address, I256};
use axum::extract::Query;
use axum::http::HeaderMap;
use axum::response::Response;
use serde::Deserialize;
use serde_json::Value;
use std::collections::HashMap;
use std::fmt::Write as _;

/// Rows per page of a list.
pub(super) const PAGE: u32 = 50;

/// `GET /console/overview`.
pub(crate) async fn overview(
    axum::extract::State(deps): Deps,
    headers: HeaderMap,
    Query(q): Query<LangQuery>,
) -> Result<Response, Response> {
    let v = gate(&deps, &headers, q.lang.as_deref())?;
    let l = v.lang;
    let snap = deps.health.snapshot();
    let outbox = health::outbox_state(&v.console.store).await;
    let problems = if snap.role == Role::Standby {
        Vec::new()
    } else {
        health::problems(&snap, &outbox, &deps.limits)
    };
    let (pending, dead) = v.console.store.webhook_counts().await.unwrap_or((-1, -1));
    let warnings = health::all_warnings(&snap, &deps.limits, dead);
    let mut b = String::new();
    if problems.is_empty() {
        let _ = write!(
            b,
            "<p class=\"healthy\" id=\"healthy\">{}</p>",
            esc(l.t("healthy"))
        );
    } else {
        let _ = write!(
            b,
            "<section class=\"problems\" id=\"problems\"><h2 class=\"problem\">{}</h2><ul>",
            esc(l.t("problems"))
        );
        for p in &problems {
            let _ = write!(b, "<li class=\"problem\">{}</li>", esc(p));
        }
        b.push_str("</ul></section>");
    }
    if !warnings.is_empty() {
        let _ = write!(
            b,
            "<section class=\"warnings\" id=\"warnings\"><h2>{}</h2><ul>",
            esc(l.t("warnings"))
        );
        for w in &warnings {
            let _ = write!(b, "<li>{}</li>", esc(w));
        }
        b.push_str("</ul></section>");
    }
    let role = match &snap.role {
        Role::Active { term } => l.tf("role.active", &[&term.to_string()]),
        Role::Standby => l.tf(
            "role.standby",
            &[&snap.lease.holder, &snap.lease.term.to_string()],
        ),
    };
    let broker = if snap.no_broker {
        pill("info", l.t("no_broker"))
    } else if snap.broker_connected {
        pill("ok", l.t("connected"))
    } else {
        pill("bad", l.t("disconnected"))
    };
    b.push_str(&html::facts(&[
        (l.t("role"), esc(&role)),
        (l.t("broker"), broker),
    ]));

    let _ = write!(b, "<h2>{}</h2>", esc(l.t("networks")));
    let rows: Vec<Vec<String>> = snap
        .chains
        .iter()
        .map(|(name, c)| {
            let stalled = deps.limits.stalled(name, c).is_some();
            vec![
                esc(name),
                if c.node_connected {
                    pill("ok", l.t("connected"))
                } else {
                    pill("bad", l.t("disconnected"))
                },
                c.head.to_string(),
                c.cursor.map_or_else(|| "—".to_owned(), |n| n.to_string()),
                c.lag().to_string(),
                c.since_head().map_or_else(
                    || "—".to_owned(),
                    |d| esc(&l.tf("seconds_ago", &[&d.as_secs().to_string()])),
                ),
                if stalled {
                    pill("bad", l.t("stalled"))
                } else {
                    pill("ok", l.t("moving"))
                },
            ]
        })
        .collect();
    b.push_str(&table(
        "networks",
        &[
            l.t("network"),
            l.t("node"),
            l.t("head"),
            l.t("cursor"),
            l.t("lag"),
            l.t("last_block"),
            l.t("state"),
        ],
        &rows,
        l.t("none"),
    ));

    let _ = write!(b, "<h2>{}</h2><div class=\"cards\">", esc(l.t("backlogs")));
    let (backlog, oldest) = match &outbox {
        Ok(o) => (
            o.backlog.to_string(),
            o.oldest.map_or_else(
                || "—".to_owned(),
                |d| l.tf("seconds_ago", &[&d.as_secs().to_string()]),
            ),
        ),
        Err(_) => ("?".to_owned(), "?".to_owned()),
    };
    let ledger = deps
        .store
        .ledger_backlog()
        .await
        .map_or_else(|_| "?".to_owned(), |n| n.to_string());
    for (k, val, id) in [
        (l.t("outbox"), backlog, "outbox-backlog"),
        (l.t("outbox_oldest"), oldest, "outbox-oldest"),
        (l.t("ledger"), ledger, "ledger-backlog"),
        (l.t("webhooks"), format!("{pending} / {dead}"), "webhooks"),
    ] {
        let _ = write!(
            b,
            "<div class=\"card\" id=\"{id}\"><div class=\"v\">{}</div><div class=\"k\">{}</div></div>",
            esc(&val),
            esc(k)
        );
    }
    b.push_str("</div>");

    let (payouts, deposits) = v
        .console
        .store
        .state_counts(&deps.chains)
        .await
        .map_err(|e| store_failed(&v, e))?;
    for (title, counts, link) in [
        (l.t("payouts_by_state"), payouts, "payouts"),
        (l.t("deposits_by_state"), deposits, "deposits"),
    ] {
        let _ = write!(b, "<h2>{}</h2><div class=\"cards\">", esc(title));
        for (state, n) in counts {
            let _ = write!(
                b,
                "<a class=\"card\" href=\"/console/{link}?state={s}\"><div class=\"v\">{n}</div><div class=\"k\">{s}</div></a>",
                s = esc(&state)
            );
        }
        b.push_str("</div>");
    }

    let _ = write!(b, "<h2>{}</h2>", esc(l.t("requests_since")));
    let outcomes = [
        Outcome::Accepted,
        Outcome::Refused,
        Outcome::BadSignature,
        Outcome::Unaddressable,
    ];
    let rows: Vec<Vec<String>> = Kind::ALL
        .iter()
        .map(|k| {
            std::iter::once(esc(k.as_str()))
                .chain(
                    outcomes
                        .iter()
                        .map(|o| deps.metrics.requests(*k, *o).to_string()),
                )
                .collect()
        })
        .collect();
    let mut heads = vec![l.t("kind")];
    heads.extend(outcomes.iter().map(|o| o.as_str()));
    b.push_str(&table("requests", &heads, &rows, l.t("none")));
    Ok(v.page("overview", l.t("nav.overview"), &b))
}

/// A signed ledger amount in whole units.
fn signed_units(v: I256, decimals: u8) -> String {
    let text = format_units(v.unsigned_abs(), decimals);
    if v.is_negative() {
        format!("-{text}")
    } else {
        text
    }
}

/// `GET /console/wallets`: per network, every wallet with its balances on
/// chain (as last read by the balance poller) and in the ledger, its next
/// nonce and the payouts waiting on it; what is low in red.
pub(crate) async fn wallets(
    axum::extract::State(deps): Deps,
    headers: HeaderMap,
    Query(q): Query<LangQuery>,
) -> Result<Response, Response> {
    let v = gate(&deps, &headers, q.lang.as_deref())?;
    let l = v.lang;
    let snap = deps.health.snapshot();
    let mut b = String::new();
    for chain in &deps.chains {
        let _ = write!(b, "<h2>{}</h2>", esc(chain));
        let c = snap.chains.get(chain);
        let seen = c.and_then(|c| c.wallets.clone());
        match &seen {
            Some(s) => {
                let _ = write!(
                    b,
                    "<p class=\"muted\">{}</p>",
                    l.tf("balances_read", &[&time(s.at_ms)])
                );
            }
            None => {
                let _ = write!(b, "<p class=\"muted\">{}</p>", esc(l.t("balances_unread")));
            }
        }
        if let Some(e) = c.and_then(|c| c.wallets_error.as_ref()) {
            let _ = write!(
                b,
                "<p class=\"problem\">{}</p>",
                esc(&l.tf("balances_error", &[e]))
            );
        }
        let ledger: HashMap<(Address, String), I256> = match v.console.wallets.balances(chain).await
        {
            Ok(list) => list
                .into_iter()
                .map(|x| ((x.address, x.symbol), x.balance))
                .collect(),
            Err(e) => {
                tracing::warn!(target: "m2pool::console", error = %e, "cannot read ledger balances");
                HashMap::new()
            }
        };
        let waiting: HashMap<Address, i64> = v
            .console
            .store
            .waiting_per_wallet(chain)
            .await
            .map_err(|e| store_failed(&v, e))?
            .into_iter()
            .collect();
        let rows: Vec<Vec<String>> = seen
            .iter()
            .flat_map(|s| s.list.iter())
            .map(|w| {
                let mut cells = String::new();
                for (symbol, have, decimals) in &w.balances {
                    let low = w.low.iter().find(|x| &x.symbol == symbol);
                    let on_chain = format_units(*have, *decimals);
                    let in_ledger = ledger
                        .get(&(w.address, symbol.clone()))
                        .map_or_else(|| "0".to_owned(), |x| signed_units(*x, *decimals));
                    let _ = write!(
                        cells,
                        "<div{cls}>{sym}: {on} <span class=\"muted\">({lt} {led})</span>{warn}</div>",
                        cls = if low.is_some() { " class=\"low\"" } else { "" },
                        sym = esc(symbol),
                        on = esc(&on_chain),
                        lt = esc(l.t("ledger_balance")),
                        led = esc(&in_ledger),
                        warn = low
                            .map(|x| format!(" {}", pill("bad", &l.tf("low", &[&x.holds, &x.min]))))
                            .unwrap_or_default(),
                    );
                }
                vec![
                    format!(
                        "<a href=\"/console/payouts?wallet={a}\">{}</a>",
                        code(&addr_hex(&w.address)),
                        a = addr_hex(&w.address)
                    ),
                    esc(l.t(if w.class == "collection" {
                        "class.collection"
                    } else {
                        "class.user"
                    })),
                    cells,
                    w.next_nonce.to_string(),
                    waiting.get(&w.address).copied().unwrap_or(0).to_string(),
                ]
            })
            .collect();
        b.push_str(&table(
            &format!("wallets-{}", chain.to_ascii_lowercase()),
            &[
                l.t("address"),
                l.t("class"),
                l.t("on_chain"),
                l.t("next_nonce"),
                l.t("waiting"),
            ],
            &rows,
            l.t("none"),
        ));
    }
    Ok(v.page("wallets", l.t("nav.wallets"), &b))
}

/// Filters and positions of the requests page.
#[derive(Debug, Deserialize, Default)]
pub(crate) struct RequestQuery {
    lang: Option<String>,
    kind: Option<String>,
    outcome: Option<String>,
    before: Option<i64>,
    dead_before: Option<i64>,
}

/// What identifies a request in its body: its `queue_id`, else its
/// chain, symbol and address.
fn request_key(body: &[u8]) -> String {
    let Ok(v) = serde_json::from_slice::<Value>(body) else {
        let text = String::from_utf8_lossy(body);
        return esc(&text.chars().take(80).collect::<String>());
    };
    let field = |k: &str| v.get(k).and_then(Value::as_str).unwrap_or("").to_owned();
    let queue_id = field("queue_id");
    if queue_id.is_empty() {
        format!(
            "{} {} {}",
            esc(&field("chain")),
            esc(&field("symbol")),
            code(&field("address"))
        )
    } else {
        format!(
            "<a href=\"/console/payouts?q={}\">{}</a>",
            html::query_value(&queue_id),
            esc(&queue_id)
        )
    }
}

/// `GET /console/requests`: the inbox newest first, by kind and outcome,
/// refusals with their errors; then the dead letters.
pub(crate) async fn requests(
    axum::extract::State(deps): Deps,
    headers: HeaderMap,
    Query(q): Query<RequestQuery>,
) -> Result<Response, Response> {
    let v = gate(&deps, &headers, q.lang.as_deref())?;
    let l = v.lang;
    let kind = q.kind.as_deref().filter(|k| Kind::parse(k).is_some());
    let outcomes = ["accepted", "refused", "bad_signature", "unaddressable"];
    let outcome = q.outcome.as_deref().filter(|o| outcomes.contains(o));
    let page = deps
        .store
        .console_requests(kind, outcome, q.before, PAGE)
        .await
        .map_err(|e| store_failed(&v, e))?;
    let kinds: Vec<&str> = Kind::ALL.iter().map(|k| k.as_str()).collect();
    let mut b = format!(
        "<form class=\"filters\" method=\"get\">{}{}<button type=\"submit\">{}</button></form>",
        html::select("kind", l.t("kind"), l.t("any"), &kinds, kind),
        html::select("outcome", l.t("outcome"), l.t("any"), &outcomes, outcome),
        esc(l.t("filter"))
    );
    let rows: Vec<Vec<String>> = page
        .rows
        .iter()
        .map(|r| {
            let class = match r.outcome.as_str() {
                "accepted" => "ok",
                "refused" => "warn",
                _ => "bad",
            };
            vec![
                r.id.to_string(),
                time(r.received_at),
                esc(&r.kind),
                pill(class, &r.outcome),
                request_key(&r.body),
                format!(
                    "<span class=\"wrap\">{}</span>",
                    esc(r.error.as_deref().unwrap_or(""))
                ),
            ]
        })
        .collect();
    b.push_str(&table(
        "inbox",
        &[
            l.t("id"),
            l.t("received"),
            l.t("kind"),
            l.t("outcome"),
            l.t("request"),
            l.t("error"),
        ],
        &rows,
        l.t("none"),
    ));
    let keep = format!(
        "kind={}&outcome={}",
        html::query_value(kind.unwrap_or("")),
        html::query_value(outcome.unwrap_or(""))
    );
    b.push_str(&pager(
        l,
        page.next,
        Some(page.looked),
        &format!("{keep}&before="),
    ));

    let dead = v
        .console
        .store
        .console_dead_letters(q.dead_before, PAGE)
        .await
        .map_err(|e| store_failed(&v, e))?;
    let _ = write!(b, "<h2>{}</h2>", esc(l.t("dead_letters")));
    let rows: Vec<Vec<String>> = dead
        .rows
        .iter()
        .map(|d| {
            vec![
                d.id.to_string(),
                time(d.created_at),
                esc(&d.kind),
                request_key(&d.body),
                format!(
                    "<span class=\"wrap\">{}</span>",
                    esc(d.reason.as_deref().unwrap_or(""))
                ),
                time_opt(d.sent_at),
            ]
        })
        .collect();
    b.push_str(&table(
        "dead-letters",
        &[
            l.t("id"),
            l.t("created"),
            l.t("kind"),
            l.t("request"),
            l.t("reason"),
            l.t("published"),
        ],
        &rows,
        l.t("none"),
    ));
    b.push_str(&pager(
        l,
        dead.next,
        Some(dead.looked),
        &format!("{keep}&dead_before="),
    ));
    Ok(v.page("requests", l.t("nav.requests"), &b))
}

/// Which ids a list page looked at (`looked`, none for a search) and the
/// link to the next (older) page, `prefix` being the query up to the
/// position.
pub(super) fn pager(
    l: super::Lang,
    next: Option<i64>,
    looked: Option<(i64, i64)>,
    prefix: &str,
) -> String {
    let looked = looked
        .filter(|(lo, hi)| lo <= hi)
        .map(|(lo, hi)| {
            format!(
                "<span class=\"muted\">{}</span>",
                esc(&l.tf("scanned", &[&lo.to_string(), &hi.to_string()]))
            )
        })
        .unwrap_or_default();
    let older = next
        .map(|n| {
            format!(
                "<a href=\"?{}{n}\" class=\"older\">{}</a>",
                esc(prefix),
                esc(l.t("older"))
            )
        })
        .unwrap_or_default();
    if looked.is_empty() && older.is_empty() {
        String::new()
    } else {
        format!("<p class=\"pager\">{looked}{older}</p>")
    }
}
