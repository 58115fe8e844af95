//! The chain misbehaving: reorganisations (anvil_reorg, anvil_rollback,
//! evm_snapshot/evm_revert), stuck payouts, and the node going away.

mod common;

use alloy::primitives::{Address, B256, Bytes, U256};
use alloy::providers::Provider;
use anyhow::{Context, Result};
use common::*;
use m2pool_payment::wallet::Label;
use serde_json::{Value, json};

fn tx_is(tx: B256, status: u64) -> impl Fn(&Value) -> bool {
    let hash = format!("{tx:#x}");
    move |v| v["tx_hash"] == hash && v["status"] == status
}

fn statuses(replies: &Replies, tx: B256) -> Vec<(u64, u64)> {
    let hash = format!("{tx:#x}");
    replies
        .matching(|v| v["tx_hash"] == hash)
        .iter()
        .map(|r| {
            (
                r.v["status"].as_u64().unwrap_or(99),
                r.v["block_height"].as_u64().unwrap_or(0),
            )
        })
        .collect()
}

async fn raw_of(w: &World, tx: B256) -> Result<Bytes> {
    Ok(w.eth
        .raw_request("eth_getRawTransactionByHash".into(), (tx,))
        .await?)
}

/// A watched address with a deposit seen (status 2) in block `block`.
async fn seen_deposit(w: &World, replies: &mut Replies) -> Result<(Address, B256, u64)> {
    let addr = Address::random();
    w.publish("topup", topup(&hex_addr(addr), "USDT")).await?;
    w.wait_watched("USDT", addr, true).await?;
    let (tx, block) = w.send_usdt(w.user(), addr, 12_000_000).await?;
    let r = replies.wait("status 2", tx_is(tx, 2)).await?;
    assert_eq!(r.v["block_height"], block);
    Ok((addr, tx, block))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deposit_reorged_out_and_mined_again_confirms_in_its_new_block() -> Result<()> {
    let w = World::new("reorg-remined").await?;
    let mut replies = w.replies("topup_resp").await?;
    let daemon = w.start().await?;
    let (_, tx, block) = seen_deposit(&w, &mut replies).await?;
    let raw = raw_of(&w, tx).await?;

    // Replace the deposit's block (and any after it) with empty ones.
    let depth = w.head().await? - block + 1;
    let _: Value = w
        .eth
        .raw_request("anvil_reorg".into(), (depth, Vec::<Value>::new()))
        .await?;
    assert!(
        w.eth.get_transaction_receipt(tx).await?.is_none(),
        "the reorg removed it"
    );
    // The same transaction is mined again, in a later block.
    let _: B256 = w
        .eth
        .raw_request("eth_sendRawTransaction".into(), (raw,))
        .await?;
    eventually("mined again", || async {
        Ok(w.eth.get_transaction_receipt(tx).await?.is_some())
    })
    .await?;
    let new_block = w
        .eth
        .get_transaction_receipt(tx)
        .await?
        .and_then(|r| r.block_number)
        .context("mined again")?;
    assert!(new_block > block);

    w.mine(20).await?;
    let f = replies.wait("status 1", tx_is(tx, 1)).await?;
    assert_eq!(f.v["block_height"], new_block, "final in its new block");
    assert_eq!(statuses(&replies, tx), vec![(2, block), (1, new_block)]);
    daemon.stop().await?;
    w.cleanup().await
}

/// A deposit that leaves the chain for good gets `0` when it would have been final.
async fn vanishes(test: &str, remove: impl AsyncFnOnce(&World, u64) -> Result<()>) -> Result<()> {
    let w = World::new(test).await?;
    let mut replies = w.replies("topup_resp").await?;
    let daemon = w.start().await?;
    let (_, tx, block) = seen_deposit(&w, &mut replies).await?;
    remove(&w, block).await?;
    assert!(
        w.eth.get_transaction_receipt(tx).await?.is_none(),
        "it left the chain"
    );
    w.mine(25).await?;
    let r = replies.wait("status 0", tx_is(tx, 0)).await?;
    assert!(
        r.v["error"]
            .as_str()
            .is_some_and(|e| e.contains("left the canonical chain")),
        "{}",
        r.raw
    );
    assert!(replies.matching(tx_is(tx, 1)).is_empty(), "never final");
    daemon.stop().await?;
    w.cleanup().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deposit_rolled_back_fails() -> Result<()> {
    vanishes("rollback", async |w: &World, block| {
        let depth = w.head().await? - block + 1;
        let _: Value = w.eth.raw_request("anvil_rollback".into(), (depth,)).await?;
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deposit_reorged_away_by_anvil_reorg_fails() -> Result<()> {
    vanishes("reorg-gone", async |w: &World, block| {
        let depth = w.head().await? - block + 1;
        let _: Value = w
            .eth
            .raw_request("anvil_reorg".into(), (depth, Vec::<Value>::new()))
            .await?;
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deposit_undone_by_snapshot_revert_fails() -> Result<()> {
    let w = World::new("revert").await?;
    let mut replies = w.replies("topup_resp").await?;
    let daemon = w.start().await?;
    let addr = Address::random();
    w.publish("topup", topup(&hex_addr(addr), "USDT")).await?;
    w.wait_watched("USDT", addr, true).await?;
    let snapshot: U256 = w.eth.raw_request("evm_snapshot".into(), ()).await?;
    let (tx, _) = w.send_usdt(w.user(), addr, 3_000_000).await?;
    replies.wait("status 2", tx_is(tx, 2)).await?;
    let reverted: bool = w.eth.raw_request("evm_revert".into(), (snapshot,)).await?;
    assert!(reverted);
    w.mine(25).await?;
    replies.wait("status 0", tx_is(tx, 0)).await?;
    assert!(replies.matching(tx_is(tx, 1)).is_empty());
    daemon.stop().await?;
    w.cleanup().await
}

fn withdraw(queue_id: &str, from: Address, to: Address, amount: &str) -> Result<Value> {
    let mut v = json!({"queue_id": queue_id, "from_address": hex_addr(from), "to_address": hex_addr(to),
                       "chain": "ETH", "symbol": "USDT", "timestamp": 1758610297});
    v["amount"] = serde_json::from_str(amount)?;
    Ok(v)
}

fn is(queue_id: &str, status: u64) -> impl Fn(&Value) -> bool {
    let q = queue_id.to_owned();
    move |v| v["queue_id"] == q && v["status"] == status
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_payout_reorged_out_is_broadcast_again_and_confirms_once() -> Result<()> {
    let w = World::with("reorg-payout", &[], |c| {
        c["eth_config"]["rebroadcast_secs"] = 1.into()
    })
    .await?;
    let mut replies = w.replies("withdraw_resp").await?;
    let user = w.new_wallet(Label::User).await?;
    w.fund(user, 100_000_000, ether(1)).await?;
    let to = Address::random();
    let daemon = w.start().await?;
    w.publish("withdraw", withdraw("rp-1", user, to, "9")?)
        .await?;
    let sent = replies.wait("status 2", is("rp-1", 2)).await?;
    let hash: B256 = sent.v["tx_hash"].as_str().context("hash")?.parse()?;
    let block = w
        .eth
        .get_transaction_receipt(hash)
        .await?
        .and_then(|r| r.block_number)
        .context("mined")?;

    let depth = w.head().await? - block + 1;
    let _: Value = w
        .eth
        .raw_request("anvil_reorg".into(), (depth, Vec::<Value>::new()))
        .await?;
    eventually("the same transaction is mined again", || async {
        Ok(w.eth.get_transaction_receipt(hash).await?.is_some())
    })
    .await?;
    w.mine(20).await?;
    let done = replies.wait("status 1", is("rp-1", 1)).await?;
    assert_eq!(
        done.v["tx_hash"], sent.v["tx_hash"],
        "the same bytes, the same hash"
    );
    assert_eq!(
        replies.matching(|v| v["queue_id"] == "rp-1").len(),
        2,
        "one 2, one 1"
    );
    assert_eq!(w.transfers_from(user).await?.len(), 1);
    assert_eq!(w.usdt_balance(to).await?, U256::from(9_000_000u64));
    daemon.stop().await?;
    w.cleanup().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stuck_payout_is_replaced_with_higher_fees_and_confirms_once() -> Result<()> {
    let w = World::with("stuck", &[], |c| {
        c["eth_config"]["stuck_payout_secs"] = 1.into();
        c["eth_config"]["rebroadcast_secs"] = 1.into();
        c["eth_config"]["max_fee_per_gas_gwei"] = 10_000.into();
    })
    .await?;
    let mut replies = w.replies("withdraw_resp").await?;
    let user = w.new_wallet(Label::User).await?;
    w.fund(user, 100_000_000, ether(100)).await?;
    let to = Address::random();
    let daemon = w.start().await?;

    // Mining paused: the first transaction waits in the pool.
    let _: Value = w
        .eth
        .raw_request("evm_setAutomine".into(), (false,))
        .await?;
    w.publish("withdraw", withdraw("st-1", user, to, "2")?)
        .await?;
    let sent = replies.wait("status 2", is("st-1", 2)).await?;
    let first: B256 = sent.v["tx_hash"].as_str().context("hash")?.parse()?;
    let first_tx = w
        .eth
        .get_transaction_by_hash(first)
        .await?
        .context("in the pool")?;
    let first_fee = alloy::consensus::Transaction::max_fee_per_gas(&first_tx);
    // A base fee above its max fee keeps it out of the next blocks.
    let _: Value = w
        .eth
        .raw_request(
            "anvil_setNextBlockBaseFeePerGas".into(),
            (U256::from(first_fee * 8),),
        )
        .await?;
    w.mine(1).await?;
    assert!(
        w.eth.get_transaction_receipt(first).await?.is_none(),
        "priced out"
    );

    // The daemon replaces it: same nonce, both fees up.
    let store = w.store().await?;
    // The store holds a replacement before it is broadcast, and a replacement
    // still priced out is itself replaced a second later: wait for the
    // current one to be in the node's pool.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let second_tx = loop {
        let p = store.payouts("ETH").await?;
        if let Some(hash) = p.first().and_then(|p| p.tx_hash).filter(|h| *h != first)
            && let Some(tx) = w.eth.get_transaction_by_hash(hash).await?
        {
            break tx;
        }
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "no replacement in the node's pool within 30 s"
        );
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    };
    store.close().await;
    use alloy::consensus::Transaction as _;
    assert_eq!(second_tx.nonce(), first_tx.nonce());
    assert!(
        second_tx.max_fee_per_gas() * 8 >= first_fee * 9,
        "max fee up by at least 12.5%"
    );
    assert!(
        second_tx.max_priority_fee_per_gas().unwrap_or_default() * 8
            >= first_tx.max_priority_fee_per_gas().unwrap_or_default() * 9,
        "priority fee up by at least 12.5%"
    );

    let _: Value = w.eth.raw_request("evm_setAutomine".into(), (true,)).await?;
    w.mine(21).await?;
    let done = replies.wait("status 1", is("st-1", 1)).await?;
    let mined: B256 = done.v["tx_hash"].as_str().context("hash")?.parse()?;
    let store = w.store().await?;
    let id = store.payouts("ETH").await?.first().context("payout")?.id;
    let mut tx = store.begin().await?;
    let sent = tx.payout_tx_hashes(id).await?;
    drop(tx);
    store.close().await;
    assert!(
        sent.len() >= 2 && sent.contains(&mined),
        "one of the payout's transactions: {mined} in {sent:?}"
    );
    assert!(w.eth.get_transaction_receipt(mined).await?.is_some());
    assert_eq!(w.transfers_from(user).await?.len(), 1, "paid once");
    assert_eq!(w.usdt_balance(to).await?, U256::from(2_000_000u64));
    daemon.stop().await?;
    w.cleanup().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_restart_is_survived_and_deposits_made_meanwhile_are_reported() -> Result<()> {
    let mut w = World::new("node-restart").await?;
    let mut replies = w.replies("topup_resp").await?;
    let daemon = w.start().await?;
    let (addr, first, _) = seen_deposit(&w, &mut replies).await?;

    // The node goes away (its WebSocket and RPC with it) and comes back on the
    // same port with the same chain.
    let state: String = w.eth.raw_request("anvil_dumpState".into(), ()).await?;
    let port = w.anvil.port;
    drop(std::mem::replace(&mut w.anvil, Anvil::spawn_on(0, &[])?));
    w.anvil = Anvil::spawn_on(port, &[])?;
    let loaded: bool = w
        .eth
        .raw_request("anvil_loadState".into(), (state,))
        .await?;
    assert!(loaded);
    // Blocks and a deposit while the daemon is still reconnecting.
    w.mine(3).await?;
    let (second, block) = w.send_usdt(w.user(), addr, 4_000_000).await?;
    let r = replies
        .wait("the deposit made during the gap", tx_is(second, 2))
        .await?;
    assert_eq!(r.v["block_height"], block);
    w.mine(20).await?;
    replies.wait("first final", tx_is(first, 1)).await?;
    replies.wait("second final", tx_is(second, 1)).await?;
    daemon.stop().await?;
    w.cleanup().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_logs_ranges_are_halved_when_the_node_refuses_them() -> Result<()> {
    let w = World::new("range-limit").await?;
    let proxy = rpc_proxy::RangeLimitProxy::start(w.anvil.http(), 4).await?;
    let mut w = w;
    w.config_json["eth_config"]["rpc_url"] = proxy.url().into();
    w.config_json["eth_config"]
        .as_object_mut()
        .map(|o| o.remove("ws_url"));
    let mut replies = w.replies("topup_resp").await?;
    let daemon = w.start().await?;
    let addr = Address::random();
    w.publish("topup", topup(&hex_addr(addr), "USDT")).await?;
    w.wait_watched("USDT", addr, true).await?;
    daemon.stop().await?;

    // While the daemon is down: 30 blocks and deposits in some of them.
    let mut deposits = Vec::new();
    for _ in 0..3 {
        w.mine(9).await?;
        deposits.push(w.send_usdt(w.user(), addr, 1_000_000).await?.0);
    }
    let daemon = w.start().await?;
    for tx in &deposits {
        replies
            .wait("a deposit read through a range-limited node", tx_is(*tx, 2))
            .await?;
    }
    assert!(
        proxy.refused.load(std::sync::atomic::Ordering::Relaxed) > 0,
        "the node did refuse wide ranges"
    );
    daemon.stop().await?;
    w.cleanup().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fallback_endpoint_is_used_when_the_first_is_down() -> Result<()> {
    let dead = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let w = World::with("fallback", &[], |c| {
        let real = c["eth_config"]["rpc_url"].clone();
        c["eth_config"]["rpc_url"] = format!("http://127.0.0.1:{dead}").into();
        c["eth_config"]["fallback_rpc_urls"] = json!([real]);
        c["eth_config"]["poll_interval_ms"] = 200.into();
    })
    .await?;
    let mut replies = w.replies("topup_resp").await?;
    let daemon = w.start().await?;
    seen_deposit(&w, &mut replies).await?;
    daemon.stop().await?;
    w.cleanup().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_whose_head_stops_is_reported_and_its_recovery_too() -> Result<()> {
    let w = World::with("stall", &[], |c| {
        c["eth_config"]["head_stall_secs"] = 1.into();
        c["eth_config"]["poll_interval_ms"] = 200.into();
    })
    .await?;
    let _daemon = w.spawn_process(&[])?;
    let log = || std::fs::read_to_string(w.daemon_log_path()).unwrap_or_default();
    eventually("the stall is reported", || async {
        Ok(log().contains("has not advanced"))
    })
    .await?;
    w.mine(1).await?;
    eventually("the recovery is reported", || async {
        Ok(log().contains("advances again"))
    })
    .await?;
    w.cleanup().await
}
