//! Webhook targets and deliveries (docs/architecture.md, "Webhooks"): the
//! `notify_url` of each request by target, the deliveries the stream's
//! sequencer plans for answers, and what the dispatcher reads and records.
//! A target group's deliveries go out in id order, one at a time.

use super::{
    Ctx, ROWS_PER_STATEMENT, Store, StoreError, StoreTx, StreamRow, now_ms, push_ids, push_list,
};
use sqlx::{Any, QueryBuilder, Row};

/// Waiting for an attempt (`1`: delivered).
pub const PENDING: i64 = 0;
/// Given up: on the dead list until replayed.
pub const DEAD: i64 = 2;

/// A delivery to attempt.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// Row id.
    pub id: i64,
    /// The answer's stream position: the idempotency key.
    pub seq: i64,
    /// The answer's kind (`pay_resp`).
    pub kind: String,
    /// Where to.
    pub url: String,
    /// The URL's host, which limits attempts in flight.
    pub host: String,
    /// The answer as published.
    pub body: Vec<u8>,
    /// Attempts so far.
    pub attempts: i64,
    /// When it was planned (or replayed), unix ms: the retry window's start.
    pub first_at: i64,
}

/// How an attempt ended, to record.
#[derive(Debug, Clone)]
pub enum AttemptResult {
    /// 2xx.
    Delivered {
        /// Delivery id.
        id: i64,
    },
    /// Failed; tried again at `next_at` (unix ms).
    Retry {
        /// Delivery id.
        id: i64,
        /// When.
        next_at: i64,
        /// What went wrong.
        error: String,
    },
    /// Failed for the last time: dead, and so are the later deliveries of
    /// its group still waiting (they would arrive out of order otherwise;
    /// a replay sends them in order again).
    Dead {
        /// Delivery id.
        id: i64,
        /// What went wrong.
        error: String,
    },
}

/// A dead delivery, as `webhook dead` lists it.
#[derive(Debug, Clone)]
pub struct DeadDelivery {
    /// Row id (what `webhook replay --id` takes).
    pub id: i64,
    /// Stream position.
    pub seq: i64,
    /// Answer kind.
    pub kind: String,
    /// Where it was sent.
    pub url: String,
    /// Attempts made.
    pub attempts: i64,
    /// The last failure.
    pub error: Option<String>,
    /// When it was given up, unix ms.
    pub dead_at: Option<i64>,
}

/// A delivery the sequencer plans for an answer.
#[derive(Debug, Clone)]
pub struct Planned {
    /// The answer's target (where a `notify_url` would be kept).
    pub target: [u8; 32],
    /// Where it goes when its request gave no URL (the config's per kind).
    pub fallback: Option<String>,
}

impl StoreTx {
    /// Keeps each target's `notify_url` (the latest given wins).
    pub async fn set_notify_targets(
        &mut self,
        targets: &[(&[u8; 32], &str)],
    ) -> Result<(), StoreError> {
        let now = now_ms();
        for chunk in targets.chunks(ROWS_PER_STATEMENT) {
            let mut q =
                QueryBuilder::<Any>::new("INSERT INTO notify_targets (target, url, updated_at) ");
            q.push_values(chunk, |mut b, (t, url)| {
                b.push_bind(t.as_slice()).push_bind(*url).push_bind(now);
            });
            q.push(match self.engine {
                super::Engine::Sqlite => {
                    " ON CONFLICT (target) DO UPDATE SET url = excluded.url, updated_at = excluded.updated_at"
                }
                super::Engine::MySql => {
                    " ON DUPLICATE KEY UPDATE url = VALUES(url), updated_at = VALUES(updated_at)"
                }
            });
            q.build()
                .execute(&mut *self.tx)
                .await
                .ctx("keep notify targets")?;
        }
        Ok(())
    }

    /// Writes a delivery for each planned answer whose target has a URL
    /// (or a fallback); returns how many.
    pub(super) async fn plan_deliveries(
        &mut self,
        planned: &[(&StreamRow, Planned)],
    ) -> Result<usize, StoreError> {
        if planned.is_empty() {
            return Ok(0);
        }
        let mut urls: std::collections::HashMap<Vec<u8>, String> = Default::default();
        for chunk in planned.chunks(ROWS_PER_STATEMENT) {
            let mut q = QueryBuilder::<Any>::new(
                "SELECT target, url FROM notify_targets WHERE target IN (",
            );
            push_list(&mut q, chunk.iter().map(|(_, p)| p.target.as_slice()));
            for r in q
                .build()
                .fetch_all(&mut *self.tx)
                .await
                .ctx("read notify targets")?
            {
                urls.insert(r.get(0), r.get(1));
            }
        }
        let now = now_ms();
        let rows: Vec<(&StreamRow, &Planned, String, String)> = planned
            .iter()
            .filter_map(|(row, p)| {
                let url = urls
                    .get(p.target.as_slice())
                    .cloned()
                    .or_else(|| p.fallback.clone())?;
                let host = url::Url::parse(&url)
                    .ok()
                    .and_then(|u| u.host_str().map(str::to_owned))
                    .unwrap_or_default();
                Some((*row, p, url, host))
            })
            .collect();
        for chunk in rows.chunks(ROWS_PER_STATEMENT) {
            let mut q = QueryBuilder::<Any>::new(
                "INSERT INTO webhook_deliveries (seq, grp, kind, url, host, body, state, attempts, first_at, next_at) ",
            );
            q.push_values(chunk, |mut b, (row, p, url, host)| {
                b.push_bind(row.seq)
                    .push_bind(p.target.as_slice())
                    .push_bind(row.kind.as_str())
                    .push_bind(url.as_str())
                    .push_bind(host.as_str())
                    .push_bind(row.body.as_slice())
                    .push_bind(PENDING)
                    .push_bind(0i64)
                    .push_bind(now)
                    .push_bind(now);
            });
            q.build()
                .execute(&mut *self.tx)
                .await
                .ctx("plan webhook deliveries")?;
        }
        Ok(rows.len())
    }
}

impl Store {
    /// Due deliveries (at most `limit`), each the first still waiting in its
    /// group, except those in flight (`busy`) and those to hosts that have
    /// no attempt to spare (`full_hosts`).
    pub async fn webhooks_due(
        &self,
        now: i64,
        busy: &[i64],
        full_hosts: &[&str],
        limit: u32,
    ) -> Result<Vec<Delivery>, StoreError> {
        let mut q = QueryBuilder::<Any>::new(
            "SELECT id, seq, kind, url, host, body, attempts, first_at FROM webhook_deliveries d
             WHERE state = 0 AND next_at <= ",
        );
        q.push_bind(now);
        if !busy.is_empty() {
            q.push(" AND id NOT IN (");
            push_ids(&mut q, busy);
        }
        if !full_hosts.is_empty() {
            q.push(" AND host NOT IN (");
            push_list(&mut q, full_hosts.iter().copied());
        }
        q.push(
            " AND NOT EXISTS (SELECT 1 FROM webhook_deliveries e
                 WHERE e.grp = d.grp AND e.state = 0 AND e.id < d.id)
             ORDER BY next_at, id LIMIT ",
        );
        q.push_bind(i64::from(limit));
        let rows = q
            .build()
            .fetch_all(&self.pool)
            .await
            .ctx("read due webhooks")?;
        Ok(rows
            .iter()
            .map(|r| Delivery {
                id: r.get(0),
                seq: r.get(1),
                kind: r.get(2),
                url: r.get(3),
                host: r.get(4),
                body: r.get(5),
                attempts: r.get(6),
                first_at: r.get(7),
            })
            .collect())
    }

    /// Records attempts' results in one transaction.
    pub async fn record_attempts(&self, results: &[AttemptResult]) -> Result<(), StoreError> {
        if results.is_empty() {
            return Ok(());
        }
        let now = now_ms();
        let mut tx = self.begin().await?;
        let delivered: Vec<i64> = results
            .iter()
            .filter_map(|r| match r {
                AttemptResult::Delivered { id } => Some(*id),
                _ => None,
            })
            .collect();
        for chunk in delivered.chunks(ROWS_PER_STATEMENT) {
            let mut q = QueryBuilder::<Any>::new(
                "UPDATE webhook_deliveries SET state = 1, attempts = attempts + 1, last_error = NULL, done_at = ",
            );
            q.push_bind(now).push(" WHERE id IN (");
            push_ids(&mut q, chunk);
            q.build()
                .execute(&mut *tx.tx)
                .await
                .ctx("record webhooks delivered")?;
        }
        for r in results {
            match r {
                AttemptResult::Delivered { .. } => {}
                AttemptResult::Retry { id, next_at, error } => {
                    sqlx::query(
                        "UPDATE webhook_deliveries SET attempts = attempts + 1, next_at = ?, last_error = ?
                         WHERE id = ?",
                    )
                    .bind(*next_at)
                    .bind(error.as_str())
                    .bind(*id)
                    .execute(&mut *tx.tx)
                    .await
                    .ctx("record webhook retry")?;
                }
                AttemptResult::Dead { id, error } => {
                    sqlx::query(
                        "UPDATE webhook_deliveries SET state = 2, attempts = attempts + 1, last_error = ?, done_at = ?
                         WHERE id = ?",
                    )
                    .bind(error.as_str())
                    .bind(now)
                    .bind(*id)
                    .execute(&mut *tx.tx)
                    .await
                    .ctx("record webhook dead")?;
                    let grp: Vec<u8> =
                        sqlx::query_scalar("SELECT grp FROM webhook_deliveries WHERE id = ?")
                            .bind(*id)
                            .fetch_one(&mut *tx.tx)
                            .await
                            .ctx("read webhook group")?;
                    sqlx::query(
                        "UPDATE webhook_deliveries SET state = 2, last_error = ?, done_at = ?
                         WHERE grp = ? AND state = 0 AND id > ?",
                    )
                    .bind(format!(
                        "an earlier answer to the same request (delivery {id}) is dead"
                    ))
                    .bind(now)
                    .bind(grp)
                    .bind(*id)
                    .execute(&mut *tx.tx)
                    .await
                    .ctx("record webhook group dead")?;
                }
            }
        }
        tx.commit().await
    }

    /// Waiting and dead deliveries, for metrics and `/healthz`.
    pub async fn webhook_counts(&self) -> Result<(i64, i64), StoreError> {
        let count = |state: i64| {
            sqlx::query_scalar::<_, i64>("SELECT COUNT(*) FROM webhook_deliveries WHERE state = ?")
                .bind(state)
                .fetch_one(&self.pool)
        };
        let pending = count(PENDING).await.ctx("count webhooks")?;
        let dead = count(DEAD).await.ctx("count webhooks")?;
        Ok((pending, dead))
    }

    /// The dead list, oldest first.
    pub async fn dead_webhooks(&self, limit: u32) -> Result<Vec<DeadDelivery>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, seq, kind, url, attempts, last_error, done_at FROM webhook_deliveries
             WHERE state = 2 ORDER BY id LIMIT ?",
        )
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .ctx("read dead webhooks")?;
        Ok(rows
            .iter()
            .map(|r| DeadDelivery {
                id: r.get(0),
                seq: r.get(1),
                kind: r.get(2),
                url: r.get(3),
                attempts: r.get(4),
                error: r.get(5),
                dead_at: r.get(6),
            })
            .collect())
    }

    /// Puts dead deliveries (those of `ids`, or all) back in line with a
    /// fresh retry window; returns how many. The running daemon sends them
    /// within a second, in order per group.
    pub async fn replay_webhooks(&self, ids: Option<&[i64]>) -> Result<u64, StoreError> {
        let now = now_ms();
        let mut tx = self.begin().await?;
        let mut q = QueryBuilder::<Any>::new(
            "UPDATE webhook_deliveries SET state = 0, attempts = 0, last_error = NULL, done_at = NULL, first_at = ",
        );
        q.push_bind(now)
            .push(", next_at = ")
            .push_bind(now)
            .push(" WHERE state = 2");
        if let Some(ids) = ids {
            if ids.is_empty() {
                return Ok(0);
            }
            q.push(" AND id IN (");
            push_ids(&mut q, ids);
        }
        let n = q
            .build()
            .execute(&mut *tx.tx)
            .await
            .ctx("replay webhooks")?
            .rows_affected();
        tx.commit().await?;
        Ok(n)
    }

    /// Deletes deliveries that succeeded before `cutoff` (unix ms).
    pub async fn prune_webhooks(&self, cutoff: i64) -> Result<u64, StoreError> {
        sqlx::query("DELETE FROM webhook_deliveries WHERE state = 1 AND done_at < ?")
            .bind(cutoff)
            .execute(&self.pool)
            .await
            .ctx("prune webhooks")
            .map(|r| r.rows_affected())
            .map_err(Into::into)
    }
}
