//! Answers in an HTTP content coding: a stored gzip or zstd payload sent as it is to a client
//! that accepts it.

use super::*;

/// A value as the HTTP API sends it: the plain value, or a stored payload sent as it is because
/// the client accepts its encoding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// The response body.
    pub body: Bytes,
    /// The body's `Content-Encoding` (`gzip` or `zstd`), or `None` for the plain value.
    pub content_encoding: Option<&'static str>,
}

/// The stored payload of `entry` as it is, when it is a value stored in a content coding that
/// the client accepts (`accepted`).
pub(super) fn encoded_reply(entry: &CacheEntry, accepted: &[&str]) -> Option<Reply> {
    if accepted.is_empty() {
        return None;
    }
    let Cached::Value(stored) = &entry.cached else {
        return None;
    };
    let coding = crate::compression::CONTENT_CODINGS
        .into_iter()
        .find(|c| *c == stored.codec().name() && accepted.contains(c))?;
    Some(Reply {
        body: stored.payload(),
        content_encoding: Some(coding),
    })
}
