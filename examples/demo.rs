//! Every flow in a minute, against the dev environment of `bin/dev.sh`:
//! a signed topup (and a forged one, refused), a deposit, a withdrawal and a
//! batch payment, each notification printed as it arrives.
//!
//!   cargo run --example demo -- target/dev/config.json
//!
//! It talks to the daemon only as a business system would: RabbitMQ messages
//! signed with the communication key (`DEV_KEY`, default `dev-secret`). The
//! chain side (the deposit, mining blocks) uses anvil's dev accounts.

use alloy::network::TransactionBuilder;
use alloy::primitives::{Address, U256};
use alloy::providers::{Provider, ProviderBuilder};
use alloy::rpc::types::TransactionRequest;
use alloy::sol_types::SolCall;
use anyhow::{Context, Result, bail};
use futures::StreamExt;
use lapin::options::{BasicConsumeOptions, BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection, ConnectionProperties};
use m2pool_payment::msg::sign::sign_message;
use serde_json::{Value, json};
use std::collections::HashSet;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::mpsc;

alloy::sol! {
    function transfer(address to, uint256 value);
}

/// anvil's account 1: the funded test account, a hot wallet of the dev gateway.
const TEST_ACCOUNT: &str = "0x70997970c51812dc3a010c7d01b50e0d17dc79c8";

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Publishes a topup for a fresh address on `chain` with a bad signature and
/// returns that address. It is answered at once with status 3, and requests
/// of one queue are taken in order: that answer also says every topup
/// published before it is recorded.
async fn forged_topup(
    publisher: &lapin::Channel,
    (exchange, routing): (&str, &str),
    chain: &str,
) -> Result<String> {
    let stranger = format!("{:#x}", Address::random());
    let forged = json!({"chain": chain, "symbol": "USDT", "address": stranger, "timestamp": now(), "sign": "00"});
    println!("  → topup (forged): {forged}");
    publisher
        .basic_publish(
            exchange.into(),
            routing.into(),
            BasicPublishOptions::default(),
            &serde_json::to_vec(&forged)?,
            BasicProperties::default().with_delivery_mode(2),
        )
        .await?
        .await?;
    Ok(stranger)
}

/// Sends `units` of `token` from the test account to `to`; returns the
/// transaction hash.
async fn send_token(
    rpc: &impl Provider,
    token: Address,
    to: Address,
    units: U256,
) -> Result<String> {
    let user: Address = TEST_ACCOUNT.parse()?;
    let input = transferCall { to, value: units }.abi_encode();
    let receipt = rpc
        .send_transaction(
            TransactionRequest::default()
                .with_from(user)
                .with_to(token)
                .with_input(input),
        )
        .await?
        .get_receipt()
        .await?;
    Ok(format!("{:#x}", receipt.transaction_hash))
}

fn say(s: &str) {
    println!("\n\x1b[1m▶ {s}\x1b[0m");
}

#[tokio::main]
async fn main() -> Result<()> {
    let path = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "target/dev/config.json".into());
    let config: Value = serde_json::from_slice(
        &std::fs::read(&path).with_context(|| format!("reading {path}; run bin/dev.sh first"))?,
    )?;
    let key = std::env::var("DEV_KEY").unwrap_or_else(|_| "dev-secret".into());
    let rmq = &config["rmq_config"];
    let entry = |k: &str| -> (String, String, String) {
        let e = &rmq[k];
        let s = |f: &str| e[f].as_str().unwrap_or_default().to_owned();
        (
            s("queue"),
            s("exchange"),
            e["routing"][0].as_str().unwrap_or_default().to_owned(),
        )
    };
    let eth = ProviderBuilder::new().connect_http(
        config["eth_config"]["rpc_url"]
            .as_str()
            .context("rpc_url")?
            .parse()?,
    );
    let token: Address = config["eth_config"]["tokens"][0]["address"]
        .as_str()
        .context("token")?
        .parse()?;

    let amqp = Connection::connect(
        rmq["sub_addr"].as_str().context("sub_addr")?,
        ConnectionProperties::default(),
    )
    .await?;
    let publisher = amqp.create_channel().await?;
    publisher
        .confirm_select(ConfirmSelectOptions::default())
        .await?;

    // Print every notification as it arrives.
    let (tx, mut rx) = mpsc::unbounded_channel::<(String, Value)>();
    for kind in ["topup_resp", "withdraw_resp", "pay_resp", "remove_resp"] {
        let (queue, _, _) = entry(kind);
        let ch = amqp.create_channel().await?;
        let mut consumer = ch
            .basic_consume(
                queue.as_str().into(),
                "demo".into(),
                BasicConsumeOptions {
                    no_ack: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await?;
        let tx = tx.clone();
        tokio::spawn(async move {
            let _ch = ch;
            while let Some(Ok(d)) = consumer.next().await {
                if let Ok(v) = serde_json::from_slice::<Value>(&d.data) {
                    let _ = tx.send((kind.to_owned(), v));
                }
            }
        });
    }
    let publish = |kind: &'static str, mut body: Value| {
        let (publisher, key, (_, exchange, routing)) =
            (publisher.clone(), key.clone(), entry(kind));
        async move {
            let sign = sign_message(key.as_bytes(), &serde_json::to_vec(&body)?)?;
            body["sign"] = sign.into();
            println!("  → {kind}: {body}");
            publisher
                .basic_publish(
                    exchange.as_str().into(),
                    routing.as_str().into(),
                    BasicPublishOptions::default(),
                    &serde_json::to_vec(&body)?,
                    BasicProperties::default().with_delivery_mode(2),
                )
                .await?
                .await?;
            anyhow::Ok(())
        }
    };
    let mut seen: HashSet<String> = HashSet::new();
    let mut expect = async |rx: &mut mpsc::UnboundedReceiver<(String, Value)>,
                            want: &dyn Fn(&str, &Value) -> bool,
                            what: &str|
           -> Result<Value> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            let (kind, v) = match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(x)) => x,
                _ => bail!("no notification {what} within a minute: is bin/dev.sh running?"),
            };
            if seen.insert(v.to_string()) {
                println!("  ← {kind}: {v}");
            }
            if want(&kind, &v) {
                return Ok(v);
            }
        }
    };
    let mine = async |n: u64| -> Result<()> {
        let _: Value = eth
            .raw_request("anvil_mine".into(), (format!("{n:#x}"),))
            .await?;
        println!("  ⛏ mined {n} blocks");
        Ok(())
    };

    say("1. Watch a fresh address for USDT deposits (topup); a forged request is refused");
    let watched = Address::random();
    publish("topup", json!({"chain": "ETH", "symbol": "USDT", "address": format!("{watched:#x}"), "timestamp": now()})).await?;
    // A topup is answered by its deposits, not at once. A forged topup right
    // behind it is answered at once, with status 3: requests of one queue are
    // taken in order, so that answer also says the watch is recorded and the
    // deposit below cannot be missed.
    let (_, exchange, routing) = entry("topup");
    let stranger = forged_topup(&publisher, (&exchange, &routing), "ETH").await?;
    expect(
        &mut rx,
        &|k, v| k == "topup_resp" && v["address"] == stranger.as_str() && v["status"] == 3,
        "signature refusal",
    )
    .await?;

    say("2. A user deposits 25.5 USDT to it: status 2 when seen, 1 when final");
    let hash = send_token(&eth, token, watched, U256::from(25_500_000u64)).await?;
    println!("  deposit tx {hash}");
    expect(
        &mut rx,
        &|k, v| k == "topup_resp" && v["tx_hash"] == hash.as_str() && v["status"] == 2,
        "deposit seen",
    )
    .await?;
    mine(20).await?;
    expect(
        &mut rx,
        &|k, v| k == "topup_resp" && v["tx_hash"] == hash.as_str() && v["status"] == 1,
        "deposit final",
    )
    .await?;

    say("3. Withdraw 10 USDT from the test account's hot wallet");
    let q = format!("demo-w-{}", now());
    let to = Address::random();
    publish(
        "withdraw",
        json!({"queue_id": q, "from_address": TEST_ACCOUNT, "to_address": format!("{to:#x}"),
        "amount": 10, "chain": "ETH", "symbol": "USDT", "timestamp": now()}),
    )
    .await?;
    expect(
        &mut rx,
        &|k, v| k == "withdraw_resp" && v["queue_id"] == q.as_str() && v["status"] == 2,
        "withdrawal broadcast",
    )
    .await?;
    mine(20).await?;
    expect(
        &mut rx,
        &|k, v| k == "withdraw_resp" && v["queue_id"] == q.as_str() && v["status"] == 1,
        "withdrawal final",
    )
    .await?;

    say("4. Pay three recipients in one batch");
    let q = format!("demo-p-{}", now());
    let items: Vec<Value> = (1..=3)
        .map(|i| json!({"order_id": format!("order-{i}"), "to_address": format!("{:#x}", Address::random()), "amount": i as f64 * 1.5}))
        .collect();
    publish(
        "pay",
        json!({"queue_id": q, "from_address": TEST_ACCOUNT, "chain": "ETH", "symbol": "USDT",
        "timestamp": now(), "transactions": items}),
    )
    .await?;
    for i in 1..=3 {
        let o = format!("order-{i}");
        expect(
            &mut rx,
            &|k, v| {
                k == "pay_resp"
                    && v["queue_id"] == q.as_str()
                    && v["order_id"] == o.as_str()
                    && v["status"] == 2
            },
            "payment broadcast",
        )
        .await?;
    }
    mine(20).await?;
    for i in 1..=3 {
        let o = format!("order-{i}");
        expect(
            &mut rx,
            &|k, v| {
                k == "pay_resp"
                    && v["queue_id"] == q.as_str()
                    && v["order_id"] == o.as_str()
                    && v["status"] == 1
            },
            "payment final",
        )
        .await?;
    }

    // Every other network the config runs: a deposit there too.
    let others: Vec<String> = config["net"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|n| n.as_str())
        .filter(|n| !n.eq_ignore_ascii_case("ETH"))
        .map(str::to_uppercase)
        .collect();
    for (i, net) in others.iter().enumerate() {
        let section = &config[format!("{}_config", net.to_lowercase())];
        let rpc = ProviderBuilder::new()
            .connect_http(section["rpc_url"].as_str().context("rpc_url")?.parse()?);
        let token: Address = section["tokens"][0]["address"]
            .as_str()
            .context("token")?
            .parse()?;
        let decimals = section["tokens"][0]["decimals"]
            .as_u64()
            .context("decimals")?;
        say(&format!(
            "{}. On {net}: a deposit of 2.5 USDT ({decimals} decimals), seen and final",
            5 + i
        ));
        let watched = Address::random();
        publish("topup", json!({"chain": net, "symbol": "USDT", "address": format!("{watched:#x}"), "timestamp": now()})).await?;
        let stranger = forged_topup(&publisher, (&exchange, &routing), net).await?;
        expect(
            &mut rx,
            &|k, v| k == "topup_resp" && v["address"] == stranger.as_str() && v["status"] == 3,
            "the watch recorded",
        )
        .await?;
        let units =
            U256::from(25u64) * U256::from(10u64).pow(U256::from(decimals)) / U256::from(10u64);
        let hash = send_token(&rpc, token, watched, units).await?;
        println!("  deposit tx {hash} on {net}");
        expect(
            &mut rx,
            &|k, v| k == "topup_resp" && v["tx_hash"] == hash.as_str() && v["status"] == 2,
            "deposit seen",
        )
        .await?;
        let _: Value = rpc
            .raw_request("anvil_mine".into(), (format!("{:#x}", 20),))
            .await?;
        println!("  ⛏ mined 20 blocks on {net}");
        expect(
            &mut rx,
            &|k, v| k == "topup_resp" && v["tx_hash"] == hash.as_str() && v["status"] == 1,
            "deposit final",
        )
        .await?;
    }

    say("Done: every flow, end to end.");
    Ok(())
}
