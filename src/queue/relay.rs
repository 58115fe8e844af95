//! The outbox relay: publishes unsent responses in order, persistent, with
//! publisher confirms, and marks a row sent only after the broker's ack.
//!
//! Publishes are `mandatory`, so a response that no queue takes comes back as a
//! return and counts as a failure, like a nack. After a failure the relay starts
//! again from the oldest unsent row, and the rows of that response queue after
//! the failed one go out again behind it, so the newest answer is always the
//! last one delivered: delivery is at least once, and a repeat is the identical
//! body.
//!
//! The confirmed rows of a round are marked sent by a recorder beside the
//! relay, so the next round is read and published while they are recorded:
//! the marks wait for the store's write lock, which listen may hold while it
//! applies a block. The sweep reads on by id, not by the marks; before it
//! starts over from the first unsent row, every round handed to the recorder
//! is recorded, so no confirmed row is published twice.

use super::{Broker, QueueError, amqp};
use crate::backoff::{Backoff, sleep_or_shutdown};
use crate::store::{DEAD_LETTER_PREFIX, OutboxRow};
use futures::StreamExt;
use futures::stream::FuturesOrdered;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Confirmation, Connection, PublisherConfirm};
use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, warn};

/// Rows published per round: one read, one commit marking them sent.
const BATCH: u32 = 4096;

/// Publishes whose frames may be waiting to be written at once.
const PUBLISH_WINDOW: usize = 256;

/// Confirmed rounds that may wait for the recorder before the relay waits.
const ROUNDS_TO_RECORD: usize = 4;

/// How long the relay goes on publishing after shutdown was asked for.
pub const FLUSH_LIMIT: Duration = Duration::from_secs(5);

/// One row routed: where it goes and how.
type Target<'a> = (
    &'a OutboxRow,
    ShortString,
    ShortString,
    BasicPublishOptions,
    BasicProperties,
);

/// Publishes one routed row; resolves once its frames are written.
async fn publish<'a>(
    ch: &'a Channel,
    (row, exchange, routing_key, opts, props): Target<'a>,
) -> (i64, Result<PublisherConfirm, lapin::Error>) {
    let result = ch
        .basic_publish(exchange, routing_key, opts, &row.body, props)
        .await;
    (row.id, result)
}

/// A publish written to the channel, waiting for the broker's confirm.
type Pending = (i64, PublisherConfirm, Instant);

/// What publishing one round of rows gave.
#[derive(Default)]
struct Round {
    /// Rows confirmed, each after every earlier row of its kind this round.
    sent: Vec<i64>,
    /// Response kinds with a row that was not confirmed this round.
    broken: HashSet<String>,
    /// Some row was not confirmed.
    failed: bool,
    /// The channel was lost: the rows after the loss were not published.
    lost: bool,
}

impl Round {
    /// Counts the broker's answer to row `id` of response kind `kind`, in
    /// publish order: it is sent only if it was confirmed and every earlier
    /// row of its kind this round was too.
    fn settle(&mut self, id: i64, kind: &str, confirmed: bool) {
        if self.broken.contains(kind) {
            return;
        }
        if confirmed {
            self.sent.push(id);
        } else {
            self.failed = true;
            self.broken.insert(kind.to_owned());
        }
    }
}

/// What the relay hands its recorder, in order.
enum Record {
    /// A round's rows, the ids of those the broker confirmed (each after
    /// every earlier row of its kind), and when the confirms came (unix
    /// milliseconds).
    Round {
        rows: Vec<OutboxRow>,
        sent: Vec<i64>,
        at: i64,
    },
    /// Answered once every round handed over before it is recorded.
    Barrier(oneshot::Sender<()>),
}

/// The relay's fixed parts: its channel and where each kind of row goes.
struct Relay<'b> {
    broker: &'b Broker,
    ch: Channel,
    /// Response kind → (exchange, routing key).
    routes: HashMap<&'static str, (ShortString, ShortString)>,
    props: BasicProperties,
    publish_opts: BasicPublishOptions,
}

/// Publishes the outbox until `shutdown` (then until `drained`, briefly).
pub(super) async fn relay(
    conn: &Connection,
    broker: &Broker,
    shutdown: &CancellationToken,
    drained: &CancellationToken,
) -> Result<(), QueueError> {
    let ch = conn
        .create_channel()
        .await
        .map_err(amqp("open publisher channel"))?;
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .map_err(amqp("confirm.select"))?;
    let routes = broker
        .cfg
        .entries()
        .into_iter()
        .filter(|(k, _)| k.ends_with("_resp"))
        .map(|(k, e)| {
            (
                k,
                (e.exchange.as_str().into(), e.routing[0].as_str().into()),
            )
        })
        .collect();
    let relay = Relay {
        broker,
        ch,
        routes,
        props: BasicProperties::default()
            .with_delivery_mode(2)
            .with_content_type("application/json".into()),
        publish_opts: BasicPublishOptions {
            mandatory: true,
            ..BasicPublishOptions::default()
        },
    };
    let (records, recorded) = mpsc::channel(ROUNDS_TO_RECORD);
    // A recorder that fails ends the relay with its error here.
    tokio::try_join!(
        relay.run(shutdown, drained, records),
        record_rounds(broker, recorded)
    )?;
    Ok(())
}

/// Records the rounds the relay hands over, in order, until the relay is
/// done with them.
async fn record_rounds(
    broker: &Broker,
    mut records: mpsc::Receiver<Record>,
) -> Result<(), QueueError> {
    while let Some(next) = records.recv().await {
        match next {
            Record::Round { rows, sent, at } => record(broker, rows, &sent, at).await?,
            Record::Barrier(done) => {
                let _ = done.send(());
            }
        }
    }
    Ok(())
}

/// Marks the confirmed rows sent (as of `at`), counts them and writes their
/// log lines.
async fn record(
    broker: &Broker,
    rows: Vec<OutboxRow>,
    sent: &[i64],
    at: i64,
) -> Result<(), QueueError> {
    broker.store.mark_sent_at(sent, at).await?;
    broker
        .metrics
        .published
        .fetch_add(sent.len() as u64, std::sync::atomic::Ordering::Relaxed);
    let confirmed: HashSet<i64> = sent.iter().copied().collect();
    for row in rows.into_iter().filter(|r| confirmed.contains(&r.id)) {
        // The line made with the answer; rows written before there
        // were such lines are read for one, as they used to be.
        let line = row
            .line
            .or_else(|| crate::txlog::response_line(&row.kind, &row.body));
        if let Some(line) = line {
            broker.txlog.write(line).await;
        }
    }
    debug!(target: "m2pool::queue", sent = sent.len(), "responses confirmed");
    Ok(())
}

/// Waits until every round handed to the recorder is recorded.
async fn recorded(records: &mpsc::Sender<Record>) {
    let (done, recorded) = oneshot::channel();
    // A recorder that is gone failed, and its error ends the relay.
    if records.send(Record::Barrier(done)).await.is_ok() {
        let _ = recorded.await;
    }
}

impl Relay<'_> {
    /// Waits while this instance may not hold the lease (its renewal is
    /// late: the store is away); `false` if shutdown came first. A deposed
    /// instance is stopped by its lease task.
    async fn lease_held(&self, shutdown: &CancellationToken) -> bool {
        while !self.broker.lease.is_held() {
            if shutdown.is_cancelled() {
                return false;
            }
            tokio::select! {
                _ = shutdown.cancelled() => {}
                _ = tokio::time::sleep(Duration::from_millis(100)) => {}
            }
        }
        true
    }

    /// Sweeps the outbox in id order, round after round.
    async fn run(
        &self,
        shutdown: &CancellationToken,
        drained: &CancellationToken,
        records: mpsc::Sender<Record>,
    ) -> Result<(), QueueError> {
        let store = &self.broker.store;
        let mut after = 0i64;
        // Response kinds with a row that failed since the sweep began at id
        // 0: their later rows wait (so that each queue's answers stay in
        // order) while the other kinds go on; at the end of the outbox the
        // sweep starts over from the first unsent row.
        let mut blocked: HashSet<String> = HashSet::new();
        let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(10));
        let mut flush_until: Option<Instant> = None;
        loop {
            if shutdown.is_cancelled() {
                let until = *flush_until.get_or_insert_with(|| Instant::now() + FLUSH_LIMIT);
                if Instant::now() > until {
                    recorded(&records).await;
                    let left = store.outbox_backlog().await?;
                    warn!(target: "m2pool::queue", left, "shutting down with responses unpublished; they go out at the next start");
                    break;
                }
            }
            let mut rows = store.unsent(after, BATCH).await?;
            if rows.is_empty() && !blocked.is_empty() {
                // Everything after the failures was tried: retry them, in order.
                recorded(&records).await;
                blocked.clear();
                after = 0;
                pause(backoff.next_delay().0, shutdown, flush_until).await;
                continue;
            }
            let read_to = rows.last().map_or(after, |r| r.id);
            rows.retain(|r| !blocked.contains(&r.kind));
            if rows.is_empty() && read_to > after {
                after = read_to;
                continue;
            }
            if rows.is_empty() {
                if flush_until.is_some() && drained.is_cancelled() {
                    // Listen has committed its last batch and all of it is out.
                    break;
                }
                let idle = if flush_until.is_some() {
                    Duration::from_millis(20)
                } else {
                    Duration::from_secs(1)
                };
                tokio::select! {
                    _ = shutdown.cancelled(), if flush_until.is_none() => {}
                    _ = self.broker.outbox.notified() => {}
                    _ = tokio::time::sleep(idle) => {}
                }
                continue;
            }
            if !self.lease_held(shutdown).await {
                warn!(target: "m2pool::queue", "the lease may have expired: stopping with responses unpublished");
                break;
            }
            let mut round = self.publish(&rows).await?;
            let record = Record::Round {
                rows,
                sent: std::mem::take(&mut round.sent),
                at: crate::clock::now_ms(),
            };
            if records.send(record).await.is_err() {
                // The recorder failed; its error ends the relay.
                break;
            }
            if round.lost || (round.failed && round.broken.is_empty()) {
                // The channel was lost mid-round: rows after the loss were
                // not even published. Start the sweep over.
                recorded(&records).await;
                blocked.clear();
                after = 0;
                pause(backoff.next_delay().0, shutdown, flush_until).await;
                continue;
            }
            if round.failed {
                blocked.extend(round.broken);
            } else if blocked.is_empty() {
                backoff.reset();
            }
            after = read_to;
        }
        Ok(())
    }

    /// Where a row goes, and how; `None` for a row with nowhere to go (it
    /// stays unsent).
    fn target<'r>(&self, row: &'r OutboxRow) -> Option<Target<'r>> {
        match row.kind.strip_prefix(DEAD_LETTER_PREFIX) {
            // Dead letters: to the dead-letter exchange, keyed by request
            // kind, with the reason in a header; not mandatory, since what
            // is bound there is the operator's choice.
            Some(request_kind) => {
                let x = self.broker.cfg.dead_letter_exchange.as_ref()?;
                let mut headers = FieldTable::default();
                headers.insert(
                    "x-m2pool-reason".into(),
                    AMQPValue::LongString(row.reason.clone().unwrap_or_default().into()),
                );
                let props = BasicProperties::default()
                    .with_delivery_mode(2)
                    .with_headers(headers);
                Some((
                    row,
                    ShortString::from(x.as_str()),
                    ShortString::from(request_kind),
                    BasicPublishOptions::default(),
                    props,
                ))
            }
            None => {
                let Some((exchange, routing_key)) = self.routes.get(row.kind.as_str()) else {
                    error!(target: "m2pool::queue", id = row.id, kind = %row.kind,
                           "outbox row for a queue the config does not have; left unsent");
                    return None;
                };
                Some((
                    row,
                    exchange.clone(),
                    routing_key.clone(),
                    self.publish_opts,
                    self.props.clone(),
                ))
            }
        }
    }

    /// Publishes the rows in order with many frames in flight, then awaits
    /// their confirms. A lost channel is waited for (it recovers) and ends
    /// the round.
    async fn publish(&self, rows: &[OutboxRow]) -> Result<Round, QueueError> {
        // Publish with many frames in flight: lapin resolves a publish once
        // its frames are written, so awaiting each in turn would cost a trip
        // through its I/O loop per message. The futures are first polled in
        // order, which is when each takes its frames' place and its delivery
        // tag, so the broker receives the rows in order.
        let mut pending: Vec<Pending> = Vec::with_capacity(rows.len());
        let mut lost = None;
        let mut targets = rows.iter().filter_map(|r| self.target(r));
        let mut publishes = FuturesOrdered::new();
        loop {
            while publishes.len() < PUBLISH_WINDOW {
                let Some(t) = targets.next() else { break };
                publishes.push_back(publish(&self.ch, t));
            }
            let Some((id, result)) = publishes.next().await else {
                break;
            };
            match result {
                Ok(confirm) => pending.push((id, confirm, Instant::now())),
                Err(e) => {
                    warn!(target: "m2pool::queue", id, error = %e, "publish failed");
                    lost = Some(e);
                    break;
                }
            }
        }
        drop(publishes);
        let mut round = Round::default();
        if let Some(e) = lost {
            round.failed = true;
            round.lost = true;
            self.ch
                .wait_for_recovery(e)
                .await
                .map_err(amqp("recover publisher"))?;
        }
        self.confirm(rows, pending, &mut round).await;
        Ok(round)
    }

    /// Awaits the confirms of a round. A row counts as sent only if every
    /// earlier row of its kind in this round was confirmed too: after a
    /// failure, the later rows of that queue go out again behind the retried
    /// one, so the last answer a business system sees about a deposit or
    /// payout is its newest (a `1` is never followed by only an older `2`).
    /// Other queues go on.
    async fn confirm(&self, rows: &[OutboxRow], pending: Vec<Pending>, round: &mut Round) {
        let kinds: HashMap<i64, &str> = rows.iter().map(|r| (r.id, r.kind.as_str())).collect();
        round.sent.reserve(pending.len());
        for (id, confirm, published) in pending {
            let result = confirm.await;
            self.broker
                .metrics
                .publish_confirm
                .observe(published.elapsed());
            let kind = kinds.get(&id).copied().unwrap_or_default();
            let confirmed = match result {
                Ok(Confirmation::Ack(None) | Confirmation::NotRequested) => true,
                Ok(Confirmation::Ack(Some(returned))) => {
                    warn!(target: "m2pool::queue", id, reply = %returned.reply_text,
                          "response unroutable: no queue is bound for it; will retry");
                    false
                }
                Ok(Confirmation::Nack(_)) => {
                    warn!(target: "m2pool::queue", id, "broker nacked a response; will retry");
                    false
                }
                Err(e) => {
                    warn!(target: "m2pool::queue", id, error = %e, "no confirm for a response; will retry");
                    false
                }
            };
            round.settle(id, kind, confirmed);
        }
    }
}

/// Waits `delay` before a retry; a shutdown ends the wait, and once the
/// relay is flushing it never waits past the flush deadline.
async fn pause(delay: Duration, shutdown: &CancellationToken, flush_until: Option<Instant>) {
    match flush_until {
        Some(until) => {
            let left = until.saturating_duration_since(Instant::now());
            tokio::time::sleep(delay.min(left)).await;
        }
        None => {
            sleep_or_shutdown(delay, shutdown).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn after_a_failed_row_the_later_rows_of_its_queue_wait_and_other_queues_go_on() {
        let mut round = Round::default();
        for (id, kind, confirmed) in [
            (1, "topup_resp", true),
            (2, "topup_resp", false),
            (3, "pay_resp", true),
            (4, "topup_resp", true),
            (5, "pay_resp", true),
            (6, "topup_resp", false),
        ] {
            round.settle(id, kind, confirmed);
        }
        assert_eq!(
            round.sent,
            vec![1, 3, 5],
            "row 4 goes out again behind row 2, never before it"
        );
        assert!(round.failed);
        assert!(!round.lost);
        assert_eq!(round.broken, HashSet::from(["topup_resp".to_owned()]));
    }

    #[test]
    fn a_round_with_every_row_confirmed_sends_them_all_in_order() {
        let mut round = Round::default();
        for id in 1..=4 {
            round.settle(id, if id % 2 == 0 { "a" } else { "b" }, true);
        }
        assert_eq!(round.sent, vec![1, 2, 3, 4]);
        assert!(!round.failed && round.broken.is_empty());
    }
}
