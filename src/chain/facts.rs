//! What a chain's payout sender reports, and the seam it reports through.
//!
//! Chain code signs and broadcasts; it does not decide which payout state
//! follows, and it knows nothing of responses. It reports each fact to a
//! [`PayoutFacts`] (listen's recorder, handed over by the daemon), which turns
//! the fact into payout state and the answers it causes in one store
//! transaction (docs/architecture.md, "One place decides"). Blocks, mined
//! payouts and reorganisations reach listen as [`super::ChainEvent`]s.

use crate::store::{Payout, SignedTx, StoreError};
use alloy::primitives::{Address, B256};
use futures::future::BoxFuture;

/// A payout the sender cannot pay, and why (in plain words, for the answer).
#[derive(Debug, Clone, Copy)]
pub struct Refusal<'a> {
    /// The payout, as the sender was handed it.
    pub payout: &'a Payout,
    /// Why.
    pub error: &'a str,
}

/// What the node said to one broadcast transaction.
#[derive(Debug, Clone)]
pub struct Broadcast<'a> {
    /// The transaction.
    pub tx: &'a SignedTx,
    /// `None` when the node took it; its words when it refused it.
    pub refused: Option<String>,
}

/// Where the payout sender reports what happened. Each call is one store
/// transaction; an error is the store's and stops the sender.
pub trait PayoutFacts: Send + Sync + std::fmt::Debug {
    /// The sender of `chain` starts: payouts claimed by one that stopped go
    /// back to the queue. Returns how many.
    fn restarted<'a>(&'a self, chain: &'a str) -> BoxFuture<'a, Result<u64, StoreError>>;

    /// `wallet` signed `signed` (each with its nonce) and cannot pay
    /// `refused`. The signed bytes are committed before this returns, and
    /// before any of them is broadcast. When some of the signed payouts were
    /// cancelled meanwhile nothing is committed and their ids are returned:
    /// the sender signs the rest again so that the nonces close up.
    fn signed<'a>(
        &'a self,
        wallet: Address,
        signed: &'a [(u64, &'a SignedTx)],
        refused: &'a [Refusal<'a>],
    ) -> BoxFuture<'a, Result<Vec<i64>, StoreError>>;

    /// Queued payouts the sender cannot pay.
    fn refused<'a>(&'a self, refused: &'a [Refusal<'a>]) -> BoxFuture<'a, Result<(), StoreError>>;

    /// What the node said to broadcast transactions.
    fn broadcast<'a>(
        &'a self,
        outcomes: &'a [Broadcast<'a>],
    ) -> BoxFuture<'a, Result<(), StoreError>>;

    /// A payout's transaction `old` was replaced by `new` (same nonce, higher
    /// fees, or a cancelling transfer), signed but not broadcast yet. `false`
    /// when `old` is no longer current (mined or replaced meanwhile): nothing
    /// changed, and `new` must not be broadcast.
    fn replaced<'a>(
        &'a self,
        old: B256,
        new: &'a SignedTx,
    ) -> BoxFuture<'a, Result<bool, StoreError>>;
}
