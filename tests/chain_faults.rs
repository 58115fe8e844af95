//! The chain misbehaving: reorganisations (anvil_reorg, anvil_rollback,
//! evm_snapshot/evm_revert, and one in the middle of a catch-up), stuck
//! payouts, and the node going away or misbehaving: restarted with its state,
//! its WebSocket or every connection cut, fallback endpoints, `eth_getLogs`
//! refusals, a head that stops advancing.

mod common;

use alloy::primitives::{Address, B256, Bytes, U256};
use alloy::providers::Provider;
use anyhow::{Context, Result};
use common::payout_of as is;
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

/// The block `tx` is mined in now.
async fn block_of(w: &World, tx: B256) -> Result<u64> {
    w.eth
        .get_transaction_receipt(tx)
        .await?
        .and_then(|r| r.block_number)
        .context("mined")
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
    let new_block = block_of(&w, tx).await?;
    assert!(new_block > block);

    w.mine(20).await?;
    let f = replies.wait("status 1", tx_is(tx, 1)).await?;
    assert_eq!(f.v["block_height"], new_block, "final in its new block");
    assert_eq!(statuses(&replies, tx), vec![(2, block), (1, new_block)]);
    daemon.stop().await?;
    w.cleanup().await
}

/// A token deposit mined again after a reorganisation behind another
/// transfer of the token sits at another log index in its new block: it is
/// still one deposit, one `2` and one `1` (not a second `2` and a `0` for the
/// old position).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deposit_mined_again_at_another_log_index_is_one_deposit() -> Result<()> {
    let w = World::new("reorg-log-index").await?;
    let mut replies = w.replies("topup_resp").await?;
    let daemon = w.start().await?;
    let (_, tx, block) = seen_deposit(&w, &mut replies).await?;
    let index_of = |r: &alloy::rpc::types::TransactionReceipt| {
        r.inner.logs().first().and_then(|l| l.log_index)
    };
    let before = w.eth.get_transaction_receipt(tx).await?.context("mined")?;
    let raw = raw_of(&w, tx).await?;
    // The new first block holds a transfer of the token ahead of the deposit.
    let filler = ITestUSDT::new(w.token, &w.eth)
        .transfer(Address::random(), U256::ZERO)
        .from(w.accounts[4])
        .into_transaction_request();
    let depth = w.head().await? - block + 1;
    let _: Value = w
        .eth
        .raw_request(
            "anvil_reorg".into(),
            (depth, vec![json!([filler, 0]), json!([raw, 0])]),
        )
        .await?;
    let after = w
        .eth
        .get_transaction_receipt(tx)
        .await?
        .context("mined again")?;
    let new_block = after.block_number.context("block")?;
    assert_ne!(index_of(&after), index_of(&before), "another log index");
    w.mine(21).await?;
    replies.wait("status 1", tx_is(tx, 1)).await?;
    assert_eq!(
        statuses(&replies, tx),
        vec![(2, block), (1, new_block)],
        "one 2, then one 1 in its new block"
    );
    daemon.stop().await?;
    w.cleanup().await
}

/// The address of a deposit already reported `2` is removed; then a
/// reorganisation takes the deposit's block and the same transaction is mined
/// again: the money did arrive, so the deposit still ends `1` in its new block
/// (not `0` for a block that left the chain), and nothing else sent to the
/// removed address is reported.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deposit_orphaned_after_its_address_was_removed_still_confirms() -> Result<()> {
    let w = World::new("reorg-removed").await?;
    let mut replies = w.replies("topup_resp").await?;
    let mut removes = w.replies("remove_resp").await?;
    let daemon = w.start().await?;
    let (addr, tx, block) = seen_deposit(&w, &mut replies).await?;
    w.publish("remove", topup(&hex_addr(addr), "USDT")).await?;
    removes
        .wait("remove status 1", |v| {
            v["address"] == hex_addr(addr) && v["status"] == 1
        })
        .await?;
    w.wait_watched("USDT", addr, false).await?;

    let raw = raw_of(&w, tx).await?;
    let depth = w.head().await? - block + 1;
    let _: Value = w
        .eth
        .raw_request("anvil_reorg".into(), (depth, vec![json!([raw, 0])]))
        .await?;
    let new_block = block_of(&w, tx).await?;
    // A later transfer to the removed address is not a deposit.
    let (later, _) = w.send_usdt(w.user(), addr, 1_000_000).await?;
    w.mine(21).await?;
    replies.wait("status 1", tx_is(tx, 1)).await?;
    assert_eq!(statuses(&replies, tx), vec![(2, block), (1, new_block)]);
    assert!(replies.matching(tx_is(later, 2)).is_empty(), "not watched");
    daemon.stop().await?;
    w.cleanup().await
}

/// `tx` is gone from the chain; after 25 more blocks its deposit is answered
/// `0` (left the canonical chain), and nothing else about it arrives by the
/// time a probe deposit 5 blocks later is answered.
async fn answered_left_the_chain(w: &World, replies: &mut Replies, tx: B256) -> Result<()> {
    assert!(
        w.eth.get_transaction_receipt(tx).await?.is_none(),
        "it left the chain"
    );
    let probe = Probe::new(w).await?;
    w.mine(25).await?;
    let r = replies.wait("status 0", tx_is(tx, 0)).await?;
    assert!(
        r.v["error"]
            .as_str()
            .is_some_and(|e| e.contains("left the canonical chain")),
        "{}",
        r.raw
    );
    w.mine(5).await?;
    probe.sync(w, replies).await?;
    assert_eq!(
        statuses(replies, tx)
            .iter()
            .map(|s| s.0)
            .collect::<Vec<_>>(),
        vec![2, 0],
        "seen, then failed; never final"
    );
    Ok(())
}

/// A deposit that leaves the chain for good gets `0` when it would have been final.
async fn vanishes(test: &str, remove: impl AsyncFnOnce(&World, u64) -> Result<()>) -> Result<()> {
    let w = World::new(test).await?;
    let mut replies = w.replies("topup_resp").await?;
    let daemon = w.start().await?;
    let (_, tx, block) = seen_deposit(&w, &mut replies).await?;
    remove(&w, block).await?;
    answered_left_the_chain(&w, &mut replies, tx).await?;
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
    let probe = Probe::new(&w).await?;
    w.mine(25).await?;
    replies.wait("status 0", tx_is(tx, 0)).await?;
    w.mine(5).await?;
    probe.sync(&w, &mut replies).await?;
    assert_eq!(
        statuses(&replies, tx)
            .iter()
            .map(|s| s.0)
            .collect::<Vec<_>>(),
        vec![2, 0],
        "seen, then failed; never final"
    );
    daemon.stop().await?;
    w.cleanup().await
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
    // The request again: its `2` is repeated byte for byte, with the hash
    // the first `2` named, not the replacement's.
    w.publish("withdraw", withdraw("st-1", user, to, "2")?)
        .await?;
    let twos = replies
        .wait_count("the repeated status 2", 2, is("st-1", 2))
        .await?;
    assert_eq!(twos[1].raw, sent.raw, "the repeat is the same answer");

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

// ---------------------------------------------------------------------------
// The node going away, and misbehaving while it is there.

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// `GET /healthz` on the daemon's HTTP endpoint: the status and the JSON body.
async fn healthz(port: u16) -> Result<(u16, Value)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await?;
    let mut raw = String::new();
    s.read_to_string(&mut raw).await?;
    let status = raw.split_whitespace().nth(1).context("status")?.parse()?;
    let body = raw.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    Ok((status, serde_json::from_str(body).unwrap_or(Value::Null)))
}

/// Waits until `/healthz` answers `status` and its `ETH` entry passes `check`.
async fn wait_health(
    port: u16,
    what: &str,
    status: u16,
    check: impl Fn(&Value) -> bool,
) -> Result<Value> {
    let mut last = None;
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        if let Ok((s, body)) = healthz(port).await {
            if s == status && check(&body["chains"]["ETH"]) {
                return Ok(body);
            }
            last = Some((s, body));
        }
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "healthz: {what} not within {WAIT:?}; last answer {last:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// The JSON lines of a daemon process's log (`log_config.format` = `json`).
fn log_lines(w: &World) -> Vec<Value> {
    std::fs::read_to_string(w.daemon_log_path())
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// The `attempt` of every `level` line whose message is `message`.
fn attempts(w: &World, level: &str, message: &str) -> Vec<u64> {
    log_lines(w)
        .iter()
        .filter(|l| l["level"] == level && l["fields"]["message"] == message)
        .filter_map(|l| l["fields"]["attempt"].as_u64())
        .collect()
}

const NODE_RETRY: &str = "node request failed; retrying";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_restarted_with_its_state_is_retried_without_limit_and_the_gap_is_read() -> Result<()>
{
    let state_dir = tempfile::tempdir()?;
    let state = state_dir.path().join("anvil-state.json");
    let state = state.to_str().context("state path")?.to_owned();
    let http = free_port()?;
    let mut w = World::with("node-restart", &["--dump-state", &state], |c| {
        c["http_config"] = json!({"listen": format!("127.0.0.1:{http}")});
        c["log_config"]["format"] = "json".into();
    })
    .await?;
    let mut replies = w.replies("topup_resp").await?;
    let mut daemon = w.spawn_process(&[])?;
    let (addr, first, first_block) = seen_deposit(&w, &mut replies).await?;
    let head = w.head().await?;

    // The node is stopped as an operator stops it; it writes its state on the way out.
    w.anvil.terminate().await?;
    anyhow::ensure!(
        std::fs::metadata(&state).is_ok_and(|m| m.len() > 0),
        "anvil wrote no state to {state}"
    );
    wait_health(http, "the node reported disconnected", 503, |c| {
        c["node_connected"] == false
    })
    .await?;
    // The daemon keeps trying, a warning per attempt. After the fifth it
    // waits 4 s: the node comes back within that time, unseen.
    eventually("the fifth attempt to reach the stopped node", || async {
        Ok(attempts(&w, "WARN", NODE_RETRY).contains(&5))
    })
    .await?;
    let port = w.anvil.port;
    w.anvil = Anvil::spawn_on(port, &["--load-state", &state])?;
    assert_eq!(w.head().await?, head, "the node came back with its chain");
    assert_eq!(
        w.eth
            .get_transaction_receipt(first)
            .await?
            .and_then(|r| r.block_number),
        Some(first_block),
        "and with the first deposit in it"
    );
    // Blocks and deposits the daemon has not seen: it has not reconnected yet.
    w.mine(2).await?;
    let (second, second_block) = w.send_usdt(w.user(), addr, 4_000_000).await?;
    w.mine(2).await?;
    let (third, third_block) = w.send_usdt(w.user(), addr, 5_000_000).await?;
    let (_, h) = healthz(http).await?;
    assert_eq!(
        h["chains"]["ETH"]["node_connected"], false,
        "the deposits were made before the daemon reconnected: {h}"
    );

    for (tx, block) in [(second, second_block), (third, third_block)] {
        let r = replies
            .wait("a deposit made while the daemon was away", tx_is(tx, 2))
            .await?;
        assert_eq!(r.v["block_height"], block);
    }
    wait_health(http, "the node reported connected again", 200, |c| {
        c["node_connected"] == true
    })
    .await?;
    let tried = attempts(&w, "WARN", NODE_RETRY);
    for n in 1..=5 {
        assert!(
            tried.contains(&n),
            "attempt {n} logged as a warning: {tried:?}"
        );
    }
    // The new-heads WebSocket was made again by the daemon, a warning per
    // failed attempt.
    let resubscribed = attempts(&w, "WARN", "cannot subscribe to new heads; retrying");
    assert!(resubscribed.len() >= 2, "{resubscribed:?}");
    eventually("the new-heads subscription open again", || async {
        Ok(log_lines(&w)
            .iter()
            .filter(|l| l["fields"]["message"] == "new-heads subscription open")
            .count()
            >= 2)
    })
    .await?;
    assert!(
        daemon.0.try_wait()?.is_none(),
        "the daemon never gave up: it is still running"
    );

    w.mine(20).await?;
    for (tx, block) in [
        (first, first_block),
        (second, second_block),
        (third, third_block),
    ] {
        replies.wait("final", tx_is(tx, 1)).await?;
        assert_eq!(statuses(&replies, tx), vec![(2, block), (1, block)]);
    }
    w.cleanup().await
}

/// A world whose WebSocket goes through `proxy` and whose watcher is woken
/// by nothing else (the poll interval is an hour).
async fn woken_only_by_heads(test: &str) -> Result<(World, rpc_proxy::TcpProxy)> {
    let mut w = World::new(test).await?;
    let proxy = rpc_proxy::TcpProxy::start(w.anvil.port).await?;
    w.config_json["eth_config"]["ws_url"] = proxy.ws().into();
    w.config_json["eth_config"]["poll_interval_ms"] = 3_600_000.into();
    Ok((w, proxy))
}

/// Nothing matching `pred` arrives within `secs` (a bounded look for something
/// that must not happen).
async fn none_within(replies: &mut Replies, secs: u64, pred: impl Fn(&Value) -> bool) {
    let _ = tokio::time::timeout(
        std::time::Duration::from_secs(secs),
        replies.wait("nothing", &pred),
    )
    .await;
    replies.drain();
    assert!(replies.matching(pred).is_empty(), "it arrived");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_websocket_is_made_again_and_wakes_the_watcher() -> Result<()> {
    let (w, proxy) = woken_only_by_heads("ws-drop").await?;
    let mut replies = w.replies("topup_resp").await?;
    let daemon = w.start().await?;
    // Only a new head can have woken the watcher for this one.
    let (addr, _, _) = seen_deposit(&w, &mut replies).await?;
    let opened = proxy.forwarded();

    // The WebSocket drops; RPC is still there. A deposit meanwhile wakes nobody.
    proxy.cut();
    let (second, block) = w.send_usdt(w.user(), addr, 2_000_000).await?;
    none_within(&mut replies, 2, tx_is(second, 2)).await;
    proxy.restore();
    let r = replies
        .wait(
            "the deposit made while the WebSocket was down",
            tx_is(second, 2),
        )
        .await?;
    assert_eq!(r.v["block_height"], block);
    assert!(proxy.forwarded() > opened, "a new WebSocket connection");
    // The new subscription keeps waking it.
    let (third, _) = w.send_usdt(w.user(), addr, 3_000_000).await?;
    replies
        .wait("a deposit after the reconnection", tx_is(third, 2))
        .await?;
    daemon.stop().await?;
    w.cleanup().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_to_the_node_is_survived_and_deposits_made_during_it_are_reported() -> Result<()> {
    let mut w = World::new("node-cut").await?;
    let proxy = rpc_proxy::TcpProxy::start(w.anvil.port).await?;
    w.config_json["eth_config"]["rpc_url"] = proxy.http().into();
    w.config_json["eth_config"]["ws_url"] = proxy.ws().into();
    let mut replies = w.replies("topup_resp").await?;
    let daemon = w.start().await?;
    let (addr, first, first_block) = seen_deposit(&w, &mut replies).await?;

    // RPC and WebSocket both gone; the chain goes on.
    proxy.cut();
    let closed = proxy.closed();
    w.mine(3).await?;
    let (second, second_block) = w.send_usdt(w.user(), addr, 2_000_000).await?;
    w.mine(3).await?;
    let (third, third_block) = w.send_usdt(w.user(), addr, 3_000_000).await?;
    eventually("the daemon keeps trying to reach the node", || async {
        Ok(proxy.closed() >= closed + 3)
    })
    .await?;
    replies.drain();
    assert!(
        replies.matching(tx_is(second, 2)).is_empty(),
        "the cut really hid the node"
    );
    proxy.restore();
    for (tx, block) in [(second, second_block), (third, third_block)] {
        let r = replies
            .wait("a deposit made during the cut", tx_is(tx, 2))
            .await?;
        assert_eq!(r.v["block_height"], block);
    }
    w.mine(20).await?;
    for (tx, block) in [
        (first, first_block),
        (second, second_block),
        (third, third_block),
    ] {
        replies.wait("final", tx_is(tx, 1)).await?;
        assert_eq!(statuses(&replies, tx), vec![(2, block), (1, block)]);
    }
    daemon.stop().await?;
    w.cleanup().await
}

/// A world whose daemon reads the node through an [`rpc_proxy::RpcProxy`]
/// (no WebSocket, at most `range` blocks per `eth_getLogs`), with one address
/// watched and the daemon stopped at `cursor`.
struct Behind {
    w: World,
    proxy: rpc_proxy::RpcProxy,
    replies: Replies,
    addr: Address,
    cursor: u64,
}

async fn watched_behind_a_proxy(
    test: &str,
    refuse: Option<rpc_proxy::Refuse>,
    range: u64,
) -> Result<Behind> {
    let mut w = World::new(test).await?;
    let proxy = rpc_proxy::RpcProxy::start(w.anvil.http(), refuse).await?;
    w.config_json["eth_config"]["rpc_url"] = proxy.url().into();
    w.config_json["eth_config"]["max_block_range"] = range.into();
    w.config_json["eth_config"]
        .as_object_mut()
        .map(|o| o.remove("ws_url"));
    let replies = w.replies("topup_resp").await?;
    let daemon = w.start().await?;
    let addr = Address::random();
    w.publish("topup", topup(&hex_addr(addr), "USDT")).await?;
    w.wait_watched("USDT", addr, true).await?;
    daemon.stop().await?;
    let store = w.store().await?;
    let cursor = store.recent_blocks("ETH", 1).await?[0].number;
    store.close().await;
    Ok(Behind {
        w,
        proxy,
        replies,
        addr,
        cursor,
    })
}

/// The daemon reads 96 blocks with 16 deposits through a node that refuses
/// what `refuse` says: every deposit is reported, each refused range is
/// retried from the same block with half as many blocks (not fewer), the range
/// does not grow back into the refusal, and the ranges read cover every block
/// exactly once.
async fn ranges_halved(test: &str, refuse: rpc_proxy::Refuse) -> Result<()> {
    let Behind {
        w,
        proxy,
        mut replies,
        addr,
        cursor,
    } = watched_behind_a_proxy(test, Some(refuse), 64).await?;

    // While the daemon is down: a deposit every 6 blocks.
    let mut deposits = Vec::new();
    for _ in 0..16 {
        w.mine(5).await?;
        deposits.push(w.send_usdt(w.user(), addr, 1_000_000).await?);
    }
    let head = w.head().await?;
    let asked_before = proxy.logs_asked().len();
    let daemon = w.start().await?;
    for (tx, block) in &deposits {
        let r = replies
            .wait("a deposit read through a refusing node", tx_is(*tx, 2))
            .await?;
        assert_eq!(r.v["block_height"], *block);
    }
    daemon.stop().await?;

    let asked = proxy.logs_asked().split_off(asked_before);
    assert!(
        asked.first().is_some_and(|a| a.refused && a.width() == 64),
        "the first range is the widest, and refused: {asked:?}"
    );
    let mut chain = 0;
    let mut longest = 0;
    for pair in asked.windows(2) {
        let (a, b) = (pair[0], pair[1]);
        if a.refused {
            assert_eq!(b.from, a.from, "retried from the same block: {asked:?}");
            assert!(
                b.width() < a.width() && b.width() * 2 >= a.width(),
                "halved, not more: {a:?} then {b:?} in {asked:?}"
            );
            chain += 1;
            longest = longest.max(chain);
        } else {
            chain = 0;
        }
    }
    assert!(longest >= 2, "halved at least twice in a row: {asked:?}");
    // Once a range has been read, the range does not grow back past what the
    // node refused: at most one more refusal (a denser stretch), not one in two.
    let first_read = asked.iter().position(|a| !a.refused).unwrap_or(asked.len());
    let later_refusals = asked[first_read..].iter().filter(|a| a.refused).count();
    assert!(
        later_refusals <= 1,
        "{later_refusals} refusals after the first range read: {asked:?}"
    );
    let read: Vec<_> = asked.iter().filter(|a| !a.refused).collect();
    let mut next = cursor + 1;
    for a in &read {
        assert_eq!(a.from, next, "no block skipped or read twice: {read:?}");
        next = a.to + 1;
    }
    assert_eq!(next, head + 1, "read up to the head: {read:?}");
    w.cleanup().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_logs_ranges_are_halved_when_the_node_limits_the_block_range() -> Result<()> {
    ranges_halved("range-limit", rpc_proxy::Refuse::RangeOver(10)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_logs_ranges_are_halved_when_the_node_returns_too_many_results() -> Result<()> {
    ranges_halved("results-limit", rpc_proxy::Refuse::ResultsOver(2)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_whose_range_logs_miss_a_block_cannot_hide_a_deposit() -> Result<()> {
    // The node answers every eth_getLogs by block range with nothing, as one
    // lagging behind its own head does; the blocks' logs blooms say better.
    let mut w = World::new("empty-ranges").await?;
    let proxy =
        rpc_proxy::RpcProxy::start(w.anvil.http(), Some(rpc_proxy::Refuse::EmptyRanges)).await?;
    w.config_json["eth_config"]["rpc_url"] = proxy.url().into();
    let mut replies = w.replies("topup_resp").await?;
    let daemon = w.start().await?;
    let addr = Address::random();
    w.publish("topup", topup(&hex_addr(addr), "USDT")).await?;
    w.wait_watched("USDT", addr, true).await?;
    let (tx, block) = w.send_usdt(w.user(), addr, 4_000_000).await?;
    let r = replies
        .wait("the deposit the range answer left out", tx_is(tx, 2))
        .await?;
    assert_eq!(r.v["block_height"], block);
    assert!(
        !proxy.logs_asked().is_empty(),
        "the range answers went through the proxy"
    );
    w.mine(20).await?;
    replies.wait("final", tx_is(tx, 1)).await?;
    daemon.stop().await?;
    w.cleanup().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fallback_endpoint_is_used_when_the_first_is_down() -> Result<()> {
    let dead = free_port()?;
    let w = World::new("fallback").await?;
    deposit_seen_through_the_fallback(w, format!("http://127.0.0.1:{dead}")).await
}

/// With `first` as the JSON-RPC endpoint and the real node as its fallback, a
/// deposit is reported.
async fn deposit_seen_through_the_fallback(mut w: World, first: String) -> Result<()> {
    let real = w.config_json["eth_config"]["rpc_url"].clone();
    w.config_json["eth_config"]["rpc_url"] = first.into();
    w.config_json["eth_config"]["fallback_rpc_urls"] = json!([real]);
    w.config_json["eth_config"]["poll_interval_ms"] = 200.into();
    let mut replies = w.replies("topup_resp").await?;
    let daemon = w.start().await?;
    seen_deposit(&w, &mut replies).await?;
    daemon.stop().await?;
    w.cleanup().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fallback_rpc_endpoint_takes_over_when_the_first_dies_while_running() -> Result<()> {
    let mut w = World::new("fallback-live").await?;
    let primary = rpc_proxy::TcpProxy::start(w.anvil.port).await?;
    let fallback = rpc_proxy::TcpProxy::start(w.anvil.port).await?;
    w.config_json["eth_config"]["rpc_url"] = primary.http().into();
    w.config_json["eth_config"]["fallback_rpc_urls"] = json!([fallback.http()]);
    w.config_json["eth_config"]["poll_interval_ms"] = 200.into();
    w.config_json["eth_config"]
        .as_object_mut()
        .map(|o| o.remove("ws_url"));
    let mut replies = w.replies("topup_resp").await?;
    let daemon = w.start().await?;
    let (addr, first, first_block) = seen_deposit(&w, &mut replies).await?;
    assert_eq!(fallback.forwarded(), 0, "unused while the first works");

    primary.cut();
    let (second, second_block) = w.send_usdt(w.user(), addr, 2_000_000).await?;
    let r = replies
        .wait("a deposit read through the fallback", tx_is(second, 2))
        .await?;
    assert_eq!(r.v["block_height"], second_block);
    assert!(fallback.forwarded() > 0, "read through the fallback");
    w.mine(20).await?;
    for (tx, block) in [(first, first_block), (second, second_block)] {
        replies.wait("final", tx_is(tx, 1)).await?;
        assert_eq!(statuses(&replies, tx), vec![(2, block), (1, block)]);
    }
    daemon.stop().await?;
    w.cleanup().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_heads_come_from_a_fallback_websocket_when_the_first_is_dead() -> Result<()> {
    let (mut w, first) = woken_only_by_heads("fallback-ws").await?;
    let second = rpc_proxy::TcpProxy::start(w.anvil.port).await?;
    w.config_json["eth_config"]["fallback_ws_urls"] = json!([second.ws()]);
    // Dead from the start.
    first.cut();
    let mut replies = w.replies("topup_resp").await?;
    let daemon = w.start().await?;
    let (addr, _, _) = seen_deposit(&w, &mut replies).await?;
    assert!(second.forwarded() > 0, "woken through the fallback");

    // The one in use dies while running; the first is back by then.
    first.restore();
    second.cut();
    let (tx, block) = w.send_usdt(w.user(), addr, 2_000_000).await?;
    let r = replies
        .wait("a deposit after the fallback WebSocket died", tx_is(tx, 2))
        .await?;
    assert_eq!(r.v["block_height"], block);
    assert!(first.forwarded() > 0, "woken through the first again");
    daemon.stop().await?;
    w.cleanup().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_whose_head_stops_is_reported_and_its_recovery_too() -> Result<()> {
    let http = free_port()?;
    // A node that makes a block every second, like a real chain.
    let w = World::with("stall", &["--block-time", "1"], |c| {
        c["eth_config"]["head_stall_secs"] = 3.into();
        c["eth_config"]["poll_interval_ms"] = 200.into();
        c["http_config"] = json!({"listen": format!("127.0.0.1:{http}")});
        c["log_config"]["format"] = "json".into();
    })
    .await?;
    let _daemon = w.spawn_process(&[])?;
    let stalled = |c: &Value| c["head_stalled"] == true;
    let healthy = |c: &Value| {
        c["head_stalled"] == false
            && c["node_connected"] == true
            && c["seconds_since_head"].is_u64()
    };
    wait_health(http, "healthy", 200, healthy).await?;
    // Longer than the limit, with blocks coming: no false alarm.
    let until = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while std::time::Instant::now() < until {
        let (s, h) = healthz(http).await?;
        assert!(s == 200 && healthy(&h["chains"]["ETH"]), "{s} {h}");
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }

    // Mining stops; the node still answers.
    let _: Value = w
        .eth
        .raw_request("evm_setIntervalMining".into(), (0,))
        .await?;
    let h = wait_health(http, "the stall reported", 503, stalled).await?;
    assert_eq!(h["chains"]["ETH"]["node_connected"], true, "{h}");
    let logged = |level: &'static str, what: &'static str| {
        log_lines(&w).iter().any(|l| {
            l["level"] == level
                && l["fields"]["message"]
                    .as_str()
                    .is_some_and(|m| m.contains(what))
        })
    };
    // /healthz sees the stall when asked; the chain task logs it at its next
    // wake.
    eventually("the stall is logged", || async {
        Ok(logged("WARN", "has not advanced"))
    })
    .await?;

    let _: Value = w
        .eth
        .raw_request("evm_setIntervalMining".into(), (1,))
        .await?;
    wait_health(http, "the recovery reported", 200, healthy).await?;
    eventually("the recovery is logged", || async {
        Ok(logged("INFO", "advances again"))
    })
    .await?;
    w.cleanup().await
}

/// A chain reorganised in the middle of a catch-up, after the cursor was
/// checked: only the parent-hash check of each block read can see it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reorg_in_the_middle_of_a_catch_up_is_caught_by_the_parent_hash() -> Result<()> {
    let Behind {
        w,
        proxy,
        mut replies,
        addr,
        cursor,
    } = watched_behind_a_proxy("reorg-mid-scan", None, 5).await?;

    // While the daemon is down: a deposit in the last block of the first
    // range it will read (cursor+1..=cursor+5), and blocks after it.
    let head = w.head().await?;
    anyhow::ensure!(
        head <= cursor + 4,
        "head {head} ran ahead of the cursor {cursor}"
    );
    w.mine(cursor + 4 - head).await?;
    let (tx, block) = w.send_usdt(w.user(), addr, 7_000_000).await?;
    assert_eq!(block, cursor + 5);
    w.mine(10).await?;
    // When the daemon asks for the second range, the deposit's block and
    // every one after it are replaced with empty ones first.
    let depth = w.head().await? - block + 1;
    proxy.before_logs_from(block + 1, "anvil_reorg", json!([depth, []]));

    let daemon = w.start().await?;
    let r = replies.wait("status 2", tx_is(tx, 2)).await?;
    assert_eq!(r.v["block_height"], block);
    eventually("the chain reorganised mid catch-up", || async {
        Ok(proxy.before_logs_done())
    })
    .await?;
    answered_left_the_chain(&w, &mut replies, tx).await?;
    daemon.stop().await?;
    w.cleanup().await
}

/// A node that accepts requests and never answers is given up on after
/// `rpc_timeout_secs`, and the fallback endpoint serves (without the timeout
/// the first request would wait for ever).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_never_answers_is_timed_out_and_the_fallback_used() -> Result<()> {
    let mut w = World::new("silent-node").await?;
    let silent =
        rpc_proxy::RpcProxy::start(w.anvil.http(), Some(rpc_proxy::Refuse::Silent)).await?;
    w.config_json["eth_config"]["rpc_timeout_secs"] = 1.into();
    deposit_seen_through_the_fallback(w, silent.url()).await
}

/// A node that refuses JSON-RPC batches of more than 5 calls as a whole:
/// with `max_rpc_batch` 5, the payouts (12 at once) and their rebroadcast
/// (every unmined payout) go out in batches the node takes, none refused, and
/// all confirm. (One batch of everything would be refused every time: signed
/// payouts that never leave.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broadcasts_fit_a_node_that_limits_batch_size() -> Result<()> {
    let mut w = World::new("batch-limit").await?;
    let proxy =
        rpc_proxy::RpcProxy::start(w.anvil.http(), Some(rpc_proxy::Refuse::BatchOver(5))).await?;
    w.config_json["eth_config"]["rpc_url"] = proxy.url().into();
    w.config_json["eth_config"]["max_rpc_batch"] = 5.into();
    w.config_json["eth_config"]["rebroadcast_secs"] = 1.into();
    let mut replies = w.replies("withdraw_resp").await?;
    let user = w.new_wallet(Label::User).await?;
    w.fund(user, 100_000_000, ether(1)).await?;
    // Held in the pool, so that the rebroadcast has all 12 to send again.
    let _: Value = w
        .eth
        .raw_request("evm_setAutomine".into(), (false,))
        .await?;
    let daemon = w.start().await?;
    let ids: Vec<String> = (0..12).map(|i| format!("bl-{i}")).collect();
    for id in &ids {
        w.publish("withdraw", withdraw(id, user, Address::random(), "1")?)
            .await?;
    }
    for id in &ids {
        replies.wait(&format!("{id} sent"), is(id, 2)).await?;
    }
    let sent = |b: &[(usize, bool)]| b.iter().map(|(n, _)| n).sum::<usize>();
    eventually("all 12 broadcast again", || async {
        Ok(sent(&proxy.batches()) >= 24)
    })
    .await?;
    let _: Value = w.eth.raw_request("evm_setAutomine".into(), (true,)).await?;
    w.mine(21).await?;
    for id in &ids {
        replies.wait(&format!("{id} final"), is(id, 1)).await?;
    }
    let batches = proxy.batches();
    assert!(
        batches.iter().all(|(n, refused)| *n <= 5 && !refused),
        "no batch over the limit: {batches:?}"
    );
    assert_eq!(w.transfers_from(user).await?.len(), 12, "each paid once");
    daemon.stop().await?;
    w.cleanup().await
}
