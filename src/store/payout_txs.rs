//! Signed payout transactions: what is (re)broadcast, byte for byte. Every
//! transaction signed for a payout stays known (a replacement with higher
//! fees, or the zero-value transfer that cancels it), and whichever is mined
//! is the payout's. The schema is `migrations/store/sqlite/0002_payouts.sql` and
//! `0007_money_safety.sql`.

use super::payouts::{COLUMNS, payout};
use super::{
    Ctx, Engine, Payout, ROWS_PER_STATEMENT, Store, StoreError, StoreTx, b256, now_ms, push_ids,
};
use alloy::primitives::{Address, B256};
use sqlx::{Any, QueryBuilder, Row};

/// A signed transaction of a payout, as stored for (re)broadcast.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedTx {
    /// The payout.
    pub payout_id: i64,
    /// Transaction hash.
    pub tx_hash: B256,
    /// EIP-2718 bytes.
    pub raw: Vec<u8>,
    /// Gas limit.
    pub gas_limit: u64,
    /// Max fee per gas, wei.
    pub max_fee_per_gas: u128,
    /// Priority fee per gas, wei.
    pub priority_fee: u128,
    /// When it was signed, unix milliseconds.
    pub signed_at: i64,
    /// The zero-value transfer to the wallet itself that takes the payout's
    /// nonce to cancel it, not the payout's own transfer.
    pub cancels: bool,
}

impl StoreTx {
    /// Records the signed transactions of queued payouts of `payer` (each
    /// with its nonce), in few statements; returns the ids of the payouts
    /// that were no longer queued (cancelled meanwhile), for which nothing
    /// is recorded.
    pub async fn mark_signed_many(
        &mut self,
        payer: Address,
        signed: &[(u64, &SignedTx)],
    ) -> Result<Vec<i64>, StoreError> {
        let now = now_ms();
        let mut taken = std::collections::HashSet::with_capacity(signed.len());
        for chunk in signed.chunks(ROWS_PER_STATEMENT) {
            match self.engine {
                // One statement per chunk (below): an update joined to the
                // chunk's values, giving back the payouts it took.
                Engine::Sqlite => {}
                Engine::MySql => {
                    taken.extend(self.mark_signed_mysql(payer, chunk, now).await?);
                    continue;
                }
            }
            let mut q = QueryBuilder::<Any>::new("WITH v(id, nonce, hash) AS (");
            q.push_values(chunk, |mut b, (nonce, tx)| {
                b.push_bind(tx.payout_id)
                    .push_bind(*nonce as i64)
                    .push_bind(tx.tx_hash.as_slice());
            });
            q.push(") UPDATE payouts SET state = 'signed', payer = ")
                .push_bind(payer.as_slice())
                .push(", nonce = v.nonce, tx_hash = v.hash, updated_at = ")
                .push_bind(now)
                .push(" FROM v WHERE payouts.id = v.id AND payouts.state = 'queued' RETURNING payouts.id");
            let ids: Vec<i64> = q
                .build_query_scalar()
                .fetch_all(&mut *self.tx)
                .await
                .ctx("mark payouts signed")?;
            taken.extend(ids);
        }
        let stored: Vec<&SignedTx> = signed
            .iter()
            .filter(|(_, t)| taken.contains(&t.payout_id))
            .map(|(_, t)| *t)
            .collect();
        self.insert_txs(&stored).await?;
        Ok(signed
            .iter()
            .map(|(_, t)| t.payout_id)
            .filter(|id| !taken.contains(id))
            .collect())
    }

    /// [`StoreTx::mark_signed_many`] for one chunk on MySQL, which has
    /// neither `UPDATE … FROM` nor `RETURNING`: the queued payouts of the
    /// chunk are locked and read, then updated with one `CASE` per column.
    async fn mark_signed_mysql(
        &mut self,
        payer: Address,
        chunk: &[(u64, &SignedTx)],
        now: i64,
    ) -> Result<Vec<i64>, StoreError> {
        let ids: Vec<i64> = chunk.iter().map(|(_, t)| t.payout_id).collect();
        let mut q =
            QueryBuilder::<Any>::new("SELECT id FROM payouts WHERE state = 'queued' AND id IN (");
        push_ids(&mut q, &ids);
        q.push(" FOR UPDATE");
        let queued: std::collections::HashSet<i64> = q
            .build_query_scalar()
            .fetch_all(&mut *self.tx)
            .await
            .ctx("mark payouts signed")?
            .into_iter()
            .collect();
        let mine: Vec<&(u64, &SignedTx)> = chunk
            .iter()
            .filter(|(_, t)| queued.contains(&t.payout_id))
            .collect();
        if mine.is_empty() {
            return Ok(Vec::new());
        }
        let mut q = QueryBuilder::<Any>::new("UPDATE payouts SET state = 'signed', payer = ");
        q.push_bind(payer.as_slice()).push(", nonce = CASE id");
        for (nonce, t) in &mine {
            q.push(" WHEN ")
                .push_bind(t.payout_id)
                .push(" THEN ")
                .push_bind(*nonce as i64);
        }
        q.push(" END, tx_hash = CASE id");
        for (_, t) in &mine {
            q.push(" WHEN ")
                .push_bind(t.payout_id)
                .push(" THEN ")
                .push_bind(t.tx_hash.as_slice());
        }
        q.push(" END, updated_at = ")
            .push_bind(now)
            .push(" WHERE id IN (");
        let ids: Vec<i64> = mine.iter().map(|(_, t)| t.payout_id).collect();
        push_ids(&mut q, &ids);
        q.build()
            .execute(&mut *self.tx)
            .await
            .ctx("mark payouts signed")?;
        Ok(ids)
    }

    /// Stores signed transactions, many rows per statement.
    async fn insert_txs(&mut self, txs: &[&SignedTx]) -> Result<(), StoreError> {
        for chunk in txs.chunks(ROWS_PER_STATEMENT) {
            let mut q = QueryBuilder::<Any>::new(
                "INSERT INTO payout_txs (tx_hash, payout_id, raw, gas_limit, max_fee_per_gas, priority_fee,
                    created_at, cancels) ",
            );
            q.push_values(chunk, |mut b, tx| {
                b.push_bind(tx.tx_hash.as_slice())
                    .push_bind(tx.payout_id)
                    .push_bind(&tx.raw)
                    .push_bind(tx.gas_limit as i64)
                    .push_bind(tx.max_fee_per_gas.to_string())
                    .push_bind(tx.priority_fee.to_string())
                    .push_bind(tx.signed_at)
                    .push_bind(i64::from(tx.cancels));
            });
            q.build()
                .execute(&mut *self.tx)
                .await
                .ctx("insert payout txs")?;
        }
        Ok(())
    }

    /// Records `new`, signed with the same nonce as `old` and higher fees, as
    /// the payout's current transaction; `false` if the payout moved on (mined,
    /// or already replaced). Every transaction stays known: whichever is mined
    /// is the payout's.
    pub async fn replace_tx(&mut self, old: B256, new: &SignedTx) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE payouts SET tx_hash = ?, updated_at = ?
             WHERE id = ? AND tx_hash = ? AND state IN ('signed', 'sent')",
        )
        .bind(new.tx_hash.as_slice())
        .bind(now_ms())
        .bind(new.payout_id)
        .bind(old.as_slice())
        .execute(&mut *self.tx)
        .await
        .ctx("replace payout tx")?;
        if done.rows_affected() == 0 {
            return Ok(false);
        }
        self.insert_txs(&[new]).await?;
        Ok(true)
    }

    /// Every transaction hash signed for payout `id`.
    pub async fn payout_tx_hashes(&mut self, id: i64) -> Result<Vec<B256>, StoreError> {
        let rows: Vec<Vec<u8>> = sqlx::query_scalar(
            "SELECT tx_hash FROM payout_txs WHERE payout_id = ? ORDER BY created_at",
        )
        .bind(id)
        .fetch_all(&mut *self.tx)
        .await
        .ctx("read payout txs")?;
        rows.iter().map(|h| b256(h, "payout_txs.tx_hash")).collect()
    }

    /// The payout a signed transaction belongs to, and whether it is the
    /// transfer that cancels it; `None` for a transaction not ours.
    pub async fn signed_tx_of(&mut self, tx_hash: B256) -> Result<Option<(i64, bool)>, StoreError> {
        Ok(self.signed_txs_of(&[tx_hash]).await?.remove(&tx_hash))
    }

    /// The node refused the current transactions of these payouts (id,
    /// what it said): the first refusal's time is kept, the reason updated.
    pub async fn record_refusals(&mut self, refused: &[(i64, String)]) -> Result<(), StoreError> {
        let now = now_ms();
        for (id, reason) in refused {
            sqlx::query(
                "UPDATE payouts SET refused_at = COALESCE(refused_at, ?), refusal = ?
                 WHERE id = ? AND state IN ('signed', 'sent')",
            )
            .bind(now)
            .bind(reason)
            .bind(id)
            .execute(&mut *self.tx)
            .await
            .ctx("record refusal")?;
        }
        Ok(())
    }

    /// The node took the current transactions of payouts `ids`: they are
    /// sent, and no longer refused.
    pub async fn accepted(&mut self, ids: &[i64]) -> Result<(), StoreError> {
        let now = now_ms();
        for chunk in ids.chunks(ROWS_PER_STATEMENT * 4) {
            let mut q = QueryBuilder::<Any>::new(
                "UPDATE payouts SET updated_at = CASE WHEN state = 'signed' OR refused_at IS NOT NULL THEN ",
            );
            // A transaction the node already holds, sent again, changes
            // nothing: `updated_at` is when it was first taken, so that one
            // stranded in the pool is seen as stuck (and replaced) however
            // often it is rebroadcast. `updated_at` comes first: MySQL
            // evaluates assignments in order, on the values assigned before.
            q.push_bind(now).push(
                " ELSE updated_at END,
                    state = CASE WHEN state = 'signed' THEN 'sent' ELSE state END,
                    refused_at = NULL, refusal = NULL
                 WHERE state IN ('signed', 'sent') AND id IN (",
            );
            push_ids(&mut q, chunk);
            q.build()
                .execute(&mut *self.tx)
                .await
                .ctx("mark payouts sent")?;
        }
        Ok(())
    }

    /// Marks payouts `ids` announced (their `status=2` naming their current
    /// transaction); returns those that were not yet, in id order.
    pub async fn take_announcements(&mut self, ids: &[i64]) -> Result<Vec<Payout>, StoreError> {
        let mut out = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(ROWS_PER_STATEMENT * 4) {
            match self.engine {
                // An update giving back the rows it changed.
                Engine::Sqlite => {
                    let mut q = QueryBuilder::<Any>::new(
                        "UPDATE payouts SET announced = 1, announced_tx = tx_hash WHERE announced = 0 AND id IN (",
                    );
                    push_ids(&mut q, chunk);
                    q.push(" RETURNING ").push(COLUMNS);
                    let rows = q
                        .build()
                        .fetch_all(&mut *self.tx)
                        .await
                        .ctx("announce payouts")?;
                    for r in &rows {
                        out.push(payout(r)?);
                    }
                }
                // The rows not yet announced are locked and read, then
                // updated; what is read is set as the update sets it.
                Engine::MySql => {
                    let mut q = QueryBuilder::<Any>::new("SELECT ");
                    q.push(COLUMNS)
                        .push(" FROM payouts WHERE announced = 0 AND id IN (");
                    push_ids(&mut q, chunk);
                    q.push(" FOR UPDATE");
                    let rows = q
                        .build()
                        .fetch_all(&mut *self.tx)
                        .await
                        .ctx("announce payouts")?;
                    let mut ids = Vec::with_capacity(rows.len());
                    for r in &rows {
                        let mut p = payout(r)?;
                        p.announced = true;
                        p.announced_tx = p.tx_hash;
                        ids.push(p.id);
                        out.push(p);
                    }
                    if !ids.is_empty() {
                        let mut q = QueryBuilder::<Any>::new(
                            "UPDATE payouts SET announced = 1, announced_tx = tx_hash WHERE id IN (",
                        );
                        push_ids(&mut q, &ids);
                        q.build()
                            .execute(&mut *self.tx)
                            .await
                            .ctx("announce payouts")?;
                    }
                }
            }
        }
        out.sort_by_key(|p| p.id);
        Ok(out)
    }

    /// Asks for payout `id` to be cancelled by giving its nonce to a
    /// zero-value transfer; `false` if it is no longer signed or sent.
    pub async fn request_cancel(&mut self, id: i64) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE payouts SET cancel_requested = 1, updated_at = ?
             WHERE id = ? AND state IN ('signed', 'sent')",
        )
        .bind(now_ms())
        .bind(id)
        .execute(&mut *self.tx)
        .await
        .ctx("request cancel")?;
        Ok(done.rows_affected() == 1)
    }
}

impl Store {
    /// The current transactions of payouts signed or sent but not mined, in
    /// nonce order per payer: what is (re)broadcast.
    pub async fn unmined_txs(&self, chain: &str) -> Result<Vec<(Payout, SignedTx)>, StoreError> {
        let sql = format!(
            "SELECT {COLUMNS} FROM payouts WHERE chain = ? AND state IN ('signed', 'sent') ORDER BY payer, nonce"
        );
        // Both reads in one (deferred, read-only) transaction: one snapshot. Read
        // apart, a payout mined between them has a row in the first read and
        // none in the second, which looked like a missing transaction.
        let mut snapshot = self.pool.begin().await.ctx("begin read")?;
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(chain)
            .fetch_all(&mut *snapshot)
            .await
            .ctx("read unmined payouts")?;
        let payouts = rows.iter().map(payout).collect::<Result<Vec<_>, _>>()?;
        let txs = sqlx::query(
            "SELECT t.tx_hash, t.raw, t.gas_limit, t.max_fee_per_gas, t.priority_fee, t.created_at, t.cancels
             FROM payout_txs t
             JOIN payouts p ON p.tx_hash = t.tx_hash WHERE p.chain = ? AND p.state IN ('signed', 'sent')",
        )
        .bind(chain)
        .fetch_all(&mut *snapshot)
        .await
        .ctx("read unmined payout txs")?;
        snapshot.rollback().await.ctx("end read")?;
        let mut by_hash = std::collections::HashMap::with_capacity(txs.len());
        for r in &txs {
            let fee = |i: usize, what| {
                r.get::<&str, _>(i)
                    .parse::<u128>()
                    .map_err(|_| StoreError::Corrupt { what })
            };
            let hash = b256(r.get::<&[u8], _>(0), "payout_txs.tx_hash")?;
            let raw: Vec<u8> = r.get(1);
            let limits = (
                r.get::<i64, _>(2) as u64,
                fee(3, "payout_txs.max_fee_per_gas")?,
                fee(4, "payout_txs.priority_fee")?,
                r.get::<i64, _>(5),
                r.get::<i64, _>(6) != 0,
            );
            by_hash.insert(hash, (raw, limits));
        }
        payouts
            .into_iter()
            .map(|p| {
                let hash = p.tx_hash.ok_or(StoreError::Corrupt {
                    what: "payouts.tx_hash",
                })?;
                let (raw, (gas_limit, max_fee_per_gas, priority_fee, signed_at, cancels)) = by_hash
                    .remove(&hash)
                    .ok_or(StoreError::Corrupt { what: "payout_txs" })?;
                let tx = SignedTx {
                    payout_id: p.id,
                    tx_hash: hash,
                    raw,
                    gas_limit,
                    max_fee_per_gas,
                    priority_fee,
                    signed_at,
                    cancels,
                };
                Ok((p, tx))
            })
            .collect()
    }

    /// Payouts of `chain` whose cancel was asked for and whose current
    /// transaction is still their own transfer: the cancelling transfer is
    /// to be signed.
    pub async fn cancels_to_sign(
        &self,
        chain: &str,
    ) -> Result<Vec<(Payout, SignedTx)>, StoreError> {
        let from = self
            .engine
            .indexed("payouts p", "payouts_cancel", "payouts_cancel");
        let ids: Vec<i64> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT p.id FROM {from} JOIN payout_txs t ON t.tx_hash = p.tx_hash
             WHERE p.chain = ? AND p.cancel_requested = 1 AND p.state IN ('signed', 'sent') AND t.cancels = 0"
        )))
        .bind(chain)
        .fetch_all(&self.pool)
        .await
        .ctx("read cancels to sign")?;
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        Ok(self
            .unmined_txs(chain)
            .await?
            .into_iter()
            .filter(|(p, _)| ids.contains(&p.id))
            .collect())
    }

    /// Payouts of `payer` holding a nonce and not yet decided: their amounts and
    /// gas are reserved from the wallet's balance until they are mined.
    pub async fn in_flight(
        &self,
        chain: &str,
        payer: Address,
    ) -> Result<Vec<(Payout, SignedTx)>, StoreError> {
        Ok(self
            .unmined_txs(chain)
            .await?
            .into_iter()
            .filter(|(p, _)| p.payer == Some(payer))
            .collect())
    }
}
