//! What the operator console reads (docs/architecture.md, "Operator
//! console"). Every read follows an index and returns a page:
//!
//! - lists walk the primary key downwards from a position (`before`), newest
//!   first; with a filter that no index serves, they look at one
//!   [`WINDOW`] of ids at a time and say where they stopped, so a page never
//!   costs more than a bounded range scan, whatever the table's size;
//! - searches are exact matches on indexed columns (`queue_id` per chain,
//!   `order_id`, an address, a transaction hash).
//!
//! Nothing here writes, and nothing here is on the path of a request.

use super::api::{DEPOSIT_COLUMNS, deposit_view};
use super::{Ctx, DepositView, Payout, Store, StoreError, payouts};
use alloy::primitives::{Address, B256};
use sqlx::{Any, QueryBuilder, Row};

/// Ids looked at per page when a filter has no index of its own.
pub const WINDOW: i64 = 10_000;

/// A page of a list, newest first.
#[derive(Debug, Clone)]
pub struct Page<T> {
    /// The rows.
    pub rows: Vec<T>,
    /// Where the next (older) page starts (`before`), if there is one.
    pub next: Option<i64>,
    /// The lowest and highest id this page looked at (a filter no index
    /// serves may find few rows among them).
    pub looked: (i64, i64),
}

/// Filters of the payout list; `None` is any.
#[derive(Debug, Clone, Default)]
pub struct PayoutFilter {
    /// Network.
    pub chain: Option<String>,
    /// Stored state.
    pub state: Option<String>,
    /// Symbol.
    pub symbol: Option<String>,
    /// Requested or paying wallet.
    pub wallet: Option<Address>,
}

/// Filters of the deposit list; `None` is any.
#[derive(Debug, Clone, Default)]
pub struct DepositFilter {
    /// Network.
    pub chain: Option<String>,
    /// Symbol.
    pub symbol: Option<String>,
    /// State ([`super::DEPOSIT_CONFIRMED`] …).
    pub state: Option<i64>,
}

/// A request as the inbox holds it.
#[derive(Debug, Clone)]
pub struct InboxView {
    /// Row id.
    pub id: i64,
    /// Request kind.
    pub kind: String,
    /// How it ended (`accepted`, `refused`, `bad_signature`, `unaddressable`).
    pub outcome: String,
    /// Why, when refused.
    pub error: Option<String>,
    /// When, unix milliseconds.
    pub received_at: i64,
    /// The body as received.
    pub body: Vec<u8>,
}

/// A dead letter: a request that could not be answered.
#[derive(Debug, Clone)]
pub struct DeadLetterView {
    /// Outbox id.
    pub id: i64,
    /// Its request kind.
    pub kind: String,
    /// The request as received.
    pub body: Vec<u8>,
    /// Why.
    pub reason: Option<String>,
    /// When, unix milliseconds.
    pub created_at: i64,
    /// When the broker took it (`None`: not yet).
    pub sent_at: Option<i64>,
}

/// A transaction signed for a payout, with its fees.
#[derive(Debug, Clone)]
pub struct TxView {
    /// Its hash.
    pub tx_hash: B256,
    /// Gas limit.
    pub gas_limit: i64,
    /// Max fee per gas (or the gas price), wei.
    pub max_fee: String,
    /// Priority fee, wei.
    pub priority_fee: String,
    /// When it was signed and stored (then broadcast), unix milliseconds.
    pub signed_at: i64,
    /// It is the zero-value transfer that cancels the payout.
    pub cancels: bool,
}

/// The page's id range: `(lo, hi)`, ids in `lo..hi`, newest first.
async fn window(store: &Store, table: &str, before: Option<i64>) -> Result<(i64, i64), StoreError> {
    let hi = match before {
        Some(b) => b,
        None => {
            let top: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
                "SELECT COALESCE(MAX(id), 0) FROM {table}"
            )))
            .fetch_one(&store.pool)
            .await
            .ctx("read newest id")?;
            top + 1
        }
    };
    Ok(((hi - WINDOW).max(1), hi))
}

/// The next page's `before`: after a full page, its last id; after a short
/// page of a window, the window's start, unless it reached id 1.
fn next_of(last: Option<i64>, full: bool, lo: i64) -> Option<i64> {
    match (full, last) {
        (true, Some(id)) => Some(id),
        _ => (lo > 1).then_some(lo),
    }
}

impl Store {
    /// Payouts newest first, filtered, from `before` (exclusive).
    pub async fn console_payouts(
        &self,
        f: &PayoutFilter,
        before: Option<i64>,
        limit: u32,
    ) -> Result<Page<Payout>, StoreError> {
        let (lo, hi) = window(self, "payouts", before).await?;
        let mut q = QueryBuilder::<Any>::new(format!(
            "SELECT {} FROM payouts WHERE id >= ",
            payouts::COLUMNS
        ));
        q.push_bind(lo).push(" AND id < ").push_bind(hi);
        if let Some(c) = &f.chain {
            q.push(" AND chain = ").push_bind(c.clone());
        }
        if let Some(s) = &f.state {
            q.push(" AND state = ").push_bind(s.clone());
        }
        if let Some(s) = &f.symbol {
            q.push(" AND symbol = ").push_bind(s.clone());
        }
        if let Some(w) = &f.wallet {
            q.push(" AND (from_address = ")
                .push_bind(w.to_vec())
                .push(" OR payer = ")
                .push_bind(w.to_vec())
                .push(")");
        }
        q.push(" ORDER BY id DESC LIMIT ")
            .push_bind(i64::from(limit));
        let rows = q.build().fetch_all(&self.pool).await.ctx("list payouts")?;
        let rows: Vec<Payout> = rows.iter().map(payouts::payout).collect::<Result<_, _>>()?;
        let next = next_of(rows.last().map(|p| p.id), rows.len() == limit as usize, lo);
        Ok(Page {
            rows,
            next,
            looked: (lo, hi - 1),
        })
    }

    /// Payouts matching `text` exactly: a `queue_id` on one of `chains`, an
    /// `order_id`, a transaction hash signed for one, or an address (its
    /// requested wallet or recipient); newest first, at most `limit`.
    pub async fn find_payouts(
        &self,
        chains: &[String],
        text: &str,
        limit: u32,
    ) -> Result<Vec<Payout>, StoreError> {
        let text = text.trim();
        let mut ids: Vec<i64> = Vec::new();
        for chain in chains {
            let found: Vec<i64> = sqlx::query_scalar(
                "SELECT id FROM payouts WHERE chain = ? AND queue_id = ? ORDER BY id DESC LIMIT ?",
            )
            .bind(chain)
            .bind(text)
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await
            .ctx("find payouts by queue_id")?;
            ids.extend(found);
        }
        if !text.is_empty() {
            let found: Vec<i64> = sqlx::query_scalar(
                "SELECT id FROM payouts WHERE order_id = ? ORDER BY id DESC LIMIT ?",
            )
            .bind(text)
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await
            .ctx("find payouts by order_id")?;
            ids.extend(found);
        }
        if let Ok(hash) = text.parse::<B256>() {
            let found: Vec<i64> =
                sqlx::query_scalar("SELECT payout_id FROM payout_txs WHERE tx_hash = ?")
                    .bind(hash.to_vec())
                    .fetch_all(&self.pool)
                    .await
                    .ctx("find payouts by transaction")?;
            ids.extend(found);
        } else if let Ok(addr) = crate::msg::parse_address(text) {
            for column in ["to_address", "from_address"] {
                let found: Vec<i64> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
                    "SELECT id FROM payouts WHERE {column} = ? ORDER BY id DESC LIMIT ?"
                )))
                .bind(addr.to_vec())
                .bind(i64::from(limit))
                .fetch_all(&self.pool)
                .await
                .ctx("find payouts by address")?;
                ids.extend(found);
            }
        }
        ids.sort_unstable_by(|a, b| b.cmp(a));
        ids.dedup();
        ids.truncate(limit as usize);
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut q = QueryBuilder::<Any>::new(format!(
            "SELECT {} FROM payouts WHERE id IN (",
            payouts::COLUMNS
        ));
        super::push_ids(&mut q, &ids);
        q.push(" ORDER BY id DESC");
        let rows = q
            .build()
            .fetch_all(&self.pool)
            .await
            .ctx("read found payouts")?;
        rows.iter().map(payouts::payout).collect()
    }

    /// The payout with row id `id`.
    pub async fn payout(&self, id: i64) -> Result<Option<Payout>, StoreError> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {} FROM payouts WHERE id = ?",
            payouts::COLUMNS
        )))
        .bind(id)
        .fetch_optional(&self.pool)
        .await
        .ctx("read payout")?;
        row.as_ref().map(payouts::payout).transpose()
    }

    /// Every transaction signed for payout `id`, oldest first, with fees.
    pub async fn payout_tx_views(&self, id: i64) -> Result<Vec<TxView>, StoreError> {
        let rows = sqlx::query(
            "SELECT tx_hash, gas_limit, max_fee_per_gas, priority_fee, created_at, cancels
             FROM payout_txs WHERE payout_id = ? ORDER BY created_at, tx_hash",
        )
        .bind(id)
        .fetch_all(&self.pool)
        .await
        .ctx("read payout transactions")?;
        rows.iter()
            .map(|r| {
                Ok(TxView {
                    tx_hash: super::b256(r.get(0), "payout_txs.tx_hash")?,
                    gas_limit: r.get(1),
                    max_fee: r.get(2),
                    priority_fee: r.get(3),
                    signed_at: r.get(4),
                    cancels: r.get::<i64, _>(5) != 0,
                })
            })
            .collect()
    }

    /// Payouts not final yet per paying (or, before one is chosen,
    /// requested) wallet on `chain`.
    pub async fn waiting_per_wallet(&self, chain: &str) -> Result<Vec<(Address, i64)>, StoreError> {
        let by_state = self
            .engine
            .indexed("payouts", "payouts_state", "payouts_state");
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT COALESCE(payer, from_address), COUNT(*) FROM {by_state}
             WHERE chain = ? AND state IN ('queued', 'claimed', 'signed', 'sent', 'mined')
             GROUP BY COALESCE(payer, from_address)"
        )))
        .bind(chain)
        .fetch_all(&self.pool)
        .await
        .ctx("count waiting payouts")?;
        rows.iter()
            .map(|r| Ok((super::address(r.get(0), "payouts.payer")?, r.get(1))))
            .collect()
    }

    /// Deposits newest first, filtered, from `before` (exclusive).
    pub async fn console_deposits(
        &self,
        f: &DepositFilter,
        before: Option<i64>,
        limit: u32,
    ) -> Result<Page<DepositView>, StoreError> {
        let (lo, hi) = window(self, "deposits", before).await?;
        let mut q = QueryBuilder::<Any>::new(format!(
            "SELECT {DEPOSIT_COLUMNS} FROM deposits WHERE id >= "
        ));
        q.push_bind(lo).push(" AND id < ").push_bind(hi);
        if let Some(c) = &f.chain {
            q.push(" AND chain = ").push_bind(c.clone());
        }
        if let Some(s) = &f.symbol {
            q.push(" AND symbol = ").push_bind(s.clone());
        }
        if let Some(s) = f.state {
            q.push(" AND state = ").push_bind(s);
        }
        q.push(" ORDER BY id DESC LIMIT ")
            .push_bind(i64::from(limit));
        let rows = q.build().fetch_all(&self.pool).await.ctx("list deposits")?;
        let rows: Vec<DepositView> = rows.iter().map(deposit_view).collect::<Result<_, _>>()?;
        let next = next_of(rows.last().map(|d| d.id), rows.len() == limit as usize, lo);
        Ok(Page {
            rows,
            next,
            looked: (lo, hi - 1),
        })
    }

    /// Deposits matching `text` exactly on one of `chains`: a watched
    /// address or a transaction hash; newest first, at most `limit`.
    pub async fn find_deposits(
        &self,
        chains: &[String],
        text: &str,
        limit: u32,
    ) -> Result<Vec<DepositView>, StoreError> {
        let text = text.trim();
        let (column, value) = if let Ok(hash) = text.parse::<B256>() {
            ("tx_hash", hash.to_vec())
        } else if let Ok(addr) = crate::msg::parse_address(text) {
            ("address", addr.to_vec())
        } else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        for chain in chains {
            let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
                "SELECT {DEPOSIT_COLUMNS} FROM deposits WHERE chain = ? AND {column} = ?
                 ORDER BY id DESC LIMIT ?"
            )))
            .bind(chain)
            .bind(value.clone())
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await
            .ctx("find deposits")?;
            for r in &rows {
                out.push(deposit_view(r)?);
            }
        }
        out.sort_unstable_by_key(|d| std::cmp::Reverse(d.id));
        out.truncate(limit as usize);
        Ok(out)
    }

    /// Requests newest first, of `kind` and `outcome` when given, from
    /// `before` (exclusive).
    pub async fn console_requests(
        &self,
        kind: Option<&str>,
        outcome: Option<&str>,
        before: Option<i64>,
        limit: u32,
    ) -> Result<Page<InboxView>, StoreError> {
        let (lo, hi) = window(self, "inbox", before).await?;
        let mut q = QueryBuilder::<Any>::new(
            "SELECT id, kind, outcome, error, received_at, body FROM inbox WHERE id >= ",
        );
        q.push_bind(lo).push(" AND id < ").push_bind(hi);
        if let Some(k) = kind {
            q.push(" AND kind = ").push_bind(k.to_owned());
        }
        if let Some(o) = outcome {
            q.push(" AND outcome = ").push_bind(o.to_owned());
        }
        q.push(" ORDER BY id DESC LIMIT ")
            .push_bind(i64::from(limit));
        let rows = q.build().fetch_all(&self.pool).await.ctx("list requests")?;
        let rows: Vec<InboxView> = rows
            .iter()
            .map(|r| InboxView {
                id: r.get(0),
                kind: r.get(1),
                outcome: r.get(2),
                error: r.get(3),
                received_at: r.get(4),
                body: r.get(5),
            })
            .collect();
        let next = next_of(rows.last().map(|r| r.id), rows.len() == limit as usize, lo);
        Ok(Page {
            rows,
            next,
            looked: (lo, hi - 1),
        })
    }

    /// Dead letters newest first, from `before` (exclusive).
    pub async fn console_dead_letters(
        &self,
        before: Option<i64>,
        limit: u32,
    ) -> Result<Page<DeadLetterView>, StoreError> {
        let (lo, hi) = window(self, "outbox", before).await?;
        let rows = sqlx::query(
            "SELECT id, kind, body, reason, created_at, sent_at FROM outbox
             WHERE id >= ? AND id < ? AND kind LIKE 'dead_letter.%' ORDER BY id DESC LIMIT ?",
        )
        .bind(lo)
        .bind(hi)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .ctx("list dead letters")?;
        let rows: Vec<DeadLetterView> = rows
            .iter()
            .map(|r| DeadLetterView {
                id: r.get(0),
                kind: r
                    .get::<String, _>(1)
                    .trim_start_matches(super::DEAD_LETTER_PREFIX)
                    .to_owned(),
                body: r.get(2),
                reason: r.get(3),
                created_at: r.get(4),
                sent_at: r.get(5),
            })
            .collect();
        let next = next_of(rows.last().map(|r| r.id), rows.len() == limit as usize, lo);
        Ok(Page {
            rows,
            next,
            looked: (lo, hi - 1),
        })
    }

    /// Final movements not yet applied to the wallet store's ledger.
    pub async fn ledger_backlog(&self) -> Result<i64, StoreError> {
        let pending = self.engine.indexed(
            "ledger_outbox",
            "ledger_outbox_pending",
            "ledger_outbox_pending",
        );
        sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT COUNT(*) FROM {pending} WHERE applied_at IS NULL"
        )))
        .fetch_one(&self.pool)
        .await
        .ctx("count ledger backlog")
        .map_err(Into::into)
    }
}

#[cfg(test)]
mod tests {
    use super::next_of;

    #[test]
    fn pages_go_on_from_the_last_row_or_the_window_start() {
        assert_eq!(next_of(Some(40), true, 1), Some(40), "a full page");
        assert_eq!(next_of(Some(40), false, 30), Some(30), "the window ran out");
        assert_eq!(next_of(None, false, 30), Some(30), "nothing in this window");
        assert_eq!(next_of(Some(5), false, 1), None, "the first row reached");
    }
}
