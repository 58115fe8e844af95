//! Watched addresses: an append-only log of watches and stops.
//!
//! The listen task's in-memory watch set decides what changes: a topup of an
//! address not yet watched appends a watch, a remove of a watched one appends
//! a stop, anything else appends nothing. At start the log is replayed, in
//! order, into the set. Appending costs a page per hundred new addresses,
//! where a table keyed by address cost a random page per address on every
//! commit. When stops make the log much longer than the set, it is compacted
//! at start ([`Store::compact_watches`]).

use super::{
    Ctx, Engine, ROWS_PER_STATEMENT, Store, StoreError, StoreTx, WatchRow, address, now_ms,
};
use alloy::primitives::Address;
use sqlx::{Any, QueryBuilder, Row};
use std::collections::HashMap;

/// Rows the log may hold beyond twice the watched count before start-up
/// compacts it.
const COMPACT_SLACK: i64 = 10_000;

impl Store {
    /// Every watched address, in the order it was (last) watched.
    pub async fn watches(&self) -> Result<Vec<WatchRow>, StoreError> {
        let mut rows: Vec<Option<WatchRow>> = Vec::new();
        let mut at: HashMap<(String, String, Address), usize> = HashMap::new();
        self.each_watch(|w, watched| {
            let key = (w.chain.clone(), w.symbol.clone(), w.address);
            match (watched, at.get(&key)) {
                (true, None) => {
                    at.insert(key, rows.len());
                    rows.push(Some(w));
                }
                (false, Some(&i)) => {
                    at.remove(&key);
                    rows[i] = None;
                }
                _ => {}
            }
        })
        .await?;
        Ok(rows.into_iter().flatten().collect())
    }

    /// Replays the log: hands each entry to `f` in order, `true` for a watch
    /// and `false` for a stop. Streaming: a million of them are never all in
    /// memory as rows at once.
    pub async fn each_watch(&self, mut f: impl FnMut(WatchRow, bool)) -> Result<(), StoreError> {
        use futures::TryStreamExt;
        let mut rows =
            sqlx::query("SELECT chain, symbol, address, watched FROM watch_log ORDER BY id")
                .fetch(&self.pool);
        while let Some(r) = rows.try_next().await.ctx("load watches")? {
            let w = WatchRow {
                chain: r.get(0),
                symbol: r.get(1),
                address: address(r.get::<&[u8], _>(2), "watch_log.address")?,
            };
            f(w, r.get::<i64, _>(3) != 0);
        }
        Ok(())
    }

    /// Whether `address` is watched for `symbol` on `chain`: for tests and
    /// tools (it reads the log backwards).
    pub async fn is_watched(
        &self,
        chain: &str,
        symbol: &str,
        addr: Address,
    ) -> Result<bool, StoreError> {
        let last: Option<i64> = sqlx::query_scalar(
            "SELECT watched FROM watch_log WHERE chain = ? AND symbol = ? AND address = ?
             ORDER BY id DESC LIMIT 1",
        )
        .bind(chain)
        .bind(symbol)
        .bind(addr.as_slice())
        .fetch_optional(&self.pool)
        .await
        .ctx("read watch")?;
        Ok(last == Some(1))
    }

    /// Rewrites the log as one watch per watched address when it holds more
    /// than twice `watched` rows (plus some slack); returns the rows removed.
    pub async fn compact_watches(&self, watched: usize) -> Result<u64, StoreError> {
        let rows: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM watch_log")
            .fetch_one(&self.pool)
            .await
            .ctx("count watch log")?;
        let watched = i64::try_from(watched).unwrap_or(i64::MAX);
        if rows <= watched.saturating_mul(2).saturating_add(COMPACT_SLACK) {
            return Ok(0);
        }
        let mut tx = self.begin().await?;
        // Keep the last entry of each address and symbol, then drop those
        // that are stops.
        // MySQL reads the table it deletes from only through a derived
        // table, computed once here (a subquery of `NOT IN` would be asked
        // again for every row).
        let older = sqlx::query(match self.engine {
            Engine::Sqlite => {
                "DELETE FROM watch_log WHERE id NOT IN
                     (SELECT MAX(id) FROM watch_log GROUP BY chain, address, symbol)"
            }
            Engine::MySql => {
                "DELETE w FROM watch_log w LEFT JOIN
                     (SELECT MAX(id) AS id FROM watch_log GROUP BY chain, address, symbol) k
                     ON k.id = w.id
                 WHERE k.id IS NULL"
            }
        })
        .execute(&mut *tx.tx)
        .await
        .ctx("compact watch log")?;
        let stops = sqlx::query("DELETE FROM watch_log WHERE watched = 0")
            .execute(&mut *tx.tx)
            .await
            .ctx("compact watch log")?;
        tx.commit().await?;
        Ok(older.rows_affected() + stops.rows_affected())
    }
}

/// A watch that started at a known block cursor: deposits to it up to
/// `lookback_blocks` before `block` are looked for. (Watches of a store
/// before schema 7, and those made before a fresh store had its first
/// cursor, have none and are not looked back for.)
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewWatch {
    /// Row id in the watch log: lookbacks go in this order.
    pub id: i64,
    /// Symbol.
    pub symbol: String,
    /// The address.
    pub address: Address,
    /// The block cursor when it started.
    pub block: u64,
}

impl Store {
    /// Watches of `chain` started after watch-log row `after`, oldest first,
    /// at most `limit`: what a lookback is still to read.
    pub async fn watches_after(
        &self,
        chain: &str,
        after: i64,
        limit: u32,
    ) -> Result<Vec<NewWatch>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, symbol, address, block FROM watch_log
             WHERE id > ? AND chain = ? AND watched = 1 AND block IS NOT NULL ORDER BY id LIMIT ?",
        )
        .bind(after)
        .bind(chain)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .ctx("read new watches")?;
        rows.iter()
            .map(|r| {
                Ok(NewWatch {
                    id: r.get(0),
                    symbol: r.get(1),
                    address: address(r.get::<&[u8], _>(2), "watch_log.address")?,
                    block: r.get::<i64, _>(3) as u64,
                })
            })
            .collect()
    }

    /// The highest watch-log row id (0 when the log is empty).
    pub async fn last_watch_id(&self) -> Result<i64, StoreError> {
        sqlx::query_scalar("SELECT COALESCE(MAX(id), 0) FROM watch_log")
            .fetch_one(&self.pool)
            .await
            .ctx("read last watch")
            .map_err(Into::into)
    }

    /// The last watch-log row of `chain` whose lookback is applied.
    pub async fn lookback_done(&self, chain: &str) -> Result<i64, StoreError> {
        let v: Option<String> = sqlx::query_scalar("SELECT value FROM meta WHERE `key` = ?")
            .bind(format!("lookback_done.{chain}"))
            .fetch_optional(&self.pool)
            .await
            .ctx("read lookback mark")?;
        Ok(v.and_then(|v| v.parse().ok()).unwrap_or(0))
    }
}

impl StoreTx {
    /// Appends watches, each with the block cursor of its chain when it
    /// started (for the lookback). The caller passes addresses it does not
    /// know as watched; one that is costs a row and changes nothing.
    pub async fn add_watches(
        &mut self,
        rows: &[(&WatchRow, Option<u64>)],
    ) -> Result<(), StoreError> {
        let now = now_ms();
        for chunk in rows.chunks(ROWS_PER_STATEMENT) {
            let mut q = QueryBuilder::<Any>::new(
                "INSERT INTO watch_log (chain, address, symbol, watched, at, block) ",
            );
            q.push_values(chunk, |mut b, (w, block)| {
                b.push_bind(&w.chain)
                    .push_bind(w.address.as_slice())
                    .push_bind(&w.symbol)
                    .push_bind(1i64)
                    .push_bind(now)
                    .push_bind(block.map(|n| n as i64));
            });
            q.build()
                .execute(&mut *self.tx)
                .await
                .ctx("insert watches")?;
        }
        Ok(())
    }

    /// Records that the lookbacks of `chain` are applied up to watch-log row
    /// `upto`.
    pub async fn set_lookback_done(&mut self, chain: &str, upto: i64) -> Result<(), StoreError> {
        self.set_meta(&format!("lookback_done.{chain}"), &upto.to_string())
            .await
    }

    /// Appends a stop: `w` is no longer watched.
    pub async fn unwatch(&mut self, w: &WatchRow) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO watch_log (chain, address, symbol, watched, at) VALUES (?, ?, ?, 0, ?)",
        )
        .bind(&w.chain)
        .bind(w.address.as_slice())
        .bind(&w.symbol)
        .bind(now_ms())
        .execute(&mut *self.tx)
        .await
        .ctx("stop watching")?;
        Ok(())
    }
}
