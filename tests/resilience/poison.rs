//! Poison messages: a few thousand generated bad messages mixed with good
//! ones. The daemon stays up, answers what can be answered, sends what cannot
//! to the dead-letter exchange (never requeued forever), serves every good
//! message, and moves no money for a bad one.

use crate::common::*;
use crate::{is, key_of, withdraw};
use alloy::primitives::{Address, U256};
use anyhow::{Context, Result, bail};
use futures::StreamExt;
use lapin::options::{
    BasicConsumeOptions, QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use m2pool_payment::wallet::Label;
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashSet};

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

/// Request queues and the response queue that answers each.
const FLOWS: [(&str, &str); 4] = [
    ("topup", "topup_resp"),
    ("withdraw", "withdraw_resp"),
    ("pay", "pay_resp"),
    ("remove", "remove_resp"),
];

/// Every answer the run must produce, exactly: by response queue, request key
/// (see [`key_of`]) and status, how many, and words each must contain.
#[derive(Default)]
struct Answers(BTreeMap<(&'static str, String, u64), (usize, Option<String>)>);

impl Answers {
    fn add(&mut self, queue: &'static str, key: impl Into<String>, status: u64, error: &str) {
        let e = self.0.entry((queue, key.into(), status)).or_default();
        e.0 += 1;
        if !error.is_empty() {
            e.1 = Some(error.to_owned());
        }
    }

    fn total(&self) -> usize {
        self.0.values().map(|(n, _)| n).sum()
    }
}

fn pay_batch(queue_id: &str, from: Address, items: Vec<Value>) -> Value {
    json!({"queue_id": queue_id, "from_address": hex_addr(from), "chain": "ETH",
           "symbol": "USDT", "timestamp": 1758610297, "transactions": items})
}

fn item(order_id: &str, to: Address, amount: Value) -> Value {
    json!({"order_id": order_id, "to_address": hex_addr(to), "amount": amount})
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

    let mut replies = BTreeMap::new();
    for (_, q) in FLOWS {
        replies.insert(q, w.replies(q).await?);
    }
    let user = w.new_wallet(Label::User).await?;
    w.fund(user, 1_000_000_000, ether(10)).await?;
    let to = Address::random();
    let daemon = w.start().await?;

    let mut g = Gen(0x5eed);
    let mut answers = Answers::default();
    let mut messages: Vec<(&'static str, Vec<u8>)> = Vec::new();
    // Identical bodies are one message redelivered: recorded and dead-lettered once.
    let mut dead_bodies: HashSet<(&'static str, Vec<u8>)> = HashSet::new();

    // What cannot be answered: bytes, non-objects, objects without an address
    // or queue_id, duplicated fields, bodies too deep.
    for i in 0..1200 {
        let body = match i % 9 {
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
            7 => json!({"chain": "ETH", "symbol": "USDT", "address": 42, "queue_id": [i]})
                .to_string()
                .into_bytes(),
            _ => {
                let mut b = b"{\"address\":\"".to_vec();
                b.extend(g.bytes(20));
                b
            }
        };
        let kind = FLOWS[i % 4].0;
        dead_bodies.insert((kind, body.clone()));
        messages.push((kind, body));
    }
    // Bodies over the 1 MiB limit are not parsed, however good they look:
    // a signed withdrawal padded to one byte over, a batch of 30,000
    // transfers, 1.5 MiB of bytes.
    let limit = 1usize << 20;
    let mut big = signed(withdraw("big-w", user, to, "1")?)?;
    big.resize(limit + 1, b' ');
    let items: Vec<Value> = (0..30_000)
        .map(|k| item(&format!("o-{k}"), to, json!(1)))
        .collect();
    let big_pay = signed(pay_batch("big-p", user, items))?;
    assert!(big_pay.len() > limit, "test bug: the big batch is small");
    for (kind, body) in [
        ("withdraw", big),
        ("pay", big_pay),
        ("topup", g.bytes(limit * 3 / 2)),
    ] {
        dead_bodies.insert((kind, body.clone()));
        messages.push((kind, body));
    }
    let dead = dead_bodies.len();

    // Withdrawals answered 0 or 3: each has its own queue_id.
    let bad_fields: Vec<(&str, Value, &str)> = vec![
        ("amount", json!(-1), "amount"),
        ("amount", json!(0), "amount"),
        ("amount", serde_json::from_str("1.0000001")?, "amount"),
        ("amount", serde_json::from_str("1e300")?, "amount"),
        ("amount", json!("10"), "amount"),
        ("amount", json!(null), "amount"),
        ("to_address", json!("0x12"), "to_address"),
        ("to_address", json!(hex_addr(user)), "to_address"),
        ("to_address", json!(42), "to_address"),
        (
            "from_address",
            json!("0xzz00000000000000000000000000000000000000"),
            "from_address",
        ),
        ("chain", json!("TRON"), "chain"),
        ("symbol", json!("DOGE"), "symbol"),
        ("timestamp", json!("yesterday"), "timestamp"),
    ];
    for i in 0..1300 {
        let q = format!("bad-{i}");
        let mut body = withdraw(&q, user, to, "1")?;
        if i % 5 == 0 {
            // A bad signature instead.
            body["sign"] = "00".repeat(32).into();
            messages.push(("withdraw", serde_json::to_vec(&body)?));
            answers.add("withdraw_resp", q, 3, "signature");
        } else {
            let (field, value, words) = &bad_fields[i % bad_fields.len()];
            body[*field] = value.clone();
            messages.push(("withdraw", signed(body)?));
            answers.add("withdraw_resp", q, 0, words);
        }
    }

    // Pays answered 0 (3 when forged), one answer per transfer.
    let pay_fields: Vec<(&str, Value, &str)> = vec![
        ("amount", json!(-1), "amount"),
        ("amount", serde_json::from_str("1.0000001")?, "amount"),
        ("order_id", json!(null), "order_id"),
        ("order_id", json!(5), "order_id"),
        ("order_id", json!(""), "order_id"),
        ("to_address", json!("0x12"), "to_address"),
        ("from_address", json!(7), "from_address"),
        ("chain", json!("TRON"), "chain"),
        ("symbol", json!("DOGE"), "symbol"),
    ];
    for i in 0..180 {
        let q = format!("bad-pay-{i}");
        let mut body = withdraw(&q, user, to, "1")?;
        body["order_id"] = format!("o-{i}").into();
        let (field, value, words) = &pay_fields[i % pay_fields.len()];
        body[*field] = value.clone();
        let o = body["order_id"].as_str().unwrap_or_default().to_owned();
        messages.push(("pay", signed(body)?));
        answers.add("pay_resp", format!("{q}/{o}"), 0, words);
    }
    // A batch with one bad transfer: every transfer answered 0, the error
    // naming the bad one.
    for i in 0..100 {
        let q = format!("bad-batch-{i}");
        let mut items: Vec<Value> = (0..3)
            .map(|k| item(&format!("o-{k}"), Address::random(), json!(1)))
            .collect();
        match i % 5 {
            0 => items[1]["amount"] = json!(-1),
            1 => items[1]["to_address"] = json!("0x12"),
            2 => items[1]["to_address"] = json!(hex_addr(user)),
            3 => items[1]["amount"] = serde_json::from_str("1e300")?,
            _ => items[1]["amount"] = json!("1"),
        }
        messages.push(("pay", signed(pay_batch(&q, user, items))?));
        for k in 0..3 {
            answers.add("pay_resp", format!("{q}/o-{k}"), 0, "transactions[1]: ");
        }
    }
    // Duplicate order_ids in one batch.
    for i in 0..20 {
        let q = format!("dup-batch-{i}");
        let items = ["o-0", "o-1", "o-0"]
            .iter()
            .map(|o| item(o, Address::random(), json!(1)))
            .collect();
        messages.push(("pay", signed(pay_batch(&q, user, items))?));
        for o in ["o-0", "o-1", "o-0"] {
            answers.add(
                "pay_resp",
                format!("{q}/{o}"),
                0,
                "transactions[2]: order_id `o-0` appears twice",
            );
        }
    }
    // A field given twice at the top level: refused and answered, naming the
    // field, wherever the body can still be addressed (the addressing field
    // itself twice with the same value, or another field twice).
    for i in 0..30 {
        let q = format!("dup-field-{i}");
        let (kind, queue) = [("withdraw", "withdraw_resp"), ("pay", "pay_resp")][i % 2];
        let mut body = withdraw(&q, user, to, "1")?;
        if kind == "pay" {
            body["order_id"] = "o-1".into();
        }
        let text = String::from_utf8(signed(body)?)?;
        let (field, twice) = match i % 3 {
            0 => ("symbol", r#""symbol":"ETH","#.to_owned()),
            1 => ("amount", r#""amount":2,"#.to_owned()),
            _ => ("queue_id", format!(r#""queue_id":"{q}","#)),
        };
        messages.push((
            kind,
            text.replacen('{', &format!("{{{twice}"), 1).into_bytes(),
        ));
        let key = if kind == "pay" { format!("{q}/o-1") } else { q };
        answers.add(queue, key, 0, &format!("field `{field}` appears twice"));
    }
    for i in 0..20 {
        let (kind, queue) = FLOWS[if i % 2 == 0 { 0 } else { 3 }];
        let address = hex_addr(Address::random());
        let text = String::from_utf8(signed(topup(&address, "USDT"))?)?;
        messages.push((
            kind,
            text.replacen('{', r#"{"symbol":"ETH","#, 1).into_bytes(),
        ));
        answers.add(queue, address, 0, "field `symbol` appears twice");
    }
    // No transfers, and one too many (only the first 1000 are answered: the
    // router never builds more answers than a batch may hold).
    for i in 0..5 {
        let q = format!("empty-batch-{i}");
        messages.push(("pay", signed(pay_batch(&q, user, vec![]))?));
        answers.add("pay_resp", format!("{q}/"), 0, "must hold 1 to 1000");
    }
    let q = "huge-batch";
    let items = (0..1001)
        .map(|k| item(&format!("o-{k}"), Address::random(), json!(1)))
        .collect();
    messages.push(("pay", signed(pay_batch(q, user, items))?));
    for k in 0..1000 {
        answers.add("pay_resp", format!("{q}/o-{k}"), 0, "must hold 1 to 1000");
    }
    // Forged batches: every transfer answered 3.
    for i in 0..20 {
        let q = format!("forged-batch-{i}");
        let items = (0..2)
            .map(|k| item(&format!("o-{k}"), Address::random(), json!(1)))
            .collect();
        let mut body = pay_batch(&q, user, items);
        body["sign"] = "ab".repeat(32).into();
        messages.push(("pay", serde_json::to_vec(&body)?));
        for k in 0..2 {
            answers.add("pay_resp", format!("{q}/o-{k}"), 3, "signature");
        }
    }

    // Topups and removes answered 0 (3 when forged), keyed by the address
    // as sent, lower-cased.
    for i in 0..330 {
        let (kind, queue) = FLOWS[if i % 2 == 0 { 0 } else { 3 }];
        let mut body = topup(&hex_addr(Address::random()), "USDT");
        let variants = if kind == "remove" { 11 } else { 9 };
        let mut status = 0;
        let words = match (i / 2) % variants {
            0 => {
                body["chain"] = "TRON".into();
                "unknown chain"
            }
            1 => {
                body["symbol"] = "DOGE".into();
                "unknown symbol"
            }
            2 => {
                body["address"] = format!("0x{i:x}").into();
                "address"
            }
            3 => {
                body["address"] = format!("0xZZ{:038x}", i).into();
                "address"
            }
            4 => {
                // One address for all of these: their bodies differ by time.
                body["address"] = format!("0x{:040}", 0).into();
                body["timestamp"] = (1758610297 + i).into();
                "zero address"
            }
            5 => {
                body["timestamp"] = "yesterday".into();
                "timestamp"
            }
            6 => {
                body["symbol"] = 5.into();
                "symbol"
            }
            7 => {
                body.as_object_mut().context("object")?.remove("chain");
                "chain"
            }
            8 => {
                status = 3;
                "signature"
            }
            9 => {
                body["queue_id"] = 7.into();
                "queue_id"
            }
            _ => {
                body["queue_id"] = format!("nobody-{i}").into();
                "no withdrawal or payment with queue_id"
            }
        };
        let key = body["address"].as_str().unwrap_or("?").to_ascii_lowercase();
        let bytes = if status == 3 {
            body["sign"] = "cd".repeat(32).into();
            serde_json::to_vec(&body)?
        } else {
            signed(body)?
        };
        messages.push((kind, bytes));
        answers.add(queue, key, status, words);
    }
    // A remove of an unwatched address, the very same bytes twice (a broker
    // redelivery looks like this): answered alike, twice.
    let unwatched = hex_addr(Address::random());
    let twice = signed(topup(&unwatched, "USDT"))?;
    for _ in 0..2 {
        messages.push(("remove", twice.clone()));
        answers.add("remove_resp", unwatched.clone(), 0, "not watched");
    }
    let bad = messages.len();

    // Good ones: withdrawals and batch pays.
    let mut good = Vec::new();
    for i in 0..100 {
        let q = format!("good-{i}");
        messages.push(("withdraw", signed(withdraw(&q, user, to, "1")?)?));
        answers.add("withdraw_resp", q.clone(), 2, "");
        answers.add("withdraw_resp", q.clone(), 1, "");
        good.push(q);
    }
    let pay_to = [Address::random(), Address::random()];
    for i in 0..10 {
        let q = format!("good-pay-{i}");
        let items = vec![
            item("o-0", pay_to[0], json!(1)),
            item("o-1", pay_to[1], serde_json::from_str("0.5")?),
        ];
        messages.push(("pay", signed(pay_batch(&q, user, items))?));
        for o in ["o-0", "o-1"] {
            answers.add("pay_resp", format!("{q}/{o}"), 2, "");
            answers.add("pay_resp", format!("{q}/{o}"), 1, "");
        }
    }
    let good_count = messages.len() - bad;
    // Shuffle, deterministically.
    for i in (1..messages.len()).rev() {
        let j = (g.next() as usize) % (i + 1);
        messages.swap(i, j);
    }
    for (kind, body) in &messages {
        w.publish_raw(kind, body).await?;
    }
    let mut published: HashSet<(&str, Vec<u8>)> = messages.into_iter().collect();

    // Conflicts: the same queue_id asking for another amount, after the original.
    let withdrawals = replies.get_mut("withdraw_resp").context("subscribed")?;
    for q in good.iter().take(20) {
        withdrawals.wait(&format!("{q} status 2"), is(q, 2)).await?;
        let body = w.publish("withdraw", withdraw(q, user, to, "2")?).await?;
        published.insert(("withdraw", body));
        answers.add("withdraw_resp", q.clone(), 0, "already used");
    }
    // A topup refusal too, to prove the topup queue was not blocked.
    let probe = hex_addr(Address::random());
    let body = w.publish("topup", topup(&probe, "DOGE")).await?;
    published.insert(("topup", body));
    answers.add("topup_resp", probe.clone(), 0, "unknown symbol");

    // Every answer arrives: the refusals, the good ones broadcast, then final.
    for ((queue, key, status), (n, _)) in &answers.0 {
        if *status == 1 {
            continue;
        }
        let (q, k, s) = (*queue, key.clone(), *status);
        replies
            .get_mut(queue)
            .context("subscribed")?
            .wait_count(&format!("{queue} {key} status {status}"), *n, move |v| {
                v["status"] == s && key_of(q, v) == k
            })
            .await?;
    }
    w.mine(20).await?;
    for ((queue, key, status), (n, _)) in &answers.0 {
        if *status != 1 {
            continue;
        }
        let (q, k) = (*queue, key.clone());
        replies
            .get_mut(queue)
            .context("subscribed")?
            .wait_count(&format!("{queue} {key} status 1"), *n, move |v| {
                v["status"] == 1 && key_of(q, v) == k
            })
            .await?;
    }

    // Every message was taken from its queue and recorded once, and the
    // request queues are empty: nothing waits to be requeued.
    let store = w.store().await?;
    eventually("every distinct message recorded in the inbox", || async {
        Ok(store.inbox_span().await?.0 == published.len() as i64)
    })
    .await?;
    store.close().await;
    let queue_depth = async |kind: &str| -> Result<u32> {
        let name = w.config_json["rmq_config"][kind]["queue"]
            .as_str()
            .unwrap_or_default();
        let q = ch
            .queue_declare(
                name.into(),
                QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await?;
        Ok(q.message_count())
    };
    for (kind, _) in FLOWS {
        eventually(&format!("the {kind} queue is empty"), || async {
            Ok(queue_depth(kind).await? == 0)
        })
        .await?;
    }

    // Every unanswerable message reached the dead-letter exchange, once, in
    // order: a last unanswerable marker arrives last, after exactly `dead`.
    let marker = format!("{{\"marker\":\"{}\"}}", w.name).into_bytes();
    w.publish_raw("topup", &marker).await?;
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
    let mut by_kind: BTreeMap<String, usize> = BTreeMap::new();
    let mut too_big = 0;
    loop {
        let Ok(next) = tokio::time::timeout(WAIT, consumer.next()).await else {
            bail!("{got} dead letters arrived, and not the marker; {dead} expected before it");
        };
        let d = next.context("dead-letter stream ended")??;
        got += 1;
        let reason = d
            .properties
            .headers()
            .as_ref()
            .and_then(|h| h.inner().get("x-m2pool-reason").cloned());
        let Some(AMQPValue::LongString(reason)) = reason else {
            bail!("a dead letter without its reason: {reason:?}");
        };
        if String::from_utf8_lossy(reason.as_bytes()).contains("-byte limit") {
            too_big += 1;
        }
        if d.data == marker {
            break;
        }
        *by_kind.entry(d.routing_key.to_string()).or_default() += 1;
    }
    assert_eq!(got, dead + 1, "every dead letter once, then the marker");
    assert_eq!(too_big, 3, "the three bodies over 1 MiB");
    let mut want_by_kind: BTreeMap<String, usize> = BTreeMap::new();
    for (kind, _) in &dead_bodies {
        *want_by_kind.entry(kind.to_string()).or_default() += 1;
    }
    assert_eq!(by_kind, want_by_kind, "dead letters keyed by request kind");

    // Exactly the expected answers: none missing, none extra, none other.
    for (_, q) in FLOWS {
        let r = replies.get_mut(q).context("subscribed")?;
        r.drain();
        let mut seen: BTreeMap<(String, u64), Vec<&Reply>> = BTreeMap::new();
        for reply in &r.seen {
            let key = (
                key_of(q, &reply.v),
                reply.v["status"].as_u64().unwrap_or(99),
            );
            seen.entry(key).or_default().push(reply);
        }
        for ((key, status), got) in &seen {
            let Some((n, words)) = answers.0.get(&(q, key.clone(), *status)) else {
                bail!("{q}: an answer no message asks for: {}", got[0].raw);
            };
            assert_eq!(got.len(), *n, "{q} {key} status {status}: {n} answers");
            for reply in got {
                if let Some(words) = words {
                    let error = reply.v["error"].as_str().unwrap_or_default();
                    assert!(
                        error.contains(words.as_str()),
                        "{q} {key}: the error names `{words}`: {}",
                        reply.raw
                    );
                }
            }
        }
    }
    let remove_twice = replies["remove_resp"].matching(|v| v["address"] == unwatched.as_str());
    assert_eq!(
        remove_twice[0].raw, remove_twice[1].raw,
        "the same remove twice is answered alike"
    );
    eprintln!(
        "{bad} bad messages ({dead} distinct unanswerable ones dead-lettered, the rest answered) and {good_count} good ones, then 21 conflicts and probes; {} answers",
        answers.total()
    );

    // No money moved for a bad message: one transfer per good payout.
    assert_eq!(w.transfers_from(user).await?.len(), good.len() + 20);
    assert_eq!(
        w.usdt_balance(to).await?,
        U256::from(good.len() as u64 * 1_000_000)
    );
    assert_eq!(w.usdt_balance(pay_to[0]).await?, U256::from(10_000_000u64));
    assert_eq!(w.usdt_balance(pay_to[1]).await?, U256::from(5_000_000u64));
    assert_eq!(
        w.usdt_balance(user).await?,
        U256::from(1_000_000_000u64 - 100_000_000 - 15_000_000)
    );
    daemon.stop().await?;
    // With the daemon's connection closed, anything it held unacknowledged
    // would be back in its queue: there is nothing.
    for (kind, _) in FLOWS {
        assert_eq!(queue_depth(kind).await?, 0, "{kind} queue after the stop");
    }
    ch.queue_delete(dead_queue.as_str().into(), QueueDeleteOptions::default())
        .await?;
    ch.exchange_delete(dlx.as_str().into(), Default::default())
        .await?;
    w.cleanup().await
}
