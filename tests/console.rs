//! The operator console in a real browser (headless Chromium through
//! chromedriver) against a daemon with real deposits and payouts on anvil,
//! RabbitMQ and SQLite: login refused without the token, each page renders,
//! payouts found by `queue_id` and by transaction hash, a stuck payout says
//! why, a low collection wallet is flagged in the console, `/healthz` and
//! `/metrics`. Screenshots of each page go to `target/console/`.

mod common;

use alloy::primitives::Address;
use alloy::providers::Provider;
use anyhow::{Context, Result, ensure};
use common::browser::Browser;
use common::http::{free_port, wait_health, wait_metrics};
use common::payout_of as is;
use common::*;
use m2pool_payment::wallet::Label;
use serde_json::{Value, json};
use std::path::PathBuf;

/// The console token of this test.
const TOKEN: &str = "console-token-0123456789";

/// Where the screenshots go: `target/console/`.
fn shots() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/console")
}

/// A plain request to the console: status, `Location`, `Set-Cookie`, body.
async fn raw(
    port: u16,
    method: reqwest::Method,
    path: &str,
    headers: &[(&str, &str)],
    form: Option<&str>,
) -> Result<(u16, String, String, String)> {
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()?;
    let mut req = client.request(method, format!("http://127.0.0.1:{port}{path}"));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    if let Some(f) = form {
        req = req
            .header("content-type", "application/x-www-form-urlencoded")
            .body(f.to_owned());
    }
    let r = req.send().await?;
    let h = |n: &str| {
        r.headers()
            .get(n)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned()
    };
    let (status, location, cookie) = (r.status().as_u16(), h("location"), h("set-cookie"));
    Ok((status, location, cookie, r.text().await?))
}

#[tokio::test]
async fn the_console_shows_deposits_payouts_wallets_and_why_a_payout_waits() -> Result<()> {
    let Some(browser) = Browser::start().await? else {
        return Ok(());
    };
    let port = free_port()?;
    let dir = tempfile::tempdir()?;
    let token_file = dir.path().join("console-token");
    std::fs::write(&token_file, format!("{TOKEN}\n"))?;
    let w = World::with("console", &[], move |c: &mut Value| {
        c["http_config"] = json!({
            "listen": format!("127.0.0.1:{port}"),
            "console_token_file": token_file,
        });
        c["eth_config"]["balance_poll_secs"] = json!(1);
    })
    .await?;
    let user = w.new_wallet(Label::User).await?;
    w.fund(user, 100_000_000, ether(1)).await?;
    // A collection wallet with no ether: below the default gas threshold.
    let collection = w.new_wallet(Label::Collection).await?;
    let mut payouts = w.replies("withdraw_resp").await?;
    let mut topups = w.replies("topup_resp").await?;
    let daemon = w.start().await?;

    // A deposit, made final.
    let watched = Address::random();
    w.publish("topup", topup(&hex_addr(watched), "USDT"))
        .await?;
    w.wait_watched("USDT", watched, true).await?;
    let (deposit_tx, _) = w.mint_usdt(watched, 12_345_678).await?;
    topups
        .wait("deposit status 2", deposit_of(deposit_tx, 2))
        .await?;
    // A withdrawal, made final.
    let to = Address::random();
    w.publish("withdraw", withdraw("console-done", user, to, "7.5")?)
        .await?;
    let sent = payouts.wait("status 2", is("console-done", 2)).await?;
    let done_tx = sent.v["tx_hash"].as_str().context("tx_hash")?.to_owned();
    w.mine(21).await?;
    payouts.wait("status 1", is("console-done", 1)).await?;
    topups
        .wait("deposit status 1", deposit_of(deposit_tx, 1))
        .await?;
    // A withdrawal sent but never mined: the node stops mining.
    let _: Value = w
        .eth
        .raw_request("evm_setAutomine".into(), (false,))
        .await?;
    w.publish("withdraw", withdraw("console-stuck", user, to, "1")?)
        .await?;
    payouts.wait("status 2", is("console-stuck", 2)).await?;
    // A forged request, refused.
    let mut forged = topup(&hex_addr(Address::random()), "USDT");
    forged["sign"] = "00".repeat(32).into();
    w.publish_raw("topup", &serde_json::to_vec(&forged)?)
        .await?;
    topups.wait("status 3", |v| v["status"] == 3).await?;

    // The low collection wallet: in /healthz warnings and the metrics,
    // without turning the gateway unhealthy.
    let low = format!("collection wallet {}", hex_addr(collection));
    let h = wait_health(port, "warns about the collection's gas", WAIT, |_, h| {
        h["warnings"].to_string().contains(&low)
    })
    .await?;
    assert_eq!(h["status"], "ok", "{h}");
    wait_metrics(
        port,
        &[(
            "m2pool_wallets_low{chain=\"ETH\",class=\"collection\",symbol=\"ETH\",kind=\"gas\"}",
            1.0,
        )],
    )
    .await?;

    // Without a session every page leads to the login; a wrong token and a
    // form from another site are refused; the session cookie is HttpOnly
    // and SameSite=Strict.
    let (code, location, ..) =
        raw(port, reqwest::Method::GET, "/console/payouts", &[], None).await?;
    assert_eq!((code, location.as_str()), (303, "/console/login"));
    let (code, _, cookie, body) = raw(
        port,
        reqwest::Method::POST,
        "/console/login",
        &[],
        Some("token=wrong-token-0123456789"),
    )
    .await?;
    assert_eq!(code, 401, "{body}");
    assert!(cookie.is_empty(), "no session for a wrong token: {cookie}");
    let (code, _, cookie, _) = raw(
        port,
        reqwest::Method::POST,
        "/console/login",
        &[("origin", "https://evil.example")],
        Some(&format!("token={TOKEN}")),
    )
    .await?;
    assert_eq!(code, 403);
    assert!(cookie.is_empty(), "no session from another site");
    let (code, location, cookie, _) = raw(
        port,
        reqwest::Method::POST,
        "/console/login",
        &[],
        Some(&format!("token={TOKEN}")),
    )
    .await?;
    assert_eq!((code, location.as_str()), (303, "/console/overview"));
    for flag in ["HttpOnly", "SameSite=Strict", "Path=/console"] {
        assert!(cookie.contains(flag), "{flag} in {cookie}");
    }
    let (code, ..) = raw(
        port,
        reqwest::Method::GET,
        "/console/overview",
        &[("cookie", "m2pool_console=9999999999.00")],
        None,
    )
    .await?;
    assert_eq!(code, 303, "a forged session is no session");

    let base = format!("http://127.0.0.1:{port}");
    let dir = shots();
    browser.goto(&format!("{base}/console/overview")).await?;
    ensure!(
        browser.url().await?.ends_with("/console/login"),
        "login first"
    );
    browser.screenshot(&dir.join("login.png")).await?;
    browser.type_into("#token", "not-the-token-at-all").await?;
    browser.click("#login").await?;
    let refused = browser.text("#login-error").await?;
    assert!(refused.contains("not right"), "{refused}");
    browser.type_into("#token", TOKEN).await?;
    browser.click("#login").await?;
    browser
        .wait_url("logged in", |u| u.ends_with("/console/overview"))
        .await?;
    let cookies = browser.cookies().await?;
    let session = cookies
        .iter()
        .find(|c| c["name"] == "m2pool_console")
        .context("session cookie")?;
    assert_eq!(session["httpOnly"], true, "{session}");
    assert_eq!(session["sameSite"], "Strict", "{session}");

    // Overview: healthy, the collection's gas flagged, the network's head.
    assert!(browser.text("#healthy").await?.contains("Healthy"));
    assert!(browser.text("#warnings").await?.contains(&low));
    let networks = browser.text("#networks").await?;
    assert!(
        networks.contains("ETH") && networks.contains("connected"),
        "{networks}"
    );
    browser.screenshot(&dir.join("overview.png")).await?;

    // Payouts: both listed; found by queue_id and by transaction hash.
    browser.goto(&format!("{base}/console/payouts")).await?;
    let list = browser.text("#payouts").await?;
    assert!(
        list.contains("console-done") && list.contains("console-stuck"),
        "{list}"
    );
    let title = browser.attribute("#payouts time", "title").await?;
    browser.screenshot(&dir.join("payouts.png")).await?;
    browser.type_into("#q", "console-done").await?;
    browser.click("#search").await?;
    browser
        .wait_url("searched", |u| u.contains("q=console-done"))
        .await?;
    let found = browser.text("#payouts").await?;
    assert!(
        found.contains("console-done") && !found.contains("console-stuck"),
        "{found}"
    );
    browser
        .goto(&format!("{base}/console/payouts?q={done_tx}"))
        .await?;
    let found = browser.text("#payouts").await?;
    assert!(
        found.contains("console-done") && found.contains("confirmed"),
        "{found}"
    );
    browser.click("#payouts tbody a").await?;
    browser
        .wait_url("a payout's page", |u| u.contains("/console/payouts/"))
        .await?;
    let why = browser.text("#why").await?;
    assert!(why.contains("Final"), "{why}");
    assert!(browser.text("#txs").await?.contains(&done_tx));
    assert!(browser.text("#answers").await?.contains("\"status\":1"));
    browser.screenshot(&dir.join("payout-done.png")).await?;

    // The stuck one says why.
    browser
        .goto(&format!("{base}/console/payouts?q=console-stuck"))
        .await?;
    browser.click("#payouts tbody a").await?;
    browser
        .wait_url("a payout's page", |u| u.contains("/console/payouts/"))
        .await?;
    let why = browser.text("#why").await?;
    assert!(why.contains("not mined yet"), "{why}");
    browser.screenshot(&dir.join("payout-stuck.png")).await?;

    // Deposits: found by address, amount exact.
    browser
        .goto(&format!("{base}/console/deposits?q={}", hex_addr(watched)))
        .await?;
    let deposits = browser.text("#deposits").await?;
    assert!(
        deposits.contains("12.345678 USDT") && deposits.contains("confirmed"),
        "{deposits}"
    );
    browser.goto(&format!("{base}/console/deposits")).await?;
    browser.screenshot(&dir.join("deposits.png")).await?;

    // Wallets: both, the collection's gas low, a payout waiting on the user's.
    browser.goto(&format!("{base}/console/wallets")).await?;
    let wallets = browser.text("#wallets-eth").await?;
    assert!(
        wallets.contains(&hex_addr(user)) && wallets.contains(&hex_addr(collection)),
        "{wallets}"
    );
    assert!(wallets.contains("low: 0 below 0.02"), "{wallets}");
    browser.screenshot(&dir.join("wallets.png")).await?;

    // Requests: the forged one with its outcome.
    browser
        .goto(&format!("{base}/console/requests?outcome=bad_signature"))
        .await?;
    let inbox = browser.text("#inbox").await?;
    assert!(
        inbox.contains("bad_signature") && !inbox.contains("accepted"),
        "{inbox}"
    );
    // A filtered list says which ids it looked at.
    let looked = browser.text(".pager").await?;
    assert!(looked.contains("Looked at ids 1 to 4."), "{looked}");
    browser.goto(&format!("{base}/console/requests")).await?;
    assert!(browser.text("#inbox").await?.contains("withdraw"));
    browser.screenshot(&dir.join("requests.png")).await?;

    // Chinese, and a phone's width.
    browser
        .goto(&format!("{base}/console/overview?lang=zh"))
        .await?;
    assert!(browser.source().await?.contains("概览"));
    browser.resize(390, 844).await?;
    browser
        .screenshot(&dir.join("overview-phone-zh.png"))
        .await?;
    browser
        .goto(&format!("{base}/console/overview?lang=en"))
        .await?;

    // Log out: the pages lead to the login again.
    browser.click("#logout").await?;
    browser
        .wait_url("logged out", |u| u.ends_with("/console/login"))
        .await?;
    browser.goto(&format!("{base}/console/payouts")).await?;
    ensure!(
        browser.url().await?.ends_with("/console/login"),
        "logged out"
    );
    ensure!(title.is_some_and(|t| !t.is_empty()), "local time on hover");

    browser.quit().await?;
    daemon.stop().await?;
    w.cleanup().await?;
    Ok(())
}
