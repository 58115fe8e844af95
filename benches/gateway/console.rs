//! The console's cost (`BENCH_ONLY=console`): ingest of signed topups with
//! the operator console on and polled as ten operators would, each
//! refreshing a page every second (a page every 100 ms, every page in
//! turn), next to the same ingest with the console on and nobody looking. The ratio is the console's cost to ingest; the raw figure here
//! is the daemon itself, the only fair baseline for "no measurable cost".

use super::{Row, cpu_seconds, ingest_rate, world};
use crate::common::http::free_port;
use crate::common::*;
use alloy::primitives::Address;
use anyhow::{Context, Result};
use serde_json::{Value, json};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

const TOKEN: &str = "bench-console-token-0123";

/// The pages an operator keeps open, refreshed one after the other.
const PAGES: [&str; 6] = [
    "/console/overview",
    "/console/payouts",
    "/console/deposits",
    "/console/wallets",
    "/console/requests",
    "/console/requests?outcome=refused",
];

/// Cycles of four runs.
const CYCLES: usize = 5;

/// Time between two pages fetched: ten operators refreshing once a second.
const EVERY: std::time::Duration = std::time::Duration::from_millis(100);

/// Logs in and fetches [`PAGES`] in turn, one every [`EVERY`], until
/// `stop`; counts pages.
async fn poll(
    port: u16,
    stop: Arc<AtomicBool>,
    pages: Arc<AtomicUsize>,
    micros: Arc<AtomicUsize>,
) -> Result<()> {
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()?;
    let base = format!("http://127.0.0.1:{port}");
    let login = loop {
        if let Ok(r) = client
            .post(format!("{base}/console/login"))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(format!("token={TOKEN}"))
            .send()
            .await
        {
            break r;
        }
        if stop.load(Ordering::Relaxed) {
            return Ok(());
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    let cookie = login
        .headers()
        .get("set-cookie")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .context("a session")?
        .to_owned();
    while !stop.load(Ordering::Relaxed) {
        for page in PAGES {
            let started = std::time::Instant::now();
            let r = client
                .get(format!("{base}{page}"))
                .header("cookie", &cookie)
                .send()
                .await?;
            anyhow::ensure!(r.status() == 200, "{page}: {}", r.status());
            r.bytes().await?;
            micros.fetch_add(started.elapsed().as_micros() as usize, Ordering::Relaxed);
            pages.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(EVERY).await;
        }
    }
    Ok(())
}

/// One run's figures.
struct Run {
    /// Requests per second, first commit to last.
    rate: f64,
    /// CPU this process (daemon, broker client, poller) used per request, µs.
    cpu_us: f64,
    /// Pages fetched.
    pages: usize,
    /// Time they took in all, µs.
    page_us: usize,
}

/// Ingest of `n` pre-loaded topups, with the console polled or not.
async fn run(n: usize, polled: bool) -> Result<Run> {
    let port = free_port()?;
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("console-token");
    std::fs::write(&file, TOKEN)?;
    let w = world("bench-console", &[], move |c: &mut Value| {
        c["http_config"] =
            json!({"listen": format!("127.0.0.1:{port}"), "console_token_file": file});
    })
    .await?;
    let bodies: Vec<Vec<u8>> = (0..n)
        .map(|_| signed(topup(&hex_addr(Address::random()), "USDT")))
        .collect::<Result<_>>()?;
    w.publish_all("topup", &bodies).await?;
    let (stop, pages, micros) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicUsize::new(0)),
        Arc::new(AtomicUsize::new(0)),
    );
    let poller =
        polled.then(|| tokio::spawn(poll(port, stop.clone(), pages.clone(), micros.clone())));
    let cpu_before = cpu_seconds();
    let daemon = w.start().await?;
    let rate = ingest_rate(&w, daemon, n).await?;
    let cpu_us = (cpu_seconds() - cpu_before) * 1e6 / n as f64;
    stop.store(true, Ordering::Relaxed);
    if let Some(p) = poller {
        // The daemon has stopped: a request cut short is not the console's fault.
        let _ = p.await?;
    }
    w.cleanup().await?;
    Ok(Run {
        rate,
        cpu_us,
        pages: pages.load(Ordering::Relaxed),
        page_us: micros.load(Ordering::Relaxed),
    })
}

/// Ingest with the console polled, next to ingest without, in [`CYCLES`]
/// cycles of four runs (unpolled, polled, polled, unpolled, so that a
/// machine warming up or slowing down weighs on both sides alike); each
/// side is the median of its runs, since single runs on a shared machine
/// scatter far more than the console could cost.
pub async fn ingest_with_console(n: usize) -> Result<Row> {
    let (mut quiet, mut polled, mut pages, mut micros) = (Vec::new(), Vec::new(), 0, 0);
    let (mut cpu_quiet, mut cpu_polled) = (Vec::new(), Vec::new());
    let mut order = Vec::new();
    for _ in 0..CYCLES {
        for on in [false, true, true, false] {
            let r = run(n, on).await?;
            order.push(format!("{}{:.0}", if on { "P" } else { "u" }, r.rate));
            if on {
                polled.push(r.rate);
                cpu_polled.push(r.cpu_us);
                pages += r.pages;
                micros += r.page_us;
            } else {
                quiet.push(r.rate);
                cpu_quiet.push(r.cpu_us);
            }
        }
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        (v[v.len() / 2 - 1] + v[v.len() / 2]) / 2.0
    };
    let spread = |v: &[f64]| format!("{:.0}–{:.0}", v[0], v[v.len() - 1]);
    let (q, p) = (median(&mut quiet), median(&mut polled));
    let (cq, cp) = (median(&mut cpu_quiet), median(&mut cpu_polled));
    let page_ms = micros as f64 / 1000.0 / pages.max(1) as f64;
    let ratio = p / q;
    Ok(Row::new("ingest with the console polled", p, Some(q), "msg/s")
        .target(">= 0.95 of ingest with nobody looking", ratio >= 0.95)
        .note(format!(
            "{n} signed topups pre-loaded, {CYCLES} cycles of runs unpolled, polled, polled, unpolled; medians \
             (unpolled {}, polled {} msg/s); polled: a logged-in client fetched the {} console pages in turn, one every {} ms \
             (ten operators refreshing each second), {pages} pages in all, {page_ms:.1} ms each on average; \
             CPU of the bench process (daemon, broker client, poller) per request, medians: unpolled {cq:.1} µs, polled {cp:.1} µs; \
             runs in order (u unpolled, P polled): {}",
            spread(&quiet),
            spread(&polled),
            PAGES.len(),
            EVERY.as_millis(),
            order.join(" ")
        )))
}
