//! Listen's decisions against a temporary store, without a broker or a node:
//! requests go in as the consumers hand them over, and what listen decided is
//! read back from the store (state and outbox rows).

use super::*;
use crate::config::Config;
use crate::msg::sign::sign_message;
use crate::secret::Secret;
use crate::server::Router;
use crate::store::PayoutState;
use alloy::primitives::{B256, U256};
use serde_json::{Value, json};

const CONFIG: &[u8] = include_bytes!("../../tests/fixtures/compat/config.go-v2.json");
const KEY: &[u8] = b"unit-secret";
const USER: &str = "0x4e5b2e1dc63f6b91cb6cd759936495434c7e972f";
const TO: &str = "0x2222222222222222222222222222222222222222";

struct Harness {
    _dir: tempfile::TempDir,
    store: Store,
    router: Router,
    listen: Listen,
}

async fn harness() -> Harness {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = Config::from_json(CONFIG).expect("config");
    let store = Store::open(&dir.path().join("msg.db"))
        .await
        .expect("store");
    let wakers = Wakers {
        outbox: Arc::default(),
        ledger: Arc::default(),
        payouts: HashMap::new(),
        lookback: HashMap::new(),
    };
    let listen = Listen::new(
        store.clone(),
        &config,
        wakers,
        TxLog::disabled(),
        SharedMetrics::default(),
        Health::default(),
    )
    .await
    .expect("listen");
    Harness {
        _dir: dir,
        router: Router::new(&config, Secret::new(KEY.to_vec())),
        store,
        listen,
    }
}

fn signed(mut v: Value) -> Vec<u8> {
    let s = sign_message(KEY, &serde_json::to_vec(&v).expect("json")).expect("signs");
    v["sign"] = s.into();
    serde_json::to_vec(&v).expect("json")
}

fn withdraw(queue_id: &str, amount: &str) -> Vec<u8> {
    let mut v = json!({"queue_id": queue_id, "from_address": USER, "to_address": TO,
        "chain": "ETH", "symbol": "USDT", "timestamp": 1});
    v["amount"] = serde_json::from_str(amount).expect("a number");
    signed(v)
}

impl Harness {
    /// Applies these requests as one batch, as the consumers hand them over.
    async fn apply(&mut self, requests: Vec<(Kind, Vec<u8>)>) {
        let mut batch: Vec<Inbound> = requests
            .into_iter()
            .map(|(kind, body)| Inbound {
                request: self.router.route(kind, body),
                ack: None,
            })
            .collect();
        self.listen
            .apply_requests(&mut batch)
            .await
            .expect("applied");
    }

    /// The answers queued for `kind`, oldest first.
    async fn answers(&self, kind: &str) -> Vec<Value> {
        self.store
            .outbox_bodies(kind)
            .await
            .expect("outbox")
            .iter()
            .map(|b| serde_json::from_slice(b).expect("json"))
            .collect()
    }
}

#[tokio::test]
async fn the_same_withdrawal_twice_is_one_payout_and_a_changed_one_is_refused() {
    let mut h = harness().await;
    h.apply(vec![(Kind::Withdraw, withdraw("w-1", "1.5"))])
        .await;
    // Sent again (same content, another delivery), and once with another
    // amount under the same queue_id: both in one batch.
    h.apply(vec![
        (Kind::Withdraw, withdraw("w-1", "1.5")),
        (Kind::Withdraw, withdraw("w-1", "2")),
    ])
    .await;
    let payouts = h.store.payouts("ETH").await.expect("payouts");
    assert_eq!(payouts.len(), 1, "one payout for one key");
    assert_eq!(payouts[0].state, PayoutState::Queued);
    assert_eq!(payouts[0].amount, U256::from(1_500_000u64));
    let answers = h.answers("withdraw_resp").await;
    let conflicts: Vec<&Value> = answers.iter().filter(|a| a["status"] == 0).collect();
    assert_eq!(
        conflicts.len(),
        1,
        "the changed repeat is refused: {answers:?}"
    );
    assert_eq!(conflicts[0]["queue_id"], "w-1");
    assert!(
        answers.iter().all(|a| a["status"] != 2 && a["status"] != 1),
        "nothing is sent or final yet: {answers:?}"
    );
}

#[tokio::test]
async fn a_remove_cancels_a_queued_payout_and_a_later_repeat_does_not_revive_it() {
    let mut h = harness().await;
    h.apply(vec![(Kind::Withdraw, withdraw("w-2", "1"))]).await;
    let remove = signed(json!({"queue_id": "w-2", "address": USER, "chain": "ETH",
        "symbol": "USDT", "timestamp": 2}));
    h.apply(vec![(Kind::Remove, remove)]).await;
    // The withdrawal delivered again after the remove.
    h.apply(vec![(Kind::Withdraw, withdraw("w-2", "1"))]).await;
    let payouts = h.store.payouts("ETH").await.expect("payouts");
    assert_eq!(payouts.len(), 1);
    assert_eq!(payouts[0].state, PayoutState::Cancelled, "still cancelled");
    let finals: Vec<Value> = h
        .answers("withdraw_resp")
        .await
        .into_iter()
        .filter(|a| a["queue_id"] == "w-2" && a["status"] == 0)
        .collect();
    assert!(!finals.is_empty(), "the cancel is answered 0");
}

#[tokio::test]
async fn a_topup_watches_once_and_a_remove_stops_it() {
    let mut h = harness().await;
    let address: alloy::primitives::Address = USER.parse().expect("address");
    let topup = signed(json!({"chain": "ETH", "symbol": "USDT", "address": USER, "timestamp": 1}));
    h.apply(vec![(Kind::Topup, topup.clone()), (Kind::Topup, topup)])
        .await;
    assert!(
        h.store
            .is_watched("ETH", "USDT", address)
            .await
            .expect("read"),
        "watched"
    );
    let remove = signed(json!({"chain": "ETH", "symbol": "USDT", "address": USER, "timestamp": 2}));
    h.apply(vec![(Kind::Remove, remove)]).await;
    assert!(
        !h.store
            .is_watched("ETH", "USDT", address)
            .await
            .expect("read"),
        "no longer watched"
    );
    let removes = h.answers("remove_resp").await;
    assert_eq!(removes.len(), 1, "{removes:?}");
    assert_eq!(removes[0]["status"], 1);
}

#[tokio::test]
async fn bad_requests_are_answered_and_move_nothing() {
    let mut h = harness().await;
    let mut forged = withdraw("w-3", "1");
    let mut v: Value = serde_json::from_slice(&forged).expect("json");
    v["sign"] = "00".into();
    forged = serde_json::to_vec(&v).expect("json");
    h.apply(vec![
        (Kind::Withdraw, forged),
        (Kind::Withdraw, withdraw("w-4", "0")),
        (Kind::Withdraw, withdraw("w-5", "0.0000001")),
        (Kind::Withdraw, b"{not json".to_vec()),
    ])
    .await;
    assert!(h.store.payouts("ETH").await.expect("payouts").is_empty());
    let answers = h.answers("withdraw_resp").await;
    let status = |q: &str| {
        answers
            .iter()
            .find(|a| a["queue_id"] == q)
            .map(|a| a["status"].clone())
    };
    assert_eq!(status("w-3"), Some(json!(3)), "bad signature: {answers:?}");
    assert_eq!(status("w-4"), Some(json!(0)), "zero amount");
    assert_eq!(status("w-5"), Some(json!(0)), "more decimals than USDT has");
}

/// A chain of blocks the test makes up: number `n` has hash `[n; 32]` on the
/// first branch and `[n + 100; 32]` on the second.
fn block(n: u64, branch: u8) -> crate::store::BlockRef {
    let hash = |n: u64, b: u8| {
        if n == 0 {
            B256::ZERO
        } else {
            B256::repeat_byte(n as u8 + b)
        }
    };
    crate::store::BlockRef {
        number: n,
        hash: hash(n, branch),
        parent_hash: hash(n - 1, if n == 1 { 0 } else { branch }),
    }
}

/// `block` applied with `transfers` in it.
fn applied(block: crate::store::BlockRef, transfers: Vec<crate::chain::Transfer>) -> ChainEvent {
    ChainEvent::Block {
        chain: "ETH".into(),
        block,
        transfers,
        own: Vec::new(),
    }
}

fn usdt_to_user(tx: u8) -> crate::chain::Transfer {
    crate::chain::Transfer {
        symbol: "USDT".into(),
        tx_hash: B256::repeat_byte(tx),
        log_index: 0,
        from: alloy::primitives::Address::repeat_byte(9),
        to: USER.parse().expect("address"),
        value: U256::from(2_000_000u64),
    }
}

impl Harness {
    async fn chain(&mut self, mut events: Vec<ChainEvent>) {
        self.listen.apply_chain(&mut events).await.expect("applied");
    }

    async fn blocks(&mut self, numbers: std::ops::RangeInclusive<u64>, branch: u8) {
        let events = numbers
            .map(|n| applied(block(n, branch), Vec::new()))
            .collect();
        self.chain(events).await;
    }

    async fn deposit_answers(&self) -> Vec<i64> {
        self.answers("topup_resp")
            .await
            .iter()
            .filter(|a| a["tx_hash"].as_str().is_some_and(|h| !h.is_empty()))
            .filter_map(|a| a["status"].as_i64())
            .collect()
    }
}

#[tokio::test]
async fn a_deposit_is_final_exactly_at_its_confirmation_height() {
    let mut h = harness().await;
    let topup = signed(json!({"chain": "ETH", "symbol": "USDT", "address": USER, "timestamp": 1}));
    h.apply(vec![(Kind::Topup, topup)]).await;
    h.chain(vec![applied(block(1, 0), vec![usdt_to_user(1)])])
        .await;
    assert_eq!(h.deposit_answers().await, [2], "seen");
    // confirm_height 20 (the Go config): final once the head is at the
    // deposit's block + 20 (README, "topup").
    h.blocks(2..=20, 0).await;
    assert_eq!(h.deposit_answers().await, [2], "not yet deep enough");
    h.blocks(21..=21, 0).await;
    assert_eq!(h.deposit_answers().await, [2, 1], "final at block 1 + 20");
}

#[tokio::test]
async fn a_deposit_whose_block_leaves_the_chain_fails() {
    let mut h = harness().await;
    let topup = signed(json!({"chain": "ETH", "symbol": "USDT", "address": USER, "timestamp": 1}));
    h.apply(vec![(Kind::Topup, topup)]).await;
    h.blocks(1..=1, 0).await;
    h.chain(vec![applied(block(2, 0), vec![usdt_to_user(7)])])
        .await;
    assert_eq!(h.deposit_answers().await, [2]);
    // Block 2 is replaced by another branch without the transfer.
    h.chain(vec![ChainEvent::Reorg {
        chain: "ETH".into(),
        fork: block(1, 0),
    }])
    .await;
    let mut other = block(2, 100);
    other.parent_hash = block(1, 0).hash;
    h.chain(vec![applied(other, Vec::new())]).await;
    h.blocks(3..=25, 100).await;
    assert_eq!(
        h.deposit_answers().await,
        [2, 0],
        "answered 0 once deep enough, never 1"
    );
}
