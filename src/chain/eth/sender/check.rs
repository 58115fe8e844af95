//! The nonce actor's decision for one payout, as a pure function: pay it,
//! hand it to the collection wallet, or refuse it with the reason in plain
//! words. It reads the wallet's balances at the head, what its in-flight
//! payouts hold back, the fees and the gas limits; it signs nothing.

use super::Job;
use super::sign::{Draft, View};
use crate::config::EthConfig;
use crate::msg::{addr_hex, amount::format_units};
use crate::store::{Payout, SignedTx};
use alloy::primitives::{Address, U256};
use std::collections::HashMap;

/// What an in-flight payout holds back from its wallet's balance.
#[derive(Debug, Clone)]
pub(super) struct Reservation {
    symbol: String,
    amount: U256,
    /// Wei: gas at the signed max fee, plus the value of an ether payout.
    ether: U256,
}

/// What payout `p`, signed as `tx`, holds back until it is mined.
pub(super) fn reservation(cfg: &EthConfig, p: &Payout, tx: &SignedTx) -> Reservation {
    let gas = U256::from(tx.gas_limit) * U256::from(tx.max_fee_per_gas);
    Reservation {
        symbol: p.symbol.clone(),
        amount: p.amount,
        ether: if cfg.is_native(&p.symbol) {
            gas + p.amount
        } else {
            gas
        },
    }
}

/// What in-flight payouts hold back, summed: per token symbol, and ether.
#[derive(Debug, Default)]
pub(super) struct Reserved {
    tokens: HashMap<String, U256>,
    ether: U256,
}

impl Reserved {
    /// The sum of `inflight`.
    pub(super) fn of<'a>(inflight: impl Iterator<Item = &'a Reservation>) -> Self {
        let mut r = Self::default();
        for x in inflight {
            r.add(x);
        }
        r
    }

    /// Adds one more.
    pub(super) fn add(&mut self, x: &Reservation) {
        let t = self.tokens.entry(x.symbol.clone()).or_default();
        *t = t.saturating_add(x.amount);
        self.ether = self.ether.saturating_add(x.ether);
    }

    fn of_symbol(&self, symbol: &str) -> U256 {
        self.tokens.get(symbol).copied().unwrap_or_default()
    }
}

/// The transfer payout `p` asks for: ether, or a token transfer on the
/// contract recorded with it (the config's for an older row); `None` when
/// that contract is not known.
pub(super) fn draft(cfg: &EthConfig, p: &Payout, gas_limit: u64) -> Option<Draft> {
    if cfg.is_native(&p.symbol) {
        return Some(Draft::ether(p.to, p.amount, gas_limit));
    }
    let contract = p
        .contract
        .or_else(|| cfg.token(&p.symbol).map(|t| t.contract))?;
    Some(Draft::token(contract, p.to, p.amount, gas_limit))
}

/// What to do with one payout.
#[derive(Debug)]
pub(super) enum Check {
    /// Sign this.
    Pay(Draft),
    /// Ask the collection wallet; the note says what this wallet holds.
    Forward(String),
    /// Refuse with this error.
    Refuse(String),
}

/// The wallet deciding, and what it decides by.
pub(super) struct Payer<'a> {
    /// This wallet.
    pub wallet: Address,
    /// The collection wallet, when configured and not this one.
    pub collection: Option<Address>,
    /// The network's settings: gas limits, token contracts and decimals.
    pub cfg: &'a EthConfig,
}

impl Payer<'_> {
    /// What to do with one payout, given the wallet's balances, what its
    /// in-flight payouts reserve, the fees (max fee, priority fee) and the
    /// gas the node estimated for ether payouts (by payout id).
    pub(super) fn check(
        &self,
        job: &Job,
        view: &View,
        fees: (u128, u128),
        gas: &HashMap<i64, Result<u64, String>>,
        reserved: &Reserved,
    ) -> Check {
        let p = &job.payout;
        let decimals = p
            .decimals
            .or_else(|| self.cfg.decimals(&p.symbol))
            .unwrap_or(18);
        let is_ether = self.cfg.is_native(&p.symbol);
        let holds = if is_ether {
            view.ether.saturating_sub(reserved.ether)
        } else {
            view.tokens
                .get(&p.symbol)
                .copied()
                .unwrap_or_default()
                .saturating_sub(reserved.of_symbol(&p.symbol))
        };
        if holds < p.amount {
            return self.short(job, holds, decimals);
        }
        let gas_limit = if is_ether {
            match gas.get(&p.id) {
                Some(Ok(g)) => *g,
                Some(Err(refusal)) => {
                    return Check::Refuse(format!(
                        "{} does not accept this ether transfer (the node's gas estimate failed: {refusal}); nothing was sent",
                        addr_hex(&p.to)
                    ));
                }
                None => self.cfg.payout.gas_limit_eth,
            }
        } else {
            self.cfg.payout.gas_limit_token
        };
        let gas = U256::from(gas_limit) * U256::from(fees.0);
        let need = if is_ether { gas + p.amount } else { gas };
        let ether_left = view.ether.saturating_sub(reserved.ether);
        if ether_left < need {
            return Check::Refuse(format!(
                "{} has {} ETH free, not enough for gas ({} ETH at {} gwei × {gas_limit}{})",
                addr_hex(&self.wallet),
                format_units(ether_left, 18),
                format_units(gas, 18),
                format_units(U256::from(fees.0), 9),
                if is_ether { " plus the amount" } else { "" },
            ));
        }
        match draft(self.cfg, p, gas_limit) {
            Some(draft) => Check::Pay(draft),
            None => Check::Refuse(format!("symbol {} is no longer configured", p.symbol)),
        }
    }

    /// The wallet holds only `holds` of what `job` asks: the collection
    /// wallet is asked when the payout names this wallet, else it is refused.
    fn short(&self, job: &Job, holds: U256, decimals: u8) -> Check {
        let p = &job.payout;
        let amount_text = format!("{} {}", format_units(p.amount, decimals), p.symbol);
        let holds_text = format!(
            "{} holds {} {}",
            addr_hex(&self.wallet),
            format_units(holds, decimals),
            p.symbol
        );
        let may_forward =
            p.from == self.wallet && self.collection.is_some_and(|c| c != self.wallet);
        if may_forward {
            return Check::Forward(holds_text);
        }
        Check::Refuse(match (&job.shortfall, &self.collection) {
            (Some(first), _) => format!(
                "neither {first} nor the collection wallet ({holds_text}) can pay {amount_text}"
            ),
            (None, None) => format!(
                "{holds_text}, not enough for {amount_text}, and no collection wallet is configured"
            ),
            (None, Some(_)) => format!("{holds_text}, not enough for {amount_text}"),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONFIG: &[u8] = include_bytes!("../../../../tests/fixtures/compat/config.go-v2.json");
    const GWEI: u128 = 1_000_000_000;

    fn cfg() -> EthConfig {
        let config = crate::config::Config::from_json(CONFIG).expect("config");
        config.network("ETH").expect("ETH").evm.clone()
    }

    const USER: Address = Address::repeat_byte(0x11);
    const COLLECTION: Address = Address::repeat_byte(0xcc);

    /// A USDT payout of 5 units from the user wallet (6 decimals).
    fn job(shortfall: Option<&str>) -> Job {
        Job {
            payout: Payout::sample(USER),
            shortfall: shortfall.map(str::to_owned),
        }
    }

    /// A wallet holding `usdt` base units and `eth` wei.
    fn view(usdt: u64, eth: u128) -> View {
        View {
            ether: U256::from(eth),
            tokens: [("USDT".to_owned(), U256::from(usdt))].into(),
            nonce: 0,
        }
    }

    fn decide(
        cfg: &EthConfig,
        wallet: Address,
        collection: Option<Address>,
        job: &Job,
        view: &View,
        reserved: &Reserved,
    ) -> Check {
        Payer {
            wallet,
            collection,
            cfg,
        }
        .check(job, view, (GWEI, GWEI), &HashMap::new(), reserved)
    }

    /// The reason of a refusal; any other decision fails the test.
    fn refusal(got: Check) -> String {
        match got {
            Check::Refuse(e) => e,
            other => panic!("expected Refuse, got {other:?}"),
        }
    }

    #[test]
    fn a_covered_token_payout_is_paid_on_the_configured_contract() {
        let cfg = cfg();
        let got = decide(
            &cfg,
            USER,
            None,
            &job(None),
            &view(5, 10u128.pow(18)),
            &Reserved::default(),
        );
        let Check::Pay(d) = got else {
            panic!("expected Pay, got {got:?}")
        };
        assert_eq!(d.to, cfg.token("USDT").expect("USDT").contract);
        assert_eq!(d.value, U256::ZERO);
    }

    #[test]
    fn what_in_flight_payouts_hold_back_is_not_spent_twice() {
        let cfg = cfg();
        let mut in_flight = Payout::sample(USER);
        in_flight.amount = U256::from(3u64);
        let tx = SignedTx {
            payout_id: 9,
            tx_hash: Default::default(),
            raw: vec![],
            gas_limit: 60_000,
            max_fee_per_gas: GWEI,
            priority_fee: 1,
            signed_at: 0,
            cancels: false,
        };
        let reserved = Reserved::of([reservation(&cfg, &in_flight, &tx)].iter());
        // 7 USDT held, 3 on their way: 4 left, not enough for 5.
        let got = decide(
            &cfg,
            USER,
            None,
            &job(None),
            &view(7, 10u128.pow(18)),
            &reserved,
        );
        let e = refusal(got);
        assert!(e.contains("holds 0.000004 USDT"), "{e}");
        assert!(e.contains("no collection wallet is configured"), "{e}");
    }

    #[test]
    fn a_short_user_wallet_asks_the_collection_wallet_which_refuses_naming_both() {
        let cfg = cfg();
        let poor = view(1, 10u128.pow(18));
        let got = decide(
            &cfg,
            USER,
            Some(COLLECTION),
            &job(None),
            &poor,
            &Reserved::default(),
        );
        let Check::Forward(note) = got else {
            panic!("expected Forward, got {got:?}")
        };
        assert!(note.contains("holds 0.000001 USDT"), "{note}");
        // The collection wallet's own actor has no collection wallet.
        let got = decide(
            &cfg,
            COLLECTION,
            None,
            &job(Some(&note)),
            &poor,
            &Reserved::default(),
        );
        let e = refusal(got);
        assert!(
            e.starts_with(&format!("neither {note} nor the collection wallet")),
            "{e}"
        );
        assert!(e.ends_with("can pay 0.000005 USDT"), "{e}");
    }

    #[test]
    fn a_wallet_without_ether_for_gas_is_refused_with_the_sums() {
        let cfg = cfg();
        let got = decide(
            &cfg,
            USER,
            Some(COLLECTION),
            &job(None),
            &view(5, 1),
            &Reserved::default(),
        );
        let e = refusal(got);
        assert!(e.contains("not enough for gas"), "{e}");
        assert!(e.contains("at 1 gwei"), "{e}");
        assert!(
            !e.contains("plus the amount"),
            "a token payout pays only gas: {e}"
        );
    }

    #[test]
    fn an_ether_payout_needs_its_amount_plus_gas_and_a_failed_estimate_refuses_it() {
        let cfg = cfg();
        let mut j = job(None);
        j.payout.symbol = "ETH".into();
        j.payout.decimals = Some(18);
        j.payout.amount = U256::from(10u128.pow(18));
        let payer = Payer {
            wallet: USER,
            collection: None,
            cfg: &cfg,
        };
        let exactly = view(0, 10u128.pow(18));
        let got = payer.check(
            &j,
            &exactly,
            (GWEI, GWEI),
            &HashMap::new(),
            &Reserved::default(),
        );
        assert!(
            matches!(&got, Check::Refuse(e) if e.contains("plus the amount")),
            "the amount alone leaves nothing for gas: {got:?}"
        );
        let rich = view(0, 2 * 10u128.pow(18));
        let gas = HashMap::from([(j.payout.id, Err("execution reverted".to_owned()))]);
        let got = payer.check(&j, &rich, (GWEI, GWEI), &gas, &Reserved::default());
        assert!(
            matches!(&got, Check::Refuse(e) if e.contains("does not accept") && e.contains("execution reverted")),
            "{got:?}"
        );
        let gas = HashMap::from([(j.payout.id, Ok(30_000))]);
        let got = payer.check(&j, &rich, (GWEI, GWEI), &gas, &Reserved::default());
        let Check::Pay(d) = got else {
            panic!("expected Pay, got {got:?}")
        };
        assert_eq!((d.to, d.value), (j.payout.to, j.payout.amount));
    }

    #[test]
    fn a_token_no_longer_configured_and_without_a_stored_contract_is_refused() {
        let cfg = cfg();
        let mut j = job(None);
        j.payout.symbol = "GONE".into();
        let mut v = view(0, 10u128.pow(18));
        v.tokens.insert("GONE".into(), U256::from(5u64));
        let got = decide(&cfg, USER, None, &j, &v, &Reserved::default());
        assert!(
            matches!(&got, Check::Refuse(e) if e == "symbol GONE is no longer configured"),
            "{got:?}"
        );
    }
}
