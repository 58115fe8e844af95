//! Building and signing payout transactions (EIP-1559, or legacy `gasPrice`
//! where the network prices that way), reading a wallet's balances and nonce
//! at one block, and broadcasting signed bytes.

use crate::chain::eth::endpoints::Endpoints;
use crate::config::FeeModel;
use crate::store::{Payout, SignedTx};
use alloy::consensus::{SignableTransaction, TxEip1559, TxEnvelope, TxLegacy};
use alloy::eips::eip2718::Encodable2718;
use alloy::network::Ethereum;
use alloy::primitives::{Address, B256, Bytes, TxKind, U256};
use alloy::providers::{Provider, RootProvider};
use alloy::rpc::types::TransactionRequest;
use alloy::signers::local::PrivateKeySigner;
use alloy::sol_types::SolCall;
use alloy::transports::RpcError;
use futures::StreamExt;
use std::collections::HashMap;
use zeroize::Zeroize;

use crate::chain::eth::node::{NodeError, erc20, node};

/// A wallet's balances and confirmed nonce, all read at one block.
#[derive(Debug, Clone)]
pub(super) struct View {
    /// Ether, wei.
    pub ether: U256,
    /// Token balances by symbol, base units.
    pub tokens: HashMap<String, U256>,
    /// Transactions of the wallet included up to that block.
    pub nonce: u64,
}

/// Reads `wallet`'s ether, the `tokens` it needs (symbol, contract) and its
/// nonce at the node's current head.
pub(super) async fn view(
    rpc: RootProvider<Ethereum>,
    wallet: Address,
    tokens: &[(String, Address)],
) -> Result<View, NodeError> {
    let block = rpc
        .get_block_number()
        .await
        .map_err(node("eth_blockNumber"))?;
    let ether = rpc
        .get_balance(wallet)
        .number(block)
        .await
        .map_err(node("eth_getBalance"))?;
    let nonce = rpc
        .get_transaction_count(wallet)
        .number(block)
        .await
        .map_err(node("eth_getTransactionCount"))?;
    let mut balances = HashMap::with_capacity(tokens.len());
    for (symbol, contract) in tokens {
        let input = erc20::balanceOfCall { owner: wallet }.abi_encode();
        let out = rpc
            .call(
                TransactionRequest::default()
                    .to(*contract)
                    .input(input.into()),
            )
            .block(block.into())
            .await
            .map_err(node("eth_call balanceOf"))?;
        let bal = erc20::balanceOfCall::abi_decode_returns(&out).unwrap_or_default();
        balances.insert(symbol.clone(), bal);
    }
    Ok(View {
        ether,
        tokens: balances,
        nonce,
    })
}

/// The next nonce the node would give `wallet` (pending transactions counted).
pub(super) async fn pending_nonce(
    rpc: RootProvider<Ethereum>,
    wallet: Address,
) -> Result<u64, NodeError> {
    rpc.get_transaction_count(wallet)
        .pending()
        .await
        .map_err(node("eth_getTransactionCount(pending)"))
}

/// Fees from the node, capped by `ceiling` (wei): EIP-1559's max fee and
/// priority fee, or (legacy) the gas price twice.
pub(super) async fn fees(
    rpc: RootProvider<Ethereum>,
    ceiling: u128,
    model: FeeModel,
) -> Result<(u128, u128), NodeError> {
    if model == FeeModel::Legacy {
        let price = rpc
            .get_gas_price()
            .await
            .map_err(node("eth_gasPrice"))?
            .min(ceiling);
        return Ok((price, price));
    }
    let est = rpc
        .estimate_eip1559_fees()
        .await
        .map_err(node("eth_feeHistory"))?;
    let max_fee = est.max_fee_per_gas.min(ceiling);
    let priority = est.max_priority_fee_per_gas.min(max_fee);
    Ok((max_fee, priority))
}

/// The gas limit of an ether payout to `to`: the configured one for an account
/// without code, an estimate with 20% headroom for a contract. The inner
/// `Err` is the node's refusal to estimate (the contract reverts when sent
/// ether): the payout cannot be made, and waiting will not change that.
pub(super) async fn ether_gas_limit(
    rpc: RootProvider<Ethereum>,
    from: Address,
    to: Address,
    value: U256,
    plain: u64,
) -> Result<Result<u64, String>, NodeError> {
    let code = rpc.get_code_at(to).await.map_err(node("eth_getCode"))?;
    if code.is_empty() {
        return Ok(Ok(plain));
    }
    match rpc
        .estimate_gas(TransactionRequest::default().from(from).to(to).value(value))
        .await
    {
        Ok(est) => Ok(Ok(est.saturating_mul(12) / 10)),
        // Code 3 is geth's "execution reverted"; other nodes only say it.
        Err(RpcError::ErrorResp(payload))
            if payload.code == 3 || payload.message.to_ascii_lowercase().contains("revert") =>
        {
            Ok(Err(payload.message.to_string()))
        }
        Err(e) => Err(node("eth_estimateGas")(e)),
    }
}

/// What a payout transaction carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Draft {
    /// Call target: the recipient for ether, the token contract otherwise.
    pub to: Address,
    /// Wei sent.
    pub value: U256,
    /// Call data.
    pub input: Bytes,
    /// Gas limit.
    pub gas_limit: u64,
}

impl Draft {
    /// A token transfer of `amount` to `recipient` on `contract`.
    pub fn token(contract: Address, recipient: Address, amount: U256, gas_limit: u64) -> Self {
        Self {
            to: contract,
            value: U256::ZERO,
            input: erc20::transferCall {
                to: recipient,
                value: amount,
            }
            .abi_encode()
            .into(),
            gas_limit,
        }
    }

    /// An ether transfer.
    pub fn ether(recipient: Address, amount: U256, gas_limit: u64) -> Self {
        Self {
            to: recipient,
            value: amount,
            input: Bytes::new(),
            gas_limit,
        }
    }
}

/// A wallet's key, held for one batch of signatures: libsecp256k1 signs
/// several times faster than the pure-Rust signer, which was most of a
/// payout's CPU. Erased when dropped.
pub(super) struct BatchKey(secp256k1::SecretKey);

impl BatchKey {
    /// The key of `signer`.
    pub fn of(signer: &PrivateKeySigner) -> Result<Self, alloy::signers::Error> {
        let mut bytes: [u8; 32] = signer.credential().to_bytes().into();
        let key = secp256k1::SecretKey::from_byte_array(bytes);
        bytes.zeroize();
        key.map(Self)
            .map_err(|e| alloy::signers::Error::other(e.to_string()))
    }

    /// A recoverable signature (low `s`, as Ethereum requires) of `hash`.
    fn sign(&self, hash: B256) -> alloy::primitives::Signature {
        let sig = secp256k1::SECP256K1
            .sign_ecdsa_recoverable(secp256k1::Message::from_digest(hash.0), &self.0);
        let (id, rs) = sig.serialize_compact();
        alloy::primitives::Signature::new(
            U256::from_be_slice(&rs[..32]),
            U256::from_be_slice(&rs[32..]),
            i32::from(id) == 1,
        )
    }
}

impl Drop for BatchKey {
    fn drop(&mut self) {
        self.0.non_secure_erase();
    }
}

/// What a transaction is signed for: the network's chain id and how it
/// prices transactions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct SignFor {
    /// EIP-155 chain id.
    pub chain_id: u64,
    /// EIP-1559 or legacy.
    pub fees: FeeModel,
}

/// Signs `draft` for payout `p` with `nonce` and the given fees (max fee and
/// priority fee; a legacy transaction's gas price is the max fee).
pub(super) fn sign(
    key: &BatchKey,
    net: SignFor,
    p: &Payout,
    nonce: u64,
    draft: Draft,
    (max_fee, priority): (u128, u128),
) -> Result<SignedTx, alloy::signers::Error> {
    let gas_limit = draft.gas_limit;
    let envelope: TxEnvelope = match net.fees {
        FeeModel::Eip1559 => {
            let tx = TxEip1559 {
                chain_id: net.chain_id,
                nonce,
                gas_limit,
                max_fee_per_gas: max_fee,
                max_priority_fee_per_gas: priority,
                to: TxKind::Call(draft.to),
                value: draft.value,
                access_list: Default::default(),
                input: draft.input,
            };
            let sig = key.sign(tx.signature_hash());
            tx.into_signed(sig).into()
        }
        FeeModel::Legacy => {
            let tx = TxLegacy {
                chain_id: Some(net.chain_id),
                nonce,
                gas_price: max_fee,
                gas_limit,
                to: TxKind::Call(draft.to),
                value: draft.value,
                input: draft.input,
            };
            let sig = key.sign(tx.signature_hash());
            tx.into_signed(sig).into()
        }
    };
    Ok(SignedTx {
        payout_id: p.id,
        tx_hash: *envelope.tx_hash(),
        raw: envelope.encoded_2718(),
        gas_limit: draft.gas_limit,
        max_fee_per_gas: max_fee,
        priority_fee: priority,
        signed_at: crate::clock::now_ms(),
        cancels: false,
    })
}

/// Why the node did not take a transaction.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(in crate::chain) enum SendError {
    /// The node answered with a JSON-RPC error: it refused the transaction.
    #[error("error code {code}: {message}")]
    Refused {
        /// The JSON-RPC error code (most nodes say -32000 for every refusal).
        code: i64,
        /// The node's words.
        message: String,
    },
    /// The request did not reach the node, or its answer could not be read.
    #[error("{0}")]
    Unreached(String),
}

impl SendError {
    /// From the error of one `eth_sendRawTransaction`.
    fn of(e: RpcError<alloy::transports::TransportErrorKind>) -> Self {
        match e {
            RpcError::ErrorResp(payload) => SendError::Refused {
                code: payload.code,
                message: payload.message.to_string(),
            },
            other => SendError::Unreached(other.to_string()),
        }
    }

    /// The request, or its answer, went wrong on the way.
    fn unreached(e: &impl std::fmt::Display) -> Self {
        SendError::Unreached(e.to_string())
    }

    /// The node already holds this transaction: for a rebroadcast, that is
    /// being taken. Nodes word it differently and give it no code of its own.
    pub(super) fn already_known(&self) -> bool {
        matches!(self, SendError::Refused { message, .. } if is_already_known(message))
    }
}

/// Whether a node's refusal of `eth_sendRawTransaction` says it already has
/// the transaction (geth, erigon, reth: "already known"; nethermind:
/// "AlreadyKnown"; besu: "known transaction"; anvil: "transaction already
/// imported").
pub(super) fn is_already_known(error: &str) -> bool {
    let lower = error.to_ascii_lowercase();
    [
        "already known",
        "known transaction",
        "alreadyknown",
        "already imported",
    ]
    .iter()
    .any(|s| lower.contains(s))
}

/// Broadcasts `txs` in nonce order, in JSON-RPC batches of at most
/// `eth_config.max_rpc_batch` (a node refuses a larger batch as a whole),
/// `eth_config.broadcasts_in_flight` of them at once; for each, whether the node has it now (a refusal
/// counts as accepted when the node says it already has it, or can find it by
/// hash: "nonce too low" for ours, mined meanwhile).
pub(super) async fn broadcast(
    endpoints: &Endpoints,
    txs: &[&SignedTx],
) -> Vec<Result<(), SendError>> {
    if txs.is_empty() {
        return Vec::new();
    }
    let rpc = match endpoints.get().await {
        Ok((_, rpc)) => rpc,
        Err(e) => return txs.iter().map(|_| Err(SendError::unreached(&e))).collect(),
    };
    let size = broadcast_chunk(endpoints.max_batch(), endpoints.in_flight());
    let mut chunks = txs.chunks(size);
    let mut sending = futures::stream::FuturesOrdered::new();
    let mut out = Vec::with_capacity(txs.len());
    loop {
        while sending.len() < endpoints.in_flight() {
            let Some(chunk) = chunks.next() else { break };
            sending.push_back(broadcast_batch(&rpc, chunk));
        }
        match sending.next().await {
            Some(results) => out.extend(results),
            None => return out,
        }
    }
}

/// What a node keeps per account of transactions beyond a nonce gap (geth's
/// `txpool.accountqueue`; it drops the rest).
const FUTURE_ROOM: usize = 64;

/// Transactions per broadcast batch: at most `max_batch`, and with
/// `in_flight` batches sent at once (which may reach the node out of order),
/// small enough that those ahead of a gap fit in [`FUTURE_ROOM`].
pub(super) fn broadcast_chunk(max_batch: usize, in_flight: usize) -> usize {
    match in_flight {
        0 | 1 => max_batch.max(1),
        n => max_batch.min(FUTURE_ROOM / (n - 1)).max(1),
    }
}

/// Broadcasts `txs` (at most `max_rpc_batch` of them) in order in one
/// JSON-RPC batch on the current endpoint (see [`broadcast`]).
pub(super) async fn broadcast_one_batch(
    endpoints: &Endpoints,
    txs: &[&SignedTx],
) -> Vec<Result<(), SendError>> {
    match endpoints.get().await {
        Ok((_, rpc)) => broadcast_batch(&rpc, txs).await,
        Err(e) => txs.iter().map(|_| Err(SendError::unreached(&e))).collect(),
    }
}

/// Broadcasts `txs` in order in one JSON-RPC batch (see [`broadcast`]).
async fn broadcast_batch(
    rpc: &RootProvider<Ethereum>,
    txs: &[&SignedTx],
) -> Vec<Result<(), SendError>> {
    let mut batch = alloy::rpc::client::BatchRequest::new(rpc.client());
    let mut waiters = Vec::with_capacity(txs.len());
    for tx in txs {
        let params = (Bytes::copy_from_slice(&tx.raw),);
        waiters.push(batch.add_call::<_, B256>("eth_sendRawTransaction", &params));
    }
    if let Err(e) = batch.send().await {
        return txs
            .iter()
            .map(|_| Err(SendError::unreached(&format!("batch send failed: {e}"))))
            .collect();
    }
    let mut out = Vec::with_capacity(txs.len());
    let mut unsure = Vec::new();
    for (i, waiter) in waiters.into_iter().enumerate() {
        let result = match waiter {
            Err(e) => Err(SendError::unreached(&e)),
            Ok(w) => match w.await {
                Ok(_) => Ok(()),
                Err(e) => {
                    let e = SendError::of(e);
                    if e.already_known() {
                        Ok(())
                    } else {
                        unsure.push(i);
                        Err(e)
                    }
                }
            },
        };
        out.push(result);
    }
    // "Nonce too low" for ours mined meanwhile, or a wording of "already
    // known" the list lacks: the node has it if it can find it by hash. All
    // asked in one batch (after a restart, every payout mined while the
    // daemon was down is answered so), not one call each.
    if !unsure.is_empty() {
        let hashes: Vec<B256> = unsure.iter().map(|i| txs[*i].tx_hash).collect();
        for (i, found) in unsure.into_iter().zip(node_has(rpc, &hashes).await) {
            if found {
                out[i] = Ok(());
            }
        }
    }
    out
}

/// Whether the node can find each of these transactions by hash (in its pool
/// or in a block), in one JSON-RPC batch; `false` for any it cannot be asked.
async fn node_has(rpc: &RootProvider<Ethereum>, hashes: &[B256]) -> Vec<bool> {
    let mut batch = alloy::rpc::client::BatchRequest::new(rpc.client());
    let mut waiters = Vec::with_capacity(hashes.len());
    for h in hashes {
        waiters.push(batch.add_call::<_, serde_json::Value>("eth_getTransactionByHash", &(*h,)));
    }
    if batch.send().await.is_err() {
        return vec![false; hashes.len()];
    }
    let mut found = Vec::with_capacity(hashes.len());
    for waiter in waiters {
        found.push(match waiter {
            Ok(w) => w.await.is_ok_and(|tx| !tx.is_null()),
            Err(_) => false,
        });
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signed_payout_recovers_to_its_wallet() {
        use alloy::consensus::Transaction as _;
        use alloy::eips::eip2718::Decodable2718;
        let signer = PrivateKeySigner::random();
        let key = BatchKey::of(&signer).expect("key");
        let p = crate::store::Payout {
            id: 7,
            ..crate::store::Payout::sample(signer.address())
        };
        let eip1559 = SignFor {
            chain_id: 31337,
            fees: FeeModel::Eip1559,
        };
        for n in 0..50 {
            let draft = Draft::token(Address::repeat_byte(9), p.to, p.amount, 100_000);
            let stx =
                sign(&key, eip1559, &p, n, draft, (2_000_000_000, 1_000_000_000)).expect("signs");
            let envelope = TxEnvelope::decode_2718(&mut stx.raw.as_slice()).expect("decodes");
            assert_eq!(*envelope.tx_hash(), stx.tx_hash);
            let signed = envelope.as_eip1559().expect("EIP-1559");
            let from = signed
                .signature()
                .recover_address_from_prehash(&signed.signature_hash())
                .expect("recovers");
            assert_eq!(from, signer.address());
            assert_eq!(envelope.nonce(), n);
            let s = envelope.signature().s();
            assert!(s <= U256::MAX >> 1, "low s");
        }
    }

    #[test]
    fn a_legacy_network_gets_a_replay_protected_gas_price_transaction() {
        use alloy::consensus::Transaction as _;
        use alloy::eips::eip2718::Decodable2718;
        let signer = PrivateKeySigner::random();
        let key = BatchKey::of(&signer).expect("key");
        let p = crate::store::Payout::sample(signer.address());
        let legacy = SignFor {
            chain_id: 56,
            fees: FeeModel::Legacy,
        };
        let draft = Draft::ether(p.to, p.amount, 21_000);
        let stx = sign(&key, legacy, &p, 3, draft, (5_000_000_000, 5_000_000_000)).expect("signs");
        let envelope = TxEnvelope::decode_2718(&mut stx.raw.as_slice()).expect("decodes");
        let signed = envelope.as_legacy().expect("a legacy transaction");
        assert_eq!(signed.tx().chain_id, Some(56), "EIP-155");
        assert_eq!(envelope.gas_price(), Some(5_000_000_000));
        assert_eq!((envelope.nonce(), envelope.value()), (3, p.amount));
        let from = signed
            .signature()
            .recover_address_from_prehash(&signed.signature_hash())
            .expect("recovers");
        assert_eq!(from, signer.address());
        assert_eq!(*envelope.tx_hash(), stx.tx_hash);
        assert_eq!(stx.max_fee_per_gas, 5_000_000_000, "reservations use it");
    }

    #[test]
    fn batches_in_flight_never_put_more_than_a_node_keeps_ahead_of_a_gap() {
        assert_eq!(
            broadcast_chunk(100, 1),
            100,
            "one at a time: as large as allowed"
        );
        assert_eq!(broadcast_chunk(100, 2), 64);
        assert_eq!(broadcast_chunk(100, 3), 32);
        assert_eq!(
            broadcast_chunk(10, 2),
            10,
            "the node's batch limit still holds"
        );
        assert_eq!(broadcast_chunk(100, 100), 1);
    }

    #[test]
    fn every_nodes_already_known_is_recognised() {
        for text in [
            "already known",
            "server returned an error response: error code -32003: transaction already imported",
            "AlreadyKnown",
            "Known transaction: 0xabc",
            "ALREADY KNOWN",
        ] {
            assert!(is_already_known(text), "{text}");
        }
        for text in [
            "nonce too low",
            "replacement transaction underpriced",
            "insufficient funds for gas * price + value",
        ] {
            assert!(!is_already_known(text), "{text}");
        }
    }

    #[test]
    fn a_refusal_keeps_the_nodes_code_and_words() {
        let payload = serde_json::from_str(
            r#"{"code": -32000, "message": "insufficient funds for gas * price + value"}"#,
        )
        .expect("an error payload");
        let e = SendError::of(RpcError::ErrorResp(payload));
        assert_eq!(
            e,
            SendError::Refused {
                code: -32000,
                message: "insufficient funds for gas * price + value".into()
            }
        );
        assert_eq!(
            e.to_string(),
            "error code -32000: insufficient funds for gas * price + value"
        );
        assert!(!e.already_known());
        let known = SendError::Refused {
            code: -32000,
            message: "already known".into(),
        };
        assert!(known.already_known());
        assert!(
            !SendError::Unreached("already known".into()).already_known(),
            "only the node's own answer says it holds the transaction"
        );
    }
}
