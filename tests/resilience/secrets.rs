//! No private key, key-encryption key or communication key in any file the
//! daemon writes (its output, its daily main logs, the transaction logs, its
//! stores) or in any response, with every crate logging at debug level (the
//! daemon's own targets at trace) through full flows: deposits, withdrawals
//! paid by the user and by the collection wallet, a batch payment, refusals,
//! forged signatures, cancels and a remove.

use crate::common::*;
use crate::{is, withdraw};
use alloy::primitives::Address;
use alloy::signers::local::PrivateKeySigner;
use anyhow::{Context, Result, ensure};
use m2pool_payment::wallet::{Kek, Label, cli};
use serde_json::json;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Standard base64, padded.
fn base64(bytes: &[u8]) -> String {
    const ABC: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ABC[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// The base64 text of `secret` wherever it sits in a longer encoded blob:
/// for each of the three alignments, the characters that depend on the
/// secret's bytes alone.
fn base64_forms(secret: &[u8]) -> Vec<String> {
    (0..3)
        .map(|pad| {
            let mut b = vec![0u8; pad];
            b.extend_from_slice(secret);
            let text = base64(&b);
            let start = [0, 2, 3][pad];
            let end = b.len() / 3 * 4;
            text[start..end].to_owned()
        })
        .collect()
}

/// Every way a secret could be written: raw text or bytes, hex (lower, upper,
/// with `0x`), base64, and Rust's `{:?}` of the byte array.
fn forms(what: &str, secret: &[u8]) -> Vec<(String, Vec<u8>)> {
    let hex = hex::encode(secret);
    let mut out = vec![
        (format!("{what} (raw)"), secret.to_vec()),
        (format!("{what} (hex)"), hex.clone().into_bytes()),
        (format!("{what} (HEX)"), hex.to_uppercase().into_bytes()),
        (format!("{what} (0x hex)"), format!("0x{hex}").into_bytes()),
        (
            format!("{what} (debug bytes)"),
            format!("{secret:?}").into_bytes(),
        ),
    ];
    for (i, b64) in base64_forms(secret).into_iter().enumerate() {
        out.push((format!("{what} (base64, offset {i})"), b64.into_bytes()));
    }
    out
}

/// Every file under `dir`, gzip files decompressed.
fn files(dir: &Path) -> Result<Vec<(PathBuf, Vec<u8>)>> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d)? {
            let p = e?.path();
            if p.is_dir() {
                todo.push(p);
                continue;
            }
            let mut bytes = std::fs::read(&p)?;
            if p.extension().is_some_and(|x| x == "gz") {
                let mut plain = Vec::new();
                flate2::read::GzDecoder::new(&bytes[..]).read_to_end(&mut plain)?;
                bytes = plain;
            }
            out.push((p, bytes));
        }
    }
    Ok(out)
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// API keys and a password in the node URLs of the test's config.
const NODE_SECRETS: [&str; 4] = [
    "pathkey0123456789abcdef",
    "nodepassword0123",
    "querykey0123456789abcdef",
    "wskey0123456789abcdef",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_reaches_a_log_or_a_response() -> Result<()> {
    let w = World::with("secrets", &[], |c| {
        let dir = std::path::PathBuf::from(
            c["log_config"]["dir"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
        );
        let main = dir.with_file_name("main-logs");
        c["log_config"]["main_log_dir"] = json!(main);
        // Hosted nodes put their API key in the URL: a path, a query, a
        // password. The first endpoint is down, so its URL is in the errors
        // the daemon logs while it moves to the next.
        let http = c["eth_config"]["rpc_url"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let ws = c["eth_config"]["ws_url"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let with = |base: &str, creds: &str| base.replacen("://", &format!("://{creds}"), 1);
        c["eth_config"]["rpc_url"] = json!(format!("http://127.0.0.1:1/v3/{}", NODE_SECRETS[0]));
        c["eth_config"]["fallback_rpc_urls"] = json!([format!(
            "{}/?apikey={}",
            with(&http, &format!("nodeuser:{}@", NODE_SECRETS[1])),
            NODE_SECRETS[2]
        )]);
        c["eth_config"]["ws_url"] = json!(format!("{ws}/?apikey={}", NODE_SECRETS[3]));
    })
    .await?;
    let mut replies = std::collections::BTreeMap::new();
    for q in ["topup_resp", "withdraw_resp", "pay_resp", "remove_resp"] {
        replies.insert(q, w.replies(q).await?);
    }

    // A user and a collection wallet whose private keys the test knows.
    let kek = Kek::from_material(WALLET_KEY.as_bytes());
    let store = w.wallets().await?;
    let mut keys = Vec::new();
    let mut wallets = Vec::new();
    for label in [Label::User, Label::Collection] {
        let signer = PrivateKeySigner::random();
        let key = signer.to_bytes();
        let a = cli::import(&store, &kek, "ETH", &hex::encode(key), label).await?;
        keys.push(key);
        wallets.push(a);
    }
    store.close().await;
    let (user, collection) = (wallets[0], wallets[1]);
    w.fund(user, 100_000_000, ether(1)).await?;
    w.fund(collection, 2_000_000_000, ether(1)).await?;

    let mut daemon = w.spawn_process(&[("RUST_LOG", "debug,m2pool=trace,m2pool_payment=trace")])?;

    // A deposit to a watched address.
    let addr = Address::random();
    w.publish("topup", topup(&hex_addr(addr), "USDT")).await?;
    w.wait_watched("USDT", addr, true).await?;
    let (tx, _) = w.send_usdt(w.user(), addr, 5_000_000).await?;
    // Withdrawals: paid by the user wallet, paid by the collection wallet,
    // refused, forged.
    w.publish("withdraw", withdraw("s-1", user, Address::random(), "3")?)
        .await?;
    w.publish(
        "withdraw",
        withdraw("s-2", user, Address::random(), "1000")?,
    )
    .await?;
    w.publish(
        "withdraw",
        withdraw("s-3", user, Address::random(), "100000")?,
    )
    .await?;
    let mut forged = withdraw("s-4", user, Address::random(), "1")?;
    forged["sign"] = "11".repeat(32).into();
    w.publish_raw("withdraw", &serde_json::to_vec(&forged)?)
        .await?;
    // A batch payment.
    w.publish(
        "pay",
        json!({"queue_id": "p-1", "from_address": hex_addr(user), "chain": "ETH", "symbol": "USDT",
               "timestamp": 1758610297, "transactions": [
                   {"order_id": "o-1", "to_address": hex_addr(Address::random()), "amount": 1.5},
                   {"order_id": "o-2", "to_address": hex_addr(Address::random()), "amount": 2}]}),
    )
    .await?;

    let withdrawals = replies.get_mut("withdraw_resp").context("subscribed")?;
    withdrawals.wait("s-1 status 2", is("s-1", 2)).await?;
    let s2 = withdrawals.wait("s-2 status 2", is("s-2", 2)).await?;
    ensure!(
        s2.v["from_address"] == hex_addr(collection).as_str(),
        "the collection wallet pays s-2: {}",
        s2.raw
    );
    withdrawals.wait("s-3 refused", is("s-3", 0)).await?;
    withdrawals.wait("s-4 bad signature", is("s-4", 3)).await?;
    let pays = replies.get_mut("pay_resp").context("subscribed")?;
    for o in ["o-1", "o-2"] {
        pays.wait(&format!("p-1 {o} status 2"), |v| {
            v["order_id"] == o && v["status"] == 2
        })
        .await?;
    }
    let hash = format!("{tx:#x}");
    let topups = replies.get_mut("topup_resp").context("subscribed")?;
    topups
        .wait("deposit seen", |v| v["tx_hash"] == hash.as_str())
        .await?;

    // Cancels: one too late (already broadcast), one of nothing known.
    let removes = replies.get_mut("remove_resp").context("subscribed")?;
    for q in ["s-1", "nobody"] {
        let mut cancel = topup(&hex_addr(user), "USDT");
        cancel["queue_id"] = q.into();
        w.publish("remove", cancel).await?;
        removes
            .wait(&format!("cancel {q} refused"), |v| {
                v["queue_id"] == q && v["status"] == 0
            })
            .await?;
    }

    w.mine(20).await?;
    let withdrawals = replies.get_mut("withdraw_resp").context("subscribed")?;
    for q in ["s-1", "s-2"] {
        withdrawals.wait(&format!("{q} status 1"), is(q, 1)).await?;
    }
    let pays = replies.get_mut("pay_resp").context("subscribed")?;
    for o in ["o-1", "o-2"] {
        pays.wait(&format!("p-1 {o} status 1"), |v| {
            v["order_id"] == o && v["status"] == 1
        })
        .await?;
    }
    let topups = replies.get_mut("topup_resp").context("subscribed")?;
    topups
        .wait("deposit final", |v| {
            v["tx_hash"] == hash.as_str() && v["status"] == 1
        })
        .await?;
    // And the watch removed.
    w.publish("remove", topup(&hex_addr(addr), "USDT")).await?;
    let removes = replies.get_mut("remove_resp").context("subscribed")?;
    removes
        .wait("remove", |v| {
            v["address"] == hex_addr(addr).as_str() && v["status"] == 1
        })
        .await?;

    // A clean stop, so the daily log's writer flushes.
    let pid = daemon.0.id().to_string();
    ensure!(
        std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()?
            .success()
    );
    let asked = Instant::now();
    while daemon.0.try_wait()?.is_none() {
        ensure!(asked.elapsed() < Duration::from_secs(25), "no exit");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Everything the daemon wrote, and every response.
    let mut haystack = files(w.dir.path())?;
    for r in replies.values_mut() {
        r.drain();
        for reply in &r.seen {
            haystack.push((PathBuf::from("a response"), reply.raw.clone().into_bytes()));
        }
    }
    let size = |pred: &dyn Fn(&Path) -> bool| -> usize {
        haystack
            .iter()
            .filter(|(p, _)| pred(p))
            .map(|(_, b)| b.len())
            .sum()
    };
    let main_logs = size(&|p| p.parent().is_some_and(|d| d.ends_with("main-logs")));
    let tx_logs = size(&|p| p.parent().is_some_and(|d| d.ends_with("logs")));
    let output = size(&|p| p == w.daemon_log_path());
    eprintln!(
        "scanned {} files and responses: {output} bytes of output, {main_logs} of daily main logs, {tx_logs} of transaction logs",
        haystack.len()
    );
    assert!(output > 100_000, "debug logging was on ({output} bytes)");
    assert!(
        main_logs > 100_000,
        "the daily main log was written ({main_logs} bytes)"
    );
    assert!(tx_logs > 0, "transaction logs were written");
    let log = String::from_utf8_lossy(&std::fs::read(w.daemon_log_path())?).into_owned();
    assert!(
        log.lines()
            .any(|l| l.contains("DEBUG") && l.contains("m2pool::")),
        "the daemon's own targets logged at debug"
    );

    assert_eq!(base64(b"hello"), "aGVsbG8=", "test bug: base64");
    let mut secrets = Vec::new();
    for (i, key) in keys.iter().enumerate() {
        secrets.extend(forms(&format!("private key {i}"), key.as_slice()));
    }
    secrets.extend(forms("the communication key", KEY));
    secrets.extend(forms("the wallet passphrase", WALLET_KEY.as_bytes()));
    // The key-encryption key the passphrase stretches to.
    let mut derived = [0u8; 32];
    hkdf::Hkdf::<sha2::Sha256>::new(Some(b"m2pool-payment wallet kek v1"), WALLET_KEY.as_bytes())
        .expand(b"wallet key from operator material", &mut derived)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let check = Kek::from_material(hex::encode(derived).as_bytes());
    let sealed = check.encrypt(&user, &keys[0].0);
    ensure!(
        kek.decrypt(&user, &sealed).is_ok(),
        "test bug: the derived key-encryption key is not the daemon's"
    );
    secrets.extend(forms("the key-encryption key", &derived));
    for (i, s) in NODE_SECRETS.iter().enumerate() {
        secrets.push((format!("node URL secret {i}"), s.as_bytes().to_vec()));
    }
    // The first endpoint's failures were logged, by its host and port only.
    ensure!(
        log.contains("127.0.0.1:1"),
        "the dead endpoint's failures were logged"
    );

    for (path, bytes) in &haystack {
        let lower = bytes.to_ascii_lowercase();
        // The config file is the operator's own, and holds the node URLs.
        let config = path.ends_with("config.json");
        for (what, form) in &secrets {
            if config && what.starts_with("node URL") {
                continue;
            }
            let case_free = form.iter().all(|b| !b.is_ascii_uppercase());
            let found = contains(bytes, form) || (case_free && contains(&lower, form));
            assert!(!found, "{what} appears in {}", path.display());
        }
    }
    w.cleanup().await
}
