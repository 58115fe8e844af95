//! RabbitMQ stopped and started again (`rabbitmqctl stop_app` / `start_app` on
//! a private node) while requests and responses are in flight.

use crate::common::broker::PrivateBroker;
use crate::common::*;
use crate::{is, withdraw};
use alloy::primitives::{Address, U256};
use anyhow::Result;
use m2pool_payment::wallet::Label;
use serde_json::{Value, json};
use std::collections::BTreeSet;

/// What one request must be answered with: response queue, a key that finds
/// the answer, and its statuses.
struct Expect {
    queue: &'static str,
    key: (&'static str, String),
    statuses: Vec<u64>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_hundred_requests_across_a_broker_outage_are_all_answered() -> Result<()> {
    let broker = PrivateBroker::start()?;
    let mut w = World::on_broker("broker-outage", &broker.url(), &[], |_| {}).await?;
    let user = w.new_wallet(Label::User).await?;
    w.fund(user, 1_000_000_000, ether(10)).await?;
    let to = Address::random();
    let daemon = w.start().await?;

    // 500 requests: withdrawals (2 then 1), removes of unwatched addresses (0),
    // topups for an unknown symbol (0), topups with a bad signature (3).
    let mut requests: Vec<(&'static str, Vec<u8>)> = Vec::new();
    let mut expect: Vec<Expect> = Vec::new();
    for i in 0..125 {
        let q = format!("bo-{i}");
        requests.push(("withdraw", signed(withdraw(&q, user, to, "1")?)?));
        expect.push(Expect {
            queue: "withdraw_resp",
            key: ("queue_id", q),
            statuses: vec![2, 1],
        });

        let a = hex_addr(Address::random());
        requests.push(("remove", signed(topup(&a, "USDT"))?));
        expect.push(Expect {
            queue: "remove_resp",
            key: ("address", a),
            statuses: vec![0],
        });

        let a = hex_addr(Address::random());
        requests.push(("topup", signed(topup(&a, "DOGE"))?));
        expect.push(Expect {
            queue: "topup_resp",
            key: ("address", a),
            statuses: vec![0],
        });

        let a = hex_addr(Address::random());
        let mut forged = topup(&a, "USDT");
        forged["sign"] = "ab".repeat(32).into();
        requests.push(("topup", serde_json::to_vec(&forged)?));
        expect.push(Expect {
            queue: "topup_resp",
            key: ("address", a),
            statuses: vec![3],
        });
    }

    let (first, second) = requests.split_at(250);
    for (kind, body) in first {
        w.publish_raw(kind, body).await?;
    }
    // The broker goes away while the daemon works through them, for a while.
    broker.stop_app()?;
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    broker.start_app()?;
    w.reconnect().await?;
    for (kind, body) in second {
        w.publish_raw(kind, body).await?;
    }

    let mut queues = std::collections::HashMap::new();
    for q in ["withdraw_resp", "remove_resp", "topup_resp"] {
        queues.insert(q, w.replies(q).await?);
    }
    let wait_all = async |queues: &mut std::collections::HashMap<&str, Replies>,
                          expect: &[Expect],
                          status: u64|
           -> Result<()> {
        for e in expect.iter().filter(|e| e.statuses.contains(&status)) {
            let (field, value) = (e.key.0, e.key.1.clone());
            let replies = queues
                .get_mut(e.queue)
                .ok_or_else(|| anyhow::anyhow!("queue"))?;
            replies
                .wait(
                    &format!("{field}={value} status {status}"),
                    move |v: &Value| v[field] == json!(value) && v["status"] == status,
                )
                .await?;
        }
        Ok(())
    };
    for status in [0, 2, 3] {
        wait_all(&mut queues, &expect, status).await?;
    }
    w.mine(20).await?;
    wait_all(&mut queues, &expect, 1).await?;

    // Nothing paid twice; duplicates, if any, are identical copies.
    assert_eq!(w.transfers_from(user).await?.len(), 125);
    assert_eq!(w.usdt_balance(to).await?, U256::from(125_000_000u64));
    let withdrawals = &queues["withdraw_resp"];
    for i in 0..125 {
        for status in [2, 1] {
            let copies: BTreeSet<String> = withdrawals
                .matching(is(&format!("bo-{i}"), status))
                .into_iter()
                .map(|r| r.raw)
                .collect();
            assert_eq!(copies.len(), 1, "bo-{i} status {status}: {copies:?}");
        }
    }
    daemon.stop().await?;
    w.cleanup().await
}
