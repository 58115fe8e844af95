//! Read-only views for tools, tests and benchmarks: they look at the store
//! while the daemon runs and change nothing. The daemon itself uses none of
//! them.

use super::{Ctx, Store, StoreError};

impl Store {
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
        .map_err(Into::into)
    }

    /// How many requests the inbox recorded at `at` (unix milliseconds, one
    /// commit's time): for benchmarks.
    pub async fn inbox_received_at(&self, at: i64) -> Result<i64, StoreError> {
        sqlx::query_scalar("SELECT COUNT(*) FROM inbox WHERE received_at = ?")
            .bind(at)
            .fetch_one(&self.pool)
            .await
            .ctx("count requests of a commit")
            .map_err(Into::into)
    }

    /// Bodies of the outbox rows of `kind` (`topup_resp`, …), sent or not,
    /// oldest first: for tools and tests.
    pub async fn outbox_bodies(&self, kind: &str) -> Result<Vec<Vec<u8>>, StoreError> {
        sqlx::query_scalar("SELECT body FROM outbox WHERE kind = ? ORDER BY id")
            .bind(kind)
            .fetch_all(&self.pool)
            .await
            .ctx("read outbox bodies")
            .map_err(Into::into)
    }
}
