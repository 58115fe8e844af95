//! `GET /healthz` (JSON; 503 when degraded) and `GET /metrics`
//! (Prometheus).
//!
//! `/healthz` is degraded while the broker or a node is unreachable, a head
//! has stalled, the block cursor trails the head or responses wait too long
//! for the broker ([`crate::health::problems`]); it lists why in `problems`.
//! Dead webhook deliveries are listed under `warnings` (the gateway itself
//! is fine). The figures come from the shared health state, the metrics, the message
//! store and the internal channels (through weak handles, so the endpoint
//! never keeps a channel open at shutdown).

use super::HttpDeps;
use crate::health::{self, OutboxState, Role};
use crate::metrics::{ChainGauge, Gauges};
use serde_json::json;
use tracing::warn;

impl HttpDeps {
    /// The outbox as the store reports it, or why it cannot.
    pub(crate) async fn outbox(&self) -> Result<OutboxState, String> {
        health::outbox_state(&self.store).await
    }

    pub(crate) async fn gauges(&self) -> Gauges {
        let snap = self.health.snapshot();
        let (payouts, deposits) = self
            .store
            .state_counts(&self.nets)
            .await
            .unwrap_or_else(|e| {
                warn!(target: "m2pool::http", error = %e, "cannot read state counts for metrics");
                Default::default()
            });
        let webhooks = self.store.webhook_counts().await.unwrap_or_else(|e| {
            warn!(target: "m2pool::http", error = %e, "cannot count webhook deliveries for metrics");
            (-1, -1)
        });
        let fill = |name, cap: Option<(usize, usize)>| cap.map(|(c, m)| (name, m - c, m));
        let outbox = self.outbox().await;
        let mut wallets_low = std::collections::BTreeMap::new();
        let mut balances_age = Vec::new();
        for (chain, c) in &snap.chains {
            let Some(seen) = &c.wallets else { continue };
            balances_age.push((chain.clone(), seen.at.elapsed().as_secs()));
            for w in &seen.list {
                for l in &w.low {
                    *wallets_low
                        .entry((chain.clone(), w.class, l.symbol.clone(), l.kind))
                        .or_insert(0) += 1;
                }
            }
        }
        Gauges {
            outbox_backlog: outbox.as_ref().map_or(-1, |o| o.backlog),
            outbox_oldest_secs: outbox
                .as_ref()
                .ok()
                .and_then(|o| o.oldest)
                .map_or(0, |d| d.as_secs()),
            wallets_low: wallets_low
                .into_iter()
                .map(|((chain, class, symbol, kind), n)| (chain, class, symbol, kind, n))
                .collect(),
            balances_age,
            payouts,
            deposits,
            chains: snap
                .chains
                .iter()
                .map(|(n, c)| ChainGauge {
                    chain: n.clone(),
                    head: c.head,
                    cursor: c.cursor.unwrap_or_default(),
                    node_connected: c.node_connected,
                    stalled: c.stalled,
                })
                .collect(),
            channels: [
                fill(
                    "requests",
                    self.requests
                        .upgrade()
                        .map(|s| (s.capacity(), s.max_capacity())),
                ),
                fill(
                    "chain_events",
                    self.chain
                        .upgrade()
                        .map(|s| (s.capacity(), s.max_capacity())),
                ),
            ]
            .into_iter()
            .flatten()
            .collect(),
            broker_connected: snap.broker_connected,
            no_broker: snap.no_broker,
            active: matches!(snap.role, Role::Active { .. }),
            lease_term: match snap.role {
                Role::Active { term } => term,
                Role::Standby => snap.lease.term,
            },
            webhooks,
        }
    }

    /// The `/healthz` answer: 200 and `"status":"ok"`, or 503 and
    /// `"status":"degraded"` with the `problems` in plain words.
    pub(super) async fn healthz(&self) -> (u16, String) {
        let snap = self.health.snapshot();
        if snap.role == Role::Standby {
            // Waiting is this instance's job: not a fault.
            let body = json!({
                "status": "standby",
                "role": "standby",
                "problems": [],
                "active": {"instance": snap.lease.holder, "term": snap.lease.term},
                "broker_connected": (!snap.no_broker).then_some(snap.broker_connected),
            });
            return (200, body.to_string());
        }
        let outbox = self.outbox().await;
        let problems = health::problems(&snap, &outbox, &self.limits);
        let mut chains = serde_json::Map::new();
        for (name, c) in &snap.chains {
            chains.insert(
                name.clone(),
                json!({
                    "node_connected": c.node_connected,
                    "head": c.head,
                    "cursor": c.cursor,
                    "cursor_lag": c.lag(),
                    "seconds_since_head": c.since_head().map(|d| d.as_secs()),
                    "head_stalled": self.limits.stalled(name, c).is_some(),
                }),
            );
        }
        let (backlog, oldest) = match &outbox {
            Ok(o) => (o.backlog, o.oldest.map(|d| d.as_secs())),
            Err(_) => (-1, None),
        };
        let degraded = !problems.is_empty();
        let (pending, dead) = self.store.webhook_counts().await.unwrap_or((-1, -1));
        let warnings = health::all_warnings(&snap, &self.limits, dead);
        let term = match snap.role {
            Role::Active { term } => term,
            Role::Standby => 0,
        };
        let body = json!({
            "status": if degraded { "degraded" } else { "ok" },
            "role": "active",
            "term": term,
            "problems": problems,
            "broker_connected": (!snap.no_broker).then_some(snap.broker_connected),
            "chains": chains,
            "outbox_backlog": backlog,
            "outbox_oldest_secs": oldest,
            "webhooks": {"pending": pending, "dead": dead},
            "warnings": warnings,
        });
        (if degraded { 503 } else { 200 }, body.to_string())
    }
}
