//! The message store: one database (an embedded SQLite file, WAL,
//! `synchronous=FULL`, or MySQL/MariaDB; see [`Engine`]) holding everything
//! the daemon decides, so that a change and the responses it causes commit in one
//! transaction (docs/architecture.md, "Invariants": no lost request, no lost
//! response, no double payout, no missed deposit).
//!
//! One file per concept: `inbox` (requests as received), `outbox`
//! (responses waiting for the broker), `watches`, `deposits`, `payouts` and
//! `payout_txs` (signed bytes), `blocks` (the applied chain window and the
//! cursor), `ledger` (final movements for the wallet store), `upkeep`
//! (pruning, counts), `webhooks` (notify targets and deliveries), `testing` (read-only views for tools and tests) and
//! `engine` (the database behind it: opening, pragmas, migrations). Writers
//! go through [`StoreTx`] and take turns on one in-process lock. Listen
//! writes requests, watches, deposits, payout state and answers (its
//! recorder what the payout senders report: signed bytes, what the node
//! said); the relays only mark rows sent. Schema: `migrations/store/`.

mod api;
mod blocks;
mod console;
mod deposits;
mod engine;
mod inbox;
mod lease;
mod ledger;
mod mined;
mod outbox;
mod payout_txs;
mod payouts;
mod testing;
mod upkeep;
mod watches;
mod webhooks;

pub use api::{DepositView, StreamRow};
pub use console::{
    DeadLetterView, DepositFilter, InboxView, Page, PayoutFilter, TxView, WINDOW as CONSOLE_WINDOW,
};
pub use deposits::{
    CONFIRMED as DEPOSIT_CONFIRMED, DepositSeen, DueDeposit, FAILED as DEPOSIT_FAILED, NewDeposit,
    ORPHANED as DEPOSIT_ORPHANED, PENDING as DEPOSIT_PENDING,
};
pub use engine::Engine;
pub use inbox::{InboxRow, Outcome};
pub use lease::{Fence, LeaseRow};
pub use ledger::PendingMovement;
pub use outbox::{DEAD_LETTER_PREFIX, OutboxRow, dead_letter_kind};
pub use payout_txs::SignedTx;
pub use payouts::{Mined, NewPayout, Payout, PayoutState};
pub use watches::NewWatch;
pub use webhooks::{AttemptResult, DeadDelivery, Delivery, Planned};

use alloy::primitives::{Address, B256};
use sqlx::{Any, AnyPool, QueryBuilder, Transaction};

/// A message store failure, with the operation that failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Opening the database failed.
    #[error("message store {target}: {source}")]
    Open {
        /// The SQLite file, or the MySQL database (no password).
        target: String,
        /// Underlying error.
        source: sqlx::Error,
    },
    /// Applying migrations failed.
    #[error("message store {target}: migration failed: {source}")]
    Migrate {
        /// The SQLite file, or the MySQL database (no password).
        target: String,
        /// Underlying error.
        source: sqlx::migrate::MigrateError,
    },
    /// A statement failed.
    #[error("message store: {0}")]
    Db(#[from] crate::db::DbError),
    /// Another instance holds the lease now: this commit was refused and
    /// changed nothing (docs/architecture.md, "High availability").
    #[error(
        "message store: this instance ({holder}, term {term}) no longer holds the lease; \
         another instance is active, so nothing was committed"
    )]
    Fenced {
        /// This instance's id.
        holder: String,
        /// The term it held.
        term: u64,
    },
    /// A stored value does not decode (the file was edited or is damaged).
    #[error("message store: bad stored value in {what}")]
    Corrupt {
        /// Table and column.
        what: &'static str,
    },
}

pub(crate) use crate::db::Ctx;

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

/// Handle on the message store; cheap to clone.
#[derive(Debug, Clone)]
pub struct Store {
    pool: AnyPool,
    engine: Engine,
    /// This process's writers take turns here, in order, before SQLite's
    /// write lock: SQLite's own busy handler sleeps in growing steps (up to
    /// 100 ms) while another writer holds the lock, which left the listen
    /// task, the payout actors and the relays waiting far longer than the
    /// transactions they waited for.
    writer: std::sync::Arc<tokio::sync::Mutex<()>>,
    /// Set when the daemon holds the lease: every commit checks it.
    fence: std::sync::Arc<std::sync::OnceLock<Fence>>,
}

/// Binds `items` as the list of an `IN (` the query has just opened, and
/// closes it.
fn push_list<'t, T>(q: &mut QueryBuilder<Any>, items: impl IntoIterator<Item = T>)
where
    T: sqlx::Encode<'t, Any> + sqlx::Type<Any>,
{
    let mut list = q.separated(", ");
    for item in items {
        list.push_bind(item);
    }
    q.push(")");
}

/// [`push_list`] of row ids.
fn push_ids(q: &mut QueryBuilder<Any>, ids: &[i64]) {
    push_list(q, ids.iter().copied());
}

impl Store {
    fn new(pool: AnyPool, engine: Engine) -> Self {
        Self {
            pool,
            engine,
            writer: Default::default(),
            fence: Default::default(),
        }
    }

    /// Starts a write transaction. Writers of this process queue first, in
    /// order, on one in-process lock. On SQLite it then takes the write lock
    /// at once (`BEGIN IMMEDIATE`), so two writers queue instead of one
    /// failing when its read snapshot turns stale; another process's writer
    /// is waited for on the busy timeout. On MySQL row locks order writers.
    pub async fn begin(&self) -> Result<StoreTx, StoreError> {
        let turn = self.writer.clone().lock_owned().await;
        let tx = match self.engine {
            Engine::Sqlite => self.pool.begin_with("BEGIN IMMEDIATE").await,
            // Statements that read to decide lock what they read (`FOR UPDATE`).
            Engine::MySql => self.pool.begin().await,
        }
        .ctx("begin")?;
        Ok(StoreTx {
            tx,
            engine: self.engine,
            fence: self.fence.get().cloned(),
            _turn: turn,
        })
    }

    async fn prune_in_chunks(&self, cutoff: i64, chunk: i64) -> Result<(u64, u64), StoreError> {
        let mut removed = [0u64; 2];
        // SQLite deletes from a limited subquery (numbered parameters: chunk
        // size, then cutoff); MySQL cannot limit a subquery of `IN` nor read
        // the table it deletes from, so it deletes in id order with a limit
        // and reads the highest id through a derived table.
        let statements = match self.engine {
            Engine::Sqlite => [
                // Requests come in time order: only the oldest chunk is looked at.
                "DELETE FROM inbox WHERE id IN (SELECT id FROM inbox ORDER BY id LIMIT ?1)
                    AND received_at < ?2 AND id < (SELECT MAX(id) FROM inbox)",
                // Responses go out in any order, and unsent ones may lead: the
                // oldest sent ones are looked for past them.
                "DELETE FROM outbox WHERE id IN (SELECT id FROM outbox
                    WHERE sent_at IS NOT NULL AND sent_at < ?2 AND id < (SELECT MAX(id) FROM outbox)
                    ORDER BY id LIMIT ?1)",
            ],
            Engine::MySql => [
                "DELETE FROM inbox WHERE received_at < ?
                    AND id < (SELECT m FROM (SELECT MAX(id) AS m FROM inbox) t) ORDER BY id LIMIT ?",
                "DELETE FROM outbox WHERE sent_at IS NOT NULL AND sent_at < ?
                    AND id < (SELECT m FROM (SELECT MAX(id) AS m FROM outbox) t) ORDER BY id LIMIT ?",
            ],
        };
        for (i, sql) in statements.into_iter().enumerate() {
            loop {
                let q = sqlx::query(sql);
                let q = match self.engine {
                    Engine::Sqlite => q.bind(chunk).bind(cutoff),
                    Engine::MySql => q.bind(cutoff).bind(chunk),
                };
                let done = q.execute(&self.pool).await.ctx("prune")?.rows_affected();
                removed[i] += done;
                if done == 0 {
                    break;
                }
            }
        }
        Ok((removed[0], removed[1]))
    }

    /// Closes the pool, waiting for connections to finish.
    pub async fn close(&self) {
        self.pool.close().await;
    }
}

/// A write transaction on the message store.
pub struct StoreTx {
    tx: Transaction<'static, Any>,
    engine: Engine,
    /// The lease this commit must still hold, if the daemon holds one.
    fence: Option<Fence>,
    /// This process's write turn, released after the transaction ends (the
    /// fields drop in this order).
    _turn: tokio::sync::OwnedMutexGuard<()>,
}

/// Rows per multi-row statement: one statement instead of hundreds is what
/// lets a batch of thousands commit in milliseconds.
const ROWS_PER_STATEMENT: usize = 200;

impl StoreTx {
    /// Commits, if the fence (when one is set) still holds the lease;
    /// otherwise rolls back and fails with [`StoreError::Fenced`].
    pub async fn commit(mut self) -> Result<(), StoreError> {
        if let Some(fence) = self.fence.take() {
            self.check_fence(&fence).await?;
        }
        self.tx.commit().await.ctx("commit").map_err(Into::into)
    }
}

#[cfg(test)]
mod tests;
/// A store for another module's tests, on the engine the store's tests use
/// (`M2POOL_TEST_STORE=mariadb`: a fresh MariaDB database).
#[cfg(test)]
pub(crate) use tests::{Scratch as TestScratch, store as test_store};
