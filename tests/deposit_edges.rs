//! Deposits at the edges: transfers that are no deposits, amounts a float
//! would round, a token taken out of the config, and `confirm_height`
//! changed between runs. Against real RabbitMQ, SQLite and anvil.

mod common;

use alloy::primitives::{Address, B256, U256};
use anyhow::Result;
use common::payout_of as is;
use common::*;
use serde_json::Value;

fn tx_is(tx: B256, status: u64) -> impl Fn(&Value) -> bool {
    let hash = format!("{tx:#x}");
    move |v| v["tx_hash"] == hash && v["status"] == status
}

fn statuses(replies: &Replies, tx: B256) -> Vec<u64> {
    let hash = format!("{tx:#x}");
    replies
        .matching(|v| v["tx_hash"] == hash)
        .iter()
        .filter_map(|r| r.v["status"].as_u64())
        .collect()
}

fn about(addr: Address) -> impl Fn(&Value) -> bool {
    let a = hex_addr(addr);
    move |v| v["address"] == a
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zero_value_transfers_are_not_deposits() -> Result<()> {
    let w = World::new("zero-value").await?;
    let mut replies = w.replies("topup_resp").await?;
    let daemon = w.start().await?;
    let probe = Probe::new(&w).await?;
    let addr = Address::random();
    for symbol in ["USDT", "ETH"] {
        w.publish("topup", topup(&hex_addr(addr), symbol)).await?;
        w.wait_watched(symbol, addr, true).await?;
    }
    // Address-poisoning spam: a Transfer of 0 (and a plain 0-ether send).
    let (zero, _) = w.send_usdt(w.user(), addr, 0).await?;
    let (zero_eth, _) = w.send_eth(w.user(), addr, U256::ZERO).await?;
    let (real, _) = w.send_usdt(w.user(), addr, 2_500_000).await?;
    replies.wait("the real deposit's 2", tx_is(real, 2)).await?;
    w.mine(20).await?;
    replies.wait("the real deposit's 1", tx_is(real, 1)).await?;
    probe.sync(&w, &mut replies).await?;
    let got: Vec<(String, u64)> = replies
        .matching(about(addr))
        .iter()
        .map(|r| {
            (
                r.v["tx_hash"].as_str().unwrap_or_default().to_owned(),
                r.v["status"].as_u64().unwrap_or(99),
            )
        })
        .collect();
    let real = format!("{real:#x}");
    assert_eq!(
        got,
        vec![(real.clone(), 2), (real, 1)],
        "only the real deposit is reported, not {zero:#x} nor {zero_eth:#x}"
    );
    daemon.stop().await?;
    w.cleanup().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_amount_with_eighteen_decimals_is_logged_exactly() -> Result<()> {
    let w = World::new("exact-log").await?;
    let mut replies = w.replies("topup_resp").await?;
    let daemon = w.start().await?;
    let addr = Address::random();
    w.publish("topup", topup(&hex_addr(addr), "ETH")).await?;
    w.wait_watched("ETH", addr, true).await?;
    // 1.000000000000000001 ether: through a float it is 1.
    let wei = U256::from(10u64).pow(U256::from(18u64)) + U256::from(1u64);
    let (tx, _) = w.send_eth(w.user(), addr, wei).await?;
    let r = replies.wait("status 2", tx_is(tx, 2)).await?;
    assert!(
        r.raw.contains(r#""amount":1.000000000000000001,"#),
        "{}",
        r.raw
    );
    let a = hex_addr(addr);
    w.wait_txlog(
        &a,
        &[
            "[TopupResp]: ",
            &format!("-{a}-ETH-ETH-1.000000000000000001"),
        ],
    )
    .await?;
    w.wait_txlog(
        "ethnode",
        &[
            "[DepositSeen]: ",
            &format!("-{a}-ETH-ETH-1.000000000000000001"),
        ],
    )
    .await?;
    daemon.stop().await?;
    w.cleanup().await
}

fn withdraw(queue_id: &str, from: Address, to: Address, amount: &str) -> Result<Value> {
    let mut v = serde_json::json!({"queue_id": queue_id, "from_address": hex_addr(from),
        "to_address": hex_addr(to), "chain": "ETH", "symbol": "USDT", "timestamp": 1758610297});
    v["amount"] = serde_json::from_str(amount)?;
    Ok(v)
}

/// Final answers (`status` 1) of `kind` in the daemon's outbox, sent or not.
async fn finals(w: &World, kind: &str) -> Result<usize> {
    let store = w.store().await?;
    let n = store
        .outbox_bodies(kind)
        .await?
        .iter()
        .filter_map(|b| serde_json::from_slice::<Value>(b).ok())
        .filter(|v| v["status"] == 1)
        .count();
    store.close().await;
    Ok(n)
}

/// A world with `confirm_height`, a deposit seen and a withdrawal mined
/// (both answered `2`, neither final); returns the deposit's transaction and
/// block, and the withdrawal's block.
async fn pending_deposit_and_payout(
    w: &World,
    topups: &mut Replies,
    withdrawals: &mut Replies,
) -> Result<(B256, u64, u64)> {
    let user = w.new_wallet(m2pool_payment::wallet::Label::User).await?;
    w.fund(user, 100_000_000, ether(1)).await?;
    let addr = Address::random();
    w.publish("topup", topup(&hex_addr(addr), "USDT")).await?;
    w.wait_watched("USDT", addr, true).await?;
    let (deposit, block) = w.send_usdt(w.user(), addr, 9_000_000).await?;
    topups.wait("deposit status 2", tx_is(deposit, 2)).await?;
    w.publish("withdraw", withdraw("c-1", user, Address::random(), "4")?)
        .await?;
    let sent = withdrawals.wait("payout status 2", is("c-1", 2)).await?;
    let hash: B256 = sent.v["tx_hash"].as_str().unwrap_or_default().parse()?;
    // Announced when the node accepted it; automine mines it a moment later.
    let block_of = || async {
        let receipt = alloy::providers::Provider::get_transaction_receipt(&w.eth, hash).await?;
        anyhow::Ok(receipt.and_then(|r| r.block_number).unwrap_or_default())
    };
    eventually("the payout is mined (automine)", || async {
        Ok(block_of().await? > 0)
    })
    .await?;
    let mined = block_of().await?;
    Ok((deposit, block, mined))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lowering_confirm_height_between_runs_decides_what_is_deep_enough() -> Result<()> {
    let mut w = World::with("confirm-lower", &[], |c| {
        c["eth_config"]["confirm_height"] = 200.into();
    })
    .await?;
    let mut topups = w.replies("topup_resp").await?;
    let mut withdrawals = w.replies("withdraw_resp").await?;
    let daemon = w.start().await?;
    let probe = Probe::new(&w).await?;
    let (deposit, block, _) = pending_deposit_and_payout(&w, &mut topups, &mut withdrawals).await?;
    // 150 blocks deep: not final at 200, and older than the window that
    // confirm_height 10 keeps (128 blocks).
    w.mine(150).await?;
    probe.sync(&w, &mut topups).await?;
    daemon.stop().await?;
    assert_eq!(finals(&w, "topup_resp").await?, 0, "deposit final at 200");
    assert_eq!(finals(&w, "withdraw_resp").await?, 0, "payout final at 200");

    w.config_json["eth_config"]["confirm_height"] = 10.into();
    let daemon = w.start().await?;
    w.mine(1).await?;
    let done = topups.wait("deposit status 1", tx_is(deposit, 1)).await?;
    assert_eq!(done.v["block_height"], block, "{}", done.raw);
    withdrawals.wait("payout status 1", is("c-1", 1)).await?;
    probe.sync(&w, &mut topups).await?;
    assert_eq!(
        statuses(&topups, deposit),
        vec![2, 1],
        "a canonical deposit is not answered 0"
    );
    daemon.stop().await?;
    w.cleanup().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raising_confirm_height_between_runs_makes_pending_answers_wait() -> Result<()> {
    let mut w = World::with("confirm-raise", &[], |c| {
        c["eth_config"]["confirm_height"] = 5.into();
    })
    .await?;
    let mut topups = w.replies("topup_resp").await?;
    let mut withdrawals = w.replies("withdraw_resp").await?;
    let daemon = w.start().await?;
    let probe = Probe::new(&w).await?;
    let (deposit, block, paid) =
        pending_deposit_and_payout(&w, &mut topups, &mut withdrawals).await?;
    probe.sync(&w, &mut topups).await?;
    daemon.stop().await?;
    anyhow::ensure!(w.head().await? < block + 5, "test bug: too deep already");

    w.config_json["eth_config"]["confirm_height"] = 20.into();
    let daemon = w.start().await?;
    // One block short of 20 deep for both: nothing final yet.
    let head = w.head().await?;
    w.mine(block.min(paid) + 19 - head - 1).await?;
    let synced = probe.sync(&w, &mut topups).await?;
    assert_eq!(synced, block.min(paid) + 19);
    // Everything that block decided is in the outbox by now.
    assert_eq!(finals(&w, "topup_resp").await?, 0, "deposit final at 5");
    assert_eq!(finals(&w, "withdraw_resp").await?, 0, "payout final at 5");
    assert!(
        withdrawals.matching(|v| v["status"] == 1).is_empty(),
        "final at 5"
    );
    w.mine(paid.max(block) + 20 - synced).await?;
    let done = topups.wait("deposit status 1", tx_is(deposit, 1)).await?;
    assert_eq!(done.v["block_height"], block);
    withdrawals.wait("payout status 1", is("c-1", 1)).await?;
    daemon.stop().await?;
    w.cleanup().await
}
