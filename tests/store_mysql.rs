//! The daemon with its message store on MariaDB (`mysql_config.msg`, the
//! same database as the wallet store): deposits, a withdrawal, a repeated
//! request and a restart, against real RabbitMQ, MariaDB and anvil.

mod common;

use alloy::primitives::{Address, B256, U256};
use anyhow::{Context, Result};
use common::*;
use m2pool_payment::wallet::Label;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_flow_runs_on_a_message_store_in_mariadb_and_survives_a_restart() -> Result<()> {
    let (db, mysql) = mariadb_database("msgstore").await?;
    let w = World::with("msg-mysql", &[], |c| {
        c["mysql_config"] =
            json!({"wallet": mysql["wallet"].clone(), "msg": mysql["wallet"].clone()});
    })
    .await?;
    assert!(
        w.config()?.msg_mysql.is_some(),
        "the message store is on MariaDB"
    );
    let mut topups = w.replies("topup_resp").await?;
    let mut withdrawals = w.replies("withdraw_resp").await?;
    let hot = w.new_wallet(Label::User).await?;
    w.fund(hot, 100_000_000, ether(1)).await?;
    let daemon = w.start().await?;

    // A deposit: seen, then final.
    let addr = Address::random();
    w.publish("topup", topup(&hex_addr(addr), "USDT")).await?;
    w.wait_watched("USDT", addr, true).await?;
    let (deposit, _) = w.send_usdt(w.user(), addr, 7_250_000).await?;
    let seen = topups.wait("deposit seen", deposit_of(deposit, 2)).await?;
    assert!(seen.raw.contains(r#""amount":7.25,"#), "{}", seen.raw);

    // A withdrawal, and the very same request again: paid once.
    let to = Address::random();
    let body = json!({"queue_id": "m-1", "from_address": hex_addr(hot), "to_address": hex_addr(to),
                      "amount": 3.5, "chain": "ETH", "symbol": "USDT", "timestamp": 1758610297});
    let signed = signed(body)?;
    w.publish_raw("withdraw", &signed).await?;
    let sent = withdrawals.wait("payout sent", payout_of("m-1", 2)).await?;
    w.publish_raw("withdraw", &signed).await?;
    withdrawals
        .wait_count("the repeat answered alike", 2, payout_of("m-1", 2))
        .await?;
    let hash: B256 = sent.v["tx_hash"].as_str().context("tx_hash")?.parse()?;

    // A restart: what is pending is read back from MariaDB.
    daemon.stop().await?;
    let daemon = w.start().await?;
    w.mine(20).await?;
    topups.wait("deposit final", deposit_of(deposit, 1)).await?;
    let done = withdrawals
        .wait("payout final", payout_of("m-1", 1))
        .await?;
    assert_eq!(done.v["tx_hash"], format!("{hash:#x}"));
    assert_eq!(w.usdt_balance(to).await?, U256::from(3_500_000u64));
    assert_eq!(w.nonce(hot).await?, 1, "paid once");

    // The rows are in MariaDB, and the ledger got both movements.
    let store = w.store().await?;
    assert_eq!(store.engine(), m2pool_payment::store::Engine::MySql);
    assert!(store.outbox_bodies("topup_resp").await?.len() >= 2);
    store.close().await;
    eventually("the ledger records the deposit and the payout", || async {
        let wallets = w.wallets().await?;
        let rows = wallets.ledger_of("ETH", hot).await?;
        wallets.close().await;
        Ok(rows.iter().any(|(s, _, k, _)| s == "USDT" && k == "payout"))
    })
    .await?;
    daemon.stop().await?;
    w.cleanup().await?;
    drop_mariadb_database(&db).await
}
