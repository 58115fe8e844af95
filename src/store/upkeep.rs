//! Upkeep: pruning old requests and sent responses, and the state counts
//! the metrics show.

use super::{Ctx, Store, StoreError};

impl Store {
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

    /// Payouts of `chains` and deposits counted by state, for metrics. Cheap
    /// at any size: every state but `confirmed` is counted through an index
    /// that holds only its rows (pending work and failures are few), and
    /// `confirmed` is the rest of `MAX(id)`, since rows are never deleted.
    /// States with no rows may be absent.
    pub async fn state_counts(
        &self,
        chains: &[String],
    ) -> Result<(Vec<(String, i64)>, Vec<(String, i64)>), StoreError> {
        let e = self.engine;
        let by_state = e.indexed("payouts", "payouts_state", "payouts_state");
        let pending = e.indexed("deposits", "deposits_due", "deposits_state");
        let failed = e.indexed("deposits", "deposits_failed", "deposits_state");
        let mut payouts: Vec<(String, i64)> = Vec::new();
        for chain in chains {
            let rows: Vec<(String, i64)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
                "SELECT state, COUNT(*) FROM {by_state}
                 WHERE chain = ? AND state IN ('queued', 'claimed', 'signed', 'sent', 'mined',
                                               'failed', 'refused', 'cancelled')
                 GROUP BY state"
            )))
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

        let mut counts: Vec<(i64, i64)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT state, COUNT(*) FROM {pending} WHERE state IN (0, 3) GROUP BY state"
        )))
        .fetch_all(&self.pool)
        .await
        .ctx("count deposits")?;
        let failed: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT COUNT(*) FROM {failed} WHERE state = 2"
        )))
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
}
