//! Replacing a payout's transaction: the same nonce, both fee fields raised by
//! at least 12.5% (what nodes require of a replacement) up to the fee
//! ceiling. A stuck payout is replaced by the same transfer; a payout the
//! node keeps refusing and a remove cancels is replaced by a zero-value
//! transfer to the wallet itself, which takes its nonce so the wallet's
//! later payouts go on. Every transaction signed for a payout stays known,
//! and whichever is mined and confirmed decides the payout's answer.

use super::actor::{Actor, ActorError};
use super::check::reservation;
use super::sign::{self, Draft};
use crate::msg::hash_hex;
use crate::store::{Payout, SignedTx};
use alloy::primitives::U256;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// `v` raised by 12.5%, rounded up.
fn bumped(v: u128) -> u128 {
    v.saturating_add(v.div_ceil(8)).max(v.saturating_add(1))
}

/// The fees of a replacement for a transaction signed with `old`, given the
/// node's estimate and the ceiling; `None` when the ceiling leaves no room.
pub(super) fn replacement_fees(
    old: (u128, u128),
    estimate: (u128, u128),
    ceiling: u128,
) -> Option<(u128, u128)> {
    let (min_max, min_prio) = (bumped(old.0), bumped(old.1));
    let max_fee = min_max.max(estimate.0).min(ceiling);
    let priority = min_prio.max(estimate.1).min(max_fee);
    (max_fee >= min_max && priority >= min_prio).then_some((max_fee, priority))
}

impl Actor {
    /// Replaces payout `p`'s current transaction `old`, if it is still
    /// current, with the same transfer at higher fees, or (`cancel`) with a
    /// zero-value transfer to the wallet itself.
    pub(super) async fn replace(
        &mut self,
        p: Payout,
        old: SignedTx,
        cancel: bool,
        shutdown: &CancellationToken,
    ) -> Result<(), ActorError> {
        let Some(nonce) = p.nonce else { return Ok(()) };
        let (ceiling, model) = (
            self.deps.cfg.payout.max_fee_per_gas,
            self.deps.cfg.fee_model,
        );
        let Some(estimate) = self
            .patiently("fees", shutdown, |rpc| sign::fees(rpc, ceiling, model))
            .await
        else {
            return Ok(());
        };
        let Some(fees) =
            replacement_fees((old.max_fee_per_gas, old.priority_fee), estimate, ceiling)
        else {
            warn!(target: "m2pool::payout", id = p.id, tx = %hash_hex(&old.tx_hash), ceiling,
                  "stuck payout is at the fee ceiling; it is broadcast again as it is");
            return Ok(());
        };
        let draft = if cancel {
            Draft::ether(self.wallet, U256::ZERO, self.deps.cfg.payout.gas_limit_eth)
        } else {
            let Some(draft) = super::check::draft(&self.deps.cfg, &p, old.gas_limit) else {
                return Ok(());
            };
            draft
        };
        let key = match self
            .deps
            .wallets
            .signer(&self.deps.kek, &self.deps.chain, self.wallet)
            .await
        {
            Ok(Some(s)) => match sign::BatchKey::of(&s) {
                Ok(key) => key,
                Err(e) => {
                    warn!(target: "m2pool::payout", id = p.id, error = %e, "the wallet's key cannot be used");
                    return Ok(());
                }
            },
            Ok(None) => return Ok(()),
            Err(e) => {
                warn!(target: "m2pool::payout", id = p.id, error = %e, "cannot sign a replacement now");
                return Ok(());
            }
        };
        let new = match sign::sign(&key, self.sign_for(), &p, nonce, draft, fees) {
            Ok(t) => SignedTx {
                cancels: cancel,
                ..t
            },
            Err(e) => {
                warn!(target: "m2pool::payout", id = p.id, error = %e, "signing a replacement failed");
                return Ok(());
            }
        };
        drop(key);
        if !self.deps.facts.replaced(old.tx_hash, &new).await? {
            // Mined, or replaced already, in the meantime.
            return Ok(());
        }
        self.inflight
            .insert(nonce, reservation(&self.deps.cfg, &p, &new));
        if cancel {
            info!(target: "m2pool::payout", id = p.id, queue_id = %p.queue_id, order_id = %p.order_id, nonce,
                  old = %hash_hex(&old.tx_hash), new = %hash_hex(&new.tx_hash),
                  max_fee_per_gas = fees.0, priority_fee = fees.1,
                  "payout being cancelled: its nonce goes to a zero-value transfer to the wallet itself");
        } else {
            info!(target: "m2pool::payout", id = p.id, queue_id = %p.queue_id, order_id = %p.order_id, nonce,
                  old = %hash_hex(&old.tx_hash), new = %hash_hex(&new.tx_hash),
                  max_fee_per_gas = fees.0, priority_fee = fees.1, "stuck payout replaced");
        }
        let result = sign::broadcast(&self.endpoints, &[&new])
            .await
            .pop()
            .unwrap_or_else(|| Err(sign::SendError::Unreached("no answer".to_owned())));
        self.deps
            .facts
            .broadcast(&[super::outcome(&new, result)])
            .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replacements_raise_both_fees_by_an_eighth_within_the_ceiling() {
        // The estimate is lower: the bump decides.
        assert_eq!(
            replacement_fees((800, 80), (100, 10), 10_000),
            Some((900, 90))
        );
        // The estimate is higher: it decides.
        assert_eq!(
            replacement_fees((800, 80), (5_000, 500), 10_000),
            Some((5_000, 500))
        );
        // Rounding up: 12.5% of 1 is still 1.
        assert_eq!(replacement_fees((1, 1), (0, 0), 100), Some((2, 2)));
        // The ceiling caps the estimate but never goes below the bump.
        assert_eq!(
            replacement_fees((800, 80), (5_000, 500), 1_000),
            Some((1_000, 500))
        );
        assert_eq!(replacement_fees((950, 80), (100, 10), 1_000), None);
    }
}
