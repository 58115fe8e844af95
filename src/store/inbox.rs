//! The inbox: every request as received, with how it ended. A body seen
//! before is a redelivery or a repeat; accepted topups skip the unique
//! body-hash index (migration 0005) and are told apart by listen.

use super::{Ctx, Engine, ROWS_PER_STATEMENT, Store, StoreError, StoreTx, now_ms, push_list};
use sqlx::{Any, QueryBuilder};
use std::collections::HashSet;

/// How a request ended, as recorded in the inbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Valid and applied.
    Accepted,
    /// Valid signature, refused (answered with status 0).
    Refused,
    /// Signature did not verify (answered with status 3).
    BadSignature,
    /// Could not be answered (no address or queue id to answer to).
    Unaddressable,
}

impl Outcome {
    /// Stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Accepted => "accepted",
            Outcome::Refused => "refused",
            Outcome::BadSignature => "bad_signature",
            Outcome::Unaddressable => "unaddressable",
        }
    }
}

/// The condition of the inbox's unique body-hash index: every request but an
/// accepted topup (migration 0005). A query that looks a body up repeats it
/// word for word, so that SQLite uses the index.
const DEDUPED: &str = "(kind <> 'topup' OR outcome <> 'accepted')";

/// Whether request `r` is deduplicated by its body: every request but an
/// accepted topup ([`DEDUPED`]).
fn deduped(r: &InboxRow<'_>) -> bool {
    r.kind != "topup" || r.outcome != Outcome::Accepted
}

/// A request to record in the inbox.
#[derive(Debug, Clone, Copy)]
pub struct InboxRow<'a> {
    /// Request kind.
    pub kind: &'a str,
    /// sha256 of kind and body.
    pub body_hash: &'a [u8; 32],
    /// The body as received.
    pub body: &'a [u8],
    /// How it ended.
    pub outcome: Outcome,
    /// Why, when refused.
    pub error: Option<&'a str>,
}

impl Store {
    /// Body hashes of the last `limit` accepted topups, newest first: a
    /// redelivery of one of them is a repeat (see [`DEDUPED`] for why they
    /// are not looked up by body).
    pub async fn recent_topups(&self, limit: u32) -> Result<Vec<[u8; 32]>, StoreError> {
        let rows: Vec<Vec<u8>> = sqlx::query_scalar(
            "SELECT body_hash FROM inbox WHERE kind = 'topup' AND outcome = 'accepted'
             ORDER BY id DESC LIMIT ?",
        )
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .ctx("read recent topups")?;
        Ok(rows
            .iter()
            .filter_map(|h| <[u8; 32]>::try_from(h.as_slice()).ok())
            .collect())
    }
}

impl StoreTx {
    /// Records requests; returns the hashes that are new. A hash recorded
    /// before (a redelivery), or earlier in the same call, is not returned,
    /// except for accepted topups: they are not looked up (see [`DEDUPED`])
    /// and are always new.
    pub async fn record_requests(
        &mut self,
        rows: &[InboxRow<'_>],
    ) -> Result<HashSet<[u8; 32]>, StoreError> {
        let now = now_ms();
        let mut new = HashSet::with_capacity(rows.len());
        // MySQL: the deduplicated hashes met so far in this call.
        let mut seen: HashSet<&[u8; 32]> = HashSet::new();
        for chunk in rows.chunks(ROWS_PER_STATEMENT) {
            let insert = |rows: &[&InboxRow<'_>]| {
                let mut q = QueryBuilder::<Any>::new(
                    "INSERT INTO inbox (kind, body_hash, body, outcome, error, received_at) ",
                );
                q.push_values(rows, |mut b, r| {
                    b.push_bind(r.kind)
                        .push_bind(r.body_hash.as_slice())
                        .push_bind(r.body)
                        .push_bind(r.outcome.as_str())
                        .push_bind(r.error)
                        .push_bind(now);
                });
                q
            };
            match self.engine {
                // The conflict target names the partial unique index by its
                // predicate; the rows inserted come back.
                Engine::Sqlite => {
                    let all: Vec<&InboxRow<'_>> = chunk.iter().collect();
                    let mut q = insert(&all);
                    if !chunk.iter().any(deduped) {
                        // Accepted topups alone (a burst's usual chunk): all
                        // new, so nothing needs to come back.
                        q.build().execute(&mut *self.tx).await.ctx("insert inbox")?;
                        new.extend(chunk.iter().map(|r| *r.body_hash));
                        continue;
                    }
                    q.push(" ON CONFLICT (body_hash) WHERE ")
                        .push(DEDUPED)
                        .push(" DO NOTHING RETURNING body_hash");
                    let hashes: Vec<Vec<u8>> = q
                        .build_query_scalar()
                        .fetch_all(&mut *self.tx)
                        .await
                        .ctx("insert inbox")?;
                    new.extend(
                        hashes
                            .iter()
                            .filter_map(|h| <[u8; 32]>::try_from(h.as_slice()).ok()),
                    );
                }
                // No RETURNING: the deduplicated hashes already stored are
                // read first (under the unique index), and only the rest is
                // inserted; a row another writer slipped in meanwhile fails
                // the insert rather than passing for new.
                Engine::MySql => {
                    let asked: Vec<&[u8; 32]> = chunk
                        .iter()
                        .filter(|r| deduped(r))
                        .map(|r| r.body_hash)
                        .collect();
                    let stored: HashSet<Vec<u8>> = if asked.is_empty() {
                        HashSet::new()
                    } else {
                        let mut q = QueryBuilder::<Any>::new(
                            "SELECT deduped FROM inbox WHERE deduped IN (",
                        );
                        push_list(&mut q, asked.iter().map(|h| h.as_slice()));
                        q.build_query_scalar()
                            .fetch_all(&mut *self.tx)
                            .await
                            .ctx("look up inbox")?
                            .into_iter()
                            .collect()
                    };
                    let fresh: Vec<&InboxRow<'_>> = chunk
                        .iter()
                        .filter(|r| {
                            !deduped(r)
                                || (!stored.contains(r.body_hash.as_slice())
                                    && seen.insert(r.body_hash))
                        })
                        .collect();
                    if fresh.is_empty() {
                        continue;
                    }
                    insert(&fresh)
                        .build()
                        .execute(&mut *self.tx)
                        .await
                        .ctx("insert inbox")?;
                    new.extend(fresh.iter().map(|r| *r.body_hash));
                }
            }
        }
        Ok(new)
    }

    /// Records that the request with `body_hash`, accepted when it was
    /// routed, was refused when applied (a remove of an address that was not
    /// watched), so that a redelivery is answered alike.
    pub async fn refuse_request(
        &mut self,
        body_hash: &[u8; 32],
        error: &str,
    ) -> Result<(), StoreError> {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "UPDATE inbox SET outcome = ?, error = ? WHERE body_hash = ? AND {DEDUPED}"
        )))
        .bind(Outcome::Refused.as_str())
        .bind(error)
        .bind(body_hash.as_slice())
        .execute(&mut *self.tx)
        .await
        .ctx("record refusal")?;
        Ok(())
    }

    /// The error of the request with `body_hash` if it was refused.
    pub async fn refusal(&mut self, body_hash: &[u8; 32]) -> Result<Option<String>, StoreError> {
        let error: Option<Option<String>> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT error FROM inbox WHERE body_hash = ? AND outcome = ? AND {DEDUPED}"
        )))
        .bind(body_hash.as_slice())
        .bind(Outcome::Refused.as_str())
        .fetch_optional(&mut *self.tx)
        .await
        .ctx("read refusal")?;
        Ok(error.flatten())
    }
}
