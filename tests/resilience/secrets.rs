//! No private key, key-encryption key or communication key in any log line or
//! response, with every crate logging at debug level through full flows.

use crate::common::*;
use crate::{is, withdraw};
use alloy::primitives::Address;
use alloy::signers::local::PrivateKeySigner;
use anyhow::Result;
use m2pool_payment::wallet::{Kek, Label, cli};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_reaches_a_log_or_a_response() -> Result<()> {
    let w = World::new("secrets").await?;
    let mut withdrawals = w.replies("withdraw_resp").await?;
    let mut topups = w.replies("topup_resp").await?;

    // A hot wallet whose private key the test knows.
    let signer = PrivateKeySigner::random();
    let private_hex = hex::encode(signer.to_bytes());
    let store = w.wallets().await?;
    let user = cli::import(
        &store,
        &Kek::from_material(WALLET_KEY.as_bytes()),
        "ETH",
        &private_hex,
        Label::User,
    )
    .await?;
    store.close().await;
    w.fund(user, 100_000_000, ether(1)).await?;

    let mut daemon = w.spawn_process(&[("RUST_LOG", "debug")])?;
    let addr = Address::random();
    w.publish("topup", topup(&hex_addr(addr), "USDT")).await?;
    w.wait_watched("USDT", addr, true).await?;
    let (tx, _) = w.send_usdt(w.user(), addr, 5_000_000).await?;
    w.publish("withdraw", withdraw("s-1", user, Address::random(), "3")?)
        .await?;
    w.publish(
        "withdraw",
        withdraw("s-2", user, Address::random(), "1000")?,
    )
    .await?;
    let mut forged = withdraw("s-3", user, Address::random(), "1")?;
    forged["sign"] = "11".repeat(32).into();
    w.publish_raw("withdraw", &serde_json::to_vec(&forged)?)
        .await?;
    withdrawals.wait("s-1 status 2", is("s-1", 2)).await?;
    withdrawals.wait("s-2 refused", is("s-2", 0)).await?;
    withdrawals.wait("s-3 bad signature", is("s-3", 3)).await?;
    let hash = format!("{tx:#x}");
    topups
        .wait("deposit seen", |v| v["tx_hash"] == hash.as_str())
        .await?;
    w.mine(20).await?;
    withdrawals.wait("s-1 status 1", is("s-1", 1)).await?;
    daemon.0.kill()?;
    daemon.0.wait()?;

    let log = std::fs::read_to_string(w.daemon_log_path())?;
    assert!(
        log.len() > 10_000,
        "debug logging was on ({} bytes)",
        log.len()
    );
    let mut everything = log;
    for r in withdrawals.seen.iter().chain(topups.seen.iter()) {
        everything.push_str(&r.raw);
    }
    let lower = everything.to_ascii_lowercase();
    let secrets = [
        ("the private key", private_hex.clone()),
        ("the communication key", String::from_utf8(KEY.to_vec())?),
        ("the wallet key", WALLET_KEY.to_owned()),
    ];
    for (what, secret) in secrets {
        assert!(
            !lower.contains(&secret.to_ascii_lowercase()),
            "{what} appears in the logs or responses"
        );
    }
    w.cleanup().await
}
