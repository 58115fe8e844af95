//! Payout rows: created by listen, signed by a wallet's nonce actor, mined and
//! decided by listen again. Every transition is a conditional update (`WHERE
//! state = …`), so two writers can never both move the same payout: a cancel
//! and the actor's signing racing for a queued payout, one of them wins.
//! (`claimed` is no longer written: a store of an earlier version may hold
//! it, and a start puts such payouts back to queued.)
//!
//! The schema is `migrations/store/sqlite/0002_payouts.sql`.

use super::{
    Ctx, ROWS_PER_STATEMENT, Store, StoreError, StoreTx, address, b256, now_ms, push_list,
};
use crate::msg::Kind;
use alloy::primitives::{Address, B256, U256};
use sqlx::any::AnyRow;
use sqlx::{Any, QueryBuilder, Row};

/// Where a payout is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PayoutState {
    /// Accepted, waiting for its wallet's nonce actor.
    Queued,
    /// Taken by a nonce actor; no nonce yet.
    Claimed,
    /// Nonce allocated, signed, stored; not yet accepted by the node.
    Signed,
    /// Accepted by the node.
    Sent,
    /// In a canonical block, waiting for depth.
    Mined,
    /// Final: succeeded.
    Confirmed,
    /// Final: reverted, or its nonce went to another transaction.
    Failed,
    /// Final: refused before signing.
    Refused,
    /// Final: cancelled before signing.
    Cancelled,
}

impl PayoutState {
    /// Every state, in the order of a payout's life.
    pub const ALL: [PayoutState; 9] = [
        Self::Queued,
        Self::Claimed,
        Self::Signed,
        Self::Sent,
        Self::Mined,
        Self::Confirmed,
        Self::Failed,
        Self::Refused,
        Self::Cancelled,
    ];

    /// Nothing more will happen to it.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            Self::Confirmed | Self::Failed | Self::Refused | Self::Cancelled
        )
    }

    /// Stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Claimed => "claimed",
            Self::Signed => "signed",
            Self::Sent => "sent",
            Self::Mined => "mined",
            Self::Confirmed => "confirmed",
            Self::Failed => "failed",
            Self::Refused => "refused",
            Self::Cancelled => "cancelled",
        }
    }

    fn parse(s: &str) -> Result<Self, StoreError> {
        Ok(match s {
            "queued" => Self::Queued,
            "claimed" => Self::Claimed,
            "signed" => Self::Signed,
            "sent" => Self::Sent,
            "mined" => Self::Mined,
            "confirmed" => Self::Confirmed,
            "failed" => Self::Failed,
            "refused" => Self::Refused,
            "cancelled" => Self::Cancelled,
            _ => {
                return Err(StoreError::Corrupt {
                    what: "payouts.state",
                });
            }
        })
    }
}

/// A payout as a request asks for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewPayout {
    /// Chain.
    pub chain: String,
    /// [`Kind::Withdraw`] or [`Kind::Pay`].
    pub kind: Kind,
    /// Request id.
    pub queue_id: String,
    /// Item id within a payment; empty for a withdrawal.
    pub order_id: String,
    /// Hash of what was asked (chain, kind, ids, symbol, addresses, amount).
    pub content_hash: [u8; 32],
    /// Symbol.
    pub symbol: String,
    /// Requested sender.
    pub from: Address,
    /// Recipient.
    pub to: Address,
    /// Base units.
    pub amount: U256,
    /// Decimals of `symbol`, as the request was read with.
    pub decimals: u8,
    /// The token contract; `None` for ether.
    pub contract: Option<Address>,
}

/// A stored payout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Payout {
    /// Row id.
    pub id: i64,
    /// Chain.
    pub chain: String,
    /// [`Kind::Withdraw`] or [`Kind::Pay`].
    pub kind: Kind,
    /// Request id.
    pub queue_id: String,
    /// Item id; empty for a withdrawal.
    pub order_id: String,
    /// Hash of what was asked.
    pub content_hash: Vec<u8>,
    /// Symbol.
    pub symbol: String,
    /// Requested sender.
    pub from: Address,
    /// Recipient.
    pub to: Address,
    /// Base units.
    pub amount: U256,
    /// State.
    pub state: PayoutState,
    /// Whether status 2 was published.
    pub announced: bool,
    /// The wallet that pays, once decided.
    pub payer: Option<Address>,
    /// Nonce, once signed.
    pub nonce: Option<u64>,
    /// Current transaction, once signed.
    pub tx_hash: Option<B256>,
    /// Block, once mined.
    pub block_number: Option<u64>,
    /// Block hash, once mined.
    pub block_hash: Option<B256>,
    /// Receipt status, once mined.
    pub success: Option<bool>,
    /// Gas paid in wei, once mined.
    pub fee: Option<U256>,
    /// Its nonce went to a transaction that is not ours.
    pub displaced: bool,
    /// Why it was refused or failed.
    pub error: Option<String>,
    /// Decimals of `symbol` when it was recorded (`None`: an older row).
    pub decimals: Option<u8>,
    /// The token contract it moves (`None`: ether, or an older row).
    pub contract: Option<Address>,
    /// The transaction its `status=2` named.
    pub announced_tx: Option<B256>,
    /// Since when the node refuses its signed transaction, unix milliseconds.
    pub refused_at: Option<i64>,
    /// What the node said.
    pub refusal: Option<String>,
    /// A remove asked to cancel it by giving its nonce to a zero-value
    /// transfer to the wallet itself.
    pub cancel_requested: bool,
    /// The cancelling transfer was mined, not the payout.
    pub cancel_mined: bool,
    /// Last change, unix milliseconds.
    pub updated_at: i64,
    /// When the request was accepted, unix milliseconds.
    pub created_at: i64,
}

#[cfg(test)]
impl Payout {
    /// A queued withdrawal of 5 base units of USDT (6 decimals) from `from`
    /// to 0x0202…02, for unit tests to adjust.
    pub(crate) fn sample(from: Address) -> Self {
        Payout {
            id: 1,
            chain: "ETH".into(),
            kind: Kind::Withdraw,
            queue_id: "q".into(),
            order_id: String::new(),
            content_hash: vec![],
            symbol: "USDT".into(),
            from,
            to: Address::repeat_byte(2),
            amount: U256::from(5u64),
            state: PayoutState::Queued,
            announced: false,
            payer: None,
            nonce: None,
            tx_hash: None,
            block_number: None,
            block_hash: None,
            success: None,
            fee: None,
            displaced: false,
            error: None,
            updated_at: 0,
            created_at: 0,
            decimals: Some(6),
            contract: None,
            announced_tx: None,
            refused_at: None,
            refusal: None,
            cancel_requested: false,
            cancel_mined: false,
        }
    }
}

pub(super) const COLUMNS: &str = "id, chain, kind, queue_id, order_id, content_hash, symbol, from_address, to_address, amount,
    state, announced, payer, nonce, tx_hash, block_number, block_hash, success, fee, displaced, error, updated_at,
    created_at, decimals, contract, announced_tx, refused_at, refusal, cancel_requested, cancel_mined";

fn u256(s: &str, what: &'static str) -> Result<U256, StoreError> {
    U256::from_str_radix(s, 10).map_err(|_| StoreError::Corrupt { what })
}

pub(super) fn payout(r: &AnyRow) -> Result<Payout, StoreError> {
    let opt_b256 = |i: usize, what| {
        r.get::<Option<&[u8]>, _>(i)
            .map(|b| b256(b, what))
            .transpose()
    };
    Ok(Payout {
        id: r.get(0),
        chain: r.get(1),
        kind: match Kind::parse(r.get::<&str, _>(2)) {
            Some(k @ (Kind::Withdraw | Kind::Pay)) => k,
            _ => {
                return Err(StoreError::Corrupt {
                    what: "payouts.kind",
                });
            }
        },
        queue_id: r.get(3),
        order_id: r.get(4),
        content_hash: r.get(5),
        symbol: r.get(6),
        from: address(r.get::<&[u8], _>(7), "payouts.from_address")?,
        to: address(r.get::<&[u8], _>(8), "payouts.to_address")?,
        amount: u256(r.get::<&str, _>(9), "payouts.amount")?,
        state: PayoutState::parse(r.get::<&str, _>(10))?,
        announced: r.get::<i64, _>(11) != 0,
        payer: r
            .get::<Option<&[u8]>, _>(12)
            .map(|b| address(b, "payouts.payer"))
            .transpose()?,
        nonce: r.get::<Option<i64>, _>(13).map(|n| n as u64),
        tx_hash: opt_b256(14, "payouts.tx_hash")?,
        block_number: r.get::<Option<i64>, _>(15).map(|n| n as u64),
        block_hash: opt_b256(16, "payouts.block_hash")?,
        success: r.get::<Option<i64>, _>(17).map(|s| s != 0),
        fee: r
            .get::<Option<&str>, _>(18)
            .map(|f| u256(f, "payouts.fee"))
            .transpose()?,
        displaced: r.get::<i64, _>(19) != 0,
        error: r.get(20),
        updated_at: r.get(21),
        created_at: r.get(22),
        decimals: r
            .get::<Option<i64>, _>(23)
            .map(|d| {
                u8::try_from(d).map_err(|_| StoreError::Corrupt {
                    what: "payouts.decimals",
                })
            })
            .transpose()?,
        contract: r
            .get::<Option<&[u8]>, _>(24)
            .map(|b| address(b, "payouts.contract"))
            .transpose()?,
        announced_tx: opt_b256(25, "payouts.announced_tx")?,
        refused_at: r.get(26),
        refusal: r.get(27),
        cancel_requested: r.get::<i64, _>(28) != 0,
        cancel_mined: r.get::<i64, _>(29) != 0,
    })
}

/// How a payout's nonce was mined.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mined {
    /// The transaction mined with the payout's nonce.
    pub tx_hash: B256,
    /// Its block: number and hash.
    pub block: (u64, B256),
    /// Height at which it is decided.
    pub due: u64,
    /// It paid what the payout asks (receipt status, and for a token the
    /// `Transfer` it must log).
    pub success: bool,
    /// Gas paid, wei.
    pub fee: U256,
    /// The transaction is not one of ours.
    pub displaced: bool,
    /// It is the transfer that cancels the payout.
    pub cancel_mined: bool,
    /// Why it did not pay, when the receipt alone does not say.
    pub note: Option<String>,
}

impl StoreTx {
    /// The payout with this key, if any.
    pub async fn payout_by_key(
        &mut self,
        chain: &str,
        kind: Kind,
        queue_id: &str,
        order_id: &str,
    ) -> Result<Option<Payout>, StoreError> {
        let sql = format!(
            "SELECT {COLUMNS} FROM payouts WHERE chain = ? AND kind = ? AND queue_id = ? AND order_id = ?"
        );
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(chain)
            .bind(kind.as_str())
            .bind(queue_id)
            .bind(order_id)
            .fetch_optional(&mut *self.tx)
            .await
            .ctx("read payout")?
            .as_ref()
            .map(payout)
            .transpose()
    }

    /// Every payout (of either kind) with this `queue_id`.
    pub async fn payouts_by_queue_id(
        &mut self,
        chain: &str,
        queue_id: &str,
    ) -> Result<Vec<Payout>, StoreError> {
        let sql =
            format!("SELECT {COLUMNS} FROM payouts WHERE chain = ? AND queue_id = ? ORDER BY id");
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(chain)
            .bind(queue_id)
            .fetch_all(&mut *self.tx)
            .await
            .ctx("read payouts by queue_id")?;
        rows.iter().map(payout).collect()
    }

    /// The payout with this row id.
    pub async fn payout(&mut self, id: i64) -> Result<Option<Payout>, StoreError> {
        let sql = format!("SELECT {COLUMNS} FROM payouts WHERE id = ?");
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(id)
            .fetch_optional(&mut *self.tx)
            .await
            .ctx("read payout")?
            .as_ref()
            .map(payout)
            .transpose()
    }

    /// Stores a new queued payout; returns its row id (read back by its key:
    /// listen writes payouts with [`StoreTx::insert_payouts`], tools and
    /// tests one at a time).
    pub async fn insert_payout(&mut self, p: &NewPayout) -> Result<i64, StoreError> {
        self.insert_payouts(&[p]).await?;
        self.payout_by_key(&p.chain, p.kind, &p.queue_id, &p.order_id)
            .await?
            .map(|stored| stored.id)
            .ok_or(StoreError::Corrupt { what: "payouts.id" })
    }

    /// The keys (kind, queue_id, order_id) of the payouts of `chain` whose
    /// `queue_id` is one of `queue_ids`: which of a batch's payout requests
    /// name a payout already stored, in one statement per few hundred.
    pub async fn payout_keys(
        &mut self,
        chain: &str,
        queue_ids: &[&str],
    ) -> Result<Vec<(Kind, String, String)>, StoreError> {
        let mut keys = Vec::new();
        for chunk in queue_ids.chunks(ROWS_PER_STATEMENT * 4) {
            let mut q = QueryBuilder::<Any>::new(
                "SELECT kind, queue_id, order_id FROM payouts WHERE chain = ",
            );
            q.push_bind(chain).push(" AND queue_id IN (");
            push_list(&mut q, chunk.iter().copied());
            for r in q
                .build()
                .fetch_all(&mut *self.tx)
                .await
                .ctx("read payout keys")?
            {
                let kind = Kind::parse(r.get::<&str, _>(0)).ok_or(StoreError::Corrupt {
                    what: "payouts.kind",
                })?;
                keys.push((kind, r.get(1), r.get(2)));
            }
        }
        Ok(keys)
    }

    /// Stores new queued payouts, a few hundred per statement.
    pub async fn insert_payouts(&mut self, ps: &[&NewPayout]) -> Result<(), StoreError> {
        let now = now_ms();
        for chunk in ps.chunks(ROWS_PER_STATEMENT) {
            let mut q = QueryBuilder::<Any>::new(
                "INSERT INTO payouts (chain, kind, queue_id, order_id, content_hash, symbol,
                    from_address, to_address, amount, state, created_at, updated_at, decimals, contract) ",
            );
            q.push_values(chunk, |mut b, p| {
                b.push_bind(p.chain.as_str())
                    .push_bind(p.kind.as_str())
                    .push_bind(p.queue_id.as_str())
                    .push_bind(p.order_id.as_str())
                    .push_bind(p.content_hash.as_slice())
                    .push_bind(p.symbol.as_str())
                    .push_bind(p.from.as_slice())
                    .push_bind(p.to.as_slice())
                    .push_bind(p.amount.to_string())
                    .push("'queued'")
                    .push_bind(now)
                    .push_bind(now)
                    .push_bind(i64::from(p.decimals))
                    .push_bind(p.contract.as_ref().map(|c| c.as_slice()));
            });
            q.build()
                .execute(&mut *self.tx)
                .await
                .ctx("insert payouts")?;
        }
        Ok(())
    }

    /// Moves payout `id` from `from` to `to` (recording `error`); `false` if it
    /// was not in `from`.
    pub async fn move_payout(
        &mut self,
        id: i64,
        from: PayoutState,
        to: PayoutState,
        error: Option<&str>,
    ) -> Result<bool, StoreError> {
        let done = sqlx::query("UPDATE payouts SET state = ?, error = COALESCE(?, error), updated_at = ? WHERE id = ? AND state = ?")
            .bind(to.as_str())
            .bind(error)
            .bind(now_ms())
            .bind(id)
            .bind(from.as_str())
            .execute(&mut *self.tx)
            .await
            .ctx("move payout")?;
        Ok(done.rows_affected() == 1)
    }

    /// Marks payout `id` announced; returns it if it was not yet.
    pub async fn take_announcement(&mut self, id: i64) -> Result<Option<Payout>, StoreError> {
        let done = sqlx::query(
            "UPDATE payouts SET announced = 1, announced_tx = tx_hash WHERE id = ? AND announced = 0",
        )
            .bind(id)
            .execute(&mut *self.tx)
            .await
            .ctx("announce payout")?;
        if done.rows_affected() == 0 {
            return Ok(None);
        }
        self.payout(id).await
    }

    /// Mined payouts whose `due` height is at or below `height`.
    pub async fn due_payouts(
        &mut self,
        chain: &str,
        height: u64,
    ) -> Result<Vec<Payout>, StoreError> {
        let sql = format!(
            "SELECT {COLUMNS} FROM payouts WHERE chain = ? AND state = 'mined' AND due <= ? ORDER BY id"
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(chain)
            .bind(height as i64)
            .fetch_all(&mut *self.tx)
            .await
            .ctx("read due payouts")?;
        rows.iter().map(payout).collect()
    }

    /// Payouts mined above `fork` go back to sent: their transactions are
    /// broadcast again, same bytes. Returns how many.
    pub async fn unmine_payouts_above(
        &mut self,
        chain: &str,
        fork: u64,
    ) -> Result<u64, StoreError> {
        let done = sqlx::query(
            "UPDATE payouts SET state = 'sent', block_number = NULL, block_hash = NULL, due = NULL,
                success = NULL, fee = NULL, displaced = 0, cancel_mined = 0, error = NULL, updated_at = ?
             WHERE chain = ? AND state = 'mined' AND block_number > ?",
        )
        .bind(now_ms())
        .bind(chain)
        .bind(fork as i64)
        .execute(&mut *self.tx)
        .await
        .ctx("unmine payouts")?;
        Ok(done.rows_affected())
    }

    /// Payouts answered final (confirmed or failed on chain) whose block is
    /// above `fork`: a reorganisation deeper than the confirmation depth
    /// took back what they were answered on, which only an operator can
    /// sort out.
    pub async fn final_payouts_above(
        &mut self,
        chain: &str,
        fork: u64,
    ) -> Result<Vec<Payout>, StoreError> {
        let sql = format!(
            "SELECT {COLUMNS} FROM payouts WHERE chain = ? AND state IN ('confirmed', 'failed')
             AND block_number > ? ORDER BY id"
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(chain)
            .bind(fork as i64)
            .fetch_all(&mut *self.tx)
            .await
            .ctx("read final payouts")?;
        rows.iter().map(payout).collect()
    }
}

impl Store {
    /// Queued payouts of `chain` with id above `after`, oldest first.
    pub async fn queued_payouts(
        &self,
        chain: &str,
        after: i64,
        limit: u32,
    ) -> Result<Vec<Payout>, StoreError> {
        let sql = format!(
            "SELECT {COLUMNS} FROM payouts WHERE chain = ? AND state = 'queued' AND id > ? ORDER BY id LIMIT ?"
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(chain)
            .bind(after)
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await
            .ctx("read queued payouts")?;
        rows.iter().map(payout).collect()
    }

    /// Claimed payouts go back to queued (at start: a claim holds no nonce).
    pub async fn release_claims(&self, chain: &str) -> Result<u64, StoreError> {
        let mut tx = self.begin().await?;
        let done = sqlx::query("UPDATE payouts SET state = 'queued', updated_at = ? WHERE chain = ? AND state = 'claimed'")
            .bind(now_ms())
            .bind(chain)
            .execute(&mut *tx.tx)
            .await
            .ctx("release claims")?;
        tx.commit().await?;
        Ok(done.rows_affected())
    }

    /// The highest nonce any payout of `payer` holds.
    pub async fn max_nonce(&self, chain: &str, payer: Address) -> Result<Option<u64>, StoreError> {
        let n: Option<i64> =
            sqlx::query_scalar("SELECT MAX(nonce) FROM payouts WHERE chain = ? AND payer = ?")
                .bind(chain)
                .bind(payer.as_slice())
                .fetch_one(&self.pool)
                .await
                .ctx("read max nonce")?;
        Ok(n.map(|n| n as u64))
    }

    /// Wallets with payouts signed or sent but not yet mined.
    pub async fn payers_in_flight(&self, chain: &str) -> Result<Vec<Address>, StoreError> {
        let rows: Vec<Vec<u8>> = sqlx::query_scalar(
            "SELECT DISTINCT payer FROM payouts WHERE chain = ? AND payer IS NOT NULL AND state IN ('signed', 'sent', 'mined')",
        )
        .bind(chain)
        .fetch_all(&self.pool)
        .await
        .ctx("read payers")?;
        rows.iter().map(|b| address(b, "payouts.payer")).collect()
    }

    /// Every payout of `chain` (for tests and tools), oldest first.
    pub async fn payouts(&self, chain: &str) -> Result<Vec<Payout>, StoreError> {
        let sql = format!("SELECT {COLUMNS} FROM payouts WHERE chain = ? ORDER BY id");
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(chain)
            .fetch_all(&self.pool)
            .await
            .ctx("read payouts")?;
        rows.iter().map(payout).collect()
    }
}
