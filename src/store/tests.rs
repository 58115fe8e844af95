use super::*;
use alloy::primitives::U256;
use std::collections::HashSet;

/// What a test's store lives in, removed when the test ends.
pub(crate) enum Scratch {
    /// The SQLite file's directory.
    Dir(tempfile::TempDir),
    /// A MariaDB database of its own.
    Database(String),
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if let Scratch::Database(name) = self {
            let name = name.clone();
            // Dropped from a thread of its own: the test's runtime is ending.
            let _ = std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .ok()?;
                rt.block_on(async {
                    use sqlx::Executor;
                    let admin = sqlx::MySqlPool::connect(MARIADB_ADMIN).await.ok()?;
                    // The test's own connections may still hold a transaction
                    // (its runtime ended before they were given back): they
                    // would keep the drop waiting for ever.
                    let ids: Vec<i64> = sqlx::query_scalar(
                        "SELECT CAST(id AS SIGNED) FROM information_schema.processlist WHERE db = ?",
                    )
                    .bind(&name)
                    .fetch_all(&admin)
                    .await
                    .unwrap_or_default();
                    for id in ids {
                        let _ = admin.execute(sqlx::AssertSqlSafe(format!("KILL {id}"))).await;
                    }
                    let _ = admin
                        .execute(sqlx::AssertSqlSafe(format!("DROP DATABASE IF EXISTS {name}")))
                        .await;
                    admin.close().await;
                    Some(())
                })
            })
            .join();
        }
    }
}

/// The local MariaDB `bin/test.sh` starts (root over TCP, no password).
const MARIADB_ADMIN: &str = "mysql://root@127.0.0.1:3306/";

fn mysql_cfg(database: &str) -> crate::config::MysqlConfig {
    crate::config::MysqlConfig {
        user: "root".into(),
        password: crate::secret::Secret::new(String::new()),
        host: "127.0.0.1".into(),
        port: 3306,
        database: database.to_owned(),
        max_open_conns: 4,
        max_idle_conns: 1,
        conn_max_life: std::time::Duration::from_secs(120),
    }
}

/// Another handle on the store of `scratch`, as a second process would
/// open it.
async fn reopen(scratch: &Scratch) -> Store {
    match scratch {
        Scratch::Dir(dir) => Store::open(&dir.path().join("msg.db")).await,
        Scratch::Database(name) => Store::open_mysql(&mysql_cfg(name)).await,
    }
    .expect("opens")
}

/// The store each test runs on: SQLite, or with `M2POOL_TEST_STORE=mariadb`
/// (as `bin/test.sh` runs them a second time) a fresh MariaDB database.
pub(crate) async fn store() -> (Scratch, Store) {
    let scratch = scratch().await;
    let s = reopen(&scratch).await;
    (scratch, s)
}

/// A place for a store, nothing in it yet: a directory, or with
/// `M2POOL_TEST_STORE=mariadb` an empty MariaDB database.
async fn scratch() -> Scratch {
    if std::env::var("M2POOL_TEST_STORE").as_deref() == Ok("mariadb") {
        use sqlx::Executor;
        static SEQ: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let name = format!(
            "m2pool_store_{}_{}",
            std::process::id(),
            SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        );
        let admin = sqlx::MySqlPool::connect(MARIADB_ADMIN)
            .await
            .expect("MariaDB on 127.0.0.1:3306 (bin/test.sh starts it)");
        admin
            .execute(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .await
            .expect("create database");
        admin.close().await;
        return Scratch::Database(name);
    }
    Scratch::Dir(tempfile::tempdir().expect("tempdir"))
}

#[tokio::test]
async fn instances_starting_together_on_a_fresh_store_all_open_it() {
    // Two daemons (an active one and a standby) and a tool, started at the
    // same moment on an empty database, each migrate the message store and
    // the wallet store beside it: each must open both, schema made once.
    let scratch = scratch().await;
    let wallets = match &scratch {
        Scratch::Dir(dir) => crate::config::WalletStore::Sqlite(dir.path().join("wallet.db")),
        Scratch::Database(name) => crate::config::WalletStore::Mysql(mysql_cfg(name)),
    };
    let opens = (0..4).map(|_| async {
        let msg = match &scratch {
            Scratch::Dir(dir) => Store::open(&dir.path().join("msg.db")).await,
            Scratch::Database(name) => Store::open_mysql(&mysql_cfg(name)).await,
        };
        let wallet = crate::wallet::WalletStore::open(&wallets).await;
        (msg, wallet)
    });
    let mut stores = Vec::new();
    for (msg, wallet) in futures::future::join_all(opens).await {
        stores.push(msg.expect("message store opens"));
        wallet.expect("wallet store opens");
    }
    // The store works for all of them.
    let mut tx = stores[0].begin().await.expect("begin");
    tx.push_outbox("topup_resp", b"{}", None)
        .await
        .expect("push");
    tx.commit().await.expect("commit");
    assert_eq!(stores[3].unsent(0, 10).await.expect("unsent").len(), 1);
}

fn dep(block: u64, hash: u8) -> NewDeposit<'static> {
    NewDeposit {
        chain: "ETH",
        tx_hash: B256::repeat_byte(0xaa),
        log_index: 3,
        symbol: "USDT",
        address: Address::repeat_byte(1),
        from: Address::repeat_byte(2),
        amount: U256::from(100_500_000u64),
        block_number: block,
        block_hash: B256::repeat_byte(hash),
        due: block + 20,
        decimals: 6,
        known_only: false,
    }
}

/// An accepted request of `kind` with body hash `h`.
fn row(kind: &'static str, h: &'static [u8; 32]) -> InboxRow<'static> {
    InboxRow {
        kind,
        body_hash: h,
        body: b"{}",
        outcome: Outcome::Accepted,
        error: None,
    }
}

#[tokio::test]
async fn inbox_refuses_redelivery_and_repeats_within_a_batch() {
    let (_d, s) = store().await;
    let (a, b) = (&[7u8; 32], &[8u8; 32]);
    let mut tx = s.begin().await.expect("begin");
    let new = tx
        .record_requests(&[row("remove", a), row("remove", a), row("withdraw", b)])
        .await
        .expect("insert");
    assert_eq!(new, HashSet::from([*a, *b]), "each hash once");
    let again = tx
        .record_requests(&[row("withdraw", b)])
        .await
        .expect("insert");
    assert!(again.is_empty(), "a recorded hash is a redelivery");
    tx.commit().await.expect("commit");
    let (rows, _, _) = s.inbox_span().await.expect("span");
    assert_eq!(rows, 2);
}

#[tokio::test]
async fn accepted_topups_are_recorded_without_a_lookup() {
    let (_d, s) = store().await;
    let (a, b) = (&[7u8; 32], &[8u8; 32]);
    let refused = InboxRow {
        outcome: Outcome::BadSignature,
        error: Some("signature does not match"),
        ..row("topup", b)
    };
    let mut tx = s.begin().await.expect("begin");
    let new = tx
        .record_requests(&[row("topup", a), refused])
        .await
        .expect("insert");
    assert_eq!(new, HashSet::from([*a, *b]));
    // A topup delivered again is recorded again and applied as new; a
    // refused one is still a redelivery.
    let again = tx
        .record_requests(&[row("topup", a), refused])
        .await
        .expect("insert");
    assert_eq!(again, HashSet::from([*a]));
    // Accepted topups alone (inserted without reading anything back) are
    // all new, every time.
    let c = &[9u8; 32];
    for _ in 0..2 {
        let only = tx
            .record_requests(&[row("topup", a), row("topup", c)])
            .await
            .expect("insert");
        assert_eq!(only, HashSet::from([*a, *c]));
    }
    tx.commit().await.expect("commit");
    let (rows, _, _) = s.inbox_span().await.expect("span");
    assert_eq!(rows, 7);
}

#[tokio::test]
async fn a_store_of_the_previous_schema_keeps_its_watches_and_requests() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("msg.db");
    let opts = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(&path)
        .create_if_missing(true);
    let pool = sqlx::SqlitePool::connect_with(opts).await.expect("opens");
    sqlx::migrate!("./migrations/store/sqlite")
        .run_to(4, &pool)
        .await
        .expect("schema 4");
    sqlx::query(
        "INSERT INTO watches (chain, address, symbol, created_at) VALUES
             ('ETH', ?, 'USDT', 2), ('ETH', ?, 'ETH', 1)",
    )
    .bind(Address::repeat_byte(1).as_slice())
    .bind(Address::repeat_byte(2).as_slice())
    .execute(&pool)
    .await
    .expect("watches");
    sqlx::query(
        "INSERT INTO inbox (kind, body_hash, body, outcome, received_at) VALUES
             ('remove', ?, '{}', 'accepted', 1), ('topup', ?, '{}', 'accepted', 1)",
    )
    .bind([7u8; 32].as_slice())
    .bind([8u8; 32].as_slice())
    .execute(&pool)
    .await
    .expect("inbox");
    pool.close().await;

    let s = Store::open(&path).await.expect("migrates");
    let w = |b: u8, symbol: &str| WatchRow {
        chain: "ETH".into(),
        symbol: symbol.into(),
        address: Address::repeat_byte(b),
    };
    assert_eq!(
        s.watches().await.expect("load"),
        vec![w(2, "ETH"), w(1, "USDT")],
        "oldest first"
    );
    let mut tx = s.begin().await.expect("begin");
    let new = tx
        .record_requests(&[row("remove", &[7u8; 32]), row("topup", &[8u8; 32])])
        .await
        .expect("insert");
    assert_eq!(
        new,
        HashSet::from([[8u8; 32]]),
        "the remove is a redelivery"
    );
    tx.commit().await.expect("commit");
    assert_eq!(s.inbox_span().await.expect("span").0, 3);
}

#[tokio::test]
async fn the_watch_log_replays_watches_and_stops_in_order() {
    let (_d, s) = store().await;
    let w = |b: u8| WatchRow {
        chain: "ETH".into(),
        symbol: "USDT".into(),
        address: Address::repeat_byte(b),
    };
    let (one, two) = (w(1), w(2));
    let mut tx = s.begin().await.expect("begin");
    tx.add_watches(&[(&one, Some(7)), (&two, None)])
        .await
        .expect("add");
    tx.unwatch(&one).await.expect("stop");
    tx.commit().await.expect("commit");
    assert_eq!(s.watches().await.expect("load"), vec![two.clone()]);
    assert!(
        !s.is_watched("ETH", "USDT", one.address)
            .await
            .expect("read")
    );
    assert!(
        s.is_watched("ETH", "USDT", two.address)
            .await
            .expect("read")
    );
    assert!(!s.is_watched("ETH", "ETH", two.address).await.expect("read"));
    // Watched again after the stop: the last entry wins.
    let mut tx = s.begin().await.expect("begin");
    tx.add_watches(&[(&one, Some(8))]).await.expect("add again");
    tx.commit().await.expect("commit");
    assert_eq!(
        s.watches().await.expect("load"),
        vec![two.clone(), one.clone()]
    );
    assert!(
        s.is_watched("ETH", "USDT", one.address)
            .await
            .expect("read")
    );
}

#[tokio::test]
async fn new_watches_are_read_in_order_from_the_lookback_mark() {
    let (_d, s) = store().await;
    let w = |b: u8, symbol: &str| WatchRow {
        chain: "ETH".into(),
        symbol: symbol.into(),
        address: Address::repeat_byte(b),
    };
    let (a, b, c) = (w(1, "USDT"), w(2, "ETH"), w(3, "USDT"));
    let mut tx = s.begin().await.expect("begin");
    // One without a cursor (a fresh store's first topups) needs no lookback.
    tx.add_watches(&[(&a, Some(10)), (&b, None), (&c, Some(11))])
        .await
        .expect("add");
    tx.unwatch(&a).await.expect("stop");
    tx.commit().await.expect("commit");
    assert_eq!(s.lookback_done("ETH").await.expect("mark"), 0);
    let rows = s.watches_after("ETH", 0, 10).await.expect("read");
    assert_eq!(
        rows.iter()
            .map(|r| (r.symbol.as_str(), r.address, r.block))
            .collect::<Vec<_>>(),
        vec![("USDT", a.address, 10), ("USDT", c.address, 11)],
        "watches with a cursor, in order; no stops"
    );
    assert_eq!(s.last_watch_id().await.expect("last"), 4);
    let after_first = s.watches_after("ETH", rows[0].id, 10).await.expect("read");
    assert_eq!(after_first.len(), 1);
    assert!(
        s.watches_after("BSC", 0, 10)
            .await
            .expect("read")
            .is_empty()
    );
    let mut tx = s.begin().await.expect("begin");
    tx.set_lookback_done("ETH", rows[1].id).await.expect("mark");
    tx.commit().await.expect("commit");
    assert_eq!(s.lookback_done("ETH").await.expect("mark"), rows[1].id);
}

#[tokio::test]
async fn blocks_below_the_window_count_as_canonical_and_dues_follow_confirm_height() {
    let (_d, s) = store().await;
    let mut tx = s.begin().await.expect("begin");
    for n in 1..=10u64 {
        let b = BlockRef {
            number: n,
            hash: B256::repeat_byte(n as u8),
            parent_hash: B256::repeat_byte(n as u8 - 1),
        };
        tx.push_block("ETH", &b, 4).await.expect("push");
    }
    // The window holds 6..=10.
    assert!(
        tx.is_canonical("ETH", 8, B256::repeat_byte(8))
            .await
            .expect("read")
    );
    assert!(
        !tx.is_canonical("ETH", 8, B256::repeat_byte(9))
            .await
            .expect("read")
    );
    assert!(
        tx.is_canonical("ETH", 3, B256::repeat_byte(0xff))
            .await
            .expect("read")
    );
    assert!(
        !tx.is_canonical("ETH", 11, B256::repeat_byte(11))
            .await
            .expect("read")
    );
    assert!(
        !tx.is_canonical("BSC", 3, B256::ZERO).await.expect("read"),
        "no blocks"
    );
    // A pending deposit's due height follows a new confirm_height.
    tx.deposit_seen(&dep(3, 3)).await.expect("seen");
    assert!(tx.due_deposits("ETH", 10).await.expect("due").is_empty());
    assert_eq!(
        tx.recompute_dues("ETH", 5).await.expect("recompute"),
        (1, 0)
    );
    assert_eq!(tx.due_deposits("ETH", 8).await.expect("due").len(), 1);
    assert_eq!(tx.meta("confirm_height.ETH").await.expect("meta"), None);
    tx.set_meta("confirm_height.ETH", "5").await.expect("meta");
    assert_eq!(
        tx.meta("confirm_height.ETH")
            .await
            .expect("meta")
            .as_deref(),
        Some("5")
    );
    tx.commit().await.expect("commit");
}

#[tokio::test]
async fn a_long_watch_log_is_compacted_to_what_is_watched() {
    let (_d, s) = store().await;
    let w = |i: u32| WatchRow {
        chain: "ETH".into(),
        symbol: "USDT".into(),
        address: Address::left_padding_from(&i.to_be_bytes()),
    };
    let rows: Vec<WatchRow> = (0..6_000).map(w).collect();
    let mut tx = s.begin().await.expect("begin");
    // 6,000 watched, 5,000 of them stopped, 1,000 of those watched again.
    tx.add_watches(&rows.iter().map(|r| (r, None)).collect::<Vec<_>>())
        .await
        .expect("add");
    for r in &rows[..5_000] {
        tx.unwatch(r).await.expect("stop");
    }
    tx.add_watches(&rows[..1_000].iter().map(|r| (r, None)).collect::<Vec<_>>())
        .await
        .expect("add again");
    tx.commit().await.expect("commit");
    let before = s.watches().await.expect("load");
    assert_eq!(before.len(), 2_000);
    // 12,000 entries are within the slack for 2,000 watched: left alone.
    assert_eq!(s.compact_watches(2_000).await.expect("compact"), 0);
    // Against a smaller count it compacts: 12,000 entries become 2,000.
    assert_eq!(s.compact_watches(0).await.expect("compact"), 10_000);
    let after = s.watches().await.expect("load");
    let sorted = |mut v: Vec<WatchRow>| {
        v.sort_by_key(|r| r.address);
        v
    };
    assert_eq!(sorted(after), sorted(before));
    assert!(
        s.is_watched("ETH", "USDT", w(500).address)
            .await
            .expect("read")
    );
    assert!(
        !s.is_watched("ETH", "USDT", w(1_500).address)
            .await
            .expect("read")
    );
}

#[tokio::test]
async fn deposit_lifecycle_through_a_reorg() {
    let (_d, s) = store().await;
    let mut tx = s.begin().await.expect("begin");
    assert_eq!(
        tx.deposit_seen(&dep(100, 1)).await.expect("seen"),
        DepositSeen::New
    );
    assert_eq!(
        tx.deposit_seen(&dep(100, 1)).await.expect("seen"),
        DepositSeen::Known
    );
    assert!(tx.due_deposits("ETH", 119).await.expect("due").is_empty());
    // Reorg at 99: the deposit is orphaned, then mined again in 101.
    assert_eq!(
        tx.orphan_deposits_above("ETH", 99).await.expect("orphan"),
        1
    );
    let due = tx.due_deposits("ETH", 120).await.expect("due");
    assert!(due[0].orphaned);
    assert_eq!(
        tx.deposit_seen(&dep(101, 2)).await.expect("seen"),
        DepositSeen::Remined
    );
    assert!(tx.due_deposits("ETH", 120).await.expect("due").is_empty());
    let due = tx.due_deposits("ETH", 121).await.expect("due");
    assert_eq!(due.len(), 1);
    assert!(!due[0].orphaned);
    assert_eq!(due[0].block_number, 101);
    assert_eq!(due[0].amount, U256::from(100_500_000u64));
    tx.decide_deposit(due[0].id, true).await.expect("decide");
    assert!(tx.due_deposits("ETH", 1000).await.expect("due").is_empty());
    assert_eq!(
        tx.deposit_seen(&dep(101, 2)).await.expect("seen"),
        DepositSeen::Known
    );
    assert_eq!(tx.confirmed_above("ETH", 100).await.expect("read").len(), 1);
    tx.commit().await.expect("commit");
}

#[tokio::test]
async fn failed_deposit_seen_again_is_reopened() {
    let (_d, s) = store().await;
    let mut tx = s.begin().await.expect("begin");
    tx.deposit_seen(&dep(100, 1)).await.expect("seen");
    tx.orphan_deposits_above("ETH", 99).await.expect("orphan");
    let due = tx.due_deposits("ETH", 120).await.expect("due");
    tx.decide_deposit(due[0].id, false).await.expect("fail");
    assert_eq!(
        tx.deposit_seen(&dep(130, 4)).await.expect("seen"),
        DepositSeen::Reopened
    );
    tx.commit().await.expect("commit");
}

#[tokio::test]
async fn blocks_window_and_outbox() {
    let (_d, s) = store().await;
    let mut tx = s.begin().await.expect("begin");
    for n in 1..=10u64 {
        let b = BlockRef {
            number: n,
            hash: B256::repeat_byte(n as u8),
            parent_hash: B256::repeat_byte(n as u8 - 1),
        };
        tx.push_block("ETH", &b, 4).await.expect("push");
    }
    tx.push_outbox("topup_resp", b"{\"a\":1}", None)
        .await
        .expect("outbox");
    tx.push_outbox("topup_resp", b"{\"a\":2}", None)
        .await
        .expect("outbox");
    tx.commit().await.expect("commit");
    let recent = s.recent_blocks("ETH", 100).await.expect("recent");
    assert_eq!(
        recent.iter().map(|b| b.number).collect::<Vec<_>>(),
        vec![10, 9, 8, 7, 6]
    );
    let mut tx = s.begin().await.expect("begin");
    tx.drop_blocks_above("ETH", 7).await.expect("drop");
    assert_eq!(
        tx.block_hash("ETH", 7).await.expect("hash"),
        Some(B256::repeat_byte(7))
    );
    assert_eq!(tx.block_hash("ETH", 8).await.expect("hash"), None);
    tx.commit().await.expect("commit");
    assert_eq!(
        s.recent_blocks("ETH", 1).await.expect("recent")[0].number,
        7
    );

    let rows = s.unsent(0, 10).await.expect("unsent");
    assert_eq!(rows.len(), 2);
    s.mark_sent(&[rows[0].id]).await.expect("mark");
    assert_eq!(s.outbox_backlog().await.expect("count"), 1);
    assert_eq!(s.unsent(0, 10).await.expect("unsent")[0].body, b"{\"a\":2}");
}

/// What `state_counts` must equal: the tables counted directly.
async fn counted(s: &Store) -> (Vec<(String, i64)>, Vec<(String, i64)>) {
    let payouts: Vec<(String, i64)> =
        sqlx::query_as("SELECT state, COUNT(*) FROM payouts GROUP BY state ORDER BY state")
            .fetch_all(&s.pool)
            .await
            .expect("count");
    let deposits: Vec<(i64, i64)> =
        sqlx::query_as("SELECT state, COUNT(*) FROM deposits GROUP BY state ORDER BY state")
            .fetch_all(&s.pool)
            .await
            .expect("count");
    let names = ["pending", "confirmed", "failed", "orphaned"];
    let mut deposits: Vec<(String, i64)> = deposits
        .into_iter()
        .map(|(st, n)| (names[st as usize].to_owned(), n))
        .collect();
    deposits.sort();
    (payouts, deposits)
}

async fn kept(s: &Store) -> (Vec<(String, i64)>, Vec<(String, i64)>) {
    let (mut p, mut d) = s.state_counts(&["ETH".into()]).await.expect("counts");
    p.retain(|(_, n)| *n != 0);
    d.retain(|(_, n)| *n != 0);
    p.sort();
    d.sort();
    (p, d)
}

/// A transaction of payout `payout_id` with hash `0xbbbb…` (`b` repeated),
/// signed at 1 ms with a max fee of 2 wei.
fn signed_tx(payout_id: i64, b: u8) -> SignedTx {
    SignedTx {
        payout_id,
        tx_hash: B256::repeat_byte(b),
        raw: vec![1, 2, 3],
        gas_limit: 100_000,
        max_fee_per_gas: 2,
        priority_fee: 1,
        signed_at: 1,
        cancels: false,
    }
}

/// A withdrawal of 5 base units of USDT with queue id `q`.
fn new_payout(q: &str) -> NewPayout {
    NewPayout {
        chain: "ETH".into(),
        kind: crate::msg::Kind::Withdraw,
        queue_id: q.into(),
        order_id: String::new(),
        content_hash: [1; 32],
        symbol: "USDT".into(),
        from: Address::repeat_byte(1),
        to: Address::repeat_byte(2),
        amount: U256::from(5u64),
        decimals: 6,
        contract: Some(Address::repeat_byte(9)),
    }
}

#[tokio::test]
async fn state_counts_match_the_tables_without_counting_them() {
    let (_d, s) = store().await;
    let payout = new_payout;
    let mut tx = s.begin().await.expect("begin");
    let a = tx.insert_payout(&payout("a")).await.expect("insert");
    let b = tx.insert_payout(&payout("b")).await.expect("insert");
    tx.insert_payout(&payout("c")).await.expect("insert");
    use PayoutState::*;
    assert!(
        tx.move_payout(a, Queued, Refused, Some("no"))
            .await
            .expect("move")
    );
    assert!(
        tx.move_payout(b, Queued, Claimed, None)
            .await
            .expect("move")
    );
    // A move that does not apply changes nothing.
    assert!(
        !tx.move_payout(a, Queued, Cancelled, None)
            .await
            .expect("move")
    );
    tx.deposit_seen(&dep(100, 1)).await.expect("seen");
    let mut other = dep(100, 1);
    other.log_index = 4;
    tx.deposit_seen(&other).await.expect("seen");
    tx.deposit_seen(&other)
        .await
        .expect("a repeat is not counted");
    tx.orphan_deposits_above("ETH", 99).await.expect("orphan");
    let due = tx.due_deposits("ETH", 120).await.expect("due");
    tx.decide_deposit(due[0].id, false).await.expect("fail");
    tx.commit().await.expect("commit");

    let (p, d) = kept(&s).await;
    assert_eq!((p.clone(), d.clone()), counted(&s).await);
    assert_eq!(
        p,
        vec![
            ("claimed".into(), 1),
            ("queued".into(), 1),
            ("refused".into(), 1)
        ]
    );
    assert_eq!(d, vec![("failed".into(), 1), ("orphaned".into(), 1)]);

    // Final ones: confirmed is what is left of every row.
    let mut tx = s.begin().await.expect("begin");
    assert!(
        tx.move_payout(b, Claimed, Confirmed, None)
            .await
            .expect("move")
    );
    let due = tx.due_deposits("ETH", 1000).await.expect("due");
    tx.decide_deposit(due[0].id, true).await.expect("confirm");
    for n in 0..5 {
        let mut more = dep(200, 9);
        more.tx_hash = B256::repeat_byte(0xbb);
        more.log_index = 10 + n;
        tx.deposit_seen(&more).await.expect("seen");
    }
    tx.commit().await.expect("commit");
    let (p, d) = kept(&s).await;
    assert_eq!((p.clone(), d.clone()), counted(&s).await);
    assert!(p.contains(&("confirmed".into(), 1)), "{p:?}");
    assert!(
        d.contains(&("confirmed".into(), 1)) && d.contains(&("pending".into(), 5)),
        "{d:?}"
    );

    // A rolled-back insert changes nothing.
    let mut tx = s.begin().await.expect("begin");
    tx.insert_payout(&payout("d")).await.expect("insert");
    drop(tx);
    assert_eq!(kept(&s).await, counted(&s).await);
}

#[tokio::test]
async fn payouts_are_inserted_together_and_their_keys_found() {
    let (_d, s) = store().await;
    let a = new_payout("w-1");
    let mut b = new_payout("p-1");
    b.kind = crate::msg::Kind::Pay;
    b.order_id = "o-1".into();
    let mut c = new_payout("p-1");
    c.kind = crate::msg::Kind::Pay;
    c.order_id = "o-2".into();
    c.contract = None;
    c.symbol = "ETH".into();
    c.decimals = 18;
    c.amount = U256::from(10u64).pow(U256::from(30u64));
    let mut elsewhere = new_payout("w-1");
    elsewhere.chain = "BSC".into();
    let mut tx = s.begin().await.expect("begin");
    tx.insert_payouts(&[&a, &b, &c, &elsewhere])
        .await
        .expect("insert");
    let mut keys: Vec<(&str, String, String)> = tx
        .payout_keys("ETH", &["w-1", "p-1", "unknown"])
        .await
        .expect("keys")
        .into_iter()
        .map(|(k, q, o)| (k.as_str(), q, o))
        .collect();
    keys.sort();
    assert_eq!(
        keys,
        vec![
            ("pay", "p-1".into(), "o-1".into()),
            ("pay", "p-1".into(), "o-2".into()),
            ("withdraw", "w-1".into(), String::new()),
        ]
    );
    assert!(tx.payout_keys("ETH", &[]).await.expect("none").is_empty());
    tx.commit().await.expect("commit");
    let mut tx = s.begin().await.expect("begin");
    for want in [&a, &b, &c, &elsewhere] {
        let p = tx
            .payout_by_key(&want.chain, want.kind, &want.queue_id, &want.order_id)
            .await
            .expect("read")
            .expect("stored");
        assert_eq!(p.state, PayoutState::Queued);
        assert_eq!(
            (
                p.amount,
                p.decimals,
                p.contract,
                p.symbol.as_str(),
                p.from,
                p.to
            ),
            (
                want.amount,
                Some(want.decimals),
                want.contract,
                want.symbol.as_str(),
                want.from,
                want.to
            )
        );
        assert_eq!(p.content_hash, want.content_hash.to_vec());
    }
    // The key stays unique: the same payout again is refused.
    assert!(tx.insert_payouts(&[&a]).await.is_err());
}

/// One transaction paying two watched addresses: logs 3 and 4 of block 100.
fn two_transfers() -> (NewDeposit<'static>, NewDeposit<'static>) {
    let a = dep(100, 1);
    let mut b = dep(100, 1);
    b.log_index = 4;
    b.address = Address::repeat_byte(7);
    b.amount = U256::from(7u64);
    (a, b)
}

#[tokio::test]
async fn a_deposit_mined_again_at_another_log_index_keeps_its_row() {
    let (_d, s) = store().await;
    let mut tx = s.begin().await.expect("begin");
    let (a, b) = two_transfers();
    assert_eq!(
        tx.deposits_seen(&[a.clone(), b.clone()])
            .await
            .expect("seen"),
        vec![DepositSeen::New, DepositSeen::New]
    );
    tx.orphan_deposits_above("ETH", 99).await.expect("orphan");
    // Mined again in block 101 one position later: a takes b's old index.
    let (mut a2, mut b2) = (a.clone(), b.clone());
    for (d, index) in [(&mut a2, 4), (&mut b2, 5)] {
        d.log_index = index;
        d.block_number = 101;
        d.block_hash = B256::repeat_byte(2);
        d.due = 121;
    }
    assert_eq!(
        tx.deposits_seen(&[a2.clone(), b2.clone()])
            .await
            .expect("seen"),
        vec![DepositSeen::Remined, DepositSeen::Remined],
        "no second status 2"
    );
    assert!(
        tx.due_deposits("ETH", 120).await.expect("due").is_empty(),
        "nothing decided at the old height"
    );
    let due = tx.due_deposits("ETH", 121).await.expect("due");
    let got: Vec<_> = due
        .iter()
        .map(|d| (d.log_index, d.address, d.amount, d.block_number, d.orphaned))
        .collect();
    assert_eq!(
        got,
        vec![
            (4, a.address, a.amount, 101, false),
            (5, b.address, b.amount, 101, false)
        ],
        "two rows, moved, each with its own content"
    );
    // Seen again in the same block: nothing to do.
    assert_eq!(
        tx.deposits_seen(&[a2.clone()]).await.expect("seen"),
        vec![DepositSeen::Known]
    );
    // Confirmed, then mined again elsewhere by a reorganisation deeper than
    // the confirmation depth: not a second deposit.
    tx.decide_deposit(due[0].id, true).await.expect("confirm");
    let mut a3 = a2.clone();
    a3.log_index = 0;
    a3.block_number = 150;
    a3.block_hash = B256::repeat_byte(3);
    assert_eq!(
        tx.deposits_seen(&[a3]).await.expect("seen"),
        vec![DepositSeen::Known]
    );
    let rows: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM deposits")
        .fetch_one(&mut *tx.tx)
        .await
        .expect("count");
    assert_eq!(rows, 2);
    tx.commit().await.expect("commit");
}

#[tokio::test]
async fn two_equal_transfers_in_one_transaction_stay_two_deposits() {
    let (_d, s) = store().await;
    let mut tx = s.begin().await.expect("begin");
    let a = dep(100, 1);
    let mut b = dep(100, 1);
    b.log_index = 5;
    assert_eq!(
        tx.deposits_seen(&[a.clone(), b.clone()])
            .await
            .expect("seen"),
        vec![DepositSeen::New, DepositSeen::New]
    );
    assert_eq!(
        tx.deposits_seen(&[a.clone(), b.clone()])
            .await
            .expect("seen"),
        vec![DepositSeen::Known, DepositSeen::Known]
    );
    // One at a time, the second one first: still each its own row.
    let mut c = dep(100, 1);
    c.log_index = 9;
    assert_eq!(
        tx.deposits_seen(&[c]).await.expect("seen"),
        vec![DepositSeen::New]
    );
    assert_eq!(
        tx.deposits_seen(&[b]).await.expect("seen"),
        vec![DepositSeen::Known]
    );
    tx.commit().await.expect("commit");
}

/// A transfer handed over twice in one batch (a block read twice before a
/// commit) is one deposit: the first is new, the second known, and the new
/// ones beside them are new. On SQLite this takes the path that reads back
/// which rows the inserts made, instead of every inserted key.
#[tokio::test]
async fn the_same_transfer_twice_in_one_batch_is_one_new_deposit() {
    let (_d, s) = store().await;
    let mut tx = s.begin().await.expect("begin");
    let earlier = dep(99, 1);
    assert_eq!(
        tx.deposits_seen(std::slice::from_ref(&earlier))
            .await
            .expect("seen"),
        vec![DepositSeen::New]
    );
    let mut a = dep(100, 2);
    a.tx_hash = B256::repeat_byte(0xb1);
    let mut b = a.clone();
    b.log_index = 4;
    b.address = Address::repeat_byte(9);
    assert_eq!(
        tx.deposits_seen(&[a.clone(), b.clone(), a.clone(), earlier])
            .await
            .expect("seen"),
        vec![
            DepositSeen::New,
            DepositSeen::New,
            DepositSeen::Known,
            DepositSeen::Known
        ]
    );
    tx.commit().await.expect("commit");
    let rows: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM deposits")
        .fetch_one(&s.pool)
        .await
        .expect("count");
    assert_eq!(rows, 3, "one row per transfer");
}

#[tokio::test]
async fn a_known_only_transfer_matches_but_never_creates_a_deposit() {
    let (_d, s) = store().await;
    let mut tx = s.begin().await.expect("begin");
    let mut stranger = dep(100, 1);
    stranger.known_only = true;
    assert_eq!(
        tx.deposits_seen(&[stranger]).await.expect("seen"),
        vec![DepositSeen::Known]
    );
    assert!(
        tx.orphaned_deposit_txs("ETH")
            .await
            .expect("read")
            .is_empty()
    );
    tx.deposit_seen(&dep(100, 1)).await.expect("seen");
    tx.orphan_deposits_above("ETH", 99).await.expect("orphan");
    assert_eq!(
        tx.orphaned_deposit_txs("ETH").await.expect("read"),
        vec![B256::repeat_byte(0xaa)]
    );
    let mut again = dep(101, 2);
    again.known_only = true;
    assert_eq!(
        tx.deposits_seen(&[again]).await.expect("seen"),
        vec![DepositSeen::Remined]
    );
    let rows: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM deposits")
        .fetch_one(&mut *tx.tx)
        .await
        .expect("count");
    assert_eq!(rows, 1);
    tx.commit().await.expect("commit");
}

#[tokio::test]
async fn prune_deletes_old_requests_and_sent_responses_only() {
    let (_d, s) = store().await;
    let mut tx = s.begin().await.expect("begin");
    tx.record_requests(&[row("topup", &[1u8; 32]), row("topup", &[2u8; 32])])
        .await
        .expect("insert");
    for body in [&b"sent"[..], b"unsent", b"sent later"] {
        tx.push_outbox("topup_resp", body, None)
            .await
            .expect("outbox");
    }
    tx.commit().await.expect("commit");
    let rows = s.unsent(0, 10).await.expect("unsent");
    let ids: Vec<i64> = rows.iter().map(|r| r.id).collect();
    s.mark_sent(&[ids[0]]).await.expect("sent");

    // Nothing is older than a cutoff in the past.
    assert_eq!(s.prune(1).await.expect("prune"), (0, 0));
    let later = now_ms() + 1_000;
    s.mark_sent(&[ids[2]]).await.expect("sent");
    sqlx::query("UPDATE outbox SET sent_at = ? WHERE id = ?")
        .bind(later + 1_000)
        .bind(ids[2])
        .execute(&s.pool)
        .await
        .expect("later");
    // The first request (the newest stays, so ids keep growing), the first
    // response; not the unsent one, nor the one sent after the cutoff.
    assert_eq!(s.prune(later).await.expect("prune"), (1, 1));
    assert_eq!(s.inbox_span().await.expect("span").0, 2);
    assert_eq!(
        s.outbox_bodies("topup_resp").await.expect("bodies"),
        vec![b"unsent".to_vec(), b"sent later".to_vec()]
    );
    assert_eq!(s.prune(later).await.expect("prune"), (0, 0));
    // Everything sent long ago: all but the newest row go, and ids keep
    // growing after the prune.
    sqlx::query("UPDATE outbox SET sent_at = 1")
        .execute(&s.pool)
        .await
        .expect("sent");
    assert_eq!(s.prune(later).await.expect("prune"), (0, 1));
    let mut tx = s.begin().await.expect("begin");
    tx.push_outbox("topup_resp", b"next", None)
        .await
        .expect("outbox");
    tx.commit().await.expect("commit");
    let next = s.unsent(ids[2], 10).await.expect("unsent");
    assert_eq!(next.len(), 1, "a new row comes after every id handed out");
}

#[tokio::test]
async fn a_key_held_by_a_transfer_that_did_not_come_back_is_freed() {
    let (_d, s) = store().await;
    let mut tx = s.begin().await.expect("begin");
    let (a, b) = two_transfers();
    tx.deposits_seen(&[a.clone(), b.clone()])
        .await
        .expect("seen");
    // Left the chain, not back by their due height: both failed.
    tx.orphan_deposits_above("ETH", 99).await.expect("orphan");
    for d in tx.due_deposits("ETH", 120).await.expect("due") {
        tx.decide_deposit(d.id, false).await.expect("fail");
    }
    // Mined again one position later, and only a's transfer is looked at
    // (b's address no longer watched): a takes index 4, which b's row held.
    let mut a2 = a.clone();
    a2.log_index = 4;
    a2.block_number = 130;
    a2.block_hash = B256::repeat_byte(3);
    a2.due = 150;
    assert_eq!(
        tx.deposits_seen(&[a2]).await.expect("no key collision"),
        vec![DepositSeen::Reopened]
    );
    let due = tx.due_deposits("ETH", 150).await.expect("due");
    let got: Vec<_> = due.iter().map(|d| (d.log_index, d.address)).collect();
    assert_eq!(got, vec![(4, a.address)], "a moved to 4");

    // A transaction executed differently when mined again: a transfer of
    // other content at the index an old, failed row holds is a new deposit
    // (the old row neither blocks it nor is reopened with the wrong content).
    let mut old = dep(200, 5);
    old.tx_hash = B256::repeat_byte(0xcc);
    tx.deposit_seen(&old).await.expect("seen");
    tx.orphan_deposits_above("ETH", 199).await.expect("orphan");
    for d in tx.due_deposits("ETH", 220).await.expect("due") {
        tx.decide_deposit(d.id, false).await.expect("fail");
    }
    let mut other = old.clone();
    other.amount = U256::from(1u64);
    other.block_number = 230;
    other.block_hash = B256::repeat_byte(6);
    other.due = 250;
    assert_eq!(
        tx.deposits_seen(&[other.clone()])
            .await
            .expect("no key collision"),
        vec![DepositSeen::New]
    );
    let due = tx.due_deposits("ETH", 250).await.expect("due");
    let got: Vec<_> = due
        .iter()
        .filter(|d| d.tx_hash == other.tx_hash)
        .map(|d| (d.log_index, d.amount))
        .collect();
    assert_eq!(
        got,
        vec![(3, U256::from(1u64))],
        "the new content, at its index"
    );
    tx.commit().await.expect("commit");
}

#[tokio::test]
async fn prune_looks_past_unsent_responses() {
    let (_d, s) = store().await;
    let mut tx = s.begin().await.expect("begin");
    for body in [&b"stuck"[..], b"sent 1", b"sent 2", b"newest"] {
        tx.push_outbox("topup_resp", body, None)
            .await
            .expect("outbox");
    }
    tx.commit().await.expect("commit");
    let ids: Vec<i64> = s
        .unsent(0, 10)
        .await
        .expect("unsent")
        .iter()
        .map(|r| r.id)
        .collect();
    s.mark_sent(&ids[1..]).await.expect("sent");
    // One row per statement: the unsent one at the head does not stop it.
    assert_eq!(
        s.prune_in_chunks(now_ms() + 1_000, 1).await.expect("prune"),
        (0, 2)
    );
    assert_eq!(
        s.outbox_bodies("topup_resp").await.expect("bodies"),
        vec![b"stuck".to_vec(), b"newest".to_vec()]
    );
}

#[tokio::test]
async fn a_rebroadcast_the_node_already_holds_keeps_the_time_it_was_first_taken() {
    // The stuck check measures from `updated_at`: a transaction stranded in
    // the pool is accepted again at every rebroadcast, and must still grow
    // old enough to be replaced.
    let (_d, s) = store().await;
    let mut tx = s.begin().await.expect("begin");
    let id = tx.insert_payout(&new_payout("rb")).await.expect("insert");
    let signed = signed_tx(id, 7);
    let gone = tx
        .mark_signed_many(Address::repeat_byte(1), &[(0, &signed)])
        .await
        .expect("signed");
    assert!(gone.is_empty());
    let updated = |p: Option<Payout>| p.expect("the payout").updated_at;
    async fn age(tx: &mut StoreTx, id: i64, at: i64) {
        sqlx::query("UPDATE payouts SET updated_at = ? WHERE id = ?")
            .bind(at)
            .bind(id)
            .execute(&mut *tx.tx)
            .await
            .expect("age");
    }

    // First taken: signed → sent, the clock starts.
    tx.accepted(&[id]).await.expect("accepted");
    let p = tx.payout(id).await.expect("read");
    assert_eq!(p.as_ref().map(|p| p.state), Some(PayoutState::Sent));
    assert!(updated(p) > 1_000, "the first acceptance sets the time");

    // Taken again (the pool holds it): the time it was first taken stays.
    age(&mut tx, id, 1_000).await;
    tx.accepted(&[id]).await.expect("accepted");
    assert_eq!(updated(tx.payout(id).await.expect("read")), 1_000);

    // Refused, then taken: the clock starts again from the taking.
    tx.record_refusals(&[(id, "nonce too low".into())])
        .await
        .expect("refused");
    age(&mut tx, id, 1_000).await;
    tx.accepted(&[id]).await.expect("accepted");
    assert!(updated(tx.payout(id).await.expect("read")) > 1_000);
}

#[tokio::test]
async fn the_sqlite_engine_writes_ahead_and_syncs_every_commit() {
    let (_dir, s) = store().await;
    if s.engine() != Engine::Sqlite {
        return;
    }
    let mut conn = s.pool.acquire().await.expect("connection");
    let mode: String = sqlx::query_scalar("PRAGMA journal_mode")
        .fetch_one(&mut *conn)
        .await
        .expect("journal mode");
    let sync: i64 = sqlx::query_scalar("PRAGMA synchronous")
        .fetch_one(&mut *conn)
        .await
        .expect("synchronous");
    let keys: i64 = sqlx::query_scalar("PRAGMA foreign_keys")
        .fetch_one(&mut *conn)
        .await
        .expect("foreign keys");
    assert_eq!((mode.as_str(), sync, keys), ("wal", 2, 1));
}

mod console;
mod lease;
mod webhooks;

#[tokio::test]
async fn stream_positions_are_consecutive_in_commit_order_and_never_reused() {
    let (scratch, s) = store().await;
    assert_eq!(s.stream_top().await.expect("top"), 0);
    assert!(
        s.sequence_outbox(10, &|_| None)
            .await
            .expect("none")
            .is_empty()
    );
    // Row 1 is written first but commits after row 2, written through
    // another handle (as another process would: one handle's writers take
    // turns). MySQL lets the two run at once; SQLite has one writer.
    let mut slow = s.begin().await.expect("begin");
    slow.push_outbox("topup_resp", b"{\"n\":1}", None)
        .await
        .expect("push");
    if s.engine() == Engine::MySql {
        let other = reopen(&scratch).await;
        let mut fast = other.begin().await.expect("begin");
        fast.push_outbox("topup_resp", b"{\"n\":2}", None)
            .await
            .expect("push");
        fast.commit().await.expect("commit");
        let first = other
            .sequence_outbox(10, &|_| None)
            .await
            .expect("sequence");
        assert_eq!(
            first
                .iter()
                .map(|r| (r.seq, r.body.clone()))
                .collect::<Vec<_>>(),
            vec![(1, b"{\"n\":2}".to_vec())],
            "the uncommitted row waits"
        );
    }
    slow.commit().await.expect("commit");
    let mut tx = s.begin().await.expect("begin");
    if s.engine() != Engine::MySql {
        tx.push_outbox("topup_resp", b"{\"n\":2}", None)
            .await
            .expect("push");
    }
    tx.push_outbox("pay_resp", b"{\"n\":3}", None)
        .await
        .expect("push");
    tx.commit().await.expect("commit");
    let mut all = Vec::new();
    loop {
        let more = s.sequence_outbox(1, &|_| None).await.expect("sequence");
        if more.is_empty() {
            break;
        }
        all.extend(more);
    }
    let read = s.stream_after(0, 10).await.expect("read");
    let seqs: Vec<i64> = read.iter().map(|r| r.seq).collect();
    assert_eq!(seqs, vec![1, 2, 3], "consecutive, each once");
    assert_eq!(s.stream_top().await.expect("top"), 3);
    assert_eq!(
        s.stream_after(2, 10).await.expect("resume")[0].body,
        read[2].body
    );
    // Rows deleted by retention do not give their positions out again.
    sqlx::query("DELETE FROM outbox")
        .execute(&s.pool)
        .await
        .expect("delete");
    let mut tx = s.begin().await.expect("begin");
    tx.push_outbox("pay_resp", b"{\"n\":4}", None)
        .await
        .expect("push");
    tx.commit().await.expect("commit");
    let next = s.sequence_outbox(10, &|_| None).await.expect("sequence");
    assert_eq!(next[0].seq, 4);
}

#[tokio::test]
async fn a_blocks_payouts_are_found_by_nonce_and_recorded_mined_together() {
    let (_d, s) = store().await;
    let payer = Address::repeat_byte(1);
    let mut tx = s.begin().await.expect("begin");
    let mut ids = Vec::new();
    for q in ["m-0", "m-1", "m-2", "m-3"] {
        ids.push(tx.insert_payout(&new_payout(q)).await.expect("insert"));
    }
    let signed: Vec<SignedTx> = ids
        .iter()
        .zip(0xa0u8..)
        .map(|(id, b)| signed_tx(*id, b))
        .collect();
    let nonced: Vec<(u64, &SignedTx)> = signed.iter().zip(0u64..).map(|(t, n)| (n, t)).collect();
    assert!(
        tx.mark_signed_many(payer, &nonced)
            .await
            .expect("signed")
            .is_empty()
    );
    // Nonces 0, 1 and 3 of this payer (and one of another payer, and one
    // never used) are looked up; nonce 2 is not in the block.
    let found = tx
        .payouts_by_nonces(
            "ETH",
            &[
                (payer, 0),
                (payer, 1),
                (payer, 3),
                (payer, 9),
                (Address::repeat_byte(5), 0),
            ],
        )
        .await
        .expect("by nonce");
    let mut nonces: Vec<(i64, Option<u64>)> = found.iter().map(|p| (p.id, p.nonce)).collect();
    nonces.sort();
    assert_eq!(
        nonces,
        vec![(ids[0], Some(0)), (ids[1], Some(1)), (ids[3], Some(3))]
    );
    let ours = tx
        .signed_txs_of(&[
            B256::repeat_byte(0xa0),
            B256::repeat_byte(0xa3),
            B256::repeat_byte(0xee),
        ])
        .await
        .expect("ours");
    assert_eq!(ours.len(), 2);
    assert_eq!(ours[&B256::repeat_byte(0xa3)], (ids[3], false));

    // Two paid, one displaced by a transaction that is not ours: two groups.
    let mined = |hash: u8, fee: u64, displaced: bool| Mined {
        tx_hash: B256::repeat_byte(hash),
        block: (100, B256::repeat_byte(0x42)),
        due: 120,
        success: !displaced,
        fee: U256::from(fee),
        displaced,
        cancel_mined: false,
        note: displaced.then(|| "not ours".to_owned()),
    };
    tx.mark_payouts_mined(&[
        (ids[0], mined(0xa0, 21_000, false)),
        (ids[3], mined(0xee, 5, true)),
        (ids[1], mined(0xa1, 52_000, false)),
    ])
    .await
    .expect("mined");
    for (id, hash, fee, displaced) in [
        (ids[0], 0xa0, 21_000u64, false),
        (ids[1], 0xa1, 52_000, false),
        (ids[3], 0xee, 5, true),
    ] {
        let p = tx.payout(id).await.expect("read").expect("payout");
        assert_eq!(p.state, PayoutState::Mined);
        assert_eq!(p.tx_hash, Some(B256::repeat_byte(hash)));
        assert_eq!(p.fee, Some(U256::from(fee)));
        assert_eq!(
            (p.block_number, p.block_hash),
            (Some(100), Some(B256::repeat_byte(0x42)))
        );
        assert_eq!((p.displaced, p.success), (displaced, Some(!displaced)));
        assert_eq!(p.error.is_some(), displaced);
    }
    let untouched = tx.payout(ids[2]).await.expect("read").expect("payout");
    assert_eq!(untouched.state, PayoutState::Signed);
    // Mined payouts are no longer found by their nonce.
    assert!(
        tx.payouts_by_nonces("ETH", &[(payer, 0)])
            .await
            .expect("by nonce")
            .is_empty()
    );
    tx.mark_payouts_mined(&[]).await.expect("nothing to do");
}
