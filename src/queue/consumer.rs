//! One consumer per served request queue: route each delivery and hand it to
//! listen, which acknowledges it after the commit.
//!
//! Manual acknowledgements and a bounded prefetch: the broker keeps every
//! request until its inbox row is committed. A full listen channel slows the
//! consumer down instead of growing memory.

use super::{QueueError, amqp};
use crate::config::QueueEntry;
use crate::listen::Inbound;
use crate::msg::Kind;
use crate::server::Router;
use futures::StreamExt;
use lapin::Connection;
use lapin::options::{BasicConsumeOptions, BasicQosOptions};
use lapin::types::FieldTable;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// Consumes `entry.queue` as `kind` until `shutdown`.
pub(super) async fn consume(
    conn: &Connection,
    kind: Kind,
    entry: QueueEntry,
    prefetch: u16,
    router: Router,
    requests: mpsc::Sender<Inbound>,
    shutdown: &CancellationToken,
) -> Result<(), QueueError> {
    let ch = conn
        .create_channel()
        .await
        .map_err(amqp("open consumer channel"))?;
    ch.basic_qos(prefetch, BasicQosOptions::default())
        .await
        .map_err(amqp("basic.qos"))?;
    let mut deliveries = ch
        .basic_consume(
            entry.queue.as_str().into(),
            format!("m2pool-payment-{kind}").into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(amqp("basic.consume"))?;
    info!(target: "m2pool::queue", queue = %entry.queue, %kind, "consuming");
    loop {
        let next = tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            d = deliveries.next() => d,
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
                let request = router.route(kind, delivery.data);
                let inbound = Inbound {
                    request,
                    ack: Some(delivery.acker),
                };
                requests
                    .send(inbound)
                    .await
                    .map_err(|_| QueueError::ListenGone)?;
            }
        }
    }
}
