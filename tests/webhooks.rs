//! Signed webhooks against real RabbitMQ, SQLite and anvil, with a
//! receiver in the test: one that fails three calls gets every answer once
//! it recovers, in order; one that never answers ends on the dead list
//! (shown in `/healthz` and metrics) while another receiver's answers keep
//! flowing, and `webhook replay` sends the dead ones again.

mod common;

use alloy::primitives::Address;
use anyhow::{Context, Result, ensure};
use common::api::{Api, api_world};
use common::webhooks::{Call, Mode, Receiver};
use common::*;
use m2pool_payment::wallet::Label;
use serde_json::{Value, json};
use std::process::Command;

/// A world serving the API, with webhooks that retry every 200 ms for
/// `retry_for` seconds and give an attempt `timeout` seconds.
async fn hook_world(
    test: &str,
    retry_for: f64,
    timeout: f64,
) -> Result<(World, Api, tempfile::TempDir)> {
    let hooks = json!({
        "allow_private": true,
        "retry_secs": [0.2],
        "retry_for_secs": retry_for,
        "timeout_secs": timeout,
    });
    api_world(test, hooks).await
}

fn payout(queue_id: &str, from: Address, url: &str) -> Value {
    json!({"queue_id": queue_id, "from_address": hex_addr(from),
           "to_address": hex_addr(Address::random()), "chain": "ETH", "symbol": "USDT",
           "amount": 1.25, "timestamp": 1758610297, "notify_url": url})
}

fn of_queue(queue_id: &'static str) -> impl Fn(&Call) -> bool {
    move |c| c.answer["queue_id"] == queue_id
}

fn statuses(calls: &[Call]) -> Vec<u64> {
    calls
        .iter()
        .filter_map(|c| c.answer["status"].as_u64())
        .collect()
}

/// Runs the binary's `webhook …` with the world's config.
fn webhook_cli(w: &World, args: &[&str]) -> Result<String> {
    let out = Command::new(env!("CARGO_BIN_EXE_m2pool-payment"))
        .arg("--config")
        .arg(w.config_file()?)
        .arg("webhook")
        .args(args)
        .output()?;
    ensure!(
        out.status.success(),
        "webhook {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8(out.stdout)?)
}

#[tokio::test]
async fn a_receiver_failing_three_times_gets_every_answer_in_order() -> Result<()> {
    let (w, api, _dir) = hook_world("hook-retry", 60.0, 2.0).await?;
    let hook = Receiver::start(Mode::FailNext(3)).await?;
    let user = w.new_wallet(Label::User).await?;
    w.fund(user, 100_000_000, ether(1)).await?;
    let mut queue = w.replies("withdraw_resp").await?;
    let daemon = w.start().await?;
    api.wait_up().await?;

    // Sent over RabbitMQ: webhooks serve both ways in.
    w.publish("withdraw", payout("w-hook", user, &hook.url))
        .await?;
    queue.wait("withdraw 2", payout_of("w-hook", 2)).await?;
    w.mine(20).await?;
    let last = queue.wait("withdraw 1", payout_of("w-hook", 1)).await?;

    let got = hook
        .wait_delivered("2 then 1", 2, of_queue("w-hook"))
        .await?;
    assert_eq!(statuses(&got), [2, 1], "in order");
    assert_eq!(got[1].answer, last.v, "the answer as published");
    assert!(got[0].key < got[1].key, "stream positions as keys");
    assert!(got.iter().all(|c| c.event == "withdraw_resp"));
    // Three failed calls, all of the first answer with its key; nothing
    // delivered twice.
    let calls = hook.calls();
    let failed: Vec<&Call> = calls.iter().filter(|c| !c.delivered).collect();
    assert_eq!(failed.len(), 3, "{calls:?}");
    assert!(
        failed
            .iter()
            .all(|c| c.key == got[0].key && c.answer == got[0].answer)
    );
    assert_eq!(calls.len(), 5, "{calls:?}");
    hook.signatures_checked()?;

    // The OpenAPI document names the headers the receiver read.
    let doc: Value = serde_json::from_str(&std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/docs/openapi.json"
    ))?)?;
    let mut documented: Vec<String> = doc["webhooks"]["answer"]["post"]["parameters"]
        .as_array()
        .context("webhook headers")?
        .iter()
        .filter_map(|p| p["name"].as_str().map(str::to_ascii_lowercase))
        .collect();
    documented.sort();
    let mut sent: Vec<String> = [
        m2pool_payment::webhook::EVENT_HEADER,
        m2pool_payment::webhook::IDEMPOTENCY_HEADER,
        m2pool_payment::webhook::SIGNATURE_HEADER,
        m2pool_payment::webhook::TIMESTAMP_HEADER,
    ]
    .iter()
    .map(|h| h.to_ascii_lowercase())
    .collect();
    sent.sort();
    assert_eq!(documented, sent);
    for name in &sent {
        assert!(
            common::webhooks::READ_HEADERS.contains(&name.as_str()),
            "the receiver checks {name}"
        );
    }

    // The stream numbers the same answers: position = key.
    let mut stream = api.stream(Some(0)).await?;
    let pushed = stream
        .wait("withdraw 1 on the stream", |p| {
            p.answer["queue_id"] == "w-hook" && p.answer["status"] == 1
        })
        .await?;
    assert_eq!(pushed.id, got[1].key);

    daemon.stop().await?;
    w.cleanup().await
}

#[tokio::test]
async fn a_receiver_that_never_answers_ends_dead_and_is_replayed() -> Result<()> {
    let (w, api, _dir) = hook_world("hook-dead", 1.0, 0.5).await?;
    let dead_end = Receiver::start(Mode::Hang).await?;
    let good = Receiver::start(Mode::Ok).await?;
    let user = w.new_wallet(Label::User).await?;
    w.fund(user, 100_000_000, ether(1)).await?;
    let daemon = w.start().await?;
    api.wait_up().await?;
    let mut stream = api.stream(Some(0)).await?;

    // A batch payment to the receiver that hangs, a withdrawal to the one
    // that answers.
    let mut pay = payout("p-dead", user, &dead_end.url);
    pay.as_object_mut().context("object")?.remove("to_address");
    pay.as_object_mut().context("object")?.remove("amount");
    pay["transactions"] = json!([
        {"order_id": "o-1", "to_address": hex_addr(Address::random()), "amount": 1},
        {"order_id": "o-2", "to_address": hex_addr(Address::random()), "amount": 2}]);
    let (code, b) = api.post("pay", signed(pay)?).await?;
    ensure!(code == 202, "pay: {code} {b}");
    let (code, b) = api
        .post("withdraw", signed(payout("w-good", user, &good.url))?)
        .await?;
    ensure!(code == 202, "withdraw: {code} {b}");
    for (key, val) in [
        ("order_id", "o-1"),
        ("order_id", "o-2"),
        ("queue_id", "w-good"),
    ] {
        stream
            .wait(val, |p| p.answer[key] == val && p.answer["status"] == 2)
            .await?;
    }
    w.mine(20).await?;

    // The hanging receiver holds up no one.
    let got = good
        .wait_delivered("withdraw 2 and 1", 2, of_queue("w-good"))
        .await?;
    assert_eq!(statuses(&got), [2, 1]);

    // Its four answers die: listed in /healthz, the metrics and the CLI.
    eventually("four dead deliveries in /healthz", || async {
        let (_, h) = api.get_as("/healthz", None).await?;
        Ok(h["webhooks"]["dead"] == 4)
    })
    .await?;
    let (code, h) = api.get_as("/healthz", None).await?;
    ensure!(
        code == 200 && h["status"] == "ok",
        "dead webhooks do not degrade: {code} {h}"
    );
    let warning = h["warnings"][0].as_str().unwrap_or_default();
    assert!(warning.contains("4 webhook deliveries are dead"), "{h}");
    let (_, metrics) = api.get_as("/metrics", None).await?;
    let metrics = metrics.as_str().unwrap_or_default().to_owned();
    assert!(metrics.contains("m2pool_webhooks_dead 4"), "{metrics}");
    let listed = webhook_cli(&w, &["dead"])?;
    assert_eq!(listed.lines().count(), 4, "{listed}");
    assert!(
        listed.lines().all(|l| l.contains("kind=pay_resp")),
        "{listed}"
    );
    ensure!(
        dead_end.delivered().is_empty(),
        "nothing was delivered to the receiver that hangs"
    );

    // Replayed to a receiver that answers now: all four, in order per
    // request (2 before 1 for each transfer, by stream position).
    dead_end.set(Mode::Ok);
    let replayed = webhook_cli(&w, &["replay", "--all"])?;
    assert!(
        replayed.contains("4 webhook deliveries queued again"),
        "{replayed}"
    );
    let got = dead_end
        .wait_delivered("the replay", 4, of_queue("p-dead"))
        .await?;
    let keys: Vec<i64> = got.iter().map(|c| c.key).collect();
    let mut sorted = keys.clone();
    sorted.sort();
    assert_eq!(keys, sorted, "in order");
    for order in ["o-1", "o-2"] {
        let of: Vec<Call> = got
            .iter()
            .filter(|c| c.answer["order_id"] == order)
            .cloned()
            .collect();
        assert_eq!(statuses(&of), [2, 1], "{order}");
    }
    eventually("no dead delivery left", || async {
        let (_, h) = api.get_as("/healthz", None).await?;
        Ok(h["webhooks"]["dead"] == 0)
    })
    .await?;
    dead_end.signatures_checked()?;
    good.signatures_checked()?;

    daemon.stop().await?;
    w.cleanup().await
}
