//! Two EVM networks served by one daemon, against two real anvil nodes with
//! different chain ids: Ethereum (EIP-1559, USDT with 6 decimals) and a
//! BSC-like network (chain id 56, legacy gas price, native coin `BNB`, USDT
//! with 18 decimals).

mod common;

use alloy::primitives::{Address, B256, U256};
use alloy::providers::{DynProvider, Provider, ProviderBuilder};
use alloy::rpc::types::TransactionRequest;
use anyhow::{Context, Result, bail, ensure};
use common::*;
use m2pool_payment::msg::sign::sign_message;
use m2pool_payment::wallet::Label;
use serde_json::{Value, json};
use std::time::{Duration, Instant};

/// One unit of an 18-decimal token.
const E18: u128 = 1_000_000_000_000_000_000;

/// The second network's node, with the test token deployed on it.
struct Bsc {
    anvil: Anvil,
    rpc: DynProvider,
    accounts: Vec<Address>,
    token: Address,
}

impl Bsc {
    async fn start() -> Result<Self> {
        let anvil = Anvil::spawn(&["--chain-id", "56"])?;
        let rpc = ProviderBuilder::new()
            .connect_http(anvil.http().parse()?)
            .erased();
        let accounts = rpc.get_accounts().await?;
        let token = deploy_test_usdt(&rpc, accounts[0]).await?;
        Ok(Self {
            anvil,
            rpc,
            accounts,
            token,
        })
    }

    /// `bsc_config` for this node.
    fn section(&self) -> Value {
        json!({
            "rpc_url": self.anvil.http(),
            "ws_url": self.anvil.ws(),
            "chain_id": 56,
            "native_symbol": "BNB",
            "fee_model": "legacy",
            "block_time_ms": 1000,
            "confirm_height": 20,
            "poll_interval_ms": 500,
            "rebroadcast_secs": 2,
            "stuck_payout_secs": 4,
            "tokens": [{"symbol": "USDT", "address": hex_addr(self.token), "decimals": 18}]
        })
    }

    /// Mints `units` of the token to `to` (a `Transfer` log to it).
    async fn mint(&self, to: Address, units: U256) -> Result<B256> {
        let r = ITestUSDT::new(self.token, &self.rpc)
            .mint(to, units)
            .from(self.accounts[0])
            .send()
            .await?
            .get_receipt()
            .await?;
        ensure!(r.status(), "mint reverted");
        Ok(r.transaction_hash)
    }

    async fn send_bnb(&self, to: Address, wei: U256) -> Result<B256> {
        let r = self
            .rpc
            .send_transaction(
                TransactionRequest::default()
                    .from(self.accounts[0])
                    .to(to)
                    .value(wei),
            )
            .await?
            .get_receipt()
            .await?;
        ensure!(r.status(), "BNB transfer reverted");
        Ok(r.transaction_hash)
    }

    async fn usdt(&self, of: Address) -> Result<U256> {
        Ok(ITestUSDT::new(self.token, &self.rpc)
            .balanceOf(of)
            .call()
            .await?)
    }

    async fn mine(&self, n: u64) -> Result<()> {
        let _: Value = self
            .rpc
            .raw_request("anvil_mine".into(), (format!("{n:#x}"),))
            .await?;
        Ok(())
    }
}

/// A world whose daemon runs ETH (its own anvil) and BSC (`bsc`).
async fn two_networks(test: &str, bsc: &Bsc) -> Result<World> {
    let section = bsc.section();
    World::with(test, &[], move |v| {
        v["net"] = json!(["ETH", "BSC"]);
        v["bsc_config"] = section;
    })
    .await
}

/// A world running ETH and BSC, the daemon reaching BSC's node through a TCP
/// proxy that can cut it off; `edit` changes the config further.
async fn behind_a_proxy(
    test: &str,
    edit: impl FnOnce(&mut Value),
) -> Result<(Bsc, rpc_proxy::TcpProxy, World)> {
    let bsc = Bsc::start().await?;
    let proxy = rpc_proxy::TcpProxy::start(bsc.anvil.port).await?;
    let mut section = bsc.section();
    section["rpc_url"] = proxy.http().into();
    section["ws_url"] = proxy.ws().into();
    let w = World::with(test, &[], move |v| {
        v["net"] = json!(["ETH", "BSC"]);
        v["bsc_config"] = section;
        edit(v);
    })
    .await?;
    Ok((bsc, proxy, w))
}

/// A new hot wallet, enabled on BSC too, with 100 USDT and 1 ether on ETH
/// and `bnb` wei on BSC.
async fn hot_wallet_on_both(w: &World, bsc: &Bsc, bnb: U256) -> Result<Address> {
    let hot = w.new_wallet(Label::User).await?;
    let store = w.wallets().await?;
    m2pool_payment::wallet::cli::enable(&store, "BSC", hot, Label::User).await?;
    store.close().await;
    w.fund(hot, 100_000_000, ether(1)).await?;
    bsc.send_bnb(hot, bnb).await?;
    Ok(hot)
}

/// Waits until `chain`'s watch of `symbol` for `address` is stored and the
/// daemon has applied a block of `chain`, so a transfer sent next is read.
async fn watched_on(w: &World, chain: &str, symbol: &str, address: Address) -> Result<()> {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Ok(store) = w.store().await {
            let watched = store.is_watched(chain, symbol, address).await;
            let anchored = store
                .recent_blocks(chain, 1)
                .await
                .is_ok_and(|b| !b.is_empty());
            store.close().await;
            if anchored && watched.unwrap_or(false) {
                return Ok(());
            }
        }
        if Instant::now() > deadline {
            bail!("{chain} {symbol} {address}: not watched within {WAIT:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn topup_on(chain: &str, symbol: &str, address: Address) -> Value {
    json!({"chain": chain, "symbol": symbol, "address": hex_addr(address), "timestamp": 1758610297})
}

/// `body` (JSON object text, numbers of any precision: a `Value` would round
/// them through `f64`) signed with the test key.
fn signed_text(body: &str) -> Result<Vec<u8>> {
    let sign = sign_message(KEY, body.as_bytes())?;
    let open = body.strip_suffix('}').context("an object")?;
    Ok(format!(r#"{open},"sign":"{sign}"}}"#).into_bytes())
}

/// A signed withdrawal of `amount` USDT, written exactly.
fn withdraw_on(
    chain: &str,
    queue_id: &str,
    from: Address,
    to: Address,
    amount: &str,
) -> Result<Vec<u8>> {
    signed_text(&format!(
        r#"{{"queue_id":"{queue_id}","from_address":"{}","to_address":"{}","amount":{amount},"chain":"{chain}","symbol":"USDT","timestamp":1758610297}}"#,
        hex_addr(from),
        hex_addr(to)
    ))
}

/// A signed batch payment of `symbol` from `from`: one transfer per
/// (order id, recipient, exact amount).
fn pay_on(
    chain: &str,
    symbol: &str,
    queue_id: &str,
    from: Address,
    items: &[(&str, Address, &str)],
) -> Result<Vec<u8>> {
    let items: Vec<String> = items
        .iter()
        .map(|(order, to, amount)| {
            format!(
                r#"{{"order_id":"{order}","to_address":"{}","amount":{amount}}}"#,
                hex_addr(*to)
            )
        })
        .collect();
    signed_text(&format!(
        r#"{{"queue_id":"{queue_id}","from_address":"{}","chain":"{chain}","symbol":"{symbol}","timestamp":1758610297,"transactions":[{}]}}"#,
        hex_addr(from),
        items.join(",")
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deposits_and_withdrawals_on_two_networks_at_once_are_exact_and_independent() -> Result<()>
{
    let bsc = Bsc::start().await?;
    let w = two_networks("networks", &bsc).await?;
    let mut topups = w.replies("topup_resp").await?;
    let mut withdrawals = w.replies("withdraw_resp").await?;

    // One hot wallet, enabled on both networks, funded on each.
    let hot = hot_wallet_on_both(&w, &bsc, U256::from(E18)).await?;
    bsc.mint(hot, U256::from(10 * E18)).await?;
    let daemon = w.start().await?;

    // Deposits: USDT on ETH; USDT (18 decimals, asked for as `bsc`) and BNB on BSC.
    let (on_eth, on_bsc, bnb_to) = (Address::random(), Address::random(), Address::random());
    w.publish("topup", topup_on("ETH", "USDT", on_eth)).await?;
    w.publish("topup", topup_on("bsc", "usdt", on_bsc)).await?;
    w.publish("topup", topup_on("BSC", "BNB", bnb_to)).await?;
    watched_on(&w, "ETH", "USDT", on_eth).await?;
    watched_on(&w, "BSC", "USDT", on_bsc).await?;
    watched_on(&w, "BSC", "BNB", bnb_to).await?;
    let (eth_tx, _) = w.send_usdt(w.user(), on_eth, 1_500_000).await?;
    let bsc_tx = bsc.mint(on_bsc, U256::from(E18 + 1)).await?;
    let bnb_tx = bsc.send_bnb(bnb_to, U256::from(E18 / 4)).await?;

    let seen = topups
        .wait("ETH USDT status 2", deposit_of(eth_tx, 2))
        .await?;
    assert!(seen.raw.contains(r#""amount":1.5,"#), "{}", seen.raw);
    assert_eq!(seen.v["chain"], "ETH");
    let seen = topups
        .wait("BSC USDT status 2", deposit_of(bsc_tx, 2))
        .await?;
    assert!(
        seen.raw.contains(r#""amount":1.000000000000000001,"#),
        "18 decimals, exact: {}",
        seen.raw
    );
    assert_eq!(
        (seen.v["chain"].as_str(), seen.v["symbol"].as_str()),
        (Some("BSC"), Some("USDT"))
    );
    let seen = topups.wait("BNB status 2", deposit_of(bnb_tx, 2)).await?;
    assert!(seen.raw.contains(r#""amount":0.25,"#), "{}", seen.raw);
    assert_eq!(
        (seen.v["chain"].as_str(), seen.v["symbol"].as_str()),
        (Some("BSC"), Some("BNB"))
    );

    // Withdrawals from the same wallet on both networks.
    let (to_eth, to_bsc) = (Address::random(), Address::random());
    w.publish_raw(
        "withdraw",
        &withdraw_on("ETH", "n-eth", hot, to_eth, "2.5")?,
    )
    .await?;
    w.publish_raw(
        "withdraw",
        &withdraw_on("BSC", "n-bsc", hot, to_bsc, "3.000000000000000007")?,
    )
    .await?;
    let sent_eth = withdrawals
        .wait("ETH payout sent", payout_of("n-eth", 2))
        .await?;
    let sent_bsc = withdrawals
        .wait("BSC payout sent", payout_of("n-bsc", 2))
        .await?;
    assert!(
        sent_bsc.raw.contains(r#""amount":3.000000000000000007,"#),
        "{}",
        sent_bsc.raw
    );
    let hash = |r: &Reply| -> Result<B256> {
        r.v["tx_hash"]
            .as_str()
            .context("tx_hash")?
            .parse()
            .context("a hash")
    };
    let on_bsc_chain: Value = bsc
        .rpc
        .raw_request("eth_getTransactionByHash".into(), (hash(&sent_bsc)?,))
        .await?;
    assert_eq!(on_bsc_chain["type"], "0x0", "legacy on BSC: {on_bsc_chain}");
    assert_eq!(on_bsc_chain["chainId"], "0x38", "replay-protected for 56");
    assert_eq!(on_bsc_chain["nonce"], "0x0", "BSC's own nonce");
    let on_eth_chain: Value = w
        .eth
        .raw_request("eth_getTransactionByHash".into(), (hash(&sent_eth)?,))
        .await?;
    assert_eq!(
        on_eth_chain["type"], "0x2",
        "EIP-1559 on ETH: {on_eth_chain}"
    );
    assert_eq!(on_eth_chain["nonce"], "0x0", "ETH's own nonce");

    // Final on each network by its own blocks.
    w.mine(20).await?;
    bsc.mine(20).await?;
    for (what, tx) in [("ETH", eth_tx), ("BSC", bsc_tx), ("BNB", bnb_tx)] {
        topups
            .wait(&format!("{what} deposit final"), deposit_of(tx, 1))
            .await?;
    }
    withdrawals
        .wait("ETH payout final", payout_of("n-eth", 1))
        .await?;
    withdrawals
        .wait("BSC payout final", payout_of("n-bsc", 1))
        .await?;
    assert_eq!(w.usdt_balance(to_eth).await?, U256::from(2_500_000u64));
    assert_eq!(bsc.usdt(to_bsc).await?, U256::from(3 * E18 + 7));
    assert_eq!(bsc.usdt(hot).await?, U256::from(7 * E18 - 7));

    // The ledger keeps each network's movements apart, exact.
    eventually("each network's ledger records its payout", || async {
        let store = w.wallets().await?;
        let eth = store.balance("ETH", hot, "USDT").await?;
        let bsc_usdt = store.balance("BSC", hot, "USDT").await?;
        store.close().await;
        Ok(eth == alloy::primitives::I256::try_from(-2_500_000i64)?
            && bsc_usdt == -alloy::primitives::I256::try_from(3 * E18 + 7)?)
    })
    .await?;

    // A chain the daemon does not run is refused, naming the ones it does.
    w.publish("topup", topup_on("TRON", "USDT", Address::random()))
        .await?;
    let refused = topups
        .wait("refusal", |v| v["chain"] == "TRON" && v["status"] == 0)
        .await?;
    let error = refused.v["error"].as_str().unwrap_or_default();
    assert!(error.contains("ETH, BSC"), "{error}");

    // BSC's node goes away: Ethereum's answers keep coming.
    let Bsc { mut anvil, .. } = bsc;
    anvil.terminate().await?;
    let later = Address::random();
    w.publish("topup", topup_on("ETH", "USDT", later)).await?;
    watched_on(&w, "ETH", "USDT", later).await?;
    let (tx, _) = w.send_usdt(w.user(), later, 4_000_000).await?;
    let seen = topups
        .wait("ETH deposit while BSC is down", deposit_of(tx, 2))
        .await?;
    assert!(seen.raw.contains(r#""amount":4,"#), "{}", seen.raw);

    daemon.stop().await?;
    w.cleanup().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_network_cut_off_or_reorganised_leaves_the_other_untouched() -> Result<()> {
    let port = http::free_port()?;
    let (bsc, proxy, w) = behind_a_proxy("networks-cut", http::with_http(port, json!({}))).await?;
    let mut topups = w.replies("topup_resp").await?;
    let daemon = w.start().await?;
    let (on_eth, on_bsc) = (Address::random(), Address::random());
    w.publish("topup", topup_on("ETH", "USDT", on_eth)).await?;
    w.publish("topup", topup_on("BSC", "USDT", on_bsc)).await?;
    watched_on(&w, "ETH", "USDT", on_eth).await?;
    watched_on(&w, "BSC", "USDT", on_bsc).await?;

    // BSC's node is cut off; its chain goes on, and so does Ethereum's.
    proxy.cut();
    let closed = proxy.closed();
    let bsc_tx = bsc.mint(on_bsc, U256::from(5 * E18)).await?;
    bsc.mine(3).await?;
    let (eth_tx, _) = w.send_usdt(w.user(), on_eth, 1_000_000).await?;
    topups
        .wait("an ETH deposit while BSC is cut off", deposit_of(eth_tx, 2))
        .await?;
    let h = http::wait_health(port, "BSC's node lost", WAIT, |_, h| {
        h["chains"]["BSC"]["node_connected"] == false
    })
    .await?;
    assert_eq!(h["chains"]["ETH"]["node_connected"], true, "{h}");
    http::wait_metrics(
        port,
        &[
            ("m2pool_chain_node_connected{chain=\"BSC\"}", 0.0),
            ("m2pool_chain_node_connected{chain=\"ETH\"}", 1.0),
        ],
    )
    .await?;
    eventually("the daemon keeps trying BSC's node", || async {
        Ok(proxy.closed() >= closed + 3)
    })
    .await?;
    topups.drain();
    assert!(
        topups.matching(deposit_of(bsc_tx, 2)).is_empty(),
        "the cut really hid BSC's node"
    );

    // Back: BSC catches up from its cursor.
    proxy.restore();
    let seen = topups
        .wait("the BSC deposit made during the cut", deposit_of(bsc_tx, 2))
        .await?;
    assert!(seen.raw.contains(r#""amount":5,"#), "{}", seen.raw);
    http::wait_health(port, "BSC's node back", WAIT, |_, h| {
        h["chains"]["BSC"]["node_connected"] == true
    })
    .await?;

    // BSC reorganises the deposit away; Ethereum is not disturbed.
    let receipt = bsc
        .rpc
        .get_transaction_receipt(bsc_tx)
        .await?
        .context("mined")?;
    let block = receipt.block_number.context("block")?;
    let depth = bsc.rpc.get_block_number().await? - block + 1;
    let _: Value = bsc
        .rpc
        .raw_request("anvil_reorg".into(), (depth, Vec::<Value>::new()))
        .await?;
    let (eth_again, _) = w.send_usdt(w.user(), on_eth, 2_000_000).await?;
    topups
        .wait(
            "an ETH deposit during BSC's reorg",
            deposit_of(eth_again, 2),
        )
        .await?;
    bsc.mine(25).await?;
    w.mine(20).await?;
    let failed = topups
        .wait("the reorged BSC deposit fails", deposit_of(bsc_tx, 0))
        .await?;
    assert!(
        failed.v["error"]
            .as_str()
            .is_some_and(|e| e.contains("left the canonical chain")),
        "{}",
        failed.raw
    );
    for tx in [eth_tx, eth_again] {
        topups.wait("ETH deposits final", deposit_of(tx, 1)).await?;
    }
    let bsc_answers: Vec<u64> = topups
        .matching(|v| v["tx_hash"] == format!("{bsc_tx:#x}"))
        .iter()
        .filter_map(|r| r.v["status"].as_u64())
        .collect();
    assert_eq!(bsc_answers, vec![2, 0], "seen, then failed; never final");
    daemon.stop().await?;
    w.cleanup().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_payments_and_a_cancel_on_two_networks_at_once() -> Result<()> {
    let (bsc, proxy, w) = behind_a_proxy("networks-pay", |_| {}).await?;
    let mut pays = w.replies("pay_resp").await?;
    let mut withdrawals = w.replies("withdraw_resp").await?;
    let mut removes = w.replies("remove_resp").await?;
    let hot = hot_wallet_on_both(&w, &bsc, U256::from(2 * E18)).await?;

    // BSC's node is out of reach: a BSC withdrawal waits, queued, and is
    // cancelled there, while ETH pays.
    proxy.cut();
    let daemon = w.start().await?;
    let never = Address::random();
    w.publish_raw("withdraw", &withdraw_on("BSC", "c-bsc", hot, never, "1")?)
        .await?;
    eventually("the BSC payout is queued", || async {
        let Ok(store) = w.store().await else {
            return Ok(false);
        };
        let queued = store
            .payouts("BSC")
            .await
            .is_ok_and(|p| p.iter().any(|p| p.queue_id == "c-bsc"));
        store.close().await;
        Ok(queued)
    })
    .await?;
    w.publish(
        "remove",
        json!({"queue_id": "c-bsc", "chain": "BSC", "symbol": "USDT", "address": hex_addr(hot),
               "timestamp": 1758610297}),
    )
    .await?;
    let r = removes
        .wait("the cancel's answer", |v| v["queue_id"] == "c-bsc")
        .await?;
    assert_eq!(r.v["status"], 1, "{}", r.raw);
    let c = withdrawals.wait("cancelled", payout_of("c-bsc", 0)).await?;
    assert_eq!(
        (c.v["error"].as_str(), c.v["chain"].as_str()),
        (Some("cancelled"), Some("BSC"))
    );

    let eth_to: Vec<Address> = (0..2).map(|_| Address::random()).collect();
    let bsc_to: Vec<Address> = (0..2).map(|_| Address::random()).collect();
    w.publish_raw(
        "pay",
        &pay_on(
            "ETH",
            "USDT",
            "p-eth",
            hot,
            &[("e-1", eth_to[0], "1.5"), ("e-2", eth_to[1], "0.000001")],
        )?,
    )
    .await?;
    w.publish_raw(
        "pay",
        &pay_on(
            "BSC",
            "BNB",
            "p-bsc",
            hot,
            &[
                ("b-1", bsc_to[0], "0.1"),
                ("b-2", bsc_to[1], "0.000000000000000001"),
            ],
        )?,
    )
    .await?;
    let order = |q: &'static str, id: &'static str, status: u64| {
        move |v: &Value| v["queue_id"] == q && v["order_id"] == id && v["status"] == status
    };
    for id in ["e-1", "e-2"] {
        pays.wait("ETH items sent while BSC is cut off", order("p-eth", id, 2))
            .await?;
    }
    proxy.restore();
    for id in ["b-1", "b-2"] {
        let r = pays.wait("BSC items sent", order("p-bsc", id, 2)).await?;
        assert_eq!(r.v["symbol"], "BNB");
    }
    w.mine(20).await?;
    bsc.mine(20).await?;
    for (q, id) in [
        ("p-eth", "e-1"),
        ("p-eth", "e-2"),
        ("p-bsc", "b-1"),
        ("p-bsc", "b-2"),
    ] {
        pays.wait("final", order(q, id, 1)).await?;
    }
    assert_eq!(w.usdt_balance(eth_to[0]).await?, U256::from(1_500_000u64));
    assert_eq!(w.usdt_balance(eth_to[1]).await?, U256::from(1u64));
    assert_eq!(bsc.rpc.get_balance(bsc_to[0]).await?, U256::from(E18 / 10));
    assert_eq!(bsc.rpc.get_balance(bsc_to[1]).await?, U256::from(1u64));
    // The cancelled payout took no nonce: BSC's two are the batch's.
    assert_eq!(bsc.rpc.get_transaction_count(hot).await?, 2);
    assert_eq!(w.nonce(hot).await?, 2);
    assert_eq!(bsc.usdt(never).await?, U256::ZERO);
    withdrawals.drain();
    assert_eq!(
        withdrawals.matching(|v| v["queue_id"] == "c-bsc").len(),
        1,
        "the cancelled payout answered once"
    );
    daemon.stop().await?;
    w.cleanup().await
}
