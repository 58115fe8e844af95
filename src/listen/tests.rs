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

/// [`USER`] as an address.
fn user() -> alloy::primitives::Address {
    USER.parse().expect("address")
}
const TO: &str = "0x2222222222222222222222222222222222222222";

struct Harness {
    _scratch: crate::store::TestScratch,
    store: Store,
    router: Router,
    listen: Listen,
}

async fn harness() -> Harness {
    let config = Config::from_json(CONFIG).expect("config");
    // SQLite, or MariaDB as the store's own tests (`M2POOL_TEST_STORE`).
    let (scratch, store) = crate::store::test_store().await;
    let wakers = Wakers {
        outbox: Arc::default(),
        stream: Arc::default(),
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
        _scratch: scratch,
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

/// New payouts are written together at the end of their batch: one
/// batch that queues a withdrawal, reuses its key with other content,
/// cancels it and queues another sees each step as if applied one by one.
#[tokio::test]
async fn new_payouts_written_together_are_seen_by_the_rest_of_their_batch() {
    let mut h = harness().await;
    let remove = signed(json!({"queue_id": "w-3", "address": USER, "chain": "ETH",
        "symbol": "USDT", "timestamp": 3}));
    h.apply(vec![
        (Kind::Withdraw, withdraw("w-3", "1")),
        (Kind::Withdraw, withdraw("w-3", "2")),
        (Kind::Remove, remove),
        (Kind::Withdraw, withdraw("w-4", "4")),
        (Kind::Withdraw, withdraw("w-4", "4")),
    ])
    .await;
    let mut payouts = h.store.payouts("ETH").await.expect("payouts");
    payouts.sort_by(|a, b| a.queue_id.cmp(&b.queue_id));
    let seen: Vec<(&str, PayoutState, U256)> = payouts
        .iter()
        .map(|p| (p.queue_id.as_str(), p.state, p.amount))
        .collect();
    assert_eq!(
        seen,
        vec![
            ("w-3", PayoutState::Cancelled, U256::from(1_000_000u64)),
            ("w-4", PayoutState::Queued, U256::from(4_000_000u64)),
        ]
    );
    let answers = h.answers("withdraw_resp").await;
    let w3: Vec<(i64, bool)> = answers
        .iter()
        .filter(|a| a["queue_id"] == "w-3")
        .map(|a| (a["status"].as_i64().unwrap_or(-1), a["amount"] == 1))
        .collect();
    // The reuse with amount 2 is refused; the cancel answers 0 for amount 1.
    assert_eq!(w3, vec![(0, false), (0, true)], "{answers:?}");
    assert!(
        answers.iter().all(|a| a["queue_id"] != "w-4"),
        "the repeat of a new payout answers nothing while it is queued: {answers:?}"
    );
    let removes = h.answers("remove_resp").await;
    assert_eq!(removes.len(), 1, "{removes:?}");
    assert_eq!(removes[0]["status"], 1, "{removes:?}");
}

/// Keys that differ only in case (or trailing spaces) are two payouts on
/// SQLite and one key on MySQL/MariaDB, whose default collation ignores
/// case: either way a batch holding them is applied as it would be one
/// request at a time, never a failed insert that stops listen (run on both
/// engines by `bin/test.sh`).
#[tokio::test]
async fn keys_a_database_may_take_for_equal_are_decided_by_the_database() {
    let mut h = harness().await;
    h.apply(vec![(Kind::Withdraw, withdraw("Case-1", "1"))])
        .await;
    h.apply(vec![
        (Kind::Withdraw, withdraw("case-1", "2")),
        (Kind::Withdraw, withdraw("Case-2", "3")),
        (Kind::Withdraw, withdraw("CASE-2 ", "4")),
        (Kind::Withdraw, withdraw("Né-3", "5")),
        (Kind::Withdraw, withdraw("ne-3", "6")),
        (Kind::Withdraw, withdraw("w-5", "7")),
    ])
    .await;
    let mut queued: Vec<String> = h
        .store
        .payouts("ETH")
        .await
        .expect("payouts")
        .into_iter()
        .map(|p| p.queue_id)
        .collect();
    queued.sort();
    let refused: Vec<String> = h
        .answers("withdraw_resp")
        .await
        .into_iter()
        .filter(|a| a["status"] == 0)
        .filter_map(|a| a["queue_id"].as_str().map(str::to_owned))
        .collect();
    match h.store.engine() {
        crate::store::Engine::Sqlite => {
            assert_eq!(
                queued,
                [
                    "CASE-2 ", "Case-1", "Case-2", "Né-3", "case-1", "ne-3", "w-5"
                ]
            );
            assert!(refused.is_empty(), "{refused:?}");
        }
        crate::store::Engine::MySql => {
            // The collation decides; whatever it takes for one key is one
            // payout, the others refused as reusing it.
            assert!(queued.contains(&"w-5".to_owned()), "{queued:?}");
            assert_eq!(queued.len() + refused.len(), 7, "{queued:?} {refused:?}");
            assert!(refused.contains(&"case-1".to_owned()), "{refused:?}");
            assert!(refused.contains(&"CASE-2 ".to_owned()), "{refused:?}");
        }
    }
}

#[tokio::test]
async fn a_topup_watches_once_and_a_remove_stops_it() {
    let mut h = harness().await;
    let address = user();
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
        to: user(),
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

// The recorder: what the payout senders report becomes state and answers.

use crate::chain::PayoutFacts;

/// A signed transaction of payout `id` (bytes the store keeps, never sent here).
fn signed_tx(id: i64, hash: u8) -> crate::store::SignedTx {
    crate::store::SignedTx {
        payout_id: id,
        tx_hash: B256::repeat_byte(hash),
        raw: vec![hash; 8],
        gas_limit: 60_000,
        max_fee_per_gas: 2,
        priority_fee: 1,
        signed_at: 1,
        cancels: false,
    }
}

impl Harness {
    /// Applies a withdrawal of `amount` as `queue_id` and returns its stored
    /// payout.
    async fn withdrawn(&mut self, queue_id: &str, amount: &str) -> crate::store::Payout {
        self.apply(vec![(Kind::Withdraw, withdraw(queue_id, amount))])
            .await;
        self.payout(queue_id).await
    }

    /// The stored payout of withdrawal `queue_id`.
    async fn payout(&self, queue_id: &str) -> crate::store::Payout {
        let all = self.store.payouts("ETH").await.expect("payouts");
        all.into_iter()
            .find(|p| p.queue_id == queue_id)
            .expect("payout stored")
    }

    /// The answers of withdrawal `queue_id` by status, in order.
    async fn statuses(&self, queue_id: &str) -> Vec<i64> {
        self.answers("withdraw_resp")
            .await
            .iter()
            .filter(|a| a["queue_id"] == queue_id)
            .filter_map(|a| a["status"].as_i64())
            .collect()
    }
}

#[tokio::test]
async fn a_broadcast_the_node_refuses_answers_nothing_and_one_it_takes_answers_2_once() {
    let mut h = harness().await;
    let p = h.withdrawn("w-9", "1").await;
    let rec = h.listen.recorder();
    let wallet = user();
    let stx = signed_tx(p.id, 9);
    let gone = rec.signed(wallet, &[(7, &stx)], &[]).await.expect("signed");
    assert!(gone.is_empty());
    let p = h.payout("w-9").await;
    assert_eq!(
        (p.state, p.nonce, p.payer),
        (PayoutState::Signed, Some(7), Some(wallet)),
        "the nonce and bytes are committed before any broadcast"
    );

    let refused = crate::chain::Broadcast {
        tx: &stx,
        refused: Some("insufficient funds for gas".into()),
    };
    rec.broadcast(&[refused]).await.expect("recorded");
    let p = h.payout("w-9").await;
    assert_eq!(p.state, PayoutState::Signed);
    assert_eq!(p.refusal.as_deref(), Some("insufficient funds for gas"));
    assert!(p.refused_at.is_some());
    assert!(h.statuses("w-9").await.is_empty(), "a refusal is no answer");

    let taken = crate::chain::Broadcast {
        tx: &stx,
        refused: None,
    };
    rec.broadcast(std::slice::from_ref(&taken))
        .await
        .expect("recorded");
    rec.broadcast(&[taken]).await.expect("recorded again");
    let p = h.payout("w-9").await;
    assert_eq!(p.state, PayoutState::Sent);
    assert_eq!(p.refused_at, None, "taken: no longer refused");
    assert_eq!(h.statuses("w-9").await, vec![2], "status 2 once");
    let answer = &h.answers("withdraw_resp").await[0];
    assert_eq!(answer["tx_hash"], format!("{:#x}", stx.tx_hash));
    assert_eq!(answer["amount"], 1, "answered with the request's decimals");
}

#[tokio::test]
async fn a_payout_nobody_can_pay_is_refused_once_with_its_reason() {
    let mut h = harness().await;
    let p = h.withdrawn("w-10", "3").await;
    let rec = h.listen.recorder();
    let why = crate::chain::Refusal {
        payout: &p,
        error: "0x4e5b… holds 0 USDT, not enough for 3 USDT",
    };
    rec.refused(&[why]).await.expect("recorded");
    rec.refused(&[why]).await.expect("recorded again");
    assert_eq!(h.payout("w-10").await.state, PayoutState::Refused);
    let answers = h.answers("withdraw_resp").await;
    assert_eq!(
        h.statuses("w-10").await,
        vec![0],
        "refused once: {answers:?}"
    );
    assert_eq!(answers[0]["error"], why.error);
}

#[tokio::test]
async fn a_signed_batch_with_a_payout_cancelled_meanwhile_commits_nothing() {
    let mut h = harness().await;
    h.apply(vec![
        (Kind::Withdraw, withdraw("w-11", "1")),
        (Kind::Withdraw, withdraw("w-12", "1")),
        (Kind::Withdraw, withdraw("w-13", "1")),
    ])
    .await;
    let remove = signed(json!({"queue_id": "w-12", "address": USER, "chain": "ETH",
        "symbol": "USDT", "timestamp": 2}));
    h.apply(vec![(Kind::Remove, remove)]).await;
    let (a, b, c) = (
        h.payout("w-11").await,
        h.payout("w-12").await,
        h.payout("w-13").await,
    );
    let rec = h.listen.recorder();
    let wallet = user();
    let (ta, tb) = (signed_tx(a.id, 1), signed_tx(b.id, 2));
    let refusal = crate::chain::Refusal {
        payout: &c,
        error: "no gas",
    };
    let gone = rec
        .signed(wallet, &[(0, &ta), (1, &tb)], &[refusal])
        .await
        .expect("reported");
    assert_eq!(gone, vec![b.id], "the cancelled one is named");
    assert_eq!(
        h.payout("w-11").await.state,
        PayoutState::Queued,
        "nothing of the batch is kept: its nonces would leave a gap"
    );
    assert_eq!(h.payout("w-13").await.state, PayoutState::Queued);
    assert!(h.statuses("w-13").await.is_empty());
    // Signed again without it: nonce 0 is the first's, the refusal lands.
    let gone = rec
        .signed(wallet, &[(0, &ta)], &[refusal])
        .await
        .expect("reported");
    assert!(gone.is_empty());
    assert_eq!(h.payout("w-11").await.nonce, Some(0));
    assert_eq!(h.statuses("w-13").await, vec![0]);
}

#[tokio::test]
async fn a_replacement_is_recorded_only_while_the_transaction_it_replaces_is_current() {
    let mut h = harness().await;
    let p = h.withdrawn("w-14", "1").await;
    let rec = h.listen.recorder();
    let wallet = user();
    let (first, second, third) = (signed_tx(p.id, 1), signed_tx(p.id, 2), signed_tx(p.id, 3));
    rec.signed(wallet, &[(4, &first)], &[])
        .await
        .expect("signed");
    assert!(
        rec.replaced(first.tx_hash, &second)
            .await
            .expect("replaced")
    );
    assert_eq!(h.payout("w-14").await.tx_hash, Some(second.tx_hash));
    assert!(
        !rec.replaced(first.tx_hash, &third).await.expect("asked"),
        "the first is no longer current: the third must not be sent"
    );
    let p = h.payout("w-14").await;
    assert_eq!((p.tx_hash, p.nonce), (Some(second.tx_hash), Some(4)));
}

#[test]
fn chain_events_commit_per_network_each_in_its_order() {
    let block = |chain: &str, n: u64| ChainEvent::Block {
        chain: chain.into(),
        block: crate::store::BlockRef {
            number: n,
            hash: B256::repeat_byte(n as u8),
            parent_hash: B256::ZERO,
        },
        transfers: vec![],
        own: vec![],
    };
    let mut batch = vec![
        block("ETH", 1),
        block("BSC", 7),
        block("ETH", 2),
        ChainEvent::Lookback {
            chain: "BSC".into(),
            upto: 3,
            transfers: vec![],
        },
        block("ETH", 3),
    ];
    let groups = by_network(&mut batch);
    assert!(batch.is_empty());
    let seen: Vec<Vec<(String, u64)>> = groups
        .iter()
        .map(|g| {
            g.iter()
                .map(|e| {
                    let n = match e {
                        ChainEvent::Block { block, .. } => block.number,
                        ChainEvent::Lookback { upto, .. } => *upto as u64 + 100,
                        ChainEvent::Reorg { fork, .. } => fork.number,
                    };
                    (e.chain().to_owned(), n)
                })
                .collect()
        })
        .collect();
    let e = |c: &str, n| (c.to_owned(), n);
    assert_eq!(
        seen,
        vec![
            vec![e("ETH", 1), e("ETH", 2), e("ETH", 3)],
            vec![e("BSC", 7), e("BSC", 103)],
        ]
    );
    assert!(by_network(&mut Vec::new()).is_empty());
}
