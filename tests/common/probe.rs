//! A probe: a watched address whose small deposits prove the daemon has
//! processed every block up to theirs. Responses are published in block
//! order, so when a probe's `status=2` arrives, every answer due for an
//! earlier block has arrived before it: what a check that something did
//! *not* arrive must wait for first.

use super::{Replies, World, hex_addr, topup};
use alloy::primitives::Address;
use anyhow::Result;

/// A watched address for syncing with the daemon.
pub struct Probe {
    /// The probe's address (watched for USDT).
    pub addr: Address,
}

impl Probe {
    /// Watches a fresh address (and waits until it is watched).
    pub async fn new(w: &World) -> Result<Self> {
        let addr = Address::random();
        w.publish("topup", topup(&hex_addr(addr), "USDT")).await?;
        w.wait_watched("USDT", addr, true).await?;
        Ok(Self { addr })
    }

    /// Mints a deposit to the probe and waits for its `status=2` on
    /// `replies` (the `topup_resp` queue); returns its block. Minted by the
    /// token's deployer, whose nonces no test reorganises away (a sender
    /// whose transaction a reorganisation dropped can be left with a nonce
    /// the node never mines).
    pub async fn sync(&self, w: &World, replies: &mut Replies) -> Result<u64> {
        let (tx, block) = w.mint_usdt(self.addr, 1).await?;
        let hash = format!("{tx:#x}");
        replies
            .wait("for the probe deposit", |v| {
                v["tx_hash"] == hash && v["status"] == 2
            })
            .await?;
        Ok(block)
    }
}
