//! The wallet store on both backends: embedded SQLite and MariaDB (as MySQL).

use alloy::primitives::{Address, B256, I256};
use alloy::signers::local::PrivateKeySigner;
use anyhow::Result;
use m2pool_payment::config::{MysqlConfig, WalletStore as Backend};
use m2pool_payment::secret::Secret;
use m2pool_payment::wallet::{Kek, Label, LedgerEntry, Movement, WalletStore, cli};
use sqlx::Executor;
use std::collections::HashMap;
use std::time::Duration;

/// A fresh database on the local MariaDB, dropped by [`drop_mysql`].
async fn mysql_backend(tag: &str) -> Result<(Backend, String)> {
    let name = format!(
        "m2pool_t_{tag}_{}_{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .subsec_nanos()
    );
    let admin = sqlx::MySqlPool::connect("mysql://root@127.0.0.1:3306/").await?;
    admin
        .execute(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .await?;
    admin.close().await;
    let cfg = MysqlConfig {
        user: "root".into(),
        password: Secret::new(String::new()),
        host: "127.0.0.1".into(),
        port: 3306,
        database: name.clone(),
        max_open_conns: 4,
        max_idle_conns: 1,
        conn_max_life: Duration::from_secs(60),
    };
    Ok((Backend::Mysql(cfg), name))
}

async fn drop_mysql(name: &str) -> Result<()> {
    let admin = sqlx::MySqlPool::connect("mysql://root@127.0.0.1:3306/").await?;
    admin
        .execute(sqlx::AssertSqlSafe(format!("DROP DATABASE {name}")))
        .await?;
    admin.close().await;
    Ok(())
}

fn entry(
    address: Address,
    symbol: &str,
    delta: i64,
    kind: Movement,
    tx: u8,
    log_index: i64,
) -> LedgerEntry {
    LedgerEntry {
        chain: "ETH".into(),
        symbol: symbol.into(),
        address,
        delta: I256::try_from(delta).expect("fits"),
        kind,
        tx_hash: B256::repeat_byte(tx),
        log_index,
        block: 100,
    }
}

async fn exercise(backend: &Backend) -> Result<()> {
    let store = WalletStore::open(backend).await?;
    // Opening again finds the migrations applied.
    WalletStore::open(backend).await?.close().await;
    let kek = Kek::from_material(b"wallet test key");

    // Create, import, refuse duplicates.
    let created = cli::create(&store, &kek, "ETH", 2, Label::User).await?;
    assert_eq!(created.len(), 2);
    let secret = PrivateKeySigner::random();
    let secret_hex = hex::encode(secret.to_bytes());
    let imported = cli::import(
        &store,
        &kek,
        "ETH",
        &format!("0x{secret_hex}\n"),
        Label::Collection,
    )
    .await?;
    assert_eq!(imported, secret.address());
    assert!(
        cli::import(&store, &kek, "ETH", &secret_hex, Label::User)
            .await
            .is_err()
    );
    assert!(
        cli::import(&store, &kek, "ETH", "not a key", Label::User)
            .await
            .is_err()
    );
    assert_eq!(store.collection("ETH").await?, Some(imported));

    // Keys are stored encrypted and decrypt to the right signer.
    let stored = store.encrypted_key("ETH", imported).await?.expect("stored");
    assert!(!stored.contains(&secret_hex));
    let signer = store.signer(&kek, "ETH", imported).await?.expect("held");
    assert_eq!(signer.address(), imported);
    assert!(
        store
            .signer(&Kek::from_material(b"other"), "ETH", imported)
            .await
            .is_err()
    );
    assert!(
        store
            .signer(&kek, "ETH", Address::repeat_byte(9))
            .await?
            .is_none()
    );

    // Ledger: exactly once per movement, balance in step.
    let a = created[0];
    let moves = [
        entry(a, "USDT", 100_500_000, Movement::Deposit, 1, 4),
        entry(a, "USDT", -50_250_000, Movement::Payout, 2, -1),
        entry(a, "ETH", -21_000_000_000_000, Movement::Fee, 2, -2),
    ];
    assert_eq!(store.apply(&moves).await?, 3);
    assert_eq!(store.apply(&moves).await?, 0, "a replay changes nothing");
    assert_eq!(
        store.balance("ETH", a, "USDT").await?,
        I256::try_from(50_250_000i64)?
    );
    assert_eq!(
        store.balance("ETH", a, "ETH").await?,
        I256::try_from(-21_000_000_000_000i64)?
    );
    assert_eq!(store.balance("ETH", created[1], "USDT").await?, I256::ZERO);
    assert_eq!(store.ledger_of("ETH", a).await?.len(), 3);

    // The listing shows addresses, labels and balances, never key material.
    let decimals = HashMap::from([("USDT".to_owned(), 6u8), ("ETH".to_owned(), 18u8)]);
    let listing = cli::list(&store, &[("ETH".to_owned(), decimals.clone())]).await?;
    assert!(listing.contains(&format!("{a:#x}")), "{listing}");
    assert!(listing.contains("50.25 USDT"), "{listing}");
    assert!(listing.contains("-0.000021 ETH"), "{listing}");
    assert!(listing.contains("collection"), "{listing}");
    assert!(!listing.contains(&secret_hex), "{listing}");
    assert!(!listing.contains("v1:"), "{listing}");

    // The same wallet on a second network: its own ledger there, the same
    // key, and USDT with 18 decimals.
    cli::enable(&store, "BSC", a, Label::User).await?;
    assert_eq!(
        store.encrypted_key("BSC", a).await?,
        store.encrypted_key("ETH", a).await?
    );
    let bsc = LedgerEntry {
        chain: "BSC".into(),
        ..entry(
            a,
            "USDT",
            7_000_000_000_000_000_000,
            Movement::Deposit,
            9,
            0,
        )
    };
    assert_eq!(store.apply(&[bsc]).await?, 1);
    assert_eq!(
        store.balance("ETH", a, "USDT").await?,
        I256::try_from(50_250_000i64)?,
        "ETH's ledger untouched"
    );
    let listing = cli::list(
        &store,
        &[
            ("ETH".to_owned(), decimals),
            ("BSC".to_owned(), HashMap::from([("USDT".to_owned(), 18u8)])),
        ],
    )
    .await?;
    let line = |net: &str| {
        listing
            .lines()
            .find(|l| l.starts_with(net) && l.contains(&format!("{a:#x}")))
            .map(str::to_owned)
    };
    assert!(
        line("ETH ").is_some_and(|l| l.contains("50.25 USDT")),
        "{listing}"
    );
    assert!(
        line("BSC ").is_some_and(|l| l.contains(" 7 USDT")),
        "{listing}"
    );
    store.close().await;
    Ok(())
}

#[tokio::test]
async fn wallet_store_on_sqlite() -> Result<()> {
    let dir = tempfile::tempdir()?;
    exercise(&Backend::Sqlite(dir.path().join("wallet.db"))).await
}

#[tokio::test]
async fn wallet_store_on_mariadb() -> Result<()> {
    let (backend, name) = mysql_backend("store").await?;
    let result = exercise(&backend).await;
    drop_mysql(&name).await?;
    result
}
