//! Read-only views for tools, tests and benchmarks: they look at the store
//! while the daemon runs and change nothing. The daemon itself uses none of
//! them.

use super::{Ctx, Store, StoreError};
use sqlx::sqlite::{SqliteConnectOptions, SqlitePoolOptions};
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

impl Store {
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

    /// Bodies of the outbox rows of `kind` (`topup_resp`, …), sent or not,
    /// oldest first: for tools and tests.
    pub async fn outbox_bodies(&self, kind: &str) -> Result<Vec<Vec<u8>>, StoreError> {
        sqlx::query_scalar("SELECT body FROM outbox WHERE kind = ? ORDER BY id")
            .bind(kind)
            .fetch_all(&self.pool)
            .await
            .ctx("read outbox bodies")
    }
}
