//! One consumer per request queue: before the active instance starts, it
//! makes sure no other program consumes its request queues
//! (docs/architecture.md, "High availability").
//!
//! Two daemons with different message stores on the same queues would take
//! requests with no idempotency shared and sign from the same wallets with
//! nonces of their own. So each consumer asks the broker for exclusive use
//! of its queue (a second consumer is refused), and before anything starts
//! [`wait_for_queues`] looks at each request queue: while another consumer
//! holds one, the daemon says so in plain words (log and `/healthz`) and
//! waits. A deposed instance's consumers go away with its connection, when
//! it dies or when the broker's heartbeat finds it gone.

use super::{QueueError, amqp, connect};
use crate::backoff::sleep_or_shutdown;
use crate::config::RmqConfig;
use crate::health::Health;
use lapin::Connection;
use lapin::options::QueueDeclareOptions;
use lapin::types::FieldTable;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// How often the queues are looked at again.
const RETRY: Duration = Duration::from_secs(1);
/// How long one look may take: a broker that does not answer does not
/// hold the start back.
const LOOK_LIMIT: Duration = Duration::from_secs(10);

/// The request queues (config key, queue) that other consumers hold, with
/// how many consumers each.
async fn taken(conn: &Connection, cfg: &RmqConfig) -> Result<Vec<(String, u32)>, QueueError> {
    let mut out = Vec::new();
    for (key, entry) in cfg.entries() {
        if key.ends_with("_resp") {
            continue;
        }
        // A passive declaration of a queue that does not exist closes its
        // channel: one channel per queue.
        let ch = conn.create_channel().await.map_err(amqp("open channel"))?;
        let declared = ch
            .queue_declare(
                entry.queue.as_str().into(),
                QueueDeclareOptions {
                    passive: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await;
        match declared {
            Ok(q) if q.consumer_count() > 0 => {
                out.push((entry.queue.clone(), q.consumer_count()));
            }
            Ok(_) => {}
            // Not declared yet: no one consumes it.
            Err(e) if e.is_amqp_soft_error() => {}
            Err(e) => return Err(amqp("look at the request queues")(e)),
        }
        let _ = ch.close(200, "looked".into()).await;
    }
    Ok(out)
}

/// What `/healthz` and the log say while `queues` are consumed by another
/// program.
pub fn taken_words(queues: &[(String, u32)]) -> String {
    let names: Vec<String> = queues.iter().map(|(q, _)| format!("`{q}`")).collect();
    format!(
        "request queue {} is consumed by another program (another m2pool-payment with a \
         different message store?): this instance waits and starts when it is free; two \
         gateways on one queue would both pay",
        names.join(", ")
    )
}

/// Waits until no other consumer holds a request queue of `cfg`. A broker
/// that cannot be reached does not hold the start back: the consumers ask
/// for exclusive use when they connect, and a refusal stops the daemon.
/// `false` if `shutdown` came first.
pub async fn wait_for_queues(
    cfg: &RmqConfig,
    health: &Health,
    shutdown: &CancellationToken,
) -> bool {
    let mut said = String::new();
    loop {
        let look = async {
            let conn = connect(cfg).await?;
            let found = taken(&conn, cfg).await;
            let _ = conn.close(200, "looked".into()).await;
            found
        };
        let found = tokio::select! {
            _ = shutdown.cancelled() => return false,
            r = tokio::time::timeout(LOOK_LIMIT, look) => r,
        };
        let Ok(found) = found else {
            warn!(target: "m2pool::queue", limit_secs = LOOK_LIMIT.as_secs(),
                  "the broker did not show the request queues in time; starting, the consumers ask for exclusive use");
            health.set_waiting(None);
            return true;
        };
        match found {
            Ok(q) if q.is_empty() => {
                if !said.is_empty() {
                    info!(target: "m2pool::queue", "the request queues are free; starting");
                }
                health.set_waiting(None);
                return true;
            }
            Ok(q) => {
                let words = taken_words(&q);
                if words != said {
                    warn!(target: "m2pool::queue", problem = %words, "not starting yet");
                    said = words.clone();
                }
                health.set_waiting(Some(words));
            }
            Err(e) => {
                warn!(target: "m2pool::queue", error = %e,
                      "cannot look at the request queues; starting, the consumers ask for exclusive use");
                health.set_waiting(None);
                return true;
            }
        }
        if sleep_or_shutdown(RETRY, shutdown).await {
            return false;
        }
    }
}

/// Keeps a broker connection open while this instance is a standby, so
/// that `/healthz` and `m2pool_broker_connected` show whether the broker
/// can be reached before it is needed; reconnects until `done` (the lease
/// was taken) or `shutdown`.
pub async fn keep_warm(
    cfg: RmqConfig,
    health: Health,
    done: CancellationToken,
    shutdown: CancellationToken,
) {
    let mut backoff =
        crate::backoff::Backoff::new(Duration::from_millis(250), Duration::from_secs(5));
    while !done.is_cancelled() && !shutdown.is_cancelled() {
        let conn = tokio::select! {
            _ = done.cancelled() => break,
            _ = shutdown.cancelled() => break,
            c = connect(&cfg) => c,
        };
        match conn {
            Ok(conn) => {
                backoff.reset();
                while conn.status().connected() && !done.is_cancelled() {
                    health.set_broker(true);
                    tokio::select! {
                        _ = done.cancelled() => {}
                        _ = shutdown.cancelled() => break,
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    }
                }
                health.set_broker(false);
                let _ = conn.close(200, "standby".into()).await;
            }
            Err(e) => {
                health.set_broker(false);
                let (delay, attempt) = backoff.next_delay();
                warn!(target: "m2pool::queue", attempt, error = %e, "standby: the broker cannot be reached");
                tokio::select! {
                    _ = done.cancelled() => {}
                    _ = shutdown.cancelled() => {}
                    _ = tokio::time::sleep(delay) => {}
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_words_name_every_queue() {
        let w = taken_words(&[("pay".into(), 1), ("topup".into(), 2)]);
        assert!(
            w.starts_with("request queue `pay`, `topup` is consumed by another program"),
            "{w}"
        );
        assert!(w.contains("waits"), "{w}");
    }
}
