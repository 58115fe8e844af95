//! Chain events: each verified block moves the cursor, records the deposits to
//! watched addresses and the payouts that were mined in it, and decides what
//! has become `confirm_height` deep; a reorganisation takes back what was in
//! the blocks that left the chain.

use super::{Effects, Listen, ListenError};
use crate::chain::{ChainEvent, OwnTx, Transfer};
use crate::msg::{Status, addr_hex, hash_hex};
use crate::reply::{self, DepositFacts};
use crate::store::{
    BlockRef, DepositSeen, DueDeposit, Mined, NewDeposit, Payout, PayoutState, StoreTx,
};
use crate::wallet::{LedgerEntry, Movement};
use alloy::primitives::{Address, B256, I256, U256};
use std::collections::HashMap;
use tracing::{error, info, warn};

/// Log index of a payout's debit and of its fee in the ledger.
const PAYOUT_LOG_INDEX: i64 = -1;
const FEE_LOG_INDEX: i64 = -2;

/// An `ethnode.log` line about a deposit.
fn node_line(kind: &str, f: &DepositFacts<'_>) -> crate::txlog::Line {
    crate::txlog::node_line(
        kind,
        addr_hex(&f.from),
        addr_hex(&f.address),
        f.chain,
        f.symbol,
        crate::txlog::go_amount(&crate::msg::amount::format_units(f.amount, f.decimals)),
    )
}

/// The `error` of a payout cancelled by giving its nonce to a zero-value
/// transfer, as of one cancelled before signing.
pub(super) const CANCELLED: &str = "cancelled";

/// Whether mined transaction `o` paid payout `p`: for a token (`contract`),
/// its receipt must log the `Transfer` of exactly that amount from the payer
/// to the recipient; a token whose `transfer` returns `false` (many do, and
/// revert nothing) logs none; the network's native coin (`native`) needs no
/// log. The error says what was missing.
pub(super) fn paid(
    p: &Payout,
    native: bool,
    contract: Option<Address>,
    o: &OwnTx,
) -> Result<(), String> {
    if !o.success || native {
        return Ok(());
    }
    let Some(contract) = contract else {
        return Err(format!(
            "the contract of {} is no longer known, so the transfer cannot be checked; check it by hand",
            p.symbol
        ));
    };
    let payer = p.payer.unwrap_or(o.from);
    let moved = o
        .token_moves
        .iter()
        .any(|m| m.contract == contract && m.from == payer && m.to == p.to && m.value == p.amount);
    if moved {
        Ok(())
    } else {
        Err(format!(
            "the {} contract did not transfer the amount (its transfer returned without a Transfer of it \
             from {} to {}); nothing was paid (gas was spent)",
            p.symbol,
            addr_hex(&payer),
            addr_hex(&p.to)
        ))
    }
}

fn negative(v: U256) -> I256 {
    I256::try_from(v).map(|v| -v).unwrap_or(I256::MIN)
}

impl Listen {
    pub(super) async fn apply_event(
        &mut self,
        tx: &mut StoreTx,
        event: ChainEvent,
        fx: &mut Effects,
    ) -> Result<(), ListenError> {
        match event {
            ChainEvent::Block {
                chain,
                block,
                transfers,
                own,
            } => {
                tx.push_block(&chain, &block, self.rules(&chain).keep)
                    .await?;
                let seen: Vec<(u64, B256, &Transfer)> = transfers
                    .iter()
                    .map(|t| (block.number, block.hash, t))
                    .collect();
                self.deposits_seen(tx, &chain, &seen, fx).await?;
                self.own_txs_mined(tx, &chain, &block, &own).await?;
                self.decide_due(tx, &chain, block.number, fx).await?;
                for p in tx.due_payouts(&chain, block.number).await? {
                    self.decide_payout(tx, &chain, p, fx).await?;
                }
                Ok(())
            }
            ChainEvent::Reorg { chain, fork } => self.reorg(tx, &chain, &fork, fx).await,
            ChainEvent::Lookback {
                chain,
                upto,
                transfers,
            } => self.looked_back(tx, &chain, upto, &transfers, fx).await,
        }
    }

    /// Applies what a lookback found: each transfer to an address still
    /// watched, in a block still on the chain as applied, is a deposit seen
    /// like any other (a transfer the forward scan saw already is known and
    /// answered nothing); one already deep enough is decided at once.
    async fn looked_back(
        &mut self,
        tx: &mut StoreTx,
        chain: &str,
        upto: i64,
        transfers: &[(u64, B256, Transfer)],
        fx: &mut Effects,
    ) -> Result<(), ListenError> {
        let mut seen: Vec<(u64, B256, &Transfer)> = Vec::with_capacity(transfers.len());
        for (number, hash, t) in transfers {
            let watched = self
                .watches
                .get(chain)
                .is_some_and(|set| set.contains(&t.to, &t.symbol));
            // A block another fork replaced since: the scan reads the new one.
            if watched && tx.is_canonical(chain, *number, *hash).await? {
                seen.push((*number, *hash, t));
            }
        }
        if !seen.is_empty() {
            info!(target: "m2pool::listen", chain, deposits = seen.len(), "deposits found by looking back");
            self.deposits_seen(tx, chain, &seen, fx).await?;
            if let Some(&cursor) = self.cursors.get(chain) {
                self.decide_due(tx, chain, cursor, fx).await?;
            }
        }
        tx.set_lookback_done(chain, upto).await?;
        Ok(())
    }

    /// Decides every deposit due at `height`.
    async fn decide_due(
        &mut self,
        tx: &mut StoreTx,
        chain: &str,
        height: u64,
        fx: &mut Effects,
    ) -> Result<(), ListenError> {
        for d in tx.due_deposits(chain, height).await? {
            let tx_hash = d.tx_hash;
            self.decide_deposit(tx, chain, d, fx).await?;
            if let Some(set) = self.orphaned.get_mut(chain) {
                set.remove(&tx_hash);
            }
        }
        Ok(())
    }

    /// Records transfers to watched addresses (each with its block's number
    /// and hash) in one statement batch and answers `2` for each one seen
    /// for the first time.
    async fn deposits_seen(
        &self,
        tx: &mut StoreTx,
        chain: &str,
        transfers: &[(u64, B256, &Transfer)],
        fx: &mut Effects,
    ) -> Result<(), ListenError> {
        let Some(set) = self.watches.get(chain) else {
            return Ok(());
        };
        let orphaned = self.orphaned.get(chain);
        let deposits: Vec<NewDeposit<'_>> = transfers
            .iter()
            .filter_map(|&(number, hash, t)| {
                if set.contains(&t.to, &t.symbol) {
                    Some((number, hash, t, false))
                } else if orphaned.is_some_and(|o| o.contains(&t.tx_hash)) {
                    Some((number, hash, t, true))
                } else {
                    None
                }
            })
            .map(|(number, hash, t, known_only)| NewDeposit {
                chain,
                tx_hash: t.tx_hash,
                log_index: t.log_index,
                symbol: &t.symbol,
                address: t.to,
                from: t.from,
                amount: t.value,
                block_number: number,
                block_hash: hash,
                due: number + self.rules(chain).confirm_height,
                decimals: self.tokens.decimals(chain, &t.symbol),
                known_only,
            })
            .collect();
        if deposits.is_empty() {
            return Ok(());
        }
        let outcomes = tx.deposits_seen(&deposits).await?;
        for (d, seen) in deposits.iter().zip(outcomes) {
            if d.known_only && seen == DepositSeen::Known {
                // A transfer of an orphaned transaction that is no deposit.
                continue;
            }
            info!(target: "m2pool::listen", chain, symbol = %d.symbol, address = %addr_hex(&d.address),
                  tx = %hash_hex(&d.tx_hash), block = d.block_number, ?seen, "deposit seen");
            if matches!(seen, DepositSeen::New | DepositSeen::Reopened) {
                let facts = DepositFacts {
                    chain,
                    symbol: d.symbol,
                    decimals: self.tokens.decimals(chain, d.symbol),
                    address: d.address,
                    from: d.from,
                    amount: d.amount,
                    tx_hash: d.tx_hash,
                    block: d.block_number,
                };
                fx.lines.push(node_line("DepositSeen", &facts));
                fx.push(reply::deposit(&facts, Status::Pending, None));
                self.metrics
                    .deposits_seen
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        }
        Ok(())
    }

    async fn decide_deposit(
        &self,
        tx: &mut StoreTx,
        chain: &str,
        d: DueDeposit,
        fx: &mut Effects,
    ) -> Result<(), ListenError> {
        let canonical = !d.orphaned && tx.is_canonical(chain, d.block_number, d.block_hash).await?;
        tx.decide_deposit(d.id, canonical).await?;
        let (status, error) = if canonical {
            info!(target: "m2pool::listen", chain, symbol = %d.symbol, address = %addr_hex(&d.address),
                  tx = %hash_hex(&d.tx_hash), block = d.block_number, "deposit confirmed");
            tx.push_ledger(&[LedgerEntry {
                chain: chain.to_owned(),
                symbol: d.symbol.clone(),
                address: d.address,
                delta: I256::try_from(d.amount).unwrap_or(I256::MAX),
                kind: Movement::Deposit,
                tx_hash: d.tx_hash,
                log_index: d.log_index,
                block: d.block_number,
            }])
            .await?;
            fx.movements += 1;
            (Status::Success, None)
        } else {
            warn!(target: "m2pool::listen", chain, symbol = %d.symbol, address = %addr_hex(&d.address),
                  tx = %hash_hex(&d.tx_hash), block = d.block_number, "deposit failed: its block left the chain");
            (
                Status::Failed,
                Some("the deposit's block left the canonical chain and the transfer was not mined again".to_owned()),
            )
        };
        let facts = DepositFacts {
            chain,
            symbol: &d.symbol,
            decimals: d
                .decimals
                .unwrap_or_else(|| self.tokens.decimals(chain, &d.symbol)),
            address: d.address,
            from: d.from,
            amount: d.amount,
            tx_hash: d.tx_hash,
            block: d.block_number,
        };
        fx.lines.push(node_line(
            if status == Status::Success {
                "DepositConfirmed"
            } else {
                "DepositFailed"
            },
            &facts,
        ));
        fx.push(reply::deposit(&facts, status, error));
        Ok(())
    }

    /// Records which payouts the block's transactions from our wallets
    /// mined, all in a few statements.
    async fn own_txs_mined(
        &self,
        tx: &mut StoreTx,
        chain: &str,
        block: &BlockRef,
        own: &[OwnTx],
    ) -> Result<(), ListenError> {
        if own.is_empty() {
            return Ok(());
        }
        let nonces: Vec<(Address, u64)> = own.iter().map(|o| (o.from, o.nonce)).collect();
        let mut payouts: HashMap<(Address, u64), Payout> = tx
            .payouts_by_nonces(chain, &nonces)
            .await?
            .into_iter()
            .filter_map(|p| Some(((p.payer?, p.nonce?), p)))
            .collect();
        let hashes: Vec<B256> = own.iter().map(|o| o.tx_hash).collect();
        let signed = tx.signed_txs_of(&hashes).await?;
        let mut mined = Vec::with_capacity(own.len());
        for o in own {
            let Some(p) = payouts.remove(&(o.from, o.nonce)) else {
                continue;
            };
            let ours = signed.get(&o.tx_hash).copied();
            let displaced = ours.map(|(id, _)| id) != Some(p.id);
            let cancel_mined = !displaced && ours.is_some_and(|(_, cancels)| cancels);
            // What the payout asked for is judged on the receipt: reverted, or
            // (a token) no `Transfer` of exactly that amount to that recipient.
            let judged = if displaced || cancel_mined {
                Ok(())
            } else {
                let contract = p
                    .contract
                    .or_else(|| self.tokens.contract(&p.chain, &p.symbol));
                let native = self.tokens.is_native(&p.chain, &p.symbol);
                paid(&p, native, contract, o)
            };
            let m = Mined {
                tx_hash: o.tx_hash,
                block: (block.number, block.hash),
                due: block.number + self.rules(&p.chain).confirm_height,
                success: o.success && judged.is_ok(),
                fee: o.fee,
                displaced,
                cancel_mined,
                note: judged.err(),
            };
            info!(target: "m2pool::listen", id = p.id, queue_id = %p.queue_id, order_id = %p.order_id,
                  tx = %hash_hex(&o.tx_hash), block = block.number, success = m.success, displaced, cancel_mined,
                  "payout mined");
            if let Some(note) = &m.note {
                warn!(target: "m2pool::listen", id = p.id, queue_id = %p.queue_id, tx = %hash_hex(&o.tx_hash),
                      note = %note, "payout mined without paying");
            }
            mined.push((p.id, m));
        }
        tx.mark_payouts_mined(&mined).await?;
        Ok(())
    }

    async fn decide_payout(
        &self,
        tx: &mut StoreTx,
        chain: &str,
        p: Payout,
        fx: &mut Effects,
    ) -> Result<(), ListenError> {
        let (Some(number), Some(hash), Some(tx_hash), Some(payer)) =
            (p.block_number, p.block_hash, p.tx_hash, p.payer)
        else {
            error!(target: "m2pool::listen", id = p.id, "mined payout without its block, hash or payer; left undecided");
            return Ok(());
        };
        if !tx.is_canonical(chain, number, hash).await? {
            warn!(target: "m2pool::listen", id = p.id, block = number, "payout's block is not canonical; broadcasting again");
            tx.unmine_payouts_above(chain, number.saturating_sub(1))
                .await?;
            fx.payout_chains.push(chain.to_owned());
            return Ok(());
        }
        let decimals = self.tokens.of_payout(&p);
        // A payout mined before its broadcast was recorded still answers 2
        // first (not one cancelled by another transfer: it was never sent).
        if !p.cancel_mined
            && let Some(unannounced) = tx.take_announcement(p.id).await?
        {
            fx.push(reply::payout(&unannounced, Status::Pending, None, decimals));
        }
        let fee = p.fee.unwrap_or_default();
        let fee_entry = LedgerEntry {
            chain: chain.to_owned(),
            symbol: "ETH".to_owned(),
            address: payer,
            delta: negative(fee),
            kind: Movement::Fee,
            tx_hash,
            log_index: FEE_LOG_INDEX,
            block: number,
        };
        let (state, status, error, movements) = if p.displaced {
            let e = format!(
                "nonce {} of {} was used by another transaction ({}); this payout was not made",
                p.nonce.unwrap_or_default(),
                addr_hex(&payer),
                hash_hex(&tx_hash)
            );
            (PayoutState::Failed, Status::Failed, Some(e), vec![])
        } else if p.cancel_mined {
            // Its nonce went to the zero-value transfer that cancels it.
            (
                PayoutState::Cancelled,
                Status::Failed,
                Some(CANCELLED.to_owned()),
                vec![fee_entry],
            )
        } else if p.success == Some(true) {
            let debit = LedgerEntry {
                chain: chain.to_owned(),
                symbol: p.symbol.clone(),
                address: payer,
                delta: negative(p.amount),
                kind: Movement::Payout,
                tx_hash,
                log_index: PAYOUT_LOG_INDEX,
                block: number,
            };
            (
                PayoutState::Confirmed,
                Status::Success,
                None,
                vec![debit, fee_entry],
            )
        } else {
            let e = p.error.clone().unwrap_or_else(|| {
                "the transaction reverted on chain; nothing was paid (gas was spent)".to_owned()
            });
            (
                PayoutState::Failed,
                Status::Failed,
                Some(e),
                vec![fee_entry],
            )
        };
        if !tx
            .move_payout(p.id, PayoutState::Mined, state, error.as_deref())
            .await?
        {
            return Ok(());
        }
        if !movements.is_empty() {
            tx.push_ledger(&movements).await?;
            fx.movements += movements.len();
        }
        info!(target: "m2pool::listen", id = p.id, queue_id = %p.queue_id, order_id = %p.order_id,
              tx = %hash_hex(&tx_hash), state = state.as_str(), "payout final");
        let mut done = p;
        done.error = error.clone();
        fx.lines.push(crate::txlog::node_line(
            if status == Status::Success {
                "PayoutConfirmed"
            } else {
                "PayoutFailed"
            },
            addr_hex(&payer),
            addr_hex(&done.to),
            chain,
            &done.symbol,
            crate::txlog::go_amount(&crate::msg::amount::format_units(done.amount, decimals)),
        ));
        fx.push(reply::payout(&done, status, error, decimals));
        Ok(())
    }

    async fn reorg(
        &mut self,
        tx: &mut StoreTx,
        chain: &str,
        fork: &BlockRef,
        fx: &mut Effects,
    ) -> Result<(), ListenError> {
        tx.drop_blocks_above(chain, fork.number).await?;
        tx.push_block(chain, fork, self.rules(chain).keep).await?;
        let orphaned = tx.orphan_deposits_above(chain, fork.number).await?;
        if orphaned > 0 {
            let txs = tx.orphaned_deposit_txs(chain).await?;
            self.orphaned
                .entry(chain.to_owned())
                .or_default()
                .extend(txs);
        }
        let unmined = tx.unmine_payouts_above(chain, fork.number).await?;
        if unmined > 0 {
            fx.payout_chains.push(chain.to_owned());
        }
        // Final answers deeper than confirm_height taken back: nothing can be
        // undone automatically, an operator must look (log, /healthz, metric).
        for tx_hash in tx.confirmed_above(chain, fork.number).await? {
            error!(target: "m2pool::listen", chain, tx = %hash_hex(&tx_hash), fork = fork.number,
                   "a deposit already reported final was in a block that left the chain; check it by hand");
            self.health.deep_reorg(
                chain,
                format!(
                    "deposit {} was answered final but its block left the chain (reorganisation below block {}); check it by hand",
                    hash_hex(&tx_hash),
                    fork.number + 1
                ),
            );
            self.metrics
                .deep_reorg_deposits
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        for p in tx.final_payouts_above(chain, fork.number).await? {
            let tx_hash = p.tx_hash.map(|h| hash_hex(&h)).unwrap_or_default();
            error!(target: "m2pool::listen", chain, id = p.id, queue_id = %p.queue_id, order_id = %p.order_id,
                   tx = %tx_hash, state = p.state.as_str(), fork = fork.number,
                   "a payout already answered final was in a block that left the chain; check it by hand");
            self.health.deep_reorg(
                chain,
                format!(
                    "payout queue_id `{}`{} was answered final ({}) but its transaction {tx_hash} left the chain (reorganisation below block {}); check it by hand",
                    p.queue_id,
                    if p.order_id.is_empty() { String::new() } else { format!(" order_id `{}`", p.order_id) },
                    p.state.as_str(),
                    fork.number + 1
                ),
            );
            self.metrics
                .deep_reorg_payouts
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        warn!(target: "m2pool::listen", chain, fork = fork.number, orphaned, unmined, "reorganisation applied");
        fx.lines.push(crate::txlog::node_line(
            "Reorg",
            String::new(),
            String::new(),
            chain,
            "",
            fork.number.to_string(),
        ));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chain::TokenMove;
    use alloy::primitives::B256;

    fn payout(symbol: &str) -> Payout {
        Payout {
            symbol: symbol.into(),
            state: PayoutState::Sent,
            announced: true,
            payer: Some(Address::repeat_byte(1)),
            nonce: Some(0),
            ..Payout::sample(Address::repeat_byte(1))
        }
    }

    fn mined(success: bool, moves: Vec<TokenMove>) -> OwnTx {
        OwnTx {
            from: Address::repeat_byte(1),
            nonce: 0,
            tx_hash: B256::ZERO,
            success,
            fee: U256::ZERO,
            token_moves: moves,
        }
    }

    #[test]
    fn a_token_payout_pays_only_with_its_exact_transfer_logged() {
        let token = Address::repeat_byte(9);
        let p = payout("USDT");
        let exact = TokenMove {
            contract: token,
            from: Address::repeat_byte(1),
            to: Address::repeat_byte(2),
            value: U256::from(5u64),
        };
        assert_eq!(
            paid(&p, false, Some(token), &mined(true, vec![exact.clone()])),
            Ok(())
        );
        // `transfer` returned false: status 1, no log.
        assert!(paid(&p, false, Some(token), &mined(true, vec![])).is_err());
        // Another contract, amount or recipient is not this payout.
        for wrong in [
            TokenMove {
                contract: Address::repeat_byte(8),
                ..exact.clone()
            },
            TokenMove {
                value: U256::from(4u64),
                ..exact.clone()
            },
            TokenMove {
                to: Address::repeat_byte(3),
                ..exact.clone()
            },
            TokenMove {
                from: Address::repeat_byte(3),
                ..exact.clone()
            },
        ] {
            assert!(paid(&p, false, Some(token), &mined(true, vec![wrong])).is_err());
        }
        // Without its contract it cannot be checked: not counted as paid.
        assert!(paid(&p, false, None, &mined(true, vec![exact])).is_err());
        // Ether is judged by the receipt alone; a revert by the caller.
        assert_eq!(
            paid(&payout("ETH"), true, None, &mined(true, vec![])),
            Ok(())
        );
        assert_eq!(paid(&p, false, Some(token), &mined(false, vec![])), Ok(()));
    }
}
