//! New-head notifications over WebSocket. They only wake the watcher: the
//! persisted cursor, not the notification, decides what is read, so a missed
//! or duplicated notification costs nothing. The subscription is re-made
//! without limit when it drops, with a `warn` per attempt, moving through the
//! configured WebSocket endpoints in turn.
//!
//! alloy's own WebSocket reconnection is turned off: it would retry the same
//! endpoint for minutes (never a fallback), and after reconnecting it
//! re-subscribes silently, so heads missed during the gap would wake nothing.

use crate::backoff::{Backoff, sleep_or_shutdown};
use alloy::network::Ethereum;
use alloy::providers::{Provider, RootProvider};
use alloy::rpc::client::ClientBuilder;
use alloy::transports::ws::WsConnect;
use futures::StreamExt;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// Subscribes to new heads and calls `wake` for each, until `shutdown`.
pub(super) async fn follow(
    chain: Arc<str>,
    urls: Vec<String>,
    wake: Arc<Notify>,
    shutdown: CancellationToken,
) {
    let mut backoff = Backoff::new(Duration::from_millis(250), Duration::from_secs(30));
    let mut index = 0usize;
    while !urls.is_empty() {
        let url = &urls[index % urls.len()];
        // Logs name the endpoint by scheme, host and port: its URL may carry a key.
        let shown = crate::secret::redact_url(url);
        let subscribed = async {
            // One immediate reconnection attempt inside alloy, then the
            // subscription ends and this loop takes over.
            let client = ClientBuilder::default()
                .ws(WsConnect::new(url.as_str()).with_max_retries(0))
                .await?;
            let provider = RootProvider::<Ethereum>::new(client);
            let sub = provider.subscribe_blocks().await?;
            Ok::<_, alloy::transports::TransportError>((provider, sub))
        };
        let outcome = tokio::select! {
            _ = shutdown.cancelled() => return,
            r = subscribed => r,
        };
        match outcome {
            Ok((_provider, sub)) => {
                info!(target: "m2pool::eth", chain = %chain, url = %shown, "new-heads subscription open");
                backoff.reset();
                // A connection that was down may have missed heads: look now.
                wake.notify_one();
                let mut heads = sub.into_stream();
                loop {
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        head = heads.next() => match head {
                            Some(_) => wake.notify_one(),
                            None => break,
                        },
                    }
                }
                warn!(target: "m2pool::eth", chain = %chain, url = %shown, "new-heads subscription ended; reconnecting");
                let (delay, _) = backoff.next_delay();
                if sleep_or_shutdown(delay, &shutdown).await {
                    return;
                }
            }
            Err(e) => {
                let (delay, attempt) = backoff.next_delay();
                warn!(target: "m2pool::eth", chain = %chain, attempt, url = %shown, error = %e,
                      "cannot subscribe to new heads; retrying");
                index += 1;
                if sleep_or_shutdown(delay, &shutdown).await {
                    return;
                }
            }
        }
    }
}
