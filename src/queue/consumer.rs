//! One consumer per served request queue: route each delivery and hand it to
//! listen, which acknowledges it after the commit.
//!
//! Manual acknowledgements and a bounded prefetch: the broker keeps every
//! request until its inbox row is committed. A full listen channel slows the
//! consumer down instead of growing memory. At the first start, the topup and
//! remove consumers count off the requests their queue held, and say when
//! they are handed over (see [`super::Broker::caught_up`]).

use super::{QueueError, amqp};
use crate::config::QueueEntry;
use crate::listen::{Ack, Inbound, Receipt};
use crate::msg::Kind;
use futures::StreamExt;
use lapin::Connection;
use lapin::options::{BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicQosOptions};
use lapin::types::FieldTable;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// A queue that held no delivery for this long while its start backlog was
/// still expected held fewer than declared (messages expired, or another
/// consumer took them): its backlog counts as handed over.
const BACKLOG_IDLE: Duration = Duration::from_secs(5);

/// The requests a consumer must hand over before blocks may be applied.
pub(super) struct Backlog<'g> {
    /// Messages the queue held when it was declared.
    pub count: u32,
    /// Told when they are handed over.
    pub gate: &'g super::Gate<'g>,
}

/// Consumes `entry.queue` as `kind` until `shutdown`.
pub(super) async fn consume(
    conn: &Connection,
    broker: &super::Broker,
    kind: Kind,
    entry: QueueEntry,
    mut backlog: Option<Backlog<'_>>,
    shutdown: &CancellationToken,
    drained: &CancellationToken,
) -> Result<(), QueueError> {
    let ch = conn
        .create_channel()
        .await
        .map_err(amqp("open consumer channel"))?;
    ch.basic_qos(broker.cfg.prefetch, BasicQosOptions::default())
        .await
        .map_err(amqp("basic.qos"))?;
    let consumer_tag = format!("m2pool-payment-{kind}");
    let mut deliveries = ch
        .basic_consume(
            entry.queue.as_str().into(),
            consumer_tag.as_str().into(),
            // One gateway per queue (see `claim`).
            BasicConsumeOptions {
                exclusive: true,
                ..BasicConsumeOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .map_err(|e| {
            if e.to_string().contains("ACCESS_REFUSED") || e.to_string().contains("ACCESSREFUSED") {
                QueueError::QueueTaken {
                    queue: entry.queue.clone(),
                }
            } else {
                amqp("basic.consume")(e)
            }
        })?;
    info!(target: "m2pool::queue", queue = %entry.queue, %kind, "consuming");
    loop {
        if let Some(b) = backlog.take_if(|b| b.count == 0) {
            b.gate.done(&entry.queue);
        }
        let waiting = backlog.is_some();
        let idle = async move {
            if waiting {
                tokio::time::sleep(BACKLOG_IDLE).await
            } else {
                std::future::pending().await
            }
        };
        let next = tokio::select! {
            _ = shutdown.cancelled() => {
                // Take no more, but keep the channel open until listen has
                // committed and acknowledged what it holds: an ack on a
                // closed channel is lost, and the broker would deliver the
                // request again at the next start.
                let _ = ch
                    .basic_cancel(consumer_tag.as_str().into(), BasicCancelOptions::default())
                    .await;
                let _ = tokio::time::timeout(super::relay::FLUSH_LIMIT, drained.cancelled()).await;
                return Ok(());
            }
            d = deliveries.next() => d,
            _ = idle => {
                if let Some(b) = backlog.take() {
                    warn!(target: "m2pool::queue", queue = %entry.queue, missing = b.count,
                          "the queue delivered fewer requests than it held at start; going on");
                    b.gate.done(&entry.queue);
                }
                continue;
            }
        };
        match next {
            None => {
                return Err(QueueError::ConsumerCancelled {
                    queue: entry.queue.clone(),
                });
            }
            Some(Err(e)) => {
                warn!(target: "m2pool::queue", queue = %entry.queue, error = %e,
                      "consumer error; waiting for the connection to recover");
                ch.wait_for_recovery(e)
                    .await
                    .map_err(amqp("recover consumer"))?;
            }
            Some(Ok(delivery)) => {
                let request = broker.router.route(kind, delivery.data);
                let inbound = Inbound {
                    request,
                    ack: Some(Box::new(Delivery(delivery.acker))),
                };
                broker
                    .requests
                    .send(inbound)
                    .await
                    .map_err(|_| QueueError::ListenGone)?;
                if let Some(b) = &mut backlog {
                    b.count -= 1;
                }
            }
        }
    }
}

/// A delivery's acknowledgement, handed to listen.
#[derive(Debug)]
struct Delivery(lapin::Acker);

impl Ack for Delivery {
    fn cumulative(&self) -> bool {
        true
    }

    fn through(self: Box<Self>, _: Receipt) -> futures::future::BoxFuture<'static, ()> {
        Box::pin(async move {
            if let Err(e) = self.0.ack(BasicAckOptions { multiple: true }).await {
                warn!(target: "m2pool::queue", error = %e, "ack failed after commit; the broker will redeliver");
            }
        })
    }
}
