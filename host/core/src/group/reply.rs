//! Answers in an HTTP content coding: a stored gzip or zstd payload sent as it is to a client
//! that accepts it.

use bytes::Bytes;

use crate::cache::CacheEntry;

/// A value as the HTTP API sends it: the plain value, or a stored payload sent as it is because
/// the client accepts its encoding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// The response body.
    pub body: Bytes,
    /// The body's `Content-Encoding` (`gzip` or `zstd`), or `None` for the plain value.
    pub content_encoding: Option<&'static str>,
    /// Where the answer came from (the API's `X-Geecache-Source` header).
    pub source: Source,
}

/// Where an answer came from: a cache tier of this node, or the load that filled it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// The main cache (a key this node owns).
    Main,
    /// The hot cache (a copy of another node's key).
    Hot,
    /// A value past its expiry, within its stale window, answered at once while it is
    /// refreshed in the background (here or at its owner).
    Stale,
    /// The storage tier, on a main-cache miss.
    Storage,
    /// The key's owner, another node.
    Peer,
    /// This node's getter.
    Getter,
}

impl Source {
    /// The source's name, as the `X-Geecache-Source` header carries it.
    pub fn label(self) -> &'static str {
        match self {
            Source::Main => "main",
            Source::Hot => "hot",
            Source::Stale => "stale",
            Source::Storage => "storage",
            Source::Peer => "peer",
            Source::Getter => "getter",
        }
    }
}

/// The stored payload of `entry` as it is, when it is a value stored in a content coding that
/// the client accepts (`accepted`).
pub(super) fn encoded_reply(entry: &CacheEntry, accepted: &[&str]) -> Option<Reply> {
    if accepted.is_empty() {
        return None;
    }
    let codec = entry.codec()?;
    let coding = crate::compression::CONTENT_CODINGS
        .into_iter()
        .find(|c| *c == codec.name() && accepted.contains(c))?;
    Some(Reply {
        body: entry.payload(),
        content_encoding: Some(coding),
        // The caller says which tier (or a stale entry) it answered from.
        source: Source::Main,
    })
}
