//! What operators touch: the health and metrics endpoint (real HTTP requests),
//! the main log, the per-address transaction logs, the dev environment and
//! its demo, and the compose stack's token deployment.

mod common;

use alloy::primitives::{Address, U256};
use alloy::providers::Provider;
use anyhow::{Context, Result, ensure};
use common::broker::PrivateBroker;
use common::http::*;
use common::payout_of as is;
use common::*;
use lapin::options::{QueueBindOptions, QueueDeleteOptions};
use lapin::types::FieldTable;
use m2pool_payment::wallet::Label;
use serde_json::{Value, json};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_metrics_answer_real_http_requests() -> Result<()> {
    let port = free_port()?;
    let mut w = World::with("http", &[], with_http(port, json!({}))).await?;
    let user = w.new_wallet(Label::User).await?;
    w.fund(user, 100_000_000, ether(1)).await?;
    let mut topups = w.replies("topup_resp").await?;
    let mut withdrawals = w.replies("withdraw_resp").await?;
    let daemon = w.start().await?;

    let h = wait_health(port, "ok with a head", WAIT, |s, h| {
        s == 200 && h["status"] == "ok"
    })
    .await?;
    assert_eq!(h["status"], "ok");
    assert_eq!(h["problems"], json!([]));
    assert_eq!(h["broker_connected"], true);
    let eth = &h["chains"]["ETH"];
    assert_eq!(eth["node_connected"], true);
    assert!(eth["seconds_since_head"].is_u64(), "{h}");
    assert_eq!(eth["head_stalled"], false);
    // The cursor anchored at start is reported before any new block.
    assert_eq!(eth["head"], w.head().await?, "{h}");
    assert_eq!(eth["cursor_lag"], 0, "{h}");
    assert_eq!(h["outbox_backlog"], 0, "{h}");

    // Known states are there with 0 before anything happened.
    let m = metrics(port).await?;
    for state in ["pending", "confirmed", "failed", "cancelled"] {
        let name = format!("m2pool_payouts{{state=\"{state}\"}}");
        assert_eq!(sample(&m, &name), Some(0.0), "{name}\n{m}");
    }
    for state in ["pending", "confirmed", "failed", "orphaned"] {
        let name = format!("m2pool_deposits{{state=\"{state}\"}}");
        assert_eq!(sample(&m, &name), Some(0.0), "{name}\n{m}");
    }
    assert_eq!(
        sample(&m, "m2pool_payout_broadcast_seconds_count"),
        Some(0.0)
    );

    // A deposit and a withdrawal, both seen and pending.
    let hash = deposit_seen(&w, &mut topups).await?;
    let request = json!({"queue_id": "m-1", "from_address": hex_addr(user), "to_address": hex_addr(Address::random()),
                         "amount": 2.5, "chain": "ETH", "symbol": "USDT", "timestamp": 1758610297});
    w.publish("withdraw", request).await?;
    withdrawals.wait("withdraw status 2", is("m-1", 2)).await?;
    let mut bad = topup(&hex_addr(Address::random()), "USDT");
    bad["sign"] = "00".into();
    w.publish_raw("topup", &serde_json::to_vec(&bad)?).await?;
    topups.wait("status 3", |v| v["status"] == 3).await?;

    let m = wait_metrics(
        port,
        &[
            ("m2pool_payouts{state=\"pending\"}", 1.0),
            ("m2pool_payouts{state=\"confirmed\"}", 0.0),
            ("m2pool_deposits{state=\"pending\"}", 1.0),
            // deposit 2, withdrawal 2, the refusal 3
            ("m2pool_responses_published_total", 3.0),
        ],
    )
    .await?;
    assert_eq!(
        sample(&m, "m2pool_payout_broadcast_seconds_count"),
        Some(1.0),
        "{m}"
    );
    assert!(
        sample(&m, "m2pool_payout_broadcast_seconds_bucket{le=\"+Inf\"}") == Some(1.0)
            && sample(&m, "m2pool_payout_broadcast_seconds_sum").is_some_and(|s| s > 0.0),
        "{m}"
    );
    assert!(
        sample(&m, "m2pool_publish_confirm_seconds_count").is_some_and(|n| n >= 3.0),
        "{m}"
    );

    // Both final.
    w.mine(20).await?;
    topups
        .wait("deposit status 1", |v| {
            v["tx_hash"] == hash.as_str() && v["status"] == 1
        })
        .await?;
    withdrawals.wait("withdraw status 1", is("m-1", 1)).await?;
    let head = w.head().await? as f64;
    let m = wait_metrics(
        port,
        &[
            ("m2pool_payouts{state=\"pending\"}", 0.0),
            ("m2pool_payouts{state=\"confirmed\"}", 1.0),
            ("m2pool_payouts{state=\"failed\"}", 0.0),
            ("m2pool_payout_states{state=\"confirmed\"}", 1.0),
            ("m2pool_payout_states{state=\"mined\"}", 0.0),
            ("m2pool_deposits{state=\"pending\"}", 0.0),
            ("m2pool_deposits{state=\"confirmed\"}", 1.0),
            ("m2pool_responses_published_total", 5.0),
            ("m2pool_chain_head{chain=\"ETH\"}", head),
            ("m2pool_chain_cursor{chain=\"ETH\"}", head),
            ("m2pool_chain_cursor_lag{chain=\"ETH\"}", 0.0),
            ("m2pool_outbox_backlog", 0.0),
        ],
    )
    .await?;
    let want = [
        (
            "m2pool_requests_total{kind=\"topup\",outcome=\"accepted\"}",
            1.0,
        ),
        (
            "m2pool_requests_total{kind=\"topup\",outcome=\"bad_signature\"}",
            1.0,
        ),
        (
            "m2pool_requests_total{kind=\"withdraw\",outcome=\"accepted\"}",
            1.0,
        ),
        (
            "m2pool_requests_total{kind=\"withdraw\",outcome=\"refused\"}",
            0.0,
        ),
        (
            "m2pool_requests_total{kind=\"pay\",outcome=\"accepted\"}",
            0.0,
        ),
        (
            "m2pool_requests_total{kind=\"remove\",outcome=\"unaddressable\"}",
            0.0,
        ),
        ("m2pool_watched_addresses", 1.0),
        ("m2pool_deposits_seen_total", 1.0),
        ("m2pool_broker_connected", 1.0),
        // Idle: nothing waits in the internal channels.
        ("m2pool_channel_fill{channel=\"requests\"}", 0.0),
        ("m2pool_channel_fill{channel=\"chain_events\"}", 0.0),
        ("m2pool_channel_capacity{channel=\"requests\"}", 4096.0),
        ("m2pool_channel_capacity{channel=\"chain_events\"}", 256.0),
        ("m2pool_payout_broadcast_seconds_count", 1.0),
    ];
    for (name, v) in want {
        assert_eq!(sample(&m, name), Some(v), "{name}\n{m}");
    }
    assert!(
        sample(&m, "m2pool_publish_confirm_seconds_count").is_some_and(|n| n >= 5.0),
        "{m}"
    );

    assert_eq!(http(port, "GET", "/nope").await?.0, 404);
    assert_eq!(http(port, "POST", "/healthz").await?.0, 405);

    // The node goes away: degraded, and says why.
    drop(std::mem::replace(&mut w.anvil, Anvil::spawn(&[])?));
    let h = wait_health(port, "degraded without the node", WAIT, |s, h| {
        s == 503 && h["chains"]["ETH"]["node_connected"] == false
    })
    .await?;
    assert_eq!(h["status"], "degraded");
    assert!(problems(&h).contains("node is not connected"), "{h}");
    daemon.stop().await?;
    w.cleanup().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthz_is_503_while_the_broker_is_stopped() -> Result<()> {
    let broker = PrivateBroker::start()?;
    let port = free_port()?;
    let mut w = World::on_broker(
        "health-broker",
        &broker.url(),
        &[],
        with_http(port, json!({})),
    )
    .await?;
    let daemon = w.start().await?;
    wait_health(port, "ok", WAIT, |s, h| {
        s == 200 && h["status"] == "ok" && h["broker_connected"] == true
    })
    .await?;

    tokio::task::block_in_place(|| broker.stop_app())?;
    let h = wait_health(port, "503 without the broker", WAIT, |s, h| {
        s == 503 && h["broker_connected"] == false
    })
    .await?;
    assert!(problems(&h).contains("broker is not connected"), "{h}");
    // The chain side is fine: only the broker is named.
    assert_eq!(h["problems"].as_array().map(Vec::len), Some(1), "{h}");

    tokio::task::block_in_place(|| broker.start_app())?;
    // The daemon reconnects with backoff (up to 30 s between attempts).
    let h = wait_health(port, "ok with the broker back", WAIT * 2, |s, h| {
        s == 200 && h["status"] == "ok" && h["broker_connected"] == true
    })
    .await?;
    assert_eq!(h["problems"], json!([]));
    w.reconnect().await?;
    daemon.stop().await?;
    w.cleanup().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthz_is_503_while_the_head_stalls() -> Result<()> {
    const STALL: u64 = 4;
    let port = free_port()?;
    let w = World::with("health-stall", &[], |c| {
        with_http(port, json!({}))(c);
        c["eth_config"]["head_stall_secs"] = STALL.into();
    })
    .await?;
    // Mining paused: no block comes unless the test mines one.
    let _: Value = w
        .eth
        .raw_request("evm_setAutomine".into(), (false,))
        .await?;
    let daemon = w.start().await?;
    let h = wait_health(port, "ok", WAIT, |s, h| s == 200 && h["status"] == "ok").await?;
    let head = h["chains"]["ETH"]["head"].as_u64().context("head")?;

    let h = wait_health(port, "503 with the head stalled", WAIT, |s, h| {
        s == 503 && h["chains"]["ETH"]["head_stalled"] == true
    })
    .await?;
    let since = h["chains"]["ETH"]["seconds_since_head"]
        .as_u64()
        .context("seconds_since_head")?;
    assert!(since >= STALL, "stalled only after head_stall_secs: {h}");
    assert!(problems(&h).contains("has not advanced"), "{h}");
    assert_eq!(h["broker_connected"], true);

    w.mine(1).await?;
    let h = wait_health(port, "ok once the head moves", WAIT, |s, h| {
        s == 200 && h["chains"]["ETH"]["head_stalled"] == false
    })
    .await?;
    assert_eq!(h["chains"]["ETH"]["head"], head + 1, "{h}");
    daemon.stop().await?;
    w.cleanup().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthz_shows_the_committed_cursor_not_the_scanned_one() -> Result<()> {
    use sqlx::Connection;
    let port = free_port()?;
    let w = World::with("health-cursor", &[], with_http(port, json!({}))).await?;
    let daemon = w.start().await?;
    let h = wait_health(port, "ok and caught up", WAIT, |s, h| {
        s == 200 && h["chains"]["ETH"]["cursor_lag"] == 0
    })
    .await?;
    let cursor = h["chains"]["ETH"]["cursor"].as_u64().context("cursor")?;

    // The message store held by another writer: listen cannot commit, while
    // the scanner goes on reading blocks and handing them over.
    let mut lock = sqlx::SqliteConnection::connect(&format!(
        "sqlite://{}",
        w.dir.path().join("msg.db").display()
    ))
    .await?;
    sqlx::query("BEGIN IMMEDIATE").execute(&mut lock).await?;
    // Listen takes the first blocks and waits for the store; the next ones
    // wait in the channel, handed over by the scanner.
    w.mine(5).await?;
    wait_health(port, "the first 5 blocks' head", WAIT, |_, h| {
        h["chains"]["ETH"]["head"] == cursor + 5
    })
    .await?;
    w.mine(5).await?;
    // Handed over and waiting: how many listen took before it blocked varies.
    eventually("blocks waiting in the chain channel", || async {
        let m = metrics(port).await?;
        Ok(sample(&m, "m2pool_channel_fill{channel=\"chain_events\"}").unwrap_or(0.0) >= 1.0)
    })
    .await?;
    let h = wait_health(port, "the last head", WAIT, |_, h| {
        h["chains"]["ETH"]["head"] == cursor + 10
    })
    .await?;
    assert_eq!(h["chains"]["ETH"]["head"], cursor + 10, "{h}");
    assert_eq!(
        h["chains"]["ETH"]["cursor"], cursor,
        "ten blocks scanned, none committed: {h}"
    );
    assert_eq!(h["chains"]["ETH"]["cursor_lag"], 10, "{h}");

    sqlx::query("ROLLBACK").execute(&mut lock).await?;
    lock.close().await?;
    wait_health(port, "the cursor once committed", WAIT, |_, h| {
        h["chains"]["ETH"]["cursor"] == cursor + 10
    })
    .await?;
    daemon.stop().await?;
    w.cleanup().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthz_is_503_while_responses_cannot_reach_a_queue() -> Result<()> {
    let port = free_port()?;
    let w = World::with(
        "health-outbox",
        &[],
        with_http(port, json!({"max_outbox_age_secs": 1})),
    )
    .await?;
    let mut removes = w.replies("remove_resp").await?;
    let daemon = w.start().await?;
    wait_health(port, "ok", WAIT, |s, h| s == 200 && h["status"] == "ok").await?;
    // Answered: the daemon has declared its topology and serves.
    let first = hex_addr(Address::random());
    w.publish("remove", topup(&first, "USDT")).await?;
    removes
        .wait("a first answer", |v| v["address"] == first.as_str())
        .await?;

    // Nothing takes remove responses any more: the broker returns them.
    let e = &w.config_json["rmq_config"]["remove_resp"];
    let (queue, exchange, key) = (
        e["queue"].as_str().context("queue")?,
        e["exchange"].as_str().context("exchange")?,
        e["routing"][0].as_str().context("routing")?,
    );
    let ch = w.amqp.create_channel().await?;
    ch.queue_unbind(
        queue.into(),
        exchange.into(),
        key.into(),
        FieldTable::default(),
    )
    .await?;
    let stranger = hex_addr(Address::random());
    w.publish("remove", topup(&stranger, "USDT")).await?;
    let h = wait_health(port, "503 with a response waiting", WAIT, |s, _| s == 503).await?;
    assert!(
        problems(&h).contains("responses wait for the broker"),
        "{h}"
    );
    assert_eq!(h["outbox_backlog"], 1, "{h}");
    assert!(
        h["outbox_oldest_secs"].as_u64().is_some_and(|s| s >= 1),
        "{h}"
    );
    assert_eq!(h["broker_connected"], true, "the connection itself is fine");

    ch.queue_bind(
        queue.into(),
        exchange.into(),
        key.into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await?;
    removes
        .wait("the held response", |v| v["address"] == stranger.as_str())
        .await?;
    let h = wait_health(port, "ok once it is out", WAIT, |s, h| {
        s == 200 && h["status"] == "ok"
    })
    .await?;
    assert_eq!(h["outbox_backlog"], 0, "{h}");
    daemon.stop().await?;
    w.cleanup().await
}

/// Runs the daemon binary until `/healthz` answers, stops it with SIGTERM,
/// and returns what it wrote to stdout and stderr.
async fn logged_run(w: &World, port: u16, args: &[&str], rust_log: Option<&str>) -> Result<String> {
    let out = w.dir.path().join(format!("stdout-{}.log", unique("run")));
    let file = std::fs::File::create(&out)?;
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_m2pool-payment"));
    cmd.arg("--config")
        .arg(w.config_file()?)
        .args(args)
        .env("M2POOL_PAYMENT_KEY", std::str::from_utf8(KEY)?)
        .env("M2POOL_WALLET_KEY", WALLET_KEY)
        .env_remove("RUST_LOG")
        .stdout(file.try_clone()?)
        .stderr(file);
    if let Some(filter) = rust_log {
        cmd.env("RUST_LOG", filter);
    }
    let mut child = ChildGuard(cmd.spawn()?);
    let ready = wait_health(port, "ok", WAIT, |s, h| s == 200 && h["status"] == "ok").await;
    let pid = i32::try_from(child.0.id())?;
    // SAFETY: kill(2) on the pid of the child this test started.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let deadline = Instant::now() + WAIT;
    let status = loop {
        if let Some(s) = child.0.try_wait()? {
            break s;
        }
        ensure!(
            Instant::now() < deadline,
            "the daemon did not stop on SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    };
    let text = std::fs::read_to_string(&out)?;
    ready.with_context(|| format!("daemon output:\n{text}"))?;
    ensure!(status.success(), "exit {status}:\n{text}");
    Ok(text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_main_log_honours_rust_log_and_the_format() -> Result<()> {
    let port = free_port()?;
    let w = World::with("rustlog", &[], with_http(port, json!({}))).await?;

    // Default: human-readable info lines, plain text when not a terminal.
    let text = logged_run(&w, port, &[], None).await?;
    assert!(
        text.lines()
            .any(|l| l.contains(" INFO ") && l.contains("starting")),
        "{text}"
    );
    assert!(text.contains("stopped"), "{text}");
    assert!(
        !text.contains('\u{1b}'),
        "no colour codes off a terminal:\n{text}"
    );
    assert!(
        text.lines().all(|l| !l.trim_start().starts_with('{')),
        "{text}"
    );

    // RUST_LOG=error: no info line at all.
    let text = logged_run(&w, port, &[], Some("error")).await?;
    for level in ["INFO", "WARN", "DEBUG"] {
        assert!(
            !text.contains(level),
            "RUST_LOG=error printed {level}:\n{text}"
        );
    }

    // Directives per target: only the endpoint's info line.
    let text = logged_run(&w, port, &[], Some("error,m2pool::http=info")).await?;
    assert!(text.contains("http endpoint listening"), "{text}");
    assert!(
        !text.contains("starting"),
        "m2pool::daemon stays at error:\n{text}"
    );

    // --log-format json: one JSON object a line.
    let text = logged_run(&w, port, &["--log-format", "json"], None).await?;
    let mut started = false;
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let v: Value = serde_json::from_str(line).with_context(|| format!("not JSON: {line}"))?;
        assert!(v["level"].is_string() && v["fields"].is_object(), "{line}");
        started |= v["level"] == "INFO"
            && v["target"] == "m2pool::daemon"
            && v["fields"]["message"] == "starting";
    }
    assert!(started, "{text}");
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

/// Waits until `{stem}.log` holds exactly `[kind]: <time>-<rest>`, the time
/// in Go's `2006-01-02 15:04:05` layout.
async fn wait_txlog_line(w: &World, stem: &str, kind: &str, rest: &str) -> Result<()> {
    let path = w.dir.path().join("logs").join(format!("{stem}.log"));
    let head = format!("[{kind}]: ");
    let matches = |line: &str| {
        line.strip_prefix(&head).is_some_and(|l| {
            l.len() > 20
                && l.as_bytes()[19] == b'-'
                && l[..19].bytes().enumerate().all(|(i, b)| match i {
                    4 | 7 => b == b'-',
                    10 => b == b' ',
                    13 | 16 => b == b':',
                    _ => b.is_ascii_digit(),
                })
                && &l[20..] == rest
        })
    };
    eventually(&format!("{head}…-{rest} in {}", path.display()), || async {
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        Ok(text.lines().any(matches))
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transaction_logs_record_pay_and_remove_per_address() -> Result<()> {
    let w = World::new("txlog-kinds").await?;
    let mut pays = w.replies("pay_resp").await?;
    let mut removes = w.replies("remove_resp").await?;
    let user = w.new_wallet(Label::User).await?;
    w.fund(user, 1_000_000_000, ether(1)).await?;
    let daemon = w.start().await?;

    // A batch payment: lines in the payer's file, one per transfer.
    let (to1, to2) = (Address::random(), Address::random());
    let batch = json!({"queue_id": "log-p", "from_address": hex_addr(user), "chain": "ETH", "symbol": "USDT",
        "timestamp": 1758610297, "transactions": [
            {"order_id": "o-1", "to_address": hex_addr(to1), "amount": 1.5},
            {"order_id": "o-2", "to_address": hex_addr(to2), "amount": 100.5}]});
    w.publish("pay", batch).await?;
    pays.wait_count("status 2 per transfer", 2, |v| {
        v["queue_id"] == "log-p" && v["status"] == 2
    })
    .await?;
    w.mine(20).await?;
    pays.wait_count("status 1 per transfer", 2, |v| {
        v["queue_id"] == "log-p" && v["status"] == 1
    })
    .await?;
    let u = hex_addr(user);
    for (to, amount) in [(to1, "1.500000"), (to2, "100.500000")] {
        let rest = format!("{u}-{}-ETH-USDT-{amount}", hex_addr(to));
        wait_txlog_line(&w, &u, "PayReq", &rest).await?;
        wait_txlog_line(&w, &u, "PayResp", &rest).await?;
        let theirs = w
            .dir
            .path()
            .join("logs")
            .join(format!("{}.log", hex_addr(to)));
        assert!(!theirs.exists(), "payments are filed by from_address");
    }

    // A remove: lines in the watched address's file.
    let a = Address::random();
    w.publish("topup", topup(&hex_addr(a), "USDT")).await?;
    w.wait_watched("USDT", a, true).await?;
    w.publish("remove", topup(&hex_addr(a), "USDT")).await?;
    removes
        .wait("remove status 1", |v| {
            v["address"] == hex_addr(a) && v["status"] == 1
        })
        .await?;
    let a = hex_addr(a);
    let rest = format!("-{a}-ETH-USDT-0");
    wait_txlog_line(&w, &a, "TopupReq", &rest).await?;
    wait_txlog_line(&w, &a, "RemoveReq", &rest).await?;
    wait_txlog_line(&w, &a, "RemoveResp", &rest).await?;
    daemon.stop().await?;
    w.cleanup().await
}

/// `bin/dev.sh` running in its own process group; the group is killed when
/// this drops, so a failing test leaves nothing behind.
struct DevEnv {
    child: std::process::Child,
    pgid: i32,
}

impl Drop for DevEnv {
    fn drop(&mut self) {
        // SAFETY: kill(2) on the process group this test created.
        unsafe { libc::kill(-self.pgid, libc::SIGKILL) };
        let _ = self.child.wait();
    }
}

/// Pids of live processes (zombies aside) in process group `pgid`.
fn group_members(pgid: i32) -> Vec<i32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
                return false;
            };
            // pid (comm) state ppid pgrp …; comm may hold spaces.
            let fields: Vec<&str> = stat
                .rsplit_once(')')
                .map(|(_, r)| r.split_whitespace().collect())
                .unwrap_or_default();
            fields.first() != Some(&"Z") && fields.get(2) == Some(&pgid.to_string().as_str())
        })
        .collect()
}

fn port_open(port: u16) -> bool {
    std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_sh_then_demo_sh_show_every_flow_and_stop_cleanly() -> Result<()> {
    use std::os::unix::process::CommandExt;
    let dir = tempfile::tempdir()?;
    let dev_dir = dir.path().join("dev");
    let http_port = free_port()?;
    // Two dev chains (DEV_CHAINS=ETH,BSC): anvil's port and the next one.
    let anvil_port = loop {
        let p = free_port()?;
        if p < u16::MAX && std::net::TcpListener::bind(("127.0.0.1", p + 1)).is_ok() {
            break p;
        }
    };
    let prefix = unique("dev");
    let out_path = dir.path().join("dev.out");
    let out = std::fs::File::create(&out_path)?;
    let child = Command::new(root().join("bin/dev.sh"))
        .env("DEV_PORT", anvil_port.to_string())
        .env("DEV_HTTP_PORT", http_port.to_string())
        .env("DEV_DIR", &dev_dir)
        .env("DEV_QUEUE_PREFIX", &prefix)
        .env("DEV_BIN", env!("CARGO_BIN_EXE_m2pool-payment"))
        .env("DEV_CHAINS", "ETH,BSC")
        .env("RUST_LOG", "warn,m2pool=info")
        .stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out)
        .process_group(0)
        .spawn()?;
    let pgid = i32::try_from(child.id())?;
    let mut dev = DevEnv { child, pgid };
    let dev_out = || std::fs::read_to_string(&out_path).unwrap_or_default();

    let ready = wait_health(http_port, "ok from bin/dev.sh", WAIT * 3, |s, h| {
        s == 200 && h["status"] == "ok"
    })
    .await;
    ready.with_context(|| format!("bin/dev.sh output:\n{}", dev_out()))?;
    // The console is on, and bin/dev.sh says where and with which token.
    let (status, login) = common::http::http(http_port, "GET", "/console/login").await?;
    ensure!(
        status == 200 && login.contains("token"),
        "console login page: {status}"
    );
    ensure!(
        dev_out().contains("/console   token dev-console-token-0123"),
        "bin/dev.sh names the console:\n{}",
        dev_out()
    );

    let demo = tokio::time::timeout(
        Duration::from_secs(300),
        tokio::process::Command::new(root().join("bin/demo.sh"))
            .env("DEV_DIR", &dev_dir)
            .stdin(Stdio::null())
            .output(),
    )
    .await
    .context("bin/demo.sh did not finish within 5 minutes")??;
    let stdout = String::from_utf8_lossy(&demo.stdout);
    ensure!(
        demo.status.success(),
        "bin/demo.sh failed:\n{stdout}\n{}\nbin/dev.sh:\n{}",
        String::from_utf8_lossy(&demo.stderr),
        dev_out()
    );
    let notices: Vec<(String, Value)> = stdout
        .lines()
        .filter_map(|l| l.trim_start().strip_prefix("← "))
        .filter_map(|l| l.split_once(": "))
        .filter_map(|(k, v)| Some((k.to_owned(), serde_json::from_str(v).ok()?)))
        .collect();
    let shown = |kind: &str, pred: &dyn Fn(&Value) -> bool| {
        notices.iter().any(|(k, v)| k == kind && pred(v))
    };
    for (what, kind, pred) in [
        (
            "forged request refused",
            "topup_resp",
            &(|v: &Value| v["status"] == 3) as &dyn Fn(&Value) -> bool,
        ),
        ("deposit seen", "topup_resp", &|v: &Value| {
            v["status"] == 2 && v["amount"] == json!(25.5)
        }),
        ("deposit final", "topup_resp", &|v: &Value| {
            v["status"] == 1 && v["amount"] == json!(25.5)
        }),
        ("withdrawal broadcast", "withdraw_resp", &|v: &Value| {
            v["status"] == 2 && v["tx_hash"].as_str().is_some_and(|h| h.len() == 66)
        }),
        ("withdrawal final", "withdraw_resp", &|v: &Value| {
            v["status"] == 1
        }),
    ] {
        assert!(shown(kind, pred), "the demo shows the {what}:\n{stdout}");
    }
    for order in ["order-1", "order-2", "order-3"] {
        for status in [2, 1] {
            assert!(
                shown("pay_resp", &|v| v["order_id"] == order
                    && v["status"] == status),
                "the demo shows {order} with status {status}:\n{stdout}"
            );
        }
    }
    for status in [2, 1] {
        assert!(
            shown("topup_resp", &|v| v["chain"] == "BSC"
                && v["symbol"] == "USDT"
                && v["amount"] == json!(2.5)
                && v["status"] == status),
            "the demo shows the deposit on the second dev chain with status {status}:\n{stdout}"
        );
    }
    assert!(stdout.contains("Done: every flow"), "{stdout}");

    // SIGTERM to bin/dev.sh stops it and everything it started.
    // SAFETY: kill(2) on the pid of the child this test started.
    unsafe { libc::kill(pgid, libc::SIGTERM) };
    let deadline = Instant::now() + WAIT;
    while dev.child.try_wait()?.is_none() {
        ensure!(
            Instant::now() < deadline,
            "bin/dev.sh did not stop on SIGTERM:\n{}",
            dev_out()
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let left = group_members(pgid);
    assert!(
        left.is_empty(),
        "processes left behind by bin/dev.sh: {left:?}"
    );
    assert!(!port_open(anvil_port), "anvil still listens");
    assert!(!port_open(anvil_port + 1), "the second anvil still listens");
    assert!(!port_open(http_port), "the daemon still listens");

    // The dev config's queues live on the shared broker: remove them.
    let config: Value = serde_json::from_slice(&std::fs::read(dev_dir.join("config.json"))?)?;
    let amqp = lapin::Connection::connect(AMQP, lapin::ConnectionProperties::default()).await?;
    let ch = amqp.create_channel().await?;
    let mut exchanges = std::collections::BTreeSet::new();
    for e in config["rmq_config"]
        .as_object()
        .context("rmq_config")?
        .values()
    {
        if let Some(q) = e["queue"].as_str() {
            assert!(q.starts_with(&prefix), "{q} is this test's");
            ch.queue_delete(q.into(), QueueDeleteOptions::default())
                .await?;
        }
        exchanges.extend(e["exchange"].as_str().map(str::to_owned));
    }
    for x in exchanges {
        ch.exchange_delete(x.as_str().into(), Default::default())
            .await?;
    }
    let _ = amqp.close(200, "done".into()).await;
    Ok(())
}

/// The high-availability overlay: two instances, each with its config, on
/// one MySQL message and wallet store, distinct names, quorum request
/// queues, restarted by Docker.
#[test]
fn the_ha_compose_runs_two_instances_on_one_database() -> Result<()> {
    let compose = std::fs::read_to_string(root().join("docker-compose.ha.yml"))?;
    assert!(
        compose.matches("restart: unless-stopped").count() >= 2,
        "both restarted by Docker"
    );
    let mut names = Vec::new();
    for f in [
        "deploy/docker-config.ha.json",
        "deploy/docker-config.ha-b.json",
    ] {
        assert!(compose.contains(&format!("./{f}:")), "compose mounts {f}");
        let c: Value = serde_json::from_slice(&std::fs::read(root().join(f))?)?;
        assert_eq!(
            c["mysql_config"]["msg"], c["mysql_config"]["wallet"],
            "{f}: both stores on the shared database"
        );
        assert_eq!(
            c["rmq_config"]["withdraw"]["arguments"]["x-queue-type"],
            "quorum"
        );
        names.push(
            c["ha_config"]["instance_id"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
        );
    }
    assert!(names[0] != names[1] && !names[0].is_empty(), "{names:?}");
    Ok(())
}

/// What `docker compose` would do, short of running docker: the files it
/// mounts exist, the daemon's config validates, and the token deployer it
/// runs puts the test USDT at the address that config names (run here
/// against a real anvil, twice: the second run changes nothing).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_compose_stack_deploys_the_token_its_config_names() -> Result<()> {
    let compose = std::fs::read_to_string(root().join("docker-compose.yml"))?;
    let mounted: Vec<&str> = compose
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- ./"))
        .filter_map(|l| l.split(':').next())
        .collect();
    for f in [
        "deploy/docker-config.json",
        "deploy/deploy-token.sh",
        "tests/contracts/TestUSDT.bin",
    ] {
        assert!(mounted.contains(&f), "compose mounts {f}");
    }
    for f in &mounted {
        assert!(
            root().join(f).is_file(),
            "compose mounts {f}, which is missing"
        );
    }
    assert!(
        compose.contains("token: {condition: service_completed_successfully}"),
        "the daemon starts after the token is deployed"
    );
    assert!(root().join("deploy/env.example").is_file());

    let config_path = root().join("deploy/docker-config.json");
    let check = Command::new(env!("CARGO_BIN_EXE_m2pool-payment"))
        .arg("check-config")
        .arg("--config")
        .arg(&config_path)
        .output()?;
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );
    let config: Value = serde_json::from_slice(&std::fs::read(&config_path)?)?;
    let token: Address = config["eth_config"]["tokens"][0]["address"]
        .as_str()
        .context("token address")?
        .parse()?;

    let anvil = Anvil::spawn(&[])?;
    let eth = alloy::providers::ProviderBuilder::new()
        .connect_http(anvil.http().parse()?)
        .erased();
    let accounts = eth.get_accounts().await?;
    assert_eq!(
        config["eth_config"]["chain_id"],
        eth.get_chain_id().await?,
        "the config expects the dev node's chain"
    );
    assert_eq!(
        token,
        accounts[0].create(0),
        "the config names the first contract of anvil's first account"
    );
    let script = std::fs::read_to_string(root().join("deploy/deploy-token.sh"))?;
    let var = |name: &str| -> Result<Address> {
        let v = script
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name}=")))
            .with_context(|| format!("{name}= in deploy-token.sh"))?;
        Ok(v.trim().parse()?)
    };
    assert_eq!(var("DEPLOYER")?, accounts[0]);
    assert_eq!(var("TOKEN")?, token);
    assert_eq!(var("HOLDER")?, accounts[1]);

    let deploy = || {
        Command::new("sh")
            .arg(root().join("deploy/deploy-token.sh"))
            .env("RPC_URL", anvil.http())
            .env("TOKEN_BIN", root().join("tests/contracts/TestUSDT.bin"))
            .output()
    };
    let usdt = ITestUSDT::new(token, &eth);
    for run in ["first", "second"] {
        let out = tokio::task::block_in_place(deploy)?;
        assert!(
            out.status.success(),
            "{run} run: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(!eth.get_code_at(token).await?.is_empty(), "code at {token}");
        assert_eq!(
            usdt.balanceOf(accounts[1]).call().await?,
            U256::from(1_000_000_000_000u64),
            "{run} run: 1,000,000 USDT to the holder, once"
        );
    }
    Ok(())
}

/// With `msg_config.keep_days`, the daemon deletes requests older than that
/// from the message store when it starts; newer ones stay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn old_requests_are_pruned_when_keep_days_is_set() -> Result<()> {
    let mut w = World::new("retention").await?;
    w.config_json["msg_config"]["keep_days"] = 1.into();
    let daemon = w.start().await?;
    let (a, b, c) = (Address::random(), Address::random(), Address::random());
    for addr in [a, b, c] {
        w.publish("topup", topup(&hex_addr(addr), "USDT")).await?;
        w.wait_watched("USDT", addr, true).await?;
    }
    daemon.stop().await?;
    let path = w.config()?.msg_store;
    let db = sqlx::SqlitePool::connect(&format!("sqlite://{}", path.display())).await?;
    // The first two requests were received two days ago.
    sqlx::query(
        "UPDATE inbox SET received_at = ? WHERE id IN (SELECT id FROM inbox ORDER BY id LIMIT 2)",
    )
    .bind(millis_ago(2 * 86_400_000))
    .execute(&db)
    .await?;
    let daemon = w.start().await?;
    eventually("the old requests are deleted", || async {
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM inbox")
            .fetch_one(&db)
            .await?;
        Ok(n == 1)
    })
    .await?;
    // What they did stays: the addresses are still watched.
    for addr in [a, b, c] {
        w.wait_watched("USDT", addr, true).await?;
    }
    daemon.stop().await?;
    db.close().await;
    w.cleanup().await
}

/// Unix milliseconds `ms` ago.
fn millis_ago(ms: i64) -> i64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or_default();
    now - ms
}

/// One response queue is gone (deleted at runtime, so its responses come back
/// unroutable) and more of its responses wait than the relay reads in one
/// round: the other queues' responses still go out (before, they waited
/// behind the stuck ones for as long as the queue was gone), and the stuck
/// ones go out, all of them, once the queue is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stuck_response_queue_does_not_hold_up_the_others() -> Result<()> {
    let w = World::new("stuck-kind").await?;
    let mut topups = w.replies("topup_resp").await?;
    let daemon = w.start().await?;
    // Once an address is watched, the daemon has declared its topology.
    let first = Address::random();
    w.publish("topup", topup(&hex_addr(first), "USDT")).await?;
    w.wait_watched("USDT", first, true).await?;
    let e = w.config_json["rmq_config"]["remove_resp"].clone();
    let queue = e["queue"].as_str().context("remove_resp queue")?;
    let ch = w.amqp.create_channel().await?;
    ch.queue_delete(queue.into(), QueueDeleteOptions::default())
        .await?;
    // 4,200 forged removes (more than a relay round): each answered 3 on the
    // queue that is gone.
    let n = 4_200;
    for _ in 0..n {
        let mut body = topup(&hex_addr(Address::random()), "USDT");
        body["sign"] = "00".into();
        w.publish_raw("remove", &serde_json::to_vec(&body)?).await?;
    }
    eventually("the refusals are in the outbox", || async {
        let store = w.store().await?;
        let k = store.outbox_bodies("remove_resp").await?.len();
        store.close().await;
        Ok(k >= n)
    })
    .await?;
    // A deposit's status 2 comes after them in the outbox, and still goes out.
    deposit_seen(&w, &mut topups).await?;

    // The queue comes back: every stuck response goes out.
    ch.queue_declare(
        queue.into(),
        lapin::options::QueueDeclareOptions {
            durable: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await?;
    ch.queue_bind(
        queue.into(),
        e["exchange"].as_str().unwrap_or_default().into(),
        e["routing"][0].as_str().unwrap_or_default().into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await?;
    let mut back = w.replies("remove_resp").await?;
    back.wait_count("the refusals", n, |v| v["status"] == 3)
        .await?;
    let _ = ch.close(200, "done".into()).await;
    daemon.stop().await?;
    w.cleanup().await
}

/// A new address is watched, 1 USDT is sent to it, and its status 2 arrives;
/// returns the transfer's hash as the responses write it.
async fn deposit_seen(w: &World, topups: &mut Replies) -> Result<String> {
    let addr = Address::random();
    w.publish("topup", topup(&hex_addr(addr), "USDT")).await?;
    w.wait_watched("USDT", addr, true).await?;
    let (tx, _) = w.send_usdt(w.user(), addr, 1_000_000).await?;
    let hash = format!("{tx:#x}");
    topups
        .wait("deposit status 2", |v| {
            v["tx_hash"] == hash.as_str() && v["status"] == 2
        })
        .await?;
    Ok(hash)
}
