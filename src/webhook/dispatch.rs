//! The dispatcher: one task that reads due deliveries from the store,
//! attempts each in a task of its own (at most `concurrency` at once, at
//! most `per_host` to one host, one at a time per target group so that a
//! request's answers arrive in order), and records the results, a batch per
//! transaction. An attempt succeeds when the receiver answers 2xx; anything
//! else (an error, a timeout, another status, a redirect) is retried on
//! the schedule until `retry_for` has passed, then the delivery is dead.
//!
//! Delivery is at least once: an attempt cut short by a shutdown or a lost
//! lease is made again, with the same `Idempotency-Key`.

use super::{EVENT_HEADER, IDEMPOTENCY_HEADER, SIGNATURE_HEADER, TIMESTAMP_HEADER, signature};
use crate::config::{WebhookConfig, check_notify_url, public_ip};
use crate::metrics::SharedMetrics;
use crate::secret::CommKey;
use crate::store::{AttemptResult, Delivery, Store, StoreError};
use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

/// The dispatcher looks for due deliveries at least this often.
const IDLE_LOOK: Duration = Duration::from_millis(500);
/// Results recorded per transaction, at most.
const RESULTS_PER_COMMIT: usize = 512;
/// A finished attempt's result waits at most this long to be recorded with
/// others (a group's next answer waits for it).
const RECORD_EVERY: Duration = Duration::from_millis(20);

/// Why the dispatcher stopped.
#[derive(Debug, thiserror::Error)]
pub enum DispatchError {
    /// The store failed (a lost lease included).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The HTTP client could not be built.
    #[error("cannot build the webhook HTTP client: {0}")]
    Client(String),
}

/// When a delivery that has failed `failures` times (this one included),
/// first attempted at `first_at`, is tried next (unix ms); `None`: it is
/// dead. The wait after the n-th failure is `retry[n-1]`, the last one
/// repeating, until `retry_for` after the first attempt.
pub fn next_attempt(cfg: &WebhookConfig, failures: i64, first_at: i64, now: i64) -> Option<i64> {
    let i = usize::try_from(failures.max(1) - 1).unwrap_or(usize::MAX);
    let wait = cfg.retry.get(i).or(cfg.retry.last())?;
    let next = now.saturating_add(wait.as_millis() as i64);
    let end = first_at.saturating_add(cfg.retry_for.as_millis() as i64);
    (next <= end).then_some(next)
}

/// Resolves host names to public addresses only (unless private ones are
/// allowed): a `notify_url` whose name points into the gateway's own
/// network is refused at every attempt, not only when the request came.
struct PublicOnly {
    allow_private: bool,
}

impl reqwest::dns::Resolve for PublicOnly {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let allow = self.allow_private;
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let found: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0))
                .await?
                .filter(|a| allow || public_ip(a.ip()))
                .collect();
            if found.is_empty() {
                return Err(format!(
                    "{host} resolves to no public address, which this gateway does not call"
                )
                .into());
            }
            Ok(Box::new(found.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// Sends webhook deliveries until `shutdown`. `wake` is notified when
/// deliveries are planned. A critical task: a store failure stops it.
pub async fn dispatch(
    store: Store,
    cfg: WebhookConfig,
    key: CommKey,
    wake: Arc<Notify>,
    metrics: SharedMetrics,
    shutdown: CancellationToken,
) -> Result<(), DispatchError> {
    let client = reqwest::Client::builder()
        .timeout(cfg.timeout)
        .redirect(reqwest::redirect::Policy::none())
        .dns_resolver(Arc::new(PublicOnly {
            allow_private: cfg.allow_private,
        }))
        .user_agent(concat!("m2pool-payment/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| DispatchError::Client(e.to_string()))?;
    let key = Arc::new(key);
    let (done_tx, mut done_rx) = mpsc::channel::<(Delivery, Result<(), String>)>(cfg.concurrency);
    // In flight: ids, and attempts per host.
    let mut flying: HashSet<i64> = HashSet::new();
    let mut per_host: HashMap<String, usize> = HashMap::new();
    // Finished but not recorded yet: their slots are free, and they are
    // not read as due again until recorded.
    let mut finished: Vec<(Delivery, Result<(), String>)> = Vec::new();
    let mut oldest_finished: Option<tokio::time::Instant> = None;
    loop {
        // Take what has finished: its slot is free at once.
        while let Ok(r) = done_rx.try_recv() {
            free_slot(&mut flying, &mut per_host, &r.0);
            oldest_finished.get_or_insert_with(tokio::time::Instant::now);
            finished.push(r);
        }
        // Record results a batch per transaction: when enough are
        // waiting, when the oldest has waited long enough, or when nothing
        // else is in flight.
        if record_now(
            finished.len(),
            oldest_finished.map(|t| t.elapsed()),
            flying.len(),
        ) {
            record(&store, &cfg, &metrics, &mut finished).await?;
            oldest_finished = None;
        }
        // Start what is due, once a quarter of the slots (or all) are free:
        // a look at the store per finished attempt would cost more than the
        // attempt.
        let room = cfg.concurrency.saturating_sub(flying.len());
        if look_now(room, cfg.concurrency, flying.len()) {
            let busy: Vec<i64> = flying
                .iter()
                .copied()
                .chain(finished.iter().map(|(d, _)| d.id))
                .collect();
            let full: Vec<&str> = per_host
                .iter()
                .filter(|(_, n)| **n >= cfg.per_host)
                .map(|(h, _)| h.as_str())
                .collect();
            let due = store
                .webhooks_due(crate::clock::now_ms(), &busy, &full, room as u32)
                .await?;
            for d in due {
                let n = per_host.entry(d.host.clone()).or_default();
                if *n >= cfg.per_host {
                    continue;
                }
                *n += 1;
                flying.insert(d.id);
                let (client, key, done, allow) = (
                    client.clone(),
                    key.clone(),
                    done_tx.clone(),
                    cfg.allow_private,
                );
                tokio::spawn(async move {
                    let r = attempt(&client, key.expose(), &d, allow).await;
                    let _ = done.send((d, r)).await;
                });
            }
        }
        let nap = oldest_finished.map_or(IDLE_LOOK, |t| RECORD_EVERY.saturating_sub(t.elapsed()));
        tokio::select! {
            _ = shutdown.cancelled() => {
                // What has finished is recorded if the store still takes
                // it; what is in flight is made again later.
                if !finished.is_empty()
                    && let Err(e) = record(&store, &cfg, &metrics, &mut finished).await
                {
                    warn!(target: "m2pool::webhook", error = %e,
                          "webhook results not recorded at shutdown; those deliveries are made again");
                }
                debug!(target: "m2pool::webhook", in_flight = flying.len(),
                       "webhooks stopped; attempts in flight are made again later");
                return Ok(());
            }
            Some(r) = done_rx.recv() => {
                free_slot(&mut flying, &mut per_host, &r.0);
                oldest_finished.get_or_insert_with(tokio::time::Instant::now);
                finished.push(r);
            }
            _ = wake.notified() => {}
            _ = tokio::time::sleep(nap) => {}
        }
    }
}

/// Whether the `waiting` finished results, the oldest of them finished
/// `oldest` ago, are recorded now (with `in_flight` attempts still out).
fn record_now(waiting: usize, oldest: Option<Duration>, in_flight: usize) -> bool {
    waiting > 0
        && (waiting >= RESULTS_PER_COMMIT
            || oldest.is_some_and(|t| t >= RECORD_EVERY)
            || in_flight == 0)
}

/// Whether to look for due deliveries with `room` of `concurrency` slots
/// free and `in_flight` attempts out.
fn look_now(room: usize, concurrency: usize, in_flight: usize) -> bool {
    room > 0 && (room >= concurrency.div_ceil(4) || in_flight == 0)
}

/// Frees the slot of a finished attempt.
fn free_slot(flying: &mut HashSet<i64>, per_host: &mut HashMap<String, usize>, d: &Delivery) {
    flying.remove(&d.id);
    if let Some(n) = per_host.get_mut(&d.host) {
        *n -= 1;
        if *n == 0 {
            per_host.remove(&d.host);
        }
    }
}

/// Records the results of `finished` attempts in one transaction.
async fn record(
    store: &Store,
    cfg: &WebhookConfig,
    metrics: &SharedMetrics,
    finished: &mut Vec<(Delivery, Result<(), String>)>,
) -> Result<(), StoreError> {
    let now = crate::clock::now_ms();
    let results: Vec<AttemptResult> = finished
        .iter()
        .map(|(d, r)| judge(cfg, d, r, now, metrics))
        .collect();
    store.record_attempts(&results).await?;
    finished.clear();
    Ok(())
}

/// The result to record for one attempt.
fn judge(
    cfg: &WebhookConfig,
    d: &Delivery,
    r: &Result<(), String>,
    now: i64,
    metrics: &SharedMetrics,
) -> AttemptResult {
    match r {
        Ok(()) => {
            metrics.webhooks_delivered.fetch_add(1, Ordering::Relaxed);
            debug!(target: "m2pool::webhook", delivery = d.id, seq = d.seq, host = %d.host, "webhook delivered");
            AttemptResult::Delivered { id: d.id }
        }
        Err(error) => {
            metrics.webhooks_failed.fetch_add(1, Ordering::Relaxed);
            match next_attempt(cfg, d.attempts + 1, d.first_at, now) {
                Some(next_at) => {
                    info!(target: "m2pool::webhook", delivery = d.id, seq = d.seq, host = %d.host,
                          attempts = d.attempts + 1, error = %error, "webhook failed; retrying");
                    AttemptResult::Retry {
                        id: d.id,
                        next_at,
                        error: error.clone(),
                    }
                }
                None => {
                    warn!(target: "m2pool::webhook", delivery = d.id, seq = d.seq, host = %d.host,
                          attempts = d.attempts + 1, error = %error,
                          "webhook dead; `m2pool-payment webhook replay` sends it again");
                    AttemptResult::Dead {
                        id: d.id,
                        error: error.clone(),
                    }
                }
            }
        }
    }
}

/// One POST: the answer as published, signed. `Err` says why it failed, in
/// words without the URL (its query may hold the receiver's secret).
async fn attempt(
    client: &reqwest::Client,
    key: &[u8],
    d: &Delivery,
    allow_private: bool,
) -> Result<(), String> {
    // An address in the URL is not resolved, so it is checked here.
    check_notify_url(&d.url, allow_private).map_err(|e| format!("the URL {e}"))?;
    let ts = crate::clock::now_ms() / 1000;
    let resp = client
        .post(&d.url)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .header(EVENT_HEADER, &d.kind)
        .header(IDEMPOTENCY_HEADER, d.seq.to_string())
        .header(TIMESTAMP_HEADER, ts.to_string())
        .header(SIGNATURE_HEADER, signature(key, ts, &d.body))
        .body(d.body.clone())
        .send()
        .await
        .map_err(|e| {
            let e = e.without_url();
            if e.is_timeout() {
                "no answer in time".to_owned()
            } else {
                // The cause chain says what failed (refused, DNS, TLS).
                let mut text = e.to_string();
                let mut src = std::error::Error::source(&e);
                while let Some(s) = src {
                    text = format!("{text}: {s}");
                    src = s.source();
                }
                text
            }
        })?;
    let status = resp.status();
    if status.is_success() {
        Ok(())
    } else {
        Err(format!("the receiver answered {status}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_are_recorded_in_batches_and_slots_refilled_a_quarter_at_a_time() {
        let ms = Duration::from_millis;
        // Nothing to record; a few results while others fly wait their turn.
        assert!(!record_now(0, None, 0));
        assert!(!record_now(3, Some(ms(1)), 10));
        // A full batch, a result old enough, or nothing else out: now.
        assert!(record_now(RESULTS_PER_COMMIT, Some(ms(1)), 10));
        assert!(record_now(3, Some(RECORD_EVERY), 10));
        assert!(record_now(3, Some(ms(1)), 0));

        assert!(!look_now(0, 64, 64), "no slot free");
        assert!(!look_now(15, 64, 49), "less than a quarter free");
        assert!(look_now(16, 64, 48));
        assert!(look_now(1, 1, 0), "a concurrency of one");
    }

    #[test]
    fn retries_follow_the_schedule_then_the_last_wait_until_the_window_ends() {
        let cfg = WebhookConfig::default();
        let t0 = 1_000_000;
        // 15 s, 30 s, 1 min, 5 min, 15 min, 1 h, then hourly.
        let waits: Vec<i64> = (1..=8)
            .map(|n| next_attempt(&cfg, n, t0, t0).expect("in window") - t0)
            .collect();
        assert_eq!(
            waits,
            [
                15_000, 30_000, 60_000, 300_000, 900_000, 3_600_000, 3_600_000, 3_600_000
            ]
        );
        // An attempt 23 h in still gets its next; one whose next would land
        // past 24 h is dead.
        let h = 3_600_000;
        assert_eq!(next_attempt(&cfg, 20, t0, t0 + 23 * h), Some(t0 + 24 * h));
        assert_eq!(next_attempt(&cfg, 21, t0, t0 + 23 * h + 1), None);
    }
}
