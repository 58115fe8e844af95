//! Requests: watch, unwatch, payouts (new, repeated or conflicting), cancel,
//! refusals. Each is recorded in the inbox first. Every request is idempotent:
//! a body seen before (a redelivery, or the same message sent again) moves
//! nothing and is answered with the current state.

use super::{Effects, Listen, ListenError};
use crate::msg::{Kind, Status, addr_hex, amount::format_units};
use crate::reply;
use crate::server::{Request, Routed};
use crate::store::{NewPayout, Outcome, Payout, PayoutState, StoreTx, WatchRow};
use crate::txlog::{Line, go_amount};
use std::collections::HashSet;
use tracing::{debug, info, warn};

use super::blocks::CANCELLED;

/// A payout's key: chain, kind, queue_id, order_id.
type PayoutKey = (String, Kind, String, String);

/// A payout's key as a database might compare it. MySQL and MariaDB compare
/// `queue_id` and `order_id` by the column's collation, which by default
/// ignores case and trailing spaces (and, in some, control characters),
/// where SQLite compares bytes: two keys the store could take for one have
/// the same loose key, so a batch looks the second up in the store (which
/// decides as it always did) instead of taking it for new. `None` for a key
/// with characters beyond ASCII, whose equivalences (accents, ligatures) are
/// the collation's to say: see [`NewPayouts::exact`].
fn loose_key(chain: &str, kind: Kind, queue_id: &str, order_id: &str) -> Option<PayoutKey> {
    fn loose(s: &str) -> Option<String> {
        if !s.is_ascii() {
            return None;
        }
        let kept: String = s
            .chars()
            .filter(|c| !c.is_ascii_control())
            .map(|c| c.to_ascii_lowercase())
            .collect();
        Some(kept.trim_end_matches(' ').to_owned())
    }
    Some((loose(chain)?, kind, loose(queue_id)?, loose(order_id)?))
}

/// The new payouts of one batch of requests, written together: a burst of
/// withdrawals costs a lookup and an insert per few hundred, not two
/// statements each (a round trip each on MySQL).
#[derive(Default)]
pub(super) struct NewPayouts<'r> {
    /// Loose keys ([`loose_key`]) of the payouts the store held when the
    /// batch began with one of the batch's `queue_id`s: a request with such
    /// a key is looked up one by one (a repeat, or a key reused with other
    /// content).
    stored: HashSet<PayoutKey>,
    /// New payouts not written yet, in request order.
    pending: Vec<&'r NewPayout>,
    /// Their loose keys.
    pending_keys: HashSet<PayoutKey>,
    /// From here on every payout request of the batch is looked up and
    /// written one by one, as before batching: set by a key beyond ASCII
    /// (stored or asked), which a collation may take for equal to another.
    exact: bool,
}

impl<'r> NewPayouts<'r> {
    /// Reads which of the payout requests in `requests` name a payout the
    /// store already holds.
    pub(super) async fn for_batch(
        tx: &mut StoreTx,
        requests: impl Iterator<Item = &'r Request>,
    ) -> Result<Self, ListenError> {
        let mut by_chain: std::collections::BTreeMap<&str, Vec<&str>> = Default::default();
        for r in requests {
            if let Routed::Payout(items) = &r.routed {
                for i in items {
                    by_chain.entry(&i.chain).or_default().push(&i.queue_id);
                }
            }
        }
        let mut stored = HashSet::new();
        let mut exact = false;
        for (chain, mut queue_ids) in by_chain {
            queue_ids.sort_unstable();
            queue_ids.dedup();
            for (kind, queue_id, order_id) in tx.payout_keys(chain, &queue_ids).await? {
                match loose_key(chain, kind, &queue_id, &order_id) {
                    Some(k) => {
                        stored.insert(k);
                    }
                    None => exact = true,
                }
            }
        }
        Ok(Self {
            stored,
            exact,
            ..Self::default()
        })
    }

    /// Writes the pending new payouts; done before anything reads payouts
    /// and before the batch commits.
    pub(super) async fn write(&mut self, tx: &mut StoreTx) -> Result<(), ListenError> {
        if !self.pending.is_empty() {
            tx.insert_payouts(&self.pending).await?;
            self.pending.clear();
        }
        Ok(())
    }

    /// The stored payout with `item`'s key: read from the store (after
    /// writing what is pending) only when the store may hold one, else
    /// `None` without a statement.
    async fn stored(
        &mut self,
        tx: &mut StoreTx,
        item: &NewPayout,
    ) -> Result<Option<Payout>, ListenError> {
        let may_hold = self.exact
            || loose_key(&item.chain, item.kind, &item.queue_id, &item.order_id)
                .is_none_or(|k| self.stored.contains(&k) || self.pending_keys.contains(&k));
        if !may_hold {
            return Ok(None);
        }
        // Its earlier request may be in this very batch.
        self.write(tx).await?;
        Ok(tx
            .payout_by_key(&item.chain, item.kind, &item.queue_id, &item.order_id)
            .await?)
    }

    /// Queues `item`, a new payout, to be written with the others; one
    /// whose key is beyond ASCII is written at once, as is everything
    /// after it ([`NewPayouts::exact`]).
    async fn queue(&mut self, tx: &mut StoreTx, item: &'r NewPayout) -> Result<(), ListenError> {
        self.pending.push(item);
        match loose_key(&item.chain, item.kind, &item.queue_id, &item.order_id) {
            Some(k) => {
                self.pending_keys.insert(k);
            }
            None => self.exact = true,
        }
        if self.exact {
            self.write(tx).await?;
        }
        Ok(())
    }
}

impl Listen {
    /// Applies one request inside `tx`; its inbox row is already recorded.
    /// `repeat` says the very same body was recorded before. Watches to add
    /// are collected in `adds`, and new payouts in `payouts`, each written in
    /// few statements before anything that could read them.
    pub(super) async fn apply_request<'r>(
        &mut self,
        tx: &mut StoreTx,
        r: &'r Request,
        repeat: bool,
        adds: &mut Vec<&'r WatchRow>,
        payouts: &mut NewPayouts<'r>,
        fx: &mut Effects,
    ) -> Result<(), ListenError> {
        let (outcome, _) = inbox_outcome(r);
        self.metrics.request(r.kind, outcome);
        fx.lines.extend(request_lines(r));
        match &r.routed {
            Routed::Watch(w) => {
                // Only an address not yet watched is appended to the store's
                // watch log; a repeat (a redelivery) changes nothing, so it
                // cannot undo a remove applied since.
                let new = !repeat
                    && self.watches.get_mut(&w.chain).is_some_and(|set| {
                        !set.contains(&w.address, &w.symbol) && set.insert(w.address, &w.symbol)
                    });
                if new {
                    adds.push(w);
                }
                // Per-address logs and the inbox record every topup; the main
                // log would drown in them at thousands a second.
                debug!(target: "m2pool::listen", chain = %w.chain, symbol = %w.symbol,
                      address = %addr_hex(&w.address), new, "address watched");
                self.count_watches();
            }
            Routed::Unwatch(w) => {
                // An earlier topup of this batch may have added it.
                self.add_watches(tx, adds, fx).await?;
                // A repeat changes nothing: it cannot undo a topup applied since.
                let removed = !repeat
                    && self
                        .watches
                        .get_mut(&w.chain)
                        .is_some_and(|set| set.remove(w.address, &w.symbol));
                if removed {
                    tx.unwatch(w).await?;
                }
                info!(target: "m2pool::listen", chain = %w.chain, symbol = %w.symbol,
                      address = %addr_hex(&w.address), removed, "remove request");
                self.count_watches();
                // The same remove again (a redelivery) answers as it did the
                // first time: `1` if that removed the address, the same `0`
                // if it was not watched then.
                let (status, error) = if removed {
                    (Status::Success, None)
                } else if repeat {
                    match tx.refusal(&r.body_hash).await? {
                        Some(error) => (Status::Failed, Some(error)),
                        None => (Status::Success, None),
                    }
                } else {
                    let error = format!("address is not watched for {} {}", w.chain, w.symbol);
                    tx.refuse_request(&r.body_hash, &error).await?;
                    (Status::Failed, Some(error))
                };
                let reply = reply::remove(&w.address, &w.chain, &w.symbol, None, status, error);
                fx.push(reply);
            }
            Routed::Cancel { watch, queue_id } => {
                // An earlier request of this batch may have queued them.
                payouts.write(tx).await?;
                self.cancel(tx, r, watch, queue_id, repeat, fx).await?
            }
            Routed::Payout(items) => self.payouts(tx, items, payouts, fx).await?,
            Routed::Refuse { replies, error, .. } => {
                warn!(target: "m2pool::listen", kind = %r.kind, error = %error, "request refused");
                for reply in replies {
                    fx.push(reply.clone());
                }
            }
            Routed::Unaddressable { reason } => {
                // A redelivery was dead-lettered the first time.
                if self.dead_letters && !repeat {
                    // Dead letters keep their place among the responses.
                    fx.flush(tx).await?;
                    tx.push_dead_letter(r.kind.as_str(), &r.body, reason)
                        .await?;
                    fx.replies += 1;
                }
                warn!(target: "m2pool::listen", kind = %r.kind, reason = %reason, dead_lettered = self.dead_letters,
                      "request cannot be answered");
            }
        }
        Ok(())
    }

    /// New payouts are queued; a repeat of a known one republishes its current
    /// state; the same key with other content is refused (the stored payout is
    /// not touched).
    async fn payouts<'r>(
        &mut self,
        tx: &mut StoreTx,
        items: &'r [NewPayout],
        batch: &mut NewPayouts<'r>,
        fx: &mut Effects,
    ) -> Result<(), ListenError> {
        for item in items {
            let decimals = item.decimals;
            match batch.stored(tx, item).await? {
                None => {
                    batch.queue(tx, item).await?;
                    info!(target: "m2pool::listen", kind = %item.kind, queue_id = %item.queue_id,
                          order_id = %item.order_id, symbol = %item.symbol, "payout queued");
                    if !fx.payout_chains.contains(&item.chain) {
                        fx.payout_chains.push(item.chain.clone());
                    }
                }
                Some(p) if p.content_hash == item.content_hash => {
                    info!(target: "m2pool::listen", id = p.id, queue_id = %p.queue_id, order_id = %p.order_id,
                          state = p.state.as_str(), "repeated payout request; republishing its state");
                    if let Some(reply) = current_state(&p, self.tokens.of_payout(&p)) {
                        fx.push(reply);
                    }
                }
                Some(p) => {
                    let ids = if p.order_id.is_empty() {
                        format!("queue_id `{}`", p.queue_id)
                    } else {
                        format!("queue_id `{}` with order_id `{}`", p.queue_id, p.order_id)
                    };
                    let error = format!(
                        "{ids} is already used by a different request; that request is not affected and nothing was paid for this one"
                    );
                    warn!(target: "m2pool::listen", queue_id = %p.queue_id, order_id = %p.order_id,
                          "payout request reuses a key with other content; refused");
                    let reply = reply::new_payout(item, Status::Failed, Some(error), decimals);
                    fx.push(reply);
                }
            }
        }
        Ok(())
    }

    /// Cancels the payouts of `queue_id` that are still queued, and those the
    /// node has refused for longer than `stuck_payout_secs` (by giving their
    /// nonce to a zero-value transfer: decided when that is final).
    ///
    /// A repeat (a redelivery, or the very same request again) moves
    /// nothing: it is answered as the first time when that was a refusal,
    /// else with where the payouts stand now.
    async fn cancel(
        &mut self,
        tx: &mut StoreTx,
        r: &Request,
        w: &WatchRow,
        queue_id: &str,
        repeat: bool,
        fx: &mut Effects,
    ) -> Result<(), ListenError> {
        if repeat && let Some(error) = tx.refusal(&r.body_hash).await? {
            fx.push(reply::remove(
                &w.address,
                &w.chain,
                &w.symbol,
                Some(queue_id.to_owned()),
                Status::Failed,
                Some(error),
            ));
            return Ok(());
        }
        let payouts = tx.payouts_by_queue_id(&w.chain, queue_id).await?;
        let mut cancelled = 0usize;
        let mut cancelling: Vec<String> = Vec::new();
        let mut late: Vec<String> = Vec::new();
        let now = crate::clock::now_ms();
        for p in &payouts {
            // Cancelled before (the same cancel again): answered as then.
            let now_cancelled = p.state == PayoutState::Queued
                && !repeat
                && tx
                    .move_payout(
                        p.id,
                        PayoutState::Queued,
                        PayoutState::Cancelled,
                        Some(CANCELLED),
                    )
                    .await?;
            if now_cancelled || p.state == PayoutState::Cancelled {
                cancelled += 1;
                let reply = reply::payout(
                    p,
                    Status::Failed,
                    Some(CANCELLED.to_owned()),
                    self.tokens.of_payout(p),
                );
                fx.push(reply);
                info!(target: "m2pool::listen", id = p.id, queue_id, order_id = %p.order_id,
                      again = !now_cancelled, "payout cancelled");
                continue;
            }
            let what = if p.order_id.is_empty() {
                format!("the {}", p.kind)
            } else {
                format!("order_id `{}`", p.order_id)
            };
            let refused_long = p
                .refused_at
                .is_some_and(|at| now - at >= self.rules(&p.chain).stuck_after_ms);
            if matches!(p.state, PayoutState::Signed | PayoutState::Sent)
                && (p.cancel_requested || (refused_long && !repeat))
            {
                if !p.cancel_requested && !repeat && tx.request_cancel(p.id).await? {
                    warn!(target: "m2pool::listen", id = p.id, queue_id, order_id = %p.order_id,
                          nonce = p.nonce.unwrap_or_default(),
                          "cancelling a payout the node keeps refusing: its nonce goes to a zero-value transfer");
                    if !fx.payout_chains.contains(&p.chain) {
                        fx.payout_chains.push(p.chain.clone());
                    }
                }
                cancelling.push(format!(
                    "{what} is being cancelled: the node refused its transaction, so nonce {} goes to a \
                     zero-value transfer to the wallet itself; it is answered 0 (cancelled) once that is \
                     final, or 1 if it is mined itself first",
                    p.nonce.unwrap_or_default()
                ));
                continue;
            }
            late.push(match (p.tx_hash, p.state) {
                (Some(h), _) => format!("{what} is already signed or broadcast (tx {h:#x})"),
                (None, PayoutState::Claimed) => format!("{what} is being signed now"),
                (None, state) => format!("{what} is already {}", state.as_str()),
            });
        }
        // Partly cancelled (a batch with some transfers already signed) is
        // status 1, with the error naming what was not cancelled.
        let (status, error) = if payouts.is_empty() {
            (
                Status::Failed,
                Some(format!(
                    "no withdrawal or payment with queue_id `{queue_id}` is known"
                )),
            )
        } else if late.is_empty() && cancelling.is_empty() {
            (Status::Success, None)
        } else if late.is_empty() {
            (Status::Success, Some(cancelling.join("; ")))
        } else if cancelled == 0 && cancelling.is_empty() {
            (
                Status::Failed,
                Some(format!(
                    "cannot cancel queue_id `{queue_id}`: {}",
                    late.join("; ")
                )),
            )
        } else {
            let done = cancelling
                .into_iter()
                .chain(std::iter::once(format!("cancelled {cancelled}")))
                .collect::<Vec<_>>()
                .join("; ");
            (
                Status::Success,
                Some(format!("{done}, but {}", late.join("; "))),
            )
        };
        if status == Status::Failed
            && !repeat
            && let Some(e) = &error
        {
            tx.refuse_request(&r.body_hash, e).await?;
        }
        let reply = reply::remove(
            &w.address,
            &w.chain,
            &w.symbol,
            Some(queue_id.to_owned()),
            status,
            error,
        );
        fx.push(reply);
        Ok(())
    }
}

/// How a request is recorded in the inbox: its outcome and why.
pub(super) fn inbox_outcome(r: &Request) -> (Outcome, Option<&str>) {
    match &r.routed {
        Routed::Refuse { outcome, error, .. } => (*outcome, Some(error.as_str())),
        Routed::Unaddressable { reason } => (Outcome::Unaddressable, Some(reason.as_str())),
        _ => (Outcome::Accepted, None),
    }
}

/// The response that tells a repeated request where its payout stands; `None`
/// while it is being signed (its answer is still to come).
fn current_state(p: &Payout, decimals: u8) -> Option<crate::reply::Reply> {
    match p.state {
        PayoutState::Sent | PayoutState::Mined => {
            Some(reply::payout(p, Status::Pending, None, decimals))
        }
        PayoutState::Confirmed => Some(reply::payout(p, Status::Success, None, decimals)),
        PayoutState::Failed | PayoutState::Refused | PayoutState::Cancelled => {
            Some(reply::payout(p, Status::Failed, p.error.clone(), decimals))
        }
        PayoutState::Queued | PayoutState::Claimed | PayoutState::Signed => None,
    }
}

/// The lines a routed request writes: one per request (one per transfer of a
/// batch payment), in the file of its `address` (topup, remove) or
/// `from_address` (withdraw, pay). Refused requests are seen in their
/// response lines.
fn request_lines(r: &Request) -> Vec<Line> {
    let watch = |kind: &str, w: &WatchRow| Line {
        file: addr_hex(&w.address),
        kind: kind.to_owned(),
        from: String::new(),
        to: addr_hex(&w.address),
        chain: w.chain.clone(),
        symbol: w.symbol.clone(),
        amount: "0".into(),
    };
    match &r.routed {
        Routed::Watch(w) => vec![watch("TopupReq", w)],
        Routed::Unwatch(w) | Routed::Cancel { watch: w, .. } => vec![watch("RemoveReq", w)],
        Routed::Payout(items) => items
            .iter()
            .map(|p| Line {
                file: addr_hex(&p.from),
                kind: match p.kind {
                    Kind::Pay => "PayReq",
                    _ => "WithdrawReq",
                }
                .to_owned(),
                from: addr_hex(&p.from),
                to: addr_hex(&p.to),
                chain: p.chain.clone(),
                symbol: p.symbol.clone(),
                amount: go_amount(&format_units(p.amount, p.decimals)),
            })
            .collect(),
        Routed::Refuse { .. } | Routed::Unaddressable { .. } => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::loose_key;
    use crate::msg::Kind;

    #[test]
    fn keys_a_collation_may_take_for_one_have_one_loose_key() {
        let k = |q: &str, o: &str| loose_key("ETH", Kind::Pay, q, o);
        assert_eq!(k("Order-1", "A"), k("order-1", "a"));
        assert_eq!(k("order-1  ", "a "), k("order-1", "a"));
        assert_eq!(k("order\u{1}-1", "a"), k("order-1", "a"));
        assert_ne!(k("order-1", "a"), k("order-2", "a"));
        assert_ne!(k(" order-1", "a"), k("order-1", "a"));
        assert_ne!(
            loose_key("ETH", Kind::Withdraw, "w", ""),
            loose_key("ETH", Kind::Pay, "w", "")
        );
        // Beyond ASCII the collation alone knows: looked up, never assumed new.
        assert_eq!(k("né", "a"), None);
        assert_eq!(k("ne", "ä"), None);
    }
}
