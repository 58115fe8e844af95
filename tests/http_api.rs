//! The HTTP API against real RabbitMQ, SQLite and anvil: every flow driven
//! by HTTP only, answers read from the WebSocket stream; one request sent
//! both ways; bad input refused with nothing stored; a stream resumed
//! after a disconnect missing nothing.

mod common;

use alloy::primitives::Address;
use anyhow::{Context, Result, ensure};
use common::api::{Api, Pushed};
use common::*;
use m2pool_payment::wallet::Label;
use serde_json::{Value, json};

fn answer_is(
    kind: &'static str,
    key: &'static str,
    val: String,
    status: u64,
) -> impl Fn(&Pushed) -> bool {
    move |p| p.kind == kind && p.answer[key] == val.as_str() && p.answer["status"] == status
}

fn withdraw(queue_id: &str, from: Address, to: Address, amount: f64) -> Value {
    json!({"queue_id": queue_id, "from_address": hex_addr(from), "to_address": hex_addr(to),
           "chain": "ETH", "symbol": "USDT", "amount": amount, "timestamp": 1758610297})
}

/// A world serving the API, and a client of it.
async fn api_world(test: &str) -> Result<(World, Api, tempfile::TempDir)> {
    common::api::api_world(test, Value::Null).await
}

/// `body` with `notify_url` set to `url`.
fn hooked(mut body: Value, url: &str) -> Value {
    body["notify_url"] = url.into();
    body
}

#[tokio::test]
async fn every_flow_runs_over_http_with_answers_on_the_stream_and_webhooks() -> Result<()> {
    let (w, api, _dir) =
        common::api::api_world("api-flows", json!({"allow_private": true})).await?;
    let hook = common::webhooks::Receiver::start(common::webhooks::Mode::Ok).await?;
    let url = hook.url.clone();
    let user = w.new_wallet(Label::User).await?;
    w.fund(user, 100_000_000, ether(1)).await?;
    let mut queue_answers = w.replies("withdraw_resp").await?;
    let daemon = w.start().await?;
    api.wait_up().await?;
    let mut stream = api.stream(Some(0)).await?;

    // A deposit: topup over HTTP, 2 then 1 on the stream.
    let watched = Address::random();
    let (code, body) = api
        .post(
            "topup",
            signed(hooked(topup(&hex_addr(watched), "USDT"), &url))?,
        )
        .await?;
    ensure!(
        code == 202 && body["accepted"] == true,
        "topup: {code} {body}"
    );
    // Watched, and the chain followed: a deposit from now on is scanned
    // forward (one before a fresh store's first block is not looked back for).
    w.wait_watched("USDT", watched, true).await?;
    let (tx, _) = w.send_usdt(w.accounts[1], watched, 7_500_000).await?;
    let seen = stream
        .wait(
            "deposit 2",
            answer_is("topup_resp", "tx_hash", tx.to_string(), 2),
        )
        .await?;
    assert_eq!(seen.answer["amount"], json!(7.5));
    w.mine(20).await?;
    stream
        .wait(
            "deposit 1",
            answer_is("topup_resp", "tx_hash", tx.to_string(), 1),
        )
        .await?;

    // A withdrawal: 2, then 1, on the stream and on its queue alike.
    let to = Address::random();
    let (code, body) = api
        .post(
            "withdraw",
            signed(hooked(withdraw("w-1", user, to, 12.25), &url))?,
        )
        .await?;
    ensure!(code == 202, "withdraw: {code} {body}");
    let sent = stream
        .wait(
            "withdraw 2",
            answer_is("withdraw_resp", "queue_id", "w-1".into(), 2),
        )
        .await?;
    w.mine(20).await?;
    let done = stream
        .wait(
            "withdraw 1",
            answer_is("withdraw_resp", "queue_id", "w-1".into(), 1),
        )
        .await?;
    assert_eq!(sent.answer["tx_hash"], done.answer["tx_hash"]);
    assert!(done.id > sent.id);
    let on_queue = queue_answers
        .wait("withdraw 1 on the queue", payout_of("w-1", 1))
        .await?;
    assert_eq!(on_queue.v, done.answer, "the same answer both ways");

    // A batch payment: one transfer per item.
    let to2: Vec<Address> = (0..2).map(|_| Address::random()).collect();
    let pay = json!({"queue_id": "p-1", "from_address": hex_addr(user), "chain": "eth", "symbol": "USDT",
        "timestamp": 1758610297, "transactions": [
            {"order_id": "o-1", "to_address": hex_addr(to2[0]), "amount": 1},
            {"order_id": "o-2", "to_address": hex_addr(to2[1]), "amount": 2.5}]});
    let (code, body) = api.post("pay", signed(hooked(pay, &url))?).await?;
    ensure!(code == 202, "pay: {code} {body}");
    for order in ["o-1", "o-2"] {
        stream
            .wait(order, answer_is("pay_resp", "order_id", order.into(), 2))
            .await?;
    }
    w.mine(20).await?;
    for order in ["o-1", "o-2"] {
        stream
            .wait(order, answer_is("pay_resp", "order_id", order.into(), 1))
            .await?;
    }
    assert_eq!(
        w.usdt_balance(to2[1]).await?,
        alloy::primitives::U256::from(2_500_000u64)
    );

    // Cancelling a payout already paid: refused (409), nothing moves.
    let mut cancel = topup(&hex_addr(user), "USDT");
    cancel["queue_id"] = "w-1".into();
    let (code, body) = api.post("remove", signed(hooked(cancel, &url))?).await?;
    ensure!(
        code == 409 && body["status"] == 0,
        "late cancel: {code} {body}"
    );

    // Remove: answered at once with 1; the very same request again is a
    // repeat (200) answered alike.
    let remove = signed(hooked(topup(&hex_addr(watched), "USDT"), &url))?;
    let (code, body) = api.post("remove", remove.clone()).await?;
    ensure!(
        code == 202 && body["answers"][0]["status"] == 1,
        "remove: {code} {body}"
    );
    let (code, again) = api.post("remove", remove).await?;
    ensure!(
        code == 200 && again["repeat"] == true,
        "repeat: {code} {again}"
    );
    assert_eq!(again["answers"], body["answers"]);

    // Reads.
    let (code, p) = api.get("/v1/payouts/w-1").await?;
    ensure!(code == 200, "payout read: {code} {p}");
    let item = &p["items"][0];
    assert_eq!(item["state"], "confirmed");
    assert_eq!(item["tx_hash"], done.answer["tx_hash"]);
    assert_eq!(item["transactions"].as_array().map(Vec::len), Some(1));
    let statuses: Vec<&Value> = item["answers"]
        .as_array()
        .context("answers")?
        .iter()
        .map(|a| &a["status"])
        .collect();
    assert_eq!(statuses, [&json!(2), &json!(1)]);
    assert_eq!(item["answers"][1], done.answer, "the answers as sent");
    let (code, p) = api.get("/v1/payouts/p-1?chain=ETH").await?;
    ensure!(
        code == 200 && p["items"].as_array().map(Vec::len) == Some(2),
        "{code} {p}"
    );
    assert_eq!(api.get("/v1/payouts/nothing").await?.0, 404);

    let (code, d) = api
        .get(&format!(
            "/v1/deposits?address={}&chain=eth&symbol=usdt",
            hex_addr(watched)
        ))
        .await?;
    ensure!(code == 200, "deposits: {code} {d}");
    let list = d["deposits"].as_array().context("deposits")?;
    assert_eq!(list.len(), 1);
    assert_eq!(
        (list[0]["state"].as_str(), list[0]["status"].as_u64()),
        (Some("confirmed"), Some(1))
    );
    assert_eq!(list[0]["amount"], json!(7.5));
    assert_eq!(d["next"], Value::Null);

    let (code, wv) = api
        .get(&format!("/v1/watches/{}", hex_addr(watched)))
        .await?;
    ensure!(code == 200, "watches: {code} {wv}");
    assert_eq!(
        wv["watches"],
        json!([{"chain": "ETH", "symbol": "USDT", "watched": false,
                                       "since_ms": wv["watches"][0]["since_ms"]}])
    );

    // Eleven answers in all: a deposit's 2 and 1, a withdrawal's 2 and 1,
    // two transfers' 2 and 1, the late cancel's 0, the remove's 1 twice.
    while stream.seen.len() < 11 {
        stream.next().await?;
    }
    // Stream positions are consecutive from 1.
    let pushed = stream.close().await?;
    let ids: Vec<i64> = pushed.iter().map(|p| p.id).collect();
    let want: Vec<i64> = (1..=ids.len() as i64).collect();
    assert_eq!(ids, want);

    // Every answer also reached the webhook receiver, signed, keyed by its
    // stream position, once.
    let calls = hook
        .wait_delivered("every answer", pushed.len(), |_| true)
        .await?;
    let mut by_key: Vec<(i64, String, Value)> = calls
        .iter()
        .map(|c| (c.key, c.event.clone(), c.answer.clone()))
        .collect();
    by_key.sort_by_key(|c| c.0);
    let streamed: Vec<(i64, String, Value)> = pushed
        .iter()
        .map(|p| (p.id, p.kind.clone(), p.answer.clone()))
        .collect();
    assert_eq!(by_key, streamed);
    hook.signatures_checked()?;

    daemon.stop().await?;
    w.cleanup().await
}

#[tokio::test]
async fn without_rabbitmq_the_http_api_alone_serves_every_answer() -> Result<()> {
    let port = common::http::free_port()?;
    let dir = tempfile::tempdir()?;
    let api_edit = common::api::with_api(port, dir.path())?;
    // No rmq_config at all: requests over HTTP, answers on the stream.
    let w = World::with("api-no-broker", &[], move |c: &mut Value| {
        api_edit(c);
        if let Some(o) = c.as_object_mut() {
            o.remove("rmq_config");
        }
    })
    .await?;
    let api = Api::new(port);
    let config = w.config()?;
    ensure!(config.rmq.is_none(), "the config has no broker");
    let user = w.new_wallet(Label::User).await?;
    w.fund(user, 100_000_000, ether(1)).await?;
    let daemon = w.start().await?;
    api.wait_up().await?;
    let mut stream = api.stream(Some(0)).await?;

    // Healthy with no broker, which is neither connected nor missed.
    let port_h = port;
    let h = common::http::wait_health(port_h, "ok without a broker", WAIT, |s, h| {
        s == 200 && h["status"] == "ok"
    })
    .await?;
    assert_eq!(h["broker_connected"], Value::Null, "{h}");
    let m = common::http::metrics(port).await?;
    assert!(m.contains("# TYPE m2pool_broker_connected gauge"));
    assert!(
        !m.lines().any(|l| l.starts_with("m2pool_broker_connected ")),
        "no sample for a broker that is not there"
    );

    // A deposit and a withdrawal, each 2 then 1.
    let watched = Address::random();
    let (code, body) = api
        .post("topup", signed(topup(&hex_addr(watched), "USDT"))?)
        .await?;
    ensure!(code == 202, "topup: {code} {body}");
    w.wait_watched("USDT", watched, true).await?;
    let (tx, _) = w.send_usdt(w.accounts[1], watched, 3_000_000).await?;
    stream
        .wait(
            "deposit 2",
            answer_is("topup_resp", "tx_hash", tx.to_string(), 2),
        )
        .await?;
    let to = Address::random();
    let (code, body) = api
        .post("withdraw", signed(withdraw("nb-1", user, to, 4.5))?)
        .await?;
    ensure!(code == 202, "withdraw: {code} {body}");
    stream
        .wait(
            "withdraw 2",
            answer_is("withdraw_resp", "queue_id", "nb-1".into(), 2),
        )
        .await?;
    w.mine(20).await?;
    stream
        .wait(
            "deposit 1",
            answer_is("topup_resp", "tx_hash", tx.to_string(), 1),
        )
        .await?;
    stream
        .wait(
            "withdraw 1",
            answer_is("withdraw_resp", "queue_id", "nb-1".into(), 1),
        )
        .await?;
    assert_eq!(
        w.usdt_balance(to).await?,
        alloy::primitives::U256::from(4_500_000u64)
    );

    // Answers are settled (no backlog waits for a broker) and logged.
    common::http::wait_health(port, "the outbox settled", WAIT, |_, h| {
        h["outbox_backlog"] == 0
    })
    .await?;
    w.wait_txlog(&hex_addr(user), &["[WithdrawResp]", "4.500000"])
        .await?;
    daemon.stop().await?;
    w.cleanup().await
}

#[tokio::test]
async fn the_same_withdrawal_by_http_and_by_rabbitmq_pays_once() -> Result<()> {
    let (w, api, _dir) = api_world("api-both-ways").await?;
    let user = w.new_wallet(Label::User).await?;
    w.fund(user, 100_000_000, ether(1)).await?;
    let mut replies = w.replies("withdraw_resp").await?;
    let daemon = w.start().await?;
    api.wait_up().await?;

    let body = signed(withdraw("twice", user, Address::random(), 3.0))?;
    let (code, first) = api.post("withdraw", body.clone()).await?;
    ensure!(code == 202 && first["repeat"] == false, "{code} {first}");
    w.publish_raw("withdraw", &body).await?;
    replies.wait("status 2", payout_of("twice", 2)).await?;
    let (code, again) = api.post("withdraw", body).await?;
    ensure!(code == 200 && again["repeat"] == true, "{code} {again}");
    w.mine(20).await?;
    replies.wait("status 1", payout_of("twice", 1)).await?;
    let transfers = w.transfers_from(user).await?;
    assert_eq!(transfers.len(), 1, "one transfer: {transfers:?}");
    assert_eq!(w.nonce(user).await?, 1);

    daemon.stop().await?;
    w.cleanup().await
}

#[tokio::test]
async fn bad_input_over_http_is_refused_and_nothing_is_stored() -> Result<()> {
    let (w, api, _dir) = api_world("api-bad").await?;
    let daemon = w.start().await?;
    api.wait_up().await?;
    let addr = hex_addr(Address::random());

    let (code, b) = api.post("topup", b"{not json".to_vec()).await?;
    ensure!(
        code == 400 && b["accepted"] == false,
        "malformed: {code} {b}"
    );
    let (code, b) = api.post("topup", br#"{"address": 5}"#.to_vec()).await?;
    ensure!(code == 400, "wrong types: {code} {b}");
    let mut forged = signed(topup(&addr, "USDT"))?;
    let at = forged.len() - 3;
    forged[at] = if forged[at] == b'0' { b'1' } else { b'0' };
    let (code, b) = api.post("topup", forged).await?;
    ensure!(code == 401 && b["status"] == 3, "bad signature: {code} {b}");
    let mut other = topup(&addr, "USDT");
    other["chain"] = "DOGE".into();
    let (code, b) = api.post("topup", signed(other)?).await?;
    ensure!(
        code == 400 && b["status"] == 0 && b["error"].as_str().is_some_and(|e| e.contains("ETH")),
        "unknown chain: {code} {b}"
    );
    let mut zero = withdraw("z", Address::random(), Address::random(), 0.0);
    zero["amount"] = json!(0);
    let (code, b) = api.post("withdraw", signed(zero)?).await?;
    ensure!(code == 400 && b["status"] == 0, "zero amount: {code} {b}");
    for url in [
        "http://127.0.0.1:9100/metrics",
        "http://169.254.169.254/",
        "file:///etc/passwd",
    ] {
        let mut hooked = topup(&addr, "USDT");
        hooked["notify_url"] = url.into();
        let (code, b) = api.post("topup", signed(hooked)?).await?;
        ensure!(
            code == 400
                && b["status"] == 0
                && b["error"]
                    .as_str()
                    .is_some_and(|e| e.contains("notify_url")),
            "forbidden notify_url {url}: {code} {b}"
        );
    }
    let (code, _) = api.post("topup", vec![b' '; 2 << 20]).await?;
    ensure!(code == 413, "over the limit: {code}");
    let (code, _) = api.post("deposit", signed(topup(&addr, "USDT"))?).await?;
    ensure!(code == 404, "unknown kind: {code}");

    // Reads and the stream need the token.
    let (code, _) = api.get_as("/v1/payouts/x", None).await?;
    ensure!(code == 401, "no token: {code}");
    let (code, _) = api
        .get_as("/v1/payouts/x", Some("wrong-token-0123456789"))
        .await?;
    ensure!(code == 401, "wrong token: {code}");
    ensure!(
        api.stream_refused(None).await? == 401,
        "stream without a token"
    );
    ensure!(
        api.stream_refused(Some("Bearer nope")).await? == 401,
        "stream with a wrong token"
    );
    let (code, _) = api.get("/v1/deposits?address=0x12&chain=ETH").await?;
    ensure!(code == 400, "bad address: {code}");
    let (code, _) = api
        .get(&format!("/v1/deposits?address={addr}&chain=DOGE"))
        .await?;
    ensure!(code == 404, "unknown chain: {code}");

    // Nothing was stored: the inbox is empty, then holds the good request.
    let store = w.store().await?;
    assert_eq!(store.inbox_span().await?.0, 0, "nothing recorded");
    let (code, _) = api.post("topup", signed(topup(&addr, "USDT"))?).await?;
    ensure!(code == 202, "good request: {code}");
    assert_eq!(store.inbox_span().await?.0, 1, "the good one recorded");
    store.close().await;

    daemon.stop().await?;
    w.cleanup().await
}

#[tokio::test]
async fn a_stream_resumed_with_after_misses_nothing() -> Result<()> {
    let (w, api, _dir) = api_world("api-resume").await?;
    let daemon = w.start().await?;
    api.wait_up().await?;
    // A burst of answers: removes of addresses nobody watches (each
    // answered 0), over the queue.
    let addresses: Vec<String> = (0..300).map(|_| hex_addr(Address::random())).collect();
    let bodies: Vec<Vec<u8>> = addresses
        .iter()
        .map(|a| signed(topup(a, "USDT")))
        .collect::<Result<_>>()?;
    let mut first = api.stream(Some(0)).await?;
    w.publish_all("remove", &bodies).await?;
    for _ in 0..50 {
        first.next().await?;
    }
    let mut got = first.close().await?;
    let last = got.last().context("read some")?.id;
    let mut rest = api.stream(Some(last)).await?;
    while got.len() < addresses.len() {
        got.push(rest.next().await?);
    }
    rest.close().await?;
    let ids: Vec<i64> = got.iter().map(|p| p.id).collect();
    let want: Vec<i64> = (1..=addresses.len() as i64).collect();
    assert_eq!(ids, want, "every position once, in order");
    let mut seen: Vec<String> = got
        .iter()
        .map(|p| p.answer["address"].as_str().unwrap_or_default().to_owned())
        .collect();
    seen.sort();
    let mut sent = addresses.clone();
    sent.sort();
    assert_eq!(seen, sent, "every answer once");
    daemon.stop().await?;
    w.cleanup().await
}

#[tokio::test]
async fn the_openapi_document_describes_the_running_server() -> Result<()> {
    let doc: Value = serde_json::from_str(&std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/docs/openapi.json"
    ))?)?;
    let (w, api, _dir) = api_world("api-openapi").await?;
    let daemon = w.start().await?;
    api.wait_up().await?;
    let addr = hex_addr(Address::random());
    let paths = doc["paths"].as_object().context("paths")?;
    ensure!(paths.len() >= 10, "every route documented");
    for (path, ops) in paths {
        for (method, op) in ops.as_object().context("operations")? {
            let documented: Vec<u16> = op["responses"]
                .as_object()
                .context("responses")?
                .keys()
                .map(|k| k.parse())
                .collect::<Result<_, _>>()?;
            let mut concrete = path
                .replace("{queue_id}", "nothing")
                .replace("{address}", &addr);
            if path == "/v1/deposits" {
                concrete = format!("{concrete}?address={addr}&chain=ETH");
            }
            let mut codes = Vec::new();
            if method == "post" {
                let kind = path.trim_start_matches("/v1/");
                let (bad, body) = api.post(kind, b"{}".to_vec()).await?;
                ensure!(
                    body != json!("not found: try /healthz or /metrics"),
                    "{path} is routed"
                );
                codes.push(bad);
                let (good, _) = api.post(kind, signed(topup(&addr, "USDT"))?).await?;
                codes.push(good);
            } else {
                let (with, body) = api.get(&concrete).await?;
                ensure!(
                    body != json!("not found: try /healthz or /metrics"),
                    "{path} is routed"
                );
                codes.push(with);
                if op.get("security").is_some() {
                    codes.push(api.get_as(&concrete, None).await?.0);
                }
                // The documented required keys of a 200 answer are there.
                if with == 200
                    && let Some(schema) =
                        op["responses"]["200"]["content"]["application/json"]["schema"]["$ref"]
                            .as_str()
                {
                    let name = schema.rsplit('/').next().unwrap_or_default();
                    for key in doc["components"]["schemas"][name]["required"]
                        .as_array()
                        .into_iter()
                        .flatten()
                    {
                        let key = key.as_str().unwrap_or_default();
                        ensure!(
                            body.get(key).is_some(),
                            "{path}: `{key}` missing from {body}"
                        );
                    }
                }
            }
            for code in codes {
                ensure!(
                    documented.contains(&code),
                    "{method} {path} answered {code}, documented {documented:?}"
                );
            }
        }
    }
    daemon.stop().await?;
    w.cleanup().await
}
