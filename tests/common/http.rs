//! The daemon's HTTP endpoint from a test: plain HTTP requests to
//! `/healthz` and `/metrics`, and waiting for what they say.

use super::WAIT;
use anyhow::{Context, Result, bail, ensure};
use serde_json::{Value, json};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// A config edit that serves `/healthz` and `/metrics` on `port`, with more
/// `http_config` keys from `extra`.
pub fn with_http(port: u16, extra: Value) -> impl FnOnce(&mut Value) {
    move |c| {
        c["http_config"] = json!({"listen": format!("127.0.0.1:{port}")});
        if let (Some(h), Some(extra)) = (c["http_config"].as_object_mut(), extra.as_object()) {
            h.extend(extra.clone());
        }
    }
}

/// A plain HTTP request; returns the status and the body.
pub async fn http(port: u16, method: &str, path: &str) -> Result<(u16, String)> {
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    s.write_all(
        format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            .as_bytes(),
    )
    .await?;
    let mut raw = String::new();
    s.read_to_string(&mut raw).await?;
    let status = raw.split_whitespace().nth(1).context("status")?.parse()?;
    let body = raw
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Ok((status, body))
}

/// `GET /healthz`: status and parsed body (`Null` while nothing answers).
pub async fn healthz(port: u16) -> (u16, Value) {
    match http(port, "GET", "/healthz").await {
        Ok((status, body)) => (status, serde_json::from_str(&body).unwrap_or(Value::Null)),
        Err(_) => (0, Value::Null),
    }
}

/// Polls `/healthz` until `want` holds, for at most `within`; the last answer
/// is in the error.
pub async fn wait_health(
    port: u16,
    what: &str,
    within: Duration,
    want: impl Fn(u16, &Value) -> bool,
) -> Result<Value> {
    let deadline = Instant::now() + within;
    loop {
        let (status, body) = healthz(port).await;
        if want(status, &body) {
            return Ok(body);
        }
        if Instant::now() > deadline {
            bail!("/healthz {what}: not within {within:?}; last answer {status} {body}");
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

pub fn problems(h: &Value) -> String {
    h["problems"].to_string()
}

pub fn sample(metrics: &str, name: &str) -> Option<f64> {
    metrics
        .lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

pub async fn metrics(port: u16) -> Result<String> {
    let (status, m) = http(port, "GET", "/metrics").await?;
    ensure!(status == 200, "/metrics answered {status}");
    Ok(m)
}

/// Waits until every `(sample, value)` of `want` holds in `/metrics`.
pub async fn wait_metrics(port: u16, want: &[(&str, f64)]) -> Result<String> {
    let deadline = Instant::now() + WAIT;
    loop {
        let m = metrics(port).await?;
        let wrong: Vec<String> = want
            .iter()
            .filter(|(name, v)| sample(&m, name) != Some(*v))
            .map(|(name, v)| format!("{name} = {:?}, want {v}", sample(&m, name)))
            .collect();
        if wrong.is_empty() {
            return Ok(m);
        }
        if Instant::now() > deadline {
            bail!("metrics not as expected within {WAIT:?}: {wrong:?}\n{m}");
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}
