//! Declares every exchange, queue and binding the config names, idempotently.
//!
//! Exchanges and queues are durable; queues get the `arguments` their entry
//! gives. When the broker already holds one with other settings it refuses
//! (`PRECONDITION_FAILED`), and the error says so in plain words and names it.

use super::{QueueError, amqp};
use crate::config::{QueueEntry, RmqConfig};
use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldArray, FieldTable};
use lapin::{Connection, ExchangeKind};
use serde_json::Value;

/// Messages waiting in each declared queue when it was declared, by config
/// key (`topup`, `remove`, …).
pub type Backlog = std::collections::HashMap<&'static str, u32>;

/// Declares the whole topology of `cfg` on `conn`; returns how many messages
/// each queue held.
pub async fn declare(conn: &Connection, cfg: &RmqConfig) -> Result<Backlog, QueueError> {
    let mut backlog = Backlog::new();
    for (key, entry) in cfg.entries() {
        backlog.insert(key, declare_entry(conn, key, entry).await?);
    }
    if let Some(x) = &cfg.dead_letter_exchange {
        let ch = conn.create_channel().await.map_err(amqp("open channel"))?;
        ch.exchange_declare(
            x.as_str().into(),
            ExchangeKind::Fanout,
            ExchangeDeclareOptions {
                durable: true,
                ..ExchangeDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .map_err(|err| {
            if err.is_amqp_soft_error() {
                QueueError::Declare {
                    what: format!("exchange `{x}`"),
                    key: "dead_letter_exchange",
                    reason: format!(
                        "the broker refused it (it must be a durable fanout exchange): {err}"
                    ),
                }
            } else {
                QueueError::Amqp {
                    op: "declare the dead-letter exchange",
                    source: err,
                }
            }
        })?;
        let _ = ch.close(200, "declared".into()).await;
    }
    Ok(backlog)
}

/// Declares one entry; returns the messages its queue holds.
async fn declare_entry(
    conn: &Connection,
    key: &'static str,
    e: &QueueEntry,
) -> Result<u32, QueueError> {
    // A refused declaration closes its channel: one channel per entry keeps the
    // error attached to the entry that caused it.
    let ch = conn.create_channel().await.map_err(amqp("open channel"))?;
    // A channel-level refusal (PRECONDITION_FAILED, ACCESS_REFUSED, …) is the
    // config's fault and stops the daemon; anything else (the connection
    // dropped mid-declaration) is a connection loss, retried.
    let refused = |what: String, err: lapin::Error| {
        if !err.is_amqp_soft_error() {
            return QueueError::Amqp {
                op: "declare the topology",
                source: err,
            };
        }
        let text = err.to_string();
        let reason = if text.contains("PRECONDITION_FAILED") || text.contains("PRECONDITIONFAILED")
        {
            format!(
                "the broker already has {what} with other settings than the config asks for \
                 (durable {}), so it refused; delete it on the broker or make the config match. \
                 Broker said: {text}",
                if what.starts_with("exchange") {
                    e.exchange_type.as_str()
                } else {
                    "queue"
                }
            )
        } else {
            text
        };
        QueueError::Declare { what, key, reason }
    };
    ch.exchange_declare(
        e.exchange.as_str().into(),
        exchange_kind(&e.exchange_type),
        ExchangeDeclareOptions {
            durable: true,
            ..ExchangeDeclareOptions::default()
        },
        FieldTable::default(),
    )
    .await
    .map_err(|err| refused(format!("exchange `{}`", e.exchange), err))?;
    let queue = ch
        .queue_declare(
            e.queue.as_str().into(),
            QueueDeclareOptions::durable(),
            field_table(&e.arguments),
        )
        .await
        .map_err(|err| refused(format!("queue `{}`", e.queue), err))?;
    for rk in &e.routing {
        ch.queue_bind(
            e.queue.as_str().into(),
            e.exchange.as_str().into(),
            rk.as_str().into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(|err| {
            refused(
                format!("binding `{}` → `{}` ({rk})", e.exchange, e.queue),
                err,
            )
        })?;
    }
    let _ = ch.close(200, "declared".into()).await;
    Ok(queue.message_count())
}

fn exchange_kind(t: &str) -> ExchangeKind {
    match t {
        "direct" => ExchangeKind::Direct,
        "fanout" => ExchangeKind::Fanout,
        "topic" => ExchangeKind::Topic,
        "headers" => ExchangeKind::Headers,
        other => ExchangeKind::Custom(other.to_owned()),
    }
}

/// Queue arguments from the config's JSON, with the AMQP types RabbitMQ expects
/// (whole numbers as 64-bit integers, so `x-expires` and `x-max-length` work).
pub(crate) fn field_table(args: &serde_json::Map<String, Value>) -> FieldTable {
    let mut t = FieldTable::default();
    for (k, v) in args {
        t.insert(k.as_str().into(), amqp_value(v));
    }
    t
}

fn amqp_value(v: &Value) -> AMQPValue {
    match v {
        Value::Null => AMQPValue::Void,
        Value::Bool(b) => AMQPValue::Boolean(*b),
        Value::Number(n) => match n.as_i64() {
            Some(i) => AMQPValue::LongLongInt(i),
            None => AMQPValue::Double(n.as_f64().unwrap_or_default()),
        },
        Value::String(s) => AMQPValue::LongString(s.as_str().into()),
        Value::Array(a) => AMQPValue::FieldArray(FieldArray::from(
            a.iter().map(amqp_value).collect::<Vec<_>>(),
        )),
        Value::Object(o) => AMQPValue::FieldTable(field_table(o)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arguments_keep_their_types() {
        let args: serde_json::Map<String, Value> = serde_json::from_str(
            r#"{"x-expires": 60000, "x-queue-type": "quorum", "x-single-active-consumer": true}"#,
        )
        .expect("json");
        let t = field_table(&args);
        let inner = t.inner();
        assert!(matches!(
            inner.get("x-expires"),
            Some(AMQPValue::LongLongInt(60000))
        ));
        assert!(matches!(
            inner.get("x-queue-type"),
            Some(AMQPValue::LongString(_))
        ));
        assert!(matches!(
            inner.get("x-single-active-consumer"),
            Some(AMQPValue::Boolean(true))
        ));
    }
}
