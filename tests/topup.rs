//! The deposit (topup) and remove flows against real RabbitMQ, SQLite and anvil.

mod common;

use alloy::primitives::{Address, B256, U256};
use anyhow::Result;
use common::*;
use serde_json::{Value, json};
use std::time::Instant;

fn tx_is(tx: B256, status: u64) -> impl Fn(&Value) -> bool {
    let hash = format!("{tx:#x}");
    move |v| v["tx_hash"] == hash && v["status"] == status
}

fn about(addr: Address) -> impl Fn(&Value) -> bool {
    let a = hex_addr(addr);
    move |v| v["address"] == a
}

/// Responses with `status` for `tx` in the daemon's outbox, sent or not.
async fn outbox_count(w: &World, tx: &B256, status: u64) -> Result<usize> {
    let store = w.store().await?;
    let hash = format!("{tx:#x}");
    let n = store
        .outbox_bodies("topup_resp")
        .await?
        .iter()
        .filter_map(|b| serde_json::from_slice::<Value>(b).ok())
        .filter(|v| v["tx_hash"] == hash && v["status"] == status)
        .count();
    store.close().await;
    Ok(n)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usdt_and_eth_deposits_get_pending_then_final() -> Result<()> {
    let w = World::new("deposit").await?;
    let mut replies = w.replies("topup_resp").await?;
    let daemon = w.start().await?;
    let probe = Probe::new(&w).await?;

    // The address arrives in upper case; responses write it lower case.
    let addr = Address::random();
    let upper = format!("0x{}", hex::encode_upper(addr));
    w.publish("topup", topup(&upper, "USDT")).await?;
    w.publish("topup", topup(&upper, "ETH")).await?;
    w.wait_watched("USDT", addr, true).await?;
    w.wait_watched("ETH", addr, true).await?;

    let (usdt_tx, usdt_block) = w.send_usdt(w.user(), addr, 100_500_000).await?;
    let mined = Instant::now();
    let (eth_tx, eth_block) = w
        .send_eth(w.user(), addr, U256::from(250_000_000_000_000_000u64))
        .await?;

    let p = replies.wait("USDT status 2", tx_is(usdt_tx, 2)).await?;
    eprintln!(
        "deposit latency, receipt to status=2 received: {:?}",
        p.at - mined
    );
    assert_eq!(p.v["address"], hex_addr(addr));
    assert_eq!(
        (p.v["chain"].as_str(), p.v["symbol"].as_str()),
        (Some("ETH"), Some("USDT"))
    );
    assert!(
        p.raw.contains(r#""amount":100.5,"#),
        "exact amount text: {}",
        p.raw
    );
    assert_eq!(p.v["from_address"], hex_addr(w.user()));
    assert_eq!(p.v["block_height"], usdt_block);
    let e = replies.wait("ETH status 2", tx_is(eth_tx, 2)).await?;
    assert_eq!(e.v["symbol"], "ETH");
    assert!(
        e.raw.contains(r#""amount":0.25,"#),
        "exact amount text: {}",
        e.raw
    );
    assert_eq!(e.v["block_height"], eth_block);

    // One block short of confirm_height (20): not final yet. The probe's
    // `2` is written in the transaction that applied that block, so the store
    // shows everything that block decided.
    let head = w.head().await?;
    w.mine(usdt_block + 19 - head - 1).await?;
    let probe_block = probe.sync(&w, &mut replies).await?;
    assert_eq!(probe_block, usdt_block + 19);
    assert_eq!(
        outbox_count(&w, &usdt_tx, 1).await?,
        0,
        "final one block early"
    );
    assert_eq!(outbox_count(&w, &usdt_tx, 2).await?, 1);

    // At usdt_block + 20 the USDT deposit is final; the ETH one a block later.
    w.mine(1).await?;
    let f = replies.wait("USDT status 1", tx_is(usdt_tx, 1)).await?;
    assert!(f.raw.contains(r#""amount":100.5,"#), "{}", f.raw);
    assert_eq!(f.v["block_height"], usdt_block);
    assert!(f.v.get("error").is_none(), "{}", f.raw);
    w.mine(1).await?;
    replies.wait("ETH status 1", tx_is(eth_tx, 1)).await?;

    // Exactly two responses per deposit, in order, even after more blocks.
    w.mine(30).await?;
    probe.sync(&w, &mut replies).await?;
    for tx in [usdt_tx, eth_tx] {
        let hash = format!("{tx:#x}");
        let all: Vec<u64> = replies
            .matching(|v| v["tx_hash"] == hash)
            .iter()
            .filter_map(|r| r.v["status"].as_u64())
            .collect();
        assert_eq!(all, vec![2, 1], "responses for {hash}");
    }
    // The Go-style transaction logs: the request and both responses, exact.
    let a = hex_addr(addr);
    w.wait_txlog(&a, &["[TopupReq]: ", &format!("--{a}-ETH-USDT-0")])
        .await?;
    let from = hex_addr(w.user());
    w.wait_txlog(
        &a,
        &["[TopupResp]: ", &format!("-{from}-{a}-ETH-USDT-100.5")],
    )
    .await?;
    w.wait_txlog(&a, &["[TopupResp]: ", &format!("-{from}-{a}-ETH-ETH-0.25")])
        .await?;
    w.wait_txlog(
        "ethnode",
        &["[DepositConfirmed]: ", &format!("-{a}-ETH-USDT-100.5")],
    )
    .await?;

    daemon.stop().await?;
    w.cleanup().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transfer_nobody_watches_produces_nothing() -> Result<()> {
    let w = World::new("unwatched").await?;
    let mut replies = w.replies("topup_resp").await?;
    let daemon = w.start().await?;
    let probe = Probe::new(&w).await?;
    let stranger = Address::random();
    w.send_usdt(w.user(), stranger, 5_000_000).await?;
    w.send_eth(w.user(), stranger, U256::from(10u64).pow(U256::from(18u64)))
        .await?;
    probe.sync(&w, &mut replies).await?;
    w.mine(25).await?;
    probe.sync(&w, &mut replies).await?;
    assert!(replies.matching(about(stranger)).is_empty());
    daemon.stop().await?;
    w.cleanup().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deposit_made_while_the_daemon_is_down_is_reported() -> Result<()> {
    let w = World::new("downtime").await?;
    let mut replies = w.replies("topup_resp").await?;
    let daemon = w.start().await?;
    let addr = Address::random();
    w.publish("topup", topup(&hex_addr(addr), "USDT")).await?;
    w.wait_watched("USDT", addr, true).await?;
    daemon.stop().await?;

    w.mine(3).await?;
    let (tx, block) = w.send_usdt(w.user(), addr, 42_000_000).await?;
    w.mine(3).await?;

    let daemon = w.start().await?;
    let p = replies.wait("status 2 after restart", tx_is(tx, 2)).await?;
    assert_eq!(p.v["block_height"], block);
    assert!(p.raw.contains(r#""amount":42,"#), "{}", p.raw);
    w.mine(20).await?;
    replies.wait("status 1 after restart", tx_is(tx, 1)).await?;
    daemon.stop().await?;
    w.cleanup().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_signatures_and_malformed_bodies_are_answered_and_survived() -> Result<()> {
    let w = World::new("badinput").await?;
    let mut replies = w.replies("topup_resp").await?;
    let mut removes = w.replies("remove_resp").await?;
    let daemon = w.start().await?;

    // Wrong signature: status 3, and nothing is watched.
    let forged = Address::random();
    let mut body = topup(&hex_addr(forged), "USDT");
    body["sign"] = "00".repeat(32).into();
    w.publish_raw("topup", &serde_json::to_vec(&body)?).await?;
    let r = replies
        .wait("status 3", |v| v["address"] == hex_addr(forged))
        .await?;
    assert_eq!(r.v["status"], 3);
    assert!(!w.store().await?.is_watched("ETH", "USDT", forged).await?);

    // Malformed bodies: no panic, no stop; addressable ones get status 0.
    // (The deep one overflowed the stack of the signature check.)
    let deep = format!(
        r#"{{"address":"{}","sign":"00","a":{}1{}}}"#,
        hex_addr(Address::random()),
        "[".repeat(100_000),
        "]".repeat(100_000)
    );
    for raw in [
        &b"not json at all"[..],
        b"",
        b"[1,2,3]",
        b"{\"chain\":",
        b"\xff\xfe\x00garbage",
        b"{\"address\": 12}",
        deep.as_bytes(),
    ] {
        w.publish_raw("topup", raw).await?;
    }
    let odd = Address::random();
    let cases = [
        (
            json!({"chain": "ETH", "symbol": "USDT", "address": hex_addr(odd)}),
            "timestamp",
        ),
        (
            json!({"chain": "BTC", "symbol": "USDT", "address": hex_addr(odd), "timestamp": 1}),
            "unknown chain",
        ),
        (
            json!({"chain": "ETH", "symbol": "DOGE", "address": hex_addr(odd), "timestamp": 1}),
            "unknown symbol",
        ),
        (
            json!({"chain": "ETH", "symbol": "USDT", "address": "0x1234", "timestamp": 1}),
            "not a valid address",
        ),
        (
            json!({"chain": "ETH", "symbol": 7, "address": hex_addr(odd), "timestamp": 1}),
            "must be a string",
        ),
    ];
    for (body, _) in &cases {
        w.publish("topup", body.clone()).await?;
    }
    for (body, want) in &cases {
        let address = body["address"].clone();
        let want = want.to_string();
        let r = replies
            .wait(&format!("status 0 mentioning {want}"), |v| {
                v["address"] == address
                    && v["status"] == 0
                    && v["error"].as_str().is_some_and(|e| e.contains(&want))
            })
            .await?;
        assert_eq!(r.v["tx_hash"], "");
    }
    // A remove with a bad signature answers on the remove queue.
    let mut rm = topup(&hex_addr(odd), "USDT");
    rm["sign"] = "zz".into();
    w.publish_raw("remove", &serde_json::to_vec(&rm)?).await?;
    let r = removes
        .wait("remove status 3", |v| v["address"] == hex_addr(odd))
        .await?;
    assert_eq!(r.v["status"], 3);

    // Later good messages are still served.
    let good = Address::random();
    w.publish("topup", topup(&hex_addr(good), "USDT")).await?;
    w.wait_watched("USDT", good, true).await?;
    let (tx, _) = w.send_usdt(w.user(), good, 1_000_000).await?;
    replies
        .wait("status 2 after bad input", tx_is(tx, 2))
        .await?;

    daemon.stop().await?;
    w.cleanup().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remove_stops_watching() -> Result<()> {
    let w = World::new("remove").await?;
    let mut replies = w.replies("topup_resp").await?;
    let mut removes = w.replies("remove_resp").await?;
    let daemon = w.start().await?;
    let probe = Probe::new(&w).await?;

    let addr = Address::random();
    w.publish("topup", topup(&hex_addr(addr), "USDT")).await?;
    w.wait_watched("USDT", addr, true).await?;
    w.publish("remove", topup(&hex_addr(addr), "USDT")).await?;
    let r = removes.wait("remove status 1", about(addr)).await?;
    assert_eq!(r.v["status"], 1, "{}", r.raw);
    assert_eq!(r.v["symbol"], "USDT");
    assert!(r.v.get("error").is_none());

    w.send_usdt(w.user(), addr, 3_000_000).await?;
    probe.sync(&w, &mut replies).await?;
    assert!(
        replies.matching(about(addr)).is_empty(),
        "a removed address was reported"
    );

    // Removing what is not watched is refused in plain words.
    let other = Address::random();
    w.publish("remove", topup(&hex_addr(other), "ETH")).await?;
    let r = removes.wait("remove status 0", about(other)).await?;
    assert_eq!(r.v["status"], 0);
    assert!(
        r.v["error"]
            .as_str()
            .is_some_and(|e| e.contains("not watched")),
        "{}",
        r.raw
    );

    // After a restart the watch log is replayed in order: the removed
    // address stays removed, one still watched is reported.
    let kept = Address::random();
    w.publish("topup", topup(&hex_addr(kept), "USDT")).await?;
    w.wait_watched("USDT", kept, true).await?;
    daemon.stop().await?;
    let daemon = w.start().await?;
    w.send_usdt(w.user(), addr, 4_000_000).await?;
    w.send_usdt(w.user(), kept, 5_000_000).await?;
    replies
        .wait("the kept address reported after a restart", about(kept))
        .await?;
    probe.sync(&w, &mut replies).await?;
    assert!(
        replies.matching(about(addr)).is_empty(),
        "a removed address was reported after a restart"
    );

    daemon.stop().await?;
    w.cleanup().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeated_request_moves_nothing_and_is_answered_alike() -> Result<()> {
    let w = World::new("repeat").await?;
    let mut replies = w.replies("topup_resp").await?;
    let mut removes = w.replies("remove_resp").await?;
    let daemon = w.start().await?;
    let probe = Probe::new(&w).await?;
    let addr = Address::random();
    let watch = w.publish("topup", topup(&hex_addr(addr), "USDT")).await?;
    w.wait_watched("USDT", addr, true).await?;

    // The very same remove body twice (a broker redelivery looks like this,
    // and so does a business system sending it again): two identical answers.
    let body = signed(topup(&hex_addr(addr), "USDT"))?;
    w.publish_raw("remove", &body).await?;
    w.publish_raw("remove", &body).await?;
    let answers = removes
        .wait_count("for both removes", 2, about(addr))
        .await?;
    assert_eq!(answers[0].v["status"], 1, "{}", answers[0].raw);
    assert_eq!(answers[0].raw, answers[1].raw, "repeats answer alike");
    w.send_usdt(w.user(), addr, 2_000_000).await?;
    probe.sync(&w, &mut replies).await?;
    assert!(
        replies.matching(about(addr)).is_empty(),
        "removed, yet reported"
    );

    // The very same topup body as the first one (a redelivery of it, after
    // the remove was applied) moves nothing: the remove stands.
    w.publish_raw("topup", &watch).await?;
    wait_inbox(&w, &watch, 2).await?;
    assert!(!w.store().await?.is_watched("ETH", "USDT", addr).await?);
    w.send_usdt(w.user(), addr, 2_500_000).await?;
    probe.sync(&w, &mut replies).await?;
    assert!(
        replies.matching(about(addr)).is_empty(),
        "a redelivered topup undid the remove"
    );

    // A new topup (another timestamp) watches it again; the old remove's
    // body again then moves nothing either, and is answered as before.
    let mut again = topup(&hex_addr(addr), "USDT");
    again["timestamp"] = 1758610298.into();
    w.publish("topup", again).await?;
    w.wait_watched("USDT", addr, true).await?;
    w.publish_raw("remove", &body).await?;
    let answers = removes
        .wait_count("for the third remove", 3, about(addr))
        .await?;
    assert_eq!(answers[2].raw, answers[0].raw, "answered alike");
    let (tx, _) = w.send_usdt(w.user(), addr, 3_000_000).await?;
    replies
        .wait("status 2: still watched", tx_is(tx, 2))
        .await?;

    // After a restart too: removed again, the first topup's body again
    // changes nothing.
    daemon.stop().await?;
    let daemon = w.start().await?;
    let mut stop = topup(&hex_addr(addr), "USDT");
    stop["timestamp"] = 1758610299.into();
    w.publish("remove", stop).await?;
    w.wait_watched("USDT", addr, false).await?;
    w.publish_raw("topup", &watch).await?;
    wait_inbox(&w, &watch, 3).await?;
    assert!(!w.store().await?.is_watched("ETH", "USDT", addr).await?);

    daemon.stop().await?;
    w.cleanup().await
}

/// Waits until the inbox holds `body` (a topup) `n` times.
async fn wait_inbox(w: &World, body: &[u8], n: i64) -> Result<()> {
    let path = w.dir.path().join("msg.db");
    eventually(&format!("{n} inbox rows of the topup"), || async {
        let inbox =
            sqlx::SqlitePool::connect(&format!("sqlite://{}?mode=ro", path.display())).await?;
        let got: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM inbox WHERE kind = 'topup' AND body = ?")
                .bind(body)
                .fetch_one(&inbox)
                .await?;
        inbox.close().await;
        Ok(got == n)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_topup_queued_while_the_daemon_is_down_sees_its_deposit() -> Result<()> {
    let w = World::new("backlog").await?;
    let mut replies = w.replies("topup_resp").await?;
    let daemon = w.start().await?;
    Probe::new(&w).await?;
    daemon.stop().await?;

    // While the daemon is down: a backlog of topups, the one that matters
    // last, then its deposit and a few blocks. At the next start the watcher
    // must not read that block before the topup is applied.
    for _ in 0..2_000 {
        w.publish("topup", topup(&hex_addr(Address::random()), "ETH"))
            .await?;
    }
    let addr = Address::random();
    w.publish("topup", topup(&hex_addr(addr), "USDT")).await?;
    let (tx, block) = w.send_usdt(w.user(), addr, 11_000_000).await?;
    w.mine(3).await?;

    let daemon = w.start().await?;
    let p = replies
        .wait("status 2 for the deposit behind the backlog", tx_is(tx, 2))
        .await?;
    assert_eq!(p.v["block_height"], block);
    daemon.stop().await?;
    w.cleanup().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_declares_its_topology_and_names_a_conflicting_exchange() -> Result<()> {
    use lapin::options::{ExchangeDeclareOptions, ExchangeDeleteOptions, QueueDeclareOptions};
    let w = World::new("topology").await?;
    // Nothing declared: the world had declared it for its own use.
    w.delete_topology().await?;
    let exchange = w.config_json["rmq_config"]["topup"]["exchange"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    // The broker already holds that exchange with another type.
    let ch = w.amqp.create_channel().await?;
    ch.exchange_declare(
        exchange.as_str().into(),
        lapin::ExchangeKind::Fanout,
        ExchangeDeclareOptions {
            durable: true,
            ..ExchangeDeclareOptions::default()
        },
        lapin::types::FieldTable::default(),
    )
    .await?;
    let refused = w
        .start()
        .await?
        .exited()
        .await
        .expect_err("the daemon must refuse a conflicting exchange");
    let text = format!("{refused:#}");
    assert!(
        text.contains(&format!("exchange `{exchange}`")) && text.contains("other settings"),
        "plain words naming the exchange: {text}"
    );

    // Without the conflict the daemon declares every queue and binding itself.
    ch.exchange_delete(exchange.as_str().into(), ExchangeDeleteOptions::default())
        .await?;
    let daemon = w.start().await?;
    let queues: Vec<String> = w.config_json["rmq_config"]
        .as_object()
        .map(|o| {
            o.values()
                .filter_map(|e| e["queue"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    assert_eq!(queues.len(), 8);
    for q in &queues {
        eventually(&format!("queue {q} declared by the daemon"), || async {
            let probe = w.amqp.create_channel().await?;
            let found = probe
                .queue_declare(
                    q.as_str().into(),
                    QueueDeclareOptions {
                        passive: true,
                        ..QueueDeclareOptions::default()
                    },
                    lapin::types::FieldTable::default(),
                )
                .await
                .is_ok();
            Ok(found)
        })
        .await?;
    }
    // And bound: a request reaches it, and its answer reaches the response queue.
    let mut replies = w.replies("topup_resp").await?;
    let addr = Address::random();
    w.publish("topup", topup(&hex_addr(addr), "DOGE")).await?;
    let r = replies.wait("the refusal", about(addr)).await?;
    assert_eq!(r.v["status"], 0);
    daemon.stop().await?;
    w.cleanup().await
}
