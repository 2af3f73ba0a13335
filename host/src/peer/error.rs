//! Why a call to a peer failed, each reason with a stable code and the status a node serves it
//! with.

use std::time::Duration;

/// Why a call from this node to a peer failed. Every variant names the peer (its base URL).
///
/// `Clone` because a failed peer load is shared by every waiter of a singleflight call.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PeerError {
    /// The peer's address cannot be turned into an `http://host:port` base URL.
    #[error("invalid peer address {addr:?}: {message}")]
    InvalidAddress {
        /// The address as given.
        addr: String,
        /// What is wrong with it.
        message: String,
    },

    /// No connection (refused, reset, DNS failure, connection closed mid-answer).
    #[error("peer {peer} is unreachable: {message}")]
    Unreachable {
        /// The peer's base URL.
        peer: String,
        /// The transport error and its causes.
        message: String,
    },

    /// The peer did not answer completely within the client's per-request timeout.
    #[error("peer {peer} did not answer within {timeout:?}")]
    Timeout {
        /// The peer's base URL.
        peer: String,
        /// The per-request timeout that ran out.
        timeout: Duration,
    },

    /// The peer refused this node's signature (401): the secrets differ, one side has none, or
    /// the clocks are too far apart.
    #[error("peer {peer} refused the request as unauthorized: {message}")]
    Unauthorized {
        /// The peer's base URL.
        peer: String,
        /// The peer's explanation.
        message: String,
    },

    /// The peer answered with an error status and an `ErrorInfo` (or an unexpected status).
    #[error("peer {peer} answered {status} {code}: {message}")]
    Status {
        /// The peer's base URL.
        peer: String,
        /// The HTTP status.
        status: u16,
        /// `ErrorInfo.code` (`unknown` when the body was not an `ErrorInfo`).
        code: String,
        /// `ErrorInfo.message`, or the start of the body.
        message: String,
    },

    /// One key of a batch failed at the peer (the batch itself succeeded).
    #[error("peer {peer} failed to load the key: {code}: {message}")]
    ItemFailed {
        /// The peer's base URL.
        peer: String,
        /// `ErrorInfo.code` of the item.
        code: String,
        /// `ErrorInfo.message` of the item.
        message: String,
    },

    /// The peer's answer is not what the protocol says (undecodable protobuf, wrong keys).
    #[error("undecodable answer from peer {peer}: {message}")]
    Decode {
        /// The peer's base URL.
        peer: String,
        /// What was wrong.
        message: String,
    },
}

impl PeerError {
    /// A stable, machine-readable code for API clients.
    pub fn code(&self) -> &'static str {
        match self {
            PeerError::InvalidAddress { .. } => "peer_invalid_address",
            PeerError::Unreachable { .. } => "peer_unreachable",
            PeerError::Timeout { .. } => "peer_timeout",
            PeerError::Unauthorized { .. } => "peer_unauthorized",
            PeerError::Status { .. } | PeerError::ItemFailed { .. } => "peer_error",
            PeerError::Decode { .. } => "peer_bad_response",
        }
    }

    /// The HTTP status a node serves this error with: 504 for a timeout, 502 otherwise (the
    /// node acted as a gateway to a peer that failed).
    pub fn status(&self) -> u16 {
        match self {
            PeerError::Timeout { .. } => 504,
            _ => 502,
        }
    }
}
