//! RabbitMQ: the topology from the config, the request consumers and the
//! outbox relay; and, with no broker configured, what stands in for the
//! relay ([`settle`]).
//!
//! The broker task connects (with lapin's automatic recovery, and its own
//! reconnect loop around that when lapin gives up), declares every exchange,
//! queue and binding of the config, then runs one consumer per served request
//! queue ([`consumer`]) and the outbox relay ([`relay`]) until shutdown. The
//! chains and the listen task do not wait for it: deposits seen while the broker
//! is away wait in the outbox.
//!
//! One thing waits at start: listen applies no block before the topup and
//! remove requests that were queued while the daemon was away have been handed
//! to it ([`Broker::caught_up`]). Otherwise the watcher could read a block
//! with a deposit to an address whose topup is still in the queue, and the
//! deposit would be missed (docs/architecture.md, "Invariants": no missed deposit).

mod claim;
mod consumer;
mod relay;
mod settle;
mod topology;

pub use claim::{keep_warm, wait_for_queues};
pub use settle::settle;
pub use topology::{Backlog, declare};

use crate::backoff::{Backoff, sleep_or_shutdown};
use crate::config::RmqConfig;
use crate::listen::Inbound;
use crate::msg::Kind;
use crate::server::Router;
use crate::store::{Store, StoreError};
use lapin::{Connection, ConnectionProperties};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tokio::sync::{Notify, mpsc, watch};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// A broker failure.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    /// The broker refused to declare something the config asks for.
    #[error("cannot declare {what} (config key rmq_config.{key}): {reason}")]
    Declare {
        /// `exchange `pay.exchange`` and the like.
        what: String,
        /// Config key of the entry.
        key: &'static str,
        /// Plain-words reason.
        reason: String,
    },
    /// A broker operation failed.
    #[error("broker: {op}: {source}")]
    Amqp {
        /// What was being done.
        op: &'static str,
        /// lapin error.
        source: lapin::Error,
    },
    /// The broker refused this consumer exclusive use of a request queue:
    /// another program consumes it.
    #[error(
        "the broker refused exclusive use of request queue `{queue}`: another program (another \
         m2pool-payment with a different message store?) consumes it; stopping, since two \
         gateways on one queue would both pay"
    )]
    QueueTaken {
        /// The queue.
        queue: String,
    },
    /// The broker cancelled a consumer (its queue was deleted, say).
    #[error("the broker cancelled the consumer of queue `{queue}`")]
    ConsumerCancelled {
        /// The queue.
        queue: String,
    },
    /// The listen task is gone.
    #[error("the listen task stopped taking requests")]
    ListenGone,
    /// The message store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl QueueError {
    /// Whether a new connection may cure it.
    fn is_connection_loss(&self) -> bool {
        matches!(
            self,
            QueueError::Amqp { .. } | QueueError::ConsumerCancelled { .. }
        )
    }
}

pub(crate) fn amqp(op: &'static str) -> impl FnOnce(lapin::Error) -> QueueError {
    move |source| QueueError::Amqp { op, source }
}

/// What the broker task needs.
pub struct Broker {
    /// RabbitMQ settings.
    pub cfg: RmqConfig,
    /// Routes request bodies.
    pub router: Router,
    /// Routed requests go to listen here.
    pub requests: mpsc::Sender<Inbound>,
    /// Outbox source.
    pub store: Store,
    /// Woken by listen after commits that queued responses.
    pub outbox: Arc<Notify>,
    /// Where the broker connection state is reported.
    pub health: crate::health::Health,
    /// Where published responses are logged per address.
    pub txlog: crate::txlog::TxLog,
    /// Publish counts and latencies.
    pub metrics: crate::metrics::SharedMetrics,
    /// Set to `true` once the topup and remove requests that waited in the
    /// broker when the daemon first connected are handed to listen, which
    /// holds the chains' blocks until then.
    pub caught_up: watch::Sender<bool>,
    /// This instance's lease: answers are published only while it is held.
    pub lease: crate::lease::Lease,
}

/// Counts the request consumers that still hand over the backlog found at
/// start; the last one opens [`Broker::caught_up`].
struct Gate<'a> {
    remaining: AtomicUsize,
    open: &'a watch::Sender<bool>,
}

impl Gate<'_> {
    /// One consumer has handed over its backlog.
    fn done(&self, queue: &str) {
        info!(target: "m2pool::queue", queue, "requests queued at start handed over");
        if self.remaining.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.open.send_replace(true);
            info!(target: "m2pool::queue", "request backlog read; following the chain");
        }
    }
}

/// Kinds whose backlog must be read before blocks are: they change the watch
/// set.
const GATED: [Kind; 2] = [Kind::Topup, Kind::Remove];

impl Broker {
    /// Runs until `shutdown`. Connection losses are retried without limit;
    /// topology and store errors are returned (fatal).
    ///
    /// At shutdown the consumers take no more deliveries (what they did not
    /// hand over is redelivered after a restart) but keep their channels until
    /// listen has acknowledged what it holds; the relay goes on publishing the outbox
    /// until `drained` says listen has committed its last batch and nothing is
    /// left, or for at most [`relay::FLUSH_LIMIT`].
    pub async fn run(
        self,
        shutdown: CancellationToken,
        drained: CancellationToken,
    ) -> Result<(), QueueError> {
        let mut backoff = Backoff::new(Duration::from_millis(250), Duration::from_secs(30));
        loop {
            let connected = tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                c = connect(&self.cfg) => c,
            };
            let result = match connected {
                Ok(conn) => {
                    info!(target: "m2pool::queue", "broker connected");
                    self.health.set_broker(true);
                    let result = match declare(&conn, &self.cfg).await {
                        Ok(backlog) => {
                            backoff.reset();
                            self.serve(&conn, &backlog, &shutdown, &drained).await
                        }
                        Err(e) => Err(e),
                    };
                    self.health.set_broker(false);
                    let _ = conn.close(200, "shutting down".into()).await;
                    result
                }
                Err(e) => Err(e),
            };
            if shutdown.is_cancelled() {
                return Ok(());
            }
            match result {
                Ok(()) => return Ok(()),
                Err(e) if e.is_connection_loss() => {
                    let (delay, attempt) = backoff.next_delay();
                    warn!(target: "m2pool::queue", attempt, error = %e, "broker connection lost; reconnecting");
                    if sleep_or_shutdown(delay, &shutdown).await {
                        return Ok(());
                    }
                }
                Err(e) => return Err(e),
            }
        }
    }

    async fn serve(
        &self,
        conn: &Connection,
        backlog: &Backlog,
        shutdown: &CancellationToken,
        drained: &CancellationToken,
    ) -> Result<(), QueueError> {
        let mut served = vec![
            (Kind::Topup, self.cfg.topup.clone()),
            (Kind::Withdraw, self.cfg.withdraw.clone()),
            (Kind::Pay, self.cfg.pay.clone()),
        ];
        served.extend(self.cfg.remove.clone().map(|q| (Kind::Remove, q)));
        let waiting = !*self.caught_up.borrow();
        let gate = Gate {
            remaining: AtomicUsize::new(served.iter().filter(|(k, _)| GATED.contains(k)).count()),
            open: &self.caught_up,
        };
        if waiting {
            let queued: u32 = GATED.iter().filter_map(|k| backlog.get(k.as_str())).sum();
            info!(target: "m2pool::queue", queued,
                  "reading the topup and remove requests queued while the daemon was away before following the chain");
        }
        let consumers = served.into_iter().map(|(kind, entry)| {
            let wait = (waiting && GATED.contains(&kind)).then(|| consumer::Backlog {
                count: backlog.get(kind.as_str()).copied().unwrap_or(0),
                gate: &gate,
            });
            consumer::consume(conn, self, kind, entry, wait, shutdown, drained)
        });
        let relay = relay::relay(conn, self, shutdown, drained);
        // The connection state, as lapin's own recovery changes it.
        let watch = async {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            while !shutdown.is_cancelled() {
                self.health.set_broker(conn.status().connected());
                tokio::select! {
                    _ = shutdown.cancelled() => {}
                    _ = tick.tick() => {}
                }
            }
            Ok::<(), QueueError>(())
        };
        tokio::try_join!(futures::future::try_join_all(consumers), relay, watch)?;
        Ok(())
    }
}

/// Heartbeat asked of the broker when `sub_addr` names none: a frozen or
/// cut-off instance's connection, and with it its exclusive consumers and
/// unacknowledged requests, is dropped by the broker within about this long.
pub const HEARTBEAT_SECS: u16 = 10;

/// Opens a connection with automatic recovery.
pub async fn connect(cfg: &RmqConfig) -> Result<Connection, QueueError> {
    let props = ConnectionProperties::default()
        .with_connection_name("m2pool-payment".into())
        .enable_auto_recover();
    let mut uri: lapin::uri::AMQPUri =
        cfg.url
            .expose()
            .parse()
            .map_err(|reason: String| QueueError::Declare {
                what: "the broker address".into(),
                key: "sub_addr",
                reason,
            })?;
    uri.query.heartbeat.get_or_insert(HEARTBEAT_SECS);
    Connection::connect_uri(uri, props)
        .await
        .map_err(amqp("connect"))
}
