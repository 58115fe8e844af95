//! RabbitMQ stopped and started again (`rabbitmqctl stop_app` / `start_app` on
//! a private node) while requests and responses are in flight.

use crate::common::broker::PrivateBroker;
use crate::common::*;
use crate::{key_of, withdraw};
use alloy::primitives::{Address, U256};
use anyhow::{Context, Result, ensure};
use m2pool_payment::msg::amount::format_units;
use m2pool_payment::wallet::Label;
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

/// Response queues of the four flows.
const QUEUES: [&str; 4] = ["topup_resp", "withdraw_resp", "pay_resp", "remove_resp"];

/// The statuses each request must be answered with, in order, by response
/// queue and key.
#[derive(Default)]
struct Expected(BTreeMap<(&'static str, String), Vec<u64>>);

impl Expected {
    fn add(&mut self, queue: &'static str, key: String, statuses: &[u64]) {
        let old = self.0.insert((queue, key.clone()), statuses.to_vec());
        assert!(old.is_none(), "test bug: {queue} {key} expected twice");
    }

    /// Waits until every request has its answers with `status`. First, per
    /// queue, until as many answers with `status` have arrived, within the
    /// longer bound of `wait_count`: after the broker's restart the daemon
    /// may still be in its reconnect backoff (up to 30 s) when the first
    /// wait begins, and on a loaded machine a single answer's 30 s can run
    /// out before any arrive. Then each request's own answer, by key.
    async fn wait(&self, replies: &mut HashMap<&str, Replies>, status: u64) -> Result<()> {
        let mut per_queue: BTreeMap<&str, usize> = BTreeMap::new();
        for ((queue, _), statuses) in &self.0 {
            if statuses.contains(&status) {
                *per_queue.entry(*queue).or_default() += 1;
            }
        }
        for (queue, n) in per_queue {
            replies
                .get_mut(queue)
                .context("subscribed")?
                .wait_count(&format!("{queue} status {status}"), n, |v| {
                    v["status"] == status
                })
                .await?;
        }
        for ((queue, key), statuses) in &self.0 {
            if !statuses.contains(&status) {
                continue;
            }
            let (q, k) = (*queue, key.clone());
            replies
                .get_mut(queue)
                .context("subscribed")?
                .wait(&format!("{queue} {key} status {status}"), move |v| {
                    v["status"] == status && key_of(q, v) == k
                })
                .await?;
        }
        Ok(())
    }

    fn count(&self, status: u64) -> usize {
        self.0.values().filter(|s| s.contains(&status)).count()
    }
}

fn pay_batch(queue_id: &str, from: Address, items: &[(String, Address, &str)]) -> Result<Value> {
    let transactions = items
        .iter()
        .map(|(o, to, amount)| {
            Ok(json!({"order_id": o, "to_address": hex_addr(*to),
                      "amount": serde_json::from_str::<Value>(amount)?}))
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(
        json!({"queue_id": queue_id, "from_address": hex_addr(from), "chain": "ETH",
              "symbol": "USDT", "timestamp": 1758610297, "transactions": transactions}),
    )
}

fn forged(mut body: Value) -> Result<Vec<u8>> {
    body["sign"] = "ab".repeat(32).into();
    Ok(serde_json::to_vec(&body)?)
}

/// Deterministic shuffle.
fn shuffle<T>(items: &mut [T], mut seed: u64) {
    for i in (1..items.len()).rev() {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        items.swap(i, (seed >> 33) as usize % (i + 1));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_hundred_requests_across_a_broker_outage_are_all_answered() -> Result<()> {
    let broker = PrivateBroker::start()?;
    let mut w = World::on_broker("broker-outage", &broker.url(), &[], |_| {}).await?;
    let user = w.new_wallet(Label::User).await?;
    w.fund(user, 1_000_000_000, ether(10)).await?;
    let daemon = w.start().await?;

    let mut expected = Expected::default();
    // Topups published and watched before anything else: 60 whose addresses
    // get a deposit during the outage (2 then 1), 20 removed later (1).
    let mut watches: Vec<(&'static str, Vec<u8>)> = Vec::new();
    let deposit_to: Vec<Address> = (0..60).map(|_| Address::random()).collect();
    let deposit_units: Vec<u64> = (0..60u64).map(|i| 1_000_000 + i * 10_000).collect();
    for a in &deposit_to {
        watches.push(("topup", signed(topup(&hex_addr(*a), "USDT"))?));
        expected.add("topup_resp", hex_addr(*a), &[2, 1]);
    }
    let removed: Vec<Address> = (0..20).map(|_| Address::random()).collect();
    for a in &removed {
        watches.push(("topup", signed(topup(&hex_addr(*a), "USDT"))?));
    }

    // The other 420, mixed.
    let mut rest: Vec<(&'static str, Vec<u8>)> = Vec::new();
    for a in &removed {
        rest.push(("remove", signed(topup(&hex_addr(*a), "USDT"))?));
        expected.add("remove_resp", hex_addr(*a), &[1]);
    }
    for _ in 0..40 {
        let a = hex_addr(Address::random());
        rest.push(("remove", signed(topup(&a, "USDT"))?));
        expected.add("remove_resp", a, &[0]);
    }
    for _ in 0..60 {
        let a = hex_addr(Address::random());
        rest.push(("topup", signed(topup(&a, "DOGE"))?));
        expected.add("topup_resp", a, &[0]);
    }
    let withdraw_to = Address::random();
    for i in 0..200 {
        let q = format!("bo-w-{i}");
        rest.push(("withdraw", signed(withdraw(&q, user, withdraw_to, "1")?)?));
        expected.add("withdraw_resp", q, &[2, 1]);
    }
    let pay_to: Vec<Address> = (0..4).map(|_| Address::random()).collect();
    let pay_amounts = ["0.5", "1.25", "2", "0.000001"];
    for i in 0..40 {
        let q = format!("bo-p-{i}");
        let items: Vec<(String, Address, &str)> = (0..4)
            .map(|k| (format!("o-{k}"), pay_to[k], pay_amounts[k]))
            .collect();
        for (o, _, _) in &items {
            expected.add("pay_resp", format!("{q}/{o}"), &[2, 1]);
        }
        rest.push(("pay", signed(pay_batch(&q, user, &items)?)?));
    }
    // Forged signatures on every queue: answered 3, nothing else happens.
    for _ in 0..15 {
        let a = hex_addr(Address::random());
        rest.push(("topup", forged(topup(&a, "USDT"))?));
        expected.add("topup_resp", a, &[3]);
        let a = hex_addr(Address::random());
        rest.push(("remove", forged(topup(&a, "USDT"))?));
        expected.add("remove_resp", a, &[3]);
    }
    for i in 0..20 {
        let q = format!("bo-fw-{i}");
        rest.push((
            "withdraw",
            forged(withdraw(&q, user, Address::random(), "1")?)?,
        ));
        expected.add("withdraw_resp", q, &[3]);
    }
    for i in 0..10 {
        let q = format!("bo-fp-{i}");
        let items: Vec<(String, Address, &str)> = (0..2)
            .map(|k| (format!("o-{k}"), Address::random(), "1"))
            .collect();
        for (o, _, _) in &items {
            expected.add("pay_resp", format!("{q}/{o}"), &[3]);
        }
        rest.push(("pay", forged(pay_batch(&q, user, &items)?)?));
    }
    shuffle(&mut rest, 0xb0b);
    assert_eq!(watches.len() + rest.len(), 500, "test bug: request count");

    // First half: the topups, watched, then the rest of the first 250.
    for (kind, body) in &watches {
        w.publish_raw(kind, body).await?;
    }
    eventually("the 80 topups are watched", || async {
        let Ok(store) = w.store().await else {
            return Ok(false);
        };
        let mut all = !store.recent_blocks("ETH", 1).await?.is_empty();
        for a in deposit_to.iter().chain(&removed) {
            all = all && store.is_watched("ETH", "USDT", *a).await?;
        }
        store.close().await;
        Ok(all)
    })
    .await?;
    let (first, second) = rest.split_at(250 - watches.len());
    for (kind, body) in first {
        w.publish_raw(kind, body).await?;
    }

    // The broker goes away while the daemon works through them.
    broker.stop_app()?;
    // Deposits during the outage, made final: the daemon reads the chain and
    // queues its answers, which wait in its outbox.
    let receipt = ITestUSDT::new(w.token, &w.eth)
        .batchTransfer(
            deposit_to.clone(),
            deposit_units.iter().map(|u| U256::from(*u)).collect(),
        )
        .from(w.user())
        .send()
        .await?
        .get_receipt()
        .await?;
    ensure!(receipt.status(), "batchTransfer reverted");
    let deposit_tx = format!("{:#x}", receipt.transaction_hash);
    w.mine(20).await?;
    let notices = |bodies: &[Vec<u8>], status: u64| {
        bodies
            .iter()
            .filter_map(|b| serde_json::from_slice::<Value>(b).ok())
            .filter(|v| v["tx_hash"] == deposit_tx.as_str() && v["status"] == status)
            .count()
    };
    eventually(
        "the deposit notices (2 and 1) queued while the broker is down",
        || async {
            let store = w.store().await?;
            let bodies = store.outbox_bodies("topup_resp").await?;
            store.close().await;
            Ok(notices(&bodies, 2) == 60 && notices(&bodies, 1) == 60)
        },
    )
    .await?;
    let store = w.store().await?;
    let backlog = store.outbox_backlog().await?;
    let (recorded, _, _) = store.inbox_span().await?;
    store.close().await;
    eprintln!(
        "while the broker is down: {backlog} answers wait in the outbox; {recorded} of the 250 requests published so far are in the inbox"
    );
    assert!(
        backlog >= 120,
        "the 120 deposit notices wait unsent while the broker is down (backlog {backlog})"
    );
    // The outage itself lasts a few seconds more: the fault being injected.
    tokio::time::sleep(Duration::from_secs(3)).await;
    broker.start_app()?;

    w.reconnect().await?;
    for (kind, body) in second {
        w.publish_raw(kind, body).await?;
    }
    let ch = w.amqp.create_channel().await?;
    let mut waiting = 0;
    for kind in ["topup", "withdraw", "pay", "remove"] {
        let name = w.config_json["rmq_config"][kind]["queue"]
            .as_str()
            .unwrap_or_default();
        let passive = lapin::options::QueueDeclareOptions {
            passive: true,
            ..Default::default()
        };
        let q = ch
            .queue_declare(name.into(), passive, Default::default())
            .await?;
        waiting += q.message_count();
    }
    eprintln!("after the restart: {waiting} of the second 250 requests wait in the broker");
    let mut replies = HashMap::new();
    for q in QUEUES {
        replies.insert(q, w.replies(q).await?);
    }
    for status in [0, 3, 2] {
        expected.wait(&mut replies, status).await?;
    }
    // Status 2 means sent, not mined: anvil can strand a transaction it took
    // (foundry-rs/foundry#10122) until the daemon replaces it. Every payout is
    // mined before the 20 blocks that confirm them.
    let store = w.store().await?;
    eventually("every payout mined", || async {
        Ok(store.payouts("ETH").await?.iter().all(|p| {
            !matches!(
                p.state,
                m2pool_payment::store::PayoutState::Signed
                    | m2pool_payment::store::PayoutState::Sent
            )
        }))
    })
    .await?;
    store.close().await;
    w.mine(20).await?;
    expected.wait(&mut replies, 1).await?;

    // Nothing lost in between: the daemon has every answer confirmed by the
    // broker, and every answer it wrote arrived (and nothing else).
    let store = w.store().await?;
    eventually("the outbox is empty", || async {
        Ok(store.outbox_backlog().await? == 0)
    })
    .await?;
    for q in QUEUES {
        let written: BTreeSet<String> = store
            .outbox_bodies(q)
            .await?
            .into_iter()
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .collect();
        let r = replies.get_mut(q).context("subscribed")?;
        eventually(
            &format!("every {q} answer the daemon wrote arrives"),
            || {
                r.drain();
                let got: BTreeSet<&str> = r.seen.iter().map(|x| x.raw.as_str()).collect();
                let ok = written.iter().all(|b| got.contains(b.as_str()));
                async move { Ok(ok) }
            },
        )
        .await?;
        let got: BTreeSet<String> = r.seen.iter().map(|x| x.raw.clone()).collect();
        assert_eq!(got, written, "{q}: what arrived is what the daemon wrote");
    }
    store.close().await;

    // Every answer is one a request expects, in order (2 before 1), and a
    // repeat is an identical copy.
    let mut answers = 0;
    let mut copies = 0;
    for q in QUEUES {
        let mut by_key: BTreeMap<(String, u64), BTreeSet<&str>> = BTreeMap::new();
        let mut order: BTreeMap<String, Vec<u64>> = BTreeMap::new();
        for r in &replies[q].seen {
            let key = key_of(q, &r.v);
            let status = r.v["status"].as_u64().unwrap_or(99);
            let statuses = expected
                .0
                .get(&(q, key.clone()))
                .with_context(|| format!("{q}: an answer no request expects: {}", r.raw))?;
            assert!(
                statuses.contains(&status),
                "{q} {key}: status {status} where {statuses:?} is expected: {}",
                r.raw
            );
            if by_key
                .entry((key.clone(), status))
                .or_default()
                .insert(&r.raw)
            {
                answers += 1;
                order.entry(key).or_default().push(status);
            } else {
                copies += 1;
            }
        }
        for ((key, status), bodies) in &by_key {
            assert_eq!(bodies.len(), 1, "{q} {key} status {status}: {bodies:?}");
        }
        for (key, statuses) in order {
            let want = &expected.0[&(q, key.clone())];
            assert_eq!(&statuses, want, "{q} {key}: answers out of order");
        }
    }
    let want = expected.0.values().map(Vec::len).sum::<usize>();
    assert_eq!(answers, want, "every expected answer, once");
    eprintln!(
        "{} requests, {answers} distinct answers ({} status 0, {} status 3, {} status 2, {} status 1), {copies} identical repeats",
        500,
        expected.count(0),
        expected.count(3),
        expected.count(2),
        expected.count(1),
    );

    // Nothing paid twice: one transfer per payout, balances exact.
    assert_eq!(
        w.transfers_from(user).await?.len(),
        200 + 40 * 4,
        "one transfer per withdrawal and per pay item"
    );
    assert_eq!(
        w.usdt_balance(withdraw_to).await?,
        U256::from(200_000_000u64)
    );
    for (to, units) in pay_to.iter().zip([500_000u64, 1_250_000, 2_000_000, 1]) {
        assert_eq!(w.usdt_balance(*to).await?, U256::from(40 * units));
    }
    assert_eq!(
        w.usdt_balance(user).await?,
        U256::from(1_000_000_000u64 - 200_000_000 - 40 * 3_750_001)
    );
    // Each deposit reported with its exact amount.
    let topups = &replies["topup_resp"];
    for (a, units) in deposit_to.iter().zip(&deposit_units) {
        assert_eq!(w.usdt_balance(*a).await?, U256::from(*units));
        let amount = format_units(U256::from(*units), 6);
        for r in topups.matching(|v| v["address"] == hex_addr(*a).as_str()) {
            assert_eq!(r.v["tx_hash"], deposit_tx.as_str());
            assert!(
                r.raw.contains(&format!("\"amount\":{amount},"))
                    || r.raw.contains(&format!("\"amount\":{amount}}}")),
                "deposit to {a:#x} reported as {amount}: {}",
                r.raw
            );
        }
    }
    daemon.stop().await?;
    w.cleanup().await
}
