//! What the HTTP API reads (docs/architecture.md, "HTTP API"): the stream
//! of answers in commit order, payouts by `queue_id`, deposits and watches
//! by address. Every read follows an index.

use super::{Ctx, Payout, Planned, Store, StoreError, address, b256, payouts};
use alloy::primitives::{Address, B256, U256};
use sqlx::{Any, QueryBuilder, Row};

/// The `meta` key of the last stream position given out. Kept apart from
/// the rows, which retention deletes.
const STREAM_TOP: &str = "stream_seq";

/// One answer at its place in the stream.
#[derive(Debug, Clone)]
pub struct StreamRow {
    /// Stream position: consecutive, in commit order.
    pub seq: i64,
    /// Response kind (`topup_resp`), or a dead letter's.
    pub kind: String,
    /// JSON body.
    pub body: Vec<u8>,
}

/// A deposit as stored.
#[derive(Debug, Clone)]
pub struct DepositView {
    /// Row id: the paging key.
    pub id: i64,
    /// Chain.
    pub chain: String,
    /// Transaction.
    pub tx_hash: B256,
    /// Log index; `-1` for the native coin.
    pub log_index: i64,
    /// Symbol.
    pub symbol: String,
    /// The watched address.
    pub address: Address,
    /// Sender.
    pub from: Address,
    /// Base units.
    pub amount: U256,
    /// Block.
    pub block: u64,
    /// [`super::deposits::PENDING`] and the others.
    pub state: i64,
    /// Decimals when it was recorded (`None`: an older row).
    pub decimals: Option<u8>,
    /// When it was first seen, unix milliseconds.
    pub created_at: i64,
}

impl Store {
    /// Gives the outbox rows committed since the last call (at most
    /// `limit`, in id order) the next stream positions, and returns them.
    /// One task calls it: positions are then consecutive, and a row that
    /// commits after a higher id simply gets a later position. In the same
    /// transaction, the webhook deliveries `plan` asks for are written
    /// (where their target has a URL).
    pub async fn sequence_outbox(
        &self,
        limit: u32,
        plan: &(dyn Fn(&StreamRow) -> Option<Planned> + Sync),
    ) -> Result<Vec<StreamRow>, StoreError> {
        let mut tx = self.begin().await?;
        let rows =
            sqlx::query("SELECT id, kind, body FROM outbox WHERE seq IS NULL ORDER BY id LIMIT ?")
                .bind(i64::from(limit))
                .fetch_all(&mut *tx.tx)
                .await
                .ctx("read unsequenced outbox")?;
        if rows.is_empty() {
            return Ok(Vec::new());
        }
        let top: i64 = tx
            .meta(STREAM_TOP)
            .await?
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let mut out = Vec::with_capacity(rows.len());
        let mut ids = Vec::with_capacity(rows.len());
        for (i, r) in rows.iter().enumerate() {
            ids.push(r.get::<i64, _>(0));
            out.push(StreamRow {
                seq: top + 1 + i as i64,
                kind: r.get(1),
                body: r.get(2),
            });
        }
        for (chunk_ids, chunk) in ids.chunks(500).zip(out.chunks(500)) {
            let mut q = QueryBuilder::<Any>::new("UPDATE outbox SET seq = CASE id");
            for (id, row) in chunk_ids.iter().zip(chunk) {
                q.push(" WHEN ")
                    .push_bind(*id)
                    .push(" THEN ")
                    .push_bind(row.seq);
            }
            q.push(" END WHERE id IN (");
            super::push_ids(&mut q, chunk_ids);
            q.build()
                .execute(&mut *tx.tx)
                .await
                .ctx("sequence outbox")?;
        }
        let planned: Vec<(&StreamRow, Planned)> =
            out.iter().filter_map(|r| Some((r, plan(r)?))).collect();
        tx.plan_deliveries(&planned).await?;
        let last = top + out.len() as i64;
        tx.set_meta(STREAM_TOP, &last.to_string()).await?;
        tx.commit().await?;
        Ok(out)
    }

    /// The last stream position given out (0 before the first).
    pub async fn stream_top(&self) -> Result<i64, StoreError> {
        let v: Option<String> = sqlx::query_scalar("SELECT value FROM meta WHERE `key` = ?")
            .bind(STREAM_TOP)
            .fetch_optional(&self.pool)
            .await
            .ctx("read stream position")?;
        Ok(v.and_then(|v| v.parse().ok()).unwrap_or(0))
    }

    /// Stream rows after position `after`, in order.
    pub async fn stream_after(&self, after: i64, limit: u32) -> Result<Vec<StreamRow>, StoreError> {
        let rows =
            sqlx::query("SELECT seq, kind, body FROM outbox WHERE seq > ? ORDER BY seq LIMIT ?")
                .bind(after)
                .bind(i64::from(limit))
                .fetch_all(&self.pool)
                .await
                .ctx("read stream")?;
        Ok(rows
            .iter()
            .map(|r| StreamRow {
                seq: r.get(0),
                kind: r.get(1),
                body: r.get(2),
            })
            .collect())
    }

    /// The payouts of `queue_id` on `chain`, in order.
    pub async fn payouts_of_queue(
        &self,
        chain: &str,
        queue_id: &str,
    ) -> Result<Vec<Payout>, StoreError> {
        let sql = format!(
            "SELECT {} FROM payouts WHERE chain = ? AND queue_id = ? ORDER BY id",
            payouts::COLUMNS
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(chain)
            .bind(queue_id)
            .fetch_all(&self.pool)
            .await
            .ctx("read payouts by queue_id")?;
        rows.iter().map(payouts::payout).collect()
    }

    /// Deposits to `addr` on `chain` (of `symbol`, when given) with id
    /// above `after`, oldest first, at most `limit`.
    pub async fn deposits_of(
        &self,
        chain: &str,
        addr: &Address,
        symbol: Option<&str>,
        after: i64,
        limit: u32,
    ) -> Result<Vec<DepositView>, StoreError> {
        let mut q = QueryBuilder::<Any>::new(format!(
            "SELECT {DEPOSIT_COLUMNS} FROM deposits WHERE chain = "
        ));
        q.push_bind(chain.to_owned())
            .push(" AND address = ")
            .push_bind(addr.to_vec());
        if let Some(s) = symbol {
            q.push(" AND symbol = ").push_bind(s.to_owned());
        }
        q.push(" AND id > ")
            .push_bind(after)
            .push(" ORDER BY id LIMIT ")
            .push_bind(i64::from(limit));
        let rows = q
            .build()
            .fetch_all(&self.pool)
            .await
            .ctx("read deposits by address")?;
        rows.iter().map(deposit_view).collect()
    }

    /// Whether `addr` is watched on `chain`, per symbol it ever was: the
    /// last word of the watch log for each, with when (unix milliseconds).
    pub async fn watch_state(
        &self,
        chain: &str,
        addr: &Address,
    ) -> Result<Vec<(String, bool, i64)>, StoreError> {
        let rows = sqlx::query(
            "SELECT symbol, watched, at FROM watch_log WHERE chain = ? AND address = ? ORDER BY id",
        )
        .bind(chain)
        .bind(addr.to_vec())
        .fetch_all(&self.pool)
        .await
        .ctx("read watches by address")?;
        let mut out: Vec<(String, bool, i64)> = Vec::new();
        for r in &rows {
            let (symbol, watched, at): (String, i64, i64) = (r.get(0), r.get(1), r.get(2));
            match out.iter_mut().find(|(s, _, _)| *s == symbol) {
                Some(e) => *e = (symbol, watched != 0, at),
                None => out.push((symbol, watched != 0, at)),
            }
        }
        Ok(out)
    }
}

/// The columns [`deposit_view`] reads, in order.
pub(super) const DEPOSIT_COLUMNS: &str = "id, chain, tx_hash, log_index, symbol, address, from_address, amount, block_number, state, decimals, created_at";

/// A deposit row read with [`DEPOSIT_COLUMNS`].
pub(super) fn deposit_view(r: &sqlx::any::AnyRow) -> Result<DepositView, StoreError> {
    let amount: String = r.get(7);
    Ok(DepositView {
        id: r.get(0),
        chain: r.get(1),
        tx_hash: b256(r.get(2), "deposits.tx_hash")?,
        log_index: r.get(3),
        symbol: r.get(4),
        address: address(r.get(5), "deposits.address")?,
        from: address(r.get(6), "deposits.from_address")?,
        amount: U256::from_str_radix(&amount, 10).map_err(|_| StoreError::Corrupt {
            what: "deposits.amount",
        })?,
        block: u64::try_from(r.get::<i64, _>(8)).unwrap_or_default(),
        state: r.get(9),
        decimals: r
            .get::<Option<i64>, _>(10)
            .and_then(|d| u8::try_from(d).ok()),
        created_at: r.get(11),
    })
}
