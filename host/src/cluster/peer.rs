//! One other node as this node's groups see it ([`Peer`]: a [`RemotePeer`]): every request to
//! it timed by outcome in `geecache_peer_request_duration_seconds` and run in a
//! `geecache.peer.<op>` span, its gets coalesced into batches under load.

use std::future::Future;
use std::sync::Arc;

use futures::future::BoxFuture;

use super::coalesce::Coalescer;
use crate::error::Result;
use crate::group::{Entries, OwnerItem, PeerEntry, PeerService, RemotePeer};
use crate::peer::{PeerClient, PeerError};
use crate::spans::in_span;
use crate::telemetry::Metrics;

/// One other node: its ring name, a client for it, and the lanes that coalesce gets to it.
#[derive(Debug)]
pub(super) struct Peer {
    /// What sends and times requests to it (shared with the tasks sending coalesced batches).
    pub(super) core: Arc<PeerCore>,
    /// Gets to it under load go as batches (see `coalesce.rs`).
    pub(super) coalescer: Arc<Coalescer>,
}

/// How requests reach one other node.
#[derive(Debug)]
pub(super) struct PeerCore {
    /// The node's advertised address (its ring name); shared, so it labels every request's
    /// latency without a copy.
    pub(super) addr: Arc<str>,
    /// Signs and sends requests to it.
    pub(super) client: PeerClient,
    /// Where request latencies are recorded (the node's meters).
    pub(super) metrics: Metrics,
}

impl PeerCore {
    /// Runs one request to this peer in its span, timing it by outcome (`ok` or the error's
    /// code; `cancelled` when the caller stops waiting).
    async fn time<T>(
        &self,
        op: &'static str,
        span: tracing::Span,
        request: impl Future<Output = std::result::Result<T, PeerError>>,
    ) -> std::result::Result<T, PeerError> {
        let call = self.metrics.peer_call(self.addr.clone(), op);
        let answer = in_span(request, span).await;
        call.finish(answer.as_ref().map_or_else(PeerError::code, |_| "ok"));
        answer
    }

    /// [`PeerCore::time`], with the error as the node's.
    async fn timed<T>(
        &self,
        op: &'static str,
        span: tracing::Span,
        request: impl Future<Output = std::result::Result<T, PeerError>>,
    ) -> Result<T> {
        Ok(self.time(op, span, request).await?)
    }

    /// One batch of gets the coalescer formed (timed as operation `coalesced`).
    pub(super) async fn coalesced_batch(
        &self,
        group: &str,
        keys: &[String],
    ) -> std::result::Result<crate::peer::BatchResult, PeerError> {
        let span = tracing::info_span!("geecache.peer.coalesced", peer = &*self.addr, group);
        self.time("coalesced", span, self.client.batch_get(group, keys))
            .await
    }
}

impl Entries for Peer {
    /// Timed from the get's start to its answer, in a batch or not.
    fn get<'a>(&'a self, group: &'a str, key: &'a str) -> BoxFuture<'a, Result<Option<PeerEntry>>> {
        let span = tracing::info_span!("geecache.peer.get", peer = &*self.core.addr, group);
        Box::pin(
            self.core
                .timed("get", span, self.coalescer.get(&self.core, group, key)),
        )
    }

    fn set<'a>(
        &'a self,
        group: &'a str,
        key: &'a str,
        entry: PeerEntry,
    ) -> BoxFuture<'a, Result<()>> {
        let span = tracing::info_span!("geecache.peer.set", peer = &*self.core.addr, group);
        Box::pin(
            self.core
                .timed("set", span, self.core.client.set(group, key, entry)),
        )
    }

    fn delete<'a>(&'a self, group: &'a str, key: &'a str) -> BoxFuture<'a, Result<()>> {
        let span = tracing::info_span!("geecache.peer.delete", peer = &*self.core.addr, group);
        Box::pin(
            self.core
                .timed("delete", span, self.core.client.delete(group, key)),
        )
    }
}

impl PeerService for Peer {
    fn invalidate<'a>(&'a self, group: &'a str, keys: &'a [String]) -> BoxFuture<'a, Result<()>> {
        let span = tracing::info_span!("geecache.peer.invalidate", peer = &*self.core.addr, group);
        Box::pin(
            self.core
                .timed("invalidate", span, self.core.client.invalidate(group, keys)),
        )
    }

    fn peek<'a>(
        &'a self,
        group: &'a str,
        key: &'a str,
    ) -> BoxFuture<'a, Result<Option<PeerEntry>>> {
        let span = tracing::info_span!("geecache.peer.peek", peer = &*self.core.addr, group);
        Box::pin(
            self.core
                .timed("peek", span, self.core.client.peek(group, key)),
        )
    }

    fn take_handoff<'a>(
        &'a self,
        group: &'a str,
        entries: Vec<(String, PeerEntry)>,
    ) -> BoxFuture<'a, Result<usize>> {
        let span = tracing::info_span!("geecache.peer.handoff", peer = &*self.core.addr, group);
        Box::pin(
            self.core
                .timed("handoff", span, self.core.client.hand_off(group, entries)),
        )
    }
}

impl RemotePeer for Peer {
    fn id(&self) -> &str {
        &self.core.addr
    }

    /// One `_batch` request (several, one after another, past the protocol's key limit).
    fn batch_get<'a>(
        &'a self,
        group: &'a str,
        keys: &'a [String],
    ) -> BoxFuture<'a, Result<Vec<(String, OwnerItem)>>> {
        let span = tracing::info_span!("geecache.peer.batch", peer = &*self.core.addr, group);
        Box::pin(async move {
            let items = self
                .core
                .timed("batch", span, self.core.client.batch_get(group, keys))
                .await?;
            Ok(items
                .into_iter()
                .map(|(key, item)| {
                    let item = match item {
                        Ok(entry) => OwnerItem::Answered(entry),
                        // The owner's budget ran out before this key: ask for it alone.
                        Err(PeerError::ItemFailed { code, .. }) if code == "too_large" => {
                            OwnerItem::Skipped
                        }
                        Err(e) => OwnerItem::Failed(e.to_string()),
                    };
                    (key, item)
                })
                .collect())
        })
    }
}
