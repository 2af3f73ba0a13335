//! Why a call to a peer failed, each reason with a stable code and the status a node serves it
//! with.

use std::time::Duration;

use crate::error::{Error, Foreign, SeamError};

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

    /// The peer refused the request (401): its signature (the secrets differ, one side has
    /// none, or the clocks are too far apart), or with `--peer-mtls` this node's certificate
    /// (none shown, or one that names no host of the peer's ring members).
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

    /// The peer's answer does not carry a valid signature with the cluster secret: it did not
    /// come from a node that knows it (or was changed on the way). Never cached or served.
    #[error("the answer of peer {peer} is not signed with the cluster secret; not used")]
    Unsigned {
        /// The peer's base URL.
        peer: String,
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

/// Statuses of an owner's answer that are the caller's fault, passed on to the client as they
/// are (with the owner's code and message): bad input, no such key or group, too large.
const PASSED_ON: [u16; 3] = [400, 404, 413];

/// Whether `code` looks like one of the protocol's stable codes (`snake_case`, short), so it
/// can be passed on to a client.
fn is_code(code: &str) -> bool {
    !code.is_empty()
        && code.len() <= 64
        && code.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')
}

/// Core sees a peer's error through its seam: the code a client sees, status and public
/// message as here.
impl SeamError for PeerError {
    fn code(&self) -> &str {
        self.client_code()
    }
    fn status(&self) -> u16 {
        PeerError::status(self)
    }
    fn public_message(&self) -> String {
        PeerError::public_message(self)
    }
}

impl From<PeerError> for Error {
    fn from(e: PeerError) -> Self {
        Error::Peer(Foreign::new(e))
    }
}

impl PeerError {
    /// Whether this is the owner refusing the request itself (400, 404, 413 with a proper
    /// code): the client's fault, not a peer failure.
    fn is_passed_on(&self) -> bool {
        matches!(self, PeerError::Status { status, code, .. } if PASSED_ON.contains(status) && is_code(code))
    }

    /// The code a client sees: the owner's own code when the owner refused the request itself
    /// (400, 404, 413), [`PeerError::code`] otherwise.
    pub fn client_code(&self) -> &str {
        match self {
            PeerError::Status { code, .. } if self.is_passed_on() => code,
            other => other.code(),
        }
    }

    /// A stable, machine-readable code of this node's own (for metrics labels: a fixed set).
    pub fn code(&self) -> &'static str {
        match self {
            PeerError::InvalidAddress { .. } => "peer_invalid_address",
            PeerError::Unreachable { .. } => "peer_unreachable",
            PeerError::Timeout { .. } => "peer_timeout",
            PeerError::Unauthorized { .. } => "peer_unauthorized",
            PeerError::Status { .. } | PeerError::ItemFailed { .. } => "peer_error",
            PeerError::Decode { .. } => "peer_bad_response",
            PeerError::Unsigned { .. } => "peer_answer_unsigned",
        }
    }

    /// The HTTP status a node serves this error with: the owner's own 400, 404 or 413 when it
    /// refused the request itself, 504 for a timeout, 502 otherwise (the node acted as a
    /// gateway to a peer that failed).
    pub fn status(&self) -> u16 {
        match self {
            PeerError::Status { status, .. } if self.is_passed_on() => *status,
            PeerError::Timeout { .. } => 504,
            _ => 502,
        }
    }

    /// The message a client may see: the owner's own message when it refused the request
    /// itself (the owner made it public), this error otherwise.
    pub fn public_message(&self) -> String {
        match self {
            PeerError::Status { message, .. } if self.is_passed_on() => message.clone(),
            other => other.to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answered(status: u16, code: &str) -> PeerError {
        PeerError::Status {
            peer: "http://127.0.0.1:1".into(),
            status,
            code: code.into(),
            message: "value is 9 bytes; the limit is 8 bytes".into(),
        }
    }

    #[test]
    fn an_owners_4xx_is_passed_on_its_5xx_is_a_bad_gateway() {
        let e = answered(413, "value_too_large");
        assert_eq!((e.status(), e.client_code()), (413, "value_too_large"));
        assert_eq!(e.code(), "peer_error", "metrics keep their fixed labels");
        assert_eq!(e.public_message(), "value is 9 bytes; the limit is 8 bytes");
        let e = answered(404, "group_not_found");
        assert_eq!((e.status(), e.client_code()), (404, "group_not_found"));
        let e = answered(400, "bad_request");
        assert_eq!((e.status(), e.client_code()), (400, "bad_request"));
        for (status, code) in [
            (500, "internal"),
            (503, "plugin_unavailable"),
            (400, "<html>"),
        ] {
            let e = answered(status, code);
            assert_eq!(
                (e.status(), e.code()),
                (502, "peer_error"),
                "{status} {code}"
            );
            assert!(e.public_message().contains("127.0.0.1:1"));
        }
    }
}
