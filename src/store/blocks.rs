//! The chain as listen last applied it: a window of recent blocks (the
//! highest is the block cursor), and the small settings kept between runs.
//!
//! A block below the window was verified when it was applied and is deeper
//! than any reorganisation the daemon can still see: it counts as canonical
//! ([`StoreTx::is_canonical`]). So a deposit or payout whose block left the
//! window before it was decided (`confirm_height` lowered between runs, or a
//! deposit found by a lookback) is decided on the chain, not on what the
//! window happens to hold.

use super::{BlockRef, Ctx, Store, StoreError, StoreTx, b256};
use alloy::primitives::B256;
use sqlx::Row;

impl Store {
    /// The most recent `limit` verified blocks of `chain`, highest first; the
    /// first is the block cursor.
    pub async fn recent_blocks(
        &self,
        chain: &str,
        limit: u32,
    ) -> Result<Vec<BlockRef>, StoreError> {
        let rows = sqlx::query(
            "SELECT number, hash, parent_hash FROM chain_blocks
             WHERE chain = ? ORDER BY number DESC LIMIT ?",
        )
        .bind(chain)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .ctx("load recent blocks")?;
        rows.iter()
            .map(|r| {
                Ok(BlockRef {
                    number: r.get::<i64, _>(0) as u64,
                    hash: b256(r.get::<&[u8], _>(1), "chain_blocks.hash")?,
                    parent_hash: b256(r.get::<&[u8], _>(2), "chain_blocks.parent_hash")?,
                })
            })
            .collect()
    }
}

impl StoreTx {
    /// Appends a verified block (the new cursor) and forgets blocks older than
    /// `keep` below it.
    pub async fn push_block(
        &mut self,
        chain: &str,
        b: &BlockRef,
        keep: u64,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "REPLACE INTO chain_blocks (chain, number, hash, parent_hash) VALUES (?, ?, ?, ?)",
        )
        .bind(chain)
        .bind(b.number as i64)
        .bind(b.hash.as_slice())
        .bind(b.parent_hash.as_slice())
        .execute(&mut *self.tx)
        .await
        .ctx("insert block")?;
        if b.number > keep {
            sqlx::query("DELETE FROM chain_blocks WHERE chain = ? AND number < ?")
                .bind(chain)
                .bind((b.number - keep) as i64)
                .execute(&mut *self.tx)
                .await
                .ctx("prune blocks")?;
        }
        Ok(())
    }

    /// Forgets every block above `number` (a reorganisation's fork point).
    pub async fn drop_blocks_above(&mut self, chain: &str, number: u64) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM chain_blocks WHERE chain = ? AND number > ?")
            .bind(chain)
            .bind(number as i64)
            .execute(&mut *self.tx)
            .await
            .ctx("drop blocks")?;
        Ok(())
    }

    /// The stored hash of block `number`, if it is in the window.
    pub async fn block_hash(
        &mut self,
        chain: &str,
        number: u64,
    ) -> Result<Option<B256>, StoreError> {
        let row: Option<Vec<u8>> =
            sqlx::query_scalar("SELECT hash FROM chain_blocks WHERE chain = ? AND number = ?")
                .bind(chain)
                .bind(number as i64)
                .fetch_optional(&mut *self.tx)
                .await
                .ctx("read block hash")?;
        row.map(|h| b256(&h, "chain_blocks.hash")).transpose()
    }

    /// Whether block `number` with `hash` is on the chain as applied: the
    /// window's block at that height has that hash, or the height is below
    /// the window (verified when applied, deeper than any reorganisation the
    /// daemon can see).
    pub async fn is_canonical(
        &mut self,
        chain: &str,
        number: u64,
        hash: B256,
    ) -> Result<bool, StoreError> {
        if let Some(stored) = self.block_hash(chain, number).await? {
            return Ok(stored == hash);
        }
        let lowest: Option<i64> =
            sqlx::query_scalar("SELECT MIN(number) FROM chain_blocks WHERE chain = ?")
                .bind(chain)
                .fetch_one(&mut *self.tx)
                .await
                .ctx("read lowest block")?;
        Ok(lowest.is_some_and(|l| (number as i64) < l))
    }

    /// A setting kept between runs.
    pub async fn meta(&mut self, key: &str) -> Result<Option<String>, StoreError> {
        sqlx::query_scalar("SELECT value FROM meta WHERE `key` = ?")
            .bind(key)
            .fetch_optional(&mut *self.tx)
            .await
            .ctx("read meta")
            .map_err(Into::into)
    }

    /// Sets a setting kept between runs.
    pub async fn set_meta(&mut self, key: &str, value: &str) -> Result<(), StoreError> {
        sqlx::query("REPLACE INTO meta (`key`, value) VALUES (?, ?)")
            .bind(key)
            .bind(value)
            .execute(&mut *self.tx)
            .await
            .ctx("write meta")?;
        Ok(())
    }

    /// Sets the due height of every undecided deposit and mined payout of
    /// `chain` to its block plus `confirm_height` (after the setting
    /// changed); returns how many of each.
    pub async fn recompute_dues(
        &mut self,
        chain: &str,
        confirm_height: u64,
    ) -> Result<(u64, u64), StoreError> {
        let deposits = sqlx::query(
            "UPDATE deposits SET due = block_number + ? WHERE chain = ? AND state IN (0, 3)",
        )
        .bind(confirm_height as i64)
        .bind(chain)
        .execute(&mut *self.tx)
        .await
        .ctx("recompute deposit due heights")?;
        let payouts = sqlx::query(
            "UPDATE payouts SET due = block_number + ? WHERE chain = ? AND state = 'mined'",
        )
        .bind(confirm_height as i64)
        .bind(chain)
        .execute(&mut *self.tx)
        .await
        .ctx("recompute payout due heights")?;
        Ok((deposits.rows_affected(), payouts.rows_affected()))
    }
}
