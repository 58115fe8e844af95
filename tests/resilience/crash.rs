//! The daemon killed with SIGKILL at random moments of a mixed workload and
//! started again each time: afterwards every request has its final answer
//! (repeats only as identical copies), every payout is on chain exactly once,
//! every deposit is reported, and the ledger matches the chain.

use crate::common::*;
use crate::withdraw;
use alloy::primitives::{Address, B256, I256, U256};
use anyhow::{Context, Result};
use m2pool_payment::wallet::Label;
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

/// A small xorshift generator: the kill moments vary from run to run, and the
/// seed is printed so a failing run can be repeated.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_at_random_moments_loses_nothing_and_pays_once() -> Result<()> {
    let seed = std::env::var("CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(7)
                | 1
        });
    eprintln!("crash test seed: CRASH_SEED={seed}");
    let mut rng = Rng(seed);

    let w = World::with("crash", &[], |c| {
        c["eth_config"]["rebroadcast_secs"] = 1.into()
    })
    .await?;
    let mut topups = w.replies("topup_resp").await?;
    let mut withdrawals = w.replies("withdraw_resp").await?;
    let mut pays = w.replies("pay_resp").await?;
    let user = w.new_wallet(Label::User).await?;
    w.fund(user, 10_000_000_000, ether(10)).await?;

    // Watched addresses (set up before the chaos, so their deposits count).
    let mut daemon = w.spawn_process(&[])?;
    let watched: Vec<Address> = (0..10).map(|_| Address::random()).collect();
    for a in &watched {
        w.publish("topup", topup(&hex_addr(*a), "USDT")).await?;
    }
    for a in &watched {
        w.wait_watched("USDT", *a, true).await?;
    }

    // The workload, published in rounds, with a SIGKILL and a restart after
    // each round at a random moment.
    let recipients: Vec<Address> = (0..5).map(|_| Address::random()).collect();
    let mut deposits: Vec<(B256, Address, u64)> = Vec::new();
    let mut paid: BTreeMap<Address, u64> = BTreeMap::new();
    let mut payouts: Vec<(&'static str, String, String)> = Vec::new(); // (queue, queue_id, order_id)
    for round in 0..4 {
        for i in 0..15 {
            let q = format!("cw-{round}-{i}");
            let to = recipients[(i % 5) as usize];
            let units = 1_000_000 + rng.below(1_000) * 1_000;
            let amount = m2pool_payment::msg::amount::format_units(U256::from(units), 6);
            w.publish("withdraw", withdraw(&q, user, to, &amount)?)
                .await?;
            *paid.entry(to).or_default() += units;
            payouts.push(("withdraw_resp", q, String::new()));
        }
        let q = format!("cp-{round}");
        let items: Vec<Value> = (0..3)
            .map(|k| json!({"order_id": format!("o-{k}"), "to_address": hex_addr(recipients[k]), "amount": 2}))
            .collect();
        for (k, to) in recipients.iter().take(3).enumerate() {
            *paid.entry(*to).or_default() += 2_000_000;
            payouts.push(("pay_resp", q.clone(), format!("o-{k}")));
        }
        w.publish(
            "pay",
            json!({"queue_id": q, "from_address": hex_addr(user), "chain": "ETH", "symbol": "USDT",
            "timestamp": 1758610297, "transactions": items}),
        )
        .await?;
        for k in 0..3 {
            let to = watched[((round * 3 + k) % 10) as usize];
            let units = 500_000 + rng.below(100) * 10_000;
            let (tx, _) = w.send_usdt(w.user(), to, units).await?;
            deposits.push((tx, to, units));
        }
        w.mine(rng.below(3)).await?;

        tokio::time::sleep(Duration::from_millis(rng.below(250))).await;
        daemon.0.kill()?;
        daemon.0.wait()?;
        daemon = w.spawn_process(&[])?;
    }

    // Let it finish: mine, a few blocks at a time, until everything is final
    // (payouts broadcast again after the last restart are mined late).
    let done = |topups: &Replies, withdrawals: &Replies, pays: &Replies| {
        deposits.iter().all(|(tx, _, _)| {
            let hash = format!("{tx:#x}");
            !topups
                .matching(|v| v["tx_hash"] == hash && v["status"] == 1)
                .is_empty()
        }) && payouts.iter().all(|(queue, q, o)| {
            let replies = if *queue == "pay_resp" {
                pays
            } else {
                withdrawals
            };
            !replies
                .matching(|v| {
                    v["queue_id"] == q.as_str()
                        && v["status"] == 1
                        && (o.is_empty() || v["order_id"] == o.as_str())
                })
                .is_empty()
        })
    };
    for _ in 0..30 {
        for r in [&mut topups, &mut withdrawals, &mut pays] {
            r.drain();
        }
        if done(&topups, &withdrawals, &pays) {
            break;
        }
        w.mine(5).await?;
        let head = w.head().await?;
        eventually("the daemon reads the new blocks", || async {
            let Ok(store) = w.store().await else {
                return Ok(false);
            };
            let cursor = store
                .recent_blocks("ETH", 1)
                .await
                .ok()
                .and_then(|b| b.first().map(|b| b.number));
            store.close().await;
            Ok(cursor >= Some(head))
        })
        .await?;
    }
    let all_final =
        async |topups: &mut Replies, withdrawals: &mut Replies, pays: &mut Replies| -> Result<()> {
            for (tx, _, _) in &deposits {
                let hash = format!("{tx:#x}");
                topups
                    .wait(&format!("deposit {hash} final"), move |v| {
                        v["tx_hash"] == hash && v["status"] == 1
                    })
                    .await?;
            }
            for (queue, q, o) in &payouts {
                let replies = if *queue == "pay_resp" {
                    &mut *pays
                } else {
                    &mut *withdrawals
                };
                let (q2, o2) = (q.clone(), o.clone());
                replies
                    .wait(&format!("{q} {o} final"), move |v| {
                        v["queue_id"] == q2.as_str()
                            && v["status"] == 1
                            && (o2.is_empty() || v["order_id"] == o2.as_str())
                    })
                    .await?;
            }
            Ok(())
        };
    if let Err(e) = all_final(&mut topups, &mut withdrawals, &mut pays).await {
        let kept = std::env::temp_dir().join(format!("m2pool-crash-{seed}.log"));
        let _ = std::fs::copy(w.daemon_log_path(), &kept);
        for f in ["msg.db", "msg.db-wal", "msg.db-shm"] {
            let _ = std::fs::copy(
                w.dir.path().join(f),
                std::env::temp_dir().join(format!("m2pool-crash-{seed}.{f}")),
            );
        }
        eprintln!("daemon log kept at {}", kept.display());
        let store = w.store().await?;
        eprintln!(
            "head {} cursor {:?}",
            w.head().await?,
            store
                .recent_blocks("ETH", 1)
                .await?
                .first()
                .map(|b| b.number)
        );
        return Err(e);
    }

    // Every payout on chain exactly once, for exactly what was asked.
    assert_eq!(
        w.transfers_from(user).await?.len(),
        payouts.len(),
        "one transfer per payout"
    );
    for (to, units) in &paid {
        assert_eq!(
            w.usdt_balance(*to).await?,
            U256::from(*units),
            "paid to {to:#x}"
        );
    }
    // Repeats are identical copies.
    for (replies, name) in [(&withdrawals, "withdraw"), (&pays, "pay")] {
        let mut by_key: BTreeMap<(String, String, u64), BTreeSet<String>> = BTreeMap::new();
        for r in &replies.seen {
            let key = (
                r.v["queue_id"].as_str().unwrap_or_default().to_owned(),
                r.v["order_id"].as_str().unwrap_or_default().to_owned(),
                r.v["status"].as_u64().unwrap_or(99),
            );
            by_key.entry(key).or_default().insert(r.raw.clone());
        }
        for (key, copies) in by_key {
            assert_eq!(
                copies.len(),
                1,
                "{name} {key:?} answered differently: {copies:?}"
            );
            assert!(
                key.2 == 1 || key.2 == 2,
                "{name} {key:?}: unexpected status"
            );
        }
    }
    for (tx, _, _) in &deposits {
        let hash = format!("{tx:#x}");
        let copies: BTreeSet<String> = topups
            .matching(|v| v["tx_hash"] == hash)
            .into_iter()
            .map(|r| r.raw)
            .collect();
        assert_eq!(
            copies.len(),
            2,
            "one status 2 and one status 1 for {hash}: {copies:?}"
        );
    }

    // The ledger matches the chain.
    let wallets = w.wallets().await?;
    let total: u64 = paid.values().sum();
    eventually("the ledger catches up", || async {
        Ok(wallets.balance("ETH", user, "USDT").await? == -I256::try_from(total)?)
    })
    .await?;
    for a in &watched {
        let deposited: u64 = deposits
            .iter()
            .filter(|(_, to, _)| to == a)
            .map(|(_, _, u)| u)
            .sum();
        let on_chain = w.usdt_balance(*a).await?;
        assert_eq!(on_chain, U256::from(deposited));
        assert_eq!(
            wallets.balance("ETH", *a, "USDT").await?,
            I256::try_from(deposited)?,
            "ledger of {a:#x}"
        );
    }
    wallets.close().await;
    drop(daemon);
    w.cleanup().await.context("cleanup")
}
