//! Withdrawals and payments against real RabbitMQ, SQLite, MariaDB and anvil.

mod common;

use alloy::primitives::{Address, B256, I256, U256};
use alloy::providers::Provider;
use anyhow::{Context, Result, ensure};
use common::payout_of as is;
use common::*;
use m2pool_payment::store::PayoutState;
use m2pool_payment::wallet::Label;
use serde_json::{Value, json};
use std::time::Instant;

fn tx_of(r: &Reply) -> Result<B256> {
    r.v["tx_hash"]
        .as_str()
        .context("tx_hash")?
        .parse()
        .context("a hash")
}

/// The USDT payout movements the ledger holds for `address`.
async fn ledger(w: &World, address: Address) -> Result<Vec<(String, I256, String)>> {
    let store = w.wallets().await?;
    let rows = store.ledger_of("ETH", address).await?;
    store.close().await;
    Ok(rows.into_iter().map(|(s, d, k, _)| (s, d, k)).collect())
}

async fn withdraw_pays_and_confirms(w: World) -> Result<()> {
    let mut replies = w.replies("withdraw_resp").await?;
    let user = w.new_wallet(Label::User).await?;
    w.fund(user, 100_000_000, ether(1)).await?;
    let to = Address::random();
    let daemon = w.start().await?;

    w.publish("withdraw", withdraw("w-1", user, to, "50.25")?)
        .await?;
    let sent = replies.wait("status 2", is("w-1", 2)).await?;
    assert!(sent.raw.contains(r#""amount":50.25,"#), "{}", sent.raw);
    assert_eq!(sent.v["from_address"], hex_addr(user));
    assert_eq!(sent.v["to_address"], hex_addr(to));
    assert_eq!(
        (sent.v["chain"].as_str(), sent.v["symbol"].as_str()),
        (Some("ETH"), Some("USDT"))
    );
    let hash = tx_of(&sent)?;
    let receipt = w
        .eth
        .get_transaction_receipt(hash)
        .await?
        .context("mined")?;
    assert!(receipt.status());

    w.mine(20).await?;
    let done = replies.wait("status 1", is("w-1", 1)).await?;
    assert_eq!(tx_of(&done)?, hash);
    assert_eq!(w.usdt_balance(to).await?, U256::from(50_250_000u64));
    assert_eq!(w.usdt_balance(user).await?, U256::from(49_750_000u64));

    // The ledger shows the payout (and the gas it cost), once.
    eventually("the ledger records the payout", || async {
        let rows = ledger(&w, user).await?;
        Ok(rows.contains(&(
            "USDT".into(),
            I256::try_from(-50_250_000i64)?,
            "payout".into(),
        )) && rows
            .iter()
            .any(|(s, d, k)| s == "ETH" && k == "fee" && d.is_negative()))
    })
    .await?;
    assert_eq!(ledger(&w, user).await?.len(), 2);
    let (u, t) = (hex_addr(user), hex_addr(to));
    w.wait_txlog(
        &u,
        &["[WithdrawReq]: ", &format!("-{u}-{t}-ETH-USDT-50.25")],
    )
    .await?;
    w.wait_txlog(
        &u,
        &["[WithdrawResp]: ", &format!("-{u}-{t}-ETH-USDT-50.25")],
    )
    .await?;
    daemon.stop().await?;
    w.cleanup().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn withdraw_pays_and_confirms_with_sqlite_wallets() -> Result<()> {
    withdraw_pays_and_confirms(World::new("withdraw").await?).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn withdraw_pays_and_confirms_with_mariadb_wallets() -> Result<()> {
    let (db, mysql) = mariadb_database("withdraw").await?;
    let w = World::with("withdraw-mariadb", &[], |c| c["mysql_config"] = mysql).await?;
    let result = withdraw_pays_and_confirms(w).await;
    drop_mariadb_database(&db).await?;
    result
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_collection_wallet_pays_when_the_user_wallet_cannot() -> Result<()> {
    let w = World::new("collection").await?;
    let mut replies = w.replies("withdraw_resp").await?;
    let user = w.new_wallet(Label::User).await?;
    let collection = w.new_wallet(Label::Collection).await?;
    w.fund(user, 1_000_000, ether(1)).await?;
    w.fund(collection, 1_000_000_000, ether(1)).await?;
    let to = Address::random();
    let daemon = w.start().await?;

    w.publish("withdraw", withdraw("c-1", user, to, "50.25")?)
        .await?;
    let sent = replies.wait("status 2", is("c-1", 2)).await?;
    assert_eq!(sent.v["from_address"], hex_addr(collection), "{}", sent.raw);
    w.mine(20).await?;
    replies.wait("status 1", is("c-1", 1)).await?;
    assert_eq!(w.usdt_balance(to).await?, U256::from(50_250_000u64));
    assert_eq!(w.usdt_balance(user).await?, U256::from(1_000_000u64));
    assert_eq!(w.nonce(user).await?, 0, "the user wallet sent nothing");
    daemon.stop().await?;
    w.cleanup().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nobody_can_pay_or_no_gas_gets_one_refusal_and_no_transaction() -> Result<()> {
    let w = World::new("refusals").await?;
    let mut replies = w.replies("withdraw_resp").await?;
    let user = w.new_wallet(Label::User).await?;
    let collection = w.new_wallet(Label::Collection).await?;
    let dry = w.new_wallet(Label::User).await?;
    w.fund(user, 1_000_000, ether(1)).await?;
    w.fund(collection, 2_000_000, ether(1)).await?;
    w.fund(dry, 100_000_000, U256::ZERO).await?;
    let daemon = w.start().await?;

    // Neither the user wallet nor the collection wallet holds 50.25 USDT.
    w.publish(
        "withdraw",
        withdraw("r-1", user, Address::random(), "50.25")?,
    )
    .await?;
    let r = replies.wait("refusal", is("r-1", 0)).await?;
    let e = r.v["error"].as_str().unwrap_or_default();
    assert!(e.contains("neither") && e.contains("collection"), "{e}");
    assert_eq!(r.v["tx_hash"], "");
    // A wallet with tokens but no ether for gas.
    w.publish("withdraw", withdraw("r-2", dry, Address::random(), "10")?)
        .await?;
    let r = replies.wait("no gas", is("r-2", 0)).await?;
    assert!(
        r.v["error"].as_str().is_some_and(|e| e.contains("gas")),
        "{}",
        r.raw
    );
    // A wallet whose key the gateway does not hold.
    w.publish(
        "withdraw",
        withdraw("r-3", Address::random(), Address::random(), "1")?,
    )
    .await?;
    let r = replies.wait("no key", is("r-3", 0)).await?;
    assert!(
        r.v["error"].as_str().is_some_and(|e| e.contains("no key")),
        "{}",
        r.raw
    );

    // Later payouts of the same wallets are answered after the refusals, so
    // when they arrive, nothing more can come for r-1 and r-2.
    w.publish(
        "withdraw",
        withdraw("ok-c", collection, Address::random(), "1")?,
    )
    .await?;
    replies.wait("collection probe", is("ok-c", 2)).await?;
    w.fund(dry, 0, ether(1)).await?;
    w.publish("withdraw", withdraw("ok-d", dry, Address::random(), "1")?)
        .await?;
    replies.wait("dry probe", is("ok-d", 2)).await?;
    for q in ["r-1", "r-2", "r-3"] {
        assert_eq!(
            replies.matching(|v| v["queue_id"] == q).len(),
            1,
            "one answer for {q}"
        );
    }
    assert_eq!(w.nonce(user).await?, 0);
    assert!(w.transfers_from(user).await?.is_empty());
    assert_eq!(
        w.transfers_from(collection).await?.len(),
        1,
        "only the probe"
    );
    assert_eq!(w.transfers_from(dry).await?.len(), 1, "only the probe");
    daemon.stop().await?;
    w.cleanup().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_payment_makes_one_transfer_per_item() -> Result<()> {
    let w = World::new("batch").await?;
    let mut replies = w.replies("pay_resp").await?;
    let user = w.new_wallet(Label::User).await?;
    w.fund(user, 100_000_000, ether(1)).await?;
    let daemon = w.start().await?;
    let to: Vec<Address> = (0..3).map(|_| Address::random()).collect();
    let body = json!({"queue_id": "pay-1", "from_address": hex_addr(user), "chain": "ETH", "symbol": "USDT",
        "timestamp": 1758610297, "transactions": [
            {"order_id": "o-1", "to_address": hex_addr(to[0]), "amount": 1.5},
            {"order_id": "o-2", "to_address": hex_addr(to[1]), "amount": 2},
            {"order_id": "o-3", "to_address": hex_addr(to[2]), "amount": 0.000001}]});
    w.publish("pay", body).await?;
    let order = |id: &'static str, status: u64| {
        move |v: &Value| v["order_id"] == id && v["status"] == status && v["queue_id"] == "pay-1"
    };
    let mut hashes = Vec::new();
    for id in ["o-1", "o-2", "o-3"] {
        let r = replies
            .wait(&format!("{id} status 2"), order(id, 2))
            .await?;
        hashes.push(tx_of(&r)?);
    }
    hashes.sort();
    hashes.dedup();
    assert_eq!(hashes.len(), 3, "three transactions");
    w.mine(20).await?;
    for id in ["o-1", "o-2", "o-3"] {
        replies
            .wait(&format!("{id} status 1"), order(id, 1))
            .await?;
    }
    assert_eq!(w.usdt_balance(to[0]).await?, U256::from(1_500_000u64));
    assert_eq!(w.usdt_balance(to[1]).await?, U256::from(2_000_000u64));
    assert_eq!(w.usdt_balance(to[2]).await?, U256::from(1u64));
    assert_eq!(w.transfers_from(user).await?.len(), 3);
    daemon.stop().await?;
    w.cleanup().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_withdrawals_from_one_wallet_use_consecutive_nonces() -> Result<()> {
    const N: usize = 200;
    let w = World::new("burst").await?;
    let mut replies = w.replies("withdraw_resp").await?;
    let user = w.new_wallet(Label::User).await?;
    w.fund(user, 10_000_000_000, ether(10)).await?;
    let to = Address::random();
    // All published at once, before the daemon starts.
    for i in 0..N {
        w.publish("withdraw", withdraw(&format!("b-{i}"), user, to, "1")?)
            .await?;
    }
    let daemon = w.start().await?;
    let started = Instant::now();
    let mut first = None;
    let mut last = started;
    for i in 0..N {
        let r = replies
            .wait(&format!("b-{i} status 2"), is(&format!("b-{i}"), 2))
            .await?;
        first = Some(first.map_or(r.at, |f: Instant| f.min(r.at)));
        last = last.max(r.at);
    }
    let first = first.context("a response")?;
    let span = last.duration_since(first).as_secs_f64();
    eprintln!(
        "{N} withdrawals: start to last status=2 {:.2}s; first to last status=2 {:.3}s ({:.0} payouts/s)",
        last.duration_since(started).as_secs_f64(),
        span,
        (N - 1) as f64 / span.max(1e-9)
    );
    let logs = w.transfers_from(user).await?;
    ensure!(
        logs.len() == N,
        "{} transfers on chain, want {N}",
        logs.len()
    );
    let mut nonces = Vec::with_capacity(N);
    for log in &logs {
        let hash = log.transaction_hash.context("hash")?;
        let tx = w.eth.get_transaction_by_hash(hash).await?.context("tx")?;
        nonces.push(alloy::consensus::Transaction::nonce(&tx));
    }
    nonces.sort_unstable();
    assert_eq!(
        nonces,
        (0..N as u64).collect::<Vec<_>>(),
        "consecutive, none repeated"
    );
    w.mine(20).await?;
    for i in 0..N {
        replies
            .wait(&format!("b-{i} status 1"), is(&format!("b-{i}"), 1))
            .await?;
    }
    assert_eq!(w.usdt_balance(to).await?, U256::from(N as u64 * 1_000_000));
    daemon.stop().await?;
    w.cleanup().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_withdrawal_twice_pays_once() -> Result<()> {
    let w = World::new("twice").await?;
    let mut replies = w.replies("withdraw_resp").await?;
    let user = w.new_wallet(Label::User).await?;
    w.fund(user, 100_000_000, ether(1)).await?;
    let to = Address::random();
    let daemon = w.start().await?;

    let body = withdraw("t-1", user, to, "5")?;
    let bytes = w.publish("withdraw", body.clone()).await?;
    let first = replies.wait("status 2", is("t-1", 2)).await?;
    // The very same bytes (a redelivery), then the same request signed anew.
    w.publish_raw("withdraw", &bytes).await?;
    let mut again = body.clone();
    again["timestamp"] = 1758619999.into();
    w.publish("withdraw", again).await?;
    // The same queue_id asking for something else is refused.
    w.publish("withdraw", withdraw("t-1", user, to, "6")?)
        .await?;
    let conflict = replies.wait("conflict refusal", is("t-1", 0)).await?;
    assert!(
        conflict.v["error"]
            .as_str()
            .is_some_and(|e| e.contains("already used")),
        "{}",
        conflict.raw
    );
    // The redelivery and the repeat each republish the current state, as it
    // was first answered.
    let repeats = replies
        .wait_count("status 2 for each repeat", 3, is("t-1", 2))
        .await?;
    for r in &repeats {
        assert_eq!(r.raw, first.raw, "a repeat answers alike");
    }

    w.mine(20).await?;
    replies.wait("status 1", is("t-1", 1)).await?;
    assert_eq!(
        w.transfers_from(user).await?.len(),
        1,
        "exactly one Transfer on chain"
    );
    assert_eq!(w.usdt_balance(to).await?, U256::from(5_000_000u64));
    daemon.stop().await?;
    w.cleanup().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_after_signing_before_broadcast_pays_exactly_once() -> Result<()> {
    let w = World::new("failpoint").await?;
    let mut replies = w.replies("withdraw_resp").await?;
    let user = w.new_wallet(Label::User).await?;
    w.fund(user, 100_000_000, ether(1)).await?;
    let to = Address::random();

    let mut child = w.spawn_process(&[("M2POOL_FAILPOINT", "after_sign")])?;
    w.publish("withdraw", withdraw("f-1", user, to, "7.5")?)
        .await?;
    let exited = tokio::time::timeout(WAIT, async {
        loop {
            if let Some(status) = child.0.try_wait()? {
                return anyhow::Ok(status);
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    })
    .await
    .context("the daemon did not hit the fail point")??;
    assert!(!exited.success(), "the fail point aborts");
    let store = w.store().await?;
    let p = store.payouts("ETH").await?;
    store.close().await;
    assert_eq!(p.len(), 1);
    assert_eq!(
        p[0].state,
        PayoutState::Signed,
        "signed and stored, not broadcast"
    );
    assert_eq!(w.nonce(user).await?, 0);
    assert!(w.transfers_from(user).await?.is_empty());

    let daemon = w.start().await?;
    let sent = replies.wait("status 2 after restart", is("f-1", 2)).await?;
    assert_eq!(
        Some(tx_of(&sent)?),
        p[0].tx_hash,
        "the same signed bytes were broadcast"
    );
    w.mine(20).await?;
    replies.wait("status 1 after restart", is("f-1", 1)).await?;
    assert_eq!(w.transfers_from(user).await?.len(), 1);
    assert_eq!(w.usdt_balance(to).await?, U256::from(7_500_000u64));
    daemon.stop().await?;
    w.cleanup().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_before_broadcast_stops_the_payout() -> Result<()> {
    // The node cannot be reached at first, so the payout waits, queued.
    let dead = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let w = World::with("cancel-early", &[], |c| {
        c["eth_config"]["rpc_url"] = format!("http://127.0.0.1:{dead}").into();
        c["eth_config"].as_object_mut().map(|o| o.remove("ws_url"));
    })
    .await?;
    let mut replies = w.replies("withdraw_resp").await?;
    let mut removes = w.replies("remove_resp").await?;
    let user = w.new_wallet(Label::User).await?;
    w.fund(user, 100_000_000, ether(1)).await?;
    let daemon = w.start().await?;
    w.publish("withdraw", withdraw("x-1", user, Address::random(), "3")?)
        .await?;
    eventually("the payout is queued", || async {
        // The daemon may still be creating or migrating the store.
        let Ok(store) = w.store().await else {
            return Ok(false);
        };
        let queued = store
            .payouts("ETH")
            .await
            .is_ok_and(|p| p.iter().any(|p| p.queue_id == "x-1"));
        store.close().await;
        Ok(queued)
    })
    .await?;
    let mut remove = topup(&hex_addr(user), "USDT");
    remove["queue_id"] = "x-1".into();
    w.publish("remove", remove.clone()).await?;
    let r = removes
        .wait("remove answer", |v| v["queue_id"] == "x-1")
        .await?;
    assert_eq!(r.v["status"], 1, "{}", r.raw);
    let c = replies.wait("cancelled", is("x-1", 0)).await?;
    assert_eq!(c.v["error"], "cancelled");
    // The same cancel again is answered as the first time.
    w.publish("remove", remove).await?;
    let again = removes
        .wait_count("the repeated cancel's answer", 2, |v| {
            v["queue_id"] == "x-1"
        })
        .await?;
    assert_eq!(again[1].raw, r.raw);
    let c2 = replies
        .wait_count("cancelled, again", 2, is("x-1", 0))
        .await?;
    assert_eq!(c2[1].raw, c.raw);
    daemon.stop().await?;

    // With the node back, the cancelled payout never moves; a later one does.
    let mut w = w;
    w.config_json["eth_config"]["rpc_url"] = w.anvil.http().into();
    let daemon = w.start().await?;
    w.publish("withdraw", withdraw("x-2", user, Address::random(), "4")?)
        .await?;
    replies.wait("the later payout", is("x-2", 2)).await?;
    assert_eq!(
        w.transfers_from(user).await?.len(),
        1,
        "only the later payout"
    );
    daemon.stop().await?;
    w.cleanup().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_after_broadcast_is_refused() -> Result<()> {
    let w = World::new("cancel-late").await?;
    let mut replies = w.replies("withdraw_resp").await?;
    let mut removes = w.replies("remove_resp").await?;
    let user = w.new_wallet(Label::User).await?;
    w.fund(user, 100_000_000, ether(1)).await?;
    let daemon = w.start().await?;
    w.publish("withdraw", withdraw("y-1", user, Address::random(), "3")?)
        .await?;
    replies.wait("status 2", is("y-1", 2)).await?;
    let mut remove = topup(&hex_addr(user), "USDT");
    remove["queue_id"] = "y-1".into();
    w.publish("remove", remove).await?;
    let r = removes
        .wait("remove answer", |v| v["queue_id"] == "y-1")
        .await?;
    assert_eq!(r.v["status"], 0, "{}", r.raw);
    assert!(
        r.v["error"]
            .as_str()
            .is_some_and(|e| e.contains("already signed or broadcast")),
        "{}",
        r.raw
    );
    // Unknown queue_id: refused too.
    let mut remove = topup(&hex_addr(user), "USDT");
    remove["queue_id"] = "nope".into();
    w.publish("remove", remove).await?;
    let r = removes
        .wait("unknown queue_id", |v| v["queue_id"] == "nope")
        .await?;
    assert_eq!(r.v["status"], 0);
    w.mine(20).await?;
    replies.wait("status 1", is("y-1", 1)).await?;
    daemon.stop().await?;
    w.cleanup().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ether_a_contract_refuses_is_answered_and_the_wallet_goes_on() -> Result<()> {
    let w = World::new("refused-ether").await?;
    let mut replies = w.replies("withdraw_resp").await?;
    let user = w.new_wallet(Label::User).await?;
    w.fund(user, 0, ether(2)).await?;
    let daemon = w.start().await?;
    let eth = |queue_id: &str, to: Address| -> Result<Value> {
        let mut v = withdraw(queue_id, user, to, "0.5")?;
        v["symbol"] = "ETH".into();
        Ok(v)
    };
    // The test token has no way to take ether: every transfer to it reverts.
    w.publish("withdraw", eth("e-1", w.token)?).await?;
    let r = replies.wait("refusal", is("e-1", 0)).await?;
    assert!(
        r.v["error"]
            .as_str()
            .is_some_and(|e| e.contains("does not accept")),
        "{}",
        r.raw
    );
    // The wallet is not stuck behind it.
    let to = Address::random();
    w.publish("withdraw", eth("e-2", to)?).await?;
    replies.wait("the next payout", is("e-2", 2)).await?;
    assert_eq!(w.nonce(user).await?, 1, "only the second was sent");
    daemon.stop().await?;
    w.cleanup().await
}

/// The private key of anvil's third default account (a well-known test key).
const ANVIL_KEY_2: &str = "5de4111afa1a4b94908f83103eb1f1706367c2e68ca870fc3fb9a804cdab365a";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nonces_used_by_another_sender_are_skipped() -> Result<()> {
    let w = World::new("foreign-nonce").await?;
    let mut replies = w.replies("withdraw_resp").await?;
    // A hot wallet whose key someone else holds too (an operator's sweep).
    let store = w.wallets().await?;
    let kek = m2pool_payment::wallet::Kek::from_material(WALLET_KEY.as_bytes());
    let shared =
        m2pool_payment::wallet::cli::import(&store, &kek, "ETH", ANVIL_KEY_2, Label::User).await?;
    store.close().await;
    assert_eq!(shared, w.accounts[2]);
    w.fund(shared, 100_000_000, U256::ZERO).await?;
    let daemon = w.start().await?;

    w.publish("withdraw", withdraw("n-1", shared, Address::random(), "1")?)
        .await?;
    replies.wait("first payout", is("n-1", 2)).await?;
    // Nonce 1 goes to a transaction the gateway did not sign.
    w.send_eth(shared, Address::random(), U256::from(1u64))
        .await?;
    assert_eq!(w.nonce(shared).await?, 2);

    w.publish("withdraw", withdraw("n-2", shared, Address::random(), "2")?)
        .await?;
    let sent = replies.wait("second payout", is("n-2", 2)).await?;
    let tx = w
        .eth
        .get_transaction_by_hash(tx_of(&sent)?)
        .await?
        .context("the payout's transaction")?;
    assert_eq!(alloy::consensus::Transaction::nonce(&tx), 2);
    w.mine(20).await?;
    replies.wait("first final", is("n-1", 1)).await?;
    replies.wait("second final", is("n-2", 1)).await?;
    daemon.stop().await?;
    w.cleanup().await
}

/// The daemon killed after the node accepted a payout and before it recorded
/// that (a test-only fail point), then started again: it sends the same bytes
/// again, the node answers that it has them ("transaction already imported"
/// while the payout waits in its pool, "nonce too low" once it is mined),
/// and the payout is announced (status 2) at once, without waiting for any
/// block; one transfer in all.
async fn killed_after_broadcast(name: &str, mining: bool) -> Result<()> {
    let w = World::new(name).await?;
    let mut replies = w.replies("withdraw_resp").await?;
    let user = w.new_wallet(Label::User).await?;
    w.fund(user, 100_000_000, ether(1)).await?;
    if !mining {
        let _: Value = w
            .eth
            .raw_request("evm_setAutomine".into(), (false,))
            .await?;
    }
    let to = Address::random();
    let mut child = w.spawn_process(&[("M2POOL_FAILPOINT", "after_broadcast")])?;
    w.publish("withdraw", withdraw("k-1", user, to, "2.5")?)
        .await?;
    tokio::time::timeout(WAIT, async {
        while child.0.try_wait()?.is_none() {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        anyhow::Ok(())
    })
    .await
    .context("the daemon did not hit the fail point")??;
    let store = w.store().await?;
    let p = store.payouts("ETH").await?;
    store.close().await;
    assert_eq!(p.len(), 1);
    assert_eq!(p[0].state, PayoutState::Signed, "broadcast, not recorded");
    let hash = p[0].tx_hash.context("the signed transaction")?;
    let receipt = w.eth.get_transaction_receipt(hash).await?;
    assert_eq!(receipt.is_some(), mining, "mined only with automine");
    assert!(
        w.eth.get_transaction_by_hash(hash).await?.is_some(),
        "the node has it"
    );

    let head = w.head().await?;
    let daemon = w.start().await?;
    let sent = replies.wait("status 2 after restart", is("k-1", 2)).await?;
    assert_eq!(tx_of(&sent)?, hash, "the same bytes");
    assert_eq!(w.head().await?, head, "announced without a new block");
    if !mining {
        let _: Value = w.eth.raw_request("evm_setAutomine".into(), (true,)).await?;
    }
    w.mine(21).await?;
    replies.wait("status 1", is("k-1", 1)).await?;
    assert_eq!(w.transfers_from(user).await?.len(), 1);
    assert_eq!(w.usdt_balance(to).await?, U256::from(2_500_000u64));
    daemon.stop().await?;
    w.cleanup().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_after_broadcast_while_in_the_pool_is_announced_on_restart() -> Result<()> {
    killed_after_broadcast("after-broadcast-pool", false).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_after_broadcast_once_mined_is_announced_on_restart() -> Result<()> {
    killed_after_broadcast("after-broadcast-mined", true).await
}

/// Shutdown while a batch is half signed: the actor is retrying the node for
/// the second payout of a batch (its recipient's code cannot be read) when
/// SIGTERM comes, with a second batch waiting behind it. What was signed is
/// kept, no further batch is taken, and after a restart every payout is mined
/// with the wallet's nonces gap-free. (Before: the signed part of the batch
/// was dropped with its nonce taken, and about one run in two the actor took
/// the waiting batch after the shutdown and signed it above the hole, so that
/// nothing of that wallet was ever mined again.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_in_the_middle_of_a_batch_leaves_no_nonce_gap() -> Result<()> {
    let mut w = World::new("shutdown-mid-batch").await?;
    let mut replies = w.replies("pay_resp").await?;
    let user = w.new_wallet(Label::User).await?;
    w.fund(user, 0, ether(1)).await?;
    let stuck = Address::random();
    let proxy =
        rpc_proxy::RpcProxy::start(w.anvil.http(), Some(rpc_proxy::Refuse::CodeOf(stuck))).await?;
    let direct = w.config_json["eth_config"]["rpc_url"].clone();
    w.config_json["eth_config"]["rpc_url"] = proxy.url().into();
    let pay = |queue_id: &str, to: &[Address]| {
        let items: Vec<Value> = to
            .iter()
            .enumerate()
            .map(|(i, a)| json!({"order_id": format!("o-{}", i + 1), "to_address": hex_addr(*a), "amount": 0.01}))
            .collect();
        json!({"queue_id": queue_id, "from_address": hex_addr(user), "chain": "ETH", "symbol": "ETH",
            "timestamp": 1758610297, "transactions": items})
    };
    // The actor takes what has reached it: the first item alone, then the
    // rest, whose last one it cannot check.
    let first = [
        Address::random(),
        Address::random(),
        Address::random(),
        stuck,
    ];
    let second = [Address::random(), Address::random()];
    let daemon = w.start().await?;
    w.publish("pay", pay("mid-1", &first)).await?;
    eventually(
        "the actor retries the node in the middle of the batch",
        || async { Ok(proxy.code_refused() >= 2) },
    )
    .await?;
    w.publish("pay", pay("mid-2", &second)).await?;
    eventually("the second batch is queued", || async {
        let store = w.store().await?;
        let n = store.payouts("ETH").await?.len();
        store.close().await;
        Ok(n == 6)
    })
    .await?;
    daemon.stop().await?;

    w.config_json["eth_config"]["rpc_url"] = direct;
    let daemon = w.start().await?;
    let order = |q: &'static str, o: &'static str, status: u64| {
        move |v: &Value| v["queue_id"] == q && v["order_id"] == o && v["status"] == status
    };
    let all = [
        ("mid-1", "o-1"),
        ("mid-1", "o-2"),
        ("mid-2", "o-1"),
        ("mid-2", "o-2"),
    ];
    for (q, o) in all {
        replies
            .wait(&format!("{q}/{o} sent"), order(q, o, 2))
            .await?;
    }
    w.mine(20).await?;
    for (q, o) in all {
        replies
            .wait(&format!("{q}/{o} final"), order(q, o, 1))
            .await?;
    }
    assert_eq!(
        w.nonce(user).await?,
        6,
        "six transactions, nonces 0 to 5, all mined"
    );
    for to in first.iter().chain(&second) {
        let got = w.eth.get_balance(*to).await?;
        assert_eq!(got, U256::from(10_000_000_000_000_000u64), "paid once");
    }
    daemon.stop().await?;
    w.cleanup().await
}

/// A forged batch of 1,000 empty transfers whose strings are long: each of
/// the 1,000 refusals (status 3) echoes only short fields, so one request
/// cannot make replies hundreds of times its own size; an id no valid request
/// has (over 256 characters) is not echoed at all, and the daemon goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_echo_short_fields_only() -> Result<()> {
    let w = World::new("echo-bound").await?;
    let mut replies = w.replies("pay_resp").await?;
    let user = w.new_wallet(Label::User).await?;
    w.fund(user, 100_000_000, ether(1)).await?;
    let daemon = w.start().await?;
    // Under the 1 MiB body limit: 60 KB of strings, 1,000 amounts of 300 digits.
    let long = "x".repeat(20_000);
    let digits: Value = serde_json::from_str(&"9".repeat(300))?;
    let forged = |queue_id: &str| {
        let items: Vec<Value> = (0..1000)
            .map(|_| json!({"amount": digits.clone()}))
            .collect();
        json!({"queue_id": queue_id, "chain": long, "symbol": long, "from_address": long,
               "timestamp": 1, "sign": "00", "transactions": items})
    };
    let echoed = "q".repeat(250);
    w.publish_raw("pay", &serde_json::to_vec(&forged(&echoed))?)
        .await?;
    w.publish_raw("pay", &serde_json::to_vec(&forged(&"z".repeat(300)))?)
        .await?;
    let refused = replies
        .wait_count("status 3 for each transfer", 1000, |v| {
            v["queue_id"] == echoed.as_str() && v["status"] == 3
        })
        .await?;
    let longest = refused.iter().map(|r| r.raw.len()).max().unwrap_or(0);
    assert!(longest < 1_000, "a refusal of {longest} bytes");
    assert_eq!(refused[0].v["chain"], "", "too long to echo");

    // The daemon still pays.
    w.publish("pay", json!({"queue_id": "after", "from_address": hex_addr(user), "chain": "ETH",
        "symbol": "USDT", "timestamp": 1758610297,
        "transactions": [{"order_id": "o-1", "to_address": hex_addr(Address::random()), "amount": 1}]}))
    .await?;
    replies
        .wait("the next payment", |v| {
            v["queue_id"] == "after" && v["status"] == 2
        })
        .await?;
    assert!(
        replies
            .matching(|v| v["queue_id"].as_str().is_some_and(|q| q.starts_with('z')))
            .is_empty(),
        "an id over 256 characters is not echoed"
    );
    daemon.stop().await?;
    w.cleanup().await
}
