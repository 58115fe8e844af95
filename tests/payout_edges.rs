//! Payouts at the edges, against real RabbitMQ, SQLite and anvil: a token
//! whose `transfer` returns `false`, a reorganisation deeper than
//! `confirm_height` under final answers, and a token taken out of the config
//! while a deposit and a payout of it are pending.

mod common;

use alloy::network::TransactionBuilder;
use alloy::primitives::{Address, B256, I256, U256, address};
use alloy::providers::Provider;
use alloy::rpc::types::TransactionRequest;
use anyhow::{Context, Result, ensure};
use common::http::*;
use common::rpc_proxy;
use common::*;
use m2pool_payment::wallet::Label;
use serde_json::{Value, json};

alloy::sol! {
    #[sol(rpc)]
    interface ITestFalseToken {
        function mint(address to, uint256 value) external;
        function seize(address from, address to, uint256 value) external;
        function balanceOf(address owner) external view returns (uint256);
    }
}

/// anvil's first account, which deploys the test tokens.
const DEPLOYER: Address = address!("f39fd6e51aad88f6f4ce6ab8827279cfffb92266");

fn withdraw(
    queue_id: &str,
    from: Address,
    to: Address,
    symbol: &str,
    amount: &str,
) -> Result<Value> {
    let mut v = json!({"queue_id": queue_id, "from_address": hex_addr(from), "to_address": hex_addr(to),
                       "chain": "ETH", "symbol": symbol, "timestamp": 1758610297});
    v["amount"] = serde_json::from_str(amount)?;
    Ok(v)
}

fn is(queue_id: &str, status: u64) -> impl Fn(&Value) -> bool {
    let q = queue_id.to_owned();
    move |v| v["queue_id"] == q && v["status"] == status
}

fn tx_is(tx: B256, status: u64) -> impl Fn(&Value) -> bool {
    let hash = format!("{tx:#x}");
    move |v| v["tx_hash"] == hash && v["status"] == status
}

fn tx_of(r: &Reply) -> Result<B256> {
    r.v["tx_hash"]
        .as_str()
        .context("tx_hash")?
        .parse()
        .context("a hash")
}

/// The ledger rows (symbol, delta, kind) of `address`.
async fn ledger(w: &World, address: Address) -> Result<Vec<(String, I256, String)>> {
    let store = w.wallets().await?;
    let rows = store.ledger_of("ETH", address).await?;
    store.close().await;
    Ok(rows.into_iter().map(|(s, d, k, _)| (s, d, k)).collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_transfer_that_returns_false_is_answered_0_and_not_debited() -> Result<()> {
    // The world deploys USDT (deployer nonce 0) and mints (nonce 1): the
    // false-returning token is the deployer's next contract.
    let false_token = DEPLOYER.create(2);
    let w = World::with("false-token", &[], |c| {
        if let Some(tokens) = c["eth_config"]["tokens"].as_array_mut() {
            tokens
                .push(json!({"symbol": "FALSE", "address": hex_addr(false_token), "decimals": 6}));
        }
    })
    .await?;
    let code = hex::decode(include_str!("contracts/TestFalseToken.bin").trim())?;
    let receipt = w
        .eth
        .send_transaction(
            TransactionRequest::default()
                .with_from(DEPLOYER)
                .with_deploy_code(code),
        )
        .await?
        .get_receipt()
        .await?;
    ensure!(
        receipt.contract_address == Some(false_token),
        "test bug: the token is at {:?}",
        receipt.contract_address
    );
    let token = ITestFalseToken::new(false_token, &w.eth);
    let mut replies = w.replies("withdraw_resp").await?;
    let user = w.new_wallet(Label::User).await?;
    w.fund(user, 0, ether(1)).await?;
    token
        .mint(user, U256::from(10_000_000u64))
        .from(DEPLOYER)
        .send()
        .await?
        .get_receipt()
        .await?;
    let to = Address::random();
    let daemon = w.start().await?;

    // The gateway checks the balance and signs; before its transfer is
    // mined the wallet is emptied (in the same block, ahead of it).
    let _: Value = w
        .eth
        .raw_request("evm_setAutomine".into(), (false,))
        .await?;
    w.publish("withdraw", withdraw("f-1", user, to, "FALSE", "5")?)
        .await?;
    let sent = replies.wait("status 2", is("f-1", 2)).await?;
    let payout = tx_of(&sent)?;
    let seize = token
        .seize(user, DEPLOYER, U256::from(10_000_000u64))
        .from(DEPLOYER)
        .gas(100_000)
        .max_priority_fee_per_gas(100_000_000_000)
        .max_fee_per_gas(1_000_000_000_000)
        .send()
        .await?;
    w.mine(1).await?;
    let seized = w
        .eth
        .get_transaction_receipt(*seize.tx_hash())
        .await?
        .context("seize mined")?;
    let paid = w
        .eth
        .get_transaction_receipt(payout)
        .await?
        .context("payout mined")?;
    ensure!(
        seized.block_number == paid.block_number
            && seized.transaction_index < paid.transaction_index,
        "test bug: the seize must come first in the payout's block"
    );
    assert!(
        paid.status(),
        "the transfer returned false without reverting"
    );
    assert!(paid.inner.logs().is_empty(), "and logged nothing");
    assert_eq!(token.balanceOf(to).call().await?, U256::ZERO);

    let _: Value = w.eth.raw_request("evm_setAutomine".into(), (true,)).await?;
    w.mine(20).await?;
    let done = replies.wait("status 0", is("f-1", 0)).await?;
    assert_eq!(tx_of(&done)?, payout, "{}", done.raw);
    assert!(
        done.v["error"]
            .as_str()
            .is_some_and(|e| e.contains("did not transfer")),
        "{}",
        done.raw
    );
    // The ledger has the gas it cost, and no debit of the token.
    eventually("the fee in the ledger", || async {
        Ok(ledger(&w, user)
            .await?
            .iter()
            .any(|(s, _, k)| s == "ETH" && k == "fee"))
    })
    .await?;
    let rows = ledger(&w, user).await?;
    assert_eq!(rows.len(), 1, "only the fee: {rows:?}");
    assert_eq!(
        replies.matching(|v| v["queue_id"] == "f-1").len(),
        2,
        "a 2, then the 0"
    );
    daemon.stop().await?;
    w.cleanup().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reorganisation_deeper_than_confirm_height_under_final_answers_is_reported() -> Result<()>
{
    let port = free_port()?;
    let w = World::with("deep-reorg", &[], with_http(port, json!({}))).await?;
    let mut withdrawals = w.replies("withdraw_resp").await?;
    let mut topups = w.replies("topup_resp").await?;
    let user = w.new_wallet(Label::User).await?;
    w.fund(user, 100_000_000, ether(1)).await?;
    let daemon = w.start().await?;
    let addr = Address::random();
    w.publish("topup", topup(&hex_addr(addr), "USDT")).await?;
    w.wait_watched("USDT", addr, true).await?;
    let (deposit, block) = w.send_usdt(w.user(), addr, 7_000_000).await?;
    w.publish(
        "withdraw",
        withdraw("d-1", user, Address::random(), "USDT", "3")?,
    )
    .await?;
    withdrawals.wait("status 2", is("d-1", 2)).await?;
    w.mine(21).await?;
    withdrawals.wait("status 1", is("d-1", 1)).await?;
    topups.wait("deposit status 1", tx_is(deposit, 1)).await?;
    wait_health(port, "ok", WAIT, |s, h| s == 200 && h["status"] == "ok").await?;

    // Both answers' blocks are taken back, deeper than confirm_height.
    let depth = w.head().await? - block + 1;
    assert!(depth > 20);
    let _: Value = w
        .eth
        .raw_request("anvil_reorg".into(), (depth, Vec::<Value>::new()))
        .await?;
    w.mine(1).await?;
    let h = wait_health(port, "503 naming both", WAIT, |s, h| {
        let p = h["problems"].to_string();
        s == 503 && p.contains("payout queue_id `d-1`") && p.contains(&format!("{deposit:#x}"))
    })
    .await?;
    assert!(
        h["problems"].to_string().contains("check it by hand"),
        "{h}"
    );
    wait_metrics(
        port,
        &[
            ("m2pool_final_answers_reorged_total{kind=\"deposit\"}", 1.0),
            ("m2pool_final_answers_reorged_total{kind=\"payout\"}", 1.0),
        ],
    )
    .await?;
    daemon.stop().await?;
    w.cleanup().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_keep_their_decimals_when_the_token_leaves_the_config() -> Result<()> {
    let mut w = World::new("decimals").await?;
    let mut withdrawals = w.replies("withdraw_resp").await?;
    let mut topups = w.replies("topup_resp").await?;
    let user = w.new_wallet(Label::User).await?;
    w.fund(user, 100_000_000, ether(1)).await?;
    let daemon = w.start().await?;
    let addr = Address::random();
    w.publish("topup", topup(&hex_addr(addr), "USDT")).await?;
    w.wait_watched("USDT", addr, true).await?;
    let (deposit, _) = w.send_usdt(w.user(), addr, 100_500_000).await?;
    let seen = topups.wait("deposit status 2", tx_is(deposit, 2)).await?;
    assert!(seen.raw.contains(r#""amount":100.5,"#), "{}", seen.raw);
    w.publish(
        "withdraw",
        withdraw("k-1", user, Address::random(), "USDT", "50.25")?,
    )
    .await?;
    let sent = withdrawals.wait("status 2", is("k-1", 2)).await?;
    assert!(sent.raw.contains(r#""amount":50.25,"#), "{}", sent.raw);
    daemon.stop().await?;

    // USDT leaves the token table; what was pending is answered in its units.
    w.config_json["eth_config"]["tokens"] = json!([]);
    let daemon = w.start().await?;
    w.mine(20).await?;
    let done = topups.wait("deposit status 1", tx_is(deposit, 1)).await?;
    assert!(done.raw.contains(r#""amount":100.5,"#), "{}", done.raw);
    let paid = withdrawals.wait("status 1", is("k-1", 1)).await?;
    assert!(paid.raw.contains(r#""amount":50.25,"#), "{}", paid.raw);
    daemon.stop().await?;
    w.cleanup().await
}

/// A remove naming `queue_id`, from `wallet`'s address.
fn cancel(wallet: Address, queue_id: &str) -> Value {
    let mut v = topup(&hex_addr(wallet), "USDT");
    v["queue_id"] = queue_id.into();
    v
}

/// The remove cancelling `queue_id` is answered 1, and the payout 0
/// `cancelled`.
async fn cancelled(
    w: &World,
    removes: &mut Replies,
    withdrawals: &mut Replies,
    wallet: Address,
    queue_id: &str,
) -> Result<()> {
    w.publish("remove", cancel(wallet, queue_id)).await?;
    let r = removes
        .wait("the cancel answered", |v| v["queue_id"] == queue_id)
        .await?;
    assert_eq!(r.v["status"], 1, "{}", r.raw);
    let p = withdrawals
        .wait("the payout answered cancelled", is(queue_id, 0))
        .await?;
    assert_eq!(p.v["error"], "cancelled", "{}", p.raw);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_payout_waiting_for_the_node_can_be_cancelled() -> Result<()> {
    // An ether payout to an address whose code the node cannot tell: its
    // gas cannot be decided, so it waits for the node.
    let unknown = Address::random();
    let mut w = World::new("cancel-node-wait").await?;
    let proxy =
        rpc_proxy::RpcProxy::start(w.anvil.http(), Some(rpc_proxy::Refuse::CodeOf(unknown)))
            .await?;
    w.config_json["eth_config"]["rpc_url"] = proxy.url().into();
    let mut withdrawals = w.replies("withdraw_resp").await?;
    let mut removes = w.replies("remove_resp").await?;
    let user = w.new_wallet(Label::User).await?;
    w.fund(user, 100_000_000, ether(2)).await?;
    let daemon = w.start().await?;
    w.publish("withdraw", withdraw("n-1", user, unknown, "ETH", "1")?)
        .await?;
    eventually("the payout waits for the node", || async {
        Ok(proxy.code_refused() >= 2)
    })
    .await?;
    cancelled(&w, &mut removes, &mut withdrawals, user, "n-1").await?;

    // The node answers again: nothing is sent for it, and the wallet's next
    // payout takes the nonce it would have had.
    proxy.set_refuse(None);
    w.publish(
        "withdraw",
        withdraw("n-2", user, Address::random(), "USDT", "1")?,
    )
    .await?;
    let sent = withdrawals.wait("the next payout", is("n-2", 2)).await?;
    let tx = w
        .eth
        .get_transaction_by_hash(tx_of(&sent)?)
        .await?
        .context("sent")?;
    assert_eq!(alloy::consensus::Transaction::nonce(&tx), 0, "no gap");
    assert_eq!(
        w.eth.get_balance(unknown).await?,
        U256::ZERO,
        "nothing paid"
    );
    assert_eq!(w.nonce(user).await?, 1, "one transaction from the wallet");
    daemon.stop().await?;
    w.cleanup().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_payout_waiting_for_the_wallet_store_can_be_cancelled() -> Result<()> {
    let db_proxy = rpc_proxy::TcpProxy::start(3306).await?;
    let (db, mut mysql) = mariadb_database("cancelwait").await?;
    mysql["wallet"]["port"] = db_proxy.port.into();
    let w = World::with("cancel-wallet-wait", &[], |c| c["mysql_config"] = mysql).await?;
    let mut withdrawals = w.replies("withdraw_resp").await?;
    let mut removes = w.replies("remove_resp").await?;
    let user = w.new_wallet(Label::User).await?;
    w.fund(user, 100_000_000, ether(1)).await?;
    let daemon = w.start().await?;
    w.publish(
        "withdraw",
        withdraw("s-1", user, Address::random(), "USDT", "1")?,
    )
    .await?;
    withdrawals.wait("the first payout", is("s-1", 2)).await?;

    // The wallet store goes away: the next payout waits for its key.
    db_proxy.cut();
    let closed = db_proxy.closed();
    w.publish(
        "withdraw",
        withdraw("s-2", user, Address::random(), "USDT", "1")?,
    )
    .await?;
    eventually("the payout waits for the wallet store", || async {
        Ok(db_proxy.closed() > closed + 1)
    })
    .await?;
    cancelled(&w, &mut removes, &mut withdrawals, user, "s-2").await?;

    db_proxy.restore();
    w.publish(
        "withdraw",
        withdraw("s-3", user, Address::random(), "USDT", "1")?,
    )
    .await?;
    let sent = withdrawals.wait("the next payout", is("s-3", 2)).await?;
    let tx = w
        .eth
        .get_transaction_by_hash(tx_of(&sent)?)
        .await?
        .context("sent")?;
    assert_eq!(alloy::consensus::Transaction::nonce(&tx), 1, "no gap");
    assert_eq!(w.transfers_from(user).await?.len(), 2, "s-2 was not paid");
    daemon.stop().await?;
    let result = w.cleanup().await;
    drop_mariadb_database(&db).await?;
    result
}

/// Whether payout `queue_id`'s current transaction is the transfer that
/// cancels it.
async fn cancel_signed(w: &World, queue_id: &str) -> Result<bool> {
    let store = w.store().await?;
    let p = store
        .payouts("ETH")
        .await?
        .into_iter()
        .find(|p| p.queue_id == queue_id)
        .context("the payout")?;
    let mut tx = store.begin().await?;
    let current = match p.tx_hash {
        Some(h) => tx.signed_tx_of(h).await?,
        None => None,
    };
    drop(tx);
    store.close().await;
    Ok(current.is_some_and(|(_, cancels)| cancels))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_payout_the_node_keeps_refusing_is_reported_and_can_be_cancelled() -> Result<()> {
    const REFUSAL: &str = "insufficient funds for gas * price + value";
    let port = free_port()?;
    let mut w = World::with("refused", &[], with_http(port, json!({}))).await?;
    let proxy = rpc_proxy::RpcProxy::start(w.anvil.http(), None).await?;
    w.config_json["eth_config"]["rpc_url"] = proxy.url().into();
    let mut withdrawals = w.replies("withdraw_resp").await?;
    let mut removes = w.replies("remove_resp").await?;
    let user = w.new_wallet(Label::User).await?;
    w.fund(user, 100_000_000, ether(1)).await?;
    let daemon = w.start().await?;
    wait_health(port, "ok", WAIT, |s, h| s == 200 && h["status"] == "ok").await?;

    // The node takes none of the wallet's transactions (its ether was spent
    // elsewhere, say): the first payout and the one behind it wait, signed.
    proxy.set_refuse(Some(rpc_proxy::Refuse::SendRaw(REFUSAL)));
    w.publish(
        "withdraw",
        withdraw("r-1", user, Address::random(), "USDT", "1")?,
    )
    .await?;
    w.publish(
        "withdraw",
        withdraw("r-2", user, Address::random(), "USDT", "2")?,
    )
    .await?;
    // After stuck_payout_secs (4 s here) of refusals: said in plain words.
    let h = wait_health(port, "503 naming the refused payout", WAIT, |s, h| {
        let p = h["problems"].to_string();
        s == 503 && p.contains("queue_id `r-1`") && p.contains(REFUSAL)
    })
    .await?;
    assert!(h["problems"].to_string().contains("(nonce 0)"), "{h}");
    wait_metrics(port, &[("m2pool_payouts_refused_by_node", 2.0)]).await?;

    // A remove with its queue_id cancels it: its nonce goes to a zero-value
    // transfer to the wallet itself.
    w.publish("remove", cancel(user, "r-1")).await?;
    let r = removes
        .wait("the cancel answered", |v| v["queue_id"] == "r-1")
        .await?;
    assert_eq!(r.v["status"], 1, "{}", r.raw);
    assert!(
        r.v["error"]
            .as_str()
            .is_some_and(|e| e.contains("being cancelled") && e.contains("nonce 0")),
        "{}",
        r.raw
    );
    eventually("the cancelling transfer is signed", || async {
        cancel_signed(&w, "r-1").await
    })
    .await?;

    // The node takes transactions again: the cancel is mined with nonce 0,
    // the wallet's next payout goes on.
    proxy.set_refuse(None);
    withdrawals.wait("r-2 sent", is("r-2", 2)).await?;
    w.mine(21).await?;
    let done = withdrawals.wait("r-1 cancelled", is("r-1", 0)).await?;
    assert_eq!(done.v["error"], "cancelled", "{}", done.raw);
    let cancel_tx = w
        .eth
        .get_transaction_by_hash(tx_of(&done)?)
        .await?
        .context("the cancelling transfer")?;
    use alloy::consensus::Transaction as _;
    assert_eq!(cancel_tx.nonce(), 0);
    assert_eq!(cancel_tx.to(), Some(user), "to the wallet itself");
    assert_eq!(cancel_tx.value(), U256::ZERO);
    withdrawals.wait("r-2 final", is("r-2", 1)).await?;
    assert_eq!(w.transfers_from(user).await?.len(), 1, "only r-2 paid");
    assert!(
        withdrawals.matching(is("r-1", 2)).is_empty(),
        "r-1 was never sent, and never said so"
    );
    wait_health(port, "ok again", WAIT, |s, h| {
        s == 200 && h["status"] == "ok"
    })
    .await?;
    wait_metrics(port, &[("m2pool_payouts_refused_by_node", 0.0)]).await?;
    daemon.stop().await?;
    w.cleanup().await
}

/// A node that answers "taken" to a transaction and then loses it (evicted
/// from its pool) answers "taken" again at every rebroadcast. The payout
/// still counts as stuck (`stuck_payout_secs` 4, rebroadcasts every 2 s in
/// the test world, as the defaults 180 and 30 put rebroadcasts inside the
/// stuck limit too), is replaced, and pays once.
#[tokio::test]
async fn a_payout_the_node_takes_and_loses_is_replaced_and_paid_once() -> Result<()> {
    let mut w = World::new("lost-by-node").await?;
    let proxy =
        rpc_proxy::RpcProxy::start(w.anvil.http(), Some(rpc_proxy::Refuse::LoseFirstSend)).await?;
    w.config_json["eth_config"]["rpc_url"] = proxy.url().into();
    let mut withdrawals = w.replies("withdraw_resp").await?;
    let user = w.new_wallet(Label::User).await?;
    w.fund(user, 100_000_000, ether(2)).await?;
    let to = Address::random();
    let daemon = w.start().await?;
    w.publish("withdraw", withdraw("lost-1", user, to, "USDT", "1")?)
        .await?;
    let sent = withdrawals.wait("status 2", is("lost-1", 2)).await?;
    let lost = tx_of(&sent)?;
    eventually("the replacement is mined", || async {
        Ok(w.nonce(user).await? == 1)
    })
    .await?;
    ensure!(
        proxy.lost_sends() >= 2,
        "the lost transaction was sent again and taken again ({} sends)",
        proxy.lost_sends()
    );
    w.mine(20).await?;
    let done = withdrawals.wait("status 1", is("lost-1", 1)).await?;
    let paid = tx_of(&done)?;
    assert_ne!(paid, lost, "the final answer names the replacement");
    assert!(
        w.eth.get_transaction_receipt(lost).await?.is_none(),
        "the lost transaction never reached the chain"
    );
    assert_eq!(
        w.usdt_balance(to).await?,
        U256::from(1_000_000u64),
        "paid once"
    );
    daemon.stop().await?;
    w.cleanup().await
}

/// A rebroadcast leaves a transaction signed within the last interval
/// (`rebroadcast_secs`, 2 s in the test world) to the broadcaster that has
/// just sent it: the node is asked to take each payout once, and again only
/// once it has waited a whole interval unmined since it was signed. (It used
/// to go again at the first rebroadcast after its signing, always within the
/// interval.) The withdrawals come in four waves half a second apart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebroadcast_does_not_send_again_what_was_just_sent() -> Result<()> {
    let mut w = World::new("young-rebroadcast").await?;
    let proxy = rpc_proxy::RpcProxy::start(w.anvil.http(), None).await?;
    w.config_json["eth_config"]["rpc_url"] = proxy.url().into();
    let interval = std::time::Duration::from_secs(
        w.config_json["eth_config"]["rebroadcast_secs"]
            .as_u64()
            .context("rebroadcast_secs")?,
    );
    let mut withdrawals = w.replies("withdraw_resp").await?;
    let user = w.new_wallet(Label::User).await?;
    w.fund(user, 100_000_000, ether(1)).await?;
    // Nothing is mined from here on: every payout stays unmined, so each
    // rebroadcast after its first interval sends it again.
    let _: Value = w
        .eth
        .raw_request("evm_setAutomine".into(), (false,))
        .await?;
    let daemon = w.start().await?;
    let to = Address::random();
    for wave in 0..4 {
        for i in 0..5 {
            let id = format!("y-{wave}-{i}");
            w.publish("withdraw", withdraw(&id, user, to, "USDT", "1")?)
                .await?;
        }
        for i in 0..5 {
            let id = format!("y-{wave}-{i}");
            withdrawals
                .wait("the wave sent", |v| v["queue_id"] == id && v["status"] == 2)
                .await?;
        }
        // The waves' spacing in time is what the test is about.
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
    // When each payout's transaction was signed, by its raw bytes.
    let store = w.store().await?;
    let signed: std::collections::HashMap<String, i64> = store
        .unmined_txs("ETH")
        .await?
        .into_iter()
        .map(|(_, t)| {
            (
                format!("0x{}", alloy::primitives::hex::encode(&t.raw)),
                t.signed_at,
            )
        })
        .collect();
    store.close().await;
    assert_eq!(signed.len(), 20, "one transaction per payout");
    eventually("every payout sent a second time", || async {
        let sends = proxy.sends();
        Ok(signed
            .keys()
            .all(|raw| sends.iter().filter(|(_, r)| r == raw).count() >= 2))
    })
    .await?;
    let sends = proxy.sends();
    for (raw, signed_at) in &signed {
        let again = sends
            .iter()
            .filter(|(_, r)| r == raw)
            .map(|(t, _)| *t)
            .nth(1)
            .context("sent twice")?;
        let at_ms = again.duration_since(std::time::UNIX_EPOCH)?.as_millis() as i64;
        assert!(
            at_ms >= signed_at + interval.as_millis() as i64,
            "a payout was sent again {} ms after it was signed, within the rebroadcast interval",
            at_ms - signed_at
        );
    }
    daemon.stop().await?;
    w.cleanup().await
}
