//! The performance benchmark (README, "Performance"): each figure of the daemon next to the raw limit
//! measured in the same run, printed as a table and written to
//! `target/bench/report.json`.
//!
//!   bin/bench.sh            # full sizes (release build)
//!   bin/bench.sh --quick    # small sizes, a couple of minutes (run by CI)
//!
//! Everything is real: its own anvil, the local RabbitMQ, fresh SQLite stores,
//! the daemon in-process (and as a process where its memory is measured).

#[path = "gateway/api.rs"]
mod api;
#[path = "../tests/common/mod.rs"]
mod common;
#[path = "gateway/console.rs"]
mod console;
#[path = "gateway/ha.rs"]
mod ha;

use alloy::primitives::{Address, B256, U256};
use alloy::providers::{DynProvider, Provider};
use anyhow::{Context, Result, bail, ensure};
use common::*;
use futures::{StreamExt, TryStreamExt};
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use m2pool_payment::listen::WatchSet;
use m2pool_payment::store::{Store, WatchRow};
use m2pool_payment::wallet::Label;
use serde_json::{Value, json};
use std::time::{Duration, Instant};

/// Sizes of one run.
struct Sizes {
    ingest: usize,
    watched: usize,
    block_transfers: usize,
    watch_set: usize,
    payouts: usize,
    pending: [usize; 2],
    maturing: usize,
    e2e: usize,
    http: usize,
    hooks: usize,
    push: usize,
}

const FULL: Sizes = Sizes {
    ingest: 50_000,
    watched: 1_000_000,
    block_transfers: 2_000,
    watch_set: 1_000_000,
    payouts: 2_000,
    pending: [10_000, 100_000],
    maturing: 100,
    e2e: 10_000,
    http: 50_000,
    hooks: 5_000,
    push: 30,
};

const QUICK: Sizes = Sizes {
    ingest: 2_000,
    watched: 20_000,
    block_transfers: 200,
    watch_set: 50_000,
    payouts: 200,
    pending: [1_000, 5_000],
    maturing: 20,
    e2e: 300,
    http: 2_000,
    hooks: 300,
    push: 5,
};

/// One line of the report.
#[derive(Debug, Clone, serde::Serialize)]
struct Row {
    name: String,
    daemon: f64,
    raw: Option<f64>,
    ratio: Option<f64>,
    unit: String,
    target: String,
    met: Option<bool>,
    note: String,
}

impl Row {
    fn new(name: &str, daemon: f64, raw: Option<f64>, unit: &str) -> Self {
        Self {
            name: name.into(),
            daemon,
            raw,
            ratio: raw.filter(|r| *r > 0.0).map(|r| daemon / r),
            unit: unit.into(),
            target: String::new(),
            met: None,
            note: String::new(),
        }
    }
    fn target(mut self, t: &str, met: bool) -> Self {
        self.target = t.into();
        self.met = Some(met);
        self
    }
    fn note(mut self, n: impl Into<String>) -> Self {
        self.note = n.into();
        self
    }
}

fn per_sec(n: usize, d: Duration) -> f64 {
    n as f64 / d.as_secs_f64().max(1e-9)
}

/// A world for benchmarking: tracing quiet, the given config edits.
async fn world(name: &str, anvil_args: &[&str], edit: impl FnOnce(&mut Value)) -> Result<World> {
    World::with(name, anvil_args, |c| {
        if std::env::var_os("BENCH_NO_TXLOG").is_some() {
            c["log_config"]["dir"] = "".into();
        }
        if let Ok(dir) = std::env::var("BENCH_TXLOG_DIR") {
            let unique = format!("{dir}/{}", unique("txlog"));
            c["log_config"]["dir"] = unique.into();
        }
        if let Some(p) = std::env::var("BENCH_PREFETCH")
            .ok()
            .and_then(|p| p.parse::<u16>().ok())
        {
            c["rmq_config"]["prefetch"] = p.into();
        }
        edit(c)
    })
    .await
}

/// Row 1: requests consumed, verified, committed and acked per second, next to
/// a consumer that only acks.
///
/// Consumes `n` deliveries from `queue`, acknowledging every `every`-th with
/// `multiple` (and the last); returns deliveries per second.
async fn raw_consume(ch: &lapin::Channel, queue: &str, n: usize, every: usize) -> Result<f64> {
    let mut consumer = ch
        .basic_consume(
            queue.into(),
            format!("raw-{every}").as_str().into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let start = Instant::now();
    let mut got = 0;
    while got < n {
        let d = consumer.next().await.context("raw stream ended")??;
        got += 1;
        if got % every == 0 || got == n {
            d.ack(BasicAckOptions {
                multiple: every > 1,
            })
            .await?;
        }
    }
    let rate = per_sec(n, start.elapsed());
    ch.basic_cancel(format!("raw-{every}").as_str().into(), Default::default())
        .await?;
    Ok(rate)
}

async fn ingest(n: usize) -> Result<Vec<Row>> {
    let w = world("bench-ingest", &[], |_| {}).await?;
    let bodies: Vec<Vec<u8>> = (0..n)
        .map(|_| signed(topup(&hex_addr(Address::random()), "USDT")))
        .collect::<Result<_>>()?;
    // Raw: a consumer that only acks, on the daemon's own (durable) topup
    // queue, with the same messages and prefetch: once acknowledging each
    // delivery, once acknowledging every 100th with `multiple` (the daemon
    // acknowledges a batch with one `multiple` ack), the broker's ceiling.
    let queue = w.config_json["rmq_config"]["topup"]["queue"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let prefetch = w.config()?.rmq.context("rmq_config")?.prefetch;
    let ch = w.amqp.create_channel().await?;
    ch.basic_qos(prefetch, BasicQosOptions::default()).await?;
    w.publish_all("topup", &bodies).await?;
    let raw_each = raw_consume(&ch, &queue, n, 1).await?;
    w.publish_all("topup", &bodies).await?;
    let raw = raw_consume(&ch, &queue, n, 100).await?;

    // The daemon: the same signed topups, pre-loaded in the same queue. Its
    // clock runs from the first commit to the last; the requests of the first
    // commit are left out of the count, as the time they took is.
    w.publish_all("topup", &bodies).await?;
    let cpu_before = cpu_seconds();
    let daemon = w.start().await?;
    let rate = ingest_rate(&w, daemon, n).await?;
    let cpu = cpu_seconds() - cpu_before;
    // Every delivery was acknowledged: nothing is left in the queue.
    let left = ch
        .queue_declare(
            queue.as_str().into(),
            QueueDeclareOptions {
                passive: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await?
        .message_count();
    ensure!(left == 0, "{left} requests left unacknowledged");
    w.cleanup().await?;
    let ratio = rate / raw;
    Ok(vec![
        Row::new(
            "ingest (consume, verify, commit, ack)",
            rate,
            Some(raw),
            "msg/s",
        )
        .target(
            ">= 10000 msg/s and >= 0.5 of raw",
            rate >= 10_000.0 && ratio >= 0.5,
        )
        .note(format!(
            "{n} signed topups pre-loaded; raw: a consumer that only acks, same queue and prefetch, one `multiple` ack per 100; \
             the daemon used {:.0} µs of CPU per request",
            cpu * 1e6 / n as f64
        )),
        Row::new(
            "ingest vs. a consumer acking each delivery",
            rate,
            Some(raw_each),
            "msg/s",
        )
        .note("raw: a consumer that only acks, each delivery on its own"),
    ])
}

/// CPU time process `pid` has used (user + system), in seconds.
fn process_cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which is in parentheses): utime is the
    // 12th and stime the 13th of them.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // SAFETY: sysconf only reads a system constant.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    (ticks(11) + ticks(12)) / hz
}

/// CPU time this process has used (user + system), in seconds.
fn cpu_seconds() -> f64 {
    let mut u = std::mem::MaybeUninit::<libc::rusage>::uninit();
    // SAFETY: getrusage writes a whole rusage into the buffer it is given.
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, u.as_mut_ptr()) } != 0 {
        return 0.0;
    }
    // SAFETY: initialised by the successful call above.
    let u = unsafe { u.assume_init() };
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    secs(u.ru_utime) + secs(u.ru_stime)
}

/// Waits until the daemon of `w` has recorded `n` requests; returns them
/// per second from its first commit to its last, the requests of the first
/// commit left out of the count as the time they took is. Either engine.
async fn ingest_rate(w: &World, daemon: Daemon, n: usize) -> Result<f64> {
    let mut store = None;
    let started = Instant::now();
    let (first, last) = loop {
        if store.is_none() {
            store = w.store().await.ok();
        }
        if let Some(s) = &store
            && let Ok((count, first, last)) = s.inbox_span().await
            && count >= n as i64
        {
            break (first, last);
        }
        if daemon.has_stopped() {
            daemon.exited().await?;
            bail!("the daemon stopped before ingest finished");
        }
        ensure!(
            started.elapsed() < Duration::from_secs(600),
            "ingest did not finish"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    daemon.stop().await?;
    let store = store.context("the store")?;
    let in_first = usize::try_from(store.inbox_received_at(first).await?)?;
    store.close().await;
    Ok(per_sec(
        n - in_first,
        Duration::from_millis((last - first).max(1) as u64),
    ))
}

/// Adds `n` random watched addresses straight into the store (the daemon loads
/// them at start), and returns them.
async fn preload_watches(w: &World, n: usize) -> Result<Vec<Address>> {
    preload_watches_on(w, "ETH", n).await
}

/// `n` fresh addresses watched for USDT on `chain`, written to the store
/// before the daemon starts.
async fn preload_watches_on(w: &World, chain: &str, n: usize) -> Result<Vec<Address>> {
    let store = Store::open(&w.config()?.msg_store).await?;
    let all: Vec<Address> = (0..n).map(|_| Address::random()).collect();
    for chunk in all.chunks(100_000) {
        let rows: Vec<WatchRow> = chunk
            .iter()
            .map(|a| WatchRow {
                chain: chain.into(),
                symbol: "USDT".into(),
                address: *a,
            })
            .collect();
        let refs: Vec<(&WatchRow, Option<u64>)> = rows.iter().map(|r| (r, None)).collect();
        let mut tx = store.begin().await?;
        tx.add_watches(&refs).await?;
        tx.commit().await?;
    }
    store.close().await;
    Ok(all)
}

fn http_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

async fn metrics(port: u16) -> Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await?;
    let mut raw = String::new();
    s.read_to_string(&mut raw).await?;
    Ok(raw)
}

fn sample(text: &str, name: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

/// Row 2: a block with `transfers` USDT transfers to watched addresses out of
/// `watched`; block mined to the last status 2 received, next to eth_getLogs of
/// that block.
/// The `transfers` addresses of `addrs` a detection round sends to: every
/// `step`-th, starting further along each round, so no address gets two.
fn round_targets(addrs: &[Address], round: usize, step: usize, transfers: usize) -> Vec<Address> {
    addrs
        .iter()
        .skip(round % step)
        .step_by(step)
        .take(transfers)
        .copied()
        .collect()
}

/// Blocks measured by the detection rows: 3, or `BENCH_ROUNDS`.
fn rounds() -> usize {
    std::env::var("BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&n| n > 0)
        .unwrap_or(3)
}

async fn detection(watched: usize, transfers: usize) -> Result<Row> {
    let w = world("bench-detect", &["--gas-limit", "1000000000"], |_| {}).await?;
    let mut replies = w.replies("topup_resp").await?;
    let addrs = preload_watches(&w, watched).await?;
    let daemon = w.start().await?;
    // The daemon is up and has read the head when a topup of its own is committed.
    let probe = Address::random();
    w.publish("topup", topup(&hex_addr(probe), "USDT")).await?;
    w.wait_watched("USDT", probe, true).await?;

    // Three blocks, each to other addresses; the median is reported.
    let token = ITestUSDT::new(w.token, &w.eth);
    let step = (watched / transfers).max(1);
    let rounds = rounds();
    let mut runs = Vec::with_capacity(rounds);
    let mut received = Vec::with_capacity(rounds);
    let mut raws = Vec::with_capacity(rounds);
    let mut minings = Vec::with_capacity(rounds);
    for round in 0..rounds {
        let targets = round_targets(&addrs, round, step, transfers);
        let amounts: Vec<U256> = targets.iter().map(|_| U256::from(1_000_000u64)).collect();
        let _: Value = w
            .eth
            .raw_request("evm_setAutomine".into(), (false,))
            .await?;
        let pending = token
            .batchTransfer(targets.clone(), amounts)
            .from(w.user())
            .gas(900_000_000)
            .send()
            .await?;
        let tx = *pending.tx_hash();
        // The clock starts when the block exists: anvil_mine returns once it
        // is mined (executing 2,000 transfers takes anvil a while of its own).
        let asked = Instant::now();
        w.mine(1).await?;
        let mined = Instant::now();
        let mined_ms = unix_ms();
        minings.push(mined.duration_since(asked).as_secs_f64() * 1000.0);
        let receipt = w.eth.get_transaction_receipt(tx).await?.context("mined")?;
        let block = receipt.block_number.context("block")?;
        let got = replies
            .wait_count("status 2 of the block", targets.len(), |v| {
                v["status"] == 2 && v["block_height"] == block
            })
            .await?;
        let last = got.iter().map(|r| r.at).max().unwrap_or(mined);
        received.push(last.duration_since(mined).as_secs_f64() * 1000.0);
        // The daemon's figure: until the broker confirmed the last of them
        // (the outbox row is marked sent on the broker's ack).
        let confirmed = broker_confirmed(&w, "ETH", block, targets.len()).await?;
        runs.push((confirmed - mined_ms) as f64);
        // Raw: eth_getLogs for that block.
        let filter = alloy::rpc::types::Filter::new()
            .from_block(block)
            .to_block(block)
            .address(w.token);
        let t = Instant::now();
        let logs = w.eth.get_logs(&filter).await?;
        raws.push(t.elapsed().as_secs_f64() * 1000.0);
        ensure!(
            logs.len() == targets.len(),
            "{} logs in the block",
            logs.len()
        );
    }
    let _: Value = w.eth.raw_request("evm_setAutomine".into(), (true,)).await?;
    daemon.stop().await?;
    w.cleanup().await?;
    let all = runs
        .iter()
        .map(|r| format!("{r:.0}"))
        .collect::<Vec<_>>()
        .join(", ");
    let ms = percentile(&mut runs, 0.5);
    Ok(Row::new(
        "deposit detection (block mined to last status 2 confirmed by the broker)",
        ms,
        Some(percentile(&mut raws, 0.5)),
        "ms",
    )
    .target("< 300 ms", ms < 300.0)
    .note(format!(
        "{transfers} transfers in one block, {watched} watched; median of {rounds} blocks ({all} ms); \
         received by a consumer: {:.0} ms; raw: eth_getLogs of that block; anvil took {:.0} ms to mine one",
        percentile(&mut received, 0.5),
        percentile(&mut minings, 0.5)
    )))
}

/// Row 2b: two networks, each mining a block of `transfers` transfers to
/// watched addresses at the same moment; per network, block mined to the last
/// status 2 confirmed by the broker, next to the single-network figure of the
/// same run (`single`, ms).
async fn detection_two(watched: usize, transfers: usize, single: f64) -> Result<Vec<Row>> {
    let second = Anvil::spawn(&["--gas-limit", "1000000000", "--chain-id", "56"])?;
    let bsc = alloy::providers::ProviderBuilder::new()
        .connect_http(second.http().parse()?)
        .erased();
    let accounts = bsc.get_accounts().await?;
    let bsc_token = deploy_test_usdt(&bsc, accounts[0]).await?;
    ITestUSDT::new(bsc_token, &bsc)
        .mint(accounts[1], U256::from(u128::MAX))
        .from(accounts[0])
        .send()
        .await?
        .get_receipt()
        .await?;
    let section = json!({
        "rpc_url": second.http(), "ws_url": second.ws(), "chain_id": 56,
        "native_symbol": "BNB", "fee_model": "legacy", "confirm_height": 20, "poll_interval_ms": 500,
        "tokens": [{"symbol": "USDT", "address": hex_addr(bsc_token), "decimals": 18}]
    });
    let w = world("bench-detect2", &["--gas-limit", "1000000000"], |c| {
        c["net"] = json!(["ETH", "BSC"]);
        c["bsc_config"] = section;
    })
    .await?;
    let mut replies = w.replies("topup_resp").await?;
    let nets: [(&str, DynProvider, Address); 2] = [
        ("ETH", w.eth.clone(), w.token),
        ("BSC", bsc.clone(), bsc_token),
    ];
    let mut addrs = Vec::new();
    for (chain, _, _) in &nets {
        addrs.push(preload_watches_on(&w, chain, watched).await?);
    }
    let daemon = w.start().await?;
    let probe = Address::random();
    w.publish("topup", topup(&hex_addr(probe), "USDT")).await?;
    w.wait_watched("USDT", probe, true).await?;

    let step = (watched / transfers).max(1);
    let rounds = rounds();
    let mut runs: [Vec<f64>; 2] = Default::default();
    for round in 0..rounds {
        let mut sent = Vec::new();
        for (i, (_, rpc, token)) in nets.iter().enumerate() {
            let targets = round_targets(&addrs[i], round, step, transfers);
            let amounts: Vec<U256> = targets.iter().map(|_| U256::from(1_000_000u64)).collect();
            let _: Value = rpc.raw_request("evm_setAutomine".into(), (false,)).await?;
            let pending = ITestUSDT::new(*token, rpc.clone())
                .batchTransfer(targets, amounts)
                .from(w.user())
                .gas(900_000_000)
                .send()
                .await?;
            sent.push(*pending.tx_hash());
        }
        // Both blocks at the same moment.
        let mine = |rpc: &DynProvider| {
            let rpc = rpc.clone();
            async move {
                let _: Value = rpc.raw_request("anvil_mine".into(), ("0x1",)).await?;
                anyhow::Ok(unix_ms())
            }
        };
        let (a, b) = tokio::join!(mine(&w.eth), mine(&bsc));
        let mined = [a?, b?];
        let mut blocks = Vec::with_capacity(nets.len());
        for (i, (_, rpc, _)) in nets.iter().enumerate() {
            let receipt = rpc
                .get_transaction_receipt(sent[i])
                .await?
                .context("mined")?;
            blocks.push(receipt.block_number.context("block")?);
        }
        // Awaited as the consumer receives them, both networks' together,
        // before the outbox is read: reading the store while one network
        // is still answering would take CPU from the daemon it measures (the
        // single-network row waits the same way).
        replies
            .wait_count("status 2 of both blocks", transfers * nets.len(), |v| {
                v["status"] == 2
                    && nets.iter().zip(&blocks).any(|((chain, _, _), block)| {
                        v["chain"] == *chain && v["block_height"] == *block
                    })
            })
            .await?;
        for (i, (chain, _, _)) in nets.iter().enumerate() {
            let confirmed = broker_confirmed(&w, chain, blocks[i], transfers).await?;
            runs[i].push((confirmed - mined[i]) as f64);
        }
        replies.drain();
    }
    for (_, rpc, _) in &nets {
        let _: Value = rpc.raw_request("evm_setAutomine".into(), (true,)).await?;
    }
    daemon.stop().await?;
    // The broker alone, with the daemon stopped: one block's answers and
    // both blocks' answers, a real body, to the queue the consumer reads.
    let body = replies
        .matching(|v| v["status"] == 2 && v["chain"] == "BSC")
        .first()
        .map(|r| r.raw.clone().into_bytes())
        .context("an answer")?;
    let (mut one, mut two) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        one.push(broker_alone(&w, &body, transfers).await?);
        two.push(broker_alone(&w, &body, transfers * nets.len()).await?);
    }
    let (one, two) = (percentile(&mut one, 0.5), percentile(&mut two, 0.5));
    w.cleanup().await?;
    drop(second);
    let mut rows = Vec::new();
    for (i, (chain, _, _)) in nets.iter().enumerate() {
        let all = runs[i]
            .iter()
            .map(|r| format!("{r:.0}"))
            .collect::<Vec<_>>()
            .join(", ");
        let ms = percentile(&mut runs[i], 0.5);
        rows.push(
            Row::new(
                &format!("deposit detection, two networks at once: {chain}"),
                ms,
                Some(single),
                "ms",
            )
            .target("within 1.5x of one network", ms <= single * 1.5)
            .note(format!(
                "{transfers} transfers in one block on each of ETH and BSC, mined together, {watched} watched on each; \
                 median of {rounds} blocks ({all} ms); raw column: the single-network figure of this run; \
                 the broker alone (a plain publisher, daemon stopped) confirms one block's answers in {one:.0} ms \
                 and both blocks' in {two:.0} ms"
            )),
        );
    }
    Ok(rows)
}

/// The broker alone: a plain publisher sends `n` copies of `body` to the
/// response queue the consumer reads, as the relay publishes (persistent,
/// mandatory, 256 publishes in flight, publisher confirms), and waits for
/// the last confirm; milliseconds.
async fn broker_alone(w: &World, body: &[u8], n: usize) -> Result<f64> {
    use lapin::BasicProperties;
    use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
    let (_, exchange, routing) = w.entry("topup_resp");
    let ch = w.amqp.create_channel().await?;
    ch.confirm_select(ConfirmSelectOptions::default()).await?;
    let props = BasicProperties::default()
        .with_delivery_mode(2)
        .with_content_type("application/json".into());
    let opts = BasicPublishOptions {
        mandatory: true,
        ..BasicPublishOptions::default()
    };
    let started = Instant::now();
    let mut confirms = Vec::with_capacity(n);
    let mut publishes = futures::stream::FuturesOrdered::new();
    for _ in 0..n {
        publishes.push_back(ch.basic_publish(
            exchange.as_str().into(),
            routing.as_str().into(),
            opts,
            body,
            props.clone(),
        ));
        if publishes.len() >= 256 {
            confirms.push(publishes.next().await.context("a publish")??);
        }
    }
    while let Some(p) = publishes.next().await {
        confirms.push(p?);
    }
    for c in confirms {
        ensure!(c.await?.is_ack(), "the broker did not confirm a publish");
    }
    let ms = started.elapsed().as_secs_f64() * 1000.0;
    ch.close(200, "done".into()).await?;
    Ok(ms)
}

fn unix_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// When the broker confirmed the last of the `n` `status=2` responses for
/// `block` of `chain` (unix milliseconds), once all are confirmed.
async fn broker_confirmed(w: &World, chain: &str, block: u64, n: usize) -> Result<i64> {
    let path = w.config()?.msg_store;
    let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}?mode=ro", path.display())).await?;
    let pattern = format!("%\"status\":2,\"chain\":\"{chain}\",%\"block_height\":{block}}}");
    let started = Instant::now();
    let last = loop {
        let (rows, sent, last): (i64, i64, Option<i64>) = sqlx::query_as(
            "SELECT COUNT(*), COUNT(sent_at), MAX(sent_at) FROM outbox
             WHERE kind = 'topup_resp' AND CAST(body AS TEXT) LIKE ?",
        )
        .bind(&pattern)
        .fetch_one(&pool)
        .await?;
        if rows as usize >= n && sent == rows {
            break last.unwrap_or_default();
        }
        ensure!(
            started.elapsed() < WAIT,
            "{sent} of {n} responses for block {block} confirmed (of {rows} found)"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    pool.close().await;
    Ok(last)
}

fn rss_mb(pid: u32) -> Result<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .context("VmRSS")?;
    Ok(kb / 1024.0)
}

/// Row 3: resident memory of the daemon with `n` watched addresses, and
/// lookups per second of the watch set.
async fn watch_set(n: usize) -> Result<(Row, Row)> {
    let w = world("bench-watchset", &[], |_| {}).await?;
    let addrs = preload_watches(&w, n).await?;
    let empty = world("bench-watchset-empty", &[], |_| {}).await?;
    // The daemon binary as a process, with and without the addresses.
    let measure = async |w: &World| -> Result<f64> {
        let mut child = w.spawn_process(&[])?;
        let log = w.daemon_log_path();
        eventually("the daemon has loaded its watch set", || async {
            Ok(std::fs::read_to_string(&log)
                .unwrap_or_default()
                .contains("consuming"))
        })
        .await?;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let rss = rss_mb(child.0.id())?;
        child.0.kill()?;
        child.0.wait()?;
        Ok(rss)
    };
    let with = measure(&w).await?;
    let base = measure(&empty).await?;
    w.cleanup().await?;
    empty.cleanup().await?;

    let mut set = WatchSet::new(vec!["ETH".into(), "USDT".into()]);
    for a in &addrs {
        set.insert(*a, "USDT");
    }
    let probes: Vec<Address> = (0..1_000_000)
        .map(|i| {
            if i % 2 == 0 {
                addrs[i % addrs.len()]
            } else {
                Address::random()
            }
        })
        .collect();
    let t = Instant::now();
    let mut hits = 0usize;
    for a in &probes {
        hits += usize::from(set.contains(a, "USDT"));
    }
    let rate = per_sec(probes.len(), t.elapsed());
    ensure!(hits >= probes.len() / 2, "lookups found the watched half");
    Ok((
        Row::new("watched addresses: resident memory", with, Some(base), "MB")
            .target(&format!("< 300 MB with {n}"), with < 300.0)
            .note(format!(
                "{n} watched; raw column: the same daemon watching nothing"
            )),
        Row::new("watch set lookups", rate, None, "lookups/s").note("O(1): half hits, half misses"),
    ))
}

/// Row 4: withdrawals from one hot wallet signed, persisted and accepted per
/// second, next to a plain loop that signs and sends the same transfers.
async fn payouts(n: usize) -> Result<Row> {
    payouts_on(n, "payout broadcast (one hot wallet)", |_| {}).await
}

/// The payout row, named `name`, with the config edited by `edit`.
async fn payouts_on(n: usize, name: &str, edit: impl FnOnce(&mut Value)) -> Result<Row> {
    let w = world("bench-payout", &["--block-time", "1"], |c| {
        // The defaults, not the test world's 2 s and 4 s, which make
        // rebroadcasts and replacements fall inside the burst measured.
        c["eth_config"]["rebroadcast_secs"] = 30.into();
        c["eth_config"]["stuck_payout_secs"] = 180.into();
        edit(c);
    })
    .await?;
    let mut replies = w.replies("withdraw_resp").await?;
    let user = w.new_wallet(Label::User).await?;
    w.fund(user, n as u64 * 2_000_000, ether(100)).await?;
    let to = Address::random();
    let bodies: Vec<Vec<u8>> = (0..n)
        .map(|i| {
            signed(json!({"queue_id": format!("bp-{i}"), "from_address": hex_addr(user), "to_address": hex_addr(to),
                "amount": 1, "chain": "ETH", "symbol": "USDT", "timestamp": 1}))
        })
        .collect::<Result<_>>()?;
    w.publish_all("withdraw", &bodies).await?;
    let anvil_cpu = process_cpu_seconds(w.anvil.pid());
    let cpu_before = cpu_seconds();
    let daemon = w.start().await?;
    // Counted as they arrive: a scan of all seen per payout would spend the
    // CPU the daemon is measured on.
    let sent = replies
        .wait_count("status 2", n, |v| v["status"] == 2)
        .await?;
    let cpu = cpu_seconds() - cpu_before;
    let anvil_cpu = process_cpu_seconds(w.anvil.pid()) - anvil_cpu;
    let distinct: std::collections::HashSet<&str> = sent
        .iter()
        .filter_map(|r| r.v["queue_id"].as_str())
        .collect();
    ensure!(distinct.len() == n, "a status 2 for every withdrawal");
    // From the first payout's commit (the request is in; signing can start)
    // to the commit that records the last one accepted by the node.
    let (first, last) = payout_span(&w).await?;
    let rate = per_sec(n, Duration::from_millis((last - first).max(1) as u64));
    // Gap-free nonces: after they are all mined, the wallet's nonce is n.
    eventually("all payouts mined", || async {
        Ok(w.nonce(user).await? == n as u64)
    })
    .await?;
    daemon.stop().await?;

    // Raw: the fastest plain sender of the same transfers: signed
    // beforehand (not timed), then posted in JSON-RPC batches of
    // RAW_BATCH with RAW_DEPTH batches in flight.
    let raw_wallet = alloy::signers::local::PrivateKeySigner::random();
    w.fund(raw_wallet.address(), n as u64 * 2_000_000, ether(100))
        .await?;
    let raw_txs = presigned_transfers(&w, &raw_wallet, to, n).await?;
    let client = alloy::rpc::client::RpcClient::new_http(w.anvil.http().parse()?);
    let raw_anvil_cpu = process_cpu_seconds(w.anvil.pid());
    let t = Instant::now();
    let sent: Vec<usize> = futures::stream::iter(raw_txs.chunks(RAW_BATCH))
        .map(|chunk| {
            let client = client.clone();
            async move {
                let mut batch = alloy::rpc::client::BatchRequest::new(&client);
                let waiters = chunk
                    .iter()
                    .map(|raw| {
                        batch.add_call::<_, alloy::primitives::B256>(
                            "eth_sendRawTransaction",
                            &(raw.clone(),),
                        )
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                batch.send().await?;
                let mut ok = 0;
                for w in waiters {
                    ok += usize::from(w.await.is_ok());
                }
                anyhow::Ok(ok)
            }
        })
        .buffered(
            std::env::var("BENCH_RAW_DEPTH")
                .ok()
                .and_then(|d| d.parse().ok())
                .unwrap_or(RAW_DEPTH),
        )
        .try_collect()
        .await?;
    let raw = per_sec(n, t.elapsed());
    let raw_anvil_cpu = process_cpu_seconds(w.anvil.pid()) - raw_anvil_cpu;
    ensure!(
        sent.iter().sum::<usize>() == n,
        "the node took {} of the raw sender's {n} transfers",
        sent.iter().sum::<usize>()
    );
    eventually("the raw transfers mined", || async {
        Ok(w.nonce(raw_wallet.address()).await? == n as u64)
    })
    .await?;
    w.cleanup().await?;
    let ratio = rate / raw;
    Ok(Row::new(name, rate, Some(raw), "tx/s")
        .target(">= 1000 tx/s, gap-free, >= 0.7 of raw", rate >= 1000.0 && ratio >= 0.7)
        .note(format!(
            "{n} withdrawals, anvil --block-time 1; nonces gap-free, every transaction stored before it is sent; \
             raw: the same transfers signed beforehand, posted in JSON-RPC batches of {RAW_BATCH}, {RAW_DEPTH} batches in flight; \
             CPU per payout: daemon {:.0} µs, anvil {:.0} µs (raw: anvil {:.0} µs)",
            cpu * 1e6 / n as f64,
            anvil_cpu * 1e6 / n as f64,
            raw_anvil_cpu * 1e6 / n as f64
        )))
}

/// When the first payout was recorded and when the last `2` was committed
/// (unix milliseconds), from the world's message store, SQLite or MariaDB.
async fn payout_span(w: &World) -> Result<(i64, i64)> {
    let config = w.config()?;
    let span = "SELECT (SELECT MIN(created_at) FROM payouts),
                (SELECT MAX(created_at) FROM outbox WHERE kind = 'withdraw_resp'
                   AND CAST(body AS {text}) LIKE '%\"status\":2,%')";
    Ok(match &config.msg_mysql {
        Some(m) => {
            let pool =
                sqlx::MySqlPool::connect(&format!("mysql://root@127.0.0.1:3306/{}", m.database))
                    .await?;
            let r = sqlx::query_as(sqlx::AssertSqlSafe(span.replace("{text}", "CHAR")))
                .fetch_one(&pool)
                .await?;
            pool.close().await;
            r
        }
        None => {
            let path = config.msg_store;
            let pool =
                sqlx::SqlitePool::connect(&format!("sqlite://{}?mode=ro", path.display())).await?;
            let r = sqlx::query_as(sqlx::AssertSqlSafe(span.replace("{text}", "TEXT")))
                .fetch_one(&pool)
                .await?;
            pool.close().await;
            r
        }
    })
}

/// Transfers in one raw JSON-RPC batch of the payout row's raw sender.
const RAW_BATCH: usize = 100;
/// Raw batches in flight at once.
const RAW_DEPTH: usize = 4;

/// `n` USDT transfers of 1 from `wallet` to `to`, signed with consecutive
/// nonces (EIP-1559, the node's fees), as raw bytes.
async fn presigned_transfers(
    w: &World,
    wallet: &alloy::signers::local::PrivateKeySigner,
    to: Address,
    n: usize,
) -> Result<Vec<alloy::primitives::Bytes>> {
    use alloy::consensus::{SignableTransaction, TxEip1559, TxEnvelope};
    use alloy::eips::eip2718::Encodable2718;
    use alloy::network::TxSignerSync;
    use alloy::sol_types::SolCall;
    alloy::sol! { function transfer(address to, uint256 value); }
    let chain_id = w.eth.get_chain_id().await?;
    let fees = w.eth.estimate_eip1559_fees().await?;
    let start = w.eth.get_transaction_count(wallet.address()).await?;
    let input: alloy::primitives::Bytes = transferCall {
        to,
        value: U256::from(1_000_000u64),
    }
    .abi_encode()
    .into();
    (0..n as u64)
        .map(|i| {
            let mut tx = TxEip1559 {
                chain_id,
                nonce: start + i,
                gas_limit: 100_000,
                max_fee_per_gas: fees.max_fee_per_gas,
                max_priority_fee_per_gas: fees.max_priority_fee_per_gas,
                to: alloy::primitives::TxKind::Call(w.token),
                value: U256::ZERO,
                access_list: Default::default(),
                input: input.clone(),
            };
            let sig = wallet.sign_transaction_sync(&mut tx)?;
            let envelope: TxEnvelope = tx.into_signed(sig).into();
            Ok(envelope.encoded_2718().into())
        })
        .collect()
}

/// Row 5: listen's work per block with `pending` undecided deposits of which
/// `maturing` mature at each block.
async fn confirm_work(pending: usize, maturing: usize) -> Result<Row> {
    let port = http_port()?;
    let w = world("bench-confirm", &[], |c| {
        c["http_config"] = json!({"listen": format!("127.0.0.1:{port}")});
    })
    .await?;
    let daemon = w.start().await?;
    let probe = Address::random();
    w.publish("topup", topup(&hex_addr(probe), "USDT")).await?;
    w.wait_watched("USDT", probe, true).await?;
    daemon.stop().await?;
    // Pending deposits straight into the store: `maturing` due at each of the
    // next blocks, the rest far in the future.
    // They are in the canonical block the daemon's cursor is at, so the ones
    // that mature are confirmed (answered 1, ledger movements queued).
    let head = w.head().await?;
    let block_hash = w
        .eth
        .get_block_by_number(head.into())
        .await?
        .context("the head block")?
        .header
        .hash;
    let store = Store::open(&w.config()?.msg_store).await?;
    let blocks = 20u64;
    let mut tx = store.begin().await?;
    for i in 0..pending {
        let due = if i < maturing * blocks as usize {
            head + 1 + (i / maturing) as u64
        } else {
            head + 1_000_000
        };
        let d = m2pool_payment::store::NewDeposit {
            chain: "ETH",
            tx_hash: B256::random(),
            log_index: 0,
            symbol: "USDT",
            address: Address::random(),
            from: Address::random(),
            amount: U256::from(1u64),
            block_number: head,
            block_hash,
            due,
            decimals: 6,
            known_only: false,
        };
        tx.deposit_seen(&d).await?;
    }
    tx.commit().await?;
    store.close().await;
    let daemon = w.start().await?;
    eventually("the endpoint answers", || async {
        Ok(metrics(port).await.is_ok())
    })
    .await?;
    let before = metrics(port).await?;
    for _ in 0..blocks {
        w.mine(1).await?;
    }
    let target = head + blocks;
    let before_count = sample(&before, "m2pool_block_apply_seconds_count");
    eventually("the blocks are applied", || async {
        let m = metrics(port).await?;
        Ok(sample(&m, "m2pool_block_apply_seconds_count") >= before_count + blocks as f64)
    })
    .await?;
    ensure!(w.head().await? >= target);
    let after = metrics(port).await?;
    let confirmed = w
        .store()
        .await?
        .outbox_bodies("topup_resp")
        .await?
        .iter()
        .filter(|b| b.windows(11).any(|x| x == b"\"status\":1,"))
        .count();
    ensure!(
        confirmed == maturing * blocks as usize,
        "{confirmed} deposits confirmed, want {}",
        maturing * blocks as usize
    );
    let (sum, count) = (
        sample(&after, "m2pool_block_apply_seconds_sum")
            - sample(&before, "m2pool_block_apply_seconds_sum"),
        sample(&after, "m2pool_block_apply_seconds_count")
            - sample(&before, "m2pool_block_apply_seconds_count"),
    );
    daemon.stop().await?;
    w.cleanup().await?;
    let ms = sum / count.max(1.0) * 1000.0;
    Ok(Row::new(
        &format!("confirmation work per block, {pending} pending"),
        ms,
        None,
        "ms/block",
    )
    .note(format!(
        "{maturing} mature per block (decided, answered, committed); {count} blocks"
    )))
}

fn percentile(v: &mut [f64], p: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

/// Row 6: `n` deposits across `n` addresses, first transfer to last status 1,
/// confirm_height 20, blocks mined on demand.
async fn end_to_end(n: usize) -> Result<Vec<Row>> {
    let w = world("bench-e2e", &["--gas-limit", "1000000000"], |_| {}).await?;
    let mut replies = w.replies("topup_resp").await?;
    let daemon = w.start().await?;
    let addrs: Vec<Address> = (0..n).map(|_| Address::random()).collect();
    let bodies: Vec<Vec<u8>> = addrs
        .iter()
        .map(|a| signed(topup(&hex_addr(*a), "USDT")))
        .collect::<Result<_>>()?;
    w.publish_all("topup", &bodies).await?;
    w.wait_watched("USDT", addrs[n - 1], true).await?;
    for a in addrs.iter().step_by((n / 20).max(1)) {
        w.wait_watched("USDT", *a, true).await?;
    }
    let token = ITestUSDT::new(w.token, &w.eth);
    let chunk = 500;
    let started = Instant::now();
    let mut mined_at: Vec<(u64, Instant)> = Vec::new();
    for part in addrs.chunks(chunk) {
        // With automine, the block is mined when the node accepts the transaction.
        let pending = token
            .batchTransfer(
                part.to_vec(),
                part.iter().map(|_| U256::from(1_000_000u64)).collect(),
            )
            .from(w.user())
            .gas(500_000_000)
            .send()
            .await?;
        let at = Instant::now();
        let r = pending.get_receipt().await?;
        mined_at.push((r.block_number.context("block")?, at));
    }
    let first_block = mined_at[0].0;
    let mut seen = Vec::with_capacity(n);
    for r in replies
        .wait_count("status 2", n, |v| v["status"] == 2)
        .await?
    {
        let block = r.v["block_height"].as_u64().unwrap_or(0);
        let t0 = mined_at
            .iter()
            .find(|(b, _)| *b == block)
            .map(|(_, t)| *t)
            .unwrap_or(started);
        seen.push(r.at.duration_since(t0).as_secs_f64() * 1000.0);
    }
    // Mine to maturity one block at a time, remembering when each was mined.
    let last_block = mined_at.last().map(|(b, _)| *b).unwrap_or(first_block);
    let head = w.head().await?;
    for _ in head..last_block + 20 {
        w.mine(1).await?;
        mined_at.push((w.head().await?, Instant::now()));
    }
    let mut finals = Vec::with_capacity(n);
    let mut last = started;
    for r in replies
        .wait_count("status 1", n, |v| v["status"] == 1)
        .await?
    {
        let due = r.v["block_height"].as_u64().unwrap_or(0) + 20;
        let t0 = mined_at
            .iter()
            .find(|(b, _)| *b == due)
            .map(|(_, t)| *t)
            .unwrap_or(started);
        finals.push(r.at.duration_since(t0).as_secs_f64() * 1000.0);
        last = last.max(r.at);
    }
    let total = last.duration_since(started);
    daemon.stop().await?;
    w.cleanup().await?;
    Ok(vec![
        Row::new(
            "end to end: deposits to last status 1",
            per_sec(n, total),
            None,
            "deposits/s",
        )
        .note(format!(
            "{n} deposits to {n} addresses in {} blocks, confirm_height 20, {:.1} s in all",
            n.div_ceil(chunk),
            total.as_secs_f64()
        )),
        Row::new(
            "end to end: status 2 latency p50",
            percentile(&mut seen.clone(), 0.5),
            None,
            "ms",
        )
        .note("block mined to status 2 received"),
        Row::new(
            "end to end: status 2 latency p99",
            percentile(&mut seen, 0.99),
            None,
            "ms",
        ),
        Row::new(
            "end to end: status 1 latency p50",
            percentile(&mut finals.clone(), 0.5),
            None,
            "ms",
        )
        .note("maturing block mined to status 1 received"),
        Row::new(
            "end to end: status 1 latency p99",
            percentile(&mut finals, 0.99),
            None,
            "ms",
        ),
    ])
}

fn print(rows: &[Row]) {
    println!(
        "\n{:<52} {:>14} {:>14} {:>7}  {:<10} target",
        "measure", "daemon", "raw limit", "ratio", "unit"
    );
    println!("{}", "-".repeat(130));
    for r in rows {
        let raw = r.raw.map_or("—".to_owned(), |v| format!("{v:.1}"));
        let ratio = r.ratio.map_or("—".to_owned(), |v| format!("{v:.2}"));
        let met = match r.met {
            Some(true) => format!("met: {}", r.target),
            Some(false) => format!("NOT MET: {}", r.target),
            None => String::new(),
        };
        println!(
            "{:<52} {:>14.1} {:>14} {:>7}  {:<10} {}",
            r.name, r.daemon, raw, ratio, r.unit, met
        );
    }
    println!();
    for r in rows.iter().filter(|r| !r.note.is_empty()) {
        println!("  {}: {}", r.name, r.note);
    }
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_owned())
        })
        .unwrap_or_default();
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines().next().map(|l| {
                l.split_whitespace()
                    .nth(1)
                    .unwrap_or("0")
                    .parse::<f64>()
                    .unwrap_or(0.0)
                    / 1024.0
                    / 1024.0
            })
        })
        .unwrap_or(0.0);
    format!(
        "{} cores, {cpu}, {mem:.0} GiB",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    )
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> Result<()> {
    // `cargo bench` passes --bench; only --quick matters here.
    let quick = std::env::args().any(|a| a == "--quick");
    let s = if quick { QUICK } else { FULL };
    if std::env::var_os("RUST_LOG").is_none() {
        // SAFETY: set once, before any thread reads the environment.
        unsafe { std::env::set_var("RUST_LOG", "error") };
    }
    // BENCH_ONLY=ingest,detection,networks,watchset,payouts,mariadb,failover,confirm,e2e,api,console picks
    // rows (networks runs detection too: its figure is the baseline).
    let only = std::env::var("BENCH_ONLY").unwrap_or_default();
    let run = |name: &str| only.is_empty() || only.split(',').any(|o| o == name);
    // Every row's files stay until the run ends: on ext4 without a journal
    // (these machines' disks) a file created within minutes of many being
    // deleted costs up to ten times more (the allocator skips every
    // recently freed inode), so deleting a row's 50,000 log files would
    // slow the next row's log writer. The daemon itself deletes nothing.
    defer_removals();
    // BENCH_TRACE=1 prints the in-process daemon's logs (filtered by
    // RUST_LOG) to stderr, with their times, to see where a row waits.
    if std::env::var_os("BENCH_TRACE").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_writer(std::io::stderr)
            .try_init();
    }
    let mut rows = Vec::new();
    if run("ingest") {
        eprintln!("ingest…");
        rows.extend(ingest(s.ingest).await?);
    }
    if run("detection") || run("networks") {
        eprintln!("deposit detection…");
        let single = detection(s.watched, s.block_transfers).await?;
        let ms = single.daemon;
        rows.push(single);
        if run("networks") {
            eprintln!("deposit detection, two networks…");
            rows.extend(detection_two(s.watched, s.block_transfers, ms).await?);
        }
    }
    if run("watchset") {
        eprintln!("watch set…");
        let (mem, lookups) = watch_set(s.watch_set).await?;
        rows.extend([mem, lookups]);
    }
    if run("payouts") {
        eprintln!("payout broadcast…");
        rows.push(payouts(s.payouts).await?);
    }
    if run("mariadb") {
        eprintln!("message store on MariaDB…");
        rows.extend(ha::ingest(s.ingest).await?);
        rows.push(ha::payouts(s.payouts).await?);
    }
    if run("failover") {
        eprintln!("failover…");
        rows.push(ha::failover(if quick { 1 } else { 3 }).await?);
    }
    if run("confirm") {
        eprintln!("confirmation work…");
        let small = confirm_work(s.pending[0], s.maturing).await?;
        let large = confirm_work(s.pending[1], s.maturing).await?;
        let flat = large.daemon <= small.daemon * 2.0 + 1.0;
        rows.push(small);
        rows.push(large.target(
            &format!("flat from {} to {} pending", s.pending[0], s.pending[1]),
            flat,
        ));
    }
    if run("e2e") {
        eprintln!("end to end…");
        rows.extend(end_to_end(s.e2e).await?);
    }
    if run("console") {
        eprintln!("ingest with the console polled…");
        rows.push(console::ingest_with_console(s.ingest).await?);
    }
    if run("api") {
        eprintln!("HTTP API and webhooks…");
        rows.extend(api::http_ingest(s.http).await?);
        rows.push(api::webhooks(s.hooks).await?);
        rows.push(api::push_latency(s.push).await?);
    }

    print(&rows);
    let report = json!({
        "quick": quick,
        "machine": machine(),
        "rows": rows,
    });
    std::fs::create_dir_all("target/bench")?;
    std::fs::write(
        "target/bench/report.json",
        serde_json::to_vec_pretty(&report)?,
    )?;
    println!("machine: {}\nreport: target/bench/report.json", machine());
    remove_deferred();
    Ok(())
}
