//! What operators touch: the health and metrics endpoint, the main log files.

mod common;

use alloy::primitives::Address;
use anyhow::{Context, Result};
use common::*;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// A plain HTTP request; returns the status and the body.
async fn http(port: u16, method: &str, path: &str) -> Result<(u16, String)> {
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    s.write_all(format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\n\r\n").as_bytes())
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

fn sample(metrics: &str, name: &str) -> Option<f64> {
    metrics
        .lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_metrics_answer_real_http_requests() -> Result<()> {
    let port = free_port()?;
    let mut w = World::with("http", &[], |c| {
        c["http_config"] = serde_json::json!({"listen": format!("127.0.0.1:{port}")})
    })
    .await?;
    let mut replies = w.replies("topup_resp").await?;
    let daemon = w.start().await?;

    // Ok as soon as both connections are up; the first head follows.
    eventually("healthz says ok and has seen a head", || async {
        Ok(
            matches!(http(port, "GET", "/healthz").await, Ok((200, ref b))
            if b.contains("\"status\":\"ok\"") && !b.contains("\"seconds_since_head\":null")),
        )
    })
    .await?;
    let (_, body) = http(port, "GET", "/healthz").await?;
    let h: Value = serde_json::from_str(&body)?;
    assert_eq!(h["broker_connected"], true);
    assert_eq!(h["chains"]["ETH"]["node_connected"], true);
    assert!(h["chains"]["ETH"]["seconds_since_head"].is_u64(), "{body}");
    assert!(h["outbox_backlog"].is_i64(), "{body}");

    let addr = Address::random();
    w.publish("topup", topup(&hex_addr(addr), "USDT")).await?;
    w.wait_watched("USDT", addr, true).await?;
    let (tx, _) = w.send_usdt(w.user(), addr, 1_000_000).await?;
    let hash = format!("{tx:#x}");
    replies
        .wait("status 2", |v| v["tx_hash"] == hash.as_str())
        .await?;
    let mut bad = topup(&hex_addr(Address::random()), "USDT");
    bad["sign"] = "00".into();
    w.publish_raw("topup", &serde_json::to_vec(&bad)?).await?;
    replies.wait("status 3", |v| v["status"] == 3).await?;

    let (status, m) = http(port, "GET", "/metrics").await?;
    assert_eq!(status, 200);
    assert_eq!(
        sample(
            &m,
            "m2pool_requests_total{kind=\"topup\",outcome=\"accepted\"}"
        ),
        Some(1.0),
        "{m}"
    );
    assert_eq!(
        sample(
            &m,
            "m2pool_requests_total{kind=\"topup\",outcome=\"bad_signature\"}"
        ),
        Some(1.0)
    );
    assert_eq!(sample(&m, "m2pool_watched_addresses"), Some(1.0));
    assert_eq!(sample(&m, "m2pool_deposits_seen_total"), Some(1.0));
    assert_eq!(sample(&m, "m2pool_broker_connected"), Some(1.0));
    let head = w.head().await? as f64;
    assert_eq!(sample(&m, "m2pool_chain_head{chain=\"ETH\"}"), Some(head));
    assert!(sample(&m, "m2pool_chain_cursor_lag{chain=\"ETH\"}").is_some());
    assert!(
        sample(&m, "m2pool_publish_confirm_seconds_count").is_some_and(|n| n >= 2.0),
        "{m}"
    );
    assert!(sample(&m, "m2pool_channel_capacity{channel=\"requests\"}").is_some());
    assert!(sample(&m, "m2pool_deposits{state=\"pending\"}").is_some());
    assert!(sample(&m, "m2pool_outbox_backlog").is_some());

    assert_eq!(http(port, "GET", "/nope").await?.0, 404);
    assert_eq!(http(port, "POST", "/healthz").await?.0, 405);

    // The node goes away: degraded.
    drop(std::mem::replace(&mut w.anvil, Anvil::spawn(&[])?));
    eventually("healthz says degraded", || async {
        Ok(matches!(http(port, "GET", "/healthz").await, Ok((503, ref b)) if b.contains("\"node_connected\":false")))
    })
    .await?;
    daemon.stop().await?;
    w.cleanup().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_main_log_goes_to_daily_files_as_json_when_configured() -> Result<()> {
    let w = World::with("mainlog", &[], |_| {}).await?;
    let mut w = w;
    let logs = w.dir.path().join("main-logs");
    w.config_json["log_config"]["main_log_dir"] = logs.to_string_lossy().into_owned().into();
    w.config_json["log_config"]["format"] = "json".into();
    let mut daemon = w.spawn_process(&[("RUST_LOG", "info")])?;
    let file = || -> Option<std::path::PathBuf> {
        std::fs::read_dir(&logs)
            .ok()?
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .find(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("m2pool-payment.log."))
            })
    };
    eventually("a daily log file with the start", || async {
        Ok(file().is_some_and(|f| {
            std::fs::read_to_string(f)
                .unwrap_or_default()
                .contains("starting")
        }))
    })
    .await?;
    let pid = daemon.0.id().to_string();
    std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()?;
    let status = daemon.0.wait()?;
    assert!(status.success());
    let text = std::fs::read_to_string(file().context("log file")?)?;
    for line in text.lines() {
        let v: Value = serde_json::from_str(line).with_context(|| format!("not JSON: {line}"))?;
        assert!(v["level"].is_string() && v["fields"].is_object(), "{line}");
    }
    assert!(text.contains("stopped"), "the whole run is in the file");
    w.cleanup().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_shows_every_flow() -> Result<()> {
    // The demo's hot wallet is anvil's account 1, as in bin/dev.sh.
    let w = World::new("demo").await?;
    let store = w.wallets().await?;
    let key = "0x59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d";
    let kek = m2pool_payment::wallet::Kek::from_material(WALLET_KEY.as_bytes());
    m2pool_payment::wallet::cli::import(
        &store,
        &kek,
        "ETH",
        key,
        m2pool_payment::wallet::Label::User,
    )
    .await?;
    store.close().await;
    let daemon = w.start().await?;
    let config = w.config_file()?;
    let manifest = env!("CARGO_MANIFEST_DIR");
    let built = std::process::Command::new(env!("CARGO"))
        .args(["build", "--quiet", "--example", "demo", "--manifest-path"])
        .arg(format!("{manifest}/Cargo.toml"))
        .status()?;
    anyhow::ensure!(built.success(), "building the demo");
    // Beside the daemon's binary, wherever the target directory is.
    let demo = std::path::Path::new(env!("CARGO_BIN_EXE_m2pool-payment"))
        .with_file_name("examples")
        .join("demo");
    let out = tokio::process::Command::new(demo)
        .arg(&config)
        .env("DEV_KEY", std::str::from_utf8(KEY)?)
        .output()
        .await?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for step in [
        "topup_resp",
        "withdraw_resp",
        "pay_resp",
        "\"status\":3",
        "Done: every flow",
    ] {
        assert!(stdout.contains(step), "the demo shows {step}:\n{stdout}");
    }
    daemon.stop().await?;
    w.cleanup().await
}
