//! Payouts found mined in a block: the block's transactions from our hot
//! wallets are matched to their payouts and recorded a few hundred per
//! statement, not three statements each (a round trip each on MySQL, where
//! a block of 600 payouts held listen for a third of a second).

use super::payouts::{COLUMNS, payout};
use super::{Ctx, ROWS_PER_STATEMENT, StoreError, StoreTx, b256, now_ms, push_ids, push_list};
use crate::store::{Mined, Payout};
use alloy::primitives::{Address, B256};
use sqlx::{Any, QueryBuilder, Row};
use std::collections::{BTreeMap, HashMap};

impl StoreTx {
    /// The signed or sent payouts of `chain` with these (payer, nonce): what
    /// a block's transactions from our wallets may have mined.
    pub async fn payouts_by_nonces(
        &mut self,
        chain: &str,
        nonces: &[(Address, u64)],
    ) -> Result<Vec<Payout>, StoreError> {
        let mut by_payer: BTreeMap<Address, Vec<i64>> = BTreeMap::new();
        for (payer, nonce) in nonces {
            by_payer.entry(*payer).or_default().push(*nonce as i64);
        }
        let mut found = Vec::new();
        for (payer, nonces) in by_payer {
            for chunk in nonces.chunks(ROWS_PER_STATEMENT * 4) {
                let mut q = QueryBuilder::<Any>::new(format!(
                    "SELECT {COLUMNS} FROM payouts WHERE chain = "
                ));
                q.push_bind(chain)
                    .push(" AND payer = ")
                    .push_bind(payer.as_slice())
                    .push(" AND state IN ('signed', 'sent') AND nonce IN (");
                push_ids(&mut q, chunk);
                let rows = q
                    .build()
                    .fetch_all(&mut *self.tx)
                    .await
                    .ctx("find payouts by nonce")?;
                for r in &rows {
                    found.push(payout(r)?);
                }
            }
        }
        Ok(found)
    }

    /// Which of these transactions we signed: payout id, and whether it is
    /// the transfer that cancels that payout.
    pub async fn signed_txs_of(
        &mut self,
        hashes: &[B256],
    ) -> Result<HashMap<B256, (i64, bool)>, StoreError> {
        let mut found = HashMap::with_capacity(hashes.len());
        for chunk in hashes.chunks(ROWS_PER_STATEMENT * 4) {
            let mut q = QueryBuilder::<Any>::new(
                "SELECT tx_hash, payout_id, cancels FROM payout_txs WHERE tx_hash IN (",
            );
            push_list(&mut q, chunk.iter().map(|h| h.as_slice()));
            for r in q
                .build()
                .fetch_all(&mut *self.tx)
                .await
                .ctx("find payout txs")?
            {
                let hash = b256(r.get::<&[u8], _>(0), "payout_txs.tx_hash")?;
                found.insert(hash, (r.get::<i64, _>(1), r.get::<i64, _>(2) != 0));
            }
        }
        Ok(found)
    }

    /// Records that these payouts' nonces were mined, each as its [`Mined`]
    /// says: one statement per few hundred that share everything but their
    /// transaction and fee (a block's payouts usually do).
    pub async fn mark_payouts_mined(&mut self, mined: &[(i64, Mined)]) -> Result<(), StoreError> {
        let now = now_ms();
        // Grouped by what the rows share; each group in the order met.
        let mut groups: Vec<(&Mined, Vec<(i64, &Mined)>)> = Vec::new();
        for (id, m) in mined {
            match groups.iter_mut().find(|(g, _)| shared(g) == shared(m)) {
                Some((_, rows)) => rows.push((*id, m)),
                None => groups.push((m, vec![(*id, m)])),
            }
        }
        for (g, rows) in &groups {
            for chunk in rows.chunks(ROWS_PER_STATEMENT) {
                let mut q = QueryBuilder::<Any>::new(
                    "UPDATE payouts SET state = 'mined', tx_hash = CASE id",
                );
                for (id, m) in chunk {
                    q.push(" WHEN ")
                        .push_bind(*id)
                        .push(" THEN ")
                        .push_bind(m.tx_hash.as_slice());
                }
                q.push(" END, fee = CASE id");
                for (id, m) in chunk {
                    q.push(" WHEN ")
                        .push_bind(*id)
                        .push(" THEN ")
                        .push_bind(m.fee.to_string());
                }
                q.push(" END, block_number = ")
                    .push_bind(g.block.0 as i64)
                    .push(", block_hash = ")
                    .push_bind(g.block.1.as_slice())
                    .push(", due = ")
                    .push_bind(g.due as i64)
                    .push(", success = ")
                    .push_bind(i64::from(g.success))
                    .push(", displaced = ")
                    .push_bind(i64::from(g.displaced))
                    .push(", cancel_mined = ")
                    .push_bind(i64::from(g.cancel_mined))
                    .push(", error = ")
                    .push_bind(g.note.as_deref())
                    .push(", updated_at = ")
                    .push_bind(now)
                    .push(" WHERE id IN (");
                let ids: Vec<i64> = chunk.iter().map(|(id, _)| *id).collect();
                push_ids(&mut q, &ids);
                q.build()
                    .execute(&mut *self.tx)
                    .await
                    .ctx("mark payouts mined")?;
            }
        }
        Ok(())
    }
}

/// What a group of mined payouts written by one statement shares.
fn shared(m: &Mined) -> (u64, B256, u64, bool, bool, bool, Option<&str>) {
    (
        m.block.0,
        m.block.1,
        m.due,
        m.success,
        m.displaced,
        m.cancel_mined,
        m.note.as_deref(),
    )
}
