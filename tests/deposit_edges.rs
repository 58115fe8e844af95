//! Deposits at the edges: transfers that are no deposits, amounts a float
//! would round, a token taken out of the config, and `confirm_height`
//! changed between runs. Against real RabbitMQ, SQLite and anvil.

mod common;

use alloy::primitives::{Address, B256, U256};
use anyhow::Result;
use common::*;
use serde_json::Value;

fn tx_is(tx: B256, status: u64) -> impl Fn(&Value) -> bool {
    let hash = format!("{tx:#x}");
    move |v| v["tx_hash"] == hash && v["status"] == status
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
