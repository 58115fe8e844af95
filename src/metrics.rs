//! Counters, gauges and latency histograms, rendered in the Prometheus text
//! format by the HTTP endpoint. Plain atomics: recording is a few relaxed
//! increments on hot paths, reading happens only at a scrape.

use crate::msg::Kind;
use crate::store::{Outcome, PayoutState};
use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds of the latency buckets, in milliseconds.
const BUCKETS_MS: [u64; 13] = [1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10_000];

/// A latency histogram.
#[derive(Debug, Default)]
pub struct Histogram {
    buckets: [AtomicU64; BUCKETS_MS.len()],
    count: AtomicU64,
    sum_us: AtomicU64,
}

impl Histogram {
    /// Records one observation.
    pub fn observe(&self, d: Duration) {
        let ms = d.as_millis() as u64;
        for (i, bound) in BUCKETS_MS.iter().enumerate() {
            if ms <= *bound {
                self.buckets[i].fetch_add(1, Ordering::Relaxed);
            }
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_us
            .fetch_add(d.as_micros() as u64, Ordering::Relaxed);
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        for (i, bound) in BUCKETS_MS.iter().enumerate() {
            let le = *bound as f64 / 1000.0;
            let _ = writeln!(
                out,
                "{name}_bucket{{le=\"{le}\"}} {}",
                self.buckets[i].load(Ordering::Relaxed)
            );
        }
        let count = self.count.load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {count}");
        let sum = self.sum_us.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "{name}_sum {sum}\n{name}_count {count}");
    }
}

/// Deposit states, as the store names them.
const DEPOSIT_STATES: [&str; 4] = ["pending", "confirmed", "failed", "orphaned"];

const OUTCOMES: [Outcome; 4] = [
    Outcome::Accepted,
    Outcome::Refused,
    Outcome::BadSignature,
    Outcome::Unaddressable,
];

/// Everything the daemon counts.
#[derive(Debug, Default)]
pub struct Metrics {
    requests: [[AtomicU64; 4]; 4],
    /// Deposits seen (status 2 published).
    pub deposits_seen: AtomicU64,
    /// Addresses watched (any symbol).
    pub watched: AtomicU64,
    /// Responses the broker confirmed.
    pub published: AtomicU64,
    /// Publish to broker confirm.
    pub publish_confirm: Histogram,
    /// A payout's request to its broadcast being accepted.
    pub payout_broadcast: Histogram,
    /// Listen's work per verified block (deposits, payouts, what matures, commit).
    pub block_apply: Histogram,
    /// Final answers (deposits, payouts) that a reorganisation deeper than
    /// `confirm_height` took back.
    pub deep_reorg_deposits: AtomicU64,
    /// See [`Metrics::deep_reorg_deposits`].
    pub deep_reorg_payouts: AtomicU64,
    /// Payouts whose signed transaction the node refuses for longer than
    /// `stuck_payout_secs` now.
    pub refused_payouts: AtomicU64,
    /// Webhook attempts the receiver answered 2xx.
    pub webhooks_delivered: AtomicU64,
    /// Webhook attempts that failed (each retry counts).
    pub webhooks_failed: AtomicU64,
}

/// Shared metrics; cheap to clone.
pub type SharedMetrics = Arc<Metrics>;

fn kind_index(k: Kind) -> usize {
    match k {
        Kind::Topup => 0,
        Kind::Withdraw => 1,
        Kind::Pay => 2,
        Kind::Remove => 3,
    }
}

fn outcome_index(o: Outcome) -> usize {
    match o {
        Outcome::Accepted => 0,
        Outcome::Refused => 1,
        Outcome::BadSignature => 2,
        Outcome::Unaddressable => 3,
    }
}

/// Figures read at scrape time from elsewhere (store, health, channels).
#[derive(Debug, Default, Clone)]
pub struct Gauges {
    /// Outbox rows not yet confirmed by the broker.
    pub outbox_backlog: i64,
    /// Payouts per stored state (states with none may be absent).
    pub payouts: Vec<(String, i64)>,
    /// Deposits per state (states with none may be absent).
    pub deposits: Vec<(String, i64)>,
    /// Per network.
    pub chains: Vec<ChainGauge>,
    /// Per channel: name, queued, capacity.
    pub channels: Vec<(&'static str, usize, usize)>,
    /// Broker connected.
    pub broker_connected: bool,
    /// No broker is configured: `m2pool_broker_connected` has no sample.
    pub no_broker: bool,
    /// This instance holds the lease (docs/architecture.md, "High availability").
    pub active: bool,
    /// The lease term: this instance's when active, the active one's as
    /// last seen when standby.
    pub lease_term: u64,
    /// Webhook deliveries waiting, and dead (`webhook replay` sends them).
    pub webhooks: (i64, i64),
    /// Age of the oldest response the broker has not confirmed, seconds.
    pub outbox_oldest_secs: u64,
    /// Wallets below a threshold: chain, class, symbol, kind (`gas` or
    /// `balance`), how many.
    pub wallets_low: Vec<(String, &'static str, String, &'static str, usize)>,
    /// Per network, seconds since its wallet balances were last read.
    pub balances_age: Vec<(String, u64)>,
}

/// One network's figures, labelled `chain`.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ChainGauge {
    /// The network (`ETH`, `BSC`).
    pub chain: String,
    /// Highest block its node reported.
    pub head: u64,
    /// Last block verified and applied.
    pub cursor: u64,
    /// Its node answers.
    pub node_connected: bool,
    /// Its head has not advanced for longer than its stall limit.
    pub stalled: bool,
}

impl Metrics {
    /// Counts a request recorded in the inbox.
    pub fn request(&self, kind: Kind, outcome: Outcome) {
        self.requests[kind_index(kind)][outcome_index(outcome)].fetch_add(1, Ordering::Relaxed);
    }

    /// How many requests of `kind` ended in `outcome`.
    pub fn requests(&self, kind: Kind, outcome: Outcome) -> u64 {
        self.requests[kind_index(kind)][outcome_index(outcome)].load(Ordering::Relaxed)
    }

    /// The Prometheus text exposition.
    pub fn render(&self, g: &Gauges) -> String {
        let mut out = String::with_capacity(4096);
        let _ = writeln!(
            out,
            "# HELP m2pool_requests_total Requests recorded, by kind and outcome.\n# TYPE m2pool_requests_total counter"
        );
        for k in Kind::ALL {
            for o in OUTCOMES {
                let _ = writeln!(
                    out,
                    "m2pool_requests_total{{kind=\"{}\",outcome=\"{}\"}} {}",
                    k.as_str(),
                    o.as_str(),
                    self.requests(k, o)
                );
            }
        }
        let gauge = |out: &mut String, name: &str, help: &str, v: String| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
        };
        let counter = |out: &mut String, name: &str, help: &str, v: u64| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}"
            );
        };
        counter(
            &mut out,
            "m2pool_deposits_seen_total",
            "Deposits reported with status 2.",
            self.deposits_seen.load(Ordering::Relaxed),
        );
        counter(
            &mut out,
            "m2pool_responses_published_total",
            "Responses confirmed by the broker.",
            self.published.load(Ordering::Relaxed),
        );
        counter(
            &mut out,
            "m2pool_webhooks_delivered_total",
            "Webhook deliveries the receiver answered 2xx.",
            self.webhooks_delivered.load(Ordering::Relaxed),
        );
        counter(
            &mut out,
            "m2pool_webhook_failures_total",
            "Webhook attempts that failed (each retry counts).",
            self.webhooks_failed.load(Ordering::Relaxed),
        );
        gauge(
            &mut out,
            "m2pool_webhooks_pending",
            "Webhook deliveries waiting for an attempt.",
            g.webhooks.0.to_string(),
        );
        gauge(
            &mut out,
            "m2pool_webhooks_dead",
            "Webhook deliveries given up (`m2pool-payment webhook replay` sends them again).",
            g.webhooks.1.to_string(),
        );
        gauge(
            &mut out,
            "m2pool_watched_addresses",
            "Addresses watched for deposits.",
            self.watched.load(Ordering::Relaxed).to_string(),
        );
        gauge(
            &mut out,
            "m2pool_outbox_backlog",
            "Responses not yet confirmed by the broker.",
            g.outbox_backlog.to_string(),
        );
        gauge(
            &mut out,
            "m2pool_outbox_oldest_seconds",
            "Age of the oldest response not yet confirmed by the broker (0 when none waits).",
            g.outbox_oldest_secs.to_string(),
        );
        let _ = writeln!(
            out,
            "# HELP m2pool_wallets_low Wallets holding less than their class's threshold (wallet_alerts), by chain, class (user, collection), symbol and kind (gas, balance).\n# TYPE m2pool_wallets_low gauge"
        );
        for (chain, class, symbol, kind, n) in &g.wallets_low {
            let _ = writeln!(
                out,
                "m2pool_wallets_low{{chain=\"{chain}\",class=\"{class}\",symbol=\"{symbol}\",kind=\"{kind}\"}} {n}"
            );
        }
        let _ = writeln!(
            out,
            "# HELP m2pool_wallet_balances_age_seconds Seconds since the network's wallet balances were last read from its node.\n# TYPE m2pool_wallet_balances_age_seconds gauge"
        );
        for (chain, age) in &g.balances_age {
            let _ = writeln!(
                out,
                "m2pool_wallet_balances_age_seconds{{chain=\"{chain}\"}} {age}"
            );
        }
        let _ = writeln!(
            out,
            "# HELP m2pool_broker_connected 1 when the broker connection is up (no sample without a broker).\n# TYPE m2pool_broker_connected gauge"
        );
        if !g.no_broker {
            let _ = writeln!(
                out,
                "m2pool_broker_connected {}",
                u8::from(g.broker_connected)
            );
        }
        gauge(
            &mut out,
            "m2pool_active",
            "1 when this instance holds the lease and works; 0 while it is a standby.",
            u8::from(g.active).to_string(),
        );
        gauge(
            &mut out,
            "m2pool_lease_term",
            "The lease term: this instance's when active, the active instance's when standby.",
            g.lease_term.to_string(),
        );
        let _ = writeln!(
            out,
            "# HELP m2pool_payouts Payouts (withdrawals and payment transfers) by state: pending is everything not final (queued to mined), failed is failed on chain or refused before signing.\n# TYPE m2pool_payouts gauge"
        );
        let count = |state: PayoutState| {
            g.payouts
                .iter()
                .filter(|(s, _)| s == state.as_str())
                .map(|(_, n)| *n)
                .sum::<i64>()
        };
        let summary = [
            (
                "pending",
                PayoutState::ALL
                    .iter()
                    .filter(|s| !s.is_final())
                    .map(|s| count(*s))
                    .sum::<i64>(),
            ),
            ("confirmed", count(PayoutState::Confirmed)),
            (
                "failed",
                count(PayoutState::Failed) + count(PayoutState::Refused),
            ),
            ("cancelled", count(PayoutState::Cancelled)),
        ];
        for (state, n) in summary {
            let _ = writeln!(out, "m2pool_payouts{{state=\"{state}\"}} {n}");
        }
        let _ = writeln!(
            out,
            "# HELP m2pool_payout_states Payouts by stored state, every step of their life.\n# TYPE m2pool_payout_states gauge"
        );
        for state in PayoutState::ALL {
            let _ = writeln!(
                out,
                "m2pool_payout_states{{state=\"{}\"}} {}",
                state.as_str(),
                count(state)
            );
        }
        let _ = writeln!(
            out,
            "# HELP m2pool_deposits Deposits to watched addresses by state.\n# TYPE m2pool_deposits gauge"
        );
        for state in DEPOSIT_STATES {
            let n: i64 = g
                .deposits
                .iter()
                .filter(|(s, _)| s == state)
                .map(|(_, n)| *n)
                .sum();
            let _ = writeln!(out, "m2pool_deposits{{state=\"{state}\"}} {n}");
        }
        type Figure = fn(&ChainGauge) -> u64;
        let per_chain: [(&str, &str, Figure); 5] = [
            (
                "m2pool_chain_head",
                "Highest block the node reported.",
                |c| c.head,
            ),
            ("m2pool_chain_cursor", "Last verified block.", |c| c.cursor),
            (
                "m2pool_chain_cursor_lag",
                "Blocks between the head and the cursor.",
                |c| c.head.saturating_sub(c.cursor),
            ),
            (
                "m2pool_chain_node_connected",
                "1 while the network's node answers.",
                |c| u64::from(c.node_connected),
            ),
            (
                "m2pool_chain_head_stalled",
                "1 while the network's head has not advanced for longer than its stall limit.",
                |c| u64::from(c.stalled),
            ),
        ];
        for (name, help, figure) in per_chain {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
            for c in &g.chains {
                let _ = writeln!(out, "{name}{{chain=\"{}\"}} {}", c.chain, figure(c));
            }
        }
        let _ = writeln!(
            out,
            "# HELP m2pool_channel_fill Items waiting in an internal channel.\n# TYPE m2pool_channel_fill gauge"
        );
        for (name, queued, _) in &g.channels {
            let _ = writeln!(out, "m2pool_channel_fill{{channel=\"{name}\"}} {queued}");
        }
        let _ = writeln!(
            out,
            "# HELP m2pool_channel_capacity Capacity of an internal channel.\n# TYPE m2pool_channel_capacity gauge"
        );
        for (name, _, capacity) in &g.channels {
            let _ = writeln!(
                out,
                "m2pool_channel_capacity{{channel=\"{name}\"}} {capacity}"
            );
        }
        let _ = writeln!(
            out,
            "# HELP m2pool_final_answers_reorged_total Final answers (status 1) that a reorganisation deeper than confirm_height took back: check each by hand.\n# TYPE m2pool_final_answers_reorged_total counter"
        );
        for (kind, n) in [
            ("deposit", &self.deep_reorg_deposits),
            ("payout", &self.deep_reorg_payouts),
        ] {
            let _ = writeln!(
                out,
                "m2pool_final_answers_reorged_total{{kind=\"{kind}\"}} {}",
                n.load(Ordering::Relaxed)
            );
        }
        gauge(
            &mut out,
            "m2pool_payouts_refused_by_node",
            "Payouts whose signed transaction the node has refused for longer than stuck_payout_secs.",
            self.refused_payouts.load(Ordering::Relaxed).to_string(),
        );
        self.publish_confirm.render(
            &mut out,
            "m2pool_publish_confirm_seconds",
            "From publishing a response to the broker's confirm.",
        );
        self.payout_broadcast.render(
            &mut out,
            "m2pool_payout_broadcast_seconds",
            "From a payout's request to its broadcast being accepted.",
        );
        self.block_apply.render(
            &mut out,
            "m2pool_block_apply_seconds",
            "Work per verified block: deposits, payouts, what matures, commit.",
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_prometheus_text() {
        let m = Metrics::default();
        m.request(Kind::Topup, Outcome::Accepted);
        m.request(Kind::Topup, Outcome::Accepted);
        m.request(Kind::Withdraw, Outcome::BadSignature);
        m.publish_confirm.observe(Duration::from_millis(3));
        m.publish_confirm.observe(Duration::from_millis(30));
        let g = Gauges {
            outbox_backlog: 4,
            payouts: vec![
                ("queued".into(), 1),
                ("sent".into(), 2),
                ("mined".into(), 4),
                ("confirmed".into(), 8),
                ("failed".into(), 16),
                ("refused".into(), 32),
            ],
            deposits: vec![("pending".into(), 3)],
            chains: vec![
                ChainGauge {
                    chain: "ETH".into(),
                    head: 120,
                    cursor: 118,
                    node_connected: true,
                    stalled: false,
                },
                ChainGauge {
                    chain: "BSC".into(),
                    head: 900,
                    cursor: 900,
                    node_connected: false,
                    stalled: true,
                },
            ],
            channels: vec![("requests", 5, 4096)],
            outbox_oldest_secs: 7,
            wallets_low: vec![("ETH".into(), "collection", "ETH".into(), "gas", 1)],
            balances_age: vec![("ETH".into(), 12)],
            ..Gauges::default()
        };
        let text = m.render(&g);
        assert!(
            text.contains("m2pool_requests_total{kind=\"topup\",outcome=\"accepted\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("m2pool_requests_total{kind=\"withdraw\",outcome=\"bad_signature\"} 1")
        );
        assert!(text.contains("m2pool_outbox_backlog 4"));
        assert!(text.contains("m2pool_outbox_oldest_seconds 7\n"));
        assert!(text.contains(
            "m2pool_wallets_low{chain=\"ETH\",class=\"collection\",symbol=\"ETH\",kind=\"gas\"} 1\n"
        ));
        assert!(text.contains("m2pool_wallet_balances_age_seconds{chain=\"ETH\"} 12\n"));
        // Summaries as the HELP text says, known states with 0 rather than absent.
        assert!(
            text.contains("m2pool_payouts{state=\"pending\"} 7\n"),
            "{text}"
        );
        assert!(text.contains("m2pool_payouts{state=\"confirmed\"} 8\n"));
        assert!(text.contains("m2pool_payouts{state=\"failed\"} 48\n"));
        assert!(text.contains("m2pool_payouts{state=\"cancelled\"} 0\n"));
        assert!(text.contains("m2pool_payout_states{state=\"sent\"} 2\n"));
        assert!(text.contains("m2pool_payout_states{state=\"claimed\"} 0\n"));
        assert!(text.contains("m2pool_deposits{state=\"pending\"} 3\n"));
        assert!(text.contains("m2pool_deposits{state=\"orphaned\"} 0\n"));
        assert!(text.contains("m2pool_chain_cursor_lag{chain=\"ETH\"} 2"));
        assert!(text.contains("m2pool_chain_cursor_lag{chain=\"BSC\"} 0"));
        assert!(text.contains("m2pool_chain_head{chain=\"BSC\"} 900\n"));
        assert!(text.contains("m2pool_chain_node_connected{chain=\"ETH\"} 1\n"));
        assert!(text.contains("m2pool_chain_node_connected{chain=\"BSC\"} 0\n"));
        assert!(text.contains("m2pool_chain_head_stalled{chain=\"BSC\"} 1\n"));
        assert!(text.contains("m2pool_channel_fill{channel=\"requests\"} 5"));
        assert!(text.contains("m2pool_publish_confirm_seconds_bucket{le=\"0.005\"} 1"));
        assert!(text.contains("m2pool_publish_confirm_seconds_bucket{le=\"+Inf\"} 2"));
        assert!(text.contains("m2pool_publish_confirm_seconds_count 2"));
        // Every sample line is `name{labels} value` or `name value`, and
        // belongs to the family of the last TYPE line (one group per family).
        let mut family = String::new();
        let mut seen = std::collections::HashSet::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                family = rest.split(' ').next().unwrap_or_default().to_owned();
                assert!(seen.insert(family.clone()), "{family} twice");
                continue;
            }
            if line.starts_with('#') {
                continue;
            }
            assert_eq!(line.split(' ').count(), 2, "{line}");
            let name = line.split(['{', ' ']).next().unwrap_or_default();
            let base = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| name.strip_suffix(s))
                .filter(|b| *b == family)
                .unwrap_or(name);
            assert_eq!(base, family, "{line} outside its family");
        }
    }
}
