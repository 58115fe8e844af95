//! What the Ethereum code shares about talking to a node: the error of a
//! request, and the ERC-20 interface (the `Transfer` event the scanner reads,
//! the calls the sender makes).

use alloy::transports::{RpcError, TransportErrorKind};

/// The ERC-20 interface, as far as the gateway uses it.
pub(super) mod erc20 {
    alloy::sol! {
        /// The ERC20 Transfer event.
        event Transfer(address indexed from, address indexed to, uint256 value);
        /// Moves `value` base units from the caller to `to`.
        function transfer(address to, uint256 value);
        /// The token balance of `owner`.
        function balanceOf(address owner) returns (uint256);
    }
}

/// Why a request to the node, or a scan step, did not give its answer.
#[derive(Debug, thiserror::Error)]
pub(super) enum NodeError {
    /// A node request failed; retry later.
    #[error("node request {what} failed: {source}")]
    Rpc {
        /// What was asked.
        what: &'static str,
        /// Transport or RPC error.
        source: RpcError<TransportErrorKind>,
    },
    /// The node answered something unusable.
    #[error("node answered {what} without {missing}")]
    Incomplete {
        /// What was asked.
        what: &'static str,
        /// What was missing.
        missing: &'static str,
    },
    /// No endpoint could be used.
    #[error(transparent)]
    Endpoint(#[from] super::endpoints::EndpointError),
    /// The listen task is gone.
    #[error("listen task stopped")]
    Closed,
}

/// Maps a transport or RPC error of the request `what` to a [`NodeError`].
pub(super) fn node(what: &'static str) -> impl FnOnce(RpcError<TransportErrorKind>) -> NodeError {
    move |source| NodeError::Rpc { what, source }
}
