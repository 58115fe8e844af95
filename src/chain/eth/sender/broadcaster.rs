//! A wallet's broadcaster: sends the transactions its nonce actor stored to
//! the node, in nonce order, and records what the node said.
//!
//! It keeps `eth_config.broadcasts_in_flight` JSON-RPC batches on their way
//! at all times, across the actor's batches: the node admits transactions
//! while the actor signs and stores the next ones, and no batch waits for the
//! bookkeeping of the one before. What the node said to each answered batch is
//! reported at once (listen's recorder marks the payouts it took sent, with
//! their `status=2`; what it refused keeps the time of its first refusal) and
//! what it did not take is sent again, same bytes, by the rebroadcast.

use super::sign;
use super::{SenderDeps, failpoint, outcome};
use crate::chain::Broadcast;
use crate::chain::eth::endpoints::Endpoints;
use crate::store::{SignedTx, StoreError};
use futures::StreamExt;
use futures::stream::FuturesOrdered;
use std::collections::VecDeque;
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tracing::warn;

/// Stored batches waiting for the broadcaster (beyond them, the actor waits).
const QUEUE: usize = 16;

/// What the actor hands its broadcaster.
#[derive(Debug)]
pub(super) enum Work {
    /// Transactions stored, in nonce order: send them after everything before.
    Send(Vec<SignedTx>),
    /// Answer once everything handed over before is sent and recorded.
    Flush(oneshot::Sender<()>),
}

/// Starts the broadcaster of one wallet; it ends when the sender is dropped
/// and everything handed over is sent and recorded, or when recording fails.
pub(super) fn spawn(
    deps: Arc<SenderDeps>,
    endpoints: Endpoints,
) -> (mpsc::Sender<Work>, JoinHandle<Result<(), StoreError>>) {
    let (tx, rx) = mpsc::channel(QUEUE);
    (tx, tokio::spawn(run(deps, endpoints, rx)))
}

/// Sends one JSON-RPC batch; returns it with what the node said of each.
async fn send(
    endpoints: Endpoints,
    chunk: Vec<SignedTx>,
) -> (Vec<SignedTx>, Vec<Result<(), sign::SendError>>) {
    let refs: Vec<&SignedTx> = chunk.iter().collect();
    let results = sign::broadcast_one_batch(&endpoints, &refs).await;
    (chunk, results)
}

async fn run(
    deps: Arc<SenderDeps>,
    endpoints: Endpoints,
    mut work: mpsc::Receiver<Work>,
) -> Result<(), StoreError> {
    let size = sign::broadcast_chunk(endpoints.max_batch(), endpoints.in_flight());
    let mut queue: VecDeque<Vec<SignedTx>> = VecDeque::new();
    let mut sending = FuturesOrdered::new();
    let mut flushes: Vec<oneshot::Sender<()>> = Vec::new();
    let mut open = true;
    loop {
        while sending.len() < endpoints.in_flight() {
            let Some(chunk) = queue.pop_front() else {
                break;
            };
            sending.push_back(send(endpoints.clone(), chunk));
        }
        if sending.is_empty() {
            for f in flushes.drain(..) {
                let _ = f.send(());
            }
            if !open {
                return Ok(());
            }
        }
        tokio::select! {
            w = work.recv(), if open => match w {
                Some(Work::Send(txs)) => {
                    let mut txs = txs.into_iter().peekable();
                    while txs.peek().is_some() {
                        queue.push_back(txs.by_ref().take(size).collect());
                    }
                }
                Some(Work::Flush(ack)) => flushes.push(ack),
                None => open = false,
            },
            Some((chunk, results)) = sending.next(), if !sending.is_empty() => {
                // Between the broadcast and recording it (status 2).
                failpoint("after_broadcast");
                let outcomes: Vec<Broadcast<'_>> = chunk
                    .iter()
                    .zip(results)
                    .map(|(tx, result)| {
                        if let Err(e) = &result {
                            warn!(target: "m2pool::payout", id = tx.payout_id, tx = %format!("{:#x}", tx.tx_hash),
                                  error = %e, "broadcast not accepted; it will be sent again, same bytes");
                        }
                        outcome(tx, result)
                    })
                    .collect();
                deps.facts.broadcast(&outcomes).await?;
            }
        }
    }
}
