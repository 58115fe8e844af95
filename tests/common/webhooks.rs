//! A webhook receiver for tests: records every call (answered or not),
//! checks each signature with the test key, and answers as told: 200,
//! 500 for the next N calls, or never.

use super::{KEY, WAIT};
use anyhow::{Context, Result, bail};
use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use serde_json::{Value, json};
use std::sync::{Arc, Mutex};
use tokio::sync::Notify;

/// The headers the receiver reads (and fails on when they are wrong).
pub const READ_HEADERS: [&str; 4] = [
    "x-m2pool-timestamp",
    "x-m2pool-signature",
    "idempotency-key",
    "x-m2pool-event",
];

/// How the receiver answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// 200.
    Ok,
    /// 500 for this many more calls, then 200.
    FailNext(u32),
    /// Never answers.
    Hang,
}

/// One call the receiver got.
#[derive(Debug, Clone)]
pub struct Call {
    /// `Idempotency-Key`: the answer's stream position.
    pub key: i64,
    /// `X-M2Pool-Event`.
    pub event: String,
    /// The answer.
    pub answer: Value,
    /// Answered 200.
    pub delivered: bool,
}

#[derive(Default)]
struct Inner {
    calls: Vec<Call>,
    mode: Option<Mode>,
    bad_signatures: Vec<String>,
}

/// A receiver on a free local port; stops with the test's runtime.
#[derive(Clone)]
pub struct Receiver {
    pub url: String,
    inner: Arc<Mutex<Inner>>,
    arrived: Arc<Notify>,
}

fn hmac_hex(ts: &str, body: &[u8]) -> String {
    use hmac::{Hmac, Mac};
    let mut mac = <Hmac<sha2::Sha256> as Mac>::new_from_slice(KEY).expect("any key");
    mac.update(ts.as_bytes());
    mac.update(b".");
    mac.update(body);
    hex::encode(mac.finalize().into_bytes())
}

impl Receiver {
    /// Starts a receiver answering in `mode`, at path `/hook`.
    pub async fn start(mode: Mode) -> Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}/hook", listener.local_addr()?);
        let r = Self {
            url,
            inner: Arc::new(Mutex::new(Inner {
                mode: Some(mode),
                ..Default::default()
            })),
            arrived: Arc::new(Notify::new()),
        };
        let me = r.clone();
        let app = axum::Router::new().route(
            "/hook",
            axum::routing::post(move |headers: HeaderMap, body: Bytes| {
                let me = me.clone();
                async move { me.call(headers, body).await }
            }),
        );
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(r)
    }

    async fn call(&self, headers: HeaderMap, body: Bytes) -> StatusCode {
        let h = |name: &str| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned()
        };
        let (ts, sig) = (h("x-m2pool-timestamp"), h("x-m2pool-signature"));
        let answer: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        let mode = {
            let mut inner = self.inner.lock().expect("lock");
            if hmac_hex(&ts, &body) != sig || h("content-type") != "application/json" {
                inner.bad_signatures.push(format!("{ts} {sig} {answer}"));
            }
            let mode = inner.mode.unwrap_or(Mode::Ok);
            if let Mode::FailNext(n) = mode {
                inner.mode = Some(if n <= 1 {
                    Mode::Ok
                } else {
                    Mode::FailNext(n - 1)
                });
            }
            inner.calls.push(Call {
                key: h("idempotency-key").parse().unwrap_or(-1),
                event: h("x-m2pool-event"),
                answer,
                delivered: mode == Mode::Ok,
            });
            mode
        };
        self.arrived.notify_waiters();
        match mode {
            Mode::Ok => StatusCode::OK,
            Mode::FailNext(_) => StatusCode::INTERNAL_SERVER_ERROR,
            Mode::Hang => {
                std::future::pending::<()>().await;
                StatusCode::OK
            }
        }
    }

    /// Answers from now on in `mode`.
    pub fn set(&self, mode: Mode) {
        self.inner.lock().expect("lock").mode = Some(mode);
    }

    /// Every call so far.
    pub fn calls(&self) -> Vec<Call> {
        self.inner.lock().expect("lock").calls.clone()
    }

    /// The answers delivered (answered 200), in arrival order.
    pub fn delivered(&self) -> Vec<Call> {
        self.calls().into_iter().filter(|c| c.delivered).collect()
    }

    /// Fails if a call came with a signature that does not check.
    pub fn signatures_checked(&self) -> Result<()> {
        let bad = self.inner.lock().expect("lock").bad_signatures.clone();
        if !bad.is_empty() {
            bail!("calls with a bad signature: {bad:?}");
        }
        Ok(())
    }

    /// Waits until at least `n` calls matching `pred` were delivered.
    pub async fn wait_delivered(
        &self,
        what: &str,
        n: usize,
        pred: impl Fn(&Call) -> bool,
    ) -> Result<Vec<Call>> {
        let until = tokio::time::Instant::now() + WAIT;
        loop {
            let arrived = self.arrived.notified();
            let got: Vec<Call> = self.delivered().into_iter().filter(|c| pred(c)).collect();
            if got.len() >= n {
                return Ok(got);
            }
            if tokio::time::timeout_at(until, arrived).await.is_err() {
                let seen: Vec<Value> = self
                    .calls()
                    .iter()
                    .map(|c| json!({"key": c.key, "delivered": c.delivered, "answer": c.answer}))
                    .collect();
                return Err(anyhow::anyhow!(
                    "waited {WAIT:?} for {n} webhook deliveries ({what}); calls so far: {seen:?}"
                ))
                .context(what.to_owned());
            }
        }
    }
}
