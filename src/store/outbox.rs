//! The outbox: every response (and dead letter) as a row written in the
//! transaction of the change that causes it; the relay publishes unsent rows
//! in id order and marks them sent after the broker's confirm.

use super::{Ctx, ROWS_PER_STATEMENT, Store, StoreError, StoreTx, now_ms, push_ids};
use crate::txlog::Line;
use sqlx::{Any, QueryBuilder, Row};

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
    /// The transaction-log line to write once it is published, as decided
    /// with the answer; `None` for rows older than migration 0008 too.
    pub line: Option<Line>,
}

/// Outbox kind of a dead letter of request kind `kind`.
pub fn dead_letter_kind(kind: &str) -> String {
    format!("{DEAD_LETTER_PREFIX}{kind}")
}

/// Prefix of dead-letter outbox kinds.
pub const DEAD_LETTER_PREFIX: &str = "dead_letter.";

impl Store {
    /// Unsent outbox rows with id above `after`, oldest first.
    pub async fn unsent(&self, after: i64, limit: u32) -> Result<Vec<OutboxRow>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, kind, body, reason, line FROM outbox WHERE sent_at IS NULL AND id > ? ORDER BY id LIMIT ?",
        )
        .bind(after)
        .bind(i64::from(limit))
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
                line: r.get::<Option<&str>, _>(4).and_then(Line::from_stored),
            })
            .collect())
    }

    /// Marks outbox rows as confirmed by the broker, now.
    pub async fn mark_sent(&self, ids: &[i64]) -> Result<(), StoreError> {
        self.mark_sent_at(ids, now_ms()).await
    }

    /// Marks outbox rows as confirmed by the broker at `now` (unix
    /// milliseconds): when the confirms came, which may be a little before
    /// the rows are marked.
    pub async fn mark_sent_at(&self, ids: &[i64], now: i64) -> Result<(), StoreError> {
        if ids.is_empty() {
            return Ok(());
        }
        let mut tx = self.begin().await?;
        for chunk in ids.chunks(ROWS_PER_STATEMENT * 4) {
            let mut q = QueryBuilder::<Any>::new("UPDATE outbox SET sent_at = ");
            q.push_bind(now).push(" WHERE id IN (");
            push_ids(&mut q, chunk);
            q.build()
                .execute(&mut *tx.tx)
                .await
                .ctx("mark outbox sent")?;
        }
        tx.commit().await
    }

    /// Number of outbox rows not yet confirmed by the broker.
    pub async fn outbox_backlog(&self) -> Result<i64, StoreError> {
        sqlx::query_scalar("SELECT COUNT(*) FROM outbox WHERE sent_at IS NULL")
            .fetch_one(&self.pool)
            .await
            .ctx("count outbox")
            .map_err(Into::into)
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
        .map_err(Into::into)
    }
}

impl StoreTx {
    /// Queues responses for the relay, in order.
    pub async fn push_outbox_many<'a>(
        &mut self,
        rows: &[(&'a str, &'a [u8], Option<&'a Line>)],
    ) -> Result<(), StoreError> {
        let now = now_ms();
        for chunk in rows.chunks(ROWS_PER_STATEMENT) {
            let mut q =
                QueryBuilder::<Any>::new("INSERT INTO outbox (kind, body, created_at, line) ");
            q.push_values(chunk, |mut b, (kind, body, line)| {
                b.push_bind(*kind)
                    .push_bind(*body)
                    .push_bind(now)
                    .push_bind(line.map(Line::to_stored));
            });
            q.build()
                .execute(&mut *self.tx)
                .await
                .ctx("insert outbox")?;
        }
        Ok(())
    }

    /// Queues a response for the relay.
    pub async fn push_outbox(
        &mut self,
        kind: &str,
        body: &[u8],
        line: Option<&Line>,
    ) -> Result<(), StoreError> {
        self.push_outbox_many(&[(kind, body, line)]).await
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
}
