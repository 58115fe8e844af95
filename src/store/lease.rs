//! The lease that makes one instance active among those sharing this store
//! (docs/architecture.md, "High availability"), and the fence every commit
//! of the active instance carries.
//!
//! One row, `lease`: who holds it, its `term` (one more at every new
//! holder) and when it expires, by the database's own clock, so that the
//! clocks of the instances' machines never matter. The holder renews it; a
//! standby takes it once it has expired. Once the daemon holds it,
//! [`Store::fence`] makes every [`StoreTx::commit`](super::StoreTx::commit)
//! check, inside the same transaction, that the lease still has this
//! holder and term: a commit after another instance took over fails with
//! [`StoreError::Fenced`] and changes nothing. On MySQL the check reads the
//! row with a shared lock, so a take-over waits for the commits that passed
//! it and every later commit sees the new term.

use super::{Ctx, Engine, Store, StoreError};
use sqlx::Row;
use std::time::Duration;

/// The lease as the store holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseRow {
    /// The instance holding it (empty: never taken, or released).
    pub holder: String,
    /// Its term: grows by one with every new holder.
    pub term: u64,
    /// Milliseconds until it expires (negative: expired), by the database's
    /// clock.
    pub expires_in_ms: i64,
}

/// What the active instance's commits carry: its holder id and term.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fence {
    /// This instance's id.
    pub holder: String,
    /// The term it holds.
    pub term: u64,
}

impl Engine {
    /// The database's clock in unix milliseconds, as an SQL expression.
    fn now_ms(self) -> &'static str {
        match self {
            Engine::Sqlite => "CAST((julianday('now') - 2440587.5) * 86400000.0 AS INTEGER)",
            Engine::MySql => "CAST(UNIX_TIMESTAMP(NOW(3)) * 1000 AS SIGNED)",
        }
    }
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

impl Store {
    /// The lease as it is now.
    pub async fn lease(&self) -> Result<LeaseRow, StoreError> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT holder, term, expires_at - {} FROM lease WHERE name = 'active'",
            self.engine.now_ms()
        )))
        .fetch_one(&self.pool)
        .await
        .ctx("read the lease")?;
        Ok(LeaseRow {
            holder: row.get(0),
            term: u64::try_from(row.get::<i64, _>(1)).unwrap_or_default(),
            expires_in_ms: row.get(2),
        })
    }

    /// Takes the lease for `holder` for `length` if it has expired (or was
    /// released), or whatever its state when `force` (the caller knows by
    /// other means that no other holder is alive: the SQLite store's lock
    /// file). Returns the new term, or `None` while another holder's lease
    /// runs.
    pub async fn take_lease(
        &self,
        holder: &str,
        length: Duration,
        force: bool,
    ) -> Result<Option<u64>, StoreError> {
        let now = self.engine.now_ms();
        let mut tx = self.pool.begin().await.ctx("begin taking the lease")?;
        let taken = sqlx::query(sqlx::AssertSqlSafe(format!(
            "UPDATE lease SET holder = ?, term = term + 1, expires_at = {now} + ?, renewed_at = {now}
             WHERE name = 'active' AND (? OR expires_at <= {now} OR holder = '')"
        )))
        .bind(holder)
        .bind(millis(length))
        .bind(force)
        .execute(&mut *tx)
        .await
        .ctx("take the lease")?
        .rows_affected();
        if taken == 0 {
            tx.rollback().await.ctx("give up taking the lease")?;
            return Ok(None);
        }
        let term: i64 = sqlx::query_scalar("SELECT term FROM lease WHERE name = 'active'")
            .fetch_one(&mut *tx)
            .await
            .ctx("read the new term")?;
        tx.commit().await.ctx("take the lease")?;
        Ok(Some(u64::try_from(term).unwrap_or_default()))
    }

    /// Renews the lease of `fence` for `length` from now; `false` if another
    /// instance holds it now (this one was deposed).
    pub async fn renew_lease(&self, fence: &Fence, length: Duration) -> Result<bool, StoreError> {
        let now = self.engine.now_ms();
        let done = sqlx::query(sqlx::AssertSqlSafe(format!(
            "UPDATE lease SET expires_at = {now} + ?, renewed_at = {now}
             WHERE name = 'active' AND holder = ? AND term = ?"
        )))
        .bind(millis(length))
        .bind(&fence.holder)
        .bind(fence.term as i64)
        .execute(&self.pool)
        .await
        .ctx("renew the lease")?;
        Ok(done.rows_affected() == 1)
    }

    /// Gives the lease up at once (a clean stop), so that a standby need
    /// not wait for it to expire. Nothing happens if another holds it.
    pub async fn release_lease(&self, fence: &Fence) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE lease SET holder = '', expires_at = 0 WHERE name = 'active' AND holder = ? AND term = ?",
        )
        .bind(&fence.holder)
        .bind(fence.term as i64)
        .execute(&self.pool)
        .await
        .ctx("release the lease")?;
        Ok(())
    }

    /// From now on every commit through this store (and its clones) checks
    /// `fence` in its transaction. Set once, when the daemon becomes active;
    /// a later call is ignored.
    pub fn fence(&self, fence: Fence) {
        let _ = self.fence.set(fence);
    }

    /// The fence commits check, if one is set.
    pub fn fenced_by(&self) -> Option<&Fence> {
        self.fence.get()
    }
}

impl super::StoreTx {
    /// Checks, as the transaction's last statement, that `fence` still holds
    /// the lease; on MySQL with a shared lock held to the commit.
    pub(super) async fn check_fence(&mut self, fence: &Fence) -> Result<(), StoreError> {
        let sql = match self.engine {
            Engine::Sqlite => {
                "SELECT COUNT(*) FROM lease WHERE name = 'active' AND holder = ? AND term = ?"
            }
            Engine::MySql => {
                "SELECT COUNT(*) FROM lease WHERE name = 'active' AND holder = ? AND term = ?
                 LOCK IN SHARE MODE"
            }
        };
        let held: i64 = sqlx::query_scalar(sql)
            .bind(&fence.holder)
            .bind(fence.term as i64)
            .fetch_one(&mut *self.tx)
            .await
            .ctx("check the lease")?;
        if held == 1 {
            Ok(())
        } else {
            Err(StoreError::Fenced {
                holder: fence.holder.clone(),
                term: fence.term,
            })
        }
    }
}
