//! The node's JSON-RPC endpoints: the configured one and its fallbacks, used
//! one at a time. A task that keeps failing on the current one moves everyone
//! to the next; each new connection is checked to be on the expected chain.

use crate::secret::redact_url;
use alloy::network::Ethereum;
use alloy::providers::{Provider, RootProvider};
use alloy::rpc::client::RpcClient;
use alloy::transports::http::reqwest;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tracing::{error, warn};

/// Why an endpoint cannot be used.
#[derive(Debug, thiserror::Error)]
pub(super) enum EndpointError {
    /// It does not answer.
    #[error("{url}: {source}")]
    Unreachable {
        /// The endpoint.
        url: String,
        /// What the transport said.
        source: alloy::transports::TransportError,
    },
    /// An HTTP endpoint whose address or client cannot be used.
    #[error("{url}: {reason}")]
    Unusable {
        /// The endpoint.
        url: String,
        /// Why.
        reason: String,
    },
    /// It serves another chain.
    #[error("{url} is on chain id {got}, expected {expected}")]
    WrongChain {
        /// The endpoint.
        url: String,
        /// Expected chain id.
        expected: u64,
        /// What it said.
        got: u64,
    },
}

#[derive(Debug)]
struct Current {
    index: usize,
    provider: Option<RootProvider<Ethereum>>,
}

/// The endpoints of one chain; cheap to clone.
#[derive(Debug, Clone)]
pub(super) struct Endpoints {
    chain: Arc<str>,
    urls: Arc<Vec<String>>,
    /// Per request over HTTP.
    timeout: Duration,
    /// Most calls in one JSON-RPC batch.
    max_batch: usize,
    /// Broadcast batches sent at once.
    in_flight: usize,
    expected: Arc<Mutex<Option<u64>>>,
    current: Arc<Mutex<Current>>,
}

impl Endpoints {
    /// The endpoints `urls` of `chain`; an HTTP request with no answer within
    /// `timeout` fails (a node that accepts and never answers would otherwise
    /// hold its caller for ever); JSON-RPC batches hold at most `max_batch` calls.
    pub fn new(
        chain: Arc<str>,
        urls: Vec<String>,
        expected: Option<u64>,
        timeout: Duration,
        max_batch: usize,
        in_flight: usize,
    ) -> Self {
        Self {
            chain,
            urls: Arc::new(urls),
            timeout,
            max_batch: max_batch.max(1),
            in_flight: in_flight.max(1),
            expected: Arc::new(Mutex::new(expected)),
            current: Arc::new(Mutex::new(Current {
                index: 0,
                provider: None,
            })),
        }
    }

    /// The chain id every endpoint must serve (the configured one, or the
    /// first endpoint's).
    pub fn chain_id(&self) -> Option<u64> {
        *self.expected.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The current endpoint's provider and index, connecting (and checking its
    /// chain id) when needed.
    pub async fn get(&self) -> Result<(usize, RootProvider<Ethereum>), EndpointError> {
        let index = {
            let c = self.current.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(p) = &c.provider {
                return Ok((c.index, p.clone()));
            }
            c.index
        };
        let url = self.urls[index].clone();
        // Logs and errors name an endpoint by scheme, host and port only: a
        // hosted node's URL carries its API key.
        let shown = redact_url(&url);
        let unreachable = |source| EndpointError::Unreachable {
            url: shown.clone(),
            source,
        };
        let provider = if url.starts_with("http://") || url.starts_with("https://") {
            let unusable = |reason: String| EndpointError::Unusable {
                url: shown.clone(),
                reason,
            };
            let parsed = url.parse().map_err(|e| unusable(format!("{e}")))?;
            let client = reqwest::Client::builder()
                .timeout(self.timeout)
                .build()
                .map_err(|e| unusable(e.to_string()))?;
            RootProvider::<Ethereum>::new(RpcClient::new_http_with_client(client, parsed))
        } else {
            RootProvider::<Ethereum>::connect(&url)
                .await
                .map_err(unreachable)?
        };
        let got = provider.get_chain_id().await.map_err(unreachable)?;
        {
            let mut expected = self.expected.lock().unwrap_or_else(|p| p.into_inner());
            match *expected {
                Some(e) if e != got => {
                    error!(target: "m2pool::eth", chain = %self.chain, url = %shown, expected = e, got,
                           "endpoint serves another chain; skipped");
                    drop(expected);
                    self.failed(index);
                    return Err(EndpointError::WrongChain {
                        url: shown,
                        expected: e,
                        got,
                    });
                }
                Some(_) => {}
                None => *expected = Some(got),
            }
        }
        let mut c = self.current.lock().unwrap_or_else(|p| p.into_inner());
        if c.index == index {
            c.provider = Some(provider.clone());
        }
        Ok((index, provider))
    }

    /// Reports that endpoint `index` keeps failing: the next one becomes current.
    pub fn failed(&self, index: usize) {
        let mut c = self.current.lock().unwrap_or_else(|p| p.into_inner());
        if c.index != index || self.urls.len() < 2 {
            c.provider = None;
            return;
        }
        c.index = (index + 1) % self.urls.len();
        c.provider = None;
        warn!(target: "m2pool::eth", chain = %self.chain, from = %redact_url(&self.urls[index]),
              to = %redact_url(&self.urls[c.index]), "switching node endpoint");
    }

    /// Most calls in one JSON-RPC batch (`eth_config.max_rpc_batch`).
    pub fn max_batch(&self) -> usize {
        self.max_batch
    }

    /// Broadcast batches sent at once (`eth_config.broadcasts_in_flight`).
    pub fn in_flight(&self) -> usize {
        self.in_flight
    }

    /// The index of the current endpoint.
    pub fn current_index(&self) -> usize {
        self.current.lock().unwrap_or_else(|p| p.into_inner()).index
    }

    /// How many endpoints there are.
    pub fn len(&self) -> usize {
        self.urls.len()
    }
}
