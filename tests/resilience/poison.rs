//! Poison messages: a few thousand generated bad messages mixed with good
//! ones. The daemon stays up, answers what can be answered, sends what cannot
//! to the dead-letter exchange (never requeued forever), serves every good
//! message, and moves no money for a bad one.

use crate::common::*;
use crate::{is, withdraw};
use alloy::primitives::{Address, U256};
use anyhow::Result;
use futures::StreamExt;
use lapin::options::{
    BasicConsumeOptions, QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::FieldTable;
use m2pool_payment::wallet::Label;
use serde_json::{Value, json};

/// Deterministic bytes for the garbage.
struct Gen(u64);

impl Gen {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousands_of_bad_messages_move_no_money_and_every_good_one_is_served() -> Result<()> {
    let w = World::with("poison", &[], |c| {
        let x = format!(
            "{}.dlx",
            c["rmq_config"]["topup"]["exchange"].as_str().unwrap_or("t")
        );
        c["rmq_config"]["dead_letter_exchange"] = x.into();
    })
    .await?;
    let dlx = w.config_json["rmq_config"]["dead_letter_exchange"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let dead_queue = format!("{dlx}.q");
    let ch = w.amqp.create_channel().await?;
    ch.queue_declare(
        dead_queue.as_str().into(),
        QueueDeclareOptions::default(),
        FieldTable::default(),
    )
    .await?;
    ch.queue_bind(
        dead_queue.as_str().into(),
        dlx.as_str().into(),
        "".into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await?;

    let mut withdrawals = w.replies("withdraw_resp").await?;
    let mut topups = w.replies("topup_resp").await?;
    let user = w.new_wallet(Label::User).await?;
    w.fund(user, 1_000_000_000, ether(10)).await?;
    let to = Address::random();
    let daemon = w.start().await?;

    let mut g = Gen(0x5eed);
    let mut messages: Vec<(&'static str, Vec<u8>)> = Vec::new();
    // Identical bodies are one message redelivered: recorded and dead-lettered once.
    let mut dead_bodies = std::collections::HashSet::new();
    // What cannot be answered: bytes, non-objects, objects without an address
    // or queue_id, duplicated fields, bodies too deep or too big.
    for i in 0..1200 {
        let body = match i % 8 {
            0 => {
                let n = (g.next() % 200) as usize;
                g.bytes(n)
            }
            1 => b"null".to_vec(),
            2 => format!("[{i}, \"x\"]").into_bytes(),
            3 => json!({"queue_id": i, "amount": 1}).to_string().into_bytes(),
            4 => format!("{}{}", "[".repeat(300), "]".repeat(300)).into_bytes(),
            5 => format!(r#"{{"queue_id":"d{i}","queue_id":"e{i}"}}"#).into_bytes(),
            6 => json!({"chain": "ETH", "symbol": "USDT"})
                .to_string()
                .into_bytes(),
            _ => {
                let mut b = b"{\"address\":\"".to_vec();
                b.extend(g.bytes(20));
                b
            }
        };
        let kind = ["topup", "withdraw", "pay", "remove"][i % 4];
        dead_bodies.insert((kind, body.clone()));
        messages.push((kind, body));
    }
    let dead = dead_bodies.len();
    // What is answered 0 or 3: each bad withdrawal has its own queue_id.
    let mut refused: Vec<(String, u64)> = Vec::new();
    let bad_fields: Vec<(&str, Value)> = vec![
        ("amount", json!(-1)),
        ("amount", json!(0)),
        ("amount", serde_json::from_str("1.0000001")?),
        ("amount", serde_json::from_str("1e300")?),
        ("amount", json!("10")),
        ("amount", json!(null)),
        ("to_address", json!("0x12")),
        ("to_address", json!(hex_addr(user))),
        ("to_address", json!(42)),
        (
            "from_address",
            json!("0xzz00000000000000000000000000000000000000"),
        ),
        ("chain", json!("TRON")),
        ("symbol", json!("DOGE")),
        ("timestamp", json!("yesterday")),
    ];
    for i in 0..1300 {
        let q = format!("bad-{i}");
        let mut body = withdraw(&q, user, to, "1")?;
        let (field, value) = &bad_fields[i % bad_fields.len()];
        body[*field] = value.clone();
        if i % 5 == 0 {
            // A bad signature instead.
            body = withdraw(&q, user, to, "1")?;
            body["sign"] = "00".repeat(32).into();
            messages.push(("withdraw", serde_json::to_vec(&body)?));
            refused.push((q, 3));
        } else {
            messages.push(("withdraw", signed(body)?));
            refused.push((q, 0));
        }
    }
    // Good ones, and conflicting repeats of some of them.
    let mut good = Vec::new();
    for i in 0..100 {
        let q = format!("good-{i}");
        messages.push(("withdraw", signed(withdraw(&q, user, to, "1")?)?));
        good.push(q);
    }
    // Shuffle, deterministically.
    for i in (1..messages.len()).rev() {
        let j = (g.next() as usize) % (i + 1);
        messages.swap(i, j);
    }
    for (kind, body) in &messages {
        w.publish_raw(kind, body).await?;
    }
    // Conflicts: the same queue_id asking for another amount, after the original.
    for q in good.iter().take(20) {
        withdrawals.wait(&format!("{q} status 2"), is(q, 2)).await?;
        w.publish("withdraw", withdraw(q, user, to, "2")?).await?;
        refused.push((q.clone(), 0));
    }
    // A topup refusal too, to prove the topup queue was not blocked.
    let probe = hex_addr(Address::random());
    w.publish("topup", topup(&probe, "DOGE")).await?;
    topups
        .wait("topup refusal after the garbage", |v| {
            v["address"] == probe.as_str() && v["status"] == 0
        })
        .await?;

    for (q, status) in &refused {
        withdrawals
            .wait(&format!("{q} status {status}"), is(q, *status))
            .await?;
    }
    for q in &good {
        withdrawals.wait(&format!("{q} status 2"), is(q, 2)).await?;
    }
    w.mine(20).await?;
    for q in &good {
        withdrawals.wait(&format!("{q} status 1"), is(q, 1)).await?;
    }

    // Every unanswerable message reached the dead-letter exchange, once.
    let mut consumer = ch
        .basic_consume(
            dead_queue.as_str().into(),
            "dead".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await?;
    let mut got = 0usize;
    while got < dead {
        let Ok(next) = tokio::time::timeout(WAIT, consumer.next()).await else {
            anyhow::bail!("{got} of {dead} dead letters arrived");
        };
        let d = next.ok_or_else(|| anyhow::anyhow!("dead-letter stream ended"))??;
        let reason = d
            .properties
            .headers()
            .as_ref()
            .and_then(|h| h.inner().get("x-m2pool-reason").cloned());
        assert!(reason.is_some(), "dead letters carry their reason");
        got += 1;
    }
    assert_eq!(got, dead);

    // No money moved for a bad message: one transfer per good withdrawal.
    assert_eq!(w.transfers_from(user).await?.len(), good.len());
    assert_eq!(
        w.usdt_balance(to).await?,
        U256::from(good.len() as u64 * 1_000_000)
    );
    daemon.stop().await?;
    ch.queue_delete(dead_queue.as_str().into(), QueueDeleteOptions::default())
        .await?;
    ch.exchange_delete(dlx.as_str().into(), Default::default())
        .await?;
    w.cleanup().await
}
