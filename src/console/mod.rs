//! The operator console at `/console` (docs/architecture.md, "Operator
//! console"): read-only pages, rendered on the server, for the questions an
//! operator of a payment gateway answers every day. Where is this
//! withdrawal? Did that address get its deposit? Which payouts are stuck,
//! and why? What is left in the hot wallets? Is a node behind?
//!
//! - [`auth`]: login with the console token, the session cookie, same-origin
//!   checks on the two forms;
//! - [`pages`]: overview, wallets, requests;
//! - [`lists`]: payouts (with each payout's page) and deposits;
//! - [`html`], [`i18n`]: the frame, tables, times in UTC (local time on
//!   hover, by the one script), English and Chinese.
//!
//! It is on when a console token is configured
//! (`http_config.console_token_file` or `M2POOL_CONSOLE_TOKEN`), on
//! `http_config.listen`. Its CSS and script are compiled into the binary:
//! nothing is fetched from elsewhere. Every store read follows an index and
//! returns a page ([`crate::store::PayoutFilter`] and the others), and
//! wallet balances come from the health state, read by each network's
//! balance poller, never from a node at page time.

// A page handler returns the refusal itself as its error: built once per
// request on that path, boxing it buys nothing.
#![allow(clippy::result_large_err)]

mod auth;
mod html;
mod i18n;
mod lists;
mod pages;

use i18n::Lang;

use crate::listen::Tokens;
use crate::secret::Secret;
use crate::wallet::WalletStore;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

/// What the console needs besides the endpoint's shared state.
#[derive(Debug, Clone)]
pub struct Console {
    /// What the login form must be given.
    pub token: Arc<Secret<String>>,
    /// The message store through a connection of the console's own, so
    /// that pages never take one the writers wait for.
    pub store: crate::store::Store,
    /// Ledger balances.
    pub wallets: WalletStore,
    /// Decimals of every network's symbols.
    pub tokens: Arc<Tokens>,
    /// Per network, what the payout page explains waits with.
    pub nets: BTreeMap<String, NetFacts>,
    /// The networks that run, in the config's order.
    pub chains: Vec<String>,
    /// Connections, heads, cursors, wallet balances.
    pub health: crate::health::Health,
    /// Request counts since start.
    pub metrics: crate::metrics::SharedMetrics,
    /// What makes the daemon degraded or warned about.
    pub limits: crate::health::Limits,
}

/// A network's settings the console shows.
#[derive(Debug, Clone)]
pub struct NetFacts {
    /// Blocks until final.
    pub confirm_height: u64,
    /// After how long an unmined payout is replaced.
    pub stuck_after: Duration,
    /// Its native coin.
    pub native: String,
}

impl Console {
    /// The console of `config`, when it has a console token; `store` is
    /// its own handle on the message store ([`crate::store::Store::open_reader`]).
    pub fn new(
        config: &crate::config::Config,
        store: crate::store::Store,
        wallets: WalletStore,
        health: crate::health::Health,
        metrics: crate::metrics::SharedMetrics,
        limits: crate::health::Limits,
    ) -> Option<Self> {
        let token = config.console_token.clone()?;
        Some(Self {
            token: Arc::new(token),
            store,
            wallets,
            chains: config.net_names(),
            health,
            metrics,
            limits,
            tokens: Arc::new(Tokens::new(config)),
            nets: config
                .networks
                .iter()
                .map(|n| {
                    (
                        n.name.clone(),
                        NetFacts {
                            confirm_height: n.evm.confirm_height,
                            stuck_after: n.evm.payout.stuck_after,
                            native: n.evm.native.clone(),
                        },
                    )
                })
                .collect(),
        })
    }
}

/// The console, as its handlers take it.
type Deps = State<Arc<Console>>;

/// The console's routes, with their state, to merge into the endpoint's.
pub fn routes(console: Console) -> axum::Router {
    axum::Router::new()
        .route("/console", get(home))
        .route("/console/", get(home))
        .route("/console/login", get(login_form).post(login))
        .route("/console/logout", post(logout))
        .route("/console/assets/console.css", get(css))
        .route("/console/assets/console.js", get(js))
        .route("/console/overview", get(pages::overview))
        .route("/console/wallets", get(pages::wallets))
        .route("/console/requests", get(pages::requests))
        .route("/console/payouts", get(lists::payouts))
        .route("/console/payouts/{id}", get(lists::payout))
        .route("/console/deposits", get(lists::deposits))
        .layer(axum::middleware::map_response(harden))
        .with_state(Arc::new(console))
}

/// Headers on every console response: no framing, no sniffing, nothing
/// cached, only the console's own CSS and script.
async fn harden(mut r: Response) -> Response {
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; style-src 'self'; script-src 'self'; img-src 'self'; \
             form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        // Not `no-referrer`: under it a browser sends `Origin: null` on the
        // login form, which the same-origin check cannot tell from a
        // sandboxed page of another site.
        HeaderValue::from_static("same-origin"),
    );
    h.entry(header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
    r
}

/// `?lang=` on any page.
#[derive(Debug, Deserialize, Default)]
pub(crate) struct LangQuery {
    pub(crate) lang: Option<String>,
}

/// The reader of a page: signed in, in a language. Pages call [`gate`]
/// first; what it refuses is the response.
pub(crate) struct Viewer<'d> {
    /// The console.
    pub console: &'d Console,
    /// The reader's language.
    pub lang: Lang,
    /// A language chosen with `?lang=`, to remember in a cookie.
    remember: Option<Lang>,
}

impl Viewer<'_> {
    /// An HTML page answer, with the language cookie when one was chosen.
    pub fn html(&self, code: StatusCode, body: String) -> Response {
        let mut r = (
            code,
            [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
            body,
        )
            .into_response();
        if let Some(l) = self.remember
            && let Ok(v) = HeaderValue::from_str(&format!(
                "{}={}; Path=/console; SameSite=Strict; Max-Age=31536000",
                auth::LANG_COOKIE,
                l.code()
            ))
        {
            r.headers_mut().append(header::SET_COOKIE, v);
        }
        r
    }

    /// A whole page with the frame around `body`.
    pub fn page(&self, current: &str, title: &str, body: &str) -> Response {
        self.html(StatusCode::OK, html::page(self.lang, current, title, body))
    }
}

/// The reader, if signed in; else the way to the login form.
pub(crate) fn gate<'d>(
    console: &'d Console,
    headers: &HeaderMap,
    lang: Option<&str>,
) -> Result<Viewer<'d>, Response> {
    if !auth::signed_in(console, headers) {
        return Err(Redirect::to("/console/login").into_response());
    }
    Ok(Viewer {
        console,
        lang: auth::lang(headers, lang),
        remember: lang.and_then(Lang::parse),
    })
}

/// The store could not be read: the page says so (and the log says why).
pub(crate) fn store_failed(v: &Viewer<'_>, e: crate::store::StoreError) -> Response {
    tracing::warn!(target: "m2pool::console", error = %e, "console read failed");
    v.html(
        StatusCode::SERVICE_UNAVAILABLE,
        html::page(
            v.lang,
            "",
            "503",
            "<p class=\"problem\">The message store cannot be read now; try again.</p>",
        ),
    )
}

async fn home(State(deps): Deps, headers: HeaderMap) -> Response {
    match gate(&deps, &headers, None) {
        Ok(_) => Redirect::to("/console/overview").into_response(),
        Err(r) => r,
    }
}

/// The login page, with `error` (a text key) when the last try failed.
fn login_page(lang: Lang, code: StatusCode, error: Option<&str>) -> Response {
    let error = error
        .map(|k| {
            format!(
                "<p class=\"problem\" id=\"login-error\">{}</p>",
                html::esc(lang.t(k))
            )
        })
        .unwrap_or_default();
    let body = format!(
        "<!doctype html><html lang=\"{code_}\"><head><meta charset=\"utf-8\">\
<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
<title>{title} · m2pool-payment</title><link rel=\"stylesheet\" href=\"/console/assets/console.css\"></head>\
<body class=\"login\"><main><h1>{title}</h1>{error}\
<form method=\"post\" action=\"/console/login\"><label>{label} \
<input type=\"password\" name=\"token\" id=\"token\" autocomplete=\"current-password\" required autofocus></label>\
<button type=\"submit\" id=\"login\">{submit}</button></form>\
<p><a href=\"?lang={other}\">{other_name}</a></p></main></body></html>",
        code_ = lang.code(),
        title = html::esc(lang.t("login.title")),
        label = html::esc(lang.t("login.token")),
        submit = html::esc(lang.t("login.submit")),
        other = lang.other().code(),
        other_name = lang.other().name(),
    );
    (
        code,
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        body,
    )
        .into_response()
}

async fn login_form(headers: HeaderMap, Query(q): Query<LangQuery>) -> Response {
    login_page(
        auth::lang(&headers, q.lang.as_deref()),
        StatusCode::OK,
        None,
    )
}

/// The login form's body.
#[derive(Debug, Deserialize)]
struct LoginForm {
    token: String,
}

async fn login(
    State(deps): Deps,
    headers: HeaderMap,
    axum::Form(form): axum::Form<LoginForm>,
) -> Response {
    let console = &deps;
    let lang = auth::lang(&headers, None);
    if !auth::same_origin(&headers) {
        return login_page(lang, StatusCode::FORBIDDEN, Some("login.origin"));
    }
    let given = form.token.trim();
    let same: bool =
        subtle::ConstantTimeEq::ct_eq(given.as_bytes(), console.token.expose().as_bytes()).into();
    if !same {
        tracing::warn!(target: "m2pool::console", "console login refused: wrong token");
        return login_page(lang, StatusCode::UNAUTHORIZED, Some("login.wrong"));
    }
    let expires = auth::now_secs() + auth::SESSION.as_secs();
    let value = auth::session_value(console.token.expose(), expires);
    let mut r = Redirect::to("/console/overview").into_response();
    r.headers_mut()
        .insert(header::SET_COOKIE, auth::set_cookie(&headers, Some(&value)));
    r
}

async fn logout(headers: HeaderMap) -> Response {
    if !auth::same_origin(&headers) {
        return (StatusCode::FORBIDDEN, "log out from the console's own page").into_response();
    }
    let mut r = Redirect::to("/console/login").into_response();
    r.headers_mut()
        .insert(header::SET_COOKIE, auth::set_cookie(&headers, None));
    r
}

async fn css() -> Response {
    asset(
        "text/css; charset=utf-8",
        include_str!("assets/console.css"),
    )
}

async fn js() -> Response {
    asset(
        "text/javascript; charset=utf-8",
        include_str!("assets/console.js"),
    )
}

/// A compiled-in asset (cacheable for an hour).
fn asset(kind: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, kind),
            (header::CACHE_CONTROL, "max-age=3600"),
        ],
        body,
    )
        .into_response()
}
