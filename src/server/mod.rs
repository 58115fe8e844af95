//! The router: decode a request body, verify its signature, validate it against
//! the configuration, and say what to do with it.
//!
//! This is pure: no I/O, no state. It runs in the consumer tasks, so decoding and
//! HMAC work spread over the request queues, and hands a [`Routed`] decision to
//! the listen task, which owns every state change. A request that is refused
//! before anything happens gets its responses (`status` 3 for a bad signature,
//! 0 with a plain-words `error` otherwise) where it can be addressed; one that
//! cannot be addressed is recorded and dropped with its reason.

mod payout;

use crate::config::Config;
use crate::msg::{self, FieldError, Kind, RawObject, Status, sign};
use crate::reply::{self, Reply};
use crate::secret::CommKey;
use crate::store::{NewPayout, Outcome, WatchRow};
use alloy::primitives::Address;
use sha2::{Digest, Sha256};
use std::sync::Arc;

/// Bodies larger than this are not parsed.
pub const MAX_BODY: usize = 1 << 20;

/// What the router decided about one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Routed {
    /// Watch an address for deposits (a valid topup).
    Watch(WatchRow),
    /// Stop watching an address (a valid remove without `queue_id`).
    Unwatch(WatchRow),
    /// Cancel the payouts of `queue_id` that have not been signed (a valid
    /// remove with `queue_id`).
    Cancel {
        /// The remove request's address, chain and symbol, echoed in the answer.
        watch: WatchRow,
        /// Payouts to cancel.
        queue_id: String,
    },
    /// Pay: one withdrawal, or the transfers of one payment.
    Payout(Vec<NewPayout>),
    /// Refused before anything happened: answer and record.
    Refuse {
        /// Why, for the inbox.
        outcome: Outcome,
        /// The plain-words reason.
        error: String,
        /// The answers (one per payment transfer).
        replies: Vec<Reply>,
    },
    /// Cannot be answered: record and drop.
    Unaddressable {
        /// Why, for the log and the inbox.
        reason: String,
    },
}

/// A request after routing, with what the inbox needs.
#[derive(Debug, Clone)]
pub struct Request {
    /// Request kind.
    pub kind: Kind,
    /// sha256 over kind and body: a redelivery has the same.
    pub body_hash: [u8; 32],
    /// The body as received.
    pub body: Vec<u8>,
    /// The decision.
    pub routed: Routed,
    /// Where its answers are POSTed (a valid `notify_url`), if anywhere;
    /// `None` when it cannot be answered.
    pub notify: Option<NotifyTarget>,
}

/// A request's `notify_url` and the target its answers will name
/// (docs/architecture.md, "Webhooks").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotifyTarget {
    /// [`crate::webhook::request_target`].
    pub target: [u8; 32],
    /// The URL, checked.
    pub url: String,
}

/// Per-chain symbols the router accepts.
#[derive(Debug, Clone)]
struct ChainSymbols {
    name: String,
    /// Upper-case symbols with their decimals and token contract (`None`
    /// for ether): `ETH` first, then the tokens.
    symbols: Vec<(String, u8, Option<Address>)>,
}

/// Decodes, verifies and validates requests. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Router {
    key: Arc<CommKey>,
    chains: Arc<Vec<ChainSymbols>>,
    /// `notify_url`s may name private, loopback and link-local hosts.
    allow_private: bool,
}

impl Router {
    /// A router for `config`, verifying with `key`.
    pub fn new(config: &Config, key: CommKey) -> Self {
        let chains = config
            .networks
            .iter()
            .map(|n| ChainSymbols {
                name: n.name.clone(),
                symbols: n
                    .evm
                    .symbols()
                    .map(|(s, d)| {
                        let contract = n.evm.token(&s).map(|t| t.contract);
                        (s, d, contract)
                    })
                    .collect(),
            })
            .collect();
        Self {
            key: Arc::new(key),
            chains: Arc::new(chains),
            allow_private: config.webhooks.allow_private,
        }
    }

    /// Routes one request body.
    pub fn route(&self, kind: Kind, body: Vec<u8>) -> Request {
        let mut h = Sha256::new();
        h.update(kind.as_str().as_bytes());
        h.update([0u8]);
        h.update(&body);
        let body_hash: [u8; 32] = h.finalize().into();
        let (routed, notify) = self.decide(kind, &body);
        Request {
            kind,
            body_hash,
            body,
            routed,
            notify,
        }
    }

    fn decide(&self, kind: Kind, body: &[u8]) -> (Routed, Option<NotifyTarget>) {
        if body.len() > MAX_BODY {
            return (
                Routed::Unaddressable {
                    reason: format!(
                        "body of {} bytes is over the {MAX_BODY}-byte limit",
                        body.len()
                    ),
                },
                None,
            );
        }
        let (obj, refusal) = match Self::parse(body) {
            Ok(parsed) => parsed,
            Err(reason) => return (Routed::Unaddressable { reason }, None),
        };
        // A `notify_url` this gateway will not call refuses the request
        // (answered where it can be, never called).
        let notify = match msg::opt_str_field(&obj, "notify_url") {
            Ok(None) => Ok(None),
            Ok(Some(url)) => crate::config::check_notify_url(&url, self.allow_private)
                .map(|u| {
                    Some(NotifyTarget {
                        target: crate::webhook::request_target(kind, &obj),
                        url: u.to_string(),
                    })
                })
                .map_err(|e| format!("field `notify_url` {e}")),
            Err(e) => Err(e.to_string()),
        };
        let (refusal, notify) = match notify {
            Ok(n) => (refusal, n),
            Err(e) => (refusal.or(Some(e)), None),
        };
        let routed = match kind {
            Kind::Topup | Kind::Remove => self.watch_request(kind, &obj, refusal),
            Kind::Withdraw | Kind::Pay => self.payout_request(kind, &obj, refusal),
        };
        let notify = notify.filter(|_| !matches!(routed, Routed::Unaddressable { .. }));
        (routed, notify)
    }

    /// The body's members, and a refusal for a field given twice.
    fn parse(body: &[u8]) -> Result<(RawObject, Option<String>), String> {
        // A field given twice is refused (what is signed and what is read
        // could differ), and answered where the body can still be addressed.
        match RawObject::parse(body) {
            Ok(o) => Ok((o, None)),
            Err(e @ msg::CanonError::DuplicateField(_)) => {
                match RawObject::parse_with_duplicates(body) {
                    Ok((o, _)) => Ok((o, Some(e.to_string()))),
                    Err(_) => Err(e.to_string()),
                }
            }
            Err(e) => Err(e.to_string()),
        }
    }

    /// Routes a topup or remove; `refusal` refuses it (still answered) for a
    /// fault found in the body before it.
    fn watch_request(&self, kind: Kind, obj: &RawObject, refusal: Option<String>) -> Routed {
        let Some(address) = msg::echo_str(obj, "address").map(|a| a.to_ascii_lowercase()) else {
            return Routed::Unaddressable {
                reason: format!("{kind} request without an `address` string cannot be answered"),
            };
        };
        let refuse = |status: Status, error: String| {
            let reply = reply::watch_refusal(
                kind,
                address.clone(),
                msg::echo_str(obj, "chain").unwrap_or_default(),
                msg::echo_str(obj, "symbol").unwrap_or_default(),
                msg::echo_str(obj, "queue_id"),
                status,
                error.clone(),
            );
            self::refusal(status, error, vec![reply])
        };
        if let Some(error) = refusal {
            return refuse(Status::Failed, error);
        }
        if let Err(error) = self.verify(obj) {
            return refuse(Status::BadSignature, error);
        }
        match self.validate_watch(obj) {
            Err(error) => refuse(Status::Failed, error),
            Ok(watch) => match (kind, msg::lenient_str(obj, "queue_id")) {
                (Kind::Remove, Some(queue_id)) => Routed::Cancel { watch, queue_id },
                (Kind::Remove, None) => Routed::Unwatch(watch),
                _ => Routed::Watch(watch),
            },
        }
    }

    /// Checks `sign` over the canonical string.
    fn verify(&self, obj: &RawObject) -> Result<(), String> {
        let provided = match msg::str_field(obj, "sign") {
            Ok(s) => s,
            Err(FieldError::Missing(_)) => return Err("missing field `sign`".to_owned()),
            Err(e) => return Err(e.to_string()),
        };
        let canonical = obj.canonical_string().map_err(|e| e.to_string())?;
        if sign::verify_canonical(self.key.expose(), &canonical, &provided) {
            Ok(())
        } else {
            Err("signature does not match".to_owned())
        }
    }

    fn validate_watch(&self, obj: &RawObject) -> Result<WatchRow, String> {
        let (chain, symbol, _, _) = self.chain_symbol(obj)?;
        let address = msg::address_field(obj, "address").map_err(|e| e.to_string())?;
        if address == Address::ZERO {
            return Err("field `address` must not be the zero address".to_owned());
        }
        msg::int_field(obj, "timestamp").map_err(|e| e.to_string())?;
        msg::opt_str_field(obj, "queue_id").map_err(|e| e.to_string())?;
        Ok(WatchRow {
            chain,
            symbol,
            address,
        })
    }

    /// The canonical chain and symbol names a request asks for, the
    /// symbol's decimals and its token contract (`None` for ether).
    fn chain_symbol(
        &self,
        obj: &RawObject,
    ) -> Result<(String, String, u8, Option<Address>), String> {
        let chain = msg::str_field(obj, "chain").map_err(|e| e.to_string())?;
        let symbol = msg::str_field(obj, "symbol").map_err(|e| e.to_string())?;
        let c = self
            .chains
            .iter()
            .find(|c| c.name.eq_ignore_ascii_case(&chain))
            .ok_or_else(|| {
                let known: Vec<&str> = self.chains.iter().map(|c| c.name.as_str()).collect();
                format!(
                    "unknown chain `{chain}` (this gateway serves {})",
                    known.join(", ")
                )
            })?;
        let (s, d, contract) = c
            .symbols
            .iter()
            .find(|(s, _, _)| s.eq_ignore_ascii_case(&symbol))
            .ok_or_else(|| {
                let known: Vec<&str> = c.symbols.iter().map(|(s, _, _)| s.as_str()).collect();
                format!(
                    "unknown symbol `{symbol}` on {} (known: {})",
                    c.name,
                    known.join(", ")
                )
            })?;
        Ok((c.name.clone(), s.clone(), *d, *contract))
    }
}

fn refusal(status: Status, error: String, replies: Vec<Reply>) -> Routed {
    Routed::Refuse {
        outcome: if status == Status::BadSignature {
            Outcome::BadSignature
        } else {
            Outcome::Refused
        },
        error,
        replies,
    }
}

#[cfg(test)]
mod tests;
