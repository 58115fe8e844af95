//! The ledger outbox: final movements written in the transaction that
//! decides them, waiting to be applied to the wallet store's ledger (exactly
//! once there).

use super::{Ctx, Store, StoreError, StoreTx, address, b256, now_ms};
use alloy::primitives::I256;
use sqlx::Row;

/// A movement waiting for the wallet store's ledger.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingMovement {
    /// Row id in `ledger_outbox`.
    pub id: i64,
    /// The movement.
    pub entry: crate::wallet::LedgerEntry,
}

impl StoreTx {
    /// Queues movements for the wallet store's ledger.
    pub async fn push_ledger(
        &mut self,
        entries: &[crate::wallet::LedgerEntry],
    ) -> Result<(), StoreError> {
        let now = now_ms();
        for e in entries {
            sqlx::query(
                "INSERT INTO ledger_outbox (chain, symbol, address, delta, kind, tx_hash, log_index, block_number, created_at)
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            )
            .bind(&e.chain)
            .bind(&e.symbol)
            .bind(e.address.as_slice())
            .bind(e.delta.to_string())
            .bind(e.kind.as_str())
            .bind(e.tx_hash.as_slice())
            .bind(e.log_index)
            .bind(e.block as i64)
            .bind(now)
            .execute(&mut *self.tx)
            .await
            .ctx("insert ledger outbox")?;
        }
        Ok(())
    }
}

impl Store {
    /// Movements not yet applied to the wallet store, oldest first.
    pub async fn pending_ledger(&self, limit: u32) -> Result<Vec<PendingMovement>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, chain, symbol, address, delta, kind, tx_hash, log_index, block_number
             FROM ledger_outbox WHERE applied_at IS NULL ORDER BY id LIMIT ?",
        )
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .ctx("read ledger outbox")?;
        rows.iter()
            .map(|r| {
                let kind = match r.get::<&str, _>(5) {
                    "deposit" => crate::wallet::Movement::Deposit,
                    "payout" => crate::wallet::Movement::Payout,
                    "fee" => crate::wallet::Movement::Fee,
                    _ => {
                        return Err(StoreError::Corrupt {
                            what: "ledger_outbox.kind",
                        });
                    }
                };
                Ok(PendingMovement {
                    id: r.get(0),
                    entry: crate::wallet::LedgerEntry {
                        chain: r.get(1),
                        symbol: r.get(2),
                        address: address(r.get::<&[u8], _>(3), "ledger_outbox.address")?,
                        delta: I256::from_dec_str(r.get::<&str, _>(4)).map_err(|_| {
                            StoreError::Corrupt {
                                what: "ledger_outbox.delta",
                            }
                        })?,
                        kind,
                        tx_hash: b256(r.get::<&[u8], _>(6), "ledger_outbox.tx_hash")?,
                        log_index: r.get(7),
                        block: r.get::<i64, _>(8) as u64,
                    },
                })
            })
            .collect()
    }

    /// Marks ledger movements applied.
    pub async fn mark_ledger_applied(&self, ids: &[i64]) -> Result<(), StoreError> {
        let mut tx = self.begin().await?;
        let now = now_ms();
        for id in ids {
            sqlx::query("UPDATE ledger_outbox SET applied_at = ? WHERE id = ?")
                .bind(now)
                .bind(id)
                .execute(&mut *tx.tx)
                .await
                .ctx("mark ledger applied")?;
        }
        tx.commit().await
    }
}
