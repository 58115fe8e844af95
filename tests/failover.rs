//! High availability against the real services: two daemons on one message
//! store (MariaDB, or one SQLite file), one active and one standby, the
//! active one killed or frozen; and a second gateway with a store of its own
//! on the same queues (docs/architecture.md, "High availability").

mod common;

use alloy::primitives::{Address, B256, U256};
use anyhow::{Context, Result, ensure};
use common::http::{free_port, metrics, sample, wait_health, wait_metrics};
use common::*;
use m2pool_payment::wallet::Label;
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

/// The lease the MariaDB tests run with: short, so they wait little.
const LEASE_SECS: u64 = 4;

/// A withdrawal request of `units` test USDT (6 decimals).
fn withdraw(queue_id: &str, from: Address, to: Address, units: u64) -> Value {
    let amount = m2pool_payment::msg::amount::format_units(U256::from(units), 6);
    let mut v = json!({"queue_id": queue_id, "from_address": hex_addr(from),
                       "to_address": hex_addr(to), "chain": "ETH", "symbol": "USDT",
                       "timestamp": 1758610297});
    v["amount"] = serde_json::from_str(&amount).unwrap_or(Value::Null);
    v
}

/// A world whose message store and wallet store are one fresh MariaDB
/// database; returns it and the database's name.
async fn shared_world(test: &str) -> Result<(World, String)> {
    let (db, mysql) = mariadb_database(test).await?;
    let w = World::with(test, &[], |c| {
        c["mysql_config"] =
            json!({"wallet": mysql["wallet"].clone(), "msg": mysql["wallet"].clone()});
        c["ha_config"] = json!({"lease_secs": LEASE_SECS});
        c["eth_config"]["rebroadcast_secs"] = 1.into();
    })
    .await?;
    Ok((w, db))
}

/// One daemon process of `w`, named `name`, with `/healthz` on `port`.
fn instance(w: &World, name: &str, port: u16) -> Result<ChildGuard> {
    let mut c = w.config_json.clone();
    c["ha_config"]["instance_id"] = name.into();
    c["http_config"] = json!({"listen": format!("127.0.0.1:{port}")});
    w.spawn_process_as(name, &c, &[])
}

async fn active(port: u16, term: u64) -> Result<Value> {
    wait_health(port, &format!("active in term {term}"), WAIT, |_, h| {
        h["role"] == "active" && h["term"] == term
    })
    .await
}

async fn standby(port: u16) -> Result<Value> {
    wait_health(port, "standby", WAIT, |status, h| {
        status == 200 && h["status"] == "standby" && h["role"] == "standby"
    })
    .await
}

/// Mines until every deposit and payout of the lists is answered final,
/// a few blocks a round, calling `each_round` first in each round.
async fn finish(
    w: &World,
    topups: &mut Replies,
    payouts: &mut Replies,
    deposits: &[B256],
    queue_ids: &[String],
    mut each_round: impl FnMut() -> Result<()>,
) -> Result<()> {
    let done = |topups: &Replies, payouts: &Replies| {
        deposits
            .iter()
            .all(|tx| !topups.matching(deposit_of(*tx, 1)).is_empty())
            && queue_ids
                .iter()
                .all(|q| !payouts.matching(payout_of(q, 1)).is_empty())
    };
    for _ in 0..80 {
        each_round()?;
        topups.drain();
        payouts.drain();
        if done(topups, payouts) {
            return Ok(());
        }
        w.mine(5).await?;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    for tx in deposits {
        topups.wait("deposit final", deposit_of(*tx, 1)).await?;
    }
    for q in queue_ids {
        payouts.wait(&format!("{q} final"), payout_of(q, 1)).await?;
    }
    Ok(())
}

/// Instance `a`, active in term 1, and `b`, its standby, each with its
/// `/healthz` port.
async fn pair(w: &World) -> Result<[(&'static str, u16, ChildGuard); 2]> {
    let (pa, pb) = (free_port()?, free_port()?);
    let a = instance(w, "a", pa)?;
    active(pa, 1).await?;
    let b = instance(w, "b", pb)?;
    standby(pb).await?;
    Ok([("a", pa, a), ("b", pb, b)])
}

/// `n` new addresses, watched for USDT once the active instance has them.
async fn watch_new(w: &World, n: usize) -> Result<Vec<Address>> {
    let watched: Vec<Address> = (0..n).map(|_| Address::random()).collect();
    let bodies: Vec<Vec<u8>> = watched
        .iter()
        .map(|a| signed(topup(&hex_addr(*a), "USDT")))
        .collect::<Result<_>>()?;
    w.publish_all("topup", &bodies).await?;
    for a in &watched {
        w.wait_watched("USDT", *a, true).await?;
    }
    Ok(watched)
}

/// Publishes a withdrawal of `units` per queue id, the `i`-th from
/// `from(i)`, each to a new address.
async fn publish_withdrawals(
    w: &World,
    queue_ids: &[String],
    from: impl Fn(usize) -> Address,
    units: impl Fn(usize) -> u64,
) -> Result<()> {
    let bodies: Vec<Vec<u8>> = queue_ids
        .iter()
        .enumerate()
        .map(|(i, q)| signed(withdraw(q, from(i), Address::random(), units(i))))
        .collect::<Result<_>>()?;
    w.publish_all("withdraw", &bodies).await
}

/// Every answer repeated is the identical body, and a payout has one `2`
/// and one `1` at most apart from repeats; a deposit exactly one of each.
fn answers_are_consistent(topups: &Replies, payouts: &Replies, deposits: &[B256]) {
    let mut by_key: BTreeMap<(String, u64), BTreeSet<String>> = BTreeMap::new();
    for r in &payouts.seen {
        let key = (
            r.v["queue_id"].as_str().unwrap_or_default().to_owned(),
            r.v["status"].as_u64().unwrap_or(99),
        );
        by_key.entry(key).or_default().insert(r.raw.clone());
    }
    for (key, copies) in by_key {
        assert_eq!(copies.len(), 1, "{key:?} answered differently: {copies:?}");
        assert!(key.1 == 1 || key.1 == 2, "{key:?}: unexpected status");
    }
    for tx in deposits {
        let hash = format!("{tx:#x}");
        let copies: BTreeSet<String> = topups
            .matching(|v| v["tx_hash"] == hash)
            .into_iter()
            .map(|r| r.raw)
            .collect();
        assert_eq!(copies.len(), 2, "one 2 and one 1 for {hash}: {copies:?}");
    }
}

/// Each of `wallets` sent exactly `each` USDT transfers and `each`
/// transactions in all (no nonce skipped, none spent twice).
async fn paid_once(w: &World, wallets: &[Address], each: usize) -> Result<()> {
    for hot in wallets {
        let transfers = w.transfers_from(*hot).await?;
        assert_eq!(
            transfers.len(),
            each,
            "one transfer per payout from {hot:#x}"
        );
        assert_eq!(
            w.nonce(*hot).await?,
            each as u64,
            "no nonce gap for {hot:#x}"
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_standby_takes_over_after_a_sigkill_and_nothing_is_lost_or_paid_twice() -> Result<()> {
    let (w, db) = shared_world("failover_kill").await?;
    let mut topups = w.replies("topup_resp").await?;
    let mut payouts = w.replies("withdraw_resp").await?;
    let hot = [
        w.new_wallet(Label::User).await?,
        w.new_wallet(Label::User).await?,
    ];
    for h in hot {
        w.fund(h, 1_000_000_000, ether(10)).await?;
    }
    let [(_, pa, mut a), (_, pb, b)] = pair(&w).await?;
    wait_metrics(pb, &[("m2pool_active", 0.0), ("m2pool_lease_term", 1.0)]).await?;
    let h = standby(pb).await?;
    assert_eq!(h["active"]["instance"], "a", "{h}");
    let m = metrics(pa).await?;
    assert_eq!(sample(&m, "m2pool_active"), Some(1.0), "{m}");
    assert_eq!(sample(&m, "m2pool_lease_term"), Some(1.0), "{m}");

    // 100 watched addresses, 200 withdrawals from two wallets, deposits.
    let watched = watch_new(&w, 100).await?;
    let queue_ids: Vec<String> = (0..200).map(|i| format!("fk-{i}")).collect();
    publish_withdrawals(&w, &queue_ids, |i| hot[i % 2], |i| 1_000 + i as u64).await?;
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .subsec_nanos() as usize;
    let kill_after = 1 + seed % 150;
    eprintln!("killing the active instance after {kill_after} payouts were sent");
    let mut deposits = Vec::new();
    for (i, to) in watched.iter().enumerate() {
        let (tx, _) = w.send_usdt(w.user(), *to, 10_000 + i as u64).await?;
        deposits.push(tx);
        if i == 30 {
            payouts
                .wait_count("payouts sent before the kill", kill_after, |v| {
                    v["status"] == 2
                })
                .await?;
            a.0.kill()?;
            a.0.wait()?;
        }
    }
    let killed = Instant::now();
    active(pb, 2).await?;
    eprintln!(
        "the standby took over {:?} after the kill",
        killed.elapsed()
    );

    finish(&w, &mut topups, &mut payouts, &deposits, &queue_ids, || {
        Ok(())
    })
    .await?;
    answers_are_consistent(&topups, &payouts, &deposits);
    paid_once(&w, &hot, 100).await?;
    drop(b);
    w.cleanup().await?;
    drop_mariadb_database(&db).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_active_instance_is_fenced_when_it_wakes() -> Result<()> {
    let (w, db) = shared_world("failover_stop").await?;
    let mut topups = w.replies("topup_resp").await?;
    let mut payouts = w.replies("withdraw_resp").await?;
    let hot = w.new_wallet(Label::User).await?;
    w.fund(hot, 1_000_000_000, ether(10)).await?;
    let [(_, _, a), (_, pb, b)] = pair(&w).await?;
    let watched = watch_new(&w, 10).await?;
    let mut queue_ids: Vec<String> = (0..20).map(|i| format!("fs-{i}")).collect();
    publish_withdrawals(&w, &queue_ids, |_| hot, |_| 2_000).await?;
    payouts
        .wait_count("a few payouts sent", 5, |v| v["status"] == 2)
        .await?;

    // Frozen past its lease: the standby takes over and serves.
    let pid = a.0.id().to_string();
    let kill = |sig: &str| {
        std::process::Command::new("kill")
            .args([sig, &pid])
            .status()
    };
    ensure!(kill("-STOP")?.success(), "SIGSTOP");
    active(pb, 2).await?;
    let mut deposits = Vec::new();
    for (i, to) in watched.iter().enumerate() {
        deposits.push(w.send_usdt(w.user(), *to, 5_000 + i as u64).await?.0);
    }
    for i in 20..30 {
        let q = format!("fs-{i}");
        w.publish("withdraw", withdraw(&q, hot, Address::random(), 2_000))
            .await?;
        queue_ids.push(q);
    }
    payouts
        .wait(
            "a payout asked of the new active instance sent",
            payout_of("fs-29", 2),
        )
        .await?;

    // Woken, the old one finds its lease gone and stops without committing,
    // signing or publishing anything.
    let log_a = w.dir.path().join("a.log");
    let before = std::fs::read_to_string(&log_a)?.len();
    ensure!(kill("-CONT")?.success(), "SIGCONT");
    let mut a = a;
    let status = tokio::time::timeout(WAIT, async {
        loop {
            if let Some(s) = a.0.try_wait()? {
                return Ok::<_, anyhow::Error>(s);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .context("the woken instance did not stop")??;
    assert!(!status.success(), "it stops with an error: {status:?}");
    let after = std::fs::read_to_string(&log_a)?;
    let woken = &after[before..];
    assert!(
        woken.contains("lost the lease") || woken.contains("no longer holds the lease"),
        "it says why: {woken}"
    );
    // A commit it had sent before it froze may have been done by the
    // database then (before the take-over, which waits for it); its log
    // line comes after waking. Anything else it signed would have failed
    // its commit and never be named in an answer.
    let signed_after_waking: Vec<String> = woken
        .lines()
        .filter(|l| l.contains("payout signed"))
        .filter_map(|l| l.split("tx=").nth(1))
        .map(|t| t.split_whitespace().next().unwrap_or_default().to_owned())
        .collect();

    finish(&w, &mut topups, &mut payouts, &deposits, &queue_ids, || {
        Ok(())
    })
    .await?;
    for tx in &signed_after_waking {
        assert!(
            payouts.seen.iter().any(|r| r.v["tx_hash"] == tx.as_str()),
            "{tx}, logged as signed after waking, was committed before the take-over and answered: {woken}"
        );
    }
    answers_are_consistent(&topups, &payouts, &deposits);
    paid_once(&w, &[hot], queue_ids.len()).await?;
    drop(b);
    w.cleanup().await?;
    drop_mariadb_database(&db).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_instance_on_the_same_sqlite_file_waits_as_a_standby() -> Result<()> {
    let w = World::new("failover-sqlite").await?;
    let mut topups = w.replies("topup_resp").await?;
    let (pa, pb) = (free_port()?, free_port()?);
    let a = w.start_with(common::http::with_http(pa, json!({})))?;
    active(pa, 1).await?;
    let b = w.start_with(common::http::with_http(pb, json!({})))?;
    standby(pb).await?;
    wait_health(pb, "a standby keeps a broker connection", WAIT, |s, h| {
        s == 200 && h["broker_connected"] == true
    })
    .await?;
    assert!(
        w.dir.path().join("msg.db.lease").exists(),
        "the lock file beside the store"
    );

    let first = Address::random();
    w.publish("topup", topup(&hex_addr(first), "USDT")).await?;
    w.wait_watched("USDT", first, true).await?;
    let (tx, _) = w.send_usdt(w.user(), first, 1_000).await?;
    topups
        .wait("deposit seen by the first", deposit_of(tx, 2))
        .await?;

    // A clean stop gives the lease up: the standby takes over at once and
    // carries on from the same store.
    a.stop().await?;
    active(pb, 2).await?;
    let second = Address::random();
    w.publish("topup", topup(&hex_addr(second), "USDT")).await?;
    w.wait_watched("USDT", second, true).await?;
    let (tx2, _) = w.send_usdt(w.user(), second, 2_000).await?;
    topups
        .wait("deposit seen by the second", deposit_of(tx2, 2))
        .await?;
    w.mine(20).await?;
    topups
        .wait("first deposit final", deposit_of(tx, 1))
        .await?;
    topups
        .wait("second deposit final", deposit_of(tx2, 1))
        .await?;
    b.stop().await?;
    w.cleanup().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_with_a_store_of_its_own_on_the_same_queues_is_refused() -> Result<()> {
    let w = World::new("failover-second").await?;
    let mut topups = w.replies("topup_resp").await?;
    let (pa, pb) = (free_port()?, free_port()?);
    let a = w.start_with(common::http::with_http(pa, json!({})))?;
    active(pa, 1).await?;
    wait_health(pa, "consuming", WAIT, |s, h| {
        s == 200 && h["status"] == "ok"
    })
    .await?;

    let other = tempfile::tempdir()?;
    let other_store = other.path().join("msg.db");
    let edit_http = common::http::with_http(pb, json!({}));
    let (store_path, wallet_path) = (other_store.clone(), other.path().join("wallet.db"));
    let b = w.start_with(move |c| {
        edit_http(c);
        c["msg_config"]["sqlite_path"] = json!(store_path);
        c["eth_config"]["sqlite_path"] = json!(wallet_path);
    })?;
    let h = wait_health(pb, "refused the queues", WAIT, |s, h| {
        s == 503
            && h["problems"]
                .to_string()
                .contains("is consumed by another program")
    })
    .await?;
    assert_eq!(h["role"], "active", "it holds its own store's lease: {h}");

    // Requests go to the first gateway only; the second records nothing.
    let addr = Address::random();
    w.publish("topup", topup(&hex_addr(addr), "USDT")).await?;
    w.wait_watched("USDT", addr, true).await?;
    let (tx, _) = w.send_usdt(w.user(), addr, 3_000).await?;
    topups.wait("deposit answered", deposit_of(tx, 2)).await?;
    let theirs = m2pool_payment::store::Store::open_read_only(&other_store).await?;
    assert_eq!(
        theirs.inbox_span().await?.0,
        0,
        "nothing consumed by the second"
    );
    theirs.close().await;
    let still = common::http::healthz(pb).await;
    assert_eq!(still.0, 503, "still waiting: {}", still.1);

    // The queues free, it starts.
    a.stop().await?;
    wait_health(pb, "starts once the queues are free", WAIT, |_, h| {
        !h["problems"]
            .to_string()
            .contains("is consumed by another program")
            && h["role"] == "active"
    })
    .await?;
    b.stop().await?;
    w.cleanup().await
}

/// Starts again, as a supervisor would, each instance whose process ended;
/// returns how many were started again.
fn supervise(w: &World, instances: &mut [(&'static str, u16, ChildGuard)]) -> Result<usize> {
    let mut restarted = 0;
    for (name, port, child) in instances.iter_mut() {
        if child.0.try_wait()?.is_some() {
            *child = instance(w, name, *port)?;
            restarted += 1;
        }
    }
    Ok(restarted)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_restart_while_both_run_loses_nothing() -> Result<()> {
    let mut db = common::mariadb::PrivateMariadb::start()?;
    let cfg = db.database("ha").await?;
    let w = World::with("failover-db", &[], |c| {
        c["mysql_config"] = json!({"wallet": cfg.clone(), "msg": cfg.clone()});
        c["ha_config"] = json!({"lease_secs": LEASE_SECS});
        c["eth_config"]["rebroadcast_secs"] = 1.into();
    })
    .await?;
    let mut topups = w.replies("topup_resp").await?;
    let mut payouts = w.replies("withdraw_resp").await?;
    let hot = w.new_wallet(Label::User).await?;
    w.fund(hot, 1_000_000_000, ether(10)).await?;
    let mut instances = pair(&w).await?;
    let watched = watch_new(&w, 10).await?;
    let mut queue_ids: Vec<String> = (0..30).map(|i| format!("fd-{i}")).collect();
    publish_withdrawals(&w, &queue_ids, |_| hot, |_| 3_000).await?;
    payouts
        .wait_count("a few payouts sent", 5, |v| v["status"] == 2)
        .await?;

    // The database restarts while requests and blocks keep coming.
    db.stop_server()?;
    let mut deposits = Vec::new();
    for (i, to) in watched.iter().enumerate().take(5) {
        deposits.push(w.send_usdt(w.user(), *to, 7_000 + i as u64).await?.0);
    }
    for i in 30..40 {
        let q = format!("fd-{i}");
        w.publish("withdraw", withdraw(&q, hot, Address::random(), 3_000))
            .await?;
        queue_ids.push(q);
    }
    db.start_server()?;
    for (i, to) in watched.iter().enumerate().skip(5) {
        deposits.push(w.send_usdt(w.user(), *to, 7_000 + i as u64).await?.0);
    }

    // One of them is active again (each stopped instance started again, as
    // its supervisor would), and everything is answered once.
    let mut restarts = 0;
    finish(&w, &mut topups, &mut payouts, &deposits, &queue_ids, || {
        restarts += supervise(&w, &mut instances)?;
        Ok(())
    })
    .await?;
    eprintln!("instances started again after the database restart: {restarts}");
    answers_are_consistent(&topups, &payouts, &deposits);
    paid_once(&w, &[hot], queue_ids.len()).await?;
    drop(instances);
    w.cleanup().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quorum_queues_serve_every_flow_with_one_gateway_per_queue() -> Result<()> {
    let w = World::with("failover-quorum", &[], |c| {
        if let Some(entries) = c["rmq_config"].as_object_mut() {
            for e in entries.values_mut().filter(|e| e.is_object()) {
                e["arguments"] = json!({"x-queue-type": "quorum"});
            }
        }
    })
    .await?;
    let mut topups = w.replies("topup_resp").await?;
    let mut payouts = w.replies("withdraw_resp").await?;
    let hot = w.new_wallet(Label::User).await?;
    w.fund(hot, 100_000_000, ether(1)).await?;
    let (pa, pb) = (free_port()?, free_port()?);
    let a = w.start_with(common::http::with_http(pa, json!({})))?;
    wait_health(pa, "up", WAIT, |s, h| s == 200 && h["role"] == "active").await?;

    let addr = Address::random();
    w.publish("topup", topup(&hex_addr(addr), "USDT")).await?;
    w.wait_watched("USDT", addr, true).await?;
    let (tx, _) = w.send_usdt(w.user(), addr, 4_000).await?;
    topups.wait("deposit seen", deposit_of(tx, 2)).await?;
    w.publish("withdraw", withdraw("fq-1", hot, Address::random(), 5_000))
        .await?;
    payouts.wait("payout sent", payout_of("fq-1", 2)).await?;

    // A second gateway with a store of its own waits: exclusive consumers
    // hold on quorum queues too.
    let other = tempfile::tempdir()?;
    let (store_path, wallet_path) = (other.path().join("msg.db"), other.path().join("wallet.db"));
    let edit_http = common::http::with_http(pb, json!({}));
    let b = w.start_with(move |c| {
        edit_http(c);
        c["msg_config"]["sqlite_path"] = json!(store_path);
        c["eth_config"]["sqlite_path"] = json!(wallet_path);
    })?;
    wait_health(pb, "refused the queues", WAIT, |s, h| {
        s == 503
            && h["problems"]
                .to_string()
                .contains("is consumed by another program")
    })
    .await?;

    w.mine(20).await?;
    topups.wait("deposit final", deposit_of(tx, 1)).await?;
    payouts.wait("payout final", payout_of("fq-1", 1)).await?;
    a.stop().await?;
    b.stop().await?;
    w.cleanup().await
}
