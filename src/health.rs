//! What the daemon knows about its own condition: broker and node connections,
//! the node's head and the block cursor, and whether the head has stalled.
//!
//! Tasks write their part; readers (logs, the health endpoint) take snapshots.
//! A plain mutex is enough: updates are a few per block.
//!
//! [`problems`] judges a snapshot: the daemon is degraded (and `/healthz`
//! answers 503) while the broker or a node is unreachable, a head has not
//! advanced for `eth_config.head_stall_secs`, the block cursor trails the head
//! by more than `http_config.max_cursor_lag` blocks, or the oldest response
//! not yet confirmed by the broker is older than
//! `http_config.max_outbox_age_secs`.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// One chain's condition.
#[derive(Debug, Clone, Default)]
pub struct ChainHealth {
    /// The node answers.
    pub node_connected: bool,
    /// Highest head the node reported.
    pub head: u64,
    /// The committed block cursor (the last block applied); `None` until
    /// the first one is committed.
    pub cursor: Option<u64>,
    /// When the head last advanced.
    pub head_changed: Option<Instant>,
    /// The head has not advanced for longer than the configured limit.
    pub stalled: bool,
    /// Payouts whose signed transaction the node has refused for longer
    /// than `stuck_payout_secs`, in plain words (set by the payout sender).
    pub refused_payouts: Vec<String>,
    /// Final answers a reorganisation deeper than `confirm_height` took
    /// back, in plain words, with when: shown for [`INCIDENT_SHOWN`].
    pub deep_reorgs: Vec<(Instant, String)>,
    /// The wallets' balances as last read (`None` until the first read).
    pub wallets: Option<Arc<WalletsSeen>>,
    /// Why the last read of the balances failed, if it did.
    pub wallets_error: Option<String>,
}

/// A network's wallets as read from its node at one moment.
#[derive(Debug, Clone)]
pub struct WalletsSeen {
    /// When (for ages).
    pub at: Instant,
    /// When, in unix milliseconds (for display).
    pub at_ms: i64,
    /// Each wallet, collection first.
    pub list: Vec<WalletSeen>,
}

/// One wallet's balances, nonce and what is low.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WalletSeen {
    /// Its address.
    pub address: alloy::primitives::Address,
    /// `user` (a hot wallet) or `collection`.
    pub class: &'static str,
    /// Every balance, native coin first: symbol, base units, decimals.
    pub balances: Vec<(String, alloy::primitives::U256, u8)>,
    /// The next nonce the node would give it (pending counted).
    pub next_nonce: u64,
    /// What is below its class's threshold.
    pub low: Vec<Low>,
}

/// A balance below its threshold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Low {
    /// The symbol.
    pub symbol: String,
    /// `gas` (the native coin) or `balance` (a token).
    pub kind: &'static str,
    /// What it holds and the threshold, in whole units.
    pub holds: String,
    /// The threshold, in whole units.
    pub min: String,
}

/// The outbox as `store` reports it, or why it cannot.
pub async fn outbox_state(store: &crate::store::Store) -> Result<OutboxState, String> {
    let (backlog, oldest_ms) = store.outbox_unsent().await.map_err(|e| {
        tracing::warn!(target: "m2pool::health", error = %e, "cannot read the outbox for health");
        e.to_string()
    })?;
    let now = crate::clock::now_ms();
    Ok(OutboxState {
        backlog,
        oldest: oldest_ms.map(|t| Duration::from_millis(now.saturating_sub(t).max(0) as u64)),
    })
}

/// Every warning `/healthz` gives: dead webhook deliveries (`dead` of
/// them, the receivers' trouble), then [`warnings`].
pub fn all_warnings(snap: &Snapshot, limits: &Limits, dead: i64) -> Vec<String> {
    let mut out: Vec<String> = (dead > 0)
        .then(|| {
            format!(
                "{dead} webhook deliveries are dead; `m2pool-payment webhook dead` lists them \
                 and `m2pool-payment webhook replay` sends them again"
            )
        })
        .into_iter()
        .collect();
    out.extend(warnings(snap, limits));
    out
}

/// How long balances may go unread before `/healthz` warns: three polls.
pub fn balances_stale(poll: Duration) -> Duration {
    poll * 3
}

/// What an operator should act on without the gateway being down, in
/// plain words: wallets low on gas or tokens, balances that could not be
/// read for three polls.
pub fn warnings(snap: &Snapshot, limits: &Limits) -> Vec<String> {
    /// Most low wallets named one by one per network.
    const NAMED: usize = 10;
    let mut out = Vec::new();
    for (name, c) in &snap.chains {
        if let Some(seen) = &c.wallets {
            let low: Vec<String> = seen
                .list
                .iter()
                .flat_map(|w| {
                    w.low.iter().map(move |l| {
                        format!(
                            "{name}: {} wallet {:#x} holds {} {}, below {} ({})",
                            w.class, w.address, l.holds, l.symbol, l.min, l.kind
                        )
                    })
                })
                .collect();
            let more = low.len().saturating_sub(NAMED);
            out.extend(low.into_iter().take(NAMED));
            if more > 0 {
                out.push(format!("{name}: {more} more wallet balances are low"));
            }
        }
        let limit = limits.balance_poll.get(name).copied().map(balances_stale);
        let stale = match (&c.wallets, limit) {
            (_, None) => false,
            (None, Some(_)) => c.wallets_error.is_some(),
            (Some(seen), Some(limit)) => seen.at.elapsed() > limit,
        };
        if stale {
            out.push(format!(
                "{name}: wallet balances could not be read{}",
                c.wallets_error
                    .as_ref()
                    .map(|e| format!(": {e}"))
                    .unwrap_or_default()
            ));
        }
    }
    out
}

/// How long `/healthz` shows a final answer that a deep reorganisation took
/// back (the error log keeps it for good).
pub const INCIDENT_SHOWN: Duration = Duration::from_secs(24 * 3600);

/// Most deep-reorganisation incidents kept per chain.
const INCIDENTS_KEPT: usize = 100;

impl ChainHealth {
    /// Seconds since the head last advanced.
    pub fn since_head(&self) -> Option<Duration> {
        self.head_changed.map(|t| t.elapsed())
    }

    /// Blocks between the head and the cursor.
    pub fn lag(&self) -> u64 {
        self.cursor
            .map_or(0, |cursor| self.head.saturating_sub(cursor))
    }

    /// Stalled as of now: flagged by the chain task, or the head older than
    /// `limit` at the moment of asking (so a chain task stuck in a call that
    /// never returns is seen too).
    pub fn stalled_after(&self, limit: Duration) -> bool {
        self.stalled || self.since_head().is_some_and(|d| d > limit)
    }
}

/// What degrades health besides lost connections.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Per network, a head unchanged for longer has stalled (its section's
    /// `head_stall_secs`).
    pub head_stall: std::collections::BTreeMap<String, Duration>,
    /// Per network, how often wallet balances are read
    /// (`balance_poll_secs`): unread for three polls is warned about.
    pub balance_poll: std::collections::BTreeMap<String, Duration>,
    /// Most blocks the cursor may trail the head (`None`: not checked).
    pub max_cursor_lag: Option<u64>,
    /// Oldest age of a response not yet confirmed by the broker (`None`: not checked).
    pub max_outbox_age: Option<Duration>,
}

impl Limits {
    /// The stall limit of network `chain` if its head has stood still
    /// longer than that; `None` while it moves (and for a network the
    /// config does not run, which has no limit).
    pub fn stalled(&self, chain: &str, c: &ChainHealth) -> Option<Duration> {
        self.head_stall
            .get(chain)
            .copied()
            .filter(|limit| c.stalled_after(*limit))
    }
}

/// The outbox as the message store reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutboxState {
    /// Responses not yet confirmed by the broker.
    pub backlog: i64,
    /// How long the oldest of them has waited.
    pub oldest: Option<Duration>,
}

/// Why the daemon is degraded, in plain words; empty when it is healthy.
/// `outbox` is what the store said, or why it could not say.
pub fn problems(
    snap: &Snapshot,
    outbox: &Result<OutboxState, String>,
    limits: &Limits,
) -> Vec<String> {
    let mut out = Vec::new();
    if let Some(why) = &snap.waiting {
        out.push(why.clone());
    }
    if !snap.broker_connected && !snap.no_broker {
        out.push("the broker is not connected".to_owned());
    }
    if snap.chains.is_empty() {
        out.push("no chain has reported yet".to_owned());
    }
    for (name, c) in &snap.chains {
        if !c.node_connected {
            out.push(format!("{name}: the node is not connected"));
        }
        if c.cursor.is_none() {
            out.push(format!("{name}: no block applied yet"));
        }
        match c.since_head() {
            None => out.push(format!("{name}: no head seen yet")),
            Some(d) => {
                if let Some(limit) = limits.stalled(name, c) {
                    out.push(format!(
                        "{name}: the head has not advanced for {}s (limit {}s)",
                        d.as_secs(),
                        limit.as_secs()
                    ));
                }
            }
        }
        out.extend(c.refused_payouts.iter().map(|p| format!("{name}: {p}")));
        out.extend(
            c.deep_reorgs
                .iter()
                .filter(|(at, _)| at.elapsed() < INCIDENT_SHOWN)
                .map(|(_, text)| format!("{name}: {text}")),
        );
        if let Some(max) = limits.max_cursor_lag
            && c.lag() > max
        {
            out.push(format!(
                "{name}: the cursor trails the head by {} blocks (limit {max})",
                c.lag()
            ));
        }
    }
    match outbox {
        Err(e) => out.push(format!("the message store cannot be read: {e}")),
        Ok(o) => {
            if let (Some(max), Some(age)) = (limits.max_outbox_age, o.oldest)
                && age > max
            {
                out.push(format!(
                    "{} responses wait for the broker, the oldest for {}s (limit {}s)",
                    o.backlog,
                    age.as_secs(),
                    max.as_secs()
                ));
            }
        }
    }
    out
}

/// This instance's part among those sharing the message store
/// (docs/architecture.md, "High availability").
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Role {
    /// Not yet holding the lease: `holder` (empty if none) is active, in
    /// `term`.
    #[default]
    Standby,
    /// Holding the lease in this term: consuming, following the chains,
    /// signing and answering.
    Active {
        /// The lease term.
        term: u64,
    },
}

/// The lease as a standby last saw it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LeaseSeen {
    /// The active instance (empty if none).
    pub holder: String,
    /// Its term.
    pub term: u64,
}

#[derive(Debug, Default)]
struct State {
    broker_connected: bool,
    no_broker: bool,
    chains: BTreeMap<String, ChainHealth>,
    role: Role,
    lease: LeaseSeen,
    /// Why this instance, holding the lease, does not start yet (a request
    /// queue another program consumes), in plain words.
    waiting: Option<String>,
}

/// Shared condition of the daemon; cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct Health(Arc<Mutex<State>>);

/// A copy of the condition at one moment.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// The broker connection is up.
    pub broker_connected: bool,
    /// No broker is configured (requests over the HTTP API only).
    pub no_broker: bool,
    /// Per chain.
    pub chains: BTreeMap<String, ChainHealth>,
    /// Active or standby.
    pub role: Role,
    /// The lease as last seen.
    pub lease: LeaseSeen,
    /// Why the active instance waits to start, if it does.
    pub waiting: Option<String>,
}

impl Health {
    fn with<T>(&self, f: impl FnOnce(&mut State) -> T) -> T {
        // A poisoned lock only means a writer panicked mid-update of plain
        // values; the data is still usable.
        let mut g = self.0.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut g)
    }

    /// Records this instance's role.
    pub fn set_role(&self, role: Role) {
        self.with(|s| s.role = role);
    }

    /// Records the lease as seen from a standby.
    pub fn saw_lease(&self, lease: LeaseSeen) {
        self.with(|s| s.lease = lease);
    }

    /// Records why the active instance does not start yet (`None`: it does).
    pub fn set_waiting(&self, why: Option<String>) {
        self.with(|s| s.waiting = why);
    }

    /// Records that no broker is configured: its connection is not a
    /// condition of health.
    pub fn set_no_broker(&self) {
        self.with(|s| s.no_broker = true);
    }

    /// Records the broker connection state.
    pub fn set_broker(&self, up: bool) {
        self.with(|s| s.broker_connected = up);
    }

    /// Updates one chain's condition.
    pub fn chain(&self, name: &str, f: impl FnOnce(&mut ChainHealth)) {
        self.with(|s| f(s.chains.entry(name.to_owned()).or_default()));
    }

    /// Records a head reported by the node; returns how long it had been
    /// unchanged when it moves again after a stall.
    pub fn saw_head(&self, name: &str, head: u64) -> Option<Duration> {
        self.with(|s| {
            let c = s.chains.entry(name.to_owned()).or_default();
            c.node_connected = true;
            if head > c.head || c.head_changed.is_none() {
                let was = c.stalled.then(|| c.since_head()).flatten();
                c.head = head;
                c.head_changed = Some(Instant::now());
                c.stalled = false;
                was
            } else {
                None
            }
        })
    }

    /// Records a final answer that a reorganisation deeper than
    /// `confirm_height` took back.
    pub fn deep_reorg(&self, name: &str, text: String) {
        self.chain(name, |c| {
            c.deep_reorgs.push((Instant::now(), text));
            let over = c.deep_reorgs.len().saturating_sub(INCIDENTS_KEPT);
            c.deep_reorgs.drain(..over);
        });
    }

    /// Marks the head stalled if it has not moved for `limit`; returns `true`
    /// the first time it does.
    pub fn check_stall(&self, name: &str, limit: Duration) -> bool {
        self.with(|s| {
            let c = s.chains.entry(name.to_owned()).or_default();
            let stalled = c.since_head().is_some_and(|d| d > limit);
            let newly = stalled && !c.stalled;
            c.stalled = stalled;
            newly
        })
    }

    /// A copy of everything.
    pub fn snapshot(&self) -> Snapshot {
        self.with(|s| Snapshot {
            broker_connected: s.broker_connected,
            no_broker: s.no_broker,
            chains: s.chains.clone(),
            role: s.role.clone(),
            lease: s.lease.clone(),
            waiting: s.waiting.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stall_is_reported_once_and_cleared_by_a_new_head() {
        let h = Health::default();
        assert_eq!(h.saw_head("ETH", 10), None);
        assert!(!h.check_stall("ETH", Duration::from_secs(60)));
        assert!(h.check_stall("ETH", Duration::ZERO));
        assert!(!h.check_stall("ETH", Duration::ZERO), "reported once");
        assert!(h.snapshot().chains["ETH"].stalled);
        assert_eq!(h.saw_head("ETH", 10), None, "same head does not clear it");
        assert!(h.saw_head("ETH", 11).is_some(), "a new head clears it");
        assert!(!h.snapshot().chains["ETH"].stalled);
        h.chain("ETH", |c| c.cursor = Some(8));
        assert_eq!(h.snapshot().chains["ETH"].lag(), 3);
    }

    fn limits() -> Limits {
        Limits {
            head_stall: [("ETH".to_owned(), Duration::from_secs(60))].into(),
            balance_poll: [("ETH".to_owned(), Duration::from_secs(60))].into(),
            max_cursor_lag: Some(5),
            max_outbox_age: Some(Duration::from_secs(30)),
        }
    }

    fn outbox(backlog: i64, oldest_secs: Option<u64>) -> Result<OutboxState, String> {
        Ok(OutboxState {
            backlog,
            oldest: oldest_secs.map(Duration::from_secs),
        })
    }

    fn healthy() -> Health {
        let h = Health::default();
        h.set_broker(true);
        h.saw_head("ETH", 100);
        h.chain("ETH", |c| c.cursor = Some(100));
        h
    }

    #[test]
    fn healthy_has_no_problems() {
        let h = healthy();
        assert!(problems(&h.snapshot(), &outbox(0, None), &limits()).is_empty());
        // A young backlog and a small lag are normal.
        h.chain("ETH", |c| c.cursor = Some(95));
        assert!(problems(&h.snapshot(), &outbox(5000, Some(29)), &limits()).is_empty());
    }

    #[test]
    fn each_condition_degrades_and_says_why() {
        let one = |h: &Health, o: Result<OutboxState, String>, want: &str| {
            let p = problems(&h.snapshot(), &o, &limits());
            assert!(p.len() == 1 && p[0].contains(want), "{want}: {p:?}");
        };
        let brokerless = Health::default();
        brokerless.set_no_broker();
        brokerless.saw_head("ETH", 7);
        brokerless.chain("ETH", |c| c.cursor = Some(7));
        assert!(
            problems(&brokerless.snapshot(), &outbox(0, None), &limits()).is_empty(),
            "no broker configured, none missed"
        );
        let starting = Health::default();
        starting.set_broker(true);
        one(&starting, outbox(0, None), "no chain");
        starting.chain("ETH", |c| {
            c.node_connected = true;
            c.cursor = Some(1);
        });
        one(&starting, outbox(0, None), "no head seen");
        let fresh = Health::default();
        fresh.set_broker(true);
        fresh.saw_head("ETH", 7);
        one(&fresh, outbox(0, None), "no block applied yet");
        assert_eq!(
            fresh.snapshot().chains["ETH"].lag(),
            0,
            "no lag that is not there"
        );

        let h = healthy();
        h.set_broker(false);
        one(&h, outbox(0, None), "broker is not connected");
        let h = healthy();
        h.chain("ETH", |c| c.node_connected = false);
        one(&h, outbox(0, None), "node is not connected");
        let h = healthy();
        h.chain("ETH", |c| c.cursor = Some(94));
        one(&h, outbox(0, None), "trails the head by 6 blocks (limit 5)");
        one(&healthy(), outbox(3, Some(31)), "3 responses wait");
        one(&healthy(), Err("disk".into()), "cannot be read: disk");
        let h = healthy();
        h.chain("ETH", |c| {
            c.refused_payouts = vec!["payout `q` refused".into()]
        });
        one(&h, outbox(0, None), "ETH: payout `q` refused");
        let h = healthy();
        h.deep_reorg("ETH", "a deposit answered 1 left the chain".into());
        one(
            &h,
            outbox(0, None),
            "ETH: a deposit answered 1 left the chain",
        );
        h.chain("ETH", |c| {
            c.deep_reorgs[0].0 = Instant::now()
                .checked_sub(INCIDENT_SHOWN + Duration::from_secs(1))
                .unwrap_or_else(Instant::now)
        });
        assert!(
            problems(&h.snapshot(), &outbox(0, None), &limits()).is_empty(),
            "shown for a day"
        );

        // Judged at the moment of asking, even if the chain task never looks.
        let h = healthy();
        h.chain("ETH", |c| {
            c.head_changed = Instant::now().checked_sub(Duration::from_secs(61))
        });
        one(&h, outbox(0, None), "has not advanced for 61s (limit 60s)");
        assert!(
            !h.snapshot().chains["ETH"].stalled,
            "not flagged by a writer"
        );
    }

    #[test]
    fn unset_limits_are_not_checked() {
        let h = healthy();
        h.chain("ETH", |c| c.cursor = Some(0));
        let off = Limits {
            max_cursor_lag: None,
            max_outbox_age: None,
            ..limits()
        };
        assert!(problems(&h.snapshot(), &outbox(9, Some(3600)), &off).is_empty());
    }

    #[test]
    fn low_wallets_and_unread_balances_are_warnings() {
        use alloy::primitives::{Address, U256};
        let h = healthy();
        assert!(
            warnings(&h.snapshot(), &limits()).is_empty(),
            "none read yet, no error"
        );
        let wallet = |low: Vec<Low>| WalletSeen {
            address: Address::repeat_byte(0xab),
            class: "collection",
            balances: vec![("ETH".into(), U256::ZERO, 18)],
            next_nonce: 0,
            low,
        };
        let gas = Low {
            symbol: "ETH".into(),
            kind: "gas",
            holds: "0".into(),
            min: "0.02".into(),
        };
        let mut list = vec![wallet(vec![gas.clone()])];
        list.extend((0..11).map(|_| WalletSeen {
            class: "user",
            ..wallet(vec![gas.clone()])
        }));
        h.chain("ETH", |c| {
            c.wallets = Some(Arc::new(WalletsSeen {
                at: Instant::now(),
                at_ms: 0,
                list,
            }))
        });
        let w = warnings(&h.snapshot(), &limits());
        assert_eq!(
            w[0],
            "ETH: collection wallet 0xabababababababababababababababababababab holds 0 ETH, below 0.02 (gas)"
        );
        assert_eq!(w.len(), 11, "ten named, then a count: {w:?}");
        assert_eq!(w[10], "ETH: 2 more wallet balances are low");
        assert!(
            problems(&h.snapshot(), &outbox(0, None), &limits()).is_empty(),
            "not a fault of the gateway"
        );

        let h = healthy();
        h.chain("ETH", |c| c.wallets_error = Some("node down".into()));
        assert_eq!(
            warnings(&h.snapshot(), &limits()),
            vec!["ETH: wallet balances could not be read: node down".to_owned()]
        );
        h.chain("ETH", |c| {
            c.wallets = Some(Arc::new(WalletsSeen {
                at: Instant::now()
                    .checked_sub(Duration::from_secs(181))
                    .unwrap_or_else(Instant::now),
                at_ms: 0,
                list: vec![],
            }))
        });
        assert_eq!(
            warnings(&h.snapshot(), &limits()).len(),
            1,
            "three polls old"
        );
    }
}
