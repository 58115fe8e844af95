//! Deposit rows: seen, re-mined after a reorganisation, orphaned, decided.
//!
//! A deposit is keyed by `(chain, tx_hash, log_index)` (`-1` for native ether).
//! Its state moves pending → confirmed or failed; a reorganisation moves a
//! pending deposit to orphaned, and a re-mined one back to pending in its new
//! block. `due` is the height at which it is decided, so the per-block work is
//! an index range over what matures.

use super::{Ctx, Engine, StoreError, StoreTx, address, b256, now_ms, push_list};
use alloy::primitives::{Address, B256, U256};
use sqlx::{Any, QueryBuilder, Row};
use std::collections::{HashMap, HashSet};

/// Pending: seen in a canonical block, waiting for depth.
pub const PENDING: i64 = 0;
/// Confirmed: final, reported with status 1.
pub const CONFIRMED: i64 = 1;
/// Failed: final, reported with status 0.
pub const FAILED: i64 = 2;
/// Orphaned: its block was reorganised away; waiting to be mined again.
pub const ORPHANED: i64 = 3;

/// A deposit as the watcher found it in a canonical block.
#[derive(Debug, Clone)]
pub struct NewDeposit<'a> {
    /// Chain name.
    pub chain: &'a str,
    /// Transaction hash.
    pub tx_hash: B256,
    /// Log index of the Transfer event; `-1` for native ether.
    pub log_index: i64,
    /// Symbol.
    pub symbol: &'a str,
    /// The watched address that received it.
    pub address: Address,
    /// Sender.
    pub from: Address,
    /// Base units.
    pub amount: U256,
    /// Block height.
    pub block_number: u64,
    /// Block hash.
    pub block_hash: B256,
    /// Height at which it is final: `block_number + confirm_height`.
    pub due: u64,
    /// Decimals of `symbol`: the deposit is answered in them for good.
    pub decimals: u8,
    /// Only to match a deposit already in the store (a transfer to an
    /// address no longer watched, in a transaction whose deposit a
    /// reorganisation orphaned): never recorded as a new one.
    pub known_only: bool,
}

/// What recording a seen deposit did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DepositSeen {
    /// First sighting: report status 2.
    New,
    /// Back in a canonical block after a reorganisation: already reported 2.
    Remined,
    /// Seen again after it was reported failed: reported 2 anew.
    Reopened,
    /// Already known in this block or already confirmed: nothing to do.
    Known,
}

/// An earlier row of a transaction seen again (see [`StoreTx::match_earlier`]).
struct EarlierRow {
    id: i64,
    log_index: i64,
    symbol: String,
    address: Vec<u8>,
    from: Vec<u8>,
    amount: String,
    state: i64,
    block_hash: Vec<u8>,
    /// Already matched to a transfer of this batch.
    claimed: bool,
}

/// A deposit whose `due` height has been reached.
#[derive(Debug, Clone)]
pub struct DueDeposit {
    /// Row id.
    pub id: i64,
    /// Transaction hash.
    pub tx_hash: B256,
    /// Log index (`-1` for native ether).
    pub log_index: i64,
    /// Symbol.
    pub symbol: String,
    /// Watched address.
    pub address: Address,
    /// Sender.
    pub from: Address,
    /// Base units.
    pub amount: U256,
    /// Block height.
    pub block_number: u64,
    /// Block hash it was seen in.
    pub block_hash: B256,
    /// `true` if it was orphaned (and not mined again).
    pub orphaned: bool,
    /// Decimals of `symbol` when it was recorded (`None`: an older row).
    pub decimals: Option<u8>,
}

impl StoreTx {
    /// Records a deposit seen in a canonical block.
    pub async fn deposit_seen(&mut self, d: &NewDeposit<'_>) -> Result<DepositSeen, StoreError> {
        Ok(self
            .deposits_seen(std::slice::from_ref(d))
            .await?
            .pop()
            .unwrap_or(DepositSeen::Known))
    }

    /// Records deposits seen in canonical blocks, in order; returns what each
    /// did. New deposits (the usual case) go in with a few multi-row
    /// statements; transfers of transactions seen before are matched to their
    /// earlier rows by content (see [`StoreTx::match_earlier`]).
    pub async fn deposits_seen(
        &mut self,
        ds: &[NewDeposit<'_>],
    ) -> Result<Vec<DepositSeen>, StoreError> {
        let now = now_ms();
        let mut out = vec![DepositSeen::New; ds.len()];
        let fresh = self.match_earlier(ds, &mut out, now).await?;
        if fresh.is_empty() {
            return Ok(out);
        }
        // MySQL: the keys inserted. SQLite: the rows skipped as already
        // stored (rare: a transfer twice in one batch), read back by id only
        // when there are any, instead of returning every inserted key.
        let mut inserted: HashSet<(String, Vec<u8>, i64)> = HashSet::new();
        let mut skipped = 0u64;
        let last_before = match self.engine {
            Engine::Sqlite => sqlx::query_scalar("SELECT COALESCE(MAX(id), 0) FROM deposits")
                .fetch_one(&mut *self.tx)
                .await
                .ctx("read deposits")?,
            Engine::MySql => 0i64,
        };
        for chunk in fresh.chunks(200) {
            // MySQL has no RETURNING: the keys already stored are read first
            // and only the rest is inserted, each key once (as SQLite's
            // `ON CONFLICT DO NOTHING` keeps the first of a statement).
            let chunk: Vec<usize> = match self.engine {
                Engine::Sqlite => chunk.to_vec(),
                Engine::MySql => {
                    let mut q = QueryBuilder::<Any>::new(
                        "SELECT chain, tx_hash, log_index FROM deposits WHERE (chain, tx_hash, log_index) IN (",
                    );
                    let mut list = q.separated(", ");
                    for &i in chunk {
                        let d = &ds[i];
                        list.push("(")
                            .push_bind_unseparated(d.chain)
                            .push_unseparated(", ")
                            .push_bind_unseparated(d.tx_hash.as_slice())
                            .push_unseparated(", ")
                            .push_bind_unseparated(d.log_index)
                            .push_unseparated(")");
                    }
                    q.push(")");
                    let mut taken: HashSet<(String, Vec<u8>, i64)> = q
                        .build_query_as()
                        .fetch_all(&mut *self.tx)
                        .await
                        .ctx("look up deposits")?
                        .into_iter()
                        .collect();
                    let mine: Vec<usize> = chunk
                        .iter()
                        .copied()
                        .filter(|&i| {
                            let d = &ds[i];
                            taken.insert((d.chain.to_owned(), d.tx_hash.to_vec(), d.log_index))
                        })
                        .collect();
                    if mine.is_empty() {
                        continue;
                    }
                    mine
                }
            };
            let mut q = QueryBuilder::<Any>::new(
                "INSERT INTO deposits (chain, tx_hash, log_index, symbol, address, from_address,
                    amount, block_number, block_hash, state, due, created_at, updated_at, decimals) ",
            );
            q.push_values(&chunk, |mut b, &i| {
                let d = &ds[i];
                b.push_bind(d.chain)
                    .push_bind(d.tx_hash.as_slice())
                    .push_bind(d.log_index)
                    .push_bind(d.symbol)
                    .push_bind(d.address.as_slice())
                    .push_bind(d.from.as_slice())
                    .push_bind(d.amount.to_string())
                    .push_bind(d.block_number as i64)
                    .push_bind(d.block_hash.as_slice())
                    .push_bind(PENDING)
                    .push_bind(d.due as i64)
                    .push_bind(now)
                    .push_bind(now)
                    .push_bind(i64::from(d.decimals));
            });
            match self.engine {
                Engine::Sqlite => {
                    q.push(" ON CONFLICT (chain, tx_hash, log_index) DO NOTHING");
                    let done = q
                        .build()
                        .execute(&mut *self.tx)
                        .await
                        .ctx("insert deposits")?;
                    skipped += (chunk.len() as u64).saturating_sub(done.rows_affected());
                }
                Engine::MySql => {
                    q.build()
                        .execute(&mut *self.tx)
                        .await
                        .ctx("insert deposits")?;
                    inserted.extend(chunk.iter().map(|&i| {
                        let d = &ds[i];
                        (d.chain.to_owned(), d.tx_hash.to_vec(), d.log_index)
                    }));
                }
            }
        }
        // Every fresh transfer was inserted: each is new.
        let all_new = self.engine == Engine::Sqlite && skipped == 0;
        if self.engine == Engine::Sqlite && !all_new {
            // This transaction holds the write lock: the rows above the
            // highest id before the inserts are the ones they made.
            inserted =
                sqlx::query_as("SELECT chain, tx_hash, log_index FROM deposits WHERE id > ?")
                    .bind(last_before)
                    .fetch_all(&mut *self.tx)
                    .await
                    .ctx("read deposits")?
                    .into_iter()
                    .collect();
        }
        for &i in &fresh {
            let d = &ds[i];
            out[i] = if all_new
                || inserted.remove(&(d.chain.to_owned(), d.tx_hash.to_vec(), d.log_index))
            {
                DepositSeen::New
            } else {
                self.deposit_seen_again(d, now).await?
            };
        }
        Ok(out)
    }

    /// Matches the transfers of transactions already in the store to their
    /// earlier rows, sets their outcome in `out`, and returns the indexes of
    /// the others (to insert).
    ///
    /// A transaction mined again after a reorganisation may sit elsewhere in
    /// its new block, so its logs' indexes change: an earlier row is the same
    /// deposit when symbol, recipient, sender and amount agree (the same log
    /// index is preferred). Such a row is moved to the new block and index, so
    /// the deposit keeps its one `2` and gets one final answer; a confirmed one
    /// (a reorganisation deeper than the confirmation depth) is left as it is,
    /// never credited twice.
    async fn match_earlier(
        &mut self,
        ds: &[NewDeposit<'_>],
        out: &mut [DepositSeen],
        now: i64,
    ) -> Result<Vec<usize>, StoreError> {
        let mut earlier = self.earlier_rows(ds).await?;
        let mut fresh = Vec::with_capacity(ds.len());
        let mut moves: Vec<(i64, i64, usize)> = Vec::new();
        // New transfers of transactions seen before (their key may be taken).
        let mut fresh_seen_tx: Vec<usize> = Vec::new();
        for (i, d) in ds.iter().enumerate() {
            let Some(rows) = earlier.get_mut(&d.tx_hash) else {
                if d.known_only {
                    out[i] = DepositSeen::Known;
                } else {
                    fresh.push(i);
                }
                continue;
            };
            // In the same block a transaction's logs keep their indexes: a
            // row there at another index is another transfer.
            let same = |r: &EarlierRow| {
                !r.claimed
                    && (r.block_hash != d.block_hash.as_slice() || r.log_index == d.log_index)
                    && r.symbol == d.symbol
                    && r.address == d.address.as_slice()
                    && r.from == d.from.as_slice()
                    && r.amount == d.amount.to_string()
            };
            let Some(r) = rows
                .iter_mut()
                .filter(|r| same(r))
                .min_by_key(|r| (r.log_index != d.log_index, r.id))
            else {
                if d.known_only {
                    out[i] = DepositSeen::Known;
                } else {
                    fresh.push(i);
                    fresh_seen_tx.push(i);
                }
                continue;
            };
            r.claimed = true;
            out[i] = match r.state {
                PENDING
                    if r.block_hash == d.block_hash.as_slice() && r.log_index == d.log_index =>
                {
                    DepositSeen::Known
                }
                CONFIRMED => DepositSeen::Known,
                FAILED => DepositSeen::Reopened,
                _ => DepositSeen::Remined,
            };
            if matches!(out[i], DepositSeen::Reopened | DepositSeen::Remined) {
                moves.push((r.id, r.log_index, i));
            }
        }
        // Indexes move in two steps, so that one row may take an index
        // another row of the same transaction still holds.
        for &(id, old, i) in &moves {
            if old != ds[i].log_index {
                sqlx::query("UPDATE deposits SET log_index = ? WHERE id = ?")
                    .bind(-2 - id)
                    .bind(id)
                    .execute(&mut *self.tx)
                    .await
                    .ctx("move deposit")?;
            }
        }
        // The key a transfer takes may still be held by a row of the same
        // transaction that matched nothing here (an earlier transfer of it
        // that did not come back, or a confirmed one): that row steps aside
        // to its own spare index, so no move or insert can collide.
        let takers = moves
            .iter()
            .map(|&(id, _, i)| (id, i))
            .chain(fresh_seen_tx.iter().map(|&i| (0, i)));
        for (taker, i) in takers {
            let d = &ds[i];
            sqlx::query(
                "UPDATE deposits SET log_index = -2 - id
                 WHERE chain = ? AND tx_hash = ? AND log_index = ? AND id != ?",
            )
            .bind(d.chain)
            .bind(d.tx_hash.as_slice())
            .bind(d.log_index)
            .bind(taker)
            .execute(&mut *self.tx)
            .await
            .ctx("free deposit key")?;
        }
        for &(id, _, i) in &moves {
            let d = &ds[i];
            sqlx::query(
                "UPDATE deposits SET log_index = ?, block_number = ?, block_hash = ?, state = ?,
                    due = ?, updated_at = ? WHERE id = ?",
            )
            .bind(d.log_index)
            .bind(d.block_number as i64)
            .bind(d.block_hash.as_slice())
            .bind(PENDING)
            .bind(d.due as i64)
            .bind(now)
            .bind(id)
            .execute(&mut *self.tx)
            .await
            .ctx("move deposit")?;
        }
        Ok(fresh)
    }

    /// Rows of earlier sightings of the transactions in `ds`, by hash (none
    /// for a block seen for the first time, the usual case).
    async fn earlier_rows(
        &mut self,
        ds: &[NewDeposit<'_>],
    ) -> Result<HashMap<B256, Vec<EarlierRow>>, StoreError> {
        let mut out: HashMap<B256, Vec<EarlierRow>> = HashMap::new();
        let Some(chain) = ds.first().map(|d| d.chain) else {
            return Ok(out);
        };
        let hashes: Vec<&B256> = ds
            .iter()
            .map(|d| &d.tx_hash)
            .collect::<HashSet<_>>()
            .into_iter()
            .collect();
        for chunk in hashes.chunks(500) {
            let mut q = QueryBuilder::<Any>::new(
                "SELECT id, tx_hash, log_index, symbol, address, from_address, amount, state, block_hash
                 FROM deposits WHERE chain = ",
            );
            q.push_bind(chain).push(" AND tx_hash IN (");
            push_list(&mut q, chunk.iter().map(|h| h.as_slice()));
            for r in q
                .build()
                .fetch_all(&mut *self.tx)
                .await
                .ctx("read earlier deposits")?
            {
                let hash = b256(r.get::<&[u8], _>(1), "deposits.tx_hash")?;
                out.entry(hash).or_default().push(EarlierRow {
                    id: r.get(0),
                    log_index: r.get(2),
                    symbol: r.get(3),
                    address: r.get(4),
                    from: r.get(5),
                    amount: r.get(6),
                    state: r.get(7),
                    block_hash: r.get(8),
                    claimed: false,
                });
            }
        }
        Ok(out)
    }

    /// A deposit already in the store, seen in a canonical block again.
    async fn deposit_seen_again(
        &mut self,
        d: &NewDeposit<'_>,
        now: i64,
    ) -> Result<DepositSeen, StoreError> {
        let existing: Option<(i64, Vec<u8>)> = sqlx::query_as(
            "SELECT state, block_hash FROM deposits WHERE chain = ? AND tx_hash = ? AND log_index = ?",
        )
        .bind(d.chain)
        .bind(d.tx_hash.as_slice())
        .bind(d.log_index)
        .fetch_optional(&mut *self.tx)
        .await
        .ctx("read deposit")?;
        let outcome = match existing {
            None => {
                return Err(StoreError::Corrupt {
                    what: "deposits (row vanished)",
                });
            }
            Some((PENDING, hash)) if hash == d.block_hash.as_slice() => {
                return Ok(DepositSeen::Known);
            }
            Some((CONFIRMED, _)) => return Ok(DepositSeen::Known),
            Some((FAILED, _)) => DepositSeen::Reopened,
            Some(_) => DepositSeen::Remined,
        };
        sqlx::query(
            "UPDATE deposits SET block_number = ?, block_hash = ?, state = ?, due = ?, updated_at = ?
             WHERE chain = ? AND tx_hash = ? AND log_index = ?",
        )
        .bind(d.block_number as i64)
        .bind(d.block_hash.as_slice())
        .bind(PENDING)
        .bind(d.due as i64)
        .bind(now)
        .bind(d.chain)
        .bind(d.tx_hash.as_slice())
        .bind(d.log_index)
        .execute(&mut *self.tx)
        .await
        .ctx("update deposit")?;
        Ok(outcome)
    }

    /// Marks pending deposits in blocks above `fork` as orphaned; returns how
    /// many. Deposits already confirmed there are returned by
    /// [`StoreTx::confirmed_above`] for the caller to report.
    pub async fn orphan_deposits_above(
        &mut self,
        chain: &str,
        fork: u64,
    ) -> Result<u64, StoreError> {
        let done = sqlx::query(
            "UPDATE deposits SET state = ?, updated_at = ? WHERE chain = ? AND state = ? AND block_number > ?",
        )
        .bind(ORPHANED)
        .bind(now_ms())
        .bind(chain)
        .bind(PENDING)
        .bind(fork as i64)
        .execute(&mut *self.tx)
        .await
        .ctx("orphan deposits")?;
        Ok(done.rows_affected())
    }

    /// Transactions of the orphaned deposits of `chain` (left the chain,
    /// waiting to be mined again).
    pub async fn orphaned_deposit_txs(&mut self, chain: &str) -> Result<Vec<B256>, StoreError> {
        let from = self
            .engine
            .indexed("deposits", "deposits_due", "deposits_due");
        let rows: Vec<Vec<u8>> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT DISTINCT tx_hash FROM {from} WHERE chain = ? AND state IN (0, 3) AND state = ?"
        )))
        .bind(chain)
        .bind(ORPHANED)
        .fetch_all(&mut *self.tx)
        .await
        .ctx("read orphaned deposits")?;
        rows.iter().map(|h| b256(h, "deposits.tx_hash")).collect()
    }

    /// Confirmed deposits in blocks above `fork`: a reorganisation deeper than
    /// the confirmation depth, which only an operator can sort out.
    pub async fn confirmed_above(
        &mut self,
        chain: &str,
        fork: u64,
    ) -> Result<Vec<B256>, StoreError> {
        let rows: Vec<Vec<u8>> = sqlx::query_scalar(
            "SELECT tx_hash FROM deposits WHERE chain = ? AND state = ? AND block_number > ?",
        )
        .bind(chain)
        .bind(CONFIRMED)
        .bind(fork as i64)
        .fetch_all(&mut *self.tx)
        .await
        .ctx("read confirmed deposits")?;
        rows.iter().map(|h| b256(h, "deposits.tx_hash")).collect()
    }

    /// Undecided deposits whose `due` height is at or below `height`.
    pub async fn due_deposits(
        &mut self,
        chain: &str,
        height: u64,
    ) -> Result<Vec<DueDeposit>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, tx_hash, symbol, address, from_address, amount, block_number, block_hash, state, log_index,
                    decimals
             FROM deposits WHERE chain = ? AND due <= ? AND state IN (0, 3) ORDER BY id",
        )
        .bind(chain)
        .bind(height as i64)
        .fetch_all(&mut *self.tx)
        .await
        .ctx("read due deposits")?;
        rows.iter()
            .map(|r| {
                let amount: String = r.get(5);
                Ok(DueDeposit {
                    id: r.get(0),
                    tx_hash: b256(r.get::<&[u8], _>(1), "deposits.tx_hash")?,
                    symbol: r.get(2),
                    address: address(r.get::<&[u8], _>(3), "deposits.address")?,
                    from: address(r.get::<&[u8], _>(4), "deposits.from_address")?,
                    amount: U256::from_str_radix(&amount, 10).map_err(|_| StoreError::Corrupt {
                        what: "deposits.amount",
                    })?,
                    block_number: r.get::<i64, _>(6) as u64,
                    block_hash: b256(r.get::<&[u8], _>(7), "deposits.block_hash")?,
                    orphaned: r.get::<i64, _>(8) == ORPHANED,
                    log_index: r.get(9),
                    decimals: r
                        .get::<Option<i64>, _>(10)
                        .and_then(|d| u8::try_from(d).ok()),
                })
            })
            .collect()
    }

    /// Decides a deposit: confirmed (`true`) or failed.
    pub async fn decide_deposit(&mut self, id: i64, confirmed: bool) -> Result<(), StoreError> {
        sqlx::query("UPDATE deposits SET state = ?, updated_at = ? WHERE id = ?")
            .bind(if confirmed { CONFIRMED } else { FAILED })
            .bind(now_ms())
            .bind(id)
            .execute(&mut *self.tx)
            .await
            .ctx("decide deposit")?;
        Ok(())
    }
}
