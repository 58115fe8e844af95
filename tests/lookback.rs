//! The order of a topup and its deposit does not matter within
//! `lookback_blocks`: a deposit made before its topup is applied is reported
//! like any other, once. Against real RabbitMQ, SQLite and anvil.

mod common;

use alloy::primitives::{Address, B256, U256};
use anyhow::{Context, Result, ensure};
use common::rpc_proxy::TcpProxy;
use common::*;
use serde_json::Value;
use std::collections::HashMap;

fn tx_is(tx: B256, status: u64) -> impl Fn(&Value) -> bool {
    let hash = format!("{tx:#x}");
    move |v| v["tx_hash"] == hash && v["status"] == status
}

/// The statuses answered about `tx`, in order.
fn statuses(replies: &Replies, tx: B256) -> Vec<u64> {
    let hash = format!("{tx:#x}");
    replies
        .matching(|v| v["tx_hash"] == hash)
        .iter()
        .filter_map(|r| r.v["status"].as_u64())
        .collect()
}

/// USDT deposits of `units` to each of `to` in one transaction (one block);
/// returns the transaction.
async fn deposits(w: &World, to: &[Address], units: u64) -> Result<(B256, u64)> {
    let r = ITestUSDT::new(w.token, &w.eth)
        .batchTransfer(to.to_vec(), vec![U256::from(units); to.len()])
        .from(w.user())
        .send()
        .await?
        .get_receipt()
        .await?;
    ensure!(r.status(), "batchTransfer reverted");
    Ok((r.transaction_hash, r.block_number.context("mined")?))
}

/// Per address, the block its last watch started at (the watch log).
async fn watch_blocks(w: &World) -> Result<HashMap<Address, i64>> {
    let path = w.dir.path().join("msg.db");
    let db = sqlx::SqlitePool::connect(&format!("sqlite://{}?mode=ro", path.display())).await?;
    let rows: Vec<(Vec<u8>, Option<i64>)> =
        sqlx::query_as("SELECT address, block FROM watch_log WHERE watched = 1 ORDER BY id")
            .fetch_all(&db)
            .await?;
    db.close().await;
    Ok(rows
        .into_iter()
        .filter_map(|(a, b)| Some((Address::try_from(a.as_slice()).ok()?, b?)))
        .collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deposit_made_ten_blocks_before_its_topup_is_reported() -> Result<()> {
    let w = World::new("lookback-late-topup").await?;
    let mut replies = w.replies("topup_resp").await?;
    let daemon = w.start().await?;
    let probe = Probe::new(&w).await?;
    let addr = Address::random();
    let (usdt, usdt_block) = w.send_usdt(w.user(), addr, 7_250_000).await?;
    let (eth, eth_block) = w
        .send_eth(w.user(), addr, U256::from(300_000_000_000_000_000u64))
        .await?;
    w.mine(10).await?;
    // The daemon has applied those blocks before it hears of the address.
    probe.sync(&w, &mut replies).await?;

    for symbol in ["USDT", "ETH"] {
        w.publish("topup", topup(&hex_addr(addr), symbol)).await?;
    }
    let r = replies.wait("USDT status 2", tx_is(usdt, 2)).await?;
    assert_eq!(r.v["block_height"], usdt_block);
    assert!(r.raw.contains(r#""amount":7.25,"#), "{}", r.raw);
    let r = replies.wait("ETH status 2", tx_is(eth, 2)).await?;
    assert_eq!(r.v["block_height"], eth_block);
    assert!(r.raw.contains(r#""amount":0.3,"#), "{}", r.raw);
    assert!(
        watch_blocks(&w).await?[&addr] > eth_block as i64,
        "the watch started after the deposits' blocks were applied"
    );

    // Final by the usual rules, and reported once.
    let head = w.head().await?;
    w.mine(usdt_block.max(eth_block) + 20 - head).await?;
    replies.wait("USDT status 1", tx_is(usdt, 1)).await?;
    replies.wait("ETH status 1", tx_is(eth, 1)).await?;
    w.mine(3).await?;
    probe.sync(&w, &mut replies).await?;
    assert_eq!(statuses(&replies, usdt), vec![2, 1]);
    assert_eq!(statuses(&replies, eth), vec![2, 1]);
    daemon.stop().await?;
    w.cleanup().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_thousand_queued_topups_find_the_deposits_made_before_they_are_consumed()
-> Result<()> {
    const TOPUPS: usize = 20_000;
    let w = World::new("lookback-backlog").await?;
    let mut replies = w.replies("topup_resp").await?;
    let daemon = w.start().await?;
    let probe = Probe::new(&w).await?;
    let addresses: Vec<Address> = (0..TOPUPS).map(|_| Address::random()).collect();
    let bodies = addresses
        .iter()
        .map(|a| signed(topup(&hex_addr(*a), "USDT")))
        .collect::<Result<Vec<_>>>()?;
    // Ten deposits before any of their topups is published, ten right after
    // the last is: to the last twenty, consumed last.
    let late = &addresses[TOPUPS - 20..];
    let (before, _) = deposits(&w, &late[..10], 1_000_000).await?;
    w.publish_all("topup", &bodies).await?;
    let (after, _) = deposits(&w, &late[10..], 2_000_000).await?;

    let seen = replies
        .wait_count("a 2 for every deposit", 20, |v| {
            v["status"] == 2
                && (v["tx_hash"] == format!("{before:#x}") || v["tx_hash"] == format!("{after:#x}"))
        })
        .await?;
    let to: Vec<&str> = seen
        .iter()
        .filter_map(|r| r.v["address"].as_str())
        .collect();
    for a in late {
        assert_eq!(
            to.iter().filter(|t| **t == hex_addr(*a)).count(),
            1,
            "one 2 for {a}"
        );
    }
    w.mine(20).await?;
    replies
        .wait_count("a 1 for every deposit", 20, |v| {
            v["status"] == 1
                && (v["tx_hash"] == format!("{before:#x}") || v["tx_hash"] == format!("{after:#x}"))
        })
        .await?;
    // Nothing else about them, by the time a later block is answered.
    w.mine(2).await?;
    probe.sync(&w, &mut replies).await?;
    for tx in [before, after] {
        assert_eq!(statuses(&replies, tx).len(), 20, "2 and 1 for each of ten");
    }
    let blocks = watch_blocks(&w).await?;
    assert!(
        addresses.iter().all(|a| blocks.contains_key(a)),
        "every topup watched"
    );
    daemon.stop().await?;
    w.cleanup().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topups_waiting_while_the_broker_connection_is_cut_find_their_deposits() -> Result<()> {
    let proxy = TcpProxy::start(5672).await?;
    let w = World::with("lookback-broker-cut", &[], |c| {
        c["rmq_config"]["sub_addr"] =
            format!("amqp://guest:guest@127.0.0.1:{}/%2f", proxy.port).into();
    })
    .await?;
    let mut replies = w.replies("topup_resp").await?;
    let daemon = w.start().await?;
    let probe = Probe::new(&w).await?;

    // The daemon's connection to the broker is cut; it goes on following
    // the chain. Topups wait in the broker while their deposits are mined
    // and applied.
    proxy.cut();
    let addresses: Vec<Address> = (0..50).map(|_| Address::random()).collect();
    let bodies = addresses
        .iter()
        .map(|a| signed(topup(&hex_addr(*a), "USDT")))
        .collect::<Result<Vec<_>>>()?;
    w.publish_all("topup", &bodies).await?;
    let (tx, block) = deposits(&w, &addresses[40..], 3_000_000).await?;
    w.mine(5).await?;
    let store = w.store().await?;
    eventually("the deposits' block applied", || async {
        Ok(store
            .recent_blocks("ETH", 1)
            .await?
            .first()
            .is_some_and(|b| b.number >= block + 5))
    })
    .await?;
    store.close().await;

    proxy.restore();
    let seen = replies
        .wait_count("a 2 for each deposit", 10, tx_is(tx, 2))
        .await?;
    assert!(seen.iter().all(|r| r.v["block_height"] == block));
    let blocks = watch_blocks(&w).await?;
    assert!(
        addresses[40..]
            .iter()
            .all(|a| blocks[a] >= (block + 5) as i64),
        "the topups were applied after their deposits' block"
    );
    w.mine(20).await?;
    probe.sync(&w, &mut replies).await?;
    assert_eq!(statuses(&replies, tx), [vec![2; 10], vec![1; 10]].concat());
    daemon.stop().await?;
    w.cleanup().await
}
