//! The rows of the message store on MariaDB and of failover
//! (`BENCH_ONLY=mariadb,failover`): ingest next to a raw loop of multi-row
//! inserts of the same rows; payout broadcast; the time from SIGKILL of the
//! active instance to the first answer of the standby, next to the lease
//! length it must wait by design.

use super::{Row, per_sec, unix_ms, world};
use crate::common::http::{free_port, wait_health};
use crate::common::*;
use alloy::primitives::Address;
use anyhow::{Context, Result};
use futures::StreamExt;
use m2pool_payment::wallet::Label;
use serde_json::json;
use sqlx::MySqlPool;
use std::time::{Duration, Instant};

/// A fresh MariaDB database for the message and wallet stores: its name
/// and the `mysql_config` section.
async fn database(tag: &str) -> Result<(String, serde_json::Value)> {
    let (db, mysql) = mariadb_database(tag).await?;
    let section = json!({"wallet": mysql["wallet"].clone(), "msg": mysql["wallet"].clone()});
    Ok((db, section))
}

/// Requests per commit of the raw loop: about what the daemon commits at
/// once under a backlog.
const RAW_COMMIT: usize = 1_000;
/// Rows per statement of the raw loop (the daemon's too).
const RAW_ROWS: usize = 200;

/// Inserts the rows the daemon writes for accepted topups with these
/// bodies (an inbox row and a watch-log row each) into the open
/// transaction, [`RAW_ROWS`] per `INSERT`.
async fn insert_rows(
    tx: &mut sqlx::MySqlConnection,
    rows: &[([u8; 32], Address)],
    bodies: &[&[u8]],
) -> Result<()> {
    for (rows, bodies) in rows.chunks(RAW_ROWS).zip(bodies.chunks(RAW_ROWS)) {
        let now = unix_ms();
        let mut q = sqlx::QueryBuilder::new(
            "INSERT INTO inbox (kind, body_hash, body, outcome, error, received_at) ",
        );
        q.push_values(rows.iter().zip(bodies), |mut b, ((hash, _), body)| {
            b.push_bind("topup")
                .push_bind(hash.to_vec())
                .push_bind(body.to_vec())
                .push_bind("accepted")
                .push_bind(None::<String>)
                .push_bind(now);
        });
        q.build().execute(&mut *tx).await?;
        let mut q = sqlx::QueryBuilder::new(
            "INSERT INTO watch_log (chain, address, symbol, watched, at, block) ",
        );
        q.push_values(rows, |mut b, (_, address)| {
            b.push_bind("ETH")
                .push_bind(address.to_vec())
                .push_bind("USDT")
                .push_bind(1i64)
                .push_bind(now)
                .push_bind(1i64);
        });
        q.build().execute(&mut *tx).await?;
    }
    Ok(())
}

/// The row keys of `bodies`: each body's hash and an address.
fn row_keys<'a>(bodies: impl Iterator<Item = &'a [u8]>) -> Vec<([u8; 32], Address)> {
    use sha2::Digest;
    bodies
        .map(|b| (sha2::Sha256::digest(b).into(), Address::random()))
        .collect()
}

/// The raw limit: a plain loop writing the rows the daemon writes for `n`
/// accepted topups (an inbox row and a watch-log row each) into the same
/// tables, multi-row `INSERT`s of [`RAW_ROWS`], one commit per
/// [`RAW_COMMIT`] requests.
async fn raw_inserts(pool: &MySqlPool, bodies: &[Vec<u8>]) -> Result<f64> {
    let rows = row_keys(bodies.iter().map(Vec::as_slice));
    let start = Instant::now();
    for (commit, batch) in rows.chunks(RAW_COMMIT).zip(bodies.chunks(RAW_COMMIT)) {
        let mut tx = pool.begin().await?;
        let batch: Vec<&[u8]> = batch.iter().map(Vec::as_slice).collect();
        insert_rows(&mut tx, commit, &batch).await?;
        tx.commit().await?;
    }
    Ok(per_sec(bodies.len(), start.elapsed()))
}

/// A second raw figure, for what the row's target asks: a plain program
/// doing both the broker's part and the database's, as the daemon must.
/// It consumes the `n` deliveries pre-loaded in `queue` with the daemon's
/// prefetch, inserts their rows as [`raw_inserts`] does (no signature or
/// JSON checks, no watch set), and commits and acknowledges (`multiple`)
/// every [`RAW_COMMIT`]. Timed as the daemon is: from the first commit to
/// the last, the first commit's deliveries not counted.
async fn raw_pipeline(w: &World, pool: &MySqlPool, queue: &str, n: usize) -> Result<f64> {
    use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions};
    let prefetch = w.config()?.rmq.context("rmq_config")?.prefetch;
    let ch = w.amqp.create_channel().await?;
    ch.basic_qos(prefetch, BasicQosOptions::default()).await?;
    let mut consumer = ch
        .basic_consume(
            queue.into(),
            "raw-pipeline".into(),
            BasicConsumeOptions::default(),
            lapin::types::FieldTable::default(),
        )
        .await?;
    let mut batch = Vec::with_capacity(RAW_COMMIT);
    let mut first: Option<(Instant, usize)> = None;
    let mut got = 0;
    while got < n {
        let d = consumer.next().await.context("raw stream ended")??;
        got += 1;
        batch.push(d);
        if batch.len() < RAW_COMMIT && got < n {
            continue;
        }
        let bodies: Vec<&[u8]> = batch.iter().map(|d| d.data.as_slice()).collect();
        let rows = row_keys(bodies.iter().copied());
        let mut tx = pool.begin().await?;
        insert_rows(&mut tx, &rows, &bodies).await?;
        tx.commit().await?;
        if let Some(last) = batch.last() {
            last.ack(BasicAckOptions { multiple: true }).await?;
        }
        first.get_or_insert((Instant::now(), got));
        batch.clear();
    }
    ch.close(200, "done".into()).await?;
    let (started, in_first) = first.context("no delivery")?;
    Ok(per_sec(n - in_first, started.elapsed()))
}

/// A fresh database with the store's own schema (made by its migrations):
/// its name and a pool on it.
async fn raw_database(tag: &str) -> Result<(String, MySqlPool)> {
    let (db, _) = database(tag).await?;
    let cfg = m2pool_payment::config::MysqlConfig {
        user: "root".into(),
        password: m2pool_payment::secret::Secret::new(String::new()),
        host: "127.0.0.1".into(),
        port: 3306,
        database: db.clone(),
        max_open_conns: 4,
        max_idle_conns: 1,
        conn_max_life: Duration::from_secs(120),
    };
    m2pool_payment::store::Store::open_mysql(&cfg)
        .await?
        .close()
        .await;
    let pool = MySqlPool::connect(&format!("mysql://root@127.0.0.1:3306/{db}")).await?;
    Ok((db, pool))
}

/// Ingest with the message store on MariaDB, next to the raw insert loop
/// in the same database (its rows written to a second, fresh one), and
/// next to a plain consume-insert-ack pipeline (a third).
pub async fn ingest(n: usize) -> Result<Vec<Row>> {
    let (db, section) = database("bench_ingest").await?;
    let w = world("bench-ingest-mariadb", &[], |c| {
        c["mysql_config"] = section.clone();
    })
    .await?;
    let bodies: Vec<Vec<u8>> = (0..n)
        .map(|_| signed(topup(&hex_addr(Address::random()), "USDT")))
        .collect::<Result<_>>()?;
    w.publish_all("topup", &bodies).await?;
    let daemon = w.start().await?;
    let rate = super::ingest_rate(&w, daemon, n).await?;
    drop_mariadb_database(&db).await?;

    // Raw, the same run: the same rows into the same tables of a fresh store.
    let (raw_db, raw_pool) = raw_database("bench_raw").await?;
    let raw = raw_inserts(&raw_pool, &bodies).await?;
    raw_pool.close().await;
    drop_mariadb_database(&raw_db).await?;

    // The plain pipeline: the same deliveries from the same queue.
    let queue = w.config_json["rmq_config"]["topup"]["queue"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    w.publish_all("topup", &bodies).await?;
    let (pipe_db, pipe_pool) = raw_database("bench_pipe").await?;
    let piped = raw_pipeline(&w, &pipe_pool, &queue, n).await?;
    pipe_pool.close().await;
    drop_mariadb_database(&pipe_db).await?;
    w.cleanup().await?;

    let ratio = rate / raw;
    Ok(vec![
        Row::new("ingest, message store on MariaDB", rate, Some(raw), "msg/s")
            .target(
                ">= 5000 msg/s and >= 0.5 of raw",
                rate >= 5_000.0 && ratio >= 0.5,
            )
            .note(format!(
                "{n} signed topups pre-loaded; raw: the same inbox and watch-log rows inserted by a plain loop, \
                 {RAW_ROWS} rows per INSERT, one commit per {RAW_COMMIT} requests, same MariaDB; \
                 a plain pipeline that also consumes and acks them (next row): {piped:.0} msg/s, {:.2} of that raw",
                piped / raw
            )),
        Row::new(
            "ingest on MariaDB vs. a plain consume-insert-ack pipeline",
            rate,
            Some(piped),
            "msg/s",
        )
        .note(format!(
            "raw: the same {n} deliveries from the same queue and prefetch, their rows inserted as above \
             (no signature, JSON or watch-set work), one commit and one `multiple` ack per {RAW_COMMIT}"
        )),
    ])
}

/// Payout broadcast with the message store on MariaDB: the SQLite row's
/// measurement, the store swapped.
pub async fn payouts(n: usize) -> Result<Row> {
    let (db, section) = database("bench_payouts").await?;
    let row = super::payouts_on(n, "payout broadcast, message store on MariaDB", |c| {
        c["mysql_config"] = section.clone();
    })
    .await?;
    drop_mariadb_database(&db).await?;
    Ok(row)
}

/// From SIGKILL of the active instance to the first answer the standby
/// publishes (a withdrawal published at the kill, answered `2`), with the
/// default lease; `runs` times. The raw figure is the lease length: the
/// standby must wait that long by design.
pub async fn failover(runs: usize) -> Result<Row> {
    let (db, section) = database("bench_failover").await?;
    let w = world("bench-failover", &[], |c| {
        c["mysql_config"] = section.clone();
    })
    .await?;
    let lease = w.config()?.lease.length;
    let mut replies = w.replies("withdraw_resp").await?;
    let hot = w.new_wallet(Label::User).await?;
    w.fund(hot, 1_000_000_000, ether(10)).await?;
    let spawn = |name: &str, port: u16| {
        let mut c = w.config_json.clone();
        c["ha_config"] = json!({"instance_id": name});
        c["http_config"] = json!({"listen": format!("127.0.0.1:{port}")});
        w.spawn_process_as(name, &c, &[])
    };
    let names = ["a", "b"];
    let ports = [free_port()?, free_port()?];
    let mut procs = vec![spawn(names[0], ports[0])?];
    wait_health(ports[0], "active", WAIT, |_, h| h["role"] == "active").await?;
    let mut times = Vec::new();
    for run in 0..runs {
        // The standby of this run.
        let next = (run + 1) % 2;
        procs.push(spawn(names[next], ports[next])?);
        wait_health(ports[next], "standby", WAIT, |s, h| {
            s == 200 && h["role"] == "standby"
        })
        .await?;
        // A moment in the renewal cycle that varies from run to run.
        tokio::time::sleep(Duration::from_millis(700 * run as u64 % 3_000)).await;
        let q = format!("fo-{run}");
        let mut active = procs.remove(0);
        let t = Instant::now();
        active.0.kill()?;
        active.0.wait()?;
        w.publish(
            "withdraw",
            json!({"queue_id": q, "from_address": hex_addr(hot), "to_address": hex_addr(Address::random()),
                   "amount": 1, "chain": "ETH", "symbol": "USDT", "timestamp": 1}),
        )
        .await?;
        let q2 = q.clone();
        replies
            .wait_count("the first answer of the new active instance", 1, move |v| {
                v["queue_id"] == q2.as_str() && v["status"] == 2
            })
            .await?;
        times.push(t.elapsed().as_secs_f64());
        wait_health(ports[next], "active", WAIT, |_, h| h["role"] == "active").await?;
    }
    drop(procs);
    w.cleanup().await?;
    drop_mariadb_database(&db).await?;
    let worst = times.iter().cloned().fold(0.0, f64::max);
    let mean = times.iter().sum::<f64>() / times.len().max(1) as f64;
    Ok(Row::new(
        "failover: SIGKILL to the standby's first answer",
        worst,
        Some(lease.as_secs_f64()),
        "s",
    )
    .target("<= 15 s with the default lease", worst <= 15.0)
    .note(format!(
        "worst of {runs} kills at varying moments of the renewal cycle (mean {mean:.1} s); two processes on one MariaDB store; \
         raw: the lease length, which a standby waits by design"
    )))
}
