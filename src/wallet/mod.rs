//! The wallet store: hot wallets with their encrypted keys, and the ledger of
//! confirmed movements with a balance per address and symbol.
//!
//! MySQL in production, an embedded SQLite file otherwise, behind one sqlx `Any`
//! pool and one set of statements (both take `?` placeholders); the two schemas
//! are in `migrations/wallet/{mysql,sqlite}`. Amounts are signed base units
//! as decimal text, so no database type limits them. A ledger row is unique per
//! `(chain, tx_hash, log_index, address, kind)`: applying the same movement twice
//! changes nothing, which is what makes ledger updates exactly-once across
//! crashes ([`WalletStore::apply`]).

pub mod cli;
pub mod crypto;

pub use crypto::{CryptoError, Kek};

use crate::clock::now_ms;
use crate::config::WalletStore as WalletStoreConfig;
use crate::msg::{addr_hex, hash_hex, parse_address};
use alloy::primitives::{Address, B256, I256};
use alloy::signers::local::PrivateKeySigner;
use sqlx::any::{AnyPoolOptions, install_default_drivers};
use sqlx::{AnyPool, Row};
use std::str::FromStr;

/// A wallet store failure.
#[derive(Debug, thiserror::Error)]
pub enum WalletError {
    /// Connecting failed.
    #[error("wallet store {target}: {source}")]
    Connect {
        /// Where (no password).
        target: String,
        /// Underlying error.
        source: sqlx::Error,
    },
    /// Migrating failed.
    #[error("wallet store {target}: migration failed: {source}")]
    Migrate {
        /// Where.
        target: String,
        /// Underlying error.
        source: sqlx::migrate::MigrateError,
    },
    /// A statement failed.
    #[error("wallet store: {0}")]
    Db(#[from] crate::db::DbError),
    /// A stored value does not parse.
    #[error("wallet store: bad stored value in {what}: {value}")]
    Corrupt {
        /// Table and column.
        what: &'static str,
        /// The value.
        value: String,
    },
    /// A key does not decrypt.
    #[error(transparent)]
    Crypto(#[from] CryptoError),
}

use crate::db::Ctx;

/// What a wallet is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Label {
    /// A user's (deposit) wallet.
    User,
    /// The collection wallet, which pays when a user wallet holds too little.
    Collection,
}

impl Label {
    /// Its stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Label::User => "user",
            Label::Collection => "collection",
        }
    }
}

/// What a ledger row records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Movement {
    /// A confirmed deposit to a watched address.
    Deposit,
    /// A confirmed payout from a hot wallet.
    Payout,
    /// Gas paid by a hot wallet for a mined payout.
    Fee,
}

impl Movement {
    /// Its stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Movement::Deposit => "deposit",
            Movement::Payout => "payout",
            Movement::Fee => "fee",
        }
    }
}

/// One confirmed movement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LedgerEntry {
    /// Chain.
    pub chain: String,
    /// Symbol.
    pub symbol: String,
    /// Whose balance moves.
    pub address: Address,
    /// Signed base units: positive in, negative out.
    pub delta: I256,
    /// What it is.
    pub kind: Movement,
    /// Transaction.
    pub tx_hash: B256,
    /// Transfer log index; `-1` for a payout or native ether, `-2` for a fee.
    pub log_index: i64,
    /// Block it was final in.
    pub block: u64,
}

/// A wallet as listed (never with its key).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WalletRow {
    /// Address.
    pub address: Address,
    /// Label.
    pub label: Label,
}

/// A ledger balance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Balance {
    /// Address.
    pub address: Address,
    /// Symbol.
    pub symbol: String,
    /// Signed base units.
    pub balance: I256,
}

/// Handle on the wallet store; cheap to clone.
#[derive(Debug, Clone)]
pub struct WalletStore {
    pool: AnyPool,
    mysql: bool,
}

fn parse_i256(s: &str, what: &'static str) -> Result<I256, WalletError> {
    I256::from_dec_str(s).map_err(|_| WalletError::Corrupt {
        what,
        value: s.to_owned(),
    })
}

fn stored_address(s: &str, what: &'static str) -> Result<Address, WalletError> {
    parse_address(s).map_err(|_| WalletError::Corrupt {
        what,
        value: s.to_owned(),
    })
}

impl WalletStore {
    /// Connects to (creating, for SQLite) and migrates the configured store.
    pub async fn open(cfg: &WalletStoreConfig) -> Result<Self, WalletError> {
        install_default_drivers();
        let (url, target, mysql_db, opts) = match cfg {
            WalletStoreConfig::Mysql(m) => {
                let (url, target) = crate::db::mysql_url(m);
                let opts = crate::db::mysql_pool_options(m, "");
                (url, target, Some(m.database.as_str()), opts)
            }
            WalletStoreConfig::Sqlite(path) => {
                let url = format!("sqlite://{}?mode=rwc", path.display());
                let target = format!("sqlite {}", path.display());
                (url, target, None, AnyPoolOptions::new().max_connections(2))
            }
        };
        let pool = opts
            .connect(&url)
            .await
            .map_err(|source| WalletError::Connect {
                target: target.clone(),
                source,
            })?;
        let migrated = match mysql_db {
            Some(database) => {
                let migrator = sqlx::migrate!("./migrations/wallet/mysql");
                crate::db::migrate_mysql(&pool, migrator, database).await
            }
            None => {
                let migrator = sqlx::migrate!("./migrations/wallet/sqlite");
                crate::db::migrate_sqlite(&pool, migrator).await
            }
        };
        migrated.map_err(|source| WalletError::Migrate { target, source })?;
        Ok(Self {
            pool,
            mysql: mysql_db.is_some(),
        })
    }

    /// Adds a wallet; `false` if the address is already there.
    pub async fn add(
        &self,
        chain: &str,
        address: Address,
        label: Label,
        encrypted_key: &str,
    ) -> Result<bool, WalletError> {
        let sql = if self.mysql {
            "INSERT IGNORE INTO wallets (chain, address, label, encrypted_key, created_at) VALUES (?, ?, ?, ?, ?)"
        } else {
            "INSERT OR IGNORE INTO wallets (chain, address, label, encrypted_key, created_at) VALUES (?, ?, ?, ?, ?)"
        };
        let done = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(chain)
            .bind(addr_hex(&address))
            .bind(label.as_str())
            .bind(encrypted_key)
            .bind(now_ms())
            .execute(&self.pool)
            .await
            .ctx("insert wallet")?;
        Ok(done.rows_affected() == 1)
    }

    /// The encrypted key of `address`, if the store holds it.
    pub async fn encrypted_key(
        &self,
        chain: &str,
        address: Address,
    ) -> Result<Option<String>, WalletError> {
        sqlx::query_scalar("SELECT encrypted_key FROM wallets WHERE chain = ? AND address = ?")
            .bind(chain)
            .bind(addr_hex(&address))
            .fetch_optional(&self.pool)
            .await
            .ctx("read wallet key")
            .map_err(Into::into)
    }

    /// The encrypted key of `address` as stored for any network (the same
    /// on each: it is bound to the address, not the network).
    pub async fn any_encrypted_key(&self, address: Address) -> Result<Option<String>, WalletError> {
        sqlx::query_scalar(
            "SELECT encrypted_key FROM wallets WHERE address = ? ORDER BY id LIMIT 1",
        )
        .bind(addr_hex(&address))
        .fetch_optional(&self.pool)
        .await
        .ctx("read wallet key")
        .map_err(Into::into)
    }

    /// Decrypts the key of `address` into a signer; `None` if the store does
    /// not hold it. The plaintext is zeroized when the signer is dropped.
    pub async fn signer(
        &self,
        kek: &Kek,
        chain: &str,
        address: Address,
    ) -> Result<Option<PrivateKeySigner>, WalletError> {
        let Some(stored) = self.encrypted_key(chain, address).await? else {
            return Ok(None);
        };
        let secret = kek.decrypt(&address, &stored)?;
        // Straight from the zeroized buffer: no plaintext copy is left behind.
        let signer =
            PrivateKeySigner::from_slice(secret.as_slice()).map_err(|_| WalletError::Corrupt {
                what: "wallets.encrypted_key",
                value: format!("{address:#x}: not a valid secp256k1 key"),
            })?;
        if signer.address() != address {
            return Err(WalletError::Corrupt {
                what: "wallets.encrypted_key",
                value: format!("{address:#x}: the key belongs to {:#x}", signer.address()),
            });
        }
        Ok(Some(signer))
    }

    /// The first wallet labelled `collection` on `chain`.
    pub async fn collection(&self, chain: &str) -> Result<Option<Address>, WalletError> {
        let a: Option<String> =
            sqlx::query_scalar("SELECT address FROM wallets WHERE chain = ? AND label = 'collection' ORDER BY id LIMIT 1")
                .bind(chain)
                .fetch_optional(&self.pool)
                .await
                .ctx("read collection wallet")?;
        a.map(|a| stored_address(&a, "wallets.address")).transpose()
    }

    /// Every wallet of `chain`, oldest first.
    pub async fn wallets(&self, chain: &str) -> Result<Vec<WalletRow>, WalletError> {
        let rows = sqlx::query("SELECT address, label FROM wallets WHERE chain = ? ORDER BY id")
            .bind(chain)
            .fetch_all(&self.pool)
            .await
            .ctx("list wallets")?;
        rows.iter()
            .map(|r| {
                let label: String = r.get(1);
                Ok(WalletRow {
                    address: stored_address(&r.get::<String, _>(0), "wallets.address")?,
                    label: if label == "collection" {
                        Label::Collection
                    } else {
                        Label::User
                    },
                })
            })
            .collect()
    }

    /// Every ledger balance of `chain`.
    pub async fn balances(&self, chain: &str) -> Result<Vec<Balance>, WalletError> {
        let rows = sqlx::query("SELECT address, symbol, balance FROM balances WHERE chain = ? ORDER BY address, symbol")
            .bind(chain)
            .fetch_all(&self.pool)
            .await
            .ctx("read balances")?;
        rows.iter()
            .map(|r| {
                Ok(Balance {
                    address: stored_address(&r.get::<String, _>(0), "balances.address")?,
                    symbol: r.get(1),
                    balance: parse_i256(&r.get::<String, _>(2), "balances.balance")?,
                })
            })
            .collect()
    }

    /// The ledger balance of `address` in `symbol` (zero when it has none).
    pub async fn balance(
        &self,
        chain: &str,
        address: Address,
        symbol: &str,
    ) -> Result<I256, WalletError> {
        let b: Option<String> = sqlx::query_scalar(
            "SELECT balance FROM balances WHERE chain = ? AND address = ? AND symbol = ?",
        )
        .bind(chain)
        .bind(addr_hex(&address))
        .bind(symbol)
        .fetch_optional(&self.pool)
        .await
        .ctx("read balance")?;
        b.map_or(Ok(I256::ZERO), |b| parse_i256(&b, "balances.balance"))
    }

    /// Applies movements in one transaction, each exactly once: a movement
    /// already in the ledger is skipped. Returns how many were new.
    pub async fn apply(&self, entries: &[LedgerEntry]) -> Result<usize, WalletError> {
        let mut tx = self.pool.begin().await.ctx("begin")?;
        let insert = if self.mysql {
            "INSERT IGNORE INTO ledger (chain, symbol, address, delta, kind, tx_hash, log_index, block_number, created_at)
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
        } else {
            "INSERT OR IGNORE INTO ledger (chain, symbol, address, delta, kind, tx_hash, log_index, block_number, created_at)
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
        };
        let read = if self.mysql {
            "SELECT balance FROM balances WHERE chain = ? AND address = ? AND symbol = ? FOR UPDATE"
        } else {
            "SELECT balance FROM balances WHERE chain = ? AND address = ? AND symbol = ?"
        };
        let now = now_ms();
        let mut applied = 0;
        for e in entries {
            let address = addr_hex(&e.address);
            let done = sqlx::query(sqlx::AssertSqlSafe(insert))
                .bind(&e.chain)
                .bind(&e.symbol)
                .bind(&address)
                .bind(e.delta.to_string())
                .bind(e.kind.as_str())
                .bind(hash_hex(&e.tx_hash))
                .bind(e.log_index)
                .bind(e.block as i64)
                .bind(now)
                .execute(&mut *tx)
                .await
                .ctx("insert ledger")?;
            if done.rows_affected() == 0 {
                continue;
            }
            applied += 1;
            let current: Option<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(read))
                .bind(&e.chain)
                .bind(&address)
                .bind(&e.symbol)
                .fetch_optional(&mut *tx)
                .await
                .ctx("read balance")?;
            match current {
                None => {
                    sqlx::query("INSERT INTO balances (chain, address, symbol, balance, updated_at) VALUES (?, ?, ?, ?, ?)")
                        .bind(&e.chain)
                        .bind(&address)
                        .bind(&e.symbol)
                        .bind(e.delta.to_string())
                        .bind(now)
                        .execute(&mut *tx)
                        .await
                        .ctx("insert balance")?;
                }
                Some(b) => {
                    let next = parse_i256(&b, "balances.balance")?.saturating_add(e.delta);
                    sqlx::query("UPDATE balances SET balance = ?, updated_at = ? WHERE chain = ? AND address = ? AND symbol = ?")
                        .bind(next.to_string())
                        .bind(now)
                        .bind(&e.chain)
                        .bind(&address)
                        .bind(&e.symbol)
                        .execute(&mut *tx)
                        .await
                        .ctx("update balance")?;
                }
            }
        }
        tx.commit().await.ctx("commit ledger")?;
        Ok(applied)
    }

    /// Ledger rows of `address` (for tests and tools): `(symbol, delta, kind, tx_hash)`.
    pub async fn ledger_of(
        &self,
        chain: &str,
        address: Address,
    ) -> Result<Vec<(String, I256, String, B256)>, WalletError> {
        let rows = sqlx::query("SELECT symbol, delta, kind, tx_hash FROM ledger WHERE chain = ? AND address = ? ORDER BY id")
            .bind(chain)
            .bind(addr_hex(&address))
            .fetch_all(&self.pool)
            .await
            .ctx("read ledger")?;
        rows.iter()
            .map(|r| {
                let hash: String = r.get(3);
                Ok((
                    r.get(0),
                    parse_i256(&r.get::<String, _>(1), "ledger.delta")?,
                    r.get(2),
                    B256::from_str(&hash).map_err(|_| WalletError::Corrupt {
                        what: "ledger.tx_hash",
                        value: hash.clone(),
                    })?,
                ))
            })
            .collect()
    }

    /// Closes the pool.
    pub async fn close(&self) {
        self.pool.close().await;
    }
}
