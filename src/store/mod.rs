//! The message store: one SQLite file (WAL, `synchronous=FULL`) holding the
//! inbox, the outbox, watched addresses, deposits and the block cursor.
//!
//! Everything a state change touches is in this one file so that the change and
//! the responses it causes commit in one transaction (docs/architecture.md, "Invariants": no lost
//! request, no lost response, no missed deposit). Writers go through
//! [`StoreTx`]; the listen task is the only one that changes state, the outbox
//! relay only marks rows sent. Schema: `migrations/store/`.

mod blocks;
mod deposits;
mod ledger;
mod payout_txs;
mod payouts;
mod watches;

pub use deposits::{DepositSeen, DueDeposit, NewDeposit};
pub use ledger::PendingMovement;
pub use payout_txs::SignedTx;
pub use payouts::{Mined, NewPayout, Payout, PayoutState};
pub use watches::NewWatch;

use alloy::primitives::{Address, B256};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{QueryBuilder, Row, Sqlite, Transaction};
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

/// A message store failure, with the operation that failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Opening or migrating the file failed.
    #[error("message store {path}: {source}")]
    Open {
        /// The SQLite file.
        path: PathBuf,
        /// Underlying error.
        source: sqlx::Error,
    },
    /// Applying migrations failed.
    #[error("message store {path}: migration failed: {source}")]
    Migrate {
        /// The SQLite file.
        path: PathBuf,
        /// Underlying error.
        source: sqlx::migrate::MigrateError,
    },
    /// A statement failed.
    #[error("message store: {op}: {source}")]
    Db {
        /// What was being done.
        op: &'static str,
        /// Underlying error.
        source: sqlx::Error,
    },
    /// A stored value does not decode (the file was edited or is damaged).
    #[error("message store: bad stored value in {what}")]
    Corrupt {
        /// Table and column.
        what: &'static str,
    },
}

pub(crate) trait Ctx<T> {
    fn ctx(self, op: &'static str) -> Result<T, StoreError>;
}

impl<T> Ctx<T> for Result<T, sqlx::Error> {
    fn ctx(self, op: &'static str) -> Result<T, StoreError> {
        self.map_err(|source| StoreError::Db { op, source })
    }
}

pub(crate) use crate::clock::now_ms;

pub(crate) fn b256(bytes: &[u8], what: &'static str) -> Result<B256, StoreError> {
    B256::try_from(bytes).map_err(|_| StoreError::Corrupt { what })
}

pub(crate) fn address(bytes: &[u8], what: &'static str) -> Result<Address, StoreError> {
    Address::try_from(bytes).map_err(|_| StoreError::Corrupt { what })
}

/// A block the watcher verified: number, hash and parent hash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockRef {
    /// Height.
    pub number: u64,
    /// Block hash.
    pub hash: B256,
    /// Parent block hash.
    pub parent_hash: B256,
}

/// A watched address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchRow {
    /// Chain name (`ETH`).
    pub chain: String,
    /// Symbol (`USDT`, `ETH`).
    pub symbol: String,
    /// The address.
    pub address: Address,
}

/// An outbox row waiting for the broker.
#[derive(Debug, Clone)]
pub struct OutboxRow {
    /// Row id; publish order.
    pub id: i64,
    /// Response kind (`topup_resp`).
    pub kind: String,
    /// JSON body (for a dead letter, the request as received).
    pub body: Vec<u8>,
    /// Why a dead letter could not be answered.
    pub reason: Option<String>,
}

/// Outbox kind of a dead letter of request kind `kind`.
pub fn dead_letter_kind(kind: &str) -> String {
    format!("{DEAD_LETTER_PREFIX}{kind}")
}

/// Prefix of dead-letter outbox kinds.
pub const DEAD_LETTER_PREFIX: &str = "dead_letter.";

/// How a request ended, as recorded in the inbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Valid and applied.
    Accepted,
    /// Valid signature, refused (answered with status 0).
    Refused,
    /// Signature did not verify (answered with status 3).
    BadSignature,
    /// Could not be answered (no address or queue id to answer to).
    Unaddressable,
}

impl Outcome {
    /// Stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Accepted => "accepted",
            Outcome::Refused => "refused",
            Outcome::BadSignature => "bad_signature",
            Outcome::Unaddressable => "unaddressable",
        }
    }
}

/// Handle on the message store; cheap to clone.
#[derive(Debug, Clone)]
pub struct Store {
    pool: SqlitePool,
    /// This process's writers take turns here, in order, before SQLite's
    /// write lock: SQLite's own busy handler sleeps in growing steps (up to
    /// 100 ms) while another writer holds the lock, which left the listen
    /// task, the payout actors and the relays waiting far longer than the
    /// transactions they waited for.
    writer: std::sync::Arc<tokio::sync::Mutex<()>>,
}

impl Store {
    /// Opens (creating if needed) and migrates the store at `path`.
    pub async fn open(path: &Path) -> Result<Self, StoreError> {
        let open_err = |source| StoreError::Open {
            path: path.to_owned(),
            source,
        };
        let opts = SqliteConnectOptions::from_str("sqlite://")
            .map_err(open_err)?
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(30));
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(opts)
            .await
            .map_err(open_err)?;
        // SQLite has no migration lock: when another process (a tool, a test)
        // migrates the same file at the same moment, one of the two fails
        // half-way; running again finds the migration applied.
        let mut tries = 0;
        loop {
            match sqlx::migrate!("./migrations/store").run(&pool).await {
                Ok(()) => break,
                Err(_) if tries < 3 => {
                    tries += 1;
                    tokio::time::sleep(Duration::from_millis(100 * tries)).await;
                }
                Err(source) => {
                    return Err(StoreError::Migrate {
                        path: path.to_owned(),
                        source,
                    });
                }
            }
        }
        Ok(Self {
            pool,
            writer: Default::default(),
        })
    }

    /// Opens an existing store read-only, without migrating: for tools and
    /// tests that look while the daemon runs.
    pub async fn open_read_only(path: &Path) -> Result<Self, StoreError> {
        let open_err = |source| StoreError::Open {
            path: path.to_owned(),
            source,
        };
        let opts = SqliteConnectOptions::from_str("sqlite://")
            .map_err(open_err)?
            .filename(path)
            .read_only(true)
            .busy_timeout(Duration::from_secs(30));
        let pool = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(opts)
            .await
            .map_err(open_err)?;
        Ok(Self {
            pool,
            writer: Default::default(),
        })
    }

    /// Starts a write transaction. It takes the write lock at once (`BEGIN
    /// IMMEDIATE`), so two writers queue instead of one failing when its read
    /// snapshot turns stale; another process's writer is waited for on the
    /// busy timeout.
    /// Writers of this process queue first, in order, on one in-process lock.
    pub async fn begin(&self) -> Result<StoreTx, StoreError> {
        let turn = self.writer.clone().lock_owned().await;
        let tx = self.pool.begin_with("BEGIN IMMEDIATE").await.ctx("begin")?;
        Ok(StoreTx { tx, _turn: turn })
    }

    /// Unsent outbox rows with id above `after`, oldest first.
    pub async fn unsent(&self, after: i64, limit: u32) -> Result<Vec<OutboxRow>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, kind, body, reason FROM outbox WHERE sent_at IS NULL AND id > ? ORDER BY id LIMIT ?",
        )
        .bind(after)
        .bind(limit)
        .fetch_all(&self.pool)
        .await
        .ctx("read outbox")?;
        Ok(rows
            .iter()
            .map(|r| OutboxRow {
                id: r.get(0),
                kind: r.get(1),
                body: r.get(2),
                reason: r.get(3),
            })
            .collect())
    }

    /// Marks outbox rows as confirmed by the broker.
    pub async fn mark_sent(&self, ids: &[i64]) -> Result<(), StoreError> {
        if ids.is_empty() {
            return Ok(());
        }
        let now = now_ms();
        let mut tx = self.begin().await?;
        for chunk in ids.chunks(ROWS_PER_STATEMENT * 4) {
            let mut q = QueryBuilder::<Sqlite>::new("UPDATE outbox SET sent_at = ");
            q.push_bind(now).push(" WHERE id IN (");
            let mut list = q.separated(", ");
            for id in chunk {
                list.push_bind(*id);
            }
            q.push(")");
            q.build()
                .execute(&mut *tx.tx)
                .await
                .ctx("mark outbox sent")?;
        }
        tx.commit().await
    }

    /// Body hashes of the last `limit` accepted topups, newest first: a
    /// redelivery of one of them is a repeat (see [`DEDUPED`] for why they
    /// are not looked up by body).
    pub async fn recent_topups(&self, limit: u32) -> Result<Vec<[u8; 32]>, StoreError> {
        let rows: Vec<Vec<u8>> = sqlx::query_scalar(
            "SELECT body_hash FROM inbox WHERE kind = 'topup' AND outcome = 'accepted'
             ORDER BY id DESC LIMIT ?",
        )
        .bind(limit)
        .fetch_all(&self.pool)
        .await
        .ctx("read recent topups")?;
        Ok(rows
            .iter()
            .filter_map(|h| <[u8; 32]>::try_from(h.as_slice()).ok())
            .collect())
    }

    /// How many requests the inbox holds, and when the first and the last were
    /// recorded (unix milliseconds): for benchmarks and tools.
    pub async fn inbox_span(&self) -> Result<(i64, i64, i64), StoreError> {
        // Row ids count up from 1: cheap at any size, unlike COUNT(*).
        sqlx::query_as(
            "SELECT COALESCE(MAX(id), 0),
                    COALESCE((SELECT received_at FROM inbox ORDER BY id LIMIT 1), 0),
                    COALESCE((SELECT received_at FROM inbox ORDER BY id DESC LIMIT 1), 0)
             FROM inbox",
        )
        .fetch_one(&self.pool)
        .await
        .ctx("read inbox span")
    }

    /// Deletes requests recorded before `cutoff` (unix milliseconds) and
    /// responses the broker confirmed before it, oldest first, in short
    /// statements of a few thousand rows so the writer is never held up long;
    /// returns how many of each. Nothing else needs them: payouts keep their
    /// own idempotency key, and a repeat of a request older than the cutoff is
    /// applied as a new one (a payout's `queue_id` still refuses a second
    /// payment). The newest row of each table stays: SQLite hands out the
    /// next id after the highest one present, and the outbox relay relies on
    /// ids that only grow.
    pub async fn prune(&self, cutoff: i64) -> Result<(u64, u64), StoreError> {
        self.prune_in_chunks(cutoff, 5_000).await
    }

    async fn prune_in_chunks(&self, cutoff: i64, chunk: i64) -> Result<(u64, u64), StoreError> {
        let mut removed = [0u64; 2];
        for (i, sql) in [
            // Requests come in time order: only the oldest chunk is looked at.
            "DELETE FROM inbox WHERE id IN (SELECT id FROM inbox ORDER BY id LIMIT ?)
                AND received_at < ? AND id < (SELECT MAX(id) FROM inbox)",
            // Responses go out in any order, and unsent ones may lead: the
            // oldest sent ones are looked for past them.
            "DELETE FROM outbox WHERE id IN (SELECT id FROM outbox
                WHERE sent_at IS NOT NULL AND sent_at < ?2 AND id < (SELECT MAX(id) FROM outbox)
                ORDER BY id LIMIT ?1)",
        ]
        .into_iter()
        .enumerate()
        {
            loop {
                let done = sqlx::query(sql)
                    .bind(chunk)
                    .bind(cutoff)
                    .execute(&self.pool)
                    .await
                    .ctx("prune")?
                    .rows_affected();
                removed[i] += done;
                if done == 0 {
                    break;
                }
            }
        }
        Ok((removed[0], removed[1]))
    }

    /// Bodies of the outbox rows of `kind` (`topup_resp`, …), sent or not,
    /// oldest first: for tools and tests.
    pub async fn outbox_bodies(&self, kind: &str) -> Result<Vec<Vec<u8>>, StoreError> {
        sqlx::query_scalar("SELECT body FROM outbox WHERE kind = ? ORDER BY id")
            .bind(kind)
            .fetch_all(&self.pool)
            .await
            .ctx("read outbox bodies")
    }

    /// Number of outbox rows not yet confirmed by the broker.
    pub async fn outbox_backlog(&self) -> Result<i64, StoreError> {
        sqlx::query_scalar("SELECT COUNT(*) FROM outbox WHERE sent_at IS NULL")
            .fetch_one(&self.pool)
            .await
            .ctx("count outbox")
    }

    /// Outbox rows not yet confirmed by the broker, and when the oldest of
    /// them was written (unix milliseconds), for health.
    pub async fn outbox_unsent(&self) -> Result<(i64, Option<i64>), StoreError> {
        sqlx::query_as(
            "SELECT COUNT(*),
                    (SELECT created_at FROM outbox WHERE sent_at IS NULL ORDER BY id LIMIT 1)
             FROM outbox WHERE sent_at IS NULL",
        )
        .fetch_one(&self.pool)
        .await
        .ctx("count outbox")
    }

    /// Payouts of `chains` and deposits counted by state, for metrics. Cheap
    /// at any size: every state but `confirmed` is counted through an index
    /// that holds only its rows (pending work and failures are few), and
    /// `confirmed` is the rest of `MAX(id)`, since rows are never deleted.
    /// States with no rows may be absent.
    pub async fn state_counts(
        &self,
        chains: &[String],
    ) -> Result<(Vec<(String, i64)>, Vec<(String, i64)>), StoreError> {
        let mut payouts: Vec<(String, i64)> = Vec::new();
        for chain in chains {
            let rows: Vec<(String, i64)> = sqlx::query_as(
                "SELECT state, COUNT(*) FROM payouts INDEXED BY payouts_state
                 WHERE chain = ? AND state IN ('queued', 'claimed', 'signed', 'sent', 'mined',
                                               'failed', 'refused', 'cancelled')
                 GROUP BY state",
            )
            .bind(chain)
            .fetch_all(&self.pool)
            .await
            .ctx("count payouts")?;
            for (state, n) in rows {
                match payouts.iter_mut().find(|(s, _)| *s == state) {
                    Some((_, total)) => *total += n,
                    None => payouts.push((state, n)),
                }
            }
        }
        let all: i64 = sqlx::query_scalar("SELECT COALESCE(MAX(id), 0) FROM payouts")
            .fetch_one(&self.pool)
            .await
            .ctx("count payouts")?;
        let open: i64 = payouts.iter().map(|(_, n)| n).sum();
        payouts.push(("confirmed".to_owned(), (all - open).max(0)));

        let mut counts: Vec<(i64, i64)> = sqlx::query_as(
            "SELECT state, COUNT(*) FROM deposits INDEXED BY deposits_due
             WHERE state IN (0, 3) GROUP BY state",
        )
        .fetch_all(&self.pool)
        .await
        .ctx("count deposits")?;
        let failed: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM deposits INDEXED BY deposits_failed WHERE state = 2",
        )
        .fetch_one(&self.pool)
        .await
        .ctx("count deposits")?;
        let all: i64 = sqlx::query_scalar("SELECT COALESCE(MAX(id), 0) FROM deposits")
            .fetch_one(&self.pool)
            .await
            .ctx("count deposits")?;
        let open: i64 = counts.iter().map(|(_, n)| n).sum::<i64>() + failed;
        counts.push((2, failed));
        counts.push((1, (all - open).max(0)));
        let names = ["pending", "confirmed", "failed", "orphaned"];
        let deposits = counts
            .into_iter()
            .map(|(s, n)| {
                let name = names.get(s as usize).copied().unwrap_or("unknown");
                (name.to_owned(), n)
            })
            .collect();
        Ok((payouts, deposits))
    }

    /// Closes the pool, waiting for connections to finish.
    pub async fn close(&self) {
        self.pool.close().await;
    }
}

/// A write transaction on the message store.
pub struct StoreTx {
    tx: Transaction<'static, Sqlite>,
    /// This process's write turn, released after the transaction ends (the
    /// fields drop in this order).
    _turn: tokio::sync::OwnedMutexGuard<()>,
}

/// Rows per multi-row statement: one statement instead of hundreds is what
/// lets a batch of thousands commit in milliseconds.
const ROWS_PER_STATEMENT: usize = 200;

/// The condition of the inbox's unique body-hash index: every request but an
/// accepted topup (migration 0005). A query that looks a body up repeats it
/// word for word, so that SQLite uses the index.
const DEDUPED: &str = "(kind <> 'topup' OR outcome <> 'accepted')";

/// A request to record in the inbox.
#[derive(Debug, Clone, Copy)]
pub struct InboxRow<'a> {
    /// Request kind.
    pub kind: &'a str,
    /// sha256 of kind and body.
    pub body_hash: &'a [u8; 32],
    /// The body as received.
    pub body: &'a [u8],
    /// How it ended.
    pub outcome: Outcome,
    /// Why, when refused.
    pub error: Option<&'a str>,
}

impl StoreTx {
    /// Records requests; returns the hashes that are new. A hash recorded
    /// before (a redelivery), or earlier in the same call, is not returned,
    /// except for accepted topups: they are not looked up (see [`DEDUPED`])
    /// and are always new.
    pub async fn record_requests(
        &mut self,
        rows: &[InboxRow<'_>],
    ) -> Result<HashSet<[u8; 32]>, StoreError> {
        let now = now_ms();
        let mut new = HashSet::with_capacity(rows.len());
        for chunk in rows.chunks(ROWS_PER_STATEMENT) {
            let mut q = QueryBuilder::<Sqlite>::new(
                "INSERT INTO inbox (kind, body_hash, body, outcome, error, received_at) ",
            );
            q.push_values(chunk, |mut b, r| {
                b.push_bind(r.kind)
                    .push_bind(r.body_hash.as_slice())
                    .push_bind(r.body)
                    .push_bind(r.outcome.as_str())
                    .push_bind(r.error)
                    .push_bind(now);
            });
            q.push(" ON CONFLICT (body_hash) WHERE ");
            q.push(DEDUPED);
            q.push(" DO NOTHING RETURNING body_hash");
            let hashes: Vec<Vec<u8>> = q
                .build_query_scalar()
                .fetch_all(&mut *self.tx)
                .await
                .ctx("insert inbox")?;
            for h in hashes {
                if let Ok(h) = <[u8; 32]>::try_from(h.as_slice()) {
                    new.insert(h);
                }
            }
        }
        Ok(new)
    }

    /// Queues responses for the relay, in order.
    pub async fn push_outbox_many<'a>(
        &mut self,
        rows: &[(&'a str, &'a [u8])],
    ) -> Result<(), StoreError> {
        let now = now_ms();
        for chunk in rows.chunks(ROWS_PER_STATEMENT) {
            let mut q = QueryBuilder::<Sqlite>::new("INSERT INTO outbox (kind, body, created_at) ");
            q.push_values(chunk, |mut b, (kind, body)| {
                b.push_bind(*kind).push_bind(*body).push_bind(now);
            });
            q.build()
                .execute(&mut *self.tx)
                .await
                .ctx("insert outbox")?;
        }
        Ok(())
    }

    /// Queues a response for the relay.
    pub async fn push_outbox(&mut self, kind: &str, body: &[u8]) -> Result<(), StoreError> {
        sqlx::query("INSERT INTO outbox (kind, body, created_at) VALUES (?, ?, ?)")
            .bind(kind)
            .bind(body)
            .bind(now_ms())
            .execute(&mut *self.tx)
            .await
            .ctx("insert outbox")?;
        Ok(())
    }

    /// Queues a request that cannot be answered for the dead-letter exchange.
    pub async fn push_dead_letter(
        &mut self,
        kind: &str,
        body: &[u8],
        reason: &str,
    ) -> Result<(), StoreError> {
        sqlx::query("INSERT INTO outbox (kind, body, reason, created_at) VALUES (?, ?, ?, ?)")
            .bind(dead_letter_kind(kind))
            .bind(body)
            .bind(reason)
            .bind(now_ms())
            .execute(&mut *self.tx)
            .await
            .ctx("insert dead letter")?;
        Ok(())
    }

    /// Records that the request with `body_hash`, accepted when it was
    /// routed, was refused when applied (a remove of an address that was not
    /// watched), so that a redelivery is answered alike.
    pub async fn refuse_request(
        &mut self,
        body_hash: &[u8; 32],
        error: &str,
    ) -> Result<(), StoreError> {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "UPDATE inbox SET outcome = ?, error = ? WHERE body_hash = ? AND {DEDUPED}"
        )))
        .bind(Outcome::Refused.as_str())
        .bind(error)
        .bind(body_hash.as_slice())
        .execute(&mut *self.tx)
        .await
        .ctx("record refusal")?;
        Ok(())
    }

    /// The error of the request with `body_hash` if it was refused.
    pub async fn refusal(&mut self, body_hash: &[u8; 32]) -> Result<Option<String>, StoreError> {
        let error: Option<Option<String>> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT error FROM inbox WHERE body_hash = ? AND outcome = ? AND {DEDUPED}"
        )))
        .bind(body_hash.as_slice())
        .bind(Outcome::Refused.as_str())
        .fetch_optional(&mut *self.tx)
        .await
        .ctx("read refusal")?;
        Ok(error.flatten())
    }

    /// Commits.
    pub async fn commit(self) -> Result<(), StoreError> {
        self.tx.commit().await.ctx("commit")
    }
}

#[cfg(test)]
mod tests;
